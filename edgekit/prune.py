"""Fine-tuned classifier -> structurally smaller classifier (an HF folder), recovered by a short fine-tune.

What is cut, and how it stays loadable: FFN neurons (``--ffn``: the same
number removed in every layer, chosen per layer by importance, written as
``intermediate_size``) and whole transformer blocks (``--layers``: written as
``num_hidden_layers``). Both are physically smaller Linear layers in the
model's own stock config, so the output reloads with ``from_pretrained``
anywhere and exports with ``edgekit export``.

Attention heads (``--heads``) are refused with a one-line reason for every
supported architecture: transformers 5 derives the head size from
``hidden_size / num_attention_heads`` (see
:data:`edgekit.prune_structured.HEADS_NOT_EXPRESSIBLE`), so fewer heads could
only be zeroed, which saves nothing. Removing blocks is the honest route to
the attention-side savings: a block takes its attention, FFN and the per-op
overhead (LayerNorms, reshapes) with it, which at batch 1 is most of the time.

Importance comes from real data: ``taylor`` (default) scores FFN neurons by
first-order Taylor |gradient x activation| accumulated over
``importance_samples`` training rows, and picks blocks by measured
leave-one-out change of the predictions (KL) on the same rows; ``magnitude`` uses weight norms and drops
the top blocks. Recovery fine-tunes on the training data with edgekit's
finetune loop, by default distilling the original's logits (KL on softened
logits + cross-entropy). ``--sparsity`` adds 2:4 or unstructured zeros (GPU
only; see :mod:`edgekit.sparsity`).
"""

from __future__ import annotations

import copy
import functools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import progress
from .artifact import TOKENIZER_FILES, atomic_dir, check_output_dir, resolve, sha256_folder, write_manifest
from .atomic import work_folder
from .check import labeled_data
from .data import TextDataset, load_dataset
from .deps import require
from .errors import DataError, InputError, ModelError, first_line, refuse_invalid
from .finetune import MAX_EPOCHS
from .runtime.tokenizer import check_max_length
from .schema import opt
from .sparsity import KeepMasks, apply_masks, parse_sparsity, sparsity_masks, sparsity_report

IMPORTANCE = ("taylor", "magnitude")
EVAL_RESULTS = "eval_results.json"


@dataclass
class PruneOptions:
    """Options of ``prune``; the CLI flags and recipe keys share these names."""

    heads: float = opt(0.0, help="Share of attention heads per layer; > 0 is refused (not expressible in the "
                                  "config of the supported models).")
    ffn: float = opt(0.0, help="Share of FFN neurons removed in every layer, in [0, 1).")
    layers: int = opt(0, help="Whole transformer blocks removed.")
    importance: str = opt("taylor", help="taylor: |gradient x activation| on the training rows; magnitude: weight "
                                         "norms.", choices=IMPORTANCE)
    importance_samples: int = opt(1024, help="Training rows (seeded subset) for the importance pass.")
    sparsity: str | None = opt(None, help="Also zero weights after the cut: 2:4 or unstructured:R (GPU/TensorRT "
                                          "speedup only).")
    recover_epochs: float = opt(1.0, help="Recovery fine-tune epochs; 0 = none.")
    recover_samples: int | None = opt(16000, help="Training rows for recovery (seeded subset); None = all.")
    distill: bool = opt(True, help="Recover against the original's softened logits (KL) plus the labels (CE).")
    temperature: float = opt(2.0, help="Softening of both models' logits in the KL term.")
    distill_weight: float = opt(0.5, help="Share of the KL term in the recovery loss (the rest is CE).")
    lr: float = opt(1e-4, help="Peak AdamW learning rate of the recovery.")
    batch_size: int = opt(32, help="Rows per step of importance and recovery.")
    max_length: int = opt(128, help="Tokens per row; longer rows are cut.")
    seed: int = opt(0, help="Seed of the subsets and the shuffle order.")
    threads: int | None = opt(None, help="CPU threads for torch (default: all cores).")

    def validate(self, prefix: str = "--") -> None:
        """``prefix``: how the flags are spelled where the options came from (``--prune-`` in optimize)."""
        for flag, value in ((f"{prefix}heads", self.heads), (f"{prefix}ffn", self.ffn)):
            if not 0 <= value < 1:
                raise InputError(f"Invalid {flag} {value}", "it is the share of units removed, in [0, 1)",
                                 f"Pass e.g. {flag} 0.5 to remove half")
        samples = self.recover_samples
        checks = [(f"{prefix}layers", self.layers, self.layers >= 0 and self.layers == int(self.layers),
                   "a whole number >= 0"),
                  (f"{prefix}importance", self.importance, self.importance in IMPORTANCE,
                   f"one of {', '.join(IMPORTANCE)}"),
                  (f"{prefix}importance-samples", self.importance_samples, self.importance_samples >= 1, ">= 1"),
                  (f"{prefix}recover-epochs", self.recover_epochs, 0 <= self.recover_epochs <= MAX_EPOCHS,
                   f"in [0, {MAX_EPOCHS}]"),
                  (f"{prefix}recover-samples", samples, samples is None or samples >= 2, ">= 2"),
                  (f"{prefix}temperature", self.temperature, self.temperature > 0, "> 0"),
                  ("distill_weight", self.distill_weight, 0 <= self.distill_weight <= 1, "in [0, 1]"),
                  (f"{prefix}lr", self.lr, 0 < self.lr < 1, "in (0, 1)"),
                  (f"{prefix}batch-size", self.batch_size, self.batch_size >= 1, ">= 1"),
                  (f"{prefix}max-length", self.max_length, self.max_length >= 4, ">= 4")]
        refuse_invalid(checks)
        parse_sparsity(self.sparsity)

    @classmethod
    def from_dict(cls, values: dict) -> "PruneOptions":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"Unknown prune option(s): {', '.join(unknown)}", None,
                             f"Valid options: {', '.join(sorted(known))}")
        return cls(**values)


