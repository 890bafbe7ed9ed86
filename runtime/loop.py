"""The denoising loop, written once for every backend (numpy in, numpy out).

It runs the bundle's ``conditioning`` + ``denoiser_cached`` graphs: the per-block modulation depends only on
(timesteps, labels, task, guidance), so for a fixed schedule it is computed once and kept in a small cache; each
step then costs one ``denoiser_cached`` call. The sampler step (schedule, Heun, Euler-Maruyama) is
:func:`mmgen_edge.runtime.sampler.step`, the same code as the PyTorch reference's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import sampler as maths
from .manifest import Manifest
from .runner import Runner
from .sampler import SamplerConfig

CACHE_ENTRIES = 256  # modulation sets kept (one per step x (labels, task, guidance)); small arrays


@dataclass
class LoopStats:
    steps: int = 0
    denoiser_calls: int = 0
    conditioning_calls: int = 0
    cache_hits: int = 0


@dataclass
class DenoisingLoop:
    """Sample latents with a bundle's graphs. ``runners`` maps graph names to active runners."""

    manifest: Manifest
    runners: Mapping[str, Runner]
    cache_size: int = CACHE_ENTRIES
    stats: LoopStats = field(default_factory=LoopStats)
    _cache: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = field(default_factory=OrderedDict)

    def modulation(self, t: np.ndarray, labels: np.ndarray, task: np.ndarray, guided: bool) -> tuple[np.ndarray, np.ndarray]:
        """Block and head modulation for (t, labels, task); rows [cond; uncond] when guided. Cached."""
        if guided:
            null = np.full_like(labels, self.manifest.model.null_label)
            t, labels, task = np.concatenate([t, t]), np.concatenate([labels, null]), np.concatenate([task, task])
        key = t.tobytes() + labels.tobytes() + task.tobytes()
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            self.stats.cache_hits += 1
            return hit
        out = self.runners["conditioning"].infer({"t": t, "y": labels, "task": task})
        value = (out["block_modulation"], out["final_modulation"])
        self.stats.conditioning_calls += 1
        self._cache[key] = value
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return value

    def velocity_step(
        self, x: np.ndarray, t_cur: np.ndarray, t_next: np.ndarray, labels: np.ndarray, task: np.ndarray, cfg_scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """One fused graph call: (x after the Euler step, guided velocity)."""
        guided = cfg_scale != 1.0
        blocks, heads = self.modulation(t_cur, labels, task, guided)
        out = self.runners["denoiser_cached"].infer(
            {
                "x_t": x,
                "t_cur": t_cur,
                "t_next": t_next,
                "block_modulation": blocks,
                "final_modulation": heads,
                "cfg_scale": np.array([cfg_scale], np.float32),
            }
        )
        self.stats.denoiser_calls += 1
        return out["x_next"], maths.velocity_from_x0(x, out["x0_hat"], t_cur)

    def step_noise(
        self, sampler: SamplerConfig, rngs: list[np.random.Generator], rows: int = 1
    ) -> list[np.ndarray] | None:
        """The Euler-Maruyama step noise (None for deterministic samplers): per noisy step, ``rows`` draws from
        each generator, stacked in order (so one sample's noise does not depend on its batch)."""
        noisy = sampler.num_noisy_steps()
        if noisy == 0:
            return None
        shape = self.manifest.latent_shape(rows)
        per_rng = [[rng.standard_normal(shape, dtype=np.float32) for _ in range(noisy)] for rng in rngs]
        return [np.concatenate([draws[i] for draws in per_rng]) for i in range(noisy)]

    def sample(
        self,
        noise: np.ndarray,
        labels: np.ndarray | None = None,
        condition: np.ndarray | None = None,
        condition_index: int | None = None,
        sampler: SamplerConfig | None = None,
        cfg_scale: float = 1.0,
        step_noise: list[np.ndarray] | None = None,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Final latents (N, 16, h, w) float32; arguments as :func:`mmgen_edge.export.sampling.sample`."""
        config = sampler or self.manifest.sampler
        model = self.manifest.model
        n = noise.shape[0]
        labels = np.full(n, model.null_label, np.int64) if labels is None else labels.astype(np.int64)
        task = np.full(n, 0 if condition_index is None else condition_index + 1, np.int64)
        x = maths.scale_start_noise(noise.astype(np.float32, copy=True), config, condition is not None)
        if condition is not None:
            if condition_index is None:
                raise ValueError("condition_index is required with a condition latent")
            maths.set_condition_slot(x, noise, condition, condition_index, config.condition_t)
        schedule = config.timesteps()

        def timesteps(t: float) -> np.ndarray:
            return maths.step_timesteps(t, n, model.num_modalities, condition_index, config.condition_t)

        def evaluate(x: np.ndarray, t_cur: np.ndarray, t_next: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
            return self.velocity_step(x, t_cur, t_next, labels, task, scale)

        if step_noise is None:
            step_noise = self.step_noise(config, [rng or np.random.default_rng()], n)
        maths.check_step_noise(config, step_noise)
        for i in range(config.num_steps):
            x = maths.step(config, i, x, evaluate, timesteps, cfg_scale, step_noise, schedule)
            self.stats.steps += 1
        return x.astype(np.float32, copy=False)
