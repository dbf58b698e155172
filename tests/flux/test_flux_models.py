"""Built-in tiny FLUX.1 / Chroma models, loading them from a diffusers folder and from BFL single files,
and the one-line refusals for files given in the wrong place."""

from __future__ import annotations

import json

import pytest
import torch
from flux_helpers import transformer_out, write_single_files
from safetensors.torch import save_file

from lora_trainer.errors import ModelLoadError
from lora_trainer.models.flux_loading import load_flux_parts


def test_t5_tokenizer_is_t5_shaped():
    from lora_trainer.models.t5_tokenizer import make_t5_tokenizer
    from lora_trainer.synthetic import VOCABULARY

    tok = make_t5_tokenizer(VOCABULARY)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    enc = tok(["A red circle zqx", "qwerty"], padding="max_length", max_length=10, return_tensors="pt")
    pieces = tok.convert_ids_to_tokens(enc.input_ids[0][:5].tolist())
    assert pieces == ["▁A", "▁red", "▁circle", "▁zqx", "</s>"]
    assert enc.input_ids[0][5:].tolist() == [0] * 5 and enc.attention_mask[0].sum() == 5
    assert tok.unk_token_id not in enc.input_ids[1].tolist()  # unknown words fall back to characters


@pytest.mark.parametrize("kind", ["flux", "chroma"])
def test_tiny_models_run_in_the_real_pipelines(kind, request):
    from lora_trainer.models.flux_tiny import make_pipeline

    parts = request.getfixturevalue(f"tiny_{kind}")
    assert parts["kind"] == ("chroma" if kind == "chroma" else "flux-dev")
    assert parts["vae"].config.latent_channels == 16
    assert (parts["vae"].config.scaling_factor, parts["vae"].config.shift_factor) == (0.3611, 0.1159)
    pipe = make_pipeline(parts)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a red circle", num_inference_steps=2, height=64, width=64, max_sequence_length=16,
               generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert img.shape == (1, 3, 64, 64) and torch.isfinite(img).all()


@pytest.mark.parametrize("kind", ["flux", "chroma"])
def test_diffusers_folder_loads_back_identical(kind, tmp_path, request):
    from lora_trainer.models.flux_tiny import save_tiny_flux

    save_tiny_flux(str(tmp_path / "m"), kind)
    parts = load_flux_parts(str(tmp_path / "m"))
    ref = request.getfixturevalue(f"tiny_{kind}")
    assert parts["kind"] == ref["kind"]
    mine, theirs = parts["transformer"].state_dict(), ref["transformer"].state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    # same weights; diffusers' from_pretrained memory-maps them, which can change the last float bit
    torch.testing.assert_close(transformer_out(parts), transformer_out(ref), rtol=0, atol=1e-5)
    ids = parts["tokenizer_2"](["a red circle"], return_tensors="pt").input_ids
    assert ids[0, -1].item() == 1  # </s>


@pytest.mark.parametrize("kind,prefix", [("flux", ""), ("chroma", ""), ("flux", "model.diffusion_model.")])
def test_bfl_single_files_load_back_identical(kind, prefix, tmp_path, request):
    parts = request.getfixturevalue(f"tiny_{kind}")
    paths = write_single_files(parts, str(tmp_path), prefix=prefix)
    loaded = load_flux_parts(paths["transformer"], vae_path=paths["vae"], clip_l_path=paths.get("clip_l"),
                             t5xxl_path=paths["t5"])
    assert loaded["kind"] == parts["kind"]
    assert dict(loaded["scheduler"].config) == dict(parts["scheduler"].config)
    assert loaded["scheduler"].config.use_dynamic_shifting == (kind == "flux")  # dev: by image size; Chroma: fixed
    assert torch.equal(transformer_out(loaded), transformer_out(parts))
    z = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded["vae"].decode(z).sample, parts["vae"].decode(z).sample)
        ids = parts["tokenizer_2"](["a blue star"], return_tensors="pt").input_ids
        assert torch.equal(loaded["text_encoder_2"](ids).last_hidden_state,
                           parts["text_encoder_2"](ids).last_hidden_state)
        if kind == "flux":
            ids = parts["tokenizer"](["a blue star"], return_tensors="pt").input_ids
            assert torch.equal(loaded["text_encoder"](ids).pooler_output, parts["text_encoder"](ids).pooler_output)
        else:
            assert loaded["text_encoder"] is None and loaded["tokenizer"] is None


def test_schnell_is_told_from_dev_by_its_guidance_embedder(tmp_path, tiny_flux):
    from lora_trainer.models.flux_detect import inspect_flux_file

    paths = write_single_files(tiny_flux, str(tmp_path))
    assert inspect_flux_file(paths["transformer"]).kind == "flux-dev"
    from safetensors.torch import load_file

    sd = {k: v for k, v in load_file(paths["transformer"]).items() if not k.startswith("guidance_in.")}
    save_file(sd, str(tmp_path / "schnell.safetensors"))
    loaded = load_flux_parts(str(tmp_path / "schnell.safetensors"), vae_path=paths["vae"],
                             clip_l_path=paths["clip_l"], t5xxl_path=paths["t5"])
    assert loaded["kind"] == "flux-schnell" and not loaded["transformer"].config.guidance_embeds
    assert loaded["scheduler"].config.use_dynamic_shifting is False


