"""The OpenVINO backend: where ``auto`` puts it, its precision rule (bf16 only where native, never a silent
downgrade), parity with ONNX Runtime FP32, the compiled-model cache, and bf16 behind the INT8 calibration's gate.

The choice tests use made-up OpenVINO facts and run everywhere; the ones that run OpenVINO skip without the
``openvino`` extra (CI's first stage installs it).
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import mmgen_edge
from mmgen_edge.runtime.backend import RUNTIME_GRAPHS, BackendChoice, BackendKind, Environment, choose_backend
from mmgen_edge.runtime.manifest import BundleError, read_manifest
from mmgen_edge.runtime.openvino_runner import (
    BLOB_INDEX,
    BUNDLE_CACHE_DIR,
    OpenVinoInfo,
    OpenVinoRunner,
    PrecisionUnavailable,
    cache_directory,
    cache_key,
    check_precision,
    detect_openvino,
    drop_unrecorded_blobs,
    graph_sha256,
    import_openvino,
    openvino_runners,
)
from mmgen_edge.runtime.pipeline import Pipeline

CPU = ("CPUExecutionProvider",)
AMX_CPU = OpenVinoInfo("2026.4.1", "Intel(R) Xeon(R) Platinum 8480+", ("WINOGRAD", "FP32", "BF16", "INT8", "BIN"))
PLAIN_CPU = OpenVinoInfo("2026.4.1", "Intel(R) Xeon(R) Processor @ 2.50GHz", ("WINOGRAD", "FP32", "INT8", "BIN"))
OPENVINO_REASON = "needs the openvino extra: pip install 'mmgen-edge[openvino]'"


@pytest.fixture(scope="module")
def manifest(runtime_bundle):
    return read_manifest(runtime_bundle, verify="size")


@pytest.fixture(scope="module")
def info() -> OpenVinoInfo:
    """This machine's OpenVINO facts; skips without the extra."""
    if importlib.util.find_spec("openvino") is None:
        pytest.skip(OPENVINO_REASON)
    detected = detect_openvino()
    assert detected is not None
    return detected


@pytest.fixture
def bundle_copy(runtime_bundle, tmp_path) -> Path:
    """A private copy of the runtime bundle (the cache tests write into it)."""
    return Path(shutil.copytree(runtime_bundle, tmp_path / "bundle", ignore=shutil.ignore_patterns("cache")))


# ------------------------------------------------------------------------------------------------ the choice


def test_auto_puts_openvino_after_gpu_backends_and_before_ort_cpu(manifest):
    amx = choose_backend(manifest, Environment(CPU, openvino=AMX_CPU))
    assert amx.kind == BackendKind.OPENVINO_BF16 and amx.openvino == AMX_CPU
    assert "native bf16" in amx.reason and "Platinum 8480+" in amx.describe()
    plain = choose_backend(manifest, Environment(CPU, openvino=PLAIN_CPU))
    assert plain.kind == BackendKind.OPENVINO_FP32
    assert "fp32, as this CPU has no native bf16" in plain.reason
    assert any(r.startswith("openvino-bf16: this CPU has no native bf16") for r in plain.rejected)
    gpu = Environment(("CUDAExecutionProvider", *CPU), openvino=AMX_CPU)
    assert choose_backend(manifest, gpu).kind == BackendKind.ORT_CUDA
    # without OpenVINO, ORT CPU as before, and one line says how to get OpenVINO
    none = choose_backend(manifest, Environment(CPU))
    assert none.kind == BackendKind.ORT_CPU and none.openvino is None
    assert "openvino-fp32: OpenVINO is not installed (install the openvino extra: pip install 'mmgen-edge[openvino]')" in none.rejected
    assert not any(r.startswith("openvino-bf16") for r in none.rejected)


