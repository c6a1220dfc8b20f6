"""Page summaries against plain Python: bytes compare, a pure-Python XXH64, math.log2."""

from __future__ import annotations

import math
import struct
from collections import Counter
from unittest import mock

import numpy as np
import pytest
from _support import readonly_file_memory
from dump_support import PAGE, sample_memory
from hypothesis import given, settings
from hypothesis import strategies as st

from npguest import GuestMemoryMmap
from npguest import pages as pg
from npguest.dumps.dump import DumpMemory, DumpMetadata
from npguest.dumps.kdump import open_kdump, write_kdump
from npguest.walk import backed_runs

M64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (
    11400714785074694791,
    14029467366897019727,
    1609587929392839161,
    9650029242287828579,
    2870177450012600261,
)


def xxh64(data: bytes) -> int:
    """XXH64 with seed 0, straight from the specification (lengths multiple of 8)."""

    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & M64

    def rnd(acc, lane):
        return rotl((acc + lane * P2) & M64, 31) * P1 & M64

    words = struct.unpack(f"<{len(data) // 8}Q", data)
    i = 0
    if len(data) >= 32:
        v = [(P1 + P2) & M64, P2, 0, (-P1) & M64]
        while i + 4 <= len(words):
            v = [rnd(v[j], words[i + j]) for j in range(4)]
            i += 4
        h = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M64
        for x in v:
            h = ((h ^ rnd(0, x)) * P1 + P4) & M64
    else:
        h = P5
    h = (h + len(data)) & M64
    for w in words[i:]:
        h = (rotl(h ^ rnd(0, w), 27) * P1 + P4) & M64
    h = (h ^ (h >> 33)) * P2 & M64
    h = (h ^ (h >> 29)) * P3 & M64
    return h ^ (h >> 32)


def model_pages(mem, page_size):
    """Every backed page's bytes, unbacked bytes as zeros: {addr: bytes}."""
    out = {}
    for s, e in backed_runs(mem):
        for page in range(s - s % page_size, e, page_size):
            buf = bytearray(out.get(page, bytes(page_size)))
            lo, hi = max(s, page), min(e, page + page_size)
            buf[lo - page : hi - page] = mem.read_bytes(lo, hi - lo)
            out[page] = bytes(buf)
    return dict(sorted(out.items()))


def entropy(data: bytes) -> float:
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


def ranges(pages_, page_size):
    """Coalesce sorted page addresses into [(start, length)]."""
    out = []
    for p in pages_:
        if out and out[-1][0] + out[-1][1] == p:
            out[-1][1] += page_size
        else:
            out.append([p, page_size])
    return out


layouts = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 8, 13, PAGE - 1, PAGE, 3 * PAGE]),  # gap before the region
        st.integers(1, 3 * PAGE + 17),  # size
    ),
    min_size=1,
    max_size=4,
)
page_sizes = st.sampled_from([8, 32, 64, PAGE, 4 * PAGE])
chunks = st.sampled_from([pg.CHUNK, 64, PAGE, 3 * PAGE])


def build(layout, seed, base=0x40000):
    ranges_, cur = [], base
    for gap, size in layout:
        cur += gap
        ranges_.append((cur, size))
        cur += size
    return sample_memory(ranges_, seed=seed, zero_pages=0.4)[0]


@settings(max_examples=60, deadline=None)
@given(layout=layouts, page_size=page_sizes, chunk=chunks, seed=st.integers(0, 9))
def test_summaries_match_plain_python(layout, page_size, chunk, seed):
    mem = build(layout, seed)
    with mem, mock.patch.object(pg, "CHUNK", chunk):
        model = model_pages(mem, page_size)
        want = np.array(list(model), dtype=np.uint64)
        addrs, is_zero = pg.page_map(mem, page_size)
        assert addrs.dtype == np.uint64 and np.array_equal(addrs, want)
        assert is_zero.tolist() == [not any(d) for d in model.values()]
        assert np.array_equal(pg.zero_pages(mem, page_size), want[is_zero])
        addrs, hashes = pg.page_hashes(mem, page_size)
        assert np.array_equal(addrs, want) and hashes.dtype == np.uint64
        assert hashes.tolist() == [xxh64(d) for d in model.values()]
        addrs, ent = pg.page_entropy(mem, page_size)
        assert np.array_equal(addrs, want)
        np.testing.assert_allclose(ent, [entropy(d) for d in model.values()], atol=1e-9)
        check_duplicates(mem, page_size, model)


