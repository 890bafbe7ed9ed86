"""The Triton model repository writer and its Python-backend (BLS) entry models, on CPU without Triton.

The BLS model runs against a stand-in for ``triton_python_backend_utils`` that acts like Triton for the written
repository: a BLS request is checked against the component model's config.pbtxt (name, inputs, data types, dims,
batch limit, reshape) and then runs that model's ``1/model.onnx`` with ONNX Runtime.
"""

from __future__ import annotations

import filecmp
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
pytest.importorskip("tritonclient", reason="parsing config.pbtxt needs tritonclient (the client or serve extra)")
from tritonclient.grpc import model_config_pb2  # noqa: E402

import mmgen_edge
from mmgen_edge.runtime.backend import RUNTIME_GRAPHS
from mmgen_edge.runtime.manifest import BundleError, DimRange, EngineEntry, file_entry, read_manifest, write_manifest
from mmgen_edge.sdk.api import GenerationRequest
from mmgen_edge.serve import triton_repo
from mmgen_edge.sdk.protocol import IMAGE_OUTPUTS, model_specs, read_text, text
from mmgen_edge.serve.triton_bls import BlsRunner, TritonPythonModel
from mmgen_edge.serve.triton_repo import component_model_name, write_model_repository
from triton_fakes import TYPE_TO_NUMPY, FakeTriton, fake_pb_utils, initialize_args, parse_config, type_name  # noqa: E402

FRONTS = ("mmgen_perceive", "mmgen_generate")
ENTRY_MODELS = ("mmgen_info", *FRONTS, "mmgen_perceive_batched", "mmgen_generate_batched")


@pytest.fixture(scope="module")
def manifest(tiny_bundle):
    return read_manifest(tiny_bundle)


@pytest.fixture(scope="module")
def repo(tiny_bundle, tmp_path_factory):
    return write_model_repository(tiny_bundle, tmp_path_factory.mktemp("triton") / "repo", instances=2)


@pytest.fixture(scope="module")
def local(tiny_bundle):
    with mmgen_edge.load(tiny_bundle, backend="ort-cpu") as model:
        yield model


# ------------------------------------------------------------------------------------------ repository layout
def test_layout_and_component_configs(repo, manifest, tiny_bundle):
    names = {component_model_name(g) for g in RUNTIME_GRAPHS} | set(ENTRY_MODELS)
    assert {p.name for p in repo.iterdir() if p.is_dir()} == names
    assert (repo / "README.md").is_file() and "pip install mmgen-edge" in (repo / "README.md").read_text()
    assert not list(repo.parent.glob(".repo.*")), "temporary folders left behind"
    for graph in RUNTIME_GRAPHS:
        entry = manifest.graphs[graph]
        model_dir = repo / component_model_name(graph)
        config = parse_config(model_dir)
        assert config.name == model_dir.name and config.backend == "onnxruntime" and not config.platform
        assert [(i.count, i.kind) for i in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]
        onnx = model_dir / "1" / "model.onnx"
        assert filecmp.cmp(onnx, tiny_bundle / entry.file, shallow=False)
        session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [s.name for s in entry.inputs]
        specs = {s.name: s for s in (*entry.inputs, *entry.outputs)}
        tensors = [*config.input, *config.output]
        assert [t.name for t in tensors] == [s.name for s in (*entry.inputs, *entry.outputs)]
        for tensor in tensors:
            spec = specs[tensor.name]
            assert TYPE_TO_NUMPY[type_name(tensor.data_type)] == np.dtype(spec.dtype)
            if graph == "denoiser_cached":  # mixes N and B, and cfg_scale is (1,): unbatched, -1 for every symbol
                assert tuple(tensor.dims) == tuple(-1 if isinstance(d, str) else d for d in spec.shape)
                continue
            assert tuple(tensor.dims) == (tuple(spec.shape[1:]) or (1,))
            assert tensor.HasField("reshape") == (len(spec.shape) == 1)  # (B,) travels as (B, 1)
            if tensor.HasField("reshape"):
                assert list(tensor.reshape.shape) == []
        symbol = {"vae_encoder": "N", "vae_decoder": "V", "conditioning": "B"}.get(graph)
        if symbol:
            assert config.max_batch_size == manifest.dims[symbol].max
            assert config.dynamic_batching.max_queue_delay_microseconds == 2000
        else:
            assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")


