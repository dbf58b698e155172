"""End-to-end checks of LoRA training on a FLUX.1 checkpoint loaded in a running Forge (stdlib only; not a pytest file).

Build the tiny GGUF FLUX.1 and Chroma models into the harness (once; see that script), start Forge with the tiny FLUX.1-dev
checkpoint, this extension and the harness's probe extension:
    <forge venv python> tests/forge/harness_tiny_models.py <forge>
    cd ../shared/forge && FORGE_HARNESS=... CKPT=tinyflux PORT=7873 bash start.sh /path/to/this/repo probe_ext
then: PORT=7873 LORA_DIR=<forge>/models/Lora LT_E2E_DATA=<a small captioned dataset> python tests/forge/harness_e2e_flux.py
Rounds: [float] the checkpoint as loaded (fp32 on CPU); [fp8-first] Forge's "Diffusion in Low Bits" set to
float8-e4m3fn (through the options API, as the dropdown sets it) and training as the first thing on the
freshly loaded fp8 model, before any generation; [gguf] the GGUF transformer with its VAE, CLIP-L and T5 as
"VAE / Text Encoder" modules; [fp8] the fp8 model loaded afresh, generation first - its first image and
weights must be what [fp8-first] left; [nf4] the checkpoint's transformer in bitsandbytes NF4 (Forge's
4-bit layers; a CPU Forge needs bitsandbytes >= 0.46): training and Forge left as it was - the `<lora:>`
checks are left out there, as Forge merges a LoRA into NF4 weights only on CUDA (its dequantise moves them
to `cuda`), so the NF4 run's file is used on the float checkpoint instead; [chroma] the tiny Chroma all-in-one file, generated with CFG 4 against
a negative prompt (Chroma has no guidance input). The options are put back at the end. Images are made the way Flux is
generated in Forge: Euler with the Simple schedule, CFG 1, distilled guidance 3.5. Prints one PASS/FAIL line
per check and exits non-zero when one fails.
"""
import base64
import hashlib
import json
import os
import sys
import time

from harness_e2e import LORA_DIR, RESULTS, call, check, train, weights

CHECKPOINT = os.environ.get("LT_E2E_CKPT", "tinyflux.safetensors")
GGUF = os.environ.get("LT_E2E_GGUF", "ltflux-gguf-q4_0.gguf")
CHROMA = os.environ.get("LT_E2E_CHROMA", "ltchroma.safetensors")
NF4 = os.environ.get("LT_E2E_NF4", "ltflux-nf4.safetensors")
GGUF_MODULES = ["ltflux-gguf-ae.safetensors", "ltflux-gguf-clip_l.safetensors", "ltflux-gguf-t5xxl.safetensors"]


CFG = {}  # Chroma (no guidance input) is generated with CFG against a negative prompt: set by its round


def image(prompt, seed=1234):
    r = call("/sdapi/v1/txt2img", dict(dict(prompt=prompt, negative_prompt="", seed=seed, steps=4, width=64, height=64,
                                             cfg_scale=1, distilled_cfg_scale=3.5, sampler_name="Euler",
                                             scheduler="Simple", batch_size=1, n_iter=1, send_images=True,
                                             save_images=False), **CFG))
    if "images" not in r:
        return f"error {r}", ""
    return hashlib.sha256(base64.b64decode(r["images"][0])).hexdigest()[:16], json.loads(r["info"])["infotexts"][0]


def title(filename):
    return next(m["title"] for m in call("/sdapi/v1/sd-models") if m["title"].startswith(filename))


def low_bits(value):
    """Forge's "Diffusion in Low Bits" as its dropdown sets it: the option, then the model-loading parameters
    refreshed (the options API refreshes them on a checkpoint change: away and back); the next generation
    (or training) reloads the checkpoint with that storage."""
    other = next(m["title"] for m in call("/sdapi/v1/sd-models") if not m["title"].startswith(CHECKPOINT))
    call("/sdapi/v1/options", {"forge_unet_storage_dtype": value})
    call("/sdapi/v1/options", {"sd_model_checkpoint": other})
    call("/sdapi/v1/options", {"sd_model_checkpoint": title(CHECKPOINT)})


