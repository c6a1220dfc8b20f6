"""Bulk copies of guest memory: memory to memory, snapshot files, and dirty-page rounds.

Every copy moves bytes straight between mappings, or between a mapping and a file
(``os.pwritev`` / ``os.preadv`` with memoryviews of the mapping, in chunks): there is no
intermediate ``bytes`` object.  Bulk calls take ``progress`` (see :mod:`npguest.progress`).

Snapshot files use Firecracker's layout (:func:`layout`): each region's image back to back,
in the order of the region table, so :func:`npguest.dumps.firecracker.open_firecracker`
reads what :func:`save` writes.  A *diff* (:func:`save_diff`) has the same size and layout
but holds only the pages dirtied since the last time the bitmaps were taken; everything
else is a hole, as in Firecracker's diff snapshots.  Next to it, ``<file>.index`` lists the
ranges written: a NumPy ``.npy`` array of shape ``(n, 3)``, dtype ``<u8``, one row
``(guest_addr, length, file_offset)`` per range, ascending.  :func:`merge` / :func:`rebase`
apply diffs onto a base file in creation order, from the index when there is one, else from
the file's data extents (``SEEK_DATA`` / ``SEEK_HOLE``, as Firecracker's ``rebase-snap``).

Dirty-driven transfers (:func:`save_diff`, :func:`copy_dirty`) need every region to track
dirty pages.  They take the dirty ranges (atomically) into a :class:`npguest.handover.Taken`,
then move them with its ``hand_over``: anything failing before that (a progress callback,
planning) marks every taken range dirty again; when a range fails (a short write,
``ENOSPC``, a hole in the destination), it and every later range are dirty again and a
:class:`~npguest.errors.StreamError` names it, so a retry sends exactly what is missing.

Memory -> memory copies take each memory's region table once and pin its mappings before
planning, so a concurrent ``close()`` is refused (or, if it came first, the copy fails with
an npguest error) instead of unmapping memory under a running kernel.

Examples
--------
>>> import os, tempfile
>>> from npguest import AtomicBitmap, GuestMemoryMmap
>>> mem = GuestMemoryMmap.from_ranges([(0, 0x4000), (0x10000, 0x2000)], bitmap=AtomicBitmap)
>>> _ = mem.get_and_reset_dirty()               # start the diff chain at the base snapshot
>>> d = tempfile.mkdtemp()
>>> save(mem, os.path.join(d, "base"))
24576
>>> mem.write_slice(b"new", 0x10000)
>>> save_diff(mem, os.path.join(d, "diff1")).tolist()
[[65536, 4096]]
>>> merge(os.path.join(d, "base"), [os.path.join(d, "diff1")], os.path.join(d, "full"))
4096
>>> copy_of = GuestMemoryMmap.from_ranges([(0, 0x4000), (0x10000, 0x2000)])
>>> load(copy_of, os.path.join(d, "full")), copy_of.read_bytes(0x10000, 3)
(24576, b'new')
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import itertools
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ._checks import guest_memory, guest_ranges, open_regions
from .access import Bytes
from .bitmap import mark_many
from .errors import (
    BitmapError,
    DumpFormatError,
    InvalidGuestAddressError,
    ReadOnlyMemoryError,
    StreamError,
)
from .guest_memory import GuestMemoryMmap
from .handover import Taken, _remark
from .progress import ProgressCallback, Tracker
from .walk import backed_runs

if TYPE_CHECKING:
    from .region import RegionTable

__all__ = [
    "INDEX_SUFFIX",
    "copy",
    "copy_dirty",
    "layout",
    "load",
    "merge",
    "rebase",
    "save",
    "save_diff",
]

#: Suffix of a diff's page index (``<diff file>.index``).
INDEX_SUFFIX = ".index"
#: Bytes per system call, and per thread-pool task of a direct copy.
CHUNK = 1 << 26
#: Bytes per ``memcpy`` of a single-threaded direct copy: glibc switches to non-temporal
#: stores only for large calls (``x86_non_temporal_threshold``, 240 MiB here), and cutting a
#: 256 MiB copy into 64 MiB calls makes it 25% slower.
SOLO_CHUNK = 1 << 30
#: Page size used to count dirty pages and zero pages.
PAGE_SIZE = 4096

_U64 = np.uint64
_NO_RANGES = np.empty((0, 2), dtype=np.uint64)

File = str | os.PathLike[str] | int | io.IOBase | Any
Progress = ProgressCallback | bool | None


def _kernels() -> Any:
    from . import _kernels

    return _kernels


def _check_tracked(mem: GuestMemoryMmap, name: str) -> None:
    """Refuse, before any bit is taken, a memory whose bitmaps cannot drive a dirty round.

    Every region must track dirty pages (as :func:`npguest.migration.send` requires): an
    untracked region would silently be left out of every diff.  A bitmap that cannot be
    taken raises ``TypeError`` (from :meth:`GuestMemoryMmap._tracked`).
    """
    tracked = len(mem._tracked("get_and_reset_ranges"))
    total = mem.num_regions()
    if tracked != total:
        what = "has no dirty tracking" if not tracked else (
            f"tracks dirty pages in only {tracked} of its {total} regions"
        )  # fmt: skip
        raise BitmapError("bitmap", tracked, f"{name} {what}: map it with bitmap=AtomicBitmap")


# -- layout ------------------------------------------------------------------------------
def layout(mem: GuestMemoryMmap) -> np.ndarray:
    """Return the Firecracker full-snapshot layout of ``mem``'s regions.

    Region images go back to back in the order of the region table, as Firecracker writes
    them and :func:`~npguest.dumps.firecracker.open_firecracker` reads them.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.

    Returns
    -------
    numpy.ndarray
        ``(n, 3)`` ``uint64`` rows ``(guest_addr, size, file_offset)``; the file's size is
        ``size.sum()``.

    Raises
    ------
    TypeError
        ``mem`` is not a guest memory.

    Examples
    --------
    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x2000), (0x100000, 0x1000)])
    >>> layout(mem).tolist()
    [[0, 8192, 0], [1048576, 4096, 8192]]
    """
    guest_memory(mem, "mem")
    sizes = mem.ends - mem.starts
    offsets = np.cumsum(sizes, dtype=_U64) - sizes
    return np.stack([mem.starts, sizes, offsets], axis=1).astype(_U64).reshape(-1, 3)


def _file_offsets(lay: np.ndarray, addrs: np.ndarray) -> np.ndarray:
    """File offsets of guest addresses backed by the regions of ``lay`` (as int64)."""
    i = np.searchsorted(lay[:, 0], addrs, side="right").astype(np.int64) - 1
    return (lay[i, 2] + (addrs - lay[i, 0])).astype(np.int64)


# -- ranges ------------------------------------------------------------------------------
def _as_ranges(ranges: Any) -> np.ndarray:
    """Validate ``(n, 2)`` ``(start, length)`` guest ranges; drop empty ones."""
    arr = guest_ranges(ranges)
    return arr[arr[:, 1] > 0]


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersect two sorted, disjoint lists of ``[start, end)`` rows."""
    lo = np.searchsorted(b[:, 1], a[:, 0], side="right")
    hi = np.searchsorted(b[:, 0], a[:, 1], side="left")
    counts = np.maximum(hi - lo, 0)
    ia = np.repeat(np.arange(a.shape[0]), counts)
    ib = np.arange(ia.shape[0]) - np.repeat(np.cumsum(counts) - counts - lo, counts)
    start = np.maximum(a[ia, 0], b[ib, 0])
    end = np.minimum(a[ia, 1], b[ib, 1])
    keep = start < end
    return np.stack([start[keep], end[keep]], axis=1).astype(_U64).reshape(-1, 2)


