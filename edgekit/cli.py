"""The ``edgekit`` command: a Click group; each command parses options, calls one library function, prints.

This module is the one error boundary (``EdgekitGroup.invoke``). Exit codes:

* 0 success; 1 an ``EdgekitError`` (``Error: <what>: <why>. <fix>.``, one
  line on stderr); 2 a usage error (Click); 3 a failed accuracy/latency gate.
* 1 for a disk that is full or read-only, or a file-size limit: an OSError
  (ENOSPC, EFBIG, EDQUOT, EROFS, EACCES, EPERM) anywhere in the exception's
  chain, or any failure while :func:`edgekit.artifact.disk_trouble` finds the
  cause (C++ writers such as ONNX Runtime report a full disk as a protobuf
  error). One line, naming the original error.
* 130 on Ctrl-C (SIGINT), 143 on SIGTERM: both unwind as KeyboardInterrupt,
  so every atomic writer removes its temporary files first.
* Anything else is a bug and keeps its traceback; ``EDGEKIT_DEBUG=1``
  re-raises everything with its traceback.

Warnings print as one ``Warning: ...`` line on stderr.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import tempfile
import warnings
from pathlib import Path

import click

from . import progress
from .atomic import import_safe, no_stray_torch_cache, remove_unfinished
from .cli_options import given_flags, path_arg, refuse_given
from .errors import EdgekitError, GateFailedError, InputError, Terminated

_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_CLICK_FLOW = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort)


def _debug() -> bool:
    return os.environ.get("EDGEKIT_DEBUG", "") not in ("", "0")


class EdgekitGroup(click.Group):
    """The one error boundary: see the module docstring."""

    def invoke(self, ctx):
        restore = _install_handlers()
        try:
            with no_stray_torch_cache():
                return super().invoke(ctx)
        except _CLICK_FLOW:
            raise  # usage errors (exit 2) and --help/--version exits are Click's to print
        except EdgekitError as exc:
            if _debug():
                raise
            _fail(_disk_message(exc, _SPACE_ERRNOS) or exc.message, exc.exit_code)
        except KeyboardInterrupt as exc:
            if _debug():
                raise
            what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
            kept = getattr(exc, "kept", None) or "nothing half-written was kept. Run the command again to redo it"
            _fail(f"{what}: {kept}.", 128 + getattr(exc, "signal_number", signal.SIGINT))
        except Exception as exc:
            message = None if _debug() else _disk_message(exc) or _environment_message(exc)
            if message is None:
                raise  # a bug: keep the traceback
            _fail(message, 1)
        finally:
            try:
                remove_unfinished()  # what a signal landing outside every writer's try left (edgekit.atomic)
            finally:
                restore()


def _fail(message: str, code: int):
    click.echo(f"Error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ if exc.__cause__ is not None else None if exc.__suppress_context__ else exc.__context__


def _disk_message(exc: BaseException, errnos: set[int] = _ENVIRONMENT_ERRNOS) -> str | None:
    """One line for an OSError of a full, read-only or forbidden location anywhere in ``exc``'s chain."""
    for err in _chain(exc):
        if isinstance(err, OSError) and err.errno in errnos:
            where = f" on '{err.filename}'" if err.filename else ""
            if err.errno in _SPACE_ERRNOS:
                return (f"Writing failed{where}: {err.strerror or err}. Free space or choose another --out; "
                        "nothing half-written was kept.")
            return f"File access failed{where}: {err.strerror or err}. Fix the permissions or choose another path."
    return None


def _environment_message(exc: BaseException) -> str | None:
    from .artifact import disk_trouble

    folders = [Path(tempfile.gettempdir()), Path.cwd()]
    folders += [Path(a).resolve().parent for a in sys.argv[1:] if not a.startswith("-") and Path(a).parent.is_dir()]
    trouble = disk_trouble(folders)
    if trouble is None:
        return None
    first = " ".join(str(exc).split())[:200] or "no message"
    return (f"Writing failed ({type(exc).__name__}: {first}), most likely because {trouble}. Free space, raise the "
            "limit or choose another --out/TMPDIR; nothing half-written was kept. EDGEKIT_DEBUG=1 shows the traceback.")


def _install_handlers():
    """SIGTERM raises Terminated (like Ctrl-C); either signal landing while a module is being imported is sent
    again once the import is over (:func:`edgekit.atomic.import_safe`); warnings print as one line. Returns the undo."""
    previous_show = warnings.showwarning
    warnings.showwarning = _show_warning
    previous = []
    try:
        for sig, handler in ((signal.SIGTERM, _on_sigterm), (signal.SIGINT, signal.default_int_handler)):
            current = signal.getsignal(sig)
            if sig == signal.SIGINT and current is not signal.default_int_handler:
                continue  # Ctrl-C ignored (a background job) or handled by an embedding app: leave it
            previous.append((sig, signal.signal(sig, import_safe(handler))))
    except (ValueError, OSError):  # not the main thread (e.g. an embedding app): leave signals alone
        pass

    def restore():
        warnings.showwarning = previous_show
        for sig, handler in previous:
            signal.signal(sig, handler)

    return restore


def _on_sigterm(signum, frame):
    raise Terminated()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"Warning: {' '.join(str(message).split())}", err=True)


