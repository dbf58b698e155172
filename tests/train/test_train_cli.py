"""`lora-trainer train`: dry run, errors, a full run, and the seed/nested example configs."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from train_helpers import list_files

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_cfg(path, data_dir, out_dir, **extra):
    cfg = {"base_model": "builtin:tiny-sd1", "train_data_dir": data_dir, "output_dir": out_dir, "resolution": 64,
           "enable_bucket": False, "min_bucket_reso": 64, "max_bucket_reso": 64, "lora_rank": 4, "lora_alpha": 4,
           "batch_size": 2, "epochs": 1, "train_text_encoder": False, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _cli(*args, env=None):
    code = ("import sys, torch; torch.set_num_threads(1); from lora_trainer.cli import main; rc = main(sys.argv[1:]); "
            "print('MODEL_LOADED' if 'diffusers' in sys.modules else 'NO_MODEL', file=sys.stderr); sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_dry_run_prints_plan_without_loading_model(concept_dir, tmp_path):
    cfg = _write_cfg(tmp_path / "c.yaml", concept_dir, str(tmp_path / "out"))
    res = _cli("train", "--config", cfg, "--dry-run", "--set", "epochs=3")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "images: 6" in out and "3 epochs" in out and "18 total steps" in out
    assert "buckets" in out and "trainable parameters" in out.lower() or "model:" in out
    assert "NO_MODEL" in res.stderr
    assert not os.path.exists(tmp_path / "out")


def test_user_errors_are_one_line_exit_2(concept_dir, tmp_path, capsys):
    from lora_trainer.cli import main

    cfg = _write_cfg(tmp_path / "c.yaml", concept_dir, str(tmp_path / "out"), learning_rat=1e-4)
    assert main(["train", "--config", cfg]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "learning_rat" in lines[0] and "learning_rate" in lines[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--config", _write_cfg(tmp_path / "d.yaml", str(empty), str(tmp_path / "out"))]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and str(empty) in err
    good = _write_cfg(tmp_path / "e.yaml", concept_dir, str(tmp_path / "fresh"))
    assert main(["train", "--config", good, "--resume", "latest"]) == 2
    err = capsys.readouterr().err
    assert "resume_from_checkpoint" in err and "no saved state" in err


def test_cli_trains_and_resumes_latest(concept_dir, tmp_path, capsys):
    from lora_trainer.cli import main

    out = tmp_path / "clirun"
    cfg = _write_cfg(tmp_path / "c.yaml", concept_dir, str(out), max_train_steps=2)
    assert main(["train", "--config", cfg]) == 0
    assert "<lora:clirun:0.8>" in capsys.readouterr().err
    assert "clirun.safetensors" in list_files(str(out))
    assert main(["train", "--config", cfg, "--set", "max_train_steps=3", "--resume", "latest"]) == 0
    assert "resumed from clirun-000002-state at step 2" in capsys.readouterr().err


def test_example_configs_load():
    from lora_trainer.config import load_config

    ex = os.path.join(REPO, "examples")
    seed = load_config(os.path.join(ex, "seed_style.yaml"), check_paths=False)
    assert (seed.lora_rank, seed.batch_size, seed.gradient_accumulation_steps, seed.save_steps) == (8, 4, 2, 100)
    assert seed.metadata_path.endswith("metadata.csv") and seed.learning_rate == 2e-4
    nested = load_config(os.path.join(ex, "nested_sections.yaml"), check_paths=False)
    assert nested.lora_rank == 16 and nested.lr_scheduler == "cosine" and nested.trigger_word == "mychar"
    for name in sorted(os.listdir(os.path.join(ex, "presets"))):
        load_config(os.path.join(ex, "presets", name), check_paths=False)


def test_seed_config_verbatim(tmp_path, capsys):
    """DESIGN.md §5's seed YAML, unchanged, in a folder laid out as it expects (metadata.csv dataset)."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from lora_trainer import synthetic
    from lora_trainer.cli import main

    shutil.copy(os.path.join(REPO, "examples", "seed_style.yaml"), tmp_path / "my.yaml")
    data = tmp_path / "data" / "style_train"
    data.mkdir(parents=True)
    rows = ["filename,prompt"]
    for i, s in enumerate(synthetic.concept_set(synthetic.TARGET_CONCEPT, 8, seed=3)):
        s.image.save(data / f"img{i}.png")
        rows.append(f'img{i}.png,"{s.caption}"')
    (data / "metadata.csv").write_text("\n".join(rows) + "\n")
    ckpt = tmp_path / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    # an SD1-shaped header is all a dry run reads (it never loads the weights)
    save_file({"model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.zeros(1),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(1)},
              str(ckpt / "v1-5-pruned.safetensors"))
    cfg = str(tmp_path / "my.yaml")
    assert main(["train", "--config", cfg, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "images: 8" in out and "10 epochs" in out
    # the same file trains (on the built-in tiny model, at its size, for two steps)
    assert main(["train", "--config", cfg, "--set", "base_model=builtin:tiny-sd1", "--set", "resolution=64",
                 "--set", "max_train_steps=2", "--set", "save_steps=1"]) == 0
    files = list_files(str(tmp_path / "output" / "my_style_lora"))
    assert "my_style_lora.safetensors" in files and "my_style_lora-000001.safetensors" in files


def test_bad_device_fails_the_dry_run_in_one_line(concept_dir, tmp_path, capsys):
    import torch

    from lora_trainer.cli import main

    cfg = _write_cfg(tmp_path / "c.yaml", concept_dir, str(tmp_path / "out"))
    assert main(["train", "--config", cfg, "--dry-run", "--set", "device=gpu0"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "device" in err[0] and "gpu0" in err[0]
    missing = f"cuda:{torch.cuda.device_count() + 3}"  # spelled right, but not on this machine
    assert main(["train", "--config", cfg, "--dry-run", "--set", f"device={missing}"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "device" in err[0] and missing in err[0]
