"""INT8 calibration end to end, behind an accuracy gate: the ``calibrate_bundle`` pipeline. Torch-free.

    report = calibrate_bundle("bundles/fp32", "demo:64", "bundles/int8")   # raises CalibrationGateError on a drop

1. capture the FP32 pipeline's graph inputs on the calibration images, at every step of every schedule
   (:mod:`.capture`);
2. compute activation ranges (MinMax / Entropy / Percentile; cached by weights, graph and calibration-set hash) and
   write the explicit Q/DQ ``denoiser_cached`` (optionally the VAE graphs) (:mod:`.quantize`); the
   ``conditioning`` graph stays FP32;
3. stage the INT8 bundle (atomically: nothing appears at ``out`` unless it is accepted) and compare it with the
   FP32 bundle: perception accuracy on the demo renderer's held-out scenes (depth delta1, normal mean error, mIoU),
   the latent error after every denoiser call with the same noise, and the CPU time of one denoiser step
   (:mod:`.measures`);
4. the gate: unless ``force``, refuse the bundle when a metric moved by more than its threshold
   (:class:`~.gate.GateThresholds`), raising :class:`~.gate.CalibrationGateError` (:mod:`.gate`); otherwise the
   report (:mod:`.report`) goes into the manifest's ``calibration`` field.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mmgen_edge.runtime.fileio import atomic_directory, check_output_directory, file_in_the_way, is_within
from mmgen_edge.runtime.manifest import Manifest, Precision, read_manifest, write_manifest

from .capture import DEFAULT_STEPS, CaptureSet, capture_calibration_feeds
from .cpu_isa import CpuIsa, detect_cpu_isa
from .cpu_target import DEFAULT_CPU_SCHEME, CpuScheme, Target, cpu_form, quantize_for_cpu, sample_feeds
from .gate import CalibrationGateError, GateFailure, GateThresholds, check_gate
from .measures import DEFAULT_SPEED_RUNS, DENOISER_GRAPH, latent_errors, perception_metrics, step_speed
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
from .report import CalibrationReport
from .sources import iter_calibration_images

#: Calibration images used by default.
DEFAULT_SAMPLES = 64
#: Held-out scenes the gate scores by default.
DEFAULT_EVAL_SCENES = 32
#: The VAE graphs, quantized only when asked for (the denoiser always is).
VAE_GRAPHS = ("vae_encoder", "vae_decoder")


@dataclass(frozen=True)
class CalibrationSettings:
    """The knobs of :func:`calibrate_bundle` that shape the quantized graph."""

    method: Method
    exclude: tuple[str, ...] | None  # None: the CPU target measures which groups stay float
    op_types: tuple[str, ...]
    graphs: tuple[str, ...]
    target: Target = Target.TENSORRT
    cpu_scheme: CpuScheme = DEFAULT_CPU_SCHEME

    @property
    def needs_ranges(self) -> bool:
        """Static quantization needs calibrated activation ranges; the CPU form's dynamic scheme does not."""
        return not (self.target == Target.CPU and self.cpu_scheme == CpuScheme.DYNAMIC)


def _quiet() -> contextlib.AbstractContextManager[object]:
    """onnxruntime's calibrators print progress to stdout; keep stdout clean (e.g. for --json)."""
    return contextlib.redirect_stdout(io.StringIO())


