"""transfer: bulk copies and snapshot files, checked against a bytearray model of memory."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npguest import AtomicBitmap, FileOffset, GuestMemoryMmap, GuestRegionMmap, MmapRegion, transfer
from npguest.dumps.firecracker import open_firecracker
from npguest.errors import (
    BitmapError,
    DumpFormatError,
    GuestAddressOverflowError,
    InvalidGuestAddressError,
    ReadOnlyMemoryError,
    StreamError,
)

PAGE = 4096
SPACE = 64 * PAGE  # every layout lives in [0, SPACE)
# region tables over the same space: adjacent regions, holes, unaligned edges
LAYOUTS = [
    [(0, 16 * PAGE), (16 * PAGE, 16 * PAGE), (40 * PAGE, 24 * PAGE)],
    [(0, 64 * PAGE)],
    [(4 * PAGE, 8 * PAGE), (12 * PAGE, 20 * PAGE), (48 * PAGE, 8 * PAGE)],
    [(0x100, 20 * PAGE), (30 * PAGE + 0x80, 10 * PAGE)],
]
fast = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def backed(ranges) -> np.ndarray:
    """A bool mask over [0, SPACE) of the bytes a layout backs."""
    mask = np.zeros(SPACE, dtype=bool)
    for start, size in ranges:
        mask[start : start + size] = True
    return mask


def filled(ranges, seed: int, bitmap=None) -> tuple[GuestMemoryMmap, bytearray]:
    """A memory with random contents, and its model (zeros where nothing backs a byte)."""
    mem = GuestMemoryMmap.from_ranges(ranges, bitmap=bitmap)
    data = np.random.default_rng(seed).integers(0, 256, SPACE, dtype=np.uint8)
    data[~backed(ranges)] = 0
    for start, size in ranges:
        mem.write_slice(data[start : start + size].tobytes(), start)
    return mem, bytearray(data.tobytes())


def contents(mem: GuestMemoryMmap, ranges) -> bytearray:
    out = bytearray(SPACE)
    for start, size in ranges:
        out[start : start + size] = mem.read_bytes(start, size)
    return out


def pages_of(ranges) -> set[int]:
    return {p for a, n in ranges for p in range(a // PAGE, -(-(a + n) // PAGE))}


# -- layout ------------------------------------------------------------------------------
def test_layout_is_what_open_firecracker_reads(tmp_path):
    ranges = LAYOUTS[0]
    mem, model = filled(ranges, 1)
    lay = transfer.layout(mem)
    assert lay.dtype == np.uint64
    assert lay.tolist() == [[0, 65536, 0], [65536, 65536, 65536], [163840, 98304, 131072]]
    path = tmp_path / "mem"
    assert transfer.save(mem, path) == int(lay[:, 1].sum()) == os.path.getsize(path)
    with open_firecracker(path, regions=ranges) as snap:
        assert snap.metadata.extra["regions"] == tuple(map(tuple, lay.tolist()))
        assert contents(snap, ranges) == model


# -- memory -> memory --------------------------------------------------------------------
@fast
@given(src_i=st.sampled_from(range(len(LAYOUTS))), dst_i=st.sampled_from(range(len(LAYOUTS))))
def test_copy_overlap_of_two_layouts(src_i, dst_i):
    src, model = filled(LAYOUTS[src_i], 2)
    dst, before = filled(LAYOUTS[dst_i], 3)
    both = backed(LAYOUTS[src_i]) & backed(LAYOUTS[dst_i])
    assert transfer.copy(src, dst) == int(both.sum())
    want = np.frombuffer(before, dtype=np.uint8).copy()
    want[both] = np.frombuffer(model, dtype=np.uint8)[both]
    assert contents(dst, LAYOUTS[dst_i]) == bytearray(want.tobytes())


def first_fault(both: np.ndarray, a: int, n: int) -> int | None:
    """The first byte of ``[a, a + n)`` that is not backed in both memories, or None."""
    ok = np.zeros(n, dtype=bool)
    inside = both[a : a + n]
    ok[: inside.shape[0]] = inside
    return None if ok.all() else a + int(np.argmin(ok))


def boundary_points():
    edges = sorted({e for lay in LAYOUTS for s, n in lay for e in (s, s + n)} | {0, SPACE})
    return st.sampled_from(sorted({max(e + d, 0) for e in edges for d in (-1, 0, 1)}))


@fast
@given(
    src_i=st.sampled_from(range(len(LAYOUTS))),
    dst_i=st.sampled_from(range(len(LAYOUTS))),
    spans=st.lists(st.tuples(boundary_points(), st.integers(0, 20 * PAGE)), max_size=4),
)
def test_copy_explicit_ranges(src_i, dst_i, spans):
    src, model = filled(LAYOUTS[src_i], 4)
    dst, before = filled(LAYOUTS[dst_i], 5)
    both = backed(LAYOUTS[src_i]) & backed(LAYOUTS[dst_i])
    faults = [first_fault(both, a, n) for a, n in spans if n]
    faults = [f for f in faults if f is not None]
    if faults:
        with pytest.raises(InvalidGuestAddressError) as info:
            transfer.copy(src, dst, spans)
        # names the first byte either memory does not back, of the first such range
        assert info.value.addr == faults[0]
        assert "memory does not back" in info.value.__notes__[0]
        assert contents(dst, LAYOUTS[dst_i]) == before  # nothing was copied
        return
    assert transfer.copy(src, dst, np.array(spans, dtype=np.int64).reshape(-1, 2)) == sum(
        n for _, n in spans
    )
    want = bytearray(before)
    for a, n in spans:
        want[a : a + n] = model[a : a + n]
    assert contents(dst, LAYOUTS[dst_i]) == want


def test_copy_marks_destination_dirty_and_names_the_memory_at_fault():
    src, _ = filled(LAYOUTS[1], 6)
    dst = GuestMemoryMmap.from_ranges(LAYOUTS[0], bitmap=AtomicBitmap)
    transfer.copy(src, dst, [[15 * PAGE + 8, PAGE]])  # straddles two destination regions
    assert dst.dirty_ranges().tolist() == [[15 * PAGE, 2 * PAGE]]
    with pytest.raises(InvalidGuestAddressError) as info:
        transfer.copy(dst, src, [[32 * PAGE, 1]])
    assert info.value.addr == 32 * PAGE and "source" in info.value.__notes__[0]


def test_copy_threads_cut_and_grouped_tasks(monkeypatch):
    # a small chunk size cuts long pieces over several tasks and groups short ones
    monkeypatch.setattr(transfer, "CHUNK", 3 * PAGE)
    src, model = filled(LAYOUTS[1], 7)
    dst, before = filled(LAYOUTS[1], 8)
    spans = [
        [a, n]
        for a, n in zip(
            range(0, SPACE, 5 * PAGE), [100, PAGE, 3 * PAGE, 7 * PAGE] * 4, strict=False
        )
    ]
    seen = []
    total = sum(n for _, n in spans)
    assert transfer.copy(src, dst, spans, threads=3, progress=seen.append) == total
    want = bytearray(before)
    for a, n in spans:
        want[a : a + n] = model[a : a + n]
    assert contents(dst, LAYOUTS[1]) == want
    assert seen[0].done == 0 and seen[-1].done == seen[-1].total == total and len(seen) > 3


def test_copy_bad_arguments(tmp_path):
    src, _ = filled(LAYOUTS[1], 9)
    dst, before = filled(LAYOUTS[1], 10)
    with pytest.raises(GuestAddressOverflowError, match="2\\*\\*64"):
        transfer.copy(src, dst, np.array([[2**64 - 10, 20]], dtype=np.uint64))
    with pytest.raises(GuestAddressOverflowError, match="address -0x4 "):
        transfer.copy(src, dst, [[-4, 8]])
    with pytest.raises(TypeError, match=r"\(n, 2\)"):
        transfer.copy(src, dst, [[0.5, 8]])
    with pytest.raises(ValueError, match="threads"):
        transfer.copy(src, dst, threads=0)
    with pytest.raises(TypeError, match="GuestMemoryMmap"):
        transfer.copy(src, bytearray(8))
    path = tmp_path / "ro"
    path.write_bytes(bytes(SPACE))
    with open(path, "rb") as f:
        region = MmapRegion.from_file(FileOffset(f), SPACE, readonly=True, shared=False)
        ro = GuestMemoryMmap.from_regions([GuestRegionMmap(region, 0)])
        with pytest.raises(ReadOnlyMemoryError):
            transfer.copy(src, ro, [[PAGE, 8]])
        with pytest.raises(ReadOnlyMemoryError):
            transfer.load(ro, path)
        ro.close()
    assert contents(dst, LAYOUTS[1]) == before


# -- incremental memory -> memory --------------------------------------------------------
DIRTY_PAGES = sorted(pages_of(LAYOUTS[0]) - {39})


def dirty_some(mem, pages, seed):
    rng = np.random.default_rng(seed)
    for p in pages:
        mem.write_slice(rng.integers(0, 256, 3, dtype=np.uint8).tobytes(), p * PAGE + 5)


@fast
@given(dirty=st.sets(st.sampled_from(DIRTY_PAGES)), seed=st.integers(0, 9))
def test_copy_dirty_random_sets(dirty, seed):
    src, _ = filled(LAYOUTS[0], seed, bitmap=AtomicBitmap)
    src.get_and_reset_dirty()
    dst, before = filled(LAYOUTS[1], 99)
    dirty_some(src, dirty, seed)
    ranges = transfer.copy_dirty(src, dst)
    assert pages_of(ranges.tolist()) == dirty and src.dirty_ranges().shape == (0, 2)
    want, now = bytearray(before), contents(src, LAYOUTS[0])
    for p in dirty:
        want[p * PAGE : (p + 1) * PAGE] = now[p * PAGE : (p + 1) * PAGE]
    assert contents(dst, LAYOUTS[1]) == want


def test_copy_dirty_hole_in_destination_loses_nothing():
    src, _ = filled(LAYOUTS[1], 11, bitmap=AtomicBitmap)
    src.get_and_reset_dirty()
    dst, _ = filled(LAYOUTS[0], 12)  # pages 32..39 are a hole
    dirty_some(src, [3, 20, 35, 50], 1)
    with pytest.raises(StreamError) as info:
        transfer.copy_dirty(src, dst)
    exc = info.value
    assert (exc.addr, exc.length, exc.completed) == (35 * PAGE, PAGE, 2 * PAGE)
    assert isinstance(exc.__cause__, InvalidGuestAddressError) and "0x23000+4096" in str(exc)
    assert pages_of(src.dirty_ranges().tolist()) == {35, 50}
    assert dst.read_bytes(20 * PAGE + 5, 3) == src.read_bytes(20 * PAGE + 5, 3)
    # a retry to a destination backing everything sends exactly what is missing
    full = GuestMemoryMmap.from_ranges(LAYOUTS[1])
    assert pages_of(transfer.copy_dirty(src, full).tolist()) == {35, 50}
    assert pickle.loads(pickle.dumps(exc)).args == exc.args


# -- files -------------------------------------------------------------------------------
@pytest.mark.parametrize("layout_i", range(len(LAYOUTS)))
@pytest.mark.parametrize("how", ["path", "fd", "file"])
def test_save_load_round_trip(tmp_path, layout_i, how):
    ranges = LAYOUTS[layout_i]
    mem, model = filled(ranges, layout_i)
    path = tmp_path / "snap"
    path.write_bytes(b"\xff" * (2 * SPACE))  # a longer, stale file is overwritten in place
    out = GuestMemoryMmap.from_ranges(ranges, bitmap=AtomicBitmap)
    size = int(transfer.layout(mem)[:, 1].sum())
    if how == "path":
        assert transfer.save(mem, path) == size
        assert transfer.load(out, path) == size
    elif how == "fd":
        fd = os.open(path, os.O_RDWR)
        try:
            assert transfer.save(mem, fd) == transfer.load(out, fd) == size
        finally:
            os.close(fd)
    else:
        with open(path, "r+b") as f:
            assert transfer.save(mem, f) == transfer.load(out, f) == size
    assert os.path.getsize(path) == size
    assert contents(out, ranges) == model
    assert sum(n for _, n in out.dirty_ranges().tolist()) >= size  # load marks what it wrote


def test_sparse_save_leaves_zero_pages_as_holes(tmp_path):
    mem = GuestMemoryMmap.from_ranges([(0, 256 * PAGE), (0x100000 + 0x80, 4 * PAGE)])
    mem.write_slice(b"a", 7 * PAGE + 9)
    mem.write_slice(b"b", 0x100000 + 0x80 + 3 * PAGE)  # last page of an unaligned region
    path = tmp_path / "sparse"
    seen = []
    written = transfer.save(mem, path, sparse=True, progress=seen.append)
    assert written == 2 * PAGE and seen[-1].done == written
    assert os.path.getsize(path) == 260 * PAGE
    assert os.stat(path).st_blocks * 512 < 16 * PAGE  # holes, not zeros
    out = GuestMemoryMmap.from_ranges([(0, 256 * PAGE), (0x100000 + 0x80, 4 * PAGE)])
    transfer.load(out, path)
    assert out.read_bytes(7 * PAGE + 9, 1) == b"a"
    assert out.read_bytes(0x100000 + 0x80 + 3 * PAGE, 1) == b"b"


def test_load_refuses_a_file_of_another_size(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(bytes(SPACE - 1))
    with pytest.raises(DumpFormatError, match="needs 262144") as info:
        transfer.load(GuestMemoryMmap.from_ranges(LAYOUTS[1]), path)
    assert info.value.offset == SPACE - 1 and info.value.path == str(path)
    with pytest.raises(StreamError, match="cannot open"):
        transfer.load(GuestMemoryMmap.from_ranges(LAYOUTS[1]), tmp_path / "missing")
    import io

    with pytest.raises(TypeError, match="file descriptor"):
        transfer.save(GuestMemoryMmap.from_ranges(LAYOUTS[1]), io.BytesIO())


def short_pwritev(limit, fail_after=None):
    """A stand-in for os.pwritev writing at most ``limit`` bytes a call, ENOSPC after a total."""
    real = os.pwritev
    state = {"total": 0}

    def pwritev(fd, buffers, offset):
        (view,) = buffers
        n = min(len(view), limit)
        if fail_after is not None:
            n = min(n, fail_after - state["total"])
            if n <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
        state["total"] += n
        return real(fd, [view[:n]], offset)

    return pwritev


def test_short_writes_are_completed(tmp_path, monkeypatch):
    mem, model = filled(LAYOUTS[2], 13)
    monkeypatch.setattr(os, "pwritev", short_pwritev(1000))
    transfer.save(mem, tmp_path / "snap")
    monkeypatch.undo()
    out = GuestMemoryMmap.from_ranges(LAYOUTS[2])
    transfer.load(out, tmp_path / "snap")
    assert contents(out, LAYOUTS[2]) == model


def test_a_sink_that_writes_nothing_is_an_error(tmp_path, monkeypatch):
    mem, _ = filled(LAYOUTS[1], 14)
    monkeypatch.setattr(os, "pwritev", lambda fd, bufs, off: 0)
    with pytest.raises(StreamError, match="whole buffer") as info:
        transfer.save(mem, tmp_path / "snap")
    assert (info.value.addr, info.value.length, info.value.completed) == (0, SPACE, 0)


@fast
@given(
    rounds=st.lists(st.sets(st.sampled_from(DIRTY_PAGES), max_size=12), min_size=1, max_size=3),
    fail_after=st.one_of(st.none(), st.integers(0, 20 * PAGE)),
    limit=st.sampled_from([PAGE // 3, PAGE, 1 << 20]),
)
def test_diffs_merged_onto_a_base_reproduce_memory(tmp_path_factory, rounds, fail_after, limit):
    d = tmp_path_factory.mktemp("diffs")
    mem, _ = filled(LAYOUTS[0], 15, bitmap=AtomicBitmap)
    mem.get_and_reset_dirty()
    transfer.save(mem, d / "base")
    diffs = []
    for i, pages in enumerate(rounds):
        dirty_some(mem, pages, i)
        path = d / f"diff{i}"
        diffs.append(path)
        taken = mem.dirty_ranges()
        if i == 0 and fail_after is not None and int(taken[:, 1].sum()) > fail_after:
            real = os.pwritev
            os.pwritev = short_pwritev(limit, fail_after)  # the first diff hits a full disk
            try:
                with pytest.raises(StreamError) as info:
                    transfer.save_diff(mem, path)
            finally:
                os.pwritev = real
            exc = info.value
            assert exc.addr is not None and isinstance(exc.__cause__, OSError)
            assert exc.__cause__.__cause__.errno == errno.ENOSPC  # send's error, then the OS's
            written = np.load(str(path) + transfer.INDEX_SUFFIX)
            assert int(written[:, 1].sum()) == exc.completed == fail_after
            # nothing lost: every taken page was written whole, or is dirty again
            whole = {p for a, n, _ in written.tolist()
                     for p in range(-(-a // PAGE), (a + n) // PAGE)}  # fmt: skip
            assert pages_of(mem.dirty_ranges().tolist()) == pages_of(taken.tolist()) - whole
            path = d / f"diff{i}-retry"
            diffs.append(path)
        transfer.save_diff(mem, path)
        assert mem.dirty_ranges().shape == (0, 2)
    out = d / "merged"
    transfer.merge(d / "base", diffs, out)
    final = GuestMemoryMmap.from_ranges(LAYOUTS[0])
    transfer.load(final, out)
    assert contents(final, LAYOUTS[0]) == contents(mem, LAYOUTS[0])
    # the same without indexes: Firecracker diffs, read through SEEK_DATA / SEEK_HOLE
    for path in diffs:
        os.unlink(str(path) + transfer.INDEX_SUFFIX)
    transfer.merge(d / "base", diffs, out)
    transfer.load(final, out)
    assert contents(final, LAYOUTS[0]) == contents(mem, LAYOUTS[0])


def test_save_diff_index_options_and_progress(tmp_path):
    mem = GuestMemoryMmap.from_ranges(LAYOUTS[3], bitmap=AtomicBitmap)
    mem.write_slice(b"x" * 10, 0x100 + PAGE - 5)  # straddles two pages of an unaligned region
    seen = []
    with open(tmp_path / "diff", "w+b") as f:
        ranges = transfer.save_diff(mem, f, index=tmp_path / "idx", progress=seen.append)
    assert ranges.tolist() == [[0x100, 2 * PAGE]]
    assert np.load(tmp_path / "idx").tolist() == [[0x100, 2 * PAGE, 0]]
    assert (seen[0].dirty_pages, seen[-1].done) == (3, 2 * PAGE)
    mem.write_slice(b"y", 30 * PAGE + 0x80)
    fd = os.open(tmp_path / "diff2", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(TypeError, match="index="):
            transfer.save_diff(mem, fd)
        assert mem.dirty_ranges().tolist() == [[30 * PAGE + 0x80, PAGE]]  # nothing taken
        transfer.save_diff(mem, fd, index=False)
    finally:
        os.close(fd)
    assert not os.path.exists(tmp_path / f"diff2{transfer.INDEX_SUFFIX}")
    assert os.path.getsize(tmp_path / "diff2") == 30 * PAGE


def test_save_diff_index_failure_re_marks_everything(tmp_path):
    mem = GuestMemoryMmap.from_ranges(LAYOUTS[1], bitmap=AtomicBitmap)
    dirty_some(mem, [1, 9], 0)
    with pytest.raises(StreamError, match="cannot write the index"):
        transfer.save_diff(mem, tmp_path / "diff", index=tmp_path / "no" / "such" / "dir")
    assert pages_of(mem.dirty_ranges().tolist()) == {1, 9}


def test_merge_errors(tmp_path):
    (tmp_path / "base").write_bytes(bytes(3 * PAGE))
    (tmp_path / "diff").write_bytes(bytes(2 * PAGE))
    with pytest.raises(DumpFormatError, match="not a diff of it"):
        transfer.rebase(tmp_path / "diff", tmp_path / "base")
    (tmp_path / "diff").write_bytes(bytes(3 * PAGE))
    np.save(tmp_path / "diff.index.npy", np.array([[0, PAGE, 2 * PAGE + 1]], dtype="<u8"))
    os.replace(tmp_path / "diff.index.npy", tmp_path / "diff.index")
    with pytest.raises(DumpFormatError, match=r"ranges\[0\]"):
        transfer.merge(tmp_path / "base", [tmp_path / "diff"])
    np.save(tmp_path / "diff.index.npy", np.zeros((2, 2), dtype="<u8"))
    os.replace(tmp_path / "diff.index.npy", tmp_path / "diff.index")
    with pytest.raises(DumpFormatError, match=r"expected \(n, 3\)"):
        transfer.merge(tmp_path / "base", [tmp_path / "diff"])
    (tmp_path / "diff.index").write_bytes(b"junk")
    with pytest.raises(DumpFormatError, match=r"not an \.npy"):
        transfer.merge(tmp_path / "base", [tmp_path / "diff"])
    with pytest.raises(StreamError, match="cannot open the base"):
        transfer.merge(tmp_path / "missing", [], tmp_path / "out")
    assert not (tmp_path / "out").exists()


FULL_DISK = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from npguest import AtomicBitmap, GuestMemoryMmap, transfer
    from npguest.errors import StreamError

    tmpfs, disk = sys.argv[1], sys.argv[2]
    PAGE = 4096
    mem = GuestMemoryMmap.from_ranges([(0, 256 * PAGE), (0x100000, 64 * PAGE)],
                                      bitmap=AtomicBitmap)
    mem.get_and_reset_dirty()
    transfer.save(mem, os.path.join(disk, "base"))
    pages = np.random.default_rng(0).choice(np.r_[0:256, 256:320], 60, replace=False)
    for p in pages.tolist():
        addr = p * PAGE if p < 256 else 0x100000 + (p - 256) * PAGE
        mem.write_slice(os.urandom(PAGE), addr)
    taken = mem.dirty_ranges()
    first = os.path.join(tmpfs, "diff1")
    try:
        transfer.save_diff(mem, first, index=os.path.join(disk, "diff1.index"))
    except StreamError as exc:
        assert "No space left" in str(exc) and exc.addr is not None, exc
    else:
        raise AssertionError("the tmpfs did not fill up")
    written = np.load(os.path.join(disk, "diff1.index"))
    left = mem.dirty_ranges()
    assert 0 < written[:, 1].sum() < taken[:, 1].sum()
    assert written[:, 1].sum() + left[:, 1].sum() >= taken[:, 1].sum()
    retry = transfer.save_diff(mem, os.path.join(disk, "diff2"))
    assert retry[:, 1].sum() == left[:, 1].sum() and not mem.dirty_ranges().size
    # the tmpfs diff has no index next to it: merged through its data extents
    transfer.merge(os.path.join(disk, "base"), [first, os.path.join(disk, "diff2")],
                   os.path.join(disk, "merged"))
    out = GuestMemoryMmap.from_ranges([(0, 256 * PAGE), (0x100000, 64 * PAGE)])
    transfer.load(out, os.path.join(disk, "merged"))
    for a, n in [(0, 256 * PAGE), (0x100000, 64 * PAGE)]:
        assert out.read_bytes(a, n) == mem.read_bytes(a, n)
    print("ok")
    """
)


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare(1)")
def test_full_disk_loses_nothing_and_a_retry_completes(tmp_path):
    """A 128 KiB tmpfs fills up mid-diff (ENOSPC); a second diff completes it."""
    (tmp_path / "tmpfs").mkdir()
    (tmp_path / "disk").mkdir()
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    mount = f"mount -t tmpfs -o size=128k tmpfs {tmp_path / 'tmpfs'}"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount], capture_output=True, text=True, check=False
    )
    if probe.returncode:
        pytest.skip(f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}")
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c",
         f"{mount} && exec {sys.executable} {script} {tmp_path / 'tmpfs'} {tmp_path / 'disk'}"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


