"""LiME dumps (the Linux Memory Extractor's ``format=lime``, and Microsoft AVML's output).

A LiME file is a sequence of ranges, each a 32-byte header followed by its bytes, until the
end of the file; there is no count and no footer::

    off  size  field
      0     4  magic    0x4C694D45 ("EMiL")      ("AVML" for AVML v2)
      4     4  version  1                        (2 for AVML v2)
      8     8  s_addr   first guest physical address of the range
     16     8  e_addr   LAST address, inclusive: the range holds e_addr - s_addr + 1 bytes
     24     8  reserved (zeros; not checked)

How this reader decides the cases the producers leave open:

- **Order.** Ranges must ascend without overlap (LiME and AVML write them so); a range
  starting at or below the previous range's ``e_addr`` is a :class:`DumpFormatError`.
- **Gaps are holes.** AVML skips all-zero blocks of up to 16 MiB without writing a header,
  so AVML-made files are sparse: the gaps (like any address no range covers) read as holes
  (:class:`~npguest.errors.InvalidGuestAddressError`, or zeros with ``holes="zero"``).
- **An all-zero header ends the dump**, as in LeechCore: whatever follows it is ignored
  (``metadata.extra["end"]`` is the offset where reading stopped).
- **Truncation is an error:** a partial header, or data running past the end of the file.
- **AVML v2** ("AVML", version 2) compresses each range as a Snappy *framed* stream followed
  by a u64 holding the stream's length.  Compressed memory cannot be mapped in place, so
  opening one decompresses **the whole dump into anonymous memory** (checksums verified;
  at most 22 times the file's size, Snappy's best ratio; writes stay in that memory);
  it needs the ``cramjam`` (or ``python-snappy``) package, and says so when neither is
  installed.  ``avml-convert --format lime`` turns it into a mappable LiME file.
"""

from __future__ import annotations

import importlib
import os
import struct
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import numpy as np

from ..address import U64_MAX
from ..guest_memory import GuestMemoryMmap
from ..region import GuestRegionMmap
from .dump import (
    DumpFile,
    DumpMemory,
    DumpMetadata,
    Extent,
    map_extents,
    open_headers,
    region_chunks,
)

__all__ = ["open_lime", "write_lime"]

#: ``magic`` of a LiME range header ("EMiL" on disk).
LIME_MAGIC = 0x4C694D45
#: ``magic`` of an AVML v2 range header ("AVML" on disk).
AVML_MAGIC = 0x4C4D5641
#: The 32-byte range header: magic, version, s_addr, e_addr (inclusive), reserved.
HEADER = struct.Struct("<IIQQ8s")
#: Version each magic must carry.
VERSIONS = {LIME_MAGIC: 1, AVML_MAGIC: 2}

#: Largest uncompressed payload of one Snappy frame chunk.
SNAPPY_CHUNK = 1 << 16
#: The Snappy framing format's stream identifier chunk (type 0xff, length 6).
SNAPPY_STREAM_ID = b"\xff\x06\x00\x00sNaPpY"
_U64 = struct.Struct("<Q")

Progress = Callable[[int, int], None]


#: Snappy's best compression ratio is below 22 (a 3-byte copy op yields <= 64 bytes): a
#: chunk declaring more is corrupt, which bounds what an AVML v2 file can make us allocate.
SNAPPY_MAX_RATIO = 22


class _Range(NamedTuple):
    gpa: int
    size: int
    data: int  # file offset of the range's bytes (AVML v2: of its Snappy stream)
    stored: int  # bytes the range takes in the file (AVML v2: the stream's length)
    field: str
    where: int  # file offset of the header