def test_entry_model_configs_follow_the_protocol(repo, manifest, tiny_bundle):
    specs = model_specs(manifest)
    for name in ENTRY_MODELS:
        spec, model_dir = specs[name.removesuffix("_batched")], repo / name
        config = parse_config(model_dir)
        assert config.name == name and config.backend == "python"
        instances = [(i.count, i.kind) for i in config.instance_group]
        if name in FRONTS:  # one request per execute, as many in flight as fill a batched model's batches (capped)
            assert config.max_batch_size == 1 and config.dynamic_batching.max_queue_delay_microseconds == 0
            assert config.parameters["batched_model"].string_value == f"{name}_batched"
            assert instances == [(4, model_config_pb2.ModelInstanceGroup.KIND_CPU)]  # max batch 4 x 2 instances, capped
        else:
            assert config.max_batch_size == spec.max_batch_size == manifest.max_batch
            assert config.HasField("dynamic_batching") == (name != "mmgen_info")
            assert "batched_model" not in config.parameters
            assert instances == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
        for tensors, wires in ((config.input, spec.inputs), (config.output, spec.outputs)):
            assert [t.name for t in tensors] == [w.name for w in wires]
            for tensor, wire in zip(tensors, wires):
                assert tuple(tensor.dims) == wire.shape
                want = "TYPE_STRING" if wire.triton_dtype == "BYTES" else f"TYPE_{wire.triton_dtype}"
                assert type_name(tensor.data_type) == want
                assert getattr(tensor, "optional", False) == wire.optional  # (outputs have no such field)
        assert config.parameters["manifest"].string_value == "manifest.json"
        assert filecmp.cmp(model_dir / "1" / "manifest.json", tiny_bundle / "manifest.json", shallow=False)
        assert read_manifest(model_dir / "1", verify="none") == manifest
        source = (model_dir / "1" / "model.py").read_text()
        assert "from mmgen_edge.serve.triton_bls import TritonPythonModel" in source
        compile(source, "model.py", "exec")


def test_front_instances_are_chosen_and_bounded(tiny_bundle, tmp_path, capsys):
    from mmgen_edge.cli import main

    written = write_model_repository(tiny_bundle, tmp_path / "three", front_instances=3)
    for name in FRONTS:
        assert [i.count for i in parse_config(written / name).instance_group] == [3]
        assert [i.count for i in parse_config(written / f"{name}_batched").instance_group] == [1]
    with pytest.raises(ValueError, match="front_instances must be >= 1, got 0"):
        write_model_repository(tiny_bundle, tmp_path / "none", front_instances=0)
    with pytest.raises(SystemExit) as exited:
        main(["triton-repo", str(tiny_bundle), "--out", str(tmp_path / "cli"), "--front-instances", "17"])
    assert exited.value.code == 2 and "must be an integer in 1..16, got 17" in capsys.readouterr().err
    assert not (tmp_path / "none").exists() and not (tmp_path / "cli").exists()


