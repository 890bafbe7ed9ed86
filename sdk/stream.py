"""Streaming perception: cameras, video files, URLs and frame iterators through ``perceive`` (no torch).

    from mmgen_edge.sdk.stream import stream_frames
    with stream_frames(model, [0, "clip.mp4"], tasks=("depth",)) as frames:
        for f in frames:                      # StreamFrame, in processing order
            show(f.source, f.frame_index, f.result.depth, f.latency)

Policy
------
- Each source is captured by its own daemon thread (:class:`FrameSource`).
- ``realtime=True`` (default for cameras and URLs): LATEST-FRAME policy. A source holds at most one frame; a
  frame replaced by a newer one before the consumer took it is *dropped* (counted in ``stats.dropped``), so a
  slow consumer always gets a fresh frame and never a backlog. A video file read in realtime mode is paced at
  its own frame rate, like a camera.
- ``realtime=False`` (default for files and iterators): nothing is dropped; the capture thread blocks once
  ``max_pending`` frames wait, so every frame comes out, in order.
- Each round takes the next frame of every source that has one and runs ONE ``model.perceive([...])`` call
  on the batch; sources without a new frame are skipped that round. More sources than
  ``model.manifest.max_batch`` is a ``ValueError`` at start.
- Every call gets the same noise (drawn once from ``seed``): temporally stable outputs.
- The stream ends when every source is exhausted (files, iterators); cameras and URLs run until ``close()``.
- An exception in a capture thread is re-raised in the iterating thread as :class:`SourceError` naming the
  source (after the frames captured before it); the stream is closed first.

Accounting (per source): ``captured`` counts frames read and published by the capture thread, ``processed``
the frames given to ``model.perceive``, ``dropped`` the frames captured but never processed (replaced in the
latest-frame slot, or still waiting when the stream was closed). Once the stream has ended or been closed,
``captured == processed + dropped`` exactly; while it runs, the difference is the (at most ``max_pending``)
frames waiting. ``frame_index`` is the capture counter of its source, so it increases strictly within a source
and drops show as gaps.
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from mmgen_edge.runtime.modalities import PERCEPTION_TASKS

from .images import load_image
from .results import PerceptionResult

#: URL schemes opened with ``cv2.VideoCapture(url)`` (live sources: realtime by default).
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
#: Default tasks of a stream.
DEFAULT_TASKS = PERCEPTION_TASKS
#: How long the consumer / a blocked capture thread sleeps between checks (notifications wake them sooner).
POLL_INTERVAL_S = 0.05
#: How long ``close()`` waits for each capture thread.
JOIN_TIMEOUT_S = 2.0
#: Consecutive failed reads of a camera / URL before the capture thread raises.
MAX_LIVE_READ_FAILURES = 5
#: Pause between failed reads of a camera / URL.
LIVE_RETRY_DELAY_S = 0.05
#: Codec of :func:`write_video`.
VIDEO_FOURCC = "mp4v"


class SourceError(RuntimeError):
    """A capture thread failed; ``source`` is the index in the stream (None for a standalone FrameSource)."""

    def __init__(self, name: str, error: BaseException, source: int | None = None):
        where = f"source {source} ({name})" if source is not None else f"source {name}"
        super().__init__(f"{where} failed: {type(error).__name__}: {error}")
        self.source = source
        self.name = name


@dataclass(frozen=True)
class CapturedFrame:
    """A frame as its capture thread read it."""

    index: int  # 0, 1, 2, ... in capture order within its source
    captured_at: float  # time.monotonic() when read
    image: np.ndarray  # (H, W, 3) uint8 RGB


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
    """Per-source counters (see the module docstring for the exact relation)."""

    captured: list[int]
    processed: list[int]
    dropped: list[int]


class _Manifest(Protocol):
    max_batch: int


class PerceptionModel(Protocol):
    """What a stream needs of a model (``MMGenModel`` and the served ``RemoteModel`` fit)."""

    manifest: _Manifest

    def latent_shape(self, n: int) -> tuple[int, ...]: ...

    def perceive(self, image: Any, **kwargs: Any) -> Any: ...


# ------------------------------------------------------------------------------------------------- readers
class _Reader(Protocol):
    def read(self) -> np.ndarray | None:
        """The next RGB frame, or None at the end."""

    def release(self) -> None: ...


class _CaptureReader:
    """Frames of a cv2.VideoCapture, BGR -> RGB. Live sources retry failed reads, files end on one."""

    def __init__(self, capture: cv2.VideoCapture, name: str, live: bool, pace_fps: float | None):
        self._capture = capture
        self._name = name
        self._live = live
        self._period = 1.0 / pace_fps if pace_fps else None
        self._next_due: float | None = None

    def read(self) -> np.ndarray | None:
        self._pace()
        for _ in range(MAX_LIVE_READ_FAILURES if self._live else 1):
            ok, bgr = self._capture.read()
            if ok and bgr is not None:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if self._live:
                time.sleep(LIVE_RETRY_DELAY_S)
        if self._live:
            raise RuntimeError(f"{self._name}: {MAX_LIVE_READ_FAILURES} reads in a row failed (disconnected?)")
        return None

    def _pace(self) -> None:
        """Sleep so a file read in realtime mode delivers frames at its own rate."""
        if self._period is None:
            return
        now = time.monotonic()
        if self._next_due is not None and self._next_due > now:
            time.sleep(self._next_due - now)
        self._next_due = max(now, self._next_due or now) + self._period

    def release(self) -> None:
        self._capture.release()


class _IteratorReader:
    """Frames of an iterable of RGB arrays (validated like ``perceive`` inputs, copied)."""

    def __init__(self, frames: Iterable[Any], name: str):
        self._frames: Iterator[Any] = iter(frames)
        self._name = name
        self._count = 0

    def read(self) -> np.ndarray | None:
        frame = next(self._frames, None)
        if frame is None:
            return None
        image = load_image(frame, f"{self._name} frame {self._count}")
        self._count += 1
        return np.array(image, copy=True)

    def release(self) -> None:
        """Nothing to release: the iterable belongs to the caller."""


def _redact(url: str) -> str:
    """The URL without its password (for error messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _is_url(source: object) -> bool:
    return isinstance(source, str) and source.lower().startswith(URL_SCHEMES)


def _is_live(source: object) -> bool:
    """Cameras and URLs are live (realtime by default); files and iterators are not."""
    return (isinstance(source, int) and not isinstance(source, bool)) or _is_url(source)


def _open_capture(target: int | str, name: str) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(target)
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"{name} could not be opened by OpenCV")
    return capture


