"""Batch access: GuestMemoryMmap.locate, read_objs and write_objs against the scalar path."""

from __future__ import annotations

import numpy as np
import pytest
from _support import ByteBitmap, ManyBitmap, readonly_file_memory
from hypothesis import given
from hypothesis import strategies as st

from npguest import GuestAddress, GuestMemoryMmap, _checks
from npguest.errors import (
    ByteValuedError,
    GuestAddressOverflowError,
    InvalidGuestAddressError,
    MmapRegionError,
    PartialBufferError,
    ReadOnlyMemoryError,
)

U64_MAX = 2**64 - 1
HIGH = 2**64 - 0x1001  # a region [HIGH, 2**64 - 1): the highest a region can end
MID = 2**63 - 0x800  # a region crossing 2**63

LAYOUT = [
    (0x0, 0x1000),
    (0x1000, 0x1000),  # adjacent to the first
    (0x3000, 0x800),
    (0x5000, 3),  # three small adjacent regions
    (0x5003, 2),
    (0x5005, 4),
    (MID, 0x1000),
    (HIGH, 0x1000),
]

STRUCT = np.dtype([("a", "<u2"), ("b", ">u8"), ("c", "u1")])  # 11 bytes, unaligned fields
DTYPES = [
    np.dtype("u1"),
    np.dtype("<u2"),
    np.dtype(">u4"),
    np.dtype("<u8"),
    np.dtype("S3"),
    np.dtype("V16"),
    np.dtype("<c16"),
    STRUCT,
]


def make(layout=LAYOUT, bitmap=ByteBitmap):
    return GuestMemoryMmap.from_ranges(layout, bitmap=bitmap)


def snapshot(mem):
    return [r.as_array().tobytes() for r in mem.iter()]


def dirty_bytes(mem):
    out = []
    for r in mem.iter():
        base = int(r.start_addr())
        out += [base + int(i) for i in np.flatnonzero(r.get_mmap()._bitmap.bits)]
    return out


def fill(mem, seed=1):
    rng = np.random.default_rng(seed)
    for r in mem.iter():
        r.write_slice(rng.integers(0, 256, r.len(), dtype=np.uint8).tobytes(), 0)
    for r in mem.iter():
        r.get_mmap()._bitmap.bits[:] = False


def random_values(dtype, n, seed=0):
    raw = np.random.default_rng(seed).integers(0, 256, n * dtype.itemsize, dtype=np.uint8)
    return np.frombuffer(raw.tobytes(), dtype=dtype).copy()


@pytest.fixture
def mem():
    m = make()
    fill(m)
    return m


# -- locate --------------------------------------------------------------------------------


def test_locate_mask_mode(mem):
    addrs = [0, 0xFFF, 0x1000, 0x1FFF, 0x2000, 0x3000, 0x37FF, 0x3800, 0x5002, 0x5003]
    addrs += [0x5008, 0x5009, MID - 1, MID, 2**63, 2**63 + 0x7FF, 2**63 + 0x800]
    addrs += [HIGH - 1, HIGH, U64_MAX - 1, U64_MAX]
    idx, off = mem.locate(np.array(addrs, dtype=np.uint64), strict=False)
    assert idx.dtype == np.int64 and off.dtype == np.uint64
    expect = [
        (0, 0),
        (0, 0xFFF),
        (1, 0),
        (1, 0xFFF),
        (-1, 0),
        (2, 0),
        (2, 0x7FF),
        (-1, 0),
        (3, 2),
        (4, 0),
        (5, 3),
        (-1, 0),
        (-1, 0),
        (6, 0),
        (6, 0x800),
        (6, 0xFFF),
        (-1, 0),
        (-1, 0),
        (7, 0),
        (7, 0xFFF),
        (-1, 0),
    ]
    assert list(zip(idx.tolist(), off.tolist(), strict=True)) == expect


