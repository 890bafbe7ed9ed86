"""Tests of the modality processors (``mmgen_edge.sdk.processors``) and the evaluation metrics
(``mmgen_edge.samples.shapes.metrics``) against exact shapes-world ground truth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mmgen_edge.samples.shapes.encoding import encode_scene
from mmgen_edge.sdk.encoding import encode_depth, encode_mask, encode_normals
from mmgen_edge.samples.shapes.metrics import (
    FACING_CAMERA_NORMAL,
    MetricSummary,
    align_disparity,
    depth_metrics,
    match_segments,
    mean_metrics,
    normal_metrics,
    object_depth_metrics,
    object_mask,
    object_normal_metrics,
    object_segmentation_metrics,
    segment_iou_matrix,
    segmentation_metrics,
)
from mmgen_edge.samples.shapes.scenes import Scene, render_scene
from mmgen_edge.sdk.processors import (
    Segmentation,
    colourise_depth,
    colourise_normals,
    colourise_segmentation,
    depth_from_image,
    depth_to_points,
    normals_from_image,
    segment_from_image,
)

SIZE = 128
SMALL_SIZE = 64
SEEDS = (0, 1, 2, 3)
# Perfect predictions lose only the 8-bit quantisation (measured on seeds 0-5: AbsRel <= 0.003,
# delta1 == 1, normal mean error <= 0.27 deg).
PERFECT_MIN_DELTA1 = 0.99
PERFECT_MAX_ABS_REL = 0.02
PERFECT_MAX_NORMAL_DEG = 1.0
# Degraded predictions (measured on seeds 0-5: constant disparity delta1 0.09-0.36, AbsRel >= 0.31;
# normals all (0, 0, -1) mean error 43-52 deg; one segment mIoU 0.17-0.32).
DEGRADED_MAX_DELTA1 = 0.5
DEGRADED_MIN_ABS_REL = 0.2
DEGRADED_MIN_NORMAL_DEG = 20.0
DEGRADED_MAX_MIOU = 0.5
# VAE-like degradation of the mask image.
VAE_BLUR_SIGMA = 1.0
VAE_NOISE_STD = 6.0
VAE_MIN_MIOU = 0.9
ROBUST_SEEDS = (0, 3, 5, 7, 29)  # 3, 4, 5 and 7 segments


@pytest.fixture(scope="module")
def scenes() -> dict[int, Scene]:
    return {seed: render_scene(seed, SIZE) for seed in SEEDS}


def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """VAE-like: Gaussian blur (edges blend two colours) plus Gaussian colour noise, back to uint8."""
    blurred = cv2.GaussianBlur(image.astype(np.float32), (0, 0), VAE_BLUR_SIGMA)  # (H, W, 3)
    noisy = blurred + rng.normal(0.0, VAE_NOISE_STD, size=image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Perfect and degraded predictions
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_perfect_predictions_score_perfectly(scenes: dict[int, Scene], seed: int) -> None:
    scene = scenes[seed]
    encoded = encode_scene(scene, np.random.default_rng(seed))

    depth = depth_metrics(depth_from_image(encoded["depth"]), scene.depth)
    assert depth["delta1"] > PERFECT_MIN_DELTA1
    assert depth["abs_rel"] < PERFECT_MAX_ABS_REL

    normals = normal_metrics(normals_from_image(encoded["normal"]), scene.normals)
    assert normals["mean"] < PERFECT_MAX_NORMAL_DEG
    assert normals["pct_11_25"] == 1.0

    seg = segment_from_image(encoded["mask"])
    metrics = segmentation_metrics(seg.labels, scene.instances)
    assert metrics["miou"] == 1.0
    assert metrics["num_pred"] == metrics["num_true"] == len(np.unique(scene.instances))


@pytest.mark.parametrize("seed", SEEDS)
def test_degraded_predictions_score_worse(scenes: dict[int, Scene], seed: int) -> None:
    scene = scenes[seed]
    perfect_depth = depth_metrics(depth_from_image(encode_depth(scene.depth)), scene.depth)
    constant = depth_metrics(np.full(scene.depth.shape, 0.5, dtype=np.float32), scene.depth)
    assert constant["delta1"] < DEGRADED_MAX_DELTA1 < perfect_depth["delta1"]
    assert constant["abs_rel"] > DEGRADED_MIN_ABS_REL > perfect_depth["abs_rel"]
    assert constant["rmse"] > perfect_depth["rmse"]

    facing = np.zeros_like(scene.normals)
    facing[..., 2] = -1.0
    flat = normal_metrics(facing, scene.normals)
    assert flat["mean"] > DEGRADED_MIN_NORMAL_DEG
    assert flat["pct_11_25"] < 1.0

    one_segment = segmentation_metrics(np.zeros(scene.instances.shape, dtype=np.int32), scene.instances)
    assert one_segment["miou"] < DEGRADED_MAX_MIOU
    assert one_segment["num_pred"] == 1.0


# --------------------------------------------------------------------------------------------------
# Object regions
# --------------------------------------------------------------------------------------------------


def test_object_metrics_of_perfect_predictions(scenes: dict[int, Scene]) -> None:
    scene = scenes[0]
    disparity = 3.0 / scene.depth.astype(np.float64) + 0.5  # any scale and shift
    depth = object_depth_metrics(disparity, scene.depth, scene.instances)
    assert depth["delta1"] == 1.0 and depth["abs_rel"] < 1e-9
    normals = object_normal_metrics(scene.normals, scene.normals, scene.instances)
    assert normals["mean"] < 1e-3 and normals["pct_11_25"] == 1.0
    relabelled = np.where(scene.instances > 0, scene.instances + 10, 3).astype(np.int32)  # ids need not match
    assert object_segmentation_metrics(relabelled, scene.instances)["miou"] == 1.0


def test_object_mask_excludes_ground_and_walls(scenes: dict[int, Scene]) -> None:
    scene = scenes[1]
    mask = object_mask(scene.instances)
    np.testing.assert_array_equal(mask, scene.instances > 0)
    assert 0 < mask.mean() < 0.5  # objects are a minority of the pixels
    # Wrong on every background pixel, right on the objects: the object metrics are perfect.
    wrong_background = np.where(mask[..., None], scene.normals, -scene.normals)
    assert object_normal_metrics(wrong_background, scene.normals, scene.instances)["mean"] < 1e-3
    assert normal_metrics(wrong_background, scene.normals)["mean"] > 90.0
    with pytest.raises(ValueError, match="no object pixel"):
        object_mask(np.zeros((4, 4), np.int32))


def test_facing_camera_normal_scores_exactly_its_angle_on_objects(scenes: dict[int, Scene]) -> None:
    scene = scenes[2]
    facing = np.asarray(FACING_CAMERA_NORMAL)
    object_normals = scene.normals[scene.instances > 0].astype(np.float64)  # (M, 3)
    assert facing @ object_normals.mean(axis=0) > 0.5  # the sign convention: rendered normals face the camera, n_z < 0
    expected = np.degrees(np.arccos(np.clip(object_normals @ facing / np.linalg.norm(object_normals, axis=1), -1, 1)))
    constant = np.broadcast_to(facing, scene.normals.shape)
    metrics = object_normal_metrics(constant, scene.normals, scene.instances)
    assert metrics["mean"] == pytest.approx(expected.mean(), abs=1e-9)
    assert metrics["median"] == pytest.approx(np.median(expected), abs=1e-9)


def test_object_depth_uses_the_whole_image_alignment() -> None:
    depth = np.full((10, 10), 4.0)
    instances = np.zeros((10, 10), np.int32)
    instances[4:6, 4:6] = 1  # 4 object pixels at 2 m
    depth[instances > 0] = 2.0
    pred = 1.0 / depth
    pred[instances > 0] = 0.25  # the object predicted at the room's depth
    whole = depth_metrics(pred, depth)
    objects = object_depth_metrics(pred, depth, instances)
    # pred is constant: the whole-image fit is the mean true disparity 0.26, dominated by the 96 background
    # pixels, so the object stays almost 2x too far.
    assert whole["delta1"] == pytest.approx(0.96)
    assert objects["delta1"] == 0.0 and objects["abs_rel"] == pytest.approx((1.0 / 0.26) / 2.0 - 1.0)
    # Fitting on the object pixels alone would have hidden it (pred is constant there: min-norm fit = truth).
    assert depth_metrics(pred, depth, valid=instances > 0)["delta1"] == 1.0
    assert depth_metrics(pred, depth, region=instances > 0) == objects


def test_object_miou_averages_over_objects_and_never_credits_the_background() -> None:
    truth = np.zeros((8, 8), np.int32)
    truth[:2, :2] = 1  # 4 px
    truth[6:, 6:] = 2  # 4 px
    one_segment = np.zeros_like(truth)
    assert object_segmentation_metrics(one_segment, truth)["miou"] == 0.0  # matched to the background
    pred = truth.copy()
    pred[6:, 6:] = 0  # object 2 missed
    assert object_segmentation_metrics(pred, truth)["miou"] == pytest.approx(0.5)
    pred[1, 1] = 0  # object 1 at IoU 3/4
    assert object_segmentation_metrics(pred, truth)["miou"] == pytest.approx(0.375)
    assert segmentation_metrics(pred, truth)["miou"] < 1.0


# --------------------------------------------------------------------------------------------------
# Depth alignment
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "shift"), [(1.0, 0.0), (3.5, -0.7), (0.02, 12.0)])
def test_alignment_is_invariant_to_scale_and_shift(scenes: dict[int, Scene], scale: float, shift: float) -> None:
    depth = scenes[0].depth
    true_disparity = 1.0 / depth.astype(np.float64)
    pred = scale * true_disparity + shift
    np.testing.assert_allclose(align_disparity(pred, depth), true_disparity, rtol=1e-9, atol=1e-12)
    metrics = depth_metrics(pred, depth)
    assert metrics["delta1"] == 1.0
    assert metrics["abs_rel"] < 1e-9
    assert metrics["rmse"] < 1e-8


def test_alignment_uses_only_valid_pixels(scenes: dict[int, Scene]) -> None:
    depth = scenes[1].depth
    pred = 2.0 / depth.astype(np.float64) + 1.0
    valid = np.ones(depth.shape, dtype=bool)
    valid[:, : depth.shape[1] // 4] = False
    pred[~valid] = 100.0  # garbage outside the mask must not affect the fit
    metrics = depth_metrics(pred, depth, valid=valid)
    assert metrics["abs_rel"] < 1e-9
    assert depth_metrics(pred, depth)["abs_rel"] > DEGRADED_MIN_ABS_REL


# --------------------------------------------------------------------------------------------------
# Segmentation of degraded masks
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ROBUST_SEEDS)
def test_segmentation_is_robust_to_vae_like_degradation(seed: int) -> None:
    scene = render_scene(seed, SIZE)
    rng = np.random.default_rng(seed)
    degraded = _degrade(encode_mask(scene.instances, rng), rng)
    seg = segment_from_image(degraded)
    metrics = segmentation_metrics(seg.labels, scene.instances)
    assert metrics["miou"] > VAE_MIN_MIOU
    assert seg.num_segments == len(np.unique(scene.instances))


def test_segmentation_of_a_clean_small_mask_is_exact() -> None:
    # 64 px scenes hold slivers only 2-3 px high (seed 50) and objects of ~20 px (seed 15).
    for seed in (15, 50):
        scene = render_scene(seed, SMALL_SIZE)
        seg = segment_from_image(encode_mask(scene.instances, np.random.default_rng(seed)))
        assert segmentation_metrics(seg.labels, scene.instances)["miou"] == 1.0


def test_segmentation_output_contract(scenes: dict[int, Scene]) -> None:
    scene = scenes[2]
    mask = _degrade(encode_mask(scene.instances, np.random.default_rng(2)), np.random.default_rng(7))
    seg = segment_from_image(mask)
    again = segment_from_image(mask.copy())
    np.testing.assert_array_equal(seg.labels, again.labels)  # deterministic
    np.testing.assert_array_equal(seg.colours, again.colours)
    assert seg.labels.dtype == np.int32 and seg.labels.shape == mask.shape[:2]
    assert seg.colours.dtype == np.uint8 and seg.colours.shape == (seg.num_segments, 3)
    areas = np.bincount(seg.labels.ravel(), minlength=seg.num_segments)
    assert np.all(areas > 0)
    assert np.all(np.diff(areas) <= 0)  # label 0 = largest
    # each representative colour is the colour the encoder painted on the matching instance
    clean = encode_mask(scene.instances, np.random.default_rng(2))
    for label in range(seg.num_segments):
        majority = np.bincount(scene.instances[seg.labels == label]).argmax()
        painted = clean[scene.instances == majority][0].astype(float)
        assert np.linalg.norm(seg.colours[label] - painted) < VAE_NOISE_STD


def test_segmentation_drops_small_spurious_blobs() -> None:
    image = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    image[:] = (200, 40, 40)
    image[20:80, 30:90] = (30, 200, 60)
    image[100:103, 100:103] = (20, 20, 230)  # 9 px < 0.002 * 128 * 128 = 32.8 px
    seg = segment_from_image(image)
    assert seg.num_segments == 2
    # the blob is nearer the object colour, but its pixels are uncertain and take the surrounding label
    assert seg.labels[101, 101] == 0
    np.testing.assert_array_equal(seg.colours, [[200, 40, 40], [30, 200, 60]])
    kept = segment_from_image(image, min_area_fraction=0.0)
    assert kept.num_segments == 3


# --------------------------------------------------------------------------------------------------
# Hungarian matching
# --------------------------------------------------------------------------------------------------


def test_permuted_label_ids_give_the_same_miou(scenes: dict[int, Scene]) -> None:
    scene = scenes[3]
    pred = _degrade(encode_mask(scene.instances, np.random.default_rng(3)), np.random.default_rng(3))
    labels = segment_from_image(pred).labels
    permutation = np.random.default_rng(0).permutation(labels.max() + 1) * 7 + 3  # arbitrary sparse ids
    base = segmentation_metrics(labels, scene.instances)
    permuted = segmentation_metrics(permutation[labels], scene.instances)
    assert permuted == base


def test_a_predicted_segment_cannot_be_matched_twice() -> None:
    truth = np.zeros((8, 8), dtype=np.int32)
    truth[:, 4:] = 1  # two instances of 32 px each
    one_segment = np.zeros_like(truth)
    # the single segment has IoU 0.5 with both; matched to one, the other scores 0
    assert segmentation_metrics(one_segment, truth)["miou"] == pytest.approx(0.25)

    iou = np.array([[0.9, 0.8, 0.1], [0.85, 0.2, 0.1]])  # (2 predicted, 3 true)
    rows, cols = match_segments(iou)
    assert len(set(rows.tolist())) == len(rows) == 2
    assert len(set(cols.tolist())) == len(cols) == 2
    assert iou[rows, cols].sum() == pytest.approx(0.8 + 0.85)  # not 0.9 + 0.85 (row 0 twice)


def test_iou_matrix_counts_background_as_an_instance() -> None:
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=np.int32)
    pred = np.array([[5, 5, 5, 2], [5, 5, 5, 2]], dtype=np.int64)
    iou, pred_ids, true_ids = segment_iou_matrix(pred, truth)
    np.testing.assert_array_equal(pred_ids, [2, 5])
    np.testing.assert_array_equal(true_ids, [0, 1])
    np.testing.assert_allclose(iou, [[0.0, 0.5], [4 / 6, 2 / 8]])  # id 5: 6 px, 2 of them on instance 1
    assert segmentation_metrics(pred, truth)["miou"] == pytest.approx((4 / 6 + 0.5) / 2)


# --------------------------------------------------------------------------------------------------
# Processors: decoding, visualisation, back-projection
# --------------------------------------------------------------------------------------------------


def test_depth_and_normal_decoding(scenes: dict[int, Scene]) -> None:
    scene = scenes[0]
    grey = encode_depth(scene.depth)
    disparity = depth_from_image(grey)
    assert disparity.dtype == np.float32 and disparity.shape == scene.depth.shape
    assert disparity.min() == 0.0 and disparity.max() == 1.0
    np.testing.assert_allclose(disparity, grey[..., 0] / 255.0, atol=1e-6)

    encoded = encode_normals(scene.normals)
    normals = normals_from_image(encoded)
    assert normals.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-5)
    assert np.abs(colourise_normals(normals).astype(int) - encoded).max() <= 1
    np.testing.assert_array_equal(normals_from_image(np.full((2, 2, 3), 127.5)), np.tile([0.0, 0.0, -1.0], (2, 2, 1)))


def test_colourisers() -> None:
    ramp = np.linspace(0.0, 1.0, 16, dtype=np.float32)[None, :]  # (1, 16)
    rgb = colourise_depth(ramp)
    assert rgb.shape == (1, 16, 3) and rgb.dtype == np.uint8
    ends = cv2.applyColorMap(np.array([[0, 255]], dtype=np.uint8), cv2.COLORMAP_INFERNO)  # (1, 2, 3) BGR
    expected = cv2.cvtColor(ends, cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(rgb[:, [0, -1]], expected)

    labels = np.arange(8, dtype=np.int32).reshape(2, 4)
    colours = colourise_segmentation(labels, seed=3)
    palette = colours.reshape(-1, 3).astype(float)
    distances = np.linalg.norm(palette[:, None] - palette[None], axis=-1)[np.triu_indices(8, 1)]
    assert distances.min() > 64.0  # well separated
    np.testing.assert_array_equal(colourise_segmentation(labels, seed=3), colours)
    seg = Segmentation(labels=labels, colours=np.zeros((8, 3), dtype=np.uint8))
    np.testing.assert_array_equal(colourise_segmentation(seg, seed=3), colours)


def test_depth_to_points_fronto_parallel_plane() -> None:
    height, width, z = 24, 32, 2.0
    fx, fy, cx, cy = 50.0, 40.0, 15.5, 11.5
    points = depth_to_points(np.full((height, width), z, dtype=np.float32), fx, fy, cx, cy)
    assert points.shape == (height, width, 3) and points.dtype == np.float32
    np.testing.assert_allclose(points[..., 2], z)
    np.testing.assert_allclose(np.diff(points[..., 0], axis=1), z / fx, rtol=1e-5)
    np.testing.assert_allclose(np.diff(points[..., 1], axis=0), z / fy, rtol=1e-5)
    np.testing.assert_allclose(points[0, 0], [(0 - cx) / fx * z, (0 - cy) / fy * z, z], rtol=1e-6)


def test_depth_to_points_of_a_scene_reproduces_its_normals(scenes: dict[int, Scene]) -> None:
    scene = scenes[0]
    k = scene.intrinsics
    points = depth_to_points(scene.depth, k.fx, k.fy, k.cx, k.cy).astype(np.float64)  # (H, W, 3)
    # cross product of the finite differences on the back wall / ground: parallel to the true normal
    du = points[1:-1, 2:] - points[1:-1, :-2]
    dv = points[2:, 1:-1] - points[:-2, 1:-1]
    normal = np.cross(dv, du)
    inner = scene.instances[1:-1, 1:-1]
    same = np.ones(inner.shape, dtype=bool)
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        same &= scene.instances[1 + dy : scene.depth.shape[0] - 1 + dy, 1 + dx : scene.depth.shape[1] - 1 + dx] == inner
    errors = normal_metrics(normal[same][None], scene.normals[1:-1, 1:-1][same][None])
    assert errors["median"] < 1.0


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------

GOOD_IMAGE = np.zeros((8, 8, 3), dtype=np.uint8)
NAN_IMAGE = np.full((8, 8, 3), np.nan, dtype=np.float32)
INT_LABELS = np.ones((4, 4), dtype=np.int32)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: depth_from_image(np.zeros((8, 8), dtype=np.uint8)), r"image must have 3 dimensions"),
        (lambda: depth_from_image(np.zeros((8, 8, 4), dtype=np.uint8)), r"image must have 3 channels"),
        (lambda: depth_from_image(np.zeros((0, 8, 3), dtype=np.uint8)), r"image must not be empty"),
        (lambda: normals_from_image(np.zeros((8, 8, 3), dtype=np.int64)), r"image must be uint8 or floating.*int64"),
        (lambda: normals_from_image(NAN_IMAGE), r"image contains NaN"),
        (lambda: segment_from_image([[0, 0, 0]]), r"image must be a numpy array"),
        (lambda: segment_from_image(NAN_IMAGE), r"image contains NaN"),
        (lambda: segment_from_image(GOOD_IMAGE, merge_distance=0.0), r"merge_distance must be finite and > 0"),
        (lambda: segment_from_image(GOOD_IMAGE, min_area_fraction=1.5), r"min_area_fraction must be in \[0, 1\)"),
        (lambda: segment_from_image(GOOD_IMAGE, fill_window=4), r"fill_window must be odd"),
        (lambda: colourise_depth(np.zeros((8, 8, 3))), r"disparity must have 2 dimensions"),
        (lambda: colourise_depth(np.zeros((8, 8)), colormap=-1), r"colormap must be"),
        (lambda: colourise_normals(np.zeros((8, 8))), r"normals must have 3 dimensions"),
        (lambda: colourise_segmentation(np.full((4, 4), -1)), r"seg must be >= 0"),
        (lambda: colourise_segmentation(np.zeros((4, 4), dtype=np.float32)), r"seg must have an integer dtype"),
        (lambda: depth_to_points(np.ones((4, 4)), 0.0, 1.0, 0.0, 0.0), r"fx must be finite and > 0"),
        (lambda: depth_to_points(np.ones((4, 4, 1)), 1.0, 1.0, 0.0, 0.0), r"depth must have 2 dimensions"),
        (lambda: depth_to_points(np.full((4, 4), np.nan), 1.0, 1.0, 0.0, 0.0), r"depth contains NaN"),
        (lambda: depth_to_points(-np.ones((4, 4)), 1.0, 1.0, 0.0, 0.0), r"depth must be >= 0"),
        (
            lambda: Segmentation(labels=np.full((2, 2), 3, dtype=np.int32), colours=GOOD_IMAGE[0, :2]),
            r"colours has only 2",
        ),
    ],
)
def test_processors_reject_bad_input(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: align_disparity(np.ones((4, 4)), np.ones((4, 5))), r"pred .* and gt_depth .* same"),
        (lambda: align_disparity(np.ones((4, 4)), np.zeros((4, 4))), r"gt_depth must be > 0"),
        (lambda: depth_metrics(np.ones((4, 4)), np.ones((4, 4)), valid=np.ones((4, 4))), r"valid must be a boolean"),
        (lambda: normal_metrics(np.ones((4, 4, 2)), np.ones((4, 4, 3))), r"pred must have shape \(H, W, 3\)"),
        (lambda: segmentation_metrics(np.ones((4, 4)), INT_LABELS), r"pred_labels must have an integer"),
        (lambda: segmentation_metrics(INT_LABELS, -INT_LABELS), r"gt_instances must be >= 0"),
        (lambda: depth_metrics(np.ones((4, 4)), np.ones((4, 4)), region=np.zeros((4, 4), bool)), r"region must select"),
        (lambda: object_segmentation_metrics(INT_LABELS, np.zeros_like(INT_LABELS)), r"no object pixel"),
        (lambda: mean_metrics([]), r"at least one"),
        (lambda: mean_metrics([{"a": 1.0}, {"b": 2.0}]), r"keys"),
    ],
)
def test_metrics_reject_bad_input(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        call()


def test_mean_metrics() -> None:
    items = [{"miou": 1.0, "num_pred": 3.0}, {"miou": 0.5, "num_pred": 5.0}]
    assert mean_metrics(items) == {"miou": 0.75, "num_pred": 4.0}
    summary = MetricSummary()
    for item in items:
        summary.add(item)
    assert summary.count == 2 and summary.mean() == mean_metrics(items)
