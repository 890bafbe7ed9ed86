"""Per-operator checks of the TensorRT operator table's static restrictions, and the graph scope they read.

Each check takes one default-domain node and a :class:`CheckContext` (the :class:`GraphScope` of constants and
producers visible to the node, the TensorRT version, the project's Conv-weight rule) and returns its problems as
strings; :data:`NODE_CHECKS` maps operator names to checks. The table's rows (:mod:`.tensorrt_op_table`) are the
rules' source; :mod:`.tensorrt_support` walks a graph and runs them.

Only a few small tensors (zero points, ``axes``, ``K``) are ever materialised, from external data if necessary.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from .tensorrt_op_table import (
    EINSUM_ELLIPSIS_SINCE,
    PAD_TENSOR_AXES_SINCE,
    POOL_SPATIAL_RANKS,
    RESIZE_ASPECT_RATIO_POLICIES,
    RESIZE_COORDINATE_MODES,
    RESIZE_MODES,
    RESIZE_NEAREST_MODES,
    SLICE_TENSOR_AXES_SINCE,
    TENSORRT_ONNX_OPS,
    TOPK_MAX_K,
    qdq_dtypes,
    supported_dtypes,
)

#: The default ONNX operator domain, by both its names.
DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
#: ONNX's QuantizeLinear output type when neither `y_zero_point` nor `output_dtype` says otherwise.
QUANTIZE_DEFAULT_DTYPE = onnx.TensorProto.UINT8
# ONNX defaults of the Resize attributes.
RESIZE_DEFAULT_COORDINATE_MODE = "half_pixel"
RESIZE_DEFAULT_MODE = "nearest"
RESIZE_DEFAULT_NEAREST_MODE = "round_prefer_floor"
RESIZE_DEFAULT_ASPECT_RATIO_POLICY = "stretch"
RESIZE_SCALES_INPUT = 2

REDUCE_OPS = frozenset(op for op in TENSORRT_ONNX_OPS if op.startswith("Reduce"))
CONV_WEIGHT_INPUT = 1
#: Nodes through which a Conv weight still counts as constant (explicit quantization, fp16 conversion) ...
CONSTANT_PASSTHROUGH_OPS = frozenset({"DequantizeLinear", "Cast"})
#: ... and how many of them may be chained (e.g. Cast(DequantizeLinear(initializer))).
MAX_PASSTHROUGH_DEPTH = 2
#: Input index of `axes` of Squeeze/Unsqueeze/Reduce* (opset >= 13/18 layout; older opsets use an attribute).
AXES_INPUT = 1
SLICE_AXES_INPUT = 3
PAD_AXES_INPUT = 3
QDQ_ZERO_POINT_INPUT = 2
DROPOUT_TRAINING_INPUT = 2
#: Why onnxruntime.quantization output trips the Q/DQ rules, and the option that avoids it.
QDQ_DTYPE_HINTS = {
    onnx.TensorProto.UINT8: " (onnxruntime quantization defaults to QUInt8 activations: use QInt8, symmetric)",
    onnx.TensorProto.INT32: " (onnxruntime quantizes biases to INT32: pass extra_options={'QuantizeBias': False})",
}
UNSUPPORTED_CONSTANT_ATTRIBUTES = ("sparse_value", "value_string", "value_strings")
CONSTANT_VALUE_ATTRIBUTES = ("value", "value_float", "value_floats", "value_int", "value_ints")


class GraphScope:
    """What the nodes of one (sub)graph can see: constants (initializers, Constant outputs) and producers."""

    def __init__(self, base_dir: str | None, parent: GraphScope | None = None):
        self.base_dir = base_dir
        self.parent = parent
        self.constants: dict[str, onnx.TensorProto | onnx.NodeProto] = {}
        self.producers: dict[str, onnx.NodeProto] = {}

    def add_graph(self, initializers: Iterable[onnx.TensorProto], nodes: Iterable[onnx.NodeProto]) -> None:
        for tensor in initializers:
            self.constants[tensor.name] = tensor
        for node in nodes:
            for output in node.output:
                if output:
                    self.producers[output] = node
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
                self.constants[node.output[0]] = node

    def _lookup(self, table: str, name: str) -> onnx.TensorProto | onnx.NodeProto | None:
        scope: GraphScope | None = self
        while scope is not None:
            found = getattr(scope, table).get(name)
            if found is not None:
                return found
            scope = scope.parent
        return None

    def is_constant(self, name: str) -> bool:
        """True for an initializer or a Constant node output visible from this scope."""
        return self._lookup("constants", name) is not None

    def producer(self, name: str) -> onnx.NodeProto | None:
        found = self._lookup("producers", name)
        return found if isinstance(found, onnx.NodeProto) else None

    def constant_dtype(self, name: str) -> int | None:
        """ONNX element type of a constant, or None if ``name`` is not a (typed) constant."""
        found = self._lookup("constants", name)
        if isinstance(found, onnx.TensorProto):
            return found.data_type
        if isinstance(found, onnx.NodeProto):
            for attribute in found.attribute:
                if attribute.name == "value":
                    return attribute.t.data_type
        return None

    def constant_value(self, name: str) -> np.ndarray | None:
        """Value of a constant (external data read from ``base_dir``), None when not a readable constant."""
        found = self._lookup("constants", name)
        if isinstance(found, onnx.TensorProto):
            return _tensor_value(found, self.base_dir)
        if isinstance(found, onnx.NodeProto):
            return _constant_node_value(found, self.base_dir)
        return None


def _tensor_value(tensor: onnx.TensorProto, base_dir: str | None) -> np.ndarray | None:
    """numpy value of one tensor; None for external data whose folder is unknown (in-memory model)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL and base_dir is None:
        return None
    return numpy_helper.to_array(tensor, base_dir=base_dir or "")


