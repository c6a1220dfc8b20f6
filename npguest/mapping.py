"""Host mappings that back guest memory: :class:`MmapRegion` and :class:`FileOffset`.

A :class:`MmapRegion` is one ``mmap(2)`` of an anonymous mapping, a memfd, or a file at
a :class:`FileOffset`; read-only or read-write; shared or private.  It exposes the
mapping as a zero-copy ``uint8`` numpy array and a ``memoryview`` (the views every
access uses), its host address, and an explicit :meth:`MmapRegion.close`.

Differences from vm-memory, on purpose:

* a file shorter than ``start + size`` is refused at construction with
  :class:`~npguest.errors.MmapRegionError` (touching a page past end-of-file would kill
  the interpreter with ``SIGBUS``);
* :meth:`MmapRegion.is_hugetlbfs` is detected from the file system (``fstatfs`` magic
  ``HUGETLBFS_MAGIC``) rather than being a label the caller sets;
* :meth:`MmapRegion.close` refuses, with a clear error, while views of the mapping are
  alive, instead of unmapping memory still in use.
"""

from __future__ import annotations

import contextlib
import mmap
import operator
import os
import stat
import threading
from typing import Any, BinaryIO

import numpy as np

from .bitmap import Bitmap, BitmapFactory, NoBitmap, bitmap_or_none
from .errors import MmapRegionError
from .volatile import VolatileSlice, host_address

__all__ = ["HUGETLBFS_MAGIC", "PAGE_SIZE", "FileOffset", "MmapRegion"]

PAGE_SIZE = mmap.PAGESIZE
"""The host page size; file offsets must be multiples of it."""

HUGETLBFS_MAGIC = 0x958458F6
"""``f_type`` of a hugetlbfs file system (``linux/magic.h``)."""

# Linux flag values; Python's mmap module exposes them only from 3.13 on.
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
_MAP_HUGETLB = getattr(mmap, "MAP_HUGETLB", 0x40000)


class FileOffset:
    """An open file and a byte offset into it (vm-memory's ``FileOffset``).

    Parameters
    ----------
    file : binary file object, path or int
        An open binary file (anything with ``fileno()``), a path (opened read-write if
        permitted, else read-only; the ``FileOffset`` then owns it, and closes it when
        the last mapping made from it is closed), or a raw file descriptor.
    start : int, optional
        Offset of the mapping in the file (a Python or numpy integer); must be a
        multiple of the page size when mapped.

    Raises
    ------
    MmapRegionError
        The path cannot be opened, or ``start`` is negative or not an integer.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryFile() as f:
    ...     FileOffset(f, 4096).start()
    4096
    """

    __slots__ = ("_file", "_owned", "_start", "_users")

    def __init__(self, file: BinaryIO | str | os.PathLike[str] | int, start: int = 0) -> None:
        start = _integer(start, "file offset")
        if start < 0:
            raise MmapRegionError(f"file offset {start} must be a non-negative integer")
        self._start = start
        self._owned = False
        self._users = 0  # open mappings made from it
        if isinstance(file, (str, os.PathLike)):
            writable = os.access(file, os.W_OK)
            try:
                self._file: Any = open(file, "r+b" if writable else "rb", buffering=0)  # noqa: SIM115
            except OSError as exc:
                raise MmapRegionError(f"cannot open {os.fspath(file)!r}: {exc}") from exc
            self._owned = True
        elif (isinstance(file, int) and not isinstance(file, bool)) or hasattr(file, "fileno"):
            self._file = file
        else:
            raise TypeError(f"expected a binary file, a path or an fd, got {type(file).__name__}")

    def file(self) -> Any:
        """Return the file object (or fd) given.

        Returns
        -------
        file object or int
            The file.
        """
        return self._file

    def fileno(self) -> int:
        """Return the file descriptor.

        Returns
        -------
        int
            The fd.
        """
        return self._file if isinstance(self._file, int) else self._file.fileno()

    def start(self) -> int:
        """Return the offset in the file.

        Returns
        -------
        int
            The offset.
        """
        return self._start

    def close(self) -> None:
        """Close the file if this object opened it from a path."""
        if self._owned:
            self._file.close()

    def _acquire(self) -> None:
        """Count one more open mapping of the file."""
        with _USERS_LOCK:
            self._users += 1

    def _release(self) -> None:
        """Count one mapping closed; close an owned file when it was the last."""
        with _USERS_LOCK:
            self._users -= 1
            last = self._users == 0
        if last:
            self.close()

    def __repr__(self) -> str:
        name = getattr(self._file, "name", self._file)
        return f"FileOffset({name!r}, {self._start:#x})"


