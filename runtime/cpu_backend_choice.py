"""Whether ``backend="auto"`` keeps OpenVINO on this CPU: one frame timed on OpenVINO and on ONNX Runtime.

:func:`.backend.choose_backend` prefers OpenVINO to ONNX Runtime on a CPU by its features (bf16 where native).
Measured on the demo bundle's K = 1 frame against ONNX Runtime FP32, that pays on a Xeon with AMX (1.99x) and on
an AMD EPYC with AVX512-BF16 (1.46x), and loses on a Xeon with AVX512-BF16 but no AMX (0.83-0.92x): the features
do not tell. So when ``auto`` picks OpenVINO and ONNX Runtime's CPU provider is there, both run a frame at the
bundle's optimisation-profile shapes (each runtime graph once, the step graph ``manifest.sampler.num_steps``
times), frames interleaved, and the faster backend is kept; the other's sessions are closed.

A frame that takes OpenVINO :data:`MEASURE_BELOW_S` or longer keeps OpenVINO without a comparison: timing a
release-size frame twice per load costs more than it can save, and OpenVINO's lead grew with the model size on
every CPU measured. A frame that OpenVINO fails (an op its CPU plugin compiles but cannot run) goes to ONNX Runtime
when ONNX Runtime's frame runs. The choice is kept for the process (same manifest file, CPUs and candidate: no second
measurement). An explicit backend (``"openvino"``, ``"ort-cpu"``, ...) is never second-guessed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from .backend import OPENVINO_PRECISIONS, BackendChoice, BackendKind
from .manifest import Manifest
from .onnxruntime_runner import profile_feeds
from .runner import Runner, deactivate_runners
from .thread_choice import available_cpus

#: An OpenVINO frame at least this long keeps OpenVINO without a comparison.
MEASURE_BELOW_S = 1.0
#: Untimed frames of each backend first (the first calls allocate and plan).
WARMUP_FRAMES = 1
#: Interleaved (OpenVINO, ONNX Runtime) pairs of timed frames.
TIMED_PAIRS = 5

#: (manifest path, mtime, size, CPUs, OpenVINO kind) -> (kind kept, what was measured, verdict): once per process.
_MEASURED: dict[tuple[object, ...], tuple[BackendKind, str, str]] = {}


def frame_call(manifest: Manifest, runners: Mapping[str, Runner]) -> Callable[[], None]:
    """One frame's graph calls at the optimisation-profile shapes: every runner once, the step graph K times."""
    feeds = {name: profile_feeds(runner.graph.inputs, manifest.dims) for name, runner in runners.items()}
    repeats = {name: manifest.sampler.num_steps if name == "denoiser_cached" else 1 for name in runners}

    def call() -> None:
        for name, runner in runners.items():
            for _ in range(repeats[name]):
                runner.infer(feeds[name])

    return call


