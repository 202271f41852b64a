"""Pruning sweep on the reference model: ratio -> params, dev accuracy (int8), p50 latency (int8), in one run.

Every configuration goes through what a user runs: ``edgekit.prune`` (Taylor
importance on SST-2 train, recovery with distillation) -> ``edgekit.export``
(validated against PyTorch) -> ``edgekit.quantize`` (CPU dynamic int8). The
unpruned int8 artifact is built the same way, so "speedup" is pruned+int8 vs
int8 alone. Accuracy is on all 872 SST-2 dev rows at batch 1 (the serving
size); latency is ``edgekit.bench`` at batch 1 on dev sentences, every
artifact timed in each of ``--rounds`` interleaved rounds (p50 = median of the
rounds' p50s), so a load change hits all artifacts alike.

Phases (``--phase``): ``build`` prunes, exports, quantizes and evaluates
(CPU-heavy, minutes per configuration; its accuracy figures do not depend on
machine load and artifacts are reused when present); ``measure`` times the
artifacts (needs a quiet machine: 1-minute load average below ~1.5);
``all`` does both. Results: results.json, results.md and sweep.png beside
this script (or ``--out``).

    python bench/prune/sweep.py --phase all
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("EDGEKIT_SHARED", HERE.parents[1].parent / "shared"))
DEFAULT_CONFIGS = ["ffn=0.5,layers=1", "ffn=0.5,layers=2", "ffn=0.7", "ffn=0.5", "layers=1", "ffn=0.25",
                   "ffn=0.6,layers=1", "ffn=0.7,layers=1", "ffn=0"]   # ffn=0: the recovery fine-tune alone (control)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=["build", "measure", "all"], default="all")
    p.add_argument("--model", default=str(SHARED / "models" / "minilm-l6-sst2"))
    p.add_argument("--train", default=str(SHARED / "data" / "sst2" / "train.tsv"))
    p.add_argument("--dev", default=str(SHARED / "data" / "sst2" / "dev.tsv"))
    p.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, help="e.g. ffn=0.5,layers=1 (PruneOptions keys)")
    p.add_argument("--recover-samples", type=int, default=16000)
    p.add_argument("--recover-epochs", type=float, default=1.0)
    p.add_argument("--work", default="/tmp/edgekit-prune-sweep", help="Artifacts (reused by later phases).")
    p.add_argument("--out", default=str(HERE), help="Where results.json / results.md / sweep.png go.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--min-seconds", type=float, default=3.0)
    p.add_argument("--paired-runs", type=int, default=1000, help="Runs per artifact in the paired (turn-taking) timing.")
    return p.parse_args(argv)


def config_options(spec: str, args) -> tuple[str, dict]:
    values = {}
    for part in spec.split(","):
        key, _, value = part.partition("=")
        values[key.strip()] = int(value) if key.strip() == "layers" else float(value)
    name = "-".join(f"{k}{v:g}" for k, v in values.items())
    return name, {**values, "recover_samples": args.recover_samples, "recover_epochs": args.recover_epochs,
                  "threads": args.threads}


def build(args, results: dict) -> None:
    from edgekit.artifact import resolve
    from edgekit.export import export
    from edgekit.prune import PruneOptions, prune
    from edgekit.quantize import quantize

    work = Path(args.work)
    base = results.setdefault("rows", {}).setdefault("int8", {"name": "int8", "config": None})
    base["int8"] = str(_int8(args.model, work / "int8", args, export, quantize, resolve))
    config = json.loads((Path(args.model) / "config.json").read_text())
    base.update(_dev_accuracy(base["int8"], args), params=_params(args.model), ffn=config["intermediate_size"],
                blocks=config["num_hidden_layers"])
    for spec in args.configs:
        name, opts = config_options(spec, args)
        row = results["rows"].setdefault(name, {"name": name, "config": spec})
        hf = work / name / "hf"
        if not (hf / "manifest.json").is_file():
            print(f"[{name}] prune + recover ...", file=sys.stderr, flush=True)
            prune(args.model, args.train, hf, PruneOptions(**opts), eval_data=args.dev, force=True)
        metrics = json.loads((hf / "eval_results.json").read_text())
        row["prune"] = {k: metrics[k] for k in ("ffn", "layers", "params", "encoder_params", "recovery", "seconds",
                                                "cpu_seconds", "original_accuracy", "pruned_accuracy", "accuracy")}
        row["int8"] = str(_int8(hf, work / name, args, export, quantize, resolve))
        row.update(_dev_accuracy(row["int8"], args), params=metrics["params"]["after"], ffn=metrics["ffn"]["after"],
                   blocks=metrics["layers"]["after"])
        print(f"[{name}] int8 dev accuracy {row['accuracy']:.4f}", file=sys.stderr, flush=True)
        results["reference_fp32_accuracy"] = metrics["original_accuracy"]
        write_outputs(args, results)  # after each configuration: an interrupted build keeps what it finished


def _int8(model, folder: Path, args, export, quantize, resolve) -> Path:
    if not (folder / "int8" / "manifest.json").is_file():
        fp32 = export(model, folder / "fp32", data=args.dev, force=True)
        quantize(fp32.path, folder / "int8", force=True)
    return resolve(folder / "int8").path


def _dev_accuracy(int8: str, args) -> dict:
    from edgekit.check import evaluate, labeled_data
    from edgekit.artifact import resolve
    from edgekit.sessions import encoder_for, session_for

    art = resolve(int8)
    ds, labels = labeled_data(art, args.dev)
    logits = evaluate(session_for(art, args.threads), encoder_for(art), ds.texts, 1, ds.pairs)
    return {"accuracy": round(float((logits.argmax(-1) == labels).mean()), 4), "dev_rows": len(labels)}


def _params(model) -> int:
    from safetensors import safe_open

    with safe_open(str(Path(model) / "model.safetensors"), "pt") as f:
        return int(sum(_prod(f.get_slice(k).get_shape()) for k in f.keys()))


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def measure(args, results: dict) -> None:
    from edgekit.bench import BenchOptions, bench
    from edgekit.environment import environment, load_average

    rows = list(results["rows"].values())
    opts = BenchOptions(batch_size=1, iterations=args.iterations, min_seconds=args.min_seconds, threads=args.threads)
    results["load_average_before_measure"] = load_average()
    p50s = {r["name"]: [] for r in rows}
    for _ in range(args.rounds):
        for r in rows:
            b = bench(r["int8"], args.dev, opts)
            p50s[r["name"]].append(b["latency_ms"]["p50"])
            r["cv"], r["bench_warnings"] = b["cv"], b["warnings"]
    paired = paired_times(rows, args, threads=args.threads, clock=time.perf_counter)
    results["load_average_after_measure"] = load_average()
    cpu = paired_times(rows, args, threads=1, clock=time.thread_time)
    base = statistics.median(p50s["int8"])
    for r in rows:
        r["p50_ms_rounds"] = [round(x, 3) for x in p50s[r["name"]]]
        r["p50_ms"] = round(statistics.median(p50s[r["name"]]), 3)
        r["speedup_vs_int8"] = round(base / statistics.median(p50s[r["name"]]), 3)
        r["p50_ms_paired"] = round(statistics.median(paired[r["name"]]), 3)
        r["speedup_paired"] = round(statistics.median(paired["int8"]) / statistics.median(paired[r["name"]]), 3)
        r["cpu_ms_1thread_p50"] = round(statistics.median(cpu[r["name"]]), 3)
    results["paired_runs"] = args.paired_runs
    results["environment"] = environment(threads=args.threads)


def paired_times(rows: list[dict], args, threads: int, clock) -> dict[str, list[float]]:
    """Per artifact, ms per batch-1 run by ``clock``, the artifacts taking turns run by run on the same sentence.

    Every artifact's ONNX Runtime session is open at once; turn i runs each of
    them on sentence i, so a burst of load from other processes hits all of
    them alike. Intra-op spinning is off: the idle sessions' spinning workers
    would otherwise compete with the one running.
    """
    import onnxruntime as ort

    from edgekit.artifact import resolve
    from edgekit.data import load_dataset
    from edgekit.sessions import encoder_for

    texts = load_dataset(args.dev, require_labels=False).subset(512).texts
    sessions, feeds = {}, {}
    for r in rows:
        art = resolve(r["int8"])
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(art.model_file), options, providers=["CPUExecutionProvider"])
        names = {i.name for i in sess.get_inputs()}
        encoder = encoder_for(art)
        sessions[r["name"]] = sess
        feeds[r["name"]] = [{k: v for k, v in encoder([t]).items() if k in names} for t in texts]
    times = {name: [] for name in sessions}
    for i in range(20 + args.paired_runs):
        for name, sess in sessions.items():
            t0 = clock()
            sess.run(None, feeds[name][i % len(texts)])
            if i >= 20:  # the first 20 turns are warm-up
                times[name].append((clock() - t0) * 1000)
    return times


def write_outputs(args, results: dict) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(markdown(results))
    if all("p50_ms" in r for r in results["rows"].values()):
        plot(results, out / "sweep.png")


def markdown(results: dict) -> str:
    rows = list(results["rows"].values())
    reference = results.get("reference_fp32_accuracy")
    commands = "; ".join(f"`{c}`" for c in results["commands"].values())
    lines = [f"# Pruning sweep: {results['model']}", "", f"Commands: {commands}", "",
             f"Date: {results['date']}; machine: {results['machine']}; threads {results['threads']}; "
             f"load average before/after timing: {results.get('load_average_before_measure')} / "
             f"{results.get('load_average_after_measure')}", "",
             f"Original fp32 dev accuracy (PyTorch): {reference}. Recovery: {results['recover_samples']} SST-2 train "
             f"rows, {results['recover_epochs']} epoch, distilled from the original. Dev accuracy of the int8 ONNX at "
             "batch 1 on all dev rows; p50 = median of the rounds' p50 (edgekit.bench, batch 1, dev sentences). "
             "`ffn=0` prunes nothing: it is the recovery fine-tune alone, the control for how much of a pruned "
             "model's accuracy comes from the extra training rather than from what was kept.", "",
             f"Three latency views of the same int8 artifacts, batch 1, {results['threads']} threads unless said: "
             "**bench p50** = edgekit.bench, each artifact timed alone for >= 3 s, median of the rounds' p50s; "
             f"**paired p50** = all artifacts open at once, taking turns run by run on the same sentence "
             f"({results.get('paired_runs')} runs each, intra-op spinning off), so a burst of load from other "
             "processes hits all of them alike (the speedup to trust on a shared machine); **CPU ms** = median CPU time (time.thread_time) "
             "of one run at 1 thread, paired the same way: a proxy that load barely moves.", "",
             "| config | FFN/layer | blocks | params | dev acc (int8) | drop vs fp32 (pt) | bench p50 ms (speedup) "
             "| paired p50 ms (speedup) | CPU ms (speedup) | prune+recover s (CPU s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    cpu_base = results["rows"]["int8"].get("cpu_ms_1thread_p50")
    for r in rows:
        p = r.get("prune") or {}
        cpu = r.get("cpu_ms_1thread_p50")
        cpu_text = f"{cpu} ({cpu_base / cpu:.2f}x)" if cpu and cpu_base else ""
        drop = f"{(reference - r['accuracy']) * 100:+.2f}" if reference else ""
        timing = f"{p['seconds']:.0f} ({p['cpu_seconds']:.0f})" if p else ""
        bench_text = f"{r['p50_ms']} ({r['speedup_vs_int8']:.2f}x)" if "p50_ms" in r else "not measured"
        paired_text = f"{r['p50_ms_paired']} ({r['speedup_paired']:.2f}x)" if "p50_ms_paired" in r else ""
        lines.append(f"| {r['config'] or 'unpruned'} | {r['ffn']} | {r['blocks']} | {r['params'] / 1e6:.2f}M | "
                     f"{r['accuracy']:.4f} | {drop} | {bench_text} | {paired_text} | {cpu_text} | {timing} |")
    if results.get("warnings"):
        lines += ["", "Warnings:", *[f"- {w}" for w in results["warnings"]]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(results["rows"].values())
    key = "p50_ms_paired" if all("p50_ms_paired" in r for r in rows) else "p50_ms"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in rows:
        color = "tab:red" if r["config"] is None else "tab:blue"
        left.scatter(r[key], r["accuracy"] * 100, color=color)
        left.annotate(r["config"] or "int8 (unpruned)", (r[key], r["accuracy"] * 100), fontsize=7,
                      xytext=(4, 3), textcoords="offset points")
        right.scatter(r["params"] / 1e6, r[key], color=color)
        right.annotate(r["config"] or "int8 (unpruned)", (r["params"] / 1e6, r[key]), fontsize=7,
                       xytext=(4, 3), textcoords="offset points")
    if results.get("reference_fp32_accuracy"):
        ref = results["reference_fp32_accuracy"] * 100
        left.axhline(ref, color="gray", lw=0.8)
        left.axhline(ref - 1.0, color="gray", lw=0.8, ls="--", label="original fp32 - 1.0 pt")
        left.legend(fontsize=7)
    label = "paired p50" if key == "p50_ms_paired" else "bench p50"
    left.set(xlabel=f"{label} latency, int8, batch 1 (ms)", ylabel="SST-2 dev accuracy, int8 (%)",
             title="accuracy vs latency")
    right.set(xlabel="parameters (M, incl. 11.7M embeddings)", ylabel=f"{label} latency (ms)", title="size vs latency")
    fig.suptitle(f"edgekit prune on MiniLM-L6 SST-2 ({results['threads']} threads, {results['machine']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    results = previous if args.phase == "measure" else {}
    command = "python " + " ".join(shlex.quote(a) for a in ["bench/prune/sweep.py", *sys.argv[1:]])
    results.setdefault("commands", {})[args.phase] = command
    results.update(date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), model=args.model,
                   machine=f"{platform.machine()}, {os.cpu_count()} logical cores", threads=args.threads,
                   recover_samples=args.recover_samples, recover_epochs=args.recover_epochs)
    if args.phase in ("build", "all"):
        build(args, results)
    if args.phase in ("measure", "all"):
        if not results.get("rows"):
            raise SystemExit("Nothing to measure: run --phase build first")
        measure(args, results)
        load = max(results["load_average_before_measure"] or 0, results["load_average_after_measure"] or 0)
        results["warnings"] = ([f"busy machine while timing: load average up to {load:.1f}; rerun --phase measure "
                                "on a quiet machine"] if load > 1.5 else [])
    write_outputs(args, results)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
