"""Streams of guest memory over a loopback socket: channel.send_ranges and migration.send.

Target (issue 6): moving 1 GiB of guest memory over a loopback TCP socket runs at >= 0.8x
the throughput of a plain ``socket.sendall`` loop of preallocated bytes, measured in the
same run.  Each side gets a fresh connection per call, drained by a thread: a plain
``recv_into`` loop for ``sendall`` and ``send_ranges``, :func:`npguest.migration.receive`
into a faulted-in 1 GiB destination for the migration (whose checksums it verifies).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from npguest import AtomicBitmap, migration
from npguest.channel import send_ranges

from ._common import GiB, MiB, Paired, fault_memory, guest_memory

CHUNK = 4 * MiB


def _drain(conn: socket.socket) -> None:
    buf = bytearray(MiB)
    while conn.recv_into(buf):
        pass


def _over_loopback(send: Callable[[socket.socket], Any], receive: Callable[[socket.socket], Any]):
    """Return an op sending over a fresh loopback connection that ``receive`` drains."""

    def op() -> None:
        with socket.create_server(("127.0.0.1", 0)) as server:
            client = socket.create_connection(server.getsockname())
            conn, _ = server.accept()
        reader = threading.Thread(target=receive, args=(conn,))
        reader.start()
        with client:
            send(client)
            client.shutdown(socket.SHUT_WR)
        reader.join()
        conn.close()

    return op


class SocketTransfer(Paired):
    pairs: ClassVar[dict[str, tuple[str, str]]] = {
        "send_ranges": ("send_ranges", "sendall"),
        "migration": ("migration", "sendall"),
    }
    ratio_repeats = 10
    timeout = 900

    def setup(self):
        self.src = guest_memory(bitmap=AtomicBitmap)
        self.dst = guest_memory(bitmap=AtomicBitmap)
        fault_memory(self.src)
        fault_memory(self.dst)
        self.src.write_slice(np.random.default_rng(0).integers(0, 256, 64 * MiB, np.uint8), 0)
        ranges = np.array([[0, GiB]], dtype=np.uint64)
        data = bytes(CHUNK)

        def sendall(sock):
            for _ in range(GiB // CHUNK):
                sock.sendall(data)

        self.ops = {
            "sendall": _over_loopback(sendall, _drain),
            "send_ranges": _over_loopback(lambda s: send_ranges(self.src, ranges, s), _drain),
            "migration": _over_loopback(
                lambda s: migration.send(self.src, s),
                lambda c: migration.receive(c, mem=self.dst),
            ),
        }
        for op in self.ops.values():  # loads the kernels, warms the socket paths
            op()

    def teardown(self):
        del self.ops
        self.src.close()
        self.dst.close()

    def time_sendall(self):
        self.ops["sendall"]()

    def time_send_ranges(self):
        self.ops["send_ranges"]()

    def time_migration(self):
        self.ops["migration"]()

    def track_send_ranges_ratio(self):
        t_ours, t_base = self.measure("send_ranges")
        return t_base / t_ours  # throughput ratio: ours / baseline

    track_send_ranges_ratio.unit = "ratio"

    def track_migration_ratio(self):
        t_ours, t_base = self.measure("migration")
        return t_base / t_ours

    track_migration_ratio.unit = "ratio"
