"""bench/llm.md, part 2: TTFT and decode tokens/s, 128-token prompt, batch 1, 2 threads, interleaved rounds:
PyTorch eager generate, edgekit int8, edgekit int4 (both engines), llama.cpp on the package's Q4_1 GGUF.
Usage: python bench/llm/side_by_side.py HF INT8 INT4 GGUF ROUNDS NEW_TOKENS OUT.json [NAME=FOLDER ...]
(each NAME=FOLDER: one more artifact, onnxruntime-genai engine)"""

import json
import sys

from edgekit.deps import available
from edgekit.llm.bench import (ArtifactRunner, LlamaCppRunner, LMBenchOptions, TorchRunner, bench_prompt,
                               peak_rss_mb, run_bench)

hf, int8, int4, gguf, rounds, new, out = sys.argv[1:8]
opts = LMBenchOptions(rounds=int(rounds), new_tokens=int(new), threads=2)
prompt = bench_prompt(f"{int4}/tokenizer.json", "/work/shared/data/sst2/train.tsv", opts.prompt_tokens)
runners = [TorchRunner(hf, 2), ArtifactRunner(int8, 2, "genai", "edgekit int8 (genai)"),
           ArtifactRunner(int4, 2, "genai", "edgekit int4 (genai)"), ArtifactRunner(int4, 2, "ort", "edgekit int4 (ort loop)")]
extras = [a.split("=", 1) for a in sys.argv[8:]]
runners += [ArtifactRunner(folder, 2, "genai", name) for name, folder in extras]
notes = {}
if available("llama_cpp"):
    runners.append(LlamaCppRunner(gguf, 2))
else:
    notes["llama.cpp"] = "llama-cpp-python not importable (source build did not finish in time)"
result = run_bench(runners, prompt, opts)
result["notes"] = notes
result["peak_rss_mb"] = {"torch": peak_rss_mb("torch", hf, 2), "int8 genai": peak_rss_mb("artifact", int8, 2, "genai"),
                         "int4 genai": peak_rss_mb("artifact", int4, 2, "genai"),
                         "int4 ort": peak_rss_mb("artifact", int4, 2, "ort")}
for name, folder in extras:
    result["peak_rss_mb"][name] = peak_rss_mb("artifact", folder, 2, "genai")
if available("llama_cpp"):
    result["peak_rss_mb"]["llama.cpp"] = peak_rss_mb("llamacpp", gguf, 2)
json.dump(result, open(out, "w"), indent=1)
print(json.dumps(result, indent=1))
