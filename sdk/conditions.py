"""Condition maps for ``generate``: turn a user's depth / normals / segmentation into the image the release encodes.

- depth: relative disparity (1 = nearest) min-max normalised to 0..255, grey in three channels;
- normals: (n + 1) / 2 * 255, camera space, OpenCV axes, r = x, g = y, b = z;
- segmentation: each segment painted a random, well-separated colour, largest first (the release's masks).
An already-encoded (H, W, 3) uint8 image is passed through unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmgen_edge.runtime.modalities import CONDITION_TASKS, DEPTH_TASK, NORMALS_TASK, SEGMENTATION_TASK

from .encoding import encode_mask, encode_normals
from .images import check_input_size, load_image

UINT8_MAX = 255
#: Segments a segmentation condition may hold: each gets its own well-separated colour (the release paints at most
#: a few hundred), and choosing them costs time quadratic in their number.
MAX_SEGMENTS = 256


def _check_map(arr: np.ndarray, name: str) -> None:
    """The same size limit as an input image (bounded memory), for a raw condition map."""
    if arr.ndim >= 2:
        check_input_size(int(arr.shape[1]), int(arr.shape[0]), name)


def _encoded_image(value: np.ndarray, name: str) -> np.ndarray | None:
    if value.dtype == np.uint8 and value.ndim == 3:
        return load_image(value, name)
    return None


def depth_condition(value: object) -> np.ndarray:
    """Disparity (H, W) float (any range; larger = nearer) or an encoded uint8 image -> (H, W, 3) uint8."""
    arr = np.asarray(value)
    encoded = _encoded_image(arr, "condition['depth']")
    if encoded is not None:
        return encoded
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "fiu":
        raise ValueError(f"condition['depth'] must be a (H, W) disparity map or an (H, W, 3) uint8 image, got {arr.shape} {arr.dtype}")
    _check_map(arr, "condition['depth']")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("condition['depth'] contains NaN or infinite values")
    with np.errstate(over="ignore"):
        span = arr.max() - arr.min()
    if not np.isfinite(span):
        raise ValueError("condition['depth'] spans more than a float64 holds: rescale it (only relative depth matters)")
    grey = np.zeros(arr.shape) if span == 0 else (arr - arr.min()) / span * UINT8_MAX
    return np.repeat(np.round(grey).astype(np.uint8)[:, :, None], 3, axis=2)


def normals_condition(value: object) -> np.ndarray:
    """Unit normals (H, W, 3) float or an encoded uint8 image -> (H, W, 3) uint8."""
    arr = np.asarray(value)
    encoded = _encoded_image(arr, "condition['normals']")
    if encoded is not None:
        return encoded
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0 or arr.dtype.kind != "f":
        raise ValueError(f"condition['normals'] must be (H, W, 3) float unit vectors or a uint8 image, got {arr.shape} {arr.dtype}")
    _check_map(arr, "condition['normals']")
    with np.errstate(over="ignore"):
        arr = arr.astype(np.float32)  # a float64 beyond float32's range becomes inf here, and is refused below
    if not np.isfinite(arr).all():
        raise ValueError("condition['normals'] contains NaN or infinite values (or values beyond float32)")
    return encode_normals(arr)


def segmentation_condition(value: object, seed: int, palette: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """Segment labels (H, W) int or a colour-painted uint8 image -> (H, W, 3) uint8 (labels painted with the model's
    ``mask_palette`` when it has one, else random colours drawn from ``seed``)."""
    arr = np.asarray(value)
    encoded = _encoded_image(arr, "condition['segmentation']")
    if encoded is not None:
        return encoded
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "iu":
        raise ValueError(f"condition['segmentation'] must be (H, W) integer labels or a uint8 image, got {arr.shape} {arr.dtype}")
    _check_map(arr, "condition['segmentation']")
    segments = len(np.unique(arr))
    if segments > MAX_SEGMENTS:
        raise ValueError(f"condition['segmentation'] has {segments} segments, more than {MAX_SEGMENTS}: merge small ones")
    return encode_mask(arr, np.random.default_rng(seed), palette)  # any integer ids: no narrowing cast


def condition_image(name: str, value: object, seed: int, palette: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    if name == DEPTH_TASK:
        return depth_condition(value)
    if name == NORMALS_TASK:
        return normals_condition(value)
    if name == SEGMENTATION_TASK:
        return segmentation_condition(value, seed, palette)
    raise ValueError(f"unknown condition {name!r}; choose {', '.join(CONDITION_TASKS)}")
