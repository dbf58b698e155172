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


INIT_STD = 0.3  # at the usual 0.02 a tiny random model says the same words whatever the image


def word_bpe_files(folder: Path, specials: list[str]) -> tuple[Path, Path]:
    """vocab.json + merges.txt of a byte-level BPE whose only pieces are whole words (with and
    without the leading-space marker Ġ): a random model can then only say words, never bytes."""
    import json

    vocab = {tok: i for i, tok in enumerate([*specials, *WORDS, *(f"\u0120{w}" for w in WORDS)])}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder / "vocab.json", folder / "merges.txt"


@pytest.fixture(scope="session")
def florence2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Florence2ForConditionalGeneration (DaViT vision tower + BART) and its processor,
    saved as the converted florence-community checkpoints are. 64 px in, 2×2 feature map: 5 image tokens."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Florence2ForConditionalGeneration"):
        pytest.skip(f"transformers {transformers.__version__} has no native Florence-2 (needs 4.56)")
    import torch
    from transformers import BartTokenizer, CLIPImageProcessor, Florence2Config, Florence2Processor

    folder = tmp_path_factory.mktemp("tiny_florence2")
    vocab, merges = word_bpe_files(folder, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizer = BartTokenizer(str(vocab), str(merges), extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False,
                                         crop_size={"height": 64, "width": 64}, image_seq_length=5)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    text = dict(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                forced_eos_token_id=tokenizer.eos_token_id, init_std=INIT_STD)
    vision = dict(depths=[1, 1, 1, 1], embed_dim=[8, 16, 16, 32], num_heads=[1, 2, 2, 2], num_groups=[1, 2, 2, 2],
                  window_size=2, projection_dim=32, max_position_embeddings=8, max_temporal_embeddings=4,
                  drop_path_rate=0.0, initializer_range=INIT_STD)
    torch.manual_seed(0)
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)
    transformers.Florence2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


LLAVA_TEMPLATE = ("{% for m in messages %}{{ m['role'] | upper }}: {% for c in m['content'] %}"
                  "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n"
                  "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


@pytest.fixture(scope="session")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LlavaForConditionalGeneration (CLIP vision tower + Llama) with a chat template: what
    `--captioner vlm` loads through AutoModelForImageTextToText. 32 px in, 4×4 patches: 16 image tokens."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "AutoModelForImageTextToText"):
        pytest.skip(f"transformers {transformers.__version__} has no AutoModelForImageTextToText (needs 4.46)")
    import torch
    from transformers import CLIPImageProcessor, GPT2Tokenizer, LlavaConfig, LlavaProcessor

    folder = tmp_path_factory.mktemp("tiny_llava")
    vocab, merges = word_bpe_files(folder, ["<|endoftext|>", "<unk>"])
    tokenizer = GPT2Tokenizer(str(vocab), str(merges), unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                  num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.eos_token_id, initializer_range=INIT_STD)
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=16,
                         initializer_range=INIT_STD)
    transformers.LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


IDEFICS3_TEMPLATE = ("{% for m in messages %}{{ m['role'] | capitalize }}:{% for c in m['content'] %}"
                     "{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}{% endfor %}"
                     "<end_of_utterance>\\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")


@pytest.fixture(scope="session")
def idefics3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Idefics3ForConditionalGeneration (the SmolVLM family): images are split into 32 px
    tiles plus a global view, so images of other shapes give prompts of other lengths and a batch
    really pads (4 image tokens per tile)."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "AutoModelForImageTextToText"):
        pytest.skip(f"transformers {transformers.__version__} has no AutoModelForImageTextToText (needs 4.46)")
    import torch
    from transformers import GPT2Tokenizer, Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    folder = tmp_path_factory.mktemp("tiny_idefics3")
    vocab, merges = word_bpe_files(folder, ["<|endoftext|>", "<unk>"])
    tokenizer = GPT2Tokenizer(str(vocab), str(merges), unk_token="<unk>")
    tiles = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer.add_special_tokens({"additional_special_tokens": [
        "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *tiles]})
    image_processor = Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": 64},
                                             max_image_size={"longest_edge": 32})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=IDEFICS3_TEMPLATE)
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_utterance>"),
                pad_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id, initializer_range=INIT_STD)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8, initializer_range=INIT_STD)
    torch.manual_seed(0)
    config = Idefics3Config(text_config=text, vision_config=vision, scale_factor=2,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    transformers.Idefics3ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
