"""Build TensorRT engines from our ONNX graphs (TensorRT 10.x and 11.x Python API; 8.6 where it costs nothing).

All decisions are pure functions that run without TensorRT (:func:`tensorrt_capabilities` reads a module object,
:func:`plan_build`, :func:`validate_profiles`, :func:`parse_engine_information`, :func:`check_layer_precisions`);
:func:`build_engine` only applies them. ``tensorrt`` (and ``cuda-python`` for the GPU identity the engine is built
for) are imported lazily by :mod:`mmgen_edge.runtime.gpu`, the same reader engine matching uses.

Precision policy (no INT8 calibrator, ever):

* TensorRT 11 removed ``BuilderFlag.FP16``/``INT8`` and weak typing: every network is strongly typed and the
  precision must already be in the ONNX graph (fp16 casts, explicit Q/DQ). A plain fp32 graph cannot be built in
  fp16/int8 there, and :func:`plan_build` says so instead of silently building fp32.
* TensorRT 10 (and 8.6): a precision-annotated graph is built strongly typed when the flag exists (10.x), else
  with ``FP16`` / ``INT8`` (+``FP16``) builder flags; a plain fp32 graph asked for fp16 gets ``BuilderFlag.FP16``.
* Whatever the route, the built engine is inspected (``ProfilingVerbosity.DETAILED`` + ``IEngineInspector``) and
  refused when its layers do not show the requested precision, so "fp16" can never quietly be fp32.

The engine file holds the plain serialized plan (no header), so ``trtexec --loadEngine`` and Triton load it as is.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import ModuleType
from typing import Any

from mmgen_edge.runtime import gpu
from mmgen_edge.runtime.fileio import atomic_file, readable_like_folder

__all__ = [
    "BuildPlan",
    "EngineReport",
    "Precision",
    "ShapeProfile",
    "build_engine",
    "check_layer_precisions",
    "parse_engine_information",
    "plan_build",
    "tensorrt_capabilities",
    "validate_profiles",
]

log = logging.getLogger(__name__)

#: Layer-precision names used in :attr:`EngineReport.layer_precisions` (TensorRT's own DataType spelling).
FLOAT, HALF, BFLOAT16, INT8, FP8, INT4, FP4 = "Float", "Half", "BFloat16", "Int8", "FP8", "Int4", "FP4"
INT32, INT64, UINT8, BOOL, DOUBLE, UNKNOWN = "Int32", "Int64", "UInt8", "Bool", "Double", "Unknown"
#: Reduced-precision floating/quantized types: an "fp32" engine must show none of them.
REDUCED_PRECISIONS = frozenset({HALF, BFLOAT16, INT8, FP8, INT4, FP4})

#: Words of the inspector's "Format/Datatype" strings (e.g. "Row major linear FP16 format (kLINEAR)",
#: "Thirty-two wide channel vectorized row major Int8 format", kgen layers: "Half") -> precision name.
#: Source: NVIDIA/TensorRT tools/experimental/trt-engine-explorer/trex/activations.py.
FORMAT_WORDS: dict[str, str] = {
    "fp32": FLOAT,
    "float": FLOAT,
    "fp16": HALF,
    "half": HALF,
    "bfloat16": BFLOAT16,
    "bf16": BFLOAT16,
    "int8": INT8,
    "fp8": FP8,
    "int4": INT4,
    "fp4": FP4,
    "int32": INT32,
    "int64": INT64,
    "uint8": UINT8,
    "bool": BOOL,
    "double": DOUBLE,
}
_WORD = re.compile(r"[A-Za-z0-9]+")

#: Keys of the capability dict (see :func:`tensorrt_capabilities`).
CAPABILITY_KEYS = (
    "has_fp16_flag",
    "has_int8_flag",
    "has_strongly_typed",
    "always_strongly_typed",
    "needs_explicit_batch",
)
#: First TensorRT major version where every network is strongly typed (weak-typing flags removed).
ALWAYS_STRONGLY_TYPED_MAJOR = 11
#: Before this major version the ONNX parser needs an explicit-batch network flag.
IMPLICIT_EXPLICIT_BATCH_MAJOR = 10


class Precision(str, Enum):
    """Requested engine precision."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


