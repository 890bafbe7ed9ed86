"""Evaluate a bundle on the shapes world, end to end through the SDK (the same path users run; no torch).

    mmgen-edge eval [--bundle B] [--scenes 200] [--steps 1,2,4,8,25] [--out out/eval]

Perception on a fixed held-out set (seeds from ``HELD_OUT_SEED``, never used in training), for each step count K:
- depth: AbsRel and delta1 after per-image scale-and-shift alignment of the predicted disparity;
- normals: mean / median angular error, % under 11.25 and 30 degrees;
- segmentation: mIoU after Hungarian matching of colour-clustered segments to the true instances;
- the same on the OBJECT pixels only (``object_*`` keys; instance id > 0, ground and walls excluded; the depth
  alignment is the whole image's, see ``metrics.object_depth_metrics``), since the planar floor and walls carry
  the whole-image numbers;
next to trivial baselines (constant depth, the mean normal, one segment; on the objects a normal facing the
camera) and the VAE ceiling (the ground truth round-tripped through the bundle's VAE: ``ceiling.vae_ceiling``).
Generation: a per-class sample grid, a consistency score (depth perceived from the generated RGB vs the generated
depth) and the per-class fidelity (the fraction of samples whose segmentation shows the class's number of objects,
``counting.count_objects``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mmgen_edge.runtime.fileio import write_text_atomic
from mmgen_edge.sdk import processors
from mmgen_edge.sdk.images import write_image

from .counting import count_matches_category, count_objects
from .metrics import (
    FACING_CAMERA_NORMAL,
    depth_metrics,
    mean_metrics,
    normal_metrics,
    object_depth_metrics,
    object_normal_metrics,
    object_segmentation_metrics,
    segmentation_metrics,
)
from .scenes import CATEGORY_NAMES, NUM_CATEGORIES, Scene, render_scenes

HELD_OUT_SEED = 1_000_000  # training uses seeds 0..num_scenes-1
DEFAULT_STEPS = (1, 2, 4, 8, 25)
#: Consistency score: generated disparity d in [0, 1] is read as depth 1 / (d + offset) for the depth metrics.
CONSISTENCY_DISPARITY_OFFSET = 0.1
#: Held-out scenes the VAE ceiling round-trips by default (the first ones of the perception set).
DEFAULT_CEILING_SCENES = 64
#: Frames timed per model and K when a second model is compared.
COMPARE_SPEED_FRAMES = 5


#: Most held-out scenes one evaluation renders (they are held in memory: ~0.4 MB each at 128 px).
MAX_HELD_OUT_SCENES = 10_000


def held_out_scenes(num: int, size: int) -> list[Scene]:
    """The first ``num`` held-out scenes (1..MAX_HELD_OUT_SCENES), rendered at ``size``."""
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or not 1 <= num <= MAX_HELD_OUT_SCENES:
        raise ValueError(f"held-out scenes must be an integer in 1..{MAX_HELD_OUT_SCENES}, got {num!r}")
    return render_scenes(range(HELD_OUT_SEED, HELD_OUT_SEED + num), size)


def score(result: Any, scene: Scene) -> dict[str, float]:
    """Per-image metrics of one PerceptionResult against the scene's ground truth (see ``score_maps``)."""
    labels = None if result.segmentation is None else result.segmentation.labels
    return score_maps(scene, result.depth, result.normals, labels)


def score_maps(
    scene: Scene, depth: np.ndarray | None = None, normals: np.ndarray | None = None, labels: np.ndarray | None = None
) -> dict[str, float]:
    """Per-image metrics of predicted maps against the scene's ground truth, whole image and objects only.

    Args:
        scene: the rendered scene (ground truth).
        depth: (H, W) predicted relative disparity, or None.
        normals: (H, W, 3) predicted camera-space normals, or None.
        labels: (H, W) predicted segment labels, or None.

    Returns:
        ``depth_*``, ``normal_*``, ``seg_*`` (whole image) and ``object_depth_*``, ``object_normal_*``,
        ``object_seg_miou`` (object pixels, instance id > 0) for the maps given.
    """
    out: dict[str, float] = {}
    if depth is not None:
        out.update({f"depth_{k}": v for k, v in depth_metrics(depth, scene.depth).items()})
        out.update({f"object_depth_{k}": v for k, v in object_depth_metrics(depth, scene.depth, scene.instances).items()})
    if normals is not None:
        out.update({f"normal_{k}": v for k, v in normal_metrics(normals, scene.normals).items()})
        out.update({f"object_normal_{k}": v for k, v in object_normal_metrics(normals, scene.normals, scene.instances).items()})
    if labels is not None:
        out.update({f"seg_{k}": v for k, v in segmentation_metrics(labels, scene.instances).items()})
        out["object_seg_miou"] = object_segmentation_metrics(labels, scene.instances)["miou"]
    return out


