"""Choosing a backend and opening the bundle's graphs on it.

``backend="auto"`` tries, in this order, and says which it chose and why:

1. native TensorRT, only with engines in the manifest built for this GPU model, compute capability and TensorRT
   version (a stale or foreign engine is never used: it is listed as rejected with the reason); the GPU is the
   current CUDA device, read by :func:`mmgen_edge.runtime.gpu.current_device` as engine building reads it;
2. ONNX Runtime's TensorRT execution provider;
3. ONNX Runtime's CUDA execution provider;
4. ONNX Runtime on CPU.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import gpu
from .manifest import EngineEntry, Manifest
from .onnxruntime_runner import CPU, CUDA, TENSORRT, OnnxRuntimeRunner, available_providers
from .runner import Runner

#: The graphs the runtime runs (the self-contained ``denoiser`` serves other runtimes, e.g. Triton).
RUNTIME_GRAPHS = ("conditioning", "denoiser_cached", "vae_encoder", "vae_decoder")


class BackendKind(str, enum.Enum):
    TENSORRT = "tensorrt"
    ORT_TENSORRT = "ort-tensorrt"
    ORT_CUDA = "ort-cuda"
    ORT_CPU = "ort-cpu"
    TRITON = "triton"  # graphs served by Triton Inference Server, called from its Python (BLS) backend


#: The backends ``choose_backend`` can open in this process.
LOCAL_KINDS = (BackendKind.TENSORRT, BackendKind.ORT_TENSORRT, BackendKind.ORT_CUDA, BackendKind.ORT_CPU)


@dataclass(frozen=True)
class Environment:
    """What this machine offers (detected once; tests pass their own)."""

    ort_providers: tuple[str, ...]
    tensorrt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    gpu_problem: str | None = None  # why TensorRT or GPU facts are unknown (detect_environment)


@dataclass(frozen=True)
class BackendChoice:
    kind: BackendKind
    reason: str
    rejected: tuple[str, ...] = field(default_factory=tuple)
    engines: tuple[EngineEntry, ...] = ()

    def describe(self) -> str:
        lines = [f"backend {self.kind.value}: {self.reason}"]
        lines += [f"  not {r}" for r in self.rejected]
        return "\n".join(lines)


def detect_environment() -> Environment:
    """ORT providers, and the GPU identity (:mod:`mmgen_edge.runtime.gpu`) where the GPU stack allows (no torch).

    Missing tensorrt / cuda-python, or no usable CUDA device, leave those facts unknown (None) and say why in
    ``gpu_problem``; then no engine can match, and the rejection reasons carry that explanation.
    """
    problems: list[str] = []
    trt_version = gpu_name = capability = None
    try:
        trt_version = gpu.tensorrt_version()
    except ImportError as exc:
        problems.append(str(exc))
    try:
        gpu_name, capability = gpu.current_device()
    except (ImportError, gpu.CudaError) as exc:
        problems.append(str(exc))
    return Environment(tuple(available_providers()), trt_version, gpu_name, capability, "; ".join(problems) or None)


def matching_engines(manifest: Manifest, env: Environment, bundle: Path | None) -> tuple[tuple[EngineEntry, ...], list[str]]:
    """Engines usable here for every runtime graph, and the reasons the others were rejected."""
    usable: dict[str, EngineEntry] = {}
    rejected: list[str] = []
    for engine in manifest.engines:
        why = None
        if env.tensorrt_version is None:
            why = "TensorRT is not installed" + (f" ({env.gpu_problem})" if env.gpu_problem else "")
        elif env.gpu_name is None:
            why = "no CUDA device is known" + (f" ({env.gpu_problem})" if env.gpu_problem else "")
        elif engine.trt_version != env.tensorrt_version:
            why = f"built with TensorRT {engine.trt_version}, this machine has {env.tensorrt_version}"
        elif engine.device_name != env.gpu_name or engine.compute_capability != env.compute_capability:
            why = f"built for {engine.device_name} (sm {engine.compute_capability}), this GPU is {env.gpu_name} (sm {env.compute_capability})"
        elif bundle is not None and not (bundle / engine.file).is_file():
            why = f"{engine.file} is missing"
        if why:
            rejected.append(f"engine {engine.file}: {why}")
        else:
            usable[engine.graph] = engine
    missing = [g for g in RUNTIME_GRAPHS if g not in usable]
    if usable and missing:
        rejected.append(f"engines: none usable for {missing}")
    return (tuple(usable[g] for g in RUNTIME_GRAPHS) if not missing else ()), rejected


def choose_backend(manifest: Manifest, env: Environment, requested: str = "auto", bundle: Path | None = None) -> BackendChoice:
    """The backend to use; ``requested`` is "auto" or a :class:`BackendKind` value (then it must be possible)."""
    kinds = [k.value for k in LOCAL_KINDS]
    if requested != "auto" and requested not in kinds:
        raise ValueError(f"unknown backend {requested!r}; choose auto or one of {kinds}")
    engines, rejected = matching_engines(manifest, env, bundle)
    if not manifest.engines:
        rejected.append("tensorrt: the bundle has no engines (build them with mmgen-edge build)")
    candidates: list[tuple[BackendKind, str | None, str]] = [
        (BackendKind.TENSORRT, None if engines else "no engines usable here", "engines match this GPU and TensorRT"),
        (BackendKind.ORT_TENSORRT, None if TENSORRT in env.ort_providers else "onnxruntime has no TensorrtExecutionProvider", "TensorRT execution provider available"),
        (BackendKind.ORT_CUDA, None if CUDA in env.ort_providers else "onnxruntime has no CUDAExecutionProvider", "CUDA execution provider available"),
        (BackendKind.ORT_CPU, None if CPU in env.ort_providers else "onnxruntime has no CPUExecutionProvider", "no GPU backend available" ),
    ]  # fmt: skip
    for kind, problem, reason in candidates:
        if requested not in ("auto", kind.value):
            continue
        if problem is None:
            if requested != "auto":
                reason = "requested"
            return BackendChoice(kind, reason, tuple(rejected), engines if kind == BackendKind.TENSORRT else ())
        if not (kind == BackendKind.TENSORRT and not manifest.engines):  # already explained above
            rejected.append(f"{kind.value}: {problem}")
    raise RuntimeError(f"backend {requested!r} is not available here:\n  " + "\n  ".join(rejected))


def open_runners(
    bundle: str | Path,
    manifest: Manifest,
    choice: BackendChoice,
    graphs: Iterable[str] = RUNTIME_GRAPHS,
    threads: int | None = None,
    cuda_graph: bool = False,
) -> dict[str, Runner]:
    """Create and activate one runner per graph on the chosen backend.

    ``cuda_graph`` (native TensorRT only): replay captured CUDA graphs while input shapes repeat.
    """
    bundle = Path(bundle)
    runners: dict[str, Runner] = {}
    engines = {e.graph: e for e in choice.engines}
    providers = {
        BackendKind.ORT_CPU: [CPU],
        BackendKind.ORT_CUDA: [CUDA, CPU],
        BackendKind.ORT_TENSORRT: [TENSORRT, CUDA, CPU],
    }
    try:
        for name in graphs:
            if name not in manifest.graphs:
                raise ValueError(f"the bundle has no {name!r} graph (it has {sorted(manifest.graphs)})")
            graph = manifest.graphs[name]
            runner: Runner
            if choice.kind == BackendKind.TENSORRT:
                from .tensorrt_runner import TensorRTRunner

                runner = TensorRTRunner(bundle / engines[name].file, name, graph, manifest.dims, use_cuda_graph=cuda_graph)
            else:
                runner = OnnxRuntimeRunner(bundle, name, graph, manifest.dims, providers[choice.kind], threads)
            runner.activate()
            runners[name] = runner
    except BaseException:
        for runner in runners.values():
            runner.deactivate()
        raise
    return runners