def prune(model: str | Path, data: str | Path | TextDataset, out: str | Path, options: PruneOptions | None = None,
          eval_data: str | Path | TextDataset | None = None, force: bool = False, prefix: str = "--") -> dict:
    """Prune ``model`` (an HF classifier folder) with importance from labeled ``data``; write the HF folder ``out``.

    ``eval_data=None`` skips evaluation (accuracies are then None). Returns
    the metrics (also in ``out/eval_results.json`` and the manifest). Nothing
    is written to ``out`` unless every step succeeds.
    """
    options = options or PruneOptions()
    options.validate(prefix)
    from .hf import fetch

    src = resolve(fetch(model))
    if src.kind != "hf":
        raise ModelError(f"'{model}' is not a Hugging Face model folder", f"it is a {src.kind} artifact",
                         "Pass the fine-tuned model folder (save_pretrained output) the ONNX came from")
    plan = check_plan(src.path, options, prefix)  # impossible cuts fail before anything is loaded
    train, train_labels = labeled_data(src, load_dataset(data, split="train"))  # a TextDataset passes as it is
    class_ids = all(isinstance(x, int) or getattr(getattr(x, "dtype", None), "kind", "") in "iu" and
                    getattr(x, "ndim", 1) == 0 for x in train_labels)  # class ids, not per-token tags or scores
    if class_ids and len({int(x) for x in train_labels}) < 2:
        # importance and recovery would learn one class (finetune refuses such data too)
        raise DataError(f"Training data '{getattr(data, 'source', data)}' has a single label",
                        "importance and recovery need examples of more than one class",
                        "Pass labeled rows of every class (e.g. the train split)")
    evalset = labeled_data(src, eval_data) if eval_data is not None else None
    check_output_dir(Path(out), force, inputs=(model, data, eval_data))  # fail before the slow part, not after
    started, cpu_started = time.perf_counter(), time.process_time()
    with progress.stage("load", f"{src.path}, {len(train)} training rows"):  # ~13 s of silence before
        original, tokenizer = _load(src.path, options)
        rows = _rows(tokenizer, train, train_labels, options.max_length)
    with progress.stage("cut", f"{options.importance} importance on {min(len(rows), options.importance_samples)} rows"):
        pruned, metrics = _cut(original, tokenizer, rows, plan, options)
        masks = _sparsify(pruned, options)
    evaluated = _eval_rows(tokenizer, evalset, options.max_length)
    with progress.slow_stage("evaluate", f"original and pruned on {len(evaluated or [])} rows"):
        metrics["original_accuracy"] = _accuracy(original, evaluated, tokenizer, options)
        metrics["pruned_accuracy"] = _accuracy(pruned, evaluated, tokenizer, options)
    inputs = (model, src.path, data, eval_data)
    with atomic_dir(out, force, inputs=inputs) as tmp, work_folder(tmp) as work:
        metrics["recovery"] = _recover(pruned, original, tokenizer, rows, masks, options, work)
        metrics["accuracy"] = _accuracy(pruned, evaluated, tokenizer, options)
        if masks:
            metrics["sparsity"] = sparsity_report(pruned, parse_sparsity(options.sparsity))
        metrics.update(eval_data=str(eval_data) if eval_data else None, eval_samples=len(evaluated or []),
                       seconds=round(time.perf_counter() - started, 1),
                       # all threads, load-independent; to the millisecond: a tiny model's 0.04 s read as 0.0
                       cpu_seconds=round(time.process_time() - cpu_started, 3))
        _save(pruned, src.path, tmp)
        (tmp / EVAL_RESULTS).write_text(json.dumps(metrics, indent=2) + "\n")
        write_manifest(tmp, "hf", "prune",
                       inputs={"model": str(src.path), "model_sha256": sha256_folder(src.path), "data": str(data),
                               "eval_data": str(eval_data) if eval_data else None},
                       options=asdict(options),
                       extra={"task": "text-classification", "precision": "fp32", "metrics": metrics})
    metrics["out"] = str(out)
    return metrics


