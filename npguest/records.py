"""Structured reads as tables: numpy records from guest memory to a pandas ``DataFrame``.

:meth:`GuestMemoryMmap.read_objs` with a structured dtype gathers one record per address
into a numpy structured array; :func:`to_pandas` turns such an array into a ``DataFrame``
indexed by guest address: nested structures become dotted columns (``hdr.len``), small
arrays one column per element (``regs[0]``), explicit-endian fields native numbers, and
``S`` fields bytes.  pandas is an optional extra (``pip install 'npguest[pandas]'``).

Examples
--------
>>> import numpy as np
>>> from npguest import GuestMemoryMmap
>>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000)])
>>> task = np.dtype([("pid", "<i4"), ("state", "<u4"), ("comm", "S8")])
>>> addrs = np.array([0x100, 0x200], dtype=np.uint64)
>>> mem.write_objs(np.array([(1, 0, b"init"), (42, 1, b"bash")], dtype=task), addrs)
>>> frame = to_pandas(mem.read_objs(addrs, task), addrs)
>>> frame.index.name, frame["pid"].tolist(), frame["comm"].tolist()
('addr', [1, 42], [b'init', b'bash'])
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .address import address_array

__all__ = ["columns", "to_pandas"]

#: Sub-arrays with more elements than this stay one column (each cell a numpy array).
MAX_SPLIT = 64


def columns(values: np.ndarray, prefix: str = "") -> dict[str, np.ndarray]:
    """Flatten a structured array's fields into named 1-d columns, in field order.

    Parameters
    ----------
    values : numpy.ndarray
        A 1-d array (structured or not).
    prefix : str, optional
        Put before every name (used for nesting).

    Returns
    -------
    dict of str to numpy.ndarray
        ``name -> column``: nested fields as ``outer.inner``, sub-arrays of up to
        :data:`MAX_SPLIT` elements as ``name[i]`` (``name[i,j]``...), larger ones as one
        object column of arrays; numbers in native byte order.

    Raises
    ------
    ValueError
        Two fields flatten to one name (a field ``"a.b"`` beside a field ``a`` holding ``b``).

    Examples
    --------
    >>> dt = np.dtype([("hdr", [("len", ">u2")]), ("regs", "<u8", (2,))])
    >>> list(columns(np.zeros(3, dtype=dt)))
    ['hdr.len', 'regs[0]', 'regs[1]']
    """
    if values.dtype.names is None:
        return {prefix or "value": _column(values)}
    out: dict[str, np.ndarray] = {}
    for name in values.dtype.names:
        field, label = values[name], f"{prefix}{name}"
        shape = field.shape[1:]
        if not shape:
            _add(out, _named(field, label))
        elif int(np.prod(shape)) <= MAX_SPLIT:
            for index in itertools.product(*(range(n) for n in shape)):
                sub = f"{label}[{','.join(map(str, index))}]"
                _add(out, _named(field[(slice(None), *index)], sub))
        else:
            cells = np.empty(len(field), dtype=object)
            cells[:] = list(field.astype(field.dtype.newbyteorder("=")))
            _add(out, {label: cells})
    return out


def _add(out: dict[str, np.ndarray], more: dict[str, np.ndarray]) -> None:
    """Add columns, refusing a name already taken (a field ``"a.b"`` beside ``a``'s ``b``)."""
    for label, column in more.items():
        if label in out:
            raise ValueError(f"two fields flatten to the column {label!r}: rename one")
        out[label] = column


def _named(field: np.ndarray, label: str) -> dict[str, np.ndarray]:
    """Return the columns of one 1-d field called ``label`` (several if it is structured)."""
    return columns(field, f"{label}.") if field.dtype.names else {label: _column(field)}


def _column(field: np.ndarray) -> np.ndarray:
    """Return ``field`` in native byte order (pandas refuses the other one)."""
    if field.dtype.kind == "S":
        cells = np.empty(len(field), dtype=object)
        cells[:] = field.tolist()
        return cells
    return field.astype(field.dtype.newbyteorder("="), copy=False)


def to_pandas(values: np.ndarray, addrs: Any = None, *, index_name: str = "addr") -> Any:
    """Return a ``pandas.DataFrame`` of records read with :meth:`~GuestMemoryMmap.read_objs`.

    Parameters
    ----------
    values : numpy.ndarray
        A 1-d array, structured or not (any shape is flattened).
    addrs : array_like, optional
        The guest address of each record: the frame's index.
    index_name : str, optional
        The index's name.

    Returns
    -------
    pandas.DataFrame
        One row per record, one column per field (see :func:`columns`).

    Raises
    ------
    ImportError
        pandas is not installed.
    ValueError
        ``addrs`` does not have one address per record, or two fields flatten to one
        column name.
    TypeError, GuestAddressOverflowError
        An address is not an integer, or not a 64-bit unsigned value.
    """
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("to_pandas needs pandas: pip install 'npguest[pandas]'") from exc
    flat = np.asarray(values).reshape(-1)
    index = pd.RangeIndex(len(flat))  # (also the length of a frame without columns)
    if addrs is not None:
        where = address_array(addrs).reshape(-1)
        if len(where) != len(flat):
            raise ValueError(f"addrs has {len(where)} addresses for {len(flat)} records")
        index = pd.Index(where, name=index_name)
    return pd.DataFrame(columns(flat), index=index)
