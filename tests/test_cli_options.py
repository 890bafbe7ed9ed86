"""Every numeric option of every ``mmgen-edge`` subcommand is bounds-checked by argparse: a bad value exits 2 with
``argument --OPTION: must be ...`` (no traceback, never a silent default), and a good value still parses."""

from __future__ import annotations

import argparse

import pytest
from extras import skip_without_export

from mmgen_edge import cli
from mmgen_edge.cli import bounded_int, finite_float, guidance_scale, main, positive_float, step_count, step_list
from mmgen_edge.runtime.sampler import MAX_STEPS

#: (argv before the bad option, option, bad value, what the message says)
BAD_OPTIONS = [
    (["export", "m", "--vae", "v", "--out", "o"], "--max-batch", "0", "must be an integer in 1..1024, got 0"),
    (["export", "m", "--vae", "v", "--out", "o"], "--noise-scale", "0", "must be a number in (0, 2], got '0'"),
    (["export", "m", "--vae", "v", "--out", "o"], "--noise-scale", "nan", "must be a finite number, got 'nan'"),
    (["export", "m", "--vae", "v", "--out", "o"], "--steps", "0", f"steps must be in 1..{MAX_STEPS}, got 0"),
    (["export", "m", "--vae", "v", "--out", "o"], "--steps", str(MAX_STEPS + 1), f"steps must be in 1..{MAX_STEPS}, got {MAX_STEPS + 1}"),
    (["export", "m", "--vae", "v", "--out", "o"], "--max-batch", "two", "must be an integer in 1..1024, got 'two'"),
    (["export", "m", "--vae", "v", "--out", "o"], "--max-batch", "5000", "must be an integer in 1..1024, got 5000"),
    (["export", "m", "--vae", "v", "--out", "o"], "--steps", "four", "steps must be an integer, got 'four'"),
    (["perceive", "a.png"], "--steps", "-1", "steps must be in 1.."),
    (["perceive", "a.png"], "--seed", "-3", "must be an integer in 0..9223372036854775807, got -3"),
    (["perceive", "a.png"], "--seed", str(2**63), f"must be an integer in 0..9223372036854775807, got {2**63}"),
    (["generate"], "--num", "0", "must be an integer in 1..100000, got 0"),
    (["generate"], "--num", "100001", "must be an integer in 1..100000, got 100001"),
    (["generate"], "--seed", "-1", "must be an integer in 0..9223372036854775807, got -1"),
    (["generate"], "--class-label", "-2", "must be an integer >= 0, got -2"),
    (["generate"], "--cfg-scale", "nan", "must be a finite number, got 'nan'"),
    (["generate"], "--cfg-scale", "101", "must be in 0..100, got '101'"),
    (["export", "m", "--vae", "v", "--out", "o"], "--cfg-scale", "-1", "must be in 0..100, got '-1'"),
    (["eval"], "--cfg-scale", "inf", "must be a finite number, got 'inf'"),
    (["generate"], "--steps", "0", "steps must be in 1.."),
    (["stream", "clip.mp4"], "--fps", "0", "must be a finite number > 0, got '0'"),
    (["stream", "clip.mp4"], "--fps", "inf", "must be a finite number > 0, got 'inf'"),
    (["stream", "clip.mp4"], "--fps", "1e9", "must be a number in [0.01, 1000], got '1e9'"),
    (["stream", "clip.mp4"], "--fps", "0.001", "must be a number in [0.01, 1000], got '0.001'"),
    (["stream", "clip.mp4"], "--max-frames", "0", "must be an integer >= 1, got 0"),
    (["stream", "clip.mp4"], "--seed", "-1", "must be an integer in 0.."),
    (["eval"], "--scenes", "0", "must be an integer in 1..10000, got 0"),
    (["eval"], "--scenes", "12731", "must be an integer in 1..10000, got 12731"),
    (["eval"], "--generation", "1001", "must be an integer in 0..1000, got 1001"),
    (["export", "m", "--vae", "v", "--out", "o"], "--gate-scenes", "10001", "must be an integer in 1..10000"),
    (["eval"], "--generation", "-1", "must be an integer in 0..1000, got -1"),
    (["eval"], "--generation-seed", "-1", "must be an integer in 0..4611686018427387904, got -1"),
    (["eval"], "--steps", "1,0,4", "steps must be in 1..250, got 0 (in '1,0,4')"),
    (["eval"], "--steps", ",", "must be comma-separated step counts, got ','"),
    (["demo"], "--steps", "0", "steps must be in 1.."),
    (["demo"], "--seed", "-5", "must be an integer in 0..9223372036854775807, got -5"),
    (["calibrate", "b", "--data", "demo:4", "--out", "o"], "--samples", "0", "must be an integer >= 1, got 0"),
    (["calibrate", "b", "--data", "demo:4", "--out", "o"], "--threads", "0", "must be an integer in 1..1024, got 0"),
    (["calibrate", "b", "--data", "demo:4", "--out", "o"], "--threads", "100000", "must be an integer in 1..1024"),
    (["calibrate", "b", "--data", "demo:4", "--out", "o"], "--eval-scenes", "0", "must be an integer in 1..10000"),
    (["calibrate", "b", "--data", "demo:4", "--out", "o"], "--eval-steps", "0", "steps must be in 1.."),
    (["calibrate", "b", "--data", "demo:4", "--out", "o"], "--speed-runs", "-1", "must be an integer >= 0"),
    (["calibrate", "b", "--data", "demo:4", "--out", "o"], "--steps", "1,-2", "steps must be in 1.."),
    (["serve"], "--instances", "0", "must be an integer in 1..64, got 0"),
    (["serve"], "--front-instances", "0", "must be an integer in 1..16, got 0"),
    (["serve"], "--front-instances", "17", "must be an integer in 1..16, got 17"),
    (["serve"], "--threads", "0", "must be an integer in 1..1024, got 0"),
    (["serve"], "--backend", "ort-cpuu", "must be one of auto, tensorrt, "),
    (["perceive", "a.png"], "--backend", "onnx", "must be one of auto, tensorrt, "),
    (["eval"], "--backend", "CPU", "must be one of auto, tensorrt, "),
    (["serve"], "--http-port", "70000", "must be an integer in 1..65535, got 70000"),
    (["serve"], "--max-queue-delay-us", "-1", "must be an integer in 0..10000000, got -1"),
    (["serve"], "--steps", "0", "steps must be in 1.."),
    (["triton-repo", "b", "--out", "o"], "--instances", "0", "must be an integer in 1..64, got 0"),
    (["triton-repo", "b", "--out", "o"], "--front-instances", "99", "must be an integer in 1..16, got 99"),
    (["triton-repo", "b", "--out", "o"], "--max-queue-delay-us", "99999999999999", "must be an integer in 0..10000000"),
    (["bench"], "--runs", "0", "must be an integer >= 1, got 0"),
    (["bench"], "--warmup", "-1", "must be an integer >= 0, got -1"),
    (["bench"], "--threads", "0", "must be an integer in 1..1024, got 0"),
    (["bench"], "--backend", "ort-cpuu", "must be one of auto, tensorrt, "),
    (["bench"], "--stream-frames", "0", "must be an integer >= 1, got 0"),
    (["bench"], "--eval-scenes", "-1", "must be an integer in 0..10000, got -1"),
    (["bench"], "--batch", "1,100000", "expected a comma-separated list of integers in 1..1024, got '1,100000'"),
    (["bench"], "--steps", "0", "steps must be in 1.."),
    (["bench"], "--compile-timeout-s", "-5", "must be a finite number > 0, got '-5'"),
]


