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


class RecordingBitmap:
    """A Bitmap that remembers every ``mark_dirty`` call (byte granularity).

    It records the factory arguments, so the class itself is a factory.
    """

    def __init__(self, byte_size: int = 0, page_size: int = 0) -> None:
        self.byte_size, self.page_size = byte_size, page_size
        self.marks: list[tuple[int, int]] = []

    def mark_dirty(self, offset: int, length: int) -> None:
        self.marks.append((offset, length))

    def dirty_at(self, offset: int) -> bool:
        return any(o <= offset < o + n for o, n in self.marks)

    def slice_at(self, offset: int) -> BitmapSlice:
        return BitmapSlice(self, offset)

    def dirty_bytes(self) -> set[int]:
        return {o + i for o, n in self.marks for i in range(n)}

    def clear(self) -> None:
        self.marks.clear()


def readonly_file_memory(path: Path, data: bytes, base: int) -> GuestMemoryMmap:
    """Write ``data`` to ``path`` and map all of it read-only at guest ``base``."""
    path.write_bytes(data)
    with open(path, "rb") as f:
        return GuestMemoryMmap.from_ranges_with_files(
            [(base, len(data), FileOffset(f, 0))], readonly=True
        )
