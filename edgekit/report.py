"""Reports from check + bench results: JSON for machines, Markdown for people."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")


def _ms(stats: dict | None, key: str) -> str:
    if not stats or stats.get(key) is None:
        return "not measured"
    return f"{stats[key]:.2f}"


def optimize_markdown(report: dict) -> str:
    """The human summary of an ``optimize`` run."""
    base, opt = report["baseline"], report["optimized"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [
        f"# edgekit optimize report: {verdict}",
        "",
        f"- Model: `{report['model']}`",
        f"- Data: `{report['data']}` ({report['check']['samples']} labeled examples)",
        f"- Target: {report['target']}; artifact: `{opt['path']}` ({opt['backend']}, {opt['precision']})",
        f"- Gate: accuracy drop {report['accuracy_drop'] * 100:+.2f} pt, allowed ≤ {report['max_accuracy_drop'] * 100:.2f} pt",
        "",
        "| | backend | accuracy | p50 ms | p90 ms | p99 ms | mean ms | size MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in (("baseline", base), ("optimized", opt)):
        lat = row.get("latency_ms")
        lines.append(f"| {name} | {row['backend']} | {row['accuracy']:.4f} | {_ms(lat, 'p50')} | {_ms(lat, 'p90')} | "
                     f"{_ms(lat, 'p99')} | {_ms(lat, 'mean')} | {row.get('size_mb', 0):.1f} |")
    speed = report.get("speedup_p50")
    lines += [
        "",
        f"- Speedup (p50): {speed:.2f}x" if speed else "- Speedup (p50): not measured",
        f"- Label agreement with baseline: {report['check']['label_agreement']:.4f}; "
        f"logit max |diff| {report['check']['logit_max_abs_diff']:.3g}, mean {report['check']['logit_mean_abs_diff']:.3g}",
        f"- Latency: batch {report['bench']['batch_size']}, {report['bench']['threads']} threads, "
        f"{report['bench']['iterations']} timed runs after {report['bench']['warmup']} warm-up, "
        "model-only (tokenization excluded), real sentences from the data",
    ]
    for name, row in (("baseline", base), ("optimized", opt)):
        if row.get("noisy"):
            lines.append(f"- WARNING: {name} latency is noisy (CV {row['cv']:.0%}); rerun on a quiet machine")
    lines += ["", "## Stages", "", "| stage | seconds | notes |", "|---|---|---|"]
    for stage in report["stages"]:
        lines.append(f"| {stage['name']} | {stage['seconds']:.1f} | {stage.get('notes', '')} |")
    env = report.get("environment", {})
    cpu = env.get("cpu", {})
    flags = ", ".join(k for k, v in cpu.get("flags", {}).items() if v)
    lines += ["", "## Environment", "", f"- CPU: {cpu.get('model')} ({cpu.get('usable_cores')} usable cores; {flags})",
              f"- GPUs: {', '.join(g['name'] for g in env.get('gpus', [])) or 'none'}",
              "- Versions: " + ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())]
    return "\n".join(lines) + "\n"
