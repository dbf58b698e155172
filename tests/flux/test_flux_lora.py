"""FLUX.1 / Chroma LoRA files: targets, the exactly-equivalent fused q/k/v modules, metadata, and
conformance with diffusers (FluxPipeline / ChromaPipeline `.load_lora_weights`) and with Forge's own
key maps, loader and transformers (run from its sources, see forge_code.py)."""

from __future__ import annotations

import pytest
import torch
from flux_helpers import output_with, transformer_inputs

from lora_trainer.lora.discovery_flux import flux_clip_targets, flux_transformer_targets
from lora_trainer.lora.flux_format import check_lora_family, fuse_flux_state_dict, split_flux_state_dict
from lora_trainer.lora.metadata_flux import build_flux_metadata, load_flux_lora, save_flux_lora
from lora_trainer.lora.naming_flux import bfl_slot, internal_to_path
from lora_trainer.lora.network import LoRANetwork, LoRAWeightsError


def _randomize(net: LoRANetwork, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.loras.values():
            for p in (m.lora_down.weight, m.lora_up.weight):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def _network(parts, *, clip: bool = True, rank: int = 4, alpha: float = 2.0, seed: int = 0, **sel) -> LoRANetwork:
    chroma = parts["kind"] == "chroma"
    targets = flux_transformer_targets(parts["transformer"], chroma=chroma, **sel)
    if clip and not chroma:
        targets += flux_clip_targets(parts["text_encoder"])
    net = LoRANetwork(targets, rank=rank, alpha=alpha)
    _randomize(net, seed)
    return net


def _fixed(meta: dict) -> dict:
    """Metadata without the per-run session id and clock, so the files (and their header lengths) are the
    same every run."""
    return {**meta, "ss_session_id": "1", "ss_training_started_at": "0", "ss_training_finished_at": "0",
            "modelspec.date": "2026-01-01T00:00:00"}


def _names(sd):
    return {k.rsplit(".", 2)[0] if not k.endswith(".alpha") else k[:-len(".alpha")] for k in sd}


# ---- targets and names ---------------------------------------------------------------------------
def test_file_keys_are_kohyas_flux_names(tiny_flux, tiny_chroma):
    names = _names(fuse_flux_state_dict(_network(tiny_flux).kohya_state_dict(torch.float32), chroma=False))
    per_double = ["img_attn_qkv", "img_attn_proj", "img_mlp_0", "img_mlp_2", "img_mod_lin",
                  "txt_attn_qkv", "txt_attn_proj", "txt_mlp_0", "txt_mlp_2", "txt_mod_lin"]
    want = {f"lora_unet_double_blocks_{i}_{s}" for i in range(2) for s in per_double}
    want |= {f"lora_unet_single_blocks_{i}_{s}" for i in range(2) for s in ("linear1", "linear2", "modulation_lin")}
    want |= {f"lora_te1_text_model_encoder_layers_{i}_{s}" for i in range(2)
             for s in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                       "mlp_fc1", "mlp_fc2")}
    assert names == want
    chroma = _names(fuse_flux_state_dict(_network(tiny_chroma).kohya_state_dict(torch.float32), chroma=True))
    assert chroma == {n for n in want if "_mod_lin" not in n and "modulation" not in n and "lora_te1" not in n}


