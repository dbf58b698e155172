"""What the WebUI model adapters need from the running WebUI, as plain values and callables.

Why here (in models/, not hosts/): the adapters are built from it, and the host fills it in
(`hosts.webui.webui_services()` is the one place that imports `modules.*`); tests pass their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lora_trainer.errors import UserError

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from lora_trainer.models.base import ModelAdapter


class HostRefused(UserError):
    """The WebUI is in a mode training cannot run in (e.g. --lowvram, a quantised Forge model)."""


@dataclass
class WebUIServices:
    """What the adapters and the host need from the WebUI. Tests pass their own values."""

    sd_model_getter: Callable[[], Any] = lambda: None   # the loaded model (shared.sd_model)
    state: Any = None                 # shared.state: job, job_count, job_no, textinfo, interrupted, begin(), end()
    queue_lock: Any = None            # modules.call_queue.queue_lock (generation waits while held)
    cmd_opts: Any = None              # shared.cmd_opts
    opts: Any = None                  # shared.opts
    undo_optimizations: Callable[[], None] | None = None    # sd_hijack.undo_optimizations
    apply_optimizations: Callable[[], None] | None = None   # sd_hijack.apply_optimizations
    unmerge_networks: Callable[[Any], int] | None = None     # removes LoRAs merged by the builtin extension
    refresh_loras: Callable[[], None] | None = None          # networks.list_available_networks
    device: Any = None                # devices.device
    autocast: Callable[[], Any] | None = None               # devices.autocast (half-precision hosts)
    lowvram_get: Callable[[], Any] | None = None             # lowvram.module_in_gpu (--medvram bookkeeping)
    lowvram_set: Callable[[Any], None] | None = None
    txt2img: Callable[..., Any] | None = None                # sample images through the WebUI's own pipeline
    current_image: Callable[[Any], None] | None = None       # state.assign_current_image
    forge: bool = False
    load_model: Callable[[], Any] | None = None              # Forge: load the selected checkpoint now
    selected_model_name: Callable[[], str] | None = None     # Forge: the checkpoint picked, loaded or not
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sd_model(self) -> Any:
        return self.sd_model_getter()

    def flag(self, name: str) -> bool:
        return bool(getattr(self.cmd_opts, name, False))

    def option(self, name: str, default: Any = None) -> Any:
        return getattr(self.opts, name, default) if self.opts is not None else default

    def medvram(self, sdxl: bool) -> bool:
        return self.flag("medvram") or (sdxl and self.flag("medvram_sdxl"))

    def check_trainable(self) -> None:
        """Refuse modes that cannot train, before anything is touched."""
        if self.flag("lowvram"):
            raise HostRefused("the WebUI runs with --lowvram, which moves every block to the GPU and back on each "
                              "call and cannot train. Restart without --lowvram (use --medvram), or train with "
                              "`python -m lora_trainer train` outside the WebUI.")


def host_sample(adapter: ModelAdapter, services: WebUIServices, decode: Callable[[torch.Tensor], torch.Tensor],
                prompt: str, *, negative_prompt: str, seed: int, steps: int, width: int, height: int,
                guidance_scale: float) -> Image.Image:
    """A sample image for a WebUI-hosted SD model: through the WebUI's own txt2img when the host gives
    one (what users see there), else the SD family's DDIM on the adapter, decoded by the host's VAE."""
    if services.txt2img is not None:
        return services.txt2img(prompt=prompt, negative_prompt=negative_prompt, seed=seed, steps=steps,
                                width=width, height=height, cfg_scale=guidance_scale)
    import torch

    from lora_trainer.models.ddpm import ddim_sample
    from lora_trainer.models.preview import to_pil

    with torch.no_grad():
        g = torch.Generator().manual_seed(int(seed))
        x = torch.randn((1, 4, height // 8, width // 8), generator=g).to(adapter.device)
        cond = adapter.encode_text([negative_prompt, prompt])
        x = ddim_sample(adapter.predict, x, cond, steps, guidance_scale, adapter.info.prediction_type)
        img = decode(x.to(adapter.dtype))
    return to_pil(img[0])
