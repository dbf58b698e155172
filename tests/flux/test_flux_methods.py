"""The training methods on FLUX.1 and Chroma, end to end through `train`: LoHa / LoKr / DoRA files that
Forge's own loader takes whole, continuing from them, a stopped LoHa run resuming bit-exactly; the
validation loss (fixed noise and timesteps: the same series for the same seed, and after a resume) and
the EMA of the weights."""

from __future__ import annotations

import shutil

import pytest
import torch
from flux_helpers import tiny_run
from safetensors.torch import load_file

from lora_trainer.config import load_config
from lora_trainer.errors import ConfigError
from lora_trainer.tasks import plan
from lora_trainer.train.image import train
from tests.helpers.recorded_run import recorded_train


def _run(raw: dict, stop_at: int | None = None):
    return recorded_train(load_config(raw), stop_at=stop_at)


def _val_losses(events) -> dict[int, float]:
    return {e.data["step"]: e.data["val_loss"] for e in events if e.type == "progress" and "val_loss" in e.data}


# ---- LoHa / LoKr / DoRA ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flux", "chroma"])
@pytest.mark.parametrize("network_type", ["loha", "lokr", "dora"])
def test_each_type_trains_and_forge_takes_every_key(kind, network_type, data_dir, tmp_path):
    forge_code = pytest.importorskip("forge_code")
    if not forge_code.available():
        pytest.skip("no Forge mirror to run Forge's code from")
    pytest.importorskip("einops")
    from test_flux_lora import _forge_model, _KModel

    from lora_trainer.lora.metadata_flux import load_flux_lora
    from lora_trainer.models.flux_tiny import build_tiny_flux_parts

    result, _ = _run(tiny_run(data_dir, str(tmp_path / "a"), kind, network_type=network_type, output_name="m"))
    sd = load_file(result.output_path)
    assert all(k.startswith("lora_unet_") for k in sd)
    assert {"lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_1_linear1"} <= \
        {k.split(".")[0] for k in sd}  # the fused modules, trained whole
    _, meta = load_flux_lora(result.output_path)
    assert meta["ss_network_module"] == "lycoris.kohya"
    with forge_code.forge_modules(str(tmp_path / "forge")) as fm:
        model, unet_config, repo = _forge_model(fm, build_tiny_flux_parts(kind))
        patches, rest = fm.patcher.load_lora(sd, fm.patcher.model_lora_keys_unet(_KModel(model, unet_config, repo), {}))
    assert rest == {} and patches
    assert {p[0] for p in patches.values()} == {"lora" if network_type == "dora" else network_type}
    # continuing from the file (its type read from its tensors): every module found, nothing left over; the
    # dry run plans that type too
    cont = tiny_run(data_dir, str(tmp_path / "b"), kind, network_weights=result.output_path, max_train_steps=1)
    dry, _ = plan(load_config(cont))
    assert dry.network[0].startswith(f"network: {network_type}"), dry.network
    again, events = _run(cont)
    logs = " ".join(str(e.data.get("message", "")) for e in events)
    assert "0 missing" in logs and "0 ignored" in logs, logs


def test_a_stopped_loha_run_resumes_to_the_same_file(data_dir, tmp_path):
    common = dict(network_type="loha", max_train_steps=4, batch_size=1, save_steps=2, output_name="r")
    full, _ = _run(tiny_run(data_dir, str(tmp_path / "full"), **common))
    part, _ = _run(tiny_run(data_dir, str(tmp_path / "part"), **common), stop_at=2)
    assert part.stopped and part.steps == 2
    shutil.copytree(tmp_path / "part", tmp_path / "resumed")
    resumed, _ = _run(tiny_run(data_dir, str(tmp_path / "resumed"), resume_from_checkpoint="latest", **common))
    a, b = load_file(full.output_path), load_file(resumed.output_path)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


def test_the_peft_layout_refuses_lycoris_types_in_one_line(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="lora_layout.*plain LoRA only.*loha"):
        load_config(tiny_run(data_dir, str(tmp_path), network_type="loha", lora_layout="peft"))


# ---- validation loss and EMA ------------------------------------------------------------------------
VAL = dict(validation_split=0.25, validation_every_n_steps=1, ema_decay=0.8, save_ema=True, save_state=True,
           save_steps=2, max_train_steps=4, batch_size=1, output_name="v")