def test_refuses_a_non_empty_out_and_accepts_an_empty_one(tiny_bundle, tmp_path):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=f"{out}.*not an empty folder"):
        write_model_repository(tiny_bundle, out)
    assert (out / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_model_repository(tiny_bundle, empty, engines="none") == empty
    assert (empty / "mmgen_perceive" / "config.pbtxt").is_file()
    with pytest.raises(ValueError, match="engines must be one of"):
        write_model_repository(tiny_bundle, tmp_path / "other", engines="always")


def test_a_damaged_bundle_or_a_failed_copy_leaves_nothing(tiny_bundle, tmp_path, monkeypatch):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    data = bytearray((broken / "vae_encoder.onnx").read_bytes())
    data[-1] ^= 0xFF
    (broken / "vae_encoder.onnx").write_bytes(bytes(data))
    out = tmp_path / "out" / "repo"
    with pytest.raises(BundleError, match="vae_encoder.onnx has SHA-256"):
        write_model_repository(broken, out)
    assert not out.exists()

    copies = []

    real_copy = triton_repo._copy

    def failing_copy(source, target):
        copies.append(target)
        if len(copies) == 3:
            raise OSError("disk full")
        real_copy(source, target)

    monkeypatch.setattr(triton_repo, "_copy", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        write_model_repository(tiny_bundle, out)
    assert len(copies) == 3 and not out.exists()
    assert list(out.parent.iterdir()) == [], "a temporary folder was left behind"


# ------------------------------------------------------------------------------------------------- engines
def _with_engines(tiny_bundle: Path, target: Path, engines: list[tuple[str, str, str, bytes]], dims=None) -> Path:
    """A copy of the bundle whose manifest lists dummy engine files: (graph, compute capability, precision, bytes)."""
    shutil.copytree(tiny_bundle, target)
    manifest = read_manifest(target)
    entries, files = [], []
    for graph, cc, precision, payload in engines:
        relative = f"engines/{graph}.sm{cc.replace('.', '')}.{precision}.engine"
        (target / relative).parent.mkdir(exist_ok=True)
        (target / relative).write_bytes(payload)
        entries.append(
            EngineEntry(
                graph=graph, file=relative, precision=precision, trt_version="10.13.0", device_name=f"GPU sm{cc}",
                compute_capability=cc, strongly_typed=True, layer_precisions={}, dims=dims or dict(manifest.dims),
                built="2026-11-24",
            )  # fmt: skip
        )
        files.append(file_entry(target, relative))
    write_manifest(target, manifest.model_copy(update={"engines": tuple(entries), "files": manifest.files + tuple(files)}))
    return target


def test_engines_become_tensorrt_plan_models_per_compute_capability(tiny_bundle, tmp_path, manifest):
    bundle = _with_engines(
        tiny_bundle,
        tmp_path / "bundle",
        [
            ("vae_decoder", "9.0", "fp32", b"plan sm90 fp32"),
            ("vae_decoder", "9.0", "fp16", b"plan sm90 fp16"),  # the bundle is fp32: its fp32 engine is preferred
            ("vae_decoder", "8.9", "fp16", b"plan sm89 fp16"),  # the only one for 8.9
        ],
    )
    repo = write_model_repository(bundle, tmp_path / "repo")
    model_dir = repo / "mmgen_vae_decoder"
    config = parse_config(model_dir)
    assert config.platform == "tensorrt_plan" and not config.backend
    assert dict(config.cc_model_filenames) == {"9.0": "model.sm90.plan", "8.9": "model.sm89.plan"}
    assert config.max_batch_size == manifest.dims["V"].max and config.HasField("dynamic_batching")
    assert sorted(p.name for p in (model_dir / "1").iterdir()) == ["model.sm89.plan", "model.sm90.plan"]
    assert filecmp.cmp(model_dir / "1" / "model.sm90.plan", bundle / "engines/vae_decoder.sm90.fp32.engine", shallow=False)
    assert filecmp.cmp(model_dir / "1" / "model.sm89.plan", bundle / "engines/vae_decoder.sm89.fp16.engine", shallow=False)
    for graph in ("conditioning", "denoiser_cached", "vae_encoder"):
        assert parse_config(repo / component_model_name(graph)).backend == "onnxruntime"
    readme = (repo / "README.md").read_text()
    assert "compute capability 8.9" in readme and "TensorRT 10.13.0" in readme

    plain = write_model_repository(bundle, tmp_path / "plain", engines="none")
    assert parse_config(plain / "mmgen_vae_decoder").backend == "onnxruntime"
    assert (plain / "mmgen_vae_decoder" / "1" / "model.onnx").is_file()
    with pytest.raises(ValueError, match=r"no TensorRT engines for \['conditioning', 'denoiser_cached', 'vae_encoder'\]"):
        write_model_repository(bundle, tmp_path / "strict", engines="require")
    assert not (tmp_path / "strict").exists()


def test_engines_built_for_smaller_batches_are_refused(tiny_bundle, tmp_path, manifest):
    small = {k: DimRange(min=1, opt=1, max=1) for k in manifest.dims}
    bundle = _with_engines(tiny_bundle, tmp_path / "bundle", [("vae_encoder", "9.0", "fp32", b"plan")], dims=small)
    with pytest.raises(ValueError, match=r"built for N = 1\.\.1 but the bundle serves 1\.\.4"):
        write_model_repository(bundle, tmp_path / "repo")


def test_external_data_is_copied_next_to_the_model(tiny_bundle, tmp_path):
    onnx = pytest.importorskip("onnx")
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    model = onnx.load(str(bundle / "vae_encoder.onnx"))
    onnx.save_model(model, str(bundle / "vae_encoder.onnx"), save_as_external_data=True, location="vae_encoder.onnx.data", size_threshold=0)  # fmt: skip
    manifest = read_manifest(bundle, verify="none")
    graphs = dict(manifest.graphs)
    graphs["vae_encoder"] = graphs["vae_encoder"].model_copy(update={"external_data": "vae_encoder.onnx.data"})
    files = tuple(f for f in manifest.files if f.path != "vae_encoder.onnx")
    files += (file_entry(bundle, "vae_encoder.onnx"), file_entry(bundle, "vae_encoder.onnx.data"))
    write_manifest(bundle, manifest.model_copy(update={"graphs": graphs, "files": files}))

    repo = write_model_repository(bundle, tmp_path / "repo")
    version = repo / "mmgen_vae_encoder" / "1"
    assert filecmp.cmp(version / "vae_encoder.onnx.data", bundle / "vae_encoder.onnx.data", shallow=False)
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(tiny_bundle / "vae_encoder.onnx"), providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(session.run(None, {"image": image})[0], reference.run(None, {"image": image})[0])


# --------------------------------------------------------------------------------- the BLS model, no Triton
@pytest.fixture()
def triton(repo, monkeypatch):
    fake = FakeTriton(repo)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils(fake))
    return fake


def entry_model(repo: Path, name: str) -> TritonPythonModel:
    """Initialize an entry model as Triton does (the config goes in as JSON, the paths are the model's folder)."""
    model = TritonPythonModel()
    model.initialize(initialize_args(repo, name))
    return model


def request(**tensors: np.ndarray):
    """An incoming request with the batch axis of 1; strings arrive as object arrays of bytes, as from Triton."""
    pb = sys.modules["triton_python_backend_utils"]
    inputs = []
    for name, value in tensors.items():
        array = text(value).astype(np.object_) if isinstance(value, str) else np.asarray(value)[None]
        inputs.append(pb.Tensor(name, array))
    return pb.InferenceRequest(inputs=inputs)


def outputs(response) -> dict[str, np.ndarray]:
    assert not response.has_error(), response.error().message()
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


def _images(n: int, r: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, r, r, 3)) * 255).astype(np.uint8)


