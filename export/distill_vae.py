"""Distil a small diffusers ``AutoencoderTiny`` (its decoder, optionally its encoder) from a teacher ``AutoencoderKL``.

    report = distill_vae("samples/shapes/weights/vae", "demo:3000", "out/tiny-vae", work="out/distill-vae")

What the student learns, in the bundle's latent space (``autoencoders``: the teacher's scaled posterior mean):
- decoder: latent z -> the teacher's decoded image D(z), not the ground truth, since the accuracy gate compares the
  student's bundle with the teacher's; the output is resized to the teacher's resolution when the student decodes
  below it (``StudentShape.upsampling_stages``), exactly as the exported graph does;
- encoder (``train_encoder``): image -> the teacher's latent mean.
The student is saved with ``scaling_factor`` 1.0 and ``shift_factor`` 0: its raw latents *are* bundle latents, the
convention of the public TAESD weights on SD-VAE latents, so both plug into ``mmgen-edge export --decoder`` alike.

Data (``data``): ``demo:N`` renders N shapes scenes (seeds from :data:`.distill_data.DISTILL_SEED`, disjoint from training,
calibration and the held-out evaluation) and uses all four modality images of each, rgb, depth, normal and mask:
perception maps are not photographs, and they are what the decoder decodes in ``perceive``. A folder or a video
gives its frames (RGB). Latents: the posterior mean for half of the images and a posterior sample for the other
half, which covers some of the off-manifold latents a transformer predicts; with ``bundle``, also the depth, normal
and mask latents that bundle predicts for the RGB frames (the decoder's real inputs in ``perceive``).

Stages, cached in ``work`` so an interrupted run resumes where it stopped (rerun the same call):
``dataset-KEY.npz`` (images, latents, teacher decodes; KEY hashes the teacher's weights and the data settings),
``checkpoint.pt`` (student, optimiser, step, generator; every ``save_every`` steps, atomically), then ``out``
(a diffusers directory, written atomically, with ``distill.json``: settings, loss curve and the held-out error of
the student against the teacher per modality).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderTiny
from tqdm.auto import tqdm

from mmgen_edge.runtime.fileio import atomic_directory, atomic_file, weights_sha256, write_text_atomic
from mmgen_edge.runtime.modalities import RELEASE_MODALITIES

from .autoencoders import decode_latent, decoder_upsampling, encode_latent, encoder_downsampling, load_autoencoder
from .distill_data import DistillDataset, build_dataset, images_to_tensor, tensor_to_uint8

#: What a finished student records about itself, beside its diffusers files.
REPORT_FILE = "distill.json"
#: Fraction of the images held out to score the student against the teacher.
HOLDOUT_FRACTION = 0.05


@dataclass(frozen=True)
class StudentShape:
    """An ``AutoencoderTiny`` layout: channels (the same in every stage) and blocks per stage.

    ``decoder_blocks`` has one entry per decoder stage; each stage but the last doubles the resolution, so three
    stages decode at 1/2 of an f8 teacher's resolution (resized in the graph) and four at full resolution.
    """

    channels: int = 64
    decoder_blocks: tuple[int, ...] = (3, 3, 3, 1)
    encoder_channels: int = 64
    encoder_blocks: tuple[int, ...] = (1, 3, 3, 3)

    def __post_init__(self) -> None:
        for name in ("channels", "encoder_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 512:
                raise ValueError(f"student {name} must be an integer in 1..512, got {value!r}")
        for name in ("decoder_blocks", "encoder_blocks"):
            blocks = getattr(self, name)
            if not 1 <= len(blocks) <= 6 or any(not isinstance(b, int) or not 0 <= b <= 8 for b in blocks):
                raise ValueError(f"student {name} must be 1..6 stages of 0..8 blocks each, got {blocks!r}")

    @property
    def upsampling_stages(self) -> int:
        return len(self.decoder_blocks) - 1

    def new(self, latent_channels: int) -> AutoencoderTiny:
        return AutoencoderTiny(
            latent_channels=latent_channels,
            decoder_block_out_channels=(self.channels,) * len(self.decoder_blocks),
            num_decoder_blocks=self.decoder_blocks,
            encoder_block_out_channels=(self.encoder_channels,) * len(self.encoder_blocks),
            num_encoder_blocks=self.encoder_blocks,
            scaling_factor=1.0,
            shift_factor=0.0,
        )


#: Named layouts: ``taesd`` is the public TAESD's (diffusers' defaults, 1.2 M parameters per half: its weights plug
#: in for SD-VAE latents); ``demo`` is shaped for the demo's 1 M-parameter VAE (16 channels at full resolution);
#: ``demo-half`` decodes at half resolution and is resized in the graph (faster, softer edges); ``taesd-half`` is
#: TAESD's width decoding at half resolution (no public weights: distill it; its encoder is TAESD's layout).
STUDENT_SHAPES: dict[str, StudentShape] = {
    "taesd": StudentShape(),
    "taesd-half": StudentShape(decoder_blocks=(3, 3, 3)),
    "demo": StudentShape(channels=16, decoder_blocks=(3, 3, 3, 1), encoder_channels=16, encoder_blocks=(1, 3, 3, 3)),
    "demo-half": StudentShape(channels=16, decoder_blocks=(3, 3, 3), encoder_channels=16, encoder_blocks=(1, 3, 3, 3)),
}


@dataclass(frozen=True)
class DistillSettings:
    """Everything that shapes a distillation run (recorded in ``distill.json``; a resumed run must match it)."""

    data: str
    images: int = 4000  # at most this many images (a demo scene gives four)
    steps: int = 3000
    batch: int = 16
    learning_rate: float = 2e-3
    warmup: int = 100
    train_encoder: bool = False
    shape: StudentShape = StudentShape()
    seed: int = 0
    save_every: int = 250
    bundle: str | None = None  # also decode the latents this bundle predicts for the data's RGB frames
    map_weights: tuple[float, ...] | None = None  # decoder loss weight per modality index (rgb, depth, normal, mask)

    def __post_init__(self) -> None:
        for name in ("images", "steps", "batch", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1):
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if self.map_weights is not None and (not self.map_weights or any(
                not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0) for w in self.map_weights)
                or not any(self.map_weights)):  # fmt: skip
            raise ValueError(f"map_weights must be finite numbers >= 0, not all 0, got {self.map_weights!r}")
        if self.map_weights is not None and len(self.map_weights) != len(RELEASE_MODALITIES):
            raise ValueError(f"map_weights needs one weight per map ({', '.join(RELEASE_MODALITIES)}), "
                             f"got {len(self.map_weights)}: {self.map_weights!r}")  # fmt: skip

    def learning_rate_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to 0 at ``steps``."""
        if step < self.warmup:
            return self.learning_rate * (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.learning_rate * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices): a fixed random :data:`HOLDOUT_FRACTION` is held out (at least 1)."""
    order = np.random.default_rng(seed).permutation(count)
    held = max(1, int(round(count * HOLDOUT_FRACTION)))
    return np.sort(order[held:]), np.sort(order[:held])


def distill_loss(student: AutoencoderTiny, batch: dict[str, torch.Tensor], size: int, train_encoder: bool,
                 map_weights: Sequence[float] | None = None) -> torch.Tensor:  # fmt: skip
    """L1 + MSE of the student's decode against the teacher's (each image weighted by its modality's
    ``map_weights`` entry, normalised to mean 1 over the batch), plus the latent MSE of its encoder when trained."""
    out = decode_latent(student, batch["latents"], size)
    err = out - batch["decoded"]
    per_image = (err.abs() + err.square()).mean(dim=(1, 2, 3))  # (B,)
    if map_weights is not None:
        table = torch.tensor(list(map_weights), dtype=per_image.dtype)
        weights = table[batch["kinds"].clamp(max=len(table) - 1)]
        per_image = per_image * weights / weights.mean().clamp_min(1e-12)
    loss = per_image.mean()
    real = batch["encoded"]
    if train_encoder and bool(real.any()):
        loss = loss + F.mse_loss(encode_latent(student, batch["images"][real]), batch["means"][real])
    return loss


def _batch(dataset: DistillDataset, index: np.ndarray) -> dict[str, torch.Tensor]:
    return {
        "images": images_to_tensor(dataset.images[index]),
        "latents": torch.from_numpy(dataset.latents[index]),
        "means": torch.from_numpy(dataset.means[index]),
        "decoded": images_to_tensor(dataset.decoded[index]),
        "encoded": torch.from_numpy(dataset.encoded[index]),
        "kinds": torch.from_numpy(dataset.kinds[index]),
    }


@torch.no_grad()
def held_out_error(student: AutoencoderTiny, dataset: DistillDataset, index: np.ndarray, size: int,
                   names: Sequence[str]) -> dict[str, dict[str, float | None]]:  # fmt: skip
    """Per modality: PSNR (dB) and mean absolute error (of 255) of the student's decode vs the teacher's, and the
    encoder's latent RMS error relative to the latent RMS."""
    student.eval()
    rows: dict[str, dict[str, float | None]] = {}
    for kind in np.unique(dataset.kinds[index]):
        chosen = index[dataset.kinds[index] == kind]
        batch = _batch(dataset, chosen)
        out = tensor_to_uint8(decode_latent(student, batch["latents"], size)).astype(np.float64)
        err = out - dataset.decoded[chosen]
        mse = float(np.mean(err**2))
        real = batch["encoded"]
        rel = None  # no real image of this kind (predicted latents only)
        if bool(real.any()):
            latent, mean = encode_latent(student, batch["images"][real]), batch["means"][real]
            rel = float(torch.sqrt(F.mse_loss(latent, mean)) / mean.pow(2).mean().sqrt().clamp_min(1e-12))
        name = names[int(kind)] if int(kind) < len(names) else str(int(kind))
        rows[name] = {"images": float(len(chosen)), "psnr_db": 10 * math.log10(255**2 / max(mse, 1e-12)),
                      "mean_abs": float(np.mean(np.abs(err))), "encoder_latent_rel_rms": rel}  # fmt: skip
    return rows


