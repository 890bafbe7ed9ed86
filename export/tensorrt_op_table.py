"""The TensorRT 10.x ONNX parser's operator-support table, as data, and its lookups by TensorRT version.

Transcribed from ``docs/operators.md`` of ``onnx/onnx-tensorrt`` (the 10.15 version: "supports operators in the
inclusive range of opset 9 to opset 24"; TensorRT 10.0 documented opset 9 to opset 20) and the 10.x
``docs/Changelog.md`` for what was added or lifted during 10.x. TensorRT 11 keeps this table as its baseline.
:mod:`.tensorrt_support` checks graphs against it; update this file, not the checker, when a new table appears.
"""

from __future__ import annotations

import onnx

__all__ = [
    "BASELINE_TRT_VERSION",
    "TENSORRT_ONNX_OPS",
    "TENSORRT_OPS_ADDED_IN",
    "qdq_dtypes",
    "supported_dtypes",
    "tensorrt_opset_range",
]

#: The oldest TensorRT we promise to parse our graphs (JetPack 6.1 ships 10.3; 10.0 is the table's floor).
BASELINE_TRT_VERSION: tuple[int, int] = (10, 0)
#: Lowest default-domain opset any TensorRT 10.x parser accepts.
TENSORRT_MIN_OPSET = 9
#: Highest opset of TensorRT 10.0 ("inclusive range of opset 9 to opset 20").
TENSORRT_10_0_MAX_OPSET = 20
#: Highest opset of TensorRT 10.15 ("inclusive range of opset 9 to opset 24"); also TensorRT 11.x.
TENSORRT_10_15_MAX_OPSET = 24
#: First version documented with opset 24 (intermediate 10.x releases are treated as opset <= 20: conservative).
OPSET_24_SINCE: tuple[int, int] = (10, 15)

# Restriction notes shared by many rows of the table.
_REDUCE_AXES_NOTE = "`axes` must be an initializer"
_POOL_DILATIONS_NOTE = "`dilations` must be empty or all ones"
_RANDOM_SEED_NOTE = "`seed` value is ignored by TensorRT"
_RNN_NOTE = "For bidirectional RNNs, activation functions must be the same for both the forward and reverse pass"

