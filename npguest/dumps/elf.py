"""QEMU-style ELF core dumps (``dump-guest-memory``, Cloud Hypervisor ``coredump``).

QEMU's ``dump-guest-memory``, ``virsh dump --memory-only`` and Cloud Hypervisor's
``coredump`` write the same shape: an ``ET_CORE`` file whose ``PT_LOAD`` program headers
place file bytes at guest *physical* addresses (``p_paddr``), and whose ``PT_NOTE``
segment carries per-vCPU registers (``"CORE"`` ``NT_PRSTATUS`` and ``"QEMU"``
``QEMUCPUState`` notes) and the guest kernel's ``VMCOREINFO``.  :func:`open_elf` maps
the loads in place; :func:`write_elf` writes the current QEMU layout.  The note helpers
(:func:`parse_notes`, :func:`encode_notes`, :func:`decode_notes`, :func:`cpu_notes`...)
are shared with the kdump format, whose notes blob uses the same encoding.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import NamedTuple

import numpy as np

from ..address import U64_MAX
from ..guest_memory import GuestMemoryMmap
from .dump import (
    CpuState,
    DumpFile,
    DumpMemory,
    DumpMetadata,
    Extent,
    Note,
    Record,
    map_extents,
    open_headers,
    region_chunks,
)
from .raw import Progress, write_sparse

__all__ = [
    "cpu_notes",
    "decode_notes",
    "encode_notes",
    "open_elf",
    "parse_notes",
    "parse_vmcoreinfo",
    "vmcoreinfo_note",
    "write_elf",
]

ELF_MAGIC = b"\x7fELF"
ET_CORE = 4
PT_LOAD = 1
PT_NOTE = 4
SHT_STRTAB = 3
#: ``e_phnum`` value meaning "the count is in ``sh_info`` of section header 0".
PN_XNUM = 0xFFFF
NT_PRSTATUS = 1
#: ``e_machine`` values and the architecture names of :attr:`DumpMetadata.machine`.
MACHINES = {62: "x86_64", 3: "i386", 183: "aarch64", 22: "s390x", 21: "ppc64", 243: "riscv64"}
_EM_BY_NAME = {name: em for em, name in MACHINES.items()}
#: Largest ``PT_NOTE`` payload read at open (real dumps have about 1 KiB per vCPU).
MAX_NOTES_SIZE = 1 << 24
#: The ``.shstrtab`` data QEMU writes at the end of the file.
SHSTRTAB = b"\0.shstrtab\0"


def _ehdr(word: str) -> tuple[tuple[str, str], ...]:
    return (
        ("e_ident", "16s"),
        ("e_type", "H"),
        ("e_machine", "H"),
        ("e_version", "I"),
        ("e_entry", word),
        ("e_phoff", word),
        ("e_shoff", word),
        ("e_flags", "I"),
        ("e_ehsize", "H"),
        ("e_phentsize", "H"),
        ("e_phnum", "H"),
        ("e_shentsize", "H"),
        ("e_shnum", "H"),
        ("e_shstrndx", "H"),
    )


def _shdr(word: str) -> tuple[tuple[str, str], ...]:
    return (
        ("sh_name", "I"),
        ("sh_type", "I"),
        ("sh_flags", word),
        ("sh_addr", word),
        ("sh_offset", word),
        ("sh_size", word),
        ("sh_link", "I"),
        ("sh_info", "I"),
        ("sh_addralign", word),
        ("sh_entsize", word),
    )


_PHDR64 = (
    ("p_type", "I"),
    ("p_flags", "I"),
    *((name, "Q") for name in ("p_offset", "p_vaddr", "p_paddr", "p_filesz", "p_memsz", "p_align")),
)
_PHDR32 = tuple(
    (name, "I")
    for name in (
        "p_type",
        "p_offset",
        "p_vaddr",
        "p_paddr",
        "p_filesz",
        "p_memsz",
        "p_flags",
        "p_align",
    )
)


@dataclass(frozen=True)
class _Elf:
    """The structures of one ELF class and byte order."""

    bits: int
    order: str
    ehdr: Record
    phdr: Record
    shdr: Record

    @property
    def all_ones(self) -> int:
        return (1 << self.bits) - 1


_ELF = {
    (bits, order): _Elf(
        bits,
        order,
        Record(order, _ehdr(word)),
        Record(order, _PHDR64 if bits == 64 else _PHDR32),
        Record(order, _shdr(word)),
    )
    for bits, word in ((64, "Q"), (32, "I"))
    for order in "<>"
}
_CLASS_BITS = {1: 32, 2: 64}
_DATA_ORDER = {1: "<", 2: ">"}
_ENDIANNESS = {"<": "little", ">": "big"}


class _Prstatus(NamedTuple):
    """An ``elf_prstatus`` layout: where ``pr_pid`` and ``pr_reg`` are."""

    size: int
    pid_at: int
    regs_at: int
    code: str  # struct code of one register
    names: tuple[str, ...]


# x86-64: pr_pid u32 @32, 27 u64 registers @112 (user_regs_struct order).
_PRSTATUS64 = _Prstatus(
    336,
    32,
    112,
    "Q",
    (
        *("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx"),
        *("rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base"),
        *("gs_base", "ds", "es", "fs", "gs"),
    ),
)
# i386: pr_pid u32 @24, 17 u32 registers @72.
_PRSTATUS32 = _Prstatus(
    144,
    24,
    72,
    "I",
    (
        *("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "fs", "gs", "orig_eax"),
        *("eip", "cs", "eflags", "esp", "ss"),
    ),
)
_PRSTATUS = {p.size: p for p in (_PRSTATUS64, _PRSTATUS32)}

# QEMUCPUState version 1: 432 bytes, 440 with kernel_gs_base (QEMU >= 5.2).
_QEMU_GPRS = (
    *("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12"),
    *("r13", "r14", "r15", "rip", "rflags"),
)
_QEMU_SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr", "gdt", "idt")
_QEMU_SEGMENT_FIELDS = ("selector", "limit", "flags", "pad", "base")
_QEMU_SEGMENT_CODES = "IIIIQ"
_QEMU_MIN = 432
_QEMU_SIZE = 440
# the same register under the other note's name (prstatus vs QEMUCPUState)
_ALIASES = {"eflags": "rflags", "rflags": "eflags"} | {
    k: v
    for seg in ("cs", "ds", "es", "fs", "gs", "ss")
    for k, v in ((seg, f"{seg}_selector"), (f"{seg}_selector", seg))
}


def _qemu_record(order: str) -> Record:
    return Record(
        order,
        (
            ("version", "I"),
            ("size", "I"),
            *((name, "Q") for name in _QEMU_GPRS),
            *(
                (f"{seg}_{name}", code)
                for seg in _QEMU_SEGMENTS
                for name, code in zip(_QEMU_SEGMENT_FIELDS, _QEMU_SEGMENT_CODES, strict=True)
            ),
            *((f"cr{i}", "Q") for i in range(5)),
            ("kernel_gs_base", "Q"),
        ),
    )


_QEMU_STATE = {order: _qemu_record(order) for order in "<>"}


class _Load(NamedTuple):
    """A ``PT_LOAD`` with file bytes."""

    index: int
    where: int  # file offset of its program header
    paddr: int
    filesz: int
    memsz: int
    offset: int


def open_elf(path: str | os.PathLike[str], *, writable: bool = False) -> DumpMemory:
    """Open a QEMU-style ELF dump (``dump-guest-memory``, Cloud Hypervisor ``coredump``).

    Every ``PT_LOAD`` with file bytes is mapped in place at its ``p_paddr`` (the guest
    physical address; ``p_vaddr`` is ignored, it is 0 in Cloud Hypervisor dumps and a
    virtual address in ``-p`` dumps).  Loads a ``BEGIN LENGTH`` filter left out
    (``p_filesz == 0`` or ``p_offset == ~0``) are skipped.  A ``p_filesz < p_memsz`` tail
    is mapped as anonymous zeros and listed in ``metadata.zero_ranges``, unless another
    load stores bytes there (``-p`` clamps a mapping at the end of its RAM block, and the
    next block may follow).  Loads that overlap are merged when they map the same guest
    addresses to the same file bytes (``-p`` writes one per virtual mapping of a block).
    Notes are parsed into ``metadata.notes``, ``cpus`` and ``vmcoreinfo``.

    Parameters
    ----------
    path : str or os.PathLike
        The dump (ELFCLASS64 or ELFCLASS32, either byte order).
    writable : bool, optional
        Map the file writable, so writes change the dump.  Default read-only.

    Returns
    -------
    DumpMemory
        The memory; ``metadata.extra`` holds ``e_machine``, ``class`` (32 or 64),
        ``endianness``, ``e_phoff``, ``e_shoff``, ``phnum`` and the counts of
        ``skipped_loads`` and ``merged_loads``.

    Raises
    ------
    DumpFormatError
        The file is not an ELF core file, or a header, program header or note is
        malformed: two loads map one guest address to different file bytes, a load runs
        past the end of the file or of the address space, zero tails add up to more than
        the file's size, or no load has file bytes.
    MmapRegionError
        The file cannot be opened or mapped.

    Examples
    --------
    >>> import os, tempfile, npguest
    >>> from npguest.dumps.dump import CpuState
    >>> mem = npguest.GuestMemoryMmap.from_ranges([(0x0, 0x3000), (0x100000, 0x1000)])
    >>> mem.write(b"guest", 0x100000)
    5
    >>> path = os.path.join(tempfile.mkdtemp(), "vmcore.elf")
    >>> write_elf(mem, path, notes=cpu_notes([CpuState(0, {"rip": 0xFFF0, "cr3": 0x9000})]))
    >>> with open_elf(path) as dump:
    ...     dump.read_bytes(0x100000, 5), hex(dump.metadata.cr3), dump.metadata.machine
    (b'guest', '0x9000', 'x86_64')
    """
    with open_headers(path) as dump:
        extents, metadata = _read_layout(dump)
    return map_extents(path, extents, metadata, writable=writable)


def _read_layout(dump: DumpFile) -> tuple[list[Extent], DumpMetadata]:
    ident = dump.read(0, 16, "e_ident")
    if ident[:4] != ELF_MAGIC:
        raise dump.error(0, "e_ident magic", f"{ident[:4]!r} is not {ELF_MAGIC!r}")
    if ident[4] not in _CLASS_BITS:
        raise dump.error(4, "EI_CLASS", f"{ident[4]} is neither ELFCLASS32 (1) nor ELFCLASS64 (2)")
    if ident[5] not in _DATA_ORDER:
        raise dump.error(5, "EI_DATA", f"{ident[5]} is neither ELFDATA2LSB (1) nor ELFDATA2MSB (2)")
    elf = _ELF[_CLASS_BITS[ident[4]], _DATA_ORDER[ident[5]]]
    eh = elf.ehdr.read(dump, 0, "ELF header")
    at = elf.ehdr.offsets
    if eh["e_type"] != ET_CORE:
        raise dump.error(at["e_type"], "e_type", f"{eh['e_type']} is not ET_CORE ({ET_CORE})")
    if eh["e_phentsize"] != elf.phdr.size:
        raise dump.error(
            at["e_phentsize"],
            "e_phentsize",
            f"{eh['e_phentsize']}: ELF{elf.bits} program headers are {elf.phdr.size} bytes",
        )
    phnum, phnum_field, phnum_at = eh["e_phnum"], "e_phnum", at["e_phnum"]
    if phnum == PN_XNUM:
        phnum, phnum_field, phnum_at = _extended_phnum(dump, elf, eh)
    phoff = eh["e_phoff"]
    if phnum == 0:
        raise dump.error(phnum_at, phnum_field, "no program headers")
    table_size = phnum * elf.phdr.size
    if table_size > dump.size:
        raise dump.error(
            phnum_at, phnum_field, f"{phnum} program headers are more than the file holds"
        )
    if phoff < elf.ehdr.size or phoff + table_size > dump.size:
        raise dump.error(
            at["e_phoff"],
            "e_phoff",
            f"{phnum} program headers at {phoff:#x} are not between the ELF header and the "
            f"end of the {dump.size}-byte file",
        )
    table = dump.read(phoff, table_size, "program headers")
    loads: list[_Load] = []
    notes: list[Note] = []
    skipped = 0
    for i, values in enumerate(elf.phdr.struct.iter_unpack(table)):
        ph = dict(zip(elf.phdr.names, values, strict=True))
        where = phoff + i * elf.phdr.size
        if ph["p_type"] == PT_NOTE and ph["p_filesz"]:
            notes += parse_notes(
                dump,
                ph["p_offset"],
                ph["p_filesz"],
                elf.order,
                field=f"phdr[{i}] (PT_NOTE)",
                where=where,
            )
        elif ph["p_type"] == PT_LOAD:
            if ph["p_filesz"] == 0 or ph["p_offset"] == elf.all_ones:
                skipped += 1
                continue
            loads.append(_check_load(dump, elf, i, where, ph))
    extents, zero_ranges, merged = _layout(dump, loads)
    machine = MACHINES.get(eh["e_machine"])
    cpus, vmcoreinfo = decode_notes(notes, elf.order, machine)
    metadata = DumpMetadata(
        "elf",
        dump.path,
        machine=machine,
        cpus=cpus,
        vmcoreinfo=vmcoreinfo,
        notes=tuple(notes),
        zero_ranges=zero_ranges,
        extra={
            "e_machine": eh["e_machine"],
            "class": elf.bits,
            "endianness": _ENDIANNESS[elf.order],
            "e_phoff": phoff,
            "e_shoff": eh["e_shoff"],
            "phnum": phnum,
            "skipped_loads": skipped,
            "merged_loads": merged,
        },
    )
    return extents, metadata


def _extended_phnum(dump: DumpFile, elf: _Elf, eh: dict[str, int]) -> tuple[int, str, int]:
    """Return the program-header count of a PN_XNUM file: ``sh_info`` of section header 0."""
    at = elf.ehdr.offsets
    if eh["e_shoff"] == 0:
        raise dump.error(
            at["e_phnum"], "e_phnum", "PN_XNUM (0xffff) but no section header holds the count"
        )
    if eh["e_shentsize"] != elf.shdr.size:
        raise dump.error(
            at["e_shentsize"],
            "e_shentsize",
            f"{eh['e_shentsize']}: ELF{elf.bits} section headers are {elf.shdr.size} bytes",
        )
    shdr0 = elf.shdr.read(dump, eh["e_shoff"], "section header 0 (e_shoff)")
    return shdr0["sh_info"], "shdr[0].sh_info", eh["e_shoff"] + elf.shdr.offsets["sh_info"]


def _check_load(dump: DumpFile, elf: _Elf, i: int, where: int, ph: dict[str, int]) -> _Load:
    """Validate a ``PT_LOAD`` with file bytes against the file and the address space."""
    at = {name: where + off for name, off in elf.phdr.offsets.items()}
    paddr, filesz, memsz, offset = ph["p_paddr"], ph["p_filesz"], ph["p_memsz"], ph["p_offset"]
    if filesz > memsz:
        raise dump.error(
            at["p_filesz"], f"phdr[{i}].p_filesz", f"{filesz} bytes exceed p_memsz ({memsz})"
        )
    if paddr + memsz - 1 > U64_MAX:
        raise dump.error(
            at["p_memsz"],
            f"phdr[{i}].p_memsz",
            f"{memsz} bytes at {paddr:#x} wrap past the end of memory",
        )
    if offset + filesz > dump.size:
        raise dump.error(
            at["p_offset"],
            f"phdr[{i}].p_offset",
            f"{filesz} bytes at file offset {offset:#x} run past the end of the "
            f"{dump.size}-byte file",
        )
    return _Load(i, where, paddr, filesz, memsz, offset)


def _layout(
    dump: DumpFile, loads: list[_Load]
) -> tuple[list[Extent], tuple[tuple[int, int], ...], int]:
    """Turn loads into extents: file runs (overlaps merged) and zero tails (file runs win).

    Returns the extents, the zero ranges and the number of loads merged into another.
    """
    runs: list[_Load] = []  # disjoint, ascending; offset - paddr is each run's file delta
    merged = 0
    for load in sorted(loads, key=lambda ld: (ld.paddr, ld.index)):
        if runs and load.paddr < runs[-1].paddr + runs[-1].filesz:
            run = runs[-1]
            if load.offset - load.paddr != run.offset - run.paddr:
                raise dump.error(
                    load.where,
                    f"phdr[{load.index}]",
                    f"PT_LOAD of {load.filesz} bytes at gpa {load.paddr:#x} from file offset "
                    f"{load.offset:#x} overlaps phdr[{run.index}] (gpa {run.paddr:#x}, file "
                    f"offset {run.offset:#x}) with different file bytes",
                )
            merged += 1
            end = max(run.paddr + run.filesz, load.paddr + load.filesz)
            runs[-1] = run._replace(filesz=end - run.paddr)
        else:
            runs.append(load)
    zeros = _zero_pieces(runs, loads)
    total = 0
    for start, end, load in zeros:
        total += end - start
        if total > dump.size:
            raise dump.error(
                load.where,
                f"phdr[{load.index}].p_memsz",
                f"zero tails add up to {total} bytes, more than the {dump.size}-byte file",
            )
    extents = [Extent(r.paddr, r.filesz, r.offset, f"phdr[{r.index}]", r.where) for r in runs]
    extents += [
        Extent(start, end - start, None, f"phdr[{ld.index}].p_memsz", ld.where)
        for start, end, ld in zeros
    ]
    return extents, tuple((start, end - start) for start, end, _ in zeros), merged


def _zero_pieces(runs: list[_Load], loads: list[_Load]) -> list[tuple[int, int, _Load]]:
    """Return the union of the loads' zero tails minus the file runs, as ``(start, end, load)``."""
    tails = sorted(
        (ld.paddr + ld.filesz, ld.paddr + ld.memsz, ld) for ld in loads if ld.filesz < ld.memsz
    )
    union: list[tuple[int, int, _Load]] = []
    for start, end, load in tails:
        if union and start <= union[-1][1]:
            union[-1] = (union[-1][0], max(union[-1][1], end), union[-1][2])
        else:
            union.append((start, end, load))
    pieces = []
    j = 0
    for start, end, load in union:
        while j < len(runs) and runs[j].paddr + runs[j].filesz <= start:
            j += 1
        k = j
        while start < end:
            if k < len(runs) and runs[k].paddr < end:
                if runs[k].paddr > start:
                    pieces.append((start, runs[k].paddr, load))
                start = max(start, runs[k].paddr + runs[k].filesz)
                k += 1
            else:
                pieces.append((start, end, load))
                break
    return pieces


