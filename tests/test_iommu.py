"""The IOMMU layer: Permissions, the IOTLB's range-map rules, IotlbIommu and IommuMemory.

The IOTLB is checked against a per-byte model (``iova -> (target, permissions)``), and
IommuMemory against a bytearray model of the physical memory reached through the model.
"""

from __future__ import annotations

import io
import itertools
import pickle

import numpy as np
import pytest
from _support import readonly_file_memory
from hypothesis import given
from hypothesis import strategies as st

from npguest import (
    AtomicBitmap,
    Bytes,
    GuestMemoryMmap,
    IommuMemory,
    Iotlb,
    IotlbIommu,
    IovaRange,
    MappedRange,
    Permissions,
)
from npguest.errors import (
    CannotResolveError,
    GuestAddressOverflowError,
    InaccessibleError,
    InvalidBackendAddressError,
    InvalidGuestAddressError,
    IommuError,
    IommuMisconfiguredError,
    PartialBufferError,
    ReadOnlyMemoryError,
)

R, W, RW, NO = Permissions.READ, Permissions.WRITE, Permissions.READ_WRITE, Permissions.NO_ACCESS


# -- Permissions ---------------------------------------------------------------------------


@pytest.mark.parametrize("perm", list(Permissions))
@pytest.mark.parametrize("access", list(Permissions))
def test_permissions_allow(perm, access):
    assert perm.allow(access) == ((int(perm) & int(access)) == int(access))
    assert perm.has_write() == (perm in (W, RW))


def test_permissions_are_int_flags():
    assert R | W == RW and RW & W == W and int(NO) == 0
    assert Permissions(3) is RW


# -- Iotlb: vm-memory's cases ----------------------------------------------------------------


def test_merge_contiguous_in_both_spaces():
    t = Iotlb()
    t.set_mapping(0x1000, 0x5000, 0x1000, R)
    t.set_mapping(0x2000, 0x6000, 0x1000, R)
    assert len(t) == 1
    assert t.lookup(0x1000, 0x2000, R).hits == [MappedRange(0x5000, 0x2000)]


def test_no_merge_for_same_target_base_or_other_permissions():
    t = Iotlb()
    t.set_mapping(0x1000, 0x5000, 0x1000, R)
    t.set_mapping(0x2000, 0x5000, 0x1000, R)  # same target base: a duplicate mapping
    t.set_mapping(0x3000, 0x6000, 0x1000, RW)  # continues 0x2000's target, other perms
    assert len(t) == 3
    assert t.lookup(0x1000, 0x3000, R).hits == [
        MappedRange(0x5000, 0x1000),
        MappedRange(0x5000, 0x1000),
        MappedRange(0x6000, 0x1000),
    ]


def test_observed_misses_and_access_fails():
    t = Iotlb()
    t.set_mapping(0x1000, 0x5000, 0x1000, R)
    r = t.lookup(0x800, 0x1000, W)
    assert not r.ok
    assert r.misses == [IovaRange(0x800, 0x800)]
    assert r.access_fails == [IovaRange(0x1000, 0x800)]
    assert r.hits == []


def test_invalidation_splits():
    t = Iotlb()
    t.set_mapping(42, 87, 123, R)
    t.invalidate_mapping(103, 3)
    assert t.lookup(42, 61, R).hits == [MappedRange(87, 61)]
    r = t.lookup(42, 123, R)
    assert r.misses == [IovaRange(103, 3)] and not r.access_fails
    assert t.lookup(106, 59, R).hits == [MappedRange(151, 59)]
    t.invalidate_all()
    assert t.lookup(42, 123, R).misses == [IovaRange(42, 123)]
    assert len(t) == 0 and t.entries() == []


def test_overwrite_in_the_middle():
    t = Iotlb()
    t.set_mapping(0, 0x10000, 0x3000, RW)
    t.set_mapping(0x1000, 0x90000, 0x1000, R)
    assert t.entries() == [
        (0, 0x10000, 0x1000, RW),
        (0x1000, 0x90000, 0x1000, R),
        (0x2000, 0x12000, 0x1000, RW),
    ]
    t.set_mapping(0x1000, 0x11000, 0x1000, RW)  # restores the original: all coalesce
    assert t.entries() == [(0, 0x10000, 0x3000, RW)]


def test_zero_length_lookup_rule():
    t = Iotlb()
    t.set_mapping(0x1000, 0x5000, 0x1000, R)
    assert t.lookup(0x1800, 0, W).access_fails == [IovaRange(0x1800, 0)]
    assert t.lookup(0x1000, 0, W).ok  # an entry's first byte
    assert t.lookup(0x9000, 0, W).ok  # unmapped
    assert t.lookup(0x1800, 0, R).ok


