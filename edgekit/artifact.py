"""What a step produces: a directory of files plus ``manifest.json``.

Every step writes into a temporary sibling of its output directory and renames
it into place only on success, so an interrupted or failed step never leaves a
half-written artifact. A manifest marks a directory as a complete edgekit
artifact; an existing directory without one is never overwritten without
``force``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterator

from .atomic import discard, finished, signals_held, temp_sibling
from .errors import InputError, ModelError

MANIFEST = "manifest.json"
ONNX_NAME = "model.onnx"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "merges.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
TRACKED_PACKAGES = ("edgekit", "torch", "transformers", "optimum", "onnx", "onnxruntime", "onnxruntime-gpu",
                    "onnxscript", "tokenizers", "numpy", "tensorrt", "tensorrt-rtx", "tensorrt_rtx")


@dataclass
class Artifact:
    """A model on disk: ``kind`` is 'hf' (PyTorch folder), 'onnx' or 'engine'."""

    path: Path
    kind: str
    model_file: Path | None = None
    manifest: dict = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent


def resolve(path: str | Path) -> Artifact:
    """Identify what ``path`` holds, or raise a one-line ModelError (also for a corrupt or truncated ONNX)."""
    art = _identify(Path(path))
    if art.kind == "onnx":
        check_integrity(art)
    return art


def _identify(p: Path) -> Artifact:
    if not p.exists():
        raise ModelError(f"Model '{p}' not found", "no such file or directory",
                         "Pass a Hugging Face model folder, an ONNX file or folder, or an engine")
    manifest = read_manifest(p if p.is_dir() else p.parent)
    if p.is_file():
        if p.suffix == ".onnx":
            return Artifact(p, "onnx", p, manifest)
        if p.suffix in ENGINE_SUFFIXES:
            return Artifact(p, "engine", p, manifest)
        raise ModelError(f"Model file '{p}' has an unknown type '{p.suffix}'", "expected .onnx or .engine/.plan",
                         "Pass a model folder or an ONNX/engine file")
    if (p / ONNX_NAME).is_file():
        return Artifact(p, "onnx", p / ONNX_NAME, manifest)
    engines = sorted(x for x in p.iterdir() if x.suffix in ENGINE_SUFFIXES)
    weights = [x for x in p.iterdir() if x.name.endswith((".safetensors", ".bin")) or x.name.endswith(".index.json")]
    if engines and not weights:  # an engine folder (build/optimize copy config.json and the tokenizer beside it)
        return Artifact(p, "engine", engines[0], manifest)
    if (p / "config.json").is_file():
        if not weights and manifest.get("edgekit_artifact") in ("onnx", "engine"):  # an artifact that lost its model
            raise ModelError(f"Artifact '{p}' is missing its model file", f"its manifest.json describes an "
                             f"{manifest['edgekit_artifact']} artifact, but no {ONNX_NAME} or engine is there",
                             "Re-run the step that made it, or restore the file")
        if not weights:
            raise ModelError(f"Model folder '{p}' has no weights", "config.json is there but no *.safetensors or *.bin",
                             "Save the model with save_pretrained() or copy its weight files")
        return Artifact(p, "hf", None, manifest)
    contents = ", ".join(sorted(x.name for x in p.iterdir())[:6]) or "nothing"
    raise ModelError(f"'{p}' is not a model folder", f"it holds {contents}; expected config.json with weights, or model.onnx",
                     "Pass a Hugging Face model folder (save_pretrained output) or an edgekit artifact")


_VERIFIED: set[tuple[str, int, int]] = set()  # (path, size, mtime) of model files already checked here


def check_integrity(art: Artifact) -> None:
    """Refuse a model file that its manifest says is different (truncated, corrupt, edited), or an unreadable ONNX.

    An edgekit artifact is checked against the sha256 in its manifest; an ONNX
    without one is parsed (when the onnx package is installed). Each file is
    checked once per process while its size and mtime stay the same.
    """
    f = art.model_file
    if f is None:
        return
    st = f.stat()
    memo = (str(f.resolve()), st.st_size, st.st_mtime_ns)
    if memo in _VERIFIED:
        return
    files = art.manifest.get("files")
    recorded = files.get(f.name) if isinstance(files, dict) and f.parent == art.folder else None
    if recorded is not None:
        if sha256_file(f) != recorded:
            raise ModelError(f"Model file '{f}' is corrupt or truncated",
                             f"its sha256 differs from the one recorded in {MANIFEST} when edgekit wrote it",
                             "Re-run the step that made it, or delete manifest.json to use the file as it is")
    elif f.suffix == ".onnx":
        _parse_onnx(f)
    _VERIFIED.add(memo)


def _parse_onnx(f: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("onnx") is None:
        return  # a runtime-only install: ONNX Runtime reports a bad file when it loads it
    import onnx

    try:
        model = onnx.load(str(f), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        why = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelError(f"ONNX model '{f}' cannot be read", f"it is corrupt, truncated or not ONNX ({why})",
                         "Re-export it with edgekit export") from None
    if not model.graph.node:
        raise ModelError(f"ONNX model '{f}' has an empty graph", "the file is empty or truncated",
                         "Re-export it with edgekit export")


def read_manifest(folder: Path) -> dict:
    """The folder's manifest.json, or {} when it is missing, not JSON or not a JSON object (as if absent)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_folder(folder: Path, names: tuple[str, ...] | None = None) -> str:
    """One hash over the files of a folder (sorted by name; manifests excluded)."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name != MANIFEST and (names is None or f.name in names):
            h.update(f.name.encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def write_manifest(folder: Path, kind: str, step: str, inputs: dict, options: dict, extra: dict | None = None) -> dict:
    """Write ``manifest.json``: the record that marks ``folder`` as a complete artifact."""
    files = {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST}
    manifest = {
        "edgekit_artifact": kind,
        "step": step,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "inputs": inputs,
        "options": options,
        "files": files,
        "versions": versions(),
        "platform": {"machine": platform.machine(), "system": platform.system()},
    }
    manifest.update(extra or {})
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return manifest


def check_output_dir(out: Path, force: bool = False, inputs: tuple = (), kind: str | None = None) -> None:
    """Refuse an OUT that is a file, a non-empty folder edgekit did not write (unless ``force``), or one that is or
    holds one of ``inputs`` (local paths; others, such as hub ids or datasets in memory, are skipped): the result
    replaces OUT whole, so the input would be lost, ``force`` or not."""
    target = out.resolve()
    for given in inputs:
        if not isinstance(given, (str, os.PathLike)) or not Path(given).exists():
            continue
        source = Path(given).resolve()
        if target == source or target in source.parents:
            raise InputError(f"Output '{out}' would replace the input '{given}'",
                             "the result replaces --out as a whole, and the input "
                             f"{'is that path' if target == source else 'lies inside it'}",
                             "Choose an --out outside the input")
    if out.exists() and not out.is_dir():
        raise InputError(f"Output '{out}' is a file", "an output directory is needed",
                         "Pass a new or empty directory for --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file() and not force:
        raise InputError(f"Output '{out}' is a non-empty folder that edgekit did not write",
                         "refusing to replace files edgekit does not own", "Choose another --out or pass --force")
    held = read_manifest(out).get("edgekit_artifact") if out.is_dir() else None
    if kind and held and held != kind and not force:  # e.g. a report written over an optimized model
        raise InputError(f"Output '{out}' holds an edgekit {held} artifact", f"this run writes a {kind}, which would "
                         "replace it", "Choose another --out or pass --force")
    parent = out.resolve().parent
    if not parent.exists():
        with contextlib.suppress(OSError):
            parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise InputError(f"Output '{out}' cannot be written", f"the folder '{parent}' is not writable",
                         "Choose a writable --out")


@contextlib.contextmanager
def atomic_dir(out: str | Path, force: bool = False, inputs: tuple = (), kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of ``out``; on success it replaces ``out`` in one rename.

    On any exception (including KeyboardInterrupt, and SIGTERM through the
    CLI) the temporary folder is removed and ``out`` is left as it was; a
    signal landing before the ``try`` below is in force is covered by
    :mod:`edgekit.atomic`'s registry. The temporary name carries the writer's
    pid, so what a killed (SIGKILL) run left behind is removed by the next
    write of ``out``. ``inputs``: the run's input paths, which ``out`` must not be or hold; ``kind``: what this
    run writes, which an existing edgekit folder of another kind is not replaced by without ``force``.
    """
    out = Path(out)
    check_output_dir(out, force, inputs, kind)
    parent = out.resolve().parent
    try:
        tmp = temp_sibling(out)
    except OSError as exc:
        raise InputError(f"Output '{out}' cannot be written", exc.strerror, "Choose a writable --out") from None
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        with signals_held():  # both renames or neither: a signal between them would leave no ``out``
            old = parent / f".{out.name}.old-{os.getpid()}" if out.exists() else None
            if old is not None:
                out.rename(old)
            try:
                tmp.rename(out)
            except OSError:
                if old is not None:
                    old.rename(out)  # put the previous output back
                raise
            finished(tmp)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        discard(tmp)
        raise


#: below this much free space, an unexplained failure while writing is reported as a full disk
LOW_SPACE_BYTES = 256 << 20


def disk_trouble(folders: list[Path]) -> str | None:
    """Why writing may have failed here: a file-size limit on this process, or a nearly full disk; else None.

    Libraries that write from C++ (ONNX Runtime, protobuf) report a full disk
    as a parse or serialization error, not as ENOSPC; this names the cause.
    """
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        if soft != resource.RLIM_INFINITY:
            return f"this process may not write files larger than {soft} bytes (ulimit -f)"
    except (ImportError, OSError, ValueError):
        pass
    for folder in folders:
        with contextlib.suppress(OSError):
            st = os.statvfs(folder)
            free = st.f_bavail * st.f_frsize
            if free < LOW_SPACE_BYTES:
                return f"the disk holding '{folder}' has only {free / 1e6:.1f} MB free"
    return None


def copy_tokenizer_and_config(src: Path, dst: Path) -> None:
    """Copy config.json and the tokenizer files that exist in ``src`` into ``dst``."""
    for name in ("config.json", *TOKENIZER_FILES):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)
