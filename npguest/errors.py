"""The npguest exception hierarchy.

Everything npguest raises on bad input or a failed access derives from
:class:`GuestMemoryError` and from the built-in exception a caller outside npguest
would catch (``IndexError``, ``OverflowError``, ``OSError``, ``ValueError``,
``TypeError``, ``PermissionError``).  The names follow vm-memory's error variants
with Python's ``Error`` suffix.

Data lives in attributes; the message is built in ``__str__`` (addresses in hex,
sizes in decimal).  Constructors take positional arguments only, so every error
pickles and crosses process boundaries unchanged.
"""

from __future__ import annotations

__all__ = [
    "AddressSpaceError",
    "BitmapError",
    "ByteValuedError",
    "CallbackOutOfRangeError",
    "CannotResolveError",
    "DumpFormatError",
    "GuestAddressOverflowError",
    "GuestMemoryError",
    "HostAddressNotAvailableError",
    "InaccessibleError",
    "InvalidBackendAddressError",
    "InvalidGuestAddressError",
    "InvalidGuestRegionError",
    "IommuError",
    "IommuMisconfiguredError",
    "MemoryRegionOverlapError",
    "MisalignedError",
    "MmapRegionError",
    "NoMemoryRegionError",
    "OffsetOverflowError",
    "OutOfBoundsError",
    "PartialBufferError",
    "ReadOnlyMemoryError",
    "RegionCollectionError",
    "StreamError",
    "TooBigError",
    "UnsortedMemoryRegionsError",
    "VolatileMemoryError",
]


_COUNTS = frozenset({"count", "length", "size", "n", "index", "alignment"})
"""Argument names whose values are counts or sizes: shown in decimal, not hex."""


def _hex(value: object) -> str:
    """Format an address-like value in hex, leaving anything else as it is."""
    try:
        return f"{int(value):#x}"  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return repr(value)