# -- regressions ---------------------------------------------------------------------------
def _raise_at_start(kind):
    def callback(p):
        if p.done == 0:
            raise kind("the progress callback failed")

    return callback


@pytest.mark.parametrize("how", ["save_diff", "copy_dirty"])
@pytest.mark.parametrize("fail", ["progress", "KeyboardInterrupt", "planning"])
def test_a_failure_before_hand_over_re_marks_every_taken_page(tmp_path, monkeypatch, how, fail):
    mem = GuestMemoryMmap.from_ranges(LAYOUTS[0], bitmap=AtomicBitmap)
    dirty_some(mem, [1, 20, 45], 3)
    kind = KeyboardInterrupt if fail == "KeyboardInterrupt" else RuntimeError
    progress = None if fail == "planning" else _raise_at_start(kind)
    if fail == "planning":
        name = "_file_offsets" if how == "save_diff" else "_plan"

        def broken(*args):
            raise RuntimeError("planning failed")

        monkeypatch.setattr(transfer, name, broken)
    if how == "save_diff":
        run = lambda: transfer.save_diff(mem, tmp_path / "diff", progress=progress)  # noqa: E731
    else:
        dst = GuestMemoryMmap.from_ranges(LAYOUTS[1])
        run = lambda: transfer.copy_dirty(mem, dst, progress=progress)  # noqa: E731
    with pytest.raises(kind):
        run()
    assert pages_of(mem.dirty_ranges().tolist()) == {1, 20, 45}


