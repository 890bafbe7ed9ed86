"""The step case: one denoiser step of perception per batch, timed round-robin across PyTorch eager (cached and
plain), torch.compile, ONNX Runtime FP32 / INT8 and PyTorch CUDA, with the ratios between them."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from . import harness
from .artifacts import FP32, INT8
from .context import Context
from .costs import case_cost
from .inputs import StepInputs, step_inputs
from .outcomes import skipped
from .torch_compile import compiled_step_fn, try_compile

STEP_RATIOS = (  # (name, faster candidate, slower candidate)
    ("ort_fp32_vs_torch_eager", "ort_fp32", "torch_eager"),
    ("ort_fp32_vs_torch_eager_plain", "ort_fp32", "torch_eager_plain"),
    ("torch_eager_vs_torch_eager_plain", "torch_eager", "torch_eager_plain"),
    ("torch_compile_vs_torch_eager", "torch_compile", "torch_eager"),
    ("ort_fp32_vs_torch_compile", "ort_fp32", "torch_compile"),
    ("ort_int8_vs_ort_fp32", "ort_int8", "ort_fp32"),
    ("ort_int8_vs_torch_eager", "ort_int8", "torch_eager"),
    ("torch_cuda_eager_vs_torch_eager", "torch_cuda_eager", "torch_eager"),
)

STEP_NOTES = {
    "inputs": "the first step of perception: no guidance (modulation rows = N), rgb slot held at condition_t",
    "torch_eager": "CachedDenoiserStep with precomputed modulation: the computation of the denoiser_cached graph",
    "torch_eager_plain": "model(x, t, y, task) + Euler update (conditioning recomputed inside)",
    "ort": "Runner.infer of denoiser_cached: the runtime's call (input checks against the manifest + session.run)",
    "ratio_definition": "A_vs_B = median time of B / median time of A (> 1: A is faster); candidates timed round-robin",
}


def speedup(timings: Mapping[str, Any], fast: str, slow: str) -> float | None:
    """time(slow) / time(fast), or None when either was not measured."""
    a, b = timings.get(fast), timings.get(slow)
    if not (isinstance(a, dict) and isinstance(b, dict) and "timing" in a and "timing" in b):
        return None
    return b["timing"]["median_ms"] / a["timing"]["median_ms"]


def torch_step_fns(ctx: Context, inputs: StepInputs, device: str = "cpu") -> dict[str, Callable[[], object]]:
    """Eager PyTorch: the cached step (precomputed modulation) and the plain model(x, t, y, task) + Euler."""
    import torch

    from mmgen_edge.export.graphs import CachedDenoiserStep, Conditioning
    from mmgen_edge.runtime import sampler as maths

    model = ctx.torch_model if device == "cpu" else copy.deepcopy(ctx.torch_model).to(device)
    x, t_cur, t_next = (torch.from_numpy(a).to(device) for a in (inputs.x, inputs.t_cur, inputs.t_next))
    y, task = torch.from_numpy(inputs.labels).to(device), torch.from_numpy(inputs.task).to(device)
    scale = torch.tensor([1.0], device=device)
    cached = CachedDenoiserStep(model).eval()
    with torch.inference_mode():
        blocks, heads = Conditioning(model).eval()(t_cur, y, task)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def cached_step() -> object:
        with torch.inference_mode():
            out = cached(x, t_cur, t_next, blocks, heads, scale)
        sync()
        return out

    def plain_step() -> object:
        with torch.inference_mode():
            v = model(x, t_cur, y, task)
            out = maths.euler_update(x, v, t_cur, t_next), maths.velocity_to_x0(x, v, t_cur)
        sync()
        return out

    return {"cached": cached_step, "plain": plain_step}


def ort_step_fn(ctx: Context, label: str, inputs: StepInputs) -> Callable[[], object]:
    """One ``denoiser_cached`` call of a bundle, modulation precomputed by its ``conditioning`` graph."""
    runners = ctx.models[label].pipeline.runners
    mod = runners["conditioning"].infer({"t": inputs.t_cur, "y": inputs.labels, "task": inputs.task})
    feeds = {"x_t": inputs.x, "t_cur": inputs.t_cur, "t_next": inputs.t_next, "block_modulation": mod["block_modulation"],
             "final_modulation": mod["final_modulation"], "cfg_scale": np.array([1.0], np.float32)}  # fmt: skip
    runner = runners["denoiser_cached"]
    return lambda: runner.infer(feeds)


def cuda_reason(ctx: Context) -> str | None:
    """Why the CUDA baseline does not run (None: it runs)."""
    import torch

    if not ctx.settings.torch_cuda:
        return "not requested (--torch-cuda)"
    if not torch.cuda.is_available():
        return f"torch.cuda.is_available() is False (torch {torch.__version__})"
    if ctx.torch_model is None:
        return "no PyTorch model"
    return None


def step_candidates(
    ctx: Context, n: int, compile_state: dict[str, Any]
) -> tuple[dict[str, Callable[[], object]], dict[str, Any]]:
    """The callables to time at batch n, and the cases that will not be timed (with their reason)."""
    from mmgen_edge.runtime.sampler import SamplerConfig

    fns: dict[str, Callable[[], object]] = {}
    cases: dict[str, Any] = {}
    config = ctx.torch_model.config if ctx.torch_model is not None else next(iter(ctx.manifests.values())).model
    sampler = ctx.manifests[FP32].sampler if FP32 in ctx.manifests else SamplerConfig()
    inputs = step_inputs(config, sampler, n)
    if ctx.torch_model is not None:
        torch_fns = torch_step_fns(ctx, inputs)
        fns["torch_eager"], fns["torch_eager_plain"] = torch_fns["cached"], torch_fns["plain"]
    else:
        cases["torch_eager"] = cases["torch_eager_plain"] = skipped(ctx.artifacts.missing.get("model_dir", "no model"))
    if compile_state.get("ok"):

        def compiled() -> dict[str, Any]:
            fns["torch_compile"], first = compiled_step_fn(ctx, inputs)
            return {"first_call_seconds": first}

        cases["torch_compile"] = ctx.attempt(f"torch.compile b{n}", compiled)
    else:
        cases["torch_compile"] = compile_state
    for label, key in ((FP32, "ort_fp32"), (INT8, "ort_int8")):
        if label not in ctx.models:
            missing = ctx.artifacts.missing.get("bundle" if label == FP32 else "bundle_int8")
            cases[key] = skipped(missing or f"the {label} bundle is not open (see meta.bundles)")
        elif n > ctx.models[label].manifest.max_batch:
            cases[key] = skipped(f"batch {n} > the {label} bundle's max_batch {ctx.models[label].manifest.max_batch}")
        else:
            fns[key] = ort_step_fn(ctx, label, inputs)
    reason = cuda_reason(ctx)
    if reason is None:
        fns["torch_cuda_eager"] = torch_step_fns(ctx, inputs, device="cuda")["cached"]
    else:
        cases["torch_cuda_eager"] = skipped(reason)
    return fns, cases


def step_costs(ctx: Context, n: int) -> dict[str, dict[str, Any]]:
    """The graph cost of each candidate at batch n (the eager and compiled steps compute what the graphs do)."""
    step = [("denoiser_cached", {"N": n, "B": n}, 1)]
    plain = [("conditioning", {"B": n}, 1), *step]
    return {"torch_eager": case_cost(ctx, FP32, step), "torch_eager_plain": case_cost(ctx, FP32, plain),
            "torch_compile": case_cost(ctx, FP32, step), "ort_fp32": case_cost(ctx, FP32, step),
            "ort_int8": case_cost(ctx, INT8, step)}  # fmt: skip


def bench_step_batch(ctx: Context, n: int, compile_state: dict[str, Any]) -> dict[str, Any]:
    """Every candidate at batch n timed round-robin, with its cost, and the ratios of STEP_RATIOS."""
    fns, cases = step_candidates(ctx, n, compile_state)
    timings = harness.measure_interleaved(fns, ctx.settings.warmup, ctx.settings.runs) if fns else {}
    costs = step_costs(ctx, n)
    for name, timing in timings.items():
        cases[name] = {**cases.get(name, {}), "timing": timing.as_dict()}
        if name in costs:
            cases[name]["cost"] = costs[name]
    ratios = {name: speedup(cases, fast, slow) for name, fast, slow in STEP_RATIOS}
    ratios["cpu_int8_vs_ort_fp32"] = ratios.get("ort_int8_vs_ort_fp32")  # the backends case adds OpenVINO's INT8
    return {"cases": cases, "ratios": {k: v for k, v in ratios.items() if v is not None}}


def bench_step(ctx: Context) -> dict[str, Any]:
    """The step case: the torch.compile trial, then each batch (``b1``, ``b4``, ...)."""
    if ctx.torch_model is None and not ctx.manifests:
        return skipped("no PyTorch model and no bundle open")
    compile_state = ctx.attempt("torch.compile trial", lambda: try_compile(ctx))
    out: dict[str, Any] = {"notes": STEP_NOTES, "torch_compile_trial": compile_state}
    for n in ctx.settings.batches:
        out[f"b{n}"] = ctx.attempt(f"step b{n}", lambda n=n: bench_step_batch(ctx, n, compile_state))
    return out

