"""The exported computations, as small ``nn.Module`` wrappers around :class:`MMGen` and the VAE.

Each wrapper is exactly one ONNX graph of the bundle (input and output names in ``GRAPH_IO``):

``denoiser``: one sampler step, self-contained (labels in, CFG with the null label inside)::

    x_t (N,16,h,w), t_cur (N,4), t_next (N,4), y (N,), task (N,), cfg_scale (1,) -> x_next, x0_hat

    With cfg_scale != 1 the batch is doubled with the null label inside the graph; with cfg_scale == 1 the
    unconditional half is still computed (the graph has no branches), so use the cached pair below when
    latency matters.

``conditioning`` + ``denoiser_cached`` (the conditioning cache): the adaLN modulation of every block depends only
on (timesteps, label, task), so it is computed once per (schedule, label, task) by ``conditioning``::

    t (B,4), y (B,), task (B,) -> block_modulation (B, L, 6D), final_modulation (B, M, 2D)

and ``denoiser_cached`` takes it as input, without the ~1/3 of the weights that produce it::

    x_t (N,16,h,w), t_cur (N,4), t_next (N,4), block_modulation (G*N, L, 6D), final_modulation (G*N, M, 2D),
    cfg_scale (1,) -> x_next, x0_hat

    G = 1: no guidance. G = 2: rows [cond; uncond] (labels [y; null]); the graph tiles x_t and applies
    v = v_u + s (v_c - v_u). G is read from the shapes, so no guidance costs nothing.

``vae_encoder``: image (N,3,H,W) in [-1,1] -> scaled latent mean (N,4,H/8,W/8).
``vae_decoder``: scaled latent (N,4,h,w) -> image (N,3,8h,8w) in [-1,1] (the caller maps to uint8).
Either VAE graph may come from a diffusers ``AutoencoderKL`` or a distilled ``AutoencoderTiny`` (``autoencoders``
maps both onto the bundle's latent space and value range), with the same inputs and outputs.

The Euler update and x0 estimate use :mod:`mmgen_edge.runtime.sampler`, the same code as the runtime.
"""

from __future__ import annotations

import torch
from torch import nn

from mmgen_edge.runtime import sampler as maths

from .autoencoders import Autoencoder, decode_latent, encode_latent
from .model import MMGen

GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "denoiser": (("x_t", "t_cur", "t_next", "y", "task", "cfg_scale"), ("x_next", "x0_hat")),
    "conditioning": (("t", "y", "task"), ("block_modulation", "final_modulation")),
    "denoiser_cached": (
        ("x_t", "t_cur", "t_next", "block_modulation", "final_modulation", "cfg_scale"),
        ("x_next", "x0_hat"),
    ),
    "vae_encoder": (("image",), ("latent",)),
    "vae_decoder": (("latent",), ("image",)),
}


class DenoiserStep(nn.Module):
    """``denoiser``: one Euler step with classifier-free guidance fused in."""

    def __init__(self, model: MMGen):
        super().__init__()
        self.model = model

    def forward(
        self,
        x_t: torch.Tensor,
        t_cur: torch.Tensor,
        t_next: torch.Tensor,
        y: torch.Tensor,
        task: torch.Tensor,
        cfg_scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        null = torch.full_like(y, self.model.config.null_label)
        v = self.model(torch.cat([x_t, x_t]), torch.cat([t_cur, t_cur]), torch.cat([y, null]), torch.cat([task, task]))
        v_cond, v_uncond = v.chunk(2)  # (N, 16, h, w) each
        v = maths.guide(v_cond, v_uncond, cfg_scale)
        return maths.euler_update(x_t, v, t_cur, t_next), maths.velocity_to_x0(x_t, v, t_cur)


class Conditioning(nn.Module):
    """``conditioning``: per-block and per-head adaLN modulation from (timesteps, label, task)."""

    def __init__(self, model: MMGen):
        super().__init__()
        self.model = model

    def forward(self, t: torch.Tensor, y: torch.Tensor, task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.model.conditioning(t, y, task)  # (B, D)
        blocks = torch.stack([b.adaLN_modulation(c) for b in self.model.blocks], dim=1)  # (B, L, 6D)
        heads = torch.stack([h.adaLN_modulation(c) for h in self.model.lis_final_layer], dim=1)  # (B, M, 2D)
        return blocks, heads


class CachedDenoiserStep(nn.Module):
    """``denoiser_cached``: the step given precomputed modulation; G = modulation rows / N guidance branches."""

    def __init__(self, model: MMGen):
        super().__init__()
        self.model = model

    def velocity(self, x: torch.Tensor, block_modulation: torch.Tensor, final_modulation: torch.Tensor) -> torch.Tensor:
        m = self.model
        tokens = m.x_embedder(x) + m.pos_embed  # (B, T, D)
        for i, block in enumerate(m.blocks):
            tokens = block.forward_modulated(tokens, block_modulation[:, i])
        heads = [m.unpatchify(h.forward_modulated(tokens, final_modulation[:, k])) for k, h in enumerate(m.lis_final_layer)]
        return torch.cat(heads, dim=1)  # (B, 16, h, w)

    def forward(
        self,
        x_t: torch.Tensor,
        t_cur: torch.Tensor,
        t_next: torch.Tensor,
        block_modulation: torch.Tensor,
        final_modulation: torch.Tensor,
        cfg_scale: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = x_t.shape[0]
        branches = block_modulation.shape[0] // n  # 1 (no guidance) or 2 ([cond; uncond])
        v = self.velocity(x_t.repeat(branches, 1, 1, 1), block_modulation, final_modulation)
        v = v.reshape(branches, n, *v.shape[1:])  # (G, N, 16, h, w)
        v = maths.guide(v[0], v[branches - 1], cfg_scale)  # G = 1: v_u = v_c, so v is unchanged
        return maths.euler_update(x_t, v, t_cur, t_next), maths.velocity_to_x0(x_t, v, t_cur)


class VaeEncoder(nn.Module):
    """``vae_encoder``: image in [-1, 1] -> the bundle latent (``autoencoders.encode_latent``: KL or Tiny)."""

    def __init__(self, vae: Autoencoder):
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return encode_latent(self.vae, image)


class VaeDecoder(nn.Module):
    """``vae_decoder``: the bundle latent -> image in [-1, 1] (clamped) at ``size`` px (``autoencoders.decode_latent``)."""

    def __init__(self, vae: Autoencoder, size: int):
        super().__init__()
        self.vae = vae
        self.size = size

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return decode_latent(self.vae, latent, self.size)
