"""channel: guest ranges to/from sockets, pipes, fds and files, zero-copy, nothing lost."""

from __future__ import annotations

import io
import os
import socket
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npguest import AtomicBitmap, FileOffset, GuestMemoryMmap
from npguest import channel as ch
from npguest.errors import GuestAddressOverflowError, InvalidGuestAddressError, StreamError

pytestmark = pytest.mark.timeout(60)

PAGE = 4096
LAYOUT = [(0, 16 * PAGE), (16 * PAGE, 8 * PAGE + 100), (64 * PAGE, 4 * PAGE)]  # adjacent, hole
SIZE = 64 * PAGE + 4 * PAGE


def filled(seed=0, bitmap=None):
    mem = GuestMemoryMmap.from_ranges(LAYOUT, bitmap=bitmap)
    rng = np.random.default_rng(seed)
    for start, size in LAYOUT:
        mem.write_slice(rng.integers(0, 256, size, dtype=np.uint8), start)
    return mem


def expected(mem, ranges):
    return b"".join(mem.read_bytes(a, n) for a, n in ranges)


def tcp_pair(timeout=10.0):
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=timeout)
        conn, _ = server.accept()
    conn.settimeout(timeout)
    return client, conn


def drain(sock_or_fd, out):
    buf = bytearray(1 << 16)
    while True:
        if isinstance(sock_or_fd, int):
            n = os.readv(sock_or_fd, [buf])
        else:
            n = sock_or_fd.recv_into(buf)
        if not n:
            return
        out += buf[:n]


RANGES = [(0x100, 3 * PAGE), (16 * PAGE - 50, 100), (64 * PAGE, 4 * PAGE), (5, 1)]


@pytest.mark.parametrize("kind", ["tcp", "pipe", "file"])
def test_round_trip(kind, tmp_path):
    src, dst = filled(1), GuestMemoryMmap.from_ranges(LAYOUT, bitmap=AtomicBitmap)
    total = sum(n for _, n in RANGES)
    if kind == "file":
        with open(tmp_path / "s", "wb") as f:
            assert ch.send_ranges(src, RANGES, f) == total
        with open(tmp_path / "s", "rb") as f:
            assert ch.recv_ranges(dst, RANGES, f) == total
    else:
        a, b = tcp_pair() if kind == "tcp" else os.pipe()[::-1]
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("n", ch.recv_ranges(dst, RANGES, b)))
        t.start()
        assert ch.send_ranges(src, RANGES, a) == total
        t.join(10)
        assert got["n"] == total
        for end in (a, b):
            end.close() if kind == "tcp" else os.close(end)
    assert expected(dst, RANGES) == expected(src, RANGES)
    # receiving marked exactly the pages written
    pages = {p for a, n in RANGES for p in range(a // PAGE, (a + n - 1) // PAGE + 1)}
    assert {int(x) // PAGE for x in dst.dirty_pages()} == pages


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, SIZE), st.integers(0, 3 * PAGE)), max_size=6))
def test_random_ranges_match_the_model(raw):
    src = filled(2)
    backed = [(a, n) for a, n in raw if src.check_range(a, n) or n == 0]
    sink = io.BytesIO()
    assert ch.send_ranges(src, backed, sink) == sum(n for _, n in backed)
    assert sink.getvalue() == expected(src, backed)
    dst = GuestMemoryMmap.from_ranges(LAYOUT)
    ch.recv_ranges(dst, backed, io.BytesIO(sink.getvalue()))
    assert expected(dst, backed) == expected(src, backed)
    holes = [(a, n) for a, n in raw if n and not src.check_range(a, n)]
    for a, n in holes:
        with pytest.raises(InvalidGuestAddressError) as info:
            ch.send_ranges(src, [(0, 10), (a, n)], sink := io.BytesIO())
        assert sink.getvalue() == b""  # nothing moves before every range is checked
        first_hole = next(x for x in range(a, a + n) if not src.check_range(x, 1))
        assert info.value.addr == first_hole


def test_large_send_over_socket_with_timeout_goes_through_partial_writes():
    # a socket with a timeout is non-blocking underneath: sendmsg returns short counts
    mem = GuestMemoryMmap.from_ranges([(0, 24 << 20), (24 << 20, 8 << 20)])
    mem.write_slice(np.arange(32 << 20, dtype=np.uint64).view(np.uint8)[: 32 << 20], 0)
    ranges = [(PAGE * i, 100) for i in range(0, 2000, 2)] + [(0, 32 << 20)]
    a, b = tcp_pair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    out = bytearray()
    t = threading.Thread(target=drain, args=(b, out))
    t.start()
    seen = []
    ch.send_ranges(mem, ranges, a, progress=seen.append)
    a.close()
    t.join(10)
    b.close()
    assert bytes(out) == expected(mem, ranges)
    assert seen[-1].done == seen[-1].total == sum(n for _, n in ranges)


