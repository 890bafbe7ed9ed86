"""TensorRT readiness: ONNX-parser support check, build planning, engine inspection (CPU) and real builds (GPU)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from extras import require_export

pytestmark = require_export()  # torch/onnx/diffusers: skipped on a base install

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from mmgen_edge.export.tensorrt_build import (
    BuildPlan,
    Precision,
    ShapeProfile,
    build_engine,
    check_layer_precisions,
    parse_engine_information,
    plan_build,
    tensorrt_capabilities,
    validate_profiles,
)
from mmgen_edge.export.tensorrt_op_table import TENSORRT_ONNX_OPS
from mmgen_edge.export.tensorrt_support import (
    MAX_LISTED_ISSUES,
    assert_tensorrt_supported,
    check_tensorrt_support,
)
from trt_fakes import (
    FakeClass,
    FakeEnum,
    FakeModule,
    FakeNotImplemented,
    FakeObject,
    Surface,
    called,
    enums,
    load_surfaces,
)

OPSET = 17
SPATIAL = 8
CHANNELS = 8
BATCH_PROFILE = ShapeProfile("x", (1, 3, SPATIAL, SPATIAL), (2, 3, SPATIAL, SPATIAL), (4, 3, SPATIAL, SPATIAL))

#: Operators seen in our exported fp32 graphs (denoiser, conditioning, VAE) and their fp16 / Q/DQ variants.
OUR_OPS = (
    "Shape ConstantOfShape Concat Cast Constant Unsqueeze Mul Cos Sin MatMul Add Sigmoid Flatten Gemm Gather Conv "
    "Slice Reshape Transpose Div LayerNormalization Split Squeeze Softmax Tanh Sub Expand Tile InstanceNormalization "
    "Resize Pad Sqrt Pow ReduceMean Erf QuantizeLinear DequantizeLinear"
).split()


# --------------------------------------------------------------------------------------------------- helpers


class TinyBlock(nn.Module):
    """Conv2d -> tokens -> LayerNorm -> softmax attention -> GELU(tanh) MLP -> nearest upsample -> mean."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, CHANNELS, 3, padding=1)
        self.norm = nn.LayerNorm(CHANNELS)
        self.qkv = nn.Linear(CHANNELS, 3 * CHANNELS)
        self.mlp = nn.Linear(CHANNELS, CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        n, c, height, width = h.shape
        tokens = self.norm(h.flatten(2).transpose(1, 2))
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-1, -2) / c**0.5, dim=-1)
        tokens = tokens + F.gelu(self.mlp(attention @ v), approximate="tanh")
        image = tokens.transpose(1, 2).reshape(n, c, height, width)
        return F.interpolate(image, scale_factor=2, mode="nearest").mean(dim=(2, 3))


