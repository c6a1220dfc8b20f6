"""I/O virtual memory: permissions, the IOTLB, the ``Iommu`` protocol and ``IommuMemory``.

vm-memory 0.18 splits the physical backend (:class:`~npguest.GuestMemoryMmap`) from the
memory a device sees: addresses may be I/O virtual addresses (IOVAs) that an IOMMU
translates into many physical pieces, with permissions checked on every access.

- :class:`Permissions` -- ``NO_ACCESS``, ``READ``, ``WRITE``, ``READ_WRITE``;
- :class:`Iotlb` -- a range map ``IOVA -> guest physical`` with permissions, held as
  sorted arrays (scalar lookups bisect them, batch translation is one ``searchsorted``);
- :class:`Iommu` -- the protocol of a translator: ``translate(iova, length, access)``
  returns the :class:`MappedRange` pieces or raises an :class:`~npguest.errors.IommuError`
  (:class:`TableIommu` serves an :class:`Iotlb`; :class:`~npguest.paging.X86PageTables`
  walks a guest's own page tables);
- :class:`IommuMemory` -- the whole ``Bytes`` API over IOVAs, on any backend and IOMMU.
"""

from __future__ import annotations

import enum
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["Iommu", "IovaRange", "MappedRange", "Permissions"]


class Permissions(enum.IntFlag):
    """Access permissions of an IOVA mapping, and the kind of an access.

    ``NO_ACCESS`` as an *access* needs only that the range be mapped.

    Examples
    --------
    >>> Permissions.READ_WRITE.allow(Permissions.WRITE)
    True
    >>> Permissions.READ.allow(Permissions.READ_WRITE)
    False
    """

    NO_ACCESS = 0
    READ = 1
    WRITE = 2
    READ_WRITE = 3

    def allow(self, access: Permissions | int) -> bool:
        """Return whether these permissions allow ``access``.

        Parameters
        ----------
        access : Permissions
            The access to check.

        Returns
        -------
        bool
            ``True`` when every permission ``access`` needs is here.
        """
        return (self & access) == access

    def has_write(self) -> bool:
        """Return whether writing is allowed.

        Returns
        -------
        bool
            ``True`` for ``WRITE`` and ``READ_WRITE``.
        """
        return bool(self & Permissions.WRITE)


class IovaRange(NamedTuple):
    """A range of I/O virtual addresses: ``base`` and ``length`` in bytes."""

    base: int
    length: int


class MappedRange(NamedTuple):
    """A translated piece: guest physical ``base`` and ``length`` in bytes."""

    base: int
    length: int


@runtime_checkable
class Iommu(Protocol):
    """What :class:`IommuMemory` needs of an IOMMU.

    ``translate(iova, length, access)`` returns the pieces of guest physical memory that
    back ``[iova, iova + length)``, in IOVA order (their lengths add up to ``length``), or
    raises :class:`~npguest.errors.CannotResolveError` (part of the range is unmapped) or
    :class:`~npguest.errors.InaccessibleError` (mapped without the permissions
    ``access`` needs).  ``length == 0`` returns ``[]``.
    """

    def translate(self, iova: int, length: int, access: Permissions) -> list[MappedRange]:
        """Translate ``[iova, iova + length)`` for ``access``; see the class docstring."""
        ...
