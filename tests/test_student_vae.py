"""Distilled VAE halves: the latent convention of both families, ``distill-vae`` (training, resume, output) and
``export --decoder / --encoder`` behind the accuracy gate (refusal, force, report, parity, bad students)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from extras import require_export

pytestmark = require_export()

import onnx  # noqa: E402
import torch  # noqa: E402
from diffusers import AutoencoderKL, AutoencoderTiny  # noqa: E402

from mmgen_edge.calibration.gate import GateThresholds  # noqa: E402
from mmgen_edge.calibration.vae_gate import StudentGateError  # noqa: E402
from mmgen_edge.export import distill_data  # noqa: E402
from mmgen_edge.export import distill_vae as distill  # noqa: E402
from mmgen_edge.export.autoencoders import decode_latent, decoder_upsampling, encode_latent, load_autoencoder  # noqa: E402
from mmgen_edge.export.distill_vae import DistillSettings, StudentShape  # noqa: E402
from mmgen_edge.export.onnx_export import export_bundle  # noqa: E402
from mmgen_edge.export.student_gate import StudentOptions  # noqa: E402
from mmgen_edge.runtime.manifest import read_manifest  # noqa: E402

#: A student for the tiny test VAE (32 px, latents 4x4 at 1/8): 4 channels, full resolution.
TINY_SHAPE = StudentShape(channels=4, decoder_blocks=(1, 1, 1, 1), encoder_channels=4, encoder_blocks=(1, 1, 1, 1))


def settings(**overrides) -> DistillSettings:
    base = dict(data="demo:6", images=24, steps=12, batch=4, warmup=2, save_every=4, shape=TINY_SHAPE, learning_rate=5e-3)
    return DistillSettings(**{**base, **overrides})


@pytest.fixture(scope="module")
def student_dir(tiny_vae_dir, tmp_path_factory) -> Path:
    """A decoder-and-encoder student of the tiny VAE (briefly trained: far from the teacher)."""
    root = tmp_path_factory.mktemp("student")
    report = distill.distill_vae(tiny_vae_dir, settings(train_encoder=True), root / "student", root / "work")
    assert report is not None
    return root / "student"


# ---------------------------------------------------------------------------------------------- the latent convention
def test_tiny_autoencoder_latents_are_raw_latents_over_the_scaling_factor():
    torch.manual_seed(0)
    vae = StudentShape(4, (1, 1, 1, 1), 4, (1, 1, 1, 1)).new(4)
    vae.register_to_config(scaling_factor=2.0)
    image = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        raw = vae.encoder(image)  # diffusers' EncoderTiny maps [-1, 1] to [0, 1] itself
        torch.testing.assert_close(encode_latent(vae, image), raw * 2.0)
        z = torch.randn(2, 4, 4, 4)
        expected = vae.decoder(z / 2.0).clamp(-1, 1)  # DecoderTiny returns [-1, 1]
        torch.testing.assert_close(decode_latent(vae, z), expected)
        assert decode_latent(vae, z).abs().max() <= 1.0


def test_kl_latents_are_the_scaled_posterior_mean(tiny_vae_dir):
    vae = load_autoencoder(tiny_vae_dir, expect="AutoencoderKL")
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(image).latent_dist.mean
        torch.testing.assert_close(encode_latent(vae, image), mean * vae.config.scaling_factor)
        torch.testing.assert_close(decode_latent(vae, mean * 0.5), vae.decode(mean).sample.clamp(-1, 1))


def test_a_half_resolution_decoder_is_resized_to_the_image_size():
    vae = StudentShape(4, (1, 1, 1), 4, (1, 1, 1, 1)).new(4)  # three stages: 4x upsampling for 1/8 latents
    assert decoder_upsampling(vae) == 4
    with torch.no_grad():
        out = decode_latent(vae, torch.randn(3, 4, 4, 4), size=32)
    assert out.shape == (3, 3, 32, 32)


def test_load_autoencoder_refuses_other_classes_and_the_wrong_family(tmp_path, tiny_vae_dir):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="UNet2DModel"):
        load_autoencoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_autoencoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="expected a AutoencoderTiny"):
        load_autoencoder(tiny_vae_dir, expect="AutoencoderTiny")


# ---------------------------------------------------------------------------------------------- distill-vae
def test_distillation_lowers_the_loss_and_writes_a_diffusers_student(student_dir):
    report = json.loads((student_dir / distill.REPORT_FILE).read_text())
    curve = [row["loss"] for row in report["curve"]]
    assert len(curve) == 3 and curve[-1] < curve[0]
    assert report["trained"] == ["decoder", "encoder"]
    assert set(report["held_out"]) <= {"rgb", "depth", "normal", "mask"} and report["held_out"]
    for row in report["held_out"].values():
        assert np.isfinite(row["psnr_db"]) and 0 <= row["mean_abs"] <= 255
    student = AutoencoderTiny.from_pretrained(student_dir)
    assert student.config.scaling_factor == 1.0 and student.config.latent_channels == 4
    assert (student_dir / ".mmgen-edge-output").is_file()


def test_the_bundles_own_predictions_join_the_decoders_data(tiny_vae_dir, tiny_bundle, tmp_path):
    s = settings(data="demo:2", images=8, steps=2, train_encoder=True, bundle=str(tiny_bundle))
    report = distill.distill_vae(tiny_vae_dir, s, tmp_path / "s", tmp_path / "w")
    with np.load(next((tmp_path / "w").glob("dataset-*.npz"))) as f:
        kinds, encoded, latents = f["kinds"], f["encoded"], f["latents"]
    assert len(kinds) == 8 + 2 * 3  # two scenes' four maps, then the bundle's depth/normal/mask for their two RGB frames
    assert encoded[:8].all() and not encoded[8:].any() and list(kinds[8:]) == [1, 2, 3, 1, 2, 3]
    assert np.isfinite(latents).all() and report["settings"]["bundle"] == str(tiny_bundle)
    plain = distill_data.dataset_key(tiny_vae_dir, dataclasses.replace(s, bundle=None))
    assert plain != distill_data.dataset_key(tiny_vae_dir, s)  # the cache knows which bundle labelled it


def test_map_weights_scale_each_modalitys_share_of_the_loss():
    torch.manual_seed(0)
    student = TINY_SHAPE.new(4)
    batch = {"latents": torch.randn(4, 4, 4, 4), "decoded": torch.rand(4, 3, 32, 32) * 2 - 1,
             "images": torch.rand(4, 3, 32, 32), "means": torch.randn(4, 4, 4, 4),
             "encoded": torch.ones(4, dtype=torch.bool), "kinds": torch.tensor([0, 1, 2, 3])}  # fmt: skip
    with torch.no_grad():
        plain = distill.distill_loss(student, batch, 32, False)
        equal = distill.distill_loss(student, batch, 32, False, (2.0, 2.0, 2.0, 2.0))
        mask_only = distill.distill_loss(student, batch, 32, False, (0.0, 0.0, 0.0, 1.0))
        err = distill.decode_latent(student, batch["latents"], 32) - batch["decoded"]
    torch.testing.assert_close(plain, equal)  # weights are relative: normalised to mean 1
    torch.testing.assert_close(mask_only, (err[3].abs() + err[3] ** 2).mean())  # the mask image alone


def test_demo_data_trains_on_all_four_perception_maps():
    images, kinds = distill_data.distillation_images("demo:3", 12, 32)
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert list(kinds) == [0, 1, 2, 3] * 3


def test_demo_masks_take_the_bundle_models_palette(runtime_bundle, tiny_vae_dir, tmp_path):
    """A palette model predicts masks in its palette: ``demo:N`` paints the student's mask images in it too, and the
    cached dataset's key changes with the palette (a random-colour cache is not reused)."""
    from bundle_edits import edited_bundle

    palette = ((128, 128, 128), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230))  # fmt: skip
    images, kinds = distill_data.distillation_images("demo:3", 12, 32, palette)
    colours = {tuple(c) for c in images[kinds == 3].reshape(-1, 3)}
    assert colours <= set(palette) and len(colours) >= 3  # background and at least two objects
    random_images, _ = distill_data.distillation_images("demo:3", 12, 32)
    assert not {tuple(c) for c in random_images[kinds == 3].reshape(-1, 3)} <= set(palette)

    def with_palette(raw):
        raw["model"]["mask_palette"] = [list(c) for c in palette]

    painted = edited_bundle(runtime_bundle, tmp_path / "palette", with_palette)
    assert distill_data.bundle_mask_palette(settings(bundle=str(painted))) == palette
    assert distill_data.bundle_mask_palette(settings(bundle=str(runtime_bundle))) is None
    keys = {distill_data.dataset_key(tiny_vae_dir, settings(bundle=b)) for b in (str(painted), str(runtime_bundle), None)}
    assert len(keys) == 3


