"""CLIP tokenizers for SD1 / SD2 / SDXL (and FLUX.1's CLIP-L), found offline: the user's folder, the
checkpoint's folder, then the local HuggingFace cache. Nothing is downloaded; a missing tokenizer is one
error saying which files to put where."""

from __future__ import annotations

import os
from typing import Any

from lora_trainer.errors import ModelLoadError

# where a tokenizer can be found in the HF cache (repo id, folder inside it), per text encoder
HUB_TOKENIZERS = {
    "sd1": [[("openai/clip-vit-large-patch14", ""), ("runwayml/stable-diffusion-v1-5", "tokenizer"),
             ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer")]],
    "sd2": [[("stabilityai/stable-diffusion-2-1", "tokenizer"), ("stabilityai/stable-diffusion-2-1-base", "tokenizer"),
             ("openai/clip-vit-large-patch14", "")]],
    "sdxl": [[("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer"), ("openai/clip-vit-large-patch14", "")],
             [("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer_2"),
              ("laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", ""), ("openai/clip-vit-large-patch14", "")]],
}
# open_clip encoders pad with "!" (id 0), CLIP-L with <|endoftext|>
PAD_TOKENS = {"sd1": ["<|endoftext|>"], "sd2": ["!"], "sdxl": ["<|endoftext|>", "!"]}


def clip_tokenizer_from(folder: str, pad_token: str):  # -> CLIPTokenizer | None
    if not (os.path.isfile(os.path.join(folder, "vocab.json")) and os.path.isfile(os.path.join(folder, "merges.txt"))):
        return None
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(folder, local_files_only=True)
    if pad_token in tok.get_vocab():
        tok.pad_token = pad_token
    return tok


def hub_file_dir(repo_id: str, sub: str, cache_dir: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        name = f"{sub}/vocab.json" if sub else "vocab.json"
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        merges = try_to_load_from_cache(repo_id, name.replace("vocab.json", "merges.txt"), cache_dir=cache_dir)
        if isinstance(found, str) and isinstance(merges, str) and os.path.dirname(found) == os.path.dirname(merges):
            return os.path.dirname(found)
    except Exception:  # noqa: BLE001 - cache not there
        return None
    return None


def find_tokenizers(arch: str, checkpoint: str, tokenizer_path: str | None, cache_dir: str | None) -> list[Any]:
    """One CLIP tokenizer per text encoder, from (in order) `tokenizer_path`, the checkpoint's folder
    (`tokenizer/`, `tokenizer_2/`), then the local HF cache. Raises ModelLoadError saying where to put
    which files when none is found."""
    subs = ["tokenizer", "tokenizer_2"][:2 if arch == "sdxl" else 1]
    out = []
    for i, sub in enumerate(subs):
        candidates = []
        if tokenizer_path:
            candidates += [os.path.join(tokenizer_path, sub), tokenizer_path]
        here = os.path.dirname(os.path.abspath(checkpoint))
        stem = os.path.splitext(os.path.basename(checkpoint))[0]
        candidates += [os.path.join(here, stem, sub), os.path.join(here, sub)]
        tok = None
        for c in candidates:
            tok = clip_tokenizer_from(c, PAD_TOKENS[arch][i])
            if tok is not None:
                break
        if tok is None:
            for repo, folder in HUB_TOKENIZERS[arch][i]:
                found = hub_file_dir(repo, folder, cache_dir)
                if found and (tok := clip_tokenizer_from(found, PAD_TOKENS[arch][i])) is not None:
                    break
        if tok is None:
            if tokenizer_path and not os.path.isdir(tokenizer_path):
                raise ModelLoadError(f"config 'tokenizer_path': folder not found: {tokenizer_path}")
            src = HUB_TOKENIZERS[arch][i][0]
            origin = f"{src[0]}" + (f" ({src[1]}/)" if src[1] else "")
            raise ModelLoadError(
                f"no CLIP tokenizer found for {os.path.basename(checkpoint)} ({arch}, text encoder {i + 1}). "
                f"Put {sub}/vocab.json + {sub}/merges.txt from {origin} next to the checkpoint "
                f"({os.path.join(os.path.dirname(os.path.abspath(checkpoint)), sub)}/), or set tokenizer_path "
                "to a folder holding vocab.json + merges.txt (any CLIP tokenizer works: SD1, SD2 and SDXL "
                "share one vocabulary)")
        out.append(tok)
    return out
