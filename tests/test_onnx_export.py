"""The ONNX bundle: per-graph parity with PyTorch, a whole sample through ONNX Runtime, fp16, manifest integrity."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
from extras import require_export

pytestmark = require_export()  # torch/onnx/diffusers: skipped on a base install

import onnxruntime as ort
import pytest
import torch
from diffusers import AutoencoderKL

from mmgen_edge.export.graphs import CachedDenoiserStep, Conditioning, DenoiserStep, VaeDecoder, VaeEncoder
from mmgen_edge.export.model_dir import load_model
from mmgen_edge.export.onnx_export import ALL_GRAPHS, export_bundle
from mmgen_edge.export.sampling import prepare_latents, sample
from mmgen_edge.runtime import sampler as maths
from mmgen_edge.runtime.fileio import OUTPUT_MARKER
from mmgen_edge.runtime.manifest import BundleError, read_manifest
from mmgen_edge.runtime.openvino_runner import BUNDLE_CACHE_DIR
from mmgen_edge.runtime.sampler import SamplerConfig


def session(bundle, graph):
    manifest = read_manifest(bundle, verify="none")
    return ort.InferenceSession(str(bundle / manifest.graphs[graph].file), providers=["CPUExecutionProvider"])


def run(sess, **feeds):
    return sess.run(None, {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in feeds.items()})


def max_errors(onnx_out, torch_out):
    ref = torch_out.detach().numpy()
    abs_err = float(np.abs(onnx_out - ref).max())
    return abs_err, abs_err / float(np.abs(ref).max())


@pytest.fixture(scope="module")
def torch_model(tiny_model_dir):
    model = load_model(tiny_model_dir)
    model.set_fused_attention(False)
    return model


def random_inputs(model, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    return dict(
        x_t=torch.randn(n, 16, cfg.latent_size, cfg.latent_size, generator=g),
        t_cur=torch.rand(n, 4, generator=g),
        y=torch.randint(0, cfg.num_classes + 1, (n,), generator=g),
        task=torch.randint(0, 5, (n,), generator=g),
    )


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_denoiser_graph_matches_pytorch(tiny_bundle, torch_model, n, scale):
    inp = random_inputs(torch_model, n, seed=n)
    t_next = inp["t_cur"] * 0.6
    cfg_scale = torch.tensor([scale])
    out = run(session(tiny_bundle, "denoiser"), **inp, t_next=t_next, cfg_scale=cfg_scale)
    with torch.no_grad():
        ref = DenoiserStep(torch_model)(inp["x_t"], inp["t_cur"], t_next, inp["y"], inp["task"], cfg_scale)
    for o, r in zip(out, ref):
        abs_err, rel_err = max_errors(o, r)
        assert abs_err < 1e-4 and rel_err < 1e-5, (abs_err, rel_err)


@pytest.mark.parametrize("guided", [False, True])
def test_conditioning_cache_matches_the_full_step(tiny_bundle, torch_model, guided):
    n = 2
    inp = random_inputs(torch_model, n, seed=5)
    t_next = inp["t_cur"] * 0.5
    null = torch.full_like(inp["y"], torch_model.config.null_label)
    rows = 2 if guided else 1
    labels = torch.cat([inp["y"], null])[: rows * n]
    blocks, heads = run(
        session(tiny_bundle, "conditioning"), t=torch.cat([inp["t_cur"]] * rows), y=labels, task=torch.cat([inp["task"]] * rows)
    )
    with torch.no_grad():
        ref_blocks, ref_heads = Conditioning(torch_model)(torch.cat([inp["t_cur"]] * rows), labels, torch.cat([inp["task"]] * rows))
    assert max_errors(blocks, ref_blocks)[1] < 1e-5 and max_errors(heads, ref_heads)[1] < 1e-5
    scale = torch.tensor([3.0 if guided else 1.0])
    cached = run(
        session(tiny_bundle, "denoiser_cached"), x_t=inp["x_t"], t_cur=inp["t_cur"], t_next=t_next,
        block_modulation=blocks, final_modulation=heads, cfg_scale=scale,
    )  # fmt: skip
    full = run(session(tiny_bundle, "denoiser"), **inp, t_next=t_next, cfg_scale=scale)
    for c, f in zip(cached, full):
        np.testing.assert_allclose(c, f, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        ref = CachedDenoiserStep(torch_model)(inp["x_t"], inp["t_cur"], t_next, ref_blocks, ref_heads, scale)
    assert max_errors(cached[0], ref[0])[1] < 1e-5


def test_vae_graphs_match_pytorch(tiny_bundle, tiny_vae_dir):
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir, low_cpu_mem_usage=False).eval()
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    (latent,) = run(session(tiny_bundle, "vae_encoder"), image=image)
    with torch.no_grad():
        ref_latent = VaeEncoder(vae)(image)
        assert max_errors(latent, ref_latent)[1] < 1e-5
        lat = torch.randn(3, 4, 4, 4)  # three maps decoded in one call
        (decoded,) = run(session(tiny_bundle, "vae_decoder"), latent=lat)
        assert decoded.shape == (3, 3, 32, 32)
        assert max_errors(decoded, VaeDecoder(vae, 32)(lat))[0] < 1e-4
    np.testing.assert_allclose(ref_latent.numpy(), vae.encode(image).latent_dist.mean.detach().numpy() * 0.5, rtol=1e-5)


@pytest.mark.parametrize("condition", [None, "rgb"])
def test_whole_sample_through_onnx_runtime_equals_the_reference(tiny_bundle, torch_model, condition):
    manifest = read_manifest(tiny_bundle)
    config = SamplerConfig(num_steps=4)
    n, cfg = 2, torch_model.config
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(n, 16, cfg.latent_size, cfg.latent_size, generator=g)
    cond_latent = torch.randn(n, 4, cfg.latent_size, cfg.latent_size, generator=g) if condition else None
    cond_index = cfg.modality_index(condition) if condition else None
    labels = torch.tensor([1, 2])
    reference = sample(torch_model, noise, config, labels=labels, condition=cond_latent, condition_modality=condition, cfg_scale=2.0)

    denoiser = session(tiny_bundle, "denoiser")
    x = prepare_latents(noise, cond_latent, cond_index, config.condition_t).numpy()
    task = np.full(n, 0 if cond_index is None else cond_index + 1, dtype=np.int64)
    schedule = config.timesteps()
    for i in range(config.num_steps):
        t_cur = maths.step_timesteps(schedule[i], n, 4, cond_index, manifest.sampler.condition_t)
        t_next = maths.step_timesteps(schedule[i + 1], n, 4, cond_index, manifest.sampler.condition_t)
        x, _ = denoiser.run(None, dict(x_t=x, t_cur=t_cur, t_next=t_next, y=labels.numpy(), task=task, cfg_scale=np.array([2.0], np.float32)))
    np.testing.assert_allclose(x, reference.numpy(), rtol=1e-4, atol=1e-4)


def test_fp16_bundle_stays_close_to_fp32(tiny_model_dir, tiny_vae_dir, tiny_bundle, tmp_path, torch_model):
    bundle16 = tmp_path / "fp16"
    manifest = export_bundle(tiny_model_dir, tiny_vae_dir, bundle16, precision="fp16", max_batch=4, graphs=ALL_GRAPHS)
    assert manifest.precision.value == "fp16"
    assert all(s.dtype in ("float32", "int64") for g in manifest.graphs.values() for s in g.inputs)  # fp32 I/O
    size32 = sum(f.bytes for f in read_manifest(tiny_bundle).files)
    assert sum(f.bytes for f in manifest.files) < 0.65 * size32
    import onnx

    ops32 = {n.op_type: n for n in onnx.load(str(bundle16 / "denoiser.onnx")).graph.node}
    assert "Cast" in ops32  # precision lives in the graph
    inp = random_inputs(torch_model, 2, seed=11)
    feeds = dict(**inp, t_next=inp["t_cur"] * 0.5, cfg_scale=torch.tensor([1.5]))
    out16 = run(session(bundle16, "denoiser"), **feeds)
    out32 = run(session(tiny_bundle, "denoiser"), **feeds)
    for a, b in zip(out16, out32):
        assert np.abs(a - b).max() / np.abs(b).max() < 1e-2


def test_manifest_round_trip_and_contents(tiny_bundle, tiny_model_dir):
    manifest = read_manifest(tiny_bundle)
    assert read_manifest(tiny_bundle, verify="none") == manifest
    assert manifest.modalities == ("rgb", "depth", "normal", "mask")
    assert manifest.latent.scaling_factor == 0.5 and manifest.latent.height == 4
    assert manifest.dims["N"].max == 4 and manifest.dims["B"].max == 8 and manifest.dims["V"].max == 16
    assert set(manifest.graphs) == {"denoiser", "conditioning", "denoiser_cached", "vae_encoder", "vae_decoder"}
    listed = {f.path for f in manifest.files}
    # ``cache/``: compiled models the runtime keeps beside the graphs (OpenVINO), not part of the bundle's contract
    assert listed == {p.name for p in tiny_bundle.iterdir()} - {"manifest.json", OUTPUT_MARKER, BUNDLE_CACHE_DIR.parts[0]}
    assert manifest.provenance.source_checkpoint_sha256 is not None and len(manifest.provenance.model_weights_sha256) == 64
    den = manifest.graphs["denoiser"]
    assert [s.name for s in den.inputs] == ["x_t", "t_cur", "t_next", "y", "task", "cfg_scale"]
    assert den.inputs[0].shape == ("N", 16, 4, 4) and den.inputs[3].dtype == "int64"


def test_tampered_file_is_detected(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    data = bytearray((copy / "denoiser_cached.onnx").read_bytes())
    data[-10] ^= 0xFF  # same size, different content
    (copy / "denoiser_cached.onnx").write_bytes(bytes(data))
    read_manifest(copy, verify="size")  # size check alone cannot see it
    with pytest.raises(BundleError, match="denoiser_cached.onnx has SHA-256"):
        read_manifest(copy)
    (copy / "vae_decoder.onnx").unlink()
    with pytest.raises(BundleError, match="vae_decoder.onnx is listed in the manifest but missing"):
        read_manifest(copy, verify="size")


def test_schema_version_mismatch_is_explained(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="upgrade mmgen-edge"):
        read_manifest(copy)
    raw["format"] = "something-else"
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="not an mmgen-edge bundle"):
        read_manifest(copy)


@pytest.mark.parametrize(
    "where, value, named",
    [
        (("schema_version",), True, "schema_version"),
        (("opset",), -1, "opset"),
        (("opset",), 20.0, "opset"),
        (("sampler", "num_steps"), "4", "sampler.num_steps"),
        (("model", "resolution"), 32.5, "model.resolution"),
        (("dims", "N", "max"), True, "dims.N.max"),
        (("sampler", "cfg_scale"), 101.0, "sampler.cfg_scale"),
        (("sampler", "cfg_scale"), -0.5, "sampler.cfg_scale"),
        (("sampler", "cfg_scale"), float("nan"), "sampler.cfg_scale"),
        (("sampler", "cfg_scale"), "3", "sampler.cfg_scale"),
        (("sampler", "cfg_scale"), True, "sampler.cfg_scale"),
    ],
)
def test_an_edited_manifest_value_of_the_wrong_type_is_refused_by_name(tiny_bundle, tmp_path, where, value, named):
    """Lax coercion would read true as 1 and "4" as 4: an edited manifest is refused, naming the field."""
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    read_manifest(copy, verify="none")  # the unedited copy reads
    node = raw
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=re.escape(named) if named != "schema_version" else "schema_version True"):
        read_manifest(copy, verify="none")


def test_an_invalid_manifest_is_refused_in_one_line_naming_each_field(tiny_bundle, tmp_path):
    """pydantic's own text is a block per error with a URL; the refusal is one line, each field and value shown
    (a whole section shortened), and a manifest that is not UTF-8 is named as such."""
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["model"]["resolution"] = "128"
    raw["sampler"]["num_steps"] = 4.0
    raw["comment"] = "x" * 500
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError) as info:
        read_manifest(copy, verify="none")
    message = str(info.value)
    assert "\n" not in message and "pydantic.dev" not in message and len(message) < 600, message
    for field in ("model.resolution", "sampler.num_steps", "comment: Extra inputs are not permitted"):
        assert field in message, message
    (copy / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(BundleError, match=r"manifest.json is not UTF-8 text"):
        read_manifest(copy, verify="none")


@pytest.mark.parametrize("field, value", [("scaling_factor", 0.0), ("scaling_factor", -0.2), ("scaling_factor", float("nan")),
                                          ("shift_factor", float("inf"))])
def test_a_vae_whose_latent_scale_is_not_finite_and_positive_is_refused(tiny_vae_dir, tiny_model_dir, tmp_path, field, value):
    """scaling_factor 0 was exported (every perceive then blamed the weights for NaN), NaN wrote a manifest that does
    not load, and a NaN shift made the denoiser produce NaN: refused at load, naming the field, before any export."""
    from mmgen_edge.export.autoencoders import load_autoencoder
    from mmgen_edge.export.onnx_export import export_bundle

    vae = tmp_path / "vae"
    shutil.copytree(tiny_vae_dir, vae)
    config = json.loads((vae / "config.json").read_text())
    config[field] = value
    (vae / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="scaling_factor must be a finite number > 0 and shift_factor finite"):
        load_autoencoder(vae)
    with pytest.raises(ValueError, match="scaling_factor must be"):
        export_bundle(tiny_model_dir, vae, tmp_path / "b", graphs=("vae_decoder",))
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("field, value, message", [
    ("layers_per_block", 100000, "layers_per_block must be an integer in 1..64, got 100000"),
    ("block_out_channels", [16, 10**6], "block_out_channels must be a list of at most 16 integers in 1..4096"),
    ("latent_channels", 0, "latent_channels must be an integer in 1..4096, got 0"),
])
def test_a_vae_config_declaring_absurd_sizes_is_refused_before_it_is_built(tiny_vae_dir, tmp_path, field, value, message):
    """layers_per_block 100000 took 100 s and 5 GB in diffusers' from_pretrained before failing."""
    from mmgen_edge.export.autoencoders import load_autoencoder

    vae = tmp_path / "vae"
    shutil.copytree(tiny_vae_dir, vae)
    config = json.loads((vae / "config.json").read_text())
    config[field] = value
    (vae / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=re.escape(message)):
        load_autoencoder(vae)


