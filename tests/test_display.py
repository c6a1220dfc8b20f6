"""Hexdumps, HTML reprs (parsed with html.parser) and plots (saved to PNG with Agg)."""

from __future__ import annotations

import sys
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest
from _support import readonly_file_memory
from dump_support import PAGE, sample_memory
from hypothesis import given, settings
from hypothesis import strategies as st

from npguest import AtomicBitmap, GuestMemoryMmap, GuestRegionMmap, VolatileSlice
from npguest import display as dp
from npguest.dumps.dump import DumpMemory, DumpMetadata
from npguest.dumps.kdump import open_kdump, write_kdump
from npguest.errors import GuestAddressOverflowError
from npguest.pages import page_entropy

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def hexdump_lines(addr, values, valid):
    """The model: xxd-style lines, holes as ``--``."""
    lines = []
    for off in range(0, len(values), 16):
        row, ok = values[off : off + 16].tolist(), valid[off : off + 16].tolist()
        hexes = [f"{b:02x}" if v else "--" for b, v in zip(row, ok, strict=True)]
        text = "".join(chr(b) if v and 32 <= b < 127 else "." for b, v in zip(row, ok, strict=True))
        left = " ".join(hexes[:8]).ljust(23) + "  " + " ".join(hexes[8:]).ljust(23)
        lines.append(f"{addr + off:#018x}  {left}  {text}")
    return lines


VOID = {"br", "hr", "img", "input", "meta", "link", "col", "wbr"}


