"""Moving guest ranges to and from sockets, pipes, fds and files, zero-copy from the mapping.

:func:`send_ranges` writes the bytes of guest ``(start, length)`` ranges to a *sink*, back
to back; :func:`recv_ranges` fills them from a *source*.  Nothing is copied in user space:

- a socket gets ``socket.sendmsg`` with a list of memoryviews of the mapping (one call
  gathers up to ``IOV_MAX`` pieces), except pieces of a file-backed shared region, which go
  by :func:`os.sendfile` straight from the page cache;
- a raw fd (an ``int``: a pipe, a file) gets :func:`os.writev` with the same lists;
- a binary file object gets its ``write`` method, one call per piece;
- a source is read with ``recv_into`` / :func:`os.readv` / ``readinto`` straight into the
  mapping (:func:`npguest.stream.read_into`), marking the pages dirty as any write does.

Ranges are integer ``(start, length)`` pairs, validated whole before they are cut into
chunks or a byte moves: a float raises :class:`TypeError`, a negative value or a range
ending past ``2**64`` :class:`~npguest.errors.GuestAddressOverflowError`.  Ranges may cross
adjacent regions; a hole raises :class:`~npguest.errors.InvalidGuestAddressError` naming
its first address.  Transfers go in chunks of :data:`CHUNK` bytes, the unit of progress reports.  A
failure raises :class:`~npguest.errors.StreamError` naming the chunk's guest range, with
``completed`` counting the bytes moved before it.

Examples
--------
>>> import os
>>> from npguest import GuestMemoryMmap
>>> src = GuestMemoryMmap.from_ranges([(0, 0x2000), (0x2000, 0x2000)])
>>> dst = GuestMemoryMmap.from_ranges([(0, 0x4000)])
>>> src.write(b"across the boundary", 0x1FF8)
19
>>> r, w = os.pipe()
>>> send_ranges(src, [(0x1FF0, 0x20)], w)
32
>>> recv_ranges(dst, [(0x1FF0, 0x20)], r)
32
>>> dst.read_bytes(0x1FF8, 19)
b'across the boundary'
>>> os.close(r), os.close(w)
(None, None)
"""

from __future__ import annotations

import math
import os
import select
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ._checks import guest_ranges
from .errors import (
    GuestAddressOverflowError,
    InvalidGuestAddressError,
    PartialBufferError,
    StreamError,
)
from .handover import split_ranges
from .progress import ProgressCallback, Tracker
from .stream import write_all

if TYPE_CHECKING:
    from .guest_memory import GuestMemoryMmap
    from .region import GuestRegionMmap

__all__ = ["CHUNK", "FileSpan", "Piece", "pieces", "recv_ranges", "send_ranges", "write_items"]

#: Bytes per transfer chunk (and per progress report).
CHUNK = 1 << 22
#: Most buffers one ``sendmsg`` / ``writev`` call takes.
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024


class Piece(NamedTuple):
    """A contiguous part of a guest range: ``n`` bytes at ``offset`` in ``region``."""

    region: GuestRegionMmap
    offset: int
    n: int

    def array(self) -> np.ndarray:
        """Return the piece's bytes as a zero-copy ``uint8`` array (untracked)."""
        return self.region.as_array()[self.offset : self.offset + self.n]


class FileSpan(NamedTuple):
    """``n`` bytes at ``offset`` of the open file ``fd``, for :func:`os.sendfile`."""

    fd: int
    offset: int
    n: int


def _check_backed(mem: GuestMemoryMmap, ranges: np.ndarray) -> None:
    """Raise InvalidGuestAddressError at the first unbacked byte of the first such range."""
    ranges = ranges[ranges[:, 1] > 0]
    if not len(ranges):
        return
    starts = np.asarray(mem.starts, dtype=np.uint64)
    ends = np.asarray(mem.ends, dtype=np.uint64)
    if not len(starts):
        raise InvalidGuestAddressError(int(ranges[0, 0]))
    new_run = np.ones(len(starts), dtype=bool)  # runs of adjacent regions
    new_run[1:] = starts[1:] != ends[:-1]
    run_starts = starts[new_run]
    run_ends = ends[np.append(new_run[1:], True)]
    addr, end = ranges[:, 0], ranges[:, 0] + (ranges[:, 1] - np.uint64(1))  # last byte
    j = np.searchsorted(run_starts, addr, side="right").astype(np.int64) - 1
    ok = j >= 0
    jj = np.maximum(j, 0)
    start_in = ok & (addr < run_ends[jj])
    bad = ~start_in | (end >= run_ends[jj])
    if bad.any():
        k = int(np.argmax(bad))
        raise InvalidGuestAddressError(int(addr[k]) if not start_in[k] else int(run_ends[jj[k]]))


