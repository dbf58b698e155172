"""The FLUX.1 / Chroma configs shipped in `configs/flux/` (the real models' transformer, VAE, CLIP-L, T5 and
scheduler configs): read by the loaders, the tiny builders and the memory plan alike."""

from __future__ import annotations

import json
import os
from typing import Any

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs", "flux")


def shipped_config(name: str) -> dict[str, Any]:
    with open(os.path.join(CONFIG_DIR, name + ".json"), encoding="utf-8") as f:
        return json.load(f)


def constructor_config(name: str) -> dict[str, Any]:
    """`shipped_config` without the keys a model class does not take (`_class_name`, `architectures`, ...)."""
    return {k: v for k, v in shipped_config(name).items() if not k.startswith("_") and k != "architectures"}
