"""Causal language models: sources (HF folder, GGUF, pkg:), KV-cache export, int4/int8 weight-only quantization."""
