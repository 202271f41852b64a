"""Must-show: the runtime install alone serves an optimized artifact. No torch, no transformers, not even installed.

A fresh venv (``python -m venv``, no system site-packages) gets ``pip install '<copy of this repo>[cpu]'`` -
the base package (numpy, tokenizers, click, pyyaml) plus onnxruntime - and nothing else. It loads the
artifact that ``optimize`` made from the tiny model, predicts, and reports which heavy modules are
imported and which are installed: none may be.

pip resolves from the indexes pip is configured with (PyPI, a pip.conf, PIP_INDEX_URL / PIP_FIND_LINKS) and
reuses pip's download cache, so after the CI's own ``pip install -e '.[dev]'`` it downloads little or nothing:
about 30-60 s on the 2-core CI machine. Offline, point it at a wheelhouse made beforehand with
``pip download -d WHEELS '.[cpu]' setuptools`` and ``PIP_NO_INDEX=1 PIP_FIND_LINKS=WHEELS``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgekit.runtime import load

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "optimum", "onnx", "tensorrt", "tensorrt_rtx", "accelerate")
TEXTS = ["a gripping , funny film", "dull", "", "the plot was long and boring but the acting was superb ."]

DEVICE_APP = """
import importlib.util, json, sys
from edgekit.runtime import load
import edgekit

clf = load(sys.argv[1])
predictions = clf.predict(json.loads(sys.argv[2]))
try:
    load(sys.argv[3])
    missing_error = None
except Exception as exc:
    missing_error = f"{type(exc).__name__}: {exc}"
print(json.dumps({
    "predictions": predictions,
    "imported": [m for m in json.loads(sys.argv[4]) if m in sys.modules],
    "installed": [m for m in json.loads(sys.argv[4]) if importlib.util.find_spec(m) is not None],
    "edgekit_file": edgekit.__file__,
    "missing_error": missing_error,
}))
"""


def _run(cmd: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd[:4]))} ... failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _source_copy(dst: Path) -> Path:
    """What a user's ``pip install`` of the repo sees: pyproject, README and the package, no build leftovers."""
    dst.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, dst / name)
    shutil.copytree(ROOT / "edgekit", dst / "edgekit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dst


def test_runtime_only_venv_predicts_without_torch(tiny_optimized, tmp_path):
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "venv", venv], timeout=120, env=env)
    python = venv / "bin" / "python"
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{_source_copy(tmp_path / 'src')}[cpu]"],
         timeout=600, env=env)
    frozen = _run([python, "-m", "pip", "list", "--format=json"], timeout=120, env=env).stdout
    installed = {d["name"].lower().replace("_", "-") for d in json.loads(frozen)}
    assert {"edgekit", "onnxruntime", "tokenizers", "numpy"} <= installed
    assert not installed & {"torch", "transformers", "optimum", "onnx", "tensorrt", "tensorrt-rtx"}

    broken = shutil.copytree(tiny_optimized, tmp_path / "no-tokenizer")
    (broken / "tokenizer.json").unlink()
    app = tmp_path / "app" / "device_app.py"  # outside the repo: edgekit must come from the venv
    app.parent.mkdir()
    app.write_text(DEVICE_APP)
    out = _run([python, app, tiny_optimized, json.dumps(TEXTS), broken, json.dumps(HEAVY)], timeout=120,
               env=env, cwd=app.parent).stdout
    report = json.loads(out.strip().splitlines()[-1])

    assert Path(report["edgekit_file"]).is_relative_to(venv), report["edgekit_file"]
    assert report["imported"] == [] and report["installed"] == []
    assert report["predictions"] == load(tiny_optimized).predict(TEXTS)
    assert report["missing_error"].startswith("ModelError: ") and "missing tokenizer.json" in report["missing_error"]


def test_runtime_extra_pulls_no_toolchain():
    """The declared runtime install: the base dependencies plus [cpu], and no toolchain package among them."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [r.split(">")[0].split("=")[0].split("[")[0].strip().lower()
             for r in project["dependencies"] + project["optional-dependencies"]["cpu"]]
    # jinja2: the chat templates of runtime.generate (text-only; no toolchain package)
    assert set(names) == {"numpy", "tokenizers", "click", "pyyaml", "onnxruntime", "jinja2"}
