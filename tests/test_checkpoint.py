"""Release-checkpoint import: strict loading, safety, clear errors, atomic model directories."""

from __future__ import annotations

import argparse
import json
import os
import pickle

import pytest
from extras import require_export

pytestmark = require_export()  # torch/onnx/diffusers: skipped on a base install

import torch

from mmgen_edge.export.synthetic import TINY_ARGS, TINY_PROJECTOR
from mmgen_edge.export import checkpoint as ckpt_mod
from mmgen_edge.export.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    convert_checkpoint,
    import_checkpoint,
)
from mmgen_edge.export.model import MMGen
from mmgen_edge.export.model_dir import load_model, read_model_dir_config
from mmgen_edge.export.synthetic import write_release_checkpoint
from mmgen_edge.cli import main as cli_main


def _inputs(n: int = 2):
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(n, 16, 4, 4, generator=g),
        torch.rand(n, 4, generator=g),
        torch.tensor([7, 1000][:n]),
        torch.tensor([0, 3][:n]),
    )


@pytest.mark.parametrize("args_format", ["namespace", "dict"])
def test_release_layout_loads_strictly_and_converts_to_identical_weights(tmp_path, args_format):
    path = tmp_path / "ck.pt"
    ema = write_release_checkpoint(path, args_format=args_format, projector=TINY_PROJECTOR, **TINY_ARGS)
    raw = torch.load(path, weights_only=False)
    assert set(raw) == {"model", "ema", "opt", "args", "steps"}
    assert isinstance(raw["args"], argparse.Namespace if args_format == "namespace" else dict)

    summary = convert_checkpoint(path, tmp_path / "model")
    model = load_model(tmp_path / "model")
    reloaded = model.state_dict()
    assert set(reloaded) == set(ema)
    for k, v in ema.items():
        assert torch.equal(reloaded[k], v), k

    reference = MMGen(summary.config).eval()
    reference.load_state_dict(ema, strict=True)
    with torch.no_grad():
        assert torch.equal(model(*_inputs()), reference(*_inputs()))
    meta = read_model_dir_config(tmp_path / "model")
    assert meta.provenance.train_steps == 600_000 and meta.provenance.weights == "ema"
    assert meta.provenance.source_sha256 == summary.sha256 and len(summary.sha256) == 64


def test_model_weights_can_be_chosen_instead_of_ema(tiny_checkpoint, tmp_path):
    path, ema = tiny_checkpoint
    imported = import_checkpoint(path, weights="model", sha256="skip")
    live = torch.load(path, weights_only=False)["model"]
    assert torch.equal(imported.state_dict["blocks.0.attn.qkv.weight"], live["blocks.0.attn.qkv.weight"])
    assert not torch.equal(imported.state_dict["blocks.0.attn.qkv.weight"], ema["blocks.0.attn.qkv.weight"])


def test_fp16_directory_reloads_within_fp16_rounding(tiny_checkpoint, tmp_path):
    path, ema = tiny_checkpoint
    convert_checkpoint(path, tmp_path / "m16", dtype="fp16")
    model = load_model(tmp_path / "m16")
    assert model.x_embedder.proj.weight.dtype == torch.float16
    assert (tmp_path / "m16" / "model.safetensors").stat().st_size < 0.6 * sum(v.numel() * 4 for v in ema.values())
    for k, v in ema.items():
        torch.testing.assert_close(model.state_dict()[k].float(), v, rtol=1e-3, atol=1e-4)