@pytest.mark.parametrize("second", ["bare", "elsewhere", "failed"])
def test_a_stale_index_never_reaches_merge(tmp_path, second):
    mem, _ = filled(LAYOUTS[1], 5, bitmap=AtomicBitmap)
    mem.get_and_reset_dirty()
    transfer.save(mem, tmp_path / "base")
    dirty_some(mem, [2], 1)
    transfer.save_diff(mem, tmp_path / "diff")  # diff + diff.index listing page 2
    dirty_some(mem, [7], 2)
    if second == "failed":  # truncates the diff, then fails before any index is written
        with pytest.raises(RuntimeError):
            transfer.save_diff(mem, tmp_path / "diff", progress=_raise_at_start(RuntimeError))
        assert not (tmp_path / f"diff{transfer.INDEX_SUFFIX}").exists()
        return
    index = False if second == "bare" else tmp_path / "elsewhere.index"
    transfer.save_diff(mem, tmp_path / "diff", index=index)
    assert not (tmp_path / f"diff{transfer.INDEX_SUFFIX}").exists()
    full = transfer.merge(tmp_path / "base", [tmp_path / "diff"], tmp_path / "full")
    assert full == PAGE  # page 7 from the data extents; page 2 lives in no diff any more
    out = GuestMemoryMmap.from_ranges(LAYOUTS[1])
    transfer.load(out, tmp_path / "full")
    assert out.read_bytes(7 * PAGE, PAGE) == mem.read_bytes(7 * PAGE, PAGE)


