"""Captioners on tiny real models: BLIP through transformers, WD14 through onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from lora_trainer.caption import make_captioner
from lora_trainer.caption.tagging import select_tags, spell
from lora_trainer.caption.wd14 import prepare
from lora_trainer.errors import ModelLoadError, UserError

from .conftest import noise, solid


def test_blip_captions_a_batch_from_a_saved_folder(blip_dir):
    captioner = make_captioner("blip", model=str(blip_dir), device="cpu", batch_size=3,
                               max_length=6, min_length=3, num_beams=1)
    images = [noise(1), noise(2), solid((200, 10, 10), (40, 70))]
    first = captioner.caption(images)
    assert len(first) == 3 and all(isinstance(t, str) and t for t in first)
    assert captioner.caption(images) == first  # greedy decoding is deterministic
    beams = make_captioner("blip", model=str(blip_dir), device="cpu", max_length=6, min_length=2, num_beams=2)
    assert all(beams.caption(images[:2]))
    captioner.close()


def test_blip_prompt_prefix_starts_the_caption(blip_dir):
    captioner = make_captioner("blip", model=str(blip_dir), device="cpu", prompt="a photo of",
                               max_length=4, min_length=1, num_beams=1)
    (text,) = captioner.caption([noise(3)])
    assert text.startswith("a photo of")


def test_wd14_tags_order_thresholds_and_spelling(wd14_dir):
    tagger = make_captioner("wd14", model=str(wd14_dir), device="cpu")
    red, blue = solid((255, 0, 0)), solid((0, 0, 255))
    red_tags, blue_tags = (t.split(", ") for t in tagger.caption([red, blue]))
    # by confidence: red_theme 0.993 > 1girl 0.95 > long hair 0.73 > weak char (0.73, below 0.85: out) > ^_^ 0.5
    assert red_tags == ["red theme", "1girl", "long hair", "^_^"]
    assert blue_tags[:2] == ["blue theme", "hatsune miku"] and "red theme" not in blue_tags
    assert not {"general", "sensitive", "rare tag", "weak character"} & set(red_tags + blue_tags)


def test_wd14_options(wd14_dir):
    red = solid((255, 0, 0), (30, 90))  # not square: padded with white before the model sees it
    tagger = make_captioner("wd14", model=str(wd14_dir / "model.onnx"), device="cpu", include_ratings=True,
                            exclude_tags="long_hair", always_first_tags="^_^, 1girl",
                            underscores_to_spaces=False, general_threshold=0.4)
    tags = tagger.caption([red])[0].split(", ")
    assert tags[:3] == ["^_^", "1girl", "general"]
    assert "long_hair" not in tags and "long hair" not in tags
    with pytest.raises(UserError, match="general threshold"):
        make_captioner("wd14", model=str(wd14_dir), general_threshold=1.5)


def test_wd14_input_is_bgr_nhwc_on_white():
    array = prepare(solid((255, 0, 0), (20, 40)), 448)
    assert array.shape == (448, 448, 3) and array.dtype == np.float32
    assert tuple(array[224, 224]) == (0.0, 0.0, 255.0)  # red, as BGR
    assert tuple(array[224, 2]) == (255.0, 255.0, 255.0)  # padding


def test_tag_spelling_keeps_kaomoji():
    assert spell("long_hair") == "long hair"
    assert [spell(t) for t in ("^_^", "o_o", ">_<", "x_x", "3_3", "(o)_(o)")] == ["^_^", "o_o", ">_<", "x_x",
                                                                                "3_3", "(o)_(o)"]


def test_select_tags_rejects_mismatched_csv(wd14_dir):
    tagger = make_captioner("wd14", model=str(wd14_dir))
    with pytest.raises(ModelLoadError, match="different models"):
        select_tags(np.zeros(3), tagger.table)


def test_missing_wd14_files_say_what_to_put_where(tmp_path, wd14_dir):
    folder = tmp_path / "tagger"
    folder.mkdir()
    (folder / "model.onnx").write_bytes((wd14_dir / "model.onnx").read_bytes())
    with pytest.raises(ModelLoadError) as info:
        make_captioner("wd14", model=str(folder))
    message = str(info.value)
    assert str(folder) in message and "missing selected_tags.csv" in message and "model.onnx" in message
    with pytest.raises(ModelLoadError, match="no such folder") as info:
        make_captioner("wd14", model=str(tmp_path / "nowhere"))
    assert "model.onnx, selected_tags.csv" in str(info.value)


def test_missing_blip_files_are_named(tmp_path, blip_dir):
    folder = tmp_path / "blip"
    folder.mkdir()
    (folder / "config.json").write_text((blip_dir / "config.json").read_text())
    with pytest.raises(ModelLoadError) as info:
        make_captioner("blip", model=str(folder))
    message = str(info.value)
    assert "model.safetensors (or pytorch_model.bin" in message and "preprocessor_config.json" in message
    assert "config.json" not in message.split("missing")[1].split(".")[0]


def test_hub_id_offline_not_cached_names_the_id(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelLoadError) as info:
        make_captioner("wd14", model="SmilingWolf/wd-v1-4-moat-tagger-v2")
    message = str(info.value)
    assert "SmilingWolf/wd-v1-4-moat-tagger-v2" in message and "hf download" in message
    assert "selected_tags.csv" in message and "--model" in message


def test_host_captioner_outside_the_webui_is_a_clear_error():
    with pytest.raises(UserError, match="only inside the WebUI"):
        make_captioner("host", model="deepbooru")
    with pytest.raises(UserError, match="unknown"):
        make_captioner("nope")


def test_blip_on_the_gpu_in_half_precision(blip_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    captioner = make_captioner("blip", model=str(blip_dir), device="auto", batch_size=2,
                               max_length=6, min_length=3, num_beams=2)
    texts = captioner.caption([noise(1), noise(2)])
    assert captioner._device == "cuda" and next(captioner._model.parameters()).dtype == torch.float16
    assert all(texts)
    captioner.close()
