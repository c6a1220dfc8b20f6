"""Typed 64-bit addresses with checked arithmetic, and their batch forms on ``uint64`` arrays.

:class:`GuestAddress` (a guest physical address) and :class:`MemoryRegionAddress` (an
offset inside one region) port vm-memory's ``Address`` trait: immutable, hashable,
ordered values ``0 <= v < 2**64`` with no ``+``/``-`` operators between addresses, only
explicit ``checked_*`` (``None`` on overflow), ``overflowing_*`` (wrapped value and a
flag) and ``unchecked_*`` (raise :class:`~npguest.errors.GuestAddressOverflowError`)
methods.  Both implement ``__index__``, so they are accepted wherever an ``int`` address
is, and ``int(a)`` gives the value.

The module-level functions apply the same arithmetic to whole ``uint64`` arrays.
"""

from __future__ import annotations

import operator
from typing import Self, SupportsIndex

import numpy as np

from .errors import GuestAddressOverflowError

__all__ = [
    "U64_MAX",
    "Address",
    "GuestAddress",
    "MemoryRegionAddress",
    "address_array",
    "align_up",
    "overflowing_add",
    "overflowing_sub",
]

U64_MAX = (1 << 64) - 1
"""The largest 64-bit address, ``2**64 - 1``."""

_MOD = 1 << 64


def _u64(value: SupportsIndex, what: str = "value") -> int:
    """Return ``value`` as an ``int`` in ``[0, 2**64)``, or raise naming it as ``what``."""
    if type(value) is not int:
        if isinstance(value, bool):
            raise TypeError(f"{what} must be an integer, not bool")
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(
                f"{what} must be an integer or an address, not {type(value).__name__}"
            ) from None
    if not 0 <= value <= U64_MAX:
        raise GuestAddressOverflowError(value, 0, what)
    return value


