"""GuestAddress / MemoryRegionAddress (vm-memory ``address.rs``) and the uint64 batch helpers."""

from __future__ import annotations

import copy
import operator
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npguest
from npguest.address import (
    U64_MAX,
    Address,
    GuestAddress,
    MemoryRegionAddress,
    _u64,
    address_array,
    align_up,
    overflowing_add,
    overflowing_sub,
)
from npguest.errors import GuestAddressOverflowError, GuestMemoryError

MOD = 1 << 64
KINDS = [GuestAddress, MemoryRegionAddress]

# Values where u64 arithmetic goes wrong first: 0, 2**53 (float64 stops being exact),
# 2**63 (int64 sign bit), 2**64 - 1.
EDGES = [
    0,
    1,
    2,
    0xFFF,
    0x1000,
    2**32 - 1,
    2**32,
    2**53 - 1,
    2**53,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**63 + 1,
    2**64 - 2,
    2**64 - 1,
]
u64 = st.one_of(st.sampled_from(EDGES), st.integers(0, U64_MAX))
kinds = st.sampled_from(KINDS)
powers_of_two = st.integers(0, 63).map(lambda k: 1 << k)


# -- construction and u64 bounds ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [0, 1, 0x1000, 2**53 + 1, 2**63, U64_MAX])
def test_construct_in_range(kind, value):
    a = kind(value)
    assert a.raw_value() == value
    assert int(a) == value
    assert type(a.raw_value()) is int


@pytest.mark.parametrize("kind", KINDS)
def test_default_is_zero(kind):
    # vm-memory: Default = 0
    assert kind() == kind(0)
    assert kind().raw_value() == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [-1, -(2**64), 2**64, 2**64 + 5, 2**100])
def test_construct_out_of_range(kind, value):
    with pytest.raises(GuestAddressOverflowError) as info:
        kind(value)
    assert info.value.addr == value
    assert isinstance(info.value, OverflowError)
    assert isinstance(info.value, GuestMemoryError)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [True, False, np.True_, "5", b"5", 5.0, 1.5, None, 2j, [1]])
def test_construct_non_integer_rejected(kind, value):
    with pytest.raises(TypeError) as info:
        kind(value)
    assert not isinstance(info.value, GuestMemoryError)


@pytest.mark.parametrize("kind", KINDS)
def test_construct_from_integer_likes(kind):
    assert kind(np.uint64(U64_MAX)).raw_value() == U64_MAX
    assert kind(np.int32(7)).raw_value() == 7
    assert type(kind(np.uint64(3)).raw_value()) is int
    with pytest.raises(GuestAddressOverflowError):
        kind(np.int64(-1))


def test_u64_max_constant():
    assert U64_MAX == 2**64 - 1
    assert npguest.U64_MAX == U64_MAX


# -- immutability, protocol --------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_immutable(kind):
    a = kind(0x1000)
    with pytest.raises(AttributeError):
        a._value = 5
    with pytest.raises(AttributeError):
        a.other = 5
    assert a.raw_value() == 0x1000
    assert not hasattr(a, "__dict__")


@pytest.mark.parametrize("kind", KINDS)
def test_no_arithmetic_operators_between_addresses(kind):
    # vm-memory design rule: no + / - on addresses, only explicit methods
    a, b = kind(1), kind(2)
    with pytest.raises(TypeError):
        _ = a + b
    with pytest.raises(TypeError):
        _ = a - b
    with pytest.raises(TypeError):
        _ = a + 1


def test_equality_same_kind_only():
    assert GuestAddress(1) == GuestAddress(1)
    assert GuestAddress(1) != GuestAddress(2)
    assert MemoryRegionAddress(1) == MemoryRegionAddress(1)
    assert GuestAddress(1) != MemoryRegionAddress(1)
    assert MemoryRegionAddress(1) != GuestAddress(1)
    assert (GuestAddress(1) == MemoryRegionAddress(1)) is False
    assert GuestAddress(1) != 1
    assert (GuestAddress(1) == 1) is False


