"""``optimize`` for causal LMs: source -> KV-cache export + int4/int8 weight-only -> gate (a, b, c) -> bench -> report.

OUT holds the runnable artifact (``edgekit.runtime.load(OUT)`` / ``load_generator(OUT)``), ``report.json``,
``report.md`` and ``manifest.json``, written atomically. When a budget fails the artifact is kept, marked
``passed: false``, and :class:`GateFailedError` (exit code 3) is raised.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .. import progress
from ..artifact import atomic_dir, read_manifest, sha256_file, sha256_folder, versions, write_manifest
from ..cache import StepCache
from ..data import load_dataset
from ..environment import environment
from ..errors import DataError, GateFailedError, InputError, refuse_invalid
from ..runtime.session import max_threads
from .bench import ArtifactRunner, LMBenchOptions, TorchRunner, bench_prompt, peak_rss_mb, run_bench
from .gate import LMGateOptions, run_gate
from .prompts import template
from .validate import PROMPTS

PRECISIONS = {"cpu": ("int4", "int8"), "tensorrt-rtx": ("int4", "fp16")}
NO_GPU_LATENCY = "not measured (no GPU)"
DEFAULT_HELD_OUT = "/work/shared/data/sst2/train.tsv"


@dataclass
class LMOptimizeOptions:
    """Options of :func:`optimize_lm`; the CLI flags share these names."""

    precision: str = field(default="int4", metadata={"help": "int4 or int8 weight-only (cpu); int4 or fp16 "
                                                             "(tensorrt-rtx)"})
    target: str = field(default="cpu", metadata={"help": "cpu (ONNX Runtime) or tensorrt-rtx (a decoder engine "
                                                         "beside its ONNX; accuracy gated on that ONNX on ORT CPU)"})
    compute_capabilities: list[str] = field(default_factory=list, metadata={"help": "tensorrt-rtx targets"})
    block_size: int = field(default=0, metadata={"help": "tensorrt-rtx int4: input rows per scale (0 = auto)"})
    keep_lm_head: bool = field(default=False, metadata={"help": "tensorrt-rtx int4: keep the LM head in fp16"})
    keep_sensitive: int = field(default=0, metadata={"help": "tensorrt-rtx int4: weight MatMuls left in fp16, those "
                                                             "int4 rounding changes most on the calibration prompts"})
    keep_fp: str = field(default="auto", metadata={"help": "cpu: what quantize-lm keeps at higher precision "
                                                           "(auto measures; shortlist is asked for)"})
    accuracy_level: int = field(default=0, metadata={"help": "cpu: MatMulNBits accuracy_level, 4 (int8 activations) "
                                                             "or 1 (fp32); 0 = measured"})
    threads: int = field(default=2, metadata={"help": "threads for the gate and the bench (both sides)"})
    engine: str = field(default="auto", metadata={"help": "generation engine: auto, ort or genai"})
    held_out: str | None = field(default=None, metadata={"help": "held-out text for perplexity (.txt or .tsv); "
                                                                 "default: the train.tsv beside --data"})
    cache_dir: str | None = field(default=None, metadata={"help": "where imported GGUF folders are cached"})
    skip_bench: bool = field(default=False, metadata={"help": "gate only"})
    fallback: bool = field(default=True, metadata={"help": "cpu int4: when the gate fails, quantize again with more "
                                                           "kept at higher precision (int8 lm_head, k-quant mixed, "
                                                           "fp32 lm_head) and gate that, until one passes"})
    awq: bool = field(default=True, metadata={"help": "int4 (cpu, tensorrt-rtx): fit AWQ scales and GPTQ rounding "
                                                      "on the task's calibration prompts first (Llama, Mistral, "
                                                      "Qwen; others: plain rounding)"})
    calibration_data: str | None = field(default=None, metadata={"help": "rows for the AWQ fit (default: the "
                                                                         "--data rows the gate does not score)"})
    calibration_rows: int = field(default=128, metadata={"help": "rows used for the AWQ fit"})
    artifact: str | None = field(default=None, metadata={"help": "gate and bench this existing text-generation "
                                                                 "artifact instead of exporting+quantizing again"})
    gate: LMGateOptions = field(default_factory=LMGateOptions)
    bench: LMBenchOptions = field(default_factory=LMBenchOptions)


def optimize_lm(model: str | Path, data: str | Path, out: str | Path, options: LMOptimizeOptions | None = None,
                force: bool = False) -> dict:
    """Optimize causal LM ``model`` (HF folder, .gguf, pkg:NAME) into ``out``, gated on labeled ``data``."""
    options = options or LMOptimizeOptions()
    _check_target(options)
    texts, labels = labeled_rows(data, options.gate.template)
    held_out = Path(options.held_out or Path(data).with_name("train.tsv"))
    if not held_out.is_file():
        raise DataError(f"Held-out text '{held_out}' not found", "perplexity needs text the gate did not score",
                        "Pass --held-out FILE")
    from .source import resolve_source  # noqa: PLC0415  (edgekit.llm's sources: HF folder, .gguf, pkg:)

    started = time.perf_counter()
    stages: list[dict] = []
    with _stage(stages, "source", str(model)):
        source = resolve_source(model, options.cache_dir)
    _check_chat_template(options.artifact or source.folder)
    given = Path(options.artifact or "")
    if options.artifact and all((f / "tokenizer.json").is_file() for f in (source.folder, given)):
        from ..artifact import Artifact  # noqa: PLC0415
        from ..runtime.tokenizer import TextEncoder  # noqa: PLC0415
        from ..sessions import check_same_tokenizer  # noqa: PLC0415

        # the gate compares the two sides' token ids: a GPT-2 artifact was gated against a Llama
        check_same_tokenizer(TextEncoder(source.folder), {"--artifact": Artifact(given, "onnx", given / "model.onnx")})
    rtx_fit = None
    inputs = (model, source.folder, data, held_out, options.artifact)
    with atomic_dir(out, force, inputs=inputs) as tmp:
        if options.artifact:
            with _stage(stages, "artifact", f"given: {options.artifact}"):
                _copy_given(Path(options.artifact), tmp)
            # labelled by what it is: the --precision default (int4) named an int8 or fp32 artifact in the report
            options = replace(options, precision=read_manifest(tmp).get("precision") or "unrecorded")
        elif options.target == "tensorrt-rtx":
            rtx_fit = _rtx_artifact(source.folder, tmp, options, stages, texts)
        else:
            from .quantize import quantize_lm  # noqa: PLC0415  (export + quantize)

            with _stage(stages, "export+quantize", f"{options.precision} weight-only, KV cache"):
                quantize_lm(source.folder, tmp / "artifact", quantize_options(source.folder, options, texts))
                _move_up(tmp / "artifact", tmp)
        gate, bench, trials = _gate_and_bench(source.folder, tmp, texts, labels, held_out, options, stages)
        lineage = read_manifest(tmp)  # after a fallback: the quantization that was kept
        report = _report(model, data, out, options, source.folder, tmp, lineage, gate, bench, stages)
        report["llm"]["fallback"] = trials
        report["llm"]["awq"] = rtx_fit or (report["llm"]["quantization"] or {}).get("awq")
        report["seconds_total"] = round(time.perf_counter() - started, 1)
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        (tmp / "report.md").write_text(markdown(report))
        write_manifest(tmp, "onnx", "optimize-lm",
                       inputs={"model": str(model), "data": str(data),
                               "data_sha256": sha256_file(Path(data)) if Path(data).is_file() else None},
                       options=asdict(options),
                       extra={"task": "text-generation", "precision": options.precision, "passed": report["passed"],
                              "route": lineage.get("route"), "llm": lineage.get("llm"), "stages": stages,
                              "lineage": [lineage], "seconds": report["seconds_total"]})
    if not report["passed"]:
        failed = "; ".join(f"{c['name']} {c['value']} vs budget {c['budget']}" for c in gate["checks"] if not c["passed"])
        raise GateFailedError(f"Causal-LM gate failed: {failed}", f"the artifact is kept in '{out}' marked failed",
                              "Try --precision fp16" if options.target == "tensorrt-rtx" and options.precision == "int4"
                              else "Try --precision int8, or relax the failing budget")
    return report


def quantize_options(hf: Path, options: LMOptimizeOptions, texts: list[str], **kw):
    """quantize-lm's options for this run: AWQ on the task's calibration prompts where it applies."""
    from .awq import SUPPORTED  # noqa: PLC0415
    from .quantize import LMQuantizeOptions  # noqa: PLC0415

    kind = json.loads((hf / "config.json").read_text()).get("model_type")
    awq = options.awq and options.precision == "int4" and kind in SUPPORTED
    chosen = {"keep_fp": options.keep_fp, "accuracy_level": options.accuracy_level, **kw}  # a fallback sets keep_fp
    return LMQuantizeOptions(precision=options.precision, threads=options.threads, cache_dir=options.cache_dir,
                             awq=awq, calibration=calibration_prompts(options, texts) if awq else (), **chosen)


def calibration_prompts(options: LMOptimizeOptions, texts: list[str]) -> tuple[str, ...]:
    """The AWQ fit's prompts: ``calibration_data`` rows, else the gate data's rows past those the gate scores for
    accuracy and before the last ones it asks for greedy agreement (never a row the gate uses: on 30 rows all 16
    agreement prompts were calibration prompts too), through the gate's template. Empty (quantize-lm then uses its
    built-in prompts) when none is left."""
    if options.calibration_data:
        rows = load_dataset(options.calibration_data).texts
    elif options.gate.rows is not None:
        rows = texts[options.gate.rows:len(texts) - min(options.gate.agreement_prompts, len(texts))]
    else:
        rows = []
    prompt = template(options.gate.template)
    return tuple(map(prompt.question, rows[:options.calibration_rows]))


def _check_chat_template(folder: str | Path) -> None:
    """The gate asks its questions as chat messages: a model without a chat template failed there, after the export
    and quantization, with a fix (chat=False) that is the runtime's, not this command's."""
    from ..runtime.generate import ChatTemplate  # noqa: PLC0415

    if not ChatTemplate(Path(folder)).source:
        raise InputError(f"'{folder}' has no chat template", "optimize-lm's gate asks the model its questions as chat "
                         "messages (tokenizer_config.json chat_template or chat_template.jinja)",
                         "Optimize an instruct (chat) model, or add its chat template to the folder")


def _check_target(options: LMOptimizeOptions) -> None:
    allowed = PRECISIONS.get(options.target)
    if allowed is None:
        raise InputError(f"Unknown target '{options.target}' for a causal LM", None,
                         f"Choose one of: {', '.join(PRECISIONS)}")
    if options.precision not in allowed:
        raise InputError(f"Unknown precision '{options.precision}' for a causal LM on {options.target}", None,
                         f"Choose one of: {', '.join(allowed)}")
    for flag, value, default in (("--keep-fp", options.keep_fp, "auto"),
                                 ("--accuracy-level", options.accuracy_level, 0)):
        if value != default and (options.target != "cpu" or options.artifact):
            raise InputError(f"{flag} applies to quantizing for --target cpu only",
                             "this run uses --artifact (nothing is quantized)" if options.artifact else
                             f"this run is {options.target}", f"Drop {flag}")
    if options.compute_capabilities and options.target != "tensorrt-rtx":
        raise InputError("--compute-capability applies to --target tensorrt-rtx only", f"this run is {options.target}",
                         "Drop --compute-capability, or pass --target tensorrt-rtx")
    if options.compute_capabilities:  # an unknown one was refused at the engine step, after the export and AWQ fit
        from ..deps import require  # noqa: PLC0415
        from .rtx_engine import LMEngineOptions, _targets  # noqa: PLC0415  (its message: RTX GPUs only)

        _targets(require("tensorrt_rtx"), LMEngineOptions(compute_capabilities=list(options.compute_capabilities),
                                                          precision=options.precision))
    for flag, given in (("--keep-sensitive", options.keep_sensitive), ("--block-size", options.block_size),
                        ("--keep-lm-head", options.keep_lm_head)):  # the last two were ignored off tensorrt-rtx int4
        if given and (options.target, options.precision) != ("tensorrt-rtx", "int4"):
            raise InputError(f"{flag} applies to --target tensorrt-rtx --precision int4 only",
                             f"this run is {options.target} {options.precision}; on the CPU the gate's fallback keeps "
                             "layers at higher precision (k-quant mixed) and the block size is measured",
                             f"Drop {flag}")
    fitting = options.awq and options.precision == "int4" and not options.artifact
    if options.calibration_data and not fitting:  # accepted and ignored: its rows feed the AWQ fit only
        raise InputError("--calibration-data applies to the int4 AWQ fit only",
                         "this run uses --artifact (nothing is quantized)" if options.artifact else
                         f"this run is {options.precision}{'' if options.awq else ' with --no-awq'}",
                         "Drop --calibration-data")
    if options.engine != "auto" and options.target == "tensorrt-rtx":  # the gate ran the engine's ONNX on ort anyway
        raise InputError(f"--engine {options.engine} does not apply to --target tensorrt-rtx",
                         "the gate runs the engine's own ONNX on ONNX Runtime (engine ort)", "Drop --engine")
    if options.block_size:  # was refused after the export and the AWQ fit
        from .rtx_graph import check_block_size  # noqa: PLC0415

        check_block_size(options.block_size)
    g = options.gate
    # every count and budget before the model is read (a bad one used to surface minutes in, or never)
    checks = [("--rows", g.rows, g.rows is None or g.rows >= 1, "at least 1 (0 = all rows)"),
              ("--threads", options.threads, 1 <= options.threads <= max_threads(), f"1 to {max_threads()}"),
              ("--rounds", options.bench.rounds, options.bench.rounds >= 1, "at least 1"),
              ("--calibration-rows", options.calibration_rows, options.calibration_rows >= 1, "at least 1"),
              ("--block-size", options.block_size, options.block_size >= 0, "0 (auto) or more"),
              ("--max-accuracy-drop", g.max_accuracy_drop, 0 <= g.max_accuracy_drop <= 100, "in points, 0 to 100"),
              ("--min-agreement", g.min_agreement, g.min_agreement >= 0, "a fraction >= 0"),
              ("--max-ppl-increase", g.max_ppl_increase, g.max_ppl_increase >= 0, "a relative increase >= 0")]
    refuse_invalid(checks, hint=False)


def _rtx_artifact(hf: Path, tmp: Path, options: LMOptimizeOptions, stages: list, texts: list[str]) -> dict | None:
    """The decoder ONNX (fp16 / int4) and its TensorRT-RTX engine, built here without a GPU. int4 of a Llama-style
    model is fitted first (AWQ scales + GPTQ rounding on the task's calibration prompts, on the grid of the Q/DQ
    quantizer, which then reproduces it); the fit's figures are returned for the report."""
    from .awq import SUPPORTED, auto_block, awq_folder, calibration_ids, grams_file  # noqa: PLC0415
    from .rtx_engine import LMEngineOptions, build_lm_engine  # noqa: PLC0415

    config = json.loads((hf / "config.json").read_text())
    block, source, fit = options.block_size, hf, None
    if options.awq and options.precision == "int4" and config.get("model_type") in SUPPORTED:
        block = block or auto_block(config)
        prompts = calibration_prompts(options, texts)
        with _stage(stages, "awq", f"scales + GPTQ rounding on {len(prompts) or 'built-in'} prompts, block {block}"):
            source = tmp / ".awq-hf"
            ids = calibration_ids(hf, prompts or PROMPTS)
            fit = awq_folder(hf, source, ids, block, gptq=True, grid="trt", threads=options.threads,
                             grams=grams_file(hf, ids, options.cache_dir), keep=options.keep_sensitive).row()
    kept = tuple((fit or {}).get("kept_unrounded") or ())  # the fit chose them: the Q/DQ rewrite leaves them fp16
    ccs = ", ".join(options.compute_capabilities) or "default targets"
    with _stage(stages, "export+engine", f"TensorRT-RTX {options.precision}, {ccs}"):
        build_lm_engine(source, tmp / "artifact", LMEngineOptions(
            precision=options.precision, cache_dir=options.cache_dir, block_size=block,
            keep_lm_head=options.keep_lm_head, keep_sensitive=0 if fit else options.keep_sensitive,
            keep_weights=kept, compute_capabilities=list(options.compute_capabilities)))
        _move_up(tmp / "artifact", tmp)
    if source != hf:
        shutil.rmtree(source)
    return fit


