"""Weight memory of the real FLUX.1 / Chroma models (exact parameter counts, meta device) and the suggested
settings per card size."""

from __future__ import annotations

import os

import pytest
import torch

from lora_trainer.models.flux_memory import real_sizes, suggest, swap_split, weight_memory


def test_real_parameter_counts():
    dev = real_sizes("flux-dev")
    assert 11.8e9 < dev.transformer < 12.0e9        # "12B" FLUX.1
    assert (dev.n_double, dev.n_single) == (19, 38)
    assert dev.double_block > 2 * dev.single_block * 0.9  # a double block is about two single ones
    assert 4.7e9 < dev.t5 < 5.0e9 and 1.2e8 < dev.clip_l < 1.3e8


def test_real_parameter_counts_chroma():
    chroma = real_sizes("chroma")
    assert 8.8e9 < chroma.transformer < 9.0e9 and chroma.clip_l == 0  # "8.9B" Chroma, T5 only


def test_block_swap_follows_kohya():
    sizes = real_sizes("flux-dev")
    assert swap_split(sizes, 16) == (8, 16) and swap_split(sizes, 35) == (17, 36)
    with pytest.raises(ValueError, match="0-35"):
        swap_split(sizes, 36)


def test_fp8_and_swap_shrink_the_resident_weights():
    bf16 = weight_memory("flux-dev")
    fp8 = weight_memory("flux-dev", fp8_base=True)
    swap = weight_memory("flux-dev", fp8_base=True, blocks_to_swap=16, optimizer="adamw8bit")
    assert 22 < bf16["transformer_gb"] < 22.5 and fp8["transformer_gb"] == pytest.approx(bf16["transformer_gb"] / 2)
    assert swap["training_weights_gb"] < 10 < fp8["training_weights_gb"] < 13
    assert suggest(12)["blocks_to_swap"] == 16 and suggest(24)["blocks_to_swap"] == 0 and suggest(6)["card_gb"] == 8


# ---- the dry run per network type -------------------------------------------------------------------
TYPES = [("lora", {}), ("loha", {}), ("lokr", {}), ("lokr", {"lokr_factor": 4, "lokr_full_rank": True}),
         ("dora", {}), ("loha", {"dora_wd": True})]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    from flux_helpers import write_zqx_dataset

    return write_zqx_dataset(str(tmp_path_factory.mktemp("data")), images=2)


def _cfg(data_dir: str, base: str = "builtin:tiny-flux", **extra):
    from lora_trainer.config import load_config

    return load_config({"base_model": base, "train_data_dir": data_dir, "output_dir": data_dir + "_out",
                        "resolution": 64, "lora_rank": 4, **extra})


@pytest.mark.parametrize("base", ["builtin:tiny-flux", "builtin:tiny-chroma"])
@pytest.mark.parametrize("network_type,extra", TYPES, ids=[f"{t}{'-' + '-'.join(e) if e else ''}" for t, e in TYPES])
def test_the_plan_counts_the_parameters_the_run_trains(base, network_type, extra, data_dir, request):
    """Dry run (no model) vs the network a run builds on the same tiny model: the same count, per type."""
    from lora_trainer.models.flux_adapter import FluxAdapter, FluxOptions
    from lora_trainer.train.image import prepare_plan
    from lora_trainer.train.network_setup import build_network

    cfg = _cfg(data_dir, base, network_type=network_type, **extra)
    plan = prepare_plan(cfg)[2]
    parts = request.getfixturevalue("tiny_chroma" if "chroma" in base else "tiny_flux")
    ad = FluxAdapter(parts, FluxOptions.from_config(cfg))
    train_te = ad.trainable_text_encoder()
    net, _ = build_network(ad, cfg, train_te, lambda *a: None)
    assert plan.trainable_params == sum(p.numel() for p in net.parameters()) > 0
    groups = [p.target.group for p in net.plans.values()]
    want = {"transformer": groups.count("unet"), **({"text_encoder": groups.count("text_encoder")} if train_te else {})}
    assert plan.lora_modules == want


