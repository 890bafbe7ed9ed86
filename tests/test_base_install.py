"""The base install (``pip install mmgen-edge``, no extras): runtime, SDK and CLI on a bundle exported elsewhere.

Nothing here imports torch, onnx or diffusers. CI's second stage runs the whole suite in a venv with the base
install only (``MMGEN_EDGE_BASE_INSTALL=1``, ``MMGEN_EDGE_TEST_BUNDLE`` = a bundle exported by the first stage);
in the full install these tests run on the tiny bundle.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

import mmgen_edge
from mmgen_edge import cli
from mmgen_edge.runtime.backend import BackendKind, choose_backend, detect_environment, open_runners
from mmgen_edge.runtime.manifest import BundleError, read_manifest
from mmgen_edge.runtime.sampler import SamplerConfig, SamplerKind, euler_update, step_timesteps

BASE_INSTALL = os.environ.get("MMGEN_EDGE_BASE_INSTALL") == "1"
CHECKOUT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-P", "-m", "mmgen_edge.cli"]  # -P: the installed package, not the checkout's folder


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=CHECKOUT)


@pytest.mark.skipif(not BASE_INSTALL, reason="only meaningful in the base-install venv (MMGEN_EDGE_BASE_INSTALL=1)")
def test_base_install_has_no_heavy_dependencies():
    heavy = [name for name in ("torch", "onnx", "diffusers", "safetensors", "pytriton") if importlib.util.find_spec(name)]
    assert heavy == [], f"the base install pulled in {heavy}"
    package = Path(mmgen_edge.__file__).resolve().parent
    assert "site-packages" in package.parts and package != CHECKOUT / "mmgen_edge", f"tests must run against the installed wheel, not {package}"


def test_manifest_verifies_and_detects_corruption(runtime_bundle, tmp_path):
    manifest = read_manifest(runtime_bundle, verify="full")
    assert manifest.modalities[0] == "rgb" and len(manifest.modalities) == 4
    copy = shutil.copytree(runtime_bundle, tmp_path / "bundle")
    graph = copy / manifest.graphs["vae_decoder"].file
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    read_manifest(copy, verify="size")  # same size: only the hash can tell
    with pytest.raises(BundleError, match="vae_decoder"):
        read_manifest(copy, verify="full")


def test_runner_shapes_follow_the_manifest(runtime_bundle):
    manifest = read_manifest(runtime_bundle, verify="size")
    choice = choose_backend(manifest, detect_environment(), "ort-cpu", runtime_bundle)
    assert choice.kind is BackendKind.ORT_CPU
    runners = open_runners(runtime_bundle, manifest, choice, graphs=("vae_encoder",))
    try:
        size = manifest.model.resolution
        image = np.zeros((2, 3, size, size), np.float32)
        (latent,) = runners["vae_encoder"].infer({"image": image}).values()
        assert latent.shape == (2, manifest.latent.channels_per_modality, *manifest.latent_shape(2)[2:])
        assert np.isfinite(latent).all()
    finally:
        for runner in runners.values():
            runner.deactivate()


def test_sampler_maths_on_numpy():
    config = SamplerConfig(kind=SamplerKind.EULER, num_steps=4)
    schedule = config.timesteps()
    np.testing.assert_allclose(schedule, np.linspace(1, 0, 5), atol=1e-7)
    t = step_timesteps(0.75, batch=2, num_modalities=4, condition_index=1, condition_t=0.005)
    assert t.shape == (2, 4) and (t[:, 1] == np.float32(0.005)).all() and (t[:, [0, 2, 3]] == 0.75).all()
    x = np.ones((2, 16, 2, 2), np.float32)
    v = np.full_like(x, 2.0)
    out = euler_update(x, v, t, step_timesteps(0.5, 2, 4, 1, 0.005))
    np.testing.assert_allclose(out[:, 4:8], x[:, 4:8])  # the held condition slot does not move
    np.testing.assert_allclose(out[:, :4], 1 + (0.5 - 0.75) * 2.0)


def test_perceive_is_deterministic_per_seed(runtime_bundle):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with mmgen_edge.load(runtime_bundle, backend="ort-cpu") as model:
        a = model.perceive(image, steps=2, seed=3)
        b = model.perceive(image, steps=2, seed=3)
        c = model.perceive(image, steps=2, seed=4)
    assert a.depth.shape == (48, 64) and a.normals.shape == (48, 64, 3) and a.segmentation.labels.shape == (48, 64)
    assert np.isfinite(a.depth).all() and np.isfinite(a.normals).all()
    np.testing.assert_array_equal(a.depth, b.depth)
    assert not np.array_equal(a.depth, c.depth)


def test_cli_help_and_unknown_command():
    done = run_cli("--help")
    assert done.returncode == 0
    for name in cli.COMMANDS:
        assert name in done.stdout
    done = run_cli("no-such-command")
    assert done.returncode == 2 and "unknown command 'no-such-command'" in done.stderr


def test_cli_doctor_perceive_generate_stream(runtime_bundle, tmp_path):
    done = run_cli("doctor", "--bundle", str(runtime_bundle), "--json")
    assert done.returncode == 0, done.stderr
    # a CPU-only machine: ORT CPU, or OpenVINO where the openvino extra is installed (auto prefers it on CPUs)
    cpu_backends = {"ort-cpu"} if importlib.util.find_spec("openvino") is None else {"openvino-fp32", "openvino-bf16"}
    assert json.loads(done.stdout)["bundle"]["backend"] in cpu_backends

    photo = tmp_path / "a" / "photo.png"
    photo.parent.mkdir()
    cv2.imwrite(str(photo), np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    done = run_cli("perceive", str(photo), "--bundle", str(runtime_bundle), "--steps", "1", "--out", str(tmp_path / "p"), "--json")
    assert done.returncode == 0, done.stderr
    outputs = json.loads(done.stdout)[0]["outputs"]
    assert set(outputs) == {"depth", "normals", "segmentation"}
    assert cv2.imread(outputs["depth"]).shape[:2] == (40, 56)

    done = run_cli("generate", "--bundle", str(runtime_bundle), "--class-label", "1", "--steps", "1", "--out", str(tmp_path / "g"), "--json")
    assert done.returncode == 0, done.stderr
    assert Path(json.loads(done.stdout)[0]["outputs"]["rgb"]).is_file()

    video = tmp_path / "in.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    for i in range(4):
        writer.write(np.full((48, 64, 3), 40 * i, np.uint8))
    writer.release()
    done = run_cli("stream", str(video), "--bundle", str(runtime_bundle), "--steps", "1", "--out", str(tmp_path / "o.mp4"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["frames"] == 4 and (tmp_path / "o.mp4").stat().st_size > 0


def test_cli_outputs_never_replace_inputs_and_a_broken_bundle_is_named(runtime_bundle, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for name in ("x.png", "x_depth.png"):  # the second is the user's own image, not an output
        cv2.imwrite(str(folder / name), rng.integers(0, 256, (24, 24, 3), dtype=np.uint8))
    before = (folder / "x_depth.png").read_bytes()
    done = run_cli("perceive", str(folder / "x.png"), str(folder / "x_depth.png"), "--bundle", str(runtime_bundle), "--out", str(folder))
    assert done.returncode == 2 and "would overwrite the input" in done.stderr, done.stderr
    assert (folder / "x_depth.png").read_bytes() == before and not (folder / "x_normals.png").exists()

    video = tmp_path / "in.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 24))
    for i in range(3):
        writer.write(np.full((24, 32, 3), 60 * i, np.uint8))
    writer.release()
    original = video.read_bytes()
    for out, message in ((video, "would destroy the input"), (tmp_path / "s.png", "give a video file name")):
        done = run_cli("stream", str(video), "--bundle", str(runtime_bundle), "--out", str(out))
        assert done.returncode == 2 and message in done.stderr, done.stderr
    assert video.read_bytes() == original and not (tmp_path / "s.png").exists()

    assert run_cli("doctor", "--bundle", str(tmp_path / "nothing")).returncode == 1  # a named bundle that will not load
    edited = tmp_path / "edited"
    shutil.copytree(runtime_bundle, edited)
    manifest = json.loads((edited / "manifest.json").read_text())
    manifest["model"]["modalities"] = ["rgb", "depht", "normal", "mask"]
    (edited / "manifest.json").write_text(json.dumps(manifest))
    done = run_cli("perceive", str(folder / "x.png"), "--bundle", str(edited), "--out", str(tmp_path / "o"))
    assert done.returncode == 2 and "unknown modalities ['depht']" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_cli_names_the_missing_extra(tmp_path, monkeypatch, capsys):
    """A subcommand whose extra is missing names the extra and exits 2, with no traceback."""
    (tmp_path / "needs_a_missing_extra.py").write_text(textwrap.dedent("""
        import mmgen_edge_probe_missing_package  # stands for torch on a base install
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "probe", cli.Command("needs_a_missing_extra", "probe", "export"))
    monkeypatch.setitem(cli.EXTRA_OF_PACKAGE, "mmgen_edge_probe_missing_package", "export")
    assert cli.main(["probe"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'mmgen-edge[export]'" in err and "Traceback" not in err


def test_a_missing_module_names_the_commands_own_extra_when_it_provides_it():
    """``build`` needs onnx, which its tensorrt extra lists: the hint names that extra (installing export would pull
    torch and diffusers for nothing); a module outside the command's extra names the extra providing it."""
    assert {"tensorrt", "cuda", "onnx"} <= cli.modules_of_extra("tensorrt")
    onnx_missing = ModuleNotFoundError("No module named 'onnx'", name="onnx")
    assert "pip install 'mmgen-edge[tensorrt]'" in cli.missing_extra_message(onnx_missing, "build")
    assert "pip install 'mmgen-edge[export]'" in cli.missing_extra_message(onnx_missing, "calibrate")
    matplotlib_missing = ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    assert "pip install 'mmgen-edge[dev]'" in cli.missing_extra_message(matplotlib_missing, "bench")
    assert cli.missing_extra_message(ModuleNotFoundError("x", name="yaml"), "build") is None


@pytest.mark.skipif(not BASE_INSTALL, reason="the real missing extras exist only in the base-install venv")
@pytest.mark.parametrize(
    "args, extra",
    [(["convert", "x.pt", "--out", "m"], "export"), (["export", "m", "--vae", "v", "--out", "b"], "export"),
     (["calibrate", "b", "--data", "demo:2", "--out", "c"], "export"), (["serve"], "serve"), (["build", "b"], "tensorrt")],
)  # fmt: skip
def test_cli_on_the_base_install_names_each_missing_extra(args, extra):
    done = run_cli(*args)
    assert done.returncode == 2
    assert f"pip install 'mmgen-edge[{extra}]'" in done.stderr and "Traceback" not in done.stderr


def test_output_names_never_collide():
    from mmgen_edge.commands.perceive import output_stems

    assert output_stems(["a/x.png", "b/x.png", "c/x.jpg", "x_2.png", "y.png"]) == ["x", "x_3", "x_4", "x_2", "y"]
    assert len(set(output_stems([f"d{i}/frame.png" for i in range(50)]))) == 50


def test_stream_tiles_are_produced_one_at_a_time():
    """The CLI hands each tile to the video writer as it comes: nothing accumulates, however long the stream."""
    from types import SimpleNamespace

    from mmgen_edge.commands.perceive import _stream_tiles

    pulled = []

    def frames():
        for i in range(1000):
            pulled.append(i)
            result = SimpleNamespace(rgb=None, depth=np.zeros((4, 6), np.float32), normals=None, segmentation=None)
            yield SimpleNamespace(image=np.zeros((4, 6, 3), np.uint8), result=result, latency=0.01)

    latencies: list[float] = []
    tiles = _stream_tiles(frames(), latencies, SimpleNamespace(update=lambda n: None), show=False, max_frames=None)
    first = next(tiles)
    assert first.shape == (4, 12, 3) and pulled == [0]
    for _ in range(9):
        next(tiles)
    assert len(pulled) == 10 and len(latencies) == 10


def test_cli_perceive_same_names_in_two_folders(runtime_bundle, tmp_path):
    for folder, value in (("a", 40), ("b", 200)):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "x.png"), np.full((32, 32, 3), value, np.uint8))
    out = tmp_path / "out"
    done = run_cli("perceive", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "--bundle",
                   str(runtime_bundle), "--steps", "1", "--tasks", "depth", "--out", str(out), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = [entry["outputs"]["depth"] for entry in json.loads(done.stdout)]
    assert len(set(written)) == 2 and all(Path(p).is_file() for p in written)


@pytest.mark.parametrize("bad", [True, 0, -1, 251, 2.0, "2", None])
def test_steps_must_be_an_integer_in_range(bad):
    from mmgen_edge.runtime.sampler import MAX_STEPS, check_steps

    assert MAX_STEPS == 250
    if bad is None:
        return
    with pytest.raises(ValueError, match="steps must be"):
        check_steps(bad)


def test_numpy_integers_are_integers_and_bools_are_not(runtime_bundle):
    from mmgen_edge.runtime.sampler import check_integer, check_steps

    assert check_steps(np.int64(2)) == 2 and isinstance(check_steps(np.int64(2)), int)
    with pytest.raises(ValueError, match="class_label must be an integer"):
        check_integer(True, "class_label", 0, 11)
    with mmgen_edge.load(runtime_bundle, backend="ort-cpu", verify="size") as model:
        with pytest.raises(ValueError, match="class_label must be an integer"):
            model.generate(class_label=True, steps=1, seed=0)
        with pytest.raises(ValueError, match="steps must be in 1..250"):
            model.perceive(np.zeros((8, 8, 3), np.uint8), steps=0)
        out = model.perceive(np.zeros((8, 8, 3), np.uint8), steps=np.int64(1), tasks=("depth",))
        assert out.depth.shape == (8, 8)
    with pytest.raises(ValueError, match="steps must be in 1..250"):
        mmgen_edge.load(runtime_bundle, backend="ort-cpu", verify="size", steps=0)


def test_cli_prints_validation_errors_readably(runtime_bundle):
    done = run_cli("generate", "--bundle", str(runtime_bundle), "--steps", "0", "--out", "/tmp/never")
    assert done.returncode == 2 and "steps must be in 1..250" in done.stderr and "Traceback" not in done.stderr


def test_describe_error_formats_pydantic_errors():
    from mmgen_edge.runtime.sampler import SamplerConfig

    with pytest.raises(ValueError) as info:
        SamplerConfig(num_steps=0)
    assert cli.describe_error(info.value) == "num_steps: Input should be greater than or equal to 1 (got 0)"


def test_oversized_images_are_refused_from_the_header(tmp_path):
    """A 20000 x 20000 PNG of a few hundred KB is refused before decoding: no multi-GB allocation."""
    import tracemalloc
    import zlib

    from mmgen_edge.sdk.images import MAX_INPUT_PIXELS, load_image

    width = height = 20000
    row = b"\x00" + bytes(width * 3)
    data = zlib.compress(row * height, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    bomb = tmp_path / "bomb.png"
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    assert bomb.stat().st_size < 5_000_000
    tracemalloc.start()
    with pytest.raises(ValueError, match="over the limit of 16.8"):
        load_image(bomb)
    assert tracemalloc.get_traced_memory()[1] < 50_000_000
    tracemalloc.stop()
    with pytest.raises(ValueError, match="resize it first"):
        load_image(np.zeros((4097, 4096, 3), np.uint8))
    # beyond what Pillow opens at all: the header's own size is named, not a made-up one
    huge = tmp_path / "huge.png"
    header = (100_000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    with pytest.raises(ValueError) as info:
        load_image(huge, name="condition")
    assert f"condition {huge}: over the limit of 16.8 megapixels" in str(info.value)
    assert "Image size (10000000000 pixels)" in str(info.value) and "16777217" not in str(info.value)
    assert load_image(np.zeros((4096, 4096), np.uint8)).shape == (4096, 4096, 3)
    assert MAX_INPUT_PIXELS == 4096 * 4096


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["graphs"]["vae_decoder"].update(file="../elsewhere.onnx"), "plain relative path"),
        (lambda m: m["graphs"]["vae_decoder"].update(file="/tmp/elsewhere.onnx"), "plain relative path"),
        (lambda m: m["graphs"]["vae_decoder"].update(file="unlisted.onnx"), "not listed"),
        (lambda m: m["files"][0].update(path="sub/../../x.onnx"), "plain relative path"),
    ],
)
def test_manifest_names_only_listed_files_inside_the_bundle(runtime_bundle, tmp_path, edit, message):
    copy = shutil.copytree(runtime_bundle, tmp_path / "bundle")
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(copy / manifest["graphs"]["vae_encoder"]["file"], copy / "unlisted.onnx")
    for verify in ("full", "size", "none"):
        with pytest.raises(BundleError, match=message):
            read_manifest(copy, verify=verify)


