"""A real QEMU for the tests: a launcher, a small QMP client, and parsers for HMP output.

Imported by ``tests/test_qemu.py`` as ``qemu_support``.  QEMU runs paused (``-S``, TCG, no
guest OS) with its RAM in a ``memory-backend-file`` the tests map; every QMP read has a
deadline and QEMU is killed when the machine is closed (or, at the latest, when the test
process exits or dies), so nothing here can hang a test run.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import re
import signal
import socket
import subprocess
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from string import hexdigits
from typing import Any, NamedTuple

#: The emulator the tests run.
QEMU = "qemu-system-x86_64"
#: Seconds any one QMP exchange (or QEMU's start-up) may take.
TIMEOUT = 30.0
#: ``prctl`` option: the signal a child gets when its parent dies.
PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork


class QemuUnavailableError(RuntimeError):
    """QEMU could not be started (missing, or it refused the command line): skip, don't fail."""


class QmpError(RuntimeError):
    """QEMU answered a QMP command with an error, or broke the protocol."""


class Qmp:
    """A QMP connection: one command at a time, every read bounded by a deadline.

    Events that arrive while waiting for an answer are kept in :attr:`events`.

    Parameters
    ----------
    sock : socket.socket
        A connected stream socket to QEMU's QMP server (the greeting not read yet); the
        connection owns it (closed here if the handshake fails).
    timeout : float
        Seconds each exchange may take.
    """

    def __init__(self, sock: socket.socket, timeout: float = TIMEOUT) -> None:
        self.sock = sock
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        try:
            greeting = self._message(time.monotonic() + timeout)
            if "QMP" not in greeting:
                raise QmpError(f"no QMP greeting: {greeting!r}")
            self.execute("qmp_capabilities")
        except BaseException:
            sock.close()
            raise

    def _message(self, deadline: float) -> dict[str, Any]:
        """Read the next JSON message (one line), before ``deadline``."""
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"QEMU did not answer within {self.timeout} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue  # the loop raises with the message above
            except OSError as exc:
                raise QmpError(f"cannot read from QEMU: {exc}") from exc
            if not data:
                raise QmpError("QEMU closed the QMP connection")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError as exc:
            raise QmpError(f"QEMU sent something that is not JSON: {line!r}") from exc

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command and return its ``"return"`` value.

        Raises
        ------
        QmpError
            QEMU answered with an error.
        TimeoutError
            No answer in time.
        """
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:  # a send timing out as well
            raise QmpError(f"cannot send {command} to QEMU: {exc}") from exc
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._message(deadline)
            if "event" in message:
                self.events.append(message)
            elif "error" in message:
                raise QmpError(f"{command}: {message['error'].get('desc', message['error'])}")
            elif "return" in message:
                return message["return"]
            else:
                raise QmpError(f"unexpected QMP message {message!r}")

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command and return its text output."""
        return self.execute("human-monitor-command", **{"command-line": command_line})

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(TIMEOUT)


