"""Block-wise ranks and learning rates: which targets a run trains, each with its rank/alpha/lr.

Why resolve up front: the dry-run plan, the network and the optimizer groups must agree on one
list. kohya's `block_dims`/`block_alphas`/`conv_block_dims`/`block_lr_weight` index the UNet by
block (SD1/SD2: 25 = IN00-IN11, MID, OUT00-OUT11 from diffusers names; SDXL: 23 = 0, IN00-IN08 as
1-9, MID 10-12, OUT00-OUT08 as 13-21, 22, from LDM names — kohya's `get_block_index`); include /
exclude patterns and `BlockRule`s (fnmatch on the kohya name, last match wins) apply after them.
Text-encoder targets have no block: they keep the run's rank, alpha and lr.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from lora_trainer.errors import ConfigError
from lora_trainer.lora.spec import NetworkSpec
from lora_trainer.lora.target import LoraTarget

_SD_UPDOWN = re.compile(r"lora_unet_(down|up)_blocks_(\d+)_(resnets|attentions|downsamplers|upsamplers)_(\d+)_")
_SDXL = re.compile(r"lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_")


@dataclass(frozen=True)
class TargetPlan:
    """One target as this run trains it. `rank` is the rank its kind uses (0 = skipped)."""

    target: LoraTarget
    rank: int
    alpha: float
    lr_weight: float
    block: str  # "IN04", "MID", "OUT11", "TE" ... for the plan


def block_index(name: str) -> tuple[int, int]:
    """(index, count) of a UNet kohya name in kohya's block lists; (-1, 0) when it has none."""
    if m := _SD_UPDOWN.match(name):
        i, j = int(m[2]), int(m[4])
        idx = 3 * i + (2 if m[3] in ("downsamplers", "upsamplers") else j)
        return (1 + idx if m[1] == "down" else 13 + idx), 25
    if name.startswith("lora_unet_mid_block_"):
        return 12, 25
    if m := _SDXL.match(name):
        n = int(m[2])
        return {"input_blocks": 1 + n, "middle_block": 10 + n, "output_blocks": 13 + n}[m[1]], 23
    return -1, 0


def block_label(name: str) -> str:
    idx, count = block_index(name)
    if idx < 0:
        return "TE" if name.startswith("lora_te") else "-"
    mid = 12 if count == 25 else 10
    if count == 25:
        return f"IN{idx:02d}" if idx < mid else "MID" if idx == mid else f"OUT{idx - 13:02d}"
    return f"IN{idx - 1:02d}" if idx < mid else f"MID{idx - 10}" if idx < 13 else f"OUT{idx - 13:02d}"


def _pick(values: tuple, field: str, idx: int, count: int, default: float) -> float:
    if not values or idx < 0:
        return default
    if len(values) != count:
        raise ConfigError(field, f"has {len(values)} values but this model's UNet has {count} kohya blocks")
    return values[idx]


def _is_kxk(t: LoraTarget) -> bool:
    k = getattr(t.module, "kernel_size", (1, 1))
    return t.kind == "conv" and tuple(k) != (1, 1)


def resolve_targets(targets: Iterable[LoraTarget], spec: NetworkSpec) -> list[TargetPlan]:
    """Every target with its rank/alpha/lr weight; excluded ones and rank 0 are left out."""
    out = []
    for t in targets:
        names = t.names or (t.name,)
        if spec.include and not any(fnmatchcase(n, p) for n in names for p in spec.include):
            continue
        if any(fnmatchcase(n, p) for n in names for p in spec.exclude):
            continue
        idx, count = block_index(t.name)
        conv = _is_kxk(t)
        if conv:
            rank = int(_pick(spec.conv_block_dims, "conv_block_dims", idx, count, spec.effective_conv_rank))
            alpha = _pick(spec.conv_block_alphas, "conv_block_alphas", idx, count, spec.effective_conv_alpha)
        else:
            rank = int(_pick(spec.block_dims, "block_dims", idx, count, spec.rank))
            alpha = _pick(spec.block_alphas, "block_alphas", idx, count, spec.effective_alpha)
        lr_w = _pick(spec.block_lr_weight, "block_lr_weight", idx, count, 1.0)
        skip = False
        for r in spec.rules:
            if any(fnmatchcase(n, r.pattern) for n in names):
                skip = r.exclude
                rank = rank if r.rank is None else r.rank
                alpha = alpha if r.alpha is None else r.alpha
                lr_w = lr_w if r.lr_weight is None else r.lr_weight
        if skip or rank <= 0 or lr_w <= 0:
            continue
        out.append(TargetPlan(t, rank, float(alpha), float(lr_w), block_label(t.name)))
    return out


def plan_lines(plans: Iterable[TargetPlan], unet_lr: float, te_lr: float) -> list[str]:
    """The dry-run table: one line per (block, rank, alpha, lr) group with its module count."""
    rows: dict[tuple[str, str, int, float, float], int] = {}
    for p in plans:
        lr = (unet_lr if p.target.group == "unet" else te_lr) * p.lr_weight
        key = (p.target.group, p.block, p.rank, p.alpha, lr)
        rows[key] = rows.get(key, 0) + 1
    return [f"{g:<12} {b:<6} rank {r:>4}  alpha {a:g}  lr {lr:.3g}  modules {n}"
            for (g, b, r, a, lr), n in rows.items()]


def _runs(values: tuple, labels: list[str]) -> str:
    """`IN00-IN03 4, IN04 8, ...`: consecutive equal values collapsed."""
    out, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            span = labels[start] if i - 1 == start else f"{labels[start]}-{labels[i - 1]}"
            out.append(f"{span} {values[start]:g}")
            start = i
    return ", ".join(out)


def _labels(count: int) -> list[str]:
    if count == 25:
        return [f"IN{i:02d}" for i in range(12)] + ["MID"] + [f"OUT{i:02d}" for i in range(12)]
    return ["EMB"] + [f"IN{i:02d}" for i in range(9)] + ["MID0", "MID1", "MID2"] + \
        [f"OUT{i:02d}" for i in range(9)] + ["OUT"]


def spec_plan_lines(spec: NetworkSpec) -> list[str]:
    """The block-wise part of the dry-run plan, from the spec alone (no model needed)."""
    lines = []
    for name in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "block_lr_weight"):
        vals = getattr(spec, name)
        if vals:
            lines.append(f"{name}: {_runs(tuple(vals), _labels(len(vals)))}")
    if spec.include:
        lines.append("only modules matching: " + ", ".join(spec.include))
    if spec.exclude:
        lines.append("never modules matching: " + ", ".join(spec.exclude))
    for r in spec.rules:
        what = "excluded" if r.exclude else ", ".join(
            f"{k} {v:g}" for k, v in (("rank", r.rank), ("alpha", r.alpha), ("lr x", r.lr_weight)) if v is not None)
        lines.append(f"{r.pattern}: {what}")
    return lines
