"""LoRA training on Forge's own loaded FLUX.1-dev / Chroma model (its loader, transformer, text engines,
fp8 and GGUF storage, LoRA loader), QLoRA-style: gradients reach the LoRA only, the base stays as it was."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from test_forge_training import (
    FP8,
    forge_maps_every_key,
    host_state,
    make_cfg,
    trains_and_leaves_forge_as_it_was,
)

from lora_trainer.errors import ConfigError
from lora_trainer.lora.file import read_lora_metadata
from lora_trainer.lora.network import LoRANetwork
from lora_trainer.models.flux_adapter import FluxOptions
from lora_trainer.models.forge_flux import ForgeFluxAdapter
from lora_trainer.train import train


def _nf4_missing() -> str:
    """Why bitsandbytes' NF4 cannot run here ("" when it can: its CPU 4-bit kernels came with 0.46)."""
    try:
        from bitsandbytes.functional import dequantize_4bit, quantize_4bit
        packed, state = quantize_4bit(torch.ones(64, 64), blocksize=64, quant_type="nf4")
        dequantize_4bit(packed, state)
    except Exception as exc:  # noqa: BLE001 - any failure means: no NF4 on this machine
        return f"bitsandbytes without CPU NF4 ({type(exc).__name__}: {exc}); pip install 'bitsandbytes>=0.46'"
    return ""


NF4_MISSING = _nf4_missing()
NEEDS_NF4 = pytest.mark.skipif(bool(NF4_MISSING), reason=NF4_MISSING or "-")


def _inputs(adapter, captions=("a red circle", "a blue square")):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(len(captions), 16, 8, 8, generator=g)
    return x, torch.tensor([300.0, 800.0][:len(captions)]), adapter.encode_text(list(captions))


def _random_lora(adapter, seed=3, scale=0.05) -> LoRANetwork:
    torch.manual_seed(seed)  # the downs' initialisation draws from the global generator
    net = LoRANetwork(adapter.lora_targets(unet=True, text_encoder=False, conv=False), rank=4, alpha=4)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.loras.values():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * scale)
    return net


@pytest.mark.parametrize("arch", ["flux", "chroma"])
def test_forward_is_forges_own_and_backprops_to_the_lora_only(forge_model, arch):
    sd_model = forge_model(arch)
    adapter = ForgeFluxAdapter(sd_model)
    kmodel = sd_model.forge_objects.unet.model
    model = kmodel.diffusion_model
    assert all(p.is_inference() for p in model.parameters()), "Forge loads its weights in inference mode"
    x, t, cond = _inputs(adapter)
    sigma = t / 1000
    kw = {"c_crossattn": cond["crossattn"][:, :int(cond["t5_len"][0])]}
    if arch == "flux":
        kw.update(y=cond["pooled"], guidance=torch.ones(2))
    with torch.inference_mode():  # Forge's own sampler step: denoised = x - sigma * velocity
        denoised = kmodel.apply_model(x, sigma, transformer_options={}, **kw)
    net = LoRANetwork(adapter.lora_targets(unet=True, text_encoder=False, conv=False), rank=4, alpha=4).attach()
    try:
        out = adapter.predict(x, t, cond)
        torch.testing.assert_close(x - sigma.view(-1, 1, 1, 1) * out.detach(), denoised.clone(), rtol=1e-5, atol=1e-5)
        out.square().mean().backward()
    finally:
        net.detach()
    ups = [m.lora_up.weight.grad for m in net.loras.values()]
    assert all(g is not None for g in ups) and sum(float(g.abs().sum() > 0) for g in ups) >= len(ups) - 2
    assert all(p.grad is None and p.is_inference() for p in model.parameters())
    names = {t.name for t in adapter.lora_targets(unet=True, text_encoder=False, conv=False)}
    assert "lora_unet_double_blocks_0_img_attn_qkv" in names and "lora_unet_single_blocks_1_linear2" in names
    assert any("_mod_lin" in n or "modulation" in n for n in names) == (arch == "flux"), "Chroma has no modulation"


