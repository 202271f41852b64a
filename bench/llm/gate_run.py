"""bench/llm.md, part 1: SmolLM2-135M-Instruct through optimize_lm's gate (accuracy from generated answers on
SST-2 dev, greedy agreement, perplexity). Usage: python bench/llm/gate_run.py MODEL ARTIFACT OUT ROWS"""

import json
import sys

from edgekit.errors import GateFailedError
from edgekit.llm.gate import LMGateOptions
from edgekit.llm.pipeline import LMOptimizeOptions, optimize_lm

model, artifact, out, rows = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = LMOptimizeOptions(artifact=artifact or None, threads=1, skip_bench=True,
                            gate=LMGateOptions(rows=rows, agreement_prompts=8, agreement_tokens=16, ppl_tokens=1024))
try:
    report = optimize_lm(model, "/work/shared/data/sst2/dev.tsv", out, options, force=True)
except GateFailedError as exc:
    print(exc.message)
    report = json.loads(open(f"{out}/report.json").read())
g = report["llm"]["gate"]
print(json.dumps({"checks": g["checks"], "accuracy": {k: v["accuracy"] for k, v in g["accuracy"].items()},
                  "unparsed": {k: v["unparsed"] for k, v in g["accuracy"].items()},
                  "agreement": g["agreement"], "perplexity": g["perplexity"]}, indent=1))
