"""A saved token never reaches a page: the app may be served to other machines, and whatever a Gradio
component holds at build time is in the config every browser downloads."""

from __future__ import annotations

import json

from lora_trainer.hosts.standalone import StandaloneHost
from lora_trainer.ui.downloader_tab import SAVED_TOKEN, build_downloader_tab


def test_saved_tokens_are_not_in_the_page_config(tmp_path):
    host = StandaloneHost(root=str(tmp_path), settings={"civitai_token": "civ-SECRET-1", "hf_token": "hf_SECRET-2",
                                                         "proxy": "socks5h://127.0.0.1:1080"})
    tab = build_downloader_tab(host)
    config = json.dumps(tab.get_config_file(), default=str)
    assert "civ-SECRET-1" not in config and "hf_SECRET-2" not in config
    boxes = {b.elem_id: b for b in tab.blocks.values() if getattr(b, "elem_id", None)}
    assert boxes["ld_civitai_token"].placeholder == SAVED_TOKEN == boxes["ld_hf_token"].placeholder
    assert boxes["ld_proxy"].value == "socks5h://127.0.0.1:1080"  # the proxy is shown as set


def test_a_proxy_password_is_masked(tmp_path):
    host = StandaloneHost(root=str(tmp_path), settings={"proxy": "http://me:pa55word@10.0.0.1:3128"})
    tab = build_downloader_tab(host)
    assert "pa55word" not in json.dumps(tab.get_config_file(), default=str)
    boxes = {b.elem_id: b for b in tab.blocks.values() if getattr(b, "elem_id", None)}
    assert boxes["ld_proxy"].value == "http://me:****@10.0.0.1:3128"
