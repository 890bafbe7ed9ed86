"""An edited manifest is refused at load: its own shapes must agree (at read, whatever ``verify``), and each graph's
inputs and outputs must agree with the live session's metadata (at activation), naming graph, tensor and shapes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bundle_edits import edited_bundle

from mmgen_edge.runtime.backend import Environment
from mmgen_edge.runtime.manifest import SHAPED_TENSORS, BundleError, GraphEntry, TensorSpec, read_manifest
from mmgen_edge.runtime.onnxruntime_runner import OnnxRuntimeRunner, ort_type_to_numpy
from mmgen_edge.runtime.pipeline import Pipeline
from mmgen_edge.runtime.runner import io_mismatch

CPU_ONLY = Environment(ort_providers=("CPUExecutionProvider",))


def _double_resolution(raw: dict, latent: bool = True, graphs: bool = True) -> None:
    raw["model"]["resolution"] *= 2
    if latent:
        raw["latent"]["height"] *= 2
        raw["latent"]["width"] *= 2
    if graphs:
        for name, tensors in SHAPED_TENSORS.items():
            for spec in [*raw["graphs"].get(name, {}).get("inputs", ()), *raw["graphs"].get(name, {}).get("outputs", ())]:
                if spec["name"] in tensors:
                    spec["shape"][2] *= 2
                    spec["shape"][3] *= 2


@pytest.mark.parametrize("verify", ["full", "none"])
def test_an_edited_resolution_is_refused_at_read(runtime_bundle, tmp_path, verify):
    before = read_manifest(runtime_bundle, verify="none")
    res, h, down = before.model.resolution, before.latent.height, before.latent.downsample
    bundle = edited_bundle(runtime_bundle, tmp_path / "b", lambda raw: _double_resolution(raw, latent=False, graphs=False))
    with pytest.raises(BundleError) as info:
        read_manifest(bundle, verify=verify)
    assert f"latent.height {h} does not match model.resolution {2 * res} / latent.downsample {down} = {2 * res // down}" in str(info.value)


def test_an_edited_latent_size_must_agree_with_the_graph_shapes(runtime_bundle, tmp_path):
    manifest = read_manifest(runtime_bundle, verify="none")
    spec = next(s for s in manifest.graphs["denoiser_cached"].inputs if s.name == "x_t")
    c, h, w = spec.shape[1:]
    bundle = edited_bundle(runtime_bundle, tmp_path / "b", lambda raw: _double_resolution(raw, graphs=False))
    with pytest.raises(BundleError) as info:
        read_manifest(bundle, verify="none")
    assert (
        f"graph denoiser_cached: x_t has shape {tuple(spec.shape)}, but the manifest's model and latent give "
        f"(batch, {c}, {2 * h}, {2 * w})"
    ) in str(info.value)


def test_a_consistently_edited_manifest_is_refused_when_the_graphs_activate(runtime_bundle, tmp_path):
    manifest = read_manifest(runtime_bundle, verify="none")
    spec = next(s for s in manifest.graphs["denoiser_cached"].inputs if s.name == "x_t")
    n, c, h, w = spec.shape
    bundle = edited_bundle(runtime_bundle, tmp_path / "b", _double_resolution)
    read_manifest(bundle, verify="full")  # self-consistent, files untouched
    with pytest.raises(BundleError) as info:
        Pipeline(bundle, backend="ort-cpu", environment=CPU_ONLY)
    text = str(info.value)
    assert f"{bundle / 'denoiser_cached.onnx'} does not match the 'denoiser_cached' graph of the manifest" in text
    assert f"input 'x_t': axis 2 is {h} in the graph, {2 * h} in the manifest" in text
    assert f"input 'x_t': manifest shape ({n!r}, {c}, {2 * h}, {2 * w}), graph shape ({n!r}, {c}, {h}, {w})" in text
    assert "re-export the bundle" in text


def test_an_edited_dtype_or_fixed_dim_is_refused_when_the_runner_activates(runtime_bundle, tmp_path):
    def edit(raw: dict) -> None:
        cond = raw["graphs"]["conditioning"]
        next(s for s in cond["inputs"] if s["name"] == "y")["dtype"] = "int32"
        next(s for s in cond["outputs"] if s["name"] == "block_modulation")["shape"][1] += 1

    bundle = edited_bundle(runtime_bundle, tmp_path / "b", edit)
    manifest = read_manifest(bundle, verify="none")
    runner = OnnxRuntimeRunner(bundle, "conditioning", manifest.graphs["conditioning"], manifest.dims)
    with pytest.raises(BundleError) as info:
        runner.activate()
    text = str(info.value)
    assert "input 'y': the graph's dtype is int64, the manifest's int32" in text
    blocks = next(s for s in manifest.graphs["conditioning"].outputs if s.name == "block_modulation").shape
    assert f"output 'block_modulation': axis 1 is {blocks[1] - 1} in the graph, {blocks[1]} in the manifest" in text
    assert not runner.active and runner.session is None


def test_the_original_bundle_still_activates(runtime_bundle):
    with Pipeline(runtime_bundle, backend="ort-cpu", environment=CPU_ONLY, verify="none") as pipeline:
        assert set(pipeline.runners) >= {"conditioning", "denoiser_cached", "vae_encoder", "vae_decoder"}


def test_io_mismatch_reads_ort_style_dynamic_dims():
    graph = GraphEntry(
        file="g.onnx",
        inputs=(TensorSpec(name="x", dtype="float32", shape=("N", 16, 4, 4)),),
        outputs=(TensorSpec(name="y", dtype="float32", shape=("N", 3)),),
    )
    live = {"x": ("input", "float32"), "y": ("output", "float32")}
    assert io_mismatch(graph, live, {"x": ("N", 16, 4, 4), "y": (None, 3)}, source="graph") == []
    problems = io_mismatch(graph, live, {"x": (2, 16, 4, 8), "y": ("unk__1", 3)}, source="graph")
    assert problems == [
        "input 'x': the graph fixes axis 0 to 2, the manifest has N",
        "input 'x': axis 3 is 8 in the graph, 4 in the manifest",
        "input 'x': manifest shape ('N', 16, 4, 4), graph shape (2, 16, 4, 8)",
    ]
    assert ort_type_to_numpy("tensor(float)") == "float32" and ort_type_to_numpy("tensor(int64)") == "int64"
    with pytest.raises(TypeError, match="tensor\\(string\\)"):
        ort_type_to_numpy("tensor(string)")


def _graph_with_input(raw: dict) -> dict:
    return raw["graphs"]["conditioning"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda raw: raw["graphs"]["vae_encoder"].update(external_data="../../secret.txt"), "must be a plain relative path inside the bundle"),
        (lambda raw: raw["graphs"]["vae_encoder"].update(external_data="/etc/passwd"), "must be a plain relative path inside the bundle"),
        (lambda raw: raw["graphs"]["vae_encoder"].update(external_data="weights.data"),
         "vae_encoder's external data names 'weights.data', which is not listed"),
        (lambda raw: raw["dims"].pop("V"), "vae_decoder tensor latent uses dimension 'V', which dims does not declare"),
        (lambda raw: raw["dims"]["N"].update(min=8, opt=4, max=2), "needs min <= max, got min 8, max 2"),
        (lambda raw: raw["dims"]["N"].update(max=2**40), f"dims 'N' max {2**40} is above the limit 1024"),
        (lambda raw: raw["dims"]["B"].update(max=10**6), "dims 'B' max 1000000 is above the limit 2048"),
        (lambda raw: _graph_with_input(raw)["inputs"][0].update(shape=["Q", 4]), "uses dimension 'Q', which dims does not declare"),
        (lambda raw: _graph_with_input(raw)["inputs"][0].update(shape=["N", 0]), "has axis 0, outside 1..65536"),
    ],
)
def test_hostile_paths_and_dims_are_refused_at_read(runtime_bundle, tmp_path, edit, message):
    bundle = edited_bundle(runtime_bundle, tmp_path / "b", edit)
    with pytest.raises(BundleError, match=message):
        read_manifest(bundle, verify="none")


def test_a_graph_the_backend_cannot_parse_fails_in_one_line_naming_it(runtime_bundle, tmp_path, capsys):
    """ONNX Runtime's own exception types (InvalidProtobuf, Fail, ...) derive from Exception alone: the runner
    re-raises them as a RuntimeError naming graph and backend, so the SDK and the CLI report it like any error."""
    import os

    import cv2

    import mmgen_edge
    from mmgen_edge.cli import main
    from mmgen_edge.runtime.fileio import sha256_file

    garbage = os.urandom(4096)

    def rehash(raw: dict) -> None:
        for entry in raw["files"]:
            if entry["path"] == raw["graphs"]["vae_encoder"]["file"]:
                entry.update(bytes=len(garbage), sha256=digest)

    source = tmp_path / "garbage.onnx"
    source.write_bytes(garbage)
    digest = sha256_file(source)
    bundle = edited_bundle(runtime_bundle, tmp_path / "b", rehash)
    target = bundle / read_manifest(runtime_bundle, verify="none").graphs["vae_encoder"].file
    target.unlink()  # a hard link to the original: replace, never write through it
    target.write_bytes(garbage)
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(RuntimeError, match=r"graph vae_encoder could not be loaded on onnxruntime:CPUExecutionProvider: InvalidProtobuf"):
        mmgen_edge.load(bundle, backend="ort-cpu")
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), image)
    capsys.readouterr()
    assert main(["perceive", str(photo), "--bundle", str(bundle), "--backend", "ort-cpu", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mmgen-edge perceive: error: graph vae_encoder could not be loaded") and "Traceback" not in err
    import json

    assert main(["doctor", "--bundle", str(bundle), "--json"]) == 1  # doctor opens a named bundle's graphs too
    report = json.loads(capsys.readouterr().out)["bundle"]
    assert report["loads"] is False and "graph vae_encoder could not be loaded" in report["problem"]


@pytest.mark.parametrize("backend", ["ort-cpu", "openvino-fp32"])
def test_an_edited_class_count_is_refused_by_the_graphs_label_table(tiny_bundle, tmp_path, backend):
    """The conditioning graph records its label table's rows (classes + the null label): a manifest whose
    num_classes was edited would sample another class as "unconditional", or fail inside the backend; it is refused
    at load, naming both numbers."""
    import importlib.util

    import mmgen_edge
    from mmgen_edge.runtime.manifest import LABEL_ROWS_KEY

    if backend.startswith("openvino") and importlib.util.find_spec("openvino") is None:
        pytest.skip("the openvino extra is not installed")
    classes = read_manifest(tiny_bundle, verify="none").model.num_classes
    with mmgen_edge.load(tiny_bundle, backend=backend) as model:  # the export recorded it and it agrees
        assert model.pipeline.runners["conditioning"].metadata()[LABEL_ROWS_KEY] == str(classes + 1)
    for edited in (classes - 1, classes + 5):
        bundle = edited_bundle(tiny_bundle, tmp_path / f"b{edited}", lambda raw: raw["model"].update(num_classes=edited))
        with pytest.raises(BundleError, match=rf"records {LABEL_ROWS_KEY} = {classes + 1} .* model.num_classes {edited} needs {edited + 1}"):
            mmgen_edge.load(bundle, backend=backend)


def test_an_opt_outside_its_range_is_clamped_not_refused():
    """opt is a tuning hint: bundles of 1- and 2-modality models carry V's opt 3 above a max of 2 (export wrote
    opt 3 whatever the max); they still load, with opt clamped into min..max."""
    from mmgen_edge.runtime.manifest import DimRange

    assert DimRange(min=1, opt=3, max=2) == DimRange(min=1, opt=2, max=2)
    assert DimRange(min=4, opt=1, max=8).opt == 4 and DimRange(min=1, opt=5, max=8).opt == 5
