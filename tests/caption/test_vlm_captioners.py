"""Prose captioners on tiny random-weight models of the real classes: Florence-2
(Florence2ForConditionalGeneration) and a generic image-text-to-text model (LLaVA through
AutoModelForImageTextToText). Dataset-level behaviour (modes, formats, trigger, corrupt files) is
in test_vlm_caption_run.py."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from lora_trainer.caption import make_captioner, support
from lora_trainer.caption.run import compose
from lora_trainer.caption.vlm import FLORENCE_TASKS, hub_offline
from lora_trainer.errors import ModelLoadError, UserError

from .conftest import noise, solid

IMAGES = [noise(1), noise(2), solid((200, 10, 10), (40, 70))]


def test_florence2_batch_equals_one_by_one_and_differs_per_image(florence2_dir):
    captioner = make_captioner("florence2", model=str(florence2_dir), device="cpu", batch_size=3,
                               detail="short", max_length=6, min_length=3, num_beams=1)
    assert captioner.prompt == "<CAPTION>" and captioner.prose
    batch = captioner.caption(IMAGES)
    assert len(batch) == 3 and all(batch) and len(set(batch)) == 3  # each image its own caption
    assert batch == [captioner.caption([im])[0] for im in IMAGES]
    assert captioner.caption(IMAGES) == batch  # deterministic
    captioner.close()


def test_florence2_detail_levels_are_its_task_tokens(florence2_dir):
    for detail, task in FLORENCE_TASKS.items():
        captioner = make_captioner("florence2", model=str(florence2_dir), detail=detail)
        assert captioner.prompt == task and captioner.num_beams == 3
    assert make_captioner("florence2", model=str(florence2_dir), detail="more-detailed").max_length == 384
    with pytest.raises(UserError, match="detail 'huge' is unknown"):
        make_captioner("florence2", model=str(florence2_dir), detail="huge")


def test_vlm_llava_batch_pads_left_and_equals_one_by_one(llava_dir):
    captioner = make_captioner("vlm", model=str(llava_dir), device="cpu", batch_size=3,
                               detail="detailed", max_length=6, min_length=3)
    assert captioner.prompt == "Describe this image in detail." and captioner.num_beams == 1
    batch = captioner.caption(IMAGES)
    assert len(batch) == 3 and all(batch) and len(set(batch)) == 3
    assert captioner._processor.tokenizer.padding_side == "left"
    assert batch == [captioner.caption([im])[0] for im in IMAGES]
    assert "describe" not in " ".join(batch).lower()  # only the new tokens, not the prompt


def test_vlm_batch_of_unequal_prompts_pads_left(idefics3_dir):
    """Idefics3 (SmolVLM) tiles each image: a wide, a square and a tall image give prompts of
    different lengths, so the batch is padded; captions must equal those of one image at a time."""
    images = [noise(1, (64, 20)), noise(2, (64, 64)), solid((200, 10, 10), (30, 64))]
    captioner = make_captioner("vlm", model=str(idefics3_dir), device="cpu", batch_size=3, max_length=6,
                               min_length=3)
    captioner.load()
    lengths = captioner._inputs(images)["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) > 1  # the batch really pads
    batch = captioner.caption(images)
    assert all(batch) and batch == [captioner.caption([im])[0] for im in images]


def test_vlm_custom_prompt_and_options(llava_dir):
    captioner = make_captioner("vlm", model=str(llava_dir), prompt="  What is in the picture?  ", detail="short")
    assert captioner.prompt == "What is in the picture?" and captioner.max_length == 48
    with pytest.raises(UserError, match="needs --model"):
        make_captioner("vlm")
    with pytest.raises(UserError, match="min tokens"):
        make_captioner("vlm", model=str(llava_dir), max_length=4, min_length=9)
    with pytest.raises(UserError, match="fp16 needs a GPU"):
        make_captioner("vlm", model=str(llava_dir), device="cpu", precision="fp16").load()


def test_missing_files_are_named_with_the_folder(tmp_path, florence2_dir):
    folder = tmp_path / "florence"
    folder.mkdir()
    shutil.copy(florence2_dir / "config.json", folder)
    with pytest.raises(ModelLoadError) as info:
        make_captioner("florence2", model=str(folder))
    message = str(info.value)
    assert str(folder) in message and "model.safetensors (or" in message and "processor_config.json" in message
    assert "florence-community/Florence-2-base" in message
    with pytest.raises(ModelLoadError, match="no such folder"):
        make_captioner("vlm", model=str(tmp_path / "nowhere"))


def test_hub_ids_come_from_the_cache_only(tmp_path, monkeypatch):
    """No download at run time, even when the environment allows one."""
    if support.unavailable_reason("florence2"):
        pytest.skip(support.unavailable_reason("florence2"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    use_hub_cache(monkeypatch, tmp_path / "hf" / "hub")
    with pytest.raises(ModelLoadError) as info:
        make_captioner("florence2")
    message = str(info.value)
    assert "florence-community/Florence-2-base" in message and "offline" in message and "--model" in message


def use_hub_cache(monkeypatch, cache) -> None:
    """huggingface_hub reads HF_HUB_CACHE once, at import: set the environment and its constant."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))


