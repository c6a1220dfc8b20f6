"""Following pointers through guest memory, for many starting points at once (gather chains).

Each step of a chain is one vectorised :meth:`GuestMemoryMmap.read_objs` over every chain
still going, so a thousand chains cost about what one does.  Pointers are guest physical
addresses, or virtual ones when a ``translate`` is given: an object with ``translate_many``
(:class:`~npguest.paging.X86PageTables`) or a callable ``f(vaddrs) -> (paddrs, valid)``.

- :func:`follow`: a fixed path of offsets, ``p = *(p + o)`` for each ``o`` (a "multi-level
  pointer"), e.g. ``task->mm->pgd``;
- :func:`walk_lists`: linked lists, from many heads at once, until NULL, a given stop
  pointer (a circular list's head), a hole, or a step limit.

Examples
--------
>>> import numpy as np
>>> from npguest import GuestMemoryMmap
>>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000)])
>>> mem.write_objs([0x200, 0x300, 0x0], [0x108, 0x208, 0x308], "<u8")  # node + 8: next
>>> nodes = walk_lists(mem, [0x100], next_offset=8)
>>> [hex(a) for a in nodes.nodes], nodes.stop.tolist()
(['0x100', '0x200', '0x300'], [0])
>>> mem.write_obj(0x300, 0x48, "<u8")
>>> addr, valid = follow(mem, [0x40], [8, 8])        # *(*(0x40 + 8) + 8)
>>> hex(int(addr[0])), bool(valid[0])
('0x0', True)
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ._checks import address_array
from .dtypes import codec

__all__ = ["ListWalk", "follow", "walk_lists"]

#: Why a list walk stopped (:attr:`ListWalk.stop`).
STOP_NULL, STOP_AT, STOP_HOLE, STOP_LIMIT = 0, 1, 2, 3


class ListWalk(NamedTuple):
    """The nodes :func:`walk_lists` visited.

    Attributes
    ----------
    nodes : numpy.ndarray
        ``uint64`` node addresses, list by list, each in the order walked.
    owner : numpy.ndarray
        ``int64``: the index of the head each node was reached from.
    stop : numpy.ndarray
        ``int8`` per head, why its walk ended: 0 a NULL pointer, 1 the stop pointer,
        2 a pointer into a hole (or one that does not translate), 3 the step limit.
    """

    nodes: np.ndarray
    owner: np.ndarray
    stop: np.ndarray


def _translator(translate: Any) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """Return ``vaddrs -> (paddrs, valid)`` for ``translate`` (None, page tables or callable)."""
    if hasattr(translate, "translate_many"):
        return lambda vaddrs: translate.translate_many(vaddrs)[:2]
    if translate is None or callable(translate):
        return translate
    raise TypeError(f"translate must be None, a callable or have translate_many: {translate!r}")


def _load(mem: Any, addrs: np.ndarray, size: int, dtype: Any, translate: Any):
    """Read one pointer at each address: ``(values, valid)``, valid only if wholly readable."""
    valid = addrs <= np.uint64(2**64 - size)
    if translate is not None:
        last, ok_last = translate(addrs + np.uint64(size - 1) * valid)  # the last byte too
        addrs, ok = translate(addrs)
        valid &= ok & ok_last & (last - addrs == np.uint64(size - 1))
    values, backed = mem.read_objs(np.where(valid, addrs, 0), dtype, holes="mask")
    valid &= backed
    return values.astype(np.uint64) * valid, valid


def _integer(value: Any, name: str) -> int:
    """Return ``value`` as an int, or raise a TypeError naming ``name``."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None


def _offsets(offsets: Any, name: str) -> np.ndarray:
    """Validate offsets as int64 (negative allowed: pointers into the middle of structs)."""
    arr = np.asarray(offsets)
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, not {arr.dtype}")
    return arr.astype(np.int64)