def parse_notes(
    dump: DumpFile,
    offset: int,
    size: int,
    byteorder: str = "<",
    *,
    field: str = "notes",
    where: int | None = None,
) -> tuple[Note, ...]:
    """Read the ELF notes in ``[offset, offset + size)`` of a dump.

    Each note is a 12-byte header (``n_namesz``, ``n_descsz``, ``n_type``), the name and
    the descriptor, each padded to 4 bytes.  A header with ``n_namesz == 0`` (or fewer
    than 12 zero bytes) ends the list: the rest is padding.

    Parameters
    ----------
    dump : DumpFile
        The open dump.
    offset, size : int
        The notes' file span (at most :data:`MAX_NOTES_SIZE` bytes).
    byteorder : str, optional
        ``"<"`` or ``">"``, the dump's byte order.
    field : str, optional
        The header field that declared the span, for errors about the span itself.
    where : int, optional
        That field's file offset (default: ``offset``).

    Returns
    -------
    tuple of Note
        The notes, in file order, with their file offsets.

    Raises
    ------
    DumpFormatError
        The span runs past the end of the file or is too large, or a note runs past its
        end (names ``note[k] n_namesz`` or ``n_descsz`` and the note's offset).
    """
    where = offset if where is None else where
    if size > MAX_NOTES_SIZE:
        raise dump.error(where, field, f"{size} bytes of notes (at most {MAX_NOTES_SIZE})")
    if offset + size > dump.size:
        raise dump.error(
            where,
            field,
            f"{size} bytes of notes at file offset {offset:#x} run past the end of the "
            f"{dump.size}-byte file",
        )
    blob = dump.read(offset, size, field)
    header = struct.Struct(byteorder + "III")
    notes = []
    pos = 0
    while pos < size:
        here = offset + pos
        if size - pos < header.size:
            if any(blob[pos:]):
                raise dump.error(here, f"note[{len(notes)}]", "truncated note header")
            break
        namesz, descsz, ntype = header.unpack_from(blob, pos)
        if namesz == 0:
            break
        name_end = pos + header.size + namesz
        if name_end > size:
            raise dump.error(
                here, f"note[{len(notes)}] n_namesz", f"a {namesz}-byte name runs past the notes"
            )
        desc_at = pos + header.size + _pad4(namesz)
        if desc_at + descsz > size:
            raise dump.error(
                here + 4,
                f"note[{len(notes)}] n_descsz",
                f"a {descsz}-byte descriptor runs past the notes",
            )
        name = blob[pos + header.size : name_end].rstrip(b"\0").decode("latin-1")
        notes.append(Note(name, ntype, blob[desc_at : desc_at + descsz], here))
        pos = desc_at + _pad4(descsz)
    return tuple(notes)


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def encode_notes(notes: Iterable[Note], byteorder: str = "<") -> bytes:
    r"""Encode notes as an ELF ``PT_NOTE`` payload (or a kdump notes blob).

    Parameters
    ----------
    notes : iterable of Note
        The notes (their ``offset`` is ignored).
    byteorder : str, optional
        ``"<"`` or ``">"``.

    Returns
    -------
    bytes
        Each note's header, NUL-terminated name and descriptor, padded to 4 bytes.

    Examples
    --------
    >>> encode_notes([Note("QEMU", 0, b"\x01\x00\x00\x00", 0)]).hex()
    '05000000040000000000000051454d550000000001000000'
    """
    out = bytearray()
    header = struct.Struct(byteorder + "III")
    for note in notes:
        name = note.name.encode("latin-1") + b"\0"
        out += header.pack(len(name), len(note.desc), note.type)
        out += name.ljust(_pad4(len(name)), b"\0")
        out += note.desc.ljust(_pad4(len(note.desc)), b"\0")
    return bytes(out)


