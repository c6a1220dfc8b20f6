"""Every numba kernel of npguest.

Rules (see DESIGN.md): plain C-contiguous arrays and ints in, plain values out; each
kernel is ``@njit(cache=True, nogil=True)`` with no eager signature; bounds were proven
by the Python caller before any kernel touches guest memory; a kernel never clamps or
skips.  One signedness per expression: addresses are ``uint64`` throughout, region
offsets and lengths ``int64``.

This module imports numba, so npguest imports it lazily, on the first kernel call.
"""

from __future__ import annotations

import llvmlite.ir as ir
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = [
    "DENSE_EDGES",
    "EDGE_SLOTS",
    "VECTOR_EDGES",
    "bitmap_clear",
    "bitmap_count",
    "bitmap_fold",
    "bitmap_mark_ranges",
    "bitmap_pages",
    "bitmap_ranges",
    "bitmap_ranges_vector",
    "bitmap_set",
    "bitmap_take",
    "copy_pairs",
    "copy_runs",
    "gather",
    "lane_take",
    "locate",
    "mark_objects",
    "scatter",
]


def _access_intrinsic(width):
    """Build intrinsics loading/storing a ``width``-byte unsigned int at a host address.

    The LLVM access carries ``align 1``, so any address is allowed; an address aligned
    to ``width`` gives one machine access, which no other thread can observe torn.
    """
    nbt = getattr(types, f"uint{8 * width}")

    @intrinsic
    def load(typingctx, address):
        def codegen(context, builder, signature, args):
            ptr = builder.inttoptr(args[0], ir.IntType(8 * width).as_pointer())
            return builder.load(ptr, align=1)

        return nbt(types.int64), codegen

    @intrinsic
    def store(typingctx, address, value):
        def codegen(context, builder, signature, args):
            ptr = builder.inttoptr(args[0], ir.IntType(8 * width).as_pointer())
            val = context.cast(builder, args[1], signature.args[1], nbt)
            builder.store(val, ptr, align=1)
            return context.get_dummy_value()

        return types.void(types.int64, value), codegen

    return load, store


_load8, _store8 = _access_intrinsic(1)
_load16, _store16 = _access_intrinsic(2)
_load32, _store32 = _access_intrinsic(4)
_load64, _store64 = _access_intrinsic(8)


def _atomic_intrinsic(op):
    """Build an intrinsic ``old = atomicrmw <op> (uint64*)address, value`` (seq_cst).

    numba has no CPU atomics of its own; this emits LLVM's ``atomicrmw`` directly (a
    ``lock or``/``lock and``/``xchg`` on x86), so no other thread's update of the same
    word can be lost.
    """

    @intrinsic
    def rmw(typingctx, address, value):
        def codegen(context, builder, signature, args):
            ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
            val = context.cast(builder, args[1], signature.args[1], types.uint64)
            return builder.atomic_rmw(op, ptr, val, "seq_cst")

        return types.uint64(types.int64, value), codegen

    return rmw


_atomic_or = _atomic_intrinsic("or")
_atomic_and = _atomic_intrinsic("and")
_atomic_xchg = _atomic_intrinsic("xchg")


@intrinsic
def _atomic_load(typingctx, address):
    """Load 8 bytes atomically (``monotonic``): never torn, never cached by LLVM."""

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], ir.IntType(64).as_pointer())
        return builder.load_atomic(ptr, "monotonic", 8)

    return types.uint64(types.int64), codegen


def _bit_intrinsic(name):
    """Build an intrinsic ``int64 <name>(uint64)``: LLVM's ``ctpop``, ``cttz`` or ``ctlz``."""

    @intrinsic
    def count(typingctx, value):
        def codegen(context, builder, signature, args):
            if name == "ctpop":
                return builder.ctpop(args[0])
            zero_is_poison = ir.Constant(ir.IntType(1), 0)  # 64 for a zero word
            if name == "cttz":
                return builder.cttz(args[0], zero_is_poison)
            return builder.ctlz(args[0], zero_is_poison)

        return types.int64(types.uint64), codegen

    return count


@intrinsic
def _memcpy(typingctx, dst, src, size):
    """``memcpy(dst, src, size)`` between host addresses (LLVM's intrinsic: vector moves)."""

    def codegen(context, builder, signature, args):
        i8p = ir.IntType(8).as_pointer()
        d, s = builder.inttoptr(args[0], i8p), builder.inttoptr(args[1], i8p)
        cgutils.raw_memcpy(builder, d, s, args[2], 1)
        return context.get_dummy_value()

    return types.void(types.int64, types.int64, types.int64), codegen


def _vector(builder, vector_type, values):
    """Return a ``vector_type`` constant from a list, or ``values`` broadcast to every lane."""
    if isinstance(values, list):
        return ir.Constant(vector_type, values)
    lanes, i32 = vector_type.count, ir.IntType(32)
    undef = ir.Constant(vector_type, ir.Undefined)
    one = builder.insert_element(undef, values, ir.Constant(i32, 0))
    return builder.shuffle_vector(one, undef, ir.Constant(ir.VectorType(i32, lanes), [0] * lanes))


@intrinsic
def _nonzero_bytes(typingctx, address):
    """Bit ``b`` set for each nonzero byte ``b`` of the 64 bytes at host address ``address``.

    Plain LLVM vector IR (a compare and a bitcast of ``<64 x i1>``): one ``vptestmb`` with
    AVX-512, a few ``pmovmskb`` on any other x86-64.
    """

    def codegen(context, builder, signature, args):
        v64b = ir.VectorType(ir.IntType(8), 64)
        data = builder.load(builder.inttoptr(args[0], v64b.as_pointer()), align=1)
        nonzero = builder.icmp_unsigned("!=", data, _vector(builder, v64b, [0] * 64))
        return builder.bitcast(nonzero, ir.IntType(64))

    return types.uint64(types.int64), codegen