def _config(folder: Path):
    transformers = require("transformers")
    try:
        return transformers.AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"config.json in '{folder}' cannot be read", first_line(exc),
                         "Pass a complete save_pretrained() folder") from None


def _load(folder: Path, options: PruneOptions):
    torch = require("torch")
    transformers = require("transformers")
    if options.threads:
        torch.set_num_threads(int(options.threads))
    torch.manual_seed(options.seed)
    from .hf import load_model

    model, task = load_model(folder)
    if task != "text-classification":
        raise ModelError(f"Pruning needs a sequence classifier; '{folder}' is a {task} model", None,
                         "Pass a fine-tuned text-classification model folder")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise ModelError(f"Model folder '{folder}' has no usable tokenizer", first_line(exc),
                         "Save the tokenizer with the model (tokenizer.save_pretrained)") from None
    return model, tokenizer


def check_plan(folder: Path, options: PruneOptions, prefix: str = "--") -> dict:
    """The cut for the model in ``folder`` (see :func:`_plan`), or a one-line InputError naming the flag as spelled
    where the options came from; also the token budget against the model's positions."""
    plan = _plan(_config(folder), options, prefix)
    check_max_length(folder, options.max_length, f"{prefix}max-length")
    return plan


def _plan(config, options: PruneOptions, prefix: str = "--") -> dict:
    """How many units go: {"ffn_keep": neurons kept per layer, "layers_drop": blocks removed}."""
    from .prune_structured import HEADS_NOT_EXPRESSIBLE, layout_of

    layout_of(config)  # unsupported model type -> one-line error
    heads = int(config.num_attention_heads)
    if round(options.heads * heads) >= heads:
        raise InputError(f"{prefix}heads {options.heads} would remove all {heads} heads of every layer", None,
                         f"Pass a smaller {prefix}heads share")
    if options.heads > 0:
        raise InputError(f"Attention heads cannot be pruned from a '{config.model_type}' model",
                         HEADS_NOT_EXPRESSIBLE, f"Use {prefix}ffn and {prefix}layers (whole blocks), or {prefix}sparsity for GPUs")
    if options.layers >= config.num_hidden_layers:
        raise InputError(f"{prefix}layers {options.layers} would remove every block: the model has "
                         f"{config.num_hidden_layers}", None, f"Pass {prefix}layers below {config.num_hidden_layers}")
    size = int(config.intermediate_size)
    keep = size - round(options.ffn * size)
    if options.ffn > 0 and size >= 64:
        keep = max(8, int(round(keep / 8)) * 8)  # multiples of 8 suit int8 GEMM kernels and 2:4 groups
    if keep < 1:
        raise InputError(f"{prefix}ffn {options.ffn} would remove all {size} FFN neurons", None, f"Pass a smaller {prefix}ffn")
    if options.ffn > 0 and keep >= size:  # rounded back to the whole layer: "FFN 1536 -> 1536", then a full recovery
        raise InputError(f"{prefix}ffn {options.ffn} removes no FFN neuron of {size}",
                         "the neurons kept are rounded to a multiple of 8", f"Pass {prefix}ffn {-(-8000 // size) / 1000} "
                         "or more, or leave it out")
    return {"ffn_keep": keep, "layers_drop": int(options.layers)}


