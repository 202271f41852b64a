"""Peers side by side, in one run on one machine: PyTorch eager fp32, PyTorch dynamic int8, Optimum's CPU
recipe and edgekit's artifacts, on the reference model and SST-2 dev: accuracy, latency, speedup ratios.

Run from the repository root with edgekit's environment (``pip install -e '.[dev]'``):

    python bench/peers/run_peers.py --setup-optimum-venv      # full run -> bench/peers/results.{md,json}
    python bench/peers/run_peers.py --max-samples 50 --iterations 20 --min-seconds 0 --out /tmp/peers  # smoke

Every peer is timed by the same harness (``edgekit.bench.measure_point``: warm-up by count and seconds,
timed runs by count and seconds), on the same pre-tokenized SST-2 sentences, batch size and intra-op
threads; every ONNX peer runs on this environment's ONNX Runtime. Optimum's recipe is *built* in its
own venv (``bench/peers/optimum-venv``; optimum-onnx caps transformers < 4.58) by optimum_recipe.py;
a recipe that fails is recorded as failed with its error, not dropped. Measure on a quiet machine: the
results carry the load average and flag noisy rows.
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = ROOT.parent / "shared"
OPTIMUM_PINS = ["optimum-onnx[onnxruntime]", "transformers<4.58"]
# Optimum's CPU recipe as documented is level 2; levels 1 and 0 (no ORTOptimizer) are run too, so the
# comparison has an Optimum row even where a level fails.
OPTIMUM_LEVELS = {2: "Optimum O2 + dynamic int8 (avx512_vnni)", 1: "Optimum O1 + dynamic int8 (avx512_vnni)",
                  0: "Optimum export + dynamic int8 (avx512_vnni), no ORTOptimizer"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=SHARED / "models" / "minilm-l6-sst2")
    p.add_argument("--data", type=Path, default=SHARED / "data" / "sst2" / "dev.tsv")
    p.add_argument("--max-samples", type=int, default=None, help="labeled rows for accuracy (default: all)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: usable cores)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--warmup-seconds", type=float, default=0.5)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--min-seconds", type=float, default=5.0)
    p.add_argument("--samples", type=int, default=512, help="sentences cycled through while timing")
    p.add_argument("--out", type=Path, default=HERE, help="folder for results.md and results.json")
    p.add_argument("--work", type=Path, default=HERE / "work", help="built artifacts (gitignored)")
    p.add_argument("--optimum-venv", type=Path, default=HERE / "optimum-venv")
    p.add_argument("--setup-optimum-venv", action="store_true", help="create --optimum-venv when it is missing")
    p.add_argument("--skip-optimum", action="store_true", help="leave Optimum's recipe out (recorded as skipped)")
    return p.parse_args(argv)


def setup_optimum_venv(venv: Path) -> None:
    """A separate venv for optimum-onnx, with torch's CPU build (same version as edgekit's)."""
    import torch

    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, torch_pin], check=True)
    subprocess.run([*pip, *OPTIMUM_PINS], check=True)


def build_optimum(args, level: int) -> dict:
    python = args.optimum_venv / "bin" / "python"
    if args.skip_optimum:
        return {"status": "skipped", "error": "--skip-optimum"}
    if not python.is_file():
        return {"status": "skipped", "error": f"no Optimum venv at {args.optimum_venv} (pass --setup-optimum-venv)"}
    result = subprocess.run([str(python), str(HERE / "optimum_recipe.py"), "--model", str(args.model),
                             "--work", str(args.work / "optimum"), "--level", str(level)],
                            capture_output=True, text=True)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"status": "failed", "error": (result.stderr.strip().splitlines() or ["no output"])[-1][:400]}


def build_edgekit(args) -> tuple[Path, Path]:
    from edgekit.export import export
    from edgekit.quantize import QuantizeOptions, quantize

    fp32 = export(args.model, args.work / "edgekit-fp32", data=args.data, force=True)
    int8 = quantize(fp32.path, args.work / "edgekit-int8", QuantizeOptions(target="cpu"), force=True)
    return fp32.model_file, int8.model_file


def torch_int8_session(model: Path, threads: int):
    """PyTorch eager with torch.ao.quantization.quantize_dynamic over every nn.Linear (qint8 weights)."""
    from edgekit.hf import TorchSession

    class TorchDynamicInt8Session(TorchSession):
        backend = "pytorch (dynamic int8)"

        def open(self):
            if self.model is not None:
                return self
            super().open()
            import torch

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favor of torchao
                self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
            return self

    return TorchDynamicInt8Session(model, threads=threads)


def peers(args, threads: int) -> list[dict]:
    """Each peer: name, group, precision, how to open its session (or why it has none)."""
    from edgekit.hf import TorchSession
    from edgekit.runtime.session import OrtSession

    rows = [{"name": "PyTorch eager fp32", "group": "pytorch", "precision": "fp32",
             "session": lambda: TorchSession(args.model, threads=threads), "file": args.model},
            {"name": "PyTorch dynamic int8 (torch.ao quantize_dynamic)", "group": "pytorch", "precision": "int8",
             "session": lambda: torch_int8_session(args.model, threads), "file": None}]
    for level, name in OPTIMUM_LEVELS.items():
        built = build_optimum(args, level)
        path = Path(built["model"]) if built.get("status") == "ok" else None
        rows.append({"name": name, "group": "optimum", "precision": "int8", "file": path,
                     "status": built.get("status"), "error": built.get("error"), "step": built.get("step"),
                     "versions": built.get("versions"),
                     "session": (lambda p=path: OrtSession(p, threads=threads)) if path else None})
    fp32, int8 = build_edgekit(args)
    rows += [{"name": "edgekit export (fp32 ONNX)", "group": "edgekit", "precision": "fp32", "file": fp32,
              "session": lambda: OrtSession(fp32, threads=threads)},
             {"name": "edgekit quantize --target cpu (fusion + dynamic int8)", "group": "edgekit", "precision": "int8",
              "file": int8, "session": lambda: OrtSession(int8, threads=threads)}]
    return rows


def measure(peer: dict, encoder, ds, labels, bench_texts, options) -> dict:
    """Latency first (session open), then accuracy over the labeled rows (evaluate closes the session)."""
    import numpy as np

    from edgekit.bench import measure_point
    from edgekit.check import evaluate
    from edgekit.environment import load_average

    row = {k: peer.get(k) for k in ("name", "group", "precision", "status", "error", "step", "versions")}
    if peer["session"] is None:
        row["status"] = row["status"] if row["status"] in ("failed", "skipped") else "failed"
        return row
    print(f"[peers] {peer['name']}: timing ...", file=sys.stderr, flush=True)
    session = peer["session"]()
    session.open()
    row["load_average_before"] = load_average()
    point = measure_point(session, encoder, bench_texts, options)
    row["backend"] = session.backend
    row["size_mb"] = _size_mb(peer, session)
    logits = evaluate(session, encoder, ds.texts, options.batch_size, ds.pairs)
    row["accuracy"] = float((logits.argmax(-1) == np.asarray(labels)).mean())
    row.update({k: point[k] for k in ("batch_size", "seq_len", "tokens_mean", "iterations", "seconds", "warmup_runs",
                                      "latency_ms", "cv", "cv_threshold", "noisy", "throughput_per_s",
                                      "samples_ms", "warnings")})
    row.update(status="ok", mode="model-only")
    return row


def _size_mb(peer: dict, session) -> float | None:
    file = peer.get("file")
    if file is not None and Path(file).is_file():
        return Path(file).stat().st_size / 1e6
    if file is not None and Path(file).is_dir():
        return sum(f.stat().st_size for f in Path(file).glob("*.safetensors")) / 1e6
    import torch

    buf = io.BytesIO()
    torch.save(session.model.state_dict(), buf)
    return buf.tell() / 1e6


def add_ratios(rows: list[dict]) -> dict:
    """p50 speedups against PyTorch eager fp32 and against the first Optimum recipe that worked."""
    ok = [r for r in rows if r["status"] == "ok"]
    eager = next((r for r in ok if r["name"] == "PyTorch eager fp32"), None)
    optimum = next((r for r in ok if r["group"] == "optimum"), None)
    for r in ok:
        p50 = r["latency_ms"]["p50"]
        r["speedup_vs_pytorch"] = eager["latency_ms"]["p50"] / p50 if eager else None
        r["speedup_vs_optimum"] = optimum["latency_ms"]["p50"] / p50 if optimum else None
    return {"pytorch": eager["name"] if eager else None, "optimum": optimum["name"] if optimum else None}


def to_markdown(results: dict) -> str:
    from edgekit.report import environment_lines

    o, n = results["options"], results["accuracy_rows"]
    lines = [f"# {results['title']}", "",
             f"One run on one machine, {results['date']} (edgekit commit {results['commit']}). Command, from the "
             "repository root:", "", "```bash", results["command"], "```", "",
             f"Accuracy on {n} labeled rows of `{results['data']}`; latency model-only (tokenization excluded) on the "
             f"same pre-tokenized sentences for every peer, batch {o['batch_size']}, {results['threads']} intra-op "
             f"threads, at least {o['iterations']} timed runs and {o['min_seconds']} s after at least {o['warmup']} "
             f"warm-up runs and {o['warmup_seconds']} s. Speedups are p50 ratios (higher = faster) against "
             f"**{results['reference']['pytorch']}** and **{results['reference']['optimum']}**.", "",
             "| peer | accuracy | p50 ms | p90 ms | p99 ms | CV | items/s | size MB | vs PyTorch eager | vs Optimum |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['status']} | — | — | — | — | — | — | — | — |")
            continue
        lat, flag = r["latency_ms"], " NOISY" if r["noisy"] else ""
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} | {lat['p50']:.2f} | {lat['p90']:.2f} | {lat['p99']:.2f} "
                     f"| {r['cv']:.0%}{flag} | {r['throughput_per_s']:.1f} | {r['size_mb']:.1f} "
                     f"| {_x(r['speedup_vs_pytorch'])} | {_x(r['speedup_vs_optimum'])} |")
    failed = [r for r in results["rows"] if r["status"] != "ok"]
    if failed:
        lines += ["", "## Recipes that did not produce a model", ""]
        lines += [f"- **{r['name']}**: {r['status']}" + (f" at {r['step']}" if r.get("step") else "")
                  + f": `{r['error']}`" for r in failed]
    if results["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- **WARNING** {w}" for w in results["warnings"]]
    opt_versions = next((r["versions"] for r in results["rows"] if r.get("versions")), None)
    lines += ["", "## Machine", ""] + [f"- {line}" for line in environment_lines(results["environment"])]
    if opt_versions:
        lines.append("- Optimum venv (builds Optimum's models only): "
                     + ", ".join(f"{k} {v}" for k, v in opt_versions.items()))
    lines += ["", "Raw per-run samples, options and the full environment: `results.json` "
              "(render it with `edgekit report bench/peers/results.json --out DIR`).", ""]
    return "\n".join(lines)


def _x(value) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip() + (" (+ uncommitted changes)" if _dirty() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _dirty() -> bool:
    out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                         text=True).stdout
    return bool(out.strip())


def _command(argv: list[str]) -> str:
    return shlex.join(["python", "bench/peers/run_peers.py", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    for path in (args.model, args.data):
        if not path.exists():
            print(f"Error: {path} not found: the reference model and SST-2 live in ../shared. "
                  "Pass --model and --data.", file=sys.stderr)
            return 1
    if args.setup_optimum_venv and not args.skip_optimum and not (args.optimum_venv / "bin" / "python").is_file():
        setup_optimum_venv(args.optimum_venv)
    from edgekit.artifact import resolve
    from edgekit.bench import BenchOptions
    from edgekit.check import labeled_data
    from edgekit.data import load_dataset
    from edgekit.environment import environment, load_average
    from edgekit.runtime.session import default_threads
    from edgekit.sessions import encoder_for

    threads = args.threads or default_threads()
    options = BenchOptions(batch_size=args.batch_size, warmup=args.warmup, warmup_seconds=args.warmup_seconds,
                           iterations=args.iterations, min_seconds=args.min_seconds, threads=threads,
                           samples=args.samples)
    options.validate()
    ds, labels = labeled_data(resolve(args.model), args.data, max_samples=args.max_samples)
    bench_texts = load_dataset(args.data, require_labels=False).subset(args.samples).texts
    encoder = encoder_for(args.model)
    started, load_start = time.time(), load_average()
    rows = [measure(p, encoder, ds, labels, bench_texts, options) for p in peers(args, threads)]
    reference = add_ratios(rows)
    warnings_ = _warnings(rows, load_start)
    results = {"schema": "edgekit.peers/1", "title": "Peers side by side: MiniLM-L6 SST-2 classifier on CPU",
               "command": _command(argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
               "commit": _commit(), "model": str(args.model), "data": str(args.data), "accuracy_rows": len(labels),
               "threads": threads, "options": {**vars(options)}, "reference": reference,
               "seconds_total": round(time.time() - started, 1), "load_average_start": load_start,
               "warnings": warnings_, "rows": rows, "environment": environment(threads=threads)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "results.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


def _warnings(rows: list[dict], load_start: float | None) -> list[str]:
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    found = []
    if load_start is not None and load_start > 1.5:
        found.append(f"busy machine: 1-minute load average {load_start} at the start (on {cores} cores); "
                     "timings are not quiet-machine figures")
    for r in rows:
        found += [f"{r['name']}: {w}" for w in r.get("warnings") or []]
    return found


if __name__ == "__main__":
    sys.exit(main())
