"""The property test: GuestMemoryMmap against a plain-Python model of vm-memory (§3.1-§3.3).

Hypothesis draws a layout (1-5 regions of 1..0x3000 bytes, adjacent or with gaps, placed
low, around 2**53 and 2**63, or ending just below 2**64) and a sequence of operations
whose addresses are biased to region boundaries.  Each operation runs on the real memory
and on :class:`ModelMemory` (a dict of region start -> bytearray written from the
reference text, not from npguest's code); results, exception classes and attributes,
memory contents, dirty bytes and stream positions must all agree.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from _support import ByteBitmap
from hypothesis import given
from hypothesis import strategies as st

from npguest import GuestAddress, GuestMemoryMmap
from npguest.errors import (
    ByteValuedError,
    GuestMemoryError,
    InvalidBackendAddressError,
    InvalidGuestAddressError,
    PartialBufferError,
)

U64_MAX = 2**64 - 1

STRUCT = np.dtype([("a", "<u2"), ("b", ">i4"), ("c", "u1", (3,))])
EMPTY = np.dtype([])
OBJ_DTYPES = [np.dtype("<u2"), np.dtype(">u4"), np.dtype("<u8"), STRUCT, np.dtype("u1"), EMPTY]
ATOMIC_DTYPES = [np.dtype(t) for t in (np.uint8, np.uint16, np.uint32, np.uint64, np.int32)]


class Trickle(io.BytesIO):
    """A source that gives at most ``chunk`` bytes per read (a pipe, a slow socket)."""

    def __init__(self, data: bytes, chunk: int) -> None:
        super().__init__(data)
        self.chunk = chunk

    def readinto(self, buf):
        view = memoryview(buf)
        return super().readinto(view[: self.chunk])

    def read(self, n=-1):
        return super().read(self.chunk if n < 0 else min(n, self.chunk))


# -- the model ---------------------------------------------------------------------------


class ModelMemory:
    """vm-memory's guest memory semantics over bytearrays, from the reference text."""

    def __init__(self, layout: list[tuple[int, int]]) -> None:
        self.mem = {start: bytearray(size) for start, size in layout}
        self.dirty = {start: bytearray(size) for start, size in layout}
        self.starts = sorted(self.mem)

    # helpers
    def _find(self, a: int) -> int | None:
        for s in self.starts:
            if s <= a < s + len(self.mem[s]):
                return s
        return None

    def _run(self, a: int, n: int) -> list[tuple[int, int, int]]:
        """get_slices + stop_on_error: (start, offset, length) pieces, or the first error."""
        if n == 0:
            return []
        s = self._find(a)
        if s is None:
            raise InvalidGuestAddressError(a)
        pieces = []
        while n:
            off = a - s
            k = min(len(self.mem[s]) - off, n)
            pieces.append((s, off, k))
            n -= k
            a += k
            s = self._find(a) if a <= U64_MAX else None
            if s is None or s != a:  # the next region must start exactly here
                break
        return pieces

    def _put(self, pieces, data: bytes) -> None:
        done = 0
        for s, off, k in pieces:
            take = data[done : done + k]
            self.mem[s][off : off + len(take)] = take
            self.dirty[s][off : off + len(take)] = b"\x01" * len(take)
            done += len(take)

    def _get(self, pieces) -> bytes:
        return b"".join(bytes(self.mem[s][off : off + k]) for s, off, k in pieces)

    # Bytes
    def write(self, buf, addr):
        if not len(buf):
            return 0
        pieces = self._run(int(addr), len(buf))
        self._put(pieces, bytes(buf))
        return sum(k for _, _, k in pieces)

    def read(self, buf, addr):
        if not len(buf):
            return 0
        data = self._get(self._run(int(addr), len(buf)))
        buf[: len(data)] = data
        return len(data)

    def write_slice(self, buf, addr):
        n = self.write(buf, addr)
        if n != len(buf):
            raise PartialBufferError(len(buf), n)

    def read_slice(self, buf, addr):
        n = self.read(buf, addr)
        if n != len(buf):
            raise PartialBufferError(len(buf), n)

    def read_bytes(self, addr, count):
        buf = bytearray(count)
        self.read_slice(buf, addr)
        return bytes(buf)

    def write_obj(self, value, addr, dtype):
        try:
            data = np.array(value, dtype=dtype).tobytes()
        except (OverflowError, ValueError, TypeError) as exc:
            raise ByteValuedError(value, str(exc)) from None
        self.write_slice(data, addr)

    def read_obj(self, addr, dtype):
        buf = bytearray(dtype.itemsize)
        self.read_slice(buf, addr)
        value = np.frombuffer(bytes(buf), dtype=dtype, count=1)[0]
        return value.item() if dtype.kind in "iu" else value  # plain numbers: Python ints

    def _atomic(self, addr, size):
        addr = int(addr)
        s = self._find(addr)
        if s is None:
            raise InvalidGuestAddressError(addr)
        off = addr - s
        if off + size > len(self.mem[s]) or off % size:  # straddles the region, or misaligned
            raise InvalidBackendAddressError(off)
        return s, off

    def store(self, value, addr, dtype):
        s, off = self._atomic(addr, dtype.itemsize)
        self._put([(s, off, dtype.itemsize)], np.array(value, dtype=dtype).tobytes())

    def load(self, addr, dtype):
        s, off = self._atomic(addr, dtype.itemsize)
        return int(np.frombuffer(self._get([(s, off, dtype.itemsize)]), dtype=dtype)[0])

    # validation helpers (§3.3)
    def check_range(self, base, length):
        if length == 0:
            return True
        return sum(k for _, _, k in self._run_or_empty(int(base), length)) == length

    def _run_or_empty(self, a, n):
        try:
            return self._run(a, n)
        except InvalidGuestAddressError:
            return []

    def checked_offset(self, base, offset):
        end = int(base) + offset
        if end > U64_MAX or self._find(end) is None:
            return None
        return GuestAddress(end)

    # batches: all-or-nothing, per element = read_obj/write_obj of a wholly backed object
    def _batch_check(self, addrs, size):
        for i, a in enumerate(addrs):
            backed = sum(k for _, _, k in self._run_or_empty(a, size))
            if backed < size:
                exc = InvalidGuestAddressError(min(a + backed, U64_MAX))
                exc.element = i
                raise exc

    def read_objs(self, addrs, dtype):
        if not dtype.itemsize:
            return np.zeros(len(addrs), dtype=dtype)
        self._batch_check(addrs, dtype.itemsize)
        out = b"".join(self._get(self._run(a, dtype.itemsize)) for a in addrs)
        return np.frombuffer(out, dtype=dtype, count=len(addrs)).copy()

    def write_objs(self, values, addrs, dtype):
        if not dtype.itemsize:
            return
        self._batch_check(addrs, dtype.itemsize)
        raw = np.ascontiguousarray(values, dtype=dtype).tobytes()
        for i, a in enumerate(addrs):
            size = dtype.itemsize
            self._put(self._run(a, size), raw[i * size : (i + 1) * size])

    # streams (npguest's documented variants of §3.1)
    def read_volatile_from(self, addr, src, count):
        """One read per contiguous piece; the first short read ends the operation."""
        if not count:
            return 0
        done = 0
        for s, off, k in self._run(int(addr), count):
            buf = bytearray(k)
            got = src.readinto(buf)
            self._put([(s, off, got)], bytes(buf[:got]))
            done += got
            if got < k:
                break
        return done

    def read_exact_volatile_from(self, addr, src, count):
        """Short reads are retried; the end of the stream or a hole is a partial buffer."""
        if not count:
            return
        pieces = self._run(int(addr), count)
        want = sum(k for _, _, k in pieces)
        data = b""
        while len(data) < want and (chunk := src.read(want - len(data))):
            data += chunk
        self._put(pieces, data)
        if len(data) != count:
            raise PartialBufferError(count, len(data))

    def write_volatile_to(self, addr, dst, count):
        if not count:
            return 0
        data = self._get(self._run(int(addr), count))
        dst.write(data)
        return len(data)

    def write_all_volatile_to(self, addr, dst, count):
        n = self.write_volatile_to(addr, dst, count)
        if n != count:
            raise PartialBufferError(count, n)


