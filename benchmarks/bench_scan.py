"""Scans of a page-cached 1 GiB dump: ``find`` and ``find_many`` against ``mmap.find``.

Targets (issue 7), each against one ``mmap.find`` pass over the same file in the same run:

- ``find`` of a 14-byte literal: >= 1.0x the throughput of ``mmap.find`` (goal: 2x), i.e.
  ``time(find) / time(mmap.find) <= 1.0`` (goal: 0.5);
- ``find_many`` of 16 literals in one pass: >= 0.5x the throughput of one ``mmap.find``
  pass, i.e. ``time(find_many) / time(mmap.find) <= 2.0``.

Two files, made once in the temporary directory and reused across runs: ``random``
(uniform random bytes: ``mmap.find``'s best case, its skip loop jumps a whole pattern at
nearly every step) and ``realistic`` (the page mix of :mod:`bench_kdump` -- zero pages,
text, kernel-like structures, noise -- tiled to 1 GiB).  Each of the 16 literals is planted
a few times; both sides report every match.  ``setup`` reads the file through both
mappings, so the timed passes see cached, mapped pages.
"""

import mmap
import os
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np

import npguest
from npguest.scan import find, find_many

from ._common import PAGE, GiB, MiB, Paired
from .bench_dumps import ROOT
from .bench_kdump import realistic_pages

SIZE = GiB
NEEDLE = b"npguest-needle"  # 14 bytes
LITERALS = [NEEDLE] + [np.random.default_rng(i).bytes(14) for i in range(1, 16)]
DATA = ["random", "realistic"]


def scan_dump(kind: str) -> Path:
    """Make (once) the 1 GiB raw dump ``kind`` (``"random"`` or ``"realistic"``)."""
    ROOT.mkdir(exist_ok=True)
    path = ROOT / f"scan-{kind}-v1.raw"
    if path.exists():
        return path
    rng = np.random.default_rng(7)
    tile = realistic_pages(64 * MiB) if kind == "realistic" else None
    plants = rng.integers(0, SIZE - 64, (len(LITERALS), 4)) // 16 * 16
    tmp = ROOT / f"scan-{kind}.tmp"
    with open(tmp, "wb") as f:
        for start in range(0, SIZE, 64 * MiB):
            piece = rng.integers(0, 256, 64 * MiB, dtype=np.uint8) if tile is None else tile.copy()
            for literal, offsets in zip(LITERALS, plants, strict=True):
                for off in offsets[(offsets >= start) & (offsets < start + 64 * MiB)].tolist():
                    piece[off - start : off - start + 14] = np.frombuffer(literal, np.uint8)
            f.write(piece.data)
    os.replace(tmp, path)
    return path


def mmap_find_all(mapping: mmap.mmap, needle: bytes) -> int:
    """Count the matches of ``needle`` with ``mmap.find``: one pass over the mapping."""
    count = 0
    i = mapping.find(needle)
    while i >= 0:
        count += 1
        i = mapping.find(needle, i + 1)
    return count


class Scan(Paired):
    params: ClassVar[list[str]] = DATA
    param_names: ClassVar[list[str]] = ["data"]
    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "find": ("find", "mmap_find"),
        "find_many": ("find_many", "mmap_find"),
    }
    ratio_repeats = 10  # each side is one pass over 1 GiB
    timeout = 900

    def setup(self, data):
        path = scan_dump(data)
        self.mem = npguest.open_dump(path)
        self.file = open(path, "rb")  # noqa: SIM115 - closed in teardown
        self.map = mmap.mmap(self.file.fileno(), 0, prot=mmap.PROT_READ)
        for view in (self.mem.find_region(0).as_array(), np.frombuffer(self.map, np.uint8)):
            int(view[::PAGE].sum())  # page cache and page tables, both mappings
        del view
        self.ops = {
            "find": partial(find, self.mem, NEEDLE),
            "find_many": partial(find_many, self.mem, LITERALS),
            "mmap_find": partial(mmap_find_all, self.map, NEEDLE),
        }
        assert self.ops["find"]().size == self.ops["mmap_find"]() >= 4

    def teardown(self, data):
        del self.ops
        self.mem.close()
        self.map.close()
        self.file.close()

    def time_find(self, data):
        self.ops["find"]()

    def time_find_many(self, data):
        self.ops["find_many"]()

    def time_mmap_find(self, data):
        self.ops["mmap_find"]()

    def track_find_ratio(self, data):
        return self.ratio_of("find")

    def track_find_many_ratio(self, data):
        return self.ratio_of("find_many")

    track_find_ratio.unit = "ratio"
    track_find_many_ratio.unit = "ratio"
