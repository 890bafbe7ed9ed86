"""Benchmarks as ratios, in one process: denoiser step (PyTorch vs ONNX Runtime FP32 / INT8), conditioning cache,
whole ``perceive`` frames by stage, stream throughput, accuracy vs latency, and a roofline line per case.

    mmgen-edge bench --smoke                                      # tiny artifacts built in a temp dir, ~10-20 s
    mmgen-edge bench --bundle samples/shapes/bundle --bundle-int8 out/int8-bundle --out out/bench

Writes ``OUT/bench.json`` and ``OUT/accuracy_latency.png``. Defaults are the demo model's paths
(``samples/shapes/weights/{mmgen,vae}``, ``samples/shapes/bundle``); with no fp32 bundle but a model directory
and a VAE, one is exported into a temp dir. Whatever is missing is skipped with the reason in the JSON, never a
crash. A case that fails is reported as ``{"error": ...}`` (and listed in ``errors``); the other cases still run.
On a busy machine (load average above ``BUSY_LOAD_THRESHOLD`` at start) ``meta.warnings`` says the numbers are
not to be trusted: PyTorch's OpenMP threads collapse under oversubscription, ONNX Runtime's much less.

Ratios are speedups: ``A_vs_B`` = time(B) / time(A), so > 1 means A is faster. Candidates that are compared
are timed round-robin (``harness.measure_interleaved``) in the same process, with the same number of threads
for PyTorch and ONNX Runtime (``--threads``, default: the CPUs this process may use), so a background job slows
them alike. Goals (``goals`` in the JSON) are reported with pass/fail, never asserted.

Cases
-----
- ``step``: one denoiser step (perception: no guidance, the rgb slot held at the condition timestep), per batch:
  PyTorch eager ``CachedDenoiserStep`` with precomputed modulation (the same computation as the bundle's
  ``denoiser_cached`` graph: the goal's baseline) and the plain ``model(x, t, y, task)`` + Euler path;
  ``torch.compile`` of the cached step (first tried in a child process with a time limit, since inductor can
  take minutes on a small CPU; skipped in ``--smoke`` unless ``--compile on``); ORT ``denoiser_cached`` FP32
  and INT8; PyTorch CUDA eager with ``--torch-cuda``.
- ``conditioning_cache``: ``DenoisingLoop.velocity_step`` with the modulation cache warm vs a loop with
  ``cache_size=0`` (``conditioning`` + ``denoiser_cached`` every step).
- ``perceive``: ``model.perceive`` of a held-out scene at K steps, median per stage (SDK ``timings``).
- ``stream``: a video of held-out scenes streamed with ``realtime=False``; frames/s vs 1 / (median single-frame
  latency at the same K, measured right before and after the stream).
- ``accuracy_latency``: accuracy of ``mmgen-edge eval --json`` reports (``--eval-json``) or, without one, of a
  small SDK evaluation on ``--eval-scenes`` held-out scenes, against the perceive latency measured here.

Roofline: FLOPs and bytes per call come from the ONNX graphs (``harness.graph_cost``); this CPU's peak is a
measured numpy GEMM and copy (run last, after the peak RSS is recorded, as their buffers are large); the
H100 / RTX 4090 / Orin lines give the roofline bound there and the fraction of it needed to match this CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmgen_edge.runtime.modalities import IMAGE_MODALITY, PERCEPTION_TASKS

from . import harness

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_OUT = Path("out/bench")
DEFAULT_MODEL_DIR = REPO_ROOT / "samples" / "shapes" / "weights" / "mmgen"
DEFAULT_VAE_DIR = REPO_ROOT / "samples" / "shapes" / "weights" / "vae"
JSON_FILE = "bench.json"
PLOT_FILE = "accuracy_latency.png"

DEFAULT_BATCHES = (1, 4)
DEFAULT_STEPS = (1, 2, 4)
DEFAULT_RUNS = 20
DEFAULT_WARMUP = 3
DEFAULT_STREAM_FRAMES = 40
DEFAULT_EVAL_SCENES = 16
#: --smoke: a tiny run that checks the whole bench end to end (numbers are not meaningful).
SMOKE_BATCHES = (1,)
SMOKE_STEPS = (1,)
SMOKE_RUNS = 3
SMOKE_WARMUP = 1
SMOKE_STREAM_FRAMES = 8
SMOKE_EVAL_SCENES = 2
#: The tiny artifacts of --smoke, exactly as tests/conftest.py builds them.
TINY_MAX_BATCH = 4
#: max_batch of a bundle the bench exports itself (the export default), raised to the largest --batch.
EXPORT_MAX_BATCH = 8

COMPILE_TIMEOUT_S = 300.0
STREAM_VIDEO_FPS = 30.0
STREAM_MAX_PENDING = 2
#: Frame rate for the "fraction of a device's roofline needed" of whole-frame cases.
TARGET_FPS = 30.0
PERCEIVE_TASKS = PERCEPTION_TASKS
SEED = 0
ERROR_TRACEBACK_LINES = 6
#: 1-minute load average (before the bench starts) above which the JSON warns that the machine was busy.
BUSY_LOAD_THRESHOLD = 0.5

#: Goal -> minimum value of the ratio (worst case over batches / step counts).
GOALS: dict[str, float] = {
    "ort_fp32_vs_torch_eager": 1.3,
    "ort_int8_vs_ort_fp32": 1.8,
    "conditioning_cache_speedup": 1.2,
    "stream_throughput_vs_inverse_latency": 0.9,
}
#: Accuracy metrics of the plot: (key in the eval report, axis label).
ACCURACY_METRICS = (("depth_delta1", "depth δ1 (higher is better)"),
                    ("normal_mean", "normal error, degrees (lower is better)"),
                    ("seg_miou", "segmentation mIoU (higher is better)"))  # fmt: skip

FP32, INT8 = "fp32", "int8"


# ================================================================================================ settings
@dataclass(frozen=True)
class Settings:
    """What to run (arguments after --smoke overrides)."""

    batches: tuple[int, ...]
    steps: tuple[int, ...]
    runs: int
    warmup: int
    threads: int
    stream_frames: int
    eval_scenes: int
    compile: bool
    compile_note: str
    compile_timeout_s: float
    torch_cuda: bool
    backend: str
    smoke: bool


@dataclass
class Artifacts:
    """Inputs of the bench; a None path was not found (``missing`` says why)."""

    model_dir: Path | None
    vae_dir: Path | None
    bundles: dict[str, Path]  # label (fp32 / int8) -> bundle directory
    missing: dict[str, str] = field(default_factory=dict)
    built_tiny: bool = False
    exported_bundle: bool = False  # the fp32 bundle was missing and was exported from the model dir + VAE


@dataclass
class Context:
    """The live state of one bench run."""

    settings: Settings
    artifacts: Artifacts
    models: dict[str, Any] = field(default_factory=dict)  # label -> MMGenModel (open)
    manifests: dict[str, Any] = field(default_factory=dict)  # label -> Manifest
    torch_model: Any = None
    eval_json: list[Path] = field(default_factory=list)  # `mmgen-edge eval --json` reports to plot
    load_at_start: float | None = None  # 1-minute load average before the bench started
    errors: list[str] = field(default_factory=list)
    costs: dict[tuple[str, str, tuple[tuple[str, int], ...]], tuple[int, int]] = field(default_factory=dict)
    perceive_latency_ms: dict[tuple[str, int, int], float] = field(default_factory=dict)  # (label, batch, K)


def parse_int_list(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(",") if v.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive integers, got {text!r}")
    return values


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mmgen-edge bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = p.add_argument
    add("--model-dir", type=Path, help=f"converted model directory (default {DEFAULT_MODEL_DIR})")
    add("--vae-dir", type=Path,
        help=f"diffusers VAE directory (default {DEFAULT_VAE_DIR}); only to export an fp32 bundle if --bundle is missing")
    add("--bundle", type=Path, help="fp32 bundle (default: the demo bundle, samples/shapes/bundle or $MMGEN_EDGE_BUNDLE)")
    add("--bundle-int8", type=Path, help="INT8 bundle from mmgen-edge calibrate (optional)")
    add("--batch", type=parse_int_list, default=None, help="batch sizes (default 1,4)")
    add("--steps", type=parse_int_list, default=None, help="sampler steps K of the perceive cases (default 1,2,4)")
    add("--runs", type=int, default=None, help=f"timed runs per case (default {DEFAULT_RUNS})")
    add("--warmup", type=int, default=None, help=f"untimed runs first (default {DEFAULT_WARMUP})")
    add("--threads", type=int, default=default_threads(), help="intra-op threads of ORT and torch (default: CPUs available)")
    add("--stream-frames", type=int, default=None, help=f"frames of the stream video (default {DEFAULT_STREAM_FRAMES})")
    add("--eval-json", type=Path, action="append", default=[], help="an `mmgen-edge eval --json` report (repeatable)")
    add("--eval-scenes", type=int, default=None,
        help=f"without --eval-json: held-out scenes of the small SDK evaluation (default {DEFAULT_EVAL_SCENES}; 0 = none)")
    add("--compile", choices=("auto", "on", "off"), default="auto", help="try torch.compile (auto: yes unless --smoke)")
    add("--compile-timeout-s", type=float, default=COMPILE_TIMEOUT_S, help="time limit of the torch.compile trial")
    add("--torch-cuda", action="store_true", help="add the PyTorch CUDA eager step when a GPU is available")
    add("--backend", default="ort-cpu", help="SDK backend of the bundles (default ort-cpu)")
    add("--smoke", action="store_true",
        help="tiny run: runs=3, batch 1, steps 1; builds tiny artifacts in a temp dir when no path is given")
    add("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    return p  # fmt: skip


def settings_from(args: argparse.Namespace) -> Settings:
    smoke = bool(args.smoke)

    def pick(value: Any, normal: Any, small: Any) -> Any:
        return value if value is not None else (small if smoke else normal)

    runs, warmup = pick(args.runs, DEFAULT_RUNS, SMOKE_RUNS), pick(args.warmup, DEFAULT_WARMUP, SMOKE_WARMUP)
    if runs < 1 or warmup < 0 or args.threads < 1:
        raise ValueError(f"need --runs >= 1, --warmup >= 0, --threads >= 1; got {runs}, {warmup}, {args.threads}")
    if args.compile == "auto":
        compile_on = not smoke
        note = "skipped in --smoke (inductor takes minutes on a small CPU); pass --compile on" if smoke else "auto"
    else:
        compile_on, note = args.compile == "on", f"--compile {args.compile}"
    return Settings(
        batches=pick(args.batch, DEFAULT_BATCHES, SMOKE_BATCHES),
        steps=pick(args.steps, DEFAULT_STEPS, SMOKE_STEPS),
        runs=runs,
        warmup=warmup,
        threads=args.threads,
        stream_frames=max(1, pick(args.stream_frames, DEFAULT_STREAM_FRAMES, SMOKE_STREAM_FRAMES)),
        eval_scenes=max(0, pick(args.eval_scenes, DEFAULT_EVAL_SCENES, SMOKE_EVAL_SCENES)),
        compile=compile_on,
        compile_note=note,
        compile_timeout_s=args.compile_timeout_s,
        torch_cuda=bool(args.torch_cuda),
        backend=args.backend,
        smoke=smoke,
    )


# ================================================================================================ reporting helpers
def failure(exc: BaseException) -> dict[str, str]:
    """A failed case as it appears in the JSON."""
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    return {"error": f"{type(exc).__name__}: {exc}", "traceback": "".join(lines[-ERROR_TRACEBACK_LINES:])}


def attempt(ctx: Context, where: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one case; a failure becomes ``{"error": ...}`` in the JSON and a line in ``errors``."""
    try:
        return fn()
    except Exception as exc:  # reported, not swallowed: the JSON carries the reason
        result = failure(exc)
        ctx.errors.append(f"{where}: {result['error']}")
        return result


