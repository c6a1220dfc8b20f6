"""ByteValued dtypes, the endian types and as_bytes / from_bytes (vm-memory bytes.rs, endian.rs)."""

from __future__ import annotations

import math
import pickle
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npguest
from npguest.dtypes import (
    Be16,
    Be32,
    Be64,
    BeSize,
    Codec,
    Le16,
    Le32,
    Le64,
    LeSize,
    as_bytes,
    byte_valued,
    codec,
    from_bytes,
)
from npguest.errors import ByteValuedError, GuestMemoryError

HOST = "<" if sys.byteorder == "little" else ">"
SWAPPED = ">" if HOST == "<" else "<"

INT_DTYPES = [f"{o}{k}{n}" for o in "<>" for k in "iu" for n in (1, 2, 4, 8)]


def int_range(dt):
    dt = np.dtype(dt)
    bits = dt.itemsize * 8
    if dt.kind == "u":
        return 0, (1 << bits) - 1
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


# -- endian types (vm-memory endian.rs) ---------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (Le16, "<u2"),
        (Le32, "<u4"),
        (Le64, "<u8"),
        (LeSize, "<u8"),
        (Be16, ">u2"),
        (Be32, ">u4"),
        (Be64, ">u8"),
        (BeSize, ">u8"),
    ],
)
def test_endian_types_are_dtypes(dtype, expected):
    assert isinstance(dtype, np.dtype)
    assert dtype == np.dtype(expected)
    assert dtype.byteorder in "<>=|"
    # explicit order: equal to the dtype of that order on any host
    assert dtype.newbyteorder(expected[0]) == dtype


def test_endian_types_exported():
    for name in ("Le16", "Le32", "Le64", "LeSize", "Be16", "Be32", "Be64", "BeSize"):
        assert getattr(npguest, name) is getattr(npguest.dtypes, name)


@pytest.mark.parametrize(
    ("dtype", "value", "expected"),
    [
        (Be32, 0x01020304, b"\x01\x02\x03\x04"),  # vm-memory: Be32::from(0x01020304)
        (Le32, 0x01020304, b"\x04\x03\x02\x01"),  # vm-memory: Le32::from(0x01020304)
        (Be16, 0x0102, b"\x01\x02"),
        (Le16, 0x0102, b"\x02\x01"),
        (Be64, 0x0102030405060708, bytes(range(1, 9))),
        (Le64, 0x0102030405060708, bytes(range(8, 0, -1))),
        (BeSize, 0x0102030405060708, bytes(range(1, 9))),
        (LeSize, 0x0102030405060708, bytes(range(8, 0, -1))),
        (Be64, 2**64 - 1, b"\xff" * 8),
        (Le16, 0, b"\x00\x00"),
    ],
)
def test_endian_bytes(dtype, value, expected):
    assert as_bytes(value, dtype) == expected
    back = from_bytes(expected, dtype)
    assert back == value
    assert type(back) is int


@given(st.integers(0, 2**32 - 1))
def test_le_and_be_are_reversed(v):
    assert as_bytes(v, Le32) == as_bytes(v, Be32)[::-1]
    assert from_bytes(as_bytes(v, Be32)[::-1], Le32) == v


# -- byte_valued -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype",
    [
        np.uint32,
        np.int8,
        np.float64,
        np.complex128,
        "<u8",
        ">i2",
        "<f2",
        "S4",
        "(3,)<u2",
        [("a", "<u2"), ("b", ">u4")],
        np.dtype([("a", "u1"), ("b", "<u4")], align=True),
        np.dtype([]),
        Le16,
        Be64,
    ],
)
def test_byte_valued_accepts(dtype):
    dt = byte_valued(dtype)
    assert isinstance(dt, np.dtype)
    assert dt == np.dtype(dtype)


@pytest.mark.parametrize(
    "dtype",
    [
        object,
        "O",
        np.dtype(object),
        list,  # numpy reads an arbitrary Python class as object
        [("a", "O")],
        [("a", "<u4"), ("b", "O")],
        [("a", "<u4"), ("inner", [("c", "<u2"), ("d", "O")])],  # nested object field
        "(2,)O",
        [("a", "<u4"), ("b", "O", (2,))],
    ],
)
def test_byte_valued_rejects_object_dtypes(dtype):
    with pytest.raises(ByteValuedError) as info:
        byte_valued(dtype)
    assert info.value.what.hasobject
    assert "object" in info.value.reason
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, GuestMemoryError)


