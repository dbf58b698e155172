"""FLUX.1 / Chroma LoRA training end to end: the CLI trains the built-in tiny models, the files load in
diffusers with every trained module and equal deltas, a stopped run resumes bit-exactly, fp8 storage and
block swap train like the plain path, and wrong inputs stop in one line before the model loads."""

from __future__ import annotations

import shutil

import pytest
import torch
import yaml
from flux_helpers import tiny_run
from safetensors.torch import load_file, save_file

from lora_trainer.cli import main
from lora_trainer.config import load_config
from lora_trainer.events import Emitter, StopFlag
from lora_trainer.train.image import train


def _cli_train(tmp_path, raw: dict, *args: str) -> int:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return main(["train", "--config", str(path), *args])


def _losses(raw: dict) -> list[float]:
    losses: list[float] = []
    train(load_config(raw), emit=Emitter([lambda e: losses.append(e.data["loss"]) if e.type == "progress" else None]))
    return losses


# ---- the CLI, and the files in diffusers -------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flux", "chroma"])
def test_cli_trains_and_the_file_loads_in_diffusers_with_equal_deltas(kind, data_dir, tmp_path, capsys):
    """diffusers' kohya converter hard-codes the real width for single-block `linear1` (see test_flux_lora),
    so this run trains the double blocks (and CLIP-L for FLUX.1); every module must arrive in diffusers."""
    from lora_trainer.lora.discovery_flux import flux_clip_targets, flux_transformer_targets
    from lora_trainer.lora.metadata_flux import load_flux_lora
    from lora_trainer.lora.network import LoRANetwork
    from lora_trainer.models.flux_tiny import build_tiny_flux_parts, make_pipeline

    chroma = kind == "chroma"
    out = tmp_path / "run"
    raw = tiny_run(data_dir, str(out), kind, flux_single_blocks="none", train_text_encoder=not chroma,
               sample_prompts=["zqx"], sample_steps=2, sample_every_n_steps=2)
    assert _cli_train(tmp_path, raw) == 0
    assert "<lora:run:0.8>" in capsys.readouterr().err
    path = out / "run.safetensors"
    assert (out / "run.json").exists() and list((out / "samples").glob("*.png"))
    file_sd = load_file(str(path))
    assert any(k.endswith("_attn_qkv.lora_up.weight") for k in file_sd)  # q/k/v written fused
    assert chroma or any(k.startswith("lora_te1_") for k in file_sd)
    run_sd, meta = load_flux_lora(str(path))
    assert meta["modelspec.architecture"] == ("chroma/lora" if chroma else "flux-1-dev/lora")

    parts = build_tiny_flux_parts(kind)
    targets = flux_transformer_targets(parts["transformer"], chroma=chroma, single_blocks="none")
    if not chroma:
        targets += flux_clip_targets(parts["text_encoder"])
    net = LoRANetwork(targets, rank=4, alpha=2.0)
    report = net.load_kohya_state_dict(run_sd)
    assert not report.missing and not report.unexpected
    want = net.deltas(torch.float64)
    assert any(d.abs().max() > 0 for d in want.values())

    from peft.tuners.tuners_utils import BaseTunerLayer

    before = {t.name: t.module.weight.detach().clone() for t in targets}
    pipe = make_pipeline(parts)
    pipe.load_lora_weights(str(out), weight_name="run.safetensors", adapter_name="ours")
    models = [parts["transformer"]] + ([] if chroma else [parts["text_encoder"]])
    assert sum(isinstance(m, BaseTunerLayer) for mod in models for m in mod.modules()) == len(targets)
    pipe.fuse_lora(components=["transformer"] + ([] if chroma else ["text_encoder"]))
    for t in targets:
        got = t.module.weight.detach().double() - before[t.name].double()
        torch.testing.assert_close(got, want[t.name], rtol=1e-5, atol=1e-6, msg=t.name)


