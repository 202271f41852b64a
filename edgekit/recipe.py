"""Recipes: YAML files (models/*.yaml) that ``optimize --recipe`` runs like the equivalent flags.

A recipe names the model source, task, data, budgets and target::

    model:
      local: ../shared/models/minilm-l6-sst2     # used when it exists
      hub: org/model-name                         # otherwise fetched from the Hugging Face hub
    task: text-classification
    data: {path: ../shared/data/sst2/dev.tsv, text_column: sentence, label_column: label}
    target: cpu
    gate: {max_accuracy_drop: 0.01}
    quantize: {mode: dynamic, per_channel: true}
    bench: {batch_size: 1, iterations: 200}
    out: out/minilm-l6-sst2

The sections are ``OptimizeOptions``' own (``data`` = DataOptions plus the
gate file's ``path``, ``gate``, ``export``, ``quantize``, ``build``,
``prune``, ``bench``), with the same keys as ``dataclasses.asdict`` writes
and the CLI flags set; an unknown key is a one-line error listing the valid
ones. Older recipes still read: ``task:`` at the top (= export.task),
``budgets:`` (= gate) and an ``options:`` mapping of flat keys.

Paths in a recipe (model.local or a model path, data and its
calibration_data / validation_data / prune_data, out)
are relative to the recipe's *project*: the nearest folder above the recipe
holding ``pyproject.toml`` or ``.git`` (else the recipe's own folder), so the
recipe means the same from any working directory. They may not leave it: a
recipe from elsewhere cannot read or replace your files. A project can let its
recipes *read* further folders by listing them in its ``pyproject.toml``
(``[tool.edgekit] recipe-read-roots = ["../shared"]``, relative to the
project); ``out`` must always stay inside the project. ``--allow-outside-paths``
lifts the rule. A recipe cannot turn on ``trust_remote_code``: only the
``--trust-remote-code`` flag can. Paths given as flags are the user's own and
are not restricted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, first_line

SECTIONS = ("gate", "export", "quantize", "build", "prune", "bench")
LEGACY = {"budgets": "gate"}          # older recipes' name of a section
TOP_LEVEL = ("model", "data", "out", "task", "target", "precision", "name", "description", *SECTIONS, *LEGACY,
             "options")
DATA_PATHS = ("calibration_data", "validation_data", "prune_data")


@dataclass
class Recipe:
    model: str | None
    data: str | None
    out: str | None
    options: dict = field(default_factory=dict)   # nested, as OptimizeOptions.from_dict takes them


def _unique_key_loader():
    """yaml's SafeLoader, refusing a key given twice in one mapping: PyYAML keeps the last, so a second
    ``quantize:`` section dropped the first one's settings."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice (line "
                                                            f"{key_node.start_mark.line + 1}; the last one would win)")
                seen.add(key)
            return super().construct_mapping(node, deep)
    return Loader


def load_recipe(path: str | Path, allow_outside_paths: bool = False) -> Recipe:
    """Read a recipe; its paths come back resolved against, and confined to, its project (module docstring)."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_unique_key_loader())  # noqa: S506 (safe)
    except FileNotFoundError:
        raise InputError(f"Recipe '{path}' not found", None, "Pass a YAML file such as models/minilm-l6-sst2.yaml") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"Recipe '{path}' cannot be read", first_line(exc), "Fix the YAML") from None
    if not isinstance(raw, dict):
        raise InputError(f"Recipe '{path}' is not a mapping", None, "Write keys such as model:, data:, target:")
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise InputError(f"Recipe '{path}' has unknown key(s): {', '.join(unknown)}", None,
                         f"Valid keys: {', '.join(TOP_LEVEL)}")
    options = _options(raw, path)
    if "trust_remote_code" in options.get("export", {}):
        raise InputError(f"Recipe '{path}' sets trust_remote_code", "a recipe cannot allow running a model's code",
                         "Remove the key and pass --trust-remote-code yourself if you trust the model")
    data = raw.get("data")
    if isinstance(data, dict):  # its other keys are options (``_options``)
        data = data.get("path")
    box = _Confinement(path, allow_outside_paths)
    for key in DATA_PATHS:
        if options.get("data", {}).get(key) is not None:
            options["data"][key] = box.data(options["data"][key], key)
    out = box.path(raw["out"], "out", writable=True) if raw.get("out") is not None else None
    return Recipe(model=_model_source(raw.get("model"), path, box), data=box.data(data, "data"), out=out,
                  options=options)


def _options(raw: dict, path: Path) -> dict:
    """The recipe's options as OptimizeOptions' nested keys (top-level task -> export.task; budgets -> gate;
    an ``options:`` mapping of older flat keys, e.g. prune_ffn -> prune.ffn, mode -> quantize.mode).

    An option given two ways (``task:`` and ``export: {task: ...}``, ``gate:`` and ``budgets:``, a section and
    ``options:``) is refused: one of them was dropped without a word."""
    options: dict = {}
    origin: dict[tuple[str | None, str], str] = {}

    def put(section: str | None, name: str, value, where: str) -> None:
        key = (section, name)
        if key in origin:
            shown = f"{section}.{name}" if section else name
            raise InputError(f"Recipe '{path}' gives '{shown}' twice: in {origin[key]} and in {where}",
                             "only one of them would be used", "Keep one of them")
        origin[key] = where
        (options if section is None else options.setdefault(section, {}))[name] = value

    for key in ("target", "precision"):
        if key in raw:
            put(None, key, raw[key], f"'{key}:'")
    for name in (*SECTIONS, *LEGACY):
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise InputError(f"Recipe '{path}': '{name}' must be a mapping", None, None)
        for key, value in values.items():
            put(LEGACY.get(name, name), key, value, f"'{name}:'")
    if "task" in raw:
        put("export", "task", raw["task"], "'task:'")
    data = raw.get("data")
    for key, value in (data.items() if isinstance(data, dict) else ()):
        if key != "path":
            put("data", key, value, "'data:'")
    flat = raw.get("options") or {}
    if not isinstance(flat, dict):
        raise InputError(f"Recipe '{path}': 'options' must be a mapping", None, None)
    for key, value in flat.items():
        section, name = _locate(key, path)
        put(section, name, value, "'options:'")
    return {k: v for k, v in options.items() if v != {}}


def _locate(key: str, path: Path) -> tuple[str | None, str]:
    """An older flat key's place in the nested schema; a one-line error for a key that has none."""
    from .options import DERIVED, OptimizeOptions
    from .schema import walk

    leaves = walk(OptimizeOptions, DERIVED)
    name = key[len("prune_"):] if key.startswith("prune_") and key != "prune_data" else key
    found = [leaf for leaf in leaves if leaf.name == name and (leaf.section == "prune") == (name != key)]
    if len(found) != 1:
        raise InputError(f"Recipe '{path}': unknown option '{key}'", None,
                         f"Valid keys: {', '.join(sorted(leaf.key for leaf in leaves))}")
    return found[0].section, found[0].name


