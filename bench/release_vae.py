"""Release-size benchmark of the tiny VAE (issue 15): what a TAESD-sized decoder (and encoder) makes of a K = 1
perceive frame of the released model, on ONNX Runtime CPU and on the roofline floors of the target GPUs.

    python -m mmgen_edge.bench.release_vae [--out out/bench-release-vae] [--runs N] [--threads N] [--work DIR]
                                           [--warmup N] [--smoke]

At the release's size, all with random weights (speed only): SiT-XL/2 at 256 px (32x32 latents, 16 channels =
4 modalities x 4), the SD-VAE architecture (the ``sd-vae-ft-mse`` ``AutoencoderKL`` config) and the TAESD
architecture (diffusers' ``AutoencoderTiny()`` defaults, ``distill_vae.STUDENT_SHAPES["taesd"]``), and TAESD's width
decoding at half resolution (``STUDENT_SHAPES["taesd-half"]``, resized to 256 px in the graph: a student with no
public weights, for the decoder's share of the frame's FLOPs; its accuracy is the distillation's to prove). Each graph is
traced with the exporter's own wrappers (``graphs.VaeEncoder`` / ``VaeDecoder`` / ``CachedDenoiserStep``, through
``onnx_export.trace_to_onnx`` and ``finalize_onnx``), so it is the graph a bundle would carry; the traced graphs
are cached in ``--work`` under a key of their configuration, so a second run skips tracing (XL: minutes, ~6 GB).

Measured, ONNX Runtime CPU, one session per graph, the same threads for all, timed round-robin
(``harness.measure_interleaved``): SD-VAE encoder (1 image), SD-VAE decoder (3 maps), TAESD encoder, TAESD decoder
(3 maps), one denoiser step (batch 1, no guidance: one modulation row). A K = 1 frame is encode + one step +
decode (the sum of the stage medians), for the full VAE, the tiny decoder alone and the tiny encoder + decoder;
the speedups are ratios of those frame times. FLOPs and bytes per call come from the graphs
(``harness.graph_cost_detail``), with each stage's share of its frame's FLOPs, and the roofline floor of every
stage and frame on each ``harness.DEVICE_PEAKS`` device (``harness.device_bound``; fp16 with the bytes an fp16
bundle would move: weights halved, fp32 inputs and outputs). Targets are reported with pass / fail, never asserted.
Writes ``OUT/release_vae.json`` and prints a short table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmgen_edge.cli import nonnegative_int, positive_int
from mmgen_edge.runtime.fileio import write_text_atomic
from mmgen_edge.runtime.manifest import BATCH_DIM, DECODE_DIM, MODULATION_DIM

from . import harness
from .report import clean_json
from .settings import default_threads

JSON_FILE = "release_vae.json"
DEFAULT_OUT = Path("out/bench-release-vae")
#: Timed rounds (every stage once per round): the release-size frame takes tens of seconds on 2 cores.
DEFAULT_RUNS = 5
SMOKE_RUNS = 3
#: Seed of the random weights and inputs.
SEED = 0
#: Perception maps a frame decodes (depth, normals, segmentation) in one decoder call.
DECODED_MAPS = 3

#: The SD-VAE architecture: ``stabilityai/sd-vae-ft-mse``'s ``config.json`` (diffusers ``AutoencoderKL`` arguments).
SD_VAE_FT_MSE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215,
)  # fmt: skip
#: A small ``AutoencoderKL`` with the same layout, for ``--smoke`` (still larger than the smoke's tiny VAE).
SMOKE_KL_VAE: dict[str, Any] = dict(
    SD_VAE_FT_MSE, block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8, sample_size=64
)

#: Issue 15: the frame speedups asked of the tiny decoder alone and of the tiny encoder + decoder.
SPEEDUP_TARGETS: dict[str, tuple[str, str, float]] = {  # name -> (slower frame, faster frame, minimum ratio)
    "full_vae_vs_tiny_decoder": ("full_vae", "tiny_decoder", 3.5),
    "full_vae_vs_tiny_both": ("full_vae", "tiny_both", 5.0),
    "full_vae_vs_tiny_half_decoder": ("full_vae", "tiny_half_decoder", 3.5),  # the decoder's target, half resolution
}
#: Issue 15: the SD-VAE decoder's share of a frame's FLOPs as the issue states it; the share asked of the tiny one.
ISSUE_FULL_DECODER_SHARE = 0.78
TINY_DECODER_SHARE_TARGET = 0.15


@dataclass(frozen=True)
class Stage:
    """One timed graph: its exporter graph name, what it does in a frame, and the sizes of its dynamic dims."""

    graph: str  # a ``graphs.GRAPH_IO`` name
    role: str  # "encoder", "step" or "decoder"
    autoencoder: str | None  # "sd_vae", "taesd" or "taesd_half"; None for the denoiser step
    dims: Mapping[str, int]
    call: str  # what one call computes, for the report


STAGES: dict[str, Stage] = {
    "sd_vae_encoder": Stage("vae_encoder", "encoder", "sd_vae", {BATCH_DIM: 1}, "1 image"),
    "sd_vae_decoder": Stage("vae_decoder", "decoder", "sd_vae", {DECODE_DIM: DECODED_MAPS}, f"{DECODED_MAPS} maps"),
    "taesd_encoder": Stage("vae_encoder", "encoder", "taesd", {BATCH_DIM: 1}, "1 image"),
    "taesd_decoder": Stage("vae_decoder", "decoder", "taesd", {DECODE_DIM: DECODED_MAPS}, f"{DECODED_MAPS} maps"),
    "taesd_half_decoder": Stage("vae_decoder", "decoder", "taesd_half", {DECODE_DIM: DECODED_MAPS},
                                f"{DECODED_MAPS} maps, half res"),  # fmt: skip
    "denoiser_step": Stage("denoiser_cached", "step", None, {BATCH_DIM: 1, MODULATION_DIM: 1}, "batch 1, no CFG"),
}
#: A K = 1 perceive frame: (encoder, step, decoder) stages.
FRAMES: dict[str, tuple[str, str, str]] = {
    "full_vae": ("sd_vae_encoder", "denoiser_step", "sd_vae_decoder"),
    "tiny_decoder": ("sd_vae_encoder", "denoiser_step", "taesd_decoder"),
    "tiny_both": ("taesd_encoder", "denoiser_step", "taesd_decoder"),
    "tiny_half_decoder": ("sd_vae_encoder", "denoiser_step", "taesd_half_decoder"),
}


# ------------------------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class Architectures:
    """What one run measures: the transformer, the two autoencoders (random weights) and the ONNX opset."""

    model: Any  # mmgen_edge.config.ModelConfig
    kl_vae: Mapping[str, Any]  # AutoencoderKL(**kl_vae)
    tiny_vae: Any  # distill_vae.StudentShape
    half_vae: Any  # distill_vae.StudentShape decoding at half resolution (resized in the graph)
    opset: int
    smoke: bool

    def describe(self, stage: Stage) -> dict[str, Any]:
        """The JSON-able configuration a stage's graph depends on (hashed into its cache key)."""
        common = {"graph": stage.graph, "opset": self.opset, "resolution": self.model.resolution, "seed": SEED}
        if stage.autoencoder == "sd_vae":
            return {**common, "family": "AutoencoderKL", "config": dict(self.kl_vae)}
        if stage.autoencoder in ("taesd", "taesd_half"):
            shape = self.tiny_vae if stage.autoencoder == "taesd" else self.half_vae
            return {**common, "family": "AutoencoderTiny", "config": asdict(shape),
                    "latent_channels": self.model.latent_channels}  # fmt: skip
        return {**common, "family": "MMGen", "config": self.model.model_dump()}


