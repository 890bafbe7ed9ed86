"""Sampler maths in one place: schedules and update rules of MMGen's samplers.

Pure and torch-free. The update functions use only arithmetic, ``reshape`` and ``[:, :, None]`` indexing, so the
same code runs on numpy arrays (the runtime) and on torch tensors (the PyTorch reference sampler in
``mmgen_edge.export.sampling``): one implementation, two callers.

Linear interpolant, velocity prediction (spec): ``x_t = (1 - t) * x0 + t * noise``, ``v = noise - x0``;
``t`` runs from 1 (noise) to 0 (data). Every timestep is per modality, shape (N, M): the condition slot is
"held" simply by giving it the same timestep ``t_b`` before and after a step, so its update is exactly zero.
"""

from __future__ import annotations

import enum
import numbers
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

Array = TypeVar("Array")  # numpy.ndarray or torch.Tensor

#: The release's timestep of the clean condition slot (spec: t_b = 0.005).
RELEASE_CONDITION_T = 0.005
#: The release's last SDE timestep before the final deterministic step (spec: linspace(1, 0.04, K) then 0).
RELEASE_SDE_T_LAST = 0.04


#: The most sampler steps a request may ask for (the release's SDE default is 250; the few-step regime is 1-8).
#: Bounds the time one request may hold a model (and a server instance).
MAX_STEPS = 250
#: The largest classifier-free guidance scale a request or a bundle may give (1 = no guidance).
MAX_CFG_SCALE = 100.0
#: Largest ``SamplerConfig.noise_scale``.
MAX_NOISE_SCALE = 2.0


def check_integer(value: object, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is an integer (Python or numpy, not a bool) in [low, high]; else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {int(value)}")
    return int(value)


def check_steps(steps: object) -> int:
    """A sampler step count in 1..MAX_STEPS (Python or numpy integer)."""
    return check_integer(steps, "steps", 1, MAX_STEPS)


def check_cfg_scale(cfg_scale: object) -> float:
    """A guidance scale: a real number (Python or numpy, not a bool), finite, in 0..MAX_CFG_SCALE."""
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, numbers.Real) \
            or not np.isfinite(cfg_scale) or not 0 <= cfg_scale <= MAX_CFG_SCALE:  # fmt: skip
        raise ValueError(f"cfg_scale must be a finite number in 0..{MAX_CFG_SCALE:g}, got {cfg_scale!r}")
    return float(cfg_scale)


class SamplerKind(str, enum.Enum):
    EULER = "euler"  # Euler ODE, timesteps linspace(1, 0, K + 1)
    HEUN = "heun"  # Euler ODE with Heun's correction (except on the last step)
    EULER_MARUYAMA = "euler_maruyama"  # the release's SDE sampler


class SamplerConfig(BaseModel):
    """A frozen, JSON-serialisable sampler description (it goes into the bundle manifest as is)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: SamplerKind = SamplerKind.EULER
    num_steps: int = Field(4, ge=1, le=MAX_STEPS, description="Model evaluations of the step loop (Heun adds correction calls).")
    condition_t: float = Field(RELEASE_CONDITION_T, ge=0.0, lt=1.0, description="Timestep held by the condition slot.")
    sde_t_last: float = Field(RELEASE_SDE_T_LAST, gt=0.0, lt=1.0, description="Euler-Maruyama: last noisy timestep.")
    guidance_low: float = Field(0.0, ge=0.0, le=1.0, description="Classifier-free guidance only for t in [low, high].")
    guidance_high: float = Field(1.0, ge=0.0, le=1.0)
    cfg_scale: float = Field(
        1.0, ge=0.0, le=MAX_CFG_SCALE,
        description="Default classifier-free guidance scale of generation (1 = none; the guidance acts on the class "
                    "label, so it changes class-conditioned samples); a request's own cfg_scale overrides it.",
    )  # fmt: skip
    noise_scale: float = Field(
        1.0, gt=0.0, le=MAX_NOISE_SCALE,
        description="Class generation (no condition map): the sampler scales the starting noise (drawn from the "
                    "seed, or given) by this, sampling at a lower temperature: < 1 trades diversity for fidelity; "
                    "1 = the release. Perception and conditioned generation are unchanged.",
    )  # fmt: skip

    @model_validator(mode="after")
    def _check(self) -> "SamplerConfig":
        if self.guidance_low > self.guidance_high:
            raise ValueError(f"guidance_low {self.guidance_low} > guidance_high {self.guidance_high}")
        return self

    def timesteps(self) -> np.ndarray:
        """The K + 1 schedule points from 1 to 0 (float64)."""
        k = self.num_steps
        if self.kind == SamplerKind.EULER_MARUYAMA:
            return np.concatenate([np.linspace(1.0, self.sde_t_last, k), [0.0]])
        return np.linspace(1.0, 0.0, k + 1)

    def guidance_active(self, t: float) -> bool:
        return self.guidance_low <= t <= self.guidance_high

    def guidance_scale(self, t: float, cfg_scale: float) -> float:
        """The guidance scale used at schedule point ``t``: ``cfg_scale`` inside the guidance interval, else 1."""
        return cfg_scale if self.guidance_active(float(t)) else 1.0

    def num_noisy_steps(self) -> int:
        """How many steps draw Euler-Maruyama noise (the steps that end above t = 0); 0 for the ODE samplers."""
        if self.kind != SamplerKind.EULER_MARUYAMA:
            return 0
        return sum(1 for t in self.timesteps()[1:] if t > 0)


def step_timesteps(
    t: float, batch: int, num_modalities: int, condition_index: int | None, condition_t: float
) -> np.ndarray:
    """Per-modality timesteps (N, M) for schedule point ``t``; the condition slot (if any) stays at ``condition_t``."""
    out = np.full((batch, num_modalities), t, dtype=np.float32)
    if condition_index is not None:
        if not 0 <= condition_index < num_modalities:
            raise ValueError(f"condition_index {condition_index} outside 0..{num_modalities - 1}")
        out[:, condition_index] = condition_t
    return out


def scale_start_noise(noise: Array, config: SamplerConfig, conditioned: bool) -> Array:
    """The starting latents of class generation: ``noise`` times ``config.noise_scale`` (a new array unless the
    scale is 1); a conditioned sample's noise as it is (its condition slot's noise level is the release's t_b)."""
    return noise if conditioned or config.noise_scale == 1.0 else noise * config.noise_scale


