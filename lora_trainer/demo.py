"""`make demo` / `python -m lora_trainer.demo`: the whole product on the built-in tiny model, on CPU.

Writes a synthetic concept dataset and a YAML config into ./output/demo/, trains a LoRA on
`builtin:tiny-sd1`, measures it honestly (held-out denoising loss on the trained concept vs a control
concept, before and after; multiplier 0 must reproduce the base exactly), writes before/after sample
images and copies the LoRA into ./output/demo/models/Lora/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

from lora_trainer.atomic import atomic_write_text

DEMO_STEPS = 60
PROMPTS = ("zqx checker star", "vyk soft rings", "a large red circle in the center, blue background")


DEMO_MODELS = {"sd1": "builtin:tiny-sd1", "flux": "builtin:tiny-flux"}


def demo_config(root: str, steps: int = DEMO_STEPS, model: str = "sd1") -> dict[str, Any]:
    """The demo's training config (also written as demo.yaml, so it can be re-run with the CLI)."""
    return {
        "base_model": DEMO_MODELS[model],
        "train_data_dir": os.path.join(root, "data"),
        "output_dir": os.path.join(root, "train"),
        "output_name": "demo_zqx",
        "trigger_word": "zqx",
        "resolution": 64, "enable_bucket": False, "min_bucket_reso": 64, "max_bucket_reso": 64,
        "lora_rank": 8, "lora_alpha": 8, "train_text_encoder": False,
        "batch_size": 4, "max_train_steps": steps, "learning_rate": 2e-3, "lr_scheduler": "cosine",
        "lr_warmup_steps": 5, "optimizer": "adamw", "seed": 42, "save_steps": steps // 2, "save_last_n": 2,
        "save_precision": "fp32", "sample_prompts": list(PROMPTS[:2]), "sample_every_n_steps": 0,
        "sample_steps": 20, "sample_guidance": 4.0, "description": "Demo LoRA of the synthetic zqx concept",
    }


def write_demo_inputs(root: str, n_train: int = 16, steps: int = DEMO_STEPS, model: str = "sd1") -> str:
    """Dataset folder `data/4_zqx/` (images + captions) and `demo.yaml`; returns the YAML path."""
    import yaml

    from lora_trainer import synthetic

    data = os.path.join(root, "data")
    shutil.rmtree(data, ignore_errors=True)
    synthetic.write_dataset(data, synthetic.concept_set(synthetic.TARGET_CONCEPT, n_train, seed=0),
                            repeats=4, name=synthetic.TARGET_CONCEPT)
    path = os.path.join(root, "demo.yaml")
    cfg = demo_config(root, steps, model)
    cfg["train_data_dir"], cfg["output_dir"] = "./data", "./train"  # relative to the YAML file
    atomic_write_text(path, "# Written by `make demo`. Re-run: python -m lora_trainer train --config " + path + "\n"
                      + yaml.safe_dump(cfg, sort_keys=False))
    return path


def _samples(adapter: Any, folder: str, network: Any = None) -> list[str]:
    from lora_trainer.train.sampling import SamplePrompt, generate_samples

    prompts = [SamplePrompt(p, seed=7 + i, steps=20, guidance=4.0, width=64, height=64) for i, p in enumerate(PROMPTS)]
    if network is not None:
        network.attach()
    try:
        return generate_samples(adapter, prompts, folder, "sample")
    finally:
        if network is not None:
            network.detach()


def demo_adapter(model: str) -> tuple[Any, bool]:
    """(the built-in tiny model's adapter, whether its pretrained weights were there)."""
    if model == "flux":
        from lora_trainer.models.flux_adapter import FluxAdapter
        from lora_trainer.models.flux_tiny import build_tiny_flux_parts

        parts = build_tiny_flux_parts("flux")
        return FluxAdapter(parts, model_name="builtin:tiny-flux"), bool(parts["pretrained"])
    from lora_trainer.models.tiny import build_tiny_adapter

    adapter = build_tiny_adapter("sd1", pretrained=True)
    return adapter, bool(adapter.info.extra.get("pretrained"))


