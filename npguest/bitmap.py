"""Dirty-page bitmaps: the Bitmap protocol, NoBitmap, AtomicBitmap and BitmapSlice.

Every region carries a bitmap indexed by the byte offset inside the region, and every
npguest write path marks the bytes it wrote (``mark_dirty(offset, length)``).  Reads
never mark.  Writes through raw escape hatches (host addresses, numpy views of a mapping)
are not tracked; call ``mark_dirty`` yourself after them.

:class:`NoBitmap` (the default) tracks nothing and costs nothing: npguest's write paths
skip the call entirely when a region has no bitmap.  A bitmap class is chosen at
construction as a factory ``factory(byte_size, page_size) -> Bitmap`` (e.g.
``GuestMemoryMmap.from_ranges(ranges, bitmap=AtomicBitmap, page_size=4096)``).

:class:`AtomicBitmap` keeps one bit per page packed into ``uint64`` words (bit ``i % 64``
of word ``i // 64`` is page ``i``).  Bits are set and cleared by numba kernels that
release the GIL and use atomic read-modify-write instructions, so concurrent writers
never lose a bit and :meth:`AtomicBitmap.get_and_reset` never drops a concurrent mark.
"""

from __future__ import annotations

import mmap
import operator
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, NoReturn, Protocol, runtime_checkable

import numpy as np

from .errors import BitmapError

__all__ = [
    "AtomicBitmap",
    "Bitmap",
    "BitmapFactory",
    "BitmapSlice",
    "NoBitmap",
    "bitmap_or_none",
    "mark_many",
]

_MOD = 1 << 64
_kernels: ModuleType | None = None


def _k() -> ModuleType:
    """Return the kernel module, imported (with numba) on first use."""
    global _kernels
    if _kernels is None:
        from . import _kernels as module

        _kernels = module
    return _kernels


def _decode_ranges(words: np.ndarray, shift: int, byte_size: int) -> np.ndarray:
    """Decode packed words as ``(start, length)`` byte ranges with this host's best kernel."""
    k = _k()
    if k.VECTOR_EDGES:
        return k.bitmap_ranges_vector(words, shift, byte_size, k.DENSE_EDGES)
    return k.bitmap_ranges(words, shift, byte_size)


@runtime_checkable
class Bitmap(Protocol):
    """What npguest needs of a dirty bitmap (vm-memory's ``Bitmap`` trait)."""

    def mark_dirty(self, offset: int, length: int) -> None:
        """Mark the pages touching ``[offset, offset + length)`` dirty.

        Parameters
        ----------
        offset : int
            First byte written.
        length : int
            Bytes written; 0 marks nothing.
        """
        ...  # pragma: no cover - protocol

    def dirty_at(self, offset: int) -> bool:
        """Return whether the page holding byte ``offset`` is dirty.

        Parameters
        ----------
        offset : int
            A byte offset.

        Returns
        -------
        bool
            ``True`` if that page was marked.
        """
        ...  # pragma: no cover - protocol

    def slice_at(self, offset: int) -> Bitmap:
        """Return a view of this bitmap whose offset 0 is ``offset`` here.

        Parameters
        ----------
        offset : int
            The new origin.

        Returns
        -------
        Bitmap
            The re-based view.
        """
        ...  # pragma: no cover - protocol


BitmapFactory = Callable[[int, int], Bitmap]
"""Builds a region's bitmap: ``factory(byte_size, page_size)``."""


