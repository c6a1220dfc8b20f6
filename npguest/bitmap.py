"""Dirty-page bitmaps: the :class:`Bitmap` protocol, :class:`NoBitmap` and :class:`BitmapSlice`.

Every region carries a bitmap indexed by the byte offset inside the region, and every
npguest write path marks the bytes it wrote (``mark_dirty(offset, length)``).  Reads
never mark.  Writes through raw escape hatches (host addresses, numpy views of a mapping)
are not tracked; call ``mark_dirty`` yourself after them.

:class:`NoBitmap` (the default) tracks nothing and costs nothing: npguest's write paths
skip the call entirely when a region has no bitmap.  A bitmap class is chosen at
construction as a factory ``factory(byte_size, page_size) -> Bitmap`` (e.g.
``GuestMemoryMmap.from_ranges(ranges, bitmap=SomeBitmap, page_size=4096)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Bitmap", "BitmapFactory", "BitmapSlice", "NoBitmap", "bitmap_or_none", "mark_many"]

_MOD = 1 << 64


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
        self.offset = offset % _MOD

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
