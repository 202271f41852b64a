"""bench/llm.md, peak RSS: a fresh process per runner (load + 8 generated tokens), VmHWM.
Usage: python bench/llm/memory.py HF INT8 INT4 OUT.json"""

import json
import sys

from edgekit.llm.bench import peak_rss_mb

hf, int8, int4, out = sys.argv[1:5]
rss = {"PyTorch eager generate": peak_rss_mb("torch", hf, 2), "edgekit int8 (genai)": peak_rss_mb("artifact", int8, 2, "genai"),
       "edgekit int4 (genai)": peak_rss_mb("artifact", int4, 2, "genai"), "edgekit int4 (ort loop)": peak_rss_mb("artifact", int4, 2, "ort")}
json.dump(rss, open(out, "w"), indent=1)
print(rss)
