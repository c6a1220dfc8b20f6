"""Dirty-page tracking: what an ``AtomicBitmap`` costs, and how fast it is read and taken.

Targets (issue: dirty tracking), each against a baseline measured in the same run:

- ``write_objs`` of 1,000,000 ``Le64`` at random addresses over a 1 GiB, 4-region memory
  with ``AtomicBitmap``: at most 2x the same call on the same memory layout untracked;
- scalar ``write_obj`` (one hot address, and 10,000 random ones): at most 1.3x untracked;
- ``write_slice`` of 64 MiB tracked: at least 0.85x the speed of ``np.copyto``;
- ``dirty_ranges()`` / ``get_and_reset()`` of one 1 GiB bitmap of 4 KiB pages (262,144
  bits) with 1% and 50% of the pages dirty at random: at most 50 us each;
- ``write_objs`` from 4 threads scales: 4,000,000 tracked writes split over 4 threads
  take at most 1/1.5 of the time one thread takes for them.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import ClassVar

import numpy as np

from npguest import AtomicBitmap, Le64

from . import bench_copy, bench_scalar
from ._common import GiB, Paired, fault_memory, guest_memory, random_addresses

N = 1_000_000
THREADS = 4


class DirtyBatch(Paired):
    pairs: ClassVar[dict[str, tuple[str, str]]] = {"write_objs": ("tracked", "untracked")}
    ratio_repeats = 20
    timeout = 300

    def setup(self):
        self.mems = [guest_memory(bitmap=AtomicBitmap), guest_memory()]
        addrs = random_addresses(N, GiB, align=8, seed=5)
        values = np.arange(N, dtype="<u8")
        for mem in self.mems:
            fault_memory(mem)
        tracked, untracked = (partial(m.write_objs, values, addrs, Le64) for m in self.mems)
        self.ops = {"tracked": tracked, "untracked": untracked}
        for op in self.ops.values():
            op()

    def teardown(self):
        del self.ops
        for mem in self.mems:
            mem.close()

    def time_write_objs_tracked(self):
        self.ops["tracked"]()

    def time_write_objs_untracked(self):
        self.ops["untracked"]()

    def track_write_objs_ratio(self):
        return self.ratio_of("write_objs")

    track_write_objs_ratio.unit = "ratio"


class DirtyScalar(Paired):
    params: ClassVar[list[str]] = ["hot", "random"]
    param_names: ClassVar[list[str]] = ["where"]
    pairs: ClassVar[dict[str, tuple[str, str]]] = {"write_obj": ("tracked", "untracked")}
    timeout = 300

    def setup(self, where):
        addrs = bench_scalar._addresses(where)
        self.mems = [guest_memory(bitmap=AtomicBitmap), guest_memory()]
        for mem in self.mems:
            fault_memory(mem, addrs)
        offsets = addrs.tolist()
        tracked, untracked = (bench_scalar._write_obj(m, offsets) for m in self.mems)
        self.ops = {"tracked": tracked, "untracked": untracked}
        for op in self.ops.values():
            op()

    def teardown(self, where):
        del self.ops
        for mem in self.mems:
            mem.close()

    def time_write_obj_tracked(self, where):
        self.ops["tracked"]()

    def time_write_obj_untracked(self, where):
        self.ops["untracked"]()

    def track_write_obj_ratio(self, where):
        return self.ratio_of("write_obj")

    track_write_obj_ratio.unit = "ratio"


class DirtyCopy(Paired):
    pairs: ClassVar[dict[str, tuple[str, str]]] = {"write_slice": ("write_slice", "numpy_copyto")}
    timeout = 300

    def setup(self):
        addr = bench_copy.WHERE["within"]
        self.mem = guest_memory(bitmap=AtomicBitmap)
        fault_memory(self.mem, [addr], span=bench_copy.SIZE)
        self.src = np.ones(bench_copy.SIZE, dtype=np.uint8)
        self.dst = np.ones(bench_copy.SIZE, dtype=np.uint8)
        self.ops = {
            "write_slice": partial(self.mem.write_slice, self.src, addr),
            "numpy_copyto": partial(np.copyto, self.dst, self.src),
        }
        for op in self.ops.values():  # loads the marking kernels, faults the arrays
            op()

    def teardown(self):
        del self.ops
        self.mem.close()

    def time_write_slice_tracked(self):
        self.ops["write_slice"]()

    def time_numpy_copyto(self):
        self.ops["numpy_copyto"]()

    def track_write_slice_ratio(self):
        return self.ratio_of("write_slice")

    track_write_slice_ratio.unit = "ratio"


def dirty_bitmap(fraction: float, lane: str = "kernel", seed: int = 0):
    """Return a 1 GiB bitmap of 4 KiB pages and a function re-dirtying ``fraction`` of them.

    ``lane`` says how pages get marked: ``"kernel"`` (batch writes, ``write_slice``: the
    packed words) or ``"scalar"`` (scalar ``write_obj``: the page byte map).
    """
    bitmap = AtomicBitmap(GiB, 4096)
    pages = np.flatnonzero(np.random.default_rng(seed).random(bitmap.len()) < fraction)
    if lane == "kernel":
        offsets = pages.astype(np.int64) << 12
        ones = np.ones_like(offsets)

        def redirty():
            bitmap.mark_dirty_many(offsets, ones)
    else:
        starts = (pages << 12).tolist()

        def redirty():
            for start in starts:
                bitmap.mark_dirty(start, 8)

    redirty()
    return bitmap, redirty


def best_seconds(op, before=None, repeat: int = 200) -> float:
    """Return the best wall time of ``op()`` over ``repeat`` calls, ``before()`` untimed."""
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        op()
        best = min(best, time.perf_counter() - t0)
    return best


class DirtyQuery:
    """``dirty_ranges()`` / ``get_and_reset()`` over 262,144 bits (absolute target: 50 us)."""

    params: ClassVar[list] = [[0.01, 0.5], ["kernel", "scalar"]]
    param_names: ClassVar[list[str]] = ["dirty", "lane"]
    number = 1  # get_and_reset empties the bitmap: setup re-dirties it before each sample
    repeat = 30
    timeout = 300

    def setup(self, fraction, lane):
        self.bitmap, self.redirty = dirty_bitmap(fraction, lane)
        self.bitmap.dirty_ranges()

    def time_dirty_ranges(self, fraction, lane):
        self.bitmap.dirty_ranges()

    def time_get_and_reset(self, fraction, lane):
        self.bitmap.get_and_reset()

    def track_dirty_ranges_us(self, fraction, lane):
        return best_seconds(self.bitmap.dirty_ranges) * 1e6

    def track_get_and_reset_us(self, fraction, lane):
        return best_seconds(self.bitmap.get_and_reset, self.redirty, repeat=30) * 1e6

    track_dirty_ranges_us.unit = "us"
    track_get_and_reset_us.unit = "us"


def _write_in_threads(mem, chunks):
    threads = [
        threading.Thread(target=mem.write_objs, args=(np.uint64(7), addrs, Le64))
        for addrs in chunks
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


class DirtyThreads(Paired):
    """The same 4,000,000 tracked ``write_objs``: 4 threads at once vs one thread."""

    pairs: ClassVar[dict[str, tuple[str, str]]] = {"threads": ("four_threads", "one_thread")}
    ratio_repeats = 10
    timeout = 300

    def setup(self):
        self.mem = guest_memory(bitmap=AtomicBitmap)
        fault_memory(self.mem)
        chunks = [random_addresses(N, GiB, align=8, seed=10 + t) for t in range(THREADS)]
        self.ops = {
            "four_threads": partial(_write_in_threads, self.mem, chunks),
            "one_thread": partial(_write_in_threads, self.mem, [np.concatenate(chunks)]),
        }
        for op in self.ops.values():
            op()

    def teardown(self):
        del self.ops
        self.mem.close()

    def time_write_objs_four_threads(self):
        self.ops["four_threads"]()

    def time_write_objs_one_thread(self):
        self.ops["one_thread"]()

    def track_threads_speedup(self):
        four, one = self.measure("threads")
        return one / four

    track_threads_speedup.unit = "x"
