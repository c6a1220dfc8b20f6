"""Page summaries of 1 GiB: the zero-page map, page hashes, entropy, and diffs.

Target (issue 7): the zero-page map (``npguest.pages.page_map``) of a 1 GiB guest memory
at >= 5 GB/s.  Hashes, entropy and diffs have no target; their speed is reported.  Each
has a same-run numpy baseline doing the same per-page work vectorised (``any`` over the
words of each page; ``!=`` then ``any`` for the diff).

The memory is four adjacent 256 MiB anonymous regions, every page faulted in, mixed like
a guest's: 40% zero pages, 30% random bytes, 30% sparse pages (one non-zero word at a
random offset, so the zero test must read up to it).  The diff compares it with a copy
in which 1% of the pages differ in one word (the others must be read whole).
"""

import time
from collections.abc import Callable
from functools import partial
from typing import ClassVar

import numpy as np

from npguest import GuestMemoryMmap
from npguest.pages import diff, page_entropy, page_hashes, page_map

from ._common import GiB, MiB, Paired, fault_memory, guest_memory

SIZE = GiB
#: The target: zero-page map of 1 GiB, GB/s.
ZERO_MAP_TARGET_GBPS = 5.0
WORDS_PER_PAGE = 512  # 4 KiB pages
_CHUNK_WORDS = 16 * MiB // 8


def page_memory(seed: int = 0) -> GuestMemoryMmap:
    """Return a faulted 1 GiB memory of mixed zero, random and sparse pages."""
    rng = np.random.default_rng(seed)
    mem = guest_memory(SIZE)
    fault_memory(mem)
    for region in mem.iter():
        words = region.as_array().view(np.uint64).reshape(-1, WORDS_PER_PAGE)
        kind = rng.choice(3, words.shape[0], p=[0.4, 0.3, 0.3])
        noise = np.flatnonzero(kind == 1)
        words[noise] = rng.integers(0, 2**64 - 1, (noise.shape[0], WORDS_PER_PAGE),
                                    dtype=np.uint64, endpoint=True)  # fmt: skip
        sparse = np.flatnonzero(kind == 2)
        words[sparse, rng.integers(0, WORDS_PER_PAGE, sparse.shape[0])] = 0x5A
    return mem


def changed_copy(mem: GuestMemoryMmap, share: float = 0.01, seed: int = 1) -> GuestMemoryMmap:
    """Return a faulted copy of ``mem`` in which ``share`` of the pages differ in one word."""
    rng = np.random.default_rng(seed)
    copy = guest_memory(SIZE)
    for src, dst in zip(mem.iter(), copy.iter(), strict=True):
        words = dst.as_array().view(np.uint64).reshape(-1, WORDS_PER_PAGE)
        words[:] = src.as_array().view(np.uint64).reshape(-1, WORDS_PER_PAGE)
        pages = np.flatnonzero(rng.random(words.shape[0]) < share)
        words[pages, rng.integers(0, WORDS_PER_PAGE, pages.shape[0])] ^= np.uint64(1)
    return copy


def numpy_zero_map(mem: GuestMemoryMmap) -> np.ndarray:
    """The baseline: ``any`` over each page's words, region by region."""
    return np.concatenate(
        [~r.as_array().view(np.uint64).reshape(-1, WORDS_PER_PAGE).any(axis=1) for r in mem.iter()]
    )


def numpy_diff(a: GuestMemoryMmap, b: GuestMemoryMmap) -> np.ndarray:
    """The baseline: pages that differ, by ``!=`` and ``any`` over 16 MiB pieces."""
    out = []
    for ra, rb in zip(a.iter(), b.iter(), strict=True):
        wa, wb = ra.as_array().view(np.uint64), rb.as_array().view(np.uint64)
        for s in range(0, wa.shape[0], _CHUNK_WORDS):
            ne = wa[s : s + _CHUNK_WORDS] != wb[s : s + _CHUNK_WORDS]
            out.append(ne.reshape(-1, WORDS_PER_PAGE).any(axis=1))
    return np.concatenate(out)


def best_gbps(op: Callable[[], object], nbytes: int = SIZE, repeat: int = 5) -> float:
    """Return ``nbytes`` over the best of ``repeat`` timed calls of ``op``, in GB/s."""
    op()  # kernels compiled or loaded from the cache
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        op()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def zero_map_gbps(repeat: int = 5) -> float:
    """Return the zero-page map speed over the 1 GiB mixed memory, in GB/s (the target row)."""
    mem = page_memory()
    try:
        addrs, is_zero = page_map(mem)
        if not np.array_equal(is_zero, numpy_zero_map(mem)):
            raise AssertionError("page_map disagrees with the numpy baseline")
        del addrs, is_zero
        return best_gbps(partial(page_map, mem), repeat=repeat)
    finally:
        mem.close()


class PageSummaries(Paired):
    """Per-page summaries of the 1 GiB mixed memory."""

    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "zero_map": ("page_map", "numpy_zero_map"),
    }
    ratio_repeats = 5
    timeout = 300

    def setup(self):
        self.mem = page_memory()
        self.ops = {
            "page_map": partial(page_map, self.mem),
            "numpy_zero_map": partial(numpy_zero_map, self.mem),
            "page_hashes": partial(page_hashes, self.mem),
            "page_entropy": partial(page_entropy, self.mem),
        }
        for op in self.ops.values():
            op()

    def teardown(self):
        del self.ops
        self.mem.close()

    def time_page_map(self):
        self.ops["page_map"]()

    def time_numpy_zero_map(self):
        self.ops["numpy_zero_map"]()

    def time_page_hashes(self):
        self.ops["page_hashes"]()

    def time_page_entropy(self):
        self.ops["page_entropy"]()

    def track_zero_map_gbps(self):
        return best_gbps(self.ops["page_map"])

    def track_hashes_gbps(self):
        return best_gbps(self.ops["page_hashes"])

    def track_entropy_gbps(self):
        return best_gbps(self.ops["page_entropy"], repeat=2)

    def track_zero_map_ratio(self):
        return self.ratio_of("zero_map")

    track_zero_map_gbps.unit = "GB/s"
    track_hashes_gbps.unit = "GB/s"
    track_entropy_gbps.unit = "GB/s"
    track_zero_map_ratio.unit = "ratio"


class Diff(Paired):
    """``diff`` of the 1 GiB mixed memory against a copy with 1% of its pages changed."""

    pairs: ClassVar[dict[str, tuple[str, str]]] = {"diff": ("diff", "numpy_diff")}
    ratio_repeats = 5
    timeout = 300

    def setup(self):
        self.a = page_memory()
        self.b = changed_copy(self.a)
        self.ops = {
            "diff": partial(diff, self.a, self.b),
            "numpy_diff": partial(numpy_diff, self.a, self.b),
        }
        changed = self.ops["diff"]().changed
        pages = np.flatnonzero(self.ops["numpy_diff"]())
        if int(changed[:, 1].sum()) != pages.shape[0] * 4096:
            raise AssertionError("diff disagrees with the numpy baseline")

    def teardown(self):
        del self.ops
        self.a.close()
        self.b.close()

    def time_diff(self):
        self.ops["diff"]()

    def time_numpy_diff(self):
        self.ops["numpy_diff"]()

    def track_diff_gbps(self):
        """Bytes of one memory compared per second."""
        return best_gbps(self.ops["diff"])

    def track_diff_ratio(self):
        return self.ratio_of("diff")

    track_diff_gbps.unit = "GB/s"
    track_diff_ratio.unit = "ratio"