def evaluate_perception(model: Any, scenes: Sequence[Scene], steps: int, seed: int = 0, progress: bool = False) -> dict[str, float]:
    """Mean metrics over ``scenes`` at ``steps`` sampler steps, plus seconds per frame."""
    batch = model.manifest.max_batch
    items: list[dict[str, float]] = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(scenes), batch), desc=f"perceive K={steps}", unit="batch", disable=not progress):
        chunk = scenes[i : i + batch]
        results = model.perceive([s.rgb for s in chunk], steps=steps, seed=seed)
        items += [score(r, s) for r, s in zip(results, chunk)]
    summary = mean_metrics(items)
    summary["seconds_per_frame"] = (time.perf_counter() - start) / len(scenes)
    return summary


#: The model stages of a perceive frame (``PerceptionResult.timings``), summed into its frame time.
FRAME_STAGES = ("encode", "steps", "decode")


def compare_stage_times(models: Mapping[str, Any], image: np.ndarray, steps: int, frames: int = 10,
                        warmup: int = 2) -> dict[str, Any]:  # fmt: skip
    """Median milliseconds per stage and per frame of several loaded models, one frame at a time, interleaved.

    Args:
        models: label -> loaded model (``mmgen_edge.load``); the first is the reference of the speedups.
        image: one RGB frame.
        steps: sampler steps K.
        frames: timed frames per model (after ``warmup`` untimed ones each).

    Returns:
        ``{"frames", "steps", LABEL: {stage: ms, "frame": ms}, "speedup": {LABEL: {stage: reference / LABEL}}}``
        (``speedup`` holds every label but the reference).
    """
    if frames < 1 or warmup < 0:
        raise ValueError(f"frames must be >= 1 and warmup >= 0, got {frames}, {warmup}")
    times: dict[str, dict[str, list[float]]] = {label: {} for label in models}
    for run in range(warmup + frames):
        for label, model in models.items():
            timings = model.perceive(image, steps=steps, seed=0).timings
            if run >= warmup:
                for stage in FRAME_STAGES:
                    times[label].setdefault(stage, []).append(timings[stage])
                times[label].setdefault("frame", []).append(sum(timings[s] for s in FRAME_STAGES))
    out: dict[str, Any] = {"frames": frames, "steps": steps}
    for label, stages in times.items():
        out[label] = {stage: 1000 * float(np.median(values)) for stage, values in stages.items()}
    reference = next(iter(models))
    out["speedup"] = {label: {stage: out[reference][stage] / max(out[label][stage], 1e-9) for stage in out[label]}
                      for label in models if label != reference}  # fmt: skip
    return out


def baselines(scenes: Sequence[Scene]) -> dict[str, dict[str, float]]:
    """Trivial predictors the model must beat, on the same pixels as each metric.

    Constant depth and one segment everywhere; normals: the held-out set's mean normal for the whole image, a
    normal facing the camera (``FACING_CAMERA_NORMAL``) for the objects (``object_*`` keys).
    """
    mean_normal = np.mean([s.normals.reshape(-1, 3).mean(axis=0) for s in scenes], axis=0)
    mean_normal = (mean_normal / np.linalg.norm(mean_normal)).astype(np.float32)
    facing = np.asarray(FACING_CAMERA_NORMAL, np.float32)
    items = []
    for s in scenes:
        h, w = s.depth.shape
        constant_depth, one_segment = np.full((h, w), 0.5, np.float32), np.zeros((h, w), np.int32)
        whole = score_maps(s, constant_depth, np.broadcast_to(mean_normal, (h, w, 3)), one_segment)
        objects = score_maps(s, normals=np.broadcast_to(facing, (h, w, 3)))
        items.append({**whole, **{k: v for k, v in objects.items() if k.startswith("object_")}})
    return {"trivial": mean_metrics(items)}


def true_object_count(scene: Scene) -> int:
    """The scene's number of objects (distinct instance ids > 0)."""
    return int(np.unique(scene.instances[scene.instances > 0]).size)


def _mask_palette(instances: np.ndarray, mask_image: np.ndarray) -> np.ndarray:
    """(K, 3) colour that the encoded ``mask_image`` paints each instance id 0..K-1 with (absent ids: black)."""
    ids, first = np.unique(instances.ravel(), return_index=True)
    palette = np.zeros((int(ids.max()) + 1, 3), np.uint8)
    palette[ids] = mask_image.reshape(-1, 3)[first]
    return palette


