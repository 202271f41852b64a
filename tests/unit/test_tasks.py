"""The task table and the gate's metrics: input sets per family, entity extraction in the seqeval convention."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekit.errors import InputError, ModelError
from edgekit.metrics import entities, entity_scores, token_scores
from edgekit.tasks import IGNORE, TASKS, gated, task_of, task_spec, text_inputs


@pytest.mark.parametrize("config, accepted, want", [
    ({"model_type": "bert", "type_vocab_size": 2}, None, ["input_ids", "attention_mask", "token_type_ids"]),
    ({"model_type": "roberta", "type_vocab_size": 1}, None, ["input_ids", "attention_mask"]),
    ({"model_type": "deberta-v2", "type_vocab_size": 0}, None, ["input_ids", "attention_mask"]),
    ({"model_type": "gpt2"}, {"input_ids", "attention_mask", "token_type_ids"}, ["input_ids", "attention_mask"]),
    ({"model_type": "distilbert"}, {"input_ids", "attention_mask"}, ["input_ids", "attention_mask"]),
    ({"model_type": "bert", "type_vocab_size": 2}, {"input_ids", "attention_mask"}, ["input_ids", "attention_mask"]),
])
def test_token_type_ids_only_where_the_model_has_them(config, accepted, want):
    assert text_inputs(config, accepted) == want


# expected chunks worked out by hand with seqeval's rules (default mode, IOB2 and IOB1 tags)
@pytest.mark.parametrize("tags, want", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["I-PER", "I-PER", "O"], [("PER", 0, 1)]),                        # I after O starts a chunk
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),     # B always starts a new one
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),     # a type change splits
    (["O", "O"], []),
    (["B-MISC"], [("MISC", 0, 0)]),                                    # an entity at the very end
    (["B-PER", "I-PER-X"], [("PER", 0, 0), ("PER-X", 1, 1)]),
])
def test_entities_follow_seqeval(tags, want):
    assert entities(tags) == want


def test_entity_scores_are_micro_averaged_over_sentences():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-LOC", "B-PER"]]
    s = entity_scores(true, pred)
    # true: 3 entities; predicted: 3; correct: PER(0-1) and LOC(s1) -> P = R = F1 = 2/3
    assert s["entity_precision"] == pytest.approx(2 / 3)
    assert s["entity_recall"] == pytest.approx(2 / 3)
    assert s["entity_f1"] == pytest.approx(2 / 3)
    assert entity_scores(true, [["O"] * 4, ["O", "O"]])["entity_f1"] == 0.0


def test_token_scores_read_only_the_scored_positions():
    id2label = {0: "O", 1: "B-PER", 2: "I-PER"}
    targets = np.array([[IGNORE, 1, IGNORE, 2, 0, IGNORE]])        # words at positions 1, 3, 4
    logits = np.zeros((1, 6, 3), np.float32)
    logits[0, [0, 1, 2, 3, 4, 5], [1, 1, 0, 2, 1, 1]] = 5.0          # position 4 wrong (B-PER instead of O)
    s = token_scores(logits, targets, id2label)
    assert s["token_accuracy"] == pytest.approx(2 / 3)
    assert s["entity_precision"] == pytest.approx(1 / 2) and s["entity_recall"] == 1.0


def test_task_of_reads_manifest_then_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForTokenClassification"]}))
    assert task_of(tmp_path) == "token-classification"
    (tmp_path / "manifest.json").write_text(json.dumps({"task": "text-classification"}))
    assert task_of(tmp_path) == "text-classification"
    assert task_of(tmp_path / "nothing-here") == "text-classification"


def test_every_gated_task_has_what_the_steps_ask_for():
    for name, spec in TASKS.items():
        assert spec.name == name and len(spec.outputs) == len(spec.output_axes)
        if spec.score is not None:
            assert spec.metric and spec.reader and spec.predictor and spec.predict
    with pytest.raises(ModelError, match="no accuracy gate"):
        gated("fill-mask")
    with pytest.raises(InputError, match="Unsupported task"):
        task_spec("summarization")


def test_gate_metric_is_accuracy_or_entity_f1_by_the_targets_task():
    from edgekit.check import Targets, gate_metric

    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    labels = Targets([1, 1, 1], {0: "negative", 1: "positive"}, "text-classification")
    assert gate_metric(logits, labels) == pytest.approx(2 / 3)
    assert gate_metric(logits, labels) == float((logits.argmax(-1) == labels).mean())
    tags = Targets([[IGNORE, 1, 2, IGNORE]], {0: "O", 1: "B-PER", 2: "I-PER"}, "token-classification")
    token_logits = np.zeros((1, 4, 3), np.float32)
    token_logits[0, [1, 2], [1, 0]] = 5.0      # B-PER then O: the PER entity is cut short
    assert gate_metric(token_logits, tags) == 0.0
    token_logits[0, 2, 2] = 9.0                # B-PER I-PER: exact
    assert gate_metric(token_logits, tags) == 1.0