#: Every operator the TensorRT 10.x ONNX parser marks as supported (default ONNX domain), with the table's
#: restriction note ("" when the table gives none). Transcribed from onnx/onnx-tensorrt docs/operators.md
#: (TensorRT 10.15, the last 10.x table); operators added after 10.0 are listed in :data:`TENSORRT_OPS_ADDED_IN`.
TENSORRT_ONNX_OPS: dict[str, str] = {
    "Abs": "",
    "Acos": "",
    "Acosh": "",
    "Add": "",
    "And": "",
    "ArgMax": "",
    "ArgMin": "",
    "Asin": "",
    "Asinh": "",
    "Atan": "",
    "Atanh": "",
    "Attention": (
        "`Q`, `K`, `V` and `attn_mask` must be 4D; `past_key`, `past_value`, `nonpad_kv_seqlen` inputs and "
        "`present_key`, `present_value`, `qk_matmul_output` outputs are unsupported; `qk_matmul_output_mode` and "
        "`softcap` are unsupported"
    ),
    "AveragePool": f"2D or 3D pooling only; {_POOL_DILATIONS_NOTE}",
    "BatchNormalization": "",
    "BlackmanWindow": "",
    "Cast": "",
    "CastLike": "",
    "Ceil": "",
    "Celu": "",
    "Clip": "",
    "Concat": "",
    "Constant": "`sparse_value`, `value_string` and `value_strings` attributes are unsupported",
    "ConstantOfShape": "",
    "Conv": "",
    "ConvTranspose": "",
    "Cos": "",
    "Cosh": "",
    "CumSum": "`axis` must be a build-time constant",
    "DeformConv": "`input` must have 1D or 2D spatial dimensions; begin and end `pads` must be equal per spatial axis",
    "DepthToSpace": "",
    "DequantizeLinear": "`x_zero_point` must be zero",
    "Div": "",
    "Dropout": "`is_training` must be an initializer and evaluate to False",
    "Einsum": "",
    "Elu": "",
    "Equal": "",
    "Erf": "",
    "Exp": "",
    "Expand": "",
    "EyeLike": "`input` must have static dimensions",
    "Flatten": "",
    "Floor": "",
    "Gather": "",
    "GatherElements": "",
    "GatherND": "",
    "Gelu": "",
    "Gemm": "",
    "GlobalAveragePool": "",
    "GlobalLpPool": "",
    "GlobalMaxPool": "",
    "Greater": "",
    "GreaterOrEqual": "",
    "GridSample": "input must be 4D",
    "GroupNormalization": "",
    "GRU": _RNN_NOTE,
    "HammingWindow": "",
    "HannWindow": "",
    "HardSigmoid": "",
    "HardSwish": "",
    "Hardmax": "`axis` dimension of input must be a build-time constant",
    "Identity": "",
    "If": "output tensors of the two branches must have the same rank and must have different names",
    "ImageScaler": "",
    "InstanceNormalization": "",
    "IsInf": "",
    "IsNaN": "",
    "LayerNormalization": "only the first output `Y` is supported",
    "LeakyRelu": "",
    "Less": "",
    "LessOrEqual": "",
    "Log": "",
    "LogSoftmax": "",
    "Loop": "scan output length cannot be dynamic; loop-carried shapes must be the same across iterations",
    "LRN": "",
    "LSTM": f"{_RNN_NOTE}; `input_forget` must be 0; `layout` must be 0",
    "LpNormalization": "",
    "LpPool": _POOL_DILATIONS_NOTE,
    "MatMul": "",
    "Max": "",
    "MaxPool": f"2D or 3D pooling only; `Indices` output unsupported; {_POOL_DILATIONS_NOTE}",
    "Mean": "",
    "MeanVarianceNormalization": "",
    "Min": "",
    "Mish": "",
    "Mod": "",
    "Mul": "",
    "Neg": "",
    "NonMaxSuppression": "",
    "NonZero": "",
    "Not": "",
    "OneHot": "`depth` must be a build-time constant",
    "Or": "",
    "Pad": "",
    "ParametricSoftplus": "",
    "Pow": "",
    "PRelu": "",
    "QuantizeLinear": "`y_zero_point` must be 0",
    "RandomNormal": _RANDOM_SEED_NOTE,
    "RandomNormalLike": _RANDOM_SEED_NOTE,
    "RandomUniform": _RANDOM_SEED_NOTE,
    "RandomUniformLike": _RANDOM_SEED_NOTE,
    "Range": "",
    "Reciprocal": "",
    "ReduceL1": _REDUCE_AXES_NOTE,
    "ReduceL2": _REDUCE_AXES_NOTE,
    "ReduceLogSum": _REDUCE_AXES_NOTE,
    "ReduceLogSumExp": _REDUCE_AXES_NOTE,
    "ReduceMax": _REDUCE_AXES_NOTE,
    "ReduceMean": _REDUCE_AXES_NOTE,
    "ReduceMin": _REDUCE_AXES_NOTE,
    "ReduceProd": _REDUCE_AXES_NOTE,
    "ReduceSum": _REDUCE_AXES_NOTE,
    "ReduceSumSquare": _REDUCE_AXES_NOTE,
    "Relu": "",
    "Reshape": "",
    "Resize": (
        "coordinate transformation modes: half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric, "
        "align_corners; modes: nearest, linear; nearest modes: floor, ceil, round_prefer_floor, round_prefer_ceil; "
        "aspect ratio policy: stretch; when `scales` is a tensor input, `axes` must be an iota vector of length "
        "rank(input); antialiasing is not supported"
    ),
    "ReverseSequence": "",
    "RMSNormalization": "",
    "RNN": _RNN_NOTE,
    "RoiAlign": "",
    "RotaryEmbedding": "`position_ids` must be INT64",
    "Round": "",
    "STFT": "`frame_step` and `window` must be initializers; input must be real-valued",
    "ScaledTanh": "",
    "Scan": "",
    "Scatter": "",
    "ScatterElements": "",
    "ScatterND": "`reduction` other than `none` is not supported",
    "Selu": "",
    "Shape": "",
    "Shrink": "",
    "Sigmoid": "",
    "Sign": "",
    "Sin": "",
    "Sinh": "",
    "Size": "",
    "Slice": "",
    "Softmax": "",
    "Softplus": "",
    "Softsign": "",
    "SpaceToDepth": "",
    "Split": "",
    "Sqrt": "",
    "Squeeze": "`axes` must be resolvable to a constant",
    "Sub": "",
    "Sum": "",
    "Tan": "",
    "Tanh": "",
    "TensorScatter": "`past_cache` and `update` must be 4D; `axis` must be -2",
    "ThresholdedRelu": "",
    "Tile": "",
    "TopK": "`sorted` must be 1; `K` input must be less than 3840",
    "Transpose": "",
    "Trilu": "",
    "Unsqueeze": "`axes` must be resolvable to a constant",
    "Upsample": "",
    "Where": "",
    "Xor": "",
}

