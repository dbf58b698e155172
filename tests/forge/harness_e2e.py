"""End-to-end checks of LoRA Trainer in a running Forge, as a user would use it (stdlib only; not a pytest file).

Start Forge with this extension and the harness's probe extension (its /harness/weights_hash route),
without the warm-up generation so the first check meets Forge's placeholder model:
    cd ../shared/forge && FORGE_HARNESS=... PORT=7872 WARMUP=0 bash start.sh /path/to/this/repo probe_ext
then: PORT=7872 LORA_DIR=<forge>/models/Lora LT_E2E_DATA=<a small captioned dataset> python tests/forge/harness_e2e.py
Prints one PASS/FAIL line per check and exits non-zero when one fails.
"""
import base64
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request

PORT = int(os.environ.get("PORT", "7872"))
LORA_DIR = os.environ.get("LORA_DIR", "models/Lora")
DATA = os.environ.get("LT_E2E_DATA", "")
RESULTS = []


def call(path, payload=None, timeout=600):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{PORT}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return {"http_error": e.code, "body": e.read().decode()[:500]}


def check(name, ok, detail=""):
    RESULTS.append((name, bool(ok)))
    print(f"[{'PASS' if ok else 'FAIL'}] {name} {detail}", flush=True)


def image(prompt, seed=1234):
    r = call("/sdapi/v1/txt2img", dict(prompt=prompt, negative_prompt="", seed=seed, steps=4, width=64, height=64,
                                        cfg_scale=7, sampler_name="Euler", batch_size=1, n_iter=1, send_images=True,
                                        save_images=False))
    return hashlib.sha256(base64.b64decode(r["images"][0])).hexdigest()[:16], json.loads(r["info"])["infotexts"][0]


def weights():
    r = call("/harness/weights_hash")
    return json.dumps(r, sort_keys=True)


def train(name, steps, stop_after=None, **extra):
    cfg = dict(train_data_dir=DATA, output_name=name, resolution=64, enable_bucket=False, batch_size=2,
               max_train_steps=steps, learning_rate=5e-3, lora_rank=4, lora_alpha=4, seed=3, save_state=False,
               sample_prompts=["zqx"], sample_every_n_steps=steps, sample_steps=4, sample_width=64, sample_height=64)
    cfg.update(extra)
    job = call("/lora-trainer/v1/train", {"config": cfg})
    if "id" not in job:
        return job
    deadline = time.time() + 900
    while time.time() < deadline:
        view = call(f"/lora-trainer/v1/train/{job['id']}")
        step = (view.get("progress") or {}).get("step", 0)
        if stop_after is not None and step >= stop_after and view["state"] == "running":
            call(f"/lora-trainer/v1/train/{job['id']}/stop", {})
            stop_after = None
        if view["state"] not in ("queued", "running"):
            return view
        time.sleep(0.5)
    return {"state": "timeout"}


def main():
    if not DATA:
        sys.exit("set LT_E2E_DATA to a small captioned dataset folder")
    info = call("/harness/model_info")
    placeholder = info.get("sd_model", "").endswith("FakeInitialModel")
    ours = call("/lora-trainer/v1/info")
    print("before any generation:", info.get("sd_model"), "| LoRA Trainer shows:", ours.get("model"))
    if placeholder:
        check("placeholder shows the real checkpoint name", str(ours.get("model")).startswith("tinysd.safetensors"), ours.get("model"))
        t0 = time.time()
        view = train("e2e_first", 12)
        check("training before the first generation (loads the model itself) runs to the end",
              view.get("state") == "done", f"{view.get('state')} {view.get('error', '')} {time.time() - t0:.0f}s")
    a0, _ = image("a red circle")
    w0 = weights()  # after a generation: Forge's first generation itself casts its CLIP embeddings to fp32
    t0 = time.time()
    view = train("e2e_lora", 20)
    dt = time.time() - t0
    check("API training on the loaded tiny SD1 checkpoint runs to the end", view.get("state") == "done",
          f"{view.get('state')} {view.get('error', '')} steps={(view.get('progress') or {}).get('step')} {dt:.0f}s")
    files = sorted(f for f in os.listdir(LORA_DIR) if f.startswith("e2e_lora"))
    check("models/Lora has the LoRA, its .json and its preview",
          {"e2e_lora.safetensors", "e2e_lora.json", "e2e_lora.preview.png"} <= set(files), str(files))
    check("weights hash identical after training", weights() == w0)
    a1, _ = image("a red circle")
    check("same-seed image without LoRA identical after training", a1 == a0, f"{a0} {a1}")
    al, it = image("a red circle <lora:e2e_lora:1>")
    check("<lora:e2e_lora:1> changes the same-seed image", al != a0 and "e2e_lora" in it, it.split("\n")[-1][:160])
    a2, _ = image("a red circle")
    check("without the LoRA again: identical", a2 == a0)
    check("weights hash identical after using the LoRA", weights() == w0)
    # a LoRA Forge applied for the previous prompt must not be in the weights the training starts from
    al2, _ = image("a red circle <lora:e2e_lora:1>")
    w_l = weights()
    view = train("e2e_after_lora", 6)
    check("training right after a <lora:> prompt runs to the end", view.get("state") == "done",
          f"{view.get('state')} {view.get('error', '')}")
    check("weights hash (LoRA merged by Forge) identical after that training", weights() == w_l)
    al3, _ = image("a red circle <lora:e2e_lora:1>")
    check("the <lora:> image is identical before and after that training", al3 == al2)
    a3, _ = image("a red circle")
    check("and the plain image too", a3 == a0)
    # Stop
    view = train("e2e_stop", 400, stop_after=3)
    check("Stop ends the run", view.get("state") in ("stopped", "done"),
          f"{view.get('state')} step={(view.get('progress') or {}).get('step')}")
    check("weights hash identical after Stop", weights() == w0)
    a4, _ = image("a red circle")
    check("same-seed image identical after Stop", a4 == a0)
    print("SUMMARY", sum(ok for _, ok in RESULTS), "/", len(RESULTS), "passed")
    sys.exit(0 if all(ok for _, ok in RESULTS) else 1)


if __name__ == "__main__":
    main()