def test_layers_and_blocks_are_choosable(tiny_flux):
    t = tiny_flux["transformer"]
    only_attn = flux_transformer_targets(t, chroma=False, layers=["attn"], double_blocks="1", single_blocks="none")
    paths = {internal_to_path(x.name) for x in only_attn}
    assert paths == {f"transformer_blocks.1.attn.{m}" for m in
                     ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")}
    mod = flux_transformer_targets(t, chroma=False, layers=["mod"], double_blocks="none")
    assert {internal_to_path(x.name) for x in mod} == {"single_transformer_blocks.0.norm.linear",
                                                       "single_transformer_blocks.1.norm.linear"}
    for bad, word in (({"double_blocks": "0-5"}, "outside 0-1"), ({"single_blocks": "x"}, "not an index"),
                      ({"layers": ["ffn"]}, "unknown kind")):
        with pytest.raises(ValueError) as e:
            flux_transformer_targets(t, chroma=False, **bad)
        assert word in str(e.value) and "\n" not in str(e.value)


# ---- the fused module is exactly the separate ones -----------------------------------------------
@pytest.mark.parametrize("layers", [("attn", "mlp", "mod"), ("attn",)])
def test_fused_modules_equal_the_separate_deltas(tiny_flux, layers):
    net = _network(tiny_flux, clip=False, layers=layers, alpha=3.0)
    fused = fuse_flux_state_dict(net.kohya_state_dict(torch.float32), chroma=False)
    deltas = {n: d.double() for n, d in net.deltas(torch.float64).items()}
    by_bfl: dict[str, dict[int, torch.Tensor]] = {}
    for n, d in deltas.items():
        slot = bfl_slot(internal_to_path(n))
        by_bfl.setdefault(slot.path, {})[slot.part] = d
    for path, parts in by_bfl.items():
        name = "lora_unet_" + path.replace(".", "_")
        down, up = fused[name + ".lora_down.weight"].double(), fused[name + ".lora_up.weight"].double()
        got = up @ down * (fused[name + ".alpha"].item() / down.shape[0])
        rows = [parts.get(i) for i in range(4 if path.endswith("linear1") else (3 if path.endswith("qkv") else 1))]
        sizes = [64, 64, 64, 256] if path.endswith("linear1") else [64] * len(rows)
        want = torch.cat([r if r is not None else torch.zeros(s, 64, dtype=torch.float64)
                          for r, s in zip(rows, sizes, strict=True)])
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=name)
    if layers == ("attn",):  # the MLP rows of linear1 were not trained: zero, not dropped
        up = fused["lora_unet_single_blocks_0_linear1.lora_up.weight"]
        assert up.shape == (3 * 64 + 256, 3 * 4) and not up[192:].any()


def test_file_round_trip_is_bit_exact(tiny_flux, tmp_path):
    net = _network(tiny_flux)
    sd = net.kohya_state_dict(torch.float16)
    meta = _fixed(build_flux_metadata(kind="flux-dev", output_name="x", rank=4, alpha=2.0))
    save_flux_lora(tmp_path / "x.safetensors", sd, kind="flux-dev", metadata=meta)
    back, _ = load_flux_lora(tmp_path / "x.safetensors")
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    other = _network(tiny_flux, seed=5)
    report = other.load_kohya_state_dict(back)
    assert report.ok
    for n, d in net.deltas().items():
        torch.testing.assert_close(other.deltas()[n], d.half().float(), rtol=0, atol=1e-3)


def test_a_plain_fused_lora_splits_exactly(tiny_flux):
    """Files from other trainers train the fused weight with one shared down: split, each part gets the
    shared down and its rows of up (rank kept), which is still exact."""
    g = torch.Generator().manual_seed(2)
    sd = {"lora_unet_single_blocks_0_linear1.lora_down.weight": torch.randn(5, 64, generator=g, dtype=torch.float64),
          "lora_unet_single_blocks_0_linear1.lora_up.weight": torch.randn(448, 5, generator=g, dtype=torch.float64),
          "lora_unet_single_blocks_0_linear1.alpha": torch.tensor(2.5, dtype=torch.float64)}
    parts = split_flux_state_dict(sd)
    name = "lora_unet_single_blocks_0_linear1"
    full = sd[name + ".lora_up.weight"] @ sd[name + ".lora_down.weight"]
    rows = []
    for child in ("attn_to_q", "attn_to_k", "attn_to_v", "proj_mlp"):
        n = f"lora_transformer_single_transformer_blocks_0_{child}"
        rows.append(parts[n + ".lora_up.weight"] @ parts[n + ".lora_down.weight"] * parts[n + ".alpha"].item() / 5)
    torch.testing.assert_close(torch.cat(rows), full * 2.5 / 5, rtol=1e-12, atol=1e-14)