@pytest.fixture(scope="module")
def tiny_onnx() -> onnx.ModelProto:
    """TinyBlock exported by the TorchScript exporter, opset 17, dynamic batch."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.onnx.export(
        TinyBlock().eval(),
        (torch.randn(1, 3, SPATIAL, SPATIAL),),
        buffer,
        dynamo=False,
        opset_version=OPSET,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    return onnx.load_from_string(buffer.getvalue())


def _value(name: str, dtype: int = TensorProto.FLOAT, shape: tuple | None = (1, 4)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: tuple[onnx.TensorProto, ...] = (),
    opset: int = OPSET,
    extra_opsets: tuple[tuple[str, int], ...] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "crafted", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets)


def _problems(model: onnx.ModelProto, **options: object) -> str:
    return "\n".join(str(issue) for issue in check_tensorrt_support(model, **options))


def _int8(name: str, values: list[int] | int) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.int8), name)


def _float(name: str, values: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def _qdq_model(zero_point: onnx.TensorProto | None) -> onnx.ModelProto:
    """x -> QuantizeLinear -> DequantizeLinear -> y, with the given zero point (or none)."""
    qin = ["x", "scale"] + ([zero_point.name] if zero_point is not None else [])
    initializers = (_float("scale", 0.1),) + ((zero_point,) if zero_point is not None else ())
    nodes = [
        helper.make_node("QuantizeLinear", qin, ["q"], name="quant"),
        helper.make_node("DequantizeLinear", ["q", "scale"] + qin[2:], ["y"], name="dequant"),
    ]
    return _model(nodes, [_value("x")], [_value("y")], initializers)


def _conv_model(weight_is_input: bool) -> onnx.ModelProto:
    weight = _value("w", shape=(2, 1, 3, 3))
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    initializers = () if weight_is_input else (_float("w", np.ones((2, 1, 3, 3))),)
    inputs = [_value("x", shape=(1, 1, 4, 4))] + ([weight] if weight_is_input else [])
    return _model(nodes, inputs, [_value("y", shape=(1, 2, 4, 4))], initializers)


# ------------------------------------------------------------------------------------ check_tensorrt_support


def test_operators_of_our_graphs_are_in_the_table() -> None:
    assert [op for op in OUR_OPS if op not in TENSORRT_ONNX_OPS] == []
    assert "Unique" not in TENSORRT_ONNX_OPS and "NonMaxSuppression" in TENSORRT_ONNX_OPS
    assert TENSORRT_ONNX_OPS["Squeeze"] and TENSORRT_ONNX_OPS["MatMul"] == ""


def test_torch_export_is_supported(tiny_onnx: onnx.ModelProto) -> None:
    ops = {node.op_type for node in tiny_onnx.graph.node}
    assert {"Conv", "LayerNormalization", "Softmax", "Tanh", "Resize", "MatMul"} <= ops
    assert check_tensorrt_support(tiny_onnx) == []
    assert_tensorrt_supported(tiny_onnx)


def test_checks_a_path_without_reading_the_weights(tiny_onnx: onnx.ModelProto, tmp_path: Path) -> None:
    path, model = tmp_path / "tiny.onnx", onnx.ModelProto()
    model.CopyFrom(tiny_onnx)  # saving with external data rewrites the proto in place
    onnx.save_model(model, str(path), save_as_external_data=True, location="tiny.data", size_threshold=0)
    (tmp_path / "tiny.data").unlink()  # the check must not need the weights
    assert check_tensorrt_support(path) == []
    assert check_tensorrt_support(str(path)) == []


def test_fp16_converted_graph_is_supported(tiny_onnx: onnx.ModelProto) -> None:
    float16 = pytest.importorskip("onnxruntime.transformers.float16")
    converted = float16.convert_float_to_float16(
        tiny_onnx, keep_io_types=True, op_block_list=["LayerNormalization", "Softmax"]
    )
    assert any(node.op_type == "Cast" for node in converted.graph.node)
    assert check_tensorrt_support(converted) == []


def test_onnxruntime_qdq_quantization(tiny_onnx: onnx.ModelProto, tmp_path: Path) -> None:
    """Symmetric QInt8 without bias quantization passes; onnxruntime's defaults (QUInt8, int32 bias) do not."""
    quantization = pytest.importorskip("onnxruntime.quantization")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"x": rng.standard_normal((1, 3, SPATIAL, SPATIAL), dtype=np.float32)}] * 2)

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    source, good, default = tmp_path / "fp32.onnx", tmp_path / "int8.onnx", tmp_path / "default.onnx"
    onnx.save(tiny_onnx, str(source))
    quantization.quantize_static(
        str(source), str(good), Reader(), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
        activation_type=quantization.QuantType.QInt8, weight_type=quantization.QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    quantization.quantize_static(str(source), str(default), Reader(), quant_format=quantization.QuantFormat.QDQ)
    assert any(node.op_type == "DequantizeLinear" for node in onnx.load(str(good)).graph.node)
    assert check_tensorrt_support(good) == []
    problems = "\n".join(map(str, check_tensorrt_support(default)))
    assert "must be 0" in problems
    assert "INT32" in problems and "QuantizeBias" in problems


def test_unsupported_operator() -> None:
    model = _model([helper.make_node("Unique", ["x"], ["y"], name="uniq")], [_value("x")], [_value("y")])
    issues = check_tensorrt_support(model)
    assert len(issues) == 1
    assert issues[0].node == "uniq" and issues[0].op_type == "Unique"
    assert "'Unique' is not supported" in issues[0].problem


def test_custom_domain_operator() -> None:
    node = helper.make_node("FusedMatMul", ["a", "b"], ["y"], name="fused", domain="com.microsoft", alpha=1.0)
    model = _model([node], [_value("a"), _value("b", shape=(4, 4))], [_value("y")],
                   extra_opsets=(("com.microsoft", 1),))
    issues = check_tensorrt_support(model)
    assert [issue.op_type for issue in issues] == ["com.microsoft::FusedMatMul"]
    assert "'com.microsoft'" in issues[0].problem


def test_local_function_is_checked_through_its_body() -> None:
    body = [helper.make_node("Unique", ["a"], ["b"], name="inner")]
    function = helper.make_function("local", "Wrapper", ["a"], ["b"], body, [helper.make_opsetid("", OPSET)])
    model = _model([helper.make_node("Wrapper", ["x"], ["y"], domain="local", name="call")], [_value("x")],
                   [_value("y")], extra_opsets=(("local", 1),))
    model.functions.append(function)
    issues = check_tensorrt_support(model)
    assert [(issue.node, issue.op_type) for issue in issues] == [("inner", "Unique")]


def test_quantize_zero_point_must_be_zero() -> None:
    assert check_tensorrt_support(_qdq_model(_int8("zp", 0))) == []
    problems = _problems(_qdq_model(_int8("zp", 3)))
    assert "zero point 'zp' must be 0" in problems
    assert "QuantizeLinear node 'quant'" in problems and "DequantizeLinear node 'dequant'" in problems


def test_quantize_types() -> None:
    uint8 = _problems(_qdq_model(numpy_helper.from_array(np.zeros((), np.uint8), "zp")))
    assert "quantized type UINT8 is not supported" in uint8 and "QInt8" in uint8
    assert "UINT8" in _problems(_qdq_model(None))  # QuantizeLinear without zero point outputs uint8


def test_per_channel_weight_dequantize_is_supported() -> None:
    weight = _int8("w_q", np.ones((2, 1, 3, 3), dtype=np.int8))
    initializers = (weight, _float("w_scale", [0.1, 0.2]), _int8("w_zp", [0, 0]))
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=0),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1]),
    ]
    model = _model(nodes, [_value("x", shape=(1, 1, 4, 4))], [_value("y", shape=(1, 2, 4, 4))], initializers)
    assert check_tensorrt_support(model) == []


def test_conv_weight_must_be_an_initializer() -> None:
    assert check_tensorrt_support(_conv_model(weight_is_input=False)) == []
    issues = check_tensorrt_support(_conv_model(weight_is_input=True))
    assert [(issue.node, issue.op_type) for issue in issues] == [("conv", "Conv")]
    assert "weight 'w' is not an initializer" in issues[0].problem
    assert check_tensorrt_support(_conv_model(weight_is_input=True), require_constant_conv_weights=False) == []


@pytest.mark.parametrize("opset", [8, 21])
def test_opset_out_of_range(opset: int) -> None:
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_value("x")], [_value("y")], opset=opset)
    problems = _problems(model)
    assert f"opset {opset} is outside TensorRT 10.0's supported range 9..20" in problems
    with pytest.raises(ValueError, match="outside"):
        assert_tensorrt_supported(model)


