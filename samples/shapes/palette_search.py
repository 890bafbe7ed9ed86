"""Choose a mask palette the bundle's VAE keeps: random palettes scored by the VAE's round trip of training scenes.

    python -m mmgen_edge.samples.shapes.palette_search --bundle samples/shapes/bundle [--palettes 32] [--scenes 64]

A palette (``ModelConfig.mask_palette``) fixes the colour of the background and of each segment in paint order. The
demo VAE decodes some colours with more drift than others (saturated ones split into several segments), so the
ground truth's own round trip, the ceiling of every segmentation the model makes, depends on the palette. Each
candidate paints the masks of training scenes (seeds from 0: the eval's held-out scenes stay untouched), the masks
go through the bundle's VAE encoder and decoder and the SDK's segment decoder, and the candidates are ranked by
segmentation mIoU (the object count accuracy is printed next to it). Candidates are ``encode_mask``'s own colour
draws (uniform, at least 64 apart), one fixed draw per palette.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmgen_edge.config import check_mask_palette
from mmgen_edge.sdk.encoding import encode_mask

from .counting import count_objects
from .evaluate import true_object_count
from .metrics import segmentation_metrics
from .scenes import Scene, render_scene

#: Colours per candidate palette: the background and seven segments (the most any category shows is six).
PALETTE_SIZE = 8


def random_palette(rng: np.random.Generator, size: int = PALETTE_SIZE) -> tuple[tuple[int, int, int], ...]:
    """``size`` colours drawn as ``encode_mask`` draws them (uniform RGB, each at least 64 from the others)."""
    painted = encode_mask(np.arange(size, dtype=np.int64)[None].repeat(2, axis=0), rng)  # (2, size, 3): one per id
    return check_mask_palette([tuple(int(c) for c in colour) for colour in painted[0]])


def round_trip_scores(model: Any, scenes: Sequence[Scene], palette: Sequence[Sequence[int]] | None) -> dict[str, float]:
    """Mean segmentation mIoU and object-count accuracy of the scenes' masks painted with ``palette`` (None: random
    colours per scene) after the model's VAE round trip and the SDK's segment decoder."""
    from mmgen_edge.sdk.processors import segment_from_image

    masks = np.stack([encode_mask(s.instances, np.random.default_rng(s.seed), palette) for s in scenes])
    decoded = model.pipeline.decode(model.pipeline.encode(masks))  # (N, R, R, 3) uint8
    miou, counted = [], []
    for scene, image in zip(scenes, decoded):
        segmentation = segment_from_image(image)
        miou.append(segmentation_metrics(segmentation.labels, scene.instances)["miou"])
        counted.append(count_objects(segmentation.labels, segmentation.colours) == true_object_count(scene))
    return {"miou": float(np.mean(miou)), "count_accuracy": float(np.mean(counted))}


def main() -> None:
    from mmgen_edge.cli import positive_int
    from mmgen_edge.sdk import api

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True, help="a shapes-world bundle (its VAE does the round trip)")
    parser.add_argument("--palettes", type=positive_int, default=32, help="random candidate palettes")
    parser.add_argument("--scenes", type=positive_int, default=64, help="training scenes (seeds 0..N-1)")
    parser.add_argument("--seed", type=int, default=123, help="seed of the candidate draws")
    args = parser.parse_args()
    model = api.load(args.bundle, backend="ort-cpu")
    scenes = [render_scene(seed, model.resolution) for seed in range(args.scenes)]
    print("random colours per scene:", round_trip_scores(model, scenes, None))
    rng = np.random.default_rng(args.seed)
    ranked = []
    for _ in range(args.palettes):
        palette = random_palette(rng)
        ranked.append((round_trip_scores(model, scenes, palette), palette))
        print(ranked[-1][0], palette, flush=True)
    ranked.sort(key=lambda item: -item[0]["miou"])
    print("best:", ranked[0])


if __name__ == "__main__":
    main()
