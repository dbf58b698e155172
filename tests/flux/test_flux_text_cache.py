"""Text-encoder outputs cached to disk (`cache_text_encoder_outputs_to_disk`) on FLUX.1: one safetensors
file per caption, reused by the next run (T5 is not called at all), a changed caption or text encoder gets
a new file, and a stopped run resumes bit-exactly from the cached outputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from flux_helpers import tiny_run, write_zqx_dataset
from safetensors.torch import load_file

from lora_trainer.config import load_config
from lora_trainer.data import TextEncoderCache, default_text_cache_dir
from lora_trainer.errors import ConfigError
from lora_trainer.events import Emitter, StopFlag
from lora_trainer.models.flux_adapter import load_flux_adapter
from lora_trainer.train.image import train


@pytest.fixture
def data_dir(tmp_path) -> str:
    return write_zqx_dataset(str(tmp_path / "data"))  # its own: the cache files are written beside it


def _raw(data_dir: str, out: str, **extra) -> dict:
    return tiny_run(data_dir, out, **{"batch_size": 1, "max_train_steps": 4, "cache_text_encoder_outputs": True,
                                      "cache_text_encoder_outputs_to_disk": True, "output_name": "t",
                                      "save_steps": 2, **extra})


def _captions(data_dir: str) -> set[str]:
    out = set()
    for root, _, files in os.walk(data_dir):
        out |= {Path(root, f).read_text(encoding="utf-8").strip() for f in files if f.endswith(".txt")}
    return out


def _t5_run(raw: dict, stop_at: int | None = None, messages: list[str] | None = None):
    """Train on an adapter whose T5 records each call's batch size (status lines into `messages`)."""
    cfg = load_config(raw)
    adapter = load_flux_adapter(cfg)
    calls: list[int] = []
    hook = adapter.parts["text_encoder_2"].register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(int((kwargs.get("input_ids") if "input_ids" in kwargs else args[0])
                                                 .shape[0])), with_kwargs=True)
    stop = StopFlag()

    def sink(event):
        if messages is not None and event.type == "status":
            messages.append(event.data["message"])
        if stop_at and event.type == "progress" and event.data["step"] == stop_at:
            stop.request("test stop")

    try:
        return train(cfg, adapter=adapter, emit=Emitter([sink]), stop=stop), calls
    finally:
        hook.remove()


def _same(a_path: str, b_path: str) -> bool:
    a, b = load_file(a_path), load_file(b_path)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_second_run_reads_the_files_and_never_calls_t5(data_dir, tmp_path):
    first, calls = _t5_run(_raw(data_dir, str(tmp_path / "a")))
    assert sum(calls) == len(_captions(data_dir)) == 2  # each distinct caption encoded once
    folder = default_text_cache_dir(data_dir)
    files = sorted(os.listdir(folder))
    assert len(files) == 2 and all(f.endswith(".safetensors") for f in files)  # no pickle, no temp files
    assert set(load_file(os.path.join(folder, files[0]))) == {"t5", "pooled"}
    said: list[str] = []
    second, calls = _t5_run(_raw(data_dir, str(tmp_path / "b")), messages=said)
    assert calls == []  # T5 is not called at all
    assert f"text-encoder outputs of 2 caption(s): 2 read from {folder}, 0 encoded" in said  # and the user is told
    assert _same(first.output_path, second.output_path)
    # a changed caption: only that one is encoded, into a new file
    caption = next(os.path.join(r, f) for r, _, fs in os.walk(data_dir) for f in fs if f == "0000.txt")
    with open(caption, "w", encoding="utf-8") as f:
        f.write("zqx checker star, dim")
    _, calls = _t5_run(_raw(data_dir, str(tmp_path / "c")))
    assert calls == [1] and len(os.listdir(folder)) == 3


def test_a_stopped_run_resumes_bit_exactly_from_the_cached_outputs(data_dir, tmp_path):
    full, _ = _t5_run(_raw(data_dir, str(tmp_path / "full")))
    part, _ = _t5_run(_raw(data_dir, str(tmp_path / "part")), stop_at=2)
    assert part.stopped and part.steps == 2
    shutil.copytree(tmp_path / "part", tmp_path / "resumed")
    resumed, calls = _t5_run(_raw(data_dir, str(tmp_path / "resumed"), resume_from_checkpoint="latest"))
    assert calls == [] and resumed.steps == 4
    assert _same(full.output_path, resumed.output_path)


def test_another_text_encoder_or_t5_length_gets_other_files(tiny_flux, tmp_path):
    from lora_trainer.models.flux_adapter import FluxAdapter, FluxOptions

    parts = dict(tiny_flux)
    base = FluxAdapter(parts).text_cache_id()
    assert FluxAdapter(parts).text_cache_id() == base
    assert FluxAdapter(parts, FluxOptions(t5_max_token_length=64)).text_cache_id() != base
    t5 = parts["text_encoder_2"]
    w = next(p for n, p in t5.named_parameters() if n.endswith("wo.weight"))
    with torch.no_grad():
        w.mul_(1.001)
        try:
            assert FluxAdapter(parts).text_cache_id() != base  # a fine-tuned T5: all weights differ
        finally:
            w.div_(1.001)
    cache = TextEncoderCache(str(tmp_path), "one")
    assert cache.path_for("a") != TextEncoderCache(str(tmp_path), "two").path_for("a") != cache.path_for("b")


