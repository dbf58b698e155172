"""Honest quality measurement of a trained LoRA: held-out denoising loss, concept vs control.

A LoRA on a random or weakly trained base mostly learns generic denoising, so "the loss went down"
proves nothing. We compare the drop on held-out images of the trained concept with the drop on
held-out images of a control concept that was never trained: only the difference is the concept.
Noise, timesteps and VAE sampling are fixed, so the numbers repeat exactly on one machine; a
multiplier of 0 must reproduce the base output bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from lora_trainer.models.ddpm import NoiseSchedule

EVAL_TIMESTEPS = (50, 150, 250, 350, 450, 550, 650, 750, 850, 950)


@dataclass
class QualityReport:
    concept_before: float
    concept_after: float
    control_before: float
    control_after: float
    zero_multiplier_exact: bool

    @property
    def concept_gain(self) -> float:
        """Relative drop of the held-out loss on the trained concept (0.1 = 10 % lower)."""
        return (self.concept_before - self.concept_after) / self.concept_before

    @property
    def control_gain(self) -> float:
        return (self.control_before - self.control_after) / self.control_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "concept_gain": self.concept_gain, "control_gain": self.control_gain}

    def summary(self) -> str:
        return (f"held-out denoising loss, trained concept: {self.concept_before:.5f} -> {self.concept_after:.5f} "
                f"({self.concept_gain:+.1%} lower)\n"
                f"held-out denoising loss, control concept: {self.control_before:.5f} -> {self.control_after:.5f} "
                f"({self.control_gain:+.1%} lower)\n"
                f"concept-specific gain: {self.concept_gain - self.control_gain:+.1%} "
                f"(multiplier 0 reproduces the base exactly: {'yes' if self.zero_multiplier_exact else 'NO'})")


@torch.no_grad()
def fixed_inputs(adapter: Any, pixels: torch.Tensor, captions: list[str], *, seed: int = 0,
                 timesteps: tuple[int, ...] = EVAL_TIMESTEPS) -> list[tuple[torch.Tensor, ...]]:
    """(noisy latents, timesteps, noise, cond) per timestep, with every random draw fixed by `seed`.

    Latents and text conditioning are computed once with the LoRA absent or present as the caller
    arranged; callers that compare LoRA on/off must build these with the LoRA detached."""
    dev = adapter.device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        latents = adapter.encode_images(pixels.to(dev, adapter.dtype)).float()
    cond = adapter.encode_text(list(captions))
    gen = torch.Generator().manual_seed(seed + 1)
    schedule = NoiseSchedule()
    flow = adapter.info.prediction_type == "flow"
    out = []
    for t_val in timesteps:
        noise = torch.randn(latents.shape, generator=gen, dtype=torch.float32).to(dev)
        if flow:  # rectified flow: x_t = (1 − σ)·x0 + σ·ε at σ = t / 1000
            sigma = t_val / 1000.0
            t = torch.full((latents.shape[0],), float(t_val), dtype=torch.float32, device=dev)
            out.append(((1 - sigma) * latents + sigma * noise, t, noise, latents, cond))
            continue
        t = torch.full((latents.shape[0],), int(t_val), dtype=torch.long, device=dev)
        out.append((schedule.add_noise(latents, noise, t), t, noise, latents, cond))
    return out


@torch.no_grad()
def denoising_loss(adapter: Any, inputs: list[tuple[torch.Tensor, ...]], prediction_type: str | None = None) -> float:
    """Mean MSE of the model's prediction against its target over the fixed inputs (float64 sum)."""
    pred_type = prediction_type or adapter.info.prediction_type
    schedule = NoiseSchedule()
    total, count = 0.0, 0
    for noisy, t, noise, latents, cond in inputs:
        pred = adapter.predict(noisy.to(adapter.dtype), t, cond).double()
        if pred_type == "flow":  # the velocity ε − x0
            target = noise.double() - latents.double()
        else:
            target = schedule.target(pred_type, latents.double(), noise.double(), t)
        total += float(((pred - target) ** 2).mean())
        count += 1
    return total / max(1, count)


