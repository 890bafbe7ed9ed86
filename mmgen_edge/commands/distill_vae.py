"""``mmgen-edge distill-vae``: train a small ``AutoencoderTiny`` against a teacher ``AutoencoderKL`` (export extra).

    mmgen-edge distill-vae samples/shapes/weights/vae --data demo:1500 --out out/tiny-vae            # demo VAE
    mmgen-edge distill-vae models/sd-vae-ft-mse --data frames/ --shape taesd --init models/taesd --out out/taesd-ft

Resumable: the dataset and a checkpoint live in ``--work`` (default ``OUT-work``); rerun the same command after an
interruption or a ``--minutes`` limit. The result is a diffusers directory for ``mmgen-edge export --decoder``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from mmgen_edge.cli import bounded_int, positive_float, positive_int

#: Exit status when --minutes ran out before the last step (the checkpoint is saved: rerun to resume).
EXIT_UNFINISHED = 4


def block_list(text: str) -> tuple[int, ...]:
    """``"3,3,3,1"``: blocks per stage, 1..6 stages of 0..8 blocks."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not 1 <= len(parts) <= 6 or not all(p.isascii() and p.isdigit() and int(p) <= 8 for p in parts):
        raise argparse.ArgumentTypeError(f"must be 1..6 comma-separated block counts of 0..8, got {text!r}")
    return tuple(int(p) for p in parts)


def weight_list(text: str) -> tuple[float, ...]:
    """``"1,1,1,3"``: a finite weight >= 0 per modality (rgb, depth, normal, mask), not all 0."""
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values) or not any(values):
        raise argparse.ArgumentTypeError(f"must be finite numbers >= 0, not all 0, got {text!r}")
    return values


def cmd_distill(args: argparse.Namespace) -> int:
    import dataclasses

    from mmgen_edge.export.distill_vae import STUDENT_SHAPES, DistillSettings, distill_vae

    shape = STUDENT_SHAPES[args.shape]
    overrides = {k: v for k, v in (("channels", args.channels), ("decoder_blocks", args.decoder_blocks),
                                   ("encoder_channels", args.channels), ("encoder_blocks", args.encoder_blocks)) if v}  # fmt: skip
    shape = dataclasses.replace(shape, **overrides)
    settings = DistillSettings(data=args.data, images=args.images, steps=args.train_steps, batch=args.batch,
                               learning_rate=args.lr, train_encoder=args.encoder, shape=shape, seed=args.seed,
                               save_every=args.save_every, bundle=args.bundle, map_weights=args.map_weights)  # fmt: skip
    work = Path(args.work) if args.work else Path(f"{args.out.rstrip('/')}-work")
    log = (lambda line: print(line, file=sys.stderr)) if not args.json else None
    report = distill_vae(args.teacher, settings, args.out, work, init=args.init, minutes=args.minutes,
                         overwrite=args.overwrite, progress=args.progress or sys.stderr.isatty(), log=log)  # fmt: skip
    if report is None:
        print(f"mmgen-edge distill-vae: stopped by --minutes; the checkpoint is in {work}: rerun to resume", file=sys.stderr)
        return EXIT_UNFINISHED
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"student      {args.out} (AutoencoderTiny; trained: {', '.join(report['trained'])}; decoder "
          f"{report['parameters']['decoder']:,} parameters, upsampling {report['decoder_upsampling']}x)")  # fmt: skip
    for name, row in report["held_out"].items():
        rel = row["encoder_latent_rel_rms"]
        enc = f", encoder latent rel. RMS {rel:.3f}" if "encoder" in report["trained"] and rel is not None else ""
        print(f"  {name:<8} vs teacher: PSNR {row['psnr_db']:.1f} dB, mean |error| {row['mean_abs']:.2f}/255{enc} "
              f"({int(row['images'])} held-out images)")  # fmt: skip
    print(f"next         mmgen-edge export MODEL --vae {args.teacher} --decoder {args.out} --out BUNDLE")
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``distill-vae`` to an ``argparse`` subparsers object."""
    from mmgen_edge.export.distill_vae import STUDENT_SHAPES, DistillSettings

    d = DistillSettings(data="")
    p = sub.add_parser(
        "distill-vae",
        help="distil a tiny VAE decoder (and encoder) from a bundle's VAE, for export --decoder",
        description="Train a diffusers AutoencoderTiny to reproduce a teacher AutoencoderKL: its decoder maps the "
        "teacher's (scaled) latents to the teacher's decoded images, perception maps included (demo:N uses the rgb, "
        "depth, normal and mask images of each scene). Resumable; writes a diffusers directory.",
    )
    p.add_argument("teacher", help="the teacher: a diffusers AutoencoderKL directory (the VAE the bundle was exported with)")
    p.add_argument("--data", required=True, help="training images: an image folder, a video file, or demo:N (N scenes)")
    p.add_argument("--out", required=True, help="the student's diffusers directory to write (atomically)")
    p.add_argument("--work", help="dataset and checkpoint directory, for resuming (default: OUT-work)")
    p.add_argument("--shape", choices=sorted(STUDENT_SHAPES), default="demo",
                   help="student layout: demo (16 channels, full resolution), demo-half (decodes at half resolution, "
                        "resized in the graph), taesd (the public TAESD layout) (default: demo)")  # fmt: skip
    p.add_argument("--channels", type=bounded_int(1, 512), help="override the layout's channels")
    p.add_argument("--decoder-blocks", type=block_list, help="override the decoder's blocks per stage, e.g. 3,3,3,1")
    p.add_argument("--encoder-blocks", type=block_list, help="override the encoder's blocks per stage, e.g. 1,3,3,3")
    p.add_argument("--encoder", action="store_true", help="also train the encoder (to the teacher's latent mean)")
    p.add_argument("--bundle", help="also train the decoder on the depth/normal/mask latents this bundle predicts for "
                                    "the data's RGB frames (its real inputs in perceive; K = 1, 2, 4); demo:N then "
                                    "paints its masks in that model's mask palette, if it has one")  # fmt: skip
    p.add_argument("--map-weights", type=weight_list, metavar="1,1,1,3",
                   help="decoder loss weight of each modality's images (rgb, depth, normal, mask; default: equal)")
    p.add_argument("--init", help="start from this AutoencoderTiny directory (e.g. public TAESD weights)")
    p.add_argument("--images", type=positive_int, default=d.images, help=f"at most this many images (default {d.images})")
    p.add_argument("--train-steps", type=positive_int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    p.add_argument("--batch", type=bounded_int(1, 1024), default=d.batch, help=f"images per step (default {d.batch})")
    p.add_argument("--lr", type=positive_float, default=d.learning_rate, help=f"peak learning rate (default {d.learning_rate})")
    p.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=d.seed, help="seed of the split, batches and init")
    p.add_argument("--save-every", type=positive_int, default=d.save_every, help="checkpoint every N steps")
    p.add_argument("--minutes", type=positive_float, help="stop (checkpoint saved) after this much training; rerun to resume")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (only a directory mmgen-edge wrote)")
    p.add_argument("--progress", action="store_true", help="show progress bars even when stderr is not a terminal")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_distill)
