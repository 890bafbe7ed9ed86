"""The demo VAE: a small diffusers ``AutoencoderKL`` with the SD-VAE interface (image in [-1, 1], 4 latent channels
at 1/8 resolution, ``scaling_factor`` in its config), trained on all four modalities of the shapes world.

Because it is a stock ``AutoencoderKL``, everything that handles the SD VAE (``sd-vae-ft-mse``) handles it too.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL

#: Architecture of the demo VAE (1.0 M parameters; 3 down-samplings -> 1/8 resolution like the SD VAE).
DEMO_VAE_CONFIG: dict[str, object] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(16, 32, 64, 64),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=128,
    scaling_factor=1.0,  # replaced after training by 1 / std of the latents (how SD's 0.18215 was chosen)
)


def new_demo_vae() -> AutoencoderKL:
    return AutoencoderKL(**DEMO_VAE_CONFIG)


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8, as the release decodes: (x + 1) / 2 * 255, clamped."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode(vae: AutoencoderKL, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> scaled latent means (N, 4, H/8, W/8)."""
    device = next(vae.parameters()).device
    out = [
        (vae.encode(images_to_tensor(images[i : i + batch_size]).to(device)).latent_dist.mean * vae.config.scaling_factor).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out)


@torch.no_grad()
def decode(vae: AutoencoderKL, latents: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Scaled latents (N, 4, h, w) -> (N, 8h, 8w, 3) uint8."""
    out = [
        tensor_to_images(vae.decode(latents[i : i + batch_size] / vae.config.scaling_factor).sample)
        for i in range(0, len(latents), batch_size)
    ]
    return np.concatenate(out)