def skipped(reason: str) -> dict[str, str]:
    return {"skipped": reason}


def speedup(timings: Mapping[str, Any], fast: str, slow: str) -> float | None:
    """time(slow) / time(fast), or None when either was not measured."""
    a, b = timings.get(fast), timings.get(slow)
    if not (isinstance(a, dict) and isinstance(b, dict) and "timing" in a and "timing" in b):
        return None
    return b["timing"]["median_ms"] / a["timing"]["median_ms"]


def clean_json(value: Any) -> Any:
    """NaN/inf -> None, tuples -> lists, Paths -> str (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return clean_json(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


# ================================================================================================ artifacts
def build_tiny_artifacts(workdir: Path) -> Artifacts:
    """A tiny model directory, VAE and fp32 bundle (max batch 4), from the same helpers as tests/conftest.py."""
    from mmgen_edge.export.checkpoint import convert_checkpoint
    from mmgen_edge.export.onnx_export import export_bundle
    from mmgen_edge.export.synthetic import TINY_ARGS, TINY_PROJECTOR, write_release_checkpoint, write_tiny_vae

    checkpoint = workdir / "tiny.pt"
    write_release_checkpoint(checkpoint, projector=TINY_PROJECTOR, **TINY_ARGS)
    model_dir = workdir / "models" / "tiny"
    convert_checkpoint(checkpoint, model_dir)
    vae_dir = write_tiny_vae(workdir / "vae" / "tiny-vae")
    bundle = workdir / "bundles" / "tiny-fp32"
    export_bundle(model_dir, vae_dir, bundle, max_batch=TINY_MAX_BATCH)
    missing = {"bundle_int8": "--smoke builds no INT8 bundle (pass --bundle-int8 to time one)"}
    return Artifacts(model_dir, vae_dir, {FP32: bundle}, missing, built_tiny=True)


def find_artifacts(args: argparse.Namespace) -> Artifacts:
    """The given paths, else the demo model's; each one missing is recorded with the reason."""
    missing: dict[str, str] = {}

    def existing(name: str, given: Path | None, default: Path | None, marker: str, hint: str) -> Path | None:
        path = given if given is not None else default
        if path is None:
            missing[name] = hint
            return None
        if not (path / marker).is_file():
            missing[name] = f"{path}/{marker} not found ({hint})"
            return None
        return path

    demo_hint = "create the demo model with the shapes training recipe, then `mmgen-edge demo`"
    model_dir = existing("model_dir", args.model_dir, DEFAULT_MODEL_DIR, "config.json", demo_hint)
    vae_dir = existing("vae_dir", args.vae_dir, DEFAULT_VAE_DIR, "config.json",
                       "only needed to export an fp32 bundle when --bundle is missing")
    bundles: dict[str, Path] = {}
    from mmgen_edge.sdk.api import default_bundle

    fp32_hint = "export it with `mmgen-edge demo` or `mmgen-edge export`"
    fp32 = existing("bundle", args.bundle, default_bundle(), "manifest.json", fp32_hint)
    if fp32 is not None:
        bundles[FP32] = fp32
    int8_hint = "no --bundle-int8 given (make one with `mmgen-edge calibrate`)"
    int8 = existing("bundle_int8", args.bundle_int8, None, "manifest.json", int8_hint)
    if int8 is not None:
        bundles[INT8] = int8
    return Artifacts(model_dir, vae_dir, bundles, missing)