def vae_ceiling(model: Any, scenes: Sequence[Scene], progress: bool = False) -> dict[str, float]:
    """The ground truth round-tripped through the bundle's VAE and scored like a prediction: the autoencoder's share.

    Each scene's depth, normals and instances are encoded as the training data is (``encoding.encode_scene``,
    the mask painted with the model's ``mask_palette``, or colours drawn from ``default_rng(scene.seed)``), run
    through the bundle's ``vae_encoder`` and ``vae_decoder`` graphs (``Pipeline.encode`` / ``decode``: the bundle's
    torch-free runners), turned into maps by the SDK's post-processing (``sdk.api.maps_from_images``) and scored
    with ``score_maps``. A perfect transformer would score this; the distance from here to a K row is the
    transformer's error.

    Args:
        model: a loaded ``MMGenModel``.
        scenes: held-out scenes at the model's resolution.
        progress: show a progress bar.

    Returns:
        The ``score_maps`` means; ``object_count_accuracy``: the fraction of scenes where ``count_objects`` on the
        round-tripped segmentation finds the true number of objects (the ceiling of the generation fidelity);
        ``object_count_accuracy_exact``: the same on the exact encoded masks (the counter's own accuracy);
        ``seconds_per_frame``.
    """
    from mmgen_edge.runtime.modalities import perception_modalities
    from mmgen_edge.sdk.api import maps_from_images

    from .encoding import encode_scene

    size = (model.resolution, model.resolution)
    if any(s.depth.shape != size for s in scenes):
        raise ValueError(f"scenes must be rendered at the model resolution {size}, got {sorted({s.depth.shape for s in scenes})}")
    batch = model.manifest.max_batch
    palette = model.manifest.model.mask_palette
    modalities = perception_modalities(model.manifest.modalities)
    items: list[dict[str, float]] = []
    start = time.perf_counter()
    for i in tqdm(range(0, len(scenes), batch), desc="VAE ceiling", unit="batch", disable=not progress):
        chunk = scenes[i : i + batch]
        encoded = [encode_scene(s, np.random.default_rng(s.seed), palette) for s in chunk]
        images = np.stack([e[m] for m in modalities for e in encoded])  # (3n, R, R, 3), modality-major
        decoded = model.pipeline.decode(model.pipeline.encode(images))  # (3n, R, R, 3) uint8
        for j, (scene, enc) in enumerate(zip(chunk, encoded)):
            maps = maps_from_images({m: decoded[k * len(chunk) + j] for k, m in enumerate(modalities)}, size)
            seg = maps["segmentation"]
            truth = true_object_count(scene)
            exact = count_objects(scene.instances, _mask_palette(scene.instances, enc["mask"]))
            items.append({
                **score_maps(scene, maps["depth"], maps["normals"], seg.labels),  # type: ignore[union-attr]
                "object_count_accuracy": float(count_objects(seg.labels, seg.colours) == truth),  # type: ignore[union-attr]
                "object_count_accuracy_exact": float(exact == truth),
            })  # fmt: skip
    summary = mean_metrics(items)
    summary["seconds_per_frame"] = (time.perf_counter() - start) / len(scenes)
    return summary


def evaluate_generation(
    model: Any, out_dir: Path, per_class: int = 4, steps: int = 4, cfg_scale: float | None = None, first_seed: int = 0
) -> dict[str, Any]:
    """A per-class sample grid (rows = classes; rgb | depth | normals | segments per sample), consistency and fidelity.

    ``cfg_scale`` None samples with the bundle's default guidance (``manifest.sampler.cfg_scale``), as users do.
    Sample ``j`` of class ``label`` uses seed ``first_seed + 1000 * label + j``: choosing a sampler setting on one
    ``first_seed`` and reporting on another keeps the choice off the reported samples.

    Returns:
        ``consistency_*`` (means over all samples), ``fidelity`` (the fraction of all samples whose segmentation
        shows their class's number of objects, ``counting.count_objects``), ``fidelity_per_class`` ({class name:
        fraction of its ``per_class`` samples}), ``cfg_scale`` and ``steps`` (what the samples used).
    """
    from mmgen_edge.runtime.sampler import check_integer
    from mmgen_edge.sdk.protocol import MAX_SEED

    check_integer(first_seed, "first_seed", 0, MAX_SEED - 1000 * (model.num_classes - 1) - max(per_class - 1, 0))
    cfg_scale = model.guidance(cfg_scale)
    rows, items, fidelity = [], [], {}
    for label in range(model.num_classes):
        tiles, hits = [], 0
        for j in range(per_class):
            g = model.generate(class_label=label, steps=steps, seed=first_seed + label * 1000 + j, cfg_scale=cfg_scale)
            tiles += [g.rgb, processors.colourise_depth(g.depth), processors.colourise_normals(g.normals),
                      processors.colourise_segmentation(g.segmentation.labels)]  # fmt: skip
            perceived = model.perceive(g.rgb, tasks=("depth",), steps=steps, seed=0)
            pseudo_depth = 1.0 / (g.depth + CONSISTENCY_DISPARITY_OFFSET)
            items.append({f"consistency_{k}": v for k, v in depth_metrics(perceived.depth, pseudo_depth).items()})
            if label < NUM_CATEGORIES:  # a shapes-world category (other models' classes have no known content)
                hits += count_matches_category(count_objects(g.segmentation.labels, g.segmentation.colours), label)
        if label < NUM_CATEGORIES:
            fidelity[CATEGORY_NAMES[label]] = hits / per_class
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    write_image(out_dir / "generation_grid.png", grid)
    summary: dict[str, Any] = {**mean_metrics(items), "cfg_scale": float(cfg_scale), "steps": steps,
                               "first_seed": first_seed}
    if fidelity:
        summary.update(fidelity=float(np.mean(list(fidelity.values()))), fidelity_per_class=fidelity)
    return summary


