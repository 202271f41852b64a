"""The fp32 ONNX each search candidate starts from: the model's export, or a pruned and re-exported copy.

The model is exported once (through the step cache when one is given). A
candidate with ``prune_ffn``/``prune_layers`` starts from
:func:`edgekit.prune.prune` (structured pruning + recovery fine-tune on the
training rows, never on the gate data) exported again; each pruning setting
is made once, when the first candidate that needs it is about to run, and
kept in the search's work folder for ``--resume``. A setting that cannot be
made fails the candidates that need it, not the search.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from .artifact import Artifact, resolve
from .cache import entry_is_complete
from .errors import EdgekitError, InputError, ModelError
from .search_trial import Candidate, TrialSetup


class Sources:
    """``setup(candidate)``: the :class:`TrialSetup` of a candidate, its source made on first use."""

    def __init__(self, model, data, options, work: Path, cache, log: Callable[[str], None]):
        from .hf import fetch

        self.options, self.data, self.work, self.log = options, data, work, log
        src = resolve(fetch(model))
        if src.kind not in ("hf", "onnx"):
            raise ModelError(f"'{model}' cannot be searched", f"it is a {src.kind} artifact",
                             "Pass the fine-tuned model folder or its fp32 ONNX export")
        self.hf = src if src.kind == "hf" else None
        self.gate, self.calibration, self.validation = _rows(src, data, options.data)
        self.base = src if src.kind == "onnx" else self._export_base(src, cache)
        self.base_setup = _setup(self.base.path, self, options)
        self._pruned: dict[str, Artifact | EdgekitError] = {}

    def setup(self, candidate: Candidate) -> TrialSetup:
        """Raises the EdgekitError of a pruning setting that could not be made."""
        return replace(self.base_setup, source=str(self.source(candidate).path))

    def source(self, candidate: Candidate) -> Artifact:
        tag = candidate.prune_tag
        if not tag:
            return self.base
        if tag not in self._pruned:
            try:
                self._pruned[tag] = self._pruned_export(candidate, tag)
            except EdgekitError as exc:
                self._pruned[tag] = exc
        made = self._pruned[tag]
        if isinstance(made, EdgekitError):
            raise made
        return made

    def _export_base(self, src: Artifact, cache) -> Artifact:
        from .pipeline import export_step

        if entry_is_complete(self.work / "fp32"):  # a resumed search's export
            return resolve(self.work / "fp32")
        return export_step(src, self.gate, self.options.export, self.work / "fp32", cache)[0]

    def _pruned_export(self, candidate: Candidate, tag: str) -> Artifact:
        from .data import load_dataset
        from .export import export
        from .options import same_file
        from .prune import prune

        folder, o = self.work / "pruned" / tag, self.options
        if entry_is_complete(folder / "onnx"):
            return resolve(folder / "onnx")
        if self.hf is None:
            raise InputError(f"Cannot prune for candidate {candidate.id}", "the search was given an ONNX model",
                             "Pass the fine-tuned model folder to search pruning ratios")
        train = o.data.prune_data or o.data.calibration_data
        if train is None or same_file(train, self.data):
            raise InputError("Pruning needs training data", "importance and recovery must not use the gate data",
                             "Pass --prune-data (or --calibration-data) with labeled training rows")
        started = time.perf_counter()
        self.log(f"pruning {tag}: started (prune + recovery on {train}, then export)")
        rows = load_dataset(train, o.data.text_column, o.data.label_column, split="train")
        prune(self.hf.path, rows, folder / "hf", replace(o.prune, ffn=candidate.prune_ffn,
                                                          layers=candidate.prune_layers), force=True)
        art = export(folder / "hf", folder / "onnx", o.export, data=self.gate, force=True)
        self.log(f"pruning {tag}: done in {time.perf_counter() - started:.0f} s")
        return art


def _rows(src: Artifact, data, d) -> tuple:
    """The gate, calibration and validation rows, each file read once; fails before any trial on data the
    model cannot be judged on (one line, not N failed trials)."""
    from .check import gate_reader, labeled_data

    read = gate_reader(src)  # the task's reader: a token classifier's words and tags were read as sentences
    gate = read(data, d.text_column, d.label_column)
    labeled_data(src, gate, max_samples=d.max_samples)
    calibration = gate if d.calibration_data is None else read(d.calibration_data, d.text_column,
                                                               require_labels=False)
    validation = calibration if d.validation_data is None else read(d.validation_data, d.text_column,
                                                                    d.label_column, require_labels=False)
    return gate, calibration, validation


def _setup(source: Path, rows: Sources, options) -> TrialSetup:
    from .runtime.session import default_threads

    return TrialSetup(source=str(source), gate=rows.gate, calibration=rows.calibration, validation=rows.validation,
                      target=options.target, max_samples=options.data.max_samples,
                      eval_batch_size=options.eval_batch_size, validation_samples=options.validation_samples,
                      latency_iterations=options.latency_iterations, latency_seconds=options.latency_seconds,
                      threads=options.threads or default_threads())
