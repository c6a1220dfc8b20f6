"""One Bytes contract, run against every memory object npguest has.

Each factory builds a memory object whose addresses ``[base, base + SIZE)`` are backed
(for guest memory, by several adjacent regions of uneven sizes, so accesses cross region
boundaries), plus the error class its Bytes methods raise for an unbacked start. A
``bytearray`` is the model of the contents.
"""

import io
import os
import pickle
import socket

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npguest
from npguest import GuestMemoryMmap, GuestRegionMmap, MmapRegion, VolatileSlice
from npguest.errors import (
    ByteValuedError,
    InvalidBackendAddressError,
    InvalidGuestAddressError,
    OutOfBoundsError,
    PartialBufferError,
)

SIZE = 0x3000


def _slice():
    return VolatileSlice(bytearray(SIZE)), 0, OutOfBoundsError


def _region_slice():
    return MmapRegion(SIZE).as_volatile_slice(), 0, OutOfBoundsError


def _region():
    return GuestRegionMmap.from_range(0x10000, SIZE), 0, InvalidBackendAddressError


def _memory_one():
    return GuestMemoryMmap.from_ranges([(0x7000, SIZE)]), 0x7000, InvalidGuestAddressError


def _memory_adjacent():
    # three adjacent regions of uneven, non-page sizes: 0x1001 + 0x7ff + rest
    base = 0x1_0000_0003
    sizes = [0x1001, 0x7FF, SIZE - 0x1001 - 0x7FF]
    ranges, at = [], base
    for n in sizes:
        ranges.append((at, n))
        at += n
    return GuestMemoryMmap.from_ranges(ranges), base, InvalidGuestAddressError


def _memory_high():
    # the highest memory a region can have: it ends at 2**64 - 1 (exclusive)
    base = 2**64 - 1 - SIZE
    return GuestMemoryMmap.from_ranges([(base, SIZE)]), base, InvalidGuestAddressError


FACTORIES = [_slice, _region_slice, _region, _memory_one, _memory_adjacent, _memory_high]


@pytest.fixture(params=FACTORIES, ids=lambda f: f.__name__.strip("_"))
def target(request):
    mem, base, start_error = request.param()
    return mem, base, start_error


