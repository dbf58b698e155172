from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from lora_trainer.config import TrainConfig, config_fields, load_config, markdown_reference, parse_override
from lora_trainer.config.validation import validate_config
from lora_trainer.errors import ConfigError, UserError


def test_seed_config_loads_as_written(seed_project: Path) -> None:
    cfg = load_config(seed_project / "seed.yaml")
    assert cfg.learning_rate == pytest.approx(2e-4) and isinstance(cfg.learning_rate, float)
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout) == (8, 8.0, 0.1)
    assert (cfg.batch_size, cfg.epochs, cfg.gradient_accumulation_steps, cfg.save_steps) == (4, 10, 2, 100)
    # relative paths resolve against the config file's folder, not the cwd
    assert cfg.train_data_dir == str(seed_project / "data" / "style_train")
    assert cfg.metadata_path == str(seed_project / "data" / "style_train" / "metadata.csv")
    assert cfg.base_model == str(seed_project / "models" / "Stable-diffusion" / "v1-5-pruned.safetensors")
    assert cfg.output_dir == str(seed_project / "output" / "my_style_lora")
    assert cfg.effective_output_name == "my_style_lora"
    assert cfg.effective_logging_dir == str(seed_project / "output" / "my_style_lora" / "logs")


def test_nested_form_equals_flat_form(seed_project: Path) -> None:
    flat = load_config(seed_project / "seed.yaml")
    nested = {
        "data": {"train_data_dir": "./data/style_train", "metadata_path": "./data/style_train/metadata.csv"},
        "model": {"base_model": "./models/Stable-diffusion/v1-5-pruned.safetensors"},
        "network": {"network_dim": 8, "network_alpha": 8, "lora_dropout": 0.1},
        "training": {"train_batch_size": 4, "max_train_epochs": 10, "learning_rate": "2e-4",
                     "gradient_accumulation_steps": 2},
        "output": {"output_dir": "./output/my_style_lora", "save_every_n_steps": 100},
    }
    path = seed_project / "nested.yaml"
    path.write_text(yaml.safe_dump(nested), encoding="utf-8")
    assert load_config(path) == flat


def test_to_yaml_round_trips(seed_project: Path) -> None:
    cfg = load_config(seed_project / "seed.yaml", ["resolution=768,1024", "sample_prompts=[a cat, a dog]",
                                                   "optimizer_args=[\"betas=0.9,0.99\"]", "min_snr_gamma=5"])
    again = load_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg
    assert again.resolution == (768, 1024) and again.resolution_wh == (768, 1024)
    out = seed_project / "saved.yaml"
    cfg.save_yaml(out, only_changed=True)
    assert load_config(out) == cfg


def test_overrides_are_typed(seed_project: Path) -> None:
    cfg = load_config(seed_project / "seed.yaml", [
        "training.learning_rate=5e-5", "lora_rank=16", "flip_aug=yes", "output_name=123",
        "max_train_steps=null", "network_alpha=4", "trigger_word=yes", "unet_lr=1e-4"])
    assert cfg.learning_rate == pytest.approx(5e-5)
    assert cfg.lora_rank == 16 and cfg.lora_alpha == 4.0 and cfg.flip_aug is True
    assert cfg.output_name == "123" and cfg.trigger_word == "yes"  # text fields keep the raw text
    assert cfg.effective_unet_lr == pytest.approx(1e-4) and cfg.effective_text_encoder_lr == pytest.approx(5e-5)
    assert parse_override("data.resolution=768") == {"data": {"resolution": 768}}
    with pytest.raises(ConfigError) as exc:
        load_config(seed_project / "seed.yaml", ["lora_rank"])
    assert "key=value" in str(exc.value)


def test_kohya_keys(tmp_path: Path) -> None:
    cfg = load_config({"network_train_unet_only": True, "optimizer_type": "AdamW8bit", "v2": True,
                       "save_model_as": "safetensors", "caption_extention": "caption", "log_with": "tensorboard",
                       "optimizer_args": ["weight_decay=0.1", "betas=0.9,0.99"]}, check_paths=False)
    assert cfg.train_text_encoder is False and cfg.optimizer == "adamw8bit" and cfg.model_type == "sd2"
    assert cfg.caption_extension == ".caption"
    assert cfg.optimizer_args == {"weight_decay": 0.1, "betas": [0.9, 0.99]}
    assert any("log_with" in n for n in cfg.notes)
    with pytest.raises(ConfigError) as exc:
        load_config({"save_model_as": "ckpt"}, check_paths=False)
    assert exc.value.field == "save_model_as"