def test_mapping_to_the_top_of_the_address_space():
    t = Iotlb()
    top = 2**64 - 0x1000
    t.set_mapping(top, 0, 0x1000, R)
    assert t.lookup(2**64 - 1, 1, R).hits == [MappedRange(0xFFF, 1)]
    pa, ok = t.translate_many([2**64 - 1, top - 1])
    assert pa.tolist() == [0xFFF, 0] and ok.tolist() == [True, False]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda t: t.set_mapping(0, 0, 0, R), IommuMisconfiguredError),
        (lambda t: t.invalidate_mapping(0x1000, 0), IommuMisconfiguredError),
        (lambda t: t.set_mapping(0, 0, 1, 4), IommuMisconfiguredError),
        (lambda t: t.set_mapping(0, 0, 1, True), IommuMisconfiguredError),
        (lambda t: t.lookup(0, 1, "r"), IommuMisconfiguredError),
        (lambda t: t.set_mapping(2**64 - 1, 0, 2, R), GuestAddressOverflowError),
        (lambda t: t.set_mapping(0, 2**64 - 1, 2, R), GuestAddressOverflowError),
        (lambda t: t.lookup(2**64 - 1, 2, R), GuestAddressOverflowError),
        (lambda t: t.lookup(-1, 2, R), GuestAddressOverflowError),
        (lambda t: t.set_mapping(1.5, 0, 2, R), TypeError),
    ],
)
def test_iotlb_bad_input(call, error):
    t = Iotlb()
    with pytest.raises(error) as info:
        call(t)
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is error and str(back) == str(info.value)
    assert len(t) == 0


def test_misconfigured_message_names_the_range():
    with pytest.raises(IommuMisconfiguredError, match=r"0x2000\+0.*length > 0"):
        Iotlb().set_mapping(0x2000, 0x1000, 0, R)


# -- Iotlb against a per-byte model ------------------------------------------------------------

SPACE = 64


def tlb_ops():
    span = st.tuples(st.integers(0, SPACE - 1), st.integers(1, 16)).map(
        lambda p: (p[0], min(p[1], SPACE - p[0]))
    )
    perm = st.sampled_from(list(Permissions))
    return st.lists(
        st.one_of(
            st.tuples(st.just("map"), span, st.integers(0, 200), perm),
            st.tuples(st.just("unmap"), span),
            st.tuples(st.just("clear")),
        ),
        max_size=30,
    )


def model_lookup(model, iova, length, access):
    hits, misses, fails = [], [], []
    for a in range(iova, iova + length):
        entry = model.get(a)
        if entry is None:
            runs, piece = misses, (a, 1)
        elif Permissions(entry[1]).allow(access):
            runs, piece = hits, (entry[0], 1)
        else:
            runs, piece = fails, (a, 1)
        last = runs[-1] if runs else None
        prev_ok = last is not None and last[0] + last[1] == piece[0]
        if runs is hits:
            prev_ok = prev_ok and model.get(a - 1, (None,))[0] == piece[0] - 1
            prev_ok = prev_ok and model.get(a - 1, (0, -1))[1] == entry[1]
        if prev_ok and (runs is not hits or a - 1 >= iova):
            runs[-1] = (last[0], last[1] + 1)
        else:
            runs.append(piece)
    return hits, misses, fails


def _bytes_of(ranges):
    return [b for base, n in ranges for b in range(base, base + n)]


@given(ops=tlb_ops(), data=st.data())
def test_iotlb_matches_a_byte_model(ops, data):
    t = Iotlb()
    model: dict[int, tuple[int, int]] = {}
    for op in ops:
        if op[0] == "map":
            (iova, n), target, perm = op[1], op[2], op[3]
            t.set_mapping(iova, target, n, perm)
            model.update({iova + k: (target + k, int(perm)) for k in range(n)})
        elif op[0] == "unmap":
            iova, n = op[1]
            t.invalidate_mapping(iova, n)
            for k in range(n):
                model.pop(iova + k, None)
        else:
            t.invalidate_all()
            model.clear()
    # entries are maximal: no two neighbours continue each other
    entries = t.entries()
    for (s0, t0, n0, p0), (s1, t1, _, p1) in itertools.pairwise(entries):
        assert s0 + n0 <= s1
        assert not (s0 + n0 == s1 and t0 + n0 == t1 and p0 == p1)
    for _ in range(5):
        iova = data.draw(st.integers(0, SPACE))
        length = data.draw(st.integers(0, SPACE - iova))
        access = data.draw(st.sampled_from(list(Permissions)))
        got = t.lookup(iova, length, access)
        if length:
            hits, misses, fails = model_lookup(model, iova, length, access)
            assert [tuple(h) for h in got.misses] == misses
            # access failures come one per entry: compare the bytes they cover
            assert _bytes_of(got.access_fails) == _bytes_of(fails)
            assert got.ok == (not misses and not fails)
            # hits: byte-exact translation of every allowed byte, pieces maximal per entry
            assert _bytes_of(got.hits) == _bytes_of(hits)
    addrs = np.arange(SPACE + 2, dtype=np.uint64)
    for access in Permissions:
        pa, ok = t.translate_many(addrs, access)
        for a in range(SPACE + 2):
            entry = model.get(a)
            want = entry is not None and Permissions(entry[1]).allow(access)
            assert ok[a] == want
            assert pa[a] == (entry[0] if want else 0)