def test_chroma_captions_of_different_lengths_get_exactly_their_own_tokens(forge_model):
    adapter = ForgeFluxAdapter(forge_model("chroma"))
    captions = ["zqx", "a long caption about a red circle on a blue square in the evening"]
    x, t, cond = _inputs(adapter, captions)
    lengths = cond["t5_len"].tolist()
    assert lengths[0] < lengths[1] and cond["crossattn"].shape[1] == 512
    with torch.no_grad():
        both = adapter.predict(x, t, cond)
        one_by_one = torch.cat([adapter.predict(x[i:i + 1], t[i:i + 1], adapter.encode_text([c]))
                                for i, c in enumerate(captions)])
    torch.testing.assert_close(both, one_by_one, rtol=1e-5, atol=1e-6)


def test_guidance_is_an_input_for_dev_and_none_for_chroma(forge_model):
    dev = forge_model("flux")
    x, t, cond = _inputs(ForgeFluxAdapter(dev))
    with torch.no_grad():
        g1 = ForgeFluxAdapter(dev).predict(x, t, cond)
        g4 = ForgeFluxAdapter(dev, options=FluxOptions(guidance_scale_train=4.0)).predict(x, t, cond)
    assert not torch.allclose(g1, g4), "FLUX.1-dev reads its guidance input"
    assert ForgeFluxAdapter(dev).metadata()["ss_guidance_scale"] == "1.0"
    chroma = forge_model("chroma")
    assert ForgeFluxAdapter(chroma).arch == "chroma" and "ss_guidance_scale" not in ForgeFluxAdapter(chroma).metadata()
    with pytest.raises(ConfigError, match="guidance_scale_train") as e:
        ForgeFluxAdapter(chroma, options=FluxOptions(guidance_scale_train=3.5))
    assert "\n" not in str(e.value)


def test_the_lora_learns_on_forges_transformer(forge_model):
    """A fixed batch, fixed noise: the flow-matching loss drops clearly when only the LoRA trains."""
    adapter = ForgeFluxAdapter(forge_model("flux"))
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 16, 8, 8, generator=g)
    cond = adapter.encode_text(["zqx red circle", "zqx blue square"])
    objective = adapter.objective()
    batches = [objective.noised(latents, torch.Generator().manual_seed(100 + i)) for i in range(4)]
    net = LoRANetwork(adapter.lora_targets(unet=True, text_encoder=False, conv=False), rank=8, alpha=8).attach()

    def loss() -> float:
        with torch.no_grad():
            return sum(float(objective.loss(adapter.predict(b.noisy, b.timesteps, cond), b)) for b in batches)

    try:
        before = loss()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for step in range(24):
            b = batches[step % len(batches)]
            opt.zero_grad()
            objective.loss(adapter.predict(b.noisy, b.timesteps, cond), b).backward()
            opt.step()
        after = loss()
    finally:
        net.detach()
    assert after < 0.8 * before, (before, after)


def _one_lora_step(sd_model) -> tuple[float, torch.Tensor]:
    """(flow loss, the LoRA's gradient) of one step on fixed inputs with a fixed random LoRA, prepared and
    restored as `train` does; Forge's model must come back as it was, no parameter of it holding a `.grad`."""
    base = host_state(sd_model)
    adapter = ForgeFluxAdapter(sd_model, verify_hash=True)
    x, t, cond = _inputs(adapter)
    adapter.prepare_for_training()
    net = _random_lora(adapter).attach()
    try:
        loss = adapter.predict(x, t, cond).float().sub(x).square().mean()
        loss.backward()
    finally:
        net.detach()
        adapter.restore()
    assert adapter.verify() == [] and host_state(sd_model) == base, "gradients reach the LoRA only"
    return float(loss.detach()), torch.cat([p.grad.flatten() for p in net.parameters()])


