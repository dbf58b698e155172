"""The WebUI's own interrogators: A1111/Forge BLIP (`shared.interrogator`) and DeepDanbooru
(`modules.deepbooru`). `modules` is imported only here, only when this captioner is chosen, so
nothing new is installed into the host and the extension loads without it.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from lora_trainer.caption.base import to_rgb
from lora_trainer.errors import UserError
from lora_trainer.events import StopFlag

HOST_MODELS = ("blip", "deepbooru")


def _host_modules() -> tuple[Any, Any]:
    try:
        from modules import devices, shared
    except ImportError as exc:
        raise UserError("--captioner host uses the WebUI's interrogators and works only inside the WebUI; "
                        "use --captioner blip or wd14 here") from exc
    return shared, devices


class HostCaptioner:
    name = "host"
    prose = False

    def __init__(self, model: str | None = None, *, batch_size: int = 1, **_ignored: Any):
        self.kind = (model or "blip").lower()
        if self.kind not in HOST_MODELS:
            raise UserError(f"host interrogator '{model}' is unknown; use one of {', '.join(HOST_MODELS)}")
        self.shared, self.devices = _host_modules()
        self.batch_size = 1  # the host's interrogators take one image at a time
        self._loaded = False

    def load(self) -> None:
        if self._loaded:
            return
        if self.kind == "deepbooru":
            from modules import deepbooru

            deepbooru.model.start()
        else:
            self._load_blip()
        self._loaded = True

    def _load_blip(self) -> None:
        # BLIP alone: the host's `interrogate()` would also load CLIP and add its artist/flavor words
        interrogator = self.shared.interrogator
        if interrogator is None:
            raise UserError("the WebUI has not finished starting (no interrogator yet); try again in a moment")
        if interrogator.blip_model is None:
            interrogator.blip_model = interrogator.load_blip_model()
            if not self.shared.cmd_opts.no_half and not interrogator.running_on_cpu:
                interrogator.blip_model = interrogator.blip_model.half()
        interrogator.blip_model = interrogator.blip_model.to(self.devices.device_interrogate)
        interrogator.dtype = next(interrogator.blip_model.parameters()).dtype

    def caption(self, images: list[Image.Image], stop: StopFlag | None = None) -> list[str]:
        self.load()
        if self.kind == "deepbooru":
            from modules import deepbooru

            return [deepbooru.model.tag_multi(to_rgb(im), force_disable_ranks=True) for im in images]
        return [self.shared.interrogator.generate_caption(to_rgb(im)) for im in images]

    def close(self) -> None:
        if not self._loaded:
            return
        if self.kind == "deepbooru":
            from modules import deepbooru

            deepbooru.model.stop()
        else:
            self.shared.interrogator.send_blip_to_ram()
            self.devices.torch_gc()
        self._loaded = False
