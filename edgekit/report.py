"""Reports from check + bench results: JSON for machines, Markdown and self-contained HTML for people.

``optimize_markdown`` summarizes one ``optimize`` run; ``report`` combines saved
runs (optimize OUT folders, ``bench --json`` files, bench/peers results) into
report.md, report.html (plots embedded) and report.json.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path


def write_json(path: Path, report: dict) -> None:
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")


def _ms(stats: dict | None, key: str) -> str:
    if not stats or stats.get(key) is None:
        return "not measured"
    return f"{stats[key]:.2f}"


#: characters that mean something inside a Markdown table cell
_MD_SPECIALS = "\\|*_`[]<>"


def md_cell(value, missing: str = "—") -> str:
    """``value`` as the text of one Markdown table cell: specials escaped, one line, never "None"."""
    if value is None:
        return missing
    text = " ".join(str(value).split())
    return "".join("\\" + ch if ch in _MD_SPECIALS else ch for ch in text)


def md_text(value) -> str:
    """``value`` as one line of Markdown prose (a title, a list item): the same escaping as a table cell."""
    return md_cell(value, "")


def md_code(value) -> str:
    """``value`` (a path, say) as one line of inline code: fenced by more backticks than it holds, so a ` in a
    folder name cannot end the span early."""
    text = " ".join(str(value).split())
    longest = max((len(m) for m in re.findall("`+", text)), default=0)
    fence, pad = "`" * (longest + 1), " " if longest else ""  # CommonMark strips one space each side
    return f"{fence}{pad}{text}{pad}{fence}"


def threads_text(threads, cores) -> str:
    """The threads a measurement used: the number, or what "default" meant on that machine."""
    if threads is not None:
        return str(threads)
    return f"default ({cores} cores)" if cores else "default"