def pieces(mem: GuestMemoryMmap, addr: int, length: int) -> list[Piece]:
    """Split guest ``[addr, addr + length)`` into contiguous pieces, one per region.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.
    addr : int
        First guest address.
    length : int
        Bytes.

    Returns
    -------
    list of Piece
        The pieces, in order (empty for ``length == 0``).

    Raises
    ------
    InvalidGuestAddressError
        A byte of the range is not backed (the error names the first such address).
    GuestAddressOverflowError
        ``addr`` or ``length`` is negative, or the range ends past ``2**64 - 1``.
    """
    if addr < 0 or length < 0 or addr + length > 1 << 64:
        raise GuestAddressOverflowError(addr, length)
    out = []
    while length:
        region = mem.find_region(addr)
        if region is None:
            raise InvalidGuestAddressError(addr)
        offset = addr - int(region.start_addr())
        n = min(region.len() - offset, length)
        out.append(Piece(region, offset, n))
        addr, length = addr + n, length - n
    return out


def _payload(piece: Piece, sink: Any) -> memoryview | FileSpan:
    """Return what carries ``piece`` to ``sink``: a file span for sendfile, or a view."""
    fo = piece.region.file_offset()
    if fo is not None and isinstance(sink, socket.socket) and piece.region.get_mmap().is_shared():
        try:
            return FileSpan(fo.fileno(), fo.start() + piece.offset, piece.n)
        except ValueError:  # the backing file was closed since (the mapping lives on)
            pass
    return memoryview(piece.array())


def _sendfile(sink: socket.socket, span: FileSpan) -> int:
    """Send a file span with :func:`os.sendfile`, honouring the socket's timeout.

    A socket with a timeout is non-blocking underneath: where ``sendfile`` would block it
    fails with ``EAGAIN``, and this waits (up to the timeout) for room, as ``socket.sendall``
    does.
    """
    timeout = sink.gettimeout()
    poller = select.poll()
    poller.register(sink, select.POLLOUT)
    sent = 0
    while sent < span.n:
        try:
            n = os.sendfile(sink.fileno(), span.fd, span.offset + sent, span.n - sent)
        except BlockingIOError as exc:
            wait = -1 if timeout is None else min(math.ceil(timeout * 1000), 2**31 - 1)
            if timeout == 0.0 or not poller.poll(wait):
                raise StreamError(f"sendfile timed out after {timeout} s", sent) from exc
            continue
        except OSError as exc:
            raise StreamError(f"sendfile failed: {exc}", sent) from exc
        if n == 0:
            raise StreamError("sendfile sent nothing: the file ends before the region", sent)
        sent += n
    return sent


def _gather(sink: Any) -> Any:
    """Return ``call(views) -> bytes written`` for a gathering sink, or None."""
    if isinstance(sink, socket.socket):
        return sink.sendmsg
    if isinstance(sink, int):
        return lambda views: os.writev(sink, views)
    return None


def _write_views(sink: Any, views: list[memoryview]) -> int:
    """Write ``views`` in order, gathering; a short write is finished by ``write_all``."""
    gather = _gather(sink)
    written = 0
    if gather is None:
        for view in views:
            written += write_all(sink, view, written)
        return written
    i = 0
    while i < len(views):
        end = min(i + IOV_MAX, len(views))
        try:
            n = gather(views[i:end])
        except OSError as exc:
            raise StreamError(f"write failed: {exc}", written) from exc
        while i < end and n >= len(views[i]):
            n -= len(views[i])
            written += len(views[i])
            i += 1
        if i < end:  # views[i] went part way (or not at all): write_all finishes or raises
            written += n
            written += write_all(sink, views[i][n:], written)
            i += 1
    return written


def write_items(sink: Any, items: Sequence[bytes | memoryview | FileSpan]) -> int:
    """Write buffers and file spans to ``sink`` in order, with as few calls as possible.

    Parameters
    ----------
    sink : socket, int fd or binary file object
        Where the bytes go.
    items : sequence of bytes-like or FileSpan
        Buffers (gathered into ``sendmsg`` / ``writev`` calls) and file spans (sent with
        :func:`os.sendfile`; only for socket sinks).

    Returns
    -------
    int
        Bytes written.

    Raises
    ------
    StreamError
        The sink failed or took nothing; ``completed`` counts the bytes of ``items``
        written before the failure (a lower bound when a socket timed out).
    """
    done = 0
    views: list[memoryview] = []
    for item in items:
        if isinstance(item, FileSpan):
            try:
                done += _write_views(sink, views)
                done += _sendfile(sink, item)
            except StreamError as exc:
                raise StreamError(exc.reason, done + exc.completed) from exc
            views = []
        elif len(item):
            views.append(memoryview(item).cast("B"))
    try:
        return done + _write_views(sink, views)
    except StreamError as exc:
        raise StreamError(exc.reason, done + exc.completed) from exc