def test_peft_layout_keys(tiny_flux, tiny_chroma, tmp_path):
    sd = _network(tiny_flux, seed=2).kohya_state_dict(torch.float32)
    meta = save_flux_lora(tmp_path / "p.safetensors", sd, kind="flux-dev", layout="peft",
                          metadata=_fixed(build_flux_metadata(kind="flux-dev", output_name="p", rank=4, alpha=2.0)))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "p.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["modelspec.architecture"] == meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert "transformer.single_transformer_blocks.1.proj_mlp.lora_A.weight" in keys
    assert "text_encoder.text_model.encoder.layers.1.mlp.fc2.lora_B.weight" in keys
    assert not [k for k in keys if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
    with pytest.raises(ValueError, match="Chroma"):
        save_flux_lora(tmp_path / "c.safetensors", _network(tiny_chroma).kohya_state_dict(torch.float32),
                       kind="chroma", metadata={}, layout="peft")


def test_chroma_files_hold_no_key_chroma_lacks(tiny_chroma, tiny_flux):
    sd = _network(tiny_chroma).kohya_state_dict(torch.float32)
    fused = fuse_flux_state_dict(sd, chroma=True)
    assert not [k for k in fused if "mod" in k or k.startswith("lora_te")]
    flux_sd = _network(tiny_flux, layers=["mod"], clip=False).kohya_state_dict(torch.float32)
    with pytest.raises(ValueError, match="not a Chroma"):
        fuse_flux_state_dict(flux_sd, chroma=True)


def test_metadata_says_flux(tmp_path):
    meta = build_flux_metadata(kind="flux-dev", output_name="mine", rank=16, alpha=16, resolution=1024)
    assert meta["modelspec.architecture"] == "flux-1-dev/lora"
    assert meta["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"  # Forge: SdVersion.Flux
    assert meta["ss_base_model_version"] == "flux1" and meta["ss_network_module"] == "networks.lora_flux"
    assert "modelspec.prediction_type" not in meta and meta["ss_network_dim"] == "16"
    assert build_flux_metadata(kind="flux-schnell", output_name="s", rank=4, alpha=4)["modelspec.architecture"] == \
        "flux-1-schnell/lora"
    chroma = build_flux_metadata(kind="chroma", output_name="c", rank=4, alpha=4)
    assert (chroma["modelspec.architecture"], chroma["ss_base_model_version"]) == ("chroma/lora", "chroma")
    from lora_trainer.lora.metadata_flux import write_flux_sidecars

    out = write_flux_sidecars(tmp_path / "mine.safetensors", kind="flux-dev", trigger_words="zqx",
                              preferred_weight=1.0)
    import json

    data = json.loads(out["json"].read_text())
    assert data["sd version"] == "Flux" and data["activation text"] == "zqx"


def test_a_lora_of_the_other_family_is_refused_in_one_line():
    sd_keys = ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]
    flux_keys = ["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"]
    with pytest.raises(LoRAWeightsError) as e:
        check_lora_family(sd_keys, "flux", "network_weights old.safetensors")
    assert "Stable Diffusion LoRA" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(LoRAWeightsError) as e:
        check_lora_family(flux_keys, "sd", "network_weights flux.safetensors")
    assert "FLUX.1/Chroma LoRA" in str(e.value)
    check_lora_family(flux_keys, "flux", "x")
    check_lora_family(["lora_te1_text_model_encoder_layers_0_mlp_fc1.alpha"], "sd", "x")  # text encoder only: either


def test_multiplier_zero_is_the_base_output_exactly(tiny_flux):
    kw = transformer_inputs(tiny_flux)
    with torch.no_grad():
        base = tiny_flux["transformer"](**kw).sample
        net = _network(tiny_flux, clip=False).attach()
        try:
            with_lora = tiny_flux["transformer"](**kw).sample
            net.set_multiplier(0.0)
            zero = tiny_flux["transformer"](**kw).sample
        finally:
            net.detach()
    assert not torch.equal(with_lora, base) and torch.equal(zero, base)


# ---- diffusers -----------------------------------------------------------------------------------
def _peft_layers(*models) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for model in models for m in model.modules())


def _fresh(kind: str):
    from lora_trainer.models.flux_tiny import build_tiny_flux_parts, make_pipeline

    parts = build_tiny_flux_parts(kind)
    return parts, make_pipeline(parts)


