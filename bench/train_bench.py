"""`make bench`: training speed and peak memory at fixed settings on the built-in tiny SD1 model.

Every trainer runs in its own process (the parent stays light, so each child's peak RSS is its own),
`--repeats` rounds interleaved (ours, kohya sd-scripts, the diffusers example, in a rotating order), and
the medians and the ratios of the medians are printed with the machine's load before and after: on a
shared machine single runs spread widely, so only medians of interleaved runs are comparable.

Two module sets:
  kohya: the 192 UNet modules kohya's `networks.lora` trains on SD1 (attention q/k/v/out, the
         feed-forward Linears, proj_in/proj_out); ours vs kohya sd-scripts.
  attn:  only the 128 attention projections (to_q/to_k/to_v/to_out.0), the set the diffusers example
         trains (its PEFT target_modules); ours vs the diffusers example.

When `KOHYA_SD_SCRIPTS=<checkout>` and/or `DIFFUSERS_EXAMPLES=<checkout>` point at those reference
trainers, the same job (same images, size, batch, rank, steps, fp32, UNet-only LoRA, AdamW, constant lr,
same tiny model saved as a diffusers folder) runs with them; unset ones are skipped with a note.

    .venv/bin/python bench/train_bench.py [--steps 30] [--batch 4] [--threads 1] [--repeats 3]
        [--modes kohya,attn] [--json out.json] [--ref-python /path/to/refvenv/bin/python]

The references need their own environment (torchvision, older diffusers/transformers, peft, datasets):
`bench/ref_venv.sh` builds one (torch pinned to this venv's, installed from the local wheel); point
`--ref-python` / `REF_PYTHON` at its python. Every trainer runs `steps + 3` steps and the rate is taken
over the steps after the first 3.
"""

from __future__ import annotations

import argparse
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


ATTN_SUFFIXES = ("_to_q", "_to_k", "_to_v", "_to_out_0")
RESULT_TAG = "BENCH_RESULT "


def _only_attention(adapter: Any) -> None:
    """Restrict the adapter's UNet targets to the attention projections (the diffusers example's set)."""
    full = adapter.lora_targets

    def lora_targets(**kw: Any) -> list[Any]:
        return [t for t in full(**kw) if t.name.endswith(ATTN_SUFFIXES)]

    adapter.lora_targets = lora_targets


def run_ours(root: str, mode: str, steps: int, batch: int, threads: int) -> dict[str, Any]:
    """One run of our engine (in a child process of `main`): steady steps/s from its progress events."""
    import torch

    from lora_trainer.config import load_config
    from lora_trainer.events import Emitter
    from lora_trainer.models.tiny import build_tiny_adapter
    from lora_trainer.train.image import train

    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    adapter = build_tiny_adapter("sd1")
    if mode == "attn":
        _only_attention(adapter)
    if device != "cpu":
        adapter.to(device)
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []
    cpu: list[float] = []

    def on_event(event: Any) -> None:
        if event.type == "progress":
            times.append(time.perf_counter())
            cpu.append(time.process_time())

    cfg = load_config({"base_model": "builtin:tiny-sd1", "train_data_dir": os.path.join(root, "data"),
                       "output_dir": os.path.join(root, f"ours-{mode}"), "resolution": RES, "enable_bucket": False,
                       "min_bucket_reso": RES, "max_bucket_reso": RES, "lora_rank": RANK, "lora_alpha": RANK,
                       "train_text_encoder": False, "batch_size": batch, "max_train_steps": steps + WARM,
                       "learning_rate": 1e-4, "lr_scheduler": "constant", "save_state": False, "device": device,
                       "cache_latents": True, "seed": 42})
    t0 = time.perf_counter()
    result = train(cfg, adapter=adapter, emit=Emitter([on_event]))
    wall = time.perf_counter() - t0
    n_modules = sum(1 for k in _safetensors_keys(str(result.output_path)) if k.endswith(".lora_down.weight"))
    steady = (times[-1] - times[WARM - 1]) if len(times) > WARM else wall
    steady_cpu = (cpu[-1] - cpu[WARM - 1]) if len(cpu) > WARM else None
    out: dict[str, Any] = {"steps_per_s": steps / steady, "wall_s": wall, "modules": n_modules, "device": device,
                           "steps_per_cpu_s": steps / steady_cpu if steady_cpu else None}
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