def open_lime(path: str | os.PathLike[str], *, writable: bool = False) -> DumpMemory:
    r"""Open a LiME dump (or an AVML one), zero-copy.

    See the module documentation for how gaps, ordering, an all-zero header and AVML v2
    are handled.

    Parameters
    ----------
    path : str or os.PathLike
        The dump.
    writable : bool, optional
        Map the ranges writable, so writes change the file.  Not for AVML v2 (compressed).

    Returns
    -------
    DumpMemory
        One region per range (``metadata.extra``: ``"variant"`` ``"lime"`` or
        ``"avml2"``, ``"ranges"`` the header count, ``"end"`` where reading stopped).

    Raises
    ------
    DumpFormatError
        A bad magic or version, ``e_addr < s_addr``, ranges out of order or overlapping,
        a truncated header or range, a corrupt AVML stream, or no range at all (names the
        header's index, field and file offset).  AVML v2 without ``cramjam`` /
        ``python-snappy`` installed.
    MmapRegionError
        The file cannot be opened or mapped.
    ValueError
        ``writable=True`` on an AVML v2 dump.

    Examples
    --------
    >>> import os, struct, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "mem.lime")
    >>> header = struct.pack("<IIQQ8s", 0x4C694D45, 1, 0x1000, 0x1FFF, bytes(8))
    >>> with open(path, "wb") as f:
    ...     _ = f.write(header + b"\xab" * 0x1000)
    >>> with open_lime(path) as mem:
    ...     mem.read_bytes(0x1FFE, 2), mem.last_addr()
    (b'\xab\xab', GuestAddress(0x1fff))
    """
    path = os.fspath(path)
    with open_headers(path) as dump:
        magic, ranges, end = _read_ranges(dump)
        extra = {
            "variant": "lime" if magic == LIME_MAGIC else "avml2",
            "ranges": len(ranges),
            "end": end,
        }
        meta = DumpMetadata("lime", path, extra=extra)
        if magic == AVML_MAGIC:
            if writable:
                raise ValueError("an AVML v2 dump is compressed: it cannot be opened writable")
            return _decompress_avml(dump, ranges, meta)
    extents = [Extent(r.gpa, r.size, r.data, r.field, r.where) for r in ranges]
    return map_extents(path, extents, meta, writable=writable)


def _read_ranges(dump: DumpFile) -> tuple[int, list[_Range], int]:
    """Walk the headers: (magic, ranges, offset where reading stopped)."""
    ranges: list[_Range] = []
    magic = None
    off = 0
    while off < dump.size:  # every header is >= 32 bytes: bounded by the file size
        i = len(ranges)
        raw = dump.read(off, HEADER.size, f"header[{i}]")
        if raw == bytes(HEADER.size):
            break
        h_magic, version, s_addr, e_addr, _ = HEADER.unpack(raw)
        if h_magic not in VERSIONS or (magic is not None and h_magic != magic):
            expected = "EMiL or AVML" if magic is None else raw[:4].decode("latin-1")
            raise dump.error(off, f"header[{i}].magic", f"{raw[:4]!r} is not {expected}")
        magic = h_magic
        if version != VERSIONS[magic]:
            raise dump.error(
                off + 4, f"header[{i}].version", f"{version}, expected {VERSIONS[magic]}"
            )
        if e_addr < s_addr:
            raise dump.error(
                off + 16, f"header[{i}].e_addr", f"{e_addr:#x} is below s_addr {s_addr:#x}"
            )
        if e_addr == U64_MAX:
            raise dump.error(
                off + 16, f"header[{i}].e_addr", "2**64 - 1: a region cannot end at 2**64"
            )
        if ranges and s_addr <= ranges[-1].gpa + ranges[-1].size - 1:
            prev = ranges[-1].gpa + ranges[-1].size - 1
            raise dump.error(
                off + 8,
                f"header[{i}].s_addr",
                f"{s_addr:#x} is not above the previous range's e_addr {prev:#x} "
                "(ranges must ascend without overlap)",
            )
        size, data = e_addr - s_addr + 1, off + HEADER.size
        if magic == LIME_MAGIC:
            dump.check_span(data, size, f"header[{i}] data")
            stored = size
        else:
            stored = _stream_length(dump, data, size, f"header[{i}]")
        ranges.append(_Range(s_addr, size, data, stored, f"header[{i}]", off))
        off = data + stored + (_U64.size if magic == AVML_MAGIC else 0)  # AVML: + trailer
    if not ranges:
        raise dump.error(0, "header[0]", "the dump holds no range")
    return magic, ranges, off


