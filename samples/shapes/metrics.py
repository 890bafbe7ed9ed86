"""Evaluation metrics of predicted depth, normals and segmentation against the exact shapes-world truth.

* Depth: MMGen predicts relative DISPARITY (affine-invariant), so the prediction is first aligned by
  least-squares scale and shift onto the true disparity ``1 / depth`` of the image, then turned back
  into depth; AbsRel, delta1 (``max(d / gt, gt / d) < 1.25``) and RMSE (metres) follow the usual
  monocular-depth definitions.
* Normals: angular error in degrees (mean, median, fraction under 11.25 and 30 degrees).
* Segmentation (class-agnostic): IoU between every predicted segment and every true instance (the
  background, instance 0, counts as an instance), one-to-one Hungarian matching maximising the IoU,
  mIoU = mean over the TRUE instances of the matched IoU (0 for an unmatched instance).
* Object regions (``object_*``): the same metrics on the OBJECT pixels only, instance id > 0 (in the
  shapes world id 0 is the ground plane and all walls together). The planar floor and walls are most
  of every image and easy, so whole-image numbers hide how the objects fare.

numpy + scipy only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

BACKGROUND_ID = 0  # shapes-world instance id of the ground plane and walls (objects are 1..n)
#: A normal facing the camera head-on, camera space with OpenCV axes (x right, y down, z forward).
FACING_CAMERA_NORMAL = (0.0, 0.0, -1.0)
DISPARITY_EPS = 1e-3  # aligned disparities are floored here (1 / m) before inversion: depth <= 1000 m
DELTA1_THRESHOLD = 1.25
NORMAL_THRESHOLDS_DEG = (11.25, 30.0)
UNIT_EPS = 1e-12  # vectors shorter than this are not normalised (their angle to anything is 90 deg)
MIN_ALIGNMENT_PIXELS = 2  # scale and shift need at least two valid pixels


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _check_map(array: object, name: str, ndim: int, channels: int | None = None) -> np.ndarray:
    """A non-empty, finite numeric array of the given ndim (and trailing channels) -> float64."""
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(array).__name__}")
    if array.ndim != ndim or (channels is not None and array.shape[-1] != channels):
        expected = "(H, W)" if channels is None else f"(H, W, {channels})"
        raise ValueError(f"{name} must have shape {expected}, got {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    values = array.astype(np.float64, copy=False)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return values


def _check_same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str, ndim: int = 2) -> None:
    if a.shape[:ndim] != b.shape[:ndim]:
        raise ValueError(f"{name_a} {a.shape} and {name_b} {b.shape} must have the same (H, W)")


def _check_valid(valid: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """(H, W) bool mask (all True when None)."""
    if valid is None:
        return np.ones(shape, dtype=bool)
    if not isinstance(valid, np.ndarray) or valid.shape != shape:
        raise ValueError(f"valid must be a numpy array of shape {shape}, got {getattr(valid, 'shape', type(valid))}")
    if valid.dtype != np.bool_:
        raise ValueError(f"valid must be a boolean mask, got dtype {valid.dtype}")
    return valid


def _check_labels(array: object, name: str) -> np.ndarray:
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise ValueError(f"{name} must be a numpy array of shape (H, W), got {getattr(array, 'shape', type(array))}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty")
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must have an integer dtype, got {array.dtype}")
    if array.min() < 0:
        raise ValueError(f"{name} must be >= 0, got minimum {array.min()}")
    return array


# --------------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------------


def align_disparity(pred: np.ndarray, gt_depth: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Least-squares scale-and-shift alignment of a relative disparity onto the true disparity.

    Solves ``min_{s, t} sum_valid (s * pred + t - 1 / gt_depth)^2`` for this one image (minimum-norm
    solution when ``pred`` is constant over the valid pixels) and applies it everywhere.

    Args:
        pred: (H, W) predicted relative disparity (any scale and shift; larger = nearer).
        gt_depth: (H, W) true metric z-depth, > 0 on the valid pixels.
        valid: optional (H, W) bool mask of the pixels used for the fit (default: all).

    Returns:
        (H, W) float64 aligned disparity ``s * pred + t`` (1 / metres).
    """
    pred64 = _check_map(pred, "pred", 2)
    depth = _check_map(gt_depth, "gt_depth", 2)
    _check_same_shape(pred64, depth, "pred", "gt_depth")
    mask = _check_valid(valid, depth.shape)
    if int(mask.sum()) < MIN_ALIGNMENT_PIXELS:
        raise ValueError(f"valid must select at least {MIN_ALIGNMENT_PIXELS} pixels, got {int(mask.sum())}")
    if depth[mask].min() <= 0.0:
        raise ValueError("gt_depth must be > 0 on the valid pixels")
    x = pred64[mask]  # (M,)
    design = np.stack([x, np.ones_like(x)], axis=1)  # (M, 2)
    (scale, shift), *_ = np.linalg.lstsq(design, 1.0 / depth[mask], rcond=None)
    return scale * pred64 + shift


