"""Frame sources: cameras, video files, URLs and frame iterators, each captured by its own daemon thread (no torch).

    with open_source("clip.mp4") as source:          # FrameSource
        while (frame := source.read()) is not None:  # CapturedFrame: index, captured_at, RGB image
            ...

:func:`open_source` picks the reader (``cv2.VideoCapture`` for a camera index, a file or an ``rtsp://`` /
``http(s)://`` URL; the iterable itself for frames) and starts a :class:`FrameSource`. The stream
(:mod:`.stream`) reads several of them, sharing one condition.

Capture policy
--------------
- ``realtime=True`` (default for cameras and URLs): LATEST-FRAME policy. A source holds at most one frame; a
  frame replaced by a newer one before the consumer took it is *dropped* (counted), so a slow consumer always
  gets a fresh frame and never a backlog. A video file read in realtime mode is paced at its own frame rate,
  like a camera.
- ``realtime=False`` (default for files and iterators): nothing is dropped; the capture thread blocks once
  ``max_pending`` frames wait, so every frame comes out, in order.
- Cameras and URLs retry a failed read (:data:`MAX_LIVE_READ_FAILURES` times) before the capture fails; a file
  ends at its first failed read.
- An exception in a capture thread is handed to the consumer as :class:`SourceError` naming the source, after
  the frames captured before it; it is never swallowed.
- A source that ends before the frames it announced (a video file's ``CAP_PROP_FRAME_COUNT`` when the container
  knows it, the length of a sized iterable) is corrupt or truncated: :attr:`FrameSource.warning` says so with
  both counts, and the warning is logged (``logging``, this module's logger). Closing a source early is not
  ending early.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from .images import check_video_size, load_image

log = logging.getLogger(__name__)

#: URL schemes opened with ``cv2.VideoCapture(url)`` (live sources: realtime by default).
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
#: How long the consumer / a blocked capture thread sleeps between checks (notifications wake them sooner).
POLL_INTERVAL_S = 0.05
#: How long ``close()`` waits for each capture thread.
JOIN_TIMEOUT_S = 2.0
#: Consecutive failed reads of a camera / URL before the capture thread raises.
MAX_LIVE_READ_FAILURES = 5
#: Pause between failed reads of a camera / URL.
LIVE_RETRY_DELAY_S = 0.05


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



# ------------------------------------------------------------------------------------------------- readers
class _Reader(Protocol):
    #: Frames the source announces (a file's frame count, an iterable's length); None when unknown or live.
    expected: int | None

    def read(self) -> np.ndarray | None:
        """The next RGB frame, or None at the end."""

    def release(self) -> None: ...


class _CaptureReader:
    """Frames of a cv2.VideoCapture, BGR -> RGB. Live sources retry failed reads, files end on one."""

    def __init__(
        self, capture: cv2.VideoCapture, name: str, live: bool, pace_fps: float | None, expected: int | None = None
    ):
        self.expected = expected
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
        self.expected = len(frames) if isinstance(frames, Sized) else None
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
    try:
        check_video_size(capture, name)
    except ValueError:
        capture.release()
        raise
    return capture


def container_frame_count(capture: cv2.VideoCapture) -> int | None:
    """Frames a video file's container announces (``CAP_PROP_FRAME_COUNT``); None when it does not know.

    Args:
        capture: an opened capture of a file.

    Returns:
        The announced frame count, or None (OpenCV reports 0 or a negative/NaN value for unknown).
    """
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return int(count) if math.isfinite(count) and count >= 1 else None


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
        reader = _CaptureReader(capture, name, live=False, pace_fps=pace, expected=container_frame_count(capture))
        return reader, name
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
        self.expected: int | None = getattr(reader, "expected", None)
        self._warning: str | None = None
        self._thread = threading.Thread(target=self._run, name=f"mmgen-edge capture: {name}", daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- capture thread
    def _run(self) -> None:
        error: BaseException | None = None
        ended = False  # the reader ran out (rather than being stopped or failing)
        try:
            while not self._stop.is_set():
                image = self._reader.read()
                if image is None:
                    ended = True
                    break
                if not self._publish(image, time.monotonic()):
                    break
        except Exception as exc:  # handed to the consumer, not swallowed
            error = exc
        finally:
            error = self._release(error)
            warning = self._early_end_warning() if ended and error is None else None
            if warning:
                log.warning("%s", warning)
            with self._cond:
                self._error = error
                self._warning = warning
                self._finished = True
                self._cond.notify_all()

    def _early_end_warning(self) -> str | None:
        """The warning for a source that ended before the frames it announced; None when it did not."""
        if self.expected is None or self._captured >= self.expected:
            return None
        return (
            f"source {self.name} ended early: {self._captured} of {self.expected} frames read (the container "
            f"announces {self.expected}); it is probably truncated or corrupt after frame {self._captured}"
        )

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

    # ---------------------------------------------------------------- consumer side (the caller holds `condition`)
    def take_locked(self) -> CapturedFrame | None:
        """The oldest waiting frame (waking a blocked capture thread), or None if none waits."""
        if not self._pending:
            return None
        frame = self._pending.popleft()
        self._cond.notify_all()  # a blocked (non-realtime) capture thread may go on
        return frame

    def failed_locked(self) -> BaseException | None:
        """The capture error, once the frames captured before it have been taken."""
        return self._error if not self._pending else None

    def exhausted_locked(self) -> bool:
        """True once the capture thread has finished and every frame it captured has been taken."""
        return self._finished and not self._pending

    def counters_locked(self) -> tuple[int, int]:
        """(captured, dropped) so far."""
        return self._captured, self._dropped

    def warning_locked(self) -> str | None:
        """The early-end warning once the capture has finished (see :attr:`warning`)."""
        return self._warning

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
    def warning(self) -> str | None:
        """Set once the source has ended before the frames it announced (frames read and expected); else None."""
        with self._cond:
            return self._warning

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
                frame = self.take_locked()
                if frame is not None:
                    return frame
                error = self.failed_locked()
                if error is not None:
                    raise SourceError(self.name, error) from error
                if self.exhausted_locked():
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


__all__ = [
    "CapturedFrame",
    "FrameSource",
    "SourceError",
    "open_source",
]
