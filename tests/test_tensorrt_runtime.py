"""Native TensorRT runtime and bundle engines: pure decisions on CPU, real engines on a GPU.

CPU: dtype mapping, I/O mismatch messages, buffer planning, CUDA-graph keys, cuda-python error unwrapping, the
engine build plan (reuse / build / rebuild), and ``build_bundle_engines``' manifest bookkeeping with a fake
TensorRT. GPU (``-m tensorrt``; skipped without tensorrt, cuda-python and a CUDA device): builds the tiny bundle's
engines and compares every graph with ONNX Runtime, with and without CUDA graphs.
"""

from __future__ import annotations

import enum
import importlib.util
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from extras import require_export

pytestmark = require_export()  # the engine builder reads graphs with onnx: skipped on a base install

from mmgen_edge.config import ModelConfig
from mmgen_edge.export import engines
from mmgen_edge.export.engines import (
    BuildEnvironment,
    build_bundle_engines,
    engine_file_name,
    graph_is_annotated,
    plan_engine_builds,
    shape_profiles,
    without_engines,
)
from mmgen_edge.export.tensorrt_build import EngineReport, Precision
from mmgen_edge.runtime import cuda_buffers, gpu
from mmgen_edge.runtime.cuda_buffers import check_cuda, nbytes_of, view_bytes
from mmgen_edge.runtime.manifest import (
    DimRange,
    EngineEntry,
    FileEntry,
    GraphEntry,
    LatentInfo,
    Manifest,
    TensorSpec,
    VaeInfo,
    read_manifest,
)
from mmgen_edge.runtime.sampler import SamplerConfig
from mmgen_edge.runtime import tensorrt_runner
from mmgen_edge.runtime.tensorrt_runner import (
    TensorRTRunner,
    engine_io_mismatch,
    graph_key,
    plan_buffers,
    read_engine_io,
    trt_dtype_to_numpy,
)
from trt_fakes import FakeClass, FakeEnum, FakeModule, FakeObject, Surface, called, enums, load_surfaces

SURFACES = load_surfaces()

H100 = BuildEnvironment("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0")
L4 = BuildEnvironment("10.13.0.35", "NVIDIA L4", "8.9")
GRAPHS = ("conditioning", "denoiser_cached", "vae_encoder", "vae_decoder")
MAX_BATCH = 4
#: Sizes bound to the dynamic dimensions in GPU comparisons (B = N: no guidance).
FEED_SIZES = {"N": 2, "B": 2, "V": 3}
#: fp32 engines may use TF32 tensor cores (TensorRT's default on Ampere and newer).
FP32_RTOL = FP32_ATOL = 1e-2


# --------------------------------------------------------------------------------------- fake manifests


def _spec(name: str, dtype: str, *shape: int | str) -> TensorSpec:
    return TensorSpec(name=name, dtype=dtype, shape=shape)


def _graph_entries(precision: str = "fp32") -> dict[str, GraphEntry]:
    io = {
        "conditioning": ((_spec("t", "float32", "B", 4), _spec("y", "int64", "B"), _spec("task", "int64", "B")),
                         (_spec("block_modulation", "float32", "B", 2, 384), _spec("final_modulation", "float32", "B", 4, 128))),
        "denoiser_cached": ((_spec("x_t", "float32", "N", 16, 4, 4), _spec("block_modulation", "float32", "B", 2, 384),
                             _spec("cfg_scale", "float32", 1)),
                            (_spec("x_next", "float32", "N", 16, 4, 4),)),
        "vae_encoder": ((_spec("image", "float32", "N", 3, 32, 32),), (_spec("latent", "float32", "N", 4, 4, 4),)),
        "vae_decoder": ((_spec("latent", "float32", "V", 4, 4, 4),), (_spec("image", "float32", "V", 3, 32, 32),)),
    }  # fmt: skip
    return {
        name: GraphEntry(file=f"{name}.onnx", inputs=inputs, outputs=outputs, precision=precision)
        for name, (inputs, outputs) in io.items()
    }


