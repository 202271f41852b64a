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
the name lets the next writer of the same target sweep it: :func:`sweep_stale_temps`.)

A signal must not raise while a module is being imported either: a native
extension's initialisation calls back into Python (nanobind building ``onnx``'s
enums), and an exception raised there ends in ``std::terminate`` -- the process
aborts or segfaults with its temporaries in place. :func:`import_safe` wraps a
handler so that such a signal is sent again once the import is over.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
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
def signals_held(deliver: bool = True) -> Iterator[None]:
    """Defer SIGINT/SIGTERM to the end of the block, then deliver the first that came; main thread only.

    The Python handlers are swapped for one that only records: blocking the
    signals (``pthread_sigmask``) would not do, since the kernel then hands a
    process-directed signal to another thread (ONNX Runtime's, torch's) and
    Python runs the handler in the main thread at once anyway. Each handler
    is read before it is swapped and each is put back even if a real handler
    fires while the others are put back. ``deliver=False`` drops what came
    (for cleanup on the way out, when a signal already decided the exit).
    """
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    came: list[int] = []  # yielded: a long native call can poll it to stop early (build_interruptibly)
    previous: list[tuple[int, object]] = []
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(sig)
            # None: a handler not set from Python, which we could not put back; SIG_IGN: nothing to defer
            if handler is not None and handler != signal.SIG_IGN:
                previous.append((sig, handler))
                signal.signal(sig, lambda signum, _frame: came.append(signum))
        yield came
    finally:
        _restore(previous)
        if came and deliver:
            signal.raise_signal(came[0])  # now the real handler runs (Ctrl-C -> KeyboardInterrupt, ...)


#: how long a signal that landed mid-import waits before it is sent again
IMPORT_RETRY_S = 0.05


def import_safe(handler: Callable[[int, object], object]) -> Callable[[int, object], object]:
    """``handler``, except that a signal landing while a module is being imported is sent again 50 ms later.

    Imports are short, so the signal is delivered as soon as the import is
    over, at a point where raising is safe. See the module docstring for why.
    """
    def on_signal(signum, frame):
        if _importing(frame):
            timer = threading.Timer(IMPORT_RETRY_S, os.kill, (os.getpid(), signum))
            timer.daemon = True
            timer.start()
            return None
        return handler(signum, frame)

    return on_signal


def _importing(frame) -> bool:
    """True when ``frame`` or a caller of it is importlib's machinery (a module body is running)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _restore(handlers: list[tuple[int, object]]) -> None:
    """Put each handler back; one that fires as soon as it is back cannot keep the rest from going back."""
    if handlers:
        try:
            signal.signal(*handlers[0])
        finally:
            _restore(handlers[1:])


def temp_dir(prefix: str, parent: Path) -> Path:
    """``mkdtemp`` in ``parent``, recorded as unfinished before any signal can interrupt (raises OSError)."""
    with signals_held():
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        _UNFINISHED[tmp] = os.getpid()
    return tmp


def temp_sibling(target: Path) -> Path:
    """A fresh folder ``.<name>.tmp-<pid>-*`` beside ``target``, recorded as unfinished (raises OSError).

    What a killed writer of ``target`` left is swept first.
    """
    target = Path(target)
    sweep_stale_temps(target)
    return temp_dir(f"{_temp_name(target)}-", target.resolve().parent)


def _temp_name(target: Path) -> str:
    """``.<name>.tmp-<pid>``: the one place that spells the name :func:`sweep_stale_temps` reads."""
    return f".{target.name}.tmp-{os.getpid()}"


def finished(tmp: Path) -> None:
    """``tmp`` was renamed into place or removed by its writer: nothing left to clean."""
    _UNFINISHED.pop(tmp, None)


def discard(tmp: Path) -> None:
    """Remove ``tmp`` (a folder or a file) and forget it once it is gone (what could not be removed now stays
    recorded, so :func:`remove_unfinished` tries again when the run ends)."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            tmp.unlink()
    if not os.path.lexists(tmp):
        finished(tmp)


