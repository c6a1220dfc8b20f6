"""Guest page tables: ``X86PageTables.translate_many`` and ``mappings`` (issue 5).

Targets (absolute values): ``translate_many`` of 1,000,000 random mapped addresses in a
4-level address space at most 100 ns per address, and ``mappings()`` of an address space
of 100,000 mapped 4 KiB pages under 100 ms.

Both address spaces live in one 1 GiB guest memory (four adjacent 256 MiB regions):
1 GiB of virtual memory at 0x7F0000000000 mapped by 262,144 4 KiB pages onto random
frames (2 MiB of page tables, random entries per lookup), and 100,000 contiguous
virtual pages on random frames (nothing coalesces).
"""

import numpy as np

from npguest import Le64
from npguest.paging import X86PageTables

from ._common import GiB, guest_memory
from .bench_dirty import best_seconds

N = 1_000_000
VA_BASE = 0x7F00_0000_0000
PAGES_BIG, PAGES_SMALL = GiB // 4096, 100_000
TABLES_BIG, TABLES_SMALL = 0x3000_0000, 0x3080_0000
TRANSLATE_LIMIT_NS, MAPPINGS_LIMIT_MS = 100.0, 100.0

_U = np.uint64


def build_4level(mem, table_base: int, va_base: int, frames: np.ndarray) -> int:
    """Map ``len(frames)`` 4 KiB pages from ``va_base`` onto ``frames``; return the CR3.

    ``va_base`` is 1 GiB aligned and at most 262,144 pages are mapped (one PD); the
    tables (PML4, PDPT, PD, then consecutive PTs) are written from ``table_base`` on.
    """
    n = frames.shape[0]
    pml4, pdpt, pd, pt0 = (table_base + 0x1000 * i for i in range(4))
    pts = pt0 + 0x1000 * np.arange(-(-n // 512), dtype=_U)
    mem.write_obj(pdpt | 7, pml4 + 8 * ((va_base >> 39) & 511), Le64)
    mem.write_obj(pd | 7, pdpt + 8 * ((va_base >> 30) & 511), Le64)
    mem.write_objs(pts | _U(7), pd + 8 * np.arange(pts.shape[0], dtype=_U), Le64)
    mem.write_objs((frames << _U(12)) | _U(7), pt0 + 8 * np.arange(n, dtype=_U), Le64)
    return pml4


class Paging:
    timeout = 300

    def setup(self):
        rng = np.random.default_rng(5)
        self.mem = guest_memory()
        frames = rng.integers(0, GiB // 4096, size=PAGES_BIG, dtype=_U)
        self.big = X86PageTables(self.mem, build_4level(self.mem, TABLES_BIG, VA_BASE, frames))
        self.addrs = _U(VA_BASE) + rng.integers(0, GiB // 8, size=N, dtype=_U) * _U(8)
        small = rng.integers(0, GiB // 4096, size=PAGES_SMALL, dtype=_U)
        self.small = X86PageTables(self.mem, build_4level(self.mem, TABLES_SMALL, VA_BASE, small))
        paddr, valid, _ = self.big.translate_many(self.addrs)
        assert valid.all()
        offsets = self.addrs - _U(VA_BASE)
        assert np.array_equal(paddr, (frames[offsets >> _U(12)] << _U(12)) | (offsets & _U(4095)))
        assert self.small.mappings()[0].shape == (PAGES_SMALL,)

    def teardown(self):
        self.mem.close()

    def time_translate_many(self):
        self.big.translate_many(self.addrs)

    def time_mappings(self):
        self.small.mappings()

    def track_translate_many_ns_per_address(self):
        return translate_ns(self)

    def track_mappings_ms(self):
        return mappings_ms(self)

    track_translate_many_ns_per_address.unit = "ns"
    track_mappings_ms.unit = "ms"


def translate_ns(bench: Paging) -> float:
    """Best ns per address of ``translate_many`` over 1M random mapped addresses."""
    return best_seconds(bench.time_translate_many, repeat=15) / N * 1e9


def mappings_ms(bench: Paging) -> float:
    """Best ms of ``mappings()`` over 100,000 mapped 4 KiB pages."""
    return best_seconds(bench.time_mappings, repeat=30) * 1e3