def test_auto_leaves_an_ort_cpu_form_int8_bundle_to_onnx_runtime(manifest):
    """OpenVINO runs the CPU form's MatMulInteger / DynamicQuantizeLinear in float (6.2 ms against ORT's 3.6 ms on the
    demo step here): no choice picks it for such a bundle; a Q/DQ INT8 bundle (OpenVINO runs it int8) gets it."""
    cpu_form = manifest.model_copy(update={"calibration": {"target": "cpu"}})
    auto = choose_backend(cpu_form, Environment(CPU, openvino=AMX_CPU))
    assert auto.kind == BackendKind.ORT_CPU
    assert any(r.startswith("openvino-bf16: the bundle's INT8 is ONNX Runtime's CPU form") for r in auto.rejected)
    assert any(r.startswith("openvino-fp32: the bundle's INT8 is ONNX Runtime's CPU form") for r in auto.rejected)
    plain = choose_backend(cpu_form, Environment(CPU, openvino=PLAIN_CPU))  # the CPU's own reason stays first
    assert any(r.startswith("openvino-bf16: this CPU has no native bf16") for r in plain.rejected)
    qdq = manifest.model_copy(update={"calibration": {"target": "tensorrt"}})
    assert choose_backend(qdq, Environment(CPU, openvino=AMX_CPU)).kind == BackendKind.OPENVINO_BF16
    with pytest.raises(RuntimeError, match="openvino-bf16: the bundle's INT8 is ONNX Runtime's CPU form"):
        choose_backend(cpu_form, Environment(CPU, openvino=AMX_CPU), "openvino")


def test_requested_openvino_precisions(manifest):
    assert choose_backend(manifest, Environment(CPU, openvino=AMX_CPU), "openvino").kind == BackendKind.OPENVINO_BF16
    plain = choose_backend(manifest, Environment(CPU, openvino=PLAIN_CPU), "openvino")
    assert plain.kind == BackendKind.OPENVINO_FP32 and plain.reason.startswith("requested; OpenVINO 2026.4.1 on")
    fp32 = choose_backend(manifest, Environment(CPU, openvino=AMX_CPU), "openvino-fp32")
    assert fp32.kind == BackendKind.OPENVINO_FP32 and fp32.reason.endswith(": fp32")
    with pytest.raises(RuntimeError, match=r"openvino-bf16: this CPU has no native bf16 \(AVX512-BF16 or AMX\)"):
        choose_backend(manifest, Environment(CPU, openvino=PLAIN_CPU), "openvino-bf16")
    with pytest.raises(RuntimeError, match=r"pip install 'mmgen-edge\[openvino\]'"):
        choose_backend(manifest, Environment(CPU), "openvino")
    with pytest.raises(ValueError, match="choose auto, openvino or one of"):
        choose_backend(manifest, Environment(CPU), "openvino-fp16")


def test_precision_rule():
    check_precision(AMX_CPU, "bf16")
    check_precision(PLAIN_CPU, "fp32")
    check_precision(PLAIN_CPU, "bf16", emulated_bf16=True)
    with pytest.raises(RuntimeError, match=r"bf16 was requested but this CPU has no native bf16: .* lacks BF16"):
        check_precision(PLAIN_CPU, "bf16")
    with pytest.raises(ValueError, match=r"unknown OpenVINO precision 'fp16'"):
        check_precision(AMX_CPU, "fp16")


