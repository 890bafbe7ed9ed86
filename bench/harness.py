"""Measurement helpers of the benchmark (importable, no CLI): timing, peak RSS, this CPU's peaks, graph cost, roofline.

    from harness import measure, graph_cost, roofline
    timing = measure(lambda: session.run(None, feeds), warmup=3, runs=20)       # Timing(median_ms, p90_ms, runs)
    flops, nbytes = graph_cost("bundle/denoiser_cached.onnx", {"x_t": [1, 16, 16, 16], ...})
    line = roofline(flops, nbytes, timing.median_ms / 1e3, cpu_peak_flops, cpu_peak_bw)

Units: FLOP/s and bytes/s in function arguments (SI, no hidden scaling); GFLOP/s, GB/s and ms in results, as
their names say. ``measure_interleaved`` runs several candidates round-robin so slow drifts of a shared machine
(another job, thermal throttling) hit every candidate alike and their ratios stay meaningful.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Percentile reported next to the median.
TAIL_PERCENTILE = 90
#: Matrix size and repetitions of the GEMM microbenchmark (1024^3 * 2 = 2.1 GFLOP per product).
GEMM_SIZE = 1024
GEMM_REPEATS = 5
#: Bytes copied by the memory-bandwidth microbenchmark (large enough to miss every cache level).
BANDWIDTH_BYTES = 256 << 20
BANDWIDTH_REPEATS = 5
#: Nodes whose multiply-accumulates are counted, with the input positions of (activation, weight/second operand).
MATMUL_OPS: dict[str, tuple[int, int]] = {
    "MatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3),  # a, a_scale, a_zero_point, b, ...
    "FusedMatMul": (0, 1),  # com.microsoft, after ORT's offline optimisations
}
CONV_OPS: dict[str, tuple[int, int]] = {
    "Conv": (0, 1),
    "ConvInteger": (0, 1),
    "QLinearConv": (0, 3),  # x, x_scale, x_zero_point, w, ...
}
GIGA = 1e9
TERA = 1e12
#: External tensors up to this size are read for shape inference (Reshape targets, Slice bounds); larger ones
#: (the weights) never are: their sizes come from their dims.
SMALL_EXTERNAL_TENSOR_BYTES = 1024

#: Dense (no structured sparsity) peaks of target GPUs. Sources (NVIDIA datasheets / whitepapers):
#: - H100 SXM5 80 GB: "NVIDIA H100 Tensor Core GPU" datasheet: FP32 67 TFLOPS; FP16 Tensor Core 1,979 TFLOPS and
#:   INT8 Tensor Core 3,958 TOPS *with sparsity* (the datasheet's footnote: dense is one half); HBM3 3.35 TB/s.
#: - GeForce RTX 4090: "NVIDIA Ada GPU Architecture" whitepaper, Appendix A (Table 2): FP32 82.6 TFLOPS; FP16 Tensor
#:   with FP32 accumulate 165.2 TFLOPS dense (330.3 with FP16 accumulate); INT8 Tensor 660.6 TOPS dense; GDDR6X
#:   1,008 GB/s.
#: - Jetson AGX Orin 64 GB (MAXN): "Jetson AGX Orin Series Technical Brief" v1.2 and module datasheet: GPU FP32
#:   5.3 TFLOPS; GPU Tensor Cores 170 INT8 TOPS *sparse* (85 dense) and 85 FP16 TFLOPS sparse (42.5 dense); LPDDR5
#:   204.8 GB/s. The GPU only: the DLAs' 105 sparse INT8 TOPS are not counted (TensorRT runs these graphs on the GPU).
DEVICE_PEAKS: dict[str, dict[str, float]] = {
    "H100 SXM": {"fp32_tflops": 67.0, "fp16_tflops": 989.5, "int8_tops": 1979.0, "memory_bandwidth_gbps": 3350.0},
    "RTX 4090": {"fp32_tflops": 82.6, "fp16_tflops": 165.2, "int8_tops": 660.6, "memory_bandwidth_gbps": 1008.0},
    "Jetson AGX Orin 64GB": {"fp32_tflops": 5.3, "fp16_tflops": 42.5, "int8_tops": 85.0, "memory_bandwidth_gbps": 204.8},
}
#: Which DEVICE_PEAKS column a graph precision runs at.
PRECISION_PEAK_KEY = {"fp32": "fp32_tflops", "fp16": "fp16_tflops", "int8": "int8_tops"}


# ------------------------------------------------------------------------------------------------ timing
@dataclass(frozen=True)
class Timing:
    """Wall-clock statistics of repeated calls, in milliseconds."""

    median_ms: float
    p90_ms: float
    runs: int
    min_ms: float = math.nan
    mean_ms: float = math.nan

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of ``samples``; ``q`` in [0, 100]."""
    if not samples:
        raise ValueError("percentile of no samples")
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def timing_from_samples(samples_s: Sequence[float]) -> Timing:
    """A :class:`Timing` from durations in seconds."""
    ms = [s * 1e3 for s in samples_s]
    return Timing(
        median_ms=float(statistics.median(ms)),
        p90_ms=percentile(ms, TAIL_PERCENTILE),
        runs=len(ms),
        min_ms=float(min(ms)),
        mean_ms=float(statistics.fmean(ms)),
    )


