"""A guest's own x86 page tables as an :class:`~npguest.iommu.Iommu`: virtual -> physical.

:class:`X86PageTables` walks the tables a guest OS keeps in its physical memory (rooted
at a CR3 value) for the four x86 paging modes: 32-bit legacy (with PSE and PSE-36),
PAE, and 4- and 5-level long mode.  Each mode is a row of data -- its levels, their
index bits and which of them may map a large page -- and one walker serves them all.

The walk is vectorised: for N virtual addresses it gathers each level's entries with
one :meth:`~npguest.GuestMemoryMmap.read_objs` of physical memory, then masks them into
``present``, ``leaf`` and ``next table`` arrays (4 or 5 gathers instead of N x 4 Python
reads).  Table pages that no guest memory backs make a translation fail; they never
raise anything else.  Reserved bits are not checked (a CPU would raise #PF(RSVD));
software PTE formats (Linux PROT_NONE, Windows transition/prototype PTEs) are not
decoded: a non-present entry is unmapped.
"""

from __future__ import annotations

import enum
import operator
from typing import Any, NamedTuple

import numpy as np

from .address import _u64, address_array
from .errors import (
    CannotResolveError,
    GuestAddressOverflowError,
    InaccessibleError,
    InvalidGuestAddressError,
    IommuMisconfiguredError,
)
from .iommu import MappedRange, Permissions, _permissions

__all__ = ["PageFlags", "X86PageTables"]

_PRESENT, _RW, _US, _PS = 1 << 0, 1 << 1, 1 << 2, 1 << 7
_NX = 1 << 63
_PAGE = 1 << 12
_DEFAULT_PHYS_MASK = ((1 << 52) - 1) & ~(_PAGE - 1)  # bits 51:12
_U64 = np.uint64
_ALL = (1 << 64) - 1


class PageFlags(enum.IntFlag):
    """Effective flags of a mapping, combined over every level of its walk.

    The values are the entry bits themselves.  ``WRITE`` and ``USER`` are set when
    *every* level has R/W (bit 1), resp. U/S (bit 2); ``NX`` when *any* level has XD
    (bit 63) and NX is enabled.  Levels whose permission bits are reserved (PAE PDPTEs)
    do not restrict.

    Examples
    --------
    >>> flags = PageFlags(0x8000000000000002)
    >>> PageFlags.WRITE in flags, PageFlags.USER in flags, flags == 1 << 63 | 2
    (True, False, True)
    """

    WRITE = _RW
    USER = _US
    NX = _NX


class _Level(NamedTuple):
    """One level of a walk: the VA bits indexing its table and what its entries may map."""

    name: str
    shift: int  # lowest VA bit of the index; a leaf here maps 1 << shift bytes
    bits: int  # index width: the table holds 1 << bits entries
    large: bool  # PS (bit 7) may make an entry a leaf (a large page)
    perms: bool  # R/W, U/S and XD take effect (reserved in PAE PDPTEs)


class _Mode(NamedTuple):
    """A paging mode: entry size, levels top-down and the virtual address space."""

    entry: np.dtype
    levels: tuple[_Level, ...]
    va_bits: int  # VAs above 2**va_bits are non-canonical (long mode) or out of range
    canonical: bool  # long mode: VA[63:va_bits-1] must all equal bit va_bits-1
    root_mask: int | None  # CR3 bits holding the root table; None: the phys_mask
    legacy_pse: bool  # large pages need CR4.PSE, and PSE-36 puts PA[39:32] in PDE[20:13]


