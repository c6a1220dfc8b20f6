"""Tests of npguest.mapping: MmapRegion and FileOffset, with real files.

Reference: vm-memory §2.6 (``mmap/unix.rs``) and §3.7, with npguest's documented
differences: a file shorter than ``start + size`` is refused (no SIGBUS later),
``is_hugetlbfs`` is detected, and ``close`` refuses while views are alive.
"""

from __future__ import annotations

import gc
import os
import pickle

import numpy as np
import pytest
from _support import RecordingBitmap

from npguest import FileOffset, GuestAddress, GuestMemoryMmap, MmapRegion, NoBitmap, VolatileSlice
from npguest.errors import (
    GuestMemoryError,
    MmapRegionError,
    OffsetOverflowError,
    OutOfBoundsError,
    ReadOnlyMemoryError,
)
from npguest.mapping import PAGE_SIZE

PAGE = PAGE_SIZE


def file_pattern(n: int) -> bytes:
    return (np.arange(n, dtype=np.uint32) * 2654435761 >> 24).astype(np.uint8).tobytes()


@pytest.fixture
def data_file(tmp_path):
    """A 4-page file whose bytes are a known pattern."""
    path = tmp_path / "guest.img"
    path.write_bytes(file_pattern(4 * PAGE))
    return path


def drop(*_):
    gc.collect()


class TestAnonymous:
    def test_basics(self):
        r = MmapRegion.anonymous(3 * PAGE)
        assert r.size() == 3 * PAGE
        assert r.len() == 3 * PAGE
        assert len(r) == 3 * PAGE
        assert r.file_offset() is None
        assert not r.is_readonly()
        assert not r.is_shared()
        assert r.is_hugetlbfs() is None
        assert not r.closed
        a = r.as_array()
        assert a.dtype == np.uint8
        assert a.shape == (3 * PAGE,)
        assert not a.any()  # zero-filled
        assert r.as_ptr() == a.__array_interface__["data"][0]
        assert r.as_ptr() % PAGE == 0
        del a
        r.close()

    def test_constructor_is_anonymous(self):
        r = MmapRegion(PAGE)
        assert r.size() == PAGE
        assert r.file_offset() is None
        r.close()

    def test_unaligned_size(self):
        with MmapRegion.anonymous(5) as r:
            s = r.as_volatile_slice()
            assert s.len() == 5
            with pytest.raises(OutOfBoundsError) as ei:
                s.write(b"x", 5)
            assert ei.value.addr == 5
            del s, ei  # the traceback holds the slice too
            gc.collect()

    @pytest.mark.parametrize("size", [0, -1, -PAGE])
    def test_bad_size(self, size):
        with pytest.raises(MmapRegionError):
            MmapRegion.anonymous(size)
        with pytest.raises(MmapRegionError):
            MmapRegion(size)
        with pytest.raises(MmapRegionError):
            MmapRegion.memfd(size)

    @pytest.mark.parametrize("size", [1.0, "4096", True, None])
    def test_size_not_an_int(self, size):
        with pytest.raises(MmapRegionError):
            MmapRegion.anonymous(size)

    def test_huge_size_fails_cleanly(self):
        with pytest.raises(MmapRegionError) as ei:
            MmapRegion.anonymous(2**63)
        assert isinstance(ei.value, OSError)

    def test_readonly_anonymous(self):
        with MmapRegion.anonymous(PAGE, readonly=True) as r:
            assert r.is_readonly()
            s = r.as_volatile_slice()
            with pytest.raises(ReadOnlyMemoryError):
                s.write(b"x", 0)
            assert s.read_bytes(0, 4) == bytes(4)
            a = r.as_array()
            assert not a.flags.writeable
            del s, a

    def test_views_share_memory(self):
        with MmapRegion.anonymous(2 * PAGE) as r:
            a = r.as_array()
            s = r.as_volatile_slice()
            s.write(b"abc", PAGE - 1)
            assert a[PAGE - 1 : PAGE + 2].tobytes() == b"abc"
            a[10] = 42
            assert s.read_obj(10, "u1") == 42
            assert r.get_slice(PAGE, 2).read_bytes(0, 2) == b"bc"
            del a, s

    def test_get_slice_errors(self):
        with MmapRegion.anonymous(PAGE) as r:
            with pytest.raises(OutOfBoundsError) as ei:
                r.get_slice(PAGE - 1, 2)
            assert ei.value.addr == PAGE + 1
            with pytest.raises(OffsetOverflowError):
                r.get_slice(2**64 - 1, 2)
            s = r.get_slice(PAGE, 0)
            assert s.is_empty()
            s2 = r.get_slice(8, 16)
            assert s2.ptr_guard().as_ptr() == r.as_ptr() + 8
            del s, s2, ei  # the traceback holds slices too
            gc.collect()

    def test_repr(self):
        with MmapRegion.anonymous(PAGE) as r:
            assert repr(r) == f"MmapRegion({PAGE:#x} bytes, anonymous, rw)"