@pytest.mark.parametrize("kind", ["flux", "chroma"])
def test_validation_loss_repeats_and_survives_a_resume_with_ema(kind, data_dir, tmp_path):
    full, full_events = _run(tiny_run(data_dir, str(tmp_path / "full"), kind, **VAL))
    again, again_events = _run(tiny_run(data_dir, str(tmp_path / "again"), kind, **VAL))
    series = _val_losses(full_events)
    assert sorted(series) == [1, 2, 3, 4] and all(v > 0 for v in series.values())
    assert series == _val_losses(again_events)  # fixed noise and timesteps: the same numbers
    assert len(set(series.values())) > 1  # it follows the weights
    part, part_events = _run(tiny_run(data_dir, str(tmp_path / "part"), kind, **VAL), stop_at=2)
    shutil.copytree(tmp_path / "part", tmp_path / "resumed")
    resumed, resumed_events = _run(tiny_run(data_dir, str(tmp_path / "resumed"), kind, resume_from_checkpoint="latest",
                                        **VAL))
    assert _val_losses(part_events) == {1: series[1], 2: series[2]}
    assert _val_losses(resumed_events) == {3: series[3], 4: series[4]}
    # the EMA weights are the output (save_ema), the same after the resume, and not the last weights
    a, b = load_file(full.output_path), load_file(resumed.output_path)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    plain, _ = _run(tiny_run(data_dir, str(tmp_path / "plain"), kind, **{**VAL, "save_ema": False}))
    c = load_file(plain.output_path)
    assert any(not torch.equal(a[k], c[k]) for k in a if not k.endswith(".alpha"))


# ---- Chroma's timesteps -------------------------------------------------------------------------------
def test_chroma_trains_on_logit_normal_timesteps_without_a_shift_by_default(tiny_chroma, tiny_flux):
    """kohya's Chroma recipe (`--timestep_sampling sigmoid`, docs/flux_train_network.md): logit-normal σ, no
    shift, whatever the resolution; FLUX.1-dev shifts by resolution (its scheduler's dynamic shifting)."""
    from lora_trainer.models.flux_adapter import FluxAdapter

    obj = FluxAdapter(tiny_chroma).objective()
    assert (obj.timestep_sampling, obj.by_resolution, obj.mu) == ("sigmoid", False, None)
    assert FluxAdapter(tiny_flux).objective().by_resolution
    sigmas = torch.cat([obj.noised(torch.zeros(256, 16, 8, 8), torch.Generator().manual_seed(i)).timesteps / 1000
                        for i in range(4)])
    assert abs(float(sigmas.median()) - 0.5) < 0.05  # logit-normal around 0.5: no shift toward noise


@pytest.mark.parametrize("network_type", ["lora", "lokr"])
def test_a_handed_over_adapter_and_the_evaluator_follow_the_network_type(network_type, data_dir, tmp_path):
    """The demo and the hosts hand `train` an adapter built without the run's options: the fused modules are
    still trained whole for LoKr; the evaluator rebuilds the network from the file's type, every tensor equal."""
    from lora_trainer.lora.flux_format import fuse_flux_state_dict
    from lora_trainer.models.flux_adapter import FluxAdapter
    from lora_trainer.models.flux_tiny import build_tiny_flux_parts
    from lora_trainer.train.evaluate import load_network

    adapter = FluxAdapter(build_tiny_flux_parts("flux"))
    result = train(load_config(tiny_run(data_dir, str(tmp_path), network_type=network_type, output_name="h")),
                   adapter=adapter)
    sd = load_file(result.output_path)
    assert ("lora_unet_double_blocks_0_img_attn_qkv.lokr_w1" in sd) == (network_type == "lokr")
    again = fuse_flux_state_dict(load_network(adapter, result.output_path).kohya_state_dict(torch.float32),
                                 chroma=False)
    assert again.keys() == sd.keys() and all(torch.equal(again[k], sd[k]) for k in sd)


def test_fused_dora_with_block_swap_and_fp8_trains_like_the_plain_path(data_dir, tmp_path):
    """DoRA reads the fused base weight: through the swapped blocks' device copies, and upcast from fp8."""
    def losses(**extra) -> list[float]:
        _, events = _run(tiny_run(data_dir, str(tmp_path / "_".join(map(str, extra.values()))), network_type="dora",
                              **extra))
        return [e.data["loss"] for e in events if e.type == "progress"]

    plain = losses()
    swap = losses(blocks_to_swap=2, gradient_checkpointing=True)
    fp8 = losses(fp8_base=True, blocks_to_swap=1)
    assert len(plain) == len(swap) == len(fp8) == 2
    torch.testing.assert_close(torch.tensor(swap), torch.tensor(plain), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(fp8), torch.tensor(plain), rtol=5e-3, atol=0)
    assert fp8 != plain