def test_byte_valued_rejects_none():
    # np.dtype(None) is float64: refuse rather than guess
    with pytest.raises(ByteValuedError) as info:
        byte_valued(None)
    assert info.value.what is None


@pytest.mark.parametrize("dtype", [3.5, 42, "nonsense", "u3", object()])
def test_byte_valued_rejects_non_dtypes(dtype):
    with pytest.raises(ByteValuedError) as info:
        byte_valued(dtype)
    assert info.value.what is dtype
    assert "dtype" in info.value.reason


@pytest.mark.parametrize("dtype", ["S", "U", np.bytes_, np.str_])
def test_byte_valued_rejects_unsized_flexible(dtype):
    with pytest.raises(ByteValuedError) as info:
        byte_valued(dtype)
    assert "size" in info.value.reason


# -- codec -------------------------------------------------------------------------------


def test_codec_cached_and_sized():
    c = codec("<u4")
    assert isinstance(c, Codec)
    assert codec("<u4") is c
    assert c.dtype == np.dtype("<u4")
    assert c.size == 4
    dt = np.dtype([("a", "<u2"), ("b", ">u4")])
    assert codec(dt) is codec(dt)
    assert codec(dt).size == 6


def test_codec_unhashable_dtype_like():
    c = codec([("a", "<u2"), ("b", ">u4")])
    assert c.size == 6
    assert c.dtype == np.dtype([("a", "<u2"), ("b", ">u4")])


@pytest.mark.parametrize("bad", [object, None, "nonsense", [("a", "O")]])
def test_codec_rejects(bad):
    with pytest.raises(ByteValuedError):
        codec(bad)


@pytest.mark.parametrize(
    "dtype",
    [
        *(f"{HOST}{k}{n}" for k in "iu" for n in (1, 2, 4, 8)),
        *(f"={k}{n}" for k in "iu" for n in (1, 2, 4, 8)),
        np.uint8,
        np.int16,
        np.uint32,
        np.int64,
        np.uintp,
        f"{SWAPPED}u1",  # one byte has no byte order
        f"{SWAPPED}i1",
    ],
)
def test_codec_atomic_host_order_ints(dtype):
    assert codec(dtype).atomic is True


@pytest.mark.parametrize(
    "dtype",
    [
        *(f"{SWAPPED}{k}{n}" for k in "iu" for n in (2, 4, 8)),
        f"{HOST}f4",
        f"{HOST}f8",
        f"{HOST}f2",
        f"{HOST}c8",
        "?",
        "S4",
        "S8",
        f"(1,){HOST}u4",
        [("a", f"{HOST}u4")],
        [("a", f"{HOST}u8")],
        np.dtype([]),
        f"{HOST}M8[s]",
    ],
)
def test_codec_not_atomic(dtype):
    assert codec(dtype).atomic is False


def test_endian_types_atomic_only_in_host_order():
    host_types = (Le16, Le32, Le64, LeSize) if HOST == "<" else (Be16, Be32, Be64, BeSize)
    other = (Be16, Be32, Be64, BeSize) if HOST == "<" else (Le16, Le32, Le64, LeSize)
    assert all(codec(d).atomic for d in host_types)
    assert not any(codec(d).atomic for d in other)


# -- scalars: integers, floats, complex, bytes ----------------------------------------------


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_integer_limits(dtype):
    lo, hi = int_range(dtype)
    n = np.dtype(dtype).itemsize
    order = "little" if dtype[0] == "<" else "big"
    signed = dtype[1] == "i"
    for v in (lo, hi, 0, 1):
        data = as_bytes(v, dtype)
        assert data == v.to_bytes(n, order, signed=signed)
        assert from_bytes(data, dtype) == v


@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_integer_out_of_range(dtype):
    lo, hi = int_range(dtype)
    for v in (lo - 1, hi + 1, hi + 2**70):
        with pytest.raises(ByteValuedError) as info:
            as_bytes(v, dtype)
        assert info.value.what == v


