"""PyTorch reference samplers: the numerical reference for the ONNX graphs and the torch-free runtime.

The schedule, the update maths and the sampler step (:func:`mmgen_edge.runtime.sampler.step`) live in
:mod:`mmgen_edge.runtime.sampler`, shared with the runtime; this module only calls the model.
:func:`denoise_step` is exactly what one call of the exported ``denoiser`` graph computes (guided velocity,
Euler update, x0 estimate); :func:`sample` is the whole loop:

- category generation: every slot from noise, one shared schedule, task index 0, the class label;
- conditioning on modality k: slot k is set to ``t_b * noise + (1 - t_b) * latent`` and its timestep is held at
  ``t_b`` for every step (so it never changes), task index k + 1, class label null unless known.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgen_edge.runtime import sampler as maths
from mmgen_edge.runtime.sampler import SamplerConfig

from .model import MMGen


@dataclass
class StepOutput:
    x_next: torch.Tensor  # (N, 16, h, w) after the Euler update
    x0_hat: torch.Tensor  # (N, 16, h, w) data estimate x_t - t * v
    velocity: torch.Tensor  # (N, 16, h, w) guided velocity


def guided_velocity(
    model: MMGen, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, task: torch.Tensor, cfg_scale: float
) -> torch.Tensor:
    """Model velocity with classifier-free guidance (batch doubled with the null label) when ``cfg_scale != 1``."""
    if cfg_scale == 1.0:
        return model(x, t, y, task)
    null = torch.full_like(y, model.config.null_label)
    v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]), torch.cat([task, task]))
    v_cond, v_uncond = v.chunk(2)
    return maths.guide(v_cond, v_uncond, cfg_scale)


@torch.no_grad()
def denoise_step(
    model: MMGen,
    x: torch.Tensor,
    t_cur: torch.Tensor,
    t_next: torch.Tensor,
    y: torch.Tensor,
    task: torch.Tensor,
    cfg_scale: float = 1.0,
) -> StepOutput:
    """One sampler step with per-modality timesteps t_cur, t_next (N, M)."""
    v = guided_velocity(model, x, t_cur, y, task, cfg_scale)
    return StepOutput(
        x_next=maths.euler_update(x, v, t_cur, t_next), x0_hat=maths.velocity_to_x0(x, v, t_cur), velocity=v
    )


def prepare_latents(
    noise: torch.Tensor, condition: torch.Tensor | None, condition_index: int | None, condition_t: float
) -> torch.Tensor:
    """Starting latents: pure noise, with the condition slot set to t_b * noise + (1 - t_b) * latent."""
    x = noise.clone()
    if condition is None:
        return x
    if condition_index is None:
        raise ValueError("condition_index is required when a condition latent is given")
    return maths.set_condition_slot(x, noise, condition, condition_index, condition_t)


@torch.no_grad()
def sample(
    model: MMGen,
    noise: torch.Tensor,
    config: SamplerConfig,
    *,
    labels: torch.Tensor | None = None,
    condition: torch.Tensor | None = None,
    condition_modality: str | None = None,
    cfg_scale: float = 1.0,
    step_noise: list[torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Run the whole sampler and return the final latents (N, 16, h, w).

    Args:
        noise: starting noise (N, 16, h, w); it also provides the condition slot's noise.
        labels: class labels (N,); None = null label.
        condition: clean latent of the condition modality (N, 4, h, w), or None for category generation.
        condition_modality: name of the condition's modality (e.g. "rgb" to predict depth/normals/mask).
        step_noise: Euler-Maruyama only: the z of each noisy step (K - 1 tensors like ``noise``); drawn from
            ``generator`` when None.
    """
    cfg = model.config
    n = noise.shape[0]
    if noise.shape[1:] != (cfg.in_channels, cfg.latent_size, cfg.latent_size):
        raise ValueError(
            f"noise has shape {tuple(noise.shape)}, expected (N, {cfg.in_channels}, {cfg.latent_size}, {cfg.latent_size})"
        )
    if (condition is None) != (condition_modality is None):
        raise ValueError("give both condition and condition_modality, or neither")
    cond_index = cfg.modality_index(condition_modality) if condition_modality is not None else None
    y = labels if labels is not None else torch.full((n,), cfg.null_label, dtype=torch.long)
    task = torch.full((n,), 0 if cond_index is None else cond_index + 1, dtype=torch.long)
    x = prepare_latents(maths.scale_start_noise(noise, config, condition is not None), condition, cond_index,
                        config.condition_t)  # fmt: skip

    schedule = config.timesteps()
    if step_noise is None:  # Euler-Maruyama draws one z per noisy step; the ODE samplers none
        num_noisy = config.num_noisy_steps()
        step_noise = [torch.randn(noise.shape, generator=generator, dtype=noise.dtype) for _ in range(num_noisy)]
    maths.check_step_noise(config, step_noise)

    def timesteps(t: float) -> torch.Tensor:
        return torch.from_numpy(
            maths.step_timesteps(t, n, cfg.num_modalities, cond_index, config.condition_t)
        ).to(noise.dtype)

    def evaluate(x: torch.Tensor, t_cur: torch.Tensor, t_next: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        v = guided_velocity(model, x, t_cur, y, task, scale)
        return maths.euler_update(x, v, t_cur, t_next), v

    for i in range(config.num_steps):
        x = maths.step(config, i, x, evaluate, timesteps, cfg_scale, step_noise, schedule)
    return x
