"""Answers of an int4 artifact against the original's, on the first ROWS SST-2 dev rows (bench/llm-finetune.md §3).

    PYTHONPATH=$PWD python bench/llm/answers_compare.py HF_FOLDER ARTIFACT ROWS OUT.json [TEMPLATE]

Both sides answer the same token ids (the artifact's tokenizer and chat template) greedily, 8 new tokens; the
prediction is the first label word (edgekit.llm.prompts). The original's answers (PyTorch fp32, KV cache) are
cached beside OUT.json per (model, template, rows), so each further artifact costs only its own answers.
Prints accuracy of both, the drop in points, and how many answers differ. ``EDGEKIT_SHARED`` (default
../shared) locates the data.
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from edgekit.llm.pipeline import labeled_rows
from edgekit.llm.prompts import template
from edgekit.llm.scorers import ArtifactLM, TorchLM
from edgekit.runtime.generate import read_lm_info

TEMPLATE = "Is the sentiment of this movie review positive or negative?\nReview: {text}\nAnswer:"
SHARED = Path(os.environ.get("EDGEKIT_SHARED", "../shared"))


def main(hf: str, art: str, rows: str, out: str, tmpl: str = TEMPLATE) -> None:
    n = int(rows)
    texts, labels = labeled_rows(SHARED / "data/sst2/dev.tsv", tmpl)
    texts, labels = texts[:n], labels[:n]
    prompt = template(tmpl)
    artifact = ArtifactLM(art, 2)
    ids = [artifact.encode(prompt.messages(t)) for t in texts]
    key = hashlib.sha1(json.dumps([hf, tmpl, n]).encode()).hexdigest()[:10]
    cache = Path(out).parent / f"orig-{key}.json"
    if cache.is_file():
        original = json.loads(cache.read_text())
    else:
        torch_lm = TorchLM(hf, 2, read_lm_info(Path(art)).eos_ids)
        original = [artifact.decode(torch_lm.greedy(x, 8)) for x in ids]
        cache.write_text(json.dumps(original))
    started = time.time()
    answers = [artifact.decode(artifact.greedy(x, 8)) for x in ids]
    seconds = time.time() - started
    po, pa = [prompt.parse(a) for a in original], [prompt.parse(a) for a in answers]
    acc_o = sum(p == y for p, y in zip(po, labels, strict=True)) / n
    acc_a = sum(p == y for p, y in zip(pa, labels, strict=True)) / n
    result = {"artifact": art, "rows": n, "original": acc_o, "artifact_accuracy": acc_a,
              "drop_points": round(100 * (acc_o - acc_a), 2), "answers_differ": sum(a != b for a, b in zip(po, pa)),
              "seconds": round(seconds, 1)}
    print(json.dumps(result))
    Path(out).write_text(json.dumps({**result, "answers": answers}, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
