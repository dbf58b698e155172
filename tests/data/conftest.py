"""Small datasets made with PIL in tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

SEED_CONFIG = """\
train_data_dir: ./data/style_train
metadata_path: ./data/style_train/metadata.csv
base_model: ./models/Stable-diffusion/v1-5-pruned.safetensors
lora_rank: 8
lora_alpha: 8
lora_dropout: 0.1
batch_size: 4
epochs: 10
learning_rate: 2e-4
gradient_accumulation_steps: 2
output_dir: ./output/my_style_lora
save_steps: 100
"""


def make_image(path: Path, size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 80, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    # a left/right asymmetric mark so flips are visible in pixels
    for x in range(size[0] // 4):
        for y in range(size[1]):
            image.putpixel((x, y), (0, 0, 0))
    image.save(path)
    return path


@pytest.fixture
def seed_project(tmp_path: Path) -> Path:
    """The DESIGN.md seed config next to the folders it names (3 images + metadata.csv)."""
    data = tmp_path / "data" / "style_train"
    for i in range(3):
        make_image(data / f"img{i}.png", (96, 64), (40 * i, 100, 150))
    (data / "metadata.csv").write_text("filename,prompt\nimg0.png,a red house\nimg1.png,\"a cat, sitting\"\n"
                                       "img2.png,style painting\n", encoding="utf-8")
    model = tmp_path / "models" / "Stable-diffusion" / "v1-5-pruned.safetensors"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"\x00" * 16)
    (tmp_path / "seed.yaml").write_text(SEED_CONFIG, encoding="utf-8")
    return tmp_path