def test_an_interrupted_distillation_resumes_to_the_same_student(tiny_vae_dir, tmp_path, monkeypatch):
    whole = distill.distill_vae(tiny_vae_dir, settings(), tmp_path / "a", tmp_path / "work-a")
    clock = iter(range(0, 10_000, 5))  # each reading of distill's clock is 5 s later: 0.25 min = two steps
    monkeypatch.setattr(distill, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    assert distill.distill_vae(tiny_vae_dir, settings(), tmp_path / "b", tmp_path / "work-b", minutes=0.25) is None
    stopped_at = torch.load(tmp_path / "work-b" / "checkpoint.pt", weights_only=True)["step"]
    assert stopped_at == 2
    monkeypatch.undo()
    resumed = distill.distill_vae(tiny_vae_dir, settings(), tmp_path / "b", tmp_path / "work-b")
    assert [r["step"] for r in resumed["curve"]] == [r["step"] for r in whole["curve"]] == [4, 8, 12]
    assert [r["loss"] for r in resumed["curve"]] == pytest.approx([r["loss"] for r in whole["curve"]], rel=1e-5)
    a, b = (AutoencoderTiny.from_pretrained(tmp_path / x).state_dict() for x in ("a", "b"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_a_resume_with_other_settings_is_refused(tiny_vae_dir, tmp_path):
    distill.distill_vae(tiny_vae_dir, settings(steps=4), tmp_path / "a", tmp_path / "work")
    with pytest.raises(ValueError, match="other settings"):
        distill.distill_vae(tiny_vae_dir, settings(steps=5, batch=2), tmp_path / "b", tmp_path / "work")


def test_a_checkpoint_that_is_not_ours_is_refused_without_running_it(tiny_vae_dir, tmp_path):
    import pickle

    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickled code ran')",))

    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "checkpoint.pt").write_bytes(pickle.dumps({"settings": Payload()}))
    with pytest.raises(ValueError, match="not a distill-vae checkpoint"):
        distill.distill_vae(tiny_vae_dir, settings(), tmp_path / "s", tmp_path / "work")


@pytest.mark.parametrize(
    "bad",
    [dict(steps=0), dict(batch=-1), dict(learning_rate=float("nan")), dict(learning_rate=2.0), dict(warmup=-1),
     dict(images=True), dict(map_weights=(0.0, 0.0)), dict(map_weights=(1.0, -1.0)), dict(map_weights=())],
)  # fmt: skip
def test_bad_distill_settings_are_refused(bad):
    with pytest.raises(ValueError):
        settings(**bad)


@pytest.mark.parametrize("bad", [dict(channels=0), dict(decoder_blocks=()), dict(decoder_blocks=(1, 9)), dict(channels=True)])
def test_bad_student_shapes_are_refused(bad):
    with pytest.raises(ValueError):
        dataclasses.replace(TINY_SHAPE, **bad)


def test_a_student_that_upsamples_more_than_the_teacher_is_refused(tiny_vae_dir, tmp_path):
    shape = StudentShape(4, (1, 1, 1, 1, 1), 4, (1, 1, 1, 1))  # 16x for 1/8 latents
    with pytest.raises(ValueError, match="upsamples 16x"):
        distill.distill_vae(tiny_vae_dir, settings(shape=shape), tmp_path / "s", tmp_path / "w")


def test_distill_never_writes_over_its_teacher(tiny_vae_dir, tmp_path):
    with pytest.raises(ValueError, match="holds the input"):
        distill.distill_vae(tiny_vae_dir, settings(), tiny_vae_dir.parent, tmp_path / "w", overwrite=True)



def test_distill_never_writes_over_its_init_or_bundle_and_refuses_non_finite_inputs(tiny_vae_dir, student_dir, tiny_bundle, tmp_path):
    import shutil

    init = tmp_path / "init"
    shutil.copytree(student_dir, init)
    with pytest.raises(ValueError, match="holds the input"):
        distill.distill_vae(tiny_vae_dir, settings(), init, tmp_path / "w", init=init, overwrite=True)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    with pytest.raises(ValueError, match="holds the input"):
        distill.distill_vae(tiny_vae_dir, settings(bundle=bundle), bundle, tmp_path / "w", overwrite=True)
    assert (bundle / "manifest.json").is_file() and (init / "config.json").is_file()

    teacher = tmp_path / "nan-teacher"  # a NaN in the teacher's decoder would label every image black
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir)
    with torch.no_grad():
        vae.decoder.conv_out.weight.view(-1)[0] = float("nan")
    vae.save_pretrained(teacher)
    with pytest.raises(ValueError, match=r"teacher VAE .*decoder\.conv_out\.weight"):
        distill.distill_vae(teacher, settings(), tmp_path / "s", tmp_path / "w2")
    assert not (tmp_path / "s").exists()

    with pytest.raises(ValueError, match="one weight per map"):
        settings(map_weights=(1.0, 5.0))


def test_a_corrupt_dataset_cache_is_rebuilt(tiny_vae_dir, tmp_path):
    work = tmp_path / "work"
    first = distill.distill_vae(tiny_vae_dir, settings(steps=2, save_every=2), tmp_path / "a", work)
    (cache,) = work.glob("dataset-*.npz")
    cache.write_bytes(cache.read_bytes()[:100])  # truncated, as by a full disk
    (work / "checkpoint.pt").unlink()
    again = distill.distill_vae(tiny_vae_dir, settings(steps=2, save_every=2), tmp_path / "b", work)
    assert again["images"] == first["images"] and cache.stat().st_size > 100


# ---------------------------------------------------------------------------------------------- export behind the gate
def test_an_inaccurate_student_is_refused_and_nothing_is_written(tiny_model_dir, tiny_vae_dir, student_dir, tmp_path):
    out = tmp_path / "bundle"
    with pytest.raises(StudentGateError) as caught:
        export_bundle(tiny_model_dir, tiny_vae_dir, out, students=StudentOptions(decoder=student_dir, gate_scenes=2,
                                                                                  speed_frames=0))  # fmt: skip
    assert not out.exists() and not list(tmp_path.glob(".bundle.*"))
    report = caught.value.report
    assert report["passed"] is False and report["failures"] and report["mode"] == "ground truth"
    assert {f["metric"] for f in report["failures"]} <= set(dataclasses.asdict(GateThresholds()))


def test_bad_gate_frames_and_bad_distill_data_fail_before_any_work(tiny_model_dir, tiny_vae_dir, student_dir, tmp_path, monkeypatch):
    from mmgen_edge.export import onnx_export

    traced = []
    monkeypatch.setattr(onnx_export, "trace_to_onnx", lambda *a, **k: traced.append(a))
    (tmp_path / "empty").mkdir()
    for data, message in ((tmp_path / "empty", "holds no image files"), (tmp_path / "missing", "does not exist")):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "b", students=StudentOptions(decoder=student_dir, gate_data=str(data)))
    assert traced == [] and not (tmp_path / "b").exists()

    with pytest.raises(FileNotFoundError, match="does not exist"):
        distill.distill_vae(tiny_vae_dir, settings(data=str(tmp_path / "missing")), tmp_path / "s", tmp_path / "s-work")
    assert not (tmp_path / "s-work").exists() and not (tmp_path / "s").exists()  # no empty work folder left


