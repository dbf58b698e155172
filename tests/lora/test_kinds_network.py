"""Every network type on real tiny models: exact detach, multiplier 0 = base, continuing from a saved
file (type, ranks and layout read back from the tensors), bad input named in one line."""

from __future__ import annotations

import pytest
import torch
from lora_test_models import OpenClipText, tiny_te, tiny_unet
from test_network import module_fingerprint, unet_inputs

from lora_trainer.errors import ConfigError
from lora_trainer.lora.discovery import open_clip_targets, text_encoder_targets, unet_targets
from lora_trainer.lora.file import load_lora_file, save_lora_file
from lora_trainer.lora.infer import spec_from_weights
from lora_trainer.lora.metadata import build_metadata
from lora_trainer.lora.network import LoRANetwork, LoRAWeightsError
from lora_trainer.lora.spec import NetworkSpec

TYPES = ["lora", "locon", "loha", "lokr", "dora"]
PREFIX = {"lora": ".lora_down.weight", "locon": ".lora_down.weight", "loha": ".hada_w1_a", "lokr": ".lokr_w1",
          "dora": ".dora_scale"}


def spec_for(ntype: str, **kw) -> NetworkSpec:
    return NetworkSpec(ntype, rank=4, alpha=2.0, conv_rank=kw.pop("conv_rank", 2), conv_alpha=1.0, **kw)


def randomize(net: LoRANetwork, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n.endswith("dora_scale"):
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g).to(p.device))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("ntype", TYPES)
def test_type_attaches_detaches_exactly_and_continues_from_its_file(ntype, tmp_path):
    unet, te, oc = tiny_unet("sd1"), tiny_te(), OpenClipText(d=16)
    x, t, ctx = unet_inputs(unet)
    ids, toks = torch.tensor([[1, 5, 7, 2]]), torch.randn(3, 1, 16)
    fp = [module_fingerprint(m) for m in (unet, te, oc)]
    with torch.no_grad():
        base = (unet(x, t, ctx).sample, te(ids).last_hidden_state, oc(toks))

    def outs():
        with torch.no_grad():
            return unet(x, t, ctx).sample, te(ids).last_hidden_state, oc(toks)

    targets = unet_targets(unet, "sd1", conv=True) + text_encoder_targets(te) + open_clip_targets(oc, "lora_te2")
    spec = spec_for(ntype, conv_rank=0 if ntype == "locon" else 2)  # locon: kxk convs at the linear rank
    net = LoRANetwork(targets, rank=1, spec=spec).attach()
    assert all(torch.equal(a, b) for a, b in zip(outs(), base, strict=True)), "a fresh network must be a no-op"
    randomize(net)
    trained = outs()
    assert all(not torch.equal(a, b) for a, b in zip(trained, base, strict=True))
    net.set_multiplier(0.0)
    assert all(torch.equal(a, b) for a, b in zip(outs(), base, strict=True)), "multiplier 0 must give the base exactly"
    net.set_multiplier(1.0)

    sd = net.kohya_state_dict(torch.float32)
    assert any(k.endswith(PREFIX[ntype]) for k in sd)
    if ntype == "locon":
        assert sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape[2:] == (3, 3)
    path = tmp_path / f"{ntype}.safetensors"
    meta = build_metadata(output_name=ntype, arch="sd1", rank=4, alpha=2.0,
                          network_module=spec.kohya_network_module(), network_args=spec.kohya_network_args())
    save_lora_file(path, sd, meta)
    net.detach()
    assert [module_fingerprint(m) for m in (unet, te, oc)] == fp
    assert all(torch.equal(a, b) for a, b in zip(outs(), base, strict=True))

    loaded, file_meta = load_lora_file(path)
    if ntype in ("loha", "lokr", "dora"):
        assert file_meta["ss_network_module"] == "lycoris.kohya"
    again = spec_from_weights(loaded, NetworkSpec(rank=16))
    assert again.network_type == ntype and again.rank == 4 and again.effective_alpha == 2.0
    assert again.effective_conv_rank == (4 if ntype == "locon" else 2)
    cont = LoRANetwork(targets, rank=1, spec=again)
    rep = cont.load_kohya_state_dict(loaded)
    assert rep.ok, (rep.missing[:3], rep.unexpected[:3])
    cont.attach()
    for a, b in zip(outs(), trained, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    cont.detach()


def test_another_type_or_tucker_file_is_refused_by_name():
    unet = tiny_unet("sd1")
    targets = unet_targets(unet, "sd1")
    loha = LoRANetwork(targets, rank=1, spec=spec_for("loha")).kohya_state_dict()
    with pytest.raises(LoRAWeightsError, match=r"is a loha module but this run trains lokr.*network_type"):
        LoRANetwork(targets, rank=1, spec=spec_for("lokr")).load_kohya_state_dict(loha)
    name = next(iter(loha)).split(".")[0]
    with pytest.raises(LoRAWeightsError, match="Tucker"):
        LoRANetwork(targets, rank=1, spec=spec_for("loha")).load_kohya_state_dict(
            {**loha, f"{name}.hada_t1": torch.zeros(4, 4, 3, 3)})


def test_lokr_adopts_the_files_factor_and_full_rank():
    unet = tiny_unet("sd1")
    targets = unet_targets(unet, "sd1")
    src = LoRANetwork(targets, rank=1, spec=spec_for("lokr", lokr_factor=4, lokr_full_rank=True))
    randomize(src)
    sd = src.kohya_state_dict(torch.float32)
    assert any(k.endswith(".lokr_w2") for k in sd) and not any(k.endswith(".lokr_w2_a") for k in sd)
    dst = LoRANetwork(targets, rank=1, spec=spec_from_weights(sd))
    assert dst.load_kohya_state_dict(sd).ok
    for n, d in src.deltas().items():
        torch.testing.assert_close(dst.deltas()[n], d)


@pytest.mark.parametrize("spec,field", [
    (NetworkSpec("lycoris"), "network_type"),
    (NetworkSpec("lokr", lokr_factor=7), "lokr_factor"),
    (NetworkSpec("lokr", lokr_factor=0), "lokr_factor"),
    (NetworkSpec("lora", block_dims=(4, 4)), "block_dims"),
])
def test_bad_spec_is_one_line_naming_the_field(spec, field):
    with pytest.raises(ConfigError) as e:
        spec.validate(dims=(32, 64, 320, 640, 1280))
    assert e.value.field == field and "\n" not in str(e.value)


def test_lokr_factor_that_divides_passes():
    NetworkSpec("lokr", lokr_factor=16).validate(dims=(32, 64, 320, 640, 1280))


@pytest.mark.parametrize("ntype", ["loha", "dora"])
def test_network_for_file_rebuilds_any_type(ntype):
    from lora_trainer.lora.infer import network_for_file

    unet, te = tiny_unet("sd1"), tiny_te()

    def lora_targets(unet_on: bool = True, text_encoder: bool = True, conv: bool = False):
        return (unet_targets(unet, "sd1", conv=conv) if unet_on else []) + \
            (text_encoder_targets(te) if text_encoder else [])

    src = LoRANetwork.from_spec(lora_targets(conv=True), spec_for(ntype))
    randomize(src)
    sd = src.kohya_state_dict(torch.float32)
    net = network_for_file(sd, lambda unet, text_encoder, conv: lora_targets(unet, text_encoder, conv))
    assert set(net.loras) == set(src.loras) and net.spec.network_type == ntype
    for n, d in src.deltas().items():
        torch.testing.assert_close(net.deltas()[n], d)
