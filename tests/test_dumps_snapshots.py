"""Firecracker memory files and Cloud Hypervisor snapshot directories."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest
from dump_support import FUZZ, PAGE, assert_holds, layout_of, mutations, read_everything
from hypothesis import given
from hypothesis import strategies as st

import npguest
from npguest.dumps.cloud_hypervisor import open_cloud_hypervisor
from npguest.dumps.dump import data_extents
from npguest.dumps.firecracker import arch_memory_regions, open_firecracker
from npguest.errors import DumpFormatError, InvalidGuestAddressError, MmapRegionError

GIB = 1 << 30
MIB = 1 << 20
X86 = 0x0710_1984_8664_0000
ARM = 0x0710_1984_AAAA_0000


def pattern(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def sparse_file(path, size, writes):
    """A file of ``size`` bytes, holes except ``writes`` ({offset: bytes})."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            os.pwrite(f.fileno(), data, offset)
    return path


def error_of(call, *args, **kwargs):
    with pytest.raises(DumpFormatError) as info:
        call(*args, **kwargs)
    error = info.value
    assert error.field and f"{error.offset:#x}" in str(error)
    return error


@pytest.fixture(scope="module")
def seek_data(tmp_path_factory):
    """Skip unless the file system reports holes at page granularity."""
    path = tmp_path_factory.mktemp("probe") / "sparse"
    sparse_file(path, 16 * PAGE, {4 * PAGE: b"x"})
    with open(path, "rb") as f:
        if data_extents(f.fileno(), 0, 16 * PAGE) != [(4 * PAGE, PAGE)]:
            pytest.skip("this file system does not report holes at 4 KiB granularity")


# -- Firecracker: layouts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("mem", "arch", "version", "expected"),
    [
        (GIB, "x86_64", None, [(0, GIB)]),
        (3 * GIB, "x86_64", None, [(0, 3 * GIB)]),
        (3 * GIB + 1, "x86_64", None, [(0, 3 * GIB), (4 * GIB, 1)]),
        (300 * GIB, "x86_64", "1.13", [(0, 3 * GIB), (4 * GIB, 252 * GIB), (512 * GIB, 45 * GIB)]),
        (0xD000_0000, "x86_64", "1.12", [(0, 0xD000_0000)]),
        (4 * GIB, "x86_64", "v1.7", [(0, 0xD000_0000), (4 * GIB, 0x3000_0000)]),
        (300 * GIB, "x86_64", "1.12", [(0, 0xD000_0000), (4 * GIB, 300 * GIB - 0xD000_0000)]),
        (5 * GIB, "aarch64", None, [(0x8000_0000, 5 * GIB)]),
    ],
)
def test_arch_memory_regions(mem, arch, version, expected):
    assert arch_memory_regions(mem, arch, version) == expected


@pytest.mark.parametrize(
    ("args", "match"),
    [((0,), "positive"), ((GIB, "riscv64"), "arch"), ((GIB, "x86_64", "one.two"), "version")],
)
def test_arch_memory_regions_refuses(args, match):
    with pytest.raises(ValueError, match=match):
        arch_memory_regions(*args)


def test_regions_in_file_order(tmp_path):
    # the memory file follows the region list's order, not the address order
    a, b, c = pattern(2 * PAGE, 1), pattern(PAGE, 2), pattern(3 * PAGE, 3)
    path = tmp_path / "mem"
    path.write_bytes(a + b + c)
    regions = [(0x200000, 2 * PAGE), (0x0, PAGE), (0x100000, 3 * PAGE)]
    with npguest.open_dump(path, format="firecracker", regions=regions) as mem:
        assert_holds(mem, [(0x200000, a), (0x0, b), (0x100000, c)])
        meta = mem.metadata
        assert meta.format == "firecracker" and meta.machine == "x86_64"
        assert meta.extra["source"] == "regions"
        assert meta.extra["regions"] == (
            (0x200000, 2 * PAGE, 0),
            (0, PAGE, 2 * PAGE),
            (0x100000, 3 * PAGE, 3 * PAGE),
        )
        with pytest.raises(InvalidGuestAddressError):
            mem.read_bytes(PAGE, 1)


