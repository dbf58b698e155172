"""Sample images during training: prompt list parsing and generation with the LoRA attached.

Prompts come from `sample_prompts` (a list, or a .txt file with one prompt per line). A line may carry
kohya-style options: `--n negative`, `--d seed`, `--s steps`, `--l guidance`, `--w width`, `--h height`.
Seeds are fixed (sample_seed + prompt index unless `--d`), so samples of different steps compare.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from lora_trainer.atomic import atomic_file

_OPT = re.compile(r"\s--([ndslwh])\s+")


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 7.0
    width: int = 512
    height: int = 512


def _resolution(cfg: Any) -> tuple[int, int]:
    res = getattr(cfg, "resolution", 512)
    if isinstance(res, (tuple, list)):
        return int(res[0]), int(res[1])
    if isinstance(res, str) and "," in res:
        w, h = res.split(",", 1)
        return int(w), int(h)
    return int(res), int(res)


def parse_prompts(cfg: Any) -> list[SamplePrompt]:
    raw = cfg.sample_prompt_list() if hasattr(cfg, "sample_prompt_list") else getattr(cfg, "sample_prompts", None) or []
    if isinstance(raw, str):
        if os.path.isfile(raw):
            with open(raw, encoding="utf-8") as f:
                raw = [ln for ln in (x.strip() for x in f) if ln and not ln.startswith("#")]
        else:
            raw = [raw]
    w0, h0 = _resolution(cfg)
    width = int(getattr(cfg, "sample_width", None) or w0)
    height = int(getattr(cfg, "sample_height", None) or h0)
    base_seed = int(getattr(cfg, "sample_seed", 42) or 0)
    out = []
    for i, line in enumerate(raw):
        parts = _OPT.split(" " + str(line))
        sp = SamplePrompt(prompt=parts[0].strip(), seed=base_seed + i, steps=int(getattr(cfg, "sample_steps", 20)),
                          guidance=float(getattr(cfg, "sample_guidance", 7.0)), width=width, height=height)
        for key, val in zip(parts[1::2], parts[2::2], strict=False):
            val = val.strip()
            if key == "n":
                sp.negative = val
            elif key == "d":
                sp.seed = int(val)
            elif key == "s":
                sp.steps = int(val)
            elif key == "l":
                sp.guidance = float(val)
            elif key == "w":
                sp.width = int(val)
            elif key == "h":
                sp.height = int(val)
        out.append(sp)
    return out


def generate_samples(adapter: Any, prompts: list[SamplePrompt], out_dir: str, tag: str) -> list[str]:
    """One PNG per prompt under `out_dir` named `<tag>-<i>.png`; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for i, sp in enumerate(prompts):
        with torch.no_grad():
            image = adapter.generate(sp.prompt, negative_prompt=sp.negative, seed=sp.seed, steps=sp.steps,
                                     width=sp.width, height=sp.height, guidance_scale=sp.guidance)
        path = os.path.join(out_dir, f"{tag}-{i:02d}.png")
        with atomic_file(path) as f:
            image.save(f, format="PNG")
        paths.append(path)
    return paths