def optimize_markdown(report: dict) -> str:
    """The human summary of an ``optimize`` run."""
    base, opt = report["baseline"], report["optimized"]
    verdict = "PASSED" if report["passed"] else "FAILED"
    check, bench = report.get("check", {}), report.get("bench", {})
    cpu = report.get("environment", {}).get("cpu", {})
    lines = [
        f"# edgekit optimize report: {verdict}",
        "",
        f"- Model: {md_code(report['model'])}",
        f"- Data: {md_code(report['data'])} ({_f(check.get('samples'), 'd', 'unknown number of')} labeled examples)",
        f"- Target: {report['target']}; artifact: {md_code(opt['path'])} ({opt['backend']}, {opt['precision']})",
        f"- Gate: accuracy drop {_f(_pt(report.get('accuracy_drop')), '+.2f', 'not measured')} pt, "
        f"allowed ≤ {report['max_accuracy_drop'] * 100:.2f} pt",
        "",
        "| | backend | accuracy | p50 ms | p90 ms | p99 ms | mean ms | size MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in (("baseline", base), ("optimized", opt)):
        lat = row.get("latency_ms")
        head = [name, md_cell(row.get("backend")), _f(row.get("accuracy"), ".4f")]
        size = _f(row.get("size_mb"), ".1f")
        if lat is None and row.get("latency_note"):
            cells = [*head, md_cell(row["latency_note"]), "", "", "", size]
        else:
            cells = [*head, *(_ms(lat, k) for k in ("p50", "p90", "p99", "mean")), size]
        lines.append("| " + " | ".join(cells) + " |")
    speed = report.get("speedup_p50")
    cores = cpu.get("usable_cores")
    lines += [
        "",
        _speedup_line(report, speed) if speed else
        f"- Speedup (p50): {md_text(opt.get('latency_note') or 'not measured')}",
        f"- Label agreement with baseline: {_f(check.get('label_agreement'), '.4f')}; "
        f"logit max |diff| {_f(check.get('logit_max_abs_diff'), '.3g')}, "
        f"mean {_f(check.get('logit_mean_abs_diff'), '.3g')}",
        f"- Latency: batch {_f(bench.get('batch_size'), 'd', 'default')}, "
        f"{threads_text(bench.get('threads'), cores)} thread{'' if bench.get('threads') == 1 else 's'}, "
        f"at least {_f(bench.get('iterations'), 'd', 'default')} timed runs and {_f(bench.get('min_seconds'), 'g', '?')} s "
        f"for each model after {_f(bench.get('warmup'), 'd', 'default')} warm-up, model-only (tokenization excluded), "
        "real sentences from the data",
    ]
    for name, row in (("baseline", base), ("optimized", opt)):
        if row.get("noisy"):
            lines.append(f"- WARNING: {name} latency is noisy (CV {row['cv']:.0%}); rerun on a quiet machine")
    lines += ["", "## Stages", "", "| stage | seconds | notes |", "|---|---|---|"]
    for stage in report["stages"]:
        lines.append(f"| {md_cell(stage['name'])} | {_f(stage.get('seconds'), '.1f')} | "
                     f"{md_cell(stage.get('notes'), '')} |")
    env = report.get("environment", {})
    lines += ["", "## Environment", "", *(f"- {line}" for line in environment_lines(env))]
    return "\n".join(lines) + "\n"


def _speedup_line(report: dict, speed: float) -> str:
    """The speedup and how it was measured: the interleaved median differs from the table's two separate p50s
    (7.79x beside a table of 31.12 -> 4.37 ms, 7.12x, said nothing of which it was)."""
    paired = report.get("speedup") or {}
    if paired.get("method") != "interleaved":
        return f"- Speedup (p50): {speed:.2f}x (the table's two p50s)"
    iqr = paired.get("iqr") or [None, None]
    separate = report.get("speedup_p50_separate")
    return (f"- Speedup (p50): {speed:.2f}x, interleaved: the median of {paired.get('rounds')} rounds' ratios (IQR "
            f"{_f(iqr[0], '.2f')}-{_f(iqr[1], '.2f')}{', UNSTABLE' if paired.get('unstable') else ''}), the two models "
            f"taking turns on the same inputs; the table's separate runs give {_f(separate, '.2f')}x")


def _pt(fraction: float | None) -> float | None:
    return None if fraction is None else fraction * 100


def write_html_for_run(folder: str | Path, source: str | None = None) -> str:
    """Write ``report.html`` (plots embedded) into an ``optimize`` OUT folder from its report.json.

    Returns one line for the terminal: where the page is, or, when matplotlib is missing, how to get
    it. ``source`` names the run in the page (default: the folder), for a caller writing into a
    temporary folder that is renamed into place afterwards.
    """
    from .deps import available

    folder = Path(folder)
    shown = source or str(folder)
    if not available("matplotlib"):
        return (f"report.html not written (needs matplotlib): pip install 'edgekit[report]', "
                f"then edgekit report {shown} --out {shown}/html")
    from .report_html import render_html
    from .report_plots import figures
    from .report_runs import load_runs

    loaded = load_runs([folder])
    for run in loaded:
        run["source"] = shown
        for row in run["rows"]:
            row["run"] = shown
    combined = build_report(loaded)
    figs = figures([r for run in loaded for r in run["rows"]], [])
    (folder / "report.html").write_text(render_html(combined, figs), encoding="utf-8")
    return f"report.html: {Path(shown) / 'report.html'}"


# ---- edgekit report: combined Markdown / HTML / JSON over saved runs ----

REPORT_SCHEMA = "edgekit.report/1"
COLUMNS = ["artifact", "run", "backend", "mode", "batch", "accuracy", "p50", "p90", "p95", "p99", "mean", "CV",
           "items/s", "p50 speedup"]
SWEEP_COLUMNS = ["batch", "seq", "tokens", "runs", "p50", "p90", "p99", "mean", "CV", "items/s"]


def report(runs: list[str | Path], out: str | Path, force: bool = False) -> dict:
    """Read saved runs, write ``report.md``, a self-contained ``report.html`` and ``report.json`` into ``out``."""
    from .artifact import atomic_dir, write_manifest
    from .report_html import render_html
    from .report_plots import figures
    from .report_runs import load_runs

    loaded = load_runs(runs)
    combined = build_report(loaded)
    figs = figures([r for run in loaded for r in run["rows"]], [s for run in loaded for s in run["sweeps"]])
    with atomic_dir(out, force, inputs=tuple(runs), kind="report") as tmp:
        (tmp / "report.md").write_text(report_markdown(combined), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(combined, figs), encoding="utf-8")
        combined["figures"] = [title for title, _, _ in figs]
        combined["files"] = {name: str(Path(out) / name) for name in ("report.md", "report.html", "report.json")}
        write_json(tmp / "report.json", combined)
        write_manifest(tmp, "report", "report", inputs={"runs": [run["source"] for run in loaded]}, options={})
    return combined


def build_report(runs: list[dict]) -> dict:
    """One dict for every output: rows (raw samples counted, not copied), formatted tables, warnings, runs."""
    from . import __version__
    from .bench import HIGH_CV

    rows = [r for run in runs for r in run["rows"]]
    reference = next((r for r in rows if r["status"] == "ok" and r["latency_ms"]), None)
    warnings = [f"{Path(run['source']).name}: {w}" for run in runs for w in run["warnings"]]
    warnings += [f"{r['name']}: failed: {r['error']}" for r in rows if r["status"] == "failed"]
    warnings += _thread_warning(runs)
    sweeps = [{**s, "columns": SWEEP_COLUMNS, "table": [_sweep_cells(p) for p in s["points"]]}
              for run in runs for s in run["sweeps"]]
    return {
        "schema": REPORT_SCHEMA,
        "title": "edgekit latency report",
        "generated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "edgekit_version": __version__,
        "cv_threshold": HIGH_CV,
        "reference": reference["name"] if reference else None,
        "runs": [{"source": run["source"], "kind": run["kind"], "title": run["title"], "warnings": run["warnings"],
                  "environment": run["environment"], "environment_lines": environment_lines(run["environment"])}
                 for run in runs],
        "rows": [{**{k: v for k, v in r.items() if k != "samples_ms"}, "samples": len(r["samples_ms"] or []),
                  "speedup_p50": _speedup(reference, r)} for r in rows],
        "columns": COLUMNS,
        "table": [_row_cells(r, reference) for r in rows],
        "sweeps": sweeps,
        "warnings": warnings,
    }


def report_markdown(report: dict) -> str:
    """The Markdown twin of report.html (tables and warnings; the plots are in the HTML)."""
    lines = [f"# {md_text(report['title'])}", "",
             f"{len(report['runs'])} run(s); generated {report['generated']} by edgekit {report['edgekit_version']}. "
             f"Latencies in ms. CV above {report['cv_threshold']:.0%} marks a noisy run. "
             f"Speedup = p50 of the first row ({report['reference']}) / p50 of the row, for rows of its batch and "
             "sequence length. Plots: report.html.", ""]
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- **WARNING** {md_text(w)}" for w in report["warnings"]] + [""]
    lines += ["## Artifacts", "", *_md_table(report["columns"], report["table"]), ""]
    for sweep in report["sweeps"]:
        lines += [f"## Sweep: {md_text(sweep['name'])}", "", *_md_table(sweep["columns"], sweep["table"]), ""]
    lines += ["## Runs and environment", ""]
    for run in report["runs"]:
        lines += [f"### {md_text(run['title'])}", "", f"- Source: {md_code(run['source'])}"]
        lines += [f"- {line}" for line in run["environment_lines"]] + [""]
    return "\n".join(lines)


def environment_lines(env: dict) -> list[str]:
    """The environment of a run as short lines: CPU, GPUs, threads, load, versions."""
    if not env:
        return ["Environment: not recorded"]
    cpu = env.get("cpu", {})
    flags = ", ".join(k for k, v in cpu.get("flags", {}).items() if v) or "none of the tracked flags"
    gpus = "; ".join(f"{g.get('name')} (driver {g.get('driver') or '?'}, CC {g.get('compute_capability') or '?'})"
                     for g in env.get("gpus", [])) or "none"
    threads = env.get("threads") or {}
    cores = cpu.get("usable_cores")
    lines = [f"CPU: {cpu.get('model') or 'unknown model'}, {_f(cores, 'd', '?')} usable of "
             f"{_f(cpu.get('logical_cores'), 'd', '?')} logical cores; {flags}", f"GPUs: {gpus}"]
    if env.get("os"):
        lines.append(f"OS: {env['os']}")
    if threads:
        torch = threads.get("torch")
        pool = "" if torch is None else f", torch pool {torch}"
        variables = ", ".join(f"{k}={v}" for k, v in (threads.get("env") or {}).items()) or "none set"
        lines.append(f"Threads: intra-op {threads_text(threads.get('intra_op'), cores)}{pool}; "
                     f"thread variables: {variables}")
    if env.get("load_average_1m") is not None:
        lines.append(f"Load average (1 min) when recorded: {env['load_average_1m']}")
    lines.append("Versions: " + (", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v is not None)
                                 or "not recorded"))
    return lines


def _speedup(reference: dict | None, row: dict) -> float | None:
    """The reference's p50 over the row's, only for a row of the reference's batch and sequence length: a batch-8
    row against a batch-1 reference read as a 0.16x "speedup" where its items/s were 1.3x higher."""
    if not reference or row["status"] != "ok" or not row["latency_ms"] or not row["latency_ms"]["p50"]:
        return None
    if _shape(row) != _shape(reference):
        return None
    return reference["latency_ms"]["p50"] / row["latency_ms"]["p50"]


def _shape(row: dict) -> tuple:
    return row.get("batch_size"), row.get("seq_len")


def _thread_warning(runs: list[dict]) -> list[str]:
    """A warning when the runs were timed at different intra-op thread counts (their latencies do not compare)."""
    counts = {Path(run["source"]).name: ((run["environment"] or {}).get("threads") or {}).get("intra_op")
              for run in runs}
    known = {k: v for k, v in counts.items() if v is not None}
    if len(set(known.values())) < 2:
        return []
    shown = ", ".join(f"{k}: {v}" for k, v in known.items())
    return [f"the runs were timed at different thread counts ({shown}): compare their latencies with care"]


def _f(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _row_cells(r: dict, reference: dict | None) -> list[str]:
    lat = r["latency_ms"] or {}
    if r["status"] != "ok":
        return [r["name"], Path(r["run"]).name, r["backend"] or "—", r["mode"] or "—", _f(r["batch_size"], "d"),
                "—", "failed", "", "", "", "", "", "", ""]
    speed = _speedup(reference, r)
    other_shape = reference is not None and _shape(r) != _shape(reference)
    return [r["name"], Path(r["run"]).name, r["backend"] or "—", r["mode"] or "—", _f(r["batch_size"], "d"),
            _f(r["accuracy"], ".4f"), *(_f(lat.get(k), ".2f") for k in ("p50", "p90", "p95", "p99", "mean")),
            _f(r["cv"], ".0%") + (" NOISY" if r["noisy"] else ""), _f(r["throughput_per_s"], ".1f"),
            "— (another batch or length)" if other_shape else _f(speed, ".2f") + ("x" if speed is not None else "")]


def _sweep_cells(p: dict) -> list[str]:
    lat = p["latency_ms"]
    return [str(p["batch_size"]), str(p["seq_len"] or "real"), f"{p['tokens_mean']:.0f}", str(p["iterations"]),
            *(f"{lat[k]:.2f}" for k in ("p50", "p90", "p99", "mean")),
            f"{p['cv']:.0%}" + (" NOISY" if p["noisy"] else ""), f"{p['throughput_per_s']:.1f}"]


def _md_table(columns: list[str], cells: list[list[str]]) -> list[str]:
    esc = [[md_cell(c, "") for c in row] for row in cells]
    head = [md_cell(c) for c in columns]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(columns)] + ["| " + " | ".join(r) + " |" for r in esc]
