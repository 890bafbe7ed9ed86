"""runtime.gpu: one lazy importer, one CUDA error helper, one reader of the GPU identity, and build and match agree.

A fake cuda-python module (two devices, the second one current) stands in for the GPU, so these tests run on CPU.
"""

from __future__ import annotations

import enum
import sys
import types
from types import SimpleNamespace

import pytest
from extras import require_export

pytestmark = require_export()  # the engine builder reads graphs with onnx: skipped on a base install

from mmgen_edge.config import ModelConfig
from mmgen_edge.export import engines
from mmgen_edge.export.engines import BuildEnvironment, engine_entry, engine_file_name
from mmgen_edge.export.tensorrt_build import EngineReport, Precision
from mmgen_edge.runtime import gpu
from mmgen_edge.runtime.backend import RUNTIME_GRAPHS, detect_environment, matching_engines
from mmgen_edge.runtime.manifest import FileEntry, LatentInfo, Manifest, VaeInfo
from mmgen_edge.runtime.sampler import SamplerConfig

TRT_VERSION = "10.13.0.35"


class FakeError(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorNoDevice = 100


class FakeCuda:
    """cuda-python's runtime module with only the calls the identity reader makes (any other attribute raises)."""

    def __init__(self, devices: list[tuple[bytes, int, int]], current: int | None):
        self.devices, self.current = devices, current

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        runtime = types.ModuleType("cuda.bindings.runtime")
        runtime.cudaGetDevice = self.cudaGetDevice  # type: ignore[attr-defined]
        runtime.cudaGetDeviceProperties = self.cudaGetDeviceProperties  # type: ignore[attr-defined]
        runtime.cudaGetErrorString = self.cudaGetErrorString  # type: ignore[attr-defined]
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime = runtime  # type: ignore[attr-defined]
        cuda = types.ModuleType("cuda")
        cuda.bindings = bindings  # type: ignore[attr-defined]
        for name, module in (("cuda", cuda), ("cuda.bindings", bindings), ("cuda.bindings.runtime", runtime)):
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(gpu, "_cudart", None)

    def cudaGetDevice(self):
        if self.current is None:
            return (FakeError.cudaErrorNoDevice, 0)
        return (FakeError.cudaSuccess, self.current)

    def cudaGetDeviceProperties(self, device):
        name, major, minor = self.devices[device]
        return (FakeError.cudaSuccess, SimpleNamespace(name=name.ljust(256, b"\x00"), major=major, minor=minor))

    def cudaGetErrorString(self, err):
        return (FakeError.cudaSuccess, b"no CUDA-capable device is detected")


DEVICES = [(b"NVIDIA A100-SXM4-80GB", 8, 0), (b"NVIDIA H100 80GB HBM3", 9, 0)]


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(__version__=TRT_VERSION))


def _manifest(engines_: tuple = ()) -> Manifest:
    config = ModelConfig(depth=2, hidden_size=64, num_heads=2, patch_size=2, resolution=32, projector_dim=None, z_dim=None)
    return Manifest(
        model=config, latent=LatentInfo(channels_per_modality=4, height=4, width=4, scaling_factor=0.5, downsample=8),
        vae=VaeInfo(kind="tiny", scaling_factor=0.5, parameters=1), sampler=SamplerConfig(), precision="fp16",
        dims={}, opset=17, graphs={}, engines=engines_,
        files=tuple(FileEntry(path=e.file, bytes=1, sha256="0" * 64) for e in engines_),  # engines are listed files
    )  # fmt: skip


def _built_here(env: BuildEnvironment) -> tuple:
    """Manifest entries as build_bundle_engines records them for ``env`` (one per runtime graph)."""
    report = EngineReport(env.trt_version, env.device_name, env.compute_capability, Precision.FP16, True, {"Half": 3})
    return tuple(engine_entry(g, engine_file_name(g, env, "fp16"), report, {}) for g in RUNTIME_GRAPHS)


def test_build_and_match_read_the_same_gpu_the_current_device(monkeypatch, fake_trt):
    cuda = FakeCuda(DEVICES, current=1)
    cuda.install(monkeypatch)
    built = engines.build_environment()
    assert built == BuildEnvironment(TRT_VERSION, "NVIDIA H100 80GB HBM3", "9.0")  # device 1, not device 0
    env = detect_environment()
    assert (env.tensorrt_version, env.gpu_name, env.compute_capability, env.gpu_problem) == (*built, None)

    usable, rejected = matching_engines(_manifest(_built_here(built)), env, None)
    assert [e.graph for e in usable] == list(RUNTIME_GRAPHS) and rejected == []

    cuda.current = 0  # the application selects the other GPU: both readers follow it
    assert engines.build_environment().device_name == detect_environment().gpu_name == "NVIDIA A100-SXM4-80GB"
    usable, rejected = matching_engines(_manifest(_built_here(built)), detect_environment(), None)
    assert usable == ()
    assert "built for NVIDIA H100 80GB HBM3 (sm 9.0), this GPU is NVIDIA A100-SXM4-80GB (sm 8.0)" in rejected[0]


def test_no_device_fails_the_build_and_is_explained_by_matching(monkeypatch, fake_trt):
    FakeCuda(DEVICES, current=None).install(monkeypatch)
    with pytest.raises(gpu.CudaError, match=r"cudaGetDevice failed: cudaErrorNoDevice \(100\): no CUDA-capable") as info:
        engines.build_environment()
    assert info.value.code == 100
    env = detect_environment()
    assert env.gpu_name is None and env.tensorrt_version == TRT_VERSION and "cudaErrorNoDevice" in (env.gpu_problem or "")
    built = BuildEnvironment(TRT_VERSION, "NVIDIA H100 80GB HBM3", "9.0")
    _, rejected = matching_engines(_manifest(_built_here(built)), env, None)
    assert rejected[0].endswith("no CUDA device is known (cudaGetDevice failed: cudaErrorNoDevice (100): no CUDA-capable device is detected)")


def test_missing_packages_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, installed or not
    monkeypatch.setattr(gpu, "_cudart", None)
    for module in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"building TensorRT engines needs the 'tensorrt' package: pip install 'mmgen-edge\[tensorrt\]'"):
        gpu.import_tensorrt("building TensorRT engines")
    with pytest.raises(ImportError, match=r"reading the CUDA device needs cuda-python .*pip install 'mmgen-edge\[tensorrt\]'"):
        gpu.current_device()
    with pytest.raises(ImportError, match=r"mmgen-edge\[tensorrt\]"):
        engines.build_environment()
    env = detect_environment()
    assert env.tensorrt_version is None and env.gpu_name is None
    assert "'tensorrt' package" in (env.gpu_problem or "") and "cuda-python" in (env.gpu_problem or "")
    _, rejected = matching_engines(_manifest(_built_here(BuildEnvironment("10.13.0", "NVIDIA H100", "9.0"))), env, None)
    assert "TensorRT is not installed (reading the TensorRT version needs the 'tensorrt' package" in rejected[0]


def test_check_cuda_raises_a_cuda_error_with_the_code(monkeypatch):
    monkeypatch.setattr(gpu, "_cudart", None)
    assert gpu.check_cuda((FakeError.cudaSuccess, 7)) == 7
    with pytest.raises(gpu.CudaError, match=r"cudaMalloc failed: cudaErrorNoDevice \(100\)$") as info:
        gpu.check_cuda((FakeError.cudaErrorNoDevice, 0), "cudaMalloc")
    assert isinstance(info.value, RuntimeError) and info.value.code == 100
