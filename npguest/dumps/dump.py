"""What every dump reader builds: :class:`DumpMemory` and the helpers that map a file's layout.

A dump opens as a :class:`DumpMemory`, an ordinary :class:`~npguest.GuestMemoryMmap` whose
regions are ``mmap`` views of the dump file at the right guest physical addresses (zero copy,
nothing read until touched), plus ``metadata``: the format, CPU registers, VMCOREINFO and
whatever else the format records.

Readers validate every header field against the file before mapping anything, and answer a
malformed file only with :class:`~npguest.errors.DumpFormatError` naming the field and its file
offset (never a ``SIGBUS``: no mapping reaches past the end of the file).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from ..address import U64_MAX
from ..errors import DumpFormatError, MmapRegionError
from ..guest_memory import GuestMemoryMmap
from ..mapping import FileOffset
from ..region import GuestRegionMmap, RegionTable

__all__ = [
    "Record",
    "CpuState",
    "DumpFile",
    "DumpMemory",
    "DumpMetadata",
    "Extent",
    "Note",
    "data_extents",
    "map_extents",
    "open_headers",
    "region_chunks",
]

#: Bytes a writer copies at a time: streaming stays within this much memory per region.
CHUNK = 1 << 24


@dataclass(frozen=True)
class CpuState:
    """One vCPU's registers as a dump records them.

    Attributes
    ----------
    index : int
        The CPU's index (0-based, in note order).
    registers : Mapping[str, int]
        Register values by lower-case name (``"rip"``, ``"rsp"``, ``"cr3"``, ``"cs"``,
        ``"gdt_base"``...).  Which names are present depends on the notes the dump has.
    """

    index: int
    registers: Mapping[str, int] = field(default_factory=dict)

    @property
    def cr3(self) -> int | None:
        """The page-table root (CR3), if the dump recorded it, else None."""
        return self.registers.get("cr3")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{k}={self.registers[k]:#x}" for k in ("rip", "rsp", "cr3") if k in self.registers
        )
        return f"CpuState({self.index}{', ' if shown else ''}{shown})"


@dataclass(frozen=True)
class Note:
    """One ELF note of a dump (``PT_NOTE`` payload, or kdump's notes blob).

    Attributes
    ----------
    name : str
        The owner (``"CORE"``, ``"QEMU"``, ``"VMCOREINFO"``...).
    type : int
        ``n_type``.
    desc : bytes
        The descriptor bytes.
    offset : int
        File offset of the note header.
    """

    name: str
    type: int
    desc: bytes
    offset: int

    def __repr__(self) -> str:
        return f"Note({self.name!r}, type={self.type}, {len(self.desc)} bytes @ {self.offset:#x})"


@dataclass(frozen=True)
class DumpMetadata:
    """What a dump says besides its memory.

    Attributes
    ----------
    format : str
        The format read (``"raw"``, ``"elf"``, ``"lime"``, ``"kdump"``...).
    path : str
        The file (or directory) opened.
    machine : str or None
        The guest architecture when recorded (``"x86_64"``, ``"aarch64"``...).
    page_size : int or None
        The dump's page (block) size, when it has one.
    cpus : tuple of CpuState
        Per-vCPU registers (``cpus[0].cr3`` is the first CPU's page-table root).
    vmcoreinfo : Mapping[str, str]
        The guest kernel's VMCOREINFO lines (``OSRELEASE``, ``SYMBOL(swapper_pg_dir)``...).
    notes : tuple of Note
        Every note, raw.
    zero_ranges : tuple of (int, int)
        ``(gpa, size)`` ranges the dump declares as zeros without storing them (an ELF
        ``p_filesz < p_memsz`` tail): mapped as anonymous zero memory, not holes.
    excluded : numpy.ndarray
        ``(n, 2)`` ``uint64`` array of ``(gpa, size)`` ranges of RAM the dump left out
        (kdump's excluded pages), ascending and disjoint: reported as holes.
    extra : Mapping[str, Any]
        Format-specific fields (header values, producer, ...).
    """

    format: str
    path: str
    machine: str | None = None
    page_size: int | None = None
    cpus: tuple[CpuState, ...] = ()
    vmcoreinfo: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()
    zero_ranges: tuple[tuple[int, int], ...] = ()
    excluded: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.uint64))
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def cr3(self) -> int | None:
        """The first CPU's page-table root (CR3), if recorded, else None."""
        return self.cpus[0].cr3 if self.cpus else None


class DumpMemory(GuestMemoryMmap):
    """A :class:`~npguest.GuestMemoryMmap` opened from a dump, with its :class:`DumpMetadata`.

    Everything a guest memory does works on it unchanged (Bytes, batch reads, dirty
    tracking, ``IommuMemory`` over its page tables).  Close it (or use ``with``) to unmap
    the regions and close the dump file.

    Parameters
    ----------
    regions : sequence of GuestRegionMmap or RegionTable, optional
        The regions.
    metadata : DumpMetadata, optional
        What the dump records (default: an empty record of format ``"memory"``).
    files : iterable of file objects, optional
        Files the memory owns: closed by :meth:`close` (and when it is collected).
    """

    __slots__ = ("_files", "metadata")

    metadata: DumpMetadata

    def __init__(
        self,
        regions: Iterable[GuestRegionMmap] | RegionTable = (),
        metadata: DumpMetadata | None = None,
        files: Iterable[BinaryIO] = (),
    ) -> None:
        super().__init__(regions if isinstance(regions, RegionTable) else list(regions))
        self.metadata = metadata if metadata is not None else DumpMetadata("memory", "")
        self._files = tuple(files)
        for f in self._files:
            weakref.finalize(self, f.close)

    def close(self) -> None:
        """Unmap every region and close the dump file.

        Raises
        ------
        MmapRegionError
            Some region is still in use elsewhere (see :meth:`GuestMemoryMmap.close`); the
            file stays open for it.
        """
        super().close()
        for f in self._files:
            f.close()

    def __enter__(self) -> DumpMemory:
        return self

    def __repr__(self) -> str:
        n = self.num_regions()
        size = int((self.ends - self.starts).sum()) if n else 0
        return (
            f"DumpMemory({self.metadata.format}, {n} region{'s' if n != 1 else ''}, "
            f"{size:#x} bytes, {self.metadata.path!r})"
        )


class Extent(NamedTuple):
    """A piece of guest memory as a dump lays it out.

    Attributes
    ----------
    gpa : int
        Guest physical start.
    size : int
        Bytes.
    file_offset : int or None
        Where the bytes are in the file; ``None`` for zeros the file does not store.
    field : str
        The header field that declared it (for error messages).
    where : int
        File offset of that field.
    """

    gpa: int
    size: int
    file_offset: int | None
    field: str
    where: int


class DumpFile:
    """Bounded, checked reads of a dump's headers.

    Every read names the field it is for, so a short file or a bad value becomes a
    :class:`~npguest.errors.DumpFormatError` with the field and file offset.

    Parameters
    ----------
    f : binary file object
        The dump, open for reading (seekable).
    path : str
        Its name, for messages.
    """

    def __init__(self, f: BinaryIO, path: str) -> None:
        self.f = f
        self.path = path
        self.size = os.fstat(f.fileno()).st_size

    def error(self, offset: int, field: str, reason: str) -> DumpFormatError:
        """Return the error for ``field`` at ``offset``.

        Parameters
        ----------
        offset : int
            File offset of the field.
        field : str
            Its name.
        reason : str
            What is wrong.

        Returns
        -------
        DumpFormatError
            The error (raise it).
        """
        return DumpFormatError(self.path, offset, field, reason)

    def read(self, offset: int, size: int, field: str) -> bytes:
        """Read exactly ``size`` bytes at ``offset``.

        Parameters
        ----------
        offset : int
            File offset.
        size : int
            Bytes (the caller bounds it; see :meth:`check_span`).
        field : str
            What is being read.

        Returns
        -------
        bytes
            The bytes.

        Raises
        ------
        DumpFormatError
            The file ends before ``offset + size``.
        """
        self.check_span(offset, size, field)
        self.f.seek(offset)
        data = self.f.read(size)
        if len(data) != size:  # the file shrank under us
            raise self.error(offset, field, f"truncated: read {len(data)} of {size} bytes")
        return data

    def unpack(self, fmt: struct.Struct, offset: int, field: str) -> tuple[Any, ...]:
        """Read and unpack a structure at ``offset``.

        Parameters
        ----------
        fmt : struct.Struct
            The layout.
        offset : int
            File offset.
        field : str
            What is being read.

        Returns
        -------
        tuple
            The fields.

        Raises
        ------
        DumpFormatError
            The file is too short.
        """
        return fmt.unpack(self.read(offset, fmt.size, field))

    def check_span(self, offset: int, size: int, field: str) -> None:
        """Check that ``[offset, offset + size)`` lies inside the file.

        Parameters
        ----------
        offset, size : int
            The span.
        field : str
            What it holds.

        Raises
        ------
        DumpFormatError
            It does not (negative, wrapping, or past the end of the file).
        """
        if offset < 0 or size < 0 or offset + size > self.size:
            raise self.error(
                offset,
                field,
                f"{size} bytes at file offset {offset:#x} run past the end of the "
                f"{self.size}-byte file",
            )


class Record:
    r"""A C structure of a dump header: named fields in one byte order, with their offsets.

    Parameters
    ----------
    order : str
        A :mod:`struct` byte-order character (``"<"`` or ``">"``).
    fields : sequence of (str, str)
        ``(name, struct code)`` in layout order.

    Examples
    --------
    >>> r = Record("<", [("magic", "4s"), ("count", "I")])
    >>> r.size, r.offsets["count"], r.pack(magic=b"EMiL", count=2)
    (8, 4, b'EMiL\x02\x00\x00\x00')
    """

    def __init__(self, order: str, fields: Sequence[tuple[str, str]]) -> None:
        self.names = tuple(name for name, _ in fields)
        self.struct = struct.Struct(order + "".join(code for _, code in fields))
        self.offsets = {
            name: struct.calcsize(order + "".join(code for _, code in fields[:i]))
            for i, (name, _) in enumerate(fields)
        }
        self.size = self.struct.size
        self._zeros = {name: b"" if code.endswith("s") else 0 for name, code in fields}

    def read(self, dump: DumpFile, offset: int, field: str) -> dict[str, Any]:
        """Read the structure at ``offset`` of ``dump`` as a dict (``field`` names it in errors).

        Parameters
        ----------
        dump : DumpFile
            The file.
        offset : int
            Where the structure starts.
        field : str
            Its name, for errors.

        Returns
        -------
        dict
            Field values by name.

        Raises
        ------
        DumpFormatError
            The file is too short.
        """
        return dict(zip(self.names, dump.unpack(self.struct, offset, field), strict=True))

    def pack(self, **values: int | bytes) -> bytes:
        """Pack ``values``; fields not given are zero.

        Parameters
        ----------
        **values : int or bytes
            Field values by name.

        Returns
        -------
        bytes
            The packed structure.
        """
        return self.struct.pack(*(values.get(name, self._zeros[name]) for name in self.names))


def map_extents(
    path: str | os.PathLike[str],
    extents: Iterable[Extent],
    metadata: DumpMetadata,
    *,
    writable: bool = False,
    merge: bool = False,
) -> DumpMemory:
    """Map a dump's extents as file-backed regions (zeros as anonymous regions).

    Extents are checked first (non-empty, no wrap past ``2**64``, inside the file, no two
    overlapping in guest memory), then each is mapped in place, one region per extent
    (so a dump written from a memory reopens with the same regions).  Nothing is read.

    Parameters
    ----------
    path : str or os.PathLike
        The dump file.
    extents : iterable of Extent
        The layout, in any order; zero-size extents are skipped.
    metadata : DumpMetadata
        Attached to the memory.
    writable : bool, optional
        Map the file shared and writable (writes change the dump); default read-only.
    merge : bool, optional
        Merge extents contiguous both in guest memory and in the file into one region
        (for formats that split memory into many small blocks).

    Returns
    -------
    DumpMemory
        The memory (owning the open file).

    Raises
    ------
    DumpFormatError
        An extent wraps past ``2**64``, runs past the end of the file, or overlaps another
        in guest memory (names the field that declared it), or there is none at all.
    MmapRegionError
        The file cannot be opened, or a mapping failed.
    """
    path = os.fspath(path)
    try:
        f = open(path, "r+b" if writable else "rb")  # noqa: SIM115 - owned by the memory
    except OSError as exc:
        raise MmapRegionError(f"cannot open {path!r}: {exc}") from exc
    try:
        return _map_open(f, path, list(extents), metadata, writable, merge)
    except BaseException:
        f.close()
        raise


def _map_open(
    f: BinaryIO,
    path: str,
    extents: list[Extent],
    metadata: DumpMetadata,
    writable: bool,
    merge: bool,
) -> DumpMemory:
    dump = DumpFile(f, path)
    kept = []
    for e in extents:
        if e.size < 0 or e.gpa < 0:
            raise dump.error(e.where, e.field, f"negative address or size ({e.gpa}, {e.size})")
        if e.size == 0:
            continue
        if e.gpa + e.size > U64_MAX:  # (a region ends below 2**64, as check_region_span says)
            raise dump.error(
                e.where, e.field, f"{e.size} bytes at {e.gpa:#x} wrap past the end of memory"
            )
        if e.file_offset is not None:
            dump.check_span(e.file_offset, e.size, e.field)
        kept.append(e)
    if not kept:
        raise dump.error(0, "memory layout", "the dump describes no memory")
    kept.sort(key=lambda e: e.gpa)
    merged = [kept[0]]
    for e in kept[1:]:
        last = merged[-1]
        if e.gpa < last.gpa + last.size:
            raise dump.error(
                e.where,
                e.field,
                f"{e.size} bytes at {e.gpa:#x} overlap {last.size} bytes at {last.gpa:#x} "
                f"(declared by {last.field} at file offset {last.where:#x})",
            )
        if (
            merge
            and e.gpa == last.gpa + last.size
            and (
                (e.file_offset is None and last.file_offset is None)
                or (
                    e.file_offset is not None
                    and last.file_offset is not None
                    and e.file_offset == last.file_offset + last.size
                )
            )
        ):
            merged[-1] = last._replace(size=last.size + e.size)
        else:
            merged.append(e)
    _reserve_fds(len(merged), path)
    regions = [
        GuestRegionMmap.from_range(
            e.gpa,
            e.size,
            None if e.file_offset is None else FileOffset(f, e.file_offset),
            readonly=not writable,
            shared=True,
        )
        for e in merged
    ]
    return DumpMemory(regions, metadata, files=(f,))


def _reserve_fds(count: int, path: str) -> None:
    """Make room for ``count`` more file descriptors (each mapping holds one, a dup).

    A dump of thousands of extents (a Firecracker diff, an ELF with many PT_LOADs) needs
    that many descriptors: the soft ``RLIMIT_NOFILE`` (often 1024) is raised towards the
    hard limit, as Go and Rust runtimes do at start-up.

    Raises
    ------
    MmapRegionError
        Even the hard limit is too low.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:  # no procfs: assume the worst
        in_use = soft
    need = in_use + count + 64
    if need <= soft or soft == resource.RLIM_INFINITY:
        return
    if hard != resource.RLIM_INFINITY and need > hard:
        raise MmapRegionError(
            f"{path}: mapping {count} extents needs {need} file descriptors; the limit is "
            f"{hard} (raise it with ulimit -n)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def region_chunks(mem: GuestMemoryMmap, chunk: int = CHUNK) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(gpa, bytes)`` pieces of every region in ascending order, ``chunk`` at a time.

    The pieces are zero-copy views of the regions: a writer streams a memory of any size
    within ``chunk`` bytes of its own memory.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.
    chunk : int, optional
        Piece size (default 16 MiB).

    Yields
    ------
    tuple of (int, numpy.ndarray)
        The guest address of the piece and a ``uint8`` view of it.
    """
    own = getattr(mem, "region_chunks", None)  # memories without host memory stream their own
    if own is not None:
        yield from own(chunk)
        return
    for region in mem.iter():
        start = int(region.start_addr())
        data = region.as_array()
        for off in range(0, data.shape[0], chunk):
            yield start + off, data[off : off + chunk]


def data_extents(fd: int, start: int, size: int) -> list[tuple[int, int]]:
    """Return the ``(offset, length)`` data extents of a sparse file within a span.

    Uses ``lseek(SEEK_DATA)`` / ``lseek(SEEK_HOLE)``, so the answer has the file
    system's block granularity (4 KiB on ext4 and tmpfs); a file system without hole
    reporting answers the whole span as data.  Reads nothing, and moves ``fd``'s file
    position.

    Parameters
    ----------
    fd : int
        An open file descriptor.
    start, size : int
        The span ``[start, start + size)`` of the file to look at.

    Returns
    -------
    list of (int, int)
        The extents holding data, ascending, clipped to the span; holes are left out.

    Raises
    ------
    OSError
        ``lseek`` failed other than by finding no more data.

    Examples
    --------
    >>> import os, tempfile
    >>> with tempfile.TemporaryFile() as f:
    ...     f.truncate(1 << 20)
    ...     _ = os.pwrite(f.fileno(), b"x" * 4096, 1 << 16)
    ...     data_extents(f.fileno(), 0, 1 << 20)  # doctest: +SKIP
    [(65536, 4096)]
    """
    end = start + size
    extents = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at or after pos
                break
            raise
        if data >= end:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        extents.append((data, hole - data))
        pos = hole
    return extents


@contextlib.contextmanager
def open_headers(path: str | os.PathLike[str]) -> Iterator[DumpFile]:
    """Open a dump for checked header reads, closing it on exit.

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Yields
    ------
    DumpFile
        The open file.

    Raises
    ------
    MmapRegionError
        The file cannot be opened.
    """
    path = os.fspath(path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise MmapRegionError(f"cannot open {path!r}: {exc}") from exc
    with f:
        yield DumpFile(f, path)