def run_evaluation(
    model: Any,
    out_dir: str | Path,
    num_scenes: int = 200,
    steps: Sequence[int] = DEFAULT_STEPS,
    generation_per_class: int = 2,
    progress: bool = False,
    ceiling_scenes: int = DEFAULT_CEILING_SCENES,
    compare: Any | None = None,
    speed_frames: int = COMPARE_SPEED_FRAMES,
    generation_cfg_scale: float | None = None,
    generation_seed: int = 0,
) -> dict[str, Any]:
    """The full report (written to ``out_dir/report.json`` and ``report.md``).

    Args:
        model: a loaded ``MMGenModel`` of the shapes world.
        out_dir: where the report and the generation grid go.
        num_scenes: held-out scenes scored for perception.
        steps: sampler step counts K, one perception row each.
        generation_per_class: class-conditioned samples per class (grid, consistency, fidelity); 0 skips them.
        progress: show progress bars.
        ceiling_scenes: the first this many held-out scenes (at most ``num_scenes``) are round-tripped through the
            VAE for the ceiling (it costs about one K = 1 perception pass per scene); 0 skips it.
        compare: a second loaded model (e.g. the same model with a distilled decoder) scored on the same scenes and
            timed stage by stage against ``model``, interleaved (``compare_stage_times``, ``speed_frames`` each).
        generation_cfg_scale: guidance of the class samples (None: the bundle's default).
        generation_seed: seed of the first class sample (``evaluate_generation``'s ``first_seed``).

    Returns:
        The report: ``perception`` {K: metrics}, ``baselines`` {"trivial": metrics}, ``vae_ceiling`` (unless
        skipped), ``generation`` (unless skipped); metric keys as ``score_maps`` (whole image and ``object_*``).
    """
    if ceiling_scenes < 0:
        raise ValueError(f"ceiling_scenes must be >= 0, got {ceiling_scenes!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scenes = held_out_scenes(num_scenes, model.resolution)
    ceiling_count = min(ceiling_scenes, num_scenes)
    report: dict[str, Any] = {
        "bundle": str(model.pipeline.bundle),
        "backend": model.backend,
        "held_out": {"first_seed": HELD_OUT_SEED, "scenes": num_scenes, "resolution": model.resolution,
                     "ceiling_scenes": ceiling_count},  # fmt: skip
        "perception": {str(k): evaluate_perception(model, scenes, k, progress=progress) for k in steps},
        "baselines": baselines(scenes),
    }
    if compare is not None:
        decoder = compare.manifest.vae.decoder
        report["compare"] = {
            "bundle": str(compare.pipeline.bundle), "decoder": decoder.model_dump() if decoder else None,
            "perception": {str(k): evaluate_perception(compare, scenes, k, progress=progress) for k in steps},
            "ms": {str(k): compare_stage_times({"this": model, "compare": compare}, scenes[0].rgb, k, speed_frames)
                   for k in steps},
        }  # fmt: skip
    if ceiling_count > 0:
        report["vae_ceiling"] = vae_ceiling(model, scenes[:ceiling_count], progress=progress)
    if generation_per_class > 0:
        report["generation"] = evaluate_generation(model, out, generation_per_class, steps=max(4, min(steps)),
                                                   cfg_scale=generation_cfg_scale, first_seed=generation_seed)
        report["generation"]["classes"] = list(CATEGORY_NAMES[: model.num_classes])
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / "report.md", markdown(report))
    return report