def _atomic_save(obj: object, path: Path) -> None:
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def check_student_shape(shape: StudentShape, teacher: AutoencoderKL, train_encoder: bool) -> None:
    """The student must decode the teacher's latents at the teacher's resolution or below it by a power of 2, and
    its encoder (when trained) must downsample exactly like the teacher's."""
    teacher_down = encoder_downsampling(teacher)
    up = 2**shape.upsampling_stages
    if up > teacher_down or teacher_down % up:
        raise ValueError(f"the student decoder upsamples {up}x but the teacher's latents are 1/{teacher_down} of the "
                         f"image: use at most {int(math.log2(teacher_down)) + 1} decoder stages")  # fmt: skip
    if train_encoder and 2 ** (len(shape.encoder_blocks) - 1) != teacher_down:
        raise ValueError(f"the student encoder downsamples {2 ** (len(shape.encoder_blocks) - 1)}x, the teacher "
                         f"{teacher_down}x: use {int(math.log2(teacher_down)) + 1} encoder stages")  # fmt: skip


def distill_vae(
    teacher_dir: str | os.PathLike[str],
    settings: DistillSettings,
    out: str | os.PathLike[str],
    work: str | os.PathLike[str],
    init: str | os.PathLike[str] | None = None,
    minutes: float | None = None,
    overwrite: bool = False,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any] | None:
    """Train (or resume) a student in ``work`` and write it to ``out``; returns the report, or None when ``minutes``
    ran out first (the checkpoint is saved: call again to resume).

    Args:
        teacher_dir: a diffusers ``AutoencoderKL`` directory (the bundle's VAE, e.g. sd-vae-ft-mse or the demo's).
        settings: data, length, student layout (:class:`DistillSettings`); a resumed run must use the same.
        out: the diffusers ``AutoencoderTiny`` directory to write (atomically; ``overwrite`` replaces only a
            directory mmgen-edge wrote).
        work: cache and checkpoint directory.
        init: an ``AutoencoderTiny`` directory to start from (e.g. the public TAESD weights) instead of a new student.
        minutes: stop (saving the checkpoint) after this much training time.
    """
    from mmgen_edge.runtime.fileio import check_output_directory

    say = log or (lambda message: None)
    teacher_dir, out, work = Path(teacher_dir), Path(out), Path(work)
    from mmgen_edge.calibration.sources import data_path

    inputs = (teacher_dir, work, *(p for p in (init, settings.bundle, data_path(settings.data)) if p is not None))
    check_output_directory(out, overwrite, protect=inputs)
    teacher = load_autoencoder(teacher_dir, expect="AutoencoderKL", label=f"teacher VAE {teacher_dir}")
    torch.manual_seed(settings.seed)
    if init is not None:
        student = load_autoencoder(init, expect="AutoencoderTiny", label=f"--init {init}")
        if int(student.config.latent_channels) != int(teacher.config.latent_channels):
            raise ValueError(f"{init} has {student.config.latent_channels} latent channels, the teacher "
                             f"{teacher.config.latent_channels}")  # fmt: skip
        shape = StudentShape(int(student.config.decoder_block_out_channels[0]), tuple(student.config.num_decoder_blocks),
                             int(student.config.encoder_block_out_channels[0]), tuple(student.config.num_encoder_blocks))  # fmt: skip
        settings = dataclasses.replace(settings, shape=shape)
    else:
        student = settings.shape.new(int(teacher.config.latent_channels))
    check_student_shape(settings.shape, teacher, settings.train_encoder)
    created = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    say(f"labelling up to {settings.images} images of {settings.data} with the teacher {teacher_dir}")
    try:
        dataset = build_dataset(teacher, teacher_dir, settings, work, progress)
    except BaseException:
        if created and not any(work.iterdir()):  # a bad --data leaves no empty work folder behind
            work.rmdir()
        raise
    size = dataset.images.shape[1]
    train_index, held_index = split(len(dataset.images), settings.seed)
    parts = [student.decoder, *([student.encoder] if settings.train_encoder else [])]
    params = [p for part in parts for p in part.parameters()]
    opt = torch.optim.Adam(params, lr=settings.learning_rate)
    g = np.random.default_rng(settings.seed)
    step, curve, running = 0, [], None
    path = work / "checkpoint.pt"
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values: no pickled code
            written_with = state["settings"]
        except Exception as e:  # unpickling refused, truncated file, another format
            raise ValueError(f"{path} is not a distill-vae checkpoint ({type(e).__name__}: {e}); remove it or use "
                             "another --work") from None  # fmt: skip
        if written_with != settings.to_dict():
            raise ValueError(f"{path} was written with other settings ({written_with}); use another --work or "
                             "the same options")  # fmt: skip
        student.load_state_dict(state["student"])
        opt.load_state_dict(state["opt"])
        step, curve, running = int(state["step"]), list(state["curve"]), state.get("running_loss")
        g.bit_generator.state = state["rng"]
        say(f"resuming {path} at step {step}")

    def save() -> None:
        _atomic_save({"student": student.state_dict(), "opt": opt.state_dict(), "step": step, "curve": curve,
                      "rng": g.bit_generator.state, "settings": settings.to_dict(), "running_loss": running}, path)  # fmt: skip

    deadline = time.monotonic() + 60 * minutes if minutes else math.inf
    student.train()
    bar = tqdm(total=settings.steps, initial=step, desc="distill VAE", unit="step", disable=not progress)
    while step < settings.steps and time.monotonic() < deadline:
        for group in opt.param_groups:
            group["lr"] = settings.learning_rate_at(step)
        batch = _batch(dataset, g.choice(train_index, size=min(settings.batch, len(train_index)), replace=False))
        loss = distill_loss(student, batch, size, settings.train_encoder, settings.map_weights)
        if not torch.isfinite(loss):
            raise ValueError(f"distillation loss became {loss.item()} at step {step}: lower --lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if step % settings.save_every == 0 or step == settings.steps:
            curve.append({"step": step, "loss": running})
            save()
    bar.close()
    save()
    if step < settings.steps:
        say(f"stopped at step {step} of {settings.steps} (time limit); run again to resume")
        return None
    from mmgen_edge import MODALITIES

    names = tuple(MODALITIES)
    report = {
        "teacher": teacher_dir.name,
        "teacher_weights_sha256": weights_sha256(teacher_dir),
        "trained": ["decoder", *(["encoder"] if settings.train_encoder else [])],
        "settings": settings.to_dict(),
        "images": {"train": int(len(train_index)), "held_out": int(len(held_index))},
        "decoder_upsampling": decoder_upsampling(student),
        "held_out": held_out_error(student, dataset, held_index, size, names),
        "curve": curve,
        "parameters": {"decoder": sum(p.numel() for p in student.decoder.parameters()),
                       "encoder": sum(p.numel() for p in student.encoder.parameters())},  # fmt: skip
    }
    with atomic_directory(out, overwrite=overwrite, protect=inputs) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        write_text_atomic(tmp / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def trained_parts(directory: str | os.PathLike[str]) -> tuple[str, ...] | None:
    """The halves a ``distill-vae`` student trained (from its ``distill.json``); None for any other directory."""
    path = Path(directory) / REPORT_FILE
    if not path.is_file():
        return None
    try:
        return tuple(json.loads(path.read_text())["trained"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a distill-vae report (no 'trained' list)") from None