def test_translate_many_shapes():
    t = Iotlb()
    assert t.translate_many(np.zeros((2, 3), dtype=np.uint64))[1].shape == (2, 3)
    t.set_mapping(0, 0x100, 0x10, R)
    pa, ok = t.translate_many(np.array([[0, 0x10]], dtype=np.uint64), W)
    assert pa.tolist() == [[0, 0]] and ok.tolist() == [[False, False]]


# -- IotlbIommu ------------------------------------------------------------------------------


def test_iotlb_iommu_errors_name_the_failing_part():
    iommu = IotlbIommu()
    iommu.iotlb.set_mapping(0x1000, 0x5000, 0x1000, R)
    with pytest.raises(CannotResolveError) as miss:
        iommu.translate(0x1800, 0x1000, R)
    assert (miss.value.iova, miss.value.length) == (0x2000, 0x800)
    with pytest.raises(InaccessibleError, match="WRITE") as denied:
        iommu.translate(0x1800, 0x100, W)
    assert (denied.value.iova, denied.value.length) == (0x1800, 0x100)
    assert iommu.translate(0x1000, 0, W) == []
    assert "1 entries" in repr(iommu)


def test_fault_handler_refills_once():
    calls = []

    def fault(iotlb, lookup):
        calls.append(lookup)
        for gap in lookup.misses:
            iotlb.set_mapping(gap.base, IOVA + gap.base, gap.length, RW)

    iommu = IotlbIommu(fault=fault)
    assert iommu.translate(0x2000, 0x10, W) == [MappedRange(0x102000, 0x10)]
    assert iommu.translate(0x2000, 0x10, R) == [MappedRange(0x102000, 0x10)]
    assert len(calls) == 1 and calls[0].misses == [IovaRange(0x2000, 0x10)]
    stubborn = IotlbIommu(fault=lambda tlb, lookup: None)
    with pytest.raises(CannotResolveError):
        stubborn.translate(0, 1, R)


# -- IommuMemory: vm-memory's observed cases ------------------------------------------------


@pytest.fixture
def observed():
    """IOTLB 0x1000+0x1000 -> 0x5000 R, 0x2000+0x1000 -> 0x7000 RW; backend [0x5000, 0x6000)."""
    mem = GuestMemoryMmap.from_ranges([(0x5000, 0x1000)])
    iommu = IotlbIommu()
    iommu.iotlb.set_mapping(0x1000, 0x5000, 0x1000, R)
    iommu.iotlb.set_mapping(0x2000, 0x7000, 0x1000, RW)
    return mem, iommu, IommuMemory(mem, iommu)


def test_observed_iommu_memory(observed):
    mem, iommu, dev = observed
    with pytest.raises(InaccessibleError):
        dev.write(b"\x01", 0x1000)
    assert dev.read(bytearray(4), 0x1FFE) == 2
    with pytest.raises(InvalidGuestAddressError) as hole:
        dev.read(bytearray(4), 0x2000)
    assert hole.value.addr == 0x7000  # the physical address
    with pytest.raises(CannotResolveError):
        dev.read(bytearray(4), 0x3000)
    assert dev.read(bytearray(), 0x3000) == 0
    assert dev.check_range(0x1000, 0x1000, R)
    assert not dev.check_range(0x1000, 0x1001, R)
    assert not dev.check_range(0x2000, 1, R)
    assert not dev.check_range(0x1000, 1, W)
    assert dev.physical_memory() is None
    assert dev.get_backend() is mem and dev.iommu() is iommu and dev.get_iommu() is iommu
    dev.set_iommu_enabled(False)
    assert not dev.get_iommu_enabled()
    assert dev.read(bytearray(4), 0x5FFE) == 2
    assert dev.physical_memory() is mem
    assert dev.check_range(0x5000, 0x1000)