def test_locate_strict(mem):
    idx, off = mem.locate([0x10, 2**63 + 1, HIGH + 5])
    assert idx.tolist() == [0, 6, 7] and off.tolist() == [0x10, 0x801, 5]
    with pytest.raises(InvalidGuestAddressError) as ei:
        mem.locate([0x10, 0x2000, 0x4000])
    assert ei.value.addr == 0x2000
    with pytest.raises(InvalidGuestAddressError) as ei:
        mem.locate(np.array([[0x10, 0x11], [U64_MAX, 0x2000]], dtype=np.uint64))
    assert ei.value.addr == U64_MAX


@pytest.mark.parametrize("shape", [(0,), (1,), (5,), (2, 3), (2, 0, 4), (3, 1, 2)])
def test_locate_shapes(mem, shape):
    rng = np.random.default_rng(7)
    points = np.array([0x10, 0x2000, 2**63, HIGH + 1, U64_MAX, 0x5004], dtype=np.uint64)
    addrs = rng.choice(points, size=shape)
    idx, off = mem.locate(addrs, strict=False)
    assert idx.shape == np.shape(addrs) == off.shape
    for a, i, o in zip(
        np.ravel(addrs).tolist(), idx.ravel().tolist(), off.ravel().tolist(), strict=True
    ):
        r = mem.find_region(a)
        if r is None:
            assert (i, o) == (-1, 0)
        else:
            assert list(mem.iter())[i] is r and o == a - int(r.start_addr())


def test_locate_inputs(mem):
    want = ([0, 6, 7], [0x10, 0x801, 5])
    for addrs in (
        [0x10, 2**63 + 1, HIGH + 5],
        (GuestAddress(0x10), GuestAddress(2**63 + 1), HIGH + 5),
        np.array([0x10, 2**63 + 1, HIGH + 5], dtype=np.uint64)[::1],
        np.array([0x10, 2**63 + 1, HIGH + 5, 0], dtype=">u8")[:3],
        np.array([0x10, 0, 2**63 + 1, 0, HIGH + 5], dtype=np.uint64)[::2],  # strided
    ):
        idx, off = mem.locate(addrs)
        assert (idx.tolist(), off.tolist()) == want
    idx, off = mem.locate(np.array([0x10, 0x1001], dtype=np.int64))
    assert (idx.tolist(), off.tolist()) == ([0, 1], [0x10, 1])
    for bad in ([-1], np.array([5, -3], dtype=np.int64), [2**64], [0x10, GuestAddress(1), -5]):
        with pytest.raises(GuestAddressOverflowError):
            mem.locate(bad, strict=False)
    with pytest.raises(TypeError):
        mem.locate(np.array([1.0, 2.0]))


def test_locate_empty_memory():
    e = GuestMemoryMmap()
    idx, off = e.locate([0, 2**63, U64_MAX], strict=False)
    assert idx.tolist() == [-1, -1, -1] and off.tolist() == [0, 0, 0]
    with pytest.raises(InvalidGuestAddressError) as ei:
        e.locate([5])
    assert ei.value.addr == 5
    assert e.locate([])[0].shape == (0,)


# -- read_objs / write_objs against the scalar path ------------------------------------------


def _scalar_outcome(mem, addr, dtype):
    try:
        return ("ok", mem.read_obj(addr, dtype))
    except InvalidGuestAddressError as e:
        return ("bad", e.addr)
    except PartialBufferError as e:
        return ("bad", addr + e.completed)


def _expected_batch_error(mem, addrs, dtype):
    """(element, first unbacked byte) of the first element the scalar path refuses."""
    for k, a in enumerate(addrs):
        kind, what = _scalar_outcome(mem, a, dtype)
        if kind == "bad":
            return k, what
    return None


def _obj_bytes(mem, a, size):
    return mem.read_bytes(a, size)