class TestBytesContract:
    def test_write_then_read_round_trip(self, target):
        mem, base, _ = target
        data = bytes(np.random.default_rng(1).integers(0, 256, SIZE, dtype=np.uint8))
        assert mem.write(data, base) == SIZE
        out = bytearray(SIZE)
        assert mem.read(out, base) == SIZE
        assert bytes(out) == data

    def test_write_at_the_end_is_partial(self, target):
        mem, base, _ = target
        assert mem.write(b"abcdef", base + SIZE - 4) == 4
        assert mem.read_bytes(base + SIZE - 4, 4) == b"abcd"
        buf = bytearray(b"\xff" * 6)
        assert mem.read(buf, base + SIZE - 4) == 4
        assert buf == bytearray(b"abcd\xff\xff")

    def test_slices_are_all_or_error(self, target):
        mem, base, _ = target
        with pytest.raises(PartialBufferError) as exc:
            mem.write_slice(b"12345678", base + SIZE - 3)
        assert (exc.value.expected, exc.value.completed) == (8, 3)
        assert mem.read_bytes(base + SIZE - 3, 3) == b"123"  # the leading bytes were written
        with pytest.raises(PartialBufferError) as exc:
            mem.read_slice(bytearray(8), base + SIZE - 3)
        assert (exc.value.expected, exc.value.completed) == (8, 3)
        assert pickle.loads(pickle.dumps(exc.value)).completed == 3

    def test_unbacked_start_raises_the_objects_error(self, target):
        mem, base, start_error = target
        if base + SIZE > npguest.U64_MAX:
            pytest.skip("no address after this memory")
        for call in (
            lambda: mem.write(b"x", base + SIZE),
            lambda: mem.read(bytearray(1), base + SIZE),
            lambda: mem.read_obj(base + SIZE, "<u2"),
            lambda: mem.write_obj(1, base + SIZE, "<u2"),
        ):
            with pytest.raises(start_error) as exc:
                call()
            assert isinstance(exc.value, IndexError)
            assert exc.value.addr == (base + SIZE if start_error is not OutOfBoundsError else SIZE)

    def test_zero_length_is_a_no_op_anywhere(self, target):
        mem, base, _ = target
        far = base + SIZE + 0x100 if base + SIZE + 0x100 <= npguest.U64_MAX else base - 1
        assert mem.write(b"", far) == 0
        assert mem.read(bytearray(), far) == 0
        mem.write_slice(b"", far)
        mem.read_slice(bytearray(), far)

    @pytest.mark.parametrize(
        ("dtype", "value"),
        [
            ("<u2", 0xBEEF),
            (">u4", 0xDEADBEEF),
            ("<i8", -(2**62)),
            ("<f8", 1.5),
            (np.dtype([("a", ">u2"), ("b", "<u4"), ("c", "S3")]), (0x1234, 0x89ABCDEF, b"xyz")),
        ],
    )
    def test_objects_round_trip_at_every_alignment(self, target, dtype, value):
        mem, base, _ = target
        dt = np.dtype(dtype)
        for off in (0, 1, 0x1001 - 3, 0x17FE, SIZE - dt.itemsize):
            mem.write_obj(value, base + off, dt)
            got = mem.read_obj(base + off, dt)
            assert got == (np.array(value, dtype=dt)[()] if dt.fields else value)
            assert mem.read_bytes(base + off, dt.itemsize) == np.array(value, dtype=dt).tobytes()

    def test_object_straddling_the_end_is_partial(self, target):
        mem, base, _ = target
        with pytest.raises(PartialBufferError):
            mem.read_obj(base + SIZE - 4, npguest.Le64)
        with pytest.raises(PartialBufferError):
            mem.write_obj(7, base + SIZE - 4, npguest.Le64)

    def test_bad_dtypes_and_values(self, target):
        mem, base, _ = target
        with pytest.raises(ByteValuedError):
            mem.read_obj(base, object)
        with pytest.raises(ByteValuedError):
            mem.write_obj(2**20, base, "<u2")
        with pytest.raises(ByteValuedError):
            mem.write_obj(5, base)  # a Python int has no dtype of its own

    def test_store_and_load(self, target):
        mem, base, _ = target
        addr = base + 0x40  # alignment is of the host address: the region offset here
        for dt, value in (("<u1", 0xAB), ("<u2", 0xABCD), ("<u4", 0xABCDEF01), ("<u8", 2**63 + 5)):
            mem.store(value, addr, dt)
            assert mem.load(addr, dt) == value
        with pytest.raises(ByteValuedError):
            mem.load(addr, ">u4")

    def test_streams_round_trip(self, target, tmp_path):
        mem, base, _ = target
        data = os.urandom(0x2100)
        assert mem.read_volatile_from(base + 0x10, io.BytesIO(data), len(data)) == len(data)
        sink = io.BytesIO()
        assert mem.write_volatile_to(base + 0x10, sink, len(data)) == len(data)
        assert sink.getvalue() == data
        path = tmp_path / "dump"
        with path.open("wb") as f:
            mem.write_all_volatile_to(base, f, SIZE)
        assert path.read_bytes() == mem.read_bytes(base, SIZE)
        a, b = socket.socketpair()
        with a, b:
            b.sendall(data[:0x1800])
            mem.read_exact_volatile_from(base + 0x700, a, 0x1800)
        assert mem.read_bytes(base + 0x700, 0x1800) == data[:0x1800]

    @settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        ops=st.lists(
            st.tuples(st.integers(0, SIZE + 8), st.binary(min_size=0, max_size=0x900)),
            max_size=12,
        )
    )
    def test_random_writes_match_a_bytearray_model(self, target, ops):
        mem, base, start_error = target
        model = bytearray(mem.read_bytes(base, SIZE))
        for off, data in ops:
            addr = base + off
            if addr > npguest.U64_MAX:
                continue
            if data and off >= SIZE:
                with pytest.raises(start_error):
                    mem.write(data, addr)
                continue
            n = mem.write(data, addr)
            expect = max(0, min(len(data), SIZE - off))
            assert n == expect
            model[off : off + n] = data[:n]
        assert mem.read_bytes(base, SIZE) == bytes(model)