def test_agreement_of_a_bundle_with_itself_is_perfect(tiny_bundle):
    """Agreement mode (frames without ground truth): the full VAE's maps are the truth, so the same bundle passes
    with no worsening at all."""
    from mmgen_edge.calibration.vae_gate import gate_student_bundle

    report, failures = gate_student_bundle(tiny_bundle, tiny_bundle, GateThresholds(depth=0, normal=0, miou=0),
                                           eval_steps=2, data="demo:2", speed_frames=1)  # fmt: skip
    assert failures == [] and report["passed"] is True and report["frames"] == 2
    assert report["candidate"] == report["reference"]
    assert report["reference"]["depth_delta1"] == 1.0 and report["reference"]["seg_miou"] == 1.0


def test_the_vae_itself_as_decoder_is_not_a_student_but_another_kl_is(tiny_model_dir, tiny_vae_dir, tmp_path):
    from mmgen_edge.export.synthetic import write_tiny_vae

    manifest = export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "same", students=StudentOptions(decoder=tiny_vae_dir))
    assert manifest.vae.students == () and manifest.vae.gate is None
    other = write_tiny_vae(tmp_path / "other-kl", seed=1)
    options = StudentOptions(decoder=other, gate_scenes=2, speed_frames=0, force=True)
    manifest = export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "other", students=options)
    assert manifest.vae.students == ("vae_decoder",) and manifest.vae.decoder.family == "AutoencoderKL"
    assert manifest.vae.gate is not None and manifest.vae.gate["students"] == ["vae_decoder"]


