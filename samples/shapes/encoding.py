"""Encode a rendered ``Scene`` the way the MMGen release encodes its training images.

The per-modality rules live in :mod:`mmgen_edge.sdk.encoding` (the SDK uses them for conditions too); this module
applies them to a scene, in the release order ``rgb, depth, normal, mask`` (``mmgen_edge.MODALITIES``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmgen_edge import MODALITIES
from mmgen_edge.runtime.modalities import DEPTH, MASK, NORMAL, RGB
from mmgen_edge.sdk.encoding import encode_depth, encode_mask, encode_normals

from .scenes import Scene

#: Mask colours of the phase-5 recipe (``ModelConfig.mask_palette``; tried, not shipped: the shipped phase-5b model
#: paints with ``VAE_KEPT_PALETTE``; the release paints at random): a grey background, then up to seven segments
#: largest first in saturated colours at least 109 apart (random colours gave a small model's few-step samples
#: washed-out masks whose objects merged).
MASK_PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128), (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (70, 240, 240),
    (240, 50, 230),
)  # fmt: skip

#: The palette whose masks the demo VAE keeps best (phase 5b): the best of 32 random palettes (``encode_mask``'s colour
#: draws, fixed per palette) by the VAE's round trip of 64 training scenes (seeds 0..63; the eval's held-out scenes
#: untouched): segmentation mIoU 0.888 and the object count right on 95 % of them, against 0.755 / 88 % for
#: ``MASK_PALETTE``, whose saturated colours the VAE decodes with 40-50 units of drift, and 0.802 / 83 % for random
#: colours per scene (``python -m mmgen_edge.samples.shapes.palette_search``, candidate 15 of seed 123).
VAE_KEPT_PALETTE: tuple[tuple[int, int, int], ...] = (
    (97, 150, 122), (207, 133, 238), (134, 179, 240), (144, 31, 230), (253, 177, 100), (127, 240, 51), (142, 255, 181),
    (123, 3, 91),
)  # fmt: skip


def encode_scene(
    scene: Scene, rng: np.random.Generator, palette: Sequence[Sequence[int]] | None = None
) -> dict[str, np.ndarray]:
    """The four encoded modalities, keys ``rgb, depth, normal, mask`` in that order, each (H, W, 3) uint8 (the mask
    painted with ``palette`` when given, else random colours from ``rng``)."""
    encoded = {
        RGB: scene.rgb,
        DEPTH: encode_depth(scene.depth),
        NORMAL: encode_normals(scene.normals),
        MASK: encode_mask(scene.instances, rng, palette),
    }
    return {name: encoded[name] for name in MODALITIES}


def modality_stack(scene: Scene, rng: np.random.Generator, palette: Sequence[Sequence[int]] | None = None) -> np.ndarray:
    """(4, H, W, 3) uint8 stack in the order rgb, depth, normal, mask."""
    return np.stack(list(encode_scene(scene, rng, palette).values()))
