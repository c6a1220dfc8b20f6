"""Cloud Hypervisor snapshots (``ch-remote snapshot file:///dir``).

A snapshot directory holds ``state.json``, a serde_json tree of ``Snapshot`` nodes, and
``memory-ranges``, the guest memory.  The memory manager is the root's child
``snapshots["memory-manager"]``; its state lists ``memory_ranges.data = [{gpa, length},
...]``, and ``memory-ranges`` holds those ranges' bytes **densely in table order** (range
*i* at the sum of the earlier lengths; the table need not be sorted by address).

The memory manager's ``snapshot_data`` has had three shapes, all read:

- ``{"state": "<JSON text>"}``: a JSON string to parse again (current releases);
- ``[123, 34, ...]``: the state's JSON as an array of bytes (``SnapshotData(Vec<u8>)``,
  around v28);
- ``{"memory-manager-section": {"id": ..., "snapshot": [123, 34, ...]}}``: sections by id,
  each an array of bytes (older releases).

A state saved in the binary ``versionize`` encoding (some old releases) is not JSON and is
refused with a :class:`DumpFormatError`.  Ranges must account for the whole of
``memory-ranges``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import DumpFormatError
from .dump import DumpMemory, DumpMetadata, Extent, map_extents

__all__ = ["open_cloud_hypervisor"]

#: The memory manager's id among the root snapshot's children.
MEMORY_MANAGER = "memory-manager"
STATE_FILE = "state.json"
MEMORY_FILE = "memory-ranges"
_MM = f'snapshots["{MEMORY_MANAGER}"]'


def open_cloud_hypervisor(path: str | os.PathLike[str], *, writable: bool = False) -> DumpMemory:
    """Open a Cloud Hypervisor snapshot's memory.

    Parameters
    ----------
    path : str or os.PathLike
        The snapshot directory, or its ``state.json``.
    writable : bool, optional
        Map ``memory-ranges`` writable (writes change the file).  Default read-only.

    Returns
    -------
    DumpMemory
        One region per range (empty ranges are skipped).  ``metadata.path`` is the
        directory, ``metadata.extra["ranges"]`` the table as ``(gpa, length,
        file_offset)``, ``metadata.extra["snapshot_data"]`` the shape found (``"state"``,
        ``"bytes"`` or ``"sections"``).

    Raises
    ------
    DumpFormatError
        ``state.json`` or ``memory-ranges`` is missing; ``state.json`` is not JSON or lacks
        the memory manager's ranges (the field is named by its JSON path, the offset is
        the JSON error's position or 0); a range runs past the end of ``memory-ranges``,
        overlaps another or wraps; ``memory-ranges`` is longer than the ranges.
    MmapRegionError
        A file cannot be read or mapped.

    Examples
    --------
    >>> import json, os, tempfile
    >>> snap = tempfile.mkdtemp()
    >>> state = {"memory_ranges": {"data": [{"gpa": 0x100000, "length": 4096},
    ...                                     {"gpa": 0, "length": 4096}]}}
    >>> tree = {"snapshots": {"memory-manager": {
    ...     "snapshots": {}, "snapshot_data": {"state": json.dumps(state)}}}}
    >>> with open(os.path.join(snap, "state.json"), "w") as f:
    ...     json.dump(tree, f)
    >>> with open(os.path.join(snap, "memory-ranges"), "wb") as f:
    ...     _ = f.write(b"A" * 4096 + b"B" * 4096)
    >>> with open_cloud_hypervisor(snap) as mem:
    ...     mem.read_bytes(0x100000, 1), mem.read_bytes(0x0, 1)
    (b'A', b'B')
    """
    path = os.fspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path) or "."
    state_path = path if not os.path.isdir(path) else os.path.join(directory, STATE_FILE)
    memory_path = os.path.join(directory, MEMORY_FILE)
    state, shape, where = _memory_manager_state(state_path)
    table = _ranges(state_path, state, where)
    placed, offset = [], 0
    for gpa, length in table:
        placed.append((gpa, length, offset))
        offset += length
    try:
        file_size = os.stat(memory_path).st_size
    except OSError as exc:
        raise DumpFormatError(memory_path, 0, MEMORY_FILE, f"cannot read it: {exc}") from exc
    if offset < file_size:
        raise DumpFormatError(
            memory_path,
            offset,
            "file size",
            f"{file_size} bytes, {file_size - offset} past the {len(table)} ranges",
        )
    meta = DumpMetadata(
        "cloud-hypervisor",
        directory,
        extra={"ranges": tuple(placed), "snapshot_data": shape},
    )
    extents = [
        Extent(gpa, length, off, f"memory_ranges.data[{i}]", off)
        for i, (gpa, length, off) in enumerate(placed)
    ]
    return map_extents(memory_path, extents, meta, writable=writable)


def _memory_manager_state(state_path: str) -> tuple[dict[str, Any], str, str]:
    """Parse ``state.json`` down to the memory manager's state: (state, shape, JSON path)."""
    try:
        with open(state_path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise DumpFormatError(state_path, 0, STATE_FILE, f"cannot read it: {exc}") from exc
    root = _parse(state_path, text, STATE_FILE)
    children = _member(state_path, root, "snapshots", "")
    node = _member(state_path, children, MEMORY_MANAGER, "snapshots")
    data = _member(state_path, node, "snapshot_data", _MM)
    where = f"{_MM}.snapshot_data"
    if isinstance(data, dict) and isinstance(data.get("state"), str):
        inner, where, shape = data["state"], f"{where}.state", "state"
    elif isinstance(data, list):
        inner, shape = _bytes(state_path, data, where), "bytes"
    else:
        section = f"{MEMORY_MANAGER}-section"
        raw = _member(state_path, _member(state_path, data, section, where), "snapshot", where)
        where = f'{where}["{section}"].snapshot'
        inner, shape = _bytes(state_path, raw, where), "sections"
    state = _parse(state_path, inner, where)
    if not isinstance(state, dict):
        raise DumpFormatError(state_path, 0, where, "not a JSON object")
    return state, shape, where


def _parse(path: str, text: str | bytes, field: str) -> Any:
    """Parse JSON, answering bad text with a DumpFormatError.

    The offset is the error's byte position in ``state.json`` itself (``field`` is
    ``"state.json"``), 0 inside a nested state.
    """
    in_file = field == STATE_FILE
    try:
        if isinstance(text, bytes):
            decoded = text.decode("utf-8")
            try:
                return json.loads(decoded)
            except json.JSONDecodeError as exc:
                exc.pos = len(decoded[: exc.pos].encode())  # characters -> bytes
                raise
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = exc.pos if in_file else 0
        raise DumpFormatError(path, at, field, f"not JSON: {exc.msg} (at {exc.pos})") from None
    except UnicodeDecodeError as exc:
        at = exc.start if in_file else 0
        raise DumpFormatError(path, at, field, f"not UTF-8: {exc.reason}") from None
    except (ValueError, RecursionError) as exc:  # over-long integers, too deep nesting
        raise DumpFormatError(path, 0, field, f"unreadable JSON: {exc}") from None


def _member(path: str, obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict):
        raise DumpFormatError(path, 0, where or "(root)", "not a JSON object")
    if key not in obj:
        raise DumpFormatError(path, 0, f"{where}.{key}".lstrip("."), "missing")
    return obj[key]


def _bytes(path: str, data: Any, where: str) -> bytes:
    """Turn a JSON array of byte values (serde's ``Vec<u8>``) back into bytes."""
    if not isinstance(data, list) or not all(type(b) is int and 0 <= b <= 255 for b in data):
        raise DumpFormatError(path, 0, where, "not an array of byte values")
    raw = bytes(data)
    if not raw.lstrip().startswith(b"{"):
        raise DumpFormatError(
            path, 0, where, "not a JSON state (a binary versionize state is not supported)"
        )
    return raw


def _ranges(path: str, state: dict[str, Any], label: str) -> list[tuple[int, int]]:
    """Return the ``(gpa, length)`` table of ``memory_ranges.data``, each value checked."""
    where = f"{label}.memory_ranges"
    data = _member(path, _member(path, state, "memory_ranges", label), "data", where)
    if not isinstance(data, list):
        raise DumpFormatError(path, 0, f"{where}.data", "not a JSON array")
    table = []
    for i, item in enumerate(data):
        values = []
        for key in ("gpa", "length"):
            value = _member(path, item, key, f"{where}.data[{i}]")
            if type(value) is not int or not 0 <= value < 1 << 64:
                raise DumpFormatError(
                    path, 0, f"{where}.data[{i}].{key}", f"{value!r} is not a u64"
                )
            values.append(value)
        table.append((values[0], values[1]))
    return table
