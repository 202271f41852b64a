"""Saved results in, one shape out: ``optimize`` OUT folders, ``bench``/sweep ``--json`` files, bench/peers results.

Every run becomes ``{source, kind, title, rows, sweeps, warnings, environment}``.
A row is one measured artifact: ``name, run, backend, mode, precision,
batch_size, seq_len, accuracy, latency_ms, cv, noisy, throughput_per_s,
size_mb, samples_ms, status, error`` (``None`` where the run did not measure
it). A sweep is ``{name, run, backend, mode, points}`` with bench points.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError, first_line

BENCH_SCHEMA = "edgekit.bench/1"
PEERS_SCHEMA = "edgekit.peers/1"
PEERS_SCHEMA_2 = "edgekit.peers/2"   # bench/peers/run_peers.py now: interleaved timings per table, not per row
ROW_KEYS = ("name", "run", "backend", "mode", "precision", "batch_size", "seq_len", "accuracy", "latency_ms", "cv",
            "noisy", "throughput_per_s", "size_mb", "samples_ms", "status", "error")


def load_runs(paths: list[str | Path]) -> list[dict]:
    """Every RUN given, normalized; a folder may hold report.json (optimize) or several saved bench JSON files."""
    if not paths:
        raise InputError("No RUN_DIR given", None, "Pass an optimize --out folder or a file saved from bench --json")
    runs = []
    for path in map(Path, paths):
        for file in _result_files(path):
            data = _read(file)
            try:
                run = _normalize(data, file)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a field of the wrong shape
                raise InputError(f"Result '{file}' is malformed", first_line(exc), _RESAVE) from None
            _check(run, file)
            runs.append(run)
    return runs


_RESAVE = "Re-save it with edgekit bench --json, or pass an optimize --out folder"
_NUMBER = (int, float)


def _number(value, whole: bool = False) -> bool:
    return not isinstance(value, bool) and isinstance(value, int if whole else _NUMBER)


def _check(run: dict, file: Path) -> None:
    """Refuse a result whose fields would break the report later (a format code, a sum) or make it silently
    empty (a bench run without latency), naming the field."""
    def bad(field: str, want: str, got) -> None:
        raise InputError(f"Result '{file}' has a malformed {field}",
                         f"expected {want}, got {json.dumps(got, default=str)[:60]}", _RESAVE)

    if not isinstance(run["environment"], dict):
        bad("environment", "an object", run["environment"])
    _check_environment(run["environment"], bad)
    if not all(isinstance(w, str) for w in run["warnings"]):
        bad("warnings", "a list of strings", run["warnings"])
    for row in run["rows"]:
        latency = row["latency_ms"]
        if latency is not None and not (isinstance(latency, dict) and all(map(_number, latency.values()))):
            bad("latency_ms", "an object of numbers (p50, p90, ...)", latency)
        if run["kind"] == "bench" and not (isinstance(latency, dict) and _number(latency.get("p50"))):
            bad("latency_ms", "an object with p50 (a bench run measures latency)", latency)
        for key in ("accuracy", "cv", "throughput_per_s", "size_mb"):
            if row[key] is not None and not _number(row[key]):
                bad(key, "a number", row[key])
        for key in ("batch_size", "seq_len"):
            if row[key] is not None and not _number(row[key], whole=True):
                bad(key, "a whole number", row[key])
        samples = row["samples_ms"]
        if samples is not None and not (isinstance(samples, list) and all(map(_number, samples))):
            bad("samples_ms", "a list of numbers", samples)
    for sweep in run["sweeps"]:
        if not all(isinstance(p, dict) for p in sweep["points"]):
            bad("points", "a list of objects", sweep["points"])


def _check_environment(env: dict, bad) -> None:
    """The environment's parts as the report reads them (cpu: [] or threads: "4" were AttributeError tracebacks)."""
    shapes = {"cpu": dict, "gpus": list, "threads": dict, "versions": dict}
    for key, kind in shapes.items():
        if env.get(key) is not None and not isinstance(env[key], kind):
            bad(f"environment.{key}", "an object" if kind is dict else "a list", env[key])
    cpu, threads = env.get("cpu") or {}, env.get("threads") or {}
    if not all(isinstance(g, dict) for g in env.get("gpus") or []):
        bad("environment.gpus", "a list of objects", env["gpus"])
    for key, value in (("cpu.flags", cpu.get("flags")), ("threads.env", threads.get("env"))):
        if value is not None and not isinstance(value, dict):
            bad(f"environment.{key}", "an object", value)
    for key, value in (("cpu.usable_cores", cpu.get("usable_cores")), ("cpu.logical_cores", cpu.get("logical_cores")),
                       ("threads.intra_op", threads.get("intra_op"))):
        if value is not None and not _number(value, whole=True):
            bad(f"environment.{key}", "a whole number", value)


