"""Decoded mask image -> class-agnostic segmentation, by colour clustering (``segment_from_image``).

The release paints every segment with a random, well-separated colour; the decoded image is blurry and noisy, so
the colours are found by greedy mode seeking on the colour histogram of the flat pixels, and every pixel is then
assigned to the nearest colour (uncertain edge pixels from their confident neighbours).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .checks import RGB_CHANNELS, UINT8_MAX, check_array, check_image, check_labels, check_positive

DEFAULT_MIN_AREA_FRACTION = 0.002  # kept segments cover at least this fraction of the pixels
DEFAULT_MERGE_DISTANCE = 32.0  # colours closer than this (Euclidean, 0..255 RGB) are one segment
DENOISE_KERNEL = 5  # Gaussian kernel (pixels) used to denoise before looking for flat pixels
DENOISE_SIGMA = 1.0
FLAT_NEIGHBOURHOOD = 3  # window (pixels) of the local colour range that tells flat from edge pixels
FLAT_RANGE_FRACTION = 0.5  # a pixel is flat if its local colour range < this * merge_distance
MIN_FLAT_FRACTION = 0.25  # at least this fraction of the pixels is used to find the colours
HISTOGRAM_BIN = 4  # colour quantisation step (0..255 units) of the colour histogram
HISTOGRAM_LEVELS = (UINT8_MAX + 1) // HISTOGRAM_BIN  # bins per channel
MEAN_SHIFT_STEPS = 2  # re-centring steps of each greedy colour cluster
MAX_CANDIDATE_COLOURS = 256  # hard cap on the colours the greedy search proposes
MIN_SEED_PIXELS = 3  # a candidate colour needs this many flat pixels ...
SEED_FRACTION_OF_MIN_AREA = 0.1  # ... and this fraction of the minimum segment area
STATIONARY_FRACTION = 0.5  # stationary pixels: colour gradient below this * merge_distance per pixel
CENTRAL_DIFFERENCE_SCALE = 0.5  # Sobel ksize=1 is [-1, 0, 1], twice the per-pixel derivative
MAX_EXTRA_ROUNDS = 32  # colours added for segments too small / thin to have flat pixels
BLEND_TOLERANCE_FRACTION = 0.5  # within this * merge_distance of a blend of two colours = explained
CONFIDENT_FRACTION = 0.5  # confident pixels lie within this * merge_distance of their colour ...
PURE_TOLERANCE = 2.0  # ... and are stationary or match it to within this (0..255 units; clean images)
DEFAULT_FILL_WINDOW = 7  # neighbourhood (pixels) searched for confident labels of uncertain pixels


@dataclass
class Segmentation:
    """A class-agnostic segmentation recovered from a decoded mask image."""

    labels: np.ndarray  # (H, W) int32, 0..K-1, label 0 = the largest segment
    colours: np.ndarray  # (K, 3) uint8, the representative colour of each label

    def __post_init__(self) -> None:
        check_labels(self.labels, "labels")
        check_array(self.colours, "colours", 2, RGB_CHANNELS)
        if self.labels.max() >= len(self.colours):
            raise ValueError(f"labels go up to {self.labels.max()} but colours has only {len(self.colours)} rows")

    @property
    def num_segments(self) -> int:
        """K, the number of labels."""
        return int(len(self.colours))


def _local_range(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 -> (H, W) Euclidean norm over channels of (max - min) in a small window."""
    kernel = np.ones((FLAT_NEIGHBOURHOOD, FLAT_NEIGHBOURHOOD), dtype=np.uint8)
    spread = cv2.dilate(image, kernel) - cv2.erode(image, kernel)  # (H, W, 3)
    return np.sqrt((spread * spread).sum(axis=-1))


