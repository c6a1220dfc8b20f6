"""Scale-out on Dask: scan many dumps at once, and view a dump as dask arrays.

When one process is not enough (hundreds of dumps, or more memory than one box scans in
time), the work is cut into *tasks* of at most ``chunk`` bytes of one backed run of one
dump.  A task carries only a path, its open options and a guest range: the worker opens
the dump itself with :func:`npguest.open_dump` (headers only: the memory is mapped, not
read), scans or reads its range, and closes it.  No mapped byte is ever pickled, so
tasks cost the same whatever the size of the memory, and the file's pages come from the
worker's own page cache.

Every path must name the same file on the client (which reads the dump's headers to plan
the tasks) and on every worker: a local cluster, or a shared file system.

Dask is an optional extra (``pip install 'npguest[dask]'``); ``import npguest`` does not
import it, and the functions here raise :class:`ImportError` naming the extra when it is
missing.  ``client=None`` computes on the default scheduler: the global
``distributed.Client`` when one is active, else dask's thread pool (the scan kernels
release the GIL, so threads scale too).

A task reads its range once, at up to the memory bandwidth of one core (~27 GB/s on the
machine the benchmarks ran on), so workers that share a machine gain only as much as its
cores can read memory together (on that 2-vCPU VM, 1.05x to 2x of one core, from minute
to minute); workers on separate machines add up.  A Dask worker also samples its
threads' stacks every 10 ms for its profile (the dashboard's "Profile" page), which cost
a few percent there: 8 dumps of 1 GiB on 2 workers ran a median 1.76x as fast as a
serial loop with the profiler off and 1.71x with it on (8 runs of each).  For
throughput, turn it off before the cluster starts:
``dask.config.set({"distributed.worker.profile.enabled": False})``.

Examples
--------
>>> from distributed import Client, LocalCluster                     # doctest: +SKIP
>>> from npguest.dask import scan_many, to_dask_array
>>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
>>> paths = ["vm1.elf", "vm2.elf"]      # e.g. written by npguest.cli.sample_dump
>>> hits = scan_many(paths, b"Linux version", client=client)        # doctest: +SKIP
>>> hits["vm1.elf"]                                                  # doctest: +SKIP
array([16773120], dtype=uint64)
>>> arrays = to_dask_array("vm1.elf")                                # doctest: +SKIP
>>> {hex(start): a.shape[0] for start, a in arrays.items()}          # doctest: +SKIP
{'0x0': 655360, '0x100000': 15728640, '0x100000000': 1048576}
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from . import walk
from .dumps import DumpMemory, open_dump
from .errors import MmapRegionError
from .guest_memory import GuestMemoryMmap
from .mapping import FileOffset
from .region import GuestRegionMmap

if TYPE_CHECKING:
    import dask.array

__all__ = ["ARRAY_CHUNK", "CHUNK", "scan_many", "to_dask_array"]

#: Default task size.  A task maps its range afresh and scans it at up to the memory
#: bandwidth of one core (~27 GB/s here, ~40 ms a GiB), and costs the scheduler and its
#: worker a few ms more: 8 dumps of 1 GiB on 2 workers ran ~10% faster in tasks of 1 GiB
#: than of 512 MiB.  Still small enough that one large dump makes work for many workers.
CHUNK = 1 << 30
#: Default dask-array chunk: each is a fresh array in a worker's memory.
ARRAY_CHUNK = 64 << 20

_EXTRA = "pip install 'npguest[dask]'"


def _dask() -> Any:
    """Return the ``dask`` module, or raise an ImportError naming the extra."""
    try:
        import dask
        import dask.array
    except ImportError as exc:
        raise ImportError(f"npguest.dask needs the optional dask extra ({_EXTRA}): {exc}") from exc
    return dask


class _Dump(NamedTuple):
    """What a worker needs to open a dump: its path and its open options (picklable)."""

    path: str
    format: str | None
    options: tuple[tuple[str, Any], ...]

    def open(self) -> DumpMemory:
        return open_dump(self.path, format=self.format, **dict(self.options))


class _Piece(NamedTuple):
    """One task's range: owns ``[start, start + owned)``, reads ``[start, end)``."""

    start: int
    owned: int
    end: int


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


@contextlib.contextmanager
def _closing(mem: GuestMemoryMmap) -> Iterator[GuestMemoryMmap]:
    """Close a task's memory on the way out, or leave what is still viewed to the collector.

    A sampling profiler (a Dask worker's samples its threads every 10 ms) may still hold
    the frame of a function that just returned, and so a numpy view of a mapping: closing
    that mapping fails then, and it is unmapped when the sample drops the frame.
    """
    try:
        yield mem
    finally:
        with contextlib.suppress(MmapRegionError):
            mem.close()


