"""BLIP and other image-to-text models that transformers loads with AutoProcessor + a generate()
model (BLIP, BLIP-2, GIT-style Vision2Seq / ImageTextToText classes). transformers is imported
only in `load()`, so the WebUI (transformers 4.30) and the app (transformers 5) both work.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from lora_trainer.caption.base import pick_device, to_rgb
from lora_trainer.caption.models import ModelFiles, resolve_model
from lora_trainer.errors import ModelLoadError, UserError
from lora_trainer.events import StopFlag

BLIP_FILES = ModelFiles(
    label="BLIP captioner",
    default_id="Salesforce/blip-image-captioning-base",
    required=(("config.json",),
              ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
               "pytorch_model.bin.index.json"),
              ("preprocessor_config.json", "processor_config.json"),
              ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model")),
    download_patterns=("*.json", "*.txt", "*.model", "*.safetensors"),
)


def _model_class(model_type: str) -> Any:
    """BLIP's own class when it is BLIP, else the auto class this transformers version has."""
    import transformers

    if model_type == "blip":
        return transformers.BlipForConditionalGeneration
    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        if hasattr(transformers, name):
            return getattr(transformers, name)
    raise ModelLoadError(f"this transformers {transformers.__version__} cannot load '{model_type}' image-to-text models")


class BlipCaptioner:
    name = "blip"
    prose = False

    def __init__(self, model: str | None = None, *, device: str = "auto", batch_size: int = 4,
                 prompt: str = "", max_length: int = 40, min_length: int = 5, num_beams: int = 3,
                 local_only: bool = False):
        if batch_size < 1 or num_beams < 1 or max_length < 1 or not 0 <= min_length <= max_length:
            raise UserError("BLIP options: batch size, beams and max length must be ≥ 1 and "
                            f"0 ≤ min length ≤ max length (got {batch_size}, {num_beams}, {min_length}..{max_length})")
        self.model_dir = resolve_model(model, BLIP_FILES, local_only)
        self.device = device
        self.batch_size = batch_size
        self.prompt = prompt.strip()
        self.max_length, self.min_length, self.num_beams = max_length, min_length, num_beams
        self._model: Any = None
        self._processor: Any = None
        self._dtype: Any = None

    def load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoConfig, AutoProcessor

        device = pick_device(self.device)
        try:
            config = AutoConfig.from_pretrained(self.model_dir)
            self._processor = AutoProcessor.from_pretrained(self.model_dir)
            self._dtype = torch.float16 if device.startswith("cuda") else torch.float32
            model = _model_class(config.model_type).from_pretrained(self.model_dir)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"cannot load the captioning model in '{self.model_dir}': {exc}") from exc
        self._model = model.to(device=device, dtype=self._dtype).eval()
        self._device = device

    def caption(self, images: list[Image.Image], stop: StopFlag | None = None) -> list[str]:
        import torch

        self.load()
        rgb = [to_rgb(im) for im in images]
        kwargs: dict[str, Any] = {"images": rgb, "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(rgb)
        inputs = self._processor(**kwargs)
        inputs = {k: (v.to(self._device, self._dtype) if v.is_floating_point() else v.to(self._device))
                  for k, v in inputs.items() if hasattr(v, "to")}
        with torch.inference_mode():
            out = self._model.generate(**inputs, max_new_tokens=self.max_length, min_new_tokens=self.min_length,
                                       num_beams=self.num_beams, do_sample=False)
        texts = self._processor.batch_decode(out, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def close(self) -> None:
        self._model = self._processor = None
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
