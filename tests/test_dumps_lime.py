"""LiME / AVML dumps: round trips, hand-built headers, every error path, fuzzing."""

from __future__ import annotations

import importlib
import itertools
import struct

import numpy as np
import pytest
from dump_support import (
    FUZZ,
    PAGE,
    assert_holds,
    assert_only_dump_errors,
    layout_of,
    mutations,
    sample_memory,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npguest
from npguest.dumps import lime
from npguest.dumps.lime import open_lime, write_lime
from npguest.errors import DumpFormatError, InvalidGuestAddressError

MAGIC = 0x4C694D45
AVML = 0x4C4D5641


def header(s_addr, e_addr, magic=MAGIC, version=1, reserved=bytes(8)):
    return struct.pack("<IIQQ8s", magic, version, s_addr, e_addr, reserved)


def lime_blob(ranges):
    """A LiME file of ``(gpa, bytes)`` ranges."""
    return b"".join(header(gpa, gpa + len(data) - 1) + data for gpa, data in ranges)


def pattern(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def expect_error(path, data, field, offset):
    path.write_bytes(data)
    with pytest.raises(DumpFormatError) as info:
        open_lime(path)
    assert info.value.field == field, str(info.value)
    assert info.value.offset == offset, str(info.value)
    assert info.value.path == str(path)
    return info.value


# -- round trips -----------------------------------------------------------------------

LAYOUTS = [
    [(0, PAGE)],
    [(0, 0x9F000), (0x100000, 0x300000)],
    [(0x1000, PAGE), (0x2000, 2 * PAGE)],  # adjacent regions stay two ranges
    [(0x7000, 100), (0x10000, 1)],  # odd sizes: LiME itself does not need pages
    [(0xFFFF_FFFF_0000, 3 * PAGE)],
]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_round_trip(tmp_path, layout):
    mem, model = sample_memory(layout, seed=len(layout))
    path = tmp_path / "mem.lime"
    write_lime(mem, path)
    with open_lime(path) as dump:
        assert layout_of(dump) == layout
        assert_holds(dump, model)
        meta = dump.metadata
        assert meta.format == "lime" and meta.machine is None and meta.path == str(path)
        assert meta.extra == {"variant": "lime", "ranges": len(layout), "end": path.stat().st_size}
    expected = sum(32 + size for _, size in layout)
    assert path.stat().st_size == expected
    mem.close()


@st.composite
def layouts(draw):
    n = draw(st.integers(1, 4))
    layout, addr = [], draw(st.integers(0, 4)) * PAGE
    for _ in range(n):
        size = draw(st.sampled_from([1, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE]))
        layout.append((addr, size))
        addr += size + draw(st.sampled_from([0, 1, PAGE]))
    return layout


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(layout=layouts(), seed=st.integers(0, 3))
def test_round_trip_random_layouts(tmp_path, layout, seed):
    mem, model = sample_memory(layout, seed=seed)
    path = tmp_path / "random.lime"
    npguest.write_dump(mem, path, format="lime")
    with npguest.open_dump(path) as dump:
        assert dump.metadata.format == "lime"
        assert layout_of(dump) == layout
        assert_holds(dump, model)
    mem.close()


def test_write_bytes_and_progress(tmp_path):
    mem, model = sample_memory([(0x1000, PAGE), (0x5000, 2 * PAGE)], zero_pages=0)
    calls = []
    path = tmp_path / "p.lime"
    write_lime(mem, path, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (3 * PAGE, 3 * PAGE)
    assert all(b >= a for (a, _), (b, _) in itertools.pairwise(calls))
    data = path.read_bytes()
    assert data[:32] == header(0x1000, 0x1FFF)
    assert data[32 : 32 + PAGE] == model[0][1]
    assert data[32 + PAGE : 64 + PAGE] == header(0x5000, 0x6FFF)
    mem.close()


def test_write_streams_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(
        lime,
        "region_chunks",
        lambda mem: npguest.dumps.dump.region_chunks(mem, chunk=PAGE),
    )
    mem, model = sample_memory([(0, 5 * PAGE + 7), (0x10000, PAGE)])
    path = tmp_path / "chunks.lime"
    calls = []
    write_lime(mem, path, progress=lambda d, t: calls.append(d))
    assert len(calls) == 7
    with open_lime(path) as dump:
        assert_holds(dump, model)
    mem.close()


def test_write_empty_memory_refused(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        write_lime(npguest.GuestMemoryMmap(), tmp_path / "x.lime")


def test_writable_changes_the_file(tmp_path):
    path = tmp_path / "w.lime"
    path.write_bytes(lime_blob([(0x2000, bytes(PAGE))]))
    with open_lime(path, writable=True) as dump:
        dump.write(b"hello", 0x2FFB)
    assert path.read_bytes()[-5:] == b"hello"
    with open_lime(path) as dump, pytest.raises(Exception):  # noqa: B017
        dump.write(b"x", 0x2000)  # read-only mapping


# -- hand-built headers ----------------------------------------------------------------


def test_inclusive_end_off_by_one(tmp_path):
    one = pattern(1, 1)
    page = pattern(PAGE, 2)
    path = tmp_path / "edges.lime"
    # e_addr == s_addr is a 1-byte range; e_addr = s + 0xFFF is one page
    path.write_bytes(header(0x500, 0x500) + one + header(0x1000, 0x1FFF) + page)
    with open_lime(path) as dump:
        assert layout_of(dump) == [(0x500, 1), (0x1000, PAGE)]
        assert dump.read_bytes(0x500, 1) == one
        assert dump.read_bytes(0x1FFF, 1) == page[-1:]
        for hole in (0x4FF, 0x501, 0xFFF, 0x2000):
            with pytest.raises(InvalidGuestAddressError):
                dump.read_bytes(hole, 1)
        assert int(dump.last_addr()) == 0x1FFF


def test_range_just_below_the_top_of_memory(tmp_path):
    path = tmp_path / "top.lime"
    top = (1 << 64) - 2
    path.write_bytes(header(top - 15, top) + pattern(16))
    with open_lime(path) as dump:
        assert int(dump.last_addr()) == top
        assert dump.read_bytes(top - 15, 16) == pattern(16)


def test_avml_sparse_gaps_are_holes(tmp_path):
    # AVML leaves all-zero blocks out: the gap has no header and reads as a hole
    path = tmp_path / "sparse.lime"
    a, b = pattern(2 * PAGE, 3), pattern(PAGE, 4)
    path.write_bytes(lime_blob([(0, a), (0x1000000, b)]))
    with open_lime(path) as dump:
        assert dump.num_regions() == 2
        with pytest.raises(InvalidGuestAddressError):
            dump.read_bytes(0x800000, 8)
        addrs = np.array([0, 0x800000, 0x1000000], dtype=np.uint64)
        got = dump.read_objs(addrs, np.uint8, holes="zero")
        assert got.tolist() == [a[0], 0, b[0]]


def test_zero_header_stops_reading(tmp_path):
    path = tmp_path / "zero.lime"
    body = lime_blob([(0, pattern(PAGE)), (0x3000, pattern(PAGE, 5))])
    path.write_bytes(body + bytes(32) + b"junk that is never read" + header(1, 0))
    with open_lime(path) as dump:
        assert dump.num_regions() == 2
        assert dump.metadata.extra["end"] == len(body)
        assert dump.metadata.extra["ranges"] == 2


def test_reserved_field_is_not_checked(tmp_path):
    path = tmp_path / "reserved.lime"
    path.write_bytes(header(0, PAGE - 1, reserved=b"\xff" * 8) + pattern(PAGE))
    with open_lime(path) as dump:
        assert dump.read_bytes(0, PAGE) == pattern(PAGE)


def test_open_dump_sniffs_lime(tmp_path):
    path = tmp_path / "sniff.bin"
    path.write_bytes(lime_blob([(0x1000, pattern(PAGE))]))
    assert npguest.dumps.detect_format(path) == "lime"
    with npguest.open_dump(path) as dump:
        assert dump.metadata.format == "lime"


# -- every error path ------------------------------------------------------------------

P = pattern(PAGE)


@pytest.mark.parametrize(
    ("data", "field", "offset"),
    [
        pytest.param(b"", "header[0]", 0, id="empty"),
        pytest.param(bytes(32), "header[0]", 0, id="only-zero-header"),
        pytest.param(header(0, 9)[:20], "header[0]", 0, id="short-header"),
        pytest.param(header(0, PAGE - 1, magic=0x12345678) + P, "header[0].magic", 0, id="magic"),
        pytest.param(header(0, PAGE - 1, version=2) + P, "header[0].version", 4, id="version"),
        pytest.param(
            header(0, PAGE - 1, magic=AVML, version=1), "header[0].version", 4, id="avml-v1"
        ),
        pytest.param(header(0x2000, 0x1FFF) + P, "header[0].e_addr", 16, id="e-below-s"),
        pytest.param(header(0, (1 << 64) - 1), "header[0].e_addr", 16, id="e-at-top"),
        pytest.param(header(0, PAGE) + P, "header[0] data", 32, id="data-past-eof"),
        pytest.param(lime_blob([(0, P)]) + P[:10], "header[1]", 32 + PAGE, id="trailing-bytes"),
        pytest.param(
            lime_blob([(0, P)]) + header(PAGE, 2 * PAGE - 1, magic=AVML, version=2),
            "header[1].magic",
            32 + PAGE,
            id="mixed-magic",
        ),
        pytest.param(
            lime_blob([(0x2000, P), (0x2FFF, P)]), "header[1].s_addr", 40 + PAGE, id="overlap"
        ),
        pytest.param(
            lime_blob([(0x2000, P), (0x2000, P)]), "header[1].s_addr", 40 + PAGE, id="same-start"
        ),
        pytest.param(
            lime_blob([(0x8000, P), (0x0, P)]), "header[1].s_addr", 40 + PAGE, id="out-of-order"
        ),
        pytest.param(
            lime_blob([(0, P), (PAGE, P)]) + header(0x100000, 0x100000 + 2 * PAGE - 1) + P,
            "header[2] data",
            3 * 32 + 2 * PAGE,
            id="last-range-truncated",
        ),
    ],
)
def test_errors(tmp_path, data, field, offset):
    error = expect_error(tmp_path / "bad.lime", data, field, offset)
    assert f"{offset:#x}" in str(error)


def test_adjacent_ranges_are_accepted(tmp_path):
    # s_addr == previous e_addr + 1 is the boundary case of the ordering rule
    path = tmp_path / "adjacent.lime"
    path.write_bytes(lime_blob([(0x2000, P), (0x3000, P)]))
    with open_lime(path) as dump:
        assert dump.read_bytes(0x2FFF, 2) == P[-1:] + P[:1]


def test_missing_file(tmp_path):
    with pytest.raises(npguest.errors.MmapRegionError):
        open_lime(tmp_path / "absent.lime")


@FUZZ
@given(data=mutations(lime_blob([(0x1000, pattern(64)), (0x3000, pattern(32)), (0x9000, b"z")])))
def test_fuzz_lime(tmp_path, data):
    assert_only_dump_errors(open_lime, data, tmp_path / "fuzz.lime")


# -- AVML v2 ---------------------------------------------------------------------------


def _codec():
    try:
        return importlib.import_module("cramjam")
    except ImportError:
        pytest.skip("cramjam is not installed")


def avml_range(gpa, data):
    stream = bytes(_codec().snappy.compress(data))
    return header(gpa, gpa + len(data) - 1, AVML, 2) + stream + struct.pack("<Q", len(stream))


def avml_blob(ranges):
    return b"".join(avml_range(gpa, data) for gpa, data in ranges)


AVML_RANGES = [(0x1000, pattern(3 * PAGE, 7)), (0x100000, bytes(70000)), (0x200000, b"q")]


def test_avml_v2_decompresses(tmp_path):
    path = tmp_path / "v2.avml"
    path.write_bytes(avml_blob(AVML_RANGES))
    assert npguest.dumps.detect_format(path) == "lime"
    with npguest.open_dump(path) as dump:
        assert dump.metadata.extra["variant"] == "avml2"
        assert layout_of(dump) == [(gpa, len(d)) for gpa, d in AVML_RANGES]
        assert_holds(dump, AVML_RANGES)


def test_avml_v2_with_python_snappy(tmp_path, monkeypatch):
    snappy = pytest.importorskip("snappy", exc_type=ImportError)
    _codec()
    monkeypatch.setattr(lime, "_snappy", lambda: ("snappy", snappy))
    path = tmp_path / "v2.avml"
    path.write_bytes(avml_blob(AVML_RANGES))
    with open_lime(path) as dump:
        assert_holds(dump, AVML_RANGES)


def test_avml_v2_uncompressed_chunks_and_padding(tmp_path):
    # hand-framed: stream id, a padding chunk, an uncompressed chunk (CRC is from cramjam)
    data = pattern(100, 9)
    framed = bytes(_codec().snappy.compress(data))
    ident, rest = framed[:10], framed[10:]
    stream = ident + b"\xfe\x02\x00\x00xx" + rest
    blob = header(0, 99, AVML, 2) + stream + struct.pack("<Q", len(stream))
    path = tmp_path / "pad.avml"
    path.write_bytes(blob)
    with open_lime(path) as dump:
        assert dump.read_bytes(0, 100) == data


def test_avml_v2_refuses_writable(tmp_path):
    path = tmp_path / "v2.avml"
    path.write_bytes(avml_blob(AVML_RANGES[:1]))
    with pytest.raises(ValueError, match="compressed"):
        open_lime(path, writable=True)


def test_avml_v2_without_codec(tmp_path, monkeypatch):
    # hand-framed (the checksum is not looked at before decompressing): runs without cramjam
    stream = b"\xff\x06\x00\x00sNaPpY" + b"\x01\x0e\x00\x00" + bytes(4) + b"0123456789"
    path = tmp_path / "v2.avml"
    path.write_bytes(header(0, 9, AVML, 2) + stream + struct.pack("<Q", len(stream)))

    def missing(name):
        raise ImportError(name)

    monkeypatch.setattr(lime.importlib, "import_module", missing)
    with pytest.raises(DumpFormatError, match="cramjam") as info:
        open_lime(path)
    assert "avml-convert" in str(info.value)


def test_avml_v2_errors(tmp_path):
    good = avml_range(0, pattern(PAGE))
    stream_at = 32
    n = len(good)
    # trailer disagrees with the stream's length
    bad = good[:-8] + struct.pack("<Q", 1)
    expect_error(tmp_path / "a", bad, "header[0] stream length", n - 8)
    # header declares more bytes than the stream holds: the trailer is read as a chunk
    bigger = header(0, 2 * PAGE - 1, AVML, 2) + good[32:]
    expect_error(tmp_path / "b", bigger, "header[0] snappy stream chunk", n - 4)
    # header declares fewer bytes than the stream holds
    smaller = header(0, PAGE - 2, AVML, 2) + good[32:]
    expect_error(tmp_path / "b2", smaller, "header[0] snappy stream", n - 8)
    # a corrupt checksum: the frames add up, decompression refuses
    corrupt = bytearray(good)
    corrupt[stream_at + 10 + 4] ^= 0xFF
    expect_error(tmp_path / "c", bytes(corrupt), "header[0] snappy stream", stream_at)
    # a reserved unskippable chunk type
    reserved = header(0, 9, AVML, 2) + b"\x05\x00\x00\x00"
    expect_error(tmp_path / "d", reserved, "header[0] snappy stream chunk", stream_at)
    # a bad stream identifier
    ident = header(0, 9, AVML, 2) + b"\xff\x06\x00\x00SNAPPY"
    expect_error(tmp_path / "e", ident, "header[0] snappy stream identifier", stream_at)
    # a compressed chunk declaring more than 64 KiB
    huge = header(0, 9, AVML, 2) + b"\x00\x09\x00\x00" + bytes(4) + b"\xff\xff\x7f\x00\x00"
    expect_error(tmp_path / "f", huge, "header[0] snappy stream chunk", stream_at)
    # an uncompressed chunk shorter than its checksum
    short = header(0, 9, AVML, 2) + b"\x01\x02\x00\x00xx"
    expect_error(tmp_path / "g", short, "header[0] snappy stream chunk", stream_at)
    # a chunk running past the end of the file
    past = header(0, 9, AVML, 2) + b"\x01\xff\x00\x00" + bytes(10)
    expect_error(tmp_path / "h", past, "header[0] snappy stream chunk", stream_at + 4)


@FUZZ
@given(data=st.data())
def test_fuzz_avml(tmp_path, data):
    blob = avml_blob([(0x1000, pattern(200, 1)), (0x8000, bytes(5000))])
    mutated = data.draw(mutations(blob))
    assert_only_dump_errors(open_lime, mutated, tmp_path / "fuzz.avml")