def _result_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(f"Run '{path}' not found", "no such file or folder",
                         "Pass an optimize --out folder or a file saved from edgekit bench --json")
    if (path / "report.json").is_file():
        return [path / "report.json"]
    files = sorted(f for f in path.glob("*.json") if f.name != "manifest.json")
    if not files:
        raise InputError(f"'{path}' holds no results", "no report.json and no *.json bench output",
                         "Pass an optimize --out folder, or save runs with: edgekit bench ... --json > run.json")
    return files


def _read(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"Result '{file}' cannot be read", first_line(exc),
                         "Pass a JSON file written by edgekit bench --json or an optimize --out folder") from None
    if not isinstance(data, dict):
        raise InputError(f"Result '{file}' is not an edgekit result", "its JSON is not an object",
                         "Pass a JSON file written by edgekit bench --json or an optimize --out folder")
    return data


def _normalize(data: dict, file: Path) -> dict:
    source = str(file.parent if file.name == "report.json" else file)
    if data.get("schema") == BENCH_SCHEMA and data.get("kind") == "sweep":
        return _from_sweep(data, source)
    if data.get("schema") == BENCH_SCHEMA:
        return _from_bench(data, source)
    if data.get("schema") == PEERS_SCHEMA:
        return _from_peers(data, source)
    if data.get("schema") == PEERS_SCHEMA_2:
        return _from_peers2(data, source)
    if {"baseline", "optimized", "passed"} <= set(data):
        return _from_optimize(data, source)
    raise InputError(f"'{file}' is not an edgekit result", "expected an optimize report.json, bench --json output "
                     f"(schema {BENCH_SCHEMA}) or bench/peers results ({PEERS_SCHEMA_2})",
                     "Save a bench run with: edgekit bench ARTIFACT --json > run.json")


def _row(**values) -> dict:
    row = {k: None for k in ROW_KEYS}
    row.update(values)
    row["status"] = row["status"] or "ok"
    if row["noisy"] is None and row["cv"] is not None:
        row["noisy"] = False
    return row


def _bench_row(r: dict, run: str, name: str, **extra) -> dict:
    return _row(name=name, run=run, backend=r.get("backend"), mode=r.get("mode", "model-only"),
                batch_size=r.get("batch_size"), seq_len=r.get("seq_len"), latency_ms=r.get("latency_ms"),
                cv=r.get("cv"), noisy=r.get("noisy"), throughput_per_s=r.get("throughput_per_s"),
                samples_ms=r.get("samples_ms"), **extra)


def _from_bench(r: dict, source: str) -> dict:
    name = f"{Path(r.get('artifact', source)).name} ({r.get('backend')}, {r.get('mode', 'model-only')})"
    return {"source": source, "kind": "bench", "title": f"bench of {r.get('artifact')}",
            "rows": [_bench_row(r, source, name)], "sweeps": [], "warnings": list(r.get("warnings", [])),
            "environment": r.get("environment", {})}


