"""Auto-captioning: BLIP-style image-to-text (transformers), WD14 taggers (onnxruntime), prose
captions from vision-language models (Florence-2, any image-text-to-text model) and the WebUI's
own interrogators. Import-light: each captioner imports its library when it loads.

Use `make_captioner(name, **options)` then `caption_dataset(root, captioner, ...)` (run.py).
"""

from __future__ import annotations

from typing import Any

from lora_trainer.caption.base import Captioner
from lora_trainer.errors import UserError

CAPTIONERS = ("blip", "wd14", "florence2", "vlm", "host")


def make_captioner(name: str, **options: Any) -> Captioner:
    """A captioner by name; checks its model files now (cheap) and loads the model on first use."""
    if name == "blip":
        from lora_trainer.caption.blip import BlipCaptioner
        return BlipCaptioner(**options)
    if name == "wd14":
        from lora_trainer.caption.wd14 import WD14Tagger
        return WD14Tagger(**options)
    if name == "florence2":
        from lora_trainer.caption.vlm import Florence2Captioner
        return Florence2Captioner(**options)
    if name == "vlm":
        from lora_trainer.caption.vlm import VLMCaptioner
        return VLMCaptioner(**options)
    if name == "host":
        from lora_trainer.caption.host import HostCaptioner
        return HostCaptioner(**options)
    raise UserError(f"captioner '{name}' is unknown; use one of {', '.join(CAPTIONERS)}")


__all__ = ["CAPTIONERS", "Captioner", "make_captioner"]
