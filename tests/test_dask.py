"""npguest.dask: scans of many dumps and dask-array views, against single-process results.

The cluster tests run on one module-scoped ``LocalCluster`` of two worker processes; the
property tests use dask's synchronous scheduler (``client="sync"``), which runs the same
task functions in this process.
"""

from __future__ import annotations

import importlib.util
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dump_support import PAGE, sample_memory
from hypothesis import given, settings
from hypothesis import strategies as st

import npguest
from npguest.dumps import DumpMemory
from npguest.errors import MmapRegionError
from npguest.walk import backed_runs

needs_dask = pytest.mark.skipif(
    importlib.util.find_spec("dask") is None or importlib.util.find_spec("distributed") is None,
    reason="needs the dask extra: pip install 'npguest[dask]'",
)
NEEDLE = b"npguest-needle"  # 14 bytes
CHUNK = 5 * PAGE + 3  # odd, so task boundaries fall everywhere
FORMATS = ["raw", "elf", "lime", "kdump"]
# two adjacent regions, a hole, a region, a hole, a region
LAYOUT = [(0x0, 16 * PAGE), (16 * PAGE, 8 * PAGE), (0x40000, 12 * PAGE), (0x80000, 4 * PAGE)]
END1, END2 = 24 * PAGE, 0x80000 + 4 * PAGE
N = len(NEEDLE)
PLACED = [
    0,  # the very first byte
    16 * PAGE - 5,  # straddles the two adjacent regions
    CHUNK - 3,  # straddles the first task boundary
    3 * CHUNK - N + 1,  # ends at a task's first byte
    END1 - N,  # ends at the last byte of the first run
    0x40000 + CHUNK - 1,  # one byte before a task boundary of the second run
    END2 - N,  # ends at the very last byte
]


def model_find(mem, pattern):
    """Every start of ``pattern`` in each backed run (overlaps included), with bytes.find."""
    found = []
    for s, e in backed_runs(mem):
        data = mem.read_bytes(s, e - s)
        i = data.find(pattern)
        while i >= 0:
            found.append(s + i)
            i = data.find(pattern, i + 1)
    return np.array(found, dtype=np.uint64)


def write_sample(path, layout, placed, fmt, seed=0, **options):
    """Write a memory of random bytes (some zero pages) with NEEDLE at ``placed``."""
    mem, _ = sample_memory(layout, seed=seed)
    with mem:
        for addr in placed:
            mem.write_slice(NEEDLE, addr)
        # half a needle at the end of the third region, the rest after the hole: no match
        if len(layout) > 3:
            mem.write_slice(NEEDLE[:6], layout[2][0] + layout[2][1] - 6)
            mem.write_slice(NEEDLE[6:], layout[3][0])
        npguest.write_dump(mem, path, fmt, **options)


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """One dump per format, each of a different memory; and the expected matches."""
    root = tmp_path_factory.mktemp("dask")
    paths = []
    for seed, fmt in enumerate(FORMATS):
        path = root / f"guest.{fmt}"
        write_sample(path, LAYOUT, PLACED[seed:], fmt, seed=seed)
        paths.append(path)
    return paths


def single_process(path, pattern):
    from npguest.scan import find

    with npguest.open_dump(path) as mem:
        want = find(mem, pattern)
        np.testing.assert_array_equal(want, model_find(mem, pattern))
    return want


# -- scan_many ------------------------------------------------------------------------------
@needs_dask
@pytest.mark.parametrize("chunk", [CHUNK, 1 << 26])
def test_scan_many_equals_find_on_a_cluster(client, dumps, chunk):
    from npguest.dask import scan_many

    got = scan_many(dumps, NEEDLE, client=client, chunk=chunk)
    assert list(got) == dumps  # keyed by the paths as given, in order
    for seed, path in enumerate(dumps):
        want = single_process(path, NEEDLE)
        assert got[path].dtype == np.uint64
        np.testing.assert_array_equal(got[path], want)
        assert set(PLACED[seed:]) <= set(want.tolist())


@needs_dask
def test_scan_many_takes_str_paths_and_open_options(client, tmp_path):
    from npguest.dask import scan_many

    path = tmp_path / "based.raw"
    write_sample(path, [(0x100000, 4 * PAGE)], [0x100000 + PAGE - 2], "raw", base=0x100000)
    got = scan_many([str(path)], NEEDLE, client=client, format="raw", base=0x100000)
    np.testing.assert_array_equal(got[str(path)], [0x100000 + PAGE - 2])