class GuestMemoryError(Exception):
    """Base class of every error npguest raises."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)

    def __reduce__(self):
        # OSError subclasses otherwise pickle as (errno, strerror): rebuild from our args.
        return (type(self), self.args, self.__dict__ or None)

    def __str__(self) -> str:
        return self._message()

    def _message(self) -> str:
        return " ".join(str(a) for a in self.args)


class InvalidGuestAddressError(GuestMemoryError, IndexError):
    """No region backs the guest address ``addr``.

    Parameters
    ----------
    addr : int
        The guest physical address at fault.
    """

    def __init__(self, addr: int) -> None:
        super().__init__(addr)
        self.addr = int(addr)

    def _message(self) -> str:
        return f"invalid guest address {_hex(self.addr)}: no memory region backs it"


class InvalidBackendAddressError(GuestMemoryError, IndexError):
    """An offset lies outside a region or a slice, or is misaligned for the access.

    Parameters
    ----------
    addr : int
        The offset (region address) at fault.
    reason : str, optional
        What was wrong with it (out of range, misaligned, straddles a region end...).
    """

    def __init__(self, addr: int, reason: str = "") -> None:
        super().__init__(addr, reason)
        self.addr = int(addr)
        self.reason = reason

    def _message(self) -> str:
        msg = f"invalid backend address {_hex(self.addr)}"
        return f"{msg}: {self.reason}" if self.reason else msg


class GuestAddressOverflowError(GuestMemoryError, OverflowError):
    """``addr + size`` does not fit in 64 bits (or ``addr`` itself is not a u64).

    Parameters
    ----------
    addr : int
        The base address (or the argument that is not a u64).
    size : int
        The size or offset added to it.
    what : str, optional
        The argument ``addr`` was given as, when it is not a u64 (default
        ``"address"``); counts and sizes (``"count"``, ``"length"``, ...) are shown in
        decimal.
    """

    def __init__(self, addr: int, size: int, what: str = "address") -> None:
        super().__init__(*(addr, size) if what == "address" else (addr, size, what))
        self.addr = int(addr)
        self.size = int(size)
        self.what = what

    def _message(self) -> str:
        if not 0 <= self.addr < 1 << 64:
            shown = str(self.addr) if self.what in _COUNTS else _hex(self.addr)
            return f"{self.what} {shown} is not a 64-bit unsigned value"
        if self.size < 0:
            return f"guest address {_hex(self.addr)} - {-self.size} underflows 0"
        return f"guest address {_hex(self.addr)} + {self.size} overflows 2**64 - 1"


class PartialBufferError(GuestMemoryError):
    """A hole, a region end or a short stream cut an all-or-nothing access short.

    Parameters
    ----------
    expected : int
        Bytes the access had to move.
    completed : int
        Bytes it did move before it stopped (they *were* moved).
    """

    def __init__(self, expected: int, completed: int) -> None:
        super().__init__(expected, completed)
        self.expected = int(expected)
        self.completed = int(completed)

    def _message(self) -> str:
        return f"only used {self.completed} bytes in {self.expected} long buffer"


class HostAddressNotAvailableError(GuestMemoryError):
    """The region is not host-mapped memory, so it has no host address."""

    def _message(self) -> str:
        return "host virtual address not available"


class CallbackOutOfRangeError(GuestMemoryError):
    """A ``try_access`` callback reported more bytes than it was offered.

    Parameters
    ----------
    offered : int
        Bytes offered to the callback.
    reported : int
        Bytes the callback claimed to have processed.
    """

    def __init__(self, offered: int, reported: int) -> None:
        super().__init__(offered, reported)
        self.offered = int(offered)
        self.reported = int(reported)

    def _message(self) -> str:
        return (
            f"try_access callback reported {self.reported} bytes processed "
            f"but was offered only {self.offered}"
        )


class StreamError(GuestMemoryError, OSError):
    """A file, socket or fd failed (or hit end-of-stream) mid-copy.

    The underlying ``OSError``, when there is one, is ``__cause__``.

    Parameters
    ----------
    reason : str
        What happened (e.g. ``"failed to fill whole buffer"``).
    completed : int, optional
        Bytes moved before the failure.
    addr : int, optional
        Guest address of the range being moved when it failed.
    length : int, optional
        That range's length.
    """

    def __init__(
        self, reason: str, completed: int = 0, addr: int | None = None, length: int | None = None
    ) -> None:
        super().__init__(reason, completed, addr, length)
        # OSError.__init__ kept only (errno, strerror) of four arguments in args: restore them
        self.args = (reason, completed, addr, length)
        self.errno, self.strerror = None, reason
        self.reason = reason
        self.completed = int(completed)
        self.addr = None if addr is None else int(addr)
        self.length = None if length is None else int(length)

    def _message(self) -> str:
        where = "" if self.addr is None else f" in guest range {self.addr:#x}+{self.length}"
        return f"stream error after {self.completed} bytes{where}: {self.reason}"


class VolatileMemoryError(GuestMemoryError):
    """Base class of the errors of volatile slices and references."""


class OutOfBoundsError(VolatileMemoryError, IndexError):
    """An access reaches past the end of a volatile slice.

    Parameters
    ----------
    addr : int
        The offending offset (the end offset for bounded accesses, as vm-memory).
    """

    def __init__(self, addr: int) -> None:
        super().__init__(addr)
        self.addr = int(addr)

    def _message(self) -> str:
        return f"address {_hex(self.addr)} is out of bounds"


class OffsetOverflowError(VolatileMemoryError, OverflowError):
    """``base + offset`` overflows a 64-bit offset.

    Parameters
    ----------
    base : int
        The base offset.
    offset : int
        The amount added to it.
    """

    def __init__(self, base: int, offset: int) -> None:
        super().__init__(base, offset)
        self.base = int(base)
        self.offset = int(offset)

    def _message(self) -> str:
        return f"address {_hex(self.base)} offset by {_hex(self.offset)} would overflow"


class TooBigError(VolatileMemoryError, OverflowError):
    """``nelements * size`` does not fit in a signed 64-bit size.

    Parameters
    ----------
    nelements : int
        Number of elements asked for.
    size : int
        Size of one element in bytes.
    """

    def __init__(self, nelements: int, size: int) -> None:
        super().__init__(nelements, size)
        self.nelements = int(nelements)
        self.size = int(size)

    def _message(self) -> str:
        return f"{self.nelements} elements of size {self.size} would overflow a 64-bit size"


class MisalignedError(VolatileMemoryError, ValueError):
    """An atomic access at a host address that is not a multiple of its alignment.

    Parameters
    ----------
    addr : int
        The host address at fault.
    alignment : int
        The required alignment in bytes.
    """

    def __init__(self, addr: int, alignment: int) -> None:
        super().__init__(addr, alignment)
        self.addr = int(addr)
        self.alignment = int(alignment)

    def _message(self) -> str:
        return f"address {_hex(self.addr)} is not aligned to {self.alignment}"


class RegionCollectionError(GuestMemoryError, ValueError):
    """Base class of the errors building a region collection."""


class NoMemoryRegionError(RegionCollectionError):
    """No region was given, or no region matches the one to remove.

    Parameters
    ----------
    addr : int, optional
        Base of the region asked for (for ``remove_region``).
    size : int, optional
        Size of the region asked for (for ``remove_region``).
    """

    def __init__(self, addr: int | None = None, size: int | None = None) -> None:
        super().__init__(addr, size)
        self.addr = addr
        self.size = size

    def _message(self) -> str:
        if self.addr is None:
            return "no memory region found"
        return f"no memory region found at {_hex(self.addr)} of size {self.size}"


class _RegionPairError(RegionCollectionError):
    """A pair of regions breaks a rule of the collection."""

    _rule = ""

    def __init__(self, first_start: int, second_start: int) -> None:
        super().__init__(first_start, second_start)
        self.first_start = int(first_start)
        self.second_start = int(second_start)

    def _message(self) -> str:
        return (
            f"{self._rule}: region at {_hex(self.first_start)} "
            f"and region at {_hex(self.second_start)}"
        )


class MemoryRegionOverlapError(_RegionPairError):
    """Two memory regions intersect.

    Parameters
    ----------
    first_start, second_start : int
        Start addresses of the two regions.
    """

    _rule = "memory regions intersect"


class UnsortedMemoryRegionsError(_RegionPairError):
    """The regions given are not sorted by start address.

    Parameters
    ----------
    first_start, second_start : int
        Start addresses of the two regions out of order.
    """

    _rule = "memory regions are not sorted"


class InvalidGuestRegionError(RegionCollectionError):
    """A region's guest address plus its size passes ``2**64 - 1``.

    Parameters
    ----------
    addr : int
        Start of the region.
    size : int
        Its size in bytes.
    """

    def __init__(self, addr: int, size: int) -> None:
        super().__init__(addr, size)
        self.addr = int(addr)
        self.size = int(size)

    def _message(self) -> str:
        return (
            f"guest region at {_hex(self.addr)} of {self.size} bytes is invalid: "
            "it would end past 2**64 - 1"
        )


class MmapRegionError(GuestMemoryError, OSError):
    """A mapping could not be made: bad size or offset, file too short, mmap failed.

    The underlying ``OSError``, when there is one, is ``__cause__``.

    Parameters
    ----------
    reason : str
        What went wrong, naming the size, offset or file at fault.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.errno, self.strerror = None, reason
        self.reason = reason

    def _message(self) -> str:
        return self.reason


