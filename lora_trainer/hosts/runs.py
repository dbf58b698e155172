"""Start training runs as jobs on a host — the one path the UI tab and the HTTP API share.

The run trains the host's model (inside the WebUI: the loaded checkpoint) while holding the host's
lock, then publishes the final LoRA and its sidecars into the host's Lora folder so
`<lora:name:0.8>` works at once. Intermediate saves and resumable states stay in the run folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from lora_trainer.atomic import atomic_copy
from lora_trainer.errors import ConfigError
from lora_trainer.hosts.access import check_config_paths
from lora_trainer.jobs import Job, JobRegistry
from lora_trainer.jobs import registry as default_registry

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.events import Emitter, StopFlag
    from lora_trainer.hosts.base import Host

SIDECARS = (".json", ".preview.png")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file stem that works in `<lora:NAME:w>` on every OS."""
    stem = _SAFE_NAME.sub("_", name.strip()).strip("._") or "lora"
    return stem[:100]


def prepare_config(host: Host, config: Any, overrides: Iterable[str] = ()) -> TrainConfig:
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
    raw, overrides = dict(config), list(overrides)
    require = ("train_data_dir",) if host.name == "webui" else ("train_data_dir", "base_model")
    cfg = load_config(raw, overrides, base_dir=base_dir, check_paths=False)
    check_config_paths(host, cfg)  # before anything below looks at the disk
    if not cfg.train_data_dir:
        raise ConfigError("train_data_dir", "is empty: choose a dataset folder or upload images")
    name = safe_name(cfg.output_name or (os.path.basename(os.path.normpath(cfg.output_dir)) if cfg.output_dir
                                          else os.path.basename(os.path.normpath(cfg.train_data_dir))))
    # the host's defaults are settled while loading: the config is not changed after this
    host_defaults = [f"output_name={name}"]
    if not cfg.output_dir:
        host_defaults.append(f"output_dir={os.path.join(host.work_dir(), 'runs', name)}")
    return load_config(raw, [*overrides, *host_defaults], base_dir=base_dir, check_paths=True, require=require)



def publish(host: Host, lora_file: str) -> str:
    """Copy the final LoRA and its sidecars into the host's Lora folder; returns the new path."""
    dest_dir = host.lora_dir()
    stem = os.path.splitext(os.path.basename(lora_file))[0]
    dest = os.path.join(dest_dir, stem + ".safetensors")
    if os.path.realpath(dest) != os.path.realpath(lora_file):
        for ext in SIDECARS:
            side = os.path.join(os.path.dirname(lora_file), stem + ext)
            if os.path.isfile(side):
                atomic_copy(side, os.path.join(dest_dir, stem + ext))
        atomic_copy(lora_file, dest)  # last: a Lora list refresh never sees a file without its sidecars
    host.file_landed(dest, "lora")
    return dest


def _arch_of(lora_file: str) -> str | None:
    """sd1 / sd2 / sdxl / flux-dev / flux-schnell / chroma from the file's own metadata (for the sidecar's
    "sd version")."""
    from lora_trainer.lora.file import read_lora_metadata
    from lora_trainer.lora.metadata_flux import MODELSPEC_ARCH

    meta = read_lora_metadata(lora_file)
    flux = [kind for kind, spec in MODELSPEC_ARCH.items() if meta.get("modelspec.architecture") == spec]
    if flux:
        return flux[0]
    version = str(meta.get("ss_base_model_version", ""))
    return "sdxl" if version.startswith("sdxl") else "sd2" if version.startswith("sd_v2") else (
        "sd1" if version.startswith("sd_v1") else None)


def write_stopped_sidecars(cfg: TrainConfig, result: Any) -> None:
    """A stopped run's file (`name-<step>.safetensors`) gets the `.json` and preview a finished one has,
    so its card in the Lora tab shows the trigger word, weight and a picture too."""
    from lora_trainer.lora.metadata import write_sidecars
    from lora_trainer.lora.metadata_flux import FLUX_KINDS, write_flux_sidecars

    samples = [p for p in (result.samples or []) if os.path.isfile(p)]
    arch = _arch_of(result.output_path)
    side = dict(trigger_words=cfg.trigger_word or None, preferred_weight=cfg.preferred_weight,
                description=cfg.description, notes=f"stopped after {result.steps} steps; resumable",
                preview=samples[-1] if samples else None)
    if arch in FLUX_KINDS:
        write_flux_sidecars(result.output_path, kind=arch, **side)
    else:
        write_sidecars(result.output_path, arch=arch, **side)


PARTIAL_RECORD = "published-partial.json"  # in the run folder: what stopped runs put in the Lora folder


def _partials(cfg: TrainConfig) -> list[str]:
    path = os.path.join(cfg.output_dir, PARTIAL_RECORD)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return []
    return [str(p) for p in data] if isinstance(data, list) else []


def remember_partial(cfg: TrainConfig, published: str) -> None:
    from lora_trainer.atomic import atomic_write_text

    atomic_write_text(os.path.join(cfg.output_dir, PARTIAL_RECORD), json.dumps(_partials(cfg) + [published]))