def release_architectures() -> Architectures:
    """SiT-XL/2 at 256 px, the SD-VAE (sd-vae-ft-mse) and TAESD architectures."""
    from mmgen_edge.config import preset
    from mmgen_edge.export.distill_vae import STUDENT_SHAPES
    from mmgen_edge.export.onnx_export import DEFAULT_OPSET

    model = preset("SiT-XL/2", resolution=256, projector_dim=None, z_dim=None)  # the REPA projector is training only
    return Architectures(model, SD_VAE_FT_MSE, STUDENT_SHAPES["taesd"], STUDENT_SHAPES["taesd-half"], DEFAULT_OPSET,
                         smoke=False)  # fmt: skip


def smoke_architectures() -> Architectures:
    """Tiny stand-ins (2 blocks x 64 wide at 64 px, a small KL VAE, the 16-channel demo student) for the tests."""
    from mmgen_edge.config import preset
    from mmgen_edge.export.distill_vae import STUDENT_SHAPES
    from mmgen_edge.export.onnx_export import DEFAULT_OPSET

    model = preset("SiT-S/2", resolution=64, depth=2, hidden_size=64, num_heads=2, projector_dim=None, z_dim=None)
    return Architectures(model, SMOKE_KL_VAE, STUDENT_SHAPES["demo"], STUDENT_SHAPES["demo-half"], DEFAULT_OPSET,
                         smoke=True)  # fmt: skip