def test_hash_consistent_with_equality():
    assert hash(GuestAddress(5)) == hash(GuestAddress(5))
    assert {GuestAddress(5), GuestAddress(5)} == {GuestAddress(5)}
    assert len({GuestAddress(5), MemoryRegionAddress(5)}) == 2
    d = {GuestAddress(0x1000): "g", MemoryRegionAddress(0x1000): "r"}
    assert d[GuestAddress(0x1000)] == "g"
    assert d[MemoryRegionAddress(0x1000)] == "r"


@pytest.mark.parametrize("op", [operator.lt, operator.le, operator.gt, operator.ge])
def test_ordering_across_kinds_raises(op):
    with pytest.raises(TypeError):
        op(GuestAddress(1), MemoryRegionAddress(2))
    with pytest.raises(TypeError):
        op(MemoryRegionAddress(1), GuestAddress(2))
    with pytest.raises(TypeError):
        op(GuestAddress(1), 2)
    with pytest.raises(TypeError):
        op(2, GuestAddress(1))


@given(kinds, u64, u64)
def test_ordering_matches_int(kind, a, b):
    x, y = kind(a), kind(b)
    assert (x < y) == (a < b)
    assert (x <= y) == (a <= b)
    assert (x > y) == (a > b)
    assert (x >= y) == (a >= b)
    assert (x == y) == (a == b)
    assert (x != y) == (a != b)
    assert (hash(x) == hash(y)) or a != b


def test_sorting_and_minmax():
    addrs = [GuestAddress(v) for v in (U64_MAX, 0, 2**63, 0x1000)]
    assert [a.raw_value() for a in sorted(addrs)] == [0, 0x1000, 2**63, U64_MAX]
    assert max(addrs) == GuestAddress(U64_MAX)
    assert min(addrs) == GuestAddress(0)


@pytest.mark.parametrize("kind", KINDS)
def test_index_protocol(kind):
    a = kind(3)
    assert operator.index(a) == 3
    assert ["a", "b", "c", "d"][a] == "d"
    assert list(range(a)) == [0, 1, 2]
    assert list(range(kind(1), kind(4))) == [1, 2, 3]
    assert b"abcdef"[kind(1) : kind(3)] == b"bc"
    assert hex(kind(255)) == "0xff"
    assert np.arange(10)[a] == 3
    assert int(kind(U64_MAX)) == U64_MAX
    assert operator.index(kind(U64_MAX)) == U64_MAX


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        (GuestAddress(0x1000), "GuestAddress(0x1000)"),
        (GuestAddress(0), "GuestAddress(0x0)"),
        (MemoryRegionAddress(U64_MAX), "MemoryRegionAddress(0xffffffffffffffff)"),
    ],
)
def test_repr(addr, text):
    # npguest prints hex (vm-memory's Debug prints decimal); repr evaluates back
    assert repr(addr) == text
    ns = {"GuestAddress": GuestAddress, "MemoryRegionAddress": MemoryRegionAddress}
    assert eval(repr(addr), ns) == addr


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", [0, 0x1234, 2**53 + 1, U64_MAX])
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickle(kind, value, protocol):
    a = kind(value)
    b = pickle.loads(pickle.dumps(a, protocol=protocol))
    assert type(b) is kind
    assert b == a
    assert b.raw_value() == value
    assert hash(b) == hash(a)


@pytest.mark.parametrize("kind", KINDS)
def test_copy(kind):
    a = kind(0xDEAD)
    for b in (copy.copy(a), copy.deepcopy(a)):
        assert type(b) is kind
        assert b == a


def test_both_kinds_are_addresses():
    assert issubclass(GuestAddress, Address)
    assert issubclass(MemoryRegionAddress, Address)
    assert not issubclass(GuestAddress, MemoryRegionAddress)
    assert not issubclass(MemoryRegionAddress, GuestAddress)
    assert npguest.GuestAddress is GuestAddress
    assert npguest.MemoryRegionAddress is MemoryRegionAddress


# -- the Address trait: fixed cases (vm-memory's address.rs tests) -------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_raw_value_and_mask(kind):
    a = kind(0x5050)
    assert a.raw_value() == 0x5050
    assert a.mask(0xFF00FF) == 0x50
    assert a.mask(0) == 0
    assert kind(U64_MAX).mask(U64_MAX) == U64_MAX
    # mask returns the plain value, not an address
    assert type(a.mask(0xFF)) is int


