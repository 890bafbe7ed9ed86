"""Streaming perception: frame sources through ``perceive``, batched, with per-source accounting (no torch).

    from mmgen_edge.sdk.stream import stream_frames
    with stream_frames(model, [0, "clip.mp4"], tasks=("depth",)) as frames:
        for f in frames:                      # StreamFrame, in processing order
            show(f.source, f.frame_index, f.result.depth, f.latency)

Policy
------
- Each source is captured by its own daemon thread (:class:`~.frame_sources.FrameSource`; the latest-frame /
  no-drop capture policy, ``realtime`` and ``max_pending``, is described in :mod:`.frame_sources`). Drops are
  counted in ``stats.dropped``.
- Each round takes the next frame of every source that has one and runs ONE ``model.perceive([...])`` call
  on the batch; sources without a new frame are skipped that round. More sources than
  ``model.manifest.max_batch`` is a ``ValueError`` at start.
- Every call gets the same noise (drawn once from ``seed``): temporally stable outputs.
- The stream ends when every source is exhausted (files, iterators); cameras and URLs run until ``close()``.
- An exception in a capture thread is re-raised in the iterating thread as
  :class:`~.frame_sources.SourceError` naming the source (after the frames captured before it); the stream is
  closed first.

Accounting (per source): ``captured`` counts frames read and published by the capture thread, ``processed``
the frames given to ``model.perceive``, ``dropped`` the frames captured but never processed (replaced in the
latest-frame slot, or still waiting when the stream was closed), ``expected`` the frames a file announced; a
source that ends short of it adds a line to ``warnings`` (and logs it). Once the stream has ended or been closed,
``captured == processed + dropped`` exactly; while it runs, the difference is the (at most ``max_pending``)
frames waiting. ``frame_index`` is the capture counter of its source, so it increases strictly within a source
and drops show as gaps.

:func:`write_video` writes frames (e.g. colourised results) to an mp4 file (atomically: temporary file, then rename).
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from mmgen_edge.runtime.fileio import atomic_file
from mmgen_edge.runtime.modalities import PERCEPTION_TASKS

from .frame_sources import POLL_INTERVAL_S, CapturedFrame, FrameSource, SourceError, open_source
from .images import load_image
from .results import PerceptionResult

#: Default tasks of a stream.
DEFAULT_TASKS = PERCEPTION_TASKS
#: Highest frame rate :func:`write_video` records (high-speed cameras reach ~1000; beyond, containers' time bases
#: overflow).
MAX_VIDEO_FPS = 1000.0
#: Lowest frame rate :func:`write_video` records (OpenCV's mp4 writer opens from ~0.005 up; one frame in 100 s).
MIN_VIDEO_FPS = 0.01
#: Longest side of a frame :func:`write_video` writes (the mp4v encoder opens up to 8191; a multiple of 16 below).
MAX_VIDEO_SIDE = 8176
#: Codec of :func:`write_video`.
VIDEO_FOURCC = "mp4v"


@dataclass(frozen=True)
class StreamFrame:
    """One result of a stream."""

    source: int  # index of the source in the list given to stream_frames()
    frame_index: int  # index of this frame in its source (as captured): drops show as gaps
    captured_at: float  # time.monotonic() when the frame was captured
    finished_at: float  # time.monotonic() when its result was ready
    latency: float  # finished_at - captured_at (seconds)
    image: np.ndarray  # the RGB frame as captured (H, W, 3) uint8
    result: PerceptionResult


@dataclass
class StreamStats:
    """Per-source counters (see the module docstring for the exact relation).

    ``expected``: frames each source announced (a file's frame count; None for cameras, URLs, unsized
    iterables). ``warnings``: one line per source that ended before its expected count (also logged).
    """

    captured: list[int]
    processed: list[int]
    dropped: list[int]
    expected: list[int | None] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Manifest(Protocol):
    max_batch: int


class PerceptionModel(Protocol):
    """What a stream needs of a model (``MMGenModel`` and the served ``RemoteModel`` fit)."""

    manifest: _Manifest

    def latent_shape(self, n: int) -> tuple[int, ...]: ...

    def perceive(self, image: Any, **kwargs: Any) -> Any: ...



# ------------------------------------------------------------------------------------------------- Stream
class Stream:
    """Iterator of :class:`StreamFrame` over one or more sources; a context manager (``close()`` on exit)."""

    def __init__(
        self,
        model: PerceptionModel,
        sources: Sequence[FrameSource],
        noise: np.ndarray,
        perceive_kwargs: dict[str, Any],
        condition: threading.Condition,
    ):
        self._model = model
        self._sources = list(sources)
        self._noise = noise
        self._kwargs = perceive_kwargs
        self._cond = condition
        self._processed = [0] * len(self._sources)
        self._ready: collections.deque[StreamFrame] = collections.deque()
        self._closed = False

    @property
    def noise(self) -> np.ndarray:
        """The noise given to every ``perceive`` call."""
        return self._noise

    @property
    def stats(self) -> StreamStats:
        """A snapshot of the per-source counters."""
        with self._cond:
            counters = [s.counters_locked() for s in self._sources]
            return StreamStats(
                captured=[captured for captured, _ in counters],
                processed=list(self._processed),
                dropped=[dropped for _, dropped in counters],
                expected=[s.expected for s in self._sources],
                warnings=[w for w in (s.warning_locked() for s in self._sources) if w],
            )

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> StreamFrame:
        if self._closed:
            raise StopIteration
        if not self._ready:
            try:
                batch = self._next_batch()
                if batch is not None:
                    self._ready.extend(self._process(batch))
            except BaseException:
                self.close()
                raise
            if batch is None:
                self.close()
                raise StopIteration
        return self._ready.popleft()

    def _next_batch(self) -> list[tuple[int, CapturedFrame]] | None:
        """The next frame of every source that has one (waiting for at least one); None when all are exhausted."""
        with self._cond:
            while True:
                for i, source in enumerate(self._sources):
                    error = source.failed_locked()
                    if error is not None:
                        raise SourceError(source.name, error, source=i) from error
                taken = [(i, s.take_locked()) for i, s in enumerate(self._sources)]
                batch = [(i, frame) for i, frame in taken if frame is not None]
                if batch:
                    return batch
                if all(s.exhausted_locked() for s in self._sources):
                    return None
                self._cond.wait(POLL_INTERVAL_S)

    def _process(self, batch: list[tuple[int, CapturedFrame]]) -> list[StreamFrame]:
        """One ``perceive`` call on the batch -> its StreamFrames, in source order."""
        with self._cond:
            for i, _ in batch:
                self._processed[i] += 1
        results = self._model.perceive([frame.image for _, frame in batch], noise=self._noise, **self._kwargs)
        finished_at = time.monotonic()
        if len(results) != len(batch):
            raise RuntimeError(f"perceive returned {len(results)} results for a batch of {len(batch)}")
        return [
            StreamFrame(
                source=i,
                frame_index=frame.index,
                captured_at=frame.captured_at,
                finished_at=finished_at,
                latency=finished_at - frame.captured_at,
                image=frame.image,
                result=result,
            )
            for (i, frame), result in zip(batch, results)
        ]

    def close(self) -> None:
        """Stop the capture threads (joined with a timeout; they release their captures). Idempotent."""
        self._closed = True
        self._ready.clear()
        for source in self._sources:
            source.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_source_list(sources: object) -> list[object]:
    """A list/tuple is several sources, unless it holds frames ((H, W[, 3]) arrays): then it is one source."""
    if isinstance(sources, (list, tuple)):
        if sources and isinstance(sources[0], np.ndarray) and sources[0].ndim in (2, 3):
            return [sources]
        return list(sources)
    return [sources]


def _stream_noise(model: PerceptionModel, seed: int | None) -> np.ndarray:
    """One latent's noise, drawn once from ``seed``; ``perceive`` broadcasts it to every batch."""
    shape = tuple(model.latent_shape(1))[1:]
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _open_all(sources: list[object], realtime: bool | None, max_pending: int, condition: threading.Condition) -> list[FrameSource]:
    """Open every source; if one fails, close those already opened and re-raise."""
    opened: list[FrameSource] = []
    try:
        for source in sources:
            opened.append(open_source(source, realtime=realtime, max_pending=max_pending, condition=condition))
    except BaseException:
        for frame_source in opened:
            frame_source.close()
        raise
    return opened