def test_symbolic_link_out_of_the_bundle_and_unknown_verify_are_refused(runtime_bundle, tmp_path):
    copy = shutil.copytree(runtime_bundle, tmp_path / "bundle")
    manifest = read_manifest(copy, verify="none")
    target = copy / manifest.graphs["vae_decoder"].file
    outside = tmp_path / "outside.onnx"
    shutil.move(target, outside)
    target.symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle"):
        read_manifest(copy, verify="size")
    with pytest.raises(ValueError, match="verify must be one of full, size, none"):
        read_manifest(runtime_bundle, verify="ful")
    with pytest.raises(ValueError, match="verify must be one of"):
        mmgen_edge.load(runtime_bundle, verify="sha256")


def test_tasks_are_known_and_named_once(runtime_bundle):
    with mmgen_edge.load(runtime_bundle, backend="ort-cpu", verify="size") as model:
        with pytest.raises(ValueError, match="at most once; repeated: \\['depth'\\]"):
            model.perceive(np.zeros((8, 8, 3), np.uint8), tasks=("depth", "depth"), steps=1)
        with pytest.raises(ValueError, match="unknown tasks \\['depth2'\\]"):
            model.perceive(np.zeros((8, 8, 3), np.uint8), tasks=("depth2",), steps=1)


