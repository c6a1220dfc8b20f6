"""kdump-compressed dumps: npguest.dumps.kdump (reader, writer, page cache, flattened files)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import struct
import sys
import threading
import tracemalloc
import types
import warnings
import zlib
from bisect import bisect_right

import numpy as np
import pytest
from dump_support import (
    FUZZ,
    PAGE,
    assert_holds,
    assert_only_dump_errors,
    layout_of,
    mutations,
    read_everything,
    sample_memory,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npguest
from npguest import GuestMemoryMmap, IommuMemory, IotlbIommu, Permissions
from npguest.dumps import kdump, open_dump, write_dump
from npguest.dumps.dump import CpuState, DumpMemory, DumpMetadata, region_chunks
from npguest.dumps.elf import cpu_notes, vmcoreinfo_note
from npguest.dumps.kdump import KdumpMemory, KdumpRegion, open_kdump, write_kdump
from npguest.errors import (
    DumpFormatError,
    HostAddressNotAvailableError,
    InvalidBackendAddressError,
    InvalidGuestAddressError,
    PartialBufferError,
    ReadOnlyMemoryError,
    RegionCollectionError,
)

HEADER64 = struct.Struct("<8si390s22sIiiIIIIIIi")
RECORD = struct.Struct(">qq")


# --- the model: backed runs of bytes -----------------------------------------------------
class Model:
    """Guest memory as ``(start, bytes)`` runs (adjacent pieces joined); the rest unbacked."""

    def __init__(self, pieces, excluded=()):
        cut = []
        for gpa, data in sorted(pieces):
            lo, hi = gpa, gpa + len(data)
            for ex, n in sorted(excluded):  # split around excluded ranges
                if ex < hi and ex + n > lo:
                    if ex > lo:
                        cut.append((lo, data[lo - gpa : ex - gpa]))
                    lo = max(lo, ex + n)
            if lo < hi:
                cut.append((lo, data[lo - gpa : hi - gpa]))
        runs = []
        for gpa, data in cut:
            if runs and runs[-1][0] + len(runs[-1][1]) == gpa:
                runs[-1] = (runs[-1][0], runs[-1][1] + data)
            else:
                runs.append((gpa, data))
        self.runs = runs
        self.starts = [gpa for gpa, _ in runs]

    def backed(self, addr, n):
        """Bytes from ``addr`` (at most ``n``) that are backed."""
        i = bisect_right(self.starts, addr) - 1
        if i < 0:
            return 0
        gpa, data = self.runs[i]
        return max(0, min(n, gpa + len(data) - addr))

    def bytes(self, addr, n):
        i = bisect_right(self.starts, addr) - 1
        gpa, data = self.runs[i]
        return data[addr - gpa : addr - gpa + n]

    def points(self):
        """Interesting addresses: run and page edges, +- a little."""
        out = set()
        for gpa, data in self.runs:
            for edge in (gpa, gpa + len(data), gpa + PAGE, gpa + len(data) - PAGE):
                out.update(edge + d for d in (-9, -1, 0, 1, 7))
        return sorted(a for a in out if a >= 0)


def sample_dump(layout, seed=0, **metadata):
    """``sample_memory(layout, seed)`` as a :class:`DumpMemory` with ``metadata``."""
    mem, pieces = sample_memory(layout, seed)
    regions = list(mem.iter())
    del mem  # (the dump memory alone holds the regions: closing it unmaps them)
    return DumpMemory(regions, DumpMetadata("memory", "", **metadata)), pieces


def dump_of(tmp_path, layout, seed=0, *, name="d.kdump", excluded=(), notes=None, **options):
    """Write ``sample_memory(layout, seed)`` (minus ``excluded``) as a kdump; return path, model."""
    source, pieces = sample_dump(layout, seed, excluded=excluded)
    with source:
        write_kdump(source, tmp_path / name, notes=notes, **options)
    return tmp_path / name, Model(pieces, excluded)


def records(blob):
    """The ``(offset, data)`` records of a flattened file, in stream order."""
    pos, out = 4096, []
    while True:
        offset, size = RECORD.unpack_from(blob, pos)
        if offset == -1:
            return out
        out.append((offset, blob[pos + 16 : pos + 16 + size]))
        pos += 16 + size


def flattened(recs, end=True):
    """A flattened file of ``recs``."""
    out = bytearray(b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1)).ljust(4096, b"\0")
    for offset, data in recs:
        out += RECORD.pack(offset, len(data)) + data
    if end:
        out += RECORD.pack(-1, -1)
    return bytes(out)


def assert_excluded(dump, ranges):
    """``dump.metadata.excluded`` is a read-only ``(n, 2)`` ``uint64`` array of ``ranges``."""
    excluded = dump.metadata.excluded
    assert excluded.dtype == np.uint64 and excluded.shape == (len(ranges), 2)
    assert not excluded.flags.writeable
    assert excluded.tolist() == [list(r) for r in ranges]


def plain_offsets(blob):
    """``(block, sub_blocks, bitmap_blocks, desc_base)`` of a 64-bit little-endian dump."""
    h = HEADER64.unpack_from(blob)
    block, sub, bitmap = h[5], h[6], h[7]
    return block, sub, bitmap, (1 + sub + bitmap) * block


LAYOUT = [(0, 3 * PAGE), (0x5000, 2 * PAGE), (0x7000, 4 * PAGE), (0x20000, PAGE)]
EXCLUDED = ((PAGE, PAGE), (0x9000, PAGE))  # inside the first and the third runs


@pytest.fixture(scope="module")
def holey(tmp_path_factory):
    """A dump with adjacent regions, gaps and excluded pages, and its model."""
    path, model = dump_of(tmp_path_factory.mktemp("kdump"), LAYOUT, 3, excluded=EXCLUDED)
    with open_kdump(path, cache_pages=16) as mem:
        yield mem, model


# --- round trips -------------------------------------------------------------------------
SIZES = [PAGE, 2 * PAGE, 5 * PAGE, 0x10000]
GAPS = [0, PAGE, 3 * PAGE, 0x100000]


@st.composite
def layouts(draw):
    gpa = draw(st.sampled_from([0, PAGE, 0xA0000, (1 << 32) - PAGE]))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        size = draw(st.sampled_from(SIZES))
        out.append((gpa, size))
        gpa += size + draw(st.sampled_from(GAPS))
    return out


def merged(layout):
    out = []
    for gpa, size in layout:
        if out and out[-1][0] + out[-1][1] == gpa:
            out[-1] = (out[-1][0], out[-1][1] + size)
        else:
            out.append((gpa, size))
    return out


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(layout=layouts(), seed=st.integers(0, 3), flat=st.booleans())
def test_round_trip_random_layouts(tmp_path, layout, seed, flat):
    path, model = dump_of(tmp_path, layout, seed, flattened=flat)
    with open_kdump(path) as dump:
        assert isinstance(dump, KdumpMemory)
        assert layout_of(dump) == merged(layout)  # runs of pages: adjacent regions join
        assert_holds(dump, [(gpa, data) for gpa, data in model.runs])
        assert dump.metadata.format == "kdump"
        assert dump.metadata.machine == "x86_64"
        assert dump.metadata.page_size == PAGE
        assert_excluded(dump, ())
        assert dump.metadata.extra["flattened"] is flat
        assert dump.metadata.extra["header_version"] == 6
        assert dump.metadata.extra["dump_level"] == 1
        assert dump.metadata.extra["compression"] == ("zlib",)
        assert dump.metadata.extra["dumped_pages"] == sum(n for _, n in layout) // PAGE


def test_writer_layout_is_qemus(tmp_path):
    path, _ = dump_of(tmp_path, [(0, 4 * PAGE), (0x10000, PAGE)], 1)
    blob = path.read_bytes()
    h = HEADER64.unpack_from(blob)
    assert h[0] == b"KDUMP   " and h[1] == 6 and h[4] == 0x1  # status: zlib
    assert h[2][4 * 65 : 4 * 65 + 7] == b"x86_64\0"  # utsname.machine
    block, sub_blocks, bitmap_blocks, desc_base = plain_offsets(blob)
    assert (block, sub_blocks, bitmap_blocks, h[8]) == (PAGE, 1, 2, 0x11)  # max_mapnr
    sub = struct.unpack_from("<QiiQQQQQQQQQQQ", blob, block)
    assert sub[1] == 1 and sub[-1] == 0x11  # dump_level, max_mapnr_64
    first, second = blob[2 * block : 2 * block + 3], blob[3 * block : 3 * block + 3]
    assert first == second == bytes([0x0F, 0x00, 0x01])
    descs = [struct.unpack_from("<QIIQ", blob, desc_base + 24 * i) for i in range(5)]
    zero = desc_base + 24 * 5  # the shared zero page comes first in the data
    assert blob[zero : zero + PAGE] == bytes(PAGE)
    zeros = [d for d in descs if d[0] == zero]
    assert all(d[1:] == (PAGE, 0, 0) for d in zeros)
    assert sorted(d[0] for d in descs if d[0] != zero) == [d[0] for d in descs if d[0] != zero]
    assert all(d[2] == 0 for d in descs if d[0] != zero)  # random pages: raw (no gain)


def test_compressible_pages_are_compressed(tmp_path):
    mem = GuestMemoryMmap.from_ranges([(0, 4 * PAGE)])
    with mem:
        mem.write_slice(b"text " * (4 * PAGE // 5), 0)
        write_kdump(mem, tmp_path / "c.kdump")
        expected = mem.read_bytes(0, 4 * PAGE)
    blob = (tmp_path / "c.kdump").read_bytes()
    *_, desc_base = plain_offsets(blob)
    descs = [struct.unpack_from("<QIIQ", blob, desc_base + 24 * i) for i in range(4)]
    assert all(d[2] == 1 and d[1] < PAGE for d in descs)
    assert zlib.decompress(blob[descs[0][0] : descs[0][0] + descs[0][1]]) == expected[:PAGE]
    with open_kdump(tmp_path / "c.kdump") as dump:
        assert dump.read_bytes(0, 4 * PAGE) == expected


def test_unaligned_regions_are_written_as_whole_pages(tmp_path):
    mem = GuestMemoryMmap.from_ranges([(0x800, 0x400), (0x1C00, 0x1000), (0x5000, 0x10)])
    with mem:
        mem.write_slice(b"\x11" * 0x400, 0x800)
        mem.write_slice(b"\x22" * 0x1000, 0x1C00)
        mem.write_slice(b"\x33" * 0x10, 0x5000)
        write_kdump(mem, tmp_path / "u.kdump", flattened=True)
    with open_kdump(tmp_path / "u.kdump") as dump:
        assert layout_of(dump) == [(0, 3 * PAGE), (0x5000, PAGE)]
        expected = bytes(0x800) + b"\x11" * 0x400 + bytes(0x1000) + b"\x22" * 0x1000 + bytes(0x400)
        assert dump.read_bytes(0, 3 * PAGE) == expected
        assert dump.read_bytes(0x5000, PAGE) == b"\x33" * 0x10 + bytes(PAGE - 0x10)


def test_progress_block_size_and_errors(tmp_path):
    mem, _ = sample_memory([(0, 8 * PAGE)], 0)
    calls = []
    with mem:
        write_kdump(mem, tmp_path / "p.kdump", progress=lambda d, t: calls.append((d, t)))
        assert calls[-1] == (8 * PAGE, 8 * PAGE)
        write_kdump(mem, tmp_path / "b.kdump", block_size=1024, flattened=True)
        with open_kdump(tmp_path / "b.kdump") as dump:
            assert dump.metadata.page_size == 1024
            assert dump.read_bytes(0, 8 * PAGE) == mem.read_bytes(0, 8 * PAGE)
        with pytest.raises(ValueError, match="block_size"):
            write_kdump(mem, tmp_path / "x", block_size=3000)
        with pytest.raises(ValueError, match="unknown compression"):
            write_kdump(mem, tmp_path / "x", compression="bzip2")
    with pytest.raises(ValueError, match="empty"):
        write_kdump(GuestMemoryMmap(), tmp_path / "x")


def test_open_dump_and_write_dump(tmp_path):
    mem, pieces = sample_memory([(0, 2 * PAGE), (0x100000, PAGE)], 2)
    with mem:
        write_dump(mem, tmp_path / "a.kdump", "kdump")
        write_dump(mem, tmp_path / "f.kdump", "kdump-flattened", compression="none")
    for name, flat in (("a.kdump", False), ("f.kdump", True)):
        with open_dump(tmp_path / name, cache_pages=2) as dump:
            assert isinstance(dump, KdumpMemory)
            assert dump.metadata.extra["flattened"] is flat
            assert_holds(dump, pieces)


# --- every read path against the model ----------------------------------------------------
def expect(model, addr, n):
    """``(bytes, error)`` a read of ``n`` bytes at ``addr`` gives."""
    got = model.backed(addr, n)
    if not got:
        return None, InvalidGuestAddressError
    return model.bytes(addr, got), (None if got == n else PartialBufferError)


@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_read_paths_against_the_model(holey, data):
    mem, model = holey
    addr = data.draw(st.sampled_from(model.points()) | st.integers(0, 0x22000))
    n = data.draw(st.sampled_from([1, 2, 7, 8, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE]))
    want, error = expect(model, addr, n)
    # read / read_slice / read_bytes
    buf = bytearray(b"?" * n)
    if error is InvalidGuestAddressError:
        with pytest.raises(InvalidGuestAddressError) as exc:
            mem.read(buf, addr)
        assert exc.value.addr == addr
    else:
        assert mem.read(buf, addr) == len(want)
        assert bytes(buf[: len(want)]) == want
    if error is None:
        assert mem.read_bytes(addr, n) == want
    else:
        with pytest.raises(error):
            mem.read_slice(bytearray(n), addr)
    # streams
    sink = io.BytesIO()
    if error is InvalidGuestAddressError:
        with pytest.raises(InvalidGuestAddressError):
            mem.write_volatile_to(addr, sink, n)
    else:
        assert mem.write_volatile_to(addr, sink, n) == len(want)
        assert sink.getvalue() == want
        sink = io.BytesIO()
        if error is None:
            mem.write_all_volatile_to(addr, sink, n)
        else:
            with pytest.raises(PartialBufferError):
                mem.write_all_volatile_to(addr, sink, n)
        assert sink.getvalue() == want
    # slices
    if error is InvalidGuestAddressError:
        with pytest.raises(InvalidGuestAddressError):
            next(mem.get_slices(addr, n))
    else:
        got = b"".join(s.as_array().tobytes() for s in mem.get_slices(addr, n).stop_on_error())
        assert got == want
    # objects of several sizes
    for dtype in ("<u2", "<u8", "<f4", np.dtype([("a", "<u4"), ("b", "u1")])):
        size = np.dtype(dtype).itemsize
        w, e = expect(model, addr, size)
        if e is None:  # (compared as bytes; a NaN read as a Python float may come back quiet)
            got = np.asarray(mem.read_obj(addr, dtype), dtype)
            assert got.tobytes() == w or (got.dtype.kind == "f" and np.isnan(got))
            values, valid = mem.read_objs([addr], dtype, holes="mask")
            assert valid.tolist() == [True] and values.tobytes() == w
        else:
            with pytest.raises(e):
                mem.read_obj(addr, dtype)
            values, valid = mem.read_objs([addr], dtype, holes="mask")
            assert valid.tolist() == [False] and values.view(np.uint8).tolist() == [0] * size
            with pytest.raises(InvalidGuestAddressError) as exc:
                mem.read_objs([addr], dtype)
            assert exc.value.addr == addr + model.backed(addr, size)
    assert mem.check_range(addr, n) is (error is None)
    assert mem.address_in_range(addr) is (error is not InvalidGuestAddressError)


def test_loads_and_region_paths(holey):
    mem, model = holey
    for addr in (0, 8, PAGE - 8, 0x5FF8, 0x6000, 0x8FF8, 0xA000, 0x20000):
        value = int.from_bytes(model.bytes(addr, 8), "little")
        assert mem.load(addr, "=u8") == value
        assert mem.read_obj(npguest.GuestAddress(addr), "<u8") == value
    with pytest.raises(InvalidGuestAddressError):
        mem.load(PAGE, "=u8")  # excluded
    with pytest.raises(InvalidBackendAddressError):
        mem.load(4, "=u8")  # misaligned
    region = mem.find_region(0x7000)
    assert isinstance(region, KdumpRegion)
    assert (int(region.start_addr()), region.len()) == (0x5000, 6 * PAGE)  # joined runs
    assert region.read_bytes(0x10, 0x20) == model.bytes(0x5010, 0x20)
    assert region.read_obj(0x1FFC, "<u8") == int.from_bytes(model.bytes(0x6FFC, 8), "little")
    assert region.load(0x2000, "=u4") == int.from_bytes(model.bytes(0x7000, 4), "little")
    assert region.get_slice(0xFF0, 0x20).as_array().tobytes() == model.bytes(0x5FF0, 0x20)
    assert region.write_volatile_to(0x3000, io.BytesIO(), 0x2000) == 0x1000  # stops at 0x9000
    with pytest.raises(InvalidBackendAddressError, match="excluded"):
        region.read_bytes(0x4000, 1)  # 0x9000
    with pytest.raises(InvalidBackendAddressError):
        region.get_slice(0x3000, 0x2000)
    with pytest.raises(InvalidBackendAddressError):
        region.read_bytes(6 * PAGE, 1)
    with pytest.raises(PartialBufferError):
        region.read_bytes(0x3000, 0x2000)
    assert region.write_volatile_to(6 * PAGE, io.BytesIO(), 5) == 0  # (at the end: nothing)
    with pytest.raises(InvalidBackendAddressError):
        region.write_all_volatile_to(5 * PAGE, io.BytesIO(), 2 * PAGE)
    sink = io.BytesIO()
    region.write_all_volatile_to(0, sink, 0x1000)
    assert sink.getvalue() == model.bytes(0x5000, 0x1000)


def test_get_slice_try_access_locate(holey):
    mem, model = holey
    s = mem.get_slice(0x5FF0, 0x1010)
    assert s.as_array().tobytes() == model.bytes(0x5FF0, 0x1010)
    assert not s.is_writable()
    with pytest.raises(ReadOnlyMemoryError):
        s.write_slice(b"x", 0)
    with pytest.raises(InvalidGuestAddressError) as exc:
        mem.get_slice(0x8F00, 0x200)
    assert exc.value.addr == 0x9000
    with pytest.raises(InvalidBackendAddressError):
        mem.get_slice(0x20000, PAGE + 1)
    assert len(mem.get_slice(0x20000, 0)) == 0
    seen = []

    def f(done, length, offset, region):
        seen.append((done, length, int(offset), int(region.start_addr())))
        return length

    assert mem.try_access(0x6000, 0x5000, f) == 0x4000  # up to the excluded page at 0x9000
    assert seen == [(0, 0x4000, 0, 0x5000)]
    with pytest.raises(InvalidGuestAddressError):
        mem.try_access(8, PAGE, f)
    assert mem.try_access(0, PAGE, f) == 0
    idx, off = mem.locate([0, PAGE, 0x9000, 0x9008, 0x5004, 0x30000], strict=False)
    assert idx.tolist() == [0, -1, -1, -1, 1, -1]
    assert off.tolist() == [0, 0, 0, 0, 4, 0]
    with pytest.raises(InvalidGuestAddressError) as exc:
        mem.locate([0, 0x9008])
    assert exc.value.addr == 0x9008
    assert mem.check_address(PAGE) is None and int(mem.check_address(0)) == 0
    assert mem.checked_offset(0, PAGE) is None and int(mem.checked_offset(0, 8)) == 8
    mem.mark_dirty(0, 8)
    with pytest.raises(PartialBufferError):
        mem.mark_dirty(0, 2 * PAGE)


def test_read_objs_batches(holey):
    mem, model = holey
    rng = np.random.default_rng(0)
    addrs = rng.integers(0, 0x22000, 5000, dtype=np.uint64).reshape(50, 100)
    for dtype in ("<u8", "<u4", np.dtype([("x", "<u8"), ("y", "<u8")]), np.dtype("V5000")):
        size = np.dtype(dtype).itemsize
        values, valid = mem.read_objs(addrs, dtype, holes="mask")
        zeroed = mem.read_objs(addrs, dtype, holes="zero")
        assert values.shape == zeroed.shape == valid.shape == addrs.shape
        for a, v, ok, z in zip(
            addrs.ravel().tolist(), values.ravel(), valid.ravel().tolist(), zeroed.ravel(),
            strict=True,
        ):  # fmt: skip
            assert ok is (model.backed(a, size) == size)
            want = np.frombuffer(model.bytes(a, size), dtype)[0] if ok else np.zeros((), dtype)
            assert v.tobytes() == z.tobytes() == np.asarray(want).tobytes()
    values, valid = mem.read_objs(addrs, "<u8", holes="mask")
    assert mem.read_objs(addrs[valid], "<u8").tolist() == values[valid].tolist()
    with pytest.raises(ValueError, match="holes"):
        mem.read_objs([0], "<u8", holes="nan")
    assert mem.read_objs([], "<u8").shape == (0,)


# --- excluded pages -------------------------------------------------------------------------
def test_excluded_pages_are_holes(holey):
    mem, model = holey
    assert_excluded(mem, EXCLUDED)
    assert layout_of(mem) == [(0, 3 * PAGE), (0x5000, 6 * PAGE), (0x20000, PAGE)]
    assert mem.metadata.extra["dumped_pages"] == 10 - 2
    with pytest.raises(InvalidGuestAddressError) as exc:
        mem.read_bytes(PAGE + 5, 1)
    assert exc.value.addr == PAGE + 5
    buf = bytearray(PAGE)
    assert mem.read(buf, PAGE - 8) == 8  # partial: up to the excluded page
    with pytest.raises(PartialBufferError) as exc:
        mem.read_slice(bytearray(PAGE), PAGE - 8)
    assert (exc.value.expected, exc.value.completed) == (PAGE, 8)
    assert mem.read_bytes(2 * PAGE, PAGE) == model.bytes(2 * PAGE, PAGE)


def test_excluded_pages_survive_kdump_to_kdump(tmp_path, holey):
    mem, model = holey
    write_kdump(mem, tmp_path / "again.kdump", flattened=True, compression="none")
    with open_kdump(tmp_path / "again.kdump") as again:
        assert_excluded(again, EXCLUDED)
        assert layout_of(again) == layout_of(mem)
        assert_holds(again, model.runs)
    chunks = dict(mem.region_chunks(chunk=0x3000))
    assert chunks[0].tobytes() == model.bytes(0, PAGE) + bytes(PAGE) + model.bytes(2 * PAGE, PAGE)


# --- header variants ----------------------------------------------------------------------
@pytest.mark.parametrize(("bits", "order"), [(32, "<"), (32, ">"), (64, ">")])
def test_header_variants(tmp_path, bits, order):
    machine = "i686" if bits == 32 else "ppc64"
    source, pieces = sample_dump([(0, 3 * PAGE), (0x10000, PAGE)], 5, machine=machine)
    with source:
        notes = (*cpu_notes([CpuState(0, {"rip": 0x1234})], order), vmcoreinfo_note({"A": "1"}))
        kdump._write_kdump(source, tmp_path / "v", True, "zlib", None, notes, PAGE, bits, order)
    with open_kdump(tmp_path / "v") as dump:
        assert dump.metadata.extra["header_bits"] == bits
        assert dump.metadata.extra["endianness"] == ("little" if order == "<" else "big")
        assert dump.metadata.machine == machine
        assert dump.metadata.vmcoreinfo == {"A": "1"}
        assert len(dump.metadata.notes) == 3
        if bits == 32:  # i686: the x86 notes are decoded
            assert dump.metadata.cpus[0].registers["rip"] == 0x1234
        assert_holds(dump, pieces)


def test_diskdump_signature_and_old_header_versions(tmp_path):
    notes = (*cpu_notes([CpuState(0, {"cr3": 0x9000})]), vmcoreinfo_note({"OSRELEASE": "6.1"}))
    path, model = dump_of(tmp_path, [(0, 2 * PAGE), (0x4000, PAGE)], 1, notes=notes)
    blob = bytearray(path.read_bytes())
    for signature, version, has_notes, has_info in [
        (b"DISKDUMP", 6, True, True),
        (b"KDUMP   ", 5, True, True),
        (b"KDUMP   ", 4, True, True),
        (b"KDUMP   ", 3, False, True),  # VMCOREINFO text only
        (b"KDUMP   ", 1, False, False),
        (b"KDUMP   ", 0, False, False),  # no sub-header
    ]:
        blob[0:8] = signature
        blob[8:12] = struct.pack("<i", version)
        path.write_bytes(blob)
        with open_kdump(path) as dump:
            assert dump.metadata.extra["signature"] == signature.decode()
            assert dump.metadata.extra["header_version"] == version
            assert (dump.metadata.cr3 == 0x9000) is has_notes
            assert ("OSRELEASE" in dump.metadata.vmcoreinfo) is has_info
            assert_holds(dump, model.runs)


def test_single_bitmap_and_split_dumps(tmp_path):
    path, model = dump_of(tmp_path, [(0, 4 * PAGE)], 1)
    blob = bytearray(path.read_bytes())
    block = plain_offsets(blob)[0]
    # max_mapnr_64 larger than half the bitmap: libkdumpfile reads one bitmap for both
    struct.pack_into("<Q", blob, block + 96, 8 * PAGE + 1)
    path.write_bytes(blob)
    with open_kdump(path) as dump:
        assert dump.metadata.extra["bitmaps"] == 1
        assert_holds(dump, model.runs)
    # one file of a --split set: pages outside [start_pfn_64, end_pfn_64) are elsewhere
    blob = bytearray(path.read_bytes())
    struct.pack_into("<Q", blob, block + 96, 4)
    struct.pack_into("<i", blob, block + 12, 1)  # split
    struct.pack_into("<QQ", blob, block + 80, 1, 3)  # pages 1 and 2
    blob[2 * block + PAGE] = 0b0110  # 2nd bitmap
    *_, desc_base = plain_offsets(blob)  # drop page 0's descriptor
    blob[desc_base : desc_base + 48] = blob[desc_base + 24 : desc_base + 72]
    path.write_bytes(blob)
    with open_kdump(path) as dump:
        assert_excluded(dump, ((0, PAGE), (3 * PAGE, PAGE)))
        assert dump.read_bytes(PAGE, 2 * PAGE) == model.bytes(PAGE, 2 * PAGE)


# --- flattened files ------------------------------------------------------------------------
def test_flattened_records_in_any_order(tmp_path):
    path, model = dump_of(tmp_path, [(0, 6 * PAGE), (0x10000, 2 * PAGE)], 4, flattened=True)
    recs = records(path.read_bytes())
    pieces = []
    for offset, data in recs:  # split every record in three
        a, b = len(data) // 3, 2 * len(data) // 3
        pieces += [(offset, data[:a]), (offset + a, data[a:b]), (offset + b, data[b:])]
    pieces = [(o, d) for o, d in pieces if d]
    order = np.random.default_rng(0).permutation(len(pieces)).tolist()
    shuffled = [pieces[i] for i in order]
    garbage = [(o, b"\xa5" * len(d)) for o, d in pieces[:4]]  # overwritten by later records
    (tmp_path / "s.kdump").write_bytes(flattened(garbage + shuffled))
    with open_kdump(tmp_path / "s.kdump") as dump:
        assert dump.metadata.extra["flattened"] is True
        assert_holds(dump, model.runs)
    # the same plain file, reassembled
    plain = bytearray(max(o + len(d) for o, d in recs))
    for o, d in recs:
        plain[o : o + len(d)] = d
    (tmp_path / "p.kdump").write_bytes(plain)
    with open_kdump(tmp_path / "p.kdump") as dump:
        assert_holds(dump, model.runs)


def test_overlapping_records_last_wins(tmp_path):
    src = kdump._Source.__new__(kdump._Source)
    src._set_segments(
        np.array([0, 10, 5, 0, 100], dtype=np.int64),
        np.array([20, 5, 10, 3, 1], dtype=np.int64),
        np.array([1000, 2000, 3000, 4000, 5000], dtype=np.int64),
    )
    segments = list(zip(src._starts, src._ends, src._flats, strict=True))
    assert segments == [(0, 3, 4000), (3, 5, 1003), (5, 15, 3000), (15, 20, 1015),
                        (100, 101, 5000)]  # fmt: skip
    assert src.size == 101


# --- writes are refused --------------------------------------------------------------------
def test_writes_are_refused(tmp_path, holey):
    mem, _ = holey
    for write in (
        lambda: mem.write(b"x", 0),
        lambda: mem.write_slice(b"xy", 8),
        lambda: mem.write_obj(1, 0, "<u8"),
        lambda: mem.store(1, 8, "=u8"),
        lambda: mem.write_objs([1, 2], [0, 8], "<u8"),
        lambda: mem.read_volatile_from(0, io.BytesIO(b"abc"), 3),
        lambda: mem.read_exact_volatile_from(0, io.BytesIO(b"abc"), 3),
        lambda: mem.find_region(0).write(b"x", 0),
        lambda: mem.find_region(0).store(1, 0, "=u4"),
    ):
        with pytest.raises(ReadOnlyMemoryError) as exc:
            write()
        assert any("convert" in note for note in exc.value.__notes__)
    with pytest.raises(InvalidGuestAddressError):
        mem.write(b"x", PAGE)  # excluded: not backed, as for any hole
    with pytest.raises(InvalidGuestAddressError):
        mem.write_objs([1], [PAGE], "<u8")
    assert mem.write(b"", 0) == 0
    mem.write_objs([], [], "<u8")
    with pytest.raises(ReadOnlyMemoryError):
        open_kdump(mem.metadata.path, writable=True)
    with pytest.raises(ReadOnlyMemoryError):
        open_dump(mem.metadata.path, writable=True)
    with pytest.raises(RegionCollectionError):
        mem.insert_region(npguest.GuestRegionMmap.from_range(0x100000, PAGE))
    with pytest.raises(RegionCollectionError):
        mem.remove_region(0, 3 * PAGE)


def test_no_path_hands_out_placeholder_memory(tmp_path):
    mem = GuestMemoryMmap.from_ranges([(0, 0x40000)])
    with mem:
        mem.write_slice(np.arange(0x40000 // 8, dtype="<u8"), 0)
        write_kdump(mem, tmp_path / "n.kdump")
        expected = mem.read_bytes(0, 0x40000)
    with open_kdump(tmp_path / "n.kdump") as dump:
        region = dump.find_region(0)
        for refuse in (
            lambda: dump.get_host_address(8),
            lambda: region.get_host_address(8),
            region.as_array,
            region.get_mmap,
        ):
            with pytest.raises(HostAddressNotAvailableError):
                refuse()
        with pytest.raises(InvalidGuestAddressError):
            dump.get_host_address(0x40000)
        assert region.as_volatile_slice().as_array().tobytes() == expected
        assert region.get_slice(8, 8).as_array().tobytes() == expected[8:16]
        assert b"".join(c.tobytes() for _, c in dump.region_chunks(chunk=0x10000)) == expected
        # the writers' helper streams the decompressed bytes through the memory's own method
        assert b"".join(c.tobytes() for _, c in region_chunks(dump, 0x10000)) == expected
        assert dump._table.hosts.tolist() == [0] and dump._table.lens.tolist() == [0]
        # IommuMemory's one-call copy must not read the placeholder (it falls back)
        iommu = IotlbIommu()
        iommu.iotlb.set_mapping(1 << 40, 0, 0x40000, Permissions.READ)
        assert IommuMemory(dump, iommu).read_bytes(1 << 40, 0x40000) == expected
        assert (
            IommuMemory(dump, iommu, use_iommu=False).read_bytes(0x100, 0x20000)
            == (expected[0x100:0x20100])
        )


def test_close(tmp_path):
    path, _ = dump_of(tmp_path, [(0, 2 * PAGE)], 0)
    dump = open_kdump(path)
    region = dump.find_region(0)
    it = dump.get_slices(0, 2 * PAGE)
    dump.close()
    assert dump.num_regions() == 0 and dump.cache_size == 0
    with pytest.raises(InvalidGuestAddressError):
        dump.read_bytes(0, 1)
    with pytest.raises(InvalidGuestAddressError):
        next(it)
    with pytest.raises(npguest.errors.MmapRegionError):
        region.read_bytes(0, 1)
    dump.close()  # twice is fine
    with pytest.raises(npguest.errors.MmapRegionError):
        open_kdump(tmp_path / "missing")
    with pytest.raises(ValueError, match="cache_pages"):
        open_kdump(path, cache_pages=-1)


# --- the cache and threads -----------------------------------------------------------------
def test_cache_is_bounded_and_shares_the_zero_page(tmp_path):
    mem = GuestMemoryMmap.from_ranges([(0, 64 * PAGE)])
    with mem:
        mem.write_slice(b"\x01" * PAGE, 5 * PAGE)
        write_kdump(mem, tmp_path / "z.kdump")
    with open_kdump(tmp_path / "z.kdump", cache_pages=8) as dump:
        dump.read_bytes(0, 64 * PAGE)  # 63 zero pages and one other
        assert dump.cache_size == 2
    path, model = dump_of(tmp_path, [(0, 64 * PAGE)], 2)
    for cap in (0, 1, 8):
        with open_kdump(path, cache_pages=cap) as dump:
            for addr in np.random.default_rng(cap).integers(0, 64 * PAGE, 200).tolist():
                n = min(3 * PAGE, 64 * PAGE - addr)
                assert dump.read_bytes(addr, n) == model.bytes(addr, n)
                assert dump.cache_size <= cap
            dump.read_bytes(0, 64 * PAGE)
            assert dump.cache_size == cap
            dump.read_objs(np.arange(0, 64 * PAGE, 8), "<u8")
            assert dump.cache_size == cap


def test_threads_read_concurrently(tmp_path):
    path, model = dump_of(tmp_path, [(0, 96 * PAGE), (0x100000, 32 * PAGE)], 6)
    errors = []
    with open_kdump(path, cache_pages=16) as dump:

        def work(seed):
            rng = np.random.default_rng(seed)
            try:
                for _ in range(60):
                    gpa, data = model.runs[int(rng.integers(0, 2))]
                    off = int(rng.integers(0, len(data)))
                    n = int(rng.integers(1, min(len(data) - off, 40 * PAGE) + 1))
                    assert dump.read_bytes(gpa + off, n) == data[off : off + n]
                    a = gpa + rng.integers(0, len(data) // 8, 50) * 8
                    got = dump.read_objs(a, "<u8")
                    assert got.tolist() == [int.from_bytes(model.bytes(x, 8), "little") for x in a]
                    assert dump.cache_size <= 16
            except Exception as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors


# --- compression ---------------------------------------------------------------------------
def fake_lzo():
    """A stand-in for python-lzo with its call contract: ``decompress(data, False, size)``."""
    module = types.ModuleType("lzo")

    def compress(data, level, header):
        assert (level, header) == (1, False)
        return b"L" + zlib.compress(data)

    def decompress(data, header, size):
        assert header is False and data[:1] == b"L"
        out = zlib.decompress(data[1:])
        assert len(out) <= size
        return out

    module.compress, module.decompress = compress, decompress
    return module


@pytest.mark.parametrize("compression", ["zlib", "snappy", "zstd", "lzo", "none"])
def test_codecs(tmp_path, monkeypatch, compression):
    if compression == "lzo":
        monkeypatch.setitem(sys.modules, "lzo", fake_lzo())
    elif compression == "snappy" and not any(map(importlib.util.find_spec, ("snappy", "cramjam"))):
        pytest.skip("python-snappy is not installed")
    elif compression == "zstd":
        pytest.importorskip("zstandard")
    mem = GuestMemoryMmap.from_ranges([(0, 8 * PAGE)])
    with mem:
        mem.write_slice(b"compress me, " * (4 * PAGE // 13), PAGE)
        mem.write_slice(np.random.default_rng(0).bytes(PAGE), 6 * PAGE)  # stays raw
        write_kdump(mem, tmp_path / "c.kdump", compression=compression)
        expected = mem.read_bytes(0, 8 * PAGE)
    flags = {"zlib": 1, "lzo": 2, "snappy": 4, "zstd": 0x20, "none": 0}[compression]
    blob = (tmp_path / "c.kdump").read_bytes()
    *_, desc_base = plain_offsets(blob)
    descs = [struct.unpack_from("<QIIQ", blob, desc_base + 24 * i) for i in range(8)]
    assert {d[2] for d in descs} == ({0, flags} if flags else {0})
    assert HEADER64.unpack_from(blob)[4] == flags
    with open_kdump(tmp_path / "c.kdump") as dump:
        assert dump.read_bytes(0, 8 * PAGE) == expected
        assert dump.metadata.extra["compression"] == (
            () if compression == "none" else (compression,)
        )


def test_missing_codec_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lzo", fake_lzo())
    mem = GuestMemoryMmap.from_ranges([(0, 2 * PAGE)])
    with mem:
        mem.write_slice(b"a" * PAGE, PAGE)
        write_kdump(mem, tmp_path / "l.kdump", compression="lzo")
    monkeypatch.setitem(sys.modules, "lzo", None)
    with pytest.warns(RuntimeWarning, match="pip install python-lzo"):
        dump = open_kdump(tmp_path / "l.kdump")
    with dump:
        assert "lzo" in dump.metadata.extra["missing_codecs"]
        assert dump.read_bytes(0, PAGE) == bytes(PAGE)  # the zero page needs no codec
        with pytest.raises(DumpFormatError, match="pip install python-lzo") as exc:
            dump.read_bytes(PAGE, 1)
        assert exc.value.field == "page_desc[1] (pfn 0x1) flags"
    with mem, pytest.raises(ValueError, match="pip install python-lzo"):
        write_kdump(GuestMemoryMmap.from_ranges([(0, PAGE)]), tmp_path / "x", compression="lzo")
    for module in ("snappy", "cramjam", "zstandard"):
        monkeypatch.setitem(sys.modules, module, None)
    for name, package in (("snappy", "python-snappy"), ("zstd", "zstandard")):
        with pytest.raises(ValueError, match=f"pip install {package}"):
            write_kdump(GuestMemoryMmap.from_ranges([(0, PAGE)]), tmp_path / "x", compression=name)


# --- notes and metadata --------------------------------------------------------------------
def test_notes_cpus_and_vmcoreinfo(tmp_path):
    info = {"OSRELEASE": "6.8.0", "NUMBER(phys_base)": "16777216"}
    notes = (*cpu_notes([CpuState(0, {"cr3": 0x1000}), CpuState(1, {"rip": 7})]),
             vmcoreinfo_note(info))  # fmt: skip
    path, _ = dump_of(tmp_path, [(0, 2 * PAGE)], 0, notes=notes, flattened=True)
    with open_kdump(path) as dump:
        meta = dump.metadata
        assert [n.name for n in meta.notes] == ["CORE", "CORE", "QEMU", "QEMU", "VMCOREINFO"]
        assert meta.cr3 == 0x1000 and meta.cpus[1].registers["rip"] == 7
        assert meta.vmcoreinfo == info
        assert meta.extra["phys_base"] == 16777216 and meta.extra["nr_cpus"] == 2
        store = dump._store
        text = store.src.read(meta.extra["offset_vmcoreinfo"], meta.extra["size_vmcoreinfo"], "")
        assert text == notes[-1].desc
        write_kdump(dump, tmp_path / "copy.kdump")  # notes go along by default
    with open_kdump(tmp_path / "copy.kdump") as copy:
        assert copy.metadata.notes == meta.notes and copy.metadata.vmcoreinfo == info


# --- bad files -----------------------------------------------------------------------------
def small_blob(tmp_path, **options):
    path, _ = dump_of(tmp_path, [(0, 3 * PAGE), (0x8000, PAGE)], 7, name="small", **options)
    return path.read_bytes()


def corrupt(blob, at, data):
    out = bytearray(blob)
    out[at : at + len(data)] = data
    return bytes(out)


def test_header_errors(tmp_path):
    blob = small_blob(tmp_path, notes=(vmcoreinfo_note({"A": "b"}),))
    block, _, _, desc_base = plain_offsets(blob)
    split = bytearray(corrupt(blob, block + 12, struct.pack("<i", 1)))
    struct.pack_into("<QQ", split, block + 80, 3, 1)  # start_pfn_64 > end_pfn_64
    cases = [
        (blob[:5], "signature", 0),
        (corrupt(blob, 0, b"KDUMPXXX"), "signature", 0),
        (blob[:300], "header", 0),
        (corrupt(blob, 428, struct.pack("<i", 3000)), "block_size", 428),
        (corrupt(blob, 8, struct.pack("<i", -1)), "header_version", 8),
        (corrupt(blob, 432, struct.pack("<i", 0)), "sub_hdr_size", 432),
        (corrupt(blob, 436, struct.pack("<I", 0)), "bitmap_blocks", 436),
        (corrupt(blob, 436, struct.pack("<I", 1000)), "bitmap_blocks", 436),
        (corrupt(blob, 440, struct.pack("<I", 1 << 30)), "max_mapnr", 440),
        (corrupt(blob, block + 96, struct.pack("<Q", 0)), "max_mapnr", block + 96),
        (bytes(split), "start_pfn_64", block + 80),
        (corrupt(blob, block + 40, struct.pack("<Q", 1 << 30)), "size_vmcoreinfo", block + 40),
        (corrupt(blob, block + 32, struct.pack("<Q", 1 << 40)), "offset_vmcoreinfo", 1 << 40),
        (corrupt(blob, block + 56, struct.pack("<Q", 1 << 20)), "offset_note", block + 48),
        (blob[: desc_base + 24 * 3], "page_desc", desc_base),
        (corrupt(blob, 2 * block, bytes(2)), "1st bitmap", 2 * block),
    ]
    for data, field, offset in cases:
        (tmp_path / "bad").write_bytes(data)
        with pytest.raises(DumpFormatError) as exc:
            open_kdump(tmp_path / "bad")
        assert exc.value.field == field, (field, str(exc.value))
        assert exc.value.offset == offset, (field, str(exc.value))
        assert f"{offset:#x}" in str(exc.value)


def test_flattened_errors(tmp_path):
    blob = small_blob(tmp_path, flattened=True)
    first = 4096
    cases = [
        (blob[:4000], "flattened header", 0),
        (corrupt(blob, 16, struct.pack(">q", 2)), "flattened header type", 16),
        (corrupt(blob, 24, struct.pack(">q", 7)), "flattened header version", 24),
        (corrupt(blob, first, struct.pack(">q", -5)), "flattened record offset", first),
        (corrupt(blob, first + 8, struct.pack(">q", -5)), "flattened record size", first + 8),
        (corrupt(blob, first + 8, struct.pack(">q", 1 << 40)), "flattened record size", first + 8),
        (blob[:-16], "flattened record", len(blob) - 16),
        (flattened([(0, b"KDUMP   ")]), "header", 0),
    ]
    plain = bytearray(small_blob(tmp_path))  # a far record: a huge plain file, a small one
    struct.pack_into("<I", plain, 436, 1 << 21)  # bitmap_blocks
    struct.pack_into("<Q", plain, PAGE + 96, 1 << 30)  # max_mapnr_64
    far = flattened([(0, bytes(plain[: 2 * PAGE])), (1 << 40, b"x")])
    cases.append((far, "1st bitmap", 2 * PAGE))  # 128 MiB of bitmap from a 12 KiB file
    blob = small_blob(tmp_path)  # a sub-header no record holds reads as zeros
    cases.append((flattened([(0, blob[:464]), (len(blob) - 1, b"\0")]), "max_mapnr", PAGE + 96))
    for data, field, offset in cases:
        (tmp_path / "bad").write_bytes(data)
        with pytest.raises(DumpFormatError) as exc:
            open_kdump(tmp_path / "bad")
        assert exc.value.field == field, (field, str(exc.value))
        if offset is not None:
            assert exc.value.offset == offset, (field, str(exc.value))


def test_page_descriptor_errors(tmp_path):
    blob = small_blob(tmp_path)
    *_, desc_base = plain_offsets(blob)
    d = desc_base + 24  # page 1's descriptor
    offset, size, _, _ = struct.unpack_from("<QIIQ", blob, d)
    page = zlib.compress(b"x" * PAGE)
    short = zlib.compress(b"x" * (PAGE - 1))
    cases = [
        (struct.pack("<QIIQ", offset, size, 0x40, 0), "flags", d + 12, "unknown"),
        (struct.pack("<QIIQ", offset, PAGE - 1, 0, 0), "size", d + 8, "raw"),
        (struct.pack("<QIIQ", offset, 0, 1, 0), "size", d + 8, "out of range"),
        (struct.pack("<QIIQ", offset, 3 * PAGE, 1, 0), "size", d + 8, "out of range"),
        (struct.pack("<QIIQ", len(blob) - 8, PAGE, 0, 0), "offset", d, "past the end"),
        (struct.pack("<QIIQ", 1 << 63, 16, 1, 0), "offset", d, "past the end"),
        (struct.pack("<QIIQ", offset, 100, 1, 0), "", d, "does not decompress"),
        (struct.pack("<QIIQ", offset, 100, 0x20, 0), "", d, "zstd"),
    ]
    for desc, name, at, reason in cases:
        if "zstd" in reason and not importlib.util.find_spec("zstandard"):
            continue
        with open_kdump_blob(tmp_path, corrupt(blob, d, desc)) as dump:
            assert dump.read_bytes(0, PAGE) is not None  # page 0 is fine
            with pytest.raises(DumpFormatError, match=reason) as exc:
                dump.read_bytes(PAGE + 5, 1)
            want = "page_desc[1] (pfn 0x1)" + (f" {name}" if name else "")
            assert (exc.value.field, exc.value.offset) == (want, at)
            with pytest.raises(DumpFormatError):
                dump.read_objs([PAGE], "<u8", holes="zero")
    # decompressed size != block size, a cut stream, trailing bytes after the stream
    long = zlib.compress(b"x" * (PAGE + 1))
    for data, reason in (
        (short, "to 4095 bytes, not the block size"),
        (long, "inflates to more than the block size"),
        (page[:-2], "truncated"),
        (page + b"junk", None),
        (page, None),
    ):
        tail = len(blob)
        bad = corrupt(blob, d, struct.pack("<QIIQ", tail, len(data), 1, 0)) + data
        with open_kdump_blob(tmp_path, bad) as dump:
            if reason is None:
                assert dump.read_bytes(PAGE, PAGE) == b"x" * PAGE
                continue
            with pytest.raises(DumpFormatError, match=reason) as exc:
                dump.read_bytes(PAGE, 1)
            assert exc.value.offset == d


def open_kdump_blob(tmp_path, blob):
    (tmp_path / "bad").write_bytes(blob)
    return open_kdump(tmp_path / "bad")


def test_errors_pickle(tmp_path):
    import pickle

    blob = small_blob(tmp_path)
    with pytest.raises(DumpFormatError) as exc:
        open_kdump_blob(tmp_path, blob[:100])
    again = pickle.loads(pickle.dumps(exc.value))
    assert str(again) == str(exc.value) and again.field == "header"


# --- fuzzing -------------------------------------------------------------------------------
class Backed:
    """A kdump memory seen as its backed runs (regions less excluded pages), for
    :func:`read_everything`, which reads every byte of ``starts``..``ends``."""

    def __init__(self, mem):
        self.mem = mem
        runs = Model([(int(r.start_addr()), bytes(r.len())) for r in mem.iter()],
                     mem.metadata.excluded.tolist()).runs  # fmt: skip
        self.starts = np.array([gpa for gpa, _ in runs], dtype=np.uint64)
        self.ends = np.array([gpa + len(d) for gpa, d in runs], dtype=np.uint64)

    def read_slice(self, buf, addr):
        self.mem.read_slice(buf, addr)

    def close(self):
        self.mem.close()


def open_backed(path):
    """Open and read every backed byte: a bad page raises here, as a bad header does."""
    with warnings.catch_warnings():  # (a mutated status may name a missing codec)
        warnings.simplefilter("ignore", RuntimeWarning)
        mem = open_kdump(path, cache_pages=4)
    backed = Backed(mem)
    try:
        read_everything(backed)
    except BaseException:
        mem.close()
        raise
    return backed


def _fuzz_blobs():
    import tempfile
    from pathlib import Path

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        notes = (*cpu_notes([CpuState(0, {"cr3": 1})]), vmcoreinfo_note({"K": "v"}))
        for flat in (False, True):
            source, _ = sample_dump([(0, 2 * PAGE), (0x4000, PAGE)], excluded=((PAGE, PAGE),))
            with source:
                source.write_slice(b"abc" * 1000, 0x100)
                path = Path(tmp) / "f"
                write_kdump(source, path, flattened=flat, notes=notes)
                out.append(path.read_bytes())
    return out


_FUZZ_BLOBS = _fuzz_blobs()


def test_fuzz_blobs_are_good(tmp_path):
    for blob in _FUZZ_BLOBS:
        mem = assert_only_dump_errors(open_backed, blob, tmp_path / "good")
        assert mem is not None


@FUZZ
@given(which=st.integers(0, len(_FUZZ_BLOBS) - 1), data=st.data())
def test_fuzz_only_dump_errors(tmp_path, which, data):
    blob = data.draw(mutations(_FUZZ_BLOBS[which]))
    assert_only_dump_errors(open_backed, blob, tmp_path / "fuzz.kdump")


def test_read_everything_helper_sees_holes(holey):
    mem, _ = holey
    with pytest.raises(PartialBufferError):
        read_everything(mem)  # (why the fuzz reads through Backed)


# --- the corners -----------------------------------------------------------------------------
def test_reads_in_many_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(kdump, "READ_BATCH", 3)  # the next batch decompresses meanwhile
    monkeypatch.setattr(kdump, "PARALLEL_MIN", 2)
    path, model = dump_of(tmp_path, [(0, 40 * PAGE), (0x80000, 9 * PAGE)], 8, excluded=EXCLUDED)
    with open_kdump(path, cache_pages=5) as dump:
        for gpa, data in model.runs:
            assert dump.read_bytes(gpa + 5, len(data) - 9) == data[5:-4]
            sink = io.BytesIO()
            dump.write_all_volatile_to(gpa, sink, len(data))
            assert sink.getvalue() == data
            slices = list(dump.get_slices(gpa, len(data)))
            assert b"".join(s.as_array().tobytes() for s in slices) == data
            assert max(len(s) for s in slices) <= 3 * PAGE
    blob = bytearray(path.read_bytes())
    *_, desc_base = plain_offsets(blob)
    struct.pack_into("<I", blob, desc_base + 24 * 20 + 12, 0x80)  # a bad page in a later batch
    with open_kdump_blob(tmp_path, bytes(blob)) as dump:
        with pytest.raises(DumpFormatError, match=r"page_desc\[20\] \(pfn 0x16\)"):
            dump.read_bytes(10 * PAGE, 30 * PAGE)  # (pages 1 and 9 are excluded)
        assert dump.read_bytes(10 * PAGE, 10 * PAGE) == model.bytes(10 * PAGE, 10 * PAGE)


def test_region_corners(tmp_path):
    path, _ = dump_of(tmp_path, [(0, 4 * PAGE)], 2)
    dump = open_kdump(path)
    region = dump.find_region(0)
    assert repr(region) == "KdumpRegion([0x0, 0x4000), 0x4000 bytes, ro)"
    with pytest.raises(InvalidBackendAddressError):
        region.write_volatile_to(4 * PAGE + 1, io.BytesIO(), 1)
    assert region.read_volatile_from(4 * PAGE, io.BytesIO(b"ab"), 2) == 0
    assert dump.read_volatile_from(0, io.BytesIO(b"ab"), 0) == 0
    assert dump.read(bytearray(), 0) == 0
    with pytest.raises(InvalidBackendAddressError, match="aligned"):
        region.load(4, "=u8")
    with pytest.raises(InvalidBackendAddressError):
        region.get_host_address(4 * PAGE)
    iommu = IotlbIommu()
    iommu.iotlb.set_mapping(0, 0, 4 * PAGE, Permissions.READ)
    assert IommuMemory(dump, iommu).read(bytearray(0), 8) == 0
    assert dump._pieces(8, 0) == []  # (the hook's contract: nothing, nothing checked)
    bad = [lambda *a: -1, lambda *a: 0, lambda d, n, o, r: n + 1]
    with pytest.raises(TypeError):
        dump.try_access(8, 0, bad[0])
    assert dump.try_access(8, 0, bad[1]) == 0
    with pytest.raises(npguest.errors.CallbackOutOfRangeError):
        dump.try_access(8, 0, bad[2])
    dump.close()
    for after in (
        lambda: region.write_volatile_to(0, io.BytesIO(), 1),
        lambda: region.get_slice(0, 0),
    ):
        with pytest.raises(npguest.errors.MmapRegionError):
            after()
    with pytest.raises(InvalidGuestAddressError):
        dump.read_objs([0], "<u8")


def test_machine_decides_an_ambiguous_header(tmp_path):
    source, pieces = sample_dump([(0, 4 * PAGE)], 3, machine="i686")
    with source:
        kdump._write_kdump(source, tmp_path / "a", False, "zlib", None, (), PAGE, 32, "<")
    blob = bytearray((tmp_path / "a").read_bytes())
    # make the 64-bit reading of the same bytes plausible too
    struct.pack_into("<III", blob, 428, PAGE, 1, 2)  # its block_size, sub_hdr_size, bitmap_blocks
    (tmp_path / "a").write_bytes(blob)
    with open_kdump(tmp_path / "a") as dump:
        assert dump.metadata.extra["header_bits"] == 32
        assert_holds(dump, pieces)
    assert [kdump._machine_bits(m) for m in ("", "x86_64", "i686", "armv7l", "riscv")] == [
        None, 64, 32, 32, None,
    ]  # fmt: skip
    with pytest.raises(DumpFormatError) as exc:
        open_kdump_blob(tmp_path, bytes(blob[:460]))  # room for a 32-bit header only
    assert (exc.value.field, exc.value.offset) == ("bitmap_blocks", 424)


def test_codec_corners(tmp_path, monkeypatch):
    pytest.importorskip("cramjam")
    monkeypatch.setitem(sys.modules, "snappy", None)  # cramjam's snappy then
    mem = GuestMemoryMmap.from_ranges([(0, 2 * PAGE)])
    with mem:
        mem.write_slice(b"snap" * (PAGE // 4), PAGE)
        write_kdump(mem, tmp_path / "s.kdump", compression="snappy")
    with open_kdump(tmp_path / "s.kdump") as dump:
        assert dump.read_bytes(PAGE, PAGE) == b"snap" * (PAGE // 4)
    blob = (tmp_path / "s.kdump").read_bytes()
    *_, desc_base = plain_offsets(blob)
    assert struct.unpack_from("<QIIQ", blob, desc_base + 24)[2] == 4  # snappy
    for data, reason in ((b"\xff" * 8, "does not decompress"), (b"\x05abcde", "declares 5")):
        bad = corrupt(blob, desc_base + 24, struct.pack("<QIIQ", len(blob), len(data), 4, 0))
        with (
            open_kdump_blob(tmp_path, bad + data) as dump,
            pytest.raises(DumpFormatError, match=reason),
        ):
            dump.read_bytes(PAGE, 1)
    zstandard = pytest.importorskip("zstandard")
    frame = zstandard.ZstdCompressor().compress(b"z" * 100)
    bad = corrupt(blob, desc_base + 24, struct.pack("<QIIQ", len(blob), len(frame), 0x20, 0))
    with (
        open_kdump_blob(tmp_path, bad + frame) as dump,
        pytest.raises(DumpFormatError, match="declares 100"),
    ):
        dump.read_bytes(PAGE, 1)


def test_more_file_corners(tmp_path, monkeypatch):
    with pytest.raises(DumpFormatError) as exc:
        open_kdump_blob(tmp_path, flattened([]))  # no record: an empty plain file
    assert exc.value.field == "signature"
    path, model = dump_of(tmp_path, [(0, 16 * PAGE)], 1, flattened=True)
    blob = path.read_bytes()
    recs = [(o + i, d[i : i + 13]) for o, d in records(blob) for i in range(0, len(d), 13)]
    with open_kdump_blob(tmp_path, flattened(recs)) as dump:  # descriptors split across records
        addrs = np.array([0, 8, 2 * PAGE + 16, 5 * PAGE, 9 * PAGE + 8, 15 * PAGE], np.uint64)
        want = [int.from_bytes(model.bytes(a, 8), "little") for a in addrs.tolist()]
        assert dump.read_objs(addrs[::-1], "<u8").tolist() == want[::-1]
    desc_at = next(o for o, d in records(blob) if len(d) == 16 * 24)
    bad = [(desc_at, struct.pack("<QIIQ", 1 << 40, PAGE, 0, 0))]
    with (
        open_kdump_blob(tmp_path, blob[:-16] + flattened(bad)[4096:]) as dump,
        pytest.raises(DumpFormatError, match="of the plain file the flattened records"),
    ):
        dump.read_bytes(0, 1)
    # a VMCOREINFO value that is not a number, address space that cannot be reserved
    notes = (vmcoreinfo_note({"NUMBER(phys_base)": "junk"}),)
    path, _ = dump_of(tmp_path, [(0, PAGE)], name="v", notes=notes)
    with open_kdump(path) as dump:
        assert dump.metadata.extra["phys_base"] == 0

    def refuse(*args, **kwargs):
        raise npguest.errors.MmapRegionError("no room")

    monkeypatch.setattr(kdump.MmapRegion, "anonymous", refuse)
    with pytest.raises(DumpFormatError, match="cannot reserve"):
        open_kdump(path)


@pytest.mark.parametrize("fmt", ["elf", "raw", "lime", "kdump-flattened"])
def test_convert_kdump_to_other_formats(tmp_path, fmt):
    mem, model = sample_memory([(0, 5 * PAGE), (0x100000, 3 * PAGE)], seed=9)
    with mem:
        write_kdump(mem, tmp_path / "in.kdump")
    with npguest.open_dump(tmp_path / "in.kdump") as dump:
        npguest.write_dump(dump, tmp_path / "out", fmt)
    options = {"layout": [(0, 5 * PAGE, 0), (0x100000, 3 * PAGE, 0x100000)]} if fmt == "raw" else {}
    with npguest.open_dump(tmp_path / "out", **options) as back:
        assert_holds(back, model)


# --- bounded resources ---------------------------------------------------------------------
@contextlib.contextmanager
def traced_peak():
    """Trace allocations; yield a function returning the peak (bytes) above the start."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()