def _plan(dump: _Dump) -> tuple[_Dump, list[tuple[int, int]]]:
    """Open ``dump`` on the client: its format pinned (workers need not sniff it), its runs."""
    with dump.open() as mem:
        return dump._replace(format=mem.metadata.format), walk.backed_runs(mem)


def _pieces(runs: list[tuple[int, int]], chunk: int, overlap: int) -> list[_Piece]:
    """Cut each backed run into pieces of ``chunk`` bytes plus ``overlap``."""
    pieces = []
    for s, e in runs:
        for a in range(s, e, chunk):
            owned = min(chunk, e - a)
            pieces.append(_Piece(a, owned, min(a + owned + overlap, e)))
    return pieces


def _window(mem: DumpMemory, start: int, end: int) -> GuestMemoryMmap:
    """Return guest ``[start, end)`` of ``mem`` (inside one backed run) as a memory of its own.

    Where ``mem`` maps a file, the window maps the same file range (zero-copy); elsewhere
    (zero ranges, a kdump dump's pages) its bytes are read into anonymous memory.
    """
    regions = []
    for r in mem.iter():
        base = int(r.start_addr())
        lo, hi = max(start, base), min(end, base + r.len())
        if lo >= hi:
            continue
        fo = r.file_offset()
        if fo is None:
            region = GuestRegionMmap.from_range(lo, hi - lo)
            mem.read_slice(region.as_array(), lo)
        else:
            window = FileOffset(fo.file(), fo.start() + lo - base)
            region = GuestRegionMmap.from_range(lo, hi - lo, window, readonly=True)
        regions.append(region)
    return GuestMemoryMmap.from_regions(regions)


def _scan_piece(dump: _Dump, pattern: bytes, piece: _Piece) -> np.ndarray:
    """Task body: the guest addresses of ``pattern`` in the owned part of ``piece``."""
    from .scan import find

    with _closing(dump.open()) as mem, _closing(_window(mem, piece.start, piece.end)) as window:
        hits = find(window, pattern)
    return hits[hits < np.uint64(piece.start + piece.owned)]


def scan_many(
    paths: Iterable[str | os.PathLike[str]],
    pattern: bytes,
    *,
    client: Any = None,
    format: str | None = None,
    chunk: int = CHUNK,
    **options: Any,
) -> dict[Any, np.ndarray]:
    """Find ``pattern`` in many dumps at once, on Dask tasks.

    Each dump is cut into tasks of at most ``chunk`` bytes of one backed run, each
    reading ``len(pattern) - 1`` bytes into the next piece of its run, so matches that
    straddle a task boundary, or adjacent regions, are found once; matches never span a
    hole.  The answer for each dump equals ``npguest.scan.find(open_dump(path), pattern)``.

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        The dumps (distinct), readable under the same names by the client and the workers.
    pattern : bytes
        What to look for (non-empty bytes, bytearray or memoryview).
    client : distributed.Client or str, optional
        Where to compute: a client, or a dask scheduler name (``"threads"``, ``"sync"``);
        default: the active client, else dask's thread pool.
    format : str, optional
        The dumps' format (``open_dump``'s ``format=``); default: detected per file.
    chunk : int, optional
        Bytes each task owns (default :data:`CHUNK`, 1 GiB).
    **options
        ``open_dump`` options for every dump (``base=``, ``layout=`` for raw files...).

    Returns
    -------
    dict
        For each path as given, the ascending ``uint64`` guest addresses of the matches.

    Raises
    ------
    ImportError
        Dask is not installed (names the extra).
    TypeError
        ``pattern`` is not bytes-like, ``paths`` is one path (not an iterable of them), a
        path is not a path, ``chunk`` is not an int.
    ValueError
        ``pattern`` is empty, ``chunk`` is not positive, ``paths`` repeats a path.
    MmapRegionError, DumpFormatError
        A dump cannot be opened (raised by the client while planning).
    """
    dask = _dask()
    pattern = _pattern(pattern)
    chunk = _positive(chunk, "chunk")
    if isinstance(paths, str | bytes | os.PathLike):
        raise TypeError(
            f"paths must be an iterable of paths, not one {type(paths).__name__}: put it in a list"
        )
    paths = list(paths)
    keys = [_path(p) for p in paths]
    if len(set(keys)) != len(keys):
        raise ValueError("paths must be distinct: a path repeats")
    scan = dask.delayed(_scan_piece, pure=False)
    tasks, counts = [], []
    for key in keys:
        dump, runs = _plan(_Dump(key, format, tuple(sorted(options.items()))))
        pieces = _pieces(runs, chunk, len(pattern) - 1)
        tasks += [scan(dump, pattern, piece) for piece in pieces]
        counts.append(len(pieces))
    results = dask.compute(*tasks, scheduler=client)
    found: dict[Any, np.ndarray] = {}
    done = 0
    for path, n in zip(paths, counts, strict=True):
        parts = results[done : done + n]
        found[path] = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint64)
        done += n
    return found


