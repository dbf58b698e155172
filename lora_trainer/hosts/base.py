"""The host seam: what UI, API and jobs ask of the place they run in."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lora_trainer.errors import UserError

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.events import EventSink, StopFlag
    from lora_trainer.models.base import ModelAdapter

# download destinations by model kind (the downloader's routing names)
MODEL_KINDS = ("lora", "checkpoint", "vae", "embedding", "other")


class AccessDenied(UserError):
    """A request the host's exposure rule forbids (server paths, downloads on a public WebUI)."""


class Host:
    """Base host: plain folders under `root`, no lock, no restriction. Subclasses override."""

    name = "base"

    def __init__(self, root: str = ".", settings: dict[str, Any] | None = None):
        self.root = os.path.abspath(root)
        self.settings: dict[str, Any] = dict(settings or {})

    # ---- folders
    def model_dirs(self) -> dict[str, str]:
        """Folder per model kind; downloads land here and the trainer writes LoRAs to `lora`."""
        models = os.path.join(self.root, "models")
        return {"lora": os.path.join(models, "Lora"), "checkpoint": os.path.join(models, "Stable-diffusion"),
                "vae": os.path.join(models, "VAE"), "embedding": os.path.join(self.root, "embeddings"),
                "text_encoder": os.path.join(models, "text_encoder"),  # FLUX.1's clip_l / t5xxl (Forge's folder)
                "other": os.path.join(models, "other")}

    def lora_dir(self) -> str:
        return self.model_dirs()["lora"]

    def work_dir(self) -> str:
        """Where runs keep their logs, states and uploaded datasets."""
        return os.path.join(self.root, "outputs", "lora-trainer")

    def uploads_dir(self) -> str:
        """Where datasets uploaded through the UI are kept (always readable, even on a public host)."""
        return os.path.join(self.work_dir(), "uploads")

    def setting(self, key: str, default: Any = None) -> Any:
        value = self.settings.get(key)
        return default if value in (None, "") else value

    def save_settings(self, keys: tuple[str, ...]) -> str:
        """Keep `keys` of `settings` for the next start; returns the file ("" = not kept: the WebUI has its
        own Settings page)."""
        return ""

    # ---- access rule
    @property
    def restricted(self) -> bool:
        """True when remote users must not read server paths or make the server download."""
        return False

    def restriction_reason(self) -> str:
        return ""

    def check_server_path(self, path: str, what: str = "dataset folder") -> str:
        """Allow reading `path` from the server's disk, or raise AccessDenied saying why and what to do."""
        if self.restricted:
            raise AccessDenied(f"{what} '{path}': reading folders on the server is disabled "
                               f"({self.restriction_reason()}). Upload the images instead.")
        return os.path.abspath(os.path.expanduser(path))

    def check_download(self) -> None:
        if self.restricted:
            raise AccessDenied(f"downloads are disabled ({self.restriction_reason()}). Download the file "
                               "yourself and put it in the models folder, or restart the WebUI as described.")

    def loaded_model_name(self) -> str:
        """The checkpoint the host has loaded and trains ("" where the engine loads `base_model`)."""
        return ""

    # ---- running jobs
    def check_can_train(self) -> None:
        """Raise a UserError now (before a job starts) when this host cannot train at all."""

    def make_adapter(self, cfg: TrainConfig) -> ModelAdapter | None:
        """The model to train; None lets the engine load `cfg.base_model` itself."""
        return None

    @contextlib.contextmanager
    def exclusive(self, title: str) -> Iterator[None]:
        """Held for the whole training run (the WebUI's GPU queue lock)."""
        yield

    def progress_sink(self, title: str) -> EventSink | None:
        """A sink mirroring training events into the host's own progress display."""
        return None

    def stop_flag(self, job_stop: StopFlag) -> StopFlag:
        """The flag the engine polls: the job's own, plus the host's Interrupt button where it has one."""
        return job_stop

    def file_landed(self, path: str, kind: str = "lora") -> None:
        """A model file was written: refresh whatever lists show it."""