def run_demo(root: str = "output/demo", steps: int = DEMO_STEPS, threads: int = 1, quiet: bool = False,
             model: str = "sd1") -> dict[str, Any]:
    """Everything `make demo` does (`model`: "sd1" or "flux"); returns the quality numbers and paths."""
    import torch

    from lora_trainer.config import load_config
    from lora_trainer.events import Emitter
    from lora_trainer.train.console import CliRenderer
    from lora_trainer.train.evaluate import (
        denoising_loss,
        evaluate_lora,
        fixed_inputs,
        held_out_sets,
        load_network,
    )
    from lora_trainer.train.image import train

    torch.set_num_threads(threads)  # fixed threads: repeatable numbers, and fast on a busy 2-core box
    root = os.path.abspath(root)
    os.makedirs(root, exist_ok=True)
    t0 = time.time()
    yaml_path = write_demo_inputs(root, steps=steps, model=model)
    cfg = load_config(yaml_path)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"dataset and config written to {root} ({yaml_path})")

    adapter, pretrained = demo_adapter(model)
    if not pretrained:
        say("note: the tiny model's pretrained weights are missing (tools/pretrain_tiny.py / "
            "tools/pretrain_tiny_flux.py write them); on a random-weight base the quality numbers mean little")
    concept, control = held_out_sets()
    before = (denoising_loss(adapter, fixed_inputs(adapter, *concept)),
              denoising_loss(adapter, fixed_inputs(adapter, *control)))
    before_imgs = _samples(adapter, os.path.join(root, "samples_before"))

    result = train(cfg, adapter=adapter, emit=Emitter([] if quiet else [CliRenderer()]))
    report = evaluate_lora(adapter, result.output_path, concept, control, base_losses=before)
    after_imgs = _samples(adapter, os.path.join(root, "samples_after"), load_network(adapter, result.output_path))

    lora_dir = os.path.join(root, "models", "Lora")
    os.makedirs(lora_dir, exist_ok=True)
    stem = os.path.splitext(result.output_path)[0]
    for ext in (".safetensors", ".json", ".preview.png"):
        if os.path.exists(stem + ext):
            shutil.copyfile(stem + ext, os.path.join(lora_dir, os.path.basename(stem) + ext))
    final = os.path.join(lora_dir, os.path.basename(result.output_path))
    out = {"lora": final, "config": yaml_path, "steps": result.steps, "seconds": round(time.time() - t0, 1),
           "samples_before": before_imgs, "samples_after": after_imgs, **report.to_dict()}
    atomic_write_text(os.path.join(root, "quality.json"), json.dumps(out, indent=1))
    say("\n== quality (held-out images, fixed noise and timesteps) ==\n" + report.summary())
    say(f"\nLoRA: {final}\nbefore/after samples: {os.path.dirname(before_imgs[0])}, {os.path.dirname(after_imgs[0])}"
        f"\nuse it: copy it into your WebUI's models/Lora and write <lora:{cfg.output_name}:0.8> in a prompt"
        f" (it is for the tiny demo model only)\ntotal time {out['seconds']} s")
    return out


def main(argv: list[str] | None = None) -> int:
    from lora_trainer.errors import UserError

    p = argparse.ArgumentParser(prog="lora_trainer.demo", description=__doc__.splitlines()[0])
    p.add_argument("--output", default="output/demo", help="demo folder (default ./output/demo)")
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help="training steps")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (fixed for repeatable numbers)")
    p.add_argument("--model", choices=tuple(DEMO_MODELS), default="sd1",
                   help="the built-in tiny model to train: sd1 (default) or flux (FLUX.1-dev layout)")
    args = p.parse_args(argv)
    try:
        run_demo(args.output, args.steps, args.threads, model=args.model)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
