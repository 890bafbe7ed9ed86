"""``backend="auto"`` keeps OpenVINO on a CPU only where a frame runs faster on it than on ONNX Runtime.

The decision tests use fake runners on a fake clock; the pipeline test runs both backends on the tiny bundle and
skips without the ``openvino`` extra.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from mmgen_edge.runtime import cpu_backend_choice
from mmgen_edge.runtime.backend import BackendChoice, BackendKind
from mmgen_edge.runtime.cpu_backend_choice import (
    MEASURE_BELOW_S,
    TIMED_PAIRS,
    WARMUP_FRAMES,
    frame_call,
    measured_cpu_choice,
    remembered_choice,
)
from mmgen_edge.runtime.manifest import read_manifest
from mmgen_edge.runtime.runner import Runner

RULE = BackendChoice(BackendKind.OPENVINO_BF16, "OpenVINO on some CPU: native bf16", ("tensorrt: no engines",))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeRunner(Runner):
    """Advances the clock by ``seconds[graph]`` per call and counts calls."""

    def __init__(self, name, graph, dims, clock: Clock, seconds: float):
        super().__init__(name, graph, dims)
        self.clock, self.seconds, self.calls, self.closed = clock, seconds, 0, False
        self.backend = "fake"

    def _activate(self) -> None:
        pass

    def _deactivate(self) -> None:
        self.closed = True

    def _infer(self, feeds):
        self.calls += 1
        self.clock.now += self.seconds
        return {spec.name: np.zeros(1, np.float32) for spec in self.graph.outputs}


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(cpu_backend_choice, "_MEASURED", {})


@pytest.fixture
def bundle(runtime_bundle, tmp_path) -> Path:
    """A private copy of the runtime bundle's manifest (the memo is keyed by the manifest file)."""
    out = tmp_path / "bundle"
    out.mkdir()
    shutil.copy(runtime_bundle / "manifest.json", out / "manifest.json")
    return out


def fakes(manifest, clock: Clock, seconds_per_call: float) -> dict[str, Runner]:
    runners = {}
    for name in ("conditioning", "denoiser_cached", "vae_encoder", "vae_decoder"):
        runner = FakeRunner(name, manifest.graphs[name], manifest.dims, clock, seconds_per_call)
        runner.activate()
        runners[name] = runner
    return runners


def test_a_frame_calls_every_graph_once_and_the_step_graph_k_times(bundle):
    manifest = read_manifest(bundle, verify="none")
    clock = Clock()
    runners = fakes(manifest, clock, 0.001)
    frame_call(manifest, runners)()
    k = manifest.sampler.num_steps
    assert {name: r.calls for name, r in runners.items()} == {
        "conditioning": 1, "denoiser_cached": k, "vae_encoder": 1, "vae_decoder": 1,
    }  # fmt: skip
    assert clock.now == pytest.approx(0.001 * (3 + k))


@pytest.mark.parametrize("openvino_s, ort_s, kept", [(0.002, 0.001, BackendKind.ORT_CPU), (0.001, 0.002, BackendKind.OPENVINO_BF16)])
def test_the_faster_backend_is_kept_and_the_other_closed(bundle, openvino_s, ort_s, kept):
    manifest = read_manifest(bundle, verify="none")
    clock = Clock()
    openvino = fakes(manifest, clock, openvino_s)
    ort: dict[str, Runner] = {}

    def open_ort():
        ort.update(fakes(manifest, clock, ort_s))
        return ort

    choice, runners = measured_cpu_choice(bundle, manifest, RULE, openvino, open_ort, clock)
    assert choice.kind == kept
    frames = 3 + manifest.sampler.num_steps
    assert f"{openvino_s * frames * 1e3:.1f} ms on openvino-bf16, {ort_s * frames * 1e3:.1f} ms on ort-cpu" in choice.reason
    assert runners == (openvino if kept == RULE.kind else ort)  # the same runner objects
    dropped = ort if kept == RULE.kind else openvino
    assert all(r.closed for r in dropped.values()) and not any(r.closed for r in runners.values())
    # each backend: warm-up frames, then the interleaved timed pairs (OpenVINO also its first, sizing frame)
    assert openvino["conditioning"].calls == 2 * WARMUP_FRAMES + 1 + TIMED_PAIRS - WARMUP_FRAMES
    assert ort["conditioning"].calls == WARMUP_FRAMES + TIMED_PAIRS
    if kept == BackendKind.ORT_CPU:
        assert "openvino-bf16: slower on this CPU" in choice.rejected[-1] and choice.rejected[0] == RULE.rejected[0]
    # remembered for this process: the same answer without timing again
    again = remembered_choice(bundle, RULE)
    assert again is not None and again.kind == kept and "measured earlier in this process" in again.reason
    (bundle / "manifest.json").write_text((bundle / "manifest.json").read_text() + " ")  # another file: measured anew
    assert remembered_choice(bundle, RULE) is None