def test_file_backed_region_goes_by_sendfile(tmp_path, monkeypatch):
    path = tmp_path / "backing"
    path.write_bytes(os.urandom(4 * PAGE))
    f = open(path, "r+b")  # noqa: SIM115 - sendfile needs it open
    mem = GuestMemoryMmap.from_ranges_with_files(
        [(0, 2 * PAGE, None), (2 * PAGE, 4 * PAGE, FileOffset(f, 0))]
    )
    mem.write(b"written through the mapping", 3 * PAGE)
    calls = []
    real = os.sendfile
    monkeypatch.setattr(os, "sendfile", lambda *a: calls.append(a) or real(*a))
    a, b = tcp_pair()
    out = bytearray()
    t = threading.Thread(target=drain, args=(b, out))
    t.start()
    ch.send_ranges(mem, [(PAGE, 4 * PAGE)], a)
    a.close()
    t.join(10)
    b.close()
    assert bytes(out) == mem.read_bytes(PAGE, 4 * PAGE)
    assert calls and calls[0][2:] == (0, 3 * PAGE)  # file offset of the piece, its length
    f.close()  # a closed backing file: the mapping itself is sent
    calls.clear()
    assert ch.send_ranges(mem, [(2 * PAGE, PAGE)], sink := io.BytesIO()) == PAGE
    assert sink.getvalue() == mem.read_bytes(2 * PAGE, PAGE) and not calls


def test_sendfile_waits_for_a_slow_reader_and_times_out(tmp_path):
    """A socket with a timeout is non-blocking underneath: sendfile's EAGAIN means wait."""
    size = 8 << 20  # far more than the socket buffers take
    path = tmp_path / "backing"
    path.write_bytes(os.urandom(size))
    with open(path, "r+b") as f:
        mem = GuestMemoryMmap.from_ranges_with_files([(0, size, FileOffset(f, 0))])
        a, b = tcp_pair(timeout=10.0)
        out = bytearray()
        t = threading.Thread(target=lambda: (time.sleep(0.2), drain(b, out)))
        t.start()
        assert ch.send_ranges(mem, [(0, size)], a) == size
        a.close()
        t.join(10)
        b.close()
        assert bytes(out) == path.read_bytes()
        a, b = tcp_pair(timeout=0.2)  # nobody reads: the timeout ends it
        with pytest.raises(StreamError, match="timed out") as info:
            ch.send_ranges(mem, [(0, size)], a)
        assert 0 < info.value.completed < size
        a.close()
        b.close()
        mem.close()


class ShortWriter(io.RawIOBase):
    """Takes at most ``step`` bytes per write; fails with ENOSPC after ``budget`` bytes."""

    def __init__(self, step=1000, budget=None, zero=False):
        self.data, self.step, self.budget, self.zero = bytearray(), step, budget, zero

    def writable(self):
        return True

    def write(self, b):
        if self.budget is not None and len(self.data) >= self.budget:
            if self.zero:
                return 0
            raise OSError(28, "No space left on device")
        n = min(len(b), self.step)
        if self.budget is not None:
            n = min(n, self.budget - len(self.data))
        self.data += bytes(b[:n])
        return n


def test_short_writes_complete():
    src = filled(3)
    sink = ShortWriter(step=777)
    ch.send_ranges(src, RANGES, sink)
    assert bytes(sink.data) == expected(src, RANGES)


@pytest.mark.parametrize("zero", [False, True])
def test_failing_sink_names_the_range(zero):
    src = filled(4)
    ranges = [(0, 10 * PAGE), (64 * PAGE, 4 * PAGE)]
    sink = ShortWriter(step=5000, budget=10 * PAGE + 300, zero=zero)
    with pytest.raises(StreamError) as info:
        ch.send_ranges(src, ranges, sink)
    err = info.value
    assert (err.addr, err.length, err.completed) == (64 * PAGE, 4 * PAGE, 10 * PAGE + 300)
    assert f"{64 * PAGE:#x}+{4 * PAGE}" in str(err)
    assert ("whole buffer" in err.reason) if zero else isinstance(err.__cause__, StreamError)
    assert bytes(sink.data) == expected(src, ranges)[: 10 * PAGE + 300]