@pytest.mark.skipif(not BASE_INSTALL, reason="the export extra is missing only in the base-install venv")
def test_demo_says_it_needs_the_export_extra_the_first_time(tmp_path):
    env = {**os.environ, "MMGEN_EDGE_BUNDLE": str(tmp_path / "not-yet-exported")}  # the demo bundle, not exported yet
    done = subprocess.run([*CLI, "demo", "--out", str(tmp_path / "demo")], capture_output=True, text=True, timeout=120,
                          cwd=CHECKOUT, env=env)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "must be exported once, which needs the export extra: pip install torch==2.13.0 && pip install 'mmgen-edge[export]'" in done.stderr


def test_cpu_sessions_do_not_busy_wait_between_calls(runtime_bundle):
    """The pipeline's CPU sessions run one after another on the same cores; a session whose idle threads spin
    starves the next one (a demo frame took 1.4x as long), so every CPU session is created with spinning off."""
    from mmgen_edge.runtime.onnxruntime_runner import SPINNING_KEY

    with mmgen_edge.load(runtime_bundle, backend="ort-cpu", verify="size") as model:
        sessions = {name: runner.session for name, runner in model.pipeline.runners.items()}
    assert set(sessions) == {"vae_encoder", "conditioning", "denoiser_cached", "vae_decoder"}
    for name, session in sessions.items():
        assert session.get_session_options().get_session_config_entry(SPINNING_KEY) == "0", name


