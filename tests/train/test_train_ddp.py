"""Two processes under `accelerate launch` on CPU (gloo): disjoint data, equal weights, rank 0 writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_disjoint_shards_and_only_rank0_writes(concept_dir, tmp_path):
    from lora_trainer.lora.file import load_lora_file
    from lora_trainer.lora.network import LoRANetwork
    from lora_trainer.models.tiny import build_tiny_adapter

    out, trace = tmp_path / "out", tmp_path / "trace"
    cfg = {"base_model": "builtin:tiny-sd1", "train_data_dir": concept_dir, "output_dir": str(out), "resolution": 64,
           "enable_bucket": False, "min_bucket_reso": 64, "max_bucket_reso": 64, "lora_rank": 4, "lora_alpha": 4,
           "batch_size": 2, "epochs": 1, "train_text_encoder": False, "save_steps": 1}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # on a CPU-only machine accelerate's --multi_gpu path is the one that starts torch.distributed workers
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "lora_trainer", "train", "--config", str(tmp_path / "c.yaml")]
    env = {**os.environ, "LORA_TRAINER_TRACE_DIR": str(trace), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]

    r0 = json.loads((trace / "rank0.json").read_text())
    r1 = json.loads((trace / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    # 12 samples/epoch, batch 2 -> 6 batches, 3 per rank: disjoint shards covering the epoch
    assert len(r0["samples"]) == len(r1["samples"]) == 6
    assert not set(r0["samples"]) & set(r1["samples"])
    assert sorted(r0["samples"] + r1["samples"]) == list(range(12))
    assert r0["lora_sha256"] == r1["lora_sha256"], "gradients were not all-reduced"
    # one writer: one set of files, one progress bar's worth of output
    assert res.stderr.count("» training") == 1
    files = sorted(os.listdir(out))
    assert files.count("out.safetensors") == 1
    assert [f for f in files if f.endswith(".safetensors")] == ["out-000001.safetensors", "out-000002.safetensors",
                                                                 "out.safetensors"]
    assert not [f for f in files if ".tmp" in f]
    sd, meta = load_lora_file(str(out / "out.safetensors"))
    adapter = build_tiny_adapter("sd1")
    net = LoRANetwork(adapter.lora_targets(unet=True, text_encoder=False, conv=False), rank=4, alpha=4)
    report = net.load_kohya_state_dict(sd)
    assert report.ok and meta["ss_steps"] == "3"
