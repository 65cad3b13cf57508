import subprocess
import sys

from lbcore import __version__


def test_version_flag():
    out = subprocess.run(["lbcore", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"lbcore {__version__}"


def test_help_lists_usage():
    out = subprocess.run([sys.executable, "-m", "lbcore", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "usage: lbcore" in out.stdout
