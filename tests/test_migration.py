"""migration: the wire protocol, pre-copy under writers, faults, checksums, bad streams."""

from __future__ import annotations

import io
import os
import socket
import struct
import threading

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from test_channel import ShortWriter, tcp_pair

from npguest import AtomicBitmap, GuestMemoryMmap
from npguest import migration as mig
from npguest.errors import BitmapError, DumpFormatError, StreamError

pytestmark = pytest.mark.timeout(60)

PAGE = 4096
LAYOUT = [(0, 32 * PAGE), (32 * PAGE, 8 * PAGE + 100), (128 * PAGE, 16 * PAGE)]
PAGES = [p for a, n in LAYOUT for p in range(a // PAGE, -(-(a + n) // PAGE))]


def source(seed=0, bitmap=AtomicBitmap):
    mem = GuestMemoryMmap.from_ranges(LAYOUT, bitmap=bitmap)
    rng = np.random.default_rng(seed)
    for start, size in LAYOUT:
        mem.write_slice(rng.integers(0, 256, size, dtype=np.uint8), start)
    return mem


def image(mem):
    return [mem.read_bytes(int(r.start_addr()), r.len()) for r in mem.iter()]


def stream_of(mem, **kw):
    sink = io.BytesIO()
    stats = mig.send(mem, sink, **kw)
    return sink.getvalue(), stats


def threaded_receive(end, **kw):
    got = {}

    def run():
        try:
            got["mem"] = mig.receive(end, **kw)
        except Exception as exc:  # handed to the test thread
            got["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    return t, got


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([8, 16, 64, 4096]))
def test_xxh64_is_the_standard_one(data, block):
    assert mig.xxh64(data) == xxhash.xxh64_intdigest(data)
    sums = mig._blocks(np.frombuffer(data, dtype=np.uint8), block)
    chunks = [data[i : i + block] for i in range(0, len(data), block)] or [b""]
    assert sums.tolist() == [xxhash.xxh64_intdigest(c) for c in chunks]


@pytest.mark.parametrize("kind", ["tcp", "pipe", "bytesio"])
def test_round_trip(kind):
    src = source(1)
    if kind == "bytesio":
        data, stats = stream_of(src)
        dst = mig.receive(io.BytesIO(data))
    else:
        a, b = tcp_pair() if kind == "tcp" else os.pipe()[::-1]
        t, got = threaded_receive(b)
        stats = mig.send(src, a)
        t.join(10)
        for end in (a, b):
            end.close() if kind == "tcp" else os.close(end)
        dst = got["mem"]
    assert [(int(r.start_addr()), r.len()) for r in dst.iter()] == LAYOUT
    assert image(dst) == image(src)
    assert stats.rounds[0].bytes == sum(n for _, n in LAYOUT) == stats.bytes
    assert stats.rounds[0].pages == len(PAGES)
    assert len(stats.rounds) == 2 and stats.rounds[1].bytes == 0  # nothing dirty after
    assert stats.throughput > 0 and 0 <= stats.downtime <= stats.seconds


def test_writer_thread_during_pre_copy_ends_identical():
    src = GuestMemoryMmap.from_ranges([(0, 4 << 20), (4 << 20, 4 << 20)], bitmap=AtomicBitmap)
    stop = threading.Event()
    written = [0]

    def writer():
        rng = np.random.default_rng(5)
        while not stop.is_set():
            for addr in rng.integers(0, (8 << 20) - 64, 64).tolist():
                src.write(rng.bytes(64), addr)
            written[0] += 64

    seen = []
    t = threading.Thread(target=writer)
    t.start()
    a, b = tcp_pair()
    rt, got = threaded_receive(b)
    try:
        stats = mig.send(
            src, a, max_rounds=6, min_dirty=0, pause=lambda: (stop.set(), t.join()),
            progress=seen.append,
        )  # fmt: skip
    finally:
        stop.set()
        t.join()
    rt.join(20)
    a.close()
    b.close()
    assert "error" not in got, got.get("error")
    assert written[0] > 0 and len(stats.rounds) >= 3
    assert image(got["mem"]) == image(src)
    assert [p.round for p in seen if p.done == 0][: len(stats.rounds)] == list(
        range(1, len(stats.rounds) + 1)
    )


def test_untracked_memory_pauses_then_copies_once():
    src = source(2, bitmap=None)
    calls = []
    data, stats = stream_of(src, pause=lambda: calls.append(1))
    assert calls == [1] and len(stats.rounds) == 1
    assert image(mig.receive(io.BytesIO(data))) == image(src)


@settings(max_examples=25, deadline=None)
@given(
    dirty=st.sets(st.sampled_from(PAGES), min_size=1),
    budget=st.integers(0, 60 * PAGE),
    step=st.sampled_from([PAGE - 1, 5000, 1 << 20]),
)
def test_failed_stream_leaves_the_rest_dirty_and_resume_completes(dirty, budget, step):
    src = source(3)
    data, _ = stream_of(src)
    dst = mig.receive(io.BytesIO(data))
    rng = np.random.default_rng(len(dirty))
    for p in sorted(dirty):
        src.write(rng.bytes(16), p * PAGE)
    sink = ShortWriter(step=step, budget=budget)
    try:
        mig.send(src, sink, resume=True)
        failed = None
    except StreamError as exc:
        failed = exc
    if failed is not None:
        # the failed range is named and is dirty again, from its first byte not handed over
        left = {int(a) // PAGE for a in src.dirty_pages()}
        assert left <= dirty
        if failed.addr is not None:  # (None: the header or an end record failed)
            assert (failed.addr + failed.length - 1) // PAGE in left  # never all through
        with pytest.raises(StreamError):  # the destination saw a truncated stream
            mig.receive(io.BytesIO(bytes(sink.data)), mem=dst)
        data, stats = stream_of(src, resume=True)  # exactly what is missing
        assert stats.rounds[0].pages == len(left)
    else:
        data = bytes(sink.data)
    mig.receive(io.BytesIO(data), mem=dst)
    assert image(dst) == image(src)


def test_socket_closed_at_a_random_point_then_fresh_retry():
    src = GuestMemoryMmap.from_ranges([(0, 8 << 20), (8 << 20, 8 << 20)], bitmap=AtomicBitmap)
    src.write_slice(np.random.default_rng(6).integers(0, 256, 16 << 20, dtype=np.uint8), 0)
    cut = int(np.random.default_rng().integers(1, 12 << 20))
    a, b = tcp_pair()

    def reader():
        left = cut
        while left > 0:
            left -= len(b.recv(min(1 << 16, left)))
        b.close()

    t = threading.Thread(target=reader)
    t.start()
    with pytest.raises(StreamError) as info:
        mig.send(src, a)
    t.join(10)
    a.close()
    err = info.value
    assert err.addr is not None and src.check_range(err.addr, err.length)
    # the failed record and everything after it in the round are dirty again
    assert src.dirty_ranges()[0, 0] <= err.addr + err.length
    a, b = tcp_pair()
    rt, got = threaded_receive(b)
    mig.send(src, a)
    rt.join(20)
    a.close()
    b.close()
    assert image(got["mem"]) == image(src)


def flip(data, offset):
    out = bytearray(data)
    out[offset] ^= 0x40
    return bytes(out)


def records(data):
    """Yield ``(offset, kind, fields)`` of every record of a stream."""
    n = struct.unpack_from("<I", data, 16)[0]
    at = 32 + 16 * n + 8
    while at < len(data):
        kind, rnd, a, b, c = struct.unpack_from("<IIQQQ", data, at)
        yield at, kind, (rnd, a, b, c)
        at += 32 + (8 * -(-b // PAGE) + b if kind == mig.DATA else 0)


def test_corruption_is_always_an_error():
    src = source(4)
    data, _ = stream_of(src)
    recs = list(records(data))
    at, _, (_, _, length, _) = next(r for r in recs if r[1] == mig.DATA)
    payload = at + 32 + 8 * -(-length // PAGE)
    cases = {
        payload + 5000: "block checksum",  # a payload byte
        at + 33: "round digest",  # a block checksum: the round's digest covers them
        next(r[0] for r in recs if r[1] == mig.END_ROUND) + 24: "round digest",
        next(r[0] for r in recs if r[1] == mig.END_ROUND) + 8: "record count",
        next(r[0] for r in recs if r[1] == mig.END_STREAM) + 8: "end record",
        recs[0][0]: "record kind",
        at + 4: "record kind",  # the DATA record's round
    }
    for offset, field in cases.items():
        with pytest.raises(DumpFormatError) as info:
            mig.receive(io.BytesIO(flip(data, offset)))
        assert info.value.field == field, (offset, info.value)
    with pytest.raises(DumpFormatError, match="record range") as info:
        mig.receive(io.BytesIO(flip(data, at + 15)))  # a gpa far outside the layout
    assert info.value.offset == at


def header(page=PAGE, layout=((0, PAGE),), version=1, algo=1, magic=mig.MAGIC, total=None):
    body = struct.pack("<8sHHIIIQ", magic, version, algo, page, len(layout), 0,
                       sum(n for _, n in layout) if total is None else total)  # fmt: skip
    body += b"".join(struct.pack("<QQ", a, n) for a, n in layout)
    return body + struct.pack("<Q", mig.xxh64(body))


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (header(magic=b"NOTMIGR!"), "magic"),
        (header(version=2), "version"),
        (header(algo=7), "checksum algorithm"),
        (header(page=1000), "page size"),
        (header(layout=()), "region count"),
        (header(layout=((0, PAGE), (100, PAGE))), "region 1"),
        (header(layout=((0, 0),)), "region 0"),
        (header(layout=((2**64 - PAGE, 2 * PAGE),)), "region 0"),
        (header(total=5), "total size"),
        (flip(header(), 36), "header digest"),
    ],
)
def test_bad_headers(data, field):
    with pytest.raises(DumpFormatError) as info:
        mig.receive(io.BytesIO(data + bytes(64)))
    assert info.value.field == field and "<migration stream>" in str(info.value)


def test_truncated_streams_and_layout_mismatch():
    src = source(5)
    data, _ = stream_of(src)
    recs = list(records(data))
    data_at = next(r[0] for r in recs if r[1] == mig.DATA)
    for cut in (
        0,
        20,
        40,
        recs[0][0] + 10,
        data_at + 40,
        data_at + 32 + 8 * 8 + 100,
        len(data) - 1,
    ):
        with pytest.raises(StreamError) as info:
            mig.receive(io.BytesIO(data[:cut]))
        assert "ended" in str(info.value)
    with pytest.raises(StreamError) as info:  # inside a payload: the record's range is named
        mig.receive(io.BytesIO(data[: data_at + 32 + 8 * 32 + 100]))
    assert info.value.addr == 0 and info.value.length == 32 * PAGE
    other = GuestMemoryMmap.from_ranges([(0, 32 * PAGE)])
    with pytest.raises(DumpFormatError, match="region table") as info:
        mig.receive(io.BytesIO(data), mem=other)
    assert "0x80000+65536" in str(info.value)


def test_bad_arguments():
    src = source(6)
    for kw, exc in [({"max_rounds": 0}, ValueError), ({"min_dirty": -1}, ValueError)]:
        with pytest.raises(exc):
            mig.send(src, io.BytesIO(), **kw)
    with pytest.raises(BitmapError, match="resume"):
        mig.send(source(bitmap=None), io.BytesIO(), resume=True)
    first = next(source().iter())
    mixed = GuestMemoryMmap.from_regions(
        [first, *GuestMemoryMmap.from_ranges([(1 << 20, PAGE)]).iter()]
    )
    with pytest.raises(BitmapError, match="not dirty-tracked"):
        mig.send(mixed, io.BytesIO())
    other = GuestMemoryMmap.from_ranges([(1 << 20, PAGE)], bitmap=AtomicBitmap, page_size=8192)
    sizes = GuestMemoryMmap.from_regions([first, *other.iter()])
    with pytest.raises(BitmapError, match="page"):
        mig.send(sizes, io.BytesIO())


def test_socket_timeout_on_a_silent_sender():
    a, b = socket.socketpair()
    b.settimeout(0.2)
    with pytest.raises(StreamError, match="timed out"):
        mig.receive(b)
    a.close()
    b.close()


# -- regressions ----------------------------------------------------------------------------
def handmade(layout, rounds, page=PAGE):
    """A stream of ``rounds``: lists of ``(gpa, payload, sums or None)`` DATA records."""
    out = mig._header(np.array(layout, dtype=np.uint64).reshape(-1, 2), page)
    payload = 0
    for number, recs in enumerate(rounds, 1):
        total = sum(len(p) for _, p, _ in recs)
        out += mig._RECORD.pack(mig.ROUND, number, total, 0, 0)
        heads = b""
        for addr, data, sums in recs:
            if sums is None:
                sums = mig._blocks(np.frombuffer(data, dtype=np.uint8), page)
            head = mig._RECORD.pack(mig.DATA, number, addr, len(data), 0)
            head += np.asarray(sums, dtype="<u8").tobytes()
            heads += head
            out += head + data
        out += mig._RECORD.pack(mig.END_ROUND, number, len(recs), total, mig.xxh64(heads))
        payload += total
    return out + mig._RECORD.pack(mig.END_STREAM, 0, len(rounds), payload, 0)


@pytest.mark.parametrize(
    ("failing", "max_rounds", "left"),
    [(1, 1, set(PAGES)), (2, 1, {3, 5}), (2, 2, {5}), (3, 2, {3})],  # pages: see below
)
def test_a_progress_callback_failing_at_a_round_start_loses_no_page(failing, max_rounds, left):
    src = source(7)
    src.get_and_reset_dirty()

    def progress(p):
        if p.round == 1 and p.done == PAGE * 32:  # during round 1: pre-copy round 2 sends it
            src.write(b"early", 5 * PAGE)
        if p.round == failing and p.done == 0:
            raise RuntimeError("the progress bar died")

    def pause():  # the final round sends it
        src.write(b"late", 3 * PAGE)

    with pytest.raises(RuntimeError, match="progress bar died"):
        mig.send(src, io.BytesIO(), max_rounds=max_rounds, min_dirty=0, pause=pause,
                 progress=progress)  # fmt: skip
    assert {int(a) // PAGE for a in src.dirty_pages()} == left


def test_a_failure_between_taking_and_handing_over_re_marks_the_pages(monkeypatch):
    src = source(8)
    src.get_and_reset_dirty()
    src.write(b"x", 0x7000)

    def boom(*args, **kw):
        raise MemoryError("planning failed")

    monkeypatch.setattr(mig, "_at_region_starts", boom)
    with pytest.raises(MemoryError):
        mig.send(src, io.BytesIO(), resume=True)
    assert [int(a) for a in src.dirty_pages()] == [0x7000]


def test_a_partial_block_does_not_clear_a_failed_checksum():
    layout = [(0, 4 * PAGE)]
    good = b"G" * PAGE
    corrupt = [(PAGE, b"X" * PAGE, [mig.xxh64(good)])]  # payload differs from its checksum
    for later, ok in [
        ([(PAGE, b"G", None)], False),  # 1 byte at the block: the rest stays corrupted
        ([(PAGE, b"G" * (PAGE - 1), None)], False),
        ([(PAGE, good, None)], True),  # the whole block verifies
        ([(0, b"Z" * 2 * PAGE, None)], True),  # a record covering it
    ]:
        dst = GuestMemoryMmap.from_ranges(layout)
        data = handmade(layout, [corrupt, later])
        if ok:
            mig.receive(io.BytesIO(data), mem=dst)
        else:
            with pytest.raises(DumpFormatError) as info:
                mig.receive(io.BytesIO(data), mem=dst)
            assert info.value.field == "block checksum"


def test_misaligned_records_are_rejected():
    layout = [(0, 4 * PAGE), (0x10100, 4 * PAGE)]  # the second region starts mid-page
    for addr, ok in [(1, False), (PAGE + 8, False), (0x10100, True), (0x10100 + PAGE, True)]:
        dst = GuestMemoryMmap.from_ranges(layout)
        data = handmade(layout, [[(addr, b"y" * 10, None)]])
        if ok:
            mig.receive(io.BytesIO(data), mem=dst)
            assert dst.read_bytes(addr, 10) == b"y" * 10
        else:
            with pytest.raises(DumpFormatError) as info:
                mig.receive(io.BytesIO(data), mem=dst)
            assert info.value.field == "record address"


@pytest.mark.parametrize("page", [8, 64, 1 << 23])
def test_sender_records_are_aligned_and_bounded(page):
    layout = [(0, 3 * (1 << 23) + 100), (1 << 26, 1 << 23)]  # not a page multiple, adjacent
    src = GuestMemoryMmap.from_ranges(layout, bitmap=AtomicBitmap, page_size=page)
    src.write(b"tail", layout[0][1] - 4)
    src.write(b"head", 1 << 26)
    sink = io.BytesIO()
    mig.send(src, sink)
    data = sink.getvalue()
    at = 32 + 16 * len(layout) + 8
    seen = 0
    while at < len(data):
        kind, _, a, b, _ = struct.unpack_from("<IIQQQ", data, at)
        at += 32
        if kind == mig.DATA:
            start = max(s for s, _ in layout if s <= a)
            assert (a - start) % page == 0 and -(-b // page) <= mig.MAX_BLOCKS, (a, b)
            at += 8 * -(-b // page) + b
            seen += b
    assert seen == sum(n for _, n in layout)
    dst = mig.receive(io.BytesIO(data))
    assert dst.read_bytes(layout[0][1] - 4, 4) == b"tail"
    assert dst.read_bytes(1 << 26, 4) == b"head"


def test_a_fresh_receiver_needs_a_full_round_1():
    src = source(9)
    src.get_and_reset_dirty()
    src.write(b"B", 0x5000)
    data, _ = stream_of(src, resume=True)
    with pytest.raises(DumpFormatError) as info:
        mig.receive(io.BytesIO(data))
    assert info.value.field == "round total"
    dst = GuestMemoryMmap.from_ranges(LAYOUT)  # the same stream into a destination is fine
    assert mig.receive(io.BytesIO(data), mem=dst).read_bytes(0x5000, 1) == b"B"
    empty = mig._header(mig._layout(src), PAGE) + mig._RECORD.pack(mig.END_STREAM, 0, 0, 0, 0)
    with pytest.raises(DumpFormatError) as info:
        mig.receive(io.BytesIO(empty))
    assert info.value.field == "round count"
    layout = [(0, 2 * PAGE)]
    twice = handmade(layout, [[(0, b"a" * PAGE, None), (0, b"b" * PAGE, None)]])
    with pytest.raises(DumpFormatError) as info:  # the right total, but a page sent twice
        mig.receive(io.BytesIO(twice))
    assert info.value.field == "record order"
    whole = handmade(layout, [[(0, b"a" * PAGE, None), (PAGE, b"b" * PAGE, None)]])
    assert mig.receive(io.BytesIO(whole)).read_bytes(PAGE - 1, 2) == b"ab"


def test_no_memory_bomb_from_a_header():
    import tracemalloc

    head = mig._header(np.array([(0, 1 << 16)], dtype=np.uint64), 8)
    data = head + mig._RECORD.pack(mig.ROUND, 1, 1 << 16, 0, 0)
    data += mig._RECORD.pack(mig.DATA, 1, 0, mig.MAX_RECORD, 0) + bytes(64)
    tracemalloc.start()
    try:
        with pytest.raises(DumpFormatError) as info:
            mig.receive(io.BytesIO(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.field == "record length" and peak < 16 << 20
    huge = mig._header(np.array([(0, 1 << 46)], dtype=np.uint64), PAGE)
    for kw in ({}, {"max_bytes": PAGE}):
        with pytest.raises(DumpFormatError) as info:
            mig.receive(io.BytesIO(huge if not kw else header(layout=((0, 2 * PAGE),))), **kw)
        assert info.value.field == "total size"
    # 64 GiB is under max_bytes, but in 8-byte pages its dirty bitmap would take ~8 GiB
    tiny_pages = mig._header(np.array([(0, 1 << 36)], dtype=np.uint64), 8)
    with pytest.raises(DumpFormatError) as info:
        mig.receive(io.BytesIO(tiny_pages))
    assert info.value.field == "page size" and "dirty bits" in str(info.value)


def test_a_region_ending_at_2_64_is_a_format_error():
    with pytest.raises(DumpFormatError) as info:
        mig.receive(io.BytesIO(header(layout=((2**64 - PAGE, PAGE),)) + bytes(64)))
    assert info.value.field == "region 0"


@pytest.mark.parametrize("budget", [0, 20])
def test_a_stream_failing_in_its_header_leaves_the_whole_layout_for_resume(budget):
    """Round 1 holds the layout from before the header: a resume then sends every page."""
    src = source(1)
    src.get_and_reset_dirty()  # as right after a base snapshot elsewhere
    src.write(b"B", 0x5000)
    with pytest.raises(StreamError):
        mig.send(src, ShortWriter(budget=budget))
    assert src.dirty_pages().size == sum(-(-n // PAGE) for _, n in LAYOUT)  # every page
    dst = GuestMemoryMmap.from_ranges(LAYOUT, bitmap=AtomicBitmap)
    data, _ = stream_of(src, resume=True)
    mig.receive(io.BytesIO(data), mem=dst)
    assert image(dst) == image(src)
