"""The ``npguest`` command (also ``python -m npguest``).

Subcommands:

``sample OUT``
    Write a small sample dump (QEMU-style ELF: RAM below and above 4 GiB, a kernel banner,
    page tables, CPU notes with CR3, VMCOREINFO) to try the other commands on.
``info DUMP``
    The format, the region table, CPU registers and notes of a dump.
``read DUMP ADDR LEN`` / ``hexdump DUMP ADDR LEN``
    Guest memory at a guest physical address, as raw bytes or a hex dump.
``find DUMP PATTERN``
    Every guest physical address where a text (or ``--hex``) pattern occurs.
``convert IN OUT --format FMT``
    Rewrite a dump in another format.
``diff A B``
    The pages that differ between two dumps (and those only one has).
``send DUMP --to HOST:PORT`` / ``receive --listen HOST:PORT --out FILE``
    Stream a dump's guest memory over TCP with the migration protocol of
    :mod:`npguest.migration` (one stop-and-copy round: a dump does not change), and
    receive it into a new dump (ELF by default, which keeps the region layout).  Both
    print the throughput on stderr; ``receive`` first prints ``listening on HOST:PORT``.
``tour`` (alias ``demo``)
    Build a small guest memory with a file-backed region on generated sample data and
    walk through the API, printing each step and what it returned.

Addresses and lengths take decimal, ``0x`` hex, and ``K``/``M``/``G`` suffixes.  ``convert``
draws a progress bar when standard error is a terminal.

Exit status: 0 on success (for ``diff``: the dumps are equal), 1 when npguest reports an
error (one line on stderr), 2 for bad command-line usage, 3 when ``diff`` found
differences, 141 when the reader of standard output went away (``| head``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import numpy as np

    from npguest import GuestMemoryMmap

__all__ = ["main", "sample_dump", "tour"]

#: Exit status of ``diff`` when the dumps differ.
DIFFERENT = 3
#: Exit status when the reader of standard output went away (128 + SIGPIPE, as ``cat``).
BROKEN_PIPE = 141
#: Most bytes ``read``/``hexdump`` print at once.
MAX_SHOW = 1 << 24


def _step(out: TextIO, title: str) -> None:
    out.write(f"\n== {title}\n")


def _show(out: TextIO, code: str, result: object = None) -> None:
    out.write(f">>> {code}\n")
    if result is not None:
        out.write(f"{result!r}\n")


def tour(workdir: Path, out: TextIO = sys.stdout) -> None:
    """Walk through npguest's core API on generated data, printing every step.

    Parameters
    ----------
    workdir : pathlib.Path
        Directory for the generated sample file (``sample-guest.img``).
    out : text stream, optional
        Where to print (default: standard output).

    Raises
    ------
    GuestMemoryError
        If any step fails (it should not: the tour is also run by the test suite).
    """
    import numpy as np

    import npguest
    from npguest import FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, Le64
    from npguest.errors import InvalidGuestAddressError, PartialBufferError

    page = 0x1000
    image = workdir / "sample-guest.img"
    _step(out, f"1. Generate sample data: a 64 KiB file with a header ({image})")
    payload = np.arange(0x10000, dtype=np.uint8)
    payload[:8] = np.frombuffer(b"NPGUEST\0", dtype=np.uint8)
    image.write_bytes(payload.tobytes())
    out.write(f"wrote {image.stat().st_size} bytes\n")

    _step(out, "2. A guest memory: two adjacent anonymous regions, a hole, a file-backed region")
    with image.open("r+b") as f:
        mem = GuestMemoryMmap.from_ranges_with_files(
            [
                (0x0, 0x10 * page, None),
                (0x10 * page, 0x10 * page, None),
                (0x100 * page, 0x10 * page, FileOffset(f, 0)),
            ]
        )
    _show(out, "mem", mem)
    for region in mem:
        _show(out, "  region", region)
    _show(out, "mem.last_addr()", mem.last_addr())

    _step(out, "3. Bytes: write and read raw bytes, across the boundary of two regions")
    _show(out, 'mem.write(b"hello, guest!", 0xFFFA)', mem.write(b"hello, guest!", 0xFFFA))
    _show(out, "mem.read_bytes(0xFFFA, 13)", mem.read_bytes(0xFFFA, 13))
    _show(
        out,
        "[len(s) for s in mem.get_slices(0xFFFA, 13)]",
        [len(s) for s in mem.get_slices(0xFFFA, 13)],
    )

    _step(out, "4. Objects: a structured dtype with explicit byte orders (ByteValued)")
    header = np.dtype(
        [("magic", npguest.Be32), ("version", npguest.Le16), ("flags", "<u2"), ("base", Le64)]
    )
    _show(out, "header", header)
    mem.write_obj((0xFEEDFACE, 2, 0x8001, 0x100000), GuestAddress(0xFFFC), header)
    rec = mem.read_obj(GuestAddress(0xFFFC), header)
    _show(out, "mem.read_obj(GuestAddress(0xFFFC), header)", rec)
    _show(out, 'hex(rec["magic"])', hex(rec["magic"]))
    _show(
        out,
        "hex(mem.read_obj(0xFFFC, npguest.Be32))  # the same bytes",
        hex(mem.read_obj(0xFFFC, npguest.Be32)),
    )

    _step(out, "5. Atomics: aligned integer load/store are single accesses")
    mem.store(41, 0x2000, "<u4")
    _show(out, 'mem.load(0x2000, "<u4") + 1', mem.load(0x2000, "<u4") + 1)

    _step(out, "6. Holes follow vm-memory's rules")
    _show(
        out,
        'mem.write(b"12345678", 0x1FFFC)  # partial: 4 bytes before the hole',
        mem.write(b"12345678", 0x1FFFC),
    )
    for code, call in (
        ('mem.write_slice(b"12345678", 0x1FFFC)', lambda: mem.write_slice(b"12345678", 0x1FFFC)),
        ("mem.read_obj(0x20000, Le64)", lambda: mem.read_obj(0x20000, Le64)),
    ):
        try:
            call()
        except (PartialBufferError, InvalidGuestAddressError) as exc:
            _show(out, code)
            out.write(f"{type(exc).__name__}: {exc}\n")

    _step(out, "7. The file-backed region is the file: read it, write it, see it with open()")
    base = 0x100 * page
    _show(out, f"mem.read_bytes({base:#x}, 8)", mem.read_bytes(base, 8))
    mem.write(b"CHANGED!", base + 8)
    _show(
        out,
        f'mem.write(b"CHANGED!", {base + 8:#x}); open(image).read()[:16]',
        image.read_bytes()[:16],
    )

    _step(out, "8. Batch access: a vectorised gather/scatter at many guest addresses")
    rng = np.random.default_rng(7)
    addrs = rng.integers(0, 0x20000 // 8, 10_000, dtype=np.uint64) * np.uint64(8)
    mem.write_objs(addrs, addrs, Le64)  # each slot holds its own address
    values = mem.read_objs(addrs, Le64)
    _show(
        out,
        "mem.write_objs(addrs, addrs, Le64); (mem.read_objs(addrs, Le64) == addrs).all()",
        bool((values == addrs).all()),
    )
    idx, off = mem.locate(np.array([0x10, 0x10010, 0x50000, base], dtype=np.uint64), strict=False)
    _show(
        out,
        "mem.locate([0x10, 0x10010, 0x50000, base], strict=False)",
        (idx.tolist(), off.tolist()),
    )

    _step(out, "9. Hotplug is immutable: insert_region returns a new memory")
    new = mem.insert_region(GuestRegionMmap.from_range(0x40 * page, 0x10 * page))
    _show(out, "mem.num_regions(), new.num_regions()", (mem.num_regions(), new.num_regions()))
    _show(
        out,
        "mem.check_range(0x40000, 16), new.check_range(0x40000, 16)",
        (mem.check_range(0x40000, 16), new.check_range(0x40000, 16)),
    )

    _step(out, "10. Done: close the mappings")
    del new, values
    mem.close()
    _show(out, "mem.close(); mem", mem)


def sample_dump(path: Path) -> None:
    """Write a small sample dump: a QEMU-style ELF file of about 17 MiB.

    The guest has RAM at ``[0, 0xA0000)``, ``[1 MiB, 16 MiB)`` and ``[4 GiB, 4 GiB + 1 MiB)``;
    a kernel banner ``"Linux version 6.1.0-npguest ..."`` at 16 MiB - 4 KiB (virtual
    ``0xffffffff81fff000``, through 4-level page tables rooted at CR3 = ``0x9000``); one
    CPU whose notes record RIP, RSP and CR3; and a VMCOREINFO note.

    Parameters
    ----------
    path : pathlib.Path
        The output file.

    Raises
    ------
    OSError
        The file cannot be written.
    """
    import numpy as np

    from npguest import GuestMemoryMmap, Le64, write_dump
    from npguest.dumps import CpuState, Note
    from npguest.dumps.elf import cpu_notes

    mem = GuestMemoryMmap.from_ranges(
        [(0x0, 0xA0000), (0x100000, 0xF00000), (0x1_0000_0000, 0x100000)]
    )
    rng = np.random.default_rng(2026)
    mem.write_slice(rng.integers(0, 256, 0x80000, dtype=np.uint8), 0x200000)  # "kernel text"
    mem.write_slice(rng.integers(0, 256, 0x40000, dtype=np.uint8), 0x1_0000_0000)
    banner = b"Linux version 6.1.0-npguest (npguest@sample) (gcc 12.2.0) #1 SMP\n\0"
    mem.write_slice(banner, 0xFFF000)
    # 4-level tables: virtual 0xffffffff80000000 + x -> physical x for x < 16 MiB (2 MiB pages)
    pml4, pdpt, pd = 0x9000, 0xA000, 0xB000
    va = 0xFFFF_FFFF_8000_0000
    mem.write_obj(pdpt | 0x3, pml4 + 8 * ((va >> 39) & 511), Le64)
    mem.write_obj(pd | 0x3, pdpt + 8 * ((va >> 30) & 511), Le64)
    mem.write_objs(np.arange(8, dtype=np.uint64) * 0x200000 | 0x83, pd + 8 * np.arange(8), Le64)
    cpu = CpuState(0, {"rip": va + 0x1000000, "rsp": va + 0xFFF000, "cr0": 0x80050033,
                       "cr3": pml4, "cr4": 0x20, "rflags": 0x2})  # fmt: skip
    vmcoreinfo = (
        b"OSRELEASE=6.1.0-npguest\nPAGESIZE=4096\n"
        b"SYMBOL(swapper_pg_dir)=ffffffff80009000\nNUMBER(phys_base)=0\n"
    )
    notes = (*cpu_notes([cpu]), Note("VMCOREINFO", 0, vmcoreinfo, 0))
    write_dump(mem, path, "elf", notes=notes)
    mem.close()


# -- helpers -----------------------------------------------------------------------------
def _positive(text: str) -> int:
    """Parse a length or count that must be at least 1."""
    value = _number(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    """Parse a timeout: a finite number of seconds > 0 (0 would make sockets non-blocking)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


