"""Optimum's CPU recipe, run inside bench/peers/optimum-venv (optimum-onnx caps transformers < 4.58).

    optimum-cli export onnx --model MODEL --task text-classification WORK/export
    ORTOptimizer   (OptimizationConfig(optimization_level=LEVEL))      skipped for --level 0
    ORTQuantizer   (AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False))

Prints one JSON object: {"status": "ok"|"failed", "model": path to the int8 ONNX, "error": first line, ...}.
Timing and accuracy are measured by run_peers.py, in the same harness and ONNX Runtime as every other peer.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import traceback
from importlib import metadata
from pathlib import Path


def export(model: str, work: Path) -> Path:
    out = work / "export"
    if not (out / "model.onnx").is_file():
        cli = Path(sys.executable).parent / "optimum-cli"
        subprocess.run([str(cli), "export", "onnx", "--model", model, "--task", "text-classification", str(out)],
                       check=True, capture_output=True, text=True)
    return out


def optimize(folder: Path, level: int, work: Path) -> Path:
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    out = work / f"O{level}"
    shutil.rmtree(out, ignore_errors=True)
    ORTOptimizer.from_pretrained(folder).optimize(OptimizationConfig(optimization_level=level), save_dir=out)
    return out


def quantize(folder: Path, work: Path, level: int) -> Path:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    onnx_files = sorted(folder.glob("*.onnx"))
    out = work / f"O{level}-int8"
    shutil.rmtree(out, ignore_errors=True)
    quantizer = ORTQuantizer.from_pretrained(folder, file_name=onnx_files[0].name)
    quantizer.quantize(AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False), save_dir=out)
    return next(out.glob("*quantized*.onnx"))


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--level", type=int, default=2, choices=[0, 1, 2, 99])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    versions = {p: metadata.version(p) for p in ("optimum", "optimum-onnx", "transformers", "onnxruntime", "torch")}
    step = "export"
    try:
        folder = export(args.model, args.work)
        step = f"ORTOptimizer O{args.level}"
        if args.level:
            folder = optimize(folder, args.level, args.work)
        step = "ORTQuantizer avx512_vnni dynamic"
        model = quantize(folder, args.work, args.level)
    except Exception as exc:  # report any failure of the recipe as data, not a crash
        detail = exc.stderr if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        lines = [line.strip() for line in (detail or type(exc).__name__).strip().splitlines() if line.strip()]
        print(json.dumps({"status": "failed", "step": step, "error": f"{type(exc).__name__}: {_short(lines[-1])}"
                          if lines else type(exc).__name__, "traceback": traceback.format_exc()[-3000:],
                          "versions": versions}))
        return 0
    print(json.dumps({"status": "ok", "model": str(model), "versions": versions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