@needs_dask
@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
    gaps=st.lists(st.sampled_from([0, 0, PAGE]), min_size=3, max_size=3),
    offsets=st.lists(st.integers(0, 12 * PAGE), max_size=5),
    chunk=st.sampled_from([1 * PAGE - 1, 3 * PAGE + 7, 1 << 20]),
    pattern=st.sampled_from([NEEDLE, b"\xaa\xaa\xaa", b"n"]),
    fmt=st.sampled_from(["elf", "lime"]),
)
def test_scan_many_matches_the_model(tmp_path_factory, sizes, gaps, offsets, chunk, pattern, fmt):
    from npguest.dask import scan_many

    layout, cur = [], 0x10000
    for size, gap in zip(sizes, gaps, strict=False):
        layout.append((cur, size * PAGE))
        cur += size * PAGE + gap
    total = sum(s for _, s in layout)
    path = tmp_path_factory.mktemp("prop") / f"g.{fmt}"
    mem, _ = sample_memory(layout, seed=len(offsets))
    with mem:
        for off in offsets:  # a run of 0xaa around each needle: overlapping matches
            addr = layout[0][0] + off % total
            for s, e in backed_runs(mem):
                if s <= addr < e:
                    mem.write_slice(b"\xaa" * min(N + 4, e - addr), addr)
                    mem.write_slice(NEEDLE[: e - addr], addr)
        npguest.write_dump(mem, path, fmt)
    got = scan_many([path], pattern, client="sync", chunk=chunk)[path]
    with npguest.open_dump(path) as dump:
        np.testing.assert_array_equal(got, model_find(dump, pattern))


@needs_dask
def test_a_task_whose_mapping_is_still_viewed_completes(monkeypatch, dumps):
    import npguest.scan
    from npguest.dask import scan_many

    want = {path: single_process(path, NEEDLE) for path in dumps}
    real, held = npguest.scan.find, []

    def find(mem, pattern):  # keeps a view, as a sampling profiler keeps a frame's locals
        held.append(next(mem.iter()).as_array())
        return real(mem, pattern)

    monkeypatch.setattr(npguest.scan, "find", find)
    got = scan_many(dumps, NEEDLE, client="sync", chunk=CHUNK)
    assert held
    for path in dumps:
        np.testing.assert_array_equal(got[path], want[path])
    held.clear()


# -- to_dask_array ------------------------------------------------------------------------
@needs_dask
@pytest.mark.parametrize("fmt", FORMATS)
def test_to_dask_array_reads_every_run(client, dumps, fmt):
    from npguest.dask import to_dask_array

    path = dumps[FORMATS.index(fmt)]
    with npguest.open_dump(path) as mem:
        arrays = to_dask_array(path, chunk=CHUNK)
        runs = backed_runs(mem)
        assert list(arrays) == [s for s, _ in runs]
        for s, e in runs:
            arr = arrays[s]
            assert arr.dtype == np.uint8 and arr.shape == (e - s,)
            assert max(arr.chunks[0]) == min(CHUNK, e - s)
            want = np.frombuffer(mem.read_bytes(s, e - s), dtype=np.uint8)
            np.testing.assert_array_equal(client.compute(arr).result(), want)
            # a slice across a chunk boundary, and a reduction, computed on the workers
            part = arr[CHUNK - 10 : CHUNK + 10]
            np.testing.assert_array_equal(
                client.compute(part).result(), want[CHUNK - 10 : CHUNK + 10]
            )
            assert client.compute((arr == 0).sum()).result() == (want == 0).sum()
        # a memory opened from the file gives the same view
        again = to_dask_array(mem, chunk=CHUNK)
        assert [a.name for a in again.values()] == [a.name for a in arrays.values()]


@needs_dask
def test_to_dask_array_graph_holds_no_memory(dumps):
    from npguest.dask import to_dask_array

    for arr in to_dask_array(dumps[1], chunk=PAGE).values():
        graph = dict(arr.__dask_graph__())
        assert len(graph) == len(arr.chunks[0]) + 1  # the reader, then one task per chunk
        assert max(len(pickle.dumps(task)) for task in graph.values()) < 2048
        assert arr[PAGE - 1 : PAGE + 1].compute(scheduler="sync").shape == (2,)
        assert arr[::PAGE].compute(scheduler="sync").shape == (len(arr.chunks[0]),)