def test_fp8_transformer_is_upcast(tmp_path, tiny_flux):
    from lora_trainer.models.flux_detect import inspect_flux_file

    paths = write_single_files(tiny_flux, str(tmp_path), dtype=torch.float8_e4m3fn)
    assert inspect_flux_file(paths["transformer"]).fp8
    loaded = load_flux_parts(paths["transformer"], vae_path=paths["vae"], clip_l_path=paths["clip_l"],
                             t5xxl_path=paths["t5"])
    w = loaded["transformer"].transformer_blocks[0].attn.to_q.weight
    ref = tiny_flux["transformer"].transformer_blocks[0].attn.to_q.weight
    assert w.dtype == torch.float32 and torch.equal(w, ref.to(torch.float8_e4m3fn).float())


@pytest.mark.parametrize("kind,config", [("flux-dev", "transformer-flux-dev"),
                                         ("flux-schnell", "transformer-flux-schnell"),
                                         ("chroma", "transformer-chroma")])
def test_shipped_configs_are_what_the_real_shapes_give(kind, config):
    """The real models' layout, on the meta device: the BFL shapes our converter writes for the shipped
    config are the real file's (facts: qkv [9216, 3072], linear1 [21504, 3072], 19 + 38 blocks), and reading
    them back gives the shipped config."""
    from accelerate import init_empty_weights

    from lora_trainer.models.flux_configs import shipped_config
    from lora_trainer.models.flux_convert import diffusers_to_bfl
    from lora_trainer.models.flux_loading import transformer_config_from_bfl
    from lora_trainer.models.flux_tiny import transformer_class

    cfg = {k: v for k, v in shipped_config(config).items() if not k.startswith("_")}
    with init_empty_weights():
        model = transformer_class(kind)(**cfg)
    bfl = {k: list(v.shape) for k, v in diffusers_to_bfl(model.state_dict(), chroma=kind == "chroma").items()}
    assert bfl["double_blocks.18.img_attn.qkv.weight"] == [9216, 3072]
    assert bfl["single_blocks.37.linear1.weight"] == [21504, 3072]
    assert bfl["single_blocks.37.linear2.weight"] == [3072, 15360]
    assert bfl["img_in.weight"] == [3072, 64] and bfl["txt_in.weight"] == [3072, 4096]
    assert ("guidance_in.in_layer.weight" in bfl) == (kind == "flux-dev")
    assert ("double_blocks.0.img_mod.lin.weight" in bfl) == (kind != "chroma")
    if kind == "chroma":
        assert bfl["distilled_guidance_layer.in_proj.weight"] == [5120, 64]
    assert transformer_config_from_bfl(bfl, kind) == cfg


# ---- one-line refusals ---------------------------------------------------------------------------
def _write(path, tensors, dtype=torch.float16):
    save_file({k: torch.zeros(s, dtype=dtype) for k, s in tensors.items()}, str(path))
    return str(path)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_transformer_without_text_encoders_names_the_files(tmp_path, tiny_flux, tiny_chroma):
    paths = write_single_files(tiny_flux, str(tmp_path / "f"))
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(paths["transformer"], vae_path=paths["vae"])
    msg = _one_line(e)
    assert "clip_l_path" in msg and "t5xxl_path" in msg and "vae_path" not in msg
    chroma = write_single_files(tiny_chroma, str(tmp_path / "c"))
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(chroma["transformer"])
    msg = _one_line(e)
    assert "vae_path" in msg and "t5xxl_path" in msg and "clip_l_path" not in msg  # Chroma has no CLIP


