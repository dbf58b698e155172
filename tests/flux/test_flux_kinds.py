"""LoHa, LoKr and DoRA on FLUX.1 and Chroma: the fused BFL modules (`qkv`, single-block `linear1`) are
trained as one module, so the file is exact in its consumers. Checked with Forge's own code (its
dispatching `load_lora`, key maps and `merge_lora_to_weight` from `backend/patcher/lora.py`, and its
BFL transformers, run from the mirror: see forge_code.py) and with LyCORIS's loader (lycoris-lora,
test-only): 0 unmatched keys, the merged weight = base + our delta (float64), the same output."""

from __future__ import annotations

import pytest
import torch
from flux_helpers import output_with, transformer_inputs
from safetensors.torch import load_file

from lora_trainer.lora.discovery_flux import flux_clip_targets, flux_transformer_targets
from lora_trainer.lora.flux_format import fuse_flux_state_dict
from lora_trainer.lora.metadata_flux import build_flux_metadata, load_flux_lora, save_flux_lora
from lora_trainer.lora.naming_flux import bfl_kohya_name, bfl_slot, internal_to_path
from lora_trainer.lora.network import LoRANetwork
from lora_trainer.lora.spec import NetworkSpec

SPECS = [NetworkSpec("loha", rank=4, alpha=2.0), NetworkSpec("lokr", rank=4, alpha=2.0),
         NetworkSpec("lokr", rank=4, alpha=2.0, lokr_factor=4, lokr_full_rank=True),
         NetworkSpec("dora", rank=4, alpha=2.0), NetworkSpec("loha", rank=4, alpha=2.0, dora_wd=True)]
IDS = ["loha", "lokr", "lokr-f4full", "dora", "loha-dorawd"]


