"""edgekit.atomic: temporaries are recorded the moment they exist, and removed when a run is stopped.

The CLI-level proof (a real signal landing right after ``mkdtemp``, before the
writer's ``try``) is in tests/reliability/test_battery.py; these pin the pieces.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from edgekit import atomic
from edgekit.artifact import atomic_dir


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt here, also in a suite started with SIGINT ignored (from a background shell)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_signal_landing_as_mkdtemp_returns_finds_the_folder_recorded(tmp_path, monkeypatch, ctrl_c_raises):
    made = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(*args, **kwargs):  # the folder exists and the signal arrives before the caller has its path
        made.append(Path(real_mkdtemp(*args, **kwargs)))
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # let whichever thread the kernel chose take it
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    # a second thread, as ONNX Runtime and torch have: blocking the signal in the main thread alone would let the
    # kernel hand it to this one, and Python would run the handler in the main thread at once
    stop = threading.Event()
    waiter = threading.Thread(target=stop.wait, daemon=True)
    waiter.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic.temp_dir(".x.tmp-", tmp_path)
    finally:
        stop.set()
    assert made and made[0].is_dir() and made[0] in atomic._UNFINISHED
    assert atomic.remove_unfinished() == made and not made[0].exists() and made[0] not in atomic._UNFINISHED


def test_signals_held_delivers_a_deferred_sigterm_through_the_handler_that_was_there():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        with atomic.signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_signal_stays_ignored_and_untouched():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with atomic.signals_held():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_remove_unfinished_leaves_what_another_process_recorded(tmp_path):
    other = tmp_path / ".y.tmp-1-abc"
    other.mkdir()
    atomic._UNFINISHED[other] = os.getpid() + 1  # e.g. the parent of a forked child
    try:
        assert other not in atomic.remove_unfinished() and other.is_dir()
    finally:
        atomic._UNFINISHED.pop(other)


def test_write_file_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "refs.json"
    target.write_text("old")

    def half(partial: Path):
        partial.write_text("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic.write_file(target, half)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["refs.json"]
    atomic.write_file(target, lambda partial: partial.write_text("new"))
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["refs.json"]
    assert not [p for p in atomic._UNFINISHED if p.parent == tmp_path]


def test_atomic_dir_puts_the_previous_output_back_when_the_second_rename_fails(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    real_rename = Path.rename

    def rename(self, target):
        if self.name.startswith(".out.tmp-"):
            raise OSError(5, "Input/output error")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "a.txt").write_text("second")
    monkeypatch.undo()
    assert (out / "a.txt").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_second_signal_while_the_unfinished_are_removed_keeps_the_first_exit_code(tmp_path, monkeypatch):
    from edgekit.cli import EdgekitGroup

    group = EdgekitGroup(name="edgekit")
    real_rmtree, fired = atomic.shutil.rmtree, []

    def rmtree(path, *args, **kwargs):  # a second SIGTERM (a supervisor's timeout, kill twice) during the cleanup
        if not fired:
            fired.append(path)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_rmtree(path, *args, **kwargs)

    @group.command("write")
    def write():
        atomic.temp_dir(".out.tmp-", tmp_path)
        os.kill(os.getpid(), signal.SIGTERM)  # the first: lands with the temporary not yet in any try
        time.sleep(1)

    monkeypatch.setattr(atomic.shutil, "rmtree", rmtree)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_:
        group.main(["write"], prog_name="edgekit")
    assert exit_.value.code == 143 and fired and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == previous


def test_a_leftover_with_this_process_pid_is_swept(tmp_path):
    """A killed run whose pid came round again (PID 1 in a container) must not block every later write."""
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    old = tmp_path / f".out.old-{os.getpid()}"
    old.mkdir()
    (old / "x").write_text("left by a killed run with the same pid")
    (tmp_path / f".out.tmp-{os.getpid()}-abc").mkdir()
    partial = tmp_path / f".refs.json.tmp-{os.getpid()}"
    partial.write_text("half")
    with atomic_dir(out, force=True) as tmp:
        (tmp / "a.txt").write_text("second")
    atomic.write_file(tmp_path / "refs.json", lambda p: p.write_text("[]"))
    assert (out / "a.txt").read_text() == "second" and sorted(p.name for p in tmp_path.iterdir()) == ["out", "refs.json"]


def test_a_tokenizer_converted_for_a_folder_without_tokenizer_json_leaves_nothing_in_tmp(ref_model, tmp_path,
                                                                                          monkeypatch):
    from edgekit.sessions import encoder_for

    folder = tmp_path / "model"
    folder.mkdir()
    for f in ref_model.iterdir():
        if f.name != "tokenizer.json" and f.is_file():
            (folder / f.name).symlink_to(f)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    stale = scratch / f".edgekit-tok.tmp-{2**22 + 12345}-abc"  # a SIGKILLed run's (no process has that pid)
    stale.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    encoder = encoder_for(folder)
    assert encoder.max_length == 512 and list(scratch.iterdir()) == []


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signum)


@pytest.mark.parametrize("safe", [True, False])
def test_a_signal_landing_mid_import_is_sent_again_once_the_import_is_over(tmp_path, monkeypatch, safe):
    # raising inside a module's import is what crashed the CLI (SIGABRT/SIGSEGV in onnx's nanobind init): the
    # wrapped handler lets the import finish and raises right after it; the bare one raises inside the module body
    name = f"edgekit_import_probe_{int(safe)}"
    (tmp_path / f"{name}.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "for _ in range(20):\n"
        "    time.sleep(0.01)  # the handler runs between these bytecodes\n"
        "DONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    previous = signal.signal(signal.SIGTERM, atomic.import_safe(_raise_stop) if safe else _raise_stop)
    started = time.perf_counter()
    try:
        with pytest.raises(_Stop):
            importlib.import_module(name)
            time.sleep(5)  # the re-sent signal lands here
    finally:
        signal.signal(signal.SIGTERM, previous)
        module = sys.modules.pop(name, None)
    assert (getattr(module, "DONE", False) is True) == safe
    assert time.perf_counter() - started < 2


def test_a_temporary_that_could_not_be_removed_stays_recorded_for_the_end_of_the_run(tmp_path, monkeypatch):
    tmp = atomic.temp_dir(".y.tmp-", tmp_path)
    (tmp / "f").write_text("x")
    real_rmtree = atomic.shutil.rmtree
    monkeypatch.setattr(atomic.shutil, "rmtree", lambda *a, **k: None)  # a removal that fails (ignore_errors)
    atomic.discard(tmp)
    assert tmp.exists() and atomic.is_unfinished(tmp)
    monkeypatch.setattr(atomic.shutil, "rmtree", real_rmtree)
    assert atomic.remove_unfinished() == [tmp] and not tmp.exists() and not atomic.is_unfinished(tmp)


def test_temp_sibling_sweeps_what_a_killed_writer_of_the_same_target_left(tmp_path):
    dead = 2**22 + 12345  # above the default pid_max: no process has it
    stale = tmp_path / f".runtime-files.tmp-{dead}-abc"
    stale.mkdir()
    (stale / "tokenizer.json").write_text("{}")
    fresh = atomic.temp_sibling(tmp_path / "runtime-files")
    try:
        assert not stale.exists() and fresh.parent == tmp_path.resolve()
        assert fresh.name.startswith(f".runtime-files.tmp-{os.getpid()}-") and atomic.is_unfinished(fresh)
    finally:
        atomic.discard(fresh)
