"""Click commands for causal LMs; the main CLI registers them (``register(main)``).

Proposed surface: ``edgekit export-lm MODEL --out DIR`` and ``edgekit
quantize-lm MODEL --out DIR --precision int4``; ``edgekit export MODEL --task
text-generation`` can route to :func:`export_lm` with the same options. MODEL
is an HF folder, a ``.gguf`` file or ``pkg:<installed distribution>``.
Errors are EdgekitErrors, printed as one line by the main group's boundary.
"""

from __future__ import annotations


import click

from ..cli_options import path_arg



def _csv_ints(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


@click.command("export-lm")
@click.argument("model")
@click.option("--out", required=True, type=path_arg, help="Output folder (model.onnx, genai_config.json, tokenizer).")
@click.option("--route", type=click.Choice(["auto", "builder", "dynamo"]), default="auto", show_default=True,
              help="builder: onnxruntime-genai's model builder (Llama, Qwen, Phi, Gemma, Mistral); "
                   "dynamo: torch.onnx.export (GPT-2 and the rest); auto picks.")
@click.option("--validation-tokens", default=16, show_default=True, type=int,
              help="Greedy tokens that must equal PyTorch's on every validation prompt.")
@click.option("--atol", default=1e-2, show_default=True, type=float, help="Max |logit diff| along the greedy path.")
@click.option("--prompt", "prompts", multiple=True, help="Validation prompt (repeatable; default: 10 built-in).")
@click.option("--cache-dir", default=None, help="Cache for imported GGUF folders (default: $EDGEKIT_CACHE).")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT that edgekit did not write.")
def export_lm_cmd(model, out, route, validation_tokens, atol, prompts, cache_dir, force):
    """Export a causal LM (HF folder, .gguf, pkg:NAME) to ONNX with a KV cache, validated against PyTorch."""
    from .export import LMExportOptions, export_lm

    options = LMExportOptions(route=route, validation_tokens=validation_tokens, atol=atol, prompts=tuple(prompts),
                              cache_dir=cache_dir)
    art = export_lm(model, out, options, force=force)
    v = art.manifest["validation"]
    click.echo(f"Exported {art.model_file} ({art.manifest['route']} route, fp32, KV cache): first {v['tokens']} "
               f"greedy tokens identical to PyTorch on {v['prompts']} prompts, max |logit diff| "
               f"{v['max_abs_logit_diff']:.2e}.")


@click.command("quantize-lm")
@click.argument("model")
@click.option("--out", required=True, type=path_arg, help="Output folder.")
@click.option("--precision", type=click.Choice(["int4", "int8"]), default="int4", show_default=True)
@click.option("--block-size", default=0, show_default=True, type=int, help="0 = measure --block-sizes.")
@click.option("--accuracy-level", default=0, show_default=True, type=int,
              help="MatMulNBits accuracy_level (1 fp32, 4 int8 activations); 0 = measure --accuracy-levels.")
@click.option("--block-sizes", default="32,128", show_default=True, callback=_csv_ints)
@click.option("--accuracy-levels", default="4,1", show_default=True, callback=_csv_ints)
@click.option("--keep-fp", type=click.Choice(["auto", "none", "lm_head_int8", "mixed", "shortlist", "lm_head"]),
              default="auto", show_default=True,
              help="What stays at higher precision: lm_head_int8 (last MatMul int8), mixed (k-quant, lm_head and "
                   "sensitive layers int8), lm_head (lm_head + embeddings fp32, or a GGUF's own Q8_0 blocks), "
                   "shortlist (a GGUF's Q8_0 head: an int4 copy picks each position's 64 highest logits, computed "
                   "again from the Q8_0 rows: asked for, never auto); auto measures the others in that order while "
                   "agreement is under --min-agreement (lm_head first for a Q4_1 source).")
@click.option("--min-agreement", default=0.90, show_default=True, type=float,
              help="Teacher-forced greedy agreement under which auto measures the next fallback.")
@click.option("--route", type=click.Choice(["auto", "builder", "dynamo"]), default="auto", show_default=True)
@click.option("--prompt", "prompts", multiple=True, help="Measurement prompt (repeatable; default: 10 built-in).")
@click.option("--tokens", default=16, show_default=True, type=int, help="Greedy tokens compared per prompt.")
@click.option("--awq", is_flag=True, help="int4: fit activation-aware scales (AWQ) and the rounding (GPTQ) on "
                                          "calibration prompts first (Llama, Mistral, Qwen).")
@click.option("--gptq/--no-gptq", default=True, show_default=True,
              help="With --awq: GPTQ rounding (errors spread through the inverse Hessian) instead of clipping.")
@click.option("--calibration-data", default=None, help="Rows (.tsv/.csv/.jsonl text column) put through --template "
                                                       "as AWQ calibration prompts (default: the measurement prompts).")
@click.option("--calibration-rows", default=128, show_default=True, type=int)
@click.option("--template", default=None, help="Prompt template (name or text with {text}) for --calibration-data.")
@click.option("--source-blocks/--no-source-blocks", default=True, show_default=True,
              help="int4 of a model whose weights are Q4_1 blocks (a Q4_1 GGUF): keep those blocks exactly (block "
                   "32, no AWQ) instead of rounding them again.")
@click.option("--threads", default=2, show_default=True, type=int)
@click.option("--cache-dir", default=None)
@click.option("--force", is_flag=True)
def quantize_lm_cmd(model, out, precision, block_size, accuracy_level, block_sizes, accuracy_levels, keep_fp,
                    min_agreement, route, prompts, tokens, awq, gptq, calibration_data, calibration_rows, template,
                    source_blocks, threads, cache_dir, force):
    """Quantize a causal LM to int4/int8 weight-only, choosing block size and accuracy_level by measurement."""
    from ..data import load_dataset
    from ..errors import refuse_invalid
    from .prompts import DEFAULT_TEMPLATE, template as make_template
    from .quantize import LMQuantizeOptions, quantize_lm
    from .source_blocks import Q8_0_KEPT

    from ..cli_options import refuse_given

    no_awq = "calibration prompts and the rounding are the AWQ fit's, and this run has no --awq"
    no_rows = "it applies to --calibration-data rows, and none were given (the measurement prompts calibrate)"
    refuse_invalid([("--calibration-rows", calibration_rows, calibration_rows >= 1, "at least 1")], hint=False)
    if not awq:
        refuse_given(dict.fromkeys(("gptq", "calibration_data", "calibration_rows", "template"), no_awq))
    elif not calibration_data:
        refuse_given(dict.fromkeys(("calibration_rows", "template"), no_rows))
    calibration: tuple[str, ...] = ()
    if calibration_data:
        prompt = make_template(template or DEFAULT_TEMPLATE)
        calibration = tuple(map(prompt.question, load_dataset(calibration_data).texts[:calibration_rows]))
    options = LMQuantizeOptions(precision=precision, block_size=block_size, accuracy_level=accuracy_level,
                                block_sizes=block_sizes, accuracy_levels=accuracy_levels, keep_fp=keep_fp,
                                min_agreement=min_agreement, route=route, prompts=tuple(prompts), tokens=tokens,
                                awq=awq, gptq=gptq, calibration=calibration, source_blocks=source_blocks,
                                threads=threads, cache_dir=cache_dir)
    art = quantize_lm(model, out, options, force=force)
    q = art.manifest["llm"]["quantization"]
    size = sum(f.stat().st_size for f in art.folder.iterdir() if f.name.startswith("model.onnx")) / 1e6
    kept = f", fp32: {', '.join(q['fp32_fallback'])}" if q["fp32_fallback"] else ""
    kept += f", AWQ error {q['awq']['output_error_vs_rtn']:.3f}x rounding" if q.get("awq") else ""
    kept += f", the source's Q4_1 blocks kept in {q['source_blocks']['matmuls']} MatMuls" if q.get("source_blocks") \
        else ""
    q8 = [name for name in Q8_0_KEPT if name in (q.get("source_blocks") or {})]
    kept += f", Q8_0 kept as 8-bit blocks: {', '.join(q8)}" if q8 else ""
    click.echo(f"Quantized to {art.model_file} ({precision}, block {q['block_size']}, accuracy_level "
               f"{q['accuracy_level']}{kept}; {size:.1f} MB): greedy agreement {q['chosen']['greedy_agreement']:.3f}, "
               f"decode {q['chosen']['decode_tokens_per_s']:.1f} tok/s.")


COMMANDS = (export_lm_cmd, quantize_lm_cmd)


def register(group: click.Group) -> None:
    """Add ``export-lm`` and ``quantize-lm`` to the main group."""
    for command in COMMANDS:
        group.add_command(command)
