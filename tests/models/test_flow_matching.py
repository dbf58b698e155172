"""The flow-matching objective and Euler sampler agree with diffusers' FlowMatchEulerDiscreteScheduler."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from lora_trainer.models.flow import (
    FlowMatchingObjective,
    euler_sigmas,
    euler_step,
    resolution_shift,
    static_shift,
    time_shift,
)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 4, 28])
def test_static_shift_sigmas_match_diffusers(shift, steps):
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(num_inference_steps=steps)
    ours = euler_sigmas(steps, shift=shift)
    torch.testing.assert_close(ours, ref.sigmas, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours[:-1] * 1000, ref.timesteps, rtol=0, atol=1e-3)


@pytest.mark.parametrize("hw", [(256, 256), (1024, 1024), (768, 1344)])
def test_dynamic_shift_matches_flux_dev_scheduler(hw):
    h, w = hw
    seq_len = (h // 16) * (w // 16)  # FLUX: 8x VAE, then 2x2 patches
    mu = resolution_shift(seq_len)
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                          base_image_seq_len=256, max_image_seq_len=4096)
    ref.set_timesteps(num_inference_steps=20, mu=mu)
    torch.testing.assert_close(euler_sigmas(20, mu=mu), ref.sigmas, rtol=0, atol=1e-6)
    if seq_len == 256:
        assert mu == pytest.approx(0.5)
    if seq_len == 4096:
        assert mu == pytest.approx(1.15)


def test_euler_steps_match_scheduler_step():
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(num_inference_steps=6)
    sigmas = euler_sigmas(6, shift=3.0)
    gen = torch.Generator().manual_seed(0)
    x_ref = x_ours = torch.randn((2, 4, 8, 8), generator=gen)
    for i, t in enumerate(ref.timesteps):
        v = torch.randn(x_ref.shape, generator=gen)
        x_ref = ref.step(v, t, x_ref).prev_sample
        x_ours = euler_step(x_ours, v, sigmas[i], sigmas[i + 1])
        torch.testing.assert_close(x_ours, x_ref, rtol=1e-6, atol=1e-6)


def test_forward_process_matches_scale_noise_and_target_is_velocity():
    ref = FlowMatchEulerDiscreteScheduler()
    objective = FlowMatchingObjective(timestep_sampling="uniform")
    latents = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    batch = objective.noised(latents, torch.Generator().manual_seed(2))
    # the same draws, replayed: noise first, then σ
    gen = torch.Generator().manual_seed(2)
    noise = torch.randn(latents.shape, generator=gen)
    sigmas = torch.rand((3,), generator=gen)
    torch.testing.assert_close(batch.timesteps, sigmas * 1000)
    # diffusers looks σ up from its grid by timestep: use grid timesteps to compare x_t exactly
    grid_t = ref.timesteps[[10, 500, 990]]
    grid_sigma = grid_t / 1000
    expected = ref.scale_noise(latents, grid_t, noise)
    s = grid_sigma.view(-1, 1, 1, 1)
    torch.testing.assert_close((1 - s) * latents + s * noise, expected, rtol=1e-6, atol=1e-6)
    s = sigmas.view(-1, 1, 1, 1)
    torch.testing.assert_close(batch.noisy, (1 - s) * latents + s * noise)
    torch.testing.assert_close(batch.target, noise - latents)
    # the velocity target is exact: one Euler step from σ to 0 with it lands on the clean latents
    torch.testing.assert_close(batch.noisy - s * batch.target, latents, rtol=1e-5, atol=1e-5)
    assert objective.loss(batch.target, batch).item() == 0.0


def test_timestep_sampling_modes():
    n = 20000
    uniform = FlowMatchingObjective("uniform").sample_sigmas(n, torch.Generator().manual_seed(0))
    logit = FlowMatchingObjective("sigmoid").sample_sigmas(n, torch.Generator().manual_seed(0))
    shifted = FlowMatchingObjective("shift", shift=3.0).sample_sigmas(n, torch.Generator().manual_seed(0))
    for s in (uniform, logit, shifted):
        assert s.min() > 0 and s.max() < 1
    assert abs(uniform.mean().item() - 0.5) < 0.01
    assert abs(logit.mean().item() - 0.5) < 0.01 and logit.std() < uniform.std()  # logit-normal: mass mid-way
    assert shifted.mean() > 0.6  # pushed toward noise
    # logit-normal equals diffusers' training helper for the same normal draws
    from diffusers.training_utils import compute_density_for_timestep_sampling

    torch.manual_seed(5)
    ref = compute_density_for_timestep_sampling("logit_normal", 64, logit_mean=0.0, logit_std=1.0)
    ours = FlowMatchingObjective("sigmoid").sample_sigmas(64, torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    # shift composes with the dynamic shift as the formulas say
    mu = resolution_shift(4096)
    dyn = FlowMatchingObjective("uniform", mu=mu).sample_sigmas(4, torch.Generator().manual_seed(3))
    torch.testing.assert_close(dyn, time_shift(mu, torch.rand((4,), generator=torch.Generator().manual_seed(3))))
    assert static_shift(0.5, 3.0) == pytest.approx(0.75)
    assert time_shift(math.log(3.0), 0.5) == pytest.approx(0.75)  # exp(μ) = s: the two shifts coincide


def test_unknown_sampling_is_refused():
    with pytest.raises(ValueError, match="timestep_sampling"):
        FlowMatchingObjective("cosine")


def test_euler_sample_follows_a_straight_path_to_the_data():
    """With the exact velocity (noise − x0) every Euler step stays on the straight path, so any
    step count lands on x0; guidance 1 uses the prompt's prediction only."""
    from lora_trainer.models.flow import euler_sample

    gen = torch.Generator().manual_seed(0)
    x0, noise = torch.randn((1, 4, 8, 8), generator=gen), torch.randn((1, 4, 8, 8), generator=gen)
    cond = {"c": torch.tensor([[0.0], [1.0]])}  # negative, prompt

    def predict(x, t, c):
        assert t.shape == (2,) and 0 < float(t[0]) <= 1000
        return torch.cat([torch.zeros_like(x0), noise - x0]) * c["c"].view(2, 1, 1, 1)

    for steps in (1, 3, 10):
        out = euler_sample(predict, noise, cond, euler_sigmas(steps, shift=3.0), guidance=1.0)
        torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)