def set_condition_slot(x: Array, noise: Array, condition: Array, condition_index: int, condition_t: float) -> Array:
    """Set slot ``condition_index`` of x (N, M*C, h, w), in place, to t_b * noise + (1 - t_b) * condition (N, C, h, w).

    The release's starting point for a clean condition; with its timestep held at t_b it never changes afterwards.
    """
    c = condition.shape[1]
    if condition.shape[0] != noise.shape[0] or tuple(condition.shape[2:]) != tuple(noise.shape[2:]):
        raise ValueError(f"condition shape {tuple(condition.shape)} does not match noise {tuple(noise.shape)}")
    if not 0 <= condition_index < noise.shape[1] // c:
        raise ValueError(f"condition_index {condition_index} outside 0..{noise.shape[1] // c - 1}")
    slot = slice(condition_index * c, (condition_index + 1) * c)
    x[:, slot] = condition_t * noise[:, slot] + (1.0 - condition_t) * condition
    return x


def _by_modality(x: Array, t: Array) -> tuple[Array, Array]:
    """View x (N, M*C, H, W) as (N, M, C, H, W) and t (N, M) as (N, M, 1, 1, 1) so they broadcast."""
    n, channels, h, w = x.shape
    m = t.shape[1]
    return x.reshape(n, m, channels // m, h, w), t[:, :, None, None, None]


def velocity_to_x0(x: Array, v: Array, t: Array) -> Array:
    """x0_hat = x_t - t * v."""
    xm, tm = _by_modality(x, t)
    vm, _ = _by_modality(v, t)
    return (xm - tm * vm).reshape(x.shape)


def euler_update(x: Array, v: Array, t_cur: Array, t_next: Array) -> Array:
    """One Euler step x + (t_next - t_cur) * v. A slot with t_next == t_cur is returned unchanged."""
    xm, tc = _by_modality(x, t_cur)
    vm, tn = _by_modality(v, t_next)
    return (xm + (tn - tc) * vm).reshape(x.shape)


def velocity_from_x0(x: Array, x0_hat: Array, t: Array) -> Array:
    """Invert x0_hat = x - t * v: v = (x - x0_hat) / t, and 0 where t == 0 (never NaN in a held slot)."""
    xm, tm = _by_modality(x, t)
    om, _ = _by_modality(x0_hat, t)
    zero = (tm == 0) + tm * 0  # 1 where t == 0, else 0, in t's dtype (numpy and torch alike)
    return ((xm - om) / (tm + zero) * (1 - zero)).reshape(x.shape)


def heun_update(x: Array, v_cur: Array, v_next: Array, t_cur: Array, t_next: Array) -> Array:
    """Heun's correction: x + (t_next - t_cur) * (v_cur + v_next) / 2."""
    return euler_update(x, 0.5 * (v_cur + v_next), t_cur, t_next)


def sde_drift(x: Array, v: Array, t: Array) -> Array:
    """Drift of the release's Euler-Maruyama SDE: score = (-(1 - t) v - x) / t, drift = v - t * score.

    Algebraically ``(2 - t) * v + x``; written in that form it has no division by ``t`` and is exact at t -> 0.
    """
    xm, tm = _by_modality(x, t)
    vm, _ = _by_modality(v, t)
    return ((2.0 - tm) * vm + xm).reshape(x.shape)


def euler_maruyama_update(x: Array, v: Array, t_cur: Array, t_next: Array, z: Array | None) -> Array:
    """x + dt * drift + sqrt(2 t) * sqrt(|dt|) * z; ``z=None`` gives the noiseless (final) step.

    Where a slot has dt == 0 (the held condition) both terms vanish, so the slot is unchanged.
    """
    drift = sde_drift(x, v, t_cur)
    out = euler_update(x, drift, t_cur, t_next)
    if z is None:
        return out
    om, tc = _by_modality(out, t_cur)
    zm, tn = _by_modality(z, t_next)
    diffusion = (2.0 * tc * abs(tn - tc)) ** 0.5  # sqrt(2t) * sqrt(|dt|), per modality
    return (om + diffusion * zm).reshape(x.shape)


def guide(v_cond: Array, v_uncond: Array, scale: float) -> Array:
    """Classifier-free guidance: v_uncond + s * (v_cond - v_uncond)."""
    return v_uncond + scale * (v_cond - v_uncond)


#: One model evaluation, supplied by the loop that calls :func:`step`: ``evaluate(x, t_cur, t_next, cfg_scale)``
#: returns ``(x_euler, v)``, the guided velocity ``v`` at ``(x, t_cur)`` and ``x_euler``, the Euler update of x
#: from ``t_cur`` to ``t_next`` with that velocity (the runtime's fused graph computes it; the reference calls
#: :func:`euler_update`). Timesteps are per modality, (N, M).
Evaluate = Callable[[Array, Array, Array, float], tuple[Array, Array]]


def check_step_noise(config: SamplerConfig, step_noise: Sequence[Array] | None) -> None:
    """Raise ``ValueError`` if an Euler-Maruyama sampler is given fewer noise arrays than it has noisy steps.

    Args:
        config: the sampler.
        step_noise: the z of each noisy step, or None (only valid for the ODE samplers).
    """
    needed = config.num_noisy_steps()
    have = 0 if step_noise is None else len(step_noise)
    if have < needed:
        raise ValueError(f"step_noise has {have} arrays, the {config.kind.value} schedule needs {needed}")


def step(
    config: SamplerConfig,
    i: int,
    x: Array,
    evaluate: Evaluate,
    timesteps: Callable[[float], Array],
    cfg_scale: float = 1.0,
    step_noise: Sequence[Array] | None = None,
    schedule: np.ndarray | None = None,
) -> Array:
    """Advance the latents from schedule point ``i`` to ``i + 1``: the one sampler step of every loop.

    Both the torch-free runtime (:class:`mmgen_edge.runtime.loop.DenoisingLoop`) and the PyTorch reference
    (:func:`mmgen_edge.export.sampling.sample`) call this, so the dispatch on :class:`SamplerKind` is written once:

    - Euler: one evaluation, ``x_euler``;
    - Heun: Euler, then a second evaluation at ``(x_euler, t_next)`` and the average of the two velocities
      (except on the last step, which is plain Euler: its ``t_next`` is 0);
    - Euler-Maruyama: one evaluation, the SDE update with ``step_noise[i]``, noiseless on the final step to 0.

    Args:
        config: the sampler.
        i: the step index, 0 <= i < ``config.num_steps``.
        x: latents (N, M*C, h, w) at schedule point ``i`` (numpy array or torch tensor).
        evaluate: the loop's model evaluation (see :data:`Evaluate`).
        timesteps: maps a schedule point to the per-modality timesteps (N, M) in ``x``'s array type
            (the condition slot held at ``config.condition_t``).
        cfg_scale: classifier-free guidance scale, applied only inside the guidance interval.
        step_noise: Euler-Maruyama only: the z of each noisy step (see :func:`check_step_noise`).
        schedule: ``config.timesteps()``, passed in to avoid recomputing it each step.

    Returns:
        The latents at schedule point ``i + 1``, same shape and array type as ``x``.
    """
    if not 0 <= i < config.num_steps:
        raise ValueError(f"step index {i} outside 0..{config.num_steps - 1}")
    points = config.timesteps() if schedule is None else schedule
    t_cur, t_next = timesteps(float(points[i])), timesteps(float(points[i + 1]))
    x_euler, v = evaluate(x, t_cur, t_next, config.guidance_scale(points[i], cfg_scale))
    if config.kind == SamplerKind.EULER_MARUYAMA:
        if points[i + 1] == 0:
            return euler_maruyama_update(x, v, t_cur, t_next, None)
        if step_noise is None or i >= len(step_noise):
            raise ValueError(f"euler_maruyama step {i} needs step_noise[{i}]; see check_step_noise")
        return euler_maruyama_update(x, v, t_cur, t_next, step_noise[i])
    if config.kind == SamplerKind.HEUN and i < config.num_steps - 1:
        _, v_next = evaluate(x_euler, t_next, t_next, config.guidance_scale(points[i + 1], cfg_scale))
        return heun_update(x, v, v_next, t_cur, t_next)
    return x_euler
