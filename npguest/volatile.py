"""Bounded views of memory: :class:`VolatileSlice`, :class:`VolatileRef`, :class:`VolatileArrayRef`.

A :class:`VolatileSlice` is a window ``[offset, offset + len)`` over a byte buffer (a
region's mapping, or any writable buffer), carrying the dirty bitmap of that memory
re-based at its start.  Every write through it marks exactly the bytes written; reads
never mark.  Views are zero-copy; deriving one (``subslice``, ``offset``, ``split_at``,
``get_ref``...) is integer arithmetic.

Errors follow vm-memory's ``VolatileMemory`` rules, with one deliberate change: where
vm-memory reports a *host pointer* in ``OutOfBounds`` (``offset``, ``split_at`` and the
stream methods), npguest reports the offset inside the slice, which names the byte at
fault.  ``MisalignedError`` reports the host address, whose alignment is what failed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .access import NO_FAST, NO_FASTS, Bytes, Piece, Window, as_byte_view
from .address import U64_MAX, _u64
from .bitmap import Bitmap, BitmapSlice, NoBitmap, bitmap_or_none
from .dtypes import Codec, codec
from .errors import (
    ByteValuedError,
    MisalignedError,
    OffsetOverflowError,
    OutOfBoundsError,
    ReadOnlyMemoryError,
    StreamError,
    TooBigError,
)

__all__ = ["PtrGuard", "VolatileArrayRef", "VolatileRef", "VolatileSlice", "host_address"]

_ISIZE_MAX = (1 << 63) - 1


def host_address(view: memoryview) -> int:
    """Return the host virtual address of the first byte of a buffer.

    Parameters
    ----------
    view : memoryview
        Any buffer.

    Returns
    -------
    int
        Its data pointer.
    """
    return np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]


class PtrGuard:
    """A raw pointer to memory and its length (vm-memory's ``PtrGuard``/``PtrGuardMut``).

    Writes through the pointer are **not** dirty-tracked: mark them yourself.

    Parameters
    ----------
    ptr : int
        The host address.
    length : int
        Bytes valid from it.
    """

    __slots__ = ("_len", "_ptr")

    def __init__(self, ptr: int, length: int) -> None:
        self._ptr = ptr
        self._len = length

    def as_ptr(self) -> int:
        """Return the host address.

        Returns
        -------
        int
            The pointer value.
        """
        return self._ptr

    def len(self) -> int:
        """Return the number of bytes valid at the pointer.

        Returns
        -------
        int
            The length.
        """
        return self._len

    def __repr__(self) -> str:
        return f"PtrGuard({self._ptr:#x}, {self._len})"


class _Contiguous(Bytes):
    """One contiguous run of bytes: the Bytes hooks shared by slices and regions.

    Subclasses set ``_mv`` (the whole backing buffer), ``_off``, ``_len``, ``_bitmap``
    (``None`` for no tracking), ``_boff`` (bitmap offset of byte 0) and ``_host``
    (host address of ``_mv[0]``), and say which error an out-of-range access raises.
    """

    __slots__ = ()
    _mv: memoryview
    _off: int
    _len: int
    _bitmap: Bitmap | None
    _boff: int
    _host: int
    _window: Window
    _windows: tuple[Window, ...]
    _wstarts = (0,)

    def _set_window(self) -> None:
        """Publish the whole run as the one window of the object fast path."""
        self._window = (0, self._len, self._mv, self._off, self._bitmap, self._boff)
        self._windows = (self._window,)
        self._rfast = self._wfast = NO_FAST
        self._rfasts = self._wfasts = NO_FASTS

    def _oob(self, addr: int) -> Exception:  # pragma: no cover - abstract
        raise NotImplementedError

    def _misaligned(self, addr: int, host: int, alignment: int) -> Exception:  # pragma: no cover
        raise NotImplementedError

    def _overflow(self, addr: int, count: int) -> Exception:
        return OffsetOverflowError(addr, count)

    def _short_stream(self, expected: int, completed: int) -> Exception:
        return StreamError("failed to fill whole buffer", completed)

    def _piece(self, addr: int, n: int) -> Piece:
        return (self._mv, self._off + addr, n, self._bitmap, self._boff + addr)

    def _span_end(self, addr: int, count: int) -> int:
        end = addr + count
        if end > U64_MAX:
            raise self._overflow(addr, count)
        if end > self._len:
            raise self._oob(end)
        return end

    def _pieces(self, addr: int, count: int, write: bool = False) -> list[Piece]:
        if not count:
            return []
        if addr >= self._len:
            raise self._oob(addr)
        return [self._piece(addr, min(count, self._len - addr))]

    def _stream_pieces(self, addr: int, count: int, write: bool = False) -> list[Piece]:
        if addr > self._len:
            raise self._oob(addr)
        n = min(count, self._len - addr)
        return [self._piece(addr, n)] if n else []

    def _exact_pieces(self, addr: int, count: int, write: bool = False) -> list[Piece]:
        self._span_end(addr, count)
        return [self._piece(addr, count)] if count else []

    def _atomic_piece(self, addr: int, size: int, write: bool = False) -> Piece:
        self._span_end(addr, size)
        host = self._host + self._off + addr
        if host % size:
            raise self._misaligned(addr, host, size)
        return self._piece(addr, size)


class VolatileSlice(_Contiguous):
    """A bounded, dirty-tracked window of memory (vm-memory's ``VolatileSlice``).

    Parameters
    ----------
    buf : buffer
        Any C-contiguous buffer (``bytearray``, numpy array, ``mmap``...).  Read-only
        buffers give a slice that refuses writes.
    bitmap : Bitmap, optional
        Dirty bitmap of ``buf``, indexed by byte offset (default: no tracking).

    Raises
    ------
    ByteValuedError
        ``buf`` is a strided (not C-contiguous) view: a slice is contiguous memory.
    TypeError
        ``buf`` is not a buffer.

    Examples
    --------
    >>> s = VolatileSlice(bytearray(16))
    >>> s.write(b"abc", 14), s.read_bytes(14, 2), len(s.subslice(4, 8))
    (2, b'ab', 8)
    """

    __slots__ = (
        "_bitmap",
        "_boff",
        "_host",
        "_len",
        "_mv",
        "_off",
        "_rfast",
        "_rfasts",
        "_wfast",
        "_wfasts",
        "_window",
        "_windows",
    )

    def __init__(self, buf: Any, bitmap: Bitmap | None = None) -> None:
        mv = as_byte_view(buf)
        if not mv.c_contiguous:  # (as_byte_view passes strided byte views on: copies take them)
            raise ByteValuedError(
                f"memoryview with strides {mv.strides}", "a VolatileSlice needs contiguous memory"
            )
        self._mv, self._off, self._len = mv, 0, len(mv)
        self._bitmap, self._boff = bitmap_or_none(bitmap), 0
        self._host = host_address(mv)
        self._set_window()

    @classmethod
    def _over(
        cls, mv: memoryview, off: int, length: int, bitmap: Bitmap | None, boff: int, host: int
    ) -> VolatileSlice:
        s = cls.__new__(cls)
        s._mv, s._off, s._len, s._bitmap, s._boff, s._host = mv, off, length, bitmap, boff, host
        s._set_window()
        return s

    def _oob(self, addr: int) -> Exception:
        return OutOfBoundsError(addr)

    def _misaligned(self, addr: int, host: int, alignment: int) -> Exception:
        return MisalignedError(host, alignment)

    # -- size and identity ---------------------------------------------------------------
    def len(self) -> int:
        """Return the length in bytes.

        Returns
        -------
        int
            The length.
        """
        return self._len

    def __len__(self) -> int:
        return self._len

    def is_empty(self) -> bool:
        """Return whether the slice has no bytes.

        Returns
        -------
        bool
            ``len() == 0``.
        """
        return not self._len

    def bitmap(self) -> Bitmap:
        """Return the slice's dirty bitmap (offset 0 = the slice's first byte).

        Returns
        -------
        Bitmap
            A :class:`~npguest.bitmap.BitmapSlice`, or :class:`~npguest.bitmap.NoBitmap`.
        """
        if self._bitmap is None:
            return NoBitmap()
        return BitmapSlice(self._bitmap, self._boff)

    def ptr_guard(self) -> PtrGuard:
        """Return the slice's host address and length (writes through it are untracked).

        Returns
        -------
        PtrGuard
            The raw pointer holder.
        """
        return PtrGuard(self._host + self._off, self._len)

    ptr_guard_mut = ptr_guard

    def is_writable(self) -> bool:
        """Return whether the memory under the slice accepts writes.

        Returns
        -------
        bool
            ``False`` for read-only mappings and buffers.
        """
        return not self._mv.readonly

    def as_array(self) -> np.ndarray:
        """Return a zero-copy ``uint8`` numpy view of the slice.

        Writes through the array are **not** dirty-tracked; call
        ``bitmap().mark_dirty(offset, length)`` after them.

        Returns
        -------
        numpy.ndarray
            The view (read-only if the memory is).
        """
        return np.frombuffer(self._mv, dtype=np.uint8, count=self._len, offset=self._off)

    def __repr__(self) -> str:
        return f"VolatileSlice(host={self._host + self._off:#x}, len={self._len})"

    def _repr_html_(self) -> str:
        """Return the hexdump Jupyter shows (see :func:`npguest.display.slice_html`)."""
        from .display import slice_html

        return slice_html(self)

    # -- derived slices ------------------------------------------------------------------
    def subslice(self, offset: int, count: int) -> VolatileSlice:
        """Return the sub-range ``[offset, offset + count)``.

        Parameters
        ----------
        offset : int
            Start, relative to this slice.
        count : int
            Length.

        Returns
        -------
        VolatileSlice
            The view (its bitmap re-based at ``offset``).

        Raises
        ------
        OffsetOverflowError
            ``offset + count`` passes ``2**64 - 1``.
        OutOfBoundsError
            ``offset + count > len()`` (``addr`` is that end).

        Examples
        --------
        >>> VolatileSlice(bytearray(100)).subslice(99, 2)
        Traceback (most recent call last):
        ...
        npguest.errors.OutOfBoundsError: address 0x65 is out of bounds
        """
        offset, count = _u64(offset, "offset"), _u64(count, "count")
        self._span_end(offset, count)
        return self._over(
            self._mv, self._off + offset, count, self._bitmap, self._boff + offset, self._host
        )

    get_slice = subslice

    def as_volatile_slice(self) -> VolatileSlice:
        """Return this slice (vm-memory's ``VolatileMemory::as_volatile_slice``).

        Returns
        -------
        VolatileSlice
            ``self``.
        """
        return self

    def compute_end_offset(self, base: int, offset: int) -> int:
        """Return ``base + offset`` if it is ``<= len()`` (an empty access at the end is fine).

        Parameters
        ----------
        base, offset : int
            The start and the length.

        Returns
        -------
        int
            The end offset.

        Raises
        ------
        OffsetOverflowError, OutOfBoundsError
            As :meth:`subslice`.
        """
        return self._span_end(_u64(base, "base"), _u64(offset, "offset"))

    def offset(self, count: int) -> VolatileSlice:
        """Return the slice without its first ``count`` bytes.

        Parameters
        ----------
        count : int
            Bytes to drop; ``count == len()`` gives an empty slice.

        Returns
        -------
        VolatileSlice
            The tail.

        Raises
        ------
        OutOfBoundsError
            ``count > len()``.
        """
        count = _u64(count, "count")
        if count > self._len:
            raise OutOfBoundsError(count)
        return self.subslice(count, self._len - count)

    def split_at(self, mid: int) -> tuple[VolatileSlice, VolatileSlice]:
        """Split into ``[0, mid)`` and ``[mid, len())``.

        Parameters
        ----------
        mid : int
            The split point, ``<= len()``.

        Returns
        -------
        tuple of VolatileSlice
            Head and tail.

        Raises
        ------
        OutOfBoundsError
            ``mid > len()``.
        """
        tail = self.offset(mid)
        return self.subslice(0, mid), tail

    # -- bulk copies ---------------------------------------------------------------------
    def copy_to(self, buf: Any) -> int:
        """Copy whole elements out into ``buf``; return how many.

        Parameters
        ----------
        buf : writable buffer
            A typed buffer (numpy array, ``array.array``, ``bytearray``); its item size
            is the element size.

        Returns
        -------
        int
            Elements copied: ``min(len() // itemsize, number of elements of buf)``; for
            zero-size elements (which any slice holds without limit), all of ``buf``'s.
        """
        dst = memoryview(buf)
        out = as_byte_view(dst, writable=True)
        count, n = self._fitting(dst)
        out[:n] = self._mv[self._off : self._off + n]
        return count

    def copy_from(self, buf: Any) -> None:
        """Copy whole elements in from ``buf`` (as many as fit) and mark them dirty.

        Parameters
        ----------
        buf : buffer
            A typed buffer; ``min(len() // itemsize, elements)`` elements are copied and
            a trailing partial element of the slice is left untouched.

        Raises
        ------
        ReadOnlyMemoryError
            The memory is read-only.
        """
        src = memoryview(buf)
        _, n = self._fitting(src)
        if not n:
            return
        if self._mv.readonly:
            raise ReadOnlyMemoryError(self._off)
        self._mv[self._off : self._off + n] = as_byte_view(src)[:n]
        if self._bitmap is not None:
            self._bitmap.mark_dirty(self._boff, n)

    def _fitting(self, view: memoryview) -> tuple[int, int]:
        """Return how many of ``view``'s elements fit in the slice, and their bytes.

        vm-memory computes ``min(len / size_of::<T>(), buf.len())``, which divides by
        zero for a zero-size ``T``; here such elements all fit, and none has a byte.
        """
        item = view.itemsize
        if not item:
            return math.prod(view.shape), 0
        count = min(self._len // item, view.nbytes // item)
        return count, count * item

    def copy_to_volatile_slice(self, dst: VolatileSlice) -> None:
        """Copy ``min(len(), len(dst))`` bytes into ``dst`` (overlap-safe) and mark them.

        Parameters
        ----------
        dst : VolatileSlice
            The destination; it may overlap this slice (memmove semantics).

        Raises
        ------
        ReadOnlyMemoryError
            ``dst`` is read-only.
        """
        n = min(self._len, dst._len)
        if not n:
            return
        if dst._mv.readonly:
            raise ReadOnlyMemoryError(dst._off)
        src = np.frombuffer(self._mv, np.uint8, n, self._off)
        np.copyto(np.frombuffer(dst._mv, np.uint8, n, dst._off), src)
        if dst._bitmap is not None:
            dst._bitmap.mark_dirty(dst._boff, n)

    # -- typed references ----------------------------------------------------------------
    def get_ref(self, offset: int, dtype: DTypeLike) -> VolatileRef:
        """Return a reference to one object of ``dtype`` at ``offset`` (no alignment needed).

        Parameters
        ----------
        offset : int
            Where the object starts.
        dtype : dtype_like
            Its layout.

        Returns
        -------
        VolatileRef
            The reference.

        Raises
        ------
        OutOfBoundsError
            The object does not fit.
        ByteValuedError
            ``dtype`` is not ByteValued.
        """
        c = codec(dtype)
        return VolatileRef(self.subslice(offset, c.size), c.dtype)

    def get_array_ref(self, offset: int, n: int, dtype: DTypeLike) -> VolatileArrayRef:
        """Return a reference to ``n`` consecutive objects of ``dtype`` at ``offset``.

        Parameters
        ----------
        offset : int
            Where the first object starts.
        n : int
            Number of objects.
        dtype : dtype_like
            Their layout.

        Returns
        -------
        VolatileArrayRef
            The reference (``n`` elements, even of a zero-size ``dtype``).

        Raises
        ------
        TooBigError
            ``n * itemsize`` does not fit a signed 64-bit size (checked first).
        OutOfBoundsError
            The objects do not fit.
        ByteValuedError
            ``dtype`` is not ByteValued.
        """
        c = codec(dtype)
        n = _u64(n, "n")
        if n * c.size > _ISIZE_MAX:
            raise TooBigError(n, c.size)
        return VolatileArrayRef(self.subslice(offset, n * c.size), c.dtype, n)


class _TypedView:
    """What a reference to typed objects in memory shares: its layout and its bytes."""

    __slots__ = ("_codec", "_slice")
    _codec: Codec
    _slice: VolatileSlice

    @property
    def dtype(self) -> np.dtype:
        """numpy.dtype: The layout of the objects referred to."""
        return self._codec.dtype

    def bitmap(self) -> Bitmap:
        """Return the dirty bitmap at the first byte referred to.

        Returns
        -------
        Bitmap
            As :meth:`VolatileSlice.bitmap`.
        """
        return self._slice.bitmap()

    def ptr_guard(self) -> PtrGuard:
        """Return the host address of the first byte (writes through it are untracked).

        Returns
        -------
        PtrGuard
            The raw pointer holder.
        """
        return self._slice.ptr_guard()

    ptr_guard_mut = ptr_guard

    def to_slice(self) -> VolatileSlice:
        """Return the bytes referred to as a slice.

        Returns
        -------
        VolatileSlice
            The slice.
        """
        return self._slice


class VolatileRef(_TypedView):
    """A reference to one object in memory (vm-memory's ``VolatileRef``).

    Parameters
    ----------
    vslice : VolatileSlice
        Exactly the object's bytes.
    dtype : dtype_like
        The object's layout.

    Raises
    ------
    ValueError
        ``len(vslice)`` is not the dtype's size.

    Examples
    --------
    >>> r = VolatileSlice(bytearray(8)).get_ref(2, '<u4')
    >>> r.store(7); r.load(), len(r)
    (7, 4)
    """

    __slots__ = ()

    def __init__(self, vslice: VolatileSlice, dtype: DTypeLike) -> None:
        self._codec: Codec = codec(dtype)
        if len(vslice) != self._codec.size:
            raise ValueError(
                f"a {self._codec.dtype} needs {self._codec.size} bytes, got {len(vslice)}"
            )
        self._slice = vslice

    def len(self) -> int:
        """Return the object's size in bytes.

        Returns
        -------
        int
            ``dtype.itemsize``.
        """
        return self._codec.size

    __len__ = len

    def load(self) -> Any:
        """Read the object.

        Returns
        -------
        object
            As :meth:`~npguest.access.Bytes.read_obj`.
        """
        return self._slice.read_obj(0, self._codec.dtype)

    def store(self, value: Any) -> None:
        """Write the object and mark it dirty.

        Parameters
        ----------
        value : object
            The new value.
        """
        self._slice.write_obj(value, 0, self._codec.dtype)

    def __repr__(self) -> str:
        return f"VolatileRef({self._codec.dtype}, {self._slice!r})"


class VolatileArrayRef(_TypedView):
    """A reference to consecutive objects in memory (vm-memory's ``VolatileArrayRef``).

    Parameters
    ----------
    vslice : VolatileSlice
        The objects' bytes (a whole number of items).
    dtype : dtype_like, optional
        The items' layout (default ``uint8``, as vm-memory's ``From<VolatileSlice>``).
    n : int, optional
        Number of items: by default ``len(vslice) // itemsize``, and 0 for a zero-size
        dtype (whose count the bytes cannot tell).

    Raises
    ------
    ValueError
        ``vslice`` is not exactly ``n`` items (or not a whole number of them).

    Examples
    --------
    >>> a = VolatileSlice(bytearray(16)).get_array_ref(0, 4, '<u4')
    >>> a.copy_from(np.arange(4, dtype='<u4')); a.load(3), a.to_numpy().tolist()
    (3, [0, 1, 2, 3])
    """

    __slots__ = ("_n",)

    def __init__(
        self, vslice: VolatileSlice, dtype: DTypeLike = np.uint8, n: int | None = None
    ) -> None:
        self._codec: Codec = codec(dtype)
        size, dt = self._codec.size, self._codec.dtype
        if n is None:
            if size and len(vslice) % size:
                raise ValueError(f"{len(vslice)} bytes is not a whole number of {dt}")
            n = len(vslice) // size if size else 0
        n = _u64(n, "n")
        if n * size != len(vslice):
            raise ValueError(f"{len(vslice)} bytes is not {n} items of {dt}")
        self._slice, self._n = vslice, n

    def len(self) -> int:
        """Return the number of elements.

        Returns
        -------
        int
            Elements.
        """
        return self._n

    __len__ = len

    def is_empty(self) -> bool:
        """Return whether there are no elements.

        Returns
        -------
        bool
            ``len() == 0``.
        """
        return not self._n

    def element_size(self) -> int:
        """Return the size of one element in bytes.

        Returns
        -------
        int
            ``dtype.itemsize``.
        """
        return self._codec.size

    def ref_at(self, index: int) -> VolatileRef:
        """Return a reference to element ``index``.

        Parameters
        ----------
        index : int
            ``0 <= index < len()`` (vm-memory panics otherwise; npguest raises).

        Returns
        -------
        VolatileRef
            The element.

        Raises
        ------
        OutOfBoundsError
            ``index`` is out of range (``addr`` is the element's byte offset).
        """
        index = _u64(index, "index")
        if index >= self._n:
            raise OutOfBoundsError(index * self._codec.size)
        return VolatileRef(
            self._slice.subslice(index * self._codec.size, self._codec.size), self.dtype
        )

    def load(self, index: int) -> Any:
        """Read element ``index``.

        Parameters
        ----------
        index : int
            The element.

        Returns
        -------
        object
            Its value.
        """
        return self.ref_at(index).load()

    def store(self, index: int, value: Any) -> None:
        """Write element ``index`` and mark it dirty.

        Parameters
        ----------
        index : int
            The element.
        value : object
            Its new value.
        """
        self.ref_at(index).store(value)

    def copy_to(self, buf: Any) -> int:
        """Copy elements into a typed buffer of the same element size; return how many.

        Parameters
        ----------
        buf : writable buffer
            The destination (e.g. a numpy array of ``dtype``).

        Returns
        -------
        int
            ``min(len(), elements of buf)``.

        Raises
        ------
        ByteValuedError
            ``buf``'s item size is not the element size.
        """
        self._same_item(buf)
        return min(self._n, self._slice.copy_to(buf))

    def copy_from(self, buf: Any) -> None:
        """Copy ``min(len(), elements of buf)`` elements in and mark them dirty.

        Parameters
        ----------
        buf : buffer
            The source, with the element size as its item size.

        Raises
        ------
        ByteValuedError
            ``buf``'s item size is not the element size.
        ReadOnlyMemoryError
            The memory is read-only.
        """
        self._same_item(buf)
        self._slice.copy_from(buf)

    def copy_to_volatile_slice(self, dst: VolatileSlice) -> None:
        """Copy ``min(len() * element_size(), len(dst))`` bytes into ``dst`` (memmove).

        Parameters
        ----------
        dst : VolatileSlice
            The destination.
        """
        self._slice.copy_to_volatile_slice(dst)

    def to_numpy(self) -> np.ndarray:
        """Return a copy of the elements as a numpy array of ``dtype``.

        Returns
        -------
        numpy.ndarray
            ``len()`` elements.
        """
        s = self._slice
        if not self._codec.size:  # numpy cannot view items of no bytes
            return np.zeros(self._n, self.dtype)
        return np.frombuffer(s._mv, self.dtype, self._n, s._off).copy()

    def _same_item(self, buf: Any) -> None:
        item, size = memoryview(buf).itemsize, self._codec.size
        if item != size:
            raise ByteValuedError(
                self.dtype, f"buffer items are {item} bytes but elements of {self.dtype} are {size}"
            )

    def __repr__(self) -> str:
        return f"VolatileArrayRef({self.dtype}, n={self._n}, {self._slice!r})"