def _randomize(net: LoRANetwork, seed: int = 0) -> None:
    """Every factor non-zero (a dropped or transposed factor shows), DoRA magnitudes moved off the norm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if n.endswith("dora_scale"):
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)


def _net(parts, spec: NetworkSpec, seed: int = 0) -> LoRANetwork:
    targets = flux_transformer_targets(parts["transformer"], chroma=parts["kind"] == "chroma", fused=True)
    net = LoRANetwork.from_spec(targets, spec, dtype=torch.float64)
    _randomize(net, seed)
    return net


def _file_name(run_name: str, chroma: bool) -> str:
    """The file key of a run-time module name: fused targets already carry it."""
    if run_name.startswith("lora_unet_"):
        return run_name
    return bfl_kohya_name(bfl_slot(internal_to_path(run_name), chroma).path)


def _parts(request, kind):
    return request.getfixturevalue("tiny_chroma" if kind == "chroma" else "tiny_flux")


def test_fused_targets_cover_every_part_once(tiny_flux, tiny_chroma):
    for parts in (tiny_flux, tiny_chroma):
        chroma = parts["kind"] == "chroma"
        plain = flux_transformer_targets(parts["transformer"], chroma=chroma)
        fused = flux_transformer_targets(parts["transformer"], chroma=chroma, fused=True)
        covered = [id(m) for t in fused for m in (t.module if t.kind == "rows" else (t.module,))]
        assert sorted(covered) == sorted(id(t.module) for t in plain)
        rows = {t.name for t in fused if t.kind == "rows"}
        assert rows == {f"lora_unet_double_blocks_{i}_{w}_attn_qkv" for i in (0, 1) for w in ("img", "txt")} | \
            {f"lora_unet_single_blocks_{i}_linear1" for i in (0, 1)}
        # a single block's linear1 is attention and MLP: either kind selects the whole fused module
        attn = flux_transformer_targets(parts["transformer"], chroma=chroma, fused=True, layers=("attn",))
        assert {t.name for t in attn if t.kind == "rows"} == rows


@pytest.mark.parametrize("kind", ["flux", "chroma"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_attach_detach_and_merge_are_exact(request, kind, spec):
    parts = _parts(request, kind)
    tr = parts["transformer"]
    before = {k: v.clone() for k, v in tr.state_dict().items()}
    kw = transformer_inputs(parts)
    with torch.no_grad():
        base = tr(**kw).sample
        net = _net(parts, spec).attach()
        ours = tr(**kw).sample
        net.set_multiplier(0.0)
        assert torch.equal(tr(**kw).sample, base)  # multiplier 0: the base output exactly
        net.set_multiplier(1.0)
        net.detach()
        assert torch.equal(tr(**kw).sample, base)
        assert not torch.allclose(ours, base)
        net.merge_into_base()
        merged = tr(**kw).sample
        net.unmerge()
    torch.testing.assert_close(merged, ours, rtol=1e-4, atol=2e-5)
    assert all(torch.equal(v, before[k]) for k, v in tr.state_dict().items())


def test_a_per_part_lycoris_module_is_refused_naming_the_key(tiny_flux):
    net = LoRANetwork.from_spec(flux_transformer_targets(tiny_flux["transformer"], chroma=False),
                                NetworkSpec("loha", rank=2))
    with pytest.raises(ValueError, match=r"lora_transformer_transformer_blocks_0_attn_to_q\.hada_w1_a.*fused"):
        fuse_flux_state_dict(net.kohya_state_dict(torch.float32), chroma=False)


@pytest.mark.parametrize("kind", ["flux", "chroma"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_file_round_trip_continues_exactly(request, kind, spec, tmp_path):
    parts = _parts(request, kind)
    net = _net(parts, spec, seed=3)
    meta = build_flux_metadata(kind=parts["kind"], output_name="k", rank=4, alpha=2.0,
                               network_module=spec.kohya_network_module(), network_args=spec.kohya_network_args())
    save_flux_lora(tmp_path / "k.safetensors", net.kohya_state_dict(torch.float64), kind=parts["kind"], metadata=meta)
    run_sd, file_meta = load_flux_lora(tmp_path / "k.safetensors")
    assert file_meta["ss_network_module"] == "lycoris.kohya"
    again = _net(parts, spec, seed=99)
    assert again.load_kohya_state_dict(run_sd).ok
    for name, d in net.deltas(torch.float64).items():
        assert torch.equal(again.deltas(torch.float64)[name], d), name


# ---- Forge ---------------------------------------------------------------------------------------
forge_code = pytest.importorskip("forge_code")
needs_forge = pytest.mark.skipif(not forge_code.available(), reason="no Forge mirror to run Forge's code from")


@needs_forge
@pytest.mark.parametrize("kind", ["flux", "chroma"])
@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_forge_loads_every_key_and_merges_our_delta(request, kind, spec, tmp_path):
    pytest.importorskip("einops")  # Forge's model files use it
    from test_flux_lora import _Clip, _forge_model, _KModel

    parts = _parts(request, kind)
    chroma = kind == "chroma"
    targets = flux_transformer_targets(parts["transformer"], chroma=chroma, fused=True)
    if not chroma:  # FLUX.1's CLIP-L LoRA (`lora_te1_...`): per module, nothing fused
        targets += flux_clip_targets(parts["text_encoder"])
    net = LoRANetwork.from_spec(targets, spec, dtype=torch.float64)
    _randomize(net, 5)
    save_flux_lora(tmp_path / "k.safetensors", net.kohya_state_dict(torch.float64), kind=parts["kind"],
                   metadata=build_flux_metadata(kind=parts["kind"], output_name="k", rank=4, alpha=2.0))
    lora = load_file(str(tmp_path / "k.safetensors"))
    deltas = net.deltas(torch.float64)
    ours = {_file_name(n, chroma): d for n, d in deltas.items() if not n.startswith("lora_te1_")}
    clip_ours = {n: d for n, d in deltas.items() if n.startswith("lora_te1_")}
    kw = transformer_inputs(parts)
    out = output_with(net, parts, kw)
    with forge_code.forge_modules(str(tmp_path / "forge")) as fm:
        model, unet_config, repo = _forge_model(fm, parts)
        keys = fm.patcher.model_lora_keys_unet(_KModel(model, unet_config, repo), {})
        patches, rest = fm.patcher.load_lora(lora, keys)
        # extensions-builtin/sd_forge_lora/networks.py: the UNet's keys first, then the text encoders'
        clip = _Clip(parts["text_encoder"], parts["text_encoder_2"])
        clip_patches, rest = fm.patcher.load_lora(rest, fm.patcher.model_lora_keys_clip(clip, {}))
        assert rest == {}, f"Forge would report {sorted(rest)} as not loaded"
        assert len(clip_patches) == len(clip_ours) == (0 if chroma else 12)
        for key, patch in clip_patches.items():
            w = clip.state_dict()[key].detach().double()
            merged = fm.patcher.merge_lora_to_weight([(1.0, patch, 1.0, None, None)], w,
                                                     computation_dtype=torch.float64)
            name = "lora_te1_" + key[len("clip_l.transformer."):-len(".weight")].replace(".", "_")
            torch.testing.assert_close(merged - w, clip_ours[name], rtol=1e-9, atol=1e-12, msg=name)
        params = dict(model.named_parameters())
        assert {"lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_") for k in patches} == \
            set(ours)
        with torch.no_grad():
            for key, patch in patches.items():
                assert isinstance(key, str)  # whole BFL weights: nothing patched by slice
                name = key[len("diffusion_model."):]
                w = params[name].detach().double()
                merged = fm.patcher.merge_lora_to_weight([(1.0, patch, 1.0, None, None)], w,
                                                         computation_dtype=torch.float64)
                file_name = "lora_unet_" + name[:-len(".weight")].replace(".", "_")
                torch.testing.assert_close(merged - w, ours[file_name], rtol=1e-9, atol=1e-12, msg=file_name)
                params[name].copy_(merged.float())
            args = {"img": kw["hidden_states"], "img_ids": kw["img_ids"][None], "txt": kw["encoder_hidden_states"],
                    "txt_ids": kw["txt_ids"][None], "timesteps": kw["timestep"]}
            if not chroma:
                args.update(y=kw["pooled_projections"], guidance=kw["guidance"])
            theirs = model.inner_forward(**args)
    torch.testing.assert_close(theirs, out, rtol=1e-4, atol=2e-5)


# ---- LyCORIS -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [s for s in SPECS if not s.weight_decompose],
                         ids=[i for i, s in zip(IDS, SPECS, strict=True) if not s.weight_decompose])
def test_lycoris_reads_the_fused_modules_with_our_delta(tiny_flux, spec):
    """LyCORIS's loader (`get_module` + `make_module`) on each fused module of the file, over a Linear
    holding the fused BFL weight: its output minus the base's is our delta applied to the input. (Its
    loader reads `dora_scale` on the output axis only; our input-axis DoRA, A1111's, is checked against
    LyCORIS's `wd_on_out=False` modules in tests/lora and against Forge above.)"""
    lyc_modules = pytest.importorskip("lycoris.modules")
    net = _net(tiny_flux, spec, seed=11)
    sd = fuse_flux_state_dict(net.kohya_state_dict(torch.float64), chroma=False)
    fused = {n: m for n, m in net.loras.items() if n.startswith("lora_unet_")}
    assert len(fused) == 6
    g = torch.Generator().manual_seed(2)
    for name, m in fused.items():
        out_dim, in_dim = m.shape
        base = torch.nn.Linear(in_dim, out_dim, bias=False, dtype=torch.float64)
        with torch.no_grad():
            base.weight.copy_(torch.randn(out_dim, in_dim, generator=g, dtype=torch.float64))
        kind, params = lyc_modules.get_module({k: v for k, v in sd.items() if k.startswith(name + ".")}, name)
        assert kind is not None, name
        old = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            lyc = lyc_modules.make_module(kind, params, name, base)
        finally:
            torch.set_default_dtype(old)
        x = torch.randn(3, in_dim, generator=g, dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(lyc(x) - base(x), x @ m.delta_weight(torch.float64).T, rtol=1e-9,
                                       atol=1e-12, msg=name)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_a_parts_rows_equal_the_rows_of_the_fused_delta(tiny_flux, spec):
    """Each part computes only its rows (LoHa: rows of the `_a` factors; LoKr: rows of w1 when the cut falls
    between w2 blocks; DoRA: from the whole fused weight, which its norm needs)."""
    net = _net(tiny_flux, spec, seed=13)
    for name, m in net.loras.items():
        if not name.endswith(("_qkv", "_linear1")):
            continue
        full = m.delta_weight()
        out = int(full.shape[0])
        for lo, hi in ((0, 64), (64, 128), (128, 192), (0, out), (3, 70)):
            if hi <= out:
                torch.testing.assert_close(m.delta_rows(lo, hi), full[lo:hi], rtol=1e-12, atol=1e-15,
                                           msg=f"{name} {lo}:{hi}")
