"""Scans (npguest.scan) against brute-force models over each backed run of bytes."""

from __future__ import annotations

import importlib.util
import re
import sys

import numpy as np
import pytest
from dump_support import PAGE, sample_memory
from hypothesis import given, settings
from hypothesis import strategies as st

from npguest import GuestMemoryMmap
from npguest.dumps.dump import DumpMemory, DumpMetadata
from npguest.dumps.kdump import open_kdump, write_kdump
from npguest.scan import find, find_many, find_regex, find_values, strings, yara_scan
from npguest.walk import backed_runs

HAVE_YARA = importlib.util.find_spec("yara") is not None
CHUNKS = [1, 3, 64, 257, 4096, 1 << 24]


# -- models -------------------------------------------------------------------------------
def runs_of(mem):
    """Every backed run of ``mem`` as ``(start, bytes)``."""
    return [(s, mem.read_bytes(s, e - s)) for s, e in backed_runs(mem)]


def model_find(runs, pattern):
    out = []
    for s, data in runs:
        i = data.find(pattern)
        while i >= 0:
            out.append(s + i)
            i = data.find(pattern, i + 1)
    return out


def model_find_many(runs, patterns):
    rows = [(a, i) for i, p in enumerate(patterns) for a in model_find(runs, p)]
    return sorted(rows)