def _check_counts(warmup: int, runs: int) -> None:
    if warmup < 0 or runs < 1:
        raise ValueError(f"need warmup >= 0 and runs >= 1, got warmup={warmup}, runs={runs}")


def measure(fn: Callable[[], object], warmup: int = 3, runs: int = 20) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``runs`` times timed with ``time.perf_counter``."""
    _check_counts(warmup, runs)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return timing_from_samples(samples)


def measure_interleaved(fns: Mapping[str, Callable[[], object]], warmup: int = 3, runs: int = 20) -> dict[str, Timing]:
    """Time several candidates round-robin (one call of each per round, the order rotated every round).

    Every candidate sees the same machine state on average, so ratios between them are not skewed by a
    background job starting or stopping between two sequential ``measure`` calls.
    """
    _check_counts(warmup, runs)
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(runs):
        shift = round_index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - start)
    return {name: timing_from_samples(values) for name, values in samples.items()}


# ------------------------------------------------------------------------------------------------ memory
def _status_kib(field: str) -> int | None:
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss if sys.platform == "darwin" else maxrss * 1024)  # bytes on macOS, KiB on Linux


# ------------------------------------------------------------------------------------------------ this CPU
def cpu_gemm_peak_gflops(n: int = GEMM_SIZE, repeats: int = GEMM_REPEATS) -> float:
    """This CPU's measured fp32 peak: the best GFLOP/s of ``n x n @ n x n`` numpy products (its BLAS, all its threads)."""
    if n < 1 or repeats < 1:
        raise ValueError(f"need n >= 1 and repeats >= 1, got n={n}, repeats={repeats}")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)  # warm-up: thread pool start, page faults
    best = min(_time_once(lambda: np.matmul(a, b, out=out)) for _ in range(repeats))
    return 2.0 * n**3 / best / GIGA


def cpu_memory_bandwidth_gbps(nbytes: int = BANDWIDTH_BYTES, repeats: int = BANDWIDTH_REPEATS) -> float:
    """This CPU's measured memory bandwidth: best (read + write) GB/s of a numpy copy of ``nbytes``.

    numpy copies on one thread, so this is a lower bound of what all cores can pull; it is the roofline's slope.
    """
    if nbytes < 1 or repeats < 1:
        raise ValueError(f"need nbytes >= 1 and repeats >= 1, got nbytes={nbytes}, repeats={repeats}")
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm-up: page faults
    best = min(_time_once(lambda: np.copyto(dst, src)) for _ in range(repeats))
    return 2.0 * src.nbytes / best / GIGA


def _time_once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ graph cost
@dataclass(frozen=True)
class GraphCost:
    """FLOPs of the counted nodes, bytes (weights + inputs + outputs), and the per-op breakdown of FLOPs."""

    flops: int
    bytes: int
    weight_bytes: int
    io_bytes: int
    flops_by_op: dict[str, int]


def _with_concrete_inputs(model: Any, input_shapes: Mapping[str, Sequence[int]]) -> Any:
    """A copy of ``model`` whose graph inputs have the given shapes, outputs and value_info left to inference."""
    model = type(model).FromString(model.SerializeToString())
    names = [value.name for value in model.graph.input]
    missing = sorted(set(names) - set(input_shapes))
    unknown = sorted(set(input_shapes) - set(names))
    if missing or unknown:
        raise ValueError(f"input_shapes: missing {missing}, not inputs of the graph {unknown} (inputs: {names})")
    for value in model.graph.input:
        shape = [int(d) for d in input_shapes[value.name]]
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ValueError(f"input {value.name} has rank {len(dims)}, got shape {shape}")
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = size
    for value in model.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.Clear()  # left to inference (a symbolic name would clash with the concrete size)
    del model.graph.value_info[:]  # traced value_info carries symbolic batch sizes
    return model


