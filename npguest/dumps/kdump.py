"""kdump-compressed dumps: QEMU ``dump-guest-memory -z|-l|-s``, ``makedumpfile``, ``virsh dump``.

A kdump file (signature ``"KDUMP   "``, or ``"DISKDUMP"``) stores each page compressed on
its own (zlib, LZO, snappy or zstd), found through two bitmaps and a table of page
descriptors; the *flattened* variant (``"makedumpfile"``) is a stream of
``(offset, size, bytes)`` records that spell the same file.  Compressed pages cannot be
mapped, so :func:`open_kdump` returns a :class:`KdumpMemory`: a read-only
:class:`~npguest.dumps.dump.DumpMemory` whose pages are decompressed when touched, into a
bounded, thread-safe LRU cache of pages (keyed by the descriptor's data offset, so QEMU's
one shared zero page is one entry).  Nothing proportional to the memory is read at open:
the headers and the bitmaps (one bit per page) only.

Regions are the runs of RAM pages (the 1st bitmap).  Pages that are RAM but were not
dumped (1st bitmap set, 2nd clear: makedumpfile's ``-d`` levels exclude free, cache, user
or zero pages) are *holes*: reaching one behaves as an unbacked address
(:class:`~npguest.errors.InvalidGuestAddressError` at the first byte, a partial access
after it, ``read_objs(..., holes="zero"|"mask")`` for batches); they are listed in
``metadata.excluded`` (a read-only ``(n, 2)`` ``uint64`` array of ``(gpa, size)``, found
from the bitmaps with numpy).  Page data and descriptors are read with ``os.pread`` when
needed (a file that shrinks under an open dump is a :class:`~npguest.errors.DumpFormatError`,
not a ``SIGBUS``), and a page never decompresses to more than the block size.

:func:`write_kdump` writes QEMU's layout (dump level 1, header version 6, both bitmaps,
one shared zero page, raw pages where compression does not shrink them), plain or
flattened, streaming in bounded memory.
"""

from __future__ import annotations

import heapq
import importlib
import itertools
import os
import re
import struct
import sys
import threading
import warnings
import zlib
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, BinaryIO, NamedTuple

import numpy as np
from numpy.typing import DTypeLike

from ..access import NO_FAST, NO_FASTS, NO_WINDOW, Bytes, Piece, as_byte_view
from ..address import U64_MAX, GuestAddress, MemoryRegionAddress, _u64, address_array
from ..dtypes import codec
from ..errors import (
    CallbackOutOfRangeError,
    DumpFormatError,
    HostAddressNotAvailableError,
    InvalidBackendAddressError,
    InvalidGuestAddressError,
    MmapRegionError,
    PartialBufferError,
    ReadOnlyMemoryError,
    RegionCollectionError,
)
from ..guest_memory import GuestMemoryMmap, GuestMemorySliceIterator
from ..mapping import MmapRegion
from ..region import GuestRegionMmap, RegionTable
from ..stream import write_all
from ..volatile import VolatileSlice
from .dump import CHUNK, DumpFile, DumpMemory, DumpMetadata, Note, Record, region_chunks
from .elf import decode_notes, encode_notes, parse_notes, parse_vmcoreinfo

__all__ = ["KdumpMemory", "KdumpRegion", "KdumpSliceIterator", "open_kdump", "write_kdump"]

KDUMP_SIGNATURE = b"KDUMP   "
DISKDUMP_SIGNATURE = b"DISKDUMP"
#: Signature of the flattened format's 4096-byte header (NUL padded to 16 bytes).
FLAT_SIGNATURE = b"makedumpfile".ljust(16, b"\0")
FLAT_HEADER_SIZE = 4096
#: The header version and dump level :func:`write_kdump` writes (QEMU's).
HEADER_VERSION = 6
DUMP_LEVEL = 1
#: Header ``status`` bits besides the compression flags.
STATUS_INCOMPLETE = 0x8
STATUS_EXCLUDED_VMEMMAP = 0x10
#: Block (page) sizes accepted: powers of two in this range.
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 1 << 9, 1 << 20
#: Most RAM runs (regions) a dump may have: each is an anonymous placeholder mapping of
#: its own (without a file descriptor), well below Linux's default ``vm.max_map_count``
#: (65530).  :func:`write_kdump` refuses a memory with more.
MAX_REGIONS = 32768
#: Most pages :func:`open_kdump` reads bitmaps for (1 GiB per bitmap: 32 TiB of 4 KiB
#: pages): a crafted sparse file cannot make the open allocate more.
MAX_READ_PFN = 1 << 33
#: Most pages :func:`write_kdump` writes bitmaps for (``max_pfn``): 256 MiB per bitmap,
#: 8 TiB of memory in 4 KiB pages.
MAX_WRITE_PFN = 1 << 31
#: Largest VMCOREINFO text read at open.
MAX_VMCOREINFO = 1 << 20
#: Pages decompressed per batch by bulk reads (split among the pool's threads).
READ_BATCH = 512
#: Fewest pages to decompress in a batch before the thread pool is used.
PARALLEL_MIN = 64
#: Page descriptors read at once when scattered: at most this many per read...
GATHER_RUN = 64
#: ... each less than this many bytes after the one before.
GATHER_GAP = 4096
#: Bytes of a flattened file read at once while its record headers are indexed.
FLAT_WINDOW = 1 << 16
#: Objects ``read_objs`` gathers per pass (at most twice as many pages decompressed at once).
GATHER_CHUNK = 8192
#: Pages compressed per batch by the writer.
WRITE_BATCH = 1024

_PAGE_DESC_SIZE = 24
_UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")
_UTS_LEN = 65

Progress = Callable[[int, int], None]


# -- structures -------------------------------------------------------------------------
def _header_fields(timestamp: int) -> tuple[tuple[str, str], ...]:
    return (
        ("signature", "8s"),
        ("header_version", "i"),
        ("utsname", f"{6 * _UTS_LEN}s"),
        ("timestamp", f"{timestamp}s"),
        ("status", "I"),
        ("block_size", "i"),
        ("sub_hdr_size", "i"),
        ("bitmap_blocks", "I"),
        ("max_mapnr", "I"),
        ("total_ram_blocks", "I"),
        ("device_blocks", "I"),
        ("written_blocks", "I"),
        ("current_cpu", "I"),
        ("nr_cpus", "i"),
    )


def _sub_header_fields(word: str) -> tuple[tuple[str, str], ...]:
    # the 32-bit layout is packed: "unsigned long" fields are 4 bytes, 64-bit ones unaligned
    return (
        ("phys_base", word),
        ("dump_level", "i"),
        ("split", "i"),
        ("start_pfn", word),
        ("end_pfn", word),
        ("offset_vmcoreinfo", "Q"),
        ("size_vmcoreinfo", word),
        ("offset_note", "Q"),
        ("note_size", word),
        ("offset_eraseinfo", "Q"),
        ("size_eraseinfo", word),
        ("start_pfn_64", "Q"),
        ("end_pfn_64", "Q"),
        ("max_mapnr_64", "Q"),
    )


class _Layout(NamedTuple):
    """The header structures of one word size and byte order."""

    bits: int
    order: str
    header: Record
    sub: Record
    desc: struct.Struct
    desc_dtype: np.dtype


def _layout(bits: int, order: str) -> _Layout:
    return _Layout(
        bits,
        order,
        Record(order, _header_fields(22 if bits == 64 else 10)),
        Record(order, _sub_header_fields("Q" if bits == 64 else "I")),
        struct.Struct(order + "QIIQ"),
        np.dtype(
            [
                ("offset", order + "u8"),
                ("size", order + "u4"),
                ("flags", order + "u4"),
                ("page_flags", order + "u8"),
            ]
        ),
    )


#: Layouts in the order a header is tried (64-bit first: what every producer writes today).
_LAYOUTS = tuple(_layout(bits, order) for order in "<>" for bits in (64, 32))
_LAYOUT = {(layout.bits, layout.order): layout for layout in _LAYOUTS}


# -- compression ------------------------------------------------------------------------
class _Codec(NamedTuple):
    flag: int
    name: str
    modules: tuple[str, ...]  # importable modules, the first found wins
    package: str  # what to pip install


_CODECS = {
    0x1: _Codec(0x1, "zlib", ("zlib",), "zlib"),
    0x2: _Codec(0x2, "lzo", ("lzo",), "python-lzo"),
    0x4: _Codec(0x4, "snappy", ("snappy", "cramjam"), "python-snappy"),
    0x20: _Codec(0x20, "zstd", ("zstandard",), "zstandard"),
}
_CODEC_BY_NAME = {c.name: c for c in _CODECS.values()}
_STATUS_CODECS = sum(_CODECS)
_local = threading.local()  # per-thread zstd (de)compressors: they are not thread-safe


def _codec_module(c: _Codec) -> tuple[str, Any]:
    """Return ``(module name, module)`` of the first importable module of ``c``.

    Raises ImportError naming the pip package when none imports.
    """
    for name in c.modules:
        module = sys.modules.get(name)
        if module is None:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
        return name, module
    raise ImportError(
        f"{c.name}-compressed pages need the {c.package} package: pip install {c.package}"
    )


