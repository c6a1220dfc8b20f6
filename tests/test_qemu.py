"""A real VMM in the test suite: npguest against a paused QEMU, checked through QMP.

QEMU starts once for the module (TCG, ``-S``, no guest OS): a q35 machine whose 64 MiB of
RAM live in a ``memory-backend-file``, split by ``max-ram-below-4g`` into 48 MiB below
4 GiB and 16 MiB above it.  ``-device loader`` puts known bytes at known guest physical
addresses (region edges included); every other RAM byte is zero.  That model is the
oracle for QEMU's own view (``xp``, ``pmemsave``, ``dump-guest-memory``) and for npguest's
view of the backing file and of QEMU's dumps.  Without ``qemu-system-x86_64`` (or when it
cannot start) these tests skip, saying why; the parser tests run anyway.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from dump_support import layout_of
from hypothesis import given, settings
from hypothesis import strategies as st
from qemu_support import (
    QEMU,
    FlatRange,
    Machine,
    QemuUnavailableError,
    Qmp,
    QmpError,
    coalesce,
    flat_ranges,
    info_registers,
    parse_xp,
    ram_layout,
)

from npguest import open_dump
from npguest.dumps import detect_format
from npguest.errors import InvalidGuestAddressError, PartialBufferError

GIB4 = 1 << 32
RAM = 64 << 20
BELOW_4G = 48 << 20
ABOVE_4G = RAM - BELOW_4G
#: The memory backend's id, which QEMU also gives the RAM region (``pc.ram`` without one).
BLOCK = "ram"

_rng = np.random.default_rng(4)
#: Bytes ``-device loader,file=...`` places, by guest physical address: across a page
#: boundary, ending at the last byte below 4 GiB, at 4 GiB, and ending at the end of RAM.
FILES = {
    gpa: _rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    for gpa, size in [
        (0x1000, 0x1000 + 100),
        (BELOW_4G - 300, 300),
        (GIB4, 512),
        (GIB4 + ABOVE_4G - 200, 200),
    ]
}
#: Values ``-device loader,data=...,data-len=...`` stores (little-endian), by address.
VALUES = {0x200000: (0x1122334455667788, 8), GIB4 + 0x800000: (0x99AABBCC, 4)}
KNOWN = FILES | {gpa: value.to_bytes(n, "little") for gpa, (value, n) in VALUES.items()}

qemu = pytest.mark.qemu


def model(gpa: int, size: int) -> np.ndarray:
    """What the guest's RAM holds at ``[gpa, gpa + size)``: zeros and the loaders' bytes."""
    out = np.zeros(size, dtype=np.uint8)
    for at, data in KNOWN.items():
        lo, hi = max(at, gpa), min(at + len(data), gpa + size)
        if lo < hi:
            out[lo - gpa : hi - gpa] = np.frombuffer(data, np.uint8, hi - lo, lo - at)
    return out


def read(mem, gpa: int, size: int) -> np.ndarray:
    out = np.empty(size, dtype=np.uint8)
    mem.read_slice(out, gpa)
    return out


def assert_same(actual: np.ndarray, expected: np.ndarray, gpa: int) -> None:
    differ = np.flatnonzero(actual != expected)
    assert actual.shape == expected.shape and not differ.size, (
        f"{differ.size} bytes differ from {gpa:#x}+{expected.size:#x}, the first at "
        f"{gpa + int(differ[0]) if differ.size else gpa:#x}"
    )


class Guest(NamedTuple):
    machine: Machine
    ram: Path  # the memory-backend file
    mtree: str  # info mtree -f
    layout: list[tuple[int, int, int]]  # the RAM block's (gpa, size, file offset) pieces

    def open_ram(self, writable=False):
        return open_dump(self.ram, format="raw", layout=self.layout, writable=writable)


def qemu_args(work: Path) -> list[str]:
    args = [
        "-S",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-accel",
        "tcg",
        "-smp",
        "1",
        "-machine",
        f"q35,max-ram-below-4g={BELOW_4G},memory-backend={BLOCK}",
        "-m",
        f"{RAM >> 20}M",
        "-object",
        f"memory-backend-file,id={BLOCK},size={RAM},mem-path={work / 'ram.img'},share=on",
    ]
    for i, (gpa, data) in enumerate(FILES.items()):
        blob = work / f"blob{i}.bin"
        blob.write_bytes(data)
        args += ["-device", f"loader,file={blob},addr={gpa:#x},force-raw=on"]
    for gpa, (value, n) in VALUES.items():
        args += ["-device", f"loader,addr={gpa:#x},data={value:#x},data-len={n}"]
    return args


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    work = tmp_path_factory.mktemp("qemu")
    try:
        machine = Machine(qemu_args(work), work)
    except QemuUnavailableError as exc:
        pytest.skip(f"QEMU cannot start: {exc}")
    with machine:
        mtree = machine.qmp.hmp("info mtree -f")
        yield Guest(machine, work / "ram.img", mtree, ram_layout(mtree, BLOCK))


# --- parsers, on captured QEMU 7.2 output (no QEMU needed) ----------------------------------

#: ``info mtree -f`` of ``qemu-system-x86_64 -machine q35 -m 3G`` (7.2), the SMM and I/O
#: views cut short; HMP ends lines with CRLF.
MTREE_Q35_3G = """\
FlatView #0
 AS "cpu-smm-0", root: memory
 Root memory region: memory
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000