def _page_size(text: str) -> int:
    """Parse a comparison page size: a power of two up to 2 MiB."""
    value = _number(text)
    if value == 0 or value & (value - 1) or value > 1 << 21:
        raise argparse.ArgumentTypeError(f"not a power of two up to 2M: {text!r}")
    return value


def _number(text: str) -> int:
    """Parse an address or length: decimal, 0x hex, optional K/M/G (binary) suffix."""
    scale = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}.get(text[-1:].lower(), 1)
    body = text[:-1] if scale > 1 else text
    try:
        value = int(body.replace("_", ""), 0) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 1 << 64:
        raise argparse.ArgumentTypeError(f"out of the 64-bit range: {text!r}")
    return value


class _Progress:
    """A one-line progress bar on standard error, drawn only when it is a terminal."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.on = self.stream.isatty()
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.on or total <= 0:
            return
        pct = 100 * done // total
        if pct == self.shown:
            return
        self.shown = pct
        bar = "#" * (pct * 30 // 100)
        self.stream.write(
            f"\r{self.label} [{bar:<30}] {pct:3d}% {done / 2**20:,.1f}/{total / 2**20:,.1f} MiB"
        )
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _open(args: argparse.Namespace, path: Path | None = None) -> GuestMemoryMmap:
    from npguest import open_dump
    from npguest.dumps import detect_format

    path = path if path is not None else args.dump
    fmt = args.format or detect_format(path)
    if args.base is None:
        return open_dump(path, format=fmt)
    if fmt != "raw":
        raise ValueError(f"--base applies to raw dumps; {path} is {fmt}")
    return open_dump(path, format=fmt, base=args.base)


# -- commands ----------------------------------------------------------------------------
def _sample_command(args: argparse.Namespace) -> None:
    sample_dump(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")


def _info_command(args: argparse.Namespace) -> None:
    mem = _open(args)
    try:
        print(_info(mem, args.dump))
    finally:
        mem.close()


def _info(mem: GuestMemoryMmap, path: Path) -> str:
    meta = getattr(mem, "metadata", None)
    lines = [f"dump      {path}"]
    if meta is not None:
        lines.append(f"format    {meta.format}")
        if meta.machine:
            lines.append(f"machine   {meta.machine}")
        if meta.page_size:
            lines.append(f"page size {meta.page_size}")
    sizes = (mem.ends - mem.starts).tolist()
    lines.append(f"memory    {sum(sizes):,} bytes in {len(sizes)} regions")
    lines.append("  guest physical range                    size  backing")
    for region, size in zip(mem.iter(), sizes, strict=True):
        start = int(region.start_addr())
        fo = region.file_offset()
        backing = "zeros (not stored)" if fo is None else f"file @ {fo.start():#x}"
        lines.append(f"  {start:#018x}-{start + size - 1:#018x} {size:>12,}  {backing}")
    if meta is None:
        return "\n".join(lines)
    if len(meta.excluded):
        n = int(meta.excluded[:, 1].sum())
        lines.append(f"excluded  {n:,} bytes in {len(meta.excluded)} ranges (holes)")
    for cpu in meta.cpus:
        regs = "  ".join(
            f"{name}={cpu.registers[name]:#x}"
            for name in ("rip", "rsp", "cr0", "cr3", "cr4", "pc", "sp")
            if name in cpu.registers
        )
        lines.append(f"cpu {cpu.index:<5} {regs}")
    if meta.vmcoreinfo:
        lines.append("vmcoreinfo")
        lines += [f"  {k}={v}" for k, v in list(meta.vmcoreinfo.items())[:8]]
        if len(meta.vmcoreinfo) > 8:
            lines.append(f"  ... {len(meta.vmcoreinfo) - 8} more")
    if meta.notes:
        kinds = sorted({f"{n.name}/{n.type}" for n in meta.notes})
        lines.append(f"notes     {len(meta.notes)} ({', '.join(kinds)})")
    return "\n".join(lines)


def _read(mem: GuestMemoryMmap, addr: int, length: int, zero_fill: bool) -> np.ndarray:
    """Read ``length`` bytes; holes raise, or read as zeros with ``zero_fill``."""
    import numpy as np

    _check_length(length)
    if not zero_fill:
        out = np.empty(length, dtype=np.uint8)
        mem.read_slice(out, addr)
        return out
    return _masked(mem, addr, length)[0]


def _check_length(length: int) -> None:
    if length > MAX_SHOW:
        raise ValueError(f"length {length} is over the {MAX_SHOW}-byte limit of one read")


def _masked(mem: GuestMemoryMmap, addr: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Read ``length`` bytes at ``addr``: holes read as 0; also which bytes are backed."""
    import numpy as np

    from npguest.walk import backed_runs

    values = np.zeros(length, dtype=np.uint8)
    valid = np.zeros(length, dtype=bool)
    end = addr + length
    for s, e in backed_runs(mem):
        lo, hi = max(s, addr), min(e, end)
        if lo < hi:
            mem.read_slice(values[lo - addr : hi - addr], lo)
            valid[lo - addr : hi - addr] = True
    return values, valid


