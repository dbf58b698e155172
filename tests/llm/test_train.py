"""End-to-end LLM LoRA training on a tiny random-weight LLaMA (CPU, seconds)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from lora_trainer.errors import ConfigError, DatasetError
from lora_trainer.events import StopFlag
from lora_trainer.llm.batches import collate, mean_loss
from lora_trainer.llm.encode import encode_records
from lora_trainer.llm.records import parse_record
from lora_trainer.llm.trainer import LLMTask, train_llm
from lora_trainer.train.distributed import DistContext
from lora_trainer.train.engine import Engine
from tests.llm.conftest import llm_config, make_tokenizer, write_jsonl


def _examples(rows):
    return encode_records([parse_record(r, "held-out", i) for i, r in enumerate(rows)], make_tokenizer(), 32).examples


def _logits(model, examples):
    batch = collate(examples, 0)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


@pytest.fixture(scope="module")
def trained(tiny_llama, counting_data, tmp_path_factory):
    """One real run (with GGUF export) shared by the checks below: (trainer, result, events)."""
    train_file, _ = counting_data
    tmp = tmp_path_factory.mktemp("run")
    cfg = llm_config(tmp, tiny_llama, train_file, epochs=8, learning_rate=1e-2, gguf_output=True, save_steps=10,
                     save_last_n=2, lora_dropout=0.05)
    events = []
    trainer = LLMTask(cfg)
    result = Engine(trainer, emit=events.append, stop=StopFlag(), dist=DistContext()).run()
    return trainer, result, events


def test_training_lowers_held_out_loss_clearly(tiny_llama, counting_data, trained):
    from transformers import AutoModelForCausalLM

    trainer, result, _ = trained
    held = _examples(counting_data[1])
    before = mean_loss(AutoModelForCausalLM.from_pretrained(tiny_llama), held, 0)
    after = mean_loss(trainer.model, held, 0)
    assert after < 0.5 * before, (before, after)  # measured: about 5.0 -> 1.4
    assert result.steps == 48 and not result.stopped


def test_events_and_files(trained):
    import os

    _, result, events = trained
    types = [e.type for e in events]
    assert types.index("plan") < types.index("progress") < types.index("done")
    progress = [e.data for e in events if e.type == "progress"]
    assert [p["step"] for p in progress] == list(range(1, 49))
    assert {"loss", "avg_loss", "lr", "eta_s", "epoch", "total_epochs"} <= set(progress[-1])
    out = os.path.dirname(result.output_path)
    # save_steps 10, keep last 2: intermediate adapters 30 and 40 remain, plus the final one and its state
    assert sorted(d for d in os.listdir(out) if d.startswith("out-0") and not d.endswith("-state")) == \
        ["out-000030", "out-000040"]
    assert os.path.isdir(result.state_path) and result.state_path.endswith("out-000048-state")
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= set(os.listdir(result.output_path))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(out, "logs")))


def test_adapter_reloads_in_plain_peft_with_identical_logits(tiny_llama, counting_data, trained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lora_trainer.llm.export import save_merged

    trainer, result, _ = trained
    held = _examples(counting_data[1])
    trainer.model.eval()
    expected = _logits(trainer.model, held)
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), result.output_path).eval()
    assert torch.equal(_logits(reloaded, held), expected)
    # a merged export loads as a plain Transformers model and computes the same function
    merged_dir = save_merged(reloaded, make_tokenizer(), str(tmp_path / "merged"), "fp32")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    torch.testing.assert_close(_logits(merged, held), expected, atol=1e-4, rtol=1e-4)


def test_gguf_lora_matches_llama_cpp_layout(trained):
    import numpy as np
    from gguf import GGUFReader

    from lora_trainer.llm.gguf_export import rope_permute

    trainer, result, events = trained
    path = next(e.data["gguf"] for e in events if e.type == "done")
    reader = GGUFReader(path)
    fields = {k: v.contents() for k, v in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama" and fields["adapter.lora.alpha"] == 16.0
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in reader.tensors}
    assert set(tensors) == {f"blk.{i}.attn_{p}.weight.lora_{ab}" for i in (0, 1) for p in ("q", "k", "v", "output")
                            for ab in "ab"}
    peft = load_file(f"{result.output_path}/adapter_model.safetensors")
    key = "base_model.model.model.layers.1.self_attn.{}.lora_{}.weight"
    for proj, short, heads in (("q_proj", "q", 4), ("k_proj", "k", 2), ("v_proj", "v", None)):
        a, b = peft[key.format(proj, "A")].float(), peft[key.format(proj, "B")].float()
        ga, gb = tensors[f"blk.1.attn_{short}.weight.lora_a"], tensors[f"blk.1.attn_{short}.weight.lora_b"]
        np.testing.assert_allclose(ga, a.numpy(), rtol=1e-3, atol=1e-6)
        # llama.cpp's q/k weights are row-permuted (rotary layout), so the delta must be too
        delta = (b @ a).numpy() if heads is None else rope_permute((b @ a).numpy(), heads)
        np.testing.assert_allclose(gb @ ga, delta, rtol=1e-2, atol=1e-5)


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tiny_llama, counting_data, tmp_path):
    over = {"epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2, "lora_dropout": 0.1,
            "lr_scheduler": "cosine", "lr_warmup_steps": 2, "learning_rate": 5e-3}
    full = train_llm(llm_config(tmp_path / "a", tiny_llama, counting_data[0], **over))

    stop = StopFlag()

    def stop_at_7(event):  # one process: a stop asked for during step 7's events ends the run at step 7
        if event.type == "progress" and event.data["step"] == 7:
            stop.request("test stop")

    part_cfg = llm_config(tmp_path / "b", tiny_llama, counting_data[0], **over)
    part = train_llm(part_cfg, emit=stop_at_7, stop=stop)
    assert part.stopped and part.steps == 7 and part.state_path.endswith("out-000007-state")
    events = []
    resumed = train_llm(llm_config(tmp_path / "b", tiny_llama, counting_data[0], resume_from_checkpoint="latest",
                                   **over), emit=events.append)
    assert resumed.steps == full.steps == 12
    assert [e.data["step"] for e in events if e.type == "progress"] == list(range(8, 13))
    a = load_file(f"{full.output_path}/adapter_model.safetensors")
    b = load_file(f"{resumed.output_path}/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gguf_base_is_refused_before_anything_loads(counting_data, tmp_path):
    gguf = tmp_path / "llama-7b.Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    events = []
    with pytest.raises(ConfigError) as err:
        train_llm(llm_config(tmp_path, gguf, counting_data[0]), emit=events.append)
    msg = str(err.value)
    assert "base_model" in msg and "cannot be trained" in msg and "Transformers" in msg and "--lora" in msg
    folder = tmp_path / "gguf-folder"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF" + bytes(60))
    with pytest.raises(ConfigError, match="cannot be trained"):
        train_llm(llm_config(tmp_path, folder, counting_data[0]))
    assert not (tmp_path / "out").exists() and not any(e.type == "plan" for e in events)


def test_bad_data_line_stops_before_the_model_loads(tiny_llama, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": "n1 n2"}, {"text": "n3"}])
    with data.open("a", encoding="utf-8") as fh:
        fh.write('{"text": "n4", }\n')
    events = []
    with pytest.raises(DatasetError, match=r"d\.jsonl line 3: invalid JSON"):
        train_llm(llm_config(tmp_path, tiny_llama, data), emit=events.append)
    assert not any("loading model" in str(e.data.get("message", "")) for e in events)


def test_instruction_data_trains_only_on_responses(tiny_llama, tmp_path):
    rows = [{"instruction": f"count from n{i}", "output": f"n{i + 1} n{i + 2}"} for i in range(16)]
    cfg = llm_config(tmp_path, tiny_llama, write_jsonl(tmp_path / "i.jsonl", rows), epochs=1, batch_size=4,
                     sample_prompts=["count from n3"], sample_every_n_steps=2)
    events = []
    result = train_llm(cfg, emit=events.append)
    plan = next(e.data for e in events if e.type == "plan")
    # per record: "n_a n_b </s>" carry loss, the templated prompt does not
    assert plan["trainable_tokens"] == 16 * 3 and plan["tokens"] > 3 * plan["trainable_tokens"]
    assert result.steps == 4 and plan["record_kinds"] == {"instruction": 16}
    # text samples through the chat template every 2 steps, logged and written
    samples = [e.data["message"] for e in events if e.type == "log" and "sample @ step" in e.data["message"]]
    assert len(samples) == 2 and "'count from n3'" in samples[0]
    assert (tmp_path / "out" / "samples" / "out-000004.txt").read_text().startswith("### count from n3\n")


def test_network_weights_continues_from_an_adapter(tiny_llama, counting_data, trained, tmp_path):
    from lora_trainer.llm.batches import mean_loss as loss_of

    trainer, result, _ = trained
    cfg = llm_config(tmp_path, tiny_llama, counting_data[0], max_train_steps=1, learning_rate=1e-6,
                     network_weights=f"{result.output_path}/adapter_model.safetensors")
    again = LLMTask(cfg)
    Engine(again, emit=lambda e: None, stop=StopFlag(), dist=DistContext()).run()
    held = _examples(counting_data[1])
    assert abs(loss_of(again.model, held, 0) - loss_of(trainer.model, held, 0)) < 0.05
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(tmp_path / "kohya.safetensors"))
    with pytest.raises(ConfigError, match="network_weights.*does not fit"):
        train_llm(llm_config(tmp_path / "x", tiny_llama, counting_data[0],
                             network_weights=str(tmp_path / "kohya.safetensors")))


def test_ctrl_c_saves_a_resumable_state(tiny_llama, counting_data, tmp_path, monkeypatch):
    from lora_trainer.llm import batches

    real, calls = batches.summed_loss, {"n": 0}

    def interrupted_on_fifth_call(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(model, batch)

    monkeypatch.setattr(batches, "summed_loss", interrupted_on_fifth_call)
    events = []
    result = train_llm(llm_config(tmp_path, tiny_llama, counting_data[0]), emit=events.append)
    assert result.stopped and result.steps == 4 and result.state_path.endswith("out-000004-state")
    assert "Ctrl-C" in next(e.data["message"] for e in events if e.type == "stopped")
    monkeypatch.setattr(batches, "summed_loss", real)
    resumed = train_llm(llm_config(tmp_path, tiny_llama, counting_data[0], resume_from_checkpoint="latest"))
    assert resumed.steps == 12 and not resumed.stopped


def test_plan_counts_steps_without_loading_the_model(tiny_llama, counting_data, tmp_path):
    from lora_trainer.llm import plan_llm

    plan = plan_llm(llm_config(tmp_path, tiny_llama, counting_data[0], batch_size=5, gradient_accumulation_steps=2,
                               epochs=3, packing=True))
    assert plan["packing"] and plan["examples"] == -(-plan["tokens"] // 32)
    assert plan["batches_per_epoch"] == -(-plan["examples"] // 5)
    assert plan["total_steps"] == 3 * -(-plan["batches_per_epoch"] // 2) and plan["effective_batch_size"] == 10
    assert not (tmp_path / "out").exists()


def test_loader_workers_give_the_same_adapter(tiny_llama, counting_data, tmp_path):
    """Token batches come through the run's DataLoader: worker processes change nothing trained."""
    over = {"max_train_steps": 4, "batch_size": 4, "gradient_accumulation_steps": 2, "learning_rate": 5e-3}
    plain = train_llm(llm_config(tmp_path / "w0", tiny_llama, counting_data[0], num_workers=0, **over))
    workers = train_llm(llm_config(tmp_path / "w2", tiny_llama, counting_data[0], num_workers=2, **over))
    a = load_file(f"{plain.output_path}/adapter_model.safetensors")
    b = load_file(f"{workers.output_path}/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
