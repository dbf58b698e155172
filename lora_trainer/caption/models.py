"""Finding a captioner's model: a local folder, or a Hugging Face hub id (cache first, then online).

A missing model is the most common captioning failure, so the error names every file that must be
in the folder and the hub id to fetch it from.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lora_trainer.errors import ModelLoadError

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class ModelFiles:
    """What a captioner needs on disk. `required`: groups of names, any one of a group will do."""

    label: str
    default_id: str
    required: tuple[tuple[str, ...], ...]
    download_patterns: tuple[str, ...]

    def describe(self, groups: tuple[tuple[str, ...], ...] | list[tuple[str, ...]] | None = None) -> str:
        groups = self.required if groups is None else groups
        return ", ".join(g[0] if len(g) == 1 else f"{g[0]} (or {' / '.join(g[1:])})" for g in groups)

    def missing(self, folder: Path) -> list[tuple[str, ...]]:
        return [group for group in self.required if not any((folder / name).is_file() for name in group)]


def looks_like_hub_id(value: str) -> bool:
    return bool(_HUB_ID.fullmatch(value)) and not value.startswith(".")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def resolve_model(value: str | None, files: ModelFiles, local_only: bool = False) -> Path:
    """The local folder holding the model's files; raises ModelLoadError saying how to get them."""
    value = (value or files.default_id).strip()
    path = Path(value).expanduser()
    if path.is_file():  # e.g. --model path/to/model.onnx
        path = path.parent
    if path.is_dir():
        missing = files.missing(path)
        if missing:
            raise ModelLoadError(
                f"{files.label} folder '{path}' is missing {files.describe(missing)}. Put "
                f"{files.describe()} there (the files of https://huggingface.co/{files.default_id} or a "
                f"compatible model), or pass a hub id with --model when online.")
        return path
    if not looks_like_hub_id(value):
        raise ModelLoadError(
            f"{files.label} model '{value}': no such folder. Create it and put {files.describe()} in it "
            f"(from https://huggingface.co/{files.default_id}), or pass a hub id such as {files.default_id}.")
    return _from_hub(value, files, local_only or _offline())


def _from_hub(repo_id: str, files: ModelFiles, offline: bool) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        snapshot_download = None
    reason = "huggingface_hub is not installed" if snapshot_download is None else ""
    for local_only in ((True,) if offline else (True, False)) if snapshot_download else ():
        try:
            folder = Path(snapshot_download(repo_id, allow_patterns=list(files.download_patterns),
                                            local_files_only=local_only))
        except Exception as exc:  # noqa: BLE001 - offline, unknown repo, auth: all end in the same advice
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            continue
        missing = files.missing(folder)
        if not missing:
            return folder
        reason = f"the cached copy in {folder} lacks {files.describe(missing)}"
    how = "offline mode (HF_HUB_OFFLINE)" if offline else "download failed"
    names = " ".join(g[0] for g in files.required)
    raise ModelLoadError(
        f"{files.label} '{repo_id}' is not in the local Hugging Face cache ({how}: {reason}). Online, fetch "
        f"it with `hf download {repo_id} {names}` or run again with network access; offline, put "
        f"{files.describe()} into a folder and pass that folder with --model.")