@pytest.mark.parametrize(
    "key", [slice(None), slice(7, 7), slice(9, 2), slice(None, None, PAGE), slice(None, None, -3)]
)
def test_the_chunk_reader_slices_like_numpy(dumps, key):
    from npguest.dask import _Dump, _RunReader

    with npguest.open_dump(dumps[2]) as mem:
        want = np.frombuffer(mem.read_bytes(0, END1), dtype=np.uint8)
    reader = _RunReader(_Dump(str(dumps[2]), None, ()), 0, END1)
    assert reader.shape == want.shape and reader.dtype == want.dtype
    np.testing.assert_array_equal(reader[key], want[key])
    np.testing.assert_array_equal(reader[(key,)], want[key])


@needs_dask
def test_to_dask_array_refuses_what_it_cannot_reopen(tmp_path):
    from npguest.dask import to_dask_array

    anonymous = npguest.GuestMemoryMmap.from_ranges([(0, PAGE)])
    with anonymous, pytest.raises(TypeError, match="dump path or a memory"):
        to_dask_array(anonymous)
    pathless = DumpMemory([npguest.GuestRegionMmap.from_range(0, PAGE)])
    with pathless, pytest.raises(TypeError, match="no path"):
        to_dask_array(pathless)
    path = tmp_path / "based.raw"
    write_sample(path, [(0, 2 * PAGE)], [], "raw")
    with npguest.open_dump(path, base=0x100000) as based:
        with pytest.raises(ValueError, match="another layout"):
            to_dask_array(based)
        arrays = to_dask_array(path, base=0x100000)  # the path and its options work
        assert list(arrays) == [0x100000]
    with pytest.raises(TypeError, match="chunk must be an int"):
        to_dask_array(path, chunk=1.5)


# -- errors and the optional import ---------------------------------------------------------
@needs_dask
def test_bad_arguments_raise_before_any_task(dumps, tmp_path, monkeypatch):
    import npguest.dask
    from npguest.dask import scan_many

    def no_task(*args):
        raise AssertionError(f"a task ran: {args}")

    monkeypatch.setattr(npguest.dask, "_scan_piece", no_task)
    with pytest.raises(ValueError, match="pattern is empty"):
        scan_many(dumps, b"")
    with pytest.raises(ValueError, match="pattern is empty"):  # len() 2, but no byte
        scan_many(dumps, memoryview(np.zeros((2, 0), dtype=np.uint8)))
    with pytest.raises(TypeError, match="not one str: put it in a list"):
        scan_many(str(dumps[0]), NEEDLE)
    with pytest.raises(TypeError, match="not one PosixPath"):
        scan_many(Path(dumps[0]), NEEDLE)
    with pytest.raises(TypeError, match="pattern must be bytes"):
        scan_many(dumps, "needle")
    with pytest.raises(ValueError, match="chunk must be positive"):
        scan_many(dumps, NEEDLE, chunk=0)
    with pytest.raises(TypeError, match="chunk must be an int"):
        scan_many(dumps, NEEDLE, chunk=True)
    with pytest.raises(TypeError, match="paths must hold"):
        scan_many([1], NEEDLE)
    with pytest.raises(ValueError, match="distinct"):
        scan_many([dumps[0], str(dumps[0])], NEEDLE)
    with pytest.raises(MmapRegionError):
        scan_many([tmp_path / "missing"], NEEDLE)
    assert scan_many([], NEEDLE) == {}


def test_missing_dask_names_the_extra(monkeypatch, dumps):
    from npguest.dask import scan_many, to_dask_array

    monkeypatch.setitem(sys.modules, "dask", None)
    monkeypatch.setitem(sys.modules, "dask.array", None)
    with pytest.raises(ImportError, match=r"npguest\[dask\]"):
        scan_many(dumps, NEEDLE)
    with pytest.raises(ImportError, match=r"npguest\[dask\]"):
        to_dask_array(dumps[0])


def test_import_npguest_does_not_import_dask():
    code = "import sys, npguest, npguest.dask; print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"
