"""A new model family is one adapter plus one objective: the same engine trains the tiny UNet with
the flow-matching objective when its adapter says so, and samples with the family's Euler sampler."""

from __future__ import annotations

import torch
from safetensors.torch import load_file
from train_helpers import make_config

from lora_trainer.events import StopFlag
from lora_trainer.models.diffusers_sd import DiffusersAdapter
from lora_trainer.models.flow import FlowMatchingObjective, euler_sample, euler_sigmas
from lora_trainer.train.distributed import DistContext
from lora_trainer.train.engine import Engine
from lora_trainer.train.image import ImageLoRATask


class FlowTiny(DiffusersAdapter):
    """The tiny SD1 modules as a flow-matching family (velocity prediction, σ·1000 timesteps)."""

    def objective(self, *, noise_offset: float = 0.0, min_snr_gamma: float | None = None) -> FlowMatchingObjective:
        return FlowMatchingObjective("shift", shift=3.0)

    def generate_latents(self, prompt: str, steps: int = 4) -> torch.Tensor:
        x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
        return euler_sample(lambda xt, t, c: self.predict(xt, t, c), x, self.encode_text(["", prompt]),
                            euler_sigmas(steps, shift=3.0), guidance=2.0)


def _run(adapter, cfg):
    task = ImageLoRATask(cfg, adapter)
    losses: list[float] = []
    result = Engine(task, emit=lambda e: losses.append(e.data["loss"]) if e.type == "progress" else None,
                    stop=StopFlag(), dist=DistContext()).run()
    return task, result, losses


def test_the_engine_trains_a_flow_family_through_the_same_step(tiny_adapter, concept_dir, tmp_path):
    flow = FlowTiny(tiny_adapter.unet, tiny_adapter.vae, tiny_adapter.text_encoders, tiny_adapter.tokenizers,
                    tiny_adapter.info)
    cfg = make_config(concept_dir, str(tmp_path / "flow"), max_train_steps=4, learning_rate=3e-3)
    task, result, flow_losses = _run(flow, cfg)
    assert isinstance(task.objective, FlowMatchingObjective) and result.steps == 4
    assert all(torch.isfinite(torch.tensor(flow_losses)))
    weights = load_file(result.output_path)
    assert any(k.endswith("lora_up.weight") and v.abs().sum() > 0 for k, v in weights.items())
    _, _, ddpm_losses = _run(tiny_adapter, make_config(concept_dir, str(tmp_path / "ddpm"), max_train_steps=4,
                                                       learning_rate=3e-3))
    assert flow_losses != ddpm_losses  # same data, seeds and step: only the objective differs
    latents = flow.generate_latents("zqx")
    assert latents.shape == (1, 4, 8, 8) and torch.isfinite(latents).all()