def test_a_compression_bomb_inflates_no_further_than_a_page(tmp_path):
    block = 1 << 16
    mem = GuestMemoryMmap.from_ranges([(0, block)])
    with mem:
        write_kdump(mem, tmp_path / "b.kdump", block_size=block, compression="none")
    blob = (tmp_path / "b.kdump").read_bytes()
    *_, desc_base = plain_offsets(blob)
    z = zlib.compressobj(9)
    zeros = bytes(1 << 22)
    bombs = [(b"".join(z.compress(zeros) for _ in range(16)) + z.flush(), 1)]  # 64 MiB
    if importlib.util.find_spec("zstandard"):
        import zstandard

        c = zstandard.ZstdCompressor(write_content_size=False)  # (no size: nothing to check)
        bombs.append((c.compress(bytes(1 << 26)), 0x20))
    for bomb, flag in bombs:
        assert len(bomb) <= 2 * block
        bad = corrupt(blob, desc_base, struct.pack("<QIIQ", len(blob), len(bomb), flag, 0))
        with traced_peak() as peak, open_kdump_blob(tmp_path, bad + bomb) as dump:
            with pytest.raises(DumpFormatError, match=r"more than the block|full frame") as exc:
                dump.read_bytes(0, 8)
            assert peak() < 8 * block  # (zlib.decompress made all 64 MiB)
        assert (exc.value.field, exc.value.offset) == ("page_desc[0] (pfn 0x0)", desc_base)