@pytest.mark.parametrize("argv, option, value, message", BAD_OPTIONS, ids=[f"{a[0]} {o} {v}" for a, o, v, _ in BAD_OPTIONS])
def test_a_bad_numeric_option_exits_2_naming_the_option(argv, option, value, message, capsys):
    if argv[0] == "calibrate":
        skip_without_export()  # its parser reads onnxruntime.quantization's names (onnx)
    with pytest.raises(SystemExit) as info:
        main([*argv, option, value])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert f"error: argument {option}: {message}" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["export", "perceive", "generate", "stream", "eval", "demo", "calibrate", "serve",
                                     "triton-repo", "distill-vae"])  # fmt: skip
def test_every_numeric_option_has_a_checked_type(command):
    """No subcommand keeps a bare ``type=int`` / ``type=float`` (which accepts 0, negatives, nan)."""
    if command in ("calibrate", "distill-vae"):
        skip_without_export()  # their parsers read defaults from export / onnxruntime.quantization modules
    parser = cli.build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    bare = [a.option_strings for a in sub._actions if a.type in (int, float)]
    assert bare == [], f"{command}: options with an unchecked numeric type: {bare}"


def test_bench_has_no_unchecked_numeric_option():
    from mmgen_edge.bench.run import build_parser

    assert [a.option_strings for a in build_parser()._actions if a.type in (int, float)] == []