# -- strategies --------------------------------------------------------------------------


@st.composite
def layouts(draw):
    n = draw(st.integers(1, 5))
    sizes = draw(st.lists(st.integers(1, 0x3000), min_size=n, max_size=n))
    gap = st.one_of(st.just(0), st.integers(1, 0x20), st.integers(0x21, 0x2000))
    gaps = draw(st.lists(gap, min_size=n - 1, max_size=n - 1))
    span = sum(sizes) + sum(gaps)
    place = draw(st.sampled_from(["low", "2**53", "2**63", "top"]))
    if place == "low":
        base = draw(st.integers(0, 0x100))
    elif place == "2**53":
        base = 2**53 - draw(st.integers(0, span))
    elif place == "2**63":
        base = 2**63 - draw(st.integers(0, span))
    else:  # the last region ends at most at 2**64 - 1 (exclusive), the highest possible end
        base = U64_MAX - span - draw(st.sampled_from([0, 0, 1, 7, 0x1000]))
    layout, cur = [], base
    for i, size in enumerate(sizes):
        layout.append((cur, size))
        cur += size + (gaps[i] if i < len(gaps) else 0)
    return layout


def address_strategy(layout):
    points = {0, 1, U64_MAX, U64_MAX - 1, U64_MAX - 7}
    for start, size in layout:
        end = start + size
        points |= {start - 1, start, start + 1, start + size // 2, end - 2, end - 1, end, end + 1}
    points = sorted(p for p in points if 0 <= p <= U64_MAX)
    near = st.builds(
        lambda p, d: min(max(p + d, 0), U64_MAX), st.sampled_from(points), st.integers(-9, 9)
    )
    inside = st.sampled_from(layout).flatmap(
        lambda r: st.one_of(
            st.integers(r[0], r[0] + r[1] - 1),
            st.integers(r[0] + r[1] - 16, r[0] + r[1] - 1).filter(lambda a: a >= r[0]),
        )
    )
    return st.one_of(inside, st.sampled_from(points), near, inside, st.integers(0, U64_MAX))


def maybe_guest_address(addrs):
    return st.one_of(addrs, addrs.map(GuestAddress))


def obj_values(dtype, valid=True):
    if dtype == STRUCT:
        ints = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
        return st.tuples(st.integers(0, 0xFFFF), st.integers(-(2**31), 2**31 - 1), ints)
    if dtype == EMPTY:
        return st.just(())
    info = np.iinfo(dtype)
    good = st.integers(int(info.min), int(info.max))
    if valid:
        return good
    return st.one_of(good, st.sampled_from([int(info.max) + 1, int(info.min) - 1]))


def span_strategy(layout):
    """(addr, length) pairs; lengths often reach exactly (+-1) a region start or end."""
    bounds = sorted({s for s, _ in layout} | {s + n for s, n in layout})
    plain = st.one_of(st.integers(0, 0x20), st.integers(0, 0x4000))

    def lengths_for(a):
        reach = [b - a for b in bounds if a < b <= a + 0x10000]
        if not reach:
            return plain
        to_bound = st.builds(lambda r, d: max(r + d, 0), st.sampled_from(reach), st.integers(-1, 1))
        return st.one_of(plain, to_bound, to_bound)

    spans = address_strategy(layout).flatmap(lambda a: st.tuples(st.just(a), lengths_for(a)))
    # sometimes pass the address as a GuestAddress
    return st.tuples(spans, st.booleans()).map(
        lambda t: (GuestAddress(t[0][0]) if t[1] else t[0][0], t[0][1])
    )


_PATTERN = bytes(range(256)) * 0x101


def payload(n: int, seed: int) -> bytes:
    return _PATTERN[seed : seed + n]


def ops(layout):
    addr = maybe_guest_address(address_strategy(layout))
    raw_addr = address_strategy(layout)
    spans = span_strategy(layout)
    seeds = st.integers(0, 255)
    obj = st.sampled_from(OBJ_DTYPES).flatmap(
        lambda dt: st.tuples(st.just("write_obj"), obj_values(dt, valid=False), addr, st.just(dt))
    )
    atomic = st.sampled_from(ATOMIC_DTYPES).flatmap(
        lambda dt: st.tuples(st.just("store"), obj_values(dt), addr, st.just(dt))
    )

    def objs_op(dt):
        addrs = st.lists(raw_addr, max_size=4)
        return addrs.flatmap(
            lambda a: st.tuples(
                st.just("write_objs"),
                st.lists(obj_values(dt), min_size=len(a), max_size=len(a)),
                st.just(a),
                st.just(dt),
            )
        )

    def stream_in(name):
        # the source holds exactly, one less than, or an unrelated number of bytes, and
        # may give them a few at a time
        def build(span, extra, seed, chunk):
            (a, n), (kind, m) = span, extra
            size = {"same": n, "short": max(n - 1, 0), "other": m}[kind]
            return (name, a, payload(size, seed), n, chunk)

        extra = st.tuples(st.sampled_from(["same", "short", "other"]), st.integers(0, 0x400))
        chunks = st.sampled_from([None, None, 1, 3, 0x100])
        return st.builds(build, spans, extra, seeds, chunks)

    return st.one_of(
        st.builds(lambda sp, k: ("write", payload(sp[1], k), sp[0]), spans, seeds),
        spans.map(lambda sp: ("read", sp[1], sp[0])),
        st.builds(lambda sp, k: ("write_slice", payload(sp[1], k), sp[0]), spans, seeds),
        spans.map(lambda sp: ("read_slice", sp[1], sp[0])),
        spans.map(lambda sp: ("read_bytes", sp[0], sp[1])),
        obj,
        st.tuples(st.just("read_obj"), addr, st.sampled_from(OBJ_DTYPES)),
        atomic,
        st.tuples(st.just("load"), addr, st.sampled_from(ATOMIC_DTYPES)),
        spans.map(lambda sp: ("check_range", *sp)),
        st.tuples(st.just("check_range"), addr, st.just(U64_MAX)),
        spans.map(lambda sp: ("checked_offset", *sp)),
        st.tuples(st.just("checked_offset"), addr, st.integers(0, U64_MAX)),
        st.sampled_from(OBJ_DTYPES).flatmap(objs_op),
        st.tuples(
            st.just("read_objs"), st.lists(raw_addr, max_size=4), st.sampled_from(OBJ_DTYPES)
        ),
        stream_in("read_volatile_from"),
        stream_in("read_exact_volatile_from"),
        spans.map(lambda sp: ("write_volatile_to", *sp)),
        spans.map(lambda sp: ("write_all_volatile_to", *sp)),
    )


# -- running an operation on both ----------------------------------------------------------


def _normalise(value):
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, np.void):
        return ("void", value.tobytes())
    if isinstance(value, np.generic):
        return ("scalar", value.item())
    return value


