"""Where trials run: a plain loop in this process, or Ray tasks on a cluster (Ray schedules; nothing here does).

Both engines are generators of trial records in completion order and stop
launching trials once the deadline has passed (the fp32 baseline always
runs). A Ray task reserves ``setup.threads`` CPUs, so a latency measurement
has its cores to itself; at most as many tasks as the cluster has room for
are in flight, so that the time budget can stop the search between trials.
The fp32 model and the data travel to the workers as bytes
(:func:`edgekit.search_trial.pack`): no shared filesystem is assumed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from .artifact import atomic_dir
from .atomic import discard, temp_dir
from .errors import BackendError, EdgekitError, Terminated, first_line
from .search_trial import Candidate, TrialSetup, failed, pack, ray_trial, run_trial

Log = Callable[[str], None]
SetupFor = Callable[[Candidate], TrialSetup]   # raises EdgekitError when the candidate's source cannot be made


def local_trials(pending: list[Candidate], setup_for: SetupFor, trials_dir: Path, deadline: float | None,
                 log: Log) -> Iterator[dict]:
    """Run the candidates one after another in this process."""
    for i, candidate in enumerate(pending):
        if _spent(deadline, candidate):
            log(f"time budget spent: {len(pending) - i} candidate(s) not run")
            return
        log(f"trial {candidate.id}: started")
        try:
            record = run_trial(candidate, setup_for(candidate), trials_dir)
        except EdgekitError as exc:  # its source (a pruning setting) could not be made
            record = failed(candidate, exc)
        log(_trial_line(record))
        yield record


def ray_trials(pending: list[Candidate], setup_for: SetupFor, trials_dir: Path, deadline: float | None, log: Log,
               address: str, threads: int, num_cpus: int | None = None) -> Iterator[dict]:
    """Run the candidates as Ray tasks at ``address`` ('local': a Ray instance started here with ``num_cpus``).

    Each task reserves ``threads`` CPUs. The files of each source travel once (``ray.put``).
    """
    with _ray(address, num_cpus) as ray:
        task = ray.remote(num_cpus=threads, max_retries=0)(ray_trial)
        capacity = _capacity(ray, threads)
        bundles: dict[str, object] = {}
        queue, running = list(pending), {}
        try:
            while queue or running:
                while queue and len(running) < capacity and not _spent(deadline, queue[0]):
                    candidate = queue.pop(0)
                    try:
                        setup = setup_for(candidate)
                    except EdgekitError as exc:
                        yield _logged(failed(candidate, exc), log)
                        continue
                    if setup.source not in bundles:
                        bundles[setup.source] = ray.put(pack(setup))
                    running[task.remote(candidate, setup, bundles[setup.source])] = candidate
                    log(f"trial {candidate.id}: submitted to Ray")
                if not running:
                    log(f"time budget spent: {len(queue)} candidate(s) not run")
                    return
                done, _ = ray.wait(list(running), num_returns=1)
                candidate = running.pop(done[0])
                try:
                    record = ray.get(done[0])
                except Exception as exc:  # the task itself died (worker crash, out of memory): a failed trial
                    yield _logged(failed(candidate, exc), log)
                    continue
                yield _unpack(record, trials_dir, log)
        finally:  # stopped early: a KeyboardInterrupt in each task removes its temporary files, then Ray stops
            for ref in running:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            with contextlib.suppress(Exception):
                ray.wait(list(running), num_returns=len(running), timeout=10)


def _capacity(ray, threads: int) -> int:
    """How many trials fit on the cluster at once, each with ``threads`` CPUs on one node."""
    per_node = [int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    if max(per_node, default=0) < threads:
        raise BackendError(f"No Ray node has {threads} CPUs for a trial",
                           f"the nodes have {', '.join(map(str, per_node)) or 'no'} CPUs",
                           "Pass --threads with at most the CPUs of one node")
    return sum(n // threads for n in per_node)


def _spent(deadline: float | None, candidate: Candidate) -> bool:
    """True once the time budget is spent; the fp32 baseline (the reference) always runs."""
    return deadline is not None and time.perf_counter() >= deadline and candidate.id != "fp32"


def _unpack(record: dict, trials: Path, log) -> dict:
    files = record.pop("files", None)
    if files:
        folder = trials / record["id"]
        with atomic_dir(folder, force=True) as tmp:  # a stopped driver leaves no trial folder without its manifest
            for name, data in files.items():
                (tmp / name).write_bytes(data)
        record["artifact"] = str(folder)
    else:
        record["artifact"] = None  # failed, or fp32: the driver's own source is its artifact
    return _logged(record, log)


def _logged(record: dict, log: Log) -> dict:
    log(_trial_line(record))
    return record


@contextlib.contextmanager
def _ray(address: str, num_cpus: int | None):
    """A connected Ray: the caller's when already initialized, else one started here and shut down after."""
    from .deps import require

    ray = require("ray")
    if ray.is_initialized():
        yield ray
        return
    quiet = {"log_to_driver": False, "logging_level": "ERROR"}
    _check_reachable(address)
    _Remembered.terminated = False
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    scratch = None
    try:
        if address == "local":
            scratch = _ray_scratch()
            where = {"_temp_dir": str(scratch)} if scratch else {}
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **quiet, **where)
        else:
            ray.init(address=address, **quiet)
    except BaseException as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... for an unusable address
        ray.shutdown()  # whatever a half-done start left running
        _remove(scratch)
        if not isinstance(exc, Exception):  # Ctrl-C, SIGTERM
            raise
        raise BackendError(f"Cannot connect to Ray at '{address}'", first_line(exc),
                           "Pass the head node's address (ray start --head prints it), or 'local'") from None
    finally:
        if callable(sigterm):  # ray.init replaces it with sys.exit; keep the caller's (the CLI's: like Ctrl-C)
            signal.signal(signal.SIGTERM, _Remembered(sigterm))
    try:
        yield ray
    except KeyboardInterrupt as exc:
        # inside ray.wait/ray.get Ray turns any KeyboardInterrupt (Terminated included) into a plain one
        if not isinstance(exc, Terminated) and _Remembered.terminated:
            raise Terminated() from None
        raise
    finally:
        ray.shutdown()
        _remove(scratch)
        if callable(sigterm):
            signal.signal(signal.SIGTERM, sigterm)


