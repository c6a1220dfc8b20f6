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

from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import StreamError
from .progress import Tracker

__all__ = ["hand_over", "split_ranges"]


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
        ``send`` raised: the failed range (from its first byte not handed over) and every
        later range are dirty again; the error names the range, ``completed`` counts the
        bytes handed over before it, and ``__cause__`` is ``send``'s exception.
    """
    ranges = np.asarray(ranges, dtype=np.uint64).reshape(-1, 2)
    done = 0
    for i, (addr, length) in enumerate(ranges.tolist()):
        try:
            send(addr, length)
        except Exception as exc:
            through = getattr(exc, "completed", 0)
            through = through if isinstance(through, int) and 0 <= through <= length else 0
            if through < length:
                mem.mark_dirty(addr + through, length - through)
            for later, n in ranges[i + 1 :].tolist():
                mem.mark_dirty(later, n)
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            raise StreamError(reason, done + through, addr, length) from exc
        done += length
        if tracker is not None:
            tracker.advance(length)
    return done
