"""``mmgen-edge demo``: the bundled shapes model end to end on CPU, no download, no GPU.

1. Make sure the demo bundle exists and matches the shipped weights (exporting it needs the ``export`` extra; it is
   done once, in a few seconds, and skipped afterwards).
2. Perceive held-out rendered scenes (depth, normals, segmentation next to the exact ground truth, with metrics,
   whole image and object pixels) and a real photo (matplotlib's sample image, when matplotlib is installed). The
   photo is OUT OF DOMAIN for a model that only knows the shapes world; its gallery and report say so
   (``PHOTO_CAPTION``), so nobody reads it as the SDK's quality.
3. Class-conditioned generation (one sample per class) and depth-conditioned generation.
Writes PNG galleries and ``report.md`` / ``report.json`` to ``--out``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mmgen_edge.runtime.fileio import sha256_file, weights_sha256, write_text_atomic
from mmgen_edge.runtime.manifest import read_manifest
from mmgen_edge.runtime.sampler import SamplerConfig, check_steps

from . import processors
from .api import MMGenModel, default_bundle, load
from .images import write_image

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "samples" / "shapes" / "weights"
#: The demo's distilled decoder (``mmgen-edge distill-vae``, diffusers ``AutoencoderTiny``).
TINY_DECODER_DIR = WEIGHTS_DIR / "vae-tiny"
#: The demo bundle's sampler: the export default (Euler, 4 steps) with classifier-free guidance 3 on the class label
#: by default, applied while t >= 0.5 (the first three of four steps, where the layout and so the object count is
#: decided; the last step unguided, a quarter fewer evaluations): the best for the share of class samples showing
#: their class's number of objects on two seed sets the eval does not use (README "The demo model"); and class
#: samples start from noise scaled by 0.8 (a lower temperature: fewer samples that split or merge objects, on the
#: same seed sets). A bundle exported with another sampler is stale.
DEMO_SAMPLER = SamplerConfig(cfg_scale=3.0, guidance_low=0.5, noise_scale=0.8)
#: Frames timed per decoder when the demo compares them.
DECODER_SPEED_FRAMES = 10
DEMO_SCENES = 8
PHOTO = "grace_hopper.jpg"  # in matplotlib's bundled sample data
PHOTO_CAPTION = ("out of domain: the demo model only knows the shapes world; "
                 "real photos need the release weights: see journey 1 in the README")  # fmt: skip
CAPTION_HEIGHT_FRACTION = 0.06  # caption band height as a fraction of the gallery width
GLYPH_HEIGHT = 22.0  # pixels of a capital of cv2.FONT_HERSHEY_SIMPLEX at scale 1, with its descent


def ensure_demo_bundle(bundle: Path | None = None, progress: bool = True) -> Path:
    """Return the demo bundle, exporting it from ``samples/shapes/weights`` when missing or stale."""
    bundle = bundle or default_bundle()
    weights = WEIGHTS_DIR / "mmgen" / "model.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"the demo weights are missing ({weights}); run the training recipe: "
                                "python -m mmgen_edge.samples.shapes.train --export samples/shapes/weights")  # fmt: skip
    expected = sha256_file(weights)
    if (bundle / "manifest.json").is_file():
        manifest = read_manifest(bundle, verify="none")
        if manifest.provenance.model_weights_sha256 == expected and manifest.sampler == DEMO_SAMPLER:
            return bundle
    _require_export_extra(bundle, "MMGEN_EDGE_BUNDLE")
    from mmgen_edge.export.onnx_export import export_bundle

    if progress:
        print(f"exporting the demo bundle to {bundle} (once) ...", flush=True)
    export_bundle(WEIGHTS_DIR / "mmgen", WEIGHTS_DIR / "vae", bundle, sampler=DEMO_SAMPLER, overwrite=True, progress=progress)
    return bundle


def default_tiny_bundle() -> Path:
    """The demo model's bundle with the distilled decoder (``MMGEN_EDGE_TINY_BUNDLE`` overrides)."""
    return Path(os.environ.get("MMGEN_EDGE_TINY_BUNDLE", default_bundle().with_name(default_bundle().name + "-tiny")))


