"""Page summaries of a whole guest memory, as arrays: zero pages, hashes, entropy, diffs.

Every function walks the memory once with :func:`npguest.walk.iter_chunks` (so it works
on any memory: live ones, dumps, kdump dumps read through their page cache) and hands
blocks of whole pages to a numba kernel that releases the GIL.  Results are ``uint64``
guest page addresses beside an array of per-page values, ascending.

Pages are aligned to ``page_size`` in guest address space (a power of two from 8 bytes to
1 GiB).  A page is *backed* when any of its bytes is; the bytes of a partly backed page
that nothing backs (a region that starts or ends inside the page, a hole a dump cut out
of it) read as zeros, alike for every summary, so a partly backed page with no data is a
zero page, and two memories that agree on the backed bytes of such a page agree on it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from functools import partial
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from ._checks import guest_memory
from .guest_memory import GuestMemoryMmap
from .walk import CHUNK, backed_runs, iter_chunks

__all__ = [
    "DiffResult",
    "diff",
    "duplicate_pages",
    "page_entropy",
    "page_hashes",
    "page_map",
    "zero_pages",
]

#: Largest page size accepted (1 GiB huge pages).
MAX_PAGE_SIZE = 1 << 30
#: Entries of the ``c * log2(c)`` table the entropy kernel looks counts up in.
_XLOGX_MAX = 1 << 16
#: Bytes of pages compared per batch when :func:`duplicate_pages` verifies hash groups.
_VERIFY_BYTES = 1 << 24

_U64 = np.uint64


def _k() -> ModuleType:
    """Return the kernel module (importing numba on first use)."""
    from . import _kernels

    return _kernels


def _check_page_size(page_size: Any) -> int:
    """Return ``page_size`` as an int, or raise naming it."""
    if isinstance(page_size, bool) or not isinstance(page_size, int | np.integer):
        raise TypeError(f"page_size must be an integer, got {type(page_size).__name__}")
    size = int(page_size)
    if not 8 <= size <= MAX_PAGE_SIZE or size & (size - 1):
        raise ValueError(f"page_size must be a power of two from 8 to 2**30, got {size}")
    return size


# -- walking whole pages ------------------------------------------------------------------
class _PartPage:
    """The page being assembled from pieces that do not cover it (zeros elsewhere)."""

    def __init__(self, page_size: int) -> None:
        self.size = page_size
        self.addr = -1  # none
        self.buf = np.zeros(0, dtype=np.uint8)

    def add(self, addr: int, piece: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Copy ``piece`` (inside one page) in; first yield the previous page if it is done."""
        if not piece.shape[0]:
            return
        page = addr - addr % self.size
        if page != self.addr:
            yield from self.take()
            self.addr, self.buf = page, np.zeros(self.size, dtype=np.uint8)
        self.buf[addr - page : addr - page + piece.shape[0]] = piece

    def take(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield the page assembled so far (if any) and forget it."""
        if self.addr >= 0:
            yield self.addr, self.buf
        self.addr = -1


def _page_blocks(mem: GuestMemoryMmap, page_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(addr, data)``: every backed page once, ascending, in blocks of whole pages.

    ``data`` holds ``len(data) // page_size`` pages from guest address ``addr`` (a page
    boundary): a zero-copy view of a region where whole pages lie inside one, else a
    buffer (a partly backed page, zero-filled).  Use each block before the next.
    """
    part = _PartPage(page_size)
    chunk = max(CHUNK // page_size, 1) * page_size
    for addr, data, owned in iter_chunks(mem, chunk):
        end = addr + owned
        lo = -(-addr // page_size) * page_size  # the first page boundary at or after addr
        hi = end // page_size * page_size  # the last at or before end (hi < lo: none)
        yield from part.add(addr, data if hi < lo else data[: lo - addr])
        if lo < hi:
            yield from part.take()
            yield lo, data[lo - addr : hi - addr]
        if lo <= hi:
            yield from part.add(hi, data[hi - addr :])
    yield from part.take()


def _words(data: np.ndarray) -> np.ndarray:
    """Return whole pages of bytes as ``uint64`` words (copied if not 8-byte aligned)."""
    if data.ctypes.data % 8:
        data = data.copy()
    return data.view(np.uint64)


def _per_page(
    mem: Any, page_size: Any, dtype: type, fill: Callable[[np.ndarray, int, np.ndarray], None]
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``fill(data, page_size, out)`` over every block of pages; return addrs and values."""
    guest_memory(mem)
    page_size = _check_page_size(page_size)
    addrs, values = [], []
    for addr, data in _page_blocks(mem, page_size):
        out = np.empty(data.shape[0] // page_size, dtype=dtype)
        fill(data, page_size, out)  # data holds exactly out.shape[0] whole pages
        addrs.append(np.arange(out.shape[0], dtype=_U64) * _U64(page_size) + _U64(addr))
        values.append(out)
    if not addrs:
        return np.empty(0, dtype=_U64), np.empty(0, dtype=dtype)
    return np.concatenate(addrs), np.concatenate(values)


def _zero_fill(data: np.ndarray, page_size: int, out: np.ndarray) -> None:
    _k().pages_zero(_words(data), page_size // 8, out)


def _hash_fill(data: np.ndarray, page_size: int, out: np.ndarray) -> None:
    _k().pages_xxh64(_words(data), page_size // 8, out)


def _xlogx(page_size: int) -> np.ndarray:
    """Return ``c * log2(c)`` for ``c`` in ``0..min(page_size, 2**16)`` (0 for 0)."""
    c = np.arange(min(page_size, _XLOGX_MAX) + 1, dtype=np.float64)
    c[0] = 1.0  # 1 * log2(1) = 0 stands for 0 * log2(0) = 0
    return c * np.log2(c)


def _entropy_fill(xlogx: np.ndarray, data: np.ndarray, page_size: int, out: np.ndarray) -> None:
    _k().pages_entropy(data, page_size, xlogx, out)


# -- summaries ----------------------------------------------------------------------------
def page_map(mem: GuestMemoryMmap, page_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Return every backed page and whether it is all zero.

    Every page is read whole, as one vectorised OR of its words: on mixed memory this
    streams at memory speed, twice as fast as stopping at a page's first non-zero word
    (skipping the rest of a page breaks the hardware prefetcher's stream).

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory (dumps included).
    page_size : int, optional
        Page size: a power of two from 8 to 2**30 (default 4096).

    Returns
    -------
    addrs : numpy.ndarray
        ``uint64`` guest addresses of the backed pages, ascending.
    is_zero : numpy.ndarray
        ``bool``: the page's bytes are all zero (unbacked bytes of a page count as zero).

    Raises
    ------
    TypeError
        ``mem`` is not a guest memory, or ``page_size`` not an integer.
    ValueError
        ``page_size`` is not a power of two from 8 to 2**30.

    Examples
    --------
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x2000), (0x2000, 0x800)])
    >>> mem.write(b"x", 0x1234)
    1
    >>> addrs, is_zero = page_map(mem)
    >>> [hex(a) for a in addrs.tolist()], is_zero.tolist()
    (['0x0', '0x1000', '0x2000'], [True, False, True])
    """
    return _per_page(mem, page_size, np.bool_, _zero_fill)


def zero_pages(mem: GuestMemoryMmap, page_size: int = 4096) -> np.ndarray:
    """Return the guest addresses of the all-zero pages (see :func:`page_map`).

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory.
    page_size : int, optional
        Page size (default 4096).

    Returns
    -------
    numpy.ndarray
        ``uint64`` page addresses, ascending.

    Raises
    ------
    TypeError
        ``mem`` is not a guest memory, or ``page_size`` not an integer.
    ValueError
        ``page_size`` is not a power of two from 8 to 2**30.

    Examples
    --------
    >>> mem = GuestMemoryMmap.from_ranges([(0x10000, 0x3000)])
    >>> mem.write(b"x", 0x11000)
    1
    >>> [hex(a) for a in zero_pages(mem).tolist()]
    ['0x10000', '0x12000']
    """
    addrs, is_zero = page_map(mem, page_size)
    return addrs[is_zero]


def page_hashes(mem: GuestMemoryMmap, page_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Return a 64-bit hash of every backed page, for deduplication and diffing.

    The hash is XXH64 with seed 0 of the page's bytes (``xxhash.xxh64_intdigest(page)``):
    fast and well mixed, but not cryptographic.  Equal pages have equal hashes; unequal
    pages collide with probability about ``2**-64`` per pair (about ``n**2 / 2**65`` for
    ``n`` pages: negligible by chance, but anyone may craft collisions on purpose), so
    compare bytes before trusting a match (:func:`duplicate_pages` does).

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory.
    page_size : int, optional
        Page size (default 4096).

    Returns
    -------
    addrs : numpy.ndarray
        ``uint64`` page addresses, ascending.
    hashes : numpy.ndarray
        ``uint64`` hashes.

    Raises
    ------
    TypeError
        ``mem`` is not a guest memory, or ``page_size`` not an integer.
    ValueError
        ``page_size`` is not a power of two from 8 to 2**30.

    Examples
    --------
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x3000)])
    >>> mem.write(b"same", 0x0), mem.write(b"same", 0x2000)
    (4, 4)
    >>> addrs, hashes = page_hashes(mem)
    >>> bool(hashes[0] == hashes[2]), bool(hashes[0] == hashes[1])
    (True, False)
    >>> hex(page_hashes(mem, 8)[1][-1])  # XXH64 of 8 zero bytes
    '0x34c96acdcadb1bbb'
    """
    return _per_page(mem, page_size, _U64, _hash_fill)


def page_entropy(mem: GuestMemoryMmap, page_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Return the Shannon entropy of each backed page's bytes, in bits per byte.

    ``-sum(p_b * log2(p_b))`` over the byte values ``b`` of the page, ``p_b`` their
    frequencies: 0 for a page of one repeated byte, 8 for every byte value equally often
    (compressed or encrypted data comes close).  Unbacked bytes of a page count as zeros.

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory.
    page_size : int, optional
        Page size (default 4096).

    Returns
    -------
    addrs : numpy.ndarray
        ``uint64`` page addresses, ascending.
    entropy : numpy.ndarray
        ``float64`` bits per byte, in ``[0, min(8, log2(page_size))]``.

    Raises
    ------
    TypeError
        ``mem`` is not a guest memory, or ``page_size`` not an integer.
    ValueError
        ``page_size`` is not a power of two from 8 to 2**30.

    Examples
    --------
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x2000)])
    >>> mem.write_slice(bytes(range(256)) * 16, 0x1000)
    >>> page_entropy(mem)[1].tolist()
    [0.0, 8.0]
    """
    fill = partial(_entropy_fill, _xlogx(_check_page_size(page_size)))
    return _per_page(mem, page_size, np.float64, fill)


# -- duplicates ---------------------------------------------------------------------------
def _read_pages(
    mem: GuestMemoryMmap, addrs: np.ndarray, page_size: int, runs: list[tuple[int, int]]
) -> np.ndarray:
    """Read the backed pages at ``addrs`` as rows, their unbacked bytes as zeros.

    ``runs`` is ``backed_runs(mem)`` (less a dump's excluded ranges): a page not inside
    one run is read piece by piece from the runs it meets.
    """
    rows, _ = mem.read_objs(addrs, f"V{page_size}", holes="mask")
    rows = rows.view(np.uint8).reshape(addrs.shape[0], page_size)
    ends = [e for _, e in runs]
    starts = np.array([s for s, _ in runs] or [0], dtype=np.uint64)
    lasts = np.array([e - 1 for e in ends] or [0], dtype=np.uint64)  # (an end may be 2**64)
    run = np.searchsorted(starts, addrs, side="right") - 1
    inside = (run >= 0) & (addrs + np.uint64(page_size - 1) <= lasts[np.maximum(run, 0)])
    for i in np.flatnonzero(~inside).tolist():
        rows[i] = 0
        first = int(addrs[i])
        j = bisect_right(ends, first)  # the first run ending past the page's start
        while j < len(runs) and runs[j][0] < first + page_size:
            lo, hi = max(runs[j][0], first), min(runs[j][1], first + page_size)
            mem.read_slice(rows[i, lo - first : hi - first], lo)
            j += 1
    return rows


def _exact_groups(rows: np.ndarray) -> np.ndarray:
    """Label rows by their bytes: equal rows get one label (``int64``)."""
    return np.unique(rows, axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def duplicate_pages(mem: GuestMemoryMmap, page_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Group the backed pages whose bytes are equal (zero pages included).

    Pages are grouped by :func:`page_hashes`, then every member of a group is compared
    byte for byte with the group's first page: a hash collision never merges pages.

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory.
    page_size : int, optional
        Page size (default 4096).

    Returns
    -------
    addrs : numpy.ndarray
        ``uint64`` addresses of the pages that have at least one equal page, sorted by
        group, then address.
    groups : numpy.ndarray
        ``int64`` group of each page, ``0..g-1``, numbered in order of each group's first
        address.  ``np.split(addrs, np.flatnonzero(np.diff(groups)) + 1)`` lists them.

    Raises
    ------
    TypeError
        ``mem`` is not a guest memory, or ``page_size`` not an integer.
    ValueError
        ``page_size`` is not a power of two from 8 to 2**30.

    Examples
    --------
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x5000)])
    >>> for a in (0x0, 0x3000):
    ...     _ = mem.write(b"twin", a)
    >>> addrs, groups = duplicate_pages(mem)
    >>> [hex(a) for a in addrs.tolist()], groups.tolist()
    (['0x0', '0x3000', '0x1000', '0x2000', '0x4000'], [0, 0, 1, 1, 1])
    """
    page_size = _check_page_size(page_size)
    addrs, hashes = page_hashes(mem, page_size)
    order = np.argsort(hashes, kind="stable")  # addresses ascend within equal hashes
    h = hashes[order]
    first = np.ones(h.shape[0], dtype=bool)
    first[1:] = h[1:] != h[:-1]
    bucket = np.cumsum(first) - 1
    keep = np.bincount(bucket)[bucket] > 1
    cand, label = addrs[order[keep]], bucket[keep]
    # compare each candidate with its bucket's first (lowest) page, in batches of pages
    heads = np.flatnonzero(np.r_[True, label[1:] != label[:-1]])
    head_of = np.repeat(heads, np.diff(np.r_[heads, cand.shape[0]]))
    differs = np.zeros(cand.shape[0], dtype=bool)
    runs = backed_runs(mem)
    batch = max(_VERIFY_BYTES // page_size, 1)
    for s in range(0, cand.shape[0], batch):
        rows = _read_pages(mem, cand[s : s + batch], page_size, runs)
        ref_idx, ref_inv = np.unique(head_of[s : s + batch], return_inverse=True)
        refs = _read_pages(mem, cand[ref_idx], page_size, runs)[ref_inv.reshape(-1)]
        out = differs[s : s + rows.shape[0]]
        _k().pages_differ(_words(rows.reshape(-1)), _words(refs.reshape(-1)), page_size // 8, out)
    moved = np.flatnonzero(differs)  # hash collisions: regroup these by their bytes (equal
    if moved.size:  # pages hash alike, so no page of another bucket can equal them)
        exact = _exact_groups(_read_pages(mem, cand[moved], page_size, runs))
        label[moved] = int(label.max()) + 1 + exact
    return _numbered(cand, label)


def _numbered(addrs: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop singleton labels; number groups by first address; sort by group, address."""
    _, inverse, counts = np.unique(label, return_inverse=True, return_counts=True)
    keep = counts[inverse] > 1
    addrs, inverse = addrs[keep], inverse[keep]
    if not addrs.size:
        return addrs, np.empty(0, dtype=np.int64)
    order = np.lexsort((addrs, inverse))
    addrs, inverse = addrs[order], inverse[order]
    firsts = np.flatnonzero(np.r_[True, inverse[1:] != inverse[:-1]])
    rank = np.empty(firsts.shape[0], dtype=np.int64)
    rank[np.argsort(addrs[firsts], kind="stable")] = np.arange(firsts.shape[0])
    groups = np.repeat(rank, np.diff(np.r_[firsts, addrs.shape[0]]))
    order = np.lexsort((addrs, groups))
    return addrs[order], groups[order]


# -- diffs --------------------------------------------------------------------------------
class DiffResult(NamedTuple):
    """What :func:`diff` found: three arrays of coalesced guest ``(start, length)`` ranges.

    Each is a ``(n, 2)`` ``uint64`` array of page-aligned ranges, ascending and
    non-adjacent.

    Attributes
    ----------
    changed : numpy.ndarray
        Pages both memories back whose bytes differ.
    only_a : numpy.ndarray
        Pages only the first memory backs.
    only_b : numpy.ndarray
        Pages only the second memory backs.
    """

    changed: np.ndarray
    only_a: np.ndarray
    only_b: np.ndarray


def _coalesce(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Join sorted, disjoint ``[start, end)`` ranges that touch; return ``(start, length)``."""
    if not starts.shape[0]:
        return np.empty((0, 2), dtype=_U64)
    head = np.r_[True, starts[1:] != ends[:-1]]
    tail = np.r_[head[1:], True]
    s, e = starts[head], ends[tail]
    return np.stack((s, e - s), axis=1).astype(_U64)


def _ranges(spans: list[tuple[int, int]]) -> np.ndarray:
    """Coalesce sorted ``(start, length)`` spans (an end may wrap to 0 at ``2**64``)."""
    arr = np.array(spans, dtype=_U64).reshape(-1, 2)
    return _coalesce(arr[:, 0], arr[:, 0] + arr[:, 1])


def _changed_spans(
    addr: int, a: np.ndarray, b: np.ndarray, page_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Compare equal-length blocks of whole pages; return the ranges of those that differ."""
    differ = np.empty(a.shape[0] // page_size, dtype=bool)
    _k().pages_differ(_words(a), _words(b), page_size // 8, differ)
    edges = np.diff(np.r_[False, differ, False].view(np.int8))
    first = np.flatnonzero(edges == 1).astype(_U64) * _U64(page_size) + _U64(addr)
    last = np.flatnonzero(edges == -1).astype(_U64) * _U64(page_size) + _U64(addr)
    return first, last


def diff(mem_a: GuestMemoryMmap, mem_b: GuestMemoryMmap, page_size: int = 4096) -> DiffResult:
    """Compare two memories page by page (e.g. two snapshots of one guest).

    Both are walked once, side by side, and the pages both back are compared whole in a
    kernel (an OR of the XORs of their words).  Unbacked bytes of a partly backed page
    read as zeros on either side.

    Parameters
    ----------
    mem_a, mem_b : GuestMemoryMmap
        The memories (any mix of live memories and dumps).
    page_size : int, optional
        Comparison granularity (default 4096).

    Returns
    -------
    DiffResult
        ``(changed, only_a, only_b)`` as coalesced ``(start, length)`` ranges.

    Raises
    ------
    TypeError
        A memory is not a guest memory, or ``page_size`` not an integer.
    ValueError
        ``page_size`` is not a power of two from 8 to 2**30.

    Examples
    --------
    >>> a = GuestMemoryMmap.from_ranges([(0, 0x4000)])
    >>> b = GuestMemoryMmap.from_ranges([(0x1000, 0x4000)])
    >>> b.write(b"!", 0x2010), b.write(b"!", 0x3010)
    (1, 1)
    >>> [[(hex(s), hex(n)) for s, n in r.tolist()] for r in diff(a, b)]
    [[('0x2000', '0x2000')], [('0x0', '0x1000')], [('0x4000', '0x1000')]]
    """
    guest_memory(mem_a, "mem_a")
    guest_memory(mem_b, "mem_b")
    page_size = _check_page_size(page_size)
    walk_a, walk_b = _page_blocks(mem_a, page_size), _page_blocks(mem_b, page_size)
    xa, xb = next(walk_a, None), next(walk_b, None)
    firsts, lasts = [np.empty(0, dtype=_U64)], [np.empty(0, dtype=_U64)]
    only_a: list[tuple[int, int]] = []
    only_b: list[tuple[int, int]] = []
    while xa is not None and xb is not None:
        (sa, da), (sb, db) = xa, xb
        ea, eb = sa + da.shape[0], sb + db.shape[0]
        if sa < sb:  # a's pages before b's next: a alone backs them
            cut = min(ea, sb)
            only_a.append((sa, cut - sa))
        elif sb < sa:
            cut = min(eb, sa)
            only_b.append((sb, cut - sb))
        else:
            cut = min(ea, eb)
            first, last = _changed_spans(sa, da[: cut - sa], db[: cut - sb], page_size)
            firsts.append(first)
            lasts.append(last)
        xa = xa if cut <= sa else (cut, da[cut - sa :]) if cut < ea else next(walk_a, None)
        xb = xb if cut <= sb else (cut, db[cut - sb :]) if cut < eb else next(walk_b, None)
    for x, rest, spans in ((xa, walk_a, only_a), (xb, walk_b, only_b)):
        while x is not None:
            spans.append((x[0], x[1].shape[0]))
            x = next(rest, None)
    changed = _coalesce(np.concatenate(firsts), np.concatenate(lasts))
    return DiffResult(changed, _ranges(only_a), _ranges(only_b))