def test_default_is_the_file_size(tmp_path):
    data = pattern(8 * PAGE)
    path = tmp_path / "mem"
    path.write_bytes(data)
    with open_firecracker(path) as mem:
        assert layout_of(mem) == [(0, 8 * PAGE)]
        assert mem.metadata.extra["source"] == "file size"
        assert_holds(mem, [(0, data)])
    with open_firecracker(path, arch="aarch64") as mem:
        assert layout_of(mem) == [(0x8000_0000, 8 * PAGE)]
        assert mem.metadata.machine == "aarch64"


@pytest.mark.parametrize(
    ("version", "low"), [(None, 3 * GIB), ("1.13", 3 * GIB), ("1.12", 0xD000_0000)]
)
def test_mem_size_mib_past_the_gap(tmp_path, version, low):
    # a sparse file over 3 GiB: only a few pages are ever written
    size = low + 8 * MIB
    marks = {0: b"first", low - 5: b"low.e", low: b"high0", size - 4: b"last"}
    path = sparse_file(tmp_path / "big", size, marks)
    with open_firecracker(path, mem_size_mib=size // MIB, layout_version=version) as mem:
        assert layout_of(mem) == [(0, low), (4 * GIB, 8 * MIB)]
        assert mem.read_bytes(0, 5) == b"first"
        assert mem.read_bytes(low - 5, 5) == b"low.e"
        assert mem.read_bytes(4 * GIB, 5) == b"high0"
        assert mem.read_bytes(4 * GIB + 8 * MIB - 4, 4) == b"last"
        with pytest.raises(InvalidGuestAddressError):
            mem.read_bytes(low, 1)
        assert mem.metadata.extra["source"] == "mem_size_mib"


def test_writable(tmp_path):
    path = tmp_path / "mem"
    path.write_bytes(bytes(2 * PAGE))
    with open_firecracker(path, writable=True, regions=[(0x1000, PAGE), (0x9000, PAGE)]) as m:
        m.write(b"dirty", 0x9000)
    assert path.read_bytes()[PAGE : PAGE + 5] == b"dirty"


@pytest.mark.parametrize(
    ("kwargs", "size", "offset"),
    [
        ({"regions": [(0, PAGE)]}, 2 * PAGE, PAGE),  # file longer than the layout
        ({"regions": [(0, 3 * PAGE)]}, 2 * PAGE, 2 * PAGE),  # file shorter
        ({"mem_size_mib": 1}, 2 * PAGE, 2 * PAGE),
        ({}, 0, 0),  # empty file
    ],
)
def test_size_mismatch(tmp_path, kwargs, size, offset):
    path = tmp_path / "mem"
    path.write_bytes(bytes(size))
    error = error_of(open_firecracker, path, **kwargs)
    assert error.field == "file size" and error.offset == offset


def test_bad_regions(tmp_path):
    path = tmp_path / "mem"
    path.write_bytes(bytes(2 * PAGE))
    error = error_of(open_firecracker, path, regions=[(0, PAGE), (0x800, PAGE)])
    assert error.field == "regions[1]" and "overlap" in str(error)
    error = error_of(open_firecracker, path, regions=[(0, 2 * PAGE), (0x8000, -PAGE)])
    assert error.field == "regions[1]" and "negative" in str(error)
    with open_firecracker(path, regions=[(0, 2 * PAGE), (0x8000, 0)]) as mem:  # empty: skipped
        assert layout_of(mem) == [(0, 2 * PAGE)]
    with pytest.raises(ValueError, match="arch"):
        open_firecracker(path, arch="mips")
    with pytest.raises(MmapRegionError):
        open_firecracker(tmp_path / "absent")


# -- Firecracker: vmstate -------------------------------------------------------------


def vmstate(magic=X86, version=b"8.0.0", mem_size_mib=1, tail=b"\x00" * 40):
    return (
        struct.pack("<QQ", magic, len(version)) + version + struct.pack("<Q", mem_size_mib) + tail
    )


@pytest.mark.parametrize(
    ("magic", "version", "arch", "low"),
    [
        (X86, b"8.0.0", "x86_64", 3 * GIB),  # v1.14
        (X86, b"7.0.0", "x86_64", 3 * GIB),  # v1.13
        (X86, b"6.0.0", "x86_64", 0xD000_0000),  # v1.12
        (X86, b"1.0.0", "x86_64", 0xD000_0000),  # v1.7
        (ARM, b"8.0.0", "aarch64", None),
    ],
)
def test_vmstate(tmp_path, magic, version, arch, low):
    size = (low or 0) + 4 * MIB
    state = tmp_path / "vmstate"
    state.write_bytes(vmstate(magic, version, size // MIB))
    path = sparse_file(tmp_path / "mem", size, {size - 3: b"end"})
    with open_firecracker(path, vmstate=state, arch="aarch64" if low else "x86_64") as mem:
        meta = mem.metadata
        assert meta.machine == arch  # the state file's magic wins
        assert meta.extra["snapshot_version"] == version.decode()
        assert meta.extra["mem_size_mib"] == size // MIB
        assert meta.extra["source"] == "vmstate"
        if low:
            assert layout_of(mem) == [(0, low), (4 * GIB, 4 * MIB)]
        else:
            assert layout_of(mem) == [(0x8000_0000, 4 * MIB)]
        assert mem.read_bytes(int(mem.last_addr()) - 2, 3) == b"end"


@pytest.mark.parametrize(
    ("state", "field", "offset"),
    [
        (b"\x07\x10", "magic", 0),
        (vmstate(magic=0x1234), "magic", 0),
        (vmstate(magic=X86 | 5), "magic", 0),  # versionize, before v1.7
        (struct.pack("<QQ", X86, 1 << 40), "version length", 8),
        (struct.pack("<QQ", X86, 5) + b"8.0", "version", 16),
        (vmstate(version=b"\xff\xfe.0"), "version", 16),
        (vmstate(version=b"nine"), "version", 16),
        (vmstate(version=b"9.0.0"), "version", 16),  # v1.15+: bitcode
        (vmstate(version=b"0.9.9"), "version", 16),
        (vmstate(mem_size_mib=0), "vm_info.mem_size_mib", 21),
        (vmstate(mem_size_mib=1 << 44), "vm_info.mem_size_mib", 21),
        (vmstate()[:25], "vm_info.mem_size_mib", 21),
    ],
)
def test_vmstate_errors(tmp_path, state, field, offset):
    (tmp_path / "vmstate").write_bytes(state)
    (tmp_path / "mem").write_bytes(bytes(MIB))
    error = error_of(open_firecracker, tmp_path / "mem", vmstate=tmp_path / "vmstate")
    assert (error.field, error.offset) == (field, offset)
    assert error.path == str(tmp_path / "vmstate")
    if "versionize" in str(error):
        assert field == "magic"


def test_vmstate_missing(tmp_path):
    (tmp_path / "mem").write_bytes(bytes(MIB))
    with pytest.raises(MmapRegionError):
        open_firecracker(tmp_path / "mem", vmstate=tmp_path / "absent")


@FUZZ
@given(state=mutations(vmstate(mem_size_mib=1)))
def test_fuzz_vmstate(tmp_path, state):
    (tmp_path / "vmstate").write_bytes(state)
    mem_path = tmp_path / "mem"
    if not mem_path.exists():
        mem_path.write_bytes(pattern(MIB))
    check_opens(
        lambda: open_firecracker(mem_path, vmstate=tmp_path / "vmstate"),
        tmp_path / "vmstate",
        mem_path,
    )


# -- Firecracker: diff snapshots ------------------------------------------------------


def test_diff_maps_only_data_extents(tmp_path, seek_data):
    regions = [(0x0, 8 * PAGE), (0x100000, 8 * PAGE)]
    dirty = {PAGE: pattern(PAGE, 1), 7 * PAGE: pattern(2 * PAGE, 2), 12 * PAGE: pattern(PAGE, 3)}
    path = sparse_file(tmp_path / "diff", 16 * PAGE, dirty)
    with open_firecracker(path, regions=regions, diff=True) as mem:
        # the extent at file offset 7 pages crosses from region 0 into region 1
        expected = (
            (PAGE, PAGE, PAGE),
            (7 * PAGE, PAGE, 7 * PAGE),
            (0x100000, PAGE, 8 * PAGE),
            (0x104000, PAGE, 12 * PAGE),
        )
        assert mem.metadata.extra["extents"] == expected
        assert mem.metadata.extra["diff"] is True
        assert_holds(
            mem,
            [
                (PAGE, dirty[PAGE]),
                (7 * PAGE, dirty[7 * PAGE][:PAGE]),
                (0x100000, dirty[7 * PAGE][PAGE:]),
                (0x104000, dirty[12 * PAGE]),
            ],
        )
        for hole in (0, 2 * PAGE, 6 * PAGE + 1, 0x101000, 0x105000):
            with pytest.raises(InvalidGuestAddressError):
                mem.read_bytes(hole, 1)
        got = mem.read_objs(np.array([0, PAGE], dtype=np.uint64), np.uint8, holes="zero")
        assert got.tolist() == [0, dirty[PAGE][0]]


def test_full_open_of_a_diff_reads_zeros(tmp_path, seek_data):
    path = sparse_file(tmp_path / "diff", 4 * PAGE, {PAGE: b"\x01"})
    with open_firecracker(path) as mem:
        assert mem.read_bytes(0, 2) == b"\0\0" and mem.read_bytes(PAGE, 1) == b"\x01"


def test_empty_diff(tmp_path, seek_data):
    path = sparse_file(tmp_path / "diff", 4 * PAGE, {})
    error = error_of(open_firecracker, path, diff=True)
    assert error.field == "memory layout"


def test_diff_layout_must_match(tmp_path, seek_data):
    path = sparse_file(tmp_path / "diff", 4 * PAGE, {0: b"x"})
    error = error_of(open_firecracker, path, regions=[(0, 8 * PAGE)], diff=True)
    assert error.field == "file size"


def test_data_extents_clips_to_the_span(tmp_path, seek_data):
    path = sparse_file(
        tmp_path / "s", 32 * PAGE, {4 * PAGE: bytes([1]) * (3 * PAGE), 20 * PAGE: b"y"}
    )
    with open(path, "rb") as f:
        fd = f.fileno()
        assert data_extents(fd, 0, 32 * PAGE) == [(4 * PAGE, 3 * PAGE), (20 * PAGE, PAGE)]
        assert data_extents(fd, 5 * PAGE, PAGE) == [(5 * PAGE, PAGE)]
        assert data_extents(fd, 5 * PAGE + 1, 10) == [(5 * PAGE + 1, 10)]
        assert data_extents(fd, 8 * PAGE, 4 * PAGE) == []  # a hole
        assert data_extents(fd, 21 * PAGE, 4 * PAGE) == []  # no data after: ENXIO
        assert data_extents(fd, 64 * PAGE, PAGE) == []  # past the end of the file
        assert data_extents(fd, 0, 0) == []


# -- Cloud Hypervisor -----------------------------------------------------------------

RANGES = [(0x100000, 2 * PAGE), (0x0, PAGE), (0x40000, 3 * PAGE)]  # not in gpa order


def mm_state(ranges=RANGES):
    return {
        "memory_ranges": {"data": [{"gpa": g, "length": n} for g, n in ranges]},
        "guest_ram_mappings": [],
        "start_of_device_area": 0x1_0000_0000,
        "boot_ram": 6 * PAGE,
        "current_ram": 6 * PAGE,
        "arch_mem_regions": [],
        "hotplug_slots": [],
        "next_memory_slot": 1,
        "selected_slot": 0,
        "next_hotplug_slot": 0,
    }


def tree(snapshot_data, child="memory-manager"):
    return {
        "snapshots": {
            "cpu-manager": {"snapshots": {}, "snapshot_data": {"state": "{}"}},
            child: {"snapshots": {}, "snapshot_data": snapshot_data},
        },
        "snapshot_data": {"state": json.dumps({"version": 1})},
    }


def shape(kind, state):
    text = json.dumps(state)
    if kind == "state":  # current releases
        return tree({"state": text})
    raw = list(text.encode())
    if kind == "bytes":  # SnapshotData(Vec<u8>), with an id per node
        return {"id": "vm", **tree(raw)}
    sections = {"memory-manager-section": {"id": "memory-manager-section", "snapshot": raw}}
    return tree(sections)


def ch_dir(path, state_tree, memory, text=None):
    path.mkdir(exist_ok=True)
    (path / "state.json").write_text(text if text is not None else json.dumps(state_tree))
    (path / "config.json").write_text("{}")
    if memory is not None:
        (path / "memory-ranges").write_bytes(memory)
    return path


def ch_memory(ranges=RANGES, seed=0):
    model = [(gpa, pattern(n, seed + i)) for i, (gpa, n) in enumerate(ranges)]
    return b"".join(d for _, d in model), model


@pytest.mark.parametrize("kind", ["state", "bytes", "sections"])
def test_ch_snapshot(tmp_path, kind):
    memory, model = ch_memory()
    snap = ch_dir(tmp_path / "snap", shape(kind, mm_state()), memory)
    assert npguest.dumps.detect_format(snap) == "cloud-hypervisor"
    with npguest.open_dump(snap) as mem:
        assert layout_of(mem) == sorted(RANGES)
        assert_holds(mem, model)
        meta = mem.metadata
        assert meta.format == "cloud-hypervisor" and meta.path == str(snap)
        assert meta.extra["snapshot_data"] == kind
        assert meta.extra["ranges"] == (
            (0x100000, 2 * PAGE, 0),
            (0, PAGE, 2 * PAGE),
            (0x40000, 3 * PAGE, 3 * PAGE),
        )
        with pytest.raises(InvalidGuestAddressError):
            mem.read_bytes(PAGE, 1)
    with open_cloud_hypervisor(snap / "state.json") as mem:  # the state file also works
        assert_holds(mem, model)


def test_ch_writable_and_adjacent_ranges(tmp_path):
    ranges = [(0x0, PAGE), (0x1000, PAGE)]  # contiguous: still one region per range
    memory, model = ch_memory(ranges)
    snap = ch_dir(tmp_path / "snap", shape("state", mm_state(ranges)), memory)
    with open_cloud_hypervisor(snap, writable=True) as mem:
        assert mem.num_regions() == 2
        assert_holds(mem, model)
        assert mem.read_bytes(PAGE - 1, 2) == model[0][1][-1:] + model[1][1][:1]
        mem.write(b"new", 0x1000)
    assert (snap / "memory-ranges").read_bytes()[PAGE : PAGE + 3] == b"new"


def test_ch_zero_length_range_is_skipped(tmp_path):
    ranges = [(0x0, PAGE), (0x5000, 0), (0x9000, PAGE)]
    memory, model = ch_memory(ranges)
    snap = ch_dir(tmp_path / "snap", shape("state", mm_state(ranges)), memory)
    with open_cloud_hypervisor(snap) as mem:
        assert layout_of(mem) == [(0, PAGE), (0x9000, PAGE)]
        assert_holds(mem, model)


MM = 'snapshots["memory-manager"]'


def corrupt_cases():
    good = mm_state()
    bad_state = {**good, "memory_ranges": {"data": [{"gpa": 0, "length": 2.5}]}}
    return [
        pytest.param("[1, 2", None, "state.json", 5, id="not-json"),
        pytest.param('{"snapshots": {}} x', None, "state.json", 18, id="extra-data"),
        pytest.param("[" * 100000 + "]" * 100000, None, "state.json", 0, id="deep"),
        pytest.param('{"a": ' + "9" * 5000 + "}", None, "state.json", 0, id="huge-int"),
        pytest.param("[]", None, "(root)", 0, id="root-array"),
        pytest.param("{}", None, "snapshots", 0, id="no-snapshots"),
        pytest.param(
            None, tree({"state": "{}"}, child="cpus"), "snapshots.memory-manager", 0, id="no-mm"
        ),
        pytest.param(
            None, {"snapshots": {"memory-manager": {}}}, f"{MM}.snapshot_data", 0, id="no-data"
        ),
        pytest.param(None, tree(None), f"{MM}.snapshot_data", 0, id="data-null"),
        pytest.param(
            None,
            tree({"state": 5}),
            f"{MM}.snapshot_data.memory-manager-section",
            0,
            id="state-int",
        ),
        pytest.param(
            None, tree({"state": "{"}), f"{MM}.snapshot_data.state", 0, id="inner-not-json"
        ),
        pytest.param(None, tree({"state": "[]"}), f"{MM}.snapshot_data.state", 0, id="inner-array"),
        pytest.param(
            None,
            tree({"state": "{}"}),
            f"{MM}.snapshot_data.state.memory_ranges",
            0,
            id="no-ranges",
        ),
        pytest.param(None, tree([1, 300]), f"{MM}.snapshot_data", 0, id="bytes-range"),
        pytest.param(None, tree([0, 1, 2]), f"{MM}.snapshot_data", 0, id="versionize"),
        pytest.param(
            None,
            tree({"memory-manager-section": {"snapshot": "x"}}),
            f'{MM}.snapshot_data["memory-manager-section"].snapshot',
            0,
            id="section-not-bytes",
        ),
        pytest.param(
            None,
            tree({"state": json.dumps({"memory_ranges": {"data": {}}})}),
            f"{MM}.snapshot_data.state.memory_ranges.data",
            0,
            id="data-not-array",
        ),
        pytest.param(
            None,
            tree({"state": json.dumps({"memory_ranges": {"data": [5]}})}),
            f"{MM}.snapshot_data.state.memory_ranges.data[0]",
            0,
            id="range-not-object",
        ),
        pytest.param(
            None,
            tree({"state": json.dumps({"memory_ranges": {"data": [{"gpa": 0}]}})}),
            f"{MM}.snapshot_data.state.memory_ranges.data[0].length",
            0,
            id="no-length",
        ),
        pytest.param(
            None,
            tree({"state": json.dumps(bad_state)}),
            f"{MM}.snapshot_data.state.memory_ranges.data[0].length",
            0,
            id="float-length",
        ),
        pytest.param(
            None,
            tree({"state": json.dumps(mm_state([(-1, PAGE)]))}),
            f"{MM}.snapshot_data.state.memory_ranges.data[0].gpa",
            0,
            id="negative-gpa",
        ),
        pytest.param(
            None,
            tree({"state": json.dumps(mm_state([(1 << 64, PAGE)]))}),
            f"{MM}.snapshot_data.state.memory_ranges.data[0].gpa",
            0,
            id="gpa-too-big",
        ),
        pytest.param(
            None,
            tree({"state": json.dumps(mm_state([(0, True)]))}),
            f"{MM}.snapshot_data.state.memory_ranges.data[0].length",
            0,
            id="bool-length",
        ),
    ]


@pytest.mark.parametrize(("text", "state_tree", "field", "offset"), corrupt_cases())
def test_ch_state_errors(tmp_path, text, state_tree, field, offset):
    memory, _ = ch_memory()
    snap = ch_dir(tmp_path / "snap", state_tree, memory, text=text)
    error = error_of(open_cloud_hypervisor, snap)
    assert (error.field, error.offset) == (field, offset), str(error)
    assert error.path == str(snap / "state.json")


def test_ch_not_utf8_bytes(tmp_path):
    memory, _ = ch_memory()
    snap = ch_dir(tmp_path / "snap", None, memory, text="")
    (snap / "state.json").write_bytes(b'{"snapshots": \xff}')
    error = error_of(open_cloud_hypervisor, snap)
    assert (error.field, error.offset) == ("state.json", 14)


def test_ch_error_offset_counts_bytes(tmp_path):
    memory, _ = ch_memory()
    snap = ch_dir(tmp_path / "snap", None, memory, text="")
    (snap / "state.json").write_bytes('{"é": ]'.encode())
    error = error_of(open_cloud_hypervisor, snap)
    assert error.offset == 7  # "]" is character 6, byte 7: "é" takes two bytes


@pytest.mark.parametrize(
    ("ranges", "size", "field", "offset"),
    [
        ([(0, PAGE), (0x10000, 2 * PAGE)], 2 * PAGE, "memory_ranges.data[1]", PAGE),
        ([(0, PAGE)], 2 * PAGE, "file size", PAGE),
        ([(0, 2 * PAGE), (PAGE, PAGE)], 3 * PAGE, "memory_ranges.data[1]", 2 * PAGE),
        ([], 0, "memory layout", 0),
    ],
)
def test_ch_memory_errors(tmp_path, ranges, size, field, offset):
    snap = ch_dir(tmp_path / "snap", shape("state", mm_state(ranges)), pattern(size))
    error = error_of(open_cloud_hypervisor, snap)
    assert (error.field, error.offset) == (field, offset), str(error)
    assert error.path == str(snap / "memory-ranges")


def test_ch_missing_files(tmp_path):
    snap = ch_dir(tmp_path / "snap", shape("state", mm_state()), None)
    error = error_of(open_cloud_hypervisor, snap)
    assert error.field == "memory-ranges"
    (snap / "state.json").unlink()
    error = error_of(open_cloud_hypervisor, snap)
    assert error.field == "state.json" and error.path == str(snap / "state.json")


def check_opens(opener, *paths):
    """Call ``opener()``: the memory reads completely, or it fails with a DumpFormatError
    naming a field, its offset in the message, and one of ``paths``."""
    try:
        mem = opener()
    except DumpFormatError as exc:
        error = exc
    else:
        with mem:
            read_everything(mem)
        return
    assert error.field and f"{error.offset:#x}" in str(error)
    assert error.path in [str(p) for p in paths]


def check_ch(snap):
    check_opens(lambda: open_cloud_hypervisor(snap), snap / "state.json", snap / "memory-ranges")


@FUZZ
@given(text=mutations(json.dumps(shape("state", mm_state())).encode()))
def test_fuzz_state_json(tmp_path, text):
    snap = tmp_path / "fuzz"
    if not snap.exists():
        ch_dir(snap, None, ch_memory()[0], text="")
    (snap / "state.json").write_bytes(text)
    check_ch(snap)


@FUZZ
@given(data=st.data())
def test_fuzz_inner_state(tmp_path, data):
    inner = data.draw(mutations(json.dumps(mm_state()).encode()))
    kind = data.draw(st.sampled_from(["state", "bytes"]))
    snap = tmp_path / "fuzz"
    if not snap.exists():
        ch_dir(snap, None, ch_memory()[0], text="")
    if kind == "state":
        state_tree = tree({"state": inner.decode("utf-8", "replace")})
    else:
        state_tree = tree(list(inner))
    (snap / "state.json").write_text(json.dumps(state_tree))
    check_ch(snap)
