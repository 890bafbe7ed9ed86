"""INT8 calibration end to end, with an accuracy gate: ``calibrate_bundle`` and its report. Torch-free.

    report = calibrate_bundle("bundles/fp32", "demo:64", "bundles/int8")   # raises CalibrationGateError on a drop

1. capture the FP32 pipeline's graph inputs on the calibration images, at every step of every schedule
   (:mod:`.capture`);
2. compute activation ranges (MinMax / Entropy / Percentile; cached by weights, graph and calibration-set hash) and
   write the explicit Q/DQ ``denoiser_cached`` (optionally the VAE graphs) (:mod:`.quantize`); the
   ``conditioning`` graph stays FP32;
3. stage the INT8 bundle (atomically: nothing appears at ``out`` unless it is accepted) and compare it with the
   FP32 bundle: perception accuracy on the demo renderer's held-out scenes (depth delta1, normal mean error, mIoU),
   the latent error after every denoiser call with the same noise, and the CPU time of one denoiser step;
4. the gate: unless ``force``, refuse the bundle when a metric moved by more than its threshold
   (:class:`GateThresholds`), raising :class:`CalibrationGateError`; otherwise the report goes into the manifest's
   ``calibration`` field.
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmgen_edge.runtime.fileio import atomic_directory
from mmgen_edge.runtime.manifest import Manifest, Precision, read_manifest, write_manifest
from mmgen_edge.runtime.modalities import IMAGE_MODALITY
from mmgen_edge.runtime.onnxruntime_runner import CPU, OnnxRuntimeRunner
from mmgen_edge.runtime.pipeline import Pipeline
from mmgen_edge.runtime.runner import Runner

from .capture import DEFAULT_STEPS, CaptureSet, capture_calibration_feeds
from .quantize import (
    DEFAULT_EXCLUDE,
    DEFAULT_OP_TYPES,
    Method,
    QuantizedGraph,
    RangesFactory,
    assert_tensorrt_buildable,
    cached_ranges,
    prepare_graph,
    quantize_graph,
    ranges_cache_key,
    stage_int8_bundle,
)
from .sources import iter_calibration_images

#: Calibration images used by default.
DEFAULT_SAMPLES = 64
#: Held-out scenes the gate scores by default.
DEFAULT_EVAL_SCENES = 32
#: Timed runs of one denoiser step per precision (the median is reported).
DEFAULT_SPEED_RUNS = 20
#: Untimed runs before timing (session warm-up).
SPEED_WARMUP_RUNS = 3
#: Seed of the sampler noise in the evaluation (the same for FP32 and INT8).
EVAL_SEED = 0
#: The graph quantized by default; the VAE graphs only when asked for.
DENOISER_GRAPH = "denoiser_cached"
VAE_GRAPHS = ("vae_encoder", "vae_decoder")


# ------------------------------------------------------------------------------------------------- gate


@dataclass(frozen=True)
class GateMetric:
    """A gated metric: its key in ``evaluate_perception``'s output and whether higher is better."""

    key: str
    higher_is_better: bool
    unit: str = ""


#: The gate's metrics, by their ``--max-drop`` names.
GATE_METRICS: dict[str, GateMetric] = {
    "depth": GateMetric("depth_delta1", True),
    "normal": GateMetric("normal_mean", False, " deg"),
    "miou": GateMetric("seg_miou", True),
}


@dataclass(frozen=True)
class GateThresholds:
    """Largest allowed worsening per metric: delta1 drop, normal-error rise (degrees), mIoU drop."""

    depth: float = 0.01
    normal: float = 1.0
    miou: float = 0.02

    @classmethod
    def parse(cls, text: str) -> "GateThresholds":
        """``"depth=0.01,normal=1.0,miou=0.02"`` (any subset; the rest keep their defaults)."""
        values: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            name = name.strip()
            if not sep or name not in GATE_METRICS:
                raise ValueError(f"bad --max-drop item {item!r}: expected NAME=VALUE with NAME in {list(GATE_METRICS)}")
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"bad --max-drop value {value!r} for {name}: not a number") from None
            if not math.isfinite(number) or number < 0:
                raise ValueError(f"--max-drop {name} must be a finite number >= 0, got {value!r}")
            values[name] = number
        return cls(**values)


