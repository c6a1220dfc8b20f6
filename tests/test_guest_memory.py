"""GuestMemoryMmap against vm-memory's reference tables (reference §2.4, §3.1-§3.3, §3.7)."""

from __future__ import annotations

import gc
import io
import pickle
import threading
import time

import numpy as np
import pytest
from _support import ByteBitmap

from npguest import (
    FileOffset,
    GuestAddress,
    GuestMemoryMmap,
    GuestRegionMmap,
    MemoryRegionAddress,
    MmapRegion,
    VolatileSlice,
)
from npguest.errors import (
    ByteValuedError,
    CallbackOutOfRangeError,
    GuestAddressOverflowError,
    GuestMemoryError,
    InvalidBackendAddressError,
    InvalidGuestAddressError,
    InvalidGuestRegionError,
    MemoryRegionOverlapError,
    MmapRegionError,
    NoMemoryRegionError,
    PartialBufferError,
    ReadOnlyMemoryError,
    UnsortedMemoryRegionsError,
)

U64_MAX = 2**64 - 1
PAGE = 4096


def dirty(mem: GuestMemoryMmap) -> list[tuple[int, int]]:
    """Dirty bytes of ``mem`` as coalesced (guest start, length) runs."""
    runs = []
    for r in mem.iter():
        bits = r.get_mmap()._bitmap.bits
        idx = np.flatnonzero(bits)
        if not idx.size:
            continue
        breaks = np.flatnonzero(np.diff(idx) != 1)
        starts = np.concatenate(([idx[0]], idx[breaks + 1]))
        ends = np.concatenate((idx[breaks], [idx[-1]]))
        base = int(r.start_addr())
        runs += [(base + int(s), int(e - s + 1)) for s, e in zip(starts, ends, strict=True)]
    return runs


def _close(m: GuestMemoryMmap) -> None:
    """Close ``m``; pytest.raises keeps tracebacks, hence frames holding views, in cycles."""
    regions = list(m.iter())
    try:
        m.close()
    except MmapRegionError:
        gc.collect()
        for r in regions:
            r.close()


@pytest.fixture
def mem() -> GuestMemoryMmap:
    """vm-memory's §3.1 layout: [0, 0x400) and [0x800, 0xc00), byte-level dirty tracking."""
    m = GuestMemoryMmap.from_ranges([(0, 0x400), (0x800, 0x400)], bitmap=ByteBitmap)
    yield m
    _close(m)


@pytest.fixture
def mem3() -> GuestMemoryMmap:
    """Upstream's get_slices/checked_offset layout: [0,0x400), [0x800,0xc00), [0xc00,0x1000)."""
    m = GuestMemoryMmap.from_ranges([(0, 0x400), (0x800, 0x400), (0xC00, 0x400)])
    yield m
    _close(m)


@pytest.fixture
def adj() -> GuestMemoryMmap:
    """§3.2 try_access layout: [0,0x400), [0x400,0x800), [0x1000,0x1400)."""
    m = GuestMemoryMmap.from_ranges([(0, 0x400), (0x400, 0x400), (0x1000, 0x400)])
    yield m
    _close(m)


# -- construction (§3.7) -----------------------------------------------------------------


def test_from_ranges_empty_is_no_memory_region():
    with pytest.raises(NoMemoryRegionError) as ei:
        GuestMemoryMmap.from_ranges([])
    assert ei.value.addr is None
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize(
    "ranges",
    [
        [(0, 0)],
        [(0, 0x1000), (0x1000, 0)],
        [(0x1000, 0x1000), (0, 0)],  # mmap fails before the collection is validated
        [(0, 0x1000), (0, 0x1000), (0x3000, 0)],  # ... even before the overlap check
        [(0, -1)],
    ],
)
def test_from_ranges_bad_size_is_mmap_error(ranges):
    with pytest.raises(MmapRegionError) as ei:
        GuestMemoryMmap.from_ranges(ranges)
    assert type(ei.value) is MmapRegionError
    assert isinstance(ei.value, OSError)


def test_region_reaching_2_64_is_invalid_guest_region():
    with pytest.raises(InvalidGuestRegionError) as ei:
        GuestMemoryMmap.from_ranges([(2**64 - 0x1000, 0x1000)])
    assert (ei.value.addr, ei.value.size) == (2**64 - 0x1000, 0x1000)
    with pytest.raises(InvalidGuestRegionError):
        GuestMemoryMmap.from_ranges([(U64_MAX, 1)])
    # the span check comes before the collection checks (vm-memory maps before validating)
    with pytest.raises(InvalidGuestRegionError):
        GuestMemoryMmap.from_ranges([(0x1000, 0x1000), (0, 0x1000), (2**64 - 0x800, 0x1000)])


def test_region_ending_just_below_2_64_is_valid():
    m = GuestMemoryMmap.from_ranges([(2**64 - 0x1001, 0x1000)])
    assert m.last_addr() == GuestAddress(2**64 - 2)
    assert m.num_regions() == 1
    assert m.address_in_range(2**64 - 2)
    assert not m.address_in_range(U64_MAX)
    m.write_obj(0x1122334455667788, 2**64 - 9, "<u8")
    assert m.read_bytes(2**64 - 9, 8) == bytes.fromhex("8877665544332211")
    with pytest.raises(PartialBufferError) as ei:
        m.write_obj(1, 2**64 - 4, "<u8")
    assert (ei.value.expected, ei.value.completed) == (8, 3)
    with pytest.raises(InvalidGuestAddressError) as ei:
        m.read_obj(U64_MAX, "<u2")
    assert ei.value.addr == U64_MAX
    del ei  # its traceback holds frames that hold views of the mapping
    _close(m)


@pytest.mark.parametrize(
    ("ranges", "first", "second"),
    [
        ([(0, 0x1000), (0xFFF, 0x1000)], 0, 0xFFF),
        ([(0, 0x1000), (0, 0x1000)], 0, 0),
        ([(0, 0x1000), (0x800, 0x10), (0x100, 0x10)], 0, 0x800),  # first failing pair wins
        ([(0x10, 1), (0x10, 0x1000)], 0x10, 0x10),
    ],
)
def test_overlap(ranges, first, second):
    with pytest.raises(MemoryRegionOverlapError) as ei:
        GuestMemoryMmap.from_ranges(ranges)
    assert (ei.value.first_start, ei.value.second_start) == (first, second)