def _planned(mem: GuestMemoryMmap, ranges: Any) -> list[tuple[int, int, list[Piece]]]:
    """Validate ``ranges``, then chunk them and split every chunk into pieces (before any I/O).

    Everything is checked before a range is split, so a huge or wrapping range costs nothing.
    """
    arr = guest_ranges(ranges)
    _check_backed(mem, arr)
    chunks = split_ranges(arr, CHUNK).tolist()
    return [(addr, n, pieces(mem, addr, n)) for addr, n in chunks]


def send_ranges(
    mem: GuestMemoryMmap,
    ranges: Any,
    sink: Any,
    *,
    progress: ProgressCallback | bool | None = None,
) -> int:
    """Write the bytes of guest ranges to ``sink``, back to back, zero-copy from the mapping.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.
    ranges : array_like
        ``(n, 2)`` guest ``(start, length)`` ranges, sent in order.
    sink : socket, int fd or binary file object
        Where the bytes go.
    progress : callable, bool or None, optional
        See :mod:`npguest.progress` (reported per chunk, round 0).

    Returns
    -------
    int
        Bytes sent (the sum of the lengths).

    Raises
    ------
    InvalidGuestAddressError
        A range is not fully backed (nothing is sent); the error names its first unbacked
        byte.
    GuestAddressOverflowError
        A start or length is negative, or a range ends past ``2**64`` (nothing is sent).
    TypeError
        ``ranges`` are not integers (a float address is not rounded).
    StreamError
        The sink failed: the error names the chunk's guest range; ``completed`` counts
        the bytes sent before the failure.
    ValueError
        ``ranges`` is not ``(n, 2)``.
    """
    plan = _planned(mem, ranges)
    tracker = Tracker(progress, "send")
    tracker.start(sum(n for _, n, _ in plan))
    done = 0
    try:
        for addr, n, parts in plan:
            try:
                write_items(sink, [_payload(p, sink) for p in parts])
            except StreamError as exc:
                raise StreamError(exc.reason, done + exc.completed, addr, n) from exc
            done += n
            tracker.advance(n)
    finally:
        tracker.close()
    return done


def recv_ranges(
    mem: GuestMemoryMmap,
    ranges: Any,
    source: Any,
    *,
    progress: ProgressCallback | bool | None = None,
) -> int:
    """Fill guest ranges from ``source``, in order, reading straight into the mapping.

    The pages written are marked dirty in the regions' bitmaps.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.
    ranges : array_like
        ``(n, 2)`` guest ``(start, length)`` ranges, filled in order.
    source : socket, int fd or binary file object
        Where the bytes come from.
    progress : callable, bool or None, optional
        See :mod:`npguest.progress` (reported per chunk, round 0).

    Returns
    -------
    int
        Bytes received (the sum of the lengths).

    Raises
    ------
    InvalidGuestAddressError
        A range is not fully backed (nothing is read); the error names its first unbacked
        byte.
    GuestAddressOverflowError
        A start or length is negative, or a range ends past ``2**64`` (nothing is read).
    TypeError
        ``ranges`` are not integers (a float address is not rounded).
    StreamError
        The source failed or ended early: the error names the chunk's guest range;
        ``completed`` counts the bytes received before it.
    ReadOnlyMemoryError
        The memory is mapped read-only.
    ValueError
        ``ranges`` is not ``(n, 2)``.
    """
    plan = _planned(mem, ranges)
    tracker = Tracker(progress, "receive")
    tracker.start(sum(n for _, n, _ in plan))
    done = 0
    try:
        for addr, n, _ in plan:
            done += recv_range(mem, addr, n, source, done)
            tracker.advance(n)
    finally:
        tracker.close()
    return done


def recv_range(mem: GuestMemoryMmap, addr: int, n: int, source: Any, done: int = 0) -> int:
    """Fill guest ``[addr, addr + n)``, already known to be backed, from ``source``.

    The step of :func:`recv_ranges` for one chunk, without its validation (for callers that
    validated the range themselves, as the migration receiver does for every record).

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.
    addr : int
        First guest address.
    n : int
        Bytes to read.
    source : socket, int fd or binary file object
        Where the bytes come from.
    done : int, optional
        Bytes the caller's operation moved before, reported on failure.

    Returns
    -------
    int
        ``n``.

    Raises
    ------
    StreamError
        The source failed or ended early: names ``[addr, addr + n)``; ``completed``
        counts ``done`` plus the bytes of this range received.
    """
    try:
        mem.read_exact_volatile_from(addr, source, n)
    except PartialBufferError as exc:  # (the range has no holes: the stream ended)
        raise StreamError(
            f"the stream ended after {exc.completed} of {n} bytes", done + exc.completed, addr, n
        ) from exc
    except StreamError as exc:
        raise StreamError(exc.reason, done + exc.completed, addr, n) from exc
    return n
