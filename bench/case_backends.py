"""The backends case: the fp32 bundle on ONNX Runtime FP32, OpenVINO fp32 and OpenVINO bf16, and the INT8 bundle
(``--bundle-int8``) on ONNX Runtime and, in the Q/DQ form, on OpenVINO, in one process: whole ``perceive`` frames
and each stage (encode, one denoiser step, decode) at batch 1, timed round-robin per K, with the speedups vs ORT
FP32, the best frame (``best_frame``) and the best INT8 step (``best_int8_step``). The run's own ORT models are
reused, not opened twice (at the release size each is gigabytes).

OpenVINO bf16 runs natively where the CPU has it (``BF16`` in OpenVINO's capabilities: AVX512-BF16 or AMX). On a
CPU without it the case still times it, emulated and labelled so (``openvino-bf16-emulated``: slower than fp32;
the numbers then show the cost of emulation, not what bf16 hardware gives). A CPU without AVX-512 cannot even
emulate it (OpenVINO compiles f32 instead, which the runner refuses): there the case times ORT and OpenVINO fp32
and says why bf16 is missing (``facts.bf16_unavailable``). Without the ``openvino`` extra the case is skipped with
the reason.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np

from . import harness
from .artifacts import FP32, INT8
from .case_perceive import PERCEIVE_TASKS
from .context import Context, thread_facts
from .inputs import SEED, scene_images
from .outcomes import skipped

BASELINE = "ort-cpu"
#: The INT8 bundle's rows: on ONNX Runtime, and on OpenVINO (int8 MatMuls, bf16 or fp32 elsewhere; Q/DQ form only).
INT8_ORT, INT8_OV = "ort-cpu-int8", "openvino-int8"
#: The stages of a perceive call's ``timings`` that the case reports (``steps`` also per step: ``step``).
STAGES = ("encode", "steps", "decode")


def open_backends(ctx: Context) -> tuple[dict[str, Any], dict[str, Any], set[str]]:
    """The fp32 bundle as MMGenModels on each backend and the INT8 bundle on ORT and (Q/DQ form only) OpenVINO
    (label -> model), the facts for the JSON, and the labels that are the run's own models (not to be closed)."""
    import mmgen_edge
    from mmgen_edge.runtime.backend import RUNTIME_GRAPHS, BackendChoice, BackendKind, ort_cpu_form_problem
    from mmgen_edge.runtime.manifest import read_manifest
    from mmgen_edge.runtime.openvino_runner import PrecisionUnavailable, detect_openvino, openvino_runners
    from mmgen_edge.runtime.pipeline import Pipeline
    from mmgen_edge.sdk.api import MMGenModel

    bundle = ctx.artifacts.bundles[FP32]
    threads = ctx.settings.runtime_threads
    info = detect_openvino()
    assert info is not None  # the caller checked that OpenVINO is installed
    models: dict[str, Any] = {}
    shared = set()  # the run's own open models, reused (at the release size a second ORT copy is gigabytes)
    bf16_unavailable = None
    int8_facts: dict[str, Any] = {}
    try:
        for label, backend in ((BASELINE, BASELINE), (INT8_ORT, BASELINE)):
            source = FP32 if label == BASELINE else INT8
            if source in ctx.models and ctx.models[source].backend == BASELINE:
                models[label] = ctx.models[source]
                shared.add(label)
            elif source in ctx.artifacts.bundles:
                models[label] = mmgen_edge.load(ctx.artifacts.bundles[source], backend=BASELINE, threads=threads,
                                                verify="size")  # fmt: skip
        models["openvino-fp32"] = mmgen_edge.load(bundle, backend="openvino-fp32", threads=threads, verify="size")
        if INT8 in ctx.artifacts.bundles:
            int8_manifest = read_manifest(ctx.artifacts.bundles[INT8], verify="none")
            form = ort_cpu_form_problem(int8_manifest)
            if form:
                int8_facts["openvino_int8_skipped"] = form
            else:
                native = "bf16" if info.bf16 else "fp32"
                models[INT8_OV] = mmgen_edge.load(ctx.artifacts.bundles[INT8], backend=f"openvino-{native}",
                                                  threads=threads, verify="size")  # fmt: skip
        if info.bf16:
            models["openvino-bf16"] = mmgen_edge.load(bundle, backend="openvino-bf16", threads=threads, verify="size")
        else:
            manifest = read_manifest(bundle, verify="size")
            try:
                runners = openvino_runners(bundle, manifest, RUNTIME_GRAPHS, "bf16", info, threads, emulated_bf16=True)
            except PrecisionUnavailable as e:  # no AVX-512: OpenVINO cannot emulate bf16 either
                bf16_unavailable = str(e)
            else:
                choice = BackendChoice(BackendKind.OPENVINO_BF16, "bench: emulated, this CPU has no native bf16",
                                       openvino=info)  # fmt: skip
                models["openvino-bf16-emulated"] = MMGenModel(Pipeline.from_runners(manifest, runners, choice))
    except BaseException:
        close_backends(models, shared)
        raise
    facts = {"openvino": info.describe(), "native_bf16": info.bf16, "threads": threads or "auto",
             "thread_choices": {label: thread_facts(m) for label, m in models.items()}, "shared": sorted(shared),
             "int8_bundle": ctx.artifacts.bundles.get(INT8), **int8_facts,
             **({"bf16_unavailable": bf16_unavailable} if bf16_unavailable else {}),
             "compile_s": {label: {g: round(getattr(r, "compile_seconds", 0.0), 3) for g, r in m.pipeline.runners.items()}
                           for label, m in models.items() if label.startswith("openvino")}}  # fmt: skip
    return models, facts, shared


