"""Static INT8 quantization of a bundle graph into explicit Q/DQ ONNX that TensorRT builds. Torch-free.

    prepared = prepare_graph(Path("bundle/denoiser_cached.onnx"), work / "denoiser_cached.prepared.onnx")
    save_tensors_data(compute_ranges(prepared, capture.reader("denoiser_cached"), "minmax", work), ranges_file)
    result = quantize_graph(prepared, work / "denoiser_cached.int8.onnx", ranges_file, "minmax")

TensorRT only accepts symmetric INT8 Q/DQ (zero point 0) and builds its own bias, so every graph is quantized with
QInt8 activations and weights, ``ActivationSymmetric`` / ``WeightSymmetric``, ``QuantizeBias=False`` and per-channel
weights (onnxruntime's defaults, uint8 activations with non-zero zero points and an int32 bias DequantizeLinear, do
not build). Only the inputs of the compute-heavy operators (:data:`DEFAULT_OP_TYPES`: Conv, MatMul, Gemm) get
Q/DQ pairs, the placement TensorRT fuses; LayerNormalization, Softmax, the residual adds and the sampler update
stay in float. Sensitive nodes can be kept in float as groups (:data:`SENSITIVE_GROUPS`).

Ranges are computed chunk by chunk from a streaming reader (a histogram method never holds more than
:data:`CALIBRATION_CHUNK` calls' activations) and can be cached as JSON keyed by everything they depend on
(:func:`ranges_cache_key`): a bundle whose weights or graph changed never reuses stale ranges.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnxruntime
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, load_tensors_data, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from mmgen_edge.runtime.fileio import OUTPUT_MARKER, link_or_copy
from mmgen_edge.runtime.manifest import MANIFEST_FILE, Manifest, Precision, file_entry, write_manifest

#: Operators whose inputs get Q/DQ pairs (what TensorRT runs in INT8; everything else stays float).
DEFAULT_OP_TYPES: tuple[str, ...] = ("Conv", "MatMul", "Gemm")
#: Reader items (recorded graph calls) per calibration chunk. onnxruntime's histogram calibrators keep every
#: activation of a chunk in memory before folding it into their histograms, so one call at a time bounds memory
#: by one call's activations (MinMax keeps only per-tensor minima/maxima either way).
CALIBRATION_CHUNK = 1
#: Graphs with weights larger than this are saved with external data (protobuf's limit is 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1 << 30
#: Percentile kept by the percentile method (onnxruntime's default).
DEFAULT_PERCENTILE = 99.999
#: Q/DQ operators (default domain) a quantized graph contains.
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


class Method(str, enum.Enum):
    """Calibration methods: how an activation's range is chosen from its observed values."""

    MINMAX = "minmax"  # the observed min and max (no clipping)
    ENTROPY = "entropy"  # the threshold minimising the KL divergence of the quantized histogram
    PERCENTILE = "percentile"  # the DEFAULT_PERCENTILE-th percentile of |x|

    @property
    def ort(self) -> CalibrationMethod:
        return {
            Method.MINMAX: CalibrationMethod.MinMax,
            Method.ENTROPY: CalibrationMethod.Entropy,
            Method.PERCENTILE: CalibrationMethod.Percentile,
        }[self]


class SensitiveGroup(str, enum.Enum):
    """Groups of nodes that can be kept in float (found from the graph's structure, not from names)."""

    NORM = "norm"  # LayerNormalization / Softmax nodes (already float unless their op types are quantized)
    ATTENTION = "attention"  # activation x activation MatMuls: Q K^T and softmax(...) V
    HEAD = "head"  # the last quantizable nodes before the outputs (x_next / x0_hat): the final layers
    EMBED = "embed"  # the first quantizable nodes after the latent input x_t: the patch-embed Conv


