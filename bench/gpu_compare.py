"""`make bench-gpu`: our engine against kohya sd-scripts on one CUDA GPU, real-size random-weight models.

Jobs (each trainer in its own process, the same data, steps, rank, precision and caching):
  sd15: SD1.5 UNet, 512x512, batch 4, bf16, rank 16 (UNet-only LoRA, cached latents)
  sdxl: SDXL UNet, 1024x1024, batch 1, bf16, rank 16, gradient checkpointing (cached latents and
        text-encoder outputs, which kohya offers for SDXL)
Printed per job: steps/s (after warm-up), peak GPU memory (torch's max allocated, read in each
trainer's process), ours/kohya ratios, and our model FLOP utilisation: the UNet forward+backward FLOPs
of one step (counted once with torch's FlopCounterMode) times steps/s over the card's dense bf16 peak.

A GPU machine may have no package index, so what it lacks travels in one folder made here first:

    python bench/gpu_compare.py --prepare .carry [--kohya /path/to/sd-scripts]
        -> .carry/kohya-src (the sd-scripts Python sources), .carry/wheels-ours (diffusers for our
           engine), .carry/wheels-kohya (kohya's pins: transformers, diffusers, accelerate, ...),
           all py3.12 manylinux wheels; keep .carry git-ignored and carry it along (~30 MiB)
    python3 bench/gpu_compare.py --carry .carry [--jobs sd15,sdxl] [--steps 20] [--json out.json]

The two wheel sets are installed into separate folders (/tmp/site-ours, /tmp/site-kohya) put on
PYTHONPATH per trainer, so the image's torch and CUDA stay as they are. `--dry-run` runs the same
code on the tiny SD1 model on a CPU (a check of the plumbing, not a measurement).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

WARM = 5
N_IMAGES = 8
JOBS: dict[str, dict[str, Any]] = {
    "sd15": {"arch": "sd1", "res": 512, "batch": 4, "rank": 16, "checkpointing": False},
    "sdxl": {"arch": "sdxl", "res": 1024, "batch": 1, "rank": 16, "checkpointing": True},
}
# dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of torch's device name
BF16_PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
                    ("4090", 165.0))
# sd-scripts' pins for this run (its requirements.txt), as wheels for the GPU machine's Python
KOHYA_WHEELS = ("transformers==4.54.1", "tokenizers==0.21.4", "diffusers==0.32.1", "accelerate==1.6.0",
                "huggingface-hub==0.34.3", "einops==0.7.0", "ftfy==6.3.1", "wcwidth==0.2.13", "toml==0.10.2",
                "voluptuous==0.15.2", "imagesize==1.4.1", "importlib-metadata==8.7.0")
# (its optional optimizer packages are imported only when chosen; this run uses AdamW)
OURS_WHEELS = ("diffusers==0.42.1", "importlib-metadata==8.7.0")
KOHYA_SOURCES = ("*.py", "library/**/*.py", "networks/**/*.py")
PEAK_TAG = "BENCH_CUDA_PEAK "
RESULT_TAG = "BENCH_RESULT "
_KOHYA_SHIM = """
import atexit, json, os, runpy, sys
import torch
def _peak():
    if torch.cuda.is_available():
        print(os.environ["LORA_BENCH_PEAK_TAG"] + str(torch.cuda.max_memory_allocated()), flush=True)
