"""Procedural "shapes world": analytic ray casting of simple primitives with exact ground truth.

Every scene is a small room seen by a pinhole camera that looks slightly down: an infinite ground
plane, an infinitely tall back wall and (for about half the seeds) two side walls, so every camera
ray hits something (there is no sky) and the depth is finite and positive everywhere. On the ground
stand 1-6 primitives (spheres, boxes rotated about the vertical, vertical cylinders, vertical cones;
the "tower" category stacks three boxes). Shading is Lambert + Blinn-Phong specular from one
directional light plus ambient, with hard cast shadows (an analytic shadow ray against the objects;
only objects cast shadows, the ground and walls do not). Textures are solid checkers/stripes.
There is no anti-aliasing, so rgb, depth, normals and instances are exactly pixel-consistent.

Everything is drawn from ``numpy.random.default_rng(seed)``; the category is drawn first and fixes
the content (number and kinds of objects, see ``CATEGORY_NAMES`` / ``CATEGORY_OBJECT_COUNTS``).
The scene itself (camera, light, layout, materials) does not depend on ``size``: intrinsics scale
with the image, so ``render_scene(s, 64)`` is the same view as ``render_scene(s, 128)``. Layouts are
re-drawn (deterministically) until every object covers at least ``MIN_VISIBLE_SAMPLES`` pixels of a
``VISIBILITY_GRID`` x ``VISIBILITY_GRID`` render, so every object of the category is visible at
sizes >= 32 (smaller images may miss a tiny object).

Conventions
-----------
* Pixels: OpenCV. Pixel ``(v, u)`` = ``image[v, u]`` is the point ``(u, v)`` in pixel coordinates
  (integer coordinates are pixel centres); ``x = (u - cx) / fx * z``, ``y = (v - cy) / fy * z``.
* ``depth``: camera z-depth (distance along the optical axis, not along the ray) in metres.
* ``normals``: unit vectors in CAMERA space with OpenCV camera axes: x right, y down, z forward
  (into the scene). Normals point toward the camera: ``dot(n, ray) <= 0`` for the pixel's viewing
  ray ``((u - cx) / fx, (v - cy) / fy, 1)``, hence ``n_z < 0`` except near grazing silhouettes. Example: a wall facing the camera head-on is ``(0, 0, -1)``;
  the ground seen by a level camera is ``(0, -1, 0)`` (up = -y).
* ``instances``: 0 = background (ground plane and all walls together), 1..n = objects in the order
  of ``Scene.object_kinds``. Stacked tower boxes are separate instances.
* World frame (internal only): X right, Y up, Z forward; the ground is ``Y = 0``; the camera sits at
  ``(0, height, 0)``.

Speed: measured 300-350 scenes/s at 128 px (about 900/s at 64 px) on one core of the 2-core dev
machine (numpy 2.4, shared with other jobs;
``python -m mmgen_edge.samples.shapes.bench_render``), shadows included.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

# --------------------------------------------------------------------------------------------------
# Categories
# --------------------------------------------------------------------------------------------------

SPHERE, BOX, CYLINDER, CONE = "sphere", "box", "cylinder", "cone"
PRIMITIVE_KINDS: tuple[str, ...] = (SPHERE, BOX, CYLINDER, CONE)

#: Objects per category; ``None`` = "many_small" (random kinds, count from MANY_SMALL_COUNT_RANGE).
_CATEGORY_CONTENT: tuple[tuple[str, tuple[str, ...] | None], ...] = (
    ("one_sphere", (SPHERE,)),
    ("one_box", (BOX,)),
    ("one_cylinder", (CYLINDER,)),
    ("one_cone", (CONE,)),
    ("two_spheres", (SPHERE, SPHERE)),
    ("two_boxes", (BOX, BOX)),
    ("sphere_and_box", (SPHERE, BOX)),
    ("cylinder_pair", (CYLINDER, CYLINDER)),
    ("cone_and_sphere", (CONE, SPHERE)),
    ("mixed_trio", (SPHERE, BOX, CYLINDER)),
    ("tower", (BOX, BOX, BOX)),  # three boxes stacked on one footprint
    ("many_small", None),  # 4-6 small primitives of random kinds
)
MANY_SMALL_COUNT_RANGE: tuple[int, int] = (4, 6)
TOWER_CATEGORY = "tower"
MANY_SMALL_CATEGORY = "many_small"

CATEGORY_NAMES: tuple[str, ...] = tuple(name for name, _ in _CATEGORY_CONTENT)
NUM_CATEGORIES: int = len(CATEGORY_NAMES)
#: (min, max) number of objects (= instance ids > 0, all visible) per category index.
CATEGORY_OBJECT_COUNTS: tuple[tuple[int, int], ...] = tuple(
    MANY_SMALL_COUNT_RANGE if kinds is None else (len(kinds), len(kinds)) for _, kinds in _CATEGORY_CONTENT
)
#: Kinds per category index (``None`` for many_small, whose kinds are random).
CATEGORY_KINDS: tuple[tuple[str, ...] | None, ...] = tuple(kinds for _, kinds in _CATEGORY_CONTENT)

# --------------------------------------------------------------------------------------------------
# Scene parameter ranges (metres, degrees)
# --------------------------------------------------------------------------------------------------

CAM_HEIGHT_RANGE = (1.2, 2.2)
CAM_PITCH_DEG_RANGE = (12.0, 28.0)  # downward tilt
CAM_YAW_DEG_RANGE = (-12.0, 12.0)
HFOV_DEG_RANGE = (50.0, 70.0)
PRINCIPAL_POINT_JITTER = 0.02  # fraction of the image size
BACK_WALL_DIST_RANGE = (6.5, 10.0)
SIDE_WALL_PROB = 0.5
SIDE_WALL_HALF_WIDTH_RANGE = (3.5, 5.5)
NO_SIDE_WALL_HALF_WIDTH = 6.0  # placement bound when there are no side walls
WALL_MARGIN = 0.3  # min gap between an object footprint and a wall
OBJECT_GAP = 0.1  # min gap between two footprints
MIN_OBJECT_DISTANCE = 1.2  # min forward distance from the camera to a footprint's near edge

LIGHT_AZIMUTH_DEG_RANGE = (-60.0, 60.0)  # 0 = light behind the camera
LIGHT_ELEVATION_DEG_RANGE = (30.0, 65.0)
AMBIENT_RANGE = (0.22, 0.38)
DIFFUSE_RANGE = (0.65, 0.85)
LIGHT_TINT = 0.08  # max per-channel deviation of the light colour from white
SHININESS_SQUARINGS_RANGE = (4, 6)  # Blinn-Phong exponent = 2 ** k, i.e. 16..64
OBJECT_SPECULAR_RANGE = (0.15, 0.55)

SPHERE_RADIUS_RANGE = (0.3, 0.65)
BOX_HALF_XZ_RANGE = (0.25, 0.6)
BOX_HALF_Y_RANGE = (0.2, 0.55)
CYLINDER_RADIUS_RANGE = (0.2, 0.45)
CYLINDER_HEIGHT_RANGE = (0.5, 1.4)
CONE_RADIUS_RANGE = (0.3, 0.6)
CONE_HEIGHT_RANGE = (0.6, 1.4)
SMALL_OBJECT_SCALE = 0.55  # size multiplier for many_small
TOWER_BASE_HALF_XZ_RANGE = (0.4, 0.6)
TOWER_BASE_HALF_Y_RANGE = (0.18, 0.32)
TOWER_SHRINK_RANGE = (0.6, 0.85)  # footprint of each stacked box vs the one below
TOWER_ASPECT_RANGE = (0.8, 1.0)  # per-axis factor on a level's half width
TOWER_HEIGHT_CHANGE_RANGE = (0.8, 1.05)  # half height of each stacked box vs the one below

# Placement: objects are dropped where the ray of a random pixel in this window meets the ground.
PLACEMENT_U_RANGE = (0.12, 0.88)
PLACEMENT_V_RANGE = (0.5, 0.93)
MAX_PLACEMENT_TRIES = 200  # per object
MAX_LAYOUT_TRIES = 64  # whole layouts (visibility check)
MAX_VIEW_TRIES = 16  # cameras, rooms and lights, each with MAX_LAYOUT_TRIES layouts (a seed's first view almost always)
VISIBILITY_GRID = 32
MIN_VISIBLE_SAMPLES = 6

# Textures
GROUND_PATTERNS = ("checker", "stripes", "plain")
WALL_PATTERNS = ("stripes", "plain", "plain")
OBJECT_PATTERNS = ("plain", "plain", "stripes", "checker")
GROUND_TILE_RANGE = (0.4, 1.0)
WALL_STRIPE_RANGE = (0.3, 0.8)
OBJECT_TILE_RANGE = (0.12, 0.3)
PATTERN_CONTRAST_RANGE = (0.45, 0.75)  # alt colour = base * factor
DARKER_ALT_PROB = 0.5  # pattern alt colour: darker base (else a second random colour)
SIDE_WALL_MAX_DARKEN = 0.1  # side walls = back wall colours darkened per channel by up to this
# HSV saturation / value ranges of the colours
GROUND_SAT_RANGE, GROUND_VAL_RANGE = (0.05, 0.5), (0.45, 0.9)
WALL_SAT_RANGE, WALL_VAL_RANGE = (0.0, 0.35), (0.55, 0.95)
OBJECT_SAT_RANGE, OBJECT_VAL_RANGE = (0.45, 1.0), (0.5, 1.0)

# Numerics
HIT_EPS = 1e-6  # min ray parameter of a valid hit
SHADOW_OFFSET = 1e-4  # shadow-ray origin offset along the normal (metres)
NEAR_Z = 0.05  # projected boxes with a corner closer than this fall back to the whole image
TINY = 1e-12
SIZE_MULTIPLE = 8

# Background surface slots (material table rows); objects use BG_SLOTS + index.
GROUND, BACK_WALL, LEFT_WALL, RIGHT_WALL = 0, 1, 2, 3
BG_SLOTS = 4
_BG_NORMALS_WORLD = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])  # (4, 3)


# --------------------------------------------------------------------------------------------------
# Public types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels (OpenCV: integer pixel coordinates are pixel centres)."""

    fx: float
    fy: float
    cx: float
    cy: float

    def matrix(self) -> np.ndarray:
        """The 3x3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclass
class Scene:
    """One rendered scene with exact ground truth (conventions in the module docstring)."""

    rgb: np.ndarray  # (H, W, 3) uint8, RGB order
    depth: np.ndarray  # (H, W) float32, camera z-depth in metres, > 0
    normals: np.ndarray  # (H, W, 3) float32, unit, camera space (x right, y down, z forward), facing camera
    instances: np.ndarray  # (H, W) int32, 0 = ground + walls, 1..n = objects
    category: int
    intrinsics: Intrinsics
    seed: int
    object_kinds: tuple[str, ...] = field(default=())  # kind of instance id i + 1


# --------------------------------------------------------------------------------------------------
# Internal scene description
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Camera:
    position: np.ndarray  # (3,) world
    rotation: np.ndarray  # (3, 3) camera-to-world, columns = camera x (right), y (down), z (forward)
    focal: float  # focal length as a fraction of the image size (fx = fy = focal * size)
    cx_offset: float  # principal point offset from the centre, fraction of the size
    cy_offset: float

    def intrinsics(self, size: int) -> Intrinsics:
        centre = (size - 1) / 2.0
        f = self.focal * size
        return Intrinsics(fx=f, fy=f, cx=centre + self.cx_offset * size, cy=centre + self.cy_offset * size)


@dataclass(frozen=True)
class _Room:
    back_z: float  # back wall plane Z = back_z
    half_width: float  # side walls at X = +-half_width (placement bound if there are none)
    side_walls: bool


@dataclass(frozen=True)
class _Light:
    direction: np.ndarray  # (3,) world, unit, pointing TOWARD the light
    colour: np.ndarray  # (3,) float
    ambient: float
    diffuse: float
    shininess_squarings: int


@dataclass(frozen=True)
class _Prim:
    """A primitive standing at (x, z) with its base at height y0 (world)."""

    kind: str
    x: float
    z: float
    y0: float
    radius: float = 0.0  # sphere / cylinder / cone (base) radius
    height: float = 0.0  # cylinder / cone height
    half: tuple[float, float, float] = (0.0, 0.0, 0.0)  # box half extents (local x, y, z)
    yaw: float = 0.0  # box rotation about the vertical (radians)

    @property
    def footprint(self) -> float:
        """Radius of the ground footprint circle."""
        if self.kind == BOX:
            return math.hypot(self.half[0], self.half[2])
        return self.radius

    @property
    def top(self) -> float:
        """Height of the highest point."""
        if self.kind == SPHERE:
            return self.y0 + 2.0 * self.radius
        if self.kind == BOX:
            return self.y0 + 2.0 * self.half[1]
        return self.y0 + self.height

    def bounding_sphere(self) -> tuple[np.ndarray, float]:
        """Centre (3,) and radius of a sphere enclosing the primitive."""
        if self.kind == SPHERE:
            return np.array([self.x, self.y0 + self.radius, self.z]), self.radius
        half_h = 0.5 * (self.top - self.y0)
        centre = np.array([self.x, self.y0 + half_h, self.z])
        return centre, math.hypot(self.footprint, half_h)

    def aabb_corners(self) -> np.ndarray:
        """(8, 3) corners of a world axis-aligned box enclosing the primitive."""
        r = self.footprint
        xs, ys, zs = (self.x - r, self.x + r), (self.y0, self.top), (self.z - r, self.z + r)
        return np.array([[x, y, z] for x in xs for y in ys for z in zs])


@dataclass(frozen=True)
class _Material:
    base: np.ndarray  # (3,) float 0..1
    alt: np.ndarray  # (3,) float 0..1, second colour of the pattern
    pattern: str  # "plain", "checker", "stripes"
    scale: float  # pattern period (metres)
    specular: float


@dataclass
class _Hits:
    """Primary-ray results over an (h, w) grid of rays (world frame)."""

    t: np.ndarray  # (h, w) ray parameter == camera z-depth (rays have camera z = 1)
    ids: np.ndarray  # (h, w) int32 instance ids
    surface: np.ndarray  # (h, w) int background surface slot (meaningful where ids == 0)
    nx: np.ndarray  # (h, w) world normal components
    ny: np.ndarray
    nz: np.ndarray


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0 or size % SIZE_MULTIPLE:
        raise ValueError(f"size must be a positive multiple of {SIZE_MULTIPLE}, got {size!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


# --------------------------------------------------------------------------------------------------
# Sampling the scene description
# --------------------------------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _sample_camera(rng: np.random.Generator) -> _Camera:
    """Camera at (0, h, 0) with yaw about the vertical and a downward pitch."""
    height = _uniform(rng, CAM_HEIGHT_RANGE)
    pitch = math.radians(_uniform(rng, CAM_PITCH_DEG_RANGE))
    yaw = math.radians(_uniform(rng, CAM_YAW_DEG_RANGE))
    hfov = math.radians(_uniform(rng, HFOV_DEG_RANGE))
    jitter = rng.uniform(-PRINCIPAL_POINT_JITTER, PRINCIPAL_POINT_JITTER, size=2)
    forward = np.array([math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    down = np.cross(right, forward)
    rotation = np.stack([right, down, forward], axis=1)  # (3, 3) columns = camera axes in world
    return _Camera(
        position=np.array([0.0, height, 0.0]),
        rotation=rotation,
        focal=0.5 / math.tan(hfov / 2.0),
        cx_offset=float(jitter[0]),
        cy_offset=float(jitter[1]),
    )


def _sample_room(rng: np.random.Generator) -> _Room:
    back_z = _uniform(rng, BACK_WALL_DIST_RANGE)
    side_walls = bool(rng.random() < SIDE_WALL_PROB)
    half_width = _uniform(rng, SIDE_WALL_HALF_WIDTH_RANGE) if side_walls else NO_SIDE_WALL_HALF_WIDTH
    return _Room(back_z=back_z, half_width=half_width, side_walls=side_walls)


def _sample_light(rng: np.random.Generator) -> _Light:
    azimuth = math.radians(_uniform(rng, LIGHT_AZIMUTH_DEG_RANGE))
    elevation = math.radians(_uniform(rng, LIGHT_ELEVATION_DEG_RANGE))
    direction = np.array(
        [math.sin(azimuth) * math.cos(elevation), math.sin(elevation), -math.cos(azimuth) * math.cos(elevation)]
    )
    return _Light(
        direction=direction,
        colour=1.0 + rng.uniform(-LIGHT_TINT, LIGHT_TINT, size=3),
        ambient=_uniform(rng, AMBIENT_RANGE),
        diffuse=_uniform(rng, DIFFUSE_RANGE),
        shininess_squarings=int(rng.integers(SHININESS_SQUARINGS_RANGE[0], SHININESS_SQUARINGS_RANGE[1] + 1)),
    )


def _sample_shape(rng: np.random.Generator, kind: str, scale: float) -> _Prim:
    """Sizes of one ground-standing primitive (position filled in later)."""
    if kind == SPHERE:
        return _Prim(SPHERE, 0.0, 0.0, 0.0, radius=scale * _uniform(rng, SPHERE_RADIUS_RANGE))
    if kind == BOX:
        half = (
            scale * _uniform(rng, BOX_HALF_XZ_RANGE),
            scale * _uniform(rng, BOX_HALF_Y_RANGE),
            scale * _uniform(rng, BOX_HALF_XZ_RANGE),
        )
        return _Prim(BOX, 0.0, 0.0, 0.0, half=half, yaw=float(rng.uniform(0.0, math.pi / 2.0)))
    if kind == CYLINDER:
        radius = scale * _uniform(rng, CYLINDER_RADIUS_RANGE)
        return _Prim(CYLINDER, 0.0, 0.0, 0.0, radius=radius, height=scale * _uniform(rng, CYLINDER_HEIGHT_RANGE))
    if kind == CONE:
        radius = scale * _uniform(rng, CONE_RADIUS_RANGE)
        return _Prim(CONE, 0.0, 0.0, 0.0, radius=radius, height=scale * _uniform(rng, CONE_HEIGHT_RANGE))
    raise ValueError(f"kind must be one of {PRIMITIVE_KINDS}, got {kind!r}")


def _sample_tower(rng: np.random.Generator, levels: int) -> list[_Prim]:
    """Boxes stacked on a common vertical axis (positions relative to the base footprint centre)."""
    half_xz = _uniform(rng, TOWER_BASE_HALF_XZ_RANGE)
    half_y = _uniform(rng, TOWER_BASE_HALF_Y_RANGE)
    boxes, y0 = [], 0.0
    for _ in range(levels):
        half = (half_xz * _uniform(rng, TOWER_ASPECT_RANGE), half_y, half_xz * _uniform(rng, TOWER_ASPECT_RANGE))
        boxes.append(_Prim(BOX, 0.0, 0.0, y0, half=half, yaw=float(rng.uniform(0.0, math.pi / 2.0))))
        y0 += 2.0 * half_y
        shrink = _uniform(rng, TOWER_SHRINK_RANGE)
        half_xz, half_y = half_xz * shrink, half_y * _uniform(rng, TOWER_HEIGHT_CHANGE_RANGE)
    return boxes


def _ground_point(camera: _Camera, u: float, v: float) -> tuple[float, float] | None:
    """World (x, z) where the ray through normalised image point (u, v) meets the ground, if it does."""
    ray_cam = np.array([(u - 0.5 - camera.cx_offset) / camera.focal, (v - 0.5 - camera.cy_offset) / camera.focal, 1.0])
    ray = camera.rotation @ ray_cam  # (3,)
    if ray[1] >= -TINY:
        return None
    t = -camera.position[1] / ray[1]
    return float(camera.position[0] + t * ray[0]), float(camera.position[2] + t * ray[2])


def _place(
    rng: np.random.Generator, footprint: float, placed: list[tuple[float, float, float]], camera: _Camera, room: _Room
) -> tuple[float, float] | None:
    """A ground position (x, z) for a footprint circle that avoids walls, camera and ``placed`` circles."""
    for _ in range(MAX_PLACEMENT_TRIES):
        point = _ground_point(camera, _uniform(rng, PLACEMENT_U_RANGE), _uniform(rng, PLACEMENT_V_RANGE))
        if point is None:
            continue
        x, z = point
        if z - footprint < MIN_OBJECT_DISTANCE or z + footprint > room.back_z - WALL_MARGIN:
            continue
        if abs(x) + footprint > room.half_width - WALL_MARGIN:
            continue
        if all(math.hypot(x - px, z - pz) >= footprint + pr + OBJECT_GAP for px, pz, pr in placed):
            return x, z
    return None


def _moved(prim: _Prim, x: float, z: float) -> _Prim:
    return _Prim(prim.kind, x, z, prim.y0, prim.radius, prim.height, prim.half, prim.yaw)


def _sample_objects(rng: np.random.Generator, category: int, camera: _Camera, room: _Room) -> list[_Prim] | None:
    """One layout attempt for the category; None if some object found no free spot."""
    name, kinds = _CATEGORY_CONTENT[category]
    if name == TOWER_CATEGORY:
        groups = [_sample_tower(rng, len(kinds))]
    else:
        if kinds is None:
            count = int(rng.integers(MANY_SMALL_COUNT_RANGE[0], MANY_SMALL_COUNT_RANGE[1] + 1))
            kinds = tuple(PRIMITIVE_KINDS[int(k)] for k in rng.integers(len(PRIMITIVE_KINDS), size=count))
        scale = SMALL_OBJECT_SCALE if name == MANY_SMALL_CATEGORY else 1.0
        groups = [[_sample_shape(rng, kind, scale)] for kind in kinds]
    placed: list[tuple[float, float, float]] = []
    objects: list[_Prim] = []
    for group in groups:
        footprint = max(p.footprint for p in group)
        spot = _place(rng, footprint, placed, camera, room)
        if spot is None:
            return None
        placed.append((spot[0], spot[1], footprint))
        objects.extend(_moved(p, spot[0], spot[1]) for p in group)
    return objects


def _sample_layout(rng: np.random.Generator, category: int, camera: _Camera, room: _Room) -> list[_Prim]:
    """Draw layouts until every object is visible on the coarse visibility grid."""
    for _ in range(MAX_LAYOUT_TRIES):
        objects = _sample_objects(rng, category, camera, room)
        if objects is None:
            continue
        hits = _primary(camera, room, objects, _ray_directions(camera, VISIBILITY_GRID))
        counts = np.bincount(hits.ids.ravel(), minlength=len(objects) + 1)  # (n + 1,)
        if counts[1:].min() >= MIN_VISIBLE_SAMPLES:
            return objects
    raise RuntimeError(
        f"no layout with all objects visible after {MAX_LAYOUT_TRIES} tries "
        f"(category {CATEGORY_NAMES[category]!r}); widen the placement ranges"
    )


def _random_colour(rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(float(rng.random()), _uniform(rng, sat), _uniform(rng, val))
    return np.array(rgb)


def _sample_material(rng: np.random.Generator, patterns: Sequence[str], tile: tuple[float, float],
                     sat: tuple[float, float], val: tuple[float, float], specular: float) -> _Material:
    base = _random_colour(rng, sat, val)
    pattern = patterns[int(rng.integers(len(patterns)))]
    if rng.random() < DARKER_ALT_PROB:
        alt = base * _uniform(rng, PATTERN_CONTRAST_RANGE)
    else:
        alt = _random_colour(rng, sat, val)
    return _Material(base=base, alt=alt, pattern=pattern, scale=_uniform(rng, tile), specular=specular)


def _sample_materials(rng: np.random.Generator, n_objects: int) -> list[_Material]:
    """Materials for ground, back wall, left wall, right wall, then each object."""
    ground = _sample_material(rng, GROUND_PATTERNS, GROUND_TILE_RANGE, GROUND_SAT_RANGE, GROUND_VAL_RANGE, 0.0)
    wall = _sample_material(rng, WALL_PATTERNS, WALL_STRIPE_RANGE, WALL_SAT_RANGE, WALL_VAL_RANGE, 0.0)
    side_tint = 1.0 - rng.uniform(0.0, SIDE_WALL_MAX_DARKEN, size=3)
    side = _Material(wall.base * side_tint, wall.alt * side_tint, wall.pattern, wall.scale, 0.0)
    objects = [
        _sample_material(rng, OBJECT_PATTERNS, OBJECT_TILE_RANGE, OBJECT_SAT_RANGE, OBJECT_VAL_RANGE,
                         _uniform(rng, OBJECT_SPECULAR_RANGE))
        for _ in range(n_objects)
    ]
    return [ground, wall, side, side, *objects]


# --------------------------------------------------------------------------------------------------
# Ray / primitive intersection (vectorised over rays; origin and direction may be scalars or arrays)
# --------------------------------------------------------------------------------------------------

Vec = tuple  # (x, y, z) of scalars or broadcastable arrays


def _safe(d: np.ndarray) -> np.ndarray:
    """Direction component with exact zeros nudged so that divisions stay finite."""
    return np.where(np.abs(d) < TINY, TINY, d)


def _hit_sphere(p: _Prim, o: Vec, d: Vec) -> tuple[np.ndarray, Vec]:
    cy = p.y0 + p.radius
    ox, oy, oz = o[0] - p.x, o[1] - cy, o[2] - p.z
    dx, dy, dz = d
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - p.radius * p.radius
    disc = b * b - a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
    inv_r = 1.0 / p.radius
    normal = ((ox + t * dx) * inv_r, (oy + t * dy) * inv_r, (oz + t * dz) * inv_r)
    return np.where((disc >= 0.0) & (t > HIT_EPS), t, np.inf), normal


def _hit_box(p: _Prim, o: Vec, d: Vec) -> tuple[np.ndarray, Vec]:
    cos, sin = math.cos(p.yaw), math.sin(p.yaw)
    hx, hy, hz = p.half
    wx, wz = o[0] - p.x, o[2] - p.z
    # world -> local (rotation by -yaw about Y); local -> world is x = c*lx + s*lz, z = -s*lx + c*lz
    olx, oly, olz = cos * wx - sin * wz, o[1] - (p.y0 + hy), sin * wx + cos * wz
    dlx, dly, dlz = cos * d[0] - sin * d[2], d[1], sin * d[0] + cos * d[2]
    slabs = []
    for oc, dc, h in ((olx, dlx, hx), (oly, dly, hy), (olz, dlz, hz)):
        inv = 1.0 / _safe(dc)
        t1, t2 = (-h - oc) * inv, (h - oc) * inv
        slabs.append((np.minimum(t1, t2), np.maximum(t1, t2)))
    (x0, x1), (y0, y1), (z0, z1) = slabs
    t_near = np.maximum(np.maximum(x0, y0), z0)
    t_far = np.minimum(np.minimum(x1, y1), z1)
    on_x = x0 >= np.maximum(y0, z0)
    on_y = ~on_x & (y0 >= z0)
    on_z = ~on_x & ~on_y
    nlx = np.where(on_x, -np.sign(dlx), 0.0)
    nly = np.where(on_y, -np.sign(dly), 0.0)
    nlz = np.where(on_z, -np.sign(dlz), 0.0)
    normal = (cos * nlx + sin * nlz, nly, -sin * nlx + cos * nlz)
    return np.where((t_near <= t_far) & (t_near > HIT_EPS), t_near, np.inf), normal


def _hit_disc(o: Vec, d: Vec, x: float, z: float, y: float, radius: float) -> np.ndarray:
    """Ray parameter of the hit with the horizontal disc (centre (x, y, z)), inf if none."""
    t = (y - o[1]) / _safe(d[1])
    px, pz = o[0] + t * d[0] - x, o[2] + t * d[2] - z
    return np.where((t > HIT_EPS) & (px * px + pz * pz <= radius * radius), t, np.inf)


def _hit_cylinder(p: _Prim, o: Vec, d: Vec) -> tuple[np.ndarray, Vec]:
    ox, oz = o[0] - p.x, o[2] - p.z
    dx, dy, dz = d
    a = dx * dx + dz * dz
    b = ox * dx + oz * dz
    c = ox * ox + oz * oz - p.radius * p.radius
    disc = b * b - a * c
    t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / np.maximum(a, TINY)
    y_side = o[1] + t_side * dy
    side_ok = (disc >= 0.0) & (t_side > HIT_EPS) & (y_side >= p.y0) & (y_side <= p.y0 + p.height)
    t_side = np.where(side_ok, t_side, np.inf)
    t_top = _hit_disc(o, d, p.x, p.z, p.y0 + p.height, p.radius)
    t_bottom = _hit_disc(o, d, p.x, p.z, p.y0, p.radius)
    t = np.minimum(np.minimum(t_side, t_top), t_bottom)
    on_side = t_side <= np.minimum(t_top, t_bottom)
    inv_r = 1.0 / p.radius
    normal = (
        np.where(on_side, (ox + t_side * dx) * inv_r, 0.0),
        np.where(on_side, 0.0, np.where(t_top <= t_bottom, 1.0, -1.0)),
        np.where(on_side, (oz + t_side * dz) * inv_r, 0.0),
    )
    return t, normal


def _hit_cone(p: _Prim, o: Vec, d: Vec) -> tuple[np.ndarray, Vec]:
    """Vertical cone: base disc of radius r at y0, apex at y0 + h. Y is measured down from the apex."""
    k2 = (p.radius / p.height) ** 2
    apex = p.y0 + p.height
    ox, oz, oy = o[0] - p.x, o[2] - p.z, apex - o[1]
    dx, dz, dy = d[0], d[2], -d[1]
    a = dx * dx + dz * dz - k2 * dy * dy
    b = ox * dx + oz * dz - k2 * oy * dy
    c = ox * ox + oz * oz - k2 * oy * oy
    disc = b * b - a * c
    root = np.sqrt(np.maximum(disc, 0.0))
    a_safe = np.where(np.abs(a) < TINY, TINY, a)
    best = np.full(np.broadcast(disc, dx).shape, np.inf)
    for sign in (-1.0, 1.0):
        t = (-b + sign * root) / a_safe
        y = oy + t * dy
        ok = (disc >= 0.0) & (t > HIT_EPS) & (y >= 0.0) & (y <= p.height)
        best = np.where(ok & (t < best), t, best)
    t_base = _hit_disc(o, d, p.x, p.z, p.y0, p.radius)
    on_side = best <= t_base
    t_side = np.where(np.isfinite(best), best, 0.0)
    px, pz, py = ox + t_side * dx, oz + t_side * dz, oy + t_side * dy
    norm = np.sqrt(np.maximum(px * px + pz * pz + (k2 * py) ** 2, TINY))
    normal = (
        np.where(on_side, px / norm, 0.0),
        np.where(on_side, k2 * py / norm, -1.0),
        np.where(on_side, pz / norm, 0.0),
    )
    return np.minimum(best, t_base), normal


_HIT_FUNCTIONS = {SPHERE: _hit_sphere, BOX: _hit_box, CYLINDER: _hit_cylinder, CONE: _hit_cone}


def _intersect(p: _Prim, o: Vec, d: Vec) -> tuple[np.ndarray, Vec]:
    """Ray parameter (inf = miss) and world normal (valid where hit) of rays ``o + t d`` with ``p``."""
    return _HIT_FUNCTIONS[p.kind](p, o, d)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _pixel_grid(size: int) -> np.ndarray:
    """(size,) integer pixel coordinates as float."""
    grid = np.arange(size, dtype=np.float64)
    grid.setflags(write=False)
    return grid


def _camera_rays(camera: _Camera, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space ray components x (1, W) and y (H, 1) through pixel centres; z == 1."""
    k = camera.intrinsics(size)
    grid = _pixel_grid(size)
    return ((grid - k.cx) / k.fx)[None, :], ((grid - k.cy) / k.fy)[:, None]


