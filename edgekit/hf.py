"""Hugging Face model folders: task inference, safe loading, and a PyTorch session."""

from __future__ import annotations

import inspect
import json
import warnings
from pathlib import Path

import numpy as np

from .deps import require
from .errors import InputError, ModelError, first_line
from .runtime.session import Session, check_threads
from .tasks import TASKS


def infer_task(folder: Path, task: str | None = None) -> str:
    """The optimum task name for a model folder (from its config's architecture)."""
    if task is not None:
        if task not in TASKS:
            raise InputError(f"Unsupported task '{task}'", None, f"Choose one of: {', '.join(TASKS)}")
        _check_head(folder, task)
        return task
    config = _config(folder)
    archs = config.get("architectures") or []
    transformers = require("transformers")
    tasks_manager = require("optimum.exporters.tasks").TasksManager
    for arch in archs:
        cls = getattr(transformers, arch, None)
        if cls is None:
            continue
        try:
            inferred = tasks_manager.infer_task_from_model(cls)
        except (KeyError, ValueError, RuntimeError):
            continue
        if inferred in TASKS:
            return inferred
    raise ModelError(f"Cannot infer the task of '{folder}'",
                     f"architectures {archs or 'missing'} map to no supported task",
                     f"Pass --task, one of: {', '.join(TASKS)}")


def _check_head(folder: Path, task: str) -> None:
    """Refuse a --task whose head the model was not trained with (a *ForSequenceClassification loaded as a token
    classifier reuses its classifier weights per token and drops the pooler: an artifact that exports, validates
    against itself and is wrong). feature-extraction (the encoder alone) suits every model."""
    from .tasks import ARCHITECTURE_SUFFIXES  # noqa: PLC0415

    if task == "feature-extraction" or not (folder / "config.json").is_file():
        return
    archs = _config(folder).get("architectures") or []
    trained = {t for a in archs if isinstance(a, str) for s, t in ARCHITECTURE_SUFFIXES.items() if a.endswith(s)}
    if trained and task not in trained:
        raise InputError(f"--task {task} does not match '{folder}'",
                         f"it was saved as {', '.join(archs)}, a {' / '.join(sorted(trained))} head that does not "
                         f"fit {task}", f"Drop --task, or pass --task {sorted(trained)[0]}")


def load_model(folder: str | Path, task: str | None = None, trust_remote_code: bool = False):
    """Load a model folder for ``task`` with optimum's task -> class table. Returns (model, task)."""
    folder = Path(folder)
    task = infer_task(folder, task)
    require("torch")
    tasks_manager = require("optimum.exporters.tasks").TasksManager
    model_class = tasks_manager.get_model_class_for_task(task)
    require("transformers").utils.logging.disable_progress_bar()
    if trust_remote_code:
        warnings.warn(f"--trust-remote-code: loading '{folder}' runs the Python code shipped in it", stacklevel=2)
    check_weights_safe(folder)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = model_class.from_pretrained(str(folder), trust_remote_code=trust_remote_code,
                                                use_safetensors=_has_safetensors(folder) or None)
    except Exception as exc:  # safetensors, pickle, config and hub errors have many types; all mean "cannot load"
        first = first_line(exc, 300)
        fix = ("The model ships its own code (auto_map in config.json): pass --trust-remote-code only if you "
               "trust it" if _config(folder).get("auto_map") and not trust_remote_code
               else "Check that the folder is a complete save_pretrained() output")
        raise ModelError(f"Cannot load model '{folder}' for {task}", f"{type(exc).__name__}: {first}", fix) from None
    model.eval()
    return model, task


