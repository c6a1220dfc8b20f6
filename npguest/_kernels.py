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
from numba.extending import intrinsic

__all__ = ["gather", "locate", "scatter"]


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
def locate(starts, ends, hosts, addrs, size, host_out):
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
    return -1, straddlers


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
