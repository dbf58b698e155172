"""LoRA modules attached to a frozen base by wrapping `forward`, never by touching its weights.

Why: the base may be the WebUI's live model. Replacing only the instance's `forward` (and putting
the original back on `detach()`) leaves every base parameter, buffer, dtype, device and hook exactly
as it was, so an interrupted or failed run cannot damage the host's model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lora_trainer.errors import UserError
from lora_trainer.lora.blocks import TargetPlan, resolve_targets
from lora_trainer.lora.kinds import UNSUPPORTED, detect_kind, make_module, split_key
from lora_trainer.lora.modules_base import WeightsMismatch
from lora_trainer.lora.modules_lora import LoRAModule
from lora_trainer.lora.naming import kohya_name_alternatives
from lora_trainer.lora.spec import NetworkSpec
from lora_trainer.lora.target import LoraTarget

__all__ = ["LoRAModule", "LoRANetwork", "LoRAWeightsError", "LoadReport", "infer_rank_alpha", "split_kohya_key"]

KINDS = ("linear", "conv1x1", "conv", "fused_qkv", "rows")


class LoRAWeightsError(UserError):
    """A LoRA file cannot continue this run (shape or rank mismatch)."""


@dataclass
class LoadReport:
    """What `load_kohya_state_dict` did: keys we expected but the file lacked, and file keys we ignored."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected


class RankAlpha(NamedTuple):
    rank: int
    alpha: float
    conv_rank: int
    conv_alpha: float | None


def split_kohya_key(key: str) -> tuple[str, str]:
    """`lora_unet_x.lora_down.weight` -> (`lora_unet_x`, `.lora_down.weight`); ('', '') if not an adapter key
    (LoRA, LoHa `hada_*`, LoKr `lokr_*`, `dora_scale`)."""
    return split_key(key)


def infer_rank_alpha(sd: dict[str, torch.Tensor]) -> RankAlpha:
    """Rank/alpha of a kohya state dict (most common value), so a run can continue from any file.

    Linear/1x1 modules give `rank`/`alpha`; k x k conv modules (LoCon) give `conv_rank`/`conv_alpha`
    (0/None when absent). A missing `.alpha` counts as alpha = rank (what consumers assume).
    """
    ranks: Counter[int] = Counter()
    alphas: Counter[float] = Counter()
    cranks: Counter[int] = Counter()
    calphas: Counter[float] = Counter()
    for key, t in sd.items():
        name, suf = split_kohya_key(key)
        if suf != ".lora_down.weight":
            continue
        r = int(t.shape[0])
        a_t = sd.get(name + ".alpha")
        a = float(a_t.item()) if a_t is not None else float(r)
        if t.dim() == 4 and tuple(t.shape[2:]) != (1, 1):
            cranks[r] += 1
            calphas[a] += 1
        else:
            ranks[r] += 1
            alphas[a] += 1
    if not ranks and not cranks:
        raise LoRAWeightsError("network_weights: the file has no `.lora_down.weight` keys; is it a kohya LoRA?")
    rank = ranks.most_common(1)[0][0] if ranks else 0
    alpha = alphas.most_common(1)[0][0] if alphas else float(rank)
    crank = cranks.most_common(1)[0][0] if cranks else 0
    calpha = calphas.most_common(1)[0][0] if calphas else None
    return RankAlpha(rank, alpha, crank, calpha)