def ensure_tiny_decoder_bundle(bundle: Path | None = None, progress: bool = True) -> Path:
    """Return the demo bundle whose ``vae_decoder`` is the shipped distilled decoder, exporting it when missing or
    stale. Its accuracy gate against the full decoder runs at export and its verdict is recorded in
    ``manifest.vae.gate`` whichever it is (the export is forced, so that the demo and eval can show the verdict and
    the numbers behind it side by side). Raises RuntimeError without the export extra."""
    bundle = bundle or default_tiny_bundle()
    weights = WEIGHTS_DIR / "mmgen" / "model.safetensors"
    if not (TINY_DECODER_DIR / "config.json").is_file():
        raise FileNotFoundError(f"the demo's distilled decoder is missing ({TINY_DECODER_DIR})")
    if (bundle / "manifest.json").is_file():
        manifest = read_manifest(bundle, verify="none")
        decoder = manifest.vae.decoder
        if (manifest.provenance.model_weights_sha256 == sha256_file(weights) and manifest.sampler == DEMO_SAMPLER
                and decoder is not None
                and decoder.weights_sha256 == weights_sha256(TINY_DECODER_DIR)
                and manifest.vae.weights_sha256 == weights_sha256(WEIGHTS_DIR / "vae")):  # fmt: skip
            return bundle
    _require_export_extra(bundle, "MMGEN_EDGE_TINY_BUNDLE")
    from mmgen_edge.export.onnx_export import export_bundle
    from mmgen_edge.export.student_gate import StudentOptions

    if progress:
        print(f"exporting the demo bundle with the distilled decoder to {bundle} (once, with its accuracy gate) ...",
              flush=True)  # fmt: skip
    export_bundle(WEIGHTS_DIR / "mmgen", WEIGHTS_DIR / "vae", bundle, sampler=DEMO_SAMPLER, overwrite=True,
                  progress=progress, students=StudentOptions(decoder=TINY_DECODER_DIR, force=True))  # fmt: skip
    return bundle


def _require_export_extra(bundle: Path, variable: str) -> None:
    if any(importlib.util.find_spec(m) is None for m in ("torch", "onnx", "diffusers")):
        raise RuntimeError(f"the demo bundle at {bundle} must be exported once, which needs the export extra: "
                           "pip install torch==2.13.0 && pip install 'mmgen-edge[export]' (from a clone: pip install -e "
                           f"'.[export]'); or set {variable} to a bundle exported elsewhere")  # fmt: skip


def _disparity(depth: np.ndarray) -> np.ndarray:
    disp = 1.0 / depth
    return ((disp - disp.min()) / max(float(np.ptp(disp)), 1e-9)).astype(np.float32)


def _row(*tiles: np.ndarray) -> np.ndarray:
    return np.concatenate(tiles, axis=1)


def _save(path: Path, rgb: np.ndarray) -> None:
    write_image(path, rgb)


