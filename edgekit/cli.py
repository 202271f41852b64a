"""The ``edgekit`` command: a Click group; each command parses options, calls one library function, prints.

This module is the one error boundary: an EdgekitError prints ``Error: ...`` on
one line and exits with its code (1, or 3 for a failed gate); usage errors exit
2; ``EDGEKIT_DEBUG=1`` re-raises everything with its traceback.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import click

from .errors import EdgekitError

DEBUG = os.environ.get("EDGEKIT_DEBUG", "") not in ("", "0")


class EdgekitGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            if DEBUG:
                raise
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            if DEBUG:
                raise
            click.echo("Error: interrupted: nothing half-written was kept. Run the command again to redo it.", err=True)
            sys.exit(130)
        except OSError as exc:
            if DEBUG or exc.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f" '{exc.filename}'" if exc.filename else ""
            click.echo(f"Error: writing{where} failed: {exc.strerror or exc}. Free space or choose another --out; "
                       "nothing half-written was kept.", err=True)
            sys.exit(1)


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def emit(result: dict, as_json: bool, text: str) -> None:
    """Print ``result`` as JSON (``--json``) or the human text."""
    click.echo(json.dumps(result, indent=2, default=str) if as_json else text)


path_arg = click.Path(path_type=Path)


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
    art = export(model, out, options, data=data, text_column=text_column, force=force)
    v = art.manifest["validation"]
    diffs = ", ".join(f"{k} {d:.2e}" for k, d in v["max_abs_diff"].items())
    agree = f", label agreement {v['label_agreement']:.4f}" if v["label_agreement"] is not None else ""
    click.echo(f"Exported {art.model_file} ({art.manifest['task']}, opset {opset}): max |diff| {diffs}{agree} "
               f"on {v['samples']} sentences.")


def _options_from(cls, recipe_values: dict, flags: dict):
    """A dataclass of options: recipe values first, then every flag the user actually set."""
    values = dict(recipe_values)
    values.update({k: v for k, v in flags.items() if v is not None})
    return cls.from_dict(values) if hasattr(cls, "from_dict") else cls(**values)


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
@click.option("--exclude-node", "exclude", multiple=True, help="Keep this node in fp32 (repeatable).")
@click.option("--text-column", default=None)
@click.option("--force", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def quantize_cmd(onnx, out, target, mode, calibration_data, calibration_method, calibration_samples, per_channel,
                 no_fuse, exclude, text_column, force, as_json):
    """Quantize an exported ONNX folder to int8, in the format its target runs fast."""
    from .quantize import QuantizeOptions, quantize

    options = QuantizeOptions(target=target, mode=mode, calibration_method=calibration_method,
                              calibration_samples=calibration_samples, per_channel=per_channel, fuse=not no_fuse,
                              nodes_to_exclude=list(exclude))
    art = quantize(onnx, out, options, calibration_data=calibration_data, text_column=text_column, force=force)
    m = art.manifest
    emit(m, as_json, f"Quantized to {art.model_file}: {m['format']} for {target} "
                     f"({art.model_file.stat().st_size / 1e6:.1f} MB).")


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


@main.command("bench")
@click.argument("artifact", type=path_arg)
@click.option("--data", default=None, help="Sentences to time on (default: a built-in handful).")
@click.option("--text-column", default=None)
@click.option("--batch-size", default=1, show_default=True, type=int)
@click.option("--seq-len", default=None, type=int, help="Pad/truncate every batch to this length.")
@click.option("--warmup", default=20, show_default=True, type=int)
@click.option("--iterations", default=200, show_default=True, type=int)
@click.option("--min-seconds", default=0.0, show_default=True, type=float)
@click.option("--threads", default=None, type=int, help="Intra-op threads (default: usable cores).")
@click.option("--json", "as_json", is_flag=True)
def bench_cmd(artifact, data, text_column, batch_size, seq_len, warmup, iterations, min_seconds, threads, as_json):
    """Latency (p50/p90/p99/mean) and throughput of ARTIFACT: HF folder (PyTorch) or ONNX (ONNX Runtime)."""
    from .bench import BenchOptions, bench

    options = BenchOptions(batch_size=batch_size, seq_len=seq_len, warmup=warmup, iterations=iterations,
                           min_seconds=min_seconds, threads=threads)
    r = bench(artifact, data, options, text_column)
    lat = r["latency_ms"]
    noisy = f" WARNING: noisy run (CV {r['cv']:.0%}); rerun on a quiet machine." if r["noisy"] else ""
    emit(r, as_json, f"{r['backend']} batch {batch_size}, {r['threads']} threads, {r['iterations']} runs: "
                     f"p50 {lat['p50']:.2f} ms, p90 {lat['p90']:.2f}, p99 {lat['p99']:.2f}, mean {lat['mean']:.2f} "
                     f"(CV {r['cv']:.0%}), {r['throughput_per_s']:.1f} items/s.{noisy}")


@main.command("optimize")
@click.argument("model", type=path_arg, required=False)
@click.option("--data", default=None, help="Labeled data that gates the result (tsv/csv/jsonl).")
@click.option("--out", default=None, type=path_arg, help="Output folder: model, report.json, report.md, manifest.")
@click.option("--recipe", default=None, type=path_arg, help="YAML recipe (models/*.yaml); flags override it.")
@click.option("--target", type=click.Choice(["cpu", "tensorrt", "tensorrt-rtx"]), default=None, help="Default: cpu.")
@click.option("--max-accuracy-drop", default=None, type=float, help="Allowed drop as a fraction (default 0.01).")
@click.option("--text-column", default=None)
@click.option("--label-column", default=None)
@click.option("--mode", type=click.Choice(["dynamic", "static"]), default=None)
@click.option("--calibration-data", default=None)
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default=None)
@click.option("--max-samples", default=None, type=int)
@click.option("--batch-size", default=None, type=int, help="Latency batch size (default 1).")
@click.option("--eval-batch-size", default=None, type=int, help="Gate batch size (default: --batch-size).")
@click.option("--iterations", default=None, type=int, help="Timed runs per model (default 200).")
@click.option("--warmup", default=None, type=int, help="Untimed runs first (default 20).")
@click.option("--threads", default=None, type=int)
@click.option("--force", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def optimize_cmd(model, data, out, recipe, force, as_json, **flags):
    """Export, quantize, check and bench MODEL; exit 0 within the accuracy budget, 3 when the gate fails."""
    from .pipeline import OptimizeOptions, optimize
    from .recipe import load_recipe

    rec = load_recipe(recipe) if recipe else None
    model = model or (rec.model if rec else None)
    data = data or (rec.data if rec else None)
    out = out or (rec.out if rec else None)
    missing = [n for n, v in (("MODEL", model), ("--data", data), ("--out", out)) if v is None]
    if missing:
        raise click.UsageError(f"Missing {', '.join(missing)} (give them as arguments/flags or in --recipe).")
    options = _options_from(OptimizeOptions, rec.options if rec else {}, flags)
    r = optimize(model, data, out, options, force=force)
    base, opt = r["baseline"], r["optimized"]
    emit(r, as_json, f"{'PASSED' if r['passed'] else 'FAILED'}: accuracy {base['accuracy']:.4f} -> {opt['accuracy']:.4f} "
                     f"(drop {r['accuracy_drop'] * 100:+.2f} pt, allowed {options.max_accuracy_drop * 100:.2f}), "
                     f"p50 {base['latency_ms']['p50']:.2f} -> {opt['latency_ms']['p50']:.2f} ms "
                     f"({r['speedup_p50']:.2f}x) in {r['seconds_total']:.0f} s. Report: {Path(out) / 'report.md'}")


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
@click.option("--out", required=True, type=path_arg, help="Engine file (*.engine/*.plan) or folder (gets model.engine).")
@click.option("--backend", type=click.Choice(["tensorrt-rtx", "tensorrt"]), default="tensorrt-rtx", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp16", show_default=True,
              help="fp16 converts an fp32 ONNX (written beside the engine); int8 needs Q/DQ (edgekit quantize).")
@click.option("--int8-base", type=click.Choice(["fp16", "fp32"]), default="fp16", show_default=True,
              help="Precision of the layers int8 Q/DQ does not cover.")
@click.option("--compute-capability", "ccs", default=None,
              help="TensorRT-RTX targets, comma-separated, e.g. 8.6,8.9,12.0 (default: Ampere and later).")
@click.option("--min-batch", default=1, show_default=True, type=int)
@click.option("--opt-batch", default=8, show_default=True, type=int)
@click.option("--max-batch", default=32, show_default=True, type=int)
@click.option("--min-seq", default=None, type=int, help="Default: 1.")
@click.option("--opt-seq", default=None, type=int, help="Default: median token length of --data, else 128.")
@click.option("--max-seq", default=None, type=int, help="Default: longest in --data (next power of 2), else the model's limit.")
@click.option("--workspace", "workspace_mib", default=None, type=int, help="Builder workspace in MiB (default: backend's).")
@click.option("--timing-cache", default=None, type=path_arg, help="Timing cache file to reuse and update (TensorRT).")
@click.option("--data", default=None, help="Sentences (tsv/csv/jsonl) whose token lengths set the sequence profile.")
@click.option("--text-column", default=None)
@click.option("--allow-fallback", is_flag=True, help="Warn instead of failing when the precision is not applied.")
@click.option("--force", is_flag=True, help="Replace an existing engine.")
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar as JSON.")
def build_cmd(onnx, out, ccs, data, text_column, force, as_json, timing_cache, **flags):
    """Build a TensorRT / TensorRT-RTX engine from ONNX, with the precision carried in the graph and verified."""
    from .engine import BuildOptions, build

    targets = [c.strip() for c in ccs.split(",") if c.strip()] if ccs else []
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
    emit(m, as_json, f"Built {art.path} ({m['backend']} {m['backend_version']}, {m['precision']}{base}, {m['targets']}): "
                     f"{m['engine_bytes'] / 1e6:.1f} MB in {m['build_seconds']:.1f} s; {fed}; profile batch "
                     f"{'/'.join(map(str, prof['batch']))}, seq {'/'.join(map(str, prof['sequence']))} "
                     f"({prof['source']['sequence']}). Built from {m['onnx']['built_from']}.")


@main.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def doctor_cmd(as_json):
    """Show installed backends, ONNX Runtime providers, GPUs and CPU features."""
    from .doctor import doctor, format_doctor

    report = doctor()
    emit(report, as_json, format_doctor(report))
