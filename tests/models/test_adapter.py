"""DiffusersAdapter on the tiny SD1 and SDXL models: shapes, conditioning, targets, sampling, prepare/restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from models_helpers import state_hash

from lora_trainer.models.base import SizeInfo


def test_sd1_shapes(sd1):
    from lora_trainer import synthetic

    px = synthetic.to_tensor([s.image for s in synthetic.varied_set(8, seed=5)])
    lat = sd1.encode_images(px)
    assert lat.shape == (8, 4, 8, 8)
    assert 0.6 < float(lat.std()) < 1.6  # the tiny VAE's scaling factor makes latents about unit std
    px, lat = px[:2], lat[:2]
    cond = sd1.encode_text(["zqx checker star", "a red circle"])
    assert set(cond) == {"crossattn"} and cond["crossattn"].shape == (2, 77, 32)
    out = sd1.predict(lat, torch.tensor([10, 900]), cond)
    assert out.shape == lat.shape and torch.isfinite(out).all()


def test_sdxl_shapes_and_size_conditioning(sdxl):
    lat = sdxl.encode_images(torch.zeros(1, 3, 64, 64))
    cond = sdxl.encode_text(["zqx"])
    assert cond["crossattn"].shape == (1, 77, 32 + 48) and cond["pooled"].shape == (1, 32)
    ids = sdxl.time_ids([SizeInfo((100, 80), (4, 2), (64, 64))], 1, (8, 8))
    assert ids.tolist() == [[100, 80, 4, 2, 64, 64]]
    assert sdxl.time_ids(None, 1, (8, 8)).tolist() == [[64, 64, 0, 0, 64, 64]]
    t = torch.tensor([500])
    a = sdxl.predict(lat, t, cond, [SizeInfo((64, 64))])
    b = sdxl.predict(lat, t, cond, [SizeInfo((1024, 1024), (0, 0), (64, 64))])
    assert a.shape == lat.shape and not torch.equal(a, b)  # add_time_ids reach the UNet


def test_clip_skip_and_long_captions(sd1):
    cap = ["a large red circle in the center, blue background"]
    base = sd1.encode_text(cap)["crossattn"]
    sd1.clip_skip = 2
    try:
        skipped = sd1.encode_text(cap)["crossattn"]
    finally:
        sd1.clip_skip = 1
    assert not torch.allclose(base, skipped)
    sd1.max_token_length = 150
    try:
        long = sd1.encode_text([" ".join(["red"] * 100), "short"])["crossattn"]
        short = sd1.encode_text(["short"])["crossattn"]
    finally:
        sd1.max_token_length = 75
    assert long.shape == (2, 154, 32) and short.shape == (1, 77, 32)


def test_lora_target_names(sd1, sdxl):
    t1 = sd1.lora_targets(unet=True, text_encoder=True, conv=False)
    names = [t.name for t in t1]
    assert len(names) == len(set(names))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_up_blocks_3_attentions_2_proj_out" in names
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    te = [t for t in t1 if t.group == "text_encoder"]
    assert len(te) == 4 * 6  # 4 tiny layers x (q, k, v, out, fc1, fc2), as SD1's 12 x 6 = 72
    assert len(t1) - len(te) == 16 * 12  # 16 transformer blocks as in SD1: 192 UNet modules
    conv = sd1.lora_targets(unet=True, text_encoder=False, conv=True)
    assert any(t.kind == "conv" for t in conv) and len(conv) > len(t1) - len(te)
    tx = [t.name for t in sdxl.lora_targets(unet=True, text_encoder=True, conv=False)]
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in tx
    assert "lora_unet_output_blocks_0_1_proj_in" in tx
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in tx
    assert "lora_te2_text_model_encoder_layers_3_mlp_fc2" in tx


def test_generate_is_deterministic_and_keeps_modes(sd1):
    sd1.unet.train()
    try:
        a = sd1.generate("a red circle", seed=3, steps=3, width=64, height=64)
        b = sd1.generate("a red circle", seed=3, steps=3, width=64, height=64)
        c = sd1.generate("a red circle", seed=4, steps=3, width=64, height=64)
        assert sd1.unet.training and not sd1.vae.training
    finally:
        sd1.unet.eval()
    assert a.size == (64, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def _flags(adapter):
    return ({n: [(k, p.requires_grad) for k, p in m.named_parameters()] for n, m in adapter.modules().items()},
            {n: [(k, s.training) for k, s in m.named_modules()] for n, m in adapter.modules().items()})


@pytest.mark.parametrize("fail", [False, True])
def test_prepare_restore_leaves_model_unchanged(fail):
    from models_helpers import tiny_raw_adapter

    a = tiny_raw_adapter("sd1")
    a.text_encoders[0].train()
    a.unet.down_blocks[0].requires_grad_(False)  # an odd starting state must come back as it was
    a.vae.decoder.train()
    before = _flags(a)
    hashes = {n: state_hash(m) for n, m in a.modules().items()}
    a.prepare_for_training()
    assert not any(p.requires_grad for m in a.modules().values() for p in m.parameters())
    assert a.unet.training and not a.vae.training
    try:
        lat = a.encode_images(torch.zeros(1, 3, 64, 64))
        a.predict(lat, torch.tensor([1]), a.encode_text(["x"])).sum()
        if fail:
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    finally:
        a.restore()
    a.restore()  # a second restore is harmless
    assert _flags(a) == before
    assert {n: state_hash(m) for n, m in a.modules().items()} == hashes


def test_metadata(sd1):
    md = sd1.metadata()
    assert md["ss_sd_model_name"] == "tiny-sd1" and md["ss_base_model_version"] == "sd_v1"
    assert md["ss_v2"] == "False" and md["modelspec.prediction_type"] == "epsilon"


def test_gradient_checkpointing_trains_lora_through_both_text_encoders(sdxl):
    from lora_trainer.lora.network import LoRANetwork

    sdxl.prepare_for_training()
    sdxl.set_gradient_checkpointing(True)
    net = LoRANetwork(sdxl.lora_targets(unet=True, text_encoder=True, conv=False), 4, 4).attach()
    try:
        cond = sdxl.encode_text(["a red circle", "zqx"])
        sdxl.predict(torch.randn(2, 4, 8, 8), torch.tensor([1, 500]), cond).square().mean().backward()
        got = {"unet": 0, "te1": 0, "te2": 0}
        for n, p in net.named_parameters():
            if "lora_up" in n and p.grad is not None and p.grad.abs().sum() > 0:
                got[n.split("_")[1]] += 1
        assert sdxl.unet.is_gradient_checkpointing
    finally:
        sdxl.set_gradient_checkpointing(False)
        net.detach()
        sdxl.restore()
    # TE1's last layer feeds nothing (SDXL uses its penultimate layer): 3 of 4 layers learn
    assert got == {"unet": 192, "te1": 18, "te2": 24}
    assert not sdxl.unet.is_gradient_checkpointing