@pytest.mark.parametrize("kind", KINDS)
def test_bitand_bitor_keep_kind(kind):
    # vm-memory: Address & V -> Self, Address | V -> Self
    a = kind(0x1234)
    assert a & 0xFF00 == kind(0x1200)
    assert type(a & 0xFF00) is kind
    assert a | 0xF == kind(0x123F)
    assert type(a | 0xF) is kind
    assert kind(0) | U64_MAX == kind(U64_MAX)
    with pytest.raises(GuestAddressOverflowError):
        _ = a | 2**64
    with pytest.raises(GuestAddressOverflowError):
        _ = a & -1


@pytest.mark.parametrize("kind", KINDS)
def test_add_fixed(kind):
    a = kind(0x50)
    assert a.checked_add(0x10) == kind(0x60)
    assert a.unchecked_add(0x10) == kind(0x60)
    assert a.overflowing_add(0x10) == (kind(0x60), False)
    assert kind(U64_MAX).checked_add(0) == kind(U64_MAX)
    assert kind(U64_MAX).checked_add(1) is None
    assert kind(1).checked_add(U64_MAX) is None
    assert kind(U64_MAX).overflowing_add(1) == (kind(0), True)
    assert kind(U64_MAX).overflowing_add(U64_MAX) == (kind(U64_MAX - 1), True)
    assert kind(U64_MAX - 1).unchecked_add(1) == kind(U64_MAX)
    with pytest.raises(GuestAddressOverflowError) as info:
        kind(U64_MAX).unchecked_add(1)
    assert (info.value.addr, info.value.size) == (U64_MAX, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_sub_fixed(kind):
    a = kind(0x60)
    assert a.checked_sub(0x10) == kind(0x50)
    assert a.unchecked_sub(0x10) == kind(0x50)
    assert a.overflowing_sub(0x10) == (kind(0x50), False)
    assert a.checked_sub(0x60) == kind(0)
    assert a.checked_sub(0x61) is None
    assert kind(0).overflowing_sub(1) == (kind(U64_MAX), True)
    assert kind(0).overflowing_sub(U64_MAX) == (kind(1), True)
    assert kind(U64_MAX).unchecked_sub(U64_MAX) == kind(0)
    with pytest.raises(GuestAddressOverflowError) as info:
        kind(1).unchecked_sub(2)
    assert info.value.addr == 1
    assert info.value.size == -2


@pytest.mark.parametrize("kind", KINDS)
def test_offset_from_fixed(kind):
    a, b = kind(0x1800), kind(0x1000)
    assert a.checked_offset_from(b) == 0x800
    assert a.unchecked_offset_from(b) == 0x800
    assert type(a.checked_offset_from(b)) is int
    assert b.checked_offset_from(a) is None
    assert a.checked_offset_from(a) == 0
    assert kind(U64_MAX).checked_offset_from(kind(0)) == U64_MAX
    with pytest.raises(GuestAddressOverflowError) as info:
        b.unchecked_offset_from(a)
    assert info.value.addr == 0x1000
    assert info.value.size == -0x1800


def test_offset_from_other_kind_rejected():
    with pytest.raises(TypeError):
        GuestAddress(2).checked_offset_from(MemoryRegionAddress(1))
    with pytest.raises(TypeError):
        MemoryRegionAddress(2).unchecked_offset_from(GuestAddress(1))
    with pytest.raises(TypeError):
        GuestAddress(2).checked_offset_from(1)


@pytest.mark.parametrize("kind", KINDS)
def test_checked_align_up_fixed(kind):
    assert kind(0).checked_align_up(0x1000) == kind(0)
    assert kind(1).checked_align_up(0x1000) == kind(0x1000)
    assert kind(0x1000).checked_align_up(0x1000) == kind(0x1000)
    assert kind(0x1001).checked_align_up(0x1000) == kind(0x2000)
    assert kind(0x1234).checked_align_up(1) == kind(0x1234)
    assert kind(U64_MAX).checked_align_up(1) == kind(U64_MAX)
    assert kind(U64_MAX).checked_align_up(2) is None
    assert kind(U64_MAX - 0x3FFF).checked_align_up(0x10000) is None
    assert kind(U64_MAX - 0xFFF).checked_align_up(0x1000) == kind(U64_MAX - 0xFFF)
    assert kind(2**63 + 1).checked_align_up(2**63) is None
    assert kind(1).checked_align_up(2**63) == kind(2**63)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [0, 3, 6, 12, 0x1001, U64_MAX])
