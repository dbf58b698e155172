"""LoRA Trainer's registration with the WebUI (AUTOMATIC1111 1.10 / Forge): tabs, settings, API routes.

Registration only, and cheap: nothing heavy (torch models, gradio blocks, the engine) is imported
until a callback runs. `lora_trainer` (a specific name —
the builtin Lora extension owns `lora`, `network`, `networks`) is registered as a package.
"""

import logging
import os
import sys
import time

_t0 = time.perf_counter()
EXT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _on_path():
    """Make `lora_trainer` importable. Only that package is registered (by location), not the
    extension root: the root also holds generic names (install, preload, tests, tools) that must not
    shadow anything on sys.path, and the WebUI restores sys.path after loading each script anyway."""
    if "lora_trainer" in sys.modules:
        return
    import importlib.util

    init = os.path.join(EXT_ROOT, "lora_trainer", "__init__.py")
    spec = importlib.util.spec_from_file_location("lora_trainer", init,
                                                  submodule_search_locations=[os.path.dirname(init)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["lora_trainer"] = module
    spec.loader.exec_module(module)


from modules import script_callbacks  # noqa: E402  (already imported by the WebUI: free)

log = logging.getLogger("lora_trainer.webui")
TIMINGS = {}
_host = None


def host():
    """The one WebUIHost of this process (created on first use)."""
    global _host
    _on_path()
    if _host is None:
        from lora_trainer.hosts.webui import WebUIHost
        _host = WebUIHost()
    return _host


def _timed(name, fn, *args):
    t = time.perf_counter()
    try:
        return fn(*args)
    finally:
        TIMINGS[name] = round(time.perf_counter() - t, 4)
        log.debug("LoRA Trainer %s took %.3f s", name, TIMINGS[name])


def on_ui_tabs():
    _on_path()
    from lora_trainer.ui.webui_tabs import build_tabs
    return _timed("on_ui_tabs", build_tabs, host())


def on_ui_settings():
    _on_path()
    from lora_trainer.hosts.webui_settings import add_settings
    _timed("on_ui_settings", add_settings)


def on_app_started(demo, app):
    from modules import shared
    _on_path()
    if getattr(shared.cmd_opts, "lora_trainer_no_api", False):
        return
    from lora_trainer.hosts.api import register
    _timed("on_app_started", register, app, host())
    from lora_trainer.hosts import api
    api.STARTUP_TIMINGS.update(TIMINGS)


script_callbacks.on_ui_tabs(on_ui_tabs, name="lora_trainer")
script_callbacks.on_ui_settings(on_ui_settings, name="lora_trainer")
script_callbacks.on_app_started(on_app_started, name="lora_trainer")
TIMINGS["load"] = round(time.perf_counter() - _t0, 4)
