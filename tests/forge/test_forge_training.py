"""LoRA training on Forge's own loaded model (its backend, loader, patchers and inference-mode weights)."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from lora_trainer.config import load_config
from lora_trainer.events import StopFlag
from lora_trainer.lora.network import LoRANetwork
from lora_trainer.models.forge import ForgeAdapter
from lora_trainer.models.snapshot import state_dict_hash
from lora_trainer.train import train

FP8 = getattr(torch, "float8_e4m3fn", None)


def make_cfg(dataset: str, out, **kw):
    raw = dict(train_data_dir=dataset, output_dir=str(out), output_name="forgelora", resolution=64,
               enable_bucket=False, batch_size=2, max_train_steps=4, learning_rate=3e-3, lora_rank=4,
               lora_alpha=4, seed=7, save_precision="fp32", cache_latents=True, save_state=False)
    raw.update(kw)
    return load_config(raw, require=("train_data_dir",))


def parts(sd_model):
    fo = sd_model.forge_objects
    return {"unet": fo.unet.model, "clip": fo.clip.cond_stage_model, "vae": fo.vae.first_stage_model}


def host_state(sd_model) -> dict:
    """Everything training must leave as it was: bytes, flags, modes, dtypes, no `.grad`, the active patchers."""
    state = {}
    for name, mod in parts(sd_model).items():
        state[name] = state_dict_hash(mod)
        state[name + " params"] = [(n, p.dtype, p.device, p.requires_grad, p.is_inference(), p.grad is None)
                                   for n, p in mod.named_parameters()]
        state[name + " modes"] = [(n, m.training) for n, m in mod.named_modules()]
    fo = sd_model.forge_objects
    state["patchers"] = (id(fo.unet), id(fo.clip))
    return state


def forge_maps_every_key(sd_model, path: str) -> dict:
    """Forge's own LoRA loader must match every key of the file (it drops unknown keys silently)."""
    from backend.patcher.lora import load_lora, model_lora_keys_unet

    lora = load_file(path)
    patches, unmatched = load_lora(lora, model_lora_keys_unet(sd_model.forge_objects.unet.model))
    assert not unmatched, f"Forge leaves {len(unmatched)} keys unmatched, e.g. {sorted(unmatched)[:3]}"
    return patches


def test_forward_is_forges_own_and_backprops_to_the_lora_only(forge_model):
    sd_model = forge_model("sd1")
    adapter = ForgeAdapter(sd_model)
    unet = sd_model.forge_objects.unet.model.diffusion_model
    assert all(p.is_inference() for p in unet.parameters()), "Forge loads its weights in inference mode"
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    cond = adapter.encode_text(["a red circle", "a blue square"])
    with torch.inference_mode():
        ref = unet(x, t.float(), context=cond["crossattn"], transformer_options={})
    net = LoRANetwork(adapter.lora_targets(unet=True, text_encoder=False, conv=False), rank=4, alpha=4).attach()
    try:
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved|inplace"):
            unet(x, t.float(), context=cond["crossattn"], transformer_options={}).sum().backward()
        out = adapter.predict(x, t, cond)
        assert torch.equal(out.detach(), ref), "up-projections start at zero: the output must be Forge's, bit for bit"
        out.square().mean().backward()
    finally:
        net.detach()
    downs = [m.lora_down.weight.grad for m in net.loras.values()]
    ups = [m.lora_up.weight.grad for m in net.loras.values()]
    assert all(g is not None for g in ups) and sum(float(g.abs().sum() > 0) for g in ups) >= len(ups) - 2
    assert all(g is None or not g.abs().sum() for g in downs)  # up = 0: no gradient to down yet
    assert all(p.grad is None and p.is_inference() for p in unet.parameters())


def assert_stored_as(linear: list, storage) -> None:
    """Forge keeps the Linear weights as it was asked: GGUF Q8_0 blocks or bitsandbytes NF4 ones dequantised in
    its forward, or fp8."""
    if storage == "gguf":
        assert {type(p).__name__ for p in linear} == {"ParameterGGUF"} and all(p.gguf_cls for p in linear)
    elif storage == "nf4":  # packed 4-bit bytes, the real shape in the quant state
        assert {type(p).__name__ for p in linear} == {"ForgeParams4bit"} and all(p.bnb_quantized for p in linear)
        assert {p.quant_state.quant_type for p in linear} == {"nf4"}
    elif storage is not None:
        assert {p.dtype for p in linear} == {storage}


