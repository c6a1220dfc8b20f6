"""Dumps: opening, bulk and scalar reads of a dump file.

Targets (issue 4):

- ``open_dump`` of a 16 GiB sparse dump (raw and QEMU-style ELF): < 50 ms, and no
  resident growth;
- sequential ``read_slice`` of 64 MiB of a page-cached dump: >= 0.9x the speed of
  ``np.copyto`` of the same 64 MiB out of the same mapping
  (``time(read_slice) / time(copyto) <= 1.11``);
- random 8-byte ``read_obj`` on an opened dump: within the core issue's scalar bound, 3x
  ``struct.unpack_from`` on an ``mmap`` of the same file at the same offsets.

The files live in a temporary directory made once per run (``setup_cache``); the sparse
ones cost no disk.
"""

import mmap
import os
import struct
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np

import npguest
from npguest import Le64

from ._common import GiB, MiB, Paired, random_addresses, rss_bytes

BIG = 16 * GiB
SIZE = 64 * MiB
N = 10_000
OPEN_LIMIT_MS = 50.0
FORMATS = ["raw", "elf"]


ROOT = Path(tempfile.gettempdir()) / "npguest-bench-dumps"


def big_dumps() -> Path:
    """Make (once) sparse 16 GiB raw and ELF dumps; return their directory.

    They cost no disk: the raw file is truncated to size, and the ELF writer leaves zero
    memory as holes.
    """
    ROOT.mkdir(exist_ok=True)
    if not (ROOT / "big.raw").exists():
        with open(ROOT / "big.raw", "wb") as f:
            f.truncate(BIG)
    if not (ROOT / "big.elf").exists():
        # RAM below 3 GiB and above 4 GiB, as QEMU lays out a 16 GiB x86 guest
        mem = npguest.GuestMemoryMmap.from_ranges([(0, 3 * GiB), (4 * GiB, BIG - 3 * GiB)])
        npguest.write_dump(mem, ROOT / "big.elf.tmp", "elf")
        mem.close()
        os.replace(ROOT / "big.elf.tmp", ROOT / "big.elf")
    return ROOT


def small_dump() -> Path:
    """Make (once) a 64 MiB raw dump of random bytes; return its path."""
    ROOT.mkdir(exist_ok=True)
    path = ROOT / "small.raw"
    if not path.exists():
        data = np.random.default_rng(0).integers(0, 256, SIZE, dtype=np.uint8)
        (ROOT / "small.tmp").write_bytes(data.tobytes())
        os.replace(ROOT / "small.tmp", path)
    return path


def open_ms(path: Path, repeat: int = 20) -> float:
    """Return the best wall time of ``open_dump(path)`` + ``close()``, in milliseconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        npguest.open_dump(path).close()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def open_rss_growth_kib(path: Path) -> float:
    """Return how much the resident set grows while a dump is open (KiB)."""
    npguest.open_dump(path).close()  # lazy imports first
    before = rss_bytes()
    mem = npguest.open_dump(path)
    grown = rss_bytes() - before
    mem.close()
    return grown / 1024


class OpenDump:
    params: ClassVar[list[str]] = FORMATS
    param_names: ClassVar[list[str]] = ["format"]
    timeout = 600

    def setup_cache(self):
        return str(big_dumps())

    def time_open_dump(self, root, fmt):
        npguest.open_dump(Path(root) / f"big.{fmt}").close()

    def track_open_ms(self, root, fmt):
        return open_ms(Path(root) / f"big.{fmt}")

    def track_open_rss_growth_kib(self, root, fmt):
        return open_rss_growth_kib(Path(root) / f"big.{fmt}")

    track_open_ms.unit = "ms"
    track_open_rss_growth_kib.unit = "KiB"


class DumpReads(Paired):
    """Bulk and scalar reads of a page-cached 64 MiB raw dump, and their baselines."""

    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "read_slice": ("read_slice", "numpy_copyto"),
        "read_obj": ("read_obj", "struct_unpack_from"),
    }
    timeout = 300

    def setup(self):
        path = small_dump()
        self.mem = npguest.open_dump(path)
        self.file = open(path, "rb")  # noqa: SIM115 - closed in teardown
        self.map = mmap.mmap(self.file.fileno(), 0, prot=mmap.PROT_READ)
        array = self.mem.find_region(0).as_array()
        self.dst = np.ones(SIZE, dtype=np.uint8)
        offsets = random_addresses(N, SIZE, align=8, seed=2).tolist()
        read_obj, unpack_from = self.mem.read_obj, struct.unpack_from
        mapping = self.map

        def read_objs():
            for a in offsets:
                read_obj(a, Le64)

        def unpacks():
            for a in offsets:
                unpack_from("<Q", mapping, a)

        self.ops = {
            "read_slice": partial(self.mem.read_slice, self.dst, 0),
            "numpy_copyto": partial(np.copyto, self.dst, array),
            "read_obj": read_objs,
            "struct_unpack_from": unpacks,
        }
        del array
        for op in self.ops.values():
            op()  # page cache, page tables and caches warm for both sides

    def teardown(self):
        del self.ops
        self.mem.close()
        self.map.close()
        self.file.close()

    def time_read_slice(self):
        self.ops["read_slice"]()

    def time_numpy_copyto(self):
        self.ops["numpy_copyto"]()

    def time_read_obj(self):
        self.ops["read_obj"]()

    def time_struct_unpack_from(self):
        self.ops["struct_unpack_from"]()

    def track_read_slice_ratio(self):
        return self.ratio_of("read_slice")

    def track_read_obj_ratio(self):
        return self.ratio_of("read_obj")

    track_read_slice_ratio.unit = "ratio"
    track_read_obj_ratio.unit = "ratio"