def _copy_given(src: Path, dst: Path) -> None:
    from ..runtime.generate import is_generation_folder  # noqa: PLC0415

    if not (src / "model.onnx").is_file() or not is_generation_folder(src):
        raise InputError(f"--artifact '{src}' is not a text-generation artifact", "no model.onnx with a "
                         "text-generation manifest or genai_config.json", "Pass a folder written by quantize-lm")
    for f in src.iterdir():
        if f.is_file() and f.name not in ("report.json", "report.md"):
            shutil.copyfile(f, dst / f.name)


def labeled_rows(data: str | Path, template_name: str) -> tuple[list[str], list[int]]:
    """Texts and integer labels; labels may be ids (0/1) or the template's answer words."""
    ds = load_dataset(data)
    words = template(template_name).words
    by_word = {w.lower(): k for k, w in words.items()}
    labels = []
    for raw in ds.labels:
        key = raw.strip().lower()
        label = int(key) if key.isdigit() and int(key) in words else by_word.get(key)
        if label is None:
            raise DataError(f"Label '{raw}' in '{data}' has no answer word", f"the prompt's answers are "
                            f"{', '.join(words.values())}", "Use labels 0/1 or those words")
        labels.append(label)
    return ds.texts, labels


def _answers_store(hf: Path, eos_ids, options: LMOptimizeOptions) -> Path:
    """Where the original's greedy answers are kept between runs: keyed by its weights, EOS ids and versions."""
    payload = json.dumps(["argmax", sha256_folder(hf), list(eos_ids or []), versions()])  # not generate()'s answers
    key = hashlib.sha256(payload.encode()).hexdigest()[:40]
    return StepCache(options.cache_dir).root / "lm-answers" / f"{key}.json"


