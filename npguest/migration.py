r"""Live-migration-style streams of guest memory: pre-copy rounds, then stop-and-copy.

:func:`send` writes a guest memory to a socket, pipe, fd or file while the guest keeps
running: round 1 copies every region; each later round copies the pages dirtied meanwhile
(:meth:`~npguest.GuestMemoryMmap.get_and_reset_dirty`) until few are left or the round
limit is reached; then ``pause()`` stops the writers and a final round copies the last dirty
pages.  :func:`receive` rebuilds the memory (or fills an existing one of the same layout),
reading every payload straight into the mapping and verifying every checksum.

Wire protocol (version 1)
-------------------------
Every integer is little-endian.  The stream is a header, then rounds, then an end record.

Header (``32 + 16 * n + 8`` bytes):

==========  ======  ===============================================================
offset      size    field
==========  ======  ===============================================================
0           8       magic ``b"NPGMIG\r\n"``
8           2       version (1)
10          2       checksum algorithm (1: XXH64, seed 0)
12          4       page size: the checksum block, a power of two (the dirty-tracking
                    page size of the source)
16          4       number of regions ``n`` (1 to 65536)
20          4       reserved, 0
24          8       total bytes of the regions
32          16 n    regions: ``(gpa, size)`` as two u64, sorted, not overlapping
32 + 16 n   8       XXH64 of the header's previous bytes
==========  ======  ===============================================================

Records: a 32-byte head ``(kind u32, round u32, a u64, b u64, c u64)``:

=====================  ==================  ==================  ===================
kind                   a                   b                   c
=====================  ==================  ==================  ===================
1 ROUND (starts one)   payload bytes       dirty pages         0
2 DATA                 gpa                 length (> 0)        0
3 END_ROUND            DATA records        payload bytes       round digest
4 END_STREAM           rounds              payload bytes       0
=====================  ==================  ==================  ===================

A DATA head is followed by ``ceil(length / page size)`` u64 block checksums (XXH64 of each
page-size block of the payload, the last one shorter), then the ``length`` payload bytes.
A DATA record lies inside one region and starts on one of that region's pages
(``(gpa - region start) % page size == 0``; the receiver rejects any other, field
``"record address"``), so its blocks are that region's pages (the last block of a region
whose size is not a page multiple is short).  A DATA record has at most ``MAX_BLOCKS``
(2**18) blocks and ``MAX_RECORD`` (1 GiB) bytes (fields ``"record length"``,
``"record range"``): the sender cuts records at ``min(4 MiB, 2**18 pages)``, at least one
page.  The round digest is the XXH64 of the round's DATA heads and block checksums, concatenated.
Rounds are numbered from 1; the last round before END_STREAM is the stop-and-copy round.

A receiver that builds a new memory from the header (no destination given) requires at
least one round (field ``"round count"``), round 1 announcing exactly the header's total
bytes (field ``"round total"``), and round 1's DATA records ascending and disjoint (field
``"record order"``): round 1 then copies every byte of every region.  A ``resume=True``
stream fails this; it belongs to the destination of the failed stream.  The header's total
may not exceed ``max_bytes`` (default ``MAX_BYTES``, 1 TiB; field ``"total size"``), nor its
pages the number ``max_bytes`` holds in 4 KiB pages (field ``"page size"``: the new memory's
dirty bitmap costs about a byte per page), and no region may reach past ``2**64 - 1``.

Checksums
---------
Pre-copy rounds read memory that the guest is writing: a page written while it is being
sent can reach the receiver with bytes that differ from its checksum.  Such a write marks
the page dirty again (the bitmaps are taken before the bytes are read), so a later round
sends it again.  The receiver therefore keeps the address of every block whose checksum
failed (and its length), forgets it only when a later block with the same start and at
least that length verifies (a shorter block, even at the same address, would leave the rest
of the corrupted page unchecked), and raises
:class:`~npguest.errors.DumpFormatError` (field ``"block checksum"``) at the end of the
stream if any is left: a corrupted page is always an error, a raced one never is.  The
round digest, record count and byte count catch lost, duplicated or garbled records.

Failures and retries
--------------------
The sender holds each round's ranges, from the moment they are taken from the bitmaps, in a
:class:`npguest.handover.Taken`: anything failing before they are handed over (a progress
callback, planning) marks them all dirty again, and once handed over with
:func:`npguest.handover.hand_over`, a sink failure leaves the pages not handed to it dirty
again, with :class:`~npguest.errors.StreamError` naming the range.  A failed full round 1
re-marks the rest of the whole layout.  Two ways on:

- a new :func:`send` to a fresh receiver (always correct: round 1 copies everything);
- ``send(mem, sink, resume=True)`` into a receiver filling the *same* destination memory
  (``receive(source, mem=dest)``): its round 1 sends only the dirty pages, i.e. exactly
  what is missing.  This is valid when everything the failed sink accepted reached the
  destination (a file or pipe, a short or failing write on the sending side); when a link
  broke with data in flight, use a fresh receiver.

Examples
--------
>>> import socket, threading
>>> from npguest import AtomicBitmap, GuestMemoryMmap
>>> src = GuestMemoryMmap.from_ranges([(0, 0x10000), (0x100000, 0x8000)], bitmap=AtomicBitmap)
>>> src.write(b"migrate me", 0x100010)
10
>>> a, b = socket.socketpair()
>>> got = {}
>>> t = threading.Thread(target=lambda: got.setdefault("mem", receive(b)))
>>> t.start()
>>> stats = send(src, a)
>>> t.join()
>>> got["mem"].read_bytes(0x100010, 10), stats.rounds[0].bytes
(b'migrate me', 98304)
>>> a.close(), b.close()
(None, None)
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .bitmap import _k
from .channel import _payload, pieces, recv_range, write_items
from .errors import BitmapError, DumpFormatError, StreamError
from .handover import Taken, split_ranges
from .progress import ProgressCallback, Tracker
from .stream import read_into

if TYPE_CHECKING:
    from .guest_memory import GuestMemoryMmap

__all__ = ["MAGIC", "VERSION", "MigrationStats", "RoundStats", "receive", "send", "xxh64"]

MAGIC = b"NPGMIG\r\n"
VERSION = 1
XXH64 = 1
#: Payload bytes per DATA record at most: big enough that the per-record Python work is
#: small beside the bytes (1 GiB over loopback: 512 KiB records 0.39x, 4 MiB 0.6x, 16 MiB
#: 0.5x the throughput of a plain ``sendall`` loop; hashing the next record on a thread
#: while one is sent was slower on 2 cores).
RECORD = 1 << 22
#: Largest DATA record a receiver accepts, and most regions in a header.
MAX_RECORD = 1 << 30
MAX_REGIONS = 1 << 16
#: Most blocks (so block checksums: 8 bytes each, 2 MiB in all) in one DATA record.  A
#: record is also cut at ``MAX_BLOCKS`` pages, so a small page size cannot make a receiver
#: allocate ``MAX_RECORD / page`` checksums before any payload arrives.
MAX_BLOCKS = 1 << 18
#: Default largest memory :func:`receive` builds from a header (1 TiB).
MAX_BYTES = 1 << 40
#: A receiver building a new memory tracks at most ``max_bytes / TRACKING_PAGE`` pages.
TRACKING_PAGE = 4096
ROUND, DATA, END_ROUND, END_STREAM = 1, 2, 3, 4
STREAM = "<migration stream>"

_HEAD = struct.Struct("<8sHHIIIQ")
_RECORD = struct.Struct("<IIQQQ")
_U64 = struct.Struct("<Q")


def _blocks(data: np.ndarray, block: int) -> np.ndarray:
    """Return XXH64 of each ``block``-byte block of ``data`` (one digest if it is empty)."""
    data = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1).view(np.ndarray)
    out = np.empty(max(1, -(-data.shape[0] // block)), dtype=np.uint64)
    _k().xxh64_blocks(data, block, out)
    return out


def xxh64(data: Any) -> int:
    """Return the standard XXH64 (seed 0) of a bytes-like object (a numba kernel).

    Parameters
    ----------
    data : bytes-like
        The bytes.

    Returns
    -------
    int
        The 64-bit digest, as ``xxhash.xxh64_intdigest`` gives it.

    Examples
    --------
    >>> hex(xxh64(b"")), hex(xxh64(b"abc"))
    ('0xef46db3751d8e999', '0x44bc2cf5ad770999')
    """
    view = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    return int(_blocks(view, max(1, view.shape[0]))[0])


@dataclass(frozen=True)
class RoundStats:
    """One round of a migration.

    Attributes
    ----------
    round : int
        1 is the full copy; the last one is the stop-and-copy round.
    pages : int
        Dirty pages sent (every page, in a full round).
    bytes : int
        Payload bytes sent.
    records : int
        DATA records sent.
    seconds : float
        Wall time of the round.
    """

    round: int
    pages: int
    bytes: int
    records: int
    seconds: float


@dataclass
class MigrationStats:
    """What :func:`send` did.

    Attributes
    ----------
    rounds : list of RoundStats
        Every round, in order (the last is the stop-and-copy round).
    seconds : float
        Wall time of the whole stream.
    downtime : float
        Seconds from ``pause()`` returning to the end of the stream.
    """

    rounds: list[RoundStats] = field(default_factory=list)
    seconds: float = 0.0
    downtime: float = 0.0

    @property
    def bytes(self) -> int:
        """int: Payload bytes sent in all rounds."""
        return sum(r.bytes for r in self.rounds)

    @property
    def throughput(self) -> float:
        """float: Payload bytes per second over the whole stream (0.0 before any time)."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0


