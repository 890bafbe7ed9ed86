"""INT8 calibration on the tiny bundle: sources, capture, Q/DQ quantization, the INT8 bundle and the accuracy gate.

The tiny bundle has random weights, so its accuracy numbers mean nothing in themselves; the gate tests compare a
sound calibration with a deliberately broken one (activation ranges clipped to 1 %) under the same thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
from extras import require_export

pytestmark = require_export()  # torch/onnx/diffusers: skipped on a base install

import onnx
import pytest

from mmgen_edge.calibration import quantize
from mmgen_edge.calibration.calibrate import calibrate_bundle
from mmgen_edge.calibration.capture import CaptureSet, capture_calibration_feeds
from mmgen_edge.calibration.cli import EXIT_GATE_REFUSED, add_parsers
from mmgen_edge.calibration.cpu_isa import detect_cpu_isa
from mmgen_edge.calibration.gate import CalibrationGateError, GateThresholds, check_gate
from mmgen_edge.calibration.sources import (
    CALIBRATION_SEED,
    CalibrationSourceError,
    iter_calibration_images,
)
from mmgen_edge.runtime.manifest import read_manifest
from mmgen_edge.runtime.sampler import SamplerConfig

SAMPLES = 8
EVAL_SCENES = 4
STEPS = (1, 2, 4)
#: Tight thresholds: a sound calibration of the tiny model stays well inside them, clipped ranges do not.
TIGHT = GateThresholds(depth=0.002, normal=0.1, miou=0.002)
VIDEO_FRAMES, VIDEO_SIZE, VIDEO_LIMIT = 300, 96, 6
#: Python-heap peak allowed while streaming the whole 300-frame video (the decoded video is ~8 MB).
VIDEO_PEAK_BYTES = 2 << 20


def _calibrate(bundle: Path, out: Path, **options: object):
    settings = dict(num_samples=SAMPLES, eval_scenes=EVAL_SCENES, speed_runs=3, threads=1, max_drop=TIGHT)
    settings.update(options)
    return calibrate_bundle(bundle, f"demo:{SAMPLES}", out, **settings)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def calibrated(tiny_bundle, tmp_path_factory):
    """(report, INT8 bundle, work dir, cache dir) of a sound MinMax calibration of the tiny bundle."""
    root = tmp_path_factory.mktemp("calibration")
    report = _calibrate(tiny_bundle, root / "int8", work_dir=root / "work", cache_dir=root / "cache", compare_exclusions=True)
    return report, root / "int8", root / "work", root / "cache"




# ---------------------------------------------------------------------------------------------- the bundle


def test_int8_bundle_is_written_with_qdq_and_runs(calibrated, tiny_bundle):
    import mmgen_edge
    from mmgen_edge.export.tensorrt_support import check_tensorrt_support

    report, out, _, _ = calibrated
    assert report.passed and not report.forced
    manifest = read_manifest(out, verify="full")
    fp32 = read_manifest(tiny_bundle, verify="none")
    assert manifest.precision.value == "int8" and manifest.graphs["denoiser_cached"].precision.value == "int8"
    assert manifest.graphs["conditioning"].precision.value == "fp32"
    assert manifest.file("conditioning.onnx").sha256 == fp32.file("conditioning.onnx").sha256  # stays FP32
    assert manifest.file("denoiser_cached.onnx").sha256 != fp32.file("denoiser_cached.onnx").sha256

    path = out / "denoiser_cached.onnx"
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert check_tensorrt_support(path) == []
    initializers = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in quantize.QDQ_OPS:
            zero_point = initializers[node.input[2]]
            assert zero_point.data_type == onnx.TensorProto.INT8  # symmetric INT8, no int32 bias DQ
            assert not np.any(onnx.numpy_helper.to_array(zero_point))

    calibration = manifest.calibration
    assert calibration is not None
    assert calibration["calibration_set_sha256"] == CaptureSet.load(calibrated[2] / "capture").sha256
    assert calibration["source_weights_sha256"] == fp32.provenance.model_weights_sha256 is not None
    assert calibration["method"] == "minmax" and calibration["samples"] == SAMPLES and calibration["steps"] == list(STEPS)
    assert calibration["target"] == "tensorrt" and calibration["isa"] == detect_cpu_isa().path  # the CPU timed on
    assert "denoiser_cached:head" in calibration["excluded_ops"]
    assert calibration["report"]["passed"] is True and calibration["report"]["latent_error"]

    with mmgen_edge.load(out, device="cpu") as loaded:
        result = loaded.perceive(np.full((40, 56, 3), 128, np.uint8), steps=2, seed=0)
    assert result.depth.shape == (40, 56) and np.isfinite(result.depth).all()


def test_int8_bundle_links_its_unchanged_graphs_instead_of_copying_them(calibrated, tiny_bundle, tmp_path, monkeypatch):
    """A derived bundle takes no second copy of the graphs it keeps (a third of an XL bundle); where links cannot be
    made (another file system) it copies them, and both bundles verify either way."""
    _, out, _, _ = calibrated
    for kept in ("conditioning.onnx", "vae_encoder.onnx", "vae_decoder.onnx"):
        assert (out / kept).stat().st_ino == (tiny_bundle / kept).stat().st_ino, kept
    replaced = out / "denoiser_cached.onnx"
    assert replaced.stat().st_ino != (tiny_bundle / "denoiser_cached.onnx").stat().st_ino

    def no_links(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    manifest = read_manifest(tiny_bundle, verify="none")
    target = tmp_path / "staged"
    target.mkdir()
    quantize.stage_int8_bundle(tiny_bundle, manifest, {"denoiser_cached": out / "denoiser_cached.onnx"}, target)
    copied = target / "conditioning.onnx"
    assert copied.stat().st_ino != (tiny_bundle / "conditioning.onnx").stat().st_ino
    assert copied.read_bytes() == (tiny_bundle / "conditioning.onnx").read_bytes()
    read_manifest(tiny_bundle, verify="full")


def test_report_measures_latent_error_and_speed(calibrated):
    report = calibrated[0]
    assert len(report.latent_error) == read_manifest(calibrated[1], verify="none").sampler.num_steps
    assert [row["t_cur"] for row in report.latent_error] == [1.0, 0.75, 0.5, 0.25]
    assert all(np.isfinite(row["max_abs"]) and row["max_abs"] >= row["mean_abs"] >= 0 for row in report.latent_error)
    assert report.speed["fp32_ms"] > 0 and report.speed["int8_ms"] > 0
    batch = report.speed["rows"]  # x_t rows of the captured step: one calibration batch (the tiny bundle's max is 4)
    assert 1 <= batch <= 4
    assert f"speed (CPU)  one step at batch {batch}: fp32" in "\n".join(report.summary_lines())
    assert set(report.fp32) >= {"depth_delta1", "normal_mean", "seg_miou"}
    with_exclusions, without = report.exclusion_ablation.values()  # float head + embed measurably help
    assert with_exclusions["rel_rms"] < without["rel_rms"]
    assert with_exclusions["quantized_nodes"] < without["quantized_nodes"]


def test_capture_covers_every_step_of_every_schedule(calibrated):
    capture = CaptureSet.load(calibrated[2] / "capture")
    assert capture.images == SAMPLES and capture.steps == STEPS
    for k in STEPS:
        expected = SamplerConfig(num_steps=k).timesteps()[:-1].tolist()
        assert capture.timesteps(steps=k) == pytest.approx(expected)
    assert capture.timesteps()[0] == 1.0 and min(capture.timesteps(steps=4)) == pytest.approx(0.25)
    batches = -(-SAMPLES // 4)  # the tiny bundle's max batch is 4
    assert len(capture.records_for("denoiser_cached")) == batches * sum(STEPS)
    reader = capture.reader("denoiser_cached")
    feeds = reader.get_next()
    assert feeds is not None and set(feeds) >= {"x_t", "t_cur", "block_modulation"}


def test_ranges_cache_is_keyed_by_weights(calibrated, tiny_bundle, tmp_path):
    """The same bundle and calibration set reuse the cached ranges; changed weights never do."""
    _, _, _, cache = calibrated
    options = dict(eval_scenes=0, force=True, cache_dir=cache)
    assert _calibrate(tiny_bundle, tmp_path / "again", **options).ranges_cached

    retrained = tmp_path / "retrained"
    retrained.mkdir()
    manifest = read_manifest(tiny_bundle, verify="none")
    for entry in manifest.files:
        (retrained / entry.path).write_bytes((tiny_bundle / entry.path).read_bytes())
    provenance = manifest.provenance.model_copy(update={"model_weights_sha256": "0" * 64})
    from mmgen_edge.runtime.manifest import write_manifest

    write_manifest(retrained, manifest.model_copy(update={"provenance": provenance}))
    report = _calibrate(retrained, tmp_path / "retrained-int8", **options)
    assert not report.ranges_cached and report.source_weights_sha256 == "0" * 64


# ------------------------------------------------------------------------------------------------- gate


def test_gate_refuses_clipped_ranges_and_writes_nothing(tiny_bundle, tmp_path, clipped_ranges):
    out = tmp_path / "bad-int8"
    with pytest.raises(CalibrationGateError) as caught:
        _calibrate(tiny_bundle, out, exclude=(), speed_runs=0, method="entropy")
    error = caught.value
    assert error.failures and not error.report.passed
    assert error.failures[0].metric in str(error) and "allowed" in str(error)
    assert error.report.latent_error[-1]["rel_rms"] > 0.05
    assert not out.exists() and list(tmp_path.iterdir()) == []  # not even a temporary directory is left

    report = _calibrate(tiny_bundle, out, exclude=(), speed_runs=0, force=True)
    assert report.forced and not report.passed
    written = read_manifest(out, verify="full").calibration
    assert written is not None and written["report"]["forced"] is True and written["report"]["failures"]


def test_gate_thresholds_and_check():
    assert GateThresholds.parse("") == GateThresholds(depth=0.01, normal=1.0, miou=0.02)
    assert GateThresholds.parse("normal=2.5, miou=0") == GateThresholds(depth=0.01, normal=2.5, miou=0.0)
    for bad in ("depth", "speed=1", "depth=x", "depth=-1"):
        with pytest.raises(ValueError):
            GateThresholds.parse(bad)
    fp32 = {"depth_delta1": 0.90, "normal_mean": 10.0, "seg_miou": 0.80}
    ok = {"depth_delta1": 0.895, "normal_mean": 10.5, "seg_miou": 0.79}
    assert check_gate(fp32, ok, GateThresholds()) == []
    bad = {"depth_delta1": 0.85, "normal_mean": 12.0, "seg_miou": float("nan")}
    assert [f.metric for f in check_gate(fp32, bad, GateThresholds())] == ["depth", "normal", "miou"]


def test_gate_fails_when_object_metrics_degrade_while_whole_image_ones_do_not():
    defaults = GateThresholds.parse("")
    assert (defaults.object_depth, defaults.object_normal, defaults.object_miou) == (0.01, 1.0, 0.02)
    assert GateThresholds.parse("object_normal=3").object_normal == 3.0
    fp32 = {"depth_delta1": 0.90, "normal_mean": 10.0, "seg_miou": 0.80,
            "object_depth_delta1": 0.70, "object_normal_mean": 40.0, "object_seg_miou": 0.30}  # fmt: skip
    same_image = {"depth_delta1": 0.90, "normal_mean": 10.0, "seg_miou": 0.80}
    worse_objects = {**same_image, "object_depth_delta1": 0.68, "object_normal_mean": 41.5, "object_seg_miou": 0.27}
    failures = check_gate(fp32, worse_objects, GateThresholds())
    assert [f.metric for f in failures] == ["object_depth", "object_normal", "object_miou"]
    assert failures[1].worsening == pytest.approx(1.5) and "object_normal_mean" in failures[1].describe()
    within = {**same_image, "object_depth_delta1": 0.695, "object_normal_mean": 40.9, "object_seg_miou": 0.29}
    assert check_gate(fp32, within, GateThresholds()) == []
    assert check_gate(fp32, worse_objects, GateThresholds(object_depth=0.05, object_normal=2.0, object_miou=0.05)) == []
    with pytest.raises(KeyError, match="object_seg_miou"):
        check_gate(fp32, {k: v for k, v in within.items() if k != "object_seg_miou"}, GateThresholds())


def test_cli_calibrate_json_and_refusal(tiny_bundle, tmp_path, capsys, clipped_ranges):
    parser = argparse.ArgumentParser(prog="mmgen-edge")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    common = [str(tiny_bundle), "--data", "demo:4", "--samples", "4", "--eval-scenes", "2", "--threads", "1",
              "--speed-runs", "0", "--exclude", "none", "--max-drop", "depth=0.002,normal=0.1,miou=0.002", "--json"]  # fmt: skip
    args = parser.parse_args(["calibrate", *common, "--out", str(tmp_path / "refused")])
    assert args.func(args) == EXIT_GATE_REFUSED
    assert json.loads(capsys.readouterr().out)["passed"] is False and not (tmp_path / "refused").exists()
    args = parser.parse_args(["calibrate", *common, "--out", str(tmp_path / "forced"), "--force", "--method", "percentile"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "percentile"
    assert read_manifest(tmp_path / "forced", verify="full").precision.value == "int8"


# -------------------------------------------------------------------------------------- sources / capture


def test_sources_demo_and_errors(tmp_path):
    from mmgen_edge.samples.shapes.evaluate import HELD_OUT_SEED

    assert CALIBRATION_SEED > HELD_OUT_SEED + 100_000  # never the held-out (or training) scenes
    images = list(iter_calibration_images("demo:3", limit=2, demo_size=32))
    assert len(images) == 2 and images[0].shape == (32, 32, 3) and images[0].dtype == np.uint8
    for spec, error in [("demo:x", CalibrationSourceError), ("demo:0", CalibrationSourceError),
                        (str(tmp_path / "missing"), FileNotFoundError), (str(tmp_path), CalibrationSourceError)]:  # fmt: skip
        with pytest.raises(error):
            next(iter_calibration_images(spec, limit=4))
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 10, 3), i * 50, np.uint8))
    folder = list(iter_calibration_images(str(tmp_path), limit=2))
    assert len(folder) == 2 and folder[1].shape == (8, 10, 3) and folder[1][0, 0, 0] == 50


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """A 300-frame video whose frame i is filled with grey level i * 255 // 300."""
    path = tmp_path_factory.mktemp("video") / "long.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (VIDEO_SIZE, VIDEO_SIZE))
    assert writer.isOpened()
    for i in range(VIDEO_FRAMES):
        writer.write(np.full((VIDEO_SIZE, VIDEO_SIZE, 3), i * 255 // VIDEO_FRAMES, np.uint8))
    writer.release()
    return path


def test_video_source_streams_spread_frames_in_bounded_memory(long_video):
    frames = list(iter_calibration_images(str(long_video), limit=VIDEO_LIMIT))
    assert len(frames) == VIDEO_LIMIT
    levels = [int(f.mean()) for f in frames]
    assert levels == sorted(levels) and levels[-1] - levels[0] > 150  # spread over the whole video

    tracemalloc.start()
    count = sum(1 for _ in iter_calibration_images(str(long_video), limit=VIDEO_FRAMES))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == VIDEO_FRAMES and peak < VIDEO_PEAK_BYTES


def test_capture_from_long_video_keeps_the_configured_samples(tiny_bundle, long_video, tmp_path):
    images = iter_calibration_images(str(long_video), limit=VIDEO_LIMIT)
    capture = capture_calibration_feeds(tiny_bundle, images, tmp_path / "capture", steps=(2,), threads=1)
    assert capture.images == VIDEO_LIMIT
    assert len(capture.records_for("denoiser_cached")) == -(-VIDEO_LIMIT // 4) * 2
    assert all(r.rows <= 4 for r in capture.records)
    shards = list((tmp_path / "capture").rglob("*.npz"))
    assert len(shards) == len(capture.records)


def test_sensitive_groups_follow_the_graph(tiny_bundle):
    model = onnx.load(str(tiny_bundle / "denoiser_cached.onnx"))
    quantize.name_nodes(model)
    groups = quantize.sensitive_nodes(model, quantize.SENSITIVE_GROUPS)
    ops = {n.name: n.op_type for n in model.graph.node}
    assert [ops[n] for n in groups["embed"]] == ["Conv"]
    assert len(groups["head"]) == 4 and all(ops[n] == "MatMul" for n in groups["head"])  # one per modality
    assert {ops[n] for n in groups["norm"]} == {"LayerNormalization", "Softmax"}
    assert len(groups["attention"]) == 2 * 2  # Q K^T and softmax V per block (depth 2)


def test_a_corrupt_ranges_cache_is_recomputed_not_fatal(tmp_path):
    from mmgen_edge.calibration.quantize import cached_ranges

    calls = []
    good = tmp_path / "good.ranges.json"

    def compute():
        calls.append(1)
        from onnxruntime.quantization.calibrate import TensorData, TensorsData, CalibrationMethod

        return TensorsData(CalibrationMethod.MinMax, {"x": TensorData(lowest=np.float32(-1.0), highest=np.float32(1.0))})

    for content in ("{}", "[1, 2]", "{not json"):
        good.write_text(content)
        path, hit = cached_ranges(good, compute)
        assert path == good and hit is False
    path, hit = cached_ranges(good, compute)  # now a valid cache: a hit, nothing recomputed
    assert hit is True and len(calls) == 3


def test_work_and_cache_folders_inside_the_bundle_or_the_output_are_refused_before_any_work(tiny_bundle, tmp_path):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "int8"
    for options, message in (({"work_dir": tiny_bundle / "work"}, "work_dir .* is inside the FP32 bundle"),
                             ({"cache_dir": tiny_bundle}, "cache_dir .* is inside the FP32 bundle"),
                             ({"work_dir": out}, "work_dir .* is inside --out"),
                             ({"cache_dir": tmp_path / "afile" / "c"}, "afile is a file")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            calibrate_bundle(tiny_bundle, "demo:2", out, **options)
    assert not (tiny_bundle / "work").exists() and not out.exists()


def test_calibration_images_inside_the_output_are_never_overwritten(tiny_bundle, tmp_path):
    """calibrate --data out/calib --out out --overwrite deleted the calibration images (the data was not protected);
    distill-vae and export --gate-data protect their data the same way (calibration.sources.data_path)."""
    from mmgen_edge.calibration.sources import data_path
    from mmgen_edge.runtime.fileio import OUTPUT_MARKER

    out = tmp_path / "calout"
    images = out / "calib"
    images.mkdir(parents=True)
    cv2.imwrite(str(images / "a.png"), np.zeros((8, 8, 3), np.uint8))
    (out / OUTPUT_MARKER).write_text("written by mmgen-edge; --overwrite may replace this directory\n")
    with pytest.raises(ValueError, match="holds the input"):
        calibrate_bundle(tiny_bundle, str(images), out, overwrite=True)
    assert (images / "a.png").is_file()
    assert data_path("demo:4") is None and data_path(str(images)) == images
