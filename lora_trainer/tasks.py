"""The one place a run's `task_type` picks its trainer: image LoRA or LLM LoRA.

Why a module of its own: the image engine lives in `train/`, the LLM task in `llm/` (above it in
the layer order), so the choice between them can sit in neither. The CLI, the WebUI/app runs and
the dry-run plan all come through here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lora_trainer.events import EventSink, StopFlag, null_sink

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.data import Plan
    from lora_trainer.models.base import ModelAdapter
    from lora_trainer.train.engine import TrainResult

TASK_TYPES = ("text-to-image", "text-generation")


def train(cfg: TrainConfig | str | os.PathLike[str] | Mapping[str, Any], *, adapter: ModelAdapter | None = None,
          emit: EventSink = null_sink, stop: StopFlag | None = None) -> TrainResult:
    """Run the training `cfg` describes (a TrainConfig, a dict or a YAML path)."""
    from lora_trainer.train.engine import ensure_config

    cfg = ensure_config(cfg)
    if cfg.task_type == "text-generation":
        from lora_trainer.llm.trainer import train_llm

        return train_llm(cfg, emit=emit, stop=stop)
    from lora_trainer.train.image import train as train_image

    return train_image(cfg, adapter=adapter, emit=emit, stop=stop)


def plan(cfg: TrainConfig) -> tuple[Plan | dict[str, Any], list[tuple[str, str]]]:
    """Dry run: (the plan, skipped files) without loading the model."""
    if cfg.task_type == "text-generation":
        from lora_trainer.llm.trainer import plan_llm

        return plan_llm(cfg), []
    from lora_trainer.train.image import prepare_plan

    index, _, image_plan = prepare_plan(cfg)
    if image_plan.arch in ("flux-dev", "flux-schnell", "chroma"):
        from lora_trainer.models.flux_memory import flux_plan_memory
        from lora_trainer.train.network_setup import network_spec

        image_plan.memory_parts_gb, image_plan.suggestions = flux_plan_memory(cfg, image_plan.arch,
                                                                              network_spec(cfg))
    return image_plan, [(str(p), str(r)) for p, r in index.skipped]


def usage_hint(cfg: TrainConfig, output: str) -> str:
    """How to use what a finished run wrote (the CLI prints it)."""
    if cfg.task_type == "text-generation":
        return (f"LoRA adapter written to {output}\nTry it: python -m lora_trainer generate --base {cfg.base_model} "
                f"--adapter {output} \"your prompt\"")
    name = os.path.splitext(os.path.basename(output))[0]
    return f"LoRA written to {output}\nUse it in a prompt as <lora:{name}:0.8>"
