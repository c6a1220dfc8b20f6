"""The dumps package: open_dump/write_dump dispatch, DumpMemory, extent mapping, raw dumps."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from dump_support import PAGE, assert_holds, layout_of, sample_memory
from hypothesis import given, settings
from hypothesis import strategies as st

import npguest
from npguest import GuestMemoryMmap, open_dump, write_dump
from npguest.dumps import FORMATS, WRITE_FORMATS, detect_format
from npguest.dumps.dump import CpuState, DumpFile, DumpMemory, DumpMetadata, Extent, map_extents
from npguest.dumps.raw import SPARSE_BLOCK, open_raw, write_raw
from npguest.errors import (
    DumpFormatError,
    InvalidGuestAddressError,
    MmapRegionError,
    ReadOnlyMemoryError,
)


def blob(path, size, seed=0):
    data = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


# -- raw ----------------------------------------------------------------------------------


def test_raw_open_at_base(tmp_path):
    data = blob(tmp_path / "ram", 3 * PAGE + 5)
    with open_dump(tmp_path / "ram", base=0x100000) as mem:
        assert isinstance(mem, DumpMemory) and isinstance(mem, GuestMemoryMmap)
        assert mem.metadata.format == "raw" and mem.metadata.extra == {"base": 0x100000}
        assert layout_of(mem) == [(0x100000, len(data))]
        assert mem.read_bytes(0x100000, len(data)) == data
        with pytest.raises(InvalidGuestAddressError, match="0xfffff"):
            mem.read_obj(0xFFFFF, "u1")
        with pytest.raises(ReadOnlyMemoryError):
            mem.write_slice(b"x", 0x100000)


def test_raw_layout_unaligned_offsets_and_writes(tmp_path):
    data = blob(tmp_path / "ram", 4 * PAGE)
    layout = [(0x8000, PAGE + 3, 5), (0x1000, 0x100, 2 * PAGE + 7)]
    with open_raw(tmp_path / "ram", layout=layout, writable=True) as mem:
        assert layout_of(mem) == [(0x1000, 0x100), (0x8000, PAGE + 3)]
        assert mem.read_bytes(0x8000, PAGE + 3) == data[5 : 5 + PAGE + 3]
        assert mem.read_bytes(0x1000, 0x100) == data[2 * PAGE + 7 : 2 * PAGE + 7 + 0x100]
        mem.write_slice(b"HELLO", 0x80FE)
    assert (tmp_path / "ram").read_bytes()[5 + 0xFE : 5 + 0xFE + 5] == b"HELLO"


def test_adjacent_extents_stay_apart_unless_merged(tmp_path):
    data = blob(tmp_path / "ram", 4 * PAGE)
    layout = [(0, PAGE, 0), (PAGE, PAGE, PAGE), (2 * PAGE, PAGE, 3 * PAGE)]
    with open_raw(tmp_path / "ram", layout=layout) as mem:
        assert layout_of(mem) == [(0, PAGE), (PAGE, PAGE), (2 * PAGE, PAGE)]
    extents = [Extent(g, n, o, "x", 0) for g, n, o in layout]
    extents += [Extent(3 * PAGE, PAGE, None, "z", 0), Extent(4 * PAGE, PAGE, None, "z", 0)]
    meta = DumpMetadata("test", "")
    with map_extents(tmp_path / "ram", extents, meta, merge=True) as mem:
        assert layout_of(mem) == [(0, 2 * PAGE), (2 * PAGE, PAGE), (3 * PAGE, 2 * PAGE)]
        assert mem.read_bytes(0, 3 * PAGE) == data[: 2 * PAGE] + data[3 * PAGE :]


@pytest.mark.parametrize(
    ("layout", "field", "match"),
    [
        ([(0, PAGE, 4 * PAGE)], "layout[0]", "past the end"),
        ([(0, 2 * PAGE, 0), (PAGE, PAGE, 0)], "layout[1]", "overlap"),
        ([(2**64 - PAGE, 2 * PAGE, 0)], "layout[0]", "wrap"),
        ([(2**64 - PAGE, PAGE, 0)], "layout[0]", "wrap"),  # would end at 2**64
        ([(0, -1, 0)], "layout[0]", "negative"),
        ([(0, 0, 0)], "memory layout", "no memory"),
        ([], "memory layout", "no memory"),
    ],
)
def test_raw_layout_errors(tmp_path, layout, field, match):
    blob(tmp_path / "ram", 4 * PAGE)
    with pytest.raises(DumpFormatError, match=match) as ei:
        open_raw(tmp_path / "ram", layout=layout)
    assert ei.value.field == field and ei.value.path == str(tmp_path / "ram")


def test_raw_empty_and_missing(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(DumpFormatError, match="empty file"):
        open_dump(tmp_path / "empty")
    with pytest.raises(MmapRegionError, match="cannot open"):
        open_dump(tmp_path / "missing", format="raw")
    with pytest.raises(MmapRegionError, match="cannot open"):
        open_raw(tmp_path / "missing", layout=[(0, 1, 0)])


LAYOUTS = [
    [(0, 3 * PAGE)],
    [(0x1000, 0x2345), (0x5000, SPARSE_BLOCK * 2 + 17), (0x100000, PAGE)],
    [(0, PAGE), (PAGE, PAGE), (0x40000, 3)],
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_raw_round_trip_is_sparse(tmp_path, layout):
    mem, model = sample_memory(layout, zero_pages=0.5)
    seen = []
    write_dump(mem, tmp_path / "out.raw", "raw", progress=lambda d, t: seen.append((d, t)))
    end = layout[-1][0] + layout[-1][1]
    assert os.path.getsize(tmp_path / "out.raw") == end
    total = sum(n for _, n in layout)
    assert seen[-1] == (total, total)
    with open_dump(tmp_path / "out.raw", layout=[(g, n, g) for g, n in layout]) as back:
        assert layout_of(back) == layout_of(mem)
        assert_holds(back, model)
    with open_dump(tmp_path / "out.raw") as whole:  # the gaps read as zeros
        expected = bytearray(end)
        for gpa, data in model:
            expected[gpa : gpa + len(data)] = data
        assert whole.read_bytes(0, end) == bytes(expected)


def test_raw_writer_leaves_holes(tmp_path):
    mem = GuestMemoryMmap.from_ranges([(0, 64 * SPARSE_BLOCK)])
    mem.write(b"x", 5 * SPARSE_BLOCK)
    write_raw(mem, tmp_path / "sparse.raw")
    st_ = os.stat(tmp_path / "sparse.raw")
    assert st_.st_size == 64 * SPARSE_BLOCK
    assert st_.st_blocks * 512 <= 4 * SPARSE_BLOCK  # one block of data, not 4 MiB


def test_raw_writer_base_and_errors(tmp_path):
    mem, model = sample_memory([(0x10000, PAGE)])
    write_raw(mem, tmp_path / "b.raw", base=0x10000)
    assert (tmp_path / "b.raw").read_bytes() == model[0][1]
    with pytest.raises(ValueError, match="below base"):
        write_raw(mem, tmp_path / "c.raw", base=0x10001)
    with pytest.raises(ValueError, match="empty memory"):
        write_raw(GuestMemoryMmap(), tmp_path / "d.raw")


@settings(max_examples=40, deadline=None)
@given(
    pieces=st.lists(
        st.tuples(st.integers(0, 64), st.integers(1, 3 * PAGE), st.integers(0, 5 * PAGE)),
        min_size=1,
        max_size=4,
    )
)
def test_raw_layout_against_model(tmp_path_factory, pieces):
    path = tmp_path_factory.mktemp("raw") / "ram"
    data = blob(path, 6 * PAGE, seed=len(pieces))
    layout = [(slot * 0x10000 + 1, size, off) for slot, size, off in pieces]
    spans = sorted((g, g + n) for g, n, _ in layout)
    bad = any(o + n > len(data) for _, n, o in layout) or any(
        a[1] > b[0] for a, b in itertools.pairwise(spans)
    )
    if bad:
        with pytest.raises(DumpFormatError):
            open_raw(path, layout=layout)
        return
    with open_raw(path, layout=layout) as mem:
        for g, n, o in layout:
            assert mem.read_bytes(g, n) == data[o : o + n]


# -- dispatch and DumpMemory ----------------------------------------------------------------


def test_detect_format(tmp_path):
    cases = {
        "elf": b"\x7fELF\x02\x01\x01",
        "kdump": b"KDUMP   \x06",
        "lime": b"EMiL\x01\0\0\0",
        "raw": b"\0" * 100,
    }
    for name, head in cases.items():
        (tmp_path / name).write_bytes(head)
        assert detect_format(tmp_path / name) == name
    (tmp_path / "flat").write_bytes(b"makedumpfile\0\0\0\0")
    (tmp_path / "disk").write_bytes(b"DISKDUMP")
    (tmp_path / "avml").write_bytes(b"AVML\x02\0\0\0")
    assert detect_format(tmp_path / "flat") == detect_format(tmp_path / "disk") == "kdump"
    assert detect_format(tmp_path / "avml") == "lime"
    assert detect_format(tmp_path) == "cloud-hypervisor"
    with pytest.raises(MmapRegionError, match="cannot open"):
        detect_format(tmp_path / "nope")


def test_unknown_formats(tmp_path):
    blob(tmp_path / "ram", PAGE)
    with pytest.raises(ValueError, match="unknown dump format 'vmdk'"):
        open_dump(tmp_path / "ram", format="vmdk")
    mem = GuestMemoryMmap.from_ranges([(0, PAGE)])
    with pytest.raises(ValueError, match="cannot write format 'firecracker'"):
        write_dump(mem, tmp_path / "x", "firecracker")
    assert set(WRITE_FORMATS) <= set(FORMATS) and "raw" in WRITE_FORMATS


def test_dump_memory_basics(tmp_path):
    blob(tmp_path / "ram", 2 * PAGE)
    mem = open_dump(tmp_path / "ram")
    assert repr(mem).startswith("DumpMemory(raw, 1 region, 0x2000 bytes")
    grown = mem.insert_region(npguest.GuestRegionMmap.from_range(0x10000, PAGE))
    assert isinstance(grown, DumpMemory) and grown.metadata.format == "memory"
    del grown
    mem.close()
    assert mem.num_regions() == 0
    mem.close()  # twice is fine
    meta = DumpMetadata("elf", "x", cpus=(CpuState(0, {"cr3": 0x1000, "rip": 0xFFF0}),))
    assert meta.cr3 == 0x1000 and DumpMetadata("raw", "y").cr3 is None
    assert repr(meta.cpus[0]) == "CpuState(0, rip=0xfff0, cr3=0x1000)"


def test_dump_file_checked_reads(tmp_path):
    import struct

    (tmp_path / "h").write_bytes(b"\x01\x00\x00\x00abc")
    with open(tmp_path / "h", "rb") as f:
        d = DumpFile(f, str(tmp_path / "h"))
        assert d.unpack(struct.Struct("<I"), 0, "magic") == (1,)
        with pytest.raises(DumpFormatError, match=r"bad count at file offset 0x4: 4 bytes"):
            d.unpack(struct.Struct("<I"), 4, "count")
        with pytest.raises(DumpFormatError, match="past the end"):
            d.check_span(-1, 1, "x")


def test_map_extents_zero_extents_are_anonymous(tmp_path):
    data = blob(tmp_path / "ram", PAGE)
    extents = [Extent(0, PAGE, 0, "a", 0), Extent(PAGE, 2 * PAGE, None, "a.tail", 0)]
    meta = DumpMetadata("test", str(tmp_path / "ram"))
    with map_extents(tmp_path / "ram", extents, meta) as mem:
        assert layout_of(mem) == [(0, PAGE), (PAGE, 2 * PAGE)]
        assert mem.read_bytes(0, 3 * PAGE) == data + bytes(2 * PAGE)
        with pytest.raises(ReadOnlyMemoryError):
            mem.write_slice(b"x", PAGE)


def test_write_dump_onto_its_own_source(tmp_path):
    data = blob(tmp_path / "ram", 2 * PAGE)
    with open_dump(tmp_path / "ram") as mem:
        write_dump(mem, tmp_path / "ram", "lime")  # the mapping keeps the old pages
        assert mem.read_bytes(0, 2 * PAGE) == data
    with open_dump(tmp_path / "ram") as back:
        assert back.metadata.format == "lime" and back.read_bytes(0, 2 * PAGE) == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ram"]  # no temporary left


def test_write_dump_failure_leaves_target(tmp_path):
    (tmp_path / "out").write_bytes(b"old")
    with pytest.raises(ValueError, match="empty memory"):
        write_dump(GuestMemoryMmap(), tmp_path / "out", "raw")
    assert (tmp_path / "out").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_raw_writer_refuses_memory_too_high_for_a_file(tmp_path):
    mem = GuestMemoryMmap.from_ranges([(2**64 - 0x3000, PAGE)])
    with pytest.raises(ValueError, match="more than a file can hold"):
        write_dump(mem, tmp_path / "x", "raw")
    write_dump(mem, tmp_path / "x", "raw", base=2**64 - 0x3000)
    assert os.path.getsize(tmp_path / "x") == PAGE


def test_many_extents_raise_the_descriptor_limit(tmp_path):
    import resource
    import subprocess
    import sys

    # in a child with a soft limit of 256: 600 extents need more descriptors than that
    blob(tmp_path / "ram", 600 * 2 * PAGE)
    code = (
        "import resource, npguest; "
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
        f"layout = [(i * 0x10000, {PAGE}, 2 * i * {PAGE}) for i in range(600)]; "
        f"mem = npguest.open_dump({str(tmp_path / 'ram')!r}, layout=layout); "
        "print(mem.num_regions(), resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 256); mem.close()"
    )
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip(f"the hard descriptor limit here is {hard}")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["600", "True"]