def fake_manifest(precision: str = "fp32", engines_: tuple[EngineEntry, ...] = ()) -> Manifest:
    config = ModelConfig(depth=2, hidden_size=64, num_heads=2, patch_size=2, resolution=32, projector_dim=None, z_dim=None)
    return Manifest(
        model=config,
        latent=LatentInfo(channels_per_modality=4, height=4, width=4, scaling_factor=0.5, downsample=8),
        vae=VaeInfo(kind="tiny", scaling_factor=0.5, parameters=1),
        sampler=SamplerConfig(),
        precision=precision,
        dims={"N": DimRange(min=1, opt=1, max=MAX_BATCH), "B": DimRange(min=1, opt=1, max=2 * MAX_BATCH),
              "V": DimRange(min=1, opt=3, max=4 * MAX_BATCH)},  # fmt: skip
        opset=17,
        graphs=_graph_entries(precision),
        files=tuple(FileEntry(path=f, bytes=1, sha256="0" * 64)  # the manifest lists every file it names
                    for f in [g.file for g in _graph_entries(precision).values()] + [e.file for e in engines_]),
        engines=engines_,
    )


def _entry(graph: str, env: BuildEnvironment = H100, precision: str = "fp16", file: str | None = None) -> EngineEntry:
    return EngineEntry(
        graph=graph, file=file or engine_file_name(graph, env, precision), precision=precision,
        trt_version=env.trt_version, device_name=env.device_name, compute_capability=env.compute_capability,
        strongly_typed=True, layer_precisions={"Half": 3}, dims={}, built="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


def _all_files_ok(path: str) -> bool:
    return True


# ------------------------------------------------------------------------------------------ runner: pure


def test_trt_dtype_to_numpy_accepts_members_names_and_strings():
    member = SimpleNamespace(name="HALF")
    assert trt_dtype_to_numpy(member) == np.float16
    assert trt_dtype_to_numpy("DataType.FLOAT") == np.float32
    assert trt_dtype_to_numpy("INT64") == np.int64
    assert trt_dtype_to_numpy("bool") == np.bool_
    with pytest.raises(TypeError, match="BF16 has no numpy equivalent"):
        trt_dtype_to_numpy("DataType.BF16")
    with pytest.raises(TypeError, match="unknown TensorRT data type"):
        trt_dtype_to_numpy("COMPLEX")


def test_engine_io_mismatch_lists_every_difference():
    graph = _graph_entries()["conditioning"]
    io = {"t": ("input", "float32"), "y": ("input", "int64"), "task": ("input", "int64"),
          "block_modulation": ("output", "float32"), "final_modulation": ("output", "float32")}  # fmt: skip
    shapes = {"t": (-1, 4), "y": (-1,), "task": (-1,), "block_modulation": (-1, 2, 384), "final_modulation": (-1, 4, 128)}
    assert engine_io_mismatch(io, graph, shapes) == []
    stale = dict(io, y=("input", "int32"), extra=("output", "float16"), final_modulation=("input", "float32"))
    del stale["task"]
    problems = engine_io_mismatch(stale, graph)
    assert "input 'y': the engine's dtype is int32, the manifest's int64" in problems
    assert "input 'task': in the manifest, not in the engine" in problems
    assert "output 'extra': in the engine, not in the manifest" in problems
    assert "'final_modulation': the manifest lists it as an output, the engine as an input" in problems
    bad_shapes = dict(shapes, t=(2, 4), block_modulation=(-1, 3, 384), final_modulation=(-1, 4))
    problems = engine_io_mismatch(io, graph, bad_shapes)
    assert "input 't': the engine fixes axis 0 to 2, the manifest has B" in problems
    assert "output 'block_modulation': axis 1 is 3 in the engine, 2 in the manifest" in problems
    assert any("'final_modulation': the engine's shape (-1, 4) has rank 2" in p for p in problems)


def test_plan_buffers_allocates_new_grows_larger_and_reuses_smaller():
    dtypes = {"x": np.float32, "y": np.int64, "z": np.float16}
    shapes = {"x": (2, 3), "y": (4,), "z": (1, 8)}
    assert plan_buffers(shapes, dtypes, {}) == {"x": 24, "y": 32, "z": 16}
    current = {"x": 24, "y": 16, "z": 64}
    assert plan_buffers(shapes, dtypes, current) == {"y": 32}  # x exact fit, z larger: both reused
    assert plan_buffers({"x": (1, 3)}, dtypes, current) == {}


def test_graph_key_changes_with_shapes_and_addresses():
    key = graph_key({"a": (2, 3), "b": (1,)}, {"a": 100, "b": 200})
    assert key == graph_key({"b": [1], "a": [2, 3]}, {"b": 200, "a": 100})  # order and sequence type do not matter
    assert key != graph_key({"a": (3, 3), "b": (1,)}, {"a": 100, "b": 200})
    assert key != graph_key({"a": (2, 3), "b": (1,)}, {"a": 100, "b": 300})


def test_host_views_and_sizes():
    raw = bytearray(64)
    view = view_bytes(raw, 64, (2, 4), np.float32)
    view[:] = 1.5
    assert np.frombuffer(bytes(raw[:32]), np.float32).tolist() == [1.5] * 8  # the view aliases the buffer
    assert view_bytes(raw, 64, (16,), np.float32).shape == (16,)
    with pytest.raises(ValueError, match="needs 68 bytes, the buffer holds 64"):
        view_bytes(raw, 64, (17,), np.float32)
    assert nbytes_of((2, 3, 4), np.float16) == 48 and nbytes_of((), np.int64) == 8


class _FakeError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorMemoryAllocation = 2


def test_check_cuda_unwraps_and_raises_with_the_error_name(monkeypatch):
    monkeypatch.setattr(gpu, "_cudart", None)  # no description lookup: no cuda-python needed
    assert check_cuda((_FakeError.cudaSuccess, 1234)) == 1234
    assert check_cuda((_FakeError.cudaSuccess, 1, 2)) == (1, 2)
    assert check_cuda((_FakeError.cudaSuccess,)) is None
    with pytest.raises(RuntimeError, match=r"cudaMalloc\(8 bytes\) failed: cudaErrorMemoryAllocation \(2\)"):
        check_cuda((_FakeError.cudaErrorMemoryAllocation, 0), "cudaMalloc(8 bytes)")


def test_runner_without_tensorrt_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail, installed or not
    graph = _graph_entries()["vae_decoder"]
    with pytest.raises(ImportError, match=r"pip install 'mmgen-edge\[tensorrt\]'"):
        TensorRTRunner("missing.engine", "vae_decoder", graph, fake_manifest().dims)


def test_cuda_buffers_without_cuda_python_name_the_extra(monkeypatch):
    monkeypatch.setattr(gpu, "_cudart", None)
    for module in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"cuda-python.*pip install 'mmgen-edge\[tensorrt\]'"):
        cuda_buffers.DeviceBuffer(16)


