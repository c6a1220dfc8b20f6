"""kdump-compressed dumps: sequential and scalar reads through the page cache, and writing.

Target (issue 4): sequential ``read_slice`` of a zlib kdump holding a realistic mix of
pages (30% zero pages, the rest compressible data, some incompressible) at >= 0.5 GB/s.
The dump is 64 MiB of guest memory, more than the default cache of 16 MiB, so a
sequential read decompresses every page each time (only the shared zero page stays
cached).  Random 8-byte ``read_obj`` is timed cold (pages decompressed on the way) and
hot (a working set inside the cache).

The file lives in a temporary directory made once per run.
"""

import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np

import npguest
from npguest import Le64
from npguest.dumps.kdump import open_kdump, write_kdump

from ._common import PAGE, MiB, random_addresses

SIZE = 64 * MiB
N = 10_000
#: The target: sequential read_slice of the kdump, GB/s.
READ_TARGET_GBPS = 0.5

ROOT = Path(tempfile.gettempdir()) / "npguest-bench-kdump"
_WORDS = (
    b"the of and to in is that for it as was with be by on not he this are or his from at "
    b"which but have an they you were her she there kernel page memory struct return static "
    b"void int unsigned long const char if else while switch case"
).split()


def realistic_pages(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Return ``size`` bytes of guest-like memory, page by page.

    30% zero pages; 25% text (words in random order); 25% kernel-like structures (a
    third pointers into a direct map, a quarter small counters, the rest zero); 20%
    random bytes, which no codec shrinks.  zlib at QEMU's level shrinks the whole about
    2.6x.
    """
    rng = np.random.default_rng(seed)
    n = size // PAGE
    pages = np.zeros((n, PAGE), dtype=np.uint8)
    kind = rng.choice(4, n, p=[0.3, 0.25, 0.25, 0.2])
    for i in np.flatnonzero(kind == 1).tolist():
        text = b" ".join(_WORDS[w] for w in rng.integers(0, len(_WORDS), PAGE // 3))
        pages[i] = np.frombuffer(text[:PAGE], dtype=np.uint8)
    structs = np.flatnonzero(kind == 2)
    words = pages[structs].view(np.uint64)
    f = rng.random(words.shape)
    pointers = np.uint64(0xFFFF888000000000) + (
        rng.integers(0, 1 << 24, words.shape, dtype=np.uint64) << np.uint64(6)
    )
    words[:] = np.where(f < 0.35, pointers, np.where(f < 0.6, rng.integers(0, 256, words.shape), 0))
    pages[structs] = words.view(np.uint8)
    noise = np.flatnonzero(kind == 3)
    pages[noise] = rng.integers(0, 256, (noise.shape[0], PAGE), dtype=np.uint8)
    return pages.reshape(-1)


def kdump_file() -> tuple[Path, np.ndarray]:
    """Make (once) the 64 MiB zlib kdump of :func:`realistic_pages`; return it and its bytes."""
    data = realistic_pages()
    ROOT.mkdir(exist_ok=True)
    path = ROOT / "realistic-v1.kdump"
    if not path.exists():
        with npguest.GuestMemoryMmap.from_ranges([(0, SIZE)]) as mem:
            mem.write_slice(data, 0)
            write_kdump(mem, ROOT / "realistic.tmp")
        os.replace(ROOT / "realistic.tmp", path)
    return path, data


def kdump_read_gbps(repeat: int = 5) -> float:
    """Return the best speed of a sequential ``read_slice`` of the whole kdump, in GB/s."""
    path, data = kdump_file()
    dst = np.empty(SIZE, dtype=np.uint8)
    best = float("inf")
    with open_kdump(path) as mem:
        mem.read_slice(dst, 0)  # (the file in the page cache, the thread pool started)
        if not np.array_equal(dst, data):
            raise AssertionError("the kdump does not read back what was written")
        for _ in range(repeat):
            t0 = time.perf_counter()
            mem.read_slice(dst, 0)
            best = min(best, time.perf_counter() - t0)
    return SIZE / best / 1e9


class KdumpReads:
    """Reads of a 64 MiB zlib kdump of realistic pages."""

    timeout = 300

    def setup(self):
        path, _ = kdump_file()
        self.mem = open_kdump(path)
        self.dst = np.empty(SIZE, dtype=np.uint8)
        read_obj = self.mem.read_obj
        cold = random_addresses(N, SIZE, align=8, seed=3).tolist()
        hot = random_addresses(1000, 8 * MiB, align=8, seed=4).tolist()  # inside the cache

        def read_objs(addrs):
            for a in addrs:
                read_obj(a, Le64)

        self.read_slice = partial(self.mem.read_slice, self.dst, 0)
        self.read_obj_cold = partial(read_objs, cold)
        self.read_obj_hot = partial(read_objs, hot)
        self.read_slice()
        self.read_obj_hot()

    def teardown(self):
        self.mem.close()

    def time_read_slice(self):
        self.read_slice()

    def time_read_obj_cold(self):
        self.read_obj_cold()

    def time_read_obj_hot(self):
        self.read_obj_hot()

    def track_kdump_read_gbps(self):
        return kdump_read_gbps()

    track_kdump_read_gbps.unit = "GB/s"


class KdumpWrite:
    """Writing 64 MiB of realistic pages as a zlib kdump (plain and flattened)."""

    params: ClassVar[list[bool]] = [False, True]
    param_names: ClassVar[list[str]] = ["flattened"]
    timeout = 300

    def setup(self, flattened):
        self.mem = npguest.GuestMemoryMmap.from_ranges([(0, SIZE)])
        self.mem.write_slice(realistic_pages(), 0)
        self.dir = tempfile.TemporaryDirectory()

    def teardown(self, flattened):
        self.mem.close()
        self.dir.cleanup()

    def time_write_kdump(self, flattened):
        write_kdump(self.mem, Path(self.dir.name) / "out.kdump", flattened=flattened)
