"""``optimize --search``: a budgeted search for the fastest artifact within the accuracy budget.

* **Candidates** (:func:`candidates`): the fp32 ONNX (the baseline), then the
  target's default int8, then every other combination of quantization mode,
  calibration method and samples, per-channel weights, per-layer fallback
  budget, pruning (``prune_ffn``/``prune_layers``, off by default: each
  setting costs a prune + recovery fine-tune) and fp16 for TensorRT targets,
  in an order shuffled by ``seed``. The model is exported once (each pruning
  setting once more, :mod:`edgekit.search_sources`); every trial starts from
  that fp32 ONNX (:mod:`edgekit.search_trial`).
* **Best-so-far**: after every trial, OUT is rewritten in one rename
  (:func:`edgekit.artifact.atomic_dir`, with SIGINT/SIGTERM held off while it
  swaps) with the best artifact so far, report.json, report.md and
  ``search_state.json`` (every candidate and every measured trial). An
  interrupted search leaves the last OUT, valid; ``resume=True`` continues
  with the candidates not yet run. Beside OUT, ``.<OUT name>.search/`` keeps
  the fp32 export and the trial artifacts that may still win; it is removed
  once every candidate has run.
* **Budget**: the fp32 baseline always runs (it is the reference); no other
  trial is launched once ``time_budget`` seconds of search (resumed runs
  included) are spent; a running trial finishes.
* **Winner** (:func:`edgekit.search_report.pick_winner`), a function of the
  set of measured trials only, whatever order they finished in: among the
  trials within ``max_accuracy_drop`` of the fp32 ONNX on the gate data,
  those with a p50 within ``latency_tolerance`` of the fastest count as
  equally fast (timing noise below it cannot flip near-equal trials); of
  those the most accurate wins, then the smaller model file, then the
  first id in sorted order. Where
  latency is not measurable here (TensorRT targets) the lowest precision
  wins (int8 with the fewest fp32 nodes, then fp16, then fp32), then
  accuracy, then id.
* **Engines**: a plain loop in this process, or Ray tasks on a cluster
  (``ray_address``; "local" starts a Ray instance here). Each task reserves
  ``threads`` CPUs, so a latency measurement has its cores to itself.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from . import progress
from .artifact import MANIFEST, atomic_dir, check_output_dir, read_manifest, resolve, sha256_folder, write_manifest
from .atomic import signals_held
from .errors import BackendError, InputError, first_line
from .export import ExportOptions
from .options import DataOptions
from .prune import PruneOptions
from .schema import opt
from .quantize import CALIBRATION_METHODS, MODES, TARGETS
from .runtime.session import check_threads
from .search_report import (STATE_NAME, build_report, contenders, format_search, pareto_front, pick_winner,
                            search_markdown)
from .search_engines import local_trials, ray_trials
from .search_sources import Sources
from .search_trial import Candidate

OWN_FILES = ("report.json", "report.md", STATE_NAME, MANIFEST)
RUNTIME_ONLY = ("time_budget", "ray_address", "ray_num_cpus")   # may change between a search and its resume
STATE_SCHEMA = "edgekit.search-state/1"


@dataclass
class SearchOptions:
    """Options of ``search``. The data, export and prune (recovery) settings are ``optimize``'s own objects,
    held as they are; the lists are the search space."""

    target: str = opt("cpu", help="Where the result runs.", choices=TARGETS)
    max_accuracy_drop: float = opt(0.01, help="Budget: fraction of the fp32 ONNX's accuracy on the gate data.")
    time_budget: float | None = opt(None, help="Seconds for the whole search (resumes included); None = no limit.")
    seed: int = opt(0, help="Shuffles the candidates after the baseline and the default int8.")
    ray_address: str | None = opt(None, help="None = trials in this process; 'local' = start Ray here; else a cluster.")
    ray_num_cpus: int | None = opt(None, help="CPUs of a 'local' Ray instance (None = all).")
    data: DataOptions = opt(factory=DataOptions, help="Data files and columns (calibration_data None = the gate "
                                                      "data; validation_data None = the calibration data).")
    export: ExportOptions = opt(factory=ExportOptions, help="The one export every candidate starts from.")
    prune: PruneOptions = opt(factory=PruneOptions, help="Pruning and recovery settings of pruned candidates "
                                                         "(their ffn/layers come from the candidate).")
    modes: list[str] | None = opt(None, help="None = dynamic and static on cpu; static on TensorRT targets.")
    calibration_methods: list[str] = opt(factory=lambda: list(CALIBRATION_METHODS), help="Methods searched.")
    calibration_samples: list[int] = opt(factory=lambda: [32, 128], help="Calibration sizes searched.")
    per_channel: list[bool] = opt(factory=lambda: [True, False], help="Weight scale granularities searched.")
    fallback_budgets: list[float | None] | None = opt(None, help="Fallback budgets; None = [off, max_accuracy_drop].")
    fp16: bool = opt(True, help="TensorRT targets: an fp16 candidate.")
    prune_ffn: list[float] = opt(factory=lambda: [0.0], help="FFN shares to prune first (0 = unpruned).")
    prune_layers: list[int] = opt(factory=lambda: [0], help="Blocks to prune first.")
    latency_tolerance: float = opt(0.05, help="A p50 within this fraction of the fastest counts as equally fast.")
    latency_iterations: int = opt(100, help="Timed runs per trial.")
    latency_seconds: float = opt(1.0, help="Minimum timed seconds per trial.")
    eval_batch_size: int = opt(32, help="Gate batch of TensorRT targets (accuracy only); cpu gates at batch 1.")
    validation_samples: int = opt(400, help="Labeled rows the per-layer fallback judges on.")
    threads: int | None = opt(None, help="Intra-op threads per trial (None = usable cores here).")

    def resolved_modes(self) -> list[str]:
        return list(self.modes) if self.modes else (["dynamic", "static"] if self.target == "cpu" else ["static"])

    def resolved_budgets(self) -> list[float | None]:
        return list(self.fallback_budgets) if self.fallback_budgets is not None else [None, self.max_accuracy_drop]

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"Unknown target '{self.target}'", None, f"Choose one of: {', '.join(TARGETS)}")
        if not 0 <= self.max_accuracy_drop < 1:
            raise InputError(f"--max-accuracy-drop must be a fraction in [0, 1), got {self.max_accuracy_drop}",
                             None, "Use 0.01 for one accuracy point")
        bad = [m for m in self.resolved_modes() if m not in MODES or (self.target != "cpu" and m == "dynamic")]
        bad += [m for m in self.calibration_methods if m not in CALIBRATION_METHODS]
        if bad:
            raise InputError(f"Cannot search {', '.join(map(str, bad))} for target {self.target}", None,
                             f"Modes: {', '.join(MODES)} (static only for TensorRT); "
                             f"calibration methods: {', '.join(CALIBRATION_METHODS)}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise InputError(f"--time-budget must be positive, got {self.time_budget} s", None, "Use e.g. 15m or 90s")
        if any(not 0 <= f < 1 for f in self.prune_ffn) or any(n < 0 for n in self.prune_layers):
            raise InputError(f"Cannot prune FFN shares {self.prune_ffn} / blocks {self.prune_layers}", None,
                             "FFN shares are in [0, 1), block counts >= 0")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be at least 1, got {self.threads}", None, None)
        check_threads(self.threads, "--threads")
        self.data.validate()

    @classmethod
    def from_optimize(cls, options, explicit: set[str], **search_fields) -> "SearchOptions":
        """From ``OptimizeOptions``: its data, export and prune objects as they are. The quantize settings the
        user set (``explicit``, dotted keys such as ``quantize.mode``) narrow the search space to them."""
        q = options.quantize
        values = {"target": options.target, "max_accuracy_drop": options.gate.max_accuracy_drop,
                  "data": options.data, "export": options.export, "prune": options.prune,
                  "threads": options.bench.threads}
        for name in ("ffn", "layers"):  # a pruning the user asked for is searched beside none
            if getattr(options.prune, name):
                values[f"prune_{name}"] = [0, getattr(options.prune, name)]
        if q.mode:
            values["modes"] = [q.mode]
        narrowed = {"calibration_method": "calibration_methods", "calibration_samples": "calibration_samples",
                    "per_channel": "per_channel"}
        values.update({plural: [getattr(q, name)] for name, plural in narrowed.items()
                       if f"quantize.{name}" in explicit})
        if "bench.iterations" in explicit:
            values["latency_iterations"] = options.bench.iterations
        ignored = sorted(k for k in explicit if k in IGNORED or k.startswith("build."))
        if ignored:  # a warning, not a refusal: a recipe written for optimize is searched as it is
            flags = ", ".join(sorted({IGNORED.get(n, n) for n in ignored}))  # build.* as its recipe key
            warnings.warn(f"{flags} do(es) not apply to --search (its trials make int8 with the searched settings, "
                          "gated and timed at batch 1 on real lengths, and build no engine): ignored", stacklevel=2)
        return cls(**values, **search_fields)


IGNORED = {"bench.batch_size": "--batch-size", "gate.eval_batch_size": "--eval-batch-size", "bench.warmup": "--warmup",
           "prune.heads": "--prune-heads", "bench.min_seconds": "--min-seconds", "bench.samples": "--bench-samples",
           "bench.seq_len": "--seq-len", "bench.warmup_seconds": "--warmup-seconds", "bench.end_to_end": "--end-to-end",
           "quantize.choose": "--choose/--no-choose", "quantize.first_token": "--first-token/--no-first-token",
           "quantize.fuse": "--fuse/--no-fuse", "quantize.nodes_to_exclude": "--exclude-nodes",
           "quantize.op_types": "--op-types", "quantize.reduce_range": "--reduce-range/--no-reduce-range",
           "quantize.seed": "--quantize-seed",
           "quantize.split_skip_layernorm": "--split-skip-layernorm/--keep-skip-layernorm"}


def parse_duration(text: str) -> float:
    """'90s', '15m', '1h30m' or a number of seconds -> seconds."""
    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text or "")
    if not text or not text.strip() or match is None or not any(match.groups()):
        raise InputError(f"Cannot read the duration '{text}'", None, "Use e.g. 90s, 15m, 1h30m or a number of seconds")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s


def candidates(options: SearchOptions) -> list[Candidate]:
    """fp32, the target's default int8, then the rest of the space in an order fixed by ``options.seed``."""
    pruning = [(f, n) for f in options.prune_ffn for n in options.prune_layers]
    rest = [Candidate("fp32", prune_ffn=f, prune_layers=n) for f, n in pruning if f or n]
    rest += [Candidate("fp16", prune_ffn=f, prune_layers=n) for f, n in pruning
             if options.target != "cpu" and options.fp16]
    for mode in options.resolved_modes():
        calibrations = [(None, None)] if mode == "dynamic" else \
            [(m, n) for m in options.calibration_methods for n in options.calibration_samples]
        rest += [Candidate("int8", mode, method, samples, pc, budget, f, n) for method, samples in calibrations
                 for pc in options.per_channel for budget in options.resolved_budgets() for f, n in pruning]
    default_mode = "dynamic" if options.target == "cpu" else "static"
    methods, samples = options.calibration_methods, options.calibration_samples

    def plainness(c: Candidate) -> tuple:  # the target's default quantization first: unpruned, no fallback
        return (c.precision != "int8", bool(c.prune_tag), c.mode != default_mode, c.fallback_budget is not None,
                not c.per_channel, methods.index(c.calibration_method) if c.calibration_method else 0,
                samples.index(c.calibration_samples) if c.calibration_samples else 0)
    first = [min(rest, key=plainness)] if rest else []
    rest = sorted(set(rest) - set(first), key=lambda c: c.id)
    random.Random(options.seed).shuffle(rest)
    return [Candidate("fp32"), *first, *rest]


