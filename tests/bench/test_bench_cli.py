"""`edgekit bench` and `edgekit report` via the CLI: --json on stdout, warnings not hidden, one-line errors (~25 s)."""

import json
import subprocess
import sys

QUICK = ["--warmup", "2", "--warmup-seconds", "0", "--iterations", "5", "--min-seconds", "0"]


def run(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgekit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def one_line_error(result, code=1):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return result.returncode == code and len(lines) == 1 and lines[0].startswith("Error: ")


def test_bench_json_is_parseable_and_warnings_reach_stderr(tiny_int8, tmp_path):
    result = run("bench", tiny_int8, *QUICK, "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout)
    assert r["schema"] == "edgekit.bench/1" and r["iterations"] == 5 and r["threads"] == 1
    assert "Warning: only 5 timed runs: p50, stdev and CV need >= 10" in result.stderr  # flagged, not only in the JSON
    saved = tmp_path / "int8.json"
    saved.write_text(result.stdout)
    report = run("report", saved, "--out", tmp_path / "rep", "--json")
    assert report.returncode == 0, report.stderr
    combined = json.loads(report.stdout)
    assert combined["schema"] == "edgekit.report/1" and len(combined["rows"]) == 1
    assert combined["rows"][0]["samples"] == 5 and (tmp_path / "rep" / "report.html").is_file()


def test_bench_text_shows_percentiles_and_warnings(tiny_int8):
    result = run("bench", tiny_int8, *QUICK, "--end-to-end", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "(end-to-end)" in result.stdout and "p95" in result.stdout and "items/s" in result.stdout
    assert "WARNING: only 5 timed runs" in result.stdout


def test_sweep_text_is_a_table(tiny_int8):
    result = run("bench", tiny_int8, *QUICK, "--sweep-batch", "1,2", "--sweep-seq", "real,12")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("1", "real"), ("1", "12"), ("2", "real"), ("2", "12")]


def test_bad_sweep_list_is_a_usage_error(tiny_int8):
    result = run("bench", tiny_int8, "--sweep-batch", "1,four")
    assert result.returncode == 2 and "'four' is not a positive integer" in result.stderr


def test_end_to_end_on_pytorch_is_one_line_error(tiny_model):
    assert one_line_error(run("bench", tiny_model, *QUICK, "--end-to-end"))


def test_report_of_a_foreign_json_fails_cleanly(tmp_path):
    foreign = tmp_path / "x.json"
    foreign.write_text('{"hello": 1}')
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "edgekit.bench/1", ')
    for path in (foreign, broken, tmp_path / "missing"):
        result = run("report", path, "--out", tmp_path / "rep")
        assert one_line_error(result), result.stderr
    assert not (tmp_path / "rep").exists()


def test_a_size_the_sweep_replaces_is_refused(tiny_int8):
    """--batch-size 8 with --sweep-batch 1,2 timed batches 1 and 2 only, and --seq-len beside --sweep-seq was
    dropped the same way, without a word."""
    for args, flag in ((["--batch-size", "8", "--sweep-batch", "1,2"], "--batch-size"),
                       (["--seq-len", "16", "--sweep-seq", "8,real"], "--seq-len")):
        result = run("bench", tiny_int8, *args)
        assert one_line_error(result) and f"{flag} does not apply here" in result.stderr, result.stderr
