"""The LoRA Trainer tab: dataset, form (presets, YAML), Train/Stop, live progress, result card."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import gradio as gr

from lora_trainer.errors import UserError
from lora_trainer.ui import form as F
from lora_trainer.ui.compat import make, on, update
from lora_trainer.ui.plot import loss_plot
from lora_trainer.ui.run_view import RunView

if TYPE_CHECKING:
    from lora_trainer.hosts.base import Host

POLL_S = 1.0
# what applying a preset never changes (besides every path field): it names this run, not its settings
KEPT_BY_PRESETS = ("output_name", "trigger_word", "sample_prompts", "description", "preferred_weight")
KEEP = object()  # marker in preset_values: leave the component as it is
# the standalone app starts on the built-in tiny model so a first run works with no download
APP_DEFAULTS = {"base_model": "builtin:tiny-sd1", "resolution": 64, "output_name": "my_lora"}
SEND_TO_TXT2IMG_JS = "(text) => { window.loraTrainerSendToTxt2img && window.loraTrainerSendToTxt2img(text); return text; }"


def presets() -> dict[str, str]:
    """Preset name -> YAML file (shipped inside the package, `lora_trainer/presets/`)."""
    from lora_trainer.presets import list_presets

    return list_presets()


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


def _loaded(host: Host) -> str:
    """Name of the checkpoint the host has loaded (WebUI), or "" (the app loads `base_model`)."""
    fn = getattr(host, "loaded_model_name", None)
    return str(fn() or "") if callable(fn) else ""


def form_config(host: Host, fields: list[F.FormField], values: list[Any], opened: str | None) -> dict[str, Any]:
    """Form values -> the config mapping the run starter validates. `opened` is the folder the
    dataset section has open (a typed folder or the upload folder), used when the form has none."""
    from lora_trainer.errors import ConfigError

    data = F.values_to_dict(fields, values)
    data["output_name"] = F.check_output_name(data.get("output_name"))
    if not data.get("train_data_dir") and opened:
        data["train_data_dir"] = opened
    if not data.get("train_data_dir"):
        raise ConfigError("train_data_dir", "type a dataset folder, or open/upload one in the Dataset section")
    if _loaded(host):
        data.pop("base_model", None)
    return data


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


def build_trainer_tab(host: Host) -> gr.Blocks:
    from lora_trainer.hosts.runs import start_training
    from lora_trainer.jobs import registry

    basic, advanced = F.all_field_names()
    loaded = _loaded(host)
    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("### Train a LoRA" + (f" on the loaded checkpoint **{loaded}**" if loaded else ""))
        with gr.Row():
            with gr.Column(scale=3):
                preset = make(gr.Dropdown, label="Preset", choices=["(none)", *presets()], value="(none)",
                              elem_id="lt_preset", info="Fills the settings below; your name, dataset and "
                              "prompts stay.")
                preset_info = make(gr.Markdown, value="", elem_id="lt_preset_info")
                basic_fields = F.build_fields(gr, make, basic, hidden=("base_model",) if loaded else (),
                                              values=APP_DEFAULTS if not loaded else None)
                with gr.Accordion("Dataset: open or upload, check, caption, edit", open=host.restricted):
                    dataset = _dataset_section(host)
                with gr.Accordion("Advanced (every option)", open=False):
                    adv_fields = F.build_fields(gr, make, advanced)
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
                status = make(gr.Markdown, value="Idle.", elem_id="lt_status")
                plot = make(gr.Image, label="Loss", type="pil", interactive=False, elem_id="lt_plot")
                gallery = make(gr.Gallery, label="Samples", columns=4, height=260, elem_id="lt_samples")
                with make(gr.Group, visible=False, elem_id="lt_result") as result_box:
                    result_md = make(gr.Markdown, value="", elem_id="lt_result_md")
                    result_prompt = make(gr.Textbox, label="Use it in a prompt", interactive=False,
                                         elem_id="lt_result_prompt", show_copy_button=True)
                    send_btn = make(gr.Button, value="Send to txt2img", elem_id="lt_send", visible=bool(loaded))
                log = make(gr.Textbox, label="Log", lines=8, max_lines=16, interactive=False, elem_id="lt_log")
                with gr.Accordion("Past runs", open=False):
                    runs = make(gr.Dataframe, headers=["name", "LoRA file", "folder"], interactive=False,
                                elem_id="lt_runs")
                    runs_refresh = make(gr.Button, value="Refresh", elem_id="lt_runs_refresh")

        fields = basic_fields + adv_fields
        comps = [f.component for f in fields]

        def do_train(*args: Any):
            values, opened = list(args[:-1]), args[-1]
            view = RunView()
            try:
                job = start_training(host, form_config(host, fields, values, opened))
                cfg = job.config
            except UserError as exc:
                yield (f"**Cannot start:** {exc}", None, [], update(visible=False), "", "", str(exc))
                return
            cursor = 0
            while True:
                events, cursor = job.events_since(cursor)
                view.feed(events)
                alive = job.alive
                yield (view.status_markdown(), loss_plot(view.steps, view.losses), view.samples[-12:],
                       update(visible=False), "", "", "\n".join(view.log[-60:]))
                if not alive:
                    break
                time.sleep(POLL_S)
            if view.output and not view.error:
                name = view.result_name()
                prompt = f"<lora:{name}:{getattr(cfg, 'preferred_weight', 0.8)}>"
                trig = getattr(cfg, "trigger_word", "")
                card = (f"**{name}** is ready in `{os.path.dirname(view.output)}`.  \n"
                        f"Trigger word: `{trig or '(none)'}`")
                prompt_text = f"{trig}, {prompt}" if trig else prompt
                yield (view.status_markdown(), loss_plot(view.steps, view.losses), view.samples[-12:],
                       update(visible=True), card, prompt_text, "\n".join(view.log[-60:]))

        def do_stop() -> str:
            job = next((j for j in registry.list("train") if j.alive), None)
            if job is None:
                return "Nothing is running."
            job.stop("stopped from the UI")
            return "**Stopping…** the run saves a resumable state first."

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

        outs = [status, plot, gallery, result_box, result_md, result_prompt, log]
        data_dir = next(f.component for f in fields if f.info.name == "train_data_dir")
        on(train_btn.click, do_train, inputs=[*comps, dataset["dataset_dir"]], outputs=outs)
        if "open" in dataset and "folder" in dataset:  # the form follows the folder opened in the section
            on(dataset["open"].click, lambda folder: folder, inputs=[dataset["folder"]], outputs=[data_dir])
        on(stop_btn.click, do_stop, inputs=[], outputs=[status])
        on(preset.change, do_preset, inputs=[preset], outputs=[*comps, preset_info])
        on(yaml_import.click, do_import, inputs=[yaml_text, yaml_file], outputs=[*comps, status])
        on(yaml_export.click, do_export, inputs=comps, outputs=[yaml_text])
        on(runs_refresh.click, do_runs, inputs=[], outputs=[runs])
        on(send_btn.click, None, inputs=[result_prompt], outputs=[result_prompt], js=SEND_TO_TXT2IMG_JS)
        tab.lt_components = {"fields": fields, "dataset": dataset}  # type: ignore[attr-defined]
    return tab


def _dataset_section(host: Host) -> dict[str, Any]:
    from lora_trainer.hosts.runs import uploads_dir
    from lora_trainer.ui.dataset_section import build_dataset_section

    return build_dataset_section(allow_server_paths=not host.restricted, upload_dir=uploads_dir(host))
