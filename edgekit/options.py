"""``OptimizeOptions``: each step's options held as they are, plus the few fields of the run itself.

::

    OptimizeOptions(target="cpu", precision="int8",
                    data=DataOptions(), gate=GateOptions(), export=ExportOptions(),
                    quantize=QuantizeOptions(), build=BuildOptions(), prune=PruneOptions(),
                    bench=BenchOptions(iterations=200, warmup=20))

Each step receives its own object unchanged. The run's ``target`` and
``precision`` are the only values a step's options take from the run, and
:meth:`OptimizeOptions.quantize_options` / :meth:`OptimizeOptions.build_options`
are the one place that sets them (``quantize.target``, ``build.backend`` and
``build.precision`` are therefore not keys of the composed schema). Recipes
(models/*.yaml) use the same nested keys; the CLI derives its flags from these
fields (:mod:`edgekit.cli_options`); ``dataclasses.asdict`` round-trips
through :meth:`OptimizeOptions.from_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .bench import BenchOptions
from .engine import BuildOptions
from .errors import InputError
from .export import ExportOptions
from .prune import PruneOptions
from .quantize import TARGETS, QuantizeOptions
from .schema import check_keys, check_types, opt, sections

ENGINE_TARGETS = ("tensorrt", "tensorrt-rtx")
#: fields of a step's options that the run sets (from ``target`` / ``precision``): not keys of the schema
DERIVED = {"quantize.target", "build.backend", "build.precision"}
STATIC_GATE_BATCH = 32


@dataclass
class DataOptions:
    """Where the run's rows come from. The gate file is read once into a TextDataset that every step receives."""

    text_column: str | None = opt(None, help="Text column of every data file (default: auto-detected).")
    label_column: str | None = opt(None, help="Label column of every data file (default: auto-detected).")
    max_samples: int | None = opt(None, help="Gate on at most this many rows of --data (seeded; default: all).")
    calibration_data: str | None = opt(None, help="Sentences for static calibration (tsv/csv/jsonl). cpu default: "
                                                  "the --data file; TensorRT int8: required unless "
                                                  "--validation-data is given (never the gate's rows).")
    validation_data: str | None = opt(None, help="Labeled rows, not the gate's, on which the per-layer fallback "
                                                 "judges (cpu: none = no fallback; TensorRT int8: default "
                                                 "--calibration-data).")
    prune_data: str | None = opt(None, help="Labeled training rows for pruning importance and recovery "
                                            "(required to prune).")

    def validate(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:  # before export, not after it
            raise InputError(f"--max-samples must be at least 1, got {self.max_samples}", None,
                             "Omit it to gate on every row of --data")


@dataclass
class GateOptions:
    """The accuracy gate: how much the optimized model may lose, and the batch it is judged at."""

    max_accuracy_drop: float = opt(0.01, help="Allowed accuracy drop as a fraction (0.01 = 1.0 point).")
    eval_batch_size: int | None = opt(None, help="Gate batch size. Default: the latency batch (--batch-size) for "
                                                 "dynamic int8, whose scales depend on padding; "
                                                 f"{STATIC_GATE_BATCH} for static int8, fp16 and fp32, whose "
                                                 "accuracy does not depend on the batch.")

    def batch_for(self, mode: str | None, latency_batch: int) -> int:
        """The gate batch for a candidate quantized in ``mode`` (None: not dynamic int8): see the field's help."""
        if self.eval_batch_size:
            return self.eval_batch_size
        return latency_batch if mode == "dynamic" else STATIC_GATE_BATCH


def _bench_defaults() -> BenchOptions:
    return BenchOptions(iterations=200, warmup=20)


@dataclass
class OptimizeOptions:
    """Every option of ``optimize``; recipe keys and CLI flags share these names (see the module docstring)."""

    target: str = opt("cpu", help="Where the result runs: cpu (int8 on ONNX Runtime) or a TensorRT engine.",
                      choices=TARGETS, group="target")
    precision: str = opt("int8", help="TensorRT targets: engine precision (int8 = Q/DQ with per-layer fallback).",
                         choices=("int8", "fp16", "fp32"), group="target")
    data: DataOptions = opt(factory=DataOptions, help="Data files and their columns.")
    gate: GateOptions = opt(factory=GateOptions, help="The accuracy gate.")
    export: ExportOptions = opt(factory=ExportOptions, help="ONNX export.")
    quantize: QuantizeOptions = opt(factory=QuantizeOptions, help="int8 quantization.")
    build: BuildOptions = opt(factory=BuildOptions, help="TensorRT engine build.")
    prune: PruneOptions = opt(factory=PruneOptions, help="Structured pruning before export.")
    bench: BenchOptions = opt(factory=_bench_defaults, help="Latency measurement.")

    def quantize_options(self) -> QuantizeOptions:
        """The quantize step's options: ``self.quantize`` for this run's target (TensorRT: static by default)."""
        return replace(self.quantize, target=self.target)

    def build_options(self) -> BuildOptions:
        """The build step's options: ``self.build`` for this run's backend and precision."""
        return replace(self.build, backend=self.target, precision=self.precision)

    @property
    def pruning(self) -> bool:
        return bool(self.prune.ffn or self.prune.layers or self.prune.heads or self.prune.sparsity)

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"Unknown target '{self.target}'", None, f"Choose one of: {', '.join(TARGETS)}")
        if self.precision not in ("int8", "fp16", "fp32"):
            raise InputError(f"Unknown precision '{self.precision}'", None, "Choose one of: int8, fp16, fp32")
        if self.target == "cpu" and self.precision != "int8":
            raise InputError(f"--precision {self.precision} applies to TensorRT targets only",
                             "the cpu target is int8 on ONNX Runtime", "Drop --precision, or pass --target tensorrt-rtx")
        self.data.validate()
        self.export.validate()
        if not 0 <= self.gate.max_accuracy_drop < 1:
            raise InputError(f"--max-accuracy-drop must be a fraction in [0, 1), got {self.gate.max_accuracy_drop}",
                             None, "Use 0.01 for one accuracy point")
        if self.gate.eval_batch_size is not None and self.gate.eval_batch_size < 1:  # 0 ran as "default"
            raise InputError(f"--eval-batch-size must be at least 1, got {self.gate.eval_batch_size}", None,
                             "Leave it out for the default (the latency batch for dynamic int8)")
        if self.precision == "int8":
            self.quantize_options().validate()   # e.g. --mode dynamic for a TensorRT target: one line, up front
        if self.target in ENGINE_TARGETS:
            self.build_options().validate()
            if self.target == "tensorrt-rtx" and self.build.compute_capabilities:  # was refused after export + quantize
                from .deps import require  # noqa: PLC0415
                from .engine import compute_capabilities  # noqa: PLC0415

                compute_capabilities(require("tensorrt_rtx"), self.build_options(), classic="--target tensorrt")
            if self.precision == "int8" and not (self.data.validation_data or self.data.calibration_data):
                raise InputError(f"TensorRT int8 for {self.target} needs labeled rows other than the gate's",
                                 "calibration and the per-layer fallback must not be judged on the gate data",
                                 "Pass --calibration-data (or --validation-data) with labeled training rows")
        self.bench.validate()
        if self.bench.end_to_end:  # failed at the bench stage, after export, quantize and check
            raise InputError("--end-to-end does not apply to optimize", "its baseline is the PyTorch model folder, "
                             "which the shipped runtime does not load", "Drop it; time the artifact end to end "
                             "afterwards with: edgekit bench OUT --end-to-end")
        if not self.pruning:  # --prune-recover-epochs, --prune-data ... were accepted and ignored without a cut
            from .prune import PruneOptions  # noqa: PLC0415

            default = PruneOptions()
            given = [f"--prune-{f.replace('_', '-')}" for f in default.__dataclass_fields__
                     if getattr(self.prune, f) != getattr(default, f)] + (["--prune-data"] if self.data.prune_data else [])
            if given:
                raise InputError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} only when optimize prunes",
                                 "no cut was asked for, so nothing is pruned", "Add --prune-ffn, --prune-layers or "
                                 "--prune-sparsity, or drop " + ("it" if len(given) == 1 else "them"))
        if self.pruning:
            self.prune.validate("--prune-")
            if not self.data.prune_data:
                raise InputError("Pruning needs training data",
                                 "importance scores and recovery must not use the gate data",
                                 "Pass --prune-data with labeled training rows (e.g. the train split)")

    @classmethod
    def from_dict(cls, values: dict) -> "OptimizeOptions":
        """From nested keys (``{"quantize": {"mode": "static"}, "target": "cpu"}``), as ``asdict`` writes them.
        Unknown keys, at the top or in a section, are a one-line InputError listing the valid ones."""
        if not isinstance(values, dict):
            raise InputError("Options must be a mapping", f"got {type(values).__name__}", None)
        check_keys(cls, values, "option(s)")
        subs, top = sections(cls), {}
        check_types(cls, {k: v for k, v in values.items() if k not in subs})
        for key, value in values.items():
            if key not in subs:
                top[key] = value
                continue
            if isinstance(value, subs[key]):
                top[key] = value
                continue
            if not isinstance(value, dict):
                raise InputError(f"Option '{key}' must be a mapping of {key} options", f"got {value!r}", None)
            check_keys(subs[key], value, f"{key} option(s)")
            check_types(subs[key], value, f"{key}.")
            base = cls.__dataclass_fields__[key].default_factory()  # type: ignore[misc]
            _refuse_derived(key, value, base)
            top[key] = replace(base, **value)
        return cls(**top)


def _refuse_derived(section: str, values: dict, base) -> None:
    """A derived field (e.g. quantize.target) may appear as ``asdict`` writes it (its default), never set."""
    for key in sorted(DERIVED):
        owner, name = key.split(".")
        if owner == section and name in values and values[name] != getattr(base, name):
            run_key = "target" if name in ("target", "backend") else "precision"
            raise InputError(f"Option '{key}' is set by the run's '{run_key}'", None,
                             f"Set '{run_key}' at the top level instead (--{run_key})")


def same_file(a, b) -> bool:
    """Whether two data arguments name the same file (hub names compare as text)."""
    if a is None or b is None:
        return False
    pa, pb = Path(str(a)), Path(str(b))
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return str(a) == str(b)
