"""Natural-language captions from vision-language models: Florence-2 (native transformers class,
≥ 4.56) and any image-text-to-text model that `AutoModelForImageTextToText` loads (≥ 4.46:
LLaVA, Idefics3/SmolVLM, Qwen2-VL, PaliGemma, ...).

Models conditioned on T5 or an LLM (FLUX.1, Chroma) are trained on prose, not tag lists; these
captioners write one paragraph per image at the chosen detail level.

Weights come only from a local folder or the Hugging Face cache: loading runs offline
(`HF_HUB_OFFLINE` set for the duration, `local_files_only=True`) and never runs remote code, so a
checkpoint that needs `trust_remote_code` is refused with the name of a converted one.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from lora_trainer.caption.base import CaptionStopped, pick_device, to_rgb
from lora_trainer.caption.models import ModelFiles, resolve_model
from lora_trainer.caption.support import (
    DETAILS,
    PRECISIONS,
    installed_version,
    unavailable_reason,
    version_tuple,
)
from lora_trainer.errors import ModelLoadError, UserError
from lora_trainer.events import StopFlag

FLORENCE_TASKS = {"short": "<CAPTION>", "detailed": "<DETAILED_CAPTION>", "more-detailed": "<MORE_DETAILED_CAPTION>"}
VLM_PROMPTS = {
    "short": "Describe this image in one short sentence.",
    "detailed": "Describe this image in detail.",
    "more-detailed": "Describe this image in one detailed paragraph: the subject, its appearance and pose, "
                     "the setting, the lighting and the style.",
}
MAX_NEW_TOKENS = {"short": 48, "detailed": 160, "more-detailed": 384}
# processors that take one list of images per prompt rather than one image per prompt
_NESTED_IMAGES = ("Idefics2Processor", "Idefics3Processor", "SmolVLMProcessor", "MllamaProcessor")

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_PROCESSOR = ("preprocessor_config.json", "processor_config.json")
FLORENCE2_FILES = ModelFiles(
    label="Florence-2 captioner",
    default_id="florence-community/Florence-2-base",
    required=(("config.json",), _WEIGHTS, _PROCESSOR, ("tokenizer.json", "vocab.json")),
    download_patterns=("*.json", "*.txt", "*.safetensors"),
)
VLM_FILES = ModelFiles(
    label="vision-language captioner",
    default_id="HuggingFaceTB/SmolVLM-256M-Instruct",
    required=(("config.json",), _WEIGHTS, _PROCESSOR, ("tokenizer.json", "tokenizer.model", "vocab.json")),
    download_patterns=("*.json", "*.jinja", "*.txt", "*.model", "*.safetensors"),
)


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set while loading, restored after (the WebUI and
    other extensions in the same process keep their own setting)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def read_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder / 'config.json'} cannot be read ({exc}); download the model again") from exc


def check_native(folder: Path, config: dict[str, Any], label: str) -> None:
    """Refuse checkpoints whose code lives in the repository (trust_remote_code): this tool never
    runs code downloaded with a model."""
    vision = (config.get("vision_config") or {}).get("model_type")
    text = (config.get("text_config") or {}).get("model_type")
    if vision == "davit" or text == "florence2_language":
        raise ModelLoadError(
            f"{label} in '{folder}' is the original Florence-2 release, which needs its own remote code "
            f"(trust_remote_code). Use a checkpoint converted to the transformers class instead, e.g. "
            f"{FLORENCE2_FILES.default_id} or florence-community/Florence-2-large.")


def pick_dtype(device: str, precision: str) -> Any:
    """CPU: fp32 (bf16 if asked); GPU: bf16 where supported, else fp16, unless told otherwise."""
    import torch

    if precision == "fp32":
        return torch.float32
    if not device.startswith("cuda"):
        if precision == "fp16":
            raise UserError("precision fp16 needs a GPU; on the CPU use fp32 (default) or bf16")
        return torch.bfloat16 if precision == "bf16" else torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float16 if precision == "fp16" else torch.bfloat16


def _dtype_kwarg() -> str:
    """transformers 4.56 renamed `torch_dtype` to `dtype`."""
    return "dtype" if version_tuple(installed_version("transformers") or "0") >= (4, 56, 0) else "torch_dtype"


def _stop_criteria(stop: StopFlag) -> Any:
    """generate() ends every sequence at the next token once `stop` is requested."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopRequested(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), stop.requested, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StopRequested()])


