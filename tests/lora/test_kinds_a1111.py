"""Every network type through AUTOMATIC1111 1.10's own builtin Lora code: each file key finds its
`ldm`/`sgm` module (the lookup of test_conformance_a1111), each key group is accepted by the first
of A1111's real `module_types` (network_lora / network_hada / network_lokr, read from the WebUI's
source at MIRROR_DIR), and A1111's `calc_updown` gives our delta in float64.

The WebUI itself cannot start here; only the few names those files import from its `modules`
package at load time are stood in (device/dtype constants, a QkvLinear class for an isinstance).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from lora_test_models import tiny_te, tiny_unet
from test_conformance_a1111 import a1111_lookup, hf_wrapped, layer_mapping, ldm_unet, open_clip_wrapped
from test_kinds_network import randomize

from lora_trainer.lora.discovery import text_encoder_targets, unet_targets
from lora_trainer.lora.network import LoRANetwork
from lora_trainer.lora.spec import NetworkSpec

MIRROR = Path(os.environ.get("MIRROR_DIR", "/work/.mirror")) / "Hemang2208+Stable_Diffusion_WebUI" / "repo"
FILES = ("network", "lyco_helpers", "network_lora", "network_hada", "network_ia3", "network_lokr", "network_full",
         "network_norm", "network_glora", "network_oft")


def _stand_in_modules() -> dict[str, types.ModuleType]:
    mods = {n: types.ModuleType(n) for n in ("modules", "modules.sd_models", "modules.cache", "modules.errors",
                                             "modules.hashes", "modules.shared", "modules.devices",
                                             "modules.models", "modules.models.sd3", "modules.models.sd3.mmdit")}
    mods["modules.models.sd3.mmdit"].QkvLinear = type("QkvLinear", (torch.nn.Linear,), {})
    dev = mods["modules.devices"]
    dev.cpu = dev.device = torch.device("cpu")
    dev.dtype = torch.float64
    for name, m in mods.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(mods[parent], child, m)
    return mods


@pytest.fixture(scope="module")
def a1111(tmp_path_factory):
    if not MIRROR.is_dir():
        pytest.skip(f"the WebUI source is not at {MIRROR} (set MIRROR_DIR)")
    d = tmp_path_factory.mktemp("a1111_lora")
    for f in FILES:
        src = subprocess.run(["git", f"--git-dir={MIRROR}", "show", f"HEAD:extensions-builtin/Lora/{f}.py"],
                             check=True, capture_output=True).stdout
        (d / f"{f}.py").write_bytes(src)
    saved = {k: sys.modules.get(k) for k in (*FILES, *_stand_in_modules())}
    sys.modules.update(_stand_in_modules())
    sys.path.insert(0, str(d))
    try:
        import network  # noqa: PLC0415 - A1111's, from the temporary folder
        import network_hada  # noqa: PLC0415
        import network_lokr  # noqa: PLC0415
        import network_lora  # noqa: PLC0415

        types_ = [network_lora.ModuleTypeLora(), network_hada.ModuleTypeHada(), network_lokr.ModuleTypeLokr()]
        yield network, types_
    finally:
        sys.path.remove(str(d))
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _models(arch: str):
    unet = tiny_unet(arch)
    if arch == "sdxl":
        te1, te2 = tiny_te(), tiny_te(projection=True)
        targets = (unet_targets(unet, arch, conv=True) + text_encoder_targets(te1, "lora_te1")
                   + text_encoder_targets(te2, "lora_te2"))
        mapping = layer_mapping(ldm_unet(arch), [("0_", hf_wrapped()), ("1_", open_clip_wrapped())])
    else:
        targets = unet_targets(unet, arch, conv=True) + text_encoder_targets(tiny_te(), "lora_te")
        mapping = layer_mapping(ldm_unet(arch), [("", hf_wrapped())])
    return targets, mapping


@pytest.mark.parametrize("arch", ["sd1", "sdxl"])
@pytest.mark.parametrize("spec", [
    NetworkSpec("lora", rank=4, alpha=2.0),
    NetworkSpec("locon", rank=4, alpha=2.0),
    NetworkSpec("loha", rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0),
    NetworkSpec("lokr", rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0),
    NetworkSpec("lokr", rank=4, alpha=2.0, conv_rank=2, lokr_factor=4, lokr_full_rank=True),
    NetworkSpec("dora", rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0),
    NetworkSpec("loha", rank=4, alpha=2.0, dora_wd=True),
], ids=lambda s: f"{s.network_type}{'-f4full' if s.lokr_full_rank else ''}{'-dorawd' if s.dora_wd else ''}")
def test_every_key_is_matched_and_a1111_computes_our_delta(a1111, arch, spec):
    network, module_types = a1111
    targets, mapping = _models(arch)
    net = LoRANetwork(targets, rank=1, spec=spec, dtype=torch.float64)
    randomize(net)
    sd = net.kohya_state_dict(torch.float64)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in sd.items():
        name, _, part = key.partition(".")  # A1111's split of a key into module and part
        groups.setdefault(name, {})[part] = t
    a_net = network.Network("test", None)
    ours = net.deltas(torch.float64)
    bases = {n: t.module for t in targets for n in (t.names or (t.name,))}
    for name, w in groups.items():
        mod = a1111_lookup(name, mapping, is_sd2=False)
        assert mod is not None, f"A1111 would not match {name} (an unmatched key)"
        weights = network.NetworkWeights(network_key=f"{name}.x", sd_key=name, w=dict(w), sd_module=mod)
        made = next((m for t in module_types if (m := t.create_module(a_net, weights)) is not None), None)
        assert made is not None, f"no A1111 module type accepts {sorted(w)}"
        base_w = bases[name].weight.detach().double()
        updown, _ = made.calc_updown(base_w)
        torch.testing.assert_close(updown.reshape(base_w.shape), ours[name].reshape(base_w.shape),
                                   rtol=1e-9, atol=1e-12, msg=f"{name}: A1111's delta differs")
