"""Target-module defaults, QLoRA refusal without bitsandbytes, and the `generate` command."""

from __future__ import annotations

import pytest
import torch

from lora_trainer.config import TrainConfig
from lora_trainer.errors import ConfigError, ModelLoadError
from lora_trainer.llm.model import (
    DEFAULT_TARGETS,
    check_base_model,
    quantization_config,
    resolve_target_modules,
)
from tests.llm.conftest import llm_config, write_jsonl


@pytest.fixture(scope="module")
def llama_model(tiny_llama):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama)


def test_default_targets_per_architecture(llama_model):
    assert resolve_target_modules(None, llama_model) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolve_target_modules(["attention+mlp"], llama_model) == ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"]
    assert resolve_target_modules("q_proj, v_proj", llama_model) == ["q_proj", "v_proj"]
    assert resolve_target_modules("all-linear", llama_model) == "all-linear"
    for family in ("mistral", "qwen2"):
        assert DEFAULT_TARGETS[family][0] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert DEFAULT_TARGETS["chatglm"][0] == ["query_key_value"]


def test_unknown_target_lists_the_real_layers(llama_model):
    with pytest.raises(ConfigError, match=r"target_modules.*query_key_value not found.*down_proj, gate_proj"):
        resolve_target_modules(["query_key_value"], llama_model)


def test_qlora_without_bitsandbytes_is_a_clear_error():
    try:
        import bitsandbytes  # noqa: F401
        pytest.skip("bitsandbytes is installed here")
    except ImportError:
        pass
    with pytest.raises(ConfigError, match="load_in_4bit.*bitsandbytes"):
        quantization_config(TrainConfig(load_in_4bit=True), torch.bfloat16)
    assert quantization_config(TrainConfig(), torch.float32) is None


def test_base_model_checks(tmp_path, tiny_llama):
    assert check_base_model(str(tiny_llama)) == str(tiny_llama)
    assert check_base_model("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"{}")
    with pytest.raises(ConfigError, match="single file"):
        check_base_model(str(single))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="LoRA adapter folder, not a base model"):
        check_base_model(str(adapter))


def test_uncached_hub_id_fails_with_a_download_hint(tmp_path, counting_data):
    from lora_trainer.llm.trainer import train_llm

    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        train_llm(llm_config(tmp_path, "nobody-here/not-a-model", counting_data[0], model_cache_dir=str(tmp_path)))


def test_generate_cli_runs_with_a_trained_adapter(tiny_llama, tmp_path, capsys):
    from lora_trainer.cli import main
    from lora_trainer.llm.trainer import train_llm

    rows = [{"text": f"count n{i} n{i + 1} n{i + 2} n{i + 3} n{i + 4}"} for i in range(30)] * 2
    result = train_llm(llm_config(tmp_path, tiny_llama, write_jsonl(tmp_path / "c.jsonl", rows), epochs=10,
                                  learning_rate=1e-2))
    code = main(["generate", "--base", str(tiny_llama), "--adapter", result.output_path, "count n10 n11 n12",
                 "--max-new-tokens", "2", "--device", "cpu"])
    out = capsys.readouterr().out.split()
    assert code == 0 and out == ["n13", "n14"]
    assert main(["generate", "--base", str(tiny_llama), "--adapter", str(tmp_path), "x", "--device", "cpu"]) == 2
    assert "not a PEFT adapter folder" in capsys.readouterr().err


@pytest.mark.parametrize("family, gguf_arch, permuted", [("mistral", "llama", True), ("qwen2", "qwen2", False)])
def test_other_families_default_targets_and_gguf(tmp_path, family, gguf_arch, permuted):
    import numpy as np
    import transformers
    from gguf import GGUFReader

    from lora_trainer.llm.export import adapter_state
    from lora_trainer.llm.gguf_export import export_gguf_lora, rope_permute
    from lora_trainer.llm.model import wrap_lora

    name = {"mistral": "Mistral", "qwen2": "Qwen2"}[family]
    config = getattr(transformers, f"{name}Config")(vocab_size=32, hidden_size=32, intermediate_size=64,
                                                    num_hidden_layers=1, num_attention_heads=4,
                                                    num_key_value_heads=2)
    torch.manual_seed(0)
    model = wrap_lora(getattr(transformers, f"{name}ForCausalLM")(config),
                      TrainConfig(lora_rank=4, lora_alpha=4, lora_dropout=0.0, target_modules=None))
    assert sorted(model.peft_config["default"].target_modules) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    for module in model.modules():  # non-zero B so the permutation is visible
        if hasattr(module, "lora_B"):
            torch.nn.init.normal_(module.lora_B["default"].weight)
    state = adapter_state(model)
    path = export_gguf_lora(str(tmp_path / "a.gguf"), state, config, 4.0, "fp32")
    reader = GGUFReader(path)
    assert reader.fields["general.architecture"].contents() == gguf_arch
    q_b = next(np.array(t.data) for t in reader.tensors if t.name == "blk.0.attn_q.weight.lora_b")
    b = state["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].numpy()
    np.testing.assert_array_equal(q_b, rope_permute(b, 4) if permuted else b)
