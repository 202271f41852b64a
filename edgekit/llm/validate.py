"""Compare a KV-cache ONNX decoder with the PyTorch model on real prompts: greedy tokens and logits.

Both sides decode greedily with their own KV cache (PyTorch: a DynamicCache
step loop; ONNX: :func:`edgekit.llm.loop.greedy`), so the comparison covers
prefill and cached decode steps alike.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .. import progress
from ..deps import require
from ..errors import EdgekitError, ExportValidationError, InputError
from .loop import DecoderSession, agreement, greedy

#: real prompts of varied shape (question, instruction, continuation, list); the chat template is applied when present
PROMPTS = (
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain in one sentence why the sky is blue.",
    "List three fruits that are red.",
    "Translate 'good morning' into Spanish.",
    "Is this movie review positive or negative? 'A gripping, funny film that never lets up.'",
    "What is 12 plus 7?",
    "Give me a tip for sleeping better.",
    "Who wrote Romeo and Juliet?",
    "Summarize: The meeting was moved from Monday to Wednesday because the projector was broken.",
)


class LMValidationError(ExportValidationError):
    """The exported decoder's greedy tokens or logits differ from PyTorch's."""

    def __init__(self, what: str, why: str, fix: str):
        self.failures = []
        EdgekitError.__init__(self, what, why, fix)


def encode_prompts(tokenizer, prompts: tuple[str, ...] | list[str]) -> list[list[int]]:
    """Token ids of each prompt, through the chat template when the tokenizer has one."""
    out = []
    for prompt in prompts:
        if getattr(tokenizer, "chat_template", None):
            ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        else:
            ids = tokenizer(prompt)["input_ids"]
        out.append([int(i) for i in ids])
    return out


def check_token_budget(folder: Path, prompts: tuple[str, ...], tokens: int, flag: str) -> None:
    """Refuse ``tokens`` greedy tokens after the longest prompt when they pass the model's context: PyTorch failed
    mid-validation with an IndexError traceback (GPT-2's position table), the builder's graph with one about its
    cos_cache (a Llama's), after the export's minutes."""
    from ..runtime.tokenizer import positions, read_config  # noqa: PLC0415

    table = positions(read_config(folder))
    if not table:
        return
    transformers = require("transformers")
    longest = max(map(len, encode_prompts(transformers.AutoTokenizer.from_pretrained(str(folder)),
                                          tuple(prompts) or PROMPTS)))
    if longest + tokens > min(table):
        room = min(table) - longest
        raise InputError(f"{flag} {tokens} after a prompt of {longest} tokens passes the model's context of "
                         f"{min(table)} tokens", "every validation prompt is continued by that many greedy tokens",
                         f"Pass {flag} {room} or less" if room >= 1 else "Pass shorter prompts")


def load_causal_lm(folder: Path):
    """(model, tokenizer) in fp32 eval mode, without transformers' progress bars."""
    torch = require("torch")
    transformers = require("transformers")
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(str(folder))


def torch_greedy(model, prompt_ids: list[int], max_new_tokens: int,
                 stop_ids: list[int] | None = None) -> tuple[list[int], list[np.ndarray]]:
    """Greedy decoding in PyTorch with a KV cache: plain argmax, whatever the model's generation_config.json asks of
    ``generate()`` (a repetition penalty, banned n-grams), as the runtime decodes. It stops before a token of
    ``stop_ids`` (none by default, so every step is compared)."""
    torch = require("torch")
    transformers = require("transformers")
    cache = transformers.DynamicCache()
    ids = torch.tensor([prompt_ids])
    total = len(prompt_ids)
    tokens, logits = [], []
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5.x renames past_key_values (still accepted)
        for _ in range(max_new_tokens):
            out = model(input_ids=ids, attention_mask=torch.ones(1, total, dtype=torch.long),
                        past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            last = out.logits[0, -1].float().numpy()
            if stop_ids and int(last.argmax()) in stop_ids:
                break
            tokens.append(int(last.argmax()))
            logits.append(last)
            ids = torch.tensor([[tokens[-1]]])
            total += 1
    return tokens, logits


def compare(reference: tuple[list[int], list[np.ndarray]], decoder: DecoderSession, prompt_ids: list[int]) -> dict:
    """Greedy agreement and the max |logit diff| along the common prefix of one prompt."""
    ref_tokens, ref_logits = reference
    got = greedy(decoder, prompt_ids, len(ref_tokens), keep_logits=True)
    same = agreement(ref_tokens, got.tokens)
    upto = max(1, round(same * len(ref_tokens)))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref_logits[:upto], got.logits[:upto]))
    return {"agreement": same, "max_abs_logit_diff": diff, "tokens": got.tokens, "reference": ref_tokens}


def validate_lm(folder: Path, onnx_path: Path, prompts: tuple[str, ...] = (), tokens: int = 16,
                atol: float = 1e-2) -> dict:
    """Raise LMValidationError unless every prompt's first ``tokens`` greedy tokens match and logits are within atol."""
    model, tokenizer = load_causal_lm(folder)
    decoder = DecoderSession(onnx_path)
    prompts = tuple(prompts) or PROMPTS
    rows = []
    pairs = list(zip(prompts, encode_prompts(tokenizer, prompts)))
    for text, ids in progress.bar(pairs, desc="validate", unit="prompt"):
        rows.append({"prompt": text, **compare(torch_greedy(model, ids, tokens), decoder, ids)})
    worst = max(r["max_abs_logit_diff"] for r in rows)
    bad = [r for r in rows if r["agreement"] < 1.0]
    if bad:
        r = bad[0]
        raise LMValidationError("Exported decoder does not match the PyTorch model",
                                f"greedy tokens diverge on {len(bad)}/{len(rows)} prompts (first: {r['prompt']!r} "
                                f"after {round(r['agreement'] * tokens)}/{tokens} tokens)",
                                "Try the other --route, or report the architecture")
    if worst > atol:
        raise LMValidationError("Exported decoder does not match the PyTorch model",
                                f"max |logit diff| {worst:.3g} > tolerance {atol:.3g} (greedy tokens agree)",
                                "Raise --atol if the difference is acceptable, or try the other --route")
    return {"prompts": len(rows), "tokens": tokens, "greedy_agreement": 1.0, "max_abs_logit_diff": worst,
            "atol": atol, "rows": [{k: r[k] for k in ("prompt", "agreement", "max_abs_logit_diff")} for r in rows]}