def emit(result: dict, as_json: bool, text: str) -> None:
    """Print ``result`` as JSON (``--json``) or the human text."""
    click.echo(json.dumps(result, indent=2, default=str) if as_json else text)


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgekit")
def main() -> None:
    """edgekit: fine-tuned model -> ONNX -> int8 / TensorRT, gated on accuracy and latency."""


@main.command("export")
@click.argument("model", type=path_arg)
@click.option("--out", required=True, type=path_arg, help="Output folder (model.onnx + tokenizer + config).")
@click.option("--opset", default=18, show_default=True, type=int)
@click.option("--task", default=None, help="Task (default: inferred from the model's architecture).")
@click.option("--data", default=None, help="Sentences to validate on (tsv/csv/jsonl); default: a built-in handful.")
@click.option("--text-column", default=None)
@click.option("--atol", default=1e-4, show_default=True, type=float, help="Max |diff| allowed per output.")
@click.option("--trust-remote-code", is_flag=True, help="Run code shipped with the model (off by default).")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT that edgekit did not write.")
def export_cmd(model, out, opset, task, data, text_column, atol, trust_remote_code, force):
    """Export a Hugging Face MODEL folder to ONNX and validate it against PyTorch."""
    from .export import ExportOptions, export

    options = ExportOptions(opset=opset, task=task, atol=atol, trust_remote_code=trust_remote_code)
    with progress.slow_stage("export", f"{model} -> ONNX opset {opset}, validated against PyTorch"):
        art = export(model, out, options, data=data, text_column=text_column, force=force)
    v = art.manifest["validation"]
    diffs = ", ".join(f"{k} {d:.2e}" for k, d in v["max_abs_diff"].items())
    agree = f", label agreement {v['label_agreement']:.4f}" if v["label_agreement"] is not None else ""
    click.echo(f"Exported {art.model_file} ({art.manifest['task']}, opset {opset}): max |diff| {diffs}{agree} "
               f"on {v['samples']} sentences.")


@main.command("quantize")
@click.argument("onnx", type=path_arg)
@click.option("--out", required=True, type=path_arg, help="Output folder for the int8 model.")
@click.option("--target", type=click.Choice(["cpu", "tensorrt", "tensorrt-rtx"]), default="cpu", show_default=True,
              help="cpu: fast on ONNX Runtime's CPU provider; tensorrt*: S8S8 QDQ.")
@click.option("--mode", type=click.Choice(["dynamic", "static"]), default=None,
              help="Default: dynamic for cpu, static for TensorRT targets.")
@click.option("--calibration-data", default=None, help="Real sentences for static calibration (tsv/csv/jsonl).")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@click.option("--calibration-samples", default=128, show_default=True, type=int)
@click.option("--per-channel/--per-tensor", default=True, show_default=True, help="Weight scales per output channel.")
@click.option("--no-fuse", is_flag=True, help="Skip ONNX Runtime's transformer fusions (cpu target).")
@click.option("--keep-skip-layernorm", is_flag=True,
              help="cpu: keep fused SkipLayerNormalization (default: Sum + LayerNormalization, the faster kernel).")
@click.option("--no-first-token", is_flag=True,
              help="cpu: run the last layer on every token even when the head reads only the first.")
@click.option("--exclude-node", "exclude", multiple=True, help="Keep this node in fp32 (repeatable).")
@click.option("--validation-data", default=None,
              help="Labeled data for per-layer fallback: keep the most sensitive nodes in fp32 until the drop "
                   "on it is within --max-accuracy-drop.")
@click.option("--max-accuracy-drop", default=0.01, show_default=True, type=float,
              help="Fallback budget (fraction) on --validation-data.")