@pytest.mark.parametrize(
    ("ranges", "first", "second"),
    [
        ([(0x1000, 0x1000), (0, 0x1000)], 0x1000, 0),
        ([(0, 0x10), (0x2000, 0x1000), (0x100, 0x10)], 0x2000, 0x100),
        # within a pair, the order rule is checked before the overlap rule
        ([(0x1000, 0x1000), (0x800, 0x1000)], 0x1000, 0x800),
    ],
)
def test_unsorted(ranges, first, second):
    with pytest.raises(UnsortedMemoryRegionsError) as ei:
        GuestMemoryMmap.from_ranges(ranges)
    assert (ei.value.first_start, ei.value.second_start) == (first, second)


def test_touching_regions_are_valid_and_spanned():
    m = GuestMemoryMmap.from_ranges([(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
    assert m.num_regions() == 2
    assert m.write(b"\x01\x02\x03\x04\x05", 0xFFC) == 5
    assert m.read_bytes(0xFFC, 5) == b"\x01\x02\x03\x04\x05"
    assert m.check_range(0, 0x2000)
    assert not m.check_range(0, 0x2001)
    # upstream: write_obj(u64) across the join works, across the end is partial
    m.write_obj(0x0102030405060708, 0xFFC, "<u8")
    assert m.read_obj(0xFFC, "<u8") == 0x0102030405060708
    with pytest.raises(PartialBufferError) as ei:
        m.write_obj(7, 0x1FFC, "<u8")
    assert (ei.value.expected, ei.value.completed) == (8, 4)
    with pytest.raises(InvalidGuestAddressError) as ei:
        m.write_obj(7, 0x2001, "<u8")
    assert ei.value.addr == 0x2001
    del ei
    _close(m)


def test_unaligned_guest_ranges():
    m = GuestMemoryMmap.from_ranges([(1, 3), (4, 5)])
    assert m.last_addr() == GuestAddress(8)
    assert m.write(b"abcdefghij", 1) == 8
    assert m.read_bytes(1, 8) == b"abcdefgh"
    with pytest.raises(InvalidGuestAddressError) as ei:
        m.write(b"x", 0)
    assert ei.value.addr == 0
    _close(m)


def test_from_ranges_rejects_bad_items():
    with pytest.raises(TypeError):
        GuestMemoryMmap.from_ranges([(0, 0x1000, None)])
    with pytest.raises(GuestAddressOverflowError):
        GuestMemoryMmap.from_ranges([(-1, 0x1000)])


# -- files -------------------------------------------------------------------------------


def _pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def test_from_ranges_with_files_nonzero_offset(tmp_path):
    path = tmp_path / "guest.img"
    path.write_bytes(_pattern(4 * PAGE))
    with open(path, "r+b") as f:
        m = GuestMemoryMmap.from_ranges_with_files(
            [(0x10000, PAGE, FileOffset(f, PAGE)), (0x11000, 0x800, None)]
        )
        r0, r1 = m.iter()
        assert r0.file_offset().start() == PAGE
        assert r0.file_offset().file() is f
        assert r1.file_offset() is None
        # the file's bytes [PAGE, 2*PAGE) appear at guest 0x10000
        assert m.read_bytes(0x10000, PAGE) == _pattern(4 * PAGE)[PAGE : 2 * PAGE]
        # a write crossing into the anonymous region: the file gets only its part
        m.write_slice(b"\xaa" * 8, 0x10FFC)
        m.write_obj(0xDEADBEEF, 0x10010, ">u4")
        _close(m)
    data = path.read_bytes()
    expect = bytearray(_pattern(4 * PAGE))
    expect[2 * PAGE - 4 : 2 * PAGE] = b"\xaa" * 4
    expect[PAGE + 0x10 : PAGE + 0x14] = b"\xde\xad\xbe\xef"
    assert data == bytes(expect)


def test_from_ranges_with_files_written_by_npguest_read_by_open(tmp_path):
    path = tmp_path / "out.img"
    path.write_bytes(bytes(2 * PAGE))
    payload = _pattern(2 * PAGE, seed=3)
    m = GuestMemoryMmap.from_ranges_with_files(
        [(0, PAGE, FileOffset(path, 0)), (PAGE, PAGE, FileOffset(path, PAGE))]
    )
    m.write_slice(payload, 0)
    _close(m)
    with open(path, "rb") as f:
        assert f.read() == payload


def test_from_ranges_with_files_private_is_copy_on_write(tmp_path):
    path = tmp_path / "cow.img"
    path.write_bytes(_pattern(PAGE))
    with open(path, "r+b") as f:
        m = GuestMemoryMmap.from_ranges_with_files([(0, PAGE, FileOffset(f, 0))], shared=False)
        m.write_slice(b"zzzz", 0)
        assert m.read_bytes(0, 6) == b"zzzz" + _pattern(PAGE)[4:6]
        _close(m)
    assert path.read_bytes() == _pattern(PAGE)


def test_from_ranges_with_files_readonly(tmp_path):
    path = tmp_path / "ro.img"
    path.write_bytes(_pattern(2 * PAGE))
    with open(path, "rb") as f:
        m = GuestMemoryMmap.from_ranges_with_files(
            [(0x1000, PAGE, FileOffset(f, PAGE))], readonly=True
        )
        (r,) = m.iter()
        assert r.is_readonly()
        expect = int.from_bytes(_pattern(2 * PAGE)[PAGE : PAGE + 2], "little")
        assert m.read_obj(0x1000, "<u2") == expect
        assert m.read_bytes(0x1000, 4) == _pattern(2 * PAGE)[PAGE : PAGE + 4]
        writes = [
            lambda: m.write(b"x", 0x1010),
            lambda: m.write_slice(b"xy", 0x1FFF),
            lambda: m.write_obj(1, 0x1010, "<u4"),
            lambda: m.write_obj(np.uint8(1), 0x1011),
            lambda: m.store(1, 0x1010, np.uint32),
            lambda: m.read_volatile_from(0x1010, io.BytesIO(b"abc"), 3),
            lambda: m.read_exact_volatile_from(0x1010, io.BytesIO(b"abc"), 3),
            lambda: m.write_objs([1, 2], [0x1000, 0x1008], "<u8"),
        ]
        for w in writes:
            with pytest.raises(ReadOnlyMemoryError) as ei:
                w()
            assert isinstance(ei.value, PermissionError)
            assert 0x1000 <= ei.value.addr < 0x2000
        # zero-length writes check nothing
        assert m.write(b"", 0x1010) == 0
        _close(m)
    assert path.read_bytes() == _pattern(2 * PAGE)


def test_readonly_error_names_the_write_address(tmp_path):
    path = tmp_path / "ro2.img"
    path.write_bytes(bytes(PAGE))
    with open(path, "rb") as f:
        m = GuestMemoryMmap.from_ranges_with_files([(0x3000, PAGE, FileOffset(f))], readonly=True)
        with pytest.raises(ReadOnlyMemoryError) as ei:
            m.write(b"abc", 0x3123)
        assert ei.value.addr == 0x3123
        del ei
        _close(m)


def test_from_ranges_with_files_unaligned_offset_and_short_file(tmp_path):
    path = tmp_path / "short.img"
    path.write_bytes(bytes(range(256)) * (PAGE // 256))
    with open(path, "r+b") as f:
        m = GuestMemoryMmap.from_ranges_with_files([(0, 0x100, FileOffset(f, 0x100))])
        assert m.read_bytes(0, 0x100) == bytes(range(256))  # mapped mid-page
        _close(m)
        with pytest.raises(MmapRegionError):
            GuestMemoryMmap.from_ranges_with_files([(0, 0x100, FileOffset(f, PAGE - 0xFF))])
        # npguest refuses a file shorter than the mapping (vm-memory would SIGBUS later)
        with pytest.raises(MmapRegionError):
            GuestMemoryMmap.from_ranges_with_files([(0, 2 * PAGE, FileOffset(f, 0))])
        with pytest.raises(MmapRegionError):
            GuestMemoryMmap.from_ranges_with_files([(0, PAGE, FileOffset(f, PAGE))])
        with pytest.raises(NoMemoryRegionError):
            GuestMemoryMmap.from_ranges_with_files([])
        with pytest.raises(TypeError):
            GuestMemoryMmap.from_ranges_with_files([(0, PAGE)])


# -- from_regions / insert / remove ------------------------------------------------------


def test_from_regions():
    r0 = GuestRegionMmap.from_range(0, 0x1000)
    r1 = GuestRegionMmap.from_range(0x1000, 0x1000)
    m = GuestMemoryMmap.from_regions([r0, r1])
    assert list(m.iter()) == [r0, r1]
    assert list(m) == [r0, r1]
    assert len(m) == 2
    with pytest.raises(NoMemoryRegionError):
        GuestMemoryMmap.from_regions([])
    with pytest.raises(UnsortedMemoryRegionsError):
        GuestMemoryMmap.from_regions([r1, r0])
    with pytest.raises(MemoryRegionOverlapError):
        GuestMemoryMmap.from_regions([r0, r0])
    # an empty collection is fine through the constructor (vm-memory's new())
    e = GuestMemoryMmap()
    assert e.num_regions() == 0
    assert list(e.iter()) == []
    assert e.last_addr() == GuestAddress(0)
    _close(m)


def test_insert_region_is_immutable():
    m = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x4000, 0x1000)])
    m.write(b"keep", 0)
    r = GuestRegionMmap.from_range(0x2000, 0x1000)
    m2 = m.insert_region(r)
    assert m.num_regions() == 2
    assert [int(x.start_addr()) for x in m.iter()] == [0, 0x4000]
    assert [int(x.start_addr()) for x in m2.iter()] == [0, 0x2000, 0x4000]
    assert m2.starts.tolist() == [0, 0x2000, 0x4000]
    assert m.starts.tolist() == [0, 0x4000]
    assert not m.address_in_range(0x2000)
    assert m2.address_in_range(0x2000)
    with pytest.raises(InvalidGuestAddressError):
        m.write(b"x", 0x2000)
    m2.write(b"y", 0x2000)
    assert r.read_bytes(0, 1) == b"y"
    # the regions are shared: a write through one collection is visible through the other
    assert m2.read_bytes(0, 4) == b"keep"
    with pytest.raises(MemoryRegionOverlapError):
        m2.insert_region(GuestRegionMmap.from_range(0x2FFF, 0x10))
    with pytest.raises(MemoryRegionOverlapError):
        m2.insert_region(GuestRegionMmap.from_range(0x2000, 0x10))
    assert m2.num_regions() == 3
    # inserting into an empty collection
    e = GuestMemoryMmap().insert_region(r)
    assert e.num_regions() == 1


def test_remove_region():
    m = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000), (0x4000, 0x800)])
    m2, removed = m.remove_region(GuestAddress(0x1000), 0x1000)
    assert int(removed.start_addr()) == 0x1000 and removed.len() == 0x1000
    assert m.num_regions() == 3 and m.check_range(0, 0x2000)
    assert m2.num_regions() == 2 and not m2.check_range(0, 0x2000)
    assert m2.find_region(0x1000) is None
    for base, size in [(0x1000, 0x800), (0x1001, 0xFFF), (0x2000, 0x1000), (0x4000, 0x1000)]:
        with pytest.raises(NoMemoryRegionError) as ei:
            m.remove_region(base, size)
        assert (ei.value.addr, ei.value.size) == (base, size)
    # removing everything gives an empty collection without error
    e, _ = GuestMemoryMmap.from_ranges([(0x10, 0x10)]).remove_region(0x10, 0x10)
    assert e.num_regions() == 0 and e.last_addr() == GuestAddress(0)
    with pytest.raises(NoMemoryRegionError):
        e.remove_region(0x10, 0x10)


