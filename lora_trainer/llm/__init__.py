"""Causal-LM LoRA via PEFT (`task_type: text-generation`). Heavy imports stay inside the functions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.train.engine import TrainResult


def train_llm(cfg: TrainConfig, **kwargs: Any) -> TrainResult:
    """Train an LLM LoRA (see `lora_trainer.llm.trainer.train_llm`)."""
    from lora_trainer.llm.trainer import train_llm as _train_llm

    return _train_llm(cfg, **kwargs)


def plan_llm(cfg: TrainConfig) -> dict[str, Any]:
    """Dry-run plan for an LLM config (reads data, loads only the tokenizer)."""
    from lora_trainer.llm.trainer import plan_llm as _plan_llm

    return _plan_llm(cfg)
