"""Tests of npguest.region.GuestRegionMmap: one mapping placed in guest physical space.

Reference: vm-memory §2.5 (``region.rs``), §2.6 (``GuestRegionMmap``), §3.3 [region],
§3.4 (region-level ``Bytes``: everything out of range or misaligned is an
``InvalidBackendAddressError``) and §3.9 (dirty tracking by region offset).
"""

from __future__ import annotations

import gc
import io
import os
import sys

import numpy as np
import pytest
from _support import RecordingBitmap

from npguest import (
    FileOffset,
    GuestAddress,
    GuestRegionMmap,
    MemoryRegionAddress,
    MmapRegion,
    NoBitmap,
    VolatileSlice,
)
from npguest.bitmap import BitmapSlice
from npguest.errors import (
    ByteValuedError,
    GuestAddressOverflowError,
    InvalidBackendAddressError,
    InvalidGuestRegionError,
    MmapRegionError,
    PartialBufferError,
    ReadOnlyMemoryError,
    RegionCollectionError,
    StreamError,
)
from npguest.mapping import PAGE_SIZE

U64_MAX = 2**64 - 1
NATIVE = "<" if sys.byteorder == "little" else ">"
U64 = NATIVE + "u8"


@pytest.fixture
def region():
    """A 0x400-byte anonymous region at guest address 0x1000 (closed afterwards)."""
    r = GuestRegionMmap.from_range(0x1000, 0x400)
    yield r
    gc.collect()
    r.close()


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "mem.img"
    path.write_bytes(bytes(range(256)) * (3 * PAGE_SIZE // 256))
    return path


# ---------------------------------------------------------------------------------------
# construction and geometry
# ---------------------------------------------------------------------------------------


class TestConstruction:
    def test_anonymous(self, region):
        assert region.start_addr() == GuestAddress(0x1000)
        assert isinstance(region.start_addr(), GuestAddress)
        assert region.last_addr() == GuestAddress(0x13FF)
        assert region.len() == 0x400
        assert len(region) == 0x400
        assert region.file_offset() is None
        assert region.is_hugetlbfs() is None
        assert not region.is_readonly()
        assert isinstance(region.bitmap(), NoBitmap)
        assert isinstance(region.get_mmap(), MmapRegion)
        assert region.get_mmap().size() == 0x400
        assert region.read_bytes(0, 0x400) == bytes(0x400)

    def test_unaligned_guest_address_and_size(self):
        r = GuestRegionMmap.from_range(GuestAddress(1), 3)
        assert (int(r.start_addr()), int(r.last_addr()), r.len()) == (1, 3, 3)
        r.write(b"abc", 0)
        assert r.read_bytes(0, 3) == b"abc"
        r.close()

    def test_file_backed(self, data_file):
        with open(data_file, "r+b") as f:
            fo = FileOffset(f, PAGE_SIZE)
            r = GuestRegionMmap.from_range(0x10000, PAGE_SIZE, fo)
            assert r.file_offset() is fo
            assert r.is_hugetlbfs() is False
            assert r.read_bytes(0, 4) == bytes(range(4))
            assert r.read_obj(0x10, "u1") == 0x10
            r.write(b"region", 0x20)
            r.close()
        raw = data_file.read_bytes()
        assert raw[PAGE_SIZE + 0x20 : PAGE_SIZE + 0x26] == b"region"  # shared by default

    def test_file_backed_private_and_readonly(self, data_file):
        original = data_file.read_bytes()
        with open(data_file, "r+b") as f:
            p = GuestRegionMmap.from_range(0, PAGE_SIZE, FileOffset(f, 0), shared=False)
            p.write(b"private", 0)
            assert p.read_bytes(0, 7) == b"private"
            p.close()
            ro = GuestRegionMmap.from_range(0, PAGE_SIZE, FileOffset(f, 0), readonly=True)
            assert ro.is_readonly()
            with pytest.raises(ReadOnlyMemoryError) as ei:
                ro.write(b"x", 5)
            assert ei.value.addr == 5
            with pytest.raises(ReadOnlyMemoryError):
                ro.write_obj(1, 8, "<u4")
            with pytest.raises(ReadOnlyMemoryError):
                ro.store(1, 8, U64)
            with pytest.raises(ReadOnlyMemoryError):
                ro.read_volatile_from(0, io.BytesIO(b"abc"), 3)
            assert ro.read_bytes(0, 4) == original[:4]
            del ei
            gc.collect()
            ro.close()
        assert data_file.read_bytes() == original

    def test_file_mapping_errors(self, data_file):
        with open(data_file, "r+b") as f:
            with pytest.raises(MmapRegionError):
                GuestRegionMmap.from_range(0, PAGE_SIZE, FileOffset(f, 2 * PAGE_SIZE + 1))
            with pytest.raises(MmapRegionError):
                GuestRegionMmap.from_range(0, 4 * PAGE_SIZE, FileOffset(f, 0))
            with pytest.raises(MmapRegionError):
                GuestRegionMmap.from_range(0, 1, FileOffset(f, 3 * PAGE_SIZE))

    @pytest.mark.parametrize("size", [0, -1])
    def test_bad_size(self, size):
        with pytest.raises(MmapRegionError):
            GuestRegionMmap.from_range(0x1000, size)

    def test_region_cannot_end_at_2_64(self):
        with pytest.raises(InvalidGuestRegionError) as ei:
            GuestRegionMmap.from_range(2**64 - 0x1000, 0x1000)
        assert (ei.value.addr, ei.value.size) == (2**64 - 0x1000, 0x1000)
        assert isinstance(ei.value, RegionCollectionError)
        assert isinstance(ei.value, ValueError)
        with pytest.raises(InvalidGuestRegionError):
            GuestRegionMmap(MmapRegion.anonymous(0x1000), 2**64 - 0x1000)

    def test_highest_region(self):
        r = GuestRegionMmap.from_range(2**64 - 0x1001, 0x1000)
        assert int(r.start_addr()) == 2**64 - 0x1001
        assert r.last_addr() == GuestAddress(2**64 - 2)
        assert r.to_region_addr(2**64 - 2) == MemoryRegionAddress(0xFFF)
        assert r.to_region_addr(2**64 - 1) is None
        r.write(b"top", 0xFFD)
        assert r.read_bytes(0xFFD, 3) == b"top"
        r.close()

    def test_guest_base_must_be_u64(self):
        with pytest.raises(GuestAddressOverflowError):
            GuestRegionMmap.from_range(-1, 0x1000)
        with pytest.raises(GuestAddressOverflowError):
            GuestRegionMmap.from_range(2**64, 0x1000)

    def test_mapping_type_checked(self):
        with pytest.raises(TypeError):
            GuestRegionMmap(bytearray(16), 0)

    def test_bitmap_factory(self):
        r = GuestRegionMmap.from_range(0, 0x2000, bitmap=RecordingBitmap)
        r.write(b"x", 0x1FFF)
        bm = r.get_mmap().bitmap()
        assert isinstance(bm, RecordingBitmap)
        assert bm.marks == [(0x1FFF, 1)]
        assert isinstance(r.bitmap(), BitmapSlice)
        assert r.bitmap().dirty_at(0x1FFF)
        assert not r.bitmap().dirty_at(0x1FFE)
        r.close()

    def test_repr(self, region):
        assert repr(region) == "GuestRegionMmap([0x1000, 0x1400), 0x400 bytes, anonymous, rw)"


# ---------------------------------------------------------------------------------------
# address helpers
# ---------------------------------------------------------------------------------------


class TestAddressHelpers:
    @pytest.mark.parametrize(("addr", "ok"), [(0, True), (0x3FF, True), (0x400, False)])
    def test_check_address(self, region, addr, ok):
        got = region.check_address(MemoryRegionAddress(addr))
        assert got == (MemoryRegionAddress(addr) if ok else None)
        assert region.check_address(addr) == got
        assert region.address_in_range(addr) is ok
        assert region.address_in_range(MemoryRegionAddress(addr)) is ok
        if ok:
            assert isinstance(got, MemoryRegionAddress)

    def test_address_in_range_huge(self, region):
        assert region.address_in_range(U64_MAX) is False
        assert region.check_address(U64_MAX) is None

    @pytest.mark.parametrize(
        ("base", "off", "expected"),
        [
            (0x3FE, 1, 0x3FF),
            (0x3FE, 2, None),
            (0, 0, 0),
            (0, 0x3FF, 0x3FF),
            (0, 0x400, None),
            (0x200, 0x100, 0x300),
            (U64_MAX, 1, None),
            (1, U64_MAX, None),
        ],
    )
    def test_checked_offset(self, region, base, off, expected):
        got = region.checked_offset(MemoryRegionAddress(base), off)
        assert got == (None if expected is None else MemoryRegionAddress(expected))

    @pytest.mark.parametrize(
        ("addr", "expected"),
        [(0xFFF, None), (0x1000, 0), (0x1200, 0x200), (0x13FF, 0x3FF), (0x1400, None), (0, None)],
    )
    def test_to_region_addr(self, region, addr, expected):
        got = region.to_region_addr(GuestAddress(addr))
        assert got == (None if expected is None else MemoryRegionAddress(expected))
        assert region.to_region_addr(addr) == got

    def test_get_host_address(self, region):
        base = region.get_host_address(0)
        assert base == region.get_mmap().as_ptr()
        assert base % PAGE_SIZE == 0
        assert region.get_host_address(MemoryRegionAddress(0x3FF)) == base + 0x3FF
        with pytest.raises(InvalidBackendAddressError) as ei:
            region.get_host_address(0x400)
        assert ei.value.addr == 0x400
        with pytest.raises(InvalidBackendAddressError):
            region.get_host_address(U64_MAX)

    def test_host_address_writes_are_raw(self):
        rec = RecordingBitmap()
        r = GuestRegionMmap.from_range(0, 0x1000, bitmap=rec)
        arr = r.as_array()
        assert arr.__array_interface__["data"][0] == r.get_host_address(0)
        arr[0x10] = 0xAB
        assert r.read_obj(0x10, "u1") == 0xAB
        assert rec.marks == []  # untracked: the caller must mark
        r.mark_dirty(0x10, 1)
        assert rec.marks == [(0x10, 1)]
        del arr
        gc.collect()
        r.close()


# ---------------------------------------------------------------------------------------
# slices
# ---------------------------------------------------------------------------------------


class TestSlices:
    def test_get_slice(self, region):
        region.write(b"hello", 0x100)
        s = region.get_slice(MemoryRegionAddress(0x100), 5)
        assert isinstance(s, VolatileSlice)
        assert s.len() == 5
        assert s.read_bytes(0, 5) == b"hello"
        assert s.ptr_guard().as_ptr() == region.get_host_address(0x100)
        s.write(b"J", 0)
        assert region.read_bytes(0x100, 1) == b"J"
        assert region.get_slice(0x400, 0).is_empty()

    @pytest.mark.parametrize(
        ("offset", "count", "addr"),
        [(0x3FF, 2, 0x401), (0, 0x401, 0x401), (0x400, 1, 0x401), (0x401, 0, 0x401)],
    )
    def test_get_slice_errors(self, region, offset, count, addr):
        with pytest.raises(InvalidBackendAddressError) as ei:
            region.get_slice(offset, count)
        assert ei.value.addr == addr

    @pytest.mark.parametrize(("offset", "count"), [(U64_MAX, 2), (2, U64_MAX)])
    def test_get_slice_overflow_is_backend_error(self, region, offset, count):
        with pytest.raises(InvalidBackendAddressError):
            region.get_slice(offset, count)

    def test_as_volatile_slice(self, region):
        s = region.as_volatile_slice()
        assert s.len() == 0x400
        assert s.ptr_guard().as_ptr() == region.get_host_address(0)

    def test_slice_bitmap_is_region_offset(self):
        rec = RecordingBitmap()
        r = GuestRegionMmap.from_range(0x5000, 0x1000, bitmap=rec)
        s = r.get_slice(0x800, 0x100)
        s.write(b"ab", 0x10)
        s.subslice(0x20, 8).write_obj(1, 4, "<u4")
        r.as_volatile_slice().store(7, 0x100, U64)
        assert rec.marks == [(0x810, 2), (0x824, 4), (0x100, 8)]
        del s
        gc.collect()
        r.close()

    def test_with_arc_rebases_and_shares(self):
        r1 = GuestRegionMmap.from_range(0x1000, 0x1000)
        r2 = GuestRegionMmap.with_arc(r1.get_mmap(), GuestAddress(0x8000))
        assert r2.get_mmap() is r1.get_mmap()
        assert r2.start_addr() == GuestAddress(0x8000)
        assert r2.last_addr() == GuestAddress(0x8FFF)
        assert r1.start_addr() == GuestAddress(0x1000)
        r1.write(b"shared", 0x10)
        assert r2.read_bytes(0x10, 6) == b"shared"
        r2.write_obj(0xABCD, 0x20, "<u2")
        assert r1.read_obj(0x20, "<u2") == 0xABCD
        assert r2.get_host_address(0) == r1.get_host_address(0)
        assert r2.to_region_addr(0x8010) == MemoryRegionAddress(0x10)
        assert r1.to_region_addr(0x8010) is None
        # the mapping is shared: closing one region is refused while the other uses it
        with pytest.raises(MmapRegionError):
            r1.close()
        assert r1.read_bytes(0x10, 6) == b"shared"  # ... and the refusing region still works
        with pytest.raises(InvalidGuestRegionError):
            GuestRegionMmap.with_arc(r1.get_mmap(), 2**64 - 0x1000)
        del r2
        gc.collect()
        r1.close()


# ---------------------------------------------------------------------------------------
# region-level Bytes (reference §3.4)
# ---------------------------------------------------------------------------------------


class TestRegionBytes:
    def test_write_table(self, region):
        with pytest.raises(InvalidBackendAddressError) as ei:
            region.write(b"\x01", 0x400)
        assert ei.value.addr == 0x400
        assert isinstance(ei.value, IndexError)
        assert region.write(b"\x01\x02", 0x3FF) == 1
        assert region.write(b"", 0x1000) == 0
        assert region.read_bytes(0x3FF, 1) == b"\x01"

    def test_write_slice_partial(self, region):
        with pytest.raises(PartialBufferError) as ei:
            region.write_slice(b"\x07\x08", MemoryRegionAddress(0x3FF))
        assert (ei.value.expected, ei.value.completed) == (2, 1)
        assert region.read_bytes(0x3FF, 1) == b"\x07"

    def test_read_table(self, region):
        region.write(b"xy", 0x3FE)
        out = bytearray(4)
        assert region.read(out, 0x3FE) == 2
        assert out == bytearray(b"xy\x00\x00")
        with pytest.raises(PartialBufferError) as ei:
            region.read_slice(bytearray(4), 0x3FE)
        assert (ei.value.expected, ei.value.completed) == (4, 2)
        with pytest.raises(InvalidBackendAddressError) as ei:
            region.read(bytearray(1), 0x400)
        assert ei.value.addr == 0x400

    def test_objects(self, region):
        region.write_obj(0x1122334455667788, 0x3F8, "<u8")
        assert region.read_obj(0x3F8, "<u8") == 0x1122334455667788
        with pytest.raises(PartialBufferError) as ei:
            region.write_obj(1, 0x3FC, "<u8")
        assert (ei.value.expected, ei.value.completed) == (8, 4)
        with pytest.raises(PartialBufferError):
            region.read_obj(0x3FD, "<u4")
        with pytest.raises(InvalidBackendAddressError):
            region.read_obj(0x400, "<u4")
        with pytest.raises(InvalidBackendAddressError):
            region.write_obj(1, U64_MAX, "<u2")
        hdr = np.dtype([("a", ">u2"), ("b", "<u4")])
        region.write_obj((1, 2), 0x100, hdr)
        assert region.read_bytes(0x100, 6) == b"\x00\x01\x02\x00\x00\x00"
        rec = region.read_obj(MemoryRegionAddress(0x100), hdr)
        assert (int(rec["a"]), int(rec["b"])) == (1, 2)

    @pytest.mark.parametrize("addr", [0x3FC, 0x4, 0x400, 0x3F9, U64_MAX - 3])
    def test_store_errors_are_backend_errors(self, region, addr):
        with pytest.raises(InvalidBackendAddressError):
            region.store(1, addr, U64)
        with pytest.raises(InvalidBackendAddressError):
            region.load(addr, U64)
        assert region.read_bytes(0x3F8, 8) == bytes(8)

    def test_store_load(self, region):
        region.store(0xDEADBEEF, MemoryRegionAddress(0x3F8), U64)
        assert region.load(0x3F8, U64) == 0xDEADBEEF
        region.store(5, 0x3FF, NATIVE + "u1")
        assert region.load(0x3FF, NATIVE + "u1") == 5
        with pytest.raises(ByteValuedError):
            region.load(0, NATIVE + "f8")

    def test_read_volatile_from(self, region):
        src = io.BytesIO(b"stream")
        assert region.read_volatile_from(0x400, src, 4) == 0
        assert src.tell() == 0
        with pytest.raises(InvalidBackendAddressError) as ei:
            region.read_volatile_from(0x401, src, 4)
        assert ei.value.addr == 0x401
        assert region.read_volatile_from(0x3FC, src, 10) == 4
        assert region.read_bytes(0x3FC, 4) == b"stre"

    def test_read_exact_volatile_from(self, region):
        src = io.BytesIO(b"abcdefgh")
        with pytest.raises(InvalidBackendAddressError):
            region.read_exact_volatile_from(0x3FE, src, 4)
        assert src.tell() == 0
        with pytest.raises(InvalidBackendAddressError):
            region.read_exact_volatile_from(U64_MAX, src, 2)
        region.read_exact_volatile_from(MemoryRegionAddress(0x3FC), src, 4)
        assert region.read_bytes(0x3FC, 4) == b"abcd"
        with pytest.raises(StreamError) as ei:
            region.read_exact_volatile_from(0x10, io.BytesIO(b"xy"), 4)
        assert ei.value.completed == 2
        assert region.read_bytes(0x10, 2) == b"xy"

    def test_write_volatile_to(self, region):
        region.write(b"\x01\x02", 0x3FE)
        sink = io.BytesIO()
        assert region.write_volatile_to(0x3FE, sink, 4) == 2
        assert sink.getvalue() == b"\x01\x02"
        assert region.write_volatile_to(0x400, sink, 4) == 0
        with pytest.raises(InvalidBackendAddressError):
            region.write_volatile_to(0x401, sink, 4)
        with pytest.raises(InvalidBackendAddressError):
            region.write_all_volatile_to(0x3FE, sink, 4)
        region.write_all_volatile_to(0x3FE, sink, 2)
        assert sink.getvalue() == b"\x01\x02\x01\x02"

    def test_streams_with_fds(self, region):
        r, w = os.pipe()
        try:
            os.write(w, b"pipe-data")
            region.read_exact_volatile_from(0x200, r, 9)
            assert region.read_bytes(0x200, 9) == b"pipe-data"
            region.write_all_volatile_to(0x200, w, 4)
            assert os.read(r, 16) == b"pipe"
        finally:
            os.close(r)
            os.close(w)


# ---------------------------------------------------------------------------------------
# dirty tracking
# ---------------------------------------------------------------------------------------


class TestDirty:
    def make(self):
        rec = RecordingBitmap()
        return rec, GuestRegionMmap.from_range(0x4000, 0x4000, bitmap=rec)

    def test_write_paths_mark_region_offsets(self):
        rec, r = self.make()
        r.write(b"\x01", 0x1FFF)
        assert rec.marks == [(0x1FFF, 1)]
        rec.marks.clear()
        with pytest.raises(PartialBufferError):
            r.write_slice(b"\x01\x01", 0x3FFF)
        assert rec.marks == [(0x3FFF, 1)]
        rec.marks.clear()
        r.write_obj(1, 0x100, "<u4")
        r.store(1, 0x200, U64)
        r.read_volatile_from(0x300, io.BytesIO(b"abc"), 8)
        r.read_exact_volatile_from(0x400, io.BytesIO(b"abcd"), 4)
        assert rec.marks == [(0x100, 4), (0x200, 8), (0x300, 3), (0x400, 4)]
        r.close()

    def test_reads_never_mark(self):
        rec, r = self.make()
        r.read_obj(0x3000, "<u8")
        r.read_bytes(0, 0x4000)
        r.load(0x3000, U64)
        r.write_volatile_to(0, io.BytesIO(), 0x100)
        r.write_all_volatile_to(0, io.BytesIO(), 0x100)
        r.read(bytearray(4), 0x3FFE)
        assert rec.marks == []
        r.close()

    def test_mark_dirty(self):
        rec, r = self.make()
        r.mark_dirty(0x123, 5)
        r.mark_dirty(MemoryRegionAddress(0x10), 1)
        assert rec.marks == [(0x123, 5), (0x10, 1)]
        assert r.bitmap().dirty_at(0x127)
        assert not r.bitmap().dirty_at(0x128)
        r.close()

    def test_mark_dirty_without_bitmap_is_noop(self, region):
        region.mark_dirty(0, 0x400)
        assert not region.bitmap().dirty_at(0)

    def test_rebased_region_marks_the_shared_bitmap(self):
        rec, r = self.make()
        r2 = GuestRegionMmap.with_arc(r.get_mmap(), 0x100000)
        r2.write(b"zz", 0x10)
        assert rec.marks == [(0x10, 2)]  # indexed by offset, not guest address
        del r2
        gc.collect()
        r.close()

    def test_failed_accesses_do_not_mark(self):
        rec, r = self.make()
        for bad in (
            lambda: r.write(b"x", 0x4000),
            lambda: r.store(1, 0x4, U64),
            lambda: r.read_exact_volatile_from(0x3FFE, io.BytesIO(b"abcd"), 4),
            lambda: r.write_obj(1, 0x4000, "<u4"),
        ):
            with pytest.raises(InvalidBackendAddressError):
                bad()
        assert rec.marks == []
        r.close()


# ---------------------------------------------------------------------------------------
# close
# ---------------------------------------------------------------------------------------


CLOSED_ACCESSES = {
    "write": lambda r: r.write(b"x", 0),
    "read": lambda r: r.read(bytearray(1), 0),
    "write_slice": lambda r: r.write_slice(b"xy", 0),
    "read_slice": lambda r: r.read_slice(bytearray(2), 0),
    "read_bytes": lambda r: r.read_bytes(0, 1),
    "write_obj": lambda r: r.write_obj(1, 0, "<u4"),
    "read_obj": lambda r: r.read_obj(0, "<u4"),
    "read_obj_struct_np": lambda r: r.read_obj(0, np.dtype([("a", "<u2")])),
    "store": lambda r: r.store(1, 0, U64),
    "load": lambda r: r.load(0, U64),
    "read_volatile_from": lambda r: r.read_volatile_from(0, io.BytesIO(b"abc"), 3),
    "read_exact_volatile_from": lambda r: r.read_exact_volatile_from(0, io.BytesIO(b"a"), 1),
    "write_volatile_to": lambda r: r.write_volatile_to(0, io.BytesIO(), 3),
    "write_all_volatile_to": lambda r: r.write_all_volatile_to(0, io.BytesIO(), 3),
    "get_host_address": lambda r: r.get_host_address(0),
    "get_slice": lambda r: r.get_slice(0, 1),
    "get_slice_empty": lambda r: r.get_slice(0, 0),
    "as_volatile_slice": lambda r: r.as_volatile_slice(),
    "as_array": lambda r: r.as_array(),
}


class TestClose:
    @pytest.mark.parametrize("access", sorted(CLOSED_ACCESSES))
    def test_access_after_close(self, access):
        r = GuestRegionMmap.from_range(0x1000, 0x400)
        r.write_obj(1, 0, "<u4")  # warm the fast path's window
        r.read_obj(0, "<u4")
        r.close()
        assert r.get_mmap().closed
        with pytest.raises(MmapRegionError):
            CLOSED_ACCESSES[access](r)

    def test_close_is_idempotent(self):
        r = GuestRegionMmap.from_range(0, 0x1000)
        r.close()
        r.close()
        assert r.get_mmap().closed

    def test_close_refused_while_slice_alive(self):
        r = GuestRegionMmap.from_range(0, 0x1000)
        s = r.get_slice(0x10, 4)
        with pytest.raises(MmapRegionError):
            r.close()
        assert not r.get_mmap().closed
        # the region was restored: every access still works
        r.write(b"ok", 0x10)
        assert s.read_bytes(0, 2) == b"ok"
        assert r.len() == 0x1000
        assert r.read_obj(0x10, "<u2") == int.from_bytes(b"ok", "little")
        with pytest.raises(InvalidBackendAddressError):
            r.write(b"x", 0x1000)
        del s
        gc.collect()
        r.close()
        with pytest.raises(MmapRegionError):
            r.read_bytes(0x10, 2)

    def test_close_refused_while_array_alive(self):
        r = GuestRegionMmap.from_range(0, 0x1000)
        a = r.as_array()
        with pytest.raises(MmapRegionError):
            r.close()
        a[0] = 1
        assert r.read_obj(0, "u1") == 1
        del a
        gc.collect()
        r.close()

    def test_close_file_region(self, data_file):
        with open(data_file, "r+b") as f:
            r = GuestRegionMmap.from_range(0, PAGE_SIZE, FileOffset(f, 0))
            r.write(b"bye", 0)
            r.close()
            with pytest.raises(MmapRegionError):
                r.write(b"x", 0)
            assert not f.closed
        assert data_file.read_bytes()[:3] == b"bye"

    def test_closed_mapping_cannot_be_placed(self):
        m = MmapRegion.anonymous(0x1000)
        m.close()
        with pytest.raises(MmapRegionError):
            GuestRegionMmap(m, 0)

    def test_empty_accesses_after_close(self):
        r = GuestRegionMmap.from_range(0, 0x1000)
        r.close()
        # zero-length accesses validate nothing, as everywhere in vm-memory
        assert r.write(b"", 0) == 0
        assert r.read(bytearray(), 0) == 0
