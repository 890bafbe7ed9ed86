"""The inputs of ``mmgen-edge bench --size xl|b2``: the released architecture with random weights (speed only),
built once into a work folder and found there by later runs.

    mmgen-edge bench --size xl                 # SiT-XL/2 + the SD-VAE at 256 px; first run builds ~9 GB in out/bench-work
    mmgen-edge bench --size b2 --skip decoders

What is built, each as a user would (the same exporter and calibrator), each folder written atomically so a killed
run never leaves one that a later run takes for complete:

- ``model/``: a model directory (``export.model_dir.save_model_dir``) of the size's transformer, every weight drawn
  from N(0, 0.02) (``release_vae.random_transformer``: zero init would let the exporter fold the output layers);
- ``vae/``: the SD-VAE architecture (``sd-vae-ft-mse``'s config), random weights, as a diffusers directory;
- ``bundle-fp32/``: ``export_bundle`` of the two (the runtime's four graphs, no self-contained ``denoiser``);
- ``bundle-int8-cpu/``: ``calibrate_bundle --target cpu`` of it on a few ``demo:`` images, with the float groups
  measured as ``calibrate`` measures them; its accuracy gate is skipped (``eval_scenes=0``, forced): random weights
  have no accuracy to keep, and the gate belongs to the user's own calibration;
- ``bundle-tiny-decoder/``: the fp32 bundle with the TAESD architecture (random weights) as its decoder, exported
  forced past its gate (which random weights fail) for the ``decoders`` case.

The folder is ``WORK/SIZE-KEY``: the key hashes the architectures, the opset, the exporter's code and the torch /
diffusers versions (``release_vae.cache_key``), so a change to any of them builds afresh instead of timing a stale
graph. ``--smoke`` builds tiny stand-ins (``release_vae.smoke_architectures``) for the tests.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .artifacts import FP32, INT8, TINY, Artifacts

#: ``--size`` -> the release transformer of that size (the paper's SiT presets at 256 px).
SIZES: dict[str, str] = {"xl": "SiT-XL/2", "b2": "SiT-B/2"}
DEFAULT_WORK = Path("out/bench-work")
#: Calibration images of the INT8 bundle (speed only: a few images, one schedule, no gate).
CALIBRATION_DATA = "demo:{n}"
CALIBRATION_SAMPLES = 4
CALIBRATION_STEPS = (1,)


@dataclass(frozen=True)
class ReleaseSize:
    """One ``--size``: its name and what it builds (``release_vae.Architectures``: transformer, VAEs, opset)."""

    name: str
    arch: Any

    @property
    def key(self) -> str:
        """The work folder's key: the architectures, opset, exporter code and library versions."""
        from .release_vae import cache_key

        config = {"model": self.arch.model.model_dump(), "kl_vae": dict(self.arch.kl_vae),
                  "tiny_vae": vars(self.arch.tiny_vae), "opset": self.arch.opset, "smoke": self.arch.smoke}  # fmt: skip
        return cache_key(config)


def release_size(name: str, smoke: bool = False) -> ReleaseSize:
    """The size called ``name`` (a key of SIZES); ``smoke``: tiny stand-ins of the same layout.

    Raises:
        ValueError: an unknown size, naming the known ones.
    """
    from mmgen_edge.config import preset

    from .release_vae import release_architectures, smoke_architectures

    if name not in SIZES:
        raise ValueError(f"unknown size {name!r}; the sizes are {', '.join(SIZES)}")
    if smoke:
        return ReleaseSize(name, smoke_architectures())
    arch = release_architectures()  # SiT-XL/2, the SD-VAE and TAESD at 256 px
    if SIZES[name] != arch.model.name:
        model = preset(SIZES[name], resolution=arch.model.resolution, projector_dim=None, z_dim=None)
        arch = dataclasses.replace(arch, model=model)
    return ReleaseSize(name, arch)


def _say(message: str) -> None:
    print(f"bench --size: {message}", file=sys.stderr, flush=True)


def _step(root: Path, folder: str, build: Callable[[Path], None], built: dict[str, Any],
          say: Callable[[str], None]) -> Path:  # fmt: skip
    """``root/folder``, built by ``build(path)`` when missing; its build time goes into ``built``."""
    path = root / folder
    if path.is_dir():
        built[folder] = {"cached": True}
        return path
    say(f"building {path} ...")
    start = time.perf_counter()
    build(path)
    built[folder] = {"cached": False, "seconds": round(time.perf_counter() - start, 1)}
    say(f"built {folder} in {built[folder]['seconds']} s")
    return path


def _save_model(size: ReleaseSize, path: Path) -> None:
    from mmgen_edge.export.model_dir import save_model_dir

    from .release_vae import random_transformer

    model = random_transformer(size.arch)
    save_model_dir(path, size.arch.model, model.state_dict(), progress=True)