def check_duplicates(mem, page_size, model):
    groups = {}
    for a, d in model.items():
        groups.setdefault(d, []).append(a)
    want = sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])
    addrs, labels = pg.duplicate_pages(mem, page_size)
    assert addrs.dtype == np.uint64 and labels.dtype == np.int64
    assert labels.tolist() == [i for i, g in enumerate(want) for _ in g]
    assert addrs.tolist() == [a for g in want for a in g]


def test_duplicates_survive_hash_collisions(monkeypatch):
    """Every page hashing alike must still be split by the bytes."""
    mem = GuestMemoryMmap.from_ranges([(0, 6 * PAGE), (6 * PAGE + 10, 100)])
    with mem:
        for a in (PAGE, 3 * PAGE):
            mem.write(b"twin", a)
        mem.write(b"solo", 2 * PAGE)
        mem.write(b"tail", 6 * PAGE + 10)  # a partly backed page, unique
        real = pg.page_hashes

        def colliding(m, page_size=4096):
            addrs, hashes = real(m, page_size)
            return addrs, np.zeros_like(hashes)

        monkeypatch.setattr(pg, "page_hashes", colliding)
        addrs, groups = pg.duplicate_pages(mem)
        assert [hex(a) for a in addrs.tolist()] == ["0x0", "0x4000", "0x5000", "0x1000", "0x3000"]
        assert groups.tolist() == [0, 0, 0, 1, 1]
        monkeypatch.setattr(pg, "_VERIFY_BYTES", 2 * PAGE)  # bucket heads outside the batch
        assert pg.duplicate_pages(mem)[0].tolist() == addrs.tolist()


def test_duplicates_of_partly_backed_pages():
    """A partly backed page equals a whole page holding the same bytes and zeros."""
    mem = GuestMemoryMmap.from_ranges([(0x10, 0x100), (0x200, PAGE - 0x200), (2 * PAGE, PAGE)])
    with mem:
        for a in (0x20, 0x220, 2 * PAGE + 0x20, 2 * PAGE + 0x220):
            mem.write(b"abc", a)
        addrs, groups = pg.duplicate_pages(mem)
        assert addrs.tolist() == [0, 2 * PAGE] and groups.tolist() == [0, 0]


def test_duplicates_read_a_dumps_excluded_bytes_as_zeros():
    """A page that an excluded range cuts into equals a zero page, whatever its stale bytes."""
    regions = list(GuestMemoryMmap.from_ranges([(0, 6 * PAGE)]).iter())
    regions[0].write_slice(b"\xaa" * PAGE, PAGE)  # excluded below: reads as zeros
    regions[0].write_slice(b"\xbb" * 8, 4 * PAGE + 8)  # not excluded: a page of its own
    meta = DumpMetadata("t", "", excluded=((PAGE, PAGE), (4 * PAGE, 8)))
    with DumpMemory(regions, meta) as dump:
        addrs, groups = pg.duplicate_pages(dump, 2 * PAGE)
        assert addrs.tolist() == [0, 2 * PAGE] and groups.tolist() == [0, 0]
        assert pg.page_map(dump, 2 * PAGE)[1].tolist() == [True, True, False]


@settings(max_examples=50, deadline=None)
@given(
    layout_a=layouts,
    layout_b=layouts,
    page_size=page_sizes,
    chunk=chunks,
    shift=st.sampled_from([0, 5, PAGE]),
)
def test_diff_matches_plain_python(layout_a, layout_b, page_size, chunk, shift):
    a, b = build(layout_a, 1), build(layout_b, 1, 0x40000 + shift)
    with a, b, mock.patch.object(pg, "CHUNK", chunk):
        ma, mb = model_pages(a, page_size), model_pages(b, page_size)
        got = pg.diff(a, b, page_size)
        changed = [p for p in ma if p in mb and ma[p] != mb[p]]
        assert got.changed.tolist() == ranges(changed, page_size)
        assert got.only_a.tolist() == ranges([p for p in ma if p not in mb], page_size)
        assert got.only_b.tolist() == ranges([p for p in mb if p not in ma], page_size)
        assert all(r.dtype == np.uint64 and r.shape[1:] == (2,) for r in got)
        assert [r.shape[0] for r in pg.diff(a, a, page_size)] == [0, 0, 0]


