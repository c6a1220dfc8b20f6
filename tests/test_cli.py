"""The `npguest` command: help, the tour on generated data, exit codes."""

import argparse
import contextlib
import io
import socket
import subprocess
import sys

import numpy as np
import pytest

from npguest import cli


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "npguest", *args], capture_output=True, text=True, timeout=300
    )


def test_help_lists_tour():
    res = run("--help")
    assert res.returncode == 0
    assert "tour" in res.stdout and "demo" in res.stdout


def test_version():
    import npguest

    res = run("--version")
    assert res.returncode == 0
    assert npguest.__version__ in res.stdout


def test_usage_errors_exit_2_with_one_line():
    res = run("no-such-command")
    assert res.returncode == 2
    assert "invalid choice" in res.stderr


def test_missing_command_exits_2():
    assert run().returncode == 2


def test_tour_walks_every_step(tmp_path):
    out = io.StringIO()
    cli.tour(tmp_path, out)
    text = out.getvalue()
    for step in range(1, 11):
        assert f"== {step}." in text
    assert "b'hello, guest!'" in text
    assert "0xfeedface" in text
    assert "PartialBufferError: only used 4 bytes in 8 long buffer" in text
    assert "InvalidGuestAddressError: invalid guest address 0x20000" in text
    assert "b'NPGUEST\\x00CHANGED!'" in text
    assert "(3, 4)" in text and "(False, True)" in text
    # the tour really wrote the generated file through the file-backed region
    assert (tmp_path / "sample-guest.img").read_bytes()[:16] == b"NPGUEST\x00CHANGED!"


