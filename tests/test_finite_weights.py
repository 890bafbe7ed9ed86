"""NaN/Inf weights are refused by name at convert and at export (model directory and VAE), never written."""

from __future__ import annotations

import pytest
from extras import require_export

pytestmark = require_export()  # torch/onnx/diffusers: skipped on a base install

import torch

from mmgen_edge.cli import main as cli_main
from mmgen_edge.export import finite
from mmgen_edge.export.checkpoint import CheckpointError, import_checkpoint
from mmgen_edge.export.finite import NonFiniteWeightsError, check_finite, count_nonfinite, find_nonfinite
from mmgen_edge.export.model_dir import load_model, save_model_dir
from mmgen_edge.export.onnx_export import export_bundle
from mmgen_edge.export.synthetic import NONFINITE_VAE_WEIGHTS, NONFINITE_WEIGHTS, poison, write_tiny_vae


def test_counts_are_exact_across_chunks(monkeypatch):
    monkeypatch.setattr(finite, "CHUNK_ELEMENTS", 7)
    t = torch.zeros(5, 9)
    t[0, 0] = t[4, 8] = float("nan")
    t[2, 3] = float("inf")
    t[3, 1] = float("-inf")
    assert count_nonfinite(t) == (2, 2)
    assert count_nonfinite(torch.ones(3, dtype=torch.int64)) == (0, 0)
    found = find_nonfinite({"b": t, "a": torch.ones(4), "c": torch.full((2,), float("inf"))})
    assert [(f.name, f.nan, f.inf, f.numel) for f in found] == [("b", 2, 2, 45), ("c", 0, 2, 2)]
    check_finite({"a": torch.ones(4)}, "fine weights")  # no error


@pytest.mark.parametrize("weights", ["ema", "model"])
def test_import_refuses_nan_and_inf_naming_each_tensor(nonfinite_checkpoint, weights):
    with pytest.raises(CheckpointError) as info:
        import_checkpoint(nonfinite_checkpoint, weights=weights, sha256="skip")
    text = str(info.value)
    assert "non-finite weights in 2 of" in text and f"({weights} weights)" in text
    assert "blocks.0.attn.qkv.weight (1 NaN, 0 Inf of 12,288 values)" in text
    assert "lis_final_layer.1.linear.bias (0 NaN, 1 Inf of 16 values)" in text


def test_convert_cli_exits_2_and_writes_nothing(nonfinite_checkpoint, tmp_path, capsys):
    assert cli_main(["convert", str(nonfinite_checkpoint), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "blocks.0.attn.qkv.weight" in err and "lis_final_layer.1.linear.bias" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_fp16_conversion_refuses_weights_that_overflow(tiny_checkpoint, tmp_path):
    path, ema = tiny_checkpoint
    state = {k: v.clone() for k, v in ema.items()}
    state["pos_embed"].view(-1)[0] = 1e6  # finite in fp32, Inf in fp16
    config = import_checkpoint(path, sha256="skip").config
    with pytest.raises(NonFiniteWeightsError, match=r"weight pos_embed does not fit torch.float16: 1 values overflow"):
        save_model_dir(tmp_path / "m16", config, state, dtype="fp16")
    assert not (tmp_path / "m16").exists()
    save_model_dir(tmp_path / "m32", config, state, dtype="fp32")  # fp32 holds it
    assert float(load_model(tmp_path / "m32").state_dict()["pos_embed"].view(-1)[0]) == 1e6


def test_export_refuses_a_model_directory_with_nan_and_inf(tiny_model_dir, tiny_vae_dir, tmp_path):
    model = load_model(tiny_model_dir)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    poison(state, NONFINITE_WEIGHTS)
    broken = save_model_dir(tmp_path / "broken", model.config, state)
    with pytest.raises(NonFiniteWeightsError) as info:
        export_bundle(broken, tiny_vae_dir, tmp_path / "bundle")
    text = str(info.value)
    assert f"model directory {broken}" in text
    assert "blocks.0.attn.qkv.weight (1 NaN" in text and "lis_final_layer.1.linear.bias (0 NaN, 1 Inf" in text
    assert not (tmp_path / "bundle").exists()


def test_export_refuses_a_vae_with_nan_and_inf(tiny_model_dir, tmp_path, capsys):
    vae = write_tiny_vae(tmp_path / "vae", nonfinite=NONFINITE_VAE_WEIGHTS)
    code = cli_main(["export", str(tiny_model_dir), "--vae", str(vae), "--out", str(tmp_path / "bundle")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"VAE {vae} has non-finite weights in 2 of" in err
    assert "decoder.conv_in.weight (1 NaN, 0 Inf" in err and "encoder.conv_out.bias (0 NaN, 1 Inf" in err
    assert not (tmp_path / "bundle").exists()