def test_rebase_region_with_arc():
    """Upstream test_change_region_addr: remove, with_arc at a new base, insert."""
    m = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000)])
    m.write_slice(b"hello", 0x1000)
    m2, old = m.remove_region(0x1000, 0x1000)
    moved = GuestRegionMmap.with_arc(old.get_mmap(), 0x8000)
    assert moved.get_mmap() is old.get_mmap()
    m3 = m2.insert_region(moved)
    assert m3.read_bytes(0x8000, 5) == b"hello"
    assert m3.find_region(0x1000) is None
    assert m3.last_addr() == GuestAddress(0x8FFF)
    # the mapping is shared: old address in the old memory sees writes at the new one
    m3.write_slice(b"HELLO", 0x8000)
    assert m.read_bytes(0x1000, 5) == b"HELLO"
    with pytest.raises(InvalidGuestRegionError):
        GuestRegionMmap.with_arc(old.get_mmap(), 2**64 - 0x1000)


# -- lookup (§3.3) -----------------------------------------------------------------------


def test_num_regions_iter_len_find_region(mem3):
    assert mem3.num_regions() == 3 == len(mem3)
    regions = list(mem3.iter())
    assert [int(r.start_addr()) for r in regions] == [0, 0x800, 0xC00]
    assert [r.len() for r in regions] == [0x400] * 3
    cases = {0: 0, 0x3FF: 0, 0x400: None, 0x7FF: None, 0x800: 1, 0xBFF: 1, 0xC00: 2, 0xFFF: 2}
    cases |= {0x1000: None, U64_MAX: None}
    for addr, want in cases.items():
        found = mem3.find_region(addr)
        assert found is (None if want is None else regions[want]), hex(addr)
        assert mem3.find_region(GuestAddress(addr)) is found
        assert mem3.address_in_range(addr) is (want is not None)
        assert mem3.check_address(addr) == (None if want is None else GuestAddress(addr))
    with pytest.raises(GuestAddressOverflowError):
        mem3.find_region(2**64)
    with pytest.raises(TypeError):
        mem3.find_region(1.0)