def test_newer_tensorrt_relaxes_opset_and_operators() -> None:
    relu = _model([helper.make_node("Relu", ["x"], ["y"])], [_value("x")], [_value("y")], opset=21)
    assert check_tensorrt_support(relu, trt_version=(10, 15)) == []
    attention = _model([helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")],
                       [_value(n, shape=(1, 2, 4, 8)) for n in "qkv"], [_value("y", shape=(1, 2, 4, 8))], opset=23)
    assert "only supported from TensorRT 10.14" in _problems(attention, trt_version=(10, 0))
    assert check_tensorrt_support(attention, trt_version=(10, 15)) == []
    with pytest.raises(ValueError, match="TensorRT >= 10.0"):
        check_tensorrt_support(relu, trt_version=(8, 6))


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, None),
        ({"mode": "linear", "coordinate_transformation_mode": "half_pixel"}, None),
        ({"mode": "cubic"}, "mode 'cubic' is not supported"),
        ({"coordinate_transformation_mode": "tf_crop_and_resize"}, "coordinate_transformation_mode"),
        ({"antialias": 1, "mode": "linear"}, "antialiasing"),
        ({"keep_aspect_ratio_policy": "not_larger"}, "keep_aspect_ratio_policy"),
    ],
)
def test_resize_modes(attributes: dict, expected: str | None) -> None:
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", **attributes)
    model = _model([node], [_value("x", shape=(1, 1, 2, 2))], [_value("y", shape=(1, 1, 4, 4))],
                   (_float("scales", [1, 1, 2, 2]),), opset=19)
    problems = _problems(model)
    assert problems == "" if expected is None else expected in problems


def test_axes_must_be_constant() -> None:
    axes_input = _value("axes", TensorProto.INT64, (1,))
    dynamic = _model([helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsq")], [_value("x"), axes_input],
                     [_value("y", shape=(1, 1, 4))])
    assert "`axes` 'axes' must be an initializer or Constant" in _problems(dynamic)
    constant = helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([0], np.int64)))
    static = _model([constant, helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], [_value("x")],
                    [_value("y", shape=(1, 1, 4))])
    assert check_tensorrt_support(static) == []


def test_slice_tensor_axes_need_tensorrt_10_3() -> None:
    inputs = [_value("x"), _value("axes", TensorProto.INT64, (1,))]
    initializers = (numpy_helper.from_array(np.array([0], np.int64), "starts"),
                    numpy_helper.from_array(np.array([1], np.int64), "ends"))
    model = _model([helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])], inputs, [_value("y")],
                   initializers)
    assert "before TensorRT 10.3" in _problems(model)
    assert check_tensorrt_support(model, trt_version=(10, 3)) == []


def test_einsum_ellipsis_and_diagonal() -> None:
    def einsum(equation: str) -> onnx.ModelProto:
        node = helper.make_node("Einsum", ["a", "b"], ["y"], equation=equation)
        return _model([node], [_value("a", shape=(2, 4, 4)), _value("b", shape=(2, 4, 4))], [_value("y")])

    assert check_tensorrt_support(einsum("bij,bjk->bik")) == []
    assert "ellipsis" in _problems(einsum("...ij,...jk->...ik"))
    assert "diagonal" in _problems(einsum("bii,bjk->bik"))
    assert check_tensorrt_support(einsum("...ij,...jk->...ik"), trt_version=(10, 12)) == []


def test_misc_static_restrictions() -> None:
    k = numpy_helper.from_array(np.array([4000], np.int64), "k")
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="topk", sorted=0),
        helper.make_node("LayerNormalization", ["x", "g"], ["ln", "mean"], name="ln"),
        helper.make_node("MaxPool", ["img"], ["pooled"], name="pool1d", kernel_shape=[2]),
        helper.make_node("Cast", ["x"], ["text"], name="to_string", to=TensorProto.STRING),
    ]
    outputs = [_value(n) for n in ("values", "ln", "pooled")] + [_value("indices", TensorProto.INT64)]
    model = _model(nodes, [_value("x"), _value("img", shape=(1, 1, 4))], outputs, (k, _float("g", np.ones(4))))
    problems = _problems(model)
    for expected in ("`sorted` must be 1", "less than 3840", "only the first output", "2D or 3D pooling",
                     "cast to STRING"):
        assert expected in problems


def test_unsupported_initializer_type() -> None:
    weights = numpy_helper.from_array(np.ones(4, np.uint16), "u16")
    model = _model([helper.make_node("Identity", ["u16"], ["y"])], [], [_value("y", TensorProto.UINT16, (4,))],
                   (weights,))
    problems = _problems(model)
    assert "initializer 'u16' has unsupported type UINT16" in problems
    assert "graph output 'y' has unsupported type UINT16" in problems


def test_subgraphs_are_checked() -> None:
    then_branch = helper.make_graph([helper.make_node("Unique", ["x"], ["t"], name="in_then")], "then", [],
                                    [_value("t")])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [_value("e")])
    node = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch)
    model = _model([node], [_value("cond", TensorProto.BOOL, ()), _value("x")], [_value("y")])
    assert [(issue.node, issue.op_type) for issue in check_tensorrt_support(model)] == [("in_then", "Unique")]


def test_assert_lists_the_first_issues() -> None:
    count = MAX_LISTED_ISSUES + 5
    nodes = [helper.make_node("Unique", ["x"], [f"y{i}"], name=f"u{i}") for i in range(count)]
    model = _model(nodes, [_value("x")], [_value(f"y{i}") for i in range(count)])
    with pytest.raises(ValueError) as raised:
        assert_tensorrt_supported(model)
    message = str(raised.value)
    assert f"{count} TensorRT ONNX-parser issue(s)" in message
    assert "'u0'" in message and f"'u{MAX_LISTED_ISSUES}'" not in message
    assert "... and 5 more" in message


# --------------------------------------------------------------------------------------- build planning


class _Flags:
    """Stand-in for a TensorRT enum: attributes for the given member names."""

    def __init__(self, *names: str) -> None:
        for value, name in enumerate(names):
            setattr(self, name, value)


def _fake_trt(version: str, builder_flags: tuple[str, ...], network_flags: tuple[str, ...]) -> SimpleNamespace:
    return SimpleNamespace(
        __version__=version, BuilderFlag=_Flags(*builder_flags), NetworkDefinitionCreationFlag=_Flags(*network_flags)
    )