def _snappy_length(data: Any) -> int | None:
    """Return the uncompressed length a raw snappy block declares (its leading varint)."""
    value = 0
    for i in range(min(len(data), 5)):
        byte = data[i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value
    return None


def _decompress(c: _Codec, name: str, module: Any, data: Any, block: int) -> bytes:
    """Decompress one page with ``module``, never producing more than ``block + 1`` bytes.

    Raises ValueError (or the codec's error) when the data does not decompress, or
    decompresses to more than ``block`` bytes (a shorter page is the caller's to refuse).
    """
    if c.name == "zlib":  # (zlib inflates up to 1032 times: bound the output, not the input)
        d = zlib.decompressobj()
        out = d.decompress(data, block + 1)
        if len(out) > block or d.unconsumed_tail:
            raise ValueError(f"the stream inflates to more than the block size {block}")
        if not d.eof:
            raise ValueError("the stream is truncated")
        return out
    if c.name == "lzo":  # (the output buffer is the block: LZO1X's safe decompressor)
        return module.decompress(bytes(data), False, block)
    if c.name == "snappy":
        n = _snappy_length(data)
        if n != block:
            raise ValueError(f"the block declares {n} uncompressed bytes")
        if name == "snappy":
            return module.uncompress(bytes(data))
        return bytes(module.snappy.decompress_raw(bytes(data)))
    n = module.frame_content_size(data)
    if n not in (-1, block):  # -1: not recorded (max_output_size then bounds it)
        raise ValueError(f"the frame declares {n} uncompressed bytes")
    d = getattr(_local, "zstd_d", None)
    if d is None:
        d = _local.zstd_d = module.ZstdDecompressor()
    return d.decompress(data, max_output_size=block)


def _compressor(compression: str) -> tuple[int, Callable[[bytes], bytes]]:
    """Return the page flag and the page compressor of a writer's ``compression``."""
    c = _CODEC_BY_NAME.get(compression)
    if c is None:
        raise ValueError(
            f"unknown compression {compression!r}; expected one of "
            f"{', '.join(_CODEC_BY_NAME)} or 'none'"
        )
    try:
        name, module = _codec_module(c)
    except ImportError as exc:
        raise ValueError(str(exc)) from exc
    if c.name == "zlib":
        return c.flag, lambda page: zlib.compress(page, 1)  # QEMU: Z_BEST_SPEED
    if c.name == "lzo":
        return c.flag, lambda page: module.compress(page, 1, False)  # LZO1X-1, no header
    if c.name == "snappy":
        if name == "snappy":
            return c.flag, module.compress
        return c.flag, lambda page: bytes(module.snappy.compress_raw(page))

    def zstd(page: bytes) -> bytes:
        z = getattr(_local, "zstd_c", None)
        if z is None:
            z = _local.zstd_c = module.ZstdCompressor(level=1)
        return z.compress(page)

    return c.flag, zstd


_pool_lock = threading.Lock()
_pool: list[ThreadPoolExecutor] = []
#: Threads that (de)compress pages at once (1: no pool, the caller does it all).
WORKERS = min(4, os.cpu_count() or 1)


def _thread_pool() -> ThreadPoolExecutor:
    """Return the shared pool that (de)compresses pages, made on first use."""
    with _pool_lock:
        if not _pool:
            _pool.append(ThreadPoolExecutor(WORKERS, thread_name_prefix="npguest-kdump"))
        return _pool[0]


def _apply(f: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [f(x) for x in items]


def _submit(
    f: Callable[[Any], Any], items: list[Any], batched: bool = False
) -> list[Future[list[Any]]]:
    """Start ``[f(x) for x in items]``: split among the pool's threads when there are many.

    zlib, LZO, snappy and zstd release the GIL while they work, so the threads run at
    once; the calling thread does the last share itself (on two cores, a third busy thread
    only adds switching).  Few items are done here and now.  ``batched``: ``f`` takes a
    list of items and returns the list of results.
    """
    run = f if batched else partial(_apply, f)
    if WORKERS < 2 or len(items) < PARALLEL_MIN:
        done: Future[list[Any]] = Future()
        try:
            done.set_result(run(items))
        except Exception as exc:
            done.set_exception(exc)
        return [done]
    # the pool takes all but the last share, which this thread does itself meanwhile
    pool, step = _thread_pool(), -(-len(items) // WORKERS)
    futures = [pool.submit(run, items[i : i + step]) for i in range(0, len(items) - step, step)]
    mine: Future[list[Any]] = Future()
    try:
        mine.set_result(run(items[len(futures) * step :]))
    except Exception as exc:
        mine.set_exception(exc)
    return [*futures, mine]


def _collect(futures: list[Future[list[Any]]]) -> list[Any]:
    """Return the results of :func:`_submit` in item order (raising the first failure)."""
    out: list[Any] = []
    for fut in futures:
        out += fut.result()
    return out


# -- the file ---------------------------------------------------------------------------
class _Source(DumpFile):
    """Checked reads of a plain kdump file, or of the plain file a flattened one encodes.

    Every read is an ``os.pread``: no shared file position (threads read at once), and no
    mapping of the file, so a file that shrinks after open reads short (a
    :class:`~npguest.errors.DumpFormatError`, "the file shrank") instead of killing the
    process with ``SIGBUS``.  For a flattened file, offsets are those of the plain file
    its records spell (``size`` is that file's size): each read is mapped through the
    sorted record index, bytes no record holds reading as zeros; no read may be larger
    than the flattened file itself.
    """

    def __init__(self, f: BinaryIO, path: str) -> None:
        super().__init__(f, path)
        self.file_size = self.size
        self.flattened = False
        # plain-file segments: [start, end) held at flat offset, sorted, disjoint
        self._starts, self._ends, self._flats = [0], [self.size], [0]

    def where(self, offset: int) -> str:
        """Describe ``offset`` for a message."""
        if self.flattened:
            return f"offset {offset:#x} of the plain file the flattened records spell"
        return f"file offset {offset:#x}"

    def check_span(self, offset: int, size: int, field: str) -> None:
        super().check_span(offset, size, field)
        if self.flattened and size > self.file_size:
            raise self.error(
                offset, field, f"{size} bytes cannot come from a {self.file_size}-byte file"
            )

    check_span.__doc__ = DumpFile.check_span.__doc__

    def read(self, offset: int, size: int, field: str) -> bytes:
        self.check_span(offset, size, field)
        return self._read_plain(offset, size, field)

    read.__doc__ = DumpFile.read.__doc__

    def _pread(self, at: int, size: int, offset: int, field: str) -> bytes:
        """Read exactly ``size`` bytes at file offset ``at`` (plain ``offset``, for errors)."""
        fd = self.f.fileno()
        data = os.pread(fd, size, at)
        if len(data) == size:
            return data
        parts, got = [data], len(data)  # (a regular file reads short at its end, or > 2 GiB)
        while got < size:
            more = os.pread(fd, size - got, at + got)
            if not more:
                raise self.error(
                    offset,
                    field,
                    f"the file shrank since it was opened: {got} of {size} bytes at file "
                    f"offset {at:#x} remain",
                )
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def _read_plain(self, offset: int, size: int, field: str) -> bytes:
        """Read ``[offset, offset + size)`` of the plain file, through the record index."""
        i = bisect_right(self._starts, offset) - 1
        if i >= 0 and offset + size <= self._ends[i]:
            return self._pread(self._flats[i] + offset - self._starts[i], size, offset, field)
        out = bytearray(size)  # spans segments (or gaps, which read as zeros)
        for j in range(max(i, 0), len(self._starts)):
            lo, hi = max(offset, self._starts[j]), min(offset + size, self._ends[j])
            if lo >= offset + size:
                break
            if lo < hi:
                at = self._flats[j] + lo - self._starts[j]
                out[lo - offset : hi - offset] = self._pread(at, hi - lo, lo, field)
        return bytes(out)

    def gather(self, offsets: np.ndarray, width: int, field: str) -> np.ndarray:
        """Read ``width`` bytes at each plain-file offset (all known to lie in the file).

        Offsets close together are read at once: one read per cluster of at most
        :data:`GATHER_RUN` offsets less than :data:`GATHER_GAP` bytes apart.

        Parameters
        ----------
        offsets : numpy.ndarray
            ``int64`` plain-file offsets.
        width : int
            Bytes at each.
        field : str
            What they hold (for errors).

        Returns
        -------
        numpy.ndarray
            A ``(len(offsets), width)`` ``uint8`` array.

        Raises
        ------
        DumpFormatError
            The file shrank since it was opened.
        """
        n = offsets.shape[0]
        order = np.argsort(offsets, kind="stable")
        ordered = offsets[order]
        new = np.ones(n, dtype=bool)
        new[1:] = np.diff(ordered) >= GATHER_GAP
        cluster = np.flatnonzero(new)
        rank = np.arange(n) - cluster[np.cumsum(new) - 1]  # position in its cluster
        bounds = np.append(np.flatnonzero(new | (rank % GATHER_RUN == 0)), n).tolist()
        out = np.empty((n, width), dtype=np.uint8)
        for a, b in itertools.pairwise(bounds):
            lo = int(ordered[a])
            raw = self._read_plain(lo, int(ordered[b - 1]) - lo + width, field)
            at = ordered[a:b] - lo
            out[order[a:b]] = np.frombuffer(raw, dtype=np.uint8)[at[:, None] + np.arange(width)]
        return out

    def index_flattened(self) -> None:
        """Read the flattened header and index its records (plain offset -> file offset).

        Record headers are read through a window of :data:`FLAT_WINDOW` bytes.

        Raises
        ------
        DumpFormatError
            A bad header, a record with a negative offset or size, one running past the
            end of the file, or no end marker.
        """
        if self.size < FLAT_HEADER_SIZE:
            raise self.error(0, "flattened header", f"{self.size}-byte file, header is 4096")
        kind, version = struct.unpack(">qq", self._pread(16, 16, 16, "flattened header"))
        if kind != 1:
            raise self.error(16, "flattened header type", f"{kind} (expected 1)")
        if version != 1:
            raise self.error(24, "flattened header version", f"{version} (expected 1)")
        record = struct.Struct(">qq")
        starts, sizes, flats = [], [], []
        pos, window, window_at = FLAT_HEADER_SIZE, b"", 0
        while True:
            if pos + record.size > self.size:
                raise self.error(pos, "flattened record", "the stream ends without its end marker")
            if pos + record.size > window_at + len(window):
                window_at = pos
                n = min(FLAT_WINDOW, self.size - pos)
                window = self._pread(pos, n, pos, "flattened record")
            offset, size = record.unpack_from(window, pos - window_at)
            if offset == -1:
                break
            if offset < 0:
                raise self.error(pos, "flattened record offset", f"negative offset {offset}")
            if size < 0 or pos + record.size + size > self.size or offset + size >= 1 << 63:
                raise self.error(
                    pos + 8,
                    "flattened record size",
                    f"{size} bytes at file offset {pos + record.size:#x} (for plain offset "
                    f"{offset:#x}) run past the end of the {self.size}-byte file",
                )
            if size:
                starts.append(offset)
                sizes.append(size)
                flats.append(pos + record.size)
            pos += record.size + size
        self._set_segments(
            np.array(starts, dtype=np.int64),
            np.array(sizes, dtype=np.int64),
            np.array(flats, dtype=np.int64),
        )
        self.flattened = True

    def _set_segments(self, starts: np.ndarray, sizes: np.ndarray, flats: np.ndarray) -> None:
        """Index records as disjoint sorted segments; a later record wins where two overlap."""
        order = np.argsort(starts, kind="stable")  # (stable: stream order among equals)
        s, e, f, seq = starts[order], (starts + sizes)[order], flats[order], order
        self.size = int(e.max()) if e.size else 0
        if not s.size:
            self._starts, self._ends, self._flats = [], [], []
            return
        reach = np.maximum.accumulate(e)
        new = np.ones(s.shape[0], dtype=bool)
        new[1:] = s[1:] >= reach[:-1]  # a record touching none before it starts a cluster
        bounds = np.append(np.flatnonzero(new), s.shape[0]).tolist()
        segments: list[tuple[int, int, int]] = []
        for lo, hi in itertools.pairwise(bounds):
            if hi - lo == 1:
                segments.append((int(s[lo]), int(e[lo]), int(f[lo])))
            else:
                segments += _paint(s[lo:hi], e[lo:hi], f[lo:hi], seq[lo:hi])
        self._starts = [a for a, _, _ in segments]
        self._ends = [b for _, b, _ in segments]
        self._flats = [c for _, _, c in segments]


def _paint(
    starts: np.ndarray, ends: np.ndarray, flats: np.ndarray, seq: np.ndarray
) -> list[tuple[int, int, int]]:
    """Resolve overlapping records (sorted by start): the last one written wins.

    A sweep over the segment boundaries with a heap of the records covering the sweep
    point, latest on top: ``O(n log n)``.
    """
    recs = list(zip(starts.tolist(), ends.tolist(), flats.tolist(), seq.tolist(), strict=True))
    points = sorted({p for s, e, _, _ in recs for p in (s, e)})
    heap: list[tuple[int, int, int, int]] = []
    out: list[tuple[int, int, int]] = []
    j = 0
    for a, b in itertools.pairwise(points):
        while j < len(recs) and recs[j][0] <= a:
            s, e, f, q = recs[j]
            heapq.heappush(heap, (-q, e, s, f))
            j += 1
        while heap[0][1] <= a:  # (a cluster's records cover it without a gap)
            heapq.heappop(heap)
        _, _, s, f = heap[0]
        flat = f + a - s
        if out and out[-1][1] == a and out[-1][2] + (a - out[-1][0]) == flat:
            out[-1] = (out[-1][0], b, out[-1][2])
        else:
            out.append((a, b, flat))
    return out


# -- the header -------------------------------------------------------------------------
class _Header(NamedTuple):
    layout: _Layout
    fields: dict[str, Any]


def _machine_bits(machine: str) -> int | None:
    """Return the word size a ``utsname.machine`` implies (None when it does not tell)."""
    if not machine:
        return None
    if "64" in machine or machine in ("s390x", "alpha"):
        return 64
    if re.fullmatch(r"i[3-6]86|x86|arm.*|mips(el)?|ppc|powerpc|s390|sh\w*|sparc|m68k", machine):
        return 32
    return None


def _uts(raw: bytes) -> dict[str, str]:
    return {
        name: raw[i * _UTS_LEN : (i + 1) * _UTS_LEN].split(b"\0", 1)[0].decode("latin-1")
        for i, name in enumerate(_UTS_FIELDS)
    }


def _header_problem(h: dict[str, Any], layout: _Layout, src: _Source) -> DumpFormatError | None:
    """Why ``h`` cannot be this layout's header of ``src`` (``None``: it can)."""
    at = layout.header.offsets
    block = h["block_size"]
    if not (MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE and block & (block - 1) == 0):
        return src.error(
            at["block_size"],
            "block_size",
            f"{block} is not a power of two in [{MIN_BLOCK_SIZE}, {MAX_BLOCK_SIZE}]",
        )
    if h["header_version"] < 0:
        return src.error(at["header_version"], "header_version", f"{h['header_version']} < 0")
    if h["sub_hdr_size"] < (1 if h["header_version"] >= 1 else 0):
        return src.error(
            at["sub_hdr_size"],
            "sub_hdr_size",
            f"{h['sub_hdr_size']} blocks: header_version {h['header_version']} "
            f"{'needs a sub-header' if h['header_version'] >= 1 else 'is negative'}",
        )
    if h["bitmap_blocks"] == 0:
        return src.error(at["bitmap_blocks"], "bitmap_blocks", "0: the dump has no bitmap")
    end = (1 + h["sub_hdr_size"] + h["bitmap_blocks"]) * block
    if end > src.size:
        return src.error(
            at["bitmap_blocks"],
            "bitmap_blocks",
            f"header, {h['sub_hdr_size']} sub-header blocks and {h['bitmap_blocks']} bitmap "
            f"blocks of {block} bytes run past the end of the {src.size}-byte file",
        )
    if 8 * h["bitmap_blocks"] * block < h["max_mapnr"]:
        return src.error(
            at["max_mapnr"],
            "max_mapnr",
            f"{h['max_mapnr']} pages do not fit in {h['bitmap_blocks']} bitmap blocks",
        )
    return None


def _read_header(src: _Source) -> _Header:
    """Read the disk_dump_header, telling its word size and byte order by plausibility.

    libkdumpfile's rule: the layout whose ``block_size`` is a sane page size and whose
    bitmap covers ``max_mapnr``; when both word sizes pass, ``utsname.machine`` decides.
    """
    if src.size < 8:
        raise src.error(0, "signature", f"truncated: a {src.size}-byte file")
    signature = src.read(0, 8, "signature")
    if signature not in (KDUMP_SIGNATURE, DISKDUMP_SIGNATURE):
        raise src.error(0, "signature", f"{signature!r} is neither {KDUMP_SIGNATURE!r} nor "
                        f"{DISKDUMP_SIGNATURE!r}")  # fmt: skip
    smallest = min(layout.header.size for layout in _LAYOUTS)
    head = src.read(0, min(src.size, max(layout.header.size for layout in _LAYOUTS)), "header")
    if len(head) < smallest:
        raise src.error(0, "header", f"truncated: {len(head)} of {smallest} bytes")
    found, problems = [], []
    for layout in _LAYOUTS:
        if len(head) < layout.header.size:
            continue
        h = dict(zip(layout.header.names, layout.header.struct.unpack_from(head), strict=True))
        problem = _header_problem(h, layout, src)
        if problem is None:
            found.append(_Header(layout, h))
        else:
            problems.append(problem)
    if not found:
        raise problems[0]
    if len(found) > 1:
        bits = _machine_bits(_uts(found[0].fields["utsname"])["machine"])
        found.sort(key=lambda hd: hd.layout.bits != bits)  # (stable: 64-bit, little first)
    return found[0]


class _Dump(NamedTuple):
    """Everything :func:`open_kdump` learns from the headers and bitmaps."""

    layout: _Layout
    block: int
    max_pfn: int
    ram: np.ndarray  # uint64 words: the 1st bitmap (RAM)
    dumped: np.ndarray  # uint64 words: the 2nd bitmap (has a descriptor)
    desc_base: int
    metadata_fields: dict[str, Any]
    notes: tuple[Note, ...]
    vmcoreinfo_text: bytes


def _bitmap_words(raw: bytes, max_pfn: int) -> np.ndarray:
    """Return a bitmap's first ``max_pfn`` bits as ``uint64`` words (the rest cleared)."""
    nwords = -(-max_pfn // 64)
    buf = np.zeros(nwords * 8, dtype=np.uint8)
    n = min(len(raw), buf.shape[0])
    buf[:n] = np.frombuffer(raw, dtype=np.uint8, count=n)
    words = buf.view("<u8").astype(np.uint64)
    _clear_outside(words, 0, max_pfn)
    return words


def _clear_outside(words: np.ndarray, lo: int, hi: int) -> None:
    """Clear every bit outside ``[lo, hi)`` in place."""
    hi = min(hi, words.shape[0] * 64)
    lo = min(lo, hi)
    words[: lo // 64] = 0
    if lo % 64:
        words[lo // 64] &= np.uint64(~((1 << (lo % 64)) - 1) & U64_MAX)
    if hi % 64:
        words[hi // 64] &= np.uint64((1 << (hi % 64)) - 1)
    words[-(-hi // 64) :] = 0


def _previous_bits(words: np.ndarray) -> np.ndarray:
    """Each bit's predecessor: ``words`` shifted up one bit across word boundaries."""
    carry = np.zeros_like(words)
    carry[1:] = words[:-1] >> np.uint64(63)
    return (words << np.uint64(1)) | carry


def _runs(words: np.ndarray, end: int) -> np.ndarray:
    """Return the runs of set bits of ``words`` as ``(n, 2)`` ``[start, stop)`` bit indices.

    Bits at and past ``end`` are clear.  Runs are found from the words' edges, without
    unpacking every word.
    """
    edges = words ^ _previous_bits(words)
    nz = np.flatnonzero(edges)
    pos = np.repeat(nz.astype(np.int64) * 64, np.bitwise_count(edges[nz]))  # (each edge's word)
    bits = np.unpackbits(edges[nz].astype("<u8").view(np.uint8), bitorder="little")
    at = np.flatnonzero(bits)  # (the edges, in order: bit k of word k >> 6)
    del bits
    pos += np.bitwise_and(at, 63, out=at)
    del at
    if pos.shape[0] % 2:  # the last run reaches the end of the words
        pos = np.append(pos, end)
    return pos.reshape(-1, 2)


def _count_runs(words: np.ndarray) -> int:
    """How many runs of set bits ``words`` holds (nothing allocated per run)."""
    return int(np.bitwise_count(words & ~_previous_bits(words)).sum())


def _read_dump(src: _Source) -> _Dump:
    """Read the headers, notes and bitmaps of a (plain, or indexed flattened) kdump."""
    header = _read_header(src)
    layout, h = header.layout, header.fields
    block = h["block_size"]
    version = h["header_version"]
    fields = {k: v for k, v in h.items() if k not in ("utsname", "timestamp")}
    fields["signature"] = h["signature"].decode("latin-1")
    uts = _uts(h["utsname"])
    sub: dict[str, int] = {}
    if version >= 1:  # (sub_hdr_size >= 1 block: room for the sub-header)
        sub = layout.sub.read(src, block, "kdump_sub_header")
    sub_at = {name: block + off for name, off in layout.sub.offsets.items()}
    max_pfn = sub["max_mapnr_64"] if version >= 6 else h["max_mapnr"]
    lo, hi = 0, max_pfn
    if version >= 2 and sub["split"]:
        key = "_64" if version >= 6 else ""
        lo, hi = sub["start_pfn" + key], sub["end_pfn" + key]
        if lo > hi:
            raise src.error(sub_at["start_pfn" + key], "start_pfn" + key, f"{lo:#x} > end {hi:#x}")
    # bitmaps (libkdumpfile's rule: two when max_pfn fits in half the bitmap blocks)
    first_at = (1 + h["sub_hdr_size"]) * block
    half = h["bitmap_blocks"] // 2 * block
    if max_pfn <= 8 * half:
        length, second_at = half, first_at + half
    else:
        length, second_at = h["bitmap_blocks"] * block, first_at
        max_pfn = min(max_pfn, 8 * length)
    where = sub_at["max_mapnr_64"] if version >= 6 else layout.header.offsets["max_mapnr"]
    if max_pfn == 0:
        raise src.error(where, "max_mapnr", "0 pages: the dump describes no memory")
    if max_pfn * block > U64_MAX + 1 or max_pfn > MAX_READ_PFN:
        raise src.error(
            where,
            "max_mapnr",
            f"{max_pfn:#x} pages of {block} bytes: past the end of a 64-bit address space or "
            f"over the {MAX_READ_PFN:#x}-page bound of a bitmap read at open",
        )
    ram_raw = src.read(first_at, min(length, -(-max_pfn // 8)), "1st bitmap")
    ram = _bitmap_words(ram_raw, max_pfn)
    if second_at == first_at:
        dumped = ram.copy()
    else:
        raw = src.read(second_at, min(length, -(-max_pfn // 8)), "2nd bitmap")
        dumped = _bitmap_words(raw, max_pfn)
    _clear_outside(dumped, lo, hi)
    # notes and VMCOREINFO
    notes: tuple[Note, ...] = ()
    if version >= 4 and sub["note_size"]:
        notes = parse_notes(
            src, sub["offset_note"], sub["note_size"], layout.order,
            field="offset_note", where=sub_at["offset_note"],
        )  # fmt: skip
    text = b""
    if version >= 3 and sub["size_vmcoreinfo"]:
        size = sub["size_vmcoreinfo"]
        if size > MAX_VMCOREINFO:
            raise src.error(sub_at["size_vmcoreinfo"], "size_vmcoreinfo", f"{size} bytes "
                            f"(at most {MAX_VMCOREINFO})")  # fmt: skip
        text = src.read(sub["offset_vmcoreinfo"], size, "offset_vmcoreinfo")
    fields.update(sub)
    fields.update(
        utsname=uts,
        header_bits=layout.bits,
        endianness="little" if layout.order == "<" else "big",
        flattened=src.flattened,
        compression=tuple(c.name for f, c in _CODECS.items() if h["status"] & f),
        incomplete=bool(h["status"] & STATUS_INCOMPLETE),
        excluded_vmemmap=bool(h["status"] & STATUS_EXCLUDED_VMEMMAP),
        bitmaps=2 if second_at != first_at else 1,
        max_pfn=max_pfn,
    )
    return _Dump(
        layout, block, max_pfn, ram, dumped, (1 + h["sub_hdr_size"] + h["bitmap_blocks"]) * block,
        fields, notes, text,
    )  # fmt: skip


# -- pages ------------------------------------------------------------------------------
class _LRU:
    """A bounded, thread-safe LRU map of decompressed pages."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._d: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:  # (put_many passes the bound for a moment)
            return len(self._d)

    def get(self, key: tuple[int, int, int]) -> bytes | None:
        with self._lock:
            v = self._d.get(key)
            if v is not None:
                self._d.move_to_end(key)
        return v

    def get_many(self, keys: list[tuple[int, int, int]]) -> list[bytes | None]:
        d = self._d
        with self._lock:
            out = [d.get(k) for k in keys]
            for k, v in zip(keys, out, strict=True):
                if v is not None:
                    d.move_to_end(k)
        return out

    def put_many(self, items: list[tuple[tuple[int, int, int], bytes]]) -> None:
        if not self.capacity:
            return
        d = self._d
        with self._lock:
            d.update(items[-self.capacity :])  # (a key another thread put stays where it is)
            for _ in range(len(d) - self.capacity):
                d.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


class _Pages:
    """The pages of a kdump: which are backed, their descriptors, their bytes (cached).

    ``valid`` pages are RAM (1st bitmap) and dumped (2nd bitmap); a page's descriptor is
    the one at the rank of its bit in the 2nd bitmap.
    """

    def __init__(self, src: _Source, dump: _Dump, cache_pages: int) -> None:
        self.src = src
        self.block = dump.block
        self.shift = dump.block.bit_length() - 1
        self.max_pfn = dump.max_pfn
        self.desc_base = dump.desc_base
        self.desc = dump.layout.desc
        self.desc_dtype = dump.layout.desc_dtype
        valid = dump.ram & dump.dumped
        self.valid_np = valid.astype("<u8").view(np.uint8)
        self._valid = self.valid_np.tobytes()
        counts = np.bitwise_count(dump.dumped).astype(np.int64)
        self.count = int(counts.sum())
        self.rank_np = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        self.words_np = dump.dumped
        self._rank = memoryview(self.rank_np)
        self._words = memoryview(self.words_np)
        self.cache = _LRU(cache_pages)

    # -- which pages are backed
    def valid_bytes(self, gpa: int, count: int) -> int:
        """Return how many bytes from ``gpa`` (at most ``count``) valid pages back."""
        shift = self.shift
        p = gpa >> shift
        if p >= self.max_pfn or not (self._valid[p >> 3] >> (p & 7)) & 1:
            return 0
        last = (gpa + count - 1) >> shift
        if last == p:
            return count
        n = min(last, self.max_pfn - 1) - p + 1
        bits = np.unpackbits(self.valid_np[p >> 3 : ((p + n) >> 3) + 1], bitorder="little")
        bits = bits[p & 7 : (p & 7) + n]
        run = n if bits.all() else int(np.argmin(bits))
        return count if p + run > last else ((p + run) << shift) - gpa

    def valid_mask(self, pfns: np.ndarray) -> np.ndarray:
        """Return which of ``pfns`` (``uint64``) are valid."""
        inside = pfns < np.uint64(self.max_pfn)
        safe = np.where(inside, pfns, 0)
        return inside & ((self.valid_np[safe >> np.uint64(3)] >> (safe & np.uint64(7))) & 1 == 1)

    # -- descriptors and data
    def _rank_of(self, pfn: int) -> int:
        w = pfn >> 6
        return self._rank[w] + (self._words[w] & ((1 << (pfn & 63)) - 1)).bit_count()

    def _descriptors(self, pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the descriptor indices and the descriptors of valid ``pfns`` (``uint64``)."""
        w = (pfns >> np.uint64(6)).astype(np.intp)
        below = (np.uint64(1) << (pfns & np.uint64(63))) - np.uint64(1)
        idx = self.rank_np[w] + np.bitwise_count(self.words_np[w] & below).astype(np.int64)
        if idx.shape[0] and (np.diff(idx) == 1).all():  # one contiguous run
            at = self.desc_base + _PAGE_DESC_SIZE * int(idx[0])
            field = f"page_desc[{int(idx[0])}:{int(idx[-1]) + 1}]"
            raw = self.src.read(at, _PAGE_DESC_SIZE * idx.shape[0], field)
            return idx, np.frombuffer(raw, dtype=self.desc_dtype).copy()
        at = self.desc_base + _PAGE_DESC_SIZE * idx
        raw = self.src.gather(at, _PAGE_DESC_SIZE, "page_desc")
        return idx, raw.view(self.desc_dtype).reshape(-1)

    def _decode_many(self, jobs: list[tuple[int, int, int, int, int]]) -> list[bytes]:
        """Decompress pages, reading the data of a contiguous batch with one ``pread``.

        Pages written one after the other (every producer's layout) are read together;
        anything else, and every error, takes the per-page path of :meth:`_decode`.
        """
        lo = min(job[2] for job in jobs)
        hi = max(job[2] + job[3] for job in jobs)
        total = sum(job[3] for job in jobs)
        if len(jobs) < 2 or hi - lo > total + total // 4 or hi > self.src.size:
            return [self._decode(job) for job in jobs]
        try:
            span = memoryview(self.src.read(lo, hi - lo, "page data"))
        except DumpFormatError:
            return [self._decode(job) for job in jobs]  # (names the page at fault)
        return [self._decode(job, span[job[2] - lo : job[2] - lo + job[3]]) for job in jobs]

    def _decode(self, job: tuple[int, int, int, int, int], data: Any = None) -> bytes:
        """Decompress one page: ``(pfn, descriptor index, offset, size, flags)``.

        ``data`` is the page's stored bytes when the caller read them already.
        """
        _, _, offset, size, flags = job
        block, src = self.block, self.src
        c = _CODECS.get(flags)
        if flags and c is None:
            raise self._bad(job, 12, "flags", f"unknown compression flags {flags:#x}")
        if not (size == block if c is None else 0 < size <= 2 * block):
            what = "a raw page must be the block size" if c is None else "out of range"
            raise self._bad(job, 8, "size", f"{size} bytes: {what} ({block})")
        if offset + size > src.size:
            raise self._bad(
                job, 0, "offset",
                f"{size} bytes of page data at {src.where(offset)} run past the end of the "
                f"{src.size}-byte {'plain ' if src.flattened else ''}file",
            )  # fmt: skip
        if data is None:
            try:
                data = src.read(offset, size, "page data")
            except DumpFormatError as exc:
                raise self._bad(
                    job, 0, "offset",
                    f"{size} bytes of page data at {src.where(offset)}: {exc.reason}",
                ) from exc  # fmt: skip
        if c is None:
            return bytes(data)
        try:
            name, module = _codec_module(c)
        except ImportError as exc:
            raise self._bad(job, 12, "flags", str(exc)) from exc
        try:
            out = _decompress(c, name, module, data, block)
        except Exception as exc:
            raise self._bad(
                job, 0, "",
                f"{c.name} data ({size} bytes at {src.where(offset)}) does not decompress: {exc}",
            ) from exc  # fmt: skip
        if len(out) != block:
            raise self._bad(
                job, 0, "",
                f"{c.name} data at {src.where(offset)} decompresses to {len(out)} bytes, not "
                f"the block size {block}",
            )  # fmt: skip
        return out

    def _bad(self, job: tuple[int, ...], at: int, name: str, reason: str) -> DumpFormatError:
        """Return the error of field ``name`` (``at`` bytes into it) of a page's descriptor."""
        pfn, i = job[0], job[1]
        field = f"page_desc[{i}] (pfn {pfn:#x}){' ' + name if name else ''}"
        return self.src.error(self.desc_base + _PAGE_DESC_SIZE * i + at, field, reason)

    def _start(self, pfns: np.ndarray) -> tuple[list[Any], list[Any], Any, list[Any]]:
        """Look ``pfns`` (valid, ``uint64``) up in the cache and start decompressing the rest.

        Returns the handle :meth:`_finish` completes: the cached bytes (``None`` for the
        others), the cache keys, the first position of each missing key, and the
        decompression under way.
        """
        idx, descs = self._descriptors(pfns)
        keys = list(
            zip(descs["offset"].tolist(), descs["size"].tolist(), descs["flags"].tolist(),
                strict=True)
        )  # fmt: skip
        out = self.cache.get_many(keys)
        first: dict[tuple[int, int, int], int] = {}
        for k, v in enumerate(out):
            if v is None and keys[k] not in first:
                first[keys[k]] = k
        if not first:
            return out, keys, first, []
        pfn_list, idx_list = pfns.tolist(), idx.tolist()
        jobs = [(pfn_list[k], idx_list[k], *keys[k]) for k in first.values()]
        return out, keys, first, _submit(self._decode_many, jobs, batched=True)

    def _finish(self, handle: tuple[list[Any], list[Any], Any, list[Any]]) -> list[bytes]:
        """Complete :meth:`_start`: the pages' bytes, the new ones put in the cache."""
        out, keys, first, futures = handle
        if first:
            decoded = dict(zip(first, _collect(futures), strict=True))
            out = [decoded[keys[k]] if v is None else v for k, v in enumerate(out)]
            self.cache.put_many(list(decoded.items()))
        return out

    def pages(self, pfns: np.ndarray) -> list[bytes]:
        """Return the decompressed bytes of valid ``pfns`` (``uint64``), through the cache."""
        return self._finish(self._start(pfns))

    def page(self, pfn: int) -> bytes:
        """Return the decompressed bytes of valid page ``pfn``."""
        i = self._rank_of(pfn)
        at = self.desc_base + _PAGE_DESC_SIZE * i  # (the table was checked at open)
        raw = self.src.read(at, _PAGE_DESC_SIZE, f"page_desc[{i}] (pfn {pfn:#x})")
        offset, size, flags, _ = self.desc.unpack(raw)
        key = (offset, size, flags)
        data = self.cache.get(key)
        if data is None:
            data = self._decode((pfn, i, offset, size, flags))
            self.cache.put_many([(key, data)])
        return data

    def runs(self, gpa: int, n: int) -> Iterator[tuple[int, list[bytes], int, int]]:
        """Yield ``(done, pages, first_offset, length)`` batches of valid ``[gpa, gpa + n)``.

        The next batch is decompressed by the pool while the caller uses this one.
        """
        shift, block = self.shift, self.block
        batches = []
        p, o, done = gpa >> shift, gpa & (block - 1), 0
        while done < n:
            k = min(READ_BATCH, (o + n - done + block - 1) >> shift)
            length = min((k << shift) - o, n - done)
            batches.append((done, p, k, o, length))
            done, p, o = done + length, p + k, 0
        pending = None
        for j, (done, p, k, o, length) in enumerate(batches):
            handle = pending or self._start(np.arange(p, p + k, dtype=np.uint64))
            if j + 1 < len(batches):
                _, p1, k1, _, _ = batches[j + 1]
                pending = self._start(np.arange(p1, p1 + k1, dtype=np.uint64))
            yield done, self._finish(handle), o, length

    def read_into(self, dst: memoryview, gpa: int, n: int) -> None:
        """Copy valid ``[gpa, gpa + n)`` into ``dst[:n]``."""
        block = self.block
        o = gpa & (block - 1)
        if o + n <= block:  # one page
            dst[:n] = self.page(gpa >> self.shift)[o : o + n]
            return
        for done, pages, o, length in self.runs(gpa, n):
            pos, end = done, done + length
            for data in pages:
                m = min(block - o, end - pos)
                dst[pos : pos + m] = data if m == block else memoryview(data)[o : o + m]
                pos, o = pos + m, 0

    def pieces(self, gpa: int, n: int) -> list[Piece]:
        """Return valid ``[gpa, gpa + n)`` as read-only pieces, one per page."""
        block = self.block
        out: list[Piece] = []
        for _, pages, o, length in self.runs(gpa, n):
            left = length
            for data in pages:
                m = min(block - o, left)
                out.append((memoryview(data), o, m, None, 0))
                left, o = left - m, 0
        return out

    def write_to(self, dst: Any, gpa: int, n: int) -> int:
        """Write valid ``[gpa, gpa + n)`` to a stream in bounded pieces; return bytes written."""
        buf = memoryview(bytearray(min(n, READ_BATCH * self.block)))
        done = 0
        while done < n:
            m = min(len(buf), n - done)
            self.read_into(buf, gpa + done, m)
            done += write_all(dst, buf[:m], done)
        return done

    def gather(self, pfns: np.ndarray) -> np.ndarray:
        """Return valid sorted unique ``pfns`` decompressed, as one ``(n, block)`` array."""
        return np.frombuffer(b"".join(self.pages(pfns)), dtype=np.uint8).reshape(-1, self.block)


# -- memory objects ---------------------------------------------------------------------
def _read_only(addr: int) -> ReadOnlyMemoryError:
    exc = ReadOnlyMemoryError(addr)
    exc.add_note(
        "kdump-compressed dumps open read-only: convert the dump to raw or ELF first "
        "(npguest.write_dump(mem, path, 'elf')) and open that writable"
    )
    return exc


def _no_host_memory() -> HostAddressNotAvailableError:
    exc = HostAddressNotAvailableError()
    exc.add_note(
        "kdump pages are compressed in the file and decompressed on access: read them "
        "(read_slice, get_slices, read_objs...) or convert the dump to raw or ELF"
    )
    return exc


class _KdumpBytes(Bytes):
    """The Bytes paths of kdump memory objects: every byte comes from the page cache.

    Subclasses implement ``_backed(addr, count) -> (gpa, n)``: the guest address of
    ``addr`` and how many bytes from it valid pages back (>= 1), raising the object's
    error when ``addr`` itself is not backed; and ``_stream_span`` for the stream rules.
    """

    __slots__ = ()
    _store: _Pages

    def _backed(self, addr: int, count: int) -> tuple[int, int]:  # pragma: no cover
        raise NotImplementedError

    def _stream_span(self, addr: int, count: int, exact: bool) -> tuple[int, int]:
        return (addr, 0) if not count else self._backed(addr, count)

    def read(self, buf: Any, addr: Any) -> int:
        dst = as_byte_view(buf, writable=True)
        count = len(dst)
        if not count:
            return 0
        gpa, n = self._backed(_u64(addr, "address"), count)
        self._store.read_into(dst, gpa, n)
        return n

    read.__doc__ = Bytes.read.__doc__

    def read_obj(self, addr: Any, dtype: DTypeLike) -> Any:
        c = codec(dtype)
        if type(addr) is not int:
            addr = _u64(addr, "address")
        size, store = c.size, self._store
        gpa, n = self._backed(addr, size) if size else (addr, 0)
        o = gpa & (store.block - 1)
        if n != size or o + size > store.block or c.struct is None:  # the general path
            buf = bytearray(size)
            self.read_slice(buf, addr)
            return c.unpack(buf)
        return c.struct.unpack_from(store.page(gpa >> store.shift), o)[0]

    read_obj.__doc__ = Bytes.read_obj.__doc__

    def write_volatile_to(self, addr: Any, dst: Any, count: int) -> int:
        gpa, n = self._stream_span(_u64(addr, "address"), _u64(count, "count"), False)
        return self._store.write_to(dst, gpa, n) if n else 0

    write_volatile_to.__doc__ = Bytes.write_volatile_to.__doc__

    def write_all_volatile_to(self, addr: Any, dst: Any, count: int) -> None:
        count = _u64(count, "count")
        gpa, n = self._stream_span(_u64(addr, "address"), count, True)
        done = self._store.write_to(dst, gpa, n) if n else 0
        if done != count:
            raise PartialBufferError(count, done)

    write_all_volatile_to.__doc__ = Bytes.write_all_volatile_to.__doc__

    def _pieces(self, addr: int, count: int, write: bool = False) -> list[Piece]:
        if not count:
            return []
        gpa, n = self._backed(addr, count)
        if write:
            raise _read_only(addr)
        return self._store.pieces(gpa, n)

    def _stream_pieces(self, addr: int, count: int, write: bool = False) -> list[Piece]:
        return self._span_pieces(addr, count, write, False)

    def _exact_pieces(self, addr: int, count: int, write: bool = False) -> list[Piece]:
        return self._span_pieces(addr, count, write, True)

    def _span_pieces(self, addr: int, count: int, write: bool, exact: bool) -> list[Piece]:
        gpa, n = self._stream_span(addr, count, exact)
        if n and write:
            raise _read_only(addr)
        return self._store.pieces(gpa, n) if n else []

    def _atomic_piece(self, addr: int, size: int, write: bool = False) -> Piece:
        gpa, _ = self._backed(addr, size)
        if write:
            raise _read_only(addr)
        self._aligned(addr, size)  # (so the object lies in one page, which is valid)
        store = self._store
        return memoryview(store.page(gpa >> store.shift)), gpa & (store.block - 1), size, None, 0

    def _aligned(self, addr: int, size: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class KdumpRegion(_KdumpBytes, GuestRegionMmap):
    """One run of RAM pages of a kdump dump, read through the page cache.

    Its mapping is an anonymous read-only placeholder that costs no memory and is never
    read: every access decompresses the pages it touches.  Offsets are region offsets,
    with a region's rules (:class:`~npguest.errors.InvalidBackendAddressError` past the
    end, or at an excluded page).  There is no host memory to hand out:
    :meth:`as_array`, :meth:`get_host_address` and :meth:`get_mmap` raise
    :class:`~npguest.errors.HostAddressNotAvailableError`; :meth:`get_slice` returns a
    slice over a read-only copy of the bytes.

    Parameters
    ----------
    mapping : MmapRegion
        The placeholder.
    guest_base : int
        Guest physical address of the first byte.
    store : _Pages
        The dump's pages.
    """

    __slots__ = ("_store",)
    _wstarts = ()  # no scalar fast-path windows

    def __init__(self, mapping: MmapRegion, guest_base: int, store: _Pages) -> None:
        super().__init__(mapping, guest_base)
        self._store = store

    def _set_window(self) -> None:
        self._window, self._windows, self._guest_window = NO_WINDOW, (), NO_WINDOW
        self._rfast = self._wfast = NO_FAST
        self._rfasts = self._wfasts = NO_FASTS

    def _hole(self, addr: int) -> Exception:
        return InvalidBackendAddressError(addr, "the page was excluded from the dump")

    def _backed(self, addr: int, count: int) -> tuple[int, int]:
        if self._mapping._closed or addr >= self._len:
            raise self._oob(addr)
        gpa = self._start + addr
        n = self._store.valid_bytes(gpa, min(count, self._len - addr))
        if not n:
            raise self._hole(addr)
        return gpa, n

    def _backed_spans(self, offset: int, count: int) -> list[tuple[int, int]]:
        store, spans = self._store, []
        pos, end = offset, min(offset + count, self._len)
        while pos < end:
            gpa = self._start + pos
            run = store.valid_bytes(gpa, end - pos)
            if run:
                spans.append((pos, pos + run))
                pos += run
            else:  # skip the excluded page
                pos = min(end, (((gpa >> store.shift) + 1) << store.shift) - self._start)
        return spans

    def _stream_span(self, addr: int, count: int, exact: bool) -> tuple[int, int]:
        if self._mapping._closed:
            raise self._oob(addr)
        if exact:
            self._span_end(addr, count)
        elif addr > self._len:
            raise self._oob(addr)
        if not min(count, self._len - addr):
            return self._start + addr, 0
        return self._backed(addr, count)

    def _aligned(self, addr: int, size: int) -> None:
        self._span_end(addr, size)
        if addr % size:
            raise self._misaligned(addr, addr, size)

    def get_host_address(self, addr: Any) -> int:
        """Refuse: the pages are compressed in the file, so there is no host address.

        Parameters
        ----------
        addr : int or MemoryRegionAddress
            A region offset.

        Returns
        -------
        int
            Never.

        Raises
        ------
        HostAddressNotAvailableError
            Always (after ``addr`` is checked).
        InvalidBackendAddressError
            ``addr >= len()``.
        """
        if _u64(addr, "address") >= self._len:
            raise self._oob(_u64(addr, "address"))
        raise _no_host_memory()

    def get_mmap(self) -> MmapRegion:
        """Refuse: the mapping is a placeholder that holds no data.

        Returns
        -------
        MmapRegion
            Never.

        Raises
        ------
        HostAddressNotAvailableError
            Always.
        """
        raise _no_host_memory()

    def as_array(self) -> np.ndarray:
        """Refuse: there is no host memory to view (read the bytes instead).

        Returns
        -------
        numpy.ndarray
            Never.

        Raises
        ------
        HostAddressNotAvailableError
            Always.
        """
        raise _no_host_memory()

    def get_slice(self, offset: Any, count: int) -> VolatileSlice:
        """Return region bytes ``[offset, offset + count)`` as a slice over a read-only copy.

        Parameters
        ----------
        offset : int or MemoryRegionAddress
            Region offset.
        count : int
            Length.

        Returns
        -------
        VolatileSlice
            The bytes, decompressed (writes through it are refused).

        Raises
        ------
        InvalidBackendAddressError
            The range does not fit in the region, or an excluded page is in it.
        """
        offset, count = _u64(offset, "offset"), _u64(count, "count")
        self._span_end(offset, count)
        if self._mapping._closed:
            raise self._oob(offset)
        buf = bytearray(count)
        if count:
            gpa, n = self._backed(offset, count)
            if n < count:
                raise self._hole(offset + n)
            self._store.read_into(memoryview(buf), gpa, count)
        return VolatileSlice(memoryview(buf).toreadonly())

    def as_volatile_slice(self) -> VolatileSlice:
        """Return the whole region as a slice over a read-only copy (see :meth:`get_slice`).

        Returns
        -------
        VolatileSlice
            The slice (as large as the region).
        """
        return self.get_slice(0, self._len)

    def __repr__(self) -> str:
        return f"KdumpRegion([{self._start:#x}, {self._end:#x}), {self._len:#x} bytes, ro)"


class KdumpMemory(_KdumpBytes, DumpMemory):
    """A kdump-compressed dump as a read-only guest memory (see :func:`open_kdump`).

    Every ``Bytes`` method, ``read_objs``, ``get_slice``/``get_slices`` and ``try_access``
    read the decompressed pages; nothing reads the regions' placeholder mappings (the
    region table gives kernels no host memory).  Writes raise
    :class:`~npguest.errors.ReadOnlyMemoryError`.

    Excluded pages count as unbacked everywhere (``check_range``, ``address_in_range``,
    ``locate``, ``try_access``, ``read_objs``...): they are holes inside regions.  Any
    read may raise :class:`~npguest.errors.DumpFormatError` for a page whose descriptor
    or data is bad (naming ``page_desc[i]``), when that page is first touched.

    Parameters
    ----------
    regions : sequence of KdumpRegion
        The runs of RAM pages.
    metadata : DumpMetadata
        What the dump records.
    files : iterable of file objects
        Files the memory owns.
    store : _Pages
        The dump's pages.
    """

    __slots__ = ("_store",)

    def __init__(
        self,
        regions: Sequence[KdumpRegion],
        metadata: DumpMetadata,
        files: Sequence[BinaryIO],
        store: _Pages,
    ) -> None:
        table = RegionTable(regions)
        # kernels (batch copies, IommuMemory's one-call copy) find no host bytes here
        table.hosts = np.zeros_like(table.hosts)
        table.lens = np.zeros_like(table.lens)
        table.hosts.flags.writeable = table.lens.flags.writeable = False
        super().__init__(table, metadata, files)
        self._store = store

    def _set_table(self, table: RegionTable) -> None:
        super()._set_table(table)
        self._windows, self._wstarts, self._window = (), (), NO_WINDOW

    @property
    def cache_size(self) -> int:
        """int: Decompressed pages in the cache now (at most the ``cache_pages`` opened with)."""
        return len(self._store.cache)

    def close(self) -> None:
        """Close the dump: unmap the placeholders, drop the cache, close the file.

        Raises
        ------
        MmapRegionError
            A region is still in use elsewhere (see :meth:`GuestMemoryMmap.close`).
        """
        try:
            super().close()
        finally:
            self._store.cache.clear()

    # -- which bytes are backed
    def _backed(self, addr: int, count: int) -> tuple[int, int]:
        n = self._store.valid_bytes(addr, count) if self._index(addr) >= 0 else 0
        if not n:
            raise InvalidGuestAddressError(addr)
        return addr, n

    def _aligned(self, addr: int, size: int) -> None:
        if addr % size:
            raise InvalidBackendAddressError(addr, f"not aligned to {size} bytes")

    def _run(self, addr: int, count: int) -> int:
        """Bytes from ``addr`` (at most ``count``) that valid pages back (0: none)."""
        return self._store.valid_bytes(addr, count) if self._index(addr) >= 0 else 0

    def address_in_range(self, addr: Any) -> bool:  # noqa: D102
        return self._run(_u64(addr, "address"), 1) > 0

    def check_address(self, addr: Any) -> GuestAddress | None:  # noqa: D102
        a = _u64(addr, "address")
        return GuestAddress(a) if self._run(a, 1) else None

    def checked_offset(self, base: Any, offset: int) -> GuestAddress | None:  # noqa: D102
        end = super().checked_offset(base, offset)
        return end if end is not None and self._run(int(end), 1) else None

    def check_range(self, base: Any, length: int, access: int = 0) -> bool:  # noqa: D102
        a, n = _u64(base, "base"), _u64(length, "length")
        super().check_range(a, 0, access)  # (checks access)
        return not n or (a + n <= U64_MAX + 1 and self._run(a, n) == n)

    address_in_range.__doc__ = GuestMemoryMmap.address_in_range.__doc__
    check_address.__doc__ = GuestMemoryMmap.check_address.__doc__
    checked_offset.__doc__ = GuestMemoryMmap.checked_offset.__doc__
    check_range.__doc__ = GuestMemoryMmap.check_range.__doc__

    def mark_dirty(self, addr: Any, length: int) -> None:
        """Check ``[addr, addr + length)`` is backed: a kdump memory tracks nothing.

        Parameters
        ----------
        addr : int or GuestAddress
            First byte.
        length : int
            Bytes.

        Raises
        ------
        InvalidGuestAddressError
            ``addr`` is not backed.
        PartialBufferError
            A hole or the end cuts the range short.
        """
        addr, length = _u64(addr, "address"), _u64(length, "length")
        if length:
            _, n = self._backed(addr, length)
            if n != length:
                raise PartialBufferError(length, n)

    def get_host_address(self, addr: Any) -> int:
        """Refuse: the pages are compressed in the file, so there is no host address.

        Parameters
        ----------
        addr : int or GuestAddress
            A guest physical address.

        Returns
        -------
        int
            Never.

        Raises
        ------
        HostAddressNotAvailableError
            Always, once ``addr`` is known to be backed.
        InvalidGuestAddressError
            ``addr`` is not backed.
        """
        self._backed(_u64(addr, "address"), 1)
        raise _no_host_memory()

    def get_slice(self, addr: Any, count: int) -> VolatileSlice:
        """Return ``[addr, addr + count)`` (in one region) as a slice over a read-only copy.

        Parameters
        ----------
        addr : int or GuestAddress
            The start (must be backed, even for ``count == 0``).
        count : int
            Bytes.

        Returns
        -------
        VolatileSlice
            The decompressed bytes (writes through it are refused).

        Raises
        ------
        InvalidGuestAddressError
            ``addr``, or a page of the range, is not backed (names the first such byte).
        InvalidBackendAddressError
            The range passes the end of ``addr``'s region.
        """
        a, count = _u64(addr, "address"), _u64(count, "count")
        r, off = self._backing(a)
        r._span_end(off, count)
        _, n = self._backed(a, max(count, 1))
        if n < count:
            raise InvalidGuestAddressError(a + n)
        buf = bytearray(count)
        if count:
            self._store.read_into(memoryview(buf), a, count)
        return VolatileSlice(memoryview(buf).toreadonly())

    def get_slices(self, addr: Any, count: int, access: int = 1) -> KdumpSliceIterator:
        """Iterate over read-only slices of ``[addr, addr + count)``, decompressed on demand.

        Each slice covers at most :data:`READ_BATCH` pages of one run of backed pages, so
        iterating over any range holds that much memory at a time.

        Parameters
        ----------
        addr : int or GuestAddress
            The start.
        count : int
            Bytes (``0`` gives an empty iterator and checks nothing).
        access : Permissions, optional
            The access (the ``GuestMemory`` view protocol; a write access is allowed
            here, writes through the slices are refused).

        Returns
        -------
        KdumpSliceIterator
            Yields :class:`~npguest.VolatileSlice` objects; raises
            :class:`~npguest.errors.InvalidGuestAddressError` at a hole or excluded page
            and ends after that.
        """
        super().get_slices(addr, 0, access)  # (checks access)
        return KdumpSliceIterator(self, _u64(addr, "address"), _u64(count, "count"))

    def try_access(  # noqa: D102
        self,
        count: int,
        addr: Any,
        f: Callable[[int, int, MemoryRegionAddress, GuestRegionMmap], int],
    ) -> int:
        count, start = _u64(count, "count"), _u64(addr, "address")
        done, cur = 0, start
        while done < count and (n := self._run(cur, count - done)):
            r = self._table.regions[self._index(cur)]
            got = f(done, n, MemoryRegionAddress(cur - r._start), r)
            if not isinstance(got, int) or got < 0:
                raise TypeError(f"try_access callback must return a byte count, got {got!r}")
            if got == 0:
                return done
            done += got
            if done > count:
                raise CallbackOutOfRangeError(n, got)
            cur += got
        if done == 0 and count:
            raise InvalidGuestAddressError(start)
        return done

    try_access.__doc__ = GuestMemoryMmap.try_access.__doc__

    def locate(  # noqa: D102
        self, addrs: Any, *, strict: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        idx, off = super().locate(addrs, strict=False)
        flat = address_array(addrs).reshape(-1)
        valid = self._store.valid_mask(flat >> np.uint64(self._store.shift)) & (
            idx.reshape(-1) >= 0
        )
        if strict and not valid.all():
            raise InvalidGuestAddressError(int(flat[np.argmin(valid)]))
        idx.reshape(-1)[~valid] = -1
        off.reshape(-1)[~valid] = 0
        return idx, off

    locate.__doc__ = GuestMemoryMmap.locate.__doc__

    def read_objs(  # noqa: D102
        self, addrs: Any, dtype: DTypeLike, *, holes: str = "raise"
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        if holes not in ("raise", "zero", "mask"):
            raise ValueError(f'holes must be "raise", "zero" or "mask", got {holes!r}')
        c = codec(dtype)
        arr = address_array(addrs)
        flat = arr.reshape(-1)
        out = np.zeros(arr.shape, dtype=c.dtype)
        if holes == "raise" and not c.size:
            return out  # (as GuestMemoryMmap: nothing read, nothing checked)
        valid = self._objects_backed(flat, c.size)
        if holes == "raise" and not valid.all():
            k = int(np.argmin(valid))
            a = int(flat[k])
            exc = InvalidGuestAddressError(a + self._run(a, c.size))
            exc.add_note(f"element {k}: the {c.size}-byte object at {a:#x} is not wholly backed")
            raise exc
        if c.size and valid.any():
            self._gather(flat, valid, c, out.reshape(-1))
        return (out, valid.reshape(arr.shape)) if holes == "mask" else out

    read_objs.__doc__ = GuestMemoryMmap.read_objs.__doc__

    def _objects_backed(self, addrs: np.ndarray, size: int) -> np.ndarray:
        """Which ``size``-byte objects at ``addrs`` valid pages wholly back."""
        store = self._store
        if not self.num_regions():
            return np.zeros(addrs.shape, dtype=bool)
        shift = np.uint64(store.shift)
        span = np.uint64(max(size, 1) - 1)
        ok = addrs <= np.uint64(U64_MAX) - span
        last = np.where(ok, addrs + np.where(ok, span, np.uint64(0)), addrs)
        first_p, last_p = addrs >> shift, last >> shift
        ok &= store.valid_mask(first_p) & store.valid_mask(last_p)
        for k in np.flatnonzero(ok & (last_p - first_p > 1)).tolist():  # objects > 1 page
            ok[k] = self._run(int(addrs[k]), size) == size
        return ok

    def _gather(self, addrs: np.ndarray, valid: np.ndarray, c: Any, out: np.ndarray) -> None:
        """Read the valid objects into ``out``: unique pages decompressed once, then gathered."""
        store, size = self._store, c.size
        if size > store.block:  # objects spanning pages: one read each
            for k in np.flatnonzero(valid).tolist():
                buf = bytearray(size)
                self.read_slice(buf, int(addrs[k]))
                out[k] = np.frombuffer(buf, dtype=c.dtype)[0]
            return
        sel = np.flatnonzero(valid)
        shift = np.uint64(store.shift)
        out_bytes = out.view(np.uint8).reshape(-1, size)
        for lo in range(0, sel.shape[0], GATHER_CHUNK):
            part = sel[lo : lo + GATHER_CHUNK]
            a = addrs[part]
            first_p = a >> shift
            last_p = (a + np.uint64(size - 1)) >> shift
            need = np.unique(np.concatenate((first_p, last_p)))
            pages = store.gather(need)
            row = np.searchsorted(need, first_p).astype(np.int64)
            at = row * store.block + (a & np.uint64(store.block - 1)).astype(np.int64)
            out_bytes[part] = pages.reshape(-1)[at[:, None] + np.arange(size)]

    def write_objs(self, values: Any, addrs: Any, dtype: DTypeLike | None = None) -> None:
        """Refuse: a kdump memory is read-only (unbacked objects are named first).

        Parameters
        ----------
        values : array_like
            Values.
        addrs : array_like
            Guest addresses.
        dtype : dtype_like, optional
            The objects' layout.

        Raises
        ------
        InvalidGuestAddressError
            Some object is not wholly backed.
        ReadOnlyMemoryError
            Otherwise, for any non-empty write.
        """
        c = codec(dtype if dtype is not None else np.asarray(values).dtype)
        flat = address_array(addrs).reshape(-1)
        if not flat.size or not c.size:
            return
        self.read_objs(flat, c.dtype)  # raises for the first unbacked object
        raise _read_only(int(flat[0]))

    def insert_region(self, region: GuestRegionMmap) -> GuestMemoryMmap:
        """Refuse: a kdump memory's regions are the dump's.

        Parameters
        ----------
        region : GuestRegionMmap
            Ignored.

        Returns
        -------
        GuestMemoryMmap
            Never.

        Raises
        ------
        RegionCollectionError
            Always (convert the dump to raw or ELF to edit its layout).
        """
        raise RegionCollectionError("a kdump memory's regions are fixed: convert it to edit them")

    def remove_region(self, base: Any, size: int) -> tuple[GuestMemoryMmap, GuestRegionMmap]:
        """Refuse: a kdump memory's regions are the dump's.

        Parameters
        ----------
        base : int or GuestAddress
            Ignored.
        size : int
            Ignored.

        Returns
        -------
        tuple
            Never.

        Raises
        ------
        RegionCollectionError
            Always.
        """
        raise RegionCollectionError("a kdump memory's regions are fixed: convert it to edit them")

    def region_chunks(self, chunk: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(gpa, bytes)`` pieces of every region in ascending order, decompressed.

        The streaming counterpart of :func:`~npguest.dumps.dump.region_chunks` for a
        memory whose regions have no host memory: each piece is a new read-only array of
        at most ``chunk`` bytes, excluded pages reading as zeros.

        Parameters
        ----------
        chunk : int, optional
            Piece size (default 16 MiB).

        Yields
        ------
        tuple of (int, numpy.ndarray)
            Guest address and ``uint8`` bytes of each piece.
        """
        store = self._store
        for r in self.iter():
            for off in range(0, r._len, chunk):
                buf = np.zeros(min(chunk, r._len - off), dtype=np.uint8)
                for s, e in r._backed_spans(off, buf.shape[0]):  # excluded pages stay zero
                    store.read_into(memoryview(buf)[s - off : e - off], r._start + s, e - s)
                buf.flags.writeable = False
                yield r._start + off, buf


class KdumpSliceIterator(GuestMemorySliceIterator):
    """The slices of a kdump range (see :meth:`KdumpMemory.get_slices`).

    Each is a read-only copy of at most :data:`READ_BATCH` pages of one run of backed
    pages; at a hole or an excluded page it raises
    :class:`~npguest.errors.InvalidGuestAddressError` and is exhausted afterwards.

    Parameters
    ----------
    mem : KdumpMemory
        The memory.
    addr : int
        The start.
    count : int
        Bytes.
    """

    __slots__ = ()
    _mem: KdumpMemory

    def __next__(self) -> VolatileSlice:
        if not self._count:
            raise StopIteration
        addr, mem = self._addr, self._mem
        n = mem._run(addr, min(self._count, READ_BATCH * mem._store.block))
        if not n:
            self._count = 0
            raise InvalidGuestAddressError(addr)
        buf = bytearray(n)
        mem._store.read_into(memoryview(buf), addr, n)
        self._addr, self._count = addr + n, self._count - n
        return VolatileSlice(memoryview(buf).toreadonly())


# -- opening ----------------------------------------------------------------------------
def open_kdump(
    path: str | os.PathLike[str], *, writable: bool = False, cache_pages: int = 4096
) -> KdumpMemory:
    """Open a kdump-compressed dump (plain or flattened) as a read-only guest memory.

    Reads the headers and the two page bitmaps (one bit per page); pages are read and
    decompressed when touched, through an LRU cache of ``cache_pages`` pages shared by
    all threads.  Regions are the runs of RAM pages; RAM pages the dump excluded are
    holes (``metadata.excluded``).  A flattened file (``makedumpfile -F``, QEMU without
    ``-R``) is read in place through an index of its records.

    Parameters
    ----------
    path : str or os.PathLike
        The dump: ``"KDUMP   "`` or ``"DISKDUMP"`` signature (64- or 32-bit header,
        either byte order, header versions 0 to 6), or a flattened stream of one.
    writable : bool, optional
        Must be ``False``: compressed pages cannot be written in place.
    cache_pages : int, optional
        Decompressed pages kept (default 4096, 16 MiB of 4 KiB pages); 0 keeps none.

    Returns
    -------
    KdumpMemory
        The memory.  ``metadata``: ``machine`` (``utsname.machine``), ``page_size`` (the
        block size), ``notes``, ``cpus``, ``vmcoreinfo``, ``excluded`` (a read-only
        ``(n, 2)`` ``uint64`` array of ``(gpa, size)``), and in ``extra``
        the header and sub-header fields, ``utsname``, ``header_bits``, ``endianness``,
        ``flattened``, ``compression`` (names from ``status``), ``incomplete`` and
        ``excluded_vmemmap`` (its other bits), ``bitmaps``, ``max_pfn``,
        ``dumped_pages`` and ``missing_codecs``.

    Raises
    ------
    DumpFormatError
        The file is malformed (names the field and its offset: for a flattened file, the
        offset in the plain file its records spell); a page's descriptor or data is bad
        (raised when the page is read, naming ``page_desc[i]``), or its compression needs
        a package that is not installed (names the pip package).
    ReadOnlyMemoryError
        ``writable=True``.
    MmapRegionError
        The file cannot be opened.
    ValueError
        ``cache_pages`` is negative.

    Warns
    -----
    RuntimeWarning
        The header says pages are compressed with a codec whose package is missing.

    Examples
    --------
    >>> import os, tempfile, npguest
    >>> mem = npguest.GuestMemoryMmap.from_ranges([(0, 0x4000), (0x100000, 0x2000)])
    >>> mem.write(b"compressed", 0x100ffb)
    10
    >>> path = os.path.join(tempfile.mkdtemp(), "vmcore.kdump")
    >>> write_kdump(mem, path)
    >>> with open_kdump(path) as dump:
    ...     dump.read_bytes(0x100ffb, 10), dump.num_regions(), dump.metadata.page_size
    (b'compressed', 2, 4096)
    """
    path = os.fspath(path)
    if writable:
        raise _read_only(0)
    if isinstance(cache_pages, bool) or not isinstance(cache_pages, int) or cache_pages < 0:
        raise ValueError(f"cache_pages must be an integer >= 0, got {cache_pages!r}")
    try:
        f = open(path, "rb")  # noqa: SIM115 - owned by the memory
    except OSError as exc:
        raise MmapRegionError(f"cannot open {path!r}: {exc}") from exc
    try:
        src = _Source(f, path)
        if src.size >= 16 and src.read(0, 16, "signature") == FLAT_SIGNATURE:
            src.index_flattened()
        return _open(src, f, cache_pages)
    except BaseException:
        f.close()
        raise


def _open(src: _Source, f: BinaryIO, cache_pages: int) -> KdumpMemory:
    dump = _read_dump(src)
    block = dump.block
    store = _Pages(src, dump, cache_pages)
    fields = dump.metadata_fields
    table_end = store.desc_base + _PAGE_DESC_SIZE * store.count
    if table_end > src.size:
        raise src.error(
            store.desc_base,
            "page_desc",
            f"{store.count} page descriptors (the 2nd bitmap's set bits) run past the end of "
            f"the {src.size}-byte {'plain ' if src.flattened else ''}file",
        )
    first_at = (1 + fields["sub_hdr_size"]) * block
    if _count_runs(dump.ram) > MAX_REGIONS:
        raise src.error(first_at, "1st bitmap", f"more than {MAX_REGIONS} runs of RAM pages")
    runs = _runs(dump.ram, dump.max_pfn).tolist()
    if not runs:
        raise src.error(first_at, "1st bitmap", "no RAM page: the dump describes no memory")
    excluded = _runs(dump.ram & ~dump.dumped, dump.max_pfn).view(np.uint64)  # (in place:)
    excluded[:, 1] -= excluded[:, 0]
    excluded <<= np.uint64(store.shift)  # (gpa, size)
    excluded.flags.writeable = False
    machine = fields["utsname"]["machine"] or None
    cpus, info = decode_notes(
        dump.notes,
        dump.layout.order,
        "i386" if machine and re.fullmatch(r"i[3-6]86", machine) else machine,
    )
    vmcoreinfo = {**parse_vmcoreinfo(dump.vmcoreinfo_text), **info}
    fields["dumped_pages"] = store.count
    missing = {}
    for flag, c in _CODECS.items():
        if fields["status"] & flag:
            try:
                _codec_module(c)
            except ImportError as exc:
                missing[c.name] = str(exc)
                warnings.warn(f"{src.path}: {exc}", RuntimeWarning, stacklevel=3)
    fields["missing_codecs"] = missing
    metadata = DumpMetadata(
        "kdump",
        src.path,
        machine=machine,
        page_size=block,
        cpus=cpus,
        vmcoreinfo=vmcoreinfo,
        notes=dump.notes,
        excluded=excluded,
        extra=fields,
    )
    regions = []
    try:
        for s, e in runs:
            placeholder = MmapRegion.anonymous((e - s) * block, readonly=True)
            regions.append(KdumpRegion(placeholder, s * block, store))
    except MmapRegionError as exc:
        raise src.error(
            first_at, "1st bitmap", f"cannot reserve the RAM's addresses: {exc}"
        ) from exc
    return KdumpMemory(regions, metadata, (f,), store)


# -- writing ---------------------------------------------------------------------------
def _merged_runs(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Return the union of the ``[lo, hi)`` ranges as sorted ``(n, 2)`` ``int64`` runs.

    Empty ranges are dropped; overlapping or adjacent ones are joined, so the runs are
    disjoint and no run ends where the next starts.
    """
    keep = lo < hi
    lo, hi = lo[keep].astype(np.int64), hi[keep].astype(np.int64)
    if not lo.shape[0]:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.argsort(lo, kind="stable")
    lo, reach = lo[order], np.maximum.accumulate(hi[order])
    new = np.ones(lo.shape[0], dtype=bool)
    new[1:] = lo[1:] > reach[:-1]
    first = np.flatnonzero(new)
    return np.column_stack((lo[first], reach[np.append(first[1:], lo.shape[0]) - 1]))


def _ram_runs(mem: GuestMemoryMmap, block: int) -> np.ndarray:
    """Return the runs of pages ``mem``'s regions touch, checked for :func:`write_kdump`.

    Raises ValueError when the bitmaps would pass :data:`MAX_WRITE_PFN` pages, or the
    runs (the reader's regions) :data:`MAX_REGIONS`.
    """
    starts, ends = mem.starts, mem.ends
    max_pfn = -(-int(ends[-1]) // block)
    if max_pfn > MAX_WRITE_PFN:
        raise ValueError(
            f"the memory's top address is {int(ends[-1]) - 1:#x}: its kdump bitmaps would "
            f"describe {max_pfn:#x} pages of {block} bytes (at most {MAX_WRITE_PFN:#x}, "
            f"{MAX_WRITE_PFN // (8 << 20)} MiB per bitmap)"
        )
    b = np.uint64(block)
    runs = _merged_runs(starts // b, ends // b + (ends % b != 0))
    if runs.shape[0] > MAX_REGIONS:
        raise ValueError(
            f"the memory's pages form {runs.shape[0]} separate runs: a kdump reader maps "
            f"each as a region, at most {MAX_REGIONS}"
        )
    return runs


def _excluded_runs(excluded: Any, block: int, max_pfn: int) -> np.ndarray:
    """Return the runs of pages below ``max_pfn`` wholly inside ``(gpa, size)`` ranges."""
    ex = np.asarray(excluded, dtype=np.uint64).reshape(-1, 2)
    gpa, b = ex[:, 0], np.uint64(block)
    end = gpa + np.minimum(ex[:, 1], ~gpa)  # (clipped at 2**64 - 1: no wrap-around)
    lo = np.minimum(gpa // b + (gpa % b != 0), np.uint64(max_pfn))
    return _merged_runs(lo, np.minimum(end // b, np.uint64(max_pfn)))


def _bitmap(runs: np.ndarray, length: int) -> np.ndarray:
    """Return a ``length``-byte little-endian bitmap with the bits of ``runs`` set.

    ``runs`` are :func:`_merged_runs` (their edges all differ) inside the bitmap.  Each
    edge toggles a bit; a prefix XOR over the bits (within words by shifts, across words
    by their carried parity) fills the runs in: ``O(length)``, nothing per run in Python.
    """
    words = np.zeros(length // 8, dtype=np.uint64)  # (length: whole blocks, >= 512 bytes)
    edges = runs.reshape(-1).astype(np.uint64)
    edges = edges[edges < np.uint64(64 * words.shape[0])]
    np.bitwise_xor.at(words, edges >> np.uint64(6), np.uint64(1) << (edges & np.uint64(63)))
    tmp = np.empty_like(words)
    for shift in (1, 2, 4, 8, 16, 32):
        np.left_shift(words, np.uint64(shift), out=tmp)
        words ^= tmp
    np.right_shift(words, np.uint64(63), out=tmp)  # the parity of each word's edges
    np.bitwise_xor.accumulate(tmp, out=tmp)
    tmp *= np.uint64(U64_MAX)  # all ones after an odd number of edges
    words[1:] ^= tmp[:-1]
    return words.astype("<u8", copy=False).view(np.uint8)


class _Out:
    """Where a writer's bytes go: positioned writes to a plain file, or flattened records."""

    def __init__(self, f: BinaryIO, flattened: bool) -> None:
        self.fd = f.fileno()
        self.flattened = flattened
        self.pos = 0
        if flattened:
            header = FLAT_SIGNATURE + struct.pack(">qq", 1, 1)
            self._append(header.ljust(FLAT_HEADER_SIZE, b"\0"))

    def _append(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            n = os.pwrite(self.fd, view, self.pos)
            view, self.pos = view[n:], self.pos + n

    def write(self, offset: int, data: Any) -> None:
        """Put ``data`` at ``offset`` of the plain file."""
        if self.flattened:
            self._append(struct.pack(">qq", offset, len(memoryview(data).cast("B"))))
            self._append(data)
        else:
            self.pos = offset
            self._append(data)

    def close(self) -> None:
        """End the flattened stream."""
        if self.flattened:
            self._append(struct.pack(">qq", -1, -1))


def _page_batches(
    chunks: Iterator[tuple[int, np.ndarray]], block: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Assemble ascending ``(gpa, bytes)`` chunks into ``(first_pfn, pages)`` batches.

    ``pages`` is a ``(k, block)`` array of consecutive pages (at most :data:`WRITE_BATCH`);
    bytes no chunk covers are 0.
    """
    buf = np.zeros(WRITE_BATCH * block, dtype=np.uint8)
    p0, top = -1, 0  # first pfn of the batch, bytes of it filled so far
    for gpa, data in chunks:
        pos, n = 0, data.shape[0]
        while pos < n:
            a = gpa + pos
            gap = a // block > p0 + (top - 1) // block + 1
            if p0 >= 0 and (gap or a >= (p0 + WRITE_BATCH) * block):
                k = -(-top // block)
                yield p0, buf[: k * block].reshape(k, block).copy()
                buf[: k * block] = 0
                p0 = -1
            if p0 < 0:
                p0, top = a // block, 0
            at = a - p0 * block
            m = min(n - pos, WRITE_BATCH * block - at)
            buf[at : at + m] = data[pos : pos + m]
            top, pos = max(top, at + m), pos + m
    if p0 >= 0:
        k = -(-top // block)
        yield p0, buf[: k * block].reshape(k, block).copy()


def write_kdump(
    mem: GuestMemoryMmap,
    path: str | os.PathLike[str],
    *,
    flattened: bool = False,
    compression: str = "zlib",
    progress: Progress | None = None,
    notes: Sequence[Note] | None = None,
    block_size: int = 4096,
) -> None:
    """Write a memory as a kdump-compressed dump, the way QEMU's ``dump-guest-memory -z`` does.

    Header version 6, dump level 1, ``utsname.machine`` from a :class:`DumpMemory`'s
    metadata (else ``x86_64``), both bitmaps, one descriptor per page in page order, one
    shared all-zero page that every zero page points at, then each other page compressed
    (or raw when compression does not shrink it), the ``status`` compression bit set.
    A page partly covered by regions is written whole (zeros outside them); the pages
    wholly inside a :class:`DumpMemory`'s ``metadata.excluded`` ranges stay excluded.
    Memory is streamed in batches of :data:`WRITE_BATCH` pages, compressed by a small
    thread pool.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.
    path : str or os.PathLike
        The output file (replaced).
    flattened : bool, optional
        Write the flattened stream (QEMU without ``-R``, ``makedumpfile -F``) instead of
        the plain, seekable layout.
    compression : str, optional
        ``"zlib"`` (default), ``"lzo"`` (needs ``python-lzo``), ``"snappy"`` (needs
        ``python-snappy`` or ``cramjam``), ``"zstd"`` (needs ``zstandard``), or ``"none"``.
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes)`` (bytes of pages) after each batch.
    notes : sequence of Note, optional
        The notes blob (default: a :class:`DumpMemory`'s ``metadata.notes``, none for other
        memories); a ``"VMCOREINFO"`` note is also pointed at by ``offset_vmcoreinfo``.
    block_size : int, optional
        The page size (default 4096; a power of two from 512 to 1 MiB).

    Raises
    ------
    ValueError
        The memory is empty, an unknown compression or one whose package is missing, a
        bad ``block_size``, a top address needing bitmaps of more than
        :data:`MAX_WRITE_PFN` pages, or pages forming more than :data:`MAX_REGIONS`
        separate runs (:func:`open_kdump` could not read it).  Nothing is written then.
    OSError
        The file cannot be written.
    """
    _write_kdump(mem, path, flattened, compression, progress, notes, block_size, 64, "<")


def _write_kdump(
    mem: GuestMemoryMmap,
    path: str | os.PathLike[str],
    flattened: bool,
    compression: str,
    progress: Progress | None,
    notes: Sequence[Note] | None,
    block: int,
    bits: int,
    order: str,
) -> None:
    """Write as :func:`write_kdump` does, in any header word size and byte order.

    (32-bit and big-endian dumps exist for the tests of the reader.)
    """
    if mem.num_regions() == 0:
        raise ValueError("cannot write an empty memory")
    if not (MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE and block & (block - 1) == 0):
        raise ValueError(f"block_size {block} is not a power of two in [512, 1 MiB]")
    ram_runs = _ram_runs(mem, block)
    if compression == "none":
        flag, compress = 0, None
    else:
        flag, compress = _compressor(compression)
    layout = _LAYOUT[bits, order]
    meta = mem.metadata if isinstance(mem, DumpMemory) else None
    if notes is None:
        notes = meta.notes if meta is not None else ()
    blob = encode_notes(notes, order)
    # layout of the plain file
    max_pfn = int(ram_runs[-1, 1])
    length = -(-max_pfn // (8 * block)) * block  # (whole blocks of bits)
    ram = _bitmap(ram_runs, length)
    dumped = ram
    if meta is not None and len(meta.excluded):  # keep excluded pages excluded
        dumped = ram & ~_bitmap(_excluded_runs(meta.excluded, block, max_pfn), length)
    sub_at = block
    note_at = sub_at + layout.sub.size
    sub_blocks = -(-(layout.sub.size + len(blob)) // block)
    bitmap_at = (1 + sub_blocks) * block
    desc_base = bitmap_at + 2 * length
    total = int(np.bitwise_count(dumped).sum())
    zero_at = desc_base + _PAGE_DESC_SIZE * total
    vmcoreinfo_at, vmcoreinfo_size = 0, 0
    pos = note_at
    for note in notes:
        name = len(note.name.encode("latin-1")) + 1
        if note.name == "VMCOREINFO":
            vmcoreinfo_at, vmcoreinfo_size = pos + 12 + (-name % 4 + name), len(note.desc)
        pos += 12 + (-name % 4 + name) + (-len(note.desc) % 4 + len(note.desc))
    info = decode_notes(notes, order)[1] if notes else {}
    machine = (meta.machine if meta is not None and meta.machine else None) or "x86_64"
    uts = machine.encode("latin-1")[: _UTS_LEN - 1].ljust(_UTS_LEN, b"\0")
    header = layout.header.pack(
        signature=KDUMP_SIGNATURE,
        header_version=HEADER_VERSION,
        utsname=bytes(4 * _UTS_LEN) + uts + bytes(_UTS_LEN),
        timestamp=b"",
        status=flag,
        block_size=block,
        sub_hdr_size=sub_blocks,
        bitmap_blocks=2 * length // block,
        max_mapnr=min(max_pfn, 0xFFFFFFFF),
        nr_cpus=sum(n.name == "CORE" and n.type == 1 for n in notes),
    )
    sub = layout.sub.pack(
        phys_base=_number(info.get("NUMBER(phys_base)", "0")) & ((1 << bits) - 1),
        dump_level=DUMP_LEVEL,
        offset_vmcoreinfo=vmcoreinfo_at,
        size_vmcoreinfo=vmcoreinfo_size,
        offset_note=note_at if blob else 0,
        note_size=len(blob),
        max_mapnr_64=max_pfn,
    )
    chunks = mem.region_chunks() if isinstance(mem, KdumpMemory) else region_chunks(mem)
    with open(path, "wb") as f:
        out = _Out(f, flattened)
        out.write(0, header)
        out.write(sub_at, sub + blob)
        out.write(bitmap_at, ram)
        out.write(bitmap_at + length, dumped)
        out.write(zero_at, bytes(block))
        data_at, index, done = zero_at + block, 0, 0
        for p0, pages in _page_batches(chunks, block):
            k = pages.shape[0]
            keep = np.unpackbits(dumped[p0 >> 3 : ((p0 + k) >> 3) + 1], bitorder="little")
            pages = pages[keep[p0 & 7 : (p0 & 7) + k].astype(bool)]
            descs = np.zeros(pages.shape[0], dtype=layout.desc_dtype)
            descs["offset"] = zero_at  # zero pages: the shared zero page
            descs["size"] = block
            nonzero = pages.view(np.uint64).any(axis=1)
            stored = _collect(_submit(partial(_stored, compress=compress), list(pages[nonzero])))
            batch_at = data_at
            for i, (data, compressed) in zip(np.flatnonzero(nonzero).tolist(), stored, strict=True):
                descs[i] = (data_at, len(data), flag if compressed else 0, 0)
                data_at += len(data)
            if stored:
                out.write(batch_at, b"".join(data for data, _ in stored))
            if descs.shape[0]:
                out.write(desc_base + _PAGE_DESC_SIZE * index, descs.tobytes())
            index += descs.shape[0]
            done += pages.shape[0] * block
            if progress is not None:
                progress(done, total * block)
        out.close()


def _stored(page: np.ndarray, compress: Callable[[bytes], bytes] | None) -> tuple[bytes, bool]:
    """Return a page as stored, ``(bytes, compressed?)``: raw unless compression shrinks it."""
    raw = page.tobytes()
    if compress is not None:
        data = compress(raw)
        if len(data) < len(raw):
            return data, True
    return raw, False


def _number(text: str) -> int:
    """Return a VMCOREINFO ``NUMBER(...)`` value (decimal, maybe negative); 0 if unreadable."""
    try:
        return int(text)
    except ValueError:
        return 0