@pytest.mark.parametrize("dtype", INT_DTYPES)
@given(data=st.data())
def test_integer_round_trip(dtype, data):
    lo, hi = int_range(dtype)
    v = data.draw(st.integers(lo, hi))
    n = np.dtype(dtype).itemsize
    order = "little" if dtype[0] == "<" else "big"
    raw = as_bytes(v, dtype)
    assert raw == v.to_bytes(n, order, signed=dtype[1] == "i")
    back = from_bytes(raw, dtype)
    assert back == v
    assert type(back) is int


def test_numpy_scalars_use_their_dtype():
    assert as_bytes(np.array(5, dtype=">u4")) == b"\x00\x00\x00\x05"
    assert as_bytes(np.array(5, dtype="<u4")) == b"\x05\x00\x00\x00"
    assert as_bytes(np.array(5, dtype="<u2")[()]) == b"\x05\x00"
    # an explicit dtype wins over the value's own
    assert as_bytes(np.uint8(5), Be32) == b"\x00\x00\x00\x05"


def test_plain_value_needs_a_dtype():
    with pytest.raises(ByteValuedError) as info:
        as_bytes(5)
    assert info.value.what == 5
    assert "dtype" in info.value.reason


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        ([1, 2], "<u4"),
        (np.zeros(2, dtype="<u4"), None),
        ([1, 2], "(3,)<u2"),
        ([1, 2, 3, 4], "(3,)<u2"),
        ((1, 2, 3), [("a", "<u2"), ("b", ">u4")]),
        ((1,), [("a", "<u2"), ("b", ">u4")]),
        ("abc", "<u4"),
        (None, "<u4"),
        ((1, 2**40), [("a", "<u2"), ("b", ">u4")]),  # a field that does not fit
    ],
)
def test_values_that_do_not_fit(value, dtype):
    with pytest.raises(ByteValuedError) as info:
        as_bytes(value, dtype)
    assert info.value.what is value


@pytest.mark.parametrize("dtype", ["<f2", ">f2", "<f4", ">f4", "<f8", ">f8"])
def test_float_known_bytes(dtype):
    n = np.dtype(dtype).itemsize
    one = {2: b"\x3c\x00", 4: b"\x3f\x80\x00\x00", 8: b"\x3f\xf0" + bytes(6)}[n]
    expected = one if dtype[0] == ">" else one[::-1]
    assert as_bytes(1.0, dtype) == expected
    back = from_bytes(expected, dtype)
    assert back == 1.0
    assert type(back) is float


@given(st.floats(width=64, allow_nan=False))
def test_float64_round_trip(v):
    for dtype in ("<f8", ">f8"):
        back = from_bytes(as_bytes(v, dtype), dtype)
        assert back == v
        assert math.copysign(1.0, back) == math.copysign(1.0, v)


@given(st.floats(width=32, allow_nan=False))
def test_float32_round_trip(v):
    for dtype in ("<f4", ">f4"):
        assert from_bytes(as_bytes(v, dtype), dtype) == v


@given(st.floats(width=16, allow_nan=False))
def test_float16_round_trip(v):
    assert from_bytes(as_bytes(v, "<f2"), "<f2") == v


def test_float_nan_round_trip():
    assert math.isnan(from_bytes(as_bytes(float("nan"), "<f8"), "<f8"))
    assert math.isnan(from_bytes(as_bytes(float("nan"), ">f4"), ">f4"))


