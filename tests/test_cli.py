"""The `npguest` command: help, the tour on generated data, exit codes."""

import io
import subprocess
import sys

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