@contextlib.contextmanager
def work_folder(tmp: Path) -> Iterator[Path]:
    """Scratch space inside a writer's temporary folder ``tmp``: removed before ``tmp`` is renamed into place,
    and with ``tmp`` when the run stops. Unlike a folder in /tmp, what a killed (SIGKILL) run leaves here goes
    when the next writer of the same target sweeps ``tmp``."""
    work = Path(tmp) / ".work"
    work.mkdir()
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def is_unfinished(path: Path) -> bool:
    """True when this process is still writing ``path`` (a temporary it created)."""
    return _UNFINISHED.get(Path(path)) == os.getpid()


def remove_unfinished() -> list[Path]:
    """Remove every temporary this process created and did not finish; returns them.

    The CLI's error boundary calls it when a command ends; it also runs at
    interpreter exit (a script ended by Ctrl-C; a SIGTERM left at its default
    kills without it, and the next writer of the same target sweeps).
    A second signal while it runs is dropped: the first decided the exit.
    """
    left = sorted(tmp for tmp, pid in list(_UNFINISHED.items()) if pid == os.getpid())
    with signals_held(deliver=False):
        for tmp in left:
            discard(tmp)
    return left


def sweep_stale_temps(target: Path, any_owner: bool = False) -> None:
    """Remove ``.<name>.tmp-<pid>*`` / ``.<name>.old-<pid>`` siblings of ``target`` whose writer is gone.

    A writer is gone when no process has its pid, or when the pid is this
    process's own but this process is not writing that temporary (a killed
    run whose pid came round again: PID 1 in a container). ``any_owner=True``
    removes them whatever their pid: for callers that hold a lock proving no
    live writer of ``target`` exists (the step cache).
    """
    parent = Path(target).resolve().parent
    if not parent.is_dir():
        return
    name = Path(target).name
    for kind in ("tmp", "old"):
        for stale in parent.glob(f".{glob.escape(name)}.{kind}-*"):
            pid = stale.name[len(f".{name}.{kind}-"):].split("-")[0]
            if not pid.isdigit() and not any_owner:
                continue
            mine = pid.isdigit() and int(pid) == os.getpid()
            if any_owner or (mine and not is_unfinished(stale)) or (not mine and not _alive(int(pid))):
                discard(stale)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def write_file(target: Path, write: Callable[[Path], object]) -> None:
    """Write ``target`` whole or not at all: ``write(partial)`` fills a temporary sibling that replaces it."""
    target = Path(target)
    sweep_stale_temps(target)
    with signals_held():
        partial = target.with_name(_temp_name(target))
        _UNFINISHED[partial] = os.getpid()
    try:
        write(partial)
        os.replace(partial, target)
    finally:
        discard(partial)  # after the replace there is nothing at ``partial``: this only forgets it


atexit.register(remove_unfinished)

__all__ = ["signals_held", "import_safe", "temp_dir", "temp_sibling", "finished", "discard", "work_folder",
           "is_unfinished", "remove_unfinished", "sweep_stale_temps", "write_file"]


def _torch_cache_default() -> Path:
    """Where torch puts its compile cache when ``TORCHINDUCTOR_CACHE_DIR`` is unset (as
    ``torch._inductor.runtime.cache_dir_utils.default_cache_dir`` spells it, without importing torch)."""
    import getpass
    import re

    try:
        user = getpass.getuser()
    except (KeyError, ModuleNotFoundError, OSError):
        user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
    return Path(os.path.abspath(tempfile.gettempdir())) / ("torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))


@contextlib.contextmanager
def no_stray_torch_cache() -> Iterator[None]:
    """Remove the empty ``$TMPDIR/torchinductor_<user>`` a command made by importing ``torch._dynamo``.

    torch.onnx's dynamo exporter imports it, and that import makes torch's
    compile-cache folder at once, though edgekit compiles nothing; a command
    would leave it in ``$TMPDIR``. Only a folder that was not there before and
    is still empty goes (``rmdir``); one the user set (``TORCHINDUCTOR_CACHE_DIR``
    before the command) or one with files in it stays.
    """
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        yield
        return
    default = _torch_cache_default()
    existed = default.exists()
    try:
        yield
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                default.rmdir()
