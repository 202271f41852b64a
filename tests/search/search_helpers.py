"""Helpers for the search tests: run the CLI and stop it mid-trial with a real signal."""

import os
import queue
import signal
import subprocess
import threading


def started(n: int):
    """A condition for :func:`interrupt_at`: the ``n``-th trial has started in this run (a trial takes > 1 s)."""
    return lambda seen: sum(line.endswith(": started") for line in seen) >= n


def interrupt_at(cmd, until, sig: int) -> tuple[int, list[str]]:
    """Run ``cmd``; send ``sig`` as soon as ``until(stderr lines so far)`` holds. Returns the exit code and the lines."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env,
                            preexec_fn=_signals_as_in_a_shell)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line.rstrip()) for line in proc.stderr], daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        while not until(seen):
            seen.append(lines.get(timeout=180))
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)  # the lines printed while stopping
    while not lines.empty():
        seen.append(lines.get())
    return rc, seen


def _signals_as_in_a_shell() -> None:
    """In the child before exec: SIGINT / SIGTERM at their defaults and unblocked, as a shell starts a command.
    A child inherits an ignored or blocked signal from the test process (something earlier in a long suite may
    leave one so), and a Python started with SIGINT ignored never turns Ctrl-C into KeyboardInterrupt."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
