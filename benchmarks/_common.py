"""Shared fixtures and timers of the benchmark suite (no benchmarks are defined here).

Fixtures build the memories the issue's speed targets name (a 1 GiB guest memory made of
four adjacent 256 MiB regions, and a plain ``mmap.mmap`` of the same size for the
baselines) and fault their pages in, so no benchmark measures first-touch costs.

Timers measure an npguest operation and its baseline *in the same process, interleaved*,
and keep the minimum over many repeats: on a noisy two-core machine the minimum is the
most stable estimate of a cost, and interleaving makes both sides see the same noise, so
their ratio is stable even when absolute times drift.

Nothing here may be named ``time_*``, ``track_*``, ``peakmem_*``, ``mem_*`` or
``timeraw_*``: asv would collect it from every module that imports it.
"""

from __future__ import annotations

import mmap
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from typing import ClassVar

import numpy as np

import npguest

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE = mmap.PAGESIZE
N_REGIONS = 4

Op = Callable[[], object]


# -- fixtures -----------------------------------------------------------------------------
def guest_memory(
    total: int = GiB, n: int = N_REGIONS, bitmap: type | None = None
) -> npguest.GuestMemoryMmap:
    """Map ``total`` bytes of anonymous guest memory as ``n`` adjacent equal regions at 0.

    Adjacent regions make guest address ``a`` the same byte as offset ``a`` of a flat
    baseline array, so both sides of a comparison use identical offsets.  ``bitmap``
    (e.g. ``npguest.AtomicBitmap``) turns dirty tracking on, with 4 KiB pages.
    """
    size = total // n
    ranges = [(i * size, size) for i in range(n)]
    return npguest.GuestMemoryMmap.from_ranges(ranges, bitmap=bitmap, page_size=4096)


def plain_mmap(size: int = GiB, *, thp: bool) -> tuple[mmap.mmap, np.ndarray]:
    """Map ``size`` bytes of private anonymous memory for a baseline.

    ``thp=False`` is a plain ``mmap.mmap`` (the scalar target's "``struct`` on an mmap
    object": 4 KiB pages).  ``thp=True`` advises transparent huge pages, as numpy does
    for a large array (the batch target's "flat 1 GiB array") and as npguest does for a
    large anonymous region.

    Returns
    -------
    tuple of (mmap.mmap, numpy.ndarray)
        The mapping and a zero-copy ``uint8`` view of it.
    """
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if thp:
        m.madvise(mmap.MADV_HUGEPAGE)
    return m, np.frombuffer(m, dtype=np.uint8)