def _surface_trt(version: str) -> FakeModule:
    """The flag enums of a release with a recorded surface (tests/data/trt_surface)."""
    (surface,) = [s for s in load_surfaces() if s.version == version]
    return FakeModule(surface, **enums(surface, "BuilderFlag", "NetworkDefinitionCreationFlag"))


#: TensorRT 8.6 has no recorded surface (its bindings wheel predates the split packages): flags from its NvInfer.h.
TRT_8_6 = _fake_trt("8.6.1.6", ("FP16", "INT8", "TF32"), ("EXPLICIT_BATCH", "EXPLICIT_PRECISION"))
TRT_10, TRT_10_LATEST, TRT_11 = (_surface_trt(v) for v in ("10.3.0", "10.16.1.11", "11.4.0.106"))
CAPS_8_6, CAPS_10, CAPS_11 = (tensorrt_capabilities(t) for t in (TRT_8_6, TRT_10, TRT_11))


def test_tensorrt_capabilities() -> None:
    assert CAPS_8_6 == {"has_fp16_flag": True, "has_int8_flag": True, "has_strongly_typed": False,
                        "always_strongly_typed": False, "needs_explicit_batch": True}
    assert CAPS_10 == {"has_fp16_flag": True, "has_int8_flag": True, "has_strongly_typed": True,
                       "always_strongly_typed": False, "needs_explicit_batch": False}
    assert tensorrt_capabilities(TRT_10_LATEST) == CAPS_10
    assert CAPS_11 == {"has_fp16_flag": False, "has_int8_flag": False, "has_strongly_typed": True,
                       "always_strongly_typed": True, "needs_explicit_batch": False}


STRONG_10 = BuildPlan(strongly_typed=True, builder_flags=(), network_flags=("STRONGLY_TYPED",))
STRONG_11 = BuildPlan(strongly_typed=True, builder_flags=())


@pytest.mark.parametrize(
    ("caps", "precision", "annotated", "expected"),
    [
        (CAPS_11, Precision.FP16, True, STRONG_11),
        (CAPS_11, Precision.INT8, True, STRONG_11),
        (CAPS_11, Precision.FP32, False, STRONG_11),
        (CAPS_10, Precision.FP16, False, BuildPlan(False, ("FP16",))),
        (CAPS_10, Precision.FP16, True, STRONG_10),
        (CAPS_10, Precision.INT8, True, STRONG_10),
        (CAPS_10, Precision.FP32, False, STRONG_10),
        (CAPS_8_6, Precision.FP16, False, BuildPlan(False, ("FP16",), ("EXPLICIT_BATCH",))),
        (CAPS_8_6, Precision.FP16, True, BuildPlan(False, ("FP16",), ("EXPLICIT_BATCH",))),
        (CAPS_8_6, Precision.INT8, True, BuildPlan(False, ("INT8", "FP16"), ("EXPLICIT_BATCH",))),
        (CAPS_8_6, Precision.FP32, False, BuildPlan(False, (), ("EXPLICIT_BATCH",))),
    ],
)
def test_plan_build(caps: dict, precision: Precision, annotated: bool, expected: BuildPlan) -> None:
    assert plan_build(precision, caps, annotated) == expected
    assert "INT8" not in expected.builder_flags or not expected.strongly_typed


