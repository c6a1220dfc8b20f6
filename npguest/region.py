"""Guest memory regions: :class:`GuestRegionMmap`, and the sorted region table.

A :class:`GuestRegionMmap` places one :class:`~npguest.mapping.MmapRegion` at a guest
physical address.  It is itself a ``Bytes`` object addressed by region offset
(:class:`~npguest.address.MemoryRegionAddress` or ``int``), with vm-memory's region-level
rules: anything out of range or misaligned is an
:class:`~npguest.errors.InvalidBackendAddressError`.

:class:`RegionTable` is the sorted collection: a tuple of regions beside parallel
``uint64`` arrays of start and **exclusive end** addresses (a region cannot reach
``2**64``, so the end always fits), validated with vm-memory's rules.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .address import U64_MAX, GuestAddress, MemoryRegionAddress, _u64
from .bitmap import AtomicBitmap, Bitmap, BitmapFactory, BitmapSlice, NoBitmap
from .errors import (
    BitmapError,
    InvalidBackendAddressError,
    InvalidGuestRegionError,
    MemoryRegionOverlapError,
    MmapRegionError,
    NoMemoryRegionError,
    UnsortedMemoryRegionsError,
)
from .mapping import FileOffset, MmapRegion, _check_size
from .volatile import VolatileSlice, _Contiguous

__all__ = ["GuestRegionMmap", "RegionTable", "check_region_span", "regions_from_ranges"]

_CLOSED = memoryview(b"")  # the view of a closed region: every access is out of range


def check_region_span(addr: int, size: int) -> None:
    """Check that a region of ``size`` bytes can start at guest address ``addr``.

    Parameters
    ----------
    addr : int
        The start.
    size : int
        The size.

    Raises
    ------
    InvalidGuestRegionError
        ``addr + size`` passes ``2**64 - 1`` (a region cannot end at ``2**64``, as in
        vm-memory, so its last address is at most ``2**64 - 2``).
    """
    if addr + size > U64_MAX:
        raise InvalidGuestRegionError(addr, size)


class GuestRegionMmap(_Contiguous):
    """A host mapping placed at a guest physical address (vm-memory's ``GuestRegionMmap``).

    Parameters
    ----------
    mapping : MmapRegion
        The host memory (it may be shared by several regions, e.g. to re-base one).
    guest_base : int or GuestAddress
        Guest physical address of the mapping's first byte.

    Raises
    ------
    InvalidGuestRegionError
        The region would end past ``2**64 - 1``.

    Examples
    --------
    >>> r = GuestRegionMmap.from_range(0x1000, 0x1000)
    >>> r.write_obj(7, 0x10, '<u4'); r.read_obj(0x10, '<u4'), r.last_addr()
    (7, GuestAddress(0x1fff))
    """

    __slots__ = (
        "_bitmap",
        "_boff",
        "_end",
        "_guest_window",
        "_host",
        "_len",
        "_mapping",
        "_mv",
        "_off",
        "_rfast",
        "_rfasts",
        "_start",
        "_wfast",
        "_wfasts",
        "_window",
        "_windows",
    )

    def __init__(self, mapping: MmapRegion, guest_base: Any) -> None:
        if not isinstance(mapping, MmapRegion):
            raise TypeError(f"expected an MmapRegion, got {type(mapping).__name__}")
        start = _u64(guest_base, "guest base")
        check_region_span(start, mapping.size())
        mapping._check_open()
        self._mapping = mapping
        self._start, self._len = start, mapping.size()
        self._end = start + self._len
        self._mv, self._off, self._host = mapping._view, 0, mapping._host
        self._bitmap, self._boff = mapping._bitmap, 0
        self._set_window()

    @classmethod
    def from_range(
        cls,
        addr: Any,
        size: int,
        file_offset: FileOffset | None = None,
        *,
        readonly: bool = False,
        shared: bool = True,
        bitmap: BitmapFactory | Bitmap | None = None,
        page_size: int = 4096,
    ) -> GuestRegionMmap:
        """Map ``size`` bytes (anonymous, or a file) and place them at ``addr``.

        Parameters
        ----------
        addr : int or GuestAddress
            Guest physical start; need not be page aligned.
        size : int
            Bytes (> 0).
        file_offset : FileOffset, optional
            Back the region with this file range instead of anonymous memory.
        readonly, shared : bool, optional
            File mappings only: see :meth:`MmapRegion.from_file`.
        bitmap : Bitmap factory or Bitmap, optional
            Dirty tracking.
        page_size : int, optional
            Page size given to the bitmap factory.

        Returns
        -------
        GuestRegionMmap
            The region.

        Raises
        ------
        MmapRegionError
            Bad size, file or offset, or the mapping failed.
        InvalidGuestRegionError
            The region would end past ``2**64 - 1``.
        """
        start = _u64(addr, "guest address")
        if isinstance(size, int) and size > 0:
            check_region_span(start, size)
        if file_offset is None:
            mapping = MmapRegion.anonymous(
                size, readonly=readonly, bitmap=bitmap, page_size=page_size
            )
        else:
            mapping = MmapRegion.from_file(
                file_offset, size, readonly=readonly, shared=shared, bitmap=bitmap,
                page_size=page_size,
            )  # fmt: skip
        return cls(mapping, start)

    @classmethod
    def with_arc(cls, mapping: MmapRegion, guest_base: Any) -> GuestRegionMmap:
        """Place an existing mapping at ``guest_base`` (vm-memory's ``with_arc``).

        The mapping is shared, not copied: this is how a region is re-based
        (``remove_region``, then ``with_arc(removed.get_mmap(), new_base)``, then
        ``insert_region``).

        Parameters
        ----------
        mapping : MmapRegion
            The host memory.
        guest_base : int or GuestAddress
            The new guest start.

        Returns
        -------
        GuestRegionMmap
            A region over the same memory.
        """
        return cls(mapping, guest_base)

    def _set_window(self) -> None:
        super()._set_window()
        # the same run seen from guest physical addresses (GuestMemoryMmap's fast path)
        self._guest_window = (self._start, self._start + self._len, *self._window[2:])

    def _oob(self, addr: int) -> Exception:
        if self._mapping._closed:
            return MmapRegionError(f"the region at {self._start:#x} is closed")
        return InvalidBackendAddressError(addr, f"past the end of the {self._len}-byte region")

    def _misaligned(self, addr: int, host: int, alignment: int) -> Exception:
        return InvalidBackendAddressError(addr, f"not aligned to {alignment} bytes")

    def _overflow(self, addr: int, count: int) -> Exception:
        return InvalidBackendAddressError(addr, f"offset by {count:#x} would overflow")

    def _stream_pieces(self, addr: int, count: int, write: bool = False) -> list[Any]:
        if self._mapping._closed:  # else a read at 0 of the emptied view looks like EOF
            raise self._oob(addr)
        return super()._stream_pieces(addr, count, write)

    # -- GuestMemoryRegion ---------------------------------------------------------------
    def get_mmap(self) -> MmapRegion:
        """Return the host mapping (share it with :class:`GuestRegionMmap` to re-base).

        Returns
        -------
        MmapRegion
            The mapping.
        """
        return self._mapping

    def len(self) -> int:
        """Return the region's size in bytes.

        Returns
        -------
        int
            The size.
        """
        return self._len

    def __len__(self) -> int:
        return self._len

    def start_addr(self) -> GuestAddress:
        """Return the guest address of the first byte.

        Returns
        -------
        GuestAddress
            The start.
        """
        return GuestAddress(self._start)

    def _backed_spans(self, offset: int, count: int) -> list[tuple[int, int]]:
        """Return the ``[start, end)`` region offsets in ``[offset, offset + count)`` it backs.

        Every byte of a mapped region is backed; a dump's region may leave pages out.
        """
        end = min(offset + count, self._len)
        return [(offset, end)] if offset < end else []

    def last_addr(self) -> GuestAddress:
        """Return the guest address of the last byte (inclusive).

        Returns
        -------
        GuestAddress
            ``start + len - 1``.
        """
        return GuestAddress(self._end - 1)

    def bitmap(self) -> Bitmap:
        """Return the region's dirty bitmap (indexed by region offset).

        Returns
        -------
        Bitmap
            A :class:`~npguest.bitmap.BitmapSlice` at 0, or a :class:`~npguest.bitmap.NoBitmap`.
        """
        return NoBitmap() if self._bitmap is None else BitmapSlice(self._bitmap, 0)

    def mark_dirty(self, offset: int, length: int) -> None:
        """Mark ``[offset, offset + length)`` dirty after a raw (untracked) write.

        Parameters
        ----------
        offset : int
            Region offset of the first byte written.
        length : int
            Bytes written.
        """
        if self._bitmap is not None:
            self._bitmap.mark_dirty(_u64(offset, "offset"), _u64(length, "length"))

    def check_address(self, addr: Any) -> MemoryRegionAddress | None:
        """Return ``addr`` if it is an offset inside the region, else ``None``.

        Parameters
        ----------
        addr : int or MemoryRegionAddress
            A region offset.

        Returns
        -------
        MemoryRegionAddress or None
            The offset.
        """
        a = _u64(addr, "address")
        return MemoryRegionAddress(a) if a < self._len else None

    def address_in_range(self, addr: Any) -> bool:
        """Return whether ``addr`` is an offset inside the region.

        Parameters
        ----------
        addr : int or MemoryRegionAddress
            A region offset.

        Returns
        -------
        bool
            ``addr < len()``.
        """
        return _u64(addr, "address") < self._len

    def checked_offset(self, base: Any, offset: int) -> MemoryRegionAddress | None:
        """Return ``base + offset`` if that is an offset inside the region.

        Parameters
        ----------
        base : int or MemoryRegionAddress
            A region offset.
        offset : int
            Added to it.

        Returns
        -------
        MemoryRegionAddress or None
            The sum, or ``None`` if it is ``>= len()``.
        """
        end = _u64(base, "base") + _u64(offset, "offset")
        return MemoryRegionAddress(end) if end < self._len else None

    def to_region_addr(self, addr: Any) -> MemoryRegionAddress | None:
        """Translate a guest address to an offset in this region.

        Parameters
        ----------
        addr : int or GuestAddress
            A guest physical address.

        Returns
        -------
        MemoryRegionAddress or None
            ``addr - start``, or ``None`` outside the region.
        """
        a = _u64(addr, "address")
        return MemoryRegionAddress(a - self._start) if self._start <= a < self._end else None

    def get_host_address(self, addr: Any) -> int:
        """Return the host address of region offset ``addr`` (writes there are untracked).

        Parameters
        ----------
        addr : int or MemoryRegionAddress
            A region offset.

        Returns
        -------
        int
            The host virtual address.

        Raises
        ------
        InvalidBackendAddressError
            ``addr >= len()``.
        """
        a = _u64(addr, "address")
        if a >= self._len:
            raise self._oob(a)
        return self._host + a

    def file_offset(self) -> FileOffset | None:
        """Return the backing file and offset, or ``None`` for anonymous memory.

        Returns
        -------
        FileOffset or None
            The file.
        """
        return self._mapping.file_offset()

    def is_hugetlbfs(self) -> bool | None:
        """Return whether the backing file lives on hugetlbfs (see :class:`MmapRegion`).

        Returns
        -------
        bool or None
            ``None`` for anonymous memory.
        """
        return self._mapping.is_hugetlbfs()

    def is_readonly(self) -> bool:
        """Return whether the region is mapped read-only.

        Returns
        -------
        bool
            ``True`` if writes are refused.
        """
        return self._mapping.is_readonly()

    def get_slice(self, offset: Any, count: int) -> VolatileSlice:
        """Return region bytes ``[offset, offset + count)`` as a slice.

        Parameters
        ----------
        offset : int or MemoryRegionAddress
            Region offset.
        count : int
            Length.

        Returns
        -------
        VolatileSlice
            The slice (tracked by the region's bitmap).

        Raises
        ------
        InvalidBackendAddressError
            The range does not fit in the region.
        """
        offset, count = _u64(offset, "offset"), _u64(count, "count")
        self._span_end(offset, count)
        if self._mapping._closed:
            raise self._oob(offset)
        return VolatileSlice._over(self._mv, offset, count, self._bitmap, offset, self._host)

    def as_volatile_slice(self) -> VolatileSlice:
        """Return the whole region as a slice.

        Returns
        -------
        VolatileSlice
            The slice.
        """
        if self._mapping._closed:
            raise self._oob(0)
        return VolatileSlice._over(self._mv, 0, self._len, self._bitmap, 0, self._host)

    def as_array(self) -> np.ndarray:
        """Return the region's bytes as a zero-copy ``uint8`` numpy array (untracked writes).

        Returns
        -------
        numpy.ndarray
            The view.
        """
        return self._mapping.as_array()

    def close(self) -> None:
        """Unmap the region's memory (see :meth:`MmapRegion.close`).

        Afterwards every access raises :class:`~npguest.errors.MmapRegionError`.

        Raises
        ------
        MmapRegionError
            Views of the mapping are alive elsewhere (slices, arrays, other regions
            sharing it); the region stays usable.
        """
        if self._mapping._closed:
            return
        view, self._mv, self._len = self._mv, _CLOSED, 0
        self._set_window()
        del view
        try:
            self._mapping.close()
        except MmapRegionError:
            self._mv, self._len = self._mapping._view, self._end - self._start
            self._set_window()
            raise

    def __repr__(self) -> str:
        return (
            f"GuestRegionMmap([{self._start:#x}, {self._end:#x}), {self._len:#x} bytes, "
            f"{'file' if self.file_offset() is not None else 'anonymous'}, "
            f"{'ro' if self.is_readonly() else 'rw'})"
        )

    def _repr_html_(self) -> str:
        """Return the summary Jupyter shows (see :func:`npguest.display.region_html`)."""
        from .display import region_html

        return region_html(self)


class RegionTable:
    """An immutable, validated, sorted sequence of regions with ``uint64`` lookup tables.

    Parameters
    ----------
    regions : iterable of GuestRegionMmap
        Sorted by start address, non-overlapping.  May be empty.

    Raises
    ------
    UnsortedMemoryRegionsError
        Some region starts before the one listed before it.
    MemoryRegionOverlapError
        Two regions intersect (checked pairwise after the order, as vm-memory).

    Attributes
    ----------
    regions : tuple of GuestRegionMmap
        The regions.
    starts, ends : numpy.ndarray
        ``uint64`` start and exclusive end addresses.
    """

    __slots__ = (
        "_ends_t",
        "_starts_t",
        "ends",
        "hosts",
        "lens",
        "nbits",
        "others",
        "regions",
        "shifts",
        "starts",
        "tracked",
        "words",
    )

    def __init__(self, regions: Iterable[GuestRegionMmap] = ()) -> None:
        regions = tuple(regions)
        for r in regions:
            if not isinstance(r, GuestRegionMmap):
                raise TypeError(f"expected GuestRegionMmap objects, got {type(r).__name__}")
            if r._mapping._closed:
                raise MmapRegionError(f"the region at {r._start:#x} is closed")
        for prev, nxt in itertools.pairwise(regions):
            if prev._start > nxt._start:
                raise UnsortedMemoryRegionsError(prev._start, nxt._start)
            if prev._end > nxt._start:
                raise MemoryRegionOverlapError(prev._start, nxt._start)
        self.regions = regions
        self._starts_t = tuple(r._start for r in regions)
        self._ends_t = tuple(r._end for r in regions)
        self.starts = np.array(self._starts_t, dtype=np.uint64)
        self.ends = np.array(self._ends_t, dtype=np.uint64)
        self.lens = np.array([r._len for r in regions], dtype=np.int64)
        self.hosts = np.array([r._host for r in regions], dtype=np.int64)
        # dirty tracking for batch writes: a kernel marks AtomicBitmaps through the host
        # address of their words (pinned, so they never move); other bitmaps by method
        words, shifts, nbits, others = [], [], [], []
        for i, r in enumerate(regions):
            b = r._bitmap
            if type(b) is AtomicBitmap:
                b._pin()
                words.append(b._ptr)
                shifts.append(b._shift)
                nbits.append(b.len())
            else:
                words.append(0)
                shifts.append(0)
                nbits.append(0)
                if b is not None:
                    others.append(i)
        self.words = np.array(words, dtype=np.int64)
        self.shifts = np.array(shifts, dtype=np.int64)
        self.nbits = np.array(nbits, dtype=np.int64)
        self.tracked = any(words)
        self.others = tuple(others)
        for a in (
            self.starts,
            self.ends,
            self.lens,
            self.hosts,
            self.words,
            self.shifts,
            self.nbits,
        ):
            a.flags.writeable = False

    def inserted(self, region: GuestRegionMmap) -> RegionTable:
        """Return a new table with ``region`` added in start order.

        Parameters
        ----------
        region : GuestRegionMmap
            The region to add.

        Returns
        -------
        RegionTable
            The new table.

        Raises
        ------
        MemoryRegionOverlapError
            ``region`` intersects one already there.
        """
        regions = sorted((*self.regions, region), key=lambda r: r._start)
        return RegionTable(regions)

    def removed(self, base: int, size: int) -> tuple[RegionTable, GuestRegionMmap]:
        """Return a new table without the region at exactly ``base`` of exactly ``size`` bytes.

        Parameters
        ----------
        base : int
            The region's start.
        size : int
            Its length.

        Returns
        -------
        tuple of (RegionTable, GuestRegionMmap)
            The new table and the region removed.

        Raises
        ------
        NoMemoryRegionError
            No region matches.
        """
        for i, r in enumerate(self.regions):
            if r._start == base and r._len == size:
                return RegionTable(self.regions[:i] + self.regions[i + 1 :]), r
        raise NoMemoryRegionError(base, size)


def regions_from_ranges(
    ranges: Sequence[tuple[Any, ...]],
    *,
    bitmap: BitmapFactory | Bitmap | None,
    page_size: int,
    readonly: bool = False,
    shared: bool = True,
) -> list[GuestRegionMmap]:
    """Validate ``(addr, size[, file_offset])`` ranges, then map them in order.

    Sizes and spans of every range are checked before anything is mapped, then the
    order and overlap rules; a failure unmaps what was mapped.

    Parameters
    ----------
    ranges : sequence of tuples
        ``(addr, size)`` or ``(addr, size, file_offset_or_None)``.
    bitmap : Bitmap factory, optional
        Dirty tracking for each region.
    page_size : int
        Page size for the bitmap factory.
    readonly, shared : bool, optional
        For file-backed ranges.

    Returns
    -------
    list of GuestRegionMmap
        The regions.

    Raises
    ------
    NoMemoryRegionError, MmapRegionError, InvalidGuestRegionError,
    UnsortedMemoryRegionsError, MemoryRegionOverlapError
        As vm-memory's ``from_ranges``.
    """
    if not len(ranges):
        raise NoMemoryRegionError()
    if len(ranges) > 1 and isinstance(bitmap, Bitmap) and not isinstance(bitmap, type):
        raise BitmapError(
            "bitmap", type(bitmap).__name__,
            "one bitmap instance cannot track several regions: pass a factory (e.g. AtomicBitmap)",
        )  # fmt: skip
    spans = []
    for item in ranges:
        if not 2 <= len(item) <= 3:
            raise TypeError(f"a range is (addr, size) or (addr, size, file_offset), got {item!r}")
        start, size = _u64(item[0], "guest address"), _check_size(item[1])
        check_region_span(start, size)
        spans.append((start, size, item[2] if len(item) == 3 else None))
    for (s0, n0, _), (s1, _, _) in itertools.pairwise(spans):
        if s0 > s1:
            raise UnsortedMemoryRegionsError(s0, s1)
        if s0 + n0 > s1:
            raise MemoryRegionOverlapError(s0, s1)
    # On a failure, the mappings made so far are unmapped when they are collected.
    return [
        GuestRegionMmap.from_range(
            start, size, fo, readonly=readonly, shared=shared, bitmap=bitmap, page_size=page_size
        )
        for start, size, fo in spans
    ]