def _quantize_graphs(
    bundle: Path, manifest: Manifest, capture: CaptureSet, settings: CalibrationSettings, work: Path,
    cache_dir: Path | None, isa: CpuIsa, threads: int | None = None,
) -> tuple[dict[str, QuantizedGraph], dict[str, dict[str, float]]]:  # fmt: skip
    """Prepare, calibrate (or reuse cached ranges) and quantize every graph of ``settings.graphs``.

    Returns the quantized graphs and, for the CPU target with measured float groups, the denoiser's ablation rows.
    """
    results, ablation = {}, {}
    cpu = settings.target == Target.CPU
    for name in settings.graphs:
        entry = manifest.graphs[name]
        prepared = prepare_graph(bundle / entry.file, work / f"{name}.prepared.onnx")
        ranges_file, hit = None, False
        if settings.needs_ranges:
            key = ranges_cache_key(
                weights=manifest.provenance.model_weights_sha256, graph=manifest.file(entry.file).sha256,
                calibration_set=capture.sha256, method=settings.method.value, op_types=settings.op_types,
                **({"activations": "asymmetric"} if cpu else {}),
            )  # fmt: skip
            ranges_file = (cache_dir or work) / f"{name}-{key[:32]}.ranges.json"
            if cache_dir is not None:
                cache_dir.mkdir(parents=True, exist_ok=True)
            factory = RangesFactory(prepared, capture.reader(name), settings.method, work, settings.op_types, symmetric=not cpu)
            with _quiet():
                ranges_file, hit = cached_ranges(ranges_file, factory)
        denoiser = name == DENOISER_GRAPH
        with _quiet():
            if cpu:
                exclude = settings.exclude if denoiser else ()
                feeds = sample_feeds(capture.reader(name)) if exclude is None else []
                result, rows = quantize_for_cpu(prepared, work / f"{name}.int8.onnx", settings.cpu_scheme, exclude, feeds,
                                                ranges_file, settings.method, isa, settings.op_types, threads=threads)  # fmt: skip
                ablation.update(rows if denoiser else {})
            else:
                assert ranges_file is not None  # the TensorRT form is always static
                result = quantize_graph(prepared, work / f"{name}.int8.onnx", ranges_file, settings.method,
                                        (settings.exclude or ()) if denoiser else (), settings.op_types)  # fmt: skip
                assert_tensorrt_buildable(result.path)
        result.ranges_cached = hit
        results[name] = result
    return results, ablation


