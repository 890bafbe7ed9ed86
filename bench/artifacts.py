"""Where the bench's inputs come from: the given paths or the demo model's, tiny ones built for --smoke, and an fp32
bundle exported when only the model directory and the VAE exist. Whatever is missing is recorded with the reason."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .outcomes import skipped

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "samples" / "shapes" / "weights" / "mmgen"
DEFAULT_VAE_DIR = REPO_ROOT / "samples" / "shapes" / "weights" / "vae"
#: The tiny artifacts of --smoke, exactly as tests/conftest.py builds them.
TINY_MAX_BATCH = 4
#: max_batch of a bundle the bench exports itself (the export default), raised to the largest --batch.
EXPORT_MAX_BATCH = 8
#: Labels of the bundles (keys of ``Artifacts.bundles`` and of the per-bundle cases in the JSON): the fp32 bundle,
#: its INT8 calibration, and the fp32 bundle with a distilled decoder (``mmgen-edge export --decoder``).
FP32, INT8, TINY = "fp32", "int8", "tiny"


@dataclass
class Artifacts:
    """Inputs of the bench; a None path was not found (``missing`` says why)."""

    model_dir: Path | None
    vae_dir: Path | None
    bundles: dict[str, Path]  # label (fp32 / int8) -> bundle directory
    missing: dict[str, str] = field(default_factory=dict)
    built_tiny: bool = False
    exported_bundle: bool = False  # the fp32 bundle was missing and was exported from the model dir + VAE


def build_tiny_artifacts(workdir: Path) -> Artifacts:
    """A tiny model directory, VAE and fp32 bundle (max batch 4), from the same helpers as tests/conftest.py."""
    from mmgen_edge.export.checkpoint import convert_checkpoint
    from mmgen_edge.export.onnx_export import export_bundle
    from mmgen_edge.export.synthetic import TINY_ARGS, TINY_PROJECTOR, write_release_checkpoint, write_tiny_vae

    checkpoint = workdir / "tiny.pt"
    write_release_checkpoint(checkpoint, projector=TINY_PROJECTOR, **TINY_ARGS)
    model_dir = workdir / "models" / "tiny"
    convert_checkpoint(checkpoint, model_dir)
    vae_dir = write_tiny_vae(workdir / "vae" / "tiny-vae")
    bundle = workdir / "bundles" / "tiny-fp32"
    export_bundle(model_dir, vae_dir, bundle, max_batch=TINY_MAX_BATCH)
    tiny = export_random_student_bundle(model_dir, vae_dir, workdir)
    missing = {"bundle_int8": "--smoke builds no INT8 bundle (pass --bundle-int8 to time one)"}
    return Artifacts(model_dir, vae_dir, {FP32: bundle, TINY: tiny}, missing, built_tiny=True)


def export_random_student_bundle(model_dir: Path, vae_dir: Path, workdir: Path) -> Path:
    """--smoke: the tiny bundle with an untrained 4-channel ``AutoencoderTiny`` decoder (speed only: forced past
    its gate, which it fails)."""
    from mmgen_edge.export.distill_vae import StudentShape
    from mmgen_edge.export.onnx_export import export_bundle
    from mmgen_edge.export.student_gate import StudentOptions

    student = workdir / "vae" / "random-student"
    StudentShape(4, (1, 1, 1, 1), 4, (1, 1, 1, 1)).new(4).save_pretrained(student)
    bundle = workdir / "bundles" / "tiny-fp32-tiny-decoder"
    options = StudentOptions(decoder=student, gate_scenes=1, speed_frames=0, force=True)
    export_bundle(model_dir, vae_dir, bundle, max_batch=TINY_MAX_BATCH, students=options)
    return bundle


def find_artifacts(args: argparse.Namespace) -> Artifacts:
    """The given paths (``run.build_parser``'s arguments), else the demo model's; each missing one with the reason."""
    missing: dict[str, str] = {}

    def existing(name: str, given: Path | None, default: Path | None, marker: str, hint: str) -> Path | None:
        path = given if given is not None else default
        if path is None:
            missing[name] = hint
            return None
        if not (path / marker).is_file():
            missing[name] = f"{path}/{marker} not found ({hint})"
            return None
        return path

    demo_hint = "create the demo model with the shapes training recipe, then `mmgen-edge demo`"
    model_dir = existing("model_dir", args.model_dir, DEFAULT_MODEL_DIR, "config.json", demo_hint)
    vae_dir = existing("vae_dir", args.vae_dir, DEFAULT_VAE_DIR, "config.json",
                       "only needed to export an fp32 bundle when --bundle is missing")
    bundles: dict[str, Path] = {}
    from mmgen_edge.sdk.api import default_bundle

    fp32_hint = "export it with `mmgen-edge demo` or `mmgen-edge export`"
    fp32 = existing("bundle", args.bundle, default_bundle(), "manifest.json", fp32_hint)
    if fp32 is not None:
        bundles[FP32] = fp32
    int8_hint = "no --bundle-int8 given (make one with `mmgen-edge calibrate`)"
    int8 = existing("bundle_int8", args.bundle_int8, None, "manifest.json", int8_hint)
    if int8 is not None:
        bundles[INT8] = int8
    from mmgen_edge.sdk.demo import default_tiny_bundle

    tiny_hint = "export one with `mmgen-edge export --decoder` (the demo's: `mmgen-edge demo`), or pass --bundle-tiny"
    tiny = existing("bundle_tiny", args.bundle_tiny, None if args.bundle else default_tiny_bundle(), "manifest.json",
                    tiny_hint)  # fmt: skip
    if tiny is not None:
        bundles[TINY] = tiny
    return Artifacts(model_dir, vae_dir, bundles, missing)


def export_missing_bundle(artifacts: Artifacts, batches: tuple[int, ...], workdir: Path) -> dict[str, Any]:
    """No fp32 bundle but a model dir and a VAE: export one into ``workdir`` and add it to ``artifacts``.

    Args:
        artifacts: what was found; gets the exported bundle as its fp32 bundle.
        batches: the batch sizes to bench (the bundle's max_batch covers the largest).
        workdir: a temporary directory of this run.

    Returns:
        The JSON entry: the exported path and seconds, or why nothing was exported.
    """
    from mmgen_edge.export.onnx_export import export_bundle

    a = artifacts
    if FP32 in a.bundles:
        return skipped("the fp32 bundle exists")
    if a.model_dir is None or a.vae_dir is None:
        return skipped("no fp32 bundle, and no model dir + VAE to export one from")
    bundle = workdir / "exported-fp32"
    start = time.perf_counter()
    export_bundle(a.model_dir, a.vae_dir, bundle, max_batch=max(EXPORT_MAX_BATCH, *batches))
    a.bundles[FP32], a.exported_bundle = bundle, True
    a.missing.pop("bundle", None)
    return {"exported": bundle, "seconds": time.perf_counter() - start}


def artifact_facts(artifacts: Artifacts) -> dict[str, Any]:
    """The artifacts as they appear in the JSON (``meta.artifacts``)."""
    return {"model_dir": artifacts.model_dir, "vae_dir": artifacts.vae_dir, "bundles": dict(artifacts.bundles),
            "missing": dict(artifacts.missing), "built_tiny": artifacts.built_tiny,
            "exported_bundle": artifacts.exported_bundle}  # fmt: skip