def test_missing_openvino_names_the_extra(runtime_bundle, manifest, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'mmgen-edge\[openvino\]'"):
        import_openvino()
    choice = BackendChoice(BackendKind.OPENVINO_FP32, "test", openvino=PLAIN_CPU)
    from mmgen_edge.runtime.backend import open_runners

    with pytest.raises(ImportError, match=r"mmgen-edge\[openvino\]"):
        open_runners(runtime_bundle, manifest, choice)


def test_cache_key_and_read_only_bundle(tmp_path, monkeypatch):
    key = cache_key("vae_decoder", PLAIN_CPU, "bf16", "0123456789abcdef" * 4)
    assert key == "vae_decoder.intel-r-xeon-r-processor-2-50ghz.ov2026.4.1.bf16.0123456789abcdef"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert cache_directory(bundle, key) == bundle / BUNDLE_CACHE_DIR / key and (bundle / BUNDLE_CACHE_DIR / key).is_dir()
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "cache").write_text("a file where the cache folder would go: the bundle cannot take a cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    assert cache_directory(blocked, key) == tmp_path / "user" / "mmgen-edge" / "openvino" / key
    assert (tmp_path / "user" / "mmgen-edge" / "openvino" / key).is_dir()


# --------------------------------------------------------------------------------------------- running it


def test_openvino_fp32_matches_onnxruntime(runtime_bundle, info):
    """Whole perceive calls through the SDK: OpenVINO fp32 = ORT fp32 (depth and normals), precision reported."""
    from mmgen_edge.samples.shapes.evaluate import held_out_scenes

    with mmgen_edge.load(runtime_bundle, backend="ort-cpu", verify="size") as ort_model:
        scenes = held_out_scenes(2, ort_model.resolution)
        ref = ort_model.perceive([s.rgb for s in scenes], steps=2, seed=0, return_latents=True)
    with mmgen_edge.load(runtime_bundle, backend="openvino-fp32", device="cpu", verify="size") as ov_model:
        assert ov_model.backend == "openvino-fp32"
        assert {r.backend for r in ov_model.pipeline.runners.values()} == {"openvino:CPU:fp32"}
        got = ov_model.perceive([s.rgb for s in scenes], steps=2, seed=0, return_latents=True)
        with pytest.raises(ValueError, match="vae_decoder.latent: dtype float64"):
            ov_model.pipeline.runners["vae_decoder"].infer({"latent": np.zeros((1, 4, 16, 16))})
        too_many = ov_model.manifest.dims["V"].max + 1
        latent = np.zeros((too_many, *ov_model.manifest.graphs["vae_decoder"].inputs[0].shape[1:]), np.float32)
        with pytest.raises(ValueError, match=f"V = {too_many} is outside the bundle's range"):
            ov_model.pipeline.runners["vae_decoder"].infer({"latent": latent})
    for r, g in zip(ref, got):
        assert g.backend == "openvino-fp32"
        assert np.abs(g.latents - r.latents).max() < 1e-4 * np.abs(r.latents).max()
        # the maps go through the decoder's uint8 images: at most a level apart, and almost never
        assert np.abs(g.depth - r.depth).max() < 0.01 and np.abs(g.depth - r.depth).mean() < 1e-4
        assert np.abs(g.normals - r.normals).max() < 0.02 and np.abs(g.normals - r.normals).mean() < 1e-4
    with pytest.raises(RuntimeError, match="no GPU backend is available"):
        mmgen_edge.load(runtime_bundle, backend="openvino-fp32", device="cuda", verify="size")


def test_live_graph_is_checked_against_the_manifest(runtime_bundle, manifest, info):
    graph = manifest.graphs["vae_decoder"]
    renamed = graph.model_copy(update={"inputs": (graph.inputs[0].model_copy(update={"name": "latents"}),)})
    runner = OpenVinoRunner(runtime_bundle, "vae_decoder", renamed, manifest.dims, "fp32", info, "0" * 64, cache=False)
    with pytest.raises(BundleError, match=r"input 'latents': in the manifest, not in the graph\n  - input 'latent': in the graph, not in the manifest"):
        runner.activate()
    retyped = graph.model_copy(update={"inputs": (graph.inputs[0].model_copy(update={"dtype": "int64"}),)})
    runner = OpenVinoRunner(runtime_bundle, "vae_decoder", retyped, manifest.dims, "fp32", info, "0" * 64, cache=False)
    with pytest.raises(BundleError, match="input 'latent': the graph's dtype is float32, the manifest's int64"):
        runner.activate()


def test_second_open_reuses_the_compiled_model(bundle_copy, info):
    manifest = read_manifest(bundle_copy)
    graph = manifest.graphs["vae_decoder"]
    key = cache_key("vae_decoder", info, "fp32", graph_sha256(manifest, graph))
    assert key.endswith(f".ov{info.version}.fp32.{manifest.file(graph.file).sha256[:16]}")

    def open_decoder() -> OpenVinoRunner:
        runner = openvino_runners(bundle_copy, manifest, ["vae_decoder"], "fp32", info)["vae_decoder"]
        assert isinstance(runner, OpenVinoRunner)
        return runner

    first = open_decoder()
    assert first.cache_dir == bundle_copy / BUNDLE_CACHE_DIR / key and not first.cache_hit
    blobs = {p: p.stat().st_mtime_ns for p in first.cache_dir.glob("*.blob")}
    assert blobs, f"no compiled model was written to {first.cache_dir}"
    second = open_decoder()
    assert second.cache_dir == first.cache_dir and second.cache_hit
    assert {p: p.stat().st_mtime_ns for p in second.cache_dir.glob("*.blob")} == blobs  # read, not rewritten
    latent = np.random.default_rng(0).standard_normal((2, *graph.inputs[0].shape[1:])).astype(np.float32)
    a, b = first.infer({"latent": latent})["image"], second.infer({"latent": latent})["image"]
    assert np.array_equal(a, b)
    read_manifest(bundle_copy, verify="full")  # the cache beside the graphs leaves the bundle valid
    for runner in (first, second):
        runner.deactivate()


def test_a_cache_blob_the_tool_did_not_record_is_replaced_and_a_linked_cache_is_never_used(bundle_copy, info, tmp_path, monkeypatch):
    """A bundle's compiled models are outside its manifest: blobs.json records what OpenVINO wrote here, and a blob
    it does not record as it is (changed, left by a killed compile, copied in alone) is deleted and compiled again in
    the same folder, never loaded in place of the checked graph. A cache folder that links out of the bundle sends
    the runner to the user's cache, with nothing written through the link."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    manifest = read_manifest(bundle_copy)
    graph = manifest.graphs["vae_decoder"]
    key = cache_key("vae_decoder", info, "fp32", graph_sha256(manifest, graph))
    folder = bundle_copy / BUNDLE_CACHE_DIR / key

    def open_decoder(bundle: Path = bundle_copy) -> OpenVinoRunner:
        runner = openvino_runners(bundle, manifest, ["vae_decoder"], "fp32", info)["vae_decoder"]
        runner.deactivate()
        return runner

    first = open_decoder()
    assert first.cache_dir == folder and (folder / BLOB_INDEX).is_file() and drop_unrecorded_blobs(folder) == []
    blob = next(folder.glob("*.blob"))
    compiled = blob.read_bytes()
    blob.write_bytes(compiled + b"tampered")  # changed after it was recorded
    (folder / "stray.blob").write_bytes(b"copied in from elsewhere")  # never recorded
    second = open_decoder()
    assert second.cache_dir == folder and not second.cache_hit  # compiled again, in place
    assert sorted(p.name for p in folder.glob("*.blob")) == [blob.name] and blob.read_bytes() != compiled + b"tampered"
    assert open_decoder().cache_hit  # and recorded again

    (folder / BLOB_INDEX).unlink()  # a compile killed before it recorded: its blob is not trusted
    assert drop_unrecorded_blobs(folder) == [blob.name] and not blob.exists()

    linked = tmp_path / "linked"
    shutil.copytree(bundle_copy, linked, ignore=shutil.ignore_patterns("cache"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (linked / "cache").symlink_to(outside, target_is_directory=True)
    runner = open_decoder(linked)
    assert runner.cache_dir == tmp_path / "user" / "mmgen-edge" / "openvino" / key and list(outside.iterdir()) == []



# ------------------------------------------------------------------------------------------- the accuracy gate


@pytest.mark.slow
def test_bf16_passes_the_calibration_gate(demo_bundle, info):
    """OpenVINO bf16 (every runtime graph; emulated where the CPU has no bf16) vs ORT FP32 on held-out scenes, with
    the INT8 calibration's gate and default thresholds."""
    from mmgen_edge.calibration.gate import GateThresholds, check_gate
    from mmgen_edge.calibration.measures import EVAL_SEED
    from mmgen_edge.samples.shapes.evaluate import evaluate_perception, held_out_scenes
    from mmgen_edge.sdk.api import MMGenModel

    manifest = read_manifest(demo_bundle, verify="size")
    scenes = held_out_scenes(manifest.max_batch, manifest.model.resolution)
    steps = manifest.sampler.num_steps
    with mmgen_edge.load(demo_bundle, backend="ort-cpu", verify="size") as model:
        fp32 = evaluate_perception(model, scenes, steps, seed=EVAL_SEED)
    try:
        runners = openvino_runners(demo_bundle, manifest, RUNTIME_GRAPHS, "bf16", info, emulated_bf16=not info.bf16)
    except PrecisionUnavailable as e:  # a CPU without AVX-512: OpenVINO compiles f32 and the runner refuses it
        pytest.skip(f"OpenVINO cannot run bf16 on this CPU, not even emulated: {e}")
    choice = BackendChoice(BackendKind.OPENVINO_BF16, f"gate test; {info.describe()}", openvino=info)
    with MMGenModel(Pipeline.from_runners(manifest, runners, choice)) as model:
        bf16 = evaluate_perception(model, scenes, steps, seed=EVAL_SEED)
    failures = check_gate(fp32, bf16, GateThresholds())
    assert failures == [], "\n".join(f.describe() for f in failures)
    assert fp32["depth_delta1"] > 0.8 and fp32["seg_miou"] > 0.4  # the fp32 side is the trained model, not noise
    changed = [k for k in ("depth_abs_rel", "normal_mean", "seg_miou") if fp32[k] != bf16[k]]
    assert changed, "bf16 gave bit-identical metrics: it did not run in bf16"


# ------------------------------------------------------------------------------------------------ INT8 bundles


@pytest.fixture(scope="module")
def int8_bundles(tiny_bundle, tmp_path_factory) -> dict[str, Path]:
    """The tiny bundle calibrated in both INT8 forms (speed-only calibrations: no gate)."""
    from extras import skip_without_export

    skip_without_export()
    from mmgen_edge.calibration.calibrate import calibrate_bundle

    root = tmp_path_factory.mktemp("openvino-int8")
    common = dict(num_samples=2, steps=(1,), eval_scenes=0, force=True, speed_runs=0, threads=1)
    calibrate_bundle(tiny_bundle, "demo:2", root / "qdq", target="tensorrt", **common)
    calibrate_bundle(tiny_bundle, "demo:2", root / "cpu", target="cpu", exclude=(), **common)
    return {"qdq": root / "qdq", "cpu": root / "cpu"}


def test_qdq_int8_bundle_runs_int8_on_openvino_and_the_cpu_form_is_refused(int8_bundles, info):
    """The Q/DQ INT8 bundle: its denoiser's quantized MatMuls run on int8 kernels (checked on the compiled model,
    reported in the backend) and agree with ONNX Runtime's run of the same bundle; the CPU form, which OpenVINO would
    run in float, is refused by the runner and by the backend choice."""
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    with mmgen_edge.load(int8_bundles["qdq"], backend="ort-cpu", verify="size") as ort_model:
        ref = ort_model.perceive(image, steps=2, seed=0, return_latents=True)
    with mmgen_edge.load(int8_bundles["qdq"], backend="openvino-fp32", verify="size") as ov_model:
        runners = ov_model.pipeline.runners
        assert runners["denoiser_cached"].backend == "openvino:CPU:int8+fp32"
        assert runners["denoiser_cached"].int8_layers > 0
        assert runners["conditioning"].backend == "openvino:CPU:fp32"  # stays FP32 in an INT8 bundle
        got = ov_model.perceive(image, steps=2, seed=0, return_latents=True)
    scale = np.abs(ref.latents).max()
    assert np.abs(got.latents - ref.latents).max() < 0.05 * scale, "OpenVINO's int8 run drifted from ORT's Q/DQ run"

    manifest = read_manifest(int8_bundles["cpu"], verify="size")
    with pytest.raises(PrecisionUnavailable, match="none of the INT8 graph denoiser_cached's MatMuls"):
        openvino_runners(int8_bundles["cpu"], manifest, ["denoiser_cached"], "fp32", info)
    with pytest.raises(RuntimeError, match="ONNX Runtime's CPU form"):
        mmgen_edge.load(int8_bundles["cpu"], backend="openvino", verify="size")


SIGNAL_AFTER_CLOSE = """
import os, signal, sys
import numpy as np
from mmgen_edge.runtime.pipeline import Pipeline
signal.signal(signal.SIGTERM, lambda signum, frame: print("handled", flush=True))
first = Pipeline(sys.argv[1], backend="openvino", threads=1)
second = Pipeline(sys.argv[1], backend="openvino", threads=1)
first.sample(np.zeros(first.latent_shape(1), np.float32))
first.close()  # closed in the order opened (not the reverse), graph by graph
second.close()
os.kill(os.getpid(), signal.SIGTERM)
print("alive", flush=True)
"""


def test_a_signal_after_closing_openvino_pipelines_reaches_its_handler(runtime_bundle, info):
    # OpenVINO's CPU plugin swaps the thread's signal stack per Core; one Core per runner, closed in any order but
    # the reverse, left it pointing at freed memory, and the next signal killed the process with SIGSEGV
    import subprocess

    done = subprocess.run([sys.executable, "-c", SIGNAL_AFTER_CLOSE, str(runtime_bundle)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["handled", "alive"]