def replace_partials(host: Host, cfg: TrainConfig, final: str) -> list[str]:
    """The finished run replaces what its stops published (`name-<step>` files and sidecars)."""
    removed = []
    for path in _partials(cfg):
        if os.path.realpath(path) == os.path.realpath(final):
            continue
        stem = path[: -len(".safetensors")] if path.endswith(".safetensors") else path
        for file in (path, *(stem + ext for ext in SIDECARS)):
            if os.path.isfile(file):
                os.remove(file)
                removed.append(file)
    with contextlib.suppress(OSError):
        os.remove(os.path.join(cfg.output_dir, PARTIAL_RECORD))
    if removed:
        host.file_landed(final, "lora")
    return removed


LOSS_HISTORY = "loss-history.tsv"  # in the run folder: "step<TAB>loss" per step, so a resumed run plots it all


def loss_history_sink(cfg: TrainConfig) -> Any:
    """An event sink appending each step's loss to the run folder's history (a fresh run starts it anew)."""
    path = os.path.join(cfg.output_dir, LOSS_HISTORY)
    if not cfg.resume_from_checkpoint:
        with contextlib.suppress(OSError):
            os.remove(path)

    def sink(event: Any) -> None:
        d = event.data
        if event.type == "progress" and d.get("loss") is not None and d.get("step") is not None:
            os.makedirs(cfg.output_dir, exist_ok=True)
            with open(path, "a", encoding="utf-8") as fh:  # a log, appended line by line (not a document)
                fh.write(f"{int(d['step'])}\t{float(d['loss'])}\n")

    return sink


def loss_history(output_dir: str, before_step: int) -> tuple[list[int], list[float]]:
    """Steps and losses of earlier parts of a run (before `before_step`), for the whole-run curve."""
    steps: list[int] = []
    losses: list[float] = []
    try:
        with open(os.path.join(output_dir, LOSS_HISTORY), encoding="utf-8") as fh:
            rows = [line.split("\t") for line in fh if "\t" in line]
    except OSError:
        return steps, losses
    seen: dict[int, float] = {}
    for row in rows:
        with contextlib.suppress(ValueError):
            if int(row[0]) < before_step:
                seen[int(row[0])] = float(row[1])  # a later part of the run wins (resumed from an older state)
    for step in sorted(seen):
        steps.append(step)
        losses.append(seen[step])
    return steps, losses


def resumable_states(host: Host) -> list[dict[str, Any]]:
    """Saved training states under the host's runs folder, newest first: {run, step, path, mtime}."""
    from lora_trainer.train.checkpoint import STATE_SUFFIX

    root = os.path.join(host.work_dir(), "runs")
    out = []
    for run in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        folder = os.path.join(root, run)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if name.endswith(STATE_SUFFIX) and os.path.isfile(os.path.join(path, "trainer_state.json")):
                step = name[: -len(STATE_SUFFIX)].rsplit("-", 1)[-1]
                out.append({"run": run, "step": int(step) if step.isdigit() else -1, "path": path,
                            "mtime": os.path.getmtime(path)})
    return sorted(out, key=lambda r: r["mtime"], reverse=True)


def training_target(host: Host, cfg: TrainConfig):
    """The job body: lock, adapter, train, verify the host model, publish."""

    def run(emit: Emitter, stop: StopFlag) -> Any:
        from lora_trainer.tasks import train

        title = f"LoRA training: {cfg.output_name}"
        emit.emit("status", message="waiting for the WebUI to finish its current job" if host.name == "webui"
                  else "starting")
        emit.add(loss_history_sink(cfg))
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
        output = result.output_path
        if output and os.path.isfile(output):
            if result.stopped:
                write_stopped_sidecars(cfg, result)
            published = publish(host, output)
            if result.stopped:
                remember_partial(cfg, published)
            else:
                for gone in replace_partials(host, cfg, published):
                    emit.emit("log", level="info", message=f"replaced the stopped run's {os.path.basename(gone)}")
            stem = os.path.splitext(os.path.basename(published))[0]  # a stopped run keeps its -<step> name
            prompt = f"<lora:{stem}:{cfg.preferred_weight}>"
            emit.emit("log", level="info", message=f"saved to {published}; use {prompt} in a prompt")
            emit.emit("published", path=published, name=stem, prompt=prompt)
            if hasattr(result, "published_path"):
                result.published_path = published
        return result

    return run


class TrainingBusy(ConfigError):
    """Train pressed while a run is going (another browser tab, the API): said at once, not queued."""

    def __init__(self, job: Job):
        progress = job.last("progress")
        where = (f"step {progress.data.get('step')}/{progress.data.get('total_steps')}" if progress
                 else "starting")
        super().__init__("train", f"a training is already running ({job.title}, {where}); stop it or wait "
                                  "for it to finish")
        self.job = job


def running_training(jobs: JobRegistry = default_registry) -> Job | None:
    """The training job that is queued or running in this process, if any (one at a time)."""
    return next((j for j in jobs.list("train") if j.alive), None)


def start_training(host: Host, config: Any, overrides: Iterable[str] = (), *,
                   jobs: JobRegistry = default_registry) -> Job:
    """Validate now (errors reach the caller at once), then train in a background job.

    One training at a time per process: the model is shared.
    """
    running = running_training(jobs)
    if running is not None:
        raise TrainingBusy(running)
    host.check_can_train()
    cfg = prepare_config(host, config, overrides)
    job = Job("train", training_target(host, cfg), title=cfg.output_name)
    job.config = cfg  # type: ignore[attr-defined]
    jobs.add(job)
    return job.start()