def _page_offsets(offsets: np.ndarray | None, size: int) -> np.ndarray | slice:
    if offsets is None:
        return slice(None, None, PAGE)
    offsets = np.asarray(offsets, dtype=np.uint64)
    pages = np.unique(offsets // PAGE) * PAGE
    return pages[pages < size].astype(np.intp)


def fault_array(arr: np.ndarray, offsets: np.ndarray | None = None) -> None:
    """Write-fault the pages of a ``uint8`` array (all, or those holding ``offsets``).

    Pages are *written* (with the zero they already hold): a read fault would map the
    shared zero page, and every read would then hit the same cached physical page.
    """
    arr[_page_offsets(offsets, arr.shape[0])] = 0


def fault_memory(
    mem: npguest.GuestMemoryMmap, addrs: np.ndarray | None = None, span: int | None = None
) -> None:
    """Write-fault the pages of ``mem`` holding ``addrs`` (every page when ``addrs`` is None).

    With ``span``, fault every page of each ``[addr, addr + span)`` instead.
    """
    if addrs is not None and span is not None:
        addrs = np.concatenate([np.arange(a, a + span, PAGE, dtype=np.uint64) for a in addrs])
    for region in mem.iter():
        start, size = int(region.start_addr()), region.len()
        if addrs is None:
            local = None
        else:
            a = np.asarray(addrs, dtype=np.uint64)
            local = a[(a >= start) & (a < start + size)] - np.uint64(start)
            if not local.size:
                continue
        fault_array(region.as_array(), local)


def random_addresses(n: int, span: int = GiB, align: int = 8, seed: int = 0) -> np.ndarray:
    """Return ``n`` random ``align``-aligned ``uint64`` addresses spread over ``[0, span)``."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, span // align, size=n, dtype=np.uint64) * np.uint64(align)


def rss_bytes() -> int:
    """Return the resident set size of this process now (``/proc/self/statm``)."""
    with open("/proc/self/statm", "rb") as f:
        return int(f.read().split()[1]) * PAGE


# -- timers -------------------------------------------------------------------------------
def _clock(op: Op, number: int) -> float:
    return timeit.Timer(op).timeit(number)


def calibrate(op: Op, min_time: float = 0.005) -> int:
    """Return how many calls of ``op`` take at least ``min_time`` seconds (1, 2, 5, 10...)."""
    number = 1
    while True:
        for k in (1, 2, 5):
            if _clock(op, number * k) >= min_time:
                return number * k
        number *= 10


def compare(
    ours: Op, baseline: Op, repeat: int = 50, min_time: float = 0.005
) -> tuple[float, float]:
    """Time ``ours`` and ``baseline`` interleaved; return the best seconds per call of each.

    Both sides run the same number of calls per sample (calibrated on the slower one), and
    alternate which goes first, so drifts and bursts of noise hit both alike.  Many short
    samples give the minimum more chances to land in a quiet moment than a few long ones.
    """
    ours(), baseline()  # warm caches, lazy imports and kernels
    number = min(calibrate(ours, min_time), calibrate(baseline, min_time))
    best = [float("inf"), float("inf")]
    pair = (ours, baseline)
    for r in range(repeat):
        for side in (r % 2, 1 - r % 2):
            best[side] = min(best[side], _clock(pair[side], number))
    return best[0] / number, best[1] / number


# -- subprocesses -------------------------------------------------------------------------
_COUNT_JIT_MODULES = (
    "import sys, {module}; "
    "print(sum(m.split('.')[0] in ('numba', 'llvmlite') for m in sys.modules))"
)


def import_seconds(module: str) -> float:
    """Return the wall time of one ``python -c "import <module>"`` in a fresh interpreter."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - t0


def compare_imports(ours: str, baseline: str, runs: int = 15) -> tuple[float, float]:
    """Return the best wall times of importing ``ours`` and ``baseline``, interleaved."""
    best = {ours: float("inf"), baseline: float("inf")}
    for r in range(runs):
        for module in (ours, baseline) if r % 2 else (baseline, ours):
            best[module] = min(best[module], import_seconds(module))
    return best[ours], best[baseline]


def numba_modules_after_import(module: str) -> int:
    """Return how many numba/llvmlite modules ``import <module>`` loads in a fresh interpreter.

    0 means the import compiled nothing: nothing can be JIT-compiled, nor loaded from
    numba's cache, without importing numba.
    """
    out = subprocess.run(
        [sys.executable, "-c", _COUNT_JIT_MODULES.format(module=module)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout)


# -- paired benchmarks --------------------------------------------------------------------
class Paired:
    """Mixin of a benchmark class whose ``setup`` fills ``self.ops`` with named callables.

    ``pairs`` names each target ratio ``(ours, baseline)`` by the keys of two ops; the
    class's ``time_*`` methods call the same ops, and its ``track_*_ratio`` methods and
    ``benchmarks/ratios.py`` call :meth:`measure`, so the asv suite and the ratio table
    time exactly the same code.
    """

    pairs: ClassVar[dict[str, tuple[str, str]]] = {}
    ops: dict[str, Op]
    ratio_repeats = 50

    def measure(self, name: str) -> tuple[float, float]:
        """Return the best seconds per call of both sides of the pair ``name``."""
        ours, baseline = self.pairs[name]
        return compare(self.ops[ours], self.ops[baseline], self.ratio_repeats)

    def ratio_of(self, name: str) -> float:
        """Return ``time(ours) / time(baseline)`` for the pair ``name``."""
        t_ours, t_base = self.measure(name)
        return t_ours / t_base
