"""bench/: the smoke run end to end, graph FLOPs/bytes against hand counts, the roofline and the timing helpers."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import math
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from extras import require_export

pytestmark = require_export()  # onnx, torch: skipped on a base install

BENCH = Path(__file__).resolve().parents[1] / "bench"
#: The smoke run should take ~20-60 s on 2 CPU cores; this bound only catches a run that went pathological.
SMOKE_TIME_LIMIT_S = 180
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAGES = {"preprocess", "encode", "steps", "decode", "postprocess"}


def load_script(name: str) -> ModuleType:
    """The bench module ``mmgen_edge.bench.<name>``."""
    return importlib.import_module(f"mmgen_edge.bench.{name}")


@pytest.fixture(scope="module")
def harness() -> ModuleType:
    return load_script("harness")


# ------------------------------------------------------------------------------------------------ smoke run
@pytest.mark.slow
def test_smoke_run_writes_json_with_positive_timings_and_a_plot(tmp_path):
    run, settings, report_module = load_script("run"), load_script("settings"), load_script("report")
    start = time.perf_counter()
    assert run.main(["--smoke", "--out", str(tmp_path)]) == 0
    elapsed = time.perf_counter() - start
    assert elapsed < SMOKE_TIME_LIMIT_S, elapsed

    report = json.loads((tmp_path / "bench.json").read_text())
    for key in ("meta", "machine", "step", "conditioning_cache", "perceive", "stream", "accuracy_latency",
                "ratios", "goals", "peak_rss_bytes", "errors"):  # fmt: skip
        assert key in report, key
    assert report["errors"] == []
    assert report["meta"]["artifacts"]["built_tiny"] is True
    assert report["meta"]["torch_model"]["same_weights_as_fp32_bundle"] is True
    assert report["peak_rss_bytes"] > 0

    step = report["step"]["b1"]["cases"]
    for case in ("torch_eager", "torch_eager_plain", "ort_fp32"):
        assert step[case]["timing"]["median_ms"] > 0, case
        assert step[case]["timing"]["runs"] == settings.SMOKE_RUNS
        assert step[case]["cost"]["flops"] > 0
        assert 0 < step[case]["roofline"]["this_cpu"]["achieved_gflops"]
        assert set(step[case]["roofline"]["devices"]) == set(report["machine"]["device_peaks"])
    for case in ("torch_compile", "ort_int8", "torch_cuda_eager"):
        assert "skipped" in step[case], case  # --smoke: no compile, no INT8 bundle, no --torch-cuda

    cache = report["conditioning_cache"]["fp32"]["b1"]
    assert cache["on"]["timing"]["median_ms"] > 0 and cache["off"]["timing"]["median_ms"] > 0
    assert cache["off"]["loop_stats"]["cache_hits"] == 0 and cache["on"]["loop_stats"]["conditioning_calls"] == 1

    frame = report["perceive"]["fp32"]["b1"]["K1"]
    assert frame["timing"]["median_ms"] > 0
    assert set(frame["stages_ms"]) == STAGES and all(v > 0 for v in frame["stages_ms"].values())
    assert frame["cost"]["frames_per_call"] == 1

    backends = report["backends"]
    if importlib.util.find_spec("openvino") is None:
        assert backends == {"skipped": "OpenVINO is not installed: pip install 'mmgen-edge[openvino]'"}
    else:
        bf16 = "openvino-bf16" if backends["facts"]["native_bf16"] else "openvino-bf16-emulated"
        if "bf16_unavailable" in backends["facts"]:  # no AVX-512: OpenVINO cannot even emulate bf16
            assert "refusing a silent downgrade" in backends["facts"]["bf16_unavailable"]
            assert bf16 not in backends["K1"] and not backends["facts"]["native_bf16"]
            bf16 = None
        for label in filter(None, ("ort-cpu", "openvino-fp32", bf16)):
            assert backends["K1"][label]["frame"]["median_ms"] > 0, label
            assert set(backends["K1"][label]["stages_ms"]) == {"encode", "steps", "step", "decode"}
        for label in filter(None, ("openvino-fp32", bf16)):
            assert all(v > 0 for v in report["ratios"][f"{label}_vs_ort-cpu_frame"].values()), label

    decoders = report["decoders"]
    assert decoders["decoder"]["family"] == "AutoencoderTiny" and decoders["gate_passed"] is False  # random, forced
    k1 = decoders["K1"]
    for label in ("fp32", "tiny"):
        assert set(k1["ms"][label]) == {"encode", "steps", "decode", "frame"} and all(v > 0 for v in k1["ms"][label].values())
        share = k1["cost"][label]["decoder"]["flops"] / k1["cost"][label]["frame"]["flops"]
        assert k1["cost"][label]["decoder_share_of_frame_flops"] == pytest.approx(share) and 0 < share < 1
    assert k1["tiny_vs_full"]["decode"] == pytest.approx(k1["ms"]["fp32"]["decode"] / k1["ms"]["tiny"]["decode"])
    assert report["ratios"]["tiny_decoder_vs_full_frame"]["K1"] == pytest.approx(k1["tiny_vs_full"]["frame"])
    assert isinstance(report["goals"]["tiny_decoder_vs_full_decode"]["pass"], bool)
    assert "tiny" in report["perceive"]  # every open bundle is timed in the perceive case too

    stream = report["stream"]["K1"]
    assert stream["frames"] == settings.SMOKE_STREAM_FRAMES and stream["frames_per_s"] > 0
    assert stream["stats"]["dropped"] == [0]

    for name in ("ort_fp32_vs_torch_eager", "conditioning_cache_speedup", "stream_throughput_vs_inverse_latency"):
        assert all(v > 0 for v in report["ratios"][name].values()), name
    assert set(report["goals"]) == set(report_module.GOALS)
    assert report["goals"]["ort_int8_vs_ort_fp32"]["pass"] is None  # not measured: no INT8 bundle
    for name in ("ort_fp32_vs_torch_eager", "conditioning_cache_speedup", "stream_throughput_vs_inverse_latency"):
        assert isinstance(report["goals"][name]["pass"], bool), name

    assert report["machine"]["this_cpu"]["gemm_peak_gflops"] > 0
    png = tmp_path / "accuracy_latency.png"
    assert png.read_bytes()[: len(PNG_SIGNATURE)] == PNG_SIGNATURE
    assert report["accuracy_latency"]["points"][0]["K"] == 1


@pytest.mark.slow
def test_size_builds_its_artifacts_once_and_judges_the_size_goals(tmp_path):
    """--size (here its --smoke stand-ins): model dir, VAE, fp32 / CPU INT8 / tiny-decoder bundles built in --work
    like a user would, every case that means something timed on them, the XL goals judged; a second run finds the
    artifacts (nothing rebuilt) and another max batch gets its own bundles."""
    run, report_module = load_script("run"), load_script("report")
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["--size", "xl", "--smoke", "--work", str(work), "--out", str(out), "--skip", "conditioning_cache"]
    assert run.main(argv) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["errors"] == []
    size = report["meta"]["size"]
    assert size["size"] == "xl" and size["smoke"] is True and size["weights"] == "random (speed only)"
    assert {k: v["cached"] for k, v in size["built"].items()} == {
        "model": False, "vae": False, "bundle-fp32-b1": False, "bundle-int8-cpu-b1": False, "taesd": False,
        "bundle-tiny-decoder-b1": False}  # fmt: skip
    root = Path(size["work"])
    assert root.parent == work and root.name.startswith("xl-smoke-")
    int8 = json.loads((root / "bundle-int8-cpu-b1" / "manifest.json").read_text())
    assert int8["precision"] == "int8" and int8["calibration"]["target"] == "cpu" and int8["calibration"]["report"]["forced"]
    for label in ("fp32", "int8", "tiny"):
        assert size["bundle_bytes"][label]["graphs"] > 0, label
        assert report["meta"]["bundles"][label]["resolution"] == 64, label
    # the unchanged graphs of the INT8 bundle are links to the fp32 bundle's: counted once per bundle, not copied
    assert (root / "bundle-int8-cpu-b1" / "conditioning.onnx").stat().st_ino == (root / "bundle-fp32-b1" / "conditioning.onnx").stat().st_ino
    assert report["stream"] == {"skipped": report_module_skip("stream")}
    assert report["accuracy_latency"] == {"skipped": report_module_skip("accuracy_latency")}
    assert report["conditioning_cache"] == {"skipped": "--skip conditioning_cache"}
    assert report["step"]["b1"]["ratios"]["ort_int8_vs_ort_fp32"] > 0
    assert report["decoders"]["K1"]["tiny_vs_full"]["frame"] > 0
    goals = report["goals"]
    assert goals["cpu_int8_vs_ort_fp32_b1"]["target"] == report_module.SIZE_GOALS["xl"]["cpu_int8_vs_ort_fp32_b1"] == 3.0
    backends = report["backends"]
    assert backends["facts"]["shared"] == ["ort-cpu", "ort-cpu-int8"]  # the run's own ORT models, not reopened
    assert "ONNX Runtime's CPU form" in backends["facts"]["openvino_int8_skipped"]  # the size's INT8 is the CPU form
    k1 = backends["K1"]
    assert k1["ort-cpu-int8"]["frame"]["median_ms"] > 0 and "openvino-int8" not in k1
    assert k1["best_int8_step"]["backend"] == "ort-cpu-int8"
    assert goals["cpu_int8_vs_ort_fp32_b1"]["values"] == {"backends/K1": k1["best_int8_step"]["step_vs_ort_fp32"]}
    best = k1["best_frame"]
    assert best["frame_vs_ort_fp32"] == max(v["frame"] for n, v in k1.items() if n.endswith("_vs_ort-cpu"))
    assert goals["best_cpu_backend_vs_ort_fp32_frame"]["values"] == {"K1": best["frame_vs_ort_fp32"]}
    assert goals["fp32_bundle_graphs_gib"]["at_most"] is True and goals["fp32_bundle_graphs_gib"]["pass"] is True
    assert math.isclose(goals["fp32_bundle_graphs_gib"]["worst"], size["bundle_bytes"]["fp32"]["graphs"] / 2**30)
    assert isinstance(goals["best_cpu_backend_vs_ort_fp32_frame"]["pass"], bool)

    assert run.main(argv) == 0  # found, not rebuilt
    again = json.loads((out / "bench.json").read_text())["meta"]["size"]["built"]
    assert all(entry["cached"] for entry in again.values())
    assert run.main([*argv, "--batch", "2", "--skip", "backends,decoders,perceive,step"]) == 0
    built = json.loads((out / "bench.json").read_text())["meta"]["size"]["built"]
    assert built["bundle-fp32-b2"]["cached"] is False and built["model"]["cached"] is True
    assert "bundle-tiny-decoder-b2" not in built  # --skip decoders: no tiny bundle is built


def report_module_skip(case: str) -> str:
    return load_script("settings").SIZE_SKIPPED[case]


def test_size_refuses_given_artifacts_and_a_file_as_work(tmp_path, capsys):
    run, sizes = load_script("run"), load_script("release_size")
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--size", "xl", "--bundle", str(tmp_path)])
    assert exit_info.value.code == 2 and "--size builds its own model" in capsys.readouterr().err
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(SystemExit):
        run.main(["--size", "b2", "--work", str(afile)])
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.build_parser().parse_args(["--size", "xxl"])
    assert "invalid choice: 'xxl'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown size 'h2'; the sizes are xl, b2"):
        sizes.release_size("h2")
    b2, xl = sizes.release_size("b2"), sizes.release_size("xl")
    assert (b2.arch.model.name, xl.arch.model.name) == ("SiT-B/2", "SiT-XL/2")
    assert b2.arch.model.resolution == xl.arch.model.resolution == 256 and b2.key != xl.key
    assert b2.arch.kl_vae == xl.arch.kl_vae and b2.arch.kl_vae["block_out_channels"] == (128, 256, 512, 512)


def test_size_settings_default_to_one_frame_and_goals_take_the_size_targets():
    run, settings, report = load_script("run"), load_script("settings"), load_script("report")
    sized = settings.settings_from(run.build_parser().parse_args(["--size", "xl"]))
    assert (sized.batches, sized.steps, sized.runs, sized.warmup) == ((1,), (1,), 5, 1)
    assert sized.skip == ("stream", "accuracy_latency") and sized.compile is False
    asked = settings.settings_from(run.build_parser().parse_args(["--size", "xl", "--steps", "1,4", "--runs", "3"]))
    assert (asked.steps, asked.runs) == ((1, 4), 3)
    plain = settings.settings_from(run.build_parser().parse_args([]))
    assert plain.skip == () and plain.steps == settings.DEFAULT_STEPS
    ratios = {"best_cpu_backend_vs_ort_fp32_frame": {"K1": 2.0}, "fp32_bundle_graphs_gib": {"fp32": 3.2}}
    demo, xl = report.evaluate_goals(ratios), report.evaluate_goals(ratios, "xl")
    assert demo["best_cpu_backend_vs_ort_fp32_frame"]["pass"] is True and "fp32_bundle_graphs_gib" not in demo
    assert xl["best_cpu_backend_vs_ort_fp32_frame"]["pass"] is False  # 2.0 < 3.0 at XL
    assert xl["fp32_bundle_graphs_gib"] == {"target": 3.0, "at_most": True, "worst": 3.2, "values": {"fp32": 3.2},
                                           "pass": False}  # fmt: skip


def test_best_backend_ratio_ignores_emulated_bf16():
    report = load_script("report")
    backends = {"K1": {"openvino-fp32_vs_ort-cpu": {"frame": 1.2}, "openvino-bf16-emulated_vs_ort-cpu": {"frame": 9.0}},
                "K4": {"openvino-fp32_vs_ort-cpu": {"frame": 1.3}, "openvino-bf16_vs_ort-cpu": {"frame": 2.1}},
                "facts": {}}  # fmt: skip
    ratios = report.collect_ratios({"backends": backends})
    assert ratios["best_cpu_backend_vs_ort_fp32_frame"] == {"K1": 1.2, "K4": 2.1}


def test_missing_artifacts_are_skipped_with_a_reason(tmp_path):
    run, found = load_script("run"), load_script("artifacts")
    nowhere = tmp_path / "nowhere"
    args = run.build_parser().parse_args(["--model-dir", str(nowhere), "--bundle", str(nowhere), "--vae-dir", str(nowhere)])
    artifacts = found.find_artifacts(args)
    assert artifacts.model_dir is None and artifacts.bundles == {}
    assert "config.json not found" in artifacts.missing["model_dir"]
    assert "manifest.json not found" in artifacts.missing["bundle"]
    assert "--bundle-int8" in artifacts.missing["bundle_int8"]
    assert "--bundle-tiny" in artifacts.missing["bundle_tiny"]  # no default beside an explicit --bundle


def test_skip_names_cases_and_rejects_unknown_ones():
    run, settings = load_script("run"), load_script("settings")
    args = run.build_parser().parse_args(["--skip", "stream, step", "--smoke"])
    assert args.skip == ("step", "stream")  # in the order the cases run
    assert settings.settings_from(args).skip == ("step", "stream")
    assert settings.settings_from(run.build_parser().parse_args([])).skip == ()
    with pytest.raises(argparse.ArgumentTypeError, match="unknown case.*'cache'.*conditioning_cache"):
        settings.parse_case_list("stream,cache")


def test_skipped_cases_are_reported_and_not_run(tmp_path, capsys):
    run = load_script("run")
    nowhere, out = tmp_path / "nowhere", tmp_path / "out"
    paths = ["--model-dir", str(nowhere), "--bundle", str(nowhere), "--vae-dir", str(nowhere)]
    out.mkdir()
    (out / "accuracy_latency.png").write_bytes(PNG_SIGNATURE)  # a previous run's plot
    assert run.main([*paths, "--skip", "stream,perceive", "--out", str(out)]) == 0
    report = json.loads((out / "bench.json").read_text())
    assert report["stream"] == {"skipped": "--skip stream"}
    assert report["perceive"] == {"skipped": "--skip perceive"}
    assert report["step"] == {"skipped": "no PyTorch model and no bundle open"}  # ran, found nothing to time
    assert report["conditioning_cache"] == {"skipped": "no bundle open"}
    assert report["meta"]["settings"]["skip"] == ["perceive", "stream"]
    assert report["goals"]["stream_throughput_vs_inverse_latency"]["pass"] is None
    assert report["errors"] == []
    assert not (out / "accuracy_latency.png").exists()  # no plot this run: the old one is not left next to the JSON
    assert "stream_throughput_vs_inverse_latency" in capsys.readouterr().out


def test_busy_warning_threshold_scales_with_the_cores():
    report = load_script("report")
    assert report.BUSY_LOAD_PER_CPU == 0.25
    assert report.busy_warnings(0.6, 2) and "above 0.50" in report.busy_warnings(0.6, 2)[0]  # 0.5 on 2 CPUs
    assert report.busy_warnings(0.5, 2) == []  # at the threshold: not busy
    assert report.busy_warnings(0.6, 16) == [] and report.busy_warnings(3.9, 16) == []  # 4.0 on 16 CPUs
    assert "load 4.10 on 16 CPUs" in report.busy_warnings(4.1, 16)[0]
    assert report.busy_warnings(None, 1) == []


# ------------------------------------------------------------------------------------------------ graph_cost
def hand_built_graph(path: Path, external_threshold: int | None = None) -> None:
    """X (N,3,8,8) -> Conv 3x3 (4 out, pad 1) -> grouped 1x1 Conv (groups 2, stride 2) -> two heads:
    Reshape (N,4,16) @ B (16,5) -> Y1 (N,4,5), and Flatten (N,64) -> Gemm with W (10,64)^T -> Y2 (N,10)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name: str, array: np.ndarray) -> onnx.TensorProto:
        return numpy_helper.from_array(array, name)

    initializers = [
        init("W1", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),  # 432 bytes
        init("W2", rng.standard_normal((4, 2, 1, 1)).astype(np.float32)),  # 32 bytes
        init("shape", np.array([-1, 4, 16], np.int64)),  # 24 bytes
        init("B", rng.standard_normal((16, 5)).astype(np.float32)),  # 320 bytes
        init("W", rng.standard_normal((10, 64)).astype(np.float32)),  # 2560 bytes
    ]
    nodes = [
        helper.make_node("Conv", ["X", "W1"], ["H1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["H1", "W2"], ["H2"], group=2, strides=[2, 2]),
        helper.make_node("Reshape", ["H2", "shape"], ["R"]),
        helper.make_node("MatMul", ["R", "B"], ["Y1"]),
        helper.make_node("Flatten", ["H2"], ["F"], axis=1),
        helper.make_node("Gemm", ["F", "W"], ["Y2"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "hand",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("Y1", TensorProto.FLOAT, ["N", 4, 5]),
         helper.make_tensor_value_info("Y2", TensorProto.FLOAT, ["N", 10])],  # fmt: skip
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    if external_threshold is not None:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=external_threshold)  # fmt: skip
    else:
        onnx.save_model(model, str(path))


# Hand counts for N = 2:
#   conv 3x3:  2 * N*Cout*Hout*Wout * Cin/groups*kh*kw = 2 * 2*4*8*8 * 3*3*3 = 27648
#   conv 1x1, groups 2, stride 2 (4x4 out): 2 * 2*4*4*4 * 2*1*1         = 512
#   MatMul (2,4,16) @ (16,5):   2 * M*N*K = 2 * (2*4)*5*16               = 1280
#   Gemm (2,64) @ (64,10):      2 * 2*10*64                               = 2560
HAND_FLOPS = 27648 + 512 + 1280 + 2560
#   weights 432 + 32 + 24 + 320 + 2560; X 2*3*8*8*4 = 1536; Y1 2*4*5*4 = 160; Y2 2*10*4 = 80
HAND_WEIGHT_BYTES = 432 + 32 + 24 + 320 + 2560
HAND_BYTES = HAND_WEIGHT_BYTES + 1536 + 160 + 80


def test_graph_cost_matches_hand_counts(harness, tmp_path):
    path = tmp_path / "hand.onnx"
    hand_built_graph(path)
    assert harness.graph_cost(path, {"X": [2, 3, 8, 8]}) == (HAND_FLOPS, HAND_BYTES)
    detail = harness.graph_cost_detail(path, {"X": [2, 3, 8, 8]})
    assert detail.flops_by_op == {"Conv": 27648 + 512, "MatMul": 1280, "Gemm": 2560}
    assert detail.weight_bytes == HAND_WEIGHT_BYTES
    flops_n1, _ = harness.graph_cost(path, {"X": [1, 3, 8, 8]})
    assert flops_n1 * 2 == HAND_FLOPS  # every counted op is linear in the batch


def test_graph_cost_does_not_read_external_weights(harness, tmp_path):
    path = tmp_path / "external.onnx"
    hand_built_graph(path, external_threshold=1024)  # W (2560 bytes) goes to the data file
    (tmp_path / "external.onnx.data").unlink()  # sizes come from the tensors' dims, never from the data
    assert harness.graph_cost(path, {"X": [2, 3, 8, 8]}) == (HAND_FLOPS, HAND_BYTES)


def test_graph_cost_reads_small_external_shape_constants(harness, tmp_path):
    path = tmp_path / "all_external.onnx"
    hand_built_graph(path, external_threshold=0)  # even the Reshape target is external: it is read, the rest not
    assert harness.graph_cost(path, {"X": [2, 3, 8, 8]}) == (HAND_FLOPS, HAND_BYTES)


def token_graph(path: Path) -> None:
    """X (N,300) -> Concat with a learned token T (1,300) on axis 0 -> (N+1,300) @ W (300,4) -> Y (N+1,4), with every
    tensor in ``<name>.data``. ONNX Runtime's shape inference reads the value of a Concat's constant input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    token = numpy_helper.from_array(rng.standard_normal((1, 300)).astype(np.float32), "T")  # 1200 bytes
    weight = numpy_helper.from_array(rng.standard_normal((300, 4)).astype(np.float32), "W")  # 4800 bytes
    nodes = [helper.make_node("Concat", ["X", "T"], ["C"], axis=0), helper.make_node("MatMul", ["C", "W"], ["Y"])]
    graph = helper.make_graph(nodes, "token", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 300])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", 4])], [token, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)  # fmt: skip


def test_graph_cost_of_external_data_from_another_directory(harness, tmp_path, monkeypatch):
    bundle, elsewhere = tmp_path / "bundle", tmp_path / "elsewhere"
    bundle.mkdir(), elsewhere.mkdir()
    path = bundle / "denoiser.onnx"
    token_graph(path)
    assert (bundle / "denoiser.onnx.data").is_file()
    monkeypatch.chdir(elsewhere)  # the data file is not in the current directory
    # N = 2: MatMul (3,300) @ (300,4) = 2*3*4*300 = 7200; bytes: T 1200 + W 4800 + X 2*300*4 + Y 3*4*4 = 8448
    assert harness.graph_cost(path, {"X": [2, 300]}) == (7200, 8448)
    assert harness.graph_cost(Path("../bundle/denoiser.onnx"), {"X": [2, 300]}) == (7200, 8448)


def test_graph_cost_rejects_wrong_inputs(harness, tmp_path):
    path = tmp_path / "hand.onnx"
    hand_built_graph(path)
    with pytest.raises(ValueError, match="missing"):
        harness.graph_cost(path, {"image": [2, 3, 8, 8]})
    with pytest.raises(ValueError, match="rank"):
        harness.graph_cost(path, {"X": [2, 3, 8]})


# ------------------------------------------------------------------------------------------------ roofline
def test_roofline_memory_bound_hand_example(harness):
    # 2 GFLOP over 1 GB in 0.1 s on a 100 GFLOP/s, 10 GB/s machine: intensity 2 FLOP/B -> attainable 20 GFLOP/s,
    # achieved 2e9 / 0.1 = 20 GFLOP/s: exactly on the roof.
    line = harness.roofline(2e9, 1e9, 0.1, 100e9, 10e9)
    assert line["arithmetic_intensity"] == pytest.approx(2.0)
    assert line["attainable_gflops"] == pytest.approx(20.0)
    assert line["achieved_gflops"] == pytest.approx(20.0)
    assert line["fraction_of_attainable"] == pytest.approx(1.0)


def test_roofline_compute_bound_hand_example(harness):
    # 1 TFLOP over 1 GB in 20 s: intensity 1000 -> the 100 GFLOP/s peak binds; achieved 50 GFLOP/s = half of it.
    line = harness.roofline(1e12, 1e9, 20.0, 100e9, 10e9)
    assert line["attainable_gflops"] == pytest.approx(100.0)
    assert line["achieved_gflops"] == pytest.approx(50.0)
    assert line["fraction_of_attainable"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        harness.roofline(1e9, 1e6, 0.0, 100e9, 10e9)


def test_device_bound_uses_the_table(harness):
    peaks = harness.DEVICE_PEAKS["H100 SXM"]
    flops, nbytes = 2e12, 1e9  # intensity 2000: compute-bound at fp16 on H100 (ridge ~295 FLOP/B)
    bound = harness.device_bound(flops, nbytes, "H100 SXM", "fp16")
    assert bound["attainable_gflops"] == pytest.approx(peaks["fp16_tflops"] * 1e3)
    assert bound["min_ms"] == pytest.approx(flops / (peaks["fp16_tflops"] * 1e12) * 1e3)
    memory_bound = harness.device_bound(1e6, 1e9, "Jetson AGX Orin 64GB", "int8")
    assert memory_bound["min_ms"] == pytest.approx(1e9 / (204.8e9) * 1e3)


# ------------------------------------------------------------------------------------------------ timing
def test_measure_reports_median_at_most_p90(harness):
    calls = []
    durations = iter([0.0] * 2 + [0.001 * (i % 5) for i in range(15)])

    def fn() -> None:
        calls.append(1)
        time.sleep(next(durations))

    timing = harness.measure(fn, warmup=2, runs=15)
    assert len(calls) == 17 and timing.runs == 15
    assert 0 < timing.min_ms <= timing.median_ms <= timing.p90_ms
    assert timing.p90_ms >= 3.0  # the slowest fifth slept 3-4 ms


def test_measure_interleaved_times_every_candidate(harness):
    counts = {"a": 0, "b": 0}

    def bump(name: str) -> None:
        counts[name] += 1

    timings = harness.measure_interleaved({"a": lambda: bump("a"), "b": lambda: bump("b")}, warmup=1, runs=4)
    assert counts == {"a": 5, "b": 5}
    assert all(t.runs == 4 and t.median_ms <= t.p90_ms for t in timings.values())


def test_peak_rss_and_cpu_peaks_are_positive(harness):
    assert harness.peak_rss_bytes() > 0
    assert harness.cpu_gemm_peak_gflops(n=128, repeats=2) > 0
    gbps = harness.cpu_memory_bandwidth_gbps(nbytes=1 << 20, repeats=2)
    assert gbps > 0 and math.isfinite(gbps)


def test_soak_stream_counts_every_frame_in_order(tmp_path):
    from mmgen_edge.bench import soak
    from mmgen_edge.sdk.demo import ensure_demo_bundle

    result = soak.soak_stream(str(ensure_demo_bundle(progress=False)), frames=12, steps=1)
    assert (result["frames_received"], result["lost"], result["reordered"]) == (12, 0, 0)
    assert result["rss_end_mb"] > 0 and result["frames_per_s"] > 0
    assert soak.session_rss_bytes(os.getsid(0)) >= soak.rss_bytes()


def test_threads_auto_leaves_the_runtime_sessions_their_own_choice():
    run, settings = load_script("run"), load_script("settings")
    auto = settings.settings_from(run.build_parser().parse_args(["--threads", "auto"]))
    assert auto.runtime_threads is None and auto.threads == settings.default_threads()  # torch on every CPU
    assert settings.settings_from(run.build_parser().parse_args([])) == auto  # the default: what load() does
    fixed = settings.settings_from(run.build_parser().parse_args(["--threads", "1"]))
    assert (fixed.threads, fixed.runtime_threads) == (1, 1)
    for bad in ("0", "Auto", "two", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            settings.bench_threads(bad)
