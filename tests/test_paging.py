"""Tests of npguest.paging: X86PageTables against a scalar reference walker.

Tables are built in guest memory by :class:`Builder` (one table page allocated per new
table, entries written with ``write_obj``); :func:`ref_walk` and :func:`ref_mappings`
walk them in plain Python, one ``read_obj`` per entry or table.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npguest import FileOffset, GuestMemoryMmap
from npguest.errors import (
    CannotResolveError,
    GuestAddressOverflowError,
    GuestMemoryError,
    InaccessibleError,
    IommuMisconfiguredError,
    ReadOnlyMemoryError,
)
from npguest.iommu import Iommu, IommuMemory, MappedRange, Permissions
from npguest.paging import PageFlags, X86PageTables

P, RW, US, PS, PAT, NX = 1, 2, 4, 0x80, 0x1000, 1 << 63
KIB4, MIB2, MIB4, GIB = 1 << 12, 1 << 21, 1 << 22, 1 << 30
DEFAULT_MASK = ((1 << 52) - 1) & ~0xFFF
MEM_SIZE = 1 << 20

# the reference geometry: entry size, (shift, bits) per level, sizes of large pages
GEOMETRY = {
    "4level": (8, ((39, 9), (30, 9), (21, 9), (12, 9)), {GIB, MIB2}),
    "5level": (8, ((48, 9), (39, 9), (30, 9), (21, 9), (12, 9)), {GIB, MIB2}),
    "pae": (8, ((30, 2), (21, 9), (12, 9)), {MIB2}),
    "32bit": (4, ((22, 10), (12, 10)), {MIB4}),
}
PAGE_SIZES = {mode: sorted({KIB4} | large) for mode, (_, _, large) in GEOMETRY.items()}
MODES = list(GEOMETRY)
LEVEL_NAMES = {"4level": "PML4 PDPT PD PT", "5level": "PML5 PML4 PDPT PD PT",
               "pae": "PDPT PD PT", "32bit": "PD PT"}  # fmt: skip


def canonical(mode: str, va: int) -> int:
    bits = {"4level": 48, "5level": 57}.get(mode)
    if bits and va >> (bits - 1) & 1:
        return va | ((1 << 64) - (1 << bits))
    return va


class Builder:
    """Page tables of one mode in ``mem``, tables allocated upwards from ``0x1000``."""

    def __init__(self, mem: GuestMemoryMmap, mode: str, first_table: int = 0x1000) -> None:
        self.mem, self.mode = mem, mode
        self.esize, self.levels, self.large = GEOMETRY[mode]
        self.dtype = "<u8" if self.esize == 8 else "<u4"
        self.next = first_table
        self.root = self.alloc()
        self.tables = [self.root]
        self.entries: list[int] = []  # physical addresses of every entry written
        self.cr3 = self.root

    def alloc(self) -> int:
        addr, self.next = self.next, self.next + KIB4
        self.mem.write(bytes(KIB4), addr)
        return addr

    def entry_addr(self, table: int, depth: int, va: int) -> int:
        shift, bits = self.levels[depth]
        return table + ((va >> shift) & ((1 << bits) - 1)) * self.esize

    def read(self, addr: int) -> int:
        return int(self.mem.read_obj(addr, self.dtype))

    def write(self, value: int, addr: int) -> None:
        self.mem.write_obj(value, addr, self.dtype)
        self.entries.append(addr)

    def table_flags(self, depth: int, flags: int) -> int:
        return P if self.mode == "pae" and depth == 0 else flags

    def map(self, va, pa, size=KIB4, flags=P | RW | US, table_flags=P | RW | US, at=None):
        """Map ``[va, va + size)`` to ``pa``; ``at`` overrides the flags of single levels.

        Returns the physical addresses of the entries of the walk, top-down.
        """
        at = at or {}
        leaf_depth = next(d for d, (shift, _) in enumerate(self.levels) if 1 << shift == size)
        table, walk = self.root, []
        for depth in range(leaf_depth):
            ea = self.entry_addr(table, depth, va)
            walk.append(ea)
            e = self.read(ea)
            if e & P and not e & PS:
                table = e & DEFAULT_MASK
            else:
                table = self.alloc()
                self.tables.append(table)
            self.write(table | at.get(depth, self.table_flags(depth, table_flags)), ea)
        ea = self.entry_addr(table, leaf_depth, va)
        walk.append(ea)
        value = pa | at.get(leaf_depth, flags)
        if size != KIB4:
            value |= PS
            if self.esize == 4:  # PSE-36
                value = (value & 0xFFFFFFFF) | ((pa >> 32) & 0xFF) << 13
        self.write(value, ea)
        return walk

    def tables_for(self, mem=None, **kw) -> X86PageTables:
        return X86PageTables(mem or self.mem, self.cr3, self.mode, **kw)


# -- the reference ------------------------------------------------------------------------
def ref_walk(mem, mode, cr3, va, *, pse=True, nx=True, phys_mask=DEFAULT_MASK):
    """Return ``(paddr, size, flags)`` of ``va``, or ``None`` when it does not translate."""
    esize, levels, large = GEOMETRY[mode]
    dtype = "<u8" if esize == 8 else "<u4"
    if mode in ("4level", "5level"):
        bits = 48 if mode == "4level" else 57
        if va >> (bits - 1) not in (0, (1 << (65 - bits)) - 1):
            return None
    elif va >> 32:
        return None
    table = {"pae": cr3 & 0xFFFFFFE0, "32bit": cr3 & 0xFFFFF000}.get(mode, cr3 & phys_mask)
    w = u = True
    x = False
    for depth, (shift, bits) in enumerate(levels):
        ea = table + ((va >> shift) & ((1 << bits) - 1)) * esize
        if not mem.check_range(ea, esize):
            return None
        e = int(mem.read_obj(ea, dtype))
        if not e & P:
            return None
        if not (mode == "pae" and depth == 0):
            w, u, x = w and bool(e & RW), u and bool(e & US), x or bool(nx and e & NX)
        size = 1 << shift
        is_large = size in large and e & PS and (pse or mode != "32bit")
        if depth == len(levels) - 1 or is_large:
            base = e & phys_mask & ~(size - 1)
            if esize == 4 and size > KIB4:
                base |= (((e >> 13) & 0xFF) << 32) & phys_mask
            flags = (RW if w else 0) | (US if u else 0) | (NX if x else 0)
            return base | (va & (size - 1)), size, flags
        table = e & phys_mask
    raise AssertionError("unreachable")


def ref_mappings(mem, mode, cr3, *, phys_mask=DEFAULT_MASK):
    """Enumerate every mapping by visiting the tables recursively, then coalesce."""
    esize, levels, large = GEOMETRY[mode]
    dtype = "<u8" if esize == 8 else "<u4"
    found = []

    def visit(table, depth, prefix):
        shift, bits = levels[depth]
        n = 1 << bits
        if mem.check_range(table, n * esize):
            entries = mem.read_obj(table, np.dtype((dtype, (n,)))).tolist()
        else:  # partly backed: entry by entry
            eas = [table + i * esize for i in range(n)]
            entries = [int(mem.read_obj(a, dtype)) if mem.check_range(a, esize) else 0 for a in eas]
        for i, e in enumerate(entries):
            if not e & P:
                continue
            va = prefix | i << shift
            is_large = (1 << shift) in large and e & PS
            if depth == len(levels) - 1 or is_large:
                pa, size, flags = ref_walk(mem, mode, cr3, canonical(mode, va))
                found.append((canonical(mode, va), pa, size, flags))
            else:
                visit(e & phys_mask, depth + 1, va)

    root = {"pae": cr3 & 0xFFFFFFE0, "32bit": cr3 & 0xFFFFF000}.get(mode, cr3 & phys_mask)
    visit(root, 0, 0)
    found.sort()
    merged = []
    for va, pa, size, flags in found:
        if merged:
            v0, p0, s0, f0 = merged[-1]
            if v0 + s0 == va and p0 + s0 == pa and f0 == flags:
                merged[-1] = (v0, p0, s0 + size, flags)
                continue
        merged.append((va, pa, size, flags))
    return merged


def as_rows(mappings):
    return list(zip(*(a.tolist() for a in mappings), strict=True))


@pytest.fixture
def mem():
    with GuestMemoryMmap.from_ranges([(0, MEM_SIZE)]) as m:
        yield m


def va_for(mode: str, size: int) -> int:
    """A VA aligned to ``size`` with non-zero indices at several levels."""
    if mode in ("pae", "32bit"):
        return 0xC0000000 + 3 * MIB4 if size != GIB else None
    va = 0x7F12_3456_0000 if mode == "4level" else 0x00AB_7F12_3456_0000
    return va & ~(size - 1)


# -- mapping page sizes -------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "size"), [(m, s) for m in MODES for s in PAGE_SIZES[m]], ids=str)
def test_page_sizes(mem, mode, size):
    b = Builder(mem, mode)
    va = va_for(mode, size)
    pa = (0x2340_0000 if (mode, size) == ("32bit", KIB4) else 0x1_2340_0000) & ~(size - 1)
    b.map(va, pa, size)
    pt = b.tables_for()
    probes = np.array([va, va + 8, va + size - 1, va + size, va - 1], dtype=np.uint64)
    paddr, valid, psize = pt.translate_many(probes)
    assert valid.tolist() == [True, True, True, False, False]
    assert paddr[:3].tolist() == [pa, pa + 8, pa + size - 1]
    assert psize.tolist() == [size] * 3 + [0, 0]
    for v in probes.tolist():
        ref = ref_walk(mem, mode, b.cr3, v)
        assert ref == (None if ref is None else (pa + v - va, size, RW | US))
    assert pt.translate(va + 4, size - 4, Permissions.READ_WRITE) == [MappedRange(pa + 4, size - 4)]
    assert as_rows(pt.mappings()) == [(va, pa, size, RW | US)] == ref_mappings(mem, mode, b.cr3)


def test_protocol_and_properties(mem):
    b = Builder(mem, "4level")
    pt = b.tables_for()
    assert isinstance(pt, Iommu)
    assert (pt.memory, pt.cr3, pt.mode) == (mem, b.cr3, "4level")
    assert repr(pt) == "X86PageTables(cr3=0x1000, mode='4level')"
    assert pt.translate(0, 0, Permissions.WRITE) == []


def test_shapes_are_kept(mem):
    b = Builder(mem, "4level")
    b.map(0x5000, 0x9000)
    pt = b.tables_for()
    paddr, valid, size = pt.translate_many(0x5010)
    assert paddr.shape == valid.shape == size.shape == ()
    assert int(paddr) == 0x9010
    grid = np.array([[0x5000, 0x6000], [0x5FFF, 0]], dtype=np.uint64)
    paddr, valid, size = pt.translate_many(grid)
    assert paddr.shape == (2, 2) and valid.tolist() == [[True, False], [True, False]]
    paddr, valid, size = pt.translate_many([])
    assert paddr.shape == (0,) and paddr.dtype == np.uint64 and valid.dtype == bool


# -- entry formats ------------------------------------------------------------------------
def test_pse36(mem):
    b = Builder(mem, "32bit")
    b.map(0x8040_0000, 0xAB_C040_0000, MIB4)  # PA[39:32] = 0xAB in PDE[20:13]
    pde = b.read(b.root + 4 * (0x8040_0000 >> 22))
    assert (pde >> 13) & 0xFF == 0xAB
    pt = b.tables_for()
    paddr, _, size = pt.translate_many([0x8040_1234])
    assert paddr.tolist() == [0xAB_C040_1234] and size.tolist() == [MIB4]
    assert pt.translate(0x8040_1234, 4, Permissions.READ) == [MappedRange(0xAB_C040_1234, 4)]


def test_pse_disabled_reads_the_pde_as_a_table(mem):
    b = Builder(mem, "32bit")
    b.write(PS | P | RW, b.root)  # a 4 MiB page at 0x0 with PSE, a PT at 0x0 without
    b.write(0x7000 | P, 4 * 5)  # PTE 5 of that "table"
    big, small = b.tables_for(), b.tables_for(pse=False)
    assert big.translate_many([0x5123])[0].tolist() == [0x5123]
    paddr, valid, _ = small.translate_many([0x5123, 0x6000])
    assert paddr.tolist() == [0x7123, 0] and valid.tolist() == [True, False]
    assert ref_walk(mem, "32bit", b.cr3, 0x5123, pse=False) == (0x7123, KIB4, 0)


@pytest.mark.parametrize(("mode", "size"), [("4level", GIB), ("4level", MIB2), ("pae", MIB2)])
def test_pat_bit_masked_in_large_pages(mem, mode, size):
    b = Builder(mem, mode)
    va = va_for(mode, size)
    b.map(va, 0x4000_0000, size, flags=P | RW | PAT)
    assert b.tables_for().translate_many([va + 0x10])[0].tolist() == [0x4000_0010]
    # in a 4 KiB PTE bit 7 is PAT, not PS, and bit 12 is address
    b.map(va_for(mode, size) + 3 * size, 0x5000, flags=P | PS)
    assert b.tables_for().translate_many([va + 3 * size + 1])[0].tolist() == [0x5001]


def test_phys_mask_strips_a_c_bit(mem):
    cbit = 1 << 47
    b = Builder(mem, "4level")
    walk = b.map(0x40_0000, 0x1234_5000)
    for ea in walk:  # the C-bit in every table pointer and in the leaf
        b.write(b.read(ea) | cbit, ea)
    b.cr3 |= cbit
    plain, masked = b.tables_for(), b.tables_for(phys_mask=DEFAULT_MASK & ~cbit)
    with pytest.raises(CannotResolveError, match="not in guest memory"):
        plain.translate(0x40_0000, 1, Permissions.READ)
    assert masked.translate_many([0x40_0008])[0].tolist() == [0x1234_5008]
    assert ref_walk(mem, "4level", b.cr3, 0x40_0008, phys_mask=DEFAULT_MASK & ~cbit)[0] == (
        0x1234_5008
    )
    assert as_rows(masked.mappings()) == [(0x40_0000, 0x1234_5000, KIB4, RW | US)]


def test_cr3_flag_bits_ignored(mem):
    b = Builder(mem, "4level")
    b.map(0x1000, 0x8000)
    pcid = b.tables_for()
    pcid_cr3 = X86PageTables(mem, b.cr3 | (1 << 63) | 0xABC)
    assert (
        pcid.translate_many([0x1000])[0].tolist() == pcid_cr3.translate_many([0x1000])[0].tolist()
    )
    # PAE roots are 32-byte aligned: CR3[31:5]
    mem.write(bytes(KIB4), 0x20000)
    pae = Builder(mem, "pae", first_table=0x20000)
    pae.root = 0x20020
    pae.map(0xC000_0000, 0x9000)
    pt = X86PageTables(mem, 0x20020 | 0x18, "pae")  # PWT | PCD
    assert pt.translate_many([0xC000_0004])[0].tolist() == [0x9004]


def test_nx_and_user_flags(mem):
    b = Builder(mem, "4level")
    b.map(0x1000, 0x8000, table_flags=P | RW | US | NX)
    b.map(0x20_0000, 0x9000, flags=P | RW)  # supervisor page
    rows = as_rows(b.tables_for().mappings())
    assert rows == [(0x1000, 0x8000, KIB4, RW | US | NX), (0x20_0000, 0x9000, KIB4, RW)]
    assert PageFlags(rows[0][3]) == PageFlags.WRITE | PageFlags.USER | PageFlags.NX
    assert as_rows(b.tables_for(nx=False).mappings())[0][3] == RW | US


# -- failures -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_not_present_at_every_level(mem, mode):
    va = va_for(mode, KIB4)
    for depth in range(len(GEOMETRY[mode][1])):
        b = Builder(mem, mode)
        walk = b.map(va, 0x7000)
        b.write(b.read(walk[depth]) & ~P, walk[depth])
        pt = b.tables_for()
        assert pt.translate_many([va])[1].tolist() == [False]
        assert ref_walk(mem, mode, b.cr3, va) is None
        name = LEVEL_NAMES[mode].split()[depth]
        with pytest.raises(CannotResolveError) as info:
            pt.translate(va, 16, Permissions.NO_ACCESS)
        assert f"virtual address {va:#x}: its {name} entry at physical {walk[depth]:#x}" in str(
            info.value
        )
        assert "is not present" in str(info.value)
        assert pt.mappings()[0].size == 0 and ref_mappings(mem, mode, b.cr3) == []


@pytest.mark.parametrize(
    ("mode", "bad", "good"),
    [
        (
            "4level",
            [1 << 47, (1 << 63) | 0x1000, 1 << 48],
            [0xFFFF_8000_0000_1000, (1 << 47) - KIB4],
        ),
        ("5level", [1 << 56, 1 << 63, 1 << 57], [1 << 47, 0xFF80_0000_0000_1000, (1 << 56) - KIB4]),
        ("pae", [1 << 32, 1 << 63], [0xFFFF_F000]),
        ("32bit", [1 << 32, 1 << 40], [0xFFFF_F000]),
    ],
)
def test_out_of_range_addresses(mem, mode, bad, good):
    b = Builder(mem, mode)
    for i, va in enumerate(good):
        b.map(va, 0x10000 * (i + 1))
    pt = b.tables_for()
    valid = pt.translate_many(good + bad)[1]
    assert valid.tolist() == [True] * len(good) + [False] * len(bad)
    what = "not canonical" if "level" in mode else "above 4 GiB"
    for va in bad:
        assert ref_walk(mem, mode, b.cr3, va) is None
        with pytest.raises(CannotResolveError, match=f"{va:#x} is {what} under {mode} paging"):
            pt.translate(va, 1, Permissions.READ)
    assert pt.mappings()[0].tolist() == sorted(good)
    # a range running off the end of the address space (or into the non-canonical hole)
    with pytest.raises(CannotResolveError, match=f"{good[-1] + KIB4:#x} is {what}"):
        pt.translate(good[-1], 2 * KIB4, Permissions.READ)


@pytest.mark.parametrize("mode", MODES)
def test_tables_in_unbacked_memory(mem, mode):
    va = va_for(mode, KIB4)
    for depth in range(len(GEOMETRY[mode][1]) - 1):
        b = Builder(mem, mode)
        walk = b.map(va, 0x7000)
        far = 0x80_0000_0000 if b.esize == 8 else 0x8000_0000
        b.write((b.read(walk[depth]) & 0xFFF) | far, walk[depth])
        pt = b.tables_for()
        assert pt.translate_many([va])[1].tolist() == [False]
        assert ref_walk(mem, mode, b.cr3, va) is None
        with pytest.raises(CannotResolveError, match="is not in guest memory"):
            pt.translate(va, 1, Permissions.READ)
        assert pt.mappings()[0].size == 0
    with pytest.raises(CannotResolveError, match="not in guest memory"):
        X86PageTables(mem, 0x4000_0000, mode).translate(0, 1, Permissions.READ)
    assert X86PageTables(mem, 0x4000_0000, mode).mappings()[0].size == 0


def test_tables_across_region_boundaries():
    # regions split inside a table page: adjacent (straddling works), then with a hole
    ranges = [(0, 0x2800), (0x2800, 0x1800), (0x4800, 0x1000)]
    with GuestMemoryMmap.from_ranges(ranges) as mem:
        b = Builder(mem, "32bit")  # root at 0x1000
        b.map(0x0000_0000, 0x8000)  # a PT at 0x2000, straddling two regions: PTE 0 at 0x2000
        b.map(0x003F_F000, 0x9000)  # ... PTE 1023 at 0x2FFC, in the second region
        b.map(0x0040_0000, 0xD000)  # a PT at 0x3000
        b.write(0x4000 | P | RW | US, b.root + 8)  # a PT at 0x4000: 0x4000-0x47FF is a hole
        b.write(0xC000 | P | RW | US, 0x4000 + 4 * 0x300)  # ... its PTE 0x300 is backed
        pt = b.tables_for()
        vas = [0, 0x3F_F000, 0x40_0000, 0x80_0000, 0x80_0000 + 0x300 * KIB4]
        paddr, valid, _ = pt.translate_many(vas)
        assert paddr.tolist() == [0x8000, 0x9000, 0xD000, 0, 0xC000]
        assert valid.tolist() == [True, True, True, False, True]
        expect = ref_mappings(mem, "32bit", b.cr3)
        assert as_rows(pt.mappings()) == expect
        assert [row[0] for row in expect] == [v for v, ok in zip(vas, valid, strict=True) if ok]


def test_write_needs_rw_at_every_level(mem):
    va = va_for("4level", KIB4)
    for depth in range(4):
        b = Builder(mem, "4level")
        b.map(va, 0x7000, at={depth: P | US})
        pt = b.tables_for()
        assert pt.translate(va, 8, Permissions.READ) == [MappedRange(0x7000, 8)]
        assert pt.translate(va, 8, Permissions.NO_ACCESS) == [MappedRange(0x7000, 8)]
        with pytest.raises(InaccessibleError, match=f"{va:#x} is mapped read-only"):
            pt.translate(va, 8, Permissions.WRITE)
        with pytest.raises(PermissionError):
            pt.translate(va, 8, Permissions.READ_WRITE)
        assert ref_walk(mem, "4level", b.cr3, va)[2] == US


def test_pae_pdpte_permission_bits_are_reserved(mem):
    b = Builder(mem, "pae")
    b.map(0x4000_1000, 0x7000)  # PDPTE holds only P
    assert b.tables_for().translate(0x4000_1000, 4, Permissions.WRITE) == [MappedRange(0x7000, 4)]


# -- ranges -------------------------------------------------------------------------------
def test_translate_coalesces_and_splits(mem):
    b = Builder(mem, "4level")
    base = 0x40_0000
    b.map(base, 0x10000)
    b.map(base + KIB4, 0x11000)  # contiguous with the first
    b.map(base + 2 * KIB4, 0x20000)  # not
    b.map(base + 3 * KIB4, 0x21000, flags=P)  # contiguous, read-only
    b.map(base + 4 * KIB4, 0x30000)
    pt = b.tables_for()
    assert pt.translate(base + 0x800, 4 * KIB4, Permissions.READ) == [
        MappedRange(0x10800, 2 * KIB4 - 0x800),
        MappedRange(0x20000, 2 * KIB4),
        MappedRange(0x30000, 0x800),
    ]
    with pytest.raises(InaccessibleError, match=f"{base + 3 * KIB4:#x} is mapped read-only"):
        pt.translate(base, 5 * KIB4, Permissions.WRITE)
    with pytest.raises(CannotResolveError, match=f"virtual address {base + 5 * KIB4:#x}:"):
        pt.translate(base, 6 * KIB4, Permissions.READ)
    # the first failure in address order wins: read-only page before the unmapped one
    with pytest.raises(InaccessibleError):
        pt.translate(base, 6 * KIB4, Permissions.WRITE)


def test_translate_long_ranges(mem):
    b = Builder(mem, "4level")
    base = 0x4000_0000  # 300 pages in pairs of contiguous frames, then a 2 MiB page
    for i in range(300):
        b.map(base + i * KIB4, 0x100000 + (i // 2) * 0x10000 + (i % 2) * KIB4)
    b.map(base + MIB2, 0x4000_0000 + MIB2, MIB2)
    b.map(base + GIB, 0x8000_0000, GIB)
    pt = b.tables_for()
    pieces = pt.translate(base + 8, 300 * KIB4 - 8, Permissions.READ)
    assert len(pieces) == 150 and sum(p.length for p in pieces) == 300 * KIB4 - 8
    assert pieces[0] == MappedRange(0x100008, 2 * KIB4 - 8)
    assert pieces[-1] == MappedRange(0x100000 + 149 * 0x10000, 2 * KIB4)
    assert pt.translate(base + GIB + 5, GIB - 5, Permissions.WRITE) == [
        MappedRange(0x8000_0005, GIB - 5)
    ]
    with pytest.raises(CannotResolveError, match=f"{base + 300 * KIB4:#x}"):
        pt.translate(base, MIB2 + 1, Permissions.READ)
    # the top of the address space: a range ending exactly at 2**64
    top = Builder(mem, "4level", first_table=0x80000)
    top.map((1 << 64) - MIB2, 0x20_0000, MIB2)
    assert top.tables_for().translate((1 << 64) - 16, 16, Permissions.READ) == [
        MappedRange(0x3F_FFF0, 16)
    ]


# -- loops --------------------------------------------------------------------------------
def test_self_referencing_tables_terminate(mem):
    b = Builder(mem, "4level")
    b.map(0x1000, 0x9000)
    b.write(b.root | P | RW, b.root + 8 * 510)  # the self-map, as Windows keeps one
    pt = b.tables_for()
    selfmap = canonical("4level", 510 << 39 | 510 << 30 | 510 << 21 | 510 << 12)
    assert pt.translate(selfmap, 8, Permissions.READ) == [MappedRange(b.root, 8)]
    assert ref_walk(mem, "4level", b.cr3, selfmap)[0] == b.root
    rows = as_rows(pt.mappings())
    assert rows == ref_mappings(mem, "4level", b.cr3)
    assert (selfmap, b.root, KIB4, RW) in rows


def test_looping_tables_terminate(mem):
    b = Builder(mem, "4level")
    walk = b.map(0x1000, 0x9000)
    pdpt = b.read(walk[0]) & DEFAULT_MASK
    b.write(b.root | P | RW | US, pdpt + 8)  # PDPT[1] -> PML4, PML4[0] -> PDPT
    pt = b.tables_for()
    rows = as_rows(pt.mappings())
    assert rows == ref_mappings(mem, "4level", b.cr3)
    va = GIB | 0  # PML4[0] -> PDPT[1] -> PML4 (as PD) [0] -> PDPT (as PT) [0] -> PD page
    assert pt.translate_many([va])[0].tolist() == [ref_walk(mem, "4level", b.cr3, va)[0]]


def test_pathological_output_is_bounded(mem):
    b = Builder(mem, "4level")
    mem.write_objs(np.uint64(b.root | P), b.root + 8 * np.arange(512, dtype=np.uint64), "<u8")
    pt = b.tables_for()
    with pytest.raises(CannotResolveError, match="more than max_tables=32768") as info:
        pt.mappings()
    assert pickle.loads(pickle.dumps(info.value)).args == info.value.args
    with pytest.raises(CannotResolveError, match="the PDPT level has 512 tables"):
        pt.mappings(max_tables=100)
    assert pt.translate_many([123])[0].tolist() == [b.root + 123]  # 4 hops to itself


# -- bad input ----------------------------------------------------------------------------
def test_bad_arguments(mem):
    with pytest.raises(IommuMisconfiguredError, match="mode 'x86' is not one of"):
        X86PageTables(mem, 0, "x86")
    with pytest.raises(IommuMisconfiguredError, match="phys_mask 0xfff has bits below bit 12"):
        X86PageTables(mem, 0, phys_mask=0xFFF)
    with pytest.raises(TypeError, match="cr3 must be an integer"):
        X86PageTables(mem, "0")
    with pytest.raises(GuestAddressOverflowError, match="cr3 -0x1"):
        X86PageTables(mem, -1)
    with pytest.raises(TypeError, match="memory must be a GuestMemoryMmap"):
        X86PageTables(b"", 0)
    pt = X86PageTables(mem, 0)
    with pytest.raises(GuestAddressOverflowError, match="iova -0x1"):
        pt.translate(-1, 1, Permissions.READ)
    with pytest.raises(GuestAddressOverflowError, match="length -2"):
        pt.translate(0, -2, Permissions.READ)
    with pytest.raises(GuestAddressOverflowError, match="overflows"):
        pt.translate((1 << 64) - 1, 2, Permissions.READ)
    with pytest.raises(IommuMisconfiguredError, match="access must be a Permissions"):
        pt.translate(0, 1, "r")
    with pytest.raises(IommuMisconfiguredError, match=r"Permissions value \(0..3\), got 4"):
        pt.translate(0, 1, 4)
    with pytest.raises(TypeError, match="must be an integer"):
        pt.translate_many([1.5])
    with pytest.raises(GuestAddressOverflowError):
        pt.translate_many([-1])
    with pytest.raises(TypeError):
        pt.mappings(max_tables=1.5)


def test_errors_pickle(mem):
    b = Builder(mem, "4level")
    b.map(0x1000, 0x8000, flags=P)
    pt = b.tables_for()
    raised = []
    for call in (
        lambda: pt.translate(0x1000, 8, Permissions.WRITE),
        lambda: pt.translate(0x2000, 8, Permissions.READ),
        lambda: pt.translate(1 << 47, 8, Permissions.READ),
        lambda: X86PageTables(mem, 1 << 40).translate(0, 1, Permissions.READ),
        lambda: pt.translate(-1, 1, Permissions.READ),
    ):
        with pytest.raises(GuestMemoryError) as info:
            call()
        raised.append(type(info.value))
        copy = pickle.loads(pickle.dumps(info.value))
        assert type(copy) is type(info.value) and str(copy) == str(info.value)
    assert raised[:2] == [InaccessibleError, CannotResolveError]


# -- properties ---------------------------------------------------------------------------
@st.composite
def address_spaces(draw):
    mode = draw(st.sampled_from(MODES))
    _, levels, _ = GEOMETRY[mode]
    indices = [st.sampled_from(sorted({0, 1, 2, (1 << bits) - 1, (1 << bits) // 2})) for _, bits
               in levels]  # fmt: skip
    maps = []
    for _ in range(draw(st.integers(1, 6))):
        size = draw(st.sampled_from(PAGE_SIZES[mode]))
        va = sum(draw(ix) << shift for ix, (shift, _) in zip(indices, levels, strict=True)
                 if 1 << shift >= size)  # fmt: skip
        top = 1 << (32 if (mode, size) == ("32bit", KIB4) else 36)
        frame = draw(st.integers(0, top // size - 1)) * size
        flags = P | draw(st.sampled_from([0, RW, US, RW | US])) | draw(st.sampled_from([0, NX]))
        maps.append((canonical(mode, va), frame, size, flags & ~NX if mode == "32bit" else flags))
    corruptions = draw(st.lists(st.tuples(st.sampled_from(["clear", "unbacked", "loop"]),
                                          st.integers(0, 1000)), max_size=3))  # fmt: skip
    return mode, maps, corruptions


@given(address_spaces(), st.data())
def test_walks_match_the_reference(space, data):
    mode, maps, corruptions = space
    with GuestMemoryMmap.from_ranges([(0, 0x40000)]) as mem:
        b = Builder(mem, mode)
        for va, pa, size, flags in maps:
            b.map(va, pa, size, flags)
        for kind, pick in corruptions:
            ea = b.entries[pick % len(b.entries)]
            e = b.read(ea)
            if kind == "clear":
                e &= ~P
            else:
                target = 0x100000 if kind == "unbacked" else b.tables[pick % len(b.tables)]
                e = (e & 0xFFF & ~PS) | target
            b.write(e, ea)
        pt = b.tables_for()
        near = [va + off for va, _, size, _ in maps for off in (0, size - 1, size)]
        noise = data.draw(st.lists(st.integers(0, (1 << 64) - 1), max_size=5))
        vas = [v % (1 << 64) for v in near + noise]
        paddr, valid, psize = pt.translate_many(vas)
        for i, va in enumerate(vas):
            ref = ref_walk(mem, mode, b.cr3, va)
            assert bool(valid[i]) == (ref is not None)
            got = (int(paddr[i]), int(psize[i]))
            assert got == ((0, 0) if ref is None else ref[:2])
            try:
                pieces = pt.translate(va, 1, Permissions.READ)
            except CannotResolveError:
                assert ref is None
            else:
                assert pieces == [MappedRange(ref[0], 1)]
        assert as_rows(pt.mappings()) == ref_mappings(mem, mode, b.cr3)


# -- IommuMemory over the guest's page tables ----------------------------------------------


@pytest.mark.parametrize("mode", ["4level", "5level", "pae", "32bit"])
def test_iommu_memory_reads_and_writes_virtual_memory(mem, mode):
    b = Builder(mem, mode)
    va = va_for(mode, KIB4)
    b.map(va, 0x80000)
    b.map(va + KIB4, 0x40000)  # the next virtual page is physically elsewhere
    b.map(va + 2 * KIB4, 0x50000, flags=P | US)  # read-only
    vm = IommuMemory(mem, b.tables_for())
    vm.write_slice(b"virtual!", va + KIB4 - 4)
    assert mem.read_bytes(0x80FFC, 4) == b"virt" and mem.read_bytes(0x40000, 4) == b"ual!"
    assert vm.read_bytes(va + KIB4 - 4, 8) == b"virtual!"
    assert vm.read_obj(va + KIB4 - 4, "<u8") == int.from_bytes(b"virtual!", "little")
    with pytest.raises(InaccessibleError):
        vm.write_obj(1, va + 2 * KIB4, "<u4")
    assert vm.read_obj(va + 2 * KIB4, "<u4") == 0
    with pytest.raises(CannotResolveError):
        vm.read_bytes(va + 3 * KIB4, 1)
    assert vm.read(bytearray(2 * KIB4 + 8), va + 8) == 2 * KIB4 + 8  # three pages, all mapped


def test_virtual_memory_out_of_a_dump_file(mem, tmp_path):
    b = Builder(mem, "4level")
    va = 0x7F12_3456_7000
    b.map(va, 0x60000)
    mem.write_slice(b"secret", 0x60010)
    dump = tmp_path / "guest.raw"
    dump.write_bytes(mem.read_bytes(0, MEM_SIZE))
    with open(dump, "rb") as f:
        image = GuestMemoryMmap.from_ranges_with_files(
            [(0, MEM_SIZE, FileOffset(f, 0))], readonly=True
        )
    vm = IommuMemory(image, X86PageTables(image, b.cr3))
    assert vm.read_bytes(va + 0x10, 6) == b"secret"
    with pytest.raises(ReadOnlyMemoryError):
        vm.write_slice(b"x", va)
    image.close()