def test_last_addr():
    assert GuestMemoryMmap().last_addr() == GuestAddress(0)
    m = GuestMemoryMmap.from_ranges([(0x0, 0x10), (0x1000, 0x400)])
    assert m.last_addr() == GuestAddress(0x13FF)
    assert m.starts.tolist() == [0, 0x1000] and m.ends.tolist() == [0x10, 0x1400]
    assert m.starts.dtype == np.uint64 and not m.starts.flags.writeable


def test_to_region_addr(mem3):
    r0, r1, r2 = mem3.iter()
    assert mem3.to_region_addr(0xA00) == (r1, MemoryRegionAddress(0x200))
    assert mem3.to_region_addr(0xBFF) == (r1, MemoryRegionAddress(0x3FF))
    assert mem3.to_region_addr(0xC00) == (r2, MemoryRegionAddress(0))
    assert mem3.to_region_addr(GuestAddress(0)) == (r0, MemoryRegionAddress(0))
    assert mem3.to_region_addr(0x600) is None
    assert mem3.to_region_addr(0x1000) is None
    region, off = mem3.to_region_addr(0x3FF)
    assert region is r0 and type(off) is MemoryRegionAddress


@pytest.mark.parametrize(
    ("base", "length", "expected"),
    [
        (0, 0x400, True),
        (0, 0xA00, False),
        (0x800, 0x7FF, True),
        (0x800, 0x800, True),  # spans two adjacent regions
        (0x800, 0x801, False),
        (0x800, 0xC00, False),
        (0, U64_MAX, False),
        (0x3FF, 1, True),
        (0x3FF, 2, False),
        (0x600, 0, True),  # len 0 is true anywhere
        (U64_MAX, 0, True),
        (0x1000, 0, True),
        (0x600, 1, False),
        (0xFFF, 1, True),
        (0xFFF, 2, False),
        (U64_MAX, 1, False),
        (U64_MAX, U64_MAX, False),
    ],
)
def test_check_range(mem3, base, length, expected):
    assert mem3.check_range(base, length) is expected
    assert mem3.check_range(GuestAddress(base), length) is expected


def test_check_range_empty_memory():
    e = GuestMemoryMmap()
    assert e.check_range(0, 0) is True
    assert e.check_range(0x1234, 0) is True
    assert e.check_range(0, 1) is False


@pytest.mark.parametrize(
    ("base", "offset", "expected"),
    [
        (0, 0x200, 0x200),
        (0, 0xA00, 0xA00),  # spans a hole: only the end point is checked
        (0x800, 0x7FF, 0xFFF),
        (0x800, 0xC00, None),
        (0, U64_MAX, None),
        (0, 0x400, None),
        (0, 0x3FF, 0x3FF),
        (0x600, 0x200, 0x800),  # the base itself need not be backed
        (1, U64_MAX, None),  # overflow
        (U64_MAX, 0, None),
        (0xFFF, 0, 0xFFF),
    ],
)
def test_checked_offset(mem3, base, offset, expected):
    got = mem3.checked_offset(base, offset)
    assert got == (None if expected is None else GuestAddress(expected))
    if expected is not None:
        assert type(got) is GuestAddress


def test_get_host_address(mem):
    r0, r1 = mem.iter()
    h = mem.get_host_address(0x3FF)
    assert h == r0.get_mmap().as_ptr() + 0x3FF == r0.get_host_address(0x3FF)
    assert mem.get_host_address(GuestAddress(0x900)) == r1.get_mmap().as_ptr() + 0x100
    for bad in (0x400, 0x7FF, 0xC00, U64_MAX):
        with pytest.raises(InvalidGuestAddressError) as ei:
            mem.get_host_address(bad)
        assert ei.value.addr == bad
    with pytest.raises(InvalidBackendAddressError):
        r0.get_host_address(0x400)


def test_get_slice(mem3):
    s = mem3.get_slice(0x900, 0)
    assert type(s) is VolatileSlice and s.len() == 0
    s = mem3.get_slice(0x900, 0x300)
    assert s.len() == 0x300
    s.write(b"via slice", 0x10)
    assert mem3.read_bytes(0x910, 9) == b"via slice"
    with pytest.raises(InvalidBackendAddressError):
        mem3.get_slice(0, 0x500)
    with pytest.raises(InvalidBackendAddressError):  # must lie in one region
        mem3.get_slice(0xA00, 0x400)
    for addr, count in [(0x600, 0x100), (0x1000, 0x100), (0x600, 0), (0x400, 0), (U64_MAX, 0)]:
        with pytest.raises(InvalidGuestAddressError) as ei:
            mem3.get_slice(addr, count)
        assert ei.value.addr == addr


def test_get_slice_c00(mem):
    with pytest.raises(InvalidGuestAddressError) as ei:
        mem.get_slice(0xC00, 0x100)
    assert ei.value.addr == 0xC00


# -- get_slices (§3.2) -------------------------------------------------------------------


def _collect(it):
    """Iterate to the end: ('ok', len) items, then ('err', addr) if it raised."""
    out = []
    while True:
        try:
            s = next(it)
        except StopIteration:
            return out
        except InvalidGuestAddressError as e:
            out.append(("err", e.addr))
        else:
            out.append(("ok", s.len()))


