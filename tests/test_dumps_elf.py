"""QEMU-style ELF dumps: npguest.dumps.elf (reader, writer, notes)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import pytest
from dump_support import (
    FUZZ,
    PAGE,
    assert_holds,
    assert_only_dump_errors,
    layout_of,
    mutations,
    sample_memory,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import npguest
from npguest import GuestMemoryMmap
from npguest.dumps import elf
from npguest.dumps.dump import CpuState, Note
from npguest.dumps.elf import (
    cpu_notes,
    decode_notes,
    encode_notes,
    open_elf,
    parse_vmcoreinfo,
    vmcoreinfo_note,
    write_elf,
)
from npguest.errors import DumpFormatError, InvalidGuestAddressError

PT_LOAD, PT_NOTE = 1, 4
U64 = (1 << 64) - 1

# --- an independent ELF builder (the oracle for hand-made files) --------------------------


@dataclass
class Seg:
    """A program header for :func:`build`; ``data`` is placed after the headers."""

    paddr: int = 0
    data: bytes = b""
    memsz: int | None = None  # default len(data)
    vaddr: int | None = None  # default paddr
    type: int = PT_LOAD
    offset: int | None = None  # default: where data was placed
    filesz: int | None = None  # default len(data)
    same_as: int | None = None  # share the file bytes of segment j...
    at: int = 0  # ...from this far into them


def build(
    segs,
    *,
    bits=64,
    order="<",
    machine=62,
    old=False,
    xnum=False,
    shentsize=None,
):
    """Return ``(blob, phoff, offsets)``: an ELF core file in QEMU's current layout
    (``old``: Ehdr | Phdrs | [null Shdr if xnum] | data) with ``segs`` as program headers."""
    w = "Q" if bits == 64 else "I"
    ehdr = struct.Struct(order + "16sHHI" + w * 3 + "IHHHHHH")
    phdr = struct.Struct(order + ("IIQQQQQQ" if bits == 64 else "IIIIIIII"))
    shdr = struct.Struct(order + "II" + w * 4 + "II" + w * 2)
    n = len(segs)
    shnum = (1 if xnum else 0) if old else 2
    phoff = ehdr.size if old else ehdr.size + 2 * shdr.size
    shoff = (phoff + n * phdr.size if xnum else 0) if old else ehdr.size
    pos = phoff + n * phdr.size + (shdr.size if old and xnum else 0)
    data = bytearray()
    offsets = []
    for s in segs:
        offsets.append(pos + len(data))
        data += s.data
    blob = bytearray(
        ehdr.pack(
            b"\x7fELF" + bytes([2 if bits == 64 else 1, 1 if order == "<" else 2, 1]) + bytes(9),
            4,  # ET_CORE
            machine,
            1,
            0,
            phoff,
            shoff,
            0,
            ehdr.size,
            phdr.size,
            0xFFFF if xnum else n,
            shentsize or shdr.size,
            shnum,
            max(shnum - 1, 0),
        )
    )
    strtab_off = pos + len(data)
    sh0 = shdr.pack(0, 0, 0, 0, 0, 0, 0, n if xnum else 0, 0, 0)
    sh1 = shdr.pack(1, 3, 0, 0, strtab_off, 11, 0, 0, 1, 0)
    if not old:
        blob += sh0 + sh1
    for i, s in enumerate(segs):
        j = i if s.same_as is None else s.same_as
        off = s.offset if s.offset is not None else offsets[j] + s.at
        filesz = s.filesz if s.filesz is not None else len(segs[j].data) - s.at
        memsz = s.memsz if s.memsz is not None else filesz
        vaddr = s.paddr if s.vaddr is None else s.vaddr
        if bits == 64:
            blob += phdr.pack(s.type, 0, off, vaddr, s.paddr, filesz, memsz, 0)
        else:
            blob += phdr.pack(s.type, off, vaddr, s.paddr, filesz, memsz, 0, 0)
    if old and xnum:
        blob += sh0
    blob += data
    if not old:
        blob += b"\0.shstrtab\0"
    return bytes(blob), phoff, offsets


def note_bytes(name, ntype, desc, order="<"):
    """One ELF note, encoded by hand."""
    raw = name.encode() + b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack(order + "III", len(raw), len(desc), ntype) + pad(raw) + pad(desc)


def open_blob(tmp_path, blob, name="dump.elf", **kw):
    path = tmp_path / name
    path.write_bytes(blob)
    return open_elf(path, **kw)


def randbytes(n, seed=1):
    return np.random.default_rng(seed).integers(1, 256, n, dtype=np.uint8).tobytes()


def read_headers(path):
    """Parse a little-endian ELF64 written by write_elf, by hand."""
    raw = path.read_bytes()
    eh = struct.unpack_from("<16sHHIQQQIHHHHHH", raw, 0)
    phoff, shoff, phnum, shnum = eh[5], eh[6], eh[10], eh[12]
    shdrs = [struct.unpack_from("<IIQQQQIIQQ", raw, shoff + 64 * i) for i in range(shnum)]
    if phnum == 0xFFFF:
        phnum = shdrs[0][7]
    phdrs = [struct.unpack_from("<IIQQQQQQ", raw, phoff + 56 * i) for i in range(phnum)]
    return raw, eh, shdrs, phdrs


# --- round trips ---------------------------------------------------------------------------

SIZES = [1, 0x7FF, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE, 0x10000 + 0x123]
GAPS = [0, 0, 1, PAGE, 0x10000, 0x7654321]


@st.composite
def layouts(draw):
    gpa = draw(st.sampled_from([0, 1, PAGE, 0xA0000, (1 << 32) - PAGE]))
    out = []
    for _ in range(draw(st.integers(1, 6))):
        size = draw(st.sampled_from(SIZES))
        out.append((gpa, size))
        gpa += size + draw(st.sampled_from(GAPS))
    return out


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(layout=layouts(), seed=st.integers(0, 3))
def test_round_trip_random_layouts(tmp_path, layout, seed):
    mem, model = sample_memory(layout, seed)
    path = tmp_path / "rt.elf"
    with mem:
        write_elf(mem, path)
    with open_elf(path) as dump:
        assert layout_of(dump) == layout
        assert_holds(dump, model)
        assert dump.metadata.format == "elf"
        assert dump.metadata.machine == "x86_64"
        assert dump.metadata.page_size is None
        assert dump.metadata.zero_ranges == ()
        assert dump.metadata.notes == ()
        assert dump.metadata.extra["class"] == 64
        assert dump.metadata.extra["endianness"] == "little"


def test_writer_layout_is_qemus(tmp_path):
    layout = [(0, 0xA0000), (0x100000, 0x1234), (1 << 32, PAGE)]
    mem, model = sample_memory(layout)
    notes = cpu_notes([CpuState(0, {"rip": 0xFFF0}), CpuState(1, {"rip": 0x1000})])
    path = tmp_path / "q.elf"
    with mem:
        write_elf(mem, path, notes=notes)
    raw, eh, shdrs, phdrs = read_headers(path)
    ident, e_type, machine, _, _, phoff, shoff, _, ehsize, phentsize, phnum, *_ = eh
    assert ident == b"\x7fELF\x02\x01\x01" + bytes(9)
    assert (e_type, machine, ehsize, phentsize) == (4, 62, 64, 56)
    assert (shoff, phoff, phnum, eh[11], eh[12], eh[13]) == (64, 192, 4, 64, 2, 1)
    assert shdrs[0] == (0,) * 10
    strtab = shdrs[1]
    assert strtab[:2] == (1, 3) and strtab[4] == len(raw) - 11 and strtab[5] == 11
    assert raw[-11:] == b"\0.shstrtab\0"
    note = phdrs[0]
    assert note[0] == PT_NOTE and note[2] == 192 + 4 * 56
    assert note[5] == note[6] == 2 * (12 + 8 + 336) + 2 * (12 + 8 + 440)
    pos = note[2] + note[5]
    for ph, (gpa, size), (_, content) in zip(phdrs[1:], layout, model, strict=True):
        p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align = ph
        assert (p_type, p_flags, p_align) == (PT_LOAD, 0, 0)
        assert p_vaddr == p_paddr == gpa and p_filesz == p_memsz == size
        assert p_offset == pos and raw[pos : pos + size] == content
        pos += size
    assert pos == len(raw) - 11


def test_progress_and_empty_memory(tmp_path):
    mem, _ = sample_memory([(0, 3 * PAGE), (0x10000, PAGE)])
    calls = []
    with mem:
        write_elf(mem, tmp_path / "p.elf", progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (4 * PAGE, 4 * PAGE)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    with GuestMemoryMmap([]) as empty, pytest.raises(ValueError, match="empty"):
        write_elf(empty, tmp_path / "e.elf")


def test_cpu_notes_round_trip(tmp_path):
    regs = {"rip": 0xFFFFFFFF81000000, "rsp": 0x7FFF0000, "cr3": 0x1234000, "cr0": 0x80050033}
    regs |= {"rflags": 0x246, "cs_selector": 0x10, "gs_base": 0xFFFF888000000000, "r15": 15}
    cpus = [CpuState(0, regs), CpuState(1, {"cr3": 0x5000, "rip": 0x10, "kernel_gs_base": 7})]
    mem, model = sample_memory([(0, 2 * PAGE)])
    path = tmp_path / "cpu.elf"
    with mem:
        write_elf(mem, path, notes=cpu_notes(cpus))
    with open_elf(path) as dump:
        assert_holds(dump, model)
        got = dump.metadata.cpus
        assert len(got) == 2 and dump.metadata.cr3 == 0x1234000
        r = got[0].registers
        for name, value in regs.items():
            assert r[name] == value
        # prstatus spells them the other way; pr_pid is cpu index + 1
        assert (r["eflags"], r["cs"], r["pr_pid"]) == (0x246, 0x10, 1)
        assert r["ds_selector"] == r["ldt_base"] == 0
        assert got[1].cr3 == 0x5000 and got[1].registers["pr_pid"] == 2
        assert got[1].registers["kernel_gs_base"] == 7
        assert [n.name for n in dump.metadata.notes] == ["CORE", "CORE", "QEMU", "QEMU"]
        # ELF -> ELF keeps the notes (and so the CPU state)
        again = tmp_path / "again.elf"
        write_elf(dump, again)
        with open_elf(again) as dump2:
            strip = lambda notes: [(n.name, n.type, n.desc) for n in notes]  # noqa: E731
            assert strip(dump2.metadata.notes) == strip(dump.metadata.notes)
            assert dump2.metadata.cpus == got
            assert_holds(dump2, model)


def test_vmcoreinfo(tmp_path):
    info = {"OSRELEASE": "6.1.0-13-amd64", "PAGESIZE": "4096", "SYMBOL(swapper_pg_dir)": "ffff"}
    mem, _ = sample_memory([(0, PAGE)])
    path = tmp_path / "vmci.elf"
    with mem:
        write_elf(mem, path, notes=(*cpu_notes([CpuState(0, {"cr3": 1})]), vmcoreinfo_note(info)))
    with open_elf(path) as dump:
        assert dump.metadata.vmcoreinfo == info
        assert dump.metadata.cpus[0].cr3 == 1
    assert parse_vmcoreinfo(b"A=1\nno equals\nB=x=y\n\0garbage=1") == {"A": "1", "B": "x=y"}


def test_open_dump_and_write_dump(tmp_path):
    mem, model = sample_memory([(0x1000, 5 * PAGE), (0x100000, 0x123)])
    path = tmp_path / "via-api.elf"
    with mem:
        npguest.write_dump(mem, path, "elf")
    assert npguest.dumps.detect_format(path) == "elf"
    with npguest.open_dump(path) as dump:
        assert dump.metadata.format == "elf"
        assert_holds(dump, model)


def test_writable(tmp_path):
    mem, _ = sample_memory([(0, 2 * PAGE), (0x10000, PAGE)])
    path = tmp_path / "w.elf"
    with mem:
        write_elf(mem, path)
    with open_elf(path, writable=True) as dump:
        dump.write(b"changed", 0x10010)
    with open_elf(path) as dump:
        assert dump.read_bytes(0x10010, 7) == b"changed"
        with pytest.raises(npguest.errors.ReadOnlyMemoryError):
            dump.write(b"x", 0)
    _, _, _, phdrs = read_headers(path)
    assert path.read_bytes()[phdrs[1][2] + 0x10 :][:7] == b"changed"


# --- hand-built layout variants ----------------------------------------------------------


@pytest.mark.parametrize("old", [False, True])
@pytest.mark.parametrize("xnum", [False, True])
def test_layouts_old_new_xnum(tmp_path, old, xnum):
    a, b = randbytes(0x1800, 1), randbytes(PAGE, 2)
    blob, phoff, _ = build([Seg(0x2000, a), Seg(0x200000, b)], old=old, xnum=xnum)
    with open_blob(tmp_path, blob) as dump:
        assert layout_of(dump) == [(0x2000, 0x1800), (0x200000, PAGE)]
        assert_holds(dump, [(0x2000, a), (0x200000, b)])
        extra = dump.metadata.extra
        assert extra["e_phoff"] == phoff == (64 if old else 192)
        assert extra["e_shoff"] == (0 if old and not xnum else (64 if not old else phoff + 112))
        assert extra["phnum"] == 2


def test_writer_pn_xnum(tmp_path, monkeypatch):
    # 0xffff regions exceed vm.max_map_count: lower the threshold, the same code path runs
    monkeypatch.setattr(elf, "PN_XNUM", 3)
    layout = [(i * 2 * PAGE, PAGE) for i in range(4)]
    mem, model = sample_memory(layout)
    path = tmp_path / "x.elf"
    with mem:
        write_elf(mem, path, notes=cpu_notes([CpuState(0, {"cr3": 9})]))
    raw = path.read_bytes()
    e_phnum, sh_info = (
        struct.unpack_from("<H", raw, 56)[0],
        struct.unpack_from("<I", raw, 64 + 44)[0],
    )
    assert (e_phnum, sh_info) == (3, 5)
    with open_elf(path) as dump:
        assert layout_of(dump) == layout and dump.metadata.cr3 == 9
        assert_holds(dump, model)


@pytest.mark.parametrize("order", ["<", ">"])
def test_elfclass32(tmp_path, order):
    a = randbytes(0x3000)
    pr = bytearray(144)
    struct.pack_into(order + "I", pr, 24, 1)
    struct.pack_into(order + "17I", pr, 72, *range(100, 117))
    notes = note_bytes("CORE", 1, bytes(pr), order)
    segs = [Seg(0, notes, type=PT_NOTE), Seg(0xFFFFD000, a), Seg(0x1000, b"", 0x1000)]
    blob, _, _ = build(segs, bits=32, order=order, machine=3)
    with open_blob(tmp_path, blob) as dump:
        assert layout_of(dump) == [(0xFFFFD000, 0x3000)]
        assert_holds(dump, [(0xFFFFD000, a)])
        meta = dump.metadata
        assert meta.machine == "i386" and meta.extra["class"] == 32
        assert meta.extra["endianness"] == ("little" if order == "<" else "big")
        regs = meta.cpus[0].registers
        assert (regs["ebx"], regs["eip"], regs["ss"], regs["pr_pid"]) == (100, 112, 116, 1)
        assert meta.cr3 is None


def test_big_endian(tmp_path):
    a = randbytes(0x2000)
    info = note_bytes("VMCOREINFO", 0, b"OSRELEASE=5.14\n", ">")
    blob, _, _ = build([Seg(0, info, type=PT_NOTE), Seg(0x10000, a)], order=">", machine=22)
    with open_blob(tmp_path, blob) as dump:
        meta = dump.metadata
        assert meta.machine == "s390x" and meta.extra["endianness"] == "big"
        assert meta.vmcoreinfo == {"OSRELEASE": "5.14"} and meta.cpus == ()
        assert_holds(dump, [(0x10000, a)])
        # ELF -> ELF keeps the byte order, so the notes still decode
        path = tmp_path / "be-again.elf"
        write_elf(dump, path)
    assert path.read_bytes()[5] == 2
    with open_elf(path) as again:
        assert again.metadata.vmcoreinfo == {"OSRELEASE": "5.14"}
        assert again.metadata.machine == "s390x"


def test_big_endian_qemu_notes(tmp_path):
    notes = encode_notes(cpu_notes([CpuState(0, {"cr3": 0xABC000, "rip": 5})], ">"), ">")
    blob, _, _ = build([Seg(0, notes, type=PT_NOTE), Seg(0, randbytes(PAGE))], order=">")
    with open_blob(tmp_path, blob) as dump:
        assert dump.metadata.cr3 == 0xABC000 and dump.metadata.cpus[0].registers["rip"] == 5


def test_unknown_machine(tmp_path):
    blob, _, _ = build([Seg(0, randbytes(PAGE))], machine=0xBEEF)
    with open_blob(tmp_path, blob) as dump:
        assert dump.metadata.machine is None and dump.metadata.extra["e_machine"] == 0xBEEF


def test_zero_tails(tmp_path):
    a, b, big = randbytes(0x1800, 1), randbytes(PAGE, 2), randbytes(0x4000, 3)
    segs = [
        Seg(0x40000, big),  # zero tails may add up to the file's size
        Seg(0x10000, a, memsz=0x4000),  # tail [0x11800, 0x14000)
        Seg(0x13000, b),  # stored bytes win over the tail
        Seg(0x20000, b"\x01" * 16, memsz=PAGE),  # tail [0x20010, 0x21000)
        Seg(0x20800, b"\x02" * 16, memsz=0x1000),  # tails overlap: union [0x20010, 0x21800)
    ]
    blob, _, _ = build(segs)
    with open_blob(tmp_path, blob) as dump:
        meta = dump.metadata
        assert meta.zero_ranges == ((0x11800, 0x1800), (0x20010, 0x7F0), (0x20810, 0xFF0))
        assert dump.read_bytes(0x11800, 0x1800) == bytes(0x1800)
        assert_holds(dump, [(0x10000, a), (0x13000, b), (0x20800, b"\x02" * 16)])
        assert dump.read_bytes(0x20000, 0x1800) == (
            b"\x01" * 16 + bytes(0x7F0) + b"\x02" * 16 + bytes(0xFF0)
        )
        with pytest.raises(InvalidGuestAddressError):
            dump.read_bytes(0x14000, 1)
        with pytest.raises(InvalidGuestAddressError):
            dump.read_bytes(0x21800, 1)


def test_zero_tail_larger_than_file(tmp_path):
    blob, phoff, _ = build([Seg(0, randbytes(16), memsz=1 << 40)])
    with pytest.raises(DumpFormatError) as info:
        open_blob(tmp_path, blob)
    assert info.value.field == "phdr[0].p_memsz" and info.value.offset == phoff


def test_paging_duplicates_merge(tmp_path):
    # `dump-guest-memory -p`: one PT_LOAD per virtual mapping of the same RAM block
    a = randbytes(4 * PAGE)
    segs = [
        Seg(0x100000, a, vaddr=0xFFFF888000100000),
        Seg(0x100000, same_as=0, vaddr=0xFFFFFFFF81000000),  # the same bytes again
        Seg(0x101000, same_as=0, at=PAGE, filesz=2 * PAGE, vaddr=1),  # a part of them
        # past the block's end: clamped (the rest is a zero tail)
        Seg(0x103000, same_as=0, at=3 * PAGE, memsz=3 * PAGE, vaddr=2),
    ]
    blob, _, _ = build(segs)
    with open_blob(tmp_path, blob) as dump:
        assert layout_of(dump) == [(0x100000, 4 * PAGE), (0x104000, 2 * PAGE)]
        assert_holds(dump, [(0x100000, a), (0x104000, bytes(2 * PAGE))])
        assert dump.metadata.zero_ranges == ((0x104000, 2 * PAGE),)
        assert dump.metadata.extra["merged_loads"] == 3


def test_conflicting_overlap(tmp_path):
    a, b = randbytes(2 * PAGE, 1), randbytes(2 * PAGE, 2)
    blob, phoff, _ = build([Seg(0, a), Seg(PAGE, b)])
    with pytest.raises(DumpFormatError, match=r"phdr\[0\]") as info:
        open_blob(tmp_path, blob)
    assert info.value.field == "phdr[1]" and info.value.offset == phoff + 56


def test_filtered_loads_skipped(tmp_path):
    a = randbytes(PAGE)
    segs = [
        Seg(0, a),
        Seg(0x100000, offset=U64, filesz=0, memsz=0x100000),  # BEGIN/LENGTH filter
        Seg(0x200000, offset=U64, filesz=PAGE),  # ~0 offset with a size: skipped too
        Seg(0x300000, filesz=0, memsz=PAGE),  # nothing stored
        Seg(0x400000, b"", type=2),  # PT_DYNAMIC: ignored
    ]
    blob, _, _ = build(segs)
    with open_blob(tmp_path, blob) as dump:
        assert layout_of(dump) == [(0, PAGE)]
        assert dump.metadata.extra["skipped_loads"] == 3
    blob32, _, _ = build([Seg(0, a), Seg(0x1000, offset=0xFFFFFFFF, filesz=PAGE)], bits=32)
    with open_blob(tmp_path, blob32, "f32.elf") as dump:
        assert layout_of(dump) == [(0, PAGE)]


def test_cloud_hypervisor_vaddr_zero(tmp_path):
    a, b = randbytes(PAGE, 1), randbytes(2 * PAGE, 2)
    notes = encode_notes(cpu_notes([CpuState(0, {"cr3": 0x7000})]))
    segs = [Seg(0, notes, type=PT_NOTE), Seg(0, a, vaddr=0), Seg(0x100000, b, vaddr=0)]
    blob, _, _ = build(segs, old=True)
    with open_blob(tmp_path, blob) as dump:
        assert layout_of(dump) == [(0, PAGE), (0x100000, 2 * PAGE)]
        assert_holds(dump, [(0, a), (0x100000, b)])
        assert dump.metadata.cr3 == 0x7000


def test_notes_parsing_details(tmp_path):
    qemu432 = bytearray(432)
    struct.pack_into("<II", qemu432, 0, 1, 432)
    struct.pack_into("<Q", qemu432, 392 + 24, 0xCAFE000)
    payload = (
        note_bytes("CORE", 1, bytes(200))  # odd prstatus: kept raw, not decoded
        + note_bytes("QEMU", 0, bytes(qemu432))  # a pre-5.2 432-byte QEMUCPUState
        + note_bytes("QEMU", 0, struct.pack("<II", 2, 432) + bytes(432))  # unknown version
        + note_bytes("QEMU", 0, bytes(100))  # too short for a QEMUCPUState
        + note_bytes("LINUX", 0x202, b"\x01\x02\x03")
    )
    # zero padding ends the list: a zero header, or fewer than 12 zero bytes
    for padding in (bytes(12) + b"junk", bytes(8)):
        notes_seg = Seg(0, payload + padding, type=PT_NOTE)
        blob, _, offsets = build([notes_seg, Seg(0, randbytes(PAGE))])
        with open_blob(tmp_path, blob) as dump:
            notes = dump.metadata.notes
            assert [(n.name, n.type, len(n.desc)) for n in notes] == [
                ("CORE", 1, 200),
                ("QEMU", 0, 432),
                ("QEMU", 0, 440),
                ("QEMU", 0, 100),
                ("LINUX", 0x202, 3),
            ]
        assert notes[0].offset == offsets[0] and notes[1].offset == offsets[0] + 12 + 8 + 200
        assert len(dump.metadata.cpus) == 1
        regs = dump.metadata.cpus[0].registers
        assert regs["cr3"] == 0xCAFE000 and "kernel_gs_base" not in regs
    core = cpu_notes([CpuState(0, {"rip": 1})])[:1]
    assert decode_notes(core, machine="x86_64")[0][0].registers["pr_pid"] == 1
    assert decode_notes(core, machine="aarch64") == ((), {})


def test_note_encoding_matches_hand_encoding():
    notes = [Note("CORE", 1, b"abcde", 0), Note("VMCOREINFO", 0, b"X=1\n", 0)]
    assert encode_notes(notes, ">") == note_bytes("CORE", 1, b"abcde", ">") + note_bytes(
        "VMCOREINFO", 0, b"X=1\n", ">"
    )


# --- errors ------------------------------------------------------------------------------


def good_blob():
    notes = encode_notes(cpu_notes([CpuState(0, {"cr3": 0x1000})]))
    return build(
        [Seg(0, notes, type=PT_NOTE), Seg(0, randbytes(PAGE)), Seg(0x10000, randbytes(0x800))]
    )


def patched(blob, offset, fmt, value):
    out = bytearray(blob)
    struct.pack_into("<" + fmt, out, offset, value)
    return bytes(out)


def expect_error(tmp_path, blob, field, offset):
    with pytest.raises(DumpFormatError) as info:
        open_blob(tmp_path, blob)
    err = info.value
    assert err.field == field, str(err)
    assert err.offset == offset, str(err)
    assert f"{offset:#x}" in str(err)


def test_header_errors(tmp_path):
    blob, phoff, _ = good_blob()
    expect_error(tmp_path, blob[:10], "e_ident", 0)
    expect_error(tmp_path, b"\x7fELG" + blob[4:], "e_ident magic", 0)
    expect_error(tmp_path, patched(blob, 4, "B", 3), "EI_CLASS", 4)
    expect_error(tmp_path, patched(blob, 5, "B", 0), "EI_DATA", 5)
    expect_error(tmp_path, blob[:40], "ELF header", 0)
    expect_error(tmp_path, patched(blob, 16, "H", 2), "e_type", 16)
    expect_error(tmp_path, patched(blob, 54, "H", 32), "e_phentsize", 54)
    expect_error(tmp_path, patched(blob, 56, "H", 0), "e_phnum", 56)
    expect_error(tmp_path, patched(blob, 56, "H", 0xFFFE), "e_phnum", 56)
    expect_error(tmp_path, patched(blob, 32, "Q", U64 - 8), "e_phoff", 32)
    expect_error(tmp_path, patched(blob, 32, "Q", 8), "e_phoff", 32)
    expect_error(tmp_path, blob[: phoff + 56], "e_phoff", 32)


def test_pn_xnum_errors(tmp_path):
    blob, _, _ = build([Seg(0, randbytes(PAGE))], xnum=True)
    expect_error(tmp_path, patched(blob, 40, "Q", 0), "e_phnum", 56)
    expect_error(tmp_path, patched(blob, 58, "H", 40), "e_shentsize", 58)
    expect_error(
        tmp_path, patched(blob, 40, "Q", len(blob) - 8), "section header 0 (e_shoff)", len(blob) - 8
    )
    expect_error(tmp_path, patched(blob, 64 + 44, "I", 0), "shdr[0].sh_info", 64 + 44)
    expect_error(tmp_path, patched(blob, 64 + 44, "I", 1 << 30), "shdr[0].sh_info", 64 + 44)
    blob32, _, _ = build([Seg(0, randbytes(PAGE))], xnum=True, bits=32, shentsize=64)
    expect_error(tmp_path, blob32, "e_shentsize", 46)


def test_program_header_errors(tmp_path):
    blob, phoff, offsets = good_blob()
    load = phoff + 56  # phdr[1], the first PT_LOAD
    expect_error(tmp_path, patched(blob, load + 32, "Q", PAGE + 1), "phdr[1].p_filesz", load + 32)
    expect_error(tmp_path, patched(blob, load + 24, "Q", U64 - 10), "phdr[1].p_memsz", load + 40)
    expect_error(
        tmp_path, patched(blob, load + 8, "Q", len(blob) - 10), "phdr[1].p_offset", load + 8
    )
    expect_error(tmp_path, blob[: offsets[2] + 0x7FF], "phdr[2].p_offset", load + 56 + 8)
    # PT_NOTE past the end, and too large
    note = "phdr[0] (PT_NOTE)"
    expect_error(tmp_path, patched(blob, phoff + 8, "Q", len(blob)), note, phoff)
    expect_error(tmp_path, patched(blob, phoff + 32, "Q", elf.MAX_NOTES_SIZE + 1), note, phoff)
    # nothing stored anywhere
    only_filtered, _, _ = build([Seg(0, offset=U64, filesz=0, memsz=PAGE)])
    expect_error(tmp_path, only_filtered, "memory layout", 0)


def test_note_errors(tmp_path):
    blob, phoff, offsets = good_blob()
    note0 = offsets[0]
    expect_error(tmp_path, patched(blob, note0, "I", 5000), "note[0] n_namesz", note0)
    expect_error(tmp_path, patched(blob, note0 + 4, "I", 5000), "note[0] n_descsz", note0 + 4)
    # the segment ends inside a note
    expect_error(
        tmp_path, patched(blob, phoff + 32, "Q", 12 + 8 + 100), "note[0] n_descsz", note0 + 4
    )
    # a partial header that is not zero padding
    junk = encode_notes([Note("X", 0, b"", 0)]) + b"\1\0\0\0"
    bad, _, offs = build([Seg(0, junk, type=PT_NOTE), Seg(0, randbytes(PAGE))])
    expect_error(tmp_path, bad, "note[1]", offs[0] + 16)


def test_errors_pickle_and_name_the_file(tmp_path):
    import pickle

    blob, _, _ = good_blob()
    with pytest.raises(DumpFormatError) as info:
        open_blob(tmp_path, patched(blob, 16, "H", 1))
    err = pickle.loads(pickle.dumps(info.value))
    assert err.field == "e_type" and err.path == str(tmp_path / "dump.elf")


def test_missing_file(tmp_path):
    with pytest.raises(npguest.errors.MmapRegionError):
        open_elf(tmp_path / "nope.elf")


# --- fuzzing -----------------------------------------------------------------------------

_FUZZ_BLOBS = [
    good_blob()[0],
    build(
        [Seg(0, randbytes(64)), Seg(0x1000, randbytes(16), memsz=0x100)],
        bits=32,
        order=">",
        xnum=True,
    )[0],
    build([Seg(0, randbytes(0x300), memsz=0x400), Seg(0x200, same_as=0, at=0x200)], old=True)[0],
]


@FUZZ
@given(which=st.integers(0, len(_FUZZ_BLOBS) - 1), data=st.data())
def test_fuzz_only_dump_errors(tmp_path, which, data):
    blob = data.draw(mutations(_FUZZ_BLOBS[which]))
    assert_only_dump_errors(open_elf, blob, tmp_path / "fuzz.elf")


def test_drgn_reads_our_elf(tmp_path):
    """An independent reader (drgn, through its QEMU/kernel core path) accepts write_elf's files."""
    drgn = pytest.importorskip("drgn")
    from npguest.cli import sample_dump

    sample_dump(tmp_path / "sample.elf")
    prog = drgn.Program()
    prog.set_core_dump(str(tmp_path / "sample.elf"))
    with npguest.open_dump(tmp_path / "sample.elf") as dump:
        for addr, size in ((0xFFF000, 64), (0x200000, 4096), (0x1_0000_0000, 256)):
            assert prog.read(addr, size, physical=True) == dump.read_bytes(addr, size)