class TestBitmaps:
    def test_factory_class(self):
        with MmapRegion.anonymous(2 * PAGE, bitmap=RecordingBitmap, page_size=512) as r:
            bm = r.bitmap()
            assert isinstance(bm, RecordingBitmap)
            assert (bm.byte_size, bm.page_size) == (2 * PAGE, 512)
            s = r.as_volatile_slice()
            s.write(b"xy", 100)
            r.get_slice(PAGE, 8).write_obj(1, 2, "<u2")
            assert bm.marks == [(100, 2), (PAGE + 2, 2)]
            del s

    def test_factory_function(self):
        made = []

        def factory(size, page_size):
            made.append((size, page_size))
            return RecordingBitmap(size, page_size)

        with MmapRegion.anonymous(PAGE, bitmap=factory) as r:
            assert made == [(PAGE, 4096)]
            assert isinstance(r.bitmap(), RecordingBitmap)

    def test_ready_bitmap(self):
        rec = RecordingBitmap()
        with MmapRegion.memfd(PAGE, bitmap=rec) as r:
            assert r.bitmap() is rec
            r.as_volatile_slice().write(b"a", 7)
            assert rec.marks == [(7, 1)]

    @pytest.mark.parametrize("bitmap", [None, NoBitmap, NoBitmap()])
    def test_no_tracking(self, bitmap):
        with MmapRegion.anonymous(PAGE, bitmap=bitmap) as r:
            assert isinstance(r.bitmap(), NoBitmap)
            r.as_volatile_slice().write(b"a", 0)  # nothing to mark, nothing fails
            assert not r.bitmap().dirty_at(0)

    def test_raw_array_writes_not_tracked(self):
        rec = RecordingBitmap()
        with MmapRegion.anonymous(PAGE, bitmap=rec) as r:
            a = r.as_array()
            a[0] = 1
            assert rec.marks == []
            del a


class TestMemfd:
    def test_memfd(self):
        r = MmapRegion.memfd(2 * PAGE, name="npguest-test")
        fo = r.file_offset()
        assert isinstance(fo, FileOffset)
        assert fo.start() == 0
        assert r.is_shared()
        assert r.is_hugetlbfs() is False
        fd = fo.fileno()
        assert os.fstat(fd).st_size == 2 * PAGE
        assert "npguest-test" in os.readlink(f"/proc/self/fd/{fd}")
        r.as_volatile_slice().write(b"memfd!", PAGE)
        assert os.pread(fd, 6, PAGE) == b"memfd!"  # the memfd holds the bytes
        os.pwrite(fd, b"back", 0)
        assert r.as_volatile_slice().read_bytes(0, 4) == b"back"
        gc.collect()
        r.close()
        assert fo.file().closed  # the memfd was closed with the region

    def test_memfd_is_shareable(self):
        r = MmapRegion.memfd(PAGE)
        with r, MmapRegion.from_file(FileOffset(r.file_offset().fileno(), 0), PAGE) as twin:
            r.as_volatile_slice().write(b"shared", 10)
            assert twin.as_volatile_slice().read_bytes(10, 6) == b"shared"
            assert twin.as_ptr() != r.as_ptr()
            gc.collect()