GOOD = [0x0, 0xFF8, 0xFFC, 0x1FF0, 0x3000, 0x37F0, 0x5000, 0x5001, MID + 0x7FC, HIGH, HIGH + 0xFE0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_read_objs_matches_read_obj(mem, dtype):
    addrs = [a for a in GOOD if mem.check_range(a, dtype.itemsize)]
    addrs += [a + 1 for a in addrs if mem.check_range(a + 1, dtype.itemsize)]
    got = mem.read_objs(np.array(addrs, dtype=np.uint64), dtype)
    assert got.dtype == dtype and got.shape == (len(addrs),)
    raw = got.tobytes()  # (numpy scalars of '>u4' arrays come back in host order)
    for k, a in enumerate(addrs):
        obj = raw[k * dtype.itemsize : (k + 1) * dtype.itemsize]
        assert obj == _obj_bytes(mem, a, dtype.itemsize), hex(a)
    # the same through every accepted address form
    assert mem.read_objs(addrs, dtype).tobytes() == got.tobytes()
    assert mem.read_objs([GuestAddress(a) for a in addrs], dtype).tobytes() == got.tobytes()
    two_d = mem.read_objs(np.array(addrs[:4], dtype=np.uint64).reshape(2, 2), dtype)
    assert two_d.shape == (2, 2) and two_d.tobytes() == got[:4].tobytes()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bitmap", [ByteBitmap, ManyBitmap])
def test_write_objs_matches_write_obj(dtype, bitmap):
    a, b = make(bitmap=bitmap), make(bitmap=bitmap)
    fill(a)
    fill(b)
    addrs = [x for x in GOOD if a.check_range(x, dtype.itemsize)]
    addrs += [x + 3 for x in GOOD if a.check_range(x + 3, dtype.itemsize)]
    values = random_values(dtype, len(addrs), seed=dtype.itemsize)
    a.write_objs(values, np.array(addrs, dtype=np.uint64), dtype)
    for x, v in zip(addrs, values, strict=True):
        b.write_obj(v, x, dtype)
    assert snapshot(a) == snapshot(b)
    assert dirty_bytes(a) == dirty_bytes(b)
    assert dirty_bytes(a)  # (the comparison above is not vacuous)
    assert a.read_objs(addrs[-1:], dtype).tobytes() == values[-1:].tobytes()


def test_objects_straddling_adjacent_regions(mem):
    # a u64 across [0,0x1000)|[0x1000,0x2000), and a 9-byte object across three small regions
    mem.write_objs(np.array([0x1122334455667788], dtype="<u8"), [0xFFC])
    assert mem.read_bytes(0xFFC, 8) == bytes.fromhex("8877665544332211")
    assert mem.read_objs([0xFFC], "<u8").tolist() == [0x1122334455667788]
    rec = np.dtype("V9")
    mem.write_objs(np.frombuffer(b"ABCDEFGHI", dtype=rec), [0x5000], rec)
    assert [r.read_bytes(0, r.len()) for r in list(mem.iter())[3:6]] == [b"ABC", b"DE", b"FGHI"]
    assert mem.read_objs([0x5000], rec).tobytes() == b"ABCDEFGHI"
    # several straddlers in one batch, with non-straddlers between them
    got = mem.read_objs([0x5001, 0x10, 0xFFB, 0x5002, 0x5004], "V5")
    assert [v.tobytes() for v in got] == [
        b"BCDEF",
        mem.read_bytes(0x10, 5),
        mem.read_bytes(0xFFB, 5),
        b"CDEFG",
        b"EFGHI",
    ]


def test_straddling_writes_mark_every_region(mem):
    mem.write_objs(np.array([1, 2], dtype="<u4"), [0xFFE, 0x5002])
    assert dirty_bytes(mem) == [0xFFE, 0xFFF, 0x1000, 0x1001, 0x5002, 0x5003, 0x5004, 0x5005]
    assert mem.read_objs([0xFFE, 0x5002], "<u4").tolist() == [1, 2]


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addrs", "size", "element", "first_bad"),
    [
        ([0x10, 0x2000], 4, 1, 0x2000),  # starts in a hole
        ([0x10, 0x1FFE, 0x2000], 4, 1, 0x2000),  # runs off the end of a contiguous run
        ([0x37FC, 0x10], 8, 0, 0x3800),
        ([0x5000, 0x5006], 4, 1, 0x5009),  # through three regions, then off the end
        ([0x5008], 2, 0, 0x5009),
        ([MID + 0xFFF], 2, 0, MID + 0x1000),
        ([HIGH + 0xFFC], 8, 0, U64_MAX),  # would pass 2**64 - 1
        ([U64_MAX], 1, 0, U64_MAX),
        ([U64_MAX - 3], 16, 0, U64_MAX),
        ([U64_MAX - 1], 2, 0, U64_MAX),  # its first byte is the last backed one
        ([U64_MAX], 8, 0, U64_MAX),
        ([0x10, 0x20, 0x4000, 0x2000], 1, 2, 0x4000),  # the first bad element, not the lowest
        ([0x5000] * 3 + [2**63 + 0x800], 8, 3, 2**63 + 0x800),
    ],
)
def test_bad_address_names_first_unbacked_byte(mem, addrs, size, element, first_bad):
    dtype = np.dtype(f"V{size}")
    before = snapshot(mem)
    for op in (
        lambda: mem.read_objs(np.array(addrs, dtype=np.uint64), dtype),
        lambda: mem.write_objs(random_values(dtype, len(addrs)), addrs, dtype),
    ):
        with pytest.raises(InvalidGuestAddressError) as ei:
            op()
        assert ei.value.addr == first_bad
        assert ei.value.__notes__ == [
            f"element {element}: the {size}-byte object at {addrs[element]:#x} is not wholly backed"
        ]
    assert snapshot(mem) == before  # write_objs wrote nothing
    assert dirty_bytes(mem) == []
    assert _expected_batch_error(mem, addrs, dtype) == (element, first_bad)