# ------------------------------------------------- runner glue against fakes held to each release's API surface


@pytest.fixture(params=SURFACES, ids=lambda surface: f"trt{surface.version}")
def surface(request) -> Surface:
    """The Python API of TensorRT 10.3 (JetPack 6), the latest 10.x and the latest 11.x, in turn."""
    return request.param


class FakeCudaMemory:
    """Host bytes standing in for device memory (cuda_buffers' classes, swapped in by ``fake_cuda``)."""

    def __init__(self):
        self.blocks: dict[int, bytearray] = {}
        self._next = 0x10000

    def allocate(self, nbytes: int) -> int:
        ptr, self._next = self._next, self._next + nbytes + 0x100
        self.blocks[ptr] = bytearray(nbytes)
        return ptr


@pytest.fixture
def fake_cuda(monkeypatch) -> FakeCudaMemory:
    memory = FakeCudaMemory()

    class Device:
        def __init__(self, nbytes):
            self.nbytes, self.ptr = nbytes, memory.allocate(nbytes)

        def ensure(self, nbytes):
            if nbytes <= self.nbytes:
                return False
            self.free()
            self.nbytes, self.ptr = nbytes, memory.allocate(nbytes)
            return True

        def free(self):
            memory.blocks.pop(self.ptr, None)

    class Pinned:
        def __init__(self, shape, dtype):
            self.dtype = np.dtype(dtype)
            self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
            self.raw = bytearray(self.nbytes)

        def view(self, shape):
            return view_bytes(self.raw, self.nbytes, shape, self.dtype)

        def free(self):
            self.raw = bytearray()

    class Stream:
        def __int__(self):
            return 7

        def synchronize(self):
            pass

        def destroy(self):
            pass

    def htod(device, host, nbytes, stream):
        memory.blocks[device.ptr][:nbytes] = host.raw[:nbytes]

    def dtoh(host, device, nbytes, stream):
        host.raw[:nbytes] = memory.blocks[device.ptr][:nbytes]

    for name, value in dict(DeviceBuffer=Device, PinnedHostBuffer=Pinned, CudaStream=Stream, memcpy_htod_async=htod,
                            memcpy_dtoh_async=dtoh, import_cudart=lambda: None, _logger=None).items():  # fmt: skip
        monkeypatch.setattr(tensorrt_runner, name, value)
    return memory