def use(checkpoint, modules):
    """A checkpoint and its "VAE / Text Encoder" modules, set together as the UI's selectors set them."""
    call("/sdapi/v1/options", {"sd_model_checkpoint": title(checkpoint), "forge_additional_modules": modules})


def stored_as(info):
    first = info.get("unet.first_param") or {}
    return {"ParameterGGUF": "gguf", "ForgeParams4bit": "nf4"}.get(first.get("param_class"), first.get("dtype"))


def architecture(path):
    """`modelspec.architecture` from a .safetensors header (8-byte length, then JSON)."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)).get("__metadata__", {}).get("modelspec.architecture")


def round_of_checks(tag, storage, engine="Flux", lora_in_forge=True):
    """Returns the first image's hash and the weights after that first generation. `lora_in_forge=False`:
    no `<lora:>` prompt on this model (see [nf4])."""
    a0, it0 = image("a red circle")
    info = call("/harness/model_info")
    dtype = stored_as(info)
    check(f"[{tag}] Forge has the {engine} checkpoint loaded, transformer stored as {storage}",
          info.get("sd_model", "").endswith(f".{engine}") and dtype == storage and not a0.startswith("error"),
          f"{info.get('sd_model')} {dtype} {a0} {it0.splitlines()[-1][:120] if it0 else ''}")
    w0 = weights()
    name = f"e2e_flux_{tag}"
    t0 = time.time()
    view = train(name, 12)
    check(f"[{tag}] API training on the loaded {engine} checkpoint runs to the end", view.get("state") == "done",
          f"{view.get('state')} {view.get('error', '')} steps={(view.get('progress') or {}).get('step')} "
          f"{time.time() - t0:.0f}s")
    files = sorted(f for f in os.listdir(LORA_DIR) if f.startswith(name))
    check(f"[{tag}] models/Lora has the LoRA, its .json and its preview",
          {f"{name}.safetensors", f"{name}.json", f"{name}.preview.png"} <= set(files), str(files))
    check(f"[{tag}] weights hash identical after training", weights() == w0)
    arch = architecture(os.path.join(LORA_DIR, f"{name}.safetensors")) if f"{name}.safetensors" in files else None
    want = "chroma/lora" if engine == "Chroma" else "flux-1-dev/lora"
    check(f"[{tag}] the file says it is a {want}", arch == want, str(arch))
    a1, _ = image("a red circle")
    check(f"[{tag}] same-seed image without LoRA identical after training", a1 == a0, f"{a0} {a1}")
    if not lora_in_forge:
        return a0, w0
    al, it = image(f"a red circle <lora:{name}:1>")
    check(f"[{tag}] <lora:{name}:1> changes the same-seed image", al != a0 and name in it, it.split("\n")[-1][:200])
    a2, _ = image("a red circle")
    check(f"[{tag}] without the LoRA again: identical", a2 == a0)
    check(f"[{tag}] weights hash identical after using the LoRA", weights() == w0)
    # a LoRA Forge applied for the previous prompt is out of the weights while training, and back after
    al2, _ = image(f"a red circle <lora:{name}:1>")
    w_l = weights()
    view = train(f"{name}_after_lora", 6)
    check(f"[{tag}] training right after a <lora:> prompt runs to the end", view.get("state") == "done",
          f"{view.get('state')} {view.get('error', '')}")
    check(f"[{tag}] weights hash (LoRA merged by Forge) identical after that training", weights() == w_l)
    al3, _ = image(f"a red circle <lora:{name}:1>")
    check(f"[{tag}] the <lora:> image is identical before and after that training", al3 == al2 == al)
    a3, _ = image("a red circle")
    check(f"[{tag}] and the plain image too", a3 == a0)
    return a0, w0


def training_first(tag):
    """Training as the first thing on a freshly loaded model (no sample generation in the run), then Forge's
    first generation. Returns that image's hash and the weights after it."""
    t0 = time.time()
    view = train(f"e2e_flux_{tag}", 12, sample_prompts=[])
    check(f"[{tag}] API training as the first thing after loading runs to the end", view.get("state") == "done",
          f"{view.get('state')} {view.get('error', '')} {time.time() - t0:.0f}s")
    info = call("/harness/model_info")
    check(f"[{tag}] it trained on the fp8-stored transformer", stored_as(info) == "torch.float8_e4m3fn",
          str(info.get("unet.first_param")))
    a0, _ = image("a red circle")
    w0 = weights()
    al, it = image(f"a red circle <lora:e2e_flux_{tag}:1>")
    check(f"[{tag}] <lora:e2e_flux_{tag}:1> changes the same-seed image", al != a0 and f"e2e_flux_{tag}" in it)
    a1, _ = image("a red circle")
    check(f"[{tag}] without the LoRA again: identical", a1 == a0)
    return a0, w0


