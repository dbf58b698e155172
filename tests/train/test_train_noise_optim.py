"""Noise schedule, targets, Min-SNR weights, optimizers and schedulers."""

from __future__ import annotations

import math

import pytest
import torch

from lora_trainer.config import TrainConfig
from lora_trainer.errors import ConfigError
from lora_trainer.models.ddpm import NoiseSchedule, sample_noise
from lora_trainer.models.objective import weighted_mse as diffusion_loss
from lora_trainer.train.optim import build_optimizer, build_scheduler, lr_lambda


def test_schedule_matches_diffusers_scaled_linear():
    from diffusers import DDPMScheduler

    ref = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    ours = NoiseSchedule()
    assert torch.allclose(ours.alphas_cumprod.float(), ref.alphas_cumprod, atol=1e-6)
    x, n = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    assert torch.allclose(ours.add_noise(x, n, t), ref.add_noise(x, n, t), atol=1e-5)
    assert torch.allclose(ours.velocity(x, n, t), ref.get_velocity(x, n, t), atol=1e-5)
    assert torch.equal(ours.target("epsilon", x, n, t), n)


def test_min_snr_weights():
    s = NoiseSchedule()
    t = torch.tensor([10, 999])
    snr = s.snr(t)
    w_eps = s.min_snr_weights(t, 5.0, "epsilon")
    w_v = s.min_snr_weights(t, 5.0, "v_prediction")
    assert snr[0] > 5 > snr[1]
    assert w_eps[0].item() == pytest.approx(5 / snr[0].item(), rel=1e-5)
    assert w_eps[1].item() == pytest.approx(1.0)
    assert w_v[0].item() == pytest.approx(5 / (snr[0].item() + 1), rel=1e-5)
    assert w_v[1].item() == pytest.approx(snr[1].item() / (snr[1].item() + 1), rel=1e-5)
    loss = diffusion_loss(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 0.0]))
    assert loss.item() == pytest.approx(0.5)


def test_noise_offset_shifts_channel_means():
    lat = torch.zeros(64, 4, 8, 8)
    plain = sample_noise(lat, 0.0, torch.Generator().manual_seed(0))
    offset = sample_noise(lat, 1.0, torch.Generator().manual_seed(0))
    assert plain.mean(dim=(2, 3)).std() < offset.mean(dim=(2, 3)).std()


def _Cfg(**kw) -> TrainConfig:  # noqa: N802 - reads like the config it builds
    return TrainConfig(**{"optimizer": "adamw", "learning_rate": 0.1, "weight_decay": 0.0, **kw})


@pytest.mark.parametrize("name", ["adamw", "sgd", "lion", "prodigy"])
def test_optimizers_step(name):
    if name == "prodigy":  # optional package (Forge ships none); lion has a built-in fallback
        pytest.importorskip("prodigyopt")
    p = torch.nn.Parameter(torch.ones(3))
    opt = build_optimizer([{"params": [p], "lr": 0.1}], _Cfg(optimizer=name, learning_rate=1.0 if name == "prodigy" else 0.1))
    (p ** 2).sum().backward()
    opt.step()
    assert not torch.equal(p.detach(), torch.ones(3))


def test_adamw8bit_without_bitsandbytes_says_what_to_do():
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes installed")
    except ImportError:
        pass
    p = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(ConfigError, match="bitsandbytes"):
        build_optimizer([{"params": [p]}], _Cfg(optimizer="adamw8bit"))


def test_schedulers():
    assert [lr_lambda("constant_with_warmup", 4, 10)(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = lr_lambda("cosine", 0, 10)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    lin = lr_lambda("linear", 2, 12)
    assert lin(0) == 0.5 and lin(2) == 1.0 and lin(7) == pytest.approx(0.5)
    p = torch.nn.Parameter(torch.ones(1))
    opt = build_optimizer([{"params": [p], "lr": 1.0}], _Cfg())
    sched = build_scheduler(opt, _Cfg(lr_scheduler="cosine", lr_warmup_steps=2), 10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[-1] < 0.1
    assert all(math.isfinite(x) for x in lrs)
