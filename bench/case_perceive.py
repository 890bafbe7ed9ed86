"""The perceive case: ``model.perceive`` of held-out scenes per bundle, batch and step count K, the median of the
whole call and of each SDK stage (``timings``). Its batch-1 latencies feed the accuracy-vs-latency plot."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mmgen_edge.runtime.modalities import PERCEPTION_TASKS

from . import harness
from .context import Context
from .costs import case_cost
from .inputs import SEED, scene_images
from .outcomes import skipped

PERCEIVE_TASKS = PERCEPTION_TASKS


def perceive_fn(model: Any, images: list[np.ndarray], k: int, stages: dict[str, list[float]]) -> Callable[[], object]:
    """One perceive call of ``images`` at K steps, appending each stage's seconds to ``stages``."""

    def call() -> object:
        results = model.perceive(images, tasks=PERCEIVE_TASKS, steps=k, seed=SEED)
        for name, seconds in results[0].timings.items():
            stages.setdefault(name, []).append(seconds)
        return results

    return call


def timed_perceive(
    ctx: Context, model: Any, images: list[np.ndarray], k: int
) -> tuple[harness.Timing, dict[str, list[float]]]:
    """Warm up, then time ``runs`` perceive calls; returns the timing and the per-stage samples of the timed calls."""
    stages: dict[str, list[float]] = {}
    call = perceive_fn(model, images, k, stages)
    for _ in range(ctx.settings.warmup):
        call()
    stages.clear()
    return harness.measure(call, warmup=0, runs=ctx.settings.runs), stages


def bench_perceive_case(ctx: Context, label: str, n: int, k: int, images: list[np.ndarray]) -> dict[str, Any]:
    """Perceive of ``n`` images at K steps: timing, median per stage, cost; records the latency in ``ctx``."""
    model = ctx.models[label]
    timing, stages = timed_perceive(ctx, model, images[:n], k)
    ctx.perceive_latency_ms[(label, n, k)] = timing.median_ms
    stage_ms = {name: float(np.median(values)) * 1e3 for name, values in stages.items()}
    m = model.manifest
    parts = [("vae_encoder", {"N": n}, 1), ("denoiser_cached", {"N": n, "B": n}, k),
             ("vae_decoder", {"V": len(PERCEIVE_TASKS) * n}, 1)]  # fmt: skip
    return {
        "timing": timing.as_dict(),
        "per_frame_ms": timing.median_ms / n,
        "stages_ms": stage_ms,
        "other_ms": timing.median_ms - sum(stage_ms.values()),  # input checks, noise, result objects
        "cost": case_cost(ctx, label, parts, per_frame=n),
        "note": f"conditioning is cached after the first call (the loop's cache); {m.model.resolution} px input",
    }


def bench_perceive_batch(ctx: Context, label: str, n: int, images: list[np.ndarray]) -> dict[str, Any]:
    """Every K of one bundle at batch n (skipped above the bundle's max_batch)."""
    max_batch = ctx.models[label].manifest.max_batch
    if n > max_batch:
        return skipped(f"batch {n} > max_batch {max_batch}")
    return {
        f"K{k}": ctx.attempt(f"perceive {label} b{n} K{k}", lambda k=k: bench_perceive_case(ctx, label, n, k, images))
        for k in ctx.settings.steps
    }


def bench_perceive(ctx: Context) -> dict[str, Any]:
    """The perceive case: every open bundle, batch and K."""
    if not ctx.models:
        return skipped("no bundle open")
    out: dict[str, Any] = {}
    for label, model in ctx.models.items():
        images = scene_images(max(ctx.settings.batches), model.resolution)
        out[label] = {f"b{n}": bench_perceive_batch(ctx, label, n, images) for n in ctx.settings.batches}
    return out

