"""`NetworkSpec`: what kind of adapter to train and with which ranks, per block if asked.

Why a separate record: the network builder must not read the config schema directly (the schema
lives with the engine), and a spec can be checked in full — unknown type, a LoKr factor that does
not divide a dimension, a block list of the wrong length — before any model is loaded.
The file format it selects is LyCORIS's (what A1111's builtin Lora extension, Forge and ComfyUI
read); `network_module`/`network_args` are what kohya and LyCORIS write into `ss_network_*`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lora_trainer.errors import ConfigError

NETWORK_TYPES = ("lora", "locon", "loha", "lokr", "dora")
LYCORIS_MODULE = "lycoris.kohya"


@dataclass(frozen=True)
class BlockRule:
    """One include/exclude rule on kohya module names (fnmatch pattern, e.g. `lora_unet_up_blocks_*`).

    The last matching rule wins; `exclude` drops the module; rank/alpha/lr_weight left None keep
    what the block lists (or the run) give.
    """

    pattern: str
    rank: int | None = None
    alpha: float | None = None
    lr_weight: float | None = None  # multiplier of the group's learning rate
    exclude: bool = False


def rules_from_raw(raw: Iterable[Any], field_name: str = "network_blocks") -> tuple[BlockRule, ...]:
    """Rules as a config holds them: `{pattern, rank, alpha, lr_weight, exclude}` mappings, or a plain
    `"pattern"` string (exclude that pattern). Errors name `network_blocks[i].key`."""
    out = []
    for i, item in enumerate(raw or ()):
        where = f"{field_name}[{i}]"
        if isinstance(item, str):
            out.append(BlockRule(item, exclude=True))
            continue
        if not isinstance(item, Mapping):
            raise ConfigError(where, "must be a pattern string or a mapping with 'pattern'")
        unknown = set(item) - {"pattern", "rank", "alpha", "lr_weight", "exclude"}
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}", "unknown key; use pattern, rank, alpha, lr_weight, exclude")
        if not item.get("pattern"):
            raise ConfigError(f"{where}.pattern", "is required (an fnmatch pattern on kohya module names)")
        try:
            out.append(BlockRule(str(item["pattern"]),
                                 None if item.get("rank") is None else int(item["rank"]),
                                 None if item.get("alpha") is None else float(item["alpha"]),
                                 None if item.get("lr_weight") is None else float(item["lr_weight"]),
                                 bool(item.get("exclude", False))))
        except (TypeError, ValueError) as e:
            raise ConfigError(where, f"bad value ({e})") from None
    return tuple(out)


@dataclass(frozen=True)
class NetworkSpec:
    """The adapter of one run. Ranks/alphas apply to Linear and 1x1 conv; conv_* to kxk convs."""

    network_type: str = "lora"
    rank: int = 8
    alpha: float | None = None
    conv_rank: int = 0
    conv_alpha: float | None = None
    dropout: float = 0.0
    lokr_factor: int = -1          # -1: the most square factorisation (LyCORIS default)
    lokr_full_rank: bool = False   # LyCORIS full_matrix: the big Kronecker factor is a full matrix
    dora_wd: bool = False          # DoRA magnitude on LoHa/LoKr too (LyCORIS dora_wd); implied by "dora"
    include: tuple[str, ...] = ()  # fnmatch patterns; empty = every target the model offers
    exclude: tuple[str, ...] = ()
    rules: tuple[BlockRule, ...] = ()
    block_dims: tuple[int, ...] = ()      # kohya: 25 values SD1/SD2 (IN00-11, MID, OUT00-11), 23 SDXL
    block_alphas: tuple[float, ...] = ()
    conv_block_dims: tuple[int, ...] = ()
    conv_block_alphas: tuple[float, ...] = ()
    block_lr_weight: tuple[float, ...] = ()  # multiplier of the UNet lr per block; 0 = block not trained
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def algo(self) -> str:
        """The module kind: lora | loha | lokr (locon and dora are LoRA modules)."""
        return self.network_type if self.network_type in ("loha", "lokr") else "lora"

    @property
    def weight_decompose(self) -> bool:
        return self.network_type == "dora" or (self.dora_wd and self.network_type in ("loha", "lokr"))

    @property
    def effective_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    @property
    def effective_conv_rank(self) -> int:
        """LoCon trains kxk convs: with conv_rank unset they get the linear rank."""
        if self.conv_rank <= 0 and self.network_type == "locon":
            return self.rank
        return self.conv_rank

    @property
    def effective_conv_alpha(self) -> float:
        if self.conv_alpha is not None:
            return float(self.conv_alpha)
        if self.conv_rank <= 0 and self.network_type == "locon":
            return self.effective_alpha
        return float(self.effective_conv_rank)

    def validate(self, dims: Iterable[int] = ()) -> NetworkSpec:
        """Raise a one-line `ConfigError` naming the field; `dims` are the model's channel widths."""
        if self.network_type not in NETWORK_TYPES:
            raise ConfigError("network_type", f"unknown network type {self.network_type!r}; "
                                              f"use one of {', '.join(NETWORK_TYPES)}")
        if self.rank < 1:
            raise ConfigError("lora_rank", "must be at least 1")
        if self.lokr_factor == 0 or self.lokr_factor < -1:
            raise ConfigError("lokr_factor", f"{self.lokr_factor} is not a factor; use -1 (auto) or a number > 0")
        if self.network_type == "lokr" and self.lokr_factor > 0:
            bad = sorted({d for d in dims if d % self.lokr_factor})
            if bad:
                raise ConfigError("lokr_factor", f"{self.lokr_factor} does not divide the model's dimension(s) "
                                                 f"{', '.join(map(str, bad[:4]))}; use a power of two or -1")
        for name in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "block_lr_weight"):
            vals = getattr(self, name)
            if vals and len(vals) not in (23, 25):
                raise ConfigError(name, f"has {len(vals)} values; kohya's layout needs 25 (SD1/SD2: IN00-IN11, "
                                        "MID, OUT00-OUT11) or 23 (SDXL)")
            if any(v < 0 for v in vals):
                raise ConfigError(name, "values must be >= 0")
        for r in self.rules:
            if not r.pattern:
                raise ConfigError("network_blocks", "a rule has an empty pattern")
            if r.rank is not None and r.rank < 0:
                raise ConfigError("network_blocks", f"{r.pattern}: rank must be >= 0")
        return self

    def kohya_network_module(self) -> str:
        """`ss_network_module`: LoHa/LoKr/DoRA files are LyCORIS's; plain LoRA/LoCon kohya's."""
        return LYCORIS_MODULE if self.network_type in ("loha", "lokr", "dora") else "networks.lora"

    def kohya_network_args(self) -> dict[str, str]:
        """`ss_network_args` as LyCORIS writes it (algo, conv_dim/alpha, factor, dora_wd)."""
        args: dict[str, str] = {}
        if self.network_type in ("loha", "lokr", "dora"):
            args["algo"] = "locon" if self.network_type == "dora" else self.network_type
        if self.effective_conv_rank:
            args["conv_dim"] = str(self.effective_conv_rank)
            args["conv_alpha"] = str(self.effective_conv_alpha)
        if self.network_type == "lokr":
            args["factor"] = str(self.lokr_factor)
            if self.lokr_full_rank:
                args["full_matrix"] = "True"
        if self.weight_decompose:
            args["dora_wd"] = "True"
            args["wd_on_output"] = "False"  # magnitude per input channel: the axis A1111 1.10 reads
        for name in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
            if getattr(self, name):
                args[name] = ",".join(f"{v:g}" for v in getattr(self, name))
        lr = self.block_lr_weight
        if len(lr) == 25:  # kohya's own keys for SD1/SD2
            for name, part in (("down_lr_weight", lr[:12]), ("mid_lr_weight", lr[12:13]), ("up_lr_weight", lr[13:])):
                args[name] = ",".join(f"{v:g}" for v in part)
        elif lr:
            args["block_lr_weight"] = ",".join(f"{v:g}" for v in lr)
        return args