def parse_vmcoreinfo(text: bytes) -> dict[str, str]:
    r"""Parse VMCOREINFO text: ``KEY=VALUE`` lines (others ignored, NUL padding dropped).

    Parameters
    ----------
    text : bytes
        The note's descriptor, or kdump's VMCOREINFO text.

    Returns
    -------
    dict of str to str
        Values by key (``"OSRELEASE"``, ``"SYMBOL(swapper_pg_dir)"``...).

    Examples
    --------
    >>> parse_vmcoreinfo(b"OSRELEASE=6.1.0\nPAGESIZE=4096\n\0\0")
    {'OSRELEASE': '6.1.0', 'PAGESIZE': '4096'}
    """
    info = {}
    for line in text.split(b"\0", 1)[0].decode("latin-1").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key] = value
    return info


def decode_notes(
    notes: Iterable[Note], byteorder: str = "<", machine: str | None = "x86_64"
) -> tuple[tuple[CpuState, ...], dict[str, str]]:
    """Decode CPU registers and VMCOREINFO from a dump's notes.

    CPU *k* combines the *k*-th ``"CORE"`` ``NT_PRSTATUS`` note (x86 machines: the
    336-byte x86-64 or the 144-byte i386 layout; registers by their ``user_regs_struct``
    names, plus ``pr_pid``) and the *k*-th ``"QEMU"`` ``QEMUCPUState`` version-1 note
    (``rax``..``r15``, ``rip``, ``rflags``, ``cs_selector``/``cs_limit``/``cs_flags``/
    ``cs_base`` for each of ``cs ds es fs gs ss ldt tr gdt idt``, ``cr0``..``cr4``, and
    ``kernel_gs_base`` when recorded), whose values win where both name a register.
    Notes of other layouts are left undecoded (they stay in ``metadata.notes``).

    Parameters
    ----------
    notes : iterable of Note
        The notes.
    byteorder : str, optional
        ``"<"`` or ``">"``, the dump's byte order.
    machine : str or None, optional
        The architecture (``NT_PRSTATUS`` is decoded for ``"x86_64"`` and ``"i386"``).

    Returns
    -------
    tuple
        ``(cpus, vmcoreinfo)``: a tuple of :class:`CpuState` and a dict of the
        ``"VMCOREINFO"`` notes' lines.

    Examples
    --------
    >>> cpus, info = decode_notes(cpu_notes([CpuState(0, {"rip": 0x1000, "cr3": 0x5000})]))
    >>> hex(cpus[0].registers["rip"]), hex(cpus[0].cr3), info
    ('0x1000', '0x5000', {})
    """
    cores: list[dict[str, int]] = []
    states: list[dict[str, int]] = []
    vmcoreinfo: dict[str, str] = {}
    for note in notes:
        if note.name == "CORE" and note.type == NT_PRSTATUS and machine in ("x86_64", "i386"):
            if len(note.desc) in _PRSTATUS:
                cores.append(_decode_prstatus(note.desc, byteorder))
        elif note.name == "QEMU" and note.type == 0:
            state = _decode_qemu_state(note.desc, byteorder)
            if state is not None:
                states.append(state)
        elif note.name == "VMCOREINFO":
            vmcoreinfo.update(parse_vmcoreinfo(note.desc))
    cpus = tuple(
        CpuState(
            k, {**(cores[k] if k < len(cores) else {}), **(states[k] if k < len(states) else {})}
        )
        for k in range(max(len(cores), len(states)))
    )
    return cpus, vmcoreinfo


