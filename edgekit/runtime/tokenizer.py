"""Tokenization for the runtime: the ``tokenizers`` library over ``tokenizer.json``.

No transformers import: a device app tokenizes exactly as the fast tokenizer
the model was trained with, from the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError, ModelError, first_line

DEFAULT_MAX_LENGTH = 512


class TextEncoder:
    """Texts -> ``{input_ids, attention_mask, token_type_ids}`` int64 arrays.

    Pads to the longest text in the batch, but to at least ``min_length``
    (an engine profile's shortest sequence), or to ``pad_to`` when given, and
    truncates each text to ``max_length`` tokens (None = the model's limit).
    Thread-safe: the tokenizer is configured here once and only read by
    ``__call__`` (``encode_batch`` takes no mutable borrow).
    """

    def __init__(self, folder: str | Path, max_length: int | None = None, min_length: int = 1):
        from ..deps import require

        tokenizers = require("tokenizers")
        folder = Path(folder)
        self.folder = folder
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise ModelError(f"Artifact '{folder}' is missing tokenizer.json",
                             "the runtime tokenizes with the tokenizers library from that file",
                             "Copy tokenizer.json from the original model folder (edgekit export does this)")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception on parse errors
            raise ModelError(f"Tokenizer '{path}' cannot be read", first_line(exc),
                             "Copy a valid tokenizer.json from the original model") from None
        self.max_length = max_length or model_max_length(folder)
        self.min_length = max(1, min(int(min_length), self.max_length))
        self._tok.no_padding()
        self._tok.no_truncation()
        self._tok.enable_truncation(self.max_length)
        self.pad_id = self._pad_id(folder)

    def _pad_id(self, folder: Path) -> int:
        """The id the model treats as padding: config.json's ``pad_token_id`` first (GPT-2 classifiers find
        their last real token by it, so the tokenizer must pad with exactly that id), then the tokenizer's
        pad token, then ``[PAD]``/``<pad>``, then the end-of-text token, then 0."""
        config = _read_json(folder / "config.json")
        if isinstance(config.get("pad_token_id"), int) and not isinstance(config["pad_token_id"], bool):
            return int(config["pad_token_id"])
        token = _read_json(folder / "tokenizer_config.json").get("pad_token")
        if isinstance(token, dict):
            token = token.get("content")
        for candidate in (token, "[PAD]", "<pad>"):
            if candidate and self._tok.token_to_id(candidate) is not None:
                return self._tok.token_to_id(candidate)
        eos = config.get("eos_token_id")
        return int(eos) if isinstance(eos, int) else 0

    def vocabulary(self) -> dict[str, int]:
        """Token -> id, added tokens included: two encoders with equal vocabularies give the same ids."""
        return self._tok.get_vocab(with_added_tokens=True)

    def encodings(self, texts: list[str], pairs: list[str] | None = None) -> list:
        """The tokenizers ``Encoding`` of each text, truncated (``ids``, ``offsets``, ``special_tokens_mask``)."""
        return self._encode(texts, pairs)

    def tokens_text(self, ids: list[int]) -> str:
        """Tokens back to text as the tokenizer's decoder joins them (the pipeline's ``word`` of an entity)."""
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_lengths(self, texts: list[str], pairs: list[str] | None = None) -> list[int]:
        return [len(e.ids) for e in self._encode(texts, pairs)]

    def _encode(self, texts, pairs):
        if pairs is not None:
            return self._tok.encode_batch(list(zip(texts, pairs)))
        return self._tok.encode_batch(list(texts))

    def __call__(self, texts: list[str], pairs: list[str] | None = None, pad_to: int | None = None) -> dict[str, np.ndarray]:
        encs = self._encode(texts, pairs)
        length = max(max((len(e.ids) for e in encs), default=0), self.min_length if encs else 0)
        if pad_to is not None:
            length = pad_to
        ids = np.full((len(encs), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), length), dtype=np.int64)
        types = np.zeros((len(encs), length), dtype=np.int64)
        for i, e in enumerate(encs):
            n = min(len(e.ids), length)
            ids[i, :n] = e.ids[:n]
            mask[i, :n] = 1
            types[i, :n] = e.type_ids[:n]
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def model_max_length(folder: Path) -> int:
    """The longest input the model takes: the smaller of the tokenizer's and the position table's."""
    limits = [DEFAULT_MAX_LENGTH]
    tok_max = _read_json(folder / "tokenizer_config.json").get("model_max_length")
    if isinstance(tok_max, (int, float)) and 0 < tok_max < 1_000_000:
        limits.append(int(tok_max))
    limits += positions(_read_json(folder / "config.json"))
    return min(limits)


def positions(config: dict) -> list[int]:
    """The sizes a model config gives its position table (BERT-likes; GPT-2's n_positions and n_ctx); [] when it
    names none."""
    return [config[k] for k in ("max_position_embeddings", "n_positions", "n_ctx")
            if isinstance(config.get(k), int) and not isinstance(config[k], bool) and config[k] > 0]


def check_max_length(folder: Path, max_length: int, flag: str = "--max-length") -> None:
    """Refuse a token budget longer than the model's position table (rows that long failed deep in the model's
    forward pass with a RuntimeError traceback, after loading everything)."""
    table = positions(read_config(folder))
    if table and max_length > min(table):
        raise InputError(f"{flag} {max_length} is longer than the model's {min(table)} positions",
                         "rows that long cannot go through it", f"Pass {flag} {min(table)} or less")


def check_unicode(text: str, what: str) -> None:
    """An InputError for a string that is not valid Unicode (a lone surrogate), which the tokenizer refuses with a
    TypeError that names nothing useful."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid Unicode", f"{exc.reason} at character {exc.start}",
                         "Decode the input with errors='replace', or drop the lone surrogate") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def read_config(folder: Path) -> dict:
    return _read_json(folder / "config.json")
