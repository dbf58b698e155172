"""The training engine (pure torch): one loop (`engine`), the image LoRA task (`image`), optimizers,
checkpoints and resume, events. The LLM task plugs into the same engine from `lora_trainer.llm`.

Models come in only through `lora_trainer.models.base.ModelAdapter`, so the same loop trains on a
diffusers model, on the WebUI's own LDM modules or on Forge's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.train.engine import TrainResult


def train(cfg: TrainConfig, **kwargs: Any) -> TrainResult:
    """Train an image LoRA (lazy entry point so `import lora_trainer.train` stays light)."""
    from lora_trainer.train.image import train as _train

    return _train(cfg, **kwargs)
