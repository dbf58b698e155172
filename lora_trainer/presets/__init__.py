"""Presets shipped with the package: `<name>.yaml` files in this folder, each opened by a
`# Preset: <what it is for>` line. The Trainer tab lists them; `load_preset` gives their keys."""

from __future__ import annotations

import os
from typing import Any

FOLDER = os.path.dirname(os.path.abspath(__file__))


def list_presets() -> dict[str, str]:
    """Preset name -> YAML file, sorted by name."""
    return {os.path.splitext(n)[0]: os.path.join(FOLDER, n) for n in sorted(os.listdir(FOLDER))
            if n.endswith((".yaml", ".yml"))}


def describe(name: str) -> str:
    """The preset's `# Preset:` line, without the marker ("" when it has none)."""
    path = list_presets().get(name)
    if not path:
        return ""
    with open(path, encoding="utf-8") as fh:
        first = fh.readline().strip()
    return first.split(":", 1)[1].strip() if first.lower().startswith("# preset:") else ""


def load_preset(name: str) -> dict[str, Any]:
    """The preset's settings as flat canonical config keys (validated like any config)."""
    from lora_trainer.config import load_config
    from lora_trainer.errors import ConfigError

    path = list_presets().get(name)
    if path is None:
        raise ConfigError("preset", f"no preset named '{name}' (there are: {', '.join(list_presets())})")
    cfg = load_config(path, check_paths=False, require=())
    return {k: getattr(cfg, k) for k in cfg.spelled}