def export_missing_bundle(ctx: Context, workdir: Path) -> dict[str, Any]:
    """No fp32 bundle but a model dir and a VAE: export one into ``workdir`` (recorded in the JSON)."""
    from mmgen_edge.export.onnx_export import export_bundle

    a = ctx.artifacts
    if FP32 in a.bundles:
        return skipped("the fp32 bundle exists")
    if a.model_dir is None or a.vae_dir is None:
        return skipped("no fp32 bundle, and no model dir + VAE to export one from")
    bundle = workdir / "exported-fp32"
    start = time.perf_counter()
    export_bundle(a.model_dir, a.vae_dir, bundle, max_batch=max(EXPORT_MAX_BATCH, *ctx.settings.batches))
    a.bundles[FP32], a.exported_bundle = bundle, True
    a.missing.pop("bundle", None)
    return {"exported": bundle, "seconds": time.perf_counter() - start}


def open_models(ctx: Context) -> dict[str, Any]:
    """Open every bundle with the SDK (same threads as torch); returns the per-bundle facts for the JSON."""
    import mmgen_edge
    from mmgen_edge.runtime.manifest import read_manifest

    facts: dict[str, Any] = {}
    for label, path in ctx.artifacts.bundles.items():

        def load(label: str = label, path: Path = path) -> dict[str, Any]:
            ctx.manifests[label] = read_manifest(path, verify="none")
            model = mmgen_edge.load(path, backend=ctx.settings.backend, threads=ctx.settings.threads, verify="size")
            ctx.models[label] = model
            m = model.manifest
            return {"path": path, "backend": model.backend, "precision": m.precision.value, "model": m.model.name,
                    "resolution": m.model.resolution, "max_batch": m.max_batch,
                    "model_weights_sha256": m.provenance.model_weights_sha256}  # fmt: skip

        facts[label] = attempt(ctx, f"open bundle {label}", load)
    return facts