def test_a_forced_student_bundle_records_the_gate_and_matches_pytorch(tiny_model_dir, tiny_vae_dir, student_dir, tmp_path):
    import onnxruntime

    import mmgen_edge

    options = StudentOptions(decoder=student_dir, encoder=student_dir, gate_data="demo:2", force=True, speed_frames=1)
    export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "b", students=options)
    manifest = read_manifest(tmp_path / "b")
    assert manifest.vae.students == ("vae_encoder", "vae_decoder")
    assert manifest.vae.decoder.family == "AutoencoderTiny" and manifest.vae.decoder.source == "student"
    assert manifest.vae.decoder.upsampling == 8 and manifest.vae.decoder.parameters > 0
    gate = manifest.vae.gate
    assert gate["forced"] is True and gate["passed"] is False and gate["mode"] == "agreement with the full VAE"
    assert gate["reference"]["depth_delta1"] == pytest.approx(1.0) and gate["reference"]["normal_mean"] < 1e-3
    assert gate["speed"]["speedup"]["decode"] == pytest.approx(
        gate["speed"]["reference"]["decode"] / gate["speed"]["candidate"]["decode"])
    assert not (tmp_path / "b" / ".gate-reference").exists()
    student = load_autoencoder(student_dir)
    z = torch.randn(3, 4, 4, 4)
    session = onnxruntime.InferenceSession(str(tmp_path / "b" / "vae_decoder.onnx"), providers=["CPUExecutionProvider"])
    (decoded,) = session.run(None, {"latent": z.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(decoded, decode_latent(student, z, 32).numpy(), atol=1e-5)
    with mmgen_edge.load(tmp_path / "b", backend="ort-cpu") as model:
        result = model.perceive(np.zeros((40, 50, 3), np.uint8), seed=0)
    assert result.depth.shape == (40, 50) and np.isfinite(result.normals).all()


def test_an_encoder_the_student_never_trained_is_refused(tiny_model_dir, tiny_vae_dir, tmp_path):
    distill.distill_vae(tiny_vae_dir, settings(steps=2), tmp_path / "dec-only", tmp_path / "w")
    with pytest.raises(ValueError, match="encoder was not trained"):
        export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "b", students=StudentOptions(encoder=tmp_path / "dec-only"))


def test_students_that_do_not_fit_the_model_are_refused(tiny_model_dir, tiny_vae_dir, tmp_path):
    wrong_channels = StudentShape(4, (1, 1, 1, 1), 4, (1, 1, 1, 1)).new(8)
    wrong_channels.save_pretrained(tmp_path / "c8")
    with pytest.raises(ValueError, match="8 latent channels"):
        export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "b", students=StudentOptions(decoder=tmp_path / "c8"))
    too_deep = StudentShape(4, (1, 1, 1, 1, 1), 4, (1, 1, 1, 1)).new(4)
    too_deep.save_pretrained(tmp_path / "x16")
    with pytest.raises(ValueError, match="upsamples 16x"):
        export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "b", students=StudentOptions(decoder=tmp_path / "x16"))
    with pytest.raises(ValueError, match="expected a AutoencoderKL"):
        export_bundle(tiny_model_dir, tmp_path / "x16", tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_a_student_with_nonfinite_weights_is_refused_by_name(tiny_model_dir, tiny_vae_dir, tmp_path):
    vae = StudentShape(4, (1, 1, 1, 1), 4, (1, 1, 1, 1)).new(4)
    with torch.no_grad():
        vae.decoder.layers[0].weight[0, 0, 0, 0] = float("nan")
    vae.save_pretrained(tmp_path / "nan")
    with pytest.raises(ValueError, match=r"decoder\.layers\.0\.weight"):
        export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "b", students=StudentOptions(decoder=tmp_path / "nan"))