def assert_same(served: dict[str, np.ndarray], images: dict[str, np.ndarray], latents: np.ndarray) -> None:
    assert read_text(served["error"]) == ""
    assert set(served) == {IMAGE_OUTPUTS[m] for m in images} | {"latents", "info", "error"}
    np.testing.assert_allclose(served["latents"][0], latents, atol=1e-4)
    for modality, image in images.items():
        got = served[IMAGE_OUTPUTS[modality]]
        assert got.shape == (1, *image.shape) and got.dtype == np.uint8
        assert np.abs(got[0].astype(int) - image.astype(int)).max() <= 2, modality


def test_bls_perceive_equals_the_local_sdk(triton, repo, local, manifest):
    model = entry_model(repo, "mmgen_perceive_batched")  # a batch as Triton's dynamic batcher assembles it
    r = manifest.model.resolution
    images = _images(3, r)
    noise = np.random.default_rng(1).standard_normal((2, *local.pipeline.latent_shape(1)[1:]), dtype=np.float32)
    requests = [
        request(image=images[0], tasks="depth,normals", steps=np.array([2], np.int32), noise=noise[0]),
        request(image=images[1], tasks="bogus", steps=np.array([2], np.int32)),
        request(image=images[1], tasks="depth,normals", steps=np.array([2], np.int32), noise=noise[1]),
        request(image=images[2], tasks="segmentation", seed=np.array([5], np.int64)),  # default steps, seeded noise
    ]
    responses = model.execute(requests)
    assert len(responses) == 4
    bad = responses[1]  # refused alone, as a Triton error, no outputs; the others are served
    assert bad.has_error() and bad.output_tensors() == []
    assert bad.error().message().startswith("mmgen_perceive: unknown tasks ['bogus']")

    pair = local.perceive_model_images(images[:2], ("depth", "normals"), 2, noise)
    for i, j in ((0, 0), (2, 1)):
        assert_same(outputs(responses[i]), pair.images[j], pair.latents[j])
    seeded = np.random.default_rng(5).standard_normal(local.pipeline.latent_shape(1), dtype=np.float32)
    single = local.perceive_model_images(images[2:], ("segmentation",), None, seeded)
    assert_same(outputs(responses[3]), single.images[0], single.latents[0])
    info = json.loads(read_text(outputs(responses[0])["info"]))
    assert info["backend"] == "triton" and info["steps"] == 2

    assert set(triton.calls) == {component_model_name(g) for g in RUNTIME_GRAPHS}
    assert 2 in triton.batches["mmgen_vae_encoder"]  # the two depth,normals requests ran as one batch

    # a batch refused alike fails as a whole execute (so Triton counts each request as a failure); unlike: each its own
    pb = sys.modules["triton_python_backend_utils"]
    with pytest.raises(pb.TritonModelException, match=r"^mmgen_perceive: unknown tasks \['bogus'\]"):
        model.execute([request(image=images[1], tasks="bogus"), request(image=images[2], tasks="bogus")])
    unlike = model.execute([request(image=images[1], tasks="bogus"), request(image=images[2], tasks="depth,depth")])
    assert [r.has_error() for r in unlike] == [True, True] and "at most once" in unlike[1].error().message()
    model.finalize()