atexit.register(_peak)
if os.environ.get("LORA_BENCH_TINY"):  # the dry run's tiny UNet: kohya's SD1 widths from its config
    import library.original_unet as u
    with open(os.path.join(os.environ["LORA_BENCH_MODEL"], "unet", "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    ch = tuple(cfg["block_out_channels"])
    u.BLOCK_OUT_CHANNELS, u.TIMESTEP_INPUT_DIM, u.TIME_EMBED_DIM = ch, ch[0], ch[0] * 4
    u.NORM_GROUPS = u.TRANSFORMER_NORM_NUM_GROUPS = cfg["norm_num_groups"]
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


# ---- here: what the GPU machine needs ---------------------------------------------------------------
def prepare(carry: str, kohya: str) -> int:
    """Copy kohya's sources and download the wheels both trainers need into `carry`."""
    if not os.path.isfile(os.path.join(kohya, "train_network.py")):
        print(f"--kohya: {kohya} has no train_network.py; point it at an sd-scripts checkout")
        return 2
    src = os.path.join(carry, "kohya-src")
    shutil.rmtree(src, ignore_errors=True)
    for pattern in KOHYA_SOURCES:
        for path in glob.glob(os.path.join(kohya, pattern), recursive=True):
            dest = os.path.join(src, os.path.relpath(path, kohya))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(path, dest)
    plat = [a for n in (17, 24, 27, 28, 31, 34, 35) for a in ("--platform", f"manylinux_2_{n}_x86_64")]
    for name, pins in (("wheels-ours", OURS_WHEELS), ("wheels-kohya", KOHYA_WHEELS)):
        dest = os.path.join(carry, name)
        os.makedirs(dest, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.12", "--implementation", "cp", *plat, "--platform", "manylinux2014_x86_64",
               "--platform", "any", "-d", dest, *pins]
        if subprocess.run(cmd).returncode != 0:
            print(f"downloading {name} failed: {' '.join(pins)}")
            return 1
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(carry) for f in fs) / 2**20
    print(f"{carry}: kohya sources + wheels, {size:.1f} MiB (git-ignored); carry it along")
    return 0


# ---- there: installing and running -------------------------------------------------------------------
def _install(wheels: str, target: str) -> None:
    """Wheels into a folder of their own (no index, no deps: each set is complete for its trainer)."""
    files = sorted(glob.glob(os.path.join(wheels, "*.whl")))
    if not files:
        raise SystemExit(f"{wheels}: no wheels; run --prepare here first and carry the folder along")
    if os.path.isdir(target):
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", target, *files], check=True)


def _write_data(root: str, res: int) -> str:
    from PIL import Image

    from lora_trainer import synthetic

    samples = synthetic.concept_set(synthetic.TARGET_CONCEPT, N_IMAGES, seed=0)
    for s in samples:
        s.image = s.image.resize((res, res), Image.BICUBIC)
    synthetic.write_dataset(os.path.join(root, "data"), samples, repeats=1, name="zqx")
    return os.path.join(root, "data")


def _write_model(folder: str, arch: str, tiny: bool) -> None:
    """A diffusers folder of random real-size weights (fp16 on disk), with the tiny model's tokenizer
    and scheduler files; random weights change nothing about speed or memory."""
    import torch
    from train_bench import _prefix_text_encoder_keys

    from lora_trainer.models.tiny import save_tiny_model

    save_tiny_model(folder, arch)
    if not tiny:
        from gpu_scale import build_adapter

        device = "cuda" if torch.cuda.is_available() else "cpu"
        ad = build_adapter(arch, device, torch.float16)
        ad.unet.save_pretrained(os.path.join(folder, "unet"))
        ad.vae.save_pretrained(os.path.join(folder, "vae"))
        for i, te in enumerate(ad.text_encoders):
            te.save_pretrained(os.path.join(folder, "text_encoder" + ("" if i == 0 else f"_{i + 1}")))
        del ad
    for name in ("text_encoder", "text_encoder_2"):
        path = os.path.join(folder, name, "model.safetensors")
        if os.path.isfile(path):
            _prefix_text_encoder_keys(path)  # both transformers 4 (kohya) and 5 load this layout


def _step_flops(adapter: Any, job: dict[str, Any], device: str) -> float:
    """FLOPs of one UNet forward + backward at the job's shape (LoRA attached, bf16 autocast)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    unet = adapter.unet
    lat = job["res"] // 8
    x = torch.randn(job["batch"], unet.config.in_channels, lat, lat, device=device)
    t = torch.full((job["batch"],), 500, device=device)
    ctx = torch.randn(job["batch"], 77, unet.config.cross_attention_dim, device=device)
    extra: dict[str, Any] = {}
    if job["arch"] == "sdxl":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(job["batch"], 1280, device=device),
                                      "time_ids": torch.zeros(job["batch"], 6, device=device)}
    with FlopCounterMode(display=False) as counter, torch.autocast(device, torch.bfloat16, enabled=device == "cuda"):
        unet(x, t, encoder_hidden_states=ctx, **extra).sample.float().square().mean().backward()
    unet.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run_ours(root: str, job_name: str, steps: int, tiny: bool) -> dict[str, Any]:
    """Our engine on the job (in a child process): steps/s from its progress events, peak memory."""
    import torch

    from lora_trainer.config import load_config
    from lora_trainer.events import Emitter
    from lora_trainer.models.loading import load_adapter
    from lora_trainer.train.image import train

    job = job_of(job_name, tiny)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = load_config({"base_model": os.path.join(root, "model"), "train_data_dir": os.path.join(root, "data"),
                       "output_dir": os.path.join(root, "ours"), "resolution": job["res"], "enable_bucket": False,
                       "lora_rank": job["rank"], "lora_alpha": job["rank"], "train_text_encoder": False,
                       "batch_size": job["batch"], "max_train_steps": steps + WARM, "learning_rate": 1e-4,
                       "lr_scheduler": "constant", "mixed_precision": "bf16" if device == "cuda" else "no",
                       "gradient_checkpointing": job["checkpointing"], "save_state": False, "device": device,
                       "cache_latents": True, "seed": 42})
    adapter = load_adapter(cfg)
    ticks: list[float] = []
    emit = Emitter([lambda e: ticks.append(time.perf_counter()) if e.type == "progress" else None])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train(cfg, adapter=adapter, emit=emit)
    out: dict[str, Any] = {"steps_per_s": steps / (ticks[-1] - ticks[WARM - 1]), "device": device}
    if device == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
        # the network is detached after training: attach a fresh one of the same shape to count FLOPs
        from lora_trainer.lora.network import LoRANetwork

        net = LoRANetwork(adapter.lora_targets(unet=True, text_encoder=False, conv=False), rank=job["rank"],
                          alpha=job["rank"]).to(device).attach()
        if job["checkpointing"]:
            adapter.set_gradient_checkpointing(False)  # count the step's math once (recompute excluded)
        out["step_flops"] = _step_flops(adapter, job, device)
        net.detach()
    return out


_STEP = re.compile(r"(\d+)/(\d+) \[")


def _run(cmd: list[str], env: dict[str, str], total: int, log: str) -> dict[str, Any]:
    """Run a trainer; steps/s from the times its tqdm bar first shows each step after the warm-up."""
    marks: list[tuple[float, int]] = []
    text: list[str] = []
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    assert proc.stdout is not None
    pending = ""
    while True:
        data = os.read(proc.stdout.fileno(), 65536)
        if not data:
            break
        now, chunk = time.perf_counter(), data.decode("utf-8", "replace")
        text.append(chunk)
        pending += chunk
        for m in _STEP.finditer(pending):
            n, of = int(m.group(1)), int(m.group(2))
            if of == total and marks and n < marks[-1][1]:
                marks.clear()  # a new bar with the same total (a caching bar before the training one)
            if of == total and (not marks or n > marks[-1][1]):
                marks.append((now, n))
        pending = pending[-64:]
    rc = proc.wait()
    out = "".join(text)
    with open(log, "w", encoding="utf-8") as f:
        f.write(out)
    if rc != 0:
        return {"error": f"exit {rc} (log: {log}): " + out[-1200:]}
    tagged = [ln[len(RESULT_TAG):] for ln in out.splitlines() if ln.startswith(RESULT_TAG)]
    res: dict[str, Any] = json.loads(tagged[-1]) if tagged else {}
    peaks = [int(ln[len(PEAK_TAG):]) for ln in out.splitlines() if ln.startswith(PEAK_TAG)]
    if peaks and peaks[-1] > 0:
        res["peak_gpu_mib"] = peaks[-1] / 2**20
    if "steps_per_s" not in res:
        after = [m for m in marks if m[1] >= WARM]
        if len(after) < 2 or after[-1][1] != total:
            return {"error": f"no step progress in its output (log: {log})"}
        res["steps_per_s"] = (after[-1][1] - after[0][1]) / (after[-1][0] - after[0][0])
    return res


def kohya_cmd(src: str, root: str, job: dict[str, Any], total: int, cuda: bool) -> list[str]:
    sdxl = job["arch"] == "sdxl"
    cmd = [sys.executable, "-c", _KOHYA_SHIM, os.path.join(src, "sdxl_train_network.py" if sdxl else "train_network.py"),
           "--pretrained_model_name_or_path", os.path.join(root, "model"),
           "--tokenizer_cache_dir", os.path.join(root, "tokenizers"), "--train_data_dir", os.path.join(root, "data"),
           "--resolution", f"{job['res']},{job['res']}", "--output_dir", os.path.join(root, "kohya"),
           "--output_name", "bench", "--network_module", "networks.lora", "--network_dim", str(job["rank"]),
           "--network_alpha", str(job["rank"]), "--network_train_unet_only", "--train_batch_size", str(job["batch"]),
           "--max_train_steps", str(total), "--learning_rate", "1e-4", "--optimizer_type", "AdamW",
           "--lr_scheduler", "constant", "--mixed_precision", "bf16" if cuda else "no", "--save_precision", "float",
           "--cache_latents", "--sdpa", "--caption_extension", ".txt", "--seed", "42",
           "--max_data_loader_n_workers", "0", "--save_model_as", "safetensors"]
    if job["checkpointing"]:
        cmd.append("--gradient_checkpointing")
    if sdxl:
        cmd.append("--cache_text_encoder_outputs")
    return cmd


def _tokenizers(root: str, arch: str) -> None:
    """kohya loads its tokenizers by hub id unless a same-named folder is in --tokenizer_cache_dir."""
    ids = ["openai/clip-vit-large-patch14"] + (["laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"] if arch == "sdxl" else [])
    for i, hub_id in enumerate(ids):
        src = os.path.join(root, "model", "tokenizer" + ("" if i == 0 else "_2"))
        shutil.copytree(src, os.path.join(root, "tokenizers", hub_id.replace("/", "_")), dirs_exist_ok=True)


def job_of(name: str, dry_run: bool) -> dict[str, Any]:
    """The job's settings; the CPU dry run keeps them but at 64 px."""
    return {**JOBS[name], "res": 64} if dry_run else JOBS[name]


def _peak_tflops(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS if k in name), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prepare", metavar="CARRY", help="here: fill CARRY with kohya's sources and the wheels")
    p.add_argument("--kohya", default=os.environ.get("KOHYA_SD_SCRIPTS", ""), help="sd-scripts checkout (--prepare)")
    p.add_argument("--carry", default=".carry", help="the folder --prepare made, carried to the GPU machine")
    p.add_argument("--jobs", default="sd15,sdxl")
    p.add_argument("--steps", type=int, default=20, help="timed steps after the warm-up ones")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--dry-run", action="store_true", help="tiny SD1 on this machine's CPU: a plumbing check")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prepare:
        return prepare(args.prepare, args.kohya)
    if args.child:
        print(RESULT_TAG + json.dumps(run_ours(args.root, args.child, args.steps, args.dry_run)), flush=True)
        return 0
    jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    if any(j not in JOBS for j in jobs) or (args.dry_run and jobs != ["sd15"]):
        p.error(f"--jobs: choose from {', '.join(JOBS)} (the dry run knows sd15 only)")
    carry = os.path.abspath(args.carry)
    kohya_src = os.path.join(carry, "kohya-src")
    if not os.path.isfile(os.path.join(kohya_src, "train_network.py")):
        print(f"{kohya_src}: no sd-scripts sources; run `python bench/gpu_compare.py --prepare {args.carry}` "
              "here first and carry that folder along")
        return 2
    site_ours, site_kohya = "/tmp/site-ours", "/tmp/site-kohya"
    if args.dry_run:  # this machine's venv has our deps; kohya uses the reference venv (REF_PYTHON)
        env_ours = {"PYTHONPATH": ROOT}
        ref_python = os.environ.get("REF_PYTHON", sys.executable)
        env_kohya = {"PYTHONPATH": kohya_src, "LORA_BENCH_TINY": "1"}
    else:
        _install(os.path.join(carry, "wheels-ours"), site_ours)
        _install(os.path.join(carry, "wheels-kohya"), site_kohya)
        env_ours = {"PYTHONPATH": f"{site_ours}:{ROOT}"}
        ref_python = sys.executable
        env_kohya = {"PYTHONPATH": f"{site_kohya}:{kohya_src}"}
    env_common = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"load before: {os.getloadavg()}", flush=True)
    results: dict[str, dict[str, Any]] = {}
    for name in jobs:
        job = job_of(name, args.dry_run)
        root = tempfile.mkdtemp(prefix=f"gpu-compare-{name}-")
        try:
            t0 = time.perf_counter()
            prep = subprocess.run([sys.executable, "-c", "import sys; sys.path[:0] = sys.argv[1:3]; "
                                   "import gpu_compare as g; g._write_data(sys.argv[3], int(sys.argv[4])); "
                                   "g._write_model(sys.argv[3] + '/model', sys.argv[5], sys.argv[6] == '1')",
                                   os.path.dirname(os.path.abspath(__file__)), ROOT, root, str(job["res"]),
                                   job["arch"], "1" if args.dry_run else "0"],
                                  env={**os.environ, **env_common, **env_ours}, capture_output=True, text=True)
            if prep.returncode != 0:
                results[name] = {"error": "model/data preparation failed: " + prep.stderr[-1500:]}
                continue
            _tokenizers(root, job["arch"])
            print(f"{name}: model and data ready in {time.perf_counter() - t0:.0f} s", flush=True)
            total = args.steps + WARM
            ours = _run([sys.executable, os.path.abspath(__file__), "--child", name, "--root", root, "--steps",
                         str(args.steps)] + (["--dry-run"] if args.dry_run else []),
                        {**env_common, **env_ours}, total, os.path.join(root, "ours.log"))
            print(f"{name}: ours {ours.get('steps_per_s', 'failed')}", flush=True)
            kohya = _run([ref_python, *kohya_cmd(kohya_src, root, job, total, not args.dry_run)[1:]],
                         {**env_common, **env_kohya, "LORA_BENCH_MODEL": os.path.join(root, "model"),
                          "LORA_BENCH_PEAK_TAG": PEAK_TAG}, total,
                         os.path.join(root, "kohya.log"))
            print(f"{name}: kohya {kohya.get('steps_per_s', 'failed')}", flush=True)
            results[name] = {"ours": ours, "kohya": kohya}
            for who, r in (("ours", ours), ("kohya", kohya)):
                if "error" in r:
                    print(f"{name} {who} failed: {r['error']}")
        finally:
            if args.json:  # keep the logs of a failed run next to the results
                for log in ("ours.log", "kohya.log"):
                    if os.path.isfile(os.path.join(root, log)):
                        shutil.copy(os.path.join(root, log), f"{args.json}.{name}.{log}")
            shutil.rmtree(root, ignore_errors=True)
    print(f"load after: {os.getloadavg()}")
    print(f"\n{'job':<6} {'trainer':<8} {'steps/s':>8} {'peak GPU MiB':>13} {'ratio':>7} {'mem ratio':>10} {'MFU':>6}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<6} {r['error']}")
            continue
        o, k = r["ours"], r["kohya"]
        for who, x in (("ours", o), ("kohya", k)):
            if "error" in x:
                print(f"{name:<6} {who:<8} failed")
                continue
            ratio = mem = mfu = ""
            if who == "ours" and "error" not in k:
                ratio = f"{o['steps_per_s'] / k['steps_per_s']:.2f}x"
                if o.get("peak_gpu_mib") and k.get("peak_gpu_mib"):
                    mem = f"{o['peak_gpu_mib'] / k['peak_gpu_mib']:.2f}"
            peak = _peak_tflops(o.get("gpu", ""))
            if who == "ours" and peak and o.get("step_flops"):
                mfu = f"{o['step_flops'] * o['steps_per_s'] / (peak * 1e12):.1%}"
            gpu_mib = f"{x['peak_gpu_mib']:.0f}" if x.get("peak_gpu_mib") else "?"
            print(f"{name:<6} {who:<8} {x['steps_per_s']:>8.2f} {gpu_mib:>13} {ratio:>7} {mem:>10} {mfu:>6}")
    gpu = next((r["ours"].get("gpu") for r in results.values() if "ours" in r and r["ours"].get("gpu")), None)
    print(f"card: {gpu or 'none (CPU dry run: not a measurement)'}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0 if all("error" not in r and "error" not in r["ours"] and "error" not in r["kohya"]
                    for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