def _error(exc: GuestMemoryError):
    if isinstance(exc, PartialBufferError):
        return (type(exc), exc.expected, exc.completed)
    if isinstance(exc, InvalidGuestAddressError):
        return (type(exc), exc.addr)
    return (type(exc),)


def run(target, op):
    """Run ``op`` on ``target``: (outcome, side effects visible to the caller)."""
    name, *args = op
    side = None
    try:
        if name in ("read", "read_slice"):
            buf = bytearray(b"\xee" * args[0])
            side = buf
            result = getattr(target, name)(buf, args[1])
        elif name == "write_obj":
            value, addr, dt = args
            result = target.write_obj(value, addr, dt)
        elif name == "write_objs":
            values, addrs, dt = args
            arr = np.array(values, dtype=dt) if values else np.empty(0, dtype=dt)
            if isinstance(target, GuestMemoryMmap):
                addrs = np.array(addrs, dtype=np.uint64)
            result = target.write_objs(arr, addrs, dt)
        elif name == "read_objs":
            addrs, dt = args
            if isinstance(target, GuestMemoryMmap):
                addrs = np.array(addrs, dtype=np.uint64)
            result = target.read_objs(addrs, dt)
        elif name in ("read_volatile_from", "read_exact_volatile_from"):
            addr, data, count, chunk = args
            src = io.BytesIO(data) if chunk is None else Trickle(data, chunk)
            side = src
            result = getattr(target, name)(addr, src, count)
        elif name in ("write_volatile_to", "write_all_volatile_to"):
            addr, count = args
            dst = io.BytesIO()
            side = dst
            result = getattr(target, name)(addr, dst, count)
        else:
            result = getattr(target, name)(*args)
        outcome = ("ok", _normalise(result))
    except GuestMemoryError as exc:
        outcome = ("err", *_error(exc))
        if name in ("read_objs", "write_objs") and isinstance(exc, InvalidGuestAddressError):
            element = getattr(exc, "element", None)
            outcome += (_element_from_note(exc) if element is None else element,)
    if isinstance(side, io.BytesIO):
        side = (side.tell(), side.getvalue())
    elif side is not None:
        side = bytes(side)
    return outcome, side


