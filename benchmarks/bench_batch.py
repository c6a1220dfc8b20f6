"""Batch objects: ``read_objs`` / ``write_objs`` of 1M ``Le64`` vs ``np.take`` / ``np.put``.

Target: at most 2x ``np.take`` / ``np.put`` on one flat 1 GiB array (``'<u8'`` view,
indices ``offsets // 8``) with the same random offsets, the guest memory being four
adjacent 256 MiB regions.  Addresses are a ``uint64`` array; every page of both sides is
faulted in during setup.
"""

from functools import partial
from typing import ClassVar

import numpy as np

from npguest import Le64

from ._common import (
    GiB,
    Paired,
    fault_array,
    fault_memory,
    guest_memory,
    plain_mmap,
    random_addresses,
)

N = 1_000_000


class Batch(Paired):
    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "read_objs": ("read_objs", "np_take"),
        "write_objs": ("write_objs", "np_put"),
    }
    ratio_repeats = 30
    timeout = 300

    def setup(self):
        self.mem = guest_memory()
        self.map, view = plain_mmap(GiB, thp=True)  # a flat numpy-like array
        fault_memory(self.mem)
        fault_array(view)
        flat = view.view("<u8")
        addrs = random_addresses(N, GiB, align=8, seed=2)
        index = (addrs // np.uint64(8)).astype(np.intp)
        values = np.arange(N, dtype="<u8")
        self.ops = {
            "read_objs": partial(self.mem.read_objs, addrs, Le64),
            "write_objs": partial(self.mem.write_objs, values, addrs, Le64),
            "np_take": partial(np.take, flat, index),
            "np_put": partial(np.put, flat, index, values),
        }
        for op in self.ops.values():  # loads the kernels; both sides now hold equal bytes
            op()
        assert np.array_equal(self.ops["read_objs"](), self.ops["np_take"]())

    def teardown(self):
        del self.ops
        self.mem.close()

    def time_read_objs(self):
        self.ops["read_objs"]()

    def time_np_take(self):
        self.ops["np_take"]()

    def time_write_objs(self):
        self.ops["write_objs"]()

    def time_np_put(self):
        self.ops["np_put"]()

    def track_read_objs_ratio(self):
        return self.ratio_of("read_objs")

    def track_write_objs_ratio(self):
        return self.ratio_of("write_objs")

    track_read_objs_ratio.unit = "ratio"
    track_write_objs_ratio.unit = "ratio"
