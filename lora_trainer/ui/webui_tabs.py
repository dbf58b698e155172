"""The two tabs inside the WebUI, built by `ui.tabs`; this
module only hands them the host and keeps the WebUI usable if the UI cannot be built."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("lora_trainer.webui")

TABS = (("LoRA Trainer", "lora_trainer_tab"), ("LoRA Downloader", "lora_downloader_tab"))


def build_tabs(host: Any) -> list[tuple[Any, str, str]]:
    """[(gr.Blocks, title, elem_id)] for on_ui_tabs."""
    try:
        from lora_trainer.ui.tabs import webui_tabs as ui_tabs
        return ui_tabs(host)
    except Exception as exc:  # noqa: BLE001 - a UI bug must not take the WebUI's other tabs down
        log.exception("LoRA Trainer UI could not be built; showing placeholder tabs")
        return _placeholders(host, f"The LoRA Trainer UI could not be built: {type(exc).__name__}: {exc}")


def _placeholders(host: Any, message: str) -> list[tuple[Any, str, str]]:
    import gradio as gr

    out = []
    for title, elem_id in TABS:
        with gr.Blocks(analytics_enabled=False) as block:
            gr.Markdown(f"### {title}\n\n{message}\n\nThe HTTP API under `/lora-trainer/v1/` works without it "
                        f"(Lora folder: `{host.lora_dir()}`).")
        out.append((block, title, elem_id))
    return out
