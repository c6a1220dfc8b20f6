"""Streams into and out of guest memory: real files, raw fds, pipes, sockets.

Transfers span adjacent regions (several contiguous pieces), run against a concurrent
peer thread through kernel buffers smaller than the transfer (so the kernel hands over
the bytes a piece at a time), and are checked against a ``bytearray`` model.  A recording
stream checks that every buffer handed to a stream is a view of the mapping itself.
"""

from __future__ import annotations

import io
import os
import socket
import threading

import numpy as np
import pytest
from _support import ByteBitmap, readonly_file_memory

from npguest import GuestMemoryMmap
from npguest.errors import (
    InvalidGuestAddressError,
    PartialBufferError,
    ReadOnlyMemoryError,
    StreamError,
)

# three adjacent regions (one of an odd size), then a hole, then a fourth region
LAYOUT = [(0x0, 0x10000), (0x10000, 0x10000), (0x20000, 0x3001), (0x30000, 0x1000)]
SPAN = 0x23001  # bytes backed contiguously from 0
DATA = np.random.default_rng(7).integers(0, 256, SPAN, dtype=np.uint8).tobytes()


@pytest.fixture
def mem():
    return GuestMemoryMmap.from_ranges(LAYOUT, bitmap=ByteBitmap)


def dirty_span(mem) -> tuple[int, int] | None:
    """(first, last + 1) guest address of the dirty bytes, or None."""
    addrs = []
    for r in mem.iter():
        idx = np.flatnonzero(r.get_mmap()._bitmap.bits)
        if idx.size:
            addrs += [int(r.start_addr()) + int(idx[0]), int(r.start_addr()) + int(idx[-1]) + 1]
    return (min(addrs), max(addrs)) if addrs else None


def run_peer(target, *args):
    """Start ``target(*args)`` in a thread; return a join function that re-raises its error."""
    result: dict[str, object] = {}

    def body():
        try:
            result["value"] = target(*args)
        except BaseException as exc:
            result["error"] = exc

    t = threading.Thread(target=body)
    t.start()

    def join():
        t.join(timeout=60)
        assert not t.is_alive(), "peer thread hung"
        if "error" in result:
            raise result["error"]
        return result.get("value")

    return join


def send_in_chunks(write, data, sizes=(1, 7, 4096, 65536, 333)):
    """Write ``data`` with ``write`` in chunks of cycling sizes."""
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        write(data[pos : pos + n])
        pos, i = pos + n, i + 1


