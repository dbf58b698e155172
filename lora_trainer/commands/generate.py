"""`python -m lora_trainer generate --base MODEL --adapter DIR "prompt"`: try a trained LLM LoRA."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="generate text with a base LLM and a trained LoRA adapter",
                              description="Generate text from a Transformers causal LM, optionally with a PEFT "
                                          "adapter folder written by `train` (task_type: text-generation).")
    p.add_argument("prompt", help="the prompt text")
    p.add_argument("--base", required=True, help="base model: Transformers folder or cached hub id")
    p.add_argument("--adapter", default=None, help="adapter folder (adapter_config.json + "
                                                  "adapter_model.safetensors); omit for the base alone")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); >0 samples")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling when temperature > 0")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user turn (chat template, or the "
                                                       "instruction layout used for instruction data)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model folder's own Python code (ChatGLM and other custom models)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from lora_trainer.errors import UserError
    from lora_trainer.llm.generate import generate_text, load_for_generation

    if args.max_new_tokens < 1:
        print("error: --max-new-tokens must be at least 1", file=sys.stderr)
        return 2
    try:
        model, tokenizer = load_for_generation(args.base, args.adapter, args.device, args.dtype,
                                               args.trust_remote_code)
        text = generate_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens,
                             temperature=args.temperature, top_p=args.top_p, seed=args.seed, chat=args.chat)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(text)
    return 0
