"""Progress of bulk transfers: a callback API, and a tqdm bar when one can be shown.

Every bulk operation of :mod:`npguest.transfer` and :mod:`npguest.migration` takes a
``progress`` argument:

- ``None`` (the default): nothing is reported;
- ``True``: a `tqdm <https://tqdm.github.io>`_ bar on standard error, when tqdm is installed
  and standard error is a terminal (otherwise nothing);
- a callable: called with a :class:`Progress` after every chunk handed to the destination
  and at the start of every round.

Examples
--------
>>> seen = []
>>> tracker = Tracker(seen.append)
>>> tracker.start(total=8192, round=1, dirty_pages=2)
>>> tracker.advance(4096)
>>> tracker.close()
>>> [(p.done, p.total, p.round, p.dirty_pages) for p in seen]
[(0, 8192, 1, 2), (4096, 8192, 1, 2)]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Progress", "ProgressCallback", "Tracker"]


@dataclass(frozen=True)
class Progress:
    """Where a transfer stands.

    Attributes
    ----------
    done : int
        Bytes of this round handed to the destination so far.
    total : int
        Bytes this round moves.
    round : int
        The round: 0 for a one-shot copy; 1, 2... for pre-copy rounds (1 is the full copy).
    dirty_pages : int
        Dirty pages this round sends (0 where no bitmap drives the transfer).
    elapsed : float
        Seconds since the round started.
    """

    done: int
    total: int
    round: int
    dirty_pages: int
    elapsed: float

    @property
    def rate(self) -> float:
        """Return the round's throughput so far, in bytes per second (0.0 before any time).

        Returns
        -------
        float
            ``done / elapsed``.
        """
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[Progress], Any]


def _tqdm_bar(desc: str) -> Any:
    """Return a tqdm bar class bound to ``desc``, or ``None`` without tqdm or a terminal."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)


class Tracker:
    """Report a transfer's progress to a callback, a tqdm bar, or nowhere.

    Parameters
    ----------
    progress : callable, bool or None
        What to report to (see the module's docstring).
    desc : str
        The tqdm bar's label.

    Raises
    ------
    TypeError
        ``progress`` is neither ``None``, a bool nor a callable.
    """

    def __init__(self, progress: ProgressCallback | bool | None, desc: str = "npguest") -> None:
        if progress is not None and not isinstance(progress, bool) and not callable(progress):
            raise TypeError(f"progress must be None, a bool or a callable, not {progress!r}")
        self._callback = progress if callable(progress) else None
        self._bar = _tqdm_bar(desc) if progress is True else None
        self._done = self._total = self._round = self._dirty = 0
        self._t0 = time.perf_counter()

    def _emit(self) -> None:
        if self._callback is not None:
            elapsed = time.perf_counter() - self._t0
            self._callback(Progress(self._done, self._total, self._round, self._dirty, elapsed))

    def start(self, total: int, round: int = 0, dirty_pages: int = 0) -> None:
        """Begin a round that moves ``total`` bytes (reported at once).

        Parameters
        ----------
        total : int
            Bytes the round moves.
        round : int
            The round's number (0: a one-shot copy).
        dirty_pages : int
            Dirty pages the round sends.
        """
        self._done, self._total, self._round, self._dirty = 0, total, round, dirty_pages
        self._t0 = time.perf_counter()
        if self._bar is not None:
            self._bar.reset(total=total)
            if round:
                self._bar.set_postfix(round=round, dirty=dirty_pages)
        self._emit()

    def advance(self, nbytes: int) -> None:
        """Record ``nbytes`` more handed to the destination.

        Parameters
        ----------
        nbytes : int
            Bytes just handed over.
        """
        self._done += nbytes
        if self._bar is not None:
            self._bar.update(nbytes)
        self._emit()

    def close(self) -> None:
        """Close the tqdm bar, if any."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