@pytest.mark.parametrize(
    ("addr", "count", "items"),
    [
        (0x100, 0x200, [("ok", 0x200)]),
        (0x800, 0x400, [("ok", 0x400)]),
        (0x900, 0, []),
        (0x600, 0, []),  # count 0: empty even at a hole
        (0, 0x500, [("ok", 0x400), ("err", 0x400)]),
        (0x600, 0x100, [("err", 0x600)]),
        (0x1000, 0x100, [("err", 0x1000)]),
        (0xA00, 0x400, [("ok", 0x200), ("ok", 0x200)]),  # adjacent regions are not merged
        (0xA00, 0x700, [("ok", 0x200), ("ok", 0x400), ("err", 0x1000)]),
    ],
)
def test_get_slices(mem3, addr, count, items):
    assert _collect(mem3.get_slices(addr, count)) == items


def test_get_slices_fused_after_error(mem3):
    it = mem3.get_slices(0, 0x500)
    assert next(it).len() == 0x400
    with pytest.raises(InvalidGuestAddressError):
        next(it)
    for _ in range(3):
        with pytest.raises(StopIteration):
            next(it)
    assert iter(it) is it


def test_get_slices_are_views(mem3):
    slices = list(mem3.get_slices(0xBFE, 4))
    assert [s.len() for s in slices] == [2, 2]
    slices[0].write(b"ab", 0)
    slices[1].write(b"cd", 0)
    assert mem3.read_bytes(0xBFE, 4) == b"abcd"


def test_stop_on_error(mem3):
    assert [s.len() for s in mem3.get_slices(0, 0x500).stop_on_error()] == [0x400]
    assert [s.len() for s in mem3.get_slices(0xA00, 0x400).stop_on_error()] == [0x200, 0x200]
    assert list(mem3.get_slices(0x600, 0).stop_on_error()) == []
    # the error of the first item is raised by stop_on_error itself
    with pytest.raises(InvalidGuestAddressError) as ei:
        mem3.get_slices(0x600, 0x100).stop_on_error()
    assert ei.value.addr == 0x600
    with pytest.raises(InvalidGuestAddressError):
        GuestMemoryMmap().get_slices(0, 1).stop_on_error()
    # later errors truncate silently, and nothing follows them
    lens = [s.len() for s in mem3.get_slices(0xA00, 0x700).stop_on_error()]
    assert lens == [0x200, 0x400]


# -- try_access (§3.2) -------------------------------------------------------------------


def test_try_access_consume_all(adj):
    calls = []

    def f(done, length, off, region):
        calls.append((done, length, off, int(region.start_addr())))
        return length

    assert adj.try_access(0x500, 0x3F0, f) == 0x410
    assert calls == [
        (0, 16, MemoryRegionAddress(0x3F0), 0),
        (16, 0x400, MemoryRegionAddress(0), 0x400),
    ]
    assert all(type(c[2]) is MemoryRegionAddress for c in calls)


def test_try_access_exact_count(adj):
    assert adj.try_access(0x20, 0x3F0, lambda d, n, o, r: n) == 0x20


def test_try_access_out_of_range(adj):
    with pytest.raises(CallbackOutOfRangeError) as ei:
        adj.try_access(0x10, 0x3F0, lambda d, n, o, r: n + 1)
    assert (ei.value.offered, ei.value.reported) == (16, 17)
    with pytest.raises(CallbackOutOfRangeError):
        adj.try_access(0x500, 0x3F0, lambda d, n, o, r: 0x501)


def test_try_access_short_callback(adj):
    calls = []

    def f(done, length, off, region):
        calls.append((done, length, int(off)))
        return length - 1

    assert adj.try_access(0x20, 0x3F0, f) == 15
    assert calls == [(0, 16, 0x3F0), (15, 1, 0x3FF)]


def test_try_access_zero_count(adj):
    calls = []

    def f(done, length, off, region):
        calls.append((done, length, int(off), int(region.start_addr())))
        return 0

    assert adj.try_access(0, 0x10, f) == 0
    assert calls == [(0, 0, 0x10, 0)]
    with pytest.raises(InvalidGuestAddressError) as ei:
        adj.try_access(0, 0x900, f)
    assert ei.value.addr == 0x900
    assert len(calls) == 1


def test_try_access_hole(adj):
    with pytest.raises(InvalidGuestAddressError) as ei:
        adj.try_access(0x10, 0x800, lambda d, n, o, r: n)
    assert ei.value.addr == 0x800
    # a hole after progress: the partial count
    assert adj.try_access(0x1000, 0x7F0, lambda d, n, o, r: n) == 0x10
    # the callback's own error passes through
    boom = ValueError("boom")

    def fail(d, n, o, r):
        raise boom

    with pytest.raises(ValueError, match="boom"):
        adj.try_access(0x10, 0, fail)
    with pytest.raises(TypeError):
        adj.try_access(0x10, 0, lambda d, n, o, r: None)


# -- the Bytes contract (§3.1) -----------------------------------------------------------


def test_write_partial(mem):
    assert mem.write(b"\x01" * 8, 0x3FC) == 4
    assert mem.read_bytes(0x3F8, 8) == b"\x00" * 4 + b"\x01" * 4
    assert dirty(mem) == [(0x3FC, 4)]


def test_write_at_hole(mem):
    with pytest.raises(InvalidGuestAddressError) as ei:
        mem.write(b"\x01" * 8, 0x400)
    assert ei.value.addr == 0x400
    assert dirty(mem) == []


@pytest.mark.parametrize("addr", [0x600, 0x400, 0xC00, U64_MAX, 0])
def test_zero_length_ops_anywhere(mem, addr):
    assert mem.write(b"", addr) == 0
    assert mem.read(bytearray(), addr) == 0
    assert mem.write_slice(b"", addr) is None
    assert mem.read_slice(bytearray(), addr) is None
    assert mem.read_bytes(addr, 0) == b""
    zst = np.dtype([])
    assert mem.write_obj((), addr, zst) is None
    assert mem.read_obj(addr, zst).tobytes() == b""
    assert mem.read_volatile_from(addr, io.BytesIO(b"abc"), 0) == 0
    assert mem.read_exact_volatile_from(addr, io.BytesIO(b"abc"), 0) is None
    sink = io.BytesIO()
    assert mem.write_volatile_to(addr, sink, 0) == 0
    assert mem.write_all_volatile_to(addr, sink, 0) is None
    assert sink.getvalue() == b""
    assert list(mem.get_slices(addr, 0)) == []
    assert mem.check_range(addr, 0) is True
    assert dirty(mem) == []


