"""The bundle's default guidance (``manifest.sampler.cfg_scale``): what ``generate`` runs with when the call gives
none, locally and in the CLI; a request's own scale overrides it. Torch-free: runs on a base install too."""

from __future__ import annotations

import numpy as np
import pytest
from bundle_edits import edited_bundle

import mmgen_edge
from mmgen_edge.runtime.manifest import read_manifest


def _with_default_guidance(bundle, out, scale):
    def edit(raw):
        raw["sampler"]["cfg_scale"] = scale

    return edited_bundle(bundle, out, edit)


def test_generate_without_a_scale_uses_the_bundles_default(runtime_bundle, tmp_path):
    bundle = _with_default_guidance(runtime_bundle, tmp_path / "b", 2.5)
    assert read_manifest(bundle, verify="none").sampler.cfg_scale == 2.5
    with mmgen_edge.load(bundle, backend="ort-cpu", verify="none") as model:
        default = model.generate(class_label=1, seed=3, return_latents=True)
        explicit = model.generate(class_label=1, seed=3, cfg_scale=2.5, return_latents=True)
        unguided = model.generate(class_label=1, seed=3, cfg_scale=1.0, return_latents=True)
    np.testing.assert_array_equal(default.latents, explicit.latents)
    assert np.abs(default.latents - unguided.latents).max() > 1e-3  # the default did guide


def test_a_bundle_without_the_field_means_no_guidance(runtime_bundle, tmp_path):
    """Bundles written before the field existed read as guidance 1 (none), as every sampler did then."""

    def drop(raw):
        raw["sampler"].pop("cfg_scale", None)

    bundle = edited_bundle(runtime_bundle, tmp_path / "old", drop)
    with mmgen_edge.load(bundle, backend="ort-cpu", verify="none") as model:
        assert model.manifest.sampler.cfg_scale == 1.0
        default = model.generate(class_label=0, seed=1, return_latents=True)
        unguided = model.generate(class_label=0, seed=1, cfg_scale=1.0, return_latents=True)
    np.testing.assert_array_equal(default.latents, unguided.latents)


def test_the_generate_command_uses_the_bundles_default_and_takes_an_override(runtime_bundle, tmp_path, capsys):
    import json

    from mmgen_edge.cli import main

    bundle = _with_default_guidance(runtime_bundle, tmp_path / "b", 4.0)
    outs = {}
    for name, extra in (("default", []), ("explicit", ["--cfg-scale", "4"]), ("none", ["--cfg-scale", "1"])):
        code = main(["generate", "--bundle", str(bundle), "--backend", "ort-cpu", "--class-label", "2", "--seed", "5",
                     "--out", str(tmp_path / name), "--json", *extra])  # fmt: skip
        assert code == 0
        capsys.readouterr()
        outs[name] = {p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())}
    assert outs["default"] == outs["explicit"]
    assert outs["default"] != outs["none"]


@pytest.mark.parametrize("scale", [-1.0, 100.5, float("nan")])
def test_a_bad_scale_in_the_call_is_still_refused(runtime_bundle, scale):
    with mmgen_edge.load(runtime_bundle, backend="ort-cpu", verify="none") as model:
        with pytest.raises(ValueError, match="cfg_scale must be a finite number in 0..100"):
            model.generate(class_label=0, seed=0, cfg_scale=scale)


def test_a_schema_1_bundle_reads_as_the_current_schema_without_guidance(runtime_bundle, tmp_path):
    """Schema 2 added the default guidance: a bundle exported before it still loads, read as the current schema with
    guidance 1 (what it sampled with), so a bundle derived from it (calibrate) is written as a valid current one."""
    from mmgen_edge.runtime.manifest import SCHEMA_VERSION

    def as_schema_1(raw):
        raw["schema_version"] = 1
        raw["sampler"].pop("cfg_scale", None)
        raw["model"].pop("mask_palette", None)

    manifest = read_manifest(edited_bundle(runtime_bundle, tmp_path / "v1", as_schema_1), verify="size")
    assert manifest.schema_version == SCHEMA_VERSION and manifest.sampler.cfg_scale == 1.0


