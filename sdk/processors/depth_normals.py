"""Decoded depth and normal images -> relative disparity and unit camera-space normals; depth -> 3D points.

Encodings (the release's, see ``mmgen_edge.sdk.encoding``): depth is min-max normalised disparity as grey; a
normal is ``(n + 1) / 2 * 255`` as RGB with OpenCV camera axes (x right, y down, z forward).
"""

from __future__ import annotations

import numpy as np

from .checks import UINT8_MAX, check_finite, check_float_map, check_image, check_positive

DEFAULT_NORMAL = (0.0, 0.0, -1.0)  # answer for a zero-length decoded normal: faces the camera
ZERO_NORM_EPS = 1e-6  # decoded normals shorter than this are "zero" (in units of the unit vector)


def depth_from_image(image: np.ndarray) -> np.ndarray:
    """Decoded depth image -> relative disparity.

    Args:
        image: (H, W, 3) uint8 or floating 0..255 grey image (nearer = brighter).

    Returns:
        (H, W) float32 relative disparity in [0, 1] (mean of the 3 channels / 255; 1 = nearest).
        It is only defined up to an unknown scale and shift; align it to metric disparity with
        ``mmgen_edge.samples.shapes.metrics.align_disparity`` (or any known scale and shift).
    """
    pixels = check_image(image)  # (H, W, 3)
    disparity = pixels.mean(axis=-1) / UINT8_MAX  # (H, W)
    return np.clip(disparity, 0.0, 1.0).astype(np.float32)


def normals_from_image(image: np.ndarray) -> np.ndarray:
    """Decoded normal image -> unit camera-space normals (OpenCV axes: x right, y down, z forward).

    Args:
        image: (H, W, 3) uint8 or floating 0..255 image with r = x, g = y, b = z of ``(n + 1) / 2 * 255``.

    Returns:
        (H, W, 3) float32 unit vectors; (near) zero vectors become ``DEFAULT_NORMAL`` = (0, 0, -1).
        No orientation is forced: a decoded normal facing away from the camera stays so.
    """
    pixels = check_image(image)  # (H, W, 3)
    vectors = pixels.astype(np.float64) * (2.0 / UINT8_MAX) - 1.0  # (H, W, 3)
    norm = np.linalg.norm(vectors, axis=-1, keepdims=True)  # (H, W, 1)
    unit = vectors / np.maximum(norm, ZERO_NORM_EPS)  # (H, W, 3)
    unit[norm[..., 0] < ZERO_NORM_EPS] = DEFAULT_NORMAL
    return unit.astype(np.float32)


def depth_to_points(depth: np.ndarray, fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Back-project metric z-depth to camera-space points (OpenCV pinhole, pixel centres at integers).

    Args:
        depth: (H, W) camera z-depth (distance along the optical axis) in metres, finite and >= 0.
        fx, fy: focal lengths in pixels (> 0).
        cx, cy: principal point in pixels.

    Returns:
        (H, W, 3) float32 points ``(x, y, z)`` with ``x = (u - cx) / fx * z``, ``y = (v - cy) / fy * z``
        for pixel ``(v, u) = depth[v, u]``; x right, y down, z forward.
    """
    z = check_float_map(depth, "depth", 2)  # (H, W)
    if z.min() < 0:
        raise ValueError(f"depth must be >= 0, got minimum {z.min()}")
    fx, fy = check_positive(fx, "fx"), check_positive(fy, "fy")
    cx, cy = check_finite(cx, "cx"), check_finite(cy, "cy")
    height, width = z.shape
    u = (np.arange(width, dtype=np.float64) - cx) / fx  # (W,)
    v = (np.arange(height, dtype=np.float64) - cy) / fy  # (H,)
    points = np.empty((height, width, 3), dtype=np.float32)  # (H, W, 3)
    points[..., 0] = u[None, :] * z
    points[..., 1] = v[:, None] * z
    points[..., 2] = z
    return points