def test_zero_length_ops_on_empty_memory():
    e = GuestMemoryMmap()
    assert e.write(b"", 0x600) == 0
    assert e.read(bytearray(), 0) == 0
    e.write_slice(b"", 0)
    e.read_slice(bytearray(), 0)
    assert e.read_volatile_from(0, io.BytesIO(b"x"), 0) == 0
    assert e.write_volatile_to(0, io.BytesIO(), 0) == 0
    with pytest.raises(InvalidGuestAddressError) as ei:
        e.write(b"x", 0)
    assert ei.value.addr == 0
    with pytest.raises(InvalidGuestAddressError):
        e.read_obj(0, "<u4")
    with pytest.raises(InvalidGuestAddressError):
        e.load(0, np.uint32)


def test_write_slice_partial_really_writes(mem):
    with pytest.raises(PartialBufferError) as ei:
        mem.write_slice(b"\x01" * 8, 0x3FC)
    assert (ei.value.expected, ei.value.completed) == (8, 4)
    assert mem.read_bytes(0x3FC, 4) == b"\x01" * 4
    assert dirty(mem) == [(0x3FC, 4)]


def test_read_slice_partial_fills_prefix(mem):
    mem.write(b"abcd", 0x3FC)
    buf = bytearray(b"\xee" * 8)
    with pytest.raises(PartialBufferError) as ei:
        mem.read_slice(buf, 0x3FC)
    assert (ei.value.expected, ei.value.completed) == (8, 4)
    assert buf == b"abcd" + b"\xee" * 4
    buf = bytearray(8)
    assert mem.read(buf, 0x3FC) == 4
    with pytest.raises(PartialBufferError):
        mem.read_bytes(0xBFF, 2)


def test_read_write_obj_table(mem):
    with pytest.raises(PartialBufferError) as ei:
        mem.read_obj(0x3FC, np.uint64)
    assert (ei.value.expected, ei.value.completed) == (8, 4)
    with pytest.raises(InvalidGuestAddressError) as ei:
        mem.read_obj(0x400, np.uint64)
    assert ei.value.addr == 0x400
    with pytest.raises(PartialBufferError) as ei:
        mem.write_obj(np.uint64(0x0807060504030201), 0x3FC)
    assert (ei.value.expected, ei.value.completed) == (8, 4)
    assert mem.read_bytes(0x3FC, 4) == bytes.fromhex("01020304")
    with pytest.raises(InvalidGuestAddressError) as ei:
        mem.write_obj(np.uint64(1), 0x7FF)
    assert ei.value.addr == 0x7FF
    assert dirty(mem) == [(0x3FC, 4)]


@pytest.mark.parametrize(
    ("dtype", "value", "raw"),
    [
        ("<u2", 0x1234, "3412"),
        (">u2", 0x1234, "1234"),
        ("<u4", 0xDEADBEEF, "efbeadde"),
        (">u8", 0x0102030405060708, "0102030405060708"),
        ("<i4", -2, "feffffff"),
        ("<f8", 1.5, "000000000000f83f"),
        (np.dtype([("a", "<u2"), ("b", ">u4")]), (0x0102, 0x03040506), "020103040506"),
        (np.dtype("S3"), b"xyz", "78797a"),
    ],
)
@pytest.mark.parametrize("addr", [0x10, 0x3FF, 0x801, 0xBF0])
def test_obj_roundtrip_layouts(mem, dtype, value, raw, addr):
    size = np.dtype(dtype).itemsize
    if (addr - 0x800 if addr >= 0x800 else addr) + size > 0x400:
        with pytest.raises(PartialBufferError) as ei:
            mem.write_obj(value, addr, dtype)
        region_end = 0x400 if addr < 0x400 else 0xC00
        assert (ei.value.expected, ei.value.completed) == (size, region_end - addr)
        return
    mem.write_obj(value, addr, dtype)
    assert mem.read_bytes(addr, size) == bytes.fromhex(raw)
    got = mem.read_obj(addr, dtype)
    if np.dtype(dtype).fields is not None:
        assert got.tobytes() == bytes.fromhex(raw)
    else:
        assert got == value
    assert dirty(mem) == [(addr, size)]


def test_write_obj_value_errors(mem):
    for value, dtype in [(70000, "<u2"), (-1, "<u4"), ("x", "<u8"), ((1, 2, 3), "<u8")]:
        with pytest.raises(ByteValuedError):
            mem.write_obj(value, 0x10, dtype)
    with pytest.raises(ByteValuedError):
        mem.write_obj(5, 0x10)  # a Python int has no layout
    with pytest.raises(ByteValuedError):
        mem.read_obj(0x10, object)
    # a bad value is refused before anything is written, even where it would be partial
    with pytest.raises(ByteValuedError):
        mem.write_obj(2**40, 0x3FE, "<u4")
    assert dirty(mem) == []
    assert mem.read_bytes(0, 0x400) == bytes(0x400)


@pytest.mark.parametrize(
    ("value", "dtype"),
    [(0x10000, "<u2"), (-1, "<u8"), (2**64, ">u8"), (128, "i1"), (1e10, "<f2"), (None, "<u4")],
)
@pytest.mark.parametrize("addr", [0x10, 0x13, 0x800, 0xBF5])
def test_failed_write_obj_leaves_memory_alone(mem, value, dtype, addr):
    """A value that does not fit must not clobber the target (struct.pack_into zeroes it)."""
    mem.write(b"\xa5" * 8, addr)
    # twice: the first access warms the window cache, the second takes the fast path
    for _ in range(2):
        with pytest.raises(ByteValuedError):
            mem.write_obj(value, addr, dtype)
        assert mem.read_bytes(addr, 8) == b"\xa5" * 8
    assert dirty(mem) == [(addr, 8)]


@pytest.mark.parametrize(("value", "dtype"), [(2**32, np.uint32), (-1, np.uint16), (2**7, np.int8)])
def test_failed_store_leaves_memory_alone(mem, value, dtype):
    mem.write(b"\xa5" * 8, 0x808)
    with pytest.raises(ByteValuedError):
        mem.store(value, 0x808, dtype)
    assert mem.read_bytes(0x808, 8) == b"\xa5" * 8
    assert dirty(mem) == [(0x808, 8)]