def _captioned(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` with a white band underneath holding ``text`` in black, scaled to fit the width (1 or 2 lines)."""
    height, width = image.shape[:2]
    band_height = max(24, int(round(CAPTION_HEIGHT_FRACTION * width)))
    head, sep, tail = text.partition("; ")
    lines = [head + sep.strip(), tail] if sep else [text]
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    widest = max(cv2.getTextSize(line, font, 1.0, thickness)[0][0] for line in lines)
    scale = min(0.95 * width / widest, 0.4 * band_height / GLYPH_HEIGHT)
    band = np.full((band_height, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        y = int(band_height * (i + 1) / (len(lines) + 0.3))
        cv2.putText(band, line, (int(0.02 * width), y), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return np.concatenate([image, band], axis=0)


def perceive_scenes(model: MMGenModel, out: Path, steps: int, seed: int) -> dict[str, Any]:
    from mmgen_edge.samples.shapes.evaluate import baselines, held_out_scenes, score
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
    facing = baselines(scenes)["trivial"]["object_normal_mean"]
    return {"scenes": len(scenes), "seconds_per_frame": seconds / len(scenes), "metrics": metrics,
            "object_normal_facing_camera": facing,
            "gallery": "perception.png (input | depth pred, truth | normals pred, truth | segments pred, truth)"}  # fmt: skip


def perceive_photo(model: MMGenModel, out: Path, steps: int, seed: int) -> dict[str, Any]:
    if importlib.util.find_spec("matplotlib") is None:
        return {"skipped": "matplotlib is not installed (its sample photo is the demo's real image)"}
    from matplotlib import cbook

    path = Path(str(cbook.get_sample_data(PHOTO, asfileobj=False)))
    r = model.perceive(path, steps=steps, seed=seed)
    photo = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    gallery = _row(photo, processors.colourise_depth(r.depth), processors.colourise_normals(r.normals),
                   processors.colourise_segmentation(r.segmentation.labels))  # fmt: skip
    _save(out / "photo.png", _captioned(gallery, PHOTO_CAPTION))
    return {"image": PHOTO, "size": list(photo.shape[:2]), "segments": r.segmentation.num_segments,
            "seconds": sum(r.timings.values()), "gallery": "photo.png", "note": PHOTO_CAPTION}  # fmt: skip


def compare_decoders(model: MMGenModel, tiny_bundle: Path, steps: int, seed: int) -> dict[str, Any]:
    """The full and the distilled decoder side by side: accuracy on the demo's held-out scenes and the median time of
    each stage, frame by frame, interleaved, on the same backend."""
    from mmgen_edge.samples.shapes.evaluate import compare_stage_times, evaluate_perception, held_out_scenes

    scenes = held_out_scenes(DEMO_SCENES, model.resolution)
    with load(tiny_bundle, backend=model.backend) as tiny:
        metrics = {"full": evaluate_perception(model, scenes, steps, seed=seed),
                   "tiny": evaluate_perception(tiny, scenes, steps, seed=seed)}  # fmt: skip
        times = compare_stage_times({"full": model, "tiny": tiny}, scenes[0].rgb, steps, DECODER_SPEED_FRAMES)
        decoder = tiny.manifest.vae.decoder
        gate = tiny.manifest.vae.gate or {}
    return {"bundle": str(tiny_bundle), "backend": model.backend, "decoder": decoder.model_dump() if decoder else None,
            "metrics": metrics,
            "ms": {"full": times["full"], "tiny": times["tiny"]}, "speedup": times["speedup"]["tiny"],
            "gate": {**{k: gate.get(k) for k in ("passed", "forced", "mode", "eval_scenes", "eval_steps", "data", "frames")},
                     "failures": [f.get("description") for f in gate.get("failures") or []]}}  # fmt: skip


def _tiny_decoder_section(model: MMGenModel, steps: int, seed: int, tiny_bundle: Path | None) -> dict[str, Any]:
    """``compare_decoders``, or why it was skipped (no export extra to export the tiny bundle)."""
    try:
        path = tiny_bundle or ensure_tiny_decoder_bundle()
    except (RuntimeError, FileNotFoundError) as e:
        return {"skipped": str(e)}
    return compare_decoders(model, path, steps, seed)


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


def run_demo(
    out_dir: str | Path, steps: int | None = None, seed: int = 0, bundle: str | None = None,
    tiny_bundle: str | None = None, compare: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """The demo; ``compare`` adds the distilled decoder side by side (``tiny_bundle``, default: the demo's own)."""
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
        if compare:
            report["decoders"] = _tiny_decoder_section(model, k, seed, Path(tiny_bundle) if tiny_bundle else None)
        report["generation"] = generate_samples(model, out, k, seed)
    report["seconds_total"] = time.perf_counter() - start
    write_text_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text_atomic(out / "report.md", _markdown(report))
    return report


def _decoder_lines(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    if "skipped" in section:
        return [f"Distilled decoder: not compared ({section['skipped']}).", ""]
    full, tiny = section["metrics"]["full"], section["metrics"]["tiny"]
    ms, up = section["ms"], section["speedup"]
    gate = section["gate"]
    verdict = "passed" if gate.get("passed") else ("FAILED, forced" if gate.get("forced") else "not run")
    where = f"{gate['eval_scenes']} held-out scenes" if gate.get("eval_scenes") else f"{gate.get('frames')} frames of {gate.get('data')}"
    part = section.get("decoder") or {}
    rows = [
        f"Distilled decoder ({part.get('family', '?')}, {part.get('parameters', 0):,} parameters; accuracy gate {verdict} "
        f"on {where}), next to the full one on {section['backend']}:",
        "",
        "| decoder | depth δ1 | normal err ° | mIoU | objects: normal err ° | encode ms | steps ms | decode ms | frame ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in (("full", full), ("tiny", tiny)):
        t = ms[name]
        rows.append(f"| {name} | {m['depth_delta1']:.3f} | {m['normal_mean']:.1f} | {m['seg_miou']:.3f} | "
                    f"{m['object_normal_mean']:.1f} | {t['encode']:.1f} | {t['steps']:.1f} | {t['decode']:.1f} | {t['frame']:.1f} |")  # fmt: skip
    rows += ["", f"The distilled decoder decodes {up['decode']:.2f}x faster; the whole frame is {up['frame']:.2f}x faster."]
    if gate.get("failures"):
        rows += ["", "The gate refused it (the bundle is kept for this comparison): " + "; ".join(gate["failures"]) + "."]
    rows.append("")
    return rows


def _markdown(report: dict[str, Any]) -> str:
    m = report["perception"]["metrics"]
    photo = report.get("photo", {})
    photo_line = (f"The photo ({photo['image']}, photo.png) is {photo['note']}." if "note" in photo
                  else f"Photo: {photo.get('skipped', 'not run')}.")  # fmt: skip
    return "\n".join([
        f"# mmgen-edge demo ({report['model']}, {report['backend']}, K = {report['steps']})",
        "",
        f"Perception on {report['perception']['scenes']} held-out scenes, {report['perception']['seconds_per_frame'] * 1000:.0f} ms/frame:",
        f"depth δ1 {m['depth_delta1']:.3f}, AbsRel {m['depth_abs_rel']:.3f}; normals mean error {m['normal_mean']:.1f}°; "
        f"segmentation mIoU {m['seg_miou']:.3f}.",
        f"On the object pixels only (ground and walls excluded): depth δ1 {m['object_depth_delta1']:.3f}, "
        f"AbsRel {m['object_depth_abs_rel']:.3f}; normals mean error {m['object_normal_mean']:.1f}° "
        f"(a constant normal facing the camera scores {report['perception']['object_normal_facing_camera']:.1f}°); "
        f"segmentation mIoU over the objects {m['object_seg_miou']:.3f}.",
        "",
        photo_line,
        "",
        *_decoder_lines(report.get("decoders")),
        "Galleries: perception.png, photo.png, generation_by_class.png, generation_from_depth.png.",
        f"Total {report['seconds_total']:.1f} s.",
        "",
    ])  # fmt: skip