def trains_and_leaves_forge_as_it_was(sd_model, adapter, storage, block_marker: str, cfg, steps: int) -> dict:
    """Train on the loaded model whose block Linears (names holding `block_marker`) are stored as `storage`;
    Forge must be exactly as before and the LoRA trained. Returns the file's tensors."""
    model = sd_model.forge_objects.unet.model.diffusion_model
    linear = [p for n, p in model.named_parameters() if block_marker in n and n.endswith("weight") and p.dim() == 2]
    assert_stored_as(linear, storage)
    before = host_state(sd_model)
    result = train(cfg, adapter=adapter)
    assert result.steps == steps and os.path.isfile(result.output_path)
    assert adapter.verify() == []
    assert host_state(sd_model) == before
    sd = load_file(result.output_path)
    ups = [k for k in sd if k.endswith("lora_up.weight")]
    assert sum(bool(sd[k].abs().sum()) for k in ups) >= len(ups) - 2, "the LoRA trained"
    forge_maps_every_key(sd_model, result.output_path)
    return {"tensors": sd, "path": result.output_path}


@pytest.mark.parametrize("arch,storage", [("sd1", None), ("sd1", FP8), ("sd1", "gguf"), ("sdxl", None), ("sdxl", FP8)],
                         ids=["sd1-float", "sd1-fp8", "sd1-gguf-q8", "sdxl-float", "sdxl-fp8"])
def test_trains_on_the_loaded_model_and_leaves_forge_as_it_was(forge_model, dataset, tmp_path, arch, storage):
    if storage is FP8 and FP8 is None:
        pytest.skip("torch without float8")
    sd_model = forge_model(arch, storage)
    sd = trains_and_leaves_forge_as_it_was(sd_model, ForgeAdapter(sd_model, verify_hash=True), storage,
                                           "transformer_blocks", make_cfg(dataset, tmp_path / "out"), 4)["tensors"]
    prefix = "lora_unet_down_blocks_" if arch == "sd1" else "lora_unet_input_blocks_"
    assert any(k.startswith(prefix) for k in sd), "SD1 files use diffusers names, SDXL files LDM names"
    assert len([k for k in sd if k.endswith("lora_up.weight")]) >= 8


def test_sdxl_size_conditioning_is_forges(forge_model):
    sd_model = forge_model("sdxl")
    adapter = ForgeAdapter(sd_model)

    class Prompts(list):
        width, height, is_negative_prompt = 96, 64, False

    with torch.inference_mode():
        forge = sd_model.get_learned_conditioning(Prompts(["a red circle"]))["vector"]
    ours = adapter.encode_text(["a red circle"])
    from lora_trainer.models.base import SizeInfo
    size = adapter._size_vector(1, [SizeInfo(original=(64, 96), target=(64, 96))], (64, 96))
    assert torch.equal(torch.cat([ours["pooled"], size.to(ours["pooled"].dtype)], 1), forge.clone())


def test_prediction_type_is_read_from_forges_predictor(forge_model, dataset, tmp_path):
    assert ForgeAdapter(forge_model("sd1")).info.prediction_type == "epsilon"
    sd_model = forge_model("sd1", v_prediction=True)
    assert sd_model.forge_objects.unet.model.predictor.prediction_type == "v_prediction"
    adapter = ForgeAdapter(sd_model)
    assert adapter.info.prediction_type == "v_prediction"
    result = train(make_cfg(dataset, tmp_path / "v", max_train_steps=2), adapter=adapter)
    assert load_file(result.output_path) and adapter.verify() == []


def _apply_lora_as_forge_does(sd_model, lora_sd: dict) -> None:
    """What `<lora:name:1>` does in Forge: a patched clone of the UNet patcher, merged when loaded."""
    from backend import memory_management
    from backend.patcher.lora import load_lora, model_lora_keys_unet

    fo = sd_model.forge_objects
    patches, unmatched = load_lora(lora_sd, model_lora_keys_unet(fo.unet.model))
    assert not unmatched
    clone = fo.unet.clone()
    clone.add_patches(filename="earlier.safetensors", patches=patches, strength_patch=1.0)
    fo.unet = clone
    with torch.inference_mode():
        memory_management.load_models_gpu([clone])


def test_a_lora_forge_applied_for_an_earlier_prompt_is_out_while_training_and_back_after(
        forge_model, dataset, tmp_path):
    sd_model = forge_model("sd1")
    kmodel = sd_model.forge_objects.unet.model
    clean = state_dict_hash(kmodel)
    earlier = LoRANetwork(ForgeAdapter(sd_model).lora_targets(unet=True, text_encoder=False, conv=False), rank=2)
    with torch.no_grad():
        for m in earlier.loras.values():
            m.lora_up.weight.normal_(0, 0.1)
    _apply_lora_as_forge_does(sd_model, earlier.kohya_state_dict(torch.float32))
    patched, patched_state = state_dict_hash(kmodel), host_state(sd_model)
    assert patched != clean, "Forge merged the LoRA into its weights"
    seen: list[str] = []

    def sink(event):
        if event.type == "progress" and not seen:
            seen.append(state_dict_hash(kmodel))

    try:
        train(make_cfg(dataset, tmp_path / "o", max_train_steps=2), adapter=ForgeAdapter(sd_model), emit=sink)
        assert seen == [clean], "the earlier LoRA must not be in the weights the new one trains on"
        assert host_state(sd_model) == patched_state
    finally:  # a prompt without LoRA, as Forge handles it: the original patcher, its loader refreshed
        fo = sd_model.forge_objects
        fo.unet = sd_model.forge_objects_original.unet
        with torch.inference_mode():
            fo.unet.refresh_loras()
    assert state_dict_hash(kmodel) == clean


