"""How a CPU session's thread count is chosen when the caller gives none (runtime.thread_choice)."""

from __future__ import annotations

import numpy as np
import pytest

from mmgen_edge.runtime import onnxruntime_runner, thread_choice
from mmgen_edge.runtime.manifest import DimRange, TensorSpec, read_manifest
from mmgen_edge.runtime.onnxruntime_runner import OnnxRuntimeRunner, profile_feeds
from mmgen_edge.runtime.thread_choice import MEASURE_BELOW_S, MIN_GAIN, choose_threads


class FakeClock:
    """A clock that the fake calls advance by their own durations."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def call(self, seconds: float):
        def run() -> None:
            self.now += seconds

        return run


def test_a_short_call_keeps_one_thread_only_when_it_is_measured_faster():
    clock = FakeClock()
    made = []

    def one_thread(seconds: float):
        def make():
            made.append(seconds)
            return clock.call(seconds)

        return make

    choice = choose_threads(clock.call(0.0030), one_thread(0.0020), cpus=2, clock=clock)
    assert choice.threads == 1
    assert choice.default_ms == pytest.approx(3.0) and choice.one_thread_ms == pytest.approx(2.0)
    assert "2.00 ms on one thread" in choice.describe()

    # one thread faster, but by less than MIN_GAIN: the default stays
    almost = 0.0030 / (1 + MIN_GAIN / 2)
    choice = choose_threads(clock.call(0.0030), one_thread(almost), cpus=2, clock=clock)
    assert choice.threads is None and choice.one_thread_ms == pytest.approx(almost * 1e3)
    # one thread slower: the default stays
    choice = choose_threads(clock.call(0.0020), one_thread(0.0030), cpus=2, clock=clock)
    assert choice.threads is None
    assert made == [0.0020, almost, 0.0030]  # each compared call made its one-thread session once


def test_a_long_call_or_a_single_cpu_is_not_compared():
    clock = FakeClock()

    def never():
        raise AssertionError("a one-thread session was made")

    choice = choose_threads(clock.call(MEASURE_BELOW_S * 2), never, cpus=8, clock=clock)  # never: no session made
    assert choice.threads is None and "threads pay" in choice.reason
    assert choice.default_ms == pytest.approx(MEASURE_BELOW_S * 2e3)
    start = clock.now
    choice = choose_threads(clock.call(0.001), never, cpus=1, clock=clock)
    assert choice.threads is None and clock.now == start  # nothing timed


def test_profile_feeds_take_the_opt_shapes_and_dtypes():
    specs = (TensorSpec(name="x", dtype="float32", shape=("N", 4)), TensorSpec(name="y", dtype="int64", shape=("B",)),
             TensorSpec(name="s", dtype="float32", shape=(1,)), TensorSpec(name="v", dtype="float16", shape=("W", 2)))  # fmt: skip
    feeds = profile_feeds(specs, {"N": DimRange(min=1, opt=3, max=8), "B": DimRange(min=2, opt=6, max=16)})
    assert {k: (v.shape, v.dtype.name) for k, v in feeds.items()} == {
        "x": ((3, 4), "float32"), "y": ((6,), "int64"), "s": ((1,), "float32"), "v": ((1, 2), "float16")}
    assert np.all(feeds["x"] == 0.5) and np.all(feeds["y"] == 0)


@pytest.fixture()
def fresh_choices(monkeypatch):
    monkeypatch.setattr(onnxruntime_runner, "_THREAD_CHOICES", {})
    monkeypatch.setattr(onnxruntime_runner, "available_cpus", lambda: 2)


def _runner(bundle, name: str, threads: int | None = None) -> OnnxRuntimeRunner:
    manifest = read_manifest(bundle, verify="none")
    return OnnxRuntimeRunner(bundle, name, manifest.graphs[name], manifest.dims, threads=threads)


@pytest.mark.parametrize("winner", [1, None])
def test_the_runner_runs_the_measured_choice_and_measures_once_per_process(runtime_bundle, fresh_choices, monkeypatch, winner):
    measured = []

    def fake_choose(call_default, make_one_thread, cpus, clock=None):
        call_default()  # the session is live and takes the profile feeds
        call = make_one_thread()
        call()
        measured.append(cpus)
        return thread_choice.ThreadChoice(winner, "test")

    monkeypatch.setattr(onnxruntime_runner, "choose_threads", fake_choose)
    for _ in range(2):  # the second activation reuses the first one's choice
        with _runner(runtime_bundle, "conditioning") as runner:
            assert runner.thread_choice.threads == winner
            threads = runner.session.get_session_options().intra_op_num_threads
            assert threads == (1 if winner == 1 else 0)  # 0: ONNX Runtime's default
    assert measured == [2]


def test_an_explicit_thread_count_is_never_second_guessed(runtime_bundle, fresh_choices, monkeypatch):
    monkeypatch.setattr(onnxruntime_runner, "choose_threads", lambda *a, **k: pytest.fail("measured"))
    with _runner(runtime_bundle, "conditioning", threads=2) as runner:
        assert runner.thread_choice is None
        assert runner.session.get_session_options().intra_op_num_threads == 2


def test_the_real_choice_on_a_bundle_graph(runtime_bundle, fresh_choices):
    with _runner(runtime_bundle, "denoiser_cached") as runner:
        choice = runner.thread_choice
        assert choice is not None and choice.threads in (None, 1)
        assert choice.default_ms is not None and choice.default_ms > 0
        threads = runner.session.get_session_options().intra_op_num_threads
        assert threads == (1 if choice.threads == 1 else 0)
        feeds = profile_feeds(runner.graph.inputs, runner.dims)
        assert set(runner.infer(feeds)) == {spec.name for spec in runner.graph.outputs}


def test_a_graph_that_refuses_the_timing_feeds_still_loads_on_the_default_threads(runtime_bundle, fresh_choices, monkeypatch):
    def failing(call_default, make_one_thread, cpus, clock=None):
        raise RuntimeError("the graph refuses 0.5")

    monkeypatch.setattr(onnxruntime_runner, "choose_threads", failing)
    with _runner(runtime_bundle, "conditioning") as runner:
        assert runner.thread_choice.threads is None and "not timed" in runner.thread_choice.reason
        assert runner.session.get_session_options().intra_op_num_threads == 0