_PDPT = _Level("PDPT", 30, 9, True, True)
_PD = _Level("PD", 21, 9, True, True)
_PT = _Level("PT", 12, 9, False, True)
_PML4 = _Level("PML4", 39, 9, False, True)
_Q, _D = np.dtype("<u8"), np.dtype("<u4")
_MODES = {
    "4level": _Mode(_Q, (_PML4, _PDPT, _PD, _PT), 48, True, None, False),
    "5level": _Mode(
        _Q, (_Level("PML5", 48, 9, False, True), _PML4, _PDPT, _PD, _PT), 57, True, None, False
    ),
    "pae": _Mode(
        _Q, (_Level("PDPT", 30, 2, False, False), _PD, _PT), 32, False, 0xFFFF_FFE0, False
    ),
    "32bit": _Mode(
        _D,
        (_Level("PD", 22, 10, True, True), _Level("PT", 12, 10, False, True)),
        32,
        False,
        0xFFFF_F000,
        True,
    ),
}

# why a walk failed (``_Walk.fault``)
_OK, _OUT_OF_RANGE, _NOT_PRESENT, _UNBACKED = 0, 1, 2, 3


class _Walk(NamedTuple):
    """The outcome of walking flat virtual addresses (arrays of their length)."""

    paddr: np.ndarray  # uint64, 0 where the walk failed
    size: np.ndarray  # uint64 page size, 0 where the walk failed
    flags: np.ndarray  # uint64 PageFlags
    fault: np.ndarray  # int8: _OK, _OUT_OF_RANGE, _NOT_PRESENT or _UNBACKED
    level: np.ndarray  # int8: index of the level that failed
    entry: np.ndarray  # uint64: physical address of the entry that failed


def _backed(memory: Any, addrs: np.ndarray, size: int) -> np.ndarray:
    """Return whether each ``[addr, addr + size)`` is wholly backed by ``memory``'s regions."""
    first, _ = memory.locate(addrs, strict=False)
    last, _ = memory.locate(addrs + _U64(size - 1), strict=False)
    # an object may straddle regions with no gap between them
    gaps = np.concatenate(([0], np.cumsum(memory.ends[:-1] != memory.starts[1:])))
    return (first >= 0) & (last >= 0) & (gaps[last] == gaps[first])


