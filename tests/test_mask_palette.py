"""A model trained with fixed mask colours (``ModelConfig.mask_palette``): from the checkpoint's args through the
model directory and the bundle manifest to the SDK, which paints segmentation conditions with the palette.

The checkpoint and export tests skip without the export extra; the rest is torch-free (it runs on the base install).
"""

from __future__ import annotations

import numpy as np
import pytest
from extras import skip_without_export

from mmgen_edge.config import ModelConfig, check_mask_palette, preset
from mmgen_edge.sdk.api import generation_request
from mmgen_edge.sdk.encoding import encode_mask

PALETTE = ((128, 128, 128), (230, 25, 75), (60, 180, 75), (0, 130, 200))


def test_the_palette_is_read_from_the_checkpoint_args_and_release_args_have_none():
    skip_without_export()
    from mmgen_edge.export.checkpoint import architecture_from_args
    from mmgen_edge.export.synthetic import release_args

    assert architecture_from_args(release_args("SiT-S/2", 32), None).mask_palette is None
    config = architecture_from_args(release_args("SiT-S/2", 32, mask_palette=[list(c) for c in PALETTE]), None)
    assert config.mask_palette == PALETTE
    assert ModelConfig.model_validate_json(config.model_dump_json()) == config


@pytest.mark.parametrize(
    "palette, message",
    [
        ([(1, 2, 3)], "at least 2 colours"),
        ("red", "at least 2 colours"),
        ([(0, 0, 0), (255, 255)], "3 integers"),
        ([(0, 0, 0), (255, 255, -1)], "3 integers"),
        ([(0, 0, 0), (255, 255, True)], "3 integers"),
        ([(0, 0, 0), (30, 30, 30)], "closer than 64"),
        ([(i, 0, 0) for i in range(257)], "more than 256"),  # bounded before the quadratic distance check
    ],
)
def test_bad_palettes_are_refused_by_name(palette, message):
    with pytest.raises(ValueError, match=message):
        check_mask_palette(palette)
    with pytest.raises(ValueError, match="mask_palette"):
        preset("SiT-S/2", 32, mask_palette=palette)


def test_a_segmentation_condition_is_painted_with_the_model_palette():
    labels = np.zeros((32, 32), np.int64)
    labels[4:20, 4:20] = 7
    labels[24:30, 24:30] = 3
    painted = generation_request(32, 4, condition={"segmentation": labels}, seed=5, mask_palette=PALETTE).condition_image
    assert painted is not None
    assert tuple(painted[0, 31]) == PALETTE[0] and tuple(painted[10, 10]) == PALETTE[1] and tuple(painted[26, 26]) == PALETTE[2]
    random = generation_request(32, 4, condition={"segmentation": labels}, seed=5).condition_image
    np.testing.assert_array_equal(random, encode_mask(labels.astype(np.int32), np.random.default_rng(5)))


@pytest.mark.parametrize(("dtype", "big"), [(np.int64, 2**32), (np.int64, 2**31), (np.uint64, 2**63), (np.int64, 2**62)])
def test_segment_ids_beyond_int32_stay_distinct_segments(dtype, big):
    labels = np.zeros((32, 32), dtype)
    labels[4:20, 4:20] = big  # an id that an int32 cast would wrap to 0 (one segment), or to a negative number
    labels[24:30, 24:30] = 3
    painted = generation_request(32, 4, condition={"segmentation": labels}, seed=5, mask_palette=PALETTE).condition_image
    assert tuple(painted[0, 31]) == PALETTE[0] and tuple(painted[10, 10]) == PALETTE[1] and tuple(painted[26, 26]) == PALETTE[2]


