"""The torch-free runtime: input checks, no silent fallback, backend choice, and loop parity with the reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from extras import require_export

pytestmark = require_export()  # torch/onnx/diffusers: skipped on a base install

import torch

from mmgen_edge.export.model_dir import load_model
from mmgen_edge.export.sampling import sample
from mmgen_edge.runtime.backend import BackendKind, Environment, choose_backend, open_runners
from mmgen_edge.runtime.loop import DenoisingLoop
from mmgen_edge.runtime.manifest import EngineEntry, read_manifest
from mmgen_edge.runtime.onnxruntime_runner import OnnxRuntimeRunner
from mmgen_edge.runtime.sampler import SamplerConfig

CPU_ONLY = Environment(ort_providers=("CPUExecutionProvider",))


@pytest.fixture(scope="module")
def manifest(tiny_bundle):
    return read_manifest(tiny_bundle)


@pytest.fixture(scope="module")
def runners(tiny_bundle, manifest):
    choice = choose_backend(manifest, CPU_ONLY)
    opened = open_runners(tiny_bundle, manifest, choice)
    yield opened
    for r in opened.values():
        r.deactivate()


def test_runner_checks_inputs_against_the_manifest(runners):
    enc = runners["vae_encoder"]
    good = np.zeros((2, 3, 32, 32), np.float32)
    assert enc.infer({"image": good})["latent"].shape == (2, 4, 4, 4)
    cases = [
        ({"img": good}, r"missing inputs \['image'\], unexpected inputs \['img'\]"),
        ({"image": good.astype(np.float64)}, "dtype float64, the graph takes float32"),
        ({"image": good[:, :, :16]}, r"shape \(2, 3, 16, 32\)"),
        ({"image": np.zeros((5, 3, 32, 32), np.float32)}, "N = 5 is outside the bundle's range 1..4"),
    ]
    for feeds, message in cases:
        with pytest.raises(ValueError, match=message):
            enc.infer(feeds)
    den = runners["denoiser_cached"]
    feeds = dict(
        x_t=np.zeros((2, 16, 4, 4), np.float32), t_cur=np.zeros((3, 4), np.float32), t_next=np.zeros((2, 4), np.float32),
        block_modulation=np.zeros((2, 2, 384), np.float32), final_modulation=np.zeros((2, 4, 128), np.float32),
        cfg_scale=np.ones(1, np.float32),
    )  # fmt: skip
    with pytest.raises(ValueError, match="N = 2 elsewhere"):
        den.infer(feeds)


def test_inactive_runner_and_unavailable_provider_fail_loudly(tiny_bundle, manifest):
    runner = OnnxRuntimeRunner(tiny_bundle, "vae_decoder", manifest.graphs["vae_decoder"], manifest.dims)
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer({"latent": np.zeros((1, 4, 4, 4), np.float32)})
    cuda = OnnxRuntimeRunner(tiny_bundle, "vae_decoder", manifest.graphs["vae_decoder"], manifest.dims, ["CUDAExecutionProvider"])
    with pytest.raises(RuntimeError, match=r"CUDAExecutionProvider is not available.*mmgen-edge\[gpu\]"):
        cuda.activate()


def _engine(graph: str, **over) -> EngineEntry:
    fields = dict(
        graph=graph, file=f"{graph}.engine", precision="fp16", trt_version="10.13.0", device_name="NVIDIA H100",
        compute_capability="9.0", strongly_typed=True, layer_precisions={"Half": 10}, dims={}, built="2026-11-24",
    )  # fmt: skip
    fields.update(over)
    return EngineEntry(**fields)


def test_backend_choice_order_and_reasons(manifest):
    graphs = ("conditioning", "denoiser_cached", "vae_encoder", "vae_decoder")
    gpu = Environment(("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"), "10.13.0", "NVIDIA H100", "9.0")
    with_engines = manifest.model_copy(update={"engines": tuple(_engine(g) for g in graphs)})
    assert choose_backend(with_engines, gpu).kind == BackendKind.TENSORRT
    # stale TensorRT version: never used, and the reason is given
    stale = Environment(gpu.ort_providers, "10.9.0", "NVIDIA H100", "9.0")
    choice = choose_backend(with_engines, stale)
    assert choice.kind == BackendKind.ORT_TENSORRT
    assert any("built with TensorRT 10.13.0, this machine has 10.9.0" in r for r in choice.rejected)
    foreign = Environment(gpu.ort_providers, "10.13.0", "NVIDIA GeForce RTX 4090", "8.9")
    assert any("built for NVIDIA H100 (sm 9.0)" in r for r in choose_backend(with_engines, foreign).rejected)
    partial = manifest.model_copy(update={"engines": (_engine("denoiser_cached"),)})
    assert choose_backend(partial, gpu).kind == BackendKind.ORT_TENSORRT
    cuda_only = Environment(("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert choose_backend(manifest, cuda_only).kind == BackendKind.ORT_CUDA
    cpu = choose_backend(manifest, CPU_ONLY)
    assert cpu.kind == BackendKind.ORT_CPU and "no GPU backend available" in cpu.describe()
    with pytest.raises(RuntimeError, match="ort-cuda: onnxruntime has no CUDAExecutionProvider"):
        choose_backend(manifest, CPU_ONLY, "ort-cuda")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        choose_backend(manifest, CPU_ONLY, "cuda")


@pytest.mark.parametrize(
    "kind, condition, cfg, noise_scale",
    [("euler", "rgb", 1.0, 1.0), ("euler", None, 2.0, 1.0), ("heun", "depth", 1.0, 1.0), ("euler_maruyama", "rgb", 1.5, 1.0),
     ("euler", None, 3.0, 0.8), ("euler", "depth", 1.0, 0.8)],
)
def test_loop_equals_the_pytorch_reference(tiny_model_dir, manifest, runners, kind, condition, cfg, noise_scale):
    model = load_model(tiny_model_dir)
    config = SamplerConfig(kind=kind, num_steps=4, noise_scale=noise_scale)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 16, 4, 4, generator=g)
    cond = torch.randn(2, 4, 4, 4, generator=g) if condition else None
    labels = torch.tensor([1, 7])
    zs = [torch.randn(noise.shape, generator=g) for _ in range(3)]
    ref = sample(model, noise, config, labels=labels, condition=cond, condition_modality=condition, cfg_scale=cfg, step_noise=zs)
    loop = DenoisingLoop(manifest, runners)
    out = loop.sample(
        noise.numpy(), labels=labels.numpy(), condition=None if cond is None else cond.numpy(),
        condition_index=None if condition is None else manifest.model.modality_index(condition),
        sampler=config, cfg_scale=cfg, step_noise=[z.numpy() for z in zs],
    )  # fmt: skip
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-4)


def test_conditioning_cache_is_reused_across_frames(manifest, runners):
    loop = DenoisingLoop(manifest, runners)
    noise = np.random.default_rng(0).standard_normal((1, 16, 4, 4), dtype=np.float32)
    cond = np.zeros((1, 4, 4, 4), np.float32)
    first = loop.sample(noise, condition=cond, condition_index=0, sampler=SamplerConfig(num_steps=4))
    assert loop.stats.conditioning_calls == 4 and loop.stats.cache_hits == 0
    second = loop.sample(noise, condition=cond + 1, condition_index=0, sampler=SamplerConfig(num_steps=4))
    assert loop.stats.conditioning_calls == 4 and loop.stats.cache_hits == 4 and loop.stats.denoiser_calls == 8
    assert not np.allclose(first, second)


def test_runtime_and_sdk_never_import_torch():
    code = (
        "import sys, mmgen_edge, mmgen_edge.sdk.api, mmgen_edge.cli, mmgen_edge.runtime.pipeline, "
        "mmgen_edge.runtime.backend, mmgen_edge.sdk.processors\n"
        "mmgen_edge.load\n"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
        "assert not bad, bad[:5]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    root = Path(__file__).parents[1]
    offenders = [
        str(p.relative_to(root))
        for folder in ("runtime", "sdk")
        for p in (root / folder).rglob("*.py")
        if any(line.strip().startswith(("import torch", "from torch")) for line in p.read_text().splitlines())
    ]
    assert offenders == []


def test_pipeline_facade_samples_like_the_loop_and_swaps_runners(tiny_bundle, manifest, runners):
    """``Pipeline.sample`` / ``step_noise`` are the loop's; ``replace_runners`` reaches the sampler, unknown graphs fail."""
    from mmgen_edge.runtime.pipeline import Pipeline

    config = SamplerConfig(kind="euler_maruyama", num_steps=3)
    noise = np.random.default_rng(1).standard_normal((2, 16, 4, 4), dtype=np.float32)
    loop = DenoisingLoop(manifest, runners)
    with Pipeline(tiny_bundle, backend="ort-cpu", verify="size", environment=CPU_ONLY) as pipeline:
        zs = pipeline.step_noise(config, [np.random.default_rng(5), np.random.default_rng(6)])
        assert zs is not None and len(zs) == 2 and zs[0].shape == (2, 16, 4, 4)
        expected = loop.step_noise(config, [np.random.default_rng(5), np.random.default_rng(6)])
        assert expected is not None and all(np.array_equal(a, b) for a, b in zip(zs, expected, strict=True))
        assert pipeline.step_noise(SamplerConfig(kind="heun"), [np.random.default_rng(0)]) is None
        out = pipeline.sample(noise, labels=np.array([1, 2]), sampler=config, cfg_scale=1.5, step_noise=zs)
        np.testing.assert_allclose(out, loop.sample(noise, labels=np.array([1, 2]), sampler=config, cfg_scale=1.5, step_noise=zs), rtol=1e-6, atol=1e-6)

        calls: list[str] = []
        inner = pipeline.runners["denoiser_cached"]

        class Counting:
            def infer(self, feeds):
                calls.append("denoiser_cached")
                return inner.infer(feeds)

            def deactivate(self):
                inner.deactivate()

        pipeline.replace_runners({"denoiser_cached": Counting()})  # type: ignore[dict-item]
        again = pipeline.sample(noise, labels=np.array([1, 2]), sampler=config, cfg_scale=1.5, step_noise=zs)
        np.testing.assert_array_equal(again, out)
        assert calls == ["denoiser_cached"] * 3
        with pytest.raises(ValueError, match=r"cannot replace runners of \['decoder'\]"):
            pipeline.replace_runners({"decoder": inner})


