"""Input validation shared by the processors: arrays, images, float maps, labels and scalars.

Each check raises ``ValueError`` naming the argument, and returns the value in the dtype the processors compute in.
"""

from __future__ import annotations

import numpy as np

UINT8_MAX = 255
RGB_CHANNELS = 3


def check_array(array: object, name: str, ndim: int, channels: int | None = None) -> np.ndarray:
    """Check type, ndim, trailing channel count, emptiness and finiteness; return the array."""
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {array.shape}")
    if channels is not None and array.shape[-1] != channels:
        raise ValueError(f"{name} must have {channels} channels in the last axis, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def check_image(image: object, name: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 or floating image in 0..255 -> (H, W, 3) float32 clipped to 0..255."""
    array = check_array(image, name, 3, RGB_CHANNELS)
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 or floating (0..255), got dtype {array.dtype}")
    return np.clip(array.astype(np.float32, copy=False), 0.0, float(UINT8_MAX))


def check_float_map(array: object, name: str, ndim: int, channels: int | None = None) -> np.ndarray:
    """A finite floating (or integer) map -> float64 array."""
    checked = check_array(array, name, ndim, channels)
    if checked.dtype == np.bool_ or not (
        np.issubdtype(checked.dtype, np.floating) or np.issubdtype(checked.dtype, np.integer)
    ):
        raise ValueError(f"{name} must have a numeric (floating) dtype, got {checked.dtype}")
    return checked.astype(np.float64, copy=False)


def check_labels(labels: object, name: str = "labels") -> np.ndarray:
    """(H, W) non-negative integer labels."""
    checked = check_array(labels, name, 2)
    if checked.dtype == np.bool_ or not np.issubdtype(checked.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {checked.dtype}")
    if checked.min() < 0:
        raise ValueError(f"{name} must be >= 0, got minimum {checked.min()}")
    return checked


def check_positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def check_finite(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)