@click.option("--text-column", default=None)
@click.option("--label-column", default=None)
@click.option("--force", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def quantize_cmd(onnx, out, target, mode, calibration_data, calibration_method, calibration_samples, per_channel,
                 no_fuse, keep_skip_layernorm, no_first_token, exclude, validation_data, max_accuracy_drop, text_column,
                 label_column, force, as_json):
    """Quantize an exported ONNX folder to int8, in the format its target runs fast."""
    from .quantize import QuantizeOptions, quantize

    options = QuantizeOptions(target=target, mode=mode, calibration_method=calibration_method,
                              calibration_samples=calibration_samples, per_channel=per_channel, fuse=not no_fuse,
                              split_skip_layernorm=not keep_skip_layernorm, first_token=not no_first_token,
                              nodes_to_exclude=list(exclude))
    if validation_data:
        from .data import load_dataset
        from .fallback import FallbackOptions, quantize_with_fallback

        validation = load_dataset(validation_data, text_column, label_column)  # each file read once, here
        calibration = load_dataset(calibration_data, text_column, require_labels=False) if calibration_data else None
        art = quantize_with_fallback(onnx, out, options, FallbackOptions(max_accuracy_drop=max_accuracy_drop),
                                     validation, calibration, force)
    else:
        with progress.slow_stage("quantize", f"{onnx} -> int8 for {target}"):
            art = quantize(onnx, out, options, calibration_data=calibration_data, text_column=text_column,
                           force=force)
    m = art.manifest
    fb = m.get("fallback")
    kept = (f"; {len(fb['fell_back'])} node(s) kept in fp32, drop on validation "
            f"{fb['chosen']['accuracy_drop'] * 100:+.2f} pt") if fb else ""
    emit(m, as_json, f"Quantized to {art.model_file}: {m['format']} for {target} "
                     f"({art.model_file.stat().st_size / 1e6:.1f} MB){kept}.")


@main.command("check")
@click.argument("original", type=path_arg)
@click.argument("candidate", type=path_arg)
@click.option("--data", required=True, help="Labeled data (tsv/csv/jsonl).")
@click.option("--text-column", default=None)
@click.option("--label-column", default=None)
@click.option("--batch-size", default=1, show_default=True, type=int,
              help="Evaluation batch; dynamic int8 depends on it (padding enters its scales): use your serving size.")
@click.option("--max-samples", default=None, type=int, help="Use at most this many rows (seeded).")
@click.option("--threads", default=None, type=int)
@click.option("--json", "as_json", is_flag=True)
def check_cmd(original, candidate, data, text_column, label_column, batch_size, max_samples, threads, as_json):
    """Compare CANDIDATE with ORIGINAL on labeled data: accuracy, drop, agreement, logit diffs."""
    from .check import check

    r = check(original, candidate, data, text_column, label_column, batch_size, threads, max_samples)
    r_out = {k: v for k, v in r.items() if k != "candidate_predictions"} if not as_json else r
    emit(r_out, as_json,
         f"{r['samples']} examples: original {r['original_accuracy']:.4f} ({r['original_backend']}), "
         f"candidate {r['candidate_accuracy']:.4f} ({r['candidate_backend']}), drop {r['accuracy_drop'] * 100:+.2f} pt, "
         f"label agreement {r['label_agreement']:.4f}, logit max |diff| {r['logit_max_abs_diff']:.3g} "
         f"(mean {r['logit_mean_abs_diff']:.3g}).")


def _sizes(ctx, param, value):
    """'1,4,16' -> [1, 4, 16]; in --sweep-seq, 'real' stands for the real sentence lengths (None)."""
    if value is None:
        return None
    out = []
    for item in (v.strip() for v in value.split(",") if v.strip()):
        if item == "real" and param.name == "sweep_seq":
            out.append(None)
        elif item.isdigit() and int(item) > 0:
            out.append(int(item))
        else:
            raise click.BadParameter(f"'{item}' is not a positive integer; use e.g. 1,4,16"
                                     + (" (or 'real')" if param.name == "sweep_seq" else ""))
    if not out:
        raise click.BadParameter("no size given; use e.g. 1,4,16" + (" (or 'real')" if param.name == "sweep_seq" else ""))
    return out


@main.command("bench")
@click.argument("artifacts", nargs=-1, required=True, type=path_arg)
@click.option("--data", default=None, help="Sentences to time on (default: a built-in handful).")
@click.option("--text-column", default=None)
@click.option("--batch-size", default=1, show_default=True, type=int)
@click.option("--seq-len", default=None, type=int,
              help="Tokens per input: real sentences joined and cut to this length (default: real lengths).")
@click.option("--warmup", default=10, show_default=True, type=int, help="Untimed runs first, at least this many...")
@click.option("--warmup-seconds", default=0.2, show_default=True, type=float, help="...and for at least this long.")
@click.option("--iterations", default=100, show_default=True, type=int, help="Timed runs, at least this many...")
@click.option("--min-seconds", default=3.0, show_default=True, type=float, help="...and for at least this long.")
@click.option("--threads", default=None, type=int, help="Intra-op threads (default: usable cores).")
@click.option("--samples", default=512, show_default=True, type=int, help="Sentences drawn from --data (seeded).")
@click.option("--end-to-end", is_flag=True,
              help="Time edgekit.runtime.load(...).predict(texts): tokenization included (ONNX/engine artifacts).")
@click.option("--sweep-batch", default=None, callback=_sizes, help="Batch sizes to sweep, e.g. 1,4,16.")
@click.option("--sweep-seq", default=None, callback=_sizes, help="Sequence lengths to sweep, e.g. real,16,64,128.")
@click.option("--rounds", default=15, show_default=True, type=int,
              help="Two or more artifacts: interleaved rounds (A B, B A, ...); the ratio's IQR is over rounds.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (schema: bench/README.md).")
def bench_cmd(artifacts, data, text_column, sweep_batch, sweep_seq, rounds, as_json, **flags):
    """Latency (p50/p90/p95/p99, mean, stdev, CV) and throughput of ARTIFACTS: HF folder, ONNX or engine.

    With two or more, they are timed in interleaved rounds on the same inputs and each is compared to the
    first: the p50 ratio (higher = faster than the first) with its interquartile range over rounds.
    """
    from .bench import BenchOptions, bench, format_bench, sweep

    paired = len(artifacts) > 1
    ignored = {"text_column": "it names a column of --data, and none is given"} if data is None else {}
    if paired:
        ignored.update({k: "two or more artifacts are timed in interleaved rounds of 5 runs each (--rounds)"
                        for k in ("sweep_batch", "sweep_seq", "iterations", "min_seconds", "warmup_seconds")})
    else:
        ignored["rounds"] = "it sets the interleaved rounds of two or more artifacts"
        if sweep_batch:  # the sweep's sizes replaced it without a word
            ignored["batch_size"] = "--sweep-batch gives the batch sizes; put this one in its list"
        if sweep_seq:
            ignored["seq_len"] = "--sweep-seq gives the sequence lengths; put this one in its list"
    refuse_given(ignored)
    if paired:
        return _bench_paired(artifacts, data, text_column, rounds, as_json, flags)
    artifact = artifacts[0]
    options = BenchOptions(**flags)
    if sweep_batch or sweep_seq:
        r = sweep(artifact, data, sweep_batch, sweep_seq, options, text_column)
    else:
        r = bench(artifact, data, options, text_column)
    if as_json:
        for warning in r["warnings"]:
            click.echo(f"Warning: {warning}", err=True)
    emit(r, as_json, format_bench(r))


def _bench_paired(artifacts, data, text_column, rounds, as_json, flags):
    from .errors import InputError
    from .paired import PairedOptions, compare, format_paired

    if flags["end_to_end"]:
        raise InputError("--end-to-end times one artifact", "interleaved comparison is model-only",
                         "Drop --end-to-end, or bench each artifact on its own")
    options = PairedOptions(batch_size=flags["batch_size"], seq_len=flags["seq_len"], rounds=rounds,
                            warmup=flags["warmup"], threads=flags["threads"], samples=flags["samples"])
    names = [f"{i}:{Path(a).name}" for i, a in enumerate(artifacts, 1)]
    r = compare(dict(zip(names, artifacts)), data, options, text_column)
    if as_json:
        for warning in r["warnings"]:
            click.echo(f"Warning: {warning}", err=True)
    emit(r, as_json, format_paired(r))


def _duration(ctx, param, value):
    """'15m', '90s', '1h30m' -> seconds (None stays None)."""
    if value is None:
        return None
    from .errors import InputError
    from .search import parse_duration

    try:
        return parse_duration(value)
    except InputError as exc:
        raise click.BadParameter(exc.message) from None


_OPTIMIZE_RESERVED = {"data", "out", "recipe", "force", "json", "quiet", "cache-dir", "no-cache",
                      "allow-outside-paths", "search", "time-budget", "resume", "ray-address", "seed", "help"}


def _optimize_schema(func):
    """The optimize flags generated from OptimizeOptions' fields (see edgekit.cli_options)."""
    from .cli_options import add_schema_options
    from .options import DERIVED, OptimizeOptions

    return add_schema_options(OptimizeOptions, DERIVED, _OPTIMIZE_RESERVED)(func)


def _opt(*decls, group: str, **kwargs):
    from .cli_options import GroupedOption

    return click.option(*decls, cls=GroupedOption, group=group, **kwargs)


def _sectioned():
    from .cli_options import SectionedCommand

    return SectionedCommand


@main.command("optimize", cls=_sectioned())
@click.argument("model", type=path_arg, required=False, metavar="MODEL")
@_opt("--data", default=None, group="Data", help="Labeled data that gates the result (tsv/csv/jsonl); read once.")
@_opt("--recipe", default=None, type=path_arg, group="Data",
      help="YAML recipe (models/*.yaml) giving MODEL, --data, --out and options; flags override it.")
@_opt("--allow-outside-paths", is_flag=True, group="Data", help="Let --recipe paths leave the recipe's project.")
@_optimize_schema
@_opt("--search", "search_mode", is_flag=True, group="Search",
      help="Search quantization settings for the fastest artifact within --max-accuracy-drop; OUT always "
           "holds the best so far (edgekit.search).")
@_opt("--time-budget", default=None, callback=_duration, group="Search",
      help="With --search: launch no trial after this long, e.g. 15m, 90s (default: no limit).")
@_opt("--resume", is_flag=True, group="Search", help="With --search: continue the interrupted search recorded in OUT.")
@_opt("--ray-address", default=None, group="Search",
      help="With --search: run trials as Ray tasks on this cluster ('local' starts Ray here).")
@_opt("--seed", default=None, type=int, group="Search", help="With --search: order of the candidates (default 0).")
@_opt("--out", default=None, type=path_arg, group="Output",
      help="Output folder: model, report.json, report.md, manifest.json.")
@_opt("--cache-dir", default=None, type=path_arg, group="Output",
      help="Step cache for export/quantize (default: $EDGEKIT_CACHE, else ~/.cache/edgekit).")
@_opt("--no-cache", is_flag=True, group="Output", help="Redo every step; read and write no step cache.")
@_opt("--force", is_flag=True, group="Output", help="Replace a non-empty OUT that edgekit did not write.")
@_opt("--json", "as_json", is_flag=True, group="Output", help="Print report.json on stdout (schema: bench/README.md).")
@_opt("--quiet", is_flag=True, group="Output", help="No stage lines or progress bars on stderr.")
def optimize_cmd(model, data, out, recipe, force, as_json, quiet, cache_dir, no_cache, allow_outside_paths,
                 search_mode, time_budget, resume, ray_address, seed, **flags):
    """Export, quantize, check and bench MODEL (a fine-tuned HF folder, or model: in --recipe); exit 0 within the
    accuracy budget, 3 when the gate fails.

    Export and quantize are cached by content (inputs, options, tool versions):
    a rerun after an interruption redoes only what is missing.
    """
    from .cache import StepCache
    from .cli_options import dotted, merge, nested
    from .options import OptimizeOptions
    from .pipeline import optimize
    from .recipe import load_recipe

    if quiet:
        progress.set_quiet(True)
    rec = load_recipe(recipe, allow_outside_paths=allow_outside_paths) if recipe else None
    model = model or (rec.model if rec else None)
    data = data or (rec.data if rec else None)
    out = out or (rec.out if rec else None)
    missing = [n for n, v in (("MODEL", model), ("--data", data), ("--out", out)) if v is None]
    if missing:
        raise click.UsageError(f"Missing {', '.join(missing)} (give them as arguments/flags or in --recipe).")
    given = nested(flags)
    options = OptimizeOptions.from_dict(merge(rec.options if rec else {}, given))
    explicit = dotted(given) | dotted(rec.options if rec else {})
    if options.export.task == "text-generation" or _is_causal_lm(model):
        return _optimize_lm(model, data, out, options, force, explicit, cache_dir)
    searching = {"--time-budget": time_budget, "--resume": resume or None, "--ray-address": ray_address, "--seed": seed}
    if search_mode or any(v is not None for v in searching.values()):
        return _search_cmd(model, data, out, options, explicit, search_mode, searching, force, as_json,
                           None if no_cache else StepCache(cache_dir))
    try:
        r = optimize(model, data, out, options, force=force, cache=None if no_cache else StepCache(cache_dir))
    except GateFailedError:
        if as_json and (Path(out) / "report.json").is_file():  # the failed run's report: stdout was empty
            click.echo((Path(out) / "report.json").read_text(encoding="utf-8").rstrip())
        raise
    base, opt = r["baseline"], r["optimized"]
    for warning in r.get("warnings", []):
        click.echo(f"Warning: {warning}", err=True)
    if r.get("html_note") and not as_json:
        click.echo(r["html_note"], err=True)
    metric = r["check"].get("metric", "accuracy")
    emit(r, as_json, f"{'PASSED' if r['passed'] else 'FAILED'}: {metric} {base['accuracy']:.4f} -> {opt['accuracy']:.4f} "
                     f"(drop {r['accuracy_drop'] * 100:+.2f} pt, allowed {options.gate.max_accuracy_drop * 100:.2f}), "
                     f"{_latency_text(r)} in {r['seconds_total']:.0f} s{_cached_note(r)}. Artifact: {opt['path']}; "
                     f"report: {Path(out) / 'report.md'}{_warning_note(r)}")


def _latency_text(r: dict) -> str:
    base, opt = r["baseline"], r["optimized"]
    if not opt["latency_ms"]:
        return f"{opt['backend']} latency {opt['latency_note']}"
    s = r.get("speedup") or {}
    spread = (f", interleaved IQR {s['iqr'][0]:.2f}-{s['iqr'][1]:.2f}{', UNSTABLE' if s.get('unstable') else ''}"
              if s.get("iqr") else "")
    return f"p50 {base['latency_ms']['p50']:.2f} -> {opt['latency_ms']['p50']:.2f} ms ({r['speedup_p50']:.2f}x{spread})"


def _warning_note(r: dict) -> str:
    """The final line carries the warnings too: a figure measured on a busy machine is never shown bare."""
    warnings = r.get("warnings") or []
    if not warnings:
        return ""
    return f" WARNING ({len(warnings)}): {warnings[0]}" + (" (more above)" if len(warnings) > 1 else "")


optimize_cmd.argument_help = {"model": "The fine-tuned Hugging Face model folder (save_pretrained output). "
                                        "Required: here or as model: in --recipe."}


def _is_causal_lm(model) -> bool:
    """A .gguf file, or an HF folder whose architecture is a causal LM (``*ForCausalLM``, ``*LMHeadModel``)."""
    from .tasks import causal_lm_architectures

    path = Path(str(model))
    return path.suffix == ".gguf" or bool(causal_lm_architectures(path))


#: optimize's options that reach a causal LM's pipeline (edgekit.llm); given any other, optimize refuses it
_LM_OPTIONS = ("target", "precision", "data.max_samples", "gate.max_accuracy_drop", "bench.threads",
               "build.compute_capabilities", "export.task")


def _optimize_lm(model, data, out, options, force, explicit: set[str], cache_dir: str | None = None) -> None:
    """``optimize`` on a causal LM: edgekit.llm's pipeline (int4 export, generated-answer gate, TTFT/tokens/s).

    ``explicit``: the options given as flags or in the recipe. The precision is int4 unless one was given; an
    option the LM pipeline does not take is refused, not dropped."""
    from .errors import InputError
    from .llm.bench import LMBenchOptions
    from .llm.cli_optimize import run
    from .llm.gate import LMGateOptions
    from .llm.pipeline import LMOptimizeOptions

    unused = sorted(explicit - set(_LM_OPTIONS))
    if unused:
        ctx = click.get_current_context(silent=True)
        flags = {p.name.replace("__", "."): p.opts[0] for p in (ctx.command.params if ctx else [])
                 if isinstance(p, click.Option)}
        named = [f"{flags[k]} ({k})" if k in flags else k for k in unused]
        raise InputError(f"{', '.join(named)} {'does' if len(unused) == 1 else 'do'} not apply to a causal LM",
                         "optimize hands a causal LM to edgekit.llm's pipeline, which takes only "
                         f"{', '.join(_LM_OPTIONS)}", "Drop them; edgekit optimize-lm --help lists the LM's own options")
    why = "optimize hands a causal LM to edgekit.llm's pipeline, which has no search, prints its own summary and " \
          "keeps its own step cache (edgekit optimize-lm --help)"
    refuse_given({k: why for k in ("search_mode", "time_budget", "resume", "ray_address", "seed", "as_json",
                                   "no_cache")})  # each was accepted and ignored
    if options.target == "tensorrt":
        raise InputError("Causal LMs get TensorRT-RTX decoder engines, not classic TensorRT ones",
                         "classic TensorRT builds on the target GPU", "Pass --target tensorrt-rtx")
    if options.build.compute_capabilities and options.target != "tensorrt-rtx":
        raise InputError("--compute-capability applies to --target tensorrt-rtx only", f"this run is {options.target}",
                         "Drop --compute-capability, or pass --target tensorrt-rtx")
    precision = options.precision if "precision" in explicit else "int4"
    run(str(model), str(data), Path(out), LMOptimizeOptions(
        precision=precision, target=options.target, threads=options.bench.threads or 2, cache_dir=cache_dir,
        compute_capabilities=list(options.build.compute_capabilities),
        gate=LMGateOptions(rows=options.data.max_samples or 200,
                           max_accuracy_drop=options.gate.max_accuracy_drop * 100),
        bench=LMBenchOptions(threads=options.bench.threads or 2)), force)


def _cached_note(report: dict) -> str:
    cached = (report.get("cache") or {}).get("cached_stages") or []
    return f" ({', '.join(cached)} served from the step cache)" if cached else ""


def _search_cmd(model, data, out, options, explicit, search_mode, searching, force, as_json, cache):
    """``optimize --search``: edgekit.search.search with the optimize options; progress lines on stderr."""
    from .search import SearchOptions, format_search, search

    if not search_mode:
        raise click.UsageError(f"{', '.join(k for k, v in searching.items() if v is not None)} needs --search.")
    sopts = SearchOptions.from_optimize(options, explicit, time_budget=searching["--time-budget"],
                                        ray_address=searching["--ray-address"], seed=searching["--seed"] or 0)
    try:
        r = search(model, data, out, sopts, force=force, resume=bool(searching["--resume"]), cache=cache,
                   log=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt as exc:  # one line: "nothing half-written was kept" followed this one, contradicting it
        if (Path(out) / "search_state.json").is_file():
            exc.kept = f"search stopped: '{out}' holds the best artifact so far; continue with --resume"
        raise
    emit(r, as_json, format_search(r))


@main.command("finetune")
@click.argument("base_model")
@click.option("--data", "data", required=True, help="Training rows (tsv/csv/jsonl with a header, or an HF datasets name).")
@click.option("--eval-data", default=None, help="Rows to measure accuracy on (same formats); default: no evaluation.")
@click.option("--out", required=True, type=path_arg, help="Output folder (safetensors + tokenizer + config).")
@click.option("--text-column", default=None, help="Text column (default: auto-detected).")
@click.option("--label-column", default=None, help="Label column (default: auto-detected).")
@click.option("--epochs", default=1.0, show_default=True, type=float)
@click.option("--lr", default=5e-5, show_default=True, type=float, help="Peak AdamW learning rate.")
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--max-length", default=128, show_default=True, type=int, help="Tokens per row; longer rows are cut.")
@click.option("--max-samples", default=None, type=int, help="Train on a seeded random subset of this many rows.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--group-by-length", is_flag=True, help="Batch rows of similar length: less padding, faster on CPU.")
@click.option("--threads", default=None, type=int, help="CPU threads for torch (default: all cores).")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT that edgekit did not write.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def finetune_cmd(base_model, data, eval_data, out, text_column, label_column, epochs, lr, batch_size, max_length,
                 max_samples, seed, group_by_length, threads, force, as_json):
    """Fine-tune BASE_MODEL (an HF folder, or pkg:<package>) into a text classifier in OUT."""
    from .finetune import FinetuneOptions, finetune

    options = FinetuneOptions(text_column=text_column, label_column=label_column, epochs=epochs, lr=lr,
                              batch_size=batch_size, max_length=max_length, max_samples=max_samples, seed=seed,
                              group_by_length=group_by_length, threads=threads)
    m = finetune(base_model, data, out, options, eval_data=eval_data, force=force)
    acc = (f"accuracy {m['accuracy']:.4f} on {m['eval_samples']} rows of {m['eval_data']}" if m["accuracy"] is not None
           else "no --eval-data, accuracy not measured")
    emit(m, as_json, f"Fine-tuned {base_model} on {m['train_samples']} rows ({m['steps']} steps, {m['seconds']:.0f} s, "
                     f"train loss {m['train_loss']:.4f}): {acc}. Saved to {out}.")


@main.command("build")
@click.argument("onnx", type=path_arg)
@click.option("--out", required=True, type=path_arg,
              help="Engine file (*.engine/*.plan), or a folder that gets model.engine.")
@click.option("--backend", type=click.Choice(["tensorrt-rtx", "tensorrt"]), default="tensorrt-rtx", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "int4"]), default="fp16", show_default=True,
              help="fp16 converts an fp32 ONNX (written beside the engine); int8 needs Q/DQ (edgekit quantize); "
                   "int4: causal LMs, weight-only block Q/DQ.")