def _runs(mem: GuestMemoryMmap) -> np.ndarray:
    return np.array(backed_runs(mem), dtype=_U64).reshape(-1, 2)


def _to_ranges(spans: np.ndarray) -> np.ndarray:
    """``[start, end)`` rows to ``(start, length)`` rows."""
    return np.stack([spans[:, 0], spans[:, 1] - spans[:, 0]], axis=1).astype(_U64).reshape(-1, 2)


class _Side(NamedTuple):
    """Where each piece lies in one memory: its region and host address, or a fault."""

    region: np.ndarray  # int64, -1 where unbacked
    host: np.ndarray  # int64
    offset: np.ndarray  # int64 region offsets


def _side(t: RegionTable, starts: np.ndarray) -> _Side:
    i = np.searchsorted(t.starts, starts, side="right").astype(np.int64) - 1
    ok = i >= 0
    ok[ok] = starts[ok] < t.ends[i[ok]]
    i[~ok] = -1
    offset = np.zeros(starts.shape[0], dtype=np.int64)
    offset[ok] = (starts[ok] - t.starts[i[ok]]).astype(np.int64)
    host = np.zeros(starts.shape[0], dtype=np.int64)  # (an empty table has no hosts[0])
    host[ok] = t.hosts[i[ok]] + offset[ok]
    return _Side(i, host, offset)


class _Plan(NamedTuple):
    """The pieces of a memory -> memory copy, each inside one region of both memories."""

    src: _Side
    dst: _Side
    lengths: np.ndarray  # int64
    owner: np.ndarray  # index of each piece's range
    bad: int  # index of the first range that cannot be copied (len(ranges) if none)
    error: Exception | None


def _plan(src: RegionTable, dst: RegionTable, ranges: np.ndarray) -> _Plan:
    """Cut ``ranges`` at every region boundary of both tables and translate the pieces.

    The tables must be pinned (:func:`~npguest._checks.open_regions`) before this is
    called: the host addresses of the plan are only valid while their regions are mapped.
    """
    cuts = np.unique(np.concatenate([src.starts, src.ends, dst.starts, dst.ends]))
    cuts_x = np.append(cuts, _U64(0))  # a valid index past the end
    s = ranges[:, 0]
    e = s + ranges[:, 1]
    lo = np.searchsorted(cuts, s, side="right")
    inner = np.searchsorted(cuts, e, side="left") - lo  # cuts strictly inside (s, e)
    owner = np.repeat(np.arange(ranges.shape[0]), inner + 1)
    j = np.arange(owner.shape[0]) - np.repeat(np.cumsum(inner + 1) - (inner + 1), inner + 1)
    at = lo[owner] + j
    starts = np.where(j == 0, s[owner], cuts_x[at - 1])
    ends = np.where(j == inner[owner], e[owner], cuts_x[at])
    a, b = _side(src, starts), _side(dst, starts)
    readonly = np.array([r.is_readonly() for r in dst.regions] + [False], dtype=bool)
    faults = (a.region < 0) | (b.region < 0) | readonly[b.region]
    bad, error = ranges.shape[0], None
    if faults.any():
        k = int(np.argmax(faults))
        bad, addr = int(owner[k]), int(starts[k])
        if b.region[k] >= 0 and a.region[k] >= 0:
            error = ReadOnlyMemoryError(addr)
        else:
            error = InvalidGuestAddressError(addr)
            which = "source" if a.region[k] < 0 else "destination"
            error.add_note(f"the {which} memory does not back {addr:#x}")
    lengths = (ends - starts).astype(np.int64)
    return _Plan(a, b, lengths, owner, bad, error)


# -- the copy engine ---------------------------------------------------------------------
def _copy_pairs(src: np.ndarray, dst: np.ndarray, lengths: np.ndarray) -> int:
    """Copy each piece mapping to mapping (one ``memcpy`` each, one kernel call in all)."""
    _kernels().copy_pairs(src, dst, lengths)
    return int(lengths.sum())