#: The modules whose code shapes a traced graph: a change to any of them invalidates the cached graphs.
EXPORTER_MODULES = ("mmgen_edge.export.model", "mmgen_edge.export.graphs", "mmgen_edge.export.autoencoders",
                    "mmgen_edge.export.onnx_export", "mmgen_edge.runtime.sampler")  # fmt: skip


def cache_key(description: Mapping[str, Any]) -> str:
    """A short hash of a graph's configuration, the exporter's code and the torch / diffusers versions."""
    import importlib
    import inspect

    import diffusers
    import torch

    sources = {name: hashlib.sha256(Path(inspect.getfile(importlib.import_module(name))).read_bytes()).hexdigest()
               for name in EXPORTER_MODULES}  # fmt: skip
    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__}
    text = json.dumps(clean_json({**description, **versions, "sources": sources}), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ graphs
def random_transformer(arch: Architectures) -> Any:
    """The MMGen of ``arch`` with every weight drawn from N(0, 0.02) (pos_embed kept), explicit-softmax attention.

    The release init zeroes the output layers: identical zero weights could be merged on export, so the graph
    would not move the bytes a trained model's does.
    """
    import torch

    from mmgen_edge.export.model import MMGen

    generator = torch.Generator().manual_seed(SEED)
    model = MMGen(arch.model).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0.0, 0.02, generator=generator)
    model.set_fused_attention(False)  # the form the bundles export (the pattern TensorRT fuses)
    return model


