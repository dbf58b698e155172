"""`make bench`: training speed and peak memory at fixed settings on the built-in tiny SD1 model.

Ours runs in-process (CPU here, CUDA when present). When `KOHYA_SD_SCRIPTS=<checkout>` and/or
`DIFFUSERS_EXAMPLES=<checkout>` point at those reference trainers, the same job (same images, size,
batch, rank, steps, fp32, UNet-only LoRA, same tiny model saved as a diffusers folder) runs with them
in this run and the ratios are printed; unset ones are skipped with a note.

    .venv/bin/python bench/train_bench.py [--steps 30] [--batch 4] [--threads 1] [--json out.json]
        [--ref-python /path/to/refvenv/bin/python]

The references need their own environment (torchvision, older diffusers/transformers): point
`--ref-python` / `REF_PYTHON` at that venv's python; without it they run with this interpreter.
Every trainer runs `steps + 3` steps and the rate is taken over the steps after the first 3.
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
WARM = 3
# kohya loads SD1 tokenizers from the hub id unless a same-named folder sits in --tokenizer_cache_dir.
KOHYA_TOKENIZER_ID = "openai/clip-vit-large-patch14"
# kohya's SD1 trainer rebuilds the UNet with SD1's hard-coded widths (320..1280, 32 norm groups), so the
# tiny UNet cannot load there. This launcher only sets those module constants from the folder's
# unet/config.json and then runs the unchanged script; no training code is altered.
_KOHYA_SHIM = """
import json, os, runpy, sys
script = sys.argv[1]
with open(os.path.join(os.environ["LORA_BENCH_MODEL"], "unet", "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
import library.original_unet as u
ch = tuple(cfg["block_out_channels"])
u.BLOCK_OUT_CHANNELS, u.TIMESTEP_INPUT_DIM, u.TIME_EMBED_DIM = ch, ch[0], ch[0] * 4
u.NORM_GROUPS = u.TRANSFORMER_NORM_NUM_GROUPS = cfg["norm_num_groups"]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


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
    _prefix_text_encoder_keys(os.path.join(model, "text_encoder", "model.safetensors"))
    shutil.copytree(os.path.join(model, "tokenizer"),
                    os.path.join(root, "tokenizers", KOHYA_TOKENIZER_ID.replace("/", "_")))
    return os.path.join(root, "data"), model


def _prefix_text_encoder_keys(path: str) -> None:
    """transformers 5 saves CLIPTextModel keys without `text_model.`; 4.x (the references' pins) then
    loads nothing and silently uses a random encoder. The prefixed layout loads in both."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    fixed = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()}
    save_file(fixed, path + ".tmp", metadata={"format": "pt"})
    os.replace(path + ".tmp", path)


def bench_ours(root: str, data: str, steps: int, batch: int, device: str) -> dict[str, Any]:
    import torch

    from lora_trainer.config import load_config
    from lora_trainer.events import Emitter
    from lora_trainer.models.tiny import build_tiny_adapter
    from lora_trainer.train.image import train

    adapter = build_tiny_adapter("sd1")
    if device != "cpu":
        adapter.to(device)
        torch.cuda.reset_peak_memory_stats()
    warm = WARM
    times: list[float] = []
    cpu: list[float] = []

    def on_event(event: Any) -> None:
        if event.type == "progress":
            times.append(time.perf_counter())
            cpu.append(time.process_time())

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
    steady_cpu = (cpu[-1] - cpu[warm - 1]) if len(cpu) > warm else None
    out = {"trainer": "lora_trainer", "steps_per_s": steps / steady, "wall_s": wall, "peak_rss_mib": _peak_rss_mib(),
           "steps_per_cpu_s": steps / steady_cpu if steady_cpu else None, "rss_growth_mib": _peak_rss_mib() - rss0}
    if device != "cpu":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


_STEP = re.compile(r"(\d+)/(\d+) \[")


def _steady_rates(marks: list[tuple[float, float, int]], total: int) -> tuple[float, float | None] | None:
    """(steps per wall second, steps per CPU second) after the warm-up steps, from (wall time, process
    CPU time, step) at which each new step count of the trainer's tqdm bar was first seen."""
    after = [m for m in marks if m[2] >= WARM]
    if len(after) < 2 or after[-1][2] != total:
        return None
    (t0, c0, n0), (t1, c1, n1) = after[0], after[-1]
    if t1 <= t0:
        return None
    return (n1 - n0) / (t1 - t0), ((n1 - n0) / (c1 - c0) if c1 > c0 else None)


def _cpu_seconds(pid: int) -> float:
    """user + system CPU time of a running process (all its threads), from /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _run_reference(name: str, cmd: list[str], cwd: str, total: int, env: dict[str, str]) -> dict[str, Any]:
    """Run one reference, noting wall and CPU time at each new tqdm step count as its output arrives;
    peak RSS comes from the child's rusage. CPU time is the fairer speed figure on a shared box."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    assert proc.stdout is not None
    chunks: list[str] = []
    marks: list[tuple[float, float, int]] = []
    pending = ""
    while True:
        data = os.read(proc.stdout.fileno(), 65536)
        if not data:
            break
        now, cpu = time.perf_counter(), _cpu_seconds(proc.pid)
        text = data.decode("utf-8", "replace")
        chunks.append(text)
        pending += text
        for m in _STEP.finditer(pending):
            n, of = int(m.group(1)), int(m.group(2))
            if of == total and (not marks or n > marks[-1][2]):
                marks.append((now, cpu, n))
        pending = pending[-64:]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = "".join(chunks)
    if proc.returncode != 0:
        return {"trainer": name, "error": f"exit {proc.returncode}: " + text[-1500:]}
    rates = _steady_rates(marks, total)
    if rates is None:
        return {"trainer": name, "error": "no step progress found in its output: " + text[-1500:]}
    return {"trainer": name, "steps_per_s": rates[0], "steps_per_cpu_s": rates[1], "wall_s": wall,
            "peak_rss_mib": usage.ru_maxrss / 1024}


def bench_kohya(checkout: str, root: str, data: str, model: str, steps: int, batch: int, threads: int,
                python: str) -> dict[str, Any]:
    """kohya sd-scripts train_network.py on the same job (through `_KOHYA_SHIM`, see there)."""
    total = steps + WARM
    cmd = [python, "-c", _KOHYA_SHIM, os.path.join(checkout, "train_network.py"),
           "--pretrained_model_name_or_path", model, "--tokenizer_cache_dir", os.path.join(root, "tokenizers"),
           "--train_data_dir", data, "--resolution", f"{RES},{RES}", "--output_dir", os.path.join(root, "kohya"),
           "--output_name", "bench", "--network_module", "networks.lora", "--network_dim", str(RANK),
           "--network_alpha", str(RANK), "--network_train_unet_only", "--train_batch_size", str(batch),
           "--max_train_steps", str(total), "--learning_rate", "1e-4", "--optimizer_type", "AdamW",
           "--lr_scheduler", "constant", "--mixed_precision", "no", "--save_precision", "float",
           "--cache_latents", "--sdpa", "--caption_extension", ".txt", "--seed", "42",
           "--max_data_loader_n_workers", "0", "--save_model_as", "safetensors"]
    env = {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": checkout, "LORA_BENCH_MODEL": model,
           "HF_HUB_OFFLINE": "1"}
    return _run_reference("kohya sd-scripts", cmd, checkout, total, env)


def bench_diffusers(checkout: str, root: str, data: str, model: str, steps: int, batch: int, threads: int,
                    python: str) -> dict[str, Any]:
    """diffusers examples/text_to_image/train_text_to_image_lora.py on the same job."""
    total = steps + WARM
    script = os.path.join(checkout, "examples", "text_to_image", "train_text_to_image_lora.py")
    if not os.path.isfile(script):
        script = os.path.join(checkout, "text_to_image", "train_text_to_image_lora.py")
    sub = os.path.join(data, "1_zqx")
    cmd = [python, script, "--pretrained_model_name_or_path", model, "--train_data_dir", sub,
           "--caption_column", "text", "--resolution", str(RES), "--train_batch_size", str(batch),
           "--max_train_steps", str(total), "--learning_rate", "1e-4", "--rank", str(RANK),
           "--output_dir", os.path.join(root, "diffusers"), "--mixed_precision", "no", "--seed", "42",
           "--dataloader_num_workers", "0", "--lr_scheduler", "constant", "--lr_warmup_steps", "0",
           "--center_crop"]
    env = {"OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": os.path.join(root, "hf-datasets")}
    return _run_reference("diffusers example", cmd, os.path.dirname(script), total, env)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (also for the reference trainers)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--ref-python", default=os.environ.get("REF_PYTHON") or sys.executable,
                   help="python of the reference trainers' environment (default: $REF_PYTHON, else this one)")
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
            results.append(fn(checkout, root, data, model, args.steps, args.batch, args.threads, args.ref_python))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours = results[0]
    print(f"{'trainer':<20} {'steps/s':>8} {'steps/CPU-s':>12} {'peak RSS MiB':>13} {'ratio ours/them':>16} "
          f"{'CPU ratio':>10}")
    for r in results:
        if "error" in r:
            print(f"{r['trainer']:<20} failed: {r['error']}")
            continue
        ratio = "" if r is ours else f"{ours['steps_per_s'] / r['steps_per_s']:.2f}x"
        cpu_ratio = ("" if r is ours or not (r.get("steps_per_cpu_s") and ours.get("steps_per_cpu_s"))
                     else f"{ours['steps_per_cpu_s'] / r['steps_per_cpu_s']:.2f}x")
        per_cpu = f"{r['steps_per_cpu_s']:.2f}" if r.get("steps_per_cpu_s") else "?"
        rss = f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") else "?"
        print(f"{r['trainer']:<20} {r['steps_per_s']:>8.2f} {per_cpu:>12} {rss:>13} {ratio:>16} {cpu_ratio:>10}")
    if "peak_cuda_mib" in ours:
        print(f"peak CUDA memory (ours): {ours['peak_cuda_mib']:.0f} MiB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
