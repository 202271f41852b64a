"""The search's decisions and its report, as pure functions of the recorded trials.

* :func:`pick_winner`: a function of the set of measured trials only, never
  of the order they finished in (Ray); latencies within a tolerance of the
  fastest count as equal, so noise below it cannot flip the choice.
* :func:`pareto_front`: the trials no other trial beats on both accuracy and
  p50 latency.
* :func:`build_report` / :func:`search_markdown`: report.json and report.md.
"""

from __future__ import annotations

from dataclasses import asdict

from .report import md_cell, md_code
from .report_schema import SCHEMA

EPS = 1e-9                          # accuracy differences below this are float noise
STATE_NAME = "search_state.json"
PRECISION_RANK = {"int8": 0, "int8 (mixed)": 0, "fp16": 1, "fp32": 2}
TIMING_NOTE = ("Each trial is timed when it runs, on whatever else the machine is doing then (the environment "
               "records the load average): compare these p50s on a quiet machine only.")
LATENCY_NOTE = ("Latency is not measured for TensorRT targets here: an engine's latency needs its GPU, and the "
                "CPU time of its ONNX says nothing about it. The winner is the lowest precision within budget.")


def within_budget(trial: dict, baseline: dict, max_accuracy_drop: float) -> bool:
    return trial["status"] == "ok" and baseline["accuracy"] - trial["accuracy"] <= max_accuracy_drop + EPS


def contenders(trials: dict[str, dict], max_accuracy_drop: float, tolerance: float) -> list[dict]:
    """The trials that can (still) win, best first; empty before the fp32 baseline is measured.

    With latencies: the trials within budget whose p50 is within ``tolerance`` of the fastest one's (equally
    fast), by accuracy, then model size (equally fast and accurate: the smaller file), then id. A trial
    outside this band never re-enters it (the fastest only gets faster), so only these artifacts need keeping.
    Without latencies (TensorRT targets): the one lowest-precision trial (fewest fp32 nodes), then by accuracy, then id.
    """
    base = trials.get("fp32")
    if not base or base["status"] != "ok":
        return []
    within = [t for t in trials.values() if within_budget(t, base, max_accuracy_drop)]
    if all(t.get("p50_ms") is not None for t in within):
        fastest = min(t["p50_ms"] for t in within)
        band = [t for t in within if t["p50_ms"] <= fastest * (1 + tolerance)]
        return sorted(band, key=lambda t: (-t["accuracy"], t.get("bytes") or 0, t["id"]))
    return sorted(within, key=lambda t: (PRECISION_RANK.get(t.get("precision"), 3), len(t.get("fell_back") or []),
                                        -t["accuracy"], t["id"]))[:1]


def pick_winner(trials: dict[str, dict], max_accuracy_drop: float, tolerance: float) -> dict | None:
    """The best trial within the budget (None before the fp32 baseline is measured)."""
    ranked = contenders(trials, max_accuracy_drop, tolerance)
    return ranked[0] if ranked else None


def pareto_front(trials: list[dict]) -> list[str]:
    """Ids of the measured trials that no other trial beats on both accuracy and p50, fastest first."""
    points = [t for t in trials if t["status"] == "ok" and t.get("p50_ms") is not None]

    def beaten(t: dict) -> bool:
        return any(o["accuracy"] >= t["accuracy"] and o["p50_ms"] <= t["p50_ms"]
                   and (o["accuracy"] > t["accuracy"] or o["p50_ms"] < t["p50_ms"]) for o in points)
    return [t["id"] for t in sorted(points, key=lambda t: (t["p50_ms"], t["id"])) if not beaten(t)]