@given(
    st.complex_numbers(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from(["<c8", ">c8"]),
)
def test_complex64_round_trip(v, dtype):
    raw = as_bytes(v, dtype)
    assert len(raw) == 8
    assert from_bytes(raw, dtype) == v


@given(st.complex_numbers(allow_nan=False, width=128), st.sampled_from(["<c16", ">c16"]))
def test_complex128_round_trip(v, dtype):
    assert from_bytes(as_bytes(v, dtype), dtype) == v


def test_complex_layout():
    # real part first, then imaginary, each in the dtype's byte order
    assert as_bytes(1 + 2j, "<c8") == as_bytes(1.0, "<f4") + as_bytes(2.0, "<f4")
    assert as_bytes(1 + 2j, ">c16") == as_bytes(1.0, ">f8") + as_bytes(2.0, ">f8")


def test_bytes_dtype():
    assert as_bytes(b"ab", "S4") == b"ab\x00\x00"
    assert as_bytes(b"abcd", "S4") == b"abcd"
    assert from_bytes(b"abcd", "S4") == b"abcd"
    assert from_bytes(b"ab\x00\x00", "S4") == b"ab"  # numpy strips trailing NULs
    assert codec("S4").size == 4


@given(st.binary(min_size=0, max_size=8).filter(lambda b: not b.endswith(b"\x00")))
def test_bytes_round_trip(v):
    assert from_bytes(as_bytes(v, "S8"), "S8") == v


# -- sub-arrays and structured dtypes --------------------------------------------------------


def test_subarray_dtype():
    dt = "(3,)<u2"
    assert as_bytes([1, 2, 3], dt) == b"\x01\x00\x02\x00\x03\x00"
    assert as_bytes(np.array([1, 2, 3], dtype="<u2"), dt) == b"\x01\x00\x02\x00\x03\x00"
    assert as_bytes([1, 2, 3], "(3,)>u2") == b"\x00\x01\x00\x02\x00\x03"
    back = from_bytes(b"\x01\x00\x02\x00\x03\x00", dt)
    assert isinstance(back, np.ndarray)
    assert back.shape == (3,)
    assert back.tolist() == [1, 2, 3]
    assert from_bytes(b"\x00\x01\x00\x02\x00\x03", "(3,)>u2").tolist() == [1, 2, 3]


def test_subarray_2d():
    dt = "(2,2)<u2"
    assert as_bytes([[1, 2], [3, 4]], dt) == b"\x01\x00\x02\x00\x03\x00\x04\x00"
    assert from_bytes(b"\x01\x00\x02\x00\x03\x00\x04\x00", dt).tolist() == [[1, 2], [3, 4]]


@given(st.lists(st.integers(0, 2**16 - 1), min_size=3, max_size=3))
def test_subarray_round_trip(v):
    for dt in ("(3,)<u2", "(3,)>u2"):
        raw = as_bytes(v, dt)
        assert len(raw) == 6
        assert from_bytes(raw, dt).tolist() == v


def test_subarray_element_out_of_range():
    with pytest.raises(ByteValuedError):
        as_bytes([1, 2, 2**16], "(3,)<u2")


def test_structured_packed_mixed_orders():
    dt = np.dtype([("a", "<u2"), ("b", ">u4")])
    assert dt.itemsize == 6
    raw = as_bytes((0x0102, 0x03040506), dt)
    assert raw == b"\x02\x01\x03\x04\x05\x06"
    rec = from_bytes(raw, dt)
    assert isinstance(rec, np.void)
    assert rec.dtype == dt
    assert int(rec["a"]) == 0x0102
    assert int(rec["b"]) == 0x03040506
    # a numpy record carries its own dtype
    assert as_bytes(rec) == raw


def test_structured_padded_aligned():
    dt = np.dtype([("a", "u1"), ("b", "<u4")], align=True)
    assert dt.itemsize == 8
    assert dt.fields["b"][1] == 4
    raw = as_bytes((0xAA, 0x01020304), dt)
    assert raw == b"\xaa\x00\x00\x00\x04\x03\x02\x01"
    # whatever the padding holds, the fields decode from their offsets
    rec = from_bytes(b"\xaa\xff\xff\xff\x04\x03\x02\x01", dt)
    assert (int(rec["a"]), int(rec["b"])) == (0xAA, 0x01020304)


@given(st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 255))
def test_structured_padding_is_zeroed(a, b, c):
    # numpy builds records in uninitialised memory: padding must not carry stale heap bytes
    inner = np.dtype([("a", "u1"), ("b", "<u4")], align=True)
    outer = np.dtype([("h", inner), ("c", "u1")], align=True)
    assert outer.itemsize == 12
    raw = as_bytes(((a, b), c), outer)
    assert raw == bytes([a, 0, 0, 0]) + b.to_bytes(4, "little") + bytes([c, 0, 0, 0])
    records = np.dtype((inner, (2,)))
    raw = as_bytes([(a, b), (c, b)], records)
    assert raw == (
        bytes([a, 0, 0, 0])
        + b.to_bytes(4, "little")
        + bytes([c, 0, 0, 0])
        + b.to_bytes(4, "little")
    )