def _gate_and_bench(hf: Path, art: Path, texts, labels, held_out: Path, options: LMOptimizeOptions,
                    stages: list) -> tuple[dict, dict | None, list[dict]]:
    from ..runtime.generate import read_lm_info  # noqa: PLC0415
    from .scorers import ArtifactLM, MemoLM, TorchLM  # noqa: PLC0415

    eos = read_lm_info(art).eos_ids
    original = MemoLM(TorchLM(hf, options.threads, eos), _answers_store(hf, eos, options))  # serves every trial
    rtx = options.target == "tensorrt-rtx"  # gate the engine's own ONNX on ORT CPU: same graph, same precision
    artifact = ArtifactLM(art, options.threads, "ort" if rtx else options.engine)
    with _stage(stages, "gate", f"{options.gate.rows or len(texts)} rows, agreement, perplexity") as info:
        gate = run_gate(original, artifact, texts, labels, options.gate, held_out)
        original.save()
        if original.reused:
            info["note"] = f"{original.reused} of the original's answers from an earlier run (step cache)"
    del artifact
    trials: list[dict] = []
    if not gate["passed"] and _can_fall_back(art, options):
        gate, trials = _fall_back(original, hf, art, gate, (texts, labels, held_out), options, stages)
    if options.skip_bench or rtx:  # the LM bench has no TensorRT-RTX runner; no GPU here in any case
        return gate, None, trials
    del original  # the bench loads its own copies, tokenizers included
    with _stage(stages, "bench", f"{options.bench.rounds} interleaved rounds, {options.bench.threads} threads"):
        prompt = bench_prompt(art / "tokenizer.json", held_out, options.bench.prompt_tokens)
        runners = [TorchRunner(hf, options.bench.threads),
                   ArtifactRunner(art, options.bench.threads, options.engine, f"edgekit {options.precision}")]
        bench = run_bench(runners, prompt, options.bench)
        if options.bench.memory:
            bench["peak_rss_mb"] = {"PyTorch eager generate": peak_rss_mb("torch", str(hf), options.bench.threads),
                                    f"edgekit {options.precision}": peak_rss_mb("artifact", str(art),
                                                                               options.bench.threads, options.engine)}
    return gate, bench, trials


