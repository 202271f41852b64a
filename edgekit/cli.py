"""The ``edgekit`` command: a Click group; each command parses options, calls one library function, prints.

This module is the one error boundary: an EdgekitError prints ``Error: ...`` on
one line and exits with its code (1, or 3 for a failed gate); usage errors exit
2; ``EDGEKIT_DEBUG=1`` re-raises everything with its traceback.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import click

from .errors import EdgekitError

DEBUG = os.environ.get("EDGEKIT_DEBUG", "") not in ("", "0")


class EdgekitGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            if DEBUG:
                raise
            click.echo(f"Error: {exc.message}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            if DEBUG:
                raise
            click.echo("Error: interrupted: nothing half-written was kept. Run the command again to redo it.", err=True)
            sys.exit(130)
        except OSError as exc:
            if DEBUG or exc.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f" '{exc.filename}'" if exc.filename else ""
            click.echo(f"Error: writing{where} failed: {exc.strerror or exc}. Free space or choose another --out; "
                       "nothing half-written was kept.", err=True)
            sys.exit(1)


_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def emit(result: dict, as_json: bool, text: str) -> None:
    """Print ``result`` as JSON (``--json``) or the human text."""
    click.echo(json.dumps(result, indent=2, default=str) if as_json else text)


path_arg = click.Path(path_type=Path)


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgekit")
def main() -> None:
    """edgekit: fine-tuned model -> ONNX -> int8 / TensorRT, gated on accuracy and latency."""


@main.command("export")
@click.argument("model", type=path_arg)
@click.option("--out", required=True, type=path_arg, help="Output folder (model.onnx + tokenizer + config).")
@click.option("--opset", default=18, show_default=True, type=int)
@click.option("--task", default=None, help="Task (default: inferred from the model's architecture).")
@click.option("--data", default=None, help="Sentences to validate on (tsv/csv/jsonl); default: a built-in handful.")
@click.option("--text-column", default=None)
@click.option("--atol", default=1e-4, show_default=True, type=float, help="Max |diff| allowed per output.")
@click.option("--trust-remote-code", is_flag=True, help="Run code shipped with the model (off by default).")
@click.option("--force", is_flag=True, help="Replace a non-empty OUT that edgekit did not write.")
def export_cmd(model, out, opset, task, data, text_column, atol, trust_remote_code, force):
    """Export a Hugging Face MODEL folder to ONNX and validate it against PyTorch."""
    from .export import ExportOptions, export

    options = ExportOptions(opset=opset, task=task, atol=atol, trust_remote_code=trust_remote_code)
    art = export(model, out, options, data=data, text_column=text_column, force=force)
    v = art.manifest["validation"]
    diffs = ", ".join(f"{k} {d:.2e}" for k, d in v["max_abs_diff"].items())
    agree = f", label agreement {v['label_agreement']:.4f}" if v["label_agreement"] is not None else ""
    click.echo(f"Exported {art.model_file} ({art.manifest['task']}, opset {opset}): max |diff| {diffs}{agree} "
               f"on {v['samples']} sentences.")