def build_report(state: dict, options, model, data, out) -> dict:
    """report.json: every candidate (run or not), the winner, the Pareto front, the selection rule."""
    from .environment import environment

    trials, order = state["trials"], [_id(c) for c in state["candidates"]]
    base = trials.get("fp32") or {}
    rows = []
    for cid in order:
        t = trials.get(cid)
        if t is None:
            rows.append({"id": cid, "status": "not run"})
            continue
        row = dict(t)
        if t["status"] == "ok" and base.get("status") == "ok":
            row["accuracy_drop"] = base["accuracy"] - t["accuracy"]
            row["within_budget"] = within_budget(t, base, options.max_accuracy_drop)
            if t.get("p50_ms") and base.get("p50_ms"):
                row["speedup_p50"] = base["p50_ms"] / t["p50_ms"]
        rows.append(row)
    front = pareto_front([r for r in rows if r["status"] == "ok"])
    for r in rows:
        r["pareto"] = r["id"] in front
    winner = next((r for r in rows if r["id"] == state.get("best")), None)
    measured, threads = options.target == "cpu", (base.get("latency") or {}).get("threads", options.threads)
    search = {
        "schema": "edgekit.search/1", "out": str(out), "seed": options.seed,
        "time_budget_s": options.time_budget, "elapsed_s": round(state.get("elapsed_s", 0.0), 1),
        "engine": f"ray ({options.ray_address})" if options.ray_address else "local",
        "candidates": len(order), "trials_run": len(trials), "stopped": state.get("stopped", "running"),
        "winner": winner, "fell_back": (winner or {}).get("fell_back", []), "pareto_front": front,
        "selection": _selection(options, measured, threads), "notes": [TIMING_NOTE if measured else LATENCY_NOTE],
        "trials": rows, "options": asdict(options),
    }
    return {
        "schema": SCHEMA, "kind": "search", "passed": winner is not None, "model": str(model), "data": str(data),
        "target": options.target, "max_accuracy_drop": options.max_accuracy_drop,
        "accuracy_drop": (winner or {}).get("accuracy_drop"), "speedup_p50": (winner or {}).get("speedup_p50"),
        "baseline": _row(base, "fp32 ONNX (the search's reference)") if base.get("status") == "ok" else None,
        "optimized": _row(winner, str(out)) if winner else None,
        "check": {"samples": base.get("samples"), "original_accuracy": base.get("accuracy"),
                  "candidate_accuracy": (winner or {}).get("accuracy"),
                  "accuracy_drop": (winner or {}).get("accuracy_drop"),
                  "eval_batch_size": 1 if measured else options.eval_batch_size},
        "bench": {"batch_size": 1, "iterations": options.latency_iterations, "warmup": 10, "threads": threads},
        "stages": [{"name": f"trial {r['id']}", "seconds": r.get("seconds"), "notes": r["status"]}
                   for r in rows if r["status"] != "not run"],
        "environment": environment(threads=threads),
        "search": search,
    }


def _row(trial: dict, path: str) -> dict:
    """A trial as a report row (the fields of edgekit.report_schema.ROW_FIELDS)."""
    latency = trial.get("latency") or {}
    return {"accuracy": trial.get("accuracy"), "latency_ms": latency.get("latency_ms"),
            "backend": "onnxruntime", "throughput_per_s": None, "cv": latency.get("cv"),
            "noisy": bool(latency.get("noisy")), "path": path, "precision": trial.get("precision"),
            "size_mb": trial.get("size_mb"), "id": trial.get("id")}


def _id(candidate: dict) -> str:
    from .search_trial import Candidate

    return Candidate(**candidate).id


def _selection(options, measured: bool, threads: int | None) -> str:
    budget = (f"Trials within {options.max_accuracy_drop * 100:.2f} accuracy points of the fp32 ONNX on the gate "
              "data are eligible. ")
    if measured:
        return budget + (f"Among them, those with a p50 latency (batch 1, ONNX Runtime CPU, {threads} "
                         f"thread(s)) within {options.latency_tolerance:.0%} of the fastest count as equally fast, so "
                         "that timing noise cannot flip near-equal trials; of those the most accurate wins, then "
                         "the smaller model file, then the first id in sorted order.")
    return budget + ("Among them the lowest precision wins (int8 with the fewest fp32 nodes, then fp16, then fp32), "
                     "then the more accurate, then the first id in sorted order.")


