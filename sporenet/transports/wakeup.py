"""Waking a carrier's selector loop from other threads (the TCP and UDP carriers).

``wake`` writes one byte to a socketpair unless a wake-up is already unread;
``drain`` (on the loop's thread, when ``reader`` is readable) reads them all and only
then clears the flag, so a wake-up that races with the drain always leaves a byte
behind or is read with the rest: whatever it announced is handled by the turn that
follows, and no wake-up is lost.
"""

from __future__ import annotations

import socket


class Wakeup:
    __slots__ = ("_pending", "_r", "_w")

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._pending = False

    @property
    def reader(self) -> socket.socket:
        """Register this for reading in the loop's selector."""
        return self._r

    def wake(self) -> None:
        """Any thread: make the loop's next ``select`` return."""
        if not self._pending:
            self._pending = True
            try:
                self._w.send(b"\0")
            except OSError:
                pass  # full (wake-ups are unread already) or torn down meanwhile

    def drain(self) -> None:
        """The loop's thread: take every wake-up byte, then clear the flag."""
        try:
            while self._r.recv(4096):
                pass
        except OSError:
            pass
        self._pending = False

    def close(self) -> None:
        self._r.close()
        self._w.close()
