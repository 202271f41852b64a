"""Importing edgekit, its runtime, or running `edgekit --help` must not import the heavy toolchain."""

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "optimum", "tensorrt", "tensorrt_rtx", "onnxruntime")


@pytest.mark.parametrize("code", [
    "import edgekit",
    "import edgekit.runtime",
    "from edgekit.cli import main\nimport sys\nsys.argv=['edgekit','--help']\ntry:\n    main()\nexcept SystemExit:\n    pass",
])
def test_no_heavy_import(code):
    check = f"{code}\nimport sys\nbad=[m for m in {HEAVY!r} if m in sys.modules]\nprint('HEAVY=' + ','.join(bad))"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    marker = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert marker == ["HEAVY="], f"heavy modules imported: {marker}"