def test_a_palette_model_generates_from_labels_as_from_its_palette_image(tmp_path, tiny_vae_dir):
    from mmgen_edge.export.checkpoint import convert_checkpoint
    from mmgen_edge.export.onnx_export import export_bundle
    from mmgen_edge.export.synthetic import TINY_ARGS, TINY_PROJECTOR, write_release_checkpoint
    from mmgen_edge.sdk import api

    checkpoint = tmp_path / "palette.pt"
    write_release_checkpoint(checkpoint, projector=TINY_PROJECTOR, mask_palette=[list(c) for c in PALETTE], **TINY_ARGS)
    convert_checkpoint(checkpoint, tmp_path / "model")
    export_bundle(tmp_path / "model", tiny_vae_dir, tmp_path / "bundle", max_batch=1)
    model = api.load(tmp_path / "bundle", backend="ort-cpu")
    assert model.manifest.model.mask_palette == PALETTE
    labels = np.zeros((32, 32), np.int64)
    labels[8:20, 8:20] = 1
    noise = np.random.default_rng(0).standard_normal(model.latent_shape(1)[1:]).astype(np.float32)
    a = model.generate(condition={"segmentation": labels}, noise=noise, seed=1, steps=2)
    b = model.generate(condition={"segmentation": labels}, noise=noise, seed=2, steps=2)  # other seed, same colours
    image = np.where(labels[..., None] == 1, np.uint8(PALETTE[1]), np.uint8(PALETTE[0])).astype(np.uint8)
    c = model.generate(condition={"segmentation": image}, noise=noise, seed=3, steps=2)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.rgb, c.rgb)
    random = np.where(labels[..., None] == 1, np.uint8((0, 0, 255)), np.uint8((255, 255, 0))).astype(np.uint8)
    d = model.generate(condition={"segmentation": random}, noise=noise, seed=3, steps=2)
    assert not np.array_equal(a.rgb, d.rgb)  # the condition's colours reach the model


@pytest.mark.parametrize(
    "palette, message",
    [([[0, 0, 0], [1, 1, 1]], "closer than 64"), ([[0, 0, 0], [255, 255, 255.0]], "mask_palette"), ("red", "mask_palette")],
)
def test_a_manifest_with_a_bad_palette_is_refused_by_name(runtime_bundle, tmp_path, palette, message):
    from bundle_edits import edited_bundle

    from mmgen_edge.runtime.manifest import BundleError, read_manifest

    def edit(raw):
        raw["model"]["mask_palette"] = palette

    with pytest.raises(BundleError, match=message):
        read_manifest(edited_bundle(runtime_bundle, tmp_path / "bad", edit), verify="size")
    good = edited_bundle(runtime_bundle, tmp_path / "good", lambda raw: raw["model"].update(mask_palette=[list(c) for c in PALETTE]))
    assert read_manifest(good, verify="size").model.mask_palette == PALETTE


def test_palette_bundles_are_the_current_schema_and_an_older_reader_is_told_to_upgrade(runtime_bundle, tmp_path, monkeypatch):
    """``model.mask_palette`` came with schema 3: export writes it, a schema-2 manifest still reads
    (as schema 3, no palette), and a reader of schemas 1-2 meets a schema-3 bundle with "upgrade mmgen-edge", not
    with pydantic's complaint about an unknown field."""
    import json
    from pathlib import Path

    from bundle_edits import edited_bundle

    from mmgen_edge.runtime import manifest as manifest_module
    from mmgen_edge.runtime.manifest import BundleError, read_manifest

    assert json.loads((Path(runtime_bundle) / "manifest.json").read_text())["schema_version"] == manifest_module.SCHEMA_VERSION

    def as_schema_2(raw):
        raw["schema_version"] = 2
        raw["model"].pop("mask_palette", None)

    old = read_manifest(edited_bundle(runtime_bundle, tmp_path / "v2", as_schema_2), verify="size")
    assert old.schema_version == manifest_module.SCHEMA_VERSION and old.model.mask_palette is None

    def with_palette(raw):
        raw["model"]["mask_palette"] = [list(c) for c in PALETTE]

    new = edited_bundle(runtime_bundle, tmp_path / "v3", with_palette)
    assert read_manifest(new, verify="size").model.mask_palette == PALETTE
    monkeypatch.setattr(manifest_module, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(manifest_module, "READABLE_SCHEMA_VERSIONS", (1, 2))
    with pytest.raises(BundleError, match=r"schema_version \d+; .* reads 1, 2: upgrade mmgen-edge"):
        read_manifest(new, verify="size")
