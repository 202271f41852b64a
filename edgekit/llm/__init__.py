"""Causal language models (fine-tuning with LoRA or fully: :mod:`edgekit.llm.finetune`)."""
