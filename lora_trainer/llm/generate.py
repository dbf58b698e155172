"""Quick generation with a base model and (optionally) a trained adapter, for checking a result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_trainer.errors import ModelLoadError


def load_for_generation(base: str, adapter: str | None = None, device: str = "auto",
                        dtype: str = "auto", trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer); the tokenizer comes from the adapter folder when it has one (chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_trainer.llm.model import check_base_model, hf_quiet

    source = check_base_model(base)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(
        dtype, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    tok_source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else source
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise ModelLoadError(f"--adapter {adapter} is not a PEFT adapter folder (no adapter_config.json)")
    with hf_quiet():
        try:
            tokenizer = AutoTokenizer.from_pretrained(tok_source, local_files_only=True,
                                                      trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, local_files_only=True,
                                                         trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"--base {base} could not be loaded offline: {exc}") from exc
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
    model.to(dev).eval()
    return model, tokenizer


def build_prompt(tokenizer: Any, prompt: str, chat: bool) -> str:
    """The prompt as trained: raw text, or one user turn through the chat template (Alpaca layout without one)."""
    if not chat:
        return prompt
    from lora_trainer.llm.encode import format_instruction, has_chat_template

    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return format_instruction(prompt)


def generate_text(model: Any, tokenizer: Any, prompt: str, *, max_new_tokens: int = 64, temperature: float = 0.0,
                  top_p: float = 0.95, seed: int = 42, chat: bool = False) -> str:
    """Continue `prompt`; greedy when temperature is 0. Returns only the new text."""
    import torch

    text = build_prompt(tokenizer, prompt, chat)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=not chat)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    torch.manual_seed(seed)
    sampling = temperature > 0
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sampling, "use_cache": True,
                              "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                              else tokenizer.eos_token_id}
    if sampling:
        kwargs.update(temperature=temperature, top_p=top_p)
    with torch.no_grad():
        out = model.generate(**enc, **kwargs)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