class VLMCaptioner:
    """Any chat-templated image-text-to-text model; one prompt per detail level, or a custom one."""

    name = "vlm"
    prose = True
    files = VLM_FILES
    default_beams = 1

    def __init__(self, model: str | None = None, *, device: str = "auto", batch_size: int = 4,
                 detail: str = "detailed", prompt: str = "", max_length: int | None = None, min_length: int = 0,
                 num_beams: int | None = None, precision: str = "auto"):
        if detail not in DETAILS:
            raise UserError(f"detail '{detail}' is unknown; use one of {', '.join(DETAILS)}")
        self.max_length = MAX_NEW_TOKENS[detail] if max_length is None else int(max_length)
        self.num_beams = self.default_beams if num_beams is None else int(num_beams)
        if batch_size < 1 or self.num_beams < 1 or self.max_length < 1 or not 0 <= min_length <= self.max_length:
            raise UserError(f"{self.name} options: batch size, beams and max tokens must be ≥ 1 and 0 ≤ min tokens "
                            f"≤ max tokens (got {batch_size}, {self.num_beams}, {min_length}..{self.max_length})")
        if precision not in PRECISIONS:
            raise UserError(f"precision '{precision}' is unknown; use one of {', '.join(PRECISIONS)}")
        reason = unavailable_reason(self.name)
        if reason:
            raise UserError(reason)
        if model is None and self.name == "vlm":
            raise UserError("--captioner vlm needs --model: a folder (or a hub id already in the Hugging Face "
                            f"cache) of an image-text-to-text model, e.g. {VLM_FILES.default_id}")
        self.model_dir = resolve_model(model, self.files, local_only=True)
        check_native(self.model_dir, read_config(self.model_dir), self.files.label)
        self.device, self.batch_size, self.detail = device, batch_size, detail
        self.prompt = prompt.strip() or self.default_prompt(detail)
        self.min_length, self.precision = min_length, precision
        self._model: Any = None
        self._processor: Any = None
        self._device = "cpu"
        self._dtype: Any = None

    @staticmethod
    def default_prompt(detail: str) -> str:
        return VLM_PROMPTS[detail]

    # ---------------------------------------------------------------- loading
    def _model_class(self) -> Any:
        import transformers

        return transformers.AutoModelForImageTextToText

    def load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoProcessor

        device = pick_device(self.device)
        dtype = pick_dtype(device, self.precision)
        version = installed_version("transformers")
        with hub_offline():
            try:
                processor = AutoProcessor.from_pretrained(self.model_dir, local_files_only=True)
                self._check_processor(processor)  # before the (large) weights are read
                model = self._model_class().from_pretrained(self.model_dir, local_files_only=True,
                                                            **{_dtype_kwarg(): dtype})
            except (KeyError, ValueError) as exc:  # unknown model type / no auto-class entry for it
                raise ModelLoadError(
                    f"transformers {version} cannot load the model in '{self.model_dir}' as an image-text-to-text "
                    f"model ({str(exc).splitlines()[0][:200]}); it may need a newer transformers") from exc
            except OSError as exc:
                raise ModelLoadError(f"cannot load the captioning model in '{self.model_dir}': {exc}") from exc
        self._pad_for(processor, model)
        self._processor, self._model = processor, model.to(device).eval()
        self._device, self._dtype = device, dtype

    def _check_processor(self, processor: Any) -> None:
        if not getattr(processor, "chat_template", None):
            raise ModelLoadError(f"the model in '{self.model_dir}' has no chat template (chat_template.json or "
                                 "chat_template.jinja): use an instruction-tuned image-text-to-text model")

    def _pad_for(self, processor: Any, model: Any) -> None:
        """Decoder-only models generate after the prompt, so a batch pads on the left."""
        tokenizer = processor.tokenizer
        if not model.config.is_encoder_decoder:
            tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token

    # ---------------------------------------------------------------- captioning
    def _inputs(self, rgb: list[Image.Image]) -> Any:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.prompt}]}]
        text = self._processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        nested = type(self._processor).__name__ in _NESTED_IMAGES
        images: list[Any] = [[im] for im in rgb] if nested else rgb
        return self._processor(images=images, text=[text] * len(rgb), return_tensors="pt", padding=True)

    def _new_tokens(self, out: Any, inputs: Any) -> Any:
        """Decoder-only output repeats the prompt; keep what was generated."""
        return out if self._model.config.is_encoder_decoder else out[:, inputs["input_ids"].shape[1]:]

    def caption(self, images: list[Image.Image], stop: StopFlag | None = None) -> list[str]:
        import torch

        self.load()
        inputs = self._inputs([to_rgb(im) for im in images])
        inputs = {k: (v.to(self._device, self._dtype) if v.is_floating_point() else v.to(self._device))
                  for k, v in inputs.items() if hasattr(v, "to")}
        generation: dict[str, Any] = {"max_new_tokens": self.max_length, "num_beams": self.num_beams,
                                      "do_sample": False}
        if self.min_length:
            generation["min_new_tokens"] = self.min_length
        if stop is not None:  # a detailed caption on a CPU takes minutes: Stop should not wait for it
            generation["stopping_criteria"] = _stop_criteria(stop)
        with torch.inference_mode():
            out = self._model.generate(**inputs, **generation)
        if stop is not None and stop.requested:
            raise CaptionStopped()
        texts = self._processor.batch_decode(self._new_tokens(out, inputs), skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def close(self) -> None:
        self._model = self._processor = None
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class Florence2Captioner(VLMCaptioner):
    """Florence-2: a task token instead of a chat prompt (<CAPTION>, <DETAILED_CAPTION>,
    <MORE_DETAILED_CAPTION>); an encoder-decoder, so a batch needs no left padding."""

    name = "florence2"
    files = FLORENCE2_FILES
    default_beams = 3  # what the model card uses

    @staticmethod
    def default_prompt(detail: str) -> str:
        return FLORENCE_TASKS[detail]

    def _model_class(self) -> Any:
        import transformers

        return transformers.Florence2ForConditionalGeneration

    def _check_processor(self, processor: Any) -> None:
        pass  # task tokens, no chat template

    def _pad_for(self, processor: Any, model: Any) -> None:
        pass  # encoder-decoder: the prompt goes to the encoder, right padding is right

    def _inputs(self, rgb: list[Image.Image]) -> Any:
        return self._processor(images=rgb, text=[self.prompt] * len(rgb), return_tensors="pt")
