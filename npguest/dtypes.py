"""ByteValued rules: which numpy dtypes can be objects in guest memory, and their codecs.

vm-memory's ``ByteValued`` is plain-old-data that can be built from any bytes.  In
npguest that role is played by any numpy dtype without object fields: integers, floats,
complex, fixed-size bytes, sub-arrays and structured dtypes (packed or padded, any field
byte order).  The byte order of a dtype is its own: ``np.dtype('<u4')`` is little-endian
everywhere, a native dtype (``np.uint32``) follows the host, like a Rust ``u32``.

The explicit endian types of vm-memory are plain dtypes here: :data:`Le16` ... :data:`Be64`,
:data:`LeSize` and :data:`BeSize` (64-bit, as ``usize`` is on every supported host).

Each dtype gets a cached :class:`Codec` holding a precompiled :class:`struct.Struct` for
plain integers and floats (about 10x faster than a numpy scalar round trip), or numpy
for everything else.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import DTypeLike

from .errors import ByteValuedError

__all__ = [
    "Be16",
    "Be32",
    "Be64",
    "BeSize",
    "Codec",
    "Le16",
    "Le32",
    "Le64",
    "LeSize",
    "as_bytes",
    "byte_valued",
    "codec",
    "from_bytes",
]

Le16 = np.dtype("<u2")
"""Little-endian unsigned 16-bit integer (vm-memory ``Le16``)."""
Le32 = np.dtype("<u4")
"""Little-endian unsigned 32-bit integer (vm-memory ``Le32``)."""
Le64 = np.dtype("<u8")
"""Little-endian unsigned 64-bit integer (vm-memory ``Le64``)."""
LeSize = np.dtype("<u8")
"""Little-endian ``usize`` (64-bit on every host npguest supports)."""
Be16 = np.dtype(">u2")
"""Big-endian unsigned 16-bit integer (vm-memory ``Be16``)."""
Be32 = np.dtype(">u4")
"""Big-endian unsigned 32-bit integer (vm-memory ``Be32``)."""
Be64 = np.dtype(">u8")
"""Big-endian unsigned 64-bit integer (vm-memory ``Be64``)."""
BeSize = np.dtype(">u8")
"""Big-endian ``usize`` (64-bit)."""

_STRUCT_CODES = {("u", 1): "B", ("u", 2): "H", ("u", 4): "I", ("u", 8): "Q"}
_STRUCT_CODES.update({("i", 1): "b", ("i", 2): "h", ("i", 4): "i", ("i", 8): "q"})
_STRUCT_CODES.update({("f", 2): "e", ("f", 4): "f", ("f", 8): "d"})
_NATIVE = "<" if sys.byteorder == "little" else ">"


def byte_valued(dtype: DTypeLike) -> np.dtype:
    """Validate that ``dtype`` can be an object in guest memory, and return it.

    Parameters
    ----------
    dtype : dtype_like
        A numpy dtype, a scalar type (``np.uint32``), or a dtype string (``'<u8'``).

    Returns
    -------
    numpy.dtype
        The dtype.

    Raises
    ------
    ByteValuedError
        ``dtype`` is not a dtype, has object fields, or is ``None``.

    Examples
    --------
    >>> byte_valued('<u4')
    dtype('uint32')
    >>> byte_valued(np.dtype([('a', '<u2'), ('b', '>u4')])).itemsize
    6
    """
    if dtype is None:
        raise ByteValuedError(dtype, "not a dtype (numpy would read None as float64)")
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise ByteValuedError(dtype, f"not a numpy dtype ({exc})") from None
    if dt.hasobject:
        raise ByteValuedError(dt, "not ByteValued: it holds Python objects, which have no bytes")
    if dt.kind in "SU" and dt.itemsize == 0:
        raise ByteValuedError(dt, "not ByteValued: a flexible dtype needs a size")
    return dt


class Codec:
    """How to turn one value of a dtype into bytes and back.

    Parameters
    ----------
    dtype : numpy.dtype
        A validated ByteValued dtype.

    Attributes
    ----------
    dtype : numpy.dtype
        The dtype.
    size : int
        Its item size in bytes.
    struct : struct.Struct or None
        A precompiled struct for plain integers and floats, else ``None``.
    atomic : bool
        Whether ``load``/``store`` accept it: an integer of 1, 2, 4 or 8 bytes in host
        byte order (vm-memory's ``AtomicAccess`` types).
    native : str or None
        For atomic types, the host-order ``struct``/``memoryview`` format character: a
        ``memoryview`` cast to it loads and stores the integer with one access.
    lo, hi : int
        The range of Python ints the dtype holds (empty if not an integer dtype).
    """

    __slots__ = ("_object_layout", "atomic", "dtype", "hi", "lo", "native", "size", "struct")

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.size = dtype.itemsize
        self._object_layout: np.dtype | None = None
        code = _STRUCT_CODES.get((dtype.kind, dtype.itemsize))
        order = dtype.byteorder
        if order in "=|":
            order = _NATIVE
        self.struct = struct.Struct(order + code) if code and dtype.fields is None else None
        self.atomic = (
            dtype.kind in "iu" and dtype.itemsize in (1, 2, 4, 8) and order == _NATIVE
        ) and dtype.fields is None
        self.native = code if self.atomic else None
        # Python ints in [lo, hi] may be stored without packing them first.
        if self.struct is not None and dtype.kind in "iu":
            info = np.iinfo(dtype)
            self.lo, self.hi = int(info.min), int(info.max)
        else:
            self.lo, self.hi = 1, 0

    def array(self, values: Any, shape: tuple[int, ...] = ()) -> np.ndarray:
        """Convert ``values`` to a new array of ``shape`` items of this dtype, losslessly.

        The array starts zeroed, so padding bytes of structured dtypes are zeros (never
        stale host memory).  Conversions that would change a value are refused instead
        of done silently as numpy would: floats into integers, integers out of range,
        complex into real, strings longer than a bytes field, float overflow.  For a
        structured dtype the same rules apply to every leaf field (nested records and
        sub-array fields included); fields of a structured source are matched by
        position, as numpy does.

        Parameters
        ----------
        values : array_like
            Values broadcastable to ``shape`` (records as tuples or ``numpy.void``).
        shape : tuple of int, optional
            Number of items (default: one item).

        Returns
        -------
        numpy.ndarray
            C-contiguous; for a sub-array dtype, of its base dtype with the sub-array
            shape appended.

        Raises
        ------
        ByteValuedError
            A value cannot be stored exactly (naming the field, for records), or the
            shapes do not broadcast.

        Examples
        --------
        >>> rec = np.dtype([('a', 'u1'), ('b', '<u4')])
        >>> codec(rec).array([(1, 2), (3, 4)], (2,))['b'].tolist()
        [2, 4]
        >>> try:
        ...     codec(rec).array((1.7, 2))
        ... except ByteValuedError as exc:
        ...     print(exc.reason)
        float64 values would be truncated or recast as uint8 in field 'a'
        """
        dt = self.dtype
        base, sub = dt.subdtype or (dt, ())
        out = np.zeros((*shape, *sub), dtype=base)  # (np.zeros(shape, dt) drops a 0-size sub)
        with (
            _refusing(values, f"{shape or 'one'} {dt}"),
            np.errstate(over="raise", invalid="raise"),
        ):
            if base.fields is None:  # (the errstate refuses float overflow)
                _store(out, values, values)
            elif isinstance(values, (np.ndarray, np.generic)):
                _store_record(out, np.asarray(values), values, "")  # its own leaf types
            else:  # Python records: each leaf as the Python object given
                _store_record(out, np.array(values, dtype=self._objects()), values, "")
        return out

    def _objects(self) -> np.dtype:
        """Return the item's record layout with ``object`` leaves (computed once)."""
        if self._object_layout is None:
            self._object_layout = _object_layout(self.dtype.base)
        return self._object_layout

    def pack(self, value: Any) -> bytes:
        """Return the bytes of ``value`` as this dtype.

        Parameters
        ----------
        value : object
            A Python number, a numpy scalar, a tuple (structured dtypes) or a 0-d array.

        Returns
        -------
        bytes
            Exactly ``size`` bytes.

        Raises
        ------
        ByteValuedError
            The value cannot be stored exactly, or has the wrong shape.
        """
        if self.struct is not None:
            try:
                return self.struct.pack(value)
            except (struct.error, TypeError, OverflowError):
                pass  # numpy scalars and bad values: the checked conversion decides
        return self.array(value).tobytes()

    def unpack(self, data: Any) -> Any:
        """Decode one value from a buffer of exactly ``size`` bytes.

        Parameters
        ----------
        data : buffer
            The bytes.

        Returns
        -------
        object
            A Python ``int``/``float`` for plain numbers, otherwise a numpy scalar
            (``numpy.void`` for structured dtypes, an array for sub-array dtypes).
        """
        if self.struct is not None:
            return self.struct.unpack(data)[0]
        if not self.size:  # numpy cannot read a zero itemsize from a buffer: the empty value
            base, shape = self.dtype.subdtype or (self.dtype, ())
            return np.zeros((1, *shape), dtype=base)[0]
        return np.frombuffer(data, dtype=self.dtype, count=1)[0].copy()


def _short(values: Any) -> Any:
    """Return what an error message should show of bad values."""
    if isinstance(values, np.ndarray) and values.size > 4:
        return f"array of shape {values.shape}"
    return values


def _object_layout(dt: np.dtype) -> np.dtype:
    """Return ``dt``'s structure (names, nesting, sub-array shapes) with ``object`` leaves."""
    if dt.subdtype is not None:
        base, sub = dt.subdtype
        return np.dtype((_object_layout(base), sub))
    if dt.fields is None:
        return np.dtype(object)
    return np.dtype([(name, _object_layout(dt.fields[name][0])) for name in dt.names])


def _store_record(out: np.ndarray, src: np.ndarray, original: Any, path: str) -> None:
    """Copy ``src`` into the structured array ``out`` leaf by leaf, refusing lossy casts.

    ``src`` is a structured array (its fields are matched to ``out``'s by position) or
    a plain one (stored into every leaf, as numpy does); it must broadcast to ``out``.
    Each leaf is checked and copied with whole-array operations.
    """
    names, src_names = out.dtype.names, src.dtype.names
    if src_names is not None and np.can_cast(src.dtype, out.dtype):  # e.g. the same dtype
        out[...] = src
        return
    if src.shape != out.shape:
        src = np.broadcast_to(src, out.shape)
    if src_names is not None and len(src_names) != len(names):
        raise ByteValuedError(
            _short(original),
            f"records of {len(src_names)} fields cannot be stored as {len(names)} fields"
            + _where(path),
        )
    for i, name in enumerate(names):
        field = f"{path}.{name}" if path else name
        dst = out[name]  # a view; a sub-array field has its shape appended
        sub = src[src_names[i]] if src_names is not None else src
        if sub.ndim < dst.ndim:  # a scalar source field fills a whole sub-array field
            sub = sub.reshape(sub.shape + (1,) * (dst.ndim - sub.ndim))
        with _refusing(original, f"{dst.dtype}{_where(field)}"):
            if dst.dtype.names is not None:
                _store_record(dst, sub, original, field)
            else:
                _store(dst, sub, original, field)


@contextlib.contextmanager
def _refusing(original: Any, target: str) -> Iterator[None]:
    """Turn a numpy conversion failure inside the block into a clear ByteValuedError."""
    try:
        yield
    except ByteValuedError:
        raise
    except (TypeError, ValueError, OverflowError, FloatingPointError) as exc:
        raise ByteValuedError(_short(original), f"cannot be stored as {target} ({exc})") from None


def _store(dst: np.ndarray, values: Any, original: Any, field: str = "") -> None:
    """Copy ``values`` into the plain (non-structured) array ``dst``, refusing lossy casts."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "O":
        values = values.tolist()  # Python objects: let numpy infer what they are
    src = np.asarray(values)
    if src.dtype.kind == "O":  # e.g. Python ints beyond 64 bits
        src = np.asarray(values, dtype=dst.dtype)
    if src.dtype.names is not None:
        raise ByteValuedError(
            _short(original), f"a record cannot be stored as {dst.dtype}{_where(field)}"
        )
    _check_lossless(src, dst.dtype, original, field)
    dst[...] = src


def _where(field: str) -> str:
    """Name the field at fault in an error message (nothing for a plain dtype)."""
    return f" in field {field!r}" if field else ""


def _check_lossless(src: np.ndarray, target: np.dtype, original: Any, field: str = "") -> None:
    """Refuse converting ``src`` to ``target`` where numpy would silently change values.

    ``field`` names the leaf of a record being converted: the error then shows the whole
    record given (``original``) and names the field and the offending value.
    """
    if not src.size or np.can_cast(src.dtype, target):  # (an empty list is float64 to numpy)
        return
    kind, skind = target.kind, src.dtype.kind
    where = _where(field)
    if kind in "iu":
        if skind in "fcSUV":
            raise ByteValuedError(
                _short(original),
                f"{src.dtype} values would be truncated or recast as {target}{where}",
            )
        info = np.iinfo(target)
        lo, hi = int(info.min), int(info.max)
        if skind in "iu" and (int(src.min()) < lo or int(src.max()) > hi):
            i = int(np.flatnonzero((src < lo) | (src > hi))[0])
            value = src.reshape(-1)[i].item()
            raise _bad_value(value, original, field, f"out of range for {target}", i)
    elif kind == "f" and skind == "c":
        raise ByteValuedError(
            _short(original),
            f"complex values would lose their imaginary part as {target}{where}",
        )
    elif kind == "S" and skind in "SU":
        lengths = np.char.str_len(src).reshape(-1)
        if lengths.max() > target.itemsize:
            i = int(np.argmax(lengths > target.itemsize))
            value = src.reshape(-1)[i].item()
            reason = f"longer than the {target.itemsize} bytes of {target}"
            raise _bad_value(value, original, field, reason, i)


def _bad_value(value: Any, original: Any, field: str, reason: str, i: int) -> ByteValuedError:
    """Return the error for element ``i`` (``value``), which cannot be stored: ``reason``."""
    if not field:
        return ByteValuedError(value, f"{reason} (element {i})")
    return ByteValuedError(
        _short(original), f"{value!r} in field {field!r} is {reason} (element {i})"
    )


_CODECS: dict[Any, Codec] = {}


def codec(dtype: DTypeLike) -> Codec:
    """Return the cached :class:`Codec` of ``dtype`` (validating it on first use).

    Parameters
    ----------
    dtype : dtype_like
        Anything :func:`byte_valued` accepts.

    Returns
    -------
    Codec
        The codec.

    Raises
    ------
    ByteValuedError
        ``dtype`` is not ByteValued.
    """
    try:
        return _CODECS[dtype]
    except KeyError:
        pass
    except TypeError:  # unhashable dtype-like (e.g. a list of fields)
        return Codec(byte_valued(dtype))
    found = Codec(byte_valued(dtype))
    _CODECS[dtype] = found
    return found


def _value_dtype(value: Any, dtype: DTypeLike | None) -> Codec:
    """Codec for writing ``value``: the explicit dtype, else the value's own."""
    if dtype is not None:
        return codec(dtype)
    own = getattr(value, "dtype", None)
    if own is None:
        raise ByteValuedError(
            value, "a plain Python value has no byte layout: pass dtype= (e.g. npguest.Le64)"
        )
    return codec(own)


def as_bytes(value: Any, dtype: DTypeLike | None = None) -> bytes:
    r"""Return the bytes of one value (vm-memory's ``ByteValued::as_slice``).

    Parameters
    ----------
    value : object
        A numpy scalar or 0-d array, or a Python value together with ``dtype``.
    dtype : dtype_like, optional
        The layout; defaults to ``value.dtype``.

    Returns
    -------
    bytes
        The value's bytes in the dtype's byte order.

    Raises
    ------
    ByteValuedError
        No dtype can be found, or the value does not fit it.

    Examples
    --------
    >>> as_bytes(0x01020304, Be32), as_bytes(0x01020304, Le32)
    (b'\x01\x02\x03\x04', b'\x04\x03\x02\x01')
    """
    return _value_dtype(value, dtype).pack(value)


def from_bytes(data: Any, dtype: DTypeLike) -> Any:
    r"""Build one value of ``dtype`` from exactly ``itemsize`` bytes.

    Parameters
    ----------
    data : buffer
        The bytes.
    dtype : dtype_like
        The layout.

    Returns
    -------
    object
        The value (see :meth:`Codec.unpack`).

    Raises
    ------
    ByteValuedError
        ``dtype`` is not ByteValued.
    ValueError
        ``data`` does not hold exactly ``itemsize`` bytes.

    Examples
    --------
    >>> from_bytes(b'\x00\x01', Be16)
    1
    """
    c = codec(dtype)
    view = memoryview(data).cast("B")
    if view.nbytes != c.size:
        raise ValueError(f"expected {c.size} bytes for {c.dtype}, got {view.nbytes}")
    return c.unpack(view)