def test_errors_come_before_any_byte_moves(observed):
    mem, _, dev = observed
    mem.write_slice(b"\xaa" * 0x1000, 0x5000)
    with pytest.raises(InaccessibleError):
        dev.write_slice(b"\x00" * 0x10, 0x1FF8)
    with pytest.raises(PartialBufferError) as short:
        dev.read_slice(bytearray(4), 0x1FFE)
    assert (short.value.expected, short.value.completed) == (4, 2)
    assert mem.read_bytes(0x5000, 0x1000) == b"\xaa" * 0x1000


class ListIommu:
    """A custom Iommu answering from a fixed list (to test misbehaving ones)."""

    def __init__(self, pieces):
        self.pieces = pieces

    def translate(self, iova, length, access):
        return self.pieces


@pytest.mark.parametrize("pieces", [[], [(0, 1)], [(0, 3), (8, 3)], [(0, 0), (0, 2)], ["ab"]])
def test_misbehaving_iommu_is_reported(pieces):
    dev = IommuMemory(GuestMemoryMmap.from_ranges([(0, 0x100)]), ListIommu(pieces))
    with pytest.raises(IommuMisconfiguredError):
        dev.read(bytearray(2), 0x10)
    assert not dev.check_range(0x10, 2)


def test_constructor_checks():
    mem = GuestMemoryMmap.from_ranges([(0, 0x100)])
    with pytest.raises(TypeError, match="GuestMemoryMmap"):
        IommuMemory(bytearray(4), IotlbIommu())
    with pytest.raises(TypeError, match="translate"):
        IommuMemory(mem, object())
    with pytest.raises(IommuMisconfiguredError):
        IommuMemory(mem, IotlbIommu()).check_range(0, 1, 9)
    assert "enabled" in repr(IommuMemory(mem, IotlbIommu()))


# -- fragmented access against a model -------------------------------------------------------

PAGE = 0x100
NPAGES = 32


IOVA = 0x100000  # IOVA page i is [IOVA + i * PAGE, ...); the IOVA bitmap is indexed by IOVA


def iova_bitmap():
    return AtomicBitmap(IOVA + NPAGES * PAGE, PAGE)