def _decode_prstatus(desc: bytes, byteorder: str) -> dict[str, int]:
    layout = _PRSTATUS[len(desc)]
    fmt = f"{byteorder}{len(layout.names)}{layout.code}"
    out = dict(zip(layout.names, struct.unpack_from(fmt, desc, layout.regs_at), strict=True))
    out["pr_pid"] = struct.unpack_from(byteorder + "I", desc, layout.pid_at)[0]
    return out


def _decode_qemu_state(desc: bytes, byteorder: str) -> dict[str, int] | None:
    record = _QEMU_STATE[byteorder]
    if len(desc) < _QEMU_MIN:
        return None
    values = dict(
        zip(
            record.names,
            record.struct.unpack(desc[: record.size].ljust(record.size, b"\0")),
            strict=True,
        )
    )
    if values["version"] != 1 or values["size"] < _QEMU_MIN:
        return None
    if min(values["size"], len(desc)) < _QEMU_SIZE:
        del values["kernel_gs_base"]
    for key in ("version", "size", *(f"{seg}_pad" for seg in _QEMU_SEGMENTS)):
        del values[key]
    return values


def _register(registers: Mapping[str, int], name: str) -> int:
    """``registers[name]``, or its alias (``eflags``/``rflags``, ``cs``/``cs_selector``), or 0."""
    return registers.get(name, registers.get(_ALIASES.get(name, name), 0))


