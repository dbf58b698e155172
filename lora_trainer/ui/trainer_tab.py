"""The LoRA Trainer tab: dataset, form (presets, YAML), Train/Stop, live progress, result card."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gradio as gr

from lora_trainer.errors import UserError
from lora_trainer.ui import form as F
from lora_trainer.ui.compat import make, on, update
from lora_trainer.ui.run_follow import Following, resume_config, state_choices

if TYPE_CHECKING:
    from lora_trainer.hosts.base import Host

# what applying a preset never changes (besides every path field): it names this run, not its settings
KEPT_BY_PRESETS = ("output_name", "trigger_word", "sample_prompts", "description", "preferred_weight")
KEEP = object()  # marker in preset_values: leave the component as it is
# the standalone app starts on the built-in tiny model so a first run works with no download
APP_DEFAULTS = {"base_model": "builtin:tiny-sd1", "resolution": 64, "output_name": "my_lora"}
# the log box follows new lines while the reader is at its bottom (gradio's own autoscroll does not
# on every version); installed once per page by the tab's load event
LOG_FOLLOW_JS = """() => {
  if (window.ltLogFollow) { return []; }
  window.ltLogFollow = true;
  const root = () => (typeof gradioApp === "function" ? gradioApp() : document);
  let following = true, touched = 0;
  const atBottom = (t) => t.scrollHeight - t.scrollTop - t.clientHeight < 24;
  setInterval(() => {
    const box = root().querySelector("#lt_log textarea");
    if (!box) { return; }
    if (!box.dataset.ltFollow) {  // the reader scrolling up stops following; back at the bottom resumes it
      box.dataset.ltFollow = "1";
      for (const ev of ["wheel", "pointerdown", "keydown", "touchstart"]) {
        box.addEventListener(ev, () => { touched = Date.now(); }, {passive: true});
      }
      box.addEventListener("scroll", () => { if (Date.now() - touched < 1000) { following = atBottom(box); } });
    }
    if (following && !atBottom(box)) { box.scrollTop = box.scrollHeight; }
  }, 400);
  return [];
}"""
SEND_TO_TXT2IMG_JS = "(text) => { window.loraTrainerSendToTxt2img && window.loraTrainerSendToTxt2img(text); return text; }"


def presets(host: Host | None = None) -> dict[str, str]:
    """Preset name -> YAML file (shipped inside the package, `lora_trainer/presets/`). Inside the WebUI,
    presets that choose their own base model (the tiny quick_try) are left out: it trains the loaded one."""
    from lora_trainer.presets import list_presets, load_preset

    found = list_presets()
    if host is not None and _loaded(host):
        found = {n: p for n, p in found.items() if "base_model" not in load_preset(n)}
    return found


def preset_values(fields: list[F.FormField], name: str) -> list[Any] | None:
    """Form values after applying preset `name`: its keys set, other settings back to their defaults,
    while what names this run (LoRA name, trigger word, dataset, prompts, chosen files) is kept.
    None = unknown preset (nothing changes)."""
    from lora_trainer.presets import load_preset

    if name not in presets():
        return None
    data = load_preset(name)
    out: list[Any] = []
    for f in fields:
        key = f.info.name
        if key in data:
            out.append(F.display(f, data[key]))
        elif key in KEPT_BY_PRESETS or f.info.path:
            out.append(KEEP)
        else:
            out.append(F.display(f, f.info.default))
    return out


def _header(loaded: str) -> str:
    return "### Train a LoRA" + (f" on the loaded checkpoint **{loaded}**" if loaded else "")


def _loaded(host: Host) -> str:
    """Name of the checkpoint the host has loaded (WebUI), or "" (the app loads `base_model`)."""
    return host.loaded_model_name()


def form_config(host: Host, fields: list[F.FormField], values: list[Any], opened: str | None) -> dict[str, Any]:
    """Form values -> the config mapping the run starter validates. `opened` is the folder the
    dataset section has open (a typed folder or the upload folder), used when the form has none.
    Sample prompts without a cadence get one (samples during the run, not only at its end)."""
    from lora_trainer.errors import ConfigError

    data = F.values_to_dict(fields, values)
    data["output_name"] = F.check_output_name(data.get("output_name"))
    if not data.get("train_data_dir") and opened:
        data["train_data_dir"] = opened
    if not data.get("train_data_dir"):
        raise ConfigError("train_data_dir", "type a dataset folder, or open/upload one in the Dataset section")
    if _loaded(host):
        data.pop("base_model", None)
    if data.get("sample_prompts") and not data.get("sample_every_n_steps") and not data.get("sample_every_n_epochs"):
        data["sample_every_n_epochs"] = default_sample_epochs(int(data.get("epochs") or 10))
    return data


def default_sample_epochs(epochs: int) -> int:
    """About five sample rounds per run (every epoch for short runs)."""
    return max(1, epochs // 5)


def list_runs(host: Host) -> list[dict[str, Any]]:
    """Run folders under the host's work dir, newest first."""
    root = os.path.join(host.work_dir(), "runs")
    runs = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        folder = os.path.join(root, name)
        if os.path.isdir(folder):
            final = os.path.join(folder, f"{name}.safetensors")
            runs.append({"name": name, "folder": folder, "mtime": os.path.getmtime(folder),
                         "lora": final if os.path.exists(final) else ""})
    return sorted(runs, key=lambda r: r["mtime"], reverse=True)