def _read_command(args: argparse.Namespace) -> None:
    mem = _open(args)
    try:
        data = _read(mem, args.addr, args.length, args.zero_fill)
    finally:
        mem.close()
    if args.output is not None:
        args.output.write_bytes(data.tobytes())
    else:
        sys.stdout.buffer.write(data.tobytes())
        sys.stdout.flush()


def _hexdump_command(args: argparse.Namespace) -> None:
    from npguest.display import hexdump
    from npguest.errors import InvalidGuestAddressError
    from npguest.walk import backed_runs

    mem = _open(args)
    try:
        end = args.addr + args.length
        if not any(max(s, args.addr) < min(e, end) for s, e in backed_runs(mem)):
            raise InvalidGuestAddressError(args.addr)  # (checked without reading the bytes)
        print(hexdump(mem, args.addr, args.length))
    finally:
        mem.close()


def _find_command(args: argparse.Namespace) -> None:
    if args.hex:
        try:
            pattern = bytes.fromhex(args.pattern)
        except ValueError:
            raise ValueError(f"not a hex byte string: {args.pattern!r}") from None
    else:
        pattern = args.pattern.encode()
    from npguest.scan import find

    mem = _open(args)
    try:
        hits = find(mem, pattern, limit=args.max).tolist()
    finally:
        mem.close()
    for addr in hits:
        print(f"{addr:#018x}")
    print(f"{len(hits)} match{'es' if len(hits) != 1 else ''}", file=sys.stderr)