def _open_reader(source: object, realtime: bool) -> tuple[_Reader, str]:
    """A reader for ``source`` and its display name; raises if it cannot be opened."""
    if isinstance(source, bool):
        raise ValueError(f"a source must be a camera index, a path, a URL or an iterable of frames, got {source!r}")
    if isinstance(source, int):
        name = f"camera {source}"
        capture = _open_capture(source, name)
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # best effort: fresh frames, not the driver's backlog
        return _CaptureReader(capture, name, live=True, pace_fps=None), name
    if _is_url(source):
        name = _redact(str(source))
        return _CaptureReader(_open_capture(str(source), name), name, live=True, pace_fps=None), name
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"video file {path} does not exist")
        capture = _open_capture(str(path), f"video file {path}")
        fps = capture.get(cv2.CAP_PROP_FPS)
        pace = fps if realtime and math.isfinite(fps) and fps > 0 else None
        return _CaptureReader(capture, name, live=False, pace_fps=pace), name
    if isinstance(source, np.ndarray) and source.ndim != 4:
        raise ValueError(f"an array source must be a stack of frames (N, H, W, 3), got shape {source.shape}")
    if isinstance(source, Iterable):
        name = f"iterator {type(source).__name__}"
        return _IteratorReader(source, name), name
    raise ValueError(f"a source must be a camera index, a path, a URL or an iterable of frames, got {type(source).__name__}")


