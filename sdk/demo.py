"""``mmgen-edge demo``: the bundled shapes model end to end on CPU, no download, no GPU.

1. Make sure the demo bundle exists and matches the shipped weights (exporting it needs the ``export`` extra; it is
   done once, in a few seconds, and skipped afterwards).
2. Perceive held-out rendered scenes (depth, normals, segmentation next to the exact ground truth, with metrics)
   and a real photo (matplotlib's sample image, when matplotlib is installed; the model only knows the shapes
   world, so this shows behaviour out of distribution).
3. Class-conditioned generation (one sample per class) and depth-conditioned generation.
Writes PNG galleries and ``report.md`` / ``report.json`` to ``--out``.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mmgen_edge.runtime.fileio import sha256_file
from mmgen_edge.runtime.manifest import read_manifest
from mmgen_edge.runtime.sampler import check_steps

from . import processors
from .api import MMGenModel, default_bundle, load

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "samples" / "shapes" / "weights"
DEMO_SCENES = 8
PHOTO = "grace_hopper.jpg"  # in matplotlib's bundled sample data


def ensure_demo_bundle(bundle: Path | None = None, progress: bool = True) -> Path:
    """Return the demo bundle, exporting it from ``samples/shapes/weights`` when missing or stale."""
    bundle = bundle or default_bundle()
    weights = WEIGHTS_DIR / "mmgen" / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"the demo weights are missing ({weights}); run the training recipe: "
                                "python -m mmgen_edge.samples.shapes.train --export samples/shapes/weights")  # fmt: skip
    expected = sha256_file(weights)
    if (bundle / "manifest.json").is_file():
        if read_manifest(bundle, verify="none").provenance.model_weights_sha256 == expected:
            return bundle
    if any(importlib.util.find_spec(m) is None for m in ("torch", "onnx", "diffusers")):
        raise RuntimeError(f"the demo bundle at {bundle} must be exported once, which needs the export extra: "
                           "pip install torch==2.13.0 && pip install -e '.[export]'")  # fmt: skip
    from mmgen_edge.export.onnx_export import export_bundle

    if progress:
        print(f"exporting the demo bundle to {bundle} (once) ...", flush=True)
    export_bundle(WEIGHTS_DIR / "mmgen", WEIGHTS_DIR / "vae", bundle, overwrite=True, progress=progress)
    return bundle


def _disparity(depth: np.ndarray) -> np.ndarray:
    disp = 1.0 / depth
    return ((disp - disp.min()) / max(float(np.ptp(disp)), 1e-9)).astype(np.float32)


def _row(*tiles: np.ndarray) -> np.ndarray:
    return np.concatenate(tiles, axis=1)


def _save(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"could not write {path}")


def perceive_scenes(model: MMGenModel, out: Path, steps: int, seed: int) -> dict[str, Any]:
    from mmgen_edge.samples.shapes.evaluate import held_out_scenes, score
    from mmgen_edge.samples.shapes.metrics import mean_metrics

    scenes = held_out_scenes(DEMO_SCENES, model.resolution)
    start = time.perf_counter()
    results = []
    for i in range(0, len(scenes), model.manifest.max_batch):
        results += model.perceive([s.rgb for s in scenes[i : i + model.manifest.max_batch]], steps=steps, seed=seed)
    seconds = time.perf_counter() - start
    rows = []
    for s, r in zip(scenes, results):
        rows.append(_row(
            s.rgb,
            processors.colourise_depth(r.depth), processors.colourise_depth(_disparity(s.depth)),
            processors.colourise_normals(r.normals), processors.colourise_normals(s.normals),
            processors.colourise_segmentation(r.segmentation.labels), processors.colourise_segmentation(s.instances),
        ))  # fmt: skip
    _save(out / "perception.png", np.concatenate(rows, axis=0))
    metrics = mean_metrics([score(r, s) for r, s in zip(results, scenes)])
    return {"scenes": len(scenes), "seconds_per_frame": seconds / len(scenes), "metrics": metrics,
            "gallery": "perception.png (input | depth pred, truth | normals pred, truth | segments pred, truth)"}  # fmt: skip


def perceive_photo(model: MMGenModel, out: Path, steps: int, seed: int) -> dict[str, Any]:
    if importlib.util.find_spec("matplotlib") is None:
        return {"skipped": "matplotlib is not installed (its sample photo is the demo's real image)"}
    from matplotlib import cbook

    path = Path(str(cbook.get_sample_data(PHOTO, asfileobj=False)))
    r = model.perceive(path, steps=steps, seed=seed)
    photo = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    _save(out / "photo.png", _row(photo, processors.colourise_depth(r.depth), processors.colourise_normals(r.normals),
                                  processors.colourise_segmentation(r.segmentation.labels)))  # fmt: skip
    return {"image": PHOTO, "size": list(photo.shape[:2]), "segments": r.segmentation.num_segments,
            "seconds": sum(r.timings.values()), "gallery": "photo.png"}  # fmt: skip


def generate_samples(model: MMGenModel, out: Path, steps: int, seed: int) -> dict[str, Any]:
    from mmgen_edge.samples.shapes.evaluate import held_out_scenes
    from mmgen_edge.samples.shapes.scenes import CATEGORY_NAMES

    start = time.perf_counter()
    rows = []
    for label in range(model.num_classes):
        g = model.generate(class_label=label, steps=steps, seed=seed + label)
        rows.append(_row(g.rgb, processors.colourise_depth(g.depth), processors.colourise_normals(g.normals),
                         processors.colourise_segmentation(g.segmentation.labels)))  # fmt: skip
    per_class = (time.perf_counter() - start) / model.num_classes
    _save(out / "generation_by_class.png", np.concatenate(rows, axis=0))
    scene = held_out_scenes(1, model.resolution)[0]
    g = model.generate(condition={"depth": _disparity(scene.depth)}, steps=steps, seed=seed)
    _save(out / "generation_from_depth.png", _row(processors.colourise_depth(_disparity(scene.depth)), g.rgb,
                                                  processors.colourise_normals(g.normals)))  # fmt: skip
    return {"classes": list(CATEGORY_NAMES[: model.num_classes]), "seconds_per_sample": per_class,
            "galleries": ["generation_by_class.png (rows = classes)", "generation_from_depth.png (condition | rgb | normals)"]}  # fmt: skip


def run_demo(out_dir: str | Path, steps: int | None = None, seed: int = 0, bundle: str | None = None) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    path = Path(bundle) if bundle else ensure_demo_bundle()
    with load(path) as model:
        k = model.steps if steps is None else check_steps(steps)
        report: dict[str, Any] = {"bundle": str(path), "backend": model.backend, "steps": k,
                                  "model": f"{model.manifest.model.name} {model.resolution} px"}  # fmt: skip
        report["perception"] = perceive_scenes(model, out, k, seed)
        report["photo"] = perceive_photo(model, out, k, seed)
        report["generation"] = generate_samples(model, out, k, seed)
    report["seconds_total"] = time.perf_counter() - start
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return report


def _markdown(report: dict[str, Any]) -> str:
    m = report["perception"]["metrics"]
    return "\n".join([
        f"# mmgen-edge demo ({report['model']}, {report['backend']}, K = {report['steps']})",
        "",
        f"Perception on {report['perception']['scenes']} held-out scenes, {report['perception']['seconds_per_frame'] * 1000:.0f} ms/frame:",
        f"depth δ1 {m['depth_delta1']:.3f}, AbsRel {m['depth_abs_rel']:.3f}; normals mean error {m['normal_mean']:.1f}°; "
        f"segmentation mIoU {m['seg_miou']:.3f}.",
        "",
        "Galleries: perception.png, photo.png, generation_by_class.png, generation_from_depth.png.",
        f"Total {report['seconds_total']:.1f} s.",
        "",
    ])  # fmt: skip
