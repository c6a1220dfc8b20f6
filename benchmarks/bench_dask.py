"""Dask scale-out: ``npguest.dask.scan_many`` over many dumps against a serial loop.

Target (issue 7): ``scan_many`` of a 14-byte literal over 8 page-cached dumps on a
``LocalCluster`` of 2 worker processes (one thread each) runs >= 1.6x as fast as a loop
of ``npguest.scan.find`` over the same dumps in one process
(``time(scan_many) / time(serial) <= 1 / 1.6``).

Beside it, ``process_pool`` runs the same serial loop split over two plain processes,
without Dask: what two cores can gain on this machine at all, measured in the same run.

``find`` over a page-cached dump is bound by the memory bandwidth of one core (~27 GB/s
here, against ~33 GB/s for a plain ``sum``) where the kernel maps the file's pages in
large folios, and by the mapping of 4 KiB pages (~8 GB/s) where memory was too
fragmented for large folios.  Two scanners go only as fast as the machine lets two cores
read memory: on this 2-vCPU VM, two processes summing arrays read 1.05x to 2x as fast as
one, from one minute to the next, and the process pool's speedup swings with it.

A ``scan_many`` call costs ~15-25 ms of Dask scheduling on this machine, so the dumps are
1 GiB each (8 GiB in all), a common size of VM memory, to keep that small.  The cluster
is set up for throughput, as ``npguest.dask`` advises: its workers' profiler (a stack
sample every 10 ms) is off; :func:`scan_many_speedup` also times a cluster that keeps it.

The dumps (raw files of random bytes with a few planted matches) are written once into
``tempfile.gettempdir()/npguest-bench-dask`` and read through before timing, so every side
scans the page cache.  Dask is an optional extra (``npguest[dask]``): without it these
benchmarks are skipped.
"""

import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np

import npguest

from ._common import MiB, Paired

N_DUMPS = 8
DUMP_SIZE = 1024 * MiB
PATTERN = b"npguest-needle"  # 14 bytes
WORKERS = 2
ROOT = Path(tempfile.gettempdir()) / "npguest-bench-dask"


def bench_dumps() -> list[Path]:
    """Make (once) ``N_DUMPS`` raw dumps of ``DUMP_SIZE`` random bytes; return their paths.

    Each holds the pattern at its first and last bytes, and across the middle.
    """
    ROOT.mkdir(exist_ok=True)
    paths = []
    for i in range(N_DUMPS):
        path = ROOT / f"dump{i}-{DUMP_SIZE // MiB}.raw"
        if not path.exists():
            data = bytearray(np.random.default_rng(i).bytes(DUMP_SIZE))
            for at in (i, DUMP_SIZE // 2 - 5, DUMP_SIZE - len(PATTERN)):
                data[at : at + len(PATTERN)] = PATTERN
            tmp = ROOT / f"dump{i}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, path)
        paths.append(path)
    return paths


def read_through(paths: list[Path]) -> None:
    """Read every file once, so its pages are in the page cache."""
    buf = bytearray(16 * MiB)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def serial_scan(paths: list[Path], pattern: bytes) -> dict[Path, object]:
    """The baseline: open each dump and ``find`` in it, one after the other, in this process."""
    from npguest.scan import find

    found = {}
    for path in paths:
        with npguest.open_dump(path) as mem:
            found[path] = find(mem, pattern)
    return found


def pool_scan(pool: ProcessPoolExecutor, paths: list[Path], pattern: bytes) -> None:
    """The machine's ceiling: the serial loop split over a pool of processes, without Dask."""
    parts = [paths[i::WORKERS] for i in range(WORKERS)]
    for _ in pool.map(serial_scan, parts, [pattern] * WORKERS):
        pass


class DaskScan(Paired):
    """``scan_many`` on a 2-worker local cluster (profiler off), and the serial loop beside it."""

    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "scan_many": ("scan_many", "serial_loop"),
        "process_pool": ("process_pool", "serial_loop"),
    }
    ratio_repeats = 10
    number = 1
    repeat = (1, 5, 20.0)
    timeout = 600
    profiler = False

    def setup(self):
        try:
            import dask
            from distributed import Client, LocalCluster

            from npguest.dask import scan_many
        except ImportError as exc:
            raise NotImplementedError(f"dask is not installed: {exc}") from exc
        self.paths = bench_dumps()
        read_through(self.paths)
        # fork the pool's processes (and load their kernels) before the cluster starts threads
        self.pool = ProcessPoolExecutor(WORKERS)
        pool_scan(self.pool, self.paths[:WORKERS], PATTERN)
        with dask.config.set({"distributed.worker.profile.enabled": self.profiler}):
            self.cluster = LocalCluster(
                n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
            )
        self.client = Client(self.cluster)
        self.ops = {
            "scan_many": partial(scan_many, self.paths, PATTERN, client=self.client),
            "serial_loop": partial(serial_scan, self.paths, PATTERN),
            "process_pool": partial(pool_scan, self.pool, self.paths, PATTERN),
        }
        # load the kernels here and in every worker; check that both sides agree
        want, got = self.ops["serial_loop"](), self.ops["scan_many"]()
        assert all((got[p] == want[p]).all() and len(want[p]) == 3 for p in self.paths)

    def teardown(self):
        self.pool.shutdown()
        self.client.close()
        self.cluster.close()

    def time_scan_many(self):
        self.ops["scan_many"]()

    def time_serial_loop(self):
        self.ops["serial_loop"]()

    def track_scan_many_ratio(self):
        return self.ratio_of("scan_many")

    def track_process_pool_ratio(self):
        return self.ratio_of("process_pool")

    track_scan_many_ratio.unit = "ratio"
    track_process_pool_ratio.unit = "ratio"


class DaskSpeedups(NamedTuple):
    """What :func:`scan_many_speedup` measures: speedups over the serial loop."""

    scan_many: float
    """``time(serial) / time(scan_many)`` on 2 workers, their profiler off: the target."""
    process_pool: float
    """The same for 2 plain processes: what two cores gain here without Dask."""
    profiled: float
    """``scan_many`` on 2 workers that keep their profiler on."""


def scan_many_speedup() -> DaskSpeedups:
    """Measure ``scan_many`` against the serial loop, and what two plain processes gain.

    Returns
    -------
    DaskSpeedups
        The speedups, each measured against its baseline in the same run.
    """
    found = {}
    for profiler in (False, True):
        bench = DaskScan()
        bench.profiler = profiler
        bench.setup()
        try:
            found[profiler] = 1 / bench.ratio_of("scan_many")
            if not profiler:
                pool = 1 / bench.ratio_of("process_pool")
        finally:
            bench.teardown()
    return DaskSpeedups(found[False], pool, found[True])
