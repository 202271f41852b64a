"""Model knowledge as data: per-task outputs and axes, not isinstance chains.

Task names are optimum's (``TasksManager``); the model class for a task comes
from ``TasksManager.get_model_class_for_task``.
"""

from __future__ import annotations

from dataclasses import dataclass

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TaskSpec:
    outputs: tuple[str, ...]          # attributes of the model's output object, in ONNX output order
    output_axes: tuple[dict, ...]     # per output: axis index -> "batch" | "sequence"
    classifies: bool                  # argmax of the first output is a label per example


TASKS: dict[str, TaskSpec] = {
    "text-classification": TaskSpec(("logits",), ({0: "batch"},), True),
    "token-classification": TaskSpec(("logits",), ({0: "batch", 1: "sequence"},), False),
    "feature-extraction": TaskSpec(("last_hidden_state",), ({0: "batch", 1: "sequence"},), False),
    "fill-mask": TaskSpec(("logits",), ({0: "batch", 1: "sequence"},), False),
    "question-answering": TaskSpec(("start_logits", "end_logits"),
                                   ({0: "batch", 1: "sequence"}, {0: "batch", 1: "sequence"}), False),
}