@click.option("--int8-base", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="Precision of the layers int8 Q/DQ does not cover.")
@click.option("--compute-capability", "ccs", default=None,
              help="TensorRT-RTX targets, comma-separated, e.g. 8.6,8.9,12.0 (default: Ampere and later).")
@click.option("--min-batch", default=1, show_default=True, type=int)
@click.option("--opt-batch", default=8, show_default=True, type=int)
@click.option("--max-batch", default=32, show_default=True, type=int)
@click.option("--min-seq", default=None, type=int, help="Default: 1.")
@click.option("--opt-seq", default=None, type=int, help="Default: median token length of --data, else 128.")
@click.option("--max-seq", default=None, type=int,
              help="Default: longest in --data (next power of 2), else the model's limit.")
@click.option("--max-prompt", default=None, type=int,
              help="Causal LMs: longest prefill (default: --max-seq, the context: prompt + new tokens).")
@click.option("--block-size", default=None, type=int, help="Causal LMs, int4: input rows per scale (default: the largest of 128/64/32/16 that fits).")
@click.option("--keep-lm-head", is_flag=True, default=None,
              help="Causal LMs, int4: keep the LM head (a tied embedding's copy) in fp16.")
@click.option("--keep-sensitive", default=None, type=int,
              help="Causal LMs, int4: leave this many MatMuls in fp16, those int4 would change most.")