def time_frames(
    call_openvino: Callable[[], None],
    call_ort: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[float, float | None]:
    """(OpenVINO's median frame in s, ONNX Runtime's or None when OpenVINO's frame is too long to compare)."""
    for _ in range(WARMUP_FRAMES):
        call_openvino()
    start = clock()
    call_openvino()
    first = clock() - start
    if first >= MEASURE_BELOW_S:
        return first, None
    for _ in range(WARMUP_FRAMES):
        call_ort()
    openvino, ort = [], []
    for _ in range(TIMED_PAIRS):
        start = clock()
        call_openvino()
        middle = clock()
        call_ort()
        openvino.append(middle - start)
        ort.append(clock() - middle)
    return statistics.median(openvino), statistics.median(ort)


def _key(bundle: Path, kind: BackendKind) -> tuple[object, ...]:
    stat = (bundle / "manifest.json").stat()
    return (str((bundle / "manifest.json").resolve()), stat.st_mtime_ns, stat.st_size, available_cpus(), kind)


#: Why ONNX Runtime was kept: OpenVINO's frame was slower, or failed.
SLOWER, FAILED = "slower on this CPU", "failed a frame"


def _decided(choice: BackendChoice, kept: BackendKind, measured: str, verdict: str = SLOWER) -> BackendChoice:
    if kept == choice.kind:
        return replace(choice, reason=f"{choice.reason}; {measured}")
    rejected = (*choice.rejected, f"{choice.kind.value}: {verdict} ({choice.reason})")
    why = "faster on this CPU" if verdict == SLOWER else f"runs the frame {choice.kind.value} failed"
    return BackendChoice(BackendKind.ORT_CPU, f"{why}: {measured}", rejected)


def remembered_choice(bundle: Path, choice: BackendChoice) -> BackendChoice | None:
    """The choice :func:`measured_cpu_choice` made for this bundle and candidate earlier in this process, or None."""
    remembered = _MEASURED.get(_key(bundle, choice.kind))
    if remembered is None:
        return None
    kept, measured, verdict = remembered
    return _decided(choice, kept, f"{measured} (measured earlier in this process)", verdict)


def measured_cpu_choice(
    bundle: Path,
    manifest: Manifest,
    choice: BackendChoice,
    openvino_runners: dict[str, Runner],
    open_ort_runners: Callable[[], dict[str, Runner]],
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[BackendChoice, dict[str, Runner]]:
    """Keep ``choice`` (an OpenVINO kind that ``auto`` picked) or switch to ONNX Runtime on CPU, by a timed frame.

    Args:
        bundle: the bundle folder (its manifest file keys the per-process memo, :func:`remembered_choice`).
        manifest: its manifest.
        choice: the rule-based choice; an OpenVINO kind.
        openvino_runners: the active runners of ``choice``.
        open_ort_runners: opens and activates the same graphs on ONNX Runtime's CPU provider.
        clock: seconds (a test clock may replace it).

    Returns:
        The choice kept (its reason says what was measured) and its active runners; the other backend's runners
        are deactivated. A frame that fails on OpenVINO and runs on ONNX Runtime switches to ONNX Runtime; any other
        failure keeps ``choice``, saying why.
    """
    if choice.kind not in OPENVINO_PRECISIONS:
        raise ValueError(f"only an OpenVINO choice is measured against ONNX Runtime, got {choice.kind.value}")
    ort_runners: dict[str, Runner] = {}

    def close(runners: Mapping[str, Runner]) -> None:
        deactivate_runners(runners.values())

    ort_call: list[Callable[[], None]] = []

    def call_ort() -> None:
        if not ort_call:  # opened only when OpenVINO's frame is short enough to compare
            ort_runners.update(open_ort_runners())
            ort_call.append(frame_call(manifest, ort_runners))
        ort_call[0]()

    openvino_failed: list[Exception] = []
    openvino_frame = frame_call(manifest, openvino_runners)

    def call_openvino() -> None:
        try:
            openvino_frame()
        except Exception as exc:
            openvino_failed.append(exc)
            raise

    try:
        openvino_s, ort_s = time_frames(call_openvino, call_ort, clock)
    except Exception as exc:  # noqa: BLE001  (a failed timing call must not fail the load)
        failure = f"{type(exc).__name__}: {exc}"
        if openvino_failed:  # OpenVINO cannot run the bundle's frame: ONNX Runtime takes it if it can
            try:
                call_ort()
            except Exception as ort_exc:  # noqa: BLE001  (neither runs: keep the rule's pick, its error will tell)
                close(ort_runners)
                return replace(choice, reason=f"{choice.reason}; its frame failed ({failure}), and so did "
                                              f"ort-cpu's ({type(ort_exc).__name__}: {ort_exc})"), openvino_runners
            _MEASURED[_key(bundle, choice.kind)] = (BackendKind.ORT_CPU, failure, FAILED)
            close(openvino_runners)
            return _decided(choice, BackendKind.ORT_CPU, failure, FAILED), ort_runners
        close(ort_runners)
        return replace(choice, reason=f"{choice.reason}; not compared with ort-cpu ({failure})"), openvino_runners
    name = choice.kind.value
    if ort_s is None:
        kept, measured = choice.kind, f"a {openvino_s * 1e3:.0f} ms frame on {name}: kept without comparing ort-cpu"
    else:
        kept = choice.kind if openvino_s < ort_s else BackendKind.ORT_CPU
        measured = f"measured a frame at {openvino_s * 1e3:.1f} ms on {name}, {ort_s * 1e3:.1f} ms on ort-cpu"
    _MEASURED[_key(bundle, choice.kind)] = (kept, measured, SLOWER)
    if kept == choice.kind:
        close(ort_runners)
        return _decided(choice, kept, measured), openvino_runners
    close(openvino_runners)
    return _decided(choice, kept, measured), ort_runners
