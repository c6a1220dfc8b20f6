"""Showing guest memory: hexdumps, Jupyter HTML reprs, and matplotlib plots.

The core classes' ``_repr_html_`` methods call into this module (imported on first
use), so a notebook shows a :class:`~npguest.GuestMemoryMmap` as a table of its regions,
an :class:`~npguest.AtomicBitmap` as a strip of dirty pages, and a
:class:`~npguest.VolatileSlice` as a hexdump.  All HTML escapes every text it shows and
stays bounded for huge memories (a window of rows, a fixed number of strip cells).

Plots need matplotlib (the ``plot`` extra: ``pip install 'npguest[plot]'``), imported
only when a plot is drawn; each takes an optional ``ax`` and returns the Axes drawn on.
"""

from __future__ import annotations

import html
import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from .address import U64_MAX, _u64
from .bitmap import AtomicBitmap, BitmapSlice, NoBitmap
from .errors import GuestAddressOverflowError, HostAddressNotAvailableError
from .guest_memory import GuestMemoryMmap
from .pages import page_entropy, page_map
from .region import GuestRegionMmap
from .volatile import VolatileSlice
from .walk import backed_runs

__all__ = [
    "bitmap_html",
    "hexdump",
    "hexdump_html",
    "memory_html",
    "plot_dirty_heatmap",
    "plot_memory_map",
    "plot_page_strip",
    "region_html",
    "slice_html",
]

#: Most bytes one hexdump shows.
MAX_HEXDUMP = 1 << 20
#: Bytes a slice's HTML repr shows.
SLICE_PREVIEW = 256
#: Cells of a dirty-page strip.
STRIP_CELLS = 256

_STYLE = "font-family:monospace;border-collapse:collapse;text-align:right"
_HEX = np.array([f"{b:02x}" for b in range(256)] + ["--"])
_TEXT = np.array([chr(b) if 32 <= b < 127 else "." for b in range(256)] + ["."])

Reader = Callable[[np.ndarray, int], None]