class _RunReader:
    """A lazy, picklable 1-D ``uint8`` array-like over one backed run of a dump.

    ``dask.array.from_array`` slices it once per chunk, on a worker; each slice opens the
    dump, reads its range through ``read_slice`` (into a fresh array) and closes it.
    """

    def __init__(self, dump: _Dump, start: int, size: int) -> None:
        self.dump, self.start = dump, start
        self.shape, self.dtype, self.ndim = (size,), np.dtype(np.uint8), 1

    def __getitem__(self, key: Any) -> np.ndarray:
        (item,) = key if isinstance(key, tuple) else (key,)
        want = range(*item.indices(self.shape[0]))
        if not want:
            return np.empty(0, dtype=np.uint8)
        lo, hi = min(want[0], want[-1]), max(want[0], want[-1]) + 1
        out = np.empty(hi - lo, dtype=np.uint8)
        with _closing(self.dump.open()) as mem:
            mem.read_slice(out, self.start + lo)
        return out[want.start - lo :: want.step]


def to_dask_array(
    mem: DumpMemory | str | os.PathLike[str],
    chunk: int = ARRAY_CHUNK,
    *,
    format: str | None = None,
    **options: Any,
) -> dict[int, dask.array.Array]:
    """View a dump's guest memory as dask arrays, one per backed run.

    Holes make guest physical memory non-contiguous, so there is one 1-D ``uint8`` dask
    array for each run of adjacent backed regions (less a dump's excluded ranges),
    keyed by the guest address of its first byte: ``arrays[start][i]`` is the byte at
    guest address ``start + i``.  Each chunk is read by its own task, which opens the
    dump from its path: the graph holds only the path, the options and the ranges.

    Parameters
    ----------
    mem : DumpMemory, str or os.PathLike
        A dump's path, or a memory opened from one (reopened on the workers from its
        ``metadata.path`` and ``metadata.format``).
    chunk : int, optional
        Bytes per dask chunk (default :data:`ARRAY_CHUNK`, 64 MiB).
    format : str, optional
        The dump's format; default: the memory's, or detected from the file.
    **options
        ``open_dump`` options (``base=``, ``layout=`` for raw files...).

    Returns
    -------
    dict of int to dask.array.Array
        The runs in ascending guest order.

    Raises
    ------
    ImportError
        Dask is not installed (names the extra).
    TypeError
        ``mem`` is neither a path nor a memory opened from a dump file.
    ValueError
        ``chunk`` is not positive, or reopening ``mem``'s file gives another layout (a
        raw dump opened with ``base=`` or ``layout=``: pass the path and the options).
    MmapRegionError, DumpFormatError
        The dump cannot be opened.
    """
    dask = _dask()
    chunk = _positive(chunk, "chunk")
    if isinstance(mem, DumpMemory):
        if not mem.metadata.path:
            raise TypeError("to_dask_array needs a memory opened from a dump file (no path)")
        path, format, runs = mem.metadata.path, format or mem.metadata.format, walk.backed_runs(mem)
    elif isinstance(mem, str | os.PathLike):
        path, runs = _path(mem), None
    else:
        raise TypeError(
            f"to_dask_array takes a dump path or a memory opened from one, not {type(mem).__name__}"
        )
    dump, reopened = _plan(_Dump(path, format, tuple(sorted(options.items()))))
    if runs is not None and runs != reopened:
        raise ValueError(
            f"reopening {dump.path} as {dump.format!r} gives another layout than the memory "
            "given: pass the path and its open options (base=, layout=) instead"
        )
    token = dask.base.tokenize(dump, _stamp(dump.path), chunk)
    return {
        s: dask.array.from_array(
            _RunReader(dump, s, e - s),
            chunks=chunk,
            name=f"npguest-{token}-{s:x}",
            lock=False,
            meta=np.empty(0, dtype=np.uint8),
        )
        for s, e in reopened
    }


def _pattern(pattern: Any) -> bytes:
    if not isinstance(pattern, bytes | bytearray | memoryview):
        raise TypeError(f"pattern must be bytes, got {type(pattern).__name__}")
    data = bytes(pattern)  # (a memoryview's len counts its items, not its bytes)
    if not data:
        raise ValueError("pattern is empty")
    return data


def _path(path: Any) -> str:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"paths must hold str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def _stamp(path: str) -> tuple[int, int]:
    """Size and modification time of ``path``: a rewritten dump gets new task names."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise MmapRegionError(f"cannot stat {path!r}: {exc}") from exc
    return st.st_size, st.st_mtime_ns
