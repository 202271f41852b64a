"""A battery of bad inputs across the commands, each through the real CLI in a subprocess.

Every case must give the documented exit code (1 bad input, 2 usage, 130
SIGINT, 143 SIGTERM), one ``Error:`` line on stderr, no traceback, and leave
its work folder byte-for-byte as it was (no output, no temporary folder).
Conditions are real: corrupt files, a file-size limit (RLIMIT_FSIZE), a module
that fails to import, a read-only folder, real signals mid-step.

Runtime: about 60-90 s on 2 busy cores (cases run 3 at a time).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from reliability_helpers import SIGNAL_EXIT, Shim, assert_clean_failure, run_and_signal, run_cli, snapshot, temps_in

pytestmark = pytest.mark.skipif(not shutil.which("true"), reason="needs a POSIX system")


@dataclass
class Case:
    name: str
    args: list
    code: int = 1
    shim: Shim | None = None
    signal: int | None = None             # sent once ``ready`` is true
    ready: object = None
    after: object = None                  # extra check, called with the result
    contains: str = ""                    # expected in the error line
    work: Path = field(default=None)


def _pickle_checkpoint(folder: Path, tiny_model: Path, marker: Path) -> None:
    import torch
    from safetensors.torch import load_file

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    for f in tiny_model.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, folder / f.name)
    state = load_file(str(tiny_model / "model.safetensors"))
    torch.save({**state, "extra": Payload()}, folder / "pytorch_model.bin")


def _remote_code_model(folder: Path, tiny_model: Path, marker: Path) -> None:
    shutil.copytree(tiny_model, folder, dirs_exist_ok=True)
    config = {"model_type": "edgekit_custom", "architectures": ["CustomModel"], "num_labels": 2,
              "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                           "AutoModelForSequenceClassification": "modeling_custom.CustomModel"}}
    (folder / "config.json").write_text(json.dumps(config))
    code = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    (folder / "configuration_custom.py").write_text(code)
    (folder / "modeling_custom.py").write_text(code)


@pytest.fixture(scope="module")
def inputs(tiny_model, tiny_onnx, tiny_int8, tiny_data, tmp_path_factory):
    """The bad inputs, built once."""
    root = tmp_path_factory.mktemp("battery")
    d = {"root": root, "model": root / "model", "onnx": root / "onnx", "data": root / "data.tsv",
         "marker": root / "CODE-RAN"}
    shutil.copytree(tiny_model, d["model"])
    shutil.copytree(tiny_onnx, d["onnx"])
    shutil.copy(tiny_data, d["data"])
    for name in ("empty_dir", "notmodel", "noweights", "pickle_bin", "remote_code"):
        (root / name).mkdir()
    (root / "notmodel" / "notes.txt").write_text("not a model")
    shutil.copy(tiny_model / "config.json", root / "noweights" / "config.json")
    for name, edit in (("badconfig", lambda f: f.write_text("{not json")),
                       ("listconfig", lambda f: f.write_text("[1, 2]")),
                       ("corrupt_weights", lambda f: f.write_bytes(os.urandom(4096))),
                       ("truncated_weights", lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]))):
        shutil.copytree(tiny_model, root / name)
        edit(root / name / ("config.json" if name.endswith("config") else "model.safetensors"))
    _pickle_checkpoint(root / "pickle_bin", tiny_model, d["marker"])
    _remote_code_model(root / "remote_code", tiny_model, d["marker"])
    shutil.copytree(tiny_model, root / "no_tokenizer",
                    ignore=lambda _, names: [n for n in names if n.startswith(("tokenizer", "vocab", "special"))])
    shutil.copytree(tiny_onnx, root / "onnx_self")
    shutil.copytree(tiny_onnx, root / "onnx_gone")
    (root / "onnx_gone" / "model.onnx").unlink()
    shutil.copytree(tiny_int8, root / "int8")
    shutil.copytree(tiny_model, root / "holder" / "model")
    shutil.copytree(tiny_onnx, root / "onnx_trunc")
    onnx_file = root / "onnx_trunc" / "model.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes()[:20000])
    (root / "garbage.onnx").write_bytes(os.urandom(5000))
    (root / "empty.onnx").write_bytes(b"")
    files = {"empty.tsv": "label\tsentence\n", "zero.tsv": "", "wrongcols.tsv": "label\tbody\n1\tgood\n",
             "unknown.tsv": "label\tsentence\nneutral\tok film\n", "ragged.tsv": "label\tsentence\n1\tgood\textra\n"}
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "latin1.tsv").write_bytes("label\tsentence\n1\tun film tr\xe8s r\xe9ussi\n".encode("latin-1"))
    recipes = {"bad_target": "target: trt\n", "escape": "", "trust": "options: {trust_remote_code: true}\n",
               "unknown_key": "speed: fast\n"}
    for name, extra in recipes.items():  # escape's data leaves the project (a key given twice is refused itself)
        data = "/etc/hostname" if name == "escape" else d["data"]
        (root / f"{name}.yaml").write_text(f"model: {d['model']}\ndata: {data}\nout: out/x\n{extra}")
    return d


def _cases(d: dict) -> list[Case]:
    r, model, onnx, data = d["root"], d["model"], d["onnx"], d["data"]
    no_code = lambda res: not d["marker"].exists()  # noqa: E731
    return [
        Case("export: missing model folder", ["export", r / "nope", "--out", "{out}"], contains="not found"),
        Case("export: empty model folder", ["export", r / "empty_dir", "--out", "{out}"]),
        Case("export: folder without a model", ["export", r / "notmodel", "--out", "{out}"]),
        Case("export: config.json but no weights", ["export", r / "noweights", "--out", "{out}"], contains="no weights"),
        Case("export: corrupt config.json", ["export", r / "badconfig", "--out", "{out}"]),
        Case("export: config.json holding a JSON list", ["export", r / "listconfig", "--out", "{out}"],
             contains="not an object"),
        Case("export: no tokenizer files (transformers would make one of the special tokens alone)",
             ["export", r / "no_tokenizer", "--out", "{out}"], contains="no tokenizer vocabulary"),
        Case("export: corrupt safetensors", ["export", r / "corrupt_weights", "--out", "{out}"]),
        Case("export: truncated safetensors", ["export", r / "truncated_weights", "--out", "{out}"]),
        Case("export: pickle payload in pytorch_model.bin", ["export", r / "pickle_bin", "--out", "{out}"],
             contains="posix.system", after=no_code),
        Case("export: model needs remote code, no flag", ["export", r / "remote_code", "--task", "text-classification",
                                                          "--out", "{out}"], contains="--trust-remote-code", after=no_code),
        Case("export: unsupported opset", ["export", model, "--opset", "99", "--out", "{out}"], contains="opset"),
        Case("export: OUT is a folder edgekit did not write", ["export", model, "--out", "{mine}"], contains="--force"),
        Case("export: non-UTF-8 data", ["export", model, "--data", r / "latin1.tsv", "--out", "{out}"],
             contains="UTF-8"),
        Case("export: full disk (RLIMIT_FSIZE 100 kB)", ["export", model, "--out", "{out}"],
             shim=Shim(fsize=100_000), contains="File too large"),
        Case("export: SIGINT mid-export", ["export", model, "--out", "{out}"], code=130, signal=signal.SIGINT,
             contains="interrupted"),
        Case("export: SIGINT as OUT's temporary folder is made", ["export", model, "--out", "{out}"], code=130,
             shim=Shim(signal_after_mkdtemp=(signal.SIGINT, "{work}")), contains="interrupted"),
        Case("quantize: OUT is the input (an edgekit artifact, so no --force needed)",
             ["quantize", r / "onnx_self", "--out", r / "onnx_self"], contains="would replace the input",
             after=lambda res: (r / "onnx_self" / "manifest.json").read_text() == (onnx / "manifest.json").read_text()),
        Case("export: --force on an OUT that holds the model", ["export", r / "holder" / "model", "--out", r / "holder",
                                                              "--force"], contains="would replace the input",
             after=lambda res: (r / "holder" / "model" / "model.safetensors").is_file()),
        Case("quantize: truncated ONNX (manifest hash)", ["quantize", r / "onnx_trunc", "--out", "{out}"],
             contains="corrupt or truncated"),
        Case("quantize: corrupt ONNX bytes", ["quantize", r / "garbage.onnx", "--out", "{out}"], contains="cannot be read"),
        Case("quantize: empty ONNX file", ["quantize", r / "empty.onnx", "--out", "{out}"], contains="empty"),
        Case("quantize: an int8 artifact (quantized twice before)", ["quantize", r / "int8", "--out", "{out}"],
             contains="quantized already"),
        Case("quantize: an artifact whose model.onnx is gone (was: 'no weights ... save_pretrained()')",
             ["quantize", r / "onnx_gone", "--out", "{out}"], contains="is missing its model file"),
        Case("quantize: HF folder instead of ONNX", ["quantize", model, "--out", "{out}"], contains="not an ONNX"),
        Case("quantize: static without calibration data", ["quantize", onnx, "--target", "tensorrt", "--out", "{out}"]),
        Case("quantize: non-UTF-8 calibration data", ["quantize", onnx, "--target", "tensorrt", "--calibration-data",
                                                      r / "latin1.tsv", "--out", "{out}"], contains="UTF-8"),
        Case("quantize: unsupported target", ["quantize", onnx, "--target", "trt", "--out", "{out}"], code=2),
        Case("quantize: full disk (RLIMIT_FSIZE 30 kB)", ["quantize", onnx, "--out", "{out}"],
             shim=Shim(fsize=30_000), contains="ulimit -f"),
        Case("quantize: OUT folder not writable", ["quantize", onnx, "--out", "{readonly}/out"],
             shim=Shim(unprivileged=True), contains="cannot be written"),
        Case("check: truncated ONNX candidate", ["check", model, r / "onnx_trunc", "--data", data]),
        Case("check: data with the wrong columns", ["check", model, onnx, "--data", r / "wrongcols.tsv"],
             contains="no text column"),
        Case("check: labels the model does not know", ["check", model, onnx, "--data", r / "unknown.tsv"],
             contains="unknown to the model"),
        Case("check: data with a header and no rows", ["check", model, onnx, "--data", r / "empty.tsv"],
             contains="empty"),
        Case("bench: corrupt ONNX", ["bench", r / "garbage.onnx"]),
        Case("bench: zero-byte data file", ["bench", onnx, "--data", r / "zero.tsv"], contains="empty"),
        Case("build: TensorRT-RTX not installed", ["build", onnx, "--out", "{out}/model.engine"],
             shim=Shim(absent=["tensorrt_rtx"]), contains="edgekit[rtx]"),
        Case("build: OUT is a folder edgekit did not write (its config.json was kept beside the engine)",
             ["build", onnx, "--out", "{mine}"], contains="--force"),
        Case("build: corrupt ONNX", ["build", r / "garbage.onnx", "--out", "{out}/model.engine"]),
        Case("optimize: recipe with an unsupported target", ["optimize", "--recipe", r / "bad_target.yaml"],
             contains="Unknown target 'trt'"),
        Case("optimize: recipe path escaping its project", ["optimize", "--recipe", r / "escape.yaml"],
             contains="outside"),
        Case("optimize: recipe turning on remote code", ["optimize", "--recipe", r / "trust.yaml"],
             contains="trust_remote_code"),
        Case("optimize: recipe with an unknown key", ["optimize", "--recipe", r / "unknown_key.yaml"]),
        Case("optimize: ragged data line", ["optimize", model, "--data", r / "ragged.tsv", "--out", "{out}"],
             contains="fields"),
        Case("optimize: missing --data", ["optimize", model, "--out", "{out}"], code=2),
        Case("optimize: SIGTERM mid-export", ["optimize", model, "--data", data, "--out", "{out}"], code=143,
             signal=signal.SIGTERM, contains="terminated"),
        Case("optimize: SIGTERM as the cache entry's temporary folder is made",
             ["optimize", model, "--data", data, "--out", "{out}"], code=143,
             shim=Shim(signal_after_mkdtemp=(signal.SIGTERM, "{cache}/export")), contains="terminated"),
        Case("finetune: empty training data", ["finetune", model, "--data", r / "empty.tsv", "--out", "{out}"]),
    ]


def _prepare(case: Case, d: dict, index: int) -> tuple[list[str], dict]:
    work = d["root"] / "work" / f"{index:02d}"
    work.mkdir(parents=True)
    (work / "mine").mkdir()
    (work / "mine" / "notes.txt").write_text("the user's own file")
    readonly = work / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    case.work = work
    fill = {"{out}": str(work / "out"), "{mine}": str(work / "mine"), "{readonly}": str(readonly)}
    args = []
    for a in map(str, case.args):
        for k, v in fill.items():
            a = a.replace(k, v)
        args.append(a)
    cache = d["root"] / "cache" / f"{index:02d}"
    if case.shim is not None and case.shim.signal_after_mkdtemp is not None:
        sig, where = case.shim.signal_after_mkdtemp
        where = where.replace("{work}", str(work.resolve())).replace("{cache}", str(cache.resolve()))
        case.shim = replace(case.shim, signal_after_mkdtemp=(sig, where))
    return args, {"EDGEKIT_CACHE": str(cache), "HOME": str(d["root"])}


def _run(case: Case, d: dict, index: int):
    args, env = _prepare(case, d, index)
    before, started = snapshot(case.work), time.perf_counter()
    cache = Path(env["EDGEKIT_CACHE"])
    if case.signal is None:
        result = run_cli(args, case.shim, env)
    else:
        ready = lambda: temps_in(case.work, "out") and (args[0] != "optimize" or temps_in(cache / "export"))  # noqa: E731
        result = run_and_signal(args, ready, case.signal, env)
    assert not temps_in(cache / "export") and not [p for p in (cache / "export").glob("*") if p.is_dir()], \
        (f"{case.name}: a half-written cache entry was kept (rc {result.returncode}; files in it: "
         f"{sorted(str(f.relative_to(cache)) for f in (cache / 'export').rglob('*'))}; stderr tail: "
         f"{result.stderr[-600:]!r})")
    result.seconds = time.perf_counter() - started
    return result, before, snapshot(case.work)


def test_bad_inputs_fail_cleanly(inputs):
    cases = _cases(inputs)
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda ic: _run(ic[1], inputs, ic[0]), enumerate(cases)))
    failures = []
    for case, (result, before, after) in zip(cases, results):
        try:
            assert_clean_failure(result, case.code)
            assert case.contains in result.stderr, f"expected {case.contains!r} in: {result.stderr}"
            assert before == after, f"the work folder changed: {sorted(set(after) ^ set(before))}"
            assert not temps_in(case.work), f"temporary folders were left: {temps_in(case.work)}"
            assert case.after is None or case.after(result), "post-condition failed"
            assert case.signal is None or result.returncode == SIGNAL_EXIT[case.signal]
        except AssertionError as exc:
            failures.append(f"{case.name}: {exc}")
    table = [f"{len(cases)} bad inputs across the commands, {len(cases) - len(failures)} failed cleanly "
             "(documented exit code, one Error: line, no traceback, nothing written)"]
    table += [f"  [{result.returncode:3d}] {result.seconds:4.1f}s {case.name}: "
              f"{(result.stderr.strip().splitlines() or [''])[-1][:140]}" for case, (result, _, _) in zip(cases, results)]
    print("\n".join(table))  # captured: pytest shows it with -s or -rP, and on a failure
    assert not failures, "\n".join(failures + table)
    assert len(cases) >= 25


def test_edgekit_debug_shows_the_traceback(tmp_path):
    quiet = run_cli(["quantize", tmp_path / "nope", "--out", tmp_path / "out"])
    loud = run_cli(["quantize", tmp_path / "nope", "--out", tmp_path / "out"], env={"EDGEKIT_DEBUG": "1"})
    assert_clean_failure(quiet, 1)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "ModelError: Model" in loud.stderr
