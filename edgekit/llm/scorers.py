"""The two sides a causal-LM gate compares, behind one small interface.

``ArtifactLM`` is the shipped runtime (:func:`edgekit.runtime.generate.load_generator`) plus, for logits, its
own ONNX Runtime loop engine. ``TorchLM`` is the original: transformers' model on PyTorch, KV cache on. Both
take the same token ids (tokenized by the artifact's tokenizer and chat template), so differences are the
model's, not the tokenizer's.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from ..atomic import write_file
from ..deps import require
from .validate import torch_greedy


class ArtifactLM:
    name = "artifact"

    def __init__(self, folder: str | Path, threads: int | None = None, engine: str = "auto"):
        from ..runtime.generate import load_generator  # noqa: PLC0415
        from ..runtime.generate_engines import OrtLoopEngine  # noqa: PLC0415

        self.generator = load_generator(folder, engine=engine, threads=threads)
        loop = self.generator.engine
        self._loop = loop if isinstance(loop, OrtLoopEngine) else None
        self._threads = threads

    def encode(self, messages) -> list[int]:
        return self.generator.encode(messages)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        return self.generator.generate_ids(ids, n)

    def decode(self, ids: list[int]) -> str:
        return self.generator.tokenizer.decode(ids, skip_special_tokens=True)

    def logits(self, ids: list[int]) -> np.ndarray:
        if self._loop is None:  # the genai engine exposes no full-sequence logits: open the ORT loop once
            from ..runtime.generate_engines import OrtLoopEngine  # noqa: PLC0415

            self._loop = OrtLoopEngine(self.generator.folder, self.generator.info, self._threads)
        return self._loop.forward(ids)


class MemoLM:
    """A side whose greedy answers are remembered: the gate's fallback trials score the same original again, and
    with ``store`` (a json file, e.g. in the step cache, keyed by the weights) so does the next run on the same
    model — the original's answers are most of a gate's time (12–19 min for SmolLM2 on 400 rows here)."""

    def __init__(self, lm, store: Path | None = None):
        self.lm, self.name, self._greedy, self.store = lm, lm.name, {}, store
        self.reused = self._added = 0  # reused: answers served from ``store`` (an earlier run), not this one's
        if store is not None and store.is_file():
            try:
                self._greedy = {(tuple(ids), n): list(out) for ids, n, out in json.loads(store.read_text())}
            except (ValueError, TypeError):
                self._greedy = {}  # a damaged file is recomputed, never trusted
        self._stored = set(self._greedy)

    def greedy(self, ids: list[int], n: int) -> list[int]:
        key = (tuple(ids), n)
        if key in self._greedy:
            self.reused += key in self._stored
        else:
            self._greedy[key] = self.lm.greedy(ids, n)
            self._added += 1
        return list(self._greedy[key])

    def save(self) -> None:
        """Write the answers to ``store`` (whole or not at all) when new ones were computed."""
        if self.store is None or not self._added:
            return
        with contextlib.suppress(OSError):
            self.store.parent.mkdir(parents=True, exist_ok=True)
            answers = [[list(ids), n, out] for (ids, n), out in self._greedy.items()]
            write_file(self.store, lambda partial: partial.write_text(json.dumps(answers)))
            self._added = 0

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.lm.logits(ids)


class TorchLM:
    name = "original"

    def __init__(self, folder: str | Path, threads: int | None = None, eos_ids: list[int] | None = None):
        torch = require("torch")
        transformers = require("transformers")
        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.eos_ids = list(eos_ids or [])

    def greedy(self, ids: list[int], n: int) -> list[int]:
        """Plain argmax, as the artifact decodes: ``generate()`` would apply generation_config.json's repetition
        penalty and the like to this side only (a penalty of 1.3 scored an exact fp32 export at 0.33 agreement)."""
        return torch_greedy(self.model, ids, n, stop_ids=self.eos_ids)[0]

    def logits(self, ids: list[int]) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            return self.model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
