"""Validators run before any kernel or copy: batch addresses, located spans, writability.

A kernel only ever sees arrays whose every index and span was proven here first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .address import U64_MAX, address_array
from .errors import InvalidGuestAddressError, MmapRegionError, ReadOnlyMemoryError

if TYPE_CHECKING:
    from .region import RegionTable

__all__ = ["batch_addresses", "first_unbacked", "located", "open_regions", "writable_targets"]


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


def open_regions(table: RegionTable) -> None:
    """Check that no region of ``table`` was closed (a kernel would touch unmapped memory).

    Parameters
    ----------
    table : RegionTable
        The regions.

    Raises
    ------
    MmapRegionError
        A region is closed.
    """
    for r in table.regions:
        if r._mapping._closed:
            raise MmapRegionError(f"the region at {r._start:#x} is closed")


def located(table: RegionTable, addrs: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Find region index and offset of every ``[addr, addr + size)``, proving each is backed.

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
    tuple of (numpy.ndarray, numpy.ndarray, int)
        ``int64`` region indices, ``int64`` offsets, and the number of objects that
        straddle adjacent regions.

    Raises
    ------
    InvalidGuestAddressError
        Some object is not wholly backed: names the first unbacked byte of the first such
        object, with a note giving the element index.
    MmapRegionError
        A region is closed.
    """
    from . import _kernels

    open_regions(table)
    region = np.empty(addrs.shape[0], dtype=np.int64)
    offset = np.empty(addrs.shape[0], dtype=np.int64)
    bad, straddlers = _kernels.locate(table.starts, table.ends, addrs, size, region, offset)
    if bad >= 0:
        a = int(addrs[bad])
        exc = InvalidGuestAddressError(first_unbacked(table, a, size))
        exc.add_note(f"element {bad}: the {size}-byte object at {a:#x} is not wholly backed")
        raise exc
    return region, offset, straddlers


def writable_targets(table: RegionTable, addrs: np.ndarray, region: np.ndarray, size: int) -> None:
    """Check that every object located in ``table`` lies in writable regions.

    Parameters
    ----------
    table : RegionTable
        The regions.
    addrs, region : numpy.ndarray
        Addresses and their region indices from :func:`located`.
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
    last = np.searchsorted(table.starts, addrs + np.uint64(size - 1), side="right") - 1
    before = np.concatenate(([0], np.cumsum(readonly)))
    bad = np.flatnonzero(before[last + 1] - before[region] > 0)
    if bad.size:
        raise ReadOnlyMemoryError(int(addrs[bad[0]]))