def stream_frames(
    model: PerceptionModel,
    sources: object,
    tasks: Sequence[str] = DEFAULT_TASKS,
    steps: int | None = None,
    seed: int | None = 0,
    realtime: bool | None = None,
    max_pending: int = 1,
) -> Stream:
    """Run ``model.perceive`` on one source or a list of sources, batched; see the module docstring.

    ``realtime``: None picks per source (cameras/URLs True, files/iterators False); True/False applies to all.
    ``max_pending``: frames that may wait per source when not realtime (capture blocks beyond that).
    Raises ValueError if there are no sources or more than ``model.manifest.max_batch`` of them, and
    FileNotFoundError / ValueError naming a source that cannot be opened.
    """
    items = _as_source_list(sources)
    if not items:
        raise ValueError("no sources given")
    limit = model.manifest.max_batch
    if len(items) > limit:
        raise ValueError(f"{len(items)} sources but the model's max_batch is {limit}: a round runs one batch of at most one frame per source")
    if realtime is not None and not isinstance(realtime, bool):  # "no" would be truthy
        raise ValueError(f"realtime must be True, False or None, got {realtime!r}")
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
        raise ValueError(f"max_pending must be an integer >= 1, got {max_pending!r}")
    from mmgen_edge.runtime.sampler import check_steps

    from .api import check_seed, check_tasks  # here: api's model opens streams through this module

    # every argument is checked before a source opens: a camera is never left held by a refused call
    kwargs: dict[str, Any] = {"tasks": check_tasks(tasks), "steps": None if steps is None else check_steps(steps)}
    noise = _stream_noise(model, check_seed(seed))
    condition = threading.Condition()
    opened = _open_all(items, realtime, max_pending, condition)
    return Stream(model, opened, noise, kwargs, condition)


