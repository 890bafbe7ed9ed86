"""Choosing a backend and opening the bundle's graphs on it.

``backend="auto"`` tries, in this order, and says which it chose and why:

1. native TensorRT, only with engines in the manifest built for this GPU model, compute capability and TensorRT
   version (a stale or foreign engine is never used: it is listed as rejected with the reason); the GPU is the
   current CUDA device, read by :func:`mmgen_edge.runtime.gpu.current_device` as engine building reads it;
2. ONNX Runtime's TensorRT execution provider;
3. ONNX Runtime's CUDA execution provider;
4. OpenVINO on CPU, when installed: bf16 where the CPU runs it natively (AVX512-BF16 or AMX), else fp32. Never
   for an INT8 bundle in ONNX Runtime's CPU form (``calibrate --target cpu``: MatMulInteger with dynamic
   quantization, which OpenVINO would run in float, slower than ONNX Runtime runs it; not even when asked for by
   name); an INT8 bundle in the Q/DQ form (``--target tensorrt``) runs int8 on OpenVINO. The CPU's features do not
   tell whether OpenVINO is faster here, so :class:`~.pipeline.Pipeline` then times a frame on OpenVINO and on
   ONNX Runtime and keeps the faster (:mod:`.cpu_backend_choice`);
5. ONNX Runtime on CPU.

``backend="openvino"`` is OpenVINO with that same precision choice; ``"openvino-fp32"`` / ``"openvino-bf16"`` fix it
(bf16 on a CPU without it is refused, naming the reason, never run as fp32).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import gpu
from .manifest import EngineEntry, GraphEntry, Manifest
from .onnxruntime_runner import CPU, CUDA, TENSORRT, OnnxRuntimeRunner, available_providers
from .openvino_runner import OPENVINO_EXTRA_HINT, OpenVinoInfo, detect_openvino, openvino_runners
from .runner import Runner, activate_runners

#: The graphs the runtime runs (the self-contained ``denoiser`` serves other runtimes, e.g. Triton).
RUNTIME_GRAPHS = ("conditioning", "denoiser_cached", "vae_encoder", "vae_decoder")


class BackendKind(str, enum.Enum):
    TENSORRT = "tensorrt"
    ORT_TENSORRT = "ort-tensorrt"
    ORT_CUDA = "ort-cuda"
    ORT_CPU = "ort-cpu"
    OPENVINO_FP32 = "openvino-fp32"
    OPENVINO_BF16 = "openvino-bf16"
    TRITON = "triton"  # graphs served by Triton Inference Server, called from its Python (BLS) backend


#: The backends ``choose_backend`` can open in this process.
LOCAL_KINDS = (BackendKind.TENSORRT, BackendKind.ORT_TENSORRT, BackendKind.ORT_CUDA, BackendKind.ORT_CPU,
               BackendKind.OPENVINO_FP32, BackendKind.OPENVINO_BF16)  # fmt: skip
#: The backends that run on the CPU (``device="cuda"`` refuses them).
CPU_KINDS = (BackendKind.ORT_CPU, BackendKind.OPENVINO_FP32, BackendKind.OPENVINO_BF16)
#: OpenVINO's precision per backend kind.
OPENVINO_PRECISIONS = {BackendKind.OPENVINO_FP32: "fp32", BackendKind.OPENVINO_BF16: "bf16"}
#: ``backend="openvino"``: OpenVINO, bf16 where the CPU runs it natively, else fp32.
OPENVINO_ANY = "openvino"
#: Intra-op threads a runner may be given (``load(threads=)``, every ``--threads``).
MAX_THREADS = 1024


@dataclass(frozen=True)
class Environment:
    """What this machine offers (detected once; tests pass their own)."""

    ort_providers: tuple[str, ...]
    tensorrt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    gpu_problem: str | None = None  # why TensorRT or GPU facts are unknown (detect_environment)
    openvino: OpenVinoInfo | None = None  # None: OpenVINO is not installed


@dataclass(frozen=True)
class BackendChoice:
    kind: BackendKind
    reason: str
    rejected: tuple[str, ...] = field(default_factory=tuple)
    engines: tuple[EngineEntry, ...] = ()
    openvino: OpenVinoInfo | None = None  # the OpenVINO facts the choice rests on (OpenVINO kinds)

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
    openvino = None
    try:  # a broken OpenVINO must not break the other backends: it is only rejected, with the reason
        openvino = detect_openvino()
    except Exception as exc:  # noqa: BLE001  (any failure of a third-party import or probe)
        problems.append(f"OpenVINO is installed but failed to start: {exc}")
    return Environment(tuple(available_providers()), trt_version, gpu_name, capability, "; ".join(problems) or None,
                       openvino=openvino)


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


def openvino_candidate(env: Environment, precision: str) -> tuple[str | None, str]:
    """(why OpenVINO at ``precision`` cannot run here or None, the reason to choose it) for :func:`choose_backend`."""
    info = env.openvino
    if info is None:
        return f"OpenVINO is not installed ({OPENVINO_EXTRA_HINT})", ""
    if precision == "bf16" and not info.bf16:
        return f"this CPU has no native bf16 (AVX512-BF16 or AMX): {info.describe()}", ""
    why = "native bf16" if precision == "bf16" else "fp32, as this CPU has no native bf16" if not info.bf16 else "fp32"
    return None, f"{info.describe()}: {why}"


def ort_cpu_form_problem(manifest: Manifest) -> str | None:
    """Why ``auto`` leaves an INT8 bundle in ONNX Runtime's CPU form to ONNX Runtime (None for any other bundle)."""
    calibration = manifest.calibration or {}
    if calibration.get("target") != "cpu":
        return None
    return ("the bundle's INT8 is ONNX Runtime's CPU form (calibrate --target cpu: MatMulInteger), which OpenVINO "
            "would run in float, slower than ONNX Runtime runs it; for OpenVINO calibrate --target tensorrt (Q/DQ)")  # fmt: skip