class Machine:
    """A paused QEMU with a QMP connection (use as a context manager, or :meth:`close`).

    Parameters
    ----------
    args : sequence of str
        QEMU's arguments (the QMP socket option is added).
    workdir : pathlib.Path
        Where the QMP socket and QEMU's log go.
    timeout : float
        Seconds start-up and each QMP exchange may take.

    Raises
    ------
    QemuUnavailableError
        QEMU exited during start-up (its log is in the message), or never opened QMP.
    """

    def __init__(self, args: Sequence[str], workdir: Path, timeout: float = TIMEOUT) -> None:
        sock_path = workdir / "qmp.sock"
        self.log = workdir / "qemu.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [QEMU, *args, "-qmp", f"unix:{sock_path},server=on,wait=off"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self._finalizer = weakref.finalize(self, _kill, self.process)
        try:
            self.qmp = Qmp(self._connect(sock_path, timeout), timeout)
        except BaseException:
            self.close()
            raise

    def _connect(self, path: Path, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise QemuUnavailableError(
                    f"{QEMU} exited with status {self.process.returncode}: "
                    + self.log.read_text(errors="replace").strip()
                )
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
            except OSError:  # not listening yet
                sock.close()
                if time.monotonic() > deadline:
                    raise QemuUnavailableError(
                        f"{QEMU} opened no QMP socket within {timeout} s"
                    ) from None
                time.sleep(0.02)
            else:
                return sock

    def close(self) -> None:
        """Ask QEMU to quit, then kill it if it has not (idempotent)."""
        qmp = getattr(self, "qmp", None)
        if qmp is not None:
            if self.process.poll() is None:
                with contextlib.suppress(QmpError, TimeoutError):
                    qmp.execute("quit")
            qmp.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
        self._finalizer()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def xp(self, gpa: int, size: int) -> bytes:
        """The ``size`` bytes at guest physical address ``gpa``, as QEMU's ``xp`` shows them."""
        return parse_xp(self.qmp.hmp(f"xp /{size}xb {gpa:#x}"), gpa, size)

    def pmemsave(self, gpa: int, size: int, path: Path) -> Path:
        """Save ``[gpa, gpa + size)`` of guest physical memory to ``path`` (QMP ``pmemsave``)."""
        self.qmp.execute("pmemsave", val=gpa, size=size, filename=str(path))
        return path

    def dump(self, path: Path, format: str, poll: float = 0.02) -> dict[str, Any]:
        """Write QEMU's ``dump-guest-memory`` of all memory (detached) and wait for it.

        Parameters
        ----------
        path : pathlib.Path
            The output file.
        format : str
            ``"elf"``, ``"kdump-zlib"``...
        poll : float, optional
            Seconds between ``query-dump`` polls.

        Returns
        -------
        dict
            The final ``query-dump`` status (``total`` bytes of guest memory).

        Raises
        ------
        QmpError
            QEMU refused the dump, or it failed.
        TimeoutError
            It did not complete in time.
        """
        self.qmp.execute(
            "dump-guest-memory", paging=False, protocol=f"file:{path}", detach=True, format=format
        )
        deadline = time.monotonic() + self.qmp.timeout
        while True:
            status = self.qmp.execute("query-dump")
            if status["status"] == "completed":
                return status
            if status["status"] == "failed":
                raise QmpError(f"dump-guest-memory failed: {status}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dump-guest-memory still {status} after {self.qmp.timeout} s")
            time.sleep(poll)


class FlatRange(NamedTuple):
    """One line of a FlatView in ``info mtree -f``: guest ``[start, end)`` of a region.

    ``offset`` is the offset of ``start`` inside the region (the ``@offset``; 0 when not
    shown), ``kind`` the type QEMU prints (``ram``, ``rom``, ``i/o``, ``romd``...).
    """

    start: int
    end: int
    kind: str
    name: str
    offset: int


_FLATVIEW = re.compile(r"^FlatView #\d+$")
_ADDRESS_SPACE = re.compile(r'^ AS "([^"]*)", root: ')
_RANGE = re.compile(
    r"^\s+(?P<start>[0-9a-f]+)-(?P<last>[0-9a-f]+) \(prio -?\d+, (?P<kind>[^)]+)\): "
    r"(?P<name>\S+)(?: @(?P<offset>[0-9a-f]+))?(?: .*)?$"
)


def flat_ranges(mtree: str, address_space: str = "memory") -> list[FlatRange]:
    """Parse the FlatView of ``address_space`` out of ``info mtree -f`` output.

    Parameters
    ----------
    mtree : str
        The text of ``info mtree -f``.
    address_space : str, optional
        Which address space's view (default ``"memory"``, the system address space).

    Returns
    -------
    list of FlatRange
        Its ranges in the order QEMU prints them (ascending address).

    Raises
    ------
    ValueError
        The text has no FlatView for ``address_space``, or a line of it does not parse.

    Examples
    --------
    >>> text = '''FlatView #0
    ...  AS "memory", root: system
    ...  Root memory region: system
    ...   0000000000000000-000000000009ffff (prio 0, ram): pc.ram
    ...   0000000000100000-0000000007ffffff (prio 0, ram): pc.ram @0000000000100000
    ... '''
    >>> [(hex(r.start), hex(r.end), r.offset) for r in flat_ranges(text)]
    [('0x0', '0xa0000', 0), ('0x100000', '0x8000000', 1048576)]
    """
    ranges: list[FlatRange] | None = None  # None until the view of address_space starts
    for line in mtree.splitlines():
        if _FLATVIEW.match(line):
            if ranges is not None:
                break  # the view we wanted has ended
        elif m := _ADDRESS_SPACE.match(line):
            if m.group(1) == address_space:
                ranges = []
        elif ranges is not None and line.startswith("  ") and line.strip()[:1] in hexdigits:
            if (m := _RANGE.match(line)) is None:
                raise ValueError(f"cannot parse an info mtree line: {line!r}")
            start, end = int(m["start"], 16), int(m["last"], 16) + 1
            ranges.append(FlatRange(start, end, m["kind"], m["name"], int(m["offset"] or "0", 16)))
    if ranges is None:
        raise ValueError(f"no FlatView of address space {address_space!r} in info mtree -f")
    return ranges


def ram_layout(mtree: str, block: str) -> list[tuple[int, int, int]]:
    """The guest layout of one RAM block: ``(gpa, size, offset in the block)`` pieces.

    This is the ``layout=`` that opens the block's ``memory-backend-file`` with
    ``npguest.open_dump(file, format="raw", layout=...)``.

    Parameters
    ----------
    mtree : str
        The text of ``info mtree -f``.
    block : str
        The RAM region's name: the memory backend's id with ``-machine memory-backend=ID``
        (``pc.ram`` on a machine without one).

    Returns
    -------
    list of (int, int, int)
        The pieces in ascending guest address.

    Raises
    ------
    ValueError
        The block is not mapped anywhere (or the text does not parse).

    Examples
    --------
    >>> text = '''FlatView #0
    ...  AS "memory", root: system
    ...  Root memory region: system
    ...   0000000000000000-000000000009ffff (prio 0, ram): ram
    ...   00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
    ...   0000000100000000-0000000101ffffff (prio 0, ram): ram @0000000008000000
    ... '''
    >>> [tuple(map(hex, piece)) for piece in ram_layout(text, "ram")]
    [('0x0', '0xa0000', '0x0'), ('0x100000000', '0x2000000', '0x8000000')]
    """
    layout = [
        (r.start, r.end - r.start, r.offset)
        for r in flat_ranges(mtree)
        if r.kind == "ram" and r.name == block
    ]
    if not layout:
        raise ValueError(f"RAM block {block!r} is not mapped in the memory address space")
    return layout


def coalesce(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge ``(start, end)`` ranges that touch or overlap into ascending disjoint ones.

    Examples
    --------
    >>> coalesce([(0x2000, 0x3000), (0, 0x1000), (0x1000, 0x1800)])
    [(0, 6144), (8192, 12288)]
    """
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


_XP_LINE = re.compile(r"^([0-9a-f]+): ((?:0x[0-9a-f]{2} ?)+)$")


def parse_xp(text: str, gpa: int, size: int) -> bytes:
    """Parse the output of ``xp /{size}xb {gpa}`` into the bytes it shows.

    Raises
    ------
    ValueError
        The output is not a byte dump of exactly ``[gpa, gpa + size)`` (an error message,
        say).

    Examples
    --------
    >>> parse_xp("0000000000100000: 0x48 0x49\\n", 0x100000, 2)
    b'HI'
    """
    data = bytearray()
    for line in text.splitlines():
        m = _XP_LINE.match(line.strip())
        if m is None or int(m.group(1), 16) != gpa + len(data):
            raise ValueError(f"unexpected xp output at {gpa + len(data):#x}: {text!r}")
        data += bytes(int(b, 16) for b in m.group(2).split())
    if len(data) != size:
        raise ValueError(f"xp showed {len(data)} of {size} bytes: {text!r}")
    return bytes(data)


_REGISTER = re.compile(r"\b([A-Z][A-Z0-9]*)=([0-9a-f]+)\b")
_SEGMENT = re.compile(r"^(ES|CS|SS|DS|FS|GS|LDT|TR) *=(\w+) (\w+) (\w+) (\w+)", re.MULTILINE)


def info_registers(text: str) -> dict[str, int]:
    """Parse ``info registers`` (one CPU) into lower-case names and values.

    ``NAME=value`` pairs keep QEMU's names (``eip`` or ``rip``, ``cr3``, ``efer``...); each
    segment line gives ``cs`` (the selector), ``cs_base``, ``cs_limit`` and ``cs_flags``.

    Examples
    --------
    >>> regs = info_registers("EIP=0000fff0 EFL=00000002\\nCS =f000 ffff0000 0000ffff 00009b00")
    >>> hex(regs["eip"]), hex(regs["cs"]), hex(regs["cs_base"])
    ('0xfff0', '0xf000', '0xffff0000')
    """
    regs = {name.lower(): int(value, 16) for name, value in _REGISTER.findall(text)}
    for name, selector, base, limit, flags in _SEGMENT.findall(text):
        seg = name.lower()
        regs |= {
            seg: int(selector, 16),
            f"{seg}_base": int(base, 16),
            f"{seg}_limit": int(limit, 16),
            f"{seg}_flags": int(flags, 16),
        }
    return regs