def model_choices(host: Host) -> list[str]:
    """Models the Base model list offers: the built-in tiny ones and what the models folder holds."""
    from lora_trainer.config import MODEL_EXTENSIONS

    folder = host.model_dirs()["checkpoint"]
    found = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        if name.lower().endswith(MODEL_EXTENSIONS[:2]) or os.path.isfile(os.path.join(path, "model_index.json")):
            found.append(path)
    return ["builtin:tiny-sd1", "builtin:tiny-sdxl", *found]


def file_choices(folder: str) -> list[str]:
    from lora_trainer.config import MODEL_EXTENSIONS

    if not os.path.isdir(folder):
        return []
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.lower().endswith(MODEL_EXTENSIONS)]


IDLE = "Idle."


def build_trainer_tab(host: Host) -> gr.Blocks:
    from lora_trainer.hosts.runs import TrainingBusy, running_training, start_training
    from lora_trainer.jobs import registry

    basic, advanced = F.all_field_names()
    loaded = _loaded(host)
    hidden = F.WEBUI_HIDDEN if loaded else ()
    dirs = host.model_dirs()
    lists = {"base_model": model_choices(host), "vae_path": file_choices(dirs["vae"]),
             "network_weights": file_choices(dirs["lora"]), "clip_l_path": file_choices(dirs["text_encoder"]),
             "t5xxl_path": file_choices(dirs["text_encoder"])}
    with gr.Blocks(analytics_enabled=False) as tab:
        header = make(gr.Markdown, value=_header(loaded), elem_id="lt_header")
        with gr.Row():
            with gr.Column(scale=3):
                preset = make(gr.Dropdown, label="Preset", choices=["(none)", *presets(host)], value="(none)",
                              elem_id="lt_preset", info="Fills the settings below; your name, dataset and "
                              "prompts stay.")
                preset_info = make(gr.Markdown, value="", elem_id="lt_preset_info")
                basic_fields = F.build_fields(gr, make, basic, hidden=hidden, lists=lists,
                                              values=APP_DEFAULTS if not loaded else None)
                with gr.Accordion("Dataset: open or upload, check, caption, edit", open=host.restricted):
                    dataset = _dataset_section(host)
                adv_fields: list[F.FormField] = []
                with gr.Accordion("Advanced settings", open=False, elem_id="lt_advanced"):
                    for title, names in F.advanced_sections(advanced):
                        shown = [n for n in names if n not in hidden]
                        with gr.Accordion(title, open=False, visible=bool(shown)):
                            adv_fields += F.build_fields(gr, make, names, hidden=hidden, lists=lists)
                with gr.Accordion("YAML config: import / export", open=False):
                    yaml_text = make(gr.Textbox, label="YAML", lines=10, elem_id="lt_yaml")
                    with gr.Row():
                        yaml_import = make(gr.Button, value="Load YAML into the form", elem_id="lt_yaml_import")
                        yaml_export = make(gr.Button, value="Show the form as YAML", elem_id="lt_yaml_export")
                    yaml_file = make(gr.File, label="…or a .yaml file", type="filepath", file_types=[".yaml", ".yml"])
            with gr.Column(scale=2):
                with gr.Row():
                    train_btn = make(gr.Button, value="Train", variant="primary", elem_id="lt_train")
                    stop_btn = make(gr.Button, value="Stop", elem_id="lt_stop")
                notice = make(gr.Markdown, value="", elem_id="lt_notice")
                status = make(gr.Markdown, value=IDLE, elem_id="lt_status")
                plan = make(gr.Markdown, value="", elem_id="lt_plan")
                plot = make(gr.Image, label="Loss", type="pil", interactive=False, elem_id="lt_plot")
                gallery = make(gr.Gallery, label="Samples", columns=4, height=260, elem_id="lt_samples")
                with make(gr.Group, visible=False, elem_id="lt_result") as result_box:
                    result_md = make(gr.Markdown, value="", elem_id="lt_result_md")
                    result_prompt = make(gr.Textbox, label="Use it in a prompt", interactive=False,
                                         elem_id="lt_result_prompt", show_copy_button=True)
                    send_btn = make(gr.Button, value="Send to txt2img", elem_id="lt_send", visible=bool(loaded))
                log = make(gr.Textbox, label="Log", lines=8, max_lines=16, interactive=False, elem_id="lt_log",
                           autoscroll=True)
                with gr.Accordion("Resume a stopped run", open=True):
                    states = state_choices(host)
                    resume_pick = make(gr.Dropdown, label="Saved state", choices=list(states),
                                       value=next(iter(states), None), elem_id="lt_resume_state",
                                       info="Stop saves one; Resume continues that run with its own settings.")
                    with gr.Row():
                        resume_btn = make(gr.Button, value="Resume", elem_id="lt_resume")
                        resume_refresh = make(gr.Button, value="Refresh list", elem_id="lt_resume_refresh")
                with gr.Accordion("Past runs", open=False):
                    runs = make(gr.Dataframe, headers=["name", "LoRA file", "folder"], interactive=False,
                                elem_id="lt_runs")
                    runs_refresh = make(gr.Button, value="Refresh", elem_id="lt_runs_refresh")

        fields = basic_fields + adv_fields
        comps = [f.component for f in fields]
        outs = [status, plan, plot, gallery, result_box, result_md, result_prompt, log]
        keep = tuple(update() for _ in outs)

        def start_and_follow(make_config: Any) -> Iterator[tuple[Any, ...]]:
            try:
                running = running_training(registry)
                if running is not None:  # before reading the form: the answer is the same whatever it holds
                    raise TrainingBusy(running)
                job = start_training(host, make_config())
            except TrainingBusy as exc:
                yield (*keep, f"**Not started:** {exc}")
                return
            except UserError as exc:
                yield (*keep, f"**Cannot start:** {exc}")
                return
            cfg = job.config
            note = ""
            if cfg.sample_prompts and cfg.sample_every_n_epochs and not cfg.sample_every_n_steps:
                note = f"Samples every {cfg.sample_every_n_epochs} epoch(s) (Advanced → Sample images)."
            first = True
            for frame in Following(job, host).follow():
                yield (*frame, note if first else update())
                first = False

        def do_train(*args: Any) -> Iterator[tuple[Any, ...]]:
            values, opened = list(args[:-1]), args[-1]
            yield from start_and_follow(lambda: form_config(host, fields, values, opened))

        def do_resume(label: str | None) -> Iterator[tuple[Any, ...]]:
            from lora_trainer.errors import ConfigError

            path = state_choices(host).get(label or "")

            def config() -> dict[str, Any]:
                if not path:
                    raise ConfigError("resume_from_checkpoint", "pick a saved state in the list (Refresh list "
                                                                "after a run was stopped)")
                return resume_config(path)

            yield from start_and_follow(config)

        def latest_job() -> Any:
            jobs = registry.list("train")
            return running_training(registry) or (jobs[-1] if jobs else None)

        def do_attach() -> Iterator[tuple[Any, ...]]:
            """On page load: show the running (or last) training, live until it ends."""
            job = latest_job()
            if job is None or getattr(job, "config", None) is None:
                yield (IDLE, *keep[1:])
                return
            yield from Following(job, host).follow()

        def do_stop() -> Iterator[tuple[Any, ...]]:
            job = running_training(registry)
            if job is None:
                yield (*keep, "Nothing is running.")
                return
            job.stop("stopped from the UI")
            first = True
            for frame in Following(job, host).follow():  # this page shows the outcome, even a fresh one
                yield (*frame, "**Stopping…** saving a resumable state first." if first else update())
                first = False
            yield (*keep, "")

        def do_preset(name: str):
            from lora_trainer.presets import describe

            values = preset_values(fields, name)
            if values is None:
                return [update() for _ in fields] + [""]
            about = describe(name)
            return [update() if v is KEEP else update(value=v) for v in values] + [
                f"Preset **{name}**: {about[:1].upper() + about[1:]}" if about else f"Preset **{name}** applied."]

        def do_import(text: str, file: Any):
            if file:
                path = file if isinstance(file, str) else getattr(file, "name", "")
                with open(path, encoding="utf-8-sig") as fh:
                    text = fh.read()
            try:
                data = F.yaml_to_dict(text)
            except UserError as exc:
                return [update() for _ in fields] + [f"**YAML not loaded:** {exc}"]
            return F.dict_to_updates(fields, data, update) + ["YAML loaded into the form."]

        def do_export(*values: Any) -> str:
            return F.form_to_yaml(fields, list(values))

        def do_runs():
            rows = [[r["name"], r["lora"], r["folder"]] for r in list_runs(host)]
            return rows or [["", "", ""]]

        def do_states():
            choices = list(state_choices(host))
            return update(choices=choices, value=choices[0] if choices else None)

        live = {"concurrency_limit": None, "show_progress": "hidden"}
        data_dir = next(f.component for f in fields if f.info.name == "train_data_dir")
        on(train_btn.click, do_train, inputs=[*comps, dataset["dataset_dir"]], outputs=[*outs, notice], **live)
        on(resume_btn.click, do_resume, inputs=[resume_pick], outputs=[*outs, notice], **live)
        on(stop_btn.click, do_stop, inputs=[], outputs=[*outs, notice], **live)
        on(tab.load, do_attach, inputs=[], outputs=outs, **live)
        if loaded:  # the checkpoint may have changed since the tab was built: name the one loaded now
            on(tab.load, lambda: _header(_loaded(host)), inputs=[], outputs=[header])
        on(tab.load, None, inputs=[], outputs=[], js=LOG_FOLLOW_JS)
        if "open" in dataset and "folder" in dataset:  # the form follows the folder opened in the section
            on(dataset["open"].click, lambda folder: folder, inputs=[dataset["folder"]], outputs=[data_dir])
        on(preset.change, do_preset, inputs=[preset], outputs=[*comps, preset_info])
        on(yaml_import.click, do_import, inputs=[yaml_text, yaml_file], outputs=[*comps, notice])
        on(yaml_export.click, do_export, inputs=comps, outputs=[yaml_text])
        on(runs_refresh.click, do_runs, inputs=[], outputs=[runs])
        on(resume_refresh.click, do_states, inputs=[], outputs=[resume_pick])
        on(send_btn.click, None, inputs=[result_prompt], outputs=[result_prompt], js=SEND_TO_TXT2IMG_JS)
        tab.lt_components = {"fields": fields, "dataset": dataset}  # type: ignore[attr-defined]
    return tab


def _dataset_section(host: Host) -> dict[str, Any]:
    from lora_trainer.ui.dataset_section import build_dataset_section

    return build_dataset_section(allow_server_paths=not host.restricted, upload_dir=host.uploads_dir())