def test_all_blocks_round_trip_through_the_fused_file(data_dir, tmp_path):
    """Every block (single-block linear1 = q, k, v and the MLP input, fused) reads back exactly."""
    result = train(load_config(tiny_run(data_dir, str(tmp_path / "all"), output_name="all")))
    from lora_trainer.lora.metadata_flux import load_flux_lora

    sd = load_file(result.output_path)
    assert any("single_blocks_1_linear1" in k for k in sd) and any("double_blocks_1_img_mod_lin" in k for k in sd)
    state = load_file(str(tmp_path / "all" / "all-000002-state" / "lora.safetensors"))
    split, _ = load_flux_lora(result.output_path)
    assert split.keys() == state.keys()
    for k in state:
        if not k.endswith(".alpha"):
            torch.testing.assert_close(split[k], state[k], rtol=0, atol=0, msg=k)


def test_dry_run_shows_the_family_and_memory_per_component(data_dir, tmp_path, capsys):
    raw = tiny_run(data_dir, str(tmp_path / "dry"), fp8_base=True, blocks_to_swap=16, mixed_precision="bf16",
               lora_rank=16)
    assert _cli_train(tmp_path, raw, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "model: flux-dev" in out and "transformer 6.4" in out  # kohya: fp8 + 16 blocks swapped fits 12 GB
    for card in ("8 GB", "12 GB", "16 GB", "24 GB"):
        assert f"  {card}: fp8_base: True" in out
    assert not (tmp_path / "dry").exists()


def test_peft_layout_file_loads_in_diffusers_and_continues_exactly(data_dir, tmp_path):
    """lora_layout: peft writes diffusers' own keys (alpha folded in); network_weights reads them back to the
    same deltas, and diffusers loads every module."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from lora_trainer.lora.discovery_flux import flux_transformer_targets
    from lora_trainer.lora.metadata_flux import load_flux_lora
    from lora_trainer.lora.network import LoRANetwork
    from lora_trainer.models.flux_tiny import build_tiny_flux_parts, make_pipeline

    result = train(load_config(tiny_run(data_dir, str(tmp_path / "p"), lora_layout="peft", output_name="p")))
    file_sd = load_file(result.output_path)
    assert file_sd and all(k.startswith("transformer.") for k in file_sd)
    state = load_file(str(tmp_path / "p" / "p-000002-state" / "lora.safetensors"))
    parts = build_tiny_flux_parts("flux")
    targets = flux_transformer_targets(parts["transformer"], chroma=False)
    trained, cont = LoRANetwork(targets, rank=4, alpha=2.0), LoRANetwork(targets, rank=4, alpha=2.0)
    trained.load_kohya_state_dict(state)
    report = cont.load_kohya_state_dict(load_flux_lora(result.output_path)[0])
    assert not report.missing and not report.unexpected
    want, got = trained.deltas(torch.float64), cont.deltas(torch.float64)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-9, msg=name)
    make_pipeline(parts).load_lora_weights(str(tmp_path / "p"), weight_name="p.safetensors", adapter_name="ours")
    assert sum(isinstance(m, BaseTunerLayer) for m in parts["transformer"].modules()) == len(targets)
    again = train(load_config(tiny_run(data_dir, str(tmp_path / "c"), network_weights=result.output_path,
                                   max_train_steps=1)))
    assert again.steps == 1


# ---- resume ------------------------------------------------------------------------------------------
def test_a_stopped_flux_run_resumes_to_the_same_weights(data_dir, tmp_path):
    common = dict(max_train_steps=4, batch_size=1, train_text_encoder=True, text_encoder_lr=5e-3, save_steps=2,
                  lr_scheduler="cosine", output_name="r")
    full = train(load_config(tiny_run(data_dir, str(tmp_path / "full"), **common)))
    stop = StopFlag()

    def stop_at_2(event):
        if event.type == "progress" and event.data["step"] == 2:
            stop.request("test stop")

    part = train(load_config(tiny_run(data_dir, str(tmp_path / "part"), **common)), emit=Emitter([stop_at_2]), stop=stop)
    assert part.stopped and part.steps == 2
    shutil.copytree(tmp_path / "part", tmp_path / "resumed")
    resumed = train(load_config(tiny_run(data_dir, str(tmp_path / "resumed"), resume_from_checkpoint="latest", **common)))
    assert resumed.steps == 4
    a, b = load_file(full.output_path), load_file(resumed.output_path)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# ---- memory paths ------------------------------------------------------------------------------------
def test_fp8_base_and_block_swap_train_like_the_plain_path(data_dir, tmp_path):
    plain = _losses(tiny_run(data_dir, str(tmp_path / "plain")))
    swap = _losses(tiny_run(data_dir, str(tmp_path / "swap"), blocks_to_swap=1, gradient_checkpointing=True))
    fp8 = _losses(tiny_run(data_dir, str(tmp_path / "fp8"), fp8_base=True))
    assert len(plain) == len(swap) == len(fp8) == 2
    torch.testing.assert_close(torch.tensor(swap), torch.tensor(plain), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(fp8), torch.tensor(plain), rtol=5e-3, atol=0)  # fp8 rounding only
    assert fp8 != plain  # the fp8 path really ran


# ---- bad input ---------------------------------------------------------------------------------------
def _one_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_a_lora_of_the_other_family_is_refused_in_one_line(data_dir, tmp_path, capsys):
    sd_lora = tmp_path / "sd.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}, str(sd_lora))
    flux_lora = tmp_path / "flux.safetensors"
    save_file({"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.zeros(4, 64),
               "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.zeros(64, 4)}, str(flux_lora))
    assert _cli_train(tmp_path, tiny_run(data_dir, str(tmp_path / "a"), network_weights=str(sd_lora))) == 2
    _one_error(capsys, "Stable Diffusion LoRA", "FLUX.1/Chroma")
    raw = tiny_run(data_dir, str(tmp_path / "b"), network_weights=str(flux_lora))
    raw["base_model"] = "builtin:tiny-sd1"
    assert _cli_train(tmp_path, raw) == 2
    _one_error(capsys, "FLUX.1/Chroma LoRA", "Stable Diffusion")


def test_a_transformer_without_its_text_encoders_is_named_in_one_line(tiny_flux, data_dir, tmp_path, capsys):
    from flux_helpers import write_single_files

    files = write_single_files(tiny_flux, str(tmp_path / "models"))
    raw = tiny_run(data_dir, str(tmp_path / "out"), base_model=files["transformer"], vae_path=files["vae"])
    assert _cli_train(tmp_path, raw) == 2
    _one_error(capsys, "clip_l_path", "t5xxl_path")
    assert not (tmp_path / "out" / "out.safetensors").exists()


@pytest.mark.parametrize("source", ["single files", "diffusers folder"])
def test_trains_from_the_files_users_have(source, tiny_flux, data_dir, tmp_path):
    """base_model as Forge / ComfyUI users hold it (transformer + ae + clip_l + t5xxl files), or a diffusers
    folder: the same model as the built-in, so the same first-step loss."""
    from flux_helpers import write_single_files

    from lora_trainer.models.flux_tiny import save_tiny_flux

    if source == "single files":
        files = write_single_files(tiny_flux, str(tmp_path / "models"))
        extra = dict(base_model=files["transformer"], vae_path=files["vae"], clip_l_path=files["clip_l"],
                     t5xxl_path=files["t5"])
    else:
        extra = dict(base_model=save_tiny_flux(str(tmp_path / "folder")))
    builtin = _losses(tiny_run(data_dir, str(tmp_path / "a"), max_train_steps=1))
    loaded = _losses(tiny_run(data_dir, str(tmp_path / "b"), max_train_steps=1, **extra))
    torch.testing.assert_close(torch.tensor(loaded), torch.tensor(builtin), rtol=1e-5, atol=1e-6)


def test_flux_only_settings_are_refused_for_chroma_and_sd(data_dir, tmp_path, capsys):
    assert _cli_train(tmp_path, tiny_run(data_dir, str(tmp_path / "c"), "chroma", guidance_scale_train=3.5)) == 2
    _one_error(capsys, "guidance_scale_train", "FLUX.1-dev")
    assert _cli_train(tmp_path, tiny_run(data_dir, str(tmp_path / "b"), flux_double_blocks="first five")) == 2
    _one_error(capsys, "flux_double_blocks", "0-9,12")
    raw = tiny_run(data_dir, str(tmp_path / "s"), fp8_base=True, model_type="sd1")
    raw["base_model"] = "builtin:tiny-sd1"
    assert _cli_train(tmp_path, raw) == 2
    _one_error(capsys, "fp8_base")


def test_samples_are_the_family_sampler_with_fixed_seeds(tiny_flux):
    import numpy as np

    from lora_trainer.models import flux_sampler
    from lora_trainer.models.flux_adapter import FluxAdapter

    ad = FluxAdapter(tiny_flux)
    a = ad.generate("zqx red circle", seed=5, steps=3, width=64, height=64, guidance_scale=3.5)
    b = ad.generate("zqx red circle", seed=5, steps=3, width=64, height=64, guidance_scale=3.5)
    c = ad.generate("zqx red circle", seed=6, steps=3, width=64, height=64, guidance_scale=3.5)
    ref = flux_sampler.generate(tiny_flux, "zqx red circle", seed=5, steps=3, width=64, height=64,
                                guidance_scale=3.5, max_sequence_length=ad.max_sequence_length)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(a), np.asarray(ref))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_place_never_puts_the_swapped_blocks_or_bf16_blocks_on_the_device():
    """`place` (how a run moves the model) stores fp8 and picks the swapped blocks in CPU memory first, then
    moves only the rest: here "meta" stands for the GPU, so any tensor that moved shows it."""
    from lora_trainer.models.flux_adapter import FluxAdapter, FluxOptions
    from lora_trainer.models.flux_tiny import build_tiny_flux_parts

    parts = build_tiny_flux_parts("flux")
    ad = FluxAdapter(parts, FluxOptions(fp8_base=True, blocks_to_swap=2)).place("meta", torch.float32)
    tr = parts["transformer"]
    swapped = [*tr.transformer_blocks[1:], *tr.single_transformer_blocks]  # kohya's count: 1 double, 2 single
    assert ad.device.type == "meta" and ad._swap.blocks == swapped
    assert all(p.device.type == "cpu" for b in swapped for p in b.parameters())
    stay = {id(p) for b in swapped for p in b.parameters()}
    assert all(p.is_meta for p in tr.parameters() if id(p) not in stay)
    assert all(p.is_meta for name in ("vae", "text_encoder", "text_encoder_2") for p in parts[name].parameters())
    assert tr.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn  # fp8 before the move


def test_dry_run_refuses_a_missing_part_and_a_lora_of_the_other_family(data_dir, tiny_flux, tmp_path, capsys):
    """What the run would refuse after `loading model`, the dry run refuses first, in one line naming the key:
    a transformer file without t5xxl_path, and a network_weights LoRA made for the other family (both ways)."""
    from flux_helpers import write_single_files

    paths = write_single_files(tiny_flux, str(tmp_path / "m"))
    files = {"base_model": paths["transformer"], "vae_path": paths["vae"], "clip_l_path": paths["clip_l"]}
    assert _cli_train(tmp_path, tiny_run(data_dir, str(tmp_path / "a"), **files), "--dry-run") == 2
    err = capsys.readouterr().err
    assert "also set t5xxl_path" in err and len(err.strip().splitlines()) == 1
    assert _cli_train(tmp_path, tiny_run(data_dir, str(tmp_path / "a"), **files, t5xxl_path=paths["t5"]),
                      "--dry-run") == 0
    capsys.readouterr()
    z = torch.zeros(4, 8)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": z}, str(tmp_path / "sd.safetensors"))
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": z}, str(tmp_path / "fx.safetensors"))
    raw = tiny_run(data_dir, str(tmp_path / "b"), network_weights=str(tmp_path / "sd.safetensors"))
    assert _cli_train(tmp_path, raw, "--dry-run") == 2
    assert "network_weights" in (err := capsys.readouterr().err) and "Stable Diffusion LoRA" in err
    raw = {**raw, "base_model": "builtin:tiny-sd1", "network_weights": str(tmp_path / "fx.safetensors")}
    assert _cli_train(tmp_path, raw, "--dry-run") == 2
    assert "network_weights" in (err := capsys.readouterr().err) and "FLUX.1/Chroma LoRA" in err


def test_dry_run_refuses_what_chroma_cannot_take(data_dir, tmp_path, capsys):
    """A PEFT layout or a guidance input on Chroma: refused by the dry run, as by the loaded model."""
    for extra, key in (({"lora_layout": "peft"}, "lora_layout"), ({"guidance_scale_train": 3.0}, "guidance_scale_train")):
        assert _cli_train(tmp_path, tiny_run(data_dir, str(tmp_path / "c"), kind="chroma", **extra), "--dry-run") == 2
        assert f"config '{key}'" in capsys.readouterr().err
