"""The tabs as hosts mount them: the WebUI's `on_ui_tabs` list, or the standalone app."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_trainer.hosts.base import Host

CSS_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "style.css")


def webui_tabs(host: Host) -> list[tuple[Any, str, str]]:
    """[(blocks, title, elem_id)] for `script_callbacks.on_ui_tabs`."""
    from lora_trainer.ui.downloader_tab import build_downloader_tab
    from lora_trainer.ui.trainer_tab import build_trainer_tab

    return [(build_trainer_tab(host), "LoRA Trainer", "lora_trainer"),
            (build_downloader_tab(host), "LoRA Downloader", "lora_downloader")]


def build_app(host: Host) -> Any:
    """The standalone app: the same two tabs in one page."""
    import gradio as gr

    from lora_trainer.ui.compat import blocks
    from lora_trainer.ui.downloader_tab import build_downloader_tab
    from lora_trainer.ui.trainer_tab import build_trainer_tab

    trainer, downloader = build_trainer_tab(host), build_downloader_tab(host)
    with blocks(title="LoRA Trainer", analytics_enabled=False, css=_css()) as app:
        gr.Markdown("## LoRA Trainer")
        with gr.Tabs():
            with gr.Tab("LoRA Trainer", elem_id="tab_lora_trainer"):
                trainer.render()
            with gr.Tab("LoRA Downloader", elem_id="tab_lora_downloader"):
                downloader.render()
    return app


def _css() -> str:
    try:
        with open(CSS_FILE, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def launch_kwargs() -> dict[str, Any]:
    """Arguments newer gradio takes in launch() instead of Blocks() (css)."""
    import gradio as gr

    return {"css": _css()} if int(gr.__version__.split(".")[0]) >= 6 else {}
