"""Scans of a whole guest memory: literals, integer values, regular expressions, strings, yara.

Every scan walks the memory's backed bytes once (:func:`npguest.walk.iter_chunks`), chunk by
chunk, with an overlap into the next chunk of the same run, so a match that straddles a chunk
or a boundary between adjacent regions is found whole, and one across a hole never is.  Each
returns the guest addresses of its matches as an ascending ``uint64`` array, next to what
matched.  Literal and string scans run numba kernels, one call per chunk.

Examples
--------
>>> from npguest import GuestMemoryMmap
>>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000)])
>>> _ = mem.write(b"hello, guest", 0xFFC)              # straddles the two regions
>>> [hex(a) for a in find(mem, b"guest")]
['0x1003']
>>> addrs, texts = strings(mem, 6)
>>> hex(int(addrs[0])), texts[0]
('0xffc', 'hello, guest')
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from ._checks import guest_memory
from .walk import CHUNK, Chunk, backed_runs, iter_chunks

__all__ = ["find", "find_many", "find_regex", "find_values", "strings", "yara_scan"]

#: Patterns' bytes, by how common each is in memory images (higher: commoner): the scans
#: filter on the rarest bytes of a pattern.  A heuristic: zero pages, all-ones fill, small
#: integers and text dominate dumps; every other byte is as likely as any other.
_BYTE_RANK = np.ones(256)
_BYTE_RANK[0x01:0x10] = 4.0
_BYTE_RANK[0x20:0x7F] = 3.0
_BYTE_RANK[np.frombuffer(b" etaoinsrhl", dtype=np.uint8)] = 6.0
_BYTE_RANK[0xFF] = 16.0
_BYTE_RANK[0x00] = 64.0

_LANES = 4  # distinct key bytes per group of find_many's filter (the kernel's _SCAN_LANES)
_ENCODINGS = {"ascii": (1,), "utf-16le": (2,), "both": (1, 2)}
_EMPTY = np.empty(0, dtype=np.uint64)
_INT64_MAX = int(np.iinfo(np.int64).max)


def _k() -> ModuleType:
    """Return the numba kernels (imported on first use: ``import npguest`` compiles nothing)."""
    from . import _kernels

    return _kernels


# -- argument checks ----------------------------------------------------------------------
def _count(value: Any, name: str, minimum: int | None) -> int:
    """Return ``value`` as an int (of at least ``minimum``), or a TypeError/ValueError naming it."""
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}") from None
    if minimum is not None and n < minimum:
        raise ValueError(f"{name} must be at least {minimum}: {n}")
    return n


def _pattern(value: Any, name: str) -> bytes:
    """Return a non-empty bytes-like ``value`` as bytes."""
    if isinstance(value, str):
        raise TypeError(f"{name} must be bytes, not str: encode it first")
    try:
        data = bytes(memoryview(value))
    except TypeError:
        raise TypeError(f"{name} must be bytes-like, not {type(value).__name__}") from None
    if not data:
        raise ValueError(f"{name} is empty")
    return data


def _limit(limit: int | None) -> int:
    return _INT64_MAX if limit is None else _count(limit, "limit", 0)


def _join(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else _EMPTY


# -- literals -----------------------------------------------------------------------------
def find(mem: Any, pattern: bytes, *, limit: int | None = None, chunk: int = CHUNK) -> np.ndarray:
    """Return every guest address where ``pattern`` starts, ascending.

    Matches may overlap each other and cross adjacent regions; they never span a hole (nor
    a range a dump excluded).

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory: a live one, a dump (including a kdump dump without host memory).
    pattern : bytes
        A non-empty bytes-like literal.
    limit : int, optional
        Stop after the first ``limit`` matches.
    chunk : int, optional
        Bytes scanned per kernel call (a tuning knob: results do not depend on it).

    Returns
    -------
    numpy.ndarray
        ``uint64`` guest addresses.

    Raises
    ------
    TypeError
        ``pattern`` is not bytes-like, or ``limit`` / ``chunk`` is not an integer.
    ValueError
        ``pattern`` is empty, ``limit`` is negative or ``chunk`` is not positive.

    Examples
    --------
    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0x1000, 0x1000), (0x2000, 0x1000), (0x8000, 0x10)])
    >>> _ = mem.write(b"ELF", 0x1FFF), mem.write(b"EL", 0x2FFE), mem.write(b"F", 0x8000)
    >>> [hex(a) for a in find(mem, b"ELF")]        # across adjacent regions, not a hole
    ['0x1fff']
    >>> find(mem, b"EL").tolist(), find(mem, b"EL", limit=1).tolist()
    ([8191, 12286], [8191])
    """
    guest_memory(mem)
    pat = np.frombuffer(_pattern(pattern, "pattern"), dtype=np.uint8)
    remaining = _limit(limit)
    chunk = _count(chunk, "chunk", 1)
    rarest = np.argsort(_BYTE_RANK[pat], kind="stable")
    i1, i2 = int(rarest[0]), int(rarest[min(1, pat.size - 1)])
    largest = max((e - s for s, e in backed_runs(mem)), default=0)
    out = np.empty(min(remaining, chunk, largest), dtype=np.int64)  # a chunk's matches
    parts = []
    for c in iter_chunks(mem, chunk, overlap=pat.size - 1):
        if remaining == 0:
            break
        n = _k().find_literal(c.data, c.owned, pat, i1, i2, out[:remaining])
        parts.append(out[:n].astype(np.uint64) + np.uint64(c.addr))
        remaining -= n
    return _join(parts)


class _Literals:
    """The tables of find_many's kernel for a list of patterns (see ``find_literals``)."""

    def __init__(self, patterns: Sequence[bytes]) -> None:
        lens = np.array([len(p) for p in patterns], dtype=np.int64)
        self.wide = bool(lens.min() >= 2)  # keys of two bytes, unless a pattern has one
        self.pats = np.frombuffer(b"".join(patterns), dtype=np.uint8)
        self.starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        self.lens = lens
        x, y, offs = [], [], []
        for p in patterns:  # each pattern's key: its rarest byte, or pair of adjacent bytes
            rank = _BYTE_RANK[np.frombuffer(p, dtype=np.uint8)]
            o = int(np.argmin(rank[:-1] * rank[1:])) if self.wide else int(np.argmin(rank))
            offs.append(o)
            x.append(p[o])
            y.append(p[o + 1] if self.wide else 0)
        self.offs = np.array(offs, dtype=np.int64)
        keys = np.array(x, dtype=np.int64) | (np.array(y, dtype=np.int64) << 8)
        self.keys = np.packbits(np.bincount(keys, minlength=0x10000) > 0, bitorder="little")
        self.order = np.argsort(keys, kind="stable")
        self.kptr = np.searchsorted(keys[self.order], np.arange(0x10001)).astype(np.int64)
        self.s1, self.s2 = self._groups(keys[self.order])
        self.out = np.empty((max(len(patterns), 1 << 16), 2), dtype=np.int64)

    @staticmethod
    def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split sorted ``keys`` into groups of at most ``_LANES`` distinct first / second bytes."""
        groups: list[tuple[set[int], set[int]]] = []
        for key in np.unique(keys).tolist():
            a, b = key & 0xFF, key >> 8
            if not groups or len(groups[-1][0] | {a}) > _LANES or len(groups[-1][1] | {b}) > _LANES:
                groups.append((set(), set()))
            groups[-1][0].add(a)
            groups[-1][1].add(b)
        s1 = np.array([np.resize(sorted(g1), _LANES) for g1, _ in groups], dtype=np.uint8)
        s2 = np.array([np.resize(sorted(g2), _LANES) for _, g2 in groups], dtype=np.uint8)
        return s1, s2

    def scan(self, c: Chunk) -> np.ndarray:
        """Return the ``(offset, pattern)`` rows of chunk ``c`` (by key position)."""
        rows = []
        j = 0
        while j >= 0:  # more than once only when a chunk has more matches than out has room
            n, j = _k().find_literals(
                c.data,
                j,
                c.owned,
                self.pats,
                self.starts,
                self.lens,
                self.offs,
                self.wide,
                self.s1,
                self.s2,
                self.keys,
                self.kptr,
                self.order,
                self.out,
            )
            rows.append(self.out[:n].copy())
        return np.concatenate(rows)


def find_many(
    mem: Any, patterns: Sequence[bytes], *, chunk: int = CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Find several literals in one pass over the memory.

    Each pattern is filtered on its rarest pair of adjacent bytes (its rarest byte, when a
    pattern has one byte).  Patterns whose pairs hold at most four distinct first and four
    distinct second bytes share one vectorised filter step: the cost grows with the number
    of such groups (about one per four patterns of unrelated bytes).

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory.
    patterns : sequence of bytes
        Non-empty bytes-like literals (at least one).
    chunk : int, optional
        Bytes scanned per kernel call (a tuning knob: results do not depend on it).

    Returns
    -------
    addrs : numpy.ndarray
        ``uint64`` guest address of each match, ascending.
    index : numpy.ndarray
        ``int64`` index into ``patterns`` of the pattern matched there (ascending among
        patterns matching at the same address).

    Raises
    ------
    TypeError
        A pattern is not bytes-like, or ``chunk`` is not an integer.
    ValueError
        ``patterns`` or one of them is empty, or ``chunk`` is not positive.

    Examples
    --------
    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000)])
    >>> _ = mem.write(b"cat dog", 0xFFE)
    >>> addrs, index = find_many(mem, [b"dog", b"cat", b"at"])
    >>> [hex(a) for a in addrs], index.tolist()
    (['0xffe', '0xfff', '0x1002'], [1, 2, 0])
    """
    guest_memory(mem)
    if isinstance(patterns, (bytes, bytearray, memoryview, str)):
        raise TypeError("patterns must be a sequence of bytes patterns, not one pattern")
    pats = [_pattern(p, f"patterns[{i}]") for i, p in enumerate(patterns)]
    if not pats:
        raise ValueError("patterns is empty")
    chunk = _count(chunk, "chunk", 1)
    table = _Literals(pats)
    addrs, index = [], []
    for c in iter_chunks(mem, chunk, overlap=max(map(len, pats)) - 1):
        rows = table.scan(c)
        addrs.append(rows[:, 0].astype(np.uint64) + np.uint64(c.addr))
        index.append(rows[:, 1])
    a = _join(addrs)
    i = np.concatenate(index) if index else np.empty(0, dtype=np.int64)
    order = np.lexsort((i, a))
    return a[order], i[order]