def search(model: str | Path, data: str | Path, out: str | Path, options: SearchOptions | None = None,
           force: bool = False, resume: bool = False, cache=None, log: Callable[[str], None] | None = None) -> dict:
    """Search for the fastest artifact of ``model`` within the accuracy budget on ``data``; returns the report.

    ``model``: a fine-tuned HF folder (exported once) or an fp32 ONNX artifact. ``resume``: continue the
    search recorded in OUT. ``cache``: an :class:`edgekit.cache.StepCache` for the export (None = export
    here). ``log``: called with one line per trial event (None = silent).
    """
    options = options or SearchOptions()
    options.validate()
    if options.data.calibration_data is None and any(b is not None for b in options.resolved_budgets()):
        warnings.warn("no --calibration-data: calibration and the per-layer fallback are judged on the gate data "
                      "itself; pass labeled training rows to keep the gate independent", stacklevel=2)
    out, log = Path(out), log or (lambda line: None)
    check_output_dir(out, force, inputs=(model, data))
    run_started = time.perf_counter()
    state = _initial_state(out, options, model, data, resume)
    work = work_dir(out)
    if not state["trials"]:
        shutil.rmtree(work, ignore_errors=True)  # a new search: nothing of an older one may be reused
    (work / "trials").mkdir(parents=True, exist_ok=True)
    try:
        sources = Sources(model, data, options, work, cache, log)
    except BaseException:  # bad data or model: a new search leaves no .OUT.search beside OUT (it left trials/)
        if not state["trials"]:
            shutil.rmtree(work, ignore_errors=True)
        raise
    _forget_lost(state, work, options, log)
    order = [Candidate(**c) for c in state["candidates"]]
    pending = [c for c in order if c.id not in state["trials"]]
    prior, state["stopped"] = state["elapsed_s"], "running"
    deadline = None if options.time_budget is None else run_started + options.time_budget - prior
    best_dir = out if state.get("best") else None   # where the current best's files are
    log(f"search: {len(order)} candidates, {len(order) - len(pending)} already run, engine "
        f"{options.ray_address and 'ray ' + options.ray_address or 'local'}")
    if options.ray_address:
        trials = ray_trials(pending, sources.setup, work / "trials", deadline, log, options.ray_address,
                            sources.base_setup.threads, options.ray_num_cpus)
    else:
        trials = local_trials(pending, sources.setup, work / "trials", deadline, log)
    try:
        for record in progress.bar(trials, total=len(pending), desc="search trials", unit="trial"):
            best_dir = _record(record, state, sources, work, best_dir, options)
            state["elapsed_s"] = prior + time.perf_counter() - run_started
            if best_dir is not None:
                _commit(out, state, best_dir, sources.base, options, model, data)
                best_dir = out
                _prune(work / "trials", state, options)
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM between or during trials: say so in OUT, then stop
        if state.get("best"):
            state["stopped"], state["elapsed_s"] = "interrupted", prior + time.perf_counter() - run_started
            _commit(out, state, best_dir or out, sources.base, options, model, data)
        raise
    state["elapsed_s"] = prior + time.perf_counter() - run_started
    state["stopped"] = "all candidates run" if len(state["trials"]) == len(order) else "time budget spent"
    _commit(out, state, best_dir or sources.base.path, sources.base, options, model, data)
    if state["stopped"] == "all candidates run":
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"kept {work} for --resume")
    return json.loads((out / "report.json").read_text())


