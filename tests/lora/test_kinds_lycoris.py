"""LoHa, LoKr and DoRA against LyCORIS's own code (lycoris-lora, test-only): same shapes for the same
settings, and the same output delta in float64 when LyCORIS's loader reads our file tensors.

Our modules exist because lycoris-lora cannot be imported inside the WebUI hosts; this is the proof
that they are the same algorithms with the same file layout.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lora_trainer.lora.kinds import make_module

lyc_modules = pytest.importorskip("lycoris.modules")
from lycoris.modules.locon import LoConModule  # noqa: E402
from lycoris.modules.loha import LohaModule  # noqa: E402
from lycoris.modules.lokr import LokrModule  # noqa: E402

BASES = {
    "linear": lambda: nn.Linear(48, 64, dtype=torch.float64),
    "conv3x3": lambda: nn.Conv2d(32, 64, 3, stride=2, padding=1, dtype=torch.float64),
    "conv1x1": lambda: nn.Conv2d(64, 32, 1, dtype=torch.float64),
}


def _input(base: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if isinstance(base, nn.Conv2d):
        return torch.randn(2, base.in_channels, 8, 8, generator=g, dtype=torch.float64)
    return torch.randn(3, base.in_features, generator=g, dtype=torch.float64)


def _ours(algo: str, base: nn.Module, rank: int, alpha: float, dora: bool = False, **opt) -> nn.Module:
    torch.manual_seed(0)
    m = make_module(algo, "lora_unet_x", base, rank, alpha, conv=isinstance(base, nn.Conv2d), decompose=dora,
                    dtype=torch.float64, weight_fn=lambda: base.weight, **opt)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every factor non-zero, so a transposed or dropped factor shows
        for p in m.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.2)
            else:
                p.mul_(1.0 + 0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    return m


def _file(m: nn.Module) -> dict[str, torch.Tensor]:
    return {f"lora_unet_x{suf}": t for suf, t in m.file_tensors(torch.float64).items()}


def _lycoris_delta(sd: dict[str, torch.Tensor], base: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """LyCORIS's loader (`get_module` + `make_module`) on our file, then its forward minus the base."""
    kind, params = lyc_modules.get_module(sd, "lora_unet_x")
    assert kind is not None, f"LyCORIS does not recognise the keys {sorted(sd)}"
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # LyCORIS builds its parameters in the default dtype
    try:
        lyc = lyc_modules.make_module(kind, params, "lora_unet_x", base)
    finally:
        torch.set_default_dtype(old)
    with torch.no_grad():
        return lyc(x) - base(x)


@pytest.mark.parametrize("where", list(BASES))
@pytest.mark.parametrize("algo,opt,lyc_cls", [
    ("loha", {}, LohaModule),
    ("lokr", {}, LokrModule),
    ("lokr", {"factor": 4}, LokrModule),
    ("lokr", {"factor": 8, "full_rank": True}, LokrModule),
    ("lora", {}, LoConModule),
])
def test_same_layout_and_delta_as_lycoris(where, algo, opt, lyc_cls):
    base = BASES[where]()
    ours = _ours(algo, base, 4, 2.0, **opt)
    lyc_kw = {"factor": opt.get("factor", -1), "full_matrix": opt.get("full_rank", False)} if algo == "lokr" else {}
    fresh = lyc_cls("lora_unet_x", base, 1.0, 4, 2.0, **lyc_kw)
    want = {k: tuple(v.shape) for k, v in fresh.custom_state_dict().items()}
    got = {suf[1:]: tuple(t.shape) for suf, t in ours.file_tensors(None).items()}
    assert got == want, "tensor names/shapes differ from LyCORIS for the same settings"
    x = _input(base)
    with torch.no_grad():
        mine = ours.lora_out(x)
    torch.testing.assert_close(mine, _lycoris_delta(_file(ours), base, x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("where", list(BASES))
@pytest.mark.parametrize("algo,lyc_cls", [("lora", LoConModule), ("loha", LohaModule), ("lokr", LokrModule)])
def test_dora_equals_lycoris_weight_decompose_on_input_axis(where, algo, lyc_cls):
    """DoRA (and LyCORIS dora_wd on LoHa/LoKr): magnitude per input channel (`wd_on_out=False`)."""
    base = BASES[where]()
    ours = _ours(algo, base, 4, 2.0, dora=True)
    lyc = lyc_cls("lora_unet_x", base, 1.0, 4, 2.0, weight_decompose=True, wd_on_out=False).double()
    sd = {suf[1:]: t for suf, t in ours.file_tensors(torch.float64).items()}
    assert tuple(sd["dora_scale"].shape) == tuple(lyc.dora_scale.shape)
    with torch.no_grad():
        for k, v in sd.items():
            if k == "alpha":
                continue
            getattr(lyc, k.replace(".weight", "")).weight.copy_(v) if k.endswith(".weight") else getattr(lyc, k).copy_(v)
        x = _input(base)
        torch.testing.assert_close(ours.lora_out(x), lyc(x) - base(x), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("algo", ["loha", "lokr", "lora"])
def test_fresh_modules_start_as_no_ops(algo):
    for make in BASES.values():
        base = make()
        torch.manual_seed(0)
        for dora in (False, True):
            m = make_module(algo, "n", base, 4, 4.0, conv=isinstance(base, nn.Conv2d), decompose=dora,
                            dtype=torch.float64, weight_fn=lambda b=base: b.weight)
            assert torch.count_nonzero(m.delta_weight()).item() == 0 or \
                m.delta_weight().abs().max().item() < 1e-12


@pytest.mark.parametrize("ntype", ["locon", "loha", "lokr"])
def test_lycoris_kohya_loader_steps_match_every_unet_module(ntype):
    """What `lycoris.kohya.create_network_from_weights` does per module — find `lora_unet_<path>` among
    the UNet's modules, `get_module`, `make_module` — on a whole tiny SD1 UNet file. (Its network
    wrapper itself asserts on diffusers 0.42's UNet: "duplicated lora name ... time_embedding", before
    reading any file, so the per-module steps are driven directly.)"""
    from lora_test_models import tiny_unet

    from lora_trainer.lora.discovery import unet_targets
    from lora_trainer.lora.network import LoRANetwork
    from lora_trainer.lora.spec import NetworkSpec

    unet = tiny_unet("sd1").double()
    net = LoRANetwork.from_spec(unet_targets(unet, "sd1", conv=True),
                                NetworkSpec(ntype, rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0), torch.float64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.1)
    sd = net.kohya_state_dict(torch.float64)
    by_name = {f"lora_unet_{n}".replace(".", "_"): m for n, m in unet.named_modules()}
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        for name, ours in net.loras.items():
            base = by_name.get(name)
            assert base is not None, f"LyCORIS's loader would not find {name}"
            kind, params = lyc_modules.get_module(sd, name)
            lyc = lyc_modules.make_module(kind, params, name, base)
            x = _input(base)
            with torch.no_grad():
                torch.testing.assert_close(ours.lora_out(x), lyc(x) - base(x), rtol=1e-9, atol=1e-12, msg=name)
    finally:
        torch.set_default_dtype(old)
