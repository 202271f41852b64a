"""Footprint of a device app: edgekit's runtime on an optimized artifact vs a transformers pipeline on the original.

Each measurement runs in a fresh Python process:

- cold start: from just before the process is spawned to its first prediction (interpreter start, imports,
  model and tokenizer load, one prediction), as the parent process sees it;
- resident memory: peak RSS (VmHWM from /proc/self/status, else getrusage) after the first prediction and
  after the request loop;
- per-request latency: ``predict([text])`` / ``pipe(text)`` on one real sentence at a time, tokenization
  included, over the first ``--requests`` sentences of ``--data`` after ``--warmup`` untimed ones.

Both sides use the same number of intra-op threads. One untimed run per side first puts the model files in
the page cache, so every timed cold start reads them from memory, not disk. Installed size is the sum of
the files of each side's installed distributions and their dependencies (read from package metadata).

    python bench/runtime_footprint.py --write-md bench/runtime.md

needs the toolchain venv (torch, transformers) for the anchor side, and the optimized artifact:
``edgekit optimize /work/shared/models/minilm-l6-sst2 --data /work/shared/data/sst2/dev.tsv --out /tmp/ek-minilm-int8``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SIDES = {"runtime": "edgekit runtime (int8 ONNX, ONNX Runtime)", "pipeline": "transformers pipeline (fp32 PyTorch)"}
RUNTIME_DISTS = ("numpy", "tokenizers", "click", "pyyaml", "onnxruntime")  # edgekit[cpu]
PIPELINE_DISTS = ("torch", "transformers")


# --- the measured process --------------------------------------------------------------------------------------

def child(side: str, path: str, data: str, requests: int, warmup: int, threads: int) -> None:
    t0 = time.perf_counter()
    texts = read_texts(data, requests + warmup)
    if side == "runtime":
        from edgekit.runtime import load

        t_import = time.perf_counter()
        clf = load(path, threads=threads)
        predict = lambda text: clf.predict([text])[0]  # noqa: E731
    else:
        import torch
        from transformers import pipeline

        torch.set_num_threads(threads)
        t_import = time.perf_counter()
        pipe = pipeline("text-classification", model=path, device="cpu")
        predict = lambda text: _first(pipe(text))  # noqa: E731
    t_load = time.perf_counter()
    first = predict(texts[0])
    t_first = time.perf_counter()
    print("READY", flush=True)
    rss_first = peak_rss_mb()
    for text in texts[:warmup]:
        predict(text)
    times, labels = [], []
    for text in texts[warmup:]:
        started = time.perf_counter()
        out = predict(text)
        times.append((time.perf_counter() - started) * 1000.0)
        labels.append(out["label"])
    print(json.dumps({"side": side, "import_s": t_import - t0, "load_s": t_load - t_import,
                      "first_predict_s": t_first - t_load, "first": first, "rss_first_mb": rss_first,
                      "rss_peak_mb": peak_rss_mb(), "latency_ms": times, "labels": labels,
                      "heavy_modules": sorted(m for m in ("torch", "transformers") if m in sys.modules)}), flush=True)


def _first(out):
    return out[0] if isinstance(out, list) else out


def read_texts(data: str, n: int) -> list[str]:
    """The first ``n`` sentences of a tsv with a ``sentence`` column (SST-2's format), without edgekit."""
    with open(data, newline="", encoding="utf-8") as f:
        rows = [r["sentence"] for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return (rows * -(-n // len(rows)))[:n]


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- the parent: spawn, time, summarize ------------------------------------------------------------------------

def measure(side: str, path: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--path", str(path), "--data", str(args.data),
           "--requests", str(args.requests), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    with tempfile.TemporaryFile(mode="w+") as errors:  # a file, not a pipe: chatty stderr cannot block the child
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errors, text=True, env=env)
        cold, result = None, None
        for line in proc.stdout:
            if line.strip() == "READY" and cold is None:
                cold = time.perf_counter() - started
            elif line.startswith("{"):
                result = json.loads(line)
        proc.wait(timeout=600)
        if proc.returncode != 0 or cold is None or result is None:
            errors.seek(0)
            sys.exit(f"{side} run failed (exit {proc.returncode}):\n{errors.read()[-3000:]}")
    result["cold_start_s"] = cold
    return result


def summarize(runs: list[dict]) -> dict:
    times = [t for r in runs for t in r["latency_ms"]]
    summary = {key: statistics.median(r[key] for r in runs)
               for key in ("cold_start_s", "import_s", "load_s", "first_predict_s", "rss_first_mb", "rss_peak_mb")}
    return {"runs": len(runs), **summary, "cold_start_all_s": [r["cold_start_s"] for r in runs],
            "p50_ms": _pct(times, 50), "p90_ms": _pct(times, 90), "p99_ms": _pct(times, 99),
            "mean_ms": statistics.fmean(times), "requests": len(times), "labels": runs[0]["labels"],
            "heavy_modules": runs[0]["heavy_modules"]}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def installed_mb(roots: tuple[str, ...]) -> tuple[float, list[str]]:
    """Size on disk of the distributions ``roots`` and everything they require (no extras)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    seen: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen[name] = dist
        for raw in dist.requires or []:
            req = Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    total = sum(_dist_bytes(d) for d in seen.values())
    return total / 1e6, sorted(seen)


def _dist_bytes(dist) -> int:
    total = 0
    for f in dist.files or []:
        path = Path(dist.locate_file(f))
        if path.is_file():
            total += path.stat().st_size
    return total


def edgekit_package_mb() -> float:
    package = ROOT / "edgekit"
    return sum(p.stat().st_size for p in package.rglob("*.py")) / 1e6


# --- report ----------------------------------------------------------------------------------------------------

def markdown(result: dict, command: str) -> str:
    rt, pl = result["sides"]["runtime"], result["sides"]["pipeline"]
    size_rt, size_pl = result["installed_mb"]["runtime"], result["installed_mb"]["pipeline"]
    rows = [
        ("cold start: process start -> first prediction (s, median)", rt["cold_start_s"], pl["cold_start_s"], "{:.2f}"),
        ("  of which imports (s)", rt["import_s"], pl["import_s"], "{:.2f}"),
        ("  of which model + tokenizer load (s)", rt["load_s"], pl["load_s"], "{:.2f}"),
        ("peak RSS after the first prediction (MB)", rt["rss_first_mb"], pl["rss_first_mb"], "{:.0f}"),
        (f"peak RSS after {rt['requests'] // rt['runs']} requests (MB)", rt["rss_peak_mb"], pl["rss_peak_mb"], "{:.0f}"),
        ("latency per request, p50 (ms, tokenization included)", rt["p50_ms"], pl["p50_ms"], "{:.2f}"),
        ("latency per request, p90 (ms)", rt["p90_ms"], pl["p90_ms"], "{:.2f}"),
        ("latency per request, p99 (ms)", rt["p99_ms"], pl["p99_ms"], "{:.2f}"),
        ("installed size of the packages it needs (MB)", size_rt["mb"], size_pl["mb"], "{:.0f}"),
    ]
    env = result["environment"]
    lines = [
        "# Runtime footprint: edgekit runtime vs a transformers pipeline",
        "",
        f"Generated by `bench/runtime_footprint.py` on {env['date']}. Command:",
        "",
        "```",
        command,
        "```",
        "",
        f"| measure | {SIDES['runtime']} | {SIDES['pipeline']} | pipeline / runtime |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, a, b, fmt in rows:
        lines.append(f"| {name} | {fmt.format(a)} | {fmt.format(b)} | {b / a:.1f}x |" if a else f"| {name} | - | - | - |")
    agree = sum(x == y for x, y in zip(rt["labels"], pl["labels"])) / max(1, len(rt["labels"]))
    lines += [
        "",
        f"- Runtime artifact: `{result['artifact']}`; anchor model: `{result['model']}`; requests: the first "
        f"{len(rt['labels'])} sentences of `{result['data']}`, one at a time, after {result['warmup']} untimed ones; "
        f"{result['repeats']} fresh processes per side (latency pooled over all of them, cold start and RSS are medians).",
        f"- Cold starts of each run (s): runtime {', '.join(f'{x:.2f}' for x in rt['cold_start_all_s'])}; "
        f"pipeline {', '.join(f'{x:.2f}' for x in pl['cold_start_all_s'])}. Model files were in the page cache.",
        f"- Label agreement between the two on those requests: {agree:.4f}. Modules loaded by the runtime process "
        f"from torch/transformers: {rt['heavy_modules'] or 'none'}.",
        f"- Installed size counts each side's distributions and their requirements: runtime = edgekit's package "
        f"+ {', '.join(size_rt['dists'])}; pipeline = {', '.join(size_pl['dists'])}.",
        f"- Machine: {env['cpu']}, {env['cores']} usable cores, {result['threads']} intra-op threads for both; "
        f"1-minute load average {env['load_before']} before and {env['load_after']} after. Python {env['python']}, "
        f"{', '.join(f'{k} {v}' for k, v in env['versions'].items())}.",
    ]
    return "\n".join(lines) + "\n"


def environment() -> dict:
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for name in ("onnxruntime", "tokenizers", "numpy", "torch", "transformers"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "versions": versions, "date": time.strftime("%Y-%m-%d"), "load_before": round(os.getloadavg()[0], 2)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifact", default="/tmp/ek-minilm-int8", help="optimized artifact (edgekit optimize --out)")
    p.add_argument("--model", default=str(SHARED / "models" / "minilm-l6-sst2"), help="the original HF model folder")
    p.add_argument("--data", default=str(SHARED / "data" / "sst2" / "dev.tsv"), help="tsv with a sentence column")
    p.add_argument("--requests", type=int, default=300, help="timed requests per process (default 300)")
    p.add_argument("--warmup", type=int, default=20, help="untimed requests first (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per side (default 3)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="intra-op threads (default: usable cores)")
    p.add_argument("--json", default=None, help="write the raw result here")
    p.add_argument("--write-md", default=None, help="write the Markdown report here (e.g. bench/runtime.md)")
    p.add_argument("--child", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child(args.child, args.path, args.data, args.requests, args.warmup, args.threads)
        return 0
    for path in (Path(args.artifact) / "model.onnx", Path(args.model) / "config.json", Path(args.data)):
        if not path.is_file():
            sys.exit(f"Error: {path} not found. Make the artifact with: edgekit optimize {args.model} "
                     f"--data {args.data} --out {args.artifact}")
    env = environment()
    if env["load_before"] > 1.5:
        print(f"warning: 1-minute load average is {env['load_before']}: timings will be noisy", file=sys.stderr)
    paths = {"runtime": Path(args.artifact), "pipeline": Path(args.model)}
    sides = {}
    for side, path in paths.items():
        measure(side, path, argparse.Namespace(**{**vars(args), "requests": 5, "warmup": 0}))  # page cache
        sides[side] = summarize([measure(side, path, args) for _ in range(args.repeats)])
        print(f"{side}: cold start {sides[side]['cold_start_s']:.2f} s, peak RSS {sides[side]['rss_peak_mb']:.0f} MB, "
              f"p50 {sides[side]['p50_ms']:.2f} ms", file=sys.stderr)
    env["load_after"] = round(os.getloadavg()[0], 2)
    rt_mb, rt_dists = installed_mb(RUNTIME_DISTS)
    pl_mb, pl_dists = installed_mb(PIPELINE_DISTS)
    result = {"artifact": args.artifact, "model": args.model, "data": args.data, "threads": args.threads,
              "warmup": args.warmup, "repeats": args.repeats, "sides": sides, "environment": env,
              "installed_mb": {"runtime": {"mb": rt_mb + edgekit_package_mb(), "dists": rt_dists},
                               "pipeline": {"mb": pl_mb, "dists": pl_dists}}}
    command = "python bench/runtime_footprint.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = markdown(result, command.strip())
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.write_md:
        Path(args.write_md).write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
