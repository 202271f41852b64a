"""onnxruntime-genai's model builder, run as a subprocess (it prints a great deal and writes a cache dir in the CWD).

Its output is kept in a log file; a failure becomes a one-line BackendError
with the builder's last message.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..atomic import work_folder
from ..deps import require
from ..errors import BackendError, MissingDependencyError

MODULE = "onnxruntime_genai.models.builder"


def build(folder: Path, out: Path, precision: str, extra: dict[str, object] | None = None) -> None:
    """Write ``out/model.onnx`` (+ ``model.onnx.data``, ``genai_config.json``) for ``precision`` on the CPU EP."""
    require_llm("onnxruntime_genai")
    folder, out = Path(folder).resolve(), Path(out).resolve()  # the builder runs in ``work``: a relative -i was read
    out.mkdir(parents=True, exist_ok=True)                     # as a hub id (a hub-token error, offline)
    with work_folder(out) as work:  # inside ``out`` (a writer's temporary folder): a SIGKILL leaves nothing in /tmp
        cmd = [sys.executable, "-m", MODULE, "-i", str(folder), "-o", str(out), "-p", precision, "-e", "cpu",
               "-c", str(Path(work) / "cache")]
        if extra:
            cmd += ["--extra_options", *(f"{k}={_text(v)}" for k, v in extra.items())]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TQDM_DISABLE="1")
        log = Path(work) / "builder.log"
        with open(log, "w") as sink:
            done = subprocess.run(cmd, cwd=work, env=env, stdout=sink, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            raise BackendError(f"onnxruntime-genai's model builder failed on '{folder}' ({precision})",
                               _last_error(log.read_text(errors="replace")),
                               "Try --route dynamo, or check that the model folder loads with transformers")
    if not (out / "model.onnx").is_file():
        raise BackendError("onnxruntime-genai's model builder wrote no model.onnx", f"output folder {out}",
                           "Try --route dynamo")


def require_llm(module: str):
    """``require`` for the llm extra's modules (edgekit.deps does not list them yet: name the right extra)."""
    try:
        return require(module)
    except MissingDependencyError as exc:
        raise MissingDependencyError(module, "llm", exc.__cause__) from None


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["no output"])[-1][:300]