@click.option("--workspace", "workspace_mib", default=None, type=int,
              help="Builder workspace in MiB (default: the backend's).")
@click.option("--timing-cache", default=None, type=path_arg, help="Timing cache file to reuse and update (TensorRT).")
@click.option("--data", default=None, help="Sentences (tsv/csv/jsonl) whose token lengths set the sequence profile.")
@click.option("--text-column", default=None)
@click.option("--allow-fallback", is_flag=True, help="Warn instead of failing when the precision is not applied.")
@click.option("--force", is_flag=True, help="Replace an existing engine.")
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar as JSON.")
def build_cmd(onnx, out, ccs, data, text_column, force, as_json, timing_cache, **flags):
    """Build a TensorRT / TensorRT-RTX engine from ONNX, with the precision carried in the graph and verified.

    A causal LM (HF folder, .gguf, pkg:NAME, or its edgekit artifact) gets a TensorRT-RTX decoder engine
    (fp16 or int4, prefill and decode profiles) beside its decoder ONNX in --out.
    """
    from .engine import BuildOptions, build
    from .llm import rtx_cli

    targets = [c.strip() for c in ccs.split(",") if c.strip()] if ccs else []
    if ccs is not None and not targets:  # "," built for the default targets
        raise InputError(f"--compute-capability '{ccs}' names no compute capability", None,
                         "Pass e.g. --compute-capability 8.6,12.0, or leave it out for the defaults")
    lm_flags = {k: flags.pop(k) for k in ("max_prompt", "block_size", "keep_lm_head", "keep_sensitive")}
    rtx_cli.refuse_lm_file(onnx)
    if flags["precision"] == "int4" or rtx_cli.is_lm_input(onnx):
        rtx_cli.build(onnx, out, targets, {**flags, **lm_flags, "data": data, "timing_cache": timing_cache},
                      given_flags(), force, as_json)
        return
    ignored = dict.fromkeys(lm_flags, "it applies to causal-LM engines")
    if flags["precision"] != "int8":
        ignored["int8_base"] = "it applies to --precision int8"
    if data is None:
        ignored["text_column"] = "it names a column of --data"
    refuse_given(ignored)
    options = BuildOptions(compute_capabilities=targets, timing_cache=str(timing_cache) if timing_cache else None,
                           **flags)
    art = build(onnx, out, options, data=data, force=force, text_column=text_column)
    m = art.manifest
    for warning in m["warnings"]:
        click.echo(f"Warning: {warning}", err=True)
    mm, prof = m["network"]["matmul"], m["profiles"][0]
    fed = f"{mm['int8']}/{mm['total']} MatMuls fed by Q/DQ" if m["precision"] == "int8" else \
        f"{mm['fp16']} fp16 / {mm['fp32']} fp32 MatMuls"
    base = f" over {m['int8_base']}" if m["precision"] == "int8" else ""
    emit(m, as_json, f"Built {art.path} ({m['backend']} {m['backend_version']}, {m['precision']}{base}, "
                     f"{m['targets']}): {m['engine_bytes'] / 1e6:.1f} MB in {m['build_seconds']:.1f} s; {fed}; "
                     f"profile batch {'/'.join(map(str, prof['batch']))}, seq {'/'.join(map(str, prof['sequence']))} "
                     f"({prof['source']['sequence']}). Built from {m['onnx']['built_from']}.")