def test_a_long_openvino_frame_is_kept_without_opening_onnx_runtime(bundle):
    manifest = read_manifest(bundle, verify="none")
    clock = Clock()
    openvino = fakes(manifest, clock, MEASURE_BELOW_S)

    def open_ort():
        raise AssertionError("ONNX Runtime must not be opened for a long frame")

    choice, runners = measured_cpu_choice(bundle, manifest, RULE, openvino, open_ort, clock)
    assert choice.kind == RULE.kind and runners is openvino and "kept without comparing ort-cpu" in choice.reason


def test_a_failed_comparison_keeps_the_rule_and_says_why(bundle):
    manifest = read_manifest(bundle, verify="none")
    clock = Clock()
    openvino = fakes(manifest, clock, 0.001)

    def open_ort():
        raise RuntimeError("no session for you")

    choice, runners = measured_cpu_choice(bundle, manifest, RULE, openvino, open_ort, clock)
    assert choice.kind == RULE.kind and runners is openvino
    assert "not compared with ort-cpu (RuntimeError: no session for you)" in choice.reason
    assert remembered_choice(bundle, RULE) is None  # nothing measured: the next load tries again
    with pytest.raises(ValueError, match="only an OpenVINO choice"):
        measured_cpu_choice(bundle, manifest, BackendChoice(BackendKind.ORT_CPU, "x"), openvino, open_ort, clock)


class BrokenRunner(FakeRunner):
    def _infer(self, feeds):
        raise RuntimeError("unsupported op on this CPU")


@pytest.mark.parametrize("ort_runs", [True, False])
def test_a_frame_openvino_cannot_run_goes_to_onnx_runtime_when_it_can(bundle, ort_runs):
    """OpenVINO compiled the graphs but fails a frame: ONNX Runtime takes the bundle if its frame runs (remembered,
    OpenVINO closed); if that fails too, the rule's pick stays and the reason carries both errors."""
    manifest = read_manifest(bundle, verify="none")
    clock = Clock()
    openvino = fakes(manifest, clock, 0.001)
    openvino["vae_decoder"] = BrokenRunner("vae_decoder", manifest.graphs["vae_decoder"], manifest.dims, clock, 0.0)
    openvino["vae_decoder"].activate()
    ort = fakes(manifest, clock, 0.002)
    if not ort_runs:
        ort["denoiser_cached"] = BrokenRunner("denoiser_cached", manifest.graphs["denoiser_cached"], manifest.dims,
                                              clock, 0.0)  # fmt: skip
        ort["denoiser_cached"].activate()

    choice, runners = measured_cpu_choice(bundle, manifest, RULE, openvino, lambda: ort, clock)
    if ort_runs:
        assert choice.kind == BackendKind.ORT_CPU and runners.keys() == ort.keys()
        assert all(runners[name] is ort[name] for name in ort)
        assert "runs the frame openvino-bf16 failed: RuntimeError: unsupported op on this CPU" in choice.reason
        assert any(r.startswith("openvino-bf16: failed a frame") for r in choice.rejected)
        assert all(r.closed for r in openvino.values()) and not any(r.closed for r in ort.values())
        again = remembered_choice(bundle, RULE)
        assert again is not None and again.kind == BackendKind.ORT_CPU and "failed" in again.rejected[-1]
    else:
        assert choice.kind == RULE.kind and runners is openvino
        assert "its frame failed (RuntimeError: unsupported op on this CPU), and so did ort-cpu's" in choice.reason
        assert all(r.closed for r in ort.values()) and remembered_choice(bundle, RULE) is None


def test_auto_on_a_cpu_runs_the_backend_it_measured_faster(runtime_bundle, tmp_path):
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("needs the openvino extra: pip install 'mmgen-edge[openvino]'")
    from mmgen_edge.runtime.backend import detect_environment
    from mmgen_edge.runtime.pipeline import Pipeline

    bundle = Path(shutil.copytree(runtime_bundle, tmp_path / "bundle", ignore=shutil.ignore_patterns("cache")))
    env = detect_environment()
    with Pipeline(bundle, backend="auto", environment=env) as pipeline:
        choice = pipeline.choice
        assert choice.kind in (BackendKind.ORT_CPU, BackendKind.OPENVINO_BF16, BackendKind.OPENVINO_FP32)
        assert "on ort-cpu" in choice.reason  # measured (the tiny frame is far below the threshold)
        expected = "onnxruntime" if choice.kind == BackendKind.ORT_CPU else "openvino"
        assert all(r.backend.startswith(expected) and r.active for r in pipeline.runners.values())
        noise = np.random.default_rng(0).standard_normal(pipeline.latent_shape(1)).astype(np.float32)
        assert np.isfinite(pipeline.sample(noise)).all()
    with Pipeline(bundle, backend="auto", environment=env) as second:
        assert second.choice.kind == choice.kind and "measured earlier in this process" in second.choice.reason
    with Pipeline(bundle, backend="openvino", environment=env) as named:  # a named backend is never second-guessed
        assert named.choice.kind != BackendKind.ORT_CPU and "ort-cpu" not in named.choice.reason
