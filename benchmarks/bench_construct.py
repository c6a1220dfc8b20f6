"""Construction: ``GuestMemoryMmap.from_ranges`` of four regions touches no page.

Targets: the time does not depend on the size (1 GiB vs 16 MiB: ratio ~1), the peak
resident memory of a process holding a 1 GiB memory is that of one holding none
(``peakmem_from_ranges`` beside ``peakmem_baseline``), and the resident set grows by
~0 MiB (``track_rss_growth``).
"""

from functools import partial
from typing import ClassVar

from ._common import GiB, MiB, Paired, guest_memory, rss_bytes

SIZES = [16 * MiB, GiB]


def build_and_close(total):
    """Map a 4-region memory and unmap it (timed together: no mapping outlives its call)."""
    guest_memory(total).close()


def rss_growth_mib(total):
    """Return how many MiB the resident set grows by while a new memory is mapped."""
    before = rss_bytes()
    mem = guest_memory(total)
    grown = rss_bytes() - before
    mem.close()
    return grown / MiB


class FromRanges:
    params: ClassVar[list[int]] = SIZES
    param_names: ClassVar[list[str]] = ["total"]

    def setup(self, total):
        build_and_close(total)  # warm the import paths
        self.mem = None

    def teardown(self, total):
        if self.mem is not None:
            self.mem.close()

    def time_from_ranges(self, total):
        build_and_close(total)

    def peakmem_from_ranges(self, total):
        self.mem = guest_memory(total)  # stays mapped until teardown

    def peakmem_baseline(self, total):
        pass

    def track_rss_growth(self, total):
        return rss_growth_mib(total)

    track_rss_growth.unit = "MiB"


class FromRangesScaling(Paired):
    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "from_ranges_size": ("from_ranges_1GiB", "from_ranges_16MiB"),
    }

    def setup(self):
        self.ops = {
            "from_ranges_1GiB": partial(build_and_close, GiB),
            "from_ranges_16MiB": partial(build_and_close, 16 * MiB),
        }

    def track_from_ranges_size_ratio(self):
        return self.ratio_of("from_ranges_size")

    track_from_ranges_size_ratio.unit = "ratio"
