"""Dask scale-out: ``npguest.dask.scan_many`` over many dumps against a serial loop.

Target (issue 7): ``scan_many`` of a 14-byte literal over 8 page-cached dumps on a
``LocalCluster`` of 2 worker processes (one thread each) runs >= 1.6x as fast as a loop
of ``npguest.scan.find`` over the same dumps in one process
(``time(scan_many) / time(serial) <= 1 / 1.6``).

Beside it, ``process_pool`` runs the same serial loop split over two plain processes:
what two cores gain on this machine without Dask.  ``find`` scans page-cached memory at
~25 GB/s, near what one core's memory bandwidth allows, so two scanners contend for
memory and even the pool stays well below 2x; and a ``scan_many`` call costs ~25 ms of
scheduling, so the dumps are 512 MiB each (4 GiB in all) to keep that small.

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
from typing import ClassVar

import numpy as np

import npguest
from npguest.dask import CHUNK

from ._common import MiB, Paired

N_DUMPS = 8
DUMP_SIZE = 512 * MiB
PATTERN = b"npguest-needle"  # 14 bytes
WORKERS = 2
ROOT = Path(tempfile.gettempdir()) / "npguest-bench-dask"


def bench_dumps() -> list[Path]:
    """Make (once) ``N_DUMPS`` raw dumps of ``DUMP_SIZE`` random bytes; return their paths.

    Each holds the pattern at a few places, one of them straddling a task boundary.
    """
    ROOT.mkdir(exist_ok=True)
    paths = []
    for i in range(N_DUMPS):
        path = ROOT / f"dump{i}-{DUMP_SIZE // MiB}.raw"
        if not path.exists():
            data = bytearray(np.random.default_rng(i).bytes(DUMP_SIZE))
            for at in (i, CHUNK - 5, DUMP_SIZE - len(PATTERN)):
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
    """``scan_many`` on a 2-worker local cluster, and the serial loop beside it."""

    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "scan_many": ("scan_many", "serial_loop"),
        "process_pool": ("process_pool", "serial_loop"),
    }
    ratio_repeats = 10
    number = 1
    repeat = (1, 5, 20.0)
    timeout = 600

    def setup(self):
        try:
            from distributed import Client, LocalCluster

            from npguest.dask import scan_many
        except ImportError as exc:
            raise NotImplementedError(f"dask is not installed: {exc}") from exc
        self.paths = bench_dumps()
        read_through(self.paths)
        # fork the pool's processes (and load their kernels) before the cluster starts threads
        self.pool = ProcessPoolExecutor(WORKERS)
        pool_scan(self.pool, self.paths[:WORKERS], PATTERN)
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


def scan_many_speedup() -> tuple[float, float]:
    """Return the speedups over the serial loop of ``scan_many`` on 2 workers, and of a pool.

    Returns
    -------
    tuple of float
        ``time(serial) / time(scan_many)`` (the target), and ``time(serial) /
        time(process pool)``: what two processes gain without Dask on this machine.
    """
    bench = DaskScan()
    bench.setup()
    try:
        return 1 / bench.ratio_of("scan_many"), 1 / bench.ratio_of("process_pool")
    finally:
        bench.teardown()