def test_store_load(mem):
    mem.store(0xAABBCCDD, 0x3FC, np.uint32)
    assert mem.load(0x3FC, np.uint32) == 0xAABBCCDD
    mem.store(np.uint64(2**64 - 1), 0x808)
    assert mem.load(0x808, np.uint64) == 2**64 - 1
    assert mem.load(0x80C, np.uint16) == 0xFFFF
    assert dirty(mem) == [(0x3FC, 4), (0x808, 8)]
    mem.store(-1, 0x810, np.int8)
    assert mem.load(0x810, np.int8) == -1


@pytest.mark.parametrize(
    ("op", "addr", "size", "exc"),
    [
        ("store", 0x3FE, 4, InvalidBackendAddressError),  # straddles the region end
        ("load", 0x3FC, 8, InvalidBackendAddressError),
        ("load", 0x1, 4, InvalidBackendAddressError),  # misaligned
        ("store", 0x802, 4, InvalidBackendAddressError),
        ("load", 0xBFE, 2, None),
        ("load", 0x3FF, 1, None),
        ("load", 0x400, 4, InvalidGuestAddressError),  # hole
        ("store", 0x600, 1, InvalidGuestAddressError),
        ("load", 0xC00, 8, InvalidGuestAddressError),
        ("load", U64_MAX, 1, InvalidGuestAddressError),
    ],
)
def test_store_load_errors(mem, op, addr, size, exc):
    dt = np.dtype(f"u{size}")
    call = (lambda: mem.load(addr, dt)) if op == "load" else (lambda: mem.store(1, addr, dt))
    if exc is None:
        call()
        return
    with pytest.raises(exc) as ei:
        call()
    assert type(ei.value) is exc
    if exc is InvalidGuestAddressError:
        assert ei.value.addr == addr
    assert dirty(mem) == []


def _torn_reads(write, seconds=1.0):
    """Rewrite the same u64 from one thread while nogil batch reads watch it from another.

    The value never changes, so a reader may only ever see it; anything else (e.g. 0) is
    a transient state the write exposed -- the write was not a single store.
    """
    m = GuestMemoryMmap.from_ranges([(0, 0x1000)])
    addr, value = 0x100, 2**64 - 1
    m.write(b"\xff" * 8, addr)
    addrs = np.full(1 << 20, addr, dtype=np.uint64)
    m.read_objs(addrs[:1], np.uint64)  # compile the kernel first
    stop = threading.Event()

    def writer():
        while not stop.is_set():
            write(m, value, addr)

    t = threading.Thread(target=writer)
    t.start()
    bad = 0
    try:
        deadline = time.perf_counter() + seconds
        while not bad and time.perf_counter() < deadline:
            bad += int(np.count_nonzero(m.read_objs(addrs, np.uint64) != value))
    finally:
        stop.set()
        t.join()
    return bad


def test_store_is_one_store():
    """store() must never expose an intermediate value (struct.pack_into memsets first)."""
    assert _torn_reads(lambda m, v, a: m.store(v, a, np.uint64)) == 0


def test_write_obj_aligned_u64_is_one_store():
    assert _torn_reads(lambda m, v, a: m.write_obj(v, a, np.uint64)) == 0
    assert _torn_reads(lambda m, v, a: m.write_obj(v, GuestAddress(a), "<u8")) == 0


def test_store_load_straddling_adjacent_regions():
    """[observed] store(5u32, 0x3fe) on [0,0x400)+[0x400,0x800) -> InvalidBackendAddress."""
    m = GuestMemoryMmap.from_ranges([(0, 0x400), (0x400, 0x400)])
    with pytest.raises(InvalidBackendAddressError):
        m.store(5, 0x3FE, np.uint32)
    assert m.read_bytes(0x3FC, 8) == bytes(8)
    # alignment is the offset inside the region: guest address 1 is aligned in a region at 1
    m1 = GuestMemoryMmap.from_ranges([(1, 0x100)])
    m1.store(0x11223344, 1, np.uint32)
    assert m1.load(1, np.uint32) == 0x11223344
    with pytest.raises(InvalidBackendAddressError):
        m1.load(4, np.uint32)


def test_store_load_dtype_rules(mem):
    for dt in ("<f8", ">u4" if np.little_endian else "<u4", np.dtype([("a", "<u4")]), "u16"):
        with pytest.raises(ByteValuedError):
            mem.load(0x10, dt)
    with pytest.raises(ByteValuedError):
        mem.store(1, 0x10, "<f4")
    with pytest.raises(ByteValuedError):
        mem.store(2**33, 0x10, np.uint32)


def test_stream_table(mem):
    src = io.BytesIO(b"\x07" * 64)
    assert mem.read_volatile_from(0x3F0, src, 64) == 16
    assert mem.read_bytes(0x3F0, 16) == b"\x07" * 16
    with pytest.raises(PartialBufferError) as ei:
        mem.read_exact_volatile_from(0x3F0, io.BytesIO(b"\x07" * 64), 64)
    assert (ei.value.expected, ei.value.completed) == (64, 16)
    vec = io.BytesIO()
    assert mem.write_volatile_to(0x3F0, vec, 64) == 16
    assert vec.getvalue() == b"\x07" * 16
    vec = io.BytesIO()
    with pytest.raises(PartialBufferError) as ei:
        mem.write_all_volatile_to(0x3F0, vec, 64)
    assert (ei.value.expected, ei.value.completed) == (64, 16)
    assert vec.getvalue() == b"\x07" * 16
    with pytest.raises(InvalidGuestAddressError) as ei:
        mem.read_volatile_from(0x600, io.BytesIO(b"\x07" * 64), 64)
    assert ei.value.addr == 0x600
    assert mem.read_volatile_from(0x600, io.BytesIO(b"\x07" * 64), 0) == 0
    assert dirty(mem) == [(0x3F0, 16)]


