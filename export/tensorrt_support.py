"""CPU-side check that an ONNX graph can be parsed by TensorRT's ONNX parser (``onnx-tensorrt``).

    issues = check_tensorrt_support("bundle/denoiser_cached.onnx")     # [] when TensorRT 10.0 can parse it
    assert_tensorrt_supported(path, trt_version=(10, 3))              # ValueError listing the issues

The reference is the TensorRT 10.x operator table (:mod:`.tensorrt_op_table`, transcribed from ``onnx-tensorrt``).
TensorRT 11 keeps this table as its baseline, so a graph that passes here for 10.0 is the conservative target for
every machine we deploy to (JetPack ships 10.x, servers may run 11).

Only what can be decided from the graph alone is checked: operator names and domains, the default-domain opset,
data types, and the per-operator restrictions of the table that are static (attribute values, inputs that must
be initializers or constants, quantization zero points; :mod:`.tensorrt_op_checks`). Shape-dependent restrictions
(e.g. "GridSample input must be 4D") are left to the parser itself. This module walks the graph (subgraphs and
model-local functions included) and reports every issue.

Weights are never read: a model path is loaded with ``onnx.load(path, load_external_data=False)``; only the few
small tensors a restriction needs (zero points, ``axes``) are materialised, from external data if necessary.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from .tensorrt_op_checks import (
    DEFAULT_DOMAINS,
    CheckContext,
    GraphScope,
    NODE_CHECKS,
    dtype_name,
    node_label,
    op_label,
)
from .tensorrt_op_table import (
    BASELINE_TRT_VERSION,
    TENSORRT_ONNX_OPS,
    TENSORRT_OPS_ADDED_IN,
    supported_dtypes,
    tensorrt_opset_range,
)

__all__ = [
    "SupportIssue",
    "assert_tensorrt_supported",
    "check_tensorrt_support",
    "format_issues",
]

#: How many issues :func:`assert_tensorrt_supported` lists before summarising the rest.
MAX_LISTED_ISSUES = 20


@dataclass(frozen=True)
class SupportIssue:
    """One reason TensorRT's ONNX parser would reject (or mis-parse) a graph."""

    node: str  # node name ("" for model-level issues such as the opset)
    op_type: str  # "domain::Op" for non-default domains
    problem: str  # human-readable problem

    def __str__(self) -> str:
        where = f"{self.op_type} node {self.node!r}" if self.node or self.op_type else "model"
        return f"{where}: {self.problem}"


# ---------------------------------------------------------------------------------------------- graph walk


def _op_problem(
    node: onnx.NodeProto, trt_version: tuple[int, int], local_functions: frozenset[tuple[str, str]]
) -> str | None:
    """Why the operator itself is unsupported (None when it is supported)."""
    if (node.domain, node.op_type) in local_functions:
        return None
    if node.domain not in DEFAULT_DOMAINS:
        return (
            f"operator {node.op_type!r} of domain {node.domain!r} is not an ONNX operator TensorRT parses (only the "
            "default domain; e.g. com.microsoft ops come from onnxruntime graph optimisations: export without them)"
        )
    if node.op_type not in TENSORRT_ONNX_OPS:
        return f"operator {node.op_type!r} is not supported by the TensorRT ONNX parser"
    added_in = TENSORRT_OPS_ADDED_IN.get(node.op_type)
    if added_in is not None and trt_version < added_in:
        return f"operator {node.op_type!r} is only supported from TensorRT {added_in[0]}.{added_in[1]}"
    return None


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            yield attribute.g
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            yield from attribute.graphs


def _check_nodes(
    nodes: Sequence[onnx.NodeProto],
    scope: GraphScope,
    trt_version: tuple[int, int],
    local_functions: frozenset[tuple[str, str]],
    require_constant_conv_weights: bool,
) -> list[SupportIssue]:
    issues: list[SupportIssue] = []
    for index, node in enumerate(nodes):
        label, op = node_label(node, index), op_label(node)
        op_problem = _op_problem(node, trt_version, local_functions)
        if op_problem is not None:
            issues.append(SupportIssue(label, op, op_problem))
        elif node.domain in DEFAULT_DOMAINS:
            check = NODE_CHECKS.get(node.op_type)
            problems = check(node, CheckContext(scope, trt_version, require_constant_conv_weights)) if check else []
            issues.extend(SupportIssue(label, op, problem) for problem in problems)
        for subgraph in _subgraphs(node):
            issues.extend(_check_graph(subgraph, scope, trt_version, local_functions, require_constant_conv_weights))
    return issues


def _check_value_types(
    values: Iterable[onnx.ValueInfoProto], kind: str, trt_version: tuple[int, int]
) -> list[SupportIssue]:
    supported = supported_dtypes(trt_version)
    issues = []
    for value in values:
        if value.type.HasField("tensor_type"):
            dtype = value.type.tensor_type.elem_type
            if dtype and dtype not in supported:
                issues.append(SupportIssue("", "", f"{kind} {value.name!r} has unsupported type {dtype_name(dtype)}"))
    return issues