def _fmt(value, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def search_markdown(report: dict) -> str:
    s = report["search"]
    w = s.get("winner") or {}
    budget = f"{s['time_budget_s']:.0f} s" if s["time_budget_s"] else "unlimited"
    lines = [f"# edgekit search report: {w.get('id', 'no result yet')}", "",
             f"- Model: {md_code(report['model'])}; gate data: {md_code(report['data'])}; target: {report['target']}",
             f"- Budget: accuracy drop <= {report['max_accuracy_drop'] * 100:.2f} pt; time {budget}; "
             f"seed {s['seed']}; engine {s['engine']}",
             f"- {s['trials_run']} of {s['candidates']} candidates run in {s['elapsed_s']:.0f} s "
             f"({s['stopped']})", f"- Selection: {s['selection']}", ""]
    if w:
        base_p50 = (report["baseline"] or {}).get("latency_ms") or {}
        speed = (f"p50 {w['p50_ms']:.2f} ms vs fp32 {base_p50.get('p50', 0):.2f} ms ({w['speedup_p50']:.2f}x)"
                 if w.get("speedup_p50") else "latency not measured here (see the note)")
        lines += [f"**Winner `{w['id']}`**: accuracy {w['accuracy']:.4f} (drop {w.get('accuracy_drop', 0) * 100:+.2f} "
                  f"pt), {speed}, {w.get('size_mb')} MB, {w.get('precision')}.", ""]
    lines += [*_fallback_lines(s), ""]
    lines += ["## Trials", "", "| id | status | accuracy | drop (pt) | p50 ms | speedup | in budget | Pareto "
              "| fp32 nodes | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_trial_row(r, w.get("id")) for r in s["trials"]]
    front = [r for r in s["trials"] if r.get("pareto")]
    lines += ["", "## Accuracy–latency Pareto front", ""]
    lines += [f"- `{r['id']}`: accuracy {r['accuracy']:.4f}, p50 {r['p50_ms']:.2f} ms" for r in front] or \
        ["Not measurable: no trial has a latency (see notes)."]
    lines += _per_trial_fallback(s["trials"])
    lines += ["", *[f"Note: {n}" for n in s["notes"]]] if s["notes"] else []
    return "\n".join(lines) + "\n"


def _trial_row(r: dict, winner: str | None) -> str:
    ok = r["status"] == "ok"
    status = r["status"] if ok or r["status"] == "not run" else f"failed: {r.get('error', '')}"
    drop = _fmt(r["accuracy_drop"] * 100, "+.2f") if "accuracy_drop" in r else "—"
    budget = ("yes" if r.get("within_budget") else "no") if ok else "—"
    cells = [f"{md_cell(r['id'])}{' **(winner)**' if r['id'] == winner else ''}", md_cell(status),
             _fmt(r.get("accuracy"), ".4f"), drop,
             _fmt(r.get("p50_ms"), ".2f"), _fmt(r.get("speedup_p50"), ".2f"), budget, "yes" if r.get("pareto") else "",
             str(len(r.get("fell_back") or [])) if ok else "—", _fmt(r.get("seconds"), ".0f")]
    return "| " + " | ".join(cells) + " |"


def format_search(report: dict) -> str:
    """The CLI's summary line."""
    s = report["search"]
    w, base = s.get("winner") or {}, report["check"]
    base_p50 = ((report["baseline"] or {}).get("latency_ms") or {}).get("p50")
    p50 = (f", p50 {base_p50:.2f} -> {w['p50_ms']:.2f} ms ({w['speedup_p50']:.2f}x)"
           if w.get("p50_ms") and base_p50 else ", latency not measurable here")
    return (f"Search: {s['trials_run']}/{s['candidates']} trials in {s['elapsed_s']:.0f} s "
            f"({s['stopped']}). Winner {w.get('id')}: accuracy {base['original_accuracy'] or 0:.4f} -> "
            f"{w.get('accuracy', 0):.4f} (drop {w.get('accuracy_drop', 0) * 100:+.2f} pt, allowed "
            f"{report['max_accuracy_drop'] * 100:.2f}){p50}; Pareto front: "
            f"{', '.join(s['pareto_front']) or 'n/a'}. Report: {s['out']}/report.md")


def _fallback_lines(report: dict) -> list[str]:
    w = report.get("winner") or {}
    rows = report.get("fell_back") or []
    if not w:
        return []
    if not rows:
        what = "the fp32 baseline" if w["id"] == "fp32" else "every quantizable node is in int8"
        return ["## Layers kept in fp32 by the winner", "", f"None: {what}."]
    out = ["## Layers kept in fp32 by the winner (per-layer fallback)", "", "| node | op | SQNR dB | why |",
           "|---|---|---|---|"]
    out += [f"| {md_cell(r['node'])} | {md_cell(r['op'])} | {r['sqnr_db']} | {md_cell(r['reason'])} |" for r in rows]
    return out


def _per_trial_fallback(rows: list[dict]) -> list[str]:
    with_fb = [r for r in rows if r.get("status") == "ok" and r.get("candidate", {}).get("fallback_budget") is not None]
    if not with_fb:
        return []
    out = ["", "## Per-layer fallback in every trial that used it", ""]
    for r in with_fb:
        nodes = ", ".join(f"{f['node']} ({f['weakest']} SQNR {f['sqnr_db']} dB)" for f in r.get("fell_back") or [])
        chosen = r.get("fallback_chosen") or {}
        out.append(f"- `{r['id']}`: {nodes or 'none needed'}; validation drop "
                   f"{_fmt(chosen.get('accuracy_drop') and chosen['accuracy_drop'] * 100, '+.2f', '0.00')} pt "
                   f"(budget {r['candidate']['fallback_budget'] * 100:.2f} pt)")
    return out
