"""The composed options schema: round trip, one-line errors, recipes with the same keys, flags derived from fields.

Fast: no model is built (the CLI errors are raised by validation before any step runs).
"""

import dataclasses
import re

import pytest
from click.testing import CliRunner

from edgekit.bench import BenchOptions
from edgekit.cli import main
from edgekit.errors import InputError
from edgekit.options import DERIVED, DataOptions, GateOptions, OptimizeOptions
from edgekit.quantize import QuantizeOptions
from edgekit.schema import sections, walk


def test_asdict_round_trips_and_sections_are_the_steps_own_classes():
    o = OptimizeOptions(target="tensorrt-rtx", precision="fp16", gate=GateOptions(max_accuracy_drop=0.02),
                        quantize=QuantizeOptions(calibration_method="entropy", per_channel=False),
                        bench=BenchOptions(batch_size=4), data=DataOptions(calibration_data="train.tsv"))
    assert OptimizeOptions.from_dict(dataclasses.asdict(o)) == o
    assert {name: cls.__name__ for name, cls in sections(OptimizeOptions).items()} == {
        "data": "DataOptions", "gate": "GateOptions", "export": "ExportOptions", "quantize": "QuantizeOptions",
        "build": "BuildOptions", "prune": "PruneOptions", "bench": "BenchOptions"}


def test_every_field_has_help():
    missing = [leaf.key for leaf in walk(OptimizeOptions) if not leaf.metadata.get("help")]
    assert missing == []


def test_steps_receive_their_own_options_with_only_the_run_fields_set():
    o = OptimizeOptions(target="tensorrt", quantize=QuantizeOptions(calibration_method="percentile", seed=3))
    q = o.quantize_options()
    assert dataclasses.replace(q, target=o.quantize.target) == o.quantize and q.target == "tensorrt"
    b = o.build_options()
    assert (b.backend, b.precision) == ("tensorrt", "int8")
    assert dataclasses.replace(b, backend=o.build.backend, precision=o.build.precision) == o.build


@pytest.mark.parametrize("values, expected", [
    ({"quantize": {"modee": "static"}}, "Unknown quantize option(s): modee. Valid keys: target, mode,"),
    ({"max_accuracy_drop": 0.1}, "Unknown option(s): max_accuracy_drop. Valid keys: target, precision, data, gate,"),
    ({"quantize": {"target": "tensorrt"}}, "Option 'quantize.target' is set by the run's 'target'"),
])
def test_unknown_keys_are_one_line_errors_listing_valid_ones(values, expected):
    with pytest.raises(InputError) as err:
        OptimizeOptions.from_dict(values)
    assert err.value.message.startswith(expected) and "\n" not in err.value.message


@pytest.mark.parametrize("values, expected", [
    ({"gate": {"max_accuracy_drop": "lots"}}, "Option 'gate.max_accuracy_drop' must be a number: got 'lots'."),
    ({"bench": {"iterations": 2.5}}, "Option 'bench.iterations' must be a whole number: got 2.5."),
    ({"quantize": {"per_channel": "yes"}}, "Option 'quantize.per_channel' must be true or false: got 'yes'. Write e.g."),
    ({"quantize": {"op_types": "MatMul"}}, "Option 'quantize.op_types' must be a list: got 'MatMul'."),
    ({"data": {"max_samples": True}}, "Option 'data.max_samples' must be a whole number: got True."),
    ({"bench": {"iterations": None}}, "Option 'bench.iterations' must be a whole number: got None."),
])
def test_values_of_the_wrong_type_are_one_line_errors(values, expected):
    """A recipe's value of the wrong type reached a comparison and raised TypeError there (a traceback)."""
    with pytest.raises(InputError) as err:
        OptimizeOptions.from_dict(values)
    assert err.value.message.startswith(expected) and "\n" not in err.value.message