@pytest.mark.parametrize(
    ("caps", "precision", "annotated", "message"),
    [
        (CAPS_11, Precision.FP16, False, "no FP16/INT8 builder flags"),
        (CAPS_11, Precision.INT8, False, "calibrators are not supported"),
        (CAPS_10, Precision.INT8, False, "calibrators are not supported"),
        (CAPS_8_6, Precision.INT8, False, "calibrators are not supported"),
        (CAPS_10, Precision.FP32, True, "precision-annotated"),
        ({"has_fp16_flag": True}, Precision.FP16, False, "capabilities lack"),
    ],
)
def test_plan_build_refuses(caps: dict, precision: Precision, annotated: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_build(precision, caps, annotated)


def test_plan_build_accepts_strings() -> None:
    assert plan_build("fp16", CAPS_10, False) == BuildPlan(False, ("FP16",))  # type: ignore[arg-type]


def test_shape_profile_and_validation() -> None:
    profile = ShapeProfile("x", [1, 3, 8, 8], (2, 3, 8, 8), (4, 3, 8, 8))  # type: ignore[arg-type]
    assert profile.min == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeProfile("x", (4, 3), (2, 3), (8, 3))
    with pytest.raises(ValueError, match="ranks differ"):
        ShapeProfile("x", (1,), (1, 2), (1, 2))
    validate_profiles({"x": (-1, 3, 8, 8), "scale": (1,)}, [profile])
    with pytest.raises(ValueError) as raised:
        validate_profiles({"x": (-1, 3, 8, 8), "t": (-1, 4)}, [ShapeProfile("x", (1, 3, 8, 8), (2, 3, 16, 16),
                                                                          (4, 3, 16, 16)),
                                                             ShapeProfile("z", (1,), (1,), (1,))])
    message = str(raised.value)
    assert "'t' has dynamic shape" in message and "unknown input 'z'" in message and "axis 2 is static" in message


# ------------------------------------------------------------------------------------- engine inspection

#: get_engine_information(JSON) of a small mixed-precision engine, TensorRT 10 style (DETAILED verbosity):
#: formats as printed by the inspector (see NVIDIA/TensorRT trt-engine-explorer's format table), a Myelin/kgen
#: layer with bare type names, a layer of a dynamic-shape engine without context ("N/A due to dynamic shapes").
ENGINE_INFORMATION_10 = {
    "Layers": [
        {
            "Name": "Reformatting CopyNode for Input Tensor 0 to /conv/Conv + /act/Relu",
            "LayerType": "Reformat",
            "Inputs": [{"Name": "x", "Location": "Device", "Dimensions": [2, 3, 32, 32],
                        "Format/Datatype": "Row major linear FP32 format (kLINEAR)"}],
            "Outputs": [{"Name": "Reformatted Input Tensor 0 to /conv/Conv + /act/Relu", "Location": "Device",
                         "Dimensions": [2, 3, 32, 32], "Format/Datatype": "Row major linear FP16 format (kLINEAR)"}],
            "ParameterType": "Reformat",
            "Origin": "REFORMAT",
            "TacticValue": "0x0000000000000000",
            "StreamId": 0,
            "Metadata": "",
        },
        {
            "Name": "/conv/Conv + /act/Relu",
            "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "Reformatted Input Tensor 0 to /conv/Conv + /act/Relu", "Location": "Device",
                        "Dimensions": [2, 3, 32, 32], "Format/Datatype": "Row major linear FP16 format (kLINEAR)"}],
            "Outputs": [{"Name": "/act/Relu_output_0", "Location": "Device", "Dimensions": [2, 64, 32, 32],
                         "Format/Datatype": "Channel major FP16 format where channel % 8 == 0 (kHWC8)"}],
            "ParameterType": "Convolution",
            "Kernel": [3, 3],
            "PaddingMode": "kEXPLICIT_ROUND_DOWN",
            "PrePadding": [1, 1],
            "PostPadding": [1, 1],
            "Stride": [1, 1],
            "Dilation": [1, 1],
            "OutMaps": 64,
            "Groups": 1,
            "Weights": {"Type": "Half", "Count": 1728},
            "Bias": {"Type": "Half", "Count": 64},
            "HasBias": 1,
            "HasReLU": 1,
            "Activation": "RELU",
            "TacticName": "sm80_xmma_fprop_implicit_gemm_f16f16_f16f16_f16_nhwckrsc_nhwc_tilesize64x64x64_stage3",
            "TacticValue": "0x5c2a9d1ea6a5f0b4",
            "StreamId": 0,
            "Metadata": "[ONNX Layer: /conv/Conv]\u001e[ONNX Layer: /act/Relu]",
        },
        {
            "Name": "/blocks.0/attn/MatMul_myl0_3",
            "LayerType": "kgen",
            "Inputs": [{"Name": "__myln_k_arg__bb1_2", "Dimensions": [2, 1024, 64], "Format/Datatype": "Half"}],
            "Outputs": [{"Name": "__myln_k_arg__bb1_3", "Dimensions": [2, 1024, 64], "Format/Datatype": "Half"}],
            "TacticName": "__myl_Fc_0xa0b6cc26d87b2ef7f1e4e6f4a8f8d2c1",
            "StreamId": 0,
            "Metadata": "",
        },
        {
            "Name": "/blocks.0/mlp/fc1/input_QuantizeLinear",
            "LayerType": "Scale",
            "Inputs": [{"Name": "/blocks.0/norm2/Add_1_output_0", "Dimensions": [2, 1024, 64],
                        "Format/Datatype": "Row major linear FP16 format (kLINEAR)"}],
            "Outputs": [{"Name": "/blocks.0/mlp/fc1/input_QuantizeLinear_output_0", "Dimensions": [2, 1024, 64],
                         "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format (kCHW32)"}],
            "ParameterType": "Scale",
            "Mode": "UNIFORM",
            "TacticValue": "0x0000000000000000",
        },
        {
            "Name": "/head/Conv",
            "LayerType": "CaskConvolution",
            "Inputs": [{"Name": "h", "Dimensions": [-1, 64, 32, 32], "Format/Datatype": "N/A due to dynamic shapes"}],
            "Outputs": [{"Name": "y_half", "Dimensions": [-1, 16, 32, 32],
                         "Format/Datatype": "N/A due to dynamic shapes"}],
            "Weights": {"Type": "Half", "Count": 9216},
            "TacticValue": "0x0000000000000001",
        },
        {
            "Name": "(Unnamed Layer* 12) [Shuffle]",
            "LayerType": "NoOp",
            "Inputs": [{"Name": "y_half", "Dimensions": [-1, 16, 32, 32],
                        "Format/Datatype": "N/A due to dynamic shapes"}],
            "Outputs": [{"Name": "y_shuffled", "Dimensions": [-1, 16, 32, 32],
                         "Format/Datatype": "N/A due to dynamic shapes"}],
            "TacticValue": "0x0000000000000000",
        },
        {
            "Name": "Reformatting CopyNode for Output Tensor 0 to /head/Conv",
            "LayerType": "Reformat",
            "Inputs": [{"Name": "y_shuffled", "Dimensions": [2, 16, 32, 32],
                        "Format/Datatype": "Row major linear FP16 format (kLINEAR)"}],
            "Outputs": [{"Name": "y", "Dimensions": [2, 16, 32, 32],
                         "Format/Datatype": "Row major linear FP32 format (kLINEAR)"}],
            "ParameterType": "Reformat",
            "Origin": "REFORMAT",
            "TacticValue": "0x0000000000000000",
        },
    ],
    "Bindings": ["x", "y"],
}


def test_parse_engine_information() -> None:
    counts = parse_engine_information(json.dumps(ENGINE_INFORMATION_10, indent=2))
    assert counts == {"Half": 4, "Int8": 1, "Float": 1, "Unknown": 1}


def test_parse_engine_information_tensorrt_11_schema() -> None:
    info = {
        "Layers": [
            {"Name": "gemm", "LayerType": "gemm", "Inputs": [], "Outputs": [{"Name": "y", "Format/Datatype": "Float"}]},
        ],
        "I/O Tensors": [
            {"Name": "x", "IOMode": "Input", "DataType": "Float", "Dimensions": [1, 4], "Location": "Device",
             "IsShapeInferenceIO": False},
        ],
    }
    assert parse_engine_information(json.dumps(info)) == {"Float": 1}


def test_parse_engine_information_needs_detailed_verbosity() -> None:
    with pytest.raises(ValueError, match="DETAILED"):
        parse_engine_information(json.dumps({"Layers": ["/conv/Conv + /act/Relu", "y"], "Bindings": ["x", "y"]}))
    with pytest.raises(ValueError, match="no 'Layers'"):
        parse_engine_information("{}")


