"""The inputs the cases share: the tensors of one perception step, and held-out scene images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mmgen_edge.runtime.modalities import IMAGE_MODALITY

#: Seed of every random input of the bench (step latents, perceive noise, the SDK evaluation).
SEED = 0


@dataclass(frozen=True)
class StepInputs:
    """Numpy inputs of one perception step at batch n (no guidance: modulation rows = n)."""

    x: np.ndarray
    t_cur: np.ndarray
    t_next: np.ndarray
    labels: np.ndarray
    task: np.ndarray


def step_inputs(config: Any, sampler: Any, n: int) -> StepInputs:
    """The first step of perception: rgb held at the condition timestep, the other slots from t = 1 to 1 - 1/4."""
    from mmgen_edge.runtime import sampler as maths

    rgb = config.modality_index(IMAGE_MODALITY)
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((n, config.in_channels, config.latent_size, config.latent_size), dtype=np.float32)
    schedule = sampler.model_copy(update={"num_steps": 4}).timesteps()
    t_cur = maths.step_timesteps(float(schedule[0]), n, config.num_modalities, rgb, sampler.condition_t)
    t_next = maths.step_timesteps(float(schedule[1]), n, config.num_modalities, rgb, sampler.condition_t)
    labels = np.full(n, config.null_label, np.int64)
    task = np.full(n, rgb + 1, np.int64)
    return StepInputs(x, t_cur, t_next, labels, task)


def scene_images(count: int, size: int) -> list[np.ndarray]:
    """RGB images of the first ``count`` held-out scenes of the shapes demo, ``size`` pixels square."""
    from mmgen_edge.samples.shapes.evaluate import held_out_scenes

    return [scene.rgb for scene in held_out_scenes(count, size)]