def load_torch_model(ctx: Context) -> dict[str, Any]:
    """The PyTorch model (fp32, eval) and whether its weights are the fp32 bundle's."""
    import torch

    from mmgen_edge.export.model_dir import WEIGHTS_FILE, load_model
    from mmgen_edge.runtime.fileio import sha256_file

    model_dir = ctx.artifacts.model_dir
    if model_dir is None:
        return skipped(ctx.artifacts.missing.get("model_dir", "no model directory"))
    torch.set_num_threads(ctx.settings.threads)
    ctx.torch_model = load_model(model_dir, dtype=torch.float32)
    digest = sha256_file(model_dir / WEIGHTS_FILE)
    manifest = ctx.manifests.get(FP32)
    same = None if manifest is None else manifest.provenance.model_weights_sha256 == digest
    return {"path": model_dir, "weights_sha256": digest, "same_weights_as_fp32_bundle": same,
            "attention": "scaled_dot_product_attention (the fastest eager form; the ONNX graphs use explicit softmax)",
            "torch_threads": torch.get_num_threads()}  # fmt: skip


# ================================================================================================ inputs and costs
@dataclass(frozen=True)
class StepInputs:
    """Numpy inputs of one perception step at batch n (no guidance: modulation rows = n)."""

    x: np.ndarray
    t_cur: np.ndarray
    t_next: np.ndarray
    labels: np.ndarray
    task: np.ndarray


def step_inputs(config: Any, sampler: Any, n: int) -> StepInputs:
    """The first step of perception: rgb held at the condition timestep, the other slots from t = 1 to 1 - 1/4."""
    from mmgen_edge.runtime import sampler as maths

    rgb = config.modality_index(IMAGE_MODALITY)
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((n, config.in_channels, config.latent_size, config.latent_size), dtype=np.float32)
    schedule = sampler.model_copy(update={"num_steps": 4}).timesteps()
    t_cur = maths.step_timesteps(float(schedule[0]), n, config.num_modalities, rgb, sampler.condition_t)
    t_next = maths.step_timesteps(float(schedule[1]), n, config.num_modalities, rgb, sampler.condition_t)
    labels = np.full(n, config.null_label, np.int64)
    task = np.full(n, rgb + 1, np.int64)
    return StepInputs(x, t_cur, t_next, labels, task)


def graph_input_shapes(manifest: Any, graph: str, sizes: Mapping[str, int]) -> dict[str, list[int]]:
    """Concrete input shapes of a bundle graph: symbolic dims (N, B, V) from ``sizes``."""
    entry = manifest.graphs[graph]
    return {spec.name: [int(sizes[d]) if isinstance(d, str) else int(d) for d in spec.shape] for spec in entry.inputs}


def graph_cost(ctx: Context, label: str, graph: str, sizes: Mapping[str, int]) -> tuple[int, int]:
    """(FLOPs, bytes) of one call of ``graph`` of bundle ``label`` (cached)."""
    key = (label, graph, tuple(sorted(sizes.items())))
    if key not in ctx.costs:
        manifest = ctx.manifests[label]
        path = ctx.artifacts.bundles[label] / manifest.graphs[graph].file
        ctx.costs[key] = harness.graph_cost(path, graph_input_shapes(manifest, graph, sizes))
    return ctx.costs[key]


#: A case's graphs: (graph name, its dynamic sizes, calls per case).
CostParts = Sequence[tuple[str, Mapping[str, int], int]]


def case_cost(ctx: Context, label: str, parts: CostParts, per_frame: int | None = None) -> dict[str, Any]:
    """FLOPs and bytes of a case made of (graph, sizes, calls) parts of one bundle; ``per_frame``: frames per call."""
    if label not in ctx.manifests:
        return skipped(f"no {label} bundle to read the graphs from")
    try:
        flops = nbytes = 0
        for graph, sizes, calls in parts:
            f, b = graph_cost(ctx, label, graph, sizes)
            flops, nbytes = flops + calls * f, nbytes + calls * b
    except Exception as exc:  # reported in the JSON next to the timing
        result = failure(exc)
        ctx.errors.append(f"graph cost {label} {[p[0] for p in parts]}: {result['error']}")
        return result
    precision = ctx.manifests[label].precision.value
    out: dict[str, Any] = {"flops": flops, "bytes": nbytes, "precision": precision,
                           "graphs": [f"{calls} x {graph} {dict(sizes)}" for graph, sizes, calls in parts]}  # fmt: skip
    if per_frame:
        out["frames_per_call"] = per_frame
    return out


# ================================================================================================ (a) denoiser step
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


COMPILE_PROBE = r"""
import json, sys
from mmgen_edge.bench import run
print(json.dumps(run.compile_probe(sys.argv[2], [int(b) for b in sys.argv[3].split(",")], int(sys.argv[4]))))
"""


def compile_probe(model_dir: str, batches: Sequence[int], threads: int) -> dict[str, float]:
    """(In a child process) torch.compile the cached step and run it once per batch; returns seconds per batch."""
    import torch

    from mmgen_edge.export.graphs import CachedDenoiserStep, Conditioning
    from mmgen_edge.export.model_dir import load_model
    from mmgen_edge.runtime.sampler import SamplerConfig

    torch.set_num_threads(threads)
    model = load_model(model_dir, dtype=torch.float32)
    compiled = torch.compile(CachedDenoiserStep(model).eval(), dynamic=False)
    seconds: dict[str, float] = {}
    for n in batches:
        inputs = step_inputs(model.config, SamplerConfig(), n)
        t, y, task = torch.from_numpy(inputs.t_cur), torch.from_numpy(inputs.labels), torch.from_numpy(inputs.task)
        start = time.perf_counter()
        with torch.inference_mode():
            blocks, heads = Conditioning(model)(t, y, task)
            compiled(torch.from_numpy(inputs.x), t, torch.from_numpy(inputs.t_next), blocks, heads, torch.tensor([1.0]))
        seconds[str(n)] = time.perf_counter() - start
    return seconds