def test_checked_align_up_requires_power_of_two(kind, bad):
    # vm-memory asserts (panics); npguest raises ValueError
    with pytest.raises(ValueError, match="power of two"):
        kind(0x128).checked_align_up(bad)


@pytest.mark.parametrize("kind", KINDS)
def test_unchecked_align_up_fixed(kind):
    # the vm-memory quirk: no power-of-two check, (x + a - 1) & !(a - 1)
    assert kind(0x128).unchecked_align_up(12) == kind(0x130)
    assert kind(0x128).unchecked_align_up(8) == kind(0x128)
    assert kind(0x129).unchecked_align_up(8) == kind(0x130)
    assert kind(0).unchecked_align_up(0x1000) == kind(0)
    assert kind(U64_MAX).unchecked_align_up(1) == kind(U64_MAX)
    with pytest.raises(GuestAddressOverflowError) as info:
        kind(U64_MAX).unchecked_align_up(2)
    assert info.value.addr == U64_MAX
    assert info.value.size == 2
    # alignment 0: a - 1 underflows in vm-memory (debug panic)
    with pytest.raises(GuestAddressOverflowError):
        kind(5).unchecked_align_up(0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "method",
    [
        "checked_add",
        "overflowing_add",
        "unchecked_add",
        "checked_sub",
        "overflowing_sub",
        "unchecked_sub",
        "checked_align_up",
        "unchecked_align_up",
        "mask",
    ],
)
def test_method_arguments_are_u64(kind, method):
    a = kind(0x1000)
    for bad in (-1, 2**64):
        with pytest.raises(GuestAddressOverflowError) as info:
            getattr(a, method)(bad)
        assert info.value.addr == bad
    for bad in (True, 1.0, "1", None):
        with pytest.raises(TypeError):
            getattr(a, method)(bad)


@pytest.mark.parametrize("kind", KINDS)
def test_methods_return_same_kind(kind):
    a = kind(0x1000)
    assert type(a.checked_add(1)) is kind
    assert type(a.unchecked_add(1)) is kind
    assert type(a.overflowing_add(1)[0]) is kind
    assert type(a.checked_sub(1)) is kind
    assert type(a.unchecked_sub(1)) is kind
    assert type(a.overflowing_sub(1)[0]) is kind
    assert type(a.checked_align_up(0x100)) is kind
    assert type(a.unchecked_align_up(0x100)) is kind
    assert type(a.overflowing_add(1)[1]) is bool


def test_methods_accept_addresses_as_amounts():
    # __index__ makes an address usable where an integer amount is expected
    assert GuestAddress(0x10).checked_add(MemoryRegionAddress(0x20)) == GuestAddress(0x30)
    assert GuestAddress(0x10).unchecked_add(np.uint64(1)) == GuestAddress(0x11)


# -- the Address trait: properties against Python ints mod 2**64 -------------------------


@given(kinds, u64, u64)
def test_add_properties(kind, a, b):
    x = kind(a)
    total = a + b
    fits = total <= U64_MAX
    assert x.checked_add(b) == (kind(total) if fits else None)
    assert x.overflowing_add(b) == (kind(total % MOD), not fits)
    if fits:
        assert x.unchecked_add(b) == kind(total)
    else:
        with pytest.raises(GuestAddressOverflowError) as info:
            x.unchecked_add(b)
        assert (info.value.addr, info.value.size) == (a, b)
    assert x.raw_value() == a  # unchanged


