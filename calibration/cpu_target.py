"""INT8 for ONNX Runtime on the CPU: the form MLAS runs fast, next to the Q/DQ form TensorRT builds. Torch-free.

    q = quantize_cpu_graph(prepared, work / "denoiser_cached.cpu.onnx", CpuScheme.DYNAMIC, exclude=("embed",))
    assert_cpu_form(q.path)                       # integer ops only, uint8 activations, per-channel int8 weights
    float_groups, rows = choose_float_groups(prepared, build, feeds, runs=20)   # keep float what does not pay

The TensorRT form (symmetric S8S8 Q/DQ, :mod:`.quantize`) is slow in ONNX Runtime on x86: only some of its Q/DQ
pairs fuse into U8S8 integer kernels, the rest run as float MatMuls with weights dequantized on every call. The CPU
form is what ONNX Runtime's own CPU guidance asks for: uint8 (asymmetric) activations, int8 per-channel symmetric
weights (``reduce_range`` only on CPUs without VNNI, see :mod:`.cpu_isa`), and the quantization fused into the
operators themselves, so no standalone QuantizeLinear / DequantizeLinear sits around a MatMul:

- :attr:`CpuScheme.DYNAMIC` (default): ``DynamicQuantizeLinear`` + ``MatMulInteger`` / ``ConvInteger``; the
  activation range is taken on every call, so it needs no calibration ranges and adapts to every timestep.
- :attr:`CpuScheme.STATIC`: ``QLinearMatMul`` / ``QLinearConv`` (QOperator) with the captured activation ranges
  (asymmetric). Measured on the demo step (2 cores, ORT 1.32, one thread, batch 1 / 4): dynamic 1.36x / 1.35x
  FP32 with one-step relative RMS error 0.020; static 1.14x / 1.10x with 0.035 (its float islands, LayerNorm,
  softmax, the adaLN modulation, need a QuantizeLinear / DequantizeLinear pair each).

Which op groups stay float is measured (:func:`choose_float_groups`): a group is quantized only when quantizing it
makes the step at least :data:`MIN_GROUP_GAIN` faster than keeping it float; the accuracy gate then judges the whole.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

from .capture import ShardDataReader
from .cpu_isa import CpuIsa
from .quantize import (
    DEFAULT_OP_TYPES,
    Method,
    QuantizedGraph,
    SensitiveGroup,
    is_large,
    sensitive_nodes,
)


class Target(str, enum.Enum):
    """Where the INT8 bundle runs: the form of its quantized graphs."""

    TENSORRT = "tensorrt"  # symmetric S8S8 explicit Q/DQ (TensorRT's explicit quantization)
    CPU = "cpu"  # uint8 activations x int8 per-channel weights in integer operators (ONNX Runtime CPU / MLAS)


class CpuScheme(str, enum.Enum):
    """How the CPU form quantizes activations."""

    DYNAMIC = "dynamic"  # DynamicQuantizeLinear + MatMulInteger / ConvInteger: per-call ranges, no calibration
    STATIC = "static"  # QLinearMatMul / QLinearConv (QOperator) with the calibrated activation ranges


#: The scheme used unless asked otherwise (faster and more accurate on the demo step; see the module docstring).
DEFAULT_CPU_SCHEME = CpuScheme.DYNAMIC
#: Op groups whose float-or-INT8 choice is measured (NORM is never quantized in the CPU form).
CPU_ABLATION_GROUPS: tuple[str, ...] = (SensitiveGroup.ATTENTION.value, SensitiveGroup.EMBED.value, SensitiveGroup.HEAD.value)
#: A group is quantized only when that makes the step at least this much faster (fraction of its time).
MIN_GROUP_GAIN = 0.03
#: Integer operators of the CPU form (the fused quantized computations).
INTEGER_OPS = frozenset({"MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv"})
#: Float compute operators a standalone Q/DQ must not surround in the CPU form.
COMPUTE_OPS = frozenset(DEFAULT_OP_TYPES)
#: Standalone quantize / dequantize operators.
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: Index of the weight (B / W) input and of the activation's zero point, per integer operator.
_WEIGHT_INPUT = {"MatMulInteger": 1, "ConvInteger": 1, "QLinearMatMul": 3, "QLinearConv": 3}
_ACTIVATION_ZERO_POINT = 2  # the same input index in all four
#: Index of the weight's per-channel parameter (a scale or zero point with one entry per output channel).
_WEIGHT_CHANNELS = {"MatMulInteger": 3, "ConvInteger": 3, "QLinearMatMul": 4, "QLinearConv": 4}


def cpu_quantizer_options(scheme: CpuScheme) -> dict[str, object]:
    """onnxruntime quantizer ``extra_options`` of the CPU form: asymmetric uint8 activations, symmetric int8 weights,
    and every MatMul a candidate (activation x activation ones too: the attention group is kept float by measurement,
    not by the quantizer's default)."""
    options: dict[str, object] = {"WeightSymmetric": True, "MatMulConstBOnly": False}
    if scheme == CpuScheme.STATIC:
        options["ActivationSymmetric"] = False
    return options


# --------------------------------------------------------------------------------------------- quantize


def quantize_cpu_graph(
    prepared: Path,
    out_path: Path,
    scheme: CpuScheme | str = DEFAULT_CPU_SCHEME,
    exclude: Iterable[str] = (),
    ranges_file: Path | None = None,
    method: Method | str = Method.MINMAX,
    isa: CpuIsa | None = None,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
) -> QuantizedGraph:
    """Write the CPU INT8 form of a prepared graph (see the module docstring).

    Args:
        prepared: the pre-processed FP32 graph (:func:`~.quantize.prepare_graph`).
        out_path: where the quantized graph goes.
        scheme: dynamic (MatMulInteger) or static (QLinearMatMul, needs ``ranges_file``).
        exclude: sensitive groups (:data:`~.quantize.SENSITIVE_GROUPS`) kept in float.
        ranges_file: asymmetric activation ranges (:func:`~.quantize.compute_ranges` with ``symmetric=False``).
        method: the calibration method the ranges came from (static only).
        isa: the CPU's integer path; 7-bit weights (``reduce_range``) when it is an int16-saturating one.
        op_types: operators quantized.
    Returns:
        The :class:`~.quantize.QuantizedGraph`: ``quantized_nodes`` counts the integer operators, ``qdq_nodes`` the
        standalone QuantizeLinear / DequantizeLinear left.
    Raises:
        ValueError: the static scheme without a ranges file.
    """
    scheme, method = CpuScheme(scheme), Method(method)
    model = onnx.load(str(prepared), load_external_data=False)
    excluded = sensitive_nodes(model, exclude, op_types)
    names = sorted({name for nodes in excluded.values() for name in nodes})
    reduce_range = bool(isa and isa.reduce_range)
    large = is_large(prepared)
    if scheme == CpuScheme.DYNAMIC:
        quantize_dynamic(
            str(prepared), str(out_path), op_types_to_quantize=list(op_types), per_channel=True,
            reduce_range=reduce_range, weight_type=QuantType.QInt8, nodes_to_exclude=names,
            use_external_data_format=large, extra_options=cpu_quantizer_options(scheme),
        )  # fmt: skip
    else:
        if ranges_file is None:
            raise ValueError("the static CPU scheme needs activation ranges (ranges_file); the dynamic one does not")
        quantize_static(
            str(prepared), str(out_path), calibration_data_reader=None, quant_format=QuantFormat.QOperator,
            op_types_to_quantize=list(op_types), per_channel=True, reduce_range=reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=names,
            use_external_data_format=large, calibrate_method=method.ort,
            extra_options=cpu_quantizer_options(scheme), calibration_cache_path=str(ranges_file),
        )  # fmt: skip
    result = QuantizedGraph(out_path, method.value, prepared, ranges_file, tuple(op_types), excluded)
    form = cpu_form(out_path)
    result.quantized_nodes, result.qdq_nodes = form.integer_nodes, form.standalone_qdq
    return result


# ------------------------------------------------------------------------------------------------- form


@dataclass(frozen=True)
class CpuForm:
    """What a CPU-form graph holds (counted in the saved graph)."""

    integer_ops: dict[str, int]  # MatMulInteger / ConvInteger / QLinearMatMul / QLinearConv
    dynamic_quantize: int  # DynamicQuantizeLinear nodes
    standalone_qdq: int  # QuantizeLinear + DequantizeLinear nodes
    qdq_compute: int  # float MatMul / Conv / Gemm in the Q/DQ form: a dequantized weight, or DQ in and Q out
    float_compute: int  # MatMul / Conv / Gemm left in float
    activation_types: tuple[str, ...]  # element types of the integer operators' activations
    weight_types: tuple[str, ...]  # element types of their weights
    per_channel_weights: int  # integer operators whose weight has one scale / zero point per output channel

    @property
    def integer_nodes(self) -> int:
        return sum(self.integer_ops.values())

    def to_dict(self) -> dict[str, object]:
        return {"integer_ops": dict(self.integer_ops), "dynamic_quantize": self.dynamic_quantize,
                "standalone_qdq": self.standalone_qdq, "qdq_compute": self.qdq_compute,
                "float_compute": self.float_compute, "activation_types": list(self.activation_types),
                "weight_types": list(self.weight_types), "per_channel_weights": self.per_channel_weights}  # fmt: skip


def cpu_form(path: Path) -> CpuForm:
    """Count the integer operators, Q/DQ nodes and element types of a quantized graph."""
    model = onnx.load(str(path), load_external_data=False)
    nodes = list(model.graph.node)
    initializers = {t.name: t for t in model.graph.initializer}
    dtypes = _quantized_dtypes(nodes, initializers)
    producers = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    integer = [n for n in nodes if n.op_type in INTEGER_OPS]
    qdq = [n for n in nodes if n.op_type in QDQ_OPS]
    def dequantized(tensor: str, weight: bool) -> bool:
        producer = producers.get(tensor)
        return producer is not None and producer.op_type == "DequantizeLinear" and (not weight or producer.input[0] in initializers)

    qdq_compute = [
        n for n in nodes if n.op_type in COMPUTE_OPS
        and (any(dequantized(i, weight=True) for i in n.input)
             or (any(dequantized(i, weight=False) for i in n.input)
                 and any(c.op_type == "QuantizeLinear" for c in consumers.get(n.output[0], []))))
    ]  # fmt: skip
    activations, weights, per_channel = [], [], 0
    for node in integer:
        activations.append(dtypes.get(_input(node, _ACTIVATION_ZERO_POINT), "unknown"))
        weight = initializers.get(_input(node, _WEIGHT_INPUT[node.op_type]))
        weights.append(onnx.TensorProto.DataType.Name(weight.data_type).lower() if weight is not None else "activation")
        channels = initializers.get(_input(node, _WEIGHT_CHANNELS[node.op_type]))
        if weight is not None and channels is not None and len(channels.dims) == 1 and channels.dims[0] > 1:
            per_channel += 1
    return CpuForm(
        integer_ops=dict(Counter(n.op_type for n in integer)),
        dynamic_quantize=sum(1 for n in nodes if n.op_type == "DynamicQuantizeLinear"),
        standalone_qdq=len(qdq),
        qdq_compute=len(qdq_compute),
        float_compute=sum(1 for n in nodes if n.op_type in COMPUTE_OPS),
        activation_types=tuple(activations),
        weight_types=tuple(weights),
        per_channel_weights=per_channel,
    )


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if len(node.input) > index else ""


def _quantized_dtypes(nodes: Sequence[onnx.NodeProto], initializers: Mapping[str, onnx.TensorProto]) -> dict[str, str]:
    """Element type of every zero-point tensor: initializers, and DynamicQuantizeLinear's (always uint8)."""
    dtypes = {name: onnx.TensorProto.DataType.Name(t.data_type).lower() for name, t in initializers.items()}
    for node in nodes:
        if node.op_type == "DynamicQuantizeLinear":
            dtypes.update({node.output[0]: "uint8", node.output[2]: "uint8"})
    return dtypes


def assert_cpu_form(path: Path) -> CpuForm:
    """Raise ``ValueError`` naming every way the graph is not the CPU form; returns its :class:`CpuForm`.

    The CPU form has integer operators, no float MatMul / Conv / Gemm between a DequantizeLinear and a QuantizeLinear
    or on a dequantized weight (the Q/DQ form, which ONNX Runtime may leave unfused), uint8 activations
    and int8 weights.
    """
    form = cpu_form(path)
    problems = []
    if not form.integer_nodes:
        problems.append("no integer operator (MatMulInteger / ConvInteger / QLinearMatMul / QLinearConv)")
    if form.qdq_compute:
        problems.append(f"{form.qdq_compute} MatMul / Conv / Gemm in the Q/DQ form (standalone DequantizeLinear / "
                        "QuantizeLinear around a float operator)")  # fmt: skip
    wrong_activations = sorted(set(form.activation_types) - {"uint8"})
    if wrong_activations:
        problems.append(f"integer operators with {wrong_activations} activations (the CPU form uses uint8)")
    wrong_weights = sorted(set(form.weight_types) - {"int8", "activation"})
    if wrong_weights:
        problems.append(f"integer operators with {wrong_weights} weights (the CPU form uses int8)")
    if problems:
        raise ValueError(f"{path} is not in the CPU INT8 form: " + "; ".join(problems))
    return form


# ---------------------------------------------------------------------------------------------- ablation


def one_step_error(
    reference: Path, candidate: Path, feeds: Sequence[Mapping[str, np.ndarray]], threads: int | None = None
) -> dict[str, float]:
    """Relative RMS / max |diff| of ``candidate``'s first output against ``reference``'s, over the recorded feeds."""
    import onnxruntime

    from mmgen_edge.runtime.onnxruntime_runner import CPU

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    sessions = [onnxruntime.InferenceSession(str(p), sess_options=options, providers=[CPU]) for p in (reference, candidate)]
    squared = total = max_abs = 0.0
    for feed in feeds:
        a, b = (s.run(None, dict(feed))[0].astype(np.float64) for s in sessions)
        squared += float(np.sum((a - b) ** 2))
        total += float(np.sum(a**2))
        max_abs = max(max_abs, float(np.max(np.abs(a - b))))
    return {"rel_rms": float(np.sqrt(squared / total)) if total else 0.0, "max_abs": max_abs}


def paired_gain(
    slower: Path, faster: Path, feeds: Mapping[str, np.ndarray], runs: int = 20, threads: int | None = None
) -> float:
    """How much faster ``faster`` runs one call than ``slower`` (0.1 = 10 % of its time saved), ORT CPU.

    The two graphs run back to back ``runs`` times after a warm-up, and the gain is the median of the per-pair time
    ratios minus 1: a pair shares the machine's load of its moment, so a busy machine (other jobs on the cores)
    shifts both and the ratio stays (a median of each graph's times drifts with the load between their runs).
    """
    import time

    import onnxruntime

    from mmgen_edge.runtime.onnxruntime_runner import CPU

    from .measures import SPEED_WARMUP_RUNS

    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    sessions = [onnxruntime.InferenceSession(str(p), sess_options=options, providers=[CPU]) for p in (slower, faster)]
    feeds = dict(feeds)
    for session in sessions:
        for _ in range(SPEED_WARMUP_RUNS):
            session.run(None, feeds)
    ratios = []
    for _ in range(runs):
        times = []
        for session in sessions:
            start = time.perf_counter()
            session.run(None, feeds)
            times.append(time.perf_counter() - start)
        ratios.append(times[0] / times[1])
    return float(np.median(ratios)) - 1.0


def choose_float_groups(
    prepared: Path,
    build: Callable[[tuple[str, ...], str], QuantizedGraph],
    feeds: Sequence[Mapping[str, np.ndarray]],
    base_exclude: Sequence[str] = (),
    groups: Sequence[str] = CPU_ABLATION_GROUPS,
    runs: int = 20,
    threads: int | None = None,
    min_gain: float = MIN_GROUP_GAIN,
) -> tuple[tuple[str, ...], dict[str, dict[str, float]]]:
    """Measure each group quantized vs kept float (everything else quantized); keep float those that do not pay.

    Args:
        prepared: the FP32 graph (the accuracy reference).
        build: ``build(exclude, tag)`` writes the graph quantized with ``exclude`` kept float.
        feeds: recorded denoiser calls; the first one is timed, all of them score the one-step error.
        base_exclude: groups always kept float.
        groups: the groups measured.
        runs: timed pairs per variant (with the all-quantized graph, :func:`paired_gain`).
        min_gain: the smallest step-time gain (fraction) for which a group is quantized.
    Returns:
        (groups kept float, rows by variant: quantized_nodes, rel_rms, max_abs, and for each group
        ``gain``: float-group time / all-quantized time - 1, i.e. what quantizing it saves, paired medians).
    """
    if not feeds:
        raise ValueError("choose_float_groups needs at least one recorded feed")
    base = tuple(base_exclude)
    quantized_all = build(base, "all")
    rows = {"quantize all": {"quantized_nodes": float(quantized_all.quantized_nodes),
                             **one_step_error(prepared, quantized_all.path, feeds, threads)}}  # fmt: skip
    keep_float = []
    for group in groups:
        if group in base:
            continue
        variant = build((*base, group), f"float-{group}")
        if variant.quantized_nodes == quantized_all.quantized_nodes:  # the graph has no such node
            continue
        gain = paired_gain(variant.path, quantized_all.path, feeds[0], runs, threads)
        rows[f"float {group}"] = {"quantized_nodes": float(variant.quantized_nodes), "gain": gain,
                                  **one_step_error(prepared, variant.path, feeds, threads)}  # fmt: skip
        if gain < min_gain:
            keep_float.append(group)
    return (*base, *keep_float), rows



#: Recorded denoiser calls that score the ablation's one-step error (spread over the capture).
ABLATION_FEEDS = 4
#: Timed runs per ablation variant (interleaved medians).
ABLATION_RUNS = 20


def sample_feeds(reader: ShardDataReader, count: int = ABLATION_FEEDS) -> list[dict[str, np.ndarray]]:
    """``count`` recorded calls spread evenly over a capture's reader (all of them when it holds fewer)."""
    total = len(reader)
    if total == 0:
        raise ValueError("the capture holds no recorded call")
    feeds = []
    for index in sorted({round(i * (total - 1) / max(count - 1, 1)) for i in range(min(count, total))}):
        reader.set_range(index, index + 1)
        feed = reader.get_next()
        if feed is None:
            raise ValueError(f"the capture reader returned nothing for call {index} of {total}")
        feeds.append(feed)
    return feeds


def quantize_for_cpu(
    prepared: Path,
    out_path: Path,
    scheme: CpuScheme | str,
    exclude: Sequence[str] | None,
    feeds: Sequence[Mapping[str, np.ndarray]],
    ranges_file: Path | None = None,
    method: Method | str = Method.MINMAX,
    isa: CpuIsa | None = None,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    runs: int = ABLATION_RUNS,
    threads: int | None = None,
) -> tuple[QuantizedGraph, dict[str, dict[str, float]]]:
    """The CPU form of a graph, its float groups given (``exclude``) or measured (``exclude=None``).

    Returns:
        (the quantized graph, checked by :func:`assert_cpu_form`; the ablation rows, empty when ``exclude`` is given).
    """
    def build(groups: tuple[str, ...], tag: str) -> QuantizedGraph:
        path = out_path if tag == "final" else out_path.with_name(f"{out_path.stem}.{tag}.onnx")
        return quantize_cpu_graph(prepared, path, scheme, groups, ranges_file, method, isa, op_types)

    rows: dict[str, dict[str, float]] = {}
    if exclude is None:
        exclude, rows = choose_float_groups(prepared, build, feeds, runs=runs, threads=threads)
    result = build(tuple(exclude), "final")
    assert_cpu_form(result.path)
    return result, rows