def _save_autoencoder(size: ReleaseSize, family: str, path: Path) -> None:
    from mmgen_edge.runtime.fileio import atomic_directory

    from .release_vae import random_autoencoder

    vae = random_autoencoder(size.arch, family)
    with atomic_directory(path) as tmp:
        vae.save_pretrained(tmp)


def _export(model_dir: Path, vae_dir: Path, path: Path, max_batch: int, decoder: Path | None = None) -> None:
    from mmgen_edge.export.onnx_export import export_bundle
    from mmgen_edge.export.student_gate import StudentOptions

    students = None
    if decoder is not None:  # random weights fail any gate: forced, one scene, no speed frames
        students = StudentOptions(decoder=decoder, gate_scenes=1, speed_frames=0, force=True)
    export_bundle(model_dir, vae_dir, path, max_batch=max_batch, progress=True, students=students)


def _calibrate(fp32: Path, path: Path, threads: int) -> None:
    from mmgen_edge.calibration.calibrate import calibrate_bundle

    calibrate_bundle(fp32, CALIBRATION_DATA.format(n=CALIBRATION_SAMPLES), path, target="cpu",
                     num_samples=CALIBRATION_SAMPLES, steps=CALIBRATION_STEPS, eval_scenes=0, force=True,
                     speed_runs=0, threads=threads, progress=True, log=_say)  # fmt: skip


def build_size_artifacts(size: ReleaseSize, work: Path, max_batch: int, threads: int,
                         with_tiny: bool = True, say: Callable[[str], None] = _say) -> tuple[Artifacts, dict[str, Any]]:  # fmt: skip
    """Build (or find) everything of ``size`` under ``work/NAME-KEY``.

    Args:
        size: what to build (:func:`release_size`).
        work: the work folder (created); each size and key has its own folder in it.
        max_batch: the bundles' max_batch (the largest --batch of the run).
        threads: ONNX Runtime threads of the calibration.
        with_tiny: also build the TAESD-decoder bundle (the ``decoders`` case).
        say: progress messages.

    Returns:
        The bench's artifacts (model dir, VAE, the fp32 / int8 / tiny bundles) and the facts for the JSON: the
        folder, what was built and in how long, and each bundle's size on disk.
    """
    if work.exists() and not work.is_dir():
        raise NotADirectoryError(f"--work {work} is a file, not a folder")
    root = work / f"{size.name}-{'smoke-' if size.arch.smoke else ''}{size.key}"
    root.mkdir(parents=True, exist_ok=True)
    built: dict[str, Any] = {}
    model_dir = _step(root, "model", lambda p: _save_model(size, p), built, say)
    vae_dir = _step(root, "vae", lambda p: _save_autoencoder(size, "sd_vae", p), built, say)
    # max_batch is part of the bundle: another max_batch exports another bundle folder.
    fp32 = _step(root, f"bundle-fp32-b{max_batch}", lambda p: _export(model_dir, vae_dir, p, max_batch), built, say)
    int8 = _step(root, f"bundle-int8-cpu-b{max_batch}", lambda p: _calibrate(fp32, p, threads), built, say)
    bundles = {FP32: fp32, INT8: int8}
    missing: dict[str, str] = {}
    if with_tiny:
        taesd = _step(root, "taesd", lambda p: _save_autoencoder(size, "taesd", p), built, say)
        bundles[TINY] = _step(root, f"bundle-tiny-decoder-b{max_batch}",
                              lambda p: _export(model_dir, vae_dir, p, max_batch, decoder=taesd), built, say)  # fmt: skip
    else:
        missing["bundle_tiny"] = "--skip decoders"
    artifacts = Artifacts(model_dir, vae_dir, bundles, missing)
    facts = {"size": size.name, "model": size.arch.model.name, "resolution": size.arch.model.resolution,
             "weights": "random (speed only)", "smoke": size.arch.smoke, "work": root, "built": built,
             "bundle_bytes": {label: bundle_bytes(path) for label, path in bundles.items()}}  # fmt: skip
    return artifacts, facts


def bundle_bytes(bundle: Path) -> dict[str, int]:
    """A bundle's size on disk: every file (hard links once), and its ``.onnx`` graphs plus their external data."""
    seen: set[tuple[int, int]] = set()
    total = graphs = 0
    for dirpath, _, files in os.walk(bundle):
        for name in files:
            stat = os.lstat(os.path.join(dirpath, name))
            if (stat.st_dev, stat.st_ino) in seen:
                continue
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
            graphs += stat.st_size if name.endswith((".onnx", ".onnx.data", ".data")) else 0
    return {"total": total, "graphs": graphs}