@dataclass(frozen=True)
class GateFailure:
    """One metric that worsened by more than allowed."""

    metric: str
    fp32: float
    int8: float
    worsening: float  # positive = worse (drop for delta1 / mIoU, rise for the normal error)
    allowed: float

    def describe(self) -> str:
        unit = GATE_METRICS[self.metric].unit
        return (
            f"{self.metric} ({GATE_METRICS[self.metric].key}): {self.fp32:.4f} -> {self.int8:.4f}, worse by "
            f"{self.worsening:.4f}{unit} (allowed {self.allowed:.4f}{unit})"
        )


class CalibrationGateError(RuntimeError):
    """The INT8 bundle lost too much accuracy; nothing was written. ``failures`` and ``report`` say what."""

    def __init__(self, failures: Sequence[GateFailure], report: "CalibrationReport"):
        self.failures = list(failures)
        self.report = report
        lines = "\n  ".join(f.describe() for f in self.failures)
        super().__init__(
            f"INT8 calibration refused: accuracy dropped beyond the gate\n  {lines}\n"
            "nothing was written; try another --method, more --samples, or --force to write it anyway"
        )


def check_gate(fp32: Mapping[str, float], int8: Mapping[str, float], thresholds: GateThresholds) -> list[GateFailure]:
    """The gated metrics that worsened by more than ``thresholds`` (a non-finite INT8 metric always fails)."""
    failures = []
    for name, metric in GATE_METRICS.items():
        if metric.key not in fp32 or metric.key not in int8:
            raise KeyError(f"gate metric {metric.key!r} is missing from the evaluation")
        before, after = float(fp32[metric.key]), float(int8[metric.key])
        worsening = before - after if metric.higher_is_better else after - before
        allowed = getattr(thresholds, name)
        if not math.isfinite(after) or worsening > allowed:
            failures.append(GateFailure(name, before, after, worsening if math.isfinite(worsening) else math.inf, allowed))
    return failures


# ---------------------------------------------------------------------------------------------- measures


def perception_metrics(
    bundle: Path, scenes: Sequence[Any], steps: int, threads: int | None = None, progress: bool = False
) -> dict[str, float]:
    """Mean held-out metrics of a bundle on ORT CPU (the SDK's ``perceive``, seed :data:`EVAL_SEED`)."""
    import mmgen_edge
    from mmgen_edge.samples.shapes.evaluate import evaluate_perception

    with mmgen_edge.load(bundle, backend="ort-cpu", threads=threads, verify="size") as model:
        return evaluate_perception(model, scenes, steps, seed=EVAL_SEED, progress=progress)


class OutputProbe(Runner):
    """Wraps an active runner and keeps a copy of one output of every call."""

    def __init__(self, inner: Runner, output: str):
        super().__init__(inner.graph_name, inner.graph, inner.dims)
        self.inner, self.output = inner, output
        self.values: list[np.ndarray] = []
        self.times: list[float] = []
        self.active = inner.active

    def _activate(self) -> None:
        self.inner.activate()

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.inner.infer(feeds)
        self.values.append(out[self.output].copy())
        self.times.append(float(feeds["t_cur"].max()))
        return out

    def _deactivate(self) -> None:
        self.inner.deactivate()


def denoiser_outputs(
    bundle: Path, images: np.ndarray, steps: int, threads: int | None = None, denoiser: Path | None = None
) -> tuple[list[float], list[np.ndarray]]:
    """(t_cur, x_next) of every denoiser call while perceiving ``images`` (model size) with noise :data:`EVAL_SEED`.

    ``denoiser`` replaces the bundle's ``denoiser_cached`` file (to compare variants without staging bundles).
    """
    with Pipeline(bundle, backend="ort-cpu", verify="size", threads=threads) as pipeline:
        manifest = pipeline.manifest
        if denoiser is not None:  # swapped in the pipeline, so that closing the pipeline closes it
            graph = manifest.graphs[DENOISER_GRAPH].model_copy(update={"file": denoiser.name})
            pipeline.runners[DENOISER_GRAPH].deactivate()
            variant = OnnxRuntimeRunner(denoiser.parent, DENOISER_GRAPH, graph, manifest.dims, [CPU], threads)
            variant.activate()
            pipeline.replace_runners({DENOISER_GRAPH: variant})
        probe = OutputProbe(pipeline.runners[DENOISER_GRAPH], "x_next")
        pipeline.replace_runners({DENOISER_GRAPH: probe})
        noise = np.random.default_rng(EVAL_SEED).standard_normal(pipeline.latent_shape(len(images)), dtype=np.float32)
        sampler = manifest.sampler.model_copy(update={"num_steps": steps})
        condition = pipeline.encode(images)
        rgb = manifest.model.modality_index(IMAGE_MODALITY)
        pipeline.sample(noise, condition=condition, condition_index=rgb, sampler=sampler, rng=np.random.default_rng(EVAL_SEED))
    return probe.times, probe.values