@dataclass(frozen=True)
class ShapeProfile:
    """min/opt/max shape of one dynamic network input (all go into one optimisation profile)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            object.__setattr__(self, name, tuple(int(dim) for dim in getattr(self, name)))
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"profile {self.name!r}: min/opt/max ranks differ ({self.min}, {self.opt}, {self.max})")
        for low, mid, high in zip(self.min, self.opt, self.max):
            if not 0 <= low <= mid <= high:
                raise ValueError(
                    f"profile {self.name!r}: need 0 <= min <= opt <= max per dimension, got "
                    f"{self.min}, {self.opt}, {self.max}"
                )


@dataclass(frozen=True)
class BuildPlan:
    """How to create the network and configure the builder."""

    strongly_typed: bool
    builder_flags: tuple[str, ...]  # names of ``trt.BuilderFlag`` members to set
    network_flags: tuple[str, ...] = ()  # names of ``trt.NetworkDefinitionCreationFlag`` members to set


@dataclass
class EngineReport:
    """What was built, where, and which precisions its layers ended up in."""

    trt_version: str
    device_name: str
    compute_capability: str
    precision: Precision
    strongly_typed: bool
    layer_precisions: dict[str, int] = field(default_factory=dict)  # e.g. {"Float": 10, "Half": 200, "Int8": 50}
    build_seconds: float = 0.0


# ------------------------------------------------------------------------------------------- pure decisions


def _version_tuple(version: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); trailing non-numeric parts (e.g. 'post1') are dropped."""
    numbers = []
    for part in version.split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        numbers.append(int(match.group()))
    return tuple(numbers)


def tensorrt_capabilities(trt_module: Any) -> dict[str, bool]:
    """What the installed TensorRT Python API offers, read from the module object (no GPU needed).

    ``has_fp16_flag`` / ``has_int8_flag``: ``trt.BuilderFlag.FP16`` / ``INT8`` exist (removed in 11.0).
    ``has_strongly_typed``: ``trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED`` exists (10.x; 11.x keeps it,
    deprecated and ignored). ``always_strongly_typed``: TensorRT >= 11 (or no FP16 flag at all).
    ``needs_explicit_batch``: TensorRT < 10, whose ONNX parser requires ``EXPLICIT_BATCH``.
    """
    builder_flags = trt_module.BuilderFlag
    network_flags = trt_module.NetworkDefinitionCreationFlag
    major = (_version_tuple(str(trt_module.__version__)) or (0,))[0]
    has_fp16 = hasattr(builder_flags, "FP16")
    return {
        "has_fp16_flag": has_fp16,
        "has_int8_flag": hasattr(builder_flags, "INT8"),
        "has_strongly_typed": hasattr(network_flags, "STRONGLY_TYPED"),
        "always_strongly_typed": major >= ALWAYS_STRONGLY_TYPED_MAJOR or not has_fp16,
        "needs_explicit_batch": major < IMPLICIT_EXPLICIT_BATCH_MAJOR and hasattr(network_flags, "EXPLICIT_BATCH"),
    }


def _weak_flags(precision: Precision) -> tuple[str, ...]:
    """Builder flags that enable ``precision`` in a weakly typed network (INT8 keeps FP16 for the rest)."""
    return {Precision.FP32: (), Precision.FP16: ("FP16",), Precision.INT8: ("INT8", "FP16")}[precision]


