"""The serving batcher (``serve/batcher.py``) on its own: no Triton, no model.

Timing is never asserted: a batch is made to wait by a runner blocked on an event, and ``HANG_S`` only turns a
hang (a lost result) into a failure instead of a stuck test run.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, ThreadPoolExecutor

import pytest

from mmgen_edge.serve.batcher import Batcher, BatcherClosed

HANG_S = 30.0  # a guard against hangs, never a performance bound
FOREVER_S = 3600.0  # a delay no test waits out


class Recorder:
    """A runner that records its batches, answers ``item * 10`` per item, and can be held at a gate."""

    def __init__(self, hold: bool = False):
        self.batches: list[list[int]] = []
        self.started = threading.Event()  # set when a batch starts
        self.gate = threading.Event()  # a held runner waits here
        if not hold:
            self.gate.set()
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self.batches.append(list(items))
        self.started.set()
        assert self.gate.wait(HANG_S), "the test never opened the gate"
        return [item * 10 for item in items]


def test_items_from_many_threads_each_get_their_own_result_none_lost():
    run = Recorder()
    with Batcher("t", [run], max_batch=4, max_delay_s=0.005) as batcher:
        with ThreadPoolExecutor(8) as pool:
            futures = {item: pool.submit(batcher.run, item) for item in range(64)}
            results = {item: f.result(timeout=HANG_S) for item, f in futures.items()}
    assert results == {item: item * 10 for item in range(64)}
    ran = sorted(item for batch in run.batches for item in batch)
    assert ran == list(range(64)), "an item was lost or ran twice"
    assert all(1 <= len(batch) <= 4 for batch in run.batches)


def test_queued_items_become_one_batch_in_arrival_order_up_to_max_batch():
    run = Recorder(hold=True)
    with Batcher("t", [run], max_batch=4, max_delay_s=0.0) as batcher:
        first = batcher.submit(0)
        assert run.started.wait(HANG_S)  # the worker holds [0]; the next items queue up meanwhile
        later = [batcher.submit(item) for item in range(1, 7)]
        run.gate.set()
        assert [f.result(timeout=HANG_S) for f in (first, *later)] == [item * 10 for item in range(7)]
    assert run.batches == [[0], [1, 2, 3, 4], [5, 6]]


def test_a_full_batch_runs_at_once_and_a_lone_item_after_the_delay():
    full = Recorder()
    with Batcher("full", [full], max_batch=3, max_delay_s=FOREVER_S) as batcher:
        futures = [batcher.submit(item) for item in (1, 2, 3)]  # a full batch does not wait for the delay
        assert [f.result(timeout=HANG_S) for f in futures] == [10, 20, 30]
    assert full.batches == [[1, 2, 3]]
    lone = Recorder()
    with Batcher("lone", [lone], max_batch=8, max_delay_s=0.01) as batcher:
        assert batcher.submit(5).result(timeout=HANG_S) == 50  # nobody else comes: it runs alone once the delay is up
    assert lone.batches == [[5]]


def test_a_failing_batch_fails_each_of_its_items_and_the_worker_goes_on():
    def run(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("engine failed on 13")
        return [item + 1 for item in items]

    with Batcher("t", [run], max_batch=2, max_delay_s=FOREVER_S) as batcher:
        failed = [batcher.submit(1), batcher.submit(13)]
        for future in failed:
            with pytest.raises(ValueError, match="engine failed on 13"):
                future.result(timeout=HANG_S)
        served = [batcher.submit(2), batcher.submit(3)]
        assert [f.result(timeout=HANG_S) for f in served] == [3, 4]


def test_a_runner_returning_the_wrong_number_of_results_fails_its_batch():
    with Batcher("short", [lambda items: items[:-1]], max_batch=2, max_delay_s=FOREVER_S) as batcher:
        futures = [batcher.submit(1), batcher.submit(2)]
        for future in futures:
            with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
                future.result(timeout=HANG_S)


def test_each_runner_has_its_own_worker():
    both = threading.Barrier(2, timeout=HANG_S)  # broken (an error) unless two batches run at the same time

    def run(items: list[int]) -> list[int]:
        both.wait()
        return items

    with Batcher("t", [run, run], max_batch=1, max_delay_s=0.0) as batcher:
        futures = [batcher.submit(1), batcher.submit(2)]
        assert [f.result(timeout=HANG_S) for f in futures] == [1, 2]


def test_close_fails_queued_items_lets_the_running_batch_finish_and_refuses_new_ones():
    run = Recorder(hold=True)
    batcher = Batcher("t", [run], max_batch=1, max_delay_s=0.0)
    running = batcher.submit(1)
    assert run.started.wait(HANG_S)
    queued = batcher.submit(2)
    closer = threading.Thread(target=batcher.close)
    closer.start()  # waits for the running batch
    with pytest.raises(BatcherClosed, match="closed before this request ran"):
        queued.result(timeout=HANG_S)
    with pytest.raises(BatcherClosed, match="is closed"):
        batcher.submit(3)
    run.gate.set()
    assert running.result(timeout=HANG_S) == 10
    closer.join(HANG_S)
    assert not closer.is_alive()
    assert run.batches == [[1]]
    batcher.close()  # twice is fine


def test_an_idle_batcher_closes_and_a_cancelled_item_never_runs():
    run = Recorder(hold=True)
    batcher = Batcher("t", [run], max_batch=4, max_delay_s=0.0)
    batcher.submit(1)
    assert run.started.wait(HANG_S)
    cancelled = batcher.submit(2)
    assert cancelled.cancel()
    kept = batcher.submit(3)
    run.gate.set()
    assert kept.result(timeout=HANG_S) == 30
    with pytest.raises(CancelledError):
        cancelled.result(timeout=HANG_S)
    assert run.batches == [[1], [3]]
    batcher.close(timeout_s=HANG_S)
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("mmgen-batcher-t-"))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="at least one runner"):
        Batcher("t", [], max_batch=1, max_delay_s=0.0)
    with pytest.raises(ValueError, match="max_batch must be >= 1, got 0"):
        Batcher("t", [lambda items: items], max_batch=0, max_delay_s=0.0)
    for delay in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="max_delay_s must be a finite number >= 0"):
            Batcher("t", [lambda items: items], max_batch=1, max_delay_s=delay)


def test_the_batch_of_a_model_copy_runs_as_the_engine_batches_its_requests_can_share(tiny_bundle):
    """What ``serve`` does with accepted requests: one batcher batch through ``RequestHandler.run`` on the tiny model
    runs requests with the same tasks and steps as one engine batch, and each request gets its own result."""
    import numpy as np

    import mmgen_edge
    from mmgen_edge.sdk.protocol import IMAGE_OUTPUTS, PERCEIVE_MODEL, text
    from mmgen_edge.serve.handlers import RequestHandler

    with mmgen_edge.load(tiny_bundle, backend="ort-cpu", threads=1) as model:
        handler = RequestHandler(model)
        r = model.resolution
        images = np.random.default_rng(0).integers(0, 256, (4, r, r, 3), dtype=np.uint8)
        tasks = ["depth", "depth,normals", "depth", "depth,normals"]
        requests = [
            {"image": images[i][None], "tasks": text(tasks[i]), "seed": np.array([[i]], np.int64), "steps": np.array([[2]], np.int32)}
            for i in range(4)
        ]  # fmt: skip
        items = [handler.check(PERCEIVE_MODEL, request) for request in requests]
        with Batcher("perceive", [lambda batch: handler.run(PERCEIVE_MODEL, batch)], max_batch=4, max_delay_s=FOREVER_S) as batcher:
            futures = [batcher.submit(item) for item in items]
            responses = [f.result(timeout=HANG_S) for f in futures]
        assert dict(handler.batch_sizes) == {2: 2}  # one batcher batch of 4, two engine batches of 2 (by tasks)
        for i, response in enumerate(responses):
            noise = np.random.default_rng(i).standard_normal(model.latent_shape(1), dtype=np.float32)
            alone = model.perceive_model_images(images[i][None], tasks[i].split(","), 2, noise)
            np.testing.assert_allclose(response["latents"], alone.latents, atol=1e-4)
            assert {k for k in response if k.startswith("image_")} == {IMAGE_OUTPUTS[m] for m in alone.images[0]}
            for modality, want in alone.images[0].items():
                assert np.abs(response[IMAGE_OUTPUTS[modality]][0].astype(int) - want).max() <= 1, modality