def cpu_notes(cpus: Iterable[CpuState], byteorder: str = "<") -> tuple[Note, ...]:
    """Build QEMU's x86-64 notes for ``cpus``: ``"CORE"`` and ``"QEMU"`` notes.

    A ``"CORE"`` ``NT_PRSTATUS`` note per CPU comes first, then a ``"QEMU"``
    ``QEMUCPUState`` note (version 1, 440 bytes, as QEMU >= 5.2 writes) per CPU.
    Registers are taken by the names :func:`decode_notes` gives (missing ones are 0;
    ``eflags``/``rflags`` and ``cs``/``cs_selector`` stand in for each other);
    ``pr_pid`` defaults to the CPU index + 1, as QEMU writes it.

    Parameters
    ----------
    cpus : iterable of CpuState
        The vCPUs.
    byteorder : str, optional
        ``"<"`` or ``">"``.

    Returns
    -------
    tuple of Note
        The notes (``offset`` 0), for :func:`write_elf` or :func:`encode_notes`.

    Examples
    --------
    >>> [(n.name, n.type, len(n.desc)) for n in cpu_notes([CpuState(0, {"cr3": 0x1000})])]
    [('CORE', 1, 336), ('QEMU', 0, 440)]
    """
    layout = _PRSTATUS64
    record = _QEMU_STATE[byteorder]
    cores = []
    states = []
    for cpu in cpus:
        regs = cpu.registers
        desc = bytearray(layout.size)
        struct.pack_into(byteorder + "I", desc, layout.pid_at, regs.get("pr_pid", cpu.index + 1))
        struct.pack_into(
            f"{byteorder}{len(layout.names)}{layout.code}",
            desc,
            layout.regs_at,
            *(_register(regs, name) for name in layout.names),
        )
        cores.append(Note("CORE", NT_PRSTATUS, bytes(desc), 0))
        values = {name: _register(regs, name) for name in record.names}
        values.update(version=1, size=record.size)
        states.append(Note("QEMU", 0, record.pack(**values), 0))
    return tuple(cores + states)


