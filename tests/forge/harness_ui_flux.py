"""Train a LoRA from the LoRA Trainer tab of a running Forge on its loaded FLUX.1 checkpoint, in headless
Chromium, then check `<lora:name:1>` and the image without it through Forge's API (not a pytest file).

Start Forge as for harness_e2e_flux.py (CKPT=tinyflux; or CKPT=ltchroma.safetensors and LT_E2E_CKPT set to that
name: Chroma, generated with CFG against a negative prompt), then with the venv that has Playwright:
    PORT=7873 LORA_DIR=<forge>/models/Lora LT_E2E_DATA=<dataset> .venv/bin/python tests/forge/harness_ui_flux.py
Prints one PASS/FAIL line per check and exits non-zero when one fails.
"""
import os
import re
import sys
import time

from harness_e2e import LORA_DIR, PORT, RESULTS, check, weights
from harness_e2e_flux import CFG, CHECKPOINT, image

NAME = "e2e_flux_tab"


def wait_text(page, elem_id, pattern, timeout_s):
    deadline, text = time.time() + timeout_s, ""
    while time.time() < deadline:
        text = page.locator(f"#{elem_id}").first.inner_text()
        if re.search(pattern, text):
            return text
        time.sleep(0.5)
    return text


def main():
    from playwright.sync_api import sync_playwright

    data = os.environ.get("LT_E2E_DATA") or sys.exit("set LT_E2E_DATA to a small captioned dataset folder")
    stem = os.path.splitext(CHECKPOINT)[0]
    family = "Chroma" if "chroma" in stem.lower() else "FLUX.1"
    if family == "Chroma":
        CFG.update(cfg_scale=4, negative_prompt="blurry")
    for f in os.listdir(LORA_DIR):
        if f.startswith(NAME + "."):
            os.remove(os.path.join(LORA_DIR, f))
    a0, _ = image("a red circle")
    w0 = weights()
    yaml = (f"train_data_dir: {data}\noutput_name: {NAME}\nresolution: 64\nenable_bucket: false\nbatch_size: 2\n"
            "max_train_steps: 10\nlearning_rate: 0.005\nlora_rank: 4\nlora_alpha: 4\nseed: 3\n"
            "sample_prompts: [zqx]\nsample_every_n_steps: 10\nsample_steps: 4\nsample_width: 64\nsample_height: 64\n")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"http://127.0.0.1:{PORT}/")
        page.locator("#tabs > .tab-nav button", has_text="LoRA Trainer").first.click(timeout=120000)
        page.wait_for_selector("#lt_train", state="visible", timeout=60000)
        header = page.locator("#lt_header").first.inner_text()
        check(f"the tab names the loaded {family} checkpoint", stem in header, header.replace("\n", " ")[:160])
        page.get_by_text("YAML config: import / export").first.click()
        box = page.locator("#lt_yaml textarea").first
        box.fill(yaml)
        box.dispatch_event("input")
        page.locator("#lt_yaml_import").click()
        page.wait_for_function(f"() => document.querySelector('#lt_output_name input, #lt_output_name textarea')"
                               f".value === '{NAME}'", timeout=30000)
        t0 = time.time()
        page.locator("#lt_train").click()
        # the tab shows the last run's outcome on load (maybe an API run's): wait for this run's own end line
        status = wait_text(page, "lt_status", rf"Done\..*{NAME}\.safetensors|Error|error|failed", 600)
        check(f"Train in the tab runs to the end on the loaded {family}", f"{NAME}.safetensors" in status,
              f"{status.strip()[:200]!r} {time.time() - t0:.0f}s")
        result = wait_text(page, "lt_result_md", "is ready", 30)
        prompt = page.locator("#lt_result_prompt textarea, #lt_result_prompt input").first.input_value()
        check("the result card offers the prompt", NAME in prompt and "is ready" in result, prompt)
        page.screenshot(path=os.path.join(os.environ.get("LT_UI_ARTIFACTS", "/tmp"), f"forge_{stem}_trainer_done.png"),
                        full_page=True)
        browser.close()
    check("weights hash identical after training from the tab", weights() == w0)
    a1, _ = image("a red circle")
    check("same-seed image without LoRA identical after training", a1 == a0, f"{a0} {a1}")
    al, it = image(f"a red circle <lora:{NAME}:1>")
    check(f"<lora:{NAME}:1> changes the same-seed image", al != a0 and NAME in it, it.split("\n")[-1][:200])
    print("SUMMARY", sum(ok for _, ok in RESULTS), "/", len(RESULTS), "passed")
    sys.exit(0 if all(ok for _, ok in RESULTS) else 1)


if __name__ == "__main__":
    main()
