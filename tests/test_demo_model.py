"""The shipped demo model (samples/shapes/weights): export parity, SDK = PyTorch reference, accuracy, INT8 gate.

These run on the committed weights; the demo bundle is exported into a temporary directory once per session.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from extras import require_export

pytestmark = require_export()  # torch/onnx/diffusers: skipped on a base install

import torch
from diffusers import AutoencoderKL

import mmgen_edge
from mmgen_edge.export.graphs import CachedDenoiserStep, Conditioning
from mmgen_edge.export.model_dir import load_model
from mmgen_edge.export.sampling import sample
from mmgen_edge.runtime.manifest import read_manifest
from mmgen_edge.runtime.sampler import SamplerConfig
from mmgen_edge.samples.shapes.evaluate import baselines, evaluate_generation, evaluate_perception, held_out_scenes, vae_ceiling
from mmgen_edge.samples.shapes.scenes import CATEGORY_NAMES
from mmgen_edge.sdk.demo import PHOTO_CAPTION, WEIGHTS_DIR, perceive_photo



@pytest.fixture(scope="session")
def demo_model(demo_bundle):
    with mmgen_edge.load(demo_bundle, device="cpu") as model:
        yield model


def test_shipped_weights_are_small_and_load():
    sizes = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert sizes <= 25_000_000
    model = load_model(WEIGHTS_DIR / "mmgen")
    assert model.config.resolution == 128 and model.config.num_classes == 12


def test_demo_graphs_match_pytorch(demo_bundle):
    import onnxruntime as ort

    model = load_model(WEIGHTS_DIR / "mmgen", dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 16, 16, 16, generator=g), torch.rand(3, 4, generator=g)
    y, task = torch.tensor([0, 5, 12]), torch.tensor([1, 0, 2])
    with torch.no_grad():
        blocks, heads = Conditioning(model)(t, y, task)
        ref = CachedDenoiserStep(model)(x, t, t * 0.5, blocks, heads, torch.tensor([1.0]))
    manifest = read_manifest(demo_bundle)
    sess = ort.InferenceSession(str(demo_bundle / manifest.graphs["denoiser_cached"].file), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x_t": x.numpy(), "t_cur": t.numpy(), "t_next": (t * 0.5).numpy(), "block_modulation": blocks.numpy(),
                          "final_modulation": heads.numpy(), "cfg_scale": np.ones(1, np.float32)})  # fmt: skip
    for o, r in zip(out, ref):
        assert np.abs(o - r.numpy()).max() / np.abs(r.numpy()).max() < 1e-4


def test_sdk_on_demo_scenes_equals_the_pytorch_reference(demo_model):
    scenes = held_out_scenes(2, 128)
    noise = np.random.default_rng(0).standard_normal((16, 16, 16), dtype=np.float32)
    results = demo_model.perceive([s.rgb for s in scenes], noise=noise, steps=4, return_latents=True)
    vae = AutoencoderKL.from_pretrained(WEIGHTS_DIR / "vae", low_cpu_mem_usage=False).eval()
    images = torch.from_numpy(np.stack([s.rgb for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        latent = vae.encode(images).latent_dist.mean * vae.config.scaling_factor
    model = load_model(WEIGHTS_DIR / "mmgen", dtype=torch.float32)
    ref = sample(model, torch.from_numpy(noise)[None].expand(2, -1, -1, -1), SamplerConfig(num_steps=4), condition=latent, condition_modality="rgb")
    for i, r in enumerate(results):
        np.testing.assert_allclose(r.latents, ref[i].numpy(), rtol=1e-3, atol=1e-3)


def test_shipped_model_beats_trivial_baselines_clearly(demo_model):
    scenes = held_out_scenes(24, 128)
    ours = evaluate_perception(demo_model, scenes, steps=4)
    base = baselines(scenes)["trivial"]
    assert ours["depth_delta1"] > base["depth_delta1"] + 0.2
    assert ours["normal_mean"] < base["normal_mean"] - 10.0
    assert ours["seg_miou"] > base["seg_miou"] + 0.15


def test_vae_ceiling_of_the_demo_bundle(demo_model):
    # Measured on 64 held-out scenes: whole image delta1 0.995, normals 3.3 deg, mIoU 0.82; objects delta1 0.988,
    # normals 11.8 deg, mIoU 0.75; the counter right on 73 % of the round-tripped masks, 100 % of the exact ones.
    scenes = held_out_scenes(8, 128)
    ceiling = vae_ceiling(demo_model, scenes)
    assert ceiling["depth_delta1"] > 0.98 and ceiling["normal_mean"] < 6.0 and ceiling["seg_miou"] > 0.7
    assert ceiling["object_depth_delta1"] > 0.95 and ceiling["object_normal_mean"] < 20.0 and ceiling["object_seg_miou"] > 0.6
    assert ceiling["object_count_accuracy_exact"] == 1.0 and ceiling["object_count_accuracy"] >= 0.5
    # Objects are where a model loses: phase 1's object normals were no better than a constant facing the camera
    # (47 vs 43 deg); the shipped phase-2 model must beat that constant clearly (29 deg), and the VAE allows ~12.
    ours, trivial = evaluate_perception(demo_model, scenes, steps=4), baselines(scenes)["trivial"]
    assert ours["object_normal_mean"] > ceiling["object_normal_mean"]  # the ceiling bounds the model (phase 1: +35°, phase 2: +17°)
    assert ours["object_normal_mean"] < trivial["object_normal_mean"] - 8.0
    assert ceiling["object_normal_mean"] < trivial["object_normal_mean"] - 20.0


def test_generation_fidelity_per_class(demo_model, tmp_path):
    g = evaluate_generation(demo_model, tmp_path, per_class=1, steps=2)
    assert list(g["fidelity_per_class"]) == list(CATEGORY_NAMES)
    assert set(g["fidelity_per_class"].values()) <= {0.0, 1.0}
    assert g["fidelity"] == pytest.approx(np.mean(list(g["fidelity_per_class"].values())))
    assert 0.0 < g["consistency_delta1"] <= 1.0 and (tmp_path / "generation_grid.png").is_file()


def test_the_shipped_sampler_generates_the_class_object_count_in_most_samples(demo_model):
    """Issue 16's fourth target through the torch-free runtime: >= 60 % of class samples show their class's number
    of objects with the bundle's default sampler (guidance 3 from t >= 0.5, noise scale 0.8), at K = 4 on the eval's
    seeds (label * 1000 + j; 64.6 % measured on 144 samples, so a few flipped samples cannot cross the line), and
    the noise scale is what lifts it (53.5 % without)."""
    from mmgen_edge.samples.shapes.counting import count_matches_category, count_objects

    assert demo_model.manifest.sampler.noise_scale == 0.8
    shape = demo_model.latent_shape(1)[1:]

    def fidelity(noise_multiplier: float) -> float:
        hits = 0
        for label in range(len(CATEGORY_NAMES)):
            for j in range(12):
                noise = noise_multiplier * np.random.default_rng(label * 1000 + j).standard_normal(shape, dtype=np.float32)
                g = demo_model.generate(class_label=label, steps=4, noise=noise)
                hits += count_matches_category(count_objects(g.segmentation.labels, g.segmentation.colours), label)
        return hits / (12 * len(CATEGORY_NAMES))

    shipped, unscaled = fidelity(1.0), fidelity(1.25)  # 1.25 x 0.8: the release's unit noise
    assert shipped >= 0.60 and shipped > unscaled + 0.05, (shipped, unscaled)


def test_generation_samples_start_at_first_seed(demo_model, tmp_path):
    import cv2

    g = evaluate_generation(demo_model, tmp_path, per_class=1, steps=1, first_seed=7_000_000)
    assert g["first_seed"] == 7_000_000
    grid = cv2.cvtColor(cv2.imread(str(tmp_path / "generation_grid.png")), cv2.COLOR_BGR2RGB)
    size = demo_model.resolution
    for label in (0, 11):  # each row's first tile is that class's sample from seed first_seed + 1000 * label
        expected = demo_model.generate(class_label=label, steps=1, seed=7_000_000 + 1000 * label).rgb
        np.testing.assert_array_equal(grid[label * size : (label + 1) * size, :size], expected)
    other = demo_model.generate(class_label=0, steps=1, seed=0).rgb
    assert np.abs(grid[:size, :size].astype(int) - other).mean() > 1  # another seed, another sample
    for bad in (-1, True, 2**63 - 1, 1.5, "7"):
        with pytest.raises(ValueError, match="first_seed"):
            evaluate_generation(demo_model, tmp_path, per_class=1, steps=1, first_seed=bad)


def test_demo_photo_is_captioned_out_of_domain(demo_model, tmp_path):
    pytest.importorskip("matplotlib")
    import cv2

    photo = perceive_photo(demo_model, tmp_path, steps=1, seed=0)
    assert photo["note"] == PHOTO_CAPTION and "out of domain" in PHOTO_CAPTION and "journey 1" in PHOTO_CAPTION
    gallery = cv2.imread(str(tmp_path / "photo.png"))
    height = photo["size"][0]
    assert gallery.shape[0] > height  # the caption band under the photo row
    band = gallery[height:]
    assert (band == 255).mean() > 0.8 and (band < 128).any()  # white band with dark text


@pytest.mark.slow
def test_int8_demo_bundle_passes_the_gate_and_runs(demo_bundle, tmp_path):
    from mmgen_edge.calibration.calibrate import calibrate_bundle

    report = calibrate_bundle(demo_bundle, "demo:32", tmp_path / "int8", num_samples=32, eval_scenes=24, speed_runs=5)
    assert report.passed
    manifest = read_manifest(tmp_path / "int8")
    assert manifest.precision.value == "int8" and manifest.calibration["report"]["passed"] is True
    assert manifest.calibration["source_weights_sha256"] == read_manifest(demo_bundle).provenance.model_weights_sha256
    with mmgen_edge.load(tmp_path / "int8", device="cpu") as model:
        result = model.perceive(held_out_scenes(1, 128)[0].rgb, seed=0)
    assert result.depth.shape == (128, 128)


# ---------------------------------------------------------------------------------------------- the distilled decoder
@pytest.fixture(scope="session")
def tiny_decoder_bundle(tmp_path_factory):
    from mmgen_edge.sdk.demo import ensure_tiny_decoder_bundle

    return ensure_tiny_decoder_bundle(tmp_path_factory.mktemp("demo-tiny") / "bundle", progress=False)


def test_shipped_tiny_decoder_is_small_and_gated(tiny_decoder_bundle, demo_bundle):
    from mmgen_edge.bench.harness import graph_cost
    from mmgen_edge.calibration.gate import GateThresholds, check_gate
    from mmgen_edge.sdk.demo import TINY_DECODER_DIR

    assert sum(p.stat().st_size for p in TINY_DECODER_DIR.iterdir()) < 2_000_000
    manifest = read_manifest(tiny_decoder_bundle)
    assert manifest.vae.students == ("vae_decoder",) and manifest.vae.decoder.family == "AutoencoderTiny"
    gate = manifest.vae.gate
    assert gate["mode"] == "ground truth" and gate["eval_scenes"] == 32 and gate["thresholds"] == dataclasses.asdict(GateThresholds())
    failures = check_gate(gate["reference"], gate["candidate"], GateThresholds())  # the verdict follows from the numbers
    assert [f.metric for f in failures] == [f["metric"] for f in gate["failures"]]
    assert gate["passed"] is (not failures) and gate["forced"] is bool(failures)
    for name in ("depth_delta1", "seg_miou", "object_depth_delta1"):  # near the full decoder even where it fails
        assert gate["candidate"][name] > gate["reference"][name] - 0.05, name
    assert gate["candidate"]["object_normal_mean"] < gate["reference"]["object_normal_mean"] + 2.0
    shapes = {"latent": [3, 4, 16, 16]}  # the three perception maps
    tiny_flops, _ = graph_cost(tiny_decoder_bundle / "vae_decoder.onnx", shapes)
    full_flops, _ = graph_cost(demo_bundle / "vae_decoder.onnx", shapes)
    assert tiny_flops < full_flops / 2  # the decoder's work, counted on the graphs: less than half


def test_demo_reports_both_decoders_side_by_side(demo_bundle, tiny_decoder_bundle, tmp_path):
    from mmgen_edge.sdk.demo import run_demo

    report = run_demo(tmp_path, steps=2, bundle=str(demo_bundle), tiny_bundle=str(tiny_decoder_bundle))
    section = report["decoders"]
    assert isinstance(section["gate"]["passed"], bool) and section["decoder"]["family"] == "AutoencoderTiny"
    assert section["gate"]["eval_scenes"] == 32
    for name in ("full", "tiny"):
        m = section["metrics"][name]
        assert 0 < m["depth_delta1"] <= 1 and 0 < m["normal_mean"] < 90
        assert set(section["ms"][name]) == {"encode", "steps", "decode", "frame"}
    assert section["metrics"]["full"]["depth_delta1"] == pytest.approx(report["perception"]["metrics"]["depth_delta1"])
    assert section["speedup"]["decode"] == pytest.approx(section["ms"]["full"]["decode"] / section["ms"]["tiny"]["decode"])
    text = (tmp_path / "report.md").read_text()
    assert "| tiny |" in text and "Distilled decoder (AutoencoderTiny" in text


def test_the_vae_kept_palette_is_candidate_15_and_survives_the_round_trip_better(demo_model):
    # the palette search's own draws reproduce the shipped constant, and on training scenes other than the 64 it was
    # chosen on, the demo VAE keeps its masks better than the saturated MASK_PALETTE's
    from mmgen_edge.samples.shapes.encoding import MASK_PALETTE, VAE_KEPT_PALETTE
    from mmgen_edge.samples.shapes.palette_search import random_palette, round_trip_scores
    from mmgen_edge.samples.shapes.scenes import render_scene

    rng = np.random.default_rng(123)
    assert [random_palette(rng) for _ in range(16)][15] == VAE_KEPT_PALETTE
    scenes = [render_scene(seed, demo_model.resolution) for seed in range(1000, 1016)]
    kept, saturated = round_trip_scores(demo_model, scenes, VAE_KEPT_PALETTE), round_trip_scores(demo_model, scenes, MASK_PALETTE)
    assert kept["miou"] > saturated["miou"] + 0.05, (kept, saturated)
    assert 0.5 < kept["count_accuracy"] <= 1.0