def test_bls_generate_equals_the_local_sdk(triton, repo, local, manifest):
    model = entry_model(repo, "mmgen_generate_batched")
    condition = _images(1, manifest.model.resolution, seed=3)[0]
    steps = np.array([2], np.int32)
    guided = dict(steps=steps, cfg_scale=np.array([2.0], np.float32))
    requests = [
        request(class_label=np.array([3]), seed=np.array([1]), **guided),
        request(class_label=np.array([manifest.model.num_classes]), seed=np.array([1]), **guided),  # out of range
        request(class_label=np.array([5]), seed=np.array([2]), **guided),
        request(condition="depth", condition_image=condition, seed=np.array([3]), steps=steps),
    ]
    responses = model.execute(requests)
    assert responses[1].has_error() and "class_label must be in" in responses[1].error().message()

    pair = local.generate_model_images(
        [GenerationRequest(class_label=3, cfg_scale=2.0, steps=2, seed=1), GenerationRequest(class_label=5, cfg_scale=2.0, steps=2, seed=2)]
    )  # fmt: skip
    for i, j in ((0, 0), (2, 1)):
        assert_same(outputs(responses[i]), pair.images[j], pair.latents[j])
    conditioned = local.generate_model_images([GenerationRequest(condition="depth", condition_image=condition, steps=2, seed=3)])
    served = outputs(responses[3])
    assert "image_depth" not in served  # the condition is not generated
    assert_same(served, conditioned.images[0], conditioned.latents[0])
    assert max(triton.batches["mmgen_conditioning"]) == 4  # guidance: [cond; uncond] rows for two samples
    model.finalize()


