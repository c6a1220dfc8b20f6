"""Pointer chains (follow) and linked lists (walk_lists) against a plain-Python walker."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npguest import GuestMemoryMmap
from npguest.errors import ByteValuedError
from npguest.pointers import STOP_AT, STOP_HOLE, STOP_LIMIT, STOP_NULL, follow, walk_lists

LAYOUT = [(0, 0x1000), (0x1000, 0x1000), (0x4000, 0x1000)]  # adjacent pair, then a hole
SLOTS = [a for base, size in LAYOUT for a in range(base, base + size, 0x40)]
HOLES = [0x2000, 0x3FF8, 0x5000, 0x1FFC]  # unbacked, or a pointer straddling into a hole


def build(targets: dict[int, int], fmt: str = "<Q") -> tuple[GuestMemoryMmap, bytearray]:
    """A memory with pointer ``targets[a]`` stored at each ``a``; and a bytearray model."""
    mem = GuestMemoryMmap.from_ranges(LAYOUT)
    model = bytearray(0x5000)
    for addr, value in targets.items():
        mem.write(struct.pack(fmt, value), addr)
        model[addr : addr + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return mem, model


def model_load(model: bytearray, addr: int, fmt: str = "<Q") -> int | None:
    n = struct.calcsize(fmt)
    if not any(b <= addr and addr + n <= b + s for b, s in [(0, 0x2000), (0x4000, 0x1000)]):
        return None
    return struct.unpack_from(fmt, model, addr)[0]


POINTERS = st.dictionaries(
    st.sampled_from([a + 8 for a in SLOTS]),
    st.sampled_from([0, *SLOTS, *HOLES]),
    max_size=40,
)


@given(targets=POINTERS, heads=st.lists(st.sampled_from(SLOTS), max_size=6),
       limit=st.integers(1, 12))  # fmt: skip
def test_walk_lists_matches_a_python_walker(targets, heads, limit):
    mem, model = build(targets)
    walk = walk_lists(mem, np.array(heads, dtype=np.uint64), next_offset=8, limit=limit)
    want_nodes, want_owner, want_stop = [], [], []
    for i, head in enumerate(heads):
        node, stop = head, STOP_LIMIT
        for step in range(limit):
            want_nodes.append(node)
            want_owner.append(i)
            if step == limit - 1:
                break
            value = model_load(model, node + 8)
            if value is None:
                stop = STOP_HOLE
            elif value == 0:
                stop = STOP_NULL
            elif value == head:
                stop = STOP_AT
            else:
                node = value
                continue
            break
        want_stop.append(stop)
    assert walk.nodes.tolist() == want_nodes
    assert walk.owner.tolist() == want_owner
    assert walk.stop.tolist() == want_stop
    assert walk.nodes.dtype == np.uint64 and walk.owner.dtype == np.int64


@given(targets=POINTERS, bases=st.lists(st.sampled_from([*SLOTS, *HOLES]), min_size=1, max_size=6),
       path=st.lists(st.sampled_from([8, -0x38, 0x48]), max_size=4))  # fmt: skip
def test_follow_matches_a_python_walker(targets, bases, path):
    mem, model = build(targets)
    values, valid = follow(mem, bases, path)
    for base, value, ok in zip(bases, values.tolist(), valid.tolist(), strict=True):
        p, good = base, True
        for o in path:
            p = model_load(model, (p + o) % 2**64) if good else None
            good = p is not None
            p = p or 0
        assert (value, ok) == (p if good else 0, good)


def test_pointer_types_and_translation():
    mem, _ = build({0x108: 0x200, 0x208: 0x0}, ">I")
    walk = walk_lists(mem, [0x100], 8, dtype=">u4")
    assert walk.nodes.tolist() == [0x100, 0x200] and walk.stop.tolist() == [STOP_NULL]
    # virtual addresses 0x10000000 + p map to p; anything else does not translate
    virt = 0x1000_0000
    mem, _ = build({0x108: virt + 0x200, 0x208: virt + 0x3000, 0x4008: virt + 0x4000})

    def translate(vaddrs):
        ok = (vaddrs >= virt) & (vaddrs < virt + 0x5000)
        return (vaddrs - np.uint64(virt)) * ok, ok

    walk = walk_lists(mem, [virt + 0x100, virt + 0x4000], 8, translate=translate)
    assert walk.nodes.tolist() == [virt + 0x100, virt + 0x200, virt + 0x3000, virt + 0x4000]
    assert walk.stop.tolist() == [STOP_HOLE, STOP_AT]

    class Tables:  # anything with translate_many, like X86PageTables
        def translate_many(self, vaddrs):
            return (*translate(vaddrs), np.full(np.shape(vaddrs), 4096, dtype=np.uint64))

    assert follow(mem, [virt + 0x100], [8, 8], translate=Tables())[0].tolist() == [virt + 0x3000]
    # a pointer whose bytes straddle a page the translation maps elsewhere is not readable
    split = lambda v: (v - np.uint64(virt) + (v % 0x1000 >= 0xFFC) * np.uint64(0x1000), v >= virt)  # noqa: E731
    assert follow(mem, [virt + 0xFF8], [0], translate=split)[1].tolist() == [False]


def test_stop_at_and_stop_values():
    mem, _ = build({0x108: 0x200, 0x208: 0x300, 0x308: 0x100})
    assert walk_lists(mem, [0x100], 8, stop_at=0x300).nodes.tolist() == [0x100, 0x200]
    assert walk_lists(mem, [0x100, 0x200], 8, stop_at=[0x300, 0x100]).stop.tolist() == [1, 1]
    looped = walk_lists(mem, [0x100], 8, stop_at=0x1, limit=7)
    assert looped.nodes.tolist() == [0x100, 0x200, 0x300] * 2 + [0x100]
    assert looped.stop.tolist() == [STOP_LIMIT]
    empty = walk_lists(mem, [], 8)
    assert empty.nodes.shape == (0,) and empty.stop.shape == (0,)


def test_bad_arguments():
    mem, _ = build({})
    with pytest.raises(ValueError, match="limit"):
        walk_lists(mem, [0], limit=0)
    with pytest.raises(ValueError, match="stop_at has 2 values for 3 heads"):
        walk_lists(mem, [0, 8, 16], stop_at=[1, 2])
    with pytest.raises(ByteValuedError, match="unsigned integer"):
        follow(mem, [0], [0], dtype="<f8")
    with pytest.raises(TypeError, match="offsets must be integers"):
        follow(mem, [0], [0.5])
    with pytest.raises(TypeError, match="translate"):
        follow(mem, [0], [0], translate=42)
    for kwargs, name in [
        ({"next_offset": 8.9}, "next_offset"),  # (not truncated to 8)
        ({"points_to": "8"}, "points_to"),
        ({"limit": None}, "limit"),
        ({"limit": 2.5}, "limit"),
    ]:
        with pytest.raises(TypeError, match=f"{name} must be an integer, not"):
            walk_lists(mem, [0], **kwargs)