@pytest.mark.parametrize("form", ["single_files", "all_in_one", "folder"])
def test_a_file_model_is_planned_at_its_own_widths(form, data_dir, tiny_flux, tmp_path):
    """The tiny FLUX.1 as files: the dry run reads its widths from the header / config.json (no weights),
    so the count is the trained network's and a LoKr factor is checked against those widths."""
    from flux_helpers import write_single_files

    from lora_trainer.errors import ConfigError
    from lora_trainer.models.flux_adapter import load_flux_adapter
    from lora_trainer.models.flux_tiny import save_tiny_flux
    from lora_trainer.train.image import prepare_plan
    from lora_trainer.train.network_setup import build_network

    if form == "folder":
        model = {"base_model": save_tiny_flux(str(tmp_path / "m"))}
    else:
        paths = write_single_files(tiny_flux, str(tmp_path / "m"),
                                   prefix="model.diffusion_model." if form == "all_in_one" else "")
        model = {"base_model": paths["transformer"], "vae_path": paths["vae"], "clip_l_path": paths["clip_l"],
                 "t5xxl_path": paths["t5"]}
    cfg = _cfg(data_dir, network_type="loha", flux_single_blocks="1", **model)
    plan = prepare_plan(cfg)[2]
    net, _ = build_network(load_flux_adapter(cfg), cfg, True, lambda *a: None)
    assert plan.trainable_params == sum(p.numel() for p in net.parameters())
    with pytest.raises(ConfigError, match=r"lokr_factor.*3 does not divide.*64"):
        prepare_plan(_cfg(data_dir, network_type="lokr", lokr_factor=3, **model))
    assert prepare_plan(_cfg(data_dir, network_type="lokr", lokr_factor=32, **model))[2].trainable_params > 0


