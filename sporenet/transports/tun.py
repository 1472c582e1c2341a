"""The node's TUN device: opened with a virtio_net_hdr, configured, removed on close.

``TunDevice.open(name, address)`` opens ``/dev/net/tun`` with ``IFF_TUN | IFF_NO_PI |
IFF_VNET_HDR``, asks for ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)`` so the
kernel hands over TCP superpackets (up to 64 KiB per read), and configures it: the
node's overlay address with its /64, a route for the overlay /7 through the device,
the MTU, link up. Where the kernel refuses offloads the device still works, one packet
per read with a plain header (``offload`` says which); every read and write carries
the 10-byte header either way, so the data path has one format.

Configuration uses iproute2's ``ip`` (docs/decisions.md "TUN configuration").

Stale devices: a TUN that is not persistent disappears with the last descriptor on it,
so a node killed with SIGKILL leaves nothing behind and a restart gets the same name
and address. What can be left over is a *persistent* device of our name (made by
``ip tuntap add``, or by a tool that crashed between creating and releasing it): with
no process attached it has no carrier, and ``open`` deletes it. A device of our name
that a live process holds is another running node: ``open`` refuses with
``TunUnavailable`` rather than take it over.

One owning thread per direction: the data path's reader thread calls ``read``, its
writer(s) ``write``; ``close`` is for whoever stops the node.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import struct
import subprocess
from pathlib import Path

import structlog

from sporenet.protocols.datapath.vnet import SIZE as VNET_SIZE
from sporenet.protocols.identity import OVERLAY_PREFIX

from .errors import TransportError

log = structlog.get_logger(__name__)

TUN_PATH = "/dev/net/tun"
DEFAULT_MTU = 1420
READ_SIZE = 65_536 + VNET_SIZE + 64  # a whole superpacket in one read (smaller drops it)
# The kernel builds superpackets up to this size: sealed and framed, one still fits the
# 64 chunks of one UDP_SEGMENT send (dataplane.md: 45 x 1,425 bytes < 65,507), so over a
# UDP link a superpacket is never split across sends
GSO_MAX_SIZE = 62_000

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
IFF_PERSIST = 0x0800
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
_IFNAMSIZ = 16


class TunUnavailable(TransportError):
    """This node cannot have a TUN device here; the message says why and what to do."""


def has_capability(bit: int) -> bool:
    """Whether this process holds the capability now (root without it counts as without)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def tun_preflight() -> None:
    """Raise ``TunUnavailable`` naming what is missing, before a node starts."""
    if not os.path.exists(TUN_PATH):
        raise TunUnavailable(f"{TUN_PATH} does not exist (no TUN driver: modprobe tun, or in a "
                             "container pass --device /dev/net/tun); or run with --no-tun")
    if not has_capability(CAP_NET_ADMIN):
        raise TunUnavailable("the TUN device needs CAP_NET_ADMIN: run as root, or give it "
                             "with `sudo setcap cap_net_admin+ep $(readlink -f $(which python3))`; "
                             "or run with --no-tun (userspace only)")


def _ip(*args: str) -> None:
    try:
        out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        raise TunUnavailable("the `ip` command (iproute2) is missing: install iproute2, "
                             "or run with --no-tun") from None
    if out.returncode:
        raise TransportError(f"ip {' '.join(args)}: {out.stderr.strip() or out.returncode}")


def _tun_flags(name: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{name}/tun_flags").read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def _has_carrier(name: str) -> bool:
    try:
        return Path(f"/sys/class/net/{name}/carrier").read_text().strip() == "1"
    except OSError:  # reading carrier of a down device fails: nobody drives it
        return False


def remove_stale(name: str) -> bool:
    """Delete a leftover persistent TUN called ``name`` that no process holds; True if
    one was removed. A device held by a live process raises ``TunUnavailable``."""
    if not Path(f"/sys/class/net/{name}").exists():
        return False
    flags = _tun_flags(name)
    if flags is None:
        raise TunUnavailable(f"a network device {name!r} exists and is not a TUN device: "
                             "choose another tun name in the config")
    if not flags & IFF_PERSIST or _has_carrier(name):
        raise TunUnavailable(f"TUN device {name!r} is in use by another process (another "
                             "node?): stop it, or choose another tun name")
    _ip("link", "delete", name)
    log.info("tun_stale_removed", device=name)
    return True


class TunDevice:
    """An open, configured TUN; see the module docstring. Use ``open``."""

    def __init__(self, fd: int, name: str, address: ipaddress.IPv6Address, mtu: int,
                 offload: bool) -> None:
        self._fd, self.name, self.address, self.mtu, self.offload = fd, name, address, mtu, offload

    @classmethod
    def open(cls, name: str, address: ipaddress.IPv6Address | str, *, mtu: int = DEFAULT_MTU,
             prefix: ipaddress.IPv6Network = OVERLAY_PREFIX) -> TunDevice:
        address = ipaddress.IPv6Address(address)
        if not 0 < len(name.encode()) < _IFNAMSIZ or "/" in name or name.strip() != name:
            raise TransportError(f"TUN name {name!r}: 1-15 bytes, no '/' or spaces")
        if mtu < 1280:
            raise TransportError(f"TUN MTU {mtu} is below IPv6's minimum of 1280")
        tun_preflight()
        remove_stale(name)
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        try:
            ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(),
                                                         IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
            actual = ifr[:_IFNAMSIZ].rstrip(b"\0").decode()
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_SIZE))
            try:  # after TUNSETIFF; TSO needs CSUM (dataplane.md pitfalls)
                fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
                offload = True
            except OSError:
                fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
                offload = False
            _ip("link", "set", "dev", actual, "mtu", str(mtu), "up")
            try:
                _ip("link", "set", "dev", actual, "gso_max_size", str(GSO_MAX_SIZE))
                gso: int | str = GSO_MAX_SIZE
            except TransportError as exc:  # an old iproute2: larger superpackets go by stream
                gso = f"unset ({exc})"
            _ip("-6", "addr", "add", f"{address}/64", "dev", actual, "nodad")
            _ip("-6", "route", "replace", str(prefix), "dev", actual, "mtu", str(mtu))
        except PermissionError:
            os.close(fd)
            raise TunUnavailable("creating the TUN device was refused: the node needs "
                                 "CAP_NET_ADMIN, or run with --no-tun") from None
        except BaseException:
            os.close(fd)  # a non-persistent device goes with its last descriptor
            raise
        log.info("tun_open", device=actual, address=str(address), mtu=mtu, offload=offload,
                 gso_max_size=gso)
        return cls(fd, actual, address, mtu, offload)

    def fileno(self) -> int:
        return self._fd

    def read(self, size: int = READ_SIZE) -> bytes:
        """One packet (a superpacket with offloads) with its 10-byte header; blocks."""
        return os.read(self._fd, size)

    def write(self, frame: bytes | memoryview) -> int:
        """One packet with its header, already sanitized (``vnet.sanitize``)."""
        return os.write(self._fd, frame)

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def close(self) -> None:
        """Close the descriptor: the kernel removes the device with its address and route."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice({self.name!r}, {self.address}, mtu={self.mtu}, offload={self.offload})"
