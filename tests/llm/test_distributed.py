"""Two processes under torchrun (what `accelerate launch` starts): same result as one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lora_trainer.llm.trainer import train_llm
from tests.llm.conftest import llm_config, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_two_ranks_equal_one_process_with_accumulation(tiny_llama, tmp_path):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    if torchrun is None:
        pytest.skip("torchrun not installed")
    # equal-length lines: every micro-batch has the same token count, so per-rank averaging
    # followed by the all-reduce equals one process averaging over both micro-batches
    rows = [{"text": " ".join(f"n{i + k}" for k in range(6))} for i in range(16)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    common = {"epochs": 2, "batch_size": 2, "learning_rate": 1e-2, "save_steps": 3}
    single = train_llm(llm_config(tmp_path / "one", tiny_llama, data, gradient_accumulation_steps=2, **common))

    raw = {"task_type": "text-generation", "base_model": str(tiny_llama), "train_data_dir": str(data),
           "output_dir": str(tmp_path / "ddp" / "out"), "max_seq_length": 32, "lora_rank": 8, "lora_alpha": 16,
           "seed": 7, "device": "cpu", "save_precision": "fp32", **common}
    (tmp_path / "ddp").mkdir()
    cfg_path = tmp_path / "ddp" / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "lora_trainer", "train",
                           "--config", str(cfg_path)], env=env, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "ddp" / "out"
    assert sorted(os.listdir(out)) == ["logs", "out", "out-000003", "out-000003-state", "out-000006",
                                   "out-000006-state", "out-000008-state"]
    a = load_file(f"{single.output_path}/adapter_model.safetensors")
    b = load_file(f"{out}/out/adapter_model.safetensors")
    assert single.steps == 8 and a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=1e-4)
