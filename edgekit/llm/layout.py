"""The causal-LM artifact folder: files copied beside the graph, and the manifest's ``llm`` section.

Layout (shared with the runtime): ``model.onnx`` (+ ``model.onnx.data``),
``genai_config.json``, ``tokenizer.json``, ``tokenizer_config.json`` (with
the chat template inside), ``config.json``, ``generation_config.json`` when
the source has one, and ``manifest.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .loop import PAST_PATTERN, PRESENT_PATTERN
from .source import embed_chat_template

COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")


def finish_folder(src: Path, out: Path, route: str) -> None:
    """Copy config, generation config and tokenizer from ``src``; embed the chat template; genai config if missing."""
    for name in COPIED:
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    template = out / "chat_template.jinja"
    if template.is_file():
        embed_chat_template(out, template.read_text())
    if not (out / "genai_config.json").is_file():
        (out / "genai_config.json").write_text(json.dumps(genai_config(src), indent=4) + "\n")


def text_config(src: Path) -> dict:
    config = json.loads((src / "config.json").read_text())
    return config.get("text_config") or config


def eos_ids(src: Path) -> list[int]:
    """EOS ids from generation_config.json (which may list several) else config.json."""
    for name in ("generation_config.json", "config.json"):
        f = src / name
        if f.is_file():
            eos = json.loads(f.read_text()).get("eos_token_id")
            if eos is not None:
                return list(eos) if isinstance(eos, list) else [int(eos)]
    return []


def dims(src: Path) -> dict:
    c = text_config(src)
    heads = c.get("num_attention_heads") or c.get("n_head")
    hidden = c.get("hidden_size") or c.get("n_embd")
    return {
        "num_layers": c.get("num_hidden_layers") or c.get("n_layer"),
        "num_heads": heads,
        "num_kv_heads": c.get("num_key_value_heads") or heads,
        "head_dim": c.get("head_dim") or hidden // heads,
        "hidden": hidden,
        "vocab": c.get("vocab_size"),
        "context_length": c.get("max_position_embeddings") or c.get("n_positions"),
        "model_type": c.get("model_type"),
    }


def llm_section(src: Path, onnx_path: Path) -> dict:
    """What a runtime needs to drive the graph without reading it: sizes, I/O names, cache naming, EOS ids."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    section = dims(src)
    section.update({
        "inputs": [n for n in inputs if not n.startswith("past_key_values.")],
        "outputs": [n for n in outputs if not n.startswith("present.")],
        "past_pattern": PAST_PATTERN, "present_pattern": PRESENT_PATTERN,
        "kv_layout": "[batch, num_kv_heads, seq, head_dim]",
        "eos_token_ids": eos_ids(src),
    })
    return section


def genai_config(src: Path) -> dict:
    """A genai_config.json for a graph the builder did not write (same I/O names as the builder's)."""
    d = dims(src)
    config = json.loads((src / "config.json").read_text())
    eos = eos_ids(src)
    return {
        "model": {
            "bos_token_id": config.get("bos_token_id"), "context_length": d["context_length"],
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": config.get("pad_token_id") if config.get("pad_token_id") is not None else eos[0],
            "type": d["model_type"], "vocab_size": d["vocab"],
            "decoder": {
                "filename": "model.onnx", "head_size": d["head_dim"], "hidden_size": d["hidden"],
                "num_attention_heads": d["num_heads"], "num_hidden_layers": d["num_layers"],
                "num_key_value_heads": d["num_kv_heads"], "session_options": {"provider_options": []},
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {"do_sample": False, "max_length": d["context_length"], "num_beams": 1,
                   "past_present_share_buffer": False, "top_k": 50, "top_p": 1.0, "temperature": 1.0},
    }