def test_wrong_files_in_each_place_are_named(tmp_path, tiny_flux):
    paths = write_single_files(tiny_flux, str(tmp_path))
    sd_ckpt = _write(tmp_path / "v1-5.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": [4],
                                                     "cond_stage_model.transformer.x.weight": [4]})
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(sd_ckpt)
    assert "Stable Diffusion" in _one_line(e)
    lora = _write(tmp_path / "lora.safetensors", {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": [2, 4]})
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(lora)
    assert "LoRA" in _one_line(e) and "network_weights" in str(e.value)
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(paths["vae"])
    assert "vae_path" in _one_line(e)
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(paths["transformer"], vae_path=paths["vae"], clip_l_path=paths["t5"], t5xxl_path=paths["t5"])
    assert "clip_l_path" in _one_line(e) and "T5" in str(e.value)
    sd_vae = _write(tmp_path / "sd_vae.safetensors", {"decoder.conv_in.weight": [512, 4, 3, 3]})
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(paths["transformer"], vae_path=sd_vae, clip_l_path=paths["clip_l"], t5xxl_path=paths["t5"])
    assert "16-channel" in _one_line(e)


def test_unsupported_quantisations_are_refused_before_loading(tmp_path):
    nf4 = _write(tmp_path / "flux1-dev-bnb-nf4.safetensors", {
        "double_blocks.0.img_attn.norm.key_norm.scale": [4], "double_blocks.0.img_attn.qkv.weight": [8, 1],
        "double_blocks.0.img_attn.qkv.weight.absmax": [2], "guidance_in.in_layer.weight": [4, 4]}, dtype=torch.uint8)
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(nf4)
    assert "NF4" in _one_line(e)
    gguf = tmp_path / "flux1-dev-Q4_K_S.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(str(gguf))
    assert "GGUF" in _one_line(e)


def test_the_sd_loader_names_a_flux_file(tmp_path, tiny_flux):
    from lora_trainer.models.detect import detect_arch

    paths = write_single_files(tiny_flux, str(tmp_path), prefix="model.diffusion_model.")
    from safetensors.torch import load_file

    with pytest.raises(ModelLoadError) as e:
        detect_arch(load_file(paths["transformer"]), paths["transformer"])
    assert "FLUX.1-dev" in _one_line(e)


def test_builtin_names_and_missing_base(tmp_path):
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(str(tmp_path / "nope.safetensors"))
    assert "not found" in _one_line(e)
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(str(tmp_path / "sd"))
    assert "StableDiffusionPipeline" in _one_line(e)


def test_all_in_one_file_loads_without_part_paths(tmp_path, tiny_flux):
    """The Forge / ComfyUI checkpoint layout: transformer, `vae.`, `text_encoders.clip_l.transformer.` and
    `text_encoders.t5xxl.transformer.` in one file."""
    from safetensors.torch import load_file

    paths = write_single_files(tiny_flux, str(tmp_path / "parts"), prefix="model.diffusion_model.")
    sd = dict(load_file(paths["transformer"]))
    for part, prefix in (("vae", "vae."), ("clip_l", "text_encoders.clip_l.transformer."),
                         ("t5", "text_encoders.t5xxl.transformer.")):
        sd.update({prefix + k: v for k, v in load_file(paths[part]).items()})
    save_file(sd, str(tmp_path / "flux1-dev-aio.safetensors"))
    loaded = load_flux_parts(str(tmp_path / "flux1-dev-aio.safetensors"))
    assert torch.equal(transformer_out(loaded), transformer_out(tiny_flux))
    ids = tiny_flux["tokenizer"](["a star"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded["text_encoder"](ids).pooler_output, tiny_flux["text_encoder"](ids).pooler_output)


def test_diffusers_layout_transformer_file_loads(tmp_path, tiny_chroma):
    """A transformer saved by diffusers (`diffusion_pytorch_model.safetensors`) given as the single file."""
    paths = write_single_files(tiny_chroma, str(tmp_path))
    save_file({k: v.contiguous() for k, v in tiny_chroma["transformer"].state_dict().items()},
              str(tmp_path / "diffusion_pytorch_model.safetensors"))
    loaded = load_flux_parts(str(tmp_path / "diffusion_pytorch_model.safetensors"), vae_path=paths["vae"],
                             t5xxl_path=paths["t5"])
    assert loaded["kind"] == "chroma" and torch.equal(transformer_out(loaded), transformer_out(tiny_chroma))


def test_scaled_fp8_and_extra_text_encoder_keys(tmp_path, tiny_flux):
    """ComfyUI's 'scaled fp8' files are refused in one line; the projection head some clip_l files carry and
    T5 keys outside the encoder are ignored."""
    from safetensors.torch import load_file

    paths = write_single_files(tiny_flux, str(tmp_path))
    t5 = dict(load_file(paths["t5"]))
    scaled = {"scaled_fp8": torch.zeros(0), "encoder.block.0.layer.0.SelfAttention.q.scale_weight": torch.ones(1)}
    save_file({**t5, **scaled}, str(tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"))
    with pytest.raises(ModelLoadError) as e:
        load_flux_parts(paths["transformer"], vae_path=paths["vae"], clip_l_path=paths["clip_l"],
                        t5xxl_path=str(tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"))
    assert "t5xxl_path" in _one_line(e) and "scaled fp8" in str(e.value)
    clip = dict(load_file(paths["clip_l"]))
    save_file({**clip, "text_projection.weight": torch.zeros(64, 64), "logit_scale": torch.zeros(())},
              str(tmp_path / "clip_l_full.safetensors"))
    save_file({**t5, "logit_scale": torch.zeros(())}, str(tmp_path / "t5_extra.safetensors"))
    loaded = load_flux_parts(paths["transformer"], vae_path=paths["vae"],
                             clip_l_path=str(tmp_path / "clip_l_full.safetensors"),
                             t5xxl_path=str(tmp_path / "t5_extra.safetensors"))
    ids = tiny_flux["tokenizer"](["a star"], return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded["text_encoder"](ids).pooler_output, tiny_flux["text_encoder"](ids).pooler_output)