def test_right_types_pass_the_type_check():
    o = OptimizeOptions.from_dict({"gate": {"max_accuracy_drop": 0}, "bench": {"threads": None, "iterations": 5},
                                   "prune": {"ffn": 1 / 2, "layers": 1}, "quantize": {"op_types": ["MatMul"]}})
    assert o.gate.max_accuracy_drop == 0 and o.bench.iterations == 5 and o.quantize.op_types == ["MatMul"]
    # a string field given None: a one-line error (no KeyError from the type check)
    with pytest.raises(InputError, match="calibration_method' must be a text: got None"):
        OptimizeOptions.from_dict({"quantize": {"calibration_method": None}}).validate()


def _flags_in_help() -> tuple[str, set[str]]:
    result = CliRunner().invoke(main, ["optimize", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output, set(re.findall(r"--[a-z0-9-]+", result.output))


def test_optimize_help_lists_every_field_of_the_schema_grouped():
    from edgekit.cli_options import flag_name, schema_options
    from edgekit.cli import _OPTIMIZE_RESERVED

    text, flags = _flags_in_help()
    generated = schema_options(OptimizeOptions, DERIVED, _OPTIMIZE_RESERVED)
    assert len(generated) == len(walk(OptimizeOptions, DERIVED)) > 50
    for leaf, option in generated:
        assert option.opts[0] in flags, leaf.key
        assert option.help and leaf.metadata["help"] in option.help
    for wanted in ("--task", "--opset", "--per-channel", "--per-tensor", "--calibration-samples", "--quiet"):
        assert wanted in flags
    headings = [line for line in text.splitlines() if line.endswith("options:")]
    assert headings[:9] == ["Data options:", "Gate (accuracy) options:", "Target and export options:",
                            "Quantization options:", "Engine build (TensorRT targets) options:", "Pruning options:",
                            "Search options:", "Bench (latency) options:", "Output options:"]
    assert text.splitlines()[0].endswith("optimize [OPTIONS] MODEL")  # shown as required, not [MODEL]
    assert flag_name(next(leaf for leaf in walk(OptimizeOptions) if leaf.key == "quantize.seed"),
                     {"seed"}) == "quantize-seed"  # a clash with --seed (search) gets its section's prefix


def test_flags_reach_the_nested_options(tmp_path, monkeypatch):
    """What the CLI builds from flags is the nested schema (the optimize call is captured, not run)."""
    import edgekit.pipeline as pipeline

    seen = {}

    def capture(model, data, out, options, force=False, cache=None):
        seen["options"] = options
        raise InputError("captured", None, None)
    monkeypatch.setattr(pipeline, "optimize", capture)
    args = ["optimize", "m", "--data", "d.tsv", "--out", str(tmp_path / "o"), "--per-tensor", "--opset", "17",
            "--calibration-samples", "16", "--task", "text-classification", "--iterations", "7", "--max-accuracy-drop",
            "0.02", "--prune-ffn", "0.5", "--compute-capability", "8.6,12.0", "--text-column", "sentence"]
    result = CliRunner().invoke(main, args)
    assert "captured" in result.output, result.output
    o = seen["options"]
    assert (o.quantize.per_channel, o.export.opset, o.quantize.calibration_samples, o.export.task) == \
        (False, 17, 16, "text-classification")
    assert (o.bench.iterations, o.bench.warmup, o.gate.max_accuracy_drop, o.prune.ffn) == (7, 20, 0.02, 0.5)
    assert (o.build.compute_capabilities, o.data.text_column) == (["8.6", "12.0"], "sentence")


def test_recipe_uses_the_nested_keys(tmp_path):
    from edgekit.recipe import load_recipe

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "dev.tsv").write_text("label\tsentence\n1\tgood\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\ndata: {path: dev.tsv, text_column: sentence}\ntarget: cpu\n"
                      "gate: {max_accuracy_drop: 0.02}\nquantize: {mode: static, calibration_samples: 8}\n"
                      "bench: {iterations: 9}\nbudgets: {eval_batch_size: 4}\noptions: {prune_ffn: 0.25}\n")
    o = OptimizeOptions.from_dict(load_recipe(recipe).options)
    assert (o.gate.max_accuracy_drop, o.gate.eval_batch_size, o.quantize.mode, o.quantize.calibration_samples) == \
        (0.02, 4, "static", 8)
    assert (o.bench.iterations, o.bench.warmup, o.data.text_column, o.prune.ffn) == (9, 20, "sentence", 0.25)
    recipe.write_text("model: m\ndata: dev.tsv\nquantize: {calibration: 8}\n")
    with pytest.raises(InputError, match="Unknown quantize option"):
        OptimizeOptions.from_dict(load_recipe(recipe).options)


@pytest.mark.parametrize("body,match", [
    ("quantize: {mode: static}\nbench: {iterations: 9}\nquantize: {per_channel: false}\n",
     "key 'quantize' is given twice"),  # PyYAML kept the last section: mode static was dropped
    ("gate: {max_accuracy_drop: 0.005}\nbudgets: {max_accuracy_drop: 0.03}\n", "'gate.max_accuracy_drop' twice"),
    ("task: text-classification\nexport: {task: token-classification}\n", "'export.task' twice"),
    ("quantize: {mode: static}\noptions: {mode: dynamic}\n", "'quantize.mode' twice"),
    ("data: {path: dev.tsv, text_column: sentence}\noptions: {text_column: text}\n", "'data.text_column' twice"),
])
def test_an_option_given_twice_in_a_recipe_is_refused(tmp_path, body, match):
    """Each was resolved silently: one of the two values dropped."""
    from edgekit.recipe import load_recipe

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "dev.tsv").write_text("label\tsentence\n1\tgood\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\n" + ("" if body.startswith("data:") else "data: dev.tsv\n") + body)
    with pytest.raises(InputError, match=match):
        load_recipe(recipe)


