"""Write training checkpoints in the exact layout of the MMGen release, with random weights.

The release files cannot be downloaded everywhere; tests, benchmarks and the quick start use these instead:
same dict keys (model / ema / opt / args / steps), ``args`` as ``argparse.Namespace`` (as in the released
600k/620k files) or as a dict, same state-dict key names, an AdamW-shaped optimizer state.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from .checkpoint import architecture_from_args
from .model import MMGen


def release_args(model: str = "SiT-XL/2", resolution: int = 256, **overrides: Any) -> dict[str, Any]:
    """The training args of the release (the keys the importer reads, plus a few it ignores)."""
    args: dict[str, Any] = dict(
        model=model, resolution=resolution, num_tasks=4, is_mmcat_diff=True, use_decouple_task=True,
        use_taskcond_emb=True, use_decouple_latent=False, num_classes=1000, cfg_prob=0.1, encoder_depth=8,
        qk_norm=False, fused_attn=True, path_type="linear", enc_type="dinov2-vit-b", proj_coeff=0.5,
        learning_rate=1e-4, batch_size=256, output_dir="exps", exp_name="mmgen", seed=0,
    )  # fmt: skip
    args.update(overrides)
    return args


def write_release_checkpoint(
    path: str | os.PathLike[str],
    model: str = "SiT-S/8",
    resolution: int = 64,
    args_format: Literal["namespace", "dict"] = "namespace",
    seed: int = 0,
    with_optimizer: bool = True,
    steps: int = 600_000,
    projector: tuple[int, int] | None = (2048, 768),
    nonfinite: Mapping[str, float] | None = None,
    **arg_overrides: Any,
) -> dict[str, torch.Tensor]:
    """Write a random-weight checkpoint in the release layout; returns its EMA state dict.

    ``projector`` is the REPA projector's (projector_dim, z_dim) (the release's by default; None for none).
    ``arg_overrides`` change the args, e.g. ``depth=2, hidden_size=64, num_heads=2`` for a tiny model.
    ``nonfinite`` maps tensor names to a value (``nan``, ``inf``) written into their first element, in both the
    ``model`` and ``ema`` weights: a broken checkpoint for tests of the importer's refusal.

    Weights are randomised beyond the zero init (adaLN and output layers included) so that every parameter
    influences the output. ``model`` and ``ema`` differ, so loading the wrong one is detectable.
    """
    args = release_args(model, resolution, **arg_overrides)
    config = architecture_from_args(args, projector)
    generator = torch.Generator().manual_seed(seed)
    net = MMGen(config)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    ema = {k: v.clone() for k, v in net.state_dict().items()}
    live = {k: (v + 0.01 * torch.randn(v.shape, generator=generator) if k != "pos_embed" else v.clone()) for k, v in ema.items()}
    poison(ema, nonfinite or {})
    poison(live, nonfinite or {})
    opt: dict[str, Any] = {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.0, "params": []}]}
    if with_optimizer:
        trainable = [k for k in ema if k != "pos_embed"]
        opt["state"] = {
            i: {"step": torch.tensor(float(steps)), "exp_avg": torch.zeros_like(ema[k]), "exp_avg_sq": torch.zeros_like(ema[k])}
            for i, k in enumerate(trainable)
        }
        opt["param_groups"][0]["params"] = list(range(len(trainable)))
    ckpt = {
        "model": live,
        "ema": ema,
        "opt": opt,
        "args": argparse.Namespace(**args) if args_format == "namespace" else args,
        "steps": steps,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return ema


def poison(tensors: Mapping[str, torch.Tensor], values: Mapping[str, float]) -> None:
    """Write ``values[name]`` (e.g. ``float("nan")``) into the first element of each named tensor, in place.

    Args:
        tensors: a state dict.
        values: tensor name -> the value to plant; every name must be in ``tensors``.
    """
    unknown = sorted(set(values) - set(tensors))
    if unknown:
        raise KeyError(f"no tensors named {unknown}")
    with torch.no_grad():
        for name, value in values.items():
            tensors[name].view(-1)[0] = value


#: One NaN and one Inf tensor, for the refusal tests of convert and export.
NONFINITE_WEIGHTS: dict[str, float] = {"blocks.0.attn.qkv.weight": float("nan"), "lis_final_layer.1.linear.bias": float("inf")}
NONFINITE_VAE_WEIGHTS: dict[str, float] = {"decoder.conv_in.weight": float("nan"), "encoder.conv_out.bias": float("-inf")}

#: A tiny architecture in the release layout (custom sizes): 32 px -> 4x4 latents, patch 2 -> 4 tokens.
TINY_ARGS: dict[str, Any] = dict(model="SiT-S/2", resolution=32, depth=2, hidden_size=64, num_heads=2, encoder_depth=1)
TINY_PROJECTOR = (64, 32)


def write_tiny_vae(path: str | os.PathLike[str], seed: int = 0, nonfinite: Mapping[str, float] | None = None) -> Path:
    """A tiny random diffusers ``AutoencoderKL`` with the SD-VAE interface (4 latent channels at 1/8), saved to ``path``.

    ``nonfinite`` plants values (NaN, Inf) into the first element of the named tensors, as in :func:`poison`.
    """
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.5,
    )
    poison(dict(vae.named_parameters()), nonfinite or {})
    vae.save_pretrained(path)
    return Path(path)
