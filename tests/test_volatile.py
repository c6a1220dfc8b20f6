"""Tests of npguest.volatile: VolatileSlice, VolatileRef, VolatileArrayRef.

The oracle is vm-memory's ``volatile_memory.rs`` (reference §2.3, §3.5, §3.6, §3.9), with
npguest's documented differences: ``OutOfBoundsError`` reports slice offsets (never host
pointers), ``read_volatile_from`` stops at a short read, ``ref_at`` raises instead of
panicking.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import sys

import numpy as np
import pytest
from _support import RecordingBitmap
from hypothesis import event, given
from hypothesis import strategies as st

from npguest import BitmapSlice, NoBitmap, VolatileArrayRef, VolatileRef, VolatileSlice
from npguest.errors import (
    ByteValuedError,
    GuestMemoryError,
    MisalignedError,
    MmapRegionError,
    OffsetOverflowError,
    OutOfBoundsError,
    PartialBufferError,
    ReadOnlyMemoryError,
    StreamError,
    TooBigError,
    VolatileMemoryError,
)

U64_MAX = 2**64 - 1
NATIVE = "<" if sys.byteorder == "little" else ">"
OTHER = ">" if NATIVE == "<" else "<"


def aligned_bytes(n: int) -> np.ndarray:
    """A zeroed, writable uint8 array of ``n`` bytes whose first byte is 8-aligned."""
    arr = np.zeros((n + 7) // 8 + 1, dtype=np.uint64).view(np.uint8)[:n]
    assert arr.__array_interface__["data"][0] % 8 == 0
    return arr


def host(s: VolatileSlice) -> int:
    return s.ptr_guard().as_ptr()


def pattern(n: int, seed: int = 0) -> bytearray:
    return bytearray((i * 7 + seed + 1) % 256 for i in range(n))


# ---------------------------------------------------------------------------------------
# construction, size, identity
# ---------------------------------------------------------------------------------------


class TestConstruction:
    def test_bytearray(self):
        buf = bytearray(b"hello")
        s = VolatileSlice(buf)
        assert s.len() == 5
        assert len(s) == 5
        assert not s.is_empty()
        assert s.is_writable()
        s.write(b"J", 0)
        assert buf == bytearray(b"Jello")  # zero-copy: the caller's buffer changes

    def test_numpy_array_is_byte_view(self):
        arr = np.zeros(4, dtype="<u4")
        s = VolatileSlice(arr)
        assert s.len() == 16
        s.write(b"\x01\x02", 4)
        assert arr.tolist() == [0, 0x0201, 0, 0]
        assert host(s) == arr.__array_interface__["data"][0]

    def test_numpy_view_tracks_the_array(self):
        arr = np.arange(16, dtype=np.uint8)
        s = VolatileSlice(arr[4:12])
        assert s.len() == 8
        assert s.read_bytes(0, 8) == bytes(range(4, 12))
        assert host(s) == arr.__array_interface__["data"][0] + 4

    def test_read_only_bytes(self):
        s = VolatileSlice(b"abc")
        assert s.len() == 3
        assert not s.is_writable()
        assert s.read_bytes(0, 3) == b"abc"

    def test_empty(self):
        s = VolatileSlice(bytearray())
        assert s.len() == 0
        assert s.is_empty()

    def test_not_a_buffer(self):
        with pytest.raises(TypeError):
            VolatileSlice([1, 2, 3])

    def test_non_contiguous_refused(self):
        with pytest.raises(TypeError, match="C-contiguous"):
            VolatileSlice(np.zeros(8, dtype=np.uint8)[::2])

    def test_as_array_is_zero_copy(self):
        buf = bytearray(8)
        s = VolatileSlice(buf).subslice(2, 4)
        a = s.as_array()
        assert a.dtype == np.uint8
        assert a.shape == (4,)
        a[:] = 9
        assert buf == bytearray([0, 0, 9, 9, 9, 9, 0, 0])

    def test_as_array_read_only(self):
        a = VolatileSlice(b"xyz").as_array()
        assert not a.flags.writeable

    def test_ptr_guard(self):
        arr = aligned_bytes(32)
        s = VolatileSlice(arr).subslice(5, 10)
        g = s.ptr_guard()
        assert g.as_ptr() == arr.__array_interface__["data"][0] + 5
        assert g.len() == 10
        assert s.ptr_guard_mut().as_ptr() == g.as_ptr()

    def test_bitmap_default_is_nobitmap(self):
        assert isinstance(VolatileSlice(bytearray(4)).bitmap(), NoBitmap)

    def test_bitmap_rebased(self):
        rec = RecordingBitmap()
        s = VolatileSlice(bytearray(64), rec).subslice(10, 20).subslice(3, 5)
        bm = s.bitmap()
        assert isinstance(bm, BitmapSlice)
        bm.mark_dirty(1, 2)
        assert rec.marks == [(14, 2)]

    def test_not_a_bitmap(self):
        with pytest.raises(TypeError, match="not a Bitmap"):
            VolatileSlice(bytearray(4), bitmap=object())

    def test_as_volatile_slice_is_self(self):
        s = VolatileSlice(bytearray(4))
        assert s.as_volatile_slice() is s

    def test_repr(self):
        s = VolatileSlice(bytearray(4))
        assert repr(s) == f"VolatileSlice(host={host(s):#x}, len=4)"


# ---------------------------------------------------------------------------------------
# bounds: compute_end_offset / subslice / get_slice / offset / split_at
# ---------------------------------------------------------------------------------------

# (base, count, expected): int = ok end, ("oob", addr), ("ovf", base, offset)
BOUNDARY_TABLE = [
    (0, 0, 0),
    (0, 101, ("oob", 101)),
    (99, 1, 100),
    (99, 2, ("oob", 101)),
    (100, 0, 100),
    (100, 1, ("oob", 101)),
    (101, 0, ("oob", 101)),
    (101, 1, ("oob", 102)),
    (U64_MAX, 2, ("ovf", U64_MAX, 2)),
    (2, U64_MAX, ("ovf", 2, U64_MAX)),
]


class TestBounds:
    @pytest.mark.parametrize(("base", "count", "expected"), BOUNDARY_TABLE)
    def test_compute_end_offset(self, base, count, expected):
        s = VolatileSlice(bytearray(100))
        if isinstance(expected, int):
            assert s.compute_end_offset(base, count) == expected
        elif expected[0] == "oob":
            with pytest.raises(OutOfBoundsError) as ei:
                s.compute_end_offset(base, count)
            assert ei.value.addr == expected[1]
        else:
            with pytest.raises(OffsetOverflowError) as ei:
                s.compute_end_offset(base, count)
            assert (ei.value.base, ei.value.offset) == expected[1:]

    @pytest.mark.parametrize("method", ["subslice", "get_slice"])
    @pytest.mark.parametrize(("base", "count", "expected"), BOUNDARY_TABLE)
    def test_subslice(self, method, base, count, expected):
        buf = pattern(100)
        s = VolatileSlice(buf)
        if isinstance(expected, int):
            sub = getattr(s, method)(base, count)
            assert sub.len() == count
            assert host(sub) == host(s) + base
            assert sub.read_bytes(0, count) == bytes(buf[base : base + count])
        elif expected[0] == "oob":
            with pytest.raises(OutOfBoundsError) as ei:
                getattr(s, method)(base, count)
            assert ei.value.addr == expected[1]
        else:
            with pytest.raises(OffsetOverflowError) as ei:
                getattr(s, method)(base, count)
            assert (ei.value.base, ei.value.offset) == expected[1:]

    def test_subslice_of_subslice_is_relative(self):
        buf = pattern(64)
        sub = VolatileSlice(buf).subslice(10, 30).subslice(5, 10)
        assert sub.read_bytes(0, 10) == bytes(buf[15:25])
        with pytest.raises(OutOfBoundsError) as ei:
            VolatileSlice(buf).subslice(10, 30).subslice(25, 6)
        assert ei.value.addr == 31

    def test_negative_arguments_rejected(self):
        s = VolatileSlice(bytearray(10))
        with pytest.raises(OverflowError):
            s.subslice(-1, 2)
        with pytest.raises(TypeError):
            s.subslice(1.0, 2)

    @pytest.mark.parametrize("n", [0, 1, 99, 100])
    def test_offset_ok(self, n):
        buf = pattern(100)
        s = VolatileSlice(buf)
        tail = s.offset(n)
        assert tail.len() == 100 - n
        assert tail.is_empty() == (n == 100)
        assert host(tail) == host(s) + n
        assert tail.read_bytes(0, 100 - n) == bytes(buf[n:])

    @pytest.mark.parametrize("n", [101, 200, U64_MAX])
    def test_offset_past_end(self, n):
        with pytest.raises(OutOfBoundsError) as ei:
            VolatileSlice(bytearray(100)).offset(n)
        assert ei.value.addr == n  # a slice offset, not a host pointer

    @pytest.mark.parametrize("mid", [0, 1, 50, 100])
    def test_split_at(self, mid):
        buf = pattern(100)
        s = VolatileSlice(buf)
        head, tail = s.split_at(mid)
        assert (head.len(), tail.len()) == (mid, 100 - mid)
        assert host(head) == host(s)
        assert host(tail) == host(s) + mid
        assert head.read_bytes(0, mid) == bytes(buf[:mid])
        assert tail.read_bytes(0, 100 - mid) == bytes(buf[mid:])

    def test_split_at_past_end(self):
        with pytest.raises(OutOfBoundsError) as ei:
            VolatileSlice(bytearray(100)).split_at(101)
        assert ei.value.addr == 101

    def test_errors_are_typed_and_pickle(self):
        for exc in (OutOfBoundsError(5), OffsetOverflowError(U64_MAX, 2), TooBigError(3, 4)):
            assert isinstance(exc, VolatileMemoryError)
            assert isinstance(exc, GuestMemoryError)
            back = pickle.loads(pickle.dumps(exc))
            assert type(back) is type(exc)
            assert str(back) == str(exc)
        assert isinstance(OutOfBoundsError(1), IndexError)
        assert isinstance(OffsetOverflowError(1, 2), OverflowError)
        assert isinstance(MisalignedError(1, 2), ValueError)
        assert str(OutOfBoundsError(0x65)) == "address 0x65 is out of bounds"


# ---------------------------------------------------------------------------------------
# write / read / write_slice / read_slice
# ---------------------------------------------------------------------------------------


class TestWriteRead:
    def test_write_table(self):
        buf = bytearray(5)
        s = VolatileSlice(buf)
        assert s.write(b"\x01\x02\x03", 0) == 3
        assert s.write(b"\x04\x05\x06", 3) == 2
        assert buf == bytearray(b"\x01\x02\x03\x04\x05")
        with pytest.raises(OutOfBoundsError) as ei:
            s.write(b"\x01\x02\x03", 5)
        assert ei.value.addr == 5
        assert s.write(b"", 5) == 0
        assert s.write(b"", 100) == 0
        assert s.write(b"", U64_MAX) == 0
        assert buf == bytearray(b"\x01\x02\x03\x04\x05")

    def test_1024_byte_table(self):
        s = VolatileSlice(bytearray(1024))
        assert s.write(b"abcde", 1020) == 4
        out = bytearray(16)
        assert s.read(out, 1010) == 14
        assert out == bytearray(10) + b"abcd" + bytearray(2)

    def test_empty_slice_non_empty_buf(self):
        s = VolatileSlice(bytearray())
        with pytest.raises(OutOfBoundsError) as ei:
            s.write(b"x", 0)
        assert ei.value.addr == 0
        with pytest.raises(OutOfBoundsError) as ei:
            s.read(bytearray(1), 0)
        assert ei.value.addr == 0
        assert s.write(b"", 0) == 0

    def test_read_semantics(self):
        buf = pattern(5)
        s = VolatileSlice(buf)
        out = bytearray(b"\xee" * 4)
        assert s.read(out, 3) == 2
        assert out == buf[3:5] + b"\xee\xee"  # the rest of buf is left as it was
        with pytest.raises(OutOfBoundsError) as ei:
            s.read(bytearray(1), 5)
        assert ei.value.addr == 5
        assert s.read(bytearray(), 100) == 0

    def test_read_into_read_only_buffer_refused(self):
        with pytest.raises(TypeError, match="writable"):
            VolatileSlice(bytearray(4)).read(b"1234", 0)

    @pytest.mark.parametrize(
        "src",
        [b"\x01\x02", bytearray(b"\x01\x02"), memoryview(b"\x01\x02"), np.array([1, 2], "u1")],
    )
    def test_any_buffer_type(self, src):
        buf = bytearray(4)
        assert VolatileSlice(buf).write(src, 1) == 2
        assert buf == bytearray(b"\x00\x01\x02\x00")

    def test_multibyte_items_are_written_as_bytes(self):
        buf = bytearray(8)
        VolatileSlice(buf).write(np.array([0x0102, 0x0304], dtype="<u2"), 0)
        assert buf[:4] == bytearray(b"\x02\x01\x04\x03")

    def test_read_into_numpy(self):
        s = VolatileSlice(bytes(range(8)))
        out = np.zeros(2, dtype="<u2")
        assert s.read(out, 2) == 4
        assert out.tolist() == [0x0302, 0x0504]

    def test_write_slice_partial(self):
        buf = bytearray(5)
        s = VolatileSlice(buf)
        with pytest.raises(PartialBufferError) as ei:
            s.write_slice(b"abc", 3)
        assert (ei.value.expected, ei.value.completed) == (3, 2)
        assert buf == bytearray(b"\x00\x00\x00ab")  # the partial bytes really were written
        with pytest.raises(OutOfBoundsError) as ei:
            s.write_slice(b"abc", 5)
        assert ei.value.addr == 5
        s.write_slice(b"", 50)  # empty: nothing checked

    def test_write_slice_full(self):
        buf = bytearray(5)
        assert VolatileSlice(buf).write_slice(b"abc", 2) is None
        assert buf == bytearray(b"\x00\x00abc")

    def test_read_slice_partial(self):
        s = VolatileSlice(b"abcde")
        out = bytearray(b"....")
        with pytest.raises(PartialBufferError) as ei:
            s.read_slice(out, 2)
        assert (ei.value.expected, ei.value.completed) == (4, 3)
        assert out == bytearray(b"cde.")
        with pytest.raises(OutOfBoundsError) as ei:
            s.read_slice(bytearray(1), 7)
        assert ei.value.addr == 7

    def test_read_bytes(self):
        s = VolatileSlice(b"abcdef")
        assert s.read_bytes(1, 3) == b"bcd"
        with pytest.raises(PartialBufferError) as ei:
            s.read_bytes(4, 3)
        assert (ei.value.expected, ei.value.completed) == (3, 2)

    def test_through_subslice(self):
        buf = bytearray(16)
        sub = VolatileSlice(buf).subslice(4, 8)
        assert sub.write(b"0123456789", 5) == 3
        assert buf == bytearray(9) + b"012" + bytearray(4)
        with pytest.raises(OutOfBoundsError) as ei:
            sub.write(b"x", 8)  # byte 12 of the parent exists, but not of the subslice
        assert ei.value.addr == 8


# ---------------------------------------------------------------------------------------
# write_obj / read_obj
# ---------------------------------------------------------------------------------------

HDR = np.dtype([("magic", ">u4"), ("count", "<u2"), ("flags", "u1")])
PADDED = np.dtype(
    {"names": ["a", "b"], "formats": ["<u2", "<u4"], "offsets": [0, 4], "itemsize": 8}
)


class TestObjects:
    @pytest.mark.parametrize(
        ("dtype", "value", "raw"),
        [
            ("<u2", 0x0102, b"\x02\x01"),
            (">u2", 0x0102, b"\x01\x02"),
            ("<u4", 0xDEADBEEF, b"\xef\xbe\xad\xde"),
            (">u8", 1, b"\x00" * 7 + b"\x01"),
            ("<i2", -2, b"\xfe\xff"),
            ("<f4", 1.5, np.array(1.5, "<f4").tobytes()),
            ("u1", 0xAB, b"\xab"),
        ],
    )
    def test_struct_fast_path(self, dtype, value, raw):
        buf = bytearray(12)
        s = VolatileSlice(buf)
        s.write_obj(value, 3, dtype)
        assert bytes(buf[3 : 3 + len(raw)]) == raw
        assert buf[:3] == bytearray(3)
        assert buf[3 + len(raw) :] == bytearray(12 - 3 - len(raw))
        assert s.read_obj(3, dtype) == value
        assert type(s.read_obj(3, dtype)) in (int, float)

    def test_numpy_scalar_gives_its_dtype(self):
        buf = bytearray(4)
        VolatileSlice(buf).write_obj(np.uint16(0x0102), 1)
        assert buf == bytearray(b"\x00\x02\x01\x00") if NATIVE == "<" else b"\x00\x01\x02\x00"

    def test_python_value_needs_dtype(self):
        buf = bytearray(4)
        with pytest.raises(ByteValuedError):
            VolatileSlice(buf).write_obj(5, 0)
        assert buf == bytearray(4)

    @pytest.mark.parametrize(("dtype", "value"), [("<u2", 70000), ("<u2", -1), ("u1", 256)])
    def test_value_does_not_fit(self, dtype, value):
        buf = bytearray(b"\xee" * 4)
        with pytest.raises(ByteValuedError):
            VolatileSlice(buf).write_obj(value, 0, dtype)
        assert buf == bytearray(b"\xee" * 4)  # memory untouched, not zeroed

    def test_object_dtype_refused(self):
        s = VolatileSlice(bytearray(16))
        with pytest.raises(ByteValuedError):
            s.read_obj(0, object)
        with pytest.raises(ByteValuedError):
            s.write_obj(1, 0, np.dtype([("a", object)]))

    def test_structured(self):
        buf = bytearray(10)
        s = VolatileSlice(buf)
        s.write_obj((0xFEEDFACE, 3, 9), 2, HDR)
        assert bytes(buf[2:9]) == b"\xfe\xed\xfa\xce\x03\x00\x09"
        rec = s.read_obj(2, HDR)
        assert isinstance(rec, np.void)
        assert rec.dtype == HDR
        assert (int(rec["magic"]), int(rec["count"]), int(rec["flags"])) == (0xFEEDFACE, 3, 9)
        # the record is a copy, not a view of memory
        s.write(b"\x00", 2)
        assert int(rec["magic"]) == 0xFEEDFACE

    def test_structured_from_numpy_record(self):
        arr = np.zeros(1, dtype=PADDED)
        arr[0] = (7, 0x01020304)
        buf = bytearray(b"\xff" * 8)
        VolatileSlice(buf).write_obj(arr[0], 0)
        assert bytes(buf) == arr.tobytes()
        back = VolatileSlice(buf).read_obj(0, PADDED)
        assert (int(back["a"]), int(back["b"])) == (7, 0x01020304)

    def test_subarray_dtype(self):
        dt = np.dtype(("<u2", (3,)))
        buf = bytearray(6)
        s = VolatileSlice(buf)
        s.write_obj([1, 2, 3], 0, dt)
        assert bytes(buf) == b"\x01\x00\x02\x00\x03\x00"
        assert np.asarray(s.read_obj(0, dt)).tolist() == [1, 2, 3]

    def test_wrong_shape_refused(self):
        with pytest.raises(ByteValuedError):
            VolatileSlice(bytearray(8)).write_obj([1, 2], 0, "<u2")

    @pytest.mark.parametrize("dtype", ["<u2", HDR])
    def test_write_obj_straddles_end(self, dtype):
        size = np.dtype(dtype).itemsize
        buf = bytearray(b"\xee" * (size + 3))
        s = VolatileSlice(buf)
        value = 0x0102 if dtype == "<u2" else (0x11223344, 0x5566, 0x77)
        raw = np.array(value, dtype=dtype).tobytes()
        with pytest.raises(PartialBufferError) as ei:
            s.write_obj(value, 4, dtype)
        assert (ei.value.expected, ei.value.completed) == (size, size - 1)
        assert bytes(buf[4:]) == raw[: size - 1]  # leading bytes were written
        assert bytes(buf[:4]) == b"\xee" * 4

    def test_write_obj_u16_table(self):
        s = VolatileSlice(bytearray(5))
        with pytest.raises(PartialBufferError) as ei:
            s.write_obj(1, 4, "<u2")
        assert (ei.value.expected, ei.value.completed) == (2, 1)
        with pytest.raises(OutOfBoundsError) as ei:
            s.write_obj(1, U64_MAX, "<u2")
        assert ei.value.addr == U64_MAX
        with pytest.raises(OutOfBoundsError) as ei:
            s.write_obj(1, 5, "<u2")
        assert ei.value.addr == 5

    @pytest.mark.parametrize("dtype", ["<u4", HDR])
    def test_read_obj_straddles_end(self, dtype):
        size = np.dtype(dtype).itemsize
        s = VolatileSlice(bytearray(size + 1))
        with pytest.raises(PartialBufferError) as ei:
            s.read_obj(3, dtype)
        assert (ei.value.expected, ei.value.completed) == (size, size - 2)
        with pytest.raises(OutOfBoundsError) as ei:
            s.read_obj(size + 1, dtype)
        assert ei.value.addr == size + 1

    def test_objects_through_subslices(self):
        buf = bytearray(32)
        parent = VolatileSlice(buf)
        a, b = parent.subslice(0, 16), parent.subslice(16, 16)
        a.write_obj(0x11111111, 12, "<u4")
        b.write_obj(0x2222, 0, "<u2")
        assert parent.read_obj(12, "<u4") == 0x11111111
        assert parent.read_obj(16, "<u2") == 0x2222
        with pytest.raises(PartialBufferError):
            a.write_obj(0x33333333, 14, "<u4")  # the parent has room; the subslice has not
        assert buf[16:18] == bytearray(b"\x22\x22")
        # alternating between slices keeps each slice's own window (fast-path cache)
        for i in range(4):
            a.write_obj(i, 4 * i, "<u4")
            b.write_obj(100 + i, 4 * i, "<u4")
        assert [parent.read_obj(4 * i, "<u4") for i in range(8)] == [0, 1, 2, 3, 100, 101, 102, 103]

    def test_unaligned_objects_are_fine(self):
        s = VolatileSlice(aligned_bytes(16))
        s.write_obj(0x0102030405060708, 3, "<u8")
        assert s.read_obj(3, "<u8") == 0x0102030405060708


# ---------------------------------------------------------------------------------------
# copy_to / copy_from / copy_to_volatile_slice
# ---------------------------------------------------------------------------------------


class TestCopies:
    def test_copy_to_whole_elements(self):
        data = np.arange(1, 6, dtype="<u2").tobytes()[:9]  # 9 bytes of u16 data
        s = VolatileSlice(bytearray(data))
        out = np.zeros(6, dtype="<u2")
        assert s.copy_to(out) == 4
        assert out.tolist() == [1, 2, 3, 4, 0, 0]  # the 5th (partial) element is left 0

    def test_copy_to_7_bytes_into_8(self):
        s = VolatileSlice(bytearray(range(7)))
        out = np.full(8, 0xFFFF, dtype="<u2")
        assert s.copy_to(out) == 3
        assert out[3:].tolist() == [0xFFFF] * 5

    def test_copy_to_short_buffer(self):
        s = VolatileSlice(bytes(range(16)))
        out = np.zeros(2, dtype="<u4")
        assert s.copy_to(out) == 2
        assert out.tobytes() == bytes(range(8))

    def test_copy_to_bytearray(self):
        s = VolatileSlice(b"abcdef")
        out = bytearray(4)
        assert s.copy_to(out) == 4
        assert out == bytearray(b"abcd")

    def test_copy_to_read_only_refused(self):
        with pytest.raises(TypeError):
            VolatileSlice(b"abcdef").copy_to(b"1234")

    def test_copy_from_leaves_partial_element(self):
        buf = bytearray(b"\x01\x02\x03\x04\x05\x06\x07")
        s = VolatileSlice(buf)
        assert s.copy_from(np.full(8, 0xFFFF, dtype="<u2")) is None
        assert buf == bytearray(b"\xff" * 6 + b"\x07")

    def test_copy_from_short_source(self):
        buf = bytearray(8)
        VolatileSlice(buf).copy_from(np.array([0x01020304], dtype="<u4"))
        assert buf == bytearray(b"\x04\x03\x02\x01" + bytes(4))

    def test_copy_from_bytes(self):
        buf = bytearray(4)
        VolatileSlice(buf).subslice(1, 2).copy_from(b"xyz")
        assert buf == bytearray(b"\x00xy\x00")

    def test_copy_to_volatile_slice_lengths(self):
        src = VolatileSlice(b"abcdef")
        dbuf = bytearray(4)
        src.copy_to_volatile_slice(VolatileSlice(dbuf))
        assert dbuf == bytearray(b"abcd")
        dbuf = bytearray(b"........")
        src.copy_to_volatile_slice(VolatileSlice(dbuf))
        assert dbuf == bytearray(b"abcdef..")

    def test_copy_to_volatile_slice_empty(self):
        dbuf = bytearray(b"..")
        VolatileSlice(b"").copy_to_volatile_slice(VolatileSlice(dbuf))
        VolatileSlice(b"ab").copy_to_volatile_slice(VolatileSlice(dbuf).subslice(2, 0))
        assert dbuf == bytearray(b"..")

    @pytest.mark.parametrize(
        ("src", "dst"),
        [
            ((0, 10), (3, 10)),  # forward overlap (dest after source)
            ((3, 10), (0, 10)),  # backward overlap (dest before source)
            ((0, 16), (1, 15)),
            ((1, 15), (0, 16)),
            ((2, 8), (2, 8)),  # identical
            ((0, 20), (5, 4)),  # dest shorter
            ((5, 4), (0, 20)),  # source shorter
        ],
    )
    def test_copy_to_volatile_slice_overlap(self, src, dst):
        buf = pattern(24)
        model = bytearray(buf)
        s = VolatileSlice(buf)
        s.subslice(*src).copy_to_volatile_slice(s.subslice(*dst))
        n = min(src[1], dst[1])
        model[dst[0] : dst[0] + n] = bytes(model[src[0] : src[0] + n])  # memmove
        assert buf == model


# ---------------------------------------------------------------------------------------
# VolatileRef / VolatileArrayRef
# ---------------------------------------------------------------------------------------


class TestRefs:
    def test_get_ref_unaligned(self):
        buf = bytearray(7)
        s = VolatileSlice(buf)
        r = s.get_ref(2, "<u4")
        assert isinstance(r, VolatileRef)
        assert r.len() == 4
        assert len(r) == 4
        assert r.dtype == np.dtype("<u4")
        r.store(0x0A0B0C0D)
        assert buf == bytearray(b"\x00\x00\x0d\x0c\x0b\x0a\x00")
        assert r.load() == 0x0A0B0C0D
        buf[2] = 0xFF
        assert r.load() == 0x0A0B0CFF  # a reference, not a copy

    def test_get_ref_bounds(self):
        s = VolatileSlice(bytearray(7))
        s.get_ref(3, "<u4")
        with pytest.raises(OutOfBoundsError) as ei:
            s.get_ref(4, "<u4")
        assert ei.value.addr == 8
        with pytest.raises(OffsetOverflowError):
            s.get_ref(U64_MAX, "<u2")
        with pytest.raises(ByteValuedError):
            s.get_ref(0, object)

    def test_ref_to_slice(self):
        s = VolatileSlice(aligned_bytes(16))
        r = s.get_ref(5, HDR)
        sl = r.to_slice()
        assert isinstance(sl, VolatileSlice)
        assert sl.len() == HDR.itemsize
        assert host(sl) == host(s) + 5
        assert r.ptr_guard().as_ptr() == host(s) + 5

    def test_ref_structured(self):
        buf = bytearray(12)
        r = VolatileSlice(buf).get_ref(1, HDR)
        r.store((1, 2, 3))
        rec = r.load()
        assert (int(rec["magic"]), int(rec["count"]), int(rec["flags"])) == (1, 2, 3)
        assert bytes(buf[1:8]) == b"\x00\x00\x00\x01\x02\x00\x03"

    def test_ref_wrong_size(self):
        with pytest.raises(ValueError, match="needs 4 bytes"):
            VolatileRef(VolatileSlice(bytearray(3)), "<u4")

    def test_ref_repr(self):
        assert repr(VolatileSlice(bytearray(4)).get_ref(0, "<u2")).startswith("VolatileRef(uint16")

    def test_get_array_ref(self):
        buf = bytearray(20)
        s = VolatileSlice(buf)
        a = s.get_array_ref(2, 4, "<u4")
        assert isinstance(a, VolatileArrayRef)
        assert a.len() == 4
        assert len(a) == 4
        assert not a.is_empty()
        assert a.element_size() == 4
        assert a.dtype == np.dtype("<u4")
        assert a.to_slice().len() == 16
        assert host(a.to_slice()) == host(s) + 2
        a.store(3, 0xAABBCCDD)
        assert bytes(buf[14:18]) == b"\xdd\xcc\xbb\xaa"
        assert a.load(3) == 0xAABBCCDD
        assert a.ref_at(3).load() == 0xAABBCCDD
        assert a.to_numpy().tolist() == [0, 0, 0, 0xAABBCCDD]

    def test_get_array_ref_bounds(self):
        s = VolatileSlice(bytearray(20))
        s.get_array_ref(4, 4, "<u4")
        with pytest.raises(OutOfBoundsError) as ei:
            s.get_array_ref(5, 4, "<u4")
        assert ei.value.addr == 21
        assert s.get_array_ref(20, 0, "<u4").is_empty()

    @pytest.mark.parametrize(
        ("n", "dtype"), [(U64_MAX, "<u4"), (2**62, "<u4"), (2**63, "u1"), (2**61, HDR)]
    )
    def test_get_array_ref_too_big_before_bounds(self, n, dtype):
        s = VolatileSlice(bytearray(8))
        with pytest.raises(TooBigError) as ei:
            s.get_array_ref(1000, n, dtype)  # offset out of range too: TooBig wins
        assert (ei.value.nelements, ei.value.size) == (n, np.dtype(dtype).itemsize)

    def test_get_array_ref_largest_not_too_big(self):
        s = VolatileSlice(bytearray(8))
        with pytest.raises(OutOfBoundsError) as ei:
            s.get_array_ref(0, 2**63 - 1, "u1")
        assert ei.value.addr == 2**63 - 1

    def test_ref_at_out_of_range(self):
        a = VolatileSlice(bytearray(12)).get_array_ref(0, 3, "<u4")
        with pytest.raises(OutOfBoundsError) as ei:
            a.ref_at(3)
        assert ei.value.addr == 12
        with pytest.raises(OutOfBoundsError):
            a.load(3)
        with pytest.raises(OutOfBoundsError):
            a.store(5, 1)
        with pytest.raises(OverflowError):
            a.ref_at(-1)

    def test_array_copy_to(self):
        s = VolatileSlice(np.arange(4, dtype="<u4").tobytes())
        a = s.get_array_ref(0, 4, "<u4")
        out = np.zeros(6, dtype="<u4")
        assert a.copy_to(out) == 4
        assert out.tolist() == [0, 1, 2, 3, 0, 0]
        out = np.zeros(2, dtype="<u4")
        assert a.copy_to(out) == 2
        assert out.tolist() == [0, 1]

    def test_array_copy_from(self):
        buf = bytearray(b"\xee" * 14)
        a = VolatileSlice(buf).get_array_ref(1, 3, "<u4")
        a.copy_from(np.array([1, 2], dtype="<u4"))
        assert bytes(buf) == b"\xee" + np.array([1, 2], "<u4").tobytes() + b"\xee" * 5
        a.copy_from(np.array([5, 6, 7, 8, 9], dtype="<u4"))
        assert a.to_numpy().tolist() == [5, 6, 7]
        assert buf[13] == 0xEE

    def test_array_item_size_mismatch(self):
        a = VolatileSlice(bytearray(16)).get_array_ref(0, 4, "<u4")
        with pytest.raises(ByteValuedError, match="buffer items are 2 bytes"):
            a.copy_to(np.zeros(4, dtype="<u2"))
        with pytest.raises(ByteValuedError, match="buffer items are 8 bytes"):
            a.copy_from(np.zeros(4, dtype="<u8"))
        assert a.to_numpy().tolist() == [0, 0, 0, 0]

    def test_array_copy_to_volatile_slice(self):
        buf = pattern(16)
        model = bytearray(buf)
        s = VolatileSlice(buf)
        s.get_array_ref(0, 3, "<u4").copy_to_volatile_slice(s.subslice(2, 14))
        model[2:14] = bytes(model[0:12])
        assert buf == model
        dbuf = bytearray(5)
        s.get_array_ref(0, 3, "<u4").copy_to_volatile_slice(VolatileSlice(dbuf))
        assert dbuf == model[:5]

    def test_to_numpy_is_a_copy(self):
        buf = bytearray(8)
        a = VolatileSlice(buf).get_array_ref(0, 4, "<u2")
        arr = a.to_numpy()
        arr[:] = 7
        assert buf == bytearray(8)

    def test_array_ref_structured(self):
        buf = bytearray(2 * HDR.itemsize)
        a = VolatileSlice(buf).get_array_ref(0, 2, HDR)
        a.store(1, (9, 8, 7))
        assert a.load(0)["magic"] == 0
        assert int(a.to_numpy()[1]["count"]) == 8

    def test_array_ref_from_slice_defaults_to_bytes(self):
        a = VolatileArrayRef(VolatileSlice(b"abc"))
        assert (a.len(), a.element_size(), a.dtype) == (3, 1, np.dtype(np.uint8))
        assert a.load(2) == ord("c")

    def test_array_ref_ragged_slice(self):
        with pytest.raises(ValueError, match="whole number"):
            VolatileArrayRef(VolatileSlice(bytearray(7)), "<u2")

    def test_array_ref_bitmap_and_repr(self):
        rec = RecordingBitmap()
        a = VolatileSlice(bytearray(16), rec).get_array_ref(4, 2, "<u4")
        a.bitmap().mark_dirty(0, 1)
        assert rec.marks == [(4, 1)]
        assert "VolatileArrayRef(uint32, n=2" in repr(a)
        assert a.ptr_guard().as_ptr() == a.to_slice().ptr_guard().as_ptr()


# ---------------------------------------------------------------------------------------
# load / store
# ---------------------------------------------------------------------------------------

ATOMIC = [NATIVE + "u1", NATIVE + "u2", NATIVE + "u4", NATIVE + "u8", NATIVE + "i4", np.uint64]


class TestLoadStore:
    @pytest.mark.parametrize("dtype", ATOMIC)
    def test_round_trip(self, dtype):
        size = np.dtype(dtype).itemsize
        buf = aligned_bytes(32)
        s = VolatileSlice(buf)
        value = 2 ** (8 * size - 2) + 5
        s.store(value, 2 * size, dtype)
        assert s.load(2 * size, dtype) == value
        assert buf[2 * size : 3 * size].tobytes() == np.array(value, dtype).tobytes()
        assert type(s.load(2 * size, dtype)) is int

    def test_store_dtype_from_value(self):
        s = VolatileSlice(aligned_bytes(8))
        s.store(np.uint32(77), 4)
        assert s.load(4, np.uint32) == 77

    def test_store_python_int_needs_dtype(self):
        with pytest.raises(ByteValuedError):
            VolatileSlice(aligned_bytes(8)).store(1, 0)

    def test_bounds_before_alignment(self):
        s = VolatileSlice(aligned_bytes(8))
        with pytest.raises(OutOfBoundsError) as ei:
            s.load(1, NATIVE + "u8")
        assert ei.value.addr == 9

    def test_misaligned(self):
        s = VolatileSlice(aligned_bytes(16))
        base = host(s)
        with pytest.raises(MisalignedError) as ei:
            s.load(1, NATIVE + "u4")
        assert (ei.value.addr, ei.value.alignment) == (base + 1, 4)
        with pytest.raises(MisalignedError) as ei:
            s.store(1, 6, NATIVE + "u8")
        assert (ei.value.addr, ei.value.alignment) == (base + 6, 8)

    def test_alignment_is_of_the_host_address(self):
        s = VolatileSlice(aligned_bytes(16)).subslice(1, 15)
        with pytest.raises(MisalignedError):
            s.load(0, NATIVE + "u2")  # offset 0, but host address odd
        s.store(0xBEEF, 1, NATIVE + "u2")
        assert s.load(1, NATIVE + "u2") == 0xBEEF

    def test_bounds_table(self):
        s = VolatileSlice(aligned_bytes(16))
        for addr, dtype, end in [(16, "u4", 20), (14, "u4", 18), (15, "u2", 17)]:
            with pytest.raises(OutOfBoundsError) as ei:
                s.load(addr, NATIVE + dtype)
            assert ei.value.addr == end
        with pytest.raises(OutOfBoundsError) as ei:
            s.store(1, 15, NATIVE + "u2")
        assert ei.value.addr == 17
        with pytest.raises(OffsetOverflowError) as ei:
            s.load(U64_MAX - 3, NATIVE + "u8")
        assert (ei.value.base, ei.value.offset) == (U64_MAX - 3, 8)

    @pytest.mark.parametrize(
        "dtype", [OTHER + "u4", NATIVE + "f4", NATIVE + "f8", "?", HDR, "S4", NATIVE + "u2,u2"]
    )
    def test_non_atomic_dtypes(self, dtype):
        buf = aligned_bytes(16)
        s = VolatileSlice(buf)
        with pytest.raises(ByteValuedError):
            s.load(0, dtype)
        with pytest.raises(ByteValuedError):
            s.store(1, 0, dtype)
        with pytest.raises(ByteValuedError):
            s.load(1000, dtype)  # the dtype is checked before the bounds
        assert not buf.any()

    @pytest.mark.parametrize("value", [2**32, -1, 1.5, "x", None])
    def test_store_bad_value(self, value):
        buf = aligned_bytes(8)
        buf[:] = 0xEE
        with pytest.raises(ByteValuedError):
            VolatileSlice(buf).store(value, 0, NATIVE + "u4")
        assert buf.tolist() == [0xEE] * 8  # memory untouched, not zeroed


# ---------------------------------------------------------------------------------------
# streams
# ---------------------------------------------------------------------------------------


class FailingStream:
    def readinto(self, b):
        raise OSError(5, "boom")

    def write(self, b):
        raise OSError(28, "full")


class TrickleSource:
    """Hands out at most ``chunk`` bytes per read."""

    def __init__(self, data: bytes, chunk: int) -> None:
        self.data, self.chunk, self.pos, self.calls = data, chunk, 0, 0

    def readinto(self, b):
        self.calls += 1
        n = min(len(b), self.chunk, len(self.data) - self.pos)
        b[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


class TrickleSink:
    def __init__(self, chunk: int) -> None:
        self.chunk, self.out = chunk, bytearray()

    def write(self, b):
        n = min(len(b), self.chunk)
        self.out += bytes(b[:n])
        return n


class TestStreams:
    def test_read_volatile_from_bytesio(self):
        buf = bytearray(8)
        s = VolatileSlice(buf)
        src = io.BytesIO(b"abcdefghij")
        assert s.read_volatile_from(2, src, 4) == 4
        assert buf == bytearray(b"\x00\x00abcd\x00\x00")
        assert s.read_volatile_from(6, src, 10) == 2  # limited by the slice
        assert buf[6:] == bytearray(b"ef")
        assert src.tell() == 6

    def test_read_volatile_from_stops_at_short_read(self):
        buf = bytearray(8)
        src = TrickleSource(b"abcdefgh", 3)
        assert VolatileSlice(buf).read_volatile_from(0, src, 8) == 3
        assert src.calls == 1
        assert buf == bytearray(b"abc" + bytes(5))

    def test_read_volatile_from_eof(self):
        assert VolatileSlice(bytearray(4)).read_volatile_from(0, io.BytesIO(b""), 4) == 0

    def test_read_volatile_from_at_len_and_past(self):
        s = VolatileSlice(bytearray(5))
        src = io.BytesIO(b"xyz")
        assert s.read_volatile_from(5, src, 3) == 0
        assert src.tell() == 0
        with pytest.raises(OutOfBoundsError) as ei:
            s.read_volatile_from(6, src, 3)
        assert ei.value.addr == 6  # a slice offset, not a host pointer
        assert s.read_volatile_from(0, src, 0) == 0
        assert src.tell() == 0
        assert VolatileSlice(bytearray()).read_volatile_from(0, src, 3) == 0

    def test_read_exact_volatile_from(self):
        buf = bytearray(8)
        s = VolatileSlice(buf)
        src = TrickleSource(b"abcdefgh", 3)
        assert s.read_exact_volatile_from(1, src, 7) is None
        assert buf == bytearray(b"\x00abcdefg")
        assert src.calls == 3

    def test_read_exact_volatile_from_short_source(self):
        buf = bytearray(8)
        with pytest.raises(StreamError) as ei:
            VolatileSlice(buf).read_exact_volatile_from(2, io.BytesIO(b"abc"), 5)
        assert ei.value.completed == 3
        assert isinstance(ei.value, OSError)
        assert buf == bytearray(b"\x00\x00abc\x00\x00\x00")

    def test_read_exact_volatile_from_bounds(self):
        s = VolatileSlice(bytearray(5))
        src = io.BytesIO(b"abcdefgh")
        with pytest.raises(OutOfBoundsError) as ei:
            s.read_exact_volatile_from(3, src, 3)
        assert ei.value.addr == 6
        with pytest.raises(OutOfBoundsError) as ei:
            s.read_exact_volatile_from(6, src, 0)
        assert ei.value.addr == 6
        with pytest.raises(OffsetOverflowError):
            s.read_exact_volatile_from(U64_MAX, src, 2)
        assert src.tell() == 0
        s.read_exact_volatile_from(5, src, 0)
        assert src.tell() == 0

    def test_write_volatile_to(self):
        s = VolatileSlice(b"abcde")
        out = io.BytesIO()
        assert s.write_volatile_to(3, out, 10) == 2
        assert s.write_volatile_to(0, out, 2) == 2
        assert out.getvalue() == b"deab"
        assert s.write_volatile_to(5, out, 3) == 0
        with pytest.raises(OutOfBoundsError) as ei:
            s.write_volatile_to(6, out, 3)
        assert ei.value.addr == 6
        assert out.getvalue() == b"deab"

    def test_write_volatile_to_loops_over_short_writes(self):
        sink = TrickleSink(2)
        assert VolatileSlice(b"abcdefg").write_volatile_to(1, sink, 5) == 5
        assert sink.out == bytearray(b"bcdef")

    def test_write_all_volatile_to(self):
        s = VolatileSlice(b"abcde")
        out = io.BytesIO()
        s.write_all_volatile_to(1, out, 4)
        assert out.getvalue() == b"bcde"
        with pytest.raises(OutOfBoundsError) as ei:
            s.write_all_volatile_to(3, out, 3)
        assert ei.value.addr == 6
        s.write_all_volatile_to(5, out, 0)
        assert out.getvalue() == b"bcde"

    def test_write_zero_sink(self):
        class Zero:
            def write(self, b):
                return 0

        with pytest.raises(StreamError) as ei:
            VolatileSlice(b"abc").write_all_volatile_to(0, Zero(), 3)
        assert ei.value.completed == 0

    def test_failing_stream(self):
        s = VolatileSlice(bytearray(4))
        with pytest.raises(StreamError) as ei:
            s.read_volatile_from(0, FailingStream(), 4)
        assert isinstance(ei.value.__cause__, OSError)
        assert ei.value.__cause__.errno == 5
        with pytest.raises(StreamError) as ei:
            s.write_all_volatile_to(0, FailingStream(), 4)
        assert ei.value.__cause__.errno == 28

    def test_not_a_stream(self):
        s = VolatileSlice(bytearray(4))
        with pytest.raises(TypeError):
            s.read_volatile_from(0, object(), 4)
        with pytest.raises(TypeError):
            s.write_volatile_to(0, object(), 4)
        with pytest.raises(TypeError, match="binary"):
            s.write_volatile_to(0, io.StringIO(), 4)

    def test_real_files(self, tmp_path):
        path = tmp_path / "data.bin"
        path.write_bytes(bytes(range(100)))
        buf = bytearray(64)
        s = VolatileSlice(buf)
        with open(path, "rb") as f:
            f.seek(10)
            assert s.read_volatile_from(4, f, 20) == 20
            assert f.tell() == 30
            s.read_exact_volatile_from(40, f, 10)
        assert bytes(buf[4:24]) == bytes(range(10, 30))
        assert bytes(buf[40:50]) == bytes(range(30, 40))
        with open(path, "rb", buffering=0) as f:
            f.seek(95)
            with pytest.raises(StreamError) as ei:
                s.read_exact_volatile_from(54, f, 10)
            assert ei.value.completed == 5
        assert bytes(buf[54:64]) == bytes(range(95, 100)) + bytes(5)
        out = tmp_path / "out.bin"
        with open(out, "wb") as f:
            assert s.write_volatile_to(4, f, 20) == 20
            s.write_all_volatile_to(40, f, 10)
        assert out.read_bytes() == bytes(range(10, 40))

    def test_pipe_fds(self):
        r, w = os.pipe()
        try:
            buf = bytearray(16)
            s = VolatileSlice(buf)
            os.write(w, b"hello")
            assert s.read_volatile_from(2, r, 10) == 5  # one read: what the pipe holds
            assert bytes(buf[2:7]) == b"hello"
            assert s.write_volatile_to(2, w, 5) == 5
            assert os.read(r, 16) == b"hello"
            s.write_all_volatile_to(0, w, 3)
            assert os.read(r, 16) == bytes(buf[:3])
            os.write(w, b"abcdefgh")
            s.read_exact_volatile_from(8, r, 8)
            assert bytes(buf[8:]) == b"abcdefgh"
            os.write(w, b"xy")
            os.close(w)
            w = -1
            with pytest.raises(StreamError) as ei:
                s.read_exact_volatile_from(0, r, 4)
            assert ei.value.completed == 2
            assert bytes(buf[:2]) == b"xy"
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    def test_socketpair(self):
        a, b = socket.socketpair()
        with a, b:
            buf = bytearray(16)
            s = VolatileSlice(buf)
            a.sendall(b"socket!")
            s.read_exact_volatile_from(3, b, 7)
            assert bytes(buf[3:10]) == b"socket!"
            assert s.write_volatile_to(3, b, 7) == 7
            assert a.recv(16) == b"socket!"
            s.write_all_volatile_to(0, a, 4)
            assert b.recv(16) == bytes(buf[:4])
            a.sendall(b"xyz")
            assert s.read_volatile_from(12, b, 4) == 3
            a.shutdown(socket.SHUT_WR)
            with pytest.raises(StreamError) as ei:
                s.read_exact_volatile_from(0, b, 2)
            assert ei.value.completed == 0

    def test_nonblocking_socket_without_data(self):
        a, b = socket.socketpair()
        with a, b:
            b.setblocking(False)
            with pytest.raises(StreamError) as ei:
                VolatileSlice(bytearray(4)).read_volatile_from(0, b, 4)
            assert isinstance(ei.value.__cause__, BlockingIOError)


# ---------------------------------------------------------------------------------------
# dirty tracking
# ---------------------------------------------------------------------------------------


def tracked(n: int = 64, sub: tuple[int, int] | None = None):
    rec = RecordingBitmap()
    s = VolatileSlice(aligned_bytes(n), rec)
    if sub is not None:
        s = s.subslice(*sub)
    return rec, s


SUBS = [None, (8, 40)]


def base_of(sub):
    return 0 if sub is None else sub[0]


def span(start, n):
    return set(range(start, start + n))


class TestDirty:
    @pytest.mark.parametrize("sub", SUBS)
    def test_write(self, sub):
        rec, s = tracked(sub=sub)
        b = base_of(sub)
        assert s.write(b"abc", 5) == 3
        assert rec.marks == [(b + 5, 3)]
        rec.clear()
        assert s.write(b"x" * 10, s.len() - 2) == 2
        assert rec.dirty_bytes() == span(b + s.len() - 2, 2)
        rec.clear()
        s.write(b"", 3)
        assert rec.marks == []

    @pytest.mark.parametrize("sub", SUBS)
    def test_write_slice_partial(self, sub):
        rec, s = tracked(sub=sub)
        b = base_of(sub)
        with pytest.raises(PartialBufferError):
            s.write_slice(b"abcd", s.len() - 1)
        assert rec.dirty_bytes() == {b + s.len() - 1}

    @pytest.mark.parametrize("sub", SUBS)
    @pytest.mark.parametrize("dtype", ["<u4", ">u8", HDR])
    def test_write_obj(self, sub, dtype):
        rec, s = tracked(sub=sub)
        b = base_of(sub)
        size = np.dtype(dtype).itemsize
        value = 1 if dtype != HDR else (1, 2, 3)
        s.write_obj(value, 3, dtype)
        assert rec.dirty_bytes() == span(b + 3, size)
        rec.clear()
        with pytest.raises(PartialBufferError):
            s.write_obj(value, s.len() - 2, dtype)
        assert rec.dirty_bytes() == span(b + s.len() - 2, 2)

    @pytest.mark.parametrize("sub", SUBS)
    def test_store(self, sub):
        rec, s = tracked(sub=sub)
        b = base_of(sub)
        s.store(5, 16, NATIVE + "u8")
        assert rec.marks == [(b + 16, 8)]
        rec.clear()
        with pytest.raises(MisalignedError):
            s.store(5, 17, NATIVE + "u8")
        assert rec.marks == []

    @pytest.mark.parametrize("sub", SUBS)
    def test_copy_from(self, sub):
        rec, s = tracked(sub=sub)
        b = base_of(sub)
        s.subslice(4, 7).copy_from(np.zeros(8, dtype="<u2"))
        assert rec.dirty_bytes() == span(b + 4, 6)  # the trailing partial element is not
        rec.clear()
        s.copy_from(b"xy")
        assert rec.dirty_bytes() == span(b, 2)

    @pytest.mark.parametrize("sub", SUBS)
    def test_copy_to_volatile_slice_marks_dest(self, sub):
        rec, s = tracked(sub=sub)
        b = base_of(sub)
        s.subslice(0, 10).copy_to_volatile_slice(s.subslice(20, 6))
        assert rec.dirty_bytes() == span(b + 20, 6)
        rec.clear()
        # from an untracked slice into a tracked one, and the other way round
        VolatileSlice(b"abc").copy_to_volatile_slice(s.subslice(1, 10))
        assert rec.dirty_bytes() == span(b + 1, 3)
        rec.clear()
        s.copy_to_volatile_slice(VolatileSlice(bytearray(4)))
        assert rec.marks == []

    @pytest.mark.parametrize("sub", SUBS)
    def test_read_volatile_from(self, sub):
        rec, s = tracked(sub=sub)
        b = base_of(sub)
        assert s.read_volatile_from(5, io.BytesIO(b"abc"), 10) == 3
        assert rec.dirty_bytes() == span(b + 5, 3)
        rec.clear()
        s.read_volatile_from(5, io.BytesIO(b""), 10)
        assert rec.dirty_bytes() == set()

    @pytest.mark.parametrize("sub", SUBS)
    def test_read_exact_volatile_from(self, sub):
        rec, s = tracked(sub=sub)
        b = base_of(sub)
        s.read_exact_volatile_from(6, TrickleSource(b"abcdefg", 3), 7)
        assert rec.dirty_bytes() == span(b + 6, 7)
        rec.clear()
        with pytest.raises(StreamError):
            s.read_exact_volatile_from(2, TrickleSource(b"ab", 1), 6)
        assert rec.dirty_bytes() == span(b + 2, 2)  # only what arrived

    @pytest.mark.parametrize("sub", SUBS)
    def test_refs(self, sub):
        rec, s = tracked(sub=sub)
        b = base_of(sub)
        s.get_ref(3, "<u4").store(1)
        assert rec.marks == [(b + 3, 4)]
        rec.clear()
        arr = s.get_array_ref(8, 4, "<u2")
        arr.store(2, 9)
        assert rec.marks == [(b + 12, 2)]
        rec.clear()
        arr.copy_from(np.ones(3, dtype="<u2"))
        assert rec.dirty_bytes() == span(b + 8, 6)
        rec.clear()
        arr.copy_to_volatile_slice(s.subslice(30, 5))
        assert rec.dirty_bytes() == span(b + 30, 5)

    def test_through_nested_derived_slices(self):
        rec, s = tracked(64)
        head, tail = s.split_at(20)
        tail.offset(5).subslice(2, 10).write(b"zz", 1)
        assert rec.marks == [(20 + 5 + 2 + 1, 2)]
        rec.clear()
        head.write(b"q", 19)
        assert rec.marks == [(19, 1)]
        assert rec.dirty_at(19)
        assert s.bitmap().dirty_at(19)
        assert tail.bitmap().dirty_at(-1 % 2**64)  # offsets wrap, as vm-memory's BaseSlice

    def test_reads_never_mark(self):
        rec, s = tracked(64)
        s.read(bytearray(8), 0)
        s.read_slice(bytearray(8), 8)
        s.read_obj(0, "<u8")
        s.read_obj(1, HDR)
        s.load(8, NATIVE + "u8")
        s.read_bytes(0, 64)
        s.copy_to(np.zeros(4, dtype="<u4"))
        s.copy_to_volatile_slice(VolatileSlice(bytearray(64)))
        s.write_volatile_to(0, io.BytesIO(), 64)
        s.write_all_volatile_to(0, io.BytesIO(), 64)
        s.get_ref(0, "<u4").load()
        a = s.get_array_ref(0, 4, "<u4")
        a.load(1)
        a.to_numpy()
        a.copy_to(np.zeros(4, dtype="<u4"))
        assert rec.marks == []

    def test_failed_writes_do_not_mark(self):
        rec, s = tracked(16)
        with pytest.raises(OutOfBoundsError):
            s.write(b"x", 16)
        with pytest.raises(OutOfBoundsError):
            s.store(1, 16, NATIVE + "u4")
        with pytest.raises(ByteValuedError):
            s.write_obj(-1, 0, "<u4")
        with pytest.raises(OutOfBoundsError):
            s.read_exact_volatile_from(10, io.BytesIO(b"abcdefgh"), 8)
        assert rec.marks == []


# ---------------------------------------------------------------------------------------
# read-only memory
# ---------------------------------------------------------------------------------------


def read_only_slices():
    arr = np.arange(16, dtype=np.uint8)
    arr.flags.writeable = False
    return [bytes(range(16)), arr, memoryview(bytearray(range(16))).toreadonly()]


READ_ONLY_WRITES = {
    "write": lambda s: s.write(b"zz", 2),
    "write_slice": lambda s: s.write_slice(b"zz", 2),
    "write_obj_struct": lambda s: s.write_obj(1, 2, "<u4"),
    "write_obj_numpy": lambda s: s.write_obj((1, 2, 3), 2, HDR),
    "write_obj_partial": lambda s: s.write_obj(1, 14, "<u4"),
    "store": lambda s: s.store(1, 4, NATIVE + "u4"),
    "copy_from": lambda s: s.copy_from(b"zz"),
    "copy_to_volatile_slice": lambda s: VolatileSlice(b"zz").copy_to_volatile_slice(s),
    "read_volatile_from": lambda s: s.read_volatile_from(2, io.BytesIO(b"zz"), 2),
    "read_exact_volatile_from": lambda s: s.read_exact_volatile_from(2, io.BytesIO(b"zz"), 2),
    "ref_store": lambda s: s.get_ref(1, "<u4").store(1),
    "array_store": lambda s: s.get_array_ref(0, 4, "<u2").store(1, 1),
    "array_copy_from": lambda s: s.get_array_ref(0, 4, "<u2").copy_from(np.ones(4, "<u2")),
    "subslice_write": lambda s: s.subslice(4, 4).write(b"z", 0),
}


@pytest.mark.parametrize("buf", read_only_slices(), ids=["bytes", "ndarray", "memoryview"])
class TestReadOnly:
    @pytest.mark.parametrize("op", sorted(READ_ONLY_WRITES))
    def test_write_refused(self, buf, op):
        rec = RecordingBitmap()
        s = VolatileSlice(buf, rec)
        assert not s.is_writable()
        with pytest.raises(ReadOnlyMemoryError) as ei:
            READ_ONLY_WRITES[op](s)
        assert isinstance(ei.value, PermissionError)
        assert isinstance(ei.value, MmapRegionError)
        assert bytes(buf) == bytes(range(16))
        assert rec.marks == []

    def test_stream_not_consumed(self, buf):
        src = io.BytesIO(b"abc")
        with pytest.raises(ReadOnlyMemoryError) as ei:
            VolatileSlice(buf).read_volatile_from(3, src, 3)
        assert ei.value.addr == 3
        assert src.tell() == 0

    def test_reads_and_empty_writes_work(self, buf):
        s = VolatileSlice(buf)
        assert s.read_bytes(4, 4) == bytes(range(4, 8))
        assert s.load(8, NATIVE + "u8") == int.from_bytes(bytes(range(8, 16)), sys.byteorder)
        assert s.write(b"", 0) == 0
        s.copy_from(b"")
        VolatileSlice(b"").copy_to_volatile_slice(s)
        assert s.read_volatile_from(16, io.BytesIO(b"a"), 1) == 0
        assert bytes(buf) == bytes(range(16))


# ---------------------------------------------------------------------------------------
# model-based: random operations vs a bytearray model
# ---------------------------------------------------------------------------------------

OBJ_DTYPES = ["u1", "<u2", ">u4", "<u8", "<f8", HDR]
ATOM_DTYPES = [NATIVE + "u1", NATIVE + "u2", NATIVE + "u4", NATIVE + "u8"]


class Raised:
    """What the model expects to be raised: the exact class and key attributes."""

    def __init__(self, cls, **attrs):
        self.cls, self.attrs = cls, attrs

    def check(self, exc: BaseException) -> None:
        assert type(exc) is self.cls, (exc, self.cls)
        for k, v in self.attrs.items():
            assert getattr(exc, k) == v, (exc, k, v)


class Model:
    """vm-memory's VolatileSlice semantics over a bytearray window ``[base, base+n)``."""

    def __init__(self, mem: bytearray, host: int, readonly: bool) -> None:
        self.mem, self.host, self.readonly = mem, host, readonly
        self.written: set[int] = set()

    def window(self, win, total):
        if win is None:
            return 0, total
        off, cnt = win
        if off + cnt > U64_MAX:
            raise_(Raised(OffsetOverflowError, base=off, offset=cnt))
        if off + cnt > total:
            raise_(Raised(OutOfBoundsError, addr=off + cnt))
        return off, cnt

    def put(self, pos, data):
        if self.readonly and data:
            raise_(Raised(ReadOnlyMemoryError))
        self.mem[pos : pos + len(data)] = data
        self.written |= span(pos, len(data))

    def run(self, op, b, n):
        kind = op[0]
        if kind in ("write", "write_slice"):
            _, data, addr = op
            if not data:
                return 0 if kind == "write" else None
            if addr >= n:
                raise_(Raised(OutOfBoundsError, addr=addr))
            k = min(len(data), n - addr)
            if self.readonly:
                raise_(Raised(ReadOnlyMemoryError, addr=addr))
            self.put(b + addr, data[:k])
            if kind == "write":
                return k
            if k != len(data):
                raise_(Raised(PartialBufferError, expected=len(data), completed=k))
            return None
        if kind in ("read", "read_slice"):
            _, cnt, addr = op
            if not cnt:
                return (0, b"") if kind == "read" else b""
            if addr >= n:
                raise_(Raised(OutOfBoundsError, addr=addr))
            k = min(cnt, n - addr)
            got = bytes(self.mem[b + addr : b + addr + k])
            if kind == "read":
                return k, got
            if k != cnt:
                raise_(Raised(PartialBufferError, expected=cnt, completed=k))
            return got
        if kind in ("write_obj", "read_obj"):
            dtype, value, addr = op[1], op[2], op[3]
            size = np.dtype(dtype).itemsize
            if addr >= n:
                raise_(Raised(OutOfBoundsError, addr=addr))
            k = min(size, n - addr)
            if kind == "write_obj":
                if self.readonly:
                    raise_(Raised(ReadOnlyMemoryError, addr=addr))
                self.put(b + addr, np.array(value, dtype).tobytes()[:k])
                if k != size:
                    raise_(Raised(PartialBufferError, expected=size, completed=k))
                return None
            if k != size:
                raise_(Raised(PartialBufferError, expected=size, completed=k))
            return bytes(self.mem[b + addr : b + addr + size])
        if kind in ("store", "load"):
            dtype, value, addr = op[1], op[2], op[3]
            size = np.dtype(dtype).itemsize
            if addr + size > U64_MAX:
                raise_(Raised(OffsetOverflowError, base=addr, offset=size))
            if addr + size > n:
                raise_(Raised(OutOfBoundsError, addr=addr + size))
            if (self.host + b + addr) % size:
                raise_(Raised(MisalignedError, addr=self.host + b + addr, alignment=size))
            if kind == "load":
                return bytes(self.mem[b + addr : b + addr + size])
            if self.readonly:
                raise_(Raised(ReadOnlyMemoryError, addr=addr))
            self.put(b + addr, np.array(value, dtype).tobytes())
            return None
        if kind == "read_from":
            _, data, addr, cnt = op
            if addr > n:
                raise_(Raised(OutOfBoundsError, addr=addr))
            k = min(cnt, n - addr)
            if k and self.readonly:
                raise_(Raised(ReadOnlyMemoryError, addr=addr))
            got = data[:k]
            self.put(b + addr, got)
            return len(got), len(got)
        if kind == "read_exact":
            _, data, addr, cnt = op
            if addr + cnt > U64_MAX:
                raise_(Raised(OffsetOverflowError, base=addr, offset=cnt))
            if addr + cnt > n:
                raise_(Raised(OutOfBoundsError, addr=addr + cnt))
            if cnt and self.readonly:
                raise_(Raised(ReadOnlyMemoryError, addr=addr))
            got = data[:cnt]
            self.put(b + addr, got)
            if len(got) < cnt:
                raise_(Raised(StreamError, completed=len(got)))
            return None, cnt
        if kind == "write_to":
            _, addr, cnt = op
            if addr > n:
                raise_(Raised(OutOfBoundsError, addr=addr))
            k = min(cnt, n - addr)
            return k, bytes(self.mem[b + addr : b + addr + k])
        if kind == "write_all":
            _, addr, cnt = op
            if addr + cnt > U64_MAX:
                raise_(Raised(OffsetOverflowError, base=addr, offset=cnt))
            if addr + cnt > n:
                raise_(Raised(OutOfBoundsError, addr=addr + cnt))
            return None, bytes(self.mem[b + addr : b + addr + cnt])
        raise AssertionError(kind)


