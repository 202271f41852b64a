"""A decoder graph with a KV cache on ONNX Runtime, and a greedy loop over it: numpy + onnxruntime only.

The graph follows onnxruntime-genai's model-builder convention, which
edgekit's dynamo exporter copies: inputs ``input_ids``, ``attention_mask``,
optionally ``position_ids``, and ``past_key_values.{i}.key/value`` shaped
``[batch, kv_heads, past_len, head_dim]``; outputs ``logits`` and
``present.{i}.key/value`` shaped ``[batch, kv_heads, past_len + seq, head_dim]``.
The attention mask covers past and new tokens (``[batch, past_len + seq]``).

Used by export validation, quantization's agreement measurement and the
torch-free runtime, so it must not import torch or transformers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PAST_PATTERN = "past_key_values.{i}.{kv}"
PRESENT_PATTERN = "present.{i}.{kv}"
_PAST_RE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(bfloat16)": np.float32}


@dataclass
class GreedyResult:
    """The generated token ids (prompt excluded) and, when asked for, the logits that chose each one."""

    tokens: list[int]
    logits: list[np.ndarray] = field(default_factory=list)


class DecoderSession:
    """One ONNX Runtime session over a KV-cache decoder graph, with its cache layout read from the graph."""

    def __init__(self, model_path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 head_dim: int | None = None):
        """``head_dim`` is read from the graph, else from ``genai_config.json`` beside it (the builder leaves the
        last cache axis symbolic), unless given."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        self.path = Path(model_path)
        self.session = ort.InferenceSession(str(self.path), options, providers=providers or ["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = list(inputs)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.past_names = sorted((n for n in inputs if _PAST_RE.match(n)),
                                 key=lambda n: (int(_PAST_RE.match(n).group(1)), n.endswith("value")))
        self.num_layers = len(self.past_names) // 2
        first = inputs[self.past_names[0]] if self.past_names else None
        self.kv_heads = _static(first.shape[1]) if first else 0
        self.head_dim = head_dim or (_static(first.shape[3]) if first else 0) or _genai_head_size(self.path)
        self.kv_dtype = _NP_TYPES.get(first.type, np.float32) if first else np.float32
        self.ids_dtype = _NP_TYPES.get(inputs["input_ids"].type, np.int64)
        self.mask_dtype = _NP_TYPES.get(inputs["attention_mask"].type, np.int64) if "attention_mask" in inputs else None
        self.has_position_ids = "position_ids" in inputs

    def feeds(self, ids: np.ndarray, attention_mask: np.ndarray, past: dict[str, np.ndarray]) -> dict:
        """The session's inputs for ``ids`` after ``past`` (position ids follow from ``attention_mask``)."""
        feeds = {"input_ids": ids.astype(self.ids_dtype, copy=False)}
        if self.mask_dtype is not None:
            feeds["attention_mask"] = attention_mask.astype(self.mask_dtype, copy=False)
        if self.has_position_ids:
            positions = np.cumsum(attention_mask, axis=1) - 1
            positions = np.where(attention_mask == 0, 1, positions)[:, -ids.shape[1]:]
            feeds["position_ids"] = positions.astype(self.ids_dtype, copy=False)
        feeds.update(past)
        return feeds

    def empty_cache(self, batch: int = 1) -> dict[str, np.ndarray]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return {name: np.zeros(shape, dtype=self.kv_dtype) for name in self.past_names}

    def forward(self, ids: np.ndarray, attention_mask: np.ndarray,
                past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run ``ids`` ``[batch, seq]`` after ``past``; return logits ``[batch, seq, vocab]`` and the new cache.

        ``attention_mask`` is ``[batch, past_len + seq]`` (1 = real token,
        0 = left padding); position ids follow from it.
        """
        outputs = self.session.run(None, self.feeds(ids, attention_mask, past))
        named = dict(zip(self.output_names, outputs))
        present = {past_name: named[_present_name(past_name)] for past_name in self.past_names}
        return named["logits"], present


def greedy(decoder: DecoderSession, prompt_ids: list[int], max_new_tokens: int, eos_ids: tuple[int, ...] = (),
           keep_logits: bool = False) -> GreedyResult:
    """Greedy decoding of one prompt: one prefill, then one token per step with the KV cache."""
    ids = np.asarray([prompt_ids], dtype=np.int64)
    mask = np.ones_like(ids)
    past = decoder.empty_cache(1)
    result = GreedyResult([])
    for _ in range(max_new_tokens):
        logits, past = decoder.forward(ids, mask, past)
        last = logits[0, -1].astype(np.float32)
        token = int(np.argmax(last))
        result.tokens.append(token)
        if keep_logits:
            result.logits.append(last)
        if token in eos_ids:
            break
        ids = np.asarray([[token]], dtype=np.int64)
        mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
    return result


def agreement(reference: list[int], candidate: list[int]) -> float:
    """Fraction of the reference's greedy tokens matched before the first divergence (1.0 = identical)."""
    if not reference:
        return 1.0
    same = 0
    for a, b in zip(reference, candidate):
        if a != b:
            break
        same += 1
    return same / len(reference)


def _present_name(past_name: str) -> str:
    m = _PAST_RE.match(past_name)
    return PRESENT_PATTERN.format(i=m.group(1), kv=m.group(2))


def _genai_head_size(model_path: Path) -> int:
    import json

    try:
        config = json.loads((model_path.parent / "genai_config.json").read_text())
        return int(config["model"]["decoder"]["head_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _static(dim) -> int:
    return dim if isinstance(dim, int) else 0
