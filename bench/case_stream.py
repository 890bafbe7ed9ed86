"""The stream case: a video of held-out scenes streamed by the fp32 bundle with ``realtime=False``; frames/s
against 1 / the median single-frame latency at the same K, measured right before and after the stream."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .artifacts import FP32
from .case_perceive import PERCEIVE_TASKS, timed_perceive
from .context import Context
from .inputs import scene_images
from .outcomes import skipped

STREAM_VIDEO_FPS = 30.0
STREAM_MAX_PENDING = 2


def write_stream_video(path: Path, frames: int, size: int) -> int:
    """Write ``frames`` held-out scenes as a video at ``path``; returns the frames written."""
    from mmgen_edge.sdk.stream import write_video

    return write_video(scene_images(frames, size), path, STREAM_VIDEO_FPS)


def bench_stream_k(ctx: Context, label: str, video: Path, k: int, image: np.ndarray) -> dict[str, Any]:
    """Frames/s of ``model.stream`` (realtime=False) vs 1 / single-frame latency measured before and after it."""
    model = ctx.models[label]
    before, _ = timed_perceive(ctx, model, [image], k)
    start = time.perf_counter()
    with model.stream(str(video), tasks=PERCEIVE_TASKS, steps=k, realtime=False, max_pending=STREAM_MAX_PENDING) as frames:
        latencies = [frame.latency for frame in frames]
        stats = frames.stats
    elapsed = time.perf_counter() - start
    after, _ = timed_perceive(ctx, model, [image], k)
    latency_ms = (before.median_ms + after.median_ms) / 2
    fps = len(latencies) / elapsed
    inverse_latency_fps = 1e3 / latency_ms
    return {
        "frames": len(latencies),
        "seconds": elapsed,
        "frames_per_s": fps,
        "single_frame_latency_ms": {"before": before.as_dict(), "after": after.as_dict(), "used": latency_ms},
        "inverse_latency_fps": inverse_latency_fps,
        "stream_throughput_vs_inverse_latency": fps / inverse_latency_fps,
        "frame_latency_ms_median": float(np.median(latencies) * 1e3) if latencies else None,
        "stats": {"captured": stats.captured, "processed": stats.processed, "dropped": stats.dropped},
    }


def bench_stream(ctx: Context, workdir: Path) -> dict[str, Any]:
    """The stream case: a ``--stream-frames`` video written into ``workdir``, streamed at every K."""
    if FP32 not in ctx.models:
        return skipped("no fp32 bundle open")
    model = ctx.models[FP32]
    video = workdir / "stream.mp4"
    count = write_stream_video(video, ctx.settings.stream_frames, model.resolution)
    image = scene_images(1, model.resolution)[0]
    out: dict[str, Any] = {"bundle": FP32, "video": {"frames": count, "size": model.resolution, "fps": STREAM_VIDEO_FPS}}
    for k in ctx.settings.steps:
        out[f"K{k}"] = ctx.attempt(f"stream K{k}", lambda k=k: bench_stream_k(ctx, FP32, video, k, image))
    return out