def test_a_student_with_a_stage_of_no_blocks_still_loads(tmp_path):
    """distill-vae allows 0 blocks in a stage (--decoder-blocks 0,3,3,1): the size bounds must accept it."""
    from mmgen_edge.export.autoencoders import load_autoencoder
    from mmgen_edge.export.distill_vae import StudentShape

    StudentShape(decoder_blocks=(0, 3, 3, 1)).new(4).save_pretrained(tmp_path / "student")
    assert list(load_autoencoder(tmp_path / "student").config.num_decoder_blocks) == [0, 3, 3, 1]


def test_a_manifest_latent_scale_must_be_finite_and_positive(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw["latent"]["scaling_factor"] = 0.0
    (copy / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=r"latent.scaling_factor: Input should be greater than 0"):
        read_manifest(copy, verify="none")


def test_interrupted_export_never_leaves_a_bundle_that_loads(tiny_model_dir, tiny_vae_dir, tmp_path, monkeypatch):
    import mmgen_edge.export.onnx_export as ox

    calls = {"n": 0}
    real = ox.finalize_onnx

    def crash_on_third(traced, path, precision, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(traced, path, precision, metadata)

    monkeypatch.setattr(ox, "finalize_onnx", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
        read_manifest(tmp_path / "bundle")


def test_export_refuses_bad_arguments(tiny_model_dir, tiny_vae_dir, tmp_path):
    with pytest.raises(ValueError, match="max_batch"):
        export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "b", max_batch=0)
    with pytest.raises(FileNotFoundError, match="AutoencoderKL"):
        export_bundle(tiny_model_dir, tmp_path, tmp_path / "b")
    with pytest.raises(ValueError, match="calibrat"):
        export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "b", precision="int8")


@pytest.mark.slow
def test_full_xl2_random_weights_export_uses_external_data_and_passes_the_checker(tiny_vae_dir, tmp_path):
    """SiT-XL/2 (695 M parameters) at 256 px: the self-contained denoiser is ~2.7 GB, over protobuf's 2 GB."""
    import onnx

    from mmgen_edge.config import preset
    from mmgen_edge.export.model import MMGen
    from mmgen_edge.export.model_dir import save_model_dir

    torch.manual_seed(0)
    model = MMGen(preset("SiT-XL/2"))
    with torch.no_grad():  # like trained weights: the zero-initialised adaLN layers would be deduplicated on export
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.normal_(0.0, 0.02)
    model_dir = save_model_dir(tmp_path / "xl2", preset("SiT-XL/2"), model.state_dict())
    del model
    manifest = export_bundle(model_dir, tiny_vae_dir, tmp_path / "bundle", graphs=("denoiser",))
    entry = manifest.graphs["denoiser"]
    assert entry.external_data == "denoiser.onnx.data"
    assert {f.path for f in manifest.files} == {"denoiser.onnx", "denoiser.onnx.data"}
    assert manifest.file("denoiser.onnx.data").bytes > 2_000_000_000
    assert sorted(p.name for p in (tmp_path / "bundle").iterdir()) == [OUTPUT_MARKER, "denoiser.onnx", "denoiser.onnx.data", "manifest.json"]
    onnx.checker.check_model(str(tmp_path / "bundle" / "denoiser.onnx"))
    assert entry.inputs[0].shape == ("N", 16, 32, 32)


def test_default_bundle_is_lean_and_every_file_is_readable(tiny_model_dir, tiny_vae_dir, tmp_path, monkeypatch):
    """Only the runtime's graphs by default; external data (forced here) as readable as the graph files."""
    import stat

    from mmgen_edge.export import onnx_export
    from mmgen_edge.runtime.backend import RUNTIME_GRAPHS

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)  # every graph's weights in a .onnx.data file
    manifest = export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "bundle", max_batch=2)
    assert sorted(manifest.graphs) == sorted(RUNTIME_GRAPHS)
    data = [g.external_data for g in manifest.graphs.values()]
    assert all(data) and {f.path for f in manifest.files} >= set(data)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "bundle").iterdir()}
    assert set(modes.values()) == {modes["manifest.json"]}, modes  # was: .onnx.data 0600, the rest 0644
    assert modes["vae_decoder.onnx.data"] & 0o044 == stat.S_IMODE((tmp_path / "bundle").stat().st_mode) & 0o044


