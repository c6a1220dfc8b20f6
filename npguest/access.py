"""The ``Bytes`` mixin: every read/write/object/stream/atomic method, written once.

Each memory object (a :class:`~npguest.VolatileSlice`, a region, a guest memory...)
answers a few questions about an access and the mixin does the rest:

``_pieces(addr, count, write=False)``
    The contiguous host pieces ``(view, offset, length, bitmap, bitmap_offset)`` that
    back ``[addr, addr + count)``, with vm-memory's semantics: ``count == 0`` gives no
    pieces and validates nothing; an unbacked *start* raises the object's error; a hole
    or end *later on* simply ends the list (the access is partial).  ``write`` says
    the access writes (an IOMMU checks permissions for it).
``_stream_pieces`` / ``_exact_pieces``
    The same for stream reads/writes and for the all-or-error stream variants, where a
    level's bounds rules differ (default: ``_pieces``).
``_windows``, ``_wstarts`` and ``_window``
    The scalar fast path, as data rather than a hook: the object's address space as a
    tuple of contiguous windows ``(start, end, view, view_base, bitmap, bitmap_base)``
    (address ``a`` in ``[start, end)`` is ``view[view_base + a - start]``), their sorted
    starts, and the last window hit.  Object reads and writes check the last window,
    then ``bisect`` the starts; anything not wholly inside one window takes the general
    path.
``_rfast`` and ``_wfast``
    One-entry dispatch caches of ``read_obj``/``write_obj``, primed by their general
    path: ``(dtype, lo, hi, struct_method, view, delta, ...)``.  A call with the same
    dtype *object*, an int address in ``[lo, hi]`` (and, for writes, an int value proven
    to fit) is one struct call and nothing else.  ``_rfasts``/``_wfasts`` hold, for the
    last dtype, one such entry per window (built on first use), so moving to another
    window costs a ``bisect``.  ``NO_FAST``/``NO_FASTS`` never match; objects reset
    all four whenever their windows change.
``_atomic_piece(addr, size, write=False)``
    The one piece of an aligned atomic access, or the object's error.
``_short_stream(expected, completed)``
    The error of an all-or-error stream read that met end-of-stream.

Every method validates first (types, bounds, overflow, writability), then copies piece
by piece (``memoryview`` slice assignment: a plain ``memcpy``/``memmove`` of the
mapping), then marks the written bytes dirty in the piece's bitmap.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .address import _u64
from .bitmap import AtomicBitmap, Bitmap
from .dtypes import _CODECS, Codec, _value_dtype, codec
from .errors import ByteValuedError, PartialBufferError, ReadOnlyMemoryError, StreamError
from .stream import read_into, write_all

__all__ = ["NO_FAST", "NO_FASTS", "NO_WINDOW", "Bytes", "Piece", "Window", "as_byte_view"]


Piece = tuple[memoryview, int, int, Bitmap | None, int]
"""One contiguous run of host memory backing part of an access (a plain tuple, for speed):
``(view, offset, length, bitmap, bitmap_offset)`` -- the whole backing buffer (format
``'B'``), the run's offset and length in it, the dirty bitmap of that memory (or
``None``) and the bitmap offset of the run's first byte."""

Window = tuple[int, int, memoryview, int, Bitmap | None, int]
"""A contiguous window of an address space: ``(start, end, view, view_base, bitmap,
bitmap_base)``; address ``a`` in ``[start, end)`` is byte ``view[view_base + a - start]``
and bitmap offset ``bitmap_base + a - start``."""

NO_WINDOW: Window = (1, 0, memoryview(b""), 0, None, 0)
"""A window that no access falls into."""

NO_FAST = (object(), 1, 0, None, None, 0, 1, 0, None, 0, 0)
"""A fast-path entry that no call matches (its dtype is a private object)."""

NO_FASTS = (object(), [], None, {}, {}.get)
"""A per-window table of fast-path entries that no call matches."""

_GRANULE = 21
"""Fast-path entries are also found by ``addr >> 21`` (2 MiB granules; the literal is
inlined in the hot paths): one dict lookup instead of a bisect when scalar accesses hop
between windows."""
_MAX_GRANULES = 1 << 16


