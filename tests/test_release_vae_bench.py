"""bench/release_vae.py: the --smoke run end to end (JSON structure, FLOPs, shares, speedups and floors consistent
with each other and with the medians), the graph cache of a second run, and the refusal of bad options."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from extras import require_export

pytestmark = require_export()  # torch, onnx, diffusers: skipped on a base install

#: The smoke run takes ~10-25 s on 2 shared CPU cores (the issue asks < 60 s).
SMOKE_TIME_LIMIT_S = 60
RUNS = 2


def run_smoke(out: Path, *extra: str) -> dict[str, Any]:
    from mmgen_edge.bench.release_vae import JSON_FILE, main

    assert main(["--smoke", "--out", str(out), "--threads", "1", *extra]) == 0
    return json.loads((out / JSON_FILE).read_text())


@pytest.mark.slow
def test_smoke_run_reports_consistent_stages_frames_shares_and_floors(tmp_path, capsys):
    from mmgen_edge.bench import harness
    from mmgen_edge.bench.release_vae import FRAMES, SPEEDUP_TARGETS, STAGES

    start = time.perf_counter()
    report = run_smoke(tmp_path / "out", "--runs", str(RUNS))
    assert time.perf_counter() - start < SMOKE_TIME_LIMIT_S
    printed = capsys.readouterr().out
    assert "full_vae_vs_tiny_decoder" in printed and "Jetson AGX Orin 64GB" in printed

    assert report["smoke"] is True
    assert set(report["stages"]) == set(STAGES) and set(report["frames"]) == set(FRAMES)
    stages = report["stages"]
    for name, stage in stages.items():
        assert stage["graph"] == STAGES[name].graph and Path(stage["path"]).is_file()
        assert stage["flops"] > 0 and stage["bytes"] > stage["fp16_bytes"] > 0, name
        assert stage["timing"]["runs"] == RUNS and stage["timing"]["median_ms"] > 0
        assert stage["cached"] is False and stage["trace_s"] > 0
    # the shapes of one call: 1 image, 3 maps, batch 1 without guidance (one modulation row)
    resolution, latent = report["configuration"]["resolution"], report["configuration"]["latent"]
    assert stages["sd_vae_encoder"]["input_shapes"] == {"image": [1, 3, resolution, resolution]}
    assert stages["taesd_decoder"]["input_shapes"] == {"latent": [3, 4, latent[1], latent[2]]}
    step_shapes = stages["denoiser_step"]["input_shapes"]
    assert step_shapes["x_t"] == [1, *latent] and step_shapes["block_modulation"][0] == 1
    assert step_shapes["final_modulation"][0] == 1
    # the tiny VAE does less work than the KL one, each half
    assert stages["taesd_decoder"]["flops"] < stages["sd_vae_decoder"]["flops"]
    assert stages["taesd_encoder"]["flops"] < stages["sd_vae_encoder"]["flops"]
    # the half-resolution student decodes the same latents to the same image size, for fewer FLOPs
    assert stages["taesd_half_decoder"]["input_shapes"] == stages["taesd_decoder"]["input_shapes"]
    assert stages["taesd_half_decoder"]["flops"] < stages["taesd_decoder"]["flops"]

    for name, frame in report["frames"].items():
        parts = FRAMES[name]
        assert tuple(frame["stages"].values()) == parts
        assert frame["ms"] == pytest.approx(sum(stages[s]["timing"]["median_ms"] for s in parts), rel=1e-12)
        assert frame["flops"] == sum(stages[s]["flops"] for s in parts)
        assert math.isclose(sum(frame["flop_shares"].values()), 1.0, abs_tol=1e-6)
        assert frame["flop_shares"]["decoder"] == pytest.approx(stages[parts[2]]["flops"] / frame["flops"])
    for name, (slow, fast, target) in SPEEDUP_TARGETS.items():
        speedup = report["speedups"][name]
        assert speedup["value"] == pytest.approx(report["frames"][slow]["ms"] / report["frames"][fast]["ms"], rel=1e-12)
        assert speedup["target"] == target and speedup["pass"] == (speedup["value"] >= target)
    share = report["decoder_flop_share"]
    assert share["full_vae"]["value"] == report["frames"]["full_vae"]["flop_shares"]["decoder"]
    assert share["full_vae"]["issue_says"] == 0.78
    assert share["tiny_decoder"]["value"] < share["full_vae"]["value"]
    for name in ("tiny_decoder", "tiny_half_decoder"):
        tiny = share[name]
        assert tiny["target_below"] == 0.15 and tiny["pass"] == (tiny["value"] < 0.15)
    assert share["tiny_half_decoder"]["value"] < share["tiny_decoder"]["value"]

    assert set(report["device_floors"]) == set(harness.DEVICE_PEAKS)
    for device, by_precision in report["device_floors"].items():
        assert set(by_precision) == {"fp32", "fp16"}
        for precision, floor in by_precision.items():
            bytes_key = "bytes" if precision == "fp32" else "fp16_bytes"
            for name, stage in stages.items():
                expected = harness.device_bound(stage["flops"], stage[bytes_key], device, precision)["min_ms"]
                assert floor["stages_ms"][name] == pytest.approx(expected, rel=1e-12) and expected > 0
            for name, parts in FRAMES.items():
                assert floor["frames_ms"][name] == pytest.approx(sum(floor["stages_ms"][s] for s in parts), rel=1e-12)
            assert floor["speedups"]["full_vae_vs_tiny_decoder"] == pytest.approx(
                floor["frames_ms"]["full_vae"] / floor["frames_ms"]["tiny_decoder"], rel=1e-12
            )
            assert floor["frames_ms"]["tiny_both"] < floor["frames_ms"]["tiny_decoder"] < floor["frames_ms"]["full_vae"]

    # a second run with the same configuration finds every graph in the work folder and traces nothing
    again = run_smoke(tmp_path / "out", "--runs", "1", "--warmup", "0")
    assert all(s["cached"] is True and s["trace_s"] is None for s in again["stages"].values())
    assert {n: s["path"] for n, s in again["stages"].items()} == {n: s["path"] for n, s in stages.items()}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--runs", "0"], "argument --runs: must be an integer >= 1, got 0"),
        (["--threads", "two"], "argument --threads: must be an integer >= 1, got 'two'"),
        (["--warmup", "-1"], "argument --warmup: must be an integer >= 0, got -1"),
    ],
)
def test_bad_options_exit_2_naming_the_option(argv, message, capsys):
    from mmgen_edge.bench.release_vae import main

    with pytest.raises(SystemExit) as info:
        main(["--smoke", *argv])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_an_output_path_that_is_a_file_exits_2(tmp_path, capsys):
    from mmgen_edge.bench.release_vae import main

    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit) as info:
        main(["--smoke", "--out", str(tmp_path / "file")])
    assert info.value.code == 2 and "--out" in capsys.readouterr().err
