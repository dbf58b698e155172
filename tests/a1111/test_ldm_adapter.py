"""The WebUI adapter trains the host's own ldm LatentDiffusion in place, with the real engine."""

from __future__ import annotations

import os

import pytest
import torch
from a1111_names import find_module, layer_mapping
from safetensors.torch import load_file

from lora_trainer.config import load_config
from lora_trainer.events import StopFlag
from lora_trainer.hosts.guard import state_dict_hash
from lora_trainer.models.webui_ldm import WebUILdmAdapter
from lora_trainer.train import train

KINDS = {"lora_down.weight", "lora_up.weight", "alpha"}


def make_cfg(dataset, out, **kw):
    raw = dict(train_data_dir=dataset, output_dir=str(out), output_name="tinylora", resolution=64,
               enable_bucket=False, batch_size=2, max_train_steps=30, learning_rate=3e-3, lora_rank=4,
               lora_alpha=4, seed=7, save_precision="fp32", cache_latents=True, save_state=False)
    raw.update(kw)
    return load_config(raw, require=("train_data_dir",))


def heldout_loss(adapter, latents, cond, pred_type):
    from lora_trainer.models.ddpm import NoiseSchedule

    sched = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    total = 0.0
    with torch.no_grad():
        for t in (100, 300, 500, 700, 900):
            noise = torch.randn(latents.shape, generator=g)
            ts = torch.full((latents.shape[0],), t)
            pred = adapter.predict(sched.add_noise(latents, noise, ts), ts, cond).double()
            total += float(((pred - sched.target(pred_type, latents, noise, ts).double()) ** 2).mean())
    return total / 5


def attach_file(adapter, path):
    from lora_trainer.lora.network import LoRANetwork

    sd = load_file(path)
    net = LoRANetwork(adapter.lora_targets(unet=True, text_encoder=True, conv=False), rank=4, alpha=4)
    report = net.load_kohya_state_dict(sd)
    assert not getattr(report, "missing", None) and not getattr(report, "unexpected", None), report
    return net.attach()


def check_keys(model, path, expect_te: bool):
    sd = load_file(path)
    mapping = layer_mapping(model)
    bases = {}
    for key in sd:
        base, _, kind = key.partition(".")
        assert kind in KINDS, f"stray key {key}"
        bases.setdefault(base, set()).add(kind)
    missing = {b: None for b in bases if find_module(mapping, b) is None}
    assert not missing, f"A1111 would drop {len(missing)} keys, e.g. {sorted(missing)[:5]}"
    assert all(k == KINDS for k in bases.values()), "every module needs down, up and alpha"
    unet = [b for b in bases if b.startswith("lora_unet_")]
    te = [b for b in bases if b.startswith("lora_te_")]
    assert unet and all(b.startswith(("lora_unet_down_blocks", "lora_unet_mid_block", "lora_unet_up_blocks"))
                        for b in unet), "SD1/SD2 UNet keys must use diffusers-style names"
    assert bool(te) == expect_te
    # lora_up starts at zero: a module whose up is still zero never got a gradient (e.g. an open_clip
    # out_proj, which nn.MultiheadAttention reads functionally instead of calling)
    # (at 64 px the middle block is 1x1: self-attention over one token has no gradient for q and k)
    one_token = ("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_q",
                 "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_k")
    untrained = sorted(b for b in bases if not sd[f"{b}.lora_up.weight"].abs().sum() and b not in one_token)
    assert not untrained, f"{len(untrained)} modules never trained, e.g. {untrained[:3]}"
    return bases


def run_case(model, services, dataset, tmp_path, pred_type):
    adapter = WebUILdmAdapter(model, services, verify_hash=True)
    assert adapter.info.prediction_type == pred_type
    hash0 = state_dict_hash(model)
    forwards0 = sum("forward" in m.__dict__ for m in model.modules())
    # held-out loss of the base on the training images
    from lora_trainer.data import TrainDataset, scan_dataset
    cfg = make_cfg(dataset, tmp_path / "out")
    index = scan_dataset(cfg)
    pixels = TrainDataset(cfg, index).load_batch(list(range(4)), 0)["pixels"]
    latents = adapter.encode_images(pixels)
    cond = adapter.encode_text(["a photo of sks circle"] * 4)
    base_loss = heldout_loss(adapter, latents, cond, pred_type)

    events = []
    result = train(cfg, adapter=adapter, emit=events.append, stop=StopFlag())
    assert result.output_path and os.path.isfile(result.output_path)
    assert state_dict_hash(model) == hash0, "training changed the host's weights"
    assert adapter.verify() == []
    assert sum("forward" in m.__dict__ for m in model.modules()) == forwards0
    calls = services.extra["calls"]
    assert calls["undo"] == 1 and calls["apply"] == 1 and calls["unmerge"] == 1

    net = attach_file(adapter, result.output_path)
    try:
        lora_loss = heldout_loss(adapter, latents, cond, pred_type)
    finally:
        net.detach()
    assert lora_loss < base_loss * 0.9, (base_loss, lora_loss)
    assert state_dict_hash(model) == hash0
    return adapter, result, base_loss, lora_loss


