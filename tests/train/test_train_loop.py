"""The training loop on the real tiny SD1 model: learning, resume, stop, NaN, outputs."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import events_of, list_files, make_config

from lora_trainer.events import Emitter, StopFlag
from lora_trainer.train.checkpoint import load_state
from lora_trainer.train.engine import TrainingDiverged
from lora_trainer.train.evaluate import denoising_loss, fixed_inputs
from lora_trainer.train.image import train


def _record():
    events: list = []
    return events, Emitter([events.append])


def _base_snapshot(adapter):
    return {name: {k: v.clone() for k, v in mod.state_dict().items()} for name, mod in adapter.modules().items()}


def test_loss_drops_and_base_is_restored(tiny_adapter, concept_dir, tmp_path):
    from lora_trainer import synthetic
    from lora_trainer.train.evaluate import load_network

    before_state = _base_snapshot(tiny_adapter)
    before_flags = [(p.requires_grad, m.training) for mod in tiny_adapter.modules().values()
                    for m in mod.modules() for p in m.parameters(recurse=False)]
    train_set = synthetic.concept_set(synthetic.TARGET_CONCEPT, 6, seed=0)
    pixels = synthetic.to_tensor([s.image for s in train_set])
    captions = [s.caption for s in train_set]
    inputs = fixed_inputs(tiny_adapter, pixels, captions, timesteps=(100, 400, 700))
    base_loss = denoising_loss(tiny_adapter, inputs)

    cfg = make_config(concept_dir, str(tmp_path / "out"), epochs=2, learning_rate=3e-3)
    result = train(cfg, adapter=tiny_adapter)
    assert not result.stopped and result.steps == 12

    # the base is exactly as before: weights, no leftover forward wrappers, flags
    after_state = _base_snapshot(tiny_adapter)
    for name, sd in before_state.items():
        for k, v in sd.items():
            assert torch.equal(v, after_state[name][k]), (name, k)
    assert not any("forward" in m.__dict__ for mod in tiny_adapter.modules().values() for m in mod.modules())
    assert before_flags == [(p.requires_grad, m.training) for mod in tiny_adapter.modules().values()
                            for m in mod.modules() for p in m.parameters(recurse=False)]

    net = load_network(tiny_adapter, result.output_path)
    net.attach()
    try:
        trained_loss = denoising_loss(tiny_adapter, inputs)
    finally:
        net.detach()
    assert trained_loss < base_loss * 0.97, (base_loss, trained_loss)


def test_resume_equals_uninterrupted(tiny_adapter, concept_dir, tmp_path):
    common = dict(epochs=2, gradient_accumulation_steps=2, lora_dropout=0.1, lr_scheduler="cosine",
                  lr_warmup_steps=1, train_text_encoder=True, text_encoder_lr=5e-4, save_state=True)
    full = train(make_config(concept_dir, str(tmp_path / "a"), **common), adapter=tiny_adapter)

    stop = StopFlag()
    events: list = []

    def sink(event):
        events.append(event)
        if event.type == "progress" and event.data["step"] == 2:
            stop.request("test stop")

    part = train(make_config(concept_dir, str(tmp_path / "b"), **common), adapter=tiny_adapter,
                 emit=Emitter([sink]), stop=stop)
    assert part.stopped and part.steps == 2
    assert os.path.isfile(os.path.join(part.state_path, "trainer_state.json"))
    stopped = events_of("stopped", events)
    assert stopped and stopped[0].data["state_path"] == part.state_path
    with open(os.path.join(part.state_path, "trainer_state.json")) as f:
        state = json.load(f)
    assert (state["step"], state["epoch"], state["position"]) == (2, 0, 4)

    done = train(make_config(concept_dir, str(tmp_path / "b"), resume_from_checkpoint="latest", **common),
                 adapter=tiny_adapter)
    assert done.steps == full.steps == 6
    a, b = load_file(full.output_path), load_file(done.output_path)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=1e-6, atol=1e-7)


def test_stop_saves_resumable_state_and_lora(tiny_adapter, concept_dir, tmp_path):
    stop = StopFlag()
    stop.request("Ctrl-C")  # asked before the first step: stops after it
    events, emit = _record()
    out = tmp_path / "out"
    result = train(make_config(concept_dir, str(out)), adapter=tiny_adapter, emit=emit, stop=stop)
    assert result.stopped and result.steps == 1
    assert result.state_path and os.path.isdir(result.state_path)
    assert set(list_files(result.state_path)) == {"lora.safetensors", "optimizer.safetensors", "optimizer.json",
                                                  "rng.safetensors", "trainer_state.json"}
    assert load_state(result.state_path)["optim"]["optimizer"]["state"]
    assert "resume" in events_of("stopped", events)[0].data["message"]
    assert os.path.isfile(result.output_path)


def test_nan_loss_stops_and_keeps_last_good_save(tiny_adapter, concept_dir, tmp_path):
    out = tmp_path / "out"
    # a real divergence: plain SGD at lr 10 with a LoRA scale of 1e6 and no clipping overflows in a few steps
    cfg = make_config(concept_dir, str(out), epochs=3, optimizer="sgd", learning_rate=10, max_grad_norm=0,
                      lora_alpha=4e6, save_steps=1, optimizer_args={"momentum": 0.0})
    events, emit = _record()
    with pytest.raises(TrainingDiverged) as info:
        train(cfg, adapter=tiny_adapter, emit=emit)
    msg = str(info.value)
    assert "NaN/Inf" in msg and "learning_rate" in msg
    saves = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert saves, "a good save must remain"
    assert saves[-1] in msg
    last = load_file(str(out / saves[-1]))
    assert all(torch.isfinite(t).all() for t in last.values())
    assert events_of("error", events)
    assert not any("forward" in m.__dict__ for m in tiny_adapter.unet.modules())


def test_outputs_names_sidecars_metadata_and_logs(tiny_adapter, concept_dir, tmp_path):
    from lora_trainer.lora.file import load_lora_file

    out = tmp_path / "mystyle"
    cfg = make_config(concept_dir, str(out), epochs=1, save_steps=2, save_last_n=2, trigger_word="zqx",
                      save_precision="fp16", sample_prompts=["zqx checker star"], sample_every_n_steps=4,
                      sample_steps=2, description="test lora")
    events, emit = _record()
    result = train(cfg, adapter=tiny_adapter, emit=emit)
    files = list_files(str(out))
    # 6 steps, saves at 2 and 4 (the final step writes the final file), keep the last 2
    assert "mystyle.safetensors" in files and "mystyle-000002.safetensors" in files
    assert "mystyle-000004.safetensors" in files
    assert "mystyle.json" in files and "mystyle.preview.png" in files
    sd, meta = load_lora_file(result.output_path)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in sd)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in sd)
    assert sd[next(k for k in sd if k.endswith(".lora_up.weight"))].dtype == torch.float16
    assert meta["ss_output_name"] == "mystyle" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_steps"] == "6" and len(meta["sshs_model_hash"]) == 64
    assert json.loads(meta["ss_tag_frequency"]) and meta["modelspec.trigger_phrase"] == "zqx"
    side = json.loads((out / "mystyle.json").read_text())
    assert side["activation text"] == "zqx" and side["sd version"] == "SD1" and side["preferred weight"] == 0.8
    samples = events_of("sample", events)
    assert [e.data["step"] for e in samples] == [4, 6]
    assert all(os.path.isfile(p) for e in samples for p in e.data["paths"])
    progress = events_of("progress", events)
    assert [e.data["step"] for e in progress] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "avg_loss", "lr", "it_per_s", "eta_s", "epoch", "total_epochs"} <= set(progress[-1].data)
    assert events_of("done", events)[0].data["output"] == result.output_path
    logs = out / "logs"
    if importlib.util.find_spec("tensorboard"):  # without it (Forge ships none) no event files, by design
        assert any(f.startswith("events.out.tfevents") for f in os.listdir(logs))


def test_save_last_n_prunes(tiny_adapter, concept_dir, tmp_path):
    out = tmp_path / "keep"
    train(make_config(concept_dir, str(out), epochs=1, save_steps=1, save_last_n=2), adapter=tiny_adapter)
    files = list_files(str(out))
    inter = [f for f in files if f.startswith("keep-") and f.endswith(".safetensors")]
    states = [f for f in files if f.endswith("-state")]
    assert inter == ["keep-000004.safetensors", "keep-000005.safetensors"]
    assert len(states) == 2 and "keep.safetensors" in files


def test_continue_from_network_weights(tiny_adapter, concept_dir, tmp_path):
    first = train(make_config(concept_dir, str(tmp_path / "one"), max_train_steps=2), adapter=tiny_adapter)
    events, emit = _record()
    train(make_config(concept_dir, str(tmp_path / "two"), max_train_steps=1, network_weights=first.output_path),
          adapter=tiny_adapter, emit=emit)
    assert any("continuing from" in e.data["message"] for e in events_of("log", events))


def test_bf16_checkpointing_min_snr_noise_offset_te_training(tiny_adapter, concept_dir, tmp_path):
    cfg = make_config(concept_dir, str(tmp_path / "opts"), max_train_steps=2, mixed_precision="bf16",
                      gradient_checkpointing=True, min_snr_gamma=5, noise_offset=0.05, train_text_encoder=True,
                      shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.2, flip_aug=True,
                      optimizer="lion", lr_scheduler="linear", lr_warmup_steps=1, conv_dim=2, conv_alpha=1,
                      cache_latents_to_disk=True)
    result = train(cfg, adapter=tiny_adapter)
    from lora_trainer.data import default_latent_cache_dir

    assert os.listdir(default_latent_cache_dir(concept_dir)), "latents were not cached to disk"
    sd = load_file(result.output_path)
    assert any(k.startswith("lora_te_") for k in sd) and any("resnets" in k for k in sd)
    assert result.final_loss is not None and result.final_loss == result.final_loss
    assert not tiny_adapter.unet.is_gradient_checkpointing


def test_fp16_on_cpu_is_refused_before_loading(concept_dir, tmp_path):
    from lora_trainer.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(ConfigError, match="mixed_precision"):
        train(make_config(concept_dir, str(tmp_path / "x"), mixed_precision="fp16"))


def test_all_lora_saves_kept_but_only_last_two_states_by_default(tiny_adapter, concept_dir, tmp_path):
    out = tmp_path / "keepall"
    train(make_config(concept_dir, str(out), max_train_steps=4, save_steps=1), adapter=tiny_adapter)
    files = list_files(str(out))
    assert [f for f in files if f.endswith(".safetensors")] == [
        "keepall-000001.safetensors", "keepall-000002.safetensors", "keepall-000003.safetensors",
        "keepall.safetensors"]
    assert [f for f in files if f.endswith("-state")] == ["keepall-000003-state", "keepall-000004-state"]


def test_loader_workers_and_cache_prepass_keep_runs_bit_exact(tiny_adapter, concept_dir, tmp_path):
    """Worker processes, prefetching and the cache pre-pass change when data is read, not what is
    trained: 0 or 2 workers, uninterrupted or stopped and resumed, the LoRA is bit-identical."""
    common = dict(epochs=2, gradient_accumulation_steps=2, flip_aug=True, lr_scheduler="cosine", save_state=True)
    plain = train(make_config(concept_dir, str(tmp_path / "w0"), num_workers=0, **common), adapter=tiny_adapter)
    events: list = []
    workers = train(make_config(concept_dir, str(tmp_path / "w2"), num_workers=2, **common), adapter=tiny_adapter,
                    emit=Emitter([events.append]))
    assert any("caching latents" in e.data.get("message", "") for e in events_of("status", events))

    stop = StopFlag()

    def stop_at_2(event):
        if event.type == "progress" and event.data["step"] == 2:
            stop.request("test stop")

    part = train(make_config(concept_dir, str(tmp_path / "r"), num_workers=2, **common), adapter=tiny_adapter,
                 emit=Emitter([stop_at_2]), stop=stop)
    assert part.stopped and part.steps == 2
    resumed = train(make_config(concept_dir, str(tmp_path / "r"), num_workers=2, resume_from_checkpoint="latest",
                                **common), adapter=tiny_adapter)
    a = load_file(plain.output_path)
    for other in (workers, resumed):
        b = load_file(other.output_path)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), other.output_path