def _record(record: dict, state: dict, sources: Sources, work: Path, best_dir: Path | None,
            options: SearchOptions) -> Path | None:
    """Add a finished trial to ``state``; returns where the (new) best's files are, None while unknown."""
    record.pop("artifact", None)
    state["trials"][record["id"]] = record
    if record["id"] == "fp32" and record["status"] != "ok":
        raise BackendError("The fp32 baseline trial failed", record.get("error"),
                           "Check that the model runs on ONNX Runtime (edgekit check) before searching")
    best = pick_winner(state["trials"], options.max_accuracy_drop, options.latency_tolerance)
    if best is None:
        return None  # no baseline yet (Ray): every artifact is kept until the winner can be known
    if best["id"] != state.get("best"):
        chosen = Candidate(**best["candidate"])
        best_dir = sources.source(chosen).path if chosen.precision == "fp32" else work / "trials" / best["id"]
    state["best"] = best["id"]
    return best_dir


def work_dir(out: Path) -> Path:
    """What a search keeps beside OUT for ``--resume``: the fp32 export and the trial artifacts that may still win."""
    out = Path(out)
    return out.resolve().parent / f".{out.name}.search"


def _prune(trials: Path, state: dict, options: SearchOptions) -> None:
    """Delete the trial artifacts that can no longer win (the best is in OUT; contenders stay for later trials)."""
    keep = {t["id"] for t in contenders(state["trials"], options.max_accuracy_drop, options.latency_tolerance)}
    for folder in trials.iterdir():
        if folder.name not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def _forget_lost(state: dict, work: Path, options: SearchOptions, log) -> None:
    """On resume, contenders whose artifacts were lost with the work folder (other than the best) run again."""
    for t in contenders(state["trials"], options.max_accuracy_drop, options.latency_tolerance):
        fp32 = t["candidate"]["precision"] == "fp32"  # its artifact is its source, made again when needed
        if not fp32 and t["id"] != state.get("best") and not (work / "trials" / t["id"]).is_dir():
            del state["trials"][t["id"]]
            log(f"trial {t['id']}: its artifact is gone with the work folder; it runs again")