def _ray_directions(camera: _Camera, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World ray directions (each (size, size)) with camera-space z == 1, so t == z-depth."""
    xs, ys = _camera_rays(camera, size)
    r = camera.rotation
    return tuple(r[i, 0] * xs + r[i, 1] * ys + r[i, 2] for i in range(3))  # 3 x (H, W)


def _background(camera: _Camera, room: _Room, d: Vec) -> tuple[np.ndarray, np.ndarray]:
    """Ray parameter and surface slot (GROUND/BACK_WALL/LEFT_WALL/RIGHT_WALL) of the room."""
    dx, dy, dz = d
    cam = camera.position
    t = np.where(dy < 0.0, -cam[1] / np.minimum(dy, -TINY), np.inf)  # (H, W) ground
    surface = np.zeros(dy.shape, dtype=np.int64)  # (H, W)
    walls = [(BACK_WALL, np.where(dz > 0.0, (room.back_z - cam[2]) / np.maximum(dz, TINY), np.inf))]
    if room.side_walls:
        walls.append((LEFT_WALL, np.where(dx < 0.0, (-room.half_width - cam[0]) / np.minimum(dx, -TINY), np.inf)))
        walls.append((RIGHT_WALL, np.where(dx > 0.0, (room.half_width - cam[0]) / np.maximum(dx, TINY), np.inf)))
    for slot, t_wall in walls:
        closer = t_wall < t
        np.copyto(t, t_wall, where=closer)
        surface[closer] = slot
    return t, surface


def _screen_window(p: _Prim, camera: _Camera, size: int) -> tuple[slice, slice]:
    """Rows/cols of the image that the primitive's bounding box can cover (whole image if unsure)."""
    corners = (p.aabb_corners() - camera.position) @ camera.rotation  # (8, 3) camera space
    if corners[:, 2].min() < NEAR_Z:
        return slice(0, size), slice(0, size)
    k = camera.intrinsics(size)
    u = k.fx * corners[:, 0] / corners[:, 2] + k.cx  # (8,)
    v = k.fy * corners[:, 1] / corners[:, 2] + k.cy
    u0, u1 = max(int(math.floor(u.min())), 0), min(int(math.ceil(u.max())) + 1, size)
    v0, v1 = max(int(math.floor(v.min())), 0), min(int(math.ceil(v.max())) + 1, size)
    return slice(v0, max(v0, v1)), slice(u0, max(u0, u1))


def _primary(camera: _Camera, room: _Room, objects: Sequence[_Prim], d: Vec) -> _Hits:
    """Cast the rays ``d`` (3 x (H, W), from the camera); nearest hit among the room and the objects."""
    size = d[0].shape[0]
    t, surface = _background(camera, room, d)
    normals = _BG_NORMALS_WORLD[surface]  # (H, W, 3)
    nx, ny, nz = normals[..., 0].copy(), normals[..., 1].copy(), normals[..., 2].copy()
    ids = np.zeros((size, size), dtype=np.int32)
    origin = tuple(camera.position)
    for index, prim in enumerate(objects, start=1):
        rows, cols = _screen_window(prim, camera, size)
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        window = (d[0][rows, cols], d[1][rows, cols], d[2][rows, cols])
        t_obj, n_obj = _intersect(prim, origin, window)
        closer = t_obj < t[rows, cols]  # (h, w)
        np.copyto(t[rows, cols], t_obj, where=closer)
        np.copyto(ids[rows, cols], index, where=closer)
        for target, comp in zip((nx, ny, nz), n_obj):
            np.copyto(target[rows, cols], comp, where=closer)
    return _Hits(t=t, ids=ids, surface=surface, nx=nx, ny=ny, nz=nz)


def _shadow_mask(points: Vec, normals: Vec, ids: np.ndarray, lit: np.ndarray, objects: Sequence[_Prim],
                 light: np.ndarray) -> np.ndarray:
    """(H, W) bool: lit pixels whose ray toward the light is blocked by another object."""
    shadow = np.zeros(ids.shape, dtype=bool)
    if not objects:
        return shadow
    # Coordinates in a frame (e1, e2, light): an object can block p only if p's projection onto the
    # plane orthogonal to the light lies inside the projected bounding sphere and p is "below" it.
    helper = np.array([1.0, 0.0, 0.0]) if abs(light[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(light, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(light, e1)
    flat_lit = np.flatnonzero(lit)  # (M,)
    px, py, pz = (c.ravel()[flat_lit] for c in points)
    a = e1[0] * px + e1[1] * py + e1[2] * pz  # (M,)
    b = e2[0] * px + e2[1] * py + e2[2] * pz
    s = light[0] * px + light[1] * py + light[2] * pz
    pid = ids.ravel()[flat_lit]
    nx, ny, nz = (c.ravel()[flat_lit] for c in normals)
    light_dir = (light[0], light[1], light[2])
    for index, prim in enumerate(objects, start=1):
        centre, radius = prim.bounding_sphere()
        ca, cb, cs = centre @ e1, centre @ e2, centre @ light
        cand = np.flatnonzero(
            ((a - ca) ** 2 + (b - cb) ** 2 < radius * radius) & (s < cs + radius) & (pid != index)
        )
        if cand.size == 0:
            continue
        origin = (
            px[cand] + SHADOW_OFFSET * nx[cand],
            py[cand] + SHADOW_OFFSET * ny[cand],
            pz[cand] + SHADOW_OFFSET * nz[cand],
        )
        t_hit, _ = _intersect(prim, origin, light_dir)
        shadow.ravel()[flat_lit[cand[np.isfinite(t_hit)]]] = True
    return shadow


def _pattern_bits(material: _Material, local: Vec) -> np.ndarray:
    """Boolean pattern (True = alt colour) of a solid texture at local coordinates."""
    if material.pattern == "plain":
        return np.zeros(np.shape(local[0]), dtype=bool)
    inv = 1.0 / material.scale
    if material.pattern == "stripes":
        return (np.floor(local[1] * inv).astype(np.int64) & 1).astype(bool)
    cells = np.floor(local[0] * inv) + np.floor(local[1] * inv) + np.floor(local[2] * inv)
    return (cells.astype(np.int64) & 1).astype(bool)


def _albedo(hits: _Hits, points: Vec, objects: Sequence[_Prim], materials: Sequence[_Material]) -> np.ndarray:
    """(H, W, 3) float32 albedo from a table of (slot, pattern bit) colours."""
    table = np.stack([c for m in materials for c in (m.base, m.alt)]).astype(np.float32)  # (2 * slots, 3)
    slot = np.where(hits.ids > 0, hits.ids + (BG_SLOTS - 1), hits.surface)  # (H, W)
    bits = np.zeros(slot.shape, dtype=bool)
    px, py, pz = points
    ground, wall = materials[GROUND], materials[BACK_WALL]
    # ground: checker/stripes in the XZ plane (stripes run along Z); walls: vertical stripes / checker in XY / ZY
    bits_ground = _pattern_bits(ground, (px, pz, pz * 0.0) if ground.pattern == "checker" else (pz, px, pz))
    bits_back = _pattern_bits(wall, (px, px, py) if wall.pattern == "stripes" else (px, py, pz * 0.0))
    bits_side = _pattern_bits(wall, (pz, pz, py) if wall.pattern == "stripes" else (pz, py, px * 0.0))
    np.copyto(bits, bits_ground, where=slot == GROUND)
    np.copyto(bits, bits_back, where=slot == BACK_WALL)
    np.copyto(bits, bits_side, where=slot >= LEFT_WALL)
    bits_flat = bits.ravel()
    for index, (prim, material) in enumerate(zip(objects, materials[BG_SLOTS:]), start=1):
        if material.pattern == "plain":
            continue
        pix = np.flatnonzero(hits.ids.ravel() == index)
        wx, wy, wz = px.ravel()[pix] - prim.x, py.ravel()[pix] - prim.y0, pz.ravel()[pix] - prim.z
        cos, sin = math.cos(prim.yaw), math.sin(prim.yaw)
        bits_flat[pix] = _pattern_bits(material, (cos * wx - sin * wz, wy, sin * wx + cos * wz))
    return table[2 * slot + bits]  # (H, W, 3)


def _shade(hits: _Hits, d: Vec, camera: _Camera, light: _Light, objects: Sequence[_Prim],
           materials: Sequence[_Material]) -> np.ndarray:
    """(H, W, 3) uint8 colour: albedo * (ambient + diffuse * lambert) + Blinn-Phong specular, shadowed."""
    cam = camera.position
    points = (cam[0] + hits.t * d[0], cam[1] + hits.t * d[1], cam[2] + hits.t * d[2])  # 3 x (H, W)
    normals = (hits.nx, hits.ny, hits.nz)
    ldir = light.direction
    lambert = np.maximum(hits.nx * ldir[0] + hits.ny * ldir[1] + hits.nz * ldir[2], 0.0)  # (H, W)
    shadow = _shadow_mask(points, normals, hits.ids, lambert > 0.0, objects, ldir)
    lambert[shadow] = 0.0
    shading = (light.ambient + light.diffuse * lambert).astype(np.float32)  # (H, W)
    colour = _albedo(hits, points, objects, materials)  # (H, W, 3) float32
    colour *= shading[..., None] * (light.colour * 255.0).astype(np.float32)

    # Blinn-Phong on lit object pixels only (ground and walls are matte)
    ids_flat = hits.ids.ravel()
    pix = np.flatnonzero((ids_flat > 0) & (lambert.ravel() > 0.0))
    if pix.size:
        vx, vy, vz = (-c.ravel()[pix] for c in d)
        v_norm = np.sqrt(vx * vx + vy * vy + vz * vz)
        hx, hy, hz = vx / v_norm + ldir[0], vy / v_norm + ldir[1], vz / v_norm + ldir[2]
        h_norm = np.sqrt(hx * hx + hy * hy + hz * hz)
        n_dot_h = normals[0].ravel()[pix] * hx + normals[1].ravel()[pix] * hy + normals[2].ravel()[pix] * hz
        spec = np.maximum(n_dot_h / h_norm, 0.0)
        for _ in range(light.shininess_squarings):
            spec = spec * spec
        ks = np.array([m.specular for m in materials])[ids_flat[pix] + (BG_SLOTS - 1)]
        colour.reshape(-1, 3)[pix] += ((ks * spec)[:, None] * (light.colour * 255.0)).astype(np.float32)
    colour += 0.5  # round half up on truncation below
    np.clip(colour, 0.0, 255.0, out=colour)
    return colour.astype(np.uint8)


def _camera_normals(hits: _Hits, camera: _Camera, d_cam: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(H, W, 3) float32 unit normals in camera space (R^T n), flipped where they face away from the ray.

    ``d_cam`` holds the camera-space ray components x (1, W) and y (H, 1) (z == 1). The flip is a
    safety net: the analytic normals already face the camera for every surface seen from outside.
    """
    r = camera.rotation
    comps = [r[0, i] * hits.nx + r[1, i] * hits.ny + r[2, i] * hits.nz for i in range(3)]  # 3 x (H, W)
    facing = comps[0] * d_cam[0] + comps[1] * d_cam[1] + comps[2]  # (H, W) dot(n, ray)
    sign = np.where(facing > 0.0, -1.0, 1.0)  # (H, W)
    inv_norm = sign / np.sqrt(comps[0] * comps[0] + comps[1] * comps[1] + comps[2] * comps[2])
    out = np.empty(hits.t.shape + (3,), dtype=np.float32)  # (H, W, 3)
    for i in range(3):
        np.multiply(comps[i], inv_norm, out=out[..., i], casting="same_kind")
    return out


def render_scene(seed: int, size: int = 128) -> Scene:
    """Render the scene of ``seed`` at ``size`` x ``size`` pixels (size a positive multiple of 8)."""
    _check_seed(seed)
    _check_size(size)
    rng = np.random.default_rng(int(seed))
    category = int(rng.integers(NUM_CATEGORIES))
    for view in range(MAX_VIEW_TRIES):  # a view where no layout fits draws another, from the same generator: the
        camera = _sample_camera(rng)  # seeds that fit at once (nearly all) render as they always did
        room = _sample_room(rng)
        light = _sample_light(rng)
        try:
            objects = _sample_layout(rng, category, camera, room)
            break
        except RuntimeError:
            if view == MAX_VIEW_TRIES - 1:
                raise
    materials = _sample_materials(rng, len(objects))

    d = _ray_directions(camera, size)
    hits = _primary(camera, room, objects, d)
    rgb = _shade(hits, d, camera, light, objects, materials)
    return Scene(
        rgb=rgb,
        depth=hits.t.astype(np.float32),
        normals=_camera_normals(hits, camera, _camera_rays(camera, size)),
        instances=hits.ids,
        category=category,
        intrinsics=camera.intrinsics(size),
        seed=int(seed),
        object_kinds=tuple(p.kind for p in objects),
    )


def render_scenes(seeds: Sequence[int], size: int = 128) -> list[Scene]:
    """Render several seeds (validated up front)."""
    _check_size(size)
    seeds = list(seeds)
    for seed in seeds:
        _check_seed(seed)
    return [render_scene(seed, size) for seed in seeds]
