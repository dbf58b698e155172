"""LoRA targets of a diffusers FLUX.1 / Chroma transformer (and FLUX.1's CLIP-L), by module path.

Why by path: the core imports no diffusers; the block layout is fixed (`transformer_blocks.N`,
`single_transformer_blocks.N`) and the BFL table in `naming_flux` already says which Linear is what.
Like kohya's `lora_flux.py`, only Linear layers inside the blocks are targets; users pick layer
kinds (attention, MLP, modulation) and block indices. Targets get run-time names per diffusers
module (`lora_transformer_...`); `flux_format.fuse_flux_state_dict` writes them under BFL keys.
"""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

from lora_trainer.lora import discovery, naming_flux
from lora_trainer.lora.target import LoraTarget

LAYER_KINDS = ("attn", "mlp", "mod")
_MOD = ("norm1.linear", "norm1_context.linear", "norm.linear")
_MLP = ("ff.", "ff_context.", "proj_mlp")


def layer_kinds(child: str, single: bool) -> set[str]:
    """Kinds a block child belongs to; a single block's `proj_out` (BFL `linear2`) reads both the
    attention and the MLP output, so it belongs to both."""
    if child in _MOD:
        return {"mod"}
    if single and child == "proj_out":
        return {"attn", "mlp"}
    if child.startswith(_MLP):
        return {"mlp"}
    return {"attn"}


def count_blocks(transformer: nn.Module) -> tuple[int, int]:
    """(double, single) block counts of a diffusers Flux/Chroma transformer."""
    double = len(getattr(transformer, "transformer_blocks", ()))
    return double, len(getattr(transformer, "single_transformer_blocks", ()))


def flux_transformer_targets(transformer: nn.Module, *, chroma: bool, layers: Collection[str] = LAYER_KINDS,
                             double_blocks: str | None = "all", single_blocks: str | None = "all",
                             fused: bool = False) -> list[LoraTarget]:
    """Linear layers of the chosen kinds in the chosen blocks (`double_blocks`/`single_blocks`:
    "all", "none", or indices like "0-9,12"). Chroma has no modulation layers to choose.

    `fused`: the Linears that make up one fused BFL weight (q/k/v -> `qkv`; q/k/v + `proj_mlp` ->
    single-block `linear1`) become one "rows" target named by the BFL key, as on Forge's model (either
    layer kind selects the whole fused module). LoHa, LoKr and DoRA need it: their delta on the fused
    weight is not the stack of per-part deltas, so only training the fused module writes an exact file."""
    unknown = set(layers) - set(LAYER_KINDS)
    if unknown:
        raise ValueError(f"flux layers: unknown kind(s) {sorted(unknown)}; choose from {', '.join(LAYER_KINDS)}")
    n_double, n_single = count_blocks(transformer)
    keep = {"double": naming_flux.parse_block_selection(double_blocks, n_double, "flux double_blocks"),
            "single": naming_flux.parse_block_selection(single_blocks, n_single, "flux single_blocks")}
    out: list[LoraTarget] = []
    for path, mod in transformer.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        where = naming_flux.block_index(path)
        if where is None or where[1] not in keep[where[0]]:
            continue
        child = path.split(".", 2)[2]
        if not layer_kinds(child, where[0] == "single") & set(layers):
            continue
        try:
            naming_flux.bfl_slot(path, chroma)
        except ValueError:
            continue  # e.g. a layer the file format has no key for
        out.append(LoraTarget(naming_flux.internal_name(path), mod, "linear", "unet"))
    return _fuse_targets(transformer, out, chroma) if fused else out


def _fuse_targets(transformer: nn.Module, targets: list[LoraTarget], chroma: bool) -> list[LoraTarget]:
    """Per-module targets -> one "rows" target per fused BFL module (all its parts, in row order)."""
    modules = dict(transformer.named_modules())
    out: list[LoraTarget] = []
    seen: set[str] = set()
    for t in targets:
        slot = naming_flux.bfl_slot(naming_flux.internal_to_path(t.name), chroma)
        if slot.parts == 1:
            out.append(t)
        elif slot.path not in seen:
            seen.add(slot.path)
            parts = tuple(modules[p] for p in naming_flux.slot_paths(slot.path))
            out.append(LoraTarget(naming_flux.bfl_kohya_name(slot.path), parts, "rows", "unet"))
    return out


def flux_clip_targets(clip: nn.Module) -> list[LoraTarget]:
    """CLIP-L text-encoder targets of FLUX.1, named `lora_te1_...` as kohya / Forge / ComfyUI read them."""
    return discovery.text_encoder_targets(clip, naming_flux.CLIP_PREFIX)


_BFL_KINDS = {"img_attn.qkv": {"attn"}, "img_attn.proj": {"attn"}, "txt_attn.qkv": {"attn"},
              "txt_attn.proj": {"attn"}, "img_mlp.0": {"mlp"}, "img_mlp.2": {"mlp"}, "txt_mlp.0": {"mlp"},
              "txt_mlp.2": {"mlp"}, "img_mod.lin": {"mod"}, "txt_mod.lin": {"mod"},
              "linear1": {"attn", "mlp"}, "linear2": {"attn", "mlp"}, "modulation.lin": {"mod"}}


def bfl_flux_targets(diffusion_model: nn.Module, *, layers: Collection[str] = LAYER_KINDS,
                     double_blocks: str | None = "all", single_blocks: str | None = "all") -> list[LoraTarget]:
    """Targets of a BFL-layout FLUX.1 / Chroma transformer (Forge's `forge_objects.unet.model.diffusion_model`,
    ComfyUI's, kohya's): the file's own modules, so names are the kohya keys and nothing is fused. A
    single block's `linear1` / `linear2` carry both attention and MLP, so either kind selects them."""
    unknown = set(layers) - set(LAYER_KINDS)
    if unknown:
        raise ValueError(f"flux layers: unknown kind(s) {sorted(unknown)}; choose from {', '.join(LAYER_KINDS)}")
    counts = {"double": len(getattr(diffusion_model, "double_blocks", ())),
              "single": len(getattr(diffusion_model, "single_blocks", ()))}
    keep = {"double": naming_flux.parse_block_selection(double_blocks, counts["double"], "flux double_blocks"),
            "single": naming_flux.parse_block_selection(single_blocks, counts["single"], "flux single_blocks")}
    out: list[LoraTarget] = []
    for path, mod in diffusion_model.named_modules():
        if discovery.layer_kind(mod) != "linear":  # Forge builds its own `Linear` (fp8, GGUF, NF4 ones too)
            continue
        where = naming_flux.block_index(path)
        if where is None or where[1] not in keep[where[0]]:
            continue
        kinds = _BFL_KINDS.get(path.split(".", 2)[2])
        if kinds and kinds & set(layers):
            out.append(LoraTarget(naming_flux.bfl_kohya_name(path), mod, "linear", "unet"))
    return out
