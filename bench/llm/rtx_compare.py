"""Score TensorRT-RTX decoder ONNX folders (fp16 and int4 variants) on ONNX Runtime CPU, as bench/llm-rtx.md did.

    N=200 python bench/llm/rtx_compare.py FP16_DIR INT4_DIR [INT4_DIR ...]

Task accuracy from 8 greedy answer tokens on the first N SST-2 dev rows with the fine-tuning prompt, for the
fp16 folder and each int4 one; teacher-forced greedy agreement (last 16 dev rows, 16 tokens) and perplexity
(1,024 held-out SST-2 train tokens) of each int4 folder against the fp16 one. Results: rtx_compare.json in
the working directory. ``EDGEKIT_SHARED`` (default ../shared) locates the data.
"""

import json
import os
import sys
import time
from pathlib import Path

from edgekit.llm.gate import greedy_agreement, held_out_ids, perplexity, task_accuracy
from edgekit.llm.pipeline import labeled_rows
from edgekit.llm.prompts import template
from edgekit.llm.scorers import ArtifactLM

TEMPLATE = "Is the sentiment of this movie review positive or negative?\nReview: {text}\nAnswer:"
SHARED = Path(os.environ.get("EDGEKIT_SHARED", "../shared"))


def main(ref_dir: str, *variants: str) -> None:
    n = int(os.environ.get("N", "200"))
    prompt = template(TEMPLATE)
    texts, labels = labeled_rows(SHARED / "data/sst2/dev.tsv", TEMPLATE)
    ref = ArtifactLM(ref_dir, threads=2, engine="ort")
    ref.name = "fp16"
    ids = held_out_ids(ref.generator.tokenizer, SHARED / "data/sst2/train.tsv", 1024)
    res = {"fp16": {"accuracy": task_accuracy([ref], prompt, texts[:n], labels[:n], 8)["fp16"]["accuracy"],
                    "ppl": perplexity(ref, ids, 256)}}
    print("fp16", res["fp16"], flush=True)
    for v in variants:
        t = time.time()
        art = ArtifactLM(v, threads=2, engine="ort")
        acc = task_accuracy([art], prompt, texts[:n], labels[:n], 8)["artifact"]
        agr = greedy_agreement(ref, art, [art.encode(prompt.messages(x)) for x in texts[-16:]], 16)
        res[v] = {"accuracy": acc["accuracy"], "unparsed": acc["unparsed"], "agreement": agr["teacher_forced"],
                  "ppl": perplexity(art, ids, 256), "s": round(time.time() - t)}
        print(v, res[v], flush=True)
    Path("rtx_compare.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main(*sys.argv[1:])