def model_values(runs, dtype, align, wanted):
    dt = np.dtype(dtype)
    out = []
    for s, data in runs:
        for a in range(-(-s // align) * align, s + len(data) - dt.itemsize + 1, align):
            v = int(np.frombuffer(data, dt, 1, a - s)[0])
            if wanted(v):
                out.append((a, v))
    return out


def model_regex(runs, pattern):
    return [(s + m.start(), m.group()) for s, data in runs for m in pattern.finditer(data)]


PRINTABLE = rb"[\t\x20-\x7e]"


def model_strings(runs, min_len, encoding):
    found = []
    for width, regex in ((1, PRINTABLE), (2, PRINTABLE + rb"\x00")):
        if encoding in ("both", ("ascii", "utf-16le")[width - 1]):
            pattern = re.compile(rb"(?:%s){%d,}" % (regex, min_len))
            codec = ("ascii", "utf-16-le")[width - 1]
            found += [(a, width, m.decode(codec)) for a, m in model_regex(runs, pattern)]
    found.sort(key=lambda t: t[:2])
    return [a for a, _, _ in found], [t for _, _, t in found]


# -- layouts: adjacent regions, holes, patterns planted at run and region edges ------------
ALPHABETS = [b"ab", b"ab\x00", bytes(range(256))]


@st.composite
def memories(draw, max_regions=4, max_size=3 * PAGE):
    """``(layout, data)``: regions (some adjacent) and their random bytes, as a list."""
    sizes = draw(st.lists(st.integers(1, max_size), min_size=1, max_size=max_regions))
    gaps = draw(
        st.lists(st.sampled_from([0, 0, 1, PAGE]), min_size=len(sizes), max_size=len(sizes))
    )
    alphabet = np.frombuffer(draw(st.sampled_from(ALPHABETS)), dtype=np.uint8)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    layout, cur = [], 0x10000 - draw(st.integers(0, 7))  # any alignment
    for size, gap in zip(sizes, gaps, strict=True):
        layout.append((cur, size))
        cur += size + gap
    data = [rng.choice(alphabet, size) for _, size in layout]
    return layout, data


def edges(layout):
    """Guest addresses where runs and regions begin and end."""
    out = set()
    for gpa, size in layout:
        out.update((gpa, gpa + size))
    return sorted(out)


def build(layout, data, plants=()):
    """Map ``layout``, write ``data``, then write each ``(addr, bytes)`` plant (cut at holes)."""
    mem = GuestMemoryMmap.from_ranges(layout)
    for (gpa, _), d in zip(layout, data, strict=True):
        mem.write_slice(d, gpa)
    for addr, blob in plants:
        for k, b in enumerate(blob):
            if mem.address_in_range(addr + k):
                mem.write(bytes([b]), addr + k)
    return mem


def plants_for(layout, pattern, draw_offsets):
    """Copies of ``pattern`` at run/region starts, ends and straddling every edge."""
    plants = []
    for e in edges(layout):
        for back in draw_offsets:
            plants.append((e - back, pattern))
    return plants


# -- find -----------------------------------------------------------------------------------
@settings(max_examples=120, deadline=None)
@given(
    mem=memories(),
    pattern=st.binary(min_size=1, max_size=6),
    backs=st.lists(st.integers(0, 6), max_size=4),
    chunk=st.sampled_from(CHUNKS),
    limit=st.none() | st.integers(0, 5),
)
def test_find_matches_model(mem, pattern, backs, chunk, limit):
    layout, data = mem
    with build(layout, data, plants_for(layout, pattern, backs)) as m:
        want = model_find(runs_of(m), pattern)
        got = find(m, pattern, chunk=chunk)
        assert got.dtype == np.uint64
        assert got.tolist() == want
        if limit is not None:
            assert find(m, pattern, limit=limit, chunk=chunk).tolist() == want[:limit]


def test_find_at_the_first_and_last_byte_and_across_regions():
    layout = [(0x1000, PAGE), (0x2000, PAGE), (0x5000, 0x10), (0x8000, 0x10)]
    with GuestMemoryMmap.from_ranges(layout) as mem:
        for addr in (0x1000, 0x1FFE, 0x2FFC, 0x5000, 0x500C):
            mem.write(b"KEY!", addr)
        mem.write(b"KEY", 0x800D)  # cut by the end of the memory: not a match
        for chunk in CHUNKS:
            want = [0x1000, 0x1FFE, 0x2FFC, 0x5000, 0x500C]
            assert find(mem, b"KEY!", chunk=chunk).tolist() == want
            assert find(mem, b"!", chunk=chunk).tolist() == [a + 3 for a in want]
            assert find(mem, b"KEY", chunk=chunk).tolist() == [*want, 0x800D]


def test_find_many_overlapping_matches_and_limit_across_chunks():
    with GuestMemoryMmap.from_ranges([(0, 0x40000)]) as mem:  # all zeros
        assert find(mem, b"\x00" * 3, limit=5).tolist() == [0, 1, 2, 3, 4]
        got = find(mem, b"\x00" * 3, limit=70_000, chunk=4096)
        assert got.tolist() == list(range(70_000))
        assert find(mem, b"\x00" * 3).size == 0x40000 - 2


# -- find_many ------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(
    mem=memories(),
    patterns=st.lists(st.binary(min_size=1, max_size=5), min_size=1, max_size=20),
    backs=st.lists(st.integers(0, 5), max_size=3),
    chunk=st.sampled_from(CHUNKS),
)
def test_find_many_matches_model(mem, patterns, backs, chunk):
    layout, data = mem
    plants = [p for pat in patterns[:3] for p in plants_for(layout, pat, backs)]
    with build(layout, data, plants) as m:
        addrs, index = find_many(m, patterns, chunk=chunk)
        assert addrs.dtype == np.uint64 and index.dtype == np.int64
        assert list(zip(addrs.tolist(), index.tolist(), strict=True)) == model_find_many(
            runs_of(m), patterns
        )


def test_find_many_groups_duplicates_and_more_rows_than_room():
    patterns = [bytes([b, b + 1]) for b in range(0, 200, 7)] + [b"\x00", b"\x00\x00", b"\x00"]
    with GuestMemoryMmap.from_ranges([(0, 0x30000), (0x30000, 0x100)]) as mem:
        mem.write(bytes(range(256)), 0x2FFC0)  # straddles the regions
        addrs, index = find_many(mem, patterns)  # 3 x 0x30000 zero rows: the kernel resumes
        want = model_find_many(runs_of(mem), patterns)
        assert list(zip(addrs.tolist(), index.tolist(), strict=True)) == want
        assert len(want) > 3 * 0x2F000


# -- find_values ----------------------------------------------------------------------------
DTYPES = ["u1", "<u2", ">u2", "<i4", ">u4", "<u8", ">i8"]


@settings(max_examples=80, deadline=None)
@given(
    mem=memories(max_size=600),
    dtype=st.sampled_from(DTYPES),
    align=st.sampled_from([None, 1, 2, 3, 8]),
    picks=st.lists(st.integers(0, 2**32), min_size=1, max_size=4),
    chunk=st.sampled_from(CHUNKS),
)
def test_find_values_matches_model(mem, dtype, align, picks, chunk):
    layout, data = mem
    dt = np.dtype(dtype)
    a = dt.itemsize if align is None else align
    with build(layout, data) as m:
        runs = runs_of(m)
        present = [v for _, v in model_values(runs, dtype, 1, lambda v: True)]
        if not present:
            return
        values = sorted({present[p % len(present)] for p in picks})
        want = model_values(runs, dtype, a, lambda v: v in values)
        addrs, found = find_values(m, values, dtype, align=align, chunk=chunk)
        assert addrs.dtype == np.uint64 and found.dtype == dt.newbyteorder("=")
        assert list(zip(addrs.tolist(), found.tolist(), strict=True)) == want
        lo, hi = min(values), max(values)
        want = model_values(runs, dtype, a, lambda v: lo <= v < hi)
        addrs, found = find_values(m, dtype=dtype, lo=lo, hi=hi, align=align, chunk=chunk)
        assert list(zip(addrs.tolist(), found.tolist(), strict=True)) == want


def test_find_values_pointers_across_regions_and_open_ranges():
    with GuestMemoryMmap.from_ranges([(0, PAGE), (PAGE, PAGE), (3 * PAGE, PAGE)]) as mem:
        le64 = np.dtype("<u8")
        mem.write_obj(0xFFFF_FFFF_8000_0010, PAGE - 16, le64)
        mem.write_obj(0xFFFF_FFFF_8000_0020, PAGE - 4, le64)  # straddles regions 0 and 1
        mem.write_obj(0x1234, 4 * PAGE - 8, le64)
        kernel = find_values(mem, dtype=le64, lo=0xFFFF_FFFF_8000_0000, align=4)
        assert kernel[0].tolist() == [PAGE - 16, PAGE - 4]
        assert kernel[1].tolist() == [0xFFFF_FFFF_8000_0010, 0xFFFF_FFFF_8000_0020]
        assert find_values(mem, dtype=le64, hi=0x1235, lo=1)[0].tolist() == [4 * PAGE - 8]
        assert find_values(mem, dtype=le64, lo=2**64, hi=2**65)[0].size == 0
        want = model_values(runs_of(mem), "<i2", 2, lambda v: v < 1)
        assert find_values(mem, dtype="<i2", lo=-(2**40), hi=1)[0].tolist() == [a for a, _ in want]
        assert len(want) == 3 * PAGE // 2 - 3  # all but 0x10, 0x20 and 0x1234
        assert find_values(mem, [0xFFFF], dtype="<u2", align=PAGE)[0].tolist() == [PAGE]
        at = find_values(mem, np.array([[0x10], [0x1234]], np.uint64), ">u8", align=1)[0]
        assert at.tolist() == [PAGE - 23]  # zeros, then the low byte 0x10: big-endian 0x10
        assert find_values(mem, (v for v in [0x1234]), "<u8")[0].tolist() == [4 * PAGE - 8]


# -- find_regex -----------------------------------------------------------------------------
REGEXES = [rb"a[ab]{0,4}b", rb"\x00{2,6}", rb"(?:ab|ba)\x00", rb"[^a]"]


@settings(max_examples=80, deadline=None)
@given(
    mem=memories(max_size=2 * PAGE),
    regex=st.sampled_from(REGEXES),
    compiled=st.booleans(),
    chunk=st.sampled_from([1, 3, 64, 4096, 1 << 24]),
)
def test_find_regex_matches_model(mem, regex, compiled, chunk):
    layout, data = mem
    pattern = re.compile(regex)
    with build(layout, data) as m:
        want = model_regex(runs_of(m), pattern)
        addrs, found = find_regex(m, pattern if compiled else regex, max_len=8, chunk=chunk)
        assert addrs.dtype == np.uint64
        assert list(zip(addrs.tolist(), found, strict=True)) == want


def test_find_regex_flags_and_long_matches_are_cut_at_max_len():
    with GuestMemoryMmap.from_ranges([(0, PAGE), (PAGE, PAGE)]) as mem:
        mem.write(b"Token=" + b"x" * 100, PAGE - 3)
        addrs, found = find_regex(mem, rb"token=x+", flags=re.IGNORECASE)
        assert addrs.tolist() == [PAGE - 3] and found == [b"Token=" + b"x" * 100]
        addrs, found = find_regex(mem, rb"token=x+", flags=re.I, max_len=10, chunk=PAGE - 2)
        assert found == [b"Token=xxxxx"]  # documented: longer than max_len, cut


# -- strings --------------------------------------------------------------------------------
TEXTY = [b"ab\x00", b"a\x00\x01", b"ab \t\n\x00\x00\x00\x7f\x80", bytes(range(256))]


@settings(max_examples=120, deadline=None)
@given(
    mem=memories(max_size=2 * PAGE),
    alphabet=st.sampled_from(TEXTY),
    min_len=st.integers(1, 6),
    encoding=st.sampled_from(["ascii", "utf-16le", "both"]),
    chunk=st.sampled_from([1, 2, 3, 5, 64, 4096, 1 << 24]),
    seed=st.integers(0, 2**32 - 1),
)
def test_strings_match_model(mem, alphabet, min_len, encoding, chunk, seed):
    layout, _ = mem
    rng = np.random.default_rng(seed)
    data = [rng.choice(np.frombuffer(alphabet, dtype=np.uint8), size) for _, size in layout]
    with build(layout, data) as m:
        addrs, texts = strings(m, min_len, encoding=encoding, chunk=chunk)
        assert addrs.dtype == np.uint64
        assert (addrs.tolist(), texts) == model_strings(runs_of(m), min_len, encoding)


def test_strings_across_regions_holes_and_long_runs():
    with GuestMemoryMmap.from_ranges([(0, PAGE), (PAGE, PAGE), (2 * PAGE + 1, 64)]) as mem:
        mem.write(b"x" * 5000, 10)  # one string through both regions and many chunks
        mem.write("wide".encode("utf-16-le"), PAGE - 3)
        mem.write(b"cut", 2 * PAGE - 3)  # the hole ends it
        mem.write(b"off", 2 * PAGE + 1)
        for chunk in (7, 256, 1 << 24):
            addrs, texts = strings(mem, 3, encoding="both", chunk=chunk)
            assert (addrs.tolist(), texts) == model_strings(runs_of(mem), 3, "both")
            assert texts[-2:] == ["cut", "off"]


# -- dumps: kdump (no host memory) and excluded ranges --------------------------------------
def test_scans_of_a_kdump_dump_equal_the_memory(tmp_path):
    mem, _ = sample_memory([(0, 8 * PAGE), (8 * PAGE, 4 * PAGE), (0x100000, 2 * PAGE)], seed=3)
    with mem:
        mem.write(b"needle\x00s\x00t\x00r\x00", 8 * PAGE - 3)
        mem.write_obj(0x10_0042, 0x100010, np.dtype("<u8"))
        write_kdump(mem, tmp_path / "k")
        want = [
            find(mem, b"needle"),
            find_many(mem, [b"needle", b"\x00\x00"]),
            strings(mem, 3, encoding="both"),
            find_values(mem, dtype="<u8", lo=0x10_0000, hi=0x10_2000),
            find_regex(mem, rb"ne+dle"),
        ]
    with open_kdump(tmp_path / "k") as dump:
        got = [
            find(dump, b"needle", chunk=3 * PAGE),
            find_many(dump, [b"needle", b"\x00\x00"]),
            strings(dump, 3, encoding="both", chunk=5 * PAGE),
            find_values(dump, dtype="<u8", lo=0x10_0000, hi=0x10_2000),
            find_regex(dump, rb"ne+dle"),
        ]
    assert got[0].tolist() == want[0].tolist() == [8 * PAGE - 3]
    for g, w in zip(got[1:], want[1:], strict=True):
        assert [np.asarray(x).tolist() for x in g] == [np.asarray(x).tolist() for x in w]
    assert 0x100010 in want[3][0].tolist()


def test_excluded_ranges_are_holes():
    regions = list(GuestMemoryMmap.from_ranges([(0, 4 * PAGE)]).iter())
    regions[0].as_array()[PAGE - 2 : PAGE + 2] = np.frombuffer(b"KEYS", dtype=np.uint8)
    regions[0].as_array()[3 * PAGE - 2 : 3 * PAGE + 2] = np.frombuffer(b"KEYS", dtype=np.uint8)
    mem = DumpMemory(regions, DumpMetadata("test", "", excluded=((PAGE, PAGE),)))
    with mem:
        assert find(mem, b"KEYS").tolist() == [3 * PAGE - 2]
        assert find(mem, b"KE").tolist() == [PAGE - 2, 3 * PAGE - 2]


def test_empty_memory_finds_nothing():
    mem = GuestMemoryMmap()
    assert find(mem, b"x").dtype == np.uint64 and find(mem, b"x").size == 0
    assert [x.size for x in find_many(mem, [b"x"])] == [0, 0]
    assert find_values(mem, [1], "<u4")[0].size == 0
    addrs, found = find_regex(mem, b"x")
    assert addrs.dtype == np.uint64 and addrs.size == 0 and found == []
    assert strings(mem)[1] == []


def test_extreme_but_valid_arguments():
    """Knobs and bounds far past the memory's size give the same answers as modest ones."""
    with GuestMemoryMmap.from_ranges([(0, PAGE), (PAGE, PAGE)]) as mem:
        mem.write(b"ab", PAGE - 1)
        for chunk in (PAGE, 1 << 34, 1 << 62):  # no buffer sized by chunk alone
            assert find(mem, b"ab", chunk=chunk).tolist() == [PAGE - 1]
            assert find(mem, b"ab", chunk=chunk, limit=2**70).tolist() == [PAGE - 1]
        for align in (2**63, 2**64 + 8):  # one candidate: no stride that long is taken
            addrs, found = find_values(mem, [0], "u1", align=align)
            assert addrs.tolist() == [0] and found.tolist() == [0]
        for min_len in (2**63, 2**64):
            assert strings(mem, min_len)[1] == []


# -- errors ---------------------------------------------------------------------------------
@pytest.fixture
def small():
    with GuestMemoryMmap.from_ranges([(0, PAGE)]) as mem:
        yield mem


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda m: find(m, b""), ValueError, "pattern is empty"),
        (lambda m: find(m, "text"), TypeError, "pattern must be bytes, not str"),
        (lambda m: find(m, 3), TypeError, "pattern must be bytes-like"),
        (lambda m: find(m, b"x", limit=-1), ValueError, "limit must be at least 0"),
        (lambda m: find(m, b"x", limit=1.5), TypeError, "limit must be an integer"),
        (lambda m: find(m, b"x", chunk=0), ValueError, "chunk must be at least 1"),
        (lambda m: find_many(m, []), ValueError, "patterns is empty"),
        (lambda m: find_many(m, b"ab"), TypeError, "not one pattern"),
        (lambda m: find_many(m, [b"a", b""]), ValueError, r"patterns\[1\] is empty"),
        (lambda m: find_many(m, [b"a", "b"]), TypeError, r"patterns\[1\] must be bytes"),
        (lambda m: find_values(m, [1], "f8"), TypeError, "integer dtype"),
        (lambda m: find_values(m, [1], "nonsense"), TypeError, "not a numpy dtype"),
        (lambda m: find_values(m, [256], "u1"), ValueError, "values does not fit"),
        (lambda m: find_values(m, [-1], "u1"), ValueError, "values must be at least 0"),
        (lambda m: find_values(m, [1.5], "u1"), TypeError, "values must be an integer"),
        (lambda m: find_values(m, "ab", "u1"), TypeError, "values must be an iterable"),
        (lambda m: find_values(m, 7, "u1"), TypeError, "values must be an iterable"),
        (lambda m: find_values(m, [], "u1"), ValueError, "values is empty"),
        (lambda m: find_values(m, dtype="u1"), TypeError, "either values or a range"),
        (lambda m: find_values(m, [1], "u1", lo=0), TypeError, "either values or a range"),
        (lambda m: find_values(m, dtype="u1", lo="0"), TypeError, "lo must be an integer"),
        (lambda m: find_values(m, [1], "u1", align=0), ValueError, "align must be at least 1"),
        (lambda m: find_regex(m, "text"), TypeError, "regex must be bytes"),
        (lambda m: find_regex(m, re.compile("t")), TypeError, "not a str pattern"),
        (lambda m: find_regex(m, re.compile(b"t"), flags=re.I), ValueError, "flags cannot"),
        (lambda m: find_regex(m, b"("), ValueError, "regex is not a valid"),
        (lambda m: find_regex(m, b"x", max_len=0), ValueError, "max_len must be at least 1"),
        (lambda m: strings(m, encoding="latin-1"), ValueError, "encoding must be one of"),
        (lambda m: strings(m, 0), ValueError, "min_len must be at least 1"),
        (lambda m: strings(m, "4"), TypeError, "min_len must be an integer"),
    ],
)
def test_bad_arguments_raise_typed_errors(small, call, error, match):
    with pytest.raises(error, match=match):
        call(small)