def test_structured_vm_memory_example():
    # vm-memory 3.10: S{a: u32, b: u32} from [0,0,0,0,1,1,1,1] -> a = 0, b = 0x0101_0101
    dt = np.dtype([("a", Le32), ("b", Le32)])
    rec = from_bytes(bytes([0, 0, 0, 0, 1, 1, 1, 1]), dt)
    assert (int(rec["a"]), int(rec["b"])) == (0, 0x01010101)


def test_structured_nested_with_subarray_field():
    dt = np.dtype([("hdr", [("magic", Be32), ("n", Le16)]), ("data", "u1", (4,))])
    assert dt.itemsize == 10
    raw = as_bytes(((0xFEEDFACE, 3), [1, 2, 3, 4]), dt)
    assert raw == b"\xfe\xed\xfa\xce\x03\x00\x01\x02\x03\x04"
    rec = from_bytes(raw, dt)
    assert int(rec["hdr"]["magic"]) == 0xFEEDFACE
    assert int(rec["hdr"]["n"]) == 3
    assert rec["data"].tolist() == [1, 2, 3, 4]


MIXED = np.dtype([("a", "<u2"), ("b", ">i4"), ("c", "<f4"), ("d", ">u8"), ("e", "i1")])


@given(
    st.tuples(
        st.integers(0, 2**16 - 1),
        st.integers(-(2**31), 2**31 - 1),
        st.floats(width=32, allow_nan=False),
        st.integers(0, 2**64 - 1),
        st.integers(-128, 127),
    )
)
def test_structured_round_trip(v):
    raw = as_bytes(v, MIXED)
    assert len(raw) == MIXED.itemsize == 19
    # the oracle: each field's bytes in its own byte order
    assert raw[0:2] == v[0].to_bytes(2, "little")
    assert raw[2:6] == v[1].to_bytes(4, "big", signed=True)
    assert raw[10:18] == v[3].to_bytes(8, "big")
    assert raw[18:19] == v[4].to_bytes(1, "little", signed=True)
    rec = from_bytes(raw, MIXED)
    assert rec.item() == v
    assert as_bytes(rec) == raw


def test_zero_size_structured_dtype():
    dt = np.dtype([])
    assert byte_valued(dt) == dt
    assert codec(dt).size == 0
    assert codec(dt).atomic is False
    assert as_bytes((), dt) == b""
    rec = from_bytes(b"", dt)
    assert isinstance(rec, np.void)
    assert rec.dtype == dt
    with pytest.raises(ValueError, match="expected 0 bytes"):
        from_bytes(b"x", dt)


# -- from_bytes input checks -----------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"])
def test_from_bytes_wrong_length(data):
    with pytest.raises(ValueError, match="expected 4 bytes") as info:
        from_bytes(data, Le32)
    # a length error is a plain ValueError, not a dtype problem
    assert not isinstance(info.value, ByteValuedError)


@pytest.mark.parametrize(
    "data",
    [
        b"\x04\x03\x02\x01",
        bytearray(b"\x04\x03\x02\x01"),
        memoryview(b"\x04\x03\x02\x01"),
        np.array([4, 3, 2, 1], dtype=np.uint8),
        np.array([0x01020304], dtype="<u4"),
        memoryview(b"\x04\x03\x02\x01").cast("I"),
    ],
)
def test_from_bytes_accepts_buffers(data):
    assert from_bytes(data, Le32) == 0x01020304


@pytest.mark.parametrize("bad", [object, None, [("a", "O")], "nonsense"])
def test_from_bytes_rejects_bad_dtypes(bad):
    with pytest.raises(ByteValuedError):
        from_bytes(b"\x00" * 8, bad)


def test_from_bytes_copies():
    buf = bytearray(b"\x01\x00\x02\x00\x03\x00")
    rec = from_bytes(buf, "(3,)<u2")
    buf[:] = bytes(6)
    assert rec.tolist() == [1, 2, 3]
    sbuf = bytearray(b"\x02\x01\x03\x04\x05\x06")
    srec = from_bytes(sbuf, [("a", "<u2"), ("b", ">u4")])
    sbuf[:] = bytes(6)
    assert int(srec["a"]) == 0x0102