def _read(
    memory: Any, addrs: np.ndarray, dtype: np.dtype, count: int = 1
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``count`` consecutive ``dtype`` entries at each address, reporting unbacked ones.

    One ``read_objs`` gather (a table of ``count`` entries is one object); only when it
    reports an unbacked object are the entries located and the backed ones read again.

    Returns
    -------
    tuple of (numpy.ndarray, numpy.ndarray or None)
        The entries, shaped ``addrs.shape`` (plus ``(count,)`` when ``count > 1``), zero
        where unbacked, and the ``bool`` mask of the backed ones (``None``: all are).
    """
    try:
        return memory.read_objs(addrs, np.dtype((dtype, (count,))) if count > 1 else dtype), None
    except InvalidGuestAddressError:
        pass  # some entries are unbacked: read the backed ones only
    if count > 1:
        addrs = addrs[:, None] + np.arange(count, dtype=_U64) * _U64(dtype.itemsize)
    backed = _backed(memory, addrs, dtype.itemsize)
    out = np.zeros(addrs.shape, dtype)
    out[backed] = memory.read_objs(addrs[backed], dtype)
    return out, backed


class X86PageTables:
    """A guest's x86 page tables, walked in its physical memory (an :class:`Iommu`).

    Parameters
    ----------
    memory : GuestMemoryMmap
        The guest physical memory holding the tables (any object with its batch API:
        ``read_objs``, ``locate(addrs, strict=False)``, ``starts`` and ``ends``).
    cr3 : int
        The CR3 value.  Long modes take the root table from ``cr3 & phys_mask`` (PCID
        and flag bits ignored), PAE from CR3[31:5] (4 PDPTEs), 32-bit from CR3[31:12].
    mode : {"4level", "5level", "pae", "32bit"}, optional
        The paging mode (default ``"4level"``).  ``"4level"``/``"5level"``: 8-byte
        entries, 48/57-bit canonical VAs, 1 GiB pages at the PDPT and 2 MiB at the PD.
        ``"pae"``: 32-bit VAs, 8-byte entries, 2 MiB pages at the PD.  ``"32bit"``:
        4-byte entries, 4 MiB pages at the PD when ``pse``, with PSE-36.
    nx : bool, optional
        EFER.NXE: bit 63 of 8-byte entries is XD, reported as :attr:`PageFlags.NX`
        (default ``True``).
    pse : bool, optional
        CR4.PSE: a 32-bit PDE with PS set maps a 4 MiB page (default ``True``); the
        other modes always honour PS.
    phys_mask : int, optional
        Entry bits holding a frame address (default bits 51:12, MAXPHYADDR 52).  Clear
        a bit to strip, e.g., an AMD SME/SEV C-bit.  Bits 11:0 must be clear.  Large
        pages also drop the bits below their size (PAT is bit 12 there).

    Raises
    ------
    ValueError
        ``mode`` is unknown or ``phys_mask`` has bits below 12.
    TypeError
        ``memory`` lacks the batch API, or ``cr3`` or ``phys_mask`` is not an integer.
    GuestAddressOverflowError
        ``cr3`` or ``phys_mask`` is not a 64-bit unsigned value.

    Notes
    -----
    ``translate`` grants ``READ`` (and ``NO_ACCESS``) to every present mapping and
    ``WRITE`` when R/W is set at every level; U/S and NX are reported in
    :meth:`mappings` flags but do not restrict (``Permissions`` has no user or execute
    access).

    Examples
    --------
    Map virtual pages 0x7F0000001000 and 0x7F0000002000 to physical 0x8000 and 0x9000
    (R/W, user) with a 4-level table at 0x1000:

    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x10000)])
    >>> va = 0x7F0000001000
    >>> tables = (0x1000, 0x2000, 0x3000, 0x4000)  # PML4, PDPT, PD, PT
    >>> for level in range(3):
    ...     index = (va >> (39 - 9 * level)) & 511
    ...     mem.write_obj(tables[level + 1] | 0b111, tables[level] + 8 * index, "<u8")
    >>> mem.write_objs([0x8007, 0x9007], [0x4008, 0x4010], "<u8")  # PTEs 1 and 2
    >>> pt = X86PageTables(mem, cr3=0x1000)
    >>> [(hex(b), n) for b, n in pt.translate(va + 0xFF0, 0x20, Permissions.WRITE)]
    [('0x8ff0', 32)]
    >>> paddr, valid, size = pt.translate_many([va + 8, va + 0x2000])
    >>> [hex(p) for p in paddr], valid.tolist(), size.tolist()
    (['0x8008', '0x0'], [True, False], [4096, 0])
    """

    __slots__ = ("_cr3", "_large", "_memory", "_mode", "_mode_name", "_nx", "_phys_mask", "_root")

    def __init__(
        self,
        memory: Any,
        cr3: int,
        mode: str = "4level",
        *,
        nx: bool = True,
        pse: bool = True,
        phys_mask: int | None = None,
    ) -> None:
        if mode not in _MODES:
            modes = ", ".join(map(repr, _MODES))
            raise IommuMisconfiguredError(0, 0, f"mode {mode!r} is not one of {modes}")
        missing = [a for a in ("read_objs", "locate", "starts", "ends") if not hasattr(memory, a)]
        if missing:
            raise TypeError(
                f"memory must be a GuestMemoryMmap (or have {', '.join(missing)}), "
                f"not {type(memory).__name__}"
            )
        self._mode = m = _MODES[mode]
        self._mode_name = mode
        self._memory = memory
        self._cr3 = _u64(cr3, "cr3")
        mask = _DEFAULT_PHYS_MASK if phys_mask is None else _u64(phys_mask, "phys_mask")
        if mask & (_PAGE - 1):
            raise IommuMisconfiguredError(0, 0, f"phys_mask {mask:#x} has bits below bit 12 set")
        self._phys_mask = mask
        self._nx = _NX if nx and m.entry == _Q else 0
        self._root = self._cr3 & (mask if m.root_mask is None else m.root_mask)
        self._large = tuple(lv.large and (pse or not m.legacy_pse) for lv in m.levels)

    @property
    def memory(self) -> Any:
        """GuestMemoryMmap: The physical memory holding the tables."""
        return self._memory

    @property
    def cr3(self) -> int:
        """int: The CR3 value the walks start from."""
        return self._cr3

    @property
    def mode(self) -> str:
        """str: The paging mode (``"4level"``, ``"5level"``, ``"pae"`` or ``"32bit"``)."""
        return self._mode_name

    def __repr__(self) -> str:
        return f"X86PageTables(cr3={self._cr3:#x}, mode={self._mode_name!r})"

    # -- the walk ------------------------------------------------------------------------
    def _in_range(self, va: np.ndarray) -> np.ndarray:
        """Return which VAs the mode can translate (canonical, or below 4 GiB)."""
        bits = self._mode.va_bits
        if not self._mode.canonical:
            return (va >> _U64(bits)) == 0
        top = va >> _U64(bits - 1)
        return (top == 0) | (top == _U64((1 << (65 - bits)) - 1))

    def _is_leaf(self, depth: int, entries: np.ndarray, present: np.ndarray) -> np.ndarray:
        """Return which present entries of level ``depth`` map a page (rather than a table)."""
        if depth == len(self._mode.levels) - 1:
            return present
        if self._large[depth]:
            return present & ((entries & _U64(_PS)) != 0)
        return np.zeros_like(present)

    def _page_base(self, depth: int, entries: np.ndarray) -> np.ndarray:
        """Return the physical base of the pages that leaf ``entries`` of level ``depth`` map."""
        shift = self._mode.levels[depth].shift
        base = entries & _U64(self._phys_mask & ~((1 << shift) - 1))  # drops PAT (bit 12)
        if self._mode.legacy_pse and shift > 12:  # PSE-36: PA[39:32] in PDE[20:13]
            base |= ((entries >> _U64(13)) & _U64(0xFF)) << _U64(32) & _U64(self._phys_mask)
        return base

    def _combine(self, depth: int, entries: np.ndarray, acc: np.ndarray) -> np.ndarray:
        """Fold level ``depth``'s entries into the walk's flag accumulator.

        The accumulator is the AND of every level's entry with XD inverted (starting
        from all ones), so R/W and U/S survive only if set everywhere and XD only if
        set nowhere; :meth:`_effective` turns it into :class:`PageFlags`.
        """
        if not self._mode.levels[depth].perms:
            return acc
        return acc & (entries ^ _U64(self._nx)) if self._nx else acc & entries

    def _effective(self, acc: np.ndarray) -> np.ndarray:
        """Return the :class:`PageFlags` of flag accumulators."""
        return (acc & _U64(_RW | _US | self._nx)) ^ _U64(self._nx)

    def _walk(self, va: np.ndarray) -> _Walk:
        """Walk flat ``uint64`` virtual addresses level by level (one gather per level)."""
        n = va.shape[0]
        out = _Walk(*(np.zeros(n, t) for t in (_U64, _U64, _U64, np.int8, np.int8, _U64)))
        ok = self._in_range(va)
        out.fault[~ok] = _OUT_OF_RANGE
        pos = np.flatnonzero(ok)  # indices of the addresses still walking
        v = va[pos]
        base = np.full(pos.shape, self._root, _U64)
        acc = np.full(pos.shape, _ALL, _U64)
        esize = _U64(self._mode.entry.itemsize)
        for depth, lv in enumerate(self._mode.levels):
            if not pos.size:
                break
            ea = base + ((v >> _U64(lv.shift)) & _U64((1 << lv.bits) - 1)) * esize
            e, backed = _read(self._memory, ea, self._mode.entry)
            e = e.astype(_U64, copy=False)
            present = (e & _U64(_PRESENT)) != 0
            if backed is not None:
                present &= backed
            acc = self._combine(depth, e, acc)
            leaf = self._is_leaf(depth, e, present)
            if leaf.any():
                size = 1 << lv.shift
                at = pos[leaf]
                out.paddr[at] = self._page_base(depth, e[leaf]) | (v[leaf] & _U64(size - 1))
                out.size[at] = size
                out.flags[at] = self._effective(acc[leaf])
            stopped = ~present
            if stopped.any():
                at = pos[stopped]
                out.fault[at] = (
                    _NOT_PRESENT
                    if backed is None
                    else np.where(backed[stopped], _NOT_PRESENT, _UNBACKED)
                )
                out.level[at] = depth
                out.entry[at] = ea[stopped]
            more = present & ~leaf
            base = e & _U64(self._phys_mask)
            if not more.all():
                pos, v, base, acc = pos[more], v[more], base[more], acc[more]
        return out

    def translate_many(self, vaddrs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Translate many virtual addresses at once.

        Every level is one vectorised gather of the entries of all addresses still
        walking; there is no per-address Python loop.

        Parameters
        ----------
        vaddrs : array_like
            Virtual addresses (any shape; canonical form in long modes).

        Returns
        -------
        tuple of numpy.ndarray
            ``(paddrs, valid, page_size)`` shaped like ``vaddrs``: ``uint64`` physical
            addresses, a ``bool`` mask of the addresses that translate, and the
            ``uint64`` size of the page mapping each one.  ``paddrs`` and ``page_size``
            are 0 where ``valid`` is ``False`` (not present, out of range, or a table in
            unbacked memory).

        Raises
        ------
        TypeError
            The addresses are not integers.
        GuestAddressOverflowError
            An address is negative or not below ``2**64``.

        Examples
        --------
        >>> from npguest import GuestMemoryMmap
        >>> mem = GuestMemoryMmap.from_ranges([(0, 0x3000)])
        >>> mem.write_obj(0x40000000 | 0x83, 0x1000, "<u4")   # PDE 0: 4 MiB page at 1 GiB
        >>> pt = X86PageTables(mem, cr3=0x1000, mode="32bit")
        >>> paddr, valid, size = pt.translate_many([[0x1234], [0x400000]])
        >>> paddr.ravel().tolist(), valid.ravel().tolist(), size.ravel().tolist()
        ([1073746484, 0], [True, False], [4194304, 0])
        """
        arr = address_array(vaddrs)
        w = self._walk(arr.reshape(-1))
        return (
            w.paddr.reshape(arr.shape),
            (w.fault == _OK).reshape(arr.shape),
            w.size.reshape(arr.shape),
        )

    # -- the Iommu protocol --------------------------------------------------------------
    def _fault(self, iova: int, length: int, va: int, w: _Walk, i: int) -> CannotResolveError:
        """Build the error of the failed walk ``i`` of ``w`` (virtual address ``va``)."""
        mode = self._mode
        code = int(w.fault[i])
        if code == _OUT_OF_RANGE:
            what = "not canonical" if mode.canonical else "above 4 GiB"
            why = f"virtual address {va:#x} is {what} under {self._mode_name} paging"
        else:
            level, entry = mode.levels[int(w.level[i])].name, int(w.entry[i])
            problem = "is not present" if code == _NOT_PRESENT else "is not in guest memory"
            why = f"virtual address {va:#x}: its {level} entry at physical {entry:#x} {problem}"
        return CannotResolveError(iova, length, why)

    def translate(self, iova: int, length: int, access: Permissions | int) -> list[MappedRange]:
        """Translate ``[iova, iova + length)`` for ``access`` (the :class:`Iommu` protocol).

        The range is walked in batches of 4 KiB-page probes (one vectorised walk per
        batch, doubling up to 65536 probes).

        Parameters
        ----------
        iova : int
            Virtual address of the first byte.
        length : int
            Bytes in the range.
        access : Permissions
            What the access needs: ``WRITE`` needs R/W at every level, ``READ`` and
            ``NO_ACCESS`` only present entries.

        Returns
        -------
        list of MappedRange
            Physically contiguous pieces in virtual address order (pages contiguous in
            both spaces coalesced); their lengths add up to ``length``.  ``[]`` when
            ``length`` is 0.

        Raises
        ------
        CannotResolveError
            Some page of the range is not mapped: not present, not canonical (or above
            4 GiB), or a table lies outside guest memory.  Names the first such address.
        InaccessibleError
            Some page is mapped read-only and ``access`` writes.  Raised instead when
            it comes before the first unmapped page.
        GuestAddressOverflowError
            ``iova`` or ``length`` is negative or not a u64, or ``iova + length``
            passes ``2**64``.
        TypeError
            An argument has the wrong type.
        ValueError
            ``access`` is not a ``Permissions`` value.

        Examples
        --------
        >>> from npguest import GuestMemoryMmap
        >>> mem = GuestMemoryMmap.from_ranges([(0, 0x4000)])
        >>> mem.write_obj(0x2000 | 1, 0x1000, "<u8")        # PDPTE 0 -> PD at 0x2000
        >>> mem.write_obj(0x200000 | 0x83, 0x2000, "<u8")  # PDE 0: 2 MiB at 2 MiB, R/W
        >>> pt = X86PageTables(mem, cr3=0x1000, mode="pae")
        >>> pt.translate(0x1FFFF0, 0x20, Permissions.READ)
        Traceback (most recent call last):
        ...
        npguest.errors.CannotResolveError: cannot translate I/O virtual address range \
0x1ffff0+32: virtual address 0x200000: its PD entry at physical 0x2008 is not present
        """
        va, n = _u64(iova, "iova"), _u64(length, "length")
        need = _permissions(access)
        if n == 0:
            return []
        if va + n > 1 << 64:
            raise GuestAddressOverflowError(va, n)
        end, cur, k = va + n, va, 1
        starts, lengths = [], []
        while cur < end:
            first_page = (cur >> 12) + 1
            probes = np.arange(first_page, min(first_page + k - 1, -(-end >> 12)), dtype=_U64)
            probes = np.concatenate(([_U64(cur)], probes << _U64(12)))
            w = self._walk(probes)
            bad = w.fault != _OK
            if need.has_write():
                bad |= (w.flags & _U64(_RW)) == 0
            if bad.any():
                i = int(np.argmax(bad))
                if w.fault[i] != _OK:
                    raise self._fault(va, n, int(probes[i]), w, i)
                why = f"virtual address {int(probes[i]):#x} is mapped read-only"
                raise InaccessibleError(va, n, why)
            page_last = (probes & ~(w.size - _U64(1))) + (w.size - _U64(1))  # no wrap at 2**64
            new_page = np.concatenate(([True], page_last[1:] != page_last[:-1]))
            last = np.minimum(page_last[new_page], _U64(end - 1))
            starts.append(w.paddr[new_page])
            lengths.append(last - probes[new_page] + _U64(1))
            cur, k = int(last[-1]) + 1, min(2 * k, 1 << 16)
        base, size = np.concatenate(starts), np.concatenate(lengths)
        run, total = _runs(base[1:] == base[:-1] + size[:-1], size)
        return [MappedRange(b, s) for b, s in zip(base[run].tolist(), total.tolist(), strict=True)]

    # -- enumeration ---------------------------------------------------------------------
    def mappings(
        self, *, max_tables: int = 1 << 15
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Enumerate every mapped range of the address space.

        The tables are read breadth-first, all the tables of a level in one vectorised
        read.  Looping or self-referencing tables terminate (the depth is the number of
        levels) and are enumerated as the CPU would see them, so each pointer back to a
        table maps that table's page again under another address.

        Parameters
        ----------
        max_tables : int, optional
            Most tables to read at one level (default 32768: up to 128 MiB of entries
            and 16M mappings per level; a self-referencing 4-level table reaching the
            bound at every level yields ~33M rows, ~4 GiB at peak).  It bounds memory and
            output size against pathological tables (every entry pointing back at its
            own table maps 512**4 pages); lower it for untrusted dumps.

        Returns
        -------
        tuple of numpy.ndarray
            ``(vaddr, paddr, size, flags)``, ``uint64`` each, sorted by ``vaddr``
            (canonical, sign-extended form in long modes): ranges contiguous in both
            address spaces with equal :class:`PageFlags` are coalesced.  Entries in
            unbacked memory map nothing.

        Raises
        ------
        CannotResolveError
            A level needs more than ``max_tables`` tables.
        TypeError
            ``max_tables`` is not an integer.

        Examples
        --------
        >>> from npguest import GuestMemoryMmap
        >>> mem = GuestMemoryMmap.from_ranges([(0, 0x3000)])
        >>> mem.write_obj(0x2000 | 0x7, 0x1000, "<u4")            # PDE 0 -> PT at 0x2000
        >>> mem.write_objs([0x8001, 0x9001], [0x2000, 0x2004], "<u4")  # 2 read-only pages
        >>> vaddr, paddr, size, flags = X86PageTables(mem, 0x1000, "32bit").mappings()
        >>> vaddr.tolist(), paddr.tolist(), size.tolist(), flags.tolist()
        ([0], [32768], [8192], [0])
        """
        limit = operator.index(max_tables)
        mode = self._mode
        vbase = np.zeros(1, _U64)
        base = np.full(1, self._root, _U64)
        acc = np.full(1, _ALL, _U64)
        found: list[tuple[np.ndarray, ...]] = []
        for depth, lv in enumerate(mode.levels):
            if base.size > limit:
                why = f"the {lv.name} level has {base.size} tables, more than max_tables={limit}"
                raise CannotResolveError(0, 1 << mode.va_bits, why)
            n = 1 << lv.bits
            e, backed = _read(self._memory, base, mode.entry, n)
            e = e.astype(_U64, copy=False)
            va = vbase[:, None] | (np.arange(n, dtype=_U64) << _U64(lv.shift))
            present = (e & _U64(_PRESENT)) != 0
            if backed is not None:
                present &= backed
            acc = np.broadcast_to(self._combine(depth, e, acc[:, None]), e.shape)
            leaf = self._is_leaf(depth, e, present)
            found.append(
                (
                    va[leaf],
                    self._page_base(depth, e[leaf]),
                    1 << lv.shift,
                    self._effective(acc[leaf]),
                )
            )
            more = present & ~leaf
            vbase, base, acc = va[more], e[more] & _U64(self._phys_mask), acc[more]
        vaddr = np.concatenate([f[0] for f in found])
        if mode.canonical:  # sign-extend bit va_bits - 1
            high = (vaddr >> _U64(mode.va_bits - 1)) != 0
            vaddr[high] |= _U64((1 << 64) - (1 << mode.va_bits))
        paddr = np.concatenate([f[1] for f in found])
        size = np.concatenate([np.full(f[0].shape, f[2], _U64) for f in found])
        pflags = np.concatenate([f[3] for f in found])
        order = np.argsort(vaddr, kind="stable")
        vaddr, paddr, size, pflags = vaddr[order], paddr[order], size[order], pflags[order]
        joins = (vaddr[1:] == vaddr[:-1] + size[:-1]) & (paddr[1:] == paddr[:-1] + size[:-1])
        run, total = _runs(joins & (pflags[1:] == pflags[:-1]), size)
        return vaddr[run], paddr[run], total, pflags[run]


def _runs(joins: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group pieces into runs: ``joins[i]`` is whether piece ``i + 1`` continues piece ``i``.

    Returns the index of each run's first piece and the run's total ``size``.
    """
    if not size.size:
        return np.zeros(0, np.intp), size
    run = np.flatnonzero(np.concatenate(([True], ~joins)))
    return run, np.add.reduceat(size, run)
