"""Helpers shared by the test modules (imported as ``_support``: pytest puts ``tests/`` on
``sys.path``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npguest import BitmapSlice, FileOffset, GuestMemoryMmap


class ByteBitmap:
    """A byte-granular recording bitmap: exactly which bytes were marked dirty.

    It implements the per-range ``mark_dirty`` of the bitmap protocol only, so batch
    writes go through their per-object fallback; :class:`ManyBitmap` adds the vectorised
    hook.
    """

    def __init__(self, size: int, page_size: int = 4096) -> None:
        self.bits = np.zeros(size, dtype=bool)

    def mark_dirty(self, offset: int, length: int) -> None:
        self.bits[offset : offset + length] = True

    def dirty_at(self, offset: int) -> bool:
        return offset < len(self.bits) and bool(self.bits[offset])

    def slice_at(self, offset: int) -> BitmapSlice:
        return BitmapSlice(self, offset)


class ManyBitmap(ByteBitmap):
    """:class:`ByteBitmap` with the vectorised ``mark_dirty_many`` hook."""

    def mark_dirty_many(self, offsets, lengths) -> None:
        for off, n in zip(np.asarray(offsets).tolist(), np.asarray(lengths).tolist(), strict=True):
            self.bits[off : off + n] = True


def readonly_file_memory(path: Path, data: bytes, base: int) -> GuestMemoryMmap:
    """Write ``data`` to ``path`` and map all of it read-only at guest ``base``."""
    path.write_bytes(data)
    with open(path, "rb") as f:
        return GuestMemoryMmap.from_ranges_with_files(
            [(base, len(data), FileOffset(f, 0))], readonly=True
        )
