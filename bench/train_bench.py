"""`make bench`: training speed and peak memory at fixed settings on the built-in tiny SD1 model.

Ours runs in-process (CPU here, CUDA when present). When `KOHYA_SD_SCRIPTS=<checkout>` and/or
`DIFFUSERS_EXAMPLES=<checkout>` point at those reference trainers, the same job (same images, size,
batch, rank, steps, fp32, UNet-only LoRA, same tiny model saved as a diffusers folder) runs with them
in this run and the ratios are printed; unset ones are skipped with a note.

    .venv/bin/python bench/train_bench.py [--steps 30] [--batch 4] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RES = 64
RANK = 8
N_IMAGES = 16


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _prepare(root: str) -> tuple[str, str]:
    """Dataset (kohya layout + metadata.jsonl for diffusers) and the tiny model as a diffusers folder."""
    from lora_trainer import synthetic
    from lora_trainer.models.tiny import save_tiny_model

    samples = synthetic.concept_set(synthetic.TARGET_CONCEPT, N_IMAGES, seed=0)
    sub = synthetic.write_dataset(os.path.join(root, "data"), samples, repeats=1, name="zqx")
    with open(os.path.join(sub, "metadata.jsonl"), "w", encoding="utf-8") as f:
        for i, s in enumerate(samples):
            f.write(json.dumps({"file_name": f"{i:04d}.png", "text": s.caption}) + "\n")
    model = save_tiny_model(os.path.join(root, "tiny-sd1"), "sd1")
    return os.path.join(root, "data"), model


def bench_ours(root: str, data: str, steps: int, batch: int, device: str) -> dict[str, Any]:
    import torch

    from lora_trainer.config import load_config
    from lora_trainer.events import Emitter
    from lora_trainer.models.tiny import build_tiny_adapter
    from lora_trainer.train.loop import train

    adapter = build_tiny_adapter("sd1")
    if device != "cpu":
        adapter.to(device)
        torch.cuda.reset_peak_memory_stats()
    warm = 3
    times: list[float] = []

    def on_event(event: Any) -> None:
        if event.type == "progress":
            times.append(time.perf_counter())

    cfg = load_config({"base_model": "builtin:tiny-sd1", "train_data_dir": data, "output_dir": os.path.join(root, "ours"),
                       "resolution": RES, "enable_bucket": False, "min_bucket_reso": RES, "max_bucket_reso": RES,
                       "lora_rank": RANK, "lora_alpha": RANK, "train_text_encoder": False, "batch_size": batch,
                       "max_train_steps": steps + warm, "learning_rate": 1e-4, "save_state": False,
                       "device": device, "cache_latents": True})
    rss0 = _peak_rss_mib()
    t0 = time.perf_counter()
    train(cfg, adapter=adapter, emit=Emitter([on_event]))
    wall = time.perf_counter() - t0
    steady = (times[-1] - times[warm - 1]) if len(times) > warm else wall
    out = {"trainer": "lora_trainer", "steps_per_s": steps / steady, "wall_s": wall, "peak_rss_mib": _peak_rss_mib(),
           "rss_growth_mib": _peak_rss_mib() - rss0}
    if device != "cpu":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


_RATE = re.compile(r"(\d+(?:\.\d+)?)(it/s|s/it)")


def _rate_from_tqdm(text: str) -> float | None:
    """Last tqdm rate in a reference trainer's output, as steps per second."""
    found = _RATE.findall(text)
    if not found:
        return None
    value, unit = found[-1]
    return float(value) if unit == "it/s" else 1.0 / float(value)


def _run_reference(name: str, cmd: list[str], cwd: str, steps: int, env: dict[str, str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd] if os.path.exists("/usr/bin/time") else cmd, cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=3600)
    wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        return {"trainer": name, "error": f"exit {proc.returncode}: " + text[-1500:]}
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return {"trainer": name, "steps_per_s": _rate_from_tqdm(text) or steps / wall, "wall_s": wall,
            "peak_rss_mib": int(rss.group(1)) / 1024 if rss else None}


