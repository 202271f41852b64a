"""Open the right runtime session and tokenizer for any artifact (HF folder, ONNX, engine)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Iterator

from .artifact import Artifact, resolve
from .atomic import discard, temp_sibling
from .errors import EdgekitError, ModelError, first_line
from .runtime.session import OrtSession, Session
from .runtime.tokenizer import TextEncoder


def session_for(artifact: Artifact | str | Path, threads: int | None = None, task: str | None = None,
                providers: list[str] | None = None) -> Session:
    """A not-yet-opened session for the artifact: PyTorch for HF folders, ONNX Runtime for ONNX."""
    art = artifact if isinstance(artifact, Artifact) else resolve(artifact)
    if art.kind == "hf":
        from .hf import TorchSession

        return TorchSession(art.path, task=task, threads=threads)
    if art.kind == "onnx":
        return OrtSession(art.model_file, threads=threads, providers=providers)
    from .runtime.trt import EngineSession  # noqa: PLC0415  (optional backend)

    return EngineSession(art.model_file)


def encoder_for(artifact: Artifact | str | Path, max_length: int | None = None) -> TextEncoder:
    """The artifact's tokenizer; an HF folder without tokenizer.json gets one converted by transformers."""
    art = artifact if isinstance(artifact, Artifact) else resolve(artifact)
    folder = art.folder
    if (folder / "tokenizer.json").is_file() or art.kind != "hf":
        return TextEncoder(folder, max_length)
    with fast_tokenizer_folder(folder) as converted:  # TextEncoder reads everything it needs here
        return TextEncoder(converted, max_length)


def check_same_tokenizer(encoder: TextEncoder, artifacts: dict[str, Artifact]) -> None:
    """A ModelError when an artifact's vocabulary is not ``encoder``'s: every session is fed that encoder's token
    ids, which index past a smaller vocabulary (an ONNX Runtime error) or mean other words to another model.
    An artifact with no tokenizer of its own (an engine folder without tokenizer.json) is not compared."""
    ours = encoder.vocabulary()
    for name, art in artifacts.items():
        try:
            theirs = encoder_for(art).vocabulary()
        except EdgekitError:  # no tokenizer files: nothing to compare against
            continue
        if theirs != ours:
            token = next((t for t in sorted(set(ours) | set(theirs)) if ours.get(t) != theirs.get(t)), None)
            raise ModelError(f"{name} '{art.path}' has another tokenizer",
                             f"token {token!r} is id {theirs.get(token)} there and {ours.get(token)} in the tokenizer "
                             f"its inputs are made with ({len(theirs)} and {len(ours)} tokens)",
                             "Compare artifacts made from the same model (each keeps its tokenizer files)")


@contextlib.contextmanager
def fast_tokenizer_folder(folder: Path) -> Iterator[Path]:
    """The folder's tokenizer saved as a fast tokenizer (tokenizer.json) in a temporary folder, removed after.

    The folder is ``$TMPDIR/.edgekit-tok.tmp-<pid>-*``: what a killed (SIGKILL) run left there is swept by the next.
    """
    from .deps import require

    transformers = require("transformers")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Model folder '{folder}' has no usable tokenizer", first_line(exc),
                         "Save the tokenizer with the model (tokenizer.save_pretrained)") from None
    specials = set(tok.all_special_tokens)
    if len(tok) <= len(specials):  # no vocabulary file: transformers builds one of the special tokens alone
        raise ModelError(f"Model folder '{folder}' has no tokenizer vocabulary",
                         f"no tokenizer.json, vocab.txt, vocab.json or sentencepiece model: the tokenizer made from "
                         f"it knows only its {len(tok)} special tokens, so every word would be unknown",
                         "Save the tokenizer with the model (tokenizer.save_pretrained)")
    tmp = temp_sibling(Path(tempfile.gettempdir()) / "edgekit-tok")
    try:
        tok.save_pretrained(str(tmp))
        if (folder / "config.json").is_file():
            (tmp / "config.json").write_bytes((folder / "config.json").read_bytes())
        yield tmp
    finally:
        discard(tmp)