FlatView #1
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000
  0000000000100000-000000007fffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
  0000000100000000-000000013fffffff (prio 0, ram): pc.ram @0000000080000000

FlatView #2
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
  0000000000000010-000000000000001f (prio 0, i/o): io @0000000000000010

FlatView #3
 AS "mch", root: bus master container
 AS "ICH9-LPC", root: bus master container
 Root memory region: (none)
  No rendered FlatView

""".replace("\n", "\r\n")


def test_flat_ranges_reads_the_system_view():
    ranges = flat_ranges(MTREE_Q35_3G)
    assert len(ranges) == 9
    assert ranges[0] == FlatRange(0, 0xC0000, "ram", "pc.ram", 0)
    assert ranges[2] == FlatRange(0xE0000, 0x100000, "rom", "pc.bios", 0x20000)
    assert ranges[6] == FlatRange(0xFEE00000, 0xFEF00000, "i/o", "apic-msi", 0)
    assert ranges[-1] == FlatRange(GIB4, 0x140000000, "ram", "pc.ram", 0x80000000)
    assert len(flat_ranges(MTREE_Q35_3G, "cpu-smm-0")) == 3
    assert flat_ranges(MTREE_Q35_3G, "I/O") == [
        FlatRange(0, 8, "i/o", "dma-chan", 0),
        FlatRange(0x10, 0x20, "i/o", "io", 0x10),
    ]
    assert flat_ranges(MTREE_Q35_3G, "ICH9-LPC") == []


def test_ram_layout_of_q35_with_3g():
    # the machine's own split: 2 GiB below the PCI hole, the rest from 4 GiB on
    assert ram_layout(MTREE_Q35_3G, "pc.ram") == [
        (0, 0xC0000, 0),
        (0x100000, 0x7FF00000, 0x100000),
        (GIB4, 0x40000000, 0x80000000),
    ]


def test_parsers_refuse_what_they_cannot_read():
    with pytest.raises(ValueError, match="not mapped"):
        ram_layout(MTREE_Q35_3G, "ram")
    with pytest.raises(ValueError, match="no FlatView of address space 'nowhere'"):
        flat_ranges(MTREE_Q35_3G, "nowhere")
    broken = MTREE_Q35_3G.replace("(prio 0, i/o): hpet", "(prio 0) hpet")
    with pytest.raises(ValueError, match="cannot parse an info mtree line"):
        flat_ranges(broken)
    with pytest.raises(ValueError, match="unexpected xp output"):
        parse_xp("Cannot access memory\r\n", 0x1000, 1)
    with pytest.raises(ValueError, match="unexpected xp output at 0x1002"):
        parse_xp("0000000000001000: 0x00 0x00\r\n0000000000001004: 0x00\r\n", 0x1000, 8)
    with pytest.raises(ValueError, match="showed 2 of 3 bytes"):
        parse_xp("0000000000001000: 0x01 0x02\r\n", 0x1000, 3)


ranges_st = st.lists(
    st.tuples(
        st.integers(0, 2**64 - 2),
        st.integers(1, 2**40),
        st.sampled_from(["ram", "rom", "i/o", "romd", "nv-ram"]),
        st.from_regex(r"[a-z][a-z0-9.\-]{0,12}", fullmatch=True),
        st.integers(0, 2**48),
    ),
    max_size=8,
)


@given(ranges_st)
def test_flat_ranges_round_trips_qemus_format(drawn):
    lines = ["FlatView #0", ' AS "memory", root: system', " Root memory region: system"]
    expected = []
    for start, size, kind, name, offset in drawn:
        end = min(start + size, 2**64)
        line = f"  {start:016x}-{end - 1:016x} (prio 0, {kind}): {name}"
        lines.append(line + (f" @{offset:016x}" if offset else ""))
        expected.append(FlatRange(start, end, kind, name, offset))
    assert flat_ranges("\r\n".join([*lines, "", "FlatView #1", ' AS "I/O", root: io'])) == expected


# --- the QMP client against a scripted peer (no QEMU needed) --------------------------------

GREETING = b'{"QMP": {"version": {}, "capabilities": []}}\r\n'


def scripted_qmp(answers: bytes, timeout: float = 0.2) -> tuple[Qmp, socket.socket]:
    ours, peer = socket.socketpair()
    peer.sendall(GREETING + b'{"return": {}}\r\n' + answers)  # the second: qmp_capabilities
    return Qmp(ours, timeout), peer


def test_qmp_keeps_events_and_raises_errors():
    qmp, peer = scripted_qmp(
        b'{"event": "STOP", "timestamp": {}}\r\n{"return": {"status": "prelaunch"}}\r\n'
        b'{"error": {"class": "CommandNotFound", "desc": "no such command"}}\r\n'
        b'{"neither": 1}\r\nnot json\r\n'
    )
    with qmp.sock, peer:
        assert qmp.execute("query-status") == {"status": "prelaunch"}
        assert [e["event"] for e in qmp.events] == ["STOP"]
        with pytest.raises(QmpError, match="bogus: no such command"):
            qmp.execute("bogus")
        with pytest.raises(QmpError, match="unexpected QMP message"):
            qmp.execute("query-status")
        with pytest.raises(QmpError, match="not JSON"):
            qmp.execute("query-status")


def test_qmp_never_waits_longer_than_its_timeout():
    qmp, peer = scripted_qmp(b"")
    with qmp.sock, peer:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="did not answer"):
            qmp.execute("query-status")
        assert time.monotonic() - t0 < 2
        peer.shutdown(socket.SHUT_WR)
        with pytest.raises(QmpError, match="closed the QMP connection"):
            qmp.execute("query-status")
        peer.close()
        with pytest.raises(QmpError, match="cannot send query-status"):
            qmp.execute("query-status")


def test_qmp_wants_a_greeting():
    ours, peer = socket.socketpair()
    with ours, peer:
        peer.sendall(b'{"return": {}}\r\n')
        with pytest.raises(QmpError, match="no QMP greeting"):
            Qmp(ours, 0.2)


# --- QEMU itself --------------------------------------------------------------------------


@qemu
def test_qemu_refusing_its_command_line_is_unavailable(tmp_path):
    if shutil.which(QEMU) is None:
        pytest.skip(f"{QEMU} is not installed")
    with pytest.raises(QemuUnavailableError, match=r"status 1: .*unsupported machine type"):
        Machine(["-S", "-display", "none", "-machine", "no-such-machine"], tmp_path)


@qemu
def test_backing_file_layout_from_info_mtree(guest):
    # below 4 GiB the block maps 1:1 (minus the VGA/ROM window), above it resumes at BELOW_4G
    low, high = guest.layout[:-1], guest.layout[-1]
    assert all(gpa == offset for gpa, _, offset in low)
    assert low[-1][0] + low[-1][1] == BELOW_4G
    assert high == (GIB4, ABOVE_4G, BELOW_4G)
    ranges = flat_ranges(guest.mtree)
    assert {(r.start, r.end - r.start, r.offset) for r in ranges if r.name == BLOCK} == set(
        guest.layout
    )


@qemu
def test_backing_file_reads_exactly_the_loaders_bytes(guest):
    with guest.open_ram() as mem:
        assert layout_of(mem) == [(gpa, size) for gpa, size, _ in guest.layout]
        for gpa, size, _ in guest.layout:
            assert_same(read(mem, gpa, size), model(gpa, size), gpa)
        for gpa, data in KNOWN.items():
            assert mem.read_bytes(gpa, len(data)) == data
            n = min(len(data), 16)
            assert guest.machine.xp(gpa, n) == data[:n]
            assert guest.machine.xp(gpa + len(data) - n, n) == data[-n:]
        # the PCI hole and the ROM window are holes of the file's view
        with pytest.raises(PartialBufferError):
            mem.read_bytes(BELOW_4G - 8, 16)
        for hole in (BELOW_4G, GIB4 - 1, 0xC0000, GIB4 + ABOVE_4G):
            with pytest.raises(InvalidGuestAddressError):
                mem.read_bytes(hole, 1)


def edge_biased_window(size: int, n: int):
    return st.one_of(st.sampled_from([0, size - n]), st.integers(0, size - n))


@qemu
@settings(max_examples=40)
@given(data=st.data())
def test_npguest_writes_are_what_qemu_shows(guest, data):
    gpa, size, _ = data.draw(st.sampled_from(guest.layout))
    n = data.draw(st.integers(1, 48))
    at = gpa + data.draw(edge_biased_window(size, n))
    payload = data.draw(st.binary(min_size=n, max_size=n))
    with guest.open_ram(writable=True) as mem:
        try:
            mem.write_slice(payload, at)
            assert guest.machine.xp(at, n) == payload
        finally:
            mem.write_slice(model(at, n), at)
    assert guest.machine.xp(at, n) == model(at, n).tobytes()


@qemu
def test_npguest_stores_a_value_qemu_reads(guest):
    at = GIB4 + ABOVE_4G - 8 - 4096
    with guest.open_ram(writable=True) as mem:
        try:
            mem.store(0x0123456789ABCDEF, at, np.uint64)
            assert guest.machine.xp(at, 8) == bytes.fromhex("efcdab8967452301")
        finally:
            mem.write_slice(model(at, 8), at)


WINDOWS = [
    (0, 0x3000),  # RAM from 0, with the first loader's blob
    (0x1FF800, 0x1000),  # around a loader's value
    (BELOW_4G - 0x1000, 0x1000),  # the last page below 4 GiB
    (GIB4, 0x2000),  # the first pages above 4 GiB
    (GIB4 + ABOVE_4G - 0x1800, 0x1800),  # the end of RAM
]


@qemu
@pytest.mark.parametrize(("start", "size"), WINDOWS)
def test_pmemsave_matches_a_raw_open(guest, tmp_path, start, size):
    path = guest.machine.pmemsave(start, size, tmp_path / "window.raw")
    assert detect_format(path) == "raw"
    with open_dump(path, format="raw", base=start) as saved, guest.open_ram() as ram:
        assert layout_of(saved) == [(start, size)]
        assert_same(read(saved, start, size), model(start, size), start)
        assert_same(read(saved, start, size), read(ram, start, size), start)


def guest_memory_ranges(mtree: str) -> list[tuple[int, int]]:
    """The guest physical ranges ``dump-guest-memory`` covers: RAM and ROM, coalesced."""
    return coalesce([(r.start, r.end) for r in flat_ranges(mtree) if r.kind in ("ram", "rom")])


@qemu
@pytest.mark.parametrize(("fmt", "reader"), [("elf", "elf"), ("kdump-zlib", "kdump")])
def test_dump_guest_memory_opens_and_matches(guest, tmp_path, fmt, reader):
    path = tmp_path / f"guest.{fmt}"
    status = guest.machine.dump(path, fmt)
    regs = info_registers(guest.machine.qmp.hmp("info registers"))
    with open_dump(path) as dump:
        assert dump.metadata.format == reader
        assert coalesce([(s, s + n) for s, n in layout_of(dump)]) == guest_memory_ranges(
            guest.mtree
        )
        assert sum(n for _, n in layout_of(dump)) == status["total"]
        for gpa, size, _ in guest.layout:  # RAM: the model
            assert_same(read(dump, gpa, size), model(gpa, size), gpa)
        for r in flat_ranges(guest.mtree):  # ROM (SeaBIOS, the reset vector): as QEMU reads it
            if r.kind == "rom":
                saved = guest.machine.pmemsave(r.start, r.end - r.start, tmp_path / "rom.raw")
                expected = np.fromfile(saved, dtype=np.uint8)
                assert_same(read(dump, r.start, r.end - r.start), expected, r.start)
        cpus = dump.metadata.cpus
        assert len(cpus) == 1
        assert cpus[0].cr3 == regs["cr3"] == 0  # a fresh VM has no page tables yet
        cpu = cpus[0].registers  # at the reset vector: f000:fff0, CS based at 0xffff0000
        assert cpu["rip"] == regs["eip"] == 0xFFF0
        assert cpu["cs"] == regs["cs"] == 0xF000
        assert cpu["cs_base"] == regs["cs_base"] == 0xFFFF0000
        assert (cpu["cr0"], cpu["rflags"]) == (regs["cr0"], regs["efl"])