def try_compile(ctx: Context) -> dict[str, Any]:
    """torch.compile in a child process under a time limit; the JSON gets the outcome and the reason of a failure."""
    s = ctx.settings
    if not s.compile:
        return skipped(s.compile_note)
    if ctx.torch_model is None:
        return skipped("no PyTorch model")
    command = [sys.executable, "-c", COMPILE_PROBE, "-", str(ctx.artifacts.model_dir),
               ",".join(map(str, s.batches)), str(s.threads)]  # fmt: skip
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=s.compile_timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"torch.compile did not finish within {s.compile_timeout_s:.0f} s (the trial process was killed)"}
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-ERROR_TRACEBACK_LINES:])
        return {"error": f"torch.compile trial failed (exit {done.returncode}): {tail}"}
    return {"ok": True, "trial_seconds": time.perf_counter() - start,
            "first_call_seconds_by_batch": json.loads(done.stdout.strip().splitlines()[-1])}  # fmt: skip


def compiled_step_fn(ctx: Context, inputs: StepInputs) -> tuple[Callable[[], object], float]:
    """The in-process compiled cached step (inductor's cache is warm from the trial) and its first-call seconds."""
    import torch

    from mmgen_edge.export.graphs import CachedDenoiserStep, Conditioning

    model = ctx.torch_model
    compiled = torch.compile(CachedDenoiserStep(model).eval(), dynamic=False)
    x, t_cur, t_next = (torch.from_numpy(a) for a in (inputs.x, inputs.t_cur, inputs.t_next))
    y, task, scale = torch.from_numpy(inputs.labels), torch.from_numpy(inputs.task), torch.tensor([1.0])
    with torch.inference_mode():
        blocks, heads = Conditioning(model)(t_cur, y, task)

    def step() -> object:
        with torch.inference_mode():
            return compiled(x, t_cur, t_next, blocks, heads, scale)

    start = time.perf_counter()
    step()
    return step, time.perf_counter() - start


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

        cases["torch_compile"] = attempt(ctx, f"torch.compile b{n}", compiled)
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
    step = [("denoiser_cached", {"N": n, "B": n}, 1)]
    plain = [("conditioning", {"B": n}, 1), *step]
    return {"torch_eager": case_cost(ctx, FP32, step), "torch_eager_plain": case_cost(ctx, FP32, plain),
            "torch_compile": case_cost(ctx, FP32, step), "ort_fp32": case_cost(ctx, FP32, step),
            "ort_int8": case_cost(ctx, INT8, step)}  # fmt: skip


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


def bench_step_batch(ctx: Context, n: int, compile_state: dict[str, Any]) -> dict[str, Any]:
    fns, cases = step_candidates(ctx, n, compile_state)
    timings = harness.measure_interleaved(fns, ctx.settings.warmup, ctx.settings.runs) if fns else {}
    costs = step_costs(ctx, n)
    for name, timing in timings.items():
        cases[name] = {**cases.get(name, {}), "timing": timing.as_dict()}
        if name in costs:
            cases[name]["cost"] = costs[name]
    ratios = {name: speedup(cases, fast, slow) for name, fast, slow in STEP_RATIOS}
    return {"cases": cases, "ratios": {k: v for k, v in ratios.items() if v is not None}}


STEP_NOTES = {
    "inputs": "the first step of perception: no guidance (modulation rows = N), rgb slot held at condition_t",
    "torch_eager": "CachedDenoiserStep with precomputed modulation: the computation of the denoiser_cached graph",
    "torch_eager_plain": "model(x, t, y, task) + Euler update (conditioning recomputed inside)",
    "ort": "Runner.infer of denoiser_cached: the runtime's call (input checks against the manifest + session.run)",
    "ratio_definition": "A_vs_B = median time of B / median time of A (> 1: A is faster); candidates timed round-robin",
}


def bench_step(ctx: Context) -> dict[str, Any]:
    compile_state = attempt(ctx, "torch.compile trial", lambda: try_compile(ctx))
    out: dict[str, Any] = {"notes": STEP_NOTES, "torch_compile_trial": compile_state}
    for n in ctx.settings.batches:
        out[f"b{n}"] = attempt(ctx, f"step b{n}", lambda n=n: bench_step_batch(ctx, n, compile_state))
    return out


# ================================================================================================ (b) conditioning cache
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
    if not ctx.models:
        return skipped("no bundle open")
    return {label: {f"b{n}": attempt(ctx, f"cache {label} b{n}", lambda label=label, n=n: bench_cache_batch(ctx, label, n))
                    for n in ctx.settings.batches} for label in ctx.models}  # fmt: skip


# ================================================================================================ (c) perceive by stage
def scene_images(count: int, size: int) -> list[np.ndarray]:
    from mmgen_edge.samples.shapes.evaluate import held_out_scenes

    return [scene.rgb for scene in held_out_scenes(count, size)]


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
    max_batch = ctx.models[label].manifest.max_batch
    if n > max_batch:
        return skipped(f"batch {n} > max_batch {max_batch}")
    return {
        f"K{k}": attempt(ctx, f"perceive {label} b{n} K{k}", lambda k=k: bench_perceive_case(ctx, label, n, k, images))
        for k in ctx.settings.steps
    }


