"""The two engines behind :class:`~edgekit.runtime.generate.TextGenerator`: each turns prompt ids into a stream
of next-token ids. ``OrtLoopEngine`` is edgekit's own KV-cache loop over an ONNX Runtime session (numpy
sampling); ``GenaiEngine`` drives onnxruntime-genai's ``og.Generator`` on the same model.onnx.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..deps import require
from ..errors import BackendError, ModelError, first_line

ENGINES = ("ort", "genai")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bfloat16)": np.float32}


@dataclass(frozen=True)
class SamplingOptions:
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None
    min_new_tokens: int = 0  # genai engine: EOS suppressed until then (benchmarks); the ORT loop never stops itself


class Engine:
    name = "none"

    def tokens(self, ids: list[int], limit: int, opts: SamplingOptions) -> Iterator[int]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class OrtLoopEngine(Engine):
    """Prefill the prompt in one run, then one run per token feeding ``present.*`` back as ``past_key_values.*``."""

    name = "ort"

    def __init__(self, folder: Path, info, threads: int | None = None):
        ort = require("onnxruntime")
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001  (ORT raises its own exception types)
            raise ModelError(f"'{folder / 'model.onnx'}' cannot be loaded", first_line(exc),
                             "Re-create the artifact") from None
        self._ort = ort
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        if "input_ids" not in inputs or not self.past_names:
            raise ModelError(f"'{folder / 'model.onnx'}' has no KV-cache inputs", f"inputs: {', '.join(inputs)}",
                             "Export it with the KV cache: edgekit optimize MODEL --task text-generation")
        self.present_names = ["present." + n[len("past_key_values."):] for n in self.past_names]
        self.has_positions = "position_ids" in inputs
        self.has_mask = "attention_mask" in inputs
        self.dtype = _DTYPES.get(inputs[self.past_names[0]].type, np.float32)
        self.kv_shape = (info.kv_heads, info.head_dim)
        self.output_names = ["logits", *self.present_names]

    def forward(self, ids: list[int]) -> np.ndarray:
        """Logits ``[len(ids), vocab]`` of one pass over ``ids`` from an empty cache (perplexity, agreement)."""
        value = self._ort.OrtValue.ortvalue_from_numpy
        empty = np.zeros((1, self.kv_shape[0], 0, self.kv_shape[1]), dtype=self.dtype)
        feeds = {"input_ids": value(np.asarray([ids], dtype=np.int64)), **{n: value(empty) for n in self.past_names}}
        if self.has_mask:
            feeds["attention_mask"] = value(np.ones((1, len(ids)), dtype=np.int64))
        if self.has_positions:
            feeds["position_ids"] = value(np.arange(len(ids), dtype=np.int64)[None, :])
        return self.session.run_with_ort_values(["logits"], feeds)[0].numpy()[0]

    def tokens(self, ids: list[int], limit: int, opts: SamplingOptions) -> Iterator[int]:
        rng = np.random.default_rng(opts.seed)
        value = self._ort.OrtValue.ortvalue_from_numpy
        empty = np.zeros((1, self.kv_shape[0], 0, self.kv_shape[1]), dtype=self.dtype)
        past = {name: value(empty) for name in self.past_names}
        step = np.asarray([ids], dtype=np.int64)
        done = 0
        for _ in range(limit):
            total = done + step.shape[1]
            feeds = {"input_ids": value(step), **past}
            if self.has_mask:
                feeds["attention_mask"] = value(np.ones((1, total), dtype=np.int64))
            if self.has_positions:
                feeds["position_ids"] = value(np.arange(done, total, dtype=np.int64)[None, :])
            try:
                outs = self.session.run_with_ort_values(self.output_names, feeds)
            except Exception as exc:  # noqa: BLE001
                raise BackendError("ONNX Runtime failed while generating", first_line(exc), None) from None
            past = dict(zip(self.past_names, outs[1:], strict=True))
            tok = pick_token(outs[0].numpy()[0, -1], opts, rng)
            yield tok
            done = total
            step = np.asarray([[tok]], dtype=np.int64)


class GenaiEngine(Engine):
    """onnxruntime-genai's generator (its own KV-cache buffers and search) on the artifact's genai_config.json."""

    name = "genai"

    def __init__(self, folder: Path, info, threads: int | None = None):
        require("onnxruntime")  # load ORT first: onnxruntime-genai aborts the process when it cannot find it
        self.og = require("onnxruntime_genai")
        try:
            config = self.og.Config(str(folder))
            if threads:
                opts = {"intra_op_num_threads": int(threads), "inter_op_num_threads": 1}
                config.overlay(json.dumps({"model": {"decoder": {"session_options": opts}}}))
            self.model = self.og.Model(config)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"onnxruntime-genai cannot load '{folder}'", first_line(exc),
                             "Use engine='ort' or re-create the artifact") from None
        self.vocab = info.vocab_size

    def tokens(self, ids: list[int], limit: int, opts: SamplingOptions) -> Iterator[int]:
        og = self.og
        params = og.GeneratorParams(self.model)
        search = {"max_length": len(ids) + limit, "batch_size": 1, "min_length": len(ids) + opts.min_new_tokens}
        if opts.temperature > 0:
            search.update(do_sample=True, temperature=opts.temperature, top_p=opts.top_p,
                          top_k=min(opts.top_k, self.vocab) if opts.top_k else self.vocab)
            if opts.seed is not None:
                search["random_seed"] = int(opts.seed)
        else:
            search.update(do_sample=False, top_k=1)
        try:  # its failures are plain RuntimeErrors: a one-line BackendError, as the ORT engine's are
            params.set_search_options(**search)
            gen = og.Generator(self.model, params)
            gen.append_tokens(np.asarray([ids], dtype=np.int32))
            for _ in range(limit):
                if gen.is_done():
                    break
                gen.generate_next_token()
                token = int(gen.get_next_tokens()[0])
                yield token
        except RuntimeError as exc:
            raise BackendError("onnxruntime-genai failed to generate", first_line(exc, 300),
                               "Try engine='ort'") from None

    def close(self) -> None:
        self.model = None


def pick_token(logits: np.ndarray, opts: SamplingOptions, rng: np.random.Generator) -> int:
    """Greedy argmax at temperature 0; else temperature, top-k and top-p (nucleus) sampling with ``rng``."""
    if opts.temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / opts.temperature
    if 0 < opts.top_k < z.size:
        kth = np.partition(z, -opts.top_k)[-opts.top_k]
        z = np.where(z >= kth, z, -np.inf)
    order = np.argsort(-z)
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if opts.top_p < 1.0:
        keep = np.cumsum(p) - p < opts.top_p  # always keeps the most likely token
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    return int(order[rng.choice(p.size, p=p)])