@pytest.mark.parametrize("flat", [False, True])
def test_a_file_that_shrinks_under_an_open_dump(tmp_path, flat):
    mem, model = sample_memory([(0, 64 * PAGE)], seed=5, zero_pages=0)
    path = tmp_path / "s.kdump"
    with mem:
        write_kdump(mem, path, compression="none", flattened=flat)
    data = model[0][1]
    with open_kdump(path, cache_pages=0) as dump:
        if flat:  # the descriptors' record (the last), the last pages' data go
            os.truncate(path, path.stat().st_size - 4 * PAGE)
            for addr in (0, 63 * PAGE):
                with pytest.raises(DumpFormatError, match="the file shrank"):
                    dump.read_bytes(addr, 8)
            return
        blob = path.read_bytes()
        *_, desc_base = plain_offsets(blob)
        data_at = struct.unpack_from("<Q", blob, desc_base + 24 * 10)[0]
        os.truncate(path, data_at)  # pages 10 on lose their data
        assert dump.read_bytes(9 * PAGE, PAGE) == data[9 * PAGE : 10 * PAGE]
        for read in (
            lambda: dump.read_bytes(20 * PAGE + 5, 1),  # one page
            lambda: dump.read_bytes(0, 64 * PAGE),  # a run of pages
            lambda: dump.read_objs([8 * PAGE, 20 * PAGE], "<u8"),  # scattered pages
        ):
            with pytest.raises(DumpFormatError, match="the file shrank") as exc:
                read()
            pfn = 10 if exc.value.field.startswith("page_desc[10]") else 20
            assert exc.value.field == f"page_desc[{pfn}] (pfn {pfn:#x}) offset"
            assert exc.value.offset == desc_base + 24 * pfn
        os.truncate(path, desc_base + 24 * 5)  # the descriptors from page 5 on go too
        cases = [
            (lambda: dump.read_bytes(30 * PAGE, 1), "page_desc[30] (pfn 0x1e)", 30),
            (lambda: dump.read_bytes(32 * PAGE, 2 * PAGE), "page_desc[32:34]", 32),
            (lambda: dump.read_objs([30 * PAGE, 50 * PAGE], "<u8"), "page_desc", 30),
        ]
        for read, field, index in cases:
            with pytest.raises(DumpFormatError, match="the file shrank") as exc:
                read()
            assert (exc.value.field, exc.value.offset) == (field, desc_base + 24 * index)