def _from_sweep(r: dict, source: str) -> dict:
    name = f"{Path(r.get('artifact', source)).name} ({r.get('backend')}, {r.get('mode', 'model-only')})"
    sweep = {"name": name, "run": source, "backend": r.get("backend"), "mode": r.get("mode"),
             "points": [{k: v for k, v in p.items() if k != "samples_ms"} for p in r.get("points", [])]}
    return {"source": source, "kind": "sweep", "title": f"sweep of {r.get('artifact')}", "rows": [],
            "sweeps": [sweep], "warnings": list(r.get("warnings", [])), "environment": r.get("environment", {})}


def _from_optimize(r: dict, source: str) -> dict:
    rows, warnings = [], []
    bench = r.get("bench", {})
    for side in ("baseline", "optimized"):
        row = r[side]
        rows.append(_row(name=f"{side} ({row.get('backend')}, {row.get('precision')})", run=source,
                         backend=row.get("backend"), mode="model-only", precision=row.get("precision"),
                         batch_size=bench.get("batch_size"), accuracy=row.get("accuracy"),
                         latency_ms=row.get("latency_ms"), cv=row.get("cv"), noisy=row.get("noisy"),
                         throughput_per_s=row.get("throughput_per_s"), size_mb=row.get("size_mb"),
                         samples_ms=row.get("samples_ms")))
        if row.get("noisy"):
            warnings.append(f"{side}: noisy run: CV {row['cv']:.0%}; rerun on a quiet machine before trusting it")
    verdict = "PASSED" if r.get("passed") else "FAILED"
    drop = r.get("accuracy_drop")
    title = (f"optimize {verdict}: {r.get('model')} on {r.get('data')}, target {r.get('target')}"
             + (f", accuracy drop {drop * 100:+.2f} pt (allowed {r.get('max_accuracy_drop', 0) * 100:.2f})"
                if drop is not None else ""))
    return {"source": source, "kind": "optimize", "title": title, "rows": rows, "sweeps": [],
            "warnings": warnings, "environment": r.get("environment", {})}


def _from_peers(r: dict, source: str) -> dict:
    rows = []
    for p in r.get("rows", []):
        rows.append(_bench_row(p, source, p["name"], precision=p.get("precision"), accuracy=p.get("accuracy"),
                               size_mb=p.get("size_mb"), status=p.get("status"), error=p.get("error")))
    return {"source": source, "kind": "peers", "title": r.get("title", "peers side by side"), "rows": rows,
            "sweeps": [], "warnings": list(r.get("warnings", [])), "environment": r.get("environment", {})}


def _from_peers2(r: dict, source: str) -> dict:
    """``edgekit.peers/2``: a row per peer (accuracy, size, status) and a table per shape (``batch1``,
    ``throughput``: per-peer p50/p90/mean over interleaved rounds); a report row per peer and measured table."""
    rows = []
    for key in ("batch1", "throughput"):
        table = r.get(key)
        if not table:
            continue
        opts = table.get("options") or {}
        for peer in r.get("rows", []):
            measured = (table.get("artifacts") or {}).get(peer["name"])
            shape = "" if key == "batch1" else f" (batch {opts.get('batch_size')} x {opts.get('seq_len')})"
            if measured is None:
                if key == "batch1":
                    rows.append(_row(name=peer["name"], run=source, precision=peer.get("precision"),
                                     status=peer.get("status") or "failed", error=peer.get("error")))
                continue
            rows.append(_row(name=peer["name"] + shape, run=source, backend=peer.get("backend"), mode="model-only",
                             precision=peer.get("precision"), batch_size=opts.get("batch_size"),
                             seq_len=opts.get("seq_len"), accuracy=peer.get("accuracy"),
                             latency_ms={"p50": measured["p50_ms"], "p90": measured["p90_ms"],
                                         "mean": measured["mean_ms"]},
                             throughput_per_s=measured.get("throughput_per_s"), size_mb=peer.get("size_mb")))
    return {"source": source, "kind": "peers", "title": r.get("title", "peers side by side"), "rows": rows,
            "sweeps": [], "warnings": list(r.get("warnings", [])), "environment": r.get("environment", {})}
