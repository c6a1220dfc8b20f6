"""hand_over: every taken page is either handed over or dirty again, whatever fails where."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npguest import AtomicBitmap, GuestMemoryMmap
from npguest.errors import PartialBufferError, StreamError
from npguest.handover import Taken, hand_over, split_ranges
from npguest.progress import Tracker

PAGE = 4096
LAYOUT = [(0, 8 * PAGE), (8 * PAGE, 8 * PAGE), (32 * PAGE, 8 * PAGE)]  # adjacent, then a hole
PAGES = [p for base, size in LAYOUT for p in range(base // PAGE, (base + size) // PAGE)]


def pages_of(ranges) -> set[int]:
    return {p for a, n in ranges for p in range(a // PAGE, -(-(a + n) // PAGE))}


@given(
    dirty=st.sets(st.sampled_from(PAGES), min_size=1),
    fail_at=st.integers(0, 40),
    through=st.integers(0, 3 * PAGE),
    kind=st.sampled_from(["os", "partial", "stream"]),
)
def test_nothing_is_lost(dirty, fail_at, through, kind):
    mem = GuestMemoryMmap.from_ranges(LAYOUT, bitmap=AtomicBitmap)
    for p in dirty:
        mem.write(b"x", p * PAGE)
    ranges = mem.get_and_reset_dirty()
    assert pages_of(ranges.tolist()) == dirty
    sent = []

    def send(addr, length):
        if len(sent) == fail_at:
            n = min(through, length)
            sent.append((addr, n))
            if kind == "os":
                raise OSError("connection reset")
            raise PartialBufferError(length, n) if kind == "partial" else StreamError("short", n)
        sent.append((addr, length))

    seen = []
    if fail_at >= len(ranges):
        total = hand_over(mem, ranges, send, Tracker(seen.append))
        assert total == sum(n for _, n in ranges.tolist()) == seen[-1].done
        assert mem.dirty_ranges().shape == (0, 2)
        return
    with pytest.raises(StreamError) as info:
        hand_over(mem, ranges, send, Tracker(seen.append))
    addr, length = ranges[fail_at].tolist()
    assert (info.value.addr, info.value.length) == (addr, length)
    assert f"{addr:#x}+{length}" in str(info.value) and info.value.__cause__ is not None
    if kind == "os":
        sent[-1] = (addr, 0)
    assert info.value.completed == sum(n for _, n in sent)
    handed = pages_of(sent[:-1]) | {
        p for p in pages_of([sent[-1]]) if (p + 1) * PAGE <= addr + sent[-1][1]
    }
    # every taken page: handed over whole, or dirty again (a page half through is resent)
    assert pages_of(mem.dirty_ranges().tolist()) == dirty - handed


def test_split_ranges():
    ranges = np.array([[0, 10], [16, 0], [20, 4], [2**40, 9]], dtype=np.uint64)
    got = split_ranges(ranges, 4)
    assert got.dtype == np.uint64
    assert got.tolist() == [[0, 4], [4, 4], [8, 2], [20, 4], [2**40, 4], [2**40 + 4, 4],
                            [2**40 + 8, 1]]  # fmt: skip
    assert split_ranges(np.empty((0, 2), dtype=np.uint64), 4).shape == (0, 2)
    with pytest.raises(ValueError, match="chunk"):
        split_ranges(ranges, 0)


def _taken(pages):
    mem = GuestMemoryMmap.from_ranges(LAYOUT, bitmap=AtomicBitmap)
    for p in pages:
        mem.write(b"x", p * PAGE)
    return mem, mem.get_and_reset_dirty()


def test_interrupts_and_failing_callbacks_lose_nothing():
    mem, ranges = _taken([1, 3, 5])
    sent = []

    def interrupted(addr, length):
        if addr == 3 * PAGE:
            raise KeyboardInterrupt
        sent.append(addr)

    with pytest.raises(KeyboardInterrupt):
        hand_over(mem, ranges, interrupted)
    assert sent == [PAGE] and pages_of(mem.dirty_ranges().tolist()) == {3, 5}

    mem, ranges = _taken([1, 3, 5])

    def callback(progress):
        if progress.done:
            raise ValueError("the progress bar broke")

    with pytest.raises(StreamError, match="progress bar broke") as info:
        hand_over(mem, ranges, lambda a, n: None, Tracker(callback))
    assert (info.value.addr, info.value.completed) == (PAGE, PAGE)
    assert pages_of(mem.dirty_ranges().tolist()) == {3, 5}  # range 1 did get through


def test_taken_remarks_everything_until_handed_over():
    mem, ranges = _taken([1, 9, 33])
    with pytest.raises(OSError, match="no such file"), Taken(mem, ranges):
        raise OSError("no such file")
    assert pages_of(mem.dirty_ranges().tolist()) == {1, 9, 33}
    ranges = mem.get_and_reset_dirty()
    with pytest.raises(StreamError), Taken(mem, ranges) as taken:
        taken.hand_over(lambda a, n: (_ for _ in ()).throw(OSError("reset")) if a > PAGE else None)
    assert pages_of(mem.dirty_ranges().tolist()) == {9, 33}  # page 1 went: not re-marked
    with Taken(mem, mem.get_and_reset_dirty()) as taken:
        assert taken.hand_over(lambda a, n: None) == 2 * PAGE
    assert mem.dirty_ranges().shape == (0, 2)


def test_remarking_survives_a_shrunk_memory():
    _, ranges = _taken([1, 33])
    smaller = GuestMemoryMmap.from_ranges(LAYOUT[:2], bitmap=AtomicBitmap)  # no region at 32
    with pytest.raises(StreamError):
        hand_over(smaller, ranges, lambda a, n: (_ for _ in ()).throw(OSError("gone")))
    assert pages_of(smaller.dirty_ranges().tolist()) == {1}


def test_taken_ranges_already_moved_in_a_batch_are_skipped():
    mem, ranges = _taken([1, 9, 33])
    sent = []
    with pytest.raises(StreamError) as info, Taken(mem, ranges) as taken:
        taken.hand_over(lambda a, n: sent.append(a) or (_ for _ in ()).throw(OSError("x")), first=1)
    assert sent == [9 * PAGE] and info.value.addr == 9 * PAGE
    assert pages_of(mem.dirty_ranges().tolist()) == {9, 33}  # page 1 went by the batch


@pytest.mark.parametrize("first", [-1, 4, 1.0, True])
def test_taken_first_must_be_an_index(first):
    mem, ranges = _taken([1, 9, 33])
    with pytest.raises(ValueError, match="first must be an index"), Taken(mem, ranges) as taken:
        taken.hand_over(lambda a, n: None, first=first)
    assert pages_of(mem.dirty_ranges().tolist()) == {1, 9, 33}  # still held: all re-marked
