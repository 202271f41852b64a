"""Fine-tuned PyTorch / Hugging Face model -> ONNX, validated against the original on real inputs.

Uses ``torch.onnx.export(dynamo=True)`` (works on transformers 5.x; the
TorchScript exporter drifted by 9e-3 on padded batches) and optimum core's
``TasksManager`` for task inference and model classes. No optimum-onnx.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import progress
from .artifact import ONNX_NAME, Artifact, atomic_dir, copy_tokenizer_and_config, resolve, sha256_folder, write_manifest
from .data import load_dataset
from .deps import require
from .errors import ExportValidationError, InputError, ModelError, first_line
from .schema import opt
from .runtime.session import OrtSession
from .tasks import TASKS

BUILTIN_SENTENCES = [
    "a gripping, funny film that never lets up.",
    "one long string of cliches.",
    "the acting is superb, but the plot drags in the middle and the ending feels rushed.",
    "not bad",
    "I would not recommend this to anyone, even as a joke.",
    "an unexpectedly moving portrait of a family coming apart, told with restraint and wit.",
    "meh.",
    "the soundtrack is great",
]


@dataclass
class ExportOptions:
    """Options of ``export``; the CLI flags and recipe keys share these names."""

    opset: int = opt(18, help="ONNX opset of the export.")
    task: str | None = opt(None, help="Task (default: inferred from the model's architecture).")
    atol: float = opt(1e-4, help="Max |diff| allowed per output when the export is validated against PyTorch.",
                      flag="export-atol")
    validation_samples: int = opt(64, help="Real sentences of the data the export is validated on.",
                                  flag="export-samples")
    trust_remote_code: bool = opt(False, help="Run Python code shipped with the model (off by default).")

    def validate(self) -> None:
        """Before the model is loaded (``optimize`` calls it with its other options, before any step)."""
        if not 0 <= self.atol < float("inf"):  # NaN fails this too
            raise InputError(f"--atol must be a finite number >= 0, got {self.atol}",
                             "it bounds |diff| against PyTorch per output", "Use the default, 1e-4")
        if not 7 <= self.opset <= 23:
            raise InputError(f"Unsupported opset {self.opset}", "the exporter supports opsets 7 to 23",
                             "Pass --opset 17 or 18")
        if self.validation_samples < 1:
            raise InputError(f"--export-samples must be at least 1, got {self.validation_samples}",
                             "the export is validated on that many real sentences", "Use the default, 64")


def export(model: str | Path, out: str | Path, options: ExportOptions | None = None, data: str | Path | None = None,
           text_column: str | None = None, force: bool = False) -> Artifact:
    """Export an HF model folder to ``out/model.onnx`` with tokenizer and config beside it.

    Validates on ``data``'s sentences (or a built-in handful when None) and
    raises :class:`ExportValidationError` when any output differs beyond
    ``options.atol``; then nothing is written.
    """
    options = options or ExportOptions()
    options.validate()
    from .hf import fetch

    src = resolve(fetch(model))
    if src.kind != "hf":
        raise ModelError(f"'{model}' is not a Hugging Face model folder", f"it is a {src.kind} artifact",
                         "Pass the folder written by save_pretrained()")
    texts = _validation_texts(data, text_column, options.validation_samples)
    from .hf import load_model, model_input_names
    from .sessions import encoder_for

    torch_model, task = load_model(src.path, options.task, options.trust_remote_code)
    check_padding(torch_model.config, task)
    encoder = encoder_for(src)
    started = time.perf_counter()
    with atomic_dir(out, force, inputs=(model, src.path, data)) as tmp:
        input_names = model_input_names(torch_model, task)
        onnx_path = tmp / ONNX_NAME
        _torch_export(torch_model, task, input_names, encoder(texts[:2]), onnx_path, options.opset)
        validation = validate(torch_model, task, onnx_path, encoder, texts, options.atol)
        _save_tokenizer(src.path, tmp)
        write_manifest(tmp, "onnx", "export",
                       inputs={"model": str(src.path), "model_sha256": sha256_folder(src.path), "data": str(data) if data else None},
                       options=asdict(options),
                       extra={"task": task, "precision": "fp32", "input_names": input_names,
                              "output_names": list(TASKS[task].outputs), "validation": validation,
                              "seconds": round(time.perf_counter() - started, 2)})
    return resolve(out)


def _validation_texts(data, text_column, n) -> list[str]:
    if data is None:
        return list(BUILTIN_SENTENCES)
    ds = load_dataset(data, text_column=text_column, require_labels=False).subset(n)
    texts = ds.texts
    return texts if len(texts) >= 2 else texts + BUILTIN_SENTENCES[:2]


#: model types whose sequence classifier pools the last non-pad token, found through config.pad_token_id
LAST_TOKEN_POOLING = ("gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "phi", "opt")


def check_padding(config, task: str) -> None:
    """Refuse a last-token-pooling classifier without ``pad_token_id``: batched, it would read the wrong token."""
    if task == "text-classification" and config.model_type in LAST_TOKEN_POOLING and config.pad_token_id is None:
        raise ModelError(f"The {config.model_type} classifier has no pad_token_id",
                         "it pools the last non-pad token, which it finds through config.pad_token_id",
                         "Set tokenizer.pad_token = tokenizer.eos_token and model.config.pad_token_id = "
                         "tokenizer.pad_token_id before save_pretrained (edgekit finetune does this)")


class _OutputsOf:
    """Wraps a HF model so it takes the task's named input tensors and returns the task's outputs as a tuple.

    Only the inputs the model takes are passed (GPT-2, DistilBERT, RoBERTa and DeBERTa-v2 get no
    token_type_ids), so the graph has exactly ``input_names`` as inputs.
    """

    def __new__(cls, model, outputs, input_names):
        torch = require("torch")
        names = tuple(input_names)

        class Wrapper(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, input_ids, attention_mask=None, token_type_ids=None):
                given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
                result = self.model(**{k: v for k, v in given.items() if k in names and v is not None})
                return tuple(getattr(result, name) for name in outputs)

        return Wrapper()


def _torch_export(model, task, input_names, sample, path: Path, opset: int) -> None:
    torch = require("torch")
    spec = TASKS[task]
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=1, max=4096)
    kwargs = {k: torch.from_numpy(sample[k]) for k in input_names}
    dynamic = {k: {0: batch, 1: seq} for k in input_names}
    wrapper = _OutputsOf(model, spec.outputs, input_names)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapper, (), kwargs=kwargs, dynamo=True, dynamic_shapes=dynamic,
                                        input_names=input_names, output_names=list(spec.outputs),
                                        opset_version=opset, optimize=True, verbose=False)
            program.save(str(path), external_data=False)
    except Exception as exc:  # torch.export raises many internal types; all mean "not exportable"
        raise ModelError("ONNX export failed", first_line(exc, 300, typed=True),
                         "Try another --opset, or set EDGEKIT_DEBUG=1 to see the exporter's traceback") from exc


def validate(torch_model, task: str, onnx_path: Path, encoder, texts: list[str], atol: float,
             batch_size: int = 8) -> dict:
    """Compare ONNX Runtime with PyTorch on real, right-padded batches of mixed lengths. Raises on mismatch.

    Per-token outputs are compared at real tokens only; ``label_agreement`` is over examples (text
    classification) or real tokens (token classification), None for tasks without labels.
    """
    torch = require("torch")
    spec = TASKS[task]
    diffs = dict.fromkeys(spec.outputs, 0.0)
    agree = total = 0
    with OrtSession(onnx_path) as sess:
        for start in progress.bar(range(0, len(texts), batch_size), desc="validate export", unit="batch"):
            feeds = sess.feeds(encoder(texts[start:start + batch_size]))
            got = sess.run(feeds)
            with torch.inference_mode():
                ref = torch_model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            for name in spec.outputs:
                want = getattr(ref, name).float().numpy()
                diffs[name] = max(diffs[name], _masked_max_diff(got[name], want, feeds["attention_mask"]))
            if spec.metric is not None:
                first = spec.outputs[0]
                same = got[first].argmax(-1) == getattr(ref, first).float().numpy().argmax(-1)
                mask = feeds["attention_mask"].astype(bool) if spec.per_token else np.ones(len(same), bool)
                agree += int(same[mask].sum())
                total += int(mask.sum())
    agreement = agree / total if total else None
    failures = [(name, diff, atol) for name, diff in diffs.items() if not diff <= atol]
    if failures:
        raise ExportValidationError(failures, agreement)
    return {"samples": len(texts), "atol": atol, "max_abs_diff": diffs, "label_agreement": agreement}


def _masked_max_diff(got: np.ndarray, want: np.ndarray, mask: np.ndarray) -> float:
    """Max |diff|, ignoring padded positions of per-token outputs (their values are arbitrary)."""
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if diff.ndim >= 2 and diff.shape[:2] == mask.shape:
        diff = diff[mask.astype(bool)]
    return float(diff.max()) if diff.size else 0.0


def _save_tokenizer(src: Path, dst: Path) -> None:
    """Config and tokenizer files beside the ONNX; a fast tokenizer.json is made when the folder lacks one."""
    copy_tokenizer_and_config(src, dst)
    if not (dst / "tokenizer.json").is_file():
        from .sessions import fast_tokenizer_folder

        with fast_tokenizer_folder(src) as converted:
            copy_tokenizer_and_config(converted, dst)
