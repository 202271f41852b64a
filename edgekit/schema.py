"""One schema for options: dataclass fields with help, walked by the CLI, recipes and ``from_dict``.

Every options dataclass declares its fields with :func:`opt`, which puts the
help text (and, where useful, the valid choices or a flag name) in the field's
metadata. :func:`walk` lists the fields of a composed options class
(``OptimizeOptions`` holds ``ExportOptions``, ``QuantizeOptions``, ... as
they are), so the CLI derives its flags from the same fields the Python call
and the recipe use (see :mod:`edgekit.cli_options`). Pure Python, no heavy
imports.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import MISSING
from typing import Any

from .errors import InputError


def opt(default: Any = MISSING, *, help: str, factory: Any = MISSING, **meta) -> Any:  # noqa: A002 (the field's help)
    """A dataclass field whose metadata carries ``help`` and optional ``choices``, ``flag``, ``off_flag``,
    ``group`` (the --help section) and ``metavar``."""
    metadata = {"help": help, **meta}
    if factory is not MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One scalar/list field of a (composed) options class."""

    section: str | None      # the nested options attribute ('quantize', ...); None = a top-level field
    name: str                # the field's name in its dataclass
    kind: type               # bool, int, float, str or list
    item: type | None        # the element type of a list
    optional: bool           # None is allowed
    default: Any
    metadata: dict

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


def hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def sections(cls) -> dict[str, type]:
    """The nested options dataclasses of ``cls``: {attribute: class}."""
    out = {}
    for f in dataclasses.fields(cls):
        t = hints(cls)[f.name]
        if dataclasses.is_dataclass(t):
            out[f.name] = t
    return out


def walk(cls, skip: set[str] = frozenset()) -> list[Leaf]:
    """Every leaf field of ``cls`` and its sections, in declaration order; ``skip`` holds dotted keys."""
    leaves = []
    subs = sections(cls)
    for f in dataclasses.fields(cls):
        if f.name in subs:
            leaves += [leaf for leaf in _leaves(subs[f.name], f.name) if leaf.key not in skip]
        else:
            leaves += [leaf for leaf in _leaves(cls, None, only=f.name) if leaf.key not in skip]
    return leaves


def _leaves(cls, section: str | None, only: str | None = None) -> list[Leaf]:
    types = hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if only is not None and f.name != only:
            continue
        kind, item, optional = _kind(types[f.name])
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else None)  # type: ignore[misc]
        out.append(Leaf(section, f.name, kind, item, optional, default, dict(f.metadata)))
    return out


def _kind(hint) -> tuple[type, type | None, bool]:
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else hint
    origin = typing.get_origin(hint)
    if origin is list:
        inner = typing.get_args(hint)[0] if typing.get_args(hint) else str
        inner_args = [a for a in typing.get_args(inner) if a is not type(None)]
        return list, (inner_args[0] if inner_args else inner), optional
    if hint in (bool, int, float, str):
        return hint, None, optional
    return str, None, optional


def check_keys(cls, values: dict, what: str, skip: set[str] = frozenset()) -> None:
    """A one-line InputError naming the unknown keys of ``values`` and listing the valid ones."""
    known = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"Unknown {what}: {', '.join(map(str, unknown))}", None,
                         f"Valid keys: {', '.join(known)}")


WANTED = {bool: "true or false", int: "a whole number", float: "a number", list: "a list", str: "a text"}


def check_types(cls, values: dict, prefix: str = "") -> None:
    """A one-line InputError for a value of the wrong type (a recipe's ``max_accuracy_drop: lots`` reached a
    comparison and raised TypeError there); numbers, booleans, lists and texts are checked, ints pass as
    floats."""
    for leaf in _leaves(cls, None):
        if leaf.name not in values:
            continue
        value = values[leaf.name]
        if leaf.kind not in WANTED:
            continue  # strings and anything else: the option's own validate says what it accepts
        if value is None:
            ok = leaf.optional
        elif leaf.kind is bool:
            ok = isinstance(value, bool)
        elif leaf.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif leaf.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif leaf.kind is str:  # a list or mapping reached a dict lookup as a TypeError (export task: [a])
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, (list, tuple))
        if not ok:
            example = f"Write e.g. {leaf.name}: {json.dumps(leaf.default, default=str)}"
            if leaf.kind is str:  # YAML reads 2:4 as the number 124, yes as true
                example = ("Quote the value as the recipe writes it (YAML turns some texts into numbers: 2:4 "
                           "into 124)") if isinstance(value, (int, float)) else \
                    (example if leaf.default is not None else f"Write {leaf.name}: followed by one text")
            raise InputError(f"Option '{prefix}{leaf.name}' must be {WANTED[leaf.kind]}", f"got {value!r}",
                             example if leaf.default is not None or leaf.kind is str else None)