SENSITIVE_GROUPS: tuple[str, ...] = tuple(g.value for g in SensitiveGroup)
#: Groups kept in float by default. Measured on the tiny test model (K=4, MinMax, final-latent relative RMS
#: error): no exclusion 3.7e-3; head 2.1e-3; embed 2.9e-3; head + embed 1.4e-4; attention makes no difference.
#: Head and embed are a few percent of the FLOPs, so keeping them float costs little speed.
DEFAULT_EXCLUDE: tuple[str, ...] = (SensitiveGroup.NORM.value, SensitiveGroup.HEAD.value, SensitiveGroup.EMBED.value)
#: Operators of the NORM group.
NORM_OPS = frozenset({"LayerNormalization", "Softmax"})
#: The latent input the EMBED group starts from.
LATENT_INPUT = "x_t"


#: onnxruntime quantizer ``extra_options`` for TensorRT-buildable Q/DQ: symmetric INT8 everywhere, float bias.
TENSORRT_QDQ_OPTIONS: dict[str, object] = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}


def calibrator_options(method: Method, symmetric: bool = True) -> dict[str, object]:
    """``create_calibrator`` options: symmetric ranges (as the symmetric Q/DQ uses them; ``symmetric=False`` for the
    CPU form's uint8 activations), the percentile kept."""
    options: dict[str, object] = {"symmetric": symmetric}
    if method == Method.PERCENTILE:
        options["percentile"] = DEFAULT_PERCENTILE
    return options


# ------------------------------------------------------------------------------------------ preparation


def prepare_graph(source: Path, target: Path) -> Path:
    """ONNX shape inference + onnxruntime's basic graph optimisation (constant folding), as quantization advises.

    onnxruntime's symbolic shape inference is skipped: it imports torch whenever torch is installed, and on these
    graphs ONNX's own inference gives the quantizer every shape it needs (the same nodes get quantized either way).
    Large graphs (weights above :data:`EXTERNAL_DATA_THRESHOLD`) keep their weights in ``<target>.data``.
    """
    large = is_large(source)
    external = {"save_as_external_data": True, "all_tensors_to_one_file": True, "external_data_location": f"{target.name}.data"}
    quant_pre_process(str(source), str(target), skip_symbolic_shape=True, **(external if large else {}))
    model = onnx.load(str(target))
    if name_nodes(model):
        save_onnx(model, target, large)
    return target


def is_large(path: Path) -> bool:
    """Whether a graph's file plus its external data exceed :data:`EXTERNAL_DATA_THRESHOLD`."""
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(f"{path.name}*.data")) > EXTERNAL_DATA_THRESHOLD


def save_onnx(model: onnx.ModelProto, path: Path, external: bool) -> str | None:
    """Save ``model`` at ``path``, with its weights in ``<name>.data`` when ``external``; returns that file name."""
    location = f"{path.name}.data" if external else None
    if location:
        (path.parent / location).unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location)
    else:
        onnx.save_model(model, str(path))
    return location


def name_nodes(model: onnx.ModelProto) -> bool:
    """Give every unnamed (or duplicate-named) node a unique name, so that nodes can be excluded by name."""
    seen: set[str] = set()
    changed = False
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
            changed = True
        seen.add(node.name)
    return changed


# ----------------------------------------------------------------------------------- sensitive nodes


def sensitive_nodes(
    model: onnx.ModelProto, groups: Iterable[str], op_types: Sequence[str] = DEFAULT_OP_TYPES
) -> dict[str, list[str]]:
    """Node names per requested group (see :class:`SensitiveGroup`)."""
    groups = [SensitiveGroup(g) for g in groups]
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    found: dict[str, list[str]] = {}
    for group in groups:
        if group == SensitiveGroup.NORM:
            found[group.value] = [n.name for n in graph.node if n.op_type in NORM_OPS]
        elif group == SensitiveGroup.ATTENTION:
            found[group.value] = [
                n.name for n in graph.node if n.op_type == "MatMul" and not any(i in constants for i in n.input)
            ]
        elif group == SensitiveGroup.HEAD:
            found[group.value] = _frontier(graph, [o.name for o in graph.output], set(op_types), backward=True)
        else:
            found[group.value] = _frontier(graph, [LATENT_INPUT], set(op_types), backward=False)
    return found