TOY = GraphEntry(file="toy.onnx", inputs=(_spec("x", "float32", "N", 4),), outputs=(_spec("y", "float32", "N", 4),))
TOY_DIMS = {"N": DimRange(min=1, opt=2, max=4)}


def _toy_tensorrt(surface: Surface, calls: list, memory: FakeCudaMemory, y_dtype: str = "FLOAT") -> FakeModule:
    """A ``tensorrt`` module whose engine computes y = 2 x + 1 from the tensor addresses it was given."""
    flags = enums(surface, "TensorIOMode", "DataType")
    modes = {"x": flags["TensorIOMode"].INPUT, "y": flags["TensorIOMode"].OUTPUT}
    dtypes = {"x": flags["DataType"].FLOAT, "y": getattr(flags["DataType"], y_dtype)}
    shapes: dict[str, tuple] = {}
    addresses: dict[str, int] = {}

    def set_input_shape(name, shape):
        if not 1 <= shape[0] <= 3:  # the engine's profile is narrower than the manifest's N range (1..4)
            return False
        shapes[name] = shapes["y"] = tuple(shape)
        return True

    def execute_async_v3(stream_handle):
        count = int(np.prod(shapes["x"]))
        x = np.frombuffer(memory.blocks[addresses["x"]], np.float32, count)
        np.frombuffer(memory.blocks[addresses["y"]], np.float32, count)[:] = 2 * x + 1
        return True

    def obj(cls, **members):
        return FakeObject(surface, cls, calls, **members)

    context = obj(
        "IExecutionContext", set_input_shape=set_input_shape, get_tensor_shape=lambda name: shapes[name],
        set_tensor_address=lambda name, ptr: addresses.__setitem__(name, ptr) or True, execute_async_v3=execute_async_v3,
    )  # fmt: skip
    engine = obj(
        "ICudaEngine", num_io_tensors=2, get_tensor_name=lambda i: "xy"[i], get_tensor_mode=modes.__getitem__,
        get_tensor_dtype=dtypes.__getitem__, get_tensor_shape=lambda name: (-1, 4), is_shape_inference_io=lambda name: False,
        create_execution_context=lambda: context, get_tensor_profile_shape=lambda name, index: [(1, 4), (2, 4), (3, 4)],
    )  # fmt: skip
    runtime = obj("Runtime", deserialize_cuda_engine=lambda plan: engine)
    severity = FakeEnum(surface, "ILogger.Severity")
    return FakeModule(
        surface, **flags, Runtime=FakeClass(surface, "Runtime", lambda logger: runtime, calls),
        Logger=FakeClass(surface, "Logger", lambda level: obj("Logger"), calls, WARNING=severity.WARNING),
    )  # fmt: skip


def test_read_engine_io_uses_the_name_based_api(surface, fake_cuda):
    trt = _toy_tensorrt(surface, [], fake_cuda)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(b"PLAN")
    io, shapes = read_engine_io(trt, engine)
    assert io == {"x": ("input", "float32"), "y": ("output", "float32")}
    assert shapes == {"x": (-1, 4), "y": (-1, 4)}


def test_runner_runs_a_fake_engine(surface, fake_cuda, monkeypatch, tmp_path):
    """activate / infer / deactivate against the release's API: shapes, addresses, execute_async_v3, results."""
    calls: list = []
    monkeypatch.setitem(sys.modules, "tensorrt", _toy_tensorrt(surface, calls, fake_cuda))
    engine_file = tmp_path / "toy.engine"
    engine_file.write_bytes(b"PLAN")
    with TensorRTRunner(engine_file, "toy", TOY, TOY_DIMS) as runner:
        for batch in (3, 2, 3):
            x = np.arange(4 * batch, dtype=np.float32).reshape(batch, 4)
            y = runner.infer({"x": x})["y"]
            np.testing.assert_array_equal(y, 2 * x + 1)
        with pytest.raises(ValueError, match=r"toy.x: shape \(4, 4\) is outside the engine's profile \(1, 4\)..\(3, 4\)"):
            runner.infer({"x": np.zeros((4, 4), np.float32)})
    assert [args for args, _ in called(calls, "IExecutionContext.set_input_shape")] == [
        ("x", (3, 4)), ("x", (2, 4)), ("x", (3, 4)), ("x", (4, 4))
    ]  # fmt: skip
    assert [args for args, _ in called(calls, "IExecutionContext.execute_async_v3")] == [(7,)] * 3
    assert not fake_cuda.blocks  # deactivate freed every device buffer


