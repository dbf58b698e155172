"""FLUX.1 / Chroma training-side maths and the sampler, against diffusers' FluxPipeline / ChromaPipeline and
FlowMatchEulerDiscreteScheduler on the tiny models."""

from __future__ import annotations

import pytest
import torch

from lora_trainer.models import flux_math
from lora_trainer.models.flux_configs import shipped_config

SCHEDULER_DEV, SCHEDULER_SCHNELL = shipped_config("scheduler-flux-dev"), shipped_config("scheduler-flux-schnell")


def test_packing_matches_diffusers_and_round_trips():
    from diffusers import FluxPipeline

    z = torch.randn(2, 16, 6, 10, generator=torch.Generator().manual_seed(0))
    tokens = flux_math.pack_latents(z)
    assert tokens.shape == (2, 15, 64)
    assert torch.equal(tokens, FluxPipeline._pack_latents(z, 2, 16, 6, 10))
    assert torch.equal(flux_math.unpack_latents(tokens, 6, 10), z)  # the exact inverse of diffusers' packing
    assert torch.equal(tokens[0, 0, :4], z[0, 0, :2, :2].reshape(4))  # channel-major, then the 2x2 patch
    with pytest.raises(ValueError, match="even"):
        flux_math.pack_latents(torch.zeros(1, 16, 5, 4))


def test_position_ids_match_diffusers():
    from diffusers import FluxPipeline

    ids = flux_math.image_ids(6, 10)
    assert ids.shape == (15, 3) and ids[7].tolist() == [0.0, 1.0, 2.0]  # token 7 = row 1, column 2 of 3x5
    theirs = FluxPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32)
    if theirs.shape[0] != 15:  # diffusers < 0.32 took the latent size (6 x 10) and a batch dimension
        theirs = FluxPipeline._prepare_latent_image_ids(1, 6, 10, "cpu", torch.float32).reshape(-1, 3)
    assert torch.equal(ids, theirs)
    assert torch.equal(flux_math.text_ids(4), torch.zeros(4, 3))


def test_latent_scale_shift_and_guidance_input():
    z = torch.randn(1, 16, 4, 4)
    x = flux_math.scale_latents(z)
    torch.testing.assert_close(x, (z - 0.1159) * 0.3611)
    torch.testing.assert_close(flux_math.unscale_latents(x), z)
    g = flux_math.guidance_input("flux-dev", 3, 1.0)
    assert g.tolist() == [1.0, 1.0, 1.0] and g.dtype == torch.float32
    assert flux_math.guidance_input("flux-schnell", 3) is None and flux_math.guidance_input("chroma", 3) is None


@pytest.mark.parametrize("seq_len", [16, 256, 1024, 4096])
@pytest.mark.parametrize("steps", [1, 4, 28])
@pytest.mark.parametrize("config", [SCHEDULER_DEV, SCHEDULER_SCHNELL, shipped_config("scheduler-chroma"),
                                    {**SCHEDULER_SCHNELL, "shift": 3.0}], ids=["dev", "schnell", "chroma", "shift-3"])
def test_sigmas_match_the_scheduler(seq_len, steps, config):
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler(**{k: v for k, v in config.items() if not k.startswith("_")})
    mu = calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
    assert flux_math.shift_mu(seq_len) == pytest.approx(mu, rel=1e-12)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    ours = flux_math.scheduler_sigmas(steps, seq_len, config)
    torch.testing.assert_close(ours, sched.sigmas, rtol=1e-6, atol=1e-7)
    assert ours[-1] == 0 and ours.dtype == torch.float32


def test_euler_matches_scheduler_steps():
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(**{k: v for k, v in SCHEDULER_DEV.items() if not k.startswith("_")})
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / 6, 6), mu=0.8)
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(3)) * 0.3

    def velocity(x, sigma):
        return x @ w + sigma[:, None, None]

    x0 = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(4))
    ref = x0
    for t in sched.timesteps:
        ref = sched.step(velocity(ref, (t / 1000).expand(2)), t, ref, return_dict=False)[0]
    ours = flux_math.euler_sample(velocity, x0, sched.sigmas)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["flux", "chroma"])