def test_peer_closing_mid_send_raises_stream_error():
    mem = GuestMemoryMmap.from_ranges([(0, 16 << 20)])
    a, b = tcp_pair()
    t = threading.Thread(target=lambda: (b.recv(1000), b.close()))
    t.start()
    with pytest.raises(StreamError) as info:
        ch.send_ranges(mem, [(0, 16 << 20)], a)
    t.join(10)
    assert info.value.addr is not None and info.value.completed < 16 << 20
    assert isinstance(info.value.__cause__, StreamError | OSError)
    a.close()


def test_truncated_source_names_the_range():
    dst = GuestMemoryMmap.from_ranges(LAYOUT, bitmap=AtomicBitmap)
    with pytest.raises(StreamError) as info:
        ch.recv_ranges(dst, [(0, 100), (64 * PAGE, 200)], io.BytesIO(bytes(150)))
    err = info.value
    assert (err.addr, err.length, err.completed) == (64 * PAGE, 200, 150)
    assert "ended after 50 of 200" in str(err)
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(StreamError, match="ended"):
        ch.recv_ranges(dst, [(0, 1)], r)
    os.close(r)
    with pytest.raises(StreamError, match="read failed") as info:
        ch.recv_ranges(dst, [(8, 1)], r)  # a closed fd
    assert (info.value.addr, info.value.length) == (8, 1)


def test_bad_arguments():
    mem = filled()
    with pytest.raises(ValueError, match=r"\(n, 2\)"):
        ch.send_ranges(mem, [1, 2, 3], io.BytesIO())
    with pytest.raises(TypeError, match="not a sink"):
        ch.send_ranges(mem, [(0, 4)], object())
    with pytest.raises(TypeError, match="binary"):
        ch.send_ranges(mem, [(0, 4)], io.StringIO())
    with pytest.raises(InvalidGuestAddressError):
        ch.recv_ranges(mem, [(30 * PAGE, 4)], io.BytesIO(bytes(4)))
    assert ch.send_ranges(mem, [], io.BytesIO()) == 0
    with pytest.raises(OverflowError):
        ch.pieces(mem, 2**64 - 1, 2)
    for addr, length in ((-8, 4), (0x100, -0x50)):
        with pytest.raises(GuestAddressOverflowError):
            ch.pieces(mem, addr, length)


@pytest.mark.parametrize(
    ("ranges", "error", "addr"),
    [
        ([(0, 2**64 - 1)], InvalidGuestAddressError, 24 * PAGE + 100),
        ([(0x1000, 2**64 - 2**21)], InvalidGuestAddressError, 24 * PAGE + 100),
        ([(64 * PAGE, 2**64 - 64 * PAGE)], InvalidGuestAddressError, SIZE),
        ([(0, 8), (40 * PAGE, 8)], InvalidGuestAddressError, 40 * PAGE),
        ([(0, 2**64)], GuestAddressOverflowError, 0),
        ([(PAGE, 2**64 - 1)], GuestAddressOverflowError, PAGE),
        (np.array([[0x1000, -1]], dtype=np.int64), GuestAddressOverflowError, None),
        ([(-1, 16)], GuestAddressOverflowError, None),
        ([(-1, 2**64 - 1)], GuestAddressOverflowError, None),
        ([(0.9, 16)], TypeError, None),
        (np.array([[0.0, 16.0]]), TypeError, None),
        ([(0, 1 << 44)], InvalidGuestAddressError, 24 * PAGE + 100),
        ([(0, 1 << 62)], InvalidGuestAddressError, 24 * PAGE + 100),
    ],
)
def test_ranges_are_validated_before_splitting(ranges, error, addr):
    mem = filled()
    for move in (
        lambda: ch.send_ranges(mem, ranges, io.BytesIO()),
        lambda: ch.recv_ranges(mem, ranges, io.BytesIO(bytes(SIZE))),
    ):
        t0 = time.perf_counter()
        with pytest.raises(error) as info:
            move()
        assert time.perf_counter() - t0 < 0.5
        if addr is not None:
            assert info.value.addr == addr
    assert ch.send_ranges(mem, [(0, 24 * PAGE + 100)], io.BytesIO()) == 24 * PAGE + 100
    assert ch.send_ranges(mem, np.array([[64 * PAGE, 0]], dtype=np.int64), io.BytesIO()) == 0
