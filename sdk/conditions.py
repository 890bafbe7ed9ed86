"""Condition maps for ``generate``: turn a user's depth / normals / segmentation into the image the release encodes.

- depth: relative disparity (1 = nearest) min-max normalised to 0..255, grey in three channels;
- normals: (n + 1) / 2 * 255, camera space, OpenCV axes, r = x, g = y, b = z;
- segmentation: each segment painted a random, well-separated colour, largest first (the release's masks).
An already-encoded (H, W, 3) uint8 image is passed through unchanged.
"""

from __future__ import annotations

import numpy as np

from mmgen_edge.runtime.modalities import CONDITION_TASKS, DEPTH_TASK, NORMALS_TASK, SEGMENTATION_TASK

from .encoding import encode_mask, encode_normals
from .images import load_image

UINT8_MAX = 255


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
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError("condition['depth'] contains NaN or infinite values")
    span = arr.max() - arr.min()
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
    if not np.isfinite(arr).all():
        raise ValueError("condition['normals'] contains NaN or infinite values")
    return encode_normals(arr.astype(np.float32))


def segmentation_condition(value: object, seed: int) -> np.ndarray:
    """Segment labels (H, W) int or a colour-painted uint8 image -> (H, W, 3) uint8."""
    arr = np.asarray(value)
    encoded = _encoded_image(arr, "condition['segmentation']")
    if encoded is not None:
        return encoded
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "iu":
        raise ValueError(f"condition['segmentation'] must be (H, W) integer labels or a uint8 image, got {arr.shape} {arr.dtype}")
    return encode_mask(arr.astype(np.int32), np.random.default_rng(seed))


def condition_image(name: str, value: object, seed: int) -> np.ndarray:
    if name == DEPTH_TASK:
        return depth_condition(value)
    if name == NORMALS_TASK:
        return normals_condition(value)
    if name == SEGMENTATION_TASK:
        return segmentation_condition(value, seed)
    raise ValueError(f"unknown condition {name!r}; choose {', '.join(CONDITION_TASKS)}")