def main():
    if not os.environ.get("LT_E2E_DATA"):
        sys.exit("set LT_E2E_DATA to a small captioned dataset folder")
    saved = call("/sdapi/v1/options")
    try:
        round_of_checks("float", "torch.float32")
        low_bits("float8-e4m3fn")
        first = training_first("fp8-first")
        call("/sdapi/v1/options", {"forge_unet_storage_dtype": "Automatic"})
        use(GGUF, GGUF_MODULES)
        round_of_checks("gguf", "gguf")
        use(CHECKPOINT, [])
        low_bits("float8-e4m3fn")
        fresh = round_of_checks("fp8", "torch.float8_e4m3fn")
        check("[fp8-first] Forge's first image after training first = its first image on a fresh fp8 load",
              first[0] == fresh[0], f"{first[0]} {fresh[0]}")
        check("[fp8-first] and its weights after that generation are the same", first[1] == fresh[1])
        call("/sdapi/v1/options", {"forge_unet_storage_dtype": "Automatic"})
        use(NF4, [])
        round_of_checks("nf4", "nf4", lora_in_forge=False)
        use(CHECKPOINT, [])
        a0, _ = image("a red circle")
        al, it = image("a red circle <lora:e2e_flux_nf4:1>")
        check("[nf4] the LoRA trained on the NF4 model changes the same-seed image of the float checkpoint",
              al != a0 and "e2e_flux_nf4" in it, it.split("\n")[-1][:200])
        use(CHROMA, [])
        CFG.update(cfg_scale=4, negative_prompt="blurry")
        round_of_checks("chroma", "torch.float32", engine="Chroma")
    finally:
        call("/sdapi/v1/options", {"forge_unet_storage_dtype": saved.get("forge_unet_storage_dtype", "Automatic")})
        use(saved.get("sd_model_checkpoint", CHECKPOINT), saved.get("forge_additional_modules", []))
        restored = call("/sdapi/v1/options")
        keys = ("forge_unet_storage_dtype", "sd_model_checkpoint", "forge_additional_modules")

        def same(a, b):  # a title gains its " [hash]" once Forge has hashed the file (its first infotext)
            return a == b or (isinstance(a, str) and isinstance(b, str) and a.split(" [")[0] == b.split(" [")[0])

        check("the harness's options are as before", all(same(restored.get(k), saved.get(k)) for k in keys),
              str({k: (saved.get(k), restored.get(k)) for k in keys if not same(restored.get(k), saved.get(k))}))
    print("SUMMARY", sum(ok for _, ok in RESULTS), "/", len(RESULTS), "passed")
    sys.exit(0 if all(ok for _, ok in RESULTS) else 1)


if __name__ == "__main__":
    main()