@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor_cmd(as_json):
    """Show installed backends, ONNX Runtime providers, GPUs and CPU features."""
    from .doctor import doctor, format_doctor

    report = doctor()
    emit(report, as_json, format_doctor(report))


@main.command("report")
@click.argument("runs", nargs=-1, required=True, type=path_arg)
@click.option("--out", required=True, type=path_arg, help="Folder for report.md, report.html and report.json.")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT that edgekit did not write.")
@click.option("--json", "as_json", is_flag=True, help="Print report.json (schema: bench/README.md).")
def report_cmd(runs, out, force, as_json):
    """Combine saved RUNS (optimize --out folders, bench --json files) into Markdown and self-contained HTML."""
    from .report import report

    r = report(list(runs), out, force=force)
    if as_json:
        for warning in r["warnings"]:
            click.echo(f"Warning: {warning}", err=True)
    warned = f" {len(r['warnings'])} warning(s): see the report." if r["warnings"] else ""
    emit(r, as_json, f"Report of {len(r['runs'])} run(s), {len(r['rows'])} artifact(s), {len(r['figures'])} plot(s): "
                     f"{r['files']['report.md']}, {r['files']['report.html']}.{warned}")


@main.command("prune")
@click.argument("model", type=path_arg)
@click.option("--data", required=True, help="Labeled training rows: importance scores and recovery (tsv/csv/jsonl).")
@click.option("--out", required=True, type=path_arg, help="Output folder (a smaller HF model: safetensors + tokenizer).")
@click.option("--eval-data", default=None, help="Labeled rows to report accuracy on (original, pruned, recovered).")
@click.option("--ffn", default=0.0, show_default=True, type=float, help="Share of FFN neurons removed in every layer.")
@click.option("--layers", default=0, show_default=True, type=int, help="Whole transformer blocks removed.")
@click.option("--heads", default=0.0, show_default=True, type=float,
              help="Share of attention heads; refused for BERT-family models (not expressible in their config).")
