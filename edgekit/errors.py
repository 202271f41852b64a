"""The only errors a user sees without a traceback.

Every user-facing failure is an :class:`EdgekitError` carrying three parts:
what failed, why, and how to fix it. The CLI prints ``Error: <message>`` on
one line and exits with the error's ``exit_code``.
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 200, typed: bool = False) -> str:
    """The first non-blank line of ``exc``'s text, cut to ``limit`` characters (its type name when it has no text):
    the "why" of a one-line error made from an exception a library raised. ``typed``: ``Type: line``."""
    line = next((part.strip() for part in str(exc).splitlines() if part.strip()), "")[:limit]
    if typed:
        return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    return line or type(exc).__name__


class EdgekitError(Exception):
    """Base of every expected failure. ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, what: str, why: str | None = None, fix: str | None = None):
        self.what = what
        self.why = why
        self.fix = fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = [self.what.rstrip(".")]
        if self.why:
            parts.append(self.why.rstrip("."))
        text = ": ".join(parts) + "."
        if self.fix:
            text += " " + self.fix.rstrip(".") + "."
        return " ".join(text.split())  # always one line


class InputError(EdgekitError):
    """A path, model folder or option the user gave cannot be used."""


def refuse_invalid(checks, hint: bool = True) -> None:
    """``Invalid FLAG VALUE: it must be VALID`` for the first ``(flag, value, ok, valid)`` of ``checks`` whose
    ``ok`` is false (``hint``: and ``Pass FLAG VALID``): the option checks run before any model or data is read."""
    for flag, value, ok, valid in checks:
        if not ok:
            fix = f"Pass {flag} {valid}" if hint else None
            raise InputError(f"Invalid {flag} {value}", f"it must be {valid}", fix)


class DataError(InputError):
    """A dataset is missing, empty, malformed or does not fit the model."""


class ModelError(InputError):
    """A model folder or ONNX file is missing, corrupt or unsupported."""


class ExportValidationError(EdgekitError):
    """The exported ONNX disagrees with the original beyond tolerance."""

    def __init__(self, failures: list[tuple[str, float, float]], label_agreement: float | None = None):
        self.failures = failures
        listed = "; ".join(f"{name}: max |diff| {diff:.3g} > tolerance {tol:.3g}" for name, diff, tol in failures)
        why = listed if label_agreement is None else f"{listed}; label agreement {label_agreement:.4f}"
        super().__init__(
            "Exported ONNX does not match the PyTorch model",
            why,
            "Try another --opset, check the model for data-dependent control flow, or raise --atol if the difference is acceptable",
        )


class MissingDependencyError(EdgekitError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str, cause: BaseException | None = None):
        self.module = module
        self.extra = extra
        detail = f"{type(cause).__name__}: {cause}" if cause else "not installed"
        super().__init__(
            f"Optional dependency '{module}' is not available",
            detail,
            f"Install it with: pip install 'edgekit[{extra}]'",
        )


class BackendError(EdgekitError):
    """A runtime or build backend failed (ONNX Runtime, TensorRT, TensorRT-RTX)."""


class GateFailedError(EdgekitError):
    """An accuracy or latency gate failed; the artifact is kept and marked failed."""

    exit_code = 3


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C (the CLI installs the handler) so every atomic writer removes its temporary files."""

    signal_number = 15
