"""load_adapter: builtin tiny models, diffusers folders, single-file checkpoints (written in the original
LDM/SGM layout and loaded back through the real conversion path), tokenizers, pickles, errors."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from ldm_layout import adapter_to_ldm
from models_helpers import tiny_raw_adapter, write_tiny_configs
from safetensors.torch import load_file, save_file

from lora_trainer.config import TrainConfig
from lora_trainer.errors import ModelLoadError, UserError
from lora_trainer.models import loading, tiny
from lora_trainer.models.tiny_tokenizer import write_tokenizer
from lora_trainer.synthetic import VOCABULARY


def _cfg(base: str, tmp_path, **kw) -> TrainConfig:
    return TrainConfig(**{"base_model": base, "device": "cpu", "model_cache_dir": str(tmp_path / "empty_hf_cache"),
                          **kw})


def _same_weights(a, b) -> None:
    for name, m in a.modules().items():
        sa, sb = m.state_dict(), b.modules()[name].state_dict()
        assert set(sa) == set(sb), name
        bad = [k for k in sa if not torch.equal(sa[k], sb[k])]
        assert not bad, f"{name}: {bad[:3]}"


def test_builtin_tiny_loads_pretrained_weights(tmp_path):
    a = loading.load_adapter(_cfg("builtin:tiny-sd1", tmp_path))
    assert a.arch == "sd1" and a.info.extra["pretrained"]
    shipped = load_file(tiny.weights_path("sd1"))
    w = shipped["unet.conv_in.weight"].float()
    assert torch.equal(a.unet.conv_in.weight.detach(), w)
    assert a.latent_scale == pytest.approx(float(shipped["vae.__scaling_factor__"]))
    assert os.path.getsize(tiny.weights_path("sd1")) < 8e6
    x = loading.load_adapter(_cfg("builtin:tiny-sdxl", tmp_path))
    assert x.arch == "sdxl" and len(x.text_encoders) == 2
    with pytest.raises(ModelLoadError, match="tiny-sd1"):
        loading.load_adapter(_cfg("builtin:tiny-sd9", tmp_path))
    with pytest.raises(ModelLoadError, match="model_type"):
        loading.load_adapter(_cfg("builtin:tiny-sd1", tmp_path, model_type="sdxl"))


def test_diffusers_folder_round_trip(tmp_path, sd1):
    folder = tiny.save_tiny_model(str(tmp_path / "tiny-sd1"), "sd1")
    b = loading.load_adapter(_cfg(folder, tmp_path))
    assert b.arch == "sd1" and b.info.model_name == "tiny-sd1"
    _same_weights(sd1, b)
    assert torch.equal(b.encode_text(["zqx checker star"])["crossattn"],
                       sd1.encode_text(["zqx checker star"])["crossattn"])


def _write_single_file(tmp_path, arch: str, metadata=None, tokenizers=True):
    a = tiny_raw_adapter(arch, seed=1)
    loading_root = write_tiny_configs(str(tmp_path / "configs"), a)
    path = tmp_path / f"model-{arch}.safetensors"
    sd = adapter_to_ldm(a)
    # keys real checkpoints carry besides the weights (EMA bookkeeping, schedule, CLIP position ids)
    sd.update({"model_ema.decay": torch.tensor(0.9999), "alphas_cumprod": torch.ones(1000)})
    if arch != "sd2":
        pre = "cond_stage_model.transformer." if arch == "sd1" else "conditioner.embedders.0.transformer."
        sd[pre + "text_model.embeddings.position_ids"] = torch.arange(77.0).unsqueeze(0)
    save_file(sd, str(path), metadata=metadata)
    if tokenizers:
        for sub in ("tokenizer", "tokenizer_2"):
            write_tokenizer(str(tmp_path / sub), VOCABULARY)
    return a, str(path), loading_root


@pytest.mark.parametrize("arch", ["sd1", "sd2", "sdxl"])
def test_single_file_round_trip(tmp_path, monkeypatch, arch):
    a, path, root = _write_single_file(tmp_path, arch)
    monkeypatch.setattr(loading, "CONFIG_ROOT", root)  # tiny configs instead of the real ones
    b = loading.load_adapter(_cfg(path, tmp_path))
    assert b.arch == arch and b.info.prediction_type == "epsilon"
    assert b.info.model_name == f"model-{arch}.safetensors"
    _same_weights(a, b)
    if arch == "sd2":
        assert b.tokenizers[0].pad_token == "!"  # open_clip pads with "!"
    lat = torch.zeros(1, 4, 8, 8)
    cond = b.encode_text(["zqx"])
    with torch.no_grad():  # same weights; attention kernels may differ in the last bits
        torch.testing.assert_close(b.predict(lat, torch.tensor([3]), cond), a.predict(lat, torch.tensor([3]), cond))


def test_sd2_v_prediction_detection(tmp_path, monkeypatch):
    a, path, root = _write_single_file(tmp_path, "sd2", metadata={"modelspec.prediction_type": "v"})
    monkeypatch.setattr(loading, "CONFIG_ROOT", root)
    b = loading.load_adapter(_cfg(path, tmp_path))
    assert b.info.prediction_type == "v_prediction"
    assert b.metadata()["ss_base_model_version"] == "sd_v2_v" and b.metadata()["ss_v2"] == "True"
    assert loading.load_adapter(_cfg(path, tmp_path, v_parameterization=False)).info.prediction_type == "epsilon"
    # A1111's convention: a yaml beside the checkpoint says parameterization: "v"
    plain = tmp_path / "plain-sd2.safetensors"
    save_file(adapter_to_ldm(a), str(plain))
    (tmp_path / "plain-sd2.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert loading.load_adapter(_cfg(str(plain), tmp_path)).info.prediction_type == "v_prediction"


def test_model_type_mismatch_and_non_models(tmp_path, monkeypatch):
    a, path, root = _write_single_file(tmp_path, "sd1")
    monkeypatch.setattr(loading, "CONFIG_ROOT", root)
    with pytest.raises(ModelLoadError, match="model_type"):
        loading.load_adapter(_cfg(path, tmp_path, model_type="sdxl"))
    lora = tmp_path / "my_lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(lora))
    with pytest.raises(ModelLoadError, match="LoRA file"):
        loading.load_adapter(_cfg(str(lora), tmp_path))
    with pytest.raises(ModelLoadError, match="not found"):
        loading.load_adapter(_cfg(str(tmp_path / "nope.safetensors"), tmp_path))
    (tmp_path / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ModelLoadError, match="re-download"):
        loading.load_adapter(_cfg(str(tmp_path / "broken.safetensors"), tmp_path))


def test_missing_tokenizer_says_what_to_put_where(tmp_path, monkeypatch):
    _, path, root = _write_single_file(tmp_path, "sd1", tokenizers=False)
    monkeypatch.setattr(loading, "CONFIG_ROOT", root)
    with pytest.raises(ModelLoadError) as e:
        loading.load_adapter(_cfg(path, tmp_path))
    msg = str(e.value)
    assert "tokenizer/vocab.json + tokenizer/merges.txt" in msg and "openai/clip-vit-large-patch14" in msg
    assert str(tmp_path / "tokenizer") in msg and "tokenizer_path" in msg
    assert isinstance(e.value, UserError)
    tok = tmp_path / "elsewhere"
    write_tokenizer(str(tok), VOCABULARY)
    assert loading.load_adapter(_cfg(path, tmp_path, tokenizer_path=str(tok))).arch == "sd1"


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_ckpt_weights_only(tmp_path, monkeypatch):
    a, _, root = _write_single_file(tmp_path, "sd1")
    monkeypatch.setattr(loading, "CONFIG_ROOT", root)
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": adapter_to_ldm(a), "global_step": 10}, str(ckpt))
    b = loading.load_adapter(_cfg(str(ckpt), tmp_path))
    _same_weights(a, b)
    evil = tmp_path / "evil.ckpt"
    with open(evil, "wb") as f:
        pickle.dump({"state_dict": {"x": _Evil(str(tmp_path / "pwned"))}}, f)
    with pytest.raises(ModelLoadError, match="weights_only=True") as e:
        loading.load_adapter(_cfg(str(evil), tmp_path))
    assert ".safetensors" in str(e.value)
    assert not (tmp_path / "pwned").exists()  # the pickle's code never ran


def test_tokenizer_from_local_hf_cache(tmp_path, monkeypatch):
    _, path, root = _write_single_file(tmp_path, "sd1", tokenizers=False)
    monkeypatch.setattr(loading, "CONFIG_ROOT", root)
    cache = tmp_path / "hf"
    snap = cache / "models--openai--clip-vit-large-patch14" / "snapshots" / "abc123"
    write_tokenizer(str(snap), VOCABULARY)
    (cache / "models--openai--clip-vit-large-patch14" / "refs").mkdir(parents=True)
    (cache / "models--openai--clip-vit-large-patch14" / "refs" / "main").write_text("abc123")
    b = loading.load_adapter(_cfg(path, tmp_path, model_cache_dir=str(cache)))
    assert b.tokenizers[0]("zqx").input_ids[1] == b.tokenizers[0].convert_tokens_to_ids("zqx</w>")


@pytest.mark.parametrize("layout", ["ldm", "diffusers"])
def test_vae_path_replaces_the_checkpoint_vae(tmp_path, monkeypatch, layout):
    from ldm_layout import vae_to_ldm

    a, path, root = _write_single_file(tmp_path, "sd1")
    monkeypatch.setattr(loading, "CONFIG_ROOT", root)
    other = tiny_raw_adapter("sd1", seed=7).vae
    sd = vae_to_ldm(other, prefix="") if layout == "ldm" else other.state_dict()
    vae_file = tmp_path / "my-vae.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(vae_file))
    b = loading.load_adapter(_cfg(path, tmp_path, vae_path=str(vae_file)))
    for k, v in other.state_dict().items():
        assert torch.equal(b.vae.state_dict()[k], v), k
    assert torch.equal(b.unet.conv_in.weight, a.unet.conv_in.weight)
