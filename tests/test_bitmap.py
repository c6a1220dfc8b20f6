"""AtomicBitmap: vm-memory's cases, a model of its bits, both marking lanes, threads."""

from __future__ import annotations

import copy
import pickle
import threading

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npguest import AtomicBitmap, BitmapSlice, GuestMemoryMmap, NoBitmap
from npguest.errors import BitmapError

U64_MAX = 2**64 - 1


def bits_of(words: np.ndarray) -> set[int]:
    """Page indices set in packed words (bit i % 64 of word i // 64 = page i)."""
    return {w * 64 + b for w, x in enumerate(words.tolist()) for b in range(64) if x >> b & 1}


# -- vm-memory's cases (reference 2.7 and 3.9) -------------------------------------------


def test_sizes_round_up_to_pages():
    b = AtomicBitmap(1025, 128)
    assert (b.len(), len(b), b.byte_size(), b.page_size()) == (9, 9, 1025, 128)
    assert AtomicBitmap(4097, 4096).len() == 2
    assert AtomicBitmap(4097, 4096).get_and_reset().shape == (1,)
    assert AtomicBitmap(4096 * 64 + 1).get_and_reset().shape == (2,)


def test_set_addr_range_marks_every_page_touched():
    b = AtomicBitmap(1025, 128)
    b.set_addr_range(128, 129)  # bytes 128..=256: pages 1 and 2
    assert b.get_and_reset().tolist() == [0b110]
    assert b.get_and_reset().tolist() == [0]


def test_marks_past_the_end_are_ignored():
    b = AtomicBitmap(1024, 1)
    b.set_addr_range(768, 512)
    assert b.count() == 256 and b.dirty_ranges().tolist() == [[768, 256]]
    b = AtomicBitmap(0x4000)
    b.set_addr_range(U64_MAX - 1, 10)  # no overflow, no error
    b.set_addr_range(0x4000, 1)
    b.set_bit(4)
    b.reset_bit(99)
    assert b.count() == 0 and not b.is_bit_set(4) and not b.is_addr_set(0x4000)


def test_words_and_pages_crossing_words():
    b = AtomicBitmap(65 * 4096)
    b.set_addr_range(64 * 4096, 1)
    b.set_addr_range(4095, 2)
    assert b.get_and_reset().tolist() == [0b11, 0b1]
    b.set_addr_range(60 * 4096, 8 * 4096)  # pages 60..64: across the word boundary
    assert b.dirty_pages().tolist() == [60, 61, 62, 63, 64]
    b.reset_addr_range(62 * 4096 + 5, 4096)  # pages 62 and 63
    assert b.dirty_pages().tolist() == [60, 61, 64]
    assert b.dirty_ranges().tolist() == [[60 * 4096, 2 * 4096], [64 * 4096, 4096]]


def test_zero_sized_and_zero_length():
    b = AtomicBitmap(0, 4096)
    b.set_addr_range(0, 100)
    assert (b.len(), b.count()) == (0, 0)
    assert b.get_and_reset().shape == (0,) and b.dirty_ranges().shape == (0, 2)
    b = AtomicBitmap(8192)
    b.set_addr_range(0, 0)
    b.reset_addr_range(0, 0)
    assert b.count() == 0


def test_enlarge_keeps_bits_and_adds_clear_ones():
    b = AtomicBitmap(100, 4096)
    b.set_addr_range(5, 1)
    b.enlarge(4096)
    assert (b.byte_size(), b.len(), b.dirty_pages().tolist()) == (4196, 2, [0])
    b.enlarge(0)
    with pytest.raises(BitmapError):
        b.enlarge(-1)


def test_slices_wrap_like_vm_memory():
    b = AtomicBitmap(0x2000, 4096)
    b.set_addr_range(4095, 1)
    s = b.slice_at(4096)
    assert isinstance(s, BitmapSlice)
    assert s.dirty_at(U64_MAX)  # 4096 + (2**64 - 1) wraps to byte 4095
    s.slice_at(1).mark_dirty(0x1000 - 1, 1)  # byte 0x2000: past the end, ignored
    s.mark_dirty(0, 1)
    assert b.dirty_pages().tolist() == [0, 1]