# -- review fix: structured dtypes are converted losslessly, leaf field by leaf field --------

PAIR = np.dtype([("a", "u1"), ("b", "<u4")])
NESTED = np.dtype(
    [("hdr", [("magic", ">u4"), ("ver", "<u2")]), ("pts", "<u2", (3,)), ("tag", "S4"), ("f", "<f4")]
)
GOOD = ((1, 2), [1, 2, 3], b"ab", 1.5)


@pytest.mark.parametrize(
    ("value", "dtype", "field"),
    [
        ((1.7, 2), PAIR, "'a'"),
        ((300, 2), PAIR, "'a'"),
        ((-1, 2), PAIR, "'a'"),
        ((1, 2**40), PAIR, "'b'"),
        ((1, 2**70), PAIR, "'b'"),
        ((1, "x"), PAIR, "'b'"),
        (np.array((300, 2**40), [("a", "<u4"), ("b", "<u8")]), PAIR, "'a'"),
        (np.void((1, 2**40), [("x", "<u8"), ("y", "<u8")]), PAIR, "'b'"),
        (np.array((1, 2.5), [("a", "O"), ("b", "O")]), PAIR, "'b'"),
        (np.float64(1.5), PAIR, "'a'"),  # a plain source fills every field
        (((1, 2.5), [1, 2, 3], b"ab", 1.5), NESTED, "'hdr.ver'"),
        (((2**32, 2), [1, 2, 3], b"ab", 1.5), NESTED, "'hdr.magic'"),
        (((1, 2), [1, 2, 70000], b"ab", 1.5), NESTED, "'pts'"),
        (((1, 2), [1, 2.5, 3], b"ab", 1.5), NESTED, "'pts'"),
        (((1, 2), [1, 2, 3], b"abcdef", 1.5), NESTED, "'tag'"),
        (((1, 2), [1, 2, 3], b"ab", 1e300), NESTED, "'f'"),
        (((1, 2), [1, 2, 3], b"ab", 1j), NESTED, "'f'"),
    ],
)
def test_structured_values_checked_per_field(value, dtype, field):
    with pytest.raises(ByteValuedError) as info:
        as_bytes(value, dtype)
    assert f"field {field}" in str(info.value)
    back = pickle.loads(pickle.dumps(info.value))
    assert str(back) == str(info.value)


def test_structured_good_values_still_convert():
    assert as_bytes((1, 2), PAIR) == b"\x01\x02\x00\x00\x00"
    # a structured source is matched by position, whatever its field names and types
    src = np.array([(7, 9)], [("x", "<u8"), ("y", "i1")])
    assert codec(PAIR).array(src, (1,)).tolist() == [(7, 9)]
    rec = codec(NESTED).array(GOOD)
    assert codec(NESTED).array(rec[()]).tobytes() == rec.tobytes()
    assert rec["pts"].tolist() == [1, 2, 3] and rec["hdr"]["magic"] == 1
    # a scalar fills every leaf, sub-arrays included; numpy scalars are values too
    filled = codec(NESTED).array(((1, 2), 7, b"x", np.float32(2)))
    assert filled["pts"].tolist() == [7, 7, 7]
    padded = np.dtype([("a", "u1"), ("b", "<u4")], align=True)
    assert as_bytes((1, 2), padded) == b"\x01\x00\x00\x00\x02\x00\x00\x00"


def test_structured_batch_check_is_vectorised():
    n = 300_000
    src = np.zeros(n, [("a", "<u4"), ("b", "<u8")])
    src["a"] = np.arange(n) % 200
    assert codec(PAIR).array(src, (n,))["a"][-1] == (n - 1) % 200
    src["b"][n - 2] = 2**40
    with pytest.raises(ByteValuedError) as info:
        codec(PAIR).array(src, (n,))
    assert f"element {n - 2}" in str(info.value) and "'b'" in str(info.value)


@pytest.mark.parametrize(("dtype", "shape"), [("V0", ()), ("(0,)<u4", (0,)), ("(2,0)<u2", (2, 0))])
def test_zero_size_values_decode(dtype, shape):
    value = from_bytes(b"", dtype)
    assert np.shape(value) == shape
    assert as_bytes(value, dtype) == b""