def _size(n: int) -> str:
    """Format a byte count: ``512 B``, ``4 KiB``, ``1.5 GiB``."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i, x = 0, float(n)
    while x >= 1024 and i < len(units) - 1:
        x, i = x / 1024, i + 1
    return f"{n} B" if i == 0 else f"{x:.4g} {units[i]}"


def _e(value: object) -> str:
    return html.escape(str(value))


def _positive(value: Any, name: str) -> int:
    """Return ``value`` as an int of at least 1, or raise naming ``name``."""
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if n < 1:
        raise ValueError(f"{name} must be at least 1, got {n}")
    return n


# -- hexdumps -----------------------------------------------------------------------------
def _spans(obj: Any, addr: int, n: int) -> list[tuple[int, int, Reader]]:
    """Return the backed ``[start, end)`` spans of ``obj`` with a reader of each.

    The spans include at least those ``[addr, addr + n)`` meets, in ascending order.
    """
    if isinstance(obj, GuestMemoryMmap):
        return [(s, e, obj.read_slice) for s, e in backed_runs(obj)]
    if isinstance(obj, GuestRegionMmap):
        base = int(obj.start_addr())
        lo, hi = max(addr, base), min(addr + n, base + obj.len())
        spans = obj._backed_spans(lo - base, hi - lo) if lo < hi else []  # (a dump's region
        return [  # may leave pages out)
            (base + s, base + e, lambda buf, a: obj.read_slice(buf, a - base)) for s, e in spans
        ]
    return [(0, obj.len(), obj.read_slice)]  # a VolatileSlice


def _masked(obj: Any, addr: Any, n: Any) -> tuple[int, np.ndarray]:
    """Read ``n`` bytes at ``addr``: return the address and the bytes (256 = a hole)."""
    if not isinstance(obj, GuestMemoryMmap | GuestRegionMmap | VolatileSlice):
        raise TypeError(
            "mem must be a GuestMemoryMmap, GuestRegionMmap or VolatileSlice, "
            f"got {type(obj).__name__}"
        )
    addr, n = _u64(addr, "addr"), _u64(n, "n")
    if n > MAX_HEXDUMP:
        raise ValueError(f"n must be at most {MAX_HEXDUMP} bytes, got {n}")
    if addr + n - 1 > U64_MAX:
        raise GuestAddressOverflowError(addr, n)
    values = np.full(n, 256, dtype=np.int16)
    for s, e, read in _spans(obj, addr, n):
        if s >= addr + n:  # (spans ascend)
            break
        lo, hi = max(s, addr), min(e, addr + n)
        if lo < hi:
            buf = np.empty(hi - lo, dtype=np.uint8)
            read(buf, lo)
            values[lo - addr : hi - addr] = buf
    return addr, values


def _lines(addr: int, values: np.ndarray) -> list[tuple[int, str, str]]:
    """Split masked bytes into 16-byte lines of ``(address, hex column, text column)``."""
    hexes, text = _HEX[values], _TEXT[values]
    out = []
    for off in range(0, values.shape[0], 16):
        row = hexes[off : off + 16].tolist()
        left = " ".join(row[:8]).ljust(23) + "  " + " ".join(row[8:]).ljust(23)
        out.append((addr + off, left, "".join(text[off : off + 16].tolist())))
    return out


def hexdump(mem: Any, addr: Any, n: int) -> str:
    """Format ``n`` bytes at ``addr`` as ``xxd``-style lines with their addresses.

    Bytes nothing backs (holes, bytes past a region or slice) show as ``--``.

    Parameters
    ----------
    mem : GuestMemoryMmap, GuestRegionMmap or VolatileSlice
        What to read: ``addr`` is a guest address for a memory or a region, an offset
        for a slice.
    addr : int or GuestAddress
        The first byte.
    n : int
        Bytes to show (at most :data:`MAX_HEXDUMP`).

    Returns
    -------
    str
        One line per 16 bytes: address, 16 hex bytes, the printable ASCII.

    Raises
    ------
    TypeError
        ``mem`` is none of the three, or ``addr`` / ``n`` not an integer.
    ValueError
        ``n`` is over :data:`MAX_HEXDUMP`.
    GuestAddressOverflowError
        ``addr`` or ``n`` is negative or over 64 bits, or the range passes ``2**64``.

    Examples
    --------
    >>> mem = GuestMemoryMmap.from_ranges([(0x1000, 0x10)])
    >>> mem.write(b"hi!", 0x100C)
    3
    >>> print(hexdump(mem, 0x1008, 12))
    0x0000000000001008  00 00 00 00 68 69 21 00  -- -- -- --              ....hi!.....
    """
    start, values = _masked(mem, addr, n)
    return "\n".join(f"{a:#018x}  {left}  {text}" for a, left, text in _lines(start, values))


def hexdump_html(mem: Any, addr: Any, n: int) -> str:
    """Format ``n`` bytes at ``addr`` as an HTML hexdump (see :func:`hexdump`).

    Parameters
    ----------
    mem : GuestMemoryMmap, GuestRegionMmap or VolatileSlice
        What to read.
    addr : int or GuestAddress
        The first byte.
    n : int
        Bytes to show (at most :data:`MAX_HEXDUMP`).

    Returns
    -------
    str
        A ``<pre>`` block; holes are greyed.

    Raises
    ------
    TypeError
        ``mem`` is none of the three, or ``addr`` / ``n`` not an integer.
    ValueError
        ``n`` is over :data:`MAX_HEXDUMP`.
    GuestAddressOverflowError
        ``addr`` or ``n`` is negative or over 64 bits, or the range passes ``2**64``.

    Examples
    --------
    >>> mem = GuestMemoryMmap.from_ranges([(0, 4)])
    >>> hexdump_html(mem, 0, 5).count('<span style="color:#bbb">--</span>')
    1
    """
    start, values = _masked(mem, addr, n)
    hole = '<span style="color:#bbb">--</span>'
    rows = [
        f'<span style="color:#888">{a:#018x}</span>  {_e(left).replace("--", hole)}  {_e(text)}'
        for a, left, text in _lines(start, values)
    ]
    return '<pre class="npguest-hexdump">' + "\n".join(rows) + "</pre>"


# -- HTML reprs ---------------------------------------------------------------------------
def _table(head: list[str], rows: list[list[str]]) -> str:
    """Build an HTML table of already-escaped cells."""
    th = "".join(f'<th style="padding:0 .6em">{h}</th>' for h in head)
    body = "".join(
        "<tr>" + "".join(f'<td style="padding:0 .6em">{c}</td>' for c in row) + "</tr>"
        for row in rows
    )
    return f'<table style="{_STYLE}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _dirty_cell(bitmap: Any) -> str:
    if isinstance(bitmap, NoBitmap):
        return "untracked"
    if isinstance(bitmap, AtomicBitmap):
        return f"{bitmap.count()} / {bitmap.len()}"
    return _e(f"tracked ({type(bitmap).__name__})")


def _backing(region: GuestRegionMmap) -> str:
    fo = region.file_offset()
    if fo is None:
        return "anonymous"
    f = fo.file()
    name = f"fd {f}" if isinstance(f, int) else getattr(f, "name", type(f).__name__)
    return _e(f"{name} @ {fo.start():#x}")


_REGION_HEAD = ["start", "end", "size", "backing", "access", "dirty pages"]


def _region_row(region: GuestRegionMmap) -> list[str]:
    start, end = int(region.start_addr()), int(region.last_addr()) + 1
    try:
        closed = region.get_mmap().closed
    except HostAddressNotAvailableError:  # a kdump region: no mapping to close
        closed = False
    access = "closed" if closed else "ro" if region.is_readonly() else "rw"
    return [
        f"{start:#x}",
        f"{end:#x}",
        _e(_size(end - start)),
        _backing(region),
        access,
        _dirty_cell(_bitmap_of(region)),
    ]


def _bitmap_of(region: GuestRegionMmap) -> Any:
    """Return the bitmap tracking a region (unwrapping the view ``bitmap()`` returns)."""
    bitmap = region.bitmap()
    return bitmap.inner if isinstance(bitmap, BitmapSlice) else bitmap


def memory_html(mem: GuestMemoryMmap, max_rows: int = 64) -> str:
    """Return an HTML table of a memory's regions (its ``_repr_html_``).

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory (a dump adds its format and path).
    max_rows : int, optional
        Regions shown: the first and last halves, with a row counting the rest.

    Returns
    -------
    str
        A heading and a table: start, exclusive end, size, file backing, access, and
        dirty pages (``dirty / pages`` when an :class:`~npguest.AtomicBitmap` tracks).

    Raises
    ------
    TypeError
        ``mem`` is not a guest memory, or ``max_rows`` not an integer.
    ValueError
        ``max_rows`` is less than 1.

    Examples
    --------
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x4000, 0x2000)])
    >>> "0x4000" in memory_html(mem) and "8 KiB" in memory_html(mem)
    True
    """
    if not isinstance(mem, GuestMemoryMmap):
        raise TypeError(f"mem must be a GuestMemoryMmap, got {type(mem).__name__}")
    max_rows = _positive(max_rows, "max_rows")
    regions = list(mem.iter())
    total = sum(r.len() for r in regions)
    title = f"{type(mem).__name__}: {len(regions)} region{'s' if len(regions) != 1 else ''}"
    title += f", {_size(total)}"
    meta = getattr(mem, "metadata", None)
    if meta is not None:
        title += f" ({meta.format} dump {meta.path!r})" if meta.path else f" ({meta.format})"
    if len(regions) > max_rows:
        head = (max_rows + 1) // 2
        tail = max_rows - head
        rows = [_region_row(r) for r in regions[:head]]
        rows.append(["…", "", f"{len(regions) - max_rows} more regions", "", "", ""])
        rows += [_region_row(r) for r in regions[len(regions) - tail :]]
    else:
        rows = [_region_row(r) for r in regions]
    return f"<div><b>{_e(title)}</b>{_table(_REGION_HEAD, rows)}</div>"


def region_html(region: GuestRegionMmap) -> str:
    """Return an HTML summary of one region (its ``_repr_html_``).

    Parameters
    ----------
    region : GuestRegionMmap
        The region (closed ones too).

    Returns
    -------
    str
        A one-row region table, and the dirty strip when an AtomicBitmap tracks it.

    Raises
    ------
    TypeError
        ``region`` is not a :class:`~npguest.GuestRegionMmap`.

    Examples
    --------
    >>> r = GuestRegionMmap.from_range(0x1000, 0x1000)
    >>> "0x2000" in region_html(r)
    True
    """
    if not isinstance(region, GuestRegionMmap):
        raise TypeError(f"region must be a GuestRegionMmap, got {type(region).__name__}")
    out = f"<div><b>{_e(type(region).__name__)}</b>{_table(_REGION_HEAD, [_region_row(region)])}"
    bitmap = _bitmap_of(region)
    if isinstance(bitmap, AtomicBitmap):
        out += _strip(bitmap)
    return out + "</div>"


def _cell_fractions(words: np.ndarray, nbits: int, cells: int) -> np.ndarray:
    """Return the fraction of set bits in each of up to ``cells`` equal runs of bits."""
    if words.shape[0] >= cells:  # whole words per cell: count them
        units = np.bitwise_count(words).astype(np.int64)
        sizes = np.full(words.shape[0], 64, dtype=np.int64)
        sizes[-1] = nbits - 64 * (words.shape[0] - 1)
    else:
        units = np.unpackbits(words.view(np.uint8), bitorder="little")[:nbits].astype(np.int64)
        sizes = np.ones(nbits, dtype=np.int64)
    n = min(cells, units.shape[0])
    edges = np.arange(n) * units.shape[0] // n
    return np.add.reduceat(units, edges) / np.add.reduceat(sizes, edges)


def _strip(bitmap: AtomicBitmap, cells: int = STRIP_CELLS) -> str:
    """Draw a bitmap as an SVG strip: one cell per run of pages, darker = more dirty.

    A cell with any dirty page is drawn at least faintly, however many pages it covers.
    """
    nbits = bitmap.len()
    rects = ['<rect width="100%" height="100%" fill="#eee"/>']
    if nbits:
        frac = _cell_fractions(bitmap.snapshot(), nbits, cells)
        n = frac.shape[0]
        rects += [
            f'<rect x="{100 * i / n:.3f}%" width="{100 / n:.3f}%" height="100%" '
            f'fill="#d62728" fill-opacity="{0.15 + 0.85 * f:.2f}"/>'
            for i, f in zip(np.flatnonzero(frac).tolist(), frac[frac > 0].tolist(), strict=True)
        ]
    return f'<svg width="512" height="12" style="display:block">{"".join(rects)}</svg>'


def bitmap_html(bitmap: AtomicBitmap, cells: int = STRIP_CELLS) -> str:
    """Return an HTML summary of a dirty bitmap (its ``_repr_html_``).

    Parameters
    ----------
    bitmap : AtomicBitmap
        The bitmap.
    cells : int, optional
        Cells of the strip (each shows the share of dirty pages in its run of pages).

    Returns
    -------
    str
        The dirty count, page size and bytes covered, and an SVG strip of the pages.

    Raises
    ------
    TypeError
        ``bitmap`` is not an :class:`~npguest.AtomicBitmap`, or ``cells`` not an integer.
    ValueError
        ``cells`` is less than 1.

    Examples
    --------
    >>> b = AtomicBitmap(0x10000)
    >>> b.set_addr_range(0, 0x2000)
    >>> "2 / 16 pages dirty" in bitmap_html(b)
    True
    """
    if not isinstance(bitmap, AtomicBitmap):
        raise TypeError(f"bitmap must be an AtomicBitmap, got {type(bitmap).__name__}")
    cells = _positive(cells, "cells")
    title = (
        f"AtomicBitmap: {bitmap.count()} / {bitmap.len()} pages dirty "
        f"({_size(bitmap.page_size())} pages, {_size(bitmap.byte_size())})"
    )
    return f"<div><b>{_e(title)}</b>{_strip(bitmap, cells)}</div>"


def slice_html(vslice: VolatileSlice, n: int = SLICE_PREVIEW) -> str:
    """Return an HTML summary of a slice and a hexdump of its first bytes (its ``_repr_html_``).

    Parameters
    ----------
    vslice : VolatileSlice
        The slice.
    n : int, optional
        Bytes shown (default 256).

    Returns
    -------
    str
        Length, host address, access, tracking, and a hexdump by slice offset.

    Raises
    ------
    TypeError
        ``vslice`` is not a :class:`~npguest.VolatileSlice`.

    Examples
    --------
    >>> s = VolatileSlice(bytearray(b"<tag>"))
    >>> "&lt;tag&gt;" in slice_html(s)
    True
    """
    if not isinstance(vslice, VolatileSlice):
        raise TypeError(f"vslice must be a VolatileSlice, got {type(vslice).__name__}")
    length = vslice.len()
    tracked = "untracked" if isinstance(vslice.bitmap(), NoBitmap) else "tracked"
    title = (
        f"VolatileSlice: {_size(length)} at host {vslice.ptr_guard().as_ptr():#x}, "
        f"{'rw' if vslice.is_writable() else 'ro'}, {tracked}"
    )
    shown = min(length, n)
    more = f"<i>… {length - shown} more bytes</i>" if length > shown else ""
    body = hexdump_html(vslice, 0, shown) if shown else ""
    return f"<div><b>{_e(title)}</b>{body}{more}</div>"


# -- plots --------------------------------------------------------------------------------
def _pyplot() -> Any:
    """Import matplotlib's pyplot, or say which extra installs it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "npguest's plots need matplotlib: pip install 'npguest[plot]' (or matplotlib)"
        ) from exc
    return plt