def test_export_with_denoiser_on_request(tiny_model_dir, tiny_vae_dir, tmp_path):
    from mmgen_edge.cli import main as cli_main

    out = tmp_path / "bundle"
    assert cli_main(["export", str(tiny_model_dir), "--vae", str(tiny_vae_dir), "--out", str(out), "--with-denoiser", "--json"]) == 0
    assert sorted(read_manifest(out).graphs) == sorted(["denoiser", "conditioning", "denoiser_cached", "vae_encoder", "vae_decoder"])


def test_step_graph_adds_no_shape_arithmetic_per_block(tiny_model, tmp_path):
    """Each transformer block adds a fixed set of compute nodes to ``denoiser_cached`` and no Shape / Gather / Concat /
    Unsqueeze / Div chains (constant reshapes and slices instead), and its tanh GELU is one ``Gelu`` node (opset 20):
    on a CPU every node costs microseconds at every step. The batch stays dynamic."""
    import collections

    import onnx

    from mmgen_edge.export.model import MMGen
    from mmgen_edge.export.onnx_export import DEFAULT_OPSET, example_inputs, trace_to_onnx

    def op_counts(depth: int) -> collections.Counter:
        torch.manual_seed(0)
        model = MMGen(tiny_model.config.model_copy(update={"depth": depth})).eval()
        model.set_fused_attention(False)  # as export_bundle traces it
        path = tmp_path / f"depth{depth}.onnx"
        trace_to_onnx(CachedDenoiserStep(model), example_inputs(model)["denoiser_cached"], "denoiser_cached", path, DEFAULT_OPSET)
        graph = onnx.load(str(path)).graph
        return collections.Counter(n.op_type for n in graph.node if n.op_type != "Constant")

    one, three = op_counts(1), op_counts(3)
    per_block = {op: (three[op] - one[op]) / 2 for op in set(one) | set(three) if three[op] != one[op]}
    assert DEFAULT_OPSET >= 20 and per_block.get("Gelu") == 1 and "Tanh" not in per_block, per_block
    assert not {"Shape", "Concat", "Unsqueeze", "Div", "Cast"} & set(per_block), per_block
    assert per_block.get("Gather") == 1 and per_block.get("Slice") == 6, per_block  # this block's modulation row
    # 42 compute nodes a block (before: ~80); Identity nodes are the exporter's aliases of equal (zero-initialised) weights
    assert per_block["MatMul"] == 6 and sum(v for op, v in per_block.items() if op != "Identity") <= 42, per_block

    # the batch is still free: the depth-3 graph runs at N = 1 and N = 3 (modulation rows = N)
    session = ort.InferenceSession(str(tmp_path / "depth3.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        feeds = {}
        for arg in session.get_inputs():
            shape = [n if not isinstance(d, int) else d for d in arg.shape]
            feeds[arg.name] = np.full([1] if arg.name == "cfg_scale" else shape, 0.5, np.float32)
        outputs = session.run(None, feeds)
        assert outputs[0].shape[0] == n


def test_sigterm_during_export_leaves_no_temporary(tiny_model_dir, tiny_vae_dir, tmp_path):
    """``kill`` / ``docker stop`` mid-export: the command exits 143 and its temporary folder is gone."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "bundle"
    cmd = [sys.executable, "-m", "mmgen_edge.cli", "export", str(tiny_model_dir), "--vae", str(tiny_vae_dir), "--out", str(out)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".bundle.tmp-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    if process.poll() is not None:
        pytest.skip("the export finished before it could be interrupted")
    process.send_signal(signal.SIGTERM)
    err = process.communicate(timeout=60)[1].decode()
    assert process.returncode == 143, err
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_a_two_modality_model_exports_and_loads_at_max_batch_1(tiny_vae_dir, tmp_path):
    """V (images through the decoder) is at most modalities x max batch = 2 here: the exported range stays ordered."""
    import mmgen_edge
    from mmgen_edge.config import ModelConfig
    from mmgen_edge.export.model import MMGen
    from mmgen_edge.export.model_dir import save_model_dir

    cfg = ModelConfig(depth=1, hidden_size=32, num_heads=2, patch_size=2, resolution=32, projector_dim=None, z_dim=None,
                      modalities=("rgb", "depth"))  # fmt: skip
    torch.manual_seed(0)
    save_model_dir(tmp_path / "m", cfg, MMGen(cfg).state_dict())
    manifest = export_bundle(tmp_path / "m", tiny_vae_dir, tmp_path / "b", max_batch=1)
    assert (manifest.dims["V"].min, manifest.dims["V"].opt, manifest.dims["V"].max) == (1, 2, 2)
    with mmgen_edge.load(tmp_path / "b", backend="ort-cpu") as model:
        depth = model.perceive(np.zeros((32, 32, 3), np.uint8), tasks=("depth",), steps=1).depth
    assert depth.shape == (32, 32) and np.isfinite(depth).all()


def test_fp16_export_refuses_weights_beyond_the_fp16_range():
    """ONNX Runtime's converter clamped a weight of 1e6 to 65504 (exit 0, another model); now it is refused by name."""
    import onnx
    from onnx import helper, numpy_helper

    from mmgen_edge.export.onnx_export import convert_to_fp16

    weight = np.ones((2, 2), np.float32)
    weight[0, 1] = 1e6
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])],
        [numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"weights beyond float16's range \(65504\): w \(largest \|value\| 1e\+06\)"):
        convert_to_fp16(helper.make_model(graph))
    weight[0, 1] = 60000.0
    graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "w"))
    assert convert_to_fp16(helper.make_model(graph)).graph.initializer[0].data_type == onnx.TensorProto.FLOAT16
