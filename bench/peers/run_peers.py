"""Peers side by side, in one run on one machine: PyTorch eager fp32, PyTorch dynamic int8, Optimum's CPU
recipe and edgekit's artifacts, on the reference model and SST-2 dev: accuracy, latency, speedup ratios.

Run from the repository root with edgekit's environment (``pip install -e '.[dev]'``):

    python bench/peers/run_peers.py --setup-optimum-venv      # full run -> bench/peers/results.{md,json}
    python bench/peers/run_peers.py --max-samples 50 --rounds 4 --runs 2 --throughput-batch 0 --skip-optimum \
        --out /tmp/peers --work /tmp/peers/work  # smoke

Every peer is timed in one process by ``edgekit.paired``: interleaved rounds (every peer, then the
reverse order next round) on the same pre-tokenized SST-2 sentences, batch size and intra-op threads, so
load on a shared machine lands on every peer alike; ratios are medians of per-round p50 ratios with their
IQR; every ONNX peer runs on this environment's ONNX Runtime. Optimum's recipe is *built* in its
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
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = ROOT.parent / "shared"
OPTIMUM_PINS = ["optimum-onnx[onnxruntime]", "transformers<4.58"]
# Optimum's CPU recipe as documented is level 2; levels 1 and 0 (no ORTOptimizer) are run too, so the
# comparison has an Optimum row even where a level fails.
OPTIMUM_LEVELS = {2: "Optimum O2 + dynamic int8 (avx512_vnni)", 1: "Optimum O1 + dynamic int8 (avx512_vnni)",
                  0: "Optimum export + dynamic int8 (avx512_vnni), no ORTOptimizer"}
DEFAULT_INT8 = "edgekit optimize default int8 (fused)"
FAST_INT8 = "edgekit optimize fastest-within-budget (pruned FFN -50%, 5/6 blocks, distilled, int8)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=SHARED / "models" / "minilm-l6-sst2")
    p.add_argument("--data", type=Path, default=SHARED / "data" / "sst2" / "dev.tsv")
    p.add_argument("--max-samples", type=int, default=None, help="labeled rows for accuracy (default: all)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: usable cores)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per peer before the first round")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds (every peer, same inputs, each round)")
    p.add_argument("--runs", type=int, default=24,
                   help="timed runs per peer per round (8 gave per-round ratios ~0.3 wide on the 2-core machine)")
    p.add_argument("--throughput-batch", type=int, default=8, help="batch of the throughput table (0 = no table)")
    p.add_argument("--throughput-seq", type=int, default=128, help="tokens per input of the throughput table")
    p.add_argument("--throughput-rounds", type=int, default=8)
    p.add_argument("--throughput-runs", type=int, default=2)
    p.add_argument("--samples", type=int, default=512, help="sentences cycled through while timing")
    p.add_argument("--out", type=Path, default=HERE, help="folder for results.md and results.json")
    p.add_argument("--work", type=Path, default=HERE / "work", help="built artifacts (gitignored)")
    p.add_argument("--optimum-venv", type=Path, default=HERE / "optimum-venv")
    p.add_argument("--setup-optimum-venv", action="store_true", help="create --optimum-venv when it is missing")
    p.add_argument("--skip-optimum", action="store_true", help="leave Optimum's recipe out (recorded as skipped)")
    p.add_argument("--fast-recipe", type=Path, default=ROOT / "models" / "minilm-l6-sst2-fast.yaml",
                   help="edgekit's 'fastest within budget' recipe (pruned + distilled + int8), run on --model/--data")
    p.add_argument("--fast-artifact", type=Path, default=None,
                   help="an artifact already built by --fast-recipe (skips the ~5 min prune + recovery)")
    p.add_argument("--no-fast", action="store_true", help="leave the pruned recipe out")
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


def build_fast(args) -> dict:
    """``edgekit optimize --recipe FAST`` on --model / --data, as a user runs it; its report says what it took."""
    out = args.fast_artifact or args.work / "edgekit-fast"
    if args.fast_artifact is None:
        cmd = [sys.executable, "-m", "edgekit", "optimize", str(args.model), "--recipe", str(args.fast_recipe),
               "--data", str(args.data), "--out", str(out), "--force"]
        print(f"[peers] building the pruned recipe: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        result = subprocess.run(cmd, text=True, stdout=subprocess.PIPE)
        if result.returncode not in (0, 3):  # 3: built, gate failed (the table shows the accuracy)
            return {"status": "failed", "error": f"edgekit optimize exited {result.returncode}"}
    report = json.loads((out / "report.json").read_text())
    stages = {s["name"]: s.get("seconds") for s in report.get("stages", [])}
    return {"status": "ok", "model": out / "model.onnx", "seconds_total": report.get("seconds_total"),
            "stages": stages, "passed": report.get("passed"), "recipe": str(args.fast_recipe),
            "params": (report.get("prune") or {}).get("params")}


def build_edgekit(args) -> tuple[Path, Path]:
    from edgekit.export import export
    from edgekit.quantize import QuantizeOptions, quantize

    fp32 = export(args.model, args.work / "edgekit-fp32", data=args.data, force=True)
    # as `edgekit optimize MODEL --data DATA` quantizes: default options, calibration data = the gate's data
    int8 = quantize(fp32.path, args.work / "edgekit-int8", QuantizeOptions(target="cpu"), calibration_data=args.data,
                    force=True)
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
             {"name": DEFAULT_INT8, "group": "edgekit",
              "precision": "int8", "file": int8, "session": lambda: OrtSession(int8, threads=threads),
              "manifest": json.loads((int8.parent / "manifest.json").read_text())}]
    if not args.no_fast:
        fast = build_fast(args)
        path = fast.get("model")
        rows.append({"name": FAST_INT8, "group": "edgekit", "precision": "int8", "file": path,
                     "status": fast["status"], "error": fast.get("error"), "build": fast,
                     "session": (lambda p=path: OrtSession(p, threads=threads)) if path else None})
    return rows


def accuracy(peer: dict, encoder, ds, labels) -> dict:
    """Dev accuracy; int8 peers at batch 1 (dynamic int8's activation scales depend on padding), fp32 at 32."""
    import numpy as np

    from edgekit.check import evaluate

    row = {k: peer.get(k) for k in ("name", "group", "precision", "status", "error", "step", "versions", "build")}
    if peer["session"] is None:
        row["status"] = row["status"] if row["status"] in ("failed", "skipped") else "failed"
        return row
    print(f"[peers] {peer['name']}: accuracy ...", file=sys.stderr, flush=True)
    session = peer["session"]()
    session.open()
    row["backend"] = session.backend
    row["size_mb"] = _size_mb(peer, session)
    row["eval_batch_size"] = 1 if peer["precision"] == "int8" else 32
    logits = evaluate(session, encoder, ds.texts, row["eval_batch_size"], ds.pairs)
    row["accuracy"] = float((logits.argmax(-1) == np.asarray(labels)).mean())
    row["status"] = "ok"
    if peer.get("manifest"):
        row["int8_choice"] = peer["manifest"].get("steps", {}).get("int8_choice")
        row["fusion"] = peer["manifest"].get("steps", {}).get("fusion")
        row["rewrites"] = {k: v for k, v in peer["manifest"].get("steps", {}).items()
                           if k in ("skip_layernorm", "first_token", "first_token_query")}
    return row


def timing(peer_list: list[dict], rows: list[dict], encoder, texts, options) -> dict:
    """Every working peer timed in interleaved rounds on the same inputs (edgekit.paired)."""
    from edgekit.paired import paired_sessions

    ok = [p for p, r in zip(peer_list, rows) if r["status"] == "ok"]
    sessions = {p["name"]: p["session"]().open() for p in ok}
    print(f"[peers] timing {len(sessions)} peers interleaved: batch {options.batch_size}, seq "
          f"{options.seq_len or 'real'}, {options.rounds} rounds x {options.runs} runs ...", file=sys.stderr, flush=True)
    try:
        return paired_sessions(sessions, encoder, texts, options, baseline="PyTorch eager fp32")
    finally:
        for s in sessions.values():
            s.close()


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


def add_ratios(rows: list[dict], result: dict) -> dict:
    """Per-round p50 ratios (median, IQR) against PyTorch eager fp32 and against Optimum's fastest working recipe."""
    from edgekit.paired import pair_ratio

    arts = result["artifacts"]
    optimum = [r["name"] for r in rows if r["group"] == "optimum" and r["name"] in arts]
    best = min(optimum, key=lambda n: arts[n]["p50_ms"]) if optimum else None
    table = {}
    for r in rows:
        if r["name"] not in arts:
            continue
        table[r["name"]] = {**{k: arts[r["name"]][k] for k in ("p50_ms", "p90_ms", "throughput_per_s", "runs")},
                            "vs_pytorch": pair_ratio(arts, "PyTorch eager fp32", r["name"]),
                            "vs_optimum": pair_ratio(arts, best, r["name"]) if best else None}
    return {"optimum_reference": best, "rows": table}


def _table(results: dict, key: str, batch_note: str) -> list[str]:
    t = results[key]
    lines = [f"**{batch_note}** — load average {t['load_average_before']} before, {t['load_average_after']} after; "
             f"{t['options']['rounds']} rounds x {t['options']['runs']} runs per peer, {results['threads']} intra-op "
             f"threads, mean {t['tokens_mean']:.0f} tokens per batch's longest input. Ratios: median of per-round p50 "
             "ratios [IQR over rounds], higher = faster.", "",
             "| peer | accuracy | p50 ms | items/s | vs PyTorch eager | vs Optimum best |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        m = t["ratios"]["rows"].get(r["name"])
        if m is None:
            lines.append(f"| {r['name']} | {r['status']} | — | — | — | — |")
            continue
        lines.append(f"| {r['name']} | {r['accuracy']:.4f} | {m['p50_ms']:.2f} | {m['throughput_per_s']:.1f} "
                     f"| {_r(m['vs_pytorch'])} | {_r(m['vs_optimum'])} |")
    return lines + [""]


def to_markdown(results: dict) -> str:
    from edgekit.report import environment_lines

    o, n = results["options"], results["accuracy_rows"]
    lines = [f"# {results['title']}", "",
             f"One run on one machine, {results['date']} (edgekit commit {results['commit']}), "
             f"{results['seconds_total']:.0f} s in all. Command, from the repository root:", "", "```bash",
             results["command"], "```", "",
             f"Accuracy on {n} labeled rows of `{results['data']}` (int8 peers at batch 1: dynamic int8's activation "
             "scales depend on padding; fp32 peers at batch 32). Latency is model-only (tokenization excluded): every "
             "peer is timed in the same process, in interleaved rounds (A B C ..., then reversed) on the same "
             "pre-tokenized SST-2 sentences (`edgekit.paired`), so load on this shared machine lands on every peer "
             "alike. " + ("**The machine was shared with other jobs: absolute ms are not quiet-machine figures; quote "
                          "the ratios.** " if any("busy machine" in w for w in results["warnings"]) else
                          "No busy-machine warning was raised (load averages in each table's heading). ")
             + f"Optimum reference: **{results['batch1']['ratios']['optimum_reference']}** (its fastest "
             "working recipe in this run).", ""]
    lines += _table(results, "batch1", f"Batch {o['batch_size']}, real sentence lengths")
    if results.get("throughput"):
        lines += _table(results, "throughput", f"Batch {results['throughput']['options']['batch_size']}, sequence "
                        f"length {results['throughput']['options']['seq_len']} (throughput)")
    lines += _edgekit_notes(results["rows"])
    failed = [r for r in results["rows"] if r["status"] != "ok"]
    if failed:
        lines += ["## Recipes that did not produce a model", ""]
        lines += [f"- **{r['name']}**: {r['status']}" + (f" at {r['step']}" if r.get("step") else "")
                  + f": `{r['error']}`" for r in failed] + [""]
    if results["warnings"]:
        lines += ["## Warnings", ""] + [f"- **WARNING** {w}" for w in results["warnings"]] + [""]
    opt_versions = next((r["versions"] for r in results["rows"] if r.get("versions")), None)
    lines += ["## Machine", ""] + [f"- {line}" for line in environment_lines(results["environment"])]
    if opt_versions:
        lines.append("- Optimum venv (builds Optimum's models only): "
                     + ", ".join(f"{k} {v}" for k, v in opt_versions.items()))
    lines += ["", "Per-round p50s, options and the full environment: `results.json`.", ""]
    return "\n".join(lines)


def _edgekit_notes(rows: list[dict]) -> list[str]:
    """How edgekit's int8 artifacts were made: fusion, the int8 variant, the pruned recipe's build."""
    lines = []
    ek = next((r for r in rows if r["name"] == DEFAULT_INT8 and r.get("fusion")), None)
    if ek:
        lines += ["## edgekit's int8 artifacts", "",
                  f"- Fusion: {ek['fusion'].get('by')} — fused ops {ek['fusion'].get('fused_ops')}"]
        lines += [f"- Rewrite {name}: " + (", ".join(f"{k} {v}" for k, v in step.items() if k != "applied")
                                             if step.get("applied") else f"not applied ({step.get('reason')})")
                  for name, step in (ek.get("rewrites") or {}).items()]
        c = ek.get("int8_choice")
        if c:
            lines += [f"- int8 variant chosen on this CPU ({c['cpu']}): **{c['chosen']}** — {c['reason']}",
                      "- Candidates (speedup vs the default dynamic variant, interleaved; fidelity vs fp32): "
                      + "; ".join(f"{name} {v['speedup_vs_default']:.2f}x [{v['iqr'][0]:.2f}-{v['iqr'][1]:.2f}], "
                                  f"agreement {v['argmax_agreement']:.2f}, |dlogit| {v['mean_abs_logit_diff']:.3f}"
                                  for name, v in c["candidates"].items())]
        else:
            lines.append("- int8 variant: the default (dynamic, per-channel weights, QOperator); `--choose` not used")
    fast = next((r for r in rows if r["name"] == FAST_INT8 and r.get("build", {}).get("status") == "ok"), None)
    if fast:
        b = fast["build"]
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in b["stages"].items() if v is not None)
        lines.append(f"- Pruned recipe `{Path(b['recipe']).relative_to(ROOT) if Path(b['recipe']).is_relative_to(ROOT) else b['recipe']}`: "
                     f"`edgekit optimize` took {b['seconds_total']:.0f} s in all ({stages}); its own gate "
                     f"{'passed' if b['passed'] else 'FAILED'}")
    return lines + ([""] if lines else [])


def _r(m) -> str:
    if m is None:
        return "—"
    return f"{m['ratio']:.2f}x [{m['iqr'][0]:.2f}-{m['iqr'][1]:.2f}]" + (" UNSTABLE" if m["unstable"] else "")


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
    from edgekit.paired import PairedOptions
    from edgekit.check import labeled_data
    from edgekit.data import load_dataset
    from edgekit.environment import environment, load_average
    from edgekit.runtime.session import default_threads
    from edgekit.sessions import encoder_for

    threads = args.threads or default_threads()
    options = PairedOptions(batch_size=args.batch_size, rounds=args.rounds, runs=args.runs, warmup=args.warmup,
                            threads=threads, samples=args.samples)
    options.validate()
    ds, labels = labeled_data(resolve(args.model), args.data, max_samples=args.max_samples)
    bench_texts = load_dataset(args.data, require_labels=False).subset(args.samples).texts
    encoder = encoder_for(args.model)
    started, load_start = time.time(), load_average()
    peer_list = peers(args, threads)
    rows = [accuracy(p, encoder, ds, labels) for p in peer_list]
    batch1 = timing(peer_list, rows, encoder, bench_texts, options)
    batch1["ratios"] = add_ratios(rows, batch1)
    throughput = None
    if args.throughput_batch:
        topts = replace(options, batch_size=args.throughput_batch, seq_len=args.throughput_seq,
                        rounds=args.throughput_rounds, runs=args.throughput_runs, warmup=1)
        throughput = timing(peer_list, rows, encoder, bench_texts, topts)
        throughput["ratios"] = add_ratios(rows, throughput)
    warnings_ = _warnings(load_start) + batch1["warnings"] + (throughput["warnings"] if throughput else [])
    results = {"schema": "edgekit.peers/2", "title": "Peers side by side: MiniLM-L6 SST-2 classifier on CPU",
               "command": _command(argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
               "commit": _commit(), "model": str(args.model), "data": str(args.data), "accuracy_rows": len(labels),
               "threads": threads, "options": asdict(options), "seconds_total": round(time.time() - started, 1),
               "load_average_start": load_start, "warnings": warnings_, "rows": rows, "batch1": batch1,
               "throughput": throughput, "environment": environment(threads=threads)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (args.out / "results.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


def _warnings(load_start: float | None) -> list[str]:
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load_start is not None and load_start > 1.5:
        return [f"busy machine: 1-minute load average {load_start} at the start (on {cores} cores); "
                "absolute timings are not quiet-machine figures, the interleaved ratios are what to quote"]
    return []


if __name__ == "__main__":
    sys.exit(main())
