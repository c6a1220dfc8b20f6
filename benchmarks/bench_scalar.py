"""Scalar objects: ``read_obj`` / ``write_obj`` of a ``Le64`` against ``struct`` on an mmap.

Target: at most 3x the cost of ``struct.unpack_from('<Q', m, off)`` /
``struct.pack_into('<Q', m, off, v)`` on a plain ``mmap.mmap`` at the same offsets, in a
4-region 1 GiB memory, at one hot address and at 10,000 random 8-aligned addresses
spread over the whole GiB.  Each timed call is a loop over the 10,000 addresses (the
same loop on both sides); the pages they touch are faulted in for both.
"""

import struct
from typing import ClassVar

import numpy as np

from npguest import Le64

from ._common import (
    N_REGIONS,
    GiB,
    Paired,
    fault_array,
    fault_memory,
    guest_memory,
    plain_mmap,
    random_addresses,
)

N = 10_000
HOT = 2 * (GiB // N_REGIONS) + 0x1238  # inside region 2
VALUE = 0x0123_4567_89AB_CDEF


def _addresses(where):
    if where == "hot":
        return np.full(N, HOT, dtype=np.uint64)
    return random_addresses(N, GiB, align=8, seed=1)


def _fixture(addrs):
    """Return a 4-region 1 GiB guest memory and a 1 GiB plain mmap, pages of ``addrs`` faulted."""
    mem = guest_memory()
    m, view = plain_mmap(GiB, thp=False)  # a plain mmap object
    fault_memory(mem, addrs)
    fault_array(view, addrs)
    return mem, m


# Each op is a loop over the same Python-int addresses, with every name it uses bound to a
# local or closure variable, so both sides pay the same loop overhead.
def _read_obj(mem, offsets, dtype=Le64):
    read = mem.read_obj

    def run():
        for a in offsets:
            read(a, dtype)

    return run


def _write_obj(mem, offsets, dtype=Le64, value=VALUE):
    write = mem.write_obj

    def run():
        for a in offsets:
            write(value, a, dtype)

    return run


def _unpack_from(m, offsets, fmt="<Q"):
    unpack_from = struct.unpack_from

    def run():
        for a in offsets:
            unpack_from(fmt, m, a)

    return run


def _pack_into(m, offsets, fmt="<Q", value=VALUE):
    pack_into = struct.pack_into

    def run():
        for a in offsets:
            pack_into(fmt, m, a, value)

    return run


class Scalar(Paired):
    params: ClassVar[list[str]] = ["hot", "random"]
    param_names: ClassVar[list[str]] = ["where"]
    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "read_obj": ("read_obj", "struct_unpack_from"),
        "write_obj": ("write_obj", "struct_pack_into"),
    }
    timeout = 300

    def setup(self, where):
        addrs = _addresses(where)
        self.mem, self.map = _fixture(addrs)
        offsets = addrs.tolist()  # Python ints, as scalar callers pass them
        self.ops = {
            "read_obj": _read_obj(self.mem, offsets),
            "write_obj": _write_obj(self.mem, offsets),
            "struct_unpack_from": _unpack_from(self.map, offsets),
            "struct_pack_into": _pack_into(self.map, offsets),
        }
        for op in self.ops.values():
            op()
        assert self.mem.read_obj(int(addrs[0]), Le64) == VALUE

    def teardown(self, where):
        del self.ops
        self.mem.close()

    def time_read_obj(self, where):
        self.ops["read_obj"]()

    def time_struct_unpack_from(self, where):
        self.ops["struct_unpack_from"]()

    def time_write_obj(self, where):
        self.ops["write_obj"]()

    def time_struct_pack_into(self, where):
        self.ops["struct_pack_into"]()

    def track_read_obj_ratio(self, where):
        return self.ratio_of("read_obj")

    def track_write_obj_ratio(self, where):
        return self.ratio_of("write_obj")

    track_read_obj_ratio.unit = "ratio"
    track_write_obj_ratio.unit = "ratio"