def follow(
    mem: Any, bases: Any, offsets: Any, *, dtype: Any = "<u8", translate: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Follow a fixed pointer path from many bases: ``p = *(p + o)`` for each offset ``o``.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory (any object with ``read_objs(..., holes="mask")``).
    bases : array_like
        Starting addresses (any shape).
    offsets : sequence of int
        One offset per dereference, added to the pointer before it is read.
    dtype : dtype_like, optional
        The pointers' type: ``"<u8"`` (default), ``"<u4"``, ``">u8"``...
    translate : X86PageTables or callable, optional
        Maps the pointers (virtual addresses) to guest physical ones.

    Returns
    -------
    tuple of numpy.ndarray
        ``(values, valid)`` shaped like ``bases``: the last pointer read (``uint64``), and
        whether every step read backed (and translated) memory; 0 where not valid.

    Raises
    ------
    TypeError
        ``offsets`` are not integers, or ``translate`` is neither a callable nor has
        ``translate_many``.
    ByteValuedError
        ``dtype`` is not an unsigned integer type.

    Examples
    --------
    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000)])
    >>> mem.write_objs([0x800, 0xABC], [0x10, 0x808], "<u8")
    >>> values, valid = follow(mem, [0x0, 0xFF8], [0x10, 0x8])
    >>> [hex(v) for v in values], valid.tolist()
    (['0xabc', '0x0'], [True, False])
    """
    c, steps, translate = (
        _pointer_codec(dtype),
        _offsets(offsets, "offsets"),
        _translator(translate),
    )
    p = address_array(bases)
    valid = np.ones(p.shape, dtype=bool)
    for o in steps.reshape(-1).tolist():
        p, ok = _load(mem, p + np.uint64(o % 2**64), c.size, c.dtype, translate)
        valid &= ok
        p = p * valid
    return p, valid


def _pointer_codec(dtype: Any) -> Any:
    """Return the codec of an unsigned integer pointer type."""
    from .errors import ByteValuedError

    c = codec(dtype)
    if c.dtype.kind != "u" or c.dtype.shape:
        raise ByteValuedError(c.dtype, "pointers must be an unsigned integer type")
    return c


def walk_lists(
    mem: Any,
    heads: Any,
    next_offset: int = 0,
    *,
    points_to: int = 0,
    stop_at: Any = None,
    limit: int = 1 << 16,
    dtype: Any = "<u8",
    translate: Any = None,
) -> ListWalk:
    """Walk singly or doubly linked lists from many heads at once.

    Node ``n`` links to ``*(n + next_offset) - points_to``: ``points_to`` is where in the
    next node its pointer points (a Linux ``list_head`` inside a struct: both are the
    member's offset).  A walk visits its head first and ends at a NULL pointer, at a
    pointer equal to its ``stop_at`` (a circular list's head), at a pointer into a hole,
    or after ``limit`` nodes.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory.
    heads : array_like
        The first node of each list (1-d).
    next_offset : int, optional
        Offset of the next pointer in a node.
    points_to : int, optional
        Offset within the next node that the pointer holds.
    stop_at : int or array_like, optional
        A pointer value that ends the walk (one, or one per head); default: each head's
        own address plus ``points_to`` (a circular list returning to its start).
    limit : int, optional
        The most nodes visited per list (a guard against cycles).
    dtype : dtype_like, optional
        The pointers' type.
    translate : X86PageTables or callable, optional
        Maps the pointers (virtual addresses) to guest physical ones.

    Returns
    -------
    ListWalk
        ``(nodes, owner, stop)``.

    Raises
    ------
    ValueError
        ``limit`` is below 1, or ``stop_at`` does not have one value per head.
    TypeError
        ``translate`` is neither a callable nor has ``translate_many``, or ``next_offset``,
        ``points_to`` or ``limit`` is not an integer.
    ByteValuedError
        ``dtype`` is not an unsigned integer type.

    Examples
    --------
    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000)])
    >>> # a circular list of three list_heads at offset 0x10 of their nodes
    >>> mem.write_objs([0x210, 0x310, 0x110], [0x110, 0x210, 0x310], "<u8")
    >>> walk = walk_lists(mem, [0x100], next_offset=0x10, points_to=0x10)
    >>> [hex(a) for a in walk.nodes], walk.stop.tolist()
    (['0x100', '0x200', '0x300'], [1])
    """
    limit = _integer(limit, "limit")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, not {limit}")
    link = np.uint64(_integer(next_offset, "next_offset") % 2**64)
    back = np.uint64(_integer(points_to, "points_to") % 2**64)
    c, translate = _pointer_codec(dtype), _translator(translate)
    start = address_array(heads).reshape(-1)
    if stop_at is None:
        stop_value = start + back
    else:
        stop_value = address_array(stop_at).reshape(-1)
        if stop_value.size not in (1, start.size):
            raise ValueError(f"stop_at has {stop_value.size} values for {start.size} heads")
        stop_value = np.broadcast_to(stop_value, start.shape)
    stop = np.full(start.shape, STOP_LIMIT, dtype=np.int8)
    nodes, owners = [start], [np.arange(len(start), dtype=np.int64)]
    cur, live = start, np.arange(len(start), dtype=np.int64)
    for _ in range(limit - 1):
        value, ok = _load(mem, cur + link, c.size, c.dtype, translate)
        ended = np.select(
            [~ok, value == 0, value == stop_value[live]], [STOP_HOLE, STOP_NULL, STOP_AT], -1
        )
        stop[live[ended >= 0]] = ended[ended >= 0]
        going = ended < 0
        cur, live = value[going] - back, live[going]
        if not len(live):
            break
        nodes.append(cur)
        owners.append(live)
    flat_nodes, flat_owner = np.concatenate(nodes), np.concatenate(owners)
    order = np.argsort(flat_owner, kind="stable")
    return ListWalk(flat_nodes[order], flat_owner[order], stop)