@pytest.mark.parametrize("kind,layout", [("flux", "kohya"), ("chroma", "kohya"), ("flux", "peft")])
def test_file_loads_in_diffusers_with_equal_deltas(kind, layout, tmp_path):
    """diffusers' kohya Flux converter hard-codes the real width (3072 / 12288) for single-block `linear1`,
    so on the tiny model that module is left out of kohya files here and checked at real width below;
    the PEFT layout has no fused modules and is checked whole."""
    parts, pipe = _fresh(kind)
    chroma = kind == "chroma"
    targets = [t for t in flux_transformer_targets(parts["transformer"], chroma=chroma)
               if layout == "peft" or not bfl_slot(internal_to_path(t.name), chroma).path.endswith("linear1")]
    if not chroma:
        targets += flux_clip_targets(parts["text_encoder"])
    net = LoRANetwork(targets, rank=4, alpha=2.0)
    _randomize(net, 1)
    meta = _fixed(build_flux_metadata(kind=parts["kind"], output_name="lora", rank=4, alpha=2.0))
    save_flux_lora(tmp_path / "lora.safetensors", net.kohya_state_dict(torch.float32), kind=parts["kind"],
                   metadata=meta, layout=layout)
    kw = transformer_inputs(parts)
    ours = output_with(net, parts, kw)
    before = {t.name: t.module.weight.detach().clone() for t in targets}
    pipe.load_lora_weights(str(tmp_path), weight_name="lora.safetensors", adapter_name="ours")
    models = [parts["transformer"]] + ([] if chroma else [parts["text_encoder"]])
    assert _peft_layers(*models) == len(targets)  # one diffusers LoRA layer per trained module: none dropped
    pipe.fuse_lora(components=["transformer"] + ([] if chroma else ["text_encoder"]))
    want = net.deltas(torch.float64)
    for t in targets:
        got = t.module.weight.detach().double() - before[t.name].double()
        torch.testing.assert_close(got, want[t.name], rtol=1e-5, atol=1e-6, msg=t.name)
    with torch.no_grad():
        torch.testing.assert_close(parts["transformer"](**kw).sample, ours, rtol=1e-4, atol=1e-5)


def test_single_block_linear1_reads_back_in_diffusers_at_real_width(tmp_path):
    """At FLUX.1's real width (hidden 3072, MLP 12288), on a meta-device model: diffusers reads our fused
    `linear1` back into q/k/v/proj_mlp LoRAs whose products equal the trained ones, with names and shapes
    of the real model's modules. (Products are compared on random probe vectors: the full 12288 x 3072 deltas
    would take seconds to compare on a small CPU.)"""
    from accelerate import init_empty_weights
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from lora_trainer.models.flux_configs import shipped_config

    g = torch.Generator().manual_seed(4)
    rank, alpha = 2, 1.0
    sd, want = {}, {}
    for child, out in (("attn_to_q", 3072), ("attn_to_k", 3072), ("attn_to_v", 3072), ("proj_mlp", 12288)):
        n = f"lora_transformer_single_transformer_blocks_1_{child}"
        sd[n + ".lora_down.weight"] = torch.randn(rank, 3072, generator=g) * 0.1
        sd[n + ".lora_up.weight"] = torch.randn(out, rank, generator=g) * 0.1
        sd[n + ".alpha"] = torch.tensor(alpha)
        up, down = sd[n + ".lora_up.weight"].double(), sd[n + ".lora_down.weight"].double()
        want[internal_to_path(n)] = (up, down * alpha / rank)
    probe = torch.randn(3072, 3, generator=g, dtype=torch.float64)
    save_flux_lora(tmp_path / "big.safetensors", sd, kind="flux-dev",
                   metadata=_fixed(build_flux_metadata(kind="flux-dev", output_name="big", rank=rank, alpha=alpha)))
    converted = FluxPipeline.lora_state_dict(str(tmp_path / "big.safetensors"))
    cfg = {k: v for k, v in shipped_config("transformer-flux-dev").items() if not k.startswith("_")}
    with init_empty_weights():  # the real width, two blocks of each kind (enough to hold block 1)
        real = FluxTransformer2DModel(**{**cfg, "num_layers": 2, "num_single_layers": 2})
    modules = dict(real.named_modules())
    assert {k.rsplit(".", 2)[0] for k in converted} == {f"transformer.{p}" for p in want}
    for path, (up, down) in want.items():
        a, b = converted[f"transformer.{path}.lora_A.weight"], converted[f"transformer.{path}.lora_B.weight"]
        lin = modules[path]
        assert (a.shape[1], b.shape[0]) == (lin.in_features, lin.out_features)
        torch.testing.assert_close(b.double() @ (a.double() @ probe), up @ (down @ probe), rtol=1e-6, atol=1e-9,
                                   msg=path)