@intrinsic
def _clear_bytes(typingctx, address):
    """Store 64 zero bytes at host address ``address`` (one vector store)."""

    def codegen(context, builder, signature, args):
        v64b = ir.VectorType(ir.IntType(8), 64)
        zeros = _vector(builder, v64b, [0] * 64)
        builder.store(zeros, builder.inttoptr(args[0], v64b.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.void(types.int64), codegen


def _vector_edges() -> bool:
    """Whether numba compiles for this host and the host has AVX512-BW and -VBMI2.

    A ``NUMBA_CPU_NAME`` other than ``host`` (e.g. ``generic``, for a portable cache)
    keeps the scalar decoders: the vector one would not compile for that target.
    """
    from llvmlite import binding
    from numba.core import config

    if config.CPU_NAME not in (None, "host"):
        return False
    features = binding.get_host_cpu_features()
    return all(features.get(name, False) for name in ("avx512f", "avx512bw", "avx512vbmi2"))


VECTOR_EDGES = _vector_edges()


EDGE_SLOTS = 40  # run edges one _store_edges call writes: 5 vectors of 8


@intrinsic
def _store_edges(typingctx, dst, edges, base, shift, inside, first):
    """Write the first :data:`EDGE_SLOTS` run edges of one bitmap word as range fields.

    ``edges`` has a bit at each page where a run starts or ends (``x ^ (x << 1 | carry)``);
    ``base`` is the word's first page.  Edges alternate start, end, start...; ``inside``
    (0 or 1) says the first one ends a run begun in an earlier word.  A start is written
    as ``(base + bit) << shift``, an end as its run's length ``(end - start) << shift``,
    to consecutive ``uint64`` slots from host address ``dst``.  The first edge's field is
    computed with ``first`` in place of ``base`` (``base - start`` when it ends a run that
    began at page ``start``).  Exactly :data:`EDGE_SLOTS` slots are stored: those past
    ``popcount(edges)`` hold junk that later words overwrite.

    ``vpcompressb`` packs the set bits' indices in one instruction, so a dense word costs
    no more than a sparse one: this needs AVX512-VBMI2 (see :data:`VECTOR_EDGES`).
    """

    def codegen(context, builder, signature, args):
        i1, i8, i32, i64 = (ir.IntType(n) for n in (1, 8, 32, 64))
        v64b, v8q, m64 = ir.VectorType(i8, 64), ir.VectorType(i64, 8), ir.VectorType(i1, 64)
        edges, base, shift, inside, first = (
            context.cast(builder, value, ty, types.uint64)
            for value, ty in zip(args[1:], signature.args[1:], strict=True)
        )
        name = "llvm.x86.avx512.mask.compress.v64i8"
        compress = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v64b, [v64b, v64b, m64]), name
        )
        bits, zeros = _vector(builder, v64b, list(range(64))), _vector(builder, v64b, [0] * 64)
        index = builder.call(compress, [bits, zeros, builder.bitcast(edges, m64)])
        # an end's byte becomes end - start within the word (its run's start is the byte before)
        before = builder.shuffle_vector(
            index, index, _vector(builder, ir.VectorType(i32, 64), [0, *range(63)])
        )
        parity = builder.xor(
            _vector(builder, v64b, [0, 1] * 32), _vector(builder, v64b, builder.trunc(inside, i8))
        )
        is_end = builder.icmp_unsigned("!=", parity, zeros)
        is_end = builder.and_(is_end, _vector(builder, m64, [0] + [1] * 63))  # the first: ``first``
        index = builder.select(is_end, builder.sub(index, before), index)
        # starts get the word's base added, ends (lengths) nothing
        parity = builder.xor(_vector(builder, v8q, [0, 1] * 4), _vector(builder, v8q, inside))
        is_start = builder.icmp_unsigned("==", parity, _vector(builder, v8q, [0] * 8))
        add = builder.select(is_start, _vector(builder, v8q, base), _vector(builder, v8q, [0] * 8))
        shifts = _vector(builder, v8q, shift)
        out = builder.inttoptr(args[0], v8q.as_pointer())
        for g in range(EDGE_SLOTS // 8):
            lanes = _vector(builder, ir.VectorType(i32, 8), list(range(8 * g, 8 * g + 8)))
            part = builder.zext(builder.shuffle_vector(index, index, lanes), v8q)
            addend = builder.insert_element(add, first, ir.Constant(i32, 0)) if g == 0 else add
            value = builder.shl(builder.add(part, addend), shifts)
            builder.store(value, builder.gep(out, [ir.Constant(i64, g)]), align=8)
        return context.get_dummy_value()

    return types.void(types.int64, edges, base, shift, inside, first), codegen


_popcount = _bit_intrinsic("ctpop")
_trailing_zeros = _bit_intrinsic("cttz")
_leading_zeros = _bit_intrinsic("ctlz")

_ALL = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


@njit(cache=True, nogil=True)
def _copy(src, dst, size):
    """Copy ``size`` bytes between host addresses, widest accesses first."""
    k = 0
    while k + 8 <= size:
        _store64(dst + k, _load64(src + k))
        k += 8
    if k + 4 <= size:
        _store32(dst + k, _load32(src + k))
        k += 4
    if k + 2 <= size:
        _store16(dst + k, _load16(src + k))
        k += 2
    if k < size:
        _store8(dst + k, _load8(src + k))


@njit(cache=True, nogil=True)
def locate(starts, ends, hosts, addrs, size, host_out, region_out):
    """Translate each guest address to a host address, proving ``[addr, addr + size)`` backed.

    Parameters
    ----------
    starts, ends : uint64[n]
        Sorted region starts and exclusive ends.
    hosts : int64[n]
        Host address of each region's first byte.
    addrs : uint64[m]
        Guest addresses.
    size : int
        Bytes needed at each address (>= 1).
    host_out : int64[m]
        Receives the host address of each guest address.
    region_out : int64[m]
        Receives the index of the region holding each guest address.

    Returns
    -------
    tuple of (int, int)
        ``(first_bad, straddlers)``: the index of the first address whose bytes are not
        all backed (contiguous adjacent regions count as backed), or -1; and how many
        objects straddle two or more adjacent regions.
    """
    n = starts.shape[0]
    need = np.uint64(size)
    straddlers = 0
    for k in range(addrs.shape[0]):
        a = addrs[k]
        # binary search down to a window of 16 regions, then a branch-free count
        lo = 0
        hi = n
        while hi - lo > 16:
            mid = (lo + hi) >> 1
            if starts[mid] <= a:
                lo = mid
            else:
                hi = mid
        i = lo - 1
        for j in range(lo, hi):
            i += starts[j] <= a
        if i < 0 or a >= ends[i]:
            return k, straddlers
        end = a + need
        if end < a:
            return k, straddlers
        if end > ends[i]:
            j = i + 1
            while j < n and starts[j] == ends[j - 1] and end > ends[j]:
                j += 1
            if j >= n or starts[j] != ends[j - 1]:
                return k, straddlers
            straddlers += 1
        host_out[k] = hosts[i] + np.int64(a - starts[i])
        region_out[k] = i
    return -1, straddlers


@njit(cache=True, nogil=True)
def copy_runs(base, hosts, lengths, to_memory):
    """Move consecutive runs of a packed buffer at host address ``base`` to or from memory.

    Run ``k`` is ``lengths[k]`` bytes at host address ``hosts[k]`` (already proven
    backed, and writable when ``to_memory``).  Runs of up to 8 bytes take :func:`_copy`
    (the widest single accesses, as vm-memory's small copies), longer ones ``memcpy``.
    Writes go run after run (so where two runs hit the same bytes, the later wins).
    Reads take four runs at a time, 256 bytes of each in turn: four streams in flight
    read scattered 4 KiB pages about 25% faster than one.
    """
    done = 0
    n = hosts.shape[0]
    step, chunk = (1, 1 << 62) if to_memory else (4, 256)
    for g in range(0, n, step):
        e = min(g + step, n)
        longest = 0
        for k in range(g, e):
            longest = max(longest, lengths[k])
        for o in range(0, longest, chunk):
            at = done
            for k in range(g, e):
                m = lengths[k]
                if o < m:
                    c = min(m - o, chunk)
                    src, dst = (base + at, hosts[k]) if to_memory else (hosts[k], base + at)
                    if m <= 8:
                        _copy(src + o, dst + o, c)
                    else:
                        _memcpy(dst + o, src + o, c)
                at += m
        for k in range(g, e):
            done += lengths[k]


@njit(cache=True, nogil=True)
def copy_pairs(src, dst, lengths):
    """``memcpy(dst[k], src[k], lengths[k])`` for each ``k``, in order.

    ``src`` and ``dst`` are ``int64`` host addresses of runs already proven backed (and
    ``dst`` writable); runs of up to 8 bytes take :func:`_copy`.
    """
    for k in range(src.shape[0]):
        if lengths[k] <= 8:
            _copy(src[k], dst[k], lengths[k])
        else:
            _memcpy(dst[k], src[k], lengths[k])


@njit(cache=True, nogil=True)
def _gather_fixed(host, size, base):
    for k in range(host.shape[0]):
        _copy(host[k], base + k * size, size)


@njit(cache=True, nogil=True)
def _scatter_fixed(host, size, base):
    for k in range(host.shape[0]):
        _copy(base + k * size, host[k], size)


@njit(cache=True, nogil=True)
def _move(host, region, hosts, lens, size, base, to_memory):
    """Move objects between host addresses and a packed buffer at host address ``base``.

    With ``region`` empty nothing straddles: objects of 1, 2, 4 or 8 bytes take loops
    whose copy width is a compile-time constant (one unaligned machine access each).
    Otherwise ``region[k]`` is the region of object ``k`` and objects that pass its end
    continue at the start of the following (adjacent) regions.
    """
    if region.shape[0] == 0:
        if to_memory:
            if size == 8:
                _scatter_fixed(host, 8, base)
            elif size == 4:
                _scatter_fixed(host, 4, base)
            elif size == 2:
                _scatter_fixed(host, 2, base)
            elif size == 1:
                _scatter_fixed(host, 1, base)
            else:
                _scatter_fixed(host, size, base)
        elif size == 8:
            _gather_fixed(host, 8, base)
        elif size == 4:
            _gather_fixed(host, 4, base)
        elif size == 2:
            _gather_fixed(host, 2, base)
        elif size == 1:
            _gather_fixed(host, 1, base)
        else:
            _gather_fixed(host, size, base)
        return
    for k in range(host.shape[0]):
        i = region[k]
        at = host[k]
        buf = base + k * size
        rem = size
        while rem > 0:  # more than once only for objects straddling adjacent regions
            n = min(hosts[i] + lens[i] - at, rem)
            if to_memory:
                _copy(buf, at, n)
            else:
                _copy(at, buf, n)
            buf += n
            rem -= n
            i += 1
            if i < hosts.shape[0]:
                at = hosts[i]


@njit(cache=True, nogil=True)
def gather(host, region, hosts, lens, size, out):
    """Copy ``size`` bytes at each host address into consecutive slots of ``out``.

    Parameters
    ----------
    host : int64[m]
        Host addresses from :func:`locate` (already proven backed).
    region : int64[m] or int64[0]
        Region index of each object when some straddle regions, else empty.
    hosts, lens : int64[n]
        Host address and length of each region.
    size : int
        Object size in bytes.
    out : uint8[m * size]
        Destination.
    """
    _move(host, region, hosts, lens, size, np.int64(out.ctypes.data), False)


@njit(cache=True, nogil=True)
def scatter(host, region, hosts, lens, size, values):
    """Copy consecutive ``size``-byte slots of ``values`` to each host address.

    Parameters
    ----------
    host : int64[m]
        Host addresses from :func:`locate` (already proven backed and writable).
    region : int64[m] or int64[0]
        Region index of each object when some straddle regions, else empty.
    hosts, lens : int64[n]
        Host address and length of each region.
    size : int
        Object size in bytes.
    values : uint8[m * size]
        Source.
    """
    _move(host, region, hosts, lens, size, np.int64(values.ctypes.data), True)


# -- dirty bitmaps: bit ``i % 64`` of word ``i // 64`` is page ``i`` --------------------------


@njit(cache=True, nogil=True)
def _range_masks(words, first, last, to_set):
    """Atomically set (or clear) bits ``first..last`` (inclusive) of the words at ``words``."""
    w0 = first >> 6
    w1 = last >> 6
    for w in range(w0, w1 + 1):
        lo = first - (w << 6) if w == w0 else 0
        hi = last - (w << 6) if w == w1 else 63
        mask = (_ALL >> np.uint64(63 - hi)) & (_ALL << np.uint64(lo))
        if to_set:
            _atomic_or(words + (w << 3), mask)
        else:
            _atomic_and(words + (w << 3), ~mask)


@njit(cache=True, nogil=True)
def bitmap_set(words, first, last):
    """Set bits ``first..last`` (inclusive, ``first <= last < nbits``) atomically.

    ``words`` is the host address of the bitmap's ``uint64`` words; one atomic OR per word.
    """
    _range_masks(words, first, last, True)


@njit(cache=True, nogil=True)
def bitmap_mark_ranges(words, nbits, shift, offsets, lengths):
    """Set the bits of the pages touching each ``[offsets[k], offsets[k] + lengths[k])``.

    ``offsets`` and ``lengths`` are non-negative ``int64`` arrays; pages past ``nbits``
    are ignored.
    """
    for k in range(offsets.shape[0]):
        if lengths[k] > 0:
            first = offsets[k] >> shift
            last = min((offsets[k] + lengths[k] - 1) >> shift, nbits - 1)
            if first <= last:
                _range_masks(words, first, last, True)


@njit(cache=True, nogil=True)
def bitmap_clear(words, pages, first, last):
    """Clear pages ``first..last`` (inclusive, ``first <= last < nbits``).

    Bits of the packed words at host address ``words`` go with atomic ANDs, bytes of
    the page byte map ``pages`` (``uint8``) with plain byte stores.
    """
    _range_masks(words, first, last, False)
    pages[first : last + 1] = 0


@njit(cache=True, nogil=True)
def bitmap_take(words, out):
    """Atomically take-and-clear the packed words at host address ``words`` into ``out``.

    A word read as zero is skipped: a mark landing after that read stays for the next
    take.  A nonzero word is exchanged with zero, so every mark ends up either in ``out``
    or still in the bitmap -- never in neither.
    """
    for w in range(out.shape[0]):
        at = words + (w << 3)
        v = _atomic_load(at)
        out[w] = _atomic_xchg(at, 0) if v else v


@njit(cache=True)
def lane_take(pages, out):
    """Take-and-clear the page byte map ``pages`` (``uint8[64 * nwords]``), OR-ing it into ``out``.

    The one kernel that keeps the GIL, on purpose: the byte map is written only by Python
    code (one byte store per scalar mark, under the GIL), so while this runs no mark can
    land, and plain loads and stores take it whole -- no atomic exchange per 8 pages.
    """
    at = pages.ctypes.data
    for w in range(out.shape[0]):
        marks = _nonzero_bytes(at + (w << 6))
        if marks:
            out[w] |= marks
            _clear_bytes(at + (w << 6))


@njit(cache=True, nogil=True)
def bitmap_fold(words, pages, out):
    """``out[w] = words[w] | <bit b set for each nonzero byte pages[64 * w + b]>``.

    A snapshot of a bitmap's packed words with its page byte map folded in; ``words`` is
    read with plain (never torn) 8-byte loads.
    """
    at = pages.ctypes.data
    for w in range(out.shape[0]):
        out[w] = words[w] | _nonzero_bytes(at + (w << 6))


@njit(cache=True, nogil=True)
def bitmap_count(words):
    """Count the set bits of a ``uint64`` word array."""
    total = 0
    for w in range(words.shape[0]):
        total += _popcount(words[w])
    return total


@njit(cache=True, nogil=True)
def bitmap_pages(words, out):
    """Write the index of every set bit, ascending, into ``out`` (sized by :func:`bitmap_count`)."""
    n = 0
    for w in range(words.shape[0]):
        x = words[w]
        while x:
            out[n] = (w << 6) + _trailing_zeros(x)
            x &= x - np.uint64(1)
            n += 1


@njit(cache=True, nogil=True)
def bitmap_ranges(words, shift, byte_size):
    """Coalesced dirty byte ranges: an ``(n, 2)`` ``uint64`` array of ``(start, length)``.

    Page ``i`` covers bytes ``[i << shift, (i + 1) << shift)``, cut at ``byte_size``.
    With ``p = x << 1 | carry`` (the previous page's bit), runs start at the bits of
    ``x & ~p`` and end at those of ``~x & p``.  A word's starts are written first, into
    the even slots, then its ends as lengths into the odd ones (a run's start is always
    written before its end is decoded); two per loop turn, into a buffer with slack.
    """
    one = np.uint64(1)
    n = 0
    carry = np.uint64(0)
    for w in range(words.shape[0]):
        x = words[w]
        n += _popcount(x & ~((x << one) | carry))
        carry = x >> np.uint64(63)
    out = np.empty(2 * n + 4, dtype=np.uint64)
    ks, ke = 0, 1
    carry = np.uint64(0)
    for w in range(words.shape[0]):
        x = words[w]
        p = (x << one) | carry
        ts, te = x & ~p, ~x & p
        carry = x >> np.uint64(63)
        base = np.uint64(w << 6)
        ns, ne = ks + 2 * _popcount(ts), ke + 2 * _popcount(te)
        while ts:  # may write one start past the word's: a later start's slot, or slack
            out[ks] = (base + _trailing_zeros(ts)) << shift
            ts &= ts - one
            out[ks + 2] = (base + _trailing_zeros(ts)) << shift
            ts &= ts - one
            ks += 4
        while te:  # likewise one length past: a later end's slot, or slack
            out[ke] = ((base + _trailing_zeros(te)) << shift) - out[ke - 1]
            te &= te - one
            out[ke + 2] = ((base + _trailing_zeros(te)) << shift) - out[ke + 1]
            te &= te - one
            ke += 4
        ks, ke = ns, ne
    if carry:  # the last run reaches the last bit
        out[ke] = np.uint64(words.shape[0] << (6 + shift)) - out[ke - 1]
    return _ranges_result(out, n, byte_size)


@njit(cache=True, nogil=True)
def _ranges_result(out, n, byte_size):
    """Return the first ``n`` ``(start, length)`` pairs of ``out``, the last cut at byte_size."""
    if n:  # the last run may pass the end of the last page
        out[2 * n - 1] = min(out[2 * n - 1], np.uint64(byte_size) - out[2 * n - 2])
    return out[: 2 * n].reshape(n, 2)


DENSE_EDGES = 8  # run edges per word from which bitmap_ranges_vector beats the scalar decoder


@njit(cache=True, nogil=True)
def bitmap_ranges_vector(words, shift, byte_size, dense):
    """:func:`bitmap_ranges`, for bitmaps dense in runs: one vector step per word.

    Needs AVX512-VBMI2 (:data:`VECTOR_EDGES`).  A bitmap with fewer than ``dense`` run
    edges per word (:data:`DENSE_EDGES`) goes to :func:`bitmap_ranges`, whose cost
    follows the edges; this one costs the same for every word (~8 ns), edges or not.
    Words with more than :data:`EDGE_SLOTS` edges get their excess written after the
    main loop.
    """
    one = np.uint64(1)
    nwords = words.shape[0]
    edges = 0
    carry = np.uint64(0)
    for w in range(nwords):
        x = words[w]
        edges += _popcount(x ^ ((x << one) | carry))
        carry = x >> np.uint64(63)
    if edges < dense * nwords:
        return bitmap_ranges(words, shift, byte_size)
    out = np.empty(edges + EDGE_SLOTS + 1, dtype=np.uint64)
    crowded = np.empty(2 * nwords, dtype=np.int64)  # (word, first slot) of words past EDGE_SLOTS
    at = out.ctypes.data
    k = ncrowded = 0
    carry = start = np.uint64(0)  # start: the first page of the run open at the word's start
    for w in range(nwords):
        x = words[w]
        t = x ^ ((x << one) | carry)
        base = np.uint64(w << 6)
        c = _popcount(t)
        _store_edges(at + 8 * k, t, base, shift, carry, base - start if carry else base)
        crowded[ncrowded] = w
        crowded[ncrowded + 1] = k
        ncrowded += 2 * (c > EDGE_SLOTS)
        last = base + np.uint64(63 - _leading_zeros(t))
        start = last if (c != 0) & ((k + c) & 1 == 1) else start  # a run left open
        carry = x >> np.uint64(63)
        k += c
    for f in range(0, ncrowded, 2):
        w, j = crowded[f], crowded[f + 1] + EDGE_SLOTS
        x = words[w]
        t = x ^ ((x << one) | (words[w - 1] >> np.uint64(63) if w else np.uint64(0)))
        for _ in range(EDGE_SLOTS - 1):
            t &= t - one
        base = np.uint64(w << 6)
        prev = base + _trailing_zeros(t)  # the last edge already written
        t &= t - one
        while t:
            page = base + _trailing_zeros(t)
            out[j] = (page - prev if j & 1 else page) << shift
            prev = page
            t &= t - one
            j += 1
    if carry:  # the last run reaches the last bit
        out[k] = (np.uint64(nwords << 6) - start) << shift
        k += 1
    return _ranges_result(out, k >> 1, byte_size)


@njit(cache=True, nogil=True)
def mark_objects(host, region, size, hosts, lens, words, shifts, nbits):
    """Set the dirty bits of ``size``-byte objects written at host addresses ``host``.

    ``region[k]`` is the region of object ``k``; an object passing its region's end
    continues at the start of the following (adjacent) regions.  ``words[i]`` is the host
    address of region ``i``'s bitmap words (0: no kernel-managed bitmap), ``shifts[i]``
    its log2 page size and ``nbits[i]`` its bit count.
    """
    for k in range(host.shape[0]):
        i = region[k]
        off = host[k] - hosts[i]
        rem = size
        while rem > 0:  # more than once only for objects straddling adjacent regions
            n = min(lens[i] - off, rem)
            if words[i] != 0:
                first = off >> shifts[i]
                last = min((off + n - 1) >> shifts[i], nbits[i] - 1)
                if first <= last:
                    _range_masks(words[i], first, last, True)
            rem -= n
            off = 0
            i += 1


# -- npguest.pages: per-page summaries over blocks of whole pages ---------------------------
# ``words`` / ``data`` hold ``out.shape[0]`` whole pages back to back (proven by pages.py);
# ``wpp`` is the page size in uint64 words.  Each page is taken as a slice and indexed
# from 0, so numba can drop its negative-index checks and LLVM vectorise the OR loops.
# The all-zero and difference tests read whole pages: stopping at the first non-zero word
# measured 2x slower on mixed memory (skipping breaks the hardware prefetcher's streams).

__all__ += ["pages_differ", "pages_entropy", "pages_xxh64", "pages_zero"]

_XXH_P1 = np.uint64(11400714785074694791)
_XXH_P2 = np.uint64(14029467366897019727)
_XXH_P3 = np.uint64(1609587929392839161)
_XXH_P4 = np.uint64(9650029242287828579)
_XXH_P5 = np.uint64(2870177450012600261)
_U0 = np.uint64(0)


@njit(cache=True, nogil=True)
def pages_zero(words, wpp, out):
    """Set ``out[p]`` to whether page ``p`` of ``words`` is all zero."""
    for p in range(out.shape[0]):
        page = words[p * wpp : (p + 1) * wpp]
        acc = _U0
        for j in range(wpp):
            acc |= page[j]
        out[p] = acc == _U0


@njit(cache=True, nogil=True)
def pages_differ(a, b, wpp, out):
    """Set ``out[p]`` to whether page ``p`` of ``a`` differs from page ``p`` of ``b``."""
    for p in range(out.shape[0]):
        pa = a[p * wpp : (p + 1) * wpp]
        pb = b[p * wpp : (p + 1) * wpp]
        acc = _U0
        for j in range(wpp):
            acc |= pa[j] ^ pb[j]
        out[p] = acc != _U0


@njit(inline="always")
def _rotl64(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(inline="always")
def _xxh_round(acc, lane):
    return _rotl64(acc + lane * _XXH_P2, 31) * _XXH_P1


@njit(inline="always")
def _xxh_merge(acc, v):
    return (acc ^ _xxh_round(_U0, v)) * _XXH_P1 + _XXH_P4


@njit(cache=True, nogil=True)
def pages_xxh64(words, wpp, out):
    """Set ``out[p]`` to XXH64 (seed 0) of page ``p``'s ``8 * wpp`` bytes (little-endian)."""
    for p in range(out.shape[0]):
        page = words[p * wpp : (p + 1) * wpp]
        j = 0
        if wpp >= 4:  # 32-byte stripes: whole pages of >= 32 bytes have no tail
            v1 = _XXH_P1 + _XXH_P2
            v2 = _XXH_P2
            v3 = _U0
            v4 = _U0 - _XXH_P1
            for j in range(0, wpp, 4):
                v1 = _xxh_round(v1, page[j])
                v2 = _xxh_round(v2, page[j + 1])
                v3 = _xxh_round(v3, page[j + 2])
                v4 = _xxh_round(v4, page[j + 3])
            j = wpp
            h = _rotl64(v1, 1) + _rotl64(v2, 7) + _rotl64(v3, 12) + _rotl64(v4, 18)
            h = _xxh_merge(_xxh_merge(_xxh_merge(_xxh_merge(h, v1), v2), v3), v4)
        else:
            h = _XXH_P5
        h += np.uint64(wpp * 8)
        for k in range(j, wpp):
            h = _rotl64(h ^ _xxh_round(_U0, page[k]), 27) * _XXH_P1 + _XXH_P4
        h ^= h >> np.uint64(33)
        h *= _XXH_P2
        h ^= h >> np.uint64(29)
        h *= _XXH_P3
        out[p] = h ^ (h >> np.uint64(32))


@njit(cache=True, nogil=True)
def pages_entropy(data, page_size, xlogx, out):
    """Set ``out[p]`` to the Shannon entropy (bits per byte) of page ``p`` of ``data``.

    ``xlogx[c]`` is ``c * log2(c)`` (0 for 0) for the counts ``c`` it covers; larger counts
    (pages over its length) compute it.  Four interleaved histograms keep runs of equal
    bytes from waiting on each other's increments.
    """
    counts = np.zeros((4, 256), dtype=np.int64)
    logn = np.log2(np.float64(page_size))
    for p in range(out.shape[0]):
        page = data[p * page_size : (p + 1) * page_size]
        counts[:] = 0
        for j in range(0, page_size, 4):  # page sizes are multiples of 8
            counts[0, page[j]] += 1
            counts[1, page[j + 1]] += 1
            counts[2, page[j + 2]] += 1
            counts[3, page[j + 3]] += 1
        s = 0.0
        for b in range(256):
            c = counts[0, b] + counts[1, b] + counts[2, b] + counts[3, b]
            if c < xlogx.shape[0]:
                s += xlogx[c]
            else:
                s += c * np.log2(np.float64(c))
        out[p] = logn - s / page_size


# -- scan (npguest/scan.py): literal, multi-literal and printable-run scans of one chunk ------
#
# Each kernel scans one chunk ``data`` of a run of guest memory and reports what *starts* in
# its first ``owned`` bytes; the bytes past ``owned`` are the overlap into the next chunk.
# Hot loops test a block of positions at once over slices (no negative-index wraparound, so
# LLVM vectorises them), and only a block that passes the filter is checked position by
# position.

__all__ += ["find_literal", "find_literals", "printable_runs"]

_SCAN_BLOCK = 128  # positions per vectorised filter step of find_literal
_SCAN_MANY_BLOCK = 64  # ... of find_literals
_SCAN_LANES = 4  # distinct key bytes per group of find_literals' union filter


@njit(inline="always")
def _scan_equal(data, s, pats, p0, m):
    """Return whether ``data[s : s + m]`` equals ``pats[p0 : p0 + m]`` (bounds: the caller's)."""
    t = 0
    while t < m and data[s + t] == pats[p0 + t]:
        t += 1
    return t == m


@njit(cache=True, nogil=True)
def _scan_pair_next(data, j, full, i1, i2, b1, b2):
    """Return the first block start in ``[j, full)`` that may hold a match, else ``full``.

    Blocks are ``_SCAN_BLOCK`` positions from ``j``; one passes when some position ``s``
    has ``data[s + i1] == b1`` and ``data[s + i2] == b2`` (one vectorised OR per block).
    """
    while j < full:
        x = data[j + i1 : j + i1 + _SCAN_BLOCK]
        y = data[j + i2 : j + i2 + _SCAN_BLOCK]
        hit = False
        for k in range(_SCAN_BLOCK):
            hit |= (x[k] == b1) & (y[k] == b2)
        if hit:
            return j
        j += _SCAN_BLOCK
    return j


@njit(cache=True, nogil=True)
def find_literal(data, owned, pat, i1, i2, out):
    """Write the offsets where ``pat`` starts in ``data[:owned]`` to ``out``; return how many.

    Ascending; stops when ``out`` is full.  The filter compares bytes ``i1`` and ``i2`` of
    the pattern (its two rarest) at a block of positions at once, and skips blocks where no
    position passes.  A match lies in ``data`` entirely.
    """
    m = pat.shape[0]
    last = min(owned, data.shape[0] - m + 1)  # candidate starts are [0, last)
    full = max(0, last) // _SCAN_BLOCK * _SCAN_BLOCK
    b1, b2 = pat[i1], pat[i2]
    n = 0
    j = 0
    while j < last and n < out.shape[0]:
        j = _scan_pair_next(data, j, full, i1, i2, b1, b2)
        for s in range(j, min(j + _SCAN_BLOCK, last)):
            if n < out.shape[0] and _scan_equal(data, s, pat, 0, m):
                out[n] = s
                n += 1
        j += _SCAN_BLOCK
    return n


@njit(cache=True, nogil=True)
def _scan_union(x, y, u1, u2, ymask):
    """Return whether some ``x[k]`` is in ``u1`` while ``y[k] & ymask`` is in ``u2 & ymask``.

    Set membership is a minimum of XORs (zero: a member), and the answers are OR-ed into
    one flag: both vectorise (byte-wide ``min``, then one test per block).
    """
    hit = False
    for k in range(_SCAN_MANY_BLOCK):
        xk, yk = x[k], y[k]
        d1 = np.uint8(255)
        d2 = np.uint8(255)
        for q in range(_SCAN_LANES):
            d1 = min(d1, np.uint8(xk ^ u1[q]))
            d2 = min(d2, np.uint8(yk ^ u2[q]))
        hit |= (d1 | (d2 & ymask)) == 0
    return hit


@njit(cache=True, nogil=True)
def _scan_union_next(data, j, full, s1, s2, ymask):
    """Return the first block start in ``[j, full)`` that may hold a key, else ``full``.

    Blocks are ``_SCAN_MANY_BLOCK`` positions from ``j``; one passes the filter of a group
    ``g`` of patterns when ``_scan_union`` with ``s1[g]``, ``s2[g]`` says so.
    """
    while j < full:
        x = data[j : j + _SCAN_MANY_BLOCK]
        y = data[j + 1 : j + _SCAN_MANY_BLOCK + 1]
        for g in range(s1.shape[0]):
            if _scan_union(x, y, s1[g], s2[g], ymask):
                return j
        j += _SCAN_MANY_BLOCK
    return j


@njit(cache=True, nogil=True)
def find_literals(data, j, owned, pats, starts, lens, offs, wide, s1, s2, keys, kptr, order, out):
    """Write an ``(offset, pattern)`` row to ``out`` per pattern starting in ``data[:owned]``.

    Pattern ``p`` is ``pats[starts[p] : starts[p] + lens[p]]``; its *key* is its byte at
    ``offs[p]`` (and the next, when ``wide``), so a key found at position ``pos`` puts a
    candidate start at ``pos - offs[p]``.  Key positions are scanned from ``j`` on.
    ``s1[g, :]`` / ``s2[g, :]`` hold the first / second key bytes of group ``g`` of patterns
    (padded by repetition): a block of positions is skipped unless some position's key
    bytes are both in one group's sets.  In the others, each position's key ``x | y << 8``
    (``y`` is 0 when not ``wide``) is looked up in the bitmap ``keys`` (``uint8[8192]``),
    then in the CSR index ``kptr`` (the patterns with that key are
    ``order[kptr[key] : kptr[key + 1]]``), and the candidates are verified.

    Returns ``(n, resume)``: ``n`` rows written, by key position (not by start); ``resume``
    is the key position to call again from when ``out`` ran out of room (it must hold
    every pattern), or -1 when the chunk is done.
    """
    ymask = np.uint8(0xFF if wide else 0)
    ylast = 1 if wide else 0  # the key's last byte, past its position
    jmax = min(data.shape[0] - ylast, owned + offs.max())  # key positions are [j, jmax)
    full = j + max(0, min(jmax, data.shape[0] - 1) - j) // _SCAN_MANY_BLOCK * _SCAN_MANY_BLOCK
    n = 0
    while j < jmax:
        j = _scan_union_next(data, j, full, s1, s2, ymask)
        for pos in range(j, min(j + _SCAN_MANY_BLOCK, jmax)):
            key = np.int64(data[pos])
            if wide:
                key |= np.int64(data[pos + 1]) << 8
            if not (keys[key >> 3] >> (key & 7)) & 1:
                continue
            if n + kptr[key + 1] - kptr[key] > out.shape[0]:
                return n, pos
            for e in range(kptr[key], kptr[key + 1]):
                p = order[e]
                s = pos - offs[p]
                inside = 0 <= s < owned and s + lens[p] <= data.shape[0]
                if inside and _scan_equal(data, s, pats, starts[p], lens[p]):
                    out[n, 0] = s
                    out[n, 1] = p
                    n += 1
        j += _SCAN_MANY_BLOCK
    return n, -1


@njit(cache=True, nogil=True)
def _scan_any_printable(x):
    """Return whether block ``x`` (``_SCAN_BLOCK`` bytes) holds a printable byte (vectorised)."""
    hit = False
    for k in range(_SCAN_BLOCK):
        hit |= (np.uint8(x[k] - 0x20) < 0x5F) | (x[k] == 0x09)
    return hit


@njit(cache=True, nogil=True)
def printable_runs(data, owned, width, min_len):
    """Return the runs of printable characters starting in ``data[:owned]``: ``(starts, nchars)``.

    A character is one printable byte (``width`` 1), or a printable byte followed by a zero
    byte (``width`` 2: UTF-16LE, at either parity).  A run is a maximal sequence of
    characters ``width`` bytes apart.  Reported: runs of at least ``min_len`` characters,
    and every run that may continue in a neighbouring chunk (its first character is at an
    offset below ``width``, or its next one at ``owned`` or past), whatever its length.
    Per byte the loop branches only on rare events (a reported run); a block without a
    printable byte is skipped whole.
    """
    # each reported run but two per parity ends at a non-character: a bound on their number
    cap = owned // (min_len + 1) + 3 * width
    starts = np.empty(cap, dtype=np.int64)
    counts = np.empty(cap, dtype=np.int64)
    n = 0
    pend = min(owned, data.shape[0] - width + 1)  # positions with room for a character
    for phase in range(width):
        run = 0
        p = phase
        probe = p  # where the next skip test may start
        while p < pend:
            if p >= probe and run == 0 and p + _SCAN_BLOCK <= pend:
                probe = p + _SCAN_BLOCK
                if not _scan_any_printable(data[p : p + _SCAN_BLOCK]):
                    p += _SCAN_BLOCK  # even: keeps the parity
                    continue
            b = data[p]
            ok = (np.uint8(b - 0x20) < 0x5F) | (b == 0x09)
            ok &= (data[p + width - 1] == 0) | (width == 1)
            ended = 0 if ok else run  # the length of a run ending at p
            if (ended >= min_len) | ((ended > 0) & (p - ended * width < width)):
                starts[n] = p - ended * width
                counts[n] = ended
                n += 1
            run = run + 1 if ok else 0
            p += width
        # a run reaching the end: it may continue in the next chunk (or p is in [pend, owned))
        if run >= min_len or (run and (p >= owned or p - run * width < width)):
            starts[n] = p - run * width
            counts[n] = run
            n += 1
    return starts[:n], counts[:n]


# -- XXH64 of byte blocks (migration checksums) ------------------------------------------
# ``data`` is any C-contiguous uint8 array (no alignment: lanes are read with unaligned
# loads at its host address); block ``b`` is ``data[b * block : (b + 1) * block]``, the last
# one shorter, and ``out.shape[0]`` is ``max(1, ceil(len(data) / block))`` (proven by
# migration.py), so an empty ``data`` gets the digest of no bytes.

__all__ += ["xxh64_blocks"]


@njit(inline="always")
def _xxh64_at(at, n):
    """Return XXH64 (seed 0) of the ``n`` bytes at host address ``at``."""
    p = 0
    if n >= 32:
        v1 = _XXH_P1 + _XXH_P2
        v2 = _XXH_P2
        v3 = _U0
        v4 = _U0 - _XXH_P1
        while p <= n - 32:
            v1 = _xxh_round(v1, _load64(at + p))
            v2 = _xxh_round(v2, _load64(at + p + 8))
            v3 = _xxh_round(v3, _load64(at + p + 16))
            v4 = _xxh_round(v4, _load64(at + p + 24))
            p += 32
        h = _rotl64(v1, 1) + _rotl64(v2, 7) + _rotl64(v3, 12) + _rotl64(v4, 18)
        h = _xxh_merge(_xxh_merge(_xxh_merge(_xxh_merge(h, v1), v2), v3), v4)
    else:
        h = _XXH_P5
    h += np.uint64(n)
    while p + 8 <= n:
        h = _rotl64(h ^ _xxh_round(_U0, _load64(at + p)), 27) * _XXH_P1 + _XXH_P4
        p += 8
    if p + 4 <= n:
        h = _rotl64(h ^ (np.uint64(_load32(at + p)) * _XXH_P1), 23) * _XXH_P2 + _XXH_P3
        p += 4
    while p < n:
        h = _rotl64(h ^ (np.uint64(_load8(at + p)) * _XXH_P5), 11) * _XXH_P1
        p += 1
    h ^= h >> np.uint64(33)
    h *= _XXH_P2
    h ^= h >> np.uint64(29)
    h *= _XXH_P3
    return h ^ (h >> np.uint64(32))


@njit(cache=True, nogil=True)
def xxh64_blocks(data, block, out):
    """Set ``out[b]`` to XXH64 (seed 0) of block ``b`` of ``data`` (``block`` bytes each)."""
    n = data.shape[0]
    at = np.int64(data.ctypes.data)
    for b in range(out.shape[0]):
        start = b * block
        out[b] = _xxh64_at(at + start, min(block, n - start))