def test_a_served_request_without_a_scale_gets_the_bundles_default(runtime_bundle, tmp_path):
    """perf_analyzer and raw tritonclient requests may leave cfg_scale out: the server then samples as a local
    ``generate(cfg_scale=None)`` does (the SDK's client always sends the scale it resolved)."""
    from mmgen_edge.serve.handlers import RequestHandler

    bundle = _with_default_guidance(runtime_bundle, tmp_path / "b", 2.5)
    with mmgen_edge.load(bundle, backend="ort-cpu", verify="none") as model:
        handler = RequestHandler(model)
        label = np.array([[1]], np.int64)
        assert handler.parse_generate({"class_label": label}).cfg_scale == 2.5
        given = handler.parse_generate({"class_label": label, "cfg_scale": np.array([[1.0]], np.float32)})
        assert given.cfg_scale == 1.0


def test_schema_4_adds_the_noise_scale_and_older_manifests_read_without_it(runtime_bundle, tmp_path, monkeypatch):
    """A schema-3 manifest has no sampler.noise_scale: it reads with 1 (what it sampled with). A manifest that has one
    tells a schema-3 reader to upgrade instead of failing on an unknown field."""
    from mmgen_edge.runtime import manifest as manifest_module
    from mmgen_edge.runtime.manifest import BundleError

    def as_schema_3(raw):
        raw["schema_version"] = 3
        raw["sampler"].pop("noise_scale", None)

    old = read_manifest(edited_bundle(runtime_bundle, tmp_path / "v3", as_schema_3), verify="size")
    assert old.schema_version == 4 and old.sampler.noise_scale == 1.0
    scaled = edited_bundle(runtime_bundle, tmp_path / "v4", lambda raw: raw["sampler"].update(noise_scale=0.8))
    assert read_manifest(scaled, verify="size").sampler.noise_scale == 0.8
    for bad in (0, -0.5, 2.5, "nan"):
        with pytest.raises(BundleError, match="noise_scale"):
            read_manifest(edited_bundle(runtime_bundle, tmp_path / f"bad{bad}", lambda raw: raw["sampler"].update(noise_scale=bad)), verify="size")
    monkeypatch.setattr(manifest_module, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(manifest_module, "READABLE_SCHEMA_VERSIONS", (1, 2, 3))
    with pytest.raises(BundleError, match="schema_version 4; .* reads 1, 2, 3: upgrade mmgen-edge"):
        read_manifest(scaled, verify="size")


def test_the_noise_scale_scales_class_samples_start_and_nothing_else(runtime_bundle, tmp_path):
    """sampler.noise_scale s: a class sample from seed k is the unscaled bundle's sample from s x (seed k's noise);
    perception and depth-conditioned generation are the same as without it."""
    scaled = edited_bundle(runtime_bundle, tmp_path / "s", lambda raw: raw["sampler"].update(noise_scale=0.8))
    unscaled = edited_bundle(runtime_bundle, tmp_path / "u", lambda raw: raw["sampler"].update(noise_scale=1.0))
    image = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    with mmgen_edge.load(unscaled, backend="ort-cpu", verify="none") as plain, \
            mmgen_edge.load(scaled, backend="ort-cpu", verify="none") as model:  # fmt: skip
        noise = np.random.default_rng(7).standard_normal(plain.latent_shape(1), dtype=np.float32)
        ours = model.generate(class_label=1, seed=7, return_latents=True)
        reference = plain.generate(class_label=1, noise=0.8 * noise[0], return_latents=True)
        np.testing.assert_allclose(ours.latents, reference.latents, rtol=0, atol=1e-5)
        assert np.abs(ours.latents - plain.generate(class_label=1, seed=7, return_latents=True).latents).max() > 1e-3
        depth = np.linspace(1, 3, 40 * 40, dtype=np.float32).reshape(40, 40)
        for a, b in ((model.perceive(image, seed=3, return_latents=True), plain.perceive(image, seed=3, return_latents=True)),
                     (model.generate(condition={"depth": depth}, seed=3, return_latents=True),
                      plain.generate(condition={"depth": depth}, seed=3, return_latents=True))):  # fmt: skip
            np.testing.assert_array_equal(a.latents, b.latents)
