"""How many intra-op threads an ONNX Runtime CPU session gets when the caller does not say (``threads=None``).

A second thread pays on a large graph and costs on a small one. ONNX Runtime wakes its idle threads for every
parallel section (our CPU sessions do not spin between calls: see :mod:`.onnxruntime_runner`), and a call made of
hundreds of microsecond-sized nodes pays that wake-up hundreds of times. Measured on 2 cores, the demo's denoiser
step at batch 1: FP32 3.1 ms on one thread and 3.2 ms on two; the INT8 CPU form 1.8 ms on one and 2.5 ms on two.

So when no thread count is given, a CPU session whose call is short (under :data:`MEASURE_BELOW_S` at ONNX
Runtime's default, one thread per core) is timed against a one-thread session, calls interleaved at the bundle's
optimisation-profile shapes, and the one thread is kept only when it is at least :data:`MIN_GAIN` faster. A long
call keeps the default without more timing (threads pay there, and timing it would slow the load). The choice is
kept for the process (same file, shapes and CPUs: no second measurement); an explicit ``threads=`` skips all this.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

#: A call at least this long on the default threads keeps them without a comparison.
MEASURE_BELOW_S = 0.02
#: Warm-up calls of each session before timing (the first ORT calls allocate and plan).
WARMUP_CALLS = 2
#: Interleaved (default, one-thread) pairs of timed calls.
TIMED_PAIRS = 9
#: One thread must save at least this fraction of the call (median of the pair ratios) to be chosen.
MIN_GAIN = 0.05


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadChoice:
    """The thread count a CPU session runs with and why: ``threads`` None is ONNX Runtime's default."""

    threads: int | None
    reason: str
    default_ms: float | None = None  # median call on the default threads (when timed)
    one_thread_ms: float | None = None  # median call on one thread (when compared)

    def describe(self) -> str:
        count = "ONNX Runtime's default threads" if self.threads is None else f"{self.threads} thread(s)"
        return f"{count} ({self.reason})"


def choose_threads(
    call_default: Callable[[], object],
    make_one_thread: Callable[[], Callable[[], object]],
    cpus: int,
    clock: Callable[[], float] = time.perf_counter,
) -> ThreadChoice:
    """Time the default session's call and, when it is short, a one-thread session's; keep the faster.

    Args:
        call_default: one call of the session on ONNX Runtime's default threads.
        make_one_thread: creates the one-thread session and returns its call (only called when compared).
        cpus: CPUs available (:func:`available_cpus`); with one there is nothing to choose.
        clock: seconds (a test clock may replace it).
    Returns:
        The choice (the caller keeps the one-thread session it made only when ``choice.threads == 1``).
    """
    if cpus <= 1:
        return ThreadChoice(None, "one CPU available")
    for _ in range(WARMUP_CALLS):
        call_default()
    first = []
    for _ in range(3):
        start = clock()
        call_default()
        first.append(clock() - start)
    default_s = statistics.median(first)
    if default_s >= MEASURE_BELOW_S:
        return ThreadChoice(None, f"a {default_s * 1e3:.1f} ms call: threads pay", default_s * 1e3)
    call_one = make_one_thread()
    for _ in range(WARMUP_CALLS):
        call_one()
    ratios, default_times, one_times = [], [], []
    for _ in range(TIMED_PAIRS):
        start = clock()
        call_default()
        middle = clock()
        call_one()
        end = clock()
        default_times.append(middle - start)
        one_times.append(end - middle)
        ratios.append((middle - start) / max(end - middle, 1e-9))
    default_ms = statistics.median(default_times) * 1e3
    one_ms = statistics.median(one_times) * 1e3
    measured = f"measured {one_ms:.2f} ms on one thread, {default_ms:.2f} ms on the default"
    threads = 1 if statistics.median(ratios) >= 1.0 + MIN_GAIN else None
    return ThreadChoice(threads, measured, default_ms, one_ms)
