"""npguest: guest (virtual machine) physical memory for Python, numpy-native.

The model of rust-vmm's ``vm-memory`` crate (the guest-memory layer of Firecracker,
crosvm and Cloud Hypervisor), built on numpy and numba: typed guest addresses, regions
of ``mmap``-backed memory placed in a guest physical address space, ``Bytes``-style
access that crosses region boundaries, volatile slices, numpy dtypes as ``ByteValued``
objects, and vectorised batch reads and writes.

Analysis lives in submodules: :mod:`npguest.scan` (``find``, ``find_many``, ``strings``...),
:mod:`npguest.pages` (zero pages, hashes, entropy, ``diff``), :mod:`npguest.display`
(``hexdump``, HTML reprs, plots), :mod:`npguest.records` (structured reads as pandas
tables), :mod:`npguest.pointers` (pointer chains and linked lists, many at once),
:mod:`npguest.walk`; :mod:`npguest.dask` scales scans out
(``pip install npguest[dask]``; imported on demand).  Bulk transfers: :mod:`npguest.transfer`
(memory to memory, snapshot files and diffs), :mod:`npguest.channel` (memory over pipes and
sockets) and :mod:`npguest.migration` (pre-copy live migration over a stream).

Importing npguest compiles nothing and does not import numba; kernels load on first use.

Examples
--------
>>> import numpy as np, npguest
>>> mem = npguest.GuestMemoryMmap.from_ranges([(0x0, 0x10000), (0x10000, 0x10000)])
>>> hdr = np.dtype([("magic", npguest.Be32), ("count", npguest.Le16)])
>>> mem.write_obj((0xFEEDFACE, 3), 0xFFFE, hdr)     # straddles two regions
>>> rec = mem.read_obj(0xFFFE, hdr)
>>> hex(rec["magic"]), int(rec["count"])
('0xfeedface', 3)
"""

from __future__ import annotations

from . import errors
from .access import Bytes
from .address import U64_MAX, Address, GuestAddress, MemoryRegionAddress
from .atomic import GuestAddressSpace, GuestMemoryAtomic, GuestMemoryExclusiveGuard
from .bitmap import AtomicBitmap, Bitmap, BitmapSlice, NoBitmap
from .dtypes import Be16, Be32, Be64, BeSize, Le16, Le32, Le64, LeSize, as_bytes, from_bytes
from .errors import GuestMemoryError
from .guest_memory import GuestMemoryMmap, GuestMemorySliceIterator
from .mapping import FileOffset, MmapRegion
from .region import GuestRegionMmap
from .volatile import PtrGuard, VolatileArrayRef, VolatileRef, VolatileSlice

__version__ = "0.1.0"

# Loaded on first use, so that ``import npguest`` costs only the memory core (the import
# target is 1.5x ``import numpy``): the analysis submodules, and the names of the IOMMU,
# page-table and dump layers.
_SUBMODULES = frozenset(
    {
        "channel", "display", "dumps", "handover", "migration", "pages", "pointers", "progress",
        "records", "scan", "transfer", "walk",
    }
)  # fmt: skip
_LAZY = {
    **dict.fromkeys(
        ("Iommu", "IommuMemory", "Iotlb", "IotlbIommu", "IotlbLookup", "IovaRange",
         "MappedRange", "Permissions"),
        "iommu",
    ),
    **dict.fromkeys(("PageFlags", "X86PageTables"), "paging"),
    **dict.fromkeys(("DumpMemory", "DumpMetadata", "open_dump", "write_dump"), "dumps"),
}  # fmt: skip


def __getattr__(name: str) -> object:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "U64_MAX",
    "Address",
    "AtomicBitmap",
    "Be16",
    "Be32",
    "Be64",
    "BeSize",
    "Bitmap",
    "BitmapSlice",
    "Bytes",
    "DumpMemory",
    "DumpMetadata",
    "FileOffset",
    "GuestAddress",
    "GuestAddressSpace",
    "GuestMemoryAtomic",
    "GuestMemoryError",
    "GuestMemoryExclusiveGuard",
    "GuestMemoryMmap",
    "GuestMemorySliceIterator",
    "GuestRegionMmap",
    "Iommu",
    "IommuMemory",
    "IotlbIommu",
    "Iotlb",
    "IotlbLookup",
    "IovaRange",
    "Le16",
    "Le32",
    "Le64",
    "LeSize",
    "MappedRange",
    "MemoryRegionAddress",
    "MmapRegion",
    "NoBitmap",
    "PageFlags",
    "Permissions",
    "PtrGuard",
    "VolatileArrayRef",
    "VolatileRef",
    "VolatileSlice",
    "X86PageTables",
    "__version__",
    "as_bytes",
    "channel",
    "display",
    "errors",
    "from_bytes",
    "handover",
    "migration",
    "open_dump",
    "pages",
    "pointers",
    "progress",
    "records",
    "scan",
    "transfer",
    "walk",
    "write_dump",
]