@pytest.mark.parametrize("section,value", [("export", "{task: [a]}"), ("prune", "{sparsity: 2:4}"),
                                           ("data", "{path: dev.tsv, text_column: {x: 1}}")])
def test_a_recipe_text_option_of_another_type_is_refused(tmp_path, section, value):
    """export: {task: [a]} was a TypeError traceback in the export; YAML reads sparsity 2:4 as the number 124."""
    from edgekit.recipe import load_recipe

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "dev.tsv").write_text("label\tsentence\n1\tgood\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\n" + ("" if section == "data" else "data: dev.tsv\n") + f"{section}: {value}\n")
    with pytest.raises(InputError, match="must be a text"):
        OptimizeOptions.from_dict(load_recipe(recipe).options)


def test_reference_recipe_reads():
    from pathlib import Path

    from edgekit.recipe import load_recipe

    root = Path(__file__).resolve().parents[2]
    o = OptimizeOptions.from_dict(load_recipe(root / "models" / "minilm-l6-sst2.yaml",
                                              allow_outside_paths=True).options)
    assert (o.target, o.export.task, o.quantize.mode, o.bench.iterations, o.data.label_column) == \
        ("cpu", "text-classification", "dynamic", 200, "label")


def test_fastest_within_budget_recipe_reads():
    from pathlib import Path

    from edgekit.recipe import load_recipe

    root = Path(__file__).resolve().parents[2]
    recipe = load_recipe(root / "models" / "minilm-l6-sst2-fast.yaml", allow_outside_paths=True)
    o = OptimizeOptions.from_dict(recipe.options)
    o.validate()
    assert o.pruning and (o.prune.ffn, o.prune.layers, o.prune.distill) == (0.5, 1, True)
    assert o.data.prune_data.endswith("sst2/train.tsv") and o.gate.max_accuracy_drop == 0.005
    assert str(recipe.out).endswith("out/minilm-l6-sst2-fast")