def _element_from_note(exc):
    notes = getattr(exc, "__notes__", [])
    assert len(notes) == 1, notes
    assert notes[0].startswith("element "), notes
    return int(notes[0].split(":")[0].split()[1])


def _assert_same_state(mem: GuestMemoryMmap, model: ModelMemory):
    regions = list(mem.iter())
    assert [int(r.start_addr()) for r in regions] == model.starts
    for r in regions:
        start = int(r.start_addr())
        got = r.as_array().tobytes()
        if got != bytes(model.mem[start]):
            diff = next(
                i for i, (a, b) in enumerate(zip(got, model.mem[start], strict=True)) if a != b
            )
            raise AssertionError(f"memory differs at {start + diff:#x}")
        bits = r.get_mmap()._bitmap.bits
        want = np.frombuffer(bytes(model.dirty[start]), dtype=bool)
        if not np.array_equal(bits, want):
            diff = int(np.flatnonzero(bits != want)[0])
            raise AssertionError(f"dirty bytes differ at {start + diff:#x}")


@given(data=st.data())
def test_guest_memory_matches_model(data):
    layout = data.draw(layouts(), label="layout")
    mem = GuestMemoryMmap.from_ranges(layout, bitmap=ByteBitmap)
    model = ModelMemory(layout)
    assert mem.last_addr() == GuestAddress(layout[-1][0] + layout[-1][1] - 1)
    strategy = ops(layout)
    for i in range(data.draw(st.integers(1, 30), label="number of ops")):
        op = data.draw(strategy, label=f"op {i}")
        got = run(mem, op)
        want = run(model, op)
        assert got == want, (op, got, want)
        _assert_same_state(mem, model)


