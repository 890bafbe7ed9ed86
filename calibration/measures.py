"""What calibration measures on a bundle: held-out perception metrics, per-step latent error, and step speed.

    times, latents = denoiser_outputs(bundle, images, steps)          # x_next of every denoiser call
    rows = latent_errors(fp32_bundle, int8_bundle, images, steps)      # INT8 vs FP32, same noise
    speed = step_speed(fp32_graph, int8_graph, feeds)                  # median ms of one denoiser step

All on ONNX Runtime CPU, with the sampler noise seeded by :data:`EVAL_SEED` so that FP32 and INT8 see the same noise.
Torch-free.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmgen_edge.runtime.modalities import IMAGE_MODALITY
from mmgen_edge.runtime.onnxruntime_runner import CPU, OnnxRuntimeRunner
from mmgen_edge.runtime.pipeline import Pipeline
from mmgen_edge.runtime.runner import Runner

#: Timed runs of one denoiser step per precision (the median is reported).
DEFAULT_SPEED_RUNS = 20
#: Untimed runs before timing (session warm-up).
SPEED_WARMUP_RUNS = 3
#: Seed of the sampler noise in the evaluation (the same for FP32 and INT8).
EVAL_SEED = 0
#: The denoiser graph: the one measured here, and the one calibration always quantizes.
DENOISER_GRAPH = "denoiser_cached"


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
