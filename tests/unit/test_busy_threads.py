"""optimize times at half the usable cores, fewer only when other processes take even those (issue 13: ratios
that survive load: the same quantity is measured quiet or busy)."""

import subprocess
import sys
import time

import pytest

from edgekit.environment import busy_cores, free_threads
from edgekit.options import BenchOptions, OptimizeOptions
from edgekit.runtime.session import default_threads


def test_free_threads_counts_a_mostly_busy_core_as_taken():
    assert free_threads(2, 0.0) == 2
    assert free_threads(2, 0.5) == 2
    assert free_threads(2, 0.7) == 1
    assert free_threads(2, 1.9) == 1      # never fewer than one
    assert free_threads(8, 3.0) == 5
    assert free_threads(4, None) == 4     # no /proc/stat: all usable cores


@pytest.fixture
def spinner():
    """One CPU-bound process at the default nice level, as a user's competing job would be."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    yield proc
    proc.kill()
    proc.wait()


def test_one_competing_process_leaves_the_default_timing_threads_alone(spinner):
    """Half the usable cores: a machine running one other CPU-bound job still gives each timing thread a core."""
    from edgekit.pipeline import _bench_threads

    busy = busy_cores()
    assert busy is not None and busy >= 0.8   # the spinner alone keeps one core busy
    options, warning = _bench_threads(OptimizeOptions())
    assert options.bench.threads == max(1, default_threads() // 2)
    assert warning is None
    kept, none = _bench_threads(OptimizeOptions(bench=BenchOptions(threads=2)))  # the user's --threads wins
    assert kept.bench.threads == 2 and none is None


def test_the_timing_threads_drop_when_other_processes_take_more_than_half():
    usable = default_threads()
    if usable < 4:
        pytest.skip(f"{usable} usable cores: half of them is one thread, nothing to drop to")
    from edgekit.pipeline import _bench_threads

    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(usable - 1)]
    try:
        time.sleep(0.5)
        options, warning = _bench_threads(OptimizeOptions())
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert options.bench.threads < usable // 2
    assert "busy machine" in warning and f"timed at {options.bench.threads} thread" in warning


def test_niced_work_does_not_count_as_competing():
    before = busy_cores()
    proc = subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        quiet = busy_cores()
    finally:
        proc.kill()
        proc.wait()
    assert quiet is not None and quiet < before + 0.6   # a full core of niced spinning is not counted