@given(kinds, u64, u64)
def test_sub_properties(kind, a, b):
    x = kind(a)
    diff = a - b
    fits = diff >= 0
    assert x.checked_sub(b) == (kind(diff) if fits else None)
    assert x.overflowing_sub(b) == (kind(diff % MOD), not fits)
    if fits:
        assert x.unchecked_sub(b) == kind(diff)
    else:
        with pytest.raises(GuestAddressOverflowError) as info:
            x.unchecked_sub(b)
        assert info.value.addr == a
    assert x.raw_value() == a


@given(kinds, u64, u64)
def test_offset_from_properties(kind, a, b):
    x, y = kind(a), kind(b)
    if a >= b:
        assert x.checked_offset_from(y) == a - b
        assert x.unchecked_offset_from(y) == a - b
        # and it inverts checked_add
        assert y.checked_add(a - b) == x
    else:
        assert x.checked_offset_from(y) is None
        with pytest.raises(GuestAddressOverflowError):
            x.unchecked_offset_from(y)


@given(kinds, u64, powers_of_two)
def test_checked_align_up_properties(kind, a, p):
    expected = -(-a // p) * p  # ceil(a / p) * p
    got = kind(a).checked_align_up(p)
    if expected <= U64_MAX:
        assert got == kind(expected)
        assert got.raw_value() % p == 0
        assert 0 <= got.raw_value() - a < p
        assert kind(a).unchecked_align_up(p) == got
    else:
        assert got is None
        with pytest.raises(GuestAddressOverflowError):
            kind(a).unchecked_align_up(p)


@given(kinds, u64, st.integers(1, U64_MAX))
def test_unchecked_align_up_formula(kind, a, align):
    total = a + align - 1
    if total <= U64_MAX:
        assert kind(a).unchecked_align_up(align) == kind(total & ~(align - 1))
    else:
        with pytest.raises(GuestAddressOverflowError):
            kind(a).unchecked_align_up(align)


@given(kinds, u64, u64)
def test_mask_and_bitops_properties(kind, a, m):
    assert kind(a).mask(m) == a & m
    assert kind(a) & m == kind(a & m)
    assert kind(a) | m == kind(a | m)


# -- batch helpers vs the scalar methods ---------------------------------------------------

u64_lists = st.lists(u64, min_size=0, max_size=40)


def _pairs(draw_len=40):
    return st.integers(0, draw_len).flatmap(
        lambda n: st.tuples(
            st.lists(u64, min_size=n, max_size=n), st.lists(u64, min_size=n, max_size=n)
        )
    )


@given(_pairs())
def test_batch_overflowing_add_matches_scalar(pair):
    a, b = pair
    arr_a, arr_b = np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)
    total, wrapped = overflowing_add(arr_a, arr_b)
    assert total.dtype == np.uint64
    assert wrapped.dtype == np.bool_
    assert total.shape == wrapped.shape == (len(a),)
    expected = [GuestAddress(x).overflowing_add(y) for x, y in zip(a, b, strict=True)]
    assert total.tolist() == [e[0].raw_value() for e in expected]
    assert wrapped.tolist() == [e[1] for e in expected]
    # Python-int lists take the same path
    total2, wrapped2 = overflowing_add(a, b)
    assert total2.tolist() == total.tolist()
    assert wrapped2.tolist() == wrapped.tolist()


@given(_pairs())
def test_batch_overflowing_sub_matches_scalar(pair):
    a, b = pair
    diff, wrapped = overflowing_sub(np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64))
    assert diff.dtype == np.uint64
    assert wrapped.dtype == np.bool_
    expected = [GuestAddress(x).overflowing_sub(y) for x, y in zip(a, b, strict=True)]
    assert diff.tolist() == [e[0].raw_value() for e in expected]
    assert wrapped.tolist() == [e[1] for e in expected]
    diff2, wrapped2 = overflowing_sub(a, b)
    assert diff2.tolist() == diff.tolist()
    assert wrapped2.tolist() == wrapped.tolist()


