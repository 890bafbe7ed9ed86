"""The accuracy gate for a bundle whose VAE graphs come from a distilled student: compare it with the full bundle.

    report = gate_student_bundle(reference, candidate, GateThresholds(), eval_scenes=32, eval_steps=4)
    report = gate_student_bundle(reference, candidate, GateThresholds(), data="frames/")     # the user's frames

The same gate and thresholds as INT8 calibration (:mod:`.gate`: depth delta1 drop, normal-error rise, mIoU drop,
whole image and object pixels), on perception maps, which is what a student decoder must get right:
- without ``data``: held-out shapes scenes with their exact ground truth, both bundles scored against it;
- with ``data`` (a folder, a video or ``demo:N``, e.g. the user's own camera frames: no ground truth needed): the
  full bundle's own maps are the truth, so it scores perfectly (delta1 1, 0 degrees, mIoU 1) and the student's
  bundle is scored by how closely it agrees with them. This is what a user exporting with public TAESD weights
  runs on the frames and the machine the bundle is for.
The report also times both bundles frame by frame (interleaved, same process), per stage. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from .gate import GateFailure, GateThresholds, check_gate
from .measures import EVAL_SEED, perception_metrics

#: Held-out scenes the gate scores by default (as INT8 calibration's gate).
DEFAULT_GATE_SCENES = 32
#: Frames read from ``data`` by default (agreement mode).
DEFAULT_GATE_FRAMES = 32
#: Interleaved frames timed per bundle for the report's speed section.
DEFAULT_SPEED_FRAMES = 10


class StudentGateError(RuntimeError):
    """The student's bundle lost too much accuracy against the full one; nothing was written."""

    def __init__(self, failures: Sequence[GateFailure], report: dict[str, Any]):
        self.failures = list(failures)
        self.report = report
        lines = "\n  ".join(f.describe().replace("->", "(full) ->") for f in self.failures)
        super().__init__(
            f"student VAE refused: perception accuracy dropped beyond the gate against the full VAE\n  {lines}\n"
            "nothing was written; distil longer or wider (mmgen-edge distill-vae), relax --max-drop, or --force"
        )


def agreement_metrics(reference: Any, candidate: Any) -> dict[str, float]:
    """Per-frame metrics of ``candidate``'s maps against ``reference``'s (two ``PerceptionResult``), read as truth."""
    from mmgen_edge.samples.shapes.evaluate import CONSISTENCY_DISPARITY_OFFSET
    from mmgen_edge.samples.shapes.metrics import depth_metrics, normal_metrics, segmentation_metrics

    out: dict[str, float] = {}
    depth = 1.0 / (reference.depth.astype(np.float64) + CONSISTENCY_DISPARITY_OFFSET)
    out.update({f"depth_{k}": v for k, v in depth_metrics(candidate.depth, depth).items()})
    out.update({f"normal_{k}": v for k, v in normal_metrics(candidate.normals, reference.normals).items()})
    out.update({f"seg_{k}": v for k, v in segmentation_metrics(candidate.segmentation.labels,
                                                               reference.segmentation.labels).items()})  # fmt: skip
    return out


def agreement(
    reference: Path, candidate: Path, images: Sequence[np.ndarray], steps: int, threads: int | None = None
) -> tuple[dict[str, float], dict[str, float]]:
    """(reference vs itself, candidate vs reference): mean agreement metrics on ``images``, same noise."""
    import mmgen_edge
    from mmgen_edge.samples.shapes.metrics import mean_metrics

    with mmgen_edge.load(reference, backend="ort-cpu", threads=threads, verify="size") as ref, \
            mmgen_edge.load(candidate, backend="ort-cpu", threads=threads, verify="size") as cand:  # fmt: skip
        pairs = [(ref.perceive(im, steps=steps, seed=EVAL_SEED), cand.perceive(im, steps=steps, seed=EVAL_SEED))
                 for im in images]  # fmt: skip
    itself = mean_metrics([agreement_metrics(r, r) for r, _ in pairs])
    return itself, mean_metrics([agreement_metrics(r, c) for r, c in pairs])