def test_bad_element_in_second_chunk_writes_nothing(mem):
    n = _checks.CHUNK + 10
    assert _checks.CHUNK == 1 << 16
    addrs = (np.arange(n, dtype=np.uint64) * 8) % 0x2000  # all valid, in two adjacent regions
    k = _checks.CHUNK + 5
    addrs[k] = 0x3800 - 4  # an 8-byte object running into the hole after [0x3000, 0x3800)
    values = np.arange(n, dtype="<u8") + 1
    before = snapshot(mem)
    with pytest.raises(InvalidGuestAddressError) as ei:
        mem.write_objs(values, addrs)
    assert ei.value.addr == 0x3800
    assert ei.value.__notes__ == [
        f"element {k}: the 8-byte object at {0x3800 - 4:#x} is not wholly backed"
    ]
    assert snapshot(mem) == before and dirty_bytes(mem) == []
    with pytest.raises(InvalidGuestAddressError) as ei:
        mem.read_objs(addrs, "<u8")
    assert ei.value.addr == 0x3800
    # without the bad element, both chunks are written; repeated addresses: the last wins
    addrs[k] = 0x3000
    mem.write_objs(values, addrs)
    got = mem.read_objs(addrs, "<u8")
    last = {}
    for a, v in zip(addrs.tolist(), values.tolist(), strict=True):
        last[a] = v
    assert got.tolist() == [last[a] for a in addrs.tolist()]
    assert mem.read_obj(0x3000, "<u8") == last[0x3000] == k + 1


def test_many_addresses_match_scalar_reads(mem):
    rng = np.random.default_rng(3)
    n = 3 * _checks.CHUNK + 17
    addrs = rng.integers(0, 0x2000 - 3, n, dtype=np.uint64)
    addrs[::1000] = HIGH + rng.integers(0, 0x1000 - 3, addrs[::1000].size, dtype=np.uint64)
    got = mem.read_objs(addrs, ">u4")
    for i in range(0, n, 997):
        assert got[i] == mem.read_obj(int(addrs[i]), ">u4"), i


