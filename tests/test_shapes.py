"""Tests of the synthetic shapes world (renderer + release-exact modality encoding)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mmgen_edge import MODALITIES
from mmgen_edge.samples.shapes.encoding import encode_scene, modality_stack
from mmgen_edge.sdk.encoding import MIN_MASK_COLOUR_DISTANCE, encode_depth, encode_mask, encode_normals
from mmgen_edge.sdk.processors import normals_from_image as decode_normals
from mmgen_edge.samples.shapes.scenes import (
    CATEGORY_KINDS,
    CATEGORY_NAMES,
    CATEGORY_OBJECT_COUNTS,
    NUM_CATEGORIES,
    PRIMITIVE_KINDS,
    Scene,
    render_scene,
    render_scenes,
)

SIZE = 128
NUM_CATEGORY_SEEDS = 300
NUM_GEOMETRY_SEEDS = 40
# Measured on seeds 0..39 at 128 px: per-scene median <= 0.014 deg; per-kind medians 0.006 (box) to
# 0.12 deg (sphere). Reporting fx 2 % off raises the per-kind medians to 0.3-0.5 deg.
MAX_MEDIAN_ANGLE_DEG = 0.1  # per scene, pixels whose 3x3 neighbourhood is one instance
MAX_OBJECT_MEDIAN_ANGLE_DEG = 0.3  # per primitive kind over the scenes, same pixels
UNIT_TOL = 1e-4
ROUND_TRIP_MAX_DEG = 1.0


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return render_scenes(range(NUM_CATEGORY_SEEDS), SIZE)


def _pixel_rays(scene: Scene) -> np.ndarray:
    """(H, W, 3) camera-space rays (x, y, 1) through the pixel centres."""
    h, w = scene.depth.shape
    k = scene.intrinsics
    u = np.broadcast_to(np.arange(w, dtype=np.float64)[None, :], (h, w))
    v = np.broadcast_to(np.arange(h, dtype=np.float64)[:, None], (h, w))
    return np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones((h, w))], axis=-1)


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((a * b).sum(axis=-1), -1.0, 1.0)))


def _finite_difference_normals(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Normals (H-2, W-2, 3) from central differences of back-projected depth, and the interior mask
    of pixels whose 3x3 neighbourhood lies in one instance."""
    points = _pixel_rays(scene) * scene.depth[..., None].astype(np.float64)  # (H, W, 3)
    d_u = points[1:-1, 2:] - points[1:-1, :-2]  # (H-2, W-2, 3)
    d_v = points[2:, 1:-1] - points[:-2, 1:-1]
    normals = np.cross(d_u, d_v)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    facing = np.sign((normals * points[1:-1, 1:-1]).sum(axis=-1, keepdims=True))
    normals *= -facing  # orient toward the camera
    inst = scene.instances
    same = ndimage.minimum_filter(inst, size=3) == ndimage.maximum_filter(inst, size=3)
    return normals, same[1:-1, 1:-1]


# ---------------------------------------------------------------------------------------------
# Determinism and validation
# ---------------------------------------------------------------------------------------------


def test_same_seed_identical_different_seeds_differ() -> None:
    a, b, c = render_scene(7), render_scene(7), render_scene(8)
    for name in ("rgb", "depth", "normals", "instances"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.category, a.intrinsics, a.object_kinds) == (b.category, b.intrinsics, b.object_kinds)
    assert not np.array_equal(a.rgb, c.rgb)
    assert not np.array_equal(a.depth, c.depth)


def test_a_seed_whose_first_view_fits_no_layout_draws_another_view() -> None:
    """Held-out seed 1 012 730's first camera fit no layout in 64 tries: ``eval --scenes 12731`` failed after a
    minute. Such a seed now draws another view from the same generator, so every seed renders, all objects visible."""
    from mmgen_edge.samples.shapes.scenes import render_scene as render

    scene = render(1_012_730, 64)
    assert len(scene.object_kinds) >= 1
    assert set(np.unique(scene.instances)) == set(range(len(scene.object_kinds) + 1))  # background + every object


def test_render_scenes_matches_render_scene() -> None:
    batch = render_scenes([3, 4], 64)
    for scene, seed in zip(batch, (3, 4)):
        single = render_scene(seed, 64)
        assert scene.seed == seed
        np.testing.assert_array_equal(scene.rgb, single.rgb)


