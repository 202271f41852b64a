"""A content-addressed cache of step outputs, so an interrupted ``optimize`` reruns only what is missing.

An entry is a complete edgekit artifact at ``<root>/<step>/<key>/``, where
``key`` hashes the step's inputs (content hashes, not paths), its options, the
tool versions (:func:`edgekit.artifact.versions`) and edgekit's own source
(so editing edgekit in place, without a version bump, never serves an entry
the old code made). Entries are written the
way every artifact is (``atomic_dir``: a temporary sibling renamed into place)
and checked on every hit against the file hashes in their manifest; a corrupt
entry is rebuilt, never served.

Concurrent runs sharing a cache take an exclusive ``fcntl.flock`` on
``<root>/<step>/<key>.lock`` while they look up or build that key, so a second
run waits for the first and then reuses its entry. Lock files are never
deleted (deleting a lock file another process holds would break the lock).

``root`` defaults to ``$EDGEKIT_CACHE``, else ``~/.cache/edgekit``. Entries
are never evicted: delete the folder to reclaim the space.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .artifact import MANIFEST, read_manifest, sha256_file, versions
from .atomic import sweep_stale_temps
from .errors import InputError

CACHE_ENV = "EDGEKIT_CACHE"
#: test-only: ``STEP:MARKER`` makes a miss of STEP stop for good at its first file write into the entry's
#: temporary folder, after writing MARKER (this process's pid): a test can then kill a build mid-write
PAUSE_ENV = "EDGEKIT_TEST_PAUSE_IN_STEP"


def default_cache_dir() -> Path:
    """``$EDGEKIT_CACHE`` when set, else ``~/.cache/edgekit``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgekit"


@dataclass
class Slot:
    """One cache key, held under its lock: ``hit`` says whether ``path`` already holds a complete entry."""

    path: Path
    hit: bool


class StepCache:
    """Step outputs keyed by content; see the module docstring."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def key(self, step: str, inputs: dict, options: dict) -> str:
        """A hex digest of the step name, its inputs' content hashes, its options and the tool versions."""
        payload = {"step": step, "inputs": inputs, "options": options, "versions": versions(),
                   "edgekit_source": edgekit_source_digest()}
        text = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    @contextlib.contextmanager
    def slot(self, step: str, key: str) -> Iterator[Slot]:
        """Hold the lock of ``key`` while the caller reads the entry or builds it into ``slot.path``.

        The caller builds with an atomic writer (every edgekit step is one),
        so a killed build leaves only a temporary sibling, which the next
        holder of the lock removes.
        """
        folder = self.root / step
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = open(folder / f"{key}.lock", "a+b")  # noqa: SIM115  (closed in finally)
        except OSError as exc:
            raise InputError(f"Cache folder '{folder}' cannot be written", exc.strerror or str(exc),
                             "Pass --cache-dir with a writable folder, or --no-cache") from None
        try:
            import fcntl

            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            path = folder / key
            sweep_stale_temps(path, any_owner=True)  # we hold the lock: no live writer of this key exists
            hit = entry_is_complete(path)
            if not hit and path.exists():
                shutil.rmtree(path)
            if not hit and os.environ.get(PAUSE_ENV, "").partition(":")[0] == step:
                _pause_at_first_write(path, Path(os.environ[PAUSE_ENV].partition(":")[2]))
            yield Slot(path, hit)
        finally:
            lock.close()  # releases the flock


def _pause_at_first_write(entry: Path, marker: Path) -> None:
    """Test hook (see PAUSE_ENV): block forever at the first write into a temporary sibling of ``entry``."""
    import sys
    import time

    prefix = str(entry.resolve().parent / f".{entry.name}.tmp-")
    fired = []

    def hook(event: str, args: tuple) -> None:
        if fired or event != "open" or not str(args[0]).startswith(prefix):
            return
        mode, flags = args[1], args[2] if len(args) > 2 else 0
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags & (os.O_WRONLY | os.O_RDWR)):
            fired.append(True)
            marker.write_text(str(os.getpid()))
            while True:  # the test kills this process now
                time.sleep(3600)

    sys.addaudithook(hook)


@functools.lru_cache(maxsize=1)
def edgekit_source_digest() -> str:
    """One sha256 over edgekit's Python files (read once per process)."""
    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        h.update(str(f.relative_to(package)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def entry_is_complete(path: Path) -> bool:
    """True when ``path`` has a manifest and every file it lists is there with the recorded sha256."""
    manifest = read_manifest(path) if path.is_dir() else {}
    files = manifest.get("files")
    if not files or not isinstance(files, dict) or not (path / MANIFEST).is_file():
        return False
    for name, digest in files.items():
        f = path / name
        if not f.is_file() or sha256_file(f) != digest:
            return False
    return True


def file_digest(path: str | Path | None) -> str | None:
    """The sha256 of a data file, or the string itself for a non-file source (e.g. a datasets name)."""
    if path is None:
        return None
    p = Path(path)
    return sha256_file(p) if p.is_file() else str(path)