def _constant_node_value(node: onnx.NodeProto, base_dir: str | None) -> np.ndarray | None:
    for attribute in node.attribute:
        if attribute.name == "value":
            return _tensor_value(attribute.t, base_dir)
        if attribute.name in CONSTANT_VALUE_ATTRIBUTES:
            return np.asarray(onnx.helper.get_attribute_value(attribute))
    return None


def _attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """Decoded attribute value (strings as ``str``), or ``default``."""
    for attribute in node.attribute:
        if attribute.name == name:
            value = onnx.helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _input(node: onnx.NodeProto, index: int) -> str:
    """Name of input ``index`` ("" when absent or omitted)."""
    return node.input[index] if index < len(node.input) else ""


def dtype_name(dtype: int) -> str:
    return onnx.TensorProto.DataType.Name(dtype)


def node_label(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"<unnamed #{index}>"


def op_label(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


# ---------------------------------------------------------------------------------------------- per-op checks
# Each check returns the problems (strings) of one default-domain node; the op's table row is the rule's source.


@dataclass(frozen=True)
class CheckContext:
    """What a per-node check needs besides the node."""

    scope: GraphScope
    trt_version: tuple[int, int]
    require_constant_conv_weights: bool


NodeCheck = Callable[[onnx.NodeProto, CheckContext], list[str]]


def _check_conv_weight(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    """Project policy: Conv/ConvTranspose weights must be constant (initializer, Constant, or DQ/Cast of one).

    The 8.x tables required an initializer; the 10.x parser also accepts tensor weights ("dynamic weights
    convolution"), but our exports always fold weights, and a tensor weight means an export bug (and no refit).
    """
    if not ctx.require_constant_conv_weights:
        return []
    weight = name = _input(node, CONV_WEIGHT_INPUT)
    for _ in range(MAX_PASSTHROUGH_DEPTH + 1):
        if ctx.scope.is_constant(name):
            return []
        producer = ctx.scope.producer(name)
        if producer is None or producer.op_type not in CONSTANT_PASSTHROUGH_OPS or not producer.input:
            break
        name = producer.input[0]
    return [
        f"weight {weight!r} is not an initializer (nor a DequantizeLinear/Cast of one); export with the weights "
        "folded as initializers (TensorRT 8.x rejects tensor weights, and they cannot be refitted)"
    ]


def _quantized_dtype(node: onnx.NodeProto, scope: GraphScope) -> int | None:
    """Quantized element type of a QuantizeLinear / DequantizeLinear node, None when not statically known."""
    zero_point = _input(node, QDQ_ZERO_POINT_INPUT)
    if zero_point:
        dtype = scope.constant_dtype(zero_point)
        if dtype is not None:
            return dtype
    if node.op_type == "QuantizeLinear":
        output_dtype = _attribute(node, "output_dtype", 0)
        if output_dtype:
            return int(output_dtype)
        return None if zero_point else QUANTIZE_DEFAULT_DTYPE
    return scope.constant_dtype(_input(node, 0))


def _check_qdq(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    """Zero point (`y_zero_point` / `x_zero_point`) must be 0; the quantized type INT8, FP8 (E4M3) or INT4."""
    problems = []
    dtype = _quantized_dtype(node, ctx.scope)
    allowed = qdq_dtypes(ctx.trt_version)
    if dtype is not None and dtype not in allowed:
        hint = QDQ_DTYPE_HINTS.get(dtype, "")
        names = ", ".join(sorted(dtype_name(d) for d in allowed))
        problems.append(f"quantized type {dtype_name(dtype)} is not supported (only {names}){hint}")
    zero_point = _input(node, QDQ_ZERO_POINT_INPUT)
    if zero_point:
        value = ctx.scope.constant_value(zero_point)
        if value is None:
            problems.append(f"zero point {zero_point!r} must be a constant so that it can be checked to be 0")
        elif np.any(np.asarray(value, dtype=np.float64) != 0):
            problems.append(f"zero point {zero_point!r} must be 0 (TensorRT supports symmetric quantization only)")
    return problems


def _check_resize(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    problems = []
    mode = _attribute(node, "mode", RESIZE_DEFAULT_MODE)
    if mode not in RESIZE_MODES:
        problems.append(f"mode {mode!r} is not supported (only {sorted(RESIZE_MODES)})")
    coordinate_mode = _attribute(node, "coordinate_transformation_mode", RESIZE_DEFAULT_COORDINATE_MODE)
    if coordinate_mode not in RESIZE_COORDINATE_MODES:
        problems.append(
            f"coordinate_transformation_mode {coordinate_mode!r} is not supported "
            f"(only {sorted(RESIZE_COORDINATE_MODES)})"
        )
    nearest_mode = _attribute(node, "nearest_mode", RESIZE_DEFAULT_NEAREST_MODE)
    if mode == "nearest" and nearest_mode not in RESIZE_NEAREST_MODES:
        problems.append(f"nearest_mode {nearest_mode!r} is not supported (only {sorted(RESIZE_NEAREST_MODES)})")
    policy = _attribute(node, "keep_aspect_ratio_policy", RESIZE_DEFAULT_ASPECT_RATIO_POLICY)
    if policy not in RESIZE_ASPECT_RATIO_POLICIES:
        problems.append(f"keep_aspect_ratio_policy {policy!r} is not supported (only 'stretch')")
    if _attribute(node, "antialias", 0):
        problems.append("antialiasing is not supported")
    axes = _attribute(node, "axes")
    scales = _input(node, RESIZE_SCALES_INPUT)
    if axes is not None and scales and not ctx.scope.is_constant(scales) and list(axes) != list(range(len(axes))):
        problems.append(f"with a tensor `scales` input, `axes` must be an iota vector 0..rank-1 (got {list(axes)})")
    return problems


def _check_pool(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    problems = []
    kernel_shape = _attribute(node, "kernel_shape")
    if node.op_type != "LpPool" and kernel_shape is not None and len(kernel_shape) not in POOL_SPATIAL_RANKS:
        problems.append(f"only 2D or 3D pooling is supported (kernel_shape {list(kernel_shape)})")
    dilations = _attribute(node, "dilations")
    if dilations is not None and any(d != 1 for d in dilations):
        problems.append(f"`dilations` must be empty or all ones (got {list(dilations)})")
    if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
        problems.append("the `Indices` output is not supported")
    return problems


def _constant_input_check(index: int, what: str, lifted_in: tuple[int, int] | None = None) -> NodeCheck:
    """A check that input ``index`` is a build-time constant (until TensorRT ``lifted_in``, when given)."""

    def check(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
        if lifted_in is not None and ctx.trt_version >= lifted_in:
            return []
        name = _input(node, index)
        if name and not ctx.scope.is_constant(name):
            until = f" before TensorRT {lifted_in[0]}.{lifted_in[1]}" if lifted_in else ""
            return [f"{what} {name!r} must be an initializer or Constant (build-time constant){until}"]
        return []

    return check


def _check_einsum(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    """Before 10.12: "Ellipsis and diagonal operations are not supported"."""
    if ctx.trt_version >= EINSUM_ELLIPSIS_SINCE:
        return []
    equation = str(_attribute(node, "equation", "")).replace(" ", "")
    operands = equation.split("->")[0].split(",")
    problems = []
    if "..." in equation:
        problems.append(f"ellipsis in equation {equation!r} is not supported before TensorRT 10.12")
    if any(len(set(term)) != len(term) for term in operands if "..." not in term):
        problems.append(f"diagonal (repeated index) in equation {equation!r} is not supported before TensorRT 10.12")
    return problems


def _check_topk(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    problems = []
    if _attribute(node, "sorted", 1) != 1:
        problems.append("`sorted` must be 1")
    k_name = _input(node, 1)
    k = ctx.scope.constant_value(k_name) if k_name else None
    if k is not None and np.any(np.asarray(k) >= TOPK_MAX_K):
        problems.append(f"`K` must be less than {TOPK_MAX_K} (got {np.asarray(k).tolist()})")
    return problems


def _check_dropout(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    name = _input(node, DROPOUT_TRAINING_INPUT)
    if not name:
        return []
    value = ctx.scope.constant_value(name)
    if value is None or bool(np.any(value)):
        return ["`is_training` must be an initializer evaluating to False"]
    return []


def _check_constant_node(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    used = [a.name for a in node.attribute if a.name in UNSUPPORTED_CONSTANT_ATTRIBUTES]
    return [f"attribute {name!r} is not supported" for name in used]


def _check_layer_norm(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    if any(node.output[1:]):
        return ["only the first output `Y` is supported (omit the Mean / InvStdDev outputs)"]
    return []


def _check_lstm(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    return [f"`{name}` must be 0" for name in ("input_forget", "layout") if _attribute(node, name, 0) != 0]


def _check_scatter_nd(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    reduction = _attribute(node, "reduction", "none")
    return [] if reduction == "none" else [f"`reduction` {reduction!r} is not supported (only 'none')"]


def _check_if(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    then_branch, else_branch = _attribute(node, "then_branch"), _attribute(node, "else_branch")
    if then_branch is None or else_branch is None:
        return []
    shared = {o.name for o in then_branch.output} & {o.name for o in else_branch.output}
    return [f"branch outputs must have different names (shared: {sorted(shared)})"] if shared else []


def _check_cast(node: onnx.NodeProto, ctx: CheckContext) -> list[str]:
    to = _attribute(node, "to")
    if to is not None and int(to) not in supported_dtypes(ctx.trt_version):
        return [f"cast to {dtype_name(int(to))} is not supported by TensorRT"]
    return []


#: Static restriction checks per default-domain operator.
NODE_CHECKS: dict[str, NodeCheck] = {
    "Conv": _check_conv_weight,
    "ConvTranspose": _check_conv_weight,
    "QuantizeLinear": _check_qdq,
    "DequantizeLinear": _check_qdq,
    "Resize": _check_resize,
    "AveragePool": _check_pool,
    "MaxPool": _check_pool,
    "LpPool": _check_pool,
    "Squeeze": _constant_input_check(AXES_INPUT, "`axes`"),
    "Unsqueeze": _constant_input_check(AXES_INPUT, "`axes`"),
    "Slice": _constant_input_check(SLICE_AXES_INPUT, "`axes`", lifted_in=SLICE_TENSOR_AXES_SINCE),
    "Pad": _constant_input_check(PAD_AXES_INPUT, "`axes`", lifted_in=PAD_TENSOR_AXES_SINCE),
    "CumSum": _constant_input_check(1, "`axis`"),
    "OneHot": _constant_input_check(1, "`depth`"),
    "Einsum": _check_einsum,
    "TopK": _check_topk,
    "Dropout": _check_dropout,
    "Constant": _check_constant_node,
    "LayerNormalization": _check_layer_norm,
    "LSTM": _check_lstm,
    "ScatterND": _check_scatter_nd,
    "If": _check_if,
    "Cast": _check_cast,
    **{op: _constant_input_check(AXES_INPUT, "`axes`") for op in REDUCE_OPS},
}