def test_export_never_overwrites_its_inputs(tiny_model_dir, tiny_vae_dir, tmp_path):
    with pytest.raises(ValueError, match="holds the input"):
        export_bundle(tiny_model_dir, tiny_vae_dir, tiny_model_dir, overwrite=True)
    assert (tiny_model_dir / "config.json").is_file()


@pytest.mark.parametrize("bad", [dict(gate_scenes=0), dict(gate_frames=-1), dict(speed_frames=-1), dict(gate_scenes=True)])
def test_bad_student_options_are_refused(bad):
    with pytest.raises(ValueError):
        StudentOptions(**bad)


def test_the_cli_exits_3_when_the_gate_refuses(tiny_model_dir, tiny_vae_dir, student_dir, tmp_path, capsys):
    from mmgen_edge.cli import main

    out = tmp_path / "b"
    code = main(["export", str(tiny_model_dir), "--vae", str(tiny_vae_dir), "--out", str(out), "--decoder",
                 str(student_dir), "--gate-scenes", "2", "--gate-speed-frames", "0"])  # fmt: skip
    assert code == 3 and not out.exists()
    err = capsys.readouterr().err
    assert "student VAE refused" in err and "gate         FAILED" in err
    assert main(["export", str(tiny_model_dir), "--vae", str(tiny_vae_dir), "--out", str(out), "--decoder",
                 str(student_dir), "--gate-scenes", "2", "--gate-speed-frames", "0", "--force"]) == 0  # fmt: skip
    assert "FAILED (written with --force)" in capsys.readouterr().out