@pytest.mark.parametrize(("raw", "field", "words"), [
    ({"lora_rnak": 4}, "lora_rnak", "did you mean 'lora_rank'"),
    ({"training": {"learnig_rate": 1e-4}}, "training.learnig_rate", "did you mean 'learning_rate'"),
    ({"lora_rank": "eight"}, "lora_rank", "whole number"),
    ({"batch_size": True}, "batch_size", "whole number"),
    ({"learning_rate": "fast"}, "learning_rate", "number"),
    ({"flip_aug": "maybe"}, "flip_aug", "true or false"),
    ({"lora_rank": 0}, "lora_rank", "at least 1"),
    ({"network_dim": 0}, "network_dim", "at least 1"),
    ({"learning_rate": 0}, "learning_rate", "greater than 0"),
    ({"caption_dropout_rate": 1.5}, "caption_dropout_rate", "at most 1"),
    ({"optimizer": "adamww"}, "optimizer", "did you mean 'adamw'"),
    ({"mixed_precision": "fp8"}, "mixed_precision", "not one of"),
    ({"resolution": 500}, "resolution", "multiple of 64"),
    ({"resolution": "512,700"}, "resolution", "multiple of 64"),
    ({"bucket_reso_steps": 12}, "bucket_reso_steps", "multiple of 8"),
    ({"min_bucket_reso": 300}, "min_bucket_reso", "multiple of bucket_reso_steps"),
    ({"resolution": 1024, "max_bucket_reso": 768}, "max_bucket_reso", "smaller than the resolution"),
    ({"min_bucket_reso": 1024, "max_bucket_reso": 512}, "min_bucket_reso", "larger than max_bucket_reso"),
    ({"cache_text_encoder_outputs": True}, "cache_text_encoder_outputs", "train_text_encoder"),
    ({"random_crop": True}, "random_crop", "cache_latents"),
    ({"train_unet": False, "train_text_encoder": False}, "train_unet", "nothing to train"),
    ({"validation_split": 0.2, "validation_data_dir": "./val"}, "validation_split", "choose one"),
    ({"validation_split": 0.9}, "validation_split", "at most 0.5"),
    ({"save_ema": True}, "save_ema", "needs ema_decay"),
    ({"ema_decay": 1.0}, "ema_decay", "at most"),
    ({"prior_loss_weight": -1}, "prior_loss_weight", "at least 0"),
    ({"task_type": "text-generation", "reg_data_dir": "./reg"}, "reg_data_dir", "image LoRAs"),
])
def test_bad_config_names_the_field(raw: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(raw, check_paths=False)
    assert exc.value.field == field
    assert words in str(exc.value)
    assert isinstance(exc.value, UserError)


def test_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    ok = {"train_data_dir": "imgs", "base_model": "builtin:tiny-sd1"}
    assert load_config(ok, base_dir=str(tmp_path)).train_data_dir == str(tmp_path / "imgs")
    # a HuggingFace id is not a path and is left for the model loader
    assert load_config({**ok, "base_model": "runwayml/stable-diffusion-v1-5"},
                       base_dir=str(tmp_path)).base_model == "runwayml/stable-diffusion-v1-5"
    cases = [({"train_data_dir": "nope"}, "train_data_dir"),
             ({"metadata_path": "imgs/metadata.csv"}, "metadata_path"),
             ({"base_model": "./models/missing.safetensors"}, "base_model"),
             ({"base_model": "missing.safetensors"}, "base_model"),
             ({"network_weights": "x.safetensors"}, "network_weights")]
    for change, field in cases:
        with pytest.raises(ConfigError) as exc:
            load_config({**ok, **change}, base_dir=str(tmp_path))
        assert exc.value.field == field, change
        assert "not found" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_config({"train_data_dir": "imgs"}, base_dir=str(tmp_path))
    assert exc.value.field == "base_model" and "required" in str(exc.value)
    load_config({"train_data_dir": "imgs"}, base_dir=str(tmp_path), require=("train_data_dir",))


def test_bad_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("lora_rank: 8\n  oops: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.field == "config" and "bad.yaml" in str(exc.value)
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(path)


def test_schema_drives_docs_and_form() -> None:
    fields = config_fields()
    names = [f.name for f in fields]
    assert len(names) == len(set(names))
    assert {"lora_rank", "max_seq_length", "target_modules", "sample_prompts", "trust_remote_code"} <= set(names)
    assert "source_path" not in names and "notes" not in names
    for f in fields:
        assert f.help and f.section
        assert f.to_dict()["name"] == f.name
    text = markdown_reference()
    for name in names:
        assert f"`{name}`" in text
    # the committed docs/config.md is the generated one
    doc = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert doc.read_text(encoding="utf-8") == text, "run: python -m lora_trainer.config --markdown"


def test_defaults_are_valid() -> None:
    cfg = TrainConfig()
    validate_config(cfg, check_paths=False)
    assert cfg.resolution_wh == (512, 512)
    assert load_config({}, check_paths=False) == cfg


def test_sample_prompt_file(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("# comment\na cat\n\na dog\n", encoding="utf-8")
    cfg = load_config({"sample_prompts": "prompts.txt"}, base_dir=str(tmp_path), check_paths=False)
    assert cfg.sample_prompts == os.path.join(str(tmp_path), "prompts.txt")
    assert cfg.sample_prompt_list() == ["a cat", "a dog"]


def test_bucket_limits_follow_resolution_unless_set() -> None:
    small = load_config({"resolution": 64}, check_paths=False)
    assert (small.min_bucket_reso, small.max_bucket_reso) == (64, 1024)
    big = load_config({"resolution": "1024,1536"}, check_paths=False)
    assert (big.min_bucket_reso, big.max_bucket_reso) == (256, 1536)
    with pytest.raises(ConfigError) as exc:
        load_config({"resolution": 64, "min_bucket_reso": 256}, check_paths=False)
    assert exc.value.field == "min_bucket_reso"


def test_network_args_toml_and_config_input(tmp_path: Path) -> None:
    cfg = load_config({"network_args": ["conv_dim=4", "conv_alpha=2"]}, check_paths=False)
    assert (cfg.conv_dim, cfg.effective_conv_alpha) == (4, 2.0)
    with pytest.raises(ConfigError) as exc:
        load_config({"network_args": ["algo=ia3"]}, check_paths=False)
    assert exc.value.field == "network_args.algo"
    assert load_config({"network_args": ["algo=lokr"]}, check_paths=False).network_type == "lokr"
    toml = tmp_path / "kohya.toml"
    toml.write_text('network_dim = 16\nlearning_rate = 2e-4\n[training]\ntrain_batch_size = 2\n', encoding="utf-8")
    from_toml = load_config(toml, check_paths=False)
    assert (from_toml.lora_rank, from_toml.learning_rate, from_toml.batch_size) == (16, 2e-4, 2)
    again = load_config(from_toml, ["lora_rank=32"], check_paths=False)
    assert again.lora_rank == 32 and again.batch_size == 2 and again.learning_rate == 2e-4


def test_errors_use_the_spelling_of_the_user() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config({"training": {"train_batch_size": 0}}, check_paths=False)
    assert exc.value.field == "training.train_batch_size"
    with pytest.raises(ConfigError) as exc:
        load_config({}, ["network.network_alpha=-1"], check_paths=False)
    assert exc.value.field == "network.network_alpha"


def test_resume_duplicates_and_yaml_booleans(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    cfg = load_config({"resume": "state", "lora_rank": 8, "network": {"network_dim": 16}}, base_dir=str(tmp_path),
                      check_paths=False)
    assert cfg.resume_from_checkpoint == str(tmp_path / "state") and cfg.lora_rank == 16
    assert any("both set lora_rank" in n for n in cfg.notes)
    assert load_config({"resume_from_checkpoint": "latest"}, check_paths=False).resume_from_checkpoint == "latest"
    with pytest.raises(ConfigError) as exc:
        load_config({"resume_from_checkpoint": "gone", "train_data_dir": "state"}, base_dir=str(tmp_path),
                    require=())
    assert exc.value.field == "resume_from_checkpoint"
    with pytest.raises(ConfigError) as exc:
        load_config(yaml.safe_load("trigger_word: yes"), check_paths=False)
    assert exc.value.field == "trigger_word" and "quotes" in str(exc.value)
