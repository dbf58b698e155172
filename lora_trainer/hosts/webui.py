"""The WebUI host (AUTOMATIC1111 1.10 / Forge).

Everything the WebUI provides is gathered in `WebUIServices` — plain attributes and callables — so the
adapters and the host logic run (and are tested) without `modules.*`; `webui_services()` fills it from
the running WebUI and is the only place importing `modules`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from lora_trainer.events import StopFlag
from lora_trainer.hosts.base import Host
from lora_trainer.models.webui_services import HostRefused, WebUIServices

__all__ = ["HostRefused", "WebUIHost", "WebUIServices", "state_sink", "webui_services"]

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.events import Event, EventSink
    from lora_trainer.models.base import ModelAdapter

log = logging.getLogger("lora_trainer.webui")


def _unmerge_builtin_lora(sd_model: Any) -> int:
    """Undo LoRAs the builtin Lora extension merged into the weights (it keeps a CPU backup per
    module and re-merges on the next forward while `loaded_networks` is non-empty)."""
    import networks  # the builtin extension's module (extensions-builtin/Lora)
    import torch

    networks.loaded_networks.clear()
    restored = 0
    with torch.no_grad():  # the restore copies into parameters in place
        restored = _restore_backups(networks, sd_model)
    return restored


def _restore_backups(networks: Any, sd_model: Any) -> int:
    restored = 0
    for module in sd_model.modules():
        if getattr(module, "network_weights_backup", None) is not None or \
                getattr(module, "network_bias_backup", None) is not None:
            networks.network_restore_weights_from_backup(module)
            restored += 1
        if hasattr(module, "network_current_names"):
            networks.network_reset_cached_weight(module)
    return restored


def _is_forge() -> bool:
    """Forge ships `modules_forge` beside `modules` (found without importing anything)."""
    import importlib.util

    return importlib.util.find_spec("modules_forge") is not None


def forge_services() -> WebUIServices:
    """Forge: its own loader and LoRA code (no sd_hijack optimisations, no builtin-Lora backups to
    undo - the adapter takes Forge's LoRA patches out itself)."""
    from modules import call_queue, devices, sd_models, shared

    def load() -> Any:
        return sd_models.forge_model_reload()[0]

    def selected() -> str:
        # set once Forge's UI is built (after the extension tabs); before that, what it would select
        info = sd_models.model_data.forge_loading_parameters.get("checkpoint_info")
        if info is None:
            try:
                info = sd_models.select_checkpoint()
            except Exception:  # noqa: BLE001 - no checkpoint at all: no name
                info = None
        return str(getattr(info, "title", "") or getattr(info, "name_for_extra", "") or "")

    def refresh() -> None:
        try:
            import networks  # extensions-builtin/sd_forge_lora
            networks.list_available_networks()
        except Exception as exc:  # noqa: BLE001 - a missing builtin extension must not fail the run
            log.warning("could not refresh the Lora list: %s", exc)

    return WebUIServices(
        sd_model_getter=lambda: shared.sd_model, state=shared.state, queue_lock=call_queue.queue_lock,
        cmd_opts=shared.cmd_opts, opts=shared.opts, refresh_loras=refresh, device=devices.device,
        current_image=getattr(shared.state, "assign_current_image", None), forge=True, load_model=load,
        selected_model_name=selected)


def webui_services() -> WebUIServices:
    """Services of the running WebUI (imports `modules.*`; call only inside the WebUI)."""
    if _is_forge():
        return forge_services()
    from modules import call_queue, devices, shared

    def undo() -> None:
        from modules import sd_hijack
        sd_hijack.undo_optimizations()

    def apply() -> None:
        from modules import sd_hijack
        sd_hijack.apply_optimizations()

    def refresh() -> None:
        try:
            import networks
            networks.list_available_networks()
        except Exception as exc:  # noqa: BLE001 - a missing builtin extension must not fail the run
            log.warning("could not refresh the Lora list: %s", exc)

    def unmerge(sd_model: Any) -> int:
        try:
            return _unmerge_builtin_lora(sd_model)
        except ImportError:
            return 0

    def lowvram_get() -> Any:
        from modules import lowvram
        return lowvram.module_in_gpu

    def lowvram_set(module: Any) -> None:
        from modules import lowvram
        lowvram.module_in_gpu = module

    return WebUIServices(
        sd_model_getter=lambda: shared.sd_model, state=shared.state, queue_lock=call_queue.queue_lock,
        cmd_opts=shared.cmd_opts, opts=shared.opts, undo_optimizations=undo, apply_optimizations=apply,
        unmerge_networks=unmerge, refresh_loras=refresh, device=devices.device, autocast=devices.autocast,
        lowvram_get=lowvram_get, lowvram_set=lowvram_set, current_image=getattr(shared.state, "assign_current_image", None))


class HostStopFlag(StopFlag):
    """The job's StopFlag, also set by the WebUI's own Interrupt/Skip button (shared.state)."""

    def __init__(self, inner: StopFlag, state: Any):
        super().__init__()
        self._inner, self._state = inner, state

    @property
    def requested(self) -> bool:
        if self._inner.requested:
            return True
        if self._state is not None and getattr(self._state, "interrupted", False):
            self._inner.request("interrupted in the WebUI")
            return True
        return False

    @property
    def reason(self) -> str:  # type: ignore[override]
        return self._inner.reason

    @reason.setter
    def reason(self, value: str) -> None:
        pass

    def request(self, reason: str = "stop requested") -> None:
        self._inner.request(reason)

    def wait(self, timeout: float) -> bool:
        return self._inner.wait(timeout)


def state_sink(state: Any, current_image: Callable[[Any], None] | None = None) -> EventSink:
    """Mirror training events into shared.state (the WebUI's progress bar and live preview)."""

    def sink(event: Event) -> None:
        d = event.data
        if event.type == "progress" and "step" in d:
            state.job_count = int(d.get("total_steps") or 0) or state.job_count
            state.job_no = int(d["step"])
            state.sampling_step, state.sampling_steps = int(d["step"]), int(d.get("total_steps") or 0)
            loss = d.get("avg_loss", d.get("loss"))
            state.textinfo = (f"LoRA training: step {d['step']}/{d.get('total_steps', '?')}, epoch "
                              f"{d.get('epoch', '?')}" + (f", loss {loss:.4f}" if isinstance(loss, float) else ""))
        elif event.type == "status":
            state.textinfo = f"LoRA training: {d.get('message', '')}"
        elif event.type == "sample" and current_image and d.get("paths"):
            from PIL import Image
            with Image.open(d["paths"][0]) as im:
                current_image(im.copy())
    return sink


class WebUIHost(Host):
    """Inside AUTOMATIC1111 / Forge."""

    name = "webui"

    def __init__(self, services: WebUIServices | None = None, root: str | None = None,
                 settings: dict[str, Any] | None = None):
        self._services = services
        super().__init__(root or self._data_dir(), settings)

    @property
    def services(self) -> WebUIServices:
        if self._services is None:
            self._services = webui_services()
        return self._services

    def _data_dir(self) -> str:
        if self._services is not None:
            return getattr(self._services.cmd_opts, "data_dir", None) or os.getcwd()
        try:
            from modules import paths_internal
            return paths_internal.data_path
        except ImportError:
            return os.getcwd()

    def setting(self, key: str, default: Any = None) -> Any:
        if key in self.settings and self.settings[key] not in (None, ""):
            return self.settings[key]
        value = self.services.option(f"lora_trainer_{key}")
        return default if value in (None, "") else value

    # ---- folders: the WebUI's own command-line folders
    def model_dirs(self) -> dict[str, str]:
        dirs = super().model_dirs()
        co = self.services.cmd_opts
        for kind, opt in (("lora", "lora_dir"), ("checkpoint", "ckpt_dir"), ("vae", "vae_dir"),
                          ("embedding", "embeddings_dir"), ("text_encoder", "text_encoder_dir")):
            value = getattr(co, opt, None)
            if value:
                dirs[kind] = os.path.abspath(value)
        return dirs

    def work_dir(self) -> str:
        custom = self.setting("work_dir") or getattr(self.services.cmd_opts, "lora_trainer_work_dir", None)
        return os.path.abspath(custom) if custom else os.path.join(self.root, "outputs", "lora-trainer")

    # ---- access rule: the same as the WebUI's for installing extensions
    @property
    def restricted(self) -> bool:
        return self.services.flag("disable_extension_access")

    def restriction_reason(self) -> str:
        return ("the WebUI listens beyond localhost without --enable-insecure-extension-access; restart it with "
                "that flag if you trust everyone who can reach it")

    def loaded_model_name(self) -> str:
        model = self.services.sd_model
        if self.services.forge and not hasattr(model, "forge_objects") and self.services.selected_model_name:
            return self.services.selected_model_name()  # Forge's placeholder: the checkpoint it will load
        if model is None:
            return ""
        info = getattr(model, "sd_checkpoint_info", None)
        return str(getattr(info, "title", None) or getattr(info, "name_for_extra", None) or type(model).__name__)

    # ---- the run
    def check_can_train(self) -> None:
        from lora_trainer.errors import ModelLoadError

        self.services.check_trainable()
        model = self.services.sd_model
        if model is None:
            raise ModelLoadError("no checkpoint is loaded in the WebUI: pick one at the top of the page, wait for "
                                 "it to load, then start training again.")
        if self.services.forge and hasattr(model, "forge_objects"):
            from lora_trainer.models.forge_host import forge_refusal
            why = forge_refusal(model)
            if why:
                raise HostRefused(why)

    def make_adapter(self, cfg: TrainConfig) -> ModelAdapter:
        from lora_trainer.hosts.loaded_model import adapter_for
        return adapter_for(self.services, cfg)

    @contextlib.contextmanager
    def exclusive(self, title: str) -> Iterator[None]:
        svc = self.services
        lock = svc.queue_lock or contextlib.nullcontext()
        with lock:
            state = svc.state
            if state is not None and hasattr(state, "begin"):
                state.begin(job=title)
            try:
                yield
            finally:
                if state is not None and hasattr(state, "end"):
                    state.end()

    def progress_sink(self, title: str) -> EventSink | None:
        svc = self.services
        return state_sink(svc.state, svc.current_image) if svc.state is not None else None

    def stop_flag(self, job_stop: StopFlag) -> StopFlag:
        return HostStopFlag(job_stop, self.services.state)

    def file_landed(self, path: str, kind: str = "lora") -> None:
        if kind == "lora" and self.services.refresh_loras:
            self.services.refresh_loras()
