"""The command line as a user meets it: help everywhere, a version, clear errors."""

import subprocess
import sys

import pytest

from glacier_stac import __version__

COMMANDS = [[], ["demo"], ["train"], ["tiles"], ["synthetic"], ["synthetic", "generate"], ["synthetic", "render"],
            ["synthetic", "quicklook"], ["catalog"], ["catalog", "serve"], ["catalog", "search"]]


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "glacier_stac.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(cmd):
    p = run(*cmd, "--help")
    assert p.returncode == 0, p.stderr
    assert "Usage" in p.stdout


def test_version():
    p = run("--version")
    assert p.returncode == 0 and __version__ in p.stdout


@pytest.mark.parametrize("args, words", [
    (["catalog", "search", "179.5,60,-179.5,61", "--years", "2021", "--url", "http://127.0.0.1:9"], "antimeridian"),
    (["catalog", "search", "10,46,10.1,46.1", "--years", "2023-2021", "--url", "http://127.0.0.1:9"], "reversed"),
    (["catalog", "search", "10,46,10.1,46.1", "--years", "2021", "--sensors", "modis"], "unknown sensor"),
    (["catalog", "search", "10,46,10.1,46.1", "--years", "2021", "--url", "http://127.0.0.1:9"], "unreachable"),
    (["train", "--out", "x.pt", "--features", "B99"], "unknown features"),
    (["train", "--out", "x.pt", "--seeds", "1,2", "--val-seeds", "2"], "overlap"),
    (["tiles", "/nonexistent/rgi.gpkg"], "rgi.gpkg"),
])
def test_bad_input_is_named_without_traceback(args, words):
    p = run(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert words in p.stderr and "Traceback" not in p.stderr