def _rows(tokenizer, ds, labels, max_length: int) -> list[dict]:
    from .finetune import _features

    return _features(tokenizer, ds, [int(x) for x in labels], max_length)


def _eval_rows(tokenizer, evalset, max_length: int) -> list[dict] | None:
    return None if evalset is None else _rows(tokenizer, evalset[0], evalset[1], max_length)


def _batches(tokenizer, rows: list[dict], batch_size: int) -> tuple[list[dict], list[int]]:
    """Padded tensor batches in length order (little padding), and that order (indices into ``rows``)."""
    transformers = require("transformers")
    collate = transformers.DataCollatorWithPadding(tokenizer, return_tensors="pt")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    return [collate([rows[i] for i in order[s:s + batch_size]]) for s in range(0, len(order), batch_size)], order


def _cut(model, tokenizer, rows: list[dict], plan: dict, options: PruneOptions):
    """The structurally pruned model (a fresh instance of the same class) and what was cut."""
    import random

    from . import prune_structured as ps

    config = model.config
    sample = random.Random(options.seed).sample(rows, min(options.importance_samples, len(rows)))
    batches = _batches(tokenizer, sample, options.batch_size)[0] if options.importance == "taylor" else None
    dropped = ps.layers_to_drop(model, batches, plan["layers_drop"])
    kept_layers = [i for i in range(config.num_hidden_layers) if i not in dropped]
    kept_ffn = None
    if plan["ffn_keep"] < config.intermediate_size:
        scores = (ps.taylor_ffn_importance(model, batches) if batches is not None
                  else ps.magnitude_ffn_importance(model))
        kept_ffn = ps.keep_top(scores, plan["ffn_keep"])
    new_config = copy.deepcopy(config)
    new_config.intermediate_size = plan["ffn_keep"]
    new_config.num_hidden_layers = len(kept_layers)
    pruned = ps.rebuild(new_config, ps.pruned_state(model, kept_layers, kept_ffn))
    return pruned, {"importance": options.importance, "importance_samples": len(sample),
                    "layers": {"before": config.num_hidden_layers, "after": len(kept_layers), "dropped": dropped},
                    "ffn": {"before": config.intermediate_size, "after": plan["ffn_keep"]},
                    "heads": {"before": config.num_attention_heads, "after": config.num_attention_heads},
                    "params": {"before": ps.param_count(model), "after": ps.param_count(pruned)},
                    "encoder_params": {"before": _encoder_params(model), "after": _encoder_params(pruned)}}


def _encoder_params(model) -> int:
    return int(sum(p.numel() for p in model.base_model.encoder.parameters()))


def _sparsify(model, options: PruneOptions) -> dict:
    spec = parse_sparsity(options.sparsity)
    if spec is None:
        return {}
    masks = sparsity_masks(model, spec)
    apply_masks(model, masks)
    return masks


def _accuracy(model, rows: list[dict] | None, tokenizer, options: PruneOptions) -> float | None:
    if rows is None:
        return None
    logits, labels = _logits(model, rows, tokenizer, options.batch_size * 2)
    return round(float((logits.argmax(-1) == labels).float().mean()), 4)


def _logits(model, rows: list[dict], tokenizer, batch_size: int):
    """(logits, labels) of ``model`` on ``rows``, in the rows' order."""
    torch = require("torch")
    batches, order = _batches(tokenizer, rows, batch_size)
    model.eval()
    outs = []
    with torch.inference_mode():
        for b in progress.bar(batches, desc="logits", unit="batch"):
            outs.append(model(**{k: v for k, v in b.items() if k != "labels"}).logits.float())
    logits = torch.empty((len(rows), outs[0].shape[-1]))
    logits[torch.tensor(order)] = torch.cat(outs)
    return logits, torch.tensor([int(r["labels"]) for r in rows])


