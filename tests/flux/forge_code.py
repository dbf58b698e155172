"""Forge's own code, run in the tests from the mirror of lllyasviel/stable-diffusion-webui-forge.

What runs unchanged: its LoRA key maps and loader (`packages_3rdparty/comfyui_lora_collection/lora.py`
and `utils.py`, which `backend/patcher/lora.py` dispatches to) and its FLUX.1 and Chroma transformers
(`backend/nn/flux.py`, `backend/nn/chroma.py`). What is replaced: the two helpers those model files
import from Forge's runtime, `backend.attention.attention_function` (here: Forge's own
`attention_pytorch`, i.e. PyTorch SDPA) and `backend.utils.fp16_fix` / `tensor2parameter` (copied
behaviour), because the real modules pull in Forge's argument parser and memory manager.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from contextlib import contextmanager

FORGE_MIRROR = os.environ.get("FORGE_MIRROR", "/work/.mirror/lllyasviel+stable-diffusion-webui-forge/repo")
FILES = ["packages_3rdparty/comfyui_lora_collection/lora.py", "packages_3rdparty/comfyui_lora_collection/utils.py",
         "packages_3rdparty/webui_lora_collection/lora.py", "backend/patcher/lora.py",
         "backend/nn/flux.py", "backend/nn/chroma.py"]
# what backend/patcher/lora.py imports from Forge's runtime: a device/dtype cast, and a bnb flag read only
# for bitsandbytes-quantised weights
MEMORY_SHIM = "def cast_to_device(tensor, device, dtype, copy=False):\n" \
              "    return tensor.to(device=device, dtype=dtype, copy=copy)\n"
OPERATIONS_SHIM = "bnb_avaliable = False\n"

ATTENTION_SHIM = '''
import torch


def attention_function(q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False):
    """Forge's attention_pytorch."""
    if skip_reshape:
        b, _, _, dim_head = q.shape
    else:
        b, _, dim_head = q.shape
        dim_head //= heads
        q, k, v = (t.view(b, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
    return out.transpose(1, 2).reshape(b, -1, heads * dim_head)
'''
UTILS_SHIM = '''
import torch


def tensor2parameter(x):
    return x if isinstance(x, torch.nn.Parameter) else torch.nn.Parameter(x, requires_grad=False)


def fp16_fix(x):
    return x.clip(-32768.0, 32768.0) if x.dtype in [torch.float16] else x
'''


def available() -> bool:
    return os.path.isdir(FORGE_MIRROR)


def _show(path: str) -> str:
    return subprocess.run(["git", f"--git-dir={FORGE_MIRROR}", "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout


@contextmanager
def forge_modules(root: str):
    """Yield a namespace with `lora` (the ComfyUI-derived key maps + loader), `patcher` (Forge's
    `backend/patcher/lora.py`: the dispatching `load_lora` / key maps and `merge_lora_to_weight`, which
    applies every patch kind: lora, loha, lokr, DoRA), `flux`, `chroma`; the generic module
    names (`backend`, `packages_3rdparty`) are removed from sys.modules afterwards."""
    for path in FILES:
        dst = os.path.join(root, path)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(dst, "w", encoding="utf-8") as f:
            f.write(_show(path))
    for pkg in ("backend", "backend/nn", "backend/patcher", "packages_3rdparty",
                "packages_3rdparty/comfyui_lora_collection", "packages_3rdparty/webui_lora_collection"):
        open(os.path.join(root, pkg, "__init__.py"), "w").close()
    with open(os.path.join(root, "backend", "attention.py"), "w", encoding="utf-8") as f:
        f.write(ATTENTION_SHIM)
    for name, text in (("utils.py", UTILS_SHIM), ("memory_management.py", MEMORY_SHIM),
                       ("operations.py", OPERATIONS_SHIM)):
        with open(os.path.join(root, "backend", name), "w", encoding="utf-8") as f:
            f.write(text)
    clashes = [m for m in sys.modules if m.split(".")[0] in ("backend", "packages_3rdparty")]
    assert not clashes, f"modules already imported: {clashes}"
    sys.path.insert(0, root)
    try:
        import importlib

        yield types.SimpleNamespace(lora=importlib.import_module("packages_3rdparty.comfyui_lora_collection.lora"),
                                    patcher=importlib.import_module("backend.patcher.lora"),
                                    flux=importlib.import_module("backend.nn.flux"),
                                    chroma=importlib.import_module("backend.nn.chroma"))
    finally:
        sys.path.remove(root)
        for m in [m for m in sys.modules if m.split(".")[0] in ("backend", "packages_3rdparty")]:
            del sys.modules[m]