def _axes(ax: Any, figsize: tuple[float, float]) -> Any:
    return _pyplot().subplots(figsize=figsize)[1] if ax is None else ax


def _empty(ax: Any, what: str) -> Any:
    ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return ax


def plot_memory_map(mem: GuestMemoryMmap, ax: Any = None, scale: str = "log") -> Any:
    """Draw the guest-physical memory map: regions and the holes between them.

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory.
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    scale : {"log", "linear"}, optional
        ``"log"`` (default) draws each region and hole ``log2(size)`` wide, so a 4 KiB
        region beside a 64 GiB one stays visible and a huge hole does not swamp the map
        (a broken axis: the ticks give the true addresses); ``"linear"`` draws true sizes.

    Returns
    -------
    matplotlib.axes.Axes
        The axes.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    TypeError
        ``mem`` is not a guest memory.
    ValueError
        ``scale`` is neither.
    """
    if not isinstance(mem, GuestMemoryMmap):
        raise TypeError(f"mem must be a GuestMemoryMmap, got {type(mem).__name__}")
    if scale not in ("log", "linear"):
        raise ValueError(f'scale must be "log" or "linear", got {scale!r}')
    ax = _axes(ax, (10, 1.8))
    segments: list[tuple[int, int, GuestRegionMmap | None]] = []
    for r in mem.iter():
        start = int(r.start_addr())
        if segments and segments[-1][1] < start:
            segments.append((segments[-1][1], start, None))
        segments.append((start, start + r.len(), r))
    if not segments:
        return _empty(ax, "no regions")

    def width(n: int) -> float:
        return max(math.log2(n), 1.0) if scale == "log" else float(n)

    x = np.cumsum([0.0] + [width(e - s) for s, e, _ in segments])
    colours = {"anonymous": "#4c72b0", "file": "#55a868", "ro": "#8172b2"}
    for (s, e, r), x0, x1 in zip(segments, x[:-1], x[1:], strict=True):
        if r is None:
            ax.broken_barh([(x0, x1 - x0)], (0, 1), facecolors="none", hatch="//",
                           edgecolor="#bbb")  # fmt: skip
            colour = "#777"
        else:
            kind = "file" if r.file_offset() is not None else "anonymous"
            kind = "ro" if r.is_readonly() else kind
            ax.broken_barh([(x0, x1 - x0)], (0, 1), facecolors=colours[kind], edgecolor="white")
            colour = "white"
        if len(segments) <= 16:  # sizes, while they fit
            ax.text((x0 + x1) / 2, 0.5, _size(e - s), ha="center", va="center", color=colour,
                    fontsize=8, clip_on=True)  # fmt: skip
    addrs = [s for s, _, _ in segments] + [segments[-1][1]]
    step = max(len(addrs) // 16, 1)
    ax.set_xticks(x[::step], [f"{a:#x}" for a in addrs[::step]], rotation=45, ha="right",
                  fontsize=7)  # fmt: skip
    ax.set_xlim(0, x[-1])
    ax.set_yticks([])
    ax.set_title(f"guest-physical memory map ({scale} widths; hatched: holes)")
    return ax


def _image(
    ax: Any,
    values: np.ndarray,
    width: int,
    row_addr: Callable[[int], int],
    cells: str,
    style: tuple[str, float, str],
) -> Any:
    """Show per-cell ``values`` as rows of ``width`` cells, rows labelled by guest address.

    ``row_addr(r)`` is the guest address of row ``r``'s first byte; ``cells`` says what a
    cell holds; ``style`` is ``(colour map, top of the scale, its label)``.
    """
    plt = _pyplot()
    cmap, vmax, label = style
    rows = -(-values.shape[0] // width)
    grid = np.full(rows * width, np.nan)
    grid[: values.shape[0]] = values
    colours = plt.colormaps[cmap].with_extremes(bad="#f4f4f4")
    im = ax.imshow(grid.reshape(rows, width), aspect="auto", interpolation="nearest",
                   cmap=colours, vmin=0.0, vmax=vmax)  # fmt: skip
    ax.figure.colorbar(im, ax=ax, label=label)

    def row_label(y: float, _: object) -> str:
        r = round(y)
        return f"{row_addr(r):#x}" if 0 <= r < rows else ""

    ax.yaxis.set_major_formatter(row_label)
    ax.set_xlabel(f"{cells} per cell, {width} cells per row (holes skipped)")
    return ax


def _check_grid(width: int, max_cells: int) -> tuple[int, int]:
    return _positive(width, "width"), _positive(max_cells, "max_cells")


def plot_page_strip(
    mem: GuestMemoryMmap,
    kind: str = "entropy",
    ax: Any = None,
    page_size: int = 4096,
    width: int = 256,
    max_cells: int = 1 << 16,
) -> Any:
    """Draw a per-page summary of the backed pages in address order, as rows of cells.

    Holes are skipped: cells follow one another through the backed pages, and each row
    is labelled with the guest address of its first page.

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory.
    kind : {"entropy", "zero"}, optional
        ``"entropy"``: bits per byte (:func:`~npguest.pages.page_entropy`); ``"zero"``:
        the share of all-zero pages (:func:`~npguest.pages.page_map`).
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    page_size : int, optional
        Page size (default 4096).
    width : int, optional
        Cells per row.
    max_cells : int, optional
        Most cells drawn: a cell averages as many pages as it takes to stay under it.

    Returns
    -------
    matplotlib.axes.Axes
        The axes.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    TypeError
        ``mem`` is not a guest memory, or ``width`` / ``max_cells`` not an integer.
    ValueError
        ``kind`` is neither, ``page_size`` is not a valid page size, or ``width`` or
        ``max_cells`` is less than 1.
    """
    if kind not in ("entropy", "zero"):
        raise ValueError(f'kind must be "entropy" or "zero", got {kind!r}')
    width, max_cells = _check_grid(width, max_cells)
    if kind == "entropy":
        addrs, values = page_entropy(mem, page_size)
    else:
        addrs, is_zero = page_map(mem, page_size)
        values = is_zero.astype(np.float64)
    ax = _axes(ax, (10, 4))
    if not addrs.size:
        return _empty(ax, "no backed pages")
    per = -(-addrs.shape[0] // max_cells)  # pages per cell
    edges = np.arange(0, addrs.shape[0], per)
    mean = np.add.reduceat(values, edges) / np.diff(np.r_[edges, addrs.shape[0]])
    ax.set_title(f"page {kind} ({_size(page_size)} pages)")
    style = ("viridis", 8.0, "bits per byte") if kind == "entropy" else (
        "viridis", 1.0, "share of zero pages")  # fmt: skip
    cells = f"{per} page{'s' if per > 1 else ''}"
    return _image(ax, mean, width, lambda r: int(addrs[r * width * per]), cells, style)


def _bytes_below(starts: np.ndarray, ends: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Return, for each bound, the bytes of sorted disjoint ``[starts, ends)`` below it."""
    total = np.zeros(starts.shape[0] + 1, dtype=np.uint64)
    np.cumsum(ends - starts, out=total[1:])
    k = np.searchsorted(starts, bounds, side="right")  # ranges starting below each bound
    last_end = np.append(np.uint64(0), ends)[k]  # the end of the last of them (0: none)
    return total[k] - np.where(last_end > bounds, last_end - bounds, np.uint64(0))


def plot_dirty_heatmap(
    mem: GuestMemoryMmap, ax: Any = None, width: int = 256, max_cells: int = 1 << 16
) -> Any:
    """Draw the share of dirty bytes through the backed memory, as rows of cells.

    Holes are skipped: cells follow one another through the backed bytes, and each row is
    labelled with the guest address of its first byte.

    Parameters
    ----------
    mem : GuestMemoryMmap
        A memory whose regions are tracked by :class:`~npguest.AtomicBitmap` (untracked
        regions show as clean).
    ax : matplotlib.axes.Axes, optional
        Where to draw (default: a new figure).
    width : int, optional
        Cells per row.
    max_cells : int, optional
        Most cells drawn (each covers whole pages of the smallest tracked page size).

    Returns
    -------
    matplotlib.axes.Axes
        The axes.

    Raises
    ------
    ImportError
        matplotlib is not installed.
    TypeError
        ``mem`` is not a guest memory, a region's bitmap is not an AtomicBitmap, or
        ``width`` / ``max_cells`` is not an integer.
    ValueError
        No region tracks dirty pages, or ``width`` or ``max_cells`` is less than 1.
    """
    if not isinstance(mem, GuestMemoryMmap):
        raise TypeError(f"mem must be a GuestMemoryMmap, got {type(mem).__name__}")
    width, max_cells = _check_grid(width, max_cells)
    sizes = [b.page_size() for b in map(_bitmap_of, mem.iter()) if isinstance(b, AtomicBitmap)]
    if not sizes:
        raise ValueError("no region of mem tracks dirty pages (build it with bitmap=AtomicBitmap)")
    dirty = mem.dirty_ranges()
    runs = np.array(backed_runs(mem), dtype=np.uint64).reshape(-1, 2)
    lengths = runs[:, 1] - runs[:, 0]
    packed = np.zeros(runs.shape[0] + 1, dtype=np.uint64)  # backed bytes before each run
    np.cumsum(lengths, out=packed[1:])

    def pack(x: np.ndarray) -> np.ndarray:  # guest addresses -> offsets in the backed bytes
        i = np.maximum(np.searchsorted(runs[:, 0], x, side="right") - 1, 0)
        return packed[i] + np.minimum(x - runs[i, 0], lengths[i])

    def row_addr(r: int) -> int:
        p = r * width * cell
        i = int(np.searchsorted(packed[1:], np.uint64(p), side="right"))
        return int(runs[i, 0]) + p - int(packed[i])

    total = int(packed[-1])
    cell = min(sizes) * -(-total // (min(sizes) * max_cells))
    bounds = np.minimum(np.arange(-(-total // cell) + 1, dtype=np.uint64) * np.uint64(cell),
                        np.uint64(total))  # fmt: skip
    covered = np.diff(bounds).astype(np.float64)
    start = pack(dirty[:, 0])
    dirty_bytes = np.diff(_bytes_below(start, pack(dirty[:, 0] + dirty[:, 1]), bounds))
    ax = _axes(ax, (10, 4))
    ax.set_title(f"dirty pages ({_size(int(dirty[:, 1].sum()))} dirty)")
    style = ("Reds", 1.0, "share of dirty bytes")
    return _image(ax, dirty_bytes / covered, width, row_addr, _size(cell), style)