def stage_speed(
    reference: Path, candidate: Path, image: np.ndarray, steps: int, frames: int = DEFAULT_SPEED_FRAMES,
    threads: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Median milliseconds per stage and per frame of both bundles on ORT CPU, one frame at a time, interleaved
    (``samples.shapes.evaluate.compare_stage_times``)."""
    import mmgen_edge
    from mmgen_edge.samples.shapes.evaluate import compare_stage_times

    with mmgen_edge.load(reference, backend="ort-cpu", threads=threads, verify="size") as ref, \
            mmgen_edge.load(candidate, backend="ort-cpu", threads=threads, verify="size") as cand:  # fmt: skip
        times = compare_stage_times({"reference": ref, "candidate": cand}, image, steps, frames)
    return {**times, "threads": threads or 0, "speedup": times["speedup"]["candidate"]}


def gate_student_bundle(
    reference: Path,
    candidate: Path,
    thresholds: GateThresholds,
    eval_scenes: int = 32,
    eval_steps: int = 4,
    data: str | None = None,
    frames: int = DEFAULT_GATE_FRAMES,
    speed_frames: int = DEFAULT_SPEED_FRAMES,
    threads: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], list[GateFailure]]:
    """Score the student's bundle against the full one; returns (report, failures). Raises nothing on a failure:
    the caller decides (``StudentGateError`` unless forced).

    Args:
        reference: the bundle with the teacher's VAE graphs.
        candidate: the same bundle with one or both VAE graphs from the student.
        thresholds: the largest allowed worsening per metric (:class:`~.gate.GateThresholds`).
        eval_scenes / eval_steps: held-out shapes scenes scored against ground truth, and the sampler steps.
        data: score agreement with the reference on these frames instead (folder, video or ``demo:N``).
        frames: frames read from ``data``.
        speed_frames: frames timed per bundle (0: no speed section).
    """
    from mmgen_edge.runtime.manifest import read_manifest
    from mmgen_edge.samples.shapes.evaluate import held_out_scenes
    from mmgen_edge.sdk.images import to_model_size

    from .sources import iter_calibration_images

    say = log or (lambda message: None)
    resolution = read_manifest(reference, verify="none").model.resolution
    report: dict[str, Any] = {"eval_steps": eval_steps, "thresholds": asdict(thresholds)}
    if data is None:
        if eval_scenes < 1:
            raise ValueError(f"eval_scenes must be >= 1, got {eval_scenes}")
        say(f"gate: full vs student VAE on {eval_scenes} held-out scenes (ground truth, K={eval_steps})")
        scenes = held_out_scenes(eval_scenes, resolution)
        report.update(mode="ground truth", eval_scenes=eval_scenes)
        report["reference"] = perception_metrics(reference, scenes, eval_steps, threads, progress)
        report["candidate"] = perception_metrics(candidate, scenes, eval_steps, threads, progress)
        first = to_model_size(scenes[0].rgb, resolution)
    else:
        images = [to_model_size(im, resolution) for im in iter_calibration_images(data, frames, demo_size=resolution)]
        say(f"gate: student VAE vs the full VAE's own maps on {len(images)} frames of {data} (K={eval_steps})")
        report.update(mode="agreement with the full VAE", data=str(data), frames=len(images))
        report["reference"], report["candidate"] = agreement(reference, candidate, images, eval_steps, threads)
        first = images[0]
    failures = check_gate(report["reference"], report["candidate"], thresholds)
    report["failures"] = [{"metric": f.metric, "reference": f.fp32, "candidate": f.int8, "worsening": f.worsening,
                           "allowed": f.allowed, "description": f.describe()} for f in failures]  # fmt: skip
    report["passed"] = not failures
    if speed_frames > 0:
        say(f"gate: timing both bundles ({speed_frames} frames each, interleaved)")
        report["speed"] = stage_speed(reference, candidate, first, eval_steps, speed_frames, threads)
    return report, failures
