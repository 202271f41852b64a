"""``edgekit optimize-lm MODEL --data FILE --out DIR``: :func:`edgekit.llm.pipeline.optimize_lm` from the CLI.

The main CLI registers it (``register(main)``) and routes ``edgekit optimize MODEL --task text-generation`` (or a
causal-LM MODEL) to :func:`run` with the same options. Errors are EdgekitErrors, printed as one line by the main
group's boundary; a failed budget raises GateFailedError (exit code 3) after OUT is written.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_options import path_arg


def run(model: str, data: str, out: Path, options, force: bool = False) -> dict:
    """Run optimize_lm with ``options`` (an LMOptimizeOptions); echo one summary line."""
    from .pipeline import optimize_lm

    report = optimize_lm(model, data, out, options, force=force)
    acc = report["llm"]["gate"]["accuracy"]
    click.echo(f"Optimized {model} -> {out} ({options.precision}): accuracy {acc['original']['accuracy']:.4f} -> "
               f"{acc['artifact']['accuracy']:.4f}{_engine_note(report)}; report in {Path(out) / 'report.md'}")
    return report


def _engine_note(report: dict) -> str:
    o = report["optimized"]
    if o.get("engine_mb") is None:
        return ""
    return (f" (on its ONNX, ORT CPU); TensorRT-RTX engine {o['engine_mb']} MB for "
            f"{', '.join(o['compute_capabilities'] or ['default targets'])}, latency {o['latency']}")


@click.command("optimize-lm")
@click.argument("model")
@click.option("--data", required=True, help="Labeled .tsv/.csv/.jsonl (text + label) for the task gate.")
@click.option("--out", required=True, type=path_arg, help="Output folder.")
@click.option("--precision", type=click.Choice(["int4", "int8", "fp16"]), default="int4", show_default=True,
              help="cpu: int4 or int8; tensorrt-rtx: int4 or fp16.")
@click.option("--target", type=click.Choice(["cpu", "tensorrt-rtx"]), default="cpu", show_default=True)
@click.option("--compute-capability", "ccs", default=None, help="tensorrt-rtx: targets, e.g. 8.6,12.0.")
@click.option("--block-size", type=int, default=0, show_default=True,
              help="tensorrt-rtx int4: input rows per scale (0: the largest of 128/64/32/16 that fits).")
@click.option("--keep-lm-head", is_flag=True, help="tensorrt-rtx int4: keep the LM head in fp16.")
@click.option("--keep-sensitive", type=click.IntRange(min=0), default=0, show_default=True,
              help="tensorrt-rtx int4: leave the N weight MatMuls whose int4 rounding changes their output most "
                   "(relative, on the calibration prompts) in fp16.")
@click.option("--keep-fp", type=click.Choice(["auto", "none", "lm_head_int8", "mixed", "shortlist", "lm_head"]),
              default="auto", show_default=True,
              help="cpu: what stays at higher precision (see quantize-lm --keep-fp); shortlist: a GGUF's Q8_0 head "
                   "as an int4 copy that picks 64 logits per position, computed from the Q8_0 rows.")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=0, show_default=True,
              help="cpu: MatMulNBits accuracy_level, 4 (int8 activations, fast) or 1 (fp32); 0 = measured.")
@click.option("--rows", type=int, default=200, show_default=True, help="Labeled rows scored (0 = all).")
@click.option("--answer-tokens", type=click.IntRange(min=1), default=16, show_default=True,
              help="New tokens generated per answer (EOS ends it sooner); the first label word among the first 10 "
                   "words is the prediction, so a model that answers in a sentence needs room for it.")
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--engine", type=click.Choice(["auto", "ort", "genai"]), default="auto", show_default=True)
@click.option("--template", default=None, help="Prompt template name (oneword, classify, review_first) or text "
                                               "with {text}.")
@click.option("--held-out", default=None, help="Held-out text for perplexity (default: train.tsv beside --data).")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True, help="Points.")
@click.option("--min-agreement", type=float, default=0.9, show_default=True)
@click.option("--max-ppl-increase", type=float, default=0.10, show_default=True, help="Relative.")
@click.option("--rounds", type=int, default=5, show_default=True, help="Interleaved bench rounds.")
@click.option("--skip-bench", is_flag=True)
@click.option("--fallback/--no-fallback", default=True, show_default=True,
              help="cpu int4: when the gate fails, quantize again keeping more at higher precision and re-gate.")
@click.option("--awq/--no-awq", default=True, show_default=True,
              help="int4 (cpu, tensorrt-rtx): fit activation-aware scales (AWQ) and GPTQ rounding on calibration "
                   "prompts of the task first (Llama, Mistral, Qwen; other architectures: plain rounding).")
@click.option("--calibration-data", default=None,
              help="Labeled or plain rows for the AWQ fit, put through --template (default: the --data rows the "
                   "gate does not score).")
@click.option("--calibration-rows", type=int, default=128, show_default=True, help="Rows used for the AWQ fit.")
@click.option("--artifact", default=None, help="Gate and bench this existing artifact instead of rebuilding.")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT that edgekit did not write.")
def optimize_lm_cmd(model, data, out, precision, target, ccs, block_size, keep_lm_head, keep_sensitive, keep_fp,
                    accuracy_level, rows, answer_tokens, threads, engine, template, held_out, max_accuracy_drop,
                    min_agreement, max_ppl_increase, rounds, skip_bench, fallback, awq, calibration_data,
                    calibration_rows, artifact, force):
    """Optimize a causal LM (HF folder, .gguf, pkg:NAME): int4/int8, gated on generated answers, benchmarked."""
    from .bench import LMBenchOptions
    from .gate import LMGateOptions
    from .pipeline import LMOptimizeOptions
    from .prompts import DEFAULT_TEMPLATE

    gate = LMGateOptions(rows=rows or None, template=template or DEFAULT_TEMPLATE, answer_tokens=answer_tokens,
                         max_accuracy_drop=max_accuracy_drop, min_agreement=min_agreement,
                         max_ppl_increase=max_ppl_increase)
    options = LMOptimizeOptions(precision=precision, target=target, block_size=block_size, keep_lm_head=keep_lm_head,
                                keep_sensitive=keep_sensitive, keep_fp=keep_fp, accuracy_level=accuracy_level,
                                compute_capabilities=[c.strip() for c in (ccs or "").split(",") if c.strip()],
                                threads=threads, engine=engine, held_out=held_out, skip_bench=skip_bench,
                                fallback=fallback, awq=awq, calibration_data=calibration_data,
                                calibration_rows=calibration_rows, artifact=artifact, gate=gate,
                                bench=LMBenchOptions(rounds=rounds, threads=threads))
    run(model, data, out, options, force)


def register(group: click.Group) -> None:
    group.add_command(optimize_lm_cmd)