#: Operators of :data:`TENSORRT_ONNX_OPS` added after TensorRT 10.0 (onnx-tensorrt docs/Changelog.md).
TENSORRT_OPS_ADDED_IN: dict[str, tuple[int, int]] = {
    "DeformConv": (10, 1),
    "BlackmanWindow": (10, 4),
    "HammingWindow": (10, 4),
    "HannWindow": (10, 4),
    "STFT": (10, 5),
    "Attention": (10, 14),
    "RMSNormalization": (10, 15),
    "RotaryEmbedding": (10, 15),
    "TensorScatter": (10, 15),
}

# Restrictions the 10.0 table had and later 10.x releases lifted (onnx-tensorrt docs/Changelog.md).
#: "Added support for tensor `axes` inputs for `Slice` nodes" (10.3).
SLICE_TENSOR_AXES_SINCE: tuple[int, int] = (10, 3)
#: "Added support for tensor `axes` for `Pad` operations" (10.4).
PAD_TENSOR_AXES_SINCE: tuple[int, int] = (10, 4)
#: "Added support for ellipses, diagonal, and broadcasting in `Einsum` operations" (10.12).
EINSUM_ELLIPSIS_SINCE: tuple[int, int] = (10, 12)
#: "Added support for `FLOAT4E2M1` types for quantized networks" (10.8).
FP4_SINCE: tuple[int, int] = (10, 8)

#: ONNX element types TensorRT 10 accepts ("DOUBLE, FLOAT32, FLOAT16, BFLOAT16, INT32, INT64, FP8, INT8, INT4,
#: UINT8, and BOOL"; DOUBLE is cast down to FLOAT; UINT8 only as network input or output).
SUPPORTED_DTYPES: frozenset[int] = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.INT8,
        onnx.TensorProto.INT4,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.BOOL,
        onnx.TensorProto.FLOAT8E4M3FN,
    }
)
#: Quantized types TensorRT accepts in QuantizeLinear / DequantizeLinear (INT8, FP8 E4M3, INT4; FP4 from 10.8).
QDQ_DTYPES: frozenset[int] = frozenset({onnx.TensorProto.INT8, onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.INT4})

# Allowed Resize attribute values.
RESIZE_COORDINATE_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})
RESIZE_ASPECT_RATIO_POLICIES = frozenset({"stretch"})

POOL_SPATIAL_RANKS = frozenset({2, 3})
TOPK_MAX_K = 3840  # "`K` input must be less than 3840"


def tensorrt_opset_range(trt_version: tuple[int, int]) -> tuple[int, int]:
    """(min, max) default-domain opset the TensorRT ``trt_version`` parser documents (inclusive)."""
    if tuple(trt_version) >= OPSET_24_SINCE:
        return TENSORRT_MIN_OPSET, TENSORRT_10_15_MAX_OPSET
    return TENSORRT_MIN_OPSET, TENSORRT_10_0_MAX_OPSET


def supported_dtypes(trt_version: tuple[int, int]) -> frozenset[int]:
    """ONNX element types the TensorRT ``trt_version`` parser accepts (FP4 from 10.8)."""
    if trt_version >= FP4_SINCE:
        return SUPPORTED_DTYPES | {onnx.TensorProto.FLOAT4E2M1}
    return SUPPORTED_DTYPES


def qdq_dtypes(trt_version: tuple[int, int]) -> frozenset[int]:
    """Quantized element types the TensorRT ``trt_version`` parser accepts in Q/DQ nodes (FP4 from 10.8)."""
    if trt_version >= FP4_SINCE:
        return QDQ_DTYPES | {onnx.TensorProto.FLOAT4E2M1}
    return QDQ_DTYPES
