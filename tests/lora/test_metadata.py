"""Metadata keys of DESIGN.md §3 and the A1111 sidecars."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from lora_trainer.lora.file import load_lora_file, save_lora_file
from lora_trainer.lora.metadata import build_metadata, write_sidecars

REQUIRED = ["ss_output_name", "ss_base_model_version", "ss_v2", "ss_sd_model_name", "ss_network_module",
            "ss_network_dim", "ss_network_alpha", "ss_resolution", "ss_num_train_images", "ss_tag_frequency",
            "ss_dataset_dirs", "ss_training_started_at", "ss_steps", "ss_epoch", "ss_learning_rate", "ss_clip_skip",
            "ss_seed", "modelspec.architecture", "modelspec.title", "modelspec.trigger_phrase",
            "modelspec.prediction_type"]


@pytest.mark.parametrize("arch, pred, version, v2, spec", [
    ("sd1", "epsilon", "sd_v1", "False", "stable-diffusion-v1/lora"),
    ("sd2", "v_prediction", "sd_v2_v", "True", "stable-diffusion-v2-768-v/lora"),
    ("sd2", "epsilon", "sd_v2", "True", "stable-diffusion-v2-512/lora"),
    ("sdxl", "epsilon", "sdxl_base_v1-0", "False", "stable-diffusion-xl-v1-base/lora"),
])
def test_build_metadata_keys(arch, pred, version, v2, spec):
    m = build_metadata(output_name="cat_style", arch=arch, rank=8, alpha=4, prediction_type=pred,
                       sd_model_name="v1-5-pruned.safetensors", resolution="768,512", num_train_images=12,
                       tag_frequency={"10_cat": {"cat": 12, "orange": 3}},
                       dataset_dirs={"10_cat": {"n_repeats": 10, "img_count": 12}},
                       training_started_at=1700000000.5, steps=120, epoch=10, learning_rate=2e-4, clip_skip=2,
                       seed=7, trigger_words=["sks cat", "orange"], conv_rank=4, conv_alpha=1)
    assert set(REQUIRED) <= set(m) and all(isinstance(v, str) for v in m.values())
    assert m["ss_output_name"] == m["modelspec.title"] == "cat_style"
    assert (m["ss_base_model_version"], m["ss_v2"], m["modelspec.architecture"]) == (version, v2, spec)
    assert m["ss_network_module"] == "networks.lora"
    assert (m["ss_network_dim"], m["ss_network_alpha"]) == ("8", "4.0")
    assert m["ss_resolution"] == "(768, 512)"
    assert json.loads(m["ss_tag_frequency"]) == {"10_cat": {"cat": 12, "orange": 3}}
    assert json.loads(m["ss_dataset_dirs"])["10_cat"] == {"n_repeats": 10, "img_count": 12}
    assert float(m["ss_training_started_at"]) == 1700000000.5
    assert (m["ss_steps"], m["ss_epoch"], m["ss_clip_skip"], m["ss_seed"]) == ("120", "10", "2", "7")
    assert float(m["ss_learning_rate"]) == 2e-4
    assert m["modelspec.trigger_phrase"] == "sks cat, orange"
    assert m["modelspec.prediction_type"] == ("v" if pred.startswith("v") else "epsilon")
    assert json.loads(m["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1"}


def test_metadata_survives_a_file_round_trip(tmp_path):
    import torch

    m = build_metadata(output_name="x", arch="sd1", rank=2, alpha=2, extra={"ss_custom": {"a": 1}})
    sd = {"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(2, 4),
          "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(4, 2),
          "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha": torch.tensor(2.0)}
    save_lora_file(tmp_path / "x.safetensors", sd, m)
    _, meta = load_lora_file(tmp_path / "x.safetensors")
    assert {k: meta[k] for k in m} == m and json.loads(meta["ss_custom"]) == {"a": 1}
    with pytest.raises(ValueError):
        build_metadata(output_name="x", arch="sd3", rank=2, alpha=2)


def test_sidecars(tmp_path):
    lora = tmp_path / "cat_style.safetensors"
    img = Image.new("RGB", (16, 16), (200, 10, 10))
    out = write_sidecars(lora, trigger_words="sks cat", preferred_weight=0.8, arch="sdxl",
                         description="a cat", notes="rank 8", preview=img)
    data = json.loads((tmp_path / "cat_style.json").read_text())
    assert data == {"activation text": "sks cat", "preferred weight": 0.8, "sd version": "SDXL",
                    "description": "a cat", "notes": "rank 8"}
    with Image.open(tmp_path / "cat_style.preview.png") as p:
        assert p.format == "PNG" and p.size == (16, 16) and p.getpixel((0, 0)) == (200, 10, 10)
    assert out["preview"] == tmp_path / "cat_style.preview.png"
    # a user's own keys survive a rewrite; a preview given as a jpg path becomes a png
    data["negative text"] = "blurry"
    (tmp_path / "cat_style.json").write_text(json.dumps(data))
    jpg = tmp_path / "p.jpg"
    img.save(jpg)
    write_sidecars(lora, trigger_words=["a", "b"], arch="sd1", preview=jpg)
    data = json.loads((tmp_path / "cat_style.json").read_text())
    assert data["negative text"] == "blurry" and data["activation text"] == "a, b" and data["sd version"] == "SD1"
    with Image.open(tmp_path / "cat_style.preview.png") as p:
        assert p.format == "PNG"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["cat_style.json", "cat_style.preview.png", "p.jpg"]
