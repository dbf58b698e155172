"""Sub-commands of the `lora-trainer` CLI, one module each (see `lora_trainer.cli`)."""