def _saved_bytes(parts, spec) -> int:
    """Bytes autograd keeps for one forward + backward of the tiny transformer with `spec`'s network on it."""
    from flux_helpers import transformer_inputs

    from lora_trainer.lora.discovery_flux import flux_transformer_targets
    from lora_trainer.lora.network import LoRANetwork
    from lora_trainer.models.flux_adapter import needs_fused_targets

    tr = parts["transformer"].requires_grad_(False)
    net = None
    if spec is not None:
        targets = flux_transformer_targets(tr, chroma=False, fused=needs_fused_targets(spec.network_type, spec.dora_wd))
        net = LoRANetwork.from_spec(targets, spec)
        net.attach()
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    kw = transformer_inputs(parts)
    kw["hidden_states"].requires_grad_(True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = tr(**kw).sample
        out.sum().backward()
    finally:
        if net is not None:
            net.detach()
    return sum(seen.values())


@pytest.mark.parametrize("network_type,dora_wd", [("loha", False), ("lokr", False), ("dora", False),
                                                  ("loha", True)])
def test_the_full_size_deltas_are_what_autograd_keeps(network_type, dora_wd, tiny_flux, data_dir):
    """LoHa / LoKr / DoRA build each wrapped weight's delta at full size, and autograd keeps copies of it:
    the estimate matches what one step keeps beyond the base model (LoRA's own rank-wide activations on
    top: they are the slack)."""
    from lora_trainer.lora.spec import NetworkSpec
    from lora_trainer.models.flux_memory import delta_values

    base = _saved_bytes(tiny_flux, None)
    lora = _saved_bytes(tiny_flux, NetworkSpec("lora", rank=4)) - base
    measured = _saved_bytes(tiny_flux, NetworkSpec(network_type, rank=4, dora_wd=dora_wd)) - base
    cfg = _cfg(data_dir, train_text_encoder=False)
    estimate = 4 * delta_values(cfg, "flux-dev", network_type, dora_wd)
    assert abs(measured - estimate) <= 0.1 * estimate + 1.5 * lora
    assert delta_values(cfg, "flux-dev", "lora", False) == 0
    checkpointed = _cfg(data_dir, train_text_encoder=False, gradient_checkpointing=True)
    assert 0 < delta_values(checkpointed, "flux-dev", network_type, dora_wd) < estimate / 4 / 2


def _real_dev_folder(root) -> str:
    """A FLUX.1-dev folder as far as the dry run reads one (model_index.json, the transformer's config)."""
    import json

    os.makedirs(os.path.join(root, "transformer"), exist_ok=True)
    with open(os.path.join(root, "model_index.json"), "w", encoding="utf-8") as fh:
        json.dump({"_class_name": "FluxPipeline"}, fh)
    with open(os.path.join(root, "transformer", "config.json"), "w", encoding="utf-8") as fh:
        json.dump({"guidance_embeds": True}, fh)
    return str(root)


def test_the_real_model_plan_counts_its_type_and_its_deltas(data_dir, tmp_path):
    from lora_trainer.tasks import plan
    from lora_trainer.train.network_setup import network_spec

    base = _real_dev_folder(tmp_path / "dev")
    parts = {}
    for network_type in ("lora", "loha", "lokr", "dora"):
        cfg = _cfg(data_dir, base, network_type=network_type, lora_rank=16, mixed_precision="bf16")
        p = plan(cfg)[0]
        parts[network_type] = (p.trainable_params, p.memory_parts_gb)
        assert network_spec(cfg).network_type == network_type
    assert 80e6 < parts["lora"][0] < 95e6  # kohya's rank-16 FLUX.1 LoRA with CLIP-L: ~87M
    assert parts["loha"][0] > 1.5 * parts["lora"][0] and parts["lokr"][0] < parts["lora"][0]
    assert "adapter_deltas_gb" not in parts["lora"][1]
    # LoHa / DoRA keep three full-size fp32 copies of every wrapped weight (~12B values): far beyond a card
    assert parts["loha"][1]["adapter_deltas_gb"] > 100 and parts["dora"][1]["adapter_deltas_gb"] > 100


def test_a_lokr_factor_that_does_not_divide_flux_is_refused_by_the_dry_run(data_dir, tmp_path):
    from lora_trainer.errors import ConfigError
    from lora_trainer.tasks import plan

    base = _real_dev_folder(tmp_path / "dev")
    with pytest.raises(ConfigError, match=r"lokr_factor.*5 does not divide.*3072"):
        plan(_cfg(data_dir, base, network_type="lokr", lokr_factor=5))
    assert plan(_cfg(data_dir, base, network_type="lokr", lokr_factor=16))[0].trainable_params > 0
    with pytest.raises(ConfigError, match=r"lokr_factor.*3 does not divide.*64"):  # the tiny model's widths
        plan(_cfg(data_dir, network_type="lokr", lokr_factor=3))


def test_sd_plans_count_the_deltas_with_the_same_copies(data_dir, tmp_path):
    """SD's rough memory line adds the same full-size delta copies (the module code is shared)."""
    from safetensors.torch import save_file

    from lora_trainer.data.arch_tables import UNET_ATTN
    from lora_trainer.lora.estimate import layer_weights
    from lora_trainer.train.image import prepare_plan

    base = str(tmp_path / "v1-5-pruned.safetensors")  # the dry run reads no weight: model_type says SD1
    save_file({"x": torch.zeros(1)}, base)

    def gib(**extra) -> float:
        cfg = _cfg(data_dir, base, model_type="sd1", train_text_encoder=False, **extra)
        return prepare_plan(cfg)[2].memory_gib

    unet = 4 * layer_weights(UNET_ATTN["sd1"]) / 2**30
    lora, loha = gib(network_type="lora"), gib(network_type="loha")
    assert loha - lora == pytest.approx(3 * unet, abs=0.3)
    assert gib(network_type="lokr") - lora == pytest.approx(unet, abs=0.3)
    assert gib(network_type="loha", gradient_checkpointing=True) < gib(network_type="lora") + unet


def test_the_card_suggestions_add_gradient_checkpointing_when_it_is_off(data_dir):
    """kohya's per-card table assumes gradient checkpointing; without it a LoHa keeps every block's full-size
    delta (over 100 GB on the real FLUX.1-dev), so the plan must not suggest a 12 GB card without it."""
    from lora_trainer.models.flux_memory import flux_plan_memory
    from lora_trainer.train.network_setup import network_spec

    cfg = _cfg(data_dir, network_type="loha")
    parts, cards = flux_plan_memory(cfg, "flux-dev", network_spec(cfg))
    assert parts["adapter_deltas_gb"] > 100 and all(s["gradient_checkpointing"] is True for s in cards.values())
    cfg = _cfg(data_dir, network_type="loha", gradient_checkpointing=True)
    parts, cards = flux_plan_memory(cfg, "flux-dev", network_spec(cfg))
    assert parts["adapter_deltas_gb"] < 5 and not any("gradient_checkpointing" in s for s in cards.values())


def test_too_many_blocks_to_swap_is_one_config_line_in_the_dry_run(data_dir):
    """40 blocks (schema allows 60, the real FLUX.1 35): a ConfigError naming the key, not a traceback."""
    from lora_trainer.errors import ConfigError
    from lora_trainer.models.flux_memory import flux_plan_memory

    with pytest.raises(ConfigError, match=r"'blocks_to_swap'.*0-35, got 40.*19 double and 38 single"):
        flux_plan_memory(_cfg(data_dir, blocks_to_swap=40), "flux-dev")