# -- sender -------------------------------------------------------------------------------
def _page_size(mem: GuestMemoryMmap, resume: bool) -> tuple[int, bool]:
    """Return the dirty-tracking page size and whether every region is tracked."""
    sizes = set()
    tracked = 0
    for region in mem.iter():
        bitmap = region.get_mmap().bitmap()
        if hasattr(bitmap, "get_and_reset_ranges"):
            sizes.add(bitmap.page_size())
            tracked += 1
    if tracked and tracked != mem.num_regions():
        raise BitmapError("bitmap", tracked, "some regions are not dirty-tracked")
    if len(sizes) > 1:
        raise BitmapError("page_size", min(sizes), f"regions track pages of {sorted(sizes)}")
    if resume and not tracked:
        raise BitmapError("bitmap", 0, "resume=True needs dirty tracking (AtomicBitmap)")
    page = sizes.pop() if sizes else 4096
    if page & (page - 1):
        raise BitmapError("page_size", page, "must be a power of two")
    return page, bool(tracked)


def _layout(mem: GuestMemoryMmap) -> np.ndarray:
    starts = np.asarray(mem.starts, dtype=np.uint64)
    return np.stack([starts, np.asarray(mem.ends, dtype=np.uint64) - starts], axis=1)


def _header(layout: np.ndarray, page: int) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, XXH64, page, len(layout), 0, int(layout[:, 1].sum()))
    body = head + layout.astype("<u8").tobytes()
    return body + _U64.pack(xxh64(body))