# -------------------------------------------------------------------------------------------- write_video
def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike[str], fps: float) -> int:
    """Write RGB frames (all the same size) to an mp4 (``mp4v``) file; returns the number of frames written.

    The video is written to a temporary file beside ``path`` and renamed onto it once complete
    (:func:`~mmgen_edge.runtime.fileio.atomic_file`): an error or interruption never leaves a half-written
    ``path``, and an existing ``path`` stays as it was.
    """
    if not (math.isfinite(fps) and MIN_VIDEO_FPS <= fps <= MAX_VIDEO_FPS):
        raise ValueError(f"fps must be a number in [{MIN_VIDEO_FPS:g}, {MAX_VIDEO_FPS:g}], got {fps!r}")
    writer: cv2.VideoWriter | None = None
    size: tuple[int, int] | None = None
    count = 0
    with atomic_file(path) as tmp:
        try:
            for frame in frames:
                image = load_image(frame, f"frame {count}", MAX_VIDEO_SIDE**2)
                if max(image.shape[:2]) > MAX_VIDEO_SIDE:
                    raise ValueError(
                        f"frame {count} is {image.shape[1]}x{image.shape[0]}: the {VIDEO_FOURCC} encoder takes sides "
                        f"up to {MAX_VIDEO_SIDE}; scale frames down first (fit_video_frames)"
                    )
                if writer is None:
                    size = (image.shape[1], image.shape[0])
                    writer = _open_writer(tmp, fps, size, shown=Path(path))
                elif (image.shape[1], image.shape[0]) != size:
                    raise ValueError(f"frame {count} is {image.shape[1]}x{image.shape[0]}, the video is {size[0]}x{size[1]}")
                writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                count += 1
        finally:
            if writer is not None:
                writer.release()
        if count == 0:
            raise ValueError(f"no frames to write to {path}")
    return count


def fit_video_frames(frames: Iterable[np.ndarray], max_side: int = MAX_VIDEO_SIDE) -> Iterator[np.ndarray]:
    """The frames on one canvas that :func:`write_video` can write: the first frame's size, scaled down to
    ``max_side`` if longer; every frame scaled into it with its aspect kept, centred on black (sources of several
    sizes, or input | maps tiles of a large camera, would otherwise end the video half-way or not start it)."""
    size: tuple[int, int] | None = None
    for count, given in enumerate(frames):
        frame = load_image(given, f"frame {count}", MAX_VIDEO_SIDE**2)  # RGB uint8, as write_video reads it
        height, width = frame.shape[:2]
        if size is None:
            shrink = min(1.0, max_side / max(width, height))
            size = (max(1, round(width * shrink)), max(1, round(height * shrink)))
        if (width, height) == size:
            yield frame
            continue
        scale = min(size[0] / width, size[1] / height)
        w, h = max(1, min(size[0], round(width * scale))), max(1, min(size[1], round(height * scale)))
        canvas = np.zeros((size[1], size[0], 3), np.uint8)
        x, y = (size[0] - w) // 2, (size[1] - h) // 2
        canvas[y : y + h, x : x + w] = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        yield canvas


def _open_writer(path: Path, fps: float, size: tuple[int, int], shown: Path) -> cv2.VideoWriter:
    """A VideoWriter on ``path`` (the temporary); errors name ``shown`` (the target)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), float(fps), size)
    if not writer.isOpened():
        raise ValueError(f"cannot write video {shown} ({VIDEO_FOURCC}, {size[0]}x{size[1]}, {fps} fps)")
    return writer


__all__ = [
    "PerceptionModel",
    "Stream",
    "StreamFrame",
    "StreamStats",
    "fit_video_frames",
    "stream_frames",
    "write_video",
]