def bench_perceive(ctx: Context) -> dict[str, Any]:
    if not ctx.models:
        return skipped("no bundle open")
    out: dict[str, Any] = {}
    for label, model in ctx.models.items():
        images = scene_images(max(ctx.settings.batches), model.resolution)
        out[label] = {f"b{n}": bench_perceive_batch(ctx, label, n, images) for n in ctx.settings.batches}
    return out


# ================================================================================================ (d) stream throughput
def write_stream_video(path: Path, frames: int, size: int) -> int:
    from mmgen_edge.sdk.stream import write_video

    return write_video(scene_images(frames, size), path, STREAM_VIDEO_FPS)


def bench_stream_k(ctx: Context, label: str, video: Path, k: int, image: np.ndarray) -> dict[str, Any]:
    """Frames/s of ``model.stream`` (realtime=False) vs 1 / single-frame latency measured before and after it."""
    model = ctx.models[label]
    before, _ = timed_perceive(ctx, model, [image], k)
    start = time.perf_counter()
    with model.stream(str(video), tasks=PERCEIVE_TASKS, steps=k, realtime=False, max_pending=STREAM_MAX_PENDING) as frames:
        latencies = [frame.latency for frame in frames]
        stats = frames.stats
    elapsed = time.perf_counter() - start
    after, _ = timed_perceive(ctx, model, [image], k)
    latency_ms = (before.median_ms + after.median_ms) / 2
    fps = len(latencies) / elapsed
    inverse_latency_fps = 1e3 / latency_ms
    return {
        "frames": len(latencies),
        "seconds": elapsed,
        "frames_per_s": fps,
        "single_frame_latency_ms": {"before": before.as_dict(), "after": after.as_dict(), "used": latency_ms},
        "inverse_latency_fps": inverse_latency_fps,
        "stream_throughput_vs_inverse_latency": fps / inverse_latency_fps,
        "frame_latency_ms_median": float(np.median(latencies) * 1e3) if latencies else None,
        "stats": {"captured": stats.captured, "processed": stats.processed, "dropped": stats.dropped},
    }


def bench_stream(ctx: Context, workdir: Path) -> dict[str, Any]:
    if FP32 not in ctx.models:
        return skipped("no fp32 bundle open")
    model = ctx.models[FP32]
    video = workdir / "stream.mp4"
    count = write_stream_video(video, ctx.settings.stream_frames, model.resolution)
    image = scene_images(1, model.resolution)[0]
    out: dict[str, Any] = {"bundle": FP32, "video": {"frames": count, "size": model.resolution, "fps": STREAM_VIDEO_FPS}}
    for k in ctx.settings.steps:
        out[f"K{k}"] = attempt(ctx, f"stream K{k}", lambda k=k: bench_stream_k(ctx, FP32, video, k, image))
    return out


# ================================================================================================ (e) accuracy vs latency
def accuracy_point(
    ctx: Context, series: str, label: str | None, k: int, metrics: Mapping[str, Any], bench_latency: bool
) -> dict[str, Any]:
    """One point of the plot: accuracy at K; latency = this bench's batch-1 perceive median (``bench_latency``)
    or the evaluation's own seconds per frame (measured batched, so lower). One source per series, never mixed."""
    measured = ctx.perceive_latency_ms.get((label, 1, k)) if bench_latency and label else None
    if bench_latency and measured is None:
        raise ValueError(f"no bench latency for {label} at K={k}")
    return {
        "series": series,
        "K": k,
        "latency_ms": measured if measured is not None else metrics["seconds_per_frame"] * 1e3,
        "latency_source": "bench perceive, batch 1" if measured is not None else "eval seconds_per_frame (batched)",
        **{key: metrics.get(key) for key, _ in ACCURACY_METRICS},
    }


def measured_every_k(ctx: Context, label: str | None, ks: Sequence[int]) -> bool:
    return label is not None and all((label, 1, k) in ctx.perceive_latency_ms for k in ks)


def points_from_eval_json(ctx: Context, path: Path) -> list[dict[str, Any]]:
    """Accuracy per K of an eval report; latency: measured here (batch 1) for the same bundle, else the report's."""
    report = json.loads(path.read_text())
    if "perception" not in report:
        raise ValueError(f"{path} is not an `mmgen-edge eval --json` report (no 'perception' key)")
    bundle = Path(report.get("bundle", ""))
    label = next((lb for lb, p in ctx.artifacts.bundles.items() if p.resolve() == bundle.resolve()), None)
    series = f"{label or bundle.name} ({path.name})"
    ks = [int(k) for k in report["perception"]]
    use_bench = measured_every_k(ctx, label, ks)
    return [accuracy_point(ctx, series, label, int(k), m, use_bench) for k, m in report["perception"].items()]


def points_from_sdk_eval(ctx: Context) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """A small SDK evaluation of every open bundle at every K (held-out scenes), and the trivial baseline."""
    from mmgen_edge.samples.shapes.evaluate import baselines, evaluate_perception, held_out_scenes

    points = []
    baseline: dict[str, float] = {}
    for label, model in ctx.models.items():
        scenes = held_out_scenes(ctx.settings.eval_scenes, model.resolution)
        baseline = baselines(scenes)["trivial"]
        use_bench = measured_every_k(ctx, label, ctx.settings.steps)
        for k in ctx.settings.steps:
            points.append(accuracy_point(ctx, label, label, k, evaluate_perception(model, scenes, k, seed=SEED), use_bench))
    return points, baseline