def test_check_layer_precisions() -> None:
    check_layer_precisions({"Half": 200, "Float": 10}, Precision.FP16)
    check_layer_precisions({"Int8": 50, "Half": 100, "Float": 2}, Precision.INT8)
    check_layer_precisions({"Float": 12, "Int64": 2}, Precision.FP32)
    with pytest.raises(ValueError, match="fp16 was requested but no layer runs in Half"):
        check_layer_precisions({"Float": 120}, Precision.FP16)
    with pytest.raises(ValueError, match="no layer runs in Int8"):
        check_layer_precisions({"Half": 120, "Float": 3}, Precision.INT8)
    with pytest.raises(ValueError, match="unknown precision"):
        check_layer_precisions({"Unknown": 30}, Precision.FP16)
    with pytest.raises(ValueError, match="fp32 was requested but layers run in"):
        check_layer_precisions({"Float": 5, "Half": 1}, Precision.FP32)
    with pytest.raises(ValueError, match="no layers"):
        check_layer_precisions({}, Precision.FP32)


def test_build_engine_without_tensorrt_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'mmgen-edge\[tensorrt\]'"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", [], Precision.FP32)


# ------------------------------------- build_engine glue against fakes held to each release's real API surface


@pytest.fixture(params=load_surfaces(), ids=lambda surface: f"trt{surface.version}")
def surface(request: pytest.FixtureRequest) -> Surface:
    """The Python API of TensorRT 10.3 (JetPack 6), the latest 10.x and the latest 11.x, in turn."""
    return request.param


def _fake_tensorrt(surface: Surface, calls: list, engine_layers: list[dict], parse_ok: bool = True) -> FakeModule:
    """A ``tensorrt`` module of ``surface``'s release: the builder returns b"PLAN", the inspector ``engine_layers``.

    Every object is a :class:`FakeObject` of the real class, so a call the release lacks raises AttributeError.
    """
    info = json.dumps({"Layers": engine_layers, "Bindings": ["x", "y"]})

    def obj(cls: str, **members: object) -> FakeObject:
        return FakeObject(surface, cls, calls, **members)

    inspector = obj("EngineInspector", execution_context=None, get_engine_information=lambda fmt: info)
    context = obj("IExecutionContext", set_input_shape=lambda name, shape: True)
    engine = obj("ICudaEngine", create_execution_context=lambda: context, create_engine_inspector=lambda: inspector)
    cache = obj("ITimingCache", serialize=lambda: b"CACHE")
    config = obj(
        "IBuilderConfig", set_flag=lambda flag: None, profiling_verbosity=None, progress_monitor=None,
        set_memory_pool_limit=lambda pool, size: None, add_optimization_profile=lambda profile: 0,
        create_timing_cache=lambda data: cache, get_timing_cache=lambda: cache,
        set_timing_cache=lambda cache, ignore_mismatch: True,
    )  # fmt: skip
    network_input = obj("ITensor", name="x", shape=(-1, 3, SPATIAL, SPATIAL))
    network = obj("INetworkDefinition", num_inputs=1, get_input=lambda index: network_input)
    builder = obj(
        "Builder", create_network=lambda flags: network, create_builder_config=lambda: config,
        create_optimization_profile=lambda: obj("IOptimizationProfile", set_shape=lambda *shapes: None),
        build_serialized_network=lambda network, config: b"PLAN",
    )  # fmt: skip
    error = obj("ParserError", node=lambda: 3, node_name=lambda: "uniq", node_operator=lambda: "Unique",
                desc=lambda: "No importer registered for op: Unique")  # fmt: skip
    parser = obj("OnnxParser", parse_from_file=lambda path: parse_ok, get_error=lambda index: error,
                 num_errors=0 if parse_ok else 1)  # fmt: skip
    severity = FakeEnum(surface, "ILogger.Severity")
    trt = FakeModule(
        surface,
        **enums(surface, "BuilderFlag", "NetworkDefinitionCreationFlag", "ProfilingVerbosity", "MemoryPoolType",
                "LayerInformationFormat"),
        Logger=FakeClass(surface, "Logger", lambda level: obj("Logger"), calls, WARNING=severity.WARNING),
        Builder=FakeClass(surface, "Builder", lambda logger: builder, calls),
        OnnxParser=FakeClass(surface, "OnnxParser", lambda network, logger: parser, calls),
        Runtime=FakeClass(surface, "Runtime", lambda logger: obj("Runtime", deserialize_cuda_engine=lambda plan: engine),
                          calls),
        IProgressMonitor=FakeProgressMonitor,
    )  # fmt: skip
    trt._objects = {"context": context, "engine": engine, "config": config}  # for identity checks in the tests
    return trt


class FakeProgressMonitor:
    """Base class for ``trt.IProgressMonitor`` subclasses (the real one is a pybind11 trampoline class)."""

    def __init__(self) -> None:
        pass


def _layer(datatype: str) -> dict:
    return {"Name": f"layer_{datatype}", "LayerType": "kgen", "Outputs": [{"Name": "t", "Format/Datatype": datatype}]}