class _Confinement:
    """Resolves a recipe's paths against its project root and refuses those that leave the allowed folders."""

    def __init__(self, recipe: Path, allow_outside: bool):
        self.recipe = recipe
        self.allow_outside = allow_outside
        self.root = project_root(recipe)
        self.read_roots = [self.root, *(self.root / r for r in _declared_read_roots(self.root))]

    def locate(self, value, what: str = "path") -> Path:
        """``value`` relative to the project root (absolute paths and ~ as they are); a path must be a string."""
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"Recipe '{self.recipe}': {what} must be a path (a string), got {value!r}"[:200], None,
                             f"Write e.g. {what}: ../shared/data/sst2/dev.tsv" if what != "out" else
                             "Write e.g. out: out/my-model")
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.root / p

    def path(self, value, what: str, writable: bool = False) -> str:
        p = self.locate(value, what).resolve()
        roots = [self.root] if writable else self.read_roots
        if not self.allow_outside and not any(p.is_relative_to(r.resolve()) for r in roots):
            allowed = ", ".join(f"'{r.resolve()}'" for r in roots)
            raise InputError(f"Recipe '{self.recipe}': {what} '{value}' is outside the folders it may "
                             f"{'write' if writable else 'read'}", f"it resolves to '{p}'; allowed: {allowed}",
                             "Move it into the project, list the folder under [tool.edgekit] recipe-read-roots in "
                             "the project's pyproject.toml (reads only), or pass --allow-outside-paths")
        return str(p)

    def data(self, value, what: str) -> str | None:
        """A data path (confined), or a Hugging Face datasets name (passed through)."""
        if value is None:
            return None
        from .data import _looks_like_hub_name

        if not self.locate(value, what).exists() and _looks_like_hub_name(value):
            return value
        return self.path(value, what)


def project_root(recipe: Path) -> Path:
    """The nearest folder above ``recipe`` holding pyproject.toml or .git; else the recipe's folder."""
    here = recipe.resolve().parent
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return here


def _declared_read_roots(root: Path) -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: no declared roots
        return []
    try:
        config = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    roots = config.get("tool", {}).get("edgekit", {}).get("recipe-read-roots", [])
    return [str(r) for r in roots] if isinstance(roots, list) else []


def _model_source(model, path: Path, box: _Confinement) -> str | None:
    if model is None:
        return None
    if isinstance(model, str):
        is_path = box.locate(model).exists() or model.startswith((".", "/", "~")) or model.count("/") != 1
        return box.path(model, "model") if is_path else model  # else a hub id (org/name)
    if not isinstance(model, dict):
        raise InputError(f"Recipe '{path}': 'model' must be a path or a mapping with local:/hub:", None, None)
    local = model.get("local")
    if local and box.locate(local).exists():
        return box.path(local, "model.local")
    return model.get("hub") or (box.path(local, "model.local") if local else None)