def test_readonly_region_refuses_before_writing(tmp_path):
    path = tmp_path / "ro.img"
    ro = readonly_file_memory(path, bytes(range(256)) * 16, 0x1000)
    (r,) = ro.iter()
    rw = GuestMemoryMmap.from_regions(
        [GuestMemoryMmap.from_ranges([(0, 0x1000)]).find_region(0), r]
    ).insert_region(GuestMemoryMmap.from_ranges([(0x2000, 0x100)]).find_region(0x2000))
    before = snapshot(rw)
    # the first element is writable; the read-only one comes later
    for addrs, bad in [([0x10, 0x1010], 0x1010), ([0x20, 0xFFC], 0xFFC), ([0x1FFC, 8], 0x1FFC)]:
        with pytest.raises(ReadOnlyMemoryError) as ei:
            rw.write_objs(np.array([7, 9], dtype="<u8"), addrs)
        assert ei.value.addr == bad
        assert isinstance(ei.value, PermissionError) and isinstance(ei.value, MmapRegionError)
    assert snapshot(rw) == before
    # a hole is reported before read-only-ness
    with pytest.raises(InvalidGuestAddressError):
        rw.write_objs(np.array([7, 9], dtype="<u8"), [0x1010, 0x3000])
    # reads of a read-only region are fine
    assert rw.read_objs([0x1000, 0x10FF], "u1").tolist() == [0, 255]
    assert path.read_bytes() == bytes(range(256)) * 16
    del r


# -- inputs --------------------------------------------------------------------------------


def test_empty_inputs(mem):
    before = snapshot(mem)
    for addrs in ([], np.empty(0, dtype=np.uint64), np.empty((3, 0), dtype=np.int64), ()):
        out = mem.read_objs(addrs, "<u4")
        assert out.dtype == np.dtype("<u4") and out.shape == np.shape(addrs)
        assert mem.write_objs(np.empty(np.shape(addrs), dtype="<u4"), addrs) is None
        assert mem.write_objs(5, addrs, "<u4") is None
    assert GuestMemoryMmap().read_objs([], "<u8").shape == (0,)
    GuestMemoryMmap().write_objs([], [], "<u8")
    assert snapshot(mem) == before and dirty_bytes(mem) == []


def test_zero_size_dtype_checks_nothing(mem):
    empty = np.dtype([])
    out = mem.read_objs([0x2000, U64_MAX], empty)
    assert out.shape == (2,) and out.dtype == empty
    mem.write_objs(np.zeros(2, dtype=empty), [0x2000, U64_MAX])
    assert dirty_bytes(mem) == []


def test_values_broadcast(mem):
    addrs = np.array([[0x10, 0x20, 0x30], [0x1010, 0x1020, 0x1FFC]], dtype=np.uint64)
    mem.write_objs(0xABCD, addrs, "<u4")
    assert mem.read_objs(addrs, "<u4").tolist() == [[0xABCD] * 3] * 2
    mem.write_objs([1, 2, 3], addrs, "<u4")
    assert mem.read_objs(addrs, "<u4").tolist() == [[1, 2, 3], [1, 2, 3]]
    mem.write_objs([[7], [8]], addrs, ">u2")
    assert mem.read_objs(addrs, ">u2").tolist() == [[7] * 3, [8] * 3]
    mem.write_objs((5, 6, 7), [0x100, 0x200], STRUCT)
    assert [tuple(v.tolist()) for v in mem.read_objs([0x100, 0x200], STRUCT)] == [(5, 6, 7)] * 2
    with pytest.raises(ByteValuedError):
        mem.write_objs([1, 2], addrs, "<u4")  # (2,) does not broadcast to (2, 3)
    with pytest.raises(ByteValuedError):
        mem.write_objs([1, 2**40], [0x10, 0x20], "<u4")  # does not fit
    with pytest.raises(ByteValuedError):
        mem.write_objs([1.5, 2], [0x10, 0x20], "<u4")  # would be truncated
    with pytest.raises(ByteValuedError):
        mem.read_objs([0x10], object)


def test_dtype_defaults_to_values(mem):
    mem.write_objs(np.array([0x0102, 0x0304], dtype=">u2"), [0x40, 0x42])
    assert mem.read_bytes(0x40, 4) == bytes.fromhex("01020304")
    mem.write_objs(np.uint32(0xAABBCCDD), [0x50])
    assert mem.read_objs([0x50], np.uint32).tolist() == [0xAABBCCDD]


