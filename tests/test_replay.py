"""Replay window: wireguard-go's replay/replay_test.go vectors, then properties against a set model."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sporenet.protocols.errors import LocalProtocolError
from sporenet.protocols.sessions.replay import COUNTER_LIMIT, WINDOW_SIZE, ReplayWindow

REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1


def test_limit_is_reject_after_messages():
    assert COUNTER_LIMIT == REJECT_AFTER_MESSAGES
    assert WINDOW_SIZE >= 2_048


def wg_vectors(w: int) -> list[tuple[int, bool]]:
    """TestReplay from wireguard-go replay/replay_test.go (itself ported from Linux),
    numbered as there; ``w`` is its ``windowSize``."""
    t_lim = w + 1
    ram = REJECT_AFTER_MESSAGES
    return [
        (0, True), (1, True), (1, False), (9, True), (8, True),               # 1-5
        (7, True), (7, False), (t_lim, True), (t_lim - 1, True),              # 6-9
        (t_lim - 1, False), (t_lim - 2, True), (2, True), (2, False),         # 10-13
        (t_lim + 16, True), (3, False), (t_lim + 16, False),                  # 14-16
        (t_lim * 4, True), (t_lim * 4 - (t_lim - 1), True), (10, False),      # 17-19
        (t_lim * 4 - t_lim, False), (t_lim * 4 - (t_lim + 1), False),         # 20-21
        (t_lim * 4 - (t_lim - 2), True), (t_lim * 4 + 1 - t_lim, False),      # 22-23
        (0, False), (ram, False), (ram - 1, True), (ram, False),              # 24-27
        (ram - 1, False), (ram - 2, True), (ram + 1, False), (ram + 2, False),  # 28-31
        (ram - 2, False), (ram - 3, True), (0, False),                        # 32-34
    ]


def wg_bulk(w: int) -> list[list[tuple[int, bool]]]:
    """The six "Bulk test" sequences of the same file, each on a fresh filter."""
    return [
        [(i, True) for i in range(1, w + 1)] + [(0, True), (0, False)],
        [(i, True) for i in range(2, w + 2)] + [(1, True), (0, False)],
        [(i, True) for i in range(w + 1, 0, -1)],
        [(i, True) for i in range(w + 2, 1, -1)] + [(0, False)],
        [(i, True) for i in range(w, 0, -1)] + [(w + 1, True), (0, False)],
        [(i, True) for i in range(w, 0, -1)] + [(0, True), (w + 1, True)],
    ]


# 8,128 is wireguard-go's windowSize today: the port must pass its vectors unchanged.
@pytest.mark.parametrize("size", [WINDOW_SIZE, 8_128, 64])
def test_wireguard_go_vectors(size):
    window = ReplayWindow(size)
    for number, (counter, expected) in enumerate(wg_vectors(size), start=1):
        assert window.check(counter) is expected, f"test {number} check({counter})"
        assert window.accept(counter) is expected, f"test {number} accept({counter})"


@pytest.mark.parametrize("size", [WINDOW_SIZE, 8_128])
@pytest.mark.parametrize("bulk", range(6))
def test_wireguard_go_bulk(size, bulk):
    window = ReplayWindow(size)
    for counter, expected in wg_bulk(size)[bulk]:
        assert window.accept(counter) is expected, f"bulk {bulk + 1} counter {counter}"


def test_check_is_read_only():
    window = ReplayWindow()
    assert window.check(5) and window.check(5)
    assert window.highest == 0
    window.accept(5)
    assert not window.check(5) and window.check(4) and window.check(6)
    assert window.highest == 5


def test_jump_past_window_forgets_everything_and_edges():
    window = ReplayWindow(8)
    assert window.accept(3)
    assert window.accept(1_000)
    assert window.check(992) and not window.check(991)  # exactly ``size`` below is kept
    assert window.accept(1 << 63)                       # huge jump: no huge shift
    assert not window.check(1_000)
    assert not window.check(-1) and not window.accept(-1)


def test_size_must_be_positive():
    with pytest.raises(LocalProtocolError):
        ReplayWindow(0)


class SetModel:
    """The reference: remember every counter, refuse what is too far below the highest."""

    def __init__(self, size: int) -> None:
        self.size, self.seen, self.last = size, set(), 0

    def accept(self, c: int) -> bool:
        if not 0 <= c < COUNTER_LIMIT or c in self.seen or self.last - c > self.size:
            return False
        self.seen.add(c)
        self.last = max(self.last, c)
        return True


# Counters clustered near a moving base, with occasional far jumps, so both in-window
# reordering and sliding are exercised.
counters = st.lists(st.one_of(st.integers(0, 300), st.integers(0, 1 << 64)), max_size=200)


@given(counters, st.sampled_from([8, 64, 100, WINDOW_SIZE]))
def test_matches_set_model(seq, size):
    window, model = ReplayWindow(size), SetModel(size)
    for c in seq:
        expected = model.accept(c)
        assert window.check(c) is expected
        assert window.accept(c) is expected


@given(counters)
def test_never_accepts_a_counter_twice(seq):
    window, accepted = ReplayWindow(64), set()
    for c in seq + seq:
        if window.accept(c):
            assert c not in accepted
            accepted.add(c)


@given(st.integers(0, COUNTER_LIMIT - 1), st.sets(st.integers(0, WINDOW_SIZE), max_size=50),
       st.integers(0, WINDOW_SIZE))
def test_accepts_any_unseen_counter_in_window(top, seen_offsets, offset):
    window = ReplayWindow()
    window.accept(top)
    for d in seen_offsets:
        if d <= top:
            window.accept(top - d)
    if offset <= top and offset not in seen_offsets and offset != 0:
        assert window.check(top - offset) and window.accept(top - offset)
    if top + 1 < COUNTER_LIMIT:
        assert window.accept(top + 1)  # above the highest: always new


@given(st.integers(WINDOW_SIZE + 1, COUNTER_LIMIT - 1), st.integers(WINDOW_SIZE + 1, 1 << 64))
def test_rejects_below_window(top, gap):
    window = ReplayWindow()
    window.accept(top)
    if gap <= top:
        assert not window.check(top - gap) and not window.accept(top - gap)
    assert window.highest == top
