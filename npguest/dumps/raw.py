"""Raw dumps: ``pmemsave`` output, padded images, and memory-backend files.

A raw dump has no header: file offset = guest address - ``base``.  A QEMU
``memory-backend-file`` is the RAM *block*, not the guest address space, so its guest
layout depends on the machine type; give it as ``layout=[(gpa, size, file_offset), ...]``
(QEMU's ``info mtree -f`` shows the ``@offset`` of each ``pc.ram`` piece).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import DumpFormatError, MmapRegionError
from ..guest_memory import GuestMemoryMmap
from .dump import DumpMemory, DumpMetadata, Extent, map_extents, region_chunks

__all__ = ["open_raw", "write_raw"]

#: Largest file size (``off_t``).
MAX_FILE = 2**63 - 1
#: Granularity of the holes :func:`write_raw` leaves in the file for zero bytes.
SPARSE_BLOCK = 1 << 16

Progress = Callable[[int, int], None]


def open_raw(
    path: str | os.PathLike[str],
    *,
    writable: bool = False,
    base: int = 0,
    layout: Sequence[tuple[int, int, int]] | None = None,
) -> DumpMemory:
    r"""Open a raw dump.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    writable : bool, optional
        Map it writable (writes change the file).  Default read-only.
    base : int, optional
        Guest address of the file's first byte (default 0).  Ignored with ``layout``.
    layout : sequence of (int, int, int), optional
        ``(gpa, size, file_offset)`` pieces, for files whose guest layout is not one
        range (memory-backend files of a q35/i440fx machine, Firecracker memory files).

    Returns
    -------
    DumpMemory
        The memory: one region per piece (one for the whole file without ``layout``).

    Raises
    ------
    DumpFormatError
        The file is empty, or a piece of ``layout`` is empty of sense (past the end of the
        file, overlapping another, wrapping past ``2**64``).
    MmapRegionError
        The file cannot be opened or mapped.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "ram.img")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(bytes(range(256)) * 32)
    >>> with open_raw(path, base=0x100000) as mem:
    ...     mem.read_bytes(0x100010, 4), mem.last_addr()
    (b'\x10\x11\x12\x13', GuestAddress(0x101fff))
    """
    path = os.fspath(path)
    if layout is None:
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise MmapRegionError(f"cannot open {path!r}: {exc}") from exc
        if size == 0:
            raise DumpFormatError(path, 0, "file size", "an empty file holds no memory")
        extents = [Extent(base, size, 0, "base", 0)]
    else:
        extents = [
            Extent(int(gpa), int(size), int(off), f"layout[{i}]", 0)
            for i, (gpa, size, off) in enumerate(layout)
        ]
    meta = DumpMetadata("raw", path, extra={"base": base} if layout is None else {})
    return map_extents(path, extents, meta, writable=writable)


def write_raw(
    mem: GuestMemoryMmap,
    path: str | os.PathLike[str],
    *,
    base: int = 0,
    progress: Progress | None = None,
) -> None:
    """Write a memory as a raw image: file offset = guest address - ``base``, holes sparse.

    The file is sized to the end of the last region; zero blocks (including the gaps
    between regions) are left as file-system holes, so a sparse image costs only its
    data.  Memory is streamed region by region in bounded pieces.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.
    path : str or os.PathLike
        The output file (replaced).
    base : int, optional
        Guest address of the file's first byte (default 0); no region may start below it.
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes)`` after each piece.

    Raises
    ------
    ValueError
        A region starts below ``base``, the memory is empty, or it reaches too far above
        ``base`` for a file.
    OSError
        The file cannot be written.
    """
    if mem.num_regions() == 0:
        raise ValueError("cannot write an empty memory")
    if int(mem.starts[0]) < base:
        raise ValueError(f"a region starts at {int(mem.starts[0]):#x}, below base {base:#x}")
    if int(mem.ends[-1]) - base > MAX_FILE:
        raise ValueError(
            f"memory ending at {int(mem.ends[-1]):#x} makes a raw file of "
            f"{int(mem.ends[-1]) - base} bytes (base {base:#x}): more than a file can hold; "
            "give a higher base= or use a format that stores addresses (elf, lime)"
        )
    total = int((mem.ends - mem.starts).sum())
    done = 0
    with open(path, "wb") as f:
        fd = f.fileno()
        os.ftruncate(fd, int(mem.ends[-1]) - base)
        for gpa, data in region_chunks(mem):
            write_sparse(fd, data, gpa - base)
            done += data.shape[0]
            if progress is not None:
                progress(done, total)


def write_sparse(fd: int, data: np.ndarray, offset: int) -> None:
    """Write ``data`` at ``offset`` of a pre-sized file, skipping all-zero blocks.

    Parameters
    ----------
    fd : int
        The file (already truncated to its final size, so skipped blocks read as zeros).
    data : numpy.ndarray
        ``uint8`` bytes.
    offset : int
        File offset of ``data[0]``.
    """
    n = data.shape[0]
    full = n - n % SPARSE_BLOCK
    nonzero = np.ones(full // SPARSE_BLOCK + (full != n), dtype=bool)
    if full:
        nonzero[: full // SPARSE_BLOCK] = (
            data[:full].view(np.uint64).reshape(-1, SPARSE_BLOCK // 8).any(axis=1)
        )
    # write each run of non-zero blocks with one call
    edges = np.flatnonzero(np.diff(np.concatenate(([False], nonzero, [False])).astype(np.int8)))
    for lo, hi in edges.reshape(-1, 2).tolist():
        view = memoryview(data[lo * SPARSE_BLOCK : min(hi * SPARSE_BLOCK, n)])
        pos = offset + lo * SPARSE_BLOCK
        while len(view):
            written = os.pwrite(fd, view, pos)
            view, pos = view[written:], pos + written