def _at_region_starts(mem: GuestMemoryMmap, ranges: np.ndarray) -> np.ndarray:
    """Cut ranges where a region starts inside them (dirty ranges join adjacent regions)."""
    if not len(ranges):
        return ranges
    starts = ranges[:, 0]
    ends = starts + ranges[:, 1]
    cuts = np.asarray(mem.starts, dtype=np.uint64)
    i = np.maximum(np.searchsorted(starts, cuts, side="right") - 1, 0)
    inside = (cuts > starts[i]) & (cuts < ends[i])
    points = np.sort(np.concatenate([starts, cuts[inside]]))
    j = np.searchsorted(starts, points, side="right") - 1
    nxt = np.append(points[1:], np.uint64(2**64 - 1))
    return np.stack([points, np.minimum(nxt, ends[j]) - points], axis=1)


def _pages(ranges: np.ndarray, page: int) -> int:
    return int(((ranges[:, 1] + np.uint64(page - 1)) // np.uint64(page)).sum())


def _record_size(page: int) -> int:
    """Return the largest record the sender cuts: a multiple of ``page``, <= MAX_BLOCKS pages."""
    return max(page, min(RECORD, MAX_BLOCKS * page))


class _Sender:
    """The sending side of one stream: rounds of records over ``Taken.hand_over``."""

    def __init__(self, mem: GuestMemoryMmap, sink: Any, page: int, tracker: Tracker) -> None:
        self.mem, self.sink, self.page, self.tracker = mem, sink, page, tracker
        self.stats = MigrationStats()

    def round(self, number: int, taken: Taken) -> None:
        """Send one round of ``taken``'s ranges; whatever raises re-marks what is not sent.

        Ranges start on a region's page boundary (dirty ranges and region layouts do), and
        records are cut at multiples of the page size, so every DATA record is page-aligned
        relative to its region.
        """
        t0 = time.perf_counter()
        records = split_ranges(_at_region_starts(self.mem, taken.ranges), _record_size(self.page))
        taken.ranges = records  # the same bytes, cut into the records hand_over moves and names
        total, npages = int(records[:, 1].sum()), _pages(records, self.page)
        pending: list[Any] = [_RECORD.pack(ROUND, number, total, npages, 0)]
        heads = bytearray()
        count = 0

        def send_record(addr: int, length: int) -> None:
            nonlocal count
            (piece,) = pieces(self.mem, addr, length)
            head = _RECORD.pack(DATA, number, addr, length, 0)
            head += _blocks(piece.array(), self.page).astype("<u8").tobytes()
            before = sum(len(p) for p in pending) + len(head)
            try:
                write_items(self.sink, [*pending, head, _payload(piece, self.sink)])
            except StreamError as exc:  # hand_over wants the payload bytes that got through
                raise StreamError(exc.reason, max(0, exc.completed - before)) from exc
            pending.clear()
            heads.extend(head)
            count += 1

        self.tracker.start(total, number, npages)  # (a raising callback: taken re-marks all)
        taken.hand_over(send_record, self.tracker)
        write_items(
            self.sink, [*pending, _RECORD.pack(END_ROUND, number, count, total, xxh64(heads))]
        )
        self.stats.rounds.append(RoundStats(number, npages, total, count, time.perf_counter() - t0))


def send(
    mem: GuestMemoryMmap,
    sink: Any,
    *,
    max_rounds: int = 8,
    min_dirty: int = 64,
    pause: Callable[[], Any] | None = None,
    progress: ProgressCallback | bool | None = None,
    resume: bool = False,
) -> MigrationStats:
    """Migrate ``mem`` to ``sink``: pre-copy rounds, then a stop-and-copy round.

    Round 1 copies every region (with ``resume``: only the dirty pages).  While more than
    ``min_dirty`` pages are dirty and fewer than ``max_rounds`` rounds went, another round
    copies the pages dirtied meanwhile.  Then ``pause()`` is called, and a final round copies
    the pages still dirty.  A memory without dirty tracking is paused first and copied once.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The source.  Every region tracked by an :class:`~npguest.AtomicBitmap` of one page
        size, or none.
    sink : socket, int fd or binary file object
        Where the stream goes.
    max_rounds : int, optional
        Most pre-copy rounds (including the full one), >= 1; the final round comes on top.
    min_dirty : int, optional
        Stop pre-copying once at most this many pages are dirty.
    pause : callable, optional
        Called (no arguments) before the final round, to stop the guest and its writers.
        Without it, pages written during the final round may be left behind (and their
        checksums fail on the receiver).
    progress : callable, bool or None, optional
        See :mod:`npguest.progress` (reported per record and per round).
    resume : bool, optional
        Round 1 sends only the dirty pages: continue a failed stream into the same
        destination (see the module's docstring).

    Returns
    -------
    MigrationStats
        Rounds, bytes, times.

    Raises
    ------
    StreamError
        The sink failed.  The pages not handed over are dirty again; the error names the
        guest range of the record that failed.
    BitmapError
        Some regions are tracked and others not, page sizes differ, or ``resume`` without
        tracking.
    ValueError
        ``max_rounds < 1`` or ``min_dirty < 0``.
    """
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, not {max_rounds}")
    if min_dirty < 0:
        raise ValueError(f"min_dirty must be >= 0, not {min_dirty}")
    page, tracked = _page_size(mem, resume)
    layout = _layout(mem)
    tracker = Tracker(progress, "migrate")
    sender = _Sender(mem, sink, page, tracker)
    t0 = time.perf_counter()
    try:
        if not tracked and pause is not None:
            pause()  # untracked: one round, with the guest paused throughout
        paused = time.perf_counter()
        # Every round's ranges are taken from the bitmaps before any byte is read, and held
        # by a Taken until hand_over takes charge: whatever fails in between (the header, a
        # progress callback, planning) marks them dirty again, so no page is lost.  A full
        # round 1 holds the whole layout from before the header: if the stream fails
        # anywhere in it, every page not handed over is dirty, and ``resume=True`` sends
        # exactly what the destination misses.
        ranges = mem.get_and_reset_dirty() if tracked else layout
        with Taken(mem, ranges if resume else layout) as taken:
            write_items(sink, [_header(layout, page)])
            sender.round(1, taken)
        if tracked:
            number = 1
            while number < max_rounds and _pages(mem.dirty_ranges(), page) > min_dirty:
                number += 1
                with Taken(mem, mem.get_and_reset_dirty()) as taken:
                    sender.round(number, taken)
            if pause is not None:
                pause()
            paused = time.perf_counter()
            with Taken(mem, mem.get_and_reset_dirty()) as taken:
                sender.round(number + 1, taken)
        stats = sender.stats
        write_items(sink, [_RECORD.pack(END_STREAM, 0, len(stats.rounds), stats.bytes, 0)])
    finally:
        tracker.close()
    end = time.perf_counter()
    stats.seconds, stats.downtime = end - t0, end - paused
    return stats


# -- receiver -----------------------------------------------------------------------------
class _Reader:
    """Reads the stream's small parts, counting its offset for error messages."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.offset = 0

    def exact(self, n: int, what: str) -> bytes:
        """Read exactly ``n`` bytes of the stream."""
        buf = bytearray(n)
        self.into(memoryview(buf), what)
        return bytes(buf)

    def into(self, view: memoryview, what: str) -> None:
        """Fill ``view`` (a preallocated buffer) from the stream."""
        n, got = len(view), 0
        while got < n:
            k = read_into(self.source, view[got:], self.offset + got)
            if not k:
                raise StreamError(
                    f"the stream ended in the {what} ({got} of {n} bytes)", self.offset + got
                )
            got += k
        self.offset += n


def _bad(offset: int, what: str, reason: str) -> DumpFormatError:
    return DumpFormatError(STREAM, offset, what, reason)


def _read_header(reader: _Reader) -> tuple[int, np.ndarray]:
    """Read and check the header; return the page size and the ``(gpa, size)`` layout."""
    head = reader.exact(_HEAD.size, "header")
    magic, version, algo, page, n, _, total = _HEAD.unpack(head)
    if magic != MAGIC:
        raise _bad(0, "magic", f"{magic!r} is not {MAGIC!r}: not an npguest migration stream")
    if version != VERSION:
        raise _bad(8, "version", f"version {version} is not supported (only {VERSION})")
    if algo != XXH64:
        raise _bad(10, "checksum algorithm", f"unknown algorithm {algo} (1 is XXH64)")
    if page < 8 or page & (page - 1) or page > MAX_RECORD:
        raise _bad(12, "page size", f"{page} is not a power of two in [8, {MAX_RECORD}]")
    if not 1 <= n <= MAX_REGIONS:
        raise _bad(16, "region count", f"{n} is not in [1, {MAX_REGIONS}]")
    table = reader.exact(16 * n, "region table")
    digest = _U64.unpack(reader.exact(8, "header digest"))[0]
    if digest != xxh64(head + table):
        raise _bad(32 + 16 * n, "header digest", "the header is corrupted")
    layout = np.frombuffer(table, dtype="<u8").reshape(n, 2).astype(np.uint64)
    sizes = [int(s) for s in layout[:, 1]]
    ends = [int(a) + s for a, s in layout.tolist()]
    for i, (addr, size) in enumerate(layout.tolist()):
        if size == 0 or ends[i] > 2**64 - 1 or (i and addr < ends[i - 1]):
            raise _bad(32 + 16 * i, f"region {i}", f"({addr:#x}, {size}) is empty, "
                       "overflows or overlaps the previous region")  # fmt: skip
    if sum(sizes) != total:
        raise _bad(24, "total size", f"{total} is not the regions' {sum(sizes)} bytes")
    return page, layout


class _Receiver:
    """The receiving side: checks each record against the layout, rounds and checksums."""

    def __init__(
        self, source: Any, mem: GuestMemoryMmap, page: int, tracker: Tracker, fresh: int | None
    ) -> None:
        self.source, self.mem, self.page, self.tracker = source, mem, page, tracker
        self.fresh = fresh  # a new memory: the header's total bytes, which round 1 must cover
        self.cursor = 0  # end of the previous record of round 1 (fresh: ascending, disjoint)
        self.unverified: dict[int, int] = {}  # failed block address -> its length
        self.sums = np.empty(0, dtype="<u8")  # block checksums, reused by every record

    def data(self, reader: _Reader, at: int, number: int, addr: int, length: int) -> memoryview:
        nblocks = -(-length // self.page)
        if nblocks > MAX_BLOCKS:  # before anything is allocated for its checksums
            raise _bad(at, "record length", f"DATA {addr:#x}+{length} of round {number}: "
                       f"{nblocks} blocks of {self.page} bytes, over {MAX_BLOCKS}")  # fmt: skip
        try:
            if not 0 < length <= MAX_RECORD:
                raise ValueError(f"length {length} is not in [1, {MAX_RECORD}]")
            (piece,) = pieces(self.mem, addr, length)
        except (ValueError, IndexError, OverflowError) as exc:  # npguest's range errors too
            raise _bad(at, "record range", f"DATA {addr:#x}+{length} of round {number}: "
                       f"not inside one destination region ({exc})") from exc  # fmt: skip
        if piece.offset % self.page:
            raise _bad(at, "record address", f"DATA {addr:#x}+{length} of round {number}: "
                       f"{piece.offset:#x} bytes into its region, not on a page of "
                       f"{self.page} bytes")  # fmt: skip
        if self.fresh is not None and number == 1:
            if addr < self.cursor:
                raise _bad(at, "record order", f"DATA {addr:#x}+{length} of round 1 overlaps "
                           f"or precedes the previous record (to {self.cursor:#x})")  # fmt: skip
            self.cursor = addr + length
        if len(self.sums) < nblocks:
            self.sums = np.empty(max(nblocks, 2 * len(self.sums)), dtype="<u8")
        sums = self.sums[:nblocks]
        reader.into(memoryview(sums).cast("B"), f"block checksums of {addr:#x}+{length}")
        recv_range(self.mem, addr, length, self.source)  # checked above: inside one region
        reader.offset += length
        good = sums == _blocks(piece.array(), self.page)
        if self.unverified or not good.all():
            self._account(addr, length, nblocks, good)
        self.tracker.advance(length)
        return memoryview(sums).cast("B")

    def _account(self, addr: int, length: int, nblocks: int, good: np.ndarray) -> None:
        """Record the record's failed blocks; forget failures its good blocks cover whole."""
        offsets = self.page * np.arange(nblocks, dtype=np.int64)
        lengths = np.minimum(length - offsets, self.page).tolist()
        blocks = (addr + offsets.astype(np.uint64)).tolist()
        if self.unverified:  # a good block clears a failed one only if it covers it whole
            for i in np.flatnonzero(good).tolist():
                if lengths[i] >= self.unverified.get(blocks[i], lengths[i] + 1):
                    del self.unverified[blocks[i]]
        for i in np.flatnonzero(~good).tolist():
            self.unverified[blocks[i]] = max(lengths[i], self.unverified.get(blocks[i], 0))

    def run(self, reader: _Reader) -> None:
        rounds = payload = 0
        while True:
            at = reader.offset
            kind, number, a, b, c = _RECORD.unpack(reader.exact(_RECORD.size, "record head"))
            if kind == END_STREAM:
                if self.fresh is not None and not rounds:
                    raise _bad(at, "round count", "the stream has no round: a new destination "
                               "needs round 1 to copy every region")  # fmt: skip
                if (a, b) != (rounds, payload):
                    raise _bad(at, "end record", f"{a} rounds of {b} bytes announced, "
                               f"{rounds} rounds of {payload} bytes received")  # fmt: skip
                if self.unverified:
                    first = min(self.unverified)
                    raise _bad(at, "block checksum", f"{len(self.unverified)} blocks of "
                               f"{self.page} bytes failed their checksum and were not resent, "
                               f"the first at guest address {first:#x}")  # fmt: skip
                return
            if kind != ROUND or number != rounds + 1:
                raise _bad(at, "record kind", f"kind {kind} of round {number} where round "
                           f"{rounds + 1} should start (kind {ROUND})")  # fmt: skip
            rounds, total = number, a
            if self.fresh is not None and number == 1 and total != self.fresh:
                raise _bad(at, "round total", f"round 1 sends {total} bytes, not the header's "
                           f"{self.fresh}: a new destination needs every region (a resumed "
                           "stream goes to the destination of the failed one)")  # fmt: skip
            self.tracker.start(total, number, b)
            heads = bytearray()
            count = got = 0
            while True:
                at = reader.offset
                head = reader.exact(_RECORD.size, "record head")
                kind, rnd, a, b, c = _RECORD.unpack(head)
                if rnd != number or kind not in (DATA, END_ROUND):
                    raise _bad(at, "record kind", f"kind {kind} of round {rnd} inside round "
                               f"{number} (expected DATA or END_ROUND)")  # fmt: skip
                if kind == END_ROUND:
                    break
                heads += head
                heads += self.data(reader, at, number, a, b)
                count, got = count + 1, got + b
            if (a, b, got) != (count, total, total):
                raise _bad(at, "record count", f"round {number} announced {a} records of {b} "
                           f"bytes ({total} at its start), {count} of {got} arrived")  # fmt: skip
            if c != xxh64(heads):
                raise _bad(at, "round digest", f"round {number}: the records' digest "
                           f"{xxh64(heads):#x} is not {c:#x}")  # fmt: skip
            payload += got


def receive(
    source: Any,
    mem: GuestMemoryMmap | None = None,
    *,
    progress: ProgressCallback | bool | None = None,
    max_bytes: int = MAX_BYTES,
) -> GuestMemoryMmap:
    """Receive a stream of :func:`send` into a guest memory.

    Parameters
    ----------
    source : socket, int fd or binary file object
        The stream.
    mem : GuestMemoryMmap, optional
        The destination, whose regions must be those of the stream's header.  Default: a
        new anonymous memory of the header's layout, dirty-tracked at its page size.
    progress : callable, bool or None, optional
        See :mod:`npguest.progress` (reported per record and per round).
    max_bytes : int, optional
        Without ``mem``: the largest total of the header's regions to allocate (default
        :data:`MAX_BYTES`, 1 TiB); a larger header raises :class:`DumpFormatError` (field
        ``"total size"``) before anything is mapped, as does one whose pages outnumber
        those of ``max_bytes`` in 4 KiB pages (field ``"page size"``).

    Returns
    -------
    GuestMemoryMmap
        The destination (``mem`` when given), its written pages marked dirty.

    Raises
    ------
    DumpFormatError
        The stream is malformed (bad magic, version, page size, region table, record or
        round; a DATA record not page-aligned in its region or of more than
        :data:`MAX_BLOCKS` blocks), a checksum failed, the layout differs from ``mem``'s,
        or (without ``mem``) the header exceeds ``max_bytes`` or the stream does not copy
        every region in round 1; ``field`` names what is wrong and ``offset`` where in the
        stream.
    StreamError
        The source failed or ended early (inside a record: the error names its range).
    """
    fresh = mem is None
    reader = _Reader(source)
    page, layout = _read_header(reader)
    total = int(layout[:, 1].sum())
    if mem is None and total > max_bytes:
        raise _bad(24, "total size", f"the stream's regions hold {total} bytes, more than "
                   f"max_bytes={max_bytes}")  # fmt: skip
    if mem is None and -(-total // page) > max_bytes // TRACKING_PAGE:
        # the new memory's dirty bitmap: about a byte per page, whatever the page size
        raise _bad(12, "page size", f"{total} bytes in pages of {page} bytes need more dirty "
                   f"bits than max_bytes={max_bytes} in {TRACKING_PAGE}-byte pages")  # fmt: skip
    if mem is None:
        from .bitmap import AtomicBitmap
        from .guest_memory import GuestMemoryMmap

        mem = GuestMemoryMmap.from_ranges(
            [tuple(r) for r in layout.tolist()], bitmap=AtomicBitmap, page_size=page
        )
    elif not np.array_equal(_layout(mem), layout):
        raise _bad(32, "region table", f"the stream's regions {_show(layout)} are not the "
                   f"destination's {_show(_layout(mem))}")  # fmt: skip
    tracker = Tracker(progress, "receive")
    try:
        _Receiver(source, mem, page, tracker, total if fresh else None).run(reader)
    finally:
        tracker.close()
    return mem


def _show(layout: np.ndarray) -> str:
    return "[" + ", ".join(f"{a:#x}+{n}" for a, n in layout.tolist()) + "]"