def latent_errors(
    fp32_bundle: Path, int8_bundle: Path, images: np.ndarray, steps: int, threads: int | None = None,
    denoiser: Path | None = None,
) -> list[dict[str, float]]:  # fmt: skip
    """Per denoiser call (for the Euler sampler: per step), how far INT8's x_next is from FP32's, same noise.

    Errors accumulate over the steps as they do in deployment: max / mean absolute difference, and the RMS
    difference relative to the RMS of the FP32 latent (``rel_rms``).
    """
    times, reference = denoiser_outputs(fp32_bundle, images, steps, threads)
    _, candidate = denoiser_outputs(int8_bundle, images, steps, threads, denoiser)
    rows = []
    for call, (t, a, b) in enumerate(zip(times, reference, candidate)):
        diff = np.abs(a.astype(np.float64) - b)
        rms = float(np.sqrt(np.mean(a.astype(np.float64) ** 2))) or 1.0
        rows.append({"call": call, "t_cur": t, "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                     "rel_rms": float(np.sqrt(np.mean(diff**2)) / rms)})  # fmt: skip
    return rows


def step_speed(
    fp32_graph: Path, int8_graph: Path, feeds: Mapping[str, np.ndarray], runs: int = DEFAULT_SPEED_RUNS,
    threads: int | None = None,
) -> dict[str, float]:  # fmt: skip
    """Median milliseconds of one denoiser step, FP32 vs INT8, ORT CPU in this process (runs interleaved)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    sessions = {
        name: onnxruntime.InferenceSession(str(path), sess_options=options, providers=[CPU])
        for name, path in (("fp32", fp32_graph), ("int8", int8_graph))
    }
    feeds = dict(feeds)
    for session in sessions.values():
        for _ in range(SPEED_WARMUP_RUNS):
            session.run(None, feeds)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            times[name].append(time.perf_counter() - start)
    fp32_ms, int8_ms = (statistics.median(times[n]) * 1000 for n in ("fp32", "int8"))
    return {"fp32_ms": fp32_ms, "int8_ms": int8_ms, "speedup": fp32_ms / int8_ms, "runs": runs,
            "threads": threads or 0, "rows": int(feeds["x_t"].shape[0])}  # fmt: skip


# ---------------------------------------------------------------------------------------------- report


@dataclass
class CalibrationReport:
    """Everything a calibration run measured and decided (goes, as ``to_dict()``, into the INT8 manifest)."""

    method: str
    samples: int
    steps: list[int]
    timesteps: list[float]
    records: int
    calibration_set_sha256: str
    calibration_images_sha256: str
    source_weights_sha256: str | None
    quantized_graphs: list[str]
    excluded_ops: dict[str, list[str]]
    quantized_nodes: int
    qdq_nodes: int
    ranges_cached: bool
    eval_scenes: int = 0
    eval_steps: int = 0
    fp32: dict[str, float] = field(default_factory=dict)
    int8: dict[str, float] = field(default_factory=dict)
    latent_error: list[dict[str, float]] = field(default_factory=list)
    exclusion_ablation: dict[str, dict[str, float]] = field(default_factory=dict)
    speed: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    failures: list[dict[str, float | str]] = field(default_factory=list)
    passed: bool = False
    forced: bool = False
    output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def manifest_entry(self) -> dict[str, object]:
        """The manifest's ``calibration`` field: the headline facts, and the full report."""
        return {
            "method": self.method,
            "samples": self.samples,
            "steps": list(self.steps),
            "calibration_set_sha256": self.calibration_set_sha256,
            "source_weights_sha256": self.source_weights_sha256,
            "excluded_ops": self.excluded_ops,
            "report": self.to_dict(),
        }

    def summary_lines(self) -> list[str]:
        lines = [
            f"method       {self.method}, {self.samples} images x schedules K={self.steps} ({self.records} denoiser calls)",
            f"quantized    {', '.join(self.quantized_graphs)}: {self.quantized_nodes} nodes, {self.qdq_nodes} Q/DQ; "
            f"float: {', '.join(f'{g} ({len(n)})' for g, n in self.excluded_ops.items()) or 'none'}",
        ]
        if self.fp32:
            lines.append(f"held-out     {self.eval_scenes} scenes, K={self.eval_steps}")
            for name, metric in GATE_METRICS.items():
                before, after = self.fp32[metric.key], self.int8[metric.key]
                lines.append(f"  {metric.key:<13} fp32 {before:8.4f}  int8 {after:8.4f}  change {after - before:+.4f}")
        if self.latent_error:
            last = self.latent_error[-1]
            lines.append(f"latent       final x: max |diff| {last['max_abs']:.4f}, mean {last['mean_abs']:.4f}, rel rms {last['rel_rms']:.4f}")
        for variant, row in self.exclusion_ablation.items():
            lines.append(f"  {variant:<24} {row['quantized_nodes']:.0f} nodes quantized: final rel rms {row['rel_rms']:.4f}, "
                         f"max |diff| {row['max_abs']:.4f}")  # fmt: skip
        if self.speed:
            s = self.speed
            lines.append(f"speed (CPU)  one step: fp32 {s['fp32_ms']:.2f} ms, int8 {s['int8_ms']:.2f} ms (x{s['speedup']:.2f})")
        verdict = "passed" if self.passed else ("FAILED (written with --force)" if self.forced else "FAILED")
        lines.append(f"gate         {verdict}" + "".join(f"\n  {f['description']}" for f in self.failures))
        return lines


# --------------------------------------------------------------------------------------------- pipeline


@dataclass(frozen=True)
class CalibrationSettings:
    """The knobs of :func:`calibrate_bundle` that shape the quantized graph."""

    method: Method
    exclude: tuple[str, ...]
    op_types: tuple[str, ...]
    graphs: tuple[str, ...]


def _quiet() -> contextlib.AbstractContextManager[object]:
    """onnxruntime's calibrators print progress to stdout; keep stdout clean (e.g. for --json)."""
    return contextlib.redirect_stdout(io.StringIO())


def _quantize_graphs(
    bundle: Path, manifest: Manifest, capture: CaptureSet, settings: CalibrationSettings, work: Path,
    cache_dir: Path | None,
) -> dict[str, QuantizedGraph]:  # fmt: skip
    """Prepare, calibrate (or reuse cached ranges) and quantize every graph of ``settings.graphs``."""
    results = {}
    for name in settings.graphs:
        entry = manifest.graphs[name]
        prepared = prepare_graph(bundle / entry.file, work / f"{name}.prepared.onnx")
        key = ranges_cache_key(
            weights=manifest.provenance.model_weights_sha256, graph=manifest.file(entry.file).sha256,
            calibration_set=capture.sha256, method=settings.method.value, op_types=settings.op_types,
        )  # fmt: skip
        ranges_file = (cache_dir or work) / f"{name}-{key[:32]}.ranges.json"
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
        factory = RangesFactory(prepared, capture.reader(name), settings.method, work, settings.op_types)
        with _quiet():
            ranges_file, hit = cached_ranges(ranges_file, factory)
            exclude = settings.exclude if name == DENOISER_GRAPH else ()
            result = quantize_graph(prepared, work / f"{name}.int8.onnx", ranges_file, settings.method, exclude, settings.op_types)
        result.ranges_cached = hit
        assert_tensorrt_buildable(result.path)
        results[name] = result
    return results


def _new_report(
    manifest: Manifest, capture: CaptureSet, settings: CalibrationSettings, quantized: Mapping[str, QuantizedGraph]
) -> CalibrationReport:
    excluded = {f"{graph}:{group}": nodes for graph, q in quantized.items() for group, nodes in q.excluded.items() if nodes}
    return CalibrationReport(
        method=settings.method.value,
        samples=capture.images,
        steps=list(capture.steps),
        timesteps=capture.timesteps(),
        records=len(capture.records_for(DENOISER_GRAPH)),
        calibration_set_sha256=capture.sha256,
        calibration_images_sha256=capture.images_sha256,
        source_weights_sha256=manifest.provenance.model_weights_sha256,
        quantized_graphs=list(quantized),
        excluded_ops=excluded,
        quantized_nodes=sum(q.quantized_nodes for q in quantized.values()),
        qdq_nodes=sum(q.qdq_nodes for q in quantized.values()),
        ranges_cached=all(q.ranges_cached for q in quantized.values()),
    )


def _evaluate(
    report: CalibrationReport, fp32: Path, int8: Path, capture: CaptureSet, eval_scenes: int, eval_steps: int,
    speed_runs: int, threads: int | None, say: Callable[[str], None], progress: bool,
    compare_exclusions: QuantizedGraph | None = None,
) -> None:  # fmt: skip
    """Fill the report's accuracy, latent-error and speed sections."""
    from mmgen_edge.samples.shapes.evaluate import held_out_scenes
    from mmgen_edge.sdk.images import to_model_size

    manifest = read_manifest(fp32, verify="none")
    scenes = held_out_scenes(eval_scenes, manifest.model.resolution)
    report.eval_scenes, report.eval_steps = eval_scenes, eval_steps
    say(f"evaluating FP32 and INT8 on {eval_scenes} held-out scenes (K={eval_steps})")
    report.fp32 = perception_metrics(fp32, scenes, eval_steps, threads, progress)
    report.int8 = perception_metrics(int8, scenes, eval_steps, threads, progress)
    images = np.stack([to_model_size(s.rgb, manifest.model.resolution) for s in scenes[: manifest.max_batch]])
    say("latent error per step")
    report.latent_error = latent_errors(fp32, int8, images, eval_steps, threads)
    if compare_exclusions is not None:
        say("latent error without the float exclusions (ablation)")
        report.exclusion_ablation = exclusion_ablation(report, compare_exclusions, fp32, int8, images, eval_steps, threads)
    if speed_runs > 0:
        say(f"timing one denoiser step ({speed_runs} runs each)")
        feeds = capture.reader(DENOISER_GRAPH).get_next()
        assert feeds is not None  # the capture holds at least one call
        graph = manifest.graphs[DENOISER_GRAPH].file
        report.speed = step_speed(fp32 / graph, int8 / graph, feeds, speed_runs, threads)


def exclusion_ablation(
    report: CalibrationReport, quantized: QuantizedGraph, fp32: Path, int8: Path, images: np.ndarray, steps: int,
    threads: int | None,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """Final-latent error of the denoiser with its float exclusions (as written) and without any (same ranges)."""
    variant = quantized.path.with_name(f"{DENOISER_GRAPH}.no-exclusions.onnx")
    with _quiet():
        plain = quantize_graph(quantized.prepared, variant, quantized.ranges_file, quantized.method, (), quantized.op_types)
    without = latent_errors(fp32, int8, images, steps, threads, denoiser=variant)[-1]
    with_ = report.latent_error[-1]
    groups = "+".join(quantized.excluded) or "none"
    return {
        f"float {groups}": {**_final(with_), "quantized_nodes": float(quantized.quantized_nodes)},
        "no exclusions": {**_final(without), "quantized_nodes": float(plain.quantized_nodes)},
    }


def _final(row: Mapping[str, float]) -> dict[str, float]:
    return {key: row[key] for key in ("max_abs", "mean_abs", "rel_rms")}


def _apply_gate(report: CalibrationReport, thresholds: GateThresholds, force: bool) -> list[GateFailure]:
    failures = check_gate(report.fp32, report.int8, thresholds)
    report.thresholds = asdict(thresholds)
    report.failures = [{**asdict(f), "description": f.describe()} for f in failures]
    report.passed = not failures
    report.forced = bool(failures) and force
    return failures


def _check_inputs(bundle: Path, manifest: Manifest, out: Path, overwrite: bool, graphs: Sequence[str]) -> None:
    if manifest.precision != Precision.FP32:
        raise ValueError(f"{bundle} is a {manifest.precision.value} bundle; calibrate an fp32 bundle")
    if out.resolve() == bundle.resolve():
        raise ValueError("--out must differ from the FP32 bundle")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (choose another path or allow overwriting)")
    missing = [g for g in graphs if g not in manifest.graphs]
    if missing:
        raise ValueError(f"the bundle has no {missing} graph(s) to quantize (it has {sorted(manifest.graphs)})")


@contextlib.contextmanager
def _work_directory(work_dir: str | Path | None) -> Iterator[Path]:
    if work_dir is not None:
        path = Path(work_dir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mmgen-calibrate-") as tmp:
        yield Path(tmp)


def calibrate_bundle(
    bundle: str | Path,
    data: str,
    out: str | Path,
    method: str = Method.MINMAX.value,
    max_drop: GateThresholds | None = None,
    force: bool = False,
    num_samples: int = DEFAULT_SAMPLES,
    steps: Sequence[int] = DEFAULT_STEPS,
    eval_scenes: int = DEFAULT_EVAL_SCENES,
    eval_steps: int | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    quantize_vae: Sequence[str] = (),
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    cache_dir: str | Path | None = None,
    work_dir: str | Path | None = None,
    overwrite: bool = False,
    speed_runs: int = DEFAULT_SPEED_RUNS,
    compare_exclusions: bool = False,
    threads: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> CalibrationReport:
    """Calibrate ``bundle`` (FP32) on ``data`` into the INT8 bundle ``out``, behind the accuracy gate.

    Args:
        data: calibration images: a folder, a video file or ``demo:N`` (see :mod:`.sources`).
        method: "minmax", "entropy" or "percentile".
        max_drop: gate thresholds (default :class:`GateThresholds`()); ``force`` writes a failing bundle anyway.
        num_samples: calibration images used (at most); ``steps``: the schedules run on each.
        eval_scenes: held-out scenes scored (0 skips the evaluation and the gate: only with ``force``).
        eval_steps: sampler steps of the evaluation (default: the manifest's).
        exclude: sensitive groups kept in float in the denoiser (see ``quantize.SENSITIVE_GROUPS``).
        quantize_vae: also quantize these of "vae_encoder" / "vae_decoder".
        cache_dir: keep activation ranges here, keyed by weights/graph/calibration-set hash, method and op types.
        work_dir: keep the captured feeds and intermediate graphs here (default: a temporary directory).
        compare_exclusions: also measure the latent error of the denoiser quantized without float exclusions.
    Raises:
        CalibrationGateError: the gate failed (and not ``force``); nothing is written.
    """
    say = log or (lambda message: None)
    bundle, out = Path(bundle), Path(out)
    manifest = read_manifest(bundle, verify="full")
    unknown_vae = [g for g in quantize_vae if g not in VAE_GRAPHS]
    if unknown_vae:
        raise ValueError(f"quantize_vae takes {list(VAE_GRAPHS)}, got {unknown_vae}")
    settings = CalibrationSettings(Method(method), tuple(exclude), tuple(op_types), (DENOISER_GRAPH, *quantize_vae))
    _check_inputs(bundle, manifest, out, overwrite, settings.graphs)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if eval_scenes < 0 or (eval_scenes == 0 and not force):
        raise ValueError("eval_scenes must be >= 1 (0 skips the accuracy gate, which needs force=True)")
    thresholds = max_drop or GateThresholds()
    eval_steps = eval_steps or manifest.sampler.num_steps
    with _work_directory(work_dir) as work:
        say(f"capturing graph inputs on {data} (up to {num_samples} images, schedules K={list(steps)})")
        images = iter_calibration_images(data, num_samples, demo_size=manifest.model.resolution)
        capture_graphs = ("conditioning", DENOISER_GRAPH, *quantize_vae)
        capture = capture_calibration_feeds(bundle, images, work / "capture", steps, capture_graphs, threads=threads,
                                            total=num_samples, progress=progress)  # fmt: skip
        say(f"quantizing {', '.join(settings.graphs)} ({settings.method.value})")
        quantized = _quantize_graphs(bundle, manifest, capture, settings, work, Path(cache_dir) if cache_dir else None)
        report = _new_report(manifest, capture, settings, quantized)
        with atomic_directory(out, overwrite=overwrite) as staging:
            staged = stage_int8_bundle(bundle, manifest, {n: q.path for n, q in quantized.items()}, staging)
            if eval_scenes:
                ablation = quantized[DENOISER_GRAPH] if compare_exclusions and settings.exclude else None
                _evaluate(report, bundle, staging, capture, eval_scenes, eval_steps, speed_runs, threads, say, progress,
                          ablation)  # fmt: skip
                failures = _apply_gate(report, thresholds, force)
                if failures and not force:
                    raise CalibrationGateError(failures, report)
            else:
                report.forced = True
            report.output = str(out)
            write_manifest(staging, staged.model_copy(update={"calibration": report.manifest_entry()}))
    return report
