"""A VM's physical memory: :class:`GuestMemoryMmap`, a collection of mmap-backed regions.

Address lookup uses the region table (:class:`~npguest.region.RegionTable`): ``bisect``
over a tuple of Python ints with a last-hit cache for scalar accesses, and one numba
binary search per element for batches (``locate``, ``read_objs``, ``write_objs``).
Accesses that cross from one region into an adjacent one just work; a hole after the
first byte makes an access partial, exactly as vm-memory (see :class:`~npguest.access.Bytes`).

Collections are immutable: :meth:`GuestMemoryMmap.insert_region` and
:meth:`GuestMemoryMmap.remove_region` return new objects, so a snapshot held by a reader
never changes under it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from . import _checks
from .access import NO_FAST, NO_FASTS, NO_WINDOW, Bytes, Piece
from .address import U64_MAX, GuestAddress, MemoryRegionAddress, _u64
from .bitmap import BitmapFactory, mark_many
from .dtypes import codec
from .errors import (
    CallbackOutOfRangeError,
    GuestMemoryError,
    InvalidGuestAddressError,
    IommuMisconfiguredError,
    MmapRegionError,
    NoMemoryRegionError,
    PartialBufferError,
)
from .region import GuestRegionMmap, RegionTable, regions_from_ranges
from .volatile import VolatileSlice

__all__ = ["GuestMemoryMmap", "GuestMemorySliceIterator", "SliceIterator"]


class GuestMemoryMmap(Bytes):
    """Guest physical memory made of mmap-backed regions (vm-memory's ``GuestMemoryMmap``).

    Build one with :meth:`from_ranges`, :meth:`from_ranges_with_files` or
    :meth:`from_regions`; ``GuestMemoryMmap()`` is an empty collection.

    Parameters
    ----------
    regions : iterable of GuestRegionMmap, optional
        Sorted, non-overlapping regions (may be empty).

    Examples
    --------
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000), (0x4000, 0x1000)])
    >>> mem.write(b"hello!", 0xFFD)          # crosses into the adjacent region
    6
    >>> mem.read_bytes(0xFFD, 6), mem.num_regions(), mem.last_addr()
    (b'hello!', 3, GuestAddress(0x4fff))
    >>> mem.write(b"abcd", 0x1FFE)           # a hole follows: partial, like vm-memory
    2
    """

    __slots__ = (
        "__weakref__",
        "_rfast",
        "_rfasts",
        "_table",
        "_wfast",
        "_wfasts",
        "_window",
        "_windows",
        "_wstarts",
    )

    def __init__(self, regions: Sequence[GuestRegionMmap] | RegionTable = ()) -> None:
        table = regions if isinstance(regions, RegionTable) else RegionTable(regions)
        self._set_table(table)

    def _set_table(self, table: RegionTable) -> None:
        self._table = table
        self._window = NO_WINDOW
        self._wstarts = table._starts_t
        self._windows = tuple(r._guest_window for r in table.regions)
        self._rfast = self._wfast = NO_FAST
        self._rfasts = self._wfasts = NO_FASTS

    # -- construction --------------------------------------------------------------------
    @classmethod
    def from_ranges(
        cls,
        ranges: Sequence[tuple[Any, int]],
        *,
        bitmap: BitmapFactory | None = None,
        page_size: int = 4096,
    ) -> GuestMemoryMmap:
        """Map anonymous memory for each ``(addr, size)`` range.

        No page is touched: memory is supplied by the kernel on first access, so the
        cost does not depend on the sizes.

        Parameters
        ----------
        ranges : sequence of (int or GuestAddress, int)
            Sorted, non-overlapping guest ranges; sizes need not be page multiples.
        bitmap : Bitmap factory, optional
            Dirty tracking for every region, called as ``bitmap(size, page_size)``.
        page_size : int, optional
            Dirty-tracking granularity (default 4096).

        Returns
        -------
        GuestMemoryMmap
            The memory.

        Raises
        ------
        NoMemoryRegionError
            ``ranges`` is empty.
        MmapRegionError
            A size is not positive, or a mapping failed.
        InvalidGuestRegionError
            A range would end past ``2**64 - 1``.
        UnsortedMemoryRegionsError, MemoryRegionOverlapError
            The ranges are out of order or intersect.
        """
        for item in ranges:
            if len(item) != 2:
                raise TypeError(f"from_ranges takes (addr, size) pairs, got {item!r}")
        return cls(regions_from_ranges(ranges, bitmap=bitmap, page_size=page_size))

    @classmethod
    def from_ranges_with_files(
        cls,
        ranges: Sequence[tuple[Any, int, Any]],
        *,
        readonly: bool = False,
        shared: bool = True,
        bitmap: BitmapFactory | None = None,
        page_size: int = 4096,
    ) -> GuestMemoryMmap:
        """Map each ``(addr, size, file_offset)`` range, from a file or anonymous memory.

        Parameters
        ----------
        ranges : sequence of (int or GuestAddress, int, FileOffset or None)
            Sorted, non-overlapping ranges; ``None`` maps anonymous memory.
        readonly : bool, optional
            Map the files read-only (e.g. to analyse a dump without modifying it).
        shared : bool, optional
            ``True``: writes reach the files; ``False``: copy-on-write.
        bitmap : Bitmap factory, optional
            Dirty tracking for every region.
        page_size : int, optional
            Dirty-tracking granularity.

        Returns
        -------
        GuestMemoryMmap
            The memory.

        Raises
        ------
        NoMemoryRegionError, MmapRegionError, InvalidGuestRegionError,
        UnsortedMemoryRegionsError, MemoryRegionOverlapError
            As :meth:`from_ranges`; also a file too short for its range, or an offset
            that is not a page multiple.
        """
        for item in ranges:
            if len(item) != 3:
                raise TypeError(
                    f"from_ranges_with_files takes (addr, size, file_offset) triples, got {item!r}"
                )
        regions = regions_from_ranges(
            ranges, bitmap=bitmap, page_size=page_size, readonly=readonly, shared=shared
        )
        return cls(regions)

    @classmethod
    def from_regions(cls, regions: Sequence[GuestRegionMmap]) -> GuestMemoryMmap:
        """Build a memory from existing regions.

        Parameters
        ----------
        regions : sequence of GuestRegionMmap
            Sorted by start address, non-overlapping.

        Returns
        -------
        GuestMemoryMmap
            The memory.

        Raises
        ------
        NoMemoryRegionError
            ``regions`` is empty.
        UnsortedMemoryRegionsError, MemoryRegionOverlapError
            Bad order or an intersection.
        """
        regions = list(regions)
        if not regions:
            raise NoMemoryRegionError()
        return cls(regions)

    def insert_region(self, region: GuestRegionMmap) -> GuestMemoryMmap:
        """Return a new memory with ``region`` added (this one is unchanged).

        Parameters
        ----------
        region : GuestRegionMmap
            The region to hot-plug.

        Returns
        -------
        GuestMemoryMmap
            The new memory.

        Raises
        ------
        MemoryRegionOverlapError
            ``region`` intersects an existing one.
        """
        return type(self)(self._table.inserted(region))

    def remove_region(self, base: Any, size: int) -> tuple[GuestMemoryMmap, GuestRegionMmap]:
        """Return a new memory without the region at ``base`` of ``size`` bytes.

        Parameters
        ----------
        base : int or GuestAddress
            The region's exact start.
        size : int
            Its exact length.

        Returns
        -------
        tuple of (GuestMemoryMmap, GuestRegionMmap)
            The new memory and the removed region.

        Raises
        ------
        NoMemoryRegionError
            No region has that start and length.
        """
        table, region = self._table.removed(_u64(base, "base"), _u64(size, "size"))
        return type(self)(table), region

    # -- the collection ------------------------------------------------------------------
    @property
    def starts(self) -> np.ndarray:
        """numpy.ndarray: Region start addresses (``uint64``, sorted, read-only)."""
        return self._table.starts

    @property
    def ends(self) -> np.ndarray:
        """numpy.ndarray: Region exclusive end addresses (``uint64``, read-only)."""
        return self._table.ends

    def num_regions(self) -> int:
        """Return the number of regions.

        Returns
        -------
        int
            The count.
        """
        return len(self._table.regions)

    def iter(self) -> Iterator[GuestRegionMmap]:
        """Iterate over the regions in address order.

        Returns
        -------
        iterator of GuestRegionMmap
            The regions.
        """
        return iter(self._table.regions)

    __iter__ = iter

    def __len__(self) -> int:
        return len(self._table.regions)

    def _index(self, addr: int) -> int:
        """Index of the region holding ``addr`` (a validated int), or -1."""
        i = bisect_right(self._table._starts_t, addr) - 1
        if i >= 0 and addr < self._table._ends_t[i]:
            return i
        return -1

    def _backing(self, addr: int) -> tuple[GuestRegionMmap, int]:
        """Return the region holding ``addr`` (a validated int) and the offset in it, or raise."""
        i = self._index(addr)
        if i < 0:
            raise InvalidGuestAddressError(addr)
        r = self._table.regions[i]
        return r, addr - r._start

    def find_region(self, addr: Any) -> GuestRegionMmap | None:
        """Return the region holding guest address ``addr``, or ``None``.

        Parameters
        ----------
        addr : int or GuestAddress
            A guest physical address.

        Returns
        -------
        GuestRegionMmap or None
            The region.
        """
        i = self._index(_u64(addr, "address"))
        return self._table.regions[i] if i >= 0 else None

    def last_addr(self) -> GuestAddress:
        """Return the highest backed guest address (inclusive); 0 when empty.

        Returns
        -------
        GuestAddress
            The address.
        """
        ends = self._table._ends_t
        return GuestAddress(ends[-1] - 1 if ends else 0)

    def to_region_addr(self, addr: Any) -> tuple[GuestRegionMmap, MemoryRegionAddress] | None:
        """Return the region holding ``addr`` and the offset in it, or ``None``.

        Parameters
        ----------
        addr : int or GuestAddress
            A guest physical address.

        Returns
        -------
        tuple of (GuestRegionMmap, MemoryRegionAddress) or None
            The region and offset.
        """
        a = _u64(addr, "address")
        i = self._index(a)
        if i < 0:
            return None
        r = self._table.regions[i]
        return r, MemoryRegionAddress(a - r._start)

    def address_in_range(self, addr: Any) -> bool:
        """Return whether a region backs ``addr``.

        Parameters
        ----------
        addr : int or GuestAddress
            A guest physical address.

        Returns
        -------
        bool
            ``True`` if backed.
        """
        return self._index(_u64(addr, "address")) >= 0

    def check_address(self, addr: Any) -> GuestAddress | None:
        """Return ``addr`` as a :class:`GuestAddress` if backed, else ``None``.

        Parameters
        ----------
        addr : int or GuestAddress
            A guest physical address.

        Returns
        -------
        GuestAddress or None
            The address.
        """
        a = _u64(addr, "address")
        return GuestAddress(a) if self._index(a) >= 0 else None

    def check_range(self, base: Any, length: int, access: int = 0) -> bool:
        """Return whether every byte of ``[base, base + length)`` is backed.

        Adjacent regions count as one range; ``length == 0`` is ``True`` for any base
        (as vm-memory).

        Parameters
        ----------
        base : int or GuestAddress
            The start.
        length : int
            Bytes.
        access : Permissions, optional
            The access (the ``GuestMemory`` view protocol, see :mod:`npguest.iommu`);
            physical memory is its own identity view, so any access is allowed.

        Returns
        -------
        bool
            ``True`` if wholly backed.
        """
        a, n = _u64(base, "base"), _u64(length, "length")
        _access(access)
        if not n:
            return True
        end = a + n
        i = self._index(a)
        if i < 0:
            return False
        starts, ends = self._table._starts_t, self._table._ends_t
        while ends[i] < end:
            i += 1
            if i == len(starts) or starts[i] != ends[i - 1]:
                return False
        return True

    def checked_offset(self, base: Any, offset: int) -> GuestAddress | None:
        """Return ``base + offset`` if it does not overflow and *that address* is backed.

        As vm-memory, only the end point is checked (the range may span holes).

        Parameters
        ----------
        base : int or GuestAddress
            The start.
        offset : int
            Added to it.

        Returns
        -------
        GuestAddress or None
            The sum, or ``None``.
        """
        end = _u64(base, "base") + _u64(offset, "offset")
        if end > U64_MAX or self._index(end) < 0:
            return None
        return GuestAddress(end)

    def get_host_address(self, addr: Any) -> int:
        """Return the host address of guest address ``addr`` (writes there are untracked).

        Parameters
        ----------
        addr : int or GuestAddress
            A guest physical address.

        Returns
        -------
        int
            The host virtual address.

        Raises
        ------
        InvalidGuestAddressError
            ``addr`` is not backed.
        """
        r, off = self._backing(_u64(addr, "address"))
        return r.get_host_address(off)

    def get_slice(self, addr: Any, count: int) -> VolatileSlice:
        """Return ``[addr, addr + count)`` as one slice; it must lie in one region.

        Parameters
        ----------
        addr : int or GuestAddress
            The start (must be backed, even for ``count == 0``).
        count : int
            Bytes.

        Returns
        -------
        VolatileSlice
            The slice, tracked by the region's bitmap.

        Raises
        ------
        InvalidGuestAddressError
            ``addr`` is not backed.
        InvalidBackendAddressError
            The range passes the end of ``addr``'s region (use :meth:`get_slices`).
        """
        r, off = self._backing(_u64(addr, "address"))
        return r.get_slice(off, count)

    def get_slices(self, addr: Any, count: int, access: int = 1) -> GuestMemorySliceIterator:
        """Iterate over the slices backing ``[addr, addr + count)``, one per region.

        Parameters
        ----------
        addr : int or GuestAddress
            The start.
        count : int
            Bytes (``0`` gives an empty iterator and checks nothing).
        access : Permissions, optional
            The access (the ``GuestMemory`` view protocol; any is allowed here).

        Returns
        -------
        GuestMemorySliceIterator
            Yields :class:`VolatileSlice` objects; raises
            :class:`~npguest.errors.InvalidGuestAddressError` where it meets a hole, and
            ends after that.  ``stop_on_error()`` gives the leading slices instead.

        Examples
        --------
        >>> mem = GuestMemoryMmap.from_ranges([(0, 0x400), (0x800, 0x400), (0xC00, 0x400)])
        >>> [len(s) for s in mem.get_slices(0xA00, 0x400)]
        [512, 512]
        >>> [len(s) for s in mem.get_slices(0, 0x500).stop_on_error()]
        [1024]
        """
        _access(access)
        return GuestMemorySliceIterator(self, _u64(addr, "address"), _u64(count, "count"))

    def physical_memory(self) -> GuestMemoryMmap:
        """Return this memory: physical memory is its own ``GuestMemory`` view.

        Returns
        -------
        GuestMemoryMmap
            ``self``.
        """
        return self

    def try_access(
        self,
        count: int,
        addr: Any,
        f: Callable[[int, int, MemoryRegionAddress, GuestRegionMmap], int],
    ) -> int:
        """Call ``f`` on each region piece of ``[addr, addr + count)`` (vm-memory's ``try_access``).

        ``f(done, length, region_offset, region)`` returns how many bytes it consumed;
        0 stops, less than offered re-offers the rest.  Deprecated in vm-memory in favour of
        :meth:`get_slices`; kept for porting code.

        Parameters
        ----------
        count : int
            Bytes to process.
        addr : int or GuestAddress
            The start.
        f : callable
            The callback.

        Returns
        -------
        int
            Bytes processed.

        Raises
        ------
        InvalidGuestAddressError
            Nothing was processed because ``addr`` is not backed.
        CallbackOutOfRangeError
            ``f`` reported more bytes than remained.
        """
        count = _u64(count, "count")
        start = cur = _u64(addr, "address")
        done = 0
        while (i := self._index(cur)) >= 0:
            r = self._table.regions[i]
            off = cur - r._start
            length = min(r._len - off, count - done)
            n = f(done, length, MemoryRegionAddress(off), r)
            if not isinstance(n, int) or n < 0:
                raise TypeError(f"try_access callback must return a byte count, got {n!r}")
            if n == 0:
                return done
            done += n
            if done > count:
                raise CallbackOutOfRangeError(length, n)
            if done == count:
                return count
            cur += n
            if cur > U64_MAX:
                break
        if done == 0:
            raise InvalidGuestAddressError(start)
        return done

    # -- batch access --------------------------------------------------------------------
    def locate(self, addrs: Any, *, strict: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Find the region and offset of many addresses at once.

        Parameters
        ----------
        addrs : array_like
            Guest addresses (any shape).
        strict : bool, optional
            ``True`` (default): raise on the first unbacked address.  ``False``: report
            unbacked addresses with region index -1 and offset 0.

        Returns
        -------
        tuple of numpy.ndarray
            ``int64`` region indices and ``uint64`` offsets, shaped like ``addrs``.

        Raises
        ------
        InvalidGuestAddressError
            ``strict`` and some address is not backed (names the first).

        Examples
        --------
        >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x4000, 0x1000)])
        >>> idx, off = mem.locate([0x10, 0x4010, 0x2000], strict=False)
        >>> idx.tolist(), off.tolist()
        ([0, 1, -1], [16, 16, 0])
        """
        arr = _checks.address_array(addrs)
        flat = arr.reshape(-1)
        t = self._table
        idx = np.searchsorted(t.starts, flat, side="right").astype(np.int64) - 1
        valid = idx >= 0
        valid[valid] = flat[valid] < t.ends[idx[valid]]
        if strict and not valid.all():
            raise InvalidGuestAddressError(int(flat[np.argmin(valid)]))
        idx[~valid] = -1
        off = np.zeros(flat.shape, dtype=np.uint64)
        off[valid] = flat[valid] - t.starts[idx[valid]]
        return idx.reshape(arr.shape), off.reshape(arr.shape)

    def read_objs(
        self, addrs: Any, dtype: DTypeLike, *, holes: str = "raise"
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Read one object of ``dtype`` at each address (a vectorised gather).

        Objects may straddle adjacent regions.  Addresses are validated in one
        vectorised pass before any memory is touched.

        Parameters
        ----------
        addrs : array_like
            Guest addresses (any shape).
        dtype : dtype_like
            The objects' layout (structured dtypes included).
        holes : {"raise", "zero", "mask"}, optional
            What an object that is not wholly backed gives: ``"raise"`` (default) raises
            :class:`~npguest.errors.InvalidGuestAddressError`; ``"zero"`` reads it as
            zeros; ``"mask"`` too, and also returns which objects were backed (for dumps,
            where holes are a fact of life).

        Returns
        -------
        numpy.ndarray or tuple of numpy.ndarray
            An array of ``dtype`` shaped like ``addrs``; with ``holes="mask"``, the pair
            ``(values, valid)``, ``valid`` a ``bool`` array of the same shape.

        Raises
        ------
        InvalidGuestAddressError
            ``holes="raise"`` and some object is not wholly backed (names the first
            unbacked byte).
        ByteValuedError
            ``dtype`` is not ByteValued.
        ValueError
            ``holes`` is none of the three.

        Examples
        --------
        >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000)])
        >>> mem.write_objs([1, 2, 3], [0x8, 0xFFC, 0x1800], '<u8')
        >>> mem.read_objs([0x8, 0xFFC, 0x1800], '<u8').tolist()
        [1, 2, 3]
        >>> values, valid = mem.read_objs([0x8, 0x1FFC, 0x5000], '<u8', holes="mask")
        >>> values.tolist(), valid.tolist()
        ([1, 0, 0], [True, False, False])
        """
        if holes != "raise":
            return self._read_objs_with_holes(addrs, dtype, holes)
        c = codec(dtype)
        arr = _checks.address_array(addrs)
        out = np.empty(arr.shape, dtype=c.dtype)
        if not arr.size or not c.size:
            return out
        flat = arr.reshape(-1)
        t = self._table
        out_bytes = out.reshape(-1).view(np.uint8)
        from . import _kernels

        for start, stop, host, straddling, _ in _checks.located(t, flat, c.size):
            dst = out_bytes[start * c.size : stop * c.size]
            _kernels.gather(host, straddling, t.hosts, t.lens, c.size, dst)
        return out

    def _read_objs_with_holes(
        self, addrs: Any, dtype: DTypeLike, holes: str
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """:meth:`read_objs` for ``holes="zero"`` or ``"mask"``: read the backed objects only."""
        if holes not in ("zero", "mask"):
            raise ValueError(f'holes must be "raise", "zero" or "mask", got {holes!r}')
        c = codec(dtype)
        arr = _checks.address_array(addrs)
        out = np.zeros(arr.shape, dtype=c.dtype)
        valid = _checks.backed_mask(self._table, arr.reshape(-1), max(c.size, 1))
        valid = valid.reshape(arr.shape)
        if valid.any():
            out[valid] = self.read_objs(arr[valid], c.dtype)
        return (out, valid) if holes == "mask" else out

    def write_objs(self, values: Any, addrs: Any, dtype: DTypeLike | None = None) -> None:
        """Write one object of ``dtype`` at each address (a vectorised scatter).

        Every address is validated (backed, writable) before anything is written; the
        bytes written are marked dirty.  With repeated addresses the last value wins.

        Parameters
        ----------
        values : array_like
            Values, broadcast to the shape of ``addrs``.
        addrs : array_like
            Guest addresses.
        dtype : dtype_like, optional
            The objects' layout; defaults to ``values.dtype``.

        Raises
        ------
        InvalidGuestAddressError
            Some object is not wholly backed (names the first unbacked byte).
        ReadOnlyMemoryError
            Some object lies in a read-only region.
        ByteValuedError
            No usable dtype.
        """
        if dtype is None and not hasattr(values, "dtype"):
            dtype = np.asarray(values).dtype
        c = codec(dtype if dtype is not None else values.dtype)
        arr = _checks.address_array(addrs)
        vals = c.array(values, arr.shape)
        if not arr.size or not c.size:
            return
        flat = arr.reshape(-1)
        t = self._table
        for _ in _checks.located(t, flat, c.size):
            pass  # prove every object backed before writing any
        _checks.writable_targets(t, flat, c.size)
        in_bytes = vals.reshape(-1).view(np.uint8)
        from . import _kernels

        for start, stop, host, straddling, region in _checks.located(t, flat, c.size):
            src = in_bytes[start * c.size : stop * c.size]
            _kernels.scatter(host, straddling, t.hosts, t.lens, c.size, src)
            if t.tracked:  # AtomicBitmaps: atomic ORs straight into their words
                _kernels.mark_objects(
                    host, region, c.size, t.hosts, t.lens, t.words, t.shifts, t.nbits
                )
        if t.others:
            self._mark_objects(flat, c.size)

    def _mark_objects(self, addrs: np.ndarray, size: int) -> None:
        """Mark written objects in the regions whose bitmaps are not AtomicBitmaps."""
        t = self._table
        regions = t.regions
        region = _checks.region_indices(t, addrs)
        offset = (addrs - t.starts[region]).astype(np.int64)
        head = np.minimum(t.lens[region] - offset, size)
        order = np.argsort(region, kind="stable")
        bounds = np.searchsorted(region[order], np.arange(len(regions) + 1))
        for i in t.others:
            if bounds[i] < bounds[i + 1]:
                sel = order[bounds[i] : bounds[i + 1]]
                mark_many(regions[i]._bitmap, offset[sel], head[sel])
        for k in np.flatnonzero(head < size).tolist():  # the rare objects spilling over
            i, rem = int(region[k]) + 1, size - int(head[k])
            while rem > 0:
                n = min(int(t.lens[i]), rem)
                if i in t.others:
                    regions[i]._bitmap.mark_dirty(0, n)
                rem, i = rem - n, i + 1

    # -- dirty tracking ------------------------------------------------------------------
    def _tracked(self, query: str) -> list[tuple[GuestRegionMmap, Any]]:
        """Return ``(region, bound query method)`` for every region with a bitmap.

        Every bitmap is checked before any is queried, so a query that resets (``get_and_
        reset_ranges``) never clears some regions and then fails on another.
        """
        tracked = []
        for r in self._table.regions:
            if r._bitmap is None:
                continue
            method = getattr(r._bitmap, query, None)
            if method is None:
                raise TypeError(
                    f"the bitmap of the region at {r._start:#x} "
                    f"({type(r._bitmap).__name__}) has no {query}(); use AtomicBitmap"
                )
            tracked.append((r, method))
        return tracked

    def _guest_ranges(self, query: str) -> np.ndarray:
        """Run a bitmap range query on every tracked region, as coalesced guest ranges."""
        parts = []
        for r, method in self._tracked(query):
            ranges = method()
            # a bitmap larger than its region may hold marks past the region's end
            ranges = ranges[ranges[:, 0] < np.uint64(r._len)].copy()
            if ranges.shape[0]:
                ends = np.minimum(ranges[:, 0] + ranges[:, 1], np.uint64(r._len))
                ranges[:, 1] = ends - ranges[:, 0]
                ranges[:, 0] += np.uint64(r._start)
                parts.append(ranges)
        if not parts:
            return np.empty((0, 2), dtype=np.uint64)
        ranges = np.concatenate(parts)
        # ranges are sorted and coalesced inside each region: join those that meet at
        # the boundary of two adjacent regions
        starts, ends = ranges[:, 0], ranges[:, 0] + ranges[:, 1]
        first = np.ones(ranges.shape[0], dtype=bool)
        first[1:] = starts[1:] != ends[:-1]
        heads = np.flatnonzero(first)
        tails = np.append(heads[1:] - 1, ranges.shape[0] - 1)
        return np.stack((starts[heads], ends[tails] - starts[heads]), axis=1)

    def dirty_ranges(self) -> np.ndarray:
        """Return the dirty memory as coalesced guest ``(start, length)`` ranges.

        Ranges are built from each region's dirty pages (the last page cut at the
        region's end) and joined across adjacent regions.  Regions without tracking
        contribute nothing.

        Returns
        -------
        numpy.ndarray
            A ``(n, 2)`` ``uint64`` array of guest addresses and byte lengths.

        Raises
        ------
        TypeError
            A region's bitmap has no ``dirty_ranges`` (not an :class:`AtomicBitmap`).

        Examples
        --------
        >>> from npguest import AtomicBitmap
        >>> mem = GuestMemoryMmap.from_ranges([(0, 0x4000), (0x4000, 0x4000)],
        ...                                   bitmap=AtomicBitmap)
        >>> mem.write_slice(bytes(8), 0x3FFC)          # straddles the two regions
        >>> mem.write_obj(1, 0x6000, '<u8')
        >>> [(hex(a), n) for a, n in mem.dirty_ranges().tolist()]
        [('0x3000', 8192), ('0x6000', 4096)]
        """
        return self._guest_ranges("dirty_ranges")

    def get_and_reset_dirty(self) -> np.ndarray:
        """Atomically take and clear every region's dirty pages, as guest ranges.

        Each region's bitmap is taken with atomic exchanges: a write racing with this
        call is either in the returned ranges or still marked afterwards.

        Returns
        -------
        numpy.ndarray
            A ``(n, 2)`` ``uint64`` array of guest ``(start, length)`` ranges.

        Raises
        ------
        TypeError
            A region's bitmap cannot be taken (not an :class:`AtomicBitmap`).
        """
        return self._guest_ranges("get_and_reset_ranges")

    def dirty_pages(self) -> np.ndarray:
        """Return the guest address of every dirty page, ascending.

        Returns
        -------
        numpy.ndarray
            ``uint64`` guest addresses of page starts (a region's pages start at its
            base, which need not be page aligned).

        Raises
        ------
        TypeError
            A region's bitmap has no ``dirty_pages`` (not an :class:`AtomicBitmap`).
        """
        parts = []
        for r, method in self._tracked("dirty_pages"):
            offsets = method() * np.uint64(r._bitmap.page_size())
            parts.append(offsets[offsets < np.uint64(r._len)] + np.uint64(r._start))
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)

    def mark_dirty(self, addr: Any, length: int) -> None:
        """Mark guest ``[addr, addr + length)`` dirty after a raw write.

        Writes through raw escape hatches -- :meth:`get_host_address`, numpy views from
        ``as_array()``, a :class:`~npguest.PtrGuard` -- bypass dirty tracking; call this
        after them.  The range may cross adjacent regions.

        Parameters
        ----------
        addr : int or GuestAddress
            First byte written.
        length : int
            Bytes written.

        Raises
        ------
        InvalidGuestAddressError
            ``addr`` is not backed.
        PartialBufferError
            A hole or the end cuts the range short (the backed part is marked).
        """
        length = _u64(length, "length")
        done = 0
        for _, _, n, bitmap, boff in self._pieces(_u64(addr, "address"), length):
            if bitmap is not None:
                bitmap.mark_dirty(boff, n)
            done += n
        if done != length:
            raise PartialBufferError(length, done)

    def memory(self) -> GuestMemoryMmap:
        """Return this memory (a ``GuestMemoryMmap`` is its own, immutable address space).

        Returns
        -------
        GuestMemoryMmap
            ``self``, so code written for :class:`~npguest.GuestAddressSpace` accepts a
            plain memory too.
        """
        return self

    # -- Bytes hooks ---------------------------------------------------------------------
    def _pieces(self, addr: int, count: int, write: bool = False) -> list[Piece]:
        if not count:
            return []
        i = self._index(addr)
        if i < 0:
            raise InvalidGuestAddressError(addr)
        regions, starts = self._table.regions, self._table._starts_t
        pieces = []
        while True:
            r = regions[i]
            off = addr - r._start
            n = min(r._len - off, count)
            if n <= 0:
                raise MmapRegionError(f"the region at {r._start:#x} is closed")
            pieces.append((r._mv, off, n, r._bitmap, off))
            count -= n
            if not count:
                return pieces
            addr += n
            i += 1
            if i == len(regions) or starts[i] != addr:
                return pieces

    def _atomic_piece(self, addr: int, size: int, write: bool = False) -> Piece:
        r, off = self._backing(addr)
        return r._atomic_piece(off, size)

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap every region (this memory is empty afterwards).

        Raises
        ------
        MmapRegionError
            Some region is still in use elsewhere (a slice, a numpy view, another memory
            holding it); those regions stay mapped, the others are closed.
        """
        regions = self._table.regions
        self._set_table(RegionTable())
        failed = []
        for r in regions:
            try:
                r.close()
            except MmapRegionError:
                failed.append(r)
        if failed:
            where = ", ".join(f"{r._start:#x}" for r in failed)
            raise MmapRegionError(f"regions at {where} are still in use and were not closed")

    def __enter__(self) -> GuestMemoryMmap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        n = len(self._table.regions)
        size = sum(r._len for r in self._table.regions)
        return f"GuestMemoryMmap({n} region{'s' if n != 1 else ''}, {size:#x} bytes)"

    def _repr_html_(self) -> str:
        """Return the region table Jupyter shows (see :func:`npguest.display.memory_html`)."""
        from .display import memory_html

        return memory_html(self)