def _tasks(
    src: np.ndarray, dst: np.ndarray, lengths: np.ndarray, chunk: int
) -> list[tuple[Any, ...]]:
    """Split the pieces into tasks of about ``chunk`` bytes: long pieces cut, short ones grouped."""
    cuts = np.maximum(-(-lengths // chunk), 1)
    which = np.repeat(np.arange(lengths.shape[0]), cuts)
    at = (np.arange(which.shape[0]) - np.repeat(np.cumsum(cuts) - cuts, cuts)) * chunk
    s, d, n = src[which] + at, dst[which] + at, np.minimum(lengths[which] - at, chunk)
    group = (np.cumsum(n) - n) // chunk
    bounds = [*np.flatnonzero(np.diff(group, prepend=-1)).tolist(), n.shape[0]]
    return [(_copy_pairs, s[lo:hi], d[lo:hi], n[lo:hi]) for lo, hi in itertools.pairwise(bounds)]


def _run(tasks: list[tuple[Any, ...]], threads: int, tracker: Tracker) -> int:
    done = 0
    if threads <= 1 or len(tasks) <= 1:
        for fn, *args in tasks:
            n = fn(*args)
            done += n
            tracker.advance(n)
        return done
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="npguest-copy") as pool:
        for n in pool.map(lambda task: task[0](*task[1:]), tasks):
            done += n
            tracker.advance(n)
    return done


def _mark_destination(dst: RegionTable, plan: _Plan, count: int) -> None:
    """Mark the first ``count`` pieces' bytes dirty in the destination's bitmaps."""
    regions = dst.regions
    where = plan.dst.region[:count]
    for i in np.unique(where).tolist():
        bitmap = regions[i]._bitmap
        if bitmap is not None:
            sel = where == i
            mark_many(bitmap, plan.dst.offset[:count][sel], plan.lengths[:count][sel])


def _execute(dst: RegionTable, plan: _Plan, count: int, threads: int, tracker: Tracker) -> int:
    """Copy the first ``count`` pieces of ``plan`` (all proven backed and writable).

    The caller holds the pins of both tables the plan was made from.
    """
    chunk = CHUNK if threads > 1 else SOLO_CHUNK
    tasks = _tasks(plan.src.host[:count], plan.dst.host[:count], plan.lengths[:count], chunk)
    done = _run(tasks, threads, tracker)
    _mark_destination(dst, plan, count)
    return done


def _pinned(src: GuestMemoryMmap, dst: GuestMemoryMmap) -> tuple[Any, Any, Any]:
    """Take each memory's region table once and pin it: ``(src_table, dst_table, pins)``.

    Planning and copying both use these tables, so a concurrent ``close()`` either happens
    first (the tables are empty, or pinning fails with
    :class:`~npguest.errors.MmapRegionError`) or is refused while the pins are held.
    """
    ts, td = src._table, dst._table
    pins = open_regions(ts)
    try:
        return ts, td, (pins, open_regions(td))
    except BaseException:
        del pins  # not kept alive by the traceback
        raise


def copy(
    src: GuestMemoryMmap,
    dst: GuestMemoryMmap,
    ranges: Any = None,
    *,
    threads: int = 1,
    progress: Progress = None,
) -> int:
    """Copy guest memory from ``src`` to ``dst``, mapping to mapping.

    The two memories may have different layouts: each range is cut at the region
    boundaries of both.  The bytes written are marked dirty in ``dst``'s bitmaps.

    Parameters
    ----------
    src, dst : GuestMemoryMmap
        The memories.
    ranges : array_like, optional
        ``(n, 2)`` guest ``(start, length)`` ranges to copy.  Default: every byte that
        both memories back (the overlap of their region tables).
    threads : int, optional
        Split the copy over this many threads (the copies release the GIL).
    progress : callable or bool, optional
        Progress reporting (see :mod:`npguest.progress`).

    Returns
    -------
    int
        Bytes copied.

    Raises
    ------
    InvalidGuestAddressError
        Some byte of ``ranges`` is not backed in ``src`` or in ``dst`` (names the first;
        a note says which memory).  Nothing is copied.
    ReadOnlyMemoryError
        Some byte of ``ranges`` lies in a read-only region of ``dst``.  Nothing is copied.
    MmapRegionError
        A memory was closed while the copy began (a ``close()`` racing with a running copy
        is refused instead).
    GuestAddressOverflowError
        A range passes ``2**64 - 1`` or has a negative field.
    TypeError
        ``ranges`` holds non-integers, or a memory is not a guest memory.
    ValueError
        ``ranges`` is not ``(n, 2)``, or ``threads`` is not positive.

    Examples
    --------
    >>> from npguest import GuestMemoryMmap
    >>> a = GuestMemoryMmap.from_ranges([(0, 0x3000)])
    >>> b = GuestMemoryMmap.from_ranges([(0x1000, 0x1000), (0x2000, 0x4000)])
    >>> a.write_slice(b"xyz", 0x1FFE)
    >>> copy(a, b), b.read_bytes(0x1FFE, 3)
    (8192, b'xyz')
    >>> try:
    ...     copy(a, b, [[0x800, 0x1000]])
    ... except InvalidGuestAddressError as exc:
    ...     print(exc)
    ...     print(exc.__notes__[0])
    invalid guest address 0x800: no memory region backs it
    the destination memory does not back 0x800
    """
    guest_memory(src, "src")
    guest_memory(dst, "dst")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, not {threads!r}")
    if ranges is not None:
        ranges = _as_ranges(ranges)
    tracker = Tracker(progress, "copy")
    try:
        ts, td, pins = _pinned(src, dst)  # held until the kernels are done
        try:
            if ranges is None:
                ranges = _to_ranges(_intersect(_runs(src), _runs(dst)))
            plan = _plan(ts, td, ranges)
            if plan.error is not None:
                raise plan.error
            tracker.start(int(plan.lengths.sum()))
            return _execute(td, plan, plan.lengths.shape[0], threads, tracker)
        finally:
            del pins  # before an error leaves: whoever keeps it must not keep the pins
    finally:
        tracker.close()


def _pages(ranges: np.ndarray) -> int:
    """Pages of :data:`PAGE_SIZE` the ranges touch (each range counted alone)."""
    lengths = ranges[:, 1] + (ranges[:, 0] % _U64(PAGE_SIZE)) + _U64(PAGE_SIZE - 1)
    return int((lengths // _U64(PAGE_SIZE)).sum())


def copy_dirty(
    src: GuestMemoryMmap, dst: GuestMemoryMmap, *, progress: Progress = None
) -> np.ndarray:
    """Copy the pages dirtied in ``src`` to ``dst``: one incremental round.

    The dirty ranges are taken (and cleared) first, then copied in batched kernel calls.
    If ``dst`` cannot take a range (a hole, a read-only region), the ranges before it are
    copied, it and every later range are dirty again in ``src``, and a
    :class:`~npguest.errors.StreamError` names it: a retry copies exactly what is missing.
    Any other failure after the ranges are taken (a raising progress callback, an
    interrupt) marks every taken range dirty again.

    Parameters
    ----------
    src : GuestMemoryMmap
        The memory whose dirty bitmaps drive the round (every region tracked, e.g.
        ``bitmap=AtomicBitmap``).
    dst : GuestMemoryMmap
        The destination (any layout backing the dirty ranges).
    progress : callable or bool, optional
        Progress reporting (see :mod:`npguest.progress`).

    Returns
    -------
    numpy.ndarray
        The ``(n, 2)`` ``uint64`` guest ranges copied.

    Raises
    ------
    StreamError
        ``dst`` cannot take a range (``__cause__`` is the
        :class:`~npguest.errors.InvalidGuestAddressError` or
        :class:`~npguest.errors.ReadOnlyMemoryError`).
    BitmapError
        Some region of ``src`` (or all) has no dirty tracking; nothing is taken.
    MmapRegionError
        A memory was closed while the round began; nothing is lost.
    TypeError
        A memory is not a guest memory, or ``src`` has a bitmap that cannot be taken.

    Examples
    --------
    >>> from npguest import AtomicBitmap, GuestMemoryMmap
    >>> src = GuestMemoryMmap.from_ranges([(0, 0x10000)], bitmap=AtomicBitmap)
    >>> dst = GuestMemoryMmap.from_ranges([(0, 0x10000)])
    >>> src.write_slice(b"hi", 0x5000)
    >>> copy_dirty(src, dst).tolist(), dst.read_bytes(0x5000, 2), src.dirty_ranges().tolist()
    ([[20480, 4096]], b'hi', [])
    """
    guest_memory(src, "src")
    guest_memory(dst, "dst")
    _check_tracked(src, "src")
    tracker = Tracker(progress, "copy_dirty")
    try:
        ts, td, pins = _pinned(src, dst)  # held until the kernels are done
        try:
            # from here until hand_over, a failure marks every taken range dirty again
            with Taken(src, src.get_and_reset_dirty()) as taken:
                ranges = taken.ranges
                tracker.start(int(ranges[:, 1].sum()), dirty_pages=_pages(ranges))
                plan = _plan(ts, td, ranges)
                count = int(np.searchsorted(plan.owner, plan.bad))  # pieces of good ranges
                done = _execute(td, plan, count, 1, tracker)
                error = plan.error

                def refuse(addr: int, length: int) -> None:
                    raise error  # the bad range: it and every later one are dirty again

                try:  # the ranges before the bad one were copied by _execute
                    taken.hand_over(refuse, first=plan.bad)
                except StreamError as exc:
                    raise StreamError(exc.reason, done, exc.addr, exc.length) from error
        finally:
            del pins  # before an error leaves: whoever keeps it must not keep the pins
    finally:
        tracker.close()
    return ranges


# -- files -------------------------------------------------------------------------------
@contextlib.contextmanager
def _opened(file: File, write: bool) -> Iterator[tuple[int, str]]:
    """Yield ``(fd, name)`` for a path (opened here), an fd or a file object.

    For writing, the fd must be open for writing and not in append mode (snapshots write
    at file offsets, which ``O_APPEND`` ignores): checked before anything is written.
    """
    if isinstance(file, str | os.PathLike):
        path = os.fspath(file)
        flags = os.O_RDWR | os.O_CREAT if write else os.O_RDONLY
        try:
            fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StreamError(f"cannot open {path!r}: {exc}") from exc
        try:
            yield fd, path
        finally:
            os.close(fd)
        return
    if isinstance(file, int) and not isinstance(file, bool):
        fd, name = file, f"fd {file}"
    elif isinstance(file, io.TextIOBase):
        raise TypeError("snapshot files must be binary (open them with 'rb'/'r+b'), not text")
    else:
        try:
            if write and hasattr(file, "flush"):
                file.flush()
            fd = file.fileno()
        except (AttributeError, OSError, ValueError):
            raise TypeError(
                f"{type(file).__name__} has no file descriptor: pass a path, an fd or a real file"
            ) from None
        name = getattr(file, "name", None)
        name = name if isinstance(name, str) else f"fd {fd}"
    if write:
        _check_writable(fd, name)
    yield fd, name


def _check_writable(fd: int, name: str) -> None:
    """Raise StreamError unless ``fd`` takes writes at offsets (writable, not O_APPEND)."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as exc:
        raise StreamError(f"cannot use {name}: {exc}") from exc
    if flags & os.O_ACCMODE == os.O_RDONLY:
        raise StreamError(f"{name} is open read-only: a snapshot cannot be written to it")
    if flags & os.O_APPEND:
        raise StreamError(
            f"{name} is open for appending, which ignores file offsets: open it with 'r+b'"
        )


def _pio(fd: int, view: memoryview, pos: int, write: bool) -> None:
    """Move all of ``view`` to/from file offset ``pos``; StreamError.completed on failure."""
    done, total = 0, len(view)
    while done < total:
        part = view[done:]
        try:
            n = os.pwritev(fd, [part], pos + done) if write else os.preadv(fd, [part], pos + done)
        except OSError as exc:
            raise StreamError(f"{'write' if write else 'read'} failed: {exc}", done) from exc
        if n == 0:
            reason = "failed to write whole buffer" if write else "the file ended early"
            raise StreamError(f"{reason} at file offset {pos + done:#x}", done)
        if not isinstance(n, int) or not 0 < n <= total - done:
            raise StreamError(f"the file reported moving {n!r} bytes of {total - done}", done)
        done += n


def _move(mem: GuestMemoryMmap, fd: int, addr: int, length: int, pos: int, write: bool,
          tracker: Tracker | None = None) -> None:  # fmt: skip
    """Write guest ``[addr, addr + length)`` to file offset ``pos`` (or read it from there).

    Raises StreamError naming the range, ``completed`` the bytes of it moved.
    """
    done = 0
    pieces = mem._pieces(addr, length, not write)
    if not write:
        Bytes._writable(pieces, addr)
    if sum(p[2] for p in pieces) != length:
        raise InvalidGuestAddressError(addr + sum(p[2] for p in pieces))
    for view, off, n, bitmap, boff in pieces:
        for o in range(0, n, CHUNK):
            c = min(CHUNK, n - o)
            try:
                _pio(fd, view[off + o : off + o + c], pos + done, write)
            except StreamError as exc:
                if not write and bitmap is not None:
                    bitmap.mark_dirty(boff, o + exc.completed)
                raise StreamError(exc.reason, done + exc.completed, addr, length) from (
                    exc.__cause__
                )
            done += c
            if tracker is not None:
                tracker.advance(c)
        if not write and bitmap is not None:
            bitmap.mark_dirty(boff, n)


def _move_all(mem: GuestMemoryMmap, fd: int, ranges: np.ndarray, offsets: np.ndarray,
              write: bool, tracker: Tracker) -> int:  # fmt: skip
    """Move every range; a failure raises StreamError counting the bytes of the whole call."""
    done = 0
    for (addr, length), pos in zip(ranges.tolist(), offsets.tolist(), strict=True):
        try:
            _move(mem, fd, addr, length, pos, write, tracker)
        except StreamError as exc:
            raise StreamError(exc.reason, done + exc.completed, addr, length) from exc.__cause__
        done += length
    return done


def _size_file(fd: int, size: int, fresh: bool) -> None:
    """Give the file ``size`` bytes (all holes first when ``fresh``)."""
    try:
        if fresh:
            os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
    except OSError as exc:
        raise StreamError(f"cannot size the file to {size} bytes: {exc}") from exc


def _refuse_backing_file(mem: GuestMemoryMmap, fd: int, name: str) -> None:
    """Refuse to size or write a snapshot into a file that backs one of ``mem``'s regions.

    Truncating it would pull the pages out from under the mapping (``SIGBUS`` on the next
    access); writing it would overwrite the memory being saved.
    """
    try:
        target = os.fstat(fd)
    except OSError:
        return  # sizing the file reports it
    for region in mem._table.regions:
        backing = region.file_offset()
        if backing is None:
            continue
        try:
            st = os.fstat(backing.fileno())
        except (OSError, ValueError):  # a closed region: nothing is mapped from it
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            raise StreamError(
                f"{name} backs the guest region at {region.start_addr().raw_value():#x}: "
                "a snapshot cannot be written into the file it is taken from"
            )


def _data_ranges(mem: GuestMemoryMmap) -> np.ndarray:
    """Backed guest ranges less the all-zero pages (what a sparse snapshot writes)."""
    from .pages import page_map

    addrs, is_zero = page_map(mem, PAGE_SIZE)
    data = addrs[~is_zero]
    if not data.shape[0]:
        return _NO_RANGES
    head = np.ones(data.shape[0], dtype=bool)
    head[1:] = data[1:] != data[:-1] + _U64(PAGE_SIZE)
    tails = np.append(np.flatnonzero(head)[1:] - 1, data.shape[0] - 1)
    spans = np.stack([data[head], data[tails] + _U64(PAGE_SIZE)], axis=1)
    return _to_ranges(_intersect(spans, _runs(mem)))


def save(mem: GuestMemoryMmap, file: File, *, sparse: bool = False,
         progress: Progress = None) -> int:  # fmt: skip
    """Write a full snapshot of ``mem`` in the Firecracker layout.

    The file is sized to the layout first (an existing file is overwritten in place, so an
    interrupted save leaves a mix of old and new bytes: save to a new name and
    ``os.replace`` it where a snapshot must never be half-written), then each region is
    written straight from its mapping with ``os.pwritev``, in chunks.  The dirty bitmaps
    are not touched: to start a chain of diffs at this snapshot, take them
    (``mem.get_and_reset_dirty()``) just *before* saving, so a write racing with the save
    goes in the first diff.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.
    file : str, os.PathLike, int or binary file
        Where to write (a path is created if needed; an fd or file object must be open for
        writing, and is left open).
    sparse : bool, optional
        Leave all-zero 4 KiB pages as holes (the file starts empty, then is sized).
    progress : callable or bool, optional
        Progress reporting (see :mod:`npguest.progress`).

    Returns
    -------
    int
        Bytes written.

    Raises
    ------
    StreamError
        The file cannot be opened, sized or written (names the guest range; ``completed``
        counts the bytes written before), or it backs one of ``mem``'s regions (refused
        before it is touched: truncating it would pull pages from under the mapping).
    TypeError
        ``file`` has no file descriptor, or ``mem`` is not a guest memory.

    Examples
    --------
    >>> import os, tempfile
    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0x100000, 0x8000)])
    >>> mem.write_slice(b"boot", 0x100000)
    >>> path = os.path.join(tempfile.mkdtemp(), "mem")
    >>> save(mem, path, sparse=True), os.path.getsize(path)
    (4096, 32768)
    """
    lay = layout(mem)
    with _opened(file, write=True) as (fd, name):
        _refuse_backing_file(mem, fd, name)
        _size_file(fd, int(lay[:, 1].sum()), fresh=sparse)
        ranges = _data_ranges(mem) if sparse else lay[:, :2]
        tracker = Tracker(progress, "save")
        try:
            tracker.start(int(ranges[:, 1].sum()))
            return _move_all(mem, fd, ranges, _file_offsets(lay, ranges[:, 0]), True, tracker)
        finally:
            tracker.close()


def load(mem: GuestMemoryMmap, file: File, *, progress: Progress = None) -> int:
    """Read a full snapshot in the Firecracker layout into ``mem``.

    Each region is read straight into its mapping with ``os.preadv``, in chunks, and
    marked dirty.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory (its layout must be the snapshot's).
    file : str, os.PathLike, int or binary file
        The snapshot (an fd or file object is left open).
    progress : callable or bool, optional
        Progress reporting (see :mod:`npguest.progress`).

    Returns
    -------
    int
        Bytes read.

    Raises
    ------
    DumpFormatError
        The file's size is not the layout's.
    StreamError
        The file cannot be opened or read (names the guest range).
    ReadOnlyMemoryError
        A region of ``mem`` is mapped read-only.
    TypeError
        ``file`` has no file descriptor, or ``mem`` is not a guest memory.

    Examples
    --------
    >>> import os, tempfile
    >>> from npguest import GuestMemoryMmap
    >>> path = os.path.join(tempfile.mkdtemp(), "mem")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"A" * 0x1000 + b"B" * 0x1000)
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x8000, 0x1000)])
    >>> load(mem, path), mem.read_bytes(0x8000, 2)
    (8192, b'BB')
    >>> load(GuestMemoryMmap.from_ranges([(0, 0x1000)]), path)
    Traceback (most recent call last):
    ...
    npguest.errors.DumpFormatError: ...: bad file size at file offset 0x1000: 8192 bytes, but ...
    """
    lay = layout(mem)
    need = int(lay[:, 1].sum())
    with _opened(file, write=False) as (fd, name):
        size = os.fstat(fd).st_size
        if size != need:
            raise DumpFormatError(
                name,
                min(size, need),
                "file size",
                f"{size} bytes, but the memory's layout needs {need}: not a snapshot of it",
            )
        ranges = lay[:, :2]
        tracker = Tracker(progress, "load")
        try:
            tracker.start(need)
            return _move_all(mem, fd, ranges, lay[:, 2].astype(np.int64), False, tracker)
        finally:
            tracker.close()


# -- diffs -------------------------------------------------------------------------------
def _default_index(file: File, name: str) -> str | None:
    """``<file>.index`` when ``file`` is known by a path (a path, or a named file object)."""
    if isinstance(file, str | os.PathLike) or os.path.exists(name):
        return name + INDEX_SUFFIX
    return None


def _index_path(file: File, name: str, index: Any) -> str | None:
    if index is False:
        return None
    if index is True:
        default = _default_index(file, name)
        if default is not None:
            return default
        raise TypeError(f"no path is known for {name}: pass index=<path> or index=False")
    return os.fspath(index)


def _drop_stale_index(file: File, name: str) -> None:
    """Remove ``<file>.index`` before the diff is rewritten.

    :func:`merge` trusts the index next to a diff, so an index left from an earlier diff
    of the same name would copy the wrong ranges.  It goes even when a new one will be
    written there: until then (and for good if the diff fails before its index is
    written) the diff is merged through its data extents, which is always right.
    """
    default = _default_index(file, name)
    if default is None:
        return
    try:
        os.unlink(default)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StreamError(f"cannot remove the stale index {default!r}: {exc}") from exc


def _write_index(path: str, rows: np.ndarray) -> None:
    """Write the index atomically (a temporary file in its directory renamed over it)."""
    head, tail = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{tail}.", suffix=".tmp", dir=head or ".")
    try:
        with open(fd, "wb") as f:
            np.save(f, np.ascontiguousarray(rows, dtype="<u8").reshape(-1, 3))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_diff(mem: GuestMemoryMmap, file: File, *, index: Any = True,
              progress: Progress = None) -> np.ndarray:  # fmt: skip
    """Write the pages dirtied since the bitmaps were last taken: a diff snapshot.

    The file gets the full layout's size, the dirty ranges at their full-layout offsets
    and holes elsewhere (Firecracker's diff format); the index next to it lists the
    ranges written (see the module documentation).

    If a write fails, the ranges written so far stay in the file and the index lists them
    (the file is a valid diff of what got through), the failed range and every later one
    are dirty again, and :class:`~npguest.errors.StreamError` names the range: the next
    diff, merged after this one, completes it.  Any other failure after the ranges are
    taken (a raising progress callback, an interrupt) marks every taken range dirty again.

    An existing ``<file>.index`` is removed before the file is truncated (whatever
    ``index`` says), so :func:`merge` never pairs this diff with an earlier diff's index;
    the new index is written atomically once the ranges are through.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory, with dirty tracking (:class:`~npguest.AtomicBitmap`) in every region.
    file : str, os.PathLike, int or binary file
        Where to write (truncated first); not a file backing one of ``mem``'s regions.
    index : bool, str or os.PathLike, optional
        ``True`` (default): write ``<file>.index`` (needs a path, or a file object named by
        one); a path: write the index there; ``False``: no index (a bare Firecracker diff).
    progress : callable or bool, optional
        Progress reporting (see :mod:`npguest.progress`).

    Returns
    -------
    numpy.ndarray
        The ``(n, 2)`` ``uint64`` guest ranges taken from the bitmaps.

    Raises
    ------
    StreamError
        A write failed (names the range; the rest is dirty again), the index could not
        be written (every range taken is dirty again), a stale ``<file>.index`` cannot be
        removed, or ``file`` backs one of ``mem``'s regions (nothing is taken or written).
    BitmapError
        Some region of ``mem`` (or all) has no dirty tracking; the file is not touched.
    TypeError
        No index path is known, ``file`` has no descriptor, ``mem`` is not a guest
        memory, or a bitmap cannot be taken.

    Examples
    --------
    >>> import os, tempfile
    >>> from npguest import AtomicBitmap, GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x10000)], bitmap=AtomicBitmap)
    >>> mem.write_slice(b"dirty", 0x3000)
    >>> path = os.path.join(tempfile.mkdtemp(), "diff")
    >>> save_diff(mem, path).tolist(), os.path.getsize(path)
    ([[12288, 4096]], 65536)
    >>> np.load(path + ".index").tolist()          # (guest_addr, length, file_offset)
    [[12288, 4096, 12288]]
    """
    guest_memory(mem, "mem")
    _check_tracked(mem, "mem")
    lay = layout(mem)
    with _opened(file, write=True) as (fd, name):
        index_path = _index_path(file, name, index)
        _refuse_backing_file(mem, fd, name)
        _drop_stale_index(file, name)
        _size_file(fd, int(lay[:, 1].sum()), fresh=True)
        tracker = Tracker(progress, "save_diff")
        try:
            # from here until hand_over, a failure marks every taken range dirty again
            with Taken(mem, mem.get_and_reset_dirty()) as taken:
                ranges = taken.ranges
                offsets = _file_offsets(lay, ranges[:, 0])
                where = dict(zip(ranges[:, 0].tolist(), offsets.tolist(), strict=True))
                tracker.start(int(ranges[:, 1].sum()), dirty_pages=_pages(ranges))
                try:
                    taken.hand_over(lambda a, n: _move(mem, fd, a, n, where[a], True), tracker)
                except StreamError as exc:
                    k = int(np.searchsorted(ranges[:, 0], _U64(exc.addr)))
                    through = exc.completed - int(ranges[:k, 1].sum())
                    sent = np.concatenate([ranges[:k], [[exc.addr, through]]]).astype(_U64)
                    _index_or_remark(mem, ranges, sent[sent[:, 1] > 0], index_path, lay)
                    raise
                _index_or_remark(mem, ranges, ranges, index_path, lay)
        finally:
            tracker.close()
    return ranges


def _index_or_remark(mem: GuestMemoryMmap, taken: np.ndarray, sent: np.ndarray,
                     path: str | None, lay: np.ndarray) -> None:  # fmt: skip
    """Write the index of ``sent``; if that fails, mark every taken range dirty again."""
    if path is None:
        return
    rows = np.column_stack([sent, _file_offsets(lay, sent[:, 0]).astype(_U64)])
    try:
        _write_index(path, rows)
    except OSError as exc:
        _remark(mem, taken)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise StreamError(f"cannot write the index {path!r}: {exc}") from exc


def _diff_extents(path: str, fd: int, size: int) -> list[tuple[int, int]]:
    """``(file_offset, length)`` of the data of a diff: from its index, else SEEK_DATA."""
    index = path + INDEX_SUFFIX
    if not os.path.exists(index):
        from .dumps.dump import data_extents

        return data_extents(fd, 0, size)
    try:
        rows = np.load(index, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DumpFormatError(index, 0, "header", f"not an .npy array: {exc}") from exc
    if rows.dtype != np.dtype("<u8") or rows.ndim != 2 or rows.shape[1] != 3:
        raise DumpFormatError(
            index, 0, "ranges", f"{rows.dtype} of shape {rows.shape}, expected (n, 3) <u8"
        )
    ends = rows[:, 2] + rows[:, 1]
    bad = (ends > _U64(size)) | (ends < rows[:, 2])
    if bad.any():
        k = int(np.argmax(bad))
        raise DumpFormatError(
            index, 0, f"ranges[{k}]",
            f"file range {int(rows[k, 2]):#x}+{int(rows[k, 1])} passes the diff's {size} bytes",
        )  # fmt: skip
    return list(zip(rows[:, 2].tolist(), rows[:, 1].tolist(), strict=True))


#: ``copy_file_range`` errors that mean "not between these two files": use sendfile.
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


def _copy_range(src: int, dst: int, pos: int, length: int, name: str) -> None:
    """Copy ``length`` bytes at ``pos`` between two files, in the kernel.

    ``copy_file_range`` first (reflinks, server-side copies); across file systems where the
    kernel refuses it, ``sendfile`` from the same offset.
    """
    done, ranged = 0, True
    while done < length:
        at, n = pos + done, min(length - done, CHUNK)
        try:
            if ranged:
                n = os.copy_file_range(src, dst, n, at, at)
            else:
                os.lseek(dst, at, os.SEEK_SET)
                n = os.sendfile(dst, src, at, n)
        except OSError as exc:
            if ranged and exc.errno in _NO_COPY_RANGE:
                ranged = False
                continue
            raise StreamError(
                f"copying file range {pos:#x}+{length} of {name} failed: {exc}", done
            ) from exc
        if n == 0:
            raise StreamError(f"{name} ended early at file offset {at:#x}", done)
        done += n


def merge(base: str | os.PathLike[str], diffs: Sequence[str | os.PathLike[str]],
          out: str | os.PathLike[str] | None = None) -> int:  # fmt: skip
    """Apply diff snapshots onto a base snapshot, in creation order.

    Each diff's data (the ranges of its index, or without one its data extents, as
    Firecracker's ``rebase-snap``) is copied over the base at the same file offsets.
    Every diff is opened and checked (size, index) before any byte is copied, so a bad
    diff leaves the base as it was; with ``out``, the result is built in a temporary file
    next to ``out`` and renamed over it only once complete.  (In place, an I/O error in
    the middle of copying can still leave the base partly merged: use ``out`` to be safe.)

    Parameters
    ----------
    base : str or os.PathLike
        The full snapshot the first diff was taken after (must exist; never created).
    diffs : sequence of str or os.PathLike
        The diffs, oldest first.
    out : str or os.PathLike, optional
        Write the result here (atomically replaced; it gets ``base``'s permissions and
        keeps its holes); default: update ``base`` in place.

    Returns
    -------
    int
        Bytes copied from the diffs.

    Raises
    ------
    DumpFormatError
        A diff's size is not the base's, or its index is malformed (nothing is copied).
    StreamError
        A file cannot be opened (a missing base is named), read or written.

    Examples
    --------
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> base, diff = os.path.join(d, "base"), os.path.join(d, "diff")
    >>> with open(base, "wb") as f:
    ...     _ = f.write(b"a" * 0x3000)
    >>> with open(diff, "wb") as f:                   # a Firecracker diff: no index
    ...     _ = f.truncate(0x3000)
    ...     _ = f.seek(0x1000)
    ...     _ = f.write(b"b" * 0x1000)
    >>> merge(base, [diff])
    4096
    >>> with open(base, "rb") as f:
    ...     f.read()[0xFFF:0x1001]
    b'ab'
    """
    base = os.fspath(base)
    flags = os.O_RDONLY if out is not None else os.O_RDWR
    try:
        bfd = os.open(base, flags | os.O_CLOEXEC)  # never O_CREAT: a missing base is an error
    except OSError as exc:
        raise StreamError(f"cannot open the base {base!r}: {exc}") from exc
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, bfd)
        size = os.fstat(bfd).st_size
        work = []  # every diff is opened and checked before any byte is copied
        for diff in diffs:
            dfd, name = stack.enter_context(_opened(os.fspath(diff), write=False))
            diff_size = os.fstat(dfd).st_size
            if diff_size != size:
                raise DumpFormatError(
                    name, min(size, diff_size), "file size",
                    f"{diff_size} bytes, but the base has {size}: not a diff of it",
                )  # fmt: skip
            work.append((dfd, name, _diff_extents(name, dfd, size)))
        if out is None:
            return _apply(work, bfd)
        return _merge_into(os.fspath(out), base, bfd, size, work)


def _apply(work: list[tuple[int, str, list[tuple[int, int]]]], target: int) -> int:
    """Copy each diff's extents over ``target``, in order; return the bytes copied."""
    total = 0
    for dfd, name, extents in work:
        for pos, length in extents:
            _copy_range(dfd, target, pos, length, name)
            total += length
    return total