@pytest.mark.parametrize("page_size", [1, 2, 512, 4096, 2 << 20])
def test_page_sizes(page_size):
    size = 4 * (2 << 20)
    b = AtomicBitmap(size, page_size)
    assert b.len() == size // page_size
    b.set_addr_range(page_size, 1)
    b.set_addr_range(size - 1, 1)
    assert b.dirty_pages().tolist() == [1, size // page_size - 1]
    assert b.dirty_ranges().tolist() == [[page_size, page_size], [size - page_size, page_size]]


@pytest.mark.parametrize("page_size", [0, 3, 4095, -4096])
def test_bad_page_size(page_size):
    with pytest.raises(BitmapError) as ei:
        AtomicBitmap(4096, page_size)
    assert ei.value.field == "page_size" and ei.value.value == page_size
    assert isinstance(ei.value, ValueError)


def test_bad_arguments():
    with pytest.raises(BitmapError, match="byte_size"):
        AtomicBitmap(-1)
    with pytest.raises(TypeError):
        AtomicBitmap(4096.0)
    with pytest.raises(TypeError):
        AtomicBitmap(4096, True)
    b = AtomicBitmap(8192)
    with pytest.raises(BitmapError, match="offset -1"):
        b.set_addr_range(-1, 4)
    with pytest.raises(BitmapError, match="length -4"):
        b.reset_addr_range(0, -4)
    with pytest.raises(BitmapError):
        b.mark_dirty_many([0, 1], [1])
    with pytest.raises(BitmapError):
        b.mark_dirty_many([0, -1], [1, 1])
    with pytest.raises(BitmapError, match="words"):
        b.ranges_of(np.zeros(2, dtype=np.uint64))
    with pytest.raises(BitmapError, match="words"):
        b.ranges_of([0])
    assert b.count() == 0
    assert AtomicBitmap(16).page_size() == 4096  # numpy ints are fine too
    assert AtomicBitmap(np.int64(8192), np.uint32(4096)).len() == 2


def test_copy_is_an_independent_snapshot():
    b = AtomicBitmap(8 * 4096)
    b.set_addr_range(0, 1)  # byte lane
    b.set_addr_range(4096, 8192)  # kernel lane
    c = copy.copy(b)
    b.reset()
    assert c.dirty_pages().tolist() == [0, 1, 2] and b.count() == 0
    c.set_bit(7)
    assert not b.is_bit_set(7)
    assert "dirty=4/8" in repr(c)


def test_no_bitmap_tracks_nothing():
    n = NoBitmap(4096, 4096)
    n.mark_dirty(0, 4096)
    assert not n.dirty_at(0) and n.slice_at(5) is n
    mem = GuestMemoryMmap.from_ranges([(0, 0x2000)], bitmap=NoBitmap)
    mem.write_obj(1, 0, "<u8")
    assert mem.dirty_ranges().shape == (0, 2)


def test_pinned_bitmap_cannot_grow():
    mem = GuestMemoryMmap.from_ranges([(0, 0x2000)], bitmap=AtomicBitmap)
    bitmap = next(mem.iter()).get_mmap().bitmap()
    with pytest.raises(BitmapError, match="write through"):
        bitmap.enlarge(4096)


def test_byte_lane_packs_every_pattern():
    """Scalar marks land in the page byte map; every 8-page pattern packs back to bits."""
    b = AtomicBitmap(256 * 8 * 4096)
    for pattern in range(256):
        for k in range(8):
            if pattern >> k & 1:
                b.set_bit(pattern * 8 + k)
    words = b.snapshot()
    taken = b.get_and_reset()
    assert np.array_equal(words, taken)
    for pattern in range(256):
        assert (int(taken[pattern // 8]) >> (pattern % 8 * 8)) & 0xFF == pattern
    assert b.count() == 0


# -- a model of the bits --------------------------------------------------------------------

PAGE_SIZES = st.sampled_from([1, 64, 4096])


def ops(npages, page):
    span = st.integers(0, npages * page + 2 * page)
    length = st.integers(0, 3 * 64 * page)
    return st.lists(
        st.one_of(
            st.tuples(st.just("set"), span, length),
            st.tuples(st.just("reset"), span, length),
            st.tuples(st.just("set_bit"), st.integers(0, npages + 3)),
            st.tuples(st.just("reset_bit"), st.integers(0, npages + 3)),
            st.tuples(st.just("many"), st.lists(st.tuples(span, length), max_size=5)),
            st.tuples(st.just("take")),
            st.tuples(st.just("reset_all")),
        ),
        max_size=25,
    )


WORDS = st.lists(
    st.sampled_from([0, 2**64 - 1, 0x5555555555555555, 1, 1 << 63]) | st.integers(0, 2**64 - 1),
    max_size=12,
)


@given(words=WORDS, tail=st.integers(0, 4095), shift=st.sampled_from([0, 3, 12, 21]))
def test_ranges_decode_any_words(words, tail, shift):
    """The run decoder against a bit-by-bit model: dense, alternating, full and edge words."""
    page = 1 << shift
    nbits = 64 * len(words)
    byte_size = max(nbits * page - tail % page, 0) if words else 0
    b = AtomicBitmap(byte_size, page)
    bits = [i for i in range(b.len()) if words[i // 64] >> (i % 64) & 1]
    want, run = [], None
    for i in bits:
        if run and run[1] == i:
            run[1] = i + 1
        else:
            run = [i, i + 1]
            want.append(run)
    want = [[s * page, min(e * page, byte_size) - s * page] for s, e in want]
    arr = np.array(words, dtype=np.uint64)[: -(-b.len() // 64)]
    assert b.ranges_of(arr).tolist() == want
    for decode in decoders():
        assert decode(arr, shift, byte_size).tolist() == want


def decoders():
    """Every run decoder this host can run, the vector one forced on sparse words too."""
    from npguest import _kernels as k

    yield k.bitmap_ranges
    if k.VECTOR_EDGES:
        yield lambda words, shift, byte_size: k.bitmap_ranges_vector(words, shift, byte_size, 0)


def model_ranges(words: np.ndarray, shift: int, byte_size: int) -> np.ndarray:
    """``(start, length)`` byte ranges of the runs of set bits, by numpy (no bit tricks)."""
    bits = np.unpackbits(words.view(np.uint8), bitorder="little").astype(np.int8)
    edges = np.flatnonzero(np.diff(bits, prepend=0, append=0))
    starts, ends = edges[0::2].astype(np.uint64), edges[1::2].astype(np.uint64)
    lengths = np.minimum(ends << np.uint64(shift), np.uint64(byte_size)) - (
        starts << np.uint64(shift)
    )
    return np.stack([starts << np.uint64(shift), lengths], axis=1)


@pytest.mark.parametrize("density", [0.001, 0.01, 0.2, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("shift", [0, 12, 21])
def test_decoders_agree_on_large_random_bitmaps(density, shift):
    """4,096 words at each density: every decoder against numpy's diff of the bits."""
    rng = np.random.default_rng(int(density * 1000) + shift)
    bits = rng.random(4096 * 64) < density
    bits[-1] = density > 0.5  # a run may reach the last bit
    words = np.packbits(bits, bitorder="little").view(np.uint64)
    byte_size = (len(bits) << shift) - (1 << shift) // 3
    want = model_ranges(words, shift, byte_size)
    for decode in decoders():
        np.testing.assert_array_equal(decode(words, shift, byte_size), want)


def test_vector_decoder_crowded_words():
    """Words with more edges than one vector step writes (alternating bits), between others."""
    from npguest import _kernels as k

    if not k.VECTOR_EDGES:
        pytest.skip("this host has no AVX512-VBMI2: the vector decoder is not used")
    alternating = 0x5555_5555_5555_5555
    for pattern in ([alternating] * 5, [U64_MAX, alternating, 0, alternating << 1, U64_MAX]):
        words = np.array(pattern, dtype=np.uint64)
        want = model_ranges(words, 12, len(pattern) * 64 * 4096)
        got = k.bitmap_ranges_vector(words, 12, len(pattern) * 64 * 4096, k.DENSE_EDGES)
        np.testing.assert_array_equal(got, want)


@given(data=st.data(), page=PAGE_SIZES, npages=st.integers(0, 300), tail=st.integers(0, 63))
def test_matches_a_set_model(data, page, npages, tail):
    byte_size = npages * page + (tail % page)
    b = AtomicBitmap(byte_size, page)
    n = b.len()
    model: set[int] = set()

    def pages(start, length):  # vm-memory clips bit indices, not bytes, to the bitmap
        if length == 0 or start // page >= n:
            return set()
        return set(range(start // page, min((start + length - 1) // page, n - 1) + 1))

    for op in data.draw(ops(max(n, 1), page)):
        kind = op[0]
        if kind == "set":
            b.set_addr_range(op[1], op[2])
            model |= pages(op[1], op[2])
        elif kind == "reset":
            b.reset_addr_range(op[1], op[2])
            model -= pages(op[1], op[2])
        elif kind == "set_bit":
            b.set_bit(op[1])
            model |= {op[1]} if op[1] < n else set()
        elif kind == "reset_bit":
            b.reset_bit(op[1])
            model.discard(op[1])
        elif kind == "many":
            offs = np.array([o for o, _ in op[1]], dtype=np.int64)
            lens = np.array([m for _, m in op[1]], dtype=np.int64)
            b.mark_dirty_many(offs, lens)
            for o, m in op[1]:
                model |= pages(o, m)
        elif kind == "take":
            assert bits_of(b.get_and_reset()) == model
            model = set()
        else:
            b.reset()
            model = set()
        assert b.count() == len(model)
    assert b.dirty_pages().tolist() == sorted(model)
    assert bits_of(b.snapshot()) == model
    assert all(b.is_bit_set(i) == (i in model) for i in range(n + 2))
    assert all(b.dirty_at(i * page) == (i in model) for i in range(n + 2))
    # ranges: runs of consecutive pages, in bytes, cut at byte_size
    want, run = [], None
    for p in sorted(model):
        if run and run[1] == p:
            run[1] = p + 1
        else:
            run = [p, p + 1]
            want.append(run)
    want = [[s * page, min(e * page, byte_size) - s * page] for s, e in want]
    assert b.dirty_ranges().tolist() == want
    assert b.get_and_reset_ranges().tolist() == want
    assert b.count() == 0


# -- threads --------------------------------------------------------------------------------

THREADS = 4


def _run(workers):
    threads = [threading.Thread(target=w) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)


def test_hammer_disjoint_bytes_sharing_words_loses_no_bit():
    """4 threads mark disjoint 1-byte pages (every word shared by all) with nogil kernels."""
    size = 1 << 20  # 1,048,576 one-byte pages, one write each
    mem = GuestMemoryMmap.from_ranges([(0, size)], bitmap=AtomicBitmap, page_size=1)
    rng = np.random.default_rng(11)

    def worker(t):
        addrs = np.arange(t, size, THREADS, dtype=np.uint64)
        rng_t = np.random.default_rng(t)
        rng_t.shuffle(addrs)

        def run():
            for chunk in np.array_split(addrs, 64):
                mem.write_objs(np.uint8(t + 1), chunk, "u1")

        return run

    _run([worker(t) for t in range(THREADS)])
    bitmap = next(mem.iter()).get_mmap().bitmap()
    assert bitmap.count() == size
    assert mem.dirty_ranges().tolist() == [[0, size]]
    assert np.array_equal(
        next(mem.iter()).as_array(), np.tile(np.arange(1, THREADS + 1, dtype=np.uint8), size // 4)
    )
    del rng


def test_hammer_mixed_lanes():
    """Kernel-lane ranges and scalar byte-lane marks from several threads at once."""
    pages = 1 << 14
    b = AtomicBitmap(pages * 64, 64)

    def ranges(t):
        def run():
            offs = np.arange(t, pages, THREADS, dtype=np.int64)[: pages // 8] * 64
            for _ in range(4):
                b.mark_dirty_many(offs, np.ones_like(offs))

        return run

    def scalars(t):
        def run():
            for p in range(pages // 2 + t, pages, THREADS):
                b.mark_dirty(p * 64 + 3, 1)

        return run

    _run([ranges(0), ranges(1), scalars(2), scalars(3)])
    want = {p for t in (0, 1) for p in range(t, pages, THREADS)[: pages // 8]}
    want |= {p for t in (2, 3) for p in range(pages // 2 + t, pages, THREADS)}
    assert set(b.dirty_pages().tolist()) == want


def test_reset_racing_writers_never_drops_a_write():
    """One thread takes the bitmap in a loop while others write: every written page is in
    some snapshot or still dirty at the end."""
    size = 64 << 20
    mem = GuestMemoryMmap.from_ranges([(0, size // 2), (size // 2, size // 2)], bitmap=AtomicBitmap)
    npages = size // 4096
    stop = threading.Event()
    snapshots = []
    written = [set() for _ in range(THREADS - 1)]

    def resetter():
        while not stop.is_set():
            snapshots.append(mem.get_and_reset_dirty())

    def writer(t):
        def run():
            rng = np.random.default_rng(100 + t)
            for i in range(40):
                pages = rng.choice(npages, 2000, replace=False).astype(np.uint64)
                if t == 0 and i % 2:  # the scalar byte lane
                    for p in pages[:200].tolist():
                        mem.write_obj(i, p * 4096 + 8, "<u8")
                    pages = pages[:200]
                else:  # the kernel lane
                    mem.write_objs(np.uint64(i), pages * np.uint64(4096) + np.uint64(16), "<u8")
                written[t].update(pages.tolist())

        return run

    threads = [threading.Thread(target=writer(t)) for t in range(THREADS - 1)]
    rt = threading.Thread(target=resetter)
    rt.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    stop.set()
    rt.join(timeout=120)
    snapshots.append(mem.get_and_reset_dirty())
    seen = set()
    for ranges in snapshots:
        for start, length in ranges.tolist():
            seen.update(range(start // 4096, (start + length) // 4096))
    assert len(snapshots) > 2
    assert set().union(*written) <= seen


def test_pickle_round_trip():
    """Bitmaps cross processes as size, page size and bits (never host pointers)."""
    b = AtomicBitmap(70 * 4096, 4096)
    b.set_addr_range(0, 1)
    b.set_addr_range(65 * 4096, 2 * 4096)
    c = pickle.loads(pickle.dumps(b))
    assert (c.byte_size(), c.page_size()) == (b.byte_size(), b.page_size())
    assert c.dirty_pages().tolist() == [0, 65, 66]
    c.reset()
    assert b.count() == 3


def test_review_edge_cases():
    b = AtomicBitmap()  # vm-memory's Default: tracks nothing
    assert (b.len(), b.page_size()) == (0, 4096)
    import mmap as _mmap

    assert AtomicBitmap.with_len(3 * _mmap.PAGESIZE).len() == 3
    with pytest.raises(BitmapError):
        AtomicBitmap(10, 2**64)
    b = AtomicBitmap(16 * 4096)
    # saturating ends and unsigned offsets, as set_addr_range
    b.mark_dirty_many(np.array([4096], dtype=np.int64), np.array([2**63 - 1], dtype=np.int64))
    assert b.count() == 15
    b.reset()
    b.mark_dirty_many(np.array([2**63, 2**64 - 1], dtype=np.uint64), np.array([1, 1], np.uint64))
    assert b.count() == 0
    b.set_addr_range(np.uint64(4096), np.int64(8192))  # mixed numpy ints
    assert b.dirty_pages().tolist() == [1, 2]
    with pytest.raises(TypeError):
        b.set_addr_range(1.5, 1)
    assert BitmapSlice(b, np.uint64(5)).offset == 5
    # stray bits past len() in user words are ignored
    assert AtomicBitmap(100, 64).ranges_of(np.array([0b101], dtype=np.uint64)).tolist() == [[0, 64]]


def test_vector_decoder_only_for_the_host_target(monkeypatch):
    """A portable numba target (``NUMBA_CPU_NAME=generic``) keeps the scalar decoder."""
    from numba.core import config

    from npguest import _kernels as k

    monkeypatch.setattr(config, "CPU_NAME", "generic")
    assert k._vector_edges() is False