def close_backends(models: dict[str, Any], shared: set[str]) -> None:
    """Close what this case opened (not the run's shared models)."""
    for label, model in models.items():
        if label not in shared:
            model.close()


def bench_backends_k(ctx: Context, models: dict[str, Any], image: np.ndarray, k: int) -> dict[str, Any]:
    """Batch-1 perceive at K steps on every backend, round-robin: whole frame and stages, and the speedups vs ORT."""
    stages: dict[str, dict[str, list[float]]] = {label: {} for label in models}

    def call(label: str) -> object:
        result = models[label].perceive([image], tasks=PERCEIVE_TASKS, steps=k, seed=SEED)[0]
        for name in STAGES:
            stages[label].setdefault(name, []).append(result.timings[name])
        return result

    fns = {label: (lambda label=label: call(label)) for label in models}
    timings = harness.measure_interleaved(fns, ctx.settings.warmup, ctx.settings.runs)
    out: dict[str, Any] = {}
    for label, timing in timings.items():
        runs = ctx.settings.runs
        ms = {name: float(np.median(values[-runs:])) * 1e3 for name, values in stages[label].items()}
        ms["step"] = ms["steps"] / k
        out[label] = {"frame": timing.as_dict(), "stages_ms": ms}
    base = out[BASELINE]
    for label in models:
        if label == BASELINE:
            continue
        mine = out[label]
        ratios = {"frame": base["frame"]["median_ms"] / mine["frame"]["median_ms"]}
        ratios.update({name: base["stages_ms"][name] / mine["stages_ms"][name] for name in ("encode", "step", "decode")})
        out[f"{label}_vs_{BASELINE}"] = ratios
    frames = {label: r["frame"] for label, r in ((n[: -len(f"_vs_{BASELINE}")], v) for n, v in out.items()
              if n.endswith(f"_vs_{BASELINE}")) if "emulated" not in label}  # fmt: skip
    if frames:
        best = max(frames, key=frames.__getitem__)
        out["best_frame"] = {"backend": best, "frame_vs_ort_fp32": frames[best]}
    int8 = {label: out[f"{label}_vs_{BASELINE}"]["step"] for label in (INT8_ORT, INT8_OV) if f"{label}_vs_{BASELINE}" in out}
    if int8:
        best = max(int8, key=int8.__getitem__)
        out["best_int8_step"] = {"backend": best, "step_vs_ort_fp32": int8[best]}
    return out


def bench_backends(ctx: Context) -> dict[str, Any]:
    """The backends case on the fp32 bundle at batch 1, for each K of the settings."""
    if importlib.util.find_spec("openvino") is None:
        return skipped("OpenVINO is not installed: pip install 'mmgen-edge[openvino]'")
    if FP32 not in ctx.artifacts.bundles:
        return skipped("no fp32 bundle")
    models, facts, shared = open_backends(ctx)
    try:
        image = scene_images(1, next(iter(models.values())).resolution)[0]
        out: dict[str, Any] = {"facts": facts}
        for k in ctx.settings.steps:
            out[f"K{k}"] = ctx.attempt(f"backends K{k}", lambda k=k: bench_backends_k(ctx, models, image, k))
        return out
    finally:
        close_backends(models, shared)