def test_diff_of_snapshots():
    a, _ = sample_memory([(0, 8 * PAGE), (8 * PAGE, 8 * PAGE), (0x100000, 2 * PAGE)], seed=3)
    b, _ = sample_memory([(0, 16 * PAGE), (0x200000, PAGE)], seed=3)
    with a, b:
        b.write_slice(a.read_bytes(0, 16 * PAGE), 0)
        b.write(b"!", 8 * PAGE - 1)  # the last byte of a's first region
        b.write(b"!", 8 * PAGE)  # the first byte of the second: one changed range
        b.write(b"!", 15 * PAGE + 4095)
        got = pg.diff(a, b)
        assert got.changed.tolist() == [[7 * PAGE, 2 * PAGE], [15 * PAGE, PAGE]]
        assert got.only_a.tolist() == [[0x100000, 2 * PAGE]]
        assert got.only_b.tolist() == [[0x200000, PAGE]]
        assert pg.diff(b, a).only_a.tolist() == got.only_b.tolist()


def test_kdump_and_excluded_ranges(tmp_path):
    mem, _ = sample_memory([(0, 8 * PAGE), (8 * PAGE, 4 * PAGE), (0x100000, 2 * PAGE)], seed=5)
    with mem:
        write_kdump(mem, tmp_path / "k")
        with open_kdump(tmp_path / "k") as dump:  # no host memory: pages are read
            for f in (pg.page_map, pg.page_hashes, pg.page_entropy, pg.duplicate_pages):
                for x, y in zip(f(dump), f(mem), strict=True):
                    assert np.array_equal(x, y)
            assert [r.shape[0] for r in pg.diff(dump, mem)] == [0, 0, 0]
    regions = list(GuestMemoryMmap.from_ranges([(0, 4 * PAGE), (4 * PAGE + 100, 100)]).iter())
    excluded = ((PAGE, PAGE), (4 * PAGE + 150, 10))
    with DumpMemory(regions, DumpMetadata("test", "", excluded=excluded)) as dump:
        dump.write(b"\x01" * 100, 4 * PAGE + 100)  # the excluded bytes in it read as zero
        addrs, is_zero = pg.page_map(dump)
        assert addrs.tolist() == [0, 2 * PAGE, 3 * PAGE, 4 * PAGE]
        assert is_zero.tolist() == [True, True, True, False]
        page = bytes(100) + b"\x01" * 50 + bytes(10) + b"\x01" * 40 + bytes(PAGE - 200)
        assert pg.page_hashes(dump)[1][-1] == xxh64(page)


def test_the_top_of_the_address_space():
    top = 2**64 - 3 * PAGE  # the last page ends at 2**64: its end wraps to 0 in uint64
    a = GuestMemoryMmap.from_ranges([(top + 5, 3 * PAGE - 6)])
    b = GuestMemoryMmap.from_ranges([(top + PAGE, 2 * PAGE - 1)])
    with a, b:
        a.write(b"x", 2**64 - 2)
        assert pg.page_map(a)[0].tolist() == [top, top + PAGE, top + 2 * PAGE]
        assert pg.zero_pages(a).tolist() == [top, top + PAGE]
        got = pg.diff(a, b)
        assert got.changed.tolist() == [[top + 2 * PAGE, PAGE]]
        assert got.only_a.tolist() == [[top, PAGE]] and got.only_b.size == 0
        assert pg.diff(b, a).only_b.tolist() == [[top, PAGE]]
        assert pg.diff(a, GuestMemoryMmap()).only_a.tolist() == [[top, 3 * PAGE]]
        b.write(b"x", 2**64 - 2)
        assert pg.diff(b, a).changed.size == 0
        a.write(b"y", top + PAGE)
        assert pg.diff(a, b).changed.tolist() == [[top + PAGE, PAGE]]
        assert pg.duplicate_pages(a)[0].size == 0


