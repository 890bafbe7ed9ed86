"""The shapes training recipe runs end to end on a tiny config (every stage, resume, export through convert)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from extras import require_export

pytestmark = require_export()  # torch/onnx/diffusers: skipped on a base install

import torch
from diffusers import AutoencoderKL

from mmgen_edge.export.model_dir import load_model, read_model_dir_config
from mmgen_edge.samples.shapes.train import TINY_RECIPE, deepened_blocks, deepened_state_dict, run, training_batch


def test_tiny_recipe_runs_every_stage_resumes_and_exports(tmp_path):
    work, weights = tmp_path / "work", tmp_path / "weights"
    run(work, TINY_RECIPE, export=weights)
    assert {p.name for p in work.iterdir()} >= {"dataset.npz", "vae_crops", "vae", "latents.npz", "checkpoint.pt"}
    latents = np.load(work / "latents.npz")["latents"]
    assert latents.shape == (TINY_RECIPE.num_scenes, 16, 8, 8)
    objects = np.load(work / "dataset.npz")["objects"]  # object coverage per latent pixel, for the weighted loss
    assert objects.shape == (TINY_RECIPE.num_scenes, 8, 8) and 0 <= objects.min() and objects.max() <= 1
    assert objects.max() > 0  # every scene shows objects
    assert 0.5 < latents.std() < 2.0  # the scaling factor normalises the latents
    meta = read_model_dir_config(weights / "mmgen")
    assert meta.provenance.train_steps == TINY_RECIPE.steps and meta.model.num_classes == 12
    model = load_model(weights / "mmgen")
    assert model.config.depth == TINY_RECIPE.depth
    # resume: more steps continue from the checkpoint instead of starting over
    longer = dataclasses.replace(TINY_RECIPE, steps=TINY_RECIPE.steps + 2)
    run(work, longer)
    steps = torch.load(work / "checkpoint.pt", weights_only=False)["steps"]
    assert steps == TINY_RECIPE.steps + 2
    # a palette run from these weights: the masks are painted again and only their latents encoded again
    from mmgen_edge.samples.shapes.encoding import MASK_PALETTE

    before = np.load(work / "latents.npz")
    palette_work = tmp_path / "palette"
    palette_work.mkdir()
    for name in ("vae", "latents.npz"):
        (palette_work / name).symlink_to(work / name)
    recipe = dataclasses.replace(TINY_RECIPE, mask_palette=MASK_PALETTE)
    run(palette_work, recipe, init=weights / "mmgen", export=tmp_path / "palette-weights")
    data = np.load(palette_work / "dataset.npz")
    assert {tuple(c) for c in np.unique(data["images"][:, 3].reshape(-1, 3), axis=0)} <= set(MASK_PALETTE)
    np.testing.assert_array_equal(data["images"][:, :3], np.load(work / "dataset.npz")["images"][:, :3])
    after = np.load(palette_work / "latents.npz")
    np.testing.assert_array_equal(after["latents"][:, :12], before["latents"][:, :12])  # rgb, depth, normal kept
    assert np.abs(after["latents"][:, 12:] - before["latents"][:, 12:]).max() > 0.1  # masks encoded again
    assert list(after["digests"][:3]) == list(before["digests"][:3]) and after["digests"][3] != before["digests"][3]
    assert read_model_dir_config(tmp_path / "palette-weights" / "mmgen").model.mask_palette == MASK_PALETTE
    # a deeper run from these (1-block) weights grows the model; a shallower one is refused
    deep = dataclasses.replace(TINY_RECIPE, depth=3)
    deep_work = tmp_path / "deep"
    deep_work.mkdir()
    for name in ("vae", "latents.npz", "dataset.npz"):
        (deep_work / name).symlink_to(work / name)
    run(deep_work, deep, init=weights / "mmgen", export=tmp_path / "deep-weights")
    assert load_model(tmp_path / "deep-weights" / "mmgen").config.depth == 3
    shallow_work = tmp_path / "shallow"
    shallow_work.mkdir()
    for name in ("vae", "latents.npz", "dataset.npz"):
        (shallow_work / name).symlink_to(work / name)
    with pytest.raises(ValueError, match="architecture"):
        run(shallow_work, TINY_RECIPE, init=tmp_path / "deep-weights" / "mmgen")


def test_training_batch_follows_the_release_recipe():
    recipe = dataclasses.replace(TINY_RECIPE, batch=64)
    latents = torch.randn(10, 16, 4, 4)
    labels = torch.arange(10)
    x_t, t, y, task, target, weight = training_batch(latents, labels, recipe, torch.Generator().manual_seed(0), 12)
    joint, conditioned = slice(0, 32), slice(32, 64)
    assert (task[joint] == 0).all() and (task[conditioned] > 0).all()
    assert torch.allclose(t[joint], t[joint][:, :1].expand(-1, 4))  # one shared t per joint sample
    held = t[conditioned].gather(1, (task[conditioned] - 1)[:, None]).squeeze(1)
    assert torch.all(held == 0.005)  # the condition slot sits at t_b
    for i in range(32, 64):  # no loss on the held slot, loss everywhere else
        k = int(task[i]) - 1
        assert weight[i, 4 * k : 4 * k + 4].sum() == 0 and weight[i].sum() == 12
    assert (y == 12).float().mean() < 0.3  # class dropout (0.1) replaces some labels with the null label


def test_object_coverage_is_the_object_share_of_each_latent_block():
    from mmgen_edge.samples.shapes.train import object_coverage

    instances = np.zeros((16, 16), np.int32)
    instances[0:8, 0:8] = 2  # block (0, 0) all object
    instances[8:12, 8:16] = 1  # block (1, 1) half object
    np.testing.assert_allclose(object_coverage(instances), [[1.0, 0.0], [0.0, 0.5]])
    with pytest.raises(ValueError, match="do not tile"):
        object_coverage(np.zeros((12, 16), np.int32))


def test_the_object_weight_multiplies_the_loss_on_object_pixels_only():
    recipe = dataclasses.replace(TINY_RECIPE, batch=64, object_loss_weight=4.0)
    latents, labels = torch.randn(10, 16, 4, 4), torch.arange(10)
    objects = torch.zeros(10, 4, 4)
    objects[:, 0, 0], objects[:, 1, 1] = 1.0, 0.25
    plain = training_batch(latents, labels, dataclasses.replace(recipe, object_loss_weight=0.0),
                           torch.Generator().manual_seed(0), 12, objects)  # fmt: skip
    weighted = training_batch(latents, labels, recipe, torch.Generator().manual_seed(0), 12, objects)
    for a, b in zip(plain[:5], weighted[:5]):  # same draws: only the weight changes
        torch.testing.assert_close(a, b)
    mask, weight = plain[5], weighted[5]
    assert mask.shape == (64, 16, 1, 1) and weight.shape == (64, 16, 4, 4)
    torch.testing.assert_close(weight[:, :, 0, 0], 5.0 * mask[:, :, 0, 0])  # 1 + 4 * 1
    torch.testing.assert_close(weight[:, :, 1, 1], 2.0 * mask[:, :, 0, 0])  # 1 + 4 * 0.25
    torch.testing.assert_close(weight[:, :, 2, 3], mask[:, :, 0, 0])  # no object: the release's weight
    assert torch.all(weight[mask.expand_as(weight) == 0] == 0)  # the held slot still has no loss


def test_exporting_weights_keeps_an_identical_vae_and_never_deletes_a_foreign_folder(tmp_path):
    """``--export`` over the shipped weights keeps their VAE when it is the one trained with; a folder that is not
    mmgen-edge's (a downloaded VAE, anything else) is refused, not deleted."""
    import shutil

    from mmgen_edge.samples.shapes.train import export_weights

    work, out = tmp_path / "work", tmp_path / "weights"
    run(work, TINY_RECIPE, export=out)
    vae = AutoencoderKL.from_pretrained(out / "vae")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "vae").iterdir()}
    export_weights(work, out, vae)  # the same VAE: kept as it is
    assert {p.name: p.stat().st_mtime_ns for p in (out / "vae").iterdir()} == before
    shutil.rmtree(out / "vae")
    (out / "vae").mkdir()
    (out / "vae" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        export_weights(work, out, vae)
    assert (out / "vae" / "notes.txt").read_text() == "mine"


def test_deepened_blocks_spread_the_new_blocks_between_the_old_ones():
    assert deepened_blocks(6, 9) == [0, 1, None, 2, 3, None, 4, 5, None]
    assert deepened_blocks(6, 8) == [0, 1, 2, None, 3, 4, 5, None]
    assert deepened_blocks(6, 6) == [0, 1, 2, 3, 4, 5]
    assert deepened_blocks(1, 3) == [0, None, None]
    for old, new in ((9, 6), (0, 3)):
        with pytest.raises(ValueError, match="deepen"):
            deepened_blocks(old, new)


def test_a_deepened_model_computes_the_same_function_and_its_new_blocks_learn():
    from mmgen_edge.export.model import MMGen
    from mmgen_edge.config import ModelConfig

    def config(depth: int) -> ModelConfig:
        return ModelConfig(depth=depth, hidden_size=32, num_heads=2, patch_size=2, resolution=32, projector_dim=None,
                           z_dim=None)  # fmt: skip

    torch.manual_seed(0)
    start = MMGen(config(2)).eval()
    with torch.no_grad():  # every weight non-zero, adaLN included: trained blocks, not identities
        for p in start.parameters():
            p.add_(0.05 * torch.randn_like(p))
    grown = MMGen(config(5)).eval()
    grown.load_state_dict(deepened_state_dict(start, 5))
    cfg = start.config
    x = torch.randn(3, cfg.in_channels, cfg.latent_size, cfg.latent_size)
    t, y, task = torch.rand(3, cfg.num_modalities), torch.tensor([0, 1, cfg.num_classes]), torch.tensor([0, 1, 3])
    reference = start(x, t, y, task)
    out = grown(x, t, y, task)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    assert reference.abs().mean() > 0.01
    for position, source in enumerate(deepened_blocks(2, 5)):
        if source is None:  # a new block: gates 0 (identity), attention initialised, and its gates get gradient
            assert grown.blocks[position].adaLN_modulation[-1].weight.abs().max() == 0
            assert grown.blocks[position].attn.qkv.weight.abs().max() > 0
    out.square().mean().backward()
    new = [grown.blocks[i] for i, s in enumerate(deepened_blocks(2, 5)) if s is None]
    assert all(b.adaLN_modulation[-1].weight.grad.abs().max() > 0 for b in new)