def _tensor_bytes(tensor: Any) -> int:
    from onnx.helper import tensor_dtype_to_np_dtype

    return math.prod(tensor.dims) * tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _load_small_external_tensors(model: Any, base_dir: Path) -> None:
    """Read the data of small external initializers (shape constants), leaving the weights on disk."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    for tensor in model.graph.initializer:
        if uses_external_data(tensor) and _tensor_bytes(tensor) <= SMALL_EXTERNAL_TENSOR_BYTES:
            load_external_data_for_tensor(tensor, str(base_dir))
            tensor.data_location = tensor.DEFAULT
            del tensor.external_data[:]


def _external_weights_as_inputs(model: Any) -> Any:
    """A copy of ``model`` whose initializers still on disk (the weights) are graph inputs of their type and shape.

    Shape inference then knows their shapes and never reads their values. Left as initializers, ONNX Runtime's
    symbolic shape inference reads the value of some (a Concat with a learned token, an Add of two constants)
    with ``numpy_helper.to_array``, which looks for the external data file in the current directory instead of
    the model's folder: the cost of a graph with external data then fails unless run from the bundle folder.
    """
    from onnx.external_data_helper import uses_external_data
    from onnx.helper import make_tensor_value_info

    if not any(uses_external_data(tensor) for tensor in model.graph.initializer):
        return model
    model = type(model).FromString(model.SerializeToString())
    initializers = list(model.graph.initializer)
    on_disk = [tensor for tensor in initializers if uses_external_data(tensor)]
    del model.graph.initializer[:]
    model.graph.initializer.extend(tensor for tensor in initializers if not uses_external_data(tensor))
    model.graph.input.extend(make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in on_disk)
    return model


def _infer_shapes(model: Any) -> Any:
    """Shape inference with concrete inputs.

    ONNX Runtime's symbolic shape inference (an extension of ``onnx.shape_inference``) evaluates the
    Shape -> Gather -> Concat -> Reshape chains of traced graphs, which ``onnx.shape_inference`` (even with
    ``data_prop``) leaves unknown.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=False, guess_output_rank=False)
    if inferred is None:
        raise ValueError("symbolic shape inference failed on this graph")
    return inferred


def _known_shapes(model: Any) -> dict[str, tuple[int, ...] | None]:
    """Every value's shape: a tuple of ints, or None when a dimension stayed unknown."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    graph = model.graph
    for value in (*graph.input, *graph.output, *graph.value_info):
        dims = value.type.tensor_type.shape.dim
        concrete = all(d.HasField("dim_value") for d in dims)
        shapes[value.name] = tuple(int(d.dim_value) for d in dims) if concrete else None
    for init in graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def _shape_of(shapes: Mapping[str, tuple[int, ...] | None], node: Any, name: str) -> tuple[int, ...]:
    shape = shapes.get(name)
    if shape is None:
        raise ValueError(f"{node.op_type} node {node.name or node.output[0]!r}: shape of {name!r} is unknown after inference")
    return shape


def node_flops(node: Any, shapes: Mapping[str, tuple[int, ...] | None]) -> int:
    """2 * multiply-accumulates of a MatMul / Gemm / Conv-like node (0 for any other op)."""
    out = _shape_of(shapes, node, node.output[0])
    if node.op_type in MATMUL_OPS:
        a_index, _ = MATMUL_OPS[node.op_type]
        k = _shape_of(shapes, node, node.input[a_index])[-1]
        return 2 * math.prod(out) * k  # out (..., M, N); each element is a K-long dot product
    if node.op_type == "Gemm":
        a = _shape_of(shapes, node, node.input[0])
        trans_a = next((int(attr.i) for attr in node.attribute if attr.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return 2 * math.prod(out) * k
    if node.op_type in CONV_OPS:
        _, w_index = CONV_OPS[node.op_type]
        w = _shape_of(shapes, node, node.input[w_index])  # (Cout, Cin/groups, kh, kw)
        return 2 * math.prod(out) * math.prod(w[1:])  # N*Cout*Hout*Wout outputs, each Cin/groups*kh*kw MACs
    return 0


def _value_bytes(value: Any, shapes: Mapping[str, tuple[int, ...] | None]) -> int:
    from onnx.helper import tensor_dtype_to_np_dtype

    shape = shapes.get(value.name)
    if shape is None:
        raise ValueError(f"graph input/output {value.name!r} has an unknown shape after inference")
    return math.prod(shape) * tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).itemsize


def graph_cost_detail(onnx_path: str | os.PathLike[str], input_shapes: Mapping[str, Sequence[int]]) -> GraphCost:
    """:func:`graph_cost` with the split of bytes and the FLOPs per op type."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)  # weights' sizes come from their dims
    _load_small_external_tensors(model, Path(onnx_path).parent)
    concrete = _with_concrete_inputs(model, input_shapes)
    inferred = _infer_shapes(_external_weights_as_inputs(concrete))
    shapes = _known_shapes(inferred)
    flops_by_op: dict[str, int] = {}
    for node in inferred.graph.node:
        flops = node_flops(node, shapes)
        if flops:
            flops_by_op[node.op_type] = flops_by_op.get(node.op_type, 0) + flops
    weight_bytes = sum(_tensor_bytes(init) for init in concrete.graph.initializer)
    io_bytes = sum(_value_bytes(v, shapes) for v in (*concrete.graph.input, *concrete.graph.output))
    return GraphCost(
        flops=sum(flops_by_op.values()),
        bytes=int(weight_bytes + io_bytes),
        weight_bytes=int(weight_bytes),
        io_bytes=int(io_bytes),
        flops_by_op=flops_by_op,
    )