def test_sd1_trains_in_place_and_names_match_a1111(tiny_sd1, services_factory, dataset, tmp_path):
    adapter, result, base, after = run_case(tiny_sd1, services_factory(tiny_sd1), dataset, tmp_path, "epsilon")
    bases = check_keys(tiny_sd1, result.output_path, expect_te=True)
    n_te = sum(b.startswith("lora_te_") for b in bases)
    assert n_te == 2 * 6  # 2 tiny CLIP layers x q/k/v/out/fc1/fc2
    print(f"sd1: held-out loss {base:.4f} -> {after:.4f}, {len(bases)} modules")


def test_sd2_v_open_clip_fused_qkv(tiny_sd2v, services_factory, dataset, tmp_path):
    adapter, result, base, after = run_case(tiny_sd2v, services_factory(tiny_sd2v), dataset, tmp_path,
                                            "v_prediction")
    assert adapter.arch == "sd2"
    bases = check_keys(tiny_sd2v, result.output_path, expect_te=True)
    # 3 open_clip blocks, penultimate layer: the last block never runs, so 2 layers get LoRAs
    te = sorted(b for b in bases if b.startswith("lora_te_"))
    assert len(te) == 2 * 6 and "lora_te_text_model_encoder_layers_0_self_attn_k_proj" in te
    assert not any("_layers_2_" in b for b in te)
    print(f"sd2-v: held-out loss {base:.4f} -> {after:.4f}, {len(bases)} modules")


class Boom(torch.cuda.OutOfMemoryError if hasattr(torch.cuda, "OutOfMemoryError") else RuntimeError):
    pass


@pytest.mark.parametrize("how", ["stop", "oom", "error_in_text_encoder"])
def test_stop_and_errors_restore_the_model(tiny_sd1, services_factory, dataset, tmp_path, how):
    services = services_factory(tiny_sd1)
    adapter = WebUILdmAdapter(tiny_sd1, services, verify_hash=True)
    hash0 = state_dict_hash(tiny_sd1)
    grads0 = [p.requires_grad for p in tiny_sd1.parameters()]
    stop = StopFlag()
    cfg = make_cfg(dataset, tmp_path / how, max_train_steps=20, gradient_checkpointing=True, cache_latents=False)
    steps = []

    def sink(ev):
        if ev.type == "progress":
            steps.append(ev.data["step"])
            if how == "stop" and ev.data["step"] >= 3:
                stop.request("test")

    if how == "oom":
        orig = adapter.predict
        def predict(*a, **k):  # noqa: E306
            if len(steps) >= 2:
                raise Boom("CUDA out of memory (injected)")
            return orig(*a, **k)
        adapter.predict = predict
    elif how == "error_in_text_encoder":
        orig_te = adapter.encode_text
        def encode_text(caps):  # noqa: E306
            if len(steps) >= 1:
                raise ValueError("injected failure")
            return orig_te(caps)
        adapter.encode_text = encode_text

    if how == "stop":
        result = train(cfg, adapter=adapter, emit=sink, stop=stop)
        assert result.stopped and result.steps < 20
    else:
        with pytest.raises((Boom, ValueError)):
            train(cfg, adapter=adapter, emit=sink, stop=stop)
    assert state_dict_hash(tiny_sd1) == hash0
    assert adapter.verify() == []
    assert [p.requires_grad for p in tiny_sd1.parameters()] == grads0
    assert not any("forward" in m.__dict__ for m in tiny_sd1.model.diffusion_model.modules())
    calls = services.extra["calls"]
    assert calls["undo"] == calls["apply"] == 1


def test_lowvram_is_refused_before_anything(tiny_sd1, services_factory):
    from lora_trainer.hosts.webui import HostRefused

    with pytest.raises(HostRefused, match="--lowvram"):
        WebUILdmAdapter(tiny_sd1, services_factory(tiny_sd1, cmd={"lowvram": True}))
