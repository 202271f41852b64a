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