def check_weights_safe(folder: Path) -> None:
    """Refuse pickle checkpoints that could run code when loaded; safetensors are always preferred.

    When the folder has ``*.safetensors`` only those are read. Otherwise every
    ``pytorch_model*.bin`` (the weights and their shards; other files such as
    ``training_args.bin`` are never loaded) is inspected without unpickling it: a zip checkpoint
    (torch >= 1.6) may reference only the globals that
    ``torch.load(weights_only=True)`` allows (tensors, storages, plain
    containers); anything else (``os.system``, a custom class) is refused. The
    legacy pre-1.6 format cannot be inspected and is refused too. transformers
    then loads it with ``weights_only=True`` as a second line of defence.
    """
    if _has_safetensors(folder):
        return
    import zipfile

    for ckpt in sorted(folder.glob("pytorch_model*.bin")):  # the weights transformers loads (and their shards)
        fix = (f"Convert it to safetensors in a trusted environment (model.save_pretrained(..., "
               f"safe_serialization=True)), or remove '{ckpt.name}'")
        if not zipfile.is_zipfile(ckpt):
            raise ModelError(f"Checkpoint '{ckpt}' is not a zip torch checkpoint", "edgekit cannot inspect legacy or "
                             "unknown pickle files, and unpickling them can run arbitrary code", fix)
        serialization = require("torch.serialization")
        try:
            unsafe = serialization.get_unsafe_globals_in_checkpoint(str(ckpt))
        except Exception as exc:  # a corrupt zip or pickle: torch raises several types
            raise ModelError(f"Checkpoint '{ckpt}' cannot be read", " ".join(str(exc).split())[:200] or
                             type(exc).__name__, "Restore the file from the original model") from None
        if unsafe:
            raise ModelError(f"Checkpoint '{ckpt}' is refused: its pickle references code, not only tensors",
                             f"non-allowed globals {', '.join(sorted(unsafe)[:5])}; loading it could run that code",
                             fix)


def model_input_names(model, task: str = "text-classification") -> list[str]:
    """The inputs the task's entry says this model takes (from its config and its forward's parameters)."""
    params = set(inspect.signature(model.forward).parameters)
    return TASKS[task].inputs(model.config.to_dict(), params)


def label2id_of(folder: Path) -> dict[str, int]:
    config = _config(folder)
    mapping = config.get("label2id") or {}
    if not mapping and config.get("id2label"):
        mapping = {v: int(k) for k, v in config["id2label"].items()}
    return {str(k): int(v) for k, v in mapping.items()}


class TorchSession(Session):
    """PyTorch eager inference on CPU for an HF folder: the baseline every artifact is compared to."""

    backend = "pytorch"

    def __init__(self, folder: str | Path, task: str | None = None, threads: int | None = None,
                 trust_remote_code: bool = False):
        self.folder = Path(folder)
        self.task = task
        check_threads(threads)
        self.threads = threads
        self.trust_remote_code = trust_remote_code
        self.model = None
        self.input_names: list[str] = []
        self.output_names: list[str] = []

    def open(self) -> "TorchSession":
        if self.model is not None:
            return self
        torch = require("torch")
        if self.threads:
            torch.set_num_threads(int(self.threads))
        self.model, self.task = load_model(self.folder, self.task, self.trust_remote_code)
        self.input_names = model_input_names(self.model, self.task)
        self.output_names = list(TASKS[self.task].outputs)
        return self

    def close(self) -> None:
        self.model = None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = require("torch")
        self.open()
        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v) for k, v in self.feeds(feeds).items()})
        return {name: getattr(out, name).float().numpy() for name in self.output_names}


def _config(folder: Path) -> dict:
    try:
        config = json.loads((folder / "config.json").read_text())
        if not isinstance(config, dict):
            raise ValueError(f"it holds a JSON {type(config).__name__}, not an object")
        return config
    except FileNotFoundError:
        raise ModelError(f"'{folder}' is not a Hugging Face model folder", "config.json is missing",
                         "Pass a folder written by save_pretrained()") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"config.json in '{folder}' cannot be read", str(exc)[:200],
                         "Restore the file from the original model") from None


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


def fetch(model: str | Path, revision: str | None = None) -> Path:
    """A local folder for ``model``: the path itself, or a snapshot of a hub id (``org/name``)."""
    path = Path(model)
    if path.exists() or str(model).startswith((".", "/", "~")) or str(model).count("/") != 1:
        return path
    hub = require("huggingface_hub")
    try:
        return Path(hub.snapshot_download(str(model), revision=revision,
                                          allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as exc:  # hub errors have many types (offline, gated, not found)
        raise ModelError(f"Model '{model}' is not a local folder and could not be fetched from the hub",
                         first_line(exc, typed=True),
                         "Pass a local model folder, or check the name and network") from None