def test_read_only_file_memory(tmp_path):
    data = bytes(PAGE) + bytes(range(256)) * 16 + b"\x07" * PAGE
    mem = readonly_file_memory(tmp_path / "ro.bin", data, 0x10000)
    with mem:
        assert pg.zero_pages(mem).tolist() == [0x10000]
        assert pg.page_entropy(mem)[1].tolist() == [0.0, 8.0, 0.0]
        assert pg.page_hashes(mem)[1].tolist() == [xxh64(data[i : i + PAGE]) for i in
                                                  range(0, 3 * PAGE, PAGE)]  # fmt: skip
        assert [r.size for r in pg.diff(mem, mem)] == [0, 0, 0]


def test_unaligned_region_starts_copy_words():
    """A page boundary at an odd host offset still gives the right answers."""
    mem = GuestMemoryMmap.from_ranges([(3, 3 * PAGE)])
    with mem:
        mem.write(b"x", 2 * PAGE + 7)
        assert pg.zero_pages(mem).tolist() == [0, PAGE, 3 * PAGE]
        assert pg.page_hashes(mem)[1][1] == xxh64(bytes(PAGE))


def test_xxh64_matches_the_reference():
    xxhash = pytest.importorskip("xxhash")
    mem, _ = sample_memory([(0, 4 * PAGE)], seed=7)
    with mem:
        for size in (8, 16, 32, PAGE):
            pages = model_pages(mem, size)
            want = [xxhash.xxh64_intdigest(d) for d in pages.values()]
            assert pg.page_hashes(mem, size)[1].tolist() == want


def test_empty_memory():
    mem = GuestMemoryMmap()
    for f, dtype in ((pg.page_map, bool), (pg.page_hashes, np.uint64), (pg.page_entropy, float)):
        addrs, values = f(mem)
        assert addrs.shape == values.shape == (0,) and addrs.dtype == np.uint64
        assert values.dtype == dtype
    assert pg.zero_pages(mem).shape == (0,)
    addrs, groups = pg.duplicate_pages(mem)
    assert addrs.dtype == np.uint64 and groups.dtype == np.int64 and addrs.size == 0
    assert all(r.shape == (0, 2) and r.dtype == np.uint64 for r in pg.diff(mem, mem))


def test_entropy_of_big_pages_passes_the_table():
    mem = GuestMemoryMmap.from_ranges([(0, 1 << 17)])
    with mem:  # counts above the 2**16-entry table are computed
        mem.write_slice(np.arange(1 << 17, dtype=np.uint8), 0)
        assert pg.page_entropy(mem, 1 << 17)[1].tolist() == [8.0]
        assert pg.page_entropy(mem, 8)[1][0] == 3.0


@pytest.mark.parametrize("f", [pg.page_map, pg.zero_pages, pg.page_hashes, pg.page_entropy,
                               pg.duplicate_pages])  # fmt: skip
def test_bad_arguments(f):
    mem = GuestMemoryMmap.from_ranges([(0, PAGE)])
    with mem:
        with pytest.raises(TypeError, match="mem must be a GuestMemoryMmap"):
            f(bytearray(PAGE))
        for bad in (4.0, True, "4096"):
            with pytest.raises(TypeError, match="page_size must be an integer"):
                f(mem, bad)
        for bad in (0, 4, 12, 4097, 1 << 31, -4096):
            with pytest.raises(ValueError, match="page_size must be a power of two"):
                f(mem, bad)
        assert f(mem, np.int64(PAGE)) is not None


def test_diff_bad_arguments():
    mem = GuestMemoryMmap.from_ranges([(0, PAGE)])
    with mem:
        with pytest.raises(TypeError, match="mem_a must be"):
            pg.diff(None, mem)
        with pytest.raises(TypeError, match="mem_b must be"):
            pg.diff(mem, b"")
        with pytest.raises(ValueError, match="page_size"):
            pg.diff(mem, mem, 3)
