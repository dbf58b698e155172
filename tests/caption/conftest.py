"""Tiny real models for the captioning tests, built once per session with the real classes:
a BLIP (transformers BlipForConditionalGeneration + BlipProcessor + BERT tokenizer) saved with
save_pretrained, and a WD14-shaped ONNX tagger exported with torch.onnx.export."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WORDS = ["a", "photo", "of", "cat", "dog", "red", "blue", "sitting", "on", "the", "table", "with", "grass",
         "sky", "tree", "small", "large", "white", "black", "green", "yellow", "room", "window", "chair",
         "flower", "girl", "boy", "man", "woman", "bird", "car", "house", "road"]

# (name, category, bias, weight on mean R, weight on mean B) -> logit = bias + wr*(r-.5) + wb*(b-.5)
WD14_TAGS = [
    ("general", 9, 2.0, 0, 0), ("sensitive", 9, 0.0, 0, 0), ("questionable", 9, -1.0, 0, 0),
    ("explicit", 9, -2.0, 0, 0),
    ("1girl", 0, 3.0, 0, 0), ("long_hair", 0, 1.0, 0, 0), ("^_^", 0, 0.0, 0, 0),
    ("red_theme", 0, 0.0, 10.0, 0), ("blue_theme", 0, 0.0, 0, 10.0), ("rare_tag", 0, -2.0, 0, 0),
    ("hatsune_miku", 4, 0.0, 0, 10.0), ("weak_character", 4, 1.0, 0, 0),
]


def solid(color: tuple[int, int, int], size: tuple[int, int] = (64, 64)) -> Image.Image:
    return Image.new("RGB", size, color)


def noise(seed: int, size: tuple[int, int] = (96, 96)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # blocky: a stable perceptual hash
    return Image.fromarray(small).resize(size, Image.Resampling.NEAREST)


@pytest.fixture(scope="session")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    folder = tmp_path_factory.mktemp("tiny_blip")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    try:
        tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})  # transformers 5
    except TypeError:  # transformers 4 wants a vocab file
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.sep_token_id,
                sep_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class _TinyTagger:
    """Built lazily so importing this file does not import torch."""

    @staticmethod
    def build():
        import torch

        class Tagger(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 3, kernel_size=4, stride=4, bias=False)  # mean of BGR blocks
                self.pool = torch.nn.AdaptiveAvgPool2d(1)
                self.head = torch.nn.Linear(3, len(WD14_TAGS))
                with torch.no_grad():
                    self.conv.weight.zero_()
                    for c in range(3):
                        self.conv.weight[c, c] = 1.0 / (16 * 255.0)
                    self.head.weight.zero_()
                    for i, (_, _, bias, wr, wb) in enumerate(WD14_TAGS):
                        self.head.weight[i, 2] = wr  # channel 2 of BGR is red
                        self.head.weight[i, 0] = wb
                        self.head.bias[i] = bias - 0.5 * (wr + wb)

            def forward(self, x):  # x: N,H,W,C (BGR 0..255) like the SmilingWolf taggers
                return torch.sigmoid(self.head(self.pool(self.conv(x.permute(0, 3, 1, 2))).flatten(1)))

        return Tagger().eval()


@pytest.fixture(scope="session")
def wd14_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import warnings

    import torch

    pytest.importorskip("onnx")  # the exporter needs it; the A1111 env has neither
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("tiny_wd14")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_TinyTagger.build(), torch.zeros(1, 448, 448, 3), str(folder / "model.onnx"),
                          input_names=["input_1:0"], output_names=["predictions_sigmoid"],
                          dynamic_axes={"input_1:0": {0: "batch"}, "predictions_sigmoid": {0: "batch"}},
                          dynamo=False)
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for i, (name, category, *_rest) in enumerate(WD14_TAGS):
            writer.writerow([1000 + i, name, category, 100 - i])
    return folder