def _points(layout):
    points = {0, U64_MAX}
    for start, size in layout:
        points |= {start - 1, start, start + 1, start + size - 1, start + size, start + size + 1}
    return sorted(p for p in points if 0 <= p <= U64_MAX)


@given(layout=layouts(), data=st.data())
def test_lookup_matches_model(layout, data):
    """find_region / to_region_addr / address_in_range / locate agree with a linear scan."""
    mem = GuestMemoryMmap.from_ranges(layout)
    model = ModelMemory(layout)
    regions = list(mem.iter())
    addrs = _points(layout) + data.draw(st.lists(address_strategy(layout), max_size=20))
    for a in addrs:
        s = model._find(a)
        found = mem.find_region(a)
        if s is None:
            assert found is None and mem.to_region_addr(a) is None
            assert not mem.address_in_range(a) and mem.check_address(a) is None
            with pytest.raises(InvalidGuestAddressError):
                mem.get_host_address(a)
        else:
            assert int(found.start_addr()) == s
            region, off = mem.to_region_addr(a)
            assert region is found and int(off) == a - s
            assert mem.check_address(a) == GuestAddress(a)
            assert mem.get_host_address(a) == found.get_mmap().as_ptr() + a - s
    idx, off = mem.locate(np.array(addrs, dtype=np.uint64), strict=False)
    for a, i, o in zip(addrs, idx.tolist(), off.tolist(), strict=True):
        s = model._find(a)
        if s is None:
            assert (i, o) == (-1, 0)
        else:
            assert int(regions[i].start_addr()) == s and o == a - s


@given(layout=layouts())
def test_ranges_between_all_boundaries(layout):
    """check_range / checked_offset from every boundary point to every other one (+-1)."""
    mem = GuestMemoryMmap.from_ranges(layout)
    model = ModelMemory(layout)
    points = _points(layout)
    for a in points:
        for b in points:
            for n in {b - a - 1, b - a, b - a + 1, b - a + 8}:
                if not 0 <= n <= U64_MAX:
                    continue
                assert mem.check_range(a, n) is model.check_range(a, n), (a, n)
                assert mem.checked_offset(a, n) == model.checked_offset(a, n), (a, n)
        assert mem.check_range(a, U64_MAX) is model.check_range(a, U64_MAX)
