"""Encode a rendered ``Scene`` the way the MMGen release encodes its training images.

The per-modality rules live in :mod:`mmgen_edge.sdk.encoding` (the SDK uses them for conditions too); this module
applies them to a scene, in the release order ``rgb, depth, normal, mask`` (``mmgen_edge.MODALITIES``).
"""

from __future__ import annotations

import numpy as np

from mmgen_edge import MODALITIES
from mmgen_edge.runtime.modalities import DEPTH, MASK, NORMAL, RGB
from mmgen_edge.sdk.encoding import encode_depth, encode_mask, encode_normals

from .scenes import Scene


def encode_scene(scene: Scene, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The four encoded modalities, keys ``rgb, depth, normal, mask`` in that order, each (H, W, 3) uint8."""
    encoded = {
        RGB: scene.rgb,
        DEPTH: encode_depth(scene.depth),
        NORMAL: encode_normals(scene.normals),
        MASK: encode_mask(scene.instances, rng),
    }
    return {name: encoded[name] for name in MODALITIES}


def modality_stack(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """(4, H, W, 3) uint8 stack in the order rgb, depth, normal, mask."""
    return np.stack(list(encode_scene(scene, rng).values()))