def test_a_missing_default_bundle_names_the_ways_to_give_one(tmp_path, monkeypatch):
    """Without a bundle (a base install away from a clone), the error names --bundle / MMGEN_EDGE_BUNDLE first and
    says the demo bundle needs the export extra; a named bundle that is missing gets no such advice."""
    import mmgen_edge

    monkeypatch.setenv("MMGEN_EDGE_BUNDLE", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError) as info:
        mmgen_edge.load()
    message = str(info.value)
    assert f"no bundle at {tmp_path / 'nothing'}" in message
    assert "--bundle DIR" in message and "MMGEN_EDGE_BUNDLE=DIR" in message and "mmgen-edge[export]" in message
    with pytest.raises(FileNotFoundError) as info:
        mmgen_edge.load(tmp_path / "named")
    assert "--bundle" not in str(info.value)


class _HugeCapture:
    """A cv2.VideoCapture stand-in whose stream announces 20000 x 20000 frames; decoding one fails the test."""

    released = False

    def __init__(self, target):
        self.target = target

    def isOpened(self):
        return True

    def get(self, prop):
        import cv2

        return {cv2.CAP_PROP_FRAME_WIDTH: 20000.0, cv2.CAP_PROP_FRAME_HEIGHT: 20000.0}.get(prop, 0.0)

    def read(self):
        raise AssertionError("a frame was decoded before the size was checked")

    grab = read

    def release(self):
        type(self).released = True


