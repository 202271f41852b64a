"""Recipes: YAML files (models/*.yaml) that ``optimize --recipe`` runs like the equivalent flags.

A recipe names the model source, task, data, budgets and target::

    model:
      local: ../shared/models/minilm-l6-sst2     # used when it exists
      hub: org/model-name                         # otherwise fetched from the Hugging Face hub
    task: text-classification
    data: {path: ../shared/data/sst2/dev.tsv, text_column: sentence, label_column: label}
    target: cpu
    budgets: {max_accuracy_drop: 0.01}
    quantize: {mode: dynamic, per_channel: true}
    bench: {batch_size: 1, iterations: 200}
    out: out/minilm-l6-sst2

Relative paths are resolved against the directory edgekit runs in (as flags
are). Keys map onto ``OptimizeOptions`` fields; an unknown key is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

SECTIONS = ("budgets", "quantize", "bench", "options")
TOP_LEVEL = ("model", "data", "out", "task", "target", "name", "description", *SECTIONS)


@dataclass
class Recipe:
    model: str | None
    data: str | None
    out: str | None
    options: dict = field(default_factory=dict)


def load_recipe(path: str | Path) -> Recipe:
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"Recipe '{path}' not found", None, "Pass a YAML file such as models/minilm-l6-sst2.yaml") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"Recipe '{path}' cannot be read", str(exc).splitlines()[0][:200], "Fix the YAML") from None
    if not isinstance(raw, dict):
        raise InputError(f"Recipe '{path}' is not a mapping", None, "Write keys such as model:, data:, target:")
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise InputError(f"Recipe '{path}' has unknown key(s): {', '.join(unknown)}", None,
                         f"Valid keys: {', '.join(TOP_LEVEL)}")
    options: dict = {}
    for key in ("task", "target"):
        if key in raw:
            options[key] = raw[key]
    for section in SECTIONS:
        values = raw.get(section) or {}
        if not isinstance(values, dict):
            raise InputError(f"Recipe '{path}': '{section}' must be a mapping", None, None)
        options.update(values)
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("text_column", "label_column"):
            if key in data:
                options[key] = data[key]
        data = data.get("path")
    return Recipe(model=_model_source(raw.get("model"), path), data=data, out=raw.get("out"), options=options)


def _model_source(model, path: Path) -> str | None:
    if model is None or isinstance(model, str):
        return model
    if not isinstance(model, dict):
        raise InputError(f"Recipe '{path}': 'model' must be a path or a mapping with local:/hub:", None, None)
    local = model.get("local")
    if local and Path(local).exists():
        return str(local)
    return model.get("hub") or local