def choose_backend(manifest: Manifest, env: Environment, requested: str = "auto", bundle: Path | None = None) -> BackendChoice:
    """The backend to use; ``requested`` is "auto", "openvino" (its precision chosen as in "auto") or a
    :class:`BackendKind` value (then it must be possible)."""
    kinds = [k.value for k in LOCAL_KINDS]
    if requested != "auto" and requested != OPENVINO_ANY and requested not in kinds:
        raise ValueError(f"unknown backend {requested!r}; choose auto, {OPENVINO_ANY} or one of {kinds}")
    engines, rejected = matching_engines(manifest, env, bundle)
    if not manifest.engines:
        rejected.append("tensorrt: the bundle has no engines (build them with mmgen-edge build)")
    candidates: list[tuple[BackendKind, str | None, str]] = [
        (BackendKind.TENSORRT, None if engines else "no engines usable here", "engines match this GPU and TensorRT"),
        (BackendKind.ORT_TENSORRT, None if TENSORRT in env.ort_providers else "onnxruntime has no TensorrtExecutionProvider", "TensorRT execution provider available"),
        (BackendKind.ORT_CUDA, None if CUDA in env.ort_providers else "onnxruntime has no CUDAExecutionProvider", "CUDA execution provider available"),
        (BackendKind.ORT_CPU, None if CPU in env.ort_providers else "onnxruntime has no CPUExecutionProvider", "no GPU backend available" ),
    ]  # fmt: skip
    openvino = [(k, *openvino_candidate(env, OPENVINO_PRECISIONS[k])) for k in (BackendKind.OPENVINO_BF16, BackendKind.OPENVINO_FP32)]
    form = ort_cpu_form_problem(manifest)
    if form is not None and env.openvino is not None:
        openvino = [(k, problem or form, reason) for k, problem, reason in openvino]
    candidates[-1:-1] = openvino  # after the GPU backends, before ORT CPU
    for kind, problem, reason in candidates:
        wanted = ("auto", kind.value, OPENVINO_ANY) if kind in OPENVINO_PRECISIONS else ("auto", kind.value)
        if requested not in wanted:
            continue
        if problem is None:
            if requested != "auto":
                reason = f"requested; {reason}" if kind in OPENVINO_PRECISIONS else "requested"
            ov = env.openvino if kind in OPENVINO_PRECISIONS else None
            return BackendChoice(kind, reason, tuple(rejected), engines if kind == BackendKind.TENSORRT else (), ov)
        explained = (kind == BackendKind.TENSORRT and not manifest.engines) or (
            kind == BackendKind.OPENVINO_BF16 and env.openvino is None  # the fp32 line says it is not installed
        )
        if not explained:
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

    ``cuda_graph`` (native TensorRT only): replay captured CUDA graphs while input shapes repeat. OpenVINO kinds
    run :func:`.openvino_runner.openvino_runners` at the choice's precision.
    """
    bundle = Path(bundle)
    if choice.kind in OPENVINO_PRECISIONS:
        if choice.openvino is None:
            raise ValueError(f"a {choice.kind.value} choice must carry the OpenVINO facts (choose_backend sets them)")
        return openvino_runners(bundle, manifest, graphs, OPENVINO_PRECISIONS[choice.kind], choice.openvino, threads)
    engines = {e.graph: e for e in choice.engines}
    providers = {
        BackendKind.ORT_CPU: [CPU],
        BackendKind.ORT_CUDA: [CUDA, CPU],
        BackendKind.ORT_TENSORRT: [TENSORRT, CUDA, CPU],
    }

    def make(name: str, graph: GraphEntry) -> Runner:
        if choice.kind == BackendKind.TENSORRT:
            from .tensorrt_runner import TensorRTRunner

            return TensorRTRunner(bundle / engines[name].file, name, graph, manifest.dims, use_cuda_graph=cuda_graph)
        return OnnxRuntimeRunner(bundle, name, graph, manifest.dims, providers[choice.kind], threads)

    return activate_runners(manifest, graphs, make)