FALLBACK_ORDER = ("none", "lm_head_int8", "mixed", "lm_head")  # less and less of the model left at int4


def _can_fall_back(art: Path, options: LMOptimizeOptions) -> bool:
    quant = (read_manifest(art).get("llm") or {}).get("quantization") or {}
    return (options.fallback and not options.artifact and options.target == "cpu" and options.precision == "int4"
            and quant.get("keep_fp") in FALLBACK_ORDER[:-1])


def _fall_back(original, hf: Path, art: Path, gate: dict, rows: tuple, options: LMOptimizeOptions,
               stages: list) -> tuple[dict, list[dict]]:
    """Quantize again keeping more at higher precision, gate each (the original's answers reused), until one passes.

    The int4 setting quantize-lm chose by greedy agreement on its own prompts can still miss the task's budgets;
    like the encoders' per-layer fallback, the next, more precise setting is tried (same block size; the
    accuracy_level measured again: with more of the weights at higher precision, or exact as a Q4_1 source's, the
    int8 activations of level 4 can become the largest error left). The first that passes replaces
    the artifact; when none does, the one with the smallest accuracy drop is kept (the earlier, smaller one on a
    tie) and the gate fails as before.
    """
    from ..errors import EdgekitError  # noqa: PLC0415
    from .quantize import quantize_lm  # noqa: PLC0415
    from .scorers import ArtifactLM  # noqa: PLC0415

    texts, labels, held_out = rows
    quant = read_manifest(art)["llm"]["quantization"]
    trials = [_trial(quant["keep_fp"], quant, gate)]
    gates: dict[str, tuple[dict, Path | None]] = {quant["keep_fp"]: (gate, None)}  # None: the artifact in place
    latest = gate
    for keep in FALLBACK_ORDER[FALLBACK_ORDER.index(quant["keep_fp"]) + 1:]:
        failing = ", ".join(c["name"] for c in latest["checks"] if not c["passed"])
        work = art / f".fallback-{keep}"
        with _stage(stages, "fallback", f"int4 with {keep} kept at higher precision ({failing} failed)"):
            try:
                quantize_lm(hf, work, quantize_options(hf, options, texts, block_size=quant["block_size"],
                                                       keep_fp=keep))  # accuracy_level measured again
            except EdgekitError as exc:
                trials.append({"keep_fp": keep, "error": exc.message})
                shutil.rmtree(work, ignore_errors=True)
                continue
            latest = run_gate(original, ArtifactLM(work, options.threads, options.engine), texts, labels,
                              options.gate, held_out)
        trials.append(_trial(keep, read_manifest(work)["llm"]["quantization"], latest))
        gates[keep] = (latest, work)
        if latest["passed"]:
            break
    keep = next((k for k, (g, _) in gates.items() if g["passed"]), None) or \
        min(gates, key=lambda k: _accuracy_drop(gates[k][0]))  # dicts keep order: the earlier wins a tie
    for k, (_, work) in gates.items():
        if work is not None and k != keep:
            shutil.rmtree(work)
    chosen, work = gates[keep]
    if work is not None:
        _replace_model(work, art)
    for t in trials:
        t["kept"] = t["keep_fp"] == keep
    return chosen, trials