CLOSE_WHILE_COPYING = textwrap.dedent(
    """
    import contextlib
    from npguest import GuestMemoryMmap, transfer
    from npguest.errors import MmapRegionError

    src = GuestMemoryMmap.from_ranges([(0, 0x100000)])
    dst = GuestMemoryMmap.from_ranges([(0, 0x100000)])
    src.write_slice(b"x" * 0x100000, 0)

    def close_src(p):  # another thread closing src between planning and copying
        if p.done == 0:
            with contextlib.suppress(MmapRegionError):
                src.close()

    assert transfer.copy(src, dst, progress=close_src) == 0x100000
    assert dst.read_bytes(0xFFFFF, 1) == b"x"
    print("ok")
    """
)


def test_closing_the_source_mid_copy_is_refused_not_a_crash():
    run = subprocess.run(
        [sys.executable, "-c", CLOSE_WHILE_COPYING],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "ok", (run.returncode, run.stderr)


def test_a_closed_memory_is_a_clean_error():
    src = GuestMemoryMmap.from_ranges([(0, PAGE)], bitmap=AtomicBitmap)
    dst = GuestMemoryMmap.from_ranges([(0, PAGE)])
    src.close()
    with pytest.raises(InvalidGuestAddressError):
        transfer.copy(src, dst, [[0, PAGE]])
    dst.close()
    src = GuestMemoryMmap.from_ranges([(0, PAGE)], bitmap=AtomicBitmap)
    src.write_slice(b"x", 0)
    with pytest.raises(StreamError) as info:
        transfer.copy_dirty(src, dst)
    assert isinstance(info.value.__cause__, InvalidGuestAddressError)
    assert src.dirty_ranges().tolist() == [[0, PAGE]]


def test_dirty_rounds_refuse_memory_without_tracking(tmp_path):
    untracked = GuestMemoryMmap.from_ranges([(0, 4 * PAGE)])
    tracked = GuestMemoryMmap.from_ranges([(0, 4 * PAGE)], bitmap=AtomicBitmap)
    half = tracked.insert_region(
        GuestMemoryMmap.from_ranges([(8 * PAGE, PAGE)]).find_region(8 * PAGE)
    )
    half.write_slice(b"x", 8 * PAGE)
    half.write_slice(b"y", PAGE)
    (tmp_path / "diff").write_bytes(b"an earlier diff")
    dst = GuestMemoryMmap.from_ranges([(0, 16 * PAGE)])
    for mem, what in [(untracked, "no dirty tracking"), (half, "only 1 of its 2")]:
        with pytest.raises(BitmapError, match=what):
            transfer.save_diff(mem, tmp_path / "diff")
        with pytest.raises(BitmapError, match=what):
            transfer.copy_dirty(mem, dst)
    assert (tmp_path / "diff").read_bytes() == b"an earlier diff"  # not truncated
    assert half.dirty_ranges().tolist() == [[PAGE, PAGE]]  # nothing taken


def test_merge_has_no_side_effects_on_error(tmp_path):
    (tmp_path / "diff").write_bytes(b"d" * 2 * PAGE)
    with pytest.raises(StreamError, match="cannot open the base") as info:
        transfer.merge(tmp_path / "nobase", [tmp_path / "diff"])
    assert str(tmp_path / "nobase") in str(info.value) and not (tmp_path / "nobase").exists()
    (tmp_path / "base").write_bytes(b"a" * 2 * PAGE)
    (tmp_path / "good").write_bytes(b"b" * 2 * PAGE)
    (tmp_path / "bad").write_bytes(b"c" * PAGE)
    (tmp_path / "out").write_bytes(b"previous")
    with pytest.raises(DumpFormatError, match="not a diff of it"):
        transfer.merge(tmp_path / "base", [tmp_path / "good", tmp_path / "bad"])
    assert (tmp_path / "base").read_bytes() == b"a" * 2 * PAGE  # nothing applied
    with pytest.raises(DumpFormatError, match="not a diff of it"):
        transfer.merge(tmp_path / "base", [tmp_path / "good", tmp_path / "bad"], tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"previous"
    assert sorted(os.listdir(tmp_path)) == ["bad", "base", "diff", "good", "out"]
    assert transfer.merge(tmp_path / "base", [tmp_path / "good"], tmp_path / "out") == 2 * PAGE
    assert (tmp_path / "out").read_bytes() == b"b" * 2 * PAGE
    assert (tmp_path / "base").read_bytes() == b"a" * 2 * PAGE


SAVES = {
    "sparse": lambda mem, path: transfer.save(mem, path, sparse=True),
    "full": lambda mem, path: transfer.save(mem, path),
    "diff": lambda mem, path: transfer.save_diff(mem, path, index=False),
}


@pytest.mark.parametrize("how", sorted(SAVES))
def test_a_snapshot_is_never_written_into_a_file_backing_the_memory(tmp_path, how):
    # (the file has the layout's size: were it larger, the unfixed code crashed with SIGBUS)
    path = tmp_path / "ram"
    path.write_bytes(bytes(2 * PAGE))
    mem = GuestMemoryMmap.from_ranges_with_files(
        [(0, 2 * PAGE, FileOffset(path))], bitmap=AtomicBitmap
    )
    mem.write_slice(b"guest data", PAGE)
    with pytest.raises(StreamError, match="backs the guest region at 0x0"):
        SAVES[how](mem, path)
    assert mem.read_bytes(PAGE, 10) == b"guest data"
    assert path.read_bytes()[PAGE : PAGE + 10] == b"guest data"
    assert mem.dirty_ranges().tolist() == [[PAGE, PAGE]]
    mem.close()


@pytest.mark.parametrize("mode", ["ab", "rb"])
def test_files_that_ignore_offsets_or_refuse_writes_are_refused_first(tmp_path, mode):
    """O_APPEND ignores file offsets and O_RDONLY refuses writes: refused before a bit goes."""
    mem, _ = filled(LAYOUTS[1], 21, bitmap=AtomicBitmap)
    path = tmp_path / "diff"
    transfer.save_diff(mem, path)  # a first diff, with its index
    index = path.with_name(path.name + transfer.INDEX_SUFFIX)
    before = (path.read_bytes(), index.read_bytes())
    mem.write(b"C", 0x1000)
    dirty = mem.dirty_ranges().tolist()
    for call in (transfer.save_diff, transfer.save):
        with open(path, mode) as f, pytest.raises(StreamError, match=r"append|read-only"):
            call(mem, f)
        with open(path, mode) as f, pytest.raises(StreamError, match=r"append|read-only"):
            call(mem, f.fileno())
    assert mem.dirty_ranges().tolist() == dirty  # nothing taken
    assert (path.read_bytes(), index.read_bytes()) == before  # nothing touched
