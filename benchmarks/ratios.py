"""Measure every speed target of the open issues in one run and print a table.

Usage: ``python benchmarks/ratios.py``.  Rows of the dirty-tracking issue start with
``3:``, those of the dumps issue with ``4:``, those of the IOMMU / page-table issue with
``5:``, those of the transfer issue with ``6:``, those of the analysis issue with ``7:``;
the others are the core issue's.  Each
row times npguest and its baseline in this process, interleaved, best of many repeats
(the same code as the asv suite's ``time_*`` and ``track_*_ratio`` benchmarks, which this
reuses).  The table reports; it does not
gate: the exit status is 0 whatever the ratios, non-zero only if a measurement crashed.

asv imports this module while collecting benchmarks, so it defines no ``time_*``,
``track_*`` or ``peakmem_*`` names and measures nothing on import.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: make the ``benchmarks`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import (
    _common,
    bench_batch,
    bench_construct,
    bench_copy,
    bench_dask,
    bench_dirty,
    bench_dumps,
    bench_import,
    bench_iommu,
    bench_kdump,
    bench_migration,
    bench_pages,
    bench_paging,
    bench_scalar,
    bench_scan,
    bench_transfer,
)

# (benchmark class, pair name, label, largest passing ratio or None for a figure reported
# without a target); rows run for every value of the class's asv ``params``
RATIO_ROWS = [
    (bench_copy.Copy, "read_slice", "read_slice 64 MiB", 1 / 0.9),
    (bench_copy.Copy, "write_slice", "write_slice 64 MiB", 1 / 0.9),
    (bench_scalar.Scalar, "read_obj", "read_obj Le64 x10k", 3.0),
    (bench_scalar.Scalar, "write_obj", "write_obj Le64 x10k", 3.0),
    (bench_batch.Batch, "read_objs", "read_objs 1M Le64 / np.take", 2.0),
    (bench_batch.Batch, "write_objs", "write_objs 1M Le64 / np.put", 2.0),
    (bench_construct.FromRangesScaling, "from_ranges_size", "from_ranges 1 GiB / 16 MiB", 1.5),
    (bench_import.Import, "import", "import npguest / numpy", 1.5),
    # issue 3: dirty tracking (AtomicBitmap) against the same call untracked
    (bench_dirty.DirtyBatch, "write_objs", "3: write_objs 1M tracked/untracked", 2.0),
    (bench_dirty.DirtyScalar, "write_obj", "3: write_obj tracked/untracked", 1.3),
    (bench_dirty.DirtyCopy, "write_slice", "3: write_slice tracked/copyto", 1 / 0.85),
    (bench_dirty.DirtyThreads, "threads", "3: write_objs 4 thr/1 thr time", 1 / 1.5),
    # issue 4: dumps (a page-cached 64 MiB raw dump)
    (bench_dumps.DumpReads, "read_slice", "4: dump read_slice 64 MiB/copyto", 1 / 0.9),
    (bench_dumps.DumpReads, "read_obj", "4: dump read_obj Le64 x10k/struct", 3.0),
    # issue 5: IOMMU
    (bench_iommu.Fragmented, "read_slice", "5: IommuMemory read 64 MiB/4 KiB pieces", 1 / 0.5),
    # issue 6: bulk transfers against np.copyto (and a Python loop of it) in the same run
    (bench_transfer.TransferCopy, "copy", "6: copy 1 GiB/copyto", 1 / 0.9),
    (bench_transfer.TransferFile, "save", "6: save 1 GiB to page cache/copyto", 1 / 0.7),
    (bench_transfer.TransferFile, "load", "6: load 1 GiB from page cache/copyto", 1 / 0.7),
    (bench_transfer.TransferDirty, "round", "6: copy_dirty 1% of 1 GiB/copyto loop", 1 / 1.5),
    (bench_migration.SocketTransfer, "send_ranges", "6: send_ranges 1 GiB loopback/sendall", 1.25),
    # the whole migration stream (per-page XXH64 on both ends): no target of its own
    (bench_migration.SocketTransfer, "migration", "6: migration 1 GiB loopback/sendall", None),
    # issue 7: scans over a page-cached 1 GiB dump, against mmap.find over the same file
    (bench_scan.Scan, "find", "7: find 14 B literal 1 GiB/mmap.find", 1.0),
    (bench_scan.Scan, "find_many", "7: find_many 16 literals/mmap.find", 2.0),
]
QUERY_LIMIT_US = 50.0

RSS_LIMIT_MIB = 1.0
HEADER = ("benchmark", "npguest", "baseline", "ratio", "target", "")


def _seconds(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def _ratio_rows():
    """Yield one table row per (class, parameter, pair), setting each fixture up once."""
    groups: dict[tuple[type, str | None], list[tuple[str, str, float]]] = {}
    for cls, pair, label, limit in RATIO_ROWS:
        for param in getattr(cls, "params", None) or [None]:
            groups.setdefault((cls, param), []).append((pair, label, limit))
    for (cls, param), pairs in groups.items():
        bench = cls()
        args = () if param is None else (param,)
        if hasattr(bench, "setup"):
            bench.setup(*args)
        try:
            for pair, label, limit in pairs:
                ours, base = bench.measure(pair)
                name = label if param is None else f"{label} [{param}]"
                r = ours / base
                if limit is None:  # measured beside the targets, for the record
                    yield (name, _seconds(ours), _seconds(base), f"{r:.3f}", "(none)", "info")
                    continue
                yield (name, _seconds(ours), _seconds(base), f"{r:.3f}", f"<= {limit:.3g}",
                       _verdict(r <= limit))  # fmt: skip
        finally:
            if hasattr(bench, "teardown"):
                bench.teardown(*args)


def _value_rows():
    """Yield the rows whose target is a value, not a ratio."""
    for total in bench_construct.SIZES:
        grown = bench_construct.rss_growth_mib(total)
        label = f"from_ranges {total // _common.MiB} MiB RSS growth"
        yield (label, f"{grown:.2f} MiB", "0 MiB", "-", f"<= {RSS_LIMIT_MIB:g} MiB",
               _verdict(grown <= RSS_LIMIT_MIB))  # fmt: skip
    for fraction, lane in itertools.product(*bench_dirty.DirtyQuery.params):
        bitmap, redirty = bench_dirty.dirty_bitmap(fraction, lane)
        where = f"{fraction:.0%} dirty, {lane} lane"
        for label, seconds in (
            ("dirty_ranges", bench_dirty.best_seconds(bitmap.dirty_ranges)),
            ("get_and_reset", bench_dirty.best_seconds(bitmap.get_and_reset, redirty, 30)),
        ):
            us = seconds * 1e6
            yield (f"3: {label} 1 GiB [{where}]", f"{us:.1f} us", "-", "-",
                   f"<= {QUERY_LIMIT_US:g} us", _verdict(us <= QUERY_LIMIT_US))  # fmt: skip
    root = bench_dumps.big_dumps()
    for fmt in bench_dumps.FORMATS:
        path = root / f"big.{fmt}"
        ms, kib = bench_dumps.open_ms(path), bench_dumps.open_rss_growth_kib(path)
        yield (f"4: open_dump 16 GiB sparse {fmt}", f"{ms:.3f} ms", "-", "-",
               f"< {bench_dumps.OPEN_LIMIT_MS:g} ms",
               _verdict(ms < bench_dumps.OPEN_LIMIT_MS))  # fmt: skip
        yield (f"4: open_dump 16 GiB sparse {fmt} RSS growth", f"{kib:.0f} KiB", "0 MiB", "-",
               f"<= {RSS_LIMIT_MIB:g} MiB", _verdict(kib <= RSS_LIMIT_MIB * 1024))  # fmt: skip
    gbps = bench_kdump.kdump_read_gbps()
    yield ("4: kdump (zlib) sequential read_slice", f"{gbps:.2f} GB/s", "-", "-",
           f">= {bench_kdump.READ_TARGET_GBPS:g} GB/s",
           _verdict(gbps >= bench_kdump.READ_TARGET_GBPS))  # fmt: skip
    paging = bench_paging.Paging()
    paging.setup()
    try:
        ns, ms = bench_paging.translate_ns(paging), bench_paging.mappings_ms(paging)
    finally:
        paging.teardown()
    yield ("5: translate_many 1M random, 4-level", f"{ns:.1f} ns/addr", "-", "-",
           f"<= {bench_paging.TRANSLATE_LIMIT_NS:g} ns",
           _verdict(ns <= bench_paging.TRANSLATE_LIMIT_NS))  # fmt: skip
    yield ("5: mappings() 100k 4 KiB pages", f"{ms:.1f} ms", "-", "-",
           f"< {bench_paging.MAPPINGS_LIMIT_MS:g} ms",
           _verdict(ms < bench_paging.MAPPINGS_LIMIT_MS))  # fmt: skip
    gbps = bench_pages.zero_map_gbps()
    yield ("7: zero-page map 1 GiB", f"{gbps:.1f} GB/s", "-", "-",
           f">= {bench_pages.ZERO_MAP_TARGET_GBPS:g} GB/s",
           _verdict(gbps >= bench_pages.ZERO_MAP_TARGET_GBPS))  # fmt: skip
    speed = bench_dask.scan_many_speedup()
    yield ("7: scan_many 8 dumps, 2 workers / serial", f"{speed.scan_many:.2f}x",
           f"pool {speed.process_pool:.2f}x", "-", ">= 1.6x",
           _verdict(speed.scan_many >= 1.6))  # fmt: skip
    yield ("7: scan_many, workers' profiler on / serial", f"{speed.profiled:.2f}x",
           "-", "-", "(none)", "info")  # fmt: skip
    loaded = _common.numba_modules_after_import("npguest")
    yield ("import npguest loads numba", f"{loaded} modules", "0 modules", "-", "== 0",
           _verdict(loaded == 0))  # fmt: skip


def main() -> int:
    """Measure, print the table row by row, return 0."""
    t0 = time.perf_counter()
    widths = (46, 10, 10, 6, 10, 4)

    def show(row):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)), flush=True)

    show(HEADER)
    failed, count = [], 0
    for row in itertools.chain(_ratio_rows(), _value_rows()):
        show(row)
        count += row[-1] != "info"
        if row[-1] == "FAIL":
            failed.append(row[0])
    elapsed = time.perf_counter() - t0
    print(f"\n{count - len(failed)}/{count} targets met ({elapsed:.0f} s)")
    for name in failed:
        print(f"FAIL: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