def _new_report(
    manifest: Manifest, capture: CaptureSet, settings: CalibrationSettings, quantized: Mapping[str, QuantizedGraph],
    isa: CpuIsa,
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
        target=settings.target.value,
        isa=isa.to_dict(),
        cpu_form={"scheme": settings.cpu_scheme.value, **{g: cpu_form(q.path).to_dict() for g, q in quantized.items()}}
        if settings.target == Target.CPU else {},
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


def _check_inputs(
    bundle: Path, manifest: Manifest, out: Path, overwrite: bool, graphs: Sequence[str], data: str | None = None
) -> None:
    if manifest.precision != Precision.FP32:
        raise ValueError(f"{bundle} is a {manifest.precision.value} bundle; calibrate an fp32 bundle")
    if out.resolve() == bundle.resolve():
        raise ValueError("--out must differ from the FP32 bundle")
    from .sources import data_path

    images = data_path(data)
    check_output_directory(out, overwrite, protect=(bundle, *((images,) if images else ())))  # before any work
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
    exclude: Sequence[str] | None = None,
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
    target: str = Target.TENSORRT.value,
    cpu_scheme: str = DEFAULT_CPU_SCHEME.value,
) -> CalibrationReport:
    """Calibrate ``bundle`` (FP32) on ``data`` into the INT8 bundle ``out``, behind the accuracy gate.

    Args:
        data: calibration images: a folder, a video file or ``demo:N`` (see :mod:`.sources`).
        method: "minmax", "entropy" or "percentile".
        max_drop: gate thresholds (default :class:`GateThresholds`()); ``force`` writes a failing bundle anyway.
        num_samples: calibration images used (at most); ``steps``: the schedules run on each.
        eval_scenes: held-out scenes scored (0 skips the evaluation and the gate: only with ``force``).
        eval_steps: sampler steps of the evaluation (default: the manifest's).
        exclude: sensitive groups kept in float in the denoiser (see ``quantize.SENSITIVE_GROUPS``); ``None``: the
            target's default (TensorRT: ``quantize.DEFAULT_EXCLUDE``; CPU: measured, see
            ``cpu_target.choose_float_groups``).
        quantize_vae: also quantize these of "vae_encoder" / "vae_decoder".
        cache_dir: keep activation ranges here, keyed by weights/graph/calibration-set hash, method and op types.
        work_dir: keep the captured feeds and intermediate graphs here (default: a temporary directory).
        compare_exclusions: also measure the latent error of the denoiser quantized without float exclusions
            (TensorRT target; the CPU target's measured exclusions report their own ablation).
        target: "tensorrt" (symmetric S8S8 Q/DQ, the default) or "cpu" (uint8 x int8 integer operators for ONNX
            Runtime on the CPU, see :mod:`.cpu_target`).
        cpu_scheme: the CPU form's "dynamic" (MatMulInteger, default) or "static" (QLinearMatMul) quantization.
    Raises:
        CalibrationGateError: the gate failed (and not ``force``); nothing is written.
    """
    say = log or (lambda message: None)
    bundle, out = Path(bundle), Path(out)
    manifest = read_manifest(bundle, verify="full")
    unknown_vae = [g for g in quantize_vae if g not in VAE_GRAPHS]
    if unknown_vae:
        raise ValueError(f"quantize_vae takes {list(VAE_GRAPHS)}, got {unknown_vae}")
    target_ = Target(target)
    if exclude is None and target_ == Target.TENSORRT:
        exclude = DEFAULT_EXCLUDE
    settings = CalibrationSettings(Method(method), None if exclude is None else tuple(exclude), tuple(op_types),
                                   (DENOISER_GRAPH, *quantize_vae), target_, CpuScheme(cpu_scheme))  # fmt: skip
    isa = detect_cpu_isa()
    _check_inputs(bundle, manifest, out, overwrite, settings.graphs, data)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if eval_scenes < 0 or (eval_scenes == 0 and not force):
        raise ValueError("eval_scenes must be >= 1 (0 skips the accuracy gate, which needs force=True)")
    for option, folder in (("work_dir", work_dir), ("cache_dir", cache_dir)):  # checked before any work
        if folder is None:
            continue
        for name, path in (("the FP32 bundle", bundle), ("--out", out)):  # never inside the input/output
            if is_within(folder, path):
                raise ValueError(f"{option} {folder} is inside {name} {path}: choose a separate folder")
        blocked = file_in_the_way(Path(folder).resolve())
        if blocked is not None:
            raise ValueError(f"{option} {folder}: {blocked} is a file, not a folder")
    thresholds = max_drop or GateThresholds()
    eval_steps = eval_steps or manifest.sampler.num_steps
    with _work_directory(work_dir) as work:
        say(f"capturing graph inputs on {data} (up to {num_samples} images, schedules K={list(steps)})")
        images = iter_calibration_images(data, num_samples, demo_size=manifest.model.resolution)
        capture_graphs = ("conditioning", DENOISER_GRAPH, *quantize_vae)
        capture = capture_calibration_feeds(bundle, images, work / "capture", steps, capture_graphs, threads=threads,
                                            total=num_samples, progress=progress)  # fmt: skip
        form = settings.method.value if target_ == Target.TENSORRT else f"CPU form, {settings.cpu_scheme.value}"
        say(f"quantizing {', '.join(settings.graphs)} ({form}; CPU integer path {isa.path})")
        quantized, cpu_ablation = _quantize_graphs(bundle, manifest, capture, settings, work,
                                                   Path(cache_dir) if cache_dir else None, isa, threads)  # fmt: skip
        report = _new_report(manifest, capture, settings, quantized, isa)
        report.exclusion_ablation = cpu_ablation
        with atomic_directory(out, overwrite=overwrite) as staging:
            staged = stage_int8_bundle(bundle, manifest, {n: q.path for n, q in quantized.items()}, staging)
            if eval_scenes:
                trt_exclusions = target_ == Target.TENSORRT and compare_exclusions and settings.exclude
                ablation = quantized[DENOISER_GRAPH] if trt_exclusions else None
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
