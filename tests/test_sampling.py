"""Reference samplers: exactness on an analytic flow, condition hold, CFG, SDE reproducibility, schedules."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from extras import require_export

pytestmark = require_export()  # torch/onnx/diffusers: skipped on a base install

import torch

from mmgen_edge.export.sampling import denoise_step, prepare_latents, sample
from mmgen_edge.runtime import sampler as maths
from mmgen_edge.runtime.loop import DenoisingLoop
from mmgen_edge.runtime.sampler import SamplerConfig, SamplerKind, step_timesteps


class GaussianFlow(torch.nn.Module):
    """Exact velocity of the linear interpolant when every latent value is x0 ~ N(mu, s^2), noise ~ N(0, 1).

    x_t = (1-t) x0 + t n is Gaussian with var(t) = (1-t)^2 s^2 + t^2, and
    v(x, t) = E[n - x0 | x_t] = (t - (1-t) s^2) / var(t) * (x - (1-t) mu) - mu.
    The probability-flow ODE keeps (x - (1-t) mu) / sqrt(var(t)) constant, so from noise n at t = 1 it ends
    exactly at x0 = mu + s n.
    """

    def __init__(self, mu: float = 0.7, s: float = 0.3):
        super().__init__()
        self.mu, self.s = mu, s
        self.config = SimpleNamespace(
            null_label=10, num_modalities=4, in_channels=16, latent_size=4, modality_index=["rgb", "depth", "normal", "mask"].index
        )

    def forward(self, x, t, y, task):
        tt = t.repeat_interleave(4, dim=1)[:, :, None, None].to(x.dtype)  # (N, 16, 1, 1)
        var = (1 - tt) ** 2 * self.s**2 + tt**2
        return (tt - (1 - tt) * self.s**2) / var * (x - (1 - tt) * self.mu) - self.mu


def _noise(n=2, seed=0, dtype=torch.float64):
    return torch.randn(n, 16, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_euler_converges_to_the_exact_ode_solution_at_first_order():
    flow, noise = GaussianFlow(), _noise()
    exact = flow.mu + flow.s * noise
    errors = {k: (sample(flow, noise, SamplerConfig(num_steps=k)) - exact).abs().max().item() for k in (25, 50, 100)}
    assert errors[100] < 0.03  # the field is stiff near t = 0 (var -> s^2); the rate is what matters
    assert 1.7 < errors[25] / errors[50] < 2.3 and 1.7 < errors[50] / errors[100] < 2.3  # O(1/K)


def test_heun_is_second_order():
    flow, noise = GaussianFlow(), _noise()
    exact = flow.mu + flow.s * noise
    err = {k: (sample(flow, noise, SamplerConfig(kind="heun", num_steps=k)) - exact).abs().max().item() for k in (10, 20)}
    euler20 = (sample(flow, noise, SamplerConfig(num_steps=20)) - exact).abs().max().item()
    assert err[20] < euler20 / 5
    assert err[10] / err[20] > 3.0  # ~4 for a second-order method


@pytest.mark.parametrize("kind", ["euler", "heun", "euler_maruyama"])
def test_condition_slot_is_unchanged_through_sampling(tiny_model, kind):
    noise, cond = _noise(dtype=torch.float32), torch.randn(2, 4, 4, 4)
    config = SamplerConfig(kind=kind, num_steps=4)
    start = prepare_latents(noise, cond, 1, config.condition_t)
    out = sample(tiny_model, noise, config, condition=cond, condition_modality="depth", generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 4:8], start[:, 4:8])
    torch.testing.assert_close(start[:, 4:8], 0.005 * noise[:, 4:8] + 0.995 * cond)
    assert not torch.equal(out[:, 0:4], noise[:, 0:4])


def test_condition_uses_its_task_index_and_held_timestep(tiny_model):
    """The sampler must call the model with task k+1 and t_b in slot k; check against explicit calls."""
    noise, cond = _noise(1, dtype=torch.float32), torch.randn(1, 4, 4, 4)
    out = sample(tiny_model, noise, SamplerConfig(num_steps=1), condition=cond, condition_modality="normal")
    x = prepare_latents(noise, cond, 2, 0.005)
    t = torch.tensor([[1.0, 1.0, 0.005, 1.0]])
    with torch.no_grad():
        v = tiny_model(x, t, torch.tensor([tiny_model.config.null_label]), torch.tensor([3]))
    expected = x - v
    expected[:, 8:12] = x[:, 8:12]
    torch.testing.assert_close(out, expected)


def test_cfg_scale_one_equals_no_guidance_and_guidance_matters(tiny_model):
    noise, labels = _noise(dtype=torch.float32), torch.tensor([3, 5])
    config = SamplerConfig(num_steps=3)
    plain = sample(tiny_model, noise, config, labels=labels)
    # a doubled batch with equal branches is a no-op: null labels on both sides
    null = torch.full((2,), tiny_model.config.null_label)
    torch.testing.assert_close(sample(tiny_model, noise, config, labels=null, cfg_scale=4.0), sample(tiny_model, noise, config, labels=null))
    guided = sample(tiny_model, noise, config, labels=labels, cfg_scale=1.8)
    assert (guided - plain).abs().max() > 1e-3
    # manual CFG for one step: v_u + s (v_c - v_u)
    t = torch.ones(2, 4)
    with torch.no_grad():
        v_c, v_u = tiny_model(noise, t, labels, torch.zeros(2, dtype=torch.long)), tiny_model(noise, t, null, torch.zeros(2, dtype=torch.long))
    step = denoise_step(tiny_model, noise, t, torch.zeros(2, 4), labels, torch.zeros(2, dtype=torch.long), cfg_scale=1.8)
    torch.testing.assert_close(step.velocity, v_u + 1.8 * (v_c - v_u), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(step.x0_hat, noise - step.velocity)


def test_guidance_interval_limits_where_cfg_applies(tiny_model):
    noise, labels = _noise(dtype=torch.float32), torch.tensor([3, 5])
    outside = SamplerConfig(num_steps=4, guidance_low=0.0, guidance_high=0.1)  # t_cur in {1, .75, .5, .25}
    torch.testing.assert_close(sample(tiny_model, noise, outside, labels=labels, cfg_scale=3.0), sample(tiny_model, noise, outside, labels=labels))
    partly = SamplerConfig(num_steps=4, guidance_low=0.0, guidance_high=0.6)
    full = SamplerConfig(num_steps=4)
    a = sample(tiny_model, noise, partly, labels=labels, cfg_scale=3.0)
    b = sample(tiny_model, noise, full, labels=labels, cfg_scale=3.0)
    assert (a - b).abs().max() > 1e-4


def _repa_euler_maruyama(model, x, y, task, num_steps, zs):
    """The release's SDE loop written as REPA writes it (score from velocity, diffusion = 2t)."""
    t_steps = torch.cat([torch.linspace(1.0, 0.04, num_steps, dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)])
    x = x.double()
    for i in range(num_steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        dt = t_next - t_cur
        t_in = torch.full((x.shape[0], 4), float(t_cur), dtype=torch.float32)
        v = model(x.float(), t_in, y, task).double()
        alpha_ratio = -(1 - t_cur)  # alpha_t / d_alpha_t for alpha = 1 - t
        var = t_cur**2 - alpha_ratio * t_cur  # sigma^2 - ratio * d_sigma * sigma
        score = (alpha_ratio * v - x) / var
        drift = v - 0.5 * (2 * t_cur) * score
        x = x + drift * dt
        if i < num_steps - 1:
            x = x + torch.sqrt(2 * t_cur) * torch.sqrt(torch.abs(dt)) * zs[i].double()
    return x


def test_euler_maruyama_matches_the_release_formulation_and_is_reproducible(tiny_model):
    noise, labels = _noise(dtype=torch.float32), torch.tensor([1, 2])
    config = SamplerConfig(kind="euler_maruyama", num_steps=5)
    zs = [torch.randn(noise.shape, generator=torch.Generator().manual_seed(10 + i)) for i in range(4)]
    ours = sample(tiny_model, noise, config, labels=labels, step_noise=zs)
    with torch.no_grad():
        reference = _repa_euler_maruyama(tiny_model, noise, labels, torch.zeros(2, dtype=torch.long), 5, zs)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-4, atol=1e-4)

    a = sample(tiny_model, noise, config, labels=labels, generator=torch.Generator().manual_seed(3))
    b = sample(tiny_model, noise, config, labels=labels, generator=torch.Generator().manual_seed(3))
    c = sample(tiny_model, noise, config, labels=labels, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3


def test_schedules():
    np.testing.assert_allclose(SamplerConfig(num_steps=4).timesteps(), [1, 0.75, 0.5, 0.25, 0])
    sde = SamplerConfig(kind="euler_maruyama", num_steps=250).timesteps()
    assert len(sde) == 251 and sde[0] == 1 and sde[-2] == pytest.approx(0.04) and sde[-1] == 0
    t = step_timesteps(0.5, 3, 4, 0, 0.005)
    assert t.shape == (3, 4) and (t[:, 0] == np.float32(0.005)).all() and (t[:, 1:] == 0.5).all()
    with pytest.raises(ValueError, match="condition_index"):
        step_timesteps(0.5, 1, 4, 4, 0.005)


def test_sampler_config_round_trips_as_json_and_validates():
    config = SamplerConfig(kind=SamplerKind.HEUN, num_steps=7, guidance_low=0.1, guidance_high=0.9)
    assert SamplerConfig.model_validate_json(config.model_dump_json()) == config
    with pytest.raises(ValueError, match="guidance_low"):
        SamplerConfig(guidance_low=0.8, guidance_high=0.2)
    with pytest.raises(ValueError):
        SamplerConfig(num_steps=0)


def test_bad_sampler_inputs_are_named(tiny_model):
    with pytest.raises(ValueError, match="noise has shape"):
        sample(tiny_model, torch.randn(1, 12, 4, 4), SamplerConfig())
    with pytest.raises(ValueError, match="unknown modality 'lidar'"):
        sample(tiny_model, _noise(1, dtype=torch.float32), SamplerConfig(), condition=torch.randn(1, 4, 4, 4), condition_modality="lidar")
    with pytest.raises(ValueError, match="neither"):
        sample(tiny_model, _noise(1, dtype=torch.float32), SamplerConfig(), condition=torch.randn(1, 4, 4, 4))


_MODALITIES = ["rgb", "depth", "normal", "mask"]


class _TorchField(torch.nn.Module):
    """A label- and time-dependent velocity field (the reference loop's model) that records its calls.

    ``calls`` gets (t_cur of row 0, guided?) per evaluation; guidance doubles the batch of ``batch`` rows.
    """

    def __init__(self, calls: list, batch: int):
        super().__init__()
        self.calls, self.batch = calls, batch
        self.config = SimpleNamespace(null_label=10, num_modalities=4, in_channels=16, latent_size=4, modality_index=_MODALITIES.index)

    def forward(self, x, t, y, task):
        self.calls.append((tuple(round(float(v), 6) for v in t[0]), x.shape[0] == 2 * self.batch))
        t4 = t.repeat_interleave(4, dim=1)[:, :, None, None]  # (N, 16, 1, 1)
        return _field(x, t4, y.to(x.dtype)[:, None, None, None], task.to(x.dtype)[:, None, None, None])


def _field(x, t, y, task):
    """v(x, t, y, task); the same arithmetic on numpy arrays and torch tensors."""
    return (0.5 + t) * x - 0.3 + 0.02 * y + 0.05 * task


class _FakeConditioning:
    """Stands in for the ``conditioning`` graph: its 'modulation' carries (t, y, task) to the denoiser."""

    def infer(self, feeds):
        rows = np.concatenate([feeds["t"], feeds["y"][:, None], feeds["task"][:, None]], axis=1).astype(np.float32)
        return {"block_modulation": rows, "final_modulation": rows}


class _FakeDenoiser:
    """Stands in for the fused ``denoiser_cached`` graph on the same field as :class:`_TorchField` (records calls)."""

    def __init__(self, calls: list):
        self.calls = calls

    def infer(self, feeds):
        x, t_cur, t_next, rows, scale = feeds["x_t"], feeds["t_cur"], feeds["t_next"], feeds["block_modulation"], feeds["cfg_scale"][0]
        guided = rows.shape[0] == 2 * x.shape[0]
        self.calls.append((tuple(round(float(v), 6) for v in t_cur[0]), guided))
        xs = np.concatenate([x, x]) if guided else x
        t = np.repeat(rows[:, :4], 4, axis=1)[:, :, None, None]
        v = _field(xs, t, rows[:, 4, None, None, None], rows[:, 5, None, None, None])
        if guided:
            v = maths.guide(v[: x.shape[0]], v[x.shape[0] :], float(scale))
        return {"x_next": maths.euler_update(x, v, t_cur, t_next), "x0_hat": maths.velocity_to_x0(x, v, t_cur)}


@pytest.mark.parametrize("kind", list(SamplerKind))
@pytest.mark.parametrize("condition", [None, "depth"])
def test_both_loops_dispatch_every_sampler_kind_through_the_one_step(monkeypatch, kind, condition):
    """The runtime loop and the PyTorch reference make the same model evaluations, step by step, for every kind.

    A loop that dispatched a sampler kind itself (instead of calling ``runtime.sampler.step``) would differ in the
    number of calls, their timesteps or guidance, or skip the step function; each of those fails here.
    """
    config = SamplerConfig(kind=kind, num_steps=4, guidance_low=0.3, guidance_high=0.9)
    steps = []
    real_step = maths.step
    monkeypatch.setattr(maths, "step", lambda config, i, *a, **k: steps.append(i) or real_step(config, i, *a, **k))

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 16, 4, 4, generator=g, dtype=torch.float64)
    cond = torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64) if condition else None
    zs = [torch.randn(noise.shape, generator=g, dtype=torch.float64) for _ in range(config.num_noisy_steps())]
    labels = torch.tensor([1, 7])

    ref_calls: list = []
    ref = sample(_TorchField(ref_calls, 2), noise, config, labels=labels, condition=cond, condition_modality=condition, cfg_scale=2.5, step_noise=zs)
    ref_steps, steps[:] = list(steps), []

    run_calls: list = []
    manifest = SimpleNamespace(model=SimpleNamespace(null_label=10, num_modalities=4), sampler=config)
    loop = DenoisingLoop(manifest, {"conditioning": _FakeConditioning(), "denoiser_cached": _FakeDenoiser(run_calls)})  # type: ignore[arg-type]
    out = loop.sample(
        noise.numpy(), labels=labels.numpy(), condition=None if cond is None else cond.numpy(),
        condition_index=None if condition is None else _MODALITIES.index(condition),
        sampler=config, cfg_scale=2.5, step_noise=[z.numpy() for z in zs],
    )  # fmt: skip

    assert ref_steps == steps == [0, 1, 2, 3]
    expected_calls = {"euler": 4, "heun": 7, "euler_maruyama": 4}[kind.value]  # Heun: no correction on the last step
    assert len(ref_calls) == len(run_calls) == expected_calls
    assert ref_calls == run_calls
    assert [guided for _, guided in ref_calls].count(True) > 0 and [guided for _, guided in ref_calls].count(False) > 0
    np.testing.assert_allclose(out, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_step_names_a_bad_index_and_missing_noise():
    config = SamplerConfig(kind="euler_maruyama", num_steps=3)
    x = np.zeros((1, 16, 2, 2), np.float32)

    def evaluate(x, t_cur, t_next, scale):
        return x, np.ones_like(x)

    def timesteps(t):
        return np.full((1, 4), t, np.float32)

    with pytest.raises(ValueError, match="step index 3 outside 0..2"):
        maths.step(config, 3, x, evaluate, timesteps)
    with pytest.raises(ValueError, match=r"needs step_noise\[0\]"):
        maths.step(config, 0, x, evaluate, timesteps)
    with pytest.raises(ValueError, match="step_noise has 1 arrays, the euler_maruyama schedule needs 2"):
        maths.check_step_noise(config, [x])
    maths.check_step_noise(SamplerConfig(kind="heun"), None)
    # the final step to t = 0 is noiseless, so it needs no z
    np.testing.assert_allclose(maths.step(config, 2, x, evaluate, timesteps), x + (0.0 - 0.04) * (2 - 0.04))