def _accuracy_drop(gate: dict) -> float:
    return next(c["value"] for c in gate["checks"] if c["name"] == "accuracy_drop_points")


def _trial(keep: str, quant: dict, gate: dict) -> dict:
    acc = gate["accuracy"]["artifact"]
    return {"keep_fp": keep, "block_size": quant.get("block_size"), "accuracy_level": quant.get("accuracy_level"),
            "passed": gate["passed"], "accuracy": acc["accuracy"], "unparsed": acc["unparsed"],
            "checks": {c["name"]: c["value"] for c in gate["checks"]}}


def _replace_model(work: Path, art: Path) -> None:
    for f in art.iterdir():
        if f.is_file():
            f.unlink()
    _move_up(work, art)


def _move_up(src: Path, dst: Path) -> None:
    """Move every entry of ``src`` into ``dst`` and remove ``src`` (a built sub-folder becomes the artifact)."""
    for f in src.iterdir():
        shutil.move(str(f), dst / f.name)
    src.rmdir()


def _report(model, data, out, options, hf, art, lineage, gate, bench, stages) -> dict:
    acc = gate["accuracy"]
    runners = (bench or {}).get("runners", {})
    rss = (bench or {}).get("peak_rss_mb", {})
    base = {"model": str(hf), "precision": "fp32", "backend": "pytorch", "accuracy": acc["original"]["accuracy"],
            "perplexity": gate["perplexity"]["original"], "bench": runners.get("PyTorch eager generate"),
            "peak_rss_mb": rss.get("PyTorch eager generate"),
            "size_mb": round(sum(f.stat().st_size for f in Path(hf).glob("*.safetensors")) / 1e6, 1)}
    name = f"edgekit {options.precision}"
    bench_row = runners.get(name) and {**runners[name], "path": str(Path(out))}  # not the writer's temporary folder
    opt = {"model": str(Path(out)), "precision": options.precision, "backend": "onnxruntime",
           "accuracy": acc["artifact"]["accuracy"], "perplexity": gate["perplexity"]["artifact"],
           "bench": bench_row, "peak_rss_mb": rss.get(name),
           "size_mb": round(sum(f.stat().st_size for f in Path(art).glob("model.onnx*")) / 1e6, 1)}
    if options.target == "tensorrt-rtx":
        opt.update(_engine_facts(art))
    return {"passed": gate["passed"], "model": str(model), "data": str(data), "task": "text-generation",
            "baseline": base, "optimized": opt, "stages": stages, "environment": environment(options.threads),
            "llm": {"gate": gate, "bench": bench, "quantization": (lineage.get("llm") or {}).get("quantization"),
                    "route": lineage.get("route")}}


