"""Walking a memory in chunks: every backed byte once, overlaps, excluded ranges, kdump."""

from __future__ import annotations

import numpy as np
import pytest
from dump_support import PAGE, sample_memory
from hypothesis import given, settings
from hypothesis import strategies as st

from npguest import GuestMemoryMmap
from npguest.dumps.kdump import open_kdump, write_kdump
from npguest.walk import backed_runs, iter_chunks


def model_runs(mem):
    return [(s, mem.read_bytes(s, e - s)) for s, e in backed_runs(mem)]


def check_walk(mem, chunk, overlap):
    runs = model_runs(mem)
    got = {}
    for c in iter_chunks(mem, chunk, overlap):
        assert 0 < c.owned <= chunk and c.owned <= len(c.data) <= c.owned + overlap
        run = next((s, d) for s, d in runs if s <= c.addr < s + len(d))
        off = c.addr - run[0]
        assert c.data.tobytes() == run[1][off : off + len(c.data)]
        # the overlap is cut only by the end of the run
        assert len(c.data) == min(c.owned + overlap, len(run[1]) - off)
        got[c.addr] = c.data[: c.owned].tobytes()
    for s, d in runs:
        assert b"".join(v for a, v in sorted(got.items()) if s <= a < s + len(d)) == d


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3 * PAGE), min_size=1, max_size=4),
    gaps=st.lists(st.sampled_from([0, 0, 1, PAGE]), min_size=4, max_size=4),
    chunk=st.sampled_from([1, 7, PAGE, 5 * PAGE]),
    overlap=st.sampled_from([0, 1, 13, PAGE + 1]),
)
def test_every_byte_once_with_overlap(sizes, gaps, chunk, overlap):
    layout, cur = [], 0x10000
    for size, gap in zip(sizes, gaps, strict=False):
        layout.append((cur, size))
        cur += size + gap
    mem, _ = sample_memory(layout, seed=len(sizes))
    with mem:
        check_walk(mem, chunk, overlap)


def test_excluded_ranges_and_kdump(tmp_path):
    mem, _ = sample_memory([(0, 8 * PAGE), (8 * PAGE, 4 * PAGE), (0x100000, 2 * PAGE)])
    with mem:
        write_kdump(mem, tmp_path / "k")
    with open_kdump(tmp_path / "k") as dump:  # no host memory: pieces are read
        check_walk(dump, 3 * PAGE, 5)
        assert backed_runs(dump) == [(0, 12 * PAGE), (0x100000, 0x102000)]


def test_bad_arguments_and_empty_memory():
    mem = GuestMemoryMmap.from_ranges([(0, PAGE)])
    with pytest.raises(ValueError, match="chunk must be positive"):
        next(iter_chunks(mem, 0))
    with pytest.raises(ValueError, match="overlap non-negative"):
        next(iter_chunks(mem, 1, -1))
    assert list(iter_chunks(GuestMemoryMmap())) == []
    assert backed_runs(GuestMemoryMmap()) == []


def test_views_are_zero_copy_inside_a_region():
    mem = GuestMemoryMmap.from_ranges([(0, 4 * PAGE), (4 * PAGE, PAGE)])
    pieces = list(iter_chunks(mem, 2 * PAGE, overlap=PAGE))
    base = mem.find_region(0).as_array()
    assert np.shares_memory(pieces[0].data, base)  # [0, 3 pages) inside region 0
    assert not np.shares_memory(pieces[1].data, base)  # [2, 5 pages) straddles: a copy


def test_excluded_ranges_are_cut_out():
    from npguest.dumps.dump import DumpMemory, DumpMetadata

    regions = list(GuestMemoryMmap.from_ranges([(0, 4 * PAGE), (4 * PAGE, 4 * PAGE)]).iter())
    excluded = ((PAGE, PAGE), (3 * PAGE, 2 * PAGE), (7 * PAGE, PAGE), (0x100000, PAGE))
    mem = DumpMemory(regions, DumpMetadata("test", "", excluded=excluded))
    assert backed_runs(mem) == [(0, PAGE), (2 * PAGE, 3 * PAGE), (5 * PAGE, 7 * PAGE)]
    assert [c.addr for c in iter_chunks(mem)] == [0, 2 * PAGE, 5 * PAGE]


@settings(max_examples=100, deadline=None)
@given(
    runs=st.lists(st.tuples(st.integers(0, 40), st.integers(1, 10)), max_size=5),
    cuts=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 8)), max_size=8),
    high=st.booleans(),
)
def test_cut_matches_a_set_model(runs, cuts, high):
    from npguest.walk import _cut

    base = 2**64 - 0x1000 if high else 0
    # disjoint sorted runs and excluded ranges, in 8-byte units
    run_list, cur = [], 0
    for gap, n in runs:
        cur += gap + 1
        run_list.append((base + 8 * cur, base + 8 * (cur + n)))
        cur += n
    cut_list, cur = [], 0
    for gap, n in cuts:
        cur += gap
        cut_list.append((base + 8 * cur, 8 * n))
        cur += n + 1
    cut_list = [c for c in cut_list if c[0] + c[1] < 2**64]
    run_list = [r for r in run_list if r[1] < 2**64]
    bytes_in = {a for s, e in run_list for a in range(s, e, 8)}
    bytes_in -= {a for g, n in cut_list for a in range(g, g + n, 8)}
    excluded = np.array(cut_list, dtype=np.uint64).reshape(-1, 2)
    got = _cut(run_list, excluded)
    assert {a for s, e in got for a in range(s, e, 8)} == bytes_in
    assert all(s < e for s, e in got) and got == sorted(got)
