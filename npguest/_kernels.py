"""Every numba kernel of npguest.

Rules (see DESIGN.md): plain C-contiguous arrays and ints in, plain values out; each
kernel is ``@njit(cache=True, nogil=True)`` with no eager signature; bounds were proven
by the Python caller before any kernel touches guest memory; a kernel never clamps or
skips.  One signedness per expression: addresses are ``uint64`` throughout, region
offsets and lengths ``int64``.

This module imports numba, so npguest imports it lazily, on the first kernel call.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["gather", "locate", "scatter"]


@intrinsic
def _byte_ptr(typingctx, address):
    """Turn an ``int64`` host address into a ``uint8*`` (``inttoptr``)."""
    sig = types.CPointer(types.uint8)(types.int64)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(types.CPointer(types.uint8)))

    return sig, codegen


@njit(cache=True, nogil=True)
def locate(starts, ends, addrs, size, region_out, offset_out):
    """Find the region and offset of each ``[addr, addr + size)``; check it is backed.

    Parameters
    ----------
    starts, ends : uint64[n]
        Sorted region starts and exclusive ends.
    addrs : uint64[m]
        Guest addresses.
    size : int
        Bytes needed at each address (>= 1).
    region_out : int64[m]
        Receives the index of the region holding each address.
    offset_out : int64[m]
        Receives each address's offset in that region.

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
        lo = 0
        hi = n
        while lo < hi:
            mid = (lo + hi) >> 1
            if starts[mid] <= a:
                lo = mid + 1
            else:
                hi = mid
        i = lo - 1
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
        region_out[k] = i
        offset_out[k] = np.int64(a - starts[i])
    return -1, straddlers


@njit(cache=True, nogil=True)
def gather(hosts, lens, region, offset, size, out):
    """Copy ``size`` bytes at each located address into consecutive slots of ``out``.

    Parameters
    ----------
    hosts, lens : int64[n]
        Host address and length of each region.
    region, offset : int64[m]
        Output of :func:`locate` (already proven in bounds).
    size : int
        Object size in bytes.
    out : uint8[m * size]
        Destination.
    """
    for k in range(region.shape[0]):
        i = region[k]
        off = offset[k]
        dst = k * size
        rem = size
        while rem > 0:
            n = min(lens[i] - off, rem)
            p = _byte_ptr(hosts[i] + off)
            for b in range(n):
                out[dst + b] = p[b]
            dst += n
            rem -= n
            i += 1
            off = 0


@njit(cache=True, nogil=True)
def scatter(hosts, lens, region, offset, size, values):
    """Copy consecutive ``size``-byte slots of ``values`` to each located address.

    Parameters
    ----------
    hosts, lens : int64[n]
        Host address and length of each region (all writable).
    region, offset : int64[m]
        Output of :func:`locate` (already proven in bounds).
    size : int
        Object size in bytes.
    values : uint8[m * size]
        Source.
    """
    for k in range(region.shape[0]):
        i = region[k]
        off = offset[k]
        src = k * size
        rem = size
        while rem > 0:
            n = min(lens[i] - off, rem)
            p = _byte_ptr(hosts[i] + off)
            for b in range(n):
                p[b] = values[src + b]
            src += n
            rem -= n
            i += 1
            off = 0
