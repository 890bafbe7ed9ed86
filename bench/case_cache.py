"""The conditioning-cache case: ``DenoisingLoop.velocity_step`` with the modulation cache warm vs a loop that
recomputes it every step (``cache_size=0``: ``conditioning`` + ``denoiser_cached`` per step), same runners."""

from __future__ import annotations

from typing import Any

from . import harness
from .context import Context
from .costs import case_cost
from .inputs import step_inputs
from .outcomes import skipped


def bench_cache_batch(ctx: Context, label: str, n: int) -> dict[str, Any]:
    """Per-step time with the modulation cache warm vs recomputed every step (cache_size=0), same runners."""
    from mmgen_edge.runtime.loop import DenoisingLoop

    model = ctx.models[label]
    if n > model.manifest.max_batch:
        return skipped(f"batch {n} > max_batch {model.manifest.max_batch}")
    inputs = step_inputs(model.manifest.model, model.manifest.sampler, n)
    loops = {"on": DenoisingLoop(model.manifest, model.pipeline.runners),
             "off": DenoisingLoop(model.manifest, model.pipeline.runners, cache_size=0)}  # fmt: skip
    args = (inputs.x, inputs.t_cur, inputs.t_next, inputs.labels, inputs.task, 1.0)
    fns = {name: (lambda loop=loop: loop.velocity_step(*args)) for name, loop in loops.items()}
    timings = harness.measure_interleaved(fns, ctx.settings.warmup, ctx.settings.runs)
    step = [("denoiser_cached", {"N": n, "B": n}, 1)]
    costs = {"on": case_cost(ctx, label, step), "off": case_cost(ctx, label, [("conditioning", {"B": n}, 1), *step])}
    out: dict[str, Any] = {
        name: {"timing": timings[name].as_dict(), "cost": costs[name], "loop_stats": dict(vars(loop.stats))}
        for name, loop in loops.items()
    }
    out["conditioning_cache_speedup"] = timings["off"].median_ms / timings["on"].median_ms
    return out


def bench_cache(ctx: Context) -> dict[str, Any]:
    """The conditioning-cache case: every open bundle at every batch."""
    if not ctx.models:
        return skipped("no bundle open")
    return {label: {f"b{n}": ctx.attempt(f"cache {label} b{n}", lambda label=label, n=n: bench_cache_batch(ctx, label, n))
                    for n in ctx.settings.batches} for label in ctx.models}  # fmt: skip

