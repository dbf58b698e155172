"""LLM LoRA: the resumable state is safetensors + JSON only, and resuming it unpickles nothing and
ends with the same adapter as an uninterrupted run."""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

from lora_trainer.events import StopFlag
from lora_trainer.llm.trainer import train_llm
from tests.helpers.no_pickle import no_unpickling
from tests.llm.conftest import llm_config

OVER = {"epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2, "lr_scheduler": "cosine",
        "lr_warmup_steps": 2, "learning_rate": 5e-3, "optimizer": "lion"}


def test_llm_state_is_pickle_free_and_resumes_exactly(tiny_llama, counting_data, tmp_path):
    full = train_llm(llm_config(tmp_path / "a", tiny_llama, counting_data[0], **OVER))
    stop = StopFlag()

    def stop_at_5(event):  # a stop asked during a run ends it at a step boundary, before the last step
        if event.type == "progress" and event.data["step"] == 5:
            stop.request("test stop")

    part = train_llm(llm_config(tmp_path / "b", tiny_llama, counting_data[0], **OVER), emit=stop_at_5, stop=stop)
    assert part.stopped and 5 <= part.steps < 12
    assert sorted(os.listdir(part.state_path)) == ["lora.safetensors", "optimizer.json", "optimizer.safetensors",
                                                   "rng.safetensors", "trainer_state.json"]
    with no_unpickling():
        resumed = train_llm(llm_config(tmp_path / "b", tiny_llama, counting_data[0], resume_from_checkpoint="latest",
                                       **OVER))
    assert resumed.steps == full.steps == 12
    a = load_file(f"{full.output_path}/adapter_model.safetensors")
    b = load_file(f"{resumed.output_path}/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