def test_the_option_types_accept_the_bounds_and_refuse_beyond():
    assert bounded_int(1)("1") == 1 and bounded_int(0)("0") == 0 and bounded_int(1, 3)("3") == 3
    for convert, text in ((bounded_int(1), "0"), (bounded_int(1, 3), "4"), (bounded_int(0), "1.5")):
        with pytest.raises(argparse.ArgumentTypeError):
            convert(text)
    assert step_count(str(MAX_STEPS)) == MAX_STEPS and step_list(" 1, 2,4 ") == (1, 2, 4)
    assert positive_float("0.5") == 0.5 and finite_float("-2") == -2.0
    assert guidance_scale("0") == 0.0 and guidance_scale("100") == 100.0
    for convert, text in ((positive_float, "0"), (positive_float, "nan"), (finite_float, "-inf"), (finite_float, "x"),
                          (guidance_scale, "100.5"), (guidance_scale, "-0.1"), (guidance_scale, "nan")):
        with pytest.raises(argparse.ArgumentTypeError):
            convert(text)


def test_good_values_still_parse():
    args = cli.build_parser("stream").parse_args(["stream", "clip.mp4", "--fps", "12.5", "--max-frames", "3", "--seed", "0"])
    assert (args.fps, args.max_frames, args.seed) == (12.5, 3, 0)
    args = cli.build_parser("eval").parse_args(["eval"])
    assert args.steps == (1, 2, 4, 8, 25) and args.scenes == 200 and args.generation == 2
    assert args.cfg_scale is None  # the bundle's default guidance
    args = cli.build_parser("export").parse_args(["export", "m", "--vae", "v", "--out", "o"])
    assert (args.max_batch, args.steps, args.cfg_scale) == (8, 4, 1.0)
    assert cli.build_parser("generate").parse_args(["generate"]).cfg_scale is None


def test_the_soak_benchmark_checks_its_numeric_options(capsys):
    from mmgen_edge.bench import soak

    with pytest.raises(SystemExit) as info:
        soak.main(["--clients", "0"])
    assert info.value.code == 2 and "argument --clients: must be an integer >= 1, got 0" in capsys.readouterr().err


def test_the_cli_seed_bound_is_the_sdk_bound_and_generate_checks_its_last_seed_first(tmp_path, capsys):
    from mmgen_edge.sdk.protocol import MAX_SEED

    assert cli.seed_value(str(MAX_SEED)) == MAX_SEED
    with pytest.raises(argparse.ArgumentTypeError):
        cli.seed_value(str(MAX_SEED + 1))
    out = tmp_path / "gen"
    assert main(["generate", "--seed", str(MAX_SEED), "--num", "2", "--out", str(out)]) == 2
    assert f"needs seeds up to {MAX_SEED + 1}" in capsys.readouterr().err
    assert not out.exists()  # refused before any sample was written


def test_stream_show_without_a_gui_opencv_fails_before_the_model_loads(monkeypatch, capsys, tmp_path):
    """The base install's opencv-python-headless cannot open a window: ``--show`` says so in one line (exit 2) before
    any model or source opens, instead of a cv2.error traceback at the first frame; a GUI build whose window cannot
    open (no display) is refused the same way."""
    import cv2

    from mmgen_edge.commands import perceive

    opened = []
    monkeypatch.setattr(perceive, "_open_model", lambda args: opened.append(args))
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  Video I/O:\n  GUI:                           NONE\n")
    assert main(["stream", str(tmp_path / "clip.mp4"), "--show"]) == 2
    err = capsys.readouterr().err
    assert "--show needs an OpenCV build with a GUI" in err and "pip install opencv-python" in err, err
    assert "Traceback" not in err and opened == []

    def no_display(title):
        raise cv2.error("Can't initialize GTK backend")

    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  GUI:                           GTK3\n")
    monkeypatch.setattr(cv2, "namedWindow", no_display)
    assert main(["stream", str(tmp_path / "clip.mp4"), "--show"]) == 2
    err = capsys.readouterr().err
    assert "--show cannot open a window here" in err and "GTK" in err and opened == [], err


def test_stream_out_that_is_a_folder_is_refused_before_streaming(tmp_path, capsys):
    folder = tmp_path / "clip.mp4"
    folder.mkdir()
    assert main(["stream", str(tmp_path / "in.mp4"), "--out", str(folder)]) == 2
    assert f"--out {folder} is a folder" in capsys.readouterr().err