def _repeated_mask(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 -> (H, W) bool: pixels within ``PURE_TOLERANCE`` of one of their 4 neighbours.

    In a clean (piecewise constant) mask image every pixel of a segment wider than one pixel repeats a
    neighbour, even in a sliver with no 3 x 3 interior; in a noisy image few pixels do by chance.
    """
    limit = PURE_TOLERANCE * PURE_TOLERANCE
    repeated = np.zeros(image.shape[:2], dtype=bool)  # (H, W)
    for axis in (0, 1):
        step = np.diff(image, axis=axis)  # (H-1, W, 3) or (H, W-1, 3)
        same = (step * step).sum(axis=-1) <= limit
        if axis == 0:
            repeated[1:] |= same
            repeated[:-1] |= same
        else:
            repeated[:, 1:] |= same
            repeated[:, :-1] |= same
    return repeated


def _flat_mask(denoised: np.ndarray, merge_distance: float) -> np.ndarray:
    """(H, W) bool: pixels whose local colour range is small (segment interiors, not blended edges).

    The range is the Euclidean norm over channels of (max - min) in a small window of the denoised
    image. The threshold adapts upward so that at least ``MIN_FLAT_FRACTION`` of the pixels are flat.
    """
    local_range = _local_range(denoised)  # (H, W)
    threshold = max(FLAT_RANGE_FRACTION * merge_distance, float(np.quantile(local_range, MIN_FLAT_FRACTION)))
    return local_range <= threshold


def _stationary_mask(denoised: np.ndarray, merge_distance: float) -> np.ndarray:
    """(H, W) bool: pixels where the denoised colour barely changes (gradient norm over channels and
    both axes below ``STATIONARY_FRACTION * merge_distance`` per pixel).

    The centre of a small or thin segment is stationary even when it has no flat neighbourhood; blends
    along an edge or at a junction of several segments are not.
    """
    gx = cv2.Sobel(denoised, cv2.CV_32F, 1, 0, ksize=1) * CENTRAL_DIFFERENCE_SCALE  # (H, W, 3)
    gy = cv2.Sobel(denoised, cv2.CV_32F, 0, 1, ksize=1) * CENTRAL_DIFFERENCE_SCALE
    gradient = np.sqrt((gx * gx + gy * gy).sum(axis=-1))  # (H, W)
    return gradient < STATIONARY_FRACTION * merge_distance


def _colour_histogram(colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float colours -> (B, 3) mean colour and (B,) pixel count of each occupied histogram bin."""
    levels = np.clip((colours / HISTOGRAM_BIN).astype(np.int64), 0, HISTOGRAM_LEVELS - 1)  # (N, 3)
    bins = (levels[:, 0] * HISTOGRAM_LEVELS + levels[:, 1]) * HISTOGRAM_LEVELS + levels[:, 2]  # (N,)
    size = HISTOGRAM_LEVELS**3
    counts = np.bincount(bins, minlength=size)  # (size,)
    occupied = np.flatnonzero(counts)  # (B,)
    sums = np.stack([np.bincount(bins, weights=colours[:, c], minlength=size)[occupied] for c in range(3)], axis=1)
    weights = counts[occupied].astype(np.float64)  # (B,)
    return sums / weights[:, None], weights


def _heaviest_cluster(
    means: np.ndarray, weights: np.ndarray, unclaimed: np.ndarray, merge_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Seed a cluster at the heaviest unclaimed histogram bin, mean-shift its centre within
    ``merge_distance`` and return its (3,) centre and (B,) bool member bins (the seed always included).

    Args:
        means: (B, 3) bin mean colours; weights: (B,) bin pixel counts; unclaimed: (B,) bool.
    """
    radius2 = merge_distance * merge_distance
    seed = int(np.argmax(np.where(unclaimed, weights, -1.0)))
    centre = means[seed]
    for _ in range(MEAN_SHIFT_STEPS):
        near = unclaimed & (((means - centre) ** 2).sum(axis=1) < radius2)  # (B,)
        centre = np.average(means[near], axis=0, weights=weights[near])
    members = unclaimed & (((means - centre) ** 2).sum(axis=1) < radius2)  # (B,)
    members[seed] = True  # guarantees progress even if the centre drifted off the seed
    return np.average(means[members], axis=0, weights=weights[members]), members


def _greedy_colour_clusters(
    means: np.ndarray, weights: np.ndarray, merge_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy mode seeking on a colour histogram: the heaviest unclaimed bin seeds a cluster that claims
    every unclaimed bin within ``merge_distance`` of its (mean-shifted) centre; repeat.

    Args:
        means: (B, 3) bin mean colours; weights: (B,) bin pixel counts.

    Returns:
        (C, 3) cluster colours and (C,) cluster pixel counts, heaviest seed first.
    """
    unclaimed = np.ones(len(weights), dtype=bool)  # (B,)
    centres: list[np.ndarray] = []
    supports: list[float] = []
    while unclaimed.any() and len(centres) < MAX_CANDIDATE_COLOURS:
        centre, members = _heaviest_cluster(means, weights, unclaimed, merge_distance)
        unclaimed &= ~members
        centres.append(centre)
        supports.append(float(weights[members].sum()))
    return np.asarray(centres, dtype=np.float64).reshape(-1, 3), np.asarray(supports, dtype=np.float64)


def _merge_close(centres: np.ndarray, supports: np.ndarray, merge_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Merge (heaviest first) cluster colours closer than ``merge_distance``; weighted means."""
    kept_centres: list[np.ndarray] = []
    kept_supports: list[float] = []
    for index in np.argsort(-supports, kind="stable"):
        centre, support = centres[index], float(supports[index])
        if kept_centres:
            distances = np.linalg.norm(np.asarray(kept_centres) - centre, axis=1)  # (K,)
            nearest = int(np.argmin(distances))
            if distances[nearest] < merge_distance:
                total = kept_supports[nearest] + support
                kept_centres[nearest] = (kept_centres[nearest] * kept_supports[nearest] + centre * support) / total
                kept_supports[nearest] = total
                continue
        kept_centres.append(centre)
        kept_supports.append(support)
    return np.asarray(kept_centres).reshape(-1, 3), np.asarray(kept_supports)


def _nearest_colour(planes: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(3, N) float32 colour planes, (K, 3) colours -> (N,) int32 index of (lowest on ties) and (N,)
    float32 Euclidean distance to the nearest colour."""
    centres32 = centres.astype(np.float32)
    weights = -2.0 * centres32  # (K, 3)
    # ||p - c||^2 - ||p||^2 = -2 p.c + ||c||^2, one (K, N) row per colour (channel planes: fast on small K)
    scores = (centres32 * centres32).sum(axis=1)[:, None] + weights[:, 0:1] * planes[0]  # (K, N)
    scores += weights[:, 1:2] * planes[1]
    scores += weights[:, 2:3] * planes[2]
    best = scores.min(axis=0)  # (N,)
    labels = np.zeros(planes.shape[1], dtype=np.int32)  # (N,)
    for k in range(len(centres) - 1, -1, -1):
        np.copyto(labels, k, where=scores[k] == best)
    squared = np.zeros(planes.shape[1], dtype=np.float32)  # (N,) exact, not via the expanded form
    for channel in range(RGB_CHANNELS):
        gap = planes[channel] - centres32[labels, channel]
        squared += gap * gap
    return labels, np.sqrt(squared)


def _blend_distance(pixels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(N, 3) pixels, (K, 3) colours -> (N,) distance to the nearest segment between two colours
    (the set of blends of two colours; a single colour counts as a degenerate segment)."""
    best = np.full(len(pixels), np.inf)  # (N,)
    for i in range(len(centres)):
        for j in range(i, len(centres)):
            start, step = centres[i], centres[j] - centres[i]  # (3,), (3,)
            length2 = float(step @ step)
            offset = pixels - start  # (N, 3)
            t = np.clip(offset @ step / length2, 0.0, 1.0) if length2 > 0 else np.zeros(len(pixels))  # (N,)
            gap = offset - t[:, None] * step  # (N, 3)
            best = np.minimum(best, np.sqrt((gap * gap).sum(axis=1)))
    return best


def _unexplained_colours(
    pixels: np.ndarray, centres: np.ndarray, merge_distance: float, min_seed: float
) -> list[np.ndarray]:
    """Colours of segments too small or thin to have flat pixels (found in the denoised ``pixels``).

    A pixel is unexplained while it is at least ``merge_distance`` from every candidate colour and at
    least ``BLEND_TOLERANCE_FRACTION * merge_distance`` from every blend of two of them. Round by
    round, the heaviest cluster of the unexplained pixels becomes a new colour while it has at least
    ``min_seed`` pixels.
    """
    found: list[np.ndarray] = []
    _, distance = _nearest_colour(np.ascontiguousarray(pixels.T), centres)  # (R0,)
    residual = pixels[distance >= merge_distance]  # (R, 3)
    for _ in range(MAX_EXTRA_ROUNDS):
        if len(residual) < min_seed:
            break
        known = np.concatenate([centres, np.asarray(found).reshape(-1, 3)])  # (K, 3)
        residual = residual[_blend_distance(residual, known) >= BLEND_TOLERANCE_FRACTION * merge_distance]
        if len(residual) < min_seed:
            break
        means, weights = _colour_histogram(residual.astype(np.float64))  # (B, 3), (B,)
        centre, members = _heaviest_cluster(means, weights, np.ones(len(weights), dtype=bool), merge_distance)
        if weights[members].sum() < min_seed:
            break
        found.append(centre)
        residual = residual[np.linalg.norm(residual - centre, axis=1) >= merge_distance]
    return found


def _candidate_colours(
    image: np.ndarray, denoised: np.ndarray, stationary: np.ndarray, merge_distance: float, min_seed: float
) -> np.ndarray:
    """(H, W, 3) image, its denoised version and (H, W) stationary mask -> (C, 3) candidate colours.

    Colours are found first on the flat pixels of the denoised image, then among the stationary pixels
    that neither those colours nor their pairwise blends explain (small / thin segments have a
    stationary centre; blends along edges and at junctions of three segments do not). Pixels whose
    raw 3 x 3 neighbourhood is one colour count as flat, and pixels that repeat a neighbour's raw colour
    as stationary, with their raw colour (a clean mask image), so even a clean sliver is found.
    """
    exact = _local_range(image) <= PURE_TOLERANCE  # (H, W)
    repeated = _repeated_mask(image)  # (H, W), includes exact
    source = np.where(repeated[..., None], image, denoised)  # (H, W, 3)
    flat = _flat_mask(denoised, merge_distance) | exact  # (H, W)
    means, weights = _colour_histogram(source[flat].astype(np.float64))  # (B, 3), (B,)
    centres, supports = _greedy_colour_clusters(means, weights, merge_distance)
    centres, supports = _merge_close(centres, supports, merge_distance)
    keep = supports >= min_seed
    if not keep.any():  # degenerate image: keep the best supported colour
        keep[int(np.argmax(supports))] = True
    centres = centres[keep]
    extra = _unexplained_colours(source[stationary | repeated], centres, merge_distance, min_seed)
    return np.concatenate([centres, np.asarray(extra).reshape(-1, 3)])


def _fill_uncertain(
    planes: np.ndarray, labels: np.ndarray, confident: np.ndarray, centres: np.ndarray, window: int
) -> np.ndarray:
    """Relabel uncertain pixels with the nearest colour among the labels that have a confident pixel
    within their ``window`` x ``window`` neighbourhood (pixels with no confident neighbour keep theirs).

    Args:
        planes: (3, N) float32 colour planes; labels: (H, W) int32 nearest-colour labels; confident: (H, W) bool;
        centres: (K, 3) colours.
    """
    uncertain = np.flatnonzero(~confident)  # (M,)
    if uncertain.size == 0 or window <= 1:
        return labels
    kernel = np.ones((window, window), dtype=np.uint8)
    colours = planes[:, uncertain]  # (3, M)
    best = labels.ravel()[uncertain].copy()  # (M,)
    cost = np.full(uncertain.size, np.inf)  # (M,)
    for k, centre in enumerate(centres):
        seeds = (confident & (labels == k)).astype(np.uint8)  # (H, W)
        nearby = cv2.dilate(seeds, kernel).ravel()[uncertain].astype(bool)  # (M,)
        gap = colours - centre.astype(np.float32)[:, None]  # (3, M)
        distance = (gap * gap).sum(axis=0)  # (M,) squared
        better = nearby & (distance < cost)
        best[better] = k
        cost[better] = distance[better]
    filled = labels.copy()
    filled.ravel()[uncertain] = best
    return filled


def _assign(
    planes: np.ndarray, stationary: np.ndarray, centres: np.ndarray, merge_distance: float, fill_window: int
) -> np.ndarray:
    """(H, W) int32 labels of the (3, N) colour planes: the nearest colour where that is certain, a
    neighbourhood fill elsewhere.

    A pixel is confident when it lies within ``CONFIDENT_FRACTION * merge_distance`` of its colour and
    is either stationary or matches the colour to within ``PURE_TOLERANCE`` (clean images). Blended
    edge pixels, which can sit right on a third segment's colour, and noise outliers are uncertain
    and take the nearest colour among the confident labels around them.
    """
    shape = stationary.shape
    labels, distance = _nearest_colour(planes, centres)  # (N,), (N,)
    labels, distance = labels.reshape(shape), distance.reshape(shape)  # (H, W)
    if len(centres) <= 1:
        return labels
    confident = (distance <= CONFIDENT_FRACTION * merge_distance) & (stationary | (distance <= PURE_TOLERANCE))
    return _fill_uncertain(planes, labels, confident, centres, fill_window)


def _check_segment_options(min_area_fraction: float, merge_distance: float, fill_window: int) -> tuple[float, float]:
    """Validated (min_area_fraction, merge_distance)."""
    if isinstance(min_area_fraction, bool) or not isinstance(min_area_fraction, (int, float, np.integer, np.floating)):
        raise ValueError(f"min_area_fraction must be a number, got {type(min_area_fraction).__name__}")
    if not 0.0 <= float(min_area_fraction) < 1.0:
        raise ValueError(f"min_area_fraction must be in [0, 1), got {min_area_fraction!r}")
    merge_distance = check_positive(merge_distance, "merge_distance")
    if isinstance(fill_window, bool) or not isinstance(fill_window, (int, np.integer)) or fill_window < 0:
        raise ValueError(f"fill_window must be a non-negative integer, got {fill_window!r}")
    if fill_window > 1 and fill_window % 2 == 0:
        raise ValueError(f"fill_window must be odd (or 0 / 1 to disable), got {fill_window}")
    return float(min_area_fraction), merge_distance


def segment_from_image(
    image: np.ndarray,
    min_area_fraction: float = DEFAULT_MIN_AREA_FRACTION,
    merge_distance: float = DEFAULT_MERGE_DISTANCE,
    *,
    fill_window: int = DEFAULT_FILL_WINDOW,
) -> Segmentation:
    """Recover the segments of a decoded mask image by colour clustering.

    1. Denoise (5x5 Gaussian, sigma 1). "Flat" pixels have a small local colour range (segment
       interiors); "stationary" pixels a small colour gradient (also the spine of a thin segment).
       Blended edge pixels are neither, so blends of segment colours never become colours of their own.
    2. Greedy mode seeking on the colour histogram of the flat pixels: the heaviest bin seeds a cluster
       that takes every bin within ``merge_distance`` of its mean-shifted centre; clusters closer than
       ``merge_distance`` merge. Stationary pixels that no colour and no blend of two colours explains
       add colours (small / thin segments).
    3. Assign every pixel of the (un-denoised) image to the nearest colour; uncertain pixels (far from
       their colour, or on an edge) take the nearest colour among the confident labels of their
       ``fill_window`` neighbourhood instead. Segments covering less than ``min_area_fraction`` of the
       pixels are dropped and the pixels assigned again.

    Deterministic (no randomness; ties resolve to the lowest index). A clean (un-blurred) mask image
    is segmented exactly.

    Args:
        image: (H, W, 3) uint8 or floating 0..255 mask image.
        min_area_fraction: smallest kept segment, as a fraction of the pixels, in [0, 1).
        merge_distance: colours closer than this (Euclidean, 0..255 RGB units) are one segment, > 0.
            The release encodes segment colours at least 64 apart, so the default 32 is half of that.
        fill_window: neighbourhood (odd, pixels) searched for confident labels; 0 or 1 disables the
            fill (plain nearest colour everywhere).

    Returns:
        A ``Segmentation``: (H, W) int32 labels 0..K-1 ordered by decreasing area (label 0 = largest
        segment) and (K, 3) uint8 representative colours.
    """
    pixels_hw3 = check_image(image)  # (H, W, 3) float32
    min_area_fraction, merge_distance = _check_segment_options(min_area_fraction, merge_distance, fill_window)
    min_area = min_area_fraction * pixels_hw3.shape[0] * pixels_hw3.shape[1]
    min_seed = max(float(MIN_SEED_PIXELS), SEED_FRACTION_OF_MIN_AREA * min_area)
    planes = np.ascontiguousarray(pixels_hw3.reshape(-1, RGB_CHANNELS).T)  # (3, N)

    denoised = cv2.GaussianBlur(pixels_hw3, (DENOISE_KERNEL, DENOISE_KERNEL), DENOISE_SIGMA)  # (H, W, 3)
    stationary = _stationary_mask(denoised, merge_distance)  # (H, W)
    centres = _candidate_colours(pixels_hw3, denoised, stationary, merge_distance, min_seed)  # (C, 3)
    while True:  # drop undersized segments until every kept one is large enough (at most C rounds)
        labels = _assign(planes, stationary, centres, merge_distance, fill_window)  # (H, W)
        areas = np.bincount(labels.ravel(), minlength=len(centres))  # (C,)
        keep = areas >= min_area
        keep[int(np.argmax(areas))] = True  # the largest segment always stays
        if keep.all():
            break
        centres = centres[keep]

    order = np.lexsort((np.arange(len(areas)), -areas))  # largest first, ties by index
    present = order[areas[order] > 0]  # min_area_fraction == 0 can keep a colour with no pixels
    relabel = np.zeros(len(centres), dtype=np.int32)
    relabel[present] = np.arange(len(present), dtype=np.int32)
    colours = np.clip(np.rint(centres[present]), 0, UINT8_MAX).astype(np.uint8)  # (K, 3)
    return Segmentation(labels=relabel[labels], colours=colours)
