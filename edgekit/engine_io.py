"""Atomic outputs of an engine build: the engine, its sidecar JSON, and the ONNX it was built from.

Everything is staged in a hidden temporary folder beside the engine and
renamed into place only when the whole build succeeded; on any failure
(including Ctrl-C) the staging folder is removed and nothing is half-written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .artifact import sha256_file, versions
from .atomic import discard, signals_held, temp_sibling, write_file
from .errors import InputError


def sidecar_path(engine: Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    return Path(str(engine) + ".json")


class EngineOutputs:
    """Context manager: stage files, then commit them (engine before its sidecar) on success."""

    def __init__(self, engine: Path):
        self.engine = Path(engine)
        self.staged: list[Path] = []
        self._cache: tuple[Path, bytes] | None = None
        self.tmp: Path | None = None
        self.created: list[Path] = []

    def __enter__(self) -> "EngineOutputs":
        folder = self.engine.parent
        for target in (self.engine, sidecar_path(self.engine)):
            if target.is_dir():  # os.replace onto it would fail after the build, half-way through the commit
                raise InputError(f"'{target}' is a folder", "the engine build writes a file there",
                                 "Remove it, or choose another --out")
        self.created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.tmp = temp_sibling(self.engine)  # after sweeping what a killed build of this engine left
        except OSError as exc:
            self._remove_created()
            raise InputError(f"Engine folder '{folder}' cannot be written", exc.strerror,
                             "Choose a writable --out") from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                with signals_held():  # the engine and its sidecar land together or not at all
                    self._commit()
        finally:
            discard(self.tmp)
            if exc_type is not None:
                self._remove_created()

    def _remove_created(self) -> None:
        """The folders this build made for --out, removed again after a failure (while they are empty)."""
        for folder in self.created:
            try:
                folder.rmdir()
            except OSError:  # not empty (something else wrote there), or already gone
                break

    def stage(self, name: str) -> Path:
        path = self.tmp / name
        self.staged.append(path)
        return path

    def final(self, path: Path) -> Path:
        """Where a staged file will be once committed."""
        path = Path(path)
        return self.engine.parent / path.name if self.tmp and path.parent == self.tmp else path

    def write_engine(self, plan) -> None:
        path = self.stage(self.engine.name)
        with open(path, "wb") as f:
            f.write(memoryview(plan))

    def write_timing_cache(self, path: Path, data) -> None:
        self._cache = (path, bytes(memoryview(data)))

    def write_sidecar(self, record: dict, options: dict) -> dict:
        engine = self.tmp / self.engine.name
        sidecar = {"edgekit_artifact": "engine", "step": "build", "engine": self.engine.name,
                   "engine_sha256": sha256_file(engine),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record,
                   "options": options, "versions": versions()}
        path = self.stage(sidecar_path(self.engine).name)
        path.write_text(json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n")
        return sidecar

    def _commit(self) -> None:
        # extra files first (e.g. an ONNX's external .data), then ONNX, engine, and the sidecar last
        names = {p.name for p in self.staged}
        for path in sorted(self.tmp.iterdir()):
            if path.name not in names:
                os.replace(path, self.engine.parent / path.name)
        for path in self.staged:
            if path.exists():
                os.replace(path, self.engine.parent / path.name)
        if self._cache is not None:
            target, data = self._cache
            target.parent.mkdir(parents=True, exist_ok=True)
            write_file(target, lambda partial: partial.write_bytes(data))