def _stream_length(dump: DumpFile, start: int, size: int, field: str) -> int:
    """Walk an AVML range's Snappy frames (headers only); return the stream's length.

    Checks that the chunks declare exactly ``size`` decoded bytes and that the u64 trailer
    holds the stream's length, so the decompressed size is proven before allocating.
    """
    what = f"{field} snappy stream"
    pos = start
    decoded = 0
    while decoded < size:
        kind, n0, n1, n2 = dump.read(pos, 4, f"{what} chunk header")
        length = n0 | n1 << 8 | n2 << 16
        dump.check_span(pos + 4, length, f"{what} chunk")
        if kind == 0x00:  # compressed: CRC32C, then the raw block's varint length
            preamble = dump.read(pos + 8, min(max(length - 4, 0), 5), f"{what} chunk")
            decoded += _chunk_length(dump, pos, length, preamble, what)
        elif kind == 0x01:  # uncompressed: CRC32C, then the bytes
            if not 4 <= length <= SNAPPY_CHUNK + 4:
                raise dump.error(pos, f"{what} chunk", f"uncompressed length {length}")
            decoded += length - 4
        elif kind == 0xFF:
            if dump.read(pos, len(SNAPPY_STREAM_ID), what) != SNAPPY_STREAM_ID:
                raise dump.error(pos, f"{what} identifier", "not sNaPpY")
        elif kind < 0x80:  # 0x02-0x7f are reserved unskippable chunks
            raise dump.error(pos, f"{what} chunk", f"reserved chunk type {kind:#x}")
        pos += 4 + length
    if decoded != size:
        raise dump.error(pos, what, f"decodes to {decoded} bytes, the header says {size}")
    (trailer,) = dump.unpack(_U64, pos, f"{field} stream length")
    if trailer != pos - start:
        raise dump.error(
            pos, f"{field} stream length", f"{trailer}, the stream is {pos - start} bytes"
        )
    return pos - start


def _chunk_length(dump: DumpFile, pos: int, length: int, preamble: bytes, what: str) -> int:
    """Return the uncompressed length a compressed Snappy chunk declares (a varint)."""
    value = 0
    for shift, byte in zip(range(0, 35, 7), preamble, strict=False):
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value > min(SNAPPY_CHUNK, SNAPPY_MAX_RATIO * (length - 4)):
                break
            return value
    raise dump.error(pos, f"{what} chunk", "bad uncompressed length")


def _snappy() -> tuple[str, ModuleType]:
    for name in ("cramjam", "snappy"):
        try:
            return name, importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("neither cramjam nor python-snappy is installed")


def _decompress_avml(dump: DumpFile, ranges: list[_Range], meta: DumpMetadata) -> DumpMemory:
    """Decode every AVML v2 range into an anonymous region."""
    try:
        name, codec = _snappy()
    except ImportError:
        raise dump.error(
            0,
            "header[0].magic",
            "AVML v2 (Snappy-compressed) needs the cramjam or python-snappy package "
            "(pip install cramjam), or convert it first: avml-convert --format lime",
        ) from None
    regions = []
    try:
        for r in ranges:
            region = GuestRegionMmap.from_range(r.gpa, r.size)
            regions.append(region)
            stream = dump.read(r.data, r.stored, f"{r.field} snappy stream")
            problem = _decode(name, codec, stream, region.as_array())
            if problem:
                raise dump.error(r.data, f"{r.field} snappy stream", problem)
        return DumpMemory(regions, meta)
    except BaseException:
        for region in regions:
            region.close()
        raise


def _decode(name: str, codec: ModuleType, stream: bytes, out: np.ndarray) -> str | None:
    """Decompress a framed Snappy stream into ``out``; return what went wrong, if anything.

    Errors are returned, not raised, so no traceback keeps ``out`` (a view that pins its
    region) alive while the caller closes the regions.
    """
    try:
        if name == "cramjam":
            done = codec.snappy.decompress_into(stream, out)
        else:
            data = codec.StreamDecompressor().decompress(stream)
            done = len(data)
            if done == out.shape[0]:
                out[:] = np.frombuffer(data, np.uint8)
    except Exception as exc:  # each codec raises its own error classes
        return f"{name}: {exc}"
    return None if done == out.shape[0] else f"{done} bytes, expected {out.shape[0]}"


def write_lime(
    mem: GuestMemoryMmap,
    path: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
) -> None:
    """Write a memory as a LiME dump: one range per region, in ascending guest address.

    Each region becomes a header (``e_addr`` inclusive) followed by its bytes, streamed in
    bounded pieces.  Page-aligned regions keep the file readable by LeechCore, which
    requires 4 KiB-aligned ``s_addr``.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.
    path : str or os.PathLike
        The output file (replaced).
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes)`` after each piece.

    Raises
    ------
    ValueError
        The memory is empty.
    OSError
        The file cannot be written.
    """
    if mem.num_regions() == 0:
        raise ValueError("cannot write an empty memory")
    total = int((mem.ends - mem.starts).sum())
    done = 0
    with open(path, "wb") as f:
        for gpa, data in region_chunks(mem):
            region = mem.find_region(gpa)
            if region is not None and int(region.start_addr()) == gpa:
                f.write(HEADER.pack(LIME_MAGIC, 1, gpa, int(region.last_addr()), bytes(8)))
            f.write(memoryview(data))
            done += data.shape[0]
            if progress is not None:
                progress(done, total)
