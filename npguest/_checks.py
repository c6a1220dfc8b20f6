"""Validators run before any kernel or copy: batch addresses, located spans, writability.

A kernel only ever sees arrays whose every index and span was proven here first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from .address import U64_MAX, address_array
from .errors import (
    GuestAddressOverflowError,
    InvalidGuestAddressError,
    MmapRegionError,
    ReadOnlyMemoryError,
)

if TYPE_CHECKING:
    from .guest_memory import GuestMemoryMmap
    from .region import RegionTable

__all__ = [
    "CHUNK",
    "batch_addresses",
    "first_unbacked",
    "guest_memory",
    "guest_ranges",
    "located",
    "open_regions",
    "region_indices",
    "writable_targets",
]

_NO_REGIONS = np.empty(0, dtype=np.int64)

CHUNK = 1 << 16
"""Addresses translated per kernel call in batch operations."""


def batch_addresses(addrs: object) -> np.ndarray:
    """Return ``addrs`` as a flat C-contiguous ``uint64`` array (any input shape).

    Parameters
    ----------
    addrs : array_like
        Guest addresses.

    Returns
    -------
    numpy.ndarray
        The flattened addresses.

    Raises
    ------
    GuestAddressOverflowError
        An address is negative or not below ``2**64``.
    TypeError
        The addresses are not integers.
    """
    return address_array(addrs).reshape(-1)


def first_unbacked(table: RegionTable, addr: int, size: int) -> int:
    """Return the first guest address of ``[addr, addr + size)`` that no region backs.

    Parameters
    ----------
    table : RegionTable
        The regions.
    addr : int
        Start of the span.
    size : int
        Its length (the span is known to be not wholly backed).

    Returns
    -------
    int
        The address of the first hole byte (``addr`` itself if it is unbacked).
    """
    cur, end = addr, min(addr + size, U64_MAX + 1)
    for start, stop in zip(table._starts_t, table._ends_t, strict=True):
        if start <= cur < stop:
            cur = stop
        if cur >= end:
            break
    return min(cur, U64_MAX)


def backed_mask(table: RegionTable, addrs: np.ndarray, size: int) -> np.ndarray:
    """Return which ``size``-byte objects at ``addrs`` are wholly backed.

    An object is backed when its first and last bytes are, and every region between
    them is adjacent to the next (no hole inside it).

    Parameters
    ----------
    table : RegionTable
        The regions.
    addrs : numpy.ndarray
        Flat ``uint64`` guest addresses.
    size : int
        Object size (>= 1).

    Returns
    -------
    numpy.ndarray
        A ``bool`` array shaped like ``addrs``.
    """
    starts, ends = table.starts, table.ends
    if not starts.shape[0]:
        return np.zeros(addrs.shape, dtype=bool)
    span = np.uint64(size - 1)
    valid = addrs <= np.uint64(U64_MAX) - span
    last = np.where(valid, addrs + np.where(valid, span, np.uint64(0)), addrs)
    first_i = np.searchsorted(starts, addrs, side="right").astype(np.int64) - 1
    last_i = np.searchsorted(starts, last, side="right").astype(np.int64) - 1
    valid &= (first_i >= 0) & (last_i >= 0)
    fi, li = np.maximum(first_i, 0), np.maximum(last_i, 0)
    valid &= (addrs < ends[fi]) & (last < ends[li])
    # runs of adjacent regions: an object spanning regions must stay inside one run
    run = np.concatenate(([0], np.cumsum(starts[1:] != ends[:-1])))
    valid &= run[fi] == run[li]
    return valid


def open_regions(table: RegionTable) -> list[memoryview]:
    """Pin every region of ``table`` open for a kernel that will use their host addresses.

    Each returned view is an export of a region's ``mmap``: while the caller holds it,
    closing the region is refused, so a kernel running without the GIL never touches
    unmapped memory.  (Taking the export is one C call, so there is no window between
    checking a region and pinning it.)

    Parameters
    ----------
    table : RegionTable
        The regions.

    Returns
    -------
    list of memoryview
        The pins; keep them alive until the kernels return.

    Raises
    ------
    MmapRegionError
        A region is closed.
    """
    pins = []
    for r in table.regions:
        try:
            pins.append(memoryview(r._mapping._mmap))
        except ValueError:  # "mmap closed or invalid"
            raise MmapRegionError(f"the region at {r._start:#x} is closed") from None
    return pins


def located(
    table: RegionTable, addrs: np.ndarray, size: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """Translate ``[addr, addr + size)`` to host addresses chunk by chunk, proving each backed.

    Chunks of :data:`CHUNK` addresses keep the host-address scratch buffer in cache
    (one 8 MiB array for a million addresses costs more than the gather itself).

    Parameters
    ----------
    table : RegionTable
        The regions.
    addrs : numpy.ndarray
        Flat ``uint64`` guest addresses.
    size : int
        Object size (>= 1).

    Yields
    ------
    tuple of (int, int, numpy.ndarray, numpy.ndarray, numpy.ndarray)
        ``(start, stop, host, straddling, region)`` for ``addrs[start:stop]``: ``int64``
        host addresses and region indices (reused buffers: consume them before the next
        chunk); ``straddling`` is ``region`` when some object of the chunk straddles
        adjacent regions, else an empty array (the copy kernels' fast case).

    Raises
    ------
    InvalidGuestAddressError
        Some object is not wholly backed: names the first unbacked byte of the first such
        object, with a note giving the element index.  Raised before the chunk holding it
        is yielded.
    MmapRegionError
        A region is closed.
    """
    from . import _kernels

    pins = open_regions(table)  # held by this generator while the caller's kernels run
    count = addrs.shape[0]
    scratch = np.empty((2, min(CHUNK, count)), dtype=np.int64)
    for start in range(0, count, CHUNK):
        chunk = addrs[start : start + CHUNK]
        host, region = scratch[0, : chunk.shape[0]], scratch[1, : chunk.shape[0]]
        bad, straddlers = _kernels.locate(
            table.starts, table.ends, table.hosts, chunk, size, host, region
        )
        if bad >= 0:
            del pins  # released first: a caller keeping the error keeps this frame alive
            raise _not_wholly_backed(table, int(chunk[bad]), start + bad, size)
        yield start, start + chunk.shape[0], host, region if straddlers else _NO_REGIONS, region
    del pins  # (only now may the regions close)


def _not_wholly_backed(table: RegionTable, addr: int, element: int, size: int) -> Exception:
    """Return the error for element ``element``, a ``size``-byte object at ``addr``."""
    exc = InvalidGuestAddressError(first_unbacked(table, addr, size))
    exc.add_note(f"element {element}: the {size}-byte object at {addr:#x} is not wholly backed")
    return exc


def region_indices(table: RegionTable, addrs: np.ndarray) -> np.ndarray:
    """Return the index of the region holding each (backed) address.

    Parameters
    ----------
    table : RegionTable
        The regions.
    addrs : numpy.ndarray
        ``uint64`` guest addresses known to be backed.

    Returns
    -------
    numpy.ndarray
        ``int64`` indices.
    """
    return np.searchsorted(table.starts, addrs, side="right").astype(np.int64) - 1


def writable_targets(table: RegionTable, addrs: np.ndarray, size: int) -> None:
    """Check that every object located in ``table`` lies in writable regions.

    Parameters
    ----------
    table : RegionTable
        The regions.
    addrs : numpy.ndarray
        ``uint64`` guest addresses of objects proven backed by :func:`located`.
    size : int
        Object size.

    Raises
    ------
    ReadOnlyMemoryError
        Names the first object that would touch a read-only region.
    """
    readonly = np.array([r.is_readonly() for r in table.regions], dtype=bool)
    if not readonly.any():
        return
    # an object may spill into following regions: count read-only ones in [first, last]
    first = region_indices(table, addrs)
    last = region_indices(table, addrs + np.uint64(size - 1))
    before = np.concatenate(([0], np.cumsum(readonly)))
    bad = np.flatnonzero(before[last + 1] - before[first] > 0)
    if bad.size:
        raise ReadOnlyMemoryError(int(addrs[bad[0]]))


def guest_ranges(ranges: object) -> np.ndarray:
    """Parse ``(n, 2)`` integer ``(start, length)`` guest ranges exactly (no float, no wrap).

    Parameters
    ----------
    ranges : array_like
        ``(start, length)`` rows: an integer array, or a list of Python ints (which may
        exceed int64: they are checked as ints, never rounded through float).

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` ``uint64`` ranges (empty ranges kept).

    Raises
    ------
    ValueError
        ``ranges`` is not ``(n, 2)``.
    TypeError
        A field is not an integer.
    GuestAddressOverflowError
        A field is negative, or a range ends past ``2**64``.
    """
    arr = np.asarray(ranges)
    if arr.size == 0:
        return np.empty((0, 2), dtype=np.uint64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"ranges must be an (n, 2) array of (start, length), not {arr.shape}")
    if arr.dtype.kind in "fO" and not isinstance(ranges, np.ndarray):
        # a list of Python ints past int64 (e.g. 2**64 - 1) comes out float or object:
        # look at the ints themselves, so nothing is rounded
        values = np.asarray(ranges, dtype=object).reshape(-1)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise TypeError(f"ranges must be (n, 2) integers, not {type(v).__name__} {v!r}")
        rows = [(int(a), int(n)) for a, n in values.reshape(-1, 2).tolist()]
        for addr, length in rows:
            if addr < 0 or length < 0 or max(addr, length) >= 1 << 64 or addr + length > 1 << 64:
                raise GuestAddressOverflowError(addr, length)
        return np.array(rows, dtype=np.uint64).reshape(-1, 2)
    if arr.dtype.kind not in "ui":
        raise TypeError(f"ranges must be an (n, 2) integer array, not {arr.dtype}")
    if arr.dtype.kind == "i" and (arr < 0).any():
        k = int(np.argmax((arr < 0).any(axis=1)))
        raise GuestAddressOverflowError(int(arr[k, 0]), int(arr[k, 1]))
    arr = arr.astype(np.uint64)
    # addr + length > 2**64, without wrapping: length - 1 > 2**64 - 1 - addr
    wraps = (arr[:, 1] > 0) & (arr[:, 1] - np.uint64(1) > np.uint64(U64_MAX) - arr[:, 0])
    if wraps.any():
        k = int(np.argmax(wraps))
        raise GuestAddressOverflowError(int(arr[k, 0]), int(arr[k, 1]))
    return arr


def guest_memory(mem: object, name: str = "mem") -> GuestMemoryMmap:
    """Return ``mem`` if it is a guest memory (a dump's included), else raise naming ``name``.

    Raises
    ------
    TypeError
        ``mem`` is not a :class:`~npguest.GuestMemoryMmap`.
    """
    from .guest_memory import GuestMemoryMmap  # (guest_memory imports this module)

    if not isinstance(mem, GuestMemoryMmap):
        raise TypeError(f"{name} must be a GuestMemoryMmap or a dump, not {type(mem).__name__}")
    return mem
