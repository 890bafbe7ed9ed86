"""The typed SDK on a tiny bundle: parity with the PyTorch reference, outputs, bad input, CLI."""

from __future__ import annotations

import importlib.util
import json

import cv2
import numpy as np
import pytest
from extras import require_export

pytestmark = require_export()  # torch/onnx/diffusers: skipped on a base install

import torch
from diffusers import AutoencoderKL

import mmgen_edge
from mmgen_edge.export.model_dir import load_model
from mmgen_edge.export.sampling import prepare_latents, sample
from mmgen_edge.runtime.manifest import BundleError
from mmgen_edge.runtime.sampler import SamplerConfig
from mmgen_edge.cli import main as cli_main


@pytest.fixture(scope="module")
def model(tiny_bundle):
    with mmgen_edge.load(tiny_bundle, device="cpu") as m:
        yield m


def _image(h=48, w=40, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def test_perceive_equals_the_pytorch_reference_with_the_same_noise(model, tiny_model_dir, tiny_vae_dir):
    image = _image(32, 32)  # model resolution: no resize on either side
    noise = np.random.default_rng(1).standard_normal((16, 4, 4), dtype=np.float32)
    result = model.perceive(image, noise=noise, steps=3, return_latents=True)

    vae = AutoencoderKL.from_pretrained(tiny_vae_dir, low_cpu_mem_usage=False).eval()
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        latent = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    ref = sample(load_model(tiny_model_dir), torch.from_numpy(noise)[None], SamplerConfig(num_steps=3), condition=latent, condition_modality="rgb")
    np.testing.assert_allclose(result.latents, ref[0].numpy(), rtol=1e-4, atol=1e-4)
    assert result.steps == 3 and result.backend == "ort-cpu"


def test_perceive_outputs_are_typed_and_at_input_resolution(model):
    result = model.perceive(_image(48, 40), seed=0)
    assert result.depth.shape == (48, 40) and result.depth.dtype == np.float32
    assert 0.0 <= result.depth.min() and result.depth.max() <= 1.0
    assert result.normals.shape == (48, 40, 3)
    np.testing.assert_allclose(np.linalg.norm(result.normals, axis=-1), 1.0, atol=1e-4)
    seg = result.segmentation
    assert seg.labels.shape == (48, 40) and seg.labels.dtype == np.int32
    assert seg.labels.max() < seg.num_segments == len(seg.colours)
    assert set(result.timings) >= {"encode", "steps", "decode", "postprocess"}
    only_depth = model.perceive(_image(48, 40), tasks=("depth",), seed=0)
    assert only_depth.normals is None and only_depth.segmentation is None
    np.testing.assert_array_equal(only_depth.depth, result.depth)  # same seed, same answer


def test_a_list_is_one_batch_and_matches_single_calls(model):
    images = [_image(seed=1), _image(seed=2)]
    noise = np.random.default_rng(5).standard_normal((16, 4, 4), dtype=np.float32)
    batch = model.perceive(images, noise=noise, tasks=("depth",))
    singles = [model.perceive(im, noise=noise, tasks=("depth",)) for im in images]
    assert len(batch) == 2
    for b, s in zip(batch, singles):
        np.testing.assert_allclose(b.depth, s.depth, atol=2e-3)


def test_generate_category_and_conditioned(model):
    out = model.generate(class_label=3, seed=0, cfg_scale=2.0, return_latents=True)
    assert out.rgb.shape == (32, 32, 3) and out.rgb.dtype == np.uint8
    assert out.depth.shape == (32, 32) and out.normals is not None and out.segmentation is not None
    again = model.generate(class_label=3, seed=0, cfg_scale=2.0)
    np.testing.assert_array_equal(again.rgb, out.rgb)
    disparity = np.tile(np.linspace(0, 1, 32, dtype=np.float32)[:, None], (1, 32))
    cond = model.generate(condition={"depth": disparity}, seed=0, return_latents=True)
    assert cond.condition == "depth" and cond.depth is None and cond.normals is not None
    labels = np.zeros((32, 32), np.int64)
    labels[8:20, 8:20] = 1
    seg = model.generate(condition={"segmentation": labels}, seed=0)
    assert seg.segmentation is None and seg.rgb.shape == (32, 32, 3)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: m.perceive(np.zeros((32, 32, 3), np.int32)), ValueError, "dtype int32"),
        (lambda m: m.perceive(np.zeros((32, 32, 4), np.uint8)), ValueError, r"\(H, W, 3\)"),
        (lambda m: m.perceive(np.zeros((0, 32, 3), np.uint8)), ValueError, "empty"),
        (lambda m: m.perceive(np.full((8, 8, 3), np.nan, np.float32)), ValueError, "NaN"),
        (lambda m: m.perceive(np.full((8, 8, 3), 2.0, np.float32)), ValueError, r"\[0, 1\]"),
        (lambda m: m.perceive(_image(), tasks=("depth", "albedo")), ValueError, "unknown tasks"),
        (lambda m: m.perceive([_image()] * 5), ValueError, "larger than the bundle's maximum 4"),
        (lambda m: m.perceive([]), ValueError, "no images"),
        (lambda m: m.perceive("/nonexistent/photo.jpg"), FileNotFoundError, "does not exist"),
        (lambda m: m.perceive(_image(), steps=0), ValueError, "steps must be in 1..250"),
        (lambda m: m.perceive(_image(), noise=np.zeros((3, 3))), ValueError, "noise must have shape"),
        (lambda m: m.generate(class_label=1000), ValueError, r"class_label must be in 0\.\.999"),
        (lambda m: m.generate(condition={"depth": np.zeros((8, 8)), "normals": np.zeros((8, 8, 3))}), ValueError, "exactly one"),
        (lambda m: m.generate(condition={"lidar": np.zeros((8, 8))}), ValueError, "unknown condition 'lidar'"),
        (lambda m: m.generate(condition={"normals": np.zeros((8, 8))}), ValueError, "condition\\['normals'\\]"),
        # bounds that keep the sampler finite in float32 (1e39 overflowed to black maps with no error)
        (lambda m: m.generate(class_label=1, cfg_scale=1e39), ValueError, r"cfg_scale must be a finite number in 0\.\.100"),
        (lambda m: m.generate(class_label=1, cfg_scale=True), ValueError, "cfg_scale"),
        (lambda m: m.generate(class_label=1, noise=np.full((16, 4, 4), 3e38, np.float32)), ValueError, "standard normal"),
        (lambda m: m.perceive(_image(), seed=1.5), ValueError, "seed must be an integer"),
        (lambda m: m.perceive(_image(), seed=True), ValueError, "seed must be an integer"),
        (lambda m: m.generate(class_label=1, seed=-1), ValueError, "seed must be in 0"),
        (lambda m: m.generate(class_label=1, seed=2**70), ValueError, "seed must be in 0"),
        # condition maps: bounded size, segments and range (an id per pixel took minutes; 1e308 became NaN)
        (lambda m: m.generate(condition={"segmentation": np.arange(3600).reshape(60, 60)}), ValueError, "3600 segments, more than 256"),
        (lambda m: m.generate(condition={"depth": np.zeros((4097, 4097), np.float32)}), ValueError, "over the limit"),
        (lambda m: m.generate(condition={"depth": np.array([[1e308, -1e308], [0.0, 1.0]])}), ValueError, "spans more than"),
        (lambda m: m.generate(condition={"normals": np.full((8, 8, 3), 1e300)}), ValueError, "beyond float32"),
        (lambda m: m.perceive(_image(), tasks=None), ValueError, "tasks must be task names"),
        (lambda m: m.perceive(_image(), tasks="depth,albedo"), ValueError, r"unknown tasks \['albedo'\]"),
        (lambda m: m.stream([_image()], realtime="no"), ValueError, "realtime must be True, False or None"),
    ],
)
def test_bad_input_names_the_problem(model, call, error, message):
    with pytest.raises(error, match=message):
        call(model)


