"""The host-model guard is `lora_trainer.models.snapshot` (one snapshot/restore for every adapter);
these names stay importable from here for the WebUI code and tests that use them."""

from lora_trainer.models.snapshot import ModelSnapshot, state_dict_hash

__all__ = ["ModelSnapshot", "state_dict_hash"]