def test_address_forms(mem):
    v = np.array([11, 22, 33], dtype="<u8")
    forms = [
        [0x100, 0x1008, 2**63 + 8],
        (GuestAddress(0x100), GuestAddress(0x1008), GuestAddress(2**63 + 8)),
        np.array([0x100, 0x1008, 2**63 + 8], dtype=np.uint64),
        np.array([0x100, 0x1008, 2**63 + 8], dtype=">u8"),
    ]
    for addrs in forms:
        mem.write_objs(v, addrs)
        assert mem.read_objs(addrs, "<u8").tolist() == v.tolist()
        v = v + 1
    assert mem.read_objs(np.array([0x100, 0x1008], dtype=np.int64), "<u8").tolist() == [14, 25]
    assert mem.read_objs(np.array([0x100, 0x1008], dtype=np.uint16), "<u8").tolist() == [14, 25]
    for bad in ([-1], np.array([0x10, -8], dtype=np.int64), [2**64], [GuestAddress(8), -1]):
        with pytest.raises(GuestAddressOverflowError):
            mem.read_objs(bad, "<u8")
        with pytest.raises(GuestAddressOverflowError):
            mem.write_objs(1, bad, "<u8")
    with pytest.raises(TypeError):
        mem.read_objs(np.array([0.0]), "<u8")
    with pytest.raises(TypeError):
        mem.write_objs(1, ["0x10"], "<u8")


def test_closed_memory(mem):
    mem.close()
    with pytest.raises(InvalidGuestAddressError):
        mem.read_objs([0x10], "<u4")
    with pytest.raises(InvalidGuestAddressError):
        mem.write_objs(1, [0x10], "<u4")
    idx, _ = mem.locate([0x10], strict=False)
    assert idx.tolist() == [-1]


# -- hypothesis: batch == scalar ----------------------------------------------------------------


@st.composite
def layouts(draw):
    n = draw(st.integers(1, 4))
    base = draw(st.sampled_from([0, 2**63 - 0x100, 2**64 - 0x4000]))
    layout, cur = [], base
    for _ in range(n):
        size = draw(st.integers(1, 0x200))
        if cur + size >= U64_MAX:
            break
        layout.append((cur, size))
        cur += size + draw(st.sampled_from([0, 0, 1, 0x10]))
    return layout


def addresses(layout):
    pts = {U64_MAX}
    for s, n in layout:
        pts |= {s - 1, s, s + n - 1, s + n, s + n // 2}
    pts = sorted(p for p in pts if 0 <= p <= U64_MAX)
    near = st.builds(
        lambda p, d: min(max(p + d, 0), U64_MAX), st.sampled_from(pts), st.integers(-17, 17)
    )
    inside = st.sampled_from(layout).flatmap(lambda r: st.integers(r[0], r[0] + r[1] - 1))
    return st.one_of(inside, inside, inside, st.sampled_from(pts), near)


@given(data=st.data())
def test_batch_matches_scalar(data):
    layout = data.draw(layouts())
    dtype = data.draw(st.sampled_from(DTYPES))
    a = GuestMemoryMmap.from_ranges(layout, bitmap=ByteBitmap)
    b = GuestMemoryMmap.from_ranges(layout, bitmap=ByteBitmap)
    addrs = data.draw(st.lists(addresses(layout), min_size=1, max_size=8))
    values = random_values(dtype, len(addrs), seed=len(addrs))
    arr = np.array(addrs, dtype=np.uint64)
    want = _expected_batch_error(b, addrs, dtype)

    # reads
    if want is None:
        got = a.read_objs(arr, dtype)
        size = dtype.itemsize
        raw = got.tobytes()
        assert [raw[k * size : (k + 1) * size] for k in range(len(addrs))] == [
            b.read_bytes(x, size) for x in addrs
        ]
    else:
        with pytest.raises(InvalidGuestAddressError) as ei:
            a.read_objs(arr, dtype)
        assert ei.value.addr == want[1]
        assert ei.value.__notes__[0].startswith(f"element {want[0]}:")

    # writes: all or nothing, and equal to the scalar writes in order
    if want is None:
        a.write_objs(values, arr, dtype)
        for x, v in zip(addrs, values, strict=True):
            b.write_obj(v, x, dtype)
    else:
        with pytest.raises(InvalidGuestAddressError) as ei:
            a.write_objs(values, arr, dtype)
        assert ei.value.addr == want[1]
    assert snapshot(a) == snapshot(b)
    assert dirty_bytes(a) == dirty_bytes(b)


def test_close_while_a_batch_runs_is_refused():
    """The batch kernels run without the GIL on raw host addresses: closing the memory
    meanwhile must be refused (never unmap under a running kernel)."""
    import threading

    mem = GuestMemoryMmap.from_ranges([(0, 64 << 20)])
    addrs = np.random.default_rng(3).integers(0, (64 << 20) - 8, 4 << 20).astype(np.uint64)
    done = threading.Event()
    errors = []

    def reader():
        try:
            for _ in range(3):
                mem.read_objs(addrs, "<u8")
                mem.write_objs(np.uint64(7), addrs, "<u8")
        except Exception as exc:
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=reader)
    t.start()
    refused = 0
    while not done.is_set():
        try:
            mem.close()
        except MmapRegionError:
            refused += 1
        else:
            break
    t.join()
    mem.close()
    # the reader either finished or saw the memory closed between calls -- nothing else
    assert all(isinstance(e, InvalidGuestAddressError | MmapRegionError) for e in errors), errors
    assert refused or errors


