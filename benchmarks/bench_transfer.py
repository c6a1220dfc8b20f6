"""Bulk transfers (:mod:`npguest.transfer`) against ``np.copyto``, measured in the same run.

Targets (issue 6), each against a baseline timed interleaved with it:

- ``copy`` of a 1 GiB, 4-region memory to another: at least 0.9x the speed of ``np.copyto``
  between two flat 1 GiB arrays;
- ``save`` to / ``load`` from a page-cached 1 GiB snapshot file: at least 0.7x the speed of
  ``np.copyto`` (the file lives in ``tempfile.gettempdir()``, is reused across runs and
  overwritten in place);
- one incremental round, ``copy_dirty``, with 1% of the 4 KiB pages of 1 GiB dirty at
  random: at least 1.5x faster than a hand-written Python loop of ``np.copyto`` over
  exactly those pages of the same two memories.  The round includes re-marking the pages
  dirty (one ``mark_dirty_many`` per region), which the loop does not pay.
"""

from __future__ import annotations

import os
import tempfile
from functools import partial
from typing import ClassVar

import numpy as np

from npguest import AtomicBitmap, transfer

from ._common import GiB, Paired, fault_array, fault_memory, guest_memory, plain_mmap

PAGE = 4096
DIRTY = 0.01
SNAPSHOT = os.path.join(tempfile.gettempdir(), "npguest-bench-transfer-1g.mem")


def _baseline_pair() -> tuple[list, np.ndarray, np.ndarray]:
    """Two faulted flat 1 GiB arrays (transparent huge pages, as numpy's own) and their maps."""
    (m1, a), (m2, b) = plain_mmap(GiB, thp=True), plain_mmap(GiB, thp=True)
    fault_array(a)
    fault_array(b)
    return [m1, m2], a, b


class TransferCopy(Paired):
    pairs: ClassVar[dict[str, tuple[str, str]]] = {"copy": ("copy", "numpy_copyto")}
    ratio_repeats = 10
    timeout = 600

    def setup(self):
        self.mems = [guest_memory(), guest_memory()]
        for mem in self.mems:
            fault_memory(mem)
        self.maps, a, b = _baseline_pair()
        self.ops = {
            "copy": partial(transfer.copy, *self.mems),
            "numpy_copyto": partial(np.copyto, b, a),
        }
        for op in self.ops.values():
            op()

    def teardown(self):
        del self.ops
        for mem in self.mems:
            mem.close()

    def time_copy(self):
        self.ops["copy"]()

    def time_numpy_copyto(self):
        self.ops["numpy_copyto"]()

    def track_copy_ratio(self):
        return self.ratio_of("copy")

    track_copy_ratio.unit = "ratio"


class TransferFile(Paired):
    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "save": ("save", "numpy_copyto"),
        "load": ("load", "numpy_copyto"),
    }
    ratio_repeats = 10
    timeout = 600

    def setup(self):
        self.mem = guest_memory()
        fault_memory(self.mem)
        self.mem.write_slice(np.arange(1 << 20, dtype=np.uint8), 12345)  # not all zeros
        self.maps, a, b = _baseline_pair()
        self.ops = {
            "save": partial(transfer.save, self.mem, SNAPSHOT),
            "load": partial(transfer.load, self.mem, SNAPSHOT),
            "numpy_copyto": partial(np.copyto, b, a),
        }
        for op in self.ops.values():  # writes the file once: later runs hit the page cache
            op()

    def teardown(self):
        del self.ops
        self.mem.close()

    def time_save(self):
        self.ops["save"]()

    def time_load(self):
        self.ops["load"]()

    def time_numpy_copyto(self):
        self.ops["numpy_copyto"]()

    def track_save_ratio(self):
        return self.ratio_of("save")

    def track_load_ratio(self):
        return self.ratio_of("load")

    track_save_ratio.unit = "ratio"
    track_load_ratio.unit = "ratio"


class TransferDirty(Paired):
    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "round": ("copy_dirty", "python_copyto_loop"),
    }
    timeout = 300

    def setup(self):
        self.src = guest_memory(bitmap=AtomicBitmap)
        self.dst = guest_memory()
        for mem in (self.src, self.dst):
            fault_memory(mem)
        rng = np.random.default_rng(6)
        pages = np.sort(rng.choice(GiB // PAGE, int(GiB // PAGE * DIRTY), replace=False))
        addrs = pages.astype(np.int64) * PAGE
        regions = list(self.src.iter())
        size = regions[0].len()
        marks = []
        for i, region in enumerate(regions):
            offsets = addrs[addrs // size == i] - i * size
            # the region's AtomicBitmap itself: one batched kernel call per region
            marks.append((region._bitmap, offsets, np.full(offsets.shape, PAGE)))

        def round_():
            for bitmap, offsets, lengths in marks:
                bitmap.mark_dirty_many(offsets, lengths)
            return transfer.copy_dirty(self.src, self.dst)

        src_views = [r.as_array() for r in regions]
        dst_views = [r.as_array() for r in self.dst.iter()]
        where = [(a // size, a % size) for a in addrs.tolist()]

        def loop():
            for r, off in where:
                np.copyto(dst_views[r][off : off + PAGE], src_views[r][off : off + PAGE])

        self.ops = {"copy_dirty": round_, "python_copyto_loop": loop}
        assert round_().shape[0] > 0.9 * len(where)  # the round does move those pages
        loop()

    def teardown(self):
        del self.ops
        self.src.close()
        self.dst.close()

    def time_copy_dirty_round(self):
        self.ops["copy_dirty"]()

    def time_python_copyto_loop(self):
        self.ops["python_copyto_loop"]()

    def track_round_ratio(self):
        return self.ratio_of("round")

    track_round_ratio.unit = "ratio"
