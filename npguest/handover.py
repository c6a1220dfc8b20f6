"""Handing dirty guest ranges to a destination without ever losing a page.

Incremental snapshots, dirty-page copies and pre-copy migration rounds all do the same
thing: take the dirty ranges from the bitmaps (:meth:`GuestMemoryMmap.get_and_reset_dirty`,
atomically, *before* reading the bytes -- a write that lands while a range is being sent
marks it again, so it goes in the next round), then move each range.  If moving one fails,
:func:`hand_over` marks that range (from the first byte that did not get through) and every
later one dirty again, and raises :class:`~npguest.errors.StreamError` naming the range: a
retry sends exactly what is missing.

Examples
--------
>>> from npguest import AtomicBitmap, GuestMemoryMmap
>>> mem = GuestMemoryMmap.from_ranges([(0, 0x4000)], bitmap=AtomicBitmap)
>>> mem.write(b"ab", 0x1000), mem.write(b"cd", 0x3000)
(2, 2)
>>> sent = []
>>> def send(addr, length):
...     if addr == 0x3000:
...         raise OSError("connection reset")
...     sent.append(addr)
>>> try:
...     hand_over(mem, mem.get_and_reset_dirty(), send)
... except StreamError as exc:
...     print(exc)
stream error after 4096 bytes in guest range 0x3000+4096: connection reset
>>> sent, mem.dirty_ranges().tolist()
([4096], [[12288, 4096]])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import GuestMemoryError, StreamError
from .progress import Tracker

__all__ = ["Taken", "hand_over", "split_ranges"]


def split_ranges(ranges: np.ndarray, chunk: int) -> np.ndarray:
    """Cut ``(start, length)`` ranges into pieces of at most ``chunk`` bytes, in order.

    Parameters
    ----------
    ranges : numpy.ndarray
        ``(n, 2)`` ``uint64`` ranges.
    chunk : int
        The largest piece, > 0.

    Returns
    -------
    numpy.ndarray
        ``(m, 2)`` ``uint64`` ranges covering the same bytes.

    Raises
    ------
    ValueError
        ``chunk`` is not positive.

    Examples
    --------
    >>> split_ranges(np.array([[0, 10], [20, 4]], dtype=np.uint64), 4).tolist()
    [[0, 4], [4, 4], [8, 2], [20, 4]]
    """
    if chunk <= 0:
        raise ValueError(f"chunk must be > 0, not {chunk}")
    ranges = np.asarray(ranges, dtype=np.uint64).reshape(-1, 2)
    pieces = (ranges[:, 1] + np.uint64(chunk - 1)) // np.uint64(chunk)
    which = np.repeat(np.arange(len(ranges)), pieces.astype(np.int64))
    first = np.cumsum(pieces) - pieces  # index of each range's first piece
    k = (np.arange(len(which), dtype=np.uint64) - first[which]) * np.uint64(chunk)
    starts = ranges[which, 0] + k
    lengths = np.minimum(ranges[which, 1] - k, np.uint64(chunk))
    return np.stack([starts, lengths], axis=1).astype(np.uint64).reshape(-1, 2)


def _remark(mem: Any, ranges: Any) -> None:
    """Mark guest ranges dirty again, each as far as it is still backed."""
    for addr, length in np.asarray(ranges, dtype=np.uint64).reshape(-1, 2).tolist():
        with contextlib.suppress(GuestMemoryError):  # a hole cuts it: its backed part is marked
            mem.mark_dirty(addr, length)


def hand_over(
    mem: Any,
    ranges: np.ndarray,
    send: Callable[[int, int], Any],
    tracker: Tracker | None = None,
) -> int:
    """Move each guest range with ``send(addr, length)``; on failure, re-mark what is left.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory whose dirty bitmaps ``ranges`` were taken from.
    ranges : numpy.ndarray
        ``(n, 2)`` guest ``(start, length)`` ranges, already taken from the bitmaps.
    send : callable
        ``send(addr, length)`` moves the range's bytes to the destination, or raises.  An
        exception with an int ``completed`` attribute (as :class:`StreamError` and
        :class:`~npguest.errors.PartialBufferError` have) says how many of the range's
        bytes did get through.
    tracker : Tracker, optional
        Advanced by each range's length once it is handed over.

    Returns
    -------
    int
        Bytes handed over (the sum of the lengths).

    Raises
    ------
    StreamError
        ``send`` (or the tracker's callback) raised: the failed range (from its first
        byte not handed over) and every later range are dirty again; the error names the
        range, ``completed`` counts the bytes handed over before it, and ``__cause__`` is
        the original exception.  A ``BaseException`` that is not an ``Exception``
        (``KeyboardInterrupt``...) re-marks the same ranges and propagates unchanged.
    """
    ranges = np.asarray(ranges, dtype=np.uint64).reshape(-1, 2)
    done = 0
    for i, (addr, length) in enumerate(ranges.tolist()):
        through = 0
        try:
            try:
                send(addr, length)
            except BaseException as exc:
                through = getattr(exc, "completed", 0)
                through = through if isinstance(through, int) and 0 <= through <= length else 0
                raise
            through = length
            if tracker is not None:
                tracker.advance(length)
        except BaseException as exc:
            if through < length:
                _remark(mem, [(addr + through, length - through)])
            _remark(mem, ranges[i + 1 :])
            if not isinstance(exc, Exception):
                raise
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise StreamError(reason, done + through, addr, length) from exc
        done += length
    return done


class Taken:
    """Dirty ranges taken from a memory's bitmaps, held until :meth:`hand_over` takes charge.

    A context manager for the work between taking the ranges and handing them over
    (planning, opening files, progress callbacks): if it raises, every taken range is
    marked dirty again.  Once :meth:`hand_over` runs, it alone re-marks what did not get
    through.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory the ranges were taken from.
    ranges : numpy.ndarray
        ``(n, 2)`` guest ranges (e.g. ``mem.get_and_reset_dirty()``).

    Examples
    --------
    >>> from npguest import AtomicBitmap, GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x2000)], bitmap=AtomicBitmap)
    >>> _ = mem.write(b"x", 0x1000)
    >>> try:
    ...     with Taken(mem, mem.get_and_reset_dirty()) as taken:
    ...         raise RuntimeError("the destination cannot be opened")
    ... except RuntimeError:
    ...     pass
    >>> mem.dirty_ranges().tolist()
    [[4096, 4096]]
    """

    def __init__(self, mem: Any, ranges: np.ndarray) -> None:
        self.mem = mem
        self.ranges = np.asarray(ranges, dtype=np.uint64).reshape(-1, 2)
        self._handed = False

    def __enter__(self) -> Taken:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is not None and not self._handed:
            _remark(self.mem, self.ranges)

    def hand_over(
        self, send: Callable[[int, int], Any], tracker: Tracker | None = None, *, first: int = 0
    ) -> int:
        """Hand the ranges over with :func:`hand_over` (which re-marks what fails).

        Parameters
        ----------
        send : callable
            As :func:`hand_over`'s.
        tracker : Tracker, optional
            As :func:`hand_over`'s.
        first : int, optional
            The ranges before this index already reached the destination another way (a
            batched copy): they are neither sent nor re-marked.

        Returns
        -------
        int
            Bytes handed over by ``send``.

        Raises
        ------
        ValueError
            ``first`` is not in ``[0, len(ranges)]`` (nothing is handed over; the ranges
            stay held).
        """
        if (
            isinstance(first, bool)
            or not isinstance(first, int)
            or not 0 <= first <= len(self.ranges)
        ):
            raise ValueError(f"first must be an index in [0, {len(self.ranges)}], not {first!r}")
        self._handed = True
        return hand_over(self.mem, self.ranges[first:], send, tracker)
