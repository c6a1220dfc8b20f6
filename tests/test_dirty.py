"""Every write path marks exactly the pages it wrote, at every level; reads never mark."""

from __future__ import annotations

import io

import numpy as np
import pytest

from npguest import AtomicBitmap, GuestMemoryMmap, VolatileSlice
from npguest.errors import InvalidGuestAddressError, PartialBufferError

PAGE = 4096
# regions [0, 0x4000) and [0x4000, 0x8000) adjacent, a hole, then [0x10000, 0x12000)
LAYOUT = [(0x0, 0x4000), (0x4000, 0x4000), (0x10000, 0x2000)]


@pytest.fixture
def mem():
    return GuestMemoryMmap.from_ranges(LAYOUT, bitmap=AtomicBitmap, page_size=PAGE)


def pages(mem) -> list[int]:
    return [int(p) // PAGE for p in mem.dirty_pages()]


WRITES = {
    "write": (lambda m: m.write(b"ab", 0x1FFF), [1, 2]),
    "write_slice": (lambda m: m.write_slice(bytes(2), 0x3FFF), [3, 4]),
    "write_obj aligned": (lambda m: m.write_obj(7, 0x5008, "<u8"), [5]),
    "write_obj unaligned": (lambda m: m.write_obj(7, 0x5FFD, "<u8"), [5, 6]),
    "write_obj structured": (
        lambda m: m.write_obj((1, 2), 0x3FFE, np.dtype([("a", "<u2"), ("b", ">u4")])),
        [3, 4],
    ),
    "write_obj big-endian": (lambda m: m.write_obj(7, 0x10000, ">u4"), [16]),
    "store": (lambda m: m.store(5, 0x11000, np.uint32), [17]),
    "write_objs": (lambda m: m.write_objs([1, 2], [0x0, 0x3FFC], "<u8"), [0, 3, 4]),
    "read_volatile_from": (lambda m: m.read_volatile_from(0x2FFF, io.BytesIO(b"xy"), 2), [2, 3]),
    "read_exact_volatile_from": (
        lambda m: m.read_exact_volatile_from(0x7FFF, io.BytesIO(b"x"), 1),
        [7],
    ),
    "slice copy_from": (lambda m: m.get_slice(0x6000, 16).copy_from(bytes(16)), [6]),
    "slice copy_to_volatile_slice": (
        lambda m: m.get_slice(0x0, 8).copy_to_volatile_slice(m.get_slice(0x11FF8, 8)),
        [17],
    ),
    "slice store": (lambda m: m.get_slice(0x2000, 8).store(1, 0, np.uint64), [2]),
    "ref store": (lambda m: m.get_slice(0x2000, 8).get_ref(4, "<u4").store(9), [2]),
    "array ref store": (
        lambda m: m.get_slice(0x1000, 64).get_array_ref(0, 8, "<u8").store(3, 1),
        [1],
    ),
    "array ref copy_from": (
        lambda m: m.get_slice(0x1000, 64).get_array_ref(0, 8, "<u8").copy_from(np.ones(8, "<u8")),
        [1],
    ),
    "region write": (lambda m: m.find_region(0x4000).write(b"z", 0x3FFF), [7]),
    "mark_dirty (raw write)": (lambda m: m.mark_dirty(0x3000, 0x1001), [3, 4]),
}


@pytest.mark.parametrize("name", list(WRITES))
def test_each_write_path_marks_exactly_its_pages(mem, name):
    write, want = WRITES[name]
    write(mem)
    assert pages(mem) == want
    # twice: the second call may take a warmed fast path
    mem.get_and_reset_dirty()
    write(mem)
    assert pages(mem) == want


READS = [
    lambda m: m.read_bytes(0x3FF0, 0x20),
    lambda m: m.read_obj(0x3FFC, "<u8"),
    lambda m: m.read_objs([0, 0x5000], "<u4"),
    lambda m: m.load(0x10000, np.uint32),
    lambda m: m.write_volatile_to(0x0, io.BytesIO(), 0x8000),
    lambda m: m.get_slice(0x0, 16).copy_to(bytearray(16)),
    lambda m: m.get_slice(0x0, 16).get_ref(0, "<u8").load(),
    lambda m: m.get_slice(0x0, 16).copy_to_volatile_slice(VolatileSlice(bytearray(16))),
]


@pytest.mark.parametrize("read", READS)
def test_reads_never_mark(mem, read):
    read(mem)
    assert pages(mem) == []


def test_partial_writes_mark_only_what_was_written(mem):
    with pytest.raises(PartialBufferError):
        mem.write_slice(bytes(0x10), 0x7FF8)  # 8 bytes land before the hole
    assert pages(mem) == [7]
    with pytest.raises(PartialBufferError):
        mem.read_exact_volatile_from(0x11FFC, io.BytesIO(bytes(16)), 16)
    assert pages(mem) == [7, 17]
    with pytest.raises(InvalidGuestAddressError):
        mem.write(b"x", 0x9000)
    with pytest.raises(PartialBufferError):
        mem.mark_dirty(0x7000, 0x2000)
    assert pages(mem) == [7, 17]


def test_raw_writes_are_untracked_until_marked(mem):
    region = mem.find_region(0x10000)
    region.as_array()[0x1010] = 1  # a numpy view of the mapping: untracked
    assert pages(mem) == []
    region.mark_dirty(0x1010, 1)
    assert pages(mem) == [17]


def test_memory_wide_queries(mem):
    mem.write_slice(bytes(0x10), 0x3FF8)  # across the adjacent regions
    mem.write_obj(1, 0x11FFF, "u1")
    assert mem.dirty_ranges().tolist() == [[0x3000, 0x2000], [0x11000, 0x1000]]
    assert mem.dirty_pages().tolist() == [0x3000, 0x4000, 0x11000]
    assert mem.get_and_reset_dirty().tolist() == [[0x3000, 0x2000], [0x11000, 0x1000]]
    assert mem.dirty_ranges().shape == (0, 2) and mem.dirty_pages().shape == (0,)
    assert mem.get_and_reset_dirty().shape == (0, 2)


def test_unaligned_region_base_and_short_last_page():
    m = GuestMemoryMmap.from_ranges([(0x1001, 0x1800)], bitmap=AtomicBitmap)
    m.write(b"x", 0x1001 + 0x17FF)
    # page 1 of the region: region offsets [0x1000, 0x1800), cut at the region's end
    assert m.dirty_ranges().tolist() == [[0x2001, 0x800]]
    assert m.dirty_pages().tolist() == [0x2001]


def test_mixed_bitmaps_and_untracked_regions():
    class Recorder:
        def __init__(self, size, page_size=4096):
            self.marks = []

        def mark_dirty(self, offset, length):
            self.marks.append((offset, length))

        def dirty_at(self, offset):
            return False

        def slice_at(self, offset):
            return self

    a = GuestMemoryMmap.from_ranges([(0, 0x1000)], bitmap=AtomicBitmap)
    b = GuestMemoryMmap.from_ranges([(0x1000, 0x1000)], bitmap=Recorder)
    c = GuestMemoryMmap.from_ranges([(0x2000, 0x1000)])
    m = GuestMemoryMmap.from_regions([*a.iter(), *b.iter(), *c.iter()])
    m.write_objs([1, 2, 3], [0xFFC, 0x1FFC, 0x2000], "<u8")
    assert sorted(next(b.iter()).get_mmap().bitmap().marks) == [(0, 4), (0xFFC, 4)]
    assert a.dirty_ranges().tolist() == [[0, 0x1000]]
    with pytest.raises(TypeError, match="AtomicBitmap"):
        m.dirty_ranges()
    assert c.dirty_ranges().shape == (0, 2)


def test_large_write_slice_marks_every_page(mem):
    mem.write_slice(bytes(0x8000), 0)
    assert mem.dirty_ranges().tolist() == [[0, 0x8000]]
    assert len(pages(mem)) == 8


def test_a_bitmap_smaller_than_its_region_ignores_marks_past_its_end():
    """vm-memory ignores bits past a bitmap's length: so does every write path."""
    from npguest import GuestRegionMmap, MmapRegion

    bitmap = AtomicBitmap(0x2000, PAGE)  # covers half of the 0x4000-byte mapping
    m = GuestMemoryMmap.from_regions([GuestRegionMmap(MmapRegion(0x4000, bitmap=bitmap), 0)])
    for _ in range(2):  # cold and warmed fast path
        m.write_obj(1, 0x3008, "<u8")
        m.write_obj(1, 0x1008, "<u8")
        m.write_objs([1, 2], [0x3010, 0x10], "<u8")
        m.write_slice(bytes(0x100), 0x1F80)
    assert bitmap.dirty_pages().tolist() == [0, 1]
    assert m.read_obj(0x3008, "<u8") == 1


def test_one_bitmap_instance_cannot_track_several_regions():
    from npguest.errors import BitmapError

    with pytest.raises(BitmapError, match="factory"):
        GuestMemoryMmap.from_ranges([(0, 0x1000), (0x10000, 0x1000)], bitmap=AtomicBitmap(0x1000))
    one = GuestMemoryMmap.from_ranges([(0, 0x1000)], bitmap=AtomicBitmap(0x1000))
    one.write_obj(1, 0x10, "<u8")
    assert one.dirty_ranges().tolist() == [[0, 0x1000]]


def test_failed_take_clears_nothing():
    """get_and_reset_dirty checks every bitmap before it takes any."""
    from _support import ByteBitmap

    a = GuestMemoryMmap.from_ranges([(0, 0x4000)], bitmap=AtomicBitmap)
    b = GuestMemoryMmap.from_ranges([(0x4000, 0x4000)], bitmap=ByteBitmap)
    m = GuestMemoryMmap.from_regions([*a.iter(), *b.iter()])
    m.write_obj(1, 0x1000, "<u8")
    with pytest.raises(TypeError):
        m.get_and_reset_dirty()
    assert a.dirty_ranges().tolist() == [[0x1000, 0x1000]]


def test_oversized_bitmap_marks_stay_inside_the_region():
    from npguest import GuestRegionMmap, MmapRegion

    bitmap = AtomicBitmap(0x3000, PAGE)
    r0 = GuestRegionMmap(MmapRegion(0x1000, bitmap=bitmap), 0)
    r1 = GuestRegionMmap.from_range(0x1000, 0x2000, bitmap=AtomicBitmap)
    m = GuestMemoryMmap.from_regions([r0, r1])
    r0.bitmap().mark_dirty(0x1800, 1)  # past r0's end: r1's clean memory must not look dirty
    m.write_obj(1, 0x10, "u1")
    assert m.dirty_ranges().tolist() == [[0, 0x1000]]
    assert m.dirty_pages().tolist() == [0]