# --- state and OUT -------------------------------------------------------------------------------------------

def _state_key(options: SearchOptions, model, data) -> dict:
    from .cache import file_digest

    src = Path(model)
    model_hash = sha256_folder(src) if src.is_dir() else file_digest(src)
    opts = {k: v for k, v in asdict(options).items() if k not in RUNTIME_ONLY}
    digests = {name: file_digest(value) for name, value in (("data", data), ("calibration_data",
               options.data.calibration_data), ("validation_data", options.data.validation_data))}
    return {"model": model_hash, **digests, "options": json.loads(json.dumps(opts))}


def _read_state(path: Path) -> dict:
    """search_state.json as this version writes it, or a one-line InputError (a truncated or hand-edited file was
    a JSONDecodeError / AttributeError / KeyError traceback, or a 'best' naming no trial was taken as it was)."""
    def bad(why: str):
        raise InputError(f"Cannot resume the search: '{path}' is damaged", why,
                         "Drop --resume to start the search again (the state is rewritten)")

    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        bad(first_line(exc))
    if not isinstance(state, dict):
        bad("it is not a JSON object")
    if not isinstance(state.get("candidates"), list) or not all(isinstance(c, dict) for c in state["candidates"]):
        bad("'candidates' is not a list of candidates")
    trials = state.get("trials")
    if not isinstance(trials, dict) or not all(isinstance(t, dict) for t in trials.values()):
        bad("'trials' is not a mapping of trial records")
    if state.get("best") is not None and state["best"] not in trials:
        bad(f"'best' names {state['best']!r}, which is not one of its trials")
    if not isinstance(state.get("elapsed_s", 0.0), int | float):
        bad("'elapsed_s' is not a number")
    return state