def test_bad_buffers_and_addresses(mem):
    with pytest.raises(TypeError):
        mem.write("text", 0)
    with pytest.raises(TypeError):
        mem.read(b"readonly", 0)
    with pytest.raises(TypeError):
        mem.read_slice(np.zeros((4, 4), dtype=np.uint8)[:, ::2], 0)
    for bad in (-1, 2**64):
        with pytest.raises(GuestAddressOverflowError):
            mem.write(b"x", bad)
        with pytest.raises(GuestAddressOverflowError):
            mem.read_obj(bad, "<u4")
        with pytest.raises(GuestAddressOverflowError):
            mem.get_slices(bad, 1)
    with pytest.raises(TypeError):
        mem.write(b"x", 1.5)
    with pytest.raises(TypeError):
        mem.check_range(True, 1)


def test_numpy_buffers(mem):
    arr = np.arange(16, dtype="<u4")
    assert mem.write(arr, 0x3F0) == 16
    out = np.zeros(4, dtype="<u4")
    assert mem.read(out, 0x3F0) == 16
    assert out.tolist() == [0, 1, 2, 3]
    assert mem.read_bytes(GuestAddress(0x3F4), 4) == bytes.fromhex("01000000")


# -- lifetime ----------------------------------------------------------------------------


def _assert_refuses(m, addr, exc):
    """Every kind of access at ``addr`` raises ``exc``."""
    for access in (
        lambda: m.write(b"x", addr),
        lambda: m.read_obj(addr, "<u4"),
        lambda: m.read_objs([addr], "<u4"),
        lambda: m.write_objs([1], [addr], "<u4"),
    ):
        with pytest.raises(exc):
            access()


def test_close_and_context_manager():
    with GuestMemoryMmap.from_ranges([(0, 0x1000), (0x2000, 0x1000)]) as m:
        regions = list(m.iter())
        m.write_slice(b"abc", 0x2000)
    assert m.num_regions() == 0 and m.last_addr() == GuestAddress(0)
    assert all(r.get_mmap().closed for r in regions)
    _assert_refuses(m, 0x2000, InvalidGuestAddressError)
    with pytest.raises(InvalidGuestAddressError):
        m.get_slice(0, 0)
    assert m.write(b"", 0) == 0
    # a closed region refuses accesses with MmapRegionError
    with pytest.raises(MmapRegionError):
        regions[1].read_bytes(0, 3)
    with pytest.raises(MmapRegionError):
        regions[1].get_mmap().as_ptr()
    m.close()  # idempotent


def test_close_with_live_view():
    m = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x2000, 0x1000)])
    r0, r1 = m.iter()
    s = m.get_slice(0x2000, 16)
    with pytest.raises(MmapRegionError):
        _close(m)
    assert m.num_regions() == 0  # the memory is empty whatever happened
    assert r0.get_mmap().closed and not r1.get_mmap().closed
    s.write(b"still", 0)
    assert r1.read_bytes(0, 5) == b"still"
    del s
    r1.close()
    assert r1.get_mmap().closed


def test_regions_built_from_closed_region_raise():
    r = GuestRegionMmap.from_range(0, 0x1000)
    r.close()
    with pytest.raises(MmapRegionError):
        GuestRegionMmap.with_arc(r.get_mmap(), 0x1000)
    with pytest.raises(MmapRegionError, match="closed"):  # never a table with a hole in it
        GuestMemoryMmap.from_regions([r])
    live = GuestMemoryMmap.from_ranges([(0x2000, 0x1000)])
    with pytest.raises(MmapRegionError, match="closed"):
        live.insert_region(r)


def test_mmap_region_shared_between_memories_blocks_close():
    mapping = MmapRegion.anonymous(0x1000)
    a = GuestMemoryMmap.from_regions([GuestRegionMmap(mapping, 0)])
    b = GuestMemoryMmap.from_regions([GuestRegionMmap.with_arc(mapping, 0x10000)])
    a.write_slice(b"shared", 0)
    assert b.read_bytes(0x10000, 6) == b"shared"
    with pytest.raises(MmapRegionError):
        a.close()
    assert b.read_bytes(0x10000, 6) == b"shared"
    b.close()


def test_repr_and_errors_pickle(mem):
    assert repr(mem) == "GuestMemoryMmap(2 regions, 0x800 bytes)"
    with pytest.raises(PartialBufferError) as ei:
        mem.write_slice(b"12345678", 0x3FC)
    err = pickle.loads(pickle.dumps(ei.value))
    assert type(err) is PartialBufferError and (err.expected, err.completed) == (8, 4)
    assert isinstance(err, GuestMemoryError)


@pytest.mark.parametrize("dtype", ["u1", "<u2", "<u8"])
def test_negative_scalar_addresses_are_typed_errors(mem, dtype):
    for _ in range(2):  # cold, then with the fast path warmed
        with pytest.raises(GuestAddressOverflowError):
            mem.read_obj(-1, dtype)
        with pytest.raises(GuestAddressOverflowError):
            mem.write_obj(1, -1, dtype)
        mem.write_obj(1, 0x10, dtype)
        mem.read_obj(0x10, dtype)


def test_numpy_sizes_in_ranges():
    m = GuestMemoryMmap.from_ranges([(0, np.int64(0x1000)), (np.uint64(0x1000), np.uint32(0x1000))])
    assert m.num_regions() == 2 and int(m.last_addr()) == 0x1FFF
    with pytest.raises(GuestMemoryError):  # the span passes 2**64: a typed error, no wrap
        GuestMemoryMmap.from_ranges([(2**64 - 0x1000, np.uint64(0x2000))])


def test_scalar_fast_path_hopping_between_windows_sharing_a_granule():
    """Windows are found by 2 MiB granule after the first hop: small regions share one."""
    layout = [(i * 0x1000, 0x800) for i in range(8)] + [(3 << 21, 0x1000), (5 << 21, 0x1000)]
    m = GuestMemoryMmap.from_ranges(layout)
    model = {}
    rng = np.random.default_rng(4)
    for _ in range(3):
        for start, size in rng.permutation(np.array(layout)).tolist():
            addr = start + int(rng.integers(0, size // 8)) * 8
            value = int(rng.integers(0, 2**63))
            m.write_obj(value, addr, "<u8")
            model[addr] = value
        for addr, value in model.items():
            assert m.read_obj(addr, "<u8") == value
    for hole in (0x800, 0x1FF8, (3 << 21) + 0x1000):
        with pytest.raises(InvalidGuestAddressError):
            m.read_obj(hole, "<u8")
        with pytest.raises(InvalidGuestAddressError):
            m.write_obj(1, hole, "<u8")