def _access(access: int) -> None:
    """Check an access kind (a :class:`~npguest.iommu.Permissions` value, 0..3)."""
    if isinstance(access, bool) or not isinstance(access, int) or not 0 <= access <= 3:
        raise IommuMisconfiguredError(
            0, 0, f"access must be a Permissions value (0..3), got {access!r}"
        )


class SliceIterator:
    """Base of the slice iterators: fused iteration and ``stop_on_error()``.

    Subclasses implement ``__next__``, raising the error of a hole once and
    ``StopIteration`` ever after.
    """

    __slots__ = ()

    def __iter__(self) -> SliceIterator:
        return self

    def __next__(self) -> VolatileSlice:  # pragma: no cover - abstract
        raise NotImplementedError

    def stop_on_error(self) -> Iterator[VolatileSlice]:
        """Return the leading slices, ending silently at the first hole.

        Returns
        -------
        iterator of VolatileSlice
            The slices before the first error.

        Raises
        ------
        InvalidGuestAddressError
            The *first* slice cannot be produced.
        """
        try:
            first = next(self)
        except StopIteration:
            return iter(())
        return self._rest(first)

    def _rest(self, first: VolatileSlice) -> Iterator[VolatileSlice]:
        yield first
        while True:
            try:
                yield next(self)
            except (StopIteration, GuestMemoryError):
                return


class GuestMemorySliceIterator(SliceIterator):
    """The slices backing a guest range (vm-memory's ``GuestMemoryBackendSliceIterator``).

    Iterating yields :class:`VolatileSlice` objects; at a hole it raises
    :class:`~npguest.errors.InvalidGuestAddressError` and is exhausted afterwards (fused).

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.
    addr : int
        The start.
    count : int
        Bytes.
    """

    __slots__ = ("_addr", "_count", "_mem")

    def __init__(self, mem: GuestMemoryMmap, addr: int, count: int) -> None:
        self._mem, self._addr, self._count = mem, addr, count

    def __next__(self) -> VolatileSlice:
        if not self._count:
            raise StopIteration
        addr = self._addr
        i = self._mem._index(addr)
        if i < 0:
            self._count = 0
            raise InvalidGuestAddressError(addr)
        r = self._mem._table.regions[i]
        off = addr - r._start
        n = min(r._len - off, self._count)
        self._count -= n
        self._addr = addr + n
        return r.get_slice(off, n)
