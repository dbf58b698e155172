"""The extension's section in the WebUI's Settings tab (tokens, default folders)."""

from __future__ import annotations

SECTION = ("lora_trainer", "LoRA Trainer")

# key (stored as lora_trainer_<key>) -> (default, label, is_secret)
SETTINGS = {
    "civitai_token": ("", "Civitai API token (for downloads that need a login)", True),
    "hf_token": ("", "HuggingFace token (gated or private files)", True),
    "proxy": ("", "Proxy for downloads (http://, socks5h://); empty = environment", False),
    "dataset_root": ("", "Default folder to pick datasets from (empty = <WebUI>/train)", False),
    "work_dir": ("", "Folder for runs, logs, resumable states and uploads (empty = outputs/lora-trainer)", False),
}


def add_settings() -> None:
    import gradio as gr
    from modules import shared

    for key, (default, label, secret) in SETTINGS.items():
        info = shared.OptionInfo(default, label, gr.Textbox, {"type": "password"} if secret else {},
                                 section=SECTION, restrict_api=secret)
        shared.opts.add_option(f"lora_trainer_{key}", info)