@given(u64_lists, powers_of_two)
def test_batch_align_up_matches_scalar(a, p):
    rounded, wrapped = align_up(np.array(a, dtype=np.uint64), p)
    assert rounded.dtype == np.uint64
    assert wrapped.dtype == np.bool_
    for x, r, w in zip(a, rounded.tolist(), wrapped.tolist(), strict=True):
        scalar = GuestAddress(x).checked_align_up(p)
        assert w == (scalar is None)
        if scalar is None:
            # wrapped value: the same formula modulo 2**64
            assert r == ((x + p - 1) % MOD) & ~(p - 1) & U64_MAX
        else:
            assert r == scalar.raw_value()


@given(u64_lists, u64)
def test_batch_scalar_broadcast(a, b):
    total, wrapped = overflowing_add(np.array(a, dtype=np.uint64), b)
    assert total.tolist() == [(x + b) % MOD for x in a]
    assert wrapped.tolist() == [x + b > U64_MAX for x in a]
    diff, under = overflowing_sub(np.array(a, dtype=np.uint64), b)
    assert diff.tolist() == [(x - b) % MOD for x in a]
    assert under.tolist() == [x < b for x in a]


def test_batch_exact_above_2_53():
    # float64 would round all of these: the result must be exact
    big = [2**53 + 1, 2**63 + 3, U64_MAX - 2, 2**60 + 7]
    total, wrapped = overflowing_add(np.array(big, dtype=np.uint64), 2)
    assert total.tolist() == [2**53 + 3, 2**63 + 5, U64_MAX, 2**60 + 9]
    assert wrapped.tolist() == [False] * 4
    total, wrapped = overflowing_add(np.array([U64_MAX - 2], dtype=np.uint64), 3)
    assert total.tolist() == [0]
    assert wrapped.tolist() == [True]
    diff, under = overflowing_sub(big, 1)
    assert diff.tolist() == [2**53, 2**63 + 2, U64_MAX - 3, 2**60 + 6]
    assert under.tolist() == [False] * 4
    rounded, wrapped = align_up(big, 2)
    assert rounded.tolist() == [2**53 + 2, 2**63 + 4, U64_MAX - 1, 2**60 + 8]
    assert wrapped.tolist() == [False] * 4


def test_batch_fixed_examples():
    s, o = overflowing_add([U64_MAX, 1], 1)
    assert (s.tolist(), o.tolist()) == ([0, 2], [True, False])
    d, u = overflowing_sub([0, 5], [1, 5])
    assert (d.tolist(), u.tolist()) == ([U64_MAX, 0], [True, False])
    r, o = align_up([0x1001, U64_MAX, 0], 0x1000)
    assert (r.tolist(), o.tolist()) == ([0x2000, 0, 0], [False, True, False])


@pytest.mark.parametrize("bad", [0, 3, 12, 0x1001])
def test_batch_align_up_requires_power_of_two(bad):
    with pytest.raises(ValueError, match="power of two"):
        align_up([1, 2], bad)


def test_batch_helpers_broadcast_2d():
    a = np.array([[1, 2], [3, U64_MAX]], dtype=np.uint64)
    total, wrapped = overflowing_add(a, np.array([1, 1], dtype=np.uint64))
    assert total.shape == (2, 2)
    assert total.tolist() == [[2, 3], [4, 0]]
    assert wrapped.tolist() == [[False, False], [False, True]]


# -- address_array -------------------------------------------------------------------------


def test_address_array_returns_contiguous_uint64_input_itself():
    a = np.array([1, 2, U64_MAX], dtype=np.uint64)
    assert address_array(a) is a


def test_address_array_non_contiguous_uint64():
    a = np.arange(10, dtype=np.uint64)[::3]
    out = address_array(a)
    assert out.flags.c_contiguous
    assert out.dtype == np.uint64
    assert out.tolist() == [0, 3, 6, 9]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], []),
        ([0, 1, U64_MAX], [0, 1, U64_MAX]),
        ((2**53 + 1, 2**63), [2**53 + 1, 2**63]),
        ([GuestAddress(7), MemoryRegionAddress(U64_MAX), np.uint64(9)], [7, U64_MAX, 9]),
        (np.array([1, 2, 3], dtype=np.int64), [1, 2, 3]),
        (np.array([1, 2, 255], dtype=np.uint8), [1, 2, 255]),
        (np.array([2**31 - 1], dtype=np.int32), [2**31 - 1]),
        (range(3), [0, 1, 2]),
        (np.array([], dtype=np.float64), []),
    ],
)
def test_address_array_values(values, expected):
    out = address_array(values)
    assert out.dtype == np.uint64
    assert out.flags.c_contiguous
    assert out.tolist() == expected