def test_many_excluded_ranges_are_one_array(tmp_path):
    n = 1 << 20  # pages, every other one excluded: 2**19 ranges
    path = tmp_path / "x.kdump"
    mem = GuestMemoryMmap.from_ranges([(0, PAGE), ((n - 1) * PAGE, PAGE)])
    with mem:
        write_kdump(mem, path, compression="none")
    blob = bytearray(path.read_bytes())
    block, sub, bitmap_blocks, desc_base = plain_offsets(blob)
    first, length = (1 + sub) * block, bitmap_blocks * block // 2
    assert length == n // 8
    blob[first : first + length] = b"\xff" * length  # RAM everywhere
    blob[first + length : first + 2 * length] = b"\x55" * length  # even pages dumped
    path.write_bytes(blob)
    os.truncate(path, desc_base + 24 * n // 2)  # (room for the descriptors, sparse)
    with traced_peak() as peak, open_kdump(path) as dump:
        excluded = dump.metadata.excluded
        assert peak() < 8 * excluded.nbytes  # (a tuple per range took over 15 times more)
        assert dump.num_regions() == 1
    assert excluded.dtype == np.uint64 and not excluded.flags.writeable
    assert (excluded[:, 0] == np.arange(1, n, 2, dtype=np.uint64) * PAGE).all()
    assert (excluded[:, 1] == PAGE).all() and excluded.shape == (n // 2, 2)


def test_writer_excluded_ranges_are_clipped_to_whole_pages(tmp_path):
    excluded = np.array(
        [(PAGE + 1, 2 * PAGE), (3 * PAGE, 2**64 - 3 * PAGE), (2**64 - 1, 5), (0, 0)], np.uint64
    )
    for ranges, want in ((excluded, ((2 * PAGE, 4 * PAGE),)), (excluded[:1] - [0, PAGE], ())):
        source, _ = sample_dump([(0, 6 * PAGE)], 2, excluded=ranges)
        with source:
            write_kdump(source, tmp_path / "c.kdump")
        with open_kdump(tmp_path / "c.kdump") as dump:
            assert_excluded(dump, want)  # (pages wholly inside a range only)


def test_writer_refuses_bitmaps_past_the_bound(tmp_path, monkeypatch):
    assert kdump.MAX_WRITE_PFN == 1 << 31  # 256 MiB per bitmap
    path = tmp_path / "t.kdump"
    path.write_bytes(b"old")
    top = GuestMemoryMmap.from_ranges([(2**64 - 0x3000, 0x1000)])
    with top, pytest.raises(ValueError, match="top address is 0xffffffffffffdfff"):
        write_kdump(top, path)
    assert path.read_bytes() == b"old"  # nothing written
    monkeypatch.setattr(kdump, "MAX_WRITE_PFN", 16)
    for end, ok in ((16 * PAGE, True), (16 * PAGE + 1, False)):
        mem = GuestMemoryMmap.from_ranges([(0, PAGE), (end - 8, 8)])
        with mem:
            if ok:
                write_kdump(mem, path, block_size=PAGE)
                continue
            with pytest.raises(ValueError, match=f"top address is {end - 1:#x}"):
                write_kdump(mem, path)
    with open_kdump(path) as dump:
        assert dump.metadata.extra["max_pfn"] == 16


def test_what_the_writer_writes_the_reader_reads(tmp_path, monkeypatch):
    ranges = [(2 * i * PAGE, PAGE) for i in range(5000)]  # 5000 regions (the old cap: 4096)
    mem = GuestMemoryMmap.from_ranges(ranges)
    with mem:
        mem.write_slice(b"last", 2 * 4999 * PAGE)
        write_kdump(mem, tmp_path / "m.kdump")
    with open_kdump(tmp_path / "m.kdump") as dump:
        assert dump.num_regions() == 5000
        assert dump.read_bytes(2 * 4999 * PAGE, 4) == b"last"
    assert kdump.MAX_REGIONS == 32768
    monkeypatch.setattr(kdump, "MAX_REGIONS", 4)
    five = GuestMemoryMmap.from_ranges([(2 * i * PAGE, PAGE) for i in range(5)])
    path = tmp_path / "five.kdump"
    with five, pytest.raises(ValueError, match="5 separate runs"):
        write_kdump(five, path)
    assert not path.exists()
    # regions sharing pages or touching are one run: 6 regions, 4 runs of pages
    four = [(0, 100), (200, 100), (2 * PAGE, PAGE), (3 * PAGE, 8), (5 * PAGE, 8), (7 * PAGE, 8)]
    mem = GuestMemoryMmap.from_ranges(four)
    with mem:
        write_kdump(mem, tmp_path / "four.kdump")
    with open_kdump(tmp_path / "four.kdump") as dump:
        assert layout_of(dump) == [
            (0, PAGE),
            (2 * PAGE, 2 * PAGE),
            (5 * PAGE, PAGE),
            (7 * PAGE, PAGE),
        ]
    monkeypatch.setattr(kdump, "MAX_REGIONS", 3)  # the reader refuses more than its cap
    with pytest.raises(DumpFormatError, match="more than 3 runs of RAM pages") as exc:
        open_kdump(tmp_path / "four.kdump")
    assert exc.value.field == "1st bitmap"


def test_short_reads_are_retried(tmp_path, monkeypatch):
    path, model = dump_of(tmp_path, [(0, 16 * PAGE)], 4, compression="none", flattened=True)
    pread = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, at: pread(fd, min(n, 1000), at))
    with open_kdump(path) as dump:
        assert_holds(dump, model.runs)


def test_bitmaps_too_big_to_read_at_open(tmp_path):
    """A sparse file declaring 16 GiB of bitmaps for 2**36 pages is refused before any read."""
    blob = small_blob(tmp_path)
    block = PAGE
    data = corrupt(blob, 436, struct.pack("<I", 1 << 22))  # bitmap_blocks: 16 GiB
    data = corrupt(data, block + 96, struct.pack("<Q", 1 << 36))  # max_mapnr_64
    path = tmp_path / "huge"
    path.write_bytes(data)
    with open(path, "r+b") as f:
        f.truncate((2 + (1 << 22)) * block + 4096)
    with pytest.raises(DumpFormatError, match="bound of a bitmap read") as exc:
        open_kdump(path)
    assert exc.value.field == "max_mapnr" and exc.value.offset == block + 96
