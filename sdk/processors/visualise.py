"""False-colour views of the processors' outputs: disparity, normals and segment labels as RGB images.

For display and galleries only; the colours carry no meaning beyond the documented maps.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..encoding import encode_normals
from .checks import RGB_CHANNELS, UINT8_MAX, check_finite, check_float_map, check_labels
from .segmentation import Segmentation

PALETTE_CANDIDATES = 4096  # random colours the distinct palette is chosen from
MAX_DISTINCT_COLOURS = 256  # labels beyond this many get plain random colours (no spacing search)


def colourise_depth(
    disparity: np.ndarray,
    colormap: int = cv2.COLORMAP_INFERNO,
    *,
    val_min: float = 0.0,
    val_max: float = 1.0,
) -> np.ndarray:
    """(H, W) disparity -> (H, W, 3) uint8 RGB false-colour image (bright = near for INFERNO).

    Values are mapped linearly from ``[val_min, val_max]`` (default [0, 1], the range of
    ``depth_from_image``) to the colormap and clipped outside it.
    """
    values = check_float_map(disparity, "disparity", 2)  # (H, W)
    if isinstance(colormap, bool) or not isinstance(colormap, (int, np.integer)) or colormap < 0:
        raise ValueError(f"colormap must be an OpenCV colormap id (cv2.COLORMAP_*), got {colormap!r}")
    val_min, val_max = check_finite(val_min, "val_min"), check_finite(val_max, "val_max")
    if val_max <= val_min:
        raise ValueError(f"val_max must be > val_min, got val_min={val_min}, val_max={val_max}")
    scaled = np.clip((values - val_min) / (val_max - val_min), 0.0, 1.0)  # (H, W)
    grey = np.rint(scaled * UINT8_MAX).astype(np.uint8)
    bgr = cv2.applyColorMap(grey, int(colormap))  # (H, W, 3) BGR
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def colourise_normals(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) normals in [-1, 1] -> (H, W, 3) uint8 RGB ``round((n + 1) / 2 * 255)`` (the training encoding)."""
    vectors = check_float_map(normals, "normals", 3, RGB_CHANNELS)  # (H, W, 3), stricter than encode_normals' check
    return encode_normals(vectors)


def _distinct_palette(count: int, seed: int) -> np.ndarray:
    """(count, 3) uint8 colours: farthest-point sampling of a seeded random candidate pool for the first
    ``MAX_DISTINCT_COLOURS``, plain seeded random colours for any beyond."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, UINT8_MAX + 1, size=(PALETTE_CANDIDATES, 3)).astype(np.float64)  # (P, 3)
    chosen = [0]
    nearest = np.linalg.norm(pool - pool[0], axis=1)  # (P,) distance to the closest chosen colour
    for _ in range(1, min(count, MAX_DISTINCT_COLOURS)):
        index = int(np.argmax(nearest))
        chosen.append(index)
        nearest = np.minimum(nearest, np.linalg.norm(pool - pool[index], axis=1))
    extra = rng.integers(0, UINT8_MAX + 1, size=(count - len(chosen), 3))  # (count - len(chosen), 3)
    return np.concatenate([pool[chosen], extra]).astype(np.uint8)


def colourise_segmentation(seg: Segmentation | np.ndarray, seed: int = 0) -> np.ndarray:
    """A ``Segmentation`` or (H, W) non-negative integer labels -> (H, W, 3) uint8 RGB, one distinct colour a label.

    Colours come from farthest-point sampling of a random pool drawn with ``seed`` (deterministic);
    they are NOT the segmentation's own ``colours`` (use ``seg.colours[seg.labels]`` for those).
    """
    labels = seg.labels if isinstance(seg, Segmentation) else check_labels(seg, "seg")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    palette = _distinct_palette(int(labels.max()) + 1, int(seed))  # (K, 3)
    return palette[labels]
