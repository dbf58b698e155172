"""The standalone app (`python -m lora_trainer app`): local folders, the engine loads the model.

Exposure rule as in the WebUI: when the app listens beyond localhost (`--host 0.0.0.0`, a LAN address)
or is shared through a public link (`--share`) and was not started with `--allow-remote-paths`,
browsers can neither read or write server paths (see `hosts.access`) nor make the server download.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from typing import Any

from lora_trainer.hosts.base import Host

LOCAL_NAMES = ("127.0.0.1", "localhost", "::1", "")
SAVED_SETTINGS = ".lora-trainer-app.json"  # in --root: tokens and proxy typed into the app (mode 0600)


class StandaloneHost(Host):
    name = "standalone"

    def __init__(self, root: str = ".", settings: dict[str, Any] | None = None, *, listen: str = "127.0.0.1",
                 allow_remote: bool = False, share: bool = False):
        super().__init__(root, settings)
        self.listen = listen
        self.share = share
        self.allow_remote = allow_remote
        self._lock = threading.Lock()  # one training at a time: it owns the CPU/GPU
        self._load_saved()

    def saved_settings_path(self) -> str:
        return os.path.join(self.root, SAVED_SETTINGS)

    def _load_saved(self) -> None:
        """What Save kept last time; settings passed in and LORA_TRAINER_<KEY> variables win."""
        try:
            with open(self.saved_settings_path(), encoding="utf-8") as fh:
                saved = json.load(fh)
        except (OSError, ValueError):
            return
        if isinstance(saved, dict):
            for key, value in saved.items():
                if isinstance(value, str) and key not in self.settings and \
                        not os.environ.get(f"LORA_TRAINER_{key.upper()}"):
                    self.settings[key] = value

    def save_settings(self, keys: tuple[str, ...]) -> str:
        """Only the owner may read the file (tokens); a public app keeps what remote browsers typed for the
        session only."""
        if self.restricted:
            return ""
        from lora_trainer.atomic import atomic_write_text

        data = {k: self.settings[k] for k in keys if self.settings.get(k)}
        atomic_write_text(self.saved_settings_path(), json.dumps(data, indent=1) + "\n", private=True)
        return self.saved_settings_path()

    def setting(self, key: str, default: Any = None) -> Any:
        env = os.environ.get(f"LORA_TRAINER_{key.upper()}")
        return super().setting(key, env if env else default)

    @property
    def restricted(self) -> bool:
        return (self.share or self.listen not in LOCAL_NAMES) and not self.allow_remote

    def restriction_reason(self) -> str:
        where = "is shared through a public link" if self.share else f"listens on {self.listen} (beyond localhost)"
        return (f"the app {where} without --allow-remote-paths; restart it with that flag if you trust everyone "
                "who can reach it")

    @contextlib.contextmanager
    def exclusive(self, title: str) -> Iterator[None]:
        with self._lock:
            yield
