"""Run the real ``edgekit`` CLI in a subprocess, optionally with an environment condition applied first.

The condition is set up by a few lines of Python run before ``edgekit.cli.main``
in the same process (``python -c``): a file-size limit (RLIMIT_FSIZE, what a
full disk looks like to a writer), an optional module made absent
(``sys.modules[name] = None`` makes ``import name`` fail as if it were not
installed), or file modes that bind root too (a root process drops the
capability that lets it ignore them, so a 0555 folder is really read-only to
it). No runtime is mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: capset(2) without CAP_DAC_OVERRIDE (1) and CAP_DAC_READ_SEARCH (2), effective and permitted: root then
#: obeys file modes like any user, so a 0555 folder is really read-only to it (os.access agrees)
DROP_DAC_CAPABILITIES = """
import ctypes
class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
_libc = ctypes.CDLL(None, use_errno=True)
_hdr, _data = _Header(0x20080522, 0), (_Data * 2)()
assert _libc.capget(ctypes.byref(_hdr), _data) == 0, ctypes.get_errno()
_data[0].effective &= ~0b110
_data[0].permitted &= ~0b110
assert _libc.capset(ctypes.byref(_hdr), _data) == 0, ctypes.get_errno()
"""

SIGNAL_AFTER_MKDTEMP = """
import tempfile, time
_mkdtemp, _fired = tempfile.mkdtemp, []
def _signalling_mkdtemp(*args, **kwargs):
    path = _mkdtemp(*args, **kwargs)
    folder = str(kwargs.get("dir") or (args[2] if len(args) > 2 else ""))
    if not _fired and {where!r} in folder:
        _fired.append(path)
        os.kill(os.getpid(), {signal})
        time.sleep(0.05)  # let whichever thread the kernel chose take it
    return path
tempfile.mkdtemp = _signalling_mkdtemp
"""


@dataclass
class Shim:
    """What to change in the CLI's process before it starts."""

    fsize: int | None = None              # RLIMIT_FSIZE in bytes
    absent: list[str] = field(default_factory=list)   # modules that must fail to import
    unprivileged: bool = False            # root loses CAP_DAC_OVERRIDE: file modes bind it (no-op for others)
    #: (signal, folder substring): the process signals itself the moment the first ``tempfile.mkdtemp`` whose
    #: ``dir`` contains the substring has made its folder, before the caller has the path: the window no writer's
    #: ``try`` covers (a real signal hit it in one CI run)
    signal_after_mkdtemp: tuple[int, str] | None = None

    def code(self) -> str:
        lines = ["import os, resource, signal, sys"]
        if self.fsize is not None:
            lines.append(f"resource.setrlimit(resource.RLIMIT_FSIZE, ({self.fsize}, {self.fsize}))")
        lines += [f"sys.modules[{name!r}] = None" for name in self.absent]
        if self.unprivileged and os.geteuid() == 0:
            lines.append(DROP_DAC_CAPABILITIES)
        if self.signal_after_mkdtemp is not None:
            lines.append(SIGNAL_AFTER_MKDTEMP.format(signal=int(self.signal_after_mkdtemp[0]),
                                                     where=self.signal_after_mkdtemp[1]))
        lines += ["signal.signal(signal.SIGINT, signal.default_int_handler)",
                  "from edgekit.cli import main", "main(prog_name='edgekit')"]
        return "\n".join(lines)


def command(args: list, shim: Shim | None = None) -> list[str]:
    return [sys.executable, "-c", (shim or Shim()).code(), *map(str, args)]


def run_cli(args: list, shim: Shim | None = None, env: dict | None = None, timeout: float = 240):
    return subprocess.run(command(args, shim), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def run_and_signal(args: list, ready: callable, sig: int, env: dict | None = None, timeout: float = 240):
    """Start the CLI, wait until ``ready()`` is true (the step is under way), send ``sig``, collect the result."""
    proc = subprocess.Popen(command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                out, err = proc.communicate()
                raise AssertionError(f"the step ended before it could be signalled (rc {proc.returncode}): {err}")
            time.sleep(0.02)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def temps_in(folder: Path, name: str | None = None) -> list[Path]:
    """Temporary siblings that an atomic writer leaves when it is interrupted without cleaning up."""
    if not folder.is_dir():
        return []
    pattern = f".{name}.tmp-*" if name else ".*.tmp-*"
    return sorted(folder.glob(pattern))


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): to prove a failed command changed nothing."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clean_failure(result, code: int) -> None:
    """The documented exit code, no traceback, and one ``Error:`` line (Click's usage text for exit 2)."""
    detail = f"rc {result.returncode}, stderr:\n{result.stderr}"
    assert result.returncode == code, detail
    assert "Traceback" not in result.stderr, detail
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if code == 2:
        assert lines and lines[-1].startswith("Error: "), detail
        return
    # progress (edgekit.progress: "[edgekit] stage ..." lines and indented loop summaries) may precede the error
    # of a run that was stopped mid-way; the error itself is exactly one line, the last
    errors = [line for line in lines if not line.startswith(("[edgekit]", "  "))]
    assert len(errors) == 1 and errors[0].startswith("Error: ") and lines[-1] == errors[0], detail
    assert all(line.lstrip().startswith("[edgekit]") or line.startswith("           ") for line in lines[:-1]), detail


SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
