"""Calibration images: an image folder, a video file, or the shapes renderer (``demo:N``). Torch-free.

    for rgb in iter_calibration_images("frames/", limit=64): ...       # every image of a folder (sorted)
    for rgb in iter_calibration_images("drive.mp4", limit=64): ...     # 64 frames spread over the video
    for rgb in iter_calibration_images("demo:64", limit=64): ...       # 64 rendered shapes scenes

Every source yields RGB ``uint8`` arrays (H, W, 3) one at a time, so memory stays flat however large the source:
a video is decoded frame by frame (skipped frames are only grabbed, never converted or kept), a folder is read one
file at a time. The demo renderer draws its scenes from :data:`CALIBRATION_SEED` on, a seed range used neither by
training (seeds ``0..num_scenes-1``) nor by the held-out evaluation (from ``HELD_OUT_SEED`` = 1,000,000), so the
accuracy gate never scores images the ranges were calibrated on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

#: First seed of the demo renderer's calibration scenes (training: 0..5999; held-out evaluation: 1_000_000+).
CALIBRATION_SEED = 2_000_000
#: Prefix of the renderer spec: ``demo:N``.
DEMO_PREFIX = "demo:"
#: Render size of demo scenes when the caller does not ask for one (the SDK resizes to the model anyway).
DEFAULT_DEMO_SIZE = 128
#: Image file extensions read from a folder (lower case).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
#: Video file extensions (lower case); any other file is tried as an image.
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


class CalibrationSourceError(ValueError):
    """The calibration data spec is malformed or names something that holds no usable image."""


def iter_calibration_images(spec: str, limit: int, demo_size: int = DEFAULT_DEMO_SIZE) -> Iterator[np.ndarray]:
    """Yield at most ``limit`` RGB uint8 images from ``spec``: a folder, a video, an image file or ``demo:N``.

    Raises :class:`CalibrationSourceError` for a malformed spec or an empty/unreadable source, and
    :class:`FileNotFoundError` for a path that does not exist. Errors are raised on the first ``next()``.
    """
    if not isinstance(limit, int) or limit < 1:
        raise CalibrationSourceError(f"limit must be a positive integer, got {limit!r}")
    spec = str(spec).strip()
    if not spec:
        raise CalibrationSourceError("empty calibration data spec: give a folder, a video file or demo:N")
    if spec.startswith(DEMO_PREFIX):
        yield from _demo_images(spec, limit, demo_size)
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"calibration data {path} does not exist (give a folder, a video file or demo:N)")
    if path.is_dir():
        yield from _folder_images(path, limit)
    elif path.suffix.lower() in VIDEO_EXTENSIONS:
        yield from _video_frames(path, limit)
    else:
        yield _read_image(path)


def data_path(spec: object | None) -> Path | None:
    """The file or folder a data spec names (None for ``demo:N`` or no spec): outputs must never hold it
    (``protect``)."""
    if spec is None:
        return None
    text = str(spec).strip()
    return None if not text or text.startswith(DEMO_PREFIX) else Path(text).expanduser()


def parse_demo_spec(spec: str) -> int:
    """The N of ``demo:N`` (a positive integer), with a clear error otherwise."""
    count = spec[len(DEMO_PREFIX) :].strip()
    if not (count.isascii() and count.isdigit()) or int(count) < 1:
        raise CalibrationSourceError(f"bad calibration spec {spec!r}: expected demo:N with N a positive integer")
    return int(count)


def _demo_images(spec: str, limit: int, size: int) -> Iterator[np.ndarray]:
    from mmgen_edge.samples.shapes.scenes import render_scene

    for i in range(min(parse_demo_spec(spec), limit)):
        yield render_scene(CALIBRATION_SEED + i, size).rgb


def image_files(folder: Path) -> list[Path]:
    """The folder's image files (by extension, not recursive), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _folder_images(folder: Path, limit: int) -> Iterator[np.ndarray]:
    files = image_files(folder)
    if not files:
        raise CalibrationSourceError(f"{folder} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    for path in files[:limit]:
        yield _read_image(path)


def _read_image(path: Path) -> np.ndarray:
    """One RGB image, through the SDK's reader: its size checked from the header before it is decoded."""
    from mmgen_edge.sdk.images import load_image

    try:
        return load_image(path, name="calibration image")
    except ValueError as e:
        raise CalibrationSourceError(str(e)) from None


def frame_stride(frame_count: int, limit: int) -> int:
    """Keep every ``stride``-th frame so that ``limit`` frames spread over the whole video (1 when unknown)."""
    return max(1, frame_count // limit) if frame_count > 0 else 1


def _video_frames(path: Path, limit: int) -> Iterator[np.ndarray]:
    """Stream ``limit`` frames spread evenly over the video; only the kept frames are decoded into arrays."""
    from mmgen_edge.sdk.images import check_input_size, check_video_size

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise CalibrationSourceError(f"{path} is not a video OpenCV can open")
    try:
        try:
            check_video_size(capture, f"video {path}")
        except ValueError as e:
            raise CalibrationSourceError(str(e)) from None
        stride = frame_stride(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), limit)
        kept = index = 0
        while kept < limit:
            if index % stride:
                if not capture.grab():
                    break
            else:
                ok, bgr = capture.read()
                if not ok:
                    break
                kept += 1
                try:
                    check_input_size(bgr.shape[1], bgr.shape[0], f"video {path} frame {index}")
                except ValueError as e:
                    raise CalibrationSourceError(str(e)) from None
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
        if kept == 0:
            raise CalibrationSourceError(f"{path}: no frame could be decoded")
    finally:
        capture.release()


def images_digest(images: Iterable[np.ndarray]) -> str:
    """SHA-256 over the images' shapes and pixels, in order (identifies a calibration image set)."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(repr(image.shape).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()
