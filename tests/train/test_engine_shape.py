"""One training engine: both tasks plug into it, and the step's machinery exists once in the package."""

from __future__ import annotations

import pathlib
import re

from lora_trainer.llm.trainer import LLMTask
from lora_trainer.train.engine import Engine, Task
from lora_trainer.train.image import ImageLoRATask

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "lora_trainer"


def test_both_tasks_are_engine_tasks_and_borrow_nothing():
    for task in (ImageLoRATask, LLMTask):
        assert issubclass(task, Task) and not issubclass(task, Engine)
        own = {k for k, v in vars(task).items() if callable(v)}
        assert not any(getattr(v, "__qualname__", "").startswith("Engine.") for v in vars(task).values()), own
        assert not Task.__abstractmethods__ - set(dir(task)) and not task.__abstractmethods__


def test_the_step_machinery_is_written_once():
    """Optimizer stepping, loss scaling, clipping, resume of the optimizer and the task_type choice
    each appear in exactly one module."""
    patterns = {r"scaler\.step\(": "train/engine.py", r"clip_grad_norm_\(": "train/engine.py",
                r"\.scale\([^)]*\)\.backward\(": "train/engine.py", r"optimizer\.load_state_dict\(": "train/engine.py",
                r"task_type == \"text-generation\"": "tasks.py", r"GradScaler\(": "train/engine.py"}
    for pattern, home in patterns.items():
        found = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                       if re.search(pattern, p.read_text(encoding="utf-8")))
        assert found == [home], (pattern, found)