def test_disk_needs_the_memory_cache_in_one_line(data_dir, tmp_path):
    with pytest.raises(ConfigError, match="cache_text_encoder_outputs_to_disk.*needs cache_text_encoder_outputs"):
        load_config(_raw(data_dir, str(tmp_path), cache_text_encoder_outputs=False))


def test_sd_models_key_their_files_by_their_text_encoders_too():
    from lora_trainer.models.tiny import build_tiny_adapter

    adapter = build_tiny_adapter("sd1")
    base = adapter.text_cache_id()
    w = next(iter(adapter.text_encoders[0].parameters()))
    with torch.no_grad():
        w.add_(1e-3)
    assert adapter.text_cache_id() != base


def _count_text_encoders(monkeypatch) -> dict[str, int]:
    """How many T5 / CLIP-L models are constructed (both loaders, single files and folders, make one)."""
    from transformers import CLIPTextModel, T5EncoderModel

    made = {"t5": 0, "clip": 0}
    for name, cls in (("t5", T5EncoderModel), ("clip", CLIPTextModel)):
        real = cls.__init__

        def counted(self, *a, _real=real, _name=name, **kw):
            made[_name] += 1
            _real(self, *a, **kw)

        monkeypatch.setattr(cls, "__init__", counted)
    return made


def _file_model(kind: str, parts, root) -> dict:
    """The tiny model as the single files users have, or as a diffusers folder: the config keys naming it."""
    from flux_helpers import write_single_files

    from lora_trainer.models.flux_tiny import save_tiny_flux

    if kind.endswith("folder"):
        return {"base_model": save_tiny_flux(str(root / "m"), parts["kind"].split("-")[0])}
    paths = write_single_files(parts, str(root / "m"))
    return {"base_model": paths["transformer"], "vae_path": paths["vae"], "t5xxl_path": paths["t5"],
            **({"clip_l_path": paths["clip_l"]} if "clip_l" in paths else {})}


@pytest.mark.parametrize("kind", ["single_files", "folder", "chroma_single_files", "chroma_folder"])
def test_a_fully_cached_run_never_loads_the_text_encoders(kind, data_dir, tmp_path, monkeypatch, request):
    """Captions, validation captions and sample prompts all on disk: T5 and CLIP-L are not even built, and the
    LoRA is the same."""
    from lora_trainer import synthetic

    chroma = kind.startswith("chroma")
    model = _file_model(kind, request.getfixturevalue("tiny_chroma" if chroma else "tiny_flux"), tmp_path)
    held_out = tmp_path / "held_out"
    synthetic.write_dataset(str(held_out), synthetic.concept_set(synthetic.CONTROL_CONCEPT, 1, seed=1), repeats=1,
                            name="vyk")
    made = _count_text_encoders(monkeypatch)
    extra = {**model, "max_train_steps": 2, "save_steps": 0, "sample_prompts": ["zqx red circle"],
             "sample_every_n_steps": 2, "sample_steps": 2, "validation_data_dir": str(held_out),
             "validation_every_n_steps": 1}
    first = train(load_config(_raw(data_dir, str(tmp_path / "a"), **extra)))
    built = {"t5": 1, "clip": 0 if chroma else 1}
    assert made == built
    # 2 captions, the validation caption, the prompt and its empty negative
    assert len(os.listdir(default_text_cache_dir(data_dir))) == 5
    second = train(load_config(_raw(data_dir, str(tmp_path / "b"), **extra)))
    assert made == built  # nothing more was built
    assert _same(first.output_path, second.output_path)
    assert second.samples and os.path.isfile(second.samples[0])  # the sample prompt came from the cache


def test_a_changed_t5_file_gets_other_cache_names(tiny_flux, tmp_path, monkeypatch):
    from safetensors.torch import save_file

    model = _file_model("single_files", tiny_flux, tmp_path)
    made = _count_text_encoders(monkeypatch)
    cfg = load_config({**model, "train_data_dir": str(tmp_path), "output_dir": str(tmp_path / "o")})
    base = load_flux_adapter(cfg).text_cache_id()
    assert load_flux_adapter(cfg).text_cache_id() == base and made == {"t5": 0, "clip": 0}  # named unloaded
    t5 = load_file(model["t5xxl_path"])
    name = next(k for k in t5 if k.endswith("wo.weight"))
    t5[name] = t5[name] * 1.001  # one slightly fine-tuned tensor of many
    save_file(t5, model["t5xxl_path"])
    assert load_flux_adapter(cfg).text_cache_id() != base