def _run_child(name: str, cmd: list[str], cwd: str, total: int, env: dict[str, str]) -> dict[str, Any]:
    """Run one trainer process, noting wall and CPU time at each new tqdm step count as its output
    arrives; a `BENCH_RESULT {json}` line (our child) overrides those rates. Peak RSS is the child's
    own (its rusage; the parent stays small so the fork does not lend it the parent's)."""
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
            if of == total and marks and n < marks[-1][2]:
                marks.clear()  # a new bar with the same total (a caching bar before the training one)
            if of == total and (not marks or n > marks[-1][2]):
                marks.append((now, cpu, n))
        pending = pending[-64:]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    text = "".join(chunks)
    if proc.returncode != 0:
        return {"trainer": name, "error": f"exit {proc.returncode}: " + text[-1500:]}
    out: dict[str, Any] = {"trainer": name, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}
    tagged = [line[len(RESULT_TAG):] for line in text.splitlines() if line.startswith(RESULT_TAG)]
    if tagged:
        return {**out, **json.loads(tagged[-1])}
    rates = _steady_rates(marks, total)
    if rates is None:
        return {"trainer": name, "error": "no step progress found in its output: " + text[-1500:]}
    m = _KOHYA_MODULES.search(text)
    if m:
        out["modules"] = int(m.group(1))
    return {**out, "steps_per_s": rates[0], "steps_per_cpu_s": rates[1]}


_KOHYA_MODULES = re.compile(r"create LoRA for U-Net: (\d+) modules")