@pytest.fixture()
def fake_device(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmgen_edge.runtime import gpu

    monkeypatch.setattr(gpu, "current_device", lambda: ("Fake GPU", "8.7"))


def test_fakes_refuse_what_the_release_lacks(surface: Surface) -> None:
    """The fakes are held to the release: removed, misspelt and unimplemented names fail loudly."""
    trt = _fake_tensorrt(surface, [], [])
    config = FakeObject(surface, "IBuilderConfig", set_flag=lambda flag: None)
    context = FakeObject(surface, "IExecutionContext", execute_async_v3=lambda stream: True)
    assert context.execute_async_v3(0)
    with pytest.raises(AttributeError, match="execute_async_v4"):
        context.execute_async_v4(0)  # misspelt
    with pytest.raises(AttributeError, match="set_tensor_adress"):
        context.set_tensor_adress("x", 0)
    with pytest.raises(FakeNotImplemented, match="IExecutionContext.set_tensor_address exists"):
        context.set_tensor_address("x", 0)  # real, but this fake was not given it
    with pytest.raises(AttributeError, match="build_engine"):  # Builder.build_engine was removed in TensorRT 10
        FakeObject(surface, "Builder", build_engine=lambda network, config: None)
    with pytest.raises(AttributeError, match="no attribute 'Engine'"):
        trt.Engine  # noqa: B018
    if surface.major >= 11:  # weak typing and implicit quantization are gone
        for removed in ("FP16", "INT8"):
            with pytest.raises(AttributeError, match=f"'BuilderFlag' object has no attribute '{removed}'"):
                config.set_flag(getattr(trt.BuilderFlag, removed))
            assert not hasattr(trt.BuilderFlag, removed)
        with pytest.raises(AttributeError, match="IInt8Calibrator"):
            FakeModule(surface, IInt8Calibrator=object)
    else:
        config.set_flag(trt.BuilderFlag.FP16)
        assert trt.BuilderFlag.FP16 is not trt.BuilderFlag.INT8 and surface.has("IInt8Calibrator")


def test_build_engine_applies_the_plan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_device: None,
                                       surface: Surface) -> None:  # fmt: skip
    calls: list = []
    trt = _fake_tensorrt(surface, calls, [_layer("Half"), _layer("Float")])
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    engine_path, cache_path = tmp_path / "out" / "m.engine", tmp_path / "timing.cache"
    if surface.major >= 11:  # no FP16 flag: fp16 needs an fp16 graph, built strongly typed
        report = build_engine(tmp_path / "m.onnx", engine_path, [BATCH_PROFILE], Precision.FP16,
                              timing_cache_path=cache_path, workspace_bytes=1 << 30, graph_is_annotated=True)  # fmt: skip
        assert report.strongly_typed and called(calls, "IBuilderConfig.set_flag") == []
        assert called(calls, "Builder.create_network") == [((0,), {})]  # STRONGLY_TYPED is implied, not set
    else:  # a plain fp32 graph + fp16: weak typing and BuilderFlag.FP16
        report = build_engine(tmp_path / "m.onnx", engine_path, [BATCH_PROFILE], Precision.FP16,
                              timing_cache_path=cache_path, workspace_bytes=1 << 30)  # fmt: skip
        assert not report.strongly_typed
        assert called(calls, "IBuilderConfig.set_flag") == [((trt.BuilderFlag.FP16,), {})]
        assert called(calls, "Builder.create_network") == [((0,), {})]
    assert engine_path.read_bytes() == b"PLAN" and cache_path.read_bytes() == b"CACHE"
    assert report.layer_precisions == {"Half": 1, "Float": 1}
    assert (report.device_name, report.compute_capability, report.trt_version) == ("Fake GPU", "8.7", surface.version)
    assert called(calls, "Logger") == [((trt.Logger.WARNING,), {})]
    assert called(calls, "IBuilderConfig.profiling_verbosity=") == [((trt.ProfilingVerbosity.DETAILED,), {})]
    assert called(calls, "IOptimizationProfile.set_shape") == [
        (("x", BATCH_PROFILE.min, BATCH_PROFILE.opt, BATCH_PROFILE.max), {})
    ]
    assert called(calls, "IBuilderConfig.set_memory_pool_limit") == [((trt.MemoryPoolType.WORKSPACE, 1 << 30), {})]
    assert called(calls, "IBuilderConfig.set_timing_cache")[0][1] == {"ignore_mismatch": False}
    (monitor,) = [args[0] for args, _ in called(calls, "IBuilderConfig.progress_monitor=")]
    assert isinstance(monitor, FakeProgressMonitor) and monitor.step_complete("build", 1) is True
    assert called(calls, "IExecutionContext.set_input_shape") == [(("x", BATCH_PROFILE.opt), {})]
    (inspected,) = [args[0] for args, _ in called(calls, "EngineInspector.execution_context=")]
    assert inspected is trt._objects["context"]  # the inspector reads the context bound at the opt shapes
    assert called(calls, "EngineInspector.get_engine_information") == [((trt.LayerInformationFormat.JSON,), {})]
    assert called(calls, "OnnxParser.parse_from_file") == [((str(tmp_path / "m.onnx"),), {})]


def test_build_engine_strongly_typed_fp32_on_tensorrt_10(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          fake_device: None, surface: Surface) -> None:  # fmt: skip
    """A plain fp32 graph is built strongly typed where the flag exists (1 << NetworkDefinitionCreationFlag)."""
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(surface, calls, [_layer("Float")]))
    report = build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", [BATCH_PROFILE], Precision.FP32)
    assert report.strongly_typed and called(calls, "IBuilderConfig.set_flag") == []
    # NvInfer.h (TensorRT 10): kSTRONGLY_TYPED = 1; TensorRT 11 networks are always strongly typed (flags 0)
    assert called(calls, "Builder.create_network") == [((2 if surface.major == 10 else 0,), {})]


def test_build_engine_refuses_before_touching_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        fake_device: None, surface: Surface) -> None:  # fmt: skip
    """What the release cannot honour fails before any TensorRT call: int8 without Q/DQ (no calibrator, on any
    release), and on TensorRT 11 (no FP16 builder flag) fp16 of a plain fp32 graph."""
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(surface, calls, [_layer("Half")]))
    with pytest.raises(ValueError, match="calibrators are not supported"):
        build_engine(tmp_path / "m.onnx", tmp_path / "plain.engine", [BATCH_PROFILE], Precision.INT8)
    if surface.major >= 11:
        with pytest.raises(ValueError, match="no FP16/INT8 builder flags"):
            build_engine(tmp_path / "m.onnx", tmp_path / "plain.engine", [BATCH_PROFILE], Precision.FP16)
    assert calls == [] and not list(tmp_path.iterdir())