# ---- Forge ---------------------------------------------------------------------------------------
forge_code = pytest.importorskip("forge_code")
try:
    import einops  # noqa: F401 - Forge's model files use it
    _einops = True
except ImportError:
    _einops = False
needs_forge = pytest.mark.skipif(not (forge_code.available() and _einops),
                                 reason="no Forge mirror to run Forge's code from, or no einops")


class _KModel:
    """The attributes Forge's key maps read from its loaded model (`unet_patcher.model`, a KModel):
    `state_dict()` with `diffusion_model.` keys, `diffusion_model.config` (the detected unet config) and
    `config.huggingface_repo`."""

    def __init__(self, module: torch.nn.Module, unet_config: dict, repo: str):
        self._module = module
        self.diffusion_model = type("DM", (), {"config": unet_config})()
        self.config = type("Cfg", (), {"huggingface_repo": repo})()

    def state_dict(self):
        return {"diffusion_model." + k: v for k, v in self._module.state_dict().items()}


class _Clip:
    """Forge's Flux text-encoder wrapper as its key map sees it (`clip_l.transformer.`, `t5xxl.transformer.`)."""

    def __init__(self, clip: torch.nn.Module | None, t5: torch.nn.Module):
        self.sd = {}
        if clip is not None:
            self.sd.update({"clip_l.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
                            for k, v in clip.state_dict().items()})
        self.sd.update({"t5xxl.transformer." + k: v for k, v in t5.state_dict().items()})

    def state_dict(self):
        return self.sd


def _forge_model(fm, parts):
    from lora_trainer.models.flux_convert import diffusers_to_bfl

    dims = {"in_channels": 16, "vec_in_dim": 64, "context_in_dim": 64, "hidden_size": 64, "mlp_ratio": 4.0,
            "num_heads": 2, "depth": 2, "depth_single_blocks": 2, "axes_dim": [8, 12, 12], "theta": 10000,
            "qkv_bias": True}
    if parts["kind"] == "chroma":
        model = fm.chroma.IntegratedChromaTransformer2DModel(**dims, guidance_out_dim=64, guidance_hidden_dim=128,
                                                             guidance_n_layers=2)
        repo = "Chroma"
    else:
        model = fm.flux.IntegratedFluxTransformer2DModel(**dims, guidance_embed=True)
        repo = "black-forest-labs/FLUX.1-dev"
    model.load_state_dict(diffusers_to_bfl(parts["transformer"].state_dict(), chroma=parts["kind"] == "chroma"))
    return model.eval(), {"image_model": "flux", **dims}, repo


