"""The budgeted search on the reference model: ``edgekit optimize --search`` -> results.{md,json} + pareto.png.

Run from the repository root with edgekit's environment (``pip install -e '.[dev]'``), on a quiet machine
(check ``uptime``: every trial's p50 is measured while the search runs):

    python bench/search/run_search.py                       # 15 min search -> bench/search/results.*, pareto.png
    python bench/search/run_search.py --plot-only OUT/report.json --out /tmp/plot   # re-plot a finished search

The search (see ``edgekit/search.py``) exports the MiniLM SST-2 classifier once, then tries int8 candidates
(dynamic / static QOperator, minmax / entropy / percentile calibration on 32 or 128 SST-2 train sentences,
per-channel or per-tensor weights, with or without per-layer fallback judged on an SST-2 train split) in a
seeded order until the time budget is spent. Every trial is gated on all 872 SST-2 dev rows at batch 1
and timed at batch 1 on ONNX Runtime CPU; the winner is the fastest within --max-accuracy-drop of the fp32
ONNX. The artifact itself goes to --artifact (not committed).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = ROOT.parent / "shared"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, default=SHARED / "models" / "minilm-l6-sst2")
    p.add_argument("--data", type=Path, default=SHARED / "data" / "sst2" / "dev.tsv", help="gate data")
    p.add_argument("--calibration-data", type=Path, default=SHARED / "data" / "sst2" / "train.tsv",
                   help="calibration and fallback-validation sentences (never the gate data)")
    p.add_argument("--max-accuracy-drop", type=float, default=0.003)
    p.add_argument("--time-budget", default="15m")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per trial (default: usable cores)")
    p.add_argument("--ray-address", default=None, help="run the trials on Ray ('local' starts one here)")
    p.add_argument("--artifact", type=Path, default=Path("/tmp/edgekit-search-minilm"), help="the search's OUT")
    p.add_argument("--out", type=Path, default=HERE, help="folder for results.md, results.json and pareto.png")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search in --artifact")
    p.add_argument("--plot-only", type=Path, default=None, help="plot this report.json; run nothing")
    return p.parse_args(argv)


def search_command(args: argparse.Namespace) -> list[str]:
    cmd = ["edgekit", "optimize", str(args.model), "--data", str(args.data), "--calibration-data",
           str(args.calibration_data), "--out", str(args.artifact), "--search", "--max-accuracy-drop",
           str(args.max_accuracy_drop), "--time-budget", args.time_budget, "--seed", str(args.seed), "--force"]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--ray-address", args.ray_address] if args.ray_address else []
    return cmd + (["--resume"] if args.resume else []) + ["--json"]


def plot_pareto(report: dict, path: Path) -> None:
    """Accuracy vs p50 of every measured trial; the Pareto front as a line, the winner and fp32 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = [t for t in report["trials"] if t["status"] == "ok" and t.get("p50_ms") is not None]
    if not trials:
        raise SystemExit("Error: no trial has a latency (a TensorRT target?): nothing to plot.")
    front = sorted((t for t in trials if t.get("pareto")), key=lambda t: t["p50_ms"])
    base, winner = report["baseline"], report.get("winner") or {}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    for within, colour, label in ((True, "tab:blue", "within budget"), (False, "tab:gray", "over budget")):
        pts = [t for t in trials if bool(t.get("within_budget")) == within and t["id"] != "fp32"]
        ax.scatter([t["p50_ms"] for t in pts], [t["accuracy"] for t in pts], c=colour, s=28, label=label, zorder=2)
    ax.step([t["p50_ms"] for t in front], [t["accuracy"] for t in front], where="post", c="tab:orange", lw=1.5,
            label="Pareto front", zorder=1)
    ax.scatter([base["p50_ms"]], [base["accuracy"]], marker="s", c="black", s=50, label="fp32 ONNX", zorder=3)
    if winner.get("p50_ms") is not None:
        ax.scatter([winner["p50_ms"]], [winner["accuracy"]], marker="*", c="tab:red", s=220, zorder=4,
                   label=f"winner: {winner['id']}")
    ax.axhline(base["accuracy"] - report["max_accuracy_drop"], ls="--", c="tab:red", lw=0.8,
               label=f"budget: -{report['max_accuracy_drop'] * 100:.1f} pt")
    ax.set_xlabel("p50 latency, batch 1, ONNX Runtime CPU (ms)")
    ax.set_ylabel("accuracy on the gate data")
    ax.set_title(f"{report['trials_run']} of {report['candidates']} trials, {report['elapsed_s']:.0f} s search "
                 f"(seed {report['seed']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def to_markdown(results: dict) -> str:
    report = results["report"]
    lines = ["# Budgeted search on the reference model", "",
             f"{results['date']}, commit {results['commit']}; 1-minute load average {results['load_average_start']} "
             f"at the start, {results['load_average_end']} at the end. Command, from the repository root:", "",
             "```bash", results["command"], "```", "", "![Pareto front](pareto.png)", ""]
    lines += [f"**Warning**: {w}" for w in results["warnings"]] + ([""] if results["warnings"] else [])
    body = report["markdown"].split("\n", 1)[1]  # the search's own report.md, without its title
    return "\n".join(lines) + body


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        plot_pareto(json.loads(args.plot_only.read_text()), args.out / "pareto.png")
        print(f"wrote {args.out / 'pareto.png'}")
        return 0
    from edgekit.environment import load_average

    cmd, started, load_start = search_command(args), time.time(), load_average()
    print("$ " + shlex.join(cmd), file=sys.stderr)
    done = subprocess.run([sys.executable, "-m", *cmd], stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        return done.returncode
    report = json.loads(done.stdout)
    report["markdown"] = (args.artifact / "report.md").read_text()
    load_end = load_average()
    busy = [f"busy machine: 1-minute load average {v} ({when}); the p50 figures are not comparable"
            for when, v in (("start", load_start), ("end", load_end)) if v is not None and v > 1.5]
    results = {"schema": "edgekit.search-bench/1", "command": shlex.join(["python", "bench/search/run_search.py",
                                                                          *argv]),
               "search_command": shlex.join(cmd), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
               "commit": _commit(), "load_average_start": load_start, "load_average_end": load_end,
               "warnings": busy, "report": report}
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    plot_pareto(report, args.out / "pareto.png")
    (args.out / "results.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