def _merge_into(out: str, base: str, bfd: int, size: int,
                work: list[tuple[int, str, list[tuple[int, int]]]]) -> int:  # fmt: skip
    """Build the merge in a temporary file next to ``out``, then rename it over ``out``."""
    from .dumps.dump import data_extents

    head, tail = os.path.split(out)
    try:
        tfd, tmp = tempfile.mkstemp(prefix=f".{tail}.", suffix=".tmp", dir=head or ".")
    except OSError as exc:
        raise StreamError(f"cannot create a file next to {out!r}: {exc}") from exc
    try:
        try:
            os.fchmod(tfd, stat.S_IMODE(os.fstat(bfd).st_mode))
            os.ftruncate(tfd, size)
        except OSError as exc:
            raise StreamError(f"cannot size {tmp!r} to {size} bytes: {exc}") from exc
        try:
            extents = data_extents(bfd, 0, size)  # the base's holes stay holes
        except OSError as exc:
            raise StreamError(f"cannot find the data of {base!r}: {exc}") from exc
        for pos, length in extents:
            _copy_range(bfd, tfd, pos, length, base)
        total = _apply(work, tfd)
        try:
            os.replace(tmp, out)
        except OSError as exc:
            raise StreamError(f"cannot rename {tmp!r} to {out!r}: {exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(tfd)
    return total


def rebase(diff: str | os.PathLike[str], base: str | os.PathLike[str]) -> int:
    """Apply one diff onto a base snapshot in place (Firecracker's ``rebase-snap``).

    Parameters
    ----------
    diff : str or os.PathLike
        The diff.
    base : str or os.PathLike
        The base, updated in place.

    Returns
    -------
    int
        Bytes copied from the diff.

    Raises
    ------
    DumpFormatError
        The diff's size is not the base's, or its index is malformed.
    StreamError
        A file cannot be opened, read or written.

    See Also
    --------
    merge : several diffs at once, optionally into a new file.

    Examples
    --------
    >>> import os, tempfile
    >>> from npguest import AtomicBitmap, GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x2000)], bitmap=AtomicBitmap)
    >>> d = tempfile.mkdtemp()
    >>> _ = mem.get_and_reset_dirty(); _ = save(mem, os.path.join(d, "base"))
    >>> mem.write_slice(b"v2", 0x1000)
    >>> _ = save_diff(mem, os.path.join(d, "diff"))
    >>> rebase(os.path.join(d, "diff"), os.path.join(d, "base"))
    4096
    """
    return merge(base, [diff])
