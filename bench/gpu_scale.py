"""Real-size speed check: an SD1.5- or SDXL-architecture model with random weights (the shipped
configs), trained by our engine at the real resolution. Reports steps/s and peak GPU memory.

Random weights change nothing about speed or memory, so this measures what users will see on
their GPU without any download.

    python bench/gpu_scale.py --arch sd1 --resolution 512 --batch 4 --steps 30 --precision fp16
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_adapter(arch: str, device: str, dtype: object):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lora_trainer.models.base import AdapterInfo
    from lora_trainer.models.diffusers_sd import DiffusersAdapter
    from lora_trainer.models.tiny_tokenizer import make_tokenizer
    from lora_trainer.synthetic import VOCABULARY

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lora_trainer", "models",
                        "configs", arch)

    def cfg(part: str) -> dict:
        with open(os.path.join(root, part, "config.json"), encoding="utf-8") as f:
            return {k: v for k, v in json.load(f).items() if not k.startswith("_")}

    with torch.device(device):  # initialise on the GPU: building 2.6 B random weights on a CPU is slow
        unet = UNet2DConditionModel(**cfg("unet"))
        vae = AutoencoderKL(**cfg("vae"))
    names = ["text_encoder"] + (["text_encoder_2"] if arch == "sdxl" else [])
    tes, toks = [], []
    for i, name in enumerate(names):
        tok = make_tokenizer(VOCABULARY)
        te_cfg = CLIPTextConfig(**cfg(name))
        with torch.device(device):
            tes.append((CLIPTextModelWithProjection if i == 1 else CLIPTextModel)(te_cfg))
        toks.append(tok)
    for m in (unet, vae, *tes):
        m.to(device=device, dtype=dtype).eval()
    return DiffusersAdapter(unet, vae, tes, toks, AdapterInfo(arch=arch, model_name=f"random-{arch}"))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="sd1", choices=["sd1", "sdxl"])
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "no"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--train-text-encoder", action="store_true")
    args = p.parse_args()

    import torch
    from PIL import Image

    from lora_trainer import synthetic
    from lora_trainer.config import load_config
    from lora_trainer.events import Emitter
    from lora_trainer.train.image import train

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "no": torch.float32}[args.precision]
    if device == "cpu":
        dtype = torch.float32
    root = tempfile.mkdtemp(prefix="gpu-scale-")
    samples = synthetic.concept_set(synthetic.TARGET_CONCEPT, 16, seed=0)
    for s in samples:
        s.image = s.image.resize((args.resolution, args.resolution), Image.BICUBIC)
    data = os.path.dirname(synthetic.write_dataset(os.path.join(root, "data"), samples, repeats=1, name="zqx"))
    t_build = time.perf_counter()
    adapter = build_adapter(args.arch, device, dtype)
    build_s = time.perf_counter() - t_build
    warm = 3
    ticks: list[float] = []
    emit = Emitter([lambda e: ticks.append(time.perf_counter()) if e.type == "progress" else None])
    cfg = load_config({"base_model": f"builtin:tiny-{args.arch}", "train_data_dir": data,
                       "output_dir": os.path.join(root, "out"), "resolution": args.resolution,
                       "enable_bucket": False, "lora_rank": args.rank, "lora_alpha": args.rank,
                       "train_text_encoder": args.train_text_encoder, "batch_size": args.batch,
                       "max_train_steps": args.steps + warm, "mixed_precision": args.precision,
                       "gradient_checkpointing": args.gradient_checkpointing, "save_state": False,
                       "device": device, "cache_latents": True})
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(cfg, adapter=adapter, emit=emit)
    wall = time.perf_counter() - t0
    steady = ticks[-1] - ticks[warm - 1] if len(ticks) > warm else wall
    out = {"arch": args.arch, "resolution": args.resolution, "batch": args.batch, "rank": args.rank,
           "precision": args.precision, "gradient_checkpointing": args.gradient_checkpointing,
           "train_text_encoder": args.train_text_encoder, "device": torch.cuda.get_device_name() if device == "cuda"
           else "cpu", "steps_per_s": round(args.steps / steady, 3),
           "images_per_s": round(args.steps * args.batch / steady, 2), "wall_s": round(wall, 1),
           "model_build_s": round(build_s, 1)}
    if device == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