def test_scene_does_not_depend_on_size() -> None:
    small, large = render_scene(11, 64), render_scene(11, 128)
    assert small.category == large.category and small.object_kinds == large.object_kinds
    assert large.intrinsics.fx == pytest.approx(2 * small.intrinsics.fx)
    # the centre pixel sees (almost) the same depth at both sizes
    assert small.depth[32, 32] == pytest.approx(large.depth[64, 64], rel=0.1)


@pytest.mark.parametrize("size", [0, -8, 100, 12, 64.0, True])
def test_bad_size_rejected(size: object) -> None:
    with pytest.raises(ValueError, match="size"):
        render_scene(0, size)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 1.5, "3"])
def test_bad_seed_rejected(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        render_scene(seed)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed"):
        render_scenes([0, seed])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------
# Arrays: shapes, dtypes, ranges
# ---------------------------------------------------------------------------------------------


def test_shapes_dtypes_ranges(scenes: list[Scene]) -> None:
    for scene in scenes[:60]:
        assert scene.rgb.shape == (SIZE, SIZE, 3) and scene.rgb.dtype == np.uint8
        assert scene.depth.shape == (SIZE, SIZE) and scene.depth.dtype == np.float32
        assert scene.normals.shape == (SIZE, SIZE, 3) and scene.normals.dtype == np.float32
        assert scene.instances.shape == (SIZE, SIZE) and scene.instances.dtype == np.int32
        assert 0 <= scene.category < NUM_CATEGORIES
        assert np.all(np.isfinite(scene.depth)) and scene.depth.min() > 0.0
        assert np.abs(np.linalg.norm(scene.normals, axis=-1) - 1.0).max() < UNIT_TOL
        assert scene.rgb.std() > 5.0  # not a flat image


def test_normals_face_the_camera(scenes: list[Scene]) -> None:
    for scene in scenes[:60]:
        facing = (scene.normals * _pixel_rays(scene)).sum(axis=-1)  # dot(n, ray)
        assert facing.max() <= 1e-6
        assert np.median(scene.normals[..., 2]) < 0.0


def test_intrinsics_are_plausible(scenes: list[Scene]) -> None:
    for scene in scenes[:60]:
        k = scene.intrinsics
        assert k.fx == k.fy and SIZE * 0.5 < k.fx < SIZE * 1.5
        assert abs(k.cx - (SIZE - 1) / 2) < 0.05 * SIZE and abs(k.cy - (SIZE - 1) / 2) < 0.05 * SIZE


# ---------------------------------------------------------------------------------------------
# Geometry: depth and normals agree (key correctness test)
# ---------------------------------------------------------------------------------------------


def test_depth_and_normals_agree(scenes: list[Scene]) -> None:
    per_kind: dict[str, list[np.ndarray]] = {kind: [] for kind in PRIMITIVE_KINDS}
    for scene in scenes[:NUM_GEOMETRY_SEEDS]:
        fd_normals, smooth = _finite_difference_normals(scene)
        angles = _angles_deg(fd_normals, scene.normals[1:-1, 1:-1].astype(np.float64))  # (H-2, W-2)
        assert np.median(angles[smooth]) < MAX_MEDIAN_ANGLE_DEG, f"seed {scene.seed}"
        inner_ids = scene.instances[1:-1, 1:-1]
        for index, kind in enumerate(scene.object_kinds, start=1):
            per_kind[kind].append(angles[smooth & (inner_ids == index)])
    for kind, chunks in per_kind.items():
        values = np.concatenate(chunks)
        assert values.size > 500, f"too few smooth {kind} pixels to test"
        assert np.median(values) < MAX_OBJECT_MEDIAN_ANGLE_DEG, kind


def _ground_mask(scene: Scene) -> np.ndarray:
    """Background pixels facing up (the ground normal has a large -y component; walls do not)."""
    return (scene.instances == 0) & (scene.normals[..., 1] < -0.5)


def test_ground_points_lie_on_one_plane(scenes: list[Scene]) -> None:
    """Back-projected ground pixels share one plane whose normal is the rendered ground normal."""
    for scene in scenes[:20]:
        points = _pixel_rays(scene) * scene.depth[..., None].astype(np.float64)  # (H, W, 3)
        ground = _ground_mask(scene)
        assert ground.sum() > 100
        normals = scene.normals[ground].astype(np.float64)  # (N, 3)
        assert np.ptp(normals, axis=0).max() < 1e-6  # one constant normal
        offsets = points[ground] @ normals[0]  # (N,) = -camera height for every ground point
        assert offsets.max() < 0.0
        assert offsets.std() < 1e-4 * np.abs(offsets).mean()


# ---------------------------------------------------------------------------------------------
# Categories and content
# ---------------------------------------------------------------------------------------------


def test_every_category_reachable(scenes: list[Scene]) -> None:
    seen = {scene.category for scene in scenes}
    assert seen == set(range(NUM_CATEGORIES)), sorted(set(range(NUM_CATEGORIES)) - seen)
    assert len(CATEGORY_NAMES) == NUM_CATEGORIES and 8 <= NUM_CATEGORIES <= 16


def test_category_content_matches(scenes: list[Scene]) -> None:
    for scene in scenes:
        n = len(scene.object_kinds)
        low, high = CATEGORY_OBJECT_COUNTS[scene.category]
        assert low <= n <= high, (scene.seed, CATEGORY_NAMES[scene.category])
        kinds = CATEGORY_KINDS[scene.category]
        if kinds is not None:
            assert scene.object_kinds == kinds
        # every object of the category is visible, nothing else is labelled
        ids = np.unique(scene.instances)
        assert ids.tolist() == list(range(n + 1)), (scene.seed, ids)


def test_objects_rest_on_the_ground(scenes: list[Scene]) -> None:
    """No object point lies below the ground plane, and the objects reach down to it."""
    checked = 0
    for scene in scenes[:60]:
        points = _pixel_rays(scene) * scene.depth[..., None].astype(np.float64)  # (H, W, 3)
        ground = _ground_mask(scene)
        down = -scene.normals[ground][0].astype(np.float64)  # (3,) unit vector toward the ground
        camera_height = np.median(points[ground] @ down)
        lowest = camera_height  # lowest visible object point over the scene, as height above ground
        for index in range(1, len(scene.object_kinds) + 1):
            heights = camera_height - points[scene.instances == index] @ down  # (N,) metres above ground
            assert heights.min() >= -1e-3, (scene.seed, index)
            lowest = min(lowest, heights.min())
            checked += 1
        assert lowest < 0.2, scene.seed  # something visibly stands on the floor
    assert checked > 60


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def test_encode_depth_is_normalised_monotone_disparity(scenes: list[Scene]) -> None:
    for scene in scenes[:10]:
        encoded = encode_depth(scene.depth)
        assert encoded.shape == (SIZE, SIZE, 3) and encoded.dtype == np.uint8
        assert np.array_equal(encoded[..., 0], encoded[..., 1]) and np.array_equal(encoded[..., 0], encoded[..., 2])
        grey = encoded[..., 0].ravel().astype(np.int64)
        assert grey.min() == 0 and grey.max() == 255
        order = np.argsort(scene.depth.ravel(), kind="stable")  # near -> far
        assert np.all(np.diff(grey[order]) <= 0)  # nearer = brighter
        assert grey[np.argmin(scene.depth)] == 255 and grey[np.argmax(scene.depth)] == 0
    depth = np.array([[1.0, 2.0], [4.0, 1.0]])
    expected = np.rint((1 / depth - 0.25) / 0.75 * 255)
    np.testing.assert_array_equal(encode_depth(depth)[..., 0], expected)
    with pytest.raises(ValueError, match="depth"):
        encode_depth(np.zeros((4, 4)))


def test_normals_round_trip_and_known_values(scenes: list[Scene]) -> None:
    for scene in scenes[:10]:
        encoded = encode_normals(scene.normals)
        assert encoded.shape == (SIZE, SIZE, 3) and encoded.dtype == np.uint8
        decoded = decode_normals(encoded)
        assert decoded.dtype == np.float32
        assert np.abs(np.linalg.norm(decoded, axis=-1) - 1).max() < UNIT_TOL
        errors = _angles_deg(decoded.astype(np.float64), scene.normals.astype(np.float64))
        assert errors.max() < ROUND_TRIP_MAX_DEG
    known = np.array([[[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]])  # (1, 3, 3)
    np.testing.assert_array_equal(encode_normals(known), [[[128, 128, 0], [255, 128, 128], [128, 0, 128]]])
    assert np.allclose(decode_normals(encode_normals(known).astype(np.float64)), known, atol=1e-2)


def _check_mask(instances: np.ndarray, mask: np.ndarray) -> None:
    ids = np.unique(instances)
    colours = {}
    for index in ids:
        pixels = mask[instances == index]
        assert len(np.unique(pixels, axis=0)) == 1, f"segment {index} has several colours"
        colours[int(index)] = tuple(pixels[0])
    assert len(set(colours.values())) == len(ids)
    assert len(np.unique(mask.reshape(-1, 3), axis=0)) == len(ids)


def test_encode_mask_segments(scenes: list[Scene]) -> None:
    for scene in scenes[:30]:
        mask = encode_mask(scene.instances, np.random.default_rng(scene.seed))
        assert mask.shape == (SIZE, SIZE, 3) and mask.dtype == np.uint8
        _check_mask(scene.instances, mask)
        palette = np.unique(mask.reshape(-1, 3), axis=0).astype(np.float64)
        gaps = np.linalg.norm(palette[:, None] - palette[None], axis=-1) + np.eye(len(palette)) * 1e9
        assert gaps.min() >= MIN_MASK_COLOUR_DISTANCE  # few segments: no relaxation needed
    again = encode_mask(scenes[0].instances, np.random.default_rng(scenes[0].seed))
    np.testing.assert_array_equal(again, encode_mask(scenes[0].instances, np.random.default_rng(scenes[0].seed)))


def test_encode_mask_paints_largest_first_and_many_segments() -> None:
    instances = np.zeros((16, 16), dtype=np.int32)
    instances[:2, :2] = 1  # small
    instances[8:, 8:] = 2  # large
    swapped = np.where(instances == 1, 2, np.where(instances == 2, 1, 0)).astype(np.int32)
    a = encode_mask(instances, np.random.default_rng(5))
    b = encode_mask(swapped, np.random.default_rng(5))
    # colours follow area order, not ids: the same regions get the same colours
    np.testing.assert_array_equal(a, b)
    many = np.arange(24 * 24, dtype=np.int64).reshape(24, 24)  # 576 segments force threshold relaxation
    _check_mask(many, encode_mask(many, np.random.default_rng(0)))
    with pytest.raises(ValueError, match="instances"):
        encode_mask(-instances, np.random.default_rng(0))


def test_encode_mask_with_a_palette_paints_its_colours_in_paint_order_then_random_ones() -> None:
    palette = ((128, 128, 128), (230, 25, 75), (60, 180, 75))
    instances = np.zeros((16, 16), dtype=np.int32)
    instances[:2, :2] = 1  # smallest
    instances[4:8, 4:8] = 2  # middle
    instances[8:, 8:] = 3  # largest
    mask = encode_mask(instances, np.random.default_rng(5), palette)
    assert tuple(mask[0, 15]) == palette[0]  # background
    assert tuple(mask[15, 15]) == palette[1]  # the largest segment first
    assert tuple(mask[5, 5]) == palette[2]
    extra = mask[0, 0].astype(np.float64)  # beyond the palette: a random colour, far from every used one
    assert min(np.linalg.norm(extra - np.asarray(c)) for c in palette) >= MIN_MASK_COLOUR_DISTANCE
    _check_mask(instances, mask)
    # the seed changes only the colours beyond the palette
    other = encode_mask(instances, np.random.default_rng(6), palette)
    np.testing.assert_array_equal(other[instances != 1], mask[instances != 1])
    for bad in ([(0, 0, 0)], [(0, 0, 0), (10, 10, 10)], [(0, 0, 0), (0, 0, 256)], [(0, 0, 0), (0, 0, 200.5)]):
        with pytest.raises(ValueError, match="mask_palette"):
            encode_mask(instances, np.random.default_rng(0), bad)


def test_the_demo_mask_palette_is_valid_and_covers_every_category(scenes: list[Scene]) -> None:
    from mmgen_edge.config import check_mask_palette
    from mmgen_edge.samples.shapes.encoding import MASK_PALETTE
    from mmgen_edge.samples.shapes.scenes import CATEGORY_OBJECT_COUNTS

    assert check_mask_palette(MASK_PALETTE) == MASK_PALETTE
    assert len(MASK_PALETTE) - 1 >= max(high for _, high in CATEGORY_OBJECT_COUNTS)  # every object a palette colour
    for scene in scenes[:10]:
        mask = encode_scene(scene, np.random.default_rng(0), MASK_PALETTE)["mask"]
        _check_mask(scene.instances, mask)
        assert {tuple(c) for c in np.unique(mask.reshape(-1, 3), axis=0)} <= set(MASK_PALETTE)


def test_encode_scene_and_stack(scenes: list[Scene]) -> None:
    scene = scenes[0]
    encoded = encode_scene(scene, np.random.default_rng(1))
    assert tuple(encoded) == MODALITIES == ("rgb", "depth", "normal", "mask")
    for image in encoded.values():
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    stack = modality_stack(scene, np.random.default_rng(1))
    assert stack.shape == (4, SIZE, SIZE, 3) and stack.dtype == np.uint8
    for slot, name in enumerate(MODALITIES):
        np.testing.assert_array_equal(stack[slot], encoded[name])
    np.testing.assert_array_equal(stack[0], scene.rgb)


# ---------------------------------------------------------------------------------------------
# Object counting (generation fidelity)
# ---------------------------------------------------------------------------------------------

COUNT_SEEDS = range(1_000_000, 1_000_120)  # held-out seeds (measured: 600 / 600 counted right through segment_from_image)
MIN_COUNT_ACCURACY = 0.98


def test_object_counter_finds_the_true_count_on_rendered_scenes() -> None:
    from mmgen_edge.samples.shapes.counting import count_matches_category, count_objects
    from mmgen_edge.sdk.processors import segment_from_image

    right = 0
    scenes = render_scenes(COUNT_SEEDS, SIZE)
    for scene in scenes:
        seg = segment_from_image(encode_mask(scene.instances, np.random.default_rng(scene.seed)))  # as the SDK decodes it
        count = count_objects(seg.labels, seg.colours)
        right += count == len(scene.object_kinds)
        assert count_matches_category(len(scene.object_kinds), scene.category)
    assert right / len(scenes) >= MIN_COUNT_ACCURACY
    assert {s.category for s in scenes} == set(range(NUM_CATEGORIES))  # every category was counted


def test_object_counter_rules() -> None:
    from mmgen_edge.samples.shapes.counting import count_matches_category, count_objects, merge_close_colours

    labels = np.zeros((64, 64), np.int32)
    labels[5:15, 5:15] = 1  # an object
    labels[30:40, 5:15] = 1  # a second piece of the same colour: a second object
    labels[40:52, 40:52] = 2  # a third object ...
    labels[39, 38:54] = 3  # ... with a 1-px halo of a blend colour (no core: not an object)
    labels[50:60, 20:30] = 4  # a patch of background colour drift (closer than 64 to the background colour)
    colours = np.array([[100, 100, 100], [250, 0, 0], [0, 0, 250], [50, 50, 175], [130, 110, 100]], np.uint8)
    assert count_objects(labels, colours) == 3
    merged = merge_close_colours(labels, colours)
    assert set(np.unique(merged[labels == 4])) == {0}  # the drift joins the background
    assert count_objects(labels, colours, min_core_fraction=0.02) == 1  # cores: 8x8 px of a 10x10 piece < 82 <= 10x10
    ring = np.zeros((64, 64), np.int32)
    ring[20:44, 20:44] = 1
    ring[23:41, 23:41] = 0  # a 3-px halo ring around nothing: its core (a 1-px ring, ~80 px) is 32 % of it
    ring[0:64, 0:3] = 1  # a 3-px strip along the image border: outside counts as outside, core 62 px, 32 %
    ring[50:60, 48:58] = 2  # a compact object: core 64 of 100 px
    assert count_objects(ring, colours[:3]) == 1
    assert count_objects(ring, colours[:3], min_core_share=0.0) == 3  # without the share rule both counted
    swapped = np.where(labels == 0, 1, np.where(labels == 1, 0, labels))  # background label need not be 0
    assert count_objects(swapped, colours[[1, 0, 2, 3, 4]]) == 3
    assert count_matches_category(2, CATEGORY_NAMES.index("two_boxes"))
    assert not count_matches_category(3, CATEGORY_NAMES.index("two_boxes"))
    assert count_matches_category(5, CATEGORY_NAMES.index("many_small"))
    with pytest.raises(ValueError, match="category must be"):
        count_matches_category(1, NUM_CATEGORIES)
    with pytest.raises(ValueError, match="colours has only"):
        count_objects(labels, colours[:2])
    with pytest.raises(ValueError, match="min_core_fraction"):
        count_objects(labels, colours, min_core_fraction=1.0)
    with pytest.raises(ValueError, match="min_core_share"):
        count_objects(labels, colours, min_core_share=-0.1)