def test_stop_and_error_leave_forge_as_it_was(forge_model, dataset, tmp_path):
    sd_model = forge_model("sd1")
    before = host_state(sd_model)
    stop = StopFlag()

    def stopper(event):
        if event.type == "progress":
            stop.request("test stop")

    adapter = ForgeAdapter(sd_model, verify_hash=True)
    result = train(make_cfg(dataset, tmp_path / "s", max_train_steps=50, save_state=True), adapter=adapter,
                   emit=stopper, stop=stop)
    assert result.stopped and result.steps < 50 and adapter.verify() == []
    assert host_state(sd_model) == before

    adapter = ForgeAdapter(sd_model, verify_hash=True)
    calls = {"n": 0}
    real_predict = adapter.predict

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise torch.OutOfMemoryError("simulated out of memory")
        return real_predict(*args, **kwargs)

    adapter.predict = failing
    with pytest.raises(torch.OutOfMemoryError):
        train(make_cfg(dataset, tmp_path / "e", max_train_steps=5), adapter=adapter)
    assert adapter.verify() == []
    assert host_state(sd_model) == before


def test_other_families_are_refused_in_one_line(forge_root):
    from backend.diffusion_engine.sd35 import StableDiffusion3
    from backend.diffusion_engine.sdxl import StableDiffusionXLRefiner

    from lora_trainer.hosts.loaded_model import adapter_for
    from lora_trainer.models.forge_host import forge_refusal
    from lora_trainer.models.webui_services import HostRefused, WebUIServices

    for cls, word in ((StableDiffusion3, "SD3"), (StableDiffusionXLRefiner, "refiner")):
        model = cls.__new__(cls)  # the real class; no weights are needed to refuse it
        model.forge_objects = None
        why = forge_refusal(model)
        assert why and word in why and "\n" not in why
        with pytest.raises(HostRefused, match=word):
            adapter_for(WebUIServices(sd_model_getter=lambda m=model: m, forge=True))


def test_gradient_checkpointing_recomputes_forges_blocks_with_the_same_gradients(forge_model):
    sd_model = forge_model("sd1")
    adapter = ForgeAdapter(sd_model)
    net = LoRANetwork(adapter.lora_targets(unet=True, text_encoder=False, conv=False), rank=4, alpha=4).attach()
    with torch.no_grad():
        for m in net.loras.values():
            m.lora_up.weight.normal_(0, 0.05)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    cond = adapter.encode_text(["a red circle", "a blue square"])

    def grads():
        net.zero_grad(set_to_none=True)
        adapter.predict(x, t, cond).square().mean().backward()
        return [p.grad.clone() for p in net.parameters()]

    try:
        plain = grads()
        adapter.set_gradient_checkpointing(True)
        assert adapter._checkpointed, "Forge's transformer and resnet blocks are wrapped"
        checkpointed = grads()
        adapter.set_gradient_checkpointing(False)
    finally:
        net.detach()
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(plain, checkpointed, strict=True))
    assert not any("forward" in m.__dict__ for m in sd_model.forge_objects.unet.model.modules())


def test_sd2_v_model_trains_as_v_prediction_with_sd2_names(forge_model, dataset, tmp_path):
    # (Forge takes SD2-v from a .yaml beside the checkpoint: huggingface_guess's own v test looks for
    # an unprefixed UNet key in the prefixed state dict and so always answers epsilon)
    sd_model = forge_model("sd2", v_prediction=True)
    assert type(sd_model).__name__ == "StableDiffusion2"
    adapter = ForgeAdapter(sd_model, verify_hash=True)
    assert (adapter.arch, adapter.info.prediction_type) == ("sd2", "v_prediction")
    before = host_state(sd_model)
    result = train(make_cfg(dataset, tmp_path / "sd2", max_train_steps=2), adapter=adapter)
    assert adapter.verify() == [] and host_state(sd_model) == before
    from lora_trainer.lora.file import read_lora_metadata
    meta = read_lora_metadata(result.output_path)
    assert meta["ss_v2"] == "True" and meta.get("modelspec.prediction_type", "v") == "v"
    forge_maps_every_key(sd_model, result.output_path)
