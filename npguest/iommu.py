"""I/O virtual memory: permissions, the IOTLB, the ``Iommu`` protocol and ``IommuMemory``.

vm-memory 0.18 splits the physical backend (:class:`~npguest.GuestMemoryMmap`) from the
memory a device sees: addresses may be I/O virtual addresses (IOVAs) that an IOMMU
translates into many physical pieces, with permissions checked on every access.

- :class:`Permissions` -- ``NO_ACCESS``, ``READ``, ``WRITE``, ``READ_WRITE``;
- :class:`Iotlb` -- a range map ``IOVA -> guest physical`` with permissions, held as
  sorted arrays (scalar lookups bisect them, batch translation is one ``searchsorted``);
- :class:`Iommu` -- the protocol of a translator: ``translate(iova, length, access)``
  returns the :class:`MappedRange` pieces or raises an :class:`~npguest.errors.IommuError`
  (:class:`IotlbIommu` serves an :class:`Iotlb`; :class:`~npguest.paging.X86PageTables`
  walks a guest's own page tables);
- :class:`IommuMemory` -- the whole ``Bytes`` API over IOVAs, on any backend and IOMMU.
"""

from __future__ import annotations

import enum
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

from . import _checks
from .access import NO_FAST, NO_FASTS, NO_WINDOW, Bytes, Piece, as_byte_view
from .address import U64_MAX, _u64
from .bitmap import Bitmap, NoBitmap
from .errors import (
    CannotResolveError,
    GuestAddressOverflowError,
    GuestMemoryError,
    InaccessibleError,
    InvalidBackendAddressError,
    IommuMisconfiguredError,
)
from .guest_memory import GuestMemoryMmap, SliceIterator
from .volatile import VolatileSlice

__all__ = [
    "Iommu",
    "IommuMemory",
    "IommuMemorySliceIterator",
    "IotlbIommu",
    "IovaRange",
    "Iotlb",
    "IotlbLookup",
    "MappedRange",
    "Permissions",
]


class Permissions(enum.IntFlag):
    """Access permissions of an IOVA mapping, and the kind of an access.

    ``NO_ACCESS`` as an *access* needs only that the range be mapped.

    Examples
    --------
    >>> Permissions.READ_WRITE.allow(Permissions.WRITE)
    True
    >>> Permissions.READ.allow(Permissions.READ_WRITE)
    False
    """

    NO_ACCESS = 0
    READ = 1
    WRITE = 2
    READ_WRITE = 3

    def allow(self, access: Permissions | int) -> bool:
        """Return whether these permissions allow ``access``.

        Parameters
        ----------
        access : Permissions
            The access to check.

        Returns
        -------
        bool
            ``True`` when every permission ``access`` needs is here.
        """
        return (self & access) == access

    def has_write(self) -> bool:
        """Return whether writing is allowed.

        Returns
        -------
        bool
            ``True`` for ``WRITE`` and ``READ_WRITE``.
        """
        return bool(self & Permissions.WRITE)


class IovaRange(NamedTuple):
    """A range of I/O virtual addresses: ``base`` and ``length`` in bytes."""

    base: int
    length: int


class MappedRange(NamedTuple):
    """A translated piece: guest physical ``base`` and ``length`` in bytes."""

    base: int
    length: int


@runtime_checkable
class Iommu(Protocol):
    """What :class:`IommuMemory` needs of an IOMMU.

    ``translate(iova, length, access)`` returns the pieces of guest physical memory that
    back ``[iova, iova + length)``, in IOVA order (their lengths add up to ``length``), or
    raises :class:`~npguest.errors.CannotResolveError` (part of the range is unmapped) or
    :class:`~npguest.errors.InaccessibleError` (mapped without the permissions
    ``access`` needs).  ``length == 0`` returns ``[]``.

    An IOMMU may also offer ``translate_arrays(iova, length, access)`` returning
    ``(paddrs, lengths)`` arrays, or ``None`` to decline: :class:`IommuMemory` then
    copies long fragmented ranges in one kernel call instead of piece by piece.
    """

    def translate(self, iova: int, length: int, access: Permissions) -> list[MappedRange]:
        """Translate ``[iova, iova + length)`` for ``access``; see the class docstring."""
        ...