def as_byte_view(buf: Any, writable: bool = False) -> memoryview:
    """Return a flat byte ``memoryview`` of any C-contiguous buffer.

    Parameters
    ----------
    buf : buffer
        ``bytes``, ``bytearray``, ``memoryview``, a numpy array, ``mmap``...
    writable : bool, optional
        Require a writable buffer (for reads into it).

    Returns
    -------
    memoryview
        A 1-D view of format ``'B'`` over the same memory.

    Raises
    ------
    TypeError
        ``buf`` is not a buffer, is not C-contiguous, or is read-only when it must not be.
    """
    if type(buf) is memoryview and buf.format == "B" and buf.ndim == 1:
        view = buf
    else:
        try:
            view = memoryview(buf)
        except TypeError:
            raise TypeError(
                f"expected a bytes-like buffer (bytes, bytearray, memoryview, ndarray), "
                f"got {type(buf).__name__}"
            ) from None
        if not view.c_contiguous:
            raise TypeError("the buffer must be C-contiguous")
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
    if writable and view.readonly:
        raise TypeError("the buffer to read into must be writable (e.g. a bytearray)")
    return view


_last_codec: tuple[Any, Codec] = (object(), Codec(np.dtype(np.uint8)))  # never matches


def _codec_for(value: Any, dtype: DTypeLike | None) -> Codec:
    """Codec of ``dtype`` (or of ``value``), remembered for the next call by identity.

    Hashing a numpy dtype costs more than the rest of a scalar read, so the scalar
    paths first compare the dtype *object* with the last one used.
    """
    global _last_codec
    if dtype is None:
        return _value_dtype(value, None)
    try:
        c = _CODECS[dtype]
    except (KeyError, TypeError):
        c = codec(dtype)
    _last_codec = (dtype, c)
    return c


def _read_entry(dtype: Any, c: Codec, window: Window) -> tuple[Any, ...]:
    """Build the ``read_obj`` fast-path entry of ``dtype`` in ``window``."""
    start, end, view, base, _, _ = window
    return (dtype, start, end - c.size, c.struct.unpack_from, view, base - start)  # type: ignore[union-attr]