def _safetensors_keys(path: str) -> list[str]:
    """Tensor names of a .safetensors file from its JSON header (no torch in the parent)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return [k for k in json.loads(f.read(n)) if k != "__metadata__"]


def bench_ours(root: str, mode: str, steps: int, batch: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--root", root, "--steps", str(steps),
           "--batch", str(batch), "--threads", str(threads)]
    env = {"OMP_NUM_THREADS": str(threads), "PYTHONPATH": ROOT}
    return _run_child("lora_trainer", cmd, ROOT, steps + WARM, env)


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
    return _run_child("kohya sd-scripts", cmd, checkout, total, env)


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
    out = _run_child("diffusers example", cmd, os.path.dirname(script), total, env)
    saved = os.path.join(root, "diffusers", "pytorch_lora_weights.safetensors")
    if "error" not in out and os.path.isfile(saved):
        out["modules"] = sum(1 for k in _safetensors_keys(saved) if "lora_A" in k or "lora.down" in k)
    return out


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the successful runs of one trainer in one mode."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[-1]["error"] if runs else "not run"}
    out: dict[str, Any] = {"runs": len(ok), "steps_per_s": _median([r["steps_per_s"] for r in ok]),
                           "all_steps_per_s": [round(r["steps_per_s"], 3) for r in ok],
                           "peak_rss_mib": _median([r["peak_rss_mib"] for r in ok]), "modules": ok[-1].get("modules")}
    cpu = [r["steps_per_cpu_s"] for r in ok if r.get("steps_per_cpu_s")]
    out["steps_per_cpu_s"] = _median(cpu) if cpu else None
    if ok[-1].get("peak_cuda_mib"):
        out["peak_cuda_mib"] = ok[-1]["peak_cuda_mib"]
    return out


def _print_table(mode: str, table: dict[str, dict[str, Any]]) -> None:
    print(f"\n== {mode} ==")
    print(f"{'trainer':<20} {'modules':>7} {'steps/s (median)':>17} {'steps/CPU-s':>12} {'peak RSS MiB':>13} "
          f"{'ours/them':>10} {'CPU ratio':>10} {'RSS ours/them':>14}  runs (steps/s)")
    ours = table.get("lora_trainer", {})
    for name, r in table.items():
        if "error" in r:
            print(f"{name:<20} failed: {r['error']}")
            continue
        vs = name != "lora_trainer" and "steps_per_s" in ours
        ratio = f"{ours['steps_per_s'] / r['steps_per_s']:.2f}x" if vs else ""
        cpu_ratio = (f"{ours['steps_per_cpu_s'] / r['steps_per_cpu_s']:.2f}x"
                     if vs and ours.get("steps_per_cpu_s") and r.get("steps_per_cpu_s") else "")
        rss_ratio = f"{ours['peak_rss_mib'] / r['peak_rss_mib']:.2f}" if vs else ""
        per_cpu = f"{r['steps_per_cpu_s']:.2f}" if r.get("steps_per_cpu_s") else "?"
        print(f"{name:<20} {r.get('modules') or '?':>7} {r['steps_per_s']:>17.2f} {per_cpu:>12} "
              f"{r['peak_rss_mib']:>13.0f} {ratio:>10} {cpu_ratio:>10} {rss_ratio:>14}  {r['all_steps_per_s']}")
    if ours.get("peak_cuda_mib"):
        print(f"peak CUDA memory (ours): {ours['peak_cuda_mib']:.0f} MiB")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps (after 3 warm-up steps)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (also for the reference trainers)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    p.add_argument("--modes", default="kohya,attn", help="module sets: kohya (192 modules), attn (128)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--ref-python", default=os.environ.get("REF_PYTHON") or sys.executable,
                   help="python of the reference trainers' environment (default: $REF_PYTHON, else this one)")
    p.add_argument("--child", choices=("prepare", "kohya", "attn"), help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "prepare":
        _prepare(args.root)
        return 0
    if args.child:
        print(RESULT_TAG + json.dumps(run_ours(args.root, args.child, args.steps, args.batch, args.threads)),
              flush=True)
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("kohya", "attn")]
    if bad:
        p.error(f"--modes: unknown {bad}; use kohya and/or attn")
    refs = {"kohya": ("KOHYA_SD_SCRIPTS", "kohya sd-scripts", bench_kohya),
            "attn": ("DIFFUSERS_EXAMPLES", "diffusers example", bench_diffusers)}
    for var, _, _ in refs.values():
        if not os.environ.get(var):
            print(f"note: {var} is not set; skipping that reference trainer ({var}=<path to its checkout> "
                  "make bench to compare)")
    root = tempfile.mkdtemp(prefix="lora-bench-")
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        prep = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "prepare", "--root", root],
                              env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True)
        if prep.returncode != 0:
            print("preparing the dataset and tiny model failed:\n" + prep.stderr[-2000:])
            return 1
        data, model = os.path.join(root, "data"), os.path.join(root, "tiny-sd1")
        print(f"tiny SD1, {RES}px, batch {args.batch}, rank {RANK}, UNet-only LoRA, fp32, AdamW, cached latents, "
              f"{args.steps} timed steps, {args.threads} thread(s), {args.repeats} interleaved round(s)")
        print(f"before: {_load()}", flush=True)
        jobs: list[tuple[str, str, Any]] = []
        for mode in modes:
            jobs.append((mode, "lora_trainer", lambda m=mode: bench_ours(root, m, args.steps, args.batch,
                                                                           args.threads)))
            var, name, fn = refs[mode]
            checkout = os.environ.get(var)
            if checkout:
                jobs.append((mode, name, lambda fn=fn, c=checkout: fn(c, root, data, model, args.steps, args.batch,
                                                                      args.threads, args.ref_python)))
        for r in range(args.repeats):
            k = r % len(jobs)
            for mode, name, job in jobs[k:] + jobs[:k]:  # rotate so no trainer always runs first
                res = job()
                runs.setdefault((mode, name), []).append(res)
                rate = f"{res['steps_per_s']:.2f} steps/s" if "steps_per_s" in res else "failed"
                print(f"  round {r + 1} {mode:<5} {name:<18} {rate}", flush=True)
        print(f"after: {_load()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    tables: dict[str, dict[str, dict[str, Any]]] = {}
    for (mode, name), rs in runs.items():
        tables.setdefault(mode, {})[name] = _summary(rs)
    for mode in modes:
        _print_table(mode, tables.get(mode, {}))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"tables": tables, "runs": {f"{m}/{n}": rs for (m, n), rs in runs.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