# -------------------------------------------------------------------------------------------- FrameSource
class FrameSource:
    """Background capture of ONE source in a daemon thread (see the module docstring for the policy).

    ``condition`` may be shared by several sources so one consumer can wait on all of them. Use
    :func:`open_source` to create one; :meth:`read` takes frames, :meth:`close` stops the thread.
    """

    def __init__(
        self,
        reader: _Reader,
        name: str,
        realtime: bool,
        max_pending: int = 1,
        condition: threading.Condition | None = None,
    ):
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.name = name
        self.realtime = realtime
        self.max_pending = 1 if realtime else max_pending
        self._reader = reader
        self._cond = condition if condition is not None else threading.Condition()
        self._pending: collections.deque[CapturedFrame] = collections.deque()
        self._stop = threading.Event()
        self._finished = False
        self._error: BaseException | None = None
        self._captured = 0
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name=f"mmgen-edge capture: {name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- capture thread
    def _run(self) -> None:
        error: BaseException | None = None
        try:
            while not self._stop.is_set():
                image = self._reader.read()
                if image is None or not self._publish(image, time.monotonic()):
                    break
        except Exception as exc:  # handed to the consumer, not swallowed
            error = exc
        finally:
            error = self._release(error)
            with self._cond:
                self._error = error
                self._finished = True
                self._cond.notify_all()

    def _release(self, error: BaseException | None) -> BaseException | None:
        """Release the reader; a failure to release is reported unless an earlier error is."""
        try:
            self._reader.release()
        except Exception as exc:
            return error or exc
        return error

    def _publish(self, image: np.ndarray, captured_at: float) -> bool:
        """Hand a frame to the consumer (replacing or waiting, per policy); False once stopped."""
        with self._cond:
            if self.realtime:
                self._dropped += len(self._pending)
                self._pending.clear()
            while len(self._pending) >= self.max_pending and not self._stop.is_set():
                self._cond.wait(POLL_INTERVAL_S)
            if self._stop.is_set():
                return False
            self._pending.append(CapturedFrame(self._captured, captured_at, image))
            self._captured += 1
            self._cond.notify_all()
            return True

    # ---------------------------------------------------------------- consumer side (hold the condition)
    def _take_locked(self) -> CapturedFrame | None:
        if not self._pending:
            return None
        frame = self._pending.popleft()
        self._cond.notify_all()  # a blocked (non-realtime) capture thread may go on
        return frame

    def _failed_locked(self) -> BaseException | None:
        """The capture error, once the frames captured before it have been taken."""
        return self._error if not self._pending else None

    def _exhausted_locked(self) -> bool:
        return self._finished and not self._pending

    # ---------------------------------------------------------------- public
    @property
    def condition(self) -> threading.Condition:
        return self._cond

    @property
    def captured(self) -> int:
        with self._cond:
            return self._captured

    @property
    def dropped(self) -> int:
        with self._cond:
            return self._dropped

    @property
    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def read(self, timeout: float | None = None) -> CapturedFrame | None:
        """The next frame (blocking); None once the source is exhausted.

        Raises SourceError if the capture failed, TimeoutError if ``timeout`` seconds pass without a frame.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                frame = self._take_locked()
                if frame is not None:
                    return frame
                error = self._failed_locked()
                if error is not None:
                    raise SourceError(self.name, error) from error
                if self._exhausted_locked():
                    return None
                wait = POLL_INTERVAL_S if deadline is None else min(POLL_INTERVAL_S, deadline - time.monotonic())
                if wait <= 0:
                    raise TimeoutError(f"source {self.name}: no frame within {timeout} s")
                self._cond.wait(wait)

    def close(self, timeout: float = JOIN_TIMEOUT_S) -> None:
        """Stop the capture thread and wait for it (it releases the capture); waiting frames count as dropped."""
        self._stop.set()
        with self._cond:
            self._dropped += len(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread.is_alive():
            warnings.warn(f"capture thread of {self.name} did not stop within {timeout} s (blocked in a read)", RuntimeWarning, stacklevel=2)

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_source(
    source: object,
    realtime: bool | None = None,
    max_pending: int = 1,
    condition: threading.Condition | None = None,
) -> FrameSource:
    """Open ``source`` and start capturing it in a daemon thread.

    ``source``: a camera index (``cv2.VideoCapture(i)``), a video file path, an ``rtsp://`` / ``http(s)://``
    URL, or an iterable of RGB frames ((H, W, 3) uint8, or anything ``perceive`` accepts as an array).
    ``realtime``: latest-frame policy with drops (default for cameras and URLs) or no drops (default for
    files and iterators). ``max_pending``: frames that may wait when not realtime.
    Raises FileNotFoundError / ValueError naming the source if it cannot be opened.
    """
    live = _is_live(source) if realtime is None else realtime
    reader, name = _open_reader(source, live)
    return FrameSource(reader, name, realtime=live, max_pending=max_pending, condition=condition)


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
            return StreamStats(
                captured=[s._captured for s in self._sources],
                processed=list(self._processed),
                dropped=[s._dropped for s in self._sources],
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
                    error = source._failed_locked()
                    if error is not None:
                        raise SourceError(source.name, error, source=i) from error
                taken = [(i, s._take_locked()) for i, s in enumerate(self._sources)]
                batch = [(i, frame) for i, frame in taken if frame is not None]
                if batch:
                    return batch
                if all(s._exhausted_locked() for s in self._sources):
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
    if max_pending < 1:
        raise ValueError(f"max_pending must be >= 1, got {max_pending}")
    noise = _stream_noise(model, seed)
    condition = threading.Condition()
    opened = _open_all(items, realtime, max_pending, condition)
    kwargs: dict[str, Any] = {"tasks": tuple(tasks), "steps": steps}
    return Stream(model, opened, noise, kwargs, condition)


# -------------------------------------------------------------------------------------------- write_video
def write_video(frames: Iterable[np.ndarray], path: str | os.PathLike[str], fps: float) -> int:
    """Write RGB frames (all the same size) to an mp4 (``mp4v``) file; returns the number of frames written."""
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    writer: cv2.VideoWriter | None = None
    size: tuple[int, int] | None = None
    count = 0
    try:
        for frame in frames:
            image = load_image(frame, f"frame {count}")
            if writer is None:
                size = (image.shape[1], image.shape[0])
                writer = _open_writer(Path(path), fps, size)
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


def _open_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), float(fps), size)
    if not writer.isOpened():
        raise ValueError(f"cannot write video {path} ({VIDEO_FOURCC}, {size[0]}x{size[1]}, {fps} fps)")
    return writer


__all__ = [
    "CapturedFrame",
    "FrameSource",
    "SourceError",
    "Stream",
    "StreamFrame",
    "StreamStats",
    "open_source",
    "stream_frames",
    "write_video",
]
