"""The release's encoding of the four modalities as images (the inverse of ``sdk.processors``), torch-free.

Every modality becomes an (H, W, 3) uint8 image, as the MMGen release encodes its training data
(decoding: ``sdk.processors``):

* ``depth``: relative DISPARITY ``1 / depth`` (larger = nearer), min-max normalised per image to
  0..255 and rounded, the grey value copied to the 3 channels. A constant-disparity image (max == min)
  encodes as all zeros.
* ``normal``: ``round((n + 1) / 2 * 255)`` clipped to 0..255, with r = x, g = y, b = z of the
  CAMERA-space normal (OpenCV axes: x right, y down, z forward, normals facing the camera), no axis flip.
  A wall facing the camera head-on, n = (0, 0, -1), encodes as (128, 128, 0).
* ``mask``: class-agnostic segments told apart only by colour. The background (instance 0) gets the
  first random colour (drawn even when no background pixel is left, so the rng use only depends on
  the number of segments), then the object segments are painted largest-first by pixel area (ties:
  smaller id first), each with a fresh random colour. Colours are uniform random RGB, rejected while
  closer than ``MIN_MASK_COLOUR_DISTANCE`` (Euclidean, 0..255 units) to a colour already used; when
  ``MAX_COLOUR_BATCHES`` batches of candidates all fail (only with very many segments) the distance
  is halved, down to 1, so colours always stay distinct. A model trained with a fixed palette
  (``ModelConfig.mask_palette``, e.g. the shapes demo from phase 5b on) paints in the same order with its
  palette's colours.

Used by ``generate`` conditions (``sdk.conditions``) and by the shapes world's training data.
"""


from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmgen_edge.config import check_mask_palette
from mmgen_edge.runtime.modalities import MIN_MASK_COLOUR_DISTANCE

UINT8_MAX = 255
COLOUR_BATCH = 64  # candidate colours drawn at once
MAX_COLOUR_BATCHES = 16  # batches tried before the distance threshold is halved


def _check_image(array: np.ndarray, name: str, channels: int | None) -> None:
    ndim = 2 if channels is None else 3
    if not isinstance(array, np.ndarray) or array.ndim != ndim or (channels is not None and array.shape[-1] != channels):
        expected = "(H, W)" if channels is None else f"(H, W, {channels})"
        raise ValueError(f"{name} must be a numpy array of shape {expected}, got {getattr(array, 'shape', type(array))}")


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """(H, W) metric depth > 0 -> (H, W, 3) uint8 min-max normalised disparity (nearer = brighter)."""
    _check_image(depth, "depth", None)
    depth = np.asarray(depth, dtype=np.float64)
    if not np.all(np.isfinite(depth)) or depth.min() <= 0.0:
        raise ValueError("depth must be finite and > 0 everywhere")
    disparity = 1.0 / depth  # (H, W)
    low, high = disparity.min(), disparity.max()
    if high <= low:
        grey = np.zeros(depth.shape, dtype=np.uint8)
    else:
        grey = np.rint((disparity - low) * (UINT8_MAX / (high - low))).astype(np.uint8)  # (H, W)
    return np.repeat(grey[..., None], 3, axis=-1)  # (H, W, 3)


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit normals in [-1, 1] -> (H, W, 3) uint8 ``round((n + 1) / 2 * 255)``, r=x g=y b=z."""
    _check_image(normals, "normals", 3)
    scaled = np.rint((np.asarray(normals, dtype=np.float64) + 1.0) * (UINT8_MAX / 2.0))  # (H, W, 3)
    return np.clip(scaled, 0, UINT8_MAX).astype(np.uint8)


def _draw_colour(rng: np.random.Generator, used: list[np.ndarray], min_distance: float) -> tuple[np.ndarray, float]:
    """A random RGB colour at least ``min_distance`` from every used one (threshold relaxed if needed)."""
    while True:
        for _ in range(MAX_COLOUR_BATCHES):
            candidates = rng.integers(0, UINT8_MAX + 1, size=(COLOUR_BATCH, 3))  # (B, 3)
            if not used:
                return candidates[0], min_distance
            diff = candidates[:, None, :] - np.asarray(used)[None, :, :]  # (B, U, 3)
            nearest = np.sqrt((diff * diff).sum(axis=-1)).min(axis=1)  # (B,)
            ok = np.flatnonzero(nearest >= min_distance)
            if ok.size:
                return candidates[ok[0]], min_distance
        if min_distance <= 1.0:
            raise RuntimeError("could not draw a distinct mask colour (more than 2**24 segments?)")
        min_distance = max(min_distance / 2.0, 1.0)


def encode_mask(
    instances: np.ndarray, rng: np.random.Generator, palette: Sequence[Sequence[int]] | None = None
) -> np.ndarray:
    """(H, W) non-negative instance ids (0 = background) -> (H, W, 3) uint8 segment image.

    ``palette`` (a model's ``mask_palette``, checked by ``config.check_mask_palette``): its colours in paint order
    (background, then the segments largest first); segments beyond it get random colours. None: random colours.
    """
    _check_image(instances, "instances", None)
    if not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(f"instances must have an integer dtype, got {instances.dtype}")
    if instances.size and instances.min() < 0:
        raise ValueError("instances must be >= 0 (0 = background)")
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    fixed = [] if palette is None else [np.asarray(c, dtype=np.int64) for c in check_mask_palette(palette)]
    ids, inverse, counts = np.unique(instances, return_inverse=True, return_counts=True)  # (K,), (H*W,), (K,)
    objects = np.flatnonzero(ids != 0)
    paint_order = objects[np.lexsort((ids[objects], -counts[objects]))]  # largest first, then smaller id
    used: list[np.ndarray] = []
    min_distance = MIN_MASK_COLOUR_DISTANCE

    def next_colour() -> np.ndarray:
        nonlocal min_distance
        if len(used) < len(fixed):
            return fixed[len(used)]
        colour, min_distance = _draw_colour(rng, used, min_distance)
        return colour

    background = next_colour()
    used.append(background)
    palette_rows = np.zeros((ids.size, 3), dtype=np.uint8)  # (K, 3)
    if ids.size and ids[0] == 0:
        palette_rows[0] = background
    for segment in paint_order:
        colour = next_colour()
        used.append(colour)
        palette_rows[segment] = colour
    return palette_rows[inverse.reshape(instances.shape)]  # (H, W, 3)
