"""The teacher-labelled data of ``distill-vae`` (:mod:`.distill_vae`): images, latents and the teacher's decodes.

``build_dataset`` renders or reads the images (``demo:N``: all four modality images of each shapes scene, the masks
painted in the ``--bundle`` model's fixed palette when it has one; a folder or a video: RGB frames), labels them
with the teacher (posterior mean for half, a sample for the other half), optionally adds the latents a bundle
predicts in ``perceive``, refuses non-finite labels, and caches the result in ``work/dataset-KEY.npz`` (KEY:
:func:`dataset_key`); a truncated or foreign cache is labelled again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from mmgen_edge.runtime.fileio import atomic_file, weights_sha256

from .autoencoders import decode_latent

if TYPE_CHECKING:
    from .distill_vae import DistillSettings

#: First seed of the scenes ``demo:N`` renders for distillation (training 0..39 999, held-out 1 000 000+,
#: calibration 2 000 000+).
DISTILL_SEED = 3_000_000
#: Images encoded / decoded by the teacher per call while building the dataset.
TEACHER_BATCH = 32


@dataclass
class DistillDataset:
    """Teacher-labelled training data, all at the teacher's resolution."""

    images: np.ndarray  # (M, H, W, 3) uint8: what the encoder sees
    kinds: np.ndarray  # (M,) int: the modality index of each image (0 = rgb for plain frames)
    latents: np.ndarray  # (M, C, h, w) float32: the decoder's inputs (posterior mean or sample, or predicted)
    means: np.ndarray  # (M, C, h, w) float32: the encoder's targets (posterior mean)
    decoded: np.ndarray  # (M, H, W, 3) uint8: the teacher's decode of ``latents``, the decoder's targets
    encoded: np.ndarray  # (M,) bool: rows whose image is a real image (the encoder trains on those only)

    def concat(self, other: "DistillDataset") -> "DistillDataset":
        return DistillDataset(*(np.concatenate([getattr(self, f.name), getattr(other, f.name)])
                                for f in dataclasses.fields(self)))  # fmt: skip