class ModelError(Exception):
    def __init__(self, expected: Raised) -> None:
        super().__init__(expected.cls.__name__)
        self.expected = expected


def raise_(expected: Raised):
    raise ModelError(expected)


def run_real(s: VolatileSlice, op):
    kind = op[0]
    if kind == "write":
        return s.write(op[1], op[2])
    if kind == "write_slice":
        return s.write_slice(op[1], op[2])
    if kind == "read":
        out = bytearray(op[1])
        k = s.read(out, op[2])
        return k, bytes(out[:k])
    if kind == "read_slice":
        out = bytearray(op[1])
        s.read_slice(out, op[2])
        return bytes(out)
    if kind == "write_obj":
        return s.write_obj(op[2], op[3], op[1])
    if kind == "read_obj":
        v = s.read_obj(op[3], op[1])
        return np.array(v, op[1]).tobytes()
    if kind == "store":
        return s.store(op[2], op[3], op[1])
    if kind == "load":
        return np.array(s.load(op[3], op[1]), op[1]).tobytes()
    if kind == "read_from":
        src = io.BytesIO(op[1])
        return s.read_volatile_from(op[2], src, op[3]), src.tell()
    if kind == "read_exact":
        src = io.BytesIO(op[1])
        return s.read_exact_volatile_from(op[2], src, op[3]), src.tell()
    if kind == "write_to":
        out = io.BytesIO()
        return s.write_volatile_to(op[1], out, op[2]), out.getvalue()
    if kind == "write_all":
        out = io.BytesIO()
        return s.write_all_volatile_to(op[1], out, op[2]), out.getvalue()
    raise AssertionError(kind)