def _table(title: str, cols: Sequence[tuple[str, str, str]], rows: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    lines = ["", title, "", "| K | " + " | ".join(c[1] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(fmt.format(m[key]) if key in m else "" for key, _, fmt in cols) + " |")
    return lines


def _compare_lines(report: dict[str, Any]) -> list[str]:
    c = report["compare"]
    part = c.get("decoder") or {}
    lines = ["", f"Side by side with {c['bundle']} (decoder: {part.get('family', '?')} from {part.get('source', '?')}, "
             f"{part.get('parameters', 0):,} parameters), same scenes, stages timed interleaved (median ms):", "",
             "| K | bundle | depth δ1 | normal err ° | mIoU | objects: δ1 | objects: normal err ° | objects: mIoU "
             "| encode | steps | decode | frame |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for k, ms in c["ms"].items():
        for label, name, m in (("this", "this", report["perception"][k]), ("compare", "compare", c["perception"][k])):
            t = ms[label]
            lines.append(f"| {k} | {name} | {m['depth_delta1']:.3f} | {m['normal_mean']:.1f} | {m['seg_miou']:.3f} | "
                         f"{m['object_depth_delta1']:.3f} | {m['object_normal_mean']:.1f} | {m['object_seg_miou']:.3f} | "
                         f"{t['encode']:.1f} | {t['steps']:.1f} | {t['decode']:.1f} | {t['frame']:.1f} |")  # fmt: skip
    speed = ", ".join(f"K={k}: decode {ms['speedup']['compare']['decode']:.2f}x, frame {ms['speedup']['compare']['frame']:.2f}x"
                      for k, ms in c["ms"].items())  # fmt: skip
    return lines + ["", f"Speed of the compared bundle: {speed}."]


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: whole-image and object-pixel tables, then generation."""
    cols = [("depth_delta1", "depth δ1", "{:.3f}"), ("depth_abs_rel", "AbsRel", "{:.3f}"),
            ("normal_mean", "normal err °", "{:.1f}"), ("normal_pct_11_25", "% < 11.25°", "{:.2f}"),
            ("normal_pct_30", "% < 30°", "{:.2f}"), ("seg_miou", "mIoU", "{:.3f}"),
            ("seconds_per_frame", "s / frame", "{:.3f}")]  # fmt: skip
    object_cols = [(f"object_{key}", label, fmt) for key, label, fmt in cols if key != "seconds_per_frame"]
    held_out = report["held_out"]
    rows = [(f"K={k}", v) for k, v in report["perception"].items()]
    if "vae_ceiling" in report:
        rows.append((f"VAE ceiling ({held_out.get('ceiling_scenes', held_out['scenes'])} scenes)", report["vae_ceiling"]))
    rows.append(("trivial baseline", report["baselines"]["trivial"]))
    lines = [f"# Shapes evaluation ({held_out['scenes']} held-out scenes, {report['backend']})"]
    lines += _table("Whole image:", cols, rows)
    lines += _table("Object pixels only (instance id > 0; ground and walls excluded; depth aligned on the whole image; "
                    "trivial normal: facing the camera):", object_cols, rows)  # fmt: skip
    if "compare" in report:
        lines += _compare_lines(report)
    if "vae_ceiling" in report:
        c = report["vae_ceiling"]
        lines += ["", "VAE ceiling: the ground-truth maps encoded, round-tripped through the bundle's VAE and decoded by the "
                  f"SDK; no transformer can beat it with this VAE. Object counter on its masks: {c['object_count_accuracy']:.1%} "
                  f"of scenes counted right (exact masks: {c['object_count_accuracy_exact']:.1%})."]  # fmt: skip
    if "generation" in report:
        g = report["generation"]
        lines += ["", f"Generation (K = {g['steps']}, guidance {g['cfg_scale']:g}) consistency (depth from generated RGB "
                  f"vs generated depth): δ1 {g['consistency_delta1']:.3f}, AbsRel {g['consistency_abs_rel']:.3f}. Grid: "
                  "generation_grid.png (rows = classes)."]  # fmt: skip
        if "fidelity" in g:
            per_class = ", ".join(f"{name} {value:.2f}" for name, value in g["fidelity_per_class"].items())
            lines += ["", f"Generation fidelity (samples whose segmentation shows the class's number of objects): "
                      f"{g['fidelity']:.3f}; per class: {per_class}."]  # fmt: skip
    return "\n".join(lines) + "\n"
