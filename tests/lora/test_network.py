"""LoRANetwork: exact detach, multiplier, math of every kind, kohya state dict round trip."""

from __future__ import annotations

import hashlib

import pytest
import torch
from lora_test_models import OpenClipText, randomize_lora, tiny_te, tiny_unet
from torch import nn

from lora_trainer.lora.discovery import open_clip_targets, text_encoder_targets, unet_targets
from lora_trainer.lora.network import LoRANetwork, LoRAWeightsError, infer_rank_alpha
from lora_trainer.lora.target import LoraTarget


def module_fingerprint(m: nn.Module) -> str:
    """Hash of every parameter and buffer: name, dtype, device, shape, requires_grad, bytes."""
    h = hashlib.sha256()
    items = [(f"p:{n}", t) for n, t in m.named_parameters()] + [(f"b:{n}", t) for n, t in m.named_buffers()]
    for name, t in items:
        h.update(f"{name}|{t.dtype}|{t.device}|{tuple(t.shape)}|{t.requires_grad}".encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    h.update(repr(list(m.state_dict().keys())).encode())
    h.update(repr([type(x).__name__ for x in m.modules()]).encode())
    return h.hexdigest()


def unet_inputs(unet, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    ctx = torch.randn(1, 5, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([10]), ctx


def test_attach_detach_leaves_base_bit_identical():
    unet, te, oc = tiny_unet("sd1"), tiny_te(), OpenClipText()
    ids = torch.tensor([[1, 5, 7, 2]])
    x, t, ctx = unet_inputs(unet)
    toks = torch.randn(3, 1, 16)
    fp = [module_fingerprint(m) for m in (unet, te, oc)]
    with torch.no_grad():
        base_u = unet(x, t, ctx).sample
        base_t = te(ids).last_hidden_state
        base_o = oc(toks)
    # a host hook already living on one instance must come back as the very same object
    hooked = next(m for n, m in te.named_modules() if n.endswith("encoder.layers.0.mlp.fc1"))
    host_forward = hooked.forward.__func__.__get__(hooked)
    hooked.forward = host_forward

    targets = unet_targets(unet, "sd1", conv=True) + text_encoder_targets(te) + open_clip_targets(oc, "lora_te2")
    net = LoRANetwork(targets, rank=4, alpha=2, conv_rank=2, conv_alpha=1)
    randomize_lora(net)
    net.attach()
    with torch.no_grad():
        assert not torch.equal(unet(x, t, ctx).sample, base_u)
        assert not torch.equal(te(ids).last_hidden_state, base_t)
        assert not torch.equal(oc(toks), base_o)
    net.detach()

    assert [module_fingerprint(m) for m in (unet, te, oc)] == fp
    for tg in targets:
        if tg.module is hooked:
            assert tg.module.__dict__["forward"] is host_forward
        else:
            assert "forward" not in tg.module.__dict__
            assert tg.module.forward.__func__ is type(tg.module).forward
    with torch.no_grad():
        assert torch.equal(unet(x, t, ctx).sample, base_u)
        assert torch.equal(te(ids).last_hidden_state, base_t)
        assert torch.equal(oc(toks), base_o)
    # the network holds none of the base's tensors
    base_ids = {id(p) for m in (unet, te, oc) for p in m.parameters()}
    assert not base_ids & {id(p) for p in net.parameters()}


def test_multiplier_zero_is_exact_base_output():
    unet = tiny_unet("sd1")
    x, t, ctx = unet_inputs(unet)
    with torch.no_grad():
        base = unet(x, t, ctx).sample
    net = LoRANetwork(unet_targets(unet, "sd1"), rank=4, alpha=4)
    randomize_lora(net)
    net.attach()
    try:
        with torch.no_grad():
            net.multiplier = 0.0
            assert torch.equal(unet(x, t, ctx).sample, base)
            net.multiplier = 1.0
            assert not torch.equal(unet(x, t, ctx).sample, base)
    finally:
        net.detach()


def test_fresh_network_is_a_no_op_and_init_is_kohya():
    lin = nn.Linear(16, 8)
    net = LoRANetwork([LoraTarget("lora_unet_a", lin)], rank=4, alpha=1)
    m = net.loras["lora_unet_a"]
    assert torch.count_nonzero(m.lora_up.weight) == 0
    bound = 1 / 16 ** 0.5  # kaiming_uniform(a=sqrt 5) on fan_in 16
    assert 0 < m.lora_down.weight.abs().max() <= bound
    x = torch.randn(2, 16)
    net.attach()
    assert torch.equal(lin(x), nn.functional.linear(x, lin.weight, lin.bias))
    net.detach()


@pytest.mark.parametrize("mult", [1.0, 0.7])
def test_kinds_match_explicit_weight_merge_float64(mult):
    torch.manual_seed(0)
    d = torch.float64
    lin = nn.Linear(12, 10).to(d)
    c1 = nn.Conv2d(6, 5, 1).to(d)
    c3 = nn.Conv2d(6, 7, 3, stride=2, padding=1).to(d)
    mha = nn.MultiheadAttention(12, 3).to(d)
    targets = [LoraTarget("lin", lin), LoraTarget("c1", c1, "conv1x1"), LoraTarget("c3", c3, "conv"),
               LoraTarget("out", mha.out_proj, "linear", "text_encoder"),  # MHA never calls out_proj.forward
               LoraTarget("qkv", mha, "fused_qkv", "text_encoder", ("q", "k", "v"))]
    net = LoRANetwork(targets, rank=3, alpha=5, conv_rank=2, conv_alpha=3, dtype=d)
    randomize_lora(net, scale=0.5)
    net.multiplier = mult
    deltas = net.deltas(d)
    assert deltas["c3"].shape == c3.weight.shape and deltas["q"].shape == (12, 12)
    # explicit: up @ down * alpha / rank * multiplier
    m = net.loras["lin"]
    assert torch.allclose(deltas["lin"], m.lora_up.weight @ m.lora_down.weight * (5 / 3) * mult)

    x, xi, s = torch.randn(4, 12, dtype=d), torch.randn(2, 6, 9, 9, dtype=d), torch.randn(5, 2, 12, dtype=d)
    net.attach()
    try:
        got = (lin(x), c1(xi), c3(xi), mha(s, s, s)[0])
    finally:
        net.detach()
    F = nn.functional
    want_lin = F.linear(x, lin.weight + deltas["lin"], lin.bias)
    want_c1 = F.conv2d(xi, c1.weight + deltas["c1"], c1.bias)
    want_c3 = F.conv2d(xi, c3.weight + deltas["c3"], c3.bias, stride=2, padding=1)
    merged = nn.MultiheadAttention(12, 3).to(d)
    merged.load_state_dict(mha.state_dict())
    with torch.no_grad():  # A1111's way: vstack the q/k/v deltas onto in_proj_weight
        merged.in_proj_weight += torch.cat([deltas["q"], deltas["k"], deltas["v"]])
        merged.out_proj.weight += deltas["out"]
    want_mha = merged(s, s, s)[0]
    for a, b in zip(got, (want_lin, want_c1, want_c3, want_mha), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_stacked_networks_and_repeated_detach():
    lin = nn.Linear(6, 6)
    x = torch.randn(2, 6)
    base = lin(x)
    a = LoRANetwork([LoraTarget("lin", lin)], rank=2)
    b = LoRANetwork([LoraTarget("lin", lin)], rank=2)
    randomize_lora(a, seed=1)
    randomize_lora(b, seed=2)
    a.attach()
    only_a = lin(x)
    b.attach().attach()  # attach is idempotent
    both = lin(x)
    want = nn.functional.linear(x, lin.weight + a.deltas()["lin"] + b.deltas()["lin"], lin.bias)
    torch.testing.assert_close(both, want)
    b.detach()
    b.detach()
    torch.testing.assert_close(lin(x), only_a)
    a.detach()
    a.detach()
    assert "forward" not in lin.__dict__ and torch.equal(lin(x), base)


def test_mha_out_proj_lora_reaches_the_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2)
    s = torch.randn(3, 1, 8)
    base = mha(s, s, s)[0]
    net = LoRANetwork([LoraTarget("out", mha.out_proj), LoraTarget("qkv", mha, "fused_qkv", names=("q", "k", "v"))],
                      rank=2)
    randomize_lora(net)
    with torch.no_grad():
        for n in "qkv":
            net.loras[n].lora_up.weight.zero_()  # only the out_proj LoRA is non-zero
    net.attach()
    try:
        out = mha(s, s, s)[0]
        out.sum().backward()
    finally:
        net.detach()
    assert not torch.allclose(out, base)
    assert net.loras["out"].lora_up.weight.grad.abs().sum() > 0
    assert "weight" in mha.out_proj._parameters and isinstance(mha.out_proj.weight, nn.Parameter)
    with pytest.raises(ValueError, match="fused_qkv"):
        LoRANetwork([LoraTarget("out", nn.MultiheadAttention(8, 2).out_proj)], rank=2)


def test_merge_into_base_matches_attached_and_unmerge_is_exact():
    torch.manual_seed(0)
    d = torch.float64
    oc = OpenClipText(d=8).to(d)
    conv = nn.Conv2d(3, 4, 3, padding=1).to(d)
    targets = open_clip_targets(oc, "lora_te") + [LoraTarget("c", conv, "conv")]
    net = LoRANetwork(targets, rank=2, conv_rank=2, dtype=d)
    randomize_lora(net)
    net.multiplier = 0.6
    x, xi = torch.randn(4, 1, 8, dtype=d), torch.randn(1, 3, 5, 5, dtype=d)
    fp = module_fingerprint(oc) + module_fingerprint(conv)
    net.attach()
    want = (oc(x), conv(xi))
    with pytest.raises(RuntimeError):
        net.merge_into_base()
    net.detach()
    net.merge_into_base()
    torch.testing.assert_close(oc(x), want[0])
    torch.testing.assert_close(conv(xi), want[1])
    net.unmerge()
    assert module_fingerprint(oc) + module_fingerprint(conv) == fp


def test_conv_targets_skipped_without_conv_rank():
    c3, lin = nn.Conv2d(4, 4, 3, padding=1), nn.Linear(4, 4)
    net = LoRANetwork([LoraTarget("c3", c3, "conv"), LoraTarget("lin", lin)], rank=2)
    assert list(net.loras) == ["lin"] and net.skipped == ["c3"]


def test_fp16_base_keeps_fp32_lora_and_trains():
    lin = nn.Linear(8, 8).half().requires_grad_(False)
    net = LoRANetwork([LoraTarget("lin", lin)], rank=2, alpha=2)
    randomize_lora(net)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    net.attach()
    try:
        y = lin(torch.randn(3, 8).half())
        assert y.dtype == torch.float16
        y.float().sum().backward()
    finally:
        net.detach()
    assert all(p.grad is not None for p in net.parameters())
    assert lin.weight.grad is None and net.names_without_grad() == []


def test_dropout_only_in_training():
    lin = nn.Linear(32, 32)
    net = LoRANetwork([LoraTarget("lin", lin)], rank=8, dropout=0.5)
    randomize_lora(net)
    x = torch.randn(4, 32)
    net.attach()
    try:
        net.eval()
        assert torch.equal(lin(x), lin(x))
        net.train()
        torch.manual_seed(1)
        a = lin(x)
        assert not torch.equal(a, lin(x))
    finally:
        net.detach()


def test_param_groups_by_target_group():
    unet, te = tiny_unet("sd1"), tiny_te()
    net = LoRANetwork(unet_targets(unet, "sd1") + text_encoder_targets(te), rank=2)
    groups = net.param_groups(1e-4, 5e-5)
    assert [(g["name"], g["lr"]) for g in groups] == [("unet", 1e-4), ("text_encoder", 5e-5)]
    assert len(groups[0]["params"]) == 2 * len(net.names("unet")) and len(groups[1]["params"]) == 2 * 12
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    only_unet = net.param_groups(1e-4, 0)
    assert [g["name"] for g in only_unet] == ["unet"]
    assert not any(p.requires_grad for n in net.names("text_encoder") for p in net.loras[n].parameters())


def test_kohya_state_dict_round_trip_and_reports():
    unet, te = tiny_unet("sd1"), tiny_te()
    targets = unet_targets(unet, "sd1", conv=True) + text_encoder_targets(te)
    net = LoRANetwork(targets, rank=4, alpha=2, conv_rank=2, conv_alpha=1)
    randomize_lora(net)
    sd = net.kohya_state_dict(torch.float32)
    assert len(sd) == 3 * len(net.loras)
    for name in net.loras:
        assert sd[f"{name}.alpha"].dim() == 0
    k = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert sd[f"{k}.lora_down.weight"].shape == (2, 32, 3, 3) and sd[f"{k}.lora_up.weight"].shape == (32, 2, 1, 1)
    assert sd[f"{k}.alpha"].item() == 1.0
    assert sd["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].shape == (4, 32)
    assert sd["lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"].item() == 2.0
    assert infer_rank_alpha(sd) == (4, 2.0, 2, 1.0)
    fp16 = net.kohya_state_dict()
    assert {t.dtype for t in fp16.values()} == {torch.float16}

    # a file with another alpha: the loaded module takes the file's alpha
    sd2 = dict(sd)
    sd2[f"{k}.alpha"] = torch.tensor(2.0)
    fresh = LoRANetwork(targets, rank=4, alpha=8, conv_rank=2, conv_alpha=2)
    rep = fresh.load_kohya_state_dict(sd2)
    assert rep.ok and len(rep.loaded) == 2 * len(net.loras)
    want = net.deltas()
    got = fresh.deltas()
    want[k] = want[k] * 2
    for n in want:
        torch.testing.assert_close(got[n], want[n])

    partial = {kk: v for kk, v in sd.items() if not kk.startswith("lora_te")}
    partial["lora_unet_nonexistent.lora_down.weight"] = torch.zeros(4, 4)
    rep = LoRANetwork(targets, rank=4, conv_rank=2).load_kohya_state_dict(partial)
    assert rep.unexpected == ["lora_unet_nonexistent.lora_down.weight"]
    assert len(rep.missing) == 2 * len(text_encoder_targets(te))

    with pytest.raises(LoRAWeightsError, match="lora_rank"):
        LoRANetwork(targets, rank=8, conv_rank=2).load_kohya_state_dict(sd)


def test_missing_alpha_means_scale_one():
    lin = nn.Linear(6, 6)
    net = LoRANetwork([LoraTarget("lin", lin)], rank=3, alpha=1)
    randomize_lora(net)
    sd = {k: v for k, v in net.kohya_state_dict(torch.float32).items() if not k.endswith(".alpha")}
    other = LoRANetwork([LoraTarget("lin", lin)], rank=3, alpha=1)
    other.load_kohya_state_dict(sd)
    assert other.loras["lin"].alpha == 3.0
    assert infer_rank_alpha(sd) == (3, 3.0, 0, None)
    with pytest.raises(LoRAWeightsError):
        infer_rank_alpha({"foo": torch.zeros(1)})


def test_bad_targets_are_refused():
    with pytest.raises(ValueError, match="nn.Linear"):
        LoRANetwork([LoraTarget("x", nn.Conv2d(2, 2, 1), "linear")], rank=2)
    with pytest.raises(ValueError, match="dots"):
        LoRANetwork([LoraTarget("a.b", nn.Linear(2, 2))], rank=2)
    with pytest.raises(ValueError, match="names"):
        LoRANetwork([LoraTarget("a", nn.MultiheadAttention(4, 2), "fused_qkv")], rank=2)
    with pytest.raises(ValueError, match="duplicate"):
        lin = nn.Linear(2, 2)
        LoRANetwork([LoraTarget("a", lin), LoraTarget("a", lin)], rank=2)


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
def test_files_in_the_other_unet_naming_style_load(arch):
    from lora_trainer.lora import naming

    unet = tiny_unet(arch)
    targets = unet_targets(unet, arch, conv=True)
    net = LoRANetwork(targets, rank=2, conv_rank=2)
    randomize_lora(net)
    up = naming.SDXL_UP_BLOCKS_WITH_ATTENTION if arch == "sdxl" else naming.SD_UP_BLOCKS_WITH_ATTENTION
    other = {}  # our name -> the other style's name, computed from the dotted module paths
    for path, mod in unet.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)) and path.startswith(("down_blocks.", "mid_block.", "up_blocks.")):
            diff = naming.sd_unet_kohya_name(path)
            ldm = naming.kohya_name("lora_unet", naming.diffusers_to_ldm_unet_path(path, up))
            ours, theirs = (ldm, diff) if arch == "sdxl" else (diff, ldm)
            other[ours] = theirs
    sd = {}
    for k, v in net.kohya_state_dict(torch.float32).items():
        name, _, suf = k.partition(".")
        sd[f"{other[name]}.{suf}"] = v
    assert not set(sd) & set(net.kohya_state_dict())
    fresh = LoRANetwork(targets, rank=2, conv_rank=2)
    rep = fresh.load_kohya_state_dict(sd)
    assert rep.ok, (rep.missing[:3], rep.unexpected[:3])
    for n, d in net.deltas().items():
        assert torch.equal(fresh.deltas()[n], d)
