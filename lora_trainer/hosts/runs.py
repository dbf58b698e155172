"""Start training runs as jobs on a host — the one path the UI tab and the HTTP API share.

The run trains the host's model (inside the WebUI: the loaded checkpoint) while holding the host's
lock, then publishes the final LoRA and its sidecars into the host's Lora folder so
`<lora:name:0.8>` works at once. Intermediate saves and resumable states stay in the run folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lora_trainer.atomic import atomic_copy
from lora_trainer.errors import ConfigError
from lora_trainer.hosts.access import check_config_paths, check_path
from lora_trainer.jobs import Job, JobRegistry
from lora_trainer.jobs import registry as default_registry

if TYPE_CHECKING:
    from lora_trainer.events import Emitter, StopFlag
    from lora_trainer.hosts.base import Host

SIDECARS = (".json", ".preview.png")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file stem that works in `<lora:NAME:w>` on every OS."""
    stem = _SAFE_NAME.sub("_", name.strip()).strip("._") or "lora"
    return stem[:100]


def prepare_config(host: Host, config: Any, overrides: Iterable[str] = ()) -> Any:
    """Validate a run's config for this host before any model work, with host defaults filled in.

    `config` is a dict, YAML text or a YAML file path (server paths obey the host's access rule).
    Inside the WebUI `base_model` may be empty (= the loaded checkpoint); the run folder defaults to
    `<work_dir>/runs/<output_name>`.
    """
    import yaml

    from lora_trainer.config import load_config

    base_dir = host.work_dir()
    if isinstance(config, str) and "\n" not in config and config.endswith((".yaml", ".yml")):
        path = host.check_server_path(config, "config file")
        with open(path, encoding="utf-8-sig") as fh:
            config = yaml.safe_load(fh) or {}
        base_dir = os.path.dirname(path)
    elif isinstance(config, str):
        try:
            config = yaml.safe_load(config) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("config", f"not valid YAML: {exc}") from exc
    if not isinstance(config, Mapping):
        raise ConfigError("config", "must be a mapping of key: value (a JSON object or YAML mapping)")
    raw = dict(config)
    require = ("train_data_dir",) if host.name == "webui" else ("train_data_dir", "base_model")
    cfg = load_config(raw, overrides, base_dir=base_dir, check_paths=False)
    check_config_paths(host, cfg)  # before anything below looks at the disk
    if not cfg.train_data_dir:
        raise ConfigError("train_data_dir", "is empty: choose a dataset folder or upload images")
    name = safe_name(cfg.output_name or (os.path.basename(os.path.normpath(cfg.output_dir)) if cfg.output_dir
                                          else os.path.basename(os.path.normpath(cfg.train_data_dir))))
    cfg.output_name = name
    if not cfg.output_dir:
        cfg.output_dir = os.path.join(host.work_dir(), "runs", name)
    from lora_trainer.config import validate_config
    validate_config(cfg, check_paths=True, require=require)
    return cfg


def check_dataset_access(host: Host, path: str, what: str = "train_data_dir") -> None:
    """The access rule for one dataset path (uploads are always allowed); see `hosts.access`."""
    check_path(host, what, path)


def uploads_dir(host: Host) -> str:
    return os.path.join(host.work_dir(), "uploads")


def _atomic_copy(src: str, dst: str) -> None:
    atomic_copy(src, dst)


def publish(host: Host, lora_file: str) -> str:
    """Copy the final LoRA and its sidecars into the host's Lora folder; returns the new path."""
    dest_dir = host.lora_dir()
    stem = os.path.splitext(os.path.basename(lora_file))[0]
    dest = os.path.join(dest_dir, stem + ".safetensors")
    if os.path.realpath(dest) != os.path.realpath(lora_file):
        for ext in SIDECARS:
            side = os.path.join(os.path.dirname(lora_file), stem + ext)
            if os.path.isfile(side):
                _atomic_copy(side, os.path.join(dest_dir, stem + ext))
        _atomic_copy(lora_file, dest)  # last: a Lora list refresh never sees a file without its sidecars
    host.file_landed(dest, "lora")
    return dest


def training_target(host: Host, cfg: Any):
    """The job body: lock, adapter, train, verify the host model, publish."""

    def run(emit: Emitter, stop: StopFlag) -> Any:
        from lora_trainer.train import train

        title = f"LoRA training: {cfg.output_name}"
        emit.emit("status", message="waiting for the WebUI to finish its current job" if host.name == "webui"
                  else "starting")
        with host.exclusive(title):
            sink = host.progress_sink(title)
            if sink is not None:
                emit.add(sink)
            adapter = host.make_adapter(cfg)
            if adapter is not None and cfg.base_model:
                emit.emit("log", level="warning", message=f"base_model '{cfg.base_model}' ignored: training the "
                          f"checkpoint loaded in the WebUI ({host.loaded_model_name()})")
            result = train(cfg, adapter=adapter, emit=emit, stop=host.stop_flag(stop))
            problems = adapter.verify() if adapter is not None and hasattr(adapter, "verify") else []
            if problems:
                emit.emit("log", level="error", message="the WebUI model differs from before training: "
                          + "; ".join(problems[:10]))
        output = getattr(result, "output_path", None)
        if output and os.path.isfile(output):
            published = publish(host, output)
            stem = os.path.splitext(os.path.basename(published))[0]  # a stopped run keeps its -<step> name
            prompt = f"<lora:{stem}:{getattr(cfg, 'preferred_weight', 0.8)}>"
            emit.emit("log", level="info", message=f"saved to {published}; use {prompt} in a prompt")
            emit.emit("published", path=published, name=stem, prompt=prompt)
            if hasattr(result, "published_path"):
                result.published_path = published
        return result

    return run


def start_training(host: Host, config: Any, overrides: Iterable[str] = (), *,
                   jobs: JobRegistry = default_registry) -> Job:
    """Validate now (errors reach the caller at once), then train in a background job.

    One training at a time per process: the model is shared.
    """
    for job in jobs.list("train"):
        if job.alive:
            raise ConfigError("train", f"a training is already running ({job.id}: {job.title}); stop it or wait")
    host.check_can_train()
    cfg = prepare_config(host, config, overrides)
    job = Job("train", training_target(host, cfg), title=cfg.output_name)
    job.config = cfg  # type: ignore[attr-defined]
    jobs.add(job)
    return job.start()