def _permissions(value: Any, what: str = "access") -> Permissions:
    """Return ``value`` as :class:`Permissions`, or raise naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
        raise IommuMisconfiguredError(
            0, 0, f"{what} must be a Permissions value (0..3), got {value!r}"
        )
    return Permissions(value)


def _span(iova: Any, length: Any, what: str = "iova") -> tuple[int, int, int]:
    """Validate ``iova`` and ``length``; return them and the exclusive end (<= 2**64)."""
    iova, length = _u64(iova, what), _u64(length, "length")
    end = iova + length
    if end > U64_MAX + 1:
        raise GuestAddressOverflowError(iova, length, what)
    return iova, length, end


class IotlbLookup(NamedTuple):
    """What :meth:`Iotlb.lookup` found.

    ``hits`` are the translated pieces of the mapped parts that allow the access (all
    of the range when :attr:`ok`); ``misses`` the unmapped gaps and ``access_fails`` the
    parts mapped without the permission, clipped to the request, ascending
    (vm-memory's ``IotlbFails``).
    """

    hits: list[MappedRange]
    misses: list[IovaRange]
    access_fails: list[IovaRange]

    @property
    def ok(self) -> bool:
        """``True`` when the whole range is mapped and allows the access."""
        return not self.misses and not self.access_fails


class Iotlb:
    """An IOTLB: a range map from IOVAs to guest physical addresses with permissions.

    Entries are non-overlapping ``[start, end)`` IOVA ranges, each with its target and
    :class:`Permissions`, kept sorted.  Mapping over an existing range overwrites the
    overlapped part; adjacent entries coalesce when both the IOVA -> target offset and
    the permissions are equal (so two IOVA ranges mapped to the *same* target stay
    apart), as vm-memory's.  All methods are thread-safe.

    Examples
    --------
    >>> tlb = Iotlb()
    >>> tlb.set_mapping(0x1000, 0x5000, 0x1000, Permissions.READ)
    >>> tlb.set_mapping(0x2000, 0x6000, 0x1000, Permissions.READ)   # coalesces
    >>> tlb.lookup(0x1800, 0x1000, Permissions.READ).hits
    [MappedRange(base=22528, length=4096)]
    >>> r = tlb.lookup(0x800, 0x1000, Permissions.WRITE)
    >>> r.ok, r.misses, r.access_fails
    (False, [IovaRange(base=2048, length=2048)], [IovaRange(base=4096, length=2048)])
    """

    __slots__ = ("_arrays", "_ends", "_lock", "_perms", "_starts", "_targets")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._targets: list[int] = []
        self._perms: list[Permissions] = []
        self._arrays: tuple[np.ndarray, ...] | None = None

    def __len__(self) -> int:
        return len(self._starts)

    def __repr__(self) -> str:
        return f"Iotlb({len(self._starts)} entries)"

    def entries(self) -> list[tuple[int, int, int, Permissions]]:
        """Return the entries as ``(iova, target, length, permissions)``, ascending.

        Returns
        -------
        list of tuple
            One tuple per (coalesced) entry.
        """
        with self._lock:
            return [
                (s, t, e - s, p)
                for s, e, t, p in zip(
                    self._starts, self._ends, self._targets, self._perms, strict=True
                )
            ]

    def _replace(self, i: int, j: int, entries: list[tuple[int, int, int, Permissions]]) -> None:
        """Replace entries ``i..j-1`` by ``entries`` (``(start, end, target, perm)``)."""
        self._starts[i:j] = [e[0] for e in entries]
        self._ends[i:j] = [e[1] for e in entries]
        self._targets[i:j] = [e[2] for e in entries]
        self._perms[i:j] = [e[3] for e in entries]
        self._arrays = None

    def _punch(self, lo: int, hi: int) -> int:
        """Remove ``[lo, hi)`` from the map, splitting entries; return the gap's index."""
        i = bisect_right(self._ends, lo)  # the first entry ending after lo
        j = i
        while j < len(self._starts) and self._starts[j] < hi:
            j += 1
        keep = []
        if i < j and self._starts[i] < lo:
            keep.append((self._starts[i], lo, self._targets[i], self._perms[i]))
        if i < j and self._ends[j - 1] > hi:
            s, t = self._starts[j - 1], self._targets[j - 1]
            keep.append((hi, self._ends[j - 1], t + hi - s, self._perms[j - 1]))
        self._replace(i, j, keep)
        return i + (1 if keep and keep[0][1] == lo else 0)

    def _merge(self, k: int) -> None:
        """Coalesce entry ``k`` with entry ``k + 1`` if they continue each other."""
        if 0 <= k < len(self._starts) - 1:
            s, e, t, p = self._starts[k], self._ends[k], self._targets[k], self._perms[k]
            n = k + 1
            if e == self._starts[n] and t + e - s == self._targets[n] and p == self._perms[n]:
                self._replace(k, k + 2, [(s, self._ends[n], t, p)])

    def set_mapping(self, iova: Any, map_to: Any, length: int, perm: Permissions | int) -> None:
        """Map ``[iova, iova + length)`` to guest physical ``map_to`` with ``perm``.

        Parameters
        ----------
        iova : int or address
            First I/O virtual address.
        map_to : int or address
            Guest physical address ``iova`` translates to.
        length : int
            Bytes (> 0).
        perm : Permissions
            What the mapping allows.

        Raises
        ------
        IommuMisconfiguredError
            ``length`` is 0 or ``perm`` is not a Permissions value.
        GuestAddressOverflowError
            A range passes ``2**64``.
        """
        iova, length, end = _span(iova, length)
        target = _span(map_to, length, "map_to")[0]
        perm = _permissions(perm, "perm")
        if not length:
            raise IommuMisconfiguredError(iova, 0, "a mapping needs a length > 0")
        with self._lock:
            k = self._punch(iova, end)
            self._replace(k, k, [(iova, end, target, perm)])
            self._merge(k)
            self._merge(k - 1)

    def invalidate_mapping(self, iova: Any, length: int) -> None:
        """Unmap ``[iova, iova + length)`` (entries are split around it).

        Parameters
        ----------
        iova : int or address
            First I/O virtual address.
        length : int
            Bytes (> 0).

        Raises
        ------
        IommuMisconfiguredError
            ``length`` is 0.
        GuestAddressOverflowError
            The range passes ``2**64``.
        """
        iova, length, end = _span(iova, length)
        if not length:
            raise IommuMisconfiguredError(iova, 0, "an invalidation needs a length > 0")
        with self._lock:
            self._punch(iova, end)

    def invalidate_all(self) -> None:
        """Remove every mapping."""
        with self._lock:
            self._replace(0, len(self._starts), [])

    def lookup(self, iova: Any, length: int, access: Permissions | int) -> IotlbLookup:
        """Translate ``[iova, iova + length)`` for ``access``.

        ``length == 0`` reports nothing, except an access failure when ``iova`` lies
        strictly inside an entry denying ``access`` (vm-memory's range-map rule).

        Parameters
        ----------
        iova : int or address
            First I/O virtual address.
        length : int
            Bytes.
        access : Permissions
            The access (``NO_ACCESS`` needs only a mapping).

        Returns
        -------
        IotlbLookup
            The hits, misses and access failures; ``.ok`` when all of it translates.

        Raises
        ------
        GuestAddressOverflowError
            The range passes ``2**64``.
        """
        iova, length, end = _span(iova, length)
        access = _permissions(access)
        hits: list[MappedRange] = []
        misses: list[IovaRange] = []
        fails: list[IovaRange] = []
        with self._lock:
            starts, ends, targets, perms = self._starts, self._ends, self._targets, self._perms
            i = bisect_right(ends, iova)
            if not length:
                if i < len(starts) and starts[i] < iova and not perms[i].allow(access):
                    fails.append(IovaRange(iova, 0))
                return IotlbLookup(hits, misses, fails)
            cur = iova
            while i < len(starts) and starts[i] < end:
                lo, hi = max(starts[i], iova), min(ends[i], end)
                if lo > cur:
                    misses.append(IovaRange(cur, lo - cur))
                if perms[i].allow(access):
                    hits.append(MappedRange(targets[i] + lo - starts[i], hi - lo))
                else:
                    fails.append(IovaRange(lo, hi - lo))
                cur = hi
                i += 1
        if cur < end:
            misses.append(IovaRange(cur, end - cur))
        return IotlbLookup(hits, misses, fails)

    def _table(self) -> tuple[np.ndarray, ...]:
        """Return the entries as arrays ``(starts, lasts, targets, perms)`` (built on demand)."""
        arrays = self._arrays
        if arrays is None:
            with self._lock:
                arrays = (
                    np.array(self._starts, dtype=np.uint64),
                    np.array([e - 1 for e in self._ends], dtype=np.uint64),
                    np.array(self._targets, dtype=np.uint64),
                    np.array(self._perms, dtype=np.uint8),
                )
                self._arrays = arrays
        return arrays

    def lookup_arrays(
        self, iova: Any, length: int, access: Permissions | int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Translate ``[iova, iova + length)`` into arrays, when all of it translates.

        The vectorised form of :meth:`lookup` for long, fragmented ranges (two
        ``searchsorted`` calls, no per-piece Python).

        Parameters
        ----------
        iova : int or address
            First I/O virtual address.
        length : int
            Bytes (> 0).
        access : Permissions
            The access.

        Returns
        -------
        tuple of numpy.ndarray or None
            ``uint64`` guest physical bases and ``int64`` lengths of the pieces, in IOVA
            order; ``None`` when some part is unmapped or denies ``access`` (call
            :meth:`lookup` for the details).
        """
        iova, length, end = _span(iova, length)
        access = _permissions(access)
        if not length:
            return None
        starts, lasts, targets, perms = self._table()
        i = int(np.searchsorted(lasts, np.uint64(iova), side="left"))
        j = int(np.searchsorted(starts, np.uint64(end - 1), side="right"))
        if i >= j:
            return None
        lo, hi = starts[i:j].copy(), lasts[i:j].copy()
        if lo[0] > iova or hi[-1] < end - 1 or (lo[1:] != hi[:-1] + np.uint64(1)).any():
            return None
        if ((perms[i:j] & np.uint8(access)) != access).any():
            return None
        lo[0], hi[-1] = iova, end - 1
        return targets[i:j] + (lo - starts[i:j]), (hi - lo).astype(np.int64) + 1

    def translate_many(
        self, iovas: Any, access: Permissions | int = Permissions.READ
    ) -> tuple[np.ndarray, np.ndarray]:
        """Translate many single-byte IOVAs at once (one ``searchsorted``).

        Parameters
        ----------
        iovas : array_like
            I/O virtual addresses (any shape).
        access : Permissions, optional
            The access to check (default ``READ``).

        Returns
        -------
        tuple of numpy.ndarray
            ``uint64`` guest physical addresses (0 where invalid) and a ``bool`` mask of
            the addresses mapped with ``access``, both shaped like ``iovas``.

        Examples
        --------
        >>> tlb = Iotlb()
        >>> tlb.set_mapping(0x1000, 0x9000, 0x1000, Permissions.READ)
        >>> pa, ok = tlb.translate_many([0x1008, 0x2000])
        >>> pa.tolist(), ok.tolist()
        ([36872, 0], [True, False])
        """
        access = _permissions(access)
        arr = _checks.address_array(iovas)
        flat = arr.reshape(-1)
        starts, lasts, targets, perms = self._table()
        idx = np.searchsorted(starts, flat, side="right").astype(np.intp) - 1
        ok = idx >= 0
        idx[~ok] = 0
        if starts.size:
            ok &= (flat <= lasts[idx]) & ((perms[idx] & np.uint8(access)) == access)
            paddrs = np.where(ok, flat - starts[idx] + targets[idx], np.uint64(0))
        else:
            paddrs = np.zeros(flat.shape, dtype=np.uint64)
        return paddrs.reshape(arr.shape), ok.reshape(arr.shape)


class IotlbIommu:
    """An :class:`Iommu` served from an :class:`Iotlb`, with an optional miss handler.

    ``fault(iotlb, lookup)``, when given, is called once on a miss or a permission
    failure (with the failed :class:`IotlbLookup`) to refill the IOTLB -- the way a
    vhost-user back-end asks its front-end -- and the lookup is retried.

    Parameters
    ----------
    iotlb : Iotlb, optional
        The mappings (a new empty one by default).
    fault : callable, optional
        The miss handler.

    Examples
    --------
    >>> iommu = IotlbIommu()
    >>> iommu.iotlb.set_mapping(0x1000, 0x5000, 0x2000, Permissions.READ)
    >>> iommu.translate(0x1ff0, 0x20, Permissions.READ)
    [MappedRange(base=24560, length=32)]
    """

    __slots__ = ("_fault", "iotlb")

    def __init__(
        self,
        iotlb: Iotlb | None = None,
        fault: Callable[[Iotlb, IotlbLookup], object] | None = None,
    ) -> None:
        self.iotlb = Iotlb() if iotlb is None else iotlb
        self._fault = fault

    def translate(self, iova: Any, length: int, access: Permissions | int) -> list[MappedRange]:
        """Translate ``[iova, iova + length)`` for ``access`` (the :class:`Iommu` protocol).

        Parameters
        ----------
        iova : int or address
            First I/O virtual address.
        length : int
            Bytes.
        access : Permissions
            The access.

        Returns
        -------
        list of MappedRange
            The guest physical pieces, in IOVA order.

        Raises
        ------
        CannotResolveError
            Part of the range is unmapped (names the first gap).
        InaccessibleError
            Part of it is mapped without ``access`` (names the first such part).
        """
        found = self.iotlb.lookup(iova, length, access)
        if not found.ok and self._fault is not None:
            self._fault(self.iotlb, found)
            found = self.iotlb.lookup(iova, length, access)
        if found.misses:
            gap = found.misses[0]
            raise CannotResolveError(gap.base, gap.length, "no IOTLB mapping")
        if found.access_fails:
            bad = found.access_fails[0]
            raise InaccessibleError(bad.base, bad.length, f"mapped without {_name(access)}")
        return found.hits

    def translate_arrays(
        self, iova: Any, length: int, access: Permissions | int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Translate a range into arrays when the IOTLB holds all of it (see ``lookup_arrays``).

        Never calls the miss handler: on ``None`` :class:`IommuMemory` takes the
        per-piece path, whose :meth:`translate` does.

        Parameters
        ----------
        iova : int or address
            First I/O virtual address.
        length : int
            Bytes.
        access : Permissions
            The access.

        Returns
        -------
        tuple of numpy.ndarray or None
            Physical bases and lengths, or ``None``.
        """
        return self.iotlb.lookup_arrays(iova, length, access)

    def translate_many(
        self, iovas: Any, access: Permissions | int = Permissions.READ
    ) -> tuple[np.ndarray, np.ndarray]:
        """Translate many IOVAs at once; see :meth:`Iotlb.translate_many`.

        Parameters
        ----------
        iovas : array_like
            I/O virtual addresses.
        access : Permissions, optional
            The access (default ``READ``).

        Returns
        -------
        tuple of numpy.ndarray
            Guest physical addresses and the validity mask.
        """
        return self.iotlb.translate_many(iovas, access)

    def __repr__(self) -> str:
        return f"IotlbIommu({self.iotlb!r})"


def _name(access: Permissions | int) -> str:
    return Permissions(access).name or str(int(access))


def _translated(iommu: Iommu, iova: int, count: int, access: Permissions) -> list[MappedRange]:
    """``iommu.translate``, checked: the pieces must be ints adding up to ``count``."""
    ranges = iommu.translate(iova, count, access)
    total = 0
    for piece in ranges:
        base, length = piece
        if not (isinstance(base, int) and isinstance(length, int) and length > 0):
            raise IommuMisconfiguredError(iova, count, f"translate returned {piece!r}")
        total += length
    if total != count:
        raise IommuMisconfiguredError(
            iova, count, f"translate returned pieces of {total} bytes in all"
        )
    return ranges


_RUNS_MIN = 1 << 16
"""Accesses at least this long try :meth:`IommuMemory._copy_runs` (shorter ones gain
nothing over the per-piece path)."""


def _checked_runs(found: Any, iova: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Check ``translate_arrays``'s answer for ``[iova, iova + count)``.

    It must be two 1-D integer arrays of one non-zero length: bases >= 0, and lengths > 0
    adding up to ``count`` exactly.  Returns them as ``uint64`` and ``int64``; raises
    :class:`IommuMisconfiguredError` otherwise.
    """
    try:
        paddrs, lengths = (np.asarray(a) for a in found)
    except (TypeError, ValueError):
        paddrs = lengths = np.zeros(0)
    ok = paddrs.ndim == 1 and paddrs.shape == lengths.shape and paddrs.size > 0
    ok = ok and paddrs.dtype.kind in "iu" and lengths.dtype.kind in "iu"
    ok = ok and paddrs.min() >= 0 and lengths.min() > 0
    if ok:  # each run > 0: a running total that never decreases did not wrap
        total = np.cumsum(lengths.astype(np.uint64))
        ok = bool(total[-1] == count) and bool((total[1:] > total[:-1]).all())
    if not ok:
        raise IommuMisconfiguredError(
            iova, count, "translate_arrays must return bases >= 0 and runs > 0 adding up to it"
        )
    return paddrs.astype(np.uint64), lengths.astype(np.int64)


class IommuMemory(Bytes):
    """Guest memory as a device sees it: I/O virtual addresses translated by an IOMMU.

    Every ``Bytes`` method works on IOVAs.  With the IOMMU enabled an access is
    translated first (a failure raises an :class:`~npguest.errors.IommuError` before
    anything is touched), then each physical piece is accessed in ``backend`` like a
    guest memory access: an unbacked first piece raises
    :class:`~npguest.errors.InvalidGuestAddressError` naming the *physical* address, a
    hole later makes the access partial.  Writes are then tracked in this object's IOVA
    bitmap (at IOVA offsets) instead of the backend's, as vm-memory does for vhost-user
    dirty logging.  Disabled, addresses are guest physical and everything goes straight
    to ``backend`` (its bitmaps included).

    Parameters
    ----------
    backend : GuestMemoryMmap
        The physical memory.
    iommu : Iommu
        The translator (an :class:`IotlbIommu`, :class:`~npguest.paging.X86PageTables`...).
    use_iommu : bool, optional
        Translate (default ``True``).
    bitmap : Bitmap, optional
        Dirty tracking of the IOVA space (default: none).

    Examples
    --------
    >>> mem = GuestMemoryMmap.from_ranges([(0x5000, 0x3000)])
    >>> iommu = IotlbIommu()
    >>> iommu.iotlb.set_mapping(0x1000, 0x7000, 0x1000, Permissions.READ_WRITE)
    >>> iommu.iotlb.set_mapping(0x2000, 0x5000, 0x1000, Permissions.READ_WRITE)
    >>> dev = IommuMemory(mem, iommu)
    >>> dev.write_slice(b"split!", 0x1ffd)           # two physical pieces
    >>> mem.read_bytes(0x7ffd, 3), mem.read_bytes(0x5000, 3)
    (b'spl', b'it!')
    """

    __slots__ = (
        "_backend",
        "_bitmap",
        "_iommu",
        "_rfast",
        "_rfasts",
        "_track",
        "_use",
        "_wfast",
        "_wfasts",
        "_window",
        "_windows",
        "_wstarts",
    )

    def __init__(
        self,
        backend: GuestMemoryMmap,
        iommu: Iommu,
        use_iommu: bool = True,
        bitmap: Bitmap | None = None,
    ) -> None:
        if not isinstance(backend, GuestMemoryMmap):
            raise TypeError(f"backend must be a GuestMemoryMmap, not {type(backend).__name__}")
        if not callable(getattr(iommu, "translate", None)):
            raise TypeError(f"iommu must have a translate method ({type(iommu).__name__})")
        self._backend, self._iommu = backend, iommu
        self._bitmap = NoBitmap() if bitmap is None else bitmap
        self._track = None if isinstance(self._bitmap, NoBitmap) else self._bitmap
        self._use = bool(use_iommu)
        # No scalar fast-path windows, ever: every access asks the backend as it is now
        # (its regions may close or change) through _pieces.
        self._windows, self._wstarts, self._window = (), (), NO_WINDOW
        self._rfast = self._wfast = NO_FAST
        self._rfasts = self._wfasts = NO_FASTS

    def with_replaced_backend(self, backend: GuestMemoryMmap) -> IommuMemory:
        """Return a view of ``backend`` sharing this one's IOMMU, flag and IOVA bitmap.

        Parameters
        ----------
        backend : GuestMemoryMmap
            The new physical memory (e.g. after hotplug).

        Returns
        -------
        IommuMemory
            The new view.
        """
        return IommuMemory(backend, self._iommu, self._use, self._bitmap)

    def set_iommu_enabled(self, enabled: bool) -> None:
        """Turn translation on or off.

        Parameters
        ----------
        enabled : bool
            ``True``: addresses are IOVAs.  ``False``: they are guest physical.
        """
        self._use = bool(enabled)

    def get_iommu_enabled(self) -> bool:
        """Return whether addresses are translated.

        Returns
        -------
        bool
            The flag.
        """
        return self._use

    def iommu(self) -> Iommu:
        """Return the IOMMU.

        Returns
        -------
        Iommu
            The translator.
        """
        return self._iommu

    get_iommu = iommu

    def get_backend(self) -> GuestMemoryMmap:
        """Return the physical memory.

        Returns
        -------
        GuestMemoryMmap
            The backend.
        """
        return self._backend

    def bitmap(self) -> Bitmap:
        """Return the dirty bitmap of the IOVA space.

        Returns
        -------
        Bitmap
            The bitmap (a :class:`~npguest.NoBitmap` when not tracking).
        """
        return self._bitmap

    def physical_memory(self) -> GuestMemoryMmap | None:
        """Return the backend when addresses are physical (IOMMU disabled), else ``None``.

        Returns
        -------
        GuestMemoryMmap or None
            The backend, or ``None``.
        """
        return None if self._use else self._backend

    def check_range(self, addr: Any, count: int, access: Permissions | int = 0) -> bool:
        """Return whether ``[addr, addr + count)`` translates for ``access`` and is backed.

        Parameters
        ----------
        addr : int or address
            The start.
        count : int
            Bytes.
        access : Permissions, optional
            The access (default ``NO_ACCESS``: mapped is enough).

        Returns
        -------
        bool
            ``True`` when all of it is accessible.
        """
        addr, count = _u64(addr, "address"), _u64(count, "count")
        access = _permissions(access)
        if not self._use:
            return self._backend.check_range(addr, count)
        try:
            ranges = _translated(self._iommu, addr, count, access)
        except GuestMemoryError:
            return False
        return all(self._backend.check_range(base, n) for base, n in ranges)

    def get_slices(
        self, addr: Any, count: int, access: Permissions | int = Permissions.READ
    ) -> IommuMemorySliceIterator:
        """Iterate over the volatile slices backing ``[addr, addr + count)``.

        Parameters
        ----------
        addr : int or address
            The start.
        count : int
            Bytes.
        access : Permissions, optional
            The access the slices are for (default ``READ``).

        Returns
        -------
        IommuMemorySliceIterator
            Yields :class:`~npguest.VolatileSlice` objects (tracked in the IOVA bitmap
            when translating); raises where it meets a physical hole.

        Raises
        ------
        IommuError
            The range does not translate for ``access`` (raised here, up front).
        """
        addr, count = _u64(addr, "address"), _u64(count, "count")
        access = _permissions(access)
        if not self._use:
            return IommuMemorySliceIterator(self._backend.get_slices(addr, count))
        ranges = _translated(self._iommu, addr, count, access)
        return IommuMemorySliceIterator(_iova_slices(self._backend, ranges, self._track, addr))

    # -- long fragmented copies ------------------------------------------------------------
    def write(self, buf: Any, addr: Any) -> int:  # noqa: D102 (Bytes.write's docstring)
        src = as_byte_view(buf)
        done = self._whole(src, addr, True)
        return super().write(src, addr) if done is None else done

    def read(self, buf: Any, addr: Any) -> int:  # noqa: D102 (Bytes.read's docstring)
        dst = as_byte_view(buf, writable=True)
        done = self._whole(dst, addr, False)
        return super().read(dst, addr) if done is None else done

    def _whole(self, view: memoryview, addr: Any, write: bool) -> int | None:
        """Move all of ``view`` at once when translating, or return ``None`` for per piece.

        A zero-length access is still translated (vm-memory: it can fail); a long one
        tries :meth:`_copy_runs`.
        """
        if not self._use:
            return None
        if not view:
            return len(self._pieces(_u64(addr, "address"), 0, write))
        if len(view) >= _RUNS_MIN and self._copy_runs(view, addr, write):
            return len(view)
        return None

    write.__doc__, read.__doc__ = Bytes.write.__doc__, Bytes.read.__doc__

    def _copy_runs(self, view: memoryview, addr: Any, write: bool) -> bool:
        """Copy all of ``view`` in one kernel call when the IOMMU translates it as arrays.

        ``False`` (nothing done) whenever anything is irregular -- no array translation,
        a piece outside one region, read-only memory: the per-piece path then does the
        copy and raises whatever error the rules say.
        """
        arrays = getattr(self._iommu, "translate_arrays", None)
        if arrays is None:
            return False
        addr, count = _u64(addr, "address"), len(view)
        found = arrays(addr, count, Permissions.WRITE if write else Permissions.READ)
        if found is None:
            return False
        paddrs, lengths = _checked_runs(found, addr, count)
        t = self._backend._table
        buf = np.frombuffer(view, dtype=np.uint8)
        host, end = buf.ctypes.data, buf.ctypes.data + count
        if not t.regions or ((t.hosts < end) & (t.hosts + t.lens > host)).any():
            return False  # (a buffer inside guest memory: the piecewise memmove handles overlap)
        idx = np.searchsorted(t.starts, paddrs, side="right").astype(np.intp) - 1
        if (idx < 0).any():
            return False
        offsets = paddrs - t.starts[idx]  # uint64: < 2**64 as paddrs >= starts[idx]
        room = t.lens[idx].astype(np.uint64)
        if ((offsets >= room) | (lengths.astype(np.uint64) > room - offsets)).any():
            return False  # some run leaves its region (a hole, or the next region)
        if write and any(t.regions[i]._mv.readonly for i in np.unique(idx).tolist()):
            return False
        from . import _kernels

        pins = _checks.open_regions(t)
        _kernels.copy_runs(host, t.hosts[idx] + offsets.astype(np.int64), lengths, write)
        del pins
        if write and self._track is not None:
            self._track.mark_dirty(addr, count)
        return True

    # -- Bytes hooks ---------------------------------------------------------------------
    def _pieces(self, addr: int, count: int, write: bool = False) -> list[Piece]:
        b = self._backend
        if not self._use:
            return b._pieces(addr, count, write)
        access = Permissions.WRITE if write else Permissions.READ
        pieces: list[Piece] = []
        iova, track = addr, self._track
        for base, length in _translated(self._iommu, addr, count, access):  # even count 0
            try:
                found = b._pieces(base, length, write)
            except GuestMemoryError:
                if pieces:  # a hole after the first byte: the access is partial
                    return pieces
                raise
            got = 0
            for view, off, n, _, _ in found:
                pieces.append((view, off, n, track, iova + got))
                got += n
            iova += got
            if got < length:
                break
        return pieces

    def _atomic_piece(self, addr: int, size: int, write: bool = False) -> Piece:
        b = self._backend
        if not self._use:
            return b._atomic_piece(addr, size, write)
        access = Permissions.WRITE if write else Permissions.READ
        base, length = _translated(self._iommu, addr, size, access)[0]
        if length < size:
            raise InvalidBackendAddressError(
                addr + length, f"a {size}-byte atomic access at {addr:#x} spans two IOVA pieces"
            )
        view, off, n, _, _ = b._atomic_piece(base, size, write)
        return view, off, n, self._track, addr

    def __repr__(self) -> str:
        state = "enabled" if self._use else "disabled"
        return f"IommuMemory({self._backend!r}, {self._iommu!r}, IOMMU {state})"


def _iova_slices(
    backend: GuestMemoryMmap, ranges: list[MappedRange], track: Bitmap | None, iova: int
) -> Iterator[VolatileSlice]:
    """Yield the backend slices of each translated piece, tracked at their IOVAs."""
    for base, length in ranges:
        for s in backend.get_slices(base, length):
            yield VolatileSlice._over(s._mv, s._off, s._len, track, iova, s._host)
            iova += s._len


class IommuMemorySliceIterator(SliceIterator):
    """The slices backing an IOVA range (vm-memory's ``IommuMemorySliceIterator``).

    Iterating yields :class:`~npguest.VolatileSlice` objects; where a physical hole
    interrupts the range it raises :class:`~npguest.errors.InvalidGuestAddressError`
    and is exhausted afterwards.  ``stop_on_error()`` gives the leading slices instead.

    Parameters
    ----------
    slices : iterator of VolatileSlice
        The slices.
    """

    __slots__ = ("_slices",)

    def __init__(self, slices: Iterator[VolatileSlice]) -> None:
        self._slices = slices

    def __next__(self) -> VolatileSlice:
        return next(self._slices)