def distillation_images(
    data: str, limit: int, size: int, mask_palette: tuple[tuple[int, int, int], ...] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(images (M, size, size, 3) uint8, modality index (M,)) from ``demo:N``, a folder or a video.

    ``mask_palette``: the colours ``demo:N`` paints its masks with (a model's ``mask_palette``: the mask images that
    model predicts are in it); None paints a random colour per segment, as the release does."""
    from mmgen_edge.calibration.sources import DEMO_PREFIX, iter_calibration_images, parse_demo_spec
    from mmgen_edge.sdk.images import to_model_size

    images, kinds = [], []
    if str(data).strip().startswith(DEMO_PREFIX):
        from mmgen_edge.samples.shapes.encoding import modality_stack
        from mmgen_edge.samples.shapes.scenes import render_scene

        scenes = min(parse_demo_spec(str(data).strip()), max(1, limit // 4))
        for i in range(scenes):
            rng = np.random.default_rng(DISTILL_SEED + i)
            stack = modality_stack(render_scene(DISTILL_SEED + i, size), rng, mask_palette)
            images += list(stack)
            kinds += list(range(len(stack)))
    else:
        for rgb in iter_calibration_images(data, limit):
            images.append(to_model_size(rgb, size))
            kinds.append(0)
    if len(images) < 2:
        raise ValueError(f"distillation data {data!r} gave {len(images)} image(s); at least 2 are needed")
    return np.stack(images), np.asarray(kinds, dtype=np.int64)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def label_with_teacher(teacher: AutoencoderKL, images: np.ndarray, kinds: np.ndarray, seed: int,
                       progress: bool = False) -> DistillDataset:  # fmt: skip
    """Encode every image with the teacher and decode its latent (mean or, for every other image, a sample)."""
    g = torch.Generator().manual_seed(seed)
    scale = float(teacher.config.scaling_factor)
    size = images.shape[1]
    latents, means, decoded = [], [], []
    for i in tqdm(range(0, len(images), TEACHER_BATCH), desc="teacher labels", unit="batch", disable=not progress):
        dist = teacher.encode(images_to_tensor(images[i : i + TEACHER_BATCH])).latent_dist
        noise = torch.randn(dist.mean.shape, generator=g)
        sampled = (torch.arange(i, i + len(noise)) % 2 == 1).float().view(-1, 1, 1, 1)
        z = (dist.mean + sampled * dist.std * noise) * scale
        latents.append(z.numpy())
        means.append((dist.mean * scale).numpy())
        decoded.append(tensor_to_uint8(decode_latent(teacher, z, size)))
    return DistillDataset(images, kinds, np.concatenate(latents), np.concatenate(means), np.concatenate(decoded),
                          np.ones(len(images), dtype=bool))  # fmt: skip


#: Sampler steps cycled over the frames when the bundle's own predictions are added (every K the runtime serves).
PREDICTION_STEPS = (1, 2, 4)


@torch.no_grad()
def label_predictions(teacher: AutoencoderKL, bundle: str, frames: np.ndarray, progress: bool = False) -> DistillDataset:
    """The decoder's real inputs in ``perceive``: the depth / normal / mask latents that ``bundle`` predicts for the
    RGB ``frames`` (K cycling over :data:`PREDICTION_STEPS`, seed = frame index), with the teacher's decode of each.
    They are off the teacher's encoder manifold, which is where a student trained on encoded images alone drifts."""
    import mmgen_edge

    size = frames.shape[1]
    latents, kinds = [], []
    with mmgen_edge.load(bundle, backend="ort-cpu", verify="size") as model:
        c = model.manifest.latent.channels_per_modality
        modalities = model.manifest.modalities
        for i in tqdm(range(len(frames)), desc="bundle predictions", unit="frame", disable=not progress):
            k = PREDICTION_STEPS[i % len(PREDICTION_STEPS)]
            z = model.perceive(frames[i], steps=k, seed=i, return_latents=True).latents  # (M*C, h, w)
            for index, name in enumerate(modalities):
                if name != "rgb":
                    latents.append(z[index * c : (index + 1) * c])
                    kinds.append(index)
    z = np.stack(latents).astype(np.float32)
    decoded = np.concatenate([tensor_to_uint8(decode_latent(teacher, torch.from_numpy(z[i : i + TEACHER_BATCH]), size))
                              for i in range(0, len(z), TEACHER_BATCH)])  # fmt: skip
    return DistillDataset(decoded, np.asarray(kinds, dtype=np.int64), z, z, decoded, np.zeros(len(z), dtype=bool))


def bundle_mask_palette(settings: "DistillSettings") -> tuple[tuple[int, int, int], ...] | None:
    """The mask palette of the ``--bundle`` model (None without a bundle, or for a model with random colours)."""
    if settings.bundle is None:
        return None
    from mmgen_edge.runtime.manifest import read_manifest

    return read_manifest(settings.bundle, verify="none").model.mask_palette


def dataset_key(teacher_dir: Path, settings: "DistillSettings") -> str:
    """The cache key of a dataset: the teacher's weights, the data settings, the labelling bundle's files and the
    mask palette the data is painted with."""
    bundle, palette = None, None
    if settings.bundle is not None:  # the bundle's files, by their hashes in its manifest, and its model's palette
        from mmgen_edge.runtime.manifest import read_manifest

        manifest = read_manifest(settings.bundle, verify="none")
        bundle = hashlib.sha256("".join(f.sha256 for f in manifest.files).encode()).hexdigest()
        palette = manifest.model.mask_palette
    spec = {"teacher": weights_sha256(teacher_dir), "data": settings.data, "images": settings.images,
            "seed": settings.seed, "bundle": bundle}  # fmt: skip
    if palette is not None:  # (absent from the key of random-colour data, so their caches stay valid)
        spec["mask_palette"] = [list(c) for c in palette]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def build_dataset(teacher: AutoencoderKL, teacher_dir: Path, settings: "DistillSettings", work: Path,
                  progress: bool = False) -> DistillDataset:  # fmt: skip
    """The teacher-labelled dataset, from ``work`` when a run with the same teacher and data made it."""
    path = work / f"dataset-{dataset_key(teacher_dir, settings)}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                return DistillDataset(**{field.name: f[field.name] for field in dataclasses.fields(DistillDataset)})
        except Exception:  # noqa: BLE001 - truncated, empty or foreign file: a cache, so label again
            path.unlink()
    size = int(teacher.config.sample_size) if isinstance(teacher.config.sample_size, int) else 256
    images, kinds = distillation_images(settings.data, settings.images, size, bundle_mask_palette(settings))
    dataset = label_with_teacher(teacher, images, kinds, settings.seed, progress)
    if settings.bundle is not None:
        dataset = dataset.concat(label_predictions(teacher, settings.bundle, images[kinds == 0], progress))
    for field in dataclasses.fields(DistillDataset):
        values = getattr(dataset, field.name)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            source = f"the teacher {teacher_dir}" + (f" or the bundle {settings.bundle}" if settings.bundle else "")
            raise ValueError(f"the distillation data ({field.name}) holds NaN or Inf: {source} computes non-finite values")
    with atomic_file(path) as tmp:
        np.savez(tmp, **dataclasses.asdict(dataset))
    return dataset