def _initial_state(out: Path, options: SearchOptions, model, data, resume: bool) -> dict:
    key = _state_key(options, model, data)
    state_file = out / STATE_NAME
    if resume and state_file.is_file():
        state = _read_state(state_file)
        if state.get("schema") != STATE_SCHEMA or state.get("key") != key:
            old = state.get("key") or {}
            diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k) and k != "options")
            diff += sorted(k for k in set(old.get("options", {})) | set(key["options"])
                           if old.get("options", {}).get(k) != key["options"].get(k))
            raise InputError(f"Cannot resume the search in '{out}'",
                             f"it was started with other inputs or options ({', '.join(diff) or 'schema'})",
                             "Pass the same model, data and options, or drop --resume to start a new search")
        return state
    if resume:
        warnings.warn(f"--resume: '{out}' holds no search state; starting a new search", stacklevel=2)
    return {"schema": STATE_SCHEMA, "key": key, "candidates": [asdict(c) for c in candidates(options)],
            "trials": {}, "best": None, "elapsed_s": 0.0}


def _commit(out: Path, state: dict, best_dir: Path, fp32, options: SearchOptions, model, data) -> None:
    """Rewrite OUT in one rename: the best artifact's files, report.json, report.md, state and manifest."""
    report = build_report(state, options, model, data, out)
    winner = resolve(best_dir) if state.get("best") else None
    with signals_held(), atomic_dir(out, force=True) as tmp:
        if winner is not None:
            for f in winner.folder.iterdir():
                if f.is_file() and f.name not in OWN_FILES:
                    shutil.copyfile(f, tmp / f.name)
        (tmp / STATE_NAME).write_text(json.dumps(state, indent=1, default=str) + "\n")
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (tmp / "report.md").write_text(search_markdown(report))
        lineage = _lineage(best_dir, fp32) if winner is not None else [{}]
        write_manifest(tmp, "onnx", "search", inputs={"model": str(model), "data": str(data)},
                       options=asdict(options),
                       extra={**{k: lineage[-1].get(k) for k in ("task", "mode", "format", "input_names",
                                                                 "output_names", "fallback")},
                              "precision": (report["search"]["winner"] or {}).get("precision", "fp32"),
                              "passed": report["passed"],
                              "eval_batch_size": 1 if options.target == "cpu" else options.eval_batch_size,
                              "search": {"winner": state.get("best"), "trials": len(state["trials"]),
                                         "candidates": len(state["candidates"])},
                              "lineage": lineage})


def _lineage(best_dir: Path, fp32) -> list[dict]:
    """Manifests from the fp32 export to the best artifact (OUT's own when the best is already there)."""
    manifest = read_manifest(best_dir)
    if manifest.get("step") == "search":
        return manifest.get("lineage") or [{}]
    return [manifest] if Path(best_dir) == Path(fp32.path) else [fp32.manifest, manifest]


__all__ = ["SearchOptions", "Candidate", "candidates", "search", "pick_winner", "pareto_front", "parse_duration",
           "format_search"]