def test_tour_subprocess_keeps_dir(tmp_path):
    res = run("demo", "--dir", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert "== 10. Done" in res.stdout
    assert (tmp_path / "out" / "sample-guest.img").stat().st_size == 0x10000


def test_npguest_errors_exit_1(monkeypatch, capsys):
    from npguest.errors import MmapRegionError

    def boom(workdir, out=None):
        raise MmapRegionError("mapping failed for the test")

    monkeypatch.setattr(cli, "tour", boom)
    assert cli.main(["tour"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "npguest: error: mapping failed for the test"


@pytest.mark.parametrize("argv", [["tour", "--dir"], ["tour", "--bogus"]])
def test_bad_options_exit_2(argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2


# -- dump commands --------------------------------------------------------------------------


@pytest.fixture
def raw_dump(tmp_path):
    """A raw dump of 3 pages at guest 0x10000 with a banner crossing the first page boundary."""
    data = bytearray(np.random.default_rng(3).integers(0, 256, 0x3000, dtype=np.uint8))
    data[0xFFA:0x1006] = b"Linux versio"
    data[0x2100:0x2108] = bytes.fromhex("deadbeefcafef00d")
    path = tmp_path / "guest.raw"
    path.write_bytes(bytes(data))
    return path, bytes(data)


def call(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def test_number_parsing():
    assert cli._number("0x10") == 16 and cli._number("4K") == 4096
    assert cli._number("1_000") == 1000 and cli._number("2g") == 2 << 30
    for bad in ("x", "0x", "-1", str(2**64), "1T"):
        with pytest.raises(argparse.ArgumentTypeError):
            cli._number(bad)


def test_info_raw(raw_dump):
    path, _ = raw_dump
    status, out, _ = call("info", path, "--base", "0x10000")
    assert status == 0
    assert "format    raw" in out and "12,288 bytes in 1 regions" in out
    assert "0x0000000000010000-0x0000000000012fff" in out and "file @ 0x0" in out


def test_read_and_hexdump(raw_dump, tmp_path, capsysbinary):
    path, data = raw_dump
    assert cli.main(["read", str(path), "0x10ffa", "12", "--base", "64K"]) == 0
    assert capsysbinary.readouterr().out == b"Linux versio"
    status, _, _ = call("read", path, "0x2ff0", "0x20", "--zero-fill", "-o", tmp_path / "o")
    assert status == 0 and (tmp_path / "o").read_bytes() == data[-16:] + bytes(16)
    status, out, _ = call("hexdump", path, "0xfff8", "0x18", "--base", "0x10000")
    lines = out.splitlines()
    assert status == 0 and len(lines) == 2
    assert lines[0].startswith("0x000000000000fff8  ") and lines[0].count("--") == 8
    assert lines[1].startswith("0x0000000000010008")


def test_read_hole_is_one_line_error(raw_dump):
    path, _ = raw_dump
    status, out, err = call("read", path, "0x2ff0", "0x20")
    assert status == 1 and out == ""
    assert err == "npguest: error: only used 16 bytes in 32 long buffer\n"
    status, _, err = call("hexdump", path, "0x5000", "16")
    assert status == 1 and "invalid guest address 0x5000" in err
    status, _, err = call("read", path, "0", str(cli.MAX_SHOW + 1))
    assert status == 1 and "limit" in err


def test_find(raw_dump):
    path, _ = raw_dump
    status, out, err = call("find", path, "Linux versio", "--base", "0x10000")
    assert status == 0 and out.split() == ["0x0000000000010ffa"] and "1 match" in err
    with pytest.raises(SystemExit) as exc:  # an extra positional: a usage error
        call("find", path, "--hex", "deadbeef", "cafef00d")
    assert exc.value.code == 2
    status, out, _ = call("find", path, "--hex", "deadbeefcafef00d")
    assert status == 0 and out.split() == ["0x0000000000002100"]
    status, _, err = call("find", path, "--hex", "zz")
    assert status == 1 and "not a hex byte string" in err


def test_convert_and_diff(raw_dump, tmp_path):
    path, data = raw_dump
    out = tmp_path / "copy.raw"
    status, text, _ = call("convert", path, out, "--to", "raw")
    assert status == 0 and "wrote" in text and out.read_bytes() == data
    assert call("diff", path, out)[0] == 0
    changed = bytearray(data)
    changed[0x1800] ^= 1
    changed[0x2001] ^= 1
    (tmp_path / "b.raw").write_bytes(bytes(changed[:0x2000]) + bytes(changed[0x2000:]))
    status, text, err = call("diff", path, tmp_path / "b.raw")
    assert status == cli.DIFFERENT
    assert "0x0000000000001000-0x0000000000002fff        2 pages changed" in text
    assert "2 pages changed, 0 only in" in err
    (tmp_path / "short.raw").write_bytes(data[:0x1000])
    status, text, _ = call("diff", path, tmp_path / "short.raw")
    assert status == cli.DIFFERENT and "2 pages only in" in text


def test_dump_usage_errors(raw_dump):
    path, _ = raw_dump
    for argv in (["read", str(path), "zz", "1"], ["convert", str(path), "x"], ["info"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
    status, _, err = call("info", path, "--format", "raw", "--base", "1", "--base", "2")
    assert status == 0
    status, _, err = call("info", "/nonexistent/dump")
    assert status == 1 and err.startswith("npguest: error: cannot open")


def test_progress_bar_only_on_a_tty():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    quiet, tty = io.StringIO(), Tty()
    cli._Progress("x", quiet)(5, 10)
    bar = cli._Progress("copy", tty)
    bar(5, 10)
    bar(5, 10)  # same percentage: not redrawn
    bar(10, 10)
    assert quiet.getvalue() == ""
    assert tty.getvalue().count("\r") == 2 and "100%" in tty.getvalue()
    assert tty.getvalue().endswith("\n")


def test_quick_start_main_job(tmp_path):
    """The README's first command: sample, then info, hexdump and find on it."""
    sample = tmp_path / "sample.elf"
    res = run("sample", str(sample))
    assert res.returncode == 0 and "wrote" in res.stdout, res.stderr
    res = run("info", str(sample))
    assert res.returncode == 0, res.stderr
    assert "format    elf" in res.stdout and "cr3=0x9000" in res.stdout
    assert "OSRELEASE=6.1.0-npguest" in res.stdout and "3 regions" in res.stdout
    res = run("hexdump", str(sample), "0xfff000", "64")
    assert res.returncode == 0 and "Linux version 6." in res.stdout
    res = run("find", str(sample), "Linux version")
    assert res.returncode == 0 and res.stdout.split() == ["0x0000000000fff000"]
    assert "1 match" in res.stderr


def test_counts_and_page_sizes_are_checked(raw_dump):
    path, _ = raw_dump
    for argv in (
        ["find", str(path), "x", "--max", "0"],
        ["hexdump", str(path), "0", "0"],
        ["read", str(path), "0", "0"],
        ["diff", str(path), str(path), "--page-size", "3000"],
        ["diff", str(path), str(path), "--page-size", "1G"],
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2, argv


def test_broken_pipe_exits_quietly(tmp_path):
    (tmp_path / "big.raw").write_bytes(bytes(1 << 20))
    code = (
        f"{sys.executable} -m npguest read {tmp_path / 'big.raw'} 0 1M | head -c 10 > /dev/null; "
        "echo ${PIPESTATUS[0]}"
    )
    res = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() in ("0", str(cli.BROKEN_PIPE)) and res.stderr == ""


def test_info_reports_excluded_ranges(tmp_path):
    import numpy as np

    from npguest import GuestMemoryMmap
    from npguest.dumps.dump import DumpMemory, DumpMetadata

    regions = list(GuestMemoryMmap.from_ranges([(0, 0x1000)]).iter())
    meta = DumpMetadata("kdump", "x", excluded=np.array([[0x100, 0x200]], dtype=np.uint64))
    text = cli._info(DumpMemory(regions, meta), tmp_path / "x")
    assert "excluded  512 bytes in 1 ranges (holes)" in text


@pytest.mark.timeout(120)
def test_send_receive_on_loopback(tmp_path, capsys):
    sample = tmp_path / "s.elf"
    cli.sample_dump(sample)
    out = tmp_path / "copy.elf"
    args = ["receive", "--listen", "127.0.0.1:0", "--out", str(out), "--timeout", "60"]
    receiver = subprocess.Popen(
        [sys.executable, "-m", "npguest", *args], stderr=subprocess.PIPE, text=True
    )
    try:
        line = receiver.stderr.readline()
        assert line.startswith("listening on 127.0.0.1:")
        port = line.rsplit(":", 1)[1].strip()
        assert cli.main(["send", str(sample), "--to", f"127.0.0.1:{port}"]) == 0
        assert receiver.wait(60) == 0
        assert "received 17,432,576 bytes" in receiver.stderr.read()
    finally:
        receiver.kill()
        receiver.wait()
        receiver.stderr.close()
    assert "MiB/s), 1 round" in capsys.readouterr().err
    assert cli.main(["diff", str(sample), str(out)]) == 0


def test_send_errors_exit_1(tmp_path, capsys):
    sample = tmp_path / "s.elf"
    cli.sample_dump(sample)
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]  # closed again: nobody listens there
    assert cli.main(["send", str(sample), "--to", f"127.0.0.1:{port}", "--timeout", "5"]) == 1
    assert capsys.readouterr().err.startswith("npguest: error:")
    with pytest.raises(SystemExit) as info:
        cli.main(["send", str(sample), "--to", "nohostport"])
    assert info.value.code == 2


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_send_receive_timeouts_must_be_positive(tmp_path, capsys, timeout):
    for argv in (
        ["send", str(tmp_path / "s.elf"), "--to", "127.0.0.1:1", "--timeout", timeout],
        ["receive", "--listen", "127.0.0.1:0", "--out", str(tmp_path / "o.elf"),
         "--timeout", timeout],
    ):  # fmt: skip
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
        assert "--timeout" in capsys.readouterr().err