def _recover(model, teacher, tokenizer, rows: list[dict], masks: dict, options: PruneOptions, work: Path) -> dict | None:
    """Fine-tune ``model`` in place on (a seeded subset of) ``rows``; distil ``teacher``'s logits when asked."""
    if options.recover_epochs == 0:
        return None
    import random

    from .finetune import FinetuneOptions, _train, _trainer

    subset = rows
    if options.recover_samples is not None and options.recover_samples < len(rows):
        subset = random.Random(options.seed).sample(rows, options.recover_samples)
    if options.distill:
        teacher_logits, _ = _logits(teacher, subset, tokenizer, options.batch_size * 2)
        # labels carry [class id, teacher logits...]: the stock collator and Trainer pass them through untouched
        subset = [{**r, "labels": [float(r["labels"]), *t.tolist()]} for r, t in zip(subset, teacher_logits)]
    fopts = FinetuneOptions(epochs=options.recover_epochs, lr=options.lr, batch_size=options.batch_size,
                            max_length=options.max_length, seed=options.seed, group_by_length=True,
                            threads=options.threads)
    trainer = _trainer(model, tokenizer, subset, fopts, work)
    if options.distill:
        trainer.compute_loss_func = functools.partial(distill_loss, temperature=options.temperature,
                                                      weight=options.distill_weight)
    if masks:
        trainer.add_callback(KeepMasks(masks))
    result = _train(trainer, len(subset))
    model.eval()
    return {**result, "distill": options.distill, "temperature": options.temperature if options.distill else None}


def distill_loss(outputs, labels, num_items_in_batch=None, *, temperature: float, weight: float):
    """(1 - weight) * CE(student, label) + weight * T^2 * KL(teacher_T || student_T); labels = [id, teacher logits]."""
    functional = require("torch.nn.functional")
    logits = outputs.logits.float()
    ce = functional.cross_entropy(logits, labels[:, 0].long())
    kl = functional.kl_div(functional.log_softmax(logits / temperature, -1),
                           functional.log_softmax(labels[:, 1:].float() / temperature, -1),
                           log_target=True, reduction="batchmean")
    return (1 - weight) * ce + weight * kl * temperature * temperature


def _save(model, src: Path, folder: Path) -> None:
    from .finetune import _quiet

    with _quiet():
        model.save_pretrained(str(folder), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            (folder / name).write_bytes((src / name).read_bytes())
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o644)


def prune_stage(src, gate: TextDataset, train: TextDataset, scratch: Path, options: PruneOptions,
                bench_options, row: dict):
    """``optimize``'s prune stage: prune + recover ``src`` on ``train`` into ``scratch``; fill ``row`` with its
    accuracy and latency.

    ``options`` and ``bench_options`` are the run's own (``OptimizeOptions.prune`` and ``.bench``), unchanged.
    Accuracy is the pruned PyTorch model's on the ``gate`` dataset; latency is its PyTorch p50 with the
    run's bench settings, comparable to the baseline row.
    """
    from .bench import bench

    m = prune(src.path, train, scratch, options, eval_data=gate, prefix="--prune-")
    pruned = resolve(scratch)
    timing = bench(pruned, gate, bench_options)
    row.update(accuracy=m["accuracy"], original_accuracy=m["original_accuracy"], pruned_accuracy=m["pruned_accuracy"],
               latency_ms=timing["latency_ms"], backend=timing["backend"], params=m["params"], ffn=m["ffn"],
               layers=m["layers"], recovery=m["recovery"], prune_seconds=m["seconds"])
    recovered = f"recovered on {train.source}" if m["recovery"] else "no recovery"
    row["notes"] = (f"FFN {m['ffn']['before']}->{m['ffn']['after']}, blocks {m['layers']['before']}->"
                    f"{m['layers']['after']}, {recovered}; pruned fp32 ({timing['backend']}): accuracy "
                    f"{m['accuracy']:.4f} (before recovery {m['pruned_accuracy']:.4f}), "
                    f"p50 {timing['latency_ms']['p50']:.2f} ms")
    return pruned