class Address:
    """A 64-bit unsigned address (the ``Address`` trait of vm-memory).

    Parameters
    ----------
    value : int
        The raw value, ``0 <= value < 2**64`` (any integer-like object).

    Raises
    ------
    GuestAddressOverflowError
        ``value`` is negative or not below ``2**64``.
    TypeError
        ``value`` is not an integer.
    """

    __slots__ = ("_value",)
    _value: int

    def __init__(self, value: SupportsIndex = 0) -> None:
        object.__setattr__(self, "_value", _u64(value, "address"))

    # -- Python protocol --------------------------------------------------------------
    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __index__(self) -> int:
        return self._value

    def __int__(self) -> int:
        return self._value

    def __hash__(self) -> int:
        return hash((type(self), self._value))

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return self._value == other._value  # type: ignore[attr-defined]
        return NotImplemented

    def __lt__(self, other: Self) -> bool:
        if type(other) is type(self):
            return self._value < other._value
        return NotImplemented

    def __le__(self, other: Self) -> bool:
        if type(other) is type(self):
            return self._value <= other._value
        return NotImplemented

    def __gt__(self, other: Self) -> bool:
        if type(other) is type(self):
            return self._value > other._value
        return NotImplemented

    def __ge__(self, other: Self) -> bool:
        if type(other) is type(self):
            return self._value >= other._value
        return NotImplemented

    def __and__(self, mask: SupportsIndex) -> Self:
        return type(self)(self._value & _u64(mask, "mask"))

    def __or__(self, bits: SupportsIndex) -> Self:
        return type(self)(self._value | _u64(bits, "bits"))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._value:#x})"

    def __reduce__(self):
        return (type(self), (self._value,))

    # -- the Address trait ------------------------------------------------------------
    def raw_value(self) -> int:
        """Return the raw 64-bit value.

        Returns
        -------
        int
            The address as a plain integer.

        Examples
        --------
        >>> GuestAddress(0x1000).raw_value()
        4096
        """
        return self._value

    def mask(self, mask: SupportsIndex) -> int:
        """Return ``raw_value() & mask`` (a plain value, not an address).

        Parameters
        ----------
        mask : int
            The bit mask.

        Returns
        -------
        int
            The masked value.

        Examples
        --------
        >>> GuestAddress(0x1234).mask(0xFF)
        52
        """
        return self._value & _u64(mask, "mask")

    def checked_add(self, other: SupportsIndex) -> Self | None:
        """Add ``other``; ``None`` if the sum does not fit in 64 bits.

        Parameters
        ----------
        other : int
            The amount to add.

        Returns
        -------
        Address or None
            The new address, or ``None`` on overflow.

        Examples
        --------
        >>> GuestAddress(0x10).checked_add(0x10)
        GuestAddress(0x20)
        >>> GuestAddress(2**64 - 1).checked_add(1) is None
        True
        """
        value = self._value + _u64(other, "offset")
        return type(self)(value) if value <= U64_MAX else None

    def overflowing_add(self, other: SupportsIndex) -> tuple[Self, bool]:
        """Add ``other`` modulo ``2**64``.

        Parameters
        ----------
        other : int
            The amount to add.

        Returns
        -------
        tuple of (Address, bool)
            The wrapped sum and whether it wrapped.

        Examples
        --------
        >>> GuestAddress(2**64 - 1).overflowing_add(2)
        (GuestAddress(0x1), True)
        """
        value = self._value + _u64(other, "offset")
        return type(self)(value % _MOD), value > U64_MAX

    def unchecked_add(self, other: SupportsIndex) -> Self:
        """Add ``other``, raising if the sum does not fit in 64 bits.

        vm-memory panics here in debug builds; npguest always raises.

        Parameters
        ----------
        other : int
            The amount to add.

        Returns
        -------
        Address
            The sum.

        Raises
        ------
        GuestAddressOverflowError
            The sum passes ``2**64 - 1``.
        """
        offset = _u64(other, "offset")
        value = self._value + offset
        if value > U64_MAX:
            raise GuestAddressOverflowError(self._value, offset)
        return type(self)(value)

    def checked_sub(self, other: SupportsIndex) -> Self | None:
        """Subtract ``other``; ``None`` if the result would be negative.

        Parameters
        ----------
        other : int
            The amount to subtract.

        Returns
        -------
        Address or None
            The new address, or ``None`` on underflow.

        Examples
        --------
        >>> GuestAddress(0x10).checked_sub(0x11) is None
        True
        """
        value = self._value - _u64(other, "offset")
        return type(self)(value) if value >= 0 else None

    def overflowing_sub(self, other: SupportsIndex) -> tuple[Self, bool]:
        """Subtract ``other`` modulo ``2**64``.

        Parameters
        ----------
        other : int
            The amount to subtract.

        Returns
        -------
        tuple of (Address, bool)
            The wrapped difference and whether it wrapped.

        Examples
        --------
        >>> GuestAddress(0).overflowing_sub(1)
        (GuestAddress(0xffffffffffffffff), True)
        """
        value = self._value - _u64(other, "offset")
        return type(self)(value % _MOD), value < 0

    def unchecked_sub(self, other: SupportsIndex) -> Self:
        """Subtract ``other``, raising if the result would be negative.

        Parameters
        ----------
        other : int
            The amount to subtract.

        Returns
        -------
        Address
            The difference.

        Raises
        ------
        GuestAddressOverflowError
            ``other`` is larger than the address.
        """
        offset = _u64(other, "offset")
        if offset > self._value:
            raise GuestAddressOverflowError(self._value, -offset)
        return type(self)(self._value - offset)

    def checked_offset_from(self, base: Self) -> int | None:
        """Return ``self - base``, or ``None`` if ``base`` is above ``self``.

        Parameters
        ----------
        base : Address
            An address of the same kind.

        Returns
        -------
        int or None
            The distance in bytes.

        Examples
        --------
        >>> GuestAddress(0x1800).checked_offset_from(GuestAddress(0x1000))
        2048
        """
        value = self._value - self._same_kind(base)
        return value if value >= 0 else None

    def unchecked_offset_from(self, base: Self) -> int:
        """Return ``self - base``, raising if ``base`` is above ``self``.

        Parameters
        ----------
        base : Address
            An address of the same kind.

        Returns
        -------
        int
            The distance in bytes.

        Raises
        ------
        GuestAddressOverflowError
            ``base > self``.
        """
        base_value = self._same_kind(base)
        if base_value > self._value:
            raise GuestAddressOverflowError(self._value, -base_value)
        return self._value - base_value

    def checked_align_up(self, power_of_two: SupportsIndex) -> Self | None:
        """Round up to a multiple of ``power_of_two``; ``None`` if that overflows.

        Parameters
        ----------
        power_of_two : int
            The alignment, a non-zero power of two.

        Returns
        -------
        Address or None
            The aligned address.

        Raises
        ------
        ValueError
            ``power_of_two`` is zero or not a power of two (vm-memory asserts).

        Examples
        --------
        >>> GuestAddress(0x1001).checked_align_up(0x1000)
        GuestAddress(0x2000)
        """
        align = _u64(power_of_two, "alignment")
        if align == 0 or align & (align - 1):
            raise ValueError(f"alignment {align} is not a non-zero power of two")
        value = (self._value + align - 1) & ~(align - 1)
        return type(self)(value) if value <= U64_MAX else None

    def unchecked_align_up(self, power_of_two: SupportsIndex) -> Self:
        """Round up with vm-memory's formula ``(x + a - 1) & !(a - 1)``, unchecked.

        Like vm-memory, the argument is not checked to be a power of two (so
        ``0x128.unchecked_align_up(12) == 0x130``); a result past ``2**64 - 1`` raises.

        Parameters
        ----------
        power_of_two : int
            The alignment.

        Returns
        -------
        Address
            The rounded address.

        Raises
        ------
        GuestAddressOverflowError
            The rounding passes ``2**64 - 1``.

        Examples
        --------
        >>> GuestAddress(0x128).unchecked_align_up(12)
        GuestAddress(0x130)
        """
        align = _u64(power_of_two, "alignment")
        total = self._value + align - 1
        if total > U64_MAX or align == 0:
            raise GuestAddressOverflowError(self._value, align)
        return type(self)(total & ~(align - 1) & U64_MAX)

    def _same_kind(self, other: Self) -> int:
        if type(other) is not type(self):
            raise TypeError(
                f"expected a {type(self).__name__}, got {type(other).__name__}: "
                "addresses of different kinds do not mix"
            )
        return other._value