def test_bls_info_and_component_failures(triton, repo, manifest, tmp_path):
    info = entry_model(repo, "mmgen_info")
    (response,) = info.execute([request(query="manifest")])
    assert json.loads(read_text(outputs(response)["manifest"])) == json.loads(manifest.model_dump_json())

    broken = tmp_path / "repo"
    shutil.copytree(repo, broken)
    shutil.rmtree(broken / "mmgen_vae_encoder")
    triton.repo = broken
    model = entry_model(broken, "mmgen_perceive_batched")
    image = _images(1, manifest.model.resolution)[0]
    pb = sys.modules["triton_python_backend_utils"]
    with pytest.raises(pb.TritonModelException, match="mmgen_vae_encoder"):  # the whole execute fails: a failure each
        model.execute([request(image=image), request(image=image, tasks="depth")])
    front = entry_model(broken, "mmgen_perceive")  # the batched model's failure fails the front's execute too
    with pytest.raises(pb.TritonModelException, match=r"^mmgen_perceive: the server failed to run this batch \(RuntimeError: .*'mmgen_vae_encoder'"):
        front.execute([request(image=image)])

    runner = BlsRunner("vae_decoder", manifest.graphs["vae_decoder"], manifest.dims, sys.modules["triton_python_backend_utils"])
    runner.model_name = "mmgen_vae_decoderx"  # a name the repository does not have fails, naming it
    with runner, pytest.raises(RuntimeError, match="'mmgen_vae_decoderx' failed: .*not found"):
        runner.infer({"latent": np.zeros((1, *manifest.graphs["vae_decoder"].inputs[0].shape[1:]), np.float32)})


def test_a_front_checks_its_request_alone_and_passes_it_on_to_the_batched_model(triton, repo, local, manifest):
    front = entry_model(repo, "mmgen_perceive")
    pb = sys.modules["triton_python_backend_utils"]
    image = _images(1, manifest.model.resolution, seed=7)[0]
    with pytest.raises(pb.TritonModelException, match=r"^mmgen_perceive: unknown tasks \['bogus'\]"):
        front.execute([request(image=image, tasks="bogus")])  # refused: the execute fails, a Triton failure
    assert "mmgen_perceive_batched" not in triton.calls  # and nothing was passed on
    (response,) = front.execute([request(image=image, tasks="depth", seed=np.array([7], np.int64))])
    assert triton.calls["mmgen_perceive_batched"] == 1
    noise = np.random.default_rng(7).standard_normal(local.pipeline.latent_shape(1), dtype=np.float32)
    here = local.perceive_model_images(image[None], ("depth",), None, noise)
    assert_same(outputs(response), here.images[0], here.latents[0])

    generate = entry_model(repo, "mmgen_generate")
    with pytest.raises(pb.TritonModelException, match=r"^mmgen_generate: cfg_scale must be a finite number"):
        generate.execute([request(cfg_scale=np.array([np.nan], np.float32))])
    (response,) = generate.execute([request(class_label=np.array([2]), seed=np.array([4]), steps=np.array([2], np.int32))])
    here = local.generate_model_images([GenerationRequest(class_label=2, seed=4, steps=2)])
    assert_same(outputs(response), here.images[0], here.latents[0])
    assert triton.calls["mmgen_generate_batched"] == 1


def test_entry_model_needs_triton_and_a_known_name(repo, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", None)
    with pytest.raises(ImportError, match="runs inside Triton's Python backend"):
        entry_model(repo, "mmgen_perceive")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils(FakeTriton(repo)))
    with pytest.raises(ValueError, match="not 'mmgen_other'"):
        TritonPythonModel().initialize({"model_name": "mmgen_other", "model_repository": str(repo), "model_version": "1"})