@needs_forge
@pytest.mark.parametrize("kind,layout", [("flux", "kohya"), ("chroma", "kohya"), ("flux", "peft")])
def test_forge_maps_every_key_and_its_model_gives_our_output(kind, layout, tmp_path):
    from safetensors.torch import load_file

    parts, _ = _fresh(kind)
    net = _network(parts, rank=4, alpha=2.0, seed=7)
    meta = _fixed(build_flux_metadata(kind=parts["kind"], output_name="lora", rank=4, alpha=2.0))
    save_flux_lora(tmp_path / "lora.safetensors", net.kohya_state_dict(torch.float32), kind=parts["kind"],
                   metadata=meta, layout=layout)
    lora = load_file(str(tmp_path / "lora.safetensors"))
    kw = transformer_inputs(parts)
    ours = output_with(net, parts, kw)
    with forge_code.forge_modules(str(tmp_path / "forge")) as fm:
        model, unet_config, repo = _forge_model(fm, parts)
        # extensions-builtin/sd_forge_lora/networks.py load_lora_for_models: unet keys, then clip keys
        unet_keys = fm.lora.model_lora_keys_unet(_KModel(model, unet_config, repo), {})[1]
        clip_keys = fm.lora.model_lora_keys_clip(_Clip(parts["text_encoder"], parts["text_encoder_2"]), {})[1]
        patches_unet, rest = fm.lora.load_lora(lora, unet_keys)
        patches_clip, rest = fm.lora.load_lora(rest, clip_keys)
        assert rest == {}  # 0 unmatched (Forge refuses a file with more than 12)
        assert len(patches_clip) == (0 if kind == "chroma" else 12)
        # Forge's "lora" patch (backend/patcher/lora.py merge_lora_to_weight): weight += strength * scale * up @ down,
        # scale = alpha / rank, or 1 without alpha; a tuple key (weight, (dim, start, size)) patches a slice of a
        # fused weight (the diffusers layout's to_q/to_k/to_v into qkv)
        with torch.no_grad():
            params = dict(model.named_parameters())
            for key, (kind_, (up, down, alpha, _mid, _dora)) in patches_unet.items():
                assert kind_ == "lora"
                name, where = (key, None) if isinstance(key, str) else key
                w = params[name[len("diffusion_model."):]]
                if where is not None:
                    w = w.narrow(*where)
                scale = alpha / down.shape[0] if alpha is not None else 1.0
                w += (up.double() @ down.double() * scale).to(w.dtype)
            args = {"img": kw["hidden_states"], "img_ids": kw["img_ids"][None], "txt": kw["encoder_hidden_states"],
                    "txt_ids": kw["txt_ids"][None], "timesteps": kw["timestep"]}
            if kind == "flux":
                args.update(y=kw["pooled_projections"], guidance=kw["guidance"])
            theirs = model.inner_forward(**args)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=2e-5)


@needs_forge
@pytest.mark.parametrize("kind", ["flux", "chroma"])
def test_a_lora_trained_on_forges_model_means_the_same_in_diffusers(kind, tmp_path):
    """Targets on Forge's own BFL-layout transformer (what training on Forge's loaded checkpoint wraps) are
    named as the file's keys, nothing fused; the file is the same format as a diffusers-trained one, and
    read back onto the diffusers model it gives Forge's output."""
    from lora_trainer.lora.discovery_flux import bfl_flux_targets

    parts, _ = _fresh(kind)
    chroma = kind == "chroma"
    with forge_code.forge_modules(str(tmp_path / "forge")) as fm:
        model, _, _ = _forge_model(fm, parts)
        targets = bfl_flux_targets(model)
        bfl_net = LoRANetwork(targets, rank=4, alpha=2.0)
        _randomize(bfl_net, 9)
        kw = transformer_inputs(parts)
        args = {"img": kw["hidden_states"], "img_ids": kw["img_ids"][None], "txt": kw["encoder_hidden_states"],
                "txt_ids": kw["txt_ids"][None], "timesteps": kw["timestep"]}
        if not chroma:
            args.update(y=kw["pooled_projections"], guidance=kw["guidance"])
        with torch.no_grad():
            bfl_net.attach()
            theirs = model.inner_forward(**args)
            bfl_net.detach()
    diffusers_names = _names(fuse_flux_state_dict(_network(parts, clip=False).kohya_state_dict(torch.float32),
                                                  chroma=chroma))
    assert {t.name for t in targets} == diffusers_names
    meta = _fixed(build_flux_metadata(kind=parts["kind"], output_name="forge", rank=4, alpha=2.0))
    save_flux_lora(tmp_path / "forge.safetensors", bfl_net.kohya_state_dict(torch.float32), kind=parts["kind"],
                   metadata=meta)
    run_sd, _ = load_flux_lora(tmp_path / "forge.safetensors")
    net = _network(parts, clip=False)
    assert net.load_kohya_state_dict(run_sd).ok
    ours = output_with(net, parts, kw)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=2e-5)
