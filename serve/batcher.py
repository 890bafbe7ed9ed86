"""A small in-process batcher: items submitted one at a time from many threads, run in batches.

``mmgen-edge serve`` gives Triton's client-facing models ``max_batch_size`` 1, so each Triton ``execute`` holds
exactly one request and a refused request fails its own execute (the only way Triton's Python backend counts a
failure). The requests those executes accept meet here instead of in Triton's dynamic batcher: each front
``execute`` submits its one checked request and blocks on its own result, while one worker thread per runner
(one per loaded model copy) takes the queue in arrival order, waits for more requests up to ``max_delay_s`` after
the oldest one (or until ``max_batch`` are waiting), runs them as one call and hands each submitter its own
result. Torch-free and Triton-free: tested on its own.

    batcher = Batcher("perceive", [run_on_copy_0, run_on_copy_1], max_batch=8, max_delay_s=0.002)
    result = batcher.run(item)                 # from any thread; blocks until its batch has run
    batcher.close()                            # fails what is still queued; waits for running batches

A runner takes a list of items and returns one result per item, in order. If it raises, or returns the wrong
number of results, every item of that batch gets the error (``Future.exception``); the worker keeps serving.
Nothing is lost or reordered: results are matched to items by position, and batches leave the queue in order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

LOG = logging.getLogger("mmgen_edge.serve")

T = TypeVar("T")
R = TypeVar("R")
Runner = Callable[[list[T]], Sequence[R]]

#: The most front instances (concurrent submitters) per served model by default. Each is a Triton Python stub process
#: (~24 MB PSS under ``serve``) and adds ~1.5-2 s to stopping Triton, which unloads a model's instances one by one.
DEFAULT_FRONT_INSTANCES = 4

#: How long ``close()`` waits for each worker to finish the batch it is running before leaving it (a daemon thread).
CLOSE_TIMEOUT_S = 30.0


def default_front_instances(max_batch: int, copies: int) -> int:
    """How many front instances (each submits one request at a time) it takes to fill an engine batch of
    ``max_batch`` on each of ``copies`` loaded models, at most :data:`DEFAULT_FRONT_INSTANCES`."""
    return max(1, min(max_batch * copies, DEFAULT_FRONT_INSTANCES))


class BatcherClosed(RuntimeError):
    """The batcher was closed: the item was refused, or dropped from the queue before it ran."""


@dataclass
class _Pending(Generic[T, R]):
    item: T
    arrived: float  # time.monotonic() when submitted
    future: Future[R] = field(default_factory=Future)


class Batcher(Generic[T, R]):
    """Items in from any thread, batches of at most ``max_batch`` out to one worker thread per runner.

    Args:
        name: for thread names, log lines and errors.
        runners: one callable per worker (e.g. one per loaded model copy); each runs one batch at a time.
        max_batch: the most items in one batch (>= 1).
        max_delay_s: how long a batch may wait for more items after its oldest one arrived (>= 0).

    Raises:
        ValueError: no runners, ``max_batch`` < 1 or ``max_delay_s`` negative or not finite.
    """

    def __init__(
        self,
        name: str,
        runners: Sequence[Runner[T, R]],
        max_batch: int,
        max_delay_s: float,
    ):
        if not runners:
            raise ValueError(f"batcher {name}: give at least one runner")
        if max_batch < 1:
            raise ValueError(f"batcher {name}: max_batch must be >= 1, got {max_batch}")
        if not 0 <= max_delay_s < float("inf"):
            raise ValueError(f"batcher {name}: max_delay_s must be a finite number >= 0, got {max_delay_s}")
        self.name = name
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self._queue: deque[_Pending[T, R]] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._workers = [
            threading.Thread(target=self._work, args=(run,), name=f"mmgen-batcher-{name}-{i}", daemon=True)
            for i, run in enumerate(runners)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, item: T) -> Future[R]:
        """Queue ``item``; its future gets its own result (or its batch's error). BatcherClosed once closed."""
        pending: _Pending[T, R] = _Pending(item, time.monotonic())
        with self._changed:
            if self._closed:
                raise BatcherClosed(f"batcher {self.name} is closed (the server is stopping)")
            self._queue.append(pending)
            self._changed.notify_all()
        return pending.future

    def run(self, item: T) -> R:
        """Submit ``item`` and wait for its result (raises its batch's error)."""
        return self.submit(item).result()

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Refuse new items, fail the queued ones (BatcherClosed), let running batches finish. Safe to call twice."""
        with self._changed:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._changed.notify_all()
        for pending in dropped:
            if pending.future.set_running_or_notify_cancel():
                pending.future.set_exception(BatcherClosed(f"batcher {self.name} closed before this request ran"))
        for worker in self._workers:
            if worker is not threading.current_thread():
                worker.join(timeout_s)
                if worker.is_alive():
                    LOG.warning("batcher %s: %s still runs a batch after %.0f s; leaving it", self.name, worker.name, timeout_s)

    def __enter__(self) -> "Batcher[T, R]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------------ workers
    def _next_batch(self) -> list[_Pending[T, R]] | None:
        """Wait for a batch: the oldest items, once ``max_batch`` wait or the oldest has waited ``max_delay_s``.
        None once closed."""
        with self._changed:
            while True:
                if self._closed:
                    return None
                if self._queue:
                    wait = self._queue[0].arrived + self.max_delay_s - time.monotonic()
                    if len(self._queue) >= self.max_batch or wait <= 0:
                        return [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
                    self._changed.wait(wait)
                else:
                    self._changed.wait()

    def _work(self, run: Runner[T, R]) -> None:
        while (taken := self._next_batch()) is not None:
            batch = [pending for pending in taken if pending.future.set_running_or_notify_cancel()]  # not cancelled
            if not batch:
                continue
            try:
                results = list(run([pending.item for pending in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"batcher {self.name}: the runner returned {len(results)} results for {len(batch)} items")
            except BaseException as e:  # noqa: BLE001 - every item of the batch gets it; the worker keeps serving
                LOG.debug("batcher %s: a batch of %d failed: %s", self.name, len(batch), e)
                for pending in batch:
                    pending.future.set_exception(e)
                continue
            for pending, result in zip(batch, results):
                pending.future.set_result(result)