def vmcoreinfo_note(info: Mapping[str, str]) -> Note:
    r"""Build a ``"VMCOREINFO"`` note of ``KEY=VALUE`` lines.

    Parameters
    ----------
    info : Mapping of str to str
        The values (``{"OSRELEASE": "6.1.0", "PAGESIZE": "4096"}``).

    Returns
    -------
    Note
        The note (``offset`` 0).

    Examples
    --------
    >>> vmcoreinfo_note({"PAGESIZE": "4096"}).desc
    b'PAGESIZE=4096\n'
    """
    text = "".join(f"{key}={value}\n" for key, value in info.items())
    return Note("VMCOREINFO", 0, text.encode("latin-1"), 0)


def write_elf(
    mem: GuestMemoryMmap,
    path: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    notes: Sequence[Note] | None = None,
) -> None:
    """Write a memory as a QEMU ``dump-guest-memory`` ELF (the current, 7.2-era layout).

    The file is ``Ehdr | 2 Shdrs | Phdrs | notes | memory | ".shstrtab"``: a ``PT_NOTE``
    (when there are notes) then one ``PT_LOAD`` per region in ascending guest address,
    with ``p_vaddr = p_paddr``, ``p_filesz = p_memsz``, flags and align 0, the regions'
    bytes back to back (zero blocks left as file-system holes), and ``PN_XNUM`` when
    there are 0xFFFF program headers or more.  The class is ELFCLASS64; the machine and
    byte order are those of a :class:`DumpMemory`'s metadata (``machine``,
    ``extra["endianness"]``), else x86-64 little-endian.

    Parameters
    ----------
    mem : GuestMemoryMmap
        The memory (streamed region by region in bounded pieces).
    path : str or os.PathLike
        The output file (replaced).
    progress : callable, optional
        Called as ``progress(done_bytes, total_bytes)`` after each piece of memory.
    notes : sequence of Note, optional
        The notes to write (e.g. :func:`cpu_notes` + :func:`vmcoreinfo_note`); default:
        a :class:`DumpMemory`'s ``metadata.notes`` unchanged (so ELF to ELF keeps the CPU
        state), none for other memories.

    Raises
    ------
    ValueError
        The memory is empty.
    OSError
        The file cannot be written.
    """
    if mem.num_regions() == 0:
        raise ValueError("cannot write an empty memory")
    meta = mem.metadata if isinstance(mem, DumpMemory) else None
    if notes is None:
        notes = meta.notes if meta is not None else ()
    machine = meta.machine if meta is not None and meta.machine in _EM_BY_NAME else "x86_64"
    default_endianness = "big" if machine == "s390x" else "little"
    endianness = meta.extra.get("endianness", default_endianness) if meta else default_endianness
    order = ">" if endianness == "big" else "<"
    elf = _ELF[64, order]
    starts = mem.starts.tolist()
    sizes = (mem.ends - mem.starts).tolist()
    note_blob = encode_notes(notes, order)
    phnum = len(starts) + (1 if note_blob else 0)
    phoff = elf.ehdr.size + 2 * elf.shdr.size
    notes_off = phoff + phnum * elf.phdr.size
    mem_off = notes_off + len(note_blob)
    total = sum(sizes)
    strtab_off = mem_off + total
    header = bytearray(
        elf.ehdr.pack(
            e_ident=ELF_MAGIC + bytes([2, 2 if order == ">" else 1, 1]),
            e_type=ET_CORE,
            e_machine=_EM_BY_NAME[machine],
            e_version=1,
            e_phoff=phoff,
            e_shoff=elf.ehdr.size,
            e_ehsize=elf.ehdr.size,
            e_phentsize=elf.phdr.size,
            e_phnum=min(phnum, PN_XNUM),
            e_shentsize=elf.shdr.size,
            e_shnum=2,
            e_shstrndx=1,
        )
    )
    header += elf.shdr.pack(sh_info=phnum if phnum >= PN_XNUM else 0)
    header += elf.shdr.pack(
        sh_name=1, sh_type=SHT_STRTAB, sh_offset=strtab_off, sh_size=len(SHSTRTAB), sh_addralign=1
    )
    if note_blob:
        size = len(note_blob)
        header += elf.phdr.pack(p_type=PT_NOTE, p_offset=notes_off, p_filesz=size, p_memsz=size)
    offsets = accumulate(sizes[:-1], initial=mem_off)
    for gpa, size, offset in zip(starts, sizes, offsets, strict=True):
        header += elf.phdr.pack(
            p_type=PT_LOAD, p_offset=offset, p_vaddr=gpa, p_paddr=gpa, p_filesz=size, p_memsz=size
        )
    header += note_blob
    done = 0
    with open(path, "wb") as f:
        fd = f.fileno()
        os.ftruncate(fd, strtab_off + len(SHSTRTAB))
        write_sparse(fd, np.frombuffer(bytes(header), np.uint8), 0)
        for _, data in region_chunks(mem):
            write_sparse(fd, data, mem_off + done)
            done += data.shape[0]
            if progress is not None:
                progress(done, total)
        write_sparse(fd, np.frombuffer(SHSTRTAB, np.uint8), strtab_off)
