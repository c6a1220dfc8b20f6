"""Firecracker snapshot memory files (``PUT /snapshot/create``'s ``mem_file_path``).

The memory file is the guest's memory regions' images back to back, in the order of the
VM's region list: region *i* starts at file offset ``sum(size[0..i-1])``.  The file holds
no description of itself, so the region list comes from (first match wins):

1. ``regions=[(gpa, size), ...]``, in the VM's order;
2. ``vmstate=``, the snapshot's state file (Firecracker v1.7 to v1.14, serde/bincode): its
   magic gives the architecture, its format version the layout rules, and its first
   field, ``VmInfo.mem_size_mib``, the memory size.  The region list stored deeper in the
   state is not decoded (its encoding changed in every version), so v1.14 hot-plug
   regions are not found this way: give ``regions=`` for those;
3. ``mem_size_mib=`` with ``arch=`` and ``layout_version=``, through Firecracker's
   ``arch_memory_regions``: x86-64 v1.13 and later has a 1 GiB MMIO gap at 3 GiB (and a
   256 GiB one at 256 GiB), v1.12 and earlier a 768 MiB gap at 3.25 GiB, both restarting
   at 4 GiB; aarch64 has one region at 2 GiB;
4. otherwise the file's size as the memory size, with the same rules.

The layout must account for the whole file: a file longer or shorter than its regions is a
:class:`DumpFormatError`.

**Diff snapshots** (``snapshot_type: "Diff"``) have the same layout, sparse: only pages
dirtied since the previous snapshot are written.  ``diff=True`` maps only the file's data
extents (``SEEK_DATA``/``SEEK_HOLE``, at the file system's block granularity); the rest
reads as holes (:class:`~npguest.errors.InvalidGuestAddressError`, or zeros with
``holes="zero"``).  ``metadata.extra["extents"]`` lists what is mapped.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any

from ..errors import DumpFormatError, MmapRegionError
from .dump import DumpMemory, DumpMetadata, Extent, data_extents, map_extents, open_headers

__all__ = ["arch_memory_regions", "open_firecracker"]

GIB = 1 << 30
MIB = 1 << 20
#: Guest page size of Firecracker VMs.
PAGE_SIZE = 4096
#: vmstate magic (u64 LE at offset 0) of each architecture, v1.7 to v1.14.
MAGICS = {0x0710_1984_8664_0000: "x86_64", 0x0710_1984_AAAA_0000: "aarch64"}
#: Highest snapshot format major version whose x86-64 layout has the v1.12 gap (v1.14 is 8).
LAST_OLD_LAYOUT_FORMAT = 6
#: Highest snapshot format major version read (v1.14); v1.15 moved to bitcode.
LAST_FORMAT = 8
#: (gap start, gap size) of each x86-64 layout, in address order.
X86_GAPS_V1_13 = ((3 * GIB, GIB), (256 * GIB, 256 * GIB))
X86_GAPS_V1_12 = ((0xD000_0000, 4 * GIB - 0xD000_0000),)
#: Start of aarch64 DRAM.
AARCH64_DRAM_START = 0x8000_0000
_U64 = struct.Struct("<Q")


def arch_memory_regions(
    mem_size: int, arch: str = "x86_64", layout_version: str | None = None
) -> list[tuple[int, int]]:
    """Return the ``(gpa, size)`` regions Firecracker gives a guest of ``mem_size`` bytes.

    Parameters
    ----------
    mem_size : int
        Guest memory in bytes (> 0).
    arch : {"x86_64", "aarch64"}, optional
        The guest architecture.
    layout_version : str, optional
        The Firecracker version (``"1.12"``...) whose x86-64 layout to use; default the
        current one (v1.13 and later).

    Returns
    -------
    list of (int, int)
        The regions, in Firecracker's order (ascending).

    Raises
    ------
    ValueError
        ``mem_size`` is not positive, or ``arch`` / ``layout_version`` is unknown.

    Examples
    --------
    >>> [(hex(a), hex(s)) for a, s in arch_memory_regions(4 << 30)]
    [('0x0', '0xc0000000'), ('0x100000000', '0x40000000')]
    >>> [(hex(a), hex(s)) for a, s in arch_memory_regions(4 << 30, layout_version="1.12")]
    [('0x0', '0xd0000000'), ('0x100000000', '0x30000000')]
    """
    if mem_size <= 0:
        raise ValueError(f"memory size must be positive, not {mem_size}")
    if _check_arch(arch) == "aarch64":
        return [(AARCH64_DRAM_START, mem_size)]
    gaps = X86_GAPS_V1_12 if _before_1_13(layout_version) else X86_GAPS_V1_13
    regions = []
    start, left = 0, mem_size
    for gap, gap_size in gaps:
        size = min(left, gap - start)
        regions.append((start, size))
        start, left = gap + gap_size, left - size
        if not left:
            return regions
    regions.append((start, left))
    return regions


def _check_arch(arch: str) -> str:
    if arch not in MAGICS.values():
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(MAGICS.values())}")
    return arch


def _before_1_13(version: str | None) -> bool:
    if version is None:
        return False
    try:
        major, minor = (int(part) for part in version.removeprefix("v").split(".")[:2])
    except ValueError:
        raise ValueError(f"bad layout_version {version!r}; expected like '1.12'") from None
    return (major, minor) < (1, 13)


def open_firecracker(
    path: str | os.PathLike[str],
    *,
    writable: bool = False,
    regions: Sequence[tuple[int, int]] | None = None,
    vmstate: str | os.PathLike[str] | None = None,
    mem_size_mib: int | None = None,
    arch: str = "x86_64",
    layout_version: str | None = None,
    diff: bool = False,
) -> DumpMemory:
    r"""Open a Firecracker snapshot memory file.

    See the module documentation for where the region list comes from.

    Parameters
    ----------
    path : str or os.PathLike
        The memory file.
    writable : bool, optional
        Map it writable (writes change the file).  Default read-only.
    regions : sequence of (int, int), optional
        ``(gpa, size)`` of each region, in the VM's order.
    vmstate : str or os.PathLike, optional
        The snapshot's state file (v1.7 to v1.14).
    mem_size_mib : int, optional
        The guest's memory size (``machine-config``'s ``mem_size_mib``).
    arch : {"x86_64", "aarch64"}, optional
        Guest architecture for ``mem_size_mib`` and the default (a ``vmstate`` says its own).
    layout_version : str, optional
        Firecracker version whose x86-64 layout to apply (``"1.12"`` for v1.12 and older);
        default v1.13 and later.
    diff : bool, optional
        A diff snapshot: map only the file's data extents, the rest are holes.

    Returns
    -------
    DumpMemory
        The memory.  ``metadata.extra``: ``"regions"`` (``(gpa, size, file_offset)`` each),
        ``"source"`` (what gave the layout), ``"diff"``, with ``diff=True``
        ``"extents"`` (``(gpa, size, file_offset)`` of each mapped data extent), and from a
        vmstate ``"snapshot_version"`` and ``"mem_size_mib"``.

    Raises
    ------
    DumpFormatError
        The layout does not match the file's size, a region wraps or overlaps another, or
        the vmstate is not a v1.7-v1.14 state file (names the field and file offset).
    MmapRegionError
        A file cannot be opened or mapped.
    ValueError
        Bad ``arch``, ``layout_version`` or ``mem_size_mib``.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "mem")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"\x01" * 0x2000 + b"\x02" * 0x1000)
    >>> with open_firecracker(path, regions=[(0x100000, 0x2000), (0x0, 0x1000)]) as mem:
    ...     mem.read_bytes(0x0, 1), mem.read_bytes(0x101fff, 1)
    (b'\x02', b'\x01')
    """
    path = os.fspath(path)
    try:
        file_size = os.stat(path).st_size
    except OSError as exc:
        raise MmapRegionError(f"cannot open {path!r}: {exc}") from exc
    _check_arch(arch)
    extra: dict[str, Any] = {"diff": diff}
    if regions is not None:
        layout = [(int(gpa), int(size)) for gpa, size in regions]
        extra["source"] = "regions"
    else:
        if vmstate is not None:
            arch, layout_version, mem_size_mib = _read_vmstate(os.fspath(vmstate), extra)
            extra["source"] = "vmstate"
        elif mem_size_mib is not None:
            extra["source"] = "mem_size_mib"
        else:
            extra["source"] = "file size"
        if mem_size_mib is None and not file_size:
            raise DumpFormatError(path, 0, "file size", "an empty file holds no memory")
        mem_size = file_size if mem_size_mib is None else int(mem_size_mib) * MIB
        layout = arch_memory_regions(mem_size, arch, layout_version)
    placed, offset = [], 0
    for gpa, size in layout:
        placed.append((gpa, size, offset))
        offset += max(size, 0)
    extra["regions"] = tuple(placed)
    if offset != file_size:
        raise DumpFormatError(
            path,
            min(offset, file_size),
            "file size",
            f"{file_size} bytes, but the regions ({extra['source']}) need {offset}: "
            "the layout does not describe this file",
        )
    extents = [Extent(g, s, o, f"regions[{i}]", 0) for i, (g, s, o) in enumerate(placed)]
    if diff:
        extents = _data_only(path, extents)
        extra["extents"] = tuple((e.gpa, e.size, e.file_offset) for e in extents)
    meta = DumpMetadata("firecracker", path, machine=arch, page_size=PAGE_SIZE, extra=extra)
    return map_extents(path, extents, meta, writable=writable)


def _data_only(path: str, extents: list[Extent]) -> list[Extent]:
    """Cut each extent down to the pieces of it the sparse file holds data for."""
    try:
        with open(path, "rb") as f:
            fd = f.fileno()
            return [
                e._replace(gpa=e.gpa + (offset - e.file_offset), size=size, file_offset=offset)
                for e in extents
                if e.size > 0
                for offset, size in data_extents(fd, e.file_offset, e.size)
            ]
    except OSError as exc:
        raise MmapRegionError(f"cannot read the extents of {path!r}: {exc}") from exc


def _read_vmstate(path: str, extra: dict[str, Any]) -> tuple[str, str, int]:
    """Read a v1.7-v1.14 vmstate's arch, layout version and ``VmInfo.mem_size_mib``."""
    with open_headers(path) as state:
        (magic,) = state.unpack(_U64, 0, "magic")
        if magic not in MAGICS:
            older = magic & ~0xFFFF in MAGICS
            raise state.error(
                0,
                "magic",
                f"{magic:#018x} is not a Firecracker v1.7-v1.14 state file"
                + (" (a pre-v1.7 versionize state)" if older else "")
                + ": give regions= or mem_size_mib=",
            )
        (length,) = state.unpack(_U64, 8, "version length")
        if length > 64:
            raise state.error(8, "version length", f"{length} bytes is not a version string")
        raw = state.read(16, length, "version")
        try:
            version = raw.decode("ascii")
            major = int(version.split(".")[0])
        except (UnicodeDecodeError, ValueError):
            raise state.error(16, "version", f"{raw!r} is not a semantic version") from None
        if not 1 <= major <= LAST_FORMAT:
            raise state.error(
                16, "version", f"snapshot format {version} is not one of v1.7-v1.14's"
            )
        (mem_size_mib,) = state.unpack(_U64, 16 + length, "vm_info.mem_size_mib")
        if not 0 < mem_size_mib < 1 << 44:
            raise state.error(16 + length, "vm_info.mem_size_mib", f"{mem_size_mib} MiB")
    extra.update(snapshot_version=version, mem_size_mib=mem_size_mib)
    layout = "1.12" if major <= LAST_OLD_LAYOUT_FORMAT else "1.13"
    return MAGICS[magic], layout, mem_size_mib