def load_network(adapter: Any, lora_file: str) -> Any:
    """A LoRANetwork built for `adapter` from a file of any type (LoRA/LoCon/LoHa/LoKr/DoRA; its
    type, ranks, alphas and parts read from the file's tensors)."""
    from lora_trainer.lora.file import load_lora_file
    from lora_trainer.lora.metadata_flux import FLUX_KINDS, load_flux_lora

    if adapter.info.arch in FLUX_KINDS:  # fused BFL modules split back per trained module (LoRA), or kept
        from lora_trainer.lora.infer import spec_from_weights
        from lora_trainer.lora.network import LoRANetwork
        from lora_trainer.models.flux_adapter import lora_targets_for

        sd, _ = load_flux_lora(lora_file)
        spec = spec_from_weights(sd)
        has_te = any(k.startswith("lora_te") for k in sd)
        has_unet = any(k.startswith(("lora_transformer", "lora_unet")) for k in sd)
        targets = lora_targets_for(adapter, spec.network_type, spec.dora_wd, unet=has_unet, text_encoder=has_te,
                                   conv=spec.conv_rank > 0)
        net = LoRANetwork.from_spec(targets, spec)
        net.load_kohya_state_dict(sd)
    else:
        from lora_trainer.lora.infer import network_for_file

        sd, _ = load_lora_file(lora_file)
        net = network_for_file(sd, adapter.lora_targets)
    net.eval()
    return net


def evaluate_lora(adapter: Any, lora_file: str, concept: tuple[torch.Tensor, list[str]],
                  control: tuple[torch.Tensor, list[str]], *, seed: int = 0,
                  base_losses: tuple[float, float] | None = None) -> QualityReport:
    """Held-out loss on concept and control images, base vs base+LoRA (from the saved file).

    The text conditioning is recomputed with the LoRA on (a text-encoder LoRA is part of the effect);
    noise, timesteps and latents stay the same."""
    base_c = fixed_inputs(adapter, *concept, seed=seed)
    base_k = fixed_inputs(adapter, *control, seed=seed)
    before = base_losses or (denoising_loss(adapter, base_c), denoising_loss(adapter, base_k))
    probe = base_c[len(base_c) // 2]
    with torch.no_grad():
        ref = adapter.predict(probe[0].to(adapter.dtype), probe[1], probe[4])
    net = load_network(adapter, lora_file)
    net.attach()
    try:
        net.multiplier = 0.0
        with torch.no_grad():
            zero = adapter.predict(probe[0].to(adapter.dtype), probe[1], adapter.encode_text(list(concept[1])))
        exact = bool(torch.equal(zero, ref))
        net.multiplier = 1.0
        after_c = denoising_loss(adapter, _with_cond(adapter, base_c, concept[1]))
        after_k = denoising_loss(adapter, _with_cond(adapter, base_k, control[1]))
    finally:
        net.detach()
    return QualityReport(before[0], after_c, before[1], after_k, exact)


@torch.no_grad()
def _with_cond(adapter: Any, inputs: list[tuple[torch.Tensor, ...]], captions: list[str]) -> list[tuple[torch.Tensor, ...]]:
    cond = adapter.encode_text(list(captions))
    return [(noisy, t, noise, latents, cond) for noisy, t, noise, latents, _ in inputs]


def held_out_sets(n: int = 8, seed: int = 1001) -> tuple[tuple[torch.Tensor, list[str]], tuple[torch.Tensor, list[str]]]:
    """Held-out images of the synthetic target concept and of the control concept (never trained)."""
    from lora_trainer import synthetic

    concept = synthetic.concept_set(synthetic.TARGET_CONCEPT, n, seed=seed)
    control = synthetic.concept_set(synthetic.CONTROL_CONCEPT, n, seed=seed)
    return ((synthetic.to_tensor([s.image for s in concept]), [s.caption for s in concept]),
            (synthetic.to_tensor([s.image for s in control]), [s.caption for s in control]))
