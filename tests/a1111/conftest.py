"""Tiny real `ldm` LatentDiffusion models (SD1 eps, SD2 v + open_clip) built from small YAMLs.

Runs only in the A1111-pinned venv (`make test-a1111`): the real `ldm` package (stable-diffusion-sdkit),
transformers 4.30, no diffusers. Weights are random; zero-initialised layers are re-randomised so the
UNet output (and so every LoRA gradient) is not identically zero.
"""

from __future__ import annotations

import os
import sys
import threading
import types

import pytest

ldm = pytest.importorskip("ldm", reason="needs the A1111 venv (make test-a1111)")
torch = pytest.importorskip("torch")

import pytorch_lightning.utilities.rank_zero  # noqa: E402  (the shim A1111 applies at start-up)

# one thread: on a shared 2-core machine two spinning threads make tiny convs ~20x slower
torch.set_num_threads(1)

sys.modules.setdefault("pytorch_lightning.utilities.distributed", pytorch_lightning.utilities.rank_zero)

UNET = """
    unet_config:
      target: ldm.modules.diffusionmodules.openaimodel.UNetModel
      params:
        image_size: 32
        in_channels: 4
        out_channels: 4
        model_channels: 32
        attention_resolutions: [4, 2, 1]
        num_res_blocks: 2
        channel_mult: [1, 2, 4, 4]
        {heads}
        use_spatial_transformer: True
        transformer_depth: 1
        context_dim: 32
        use_checkpoint: False
        legacy: False
        {linear}
"""

VAE = """
    first_stage_config:
      target: ldm.models.autoencoder.AutoencoderKL
      params:
        embed_dim: 4
        monitor: val/rec_loss
        ddconfig:
          double_z: true
          z_channels: 4
          resolution: 64
          in_channels: 3
          out_ch: 3
          ch: 32
          ch_mult: [1, 2, 4, 4]
          num_res_blocks: 1
          attn_resolutions: []
          dropout: 0.0
        lossconfig:
          target: torch.nn.Identity
"""

HEAD = """model:
  target: ldm.models.diffusion.ddpm.LatentDiffusion
  params:
    linear_start: 0.00085
    linear_end: 0.0120
    num_timesteps_cond: 1
    timesteps: 1000
    first_stage_key: jpg
    cond_stage_key: txt
    image_size: 8
    channels: 4
    cond_stage_trainable: false
    conditioning_key: crossattn
    scale_factor: 0.18215
    use_ema: False
    {param}
"""

WORDS = ["a", "photo", "of", "red", "blue", "green", "square", "circle", "cat", "dog", "style", "painting", "sks"]


def _write_tiny_clip(folder: str) -> str:
    from transformers import CLIPTextConfig, CLIPTextModel

    from lora_trainer.models.tiny_tokenizer import write_tokenizer

    write_tokenizer(folder, WORDS)
    import json
    with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as fh:
        vocab = len(json.load(fh))
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
                         bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1)
    CLIPTextModel(cfg).save_pretrained(folder)
    return folder


def _register_tiny_open_clip(folder: str) -> str:
    import json

    import open_clip

    os.makedirs(folder, exist_ok=True)
    spec = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 3}}
    with open(os.path.join(folder, "tinyclip-lt.json"), "w") as fh:
        json.dump(spec, fh)
    open_clip.add_model_config(folder)
    return "tinyclip-lt"


def _randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and p.abs().sum() == 0:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
        for mod in model.modules():
            if isinstance(mod, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and mod.weight is not None:
                mod.weight.copy_(1 + 0.1 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.1 * torch.randn(mod.bias.shape, generator=g))


def build_ldm(tmp: str, kind: str) -> torch.nn.Module:
    from ldm.util import instantiate_from_config
    from omegaconf import OmegaConf

    if kind == "sd1":
        clip = _write_tiny_clip(os.path.join(tmp, "clip"))
        cond = f"""
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenCLIPEmbedder
      params:
        version: {clip}
        device: cpu
"""
        text = HEAD.format(param="") + UNET.format(heads="num_heads: 4", linear="") + VAE + cond
    else:
        arch = _register_tiny_open_clip(os.path.join(tmp, "open_clip_cfg"))
        cond = f"""
    cond_stage_config:
      target: ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder
      params:
        arch: {arch}
        version: null
        device: cpu
        freeze: True
        layer: penultimate
"""
        text = (HEAD.format(param="parameterization: v") +
                UNET.format(heads="num_head_channels: 8", linear="use_linear_in_transformer: True") + VAE + cond)
    path = os.path.join(tmp, f"tiny-{kind}.yaml")
    with open(path, "w") as fh:
        fh.write(text)
    torch.manual_seed(1234)
    model = instantiate_from_config(OmegaConf.load(path).model)
    _randomise(model, 4321)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model.cond_stage_model.device = "cpu"
    return model


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory):
    return build_ldm(str(tmp_path_factory.mktemp("sd1")), "sd1")


@pytest.fixture(scope="session")
def tiny_sd2v(tmp_path_factory):
    pytest.importorskip("open_clip")
    return build_ldm(str(tmp_path_factory.mktemp("sd2")), "sd2")


class FakeState:
    """The attributes of A1111's shared.state the host uses (the real one needs `modules`)."""

    def __init__(self):
        self.job = ""
        self.job_count = self.job_no = self.sampling_step = self.sampling_steps = 0
        self.textinfo = ""
        self.interrupted = False
        self.began = self.ended = 0

    def begin(self, job=""):
        self.job, self.interrupted = job, False
        self.began += 1

    def end(self):
        self.ended += 1


@pytest.fixture
def services_factory(tmp_path):
    from lora_trainer.hosts.webui import WebUIServices

    def make(model, **kw):
        calls = {"undo": 0, "apply": 0, "unmerge": 0, "refresh": 0}

        def count(name):
            def fn(*_a):
                calls[name] += 1
                return 0
            return fn

        cmd_opts = types.SimpleNamespace(lora_dir=str(tmp_path / "models" / "Lora"), ckpt_dir=None, vae_dir=None,
                                         embeddings_dir=None, lowvram=False, medvram=False, medvram_sdxl=False,
                                         disable_extension_access=False, data_dir=str(tmp_path))
        for k, v in kw.pop("cmd", {}).items():
            setattr(cmd_opts, k, v)
        svc = WebUIServices(sd_model_getter=lambda: model, state=FakeState(), queue_lock=threading.Lock(),
                            cmd_opts=cmd_opts, opts=types.SimpleNamespace(training_xattention_optimizations=False),
                            undo_optimizations=count("undo"), apply_optimizations=count("apply"),
                            unmerge_networks=count("unmerge"), refresh_loras=count("refresh"), device="cpu", **kw)
        svc.extra["calls"] = calls
        return svc

    return make


@pytest.fixture
def dataset(tmp_path):
    """Four 64x64 images of one concept with captions."""
    from PIL import Image, ImageDraw

    folder = tmp_path / "data" / "1_sks"
    folder.mkdir(parents=True)
    for i in range(4):
        im = Image.new("RGB", (64, 64), (30 + 10 * i, 40, 200))
        d = ImageDraw.Draw(im)
        d.ellipse((10 + i, 12, 50 + i, 52), fill=(240, 200 - 20 * i, 20))
        im.save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text("a photo of sks circle")
    return str(tmp_path / "data")