def _frontier(graph: onnx.GraphProto, start: Sequence[str], stop_ops: set[str], backward: bool) -> list[str]:
    """Nodes of ``stop_ops`` first reached from the ``start`` tensors, walking through every other node.

    ``backward`` walks from outputs to the nodes producing them (the head), otherwise from inputs to their
    consumers (the embedding).
    """
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def neighbours(tensor: str) -> list[onnx.NodeProto]:
        if backward:
            return [producers[tensor]] if tensor in producers else []
        return consumers.get(tensor, [])

    pending, seen, hits = list(start), set(start), set()
    while pending:
        for node in neighbours(pending.pop()):
            if node.op_type in stop_ops:
                hits.add(node.name)
                continue
            for tensor in node.input if backward else node.output:
                if tensor and tensor not in seen:
                    seen.add(tensor)
                    pending.append(tensor)
    return sorted(hits)


# ----------------------------------------------------------------------------------------------- ranges


def ranges_cache_key(**parts: object) -> str:
    """SHA-256 of everything a range set depends on (weights and graph hashes, calibration set, method, ...)."""
    payload = json.dumps({**parts, "onnxruntime": onnxruntime.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def compute_ranges(
    prepared: Path,
    reader: CalibrationDataReader,
    method: Method | str,
    work_dir: Path,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    chunk: int = CALIBRATION_CHUNK,
    symmetric: bool = True,
) -> TensorsData:
    """Activation ranges of ``prepared`` over the reader's feeds, collected ``chunk`` calls at a time.

    ``symmetric`` ranges (``-max|x|..max|x|``) suit the symmetric TensorRT Q/DQ; the CPU form's uint8 activations
    take the observed ``min..max`` (``symmetric=False``).
    """
    method = Method(method)
    calibrator = create_calibrator(
        prepared,
        list(op_types),
        augmented_model_path=str(work_dir / f"{prepared.stem}.augmented.onnx"),
        calibrate_method=method.ort,
        use_external_data_format=is_large(prepared),
        extra_options=calibrator_options(method, symmetric),
    )
    total = len(reader)  # type: ignore[arg-type]
    if total == 0:
        raise ValueError("the calibration reader holds no data")
    for start in range(0, total, chunk):
        reader.set_range(start, start + chunk)
        calibrator.collect_data(reader)
    return calibrator.compute_data()


def cached_ranges(cache_file: Path, compute: Callable[[], TensorsData]) -> tuple[Path, bool]:
    """(ranges file, hit): ``cache_file`` when it exists and reads as ranges, else the ranges are computed and
    written there (a truncated or foreign file under the cache's name is a stale cache: it is replaced)."""
    if cache_file.is_file():
        try:
            load_tensors_data(cache_file)
            return cache_file, True
        except Exception:  # noqa: BLE001 - not ranges we wrote (KeyError, TypeError, JSON errors...): recompute
            cache_file.unlink()
    save_tensors_data(compute(), cache_file)
    return cache_file, False


class RangesFactory:
    """A deferred :func:`compute_ranges` call (a cache hit never runs the calibration); looked up at call time."""

    def __init__(
        self, prepared: Path, reader: CalibrationDataReader, method: Method, work_dir: Path, op_types: Sequence[str],
        symmetric: bool = True,
    ):  # fmt: skip
        self.args = (prepared, reader, method, work_dir, op_types)
        self.symmetric = symmetric

    def __call__(self) -> TensorsData:
        return compute_ranges(*self.args, symmetric=self.symmetric)


# --------------------------------------------------------------------------------------------- quantize


@dataclass
class QuantizedGraph:
    """What :func:`quantize_graph` produced."""

    path: Path
    method: str
    prepared: Path  # the pre-processed FP32 graph it was quantized from
    ranges_file: Path | None  # None for the CPU form's dynamic scheme (ranges taken on every call)
    op_types: tuple[str, ...]
    excluded: dict[str, list[str]] = field(default_factory=dict)  # group -> node names kept in float
    quantized_nodes: int = 0  # nodes of op_types with Q/DQ inputs
    qdq_nodes: int = 0
    ranges_cached: bool = False


def quantize_graph(
    prepared: Path,
    out_path: Path,
    ranges_file: Path,
    method: Method | str = Method.MINMAX,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    extra_exclude_nodes: Sequence[str] = (),
) -> QuantizedGraph:
    """Write the explicit Q/DQ INT8 version of the prepared graph, with the ranges of ``ranges_file``."""
    method = Method(method)
    model = onnx.load(str(prepared), load_external_data=False)
    excluded = sensitive_nodes(model, exclude, op_types)
    if extra_exclude_nodes:
        excluded["nodes"] = list(extra_exclude_nodes)
    names = sorted({name for nodes in excluded.values() for name in nodes})
    large = is_large(prepared)
    quantize_static(
        str(prepared),
        str(out_path),
        calibration_data_reader=None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types),
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=names,
        use_external_data_format=large,
        calibrate_method=method.ort,
        extra_options=dict(TENSORRT_QDQ_OPTIONS),
        calibration_cache_path=str(ranges_file),
    )
    result = QuantizedGraph(out_path, method.value, prepared, ranges_file, tuple(op_types), excluded)
    result.qdq_nodes, result.quantized_nodes = qdq_counts(out_path, op_types)
    return result


def qdq_counts(path: Path, op_types: Sequence[str] = DEFAULT_OP_TYPES) -> tuple[int, int]:
    """(Q/DQ nodes, nodes of ``op_types`` fed by a DequantizeLinear) of a quantized graph."""
    model = onnx.load(str(path), load_external_data=False)
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    qdq = sum(1 for n in model.graph.node if n.op_type in QDQ_OPS)
    quantized = sum(1 for n in model.graph.node if n.op_type in op_types and any(i in dq_outputs for i in n.input))
    return qdq, quantized


# --------------------------------------------------------------------------------------- TensorRT check


def assert_tensorrt_buildable(path: Path) -> None:
    """Raise ``ValueError`` listing every reason TensorRT's ONNX parser would reject the quantized graph."""
    from mmgen_edge.export.tensorrt_support import assert_tensorrt_supported  # onnx + numpy only, no torch

    assert_tensorrt_supported(path)


# ------------------------------------------------------------------------------------------ INT8 bundle


def stage_int8_bundle(
    source: Path,
    manifest: Manifest,
    quantized: Mapping[str, Path],
    target: Path,
    calibration: Mapping[str, object] | None = None,
) -> Manifest:
    """Fill ``target`` with the FP32 bundle's files, the ``quantized`` graphs in place of theirs, and a manifest.

    The unchanged files (the conditioning graph, the VAE graphs: a third of an XL bundle) are hard-linked to the
    FP32 bundle's where the file system allows (``fileio.link_or_copy``), not copied again.

    The manifest says precision ``int8`` (the quantized graphs too; the others keep theirs), lists every file
    re-hashed, drops the TensorRT engines (they were built from the FP32 graphs) and records ``calibration``.
    """
    unknown = sorted(set(quantized) - set(manifest.graphs))
    if unknown:
        raise ValueError(f"the bundle has no graph {unknown} to replace (it has {sorted(manifest.graphs)})")
    replaced = {manifest.graphs[name].file for name in quantized}
    replaced |= {manifest.graphs[name].external_data for name in quantized if manifest.graphs[name].external_data}
    engine_files = {e.file for e in manifest.engines}
    for entry in manifest.files:
        if entry.path not in replaced and entry.path not in engine_files:
            (target / entry.path).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(source / entry.path, target / entry.path)  # unchanged: shared with the FP32 bundle
    graphs = dict(manifest.graphs)
    for name, path in quantized.items():
        graph = graphs[name]
        external = save_graph(path, target / graph.file)
        graphs[name] = graph.model_copy(update={"precision": Precision.INT8, "external_data": external})
    files = sorted(
        p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file() and p.name not in (MANIFEST_FILE, OUTPUT_MARKER)
    )
    staged = manifest.model_copy(
        update={
            "precision": Precision.INT8,
            "graphs": graphs,
            "files": tuple(file_entry(target, f) for f in files),
            "engines": (),
            "calibration": dict(calibration) if calibration is not None else None,
        }
    )
    write_manifest(target, staged)
    return staged


def save_graph(source: Path, target: Path) -> str | None:
    """Copy a graph into a bundle (external data above the threshold); returns the data file's name or None."""
    model = onnx.load(str(source))
    return save_onnx(model, target, sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD)