def test_a_task_string_is_one_task_or_a_comma_separated_list(model):
    one = model.perceive(_image(), tasks="depth", seed=0, steps=1)
    assert one.depth is not None and one.normals is None and one.segmentation is None
    two = model.perceive(_image(), tasks="depth, normals", seed=0, steps=1)
    assert two.depth is not None and two.normals is not None and two.segmentation is None


def test_missing_or_broken_bundle(tiny_bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json missing"):
        mmgen_edge.load(tmp_path / "nothing")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "vae_encoder.onnx").unlink()
    with pytest.raises(BundleError, match="vae_encoder.onnx is listed in the manifest but missing"):
        mmgen_edge.load(broken)
    with pytest.raises(ValueError, match="device"):
        mmgen_edge.load(tiny_bundle, device="tpu")
    for threads, message in ((10**6, "threads must be in 1..1024"), (0, "threads must be in"), (1.5, "threads must be an integer"), (True, "threads must be an integer")):
        with pytest.raises(ValueError, match=message):
            mmgen_edge.load(tiny_bundle, threads=threads)
    with pytest.raises(RuntimeError, match="no GPU backend"):
        mmgen_edge.load(tiny_bundle, device="cuda")


def test_cli_perceive_generate_doctor(tiny_bundle, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), _image(36, 44))
    assert cli_main(["perceive", str(photo), "--bundle", str(tiny_bundle), "--out", str(tmp_path / "p"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report[0]["outputs"]) == {"depth", "normals", "segmentation"}
    depth_png = cv2.imread(report[0]["outputs"]["depth"])
    assert depth_png.shape == (36, 44, 3)
    assert cli_main(["generate", "--bundle", str(tiny_bundle), "--class-label", "2", "--num", "2", "--out", str(tmp_path / "g"), "--json"]) == 0
    assert [s["seed"] for s in json.loads(capsys.readouterr().out)] == [0, 1]
    assert cli_main(["doctor", "--bundle", str(tiny_bundle), "--json"]) == 0
    doctor = json.loads(capsys.readouterr().out)
    # a CPU-only machine: ORT CPU, or OpenVINO where the openvino extra is installed (auto prefers it on CPUs)
    cpu_backends = {"ort-cpu"} if importlib.util.find_spec("openvino") is None else {"openvino-fp32", "openvino-bf16"}
    assert doctor["bundle"]["backend"] in cpu_backends and "CPUExecutionProvider" in doctor["onnxruntime_providers"]
    assert doctor["bundle"]["loads"] is True and "problem" not in doctor["bundle"]
    assert cli_main(["perceive", str(tmp_path / "missing.png"), "--bundle", str(tiny_bundle)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_model_stream_and_cli_stream_to_video(model, tiny_bundle, tmp_path, capsys):
    from mmgen_edge.sdk.stream import write_video

    video = tmp_path / "in.mp4"
    write_video([np.full((32, 32, 3), 10 * i, np.uint8) for i in range(6)], video, fps=10)
    with model.stream(video, tasks=("depth",)) as stream:
        frames = list(stream)
    assert [f.frame_index for f in frames] == list(range(6))
    assert all(f.result.depth.shape == (32, 32) for f in frames)
    out = tmp_path / "out.mp4"
    assert cli_main(["stream", str(video), "--bundle", str(tiny_bundle), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 6 and summary["dropped"] == [0]
    capture = cv2.VideoCapture(str(out))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6 and int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 32 * 4


def test_cli_stream_reports_a_video_that_ends_early(tiny_bundle, corrupt_video, capsys):
    from conftest import CORRUPT_VIDEO_FRAMES

    assert cli_main(["stream", str(corrupt_video), "--bundle", str(tiny_bundle), "--tasks", "depth", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    read = summary["captured"][0]
    assert 0 < read < CORRUPT_VIDEO_FRAMES and summary["frames"] == read
    assert summary["expected"] == [CORRUPT_VIDEO_FRAMES]
    assert summary["warnings"] == [
        f"source {corrupt_video} ended early: {read} of {CORRUPT_VIDEO_FRAMES} frames read (the container announces "
        f"{CORRUPT_VIDEO_FRAMES}); it is probably truncated or corrupt after frame {read}"
    ]
    assert cli_main(["stream", str(corrupt_video), "--bundle", str(tiny_bundle), "--tasks", "depth"]) == 0
    text = capsys.readouterr().out
    assert f"expected=[{CORRUPT_VIDEO_FRAMES}]" in text and f"warning: source {corrupt_video} ended early" in text


def test_cli_build_explains_what_is_missing(tiny_bundle, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the missing-package message cannot be shown")
    assert cli_main(["build", str(tiny_bundle), "--fp16"]) == 2
    assert "pip install 'mmgen-edge[tensorrt]'" in capsys.readouterr().err
    assert cli_main(["build", str(tiny_bundle), "--int8"]) == 2
    assert "needs a calibrated bundle" in capsys.readouterr().err


def test_build_names_a_cpu_calibrated_bundle(tiny_bundle, tmp_path, capsys):
    import json
    import shutil

    copy = shutil.copytree(tiny_bundle, tmp_path / "cpu-int8")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["calibration"] = {"target": "cpu", "method": "minmax"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert cli_main(["build", str(copy), "--int8"]) == 2
    assert "calibrated for the CPU" in capsys.readouterr().err


def test_the_remote_client_bounds_the_seed_like_the_local_model():
    from mmgen_edge.sdk.protocol import MAX_SEED
    from mmgen_edge.sdk.remote import RemoteModel

    assert RemoteModel._sampling(None, MAX_SEED, None)["seed"][0, 0] == MAX_SEED
    for bad in (MAX_SEED + 1, 2**64, -1, 1.5, True):
        with pytest.raises(ValueError, match="seed must be"):
            RemoteModel._sampling(None, bad, None)


def test_the_remote_client_bounds_its_timeouts_before_it_connects():
    """inf overflowed the microsecond deadline (OverflowError) and 1e300 reached Triton as a garbled value."""
    from mmgen_edge.sdk.remote import MAX_TIMEOUT_S, RemoteModel, check_timeout

    assert check_timeout(MAX_TIMEOUT_S, "timeout") == MAX_TIMEOUT_S and check_timeout(np.float32(0.5), "t") == 0.5
    for bad in (float("inf"), float("nan"), 1e300, MAX_TIMEOUT_S * 2, 0, -1.0, True, "60"):
        with pytest.raises(ValueError, match=r"timeout must be"):
            RemoteModel("grpc://127.0.0.1:1", timeout=bad)
        with pytest.raises(ValueError, match=r"connect_timeout must be"):
            RemoteModel("grpc://127.0.0.1:1", connect_timeout=bad)


def test_a_condition_that_is_not_a_mapping_and_noise_that_is_not_real_are_refused_by_name():
    from mmgen_edge.sdk.api import generation_request, noise_array

    depth = np.ones((32, 32), np.float32)
    for condition in ([("depth", depth)], ("depth", depth), "depth"):
        with pytest.raises(ValueError, match="condition must be a mapping"):
            generation_request(32, 4, condition=condition)
    shape = (1, 16, 4, 4)
    for bad in (np.ones(shape, np.complex64), np.ones(shape, bool), np.full(shape, "1")):
        with pytest.raises(ValueError, match=f"noise must be a real float array, got dtype {bad.dtype}"):
            noise_array(bad, shape)
    assert noise_array(np.zeros(shape, np.float64), shape).dtype == np.float32  # real floats are still taken
