"""One access rule for every path a run's config can name.

A host reachable by others (the app listening beyond localhost without `--allow-remote-paths`, the
WebUI with `disable_extension_access`) must not let a remote browser load, read or write arbitrary
server files: not a model or LoRA (`base_model`, `network_weights`, `vae_path`, `tokenizer_path`), not
another folder's state (`resume_from_checkpoint`), not a caption CSV or prompt file, and not write
outside its own folders (`output_dir`, `logging_dir`, `model_cache_dir`). Every path-valued config key
(the schema's `path=` metadata, plus `sample_prompts` given as a file) goes through `check_config_paths`,
which allows only the host's own folders for that kind of key (uploads, runs, the model folders whose
files the form lists, `builtin:` models). It looks at the text and never at the disk, so its answer is
the same for a server file that exists and one that does not: nothing leaks about the server's files.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from lora_trainer.hosts.base import AccessDenied

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.hosts.base import Host

BUILTIN = "builtin:"
# where each kind of path may point on a restricted host (config `path=` kind -> folders)
KIND_ROOTS = {"model": ("checkpoint",), "new": ("work",), "resume": ("runs",), "file": ("uploads",),
              "any": ("uploads",), "dir": ("uploads",)}
# keys whose meaning narrows or widens their kind's folders
FIELD_ROOTS = {"vae_path": ("vae", "checkpoint"), "clip_l_path": ("text_encoder", "checkpoint"),
               "t5xxl_path": ("text_encoder", "checkpoint"), "network_weights": ("lora", "runs"),
               "tokenizer_path": ("checkpoint",), "sample_prompts": ("uploads", "work")}
ROOT_WORDS = {"uploads": "uploaded files", "work": "the trainer's own folder", "runs": "this trainer's runs",
              "checkpoint": "the models folder", "vae": "the VAE folder", "text_encoder": "the text_encoder folder", "lora": "the Lora folder"}


def path_fields() -> dict[str, str]:
    """Every config key that can hold a server path -> its path kind (a new `path=` key is included
    by itself; `sample_prompts` can be a .txt file)."""
    from lora_trainer.config import config_fields

    out = {f.name: f.path for f in config_fields() if f.path}
    out["sample_prompts"] = "file"
    return out


def _roots(host: Host, name: str, kind: str) -> list[tuple[str, str]]:
    """(word, folder) pairs `name` may point into on a restricted host."""
    folders = {"uploads": host.uploads_dir(), "work": host.work_dir(),
               "runs": os.path.join(host.work_dir(), "runs"), **host.model_dirs()}
    keys = FIELD_ROOTS.get(name) or KIND_ROOTS.get(kind) or ("uploads", "work")
    return [(k, folders[k]) for k in keys if k in folders]


def _inside(path: str, folder: str) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or real.startswith(root + os.sep)


def check_path(host: Host, name: str, value: Any, kind: str | None = None) -> None:
    """Raise AccessDenied naming `name` when `value` is not allowed on this host (no-op when the
    host is not restricted). Decided from the text alone: existing and missing files answer alike."""
    if not host.restricted or value in (None, ""):
        return
    kind = kind or path_fields().get(name) or "any"
    if isinstance(value, (list, tuple)):
        if name == "sample_prompts":
            return  # a list of prompts is never read from disk
        for item in value:
            check_path(host, name, item, kind)
        return
    text = str(value).strip()
    if kind == "resume" and text.lower() == "latest":
        return  # the newest state in output_dir, which is checked itself
    if kind == "model" and text.startswith(BUILTIN):
        return
    if name == "sample_prompts" and not _looks_like_file(text):
        return  # one prompt written inline
    roots = _roots(host, name, kind)
    if os.path.isabs(os.path.expanduser(text)) and any(_inside(os.path.expanduser(text), f) for _, f in roots):
        return
    allowed = ", ".join(ROOT_WORDS.get(k, k) for k, _ in roots)
    extra = " or a built-in model (builtin:tiny-sd1)" if kind == "model" and name == "base_model" else ""
    hint = " Upload the images instead." if name in ("train_data_dir", "metadata_path") else ""
    raise AccessDenied(f"{name} '{text}': on this server only {allowed}{extra} can be used "
                       f"({host.restriction_reason()}).{hint}")


def _looks_like_file(text: str) -> bool:
    return text.lower().endswith(".txt") or text.startswith(("/", "~", ".", "\\")) or (
        len(text) > 2 and text[1] == ":" and text[2] in "/\\")


def check_config_paths(host: Host, cfg: TrainConfig) -> None:
    """Apply `check_path` to every path-valued key of a loaded config (before anything touches disk)."""
    for name, kind in path_fields().items():
        check_path(host, name, getattr(cfg, name), kind)
