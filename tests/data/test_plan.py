from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from lora_trainer.config import load_config
from lora_trainer.data import format_plan, make_plan, scan_dataset
from lora_trainer.data.arch_tables import TEXT_ENCODERS, UNET_ATTN, UNET_CONV, lora_params
from lora_trainer.data.plan import guess_arch
from tests.data.conftest import make_image


@pytest.fixture
def known(tmp_path: Path) -> Path:
    """10_a: 5 square images; 2_b: 3 landscape (2:1); plain: 1 portrait. resolution 128."""
    for i in range(5):
        make_image(tmp_path / "10_a" / f"s{i}.png", (128, 128))
    for i in range(3):
        make_image(tmp_path / "2_b" / f"l{i}.png", (200, 100))
    make_image(tmp_path / "plain" / "p.png", (100, 200))
    return tmp_path


def _cfg(root: Path, **extra):
    return load_config({"train_data_dir": str(root), "resolution": 128, "min_bucket_reso": 64,
                        "max_bucket_reso": 256, "batch_size": 4, "gradient_accumulation_steps": 2, "epochs": 3,
                        **extra}, check_paths=False)


def test_plan_numbers_for_known_dataset(known: Path) -> None:
    cfg = _cfg(known)
    plan = make_plan(cfg, scan_dataset(cfg), arch="sd1")
    assert plan.images == 9 and plan.samples_per_epoch == 50 + 6 + 1
    # buckets at 128² area, step 64, sides 64..256 (largest height per width): 64x256, 64x192, 128x128,
    # 192x64, 256x64; a 2:1 image is closer (log ratio) to 3:1 than to 1:1 → 192x64
    assert plan.buckets == {"128x128": 50, "192x64": 6, "64x192": 1}
    # batches: ceil(50/4)=13 + ceil(6/4)=2 + 1 = 16 → 8 optimizer steps per epoch (accumulation 2)
    assert plan.batches_per_epoch == 16 and plan.steps_per_epoch == 8
    assert plan.epochs == 3 and plan.total_steps == 24
    # SD1.5 rank 8: 192 UNet + 72 text-encoder modules, 4,718,592 parameters (≈ 9.4 MB in fp16)
    assert plan.lora_modules == {"unet": 192, "text_encoder": 72}
    assert plan.trainable_params == 4_718_592 and plan.lora_file_mb == pytest.approx(9.4, abs=0.1)
    assert plan.memory_gib and plan.memory_gib > 2
    d = plan.to_dict()
    json.dumps(d)
    assert d["total_steps"] == 24 and d["buckets"]["128x128"] == 50
    text = format_plan(plan)
    assert "24 total steps" in text and "4,718,592" in text and "10_a: 5 images x 10 repeats" in text


def test_plan_max_steps_world_size_and_arch_variants(known: Path) -> None:
    cfg = _cfg(known, max_train_steps=20, train_text_encoder=False, lora_rank=4, conv_dim=4)
    index = scan_dataset(cfg)
    plan = make_plan(cfg, index, arch="sdxl", world_size=2)
    assert plan.batches_per_epoch == 8 and plan.steps_per_epoch == 4
    assert plan.total_steps == 20 and plan.epochs == 5
    unet_attn, n_attn = lora_params(UNET_ATTN["sdxl"], 4)
    unet_conv, n_conv = lora_params(UNET_CONV["sdxl"], 4, 4)
    assert plan.trainable_params == unet_attn + unet_conv and plan.lora_modules == {"unet": n_attn + n_conv}
    assert n_attn == 722


def test_guess_arch_from_header(tmp_path: Path) -> None:
    def fake_checkpoint(name: str, key: str) -> str:
        header = json.dumps({key: {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}).encode()
        path = tmp_path / name
        path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00\x00")
        return str(path)

    for key, arch in [("conditioner.embedders.1.model.ln_final.weight", "sdxl"),
                      ("cond_stage_model.model.ln_final.weight", "sd2"),
                      ("cond_stage_model.transformer.text_model.final_layer_norm.weight", "sd1")]:
        cfg = load_config({"base_model": fake_checkpoint(f"{arch}.safetensors", key)}, check_paths=False)
        assert guess_arch(cfg) == (arch, "checkpoint keys")
    assert guess_arch(load_config({"model_type": "sd2"}, check_paths=False)) == ("sd2", "model_type")
    assert guess_arch(load_config({"base_model": "builtin:tiny-sd1"}, check_paths=False))[0] is None


def test_tables_match_real_modules() -> None:
    """Re-count the tables from the real diffusers / transformers classes on the meta device."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    sd1 = dict(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(320, 640, 1280, 1280),
               cross_attention_dim=768, attention_head_dim=8)
    sdxl = dict(down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
                attention_head_dim=(5, 10, 20), use_linear_projection=True)
    for arch, cfg in (("sd1", sd1), ("sdxl", sdxl)):
        with torch.device("meta"):
            unet = diffusers.UNet2DConditionModel(**cfg)
        attn: dict = {}
        for module in unet.modules():
            if type(module).__name__ == "Transformer2DModel":
                for child in module.modules():
                    if isinstance(child, torch.nn.Linear):
                        k = (child.in_features, child.out_features, 1)
                    elif isinstance(child, torch.nn.Conv2d):
                        k = (child.in_channels, child.out_channels, child.kernel_size[0])
                    else:
                        continue
                    attn[k] = attn.get(k, 0) + 1
        assert sorted((a, b, c, n) for (a, b, c), n in attn.items()) == sorted(UNET_ATTN[arch])
    with torch.device("meta"):
        clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(hidden_size=768, num_hidden_layers=12,
                                                                      intermediate_size=3072))
    counted = lora_params([(m.in_features, m.out_features, 1, 1) for n, m in clip.named_modules()
                           if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in
                           ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")], 8)
    assert counted == lora_params(TEXT_ENCODERS["sd1"][0], 8)