class _Exploit:
    """Unpickling this would create a file: the classic pickle code-execution payload."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "ema": {}, "args": _Exploit(str(marker)), "steps": 1}, path)
    with pytest.raises(UnsafeCheckpointError, match="Nothing from it was executed"):
        import_checkpoint(path, sha256="skip")
    assert not marker.exists()
    # the payload is real: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_truncated_file_gives_a_clear_error(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint[0].read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        import_checkpoint(cut, sha256="skip")


def test_legacy_format_is_explained(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"ema": {}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        import_checkpoint(path, sha256="skip")


@pytest.mark.parametrize(
    "flag, value",
    [
        ("use_decouple_latent", True),
        ("num_tasks", 3),
        ("is_mmcat_diff", False),
        ("use_decouple_task", False),
        ("use_taskcond_emb", False),
        ("path_type", "edm"),
    ],
)
def test_unsupported_flags_are_refused_by_name(tmp_path, tiny_checkpoint, flag, value):
    raw = torch.load(tiny_checkpoint[0], weights_only=False)
    setattr(raw["args"], flag, value)
    path = tmp_path / "ck.pt"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=f"args.{flag}"):
        import_checkpoint(path, sha256="skip")


def test_missing_ema_is_a_clear_error(tmp_path, tiny_checkpoint):
    raw = torch.load(tiny_checkpoint[0], weights_only=False)
    del raw["ema"]
    torch.save(raw, tmp_path / "noema.pt")
    with pytest.raises(CheckpointError, match=r"lacks \['ema'\]"):
        import_checkpoint(tmp_path / "noema.pt", sha256="skip")


def test_wrong_shapes_name_the_keys(tmp_path, tiny_checkpoint):
    raw = torch.load(tiny_checkpoint[0], weights_only=False)
    raw["ema"]["blocks.1.mlp.fc1.weight"] = torch.zeros(3, 3)
    del raw["ema"]["lis_final_layer.3.linear.bias"]
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"lis_final_layer\.3\.linear\.bias.*blocks\.1\.mlp\.fc1\.weight"):
        import_checkpoint(tmp_path / "bad.pt", sha256="skip")


def test_absurd_declared_sizes_and_a_malformed_projector_are_refused_in_one_line(tmp_path, tiny_checkpoint):
    """hidden_size 10**9 in a 1 MB checkpoint's args took 40 s and 4 GB before a numpy traceback; a projector
    missing its last layer or holding a scalar gave KeyError / IndexError."""
    raw = torch.load(tiny_checkpoint[0], weights_only=False)
    for key, value, named in (("hidden_size", 10**9, "hidden_size: Input should be less than or equal to 16384"),
                              ("depth", 10**6, "depth: Input should be less than or equal to 256"),
                              ("resolution", 2**16, "resolution: Input should be less than or equal to 8192")):  # fmt: skip
        hostile = {**raw, "args": argparse.Namespace(**{**vars(raw["args"]), key: value})}
        torch.save(hostile, tmp_path / "huge.pt")
        with pytest.raises(CheckpointError) as info:
            import_checkpoint(tmp_path / "huge.pt", sha256="skip")
        assert named in str(info.value) and "\n" not in str(info.value), str(info.value)
    for key, value in (("resolution", 32.9), ("num_classes", "12"), ("depth", True)):
        hostile = {**raw, "args": argparse.Namespace(**{**vars(raw["args"]), key: value})}
        torch.save(hostile, tmp_path / "typed.pt")
        with pytest.raises(CheckpointError, match=f"args.{key} must be an integer, got {value!r}"):
            import_checkpoint(tmp_path / "typed.pt", sha256="skip")
    for broken in ("missing", "scalar"):
        ema = dict(raw["ema"])
        if broken == "missing":
            del ema["projectors.0.4.weight"]
        else:
            ema["projectors.0.4.weight"] = torch.tensor(1.0)
        torch.save({**raw, "ema": ema}, tmp_path / "proj.pt")
        with pytest.raises(CheckpointError, match="the REPA projector is malformed: projectors.0.4.weight"):
            import_checkpoint(tmp_path / "proj.pt", sha256="skip")


def test_a_damaged_model_directory_is_named_in_one_line(tiny_checkpoint, tmp_path):
    """A truncated model.safetensors gave a SafetensorError traceback, mismatched weights a 12-line torch error."""
    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "m"
    convert_checkpoint(tiny_checkpoint[0], model_dir, sha256="skip")
    weights = model_dir / "model.safetensors"
    state = {k: v.clone() for k, v in load_file(str(weights)).items()}  # not the mmap of a file cut below
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors is not a readable safetensors file"):
        load_model(model_dir)
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(weights))  # relabelled: config says fp32
    with pytest.raises(ValueError, match=r"config.json says fp32, but \d+ tensor\(s\) are stored otherwise"):
        load_model(model_dir)
    name = next(k for k in state if k.endswith("mlp.fc1.weight"))
    config = (model_dir / "config.json").read_text()
    (model_dir / "config.json").write_text("[]")
    with pytest.raises(ValueError, match=r"config.json is not a valid model config: value: Input should be an object"):
        load_model(model_dir)
    (model_dir / "config.json").write_text(config)
    save_file({**state, name: torch.zeros(3, 3)}, str(weights))
    with pytest.raises(CheckpointError) as info:
        load_model(model_dir)
    assert f"{name}: (3, 3) !=" in str(info.value) and "\n" not in str(info.value)


def test_sha256_modes(tiny_checkpoint, monkeypatch):
    path = tiny_checkpoint[0]
    digest = import_checkpoint(path).sha256
    assert import_checkpoint(path, sha256=digest.upper()).sha256 == digest
    assert import_checkpoint(path, sha256="skip").sha256 is None
    with pytest.raises(CheckpointError, match="SHA-256 mismatch"):
        import_checkpoint(path, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="64-digit"):
        import_checkpoint(path, sha256="abc")

    size = path.stat().st_size
    fake = ckpt_mod.ReleaseFile("0600000.pt", "base model", size, digest)
    monkeypatch.setattr(ckpt_mod, "RELEASE_FILES", {digest: fake})
    assert import_checkpoint(path).release == fake
    other = ckpt_mod.ReleaseFile("0620000.pt", "fine-tuned", size, "f" * 64)
    monkeypatch.setattr(ckpt_mod, "RELEASE_FILES", {other.sha256: other})
    with pytest.raises(CheckpointError, match="probably corrupt"):
        import_checkpoint(path)


def test_release_table_is_the_spec():
    by_name = {r.name: r for r in ckpt_mod.RELEASE_FILES.values()}
    assert by_name["0600000.pt"].size == 11_112_542_326
    assert by_name["0620000.pt"].sha256.startswith("ab4c9423")


def test_interrupted_conversion_leaves_nothing_that_loads(tiny_checkpoint, tmp_path, monkeypatch):
    import mmgen_edge.export.model_dir as model_dir

    def fail(path, *args, **kwargs):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(model_dir, "write_safetensors", fail)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(tiny_checkpoint[0], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_not_replaced_without_overwrite(tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    convert_checkpoint(tiny_checkpoint[0], out)
    stamp = (out / "config.json").read_text()
    with pytest.raises(FileExistsError):
        convert_checkpoint(tiny_checkpoint[0], out)
    convert_checkpoint(tiny_checkpoint[0], out, overwrite=True, dtype="fp16")
    assert (out / "config.json").read_text() != stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_cli_convert_json_and_errors(tiny_checkpoint, tmp_path, capsys):
    assert cli_main(["convert", str(tiny_checkpoint[0]), "--out", str(tmp_path / "m"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["depth"] == 2 and report["release"] is None and report["weights"] == "ema"
    assert report["parameters"] == sum(v.numel() for v in tiny_checkpoint[1].values())
    assert cli_main(["convert", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()


def test_convert_overwrite_never_deletes_the_source_or_foreign_files(tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "downloads"
    folder.mkdir()
    source = folder / "tiny.pt"
    source.write_bytes(tiny_checkpoint[0].read_bytes())
    (folder / "notes.txt").write_text("keep")
    assert cli_main(["convert", str(source), "--out", str(folder), "--overwrite", "--sha256", "skip"]) == 2
    assert "would delete the input" in capsys.readouterr().err
    assert source.read_bytes() == tiny_checkpoint[0].read_bytes() and (folder / "notes.txt").is_file()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert cli_main(["convert", str(source), "--out", str(other), "--overwrite", "--sha256", "skip"]) == 2
    assert "did not write" in capsys.readouterr().err and (other / "notes.txt").is_file()
    plain = tmp_path / "plain-file"
    plain.write_text("x")
    assert cli_main(["convert", str(source), "--out", str(plain), "--overwrite", "--sha256", "skip"]) == 2
    assert "is a file" in capsys.readouterr().err
    out = tmp_path / "model"
    assert cli_main(["convert", str(source), "--out", str(out), "--sha256", "skip"]) == 0
    assert cli_main(["convert", str(source), "--out", str(out), "--overwrite", "--sha256", "skip"]) == 0


def test_convert_names_a_directory_and_an_empty_file(tmp_path, capsys):
    assert cli_main(["convert", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "is a directory; give the checkpoint file inside it" in capsys.readouterr().err
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert cli_main(["convert", str(empty), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "is empty (0 bytes)" in err and "legacy" not in err