def fake_hub_cache(root, repo_id: str, folder) -> None:
    """The layout huggingface_hub keeps: models--org--name/{refs/main, snapshots/<rev>/files}."""
    entry = root / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, entry / "snapshots" / "0123456789abcdef")
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text("0123456789abcdef")


def test_folders_and_hub_cache_load_without_network(monkeypatch, tmp_path, florence2_dir, llava_dir):
    import socket

    def refuse(*_args, **_kwargs):
        raise AssertionError("a captioner tried to open a network connection")

    cache = tmp_path / "hub"
    fake_hub_cache(cache, "tiny/florence2", florence2_dir)
    fake_hub_cache(cache, "tiny/llava", llava_dir)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    use_hub_cache(monkeypatch, cache)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name, model in (("florence2", str(florence2_dir)), ("vlm", str(llava_dir)),
                        ("florence2", "tiny/florence2"), ("vlm", "tiny/llava")):
        captioner = make_captioner(name, model=model, device="cpu", max_length=4, min_length=2, num_beams=1)
        assert captioner.caption([noise(4)])[0]
    assert str(captioner.model_dir).startswith(str(cache))


def test_loading_runs_offline_and_restores_the_environment(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with hub_offline():
        assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "TRANSFORMERS_OFFLINE" not in os.environ


def test_remote_code_florence_is_refused_with_the_converted_name(tmp_path, florence2_dir):
    folder = tmp_path / "original"
    shutil.copytree(florence2_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vision_config"]["model_type"] = "davit"
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="trust_remote_code.*florence-community/Florence-2-base"):
        make_captioner("florence2", model=str(folder))


def test_unsupported_model_type_says_transformers_is_too_old(tmp_path, llava_dir):
    folder = tmp_path / "future"
    shutil.copytree(llava_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llava_from_the_future"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="cannot load the model in .* newer transformers"):
        make_captioner("vlm", model=str(folder), device="cpu").load()


@pytest.mark.parametrize(("version", "florence", "vlm"), [
    ("4.30.2", "≥ 4.56.0", "≥ 4.46.0"),   # A1111 1.10
    ("4.46.1", "≥ 4.56.0", None),         # Forge
    ("4.56.0", None, None),
    ("5.0.0.dev0", None, None),
])
def test_transformers_version_gates(monkeypatch, version, florence, vlm):
    monkeypatch.setattr(support, "installed_version", lambda package: version)
    for name, expected in (("florence2", florence), ("vlm", vlm)):
        reason = support.unavailable_reason(name, in_webui=True)
        assert (reason is None) if expected is None else (expected in reason and version in reason)
    monkeypatch.setattr(support, "installed_version", lambda package: "4.30.2")
    with pytest.raises(UserError, match="florence2 needs transformers ≥ 4.56.0"):
        make_captioner("florence2", model="anything")
    assert "the WebUI has 4.30.2" in support.unavailable_reason("vlm", in_webui=True)


def test_compose_prose_keeps_sentences_whole():
    text = "A cat, white and small, sits on a table."
    assert compose(None, text, "overwrite", "ohwx", prose=True) == "ohwx, " + text
    assert compose("ohwx, " + text, text, "append", "ohwx", prose=True) == "ohwx, " + text  # idempotent
    assert compose("hand written", text, "append", "ohwx", prose=True) == "ohwx, hand written, " + text
    assert compose("Old one.", "New one.", "append", "", prose=True) == "Old one. New one."
    assert compose("cat, cat", "A cat, a cat.", "overwrite", "", prose=True) == "A cat, a cat."  # no dedupe
    assert compose(None, "", "overwrite", "ohwx", prose=True) == ""


def test_prose_captioning_on_the_gpu_in_half_precision(florence2_dir, llava_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    for name, folder in (("florence2", florence2_dir), ("vlm", llava_dir)):
        for precision in ("auto", "fp16"):
            captioner = make_captioner(name, model=str(folder), device="auto", batch_size=3, precision=precision,
                                       max_length=6, min_length=3, num_beams=1)
            texts = captioner.caption(IMAGES)
            dtype = next(captioner._model.parameters()).dtype
            assert captioner._device == "cuda" and dtype in (torch.float16, torch.bfloat16)
            assert all(texts) and len(texts) == 3
            captioner.close()


def test_a_model_without_chat_template_is_refused_before_its_weights_load(tmp_path, llava_dir):
    folder = tmp_path / "base_model"
    shutil.copytree(llava_dir, folder)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    (folder / "model.safetensors").write_bytes(b"not read")  # the check comes first
    with pytest.raises(ModelLoadError, match="no chat template"):
        make_captioner("vlm", model=str(folder), device="cpu").load()
