"""Moving bytes between memory views and Python streams, with no intermediate copy.

A *source* is a binary file object (anything with ``readinto``), a socket (``recv_into``)
or a raw file descriptor (an ``int``, read with :func:`os.readv`).  A *sink* is a binary
file object (``write``), a socket (``sendall``) or a raw fd (:func:`os.write`).  Each
call hands the stream a :class:`memoryview` of the mapping itself, so the kernel copies
straight into or out of guest memory.

``EINTR`` is retried by Python itself (PEP 475).  Any ``OSError`` becomes a
:class:`~npguest.errors.StreamError` whose ``__cause__`` is the original error.
"""

from __future__ import annotations

import io
import os
from typing import Any, Protocol

from .errors import StreamError

__all__ = ["Sink", "Source", "read_into", "write_all"]


class Source(Protocol):
    """A binary stream that can fill a buffer (file objects, ``io.BytesIO``...)."""

    def readinto(self, buffer: Any, /) -> int | None:
        """Fill ``buffer``; return the byte count (0 at end of stream)."""
        ...  # pragma: no cover - protocol


class Sink(Protocol):
    """A binary stream that accepts buffers (file objects, ``io.BytesIO``...)."""

    def write(self, buffer: Any, /) -> int | None:
        """Write from ``buffer``; return the byte count."""
        ...  # pragma: no cover - protocol


def _check_binary(stream: object) -> None:
    if isinstance(stream, io.TextIOBase):
        raise TypeError("streams must be binary (open the file with 'rb'/'wb'), not text")


def read_into(src: Source | int | Any, view: memoryview, done: int = 0) -> int:
    """Issue one read from ``src`` into ``view``.

    Parameters
    ----------
    src : file object, socket or int
        The source.
    view : memoryview
        Writable bytes of guest memory.
    done : int, optional
        Bytes already moved by the caller's operation, reported on failure.

    Returns
    -------
    int
        Bytes read; 0 means end of stream (or an empty ``view``).

    Raises
    ------
    StreamError
        The read failed, a non-blocking source had no data, or the source reported a
        byte count outside ``[0, len(view)]``.
    TypeError
        ``src`` is not a binary source.
    """
    if not len(view):
        return 0
    try:
        if isinstance(src, int):
            n = os.readv(src, [view])
        elif hasattr(src, "recv_into"):
            n = src.recv_into(view)
        elif hasattr(src, "readinto"):
            _check_binary(src)
            n = src.readinto(view)
        else:
            raise TypeError(
                f"{type(src).__name__} is not a source: "
                "pass a binary file, a socket or a file descriptor"
            )
    except OSError as exc:
        raise StreamError(f"read failed: {exc}", done) from exc
    if n is None:
        raise StreamError("non-blocking source had no data ready", done)
    if not isinstance(n, int) or not 0 <= n <= len(view):
        raise StreamError(f"the source reported reading {n!r} bytes into {len(view)}", done)
    return n


def write_all(dst: Sink | int | Any, view: memoryview, done: int = 0) -> int:
    """Write all of ``view`` to ``dst``, looping over short writes.

    Parameters
    ----------
    dst : file object, socket or int
        The sink.
    view : memoryview
        Bytes of guest memory.
    done : int, optional
        Bytes already moved by the caller's operation, reported on failure.

    Returns
    -------
    int
        ``len(view)``.

    Raises
    ------
    StreamError
        A write failed, wrote nothing (vm-memory's ``WriteZero``), or the sink reported
        a byte count it cannot have written.
    TypeError
        ``dst`` is not a binary sink.
    """
    total = len(view)
    written = 0
    try:
        if hasattr(dst, "sendall"):
            dst.sendall(view)
            return total
        if isinstance(dst, int):
            write = lambda v: os.write(dst, v)  # noqa: E731
        elif hasattr(dst, "write"):
            _check_binary(dst)
            write = dst.write
        else:
            raise TypeError(
                f"{type(dst).__name__} is not a sink: "
                "pass a binary file, a socket or a file descriptor"
            )
        while written < total:
            n = write(view[written:])
            if n is None:
                raise StreamError("non-blocking sink would block", done + written)
            if n == 0:
                raise StreamError("failed to write whole buffer", done + written)
            if not isinstance(n, int) or not 0 < n <= total - written:
                raise StreamError(
                    f"the sink reported writing {n!r} bytes of {total - written}", done + written
                )
            written += n
    except OSError as exc:
        if isinstance(exc, StreamError):
            raise
        raise StreamError(f"write failed: {exc}", done + written) from exc
    return total
