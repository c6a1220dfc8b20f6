"""to_pandas: structured records read from guest memory, as a DataFrame."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from npguest import GuestMemoryMmap
from npguest.errors import GuestAddressOverflowError
from npguest.records import MAX_SPLIT, columns, to_pandas

pd = pytest.importorskip("pandas")

TASK = np.dtype(
    [
        ("pid", "<i4"),
        ("hdr", [("len", ">u2"), ("flags", "u1")]),
        ("regs", "<u8", (2, 2)),
        ("comm", "S8"),
        ("blob", "u1", (MAX_SPLIT + 1,)),
        ("pair", [("x", "<f4")], (2,)),
    ]
)


@given(hnp.arrays(TASK, st.integers(0, 20)))
def test_columns_hold_every_field(values):
    mem = GuestMemoryMmap.from_ranges([(0, 0x1000), (0x1000, 0x1000)])
    addrs = 0xF80 + np.arange(len(values), dtype=np.uint64) * np.uint64(TASK.itemsize)
    mem.write_objs(values, addrs)
    frame = to_pandas(mem.read_objs(addrs, TASK), addrs)
    assert frame.index.name == "addr" and frame.index.tolist() == addrs.tolist()
    assert list(frame.columns) == [
        "pid", "hdr.len", "hdr.flags", "regs[0,0]", "regs[0,1]", "regs[1,0]", "regs[1,1]",
        "comm", "blob", "pair[0].x", "pair[1].x",
    ]  # fmt: skip
    for i, record in enumerate(values):
        row = frame.iloc[i]
        assert row["pid"] == record["pid"] and row["hdr.len"] == record["hdr"]["len"]
        assert row["regs[1,0]"] == record["regs"][1, 0] and row["comm"] == record["comm"]
        assert np.array_equal(row["blob"], record["blob"])
        assert np.array_equal(row["pair[1].x"], record["pair"][1]["x"], equal_nan=True)
    assert all(frame[c].dtype.byteorder in "=|" for c in frame.columns if frame[c].dtype != object)


def test_plain_arrays_and_errors(monkeypatch):
    frame = to_pandas(np.arange(4, dtype=">u8").reshape(2, 2))
    assert list(frame.columns) == ["value"] and frame["value"].tolist() == [0, 1, 2, 3]
    assert list(columns(np.zeros(2, dtype="<u4"), "x")) == ["x"]
    with pytest.raises(ValueError, match="3 addresses for 2 records"):
        to_pandas(np.zeros(2, dtype=TASK), [1, 2, 3])
    with pytest.raises(TypeError, match="must be integers"):
        to_pandas(np.zeros(2, dtype=TASK), np.array([256.0, 512.5]))
    with pytest.raises(GuestAddressOverflowError):
        to_pandas(np.zeros(2, dtype=TASK), np.array([-1, 0x200]))
    with pytest.raises(GuestAddressOverflowError):
        to_pandas(np.zeros(2, dtype=TASK), [2**64, 0])
    clash = np.zeros(1, dtype=[("hdr", [("len", "<u2")]), ("hdr.len", "<u2")])
    with pytest.raises(ValueError, match=r"two fields flatten to the column 'hdr\.len'"):
        to_pandas(clash)
    with pytest.raises(ValueError, match=r"column 'x\[0\]'"):
        columns(np.zeros(1, dtype=[("x", "<u1", (2,)), ("x[0]", "<u1")]))
    empty = to_pandas(np.zeros(3, dtype=np.dtype([("a", "<u4", (0,))])))  # no column at all
    assert empty.shape == (3, 0)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"npguest\[pandas\]"):
        to_pandas(np.zeros(1, dtype=TASK))