def plot_accuracy_latency(points: Sequence[dict[str, Any]], baseline: Mapping[str, float], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ACCURACY_METRICS), figsize=(5 * len(ACCURACY_METRICS), 4), squeeze=False)
    series = sorted({p["series"] for p in points})
    for ax, (key, label) in zip(axes[0], ACCURACY_METRICS):
        for name in series:
            pts = [p for p in points if p["series"] == name and p.get(key) is not None]
            pts.sort(key=lambda p: p["latency_ms"])
            ax.plot([p["latency_ms"] for p in pts], [p[key] for p in pts], marker="o", label=name)
            for p in pts:
                ax.annotate(f"K={p['K']}", (p["latency_ms"], p[key]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if baseline.get(key) is not None:
            ax.axhline(baseline[key], color="grey", linestyle="--", linewidth=1, label="trivial baseline")
        ax.set_xlabel("perceive latency per frame (ms)")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_accuracy(ctx: Context, out_dir: Path) -> dict[str, Any]:
    s = ctx.settings
    (out_dir / PLOT_FILE).unlink(missing_ok=True)  # never leave a previous run's plot next to this run's JSON
    baseline: dict[str, float] = {}
    if ctx.eval_json:
        points = [p for path in ctx.eval_json for p in points_from_eval_json(ctx, path)]
        reports = [json.loads(path.read_text()) for path in ctx.eval_json]
        baseline = reports[0].get("baselines", {}).get("trivial", {})
        source = f"--eval-json {', '.join(map(str, ctx.eval_json))}"
    elif not ctx.models:
        return skipped("no --eval-json and no bundle open to evaluate")
    elif s.eval_scenes == 0:
        return skipped("no --eval-json and --eval-scenes 0")
    else:
        points, baseline = points_from_sdk_eval(ctx)
        source = f"SDK evaluation on {s.eval_scenes} held-out scenes (evaluate_perception), no --eval-json given"
    if not points:
        return skipped(f"{source}: no points")
    png = out_dir / PLOT_FILE
    title = "accuracy vs latency" + (" (smoke: tiny random model, accuracy meaningless)" if s.smoke else "")
    plot_accuracy_latency(points, baseline, png, title)
    return {"source": source, "points": points, "trivial_baseline": baseline, "png": png}


# ================================================================================================ roofline, goals
def this_cpu_peaks() -> dict[str, Any]:
    """Measured fp32 GEMM peak and copy bandwidth (run at the end: their buffers would inflate the peak RSS)."""
    return {
        "gemm_peak_gflops": harness.cpu_gemm_peak_gflops(),
        "memory_bandwidth_gbps": harness.cpu_memory_bandwidth_gbps(),
        "gemm": f"numpy float32 {harness.GEMM_SIZE}^3 matmul, best of {harness.GEMM_REPEATS}, numpy's BLAS threads",
        "bandwidth": f"numpy copy of {harness.BANDWIDTH_BYTES >> 20} MiB (read + write), one thread: a lower bound",
    }


def roofline_line(cost: Mapping[str, Any], median_ms: float, cpu: Mapping[str, Any]) -> dict[str, Any]:
    """The roofline of one case on this CPU and the table's devices."""
    flops, nbytes, precision = cost["flops"], cost["bytes"], cost["precision"]
    seconds = median_ms / 1e3
    line: dict[str, Any] = {
        "this_cpu": harness.roofline(flops, nbytes, seconds, cpu["gemm_peak_gflops"] * harness.GIGA,
                                     cpu["memory_bandwidth_gbps"] * harness.GIGA),  # fmt: skip
        "this_cpu_peak_note": "fp32 GEMM peak" + (" (INT8 kernels may exceed it)" if precision == INT8 else ""),
    }
    achieved_gflops = flops / seconds / harness.GIGA
    devices = {}
    for device in harness.DEVICE_PEAKS:
        bound = harness.device_bound(flops, nbytes, device, precision if precision in harness.PRECISION_PEAK_KEY else FP32)
        entry = {**bound, "fraction_needed_to_match_this_cpu": achieved_gflops / bound["attainable_gflops"]}
        frames = cost.get("frames_per_call")
        if frames:
            needed = flops / frames * TARGET_FPS / harness.GIGA
            entry[f"fraction_needed_for_{TARGET_FPS:g}_fps"] = needed / bound["attainable_gflops"]
        devices[device] = entry
    line["devices"] = devices
    return line


def add_rooflines(node: Any, cpu: Mapping[str, Any]) -> None:
    """Add ``roofline`` next to every measured case that has a ``timing`` and a usable ``cost``."""
    if isinstance(node, dict):
        cost, timing = node.get("cost"), node.get("timing")
        if isinstance(cost, dict) and "flops" in cost and isinstance(timing, dict) and cost["bytes"] > 0:
            node["roofline"] = roofline_line(cost, timing["median_ms"], cpu)
        for value in list(node.values()):
            add_rooflines(value, cpu)
    elif isinstance(node, list):
        for value in node:
            add_rooflines(value, cpu)


def collect_ratios(report: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Every ratio of the report by name, keyed by where it was measured (b1, fp32/b4, K2, ...)."""
    ratios: dict[str, dict[str, float]] = {}

    def put(name: str, where: str, value: Any) -> None:
        if isinstance(value, (int, float)):
            ratios.setdefault(name, {})[where] = float(value)

    step = report.get("step", {})
    for where, batch in (step.items() if isinstance(step, dict) else []):
        found = batch.get("ratios") if isinstance(batch, dict) else None
        for name, value in (found.items() if isinstance(found, dict) else []):
            put(name, where, value)
    cache = report.get("conditioning_cache", {})
    for label, batches in (cache.items() if isinstance(cache, dict) else []):
        for where, case in (batches.items() if isinstance(batches, dict) else []):
            if isinstance(case, dict):
                put("conditioning_cache_speedup", f"{label}/{where}", case.get("conditioning_cache_speedup"))
    stream = report.get("stream", {})
    for where, case in (stream.items() if isinstance(stream, dict) else []):
        if isinstance(case, dict):
            put("stream_throughput_vs_inverse_latency", where, case.get("stream_throughput_vs_inverse_latency"))
    return ratios


def evaluate_goals(ratios: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """Each goal: its target, the worst measured value (over batches / K) and pass/fail (None: not measured)."""
    goals: dict[str, Any] = {}
    for name, target in GOALS.items():
        values = dict(ratios.get(name, {}))
        if name == "conditioning_cache_speedup":
            values = {k: v for k, v in values.items() if k.startswith(f"{FP32}/")} or values
        if not values:
            goals[name] = {"target": target, "pass": None, "reason": "not measured (see the case's skipped/error)"}
            continue
        worst = min(values.values())
        goals[name] = {"target": target, "worst": worst, "values": values, "pass": bool(worst >= target)}
    return goals


# ================================================================================================ main
def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def busy_warnings(load: float | None, cpus: int) -> list[str]:
    """Why the numbers of this run may not be trusted (empty on an idle machine)."""
    if load is None or load <= BUSY_LOAD_THRESHOLD:
        return []
    return [
        f"the machine was busy before the bench started (1-minute load {load:.2f} on {cpus} CPUs): timings are noisy, "
        "and PyTorch's OpenMP threads slow down by orders of magnitude when other processes hold the cores, so the "
        "torch-vs-ORT ratios are not meaningful; rerun on an idle machine (or with --threads 1)"
    ]


def environment_facts(settings: Settings) -> dict[str, Any]:
    import onnxruntime
    import torch

    names = [line.split(":", 1)[1].strip() for line in _cpuinfo_lines() if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "cpu": cpu,
        "cpus_available": default_threads(),
        "threads": settings.threads,
    }


def _cpuinfo_lines() -> list[str]:
    path = Path("/proc/cpuinfo")
    return path.read_text().splitlines() if path.is_file() else []


def print_summary(report: Mapping[str, Any], json_path: Path) -> None:
    print(f"bench: {json_path}")
    for line in report["meta"]["warnings"]:
        print(f"  warning: {line}")
    for name, goal in report["goals"].items():
        state = {True: "PASS", False: "FAIL", None: "n/a"}[goal["pass"]]
        value = f"{goal['worst']:.2f}" if "worst" in goal else goal.get("reason", "")
        print(f"  {name:<40} {state:<5} {value} (target {goal['target']})")
    for line in report["errors"]:
        print(f"  error: {line.splitlines()[0]}")


def artifact_facts(artifacts: Artifacts) -> dict[str, Any]:
    return {"model_dir": artifacts.model_dir, "vae_dir": artifacts.vae_dir, "bundles": dict(artifacts.bundles),
            "missing": dict(artifacts.missing), "built_tiny": artifacts.built_tiny,
            "exported_bundle": artifacts.exported_bundle}  # fmt: skip


def run_bench(ctx: Context, out_dir: Path, workdir: Path) -> dict[str, Any]:
    """Every case in order; the machine's peaks last (their buffers would inflate the peak RSS)."""
    meta: dict[str, Any] = {**environment_facts(ctx.settings), "settings": vars(ctx.settings).copy(),
                            "load_average_at_start": ctx.load_at_start,
                            "warnings": busy_warnings(ctx.load_at_start, default_threads())}  # fmt: skip
    meta["export"] = attempt(ctx, "export the fp32 bundle", lambda: export_missing_bundle(ctx, workdir))
    meta["artifacts"] = artifact_facts(ctx.artifacts)
    meta["bundles"] = open_models(ctx)
    meta["torch_model"] = attempt(ctx, "torch model", lambda: load_torch_model(ctx))
    report: dict[str, Any] = {"meta": meta}
    rss: dict[str, int] = {"after_load": harness.peak_rss_bytes()}
    report["step"] = attempt(ctx, "step", lambda: bench_step(ctx))
    rss["after_step"] = harness.peak_rss_bytes()
    report["conditioning_cache"] = attempt(ctx, "conditioning cache", lambda: bench_cache(ctx))
    report["perceive"] = attempt(ctx, "perceive", lambda: bench_perceive(ctx))
    rss["after_perceive"] = harness.peak_rss_bytes()
    report["stream"] = attempt(ctx, "stream", lambda: bench_stream(ctx, workdir))
    report["accuracy_latency"] = attempt(ctx, "accuracy vs latency", lambda: bench_accuracy(ctx, out_dir))
    report["peak_rss_bytes"] = harness.peak_rss_bytes()
    report["peak_rss_bytes_by_stage"] = rss
    report["machine"] = {"this_cpu": this_cpu_peaks(), "device_peaks": harness.DEVICE_PEAKS}
    add_rooflines(report, report["machine"]["this_cpu"])
    report["ratios"] = collect_ratios(report)
    report["goals"] = evaluate_goals(report["ratios"])
    report["errors"] = ctx.errors
    return report


def main(argv: Sequence[str] | None = None) -> int:
    load_at_start = load_average()
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    given = any(p is not None for p in (args.model_dir, args.vae_dir, args.bundle, args.bundle_int8))
    with tempfile.TemporaryDirectory(prefix="mmgen-bench-") as tmp:
        workdir = Path(tmp)
        artifacts = build_tiny_artifacts(workdir) if settings.smoke and not given else find_artifacts(args)
        ctx = Context(settings, artifacts, eval_json=list(args.eval_json), load_at_start=load_at_start)
        try:
            report = run_bench(ctx, out_dir, workdir)
        finally:
            for model in ctx.models.values():
                model.close()
    json_path = out_dir / JSON_FILE
    json_path.write_text(json.dumps(clean_json(report), indent=2, allow_nan=False) + "\n")
    print_summary(report, json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