def bench_kohya(checkout: str, root: str, data: str, model: str, steps: int, batch: int, threads: int) -> dict[str, Any]:
    """kohya sd-scripts train_network.py on the same job."""
    cmd = [sys.executable, os.path.join(checkout, "train_network.py"), "--pretrained_model_name_or_path", model,
           "--train_data_dir", data, "--resolution", f"{RES},{RES}", "--output_dir", os.path.join(root, "kohya"),
           "--output_name", "bench", "--network_module", "networks.lora", "--network_dim", str(RANK),
           "--network_alpha", str(RANK), "--network_train_unet_only", "--train_batch_size", str(batch),
           "--max_train_steps", str(steps), "--learning_rate", "1e-4", "--optimizer_type", "AdamW",
           "--mixed_precision", "no", "--save_precision", "float", "--cache_latents", "--sdpa",
           "--caption_extension", ".txt", "--seed", "42", "--max_data_loader_n_workers", "0",
           "--save_model_as", "safetensors"]
    env = {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": checkout}
    return _run_reference("kohya sd-scripts", cmd, checkout, steps, env)


def bench_diffusers(checkout: str, root: str, data: str, model: str, steps: int, batch: int,
                    threads: int) -> dict[str, Any]:
    """diffusers examples/text_to_image/train_text_to_image_lora.py on the same job."""
    script = os.path.join(checkout, "examples", "text_to_image", "train_text_to_image_lora.py")
    if not os.path.isfile(script):
        script = os.path.join(checkout, "text_to_image", "train_text_to_image_lora.py")
    sub = os.path.join(data, "1_zqx")
    cmd = [sys.executable, script, "--pretrained_model_name_or_path", model, "--train_data_dir", sub,
           "--caption_column", "text", "--resolution", str(RES), "--train_batch_size", str(batch),
           "--max_train_steps", str(steps), "--learning_rate", "1e-4", "--rank", str(RANK),
           "--output_dir", os.path.join(root, "diffusers"), "--mixed_precision", "no", "--seed", "42",
           "--dataloader_num_workers", "0", "--lr_scheduler", "constant", "--center_crop"]
    env = {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return _run_reference("diffusers example", cmd, os.path.dirname(script), steps, env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (also for the reference trainers)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    root = tempfile.mkdtemp(prefix="lora-bench-")
    try:
        data, model = _prepare(root)
        print(f"tiny SD1, {RES}px, batch {args.batch}, rank {RANK}, UNet-only LoRA, fp32, AdamW, cached latents, "
              f"{args.steps} timed steps, device {device}, {args.threads} thread(s)", flush=True)
        results = [bench_ours(root, data, args.steps, args.batch, device)]
        refs = {"KOHYA_SD_SCRIPTS": bench_kohya, "DIFFUSERS_EXAMPLES": bench_diffusers}
        for var, fn in refs.items():
            checkout = os.environ.get(var)
            if not checkout:
                print(f"note: {var} is not set; skipping that reference trainer "
                      f"({var}=<path to its checkout> make bench to compare)")
                continue
            results.append(fn(checkout, root, data, model, args.steps, args.batch, args.threads))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours = results[0]
    print(f"{'trainer':<20} {'steps/s':>8} {'peak RSS MiB':>13} {'ratio ours/them':>16}")
    for r in results:
        if "error" in r:
            print(f"{r['trainer']:<20} failed: {r['error']}")
            continue
        ratio = "" if r is ours else f"{ours['steps_per_s'] / r['steps_per_s']:.2f}x"
        rss = f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") else "?"
        print(f"{r['trainer']:<20} {r['steps_per_s']:>8.2f} {rss:>13} {ratio:>16}")
    if "peak_cuda_mib" in ours:
        print(f"peak CUDA memory (ours): {ours['peak_cuda_mib']:.0f} MiB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