class GuestAddress(Address):
    """A guest physical address (vm-memory's ``GuestAddress``).

    Examples
    --------
    >>> a = GuestAddress(0x1000)
    >>> a.unchecked_add(0x10), int(a), a < GuestAddress(0x2000)
    (GuestAddress(0x1010), 4096, True)
    """

    __slots__ = ()


class MemoryRegionAddress(Address):
    """An offset inside one memory region (vm-memory's ``MemoryRegionAddress``).

    Examples
    --------
    >>> MemoryRegionAddress(0x10).checked_sub(0x20) is None
    True
    """

    __slots__ = ()


# -- batch forms ------------------------------------------------------------------------


def address_array(values: object) -> np.ndarray:
    """Convert addresses (ints, addresses, integer arrays) to a ``uint64`` array.

    The result has the shape of ``values``: a scalar gives a 0-d array, nested lists a
    multi-dimensional one.

    Parameters
    ----------
    values : array_like
        Non-negative integers below ``2**64``, or :class:`Address` objects, of any
        shape (scalars, nested sequences, arrays).

    Returns
    -------
    numpy.ndarray
        A C-contiguous ``uint64`` array shaped like ``values`` (the input itself when
        it already is one).

    Raises
    ------
    GuestAddressOverflowError
        A value is negative or not below ``2**64`` (names the first one).
    TypeError
        The values are not integers, or nested sequences are ragged.

    Examples
    --------
    >>> address_array([GuestAddress(1), 2, 2**64 - 1]).tolist()
    [1, 2, 18446744073709551615]
    >>> address_array([[1, 2], [3, 4]]).shape, address_array(GuestAddress(5)).shape
    ((2, 2), ())
    """
    if isinstance(values, np.ndarray):
        arr = values
    elif isinstance(values, (list, tuple, int, Address)):
        # each value checked as a Python int: numpy would make 2**64 or an Address an object
        try:
            arr = np.array(_u64_nested(values), dtype=np.uint64)
        except ValueError as exc:  # ragged nesting
            raise TypeError(f"addresses must form a regular array: {exc}") from None
    else:
        arr = np.asarray(values)
    if arr.dtype == np.uint64:
        return np.asarray(arr, order="C")  # (np.ascontiguousarray would make 0-d 1-d)
    if arr.dtype.kind not in "iu":
        if arr.size == 0:
            return np.zeros(arr.shape, dtype=np.uint64)
        raise TypeError(f"addresses must be integers, got an array of {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and (bad := np.flatnonzero(arr < 0)).size:
        raise GuestAddressOverflowError(int(arr.flat[bad[0]]), 0)
    return np.asarray(arr, dtype=np.uint64, order="C")


def _u64_nested(values: object) -> object:
    """Apply :func:`_u64` to every leaf of nested lists and tuples."""
    if isinstance(values, (list, tuple)):
        return [_u64_nested(v) for v in values]
    return _u64(values, "address")  # type: ignore[arg-type]


def overflowing_add(addrs: object, values: object) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise ``addrs + values`` modulo ``2**64``, with an overflow mask.

    Parameters
    ----------
    addrs, values : array_like
        Addresses and amounts (broadcast together).

    Returns
    -------
    tuple of numpy.ndarray
        The wrapped sums (``uint64``) and a ``bool`` array, ``True`` where a sum wrapped.

    Examples
    --------
    >>> s, o = overflowing_add([2**64 - 1, 1], 1)
    >>> s.tolist(), o.tolist()
    ([0, 2], [True, False])
    """
    a, v = address_array(addrs), address_array(values)
    total = a + v
    return total, total < a


def overflowing_sub(addrs: object, values: object) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise ``addrs - values`` modulo ``2**64``, with an underflow mask.

    Parameters
    ----------
    addrs, values : array_like
        Addresses and amounts (broadcast together).

    Returns
    -------
    tuple of numpy.ndarray
        The wrapped differences (``uint64``) and a ``bool`` array, ``True`` where it wrapped.

    Examples
    --------
    >>> d, u = overflowing_sub([0, 5], [1, 5])
    >>> d.tolist(), u.tolist()
    ([18446744073709551615, 0], [True, False])
    """
    a, v = address_array(addrs), address_array(values)
    return a - v, v > a


def align_up(addrs: object, power_of_two: int) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise round up to a multiple of ``power_of_two``, with an overflow mask.

    Parameters
    ----------
    addrs : array_like
        Addresses.
    power_of_two : int
        A non-zero power of two.

    Returns
    -------
    tuple of numpy.ndarray
        The rounded addresses (``uint64``; wrapped where they overflowed) and a ``bool``
        array, ``True`` where rounding passed ``2**64 - 1``.

    Raises
    ------
    ValueError
        ``power_of_two`` is not a non-zero power of two.

    Examples
    --------
    >>> r, o = align_up([0x1001, 2**64 - 1], 0x1000)
    >>> hex(int(r[0])), o.tolist()
    ('0x2000', [False, True])
    """
    align = _u64(power_of_two, "alignment")
    if align == 0 or align & (align - 1):
        raise ValueError(f"alignment {align} is not a non-zero power of two")
    a = address_array(addrs)
    bumped, overflow = overflowing_add(a, align - 1)
    return bumped & np.uint64(~(align - 1) & U64_MAX), overflow