def random_autoencoder(arch: Architectures, family: str) -> Any:
    """The ``sd_vae`` (AutoencoderKL), ``taesd`` or ``taesd_half`` (AutoencoderTiny) of ``arch``, fp32, eval, random
    weights."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(SEED)
    if family == "sd_vae":
        vae = AutoencoderKL(**arch.kl_vae)
    else:
        vae = (arch.tiny_vae if family == "taesd" else arch.half_vae).new(arch.model.latent_channels)
    return vae.float().eval()


def stage_module(arch: Architectures, stage: Stage) -> tuple[Any, tuple[Any, ...]]:
    """The exporter's wrapper of a stage and its tracing inputs."""
    import torch

    from mmgen_edge.export.graphs import CachedDenoiserStep, VaeDecoder, VaeEncoder
    from mmgen_edge.export.onnx_export import example_inputs

    cfg = arch.model
    if stage.autoencoder is None:
        model = random_transformer(arch)
        return CachedDenoiserStep(model), example_inputs(model, batch=1)[stage.graph]
    vae = random_autoencoder(arch, stage.autoencoder)
    if stage.role == "encoder":
        return VaeEncoder(vae), (torch.rand(1, 3, cfg.resolution, cfg.resolution) * 2 - 1,)
    latent = torch.randn(DECODED_MAPS, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    return VaeDecoder(vae, cfg.resolution), (latent,)


def trace_stage(arch: Architectures, stage: Stage, path: Path) -> None:
    """Trace one stage to ``path`` (the module is freed on return, before ``finalize_onnx`` loads the graph)."""
    from mmgen_edge.export.onnx_export import trace_to_onnx

    module, args = stage_module(arch, stage)
    trace_to_onnx(module, args, stage.graph, path, arch.opset)


@dataclass(frozen=True)
class GraphFile:
    """A stage's traced graph in the work folder, and whether this run found it there."""

    path: Path
    cached: bool
    trace_s: float | None


def ensure_graph(arch: Architectures, name: str, work: Path) -> GraphFile:
    """The stage's graph from ``work/NAME-KEY/``, traced there first when missing (fp32, external data above 1 GiB).

    The folder is written atomically (``atomic_directory``), so an interrupted trace never leaves a graph that
    a later run would take for complete.
    """
    from mmgen_edge.export.onnx_export import finalize_onnx
    from mmgen_edge.runtime.fileio import atomic_directory
    from mmgen_edge.runtime.manifest import Precision

    stage = STAGES[name]
    folder = work / f"{name}-{cache_key(arch.describe(stage))}"
    path = folder / f"{stage.graph}.onnx"
    if path.is_file():
        return GraphFile(path, cached=True, trace_s=None)
    start = time.perf_counter()
    with atomic_directory(folder, overwrite=True) as tmp:
        scratch = tmp / ".trace"  # torch writes one file per tensor here above 2 GB
        scratch.mkdir()
        trace_stage(arch, stage, scratch / path.name)
        finalize_onnx(scratch / path.name, tmp / path.name, Precision.FP32)
        shutil.rmtree(scratch)
    return GraphFile(path, cached=False, trace_s=time.perf_counter() - start)


def input_shapes(path: Path, dims: Mapping[str, int]) -> dict[str, list[int]]:
    """Concrete input shapes of a graph: its symbolic dims (N, B, V) from ``dims``."""
    from mmgen_edge.export.onnx_export import tensor_specs

    inputs, _ = tensor_specs(path)
    return {spec.name: [int(dims[d]) if isinstance(d, str) else int(d) for d in spec.shape] for spec in inputs}


def random_feeds(path: Path, shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Uniform [-1, 1) float32 inputs of the given shapes (the weights are random: the values do not matter)."""
    from mmgen_edge.export.onnx_export import tensor_specs

    rng = np.random.default_rng(SEED)
    inputs, _ = tensor_specs(path)
    feeds = {}
    for spec in inputs:
        if spec.dtype != "float32":
            raise TypeError(f"{path.name}: input {spec.name} is {spec.dtype}; this benchmark feeds float32 only")
        feeds[spec.name] = rng.uniform(-1.0, 1.0, shapes[spec.name]).astype(np.float32)
    return feeds


# ------------------------------------------------------------------------------------------------ measuring
def cpu_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime

    from mmgen_edge.runtime.onnxruntime_runner import CPU

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=[CPU])


def time_stages(graphs: Mapping[str, GraphFile], shapes: Mapping[str, Mapping[str, Sequence[int]]], threads: int,
                warmup: int, runs: int) -> dict[str, harness.Timing]:  # fmt: skip
    """Every stage's call timed round-robin in this process (sessions created once, before any timing)."""
    sessions = {name: cpu_session(graph.path, threads) for name, graph in graphs.items()}
    feeds = {name: random_feeds(graphs[name].path, shapes[name]) for name in graphs}

    def call(name: str) -> Callable[[], object]:
        return lambda: sessions[name].run(None, feeds[name])

    return harness.measure_interleaved({name: call(name) for name in graphs}, warmup=warmup, runs=runs)


# ------------------------------------------------------------------------------------------------ the report
def fp16_bytes(cost: harness.GraphCost) -> int:
    """Bytes one call of the graph's fp16 form would move: weights at 2 bytes, inputs and outputs kept fp32."""
    return cost.weight_bytes // 2 + cost.io_bytes


def frame_entry(name: str, stages: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A frame's time (sum of its stage medians), FLOPs, bytes and each role's share of its FLOPs."""
    parts = FRAMES[name]
    flops = sum(stages[s]["flops"] for s in parts)
    return {
        "stages": dict(zip(("encoder", "step", "decoder"), parts)),
        "ms": sum(stages[s]["timing"]["median_ms"] for s in parts),
        "flops": flops,
        "bytes": sum(stages[s]["bytes"] for s in parts),
        "flop_shares": {STAGES[s].role: stages[s]["flops"] / flops for s in parts},
    }


def device_floors(stages: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per device and precision: the roofline floor of each stage and frame (ms), and what the decoders make of it."""
    floors: dict[str, Any] = {}
    for device in harness.DEVICE_PEAKS:
        floors[device] = {}
        for precision, bytes_key in (("fp32", "bytes"), ("fp16", "fp16_bytes")):
            stage_ms = {name: harness.device_bound(s["flops"], s[bytes_key], device, precision)["min_ms"]
                        for name, s in stages.items()}  # fmt: skip
            frame_ms = {frame: sum(stage_ms[s] for s in parts) for frame, parts in FRAMES.items()}
            floors[device][precision] = {
                "stages_ms": stage_ms,
                "frames_ms": frame_ms,
                "speedups": {name: frame_ms[slow] / frame_ms[fast] for name, (slow, fast, _) in SPEEDUP_TARGETS.items()},
                "decoder_share_of_frame_floor": {
                    frame: stage_ms[decoder] / frame_ms[frame] for frame, (_, _, decoder) in FRAMES.items()
                },
            }
    return floors


def stage_entry(stage: Stage, graph: GraphFile, cost: harness.GraphCost, shapes: Mapping[str, Sequence[int]],
                timing: harness.Timing) -> dict[str, Any]:  # fmt: skip
    """A stage in the report: its graph file, the shapes of one call, its timing, FLOPs and bytes."""
    return {
        "graph": stage.graph, "role": stage.role, "call": stage.call, "path": graph.path, "cached": graph.cached,
        "trace_s": graph.trace_s, "input_shapes": dict(shapes), "timing": timing.as_dict(), "flops": cost.flops,
        "bytes": cost.bytes, "fp16_bytes": fp16_bytes(cost), "weight_bytes": cost.weight_bytes,
        "achieved_gflops": cost.flops / (timing.median_ms / 1e3) / harness.GIGA,
    }  # fmt: skip


def speedups(frames: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The frame-time ratios of ``SPEEDUP_TARGETS`` against their targets (reported, never asserted)."""
    out = {}
    for name, (slow, fast, target) in SPEEDUP_TARGETS.items():
        value = frames[slow]["ms"] / frames[fast]["ms"]
        out[name] = {"value": value, "target": target, "pass": bool(value >= target),
                     "definition": f"frame ms {slow} / frame ms {fast}"}  # fmt: skip
    return out


def decoder_flop_shares(frames: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The decoder's share of each frame's FLOPs, with the issue's figure (SD-VAE) and target (tiny decoder)."""
    shares: dict[str, Any] = {name: {"value": frame["flop_shares"]["decoder"]} for name, frame in frames.items()}
    shares["full_vae"]["issue_says"] = ISSUE_FULL_DECODER_SHARE
    for name in ("tiny_decoder", "tiny_half_decoder"):
        tiny = shares[name]
        tiny["target_below"] = TINY_DECODER_SHARE_TARGET
        tiny["pass"] = bool(tiny["value"] < TINY_DECODER_SHARE_TARGET)
    return shares


NOTES = {
    "frame": "K = 1 perceive frame = encode (1 image) + one denoiser step + decode (3 maps): sum of the stage medians",
    "timing": "ONNX Runtime CPU, one session per graph, same threads, round-robin (harness.measure_interleaved)",
    "flops": "harness.graph_cost: MatMul / Gemm / Conv 2*MACs (element-wise ops not counted); bytes: weights + I/O",
    "floors": "harness.device_bound per call, a frame the sum of its calls; fp16 with fp16_bytes (weights halved)",
}


def build_report(arch: Architectures, graphs: Mapping[str, GraphFile], costs: Mapping[str, harness.GraphCost],
                 shapes: Mapping[str, Mapping[str, Sequence[int]]], timings: Mapping[str, harness.Timing],
                 facts: Mapping[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The JSON: configuration, stages, frames, speedups and FLOP shares against their targets, device floors."""
    stages = {name: stage_entry(STAGES[name], graphs[name], costs[name], shapes[name], timings[name]) for name in graphs}
    frames = {name: frame_entry(name, stages) for name in FRAMES}
    cfg = arch.model
    configuration = {
        "model": cfg.model_dump(), "sd_vae": dict(arch.kl_vae), "taesd": asdict(arch.tiny_vae),
        "taesd_half": asdict(arch.half_vae),
        "resolution": cfg.resolution, "latent": [cfg.in_channels, cfg.latent_size, cfg.latent_size],
        "decoded_maps": DECODED_MAPS, "opset": arch.opset, "weights": f"random (seed {SEED}): speed only",
        "inputs": "uniform [-1, 1) float32",
    }  # fmt: skip
    return {
        "benchmark": "release_vae (issue 15)",
        "smoke": arch.smoke,
        "configuration": configuration,
        "machine": dict(facts),
        "stages": stages,
        "frames": frames,
        "speedups": speedups(frames),
        "decoder_flop_share": decoder_flop_shares(frames),
        "device_floors": device_floors(stages),
        "notes": NOTES,
    }


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def print_table(report: Mapping[str, Any], json_path: Path) -> None:
    """The stages, the frames against their targets and the device floors, as a few aligned lines."""
    machine, config = report["machine"], report["configuration"]
    load = f"load {machine['load_average_start'][0]:.2f} -> {machine['load_average_end'][0]:.2f}"
    print(f"release_vae: {json_path}  ({config['model']['name']} {config['resolution']} px, ORT CPU "
          f"{machine['threads']} threads, median of {machine['runs']}; {load})")  # fmt: skip
    print(f"  {'stage':<16} {'call':<22} {'median ms':>10} {'p90 ms':>10} {'GFLOP':>9} {'GFLOP/s':>8}")
    for name, s in report["stages"].items():
        t = s["timing"]
        print(f"  {name:<16} {s['call']:<22} {t['median_ms']:>10.1f} {t['p90_ms']:>10.1f} {s['flops'] / 1e9:>9.1f} "
              f"{s['achieved_gflops']:>8.1f}")  # fmt: skip
    full = report["frames"]["full_vae"]["ms"]
    print(f"  {'frame (K = 1)':<16} {'ms':>10} {'full / this':>12} {'decoder FLOP share':>19}")
    for name, f in report["frames"].items():
        print(f"  {name:<16} {f['ms']:>10.1f} {full / f['ms']:>11.2f}x {f['flop_shares']['decoder']:>18.1%}")
    for name, s in report["speedups"].items():
        print(f"  {name}: {s['value']:.2f}x (target >= {s['target']}x: {verdict(s['pass'])})")
    share = report["decoder_flop_share"]
    print(f"  decoder FLOP share: SD-VAE {share['full_vae']['value']:.1%} (issue says {ISSUE_FULL_DECODER_SHARE:.0%}), "
          f"tiny {share['tiny_decoder']['value']:.1%}, tiny at half res {share['tiny_half_decoder']['value']:.1%} "
          f"(target < {TINY_DECODER_SHARE_TARGET:.0%}: {verdict(share['tiny_decoder']['pass'])}, "
          f"{verdict(share['tiny_half_decoder']['pass'])})")  # fmt: skip
    print_floors(report["device_floors"])


def print_floors(floors: Mapping[str, Any]) -> None:
    """Roofline floors (ms) of each stage and frame per device and precision, and the frame ratios they allow."""
    names = [*STAGES, *FRAMES]
    print(f"  {'floor ms':<26} " + " ".join(f"{n:>14}" for n in names) + "  full/tiny-dec  full/tiny-both")
    for device, by_precision in floors.items():
        for precision, floor in by_precision.items():
            values = {**floor["stages_ms"], **floor["frames_ms"]}
            ratios = floor["speedups"]
            print(f"  {device + ' ' + precision:<26} " + " ".join(f"{values[n]:>14.3f}" for n in names)
                  + f"  {ratios['full_vae_vs_tiny_decoder']:>12.2f}x {ratios['full_vae_vs_tiny_both']:>14.2f}x")  # fmt: skip


def machine_facts(threads: int, warmup: int, runs: int) -> dict[str, Any]:
    """Versions, CPUs and the timing settings of this run (load averages are added around the run)."""
    import onnxruntime
    import torch

    return {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "cpus_available": default_threads(),
            "threads": threads, "warmup": warmup, "runs": runs}  # fmt: skip


def run(arch: Architectures, work: Path, threads: int, warmup: int, runs: int) -> dict[str, Any]:
    """Trace (or find) every graph, count its cost, time the stages, and build the report."""
    import torch

    load_start = list(os.getloadavg())
    torch.set_num_threads(threads)
    graphs = {name: ensure_graph(arch, name, work) for name in STAGES}
    shapes = {name: input_shapes(graph.path, STAGES[name].dims) for name, graph in graphs.items()}
    costs = {name: harness.graph_cost_detail(graphs[name].path, shapes[name]) for name in graphs}
    timings = time_stages(graphs, shapes, threads, warmup, runs)
    facts = {**machine_facts(threads, warmup, runs), "load_average_start": load_start,
             "load_average_end": list(os.getloadavg())}  # fmt: skip
    return build_report(arch, graphs, costs, shapes, timings, facts)


# ------------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    """The command line (bounded options: argparse exits 2 naming a bad one)."""
    parser = argparse.ArgumentParser(prog="python -m mmgen_edge.bench.release_vae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--work", type=Path, help="where the traced graphs are cached (default OUT/work)")
    parser.add_argument("--runs", type=positive_int, help=f"timed rounds (default {DEFAULT_RUNS}; --smoke {SMOKE_RUNS})")
    parser.add_argument("--warmup", type=nonnegative_int, default=1, help="untimed rounds first (default 1)")
    parser.add_argument("--threads", type=positive_int, default=default_threads(),
                        help="ONNX Runtime intra-op threads, the same for every graph (default: this process's CPUs)")
    parser.add_argument("--smoke", action="store_true", help="tiny architectures (seconds), for the tests")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, write ``OUT/release_vae.json`` and print the table.

    Args:
        argv: the arguments (None: ``sys.argv[1:]``).

    Returns:
        0; bad options exit 2 with argparse's message (an ``--out`` or ``--work`` that is a file included).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    work: Path = args.work if args.work is not None else args.out / "work"
    for option, folder in (("--out", args.out), ("--work", work)):
        if folder.exists() and not folder.is_dir():
            parser.error(f"{option} {folder} is a file, not a folder")
    runs = args.runs if args.runs is not None else (SMOKE_RUNS if args.smoke else DEFAULT_RUNS)
    arch = smoke_architectures() if args.smoke else release_architectures()
    report = run(arch, work, args.threads, args.warmup, runs)
    text = json.dumps(clean_json(report), indent=2, allow_nan=False) + "\n"
    print_table(report, write_text_atomic(args.out / JSON_FILE, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