def _engine_facts(art: Path) -> dict:
    from ..runtime.trt import cuda_devices  # noqa: PLC0415

    side = json.loads((art / "model.engine.json").read_text())
    return {"backend": "tensorrt-rtx", "accuracy_measured_on": "model.onnx (same precision) on onnxruntime CPU",
            "engine_mb": round(side["engine_bytes"] / 1e6, 1), "compute_capabilities": side["compute_capabilities"],
            "engine_build_seconds": side["build_seconds"], "int4_weight_matmuls":
                side["network"]["matmul"]["int4_weight"], "profiles": [p["name"] for p in side["profiles"]],
            "latency": NO_GPU_LATENCY if not cuda_devices()[0] else "not measured (no TensorRT-RTX LM bench runner)"}


def markdown(report: dict) -> str:
    """report.md: the gate's checks and the bench side by side."""
    g = report["llm"]["gate"]
    lines = [f"# optimize (text-generation): {'PASSED' if report['passed'] else 'FAILED'}", "",
             f"Model `{report['model']}`, data `{report['data']}` ({g['rows']} rows), prompt:", "",
             "```", g["prompt_template"], "```", "", "| check | value | budget | passed |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {c['value']} | {c['budget']} | {c['passed']} |" for c in g["checks"]]
    lines += ["", f"Accuracy from generated answers: original {g['accuracy']['original']['accuracy']:.4f}, "
                  f"artifact {g['accuracy']['artifact']['accuracy']:.4f}. Perplexity: original "
                  f"{g['perplexity']['original']:.3f}, artifact {g['perplexity']['artifact']:.3f}. Greedy agreement "
                  f"(teacher-forced) {g['agreement']['teacher_forced']:.4f}, identical {g['agreement']['n_tokens']}-token "
                  f"continuations {g['agreement']['identical_sequences']:.2f}."]
    for t in report["llm"].get("fallback") or []:
        lines += ["", f"Fallback trial keep_fp={t['keep_fp']}: " + (f"not built ({t['error']})" if "error" in t else
                  f"accuracy {t['accuracy']:.4f}, " + ", ".join(f"{k} {v:.4g}" for k, v in t["checks"].items())
                  + (" - passed" if t["passed"] else " - failed") + (" (kept)" if t.get("kept") else ""))]
    o = report["optimized"]
    if o.get("engine_mb") is not None:
        lines += ["", f"TensorRT-RTX engine: {o['engine_mb']} MB ({o['precision']}, compute capabilities "
                      f"{', '.join(o['compute_capabilities'] or ['default'])}, built in {o['engine_build_seconds']} s, "
                      f"profiles {', '.join(o['profiles'])}); accuracy measured on {o['accuracy_measured_on']}; "
                      f"latency {o['latency']}."]
    b = report["llm"]["bench"]
    if b:
        lines += ["", f"Bench: {b['rounds']} interleaved rounds, {b['new_tokens']} new tokens, {b['threads']} threads, "
                      f"load average {b['load_average_1m']}.", "",
                  "| runner | size MB | TTFT ms | prefill tok/s | decode tok/s | decode x vs ref | peak RSS MB |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in b["runners"].items():
            s = r["decode_speedup_vs_ref"]
            lines.append(f"| {name} | {r['size_mb']} | {r['ttft_ms']['median']:.0f} | {r['prefill_tps']['median']:.0f} "
                         f"| {r['decode_tps']['median']:.1f} | {s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f}) | "
                         f"{b.get('peak_rss_mb', {}).get(name)} |")
    return "\n".join(lines) + "\n"


class _stage:  # noqa: N801  (a context manager used like progress.stage, recording a report row)
    def __init__(self, rows: list, name: str, notes: str = ""):
        self.rows, self.name, self.notes = rows, name, notes

    def __enter__(self):
        self.started = time.perf_counter()
        self._cm = progress.stage(self.name, self.notes)
        return self._cm.__enter__()  # progress.stage's dict: a "note" put in it ends the stage's line

    def __exit__(self, *exc):
        self._cm.__exit__(*exc)
        self.rows.append({"name": self.name, "notes": self.notes,
                          "seconds": round(time.perf_counter() - self.started, 1)})