class NoBitmap:
    """No dirty tracking (vm-memory's ``()``): marks are ignored, nothing is ever dirty.

    Examples
    --------
    >>> b = NoBitmap()
    >>> b.mark_dirty(0, 4096); b.dirty_at(0)
    False
    """

    __slots__ = ()

    def __init__(self, byte_size: int = 0, page_size: int = 4096) -> None:
        """Accept and ignore the factory arguments, so the class itself is a factory."""

    def mark_dirty(self, offset: int, length: int) -> None:
        """Do nothing.

        Parameters
        ----------
        offset, length : int
            Ignored.
        """

    def dirty_at(self, offset: int) -> bool:
        """Return ``False``: nothing is tracked.

        Parameters
        ----------
        offset : int
            Ignored.

        Returns
        -------
        bool
            Always ``False``.
        """
        return False

    def slice_at(self, offset: int) -> NoBitmap:
        """Return ``self``.

        Parameters
        ----------
        offset : int
            Ignored.

        Returns
        -------
        NoBitmap
            This bitmap.
        """
        return self

    def __repr__(self) -> str:
        return "NoBitmap()"


class BitmapSlice:
    """A view of a bitmap at a byte offset (vm-memory's ``BaseSlice``).

    Offsets compose with wrapping 64-bit addition, as in vm-memory.

    Parameters
    ----------
    inner : Bitmap
        The bitmap viewed.
    offset : int
        Byte offset in ``inner`` that is offset 0 of the view.

    Examples
    --------
    >>> class Record:
    ...     def __init__(self): self.marks = []
    ...     def mark_dirty(self, offset, length): self.marks.append((offset, length))
    ...     def dirty_at(self, offset): return False
    ...     def slice_at(self, offset): return BitmapSlice(self, offset)
    >>> r = Record(); BitmapSlice(r, 4096).slice_at(16).mark_dirty(1, 2); r.marks
    [(4113, 2)]
    """

    __slots__ = ("inner", "offset")

    def __init__(self, inner: Bitmap, offset: int) -> None:
        self.inner = inner
        self.offset = operator.index(offset) % _MOD

    def mark_dirty(self, offset: int, length: int) -> None:
        """Mark ``[offset, offset + length)`` of the view dirty in the inner bitmap.

        Parameters
        ----------
        offset : int
            Offset in the view.
        length : int
            Bytes written.
        """
        self.inner.mark_dirty((self.offset + offset) % _MOD, length)

    def dirty_at(self, offset: int) -> bool:
        """Return whether the page of view offset ``offset`` is dirty.

        Parameters
        ----------
        offset : int
            Offset in the view.

        Returns
        -------
        bool
            The inner bitmap's answer.
        """
        return self.inner.dirty_at((self.offset + offset) % _MOD)

    def slice_at(self, offset: int) -> BitmapSlice:
        """Return a view at ``offset`` of this view (offsets compose).

        Parameters
        ----------
        offset : int
            Offset in this view.

        Returns
        -------
        BitmapSlice
            A view of the same inner bitmap.
        """
        return BitmapSlice(self.inner, self.offset + offset)

    def __repr__(self) -> str:
        return f"BitmapSlice({self.inner!r}, {self.offset:#x})"