def test_every_image_and_video_reader_checks_the_size_before_decoding(tmp_path, monkeypatch):
    """The header check failed open: a format Pillow cannot read (Radiance HDR) was decoded by OpenCV whatever its
    size (4 GB for 16384 x 16384), calibration / distillation / gate folders read files with no check at all, and
    video frames were decoded before any size check."""
    import zlib

    import cv2

    from mmgen_edge.calibration import sources
    from mmgen_edge.sdk import frame_sources
    from mmgen_edge.sdk.images import load_image

    hdr = tmp_path / "scene.hdr"
    assert cv2.imwrite(str(hdr), np.ones((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"is not an image whose header can be read \(PNG, JPEG"):
        load_image(hdr)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")

    folder = tmp_path / "calibration"
    folder.mkdir()
    header = (20000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))
    with pytest.raises(sources.CalibrationSourceError, match="calibration image .*bomb.png.*over the limit of 16.8"):
        next(sources.iter_calibration_images(str(folder), limit=4))

    video = tmp_path / "drive.mp4"
    video.write_bytes(b"not decoded")
    monkeypatch.setattr(sources.cv2, "VideoCapture", _HugeCapture)
    with pytest.raises(sources.CalibrationSourceError, match=r"video .*drive.mp4: 20000x20000 is 400.0 megapixels"):
        next(sources.iter_calibration_images(str(video), limit=4))
    assert _HugeCapture.released
    _HugeCapture.released = False
    monkeypatch.setattr(frame_sources.cv2, "VideoCapture", _HugeCapture)
    with pytest.raises(ValueError, match=r"drive.mp4: 20000x20000 is 400.0 megapixels"):
        frame_sources._open_capture(str(video), f"video file {video}")
    assert _HugeCapture.released

    with pytest.raises(sources.CalibrationSourceError, match="expected demo:N"):
        next(sources.iter_calibration_images("demo:\u00b2", limit=4))  # a Unicode digit int() refuses


def test_a_damaged_jpeg_is_refused_and_perceive_checks_every_input_before_writing(runtime_bundle, tmp_path, capsys):
    """A truncated JPEG was decoded into a half-grey image (exit 0, only libjpeg's warning); and with one bad input
    among several, perceive wrote the good ones' maps before it failed."""
    import cv2

    from mmgen_edge.cli import main
    from mmgen_edge.sdk.images import load_image

    rng = np.random.default_rng(0)
    good = tmp_path / "good.jpg"
    assert cv2.imwrite(str(good), cv2.GaussianBlur((rng.random((96, 128, 3)) * 255).astype(np.uint8), (5, 5), 2))
    data = good.read_bytes()
    damaged = tmp_path / "damaged.jpg"
    damaged.write_bytes(data[: len(data) // 2])
    assert load_image(good).shape == (96, 128, 3)
    with pytest.raises(ValueError, match=r"damaged.jpg is a damaged JPEG \(image file is truncated"):
        load_image(damaged)
    from PIL import Image

    mpo = tmp_path / "phone.jpg"  # a JPEG with an MPF segment, as phones write: Pillow calls it MPO
    frames = [Image.fromarray(load_image(good)), Image.fromarray(load_image(good)[::-1].copy())]
    frames[0].save(mpo, format="MPO", save_all=True, append_images=frames[1:])
    with Image.open(mpo) as im:
        assert im.format == "MPO"
    assert load_image(mpo).shape == (96, 128, 3)
    cut = tmp_path / "phone_cut.jpg"
    cut.write_bytes(mpo.read_bytes()[: mpo.stat().st_size // 3])
    with pytest.raises(ValueError, match="is a damaged JPEG"):
        load_image(cut)
    out = tmp_path / "out"
    assert main(["perceive", str(good), str(damaged), "--bundle", str(runtime_bundle), "--out", str(out)]) == 2
    assert "is a damaged JPEG" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_model_config_bounds_every_size_before_anything_is_built():
    """A config (or a checkpoint's args) declaring an absurd size built numpy / torch tensors of that size first."""
    from pydantic import ValidationError

    from mmgen_edge.config import MAX_TOKEN_WIDTH, ModelConfig

    xl = dict(depth=28, hidden_size=1152, num_heads=16, patch_size=2, resolution=256)
    assert ModelConfig(**xl).num_tokens == 256
    for field, value in (("hidden_size", 10**9), ("depth", 10**6), ("resolution", 2**16), ("num_classes", 2**40),
                         ("mlp_ratio", float("inf")), ("mlp_ratio", 0.0), ("projector_dim", 0)):  # fmt: skip
        with pytest.raises(ValidationError, match=field):
            ModelConfig(**{**xl, field: value})
    with pytest.raises(ValidationError, match=f"262144 tokens x hidden_size 1152 is over {MAX_TOKEN_WIDTH}"):
        ModelConfig(**{**xl, "resolution": 8192})
