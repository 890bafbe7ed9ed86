"""The shapes evaluation: metrics plumbing on a tiny bundle, and the shipped demo model against trivial baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest

import mmgen_edge
from extras import skip_without_export
from mmgen_edge.samples.shapes.evaluate import HELD_OUT_SEED, baselines, held_out_scenes, run_evaluation, score


def test_held_out_scenes_are_disjoint_from_training_seeds():
    skip_without_export()  # the training recipe imports torch
    from mmgen_edge.samples.shapes.train import RecipeConfig

    scenes = held_out_scenes(3, 64)
    assert [s.seed for s in scenes] == [HELD_OUT_SEED, HELD_OUT_SEED + 1, HELD_OUT_SEED + 2]
    assert HELD_OUT_SEED > RecipeConfig().num_scenes + RecipeConfig().seed


def test_score_of_perfect_maps_is_perfect():
    from types import SimpleNamespace

    from mmgen_edge.sdk.results import SegmentationMap

    scene = held_out_scenes(1, 64)[0]
    disparity = 1.0 / scene.depth
    perfect = SimpleNamespace(
        depth=(disparity - disparity.min()) / np.ptp(disparity),
        normals=scene.normals,
        segmentation=SegmentationMap(labels=scene.instances, colours=np.zeros((scene.instances.max() + 1, 3), np.uint8)),
    )
    m = score(perfect, scene)
    assert m["depth_delta1"] == 1.0 and m["depth_abs_rel"] < 1e-4
    assert m["normal_mean"] < 1e-3 and m["seg_miou"] == 1.0
    base = baselines([scene])["trivial"]
    assert base["depth_delta1"] < 0.9 and base["normal_mean"] > 10 and base["seg_miou"] < 0.9


def test_run_evaluation_writes_a_report(tiny_bundle, tmp_path):
    with mmgen_edge.load(tiny_bundle) as model:
        report = run_evaluation(model, tmp_path, num_scenes=4, steps=(1, 2), generation_per_class=0)
    assert set(report["perception"]) == {"1", "2"}
    assert {"depth_delta1", "normal_mean", "seg_miou", "seconds_per_frame"} <= set(report["perception"]["1"])
    assert json.loads((tmp_path / "report.json").read_text())["held_out"]["scenes"] == 4
    assert "| K=2 |" in (tmp_path / "report.md").read_text()


def test_run_evaluation_reports_object_metrics_and_the_vae_ceiling(tiny_bundle, tmp_path):
    with mmgen_edge.load(tiny_bundle) as model:
        report = run_evaluation(model, tmp_path, num_scenes=3, steps=(1,), generation_per_class=0, ceiling_scenes=2)
    objects = {"object_depth_delta1", "object_depth_abs_rel", "object_normal_mean", "object_seg_miou"}
    assert objects <= set(report["perception"]["1"]) and objects <= set(report["baselines"]["trivial"])
    assert objects | {"object_count_accuracy", "object_count_accuracy_exact"} <= set(report["vae_ceiling"])
    assert 0.0 <= report["vae_ceiling"]["object_count_accuracy_exact"] <= 1.0  # 32 px: the counter is for 128 px
    assert report["held_out"]["ceiling_scenes"] == 2
    text = (tmp_path / "report.md").read_text()
    assert "Object pixels only" in text and "| VAE ceiling (2 scenes) |" in text and "| K=1 |" in text
    with pytest.raises(ValueError, match="ceiling_scenes"):
        run_evaluation(model, tmp_path, num_scenes=1, steps=(1,), ceiling_scenes=-1)


def test_run_evaluation_compares_a_second_bundle_side_by_side(tiny_bundle, tmp_path):
    with mmgen_edge.load(tiny_bundle, backend="ort-cpu") as model, mmgen_edge.load(tiny_bundle, backend="ort-cpu") as twin:
        report = run_evaluation(model, tmp_path, num_scenes=2, steps=(1, 2), generation_per_class=0, ceiling_scenes=0,
                                compare=twin, speed_frames=2)  # fmt: skip
    compare = report["compare"]
    assert compare["bundle"] == str(tiny_bundle) and compare["decoder"]["family"] == "AutoencoderKL"
    for k in ("1", "2"):
        for key in ("depth_delta1", "normal_mean", "seg_miou", "object_normal_mean"):  # same bundle, same noise
            assert compare["perception"][k][key] == report["perception"][k][key]
        ms = compare["ms"][k]
        assert ms["frames"] == 2 and ms["steps"] == int(k)
        for label in ("this", "compare"):
            assert set(ms[label]) == {"encode", "steps", "decode", "frame"} and all(v > 0 for v in ms[label].values())
        assert ms["speedup"]["compare"]["decode"] == pytest.approx(ms["this"]["decode"] / ms["compare"]["decode"])
    text = (tmp_path / "report.md").read_text()
    assert "Side by side with" in text and "| 2 | compare |" in text and "Speed of the compared bundle: K=1: decode" in text