def _ray_scratch() -> Path | None:
    """A folder for a local Ray cluster's session files (logs, sockets, spilled objects), removed after
    ``ray.shutdown()``; without one Ray keeps every session in /tmp/ray for good. None where the caller chose
    the place with RAY_TMPDIR. Ray's socket paths must stay under the OS limit (~107 bytes) with ~60 bytes of
    session path added, so a long $TMPDIR gives way to /tmp."""
    if os.environ.get("RAY_TMPDIR"):
        return None
    base = tempfile.gettempdir()
    return temp_dir("edgekit-ray-", Path(base if len(base) <= 40 else "/tmp"))  # removed at exit if not before


def _remove(folder: Path | None) -> None:
    if folder is not None:
        discard(folder)


class _Remembered:
    """A SIGTERM handler that notes the signal, then calls the one it wraps."""

    terminated = False

    def __init__(self, handler):
        self.handler = handler

    def __call__(self, signum, frame):
        _Remembered.terminated = True
        self.handler(signum, frame)


def _check_reachable(address: str) -> None:
    """Fail in seconds on a host:port nobody listens on (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address == "local" or not host or not port.isdigit():
        return  # 'local', 'auto' and the like: Ray's own lookup
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise BackendError(f"Cannot connect to Ray at '{address}'", exc.strerror or str(exc),
                           "Pass the head node's address (ray start --head prints it), or 'local'") from None


def _trial_line(record: dict) -> str:
    if record["status"] != "ok":
        return f"trial {record['id']}: failed ({record['error']})"
    p50 = f", p50 {record['p50_ms']:.2f} ms" if record.get("p50_ms") is not None else ""
    return f"trial {record['id']}: accuracy {record['accuracy']:.4f}{p50} ({record['seconds']:.0f} s)"
