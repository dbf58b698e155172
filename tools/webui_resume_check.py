"""End-to-end resume check inside a running WebUI, through the extension's HTTP API.

Trains the loaded checkpoint three ways with one config: uninterrupted; stopped mid-run and resumed
with `resume_from_checkpoint: latest`; and the same stopped state rewritten in the previous release's
format (torch.save .pt files) and resumed. The three final LoRAs must be bit-identical, and the
state folders must hold only .safetensors and .json files (no pickle).

  python tools/webui_resume_check.py --url http://127.0.0.1:7871 --work /tmp/webui-resume
Exit 0 when everything holds; prints one line per finding.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import torch
from safetensors.torch import load_file


def call(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{method} {url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}") from None


def run(api: str, config: dict[str, Any], stop_at: int | None = None, timeout: float = 900,
        interrupt: str | None = None) -> dict[str, Any]:
    """Start a training job, optionally stop it once it reports step `stop_at` (with the API's stop, or
    by POSTing the WebUI's own `interrupt` URL: the Interrupt button); its last view + events."""
    job = call(f"{api}/train", "POST", {"config": config})
    job_id, cursor, events, stopped = job["id"], 0, [], False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = call(f"{api}/train/{job_id}?since={cursor}")
        cursor = view["cursor"]
        events += view["events"]
        step = max((e["data"].get("step", 0) for e in events if e["type"] == "progress"), default=0)
        if stop_at is not None and not stopped and step >= stop_at:
            call(interrupt or f"{api}/train/{job_id}/stop", "POST", {} if interrupt else None)
            stopped = True
        if view["state"] not in ("queued", "running", "stopping"):
            view["all_events"] = events
            return view
        time.sleep(0.05)
    raise SystemExit(f"{job_id}: not finished after {timeout:.0f} s")


def final_event(view: dict[str, Any], kind: str) -> dict[str, Any]:
    found = [e["data"] for e in view["all_events"] if e["type"] == kind]
    if not found:
        errors = [e["data"] for e in view["all_events"] if e["type"] in ("error", "failed")]
        raise SystemExit(f"job {view['id']} ended {view['state']!r} without a {kind!r} event: {view.get('error')} {errors}")
    return found[-1]


def to_previous_format(state: str) -> None:
    """Rewrite a state as the previous release wrote it: optimizer.pt + rng.pt (torch.save), format 1."""
    from lora_trainer.train.checkpoint import load_state

    loaded = load_state(state)
    torch.save(loaded["optim"], os.path.join(state, "optimizer.pt"))
    torch.save(loaded["rng_tensors"], os.path.join(state, "rng.pt"))
    for name in ("optimizer.json", "optimizer.safetensors", "rng.safetensors"):
        os.remove(os.path.join(state, name))
    path = os.path.join(state, "trainer_state.json")
    with open(path) as f:
        meta = json.load(f)
    with open(path, "w") as f:
        json.dump({**meta, "format": 1}, f)


def same(a: str, b: str) -> tuple[bool, str]:
    ta, tb = load_file(a), load_file(b)
    if ta.keys() != tb.keys():
        return False, f"different keys ({len(ta)} vs {len(tb)})"
    diff = [k for k in ta if not torch.equal(ta[k], tb[k])]
    worst = max((float((ta[k].double() - tb[k].double()).abs().max()) for k in diff), default=0.0)
    return not diff, f"{len(ta)} tensors, {len(diff)} differ (max |diff| {worst:g})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:7871")
    ap.add_argument("--work", default="/tmp/webui-resume")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--stop-at", type=int, default=5)
    ap.add_argument("--interrupt", action="store_true", help="stop with the WebUI's Interrupt (/sdapi/v1/interrupt)")
    args = ap.parse_args()
    api = args.url.rstrip("/") + "/lora-trainer/v1"
    from lora_trainer import synthetic

    shutil.rmtree(args.work, ignore_errors=True)
    data = os.path.join(args.work, "data")
    synthetic.write_dataset(data, synthetic.concept_set(synthetic.TARGET_CONCEPT, 6, seed=0), repeats=2, name="zqx")
    info = call(f"{api}/info")
    print("host:", info.get("host"), "| loaded model:", info.get("model"))

    def config(name: str, **extra: Any) -> dict[str, Any]:
        return {"train_data_dir": data, "output_name": name, "output_dir": os.path.join(args.work, "runs", name),
                "resolution": 64, "enable_bucket": False, "batch_size": 2, "max_train_steps": args.steps,
                "lora_rank": 4, "lora_alpha": 4, "learning_rate": 1e-3, "lr_scheduler": "cosine",
                "lr_warmup_steps": 2, "gradient_accumulation_steps": 2, "lora_dropout": 0.1, "seed": 7,
                "save_precision": "fp32", "save_state": True, "save_steps": 3, "sample_prompts": None, **extra}

    ok = True
    t0 = time.monotonic()
    full = run(api, config("rc_full"))
    full_lora = final_event(full, "done")["output"]
    print(f"uninterrupted: {full['state']}, {final_event(full, 'done')['steps']} steps, {time.monotonic() - t0:.1f} s "
          f"-> {full_lora}")

    interrupt = args.url.rstrip("/") + "/sdapi/v1/interrupt" if args.interrupt else None
    part = run(api, config("rc_part"), stop_at=args.stop_at, interrupt=interrupt)
    stopped = final_event(part, "stopped")
    state = stopped["state_path"]
    print(f"stopped: {part['state']} at step {os.path.basename(state)}; message: {stopped['message']!r}")
    legacy_dir = os.path.join(args.work, "runs", "rc_legacy")
    shutil.copytree(os.path.join(args.work, "runs", "rc_part"), legacy_dir)

    states = sorted(d for d in os.listdir(os.path.dirname(state)) if d.endswith("-state"))
    for d in states:
        files = sorted(os.listdir(os.path.join(os.path.dirname(state), d)))
        heads = {}
        for f in files:
            with open(os.path.join(os.path.dirname(state), d, f), "rb") as fh:
                heads[f] = fh.read(2)
        pickled = [f for f, h in heads.items() if h[:1] == b"\x80" or h == b"PK" or not f.endswith((".json", ".safetensors"))]
        ok &= not pickled
        print(f"state {d}: {files} -> {'NO pickle' if not pickled else 'PICKLE/zip: ' + str(pickled)}")

    resumed = run(api, config("rc_part", resume_from_checkpoint="latest"))
    res_lora = final_event(resumed, "done")["output"]
    notes = [e["data"]["message"] for e in resumed["all_events"] if e["type"] == "log" and "resumed" in
             e["data"].get("message", "")]
    equal, detail = same(full_lora, res_lora)
    ok &= equal
    print(f"resumed ({notes[:1]}): {resumed['state']} -> {res_lora}; vs uninterrupted: "
          f"{'BIT-IDENTICAL' if equal else 'DIFFERENT'} ({detail})")

    for d in os.listdir(legacy_dir):
        if d.endswith("-state"):
            to_previous_format(os.path.join(legacy_dir, d))
    legacy = run(api, config("rc_legacy", resume_from_checkpoint="latest"))
    leg_lora = final_event(legacy, "done")["output"]
    equal, detail = same(full_lora, leg_lora)
    ok &= equal
    print(f"resumed from a previous-format state (optimizer.pt, rng.pt): {legacy['state']}; vs uninterrupted: "
          f"{'BIT-IDENTICAL' if equal else 'DIFFERENT'} ({detail})")
    print("RESULT:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