@pytest.mark.parametrize(
    "scan",
    [
        lambda m: find(m, b"x"),
        lambda m: find_many(m, [b"x"]),
        lambda m: find_values(m, [1], "u1"),
        lambda m: find_regex(m, b"x"),
        lambda m: strings(m),
        lambda m: yara_scan(m, "rule r { condition: true }"),
    ],
)
@pytest.mark.parametrize("mem", [None, b"bytes", np.zeros(8, np.uint8)])
def test_scans_refuse_what_is_not_a_memory(scan, mem):
    with pytest.raises(
        TypeError, match=f"mem must be a GuestMemoryMmap or a dump, not {type(mem).__name__}"
    ):
        scan(mem)


# -- yara -----------------------------------------------------------------------------------
RULES = """
rule magic { strings: $m = "MAGIC" condition: $m }
rule pair { strings: $a = { 41 42 43 } $b = "XYZ" condition: any of them }
"""


@pytest.mark.skipif(not HAVE_YARA, reason="yara-python is not installed")
def test_yara_scan_reports_string_instances_at_guest_addresses():
    import yara

    with GuestMemoryMmap.from_ranges([(0, PAGE), (PAGE, PAGE), (4 * PAGE, PAGE)]) as mem:
        for addr in (PAGE - 2, 4 * PAGE + 10):
            mem.write(b"MAGIC", addr)
        mem.write(b"ABC", 2 * PAGE - 3)
        mem.write(b"XYZ", 4 * PAGE)
        want = (
            [PAGE - 2, 2 * PAGE - 3, 4 * PAGE, 4 * PAGE + 10],
            ["magic", "pair", "pair", "magic"],
        )
        for rules in (RULES, yara.compile(source=RULES)):
            for chunk in (PAGE // 2, 1 << 24):
                addrs, names = yara_scan(mem, rules, chunk=chunk)
                assert addrs.dtype == np.uint64
                assert (addrs.tolist(), names) == want
        with pytest.raises(ValueError, match="rules do not compile"):
            yara_scan(mem, "rule {")
        with pytest.raises(TypeError, match=r"rules must be yara\.Rules"):
            yara_scan(mem, 42)
        with pytest.raises(ValueError, match="max_len must be at least 1"):
            yara_scan(mem, RULES, max_len=0)


@pytest.mark.skipif(not HAVE_YARA, reason="yara-python is not installed")
def test_yara_scan_finds_more_instances_than_yara_keeps_per_match():
    """yara keeps 1,000,000 instances of a string per match: a chunk past that is split."""
    size = (1 << 20) + (1 << 16)  # ~1.1 million instances of four zero bytes
    with GuestMemoryMmap.from_ranges([(0, size)]) as mem:
        mem.write(b"\x01", 700_000)  # (instances on both sides of a split)
        addrs, names = yara_scan(mem, "rule z { strings: $z = { 00 00 00 00 } condition: $z }")
        assert np.array_equal(addrs, find(mem, bytes(4))) and set(names) == {"z"}


def test_yara_scan_without_yara_python_names_the_package(small, monkeypatch):
    monkeypatch.setitem(sys.modules, "yara", None)  # import yara -> ImportError
    with pytest.raises(ImportError, match="pip install yara-python"):
        yara_scan(small, RULES)