class Checker(HTMLParser):
    """Fail on an end tag that closes anything but the innermost open element."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.text, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(markup: str) -> Checker:
    """Parse ``markup``, asserting it is well formed; return the parser (text, tags)."""
    c = Checker()
    c.feed(markup)
    c.close()
    assert not c.stack, f"unclosed {c.stack}"
    return c


def text_of(markup: str) -> str:
    return "".join(parse(markup).text)


# -- hexdumps -----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    gaps=st.lists(st.sampled_from([0, 1, 7]), min_size=3, max_size=3),
    start=st.integers(-20, 20),
    n=st.integers(0, 150),
)
def test_hexdump_matches_a_byte_model(sizes, gaps, start, n):
    layout, cur = [], 0x1000
    for size, gap in zip(sizes, gaps, strict=False):
        layout.append((cur, size))
        cur += size + gap
    mem, model = sample_memory(layout, seed=n)
    with mem:
        backed = {gpa + i: b for gpa, data in model for i, b in enumerate(data)}
        addr = 0x1000 + start
        values = np.array([backed.get(a, 0) for a in range(addr, addr + n)], dtype=np.uint8)
        valid = np.array([a in backed for a in range(addr, addr + n)], dtype=bool)
        want = "\n".join(hexdump_lines(addr, values, valid))
        assert dp.hexdump(mem, addr, n) == want
        assert text_of(dp.hexdump_html(mem, addr, n)) == want


def test_hexdump_of_regions_slices_and_dumps(tmp_path):
    region = GuestRegionMmap.from_range(0x2000, 0x10)
    region.write(b"<&>", 0xE)
    lines = dp.hexdump(region, 0x2008, 16).split("\n")
    assert lines[0].startswith("0x0000000000002008  00 00 00 00 00 00 3c 26  -- --")
    assert lines[0].endswith("......<&........")
    s = VolatileSlice(bytearray(b"0123456789"))
    assert dp.hexdump(s, 8, 4).split()[1:] == ["38", "39", "--", "--", "89.."]
    assert dp.hexdump(s, 0, 0) == ""
    markup = dp.hexdump_html(region, 0x200E, 4)
    assert "&lt;&amp;" in markup and "0x000000000000200e" in text_of(markup)
    mem, _ = sample_memory([(0, 4 * PAGE)], seed=1)
    with mem:
        write_kdump(mem, tmp_path / "k")
        with open_kdump(tmp_path / "k") as dump:
            assert dp.hexdump(dump, PAGE - 8, 64) == dp.hexdump(mem, PAGE - 8, 64)
    regions = list(GuestMemoryMmap.from_ranges([(0, PAGE)]).iter())
    with DumpMemory(regions, DumpMetadata("t", "", excluded=((8, 4),))) as dump:
        assert dp.hexdump(dump, 0, 16).split()[9:13] == ["--"] * 4


def test_hexdump_of_a_kdump_region_shows_its_excluded_pages_as_holes(tmp_path):
    regions = list(GuestMemoryMmap.from_ranges([(0, 6 * PAGE)]).iter())
    regions[0].write_slice(np.random.default_rng(2).bytes(6 * PAGE), 0)
    with DumpMemory(regions, DumpMetadata("t", "", excluded=((PAGE, 2 * PAGE),))) as src:
        write_kdump(src, tmp_path / "k")
    with open_kdump(tmp_path / "k") as dump:
        (region,) = dump.iter()
        for addr, n in [(PAGE - 8, 16), (0, 6 * PAGE), (3 * PAGE - 1, 2), (2 * PAGE, 8)]:
            assert dp.hexdump(region, addr, n) == dp.hexdump(dump, addr, n)
        assert dp.hexdump(region, PAGE - 8, 16).count("--") == 8
        del region


def test_hexdump_bad_arguments():
    mem = GuestMemoryMmap.from_ranges([(0, PAGE)])
    with mem:
        with pytest.raises(TypeError, match="mem must be a GuestMemoryMmap"):
            dp.hexdump(b"abc", 0, 1)
        with pytest.raises(TypeError, match="addr must be an integer"):
            dp.hexdump(mem, 1.5, 1)
        with pytest.raises(ValueError, match="n must be at most"):
            dp.hexdump_html(mem, 0, dp.MAX_HEXDUMP + 1)
        with pytest.raises(GuestAddressOverflowError):
            dp.hexdump(mem, -1, 1)
        with pytest.raises(GuestAddressOverflowError, match="overflows"):
            dp.hexdump(mem, 2**64 - 8, 9)
        assert dp.hexdump(mem, 2**64 - 8, 8).count("--") == 8


# -- HTML reprs ---------------------------------------------------------------------------
def test_memory_html_lists_every_region(tmp_path):
    path = tmp_path / "a<b>&.bin"
    ro = readonly_file_memory(path, bytes(2 * PAGE), 0x100000)
    anon = GuestMemoryMmap.from_ranges([(0, PAGE), (0x3000, 0x1800)], bitmap=AtomicBitmap)
    mem = GuestMemoryMmap.from_regions([*anon.iter(), *ro.iter()])
    del anon, ro  # mem alone holds the regions now
    with mem:
        mem.write(b"x", 0x3010)
        markup = mem._repr_html_()
        assert markup == dp.memory_html(mem)
        text = text_of(markup)
        for s in ("0x0", "0x1000", "0x3000", "0x4800", "0x100000", "0x102000"):
            assert s in text
        assert "6 KiB" in text and "8 KiB" in text and "3 regions" in text
        assert "1 / 2" in text and "0 / 1" in text and "untracked" in text
        assert f"{path} @ 0x0" in text and "&lt;b&gt;&amp;" in markup
        assert markup.count(">rw<") == 2 and markup.count(">ro<") == 1


def test_memory_html_is_bounded_and_handles_empty_and_dumps(tmp_path):
    many = GuestMemoryMmap.from_ranges([(i * 0x2000, 0x1000) for i in range(100)])
    with many:
        text = text_of(dp.memory_html(many, max_rows=10))
        assert "90 more regions" in text and "0x8000" in text and "0xc6000" in text
        assert "0xa000" not in text and len(parse(dp.memory_html(many)).tags) < 3000
    assert "0 regions, 0 B" in text_of(GuestMemoryMmap()._repr_html_())
    regions = list(GuestMemoryMmap.from_ranges([(0, PAGE)]).iter())
    with DumpMemory(regions, DumpMetadata("raw", "/x/<y>")) as dump:
        assert "(raw dump '/x/<y>')" in text_of(dump._repr_html_())
    mem, _ = sample_memory([(0, 2 * PAGE)])
    with mem:
        write_kdump(mem, tmp_path / "k")
    with open_kdump(tmp_path / "k") as dump:
        assert "0x2000" in text_of(dump._repr_html_())
    with pytest.raises(TypeError, match="mem must be"):
        dp.memory_html(object())
    with pytest.raises(ValueError, match="max_rows must be at least 1, got 0"):
        dp.memory_html(GuestMemoryMmap(), 0)
    with pytest.raises(TypeError, match="max_rows must be an integer, got NoneType"):
        dp.memory_html(GuestMemoryMmap(), None)


def test_region_html_open_and_closed():
    region = GuestRegionMmap.from_range(0x1000, 4 * PAGE, bitmap=AtomicBitmap)
    region.write(b"x", PAGE)
    markup = region._repr_html_()
    assert markup == dp.region_html(region)
    text = text_of(markup)
    assert "0x1000" in text and "0x5000" in text and "1 / 4" in text
    assert parse(markup).tags.count("rect") == 2  # the background, one dirty cell
    region.close()
    assert "closed" in text_of(region._repr_html_())
    with pytest.raises(TypeError, match="region must be"):
        dp.region_html(GuestMemoryMmap())


def test_bitmap_html_strip():
    small = AtomicBitmap(10 * PAGE)
    small.set_addr_range(3 * PAGE, 2 * PAGE)
    markup = small._repr_html_()
    assert markup == dp.bitmap_html(small)
    assert "2 / 10 pages dirty (4 KiB pages, 40 KiB)" in text_of(markup)
    assert parse(markup).tags.count("rect") == 3
    big = AtomicBitmap(1 << 36)  # 16 Mi pages, 256 Ki words: counted per word
    big.set_addr_range(0, 1 << 30)
    big.set_addr_range((1 << 36) - PAGE, PAGE)
    markup = dp.bitmap_html(big, cells=64)
    rects = [t for t in parse(markup).tags if t == "rect"]
    assert len(rects) == 1 + 2 and "262145 / 16777216" in text_of(markup)
    assert 'fill-opacity="1.00"' in markup  # the first cell: all dirty
    assert 'fill-opacity="0.15"' in markup  # the last: one page, still visible
    assert "0 / 0 pages" in text_of(AtomicBitmap(0)._repr_html_())
    with pytest.raises(TypeError, match="bitmap must be"):
        dp.bitmap_html(small.slice_at(0))
    with pytest.raises(ValueError, match="cells must be at least 1, got 0"):
        dp.bitmap_html(small, 0)
    with pytest.raises(TypeError, match="cells must be an integer, got float"):
        dp.bitmap_html(small, 1.5)


def test_slice_html():
    s = VolatileSlice(bytearray(b"<script>" + bytes(300)))
    markup = s._repr_html_()
    assert markup == dp.slice_html(s)
    text = text_of(markup)
    assert "&lt;script&gt;" in markup and "<script>" not in markup
    assert "52 more bytes" in text and "308 B" in text and "rw" in text
    assert text.count("\n") == 15  # 16 lines of 16 bytes
    assert "0 B" in text_of(VolatileSlice(bytearray())._repr_html_())
    with pytest.raises(TypeError, match="vslice must be"):
        dp.slice_html(bytearray(1))


# -- plots --------------------------------------------------------------------------------
@pytest.fixture
def tracked():
    mem = GuestMemoryMmap.from_ranges([(0, 4 * PAGE), (8 * PAGE, 2 * PAGE)], bitmap=AtomicBitmap)
    mem.write(b"x", PAGE + 5)
    mem.write(b"x", 8 * PAGE)
    yield mem
    plt.close("all")
    mem.close()


def test_plot_memory_map(tmp_path, tracked):
    for scale in ("log", "linear"):
        ax = dp.plot_memory_map(tracked, scale=scale)
        ax.figure.savefig(tmp_path / f"map-{scale}.png")
        assert (tmp_path / f"map-{scale}.png").stat().st_size > 0
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["0x0", "0x4000", "0x8000", "0xa000"]
    fig, ax = plt.subplots()
    assert dp.plot_memory_map(GuestMemoryMmap(), ax=ax) is ax
    fig.savefig(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="scale"):
        dp.plot_memory_map(tracked, scale="cubic")
    with pytest.raises(TypeError, match="mem must be"):
        dp.plot_memory_map(None)


def test_plot_page_strip(tmp_path, tracked):
    ax = dp.plot_page_strip(tracked, "entropy", width=4)  # pages 0-3, 8, 9: holes skipped
    ax.figure.savefig(tmp_path / "entropy.png")
    grid = ax.images[0].get_array()
    assert grid.shape == (2, 4)
    want = np.r_[page_entropy(tracked)[1], np.nan, np.nan]
    np.testing.assert_allclose(grid.filled(np.nan).reshape(-1), want)
    label = ax.yaxis.get_major_formatter()
    assert [label(y, None) for y in (0, 1, 2)] == ["0x0", "0x8000", ""]
    ax = dp.plot_page_strip(tracked, "zero", width=2, max_cells=3)  # 2 pages per cell
    ax.figure.savefig(tmp_path / "zero.png")
    got = ax.images[0].get_array().filled(np.nan).reshape(-1)
    np.testing.assert_allclose(got, [0.5, 1.0, 0.5, np.nan])
    assert dp.plot_page_strip(GuestMemoryMmap()).texts[0].get_text() == "no backed pages"
    with pytest.raises(ValueError, match="kind"):
        dp.plot_page_strip(tracked, "hash")
    with pytest.raises(ValueError, match="width must be at least 1, got 0"):
        dp.plot_page_strip(tracked, width=0)
    with pytest.raises(TypeError, match="width must be an integer, got float"):
        dp.plot_page_strip(tracked, width=1.5)
    with pytest.raises(ValueError, match="page_size"):
        dp.plot_page_strip(tracked, page_size=3)


def test_plot_dirty_heatmap(tmp_path, tracked):
    ax = dp.plot_dirty_heatmap(tracked, width=4)  # pages 0-3, 8, 9: holes skipped
    ax.figure.savefig(tmp_path / "dirty.png")
    got = ax.images[0].get_array().filled(np.nan).reshape(-1)
    np.testing.assert_allclose(got, [0, 1, 0, 0, 1, 0, np.nan, np.nan])
    label = ax.yaxis.get_major_formatter()
    assert [label(y, None) for y in (0, 1)] == ["0x0", "0x8000"]
    ax = dp.plot_dirty_heatmap(tracked, width=4, max_cells=3)  # two pages per cell
    got = ax.images[0].get_array().filled(np.nan).reshape(-1)
    np.testing.assert_allclose(got, [0.5, 0, 0.5, np.nan])
    regions = [(0x800, 0x1000), (0x1800, 0x1800), (0x8000, 0x800)]
    odd = GuestMemoryMmap.from_ranges(regions, bitmap=AtomicBitmap)
    with odd:  # regions off page boundaries (their pages start at their bases)
        odd.write(b"x", 0x2900)  # the second region's page 1: guest [0x2800, 0x3000)
        ax = dp.plot_dirty_heatmap(odd, width=2)  # the last cell: [0x2800, 0x3000) + 0x8000..
        got = ax.images[0].get_array().reshape(-1)
        np.testing.assert_allclose(got, [0.0, 0.0, 0.5, np.nan])
        assert ax.yaxis.get_major_formatter()(1, None) == "0x2800"
    untracked = GuestMemoryMmap.from_ranges([(0, PAGE)])
    with untracked, pytest.raises(ValueError, match="no region of mem tracks"):
        dp.plot_dirty_heatmap(untracked)
    with pytest.raises(ValueError, match="max_cells must be at least 1, got 0"):
        dp.plot_dirty_heatmap(tracked, max_cells=0)
    with pytest.raises(TypeError, match="max_cells must be an integer, got str"):
        dp.plot_dirty_heatmap(tracked, max_cells="8")
    with pytest.raises(TypeError, match="mem must be"):
        dp.plot_dirty_heatmap(None)


def test_plots_name_the_extra_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with GuestMemoryMmap.from_ranges([(0, PAGE)]) as mem:
        for plot in (dp.plot_memory_map, dp.plot_page_strip):
            with pytest.raises(ImportError, match=r"npguest\[plot\]"):
                plot(mem)