def test_prompt_encoding_matches_the_pipeline(kind, request):
    from lora_trainer.models.flux_sampler import encode_prompts
    from lora_trainer.models.flux_tiny import make_pipeline

    parts = request.getfixturevalue(f"tiny_{kind}")
    pipe = make_pipeline(parts)
    ours = encode_prompts(parts, ["a red circle", "zqx style"], max_sequence_length=16)
    with torch.no_grad():  # the pipeline is called under no_grad too; grad mode changes kernels' last bits
        if kind == "chroma":
            # (prompt_embeds, text_ids, prompt_attention_mask, negative_...)
            embeds, _ids, mask = pipe.encode_prompt(["a red circle", "zqx style"], negative_prompt=None,
                                                    do_classifier_free_guidance=False, max_sequence_length=16)[:3]
            assert torch.equal(ours["t5"], embeds) and torch.equal(ours["t5_mask"], mask)
        else:
            embeds, pooled, _ids = pipe.encode_prompt(["a red circle", "zqx style"], prompt_2=None,
                                                      max_sequence_length=16)
            assert torch.equal(ours["t5"], embeds) and torch.equal(ours["pooled"], pooled)


@pytest.mark.parametrize("kind", ["flux", "chroma"])
def test_sampler_matches_the_pipeline(kind, request):
    from lora_trainer.models.flux_sampler import decode, encode_prompts, sample_latents
    from lora_trainer.models.flux_tiny import make_pipeline

    parts = request.getfixturevalue(f"tiny_{kind}")
    pipe = make_pipeline(parts)
    pipe.set_progress_bar_config(disable=True)
    guidance = 4.0 if kind == "chroma" else 3.5
    kw = {"height": 64, "width": 64, "num_inference_steps": 3, "guidance_scale": guidance, "max_sequence_length": 16}
    if kind == "chroma":
        kw["negative_prompt"] = ""
    ref = pipe("a red circle", generator=torch.Generator().manual_seed(11), output_type="latent", **kw).images
    cond = encode_prompts(parts, ["a red circle"], 16)
    negative = encode_prompts(parts, [""], 16) if kind == "chroma" else None
    ours = sample_latents(parts, cond, height=64, width=64, steps=3, guidance_scale=guidance, negative=negative,
                          generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    img = pipe("a red circle", generator=torch.Generator().manual_seed(11), output_type="pt", **kw).images
    torch.testing.assert_close(decode(parts, ours, 64, 64) / 2 + 0.5, img, rtol=1e-4, atol=1e-4)


def test_generate_gives_a_seeded_image(tiny_flux):
    from lora_trainer.models.flux_sampler import generate

    a = generate(tiny_flux, "a red circle", seed=3, steps=2, width=64, height=64, max_sequence_length=16)
    b = generate(tiny_flux, "a red circle", seed=3, steps=2, width=64, height=64, max_sequence_length=16)
    c = generate(tiny_flux, "a red circle", seed=4, steps=2, width=64, height=64, max_sequence_length=16)
    assert a.size == (64, 64) and a.tobytes() == b.tobytes() != c.tobytes()


def test_clip_l_lora_gets_gradients_through_the_prompt_encoding(tiny_flux):
    from lora_trainer.lora.discovery_flux import flux_clip_targets
    from lora_trainer.lora.network import LoRANetwork
    from lora_trainer.models.flux_sampler import encode_prompts

    net = LoRANetwork(flux_clip_targets(tiny_flux["text_encoder"]), rank=2, alpha=2).attach()
    try:
        cond = encode_prompts(tiny_flux, ["a red circle"], 16)
        assert not cond["t5"].requires_grad and cond["pooled"].requires_grad
        cond["pooled"].sum().backward()
    finally:
        net.detach()
    assert all(m.lora_up.weight.grad is not None for m in net.loras.values())