def depth_metrics(
    pred_disparity: np.ndarray,
    gt_depth: np.ndarray,
    valid: np.ndarray | None = None,
    eps: float = DISPARITY_EPS,
    region: np.ndarray | None = None,
) -> dict[str, float]:
    """Depth metrics of a relative disparity after per-image scale-and-shift alignment.

    The scale and shift are fitted on the ``valid`` pixels; the aligned disparity is floored at ``eps``
    and inverted to depth ``d``; over the ``region`` pixels (default: the valid ones):
    ``abs_rel = mean(|d - gt| / gt)``, ``delta1 = mean(max(d / gt, gt / d) < 1.25)``,
    ``rmse = sqrt(mean((d - gt)^2))`` (metres).

    Args:
        pred_disparity: (H, W) predicted relative disparity (e.g. ``depth_from_image`` output).
        gt_depth: (H, W) true metric z-depth, > 0 on the valid and region pixels.
        valid: optional (H, W) bool mask of the pixels the alignment is fitted on (default: all pixels).
        eps: disparity floor (1 / m) before inversion, > 0.
        region: optional (H, W) bool mask of the pixels scored (default: ``valid``); at least one pixel.

    Returns:
        ``{"abs_rel", "delta1", "rmse"}``.
    """
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be finite and > 0, got {eps!r}")
    aligned = align_disparity(pred_disparity, gt_depth, valid)  # (H, W)
    mask = _check_valid(valid if region is None else region, aligned.shape)
    if not mask.any():
        raise ValueError("region must select at least one pixel")
    if region is not None and gt_depth[mask].min() <= 0.0:
        raise ValueError("gt_depth must be > 0 on the region pixels")
    depth = 1.0 / np.maximum(aligned[mask], eps)  # (M,)
    truth = gt_depth[mask].astype(np.float64)  # (M,)
    ratio = np.maximum(depth / truth, truth / depth)
    return {
        "abs_rel": float(np.mean(np.abs(depth - truth) / truth)),
        "delta1": float(np.mean(ratio < DELTA1_THRESHOLD)),
        "rmse": float(np.sqrt(np.mean((depth - truth) ** 2))),
    }


# --------------------------------------------------------------------------------------------------
# Normals
# --------------------------------------------------------------------------------------------------