@click.option("--importance", type=click.Choice(["taylor", "magnitude"]), default="taylor", show_default=True,
              help="taylor: |gradient x activation| on --data; magnitude: weight norms.")
@click.option("--importance-samples", default=1024, show_default=True, type=int, help="Rows for the importance pass.")
@click.option("--sparsity", default=None, help="Also zero weights: 2:4 or unstructured:R (GPU/TensorRT speedup only).")
@click.option("--recover-epochs", default=1.0, show_default=True, type=float, help="Recovery fine-tune; 0 = none.")
@click.option("--recover-samples", default=16000, show_default=True, type=int, help="Training rows for recovery.")
@click.option("--distill/--no-distill", default=True, show_default=True,
              help="Recover against the original's logits (KL) plus the labels (CE).")
@click.option("--temperature", default=2.0, show_default=True, type=float, help="Distillation temperature.")
@click.option("--lr", default=1e-4, show_default=True, type=float, help="Peak AdamW learning rate of the recovery.")
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--max-length", default=128, show_default=True, type=int, help="Tokens per row; longer rows are cut.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", default=None, type=int, help="CPU threads for torch (default: all cores).")
@click.option("--text-column", default=None)
@click.option("--label-column", default=None)
@click.option("--force", is_flag=True, help="Replace a non-empty OUT that edgekit did not write.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def prune_cmd(model, data, out, eval_data, text_column, label_column, force, as_json, **flags):
    """Remove FFN neurons and blocks from MODEL (importance from --data), recover accuracy, save a smaller HF folder."""
    from .data import load_dataset
    from .errors import InputError
    from .prune import PruneOptions, prune

    options = PruneOptions(**flags)
    options.validate()  # before any data is read
    if not (options.ffn or options.layers or options.heads or options.sparsity):
        raise InputError("Nothing to prune", "--ffn 0, --layers 0 and no --sparsity remove nothing (the recovery "
                         "fine-tune would run on the whole model)", "Pass --ffn 0.5 and/or --layers 1")
    train = load_dataset(data, text_column, label_column, split="train")  # each file read once, here
    evalset = load_dataset(eval_data, text_column, label_column) if eval_data else None
    m = prune(model, train, out, options, eval_data=evalset, force=force)
    layers, ffn, params = m["layers"], m["ffn"], m["params"]
    rec = m["recovery"]
    recovered = (f"recovered {rec['steps']} steps on {rec['train_samples']} rows"
                 f"{' (distilled)' if rec['distill'] else ''}" if rec else "no recovery")
    acc = (f"accuracy {m['original_accuracy']:.4f} -> {m['accuracy']:.4f} (before recovery {m['pruned_accuracy']:.4f}) "
           f"on {m['eval_samples']} rows" if m["accuracy"] is not None else "no --eval-data, accuracy not measured")
    emit(m, as_json, f"Pruned {model}: FFN {ffn['before']} -> {ffn['after']} per layer, blocks {layers['before']} -> "
                     f"{layers['after']} (dropped {layers['dropped'] or 'none'}), params {params['before'] / 1e6:.1f}M -> "
                     f"{params['after'] / 1e6:.1f}M; {recovered}; {acc}; {m['seconds']:.0f} s. Saved to {out}.")


def _register_language_model_commands() -> None:
    """export-lm, quantize-lm, optimize-lm, finetune-lm (edgekit.llm; their heavy imports happen when they run)."""
    from .llm import cli as llm_cli, cli_finetune, cli_optimize

    llm_cli.register(main)
    cli_optimize.register(main)
    main.add_command(cli_finetune.finetune_lm_cmd)


_register_language_model_commands()
