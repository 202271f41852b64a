"""edgekit.progress: a slow start says what it does; a fast failure leaves its error the only line."""

import time

import pytest

from edgekit import progress


@pytest.fixture(autouse=True)
def loud():
    was = progress.quiet()
    progress.set_quiet(False)
    yield
    progress.set_quiet(was)


def test_slow_stage_is_silent_when_fast(capsys):
    with progress.slow_stage("load", "x", after=0.5):
        pass
    with pytest.raises(ValueError), progress.slow_stage("load", "x", after=0.5):
        raise ValueError("bad input")
    assert capsys.readouterr().err == ""


def test_slow_stage_announces_a_long_step(capsys):
    with progress.slow_stage("load", "model m", after=0.05):
        time.sleep(0.3)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[edgekit] load: model m ..." and err[1].startswith("[edgekit] load done in ")


def test_loop_summary_pluralizes(capsys):
    list(progress.bar(range(9), desc="generate", unit="batch"))
    list(progress.bar(range(8), desc="calibrate", unit="sentence"))
    err = capsys.readouterr().err
    assert "generate: 9 batches in" in err and "calibrate: 8 sentences in" in err


def test_a_long_loop_off_a_terminal_says_how_far_it_is(capsys, monkeypatch):
    monkeypatch.setenv("EDGEKIT_PROGRESS_EVERY", "0.05")
    for _ in progress.bar(range(10), desc="answers (original)", unit="row"):
        time.sleep(0.03)
    with progress.Counter(total=3, desc="trials", unit="trial") as count:
        for _ in range(3):
            time.sleep(0.06)
            count.update()
    lines = capsys.readouterr().err.splitlines()
    beats = [ln.strip() for ln in lines if ln.strip().startswith("answers (original): ") and "/10 rows" in ln]
    assert beats and all("left" in b for b in beats[:-1])  # done / total, elapsed, time left
    assert any(ln.strip().startswith("trials: 1/3 trial, ") for ln in lines)
    assert lines.count(next(ln for ln in lines if "answers (original): 10 rows in" in ln)) == 1


def test_no_heartbeat_when_quick_or_switched_off(capsys, monkeypatch):
    list(progress.bar(range(20), desc="fast"))
    monkeypatch.setenv("EDGEKIT_PROGRESS_EVERY", "0")
    for _ in progress.bar(range(3), desc="slow"):
        time.sleep(0.02)
    assert capsys.readouterr().err.strip().splitlines() == ["fast: 20 its in 0.0 s"]