def _linear_in_out(mod: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a Linear-like layer that is not an nn.Linear (Forge's own Linear classes, whose
    weight may be quantised: bitsandbytes keeps the real shape in `quant_state`, GGUF in `shape`)."""
    w = getattr(mod, "weight", None)
    if w is None:
        return None
    shape = getattr(getattr(w, "quant_state", None), "shape", None) or w.shape
    return (int(shape[1]), int(shape[0])) if len(shape) == 2 else None


class _Attachment:
    """One wrapped base module: its target, the LoRA(s) and the forward that was there before."""

    def __init__(self, target: LoraTarget, loras: list[LoRAModule]):
        self.target = target
        self.loras = loras
        self.had_instance_forward = False
        self.saved_forward: Callable[..., Any] | None = None
        self.out_proj_lora: LoRAModule | None = None  # fused_qkv only: LoRA on the MHA's out_proj
        self.saved_rows: list[tuple[bool, Any]] = []  # rows only: (had instance forward, it) per Linear


def _rows_out(lora: nn.Module, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows lo:hi of one adapter's output on input `x` (a "rows" target: several Linears that read the same
    input and are one fused weight in the file, such as FLUX.1's q/k/v inside BFL's `qkv`)."""
    if isinstance(lora, LoRAModule):
        h = x.to(lora.lora_down.weight.dtype)
        if lora.dropout > 0 and lora.training:
            h = F.dropout(h, lora.dropout)
        out = F.linear(F.linear(h, lora.lora_down.weight), lora.lora_up.weight[lo:hi])
        return out if lora.scale == 1.0 else out * lora.scale
    w = lora.delta_rows(lo, hi)
    h = x.to(w.dtype)
    if lora.dropout > 0 and lora.training:
        h = F.dropout(h, lora.dropout)
    return F.linear(h, w)


def _row_spans(mods: tuple[nn.Module, ...]) -> list[tuple[int, int]]:
    spans, row = [], 0
    for m in mods:
        spans.append((row, row + int(m.weight.shape[0])))
        row += int(m.weight.shape[0])
    return spans


def _fused_weight(mods: tuple[nn.Module, ...]) -> torch.Tensor:
    """The stacked weight of a "rows" target (float8 storage upcast: float8 has no cat on every device)."""
    ws = [m.weight.detach() for m in mods]
    ws = [w.float() if w.is_floating_point() and w.element_size() == 1 else w for w in ws]
    return torch.cat(ws, 0)


class LoRANetwork(nn.Module):
    """All LoRA modules of one run. Holds no reference to base parameters in its own state.

    `multiplier` scales every delta at run time (0 -> the exact base output). Parameters are fp32
    by default whatever the base dtype; inputs are cast in and outputs cast back.
    """

    def __init__(self, targets: Iterable[LoraTarget], rank: int, alpha: float | None = None,
                 dropout: float = 0.0, conv_rank: int = 0, conv_alpha: float | None = None,
                 dtype: torch.dtype = torch.float32, *, spec: NetworkSpec | None = None):
        super().__init__()
        if rank <= 0:
            raise ValueError("rank must be > 0")
        # the spec picks the kind (lora/locon/loha/lokr/dora) and block-wise ranks; without one the
        # arguments describe plain LoRA/LoCon as before
        self.spec = spec or NetworkSpec("lora", int(rank), alpha, int(conv_rank or 0), conv_alpha, float(dropout))
        targets = list(targets)
        self.plans: dict[str, TargetPlan] = {p.target.name: p for p in resolve_targets(targets, self.spec)}
        if spec is not None:
            targets = [t for t in targets if t.name in self.plans]
            rank, alpha, dropout = spec.rank, spec.effective_alpha, spec.dropout
            conv_rank, conv_alpha = spec.effective_conv_rank, spec.effective_conv_alpha
        self.rank = int(rank)
        self.alpha = float(alpha if alpha is not None else rank)
        self.conv_rank = int(conv_rank or 0)
        self.conv_alpha = float(conv_alpha if conv_alpha is not None else self.conv_rank)
        self.dropout = float(dropout)
        self.multiplier = 1.0
        self.loras = nn.ModuleDict()
        self._groups: dict[str, str] = {}
        self._attachments: list[_Attachment] = []
        self.skipped: list[str] = []
        self.attached = False
        self._merged: list[tuple[nn.Parameter, torch.Tensor]] = []
        for t in targets:
            self._add(t, dtype)
        self._absorb_out_projs()
        if not self._attachments:
            raise ValueError("no LoRA targets: nothing to train")

    @classmethod
    def from_spec(cls, targets: Iterable[LoraTarget], spec: NetworkSpec,
                  dtype: torch.dtype = torch.float32) -> LoRANetwork:
        """The network of `spec` (type, ranks, block-wise rules) on `targets`."""
        return cls(targets, spec.rank, dtype=dtype, spec=spec)

    # ---- construction -------------------------------------------------------------------------
    def _new(self, name: str, base: nn.Module, rank: int, alpha: float, conv: bool, dtype: torch.dtype,
             in_out: tuple[int, int] | None = None, part: int = 0,
             weight_fn: Callable[[], torch.Tensor] | None = None) -> nn.Module:
        if name in self.loras:
            raise ValueError(f"duplicate LoRA name {name!r}")
        if not isinstance(name, str) or "." in name or not name:
            raise ValueError(f"bad LoRA name {name!r}: kohya names contain no dots")
        fused = isinstance(base, nn.MultiheadAttention)  # in_out alone also comes with quantised Linears (Forge)
        w = base.in_proj_weight if fused else base.weight
        if weight_fn is not None:  # a "rows" target: the stacked weight of its Linears
            pass
        elif fused:  # q/k/v: this module's slice of in_proj_weight
            e = in_out[0]
            weight_fn = lambda: base.in_proj_weight[part * e:(part + 1) * e]  # noqa: E731
        else:
            weight_fn = lambda: base.weight  # noqa: E731
        plan = self.plans.get(name)
        if plan is not None and plan.target.kind != "fused_qkv":
            rank, alpha = plan.rank, plan.alpha
        sp = self.spec
        m = make_module(sp.algo, name, base, rank, alpha, conv=conv, decompose=sp.weight_decompose, dtype=dtype,
                        device=w.device, in_out=in_out, weight_fn=weight_fn, factor=sp.lokr_factor,
                        full_rank=sp.lokr_full_rank)
        m.dropout = self.dropout
        self.loras[name] = m
        return m

    def _add(self, t: LoraTarget, dtype: torch.dtype) -> None:
        mod = t.module
        if t.kind not in KINDS:
            raise ValueError(f"{t.name}: unknown target kind {t.kind!r} (one of {KINDS})")
        if t.kind == "linear":
            in_out = None if isinstance(mod, nn.Linear) else _linear_in_out(mod)
            if in_out is None and not isinstance(mod, nn.Linear):
                raise ValueError(f"{t.name}: kind 'linear' needs nn.Linear, got {type(mod).__name__}")
            loras = [self._new(t.name, mod, self.rank, self.alpha, False, dtype, in_out=in_out)]
        elif t.kind == "rows":
            mods = tuple(mod)
            ins = {int(m.weight.shape[1]) for m in mods}
            if not mods or not all(isinstance(m, nn.Linear) for m in mods) or len(ins) != 1:
                raise ValueError(f"{t.name}: kind 'rows' needs nn.Linear layers that read the same input")
            plan = self.plans.get(t.name)
            r, al = (plan.rank, plan.alpha) if plan is not None else (self.rank, self.alpha)
            in_out = (ins.pop(), sum(int(m.weight.shape[0]) for m in mods))
            loras = [self._new(t.name, mods[0], r, al, False, dtype, in_out=in_out,
                               weight_fn=lambda: _fused_weight(mods))]
        elif t.kind in ("conv1x1", "conv"):
            if not isinstance(mod, nn.Conv2d):
                raise ValueError(f"{t.name}: kind {t.kind!r} needs nn.Conv2d, got {type(mod).__name__}")
            is_1x1 = tuple(mod.kernel_size) == (1, 1)
            if t.kind == "conv1x1" and not is_1x1:
                raise ValueError(f"{t.name}: kind 'conv1x1' but kernel is {mod.kernel_size}")
            if is_1x1:
                loras = [self._new(t.name, mod, self.rank, self.alpha, True, dtype)]
            elif self.conv_rank <= 0:
                self.skipped.append(t.name)
                return
            else:
                loras = [self._new(t.name, mod, self.conv_rank, self.conv_alpha, True, dtype)]
        else:  # fused_qkv
            if not isinstance(mod, nn.MultiheadAttention) or getattr(mod, "in_proj_weight", None) is None:
                raise ValueError(f"{t.name}: kind 'fused_qkv' needs nn.MultiheadAttention with in_proj_weight")
            if len(t.names) != 3:
                raise ValueError(f"{t.name}: kind 'fused_qkv' needs names=(q, k, v)")
            e = mod.embed_dim
            plan = self.plans.get(t.name)
            r, al = (plan.rank, plan.alpha) if plan is not None else (self.rank, self.alpha)
            loras = [self._new(n, mod, r, al, False, dtype, in_out=(e, e), part=i) for i, n in enumerate(t.names)]
        for lo in loras:
            self._groups[lo.lora_name] = t.group
        self._attachments.append(_Attachment(t, loras))

    def _absorb_out_projs(self) -> None:
        """nn.MultiheadAttention reads `out_proj.weight` functionally and never calls
        `out_proj.forward`, so a LoRA on it is applied by its attention's fused wrapper instead."""
        fused = {id(a.target.module.out_proj): a for a in self._attachments if a.target.kind == "fused_qkv"}
        keep = []
        for a in self._attachments:
            owner = fused.get(id(a.target.module)) if a.target.kind == "linear" else None
            if owner is not None:
                owner.out_proj_lora = a.loras[0]
                continue
            if isinstance(a.target.module, nn.modules.linear.NonDynamicallyQuantizableLinear):
                raise ValueError(f"{a.target.name}: the out_proj of an nn.MultiheadAttention is only reached through "
                                 "its attention; add that attention as a 'fused_qkv' target too")
            keep.append(a)
        self._attachments = keep

    # ---- attach / detach ----------------------------------------------------------------------
    def attach(self) -> LoRANetwork:
        """Wrap every target's forward. Idempotent."""
        if self.attached:
            return self
        for a in self._attachments:
            mod = a.target.module
            if a.target.kind == "rows":
                a.saved_rows = [("forward" in m.__dict__, m.__dict__.get("forward")) for m in mod]
                for m, (lo, hi) in zip(mod, _row_spans(mod), strict=True):
                    m.forward = self._make_rows_forward(m.forward, a.loras[0], lo, hi)
                continue
            a.had_instance_forward = "forward" in mod.__dict__
            a.saved_forward = mod.__dict__.get("forward")
            orig = mod.forward
            wrapper = (self._make_fused_forward(mod, orig, a.loras, a.out_proj_lora)
                       if a.target.kind == "fused_qkv" else self._make_forward(orig, a.loras[0]))
            mod.forward = wrapper
        self.attached = True
        return self

    def detach(self) -> None:
        """Put every original forward back; the base is then exactly as before `attach()`.

        Idempotent. Several networks on one module must be detached in reverse attach order.
        """
        if not self.attached:
            return
        for a in reversed(self._attachments):
            mod = a.target.module
            if a.target.kind == "rows":
                for m, (had, saved) in zip(mod, a.saved_rows, strict=True):
                    if had:
                        m.forward = saved
                    else:
                        m.__dict__.pop("forward", None)
                a.saved_rows = []
                continue
            if a.had_instance_forward:
                mod.forward = a.saved_forward
            else:
                mod.__dict__.pop("forward", None)
            a.saved_forward = None
        self.attached = False

    def _make_forward(self, orig: Callable[..., Any], lora: LoRAModule) -> Callable[..., Any]:
        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            y = orig(x, *args, **kwargs)
            mult = self.multiplier
            if mult == 0:
                return y
            out = lora.lora_out(x)
            return y + (out if mult == 1.0 else out * mult).to(y.dtype)
        return forward

    def _make_rows_forward(self, orig: Callable[..., Any], lora: nn.Module, lo: int, hi: int) -> Callable[..., Any]:
        def forward(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            y = orig(x, *args, **kwargs)
            mult = self.multiplier
            if mult == 0:
                return y
            out = _rows_out(lora, x, lo, hi)
            return y + (out if mult == 1.0 else out * mult).to(y.dtype)
        return forward

    def _make_fused_forward(self, mod: nn.Module, orig: Callable[..., Any], loras: list[LoRAModule],
                            out_lora: LoRAModule | None) -> Callable[..., Any]:
        # open_clip's attention reads `in_proj_weight` and `out_proj.weight` inside
        # F.multi_head_attention_forward, so the deltas go on the weights for the duration of the
        # call only (the original Parameters are put back, even on error).
        def forward(*args: Any, **kwargs: Any) -> Any:
            mult = self.multiplier
            if mult == 0:
                return orig(*args, **kwargs)
            params, out_params = mod._parameters, mod.out_proj._parameters
            w0, ow0 = params["in_proj_weight"], out_params["weight"]
            delta = torch.cat([lo.delta_weight() for lo in loras], 0) * mult
            params["in_proj_weight"] = w0 + delta.to(w0.dtype)
            if out_lora is not None:
                out_params["weight"] = ow0 + (out_lora.delta_weight() * mult).to(ow0.dtype)
            try:
                return orig(*args, **kwargs)
            finally:
                params["in_proj_weight"] = w0
                out_params["weight"] = ow0
        return forward

    # ---- training helpers ---------------------------------------------------------------------
    def set_multiplier(self, value: float) -> None:
        self.multiplier = float(value)

    def names(self, group: str | None = None) -> list[str]:
        return [n for n in self.loras if group is None or self._groups[n] == group]

    def lr_weight(self, name: str) -> float:
        """The block-wise lr multiplier of one module (1.0 without block rules)."""
        plan = self.plans.get(name) or next((p for p in self.plans.values() if name in p.target.names), None)
        return plan.lr_weight if plan is not None else 1.0

    def param_groups(self, unet_lr: float | None, te_lr: float | None) -> list[dict[str, Any]]:
        """Optimizer groups by target group (and block lr weight). A group whose lr is 0 or None is
        frozen (kohya: lr 0 = off). Groups are named `unet`, `text_encoder`, or `unet x0.5` for a weight."""
        out = []
        for group, lr in (("unet", unet_lr), ("text_encoder", te_lr)):
            by_weight: dict[float, list[nn.Parameter]] = {}
            for n in self.names(group):
                by_weight.setdefault(self.lr_weight(n), []).extend(self.loras[n].parameters())
            for wt, params in by_weight.items():
                if not lr:
                    for p in params:
                        p.requires_grad_(False)
                    continue
                name = group if wt == 1.0 else f"{group} x{wt:g}"
                out.append({"params": params, "lr": float(lr) * wt, "name": name})
        return out

    # ---- kohya state dict ---------------------------------------------------------------------
    def kohya_state_dict(self, dtype: torch.dtype | None = torch.float16) -> dict[str, torch.Tensor]:
        """`<name><suffix>` tensors in each kind's LyCORIS/kohya layout (`.alpha` 0-dim, always), on CPU."""
        return {f"{name}{suf}": t for name, m in self.loras.items() for suf, t in m.file_tensors(dtype).items()}

    def _file_groups(self, sd: dict[str, torch.Tensor], rep: LoadReport) -> dict[str, dict[str, torch.Tensor]]:
        """File tensors grouped by our module name (`suffix -> tensor`); the rest go to `rep.unexpected`."""
        groups: dict[str, dict[str, torch.Tensor]] = {}
        file_names = {split_kohya_key(k)[0] for k in sd}
        for file_key, t in sd.items():
            name, suf = split_kohya_key(file_key)
            if suf in UNSUPPORTED:
                raise LoRAWeightsError(f"network_weights: {file_key}: Tucker-decomposed files (use_tucker) cannot be "
                                       "continued; train a new one or use a file made with use_tucker=false")
            if name not in self.loras:
                # the other UNet naming style (diffusers <-> LDM), unless the file has both
                alt = next((a for a in kohya_name_alternatives(name) if a in self.loras and a not in file_names), None)
                if alt is None:
                    rep.unexpected.append(file_key)
                    continue
                name = alt
            groups.setdefault(name, {})[suf] = t
        return groups

    @torch.no_grad()
    def load_kohya_state_dict(self, sd: dict[str, torch.Tensor], strict_shapes: bool = True) -> LoadReport:
        """Load a file's tensors into the matching modules (alpha taken from the file).

        Returns which of our modules the file lacked and which file keys matched nothing. A shape
        mismatch (different rank) or another network type raises `LoRAWeightsError` naming the key.
        """
        rep = LoadReport()
        groups = self._file_groups(sd, rep)
        for name, m in self.loras.items():
            got = groups.get(name, {})
            file_kind = detect_kind(got)
            want = self.spec.algo
            if got and file_kind is not None and file_kind != want:
                raise LoRAWeightsError(f"network_weights: {name} is a {file_kind} module but this run trains "
                                       f"{self.spec.network_type}; set network_type to the file's type")
            try:
                missing = m.load_file_tensors(got)
            except WeightsMismatch as e:
                if strict_shapes:
                    raise LoRAWeightsError(
                        f"network_weights: {name}{e.suffix} has shape {e.got} but this run needs {e.want}; "
                        "set lora_rank/conv_dim to the file's rank (see infer_rank_alpha)") from None
                rep.unexpected.extend(f"{name}{s}" for s in got)
                missing = [s for s in m.file_tensors(None) if s != ".alpha"]
            rep.missing.extend(f"{name}{s}" for s in missing)
            rep.loaded.extend(f"{name}{s}" for s in got
                              if s != ".alpha" and s not in missing and f"{name}{s}" not in rep.unexpected)
        return rep

    @torch.no_grad()
    def deltas(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """Effective weight delta per kohya name (times `multiplier`), in the base weight's layout."""
        return {n: m.delta_weight(dtype) * self.multiplier for n, m in self.loras.items()}

    def _base_weights(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(base weight, its delta) pairs, fused q/k/v stacked as in `in_proj_weight`."""
        out = []
        for a in self._attachments:
            mod = a.target.module
            if a.target.kind == "rows":
                d = a.loras[0].delta_weight()
                out.extend((m.weight, d[lo:hi]) for m, (lo, hi) in zip(mod, _row_spans(mod), strict=True))
            elif a.target.kind == "fused_qkv":
                out.append((mod.in_proj_weight, torch.cat([lo.delta_weight() for lo in a.loras], 0)))
                if a.out_proj_lora is not None:
                    out.append((mod.out_proj.weight, a.out_proj_lora.delta_weight()))
            else:
                out.append((mod.weight, a.loras[0].delta_weight()))
        return out

    @torch.no_grad()
    def merge_into_base(self) -> None:
        """Add the deltas (times `multiplier`) into the base weights, keeping exact copies.

        For fast inference only; `unmerge()` puts the saved copies back bit for bit. Refused while
        attached (the delta would count twice) or already merged.
        """
        if self.attached or self._merged:
            raise RuntimeError("merge_into_base: detach() first and merge only once")
        for w, d in self._base_weights():
            self._merged.append((w, w.detach().clone()))
            w.add_((d * self.multiplier).to(w.device, w.dtype))

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weights saved by `merge_into_base()` exactly."""
        for w, saved in reversed(self._merged):
            w.copy_(saved)
        self._merged = []

    def names_without_grad(self) -> list[str]:
        """Trainable modules that got no gradient in the last backward: a host wrapper (e.g. ldm's own
        gradient checkpointing, which differentiates only the block's parameters) cut them off."""
        return [n for n, m in self.loras.items() if m.probe().requires_grad and m.probe().grad is None]

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())