@pytest.mark.skipif(FP8 is None, reason="torch without float8")
@pytest.mark.parametrize("arch", ["flux", "chroma"])
def test_fp8_stored_base_gives_the_float_loss_and_stays_untouched(forge_model, arch):
    full, fp8 = forge_model(arch), forge_model(arch, FP8)
    linear = [p for n, p in fp8.forge_objects.unet.model.diffusion_model.named_parameters()
              if "_blocks." in n and n.endswith("weight") and p.dim() == 2]
    assert {p.dtype for p in linear} == {FP8}, "Forge stores the blocks' Linear weights in fp8"
    (loss, grad), (loss8, grad8) = _one_lora_step(full), _one_lora_step(fp8)
    # e4m3 keeps 3 mantissa bits (weights rounded by up to 6 %); on random tiny weights the loss moves ~4 %
    assert loss8 == pytest.approx(loss, rel=0.06), (loss, loss8)
    assert torch.nn.functional.cosine_similarity(grad, grad8, dim=0) > 0.95


@NEEDS_NF4
def test_nf4_base_gives_the_loss_of_its_dequantised_weights_and_stays_untouched(forge_model):
    """QLoRA on Forge's NF4 model: Forge's 4-bit layers dequantise in its own forward (bitsandbytes'
    `matmul_4bit`), gradients flow through them to the LoRA only, and the result is what the same weights
    give stored as float - to float rounding, not to the 4-bit error."""
    (loss, grad), (loss4, grad4) = _one_lora_step(forge_model("flux", "nf4-float")), \
        _one_lora_step(forge_model("flux", "nf4"))
    assert loss4 == pytest.approx(loss, rel=1e-4), (loss, loss4)
    torch.testing.assert_close(grad4, grad, rtol=1e-3, atol=1e-6)


def _forge_denoised(sd_model) -> torch.Tensor:
    """One step of Forge's own sampler (`apply_model` under inference mode) on fixed inputs."""
    with torch.inference_mode():
        c = sd_model.get_learned_conditioning(["a red circle"])
        x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(9))
        kw = {"c_crossattn": c["crossattn"], "y": c["vector"], "guidance": c["guidance"]}
        return sd_model.forge_objects.unet.model.apply_model(x, torch.full((1,), 0.6), transformer_options={},
                                                             **kw).clone()


@pytest.mark.skipif(FP8 is None, reason="torch without float8")
def test_fp8_training_before_forges_first_generation_leaves_forges_own_model(forge_model, dataset, tmp_path):
    """Forge's first forward on an fp8 model replaces each RMSNorm's fp8 `scale` by a compute-dtype copy
    (`RMSNorm.forward`). When training comes first, our forward makes that swap; Forge must get its own
    parameters back, so its first generation does what it would have done without the run."""
    sd_model = forge_model("flux", FP8, generated=False)
    model = sd_model.forge_objects.unet.model.diffusion_model
    scales = {n: p for n, p in model.named_parameters() if n.endswith(".scale")}
    assert scales and all(p.dtype == FP8 and p.is_inference() for p in scales.values()), "no generation yet"
    before = host_state(sd_model)
    adapter = ForgeFluxAdapter(sd_model, verify_hash=True)
    result = train(make_cfg(dataset, tmp_path / "out", max_train_steps=2, gradient_checkpointing=True),
                   adapter=adapter)
    assert result.steps == 2 and adapter.verify() == []
    assert host_state(sd_model) == before
    assert all(p is scales[n] for n, p in model.named_parameters() if n.endswith(".scale")), \
        "the norms hold Forge's own fp8 parameters again"
    reference = forge_model("flux", FP8)  # the same file, stored as fp8, its first generation done, not trained on
    torch.testing.assert_close(_forge_denoised(sd_model), _forge_denoised(reference), rtol=0, atol=0)
    assert host_state(sd_model)["unet"] == host_state(reference)["unet"], "the state Forge reaches without our run"
    assert {p.dtype for n, p in model.named_parameters() if n.endswith(".scale")} == {torch.float32}