# -- integers -----------------------------------------------------------------------------
def _int_dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype is not a numpy dtype: {dtype!r}") from None
    if dt.kind not in "iu":
        raise TypeError(f"dtype must be an integer dtype, not {dt}")
    return dt


def _in_range(value: Any, dt: np.dtype, name: str) -> int:
    info = np.iinfo(dt)
    v = _count(value, name, info.min)
    if v > info.max:
        raise ValueError(f"{name} does not fit {dt}: {v}")
    return v


def _value_set(values: Iterable[int], dt: np.dtype) -> np.ndarray:
    if isinstance(values, np.ndarray):
        values = values.ravel().tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"values must be an iterable of integers, not {type(values).__name__}")
    vals = [_in_range(v, dt, "values") for v in values]
    if not vals:
        raise ValueError("values is empty")
    return np.array(vals, dtype=dt.newbyteorder("="))


def find_values(
    mem: Any,
    values: Iterable[int] | None = None,
    dtype: Any = "<u8",
    *,
    lo: int | None = None,
    hi: int | None = None,
    align: int | None = None,
    chunk: int = CHUNK,
) -> tuple[np.ndarray, np.ndarray]:
    """Find aligned integers equal to any of ``values``, or in ``[lo, hi)``.

    Give either ``values`` or a range (``lo``, ``hi`` or both): a range finds pointers into
    memory, e.g. ``find_values(mem, dtype="<u8", lo=0x1000, hi=0x2000)``.  An integer may
    straddle adjacent regions, not a hole.

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory.
    values : iterable of int, optional
        The values to look for (each must fit ``dtype``).
    dtype : numpy dtype, optional
        An integer dtype, any byte order (default ``"<u8"``, a little-endian pointer).
    lo, hi : int, optional
        The range ``lo <= value < hi`` (a missing bound: unbounded on that side).
    align : int, optional
        Look at guest addresses that are multiples of ``align`` (default: the dtype's size).
    chunk : int, optional
        Bytes scanned per step (a tuning knob: results do not depend on it).

    Returns
    -------
    addrs : numpy.ndarray
        ``uint64`` guest address of each match, ascending.
    found : numpy.ndarray
        The value at each address, as ``dtype`` in native byte order.

    Raises
    ------
    TypeError
        ``dtype`` is not an integer dtype; ``values`` and a range are both given or neither
        is; a value, bound, ``align`` or ``chunk`` is not an integer.
    ValueError
        ``values`` is empty or does not fit ``dtype``; ``align`` or ``chunk`` is not
        positive.

    Examples
    --------
    >>> import numpy as np
    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000)])
    >>> mem.write_obj(0xFFFF_8000_0000_1234, 0xFFC, np.dtype("<u8"))   # straddles
    >>> addrs, found = find_values(mem, dtype="<u8", lo=0xFFFF_8000_0000_0000, align=4)
    >>> [hex(a) for a in addrs], [hex(v) for v in found]
    (['0xffc'], ['0xffff800000001234'])
    >>> find_values(mem, [0x1234], "<u2", align=1)[0].tolist()
    [4092]
    """
    guest_memory(mem)
    dt = _int_dtype(dtype)
    ranged = lo is not None or hi is not None
    if (values is None) == (not ranged):
        raise TypeError("give either values or a range (lo, hi), not both nor neither")
    align = dt.itemsize if align is None else _count(align, "align", 1)
    chunk = _count(chunk, "chunk", 1)
    native = dt.newbyteorder("=")
    if ranged:
        info = np.iinfo(dt)
        low = info.min if lo is None else max(_count(lo, "lo", None), info.min)
        high = info.max + 1 if hi is None else min(_count(hi, "hi", None), info.max + 1)
        if low >= high:
            return _EMPTY, np.empty(0, dtype=native)
        bounds = native.type(low), native.type(high - 1)
    else:
        wanted = _value_set(values, dt)
    addrs, found = [], []
    for c in iter_chunks(mem, chunk, overlap=dt.itemsize - 1):
        first = -c.addr % align
        count = min(
            -(-(c.owned - first) // align), (c.data.size - dt.itemsize - first) // align + 1
        )
        if count <= 0:
            continue
        step = align if count > 1 else dt.itemsize  # (an align past the data is no stride)
        view = np.ndarray((count,), dt, buffer=c.data, offset=first, strides=(step,))
        if ranged:
            hit = np.flatnonzero((view >= bounds[0]) & (view <= bounds[1]))
        else:
            hit = np.flatnonzero(np.isin(view, wanted))
        addrs.append(np.uint64(c.addr + first) + hit.astype(np.uint64) * np.uint64(step))
        found.append(view[hit].astype(native))
    return _join(addrs), np.concatenate(found) if found else np.empty(0, dtype=native)


# -- regular expressions and yara ---------------------------------------------------------
def _regex(regex: Any, flags: int) -> re.Pattern[bytes]:
    if isinstance(regex, re.Pattern):
        if flags:
            raise ValueError("flags cannot be given with a compiled regex")
        if not isinstance(regex.pattern, bytes):
            raise TypeError("regex must be a bytes pattern, not a str pattern")
        return regex
    if not isinstance(regex, (bytes, bytearray)):
        raise TypeError(
            f"regex must be bytes or a compiled bytes pattern, not {type(regex).__name__}"
        )
    try:
        return re.compile(bytes(regex), flags)
    except re.error as exc:
        raise ValueError(f"regex is not a valid regular expression: {exc}") from exc


def find_regex(
    mem: Any,
    regex: bytes | re.Pattern[bytes],
    *,
    flags: int = 0,
    max_len: int = 4096,
    chunk: int = CHUNK,
) -> tuple[np.ndarray, list[bytes]]:
    r"""Find the matches of a bytes regular expression (Python :mod:`re`), chunk by chunk.

    Each chunk is searched with an overlap of ``max_len`` bytes into the next one, and the
    next chunk's search resumes where the last match ended, so matches come out as one
    ``finditer`` over each run would give them, as long as none is longer than
    ``max_len``.  A longer match may be cut short at ``max_len`` bytes past its chunk's
    end (or be missed); anchors and lookarounds see a chunk's edges as the data's edges.

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory.
    regex : bytes or re.Pattern
        The expression (a ``str`` pattern is refused: memory is bytes).
    flags : int, optional
        :mod:`re` flags, when ``regex`` is not compiled yet.
    max_len : int, optional
        The longest match to find whole (the chunks' overlap).
    chunk : int, optional
        Bytes searched per step (results do not depend on it, up to ``max_len``).

    Returns
    -------
    addrs : numpy.ndarray
        ``uint64`` guest address where each match starts, ascending.
    matches : list of bytes
        The bytes matched.

    Raises
    ------
    TypeError
        ``regex`` is not bytes or a compiled bytes pattern; ``max_len`` or ``chunk`` is not
        an integer.
    ValueError
        ``regex`` does not compile, ``flags`` came with a compiled ``regex``, or
        ``max_len`` or ``chunk`` is not positive.

    Examples
    --------
    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000)])
    >>> _ = mem.write(b"id=42; ID=7", 0xFFA)
    >>> addrs, matches = find_regex(mem, rb"id=(\d+)", flags=re.IGNORECASE)
    >>> [hex(a) for a in addrs], matches
    (['0xffa', '0x1001'], [b'id=42', b'ID=7'])
    """
    guest_memory(mem)
    pattern = _regex(regex, flags)
    max_len = _count(max_len, "max_len", 1)
    chunk = _count(chunk, "chunk", 1)
    addrs: list[int] = []
    found: list[bytes] = []
    resume = 0  # guest address where the last match ended
    for c in iter_chunks(mem, chunk, overlap=max_len):
        for m in pattern.finditer(c.data, max(0, resume - c.addr)):
            if m.start() >= c.owned:
                break
            addrs.append(c.addr + m.start())
            found.append(m.group())
            resume = c.addr + m.end()
    return np.array(addrs, dtype=np.uint64), found


def _yara() -> ModuleType:
    try:
        import yara
    except ImportError as exc:
        raise ImportError(
            "yara_scan needs the yara-python package: pip install yara-python "
            "(or pip install 'npguest[yara]')"
        ) from exc
    return yara


def yara_scan(
    mem: Any, rules: Any, *, max_len: int = 4096, chunk: int = CHUNK
) -> tuple[np.ndarray, list[str]]:
    """Run yara rules over the memory, chunk by chunk (needs ``yara-python``).

    Each chunk (with ``max_len`` bytes of the next) is matched on its own: a rule's
    condition sees the chunk, not the memory, so conditions on ``filesize``, on offsets or
    on strings further apart than ``max_len`` see chunks.  Every string instance of a
    matching rule is reported once, at its guest address; a rule matching without string
    instances has no address and is not reported.  (yara keeps at most 1,000,000
    instances of a string per match: a chunk that reaches that is matched again in halves.)

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory.
    rules : yara.Rules or str
        Compiled rules, or yara source to compile.
    max_len : int, optional
        The longest string instance to find whole (the chunks' overlap).
    chunk : int, optional
        Bytes matched per step.

    Returns
    -------
    addrs : numpy.ndarray
        ``uint64`` guest address of each string instance, ascending.
    rules : list of str
        The name of the rule it belongs to (one entry per address and rule).

    Raises
    ------
    ImportError
        ``yara-python`` is not installed.
    TypeError
        ``rules`` is neither compiled rules nor source; ``max_len`` or ``chunk`` is not an
        integer.
    ValueError
        The source does not compile, or ``max_len`` or ``chunk`` is not positive.
    """
    guest_memory(mem)
    yara = _yara()
    if isinstance(rules, str):
        try:
            rules = yara.compile(source=rules)
        except yara.Error as exc:
            raise ValueError(f"rules do not compile: {exc}") from exc
    elif not callable(getattr(rules, "match", None)):
        raise TypeError(f"rules must be yara.Rules or yara source, not {type(rules).__name__}")
    max_len = _count(max_len, "max_len", 1)
    chunk = _count(chunk, "chunk", 1)
    hits: set[tuple[int, str]] = set()
    for c in iter_chunks(mem, chunk, overlap=max_len):
        _yara_match(yara, rules, c, max_len, hits)
    ordered = sorted(hits)
    return np.array([a for a, _ in ordered], dtype=np.uint64), [r for _, r in ordered]


def _yara_match(
    yara: ModuleType, rules: Any, c: Chunk, overlap: int, hits: set[tuple[int, str]]
) -> None:
    """Add the ``(address, rule)`` of the instances starting in ``c``'s owned bytes.

    yara records at most 1,000,000 instances of a string per scan (and then warns): where
    it did, the owned bytes are matched again in two halves, each with ``overlap`` bytes
    more where ``c`` has them.
    """
    truncated = False

    def warned(kind: int, _: Any) -> int:
        nonlocal truncated
        truncated |= kind == yara.CALLBACK_TOO_MANY_MATCHES
        return yara.CALLBACK_CONTINUE

    matches = rules.match(data=c.data.tobytes(), warnings_callback=warned)
    if truncated and c.owned > 1:
        half = c.owned // 2
        _yara_match(yara, rules, Chunk(c.addr, c.data[: half + overlap], half), overlap, hits)
        right = Chunk(c.addr + half, c.data[half:], c.owned - half)
        _yara_match(yara, rules, right, overlap, hits)
        return
    for match in matches:
        for s in match.strings:
            hits.update((c.addr + i.offset, match.rule) for i in s.instances if i.offset < c.owned)


# -- strings ------------------------------------------------------------------------------
class _Runs:
    """Collects one encoding's strings, joining runs that continue into the next chunk."""

    def __init__(self, width: int, min_len: int) -> None:
        self.width = width
        self.min_len = min_len
        self.codec = "ascii" if width == 1 else "utf-16-le"
        self.addrs: list[np.ndarray] = []
        self.texts: list[str] = []
        self.pending: dict[int, tuple[int, list[bytes]]] = {}  # next address -> (start, parts)

    def feed(self, c: Chunk, starts: np.ndarray, counts: np.ndarray, contiguous: bool) -> None:
        """Take a chunk's runs (from ``printable_runs``); ``contiguous``: it follows the last."""
        if not contiguous:
            self.flush()
        w = self.width
        raw = c.data.tobytes()
        nexts = starts + w * counts
        edge = (starts < w) | (nexts >= c.owned)  # may join a neighbouring chunk's run
        inner = np.flatnonzero(~edge & (counts >= self.min_len))
        self.addrs.append(starts[inner].astype(np.uint64) + np.uint64(c.addr))
        self.texts += [
            raw[s:e].decode(self.codec)
            for s, e in zip(starts[inner].tolist(), nexts[inner].tolist(), strict=True)
        ]
        pending, self.pending = self.pending, {}
        for s, e in zip(starts[edge].tolist(), nexts[edge].tolist(), strict=True):
            start, parts = pending.pop(c.addr + s, (c.addr + s, []))
            parts.append(raw[s:e])
            if e >= c.owned:
                self.pending[c.addr + e] = (start, parts)
            else:
                self._emit(start, parts)
        for at, (start, parts) in pending.items():
            if at < c.addr + c.owned:  # its next character was in this chunk: it ended
                self._emit(start, parts)
            else:  # a chunk narrower than a character: the next one may continue it
                self.pending[at] = (start, parts)

    def _emit(self, start: int, parts: list[bytes]) -> None:
        text = b"".join(parts)
        if len(text) >= self.width * self.min_len:
            self.addrs.append(np.array([start], dtype=np.uint64))
            self.texts.append(text.decode(self.codec))

    def flush(self) -> None:
        """Emit the runs still waiting for a next chunk."""
        for start, parts in self.pending.values():
            self._emit(start, parts)
        self.pending = {}


def strings(
    mem: Any, min_len: int = 4, *, encoding: str = "ascii", chunk: int = CHUNK
) -> tuple[np.ndarray, list[str]]:
    r"""Find runs of printable characters, like the ``strings`` tool.

    Printable: ASCII ``0x20``-``0x7e`` and tab.  ``"utf-16le"`` finds the same characters
    each followed by a zero byte, at any alignment.  A string may straddle adjacent regions,
    not a hole.

    Parameters
    ----------
    mem : GuestMemoryMmap
        Any guest memory.
    min_len : int, optional
        The fewest characters a string has (default 4).
    encoding : {"ascii", "utf-16le", "both"}, optional
        What to look for (``"both"``: the two lists merged by address, an ASCII string
        first where both start at one address).
    chunk : int, optional
        Bytes scanned per kernel call (results do not depend on it).

    Returns
    -------
    addrs : numpy.ndarray
        ``uint64`` guest address where each string starts, ascending.
    texts : list of str
        The strings.

    Raises
    ------
    TypeError
        ``min_len`` or ``chunk`` is not an integer.
    ValueError
        ``encoding`` is not one of the three, or ``min_len`` or ``chunk`` is not positive.

    Examples
    --------
    >>> from npguest import GuestMemoryMmap
    >>> mem = GuestMemoryMmap.from_ranges([(0, 0x1000)])
    >>> _ = mem.write(b"\x01kernel\x00\x00w\x00i\x00n\x00", 0x10)
    >>> addrs, texts = strings(mem, 3, encoding="both")
    >>> [hex(a) for a in addrs], texts
    (['0x11', '0x19'], ['kernel', 'win'])
    """
    guest_memory(mem)
    if encoding not in _ENCODINGS:
        raise ValueError(f"encoding must be one of {sorted(_ENCODINGS)}: {encoding!r}")
    min_len = _count(min_len, "min_len", 1)
    shortest = min(min_len, _INT64_MAX)  # (the kernel's int; no run is that long)
    chunk = _count(chunk, "chunk", 1)
    runs = [_Runs(w, min_len) for w in _ENCODINGS[encoding]]
    end = None
    for c in iter_chunks(mem, chunk, overlap=1):  # a UTF-16 character's zero byte
        for r in runs:
            starts, counts = _k().printable_runs(c.data, c.owned, r.width, shortest)
            r.feed(c, starts, counts, c.addr == end)
        end = c.addr + c.owned
    for r in runs:
        r.flush()
    addrs = _join([a for r in runs for a in r.addrs])
    widths = np.concatenate([np.full(len(r.texts), r.width) for r in runs])
    texts = [t for r in runs for t in r.texts]
    order = np.lexsort((widths, addrs))
    return addrs[order], [texts[i] for i in order.tolist()]
