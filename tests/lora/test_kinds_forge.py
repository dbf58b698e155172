"""Every network type through Forge's own LoRA code (its ComfyUI-derived `load_lora` and
`backend/patcher/lora.py` `merge_lora_to_weight`, read from Forge's source at MIRROR_DIR): every file
key is consumed (Forge reports the rest as not loaded) and the merged weight equals base + our delta
in float64. Forge's `memory_management` (a device/dtype cast), `utils` and `operations` (a bnb flag)
are stood in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lora_test_models import tiny_te, tiny_unet
from test_kinds_network import randomize

from lora_trainer.lora.discovery import text_encoder_targets, unet_targets
from lora_trainer.lora.network import LoRANetwork
from lora_trainer.lora.spec import NetworkSpec

MIRROR = Path(os.environ.get("MIRROR_DIR", "/work/.mirror")) / "lllyasviel+stable-diffusion-webui-forge" / "repo"
FILES = ("backend/patcher/lora.py", "packages_3rdparty/comfyui_lora_collection/lora.py",
         "packages_3rdparty/comfyui_lora_collection/utils.py", "packages_3rdparty/webui_lora_collection/lora.py")
STAND_INS = {
    "backend/memory_management.py": "def cast_to_device(tensor, device, dtype, copy=False):\n"
                                    "    return tensor.to(device=device, dtype=dtype, copy=copy)\n",
    "backend/utils.py": "",
    "backend/operations.py": "bnb_avaliable = False\n",  # read only when a weight is bnb-quantized
}


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    if not MIRROR.is_dir():
        pytest.skip(f"Forge's source is not at {MIRROR} (set MIRROR_DIR)")
    d = tmp_path_factory.mktemp("forge")
    for f in FILES:
        out = d / f
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(subprocess.run(["git", f"--git-dir={MIRROR}", "show", f"HEAD:{f}"], check=True,
                                       capture_output=True).stdout)
    for f, text in STAND_INS.items():
        (d / f).write_text(text)
    for pkg in ("backend", "backend/patcher", "packages_3rdparty", "packages_3rdparty/comfyui_lora_collection",
                "packages_3rdparty/webui_lora_collection"):
        (d / pkg / "__init__.py").touch()
    before = set(sys.modules)
    sys.path.insert(0, str(d))
    try:
        import backend.patcher.lora as forge_lora  # noqa: PLC0415 - Forge's, from the temporary folder

        yield forge_lora
    finally:
        sys.path.remove(str(d))
        for k in set(sys.modules) - before:
            if k.split(".")[0] in ("backend", "packages_3rdparty"):
                del sys.modules[k]


@pytest.mark.parametrize("spec", [
    NetworkSpec("locon", rank=4, alpha=2.0),
    NetworkSpec("loha", rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0),
    NetworkSpec("lokr", rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0),
    NetworkSpec("lokr", rank=4, alpha=2.0, lokr_factor=4, lokr_full_rank=True),
    NetworkSpec("dora", rank=4, alpha=2.0, conv_rank=2, conv_alpha=1.0),
    NetworkSpec("lokr", rank=4, alpha=2.0, dora_wd=True),
], ids=lambda s: f"{s.network_type}{'-f4full' if s.lokr_full_rank else ''}{'-dorawd' if s.dora_wd else ''}")
def test_forge_consumes_every_key_and_merges_our_delta(forge, spec):
    unet, te = tiny_unet("sd1"), tiny_te()
    targets = unet_targets(unet, "sd1", conv=True) + text_encoder_targets(te)
    net = LoRANetwork.from_spec(targets, spec, dtype=torch.float64)
    randomize(net)
    sd = net.kohya_state_dict(torch.float64)
    patches, remaining = forge.load_lora(sd, {name: name for name in net.loras})
    assert not remaining and set(patches) == set(net.loras), "Forge would report keys as not loaded"
    ours = net.deltas(torch.float64)
    bases = {t.name: t.module for t in targets}
    for name, patch in patches.items():
        w = bases[name].weight.detach().double()
        merged = forge.merge_lora_to_weight([(1.0, patch, 1.0, None, None)], w, computation_dtype=torch.float64)
        torch.testing.assert_close(merged - w, ours[name], rtol=1e-9, atol=1e-12, msg=f"{name}: Forge's delta")