def plan_build(precision: Precision, caps: Mapping[str, bool], graph_is_annotated: bool) -> BuildPlan:
    """Decide strong typing and builder flags (pure; see the module docstring for the policy).

    ``graph_is_annotated``: the ONNX graph already carries the precision (fp16 casts/initializers for fp16,
    QuantizeLinear/DequantizeLinear for int8). Raises ``ValueError`` for requests that cannot give the asked
    precision: int8 without Q/DQ (no calibrator), fp16/int8 of a plain fp32 graph on TensorRT 11, fp32 of an
    annotated graph, or a flag the installed TensorRT lacks.
    """
    precision = Precision(precision)
    missing = [key for key in CAPABILITY_KEYS if key not in caps]
    if missing:
        raise ValueError(f"capabilities lack {missing}; build them with tensorrt_capabilities(trt)")
    explicit_batch = ("EXPLICIT_BATCH",) if caps["needs_explicit_batch"] else ()
    if precision is Precision.INT8 and not graph_is_annotated:
        raise ValueError(
            "int8 needs an explicitly quantized graph (QuantizeLinear/DequantizeLinear nodes): INT8 calibrators are "
            "not supported (and removed in TensorRT 11). Quantize the ONNX graph first."
        )
    if precision is Precision.FP32 and graph_is_annotated:
        raise ValueError(
            "fp32 was requested but the graph is precision-annotated (fp16 casts or Q/DQ): TensorRT would follow "
            "the graph's types. Build the plain fp32 export instead, or request the graph's precision."
        )
    if caps["always_strongly_typed"]:
        if precision is not Precision.FP32 and not graph_is_annotated:
            raise ValueError(
                f"{precision.value} was requested for a plain fp32 graph, but this TensorRT (>= 11) has no FP16/INT8 "
                "builder flags: every network is strongly typed and takes its precision from the ONNX graph. Export "
                "the fp16-converted (or Q/DQ-quantized) graph and pass graph_is_annotated=True."
            )
        return BuildPlan(strongly_typed=True, builder_flags=())  # STRONGLY_TYPED is ignored in 11: do not set it
    if graph_is_annotated and caps["has_strongly_typed"]:
        return BuildPlan(strongly_typed=True, builder_flags=(), network_flags=("STRONGLY_TYPED",) + explicit_batch)
    if precision is Precision.FP32 and caps["has_strongly_typed"]:
        # A plain fp32 graph is fully typed already; strong typing forbids any silent down-conversion.
        return BuildPlan(strongly_typed=True, builder_flags=(), network_flags=("STRONGLY_TYPED",) + explicit_batch)
    flags = _weak_flags(precision)
    lacking = [flag for flag in flags if not caps[f"has_{flag.lower()}_flag"]]
    if lacking:
        raise ValueError(f"this TensorRT has no BuilderFlag {lacking} and no strongly typed networks")
    return BuildPlan(strongly_typed=False, builder_flags=flags, network_flags=explicit_batch)


def validate_profiles(input_shapes: Mapping[str, Sequence[int]], profiles: Sequence[ShapeProfile]) -> None:
    """Check ``profiles`` against the network inputs ({name: shape with -1 for dynamic dims}).

    Every input with a dynamic dimension needs a profile; profiles must name existing inputs, have the input's
    rank, and agree with its static dimensions. Raises ``ValueError`` listing every problem.
    """
    problems = []
    by_name = {}
    for profile in profiles:
        if profile.name in by_name:
            problems.append(f"two profiles for input {profile.name!r}")
        by_name[profile.name] = profile
    for name in by_name.keys() - input_shapes.keys():
        problems.append(f"profile for unknown input {name!r} (inputs: {sorted(input_shapes)})")
    for name, shape in input_shapes.items():
        profile = by_name.get(name)
        if profile is None:
            if any(dim < 0 for dim in shape):
                problems.append(f"input {name!r} has dynamic shape {tuple(shape)} but no ShapeProfile")
            continue
        if len(profile.min) != len(shape):
            problems.append(f"input {name!r} has rank {len(shape)}, its profile rank {len(profile.min)}")
            continue
        for axis, dim in enumerate(shape):
            if dim >= 0 and not profile.min[axis] == profile.opt[axis] == profile.max[axis] == dim:
                problems.append(f"input {name!r} axis {axis} is static ({dim}) but the profile varies it")
    if problems:
        raise ValueError("invalid shape profiles:\n" + "\n".join(f"  - {p}" for p in problems))


def _format_precision(text: str) -> str | None:
    """Precision named by an inspector "Format/Datatype" / "Type" string, None when it names none."""
    for word in _WORD.findall(text):
        precision = FORMAT_WORDS.get(word.lower())
        if precision is not None:
            return precision
    return None


def _layer_precision(layer: Mapping[str, Any]) -> str:
    """Output precision of one inspector layer; falls back to its weights' type, else ``Unknown``.

    With dynamic shapes and no execution context the inspector prints "N/A due to dynamic shapes" as the format;
    weighted layers (convolutions, matmuls) still report ``"Weights": {"Type": "Half", ...}``.
    """
    for tensor in layer.get("Outputs", ()):
        if isinstance(tensor, Mapping):
            precision = _format_precision(str(tensor.get("Format/Datatype", "")))
            if precision is not None:
                return precision
    weights = layer.get("Weights")
    if isinstance(weights, Mapping):
        precision = _format_precision(str(weights.get("Type", "")))
        if precision is not None:
            return precision
    return UNKNOWN