def obj_value(dtype):
    dt = np.dtype(dtype)
    if dt == HDR:
        return st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1), st.integers(0, 255))
    if dt.kind == "f":
        return st.floats(allow_nan=False, width=64)
    return st.integers(0, 2 ** (8 * dt.itemsize) - 1)


@st.composite
def operation(draw, total: int, shift: int):
    near = [0, 1, total - 1, total, total + 1, U64_MAX]
    pos = st.one_of(st.integers(0, total + 4), st.sampled_from([p for p in near if p >= 0]))
    win = draw(st.one_of(st.none(), st.tuples(pos, pos)))
    # bias the address to the boundaries of the window if it is valid
    n = total if win is None else max(0, min(total - win[0], win[1]))
    near_n = [0, 1, 2, 3, 4, 7, 8, n - 8, n - 4, n - 2, n - 1, n, n + 1, U64_MAX, U64_MAX - 1]
    addr = draw(st.one_of(st.integers(0, n + 4), st.sampled_from([p for p in near_n if p >= 0])))
    cnt = draw(st.one_of(st.integers(0, n + 4), st.sampled_from([0, 1, U64_MAX])))
    data = draw(st.binary(max_size=12))
    kind = draw(
        st.sampled_from(
            [
                "write",
                "write_slice",
                "read",
                "read_slice",
                "write_obj",
                "read_obj",
                "store",
                "load",
                "read_from",
                "read_exact",
                "write_to",
                "write_all",
            ]
        )
    )
    if kind in ("write", "write_slice"):
        op = (kind, data, addr)
    elif kind in ("read", "read_slice"):
        op = (kind, min(cnt, 16), addr)
    elif kind in ("write_obj", "read_obj"):
        dtype = draw(st.sampled_from(OBJ_DTYPES))
        op = (kind, dtype, draw(obj_value(dtype)), addr)
    elif kind in ("store", "load"):
        dtype = draw(st.sampled_from(ATOM_DTYPES))
        size = np.dtype(dtype).itemsize
        if draw(st.booleans()):  # a naturally aligned host address
            first = -(shift + (0 if win is None else win[0])) % size
            addr = first + size * draw(st.integers(0, n // size + 1))
        op = (kind, dtype, draw(obj_value(dtype)), addr)
    elif kind in ("read_from", "read_exact"):
        op = (kind, data, addr, cnt)
    else:
        op = (kind, addr, cnt)
    return win, op


@given(data=st.data())
def test_model_random_operations(data):
    total = data.draw(st.integers(0, 40), label="len")
    readonly = data.draw(st.booleans(), label="readonly")
    shift = data.draw(st.integers(0, 7), label="shift")
    backing = aligned_bytes(total + 8)[shift : shift + total]
    backing[:] = np.frombuffer(bytes(pattern(total)), np.uint8)
    mem = bytearray(backing.tobytes())
    if readonly:
        backing.flags.writeable = False
    rec = RecordingBitmap()
    s = VolatileSlice(backing, rec)
    model = Model(mem, host(s), readonly)
    for _ in range(data.draw(st.integers(1, 10), label="steps")):
        win, op = data.draw(operation(total, shift))
        rec.clear()
        model.written = set()
        try:
            b, n = model.window(win, total)
            expected = model.run(op, b, n)
        except ModelError as exc:
            expected_exc = exc.expected
        else:
            expected_exc = None
        raised = got = None
        try:
            target = s if win is None else s.subslice(*win)
            got = run_real(target, op)
        except GuestMemoryError as exc:
            raised = exc
        event(f"{op[0]}: {type(raised).__name__ if raised else 'ok'}")
        if raised is not None:
            assert expected_exc is not None, (op, raised)
            expected_exc.check(raised)
        else:
            assert expected_exc is None, (op, got, expected_exc.cls)
            if op[0] in ("write_obj", "store") or op[0] == "write_slice":
                assert got is None
            elif op[0] in ("read_obj", "load"):
                assert got == expected
            else:
                assert got == expected, op
        assert backing.tobytes() == bytes(mem), op
        # exactly the bytes written are marked dirty (at offsets of the parent slice)
        assert rec.dirty_bytes() == model.written, op
        if op[0] in ("read", "read_slice", "read_obj", "load", "write_to", "write_all"):
            assert rec.marks == [], op


# -- review fixes: zero-size elements, typed errors on bad buffers, count messages -----------


class TestZeroSizeElements:
    def test_copy_to_and_from_copy_no_bytes(self):
        buf = bytearray(b"abc")
        s = VolatileSlice(buf)
        # vm-memory divides by size_of::<T>() here; zero-size elements all fit
        assert s.copy_to(np.zeros(3, "V0")) == 3
        assert s.copy_to(np.zeros((2, 2), [])) == 4
        s.copy_from(np.zeros(5, "V0"))
        assert buf == b"abc"

    def test_get_array_ref(self):
        rec = RecordingBitmap()
        s = VolatileSlice(bytearray(16), rec)
        a = s.get_array_ref(0, 5, "V0")
        assert (a.len(), a.element_size(), len(a.to_slice())) == (5, 0, 0)
        assert a.load(4) == np.void(b"")
        assert a.to_numpy().shape == (5,)
        assert a.copy_to(np.zeros(8, "V0")) == 5
        assert a.copy_to(np.zeros(2, "V0")) == 2
        a.copy_from(np.zeros(8, "V0"))
        assert rec.marks == []
        with pytest.raises(OutOfBoundsError):
            a.ref_at(5)
        assert s.get_array_ref(16, 3, "V0").len() == 3
        with pytest.raises(OutOfBoundsError):
            s.get_array_ref(17, 3, "V0")

    def test_array_ref_count(self):
        s = VolatileSlice(bytearray(8))
        assert VolatileArrayRef(s.subslice(0, 0), "V0").len() == 0
        assert VolatileArrayRef(s, "<u2", 4).len() == 4
        with pytest.raises(ValueError, match="not 3 items"):
            VolatileArrayRef(s, "<u2", 3)

    @pytest.mark.parametrize("offset", [0, 4, 5, 2**64 - 1])
    def test_read_obj_is_an_empty_value(self, offset):
        s = VolatileSlice(bytearray(4))
        assert s.read_obj(offset, "V0") == np.void(b"")
        assert s.read_obj(offset, "(0,)<u4").shape == (0,)
        s.write_obj(b"", offset, "V0")


class TestBadBufferErrors:
    def test_strided_memoryview(self):
        view = memoryview(bytearray(range(20)))[::2]
        with pytest.raises(ByteValuedError, match="contiguous") as ei:
            VolatileSlice(view)
        assert isinstance(ei.value, TypeError)
        assert pickle.loads(pickle.dumps(ei.value)).args == ei.value.args

    def test_array_ref_item_size(self):
        a = VolatileSlice(bytearray(16)).get_array_ref(0, 4, "<u4")
        for call in (a.copy_to, a.copy_from):
            with pytest.raises(ByteValuedError) as ei:
                call(np.zeros(4, "<u2"))
            assert isinstance(ei.value, TypeError)
            assert pickle.loads(pickle.dumps(ei.value)).args == ei.value.args


class TestCountMessages:
    @pytest.mark.parametrize(
        ("call", "text"),
        [
            (lambda s: s.subslice(0, -1), "count -1 is not"),
            (lambda s: s.subslice(-1, 0), "offset -0x1 is not"),
            (lambda s: s.read_bytes(0, -1), "count -1 is not"),
            (lambda s: s.read_volatile_from(0, io.BytesIO(), -2), "count -2 is not"),
            (lambda s: s.get_array_ref(0, -1, "u1"), "n -1 is not"),
            (lambda s: s.get_array_ref(0, 2, "u1").ref_at(-3), "index -3 is not"),
            (lambda s: s.read_obj(-1, "<u2"), "address -0x1 is not"),
        ],
    )
    def test_the_argument_is_named(self, call, text):
        from npguest.errors import GuestAddressOverflowError

        with pytest.raises(GuestAddressOverflowError) as ei:
            call(VolatileSlice(bytearray(4)))
        assert text in str(ei.value)
        assert str(pickle.loads(pickle.dumps(ei.value))) == str(ei.value)