class ReadOnlyMemoryError(MmapRegionError, PermissionError):
    """A write was attempted on a read-only mapping.

    vm-memory would take a SIGSEGV here; npguest refuses before touching memory.

    Parameters
    ----------
    addr : int
        The address (guest or region offset) the write aimed at.
    """

    def __init__(self, addr: int) -> None:
        GuestMemoryError.__init__(self, addr)
        self.addr = int(addr)
        self.reason = "read-only mapping"

    def _message(self) -> str:
        return f"cannot write at {_hex(self.addr)}: the mapping is read-only"


class AddressSpaceError(GuestMemoryError, RuntimeError):
    """A :class:`~npguest.GuestMemoryAtomic` lock was misused (spent guard, timeout).

    Parameters
    ----------
    reason : str
        What happened.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def _message(self) -> str:
        return self.reason


class BitmapError(GuestMemoryError, ValueError):
    """A dirty bitmap was given a bad size, page size or offset.

    Parameters
    ----------
    field : str
        The argument at fault (``"page_size"``, ``"byte_size"``, ``"offset"``...).
    value : int
        Its value.
    reason : str
        What is wrong with it.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        super().__init__(field, value, reason)
        self.field = field
        self.value = value
        self.reason = reason

    def _message(self) -> str:
        return f"bad bitmap {self.field} {self.value!r}: {self.reason}"


