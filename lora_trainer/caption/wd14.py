"""WD14-style taggers (SmilingWolf layout) via onnxruntime: `model.onnx` + `selected_tags.csv`.

Input: NHWC float32, BGR, 0–255, the image padded to a white square and resized to the model's
size (448 for the v2/v3 taggers, read from the model).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from lora_trainer.caption.base import to_rgb
from lora_trainer.caption.models import ModelFiles, resolve_model
from lora_trainer.caption.tagging import TagTable, read_tag_table, select_tags
from lora_trainer.errors import ModelLoadError, UserError
from lora_trainer.events import StopFlag

WD14_FILES = ModelFiles(
    label="WD14 tagger",
    default_id="SmilingWolf/wd-v1-4-convnext-tagger-v2",
    required=(("model.onnx",), ("selected_tags.csv",)),
    download_patterns=("model.onnx", "selected_tags.csv"),
)


def _tag_list(value: str | Iterable[str] | None) -> list[str]:
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [t.strip() for t in items if t.strip()]


def prepare(image: Image.Image, size: int) -> np.ndarray:
    """One image as the tagger wants it: white-padded square, size×size, BGR float32 0–255."""
    image = to_rgb(image)
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


class WD14Tagger:
    name = "wd14"
    prose = False

    def __init__(self, model: str | None = None, *, device: str = "auto", batch_size: int = 4,
                 general_threshold: float = 0.35, character_threshold: float = 0.85,
                 include_ratings: bool = False, exclude_tags: str | Iterable[str] | None = None,
                 always_first_tags: str | Iterable[str] | None = None, underscores_to_spaces: bool = True,
                 max_tags: int = 0, local_only: bool = False):
        for label, value in (("general threshold", general_threshold), ("character threshold", character_threshold)):
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{label} {value} is outside 0..1")
        if batch_size < 1:
            raise UserError(f"batch size {batch_size} must be at least 1")
        self.model_dir = resolve_model(model, WD14_FILES, local_only)
        self.device = device
        self.batch_size = batch_size
        self.options = dict(general_threshold=general_threshold, character_threshold=character_threshold,
                            include_ratings=include_ratings, exclude=_tag_list(exclude_tags),
                            always_first=_tag_list(always_first_tags),
                            underscores_to_spaces=underscores_to_spaces, max_tags=max_tags)
        self.table: TagTable = read_tag_table(self.model_dir / "selected_tags.csv")
        self._session = None
        self._input = ""
        self._size = 448
        self._fixed_batch = False

    def load(self) -> None:
        if self._session is not None:
            return
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise UserError("the WD14 tagger needs onnxruntime: pip install onnxruntime "
                            "(onnxruntime-gpu for CUDA)") from exc
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if self.device != "cpu" and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        elif self.device.startswith("cuda"):
            raise UserError("--device cuda: this onnxruntime has no CUDA provider; install onnxruntime-gpu "
                            "or use --device cpu")
        path = Path(self.model_dir) / "model.onnx"
        try:
            self._session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # noqa: BLE001 - a broken/partial download is the usual cause
            raise ModelLoadError(f"{path} cannot be loaded by onnxruntime ({exc}); download it again") from exc
        meta = self._session.get_inputs()[0]
        self._input = meta.name
        shape = meta.shape
        if len(shape) != 4 or shape[3] != 3:
            raise ModelLoadError(f"{path}: input shape {shape} is not NHWC with 3 channels (not a WD14 tagger?)")
        self._size = shape[1] if isinstance(shape[1], int) else 448
        self._fixed_batch = isinstance(shape[0], int)

    def scores(self, images: list[Image.Image]) -> np.ndarray:
        """Raw probabilities, one row per image."""
        self.load()
        batch = np.stack([prepare(im, self._size) for im in images])
        if self._fixed_batch:  # models exported with batch 1
            rows = [self._session.run(None, {self._input: batch[i:i + 1]})[0] for i in range(len(batch))]
            return np.concatenate(rows)
        return self._session.run(None, {self._input: batch})[0]

    def caption(self, images: list[Image.Image], stop: StopFlag | None = None) -> list[str]:
        return [", ".join(select_tags(row, self.table, **self.options)) for row in self.scores(images)]

    def close(self) -> None:
        self._session = None
