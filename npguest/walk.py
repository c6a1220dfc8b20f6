"""Walking a whole guest memory in bounded chunks: what scans and page summaries stand on.

A memory's backed bytes form *runs*: maximal stretches of adjacent regions (less the
ranges a dump excluded).  :func:`iter_chunks` yields each run in pieces of at most ``chunk``
bytes (plus an ``overlap`` into the next piece, so a match that straddles a piece boundary,
or a region boundary inside a run, is still seen whole).  A piece inside one region is a
zero-copy view of its mapping; one that straddles adjacent regions, or that lies in a memory
without host memory (a kdump dump, decompressed on demand), is read into a buffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np

from .errors import HostAddressNotAvailableError

__all__ = ["Chunk", "backed_runs", "iter_chunks"]

#: Default piece size: large enough to amortise per-call costs, small enough for the cache.
CHUNK = 1 << 24


class Chunk(NamedTuple):
    """One piece of a run of guest memory.

    Attributes
    ----------
    addr : int
        Guest address of ``data[0]``.
    data : numpy.ndarray
        ``uint8`` bytes: ``owned`` bytes of the piece, then up to ``overlap`` bytes of the
        next piece of the same run.
    owned : int
        How many bytes of ``data`` this piece owns (report a match only if it starts
        there, and every match is reported once).
    """

    addr: int
    data: np.ndarray
    owned: int


def backed_runs(mem: Any) -> list[tuple[int, int]]:
    """Return the ``(start, end)`` runs of adjacent regions, less the ranges a dump excluded.

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory (a dump's ``metadata.excluded`` ranges are cut out).

    Returns
    -------
    list of (int, int)
        Ascending, disjoint, non-adjacent ``[start, end)`` guest ranges.

    Examples
    --------
    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000), (0x8000, 0x100)])
    >>> [(hex(s), hex(e)) for s, e in backed_runs(mem)]
    [('0x0', '0x2000'), ('0x8000', '0x8100')]
    """
    runs: list[tuple[int, int]] = []
    for s, e in zip(mem.starts.tolist(), mem.ends.tolist(), strict=True):
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], e)
        else:
            runs.append((s, e))
    excluded = getattr(getattr(mem, "metadata", None), "excluded", None)
    if excluded is None or not len(excluded):
        return runs
    return _cut(runs, np.asarray(excluded, dtype=np.uint64).reshape(-1, 2))


def _cut(runs: list[tuple[int, int]], excluded: np.ndarray) -> list[tuple[int, int]]:
    """Remove sorted, disjoint ``(gpa, size)`` ranges from sorted runs (one search per run)."""
    cut_lo = excluded[:, 0]
    cut_hi = cut_lo + excluded[:, 1]
    out: list[tuple[int, int]] = []
    for s, e in runs:
        start, end = np.uint64(s), np.uint64(e)
        i = int(np.searchsorted(cut_hi, start, side="right"))
        j = int(np.searchsorted(cut_lo, end, side="left"))
        if i == j:  # no excluded range meets this run
            out.append((s, e))
            continue
        # kept pieces: [s, lo_i), [hi_i, lo_i+1), ..., [hi_j-1, e)
        lo = np.empty(j - i + 1, dtype=np.uint64)
        hi = np.empty(j - i + 1, dtype=np.uint64)
        lo[0], hi[-1] = start, end
        lo[1:] = np.minimum(cut_hi[i:j], end)
        hi[:-1] = np.maximum(cut_lo[i:j], start)
        keep = lo < hi
        out += list(zip(lo[keep].tolist(), hi[keep].tolist(), strict=True))
    return out


def iter_chunks(mem: Any, chunk: int = CHUNK, overlap: int = 0) -> Iterator[Chunk]:
    """Yield every backed byte of ``mem`` once, in ascending pieces with an overlap.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory (a dump, a live memory, a kdump dump read through its page cache).
    chunk : int, optional
        Bytes each piece owns (default 16 MiB).
    overlap : int, optional
        Bytes of the next piece of the same run appended to each piece (for a pattern of
        ``n`` bytes, ``n - 1``).

    Yields
    ------
    Chunk
        ``(addr, data, owned)``.  ``data`` may be a view of the memory: use it before
        asking for the next piece, and do not keep it.

    Raises
    ------
    ValueError
        ``chunk`` is not positive, or ``overlap`` is negative.

    Examples
    --------
    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000)])
    >>> [(hex(c.addr), len(c.data), c.owned) for c in iter_chunks(mem, 0xC00, overlap=4)]
    [('0x0', 3076, 3072), ('0xc00', 3076, 3072), ('0x1800', 2048, 2048)]
    """
    if chunk <= 0 or overlap < 0:
        raise ValueError(f"chunk must be positive and overlap non-negative: {chunk}, {overlap}")
    views = _region_views(mem)
    starts = mem.starts.tolist()
    for s, e in backed_runs(mem):
        for a in range(s, e, chunk):
            owned = min(chunk, e - a)
            end = min(a + owned + overlap, e)
            yield Chunk(a, _piece(mem, views, starts, a, end), owned)


def _region_views(mem: Any) -> list[np.ndarray | None]:
    """Each region's ``uint8`` array, or None where it has no host memory (kdump)."""
    views: list[np.ndarray | None] = []
    for region in mem.iter():
        try:
            views.append(region.as_array())
        except HostAddressNotAvailableError:
            views.append(None)
    return views


def _piece(mem: Any, views: list[np.ndarray | None], starts: list[int], a: int, end: int) -> Any:
    from bisect import bisect_right

    i = bisect_right(starts, a) - 1
    view = views[i]
    off = a - starts[i]
    if view is not None and end - starts[i] <= view.shape[0]:
        return view[off : end - starts[i]]  # inside one mapped region: zero copy
    buf = np.empty(end - a, dtype=np.uint8)
    mem.read_slice(buf, a)
    return buf
