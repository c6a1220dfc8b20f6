"""Bulk copies: ``read_slice`` / ``write_slice`` of 64 MiB against ``np.copyto``.

Target: at least 0.9x the speed of ``np.copyto`` between two plain arrays of the same
size, within one region and across a region boundary
(``time(npguest) / time(copyto) <= 1.11``).
"""

from functools import partial
from typing import ClassVar

import numpy as np

from ._common import N_REGIONS, GiB, MiB, Paired, fault_memory, guest_memory

SIZE = 64 * MiB
REGION = GiB // N_REGIONS
WHERE = {
    "within": REGION + 16 * MiB,  # inside region 1
    "across": 2 * REGION - SIZE // 2,  # half in region 1, half in region 2
}


class Copy(Paired):
    params: ClassVar[list[str]] = list(WHERE)
    param_names: ClassVar[list[str]] = ["where"]
    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "read_slice": ("read_slice", "numpy_copyto"),
        "write_slice": ("write_slice", "numpy_copyto"),
    }
    timeout = 300

    def setup(self, where):
        addr = WHERE[where]
        self.mem = guest_memory()
        fault_memory(self.mem, [addr], span=SIZE)
        # plain arrays, faulted by the fill; the guest side copies to/from the same ones
        self.src = np.ones(SIZE, dtype=np.uint8)
        self.dst = np.ones(SIZE, dtype=np.uint8)
        self.ops = {
            "read_slice": partial(self.mem.read_slice, self.dst, addr),
            "write_slice": partial(self.mem.write_slice, self.src, addr),
            "numpy_copyto": partial(np.copyto, self.dst, self.src),
        }

    def teardown(self, where):
        del self.ops
        self.mem.close()

    def time_read_slice(self, where):
        self.ops["read_slice"]()

    def time_write_slice(self, where):
        self.ops["write_slice"]()

    def time_numpy_copyto(self, where):
        self.ops["numpy_copyto"]()

    def track_read_slice_ratio(self, where):
        return self.ratio_of("read_slice")

    def track_write_slice_ratio(self, where):
        return self.ratio_of("write_slice")

    track_read_slice_ratio.unit = "ratio"
    track_write_slice_ratio.unit = "ratio"