# -- review fixes: 0-d and nested addresses, checked records, zero-size objects, messages ------


@pytest.mark.parametrize("addr", [np.array(5), np.uint64(5), np.int64(5), 5, GuestAddress(5)])
def test_scalar_addresses_give_0d_results(mem, addr):
    out = mem.read_objs(addr, "<u2")
    assert out.shape == () and int(out) == mem.read_obj(5, "<u2")
    assert mem.read_objs(addr, "(2,)u1").shape == (2,)
    region, offset = mem.locate(addr)
    assert region.shape == offset.shape == ()
    assert (int(region), int(offset)) == (0, 5)
    mem.write_objs(0xBEEF, addr, "<u2")
    assert mem.read_obj(5, "<u2") == 0xBEEF


def test_nested_address_lists(mem):
    addrs = [[1, 2], [0x1000, 0x3000]]
    out = mem.read_objs(addrs, "u1")
    assert out.shape == (2, 2)
    assert out.tolist() == [[mem.read_obj(a, "u1") for a in row] for row in addrs]
    assert mem.locate(addrs)[0].tolist() == [[0, 0], [1, 2]]
    mem.write_objs([[9, 8], [7, 6]], addrs, "u1")
    assert [mem.read_obj(a, "u1") for row in addrs for a in row] == [9, 8, 7, 6]
    with pytest.raises(TypeError):
        mem.read_objs([[1, 2], [3]], "u1")


def test_structured_writes_refuse_lossy_fields():
    mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000)])
    dt = np.dtype([("a", "u1"), ("b", "<u4")])
    with pytest.raises(ByteValuedError, match="field 'a'"):
        mem.write_obj((1.7, 2), 0, dt)
    src = np.array([(300, 2**40)], [("a", "<u4"), ("b", "<u8")])
    with pytest.raises(ByteValuedError, match="field 'a'"):
        mem.write_objs(src, [0x10], dt)
    with pytest.raises(ByteValuedError, match="field 'b'"):
        mem.write_obj(np.void((1, 2**40), src.dtype), 0x20, dt)
    assert mem.read_bytes(0, 0x30) == bytes(0x30)  # nothing was written
    mem.write_objs(np.array([(200, 2**31)], src.dtype), [0xFFD], dt)  # fits: stored
    assert mem.read_objs([0xFFD], dt).tolist() == [(200, 2**31)]