def angular_error_deg(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(H, W, 3) predicted and true normals -> (H, W) angle between them in degrees.

    Both are renormalised first; a zero-length vector is 90 degrees from everything.
    """
    p = _check_map(pred, "pred", 3, 3)
    g = _check_map(gt, "gt", 3, 3)
    _check_same_shape(p, g, "pred", "gt")
    p = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), UNIT_EPS)  # (H, W, 3)
    g = g / np.maximum(np.linalg.norm(g, axis=-1, keepdims=True), UNIT_EPS)
    cosine = np.clip((p * g).sum(axis=-1), -1.0, 1.0)  # (H, W)
    return np.degrees(np.arccos(cosine))


def normal_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """Angular error statistics of predicted normals.

    Args:
        pred: (H, W, 3) predicted normals (renormalised here).
        gt: (H, W, 3) true normals.
        valid: optional (H, W) bool mask (default: all pixels).

    Returns:
        ``{"mean", "median"}`` in degrees and ``{"pct_11_25", "pct_30"}``: the FRACTION (0..1) of
        pixels with an error below 11.25 / 30 degrees.
    """
    errors = angular_error_deg(pred, gt)  # (H, W)
    mask = _check_valid(valid, errors.shape)
    if not mask.any():
        raise ValueError("valid must select at least one pixel")
    selected = errors[mask]  # (M,)
    low, high = NORMAL_THRESHOLDS_DEG
    return {
        "mean": float(selected.mean()),
        "median": float(np.median(selected)),
        "pct_11_25": float(np.mean(selected < low)),
        "pct_30": float(np.mean(selected < high)),
    }


# --------------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------------


def segment_iou_matrix(pred_labels: np.ndarray, gt_instances: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every predicted segment with every true instance.

    Args:
        pred_labels: (H, W) non-negative integer predicted segment ids (any ids; only present ones count).
        gt_instances: (H, W) non-negative integer true instance ids (0 = background, an instance too).

    Returns:
        (P, T) float64 IoU matrix, (P,) predicted ids and (T,) true ids of its rows and columns.
    """
    pred = _check_labels(pred_labels, "pred_labels")
    truth = _check_labels(gt_instances, "gt_instances")
    _check_same_shape(pred, truth, "pred_labels", "gt_instances")
    pred_ids, pred_index = np.unique(pred, return_inverse=True)  # (P,), (H*W,)
    true_ids, true_index = np.unique(truth, return_inverse=True)  # (T,), (H*W,)
    num_pred, num_true = len(pred_ids), len(true_ids)
    joint = pred_index.ravel() * num_true + true_index.ravel()  # (H*W,)
    intersection = np.bincount(joint, minlength=num_pred * num_true).reshape(num_pred, num_true)  # (P, T)
    pred_area = np.bincount(pred_index.ravel(), minlength=num_pred)  # (P,)
    true_area = np.bincount(true_index.ravel(), minlength=num_true)  # (T,)
    union = pred_area[:, None] + true_area[None, :] - intersection  # (P, T), >= 1 (both ids present)
    return intersection / union, pred_ids, true_ids


def match_segments(iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one Hungarian matching maximising the total IoU of a (P, T) IoU matrix.

    Returns:
        (M,) row (predicted) and (M,) column (true) indices of the matched pairs, M = min(P, T); every
        row and every column appears at most once.
    """
    if not isinstance(iou, np.ndarray) or iou.ndim != 2:
        raise ValueError(f"iou must be a 2-D numpy array, got {getattr(iou, 'shape', type(iou))}")
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return rows, cols


def segmentation_metrics(pred_labels: np.ndarray, gt_instances: np.ndarray) -> dict[str, float]:
    """Class-agnostic segmentation quality with one-to-one matching.

    Args:
        pred_labels: (H, W) non-negative integer predicted segment ids.
        gt_instances: (H, W) non-negative integer true instance ids (0 = background, counted).

    Returns:
        ``{"miou", "num_pred", "num_true"}``: mIoU = mean over the true instances of the IoU of the
        predicted segment matched to it (0 if none is: each predicted segment matches at most one
        instance), and the numbers of predicted segments and true instances present.
    """
    iou, pred_ids, true_ids = segment_iou_matrix(pred_labels, gt_instances)  # (P, T)
    rows, cols = match_segments(iou)
    return {
        "miou": float(iou[rows, cols].sum() / len(true_ids)),
        "num_pred": float(len(pred_ids)),
        "num_true": float(len(true_ids)),
    }


# --------------------------------------------------------------------------------------------------
# Object regions
# --------------------------------------------------------------------------------------------------


def object_mask(gt_instances: np.ndarray) -> np.ndarray:
    """(H, W) bool: the object pixels, instance id > ``BACKGROUND_ID`` (ground and walls excluded).

    Raises ``ValueError`` when there is no object pixel (every shapes-world scene has at least one object).
    """
    truth = _check_labels(gt_instances, "gt_instances")
    mask = truth > BACKGROUND_ID
    if not mask.any():
        raise ValueError("gt_instances has no object pixel (instance id > 0); object metrics need one")
    return mask


def object_depth_metrics(pred_disparity: np.ndarray, gt_depth: np.ndarray, gt_instances: np.ndarray) -> dict[str, float]:
    """``depth_metrics`` on the object pixels, with the WHOLE-IMAGE alignment.

    The scale and shift are fitted on the whole image, exactly as for the whole-image metric, and only then is
    the error restricted to the object pixels. Fitting them on the objects alone would forgive a prediction that
    places the objects at the wrong depth relative to the room (any affine error of the object subset is fitted
    away), so its numbers would flatter the model and not be comparable with the whole-image ones.

    Args:
        pred_disparity: (H, W) predicted relative disparity.
        gt_depth: (H, W) true metric z-depth, > 0.
        gt_instances: (H, W) true instance ids (0 = ground and walls, 1..n = objects).

    Returns:
        ``{"abs_rel", "delta1", "rmse"}`` over the object pixels.
    """
    return depth_metrics(pred_disparity, gt_depth, region=object_mask(gt_instances))


def object_normal_metrics(pred: np.ndarray, gt: np.ndarray, gt_instances: np.ndarray) -> dict[str, float]:
    """``normal_metrics`` on the object pixels (instance id > 0).

    Args:
        pred: (H, W, 3) predicted normals.
        gt: (H, W, 3) true normals.
        gt_instances: (H, W) true instance ids (0 = ground and walls, 1..n = objects).

    Returns:
        ``{"mean", "median", "pct_11_25", "pct_30"}`` over the object pixels.
    """
    return normal_metrics(pred, gt, valid=object_mask(gt_instances))


def object_segmentation_metrics(pred_labels: np.ndarray, gt_instances: np.ndarray) -> dict[str, float]:
    """Segmentation mIoU over the true OBJECTS only.

    The IoU matrix and the one-to-one matching are those of ``segmentation_metrics`` (whole image, the
    background an instance too, so the predicted background segment cannot be credited to an object); the
    mean is then taken over the true object instances (id > 0) only, an unmatched object counting 0.

    Args:
        pred_labels: (H, W) non-negative integer predicted segment ids.
        gt_instances: (H, W) true instance ids (0 = ground and walls, 1..n = objects; at least one object).

    Returns:
        ``{"miou"}``: mean matched IoU over the true objects.
    """
    object_mask(gt_instances)  # at least one object
    iou, _, true_ids = segment_iou_matrix(pred_labels, gt_instances)  # (P, T)
    rows, cols = match_segments(iou)
    objects = true_ids != BACKGROUND_ID  # (T,)
    matched = np.zeros(len(true_ids))  # (T,)
    matched[cols] = iou[rows, cols]
    return {"miou": float(matched[objects].mean())}


# --------------------------------------------------------------------------------------------------
# Averaging
# --------------------------------------------------------------------------------------------------


@dataclass
class MetricSummary:
    """Running per-key mean of per-image metric dicts (all dicts must have the same keys)."""

    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0

    def add(self, metrics: dict[str, float]) -> None:
        """Accumulate one per-image dict."""
        if not isinstance(metrics, dict) or not metrics:
            raise ValueError(f"metrics must be a non-empty dict, got {metrics!r}")
        if self.count and set(metrics) != set(self.sums):
            raise ValueError(f"metrics keys {sorted(metrics)} differ from the first item's {sorted(self.sums)}")
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def mean(self) -> dict[str, float]:
        """Per-key mean over the added dicts (keys in the first item's order)."""
        if self.count == 0:
            raise ValueError("no metrics added yet")
        return {key: total / self.count for key, total in self.sums.items()}


def mean_metrics(items: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per-key mean of per-image metric dicts (same keys in every dict; at least one dict)."""
    if len(items) == 0:
        raise ValueError("items must contain at least one metrics dict")
    summary = MetricSummary()
    for metrics in items:
        summary.add(metrics)
    return summary.mean()
