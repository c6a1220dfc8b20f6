"""Helpers shared by the dump tests (imported as ``dump_support``)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from npguest import GuestMemoryMmap
from npguest.errors import DumpFormatError

PAGE = 0x1000


def sample_memory(layout, seed=0, zero_pages=0.3):
    """An anonymous memory over ``layout`` ((gpa, size) pairs) filled with random bytes.

    A fraction ``zero_pages`` of the pages is left zero (dumps treat zero pages specially).
    Returns the memory and the model: a list of ``(gpa, bytes)``.
    """
    rng = np.random.default_rng(seed)
    mem = GuestMemoryMmap.from_ranges(layout)
    model = []
    for gpa, size in layout:
        data = rng.integers(0, 256, size, dtype=np.uint8)
        npages = -(-size // PAGE)
        for p in np.flatnonzero(rng.random(npages) < zero_pages).tolist():
            data[p * PAGE : (p + 1) * PAGE] = 0
        mem.write_slice(data, gpa)
        model.append((gpa, data.tobytes()))
    return mem, model


def layout_of(mem):
    """The ``(gpa, size)`` pairs of a memory's regions."""
    return [(int(s), int(e - s)) for s, e in zip(mem.starts, mem.ends, strict=True)]


def assert_holds(mem, model):
    """Assert that ``mem`` reads back every ``(gpa, bytes)`` of ``model``."""
    for gpa, data in model:
        assert mem.read_bytes(gpa, len(data)) == data, f"contents differ in {gpa:#x}+{len(data)}"


def read_everything(mem):
    """Read every region of ``mem`` completely (faults every mapped page in)."""
    for s, e in zip(mem.starts.tolist(), mem.ends.tolist(), strict=True):
        buf = bytearray(e - s)
        mem.read_slice(buf, s)


def assert_only_dump_errors(opener, data: bytes, path: Path):
    """Write ``data`` to ``path``, open it with ``opener(path)`` and read all of it.

    Passes when that works, or fails with :class:`DumpFormatError` (whose message names a
    field and a file offset); any other exception propagates and fails the test.
    """
    path.write_bytes(data)
    try:
        mem = opener(path)
    except DumpFormatError as exc:
        error = exc
    else:
        with contextlib.closing(mem):
            read_everything(mem)
        return mem
    assert error.field and error.path == str(path)
    assert f"{error.offset:#x}" in str(error)
    return None


def mutations(blob: bytes):
    """A hypothesis strategy of corrupt variants of ``blob``: truncations, overwritten
    fields (random bytes, all-ones, zeros, huge counts) at random offsets, and appended junk."""
    n = len(blob)

    def apply(ops):
        data = bytearray(blob)
        for kind, at, value in ops:
            at %= max(len(data), 1)
            if kind == "truncate":
                del data[at:]
            elif kind == "junk":
                data += value
            else:
                data[at : at + len(value)] = value
        return bytes(data)

    op = st.tuples(
        st.sampled_from(["truncate", "overwrite", "overwrite", "overwrite", "junk"]),
        st.integers(0, max(n - 1, 0)),
        st.one_of(
            st.binary(min_size=1, max_size=8),
            st.sampled_from([b"\xff" * 8, b"\0" * 8, b"\xff\xff\xff\x7f", b"\0\0\0\x80"]),
        ),
    )
    return st.lists(op, min_size=1, max_size=4).map(apply)


#: Hypothesis settings for fuzzing a reader: each example rewrites one file in ``tmp_path``.
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