@pytest.mark.parametrize("arch,storage", [("flux", None), ("flux", FP8), ("flux", "gguf"),
                                                  pytest.param("flux", "nf4", marks=NEEDS_NF4), ("chroma", None)],
                         ids=["flux-float", "flux-fp8", "flux-gguf-q8", "flux-nf4", "chroma-float"])
def test_trains_on_the_loaded_model_and_leaves_forge_as_it_was(forge_model, dataset, tmp_path, arch, storage):
    if storage is FP8 and FP8 is None:
        pytest.skip("torch without float8")
    sd_model = forge_model(arch, storage)
    cfg = make_cfg(dataset, tmp_path / "out", max_train_steps=3, gradient_checkpointing=True)
    out = trains_and_leaves_forge_as_it_was(sd_model, ForgeFluxAdapter(sd_model, verify_hash=True), storage, "_blocks.",
                                            cfg, 3)
    sd = out["tensors"]
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight" in sd
    meta = read_lora_metadata(out["path"])
    if arch == "chroma":
        assert not [k for k in sd if "_mod_lin" in k or "modulation" in k or k.startswith("lora_te")]
        assert meta["modelspec.architecture"] == "chroma/lora" and meta["ss_base_model_version"] == "chroma"
    else:
        assert meta["modelspec.architecture"] == "flux-1-dev/lora" and meta["ss_guidance_scale"] == "1.0"


@pytest.mark.parametrize("arch", ["flux", "chroma"])
def test_the_file_works_in_forge_at_once_and_without_it_forge_is_unchanged(forge_model, dataset, tmp_path, arch):
    """What `<lora:name:1>` does: Forge's loader patches a clone of the UNet patcher, merged on load."""
    from backend import memory_management
    from backend.patcher.lora import load_lora, model_lora_keys_unet

    sd_model = forge_model(arch)
    adapter = ForgeFluxAdapter(sd_model)
    x, t, cond = _inputs(adapter)

    def output():
        with torch.no_grad():
            return ForgeFluxAdapter(sd_model).predict(x, t, cond)

    plain = output()
    result = train(make_cfg(dataset, tmp_path / "o", max_train_steps=3, learning_rate=1e-2), adapter=adapter)
    assert torch.equal(output(), plain)
    fo = sd_model.forge_objects
    patches, unmatched = load_lora(load_file(result.output_path), model_lora_keys_unet(fo.unet.model))
    assert not unmatched and patches
    clone = fo.unet.clone()
    clone.add_patches(filename="trained.safetensors", patches=patches, strength_patch=1.0)
    fo.unet = clone
    try:
        with torch.inference_mode():
            memory_management.load_models_gpu([clone])
        assert not torch.allclose(output(), plain), "the LoRA changes Forge's output"
    finally:  # a prompt without LoRA, as Forge handles it
        fo.unet = sd_model.forge_objects_original.unet
        with torch.inference_mode():
            fo.unet.refresh_loras()
    assert torch.equal(output(), plain)


def test_the_webui_picks_the_flux_adapter_with_the_runs_options(forge_model, dataset, tmp_path):
    from lora_trainer.hosts.loaded_model import adapter_for
    from lora_trainer.models.webui_services import WebUIServices

    sd_model = forge_model("flux")
    cfg = make_cfg(dataset, tmp_path, flux_double_blocks="1", flux_single_blocks="none", flux_layers=["attn"])
    adapter = adapter_for(WebUIServices(sd_model_getter=lambda: sd_model, forge=True), cfg)
    assert isinstance(adapter, ForgeFluxAdapter) and adapter.arch == "flux-dev"
    names = {t.name for t in adapter.lora_targets(unet=True, text_encoder=False, conv=False)}
    assert names == {f"lora_unet_double_blocks_1_{m}" for m in ("img_attn_qkv", "img_attn_proj", "txt_attn_qkv",
                                                               "txt_attn_proj")}
    img = adapter.generate("a red circle", seed=1, steps=2, width=64, height=64)
    assert img.size == (64, 64) and len(set(img.tobytes())) > 1