def drain(read, n):
    out = bytearray()
    while len(out) < n:
        chunk = read(min(65536, n - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


# -- pipes and raw fds ----------------------------------------------------------------------


def test_pipe_exact_read_across_regions_with_trickling_writer(mem):
    r, w = os.pipe()
    try:
        join = run_peer(send_in_chunks, lambda b: os.write(w, b), DATA[5:])
        mem.read_exact_volatile_from(5, r, SPAN - 5)  # the pipe holds 64 KiB at most
        join()
    finally:
        os.close(r)
        os.close(w)
    assert mem.read_bytes(5, SPAN - 5) == DATA[5:]
    assert mem.read_bytes(0, 5) == bytes(5)
    assert dirty_span(mem) == (5, SPAN)


def test_pipe_write_all_across_regions_with_slow_reader(mem):
    mem.write_slice(DATA, 0)
    r, w = os.pipe()
    try:
        join = run_peer(drain, lambda n: os.read(r, min(n, 1000)), SPAN - 3)
        mem.write_all_volatile_to(3, w, SPAN - 3)
        assert join() == DATA[3:]
    finally:
        os.close(r)
        os.close(w)


def test_pipe_read_volatile_from_takes_what_one_read_gives(mem):
    r, w = os.pipe()
    try:
        os.write(w, b"abc")
        # one read per piece; the first short read ends the call
        assert mem.read_volatile_from(0xFFFE, r, 8) == 3
        assert mem.read_bytes(0xFFFE, 3) == b"abc"
        os.close(w)
        w = -1
        assert mem.read_volatile_from(0, r, 8) == 0  # end of stream
        with pytest.raises(PartialBufferError) as ei:
            mem.read_exact_volatile_from(0, r, 8)
        assert (ei.value.expected, ei.value.completed) == (8, 0)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_pipe_reader_gone_is_a_stream_error(mem):
    mem.write_slice(DATA, 0)
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(StreamError) as ei:
            mem.write_all_volatile_to(0, w, 16)
        assert isinstance(ei.value.__cause__, BrokenPipeError)
        assert ei.value.completed == 0
    finally:
        os.close(w)


def test_full_nonblocking_pipe_reports_bytes_written(mem):
    mem.write_slice(DATA, 0)
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        with pytest.raises(StreamError) as ei:
            mem.write_all_volatile_to(0, w, SPAN)  # more than the pipe buffer
        assert 0 < ei.value.completed < SPAN
        os.set_blocking(r, False)
        got = bytearray()
        while True:
            try:
                chunk = os.read(r, 65536)
            except BlockingIOError:
                break
            got += chunk
        assert bytes(got) == DATA[: ei.value.completed]
    finally:
        os.close(r)
        os.close(w)


def test_closed_fd_is_a_stream_error(mem):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(StreamError) as ei:
        mem.read_volatile_from(0, r, 4)
    assert isinstance(ei.value.__cause__, OSError)
    with pytest.raises(StreamError):
        mem.write_volatile_to(0, w, 4)
    # a failed read marks the whole buffer (the source may have written before failing)
    assert dirty_span(mem) == (0, 4)


# -- sockets --------------------------------------------------------------------------------


def test_socket_round_trip_across_regions():
    a_mem = GuestMemoryMmap.from_ranges(LAYOUT)
    b_mem = GuestMemoryMmap.from_ranges(LAYOUT)
    a_mem.write_slice(DATA, 0)
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        join = run_peer(a_mem.write_all_volatile_to, 0x22, a, SPAN - 0x22)
        b_mem.read_exact_volatile_from(0x11, b, SPAN - 0x22)  # pieces split elsewhere
        join()
    assert b_mem.read_bytes(0x11, SPAN - 0x22) == DATA[0x22:]


def test_socket_trickle_and_shutdown(mem):
    a, b = socket.socketpair()
    with a, b:
        join = run_peer(send_in_chunks, a.sendall, DATA[:0x12000], (3, 5000, 1))
        mem.read_exact_volatile_from(0x8000, b, 0x12000)
        join()
        assert mem.read_bytes(0x8000, 0x12000) == DATA[:0x12000]
        a.sendall(b"tail")
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(PartialBufferError) as ei:
            mem.read_exact_volatile_from(0xFFFE, b, 100)
        assert (ei.value.expected, ei.value.completed) == (100, 4)
        assert mem.read_bytes(0xFFFE, 4) == b"tail"


def test_nonblocking_socket_without_data(mem):
    a, b = socket.socketpair()
    with a, b:
        b.setblocking(False)
        with pytest.raises(StreamError) as ei:
            mem.read_exact_volatile_from(0, b, 4)
        assert isinstance(ei.value.__cause__, BlockingIOError)
    assert dirty_span(mem) == (0, 4)


# -- files ----------------------------------------------------------------------------------


def test_dump_to_file_and_load_back(mem, tmp_path):
    mem.write_slice(DATA, 0)
    path = tmp_path / "dump.bin"
    with open(path, "wb") as f:
        f.write(b"HEAD")
        mem.write_all_volatile_to(0, f, SPAN)
        assert f.tell() == 4 + SPAN
    assert path.read_bytes() == b"HEAD" + DATA  # plain open() sees what npguest wrote
    other = GuestMemoryMmap.from_ranges(LAYOUT)
    with open(path, "rb") as f:
        assert f.read(4) == b"HEAD"
        other.read_exact_volatile_from(0, f, SPAN)
        assert f.read() == b""
    assert other.read_bytes(0, SPAN) == DATA


def test_unbuffered_file_and_raw_fd(mem, tmp_path):
    path = tmp_path / "raw.bin"
    path.write_bytes(DATA)
    with open(path, "rb", buffering=0) as f:
        assert mem.read_volatile_from(0xFFF0, f, 0x20) == 0x20
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 0x100, os.SEEK_SET)
        mem.read_exact_volatile_from(0x20000, fd, 0x3001)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0x100 + 0x3001
    finally:
        os.close(fd)
    assert mem.read_bytes(0xFFF0, 0x20) == DATA[:0x20]
    assert mem.read_bytes(0x20000, 0x3001) == DATA[0x100 : 0x100 + 0x3001]


def test_stream_at_a_hole_and_past_the_end(mem, tmp_path):
    src = io.BytesIO(DATA)
    with pytest.raises(PartialBufferError) as ei:
        mem.read_exact_volatile_from(SPAN - 2, src, 8)
    assert (ei.value.expected, ei.value.completed) == (8, 2)
    assert src.tell() == 2  # nothing read past what fits
    with pytest.raises(InvalidGuestAddressError) as ei2:
        mem.write_volatile_to(SPAN, io.BytesIO(), 1)
    assert ei2.value.addr == SPAN


def test_readonly_memory_refuses_stream_reads(tmp_path):
    ro = readonly_file_memory(tmp_path / "ro.bin", DATA[:0x1000], 0x1000)
    src = io.BytesIO(b"x" * 16)
    with pytest.raises(ReadOnlyMemoryError):
        ro.read_volatile_from(0x1000, src, 16)
    assert src.tell() == 0  # refused before reading from the stream
    sink = io.BytesIO()
    ro.write_all_volatile_to(0x1000, sink, 0x1000)
    assert sink.getvalue() == DATA[:0x1000]


def test_wrong_streams_are_type_errors(mem, tmp_path):
    with open(tmp_path / "t.txt", "w") as text, pytest.raises(TypeError, match="binary"):
        mem.write_volatile_to(0, text, 4)
    with pytest.raises(TypeError, match="not a source"):
        mem.read_volatile_from(0, object(), 4)
    with pytest.raises(TypeError, match="not a sink"):
        mem.write_all_volatile_to(0, [], 4)


# -- no intermediate copies ---------------------------------------------------------------


class Recorder(io.RawIOBase):
    """A source/sink that records the host address and length of every buffer it gets."""

    def __init__(self, data: bytes = b"") -> None:
        self.data, self.pos, self.seen = data, 0, []

    def _record(self, buf) -> memoryview:
        view = memoryview(buf).cast("B")
        self.seen.append((np.frombuffer(view, dtype=np.uint8).ctypes.data, len(view)))
        return view

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        view = self._record(buf)
        chunk = self.data[self.pos : self.pos + len(view)]
        view[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def write(self, buf) -> int:
        return len(self._record(buf))


@pytest.mark.parametrize("direction", ["in", "out"])
def test_streams_get_views_of_the_mapping(mem, direction):
    rec = Recorder(DATA)
    if direction == "in":
        mem.read_exact_volatile_from(0xFFF0, rec, 0x10020)
    else:
        mem.write_all_volatile_to(0xFFF0, rec, 0x10020)
    hosts = [mem.get_host_address(a) for a in (0xFFF0, 0x10000, 0x20000)]
    assert rec.seen == [(hosts[0], 0x10), (hosts[1], 0x10000), (hosts[2], 0x10)]


class Liar(io.RawIOBase):
    """A source or sink that reports a byte count it cannot have moved."""

    def __init__(self, count, payload=b"") -> None:
        self.count, self.payload = count, payload

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readinto(self, buf):
        buf[: len(self.payload)] = self.payload
        return self.count(len(buf))

    def write(self, buf):
        return self.count(len(buf))


@pytest.mark.parametrize("count", [lambda n: -5, lambda n: n + 100, lambda n: 1.5])
def test_sources_reporting_impossible_counts(mem, count):
    """No hang, no wrapped slice, no count larger than the buffer: a StreamError."""
    with pytest.raises(StreamError, match="reported reading"):
        mem.read_exact_volatile_from(0xFFF0, Liar(count, b"DATA"), 0x20)
    with pytest.raises(StreamError, match="reported reading"):
        mem.read_volatile_from(0xFFF0, Liar(count), 0x20)
    assert mem.read_bytes(0xFFF0, 4) == b"DATA"
    assert dirty_span(mem) == (0xFFF0, 0x10000)  # the whole buffer the source was handed


@pytest.mark.parametrize("count", [lambda n: -1, lambda n: n + 1, lambda n: 2.0])
def test_sinks_reporting_impossible_counts(mem, count):
    with pytest.raises(StreamError, match="reported writing"):
        mem.write_volatile_to(0, Liar(count), 0x20)
    with pytest.raises(StreamError, match="reported writing"):
        mem.write_all_volatile_to(0, Liar(count), 0x20)


def test_failing_source_marks_what_it_may_have_written(mem):
    class Failing(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buf):
            buf[:4] = b"DATA"
            raise OSError(5, "EIO")

    with pytest.raises(StreamError) as ei:
        mem.read_volatile_from(0x20, Failing(), 0x40)
    assert isinstance(ei.value.__cause__, OSError)
    assert mem.read_bytes(0x20, 4) == b"DATA"
    assert dirty_span(mem) == (0x20, 0x60)
