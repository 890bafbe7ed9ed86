"""``calibrate --target cpu`` on the tiny bundle: the CPU INT8 form, its measured float groups, the ISA report, the gate.

The TensorRT target's own tests (test_calibration.py) are unchanged; here the CPU form is counted in the saved graph:
integer operators, no MatMul in the Q/DQ form, uint8 activations, per-channel int8 weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from extras import require_export

pytestmark = require_export()  # onnx / onnxruntime quantization, and the tiny bundle needs torch

import onnx

from mmgen_edge.calibration import cpu_target, quantize
from mmgen_edge.calibration.calibrate import calibrate_bundle
from mmgen_edge.calibration.capture import CaptureSet
from mmgen_edge.calibration.cli import add_parsers
from mmgen_edge.calibration.cpu_isa import detect_cpu_isa, read_cpu_flags, u8s8_path
from mmgen_edge.calibration.cpu_target import (
    MIN_GROUP_GAIN,
    CpuScheme,
    assert_cpu_form,
    choose_float_groups,
    cpu_form,
    quantize_cpu_graph,
    sample_feeds,
)
from mmgen_edge.calibration.gate import CalibrationGateError, GateThresholds
from mmgen_edge.runtime.manifest import read_manifest

SAMPLES = 8
TIGHT = GateThresholds(depth=0.002, normal=0.1, miou=0.002)  # as in test_calibration.py


def _calibrate(bundle: Path, out: Path, **options: object):
    settings = dict(num_samples=SAMPLES, eval_scenes=4, speed_runs=3, threads=1, max_drop=TIGHT, target="cpu")
    settings.update(options)
    return calibrate_bundle(bundle, f"demo:{SAMPLES}", out, **settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cpu_calibrated(tiny_bundle, tmp_path_factory):
    """(report, INT8 bundle, work dir) of a CPU-target calibration of the tiny bundle (float groups measured)."""
    root = tmp_path_factory.mktemp("cpu-calibration")
    report = _calibrate(tiny_bundle, root / "int8", work_dir=root / "work")
    return report, root / "int8", root / "work"


# ---------------------------------------------------------------------------------------------------- ISA


def test_u8s8_path_follows_mlas_dispatch_order():
    vnni = frozenset({"avx2", "avx512f", "avx512bw", "avx512_vnni"})
    assert u8s8_path(vnni | {"amx_tile", "amx_int8"}).path == "AMX"
    isa = u8s8_path(vnni, model="Xeon")
    assert (isa.path, isa.reduce_range, isa.model) == ("AVX-512 VNNI", False, "Xeon")
    assert isa.flags == ("avx512f", "avx512bw", "avx512_vnni", "avx2")  # REPORTED_FLAGS order
    assert u8s8_path(frozenset({"avx2", "avx_vnni"})).path == "AVX-VNNI"
    assert u8s8_path(frozenset({"avx2", "avx512bw"})).path == "AVX-512 core"
    avx2 = u8s8_path(frozenset({"avx2", "fma"}))
    assert avx2.path == "AVX2" and avx2.reduce_range  # vpmaddubsw saturates int16: 7-bit weights advised
    assert u8s8_path(frozenset({"sse4_1"})).path == "SSE4.1"
    assert u8s8_path(frozenset(), "x86_64").path == "unknown"
    assert u8s8_path(frozenset({"asimd"}), "aarch64").path == "unknown"


def test_read_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert read_cpu_flags(info) == (frozenset({"fpu", "avx2", "avx512_vnni"}), "Test CPU")
    assert read_cpu_flags(tmp_path / "missing") == (frozenset(), "")
    info.write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    with pytest.raises(ValueError, match="no 'flags' line"):
        read_cpu_flags(info)


# ----------------------------------------------------------------------------------------------- the form


def test_cpu_bundle_has_integer_ops_uint8_activations_and_per_channel_int8_weights(cpu_calibrated, tiny_bundle):
    import mmgen_edge

    report, out, _ = cpu_calibrated
    assert report.passed and report.target == "cpu"
    path = out / "denoiser_cached.onnx"
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulInteger") > 0 and ops.count("DynamicQuantizeLinear") > 0
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops  # no standalone Q/DQ at all

    form = assert_cpu_form(path)
    assert form.qdq_compute == 0 and form.standalone_qdq == 0
    assert set(form.activation_types) == {"uint8"}
    weights = [w for w in form.weight_types if w != "activation"]
    assert weights and set(weights) == {"int8"}
    # one scale per output channel for every MatMul weight; the patch embedding's ConvInteger (quantized when the
    # measurement says it pays, which varies with the machine's load) has one per tensor
    assert form.per_channel_weights == len(weights) - form.integer_ops.get("ConvInteger", 0)
    float_matmuls = sum(1 for op in ops if op in ("MatMul", "Conv", "Gemm"))
    assert form.float_compute == float_matmuls == sum(len(v) for v in report.excluded_ops.values())
    assert report.quantized_nodes == form.integer_nodes and report.qdq_nodes == 0

    with mmgen_edge.load(out, device="cpu") as loaded:
        result = loaded.perceive(np.full((40, 56, 3), 128, np.uint8), steps=2, seed=0)
    assert result.depth.shape == (40, 56) and np.isfinite(result.depth).all()
    assert read_manifest(out, verify="full").file("conditioning.onnx").sha256 == read_manifest(
        tiny_bundle, verify="none").file("conditioning.onnx").sha256  # fmt: skip


def test_cpu_report_and_manifest_record_target_isa_and_ablation(cpu_calibrated):
    report, out, _ = cpu_calibrated
    isa = detect_cpu_isa()
    calibration = read_manifest(out, verify="none").calibration
    assert calibration is not None
    assert calibration["target"] == "cpu" and calibration["isa"] == isa.path
    full = calibration["report"]
    assert full["isa"]["path"] == isa.path and full["isa"]["flags"] == list(isa.flags)
    assert full["cpu_form"]["scheme"] == "dynamic"
    assert sum(full["cpu_form"]["denoiser_cached"]["integer_ops"].values()) == report.quantized_nodes  # MatMul[, Conv]Integer

    rows = report.exclusion_ablation
    assert "quantize all" in rows and {"float attention", "float embed", "float head"} <= set(rows)
    kept_float = {group.split(":")[1] for group in report.excluded_ops}
    measured = {name.removeprefix("float "): row["gain"] for name, row in rows.items() if "gain" in row}
    assert kept_float == {group for group, gain in measured.items() if gain < MIN_GROUP_GAIN}
    for name, row in rows.items():
        if name != "quantize all":
            assert row["quantized_nodes"] < rows["quantize all"]["quantized_nodes"]
        assert 0 < row["rel_rms"] < 0.5 and row["max_abs"] > 0

    text = "\n".join(report.summary_lines())
    assert f"target       cpu; CPU integer path (MLAS U8S8): {isa.path}" in text
    assert f"speed (CPU)  one step at batch {report.speed['rows']}: fp32" in text
    assert "MatMulInteger" in text and "activations uint8" in text


def test_static_scheme_writes_qlinear_ops_with_asymmetric_ranges(cpu_calibrated, tmp_path):
    work = cpu_calibrated[2]
    prepared = work / "denoiser_cached.prepared.onnx"
    reader = CaptureSet.load(work / "capture").reader("denoiser_cached")
    ranges = quantize.compute_ranges(prepared, reader, "minmax", tmp_path, symmetric=False)
    lows = [float(np.ravel(t.range_value[0])[0]) for t in ranges.data.values()]
    highs = [float(np.ravel(t.range_value[1])[0]) for t in ranges.data.values()]
    assert any(lo != -hi for lo, hi in zip(lows, highs))  # the observed min..max, not symmetrised
    ranges_file = tmp_path / "ranges.json"
    quantize.save_tensors_data(ranges, ranges_file)

    result = quantize_cpu_graph(prepared, tmp_path / "static.onnx", CpuScheme.STATIC, ("embed",), ranges_file)
    form = assert_cpu_form(result.path)
    assert form.integer_ops.get("QLinearMatMul", 0) > 0 and "MatMulInteger" not in form.integer_ops
    assert form.qdq_compute == 0 and form.float_compute == 1  # the patch-embed Conv, kept float
    assert set(form.activation_types) == {"uint8"}
    assert form.per_channel_weights == sum(1 for w in form.weight_types if w == "int8") > 0
    with pytest.raises(ValueError, match="needs activation ranges"):
        quantize_cpu_graph(prepared, tmp_path / "no-ranges.onnx", CpuScheme.STATIC)


def test_tensorrt_qdq_graph_is_not_the_cpu_form(cpu_calibrated, tmp_path):
    work = cpu_calibrated[2]
    prepared = work / "denoiser_cached.prepared.onnx"
    reader = CaptureSet.load(work / "capture").reader("denoiser_cached")
    ranges_file = tmp_path / "ranges.json"
    quantize.save_tensors_data(quantize.compute_ranges(prepared, reader, "minmax", tmp_path), ranges_file)
    trt = quantize.quantize_graph(prepared, tmp_path / "trt.onnx", ranges_file, exclude=())
    form = cpu_form(trt.path)
    assert form.integer_nodes == 0 and form.qdq_compute == form.float_compute > 0
    with pytest.raises(ValueError, match="not in the CPU INT8 form: no integer operator.*in the Q/DQ form"):
        assert_cpu_form(trt.path)


def test_float_groups_are_the_ones_that_do_not_pay(cpu_calibrated, tmp_path, monkeypatch):
    """With step times fixed, the rule keeps float exactly the groups whose quantization saves < MIN_GROUP_GAIN."""
    work = cpu_calibrated[2]
    prepared = work / "denoiser_cached.prepared.onnx"
    feeds = sample_feeds(CaptureSet.load(work / "capture").reader("denoiser_cached"), 2)
    float_time = {"attention": 1.0 + 2 * MIN_GROUP_GAIN, "embed": 1.0 + MIN_GROUP_GAIN / 2, "head": 1.0}

    def fake_gain(variant: Path, quantized_all: Path, feeds: object, runs: int, threads: object) -> float:
        assert quantized_all.stem.endswith(".all")
        return float_time[variant.stem.rsplit("float-", 1)[1]] - 1.0

    monkeypatch.setattr(cpu_target, "paired_gain", fake_gain)

    def build(groups: tuple[str, ...], tag: str):
        return quantize_cpu_graph(prepared, tmp_path / f"g.{tag}.onnx", CpuScheme.DYNAMIC, groups)

    kept, rows = choose_float_groups(prepared, build, feeds, runs=1)
    assert kept == ("embed", "head")
    assert rows["float attention"]["gain"] == pytest.approx(2 * MIN_GROUP_GAIN)
    kept, rows = choose_float_groups(prepared, build, feeds, base_exclude=("attention",), runs=1)
    assert kept == ("attention", "embed", "head") and "float attention" not in rows
    with pytest.raises(ValueError, match="at least one recorded feed"):
        choose_float_groups(prepared, build, [], runs=1)


def test_paired_gain_measures_a_real_difference(cpu_calibrated):
    """A graph against itself gains about 0 (paired ratios cancel the load); runs must be positive."""
    work = cpu_calibrated[2]
    prepared = work / "denoiser_cached.prepared.onnx"
    feed = sample_feeds(CaptureSet.load(work / "capture").reader("denoiser_cached"), 1)[0]
    assert abs(cpu_target.paired_gain(prepared, prepared, feed, runs=15, threads=1)) < 0.25
    with pytest.raises(ValueError, match="runs must be >= 1"):
        cpu_target.paired_gain(prepared, prepared, feed, runs=0)


# ------------------------------------------------------------------------------------------------- gate


def test_gate_refuses_a_bad_cpu_bundle_and_writes_nothing(tiny_bundle, tmp_path, clipped_ranges):
    """The static CPU scheme with activation ranges clipped to 1 % fails the same gate a sound calibration passes."""
    out = tmp_path / "bad-cpu-int8"
    with pytest.raises(CalibrationGateError) as caught:
        _calibrate(tiny_bundle, out, exclude=(), speed_runs=0, cpu_scheme="static")
    assert caught.value.report.target == "cpu" and not caught.value.report.passed
    assert caught.value.report.latent_error[-1]["rel_rms"] > 0.05
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_target_options():
    parser = argparse.ArgumentParser(prog="mmgen-edge")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["calibrate", "b", "--data", "demo:4", "--out", "o"])
    assert (args.target, args.cpu_scheme, args.exclude) == ("tensorrt", "dynamic", None)  # the target's default
    args = parser.parse_args(["calibrate", "b", "--data", "demo:4", "--out", "o", "--target", "cpu", "--cpu-scheme", "static"])
    assert (args.target, args.cpu_scheme) == ("cpu", "static")
    with pytest.raises(SystemExit):
        parser.parse_args(["calibrate", "b", "--data", "demo:4", "--out", "o", "--target", "gpu"])