def test_a_run_continues_from_a_file_trained_in_forge(forge_model, dataset, tmp_path):
    sd_model = forge_model("flux")
    first = train(make_cfg(dataset, tmp_path / "a", max_train_steps=2), adapter=ForgeFluxAdapter(sd_model))
    logs: list[str] = []

    def sink(event):
        if event.type == "log":
            logs.append(event.data["message"])

    train(make_cfg(dataset, tmp_path / "b", max_train_steps=1, network_weights=first.output_path),
          adapter=ForgeFluxAdapter(sd_model), emit=sink)
    line = next(m for m in logs if m.startswith("continuing from"))
    pairs = len([k for k in load_file(first.output_path) if not k.endswith(".alpha")])
    assert f"{pairs} tensors loaded, 0 missing (start fresh), 0 ignored" in line, line


def test_chroma_samples_with_guidance_against_the_negative_prompt(forge_model):
    adapter = ForgeFluxAdapter(forge_model("chroma"))
    kw = dict(seed=4, steps=2, width=64, height=64)
    plain = adapter.generate("a red circle", guidance_scale=1.0, **kw)
    cfg = adapter.generate("a red circle", negative_prompt="blurry", guidance_scale=4.0, **kw)
    assert plain.tobytes() != cfg.tobytes()
    assert adapter.generate("a red circle", negative_prompt="blurry", guidance_scale=4.0, **kw).tobytes() == cfg.tobytes()


def test_forges_text_engines_run_once_per_caption(forge_model, dataset, tmp_path):
    import glob

    sd_model = forge_model("flux")
    seen: list[str] = []
    real = sd_model.get_learned_conditioning

    def counting(prompts):
        seen.extend(prompts)
        return real(prompts)

    sd_model.get_learned_conditioning = counting
    try:
        train(make_cfg(dataset, tmp_path / "o", max_train_steps=4), adapter=ForgeFluxAdapter(sd_model))
    finally:
        del sd_model.get_learned_conditioning
    captions = set()
    for path in glob.glob(os.path.join(dataset, "**", "*.txt"), recursive=True):
        with open(path, encoding="utf-8") as f:
            captions.add(f.read().strip())
    assert sorted(seen) == sorted(captions), "each caption encoded once, by Forge, then cached"


def test_only_the_kohya_layout_is_written_from_forge(forge_model):
    with pytest.raises(ConfigError, match="lora_layout"):
        ForgeFluxAdapter(forge_model("flux"), options=FluxOptions(lora_layout="peft"))


@pytest.mark.parametrize("network_type", ["loha", "lokr", "dora"])
def test_lycoris_types_and_dora_train_on_forges_flux(forge_model, dataset, tmp_path, network_type):
    """The #13 types on Forge's BFL-layout transformer: fused qkv / linear1 are single modules there."""
    sd_model = forge_model("flux")
    before = host_state(sd_model)
    adapter = ForgeFluxAdapter(sd_model, verify_hash=True)
    result = train(make_cfg(dataset, tmp_path / "out", max_train_steps=2, network_type=network_type,
                            cache_text_encoder_outputs=True, train_text_encoder=False,
                            cache_text_encoder_outputs_to_disk=True), adapter=adapter)
    assert result.steps == 2 and adapter.verify() == [] and host_state(sd_model) == before
    sd = load_file(result.output_path)
    marker = {"loha": "hada_w1_a", "lokr": "lokr_w1", "dora": "dora_scale"}[network_type]
    assert any(k.startswith("lora_unet_double_blocks_0_img_attn_qkv.") and marker in k for k in sd), sorted(sd)[:8]
    forge_maps_every_key(sd_model, result.output_path)