class TestFromFile:
    def test_reads_file_bytes(self, data_file):
        expected = file_pattern(4 * PAGE)
        with open(data_file, "r+b") as f:
            r = MmapRegion.from_file(FileOffset(f, 0), 4 * PAGE)
            assert r.as_volatile_slice().read_bytes(0, 4 * PAGE) == expected
            assert r.is_shared()
            assert r.is_hugetlbfs() is False
            gc.collect()
            r.close()

    @pytest.mark.parametrize("pages", [1, 2, 3])
    def test_nonzero_file_offset(self, data_file, pages):
        expected = file_pattern(4 * PAGE)
        with open(data_file, "r+b") as f:
            fo = FileOffset(f, pages * PAGE)
            size = (4 - pages) * PAGE
            with MmapRegion.from_file(fo, size) as r:
                assert r.file_offset() is fo
                assert r.as_array().tobytes() == expected[pages * PAGE :]
                assert r.as_volatile_slice().read_obj(0, "u1") == expected[pages * PAGE]
                gc.collect()

    def test_partial_mapping_inside_file(self, data_file):
        expected = file_pattern(4 * PAGE)
        with (
            open(data_file, "rb") as f,
            MmapRegion.from_file(FileOffset(f, PAGE), 100, readonly=True) as r,
        ):
            assert r.size() == 100
            assert r.as_volatile_slice().read_bytes(0, 100) == expected[PAGE : PAGE + 100]
            gc.collect()

    @pytest.mark.parametrize("start", [1, 512, PAGE + 1, PAGE // 2, 3 * PAGE - 7])
    def test_unaligned_offset_maps_mid_page(self, data_file, start):
        expected = file_pattern(4 * PAGE)
        with open(data_file, "r+b") as f:
            r = MmapRegion.from_file(FileOffset(f, start), PAGE)
            assert r.file_offset().start() == start
            assert r.as_volatile_slice().read_bytes(0, PAGE) == expected[start : start + PAGE]
            r.as_volatile_slice().write_slice(b"XY", PAGE - 2)
            r.close()
            f.seek(start + PAGE - 2)
            assert f.read(2) == b"XY"

    def test_unaligned_offset_too_short(self, data_file):
        with open(data_file, "rb") as f, pytest.raises(MmapRegionError, match="too short"):
            MmapRegion.from_file(FileOffset(f, 3 * PAGE + 1), PAGE, readonly=True)

    @pytest.mark.parametrize(
        ("start", "size"),
        [(0, 4 * PAGE + 1), (0, 5 * PAGE), (3 * PAGE, PAGE + 1), (4 * PAGE, 1), (8 * PAGE, PAGE)],
    )
    def test_too_short_file(self, data_file, start, size):
        with open(data_file, "r+b") as f, pytest.raises(MmapRegionError, match="too short"):
            MmapRegion.from_file(FileOffset(f, start), size)

    def test_exact_fit(self, data_file):
        with open(data_file, "r+b") as f, MmapRegion.from_file(FileOffset(f, 3 * PAGE), PAGE) as r:
            assert r.as_volatile_slice().read_bytes(PAGE - 4, 4) == file_pattern(4 * PAGE)[-4:]
            gc.collect()

    def test_empty_file(self, tmp_path):
        path = tmp_path / "empty"
        path.write_bytes(b"")
        with open(path, "r+b") as f, pytest.raises(MmapRegionError):
            MmapRegion.from_file(FileOffset(f, 0), 1)

    @pytest.mark.parametrize("size", [0, -1])
    def test_bad_size(self, data_file, size):
        with open(data_file, "r+b") as f, pytest.raises(MmapRegionError):
            MmapRegion.from_file(FileOffset(f, 0), size)

    def test_shared_write_reaches_file(self, data_file):
        expected = bytearray(file_pattern(4 * PAGE))
        with open(data_file, "r+b") as f:
            r = MmapRegion.from_file(FileOffset(f, PAGE), 2 * PAGE)
            s = r.as_volatile_slice()
            s.write(b"npguest", 5)
            s.write_obj(0xDEADBEEF, PAGE + 4, "<u4")
            expected[PAGE + 5 : PAGE + 12] = b"npguest"
            expected[2 * PAGE + 4 : 2 * PAGE + 8] = b"\xef\xbe\xad\xde"
            with open(data_file, "rb") as g:  # a plain read, while still mapped
                assert g.read() == bytes(expected)
            # and the other way round: a plain write is seen through the mapping
            with open(data_file, "r+b") as g:
                g.seek(PAGE + 100)
                g.write(b"from-file")
            assert s.read_bytes(100, 9) == b"from-file"
            del s
            gc.collect()
            r.close()

    def test_private_mapping_never_changes_file(self, data_file):
        original = data_file.read_bytes()
        with open(data_file, "r+b") as f:
            r = MmapRegion.from_file(FileOffset(f, 0), 2 * PAGE, shared=False)
            assert not r.is_shared()
            s = r.as_volatile_slice()
            s.write(b"private", 0)
            s.write(b"X" * PAGE, PAGE)
            assert s.read_bytes(0, 7) == b"private"
            assert data_file.read_bytes() == original
            del s
            gc.collect()
            r.close()
        assert data_file.read_bytes() == original

    def test_private_mapping_of_read_only_file(self, data_file):
        original = data_file.read_bytes()
        with (
            open(data_file, "rb") as f,
            MmapRegion.from_file(FileOffset(f, 0), PAGE, shared=False) as r,
        ):
            r.as_volatile_slice().write(b"cow", 0)  # copy-on-write: allowed
            assert r.as_volatile_slice().read_bytes(0, 3) == b"cow"
            gc.collect()
        assert data_file.read_bytes() == original

    def test_read_only_mapping(self, data_file):
        original = data_file.read_bytes()
        with open(data_file, "rb") as f:
            r = MmapRegion.from_file(FileOffset(f, 0), 2 * PAGE, readonly=True)
            assert r.is_readonly()
            s = r.as_volatile_slice()
            assert not s.is_writable()
            assert s.read_bytes(0, 16) == original[:16]
            for write in (
                lambda v: v.write(b"x", 0),
                lambda v: v.write_slice(b"x", 1),
                lambda v: v.write_obj(1, 8, "<u8"),
                lambda v: v.store(1, 8, np.uint64),
                lambda v: v.copy_from(b"xyz"),
                lambda v: v.subslice(PAGE, 4).write(b"x", 0),
            ):
                with pytest.raises(ReadOnlyMemoryError):
                    write(s)
            with pytest.raises(ReadOnlyMemoryError):
                r.get_slice(PAGE, 4).write(b"x", 0)
            a = r.as_array()
            assert not a.flags.writeable
            with pytest.raises(ValueError):
                a[0] = 1
            del s, a
            gc.collect()
            r.close()
        assert data_file.read_bytes() == original
        assert repr(r).endswith(", ro)")

    def test_writable_mapping_of_read_only_file(self, data_file):
        with open(data_file, "rb") as f, pytest.raises(MmapRegionError) as ei:
            MmapRegion.from_file(FileOffset(f, 0), PAGE)
        assert isinstance(ei.value.__cause__, OSError)

    def test_file_offset_from_path(self, data_file):
        fo = FileOffset(data_file, PAGE)
        assert fo.start() == PAGE
        f = fo.file()
        r = MmapRegion.from_file(fo, PAGE)
        assert r.as_volatile_slice().read_bytes(0, 8) == file_pattern(4 * PAGE)[PAGE : PAGE + 8]
        r.as_volatile_slice().write(b"P", 0)
        gc.collect()
        r.close()
        assert f.closed  # the FileOffset opened it, so closing the region closed it
        assert data_file.read_bytes()[PAGE : PAGE + 1] == b"P"

    def test_file_offset_from_str_path(self, data_file):
        fo = FileOffset(str(data_file))
        with MmapRegion.from_file(fo, PAGE) as r:
            assert r.as_volatile_slice().read_bytes(0, 4) == file_pattern(4)

    def test_from_file_accepts_plain_file(self, data_file):
        with open(data_file, "r+b") as f, MmapRegion.from_file(f, PAGE) as r:
            assert r.file_offset().start() == 0
            assert r.as_volatile_slice().read_bytes(0, 4) == file_pattern(4)
            gc.collect()

    def test_file_offset_from_unwritable_path(self, data_file, monkeypatch):
        # a path the user may not write is opened read-only (simulated: tests may run as root)
        monkeypatch.setattr(os, "access", lambda path, mode: False)
        fo = FileOffset(data_file)
        assert fo.file().mode == "rb"
        with pytest.raises(MmapRegionError):
            MmapRegion.from_file(fo, PAGE)
        with MmapRegion.from_file(fo, PAGE, readonly=True) as r:
            assert r.as_volatile_slice().read_bytes(0, 2) == file_pattern(2)
            gc.collect()
        assert fo.file().closed

    def test_file_offset_from_fd(self, data_file):
        fd = os.open(data_file, os.O_RDWR)
        try:
            fo = FileOffset(fd, 2 * PAGE)
            assert fo.fileno() == fd
            assert fo.file() == fd
            with MmapRegion.from_file(fo, PAGE) as r:
                s = r.as_volatile_slice()
                assert s.read_bytes(0, 4) == file_pattern(4 * PAGE)[2 * PAGE : 2 * PAGE + 4]
                s.write(b"fd", 0)
                del s
                gc.collect()
            os.fstat(fd)  # a raw fd given by the caller stays open
            assert os.pread(fd, 2, 2 * PAGE) == b"fd"
        finally:
            os.close(fd)

    def test_file_object_not_closed(self, data_file):
        with open(data_file, "r+b") as f:
            with MmapRegion.from_file(FileOffset(f, 0), PAGE):
                gc.collect()
            assert not f.closed

    def test_file_offset_validation(self, data_file):
        with pytest.raises(MmapRegionError):
            FileOffset(data_file, -1)
        with pytest.raises(MmapRegionError):
            FileOffset(data_file.parent / "missing", 0)
        with pytest.raises(TypeError):
            FileOffset(3.5, 0)
        with open(data_file, "rb") as f:
            fo = FileOffset(f, 8192)
            assert repr(fo) == f"FileOffset({str(data_file)!r}, 0x2000)"

    def test_is_hugetlbfs_false_for_tmp_files(self, data_file):
        with open(data_file, "r+b") as f, MmapRegion.from_file(FileOffset(f), PAGE) as r:
            assert r.is_hugetlbfs() is False

    def test_repr(self, data_file):
        with open(data_file, "r+b") as f, MmapRegion.from_file(FileOffset(f, PAGE), PAGE) as r:
            assert (
                repr(r)
                == f"MmapRegion({PAGE:#x} bytes, FileOffset({str(data_file)!r}, 0x1000), rw)"
            )

    def test_error_is_typed_and_pickles(self):
        exc = MmapRegionError("bad")
        assert isinstance(exc, GuestMemoryError)
        assert isinstance(exc, OSError)
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is MmapRegionError
        assert back.reason == "bad"
        ro = pickle.loads(pickle.dumps(ReadOnlyMemoryError(7)))
        assert type(ro) is ReadOnlyMemoryError
        assert ro.addr == 7


class TestClose:
    def test_close_refused_while_slice_alive(self):
        r = MmapRegion.anonymous(PAGE)
        s = r.as_volatile_slice()
        s.write(b"keep", 0)
        with pytest.raises(MmapRegionError, match="still alive"):
            r.close()
        assert not r.closed
        # the region is still fully usable, and so is the slice
        assert s.read_bytes(0, 4) == b"keep"
        assert r.as_volatile_slice().read_bytes(0, 4) == b"keep"
        assert r.as_array()[:4].tobytes() == b"keep"
        del s
        gc.collect()
        r.close()
        assert r.closed

    def test_close_refused_while_subslice_alive(self):
        r = MmapRegion.anonymous(PAGE)
        sub = r.get_slice(10, 10).subslice(2, 2)
        with pytest.raises(MmapRegionError):
            r.close()
        del sub
        gc.collect()
        r.close()
        assert r.closed

    def test_close_refused_while_numpy_view_alive(self):
        r = MmapRegion.anonymous(PAGE)
        a = r.as_array()[100:200]
        with pytest.raises(MmapRegionError):
            r.close()
        a[0] = 5
        assert r.as_array()[100] == 5
        del a
        gc.collect()
        r.close()
        assert r.closed

    def test_close_refused_while_ref_alive(self):
        r = MmapRegion.anonymous(PAGE)
        ref = r.as_volatile_slice().get_ref(8, "<u8")
        with pytest.raises(MmapRegionError):
            r.close()
        ref.store(3)
        del ref
        gc.collect()
        r.close()

    def test_repeated_refusal_then_success(self):
        r = MmapRegion.anonymous(PAGE)
        s = r.as_volatile_slice()
        for _ in range(3):
            with pytest.raises(MmapRegionError):
                r.close()
        del s
        gc.collect()
        r.close()
        r.close()  # idempotent
        assert r.closed

    def test_access_after_close(self):
        r = MmapRegion.anonymous(PAGE)
        r.close()
        for access in (
            r.as_ptr,
            r.as_array,
            r.as_volatile_slice,
            lambda: r.get_slice(0, 1),
            lambda: r.get_slice(0, 0),
        ):
            with pytest.raises(MmapRegionError, match="closed"):
                access()
        assert r.size() == PAGE  # metadata stays readable

    def test_file_region_access_after_close(self, data_file):
        with open(data_file, "r+b") as f:
            r = MmapRegion.from_file(FileOffset(f, 0), PAGE)
            r.close()
            with pytest.raises(MmapRegionError):
                r.as_volatile_slice()
            assert not f.closed

    def test_context_manager(self):
        with MmapRegion.anonymous(PAGE) as r:
            assert r.as_volatile_slice().write(b"x", 0) == 1
            gc.collect()
        assert r.closed
        with pytest.raises(MmapRegionError):
            r.as_array()

    def test_context_manager_with_live_view_raises(self):
        keep = []
        with pytest.raises(MmapRegionError), MmapRegion.anonymous(PAGE) as r:
            keep.append(r.as_volatile_slice())
        assert not r.closed
        keep.clear()
        gc.collect()
        r.close()
        assert r.closed

    def test_slices_of_other_mappings_do_not_block(self):
        r1, r2 = MmapRegion.anonymous(PAGE), MmapRegion.anonymous(PAGE)
        s2 = r2.as_volatile_slice()
        r1.close()
        assert r1.closed
        s2.write(b"ok", 0)
        del s2
        gc.collect()
        r2.close()

    def test_unrelated_slice_type(self):
        # a VolatileSlice over a plain buffer is unaffected by mapping lifetimes
        s = VolatileSlice(bytearray(4))
        with MmapRegion.anonymous(PAGE):
            pass
        assert s.write(b"ab", 0) == 2


# -- review fixes: shared path-opened FileOffset, numpy integer sizes ---------------------


class TestSharedFileOffset:
    def test_closing_one_region_keeps_a_shared_path_file_open(self, data_file):
        fo = FileOffset(data_file)
        mem = GuestMemoryMmap.from_ranges_with_files([(0, PAGE, fo), (PAGE, PAGE, fo)])
        first, second = mem.iter()
        del mem
        gc.collect()
        first.close()
        assert not fo.file().closed
        os.fstat(second.file_offset().fileno())  # the survivor's fd is still valid
        assert second.read_bytes(0, 4) == file_pattern(4)
        second.close()
        assert fo.file().closed  # the last mapping closed the file the FileOffset opened

    def test_file_given_by_caller_never_closed(self, data_file):
        with open(data_file, "r+b") as f:
            fo = FileOffset(f)
            for _ in range(2):
                MmapRegion.from_file(fo, PAGE).close()
            assert not f.closed

    def test_failed_mapping_does_not_count(self, data_file):
        fo = FileOffset(data_file)
        with pytest.raises(MmapRegionError):
            MmapRegion.from_file(fo, 8 * PAGE)  # longer than the file
        MmapRegion.from_file(fo, PAGE).close()
        assert fo.file().closed


class TestNumpyIntegerSizes:
    @pytest.mark.parametrize("kind", [np.int64, np.uint64, np.int32, np.uint16])
    def test_sizes_and_offsets(self, data_file, kind):
        with MmapRegion.anonymous(kind(PAGE)) as r:
            assert r.size() == PAGE and type(r.size()) is int
        with MmapRegion.memfd(kind(PAGE)) as r:
            assert r.size() == PAGE
        fo = FileOffset(data_file, kind(PAGE))
        assert fo.start() == PAGE and type(fo.start()) is int
        with MmapRegion.from_file(fo, kind(PAGE)) as r:
            assert r.as_volatile_slice().read_bytes(0, 4) == file_pattern(2 * PAGE)[PAGE:][:4]
        mem = GuestMemoryMmap.from_ranges([(0, kind(PAGE))])
        assert mem.last_addr() == GuestAddress(PAGE - 1)
        mem.close()

    @pytest.mark.parametrize("bad", [True, np.True_, 4096.0, np.float64(4096), "4096"])
    def test_bools_and_floats_refused(self, data_file, bad):
        with pytest.raises(MmapRegionError, match="must be an integer"):
            MmapRegion.anonymous(bad)
        with pytest.raises(MmapRegionError, match="must be an integer"):
            FileOffset(data_file, bad)
