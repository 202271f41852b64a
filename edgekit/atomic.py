"""Temporary siblings that every atomic writer stages into, and what removes them when a run is stopped.

A writer creates ``.<name>.tmp-<pid>-*`` beside its target, fills it and
renames it into place; on an exception it removes the temporary. Python runs a
signal handler between any two bytecodes, so a Ctrl-C or SIGTERM can land where
no ``try`` covers the temporary yet: after ``mkdtemp`` made the folder but
before it returned, or after a context manager's ``__enter__`` returned but
before its ``with`` body began. So each temporary is created with SIGINT and
SIGTERM held off and recorded in a registry in the same held moment; the CLI's
error boundary calls :func:`remove_unfinished` when a run stops, which removes
whatever is still recorded. (A SIGKILL leaves the temporary behind; its pid in
the name lets the next writer of the same target sweep it.)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator

#: temporaries not yet renamed into place or removed -> the pid that created them (a forked child inherits
#: the parent's entries and must leave them alone)
_UNFINISHED: dict[Path, int] = {}


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Defer SIGINT/SIGTERM to the end of the block, then deliver the first that came; main thread only.

    The Python handlers are swapped for one that only records: blocking the
    signals (``pthread_sigmask``) would not do, since the kernel then hands a
    process-directed signal to another thread (ONNX Runtime's, torch's) and
    Python runs the handler in the main thread at once anyway.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not None:  # None: a handler not set from Python, which we could not restore
            previous[sig] = signal.signal(sig, lambda signum, _frame: came.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if came:
            signal.raise_signal(came[0])  # now the real handler runs (Ctrl-C -> KeyboardInterrupt, ...)


def temp_dir(prefix: str, parent: Path) -> Path:
    """``mkdtemp`` in ``parent``, recorded as unfinished before any signal can interrupt (raises OSError)."""
    with signals_held():
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        _UNFINISHED[tmp] = os.getpid()
    return tmp


def finished(tmp: Path) -> None:
    """``tmp`` was renamed into place or removed by its writer: nothing left to clean."""
    _UNFINISHED.pop(tmp, None)


def discard(tmp: Path) -> None:
    """Remove ``tmp`` (a folder or a file) and forget it."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            tmp.unlink()
    finished(tmp)


def remove_unfinished() -> list[Path]:
    """Remove every temporary this process created and did not finish; returns them.

    The CLI's error boundary calls it when a command ends; it also runs at
    interpreter exit, for a script that calls the library and is stopped.
    """
    left = sorted(tmp for tmp, pid in _UNFINISHED.items() if pid == os.getpid())
    with signals_held():
        for tmp in left:
            discard(tmp)
    return left


def write_file(target: Path, write: Callable[[Path], object]) -> None:
    """Write ``target`` whole or not at all: ``write(partial)`` fills a temporary sibling that replaces it."""
    target = Path(target)
    with signals_held():
        partial = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        _UNFINISHED[partial] = os.getpid()
    try:
        write(partial)
        os.replace(partial, target)
    finally:
        discard(partial)  # after the replace there is nothing at ``partial``: this only forgets it


atexit.register(remove_unfinished)

__all__ = ["signals_held", "temp_dir", "finished", "discard", "remove_unfinished", "write_file"]
