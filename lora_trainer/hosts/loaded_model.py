"""Pick the adapter for whatever model the WebUI has loaded (ldm, sgm or Forge)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lora_trainer.errors import ModelLoadError

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.models.base import ModelAdapter
    from lora_trainer.models.webui_services import WebUIServices


def adapter_for(services: WebUIServices, cfg: TrainConfig | None = None, **kwargs: Any) -> ModelAdapter:
    """The adapter over `services.sd_model`; a clear refusal when nothing usable is loaded. `cfg` gives a
    FLUX.1 / Chroma model its run options (sigma sampling, guidance, blocks and layers)."""
    model = services.sd_model
    if model is None:
        raise ModelLoadError("no checkpoint is loaded in the WebUI: pick one in the checkpoint list at the top, "
                             "wait for it to load, then start training again.")
    services.check_trainable()
    kwargs.setdefault("verify_hash", services.flag("lora_trainer_verify_weights"))
    if services.forge and (not hasattr(model, "forge_objects") or services.load_model is not None):
        model = forge_load(services)  # (a no-op unless the checkpoint or "Diffusion in Low Bits" changed)
    if hasattr(model, "forge_objects"):
        from lora_trainer.models import forge_host
        if forge_host.is_flow(model):
            from lora_trainer.models.flux_adapter import FluxOptions
            from lora_trainer.models.forge_flux import ForgeFluxAdapter
            options = FluxOptions.from_config(cfg) if cfg is not None else None
            return ForgeFluxAdapter(model, services, options=options, **kwargs)
        from lora_trainer.models.forge import ForgeAdapter
        return ForgeAdapter(model, services, **kwargs)
    if hasattr(model, "conditioner") or getattr(model, "is_sdxl", False):
        from lora_trainer.models.webui_sgm import WebUISgmAdapter
        return WebUISgmAdapter(model, services, **kwargs)
    if hasattr(model, "cond_stage_model") and hasattr(model, "model"):
        if getattr(model, "is_ssd", False) or getattr(model, "is_sd3", False):
            raise ModelLoadError("the loaded checkpoint is not SD1/SD2/SDXL: LoRA Trainer trains those only. "
                                 "Load an SD1.5, SD2.x or SDXL checkpoint.")
        from lora_trainer.models.webui_ldm import WebUILdmAdapter
        return WebUILdmAdapter(model, services, **kwargs)
    raise ModelLoadError(f"the loaded model ({type(model).__name__}) is not one LoRA Trainer can train: "
                         "load an SD1.5, SD2.x or SDXL checkpoint.")


def forge_load(services: WebUIServices) -> Any:
    """The model Forge's next generation would use, loaded the way a generation loads it (the caller holds
    the WebUI's queue lock): before its first generation Forge holds only a placeholder
    (`FakeInitialModel`), and a checkpoint or "Diffusion in Low Bits" choice made since the last
    generation is applied only when the next one starts."""
    if services.load_model is None:
        raise ModelLoadError("Forge has not loaded a checkpoint yet: generate one image (or pick a checkpoint "
                             "at the top of the page), then start training again.")
    try:
        model = services.load_model()
    except Exception as exc:  # noqa: BLE001 - Forge's own loader error, shown in one line
        raise ModelLoadError(f"Forge could not load the selected checkpoint: {exc}") from exc
    if model is None or not hasattr(model, "forge_objects"):
        raise ModelLoadError("Forge has no checkpoint loaded: pick one at the top of the page, then start "
                             "training again.")
    return model