def _convert_command(args: argparse.Namespace) -> None:
    from npguest import write_dump

    mem = _open(args, args.input)
    try:
        write_dump(mem, args.output, args.to, progress=_Progress("convert"))
    finally:
        mem.close()
    print(f"wrote {args.output} ({args.to}, {args.output.stat().st_size:,} bytes)")


def _diff_command(args: argparse.Namespace) -> int:
    from npguest.pages import diff

    a = _open(args, args.a)
    try:
        b = _open(args, args.b)
        try:
            result = diff(a, b, args.page_size)
        finally:
            b.close()
    finally:
        a.close()
    counts = []
    for label, ranges in zip(
        ("changed", f"only in {args.a}", f"only in {args.b}"), result, strict=True
    ):
        for start, length in ranges.tolist():
            n = length // args.page_size
            end = start + length - 1
            print(f"{start:#018x}-{end:#018x} {n:>8} page{'s' if n > 1 else ' '} {label}")
        counts.append(int(ranges[:, 1].sum()) // args.page_size)
    print(
        f"{counts[0]} pages changed, {counts[1]} only in {args.a}, {counts[2]} only in {args.b}",
        file=sys.stderr,
    )
    return DIFFERENT if any(counts) else 0


def _address(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6addr]:PORT`` too; port 0 picks a free port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _rate(nbytes: int, seconds: float) -> str:
    rate = nbytes / seconds / 2**20 if seconds > 0 else 0.0
    return f"{nbytes:,} bytes in {seconds:.2f} s ({rate:,.1f} MiB/s)"


def _send_command(args: argparse.Namespace) -> None:
    import socket

    from npguest.migration import send, xxh64

    xxh64(b"")  # load the checksum kernel before the clock starts
    mem = _open(args)
    try:
        with socket.create_connection(args.to, timeout=args.timeout) as sock:
            stats = send(mem, sock, progress=True)
    finally:
        mem.close()
    rounds = len(stats.rounds)
    print(f"sent {_rate(stats.bytes, stats.seconds)}, {rounds} round{'s' * (rounds > 1)}",
          file=sys.stderr)  # fmt: skip


def _receive_command(args: argparse.Namespace) -> None:
    import socket
    import time

    from npguest import write_dump
    from npguest.migration import receive, xxh64

    xxh64(b"")  # load the checksum kernel before the clock starts
    with socket.create_server(args.listen) as server:
        server.settimeout(args.timeout)
        host, port = server.getsockname()[:2]
        print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
        conn, peer = server.accept()
    with conn:
        conn.settimeout(args.timeout)
        t0 = time.perf_counter()
        mem = receive(conn, progress=True)
        seconds = time.perf_counter() - t0
    try:
        nbytes = int((mem.ends - mem.starts).sum())
        write_dump(mem, args.out, args.out_format)
    finally:
        mem.close()
    print(f"received {_rate(nbytes, seconds)} from {peer[0]}:{peer[1]}; wrote {args.out} "
          f"({args.out_format})", file=sys.stderr)  # fmt: skip


def _tour_command(args: argparse.Namespace) -> None:
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        tour(args.dir)
        return
    with tempfile.TemporaryDirectory(prefix="npguest-tour-") as tmp:
        tour(Path(tmp))


def _dump_arguments(p: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        p.add_argument(name, type=Path, help="a dump file (a directory for Cloud Hypervisor)")
    from npguest.dumps import FORMATS

    p.add_argument("--format", choices=FORMATS, default=None, help="the dump's format "
                   "(default: detected from its first bytes)")  # fmt: skip
    p.add_argument("--base", type=_number, default=None,
                   help="raw dumps: guest address of the first byte (default 0)")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    from npguest import __version__
    from npguest.dumps import WRITE_FORMATS

    parser = argparse.ArgumentParser(
        prog="npguest",
        description="Guest (virtual machine) physical memory for Python, numpy-native.",
        epilog="Exit status: 0 success, 1 error, 2 usage, 3 diff found differences.",
    )
    parser.add_argument("--version", action="version", version=f"npguest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("sample", help="write a small sample dump (ELF) to try commands on")
    p.add_argument("out", type=Path, help="the file to write, e.g. sample.elf")
    p.set_defaults(func=_sample_command)

    p = sub.add_parser("info", help="format, regions, CPUs and notes of a dump")
    _dump_arguments(p, "dump")
    p.set_defaults(func=_info_command)

    p = sub.add_parser("read", help="write guest memory's raw bytes to stdout (or -o FILE)")
    _dump_arguments(p, "dump")
    p.add_argument("addr", type=_number, help="guest physical address")
    p.add_argument("length", type=_positive, help=f"bytes (at most {MAX_SHOW})")
    p.add_argument("-o", "--output", type=Path, default=None, help="write to FILE")
    p.add_argument("--zero-fill", action="store_true", help="read holes as zeros")
    p.set_defaults(func=_read_command)

    p = sub.add_parser("hexdump", help="hex dump of guest memory (holes show as --)")
    _dump_arguments(p, "dump")
    p.add_argument("addr", type=_number, help="guest physical address")
    p.add_argument("length", type=_positive, help=f"bytes (at most {MAX_SHOW})")
    p.set_defaults(func=_hexdump_command)

    p = sub.add_parser("find", help="guest addresses where a pattern occurs")
    _dump_arguments(p, "dump")
    p.add_argument("pattern", help="text (UTF-8), or hex bytes with --hex")
    p.add_argument("--hex", action="store_true", help="PATTERN is hex, e.g. 'deadbeef'")
    p.add_argument("--max", type=_positive, default=None, help="stop after N matches")
    p.set_defaults(func=_find_command)

    p = sub.add_parser("convert", help="rewrite a dump in another format")
    _dump_arguments(p, "input")
    p.add_argument("output", type=Path, help="the file to write")
    p.add_argument("--to", choices=WRITE_FORMATS, required=True, help="the output format")
    p.set_defaults(func=_convert_command)

    p = sub.add_parser("diff", help="pages that differ between two dumps (exit 3 if any)")
    _dump_arguments(p, "a", "b")
    p.add_argument("--page-size", type=_page_size, default=4096,
                   help="granularity: a power of two up to 2M (default 4096)")  # fmt: skip
    p.set_defaults(func=_diff_command)

    p = sub.add_parser(
        "send",
        help="stream a dump's memory to `npguest receive` over TCP",
        description="Connect to HOST:PORT and stream the dump's guest memory with the "
        "migration protocol of npguest.migration (one stop-and-copy round, XXH64 checksums). "
        "Prints the throughput on stderr.  Example, on loopback: "
        "`npguest receive --listen 127.0.0.1:7777 --out copy.elf` in one shell, then "
        "`npguest send sample.elf --to 127.0.0.1:7777`.",
    )
    _dump_arguments(p, "dump")
    p.add_argument("--to", type=_address, required=True, metavar="HOST:PORT",
                   help="where `npguest receive` listens")  # fmt: skip
    p.add_argument("--timeout", type=_seconds, default=60.0,
                   help="seconds a connect or a blocked write may take (default 60)")  # fmt: skip
    p.set_defaults(func=_send_command)

    p = sub.add_parser(
        "receive",
        help="receive one `npguest send` stream over TCP into a dump file",
        description="Listen on HOST:PORT (port 0: any free port; the address is printed "
        "as `listening on HOST:PORT` on stderr), accept one connection, receive the "
        "stream, verify every checksum and write the memory as a dump.  Prints the "
        "throughput on stderr.",
    )
    p.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT",
                   help="address to listen on, e.g. 127.0.0.1:7777")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="the dump file to write")
    p.add_argument("--out-format", choices=WRITE_FORMATS, default="elf",
                   help="format of --out (default elf: keeps the regions and holes)")  # fmt: skip
    p.add_argument("--timeout", type=_seconds, default=60.0,
                   help="seconds to wait for a sender and for each read (default 60)")  # fmt: skip
    p.set_defaults(func=_receive_command)

    p = sub.add_parser(
        "tour",
        aliases=["demo"],
        help="walk through the API on generated sample data",
        description="Build a small guest memory with a file-backed region on generated "
        "sample data and walk through the API, printing each step.",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="keep the generated sample file in DIR (default: a temporary directory)",
    )
    p.set_defaults(func=_tour_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``npguest`` command.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 on success, 1 on an npguest error, 2 on a usage error, 3 when
        ``diff`` found differences.
    """
    from npguest.errors import GuestMemoryError

    parser = _parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int | None] = args.func
    try:
        status = func(args)
    except BrokenPipeError:  # e.g. `npguest read ... | head`: stop quietly, as cat does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE
    except (GuestMemoryError, OSError, ValueError, OverflowError) as exc:
        print(f"npguest: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("npguest: interrupted", file=sys.stderr)
        return 130
    return status or 0
