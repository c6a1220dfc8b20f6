"""The ``npguest`` command (also ``python -m npguest``).

Subcommands:

``tour`` (alias ``demo``)
    Build a small guest memory with a file-backed region on generated sample data and
    walk through the API, printing each step and what it returned.

Exit status: 0 on success, 1 when npguest reports an error (one line on stderr),
2 for bad command-line usage.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

__all__ = ["main", "tour"]


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


def _tour_command(args: argparse.Namespace) -> None:
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        tour(args.dir)
        return
    with tempfile.TemporaryDirectory(prefix="npguest-tour-") as tmp:
        tour(Path(tmp))


def _parser() -> argparse.ArgumentParser:
    from npguest import __version__

    parser = argparse.ArgumentParser(
        prog="npguest",
        description="Guest (virtual machine) physical memory for Python, numpy-native.",
    )
    parser.add_argument("--version", action="version", version=f"npguest {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
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
        The exit status: 0 on success, 1 on an npguest error, 2 on a usage error.
    """
    from npguest.errors import GuestMemoryError

    parser = _parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (GuestMemoryError, OSError) as exc:
        print(f"npguest: error: {exc}", file=sys.stderr)
        return 1
    return 0