_USERS_LOCK = threading.Lock()


def _integer(value: Any, what: str) -> int:
    """Return a size or offset as an ``int``: Python or numpy integers, not bools or floats."""
    if not isinstance(value, (bool, np.bool_)):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise MmapRegionError(f"{what} must be an integer, got {value!r}")


def _fs_type(fd: int) -> int | None:
    """Return ``f_type`` of the file system holding ``fd`` (Linux ``fstatfs``), or ``None``."""
    import ctypes  # lazily: ctypes.util costs more at import than the rest of npguest
    import ctypes.util

    libc_name = ctypes.util.find_library("c")
    if libc_name is None:  # pragma: no cover - every Linux has a libc
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit Linux
    if libc.fstatfs(fd, buf) != 0:
        return None
    return int.from_bytes(buf.raw[:8], "little", signed=True) & 0xFFFFFFFF


_THP_MIN = 4 << 20
"""Anonymous mappings at least this large are advised for transparent huge pages."""


def _advise_huge_pages(m: mmap.mmap) -> None:
    """Ask for transparent huge pages; a kernel without them (or ``never``) just says no."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        with contextlib.suppress(OSError):  # THP compiled out of the kernel
            m.madvise(advice)


class MmapRegion:
    """One host mapping (vm-memory's ``MmapRegion``).

    Build one with the class methods: :meth:`anonymous`, :meth:`memfd`,
    :meth:`from_file`; the constructor ``MmapRegion(size)`` is :meth:`anonymous`.

    Parameters
    ----------
    size : int
        Bytes to map (> 0).
    bitmap : Bitmap factory or Bitmap, optional
        Dirty tracking: a class/factory called as ``factory(size, page_size)``, or a
        ready bitmap.  Default: none.
    page_size : int, optional
        Page size given to the bitmap factory (default 4096).

    Raises
    ------
    MmapRegionError
        ``size`` is not positive, or the mapping failed.

    Examples
    --------
    >>> r = MmapRegion(8192)
    >>> r.size(), r.is_readonly(), r.file_offset() is None
    (8192, False, True)
    >>> r.close()
    """

    def __init__(
        self,
        size: int,
        *,
        bitmap: BitmapFactory | Bitmap | None = None,
        page_size: int = 4096,
    ) -> None:
        self._init(size, None, readonly=False, shared=False, bitmap=bitmap, page_size=page_size)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def anonymous(
        cls,
        size: int,
        *,
        readonly: bool = False,
        hugetlb: bool = False,
        bitmap: BitmapFactory | Bitmap | None = None,
        page_size: int = 4096,
    ) -> MmapRegion:
        """Map ``size`` bytes of anonymous, private, zero-filled memory (``MAP_NORESERVE``).

        No page is touched: the kernel supplies zero pages on first access.  Mappings of
        at least 4 MiB are advised for transparent huge pages (``MADV_HUGEPAGE``, as
        numpy does for its large arrays and VMMs for guest RAM): bulk copies then cost
        what they cost between numpy arrays.  Dirty tracking keeps its own page size.

        Parameters
        ----------
        size : int
            Bytes to map.
        readonly : bool, optional
            Map ``PROT_READ`` only.
        hugetlb : bool, optional
            Ask for huge pages (``MAP_HUGETLB``); fails unless the host has some reserved.
        bitmap : Bitmap factory or Bitmap, optional
            Dirty tracking (see the class).
        page_size : int, optional
            Page size given to the bitmap factory.

        Returns
        -------
        MmapRegion
            The mapping.

        Raises
        ------
        MmapRegionError
            Bad size, or ``mmap`` failed.
        """
        self = cls.__new__(cls)
        self._init(
            size, None, readonly=readonly, shared=False, bitmap=bitmap,
            page_size=page_size, hugetlb=hugetlb,
        )  # fmt: skip
        return self

    @classmethod
    def memfd(
        cls,
        size: int,
        *,
        name: str = "npguest",
        hugetlb: bool = False,
        bitmap: BitmapFactory | Bitmap | None = None,
        page_size: int = 4096,
    ) -> MmapRegion:
        """Map a new anonymous file (``memfd_create``) of ``size`` bytes, shared.

        The memfd can be handed to another process (e.g. a vhost-user backend) through
        :meth:`file_offset`.

        Parameters
        ----------
        size : int
            Bytes.
        name : str, optional
            The memfd's name (shown in ``/proc/<pid>/fd``).
        hugetlb : bool, optional
            Back it with huge pages (``MFD_HUGETLB``).
        bitmap : Bitmap factory or Bitmap, optional
            Dirty tracking.
        page_size : int, optional
            Page size given to the bitmap factory.

        Returns
        -------
        MmapRegion
            The mapping, owning the memfd.

        Raises
        ------
        MmapRegionError
            Bad size, or the memfd or mapping could not be made.
        """
        size = _check_size(size)
        flags = os.MFD_CLOEXEC | (os.MFD_HUGETLB if hugetlb else 0)
        try:
            fd = os.memfd_create(name, flags)
        except OSError as exc:
            raise MmapRegionError(f"memfd_create({name!r}) failed: {exc}") from exc
        f = open(fd, "r+b", buffering=0)  # noqa: SIM115 - owned by the region
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            f.close()
            raise MmapRegionError(f"cannot size memfd to {size} bytes: {exc}") from exc
        self = cls.__new__(cls)
        try:
            self._init(
                size, FileOffset(f, 0), readonly=False, shared=True, bitmap=bitmap,
                page_size=page_size,
            )  # fmt: skip
        except MmapRegionError:
            f.close()
            raise
        self._owned_file = f
        return self

    @classmethod
    def from_file(
        cls,
        file_offset: FileOffset,
        size: int,
        *,
        readonly: bool = False,
        shared: bool = True,
        bitmap: BitmapFactory | Bitmap | None = None,
        page_size: int = 4096,
    ) -> MmapRegion:
        """Map ``size`` bytes of a file at ``file_offset`` (vm-memory's ``from_file``).

        Parameters
        ----------
        file_offset : FileOffset
            The file and the offset of the mapping in it.  An offset that is not a page
            multiple is mapped from the page below it, the view starting mid-page (ELF
            dumps place memory at any offset); vm-memory's ``mmap`` refuses it.
        size : int
            Bytes to map.
        readonly : bool, optional
            Map read-only (writes raise :class:`~npguest.errors.ReadOnlyMemoryError`).
        shared : bool, optional
            ``True`` (default): writes go to the file (``MAP_SHARED``).  ``False``:
            copy-on-write, the file is never modified (``MAP_PRIVATE``).
        bitmap : Bitmap factory or Bitmap, optional
            Dirty tracking.
        page_size : int, optional
            Page size given to the bitmap factory.

        Returns
        -------
        MmapRegion
            The mapping.

        Raises
        ------
        MmapRegionError
            Bad size or offset, a file shorter than ``start + size``, a file opened
            without the access asked for, or ``mmap`` failed.
        """
        if not isinstance(file_offset, FileOffset):
            file_offset = FileOffset(file_offset)
        self = cls.__new__(cls)
        self._init(
            size, file_offset, readonly=readonly, shared=shared, bitmap=bitmap,
            page_size=page_size,
        )  # fmt: skip
        return self

    def _init(
        self,
        size: int,
        file_offset: FileOffset | None,
        *,
        readonly: bool,
        shared: bool,
        bitmap: BitmapFactory | Bitmap | None,
        page_size: int,
        hugetlb: bool = False,
    ) -> None:
        size = _check_size(size)
        self._file_offset = file_offset
        self._owned_file: Any = None
        self._readonly = readonly
        self._shared = shared
        prot = mmap.PROT_READ | (0 if readonly else mmap.PROT_WRITE)
        flags = (mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE) | _MAP_NORESERVE
        if file_offset is None:
            fd, start = -1, 0
            flags |= mmap.MAP_ANONYMOUS | (_MAP_HUGETLB if hugetlb else 0)
        else:
            fd, start = file_offset.fileno(), file_offset.start()
            _check_file(fd, start, size)
        # An offset inside a page maps from the page below; the view starts mid-mapping.
        self._lead = start % PAGE_SIZE
        try:
            self._mmap = mmap.mmap(
                fd, size + self._lead, flags=flags, prot=prot, offset=start - self._lead
            )
        except (OSError, ValueError, OverflowError) as exc:
            where = "anonymous" if fd < 0 else f"file fd {fd} at offset {start:#x}"
            raise MmapRegionError(f"mmap of {size} bytes ({where}) failed: {exc}") from exc
        if file_offset is None and size >= _THP_MIN:
            _advise_huge_pages(self._mmap)
        if file_offset is not None:
            file_offset._acquire()  # its file stays open while this mapping is
        self._size = size
        self._map_views()
        self._host = host_address(self._view)
        self._page_size = page_size
        if bitmap is None or (isinstance(bitmap, Bitmap) and not isinstance(bitmap, type)):
            self._bitmap = bitmap_or_none(bitmap)
        else:
            self._bitmap = bitmap_or_none(bitmap(size, page_size))
        self._closed = False

    def _map_views(self) -> None:
        self._array = np.frombuffer(self._mmap, dtype=np.uint8, count=self._size, offset=self._lead)
        self._view = memoryview(self._array)
        if self._readonly:
            self._view = self._view.toreadonly()

    # -- accessors -----------------------------------------------------------------------
    def size(self) -> int:
        """Return the mapping's size in bytes.

        Returns
        -------
        int
            The size.
        """
        return self._size

    len = size  # vm-memory's VolatileMemory::len
    __len__ = size

    def file_offset(self) -> FileOffset | None:
        """Return the file and offset mapped, or ``None`` for anonymous memory.

        Returns
        -------
        FileOffset or None
            The backing file.
        """
        return self._file_offset

    def is_readonly(self) -> bool:
        """Return whether the mapping is read-only.

        Returns
        -------
        bool
            ``True`` if mapped without ``PROT_WRITE``.
        """
        return self._readonly

    def is_shared(self) -> bool:
        """Return whether writes reach the backing file (``MAP_SHARED``).

        Returns
        -------
        bool
            ``False`` for private and anonymous mappings.
        """
        return self._shared

    def is_hugetlbfs(self) -> bool | None:
        """Return whether the backing file lives on hugetlbfs.

        Returns
        -------
        bool or None
            Detected with ``fstatfs`` for files and memfds; ``None`` for anonymous
            mappings (as vm-memory, which leaves it unknown).
        """
        if self._file_offset is None:
            return None
        return _fs_type(self._file_offset.fileno()) == HUGETLBFS_MAGIC

    def as_ptr(self) -> int:
        """Return the host address of the mapping's first byte.

        Writes through it are not dirty-tracked.

        Returns
        -------
        int
            The address.
        """
        self._check_open()
        return self._host

    def bitmap(self) -> Bitmap:
        """Return the mapping's dirty bitmap.

        Returns
        -------
        Bitmap
            The bitmap, or a :class:`~npguest.bitmap.NoBitmap`.
        """
        return self._bitmap if self._bitmap is not None else NoBitmap()

    def as_array(self) -> np.ndarray:
        """Return the whole mapping as a zero-copy ``uint8`` numpy array.

        Writes through it are **not** dirty-tracked (mark them with
        ``bitmap().mark_dirty``); it is read-only for read-only mappings.

        Returns
        -------
        numpy.ndarray
            The view.

        Raises
        ------
        MmapRegionError
            The region is closed.
        """
        self._check_open()
        return self._array if not self._readonly else self._array.view()

    def as_volatile_slice(self) -> VolatileSlice:
        """Return the whole mapping as a :class:`~npguest.VolatileSlice`.

        Returns
        -------
        VolatileSlice
            The slice, tracked by the mapping's bitmap.
        """
        self._check_open()
        return VolatileSlice._over(self._view, 0, self._size, self._bitmap, 0, self._host)

    def get_slice(self, offset: int, count: int) -> VolatileSlice:
        """Return ``[offset, offset + count)`` of the mapping.

        Parameters
        ----------
        offset, count : int
            The range.

        Returns
        -------
        VolatileSlice
            The slice.

        Raises
        ------
        OutOfBoundsError, OffsetOverflowError
            The range does not fit.
        """
        return self.as_volatile_slice().subslice(offset, count)

    def _check_open(self) -> None:
        if self._closed:
            raise MmapRegionError("the mapping is closed")

    # -- lifetime ------------------------------------------------------------------------
    def close(self) -> None:
        """Unmap the memory, and close the files only this mapping keeps open.

        A memfd is closed; a file that a :class:`FileOffset` opened from a path is
        closed with the last open mapping made from it (regions sharing it stay usable).

        Raises
        ------
        MmapRegionError
            Views of the mapping are still alive (slices, arrays, a guest memory holding
            this region): nothing is unmapped.  Drop them, or close the guest memory.
        """
        if self._closed:
            return
        # Drop our own views; if nobody else holds one, the mmap's buffer export goes with
        # them and close() succeeds.  Otherwise mmap refuses (BufferError) and we restore.
        self._array = self._view = None  # type: ignore[assignment]
        try:
            self._mmap.close()
        except BufferError:
            self._map_views()
            raise MmapRegionError(
                f"cannot close the {self._size}-byte mapping at {self._host:#x}: "
                "views of it are still alive (slices, numpy arrays, or a guest memory "
                "holding the region); drop them first"
            ) from None
        self._closed = True
        if self._owned_file is not None:
            self._owned_file.close()
        if self._file_offset is not None:
            self._file_offset._release()

    @property
    def closed(self) -> bool:
        """bool: Whether :meth:`close` has unmapped the memory."""
        return self._closed

    def __enter__(self) -> MmapRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = "anonymous" if self._file_offset is None else repr(self._file_offset)
        flags = "ro" if self._readonly else "rw"
        return f"MmapRegion({self._size:#x} bytes, {kind}, {flags})"


def _check_size(size: Any) -> int:
    """Return a mapping size as a positive ``int`` (Python or numpy integer), or raise."""
    size = _integer(size, "mapping size")
    if size <= 0:
        raise MmapRegionError(f"mapping size {size} is invalid: it must be positive")
    return size


def _check_file(fd: int, start: int, size: int) -> None:
    try:
        st = os.fstat(fd)
    except OSError as exc:
        raise MmapRegionError(f"cannot stat fd {fd}: {exc}") from exc
    if stat.S_ISREG(st.st_mode):
        length = st.st_size
    elif stat.S_ISBLK(st.st_mode):
        length = os.lseek(fd, 0, os.SEEK_END)
    else:
        return
    if start + size > length:
        raise MmapRegionError(
            f"file is too short: mapping {size} bytes at offset {start:#x} needs "
            f"{start + size} bytes, the file has {length} (a read past its end would "
            "kill the process with SIGBUS)"
        )