def test_old_manifests_without_vae_parts_still_read(runtime_bundle, tmp_path):
    import shutil

    copy = tmp_path / "old"
    shutil.copytree(runtime_bundle, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    for key in ("encoder", "decoder", "gate"):
        raw["vae"].pop(key, None)
    (copy / "manifest.json").write_text(json.dumps(raw))
    manifest = read_manifest(copy)
    assert manifest.vae.encoder is None and manifest.vae.students == ()


@pytest.mark.parametrize("blocks", [(1, 1, 1, 1), (1, 1, 1)], ids=["full-resolution", "half-resolution+resize"])
def test_student_graphs_are_tensorrt_buildable(tiny_model_dir, tiny_vae_dir, tmp_path, blocks):
    """Every op and attribute of a student's VAE graphs is in TensorRT's ONNX parser (tanh clamp, nearest
    upsampling, the bilinear resize of a half-resolution decoder), so `mmgen-edge build` takes the bundle."""
    from mmgen_edge.export.tensorrt_support import check_tensorrt_support

    StudentShape(4, blocks, 4, (1, 1, 1, 1)).new(4).save_pretrained(tmp_path / "student")
    options = StudentOptions(decoder=tmp_path / "student", encoder=tmp_path / "student", gate_scenes=1, speed_frames=0,
                             force=True)  # fmt: skip
    export_bundle(tiny_model_dir, tiny_vae_dir, tmp_path / "b", students=options)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "b" / "vae_decoder.onnx")).graph.node}
    assert {"Conv", "Tanh", "Resize"} <= ops
    for graph in ("vae_encoder", "vae_decoder"):
        assert check_tensorrt_support(tmp_path / "b" / f"{graph}.onnx") == [], graph


@pytest.mark.parametrize(
    "argv, message",
    [(["--decoder-blocks", "3,9"], "--decoder-blocks: must be 1..6"), (["--channels", "0"], "--channels: must be"),
     (["--batch", "0"], "--batch: must be"), (["--lr", "nan"], "--lr: must be a finite number"),
     (["--shape", "huge"], "invalid choice: 'huge'"), (["--map-weights", "1,nan"], "--map-weights: must be finite"),
     (["--map-weights", "0,0"], "not all 0")],
)  # fmt: skip
def test_distill_cli_refuses_bad_options(argv, message, capsys, tmp_path):
    from mmgen_edge.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["distill-vae", str(tmp_path), "--data", "demo:2", "--out", str(tmp_path / "s"), *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_distill_cli_trains_and_prints_the_next_step(tiny_vae_dir, tmp_path, capsys):
    from mmgen_edge.cli import main

    out = tmp_path / "student"
    assert main(["distill-vae", str(tiny_vae_dir), "--data", "demo:2", "--out", str(out), "--channels", "4",
                 "--decoder-blocks", "1,1,1,1", "--train-steps", "2", "--batch", "2"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "trained: decoder" in printed and f"--decoder {out}" in printed and "PSNR" in printed
    assert (tmp_path / "student-work" / "checkpoint.pt").is_file()  # the default --work, for resuming
    assert main(["distill-vae", str(tiny_vae_dir), "--data", "demo:2", "--out", str(out)]) == 2  # exists: no --overwrite
    assert "already exists" in capsys.readouterr().err