def test_build_engine_refuses_a_quietly_fp32_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     fake_device: None, surface: Surface) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(surface, [], [_layer("Float")] * 3))
    engine_path = tmp_path / "m.engine"
    with pytest.raises(ValueError, match="no layer runs in Half"):
        build_engine(tmp_path / "m.onnx", engine_path, [BATCH_PROFILE], Precision.FP16,
                     graph_is_annotated=surface.major >= 11)  # fmt: skip
    assert not engine_path.exists() and not list(tmp_path.iterdir())


def test_build_engine_reports_parser_errors_and_profiles(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          surface: Surface) -> None:  # fmt: skip
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(surface, [], [], parse_ok=False))
    with pytest.raises(ValueError, match="node 3 uniq Unique: No importer registered for op: Unique"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", [BATCH_PROFILE], Precision.FP32)
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(surface, [], []))
    with pytest.raises(ValueError, match="'x' has dynamic shape"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", [], Precision.FP32)


# ------------------------------------------------------------------------------------ GPU (TensorRT) tests


@pytest.fixture(scope="module")
def trt_runtime() -> tuple[object, object]:
    """(tensorrt, cuda runtime) modules, skipping unless TensorRT, cuda-python and a CUDA device are present."""
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'mmgen-edge[tensorrt]')")
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        cudart = pytest.importorskip("cuda.cudart", reason="cuda-python is not installed")
    err, count = cudart.cudaGetDeviceCount()
    if getattr(err, "value", err) != 0 or count == 0:
        pytest.skip("no CUDA device")
    return trt, cudart


def _cuda(result: tuple) -> object:
    err, *values = result
    assert getattr(err, "value", err) == 0, err
    return values[0] if len(values) == 1 else None


def _run_engine(trt: object, cudart: object, engine_path: Path, x: np.ndarray) -> np.ndarray:
    """Run a one-input/one-output engine with execute_async_v3 (tensor addresses, explicit stream)."""
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    (input_name,) = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    (output_name,) = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    assert context.set_input_shape(input_name, x.shape)
    out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(output_name)))
    output = np.empty(tuple(context.get_tensor_shape(output_name)), dtype=out_dtype)
    x = np.ascontiguousarray(x, dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(input_name))))
    stream = _cuda(cudart.cudaStreamCreate())
    x_device, y_device = _cuda(cudart.cudaMalloc(x.nbytes)), _cuda(cudart.cudaMalloc(output.nbytes))
    try:
        host_to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        device_to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _cuda(cudart.cudaMemcpyAsync(int(x_device), x.ctypes.data, x.nbytes, host_to_device, stream))
        assert context.set_tensor_address(input_name, int(x_device))
        assert context.set_tensor_address(output_name, int(y_device))
        assert context.execute_async_v3(int(stream))
        _cuda(cudart.cudaMemcpyAsync(output.ctypes.data, int(y_device), output.nbytes, device_to_host, stream))
        _cuda(cudart.cudaStreamSynchronize(stream))
    finally:
        _cuda(cudart.cudaFree(x_device))
        _cuda(cudart.cudaFree(y_device))
        _cuda(cudart.cudaStreamDestroy(stream))
    return output


def _reference(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]



@pytest.mark.tensorrt
def test_build_and_run_fp32_engine(trt_runtime: tuple, tiny_onnx: onnx.ModelProto, tmp_path: Path) -> None:
    trt, cudart = trt_runtime
    onnx_path, engine_path, cache_path = tmp_path / "tiny.onnx", tmp_path / "tiny.engine", tmp_path / "timing.cache"
    onnx.save(tiny_onnx, str(onnx_path))
    report = build_engine(onnx_path, engine_path, [BATCH_PROFILE], Precision.FP32, timing_cache_path=cache_path)
    assert report.trt_version == trt.__version__ and report.precision is Precision.FP32
    assert report.device_name and report.compute_capability.count(".") == 1
    assert report.layer_precisions.get("Float", 0) > 0 and report.build_seconds > 0
    assert cache_path.stat().st_size > 0 and not list(tmp_path.glob(".*.tmp*"))
    x = np.random.default_rng(0).standard_normal((3, 3, SPATIAL, SPATIAL), dtype=np.float32)
    np.testing.assert_allclose(_run_engine(trt, cudart, engine_path, x), _reference(tiny_onnx, x), atol=1e-3)
    build_engine(onnx_path, engine_path, [BATCH_PROFILE], Precision.FP32, timing_cache_path=cache_path)  # reuse


@pytest.mark.tensorrt
def test_build_fp16_engine_shows_half_layers(trt_runtime: tuple, tiny_onnx: onnx.ModelProto, tmp_path: Path) -> None:
    trt, cudart = trt_runtime
    caps = tensorrt_capabilities(trt)
    if caps["always_strongly_typed"]:
        float16 = pytest.importorskip("onnxruntime.transformers.float16")
        model, annotated = float16.convert_float_to_float16(tiny_onnx, keep_io_types=True), True
    else:
        model, annotated = tiny_onnx, False
    onnx_path, engine_path = tmp_path / "tiny16.onnx", tmp_path / "tiny16.engine"
    onnx.save(model, str(onnx_path))
    report = build_engine(onnx_path, engine_path, [BATCH_PROFILE], Precision.FP16, graph_is_annotated=annotated)
    assert report.layer_precisions.get("Half", 0) > 0
    x = np.random.default_rng(1).standard_normal((2, 3, SPATIAL, SPATIAL), dtype=np.float32)
    np.testing.assert_allclose(_run_engine(trt, cudart, engine_path, x), _reference(tiny_onnx, x), atol=5e-2)


@pytest.mark.tensorrt
def test_build_reports_parser_errors(trt_runtime: tuple, tmp_path: Path) -> None:
    model = _model([helper.make_node("Unique", ["x"], ["y"], name="uniq")], [_value("x")], [_value("y")])
    onnx_path = tmp_path / "unique.onnx"
    onnx.save(model, str(onnx_path))
    with pytest.raises(ValueError, match="could not parse"):
        build_engine(onnx_path, tmp_path / "unique.engine", [], Precision.FP32)
    assert not (tmp_path / "unique.engine").exists()