def parse_engine_information(json_text: str) -> dict[str, int]:
    """Count layers per output precision in ``IEngineInspector.get_engine_information(JSON)`` text.

    Expects an engine built with ``ProfilingVerbosity.DETAILED`` (``{"Layers": [{...}, ...], "Bindings": [...]}``
    in 10.x, ``"I/O Tensors"`` instead of ``"Bindings"`` in 11.x; both are accepted). Returns e.g.
    ``{"Float": 3, "Half": 120, "Int8": 40}``; layers whose precision cannot be read count as ``"Unknown"``.
    """
    info = json.loads(json_text)
    layers = info.get("Layers") if isinstance(info, Mapping) else None
    if not isinstance(layers, list):
        raise ValueError("engine information has no 'Layers' list")
    if any(not isinstance(layer, Mapping) for layer in layers):
        raise ValueError(
            "engine information lists layer names only: build with config.profiling_verbosity = "
            "trt.ProfilingVerbosity.DETAILED to get per-layer formats"
        )
    return dict(Counter(_layer_precision(layer) for layer in layers))


def check_layer_precisions(layer_precisions: Mapping[str, int], precision: Precision) -> None:
    """Refuse (``ValueError``) an engine whose layers do not show ``precision``.

    fp16: at least one ``Half`` layer; int8: at least one ``Int8`` layer; fp32: no reduced-precision layer.
    """
    precision = Precision(precision)
    total = sum(layer_precisions.values())
    if total == 0:
        raise ValueError("the engine reports no layers: was it built with ProfilingVerbosity.DETAILED?")
    summary = ", ".join(f"{name}: {count}" for name, count in sorted(layer_precisions.items()))
    unknown = layer_precisions.get(UNKNOWN, 0)
    note = (
        f" ({unknown} layers of unknown precision: dynamic shapes need an execution context with input shapes "
        "set on the inspector)"
        if unknown
        else ""
    )
    required = {Precision.FP16: HALF, Precision.INT8: INT8}.get(precision)
    if required is not None and layer_precisions.get(required, 0) == 0:
        raise ValueError(
            f"{precision.value} was requested but no layer runs in {required} ({summary}){note}: the engine is "
            "refused. Is the graph precision-annotated, or was the builder flag honoured?"
        )
    if precision is Precision.FP32:
        reduced = {name: n for name, n in layer_precisions.items() if name in REDUCED_PRECISIONS and n}
        if reduced:
            raise ValueError(f"fp32 was requested but layers run in {sorted(reduced)} ({summary}): refused")


# ------------------------------------------------------------------------------------------ TensorRT glue