def graph_cost(onnx_path: str | os.PathLike[str], input_shapes: Mapping[str, Sequence[int]]) -> tuple[int, int]:
    """(FLOPs, bytes) of one call of an ONNX graph with the given concrete input shapes.

    FLOPs: MatMul-like nodes 2*M*N*K (batch dimensions included), Gemm 2*M*N*K, Conv-like nodes
    2*N*Cout*(Cin/groups)*kh*kw*Hout*Wout; element-wise ops, normalisations and softmax are not counted (a
    lower bound dominated by the GEMMs). Bytes: every initializer once (the weights a call must read) plus the
    graph's inputs and outputs; intermediate activations are assumed to stay in cache. The file is read without
    its external data (sizes come from the tensors' dims; only external tensors of at most
    ``SMALL_EXTERNAL_TENSOR_BYTES``, i.e. shape constants, are read). Raises ValueError when a counted node's
    shape stays unknown.
    """
    cost = graph_cost_detail(onnx_path, input_shapes)
    return cost.flops, cost.bytes


# ------------------------------------------------------------------------------------------------ roofline
def roofline(flops: float, bytes: float, seconds: float, peak_flops: float, peak_bw: float) -> dict[str, float]:
    """Where a measured call sits under the roofline of a machine.

    Args: FLOPs and bytes of one call, its measured duration in seconds, the machine's peak FLOP/s and memory
    bandwidth in bytes/s. Returns achieved GFLOP/s, arithmetic intensity (FLOP/byte), attainable GFLOP/s
    ``min(peak, intensity * bandwidth)`` and the achieved fraction of it.
    """
    if flops < 0 or bytes <= 0 or seconds <= 0 or peak_flops <= 0 or peak_bw <= 0:
        raise ValueError(
            f"roofline needs flops >= 0 and positive bytes, seconds and peaks; got flops={flops}, bytes={bytes}, "
            f"seconds={seconds}, peak_flops={peak_flops}, peak_bw={peak_bw}"
        )
    intensity = flops / bytes
    attainable = min(peak_flops, intensity * peak_bw)
    achieved = flops / seconds
    return {
        "achieved_gflops": achieved / GIGA,
        "arithmetic_intensity": intensity,
        "attainable_gflops": attainable / GIGA,
        "fraction_of_attainable": achieved / attainable if attainable > 0 else math.nan,
    }


def device_bound(flops: float, bytes: float, device: str, precision: str = "fp32") -> dict[str, float]:
    """Roofline lower bound of one call on a DEVICE_PEAKS device: attainable GFLOP/s and the minimum time in ms."""
    if device not in DEVICE_PEAKS:
        raise ValueError(f"unknown device {device!r}; known: {sorted(DEVICE_PEAKS)}")
    if precision not in PRECISION_PEAK_KEY:
        raise ValueError(f"unknown precision {precision!r}; known: {sorted(PRECISION_PEAK_KEY)}")
    peaks = DEVICE_PEAKS[device]
    peak_flops = peaks[PRECISION_PEAK_KEY[precision]] * TERA
    peak_bw = peaks["memory_bandwidth_gbps"] * GIGA
    intensity = flops / bytes if bytes > 0 else math.inf
    attainable = min(peak_flops, intensity * peak_bw)
    min_seconds = max(flops / peak_flops, bytes / peak_bw)
    return {"attainable_gflops": attainable / GIGA, "min_ms": min_seconds * 1e3, "peak_gflops": peak_flops / GIGA}
