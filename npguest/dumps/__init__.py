"""Memory dumps: open any VMM's dump as a guest memory, and write dumps back.

:func:`open_dump` sniffs the format and returns a :class:`~npguest.dumps.dump.DumpMemory`
(a :class:`~npguest.GuestMemoryMmap` with ``metadata``); :func:`write_dump` writes any
memory in a chosen format.  One module per format holds its reader and writer.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

from ..errors import MmapRegionError
from ..guest_memory import GuestMemoryMmap
from .dump import CpuState, DumpMemory, DumpMetadata, Note

__all__ = [
    "FORMATS",
    "WRITE_FORMATS",
    "CpuState",
    "DumpMemory",
    "DumpMetadata",
    "Note",
    "detect_format",
    "open_dump",
    "write_dump",
]


class _Format(NamedTuple):
    module: str  # module of npguest.dumps holding the functions
    opener: str
    writer: str | None
    writer_options: tuple[tuple[str, Any], ...] = ()


_FORMATS = {
    "raw": _Format("raw", "open_raw", "write_raw"),
    "elf": _Format("elf", "open_elf", "write_elf"),
    "lime": _Format("lime", "open_lime", "write_lime"),
    "kdump": _Format("kdump", "open_kdump", "write_kdump"),
    "kdump-flattened": _Format("kdump", "open_kdump", "write_kdump", (("flattened", True),)),
    "firecracker": _Format("firecracker", "open_firecracker", None),
    "cloud-hypervisor": _Format("cloud_hypervisor", "open_cloud_hypervisor", None),
}

#: Formats :func:`open_dump` reads (``format=``).
FORMATS = tuple(_FORMATS)
#: Formats :func:`write_dump` writes.
WRITE_FORMATS = tuple(name for name, f in _FORMATS.items() if f.writer)

#: Bytes of a file's start that :func:`detect_format` looks at.
HEAD = 64


def _function(module: str, name: str) -> Callable[..., Any]:
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def detect_format(path: str | os.PathLike[str]) -> str:
    """Tell a dump's format from its first bytes (or, for a directory, its files).

    Parameters
    ----------
    path : str or os.PathLike
        A dump file, or a Cloud Hypervisor snapshot directory.

    Returns
    -------
    str
        ``"elf"``, ``"kdump"`` (plain or flattened), ``"lime"`` (LiME or AVML),
        ``"cloud-hypervisor"``, or ``"raw"`` when nothing matches (Firecracker memory
        files are raw too: give ``format="firecracker"`` to place their regions).

    Raises
    ------
    MmapRegionError
        The path cannot be read.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return "cloud-hypervisor"
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD)
    except OSError as exc:
        raise MmapRegionError(f"cannot open {path!r}: {exc}") from exc
    if head.startswith(b"\x7fELF"):
        return "elf"
    if head.startswith((b"KDUMP   ", b"DISKDUMP", b"makedumpfile\0")):
        return "kdump"
    if head[:4] in (b"EMiL", b"AVML"):
        return "lime"
    return "raw"


def open_dump(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    writable: bool = False,
    **options: Any,
) -> DumpMemory:
    """Open a memory dump as a guest memory, zero-copy.

    Regions are ``mmap`` views of the file at their guest physical addresses: opening
    reads only headers, whatever the dump's size.  Accessing a hole raises
    :class:`~npguest.errors.InvalidGuestAddressError` naming the address; batch reads can
    zero-fill or mask holes instead (``read_objs(..., holes="zero")``).

    The file must not shrink while it is open: like any ``mmap``, touching a page past
    its new end kills the process with ``SIGBUS`` (kdump dumps, read with ``pread``,
    raise :class:`~npguest.errors.DumpFormatError` instead).  Writing a dump back onto
    its own path with :func:`write_dump` is safe: it replaces the file, it does not
    truncate it.

    Parameters
    ----------
    path : str or os.PathLike
        The dump (a directory for Cloud Hypervisor snapshots).
    format : str, optional
        One of :data:`FORMATS`; default: :func:`detect_format`.
    writable : bool, optional
        Map the dump writable, so writes change the file (not every format allows it).
    **options
        Format options: ``base=``, ``layout=`` (raw); ``regions=``, ``mem_size_mib=``,
        ``vmstate=`` (Firecracker); ``cache_pages=`` (kdump).  See each format's
        ``open_*`` function in ``npguest.dumps.<format>``.

    Returns
    -------
    DumpMemory
        The memory; ``.metadata`` holds CPU registers, VMCOREINFO and the rest.

    Raises
    ------
    DumpFormatError
        The file is malformed (names the field and its file offset).
    MmapRegionError
        The file cannot be opened or mapped.
    ValueError
        Unknown ``format``.

    Examples
    --------
    >>> import os, tempfile, npguest
    >>> mem = npguest.GuestMemoryMmap.from_ranges([(0x0, 0x2000), (0x100000, 0x1000)])
    >>> mem.write(b"kernel", 0x100000)
    6
    >>> path = os.path.join(tempfile.mkdtemp(), "guest.lime")
    >>> npguest.write_dump(mem, path, format="lime")
    >>> with npguest.open_dump(path) as dump:
    ...     dump.metadata.format, dump.num_regions(), dump.read_bytes(0x100000, 6)
    ('lime', 2, b'kernel')
    """
    fmt = detect_format(path) if format is None else format
    if fmt not in _FORMATS:
        raise ValueError(f"unknown dump format {fmt!r}; expected one of {', '.join(FORMATS)}")
    spec = _FORMATS[fmt]
    return _function(spec.module, spec.opener)(path, writable=writable, **options)


def write_dump(
    mem: GuestMemoryMmap,
    path: str | os.PathLike[str],
    format: str = "elf",
    **options: Any,
) -> None:
    """Write a guest memory as a dump file, streaming region by region.

    The dump is written to a new file that replaces ``path`` when complete: an error
    leaves ``path`` as it was, and a memory opened from ``path`` may be written back onto
    it (its mappings keep the old file's pages).

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory (a :class:`DumpMemory` also passes its CPU notes on, where the format
        has room for them).
    path : str or os.PathLike
        The output file (replaced).
    format : str, optional
        One of :data:`WRITE_FORMATS` (default ``"elf"``, QEMU's ``dump-guest-memory``
        layout).
    **options
        Format options (``progress=`` everywhere: called as ``progress(done, total)``
        in bytes; ``base=`` for raw; ``compression=`` for kdump).

    Raises
    ------
    ValueError
        Unknown ``format``, options it does not take, or a memory the format cannot hold.
    OSError
        The file cannot be written.
    """
    spec = _FORMATS.get(format)
    if spec is None or spec.writer is None:
        raise ValueError(
            f"cannot write format {format!r}; expected one of {', '.join(WRITE_FORMATS)}"
        )
    # Write a new file beside the target, then rename it over the target: a reader of the
    # old file (this very memory, when it was opened from ``path``) keeps its pages.
    path = os.fspath(path)
    tmp = f"{path}.npguest-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        _function(spec.module, spec.writer)(mem, tmp, **dict(spec.writer_options), **options)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