def iova_pages(bitmap):
    return [p - IOVA // PAGE for p in bitmap.dirty_pages().tolist()]


def fragmented(seed, holes=()):
    """Physical memory of NPAGES pages in two regions, minus ``holes``; IOVA page i -> a
    shuffled physical page, read-only when i % 4 == 3 (the rest RW)."""
    rng = np.random.default_rng(seed)
    half = NPAGES // 2 * PAGE
    mem = GuestMemoryMmap.from_ranges(
        [(0, half), (half, half)], bitmap=AtomicBitmap, page_size=PAGE
    )
    if holes:
        kept = [(p * PAGE, PAGE) for p in range(NPAGES) if p not in holes]
        mem = GuestMemoryMmap.from_ranges(kept, bitmap=AtomicBitmap, page_size=PAGE)
    perm = rng.permutation(NPAGES)
    iommu = IotlbIommu()
    for i, p in enumerate(perm.tolist()):
        iommu.iotlb.set_mapping(IOVA + i * PAGE, p * PAGE, PAGE, R if i % 4 == 3 else RW)
    return mem, iommu, perm


@given(
    seed=st.integers(0, 2**16),
    start=st.integers(0, NPAGES * PAGE - 1),
    length=st.integers(1, 6 * PAGE),
    payload=st.integers(0, 255),
)
def test_fragmented_reads_and_writes_match_the_model(seed, start, length, payload):
    mem, iommu, perm = fragmented(seed)
    dev = IommuMemory(mem, iommu, bitmap=iova_bitmap())
    length = min(length, NPAGES * PAGE - start)
    phys = bytearray(np.random.default_rng(seed).integers(0, 256, NPAGES * PAGE, dtype=np.uint8))
    mem.write_slice(phys, 0)
    mem.get_and_reset_dirty()

    def pa(iova_off):
        return int(perm[iova_off // PAGE]) * PAGE + iova_off % PAGE

    want = bytes(phys[pa(k)] for k in range(start, start + length))
    assert dev.read_bytes(IOVA + start, length) == want
    writable = all((k // PAGE) % 4 != 3 for k in range(start, start + length))
    if writable:
        dev.write_slice(bytes([payload]) * length, IOVA + start)
        for k in range(start, start + length):
            phys[pa(k)] = payload
        pages = sorted({k // PAGE for k in range(start, start + length)})
        assert iova_pages(dev.bitmap()) == pages  # IOVA pages, not physical
        assert mem.dirty_pages().shape == (0,)  # the physical bitmaps stay clean
    else:
        with pytest.raises(InaccessibleError):
            dev.write_slice(bytes(length), IOVA + start)
    assert mem.read_bytes(0, NPAGES * PAGE) == bytes(phys)


def test_physical_hole_after_the_first_piece_is_partial():
    mem, iommu, perm = fragmented(3, holes={5})
    dev = IommuMemory(mem, iommu)
    i = int(np.flatnonzero(perm == 5)[0])  # the IOVA page landing on the hole
    if i == 0:
        pytest.skip("the hole is the first page for this seed")
    base = IOVA + (i - 1) * PAGE
    assert dev.read(bytearray(2 * PAGE), base) == PAGE
    with pytest.raises(InvalidGuestAddressError) as err:
        dev.read(bytearray(4), base + PAGE)
    assert err.value.addr == 5 * PAGE
    slices = dev.get_slices(base, 2 * PAGE)
    assert len(next(slices)) == PAGE
    with pytest.raises(InvalidGuestAddressError):
        next(slices)
    assert list(slices) == []
    assert [len(s) for s in dev.get_slices(base, 2 * PAGE).stop_on_error()] == [PAGE]


def test_get_slices_are_tracked_in_iova_space():
    mem, iommu, _ = fragmented(4)
    bitmap = iova_bitmap()
    dev = IommuMemory(mem, iommu, bitmap=bitmap)
    slices = list(dev.get_slices(IOVA + PAGE - 2, 4, W))
    assert [len(s) for s in slices] == [2, 2]
    for s in slices:
        s.write_slice(b"zz", 0)
    assert iova_pages(bitmap) == [0, 1]
    assert mem.dirty_pages().shape == (0,)
    with pytest.raises(InaccessibleError):
        dev.get_slices(IOVA + 3 * PAGE, 4, W)  # page 3 is read-only: raised up front
    assert list(dev.get_slices(IOVA, 0, W)) == []


def test_disabled_iommu_uses_physical_bitmaps():
    mem, iommu, _ = fragmented(5)
    dev = IommuMemory(mem, iommu, use_iommu=False, bitmap=iova_bitmap())
    dev.write_obj(7, 3 * PAGE + 8, "<u8")
    dev.write_obj(8, 3 * PAGE + 16, "<u8")
    assert dev.read_obj(3 * PAGE + 16, "<u8") == 8
    assert mem.dirty_pages().tolist() == [3 * PAGE]  # guest addresses of dirty pages
    assert dev.bitmap().count() == 0
    assert [len(s) for s in dev.get_slices(0, NPAGES * PAGE)] == [NPAGES // 2 * PAGE] * 2
    dev.set_iommu_enabled(True)
    assert dev.read_obj(IOVA + 8, "<u8") == mem.read_obj(int(_[0]) * PAGE + 8, "<u8")


def test_objects_streams_and_atomics_through_the_iommu():
    mem, iommu, perm = fragmented(6)
    dev = IommuMemory(mem, iommu, bitmap=iova_bitmap())
    with pytest.raises(InaccessibleError):
        dev.write_obj(1, IOVA + 4 * PAGE - 4, "<u8")  # pages 2 (RW) and 3 (R)
    mem.write_obj(0x11223344, int(perm[0]) * PAGE + PAGE - 4, "<u4")
    mem.write_obj(0x55667788, int(perm[1]) * PAGE, "<u4")
    mem.get_and_reset_dirty()
    assert dev.read_obj(IOVA + PAGE - 4, "<u8") == 0x5566778811223344  # two pieces
    dev.store(0xAB, IOVA + 16, "<u8")
    assert dev.load(IOVA + 16, "<u8") == 0xAB
    assert mem.read_obj(int(perm[0]) * PAGE + 16, "<u8") == 0xAB
    with pytest.raises(InvalidBackendAddressError, match="spans two IOVA pieces"):
        dev.load(IOVA + PAGE - 4, "<u8")
    with pytest.raises(InaccessibleError):
        dev.store(1, IOVA + 3 * PAGE, "<u8")
    with pytest.raises(InaccessibleError):
        dev.read_volatile_from(IOVA + 4 * PAGE - 4, io.BytesIO(bytes(8)), 8)
    assert dev.read_volatile_from(IOVA + PAGE - 4, io.BytesIO(bytes(range(8))), 8) == 8
    assert mem.read_bytes(int(perm[1]) * PAGE, 4) == bytes(range(4, 8))
    out = io.BytesIO()
    assert dev.write_volatile_to(IOVA + 4 * PAGE - 4, out, 8) == 8  # reading R is fine
    assert iova_pages(dev.bitmap()) == [0, 1]
    assert mem.dirty_pages().shape == (0,)


def test_with_replaced_backend_shares_iommu_and_bitmap():
    mem, iommu, _ = fragmented(7)
    dev = IommuMemory(mem, iommu, bitmap=iova_bitmap())
    other = GuestMemoryMmap.from_ranges([(0, NPAGES * PAGE)])
    moved = dev.with_replaced_backend(other)
    assert moved.iommu() is iommu and moved.bitmap() is dev.bitmap()
    assert moved.get_backend() is other and moved.get_iommu_enabled()


def test_guest_memory_is_its_own_view():
    mem = GuestMemoryMmap.from_ranges([(0, 0x1000)])
    assert mem.physical_memory() is mem
    assert mem.check_range(0, 0x1000, W) and not mem.check_range(0, 0x1001, R)
    assert [len(s) for s in mem.get_slices(0, 0x10, RW)] == [0x10]
    with pytest.raises(IommuMisconfiguredError, match="Permissions"):
        mem.check_range(0, 1, 7)
    with pytest.raises(IommuMisconfiguredError, match="Permissions"):
        mem.get_slices(0, 1, "w")


def test_iommu_errors_are_iommu_errors():
    assert issubclass(IommuMisconfiguredError, IommuError)
    assert issubclass(IommuMisconfiguredError, ValueError)


# -- long fragmented copies (one kernel call) --------------------------------------------------

BIG = 0x1000


def big_fragmented(ranges, seed=0, perm_of=lambda i: Permissions.READ_WRITE, **kw):
    """Physical ``ranges`` (4 KiB pages), every IOVA page i -> a shuffled physical page."""
    mem = GuestMemoryMmap.from_ranges(ranges, **kw)
    pages = [a // BIG + k for a, n in ranges for k in range(n // BIG)]
    order = np.random.default_rng(seed).permutation(len(pages))
    iommu = IotlbIommu()
    for i, j in enumerate(order.tolist()):
        iommu.iotlb.set_mapping(IOVA + i * BIG, pages[j] * BIG, BIG, perm_of(i))
    phys = np.random.default_rng(seed + 1).integers(0, 256, sum(n for _, n in ranges), np.uint8)
    done = 0
    for a, n in ranges:
        mem.write_slice(phys[done : done + n], a)
        done += n
    return mem, iommu, [pages[j] for j in order.tolist()]


def through(mem, page_of, start, length):
    """The bytes at IOVA offset ``start`` read page by page from physical memory."""
    out = bytearray()
    for k in range(start // BIG, (start + length - 1) // BIG + 1):
        lo, hi = max(start, k * BIG), min(start + length, (k + 1) * BIG)
        out += mem.read_bytes(page_of[k] * BIG + lo - k * BIG, hi - lo)
    return bytes(out)


@pytest.mark.parametrize("start", [0, 0x123, BIG - 1])
def test_long_fragmented_copies_match_page_by_page(start, monkeypatch):
    from npguest import _kernels

    calls = []
    kernel = _kernels.copy_runs
    monkeypatch.setattr(_kernels, "copy_runs", lambda *a: calls.append(a) or kernel(*a))
    mem, iommu, page_of = big_fragmented([(0, 0x40000), (0x80000, 0x40000)])
    bitmap = AtomicBitmap(IOVA + 0x80000, BIG)
    dev = IommuMemory(mem, iommu, bitmap=bitmap)
    length = 0x30000 + 5
    assert dev.read_bytes(IOVA + start, length) == through(mem, page_of, start, length)
    data = np.random.default_rng(9).integers(0, 256, length, dtype=np.uint8)
    dev.write_slice(data, IOVA + start)
    assert through(mem, page_of, start, length) == data.tobytes()
    first, last = (IOVA + start) // BIG, (IOVA + start + length - 1) // BIG
    assert bitmap.dirty_pages().tolist() == list(range(first, last + 1))
    assert mem.dirty_pages().shape == (0,)
    assert [len(a[1]) for a in calls] == [0x31 + (start + 5 > BIG)] * 2  # one call each


def test_long_copy_irregular_cases_take_the_piecewise_rules():
    # adjacent regions: a piece straddling them is still copied right
    mem, iommu, page_of = big_fragmented([(0, 0x20000), (0x20000, 0x20000)], seed=3)
    iommu.iotlb.set_mapping(IOVA + 0x1F800, 0x1F800, 0x1000, RW)  # straddles the boundary
    dev = IommuMemory(mem, iommu)
    want = through(mem, page_of, 0, 0x1F800) + mem.read_bytes(0x1F800, 0x1000)
    want += through(mem, page_of, 0x20800, 0x10000)
    assert dev.read_bytes(IOVA, 0x30800) == want
    # a physical hole in the middle: partial, then the error for the first byte
    mem, iommu, page_of = big_fragmented([(0, 0x40000)], seed=4)
    iommu.iotlb.set_mapping(IOVA + 0x8000, 0x900000, BIG, RW)
    dev = IommuMemory(mem, iommu)
    assert dev.read(bytearray(0x20000), IOVA) == 0x8000
    with pytest.raises(PartialBufferError):
        dev.write_slice(bytes(0x20000), IOVA)
    # unmapped or read-only IOVA pages: the translator's error, nothing written
    mem, iommu, page_of = big_fragmented(
        [(0, 0x40000)], seed=5, perm_of=lambda i: R if i == 20 else RW
    )
    before = mem.read_bytes(0, 0x40000)
    dev = IommuMemory(mem, iommu)
    with pytest.raises(InaccessibleError):
        dev.write_slice(bytes(0x20000), IOVA)
    assert dev.read_bytes(IOVA, 0x20000) == through(mem, page_of, 0, 0x20000)
    iommu.iotlb.invalidate_mapping(IOVA + 0x4000, BIG)
    with pytest.raises(CannotResolveError):
        dev.read_bytes(IOVA, 0x20000)
    assert mem.read_bytes(0, 0x40000) == before


def test_long_write_into_read_only_memory_is_refused(tmp_path):
    mem = readonly_file_memory(tmp_path / "ro.bin", bytes(0x20000), 0)
    iommu = IotlbIommu()
    iommu.iotlb.set_mapping(IOVA, 0, 0x20000, RW)
    dev = IommuMemory(mem, iommu)
    assert dev.read_bytes(IOVA, 0x20000) == bytes(0x20000)
    with pytest.raises(ReadOnlyMemoryError):
        dev.write_slice(b"\x01" * 0x20000, IOVA)


# -- regressions from review -----------------------------------------------------------------


def test_runs_far_past_a_region_never_touch_host_memory():
    """A mapping to a physical address 2**63 past a region must not reach host memory."""
    mem = GuestMemoryMmap.from_ranges([(0x1000, 0x10000)])
    victim = np.zeros(0x10000, dtype=np.uint8)
    iommu = IotlbIommu()
    paddr = (0x1000 + victim.ctypes.data - mem.get_host_address(0x1000)) % 2**64
    iommu.iotlb.set_mapping(0, paddr, 0x10000, RW)
    dev = IommuMemory(mem, iommu)
    with pytest.raises(InvalidGuestAddressError):
        dev.write(b"\xaa" * 0x10000, 0)
    with pytest.raises(InvalidGuestAddressError):
        dev.read(bytearray(0x10000), 0)
    assert not victim.any()


class ArrayIommu(IotlbIommu):
    """An IOTLB IOMMU whose ``translate_arrays`` answers something fixed."""

    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.iotlb.set_mapping(0, 0, 0x10000, RW)

    def translate_arrays(self, iova, length, access):
        return self.answer


U, S = np.uint64, np.int64


@pytest.mark.parametrize(
    "answer",
    [
        (np.array([0], U), np.array([0x20000], S)),  # more than asked
        (np.array([0], U), np.array([0x100], S)),  # less
        (np.array([], U), np.array([], S)),
        (np.array([0, 0], U), np.array([0x10001, -1], S)),
        (np.array([-1], S), np.array([0x10000], S)),
        (np.array([0, 0], U), np.array([2**63, 2**63 + 0x10000], U)),  # wraps to 0x10000
        (np.array([0.0]), np.array([65536.0])),
        (np.zeros((1, 1), U), np.array([[0x10000]], S)),
        ("not", "arrays", "at all"),
    ],
)
def test_translate_arrays_answers_are_checked(answer):
    dev = IommuMemory(GuestMemoryMmap.from_ranges([(0, 0x10000)]), ArrayIommu(answer))
    with pytest.raises(IommuMisconfiguredError):
        dev.read(bytearray(0x10000), 0)


def test_translate_arrays_valid_answers_of_any_integer_kind():
    for answer in [([0x8000, 0], [0x8000, 0x8000]), (np.array([0], S), np.array([0x10000], U))]:
        mem = GuestMemoryMmap.from_ranges([(0, 0x10000)])
        mem.write_slice(bytes(range(256)) * 256, 0)
        dev = IommuMemory(mem, ArrayIommu(answer))
        first = int(answer[0][0])
        want = mem.read_bytes(first, 0x10000 - first) + mem.read_bytes(0, first)
        assert dev.read_bytes(0, 0x10000) == want


def test_backend_closes_under_an_iommu_view_in_either_mode():
    for enabled in (False, True):
        mem = GuestMemoryMmap.from_ranges([(0, 0x1000)])
        dev = IommuMemory(mem, IotlbIommu(), use_iommu=enabled)
        mem.write_obj(7, 0x100, "<u8")
        dev.set_iommu_enabled(False)
        assert dev.read_obj(0x100, "<u8") == 7
        mem.close()
        with pytest.raises(InvalidGuestAddressError):
            dev.read_obj(0x100, "<u8")


def test_zero_length_accesses_are_translated(observed):
    """vm-memory: with the IOMMU on, a 0-byte access inside an entry denying it fails."""
    _, _, dev = observed
    for call in (
        lambda: dev.write(b"", 0x1800),
        lambda: dev.write_slice(b"", 0x1800),
        lambda: dev.get_slices(0x1800, 0, W),
        lambda: dev.read_volatile_from(0x1800, io.BytesIO(b"x"), 0),
    ):
        with pytest.raises(InaccessibleError):
            call()
    assert dev.read(bytearray(), 0x1800) == 0
    assert dev.write(b"", 0x1000) == 0  # an entry's first byte: nothing overlaps
    dev.set_iommu_enabled(False)
    assert dev.write(b"", 0x1800) == 0


def test_a_buffer_inside_guest_memory_is_copied_like_memmove():
    mem = GuestMemoryMmap.from_ranges([(0, 0x200000)])
    pattern = (np.arange(0x20010) * 37 % 256).astype(np.uint8)
    mem.write_slice(pattern, 0x100000)
    iommu = IotlbIommu()
    for k in range(0x20000 // 0x1000):  # every IOVA page lands one byte further on
        iommu.iotlb.set_mapping(k * 0x1000, 0x100001 + k * 0x1000, 0x1000, RW if k % 2 else W)
    dev = IommuMemory(mem, iommu)
    src = mem.get_slice(0x100000, 0x20000).as_array()  # overlaps where it is written
    dev.write(src, 0)
    model = bytearray(0x200000)  # piece after piece, each a memmove of the live bytes
    model[0x100000 : 0x100000 + pattern.size] = pattern.tobytes()
    for k in range(0x20):
        src_at, dst_at = 0x100000 + k * 0x1000, 0x100001 + k * 0x1000
        model[dst_at : dst_at + 0x1000] = model[src_at : src_at + 0x1000]
    assert mem.read_bytes(0x100000, 0x20010) == bytes(model[0x100000:0x120010])


@given(
    runs=st.lists(st.tuples(st.integers(0, 0x3FFFF), st.integers(1, 700)), min_size=1, max_size=300)
)
def test_one_call_copies_equal_the_piecewise_path(runs):
    """Any runs (short, long, overlapping, a last group of fewer than four) read and write
    exactly as the per-piece path does."""
    runs = [(a, min(n, 0x40000 - a)) for a, n in runs]
    count = sum(n for _, n in runs)
    answer = (np.array([a for a, _ in runs], U), np.array([n for _, n in runs], S))
    data = np.random.default_rng(count).integers(0, 256, max(count, 1), dtype=np.uint8)
    results = []
    for fast in (True, False):
        mem = GuestMemoryMmap.from_ranges([(0, 0x40000)])
        mem.write_slice(np.arange(0x40000, dtype=np.uint32).view(np.uint8)[:0x40000], 0)
        dev = IommuMemory(mem, PiecesIommu(runs, answer))
        out = bytearray(count)
        if fast:  # whatever the size: the one-call copy itself
            assert dev._copy_runs(memoryview(out), 0, False)
            assert dev._copy_runs(memoryview(data[:count]), 0, True)
        else:
            assert Bytes.read(dev, out, 0) == count
            assert Bytes.write(dev, data[:count], 0) == count
        results.append((bytes(out), mem.read_bytes(0, 0x40000)))
    assert results[0] == results[1]


class PiecesIommu:
    """Translates IOVA ``[0, sum)`` into the given runs, as pieces and as arrays."""

    def __init__(self, runs, answer):
        self.runs, self.answer = runs, answer

    def translate(self, iova, length, access):
        assert iova == 0 and length == sum(n for _, n in self.runs)
        return [MappedRange(a, n) for a, n in self.runs]

    def translate_arrays(self, iova, length, access):
        return self.answer