@pytest.mark.parametrize("dtype", ["V0", np.dtype([]), "(0,)<u4"])
def test_zero_size_objects_are_ok_anywhere(dtype):
    # vm-memory 3.1: a zero-length access is Ok, even at an address no region backs
    mem = GuestMemoryMmap.from_ranges([(0, 0x1000)])
    for addr in (0, 0xFFF, 0x1000, 0x5000, U64_MAX):
        assert np.asarray(mem.read_obj(addr, dtype)).nbytes == 0
        assert np.asarray(mem.find_region(0).read_obj(addr, dtype)).nbytes == 0
        mem.write_obj(mem.read_obj(addr, dtype), addr, dtype)
    assert np.asarray(GuestMemoryMmap().read_obj(5, dtype)).nbytes == 0


@pytest.mark.parametrize(
    ("call", "text"),
    [
        (lambda m: m.check_range(0, -5), "length -5 is not"),
        (lambda m: list(m.get_slices(0, -1)), "count -1 is not"),
        (lambda m: m.read_volatile_from(0, None, -1), "count -1 is not"),  # checked first
        (lambda m: m.read_bytes(0, -1), "count -1 is not"),
        (lambda m: m.read_bytes(-2, 1), "address -0x2 is not"),
    ],
)
def test_range_errors_name_the_argument(call, text):
    mem = GuestMemoryMmap.from_ranges([(0, 0x1000)])
    with pytest.raises(GuestAddressOverflowError) as ei:
        call(mem)
    assert text in str(ei.value)


def test_a_kept_error_does_not_keep_regions_pinned():
    """A failed batch read releases its region pins before raising: a caller keeping the
    error (and so its traceback's frames) can still close the memory, GC or not."""
    import gc

    mem = GuestMemoryMmap.from_ranges([(0, 0x10000)])
    gc.disable()
    try:
        with pytest.raises(InvalidGuestAddressError) as kept:
            mem.read_objs(np.array([0x8, 0x20000], dtype=np.uint64), "<u8")
        mem.close()
    finally:
        gc.enable()
    assert kept.value.addr == 0x20000


# -- hole policies ---------------------------------------------------------------------------


@given(data=st.data())
def test_hole_policies_match_scalar(data):
    layout = data.draw(layouts())
    dtype = data.draw(st.sampled_from(DTYPES))
    mem = GuestMemoryMmap.from_ranges(layout)
    fill_values = np.random.default_rng(len(layout)).integers(0, 256, 0x1000, dtype=np.uint8)
    for s, n in layout:
        mem.write_slice(fill_values[:n].tobytes(), s)
    addrs = data.draw(st.lists(addresses(layout), min_size=1, max_size=8))
    size = dtype.itemsize
    zero = bytes(size)
    expected = []
    for x in addrs:
        kind, _ = _scalar_outcome(mem, x, dtype)
        expected.append(mem.read_bytes(x, size) if kind == "ok" else None)
    zeroed = mem.read_objs(addrs, dtype, holes="zero")
    values, valid = mem.read_objs(addrs, dtype, holes="mask")
    assert valid.tolist() == [e is not None for e in expected]
    for raw in (zeroed.tobytes(), values.tobytes()):
        got = [raw[k * size : (k + 1) * size] for k in range(len(addrs))]
        assert got == [zero if e is None else e for e in expected]


def test_hole_policy_shapes_and_errors(mem):
    addrs = np.array([[0x10, 0x2000], [0xFFC, 0x3000]], dtype=np.uint64)
    values, valid = mem.read_objs(addrs, "<u8", holes="mask")
    assert values.shape == valid.shape == (2, 2)
    assert valid.tolist() == [[True, False], [True, True]]  # 0xFFC straddles two regions
    assert mem.read_objs(addrs, "<u8", holes="zero")[0, 1] == 0
    with pytest.raises(ValueError, match="holes must be"):
        mem.read_objs(addrs, "<u8", holes="ignore")
    with pytest.raises(InvalidGuestAddressError):
        mem.read_objs(addrs, "<u8")
    values, valid = GuestMemoryMmap().read_objs([1, 2], "u1", holes="mask")
    assert not valid.any() and values.tolist() == [0, 0]