def _count(name: str, value: Any) -> int:
    """Validate a non-negative integer argument."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < 0:
        raise BitmapError(name, value, "must not be negative")
    return value


_INT64_MAX = np.int64(2**63 - 1)


def _int64s(values: Any) -> np.ndarray:
    """Return a flat ``int64`` copy of integers, unsigned ones clipped to ``2**63 - 1``.

    (Offsets that large are past any bitmap's end anyway.)
    """
    arr = np.asarray(values)
    if arr.dtype.kind == "u":
        arr = np.minimum(arr, np.uint64(_INT64_MAX))
    return np.ascontiguousarray(arr, dtype=np.int64).reshape(-1)


def _negative(start: int, length: int) -> NoReturn:
    """Raise the error of a negative ``start`` or ``length``."""
    if start < 0:
        raise BitmapError("offset", start, "must not be negative")
    raise BitmapError("length", length, "must not be negative")


class AtomicBitmap:
    """One dirty bit per page, packed into ``uint64`` words (vm-memory's ``AtomicBitmap``).

    Bit ``i % 64`` of word ``i // 64`` is page ``i``: bytes ``[i * page_size, (i + 1) *
    page_size)``.  Offsets past the end are ignored, as in vm-memory.

    Marks take one of two lanes, both lossless under threads.  Ranges (``write_slice``,
    batch writes) are set in the packed words by kernels that release the GIL and use
    atomic ORs.  A single page marked from Python (a scalar ``write_obj``) is one plain
    byte store into a page byte map: no read-modify-write, so nothing to lose, and far
    cheaper than a kernel call.  Every query folds the byte map in.  :meth:`get_and_reset`
    takes the words with atomic exchanges, then the byte map in one kernel that keeps the
    GIL (under which alone it is written): a mark racing with it lands either in the
    returned words or in the bitmap afterwards, never in neither.

    Parameters
    ----------
    byte_size : int
        Bytes covered (the region's size); ``ceil(byte_size / page_size)`` bits.
    page_size : int, optional
        Bytes per bit: any power of two >= 1 (default 4096; 2 MiB for huge pages).

    Raises
    ------
    BitmapError
        ``page_size`` is not a power of two, or a size is negative.
    TypeError
        A size is not an integer.

    Examples
    --------
    >>> b = AtomicBitmap(1025, 128)
    >>> b.len()
    9
    >>> b.set_addr_range(128, 129)          # bytes 128..256: pages 1 and 2
    >>> b.dirty_ranges().tolist()
    [[128, 256]]
    >>> [hex(w) for w in b.get_and_reset()]
    ['0x6']
    >>> b.count()
    0
    """

    __slots__ = (
        "_byte_size",
        "_lock",
        "_nbits",
        "_page_size",
        "_pages",
        "_pinned",
        "_ptr",
        "_pv",
        "_shift",
        "_words",
        "_wv",
    )

    def __init__(self, byte_size: int = 0, page_size: int = 4096) -> None:
        page_size = _count("page_size", page_size)
        if page_size < 1 or page_size & (page_size - 1) or page_size > 1 << 63:
            raise BitmapError("page_size", page_size, "must be a power of two in [1, 2**63]")
        self._page_size = page_size
        self._shift = page_size.bit_length() - 1
        self._pinned = False
        self._lock = threading.Lock()
        self._resize(_count("byte_size", byte_size))

    def _resize(self, byte_size: int) -> None:
        """Size the words and the page byte map for ``byte_size``, keeping the bits."""
        nbits = -(-byte_size // self._page_size)
        nwords = max(-(-nbits // 64), 1)  # never 0 words: always a valid pointer
        words = np.zeros(nwords, dtype=np.uint64)
        pages = np.zeros(nwords * 64, dtype=np.uint8)
        if hasattr(self, "_words"):
            words[: self._words.shape[0]] = self._fold()
        self._byte_size, self._nbits = byte_size, nbits
        self._words, self._pages = words, pages
        self._wv = memoryview(words).cast("B").cast("Q")
        self._pv = memoryview(pages)
        self._ptr = words.ctypes.data

    @classmethod
    def with_len(cls, byte_size: int) -> AtomicBitmap:
        """Return a bitmap of ``byte_size`` bytes with the host's page size.

        vm-memory's ``NewBitmap::with_len``.

        Parameters
        ----------
        byte_size : int
            Bytes covered.

        Returns
        -------
        AtomicBitmap
            The bitmap.
        """
        return cls(byte_size, mmap.PAGESIZE)

    def _pin(self) -> memoryview:
        """Return the page byte map for a fast path to keep; :meth:`enlarge` then refuses.

        Under the lock :meth:`enlarge` takes, so a caller reading ``_ptr`` after pinning
        always reads the words that stay.
        """
        with self._lock:
            self._pinned = True
        return self._pv

    def _fold(self) -> np.ndarray:
        """Return a snapshot of all the words (the page byte map folded in).

        Byte ``64 * w + b`` of the map is bit ``b`` of word ``w``.
        """
        out = np.empty_like(self._words)
        _k().bitmap_fold(self._words, self._pages, out)
        return out

    # -- vm-memory's methods ---------------------------------------------------------------
    def len(self) -> int:
        """Return the number of bits (pages).

        Returns
        -------
        int
            ``ceil(byte_size / page_size)``.
        """
        return self._nbits

    def __len__(self) -> int:
        return self._nbits

    def byte_size(self) -> int:
        """Return the number of bytes covered.

        Returns
        -------
        int
            The byte size.
        """
        return self._byte_size

    def page_size(self) -> int:
        """Return the bytes per bit.

        Returns
        -------
        int
            The page size.
        """
        return self._page_size

    def set_addr_range(self, start: int, length: int) -> None:
        """Mark the pages touching ``[start, start + length)`` dirty.

        Pages past the end are ignored; ``length == 0`` marks nothing.

        Parameters
        ----------
        start : int
            First byte offset.
        length : int
            Bytes.

        Raises
        ------
        BitmapError
            ``start`` or ``length`` is negative.
        """
        start, length = operator.index(start), operator.index(length)
        if length > 0 and start >= 0:
            first = start >> self._shift
            if first < self._nbits:
                last = (start + length - 1) >> self._shift
                if first == last:  # one page: one byte store
                    self._pv[first] = 1
                else:
                    _k().bitmap_set(self._ptr, int(first), int(min(last, self._nbits - 1)))
        elif start < 0 or length < 0:
            _negative(start, length)

    mark_dirty = set_addr_range

    def reset_addr_range(self, start: int, length: int) -> None:
        """Clear the pages touching ``[start, start + length)``.

        Parameters
        ----------
        start : int
            First byte offset.
        length : int
            Bytes.

        Raises
        ------
        BitmapError
            ``start`` or ``length`` is negative.
        """
        start, length = operator.index(start), operator.index(length)
        if start < 0 or length < 0:
            _negative(start, length)
        first = start >> self._shift
        if length and first < self._nbits:
            self._clear(first, min((start + length - 1) >> self._shift, self._nbits - 1))

    def _clear(self, first: int, last: int) -> None:
        _k().bitmap_clear(self._ptr, self._pages, int(first), int(last))

    def set_bit(self, index: int) -> None:
        """Set bit ``index`` (ignored past the end).

        Parameters
        ----------
        index : int
            A page index.
        """
        if 0 <= index < self._nbits:
            self._pv[index] = 1

    def reset_bit(self, index: int) -> None:
        """Clear bit ``index`` (ignored past the end).

        Parameters
        ----------
        index : int
            A page index.
        """
        if 0 <= index < self._nbits:
            self._clear(index, index)

    def is_bit_set(self, index: int) -> bool:
        """Return whether bit ``index`` is set (``False`` past the end).

        Parameters
        ----------
        index : int
            A page index.

        Returns
        -------
        bool
            The bit.
        """
        if not 0 <= index < self._nbits:
            return False
        return bool(self._pv[index] or (self._wv[index >> 6] >> (index & 63)) & 1)

    def is_addr_set(self, addr: int) -> bool:
        """Return whether the page holding byte ``addr`` is dirty.

        Parameters
        ----------
        addr : int
            A byte offset.

        Returns
        -------
        bool
            The page's bit (``False`` past the end).
        """
        return addr >= 0 and self.is_bit_set(addr >> self._shift)

    dirty_at = is_addr_set

    def get_and_reset(self) -> np.ndarray:
        """Atomically take and clear every word.

        A mark racing with this call lands either in the returned words or in the bitmap
        afterwards, never in neither.

        Returns
        -------
        numpy.ndarray
            The ``uint64`` words (bit ``i % 64`` of word ``i // 64`` is page ``i``).
        """
        out = np.empty(-(-self._nbits // 64), dtype=np.uint64)
        _k().bitmap_take(self._ptr, out)
        _k().lane_take(self._pages, out)
        return out

    def reset(self) -> None:
        """Clear every bit."""
        if self._nbits:
            self._clear(0, self._nbits - 1)

    def enlarge(self, additional_bytes: int) -> None:
        """Grow the byte size by ``additional_bytes``; the new bits start clear.

        Like vm-memory's (which needs ``&mut self``), this must not run while other
        threads mark or reset this bitmap: their marks could land in the old words.  A
        bitmap that memory objects already write through (their scalar fast path keeps
        its page byte map) cannot grow: build a new one instead.

        Parameters
        ----------
        additional_bytes : int
            Bytes to add.

        Raises
        ------
        BitmapError
            ``additional_bytes`` is negative, or the bitmap is in use by a fast path.
        """
        extra = _count("additional_bytes", additional_bytes)
        with self._lock:
            if extra and self._pinned:
                raise BitmapError(
                    "additional_bytes", extra, "memory objects write through this bitmap's words"
                )
            if extra:
                self._resize(self._byte_size + extra)

    def slice_at(self, offset: int) -> BitmapSlice:
        """Return a view of this bitmap at byte ``offset``.

        Parameters
        ----------
        offset : int
            The view's origin.

        Returns
        -------
        BitmapSlice
            The view.
        """
        return BitmapSlice(self, offset)

    # -- array-valued queries ---------------------------------------------------------------
    def snapshot(self) -> np.ndarray:
        """Return the packed words as they are now (a copy; nothing is reset).

        Returns
        -------
        numpy.ndarray
            ``uint64`` words, bit ``i % 64`` of word ``i // 64`` = page ``i``.
        """
        return self._fold()[: -(-self._nbits // 64)]

    def count(self) -> int:
        """Return the number of dirty pages.

        Returns
        -------
        int
            Set bits.
        """
        return int(_k().bitmap_count(self._fold()))

    def dirty_pages(self) -> np.ndarray:
        """Return the indices of the dirty pages, ascending.

        Returns
        -------
        numpy.ndarray
            ``uint64`` page indices.
        """
        words = self._fold()
        out = np.empty(_k().bitmap_count(words), dtype=np.int64)
        _k().bitmap_pages(words, out)
        return out.view(np.uint64)

    def dirty_ranges(self) -> np.ndarray:
        """Return the dirty bytes as coalesced ``(start, length)`` ranges.

        Adjacent dirty pages form one range; the last page is cut at :meth:`byte_size`.

        Returns
        -------
        numpy.ndarray
            A ``(n, 2)`` ``uint64`` array of byte offsets and lengths.
        """
        return _decode_ranges(self.snapshot(), self._shift, self._byte_size)

    def get_and_reset_ranges(self) -> np.ndarray:
        """Atomically take and clear the bitmap, and return what was dirty as ranges.

        Returns
        -------
        numpy.ndarray
            A ``(n, 2)`` ``uint64`` array of ``(start, length)`` byte ranges.
        """
        return self.ranges_of(self.get_and_reset())

    def ranges_of(self, words: np.ndarray) -> np.ndarray:
        """Decode words of this bitmap's shape (e.g. from :meth:`get_and_reset`) as ranges.

        Parameters
        ----------
        words : numpy.ndarray
            ``uint64`` words, as many as the bitmap has.

        Returns
        -------
        numpy.ndarray
            A ``(n, 2)`` ``uint64`` array of ``(start, length)`` byte ranges.

        Raises
        ------
        BitmapError
            ``words`` has the wrong dtype or length.
        """
        nwords = -(-self._nbits // 64)
        if not (
            isinstance(words, np.ndarray) and words.dtype == np.uint64 and words.shape == (nwords,)
        ):
            shape = getattr(words, "shape", type(words).__name__)
            raise BitmapError("words", shape, f"need a uint64 array of {nwords} words")
        words = np.array(words, dtype=np.uint64)  # a copy: bits past len() are dropped
        if self._nbits % 64:
            words[-1] &= np.uint64((1 << (self._nbits % 64)) - 1)
        return _decode_ranges(words, self._shift, self._byte_size)

    def mark_dirty_many(self, offsets: np.ndarray, lengths: np.ndarray) -> None:
        """Mark many ``[offset, offset + length)`` ranges dirty in one kernel call.

        Parameters
        ----------
        offsets, lengths : numpy.ndarray
            Non-negative integer arrays of equal length.

        Raises
        ------
        BitmapError
            The arrays differ in length or hold a negative value.
        """
        offsets, lengths = _int64s(offsets), _int64s(lengths)
        if offsets.shape != lengths.shape:
            raise BitmapError("lengths", lengths.shape[0], f"need {offsets.shape[0]} lengths")
        if offsets.size and min(offsets.min(), lengths.min()) < 0:
            _negative(int(offsets.min()), int(lengths.min()))
        lengths = np.minimum(lengths, _INT64_MAX - offsets)  # saturating ends, as vm-memory's
        _k().bitmap_mark_ranges(self._ptr, self._nbits, self._shift, offsets, lengths)

    def copy(self) -> AtomicBitmap:
        """Return an independent snapshot copy (vm-memory's ``Clone``).

        Returns
        -------
        AtomicBitmap
            A bitmap with the same size, page size and bits.
        """
        new = AtomicBitmap(self._byte_size, self._page_size)
        new._words[:] = self._fold()
        return new

    __copy__ = copy

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as size, page size and a snapshot of the bits (never host pointers)."""
        return (_restore, (self._byte_size, self._page_size, self.snapshot()))

    def __repr__(self) -> str:
        return (
            f"AtomicBitmap(byte_size={self._byte_size}, page_size={self._page_size}, "
            f"dirty={self.count()}/{self._nbits})"
        )

    def _repr_html_(self) -> str:
        """Return the dirty strip Jupyter shows (see :func:`npguest.display.bitmap_html`)."""
        from .display import bitmap_html

        return bitmap_html(self)


def _restore(byte_size: int, page_size: int, words: np.ndarray) -> AtomicBitmap:
    """Rebuild a pickled :class:`AtomicBitmap`."""
    bitmap = AtomicBitmap(byte_size, page_size)
    bitmap._words[: words.shape[0]] = words
    return bitmap


def bitmap_or_none(bitmap: Bitmap | None) -> Bitmap | None:
    """Return ``None`` for "no tracking" (``None`` or a :class:`NoBitmap`), else ``bitmap``.

    Write paths test ``bitmap is not None`` so that untracked memory pays nothing.

    Parameters
    ----------
    bitmap : Bitmap or None
        A bitmap.

    Returns
    -------
    Bitmap or None
        ``None`` when nothing is tracked.

    Raises
    ------
    TypeError
        ``bitmap`` does not have the Bitmap methods.
    """
    if bitmap is None or isinstance(bitmap, NoBitmap):
        return None
    if not isinstance(bitmap, Bitmap):
        raise TypeError(
            f"{type(bitmap).__name__} is not a Bitmap (needs mark_dirty, dirty_at, slice_at)"
        )
    return bitmap


def mark_many(bitmap: Bitmap, offsets: np.ndarray, lengths: np.ndarray) -> None:
    """Mark many ``[offset, offset + length)`` ranges dirty.

    Uses the bitmap's vectorised ``mark_dirty_many(offsets, lengths)`` when it has one;
    otherwise calls ``mark_dirty`` per range (third-party bitmaps).

    Parameters
    ----------
    bitmap : Bitmap
        The bitmap.
    offsets, lengths : numpy.ndarray
        Integer arrays of equal length.
    """
    many = getattr(bitmap, "mark_dirty_many", None)
    if many is not None:
        many(offsets, lengths)
        return
    for off, n in zip(offsets.tolist(), lengths.tolist(), strict=True):
        bitmap.mark_dirty(off, n)