class ByteValuedError(GuestMemoryError, TypeError):
    """A type that cannot be a ByteValued object: not a dtype, or with object fields.

    Parameters
    ----------
    what : object
        The offending dtype or value.
    reason : str
        Why it is not acceptable.
    """

    def __init__(self, what: object, reason: str) -> None:
        super().__init__(what, reason)
        self.what = what
        self.reason = reason

    def _message(self) -> str:
        return f"{self.what!r}: {self.reason}"


class IommuError(GuestMemoryError):
    """Base class of IOMMU translation errors.

    Parameters
    ----------
    iova : int
        Base of the I/O virtual address range.
    length : int
        Its length in bytes.
    reason : str, optional
        Why it failed.
    """

    def __init__(self, iova: int, length: int, reason: str = "") -> None:
        super().__init__(iova, length, reason)
        self.iova = int(iova)
        self.length = int(length)
        self.reason = reason

    def _message(self) -> str:
        msg = f"cannot translate I/O virtual address range {_hex(self.iova)}+{self.length}"
        return f"{msg}: {self.reason}" if self.reason else msg


class CannotResolveError(IommuError, IndexError):
    """Part of an IOVA range has no mapping."""


class InaccessibleError(IommuError, PermissionError):
    """An IOVA range is mapped without the permissions the access needs."""

    def __init__(self, iova: int, length: int, reason: str = "") -> None:
        super().__init__(iova, length, reason)
        # OSError.__init__ took (iova, length, reason) for (errno, strerror, filename)
        # and dropped reason from args: restore both.
        self.args = (iova, length, reason)
        self.errno, self.strerror, self.filename = None, reason, None


class IommuMisconfiguredError(IommuError, ValueError):
    """An IOMMU or IOTLB was given, or gave back, something impossible.

    A zero-length mapping, unknown permission bits, a bad translator setting, or a
    translation whose pieces do not add up to the requested length (vm-memory's
    ``IommuMisconfigured``).  ``iova`` and ``length`` are both 0 when no range is involved.
    """

    def _message(self) -> str:
        if not (self.iova or self.length):
            return f"IOMMU misconfigured: {self.reason}"
        where = f"{_hex(self.iova)}+{self.length}"
        return f"IOMMU misconfigured at I/O virtual address range {where}: {self.reason}"


class DumpFormatError(GuestMemoryError, ValueError):
    """A memory dump is malformed or truncated.

    Parameters
    ----------
    path : str
        The dump file.
    offset : int
        File offset of the bad field.
    field : str
        Name of the bad field.
    reason : str, optional
        What is wrong with it.
    """

    def __init__(self, path: object, offset: int, field: str, reason: str = "") -> None:
        super().__init__(str(path), offset, field, reason)
        self.path = str(path)
        self.offset = int(offset)
        self.field = field
        self.reason = reason

    def _message(self) -> str:
        msg = f"{self.path}: bad {self.field} at file offset {_hex(self.offset)}"
        return f"{msg}: {self.reason}" if self.reason else msg
