"""Does the torch-free runtime agree with PyTorch on a trained family model? Labels, logits, pad id, accuracy.

Runs the PyTorch model (its own ``AutoTokenizer``, right padding, batches of
``--batch-size`` so most rows are padded) and ``edgekit.runtime.load(artifact)``
on the same dev sentences in the same batches, and reports: each side's dev
accuracy, label agreement, the largest logit difference, and the pad id the
runtime's tokenizer uses against the model's. Works on any artifact
``edgekit.runtime.load`` reads (an ``edgekit export`` fp32 folder, an
``optimize`` output's model/).

    python bench/families/runtime_check.py /tmp/edgekit-families/gpt2 /tmp/edgekit-families/out-gpt2/model
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import numpy as np  # noqa: E402

from edgekit import progress  # noqa: E402
from edgekit.runtime import load  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="The PyTorch model folder (save_pretrained output).")
    p.add_argument("artifact", help="What edgekit.runtime.load reads.")
    p.add_argument("--dev", default=str(HERE.parents[2] / "shared" / "data" / "sst2" / "dev.tsv"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=0, help="First N dev rows (0 = all).")
    p.add_argument("--json", help="Also write the result here.")
    return p.parse_args(argv)


def read_dev(path: str, limit: int) -> tuple[list[str], np.ndarray]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[:limit] if limit else rows
    return [r["sentence"] for r in rows], np.array([int(r["label"]) for r in rows])


def torch_logits(folder: str, texts: list[str], batch_size: int) -> tuple[np.ndarray, int | None]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    out = []
    with torch.inference_mode():
        for start in progress.bar(range(0, len(texts), batch_size), desc="pytorch batches", unit="batch"):
            enc = tok(texts[start:start + batch_size], padding=True, truncation=True, return_tensors="pt")
            out.append(model(**enc).logits.float().numpy())
    return np.concatenate(out), tok.pad_token_id


def main(argv=None) -> int:
    args = parse_args(argv)
    texts, labels = read_dev(args.dev, args.limit)
    with progress.stage("pytorch", f"{len(texts)} rows, batch {args.batch_size}"):
        want, pad_id = torch_logits(args.model, texts, args.batch_size)
    with progress.stage("runtime", str(args.artifact)):
        clf = load(args.artifact, threads=1)
        got = clf.logits(texts, batch_size=args.batch_size)
    result = {"model": args.model, "artifact": str(args.artifact), "rows": len(texts), "batch_size": args.batch_size,
              "pytorch_accuracy": round(float((want.argmax(-1) == labels).mean()), 4),
              "runtime_accuracy": round(float((got.argmax(-1) == labels).mean()), 4),
              "label_agreement": round(float((want.argmax(-1) == got.argmax(-1)).mean()), 4),
              "max_abs_logit_diff": round(float(np.abs(want - got).max()), 5),
              "model_pad_id": pad_id, "runtime_pad_id": int(clf.encoder.pad_id) if hasattr(clf, "encoder") else None}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