def _atomic_write(path: Path, data: Any) -> None:
    """Write ``data`` (bytes-like) to ``path`` atomically (:func:`~mmgen_edge.runtime.fileio.atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(memoryview(data))
        readable_like_folder(tmp, path.parent)  # engines are read like graphs


def _format_parser_error(error: Any) -> str:
    """One line per IParserError: node index/name/operator (when the API has them) and description."""
    parts = [f"node {error.node()}"]
    for getter in ("node_name", "node_operator"):
        if hasattr(error, getter):
            value = getattr(error, getter)()
            if value:
                parts.append(str(value))
    return f"{' '.join(parts)}: {error.desc()}"


def _parse_onnx(trt: ModuleType, network: Any, logger: Any, onnx_path: Path) -> Any:
    """Parse ``onnx_path`` into ``network`` (external data is read from the model's folder)."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_format_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValueError(f"TensorRT could not parse {onnx_path}:\n" + "\n".join(f"  - {e}" for e in errors))
    return parser


def _network_input_shapes(network: Any) -> dict[str, tuple[int, ...]]:
    inputs = (network.get_input(i) for i in range(network.num_inputs))
    return {tensor.name: tuple(tensor.shape) for tensor in inputs}


def _make_progress_monitor(trt: ModuleType) -> Any:
    """An ``IProgressMonitor`` logging top-level build phases (TensorRT >= 10), or None if unavailable."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _PhaseLogger(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                log.info("TensorRT: %s (%d steps)", phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            log.debug("TensorRT: %s done", phase_name)

    return _PhaseLogger()


def _load_timing_cache(config: Any, path: Path | None) -> None:
    """Attach a timing cache (from ``path`` when it exists); an unusable saved cache is replaced by an empty one."""
    if path is None:
        return
    data = path.read_bytes() if path.exists() else b""
    cache = config.create_timing_cache(data) if data else None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    if data:
        log.warning("timing cache %s is unusable (other TensorRT version or device); starting an empty one", path)
    empty = config.create_timing_cache(b"")
    if empty is None or not config.set_timing_cache(empty, ignore_mismatch=False):
        raise RuntimeError("TensorRT refused an empty timing cache")


def _configure(
    trt: ModuleType, builder: Any, plan: BuildPlan, profiles: Sequence[ShapeProfile], workspace_bytes: int | None
) -> Any:
    """Builder config: flags of ``plan``, DETAILED profiling, workspace limit, one profile with every input."""
    config = builder.create_builder_config()
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if profiles:
        profile = builder.create_optimization_profile()
        for shape in profiles:
            profile.set_shape(shape.name, shape.min, shape.opt, shape.max)
        config.add_optimization_profile(profile)
    return config


def _inspect_engine(trt: ModuleType, logger: Any, serialized: Any, profiles: Sequence[ShapeProfile]) -> dict[str, int]:
    """Deserialize, bind an execution context at the opt shapes (so formats resolve), count layer precisions."""
    runtime = trt.Runtime(logger)  # kept alive while the engine is in use
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize the engine it just built")
    context = engine.create_execution_context()
    for shape in profiles:
        if not context.set_input_shape(shape.name, shape.opt):
            raise RuntimeError(f"could not set input {shape.name!r} to its opt shape {shape.opt}")
    inspector = engine.create_engine_inspector()
    attribute = "execution_context" if hasattr(inspector, "execution_context") else "context"  # 10.x/11 vs 8.x
    setattr(inspector, attribute, context)
    return parse_engine_information(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    profiles: Sequence[ShapeProfile],
    precision: Precision,
    timing_cache_path: str | os.PathLike | None = None,
    graph_is_annotated: bool = False,
    workspace_bytes: int | None = None,
    progress: bool = True,
) -> EngineReport:
    """Build ``onnx_path`` into a plain TensorRT engine file at ``engine_path`` and report what came out.

    ``profiles``: one :class:`ShapeProfile` per dynamic input (a single optimisation profile). ``graph_is_annotated``:
    the graph carries its precision (fp16 casts / Q/DQ), see :func:`plan_build`. The timing cache (optional) is
    loaded from and saved back to ``timing_cache_path`` atomically; the engine is written atomically and only
    after :func:`check_layer_precisions` accepted it. ``progress`` logs the builder phases (TensorRT >= 10).
    """
    trt = gpu.import_tensorrt("building TensorRT engines")
    onnx_file, engine_file = Path(onnx_path), Path(engine_path)
    cache_file = Path(timing_cache_path) if timing_cache_path is not None else None
    plan = plan_build(precision, tensorrt_capabilities(trt), graph_is_annotated)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = sum(1 << int(getattr(trt.NetworkDefinitionCreationFlag, name)) for name in plan.network_flags)
    network = builder.create_network(flags)
    parser = _parse_onnx(trt, network, logger, onnx_file)  # noqa: F841 (the parser must outlive the build)
    validate_profiles(_network_input_shapes(network), profiles)
    config = _configure(trt, builder, plan, profiles, workspace_bytes)
    monitor = _make_progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    _load_timing_cache(config, cache_file)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    build_seconds = time.perf_counter() - started
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_file} (see the TensorRT errors logged above)")
    if cache_file is not None:
        _atomic_write(cache_file, config.get_timing_cache().serialize())
    layer_precisions = _inspect_engine(trt, logger, serialized, profiles)
    check_layer_precisions(layer_precisions, precision)
    _atomic_write(engine_file, serialized)
    built_on = gpu.gpu_identity()
    return EngineReport(
        trt_version=built_on.tensorrt_version,
        device_name=built_on.device_name,
        compute_capability=built_on.compute_capability,
        precision=Precision(precision),
        strongly_typed=plan.strongly_typed,
        layer_precisions=layer_precisions,
        build_seconds=build_seconds,
    )