@pytest.mark.parametrize("graph, where", [("vae_decoder", "the vae_decoder graph"), ("denoiser_cached", r"the denoiser \(its latents\)")])
def test_a_bundle_whose_graph_computes_nan_fails_naming_it_instead_of_black_maps(tiny_bundle, tmp_path, graph, where):
    """A bundle edited after export (NaN in one weight, hashes rewritten) is refused at the first frame."""
    import shutil

    import onnx
    from onnx import numpy_helper

    import mmgen_edge
    from mmgen_edge.runtime.manifest import file_entry, write_manifest
    from mmgen_edge.runtime.pipeline import NonFiniteOutputError

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    model = onnx.load(str(bundle / f"{graph}.onnx"))
    weight = max((t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT), key=lambda t: np.prod(t.dims))
    values = numpy_helper.to_array(weight).copy()
    values.reshape(-1)[:] = np.nan
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(bundle / f"{graph}.onnx"))
    manifest = read_manifest(bundle, verify="none")
    files = tuple(file_entry(bundle, f.path) if f.path == f"{graph}.onnx" else f for f in manifest.files)
    write_manifest(bundle, manifest.model_copy(update={"files": files}))
    with mmgen_edge.load(bundle, backend="ort-cpu") as nan_model:
        image = np.full((32, 32, 3), 128, np.uint8)
        with pytest.raises(NonFiniteOutputError, match=f"{where} produced NaN or Inf"):
            nan_model.perceive(image, seed=0)