def _write_entry(dtype: Any, c: Codec, window: Window) -> tuple[Any, ...]:
    """Build the ``write_obj`` fast-path entry of ``dtype`` in ``window``.

    Only host-order integers get one (none for read-only windows): an aligned one is
    stored through a ``memoryview`` cast to its type -- one store of its width -- and
    an unaligned one packed and copied.  Never ``struct.pack_into``: it zeroes its
    target before storing, so a concurrent reader (or the guest) could see 0.

    An aligned object fits in one page when pages are at least its size, so on an
    :class:`~npguest.bitmap.AtomicBitmap` indexed like the buffer its mark is one byte
    store into the bitmap's page byte map.  Other bitmaps get a ``mark_dirty`` call.
    """
    start, end, view, base, bitmap, bbase = window
    size = c.size
    if view.readonly or c.native is None:
        return NO_FAST
    typed = view[: len(view) // size * size].cast(c.native)
    lane, shift = None, 0
    if (
        type(bitmap) is AtomicBitmap
        and bitmap.page_size() >= size
        and base == bbase
        and bitmap.byte_size() >= bbase + end - start  # (a smaller bitmap clips by method)
    ):
        lane, shift = bitmap._pin(), bitmap._shift
    return (
        dtype, start, end - size, c.struct.pack, view, base - start,  # type: ignore[union-attr]
        bitmap, bbase - start, size, size - 1, typed, size.bit_length() - 1, lane, shift,
    )  # fmt: skip


def _fast_table(dtype: Any, c: Codec, windows: int) -> tuple[Any, ...]:
    """Return a new per-window table of ``dtype``'s fast-path entries.

    ``(dtype, entries, codec, granule directory, the directory's bound get)``.
    """
    directory: dict[int, Any] = {}
    return (dtype, [None] * windows, c, directory, directory.get)


def _put(view: memoryview, off: int, c: Codec, value: Any) -> None:
    """Store one plain number at ``view[off]``: one store of its width when aligned.

    Raises ``struct.error``, ``TypeError``, ``ValueError`` or ``OverflowError`` (before
    writing anything) for a value the dtype's struct cannot hold.
    """
    size = c.size
    if c.native is not None and not off % size and type(value) is int and c.lo <= value <= c.hi:
        view[off : off + size].cast(c.native)[0] = value
    else:
        view[off : off + size] = c.struct.pack(value)  # type: ignore[union-attr]


def _read_marked(
    src: Any, view: memoryview, off: int, n: int, bitmap: Bitmap | None, boff: int, done: int
) -> int:
    """Issue one read into ``view[off:off + n]`` and mark what it wrote dirty.

    A failed read marks the whole buffer (the source may have written into it before
    failing), as vm-memory does for file descriptors.
    """
    try:
        got = read_into(src, view[off : off + n], done)
    except StreamError:
        if bitmap is not None:
            bitmap.mark_dirty(boff, n)
        raise
    if bitmap is not None and got:
        bitmap.mark_dirty(boff, got)
    return got


class Bytes:
    """Byte access to a memory object (vm-memory's ``Bytes`` trait).

    Addresses are ``int``-like (``GuestAddress``, ``MemoryRegionAddress`` or ``int``).
    Buffers are any bytes-like object.  Objects are numpy dtypes (see
    :mod:`npguest.dtypes`); plain integer and float dtypes come back as Python numbers.
    """

    __slots__ = ()

    # -- hooks, implemented by each memory object ---------------------------------------
    def _pieces(  # pragma: no cover - abstract
        self, addr: int, count: int, write: bool = False
    ) -> list[Piece]:
        raise NotImplementedError

    def _stream_pieces(self, addr: int, count: int, write: bool = False) -> list[Piece]:
        return self._pieces(addr, count, write)

    def _exact_pieces(self, addr: int, count: int, write: bool = False) -> list[Piece]:
        return self._pieces(addr, count, write)

    _window: Window
    _windows: tuple[Window, ...]
    _wstarts: tuple[int, ...]
    _rfast: tuple[Any, ...]
    _wfast: tuple[Any, ...]
    _rfasts: tuple[Any, list[Any], Codec | None, dict[int, Any], Any]
    _wfasts: tuple[Any, list[Any], Codec | None, dict[int, Any], Any]

    def _atomic_piece(  # pragma: no cover - abstract
        self, addr: int, size: int, write: bool = False
    ) -> Piece:
        raise NotImplementedError

    def _short_stream(self, expected: int, completed: int) -> Exception:
        return PartialBufferError(expected, completed)

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def _writable(pieces: list[Piece], addr: int) -> list[Piece]:
        done = 0
        for view, _, n, _, _ in pieces:
            if view.readonly:
                raise ReadOnlyMemoryError(addr + done)
            done += n
        return pieces

    # -- plain bytes ---------------------------------------------------------------------
    def write(self, buf: Any, addr: Any) -> int:
        """Write as much of ``buf`` at ``addr`` as fits.

        Parameters
        ----------
        buf : buffer
            The bytes to write.
        addr : int or address
            Where to write them.

        Returns
        -------
        int
            Bytes written; less than ``len(buf)`` when a hole or the end cuts it short.
            An empty ``buf`` writes nothing and checks nothing (returns 0).

        Raises
        ------
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError
            ``addr`` itself is not backed (the error depends on the object).
        ReadOnlyMemoryError
            The memory is mapped read-only.
        """
        src = as_byte_view(buf)
        count = len(src)
        if not count:
            return 0
        addr = _u64(addr, "address")
        done = 0
        for view, off, n, bitmap, boff in self._writable(self._pieces(addr, count, True), addr):
            view[off : off + n] = src[done : done + n]
            if bitmap is not None:
                bitmap.mark_dirty(boff, n)
            done += n
        return done

    def read(self, buf: Any, addr: Any) -> int:
        """Read as many bytes at ``addr`` into ``buf`` as are backed.

        Parameters
        ----------
        buf : writable buffer
            Where to put the bytes.
        addr : int or address
            Where to read them.

        Returns
        -------
        int
            Bytes read (the rest of ``buf`` is left as it was).

        Raises
        ------
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError
            ``addr`` itself is not backed.
        """
        dst = as_byte_view(buf, writable=True)
        count = len(dst)
        if not count:
            return 0
        done = 0
        for view, off, n, _, _ in self._pieces(_u64(addr, "address"), count):
            dst[done : done + n] = view[off : off + n]
            done += n
        return done

    def write_slice(self, buf: Any, addr: Any) -> None:
        """Write all of ``buf`` at ``addr``, or raise.

        Parameters
        ----------
        buf : buffer
            The bytes to write.
        addr : int or address
            Where to write them.

        Raises
        ------
        PartialBufferError
            A hole or the end stopped the write; the bytes before it *were* written.
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError
            ``addr`` itself is not backed.
        ReadOnlyMemoryError
            The memory is mapped read-only.
        """
        src = as_byte_view(buf)
        done = self.write(src, addr)
        if done != len(src):
            raise PartialBufferError(len(src), done)

    def read_slice(self, buf: Any, addr: Any) -> None:
        """Fill all of ``buf`` from ``addr``, or raise.

        Parameters
        ----------
        buf : writable buffer
            Where to put the bytes.
        addr : int or address
            Where to read them.

        Raises
        ------
        PartialBufferError
            A hole or the end stopped the read; ``buf`` holds the bytes before it.
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError
            ``addr`` itself is not backed.
        """
        dst = as_byte_view(buf, writable=True)
        done = self.read(dst, addr)
        if done != len(dst):
            raise PartialBufferError(len(dst), done)

    def read_bytes(self, addr: Any, count: int) -> bytes:
        """Return ``count`` bytes at ``addr`` (a convenience over :meth:`read_slice`).

        Parameters
        ----------
        addr : int or address
            Where to read.
        count : int
            How many bytes.

        Returns
        -------
        bytes
            The bytes.

        Raises
        ------
        GuestAddressOverflowError
            ``count`` is negative or not below ``2**64``.
        PartialBufferError, InvalidGuestAddressError, InvalidBackendAddressError
            As :meth:`read_slice`.
        """
        buf = bytearray(_u64(count, "count"))
        self.read_slice(buf, addr)
        return bytes(buf)

    # -- objects -------------------------------------------------------------------------
    def write_obj(self, value: Any, addr: Any, dtype: DTypeLike | None = None) -> None:
        """Write one object of ``dtype`` at ``addr`` (vm-memory's ``write_obj``).

        An aligned integer of 1, 2, 4 or 8 bytes in host byte order is written with a
        single store when it lies inside one piece.

        Parameters
        ----------
        value : object
            A numpy scalar (its dtype is used), or a Python value with ``dtype``.
        addr : int or address
            Where to write it.
        dtype : dtype_like, optional
            The object's layout, e.g. ``npguest.Le64`` or a structured dtype.

        Raises
        ------
        ByteValuedError
            No usable dtype, or the value does not fit it.
        PartialBufferError
            The object straddles a hole or the end (the leading bytes were written).
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError
            ``addr`` itself is not backed.
        ReadOnlyMemoryError
            The memory is mapped read-only.
        """
        f = self._wfast
        if dtype is f[0] and type(addr) is int:
            if not f[1] <= addr <= f[2]:  # another window: its entry (checked: threads race)
                f = self._wfasts[4](addr >> 21) or self._switch(addr, dtype, True)
                if f[0] is not dtype:  # (entries found cover addr: see _switch)
                    return self._write_obj(value, addr, dtype)
                self._wfast = f
            o = addr + f[5]
            try:  # both stores check the value first: a bad one writes nothing
                if o & f[9]:  # unaligned: no atomicity to keep, one copy
                    f[4][o : o + f[8]] = f[3](value)
                    if f[6] is not None:
                        f[6].mark_dirty(addr + f[7], f[8])
                    return None
                f[10][o >> f[11]] = value  # aligned: one store of the value's width
            except (struct.error, TypeError, ValueError, OverflowError):
                return self._write_obj(value, addr, dtype)  # says what is wrong
            if f[6] is not None:
                if f[12] is not None:  # an aligned object lies in one page: its dirty byte
                    f[12][o >> f[13]] = 1
                else:
                    f[6].mark_dirty(addr + f[7], f[8])
            return None
        return self._write_obj(value, addr, dtype)

    def _write_obj(self, value: Any, addr: Any, dtype: DTypeLike | None) -> None:
        """Write an object by the general path, and prime the fast path for its dtype."""
        last = _last_codec
        c = last[1] if dtype is last[0] else _codec_for(value, dtype)
        st, size = c.struct, c.size
        if st is not None:
            start, end, view, base, bitmap, bbase = self._window
            if type(addr) is not int:
                addr = _u64(addr, "address")
            if not start <= addr <= end - size:
                window = self._window_holding(addr, size)
                if window is None:
                    return self.write_slice(c.pack(value), addr)
                start, end, view, base, bitmap, bbase = window
            if dtype is not None and c.native is not None and not view.readonly:
                if self._wfasts[0] is not dtype:  # (the table first: threads race)
                    self._wfasts = _fast_table(dtype, c, len(self._windows))
                self._wfast = _write_entry(dtype, c, self._window)
            try:
                _put(view, base + addr - start, c, value)
            except (struct.error, TypeError, ValueError, OverflowError):
                pass  # a bad value or read-only memory: the general path says which
            else:
                if bitmap is not None:
                    bitmap.mark_dirty(bbase + addr - start, size)
                return None
        return self.write_slice(c.pack(value), addr)

    def read_obj(self, addr: Any, dtype: DTypeLike) -> Any:
        """Read one object of ``dtype`` at ``addr`` (vm-memory's ``read_obj``).

        Parameters
        ----------
        addr : int or address
            Where to read it.
        dtype : dtype_like
            Its layout.

        Returns
        -------
        object
            A Python ``int``/``float`` for plain numbers, a ``numpy.void`` record for
            structured dtypes, a numpy scalar otherwise.

        Raises
        ------
        ByteValuedError
            ``dtype`` is not ByteValued.
        PartialBufferError
            The object straddles a hole or the end.
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError
            ``addr`` itself is not backed.
        """
        f = self._rfast
        if dtype is f[0] and type(addr) is int:
            if f[1] <= addr <= f[2]:
                return f[3](f[4], addr + f[5])[0]
            # another window: its entry for this dtype (checked: threads race)
            f = self._rfasts[4](addr >> 21) or self._switch(addr, dtype, False)
            if f[0] is dtype:  # (entries found cover addr: see _switch)
                self._rfast = f
                return f[3](f[4], addr + f[5])[0]
        return self._read_obj(addr, dtype)

    def _read_obj(self, addr: Any, dtype: DTypeLike) -> Any:
        """Read an object by the general path, and prime the fast path for its dtype."""
        last = _last_codec
        c = last[1] if dtype is last[0] else _codec_for(None, dtype)
        size = c.size
        start, end, view, base, _, _ = self._window
        if type(addr) is not int:
            addr = _u64(addr, "address")
        if not start <= addr <= end - size:
            window = self._window_holding(addr, size)
            if window is None:
                buf = bytearray(size)
                self.read_slice(buf, addr)
                return c.unpack(buf)
            start, end, view, base, _, _ = window
        off = base + addr - start
        if c.struct is not None:
            if self._rfasts[0] is not dtype:  # (the table first: threads race)
                self._rfasts = _fast_table(dtype, c, len(self._windows))
            self._rfast = _read_entry(dtype, c, self._window)
            return c.struct.unpack_from(view, off)[0]
        return c.unpack(view[off : off + size])

    def _window_holding(self, addr: int, size: int) -> Window | None:
        """Return (and remember as the last hit) the window holding ``[addr, addr + size)``.

        ``None`` when no single window holds it: the caller takes the piecewise path,
        which reports holes and straddles as the Bytes rules say.
        """
        i = bisect_right(self._wstarts, addr) - 1
        if i < 0 or addr + size > self._windows[i][1]:
            return None
        self._window = window = self._windows[i]
        return window

    def _switch(self, addr: int, dtype: Any, write: bool) -> tuple[Any, ...]:
        """Return the fast-path entry whose range holds ``addr``, or ``NO_FAST``.

        Entries are built on first use and kept per window.  One whose range covers all of
        the address's 2 MiB granule is also filed under it, so the next hop there is one
        dict lookup that needs no range check (a granule a window only partly covers
        keeps taking this bisect).
        """
        table = self._wfasts if write else self._rfasts
        i = bisect_right(self._wstarts, addr) - 1
        if i < 0 or table[0] is not dtype:
            return NO_FAST
        entry = table[1][i]
        if entry is None:
            window = self._windows[i]
            c = table[2]
            entry = _write_entry(dtype, c, window) if write else _read_entry(dtype, c, window)
            table[1][i] = entry
        if not entry[1] <= addr <= entry[2]:
            return NO_FAST
        g = addr >> _GRANULE
        covers = entry[1] <= g << _GRANULE and ((g + 1) << _GRANULE) - 1 <= entry[2]
        if covers and len(table[3]) < _MAX_GRANULES:
            table[3][g] = entry
        return entry

    # -- streams -------------------------------------------------------------------------
    def read_volatile_from(self, addr: Any, src: Any, count: int) -> int:
        """Read up to ``count`` bytes from a stream straight into memory at ``addr``.

        One read per contiguous piece.  Unlike vm-memory, a short read ends the
        operation (vm-memory goes on into the next piece, leaving a gap of stale bytes
        in guest memory that its count does not reveal).

        Parameters
        ----------
        addr : int or address
            Where the bytes go.
        src : binary file, socket or int fd
            The source.
        count : int
            The most bytes to read.

        Returns
        -------
        int
            Bytes read (0 at end of stream or for ``count == 0``).

        Raises
        ------
        StreamError
            The source failed (the ``OSError`` is ``__cause__``).
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError
            ``addr`` itself is not backed.
        ReadOnlyMemoryError
            The memory is mapped read-only.
        """
        count = _u64(count, "count")
        addr = _u64(addr, "address")
        done = 0
        for view, off, n, bitmap, boff in self._writable(
            self._stream_pieces(addr, count, True), addr
        ):
            got = _read_marked(src, view, off, n, bitmap, boff, done)
            done += got
            if got < n:
                break
        return done

    def read_exact_volatile_from(self, addr: Any, src: Any, count: int) -> None:
        """Read exactly ``count`` bytes from a stream into memory at ``addr``.

        Short reads are retried until each piece is full (vm-memory retries only on a
        volatile slice, and reports a short read on guest memory as a partial buffer).

        Parameters
        ----------
        addr : int or address
            Where the bytes go.
        src : binary file, socket or int fd
            The source.
        count : int
            Bytes to read.

        Raises
        ------
        PartialBufferError
            A hole or the end of guest memory cut the range short, or (on guest memory
            and regions reached through it) the stream ended early.
        StreamError
            The source failed, or ended early on a volatile slice or region.
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError
            The range is not backed (see each object's rules).
        ReadOnlyMemoryError
            The memory is mapped read-only.
        """
        count = _u64(count, "count")
        addr = _u64(addr, "address")
        done = 0
        for view, off, n, bitmap, boff in self._writable(
            self._exact_pieces(addr, count, True), addr
        ):
            filled = 0
            while filled < n:
                got = _read_marked(
                    src, view, off + filled, n - filled, bitmap, boff + filled, done + filled
                )
                if not got:
                    raise self._short_stream(count, done + filled)
                filled += got
            done += n
        if done != count:
            raise PartialBufferError(count, done)

    def write_volatile_to(self, addr: Any, dst: Any, count: int) -> int:
        """Write up to ``count`` bytes at ``addr`` straight from memory to a stream.

        Each contiguous piece is written fully; a hole ends the operation.

        Parameters
        ----------
        addr : int or address
            Where the bytes come from.
        dst : binary file, socket or int fd
            The sink.
        count : int
            The most bytes to write.

        Returns
        -------
        int
            Bytes written.

        Raises
        ------
        StreamError
            The sink failed or accepted nothing (the ``OSError`` is ``__cause__``).
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError
            ``addr`` itself is not backed.
        """
        count = _u64(count, "count")
        done = 0
        for view, off, n, _, _ in self._stream_pieces(_u64(addr, "address"), count):
            done += write_all(dst, view[off : off + n], done)
        return done

    def write_all_volatile_to(self, addr: Any, dst: Any, count: int) -> None:
        """Write exactly ``count`` bytes at ``addr`` to a stream, or raise.

        Parameters
        ----------
        addr : int or address
            Where the bytes come from.
        dst : binary file, socket or int fd
            The sink.
        count : int
            Bytes to write.

        Raises
        ------
        PartialBufferError
            A hole or the end cut the range short (the bytes before it were written).
        StreamError
            The sink failed.
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError
            The range is not backed.
        """
        count = _u64(count, "count")
        done = 0
        for view, off, n, _, _ in self._exact_pieces(_u64(addr, "address"), count):
            done += write_all(dst, view[off : off + n], done)
        if done != count:
            raise PartialBufferError(count, done)

    # -- atomics -------------------------------------------------------------------------
    @staticmethod
    def _atomic_codec(dtype: DTypeLike) -> Codec:
        c = codec(dtype)
        if not c.atomic:
            raise ByteValuedError(
                c.dtype,
                "load/store need a host-byte-order integer of 1, 2, 4 or 8 bytes "
                "(vm-memory's AtomicAccess types)",
            )
        return c

    def store(self, value: Any, addr: Any, dtype: DTypeLike | None = None) -> None:
        """Store an integer at ``addr`` with one aligned access (vm-memory's ``store``).

        The access is a single naturally aligned store of the integer's width, so other
        threads and the guest never see it torn.  Ordering is the host's for plain
        aligned stores (x86: release).

        Parameters
        ----------
        value : int
            The value.
        addr : int or address
            Where; must be naturally aligned and inside one contiguous piece.
        dtype : dtype_like, optional
            An integer dtype of 1, 2, 4 or 8 bytes in host order; defaults to
            ``value.dtype``.

        Raises
        ------
        ByteValuedError
            The dtype is not an atomic integer type, or the value does not fit.
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError, MisalignedError
            The address is unbacked, misaligned, or the value would straddle a piece.
        ReadOnlyMemoryError
            The memory is mapped read-only.
        """
        c = self._atomic_codec(dtype if dtype is not None else _value_dtype(value, None).dtype)
        addr = _u64(addr, "address")
        view, off, n, bitmap, boff = self._atomic_piece(addr, c.size, True)
        if view.readonly:
            raise ReadOnlyMemoryError(addr)
        try:
            _put(view, off, c, value)  # aligned (checked above): one store
        except (struct.error, ValueError, TypeError, OverflowError):
            c.pack(value)  # raises the clear ByteValuedError
            raise ByteValuedError(value, f"store needs an integer for {c.dtype}") from None
        if bitmap is not None:
            bitmap.mark_dirty(boff, n)

    def load(self, addr: Any, dtype: DTypeLike) -> int:
        """Load an integer at ``addr`` with one aligned access (vm-memory's ``load``).

        Parameters
        ----------
        addr : int or address
            Where; must be naturally aligned and inside one contiguous piece.
        dtype : dtype_like
            An integer dtype of 1, 2, 4 or 8 bytes in host order.

        Returns
        -------
        int
            The value.

        Raises
        ------
        ByteValuedError
            The dtype is not an atomic integer type.
        InvalidGuestAddressError, InvalidBackendAddressError, OutOfBoundsError, MisalignedError
            The address is unbacked, misaligned, or the value would straddle a piece.
        """
        c = self._atomic_codec(dtype)
        view, off, _, _, _ = self._atomic_piece(_u64(addr, "address"), c.size)
        # host-order struct formats unpack with one fixed-size memcpy: a single load
        return c.struct.unpack_from(view, off)[0]  # type: ignore[union-attr]