def test_runner_refuses_an_engine_with_other_dtypes(surface, fake_cuda, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", _toy_tensorrt(surface, [], fake_cuda, y_dtype="HALF"))
    engine_file = tmp_path / "toy.engine"
    engine_file.write_bytes(b"PLAN")
    runner = TensorRTRunner(engine_file, "toy", TOY, TOY_DIMS)
    with pytest.raises(ValueError, match="output 'y': the engine's dtype is float16, the manifest's float32"):
        runner.activate()


# ----------------------------------------------------------------------------------------- engines: pure


def test_engine_file_names_are_keyed_by_gpu_trt_and_precision():
    assert engine_file_name("vae_decoder", H100, "fp16") == "engines/vae_decoder.nvidia-h100-80gb-hbm3.sm90.trt10.13.0.35.fp16.engine"
    assert engine_file_name("vae_decoder", L4, "int8") == "engines/vae_decoder.nvidia-l4.sm89.trt10.13.0.35.int8.engine"
    with pytest.raises(ValueError):
        engine_file_name("vae_decoder", H100, "bf16")


def test_shape_profiles_come_from_the_manifest_dims():
    manifest = fake_manifest()
    profiles = {p.name: p for p in shape_profiles(manifest.graphs["denoiser_cached"], manifest.dims)}
    assert set(profiles) == {"x_t", "block_modulation"}  # cfg_scale is static: no profile
    assert profiles["x_t"].min == (1, 16, 4, 4) and profiles["x_t"].opt == (1, 16, 4, 4)
    assert profiles["x_t"].max == (MAX_BATCH, 16, 4, 4)
    assert profiles["block_modulation"].max == (2 * MAX_BATCH, 2, 384)
    decoder = shape_profiles(manifest.graphs["vae_decoder"], manifest.dims)[0]
    assert (decoder.min[0], decoder.opt[0], decoder.max[0]) == (1, 3, 4 * MAX_BATCH)
    no_v = {k: v for k, v in manifest.dims.items() if k != "V"}
    with pytest.raises(ValueError, match=r"\['V'\] have no range"):
        shape_profiles(manifest.graphs["vae_decoder"], no_v)


def test_graph_annotation_follows_each_graphs_precision():
    assert not graph_is_annotated(fake_manifest("fp32"), "vae_decoder")
    assert graph_is_annotated(fake_manifest("fp16"), "vae_decoder")
    assert graph_is_annotated(fake_manifest("int8"), "denoiser_cached")
    # calibration quantizes some graphs: an int8 bundle whose VAE stays a plain fp32 graph
    calibrated = fake_manifest("fp32").model_copy(update={"precision": "int8"})
    calibrated.graphs["denoiser_cached"] = calibrated.graphs["denoiser_cached"].model_copy(update={"precision": "int8"})
    assert graph_is_annotated(calibrated, "denoiser_cached") and not graph_is_annotated(calibrated, "vae_decoder")


def test_plan_reuses_matching_engines():
    manifest = fake_manifest("fp16", tuple(_entry(g) for g in GRAPHS))
    actions = plan_engine_builds(manifest, H100, "fp16", GRAPHS, _all_files_ok)
    assert [(a.graph, a.action) for a in actions] == [(g, "reuse") for g in GRAPHS]
    assert "matches this GPU, TensorRT and precision" in actions[0].reason
    forced = plan_engine_builds(manifest, tuple(H100), "fp16", ["vae_decoder"], _all_files_ok, rebuild=True)
    assert forced[0].action == "rebuild" and forced[0].reason == "rebuild requested"


def test_plan_builds_missing_and_rebuilds_stale_or_damaged():
    old_trt = BuildEnvironment("10.9.0.34", H100.device_name, H100.compute_capability)
    manifest = fake_manifest("fp16", (_entry("conditioning", old_trt), _entry("vae_encoder", L4), _entry("vae_decoder")))
    actions = {a.graph: a for a in plan_engine_builds(manifest, H100, "fp16", GRAPHS, lambda f: "vae_decoder" not in f)}
    assert actions["conditioning"].action == "rebuild"
    assert "stale: no fp16 engine for TensorRT 10.13.0.35; replaces" in actions["conditioning"].reason
    assert "TensorRT 10.9.0.34" in actions["conditioning"].reason
    assert actions["denoiser_cached"].action == "build"
    assert actions["vae_encoder"].action == "build"  # the L4 engine is another GPU's: neither used nor replaced
    assert actions["vae_decoder"].action == "rebuild" and "missing or differs" in actions["vae_decoder"].reason
    with pytest.raises(ValueError, match="no 'denoiser' graph"):
        plan_engine_builds(manifest, H100, "fp16", ["denoiser"], _all_files_ok)


def test_plan_replaces_another_precision_and_duplicates():
    manifest = fake_manifest("fp16", (_entry("vae_decoder", precision="fp32"), _entry("vae_decoder")))
    (action,) = plan_engine_builds(manifest, H100, "fp16", ["vae_decoder"], _all_files_ok)
    assert action.action == "reuse" and "replaces engines/vae_decoder" in action.reason and "fp32)" in action.reason
    (action,) = plan_engine_builds(manifest, H100, "fp32", ["vae_decoder"], _all_files_ok)
    assert action.action == "reuse" and "fp16)" in action.reason


def test_without_engines_drops_this_gpus_entries_and_their_files():
    stale, current, foreign = _entry("vae_decoder", precision="fp32"), _entry("vae_decoder"), _entry("vae_decoder", L4)
    files = tuple(FileEntry(path=e.file, bytes=1, sha256="0" * 64) for e in (stale, current, foreign))
    manifest = fake_manifest("fp16", (stale, current, foreign)).model_copy(update={"files": files})
    kept, orphans = without_engines(manifest, "vae_decoder", H100, keep=current.file)
    assert kept.engines == (current, foreign) and orphans == [stale.file]
    assert [f.path for f in kept.files] == [current.file, foreign.file]
    cleared, orphans = without_engines(manifest, "vae_decoder", H100)
    assert cleared.engines == (foreign,) and orphans == sorted([stale.file, current.file])
    same, none = without_engines(manifest, "conditioning", H100)
    assert same is manifest and none == []


# ------------------------------------------------------------------- build_bundle_engines with a fake TRT


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


class FakeBuilds:
    """Stands in for TensorRT: a module with the capability attributes, and a build_engine writing fake plans."""

    def __init__(self, monkeypatch, env: BuildEnvironment):
        # the API of the recorded release of env's major version (tests/data/trt_surface), reporting env's version
        (surface,) = [s for s in SURFACES if s.major == int(env.trt_version.split(".")[0]) and s.version != "10.3.0"]
        self.trt = FakeModule(surface, **enums(surface, "BuilderFlag", "NetworkDefinitionCreationFlag"))
        self.trt.__version__ = env.trt_version
        self.env = env
        self.calls: list[dict] = []
        monkeypatch.setitem(sys.modules, "tensorrt", self.trt)
        monkeypatch.setattr(gpu, "current_device", lambda: (env.device_name, env.compute_capability))
        monkeypatch.setattr(engines, "build_engine", self.build)

    def build(self, onnx_path, engine_path, profiles, precision, timing_cache_path=None, graph_is_annotated=False,
              workspace_bytes=None, progress=True):  # fmt: skip
        self.calls.append(dict(onnx=Path(onnx_path).name, profiles=profiles, annotated=graph_is_annotated))
        Path(engine_path).parent.mkdir(parents=True, exist_ok=True)
        Path(engine_path).write_bytes(f"plan of {Path(onnx_path).name} by {self.env}".encode())
        return EngineReport(self.env.trt_version, self.env.device_name, self.env.compute_capability, Precision(precision),
                            strongly_typed=True, layer_precisions={"Float": 7})  # fmt: skip

    def set_version(self, version: str) -> None:
        self.env = self.env._replace(trt_version=version)
        self.trt.__version__ = version


def test_build_bundle_engines_records_reuses_and_replaces(monkeypatch, bundle_copy):
    fake = FakeBuilds(monkeypatch, H100)
    built = build_bundle_engines(bundle_copy, "fp32", progress=False)
    assert [e.graph for e in built] == list(GRAPHS) and len(fake.calls) == 4
    manifest = read_manifest(bundle_copy, verify="full")  # every engine file is listed with its hash
    assert manifest.engines == tuple(built)
    first = built[0]
    assert first.file == engine_file_name("conditioning", H100, "fp32") and (bundle_copy / first.file).is_file()
    assert first.dims == {"B": manifest.dims["B"]} and first.layer_precisions == {"Float": 7}
    assert not any(call["annotated"] for call in fake.calls)  # an fp32 bundle is not precision-annotated

    # a second GPU shares the bundle; the first GPU then reuses its engines and keeps the second GPU's
    FakeBuilds(monkeypatch, L4)
    build_bundle_engines(bundle_copy, "fp32", graphs=["vae_decoder"], progress=False)
    fake = FakeBuilds(monkeypatch, H100)
    again = build_bundle_engines(bundle_copy, "fp32", progress=False)
    assert again == built and fake.calls == []
    assert len(read_manifest(bundle_copy, verify="full").engines) == 5

    # a damaged engine is rebuilt; a TensorRT upgrade replaces all of this GPU's engines and deletes the old files
    (bundle_copy / built[3].file).write_bytes(b"damaged")
    build_bundle_engines(bundle_copy, "fp32", progress=False)
    assert [c["onnx"] for c in fake.calls] == ["vae_decoder.onnx"]
    fake.set_version("10.14.1.48")
    upgraded = build_bundle_engines(bundle_copy, "fp32", progress=False)
    manifest = read_manifest(bundle_copy, verify="full")
    assert {e.trt_version for e in manifest.engines if e.device_name == H100.device_name} == {"10.14.1.48"}
    assert len(manifest.engines) == 5 and all((bundle_copy / e.file).is_file() for e in upgraded)
    assert not any((bundle_copy / e.file).exists() for e in built)


def test_build_bundle_engines_fails_before_building(monkeypatch, bundle_copy):
    fake = FakeBuilds(monkeypatch, BuildEnvironment("11.0.0.1", *H100[1:]))
    with pytest.raises(ValueError, match="fp16 was requested for a plain fp32 graph"):
        build_bundle_engines(bundle_copy, "fp16", progress=False)
    assert fake.calls == [] and read_manifest(bundle_copy).engines == ()
    manifest = read_manifest(bundle_copy)
    onnx_file = bundle_copy / manifest.graphs["vae_encoder"].file
    onnx_file.write_bytes(onnx_file.read_bytes() + b"\0")
    with pytest.raises(ValueError, match="vae_encoder.onnx .* differs from its manifest"):
        build_bundle_engines(bundle_copy, "fp32", progress=False)
    assert fake.calls == []


def test_build_bundle_engines_without_tensorrt_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(ImportError, match=r"mmgen-edge\[tensorrt\]"):
        build_bundle_engines(tmp_path, "fp16")


# ------------------------------------------------------------------------------------------------ GPU


def _gpu_stack_problem() -> str | None:
    """Why the GPU tests cannot run here (None when they can)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt is not installed (pip install 'mmgen-edge[tensorrt]')"
    try:
        cudart = cuda_buffers.import_cudart()
    except ImportError as exc:
        return str(exc)
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        return "no CUDA device"
    return None


GPU_PROBLEM = _gpu_stack_problem()
needs_tensorrt = pytest.mark.skipif(GPU_PROBLEM is not None, reason=f"TensorRT GPU test: {GPU_PROBLEM}")


def make_feeds(graph: GraphEntry, seed: int = 0, sizes: dict[str, int] = FEED_SIZES) -> dict[str, np.ndarray]:
    """Random float inputs and zero integer inputs (label 0, task 0) with the dynamic dims bound to ``sizes``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in graph.inputs:
        shape = tuple(sizes[d] if isinstance(d, str) else d for d in spec.shape)
        if np.issubdtype(np.dtype(spec.dtype), np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.zeros(shape, spec.dtype)
    return feeds


@pytest.fixture(scope="module")
def gpu_bundle(tiny_bundle, tmp_path_factory):
    """The tiny fp32 bundle with fp32 engines for this GPU."""
    target = tmp_path_factory.mktemp("trt") / "bundle"
    shutil.copytree(tiny_bundle, target)
    entries = build_bundle_engines(target, "fp32", progress=False)
    return target, entries


@pytest.mark.tensorrt
@needs_tensorrt
def test_device_and_pinned_buffers_round_trip():
    with cuda_buffers.CudaStream() as stream, cuda_buffers.PinnedHostBuffer((4, 8), np.float32) as src, \
            cuda_buffers.PinnedHostBuffer((4, 8), np.float32) as dst, cuda_buffers.DeviceBuffer(src.nbytes) as device:  # fmt: skip
        src.array[:] = np.arange(32, dtype=np.float32).reshape(4, 8)
        cuda_buffers.memcpy_htod_async(device, src, src.nbytes, stream)
        cuda_buffers.memcpy_dtoh_async(dst, device, dst.nbytes, stream)
        stream.synchronize()
        np.testing.assert_array_equal(dst.array, src.array)
        address = device.ptr
        assert not device.ensure(16) and device.ptr == address  # smaller: reused
        assert device.ensure(4 * src.nbytes) and device.nbytes == 4 * src.nbytes


@pytest.mark.tensorrt
@needs_tensorrt
@pytest.mark.parametrize("use_cuda_graph", [False, True])
def test_engines_match_onnxruntime(gpu_bundle, use_cuda_graph):
    from mmgen_edge.runtime.onnxruntime_runner import OnnxRuntimeRunner

    bundle, entries = gpu_bundle
    manifest = read_manifest(bundle, verify="full")
    for entry in entries:
        graph = manifest.graphs[entry.graph]
        with TensorRTRunner(bundle / entry.file, entry.graph, graph, manifest.dims, use_cuda_graph) as trt_runner, \
                OnnxRuntimeRunner(bundle, entry.graph, graph, manifest.dims) as ort_runner:  # fmt: skip
            for seed, sizes in enumerate([FEED_SIZES, FEED_SIZES, {"N": 1, "B": 1, "V": 1}, FEED_SIZES]):
                feeds = make_feeds(graph, seed, sizes)
                got, want = trt_runner.infer(feeds), ort_runner.infer(feeds)
                for name, expected in want.items():
                    assert got[name].shape == expected.shape and got[name].dtype == expected.dtype
                    np.testing.assert_allclose(got[name], expected, rtol=FP32_RTOL, atol=FP32_ATOL, err_msg=f"{entry.graph}.{name}")
                if use_cuda_graph:
                    assert trt_runner.cuda_graph_active  # captured for these shapes (replayed on the next equal call)


@pytest.mark.tensorrt
@needs_tensorrt
def test_outputs_are_fresh_copies_and_rebuilds_are_skipped(gpu_bundle):
    bundle, entries = gpu_bundle
    manifest = read_manifest(bundle)
    graph = manifest.graphs["vae_decoder"]
    entry = next(e for e in entries if e.graph == "vae_decoder")
    with TensorRTRunner(bundle / entry.file, "vae_decoder", graph, manifest.dims, use_cuda_graph=True) as runner:
        first = runner.infer(make_feeds(graph, 1))["image"]
        kept = first.copy()
        runner.infer(make_feeds(graph, 2))
        runner.infer(make_feeds(graph, 2))
        np.testing.assert_array_equal(first, kept)
    mtimes = {e.file: (bundle / e.file).stat().st_mtime_ns for e in entries}
    again = build_bundle_engines(bundle, "fp32", progress=False)
    assert again == entries and mtimes == {e.file: (bundle / e.file).stat().st_mtime_ns for e in entries}


@pytest.mark.tensorrt
@needs_tensorrt
def test_foreign_engine_is_refused_and_backend_picks_tensorrt(gpu_bundle):
    from mmgen_edge.runtime.backend import BackendKind, choose_backend, detect_environment, open_runners

    bundle, entries = gpu_bundle
    manifest = read_manifest(bundle)
    decoder = next(e for e in entries if e.graph == "vae_decoder")
    runner = TensorRTRunner(bundle / decoder.file, "vae_encoder", manifest.graphs["vae_encoder"], manifest.dims)
    with pytest.raises(ValueError, match="stale or foreign engine"):
        runner.activate()
    choice = choose_backend(manifest, detect_environment(), bundle=bundle)
    assert choice.kind == BackendKind.TENSORRT, choice.describe()
    runners = open_runners(bundle, manifest, choice)
    try:
        assert all(r.backend == "tensorrt" for r in runners.values())
    finally:
        for r in runners.values():
            r.deactivate()
