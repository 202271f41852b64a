"""Safe loading: pickle checkpoints that carry code are refused, remote code needs the flag, recipes stay home.

Runtime: about 10 s (tiny model loads in-process).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import InputError, ModelError

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bin_model(tiny_model: Path, folder: Path, extra: dict | None = None, legacy: bool = False) -> Path:
    import torch
    from safetensors.torch import load_file

    folder.mkdir()
    for f in tiny_model.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    state = {**load_file(str(tiny_model / "model.safetensors")), **(extra or {})}
    torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=not legacy)
    return folder


def _logits(folder: Path) -> np.ndarray:
    from edgekit.hf import TorchSession
    from edgekit.runtime.tokenizer import TextEncoder

    with TorchSession(folder) as sess:
        return sess.run(sess.feeds(TextEncoder(folder)(["a good film", "dull plot"])))["logits"]


def test_checkpoint_with_pickle_payload_is_refused_and_never_unpickled(tiny_model, tmp_path):
    from edgekit.hf import load_model

    marker = tmp_path / "PAYLOAD-RAN"
    folder = _bin_model(tiny_model, tmp_path / "evil", extra={"x": Payload(marker)})
    with pytest.raises(ModelError, match=r"is refused: its pickle references code.*posix\.system"):
        load_model(folder)
    assert not marker.exists(), "the payload ran"


def test_plain_torch_checkpoint_still_loads_with_the_same_weights(tiny_model, tmp_path):
    """The check is not a blanket refusal: a state-dict-only .bin loads and matches the safetensors model."""
    folder = _bin_model(tiny_model, tmp_path / "plain")
    np.testing.assert_allclose(_logits(folder), _logits(tiny_model), atol=1e-6)


def test_legacy_pickle_checkpoint_is_refused(tiny_model, tmp_path):
    from edgekit.hf import check_weights_safe

    folder = _bin_model(tiny_model, tmp_path / "legacy", legacy=True)
    with pytest.raises(ModelError, match="not a zip torch checkpoint"):
        check_weights_safe(folder)


def test_safetensors_are_preferred_over_a_bin_beside_them(tiny_model, tmp_path):
    """A poisoned .bin next to safetensors is never read: loading works and the payload does not run."""
    from edgekit.hf import load_model

    marker = tmp_path / "PAYLOAD-RAN"
    folder = tmp_path / "both"
    shutil.copytree(tiny_model, folder)
    import torch

    torch.save({"x": Payload(marker)}, folder / "pytorch_model.bin")
    load_model(folder)
    assert not marker.exists()


def _remote_code_model(tiny_model: Path, folder: Path, marker: Path) -> Path:
    import json

    shutil.copytree(tiny_model, folder)
    config = {"model_type": "edgekit_custom", "architectures": ["CustomModel"], "num_labels": 2,
              "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                           "AutoModelForSequenceClassification": "modeling_custom.CustomModel"}}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("configuration_custom.py", "modeling_custom.py"):
        (folder / name).write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    return folder


def test_remote_code_runs_only_with_the_flag(tiny_model, tmp_path):
    from edgekit.hf import load_model

    marker = tmp_path / "CODE-RAN"
    folder = _remote_code_model(tiny_model, tmp_path / "custom", marker)
    with pytest.raises(ModelError, match="--trust-remote-code"):
        load_model(folder, "text-classification")
    assert not marker.exists(), "model code ran without --trust-remote-code"
    with pytest.warns(UserWarning, match="runs the Python code shipped in it"), pytest.raises(ModelError):
        load_model(folder, "text-classification", trust_remote_code=True)  # our stub defines no model class
    assert marker.exists(), "with the flag the model's own code is what loads it"


def _project(tmp_path: Path, recipe_text: str, read_roots: list[str] | None = None) -> Path:
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "data").mkdir()
    (project / "data" / "dev.tsv").write_text("label\tsentence\n1\tgood\n")
    extra = f"[tool.edgekit]\nrecipe-read-roots = {read_roots!r}\n".replace("'", '"') if read_roots else ""
    (project / "pyproject.toml").write_text(f"[project]\nname = 'p'\n{extra}")
    recipe = project / "models" / "r.yaml"
    recipe.write_text(recipe_text)
    return recipe


def test_recipe_paths_are_relative_to_the_project_not_the_cwd(tmp_path, monkeypatch):
    from edgekit.recipe import load_recipe

    recipe = _project(tmp_path, "model: org/name\ndata: data/dev.tsv\nout: out/r\n")
    monkeypatch.chdir(tmp_path)
    r = load_recipe(recipe)
    project = (tmp_path / "project").resolve()
    assert (r.model, r.data, r.out) == ("org/name", str(project / "data/dev.tsv"), str(project / "out/r"))


@pytest.mark.parametrize("text, what", [
    ("data: ../outside.tsv\n", "data"),
    ("data: /etc/hostname\n", "data"),
    ("data: link/hostname\n", "data"),                      # a symlink out of the project
    ("model: ../elsewhere/model\n", "model"),
    ("model: {local: ../shared/m}\n", "model.local"),       # a read root, but not declared by this project
    ("data: {calibration_data: ../../calib.tsv}\n", "calibration_data"),
    ("data: {validation_data: ../../calib.tsv}\n", "validation_data"),
    ("options: {prune_data: ../../calib.tsv}\n", "prune_data"),          # an older recipe's flat key
    ("out: ../../home/user/.ssh\n", "out"),
])
def test_recipe_paths_cannot_escape_their_project(tmp_path, text, what):
    from edgekit.recipe import load_recipe

    for name in ("outside.tsv", "calib.tsv"):
        (tmp_path / name).write_text("label\tsentence\n1\tx\n")
    (tmp_path / "elsewhere" / "model").mkdir(parents=True)
    (tmp_path / "shared" / "m").mkdir(parents=True)
    recipe = _project(tmp_path, text)
    (recipe.parents[1] / "link").symlink_to("/etc")
    with pytest.raises(InputError, match=rf"{what} .* is outside the folders it may (read|write)"):
        load_recipe(recipe)
    load_recipe(recipe, allow_outside_paths=True)  # the explicit escape hatch


def test_declared_read_roots_allow_reads_but_never_writes(tmp_path):
    from edgekit.recipe import load_recipe

    (tmp_path / "shared" / "m").mkdir(parents=True)
    recipe = _project(tmp_path, "model: {local: ../shared/m}\nout: out/x\n", read_roots=["../shared"])
    assert load_recipe(recipe).model == str((tmp_path / "shared" / "m").resolve())
    recipe.write_text("model: {local: ../shared/m}\nout: ../shared/x\n")
    with pytest.raises(InputError, match="out .* outside the folders it may write"):
        load_recipe(recipe)


@pytest.mark.parametrize("text,what", [("data: 7\n", "data"), ("out: [1, 2]\n", "out"),
                                       ("data: {path: 5}\n", "data"), ("data: {calibration_data: 3}\n",
                                                                         "calibration_data")])
def test_a_recipe_path_that_is_not_a_string_is_one_line(tmp_path, text, what):
    """data: 7 was taken for a Hugging Face dataset name; out: [1, 2] would have made a folder named '[1, 2]'."""
    from edgekit.recipe import load_recipe

    with pytest.raises(InputError, match=rf"{what} must be a path \(a string\)"):
        load_recipe(_project(tmp_path, text))


def test_recipe_cannot_turn_on_remote_code(tmp_path):
    from edgekit.recipe import load_recipe

    recipe = _project(tmp_path, "data: data/dev.tsv\noptions: {trust_remote_code: true}\n")
    with pytest.raises(InputError, match="sets trust_remote_code"):
        load_recipe(recipe)


def test_the_reference_recipe_still_resolves_from_the_repo_root(monkeypatch):
    """README's main command: edgekit optimize --recipe models/minilm-l6-sst2.yaml (../shared is a declared root)."""
    from edgekit.recipe import load_recipe

    monkeypatch.chdir(ROOT)
    r = load_recipe("models/minilm-l6-sst2.yaml")
    assert r.data == str((ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv").resolve())
    assert r.out == str(ROOT / "out" / "minilm-l6-sst2")
