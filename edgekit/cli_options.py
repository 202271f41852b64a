"""CLI flags derived from an options schema (:mod:`edgekit.schema`), and ``--help`` written in sections.

A flag's name is its field's name (``calibration_method`` -> ``--calibration-method``);
pruning's fields carry the ``prune-`` prefix (``--prune-ffn``), and a field
whose name another section (or a hand-written flag) also uses is prefixed with
its section (``quantize.seed`` -> ``--quantize-seed``). A field may name its
flag in its metadata (``flag``, ``off_flag`` for the negative of a boolean).
Every generated flag defaults to None, so only what the user typed overrides
a recipe; the help shows the schema's default.

Click has no option groups: :class:`SectionedCommand` writes the options of
each ``group`` (a concern: data, gate, target, quantization, ...) under its
own heading.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from .schema import Leaf, walk


class PathArg(click.Path):
    """A path that is not empty ('--out ""' was the working directory: an artifact written among the user's files)."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("is empty: pass a path", param, ctx)
        return super().convert(value, param, ctx)


#: the type of every path argument and option of the CLI
path_arg = PathArg(path_type=Path)

SECTION_GROUPS = {"data": "Data", "gate": "Gate (accuracy)", "export": "Target and export",
                  "quantize": "Quantization", "build": "Engine build (TensorRT targets)", "prune": "Pruning",
                  "bench": "Bench (latency)"}
GROUP_ORDER = ("Arguments", "Data", "Gate (accuracy)", "Target and export", "Quantization", "Engine build (TensorRT targets)",
               "Pruning", "Search", "Bench (latency)", "Output", "Other")
ALWAYS_PREFIXED = {"prune"}


class GroupedOption(click.Option):
    """A click.Option that knows its --help section."""

    def __init__(self, *args, group: str = "Other", **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group


class SectionedCommand(click.Command):
    """``--help`` with one section per concern (GROUP_ORDER), options in declaration order inside each."""

    argument_help: dict[str, str] = {}   # an argument's help, by its name (Click arguments take none)

    def format_options(self, ctx, formatter):
        by_group: dict[str, list] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Argument):
                by_group.setdefault("Arguments", []).append((param.make_metavar(ctx),
                                                             self.argument_help.get(param.name, "")))
                continue
            record = param.get_help_record(ctx)
            if record is None:
                continue
            by_group.setdefault(getattr(param, "group", "Other"), []).append(record)
        for group in [*GROUP_ORDER, *sorted(set(by_group) - set(GROUP_ORDER))]:
            if by_group.get(group):
                with formatter.section(group if group == "Arguments" else f"{group} options"):
                    formatter.write_dl(by_group[group])


def flag_name(leaf: Leaf, clashes: set[str]) -> str:
    if leaf.metadata.get("flag"):
        return leaf.metadata["flag"]
    name = leaf.name.replace("_", "-")
    if leaf.section in ALWAYS_PREFIXED or (leaf.section and leaf.name in clashes):
        return f"{leaf.section}-{name}"
    return name


def param_name(leaf: Leaf) -> str:
    return f"{leaf.section}__{leaf.name}" if leaf.section else leaf.name


def schema_options(cls, skip: set[str], reserved: set[str]) -> list[tuple[Leaf, GroupedOption]]:
    """One click option per leaf field of ``cls`` (minus ``skip``), with the defaults of ``cls()`` in its help."""
    leaves = walk(cls, skip)
    counts = Counter(leaf.name for leaf in leaves if leaf.section not in ALWAYS_PREFIXED)
    clashes = {n for n, c in counts.items() if c > 1} | {r.replace("-", "_") for r in reserved}
    defaults = cls()
    out = []
    for leaf in leaves:
        flag = flag_name(leaf, clashes)
        default = getattr(getattr(defaults, leaf.section), leaf.name) if leaf.section else getattr(defaults, leaf.name)
        out.append((leaf, _option(leaf, flag, default)))
    return out


def _option(leaf: Leaf, flag: str, default) -> GroupedOption:
    meta = leaf.metadata
    group = "Target and export" if meta.get("group") == "target" else SECTION_GROUPS.get(leaf.section, "Other")
    shown = _shown(default)
    text = f"{meta['help']} [default: {shown}]" if shown is not None else meta["help"]
    common = {"default": None, "help": text, "group": group}
    if leaf.kind is bool:
        off = meta.get("off_flag") or f"no-{flag}"
        return GroupedOption([f"--{flag}/--{off}", param_name(leaf)], **common)
    if leaf.kind is list:
        return GroupedOption([f"--{flag}", param_name(leaf)], type=str, callback=_list_of(leaf.item or str),
                             metavar="A,B,...", **common)
    kind = click.Choice(list(meta["choices"])) if meta.get("choices") else leaf.kind
    return GroupedOption([f"--{flag}", param_name(leaf)], type=kind, **common)


def _shown(default) -> str | None:
    if default is None:
        return None
    if isinstance(default, list):
        return ",".join(map(str, default)) if default else None
    return str(default)


def _list_of(item: type):
    def parse(ctx, param, value):
        if value is None:
            return None
        out = []
        for text in (v.strip() for v in str(value).split(",") if v.strip()):
            try:
                out.append(item(text) if item is not bool else text.lower() in ("1", "true", "yes", "on"))
            except ValueError:
                raise click.BadParameter(f"'{text}' is not a valid {item.__name__}") from None
        return out
    return parse


def add_schema_options(cls, skip: set[str], reserved: set[str]):
    """Decorator: the schema's options on a command (they arrive as ``section__field`` keyword arguments)."""
    options = schema_options(cls, skip, reserved)

    def decorate(func):
        for _, option in reversed(options):
            func.__click_params__ = getattr(func, "__click_params__", [])
            func.__click_params__.append(option)
        return func
    return decorate


def nested(flags: dict) -> dict:
    """``{"quantize__mode": "static", "target": "cpu", "data__text_column": None}`` ->
    ``{"quantize": {"mode": "static"}, "target": "cpu"}`` (flags left unset are dropped)."""
    out: dict = {}
    for key, value in flags.items():
        if value is None:
            continue
        section, _, name = key.partition("__")
        if name:
            out.setdefault(section, {})[name] = value
        else:
            out[key] = value
    return out


def dotted(values: dict) -> set[str]:
    """The keys of a nested dict as dotted names: {"quantize": {"mode": 1}} -> {"quantize.mode"}."""
    out = set()
    for key, value in values.items():
        if isinstance(value, dict):
            out |= {f"{key}.{k}" for k in value}
        else:
            out.add(key)
    return out


def merge(base: dict, override: dict) -> dict:
    """``override`` over ``base``, one level of sections deep."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def given_flags() -> set[str]:
    """The current command's parameters the user typed (not left at their defaults)."""
    ctx = click.get_current_context()
    return {k for k in ctx.params if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT}


def refuse_given(ignored: dict[str, str]) -> None:
    """An InputError for the first typed flag among ``ignored`` (parameter name -> why it cannot apply): each was
    accepted and ignored before."""
    from .errors import InputError  # noqa: PLC0415

    given = given_flags()
    ctx = click.get_current_context()
    spelled = {p.name: max(p.opts, key=len) for p in ctx.command.params if isinstance(p, click.Option)}
    for name in (k for k in ignored if k in given):  # the flag as typed (--json, not the parameter as_json)
        raise InputError(f"{spelled.get(name, '--' + name.replace('_', '-'))} does not apply here", ignored[name],
                         "Drop it")