@pytest.mark.parametrize(
    ("value", "expected"), [(5, [5]), (U64_MAX, [U64_MAX]), (GuestAddress(9), [9])]
)
def test_address_array_scalars(value, expected):
    out = address_array(value)
    assert out.dtype == np.uint64
    assert out.ravel().tolist() == expected


@pytest.mark.parametrize(
    ("values", "bad"),
    [
        ([1, -1], -1),
        ([2**64], 2**64),
        ([0, 1, 2**64 + 3], 2**64 + 3),
        (np.array([4, -3, -5], dtype=np.int64), -3),
        (np.array([-128], dtype=np.int8), -128),
        (-1, -1),
        (2**64, 2**64),
    ],
)
def test_address_array_out_of_range(values, bad):
    with pytest.raises(GuestAddressOverflowError) as info:
        address_array(values)
    assert info.value.addr == bad


@pytest.mark.parametrize(
    "values",
    [
        np.array([1.0, 2.0]),
        [1.5],
        ["1"],
        [True],
        np.array([True, False]),
        np.array(["a"]),
        np.array([1 + 2j]),
    ],
)
def test_address_array_non_integers(values):
    with pytest.raises(TypeError):
        address_array(values)


@given(u64_lists)
def test_address_array_round_trip(values):
    out = address_array(values)
    assert out.tolist() == values
    assert address_array(out) is out
    assert address_array([GuestAddress(v) for v in values]).tolist() == values


# -- review fixes: shapes kept by address_array, the argument named in range errors ----------


@pytest.mark.parametrize(
    ("values", "shape"),
    [
        (5, ()),
        (GuestAddress(5), ()),
        (np.uint64(5), ()),
        (np.int64(5), ()),
        (np.array(5), ()),
        (np.array(5, dtype=np.uint64), ()),
        ([[1, 2], [3, 4]], (2, 2)),
        (([1, 2, 3],), (1, 3)),
        ([[GuestAddress(1)], [2**64 - 1]], (2, 1)),
        ([[]], (1, 0)),
        (np.zeros((2, 3), dtype=np.int32), (2, 3)),
    ],
)
def test_address_array_keeps_the_shape(values, shape):
    out = address_array(values)
    assert out.shape == shape
    assert out.dtype == np.uint64 and out.flags.c_contiguous
    assert out.tolist() == np.asarray(values, dtype=object).astype(np.uint64).tolist()


def test_address_array_nested_lists_are_checked():
    with pytest.raises(GuestAddressOverflowError) as ei:
        address_array([[1, 2], [3, -1]])
    assert ei.value.addr == -1
    with pytest.raises(GuestAddressOverflowError):
        address_array([[1], [2**64]])
    with pytest.raises(TypeError):
        address_array([[1, 2], [True, 4]])
    with pytest.raises(TypeError, match="regular"):
        address_array([[1, 2], [3]])


@pytest.mark.parametrize(
    ("what", "value", "text"),
    [
        ("count", -5, "count -5 is not a 64-bit unsigned value"),
        ("length", 2**64, f"length {2**64} is not a 64-bit unsigned value"),
        ("offset", -1, "offset -0x1 is not a 64-bit unsigned value"),
        ("address", -1, "address -0x1 is not a 64-bit unsigned value"),
    ],
)
def test_u64_errors_name_the_argument(what, value, text):
    with pytest.raises(GuestAddressOverflowError) as ei:
        _u64(value, what)
    assert str(ei.value) == text
    assert (ei.value.addr, ei.value.what) == (value, what)
    back = pickle.loads(pickle.dumps(ei.value))
    assert (str(back), back.what) == (text, what)


def test_overflow_error_args_unchanged_for_addresses():
    assert GuestAddressOverflowError(-1, 0).args == (-1, 0)
    assert GuestAddressOverflowError(-1, 0, "count").args == (-1, 0, "count")