def _check_initializer_types(
    initializers: Iterable[onnx.TensorProto], trt_version: tuple[int, int]
) -> list[SupportIssue]:
    supported = supported_dtypes(trt_version)
    return [
        SupportIssue("", "", f"initializer {t.name!r} has unsupported type {dtype_name(t.data_type)}")
        for t in initializers
        if t.data_type not in supported
    ]


def _check_graph(
    graph: onnx.GraphProto,
    parent: GraphScope,
    trt_version: tuple[int, int],
    local_functions: frozenset[tuple[str, str]],
    require_constant_conv_weights: bool,
) -> list[SupportIssue]:
    scope = GraphScope(parent.base_dir, parent)
    scope.add_graph(graph.initializer, graph.node)
    issues = _check_initializer_types(graph.initializer, trt_version)
    issues += _check_nodes(graph.node, scope, trt_version, local_functions, require_constant_conv_weights)
    return issues


def _check_opset(model: onnx.ModelProto, trt_version: tuple[int, int]) -> list[SupportIssue]:
    low, high = tensorrt_opset_range(trt_version)
    versions = [entry.version for entry in model.opset_import if entry.domain in DEFAULT_DOMAINS]
    if not versions:
        return [SupportIssue("", "", "the model imports no default-domain (ai.onnx) opset")]
    version = max(versions)
    if not low <= version <= high:
        target = f"{trt_version[0]}.{trt_version[1]}"
        return [SupportIssue("", "", f"opset {version} is outside TensorRT {target}'s supported range {low}..{high}")]
    return []


def _load(model: onnx.ModelProto | str | os.PathLike) -> tuple[onnx.ModelProto, str | None]:
    """(model without external weights, folder of its external data or None for an in-memory model)."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    path = Path(model)
    return onnx.load(str(path), load_external_data=False), str(path.parent)


def check_tensorrt_support(
    model: onnx.ModelProto | str | os.PathLike,
    *,
    trt_version: tuple[int, int] = BASELINE_TRT_VERSION,
    require_constant_conv_weights: bool = True,
) -> list[SupportIssue]:
    """Every reason TensorRT's ONNX parser (``trt_version``, default 10.0) would reject ``model``; [] if none.

    Checks operator support (default domain only: ``com.microsoft`` and other custom-domain nodes are reported;
    model-local functions are checked through their bodies), the default-domain opset range, element types of
    initializers, graph inputs/outputs and Casts, and the static restrictions of the operator table (see
    :data:`TENSORRT_ONNX_OPS`): Q/DQ zero points 0 and INT8/FP8/INT4 types, Resize modes, constant ``axes`` of
    Reduce*/Squeeze/Unsqueeze (and Slice/Pad before 10.3/10.4), Einsum without ellipsis/diagonal (before 10.12),
    TopK ``sorted``/``K``, pooling rank and dilations, LayerNormalization single output, etc.
    ``require_constant_conv_weights`` adds the project rule that Conv/ConvTranspose weights are initializers
    (or a DequantizeLinear/Cast of one). Subgraphs (If/Loop/Scan bodies) are checked too.
    """
    if tuple(trt_version) < BASELINE_TRT_VERSION:
        raise ValueError(f"the operator table covers TensorRT >= 10.0, not {trt_version}")
    version = (int(trt_version[0]), int(trt_version[1]))
    proto, base_dir = _load(model)
    graph = proto.graph
    local_functions = frozenset((f.domain, f.name) for f in proto.functions)
    root = GraphScope(base_dir)
    issues = _check_opset(proto, version)
    issues += _check_value_types(graph.input, "graph input", version)
    issues += _check_value_types(graph.output, "graph output", version)
    issues += _check_graph(graph, root, version, local_functions, require_constant_conv_weights)
    for function in proto.functions:
        scope = GraphScope(base_dir, root)
        scope.add_graph((), function.node)
        issues += _check_nodes(function.node, scope, version, local_functions, require_constant_conv_weights)
    return issues


def format_issues(issues: Sequence[SupportIssue], limit: int = MAX_LISTED_ISSUES) -> str:
    """One issue per line, the first ``limit`` of them, then how many were left out."""
    lines = [f"  - {issue}" for issue in issues[:limit]]
    if len(issues) > limit:
        lines.append(f"  ... and {len(issues) - limit} more")
    return "\n".join(lines)


def assert_tensorrt_supported(model: onnx.ModelProto | str | os.PathLike, **options: object) -> None:
    """Raise ``ValueError`` listing the issues (first :data:`MAX_LISTED_ISSUES`) when TensorRT cannot parse ``model``.

    ``options`` are passed to :func:`check_tensorrt_support` (``trt_version``, ``require_constant_conv_weights``).
    """
    issues = check_tensorrt_support(model, **options)  # type: ignore[arg-type]
    if issues:
        name = model if isinstance(model, (str, os.PathLike)) else (model.graph.name or "model")
        raise ValueError(
            f"{name}: {len(issues)} TensorRT ONNX-parser issue(s):\n{format_issues(issues)}"
        )

