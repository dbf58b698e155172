"""The training loop: config → dataset → plan → model → LoRA → steps → files.

Everything that can be checked without the model (config, dataset, resume path) is checked first, so
a mistake costs seconds, not a model load. Each micro-batch reseeds every RNG from (seed, epoch,
position, rank): a run stopped at any step boundary and resumed computes exactly what the uninterrupted
run computes. Models come only through `ModelAdapter`; only rank 0 writes files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lora_trainer.atomic import atomic_write_text
from lora_trainer.errors import ConfigError, UserError
from lora_trainer.events import Event, EventSink, StopFlag, null_sink
from lora_trainer.train import checkpoint as ckpt
from lora_trainer.train.distributed import DistContext, init_from_env
from lora_trainer.train.noise import NoiseSchedule, diffusion_loss, sample_noise, sample_timesteps
from lora_trainer.train.optim import build_optimizer, build_scheduler
from lora_trainer.train.sampling import generate_samples, parse_prompts


@dataclass
class TrainResult:
    output_path: str | None
    steps: int
    epochs: int
    final_loss: float | None
    state_path: str | None
    stopped: bool
    samples: list[str] = dataclasses.field(default_factory=list)


STATES_KEPT = 2  # resumable states kept when save_last_n is empty


class TrainingDiverged(UserError):
    """The loss became NaN/Inf; the run stops and keeps its last good save."""


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def derive_seed(*parts: Any) -> int:
    """A well-mixed 63-bit seed from (seed, epoch, position, rank, ...) for per-batch determinism."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def config_as_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    return dict(vars(cfg))


def output_name(cfg: Any) -> str:
    return getattr(cfg, "output_name", None) or os.path.basename(os.path.normpath(cfg.output_dir)) or "lora"


def ensure_config(cfg: Any) -> Any:
    """Accept a TrainConfig, a dict or a YAML path."""
    if isinstance(cfg, (str, os.PathLike, dict)):
        from lora_trainer.config import load_config

        return load_config(cfg)
    return cfg


def cadence(cfg: Any) -> tuple[float, int, int, int, int]:
    """(max_grad_norm, save_steps, save_every_n_epochs, sample_every_n_steps, sample_every_n_epochs); 0 = off."""
    return (float(getattr(cfg, "max_grad_norm", 0) or 0), int(getattr(cfg, "save_steps", 0) or 0),
            int(getattr(cfg, "save_every_n_epochs", 0) or 0), int(getattr(cfg, "sample_every_n_steps", 0) or 0),
            int(getattr(cfg, "sample_every_n_epochs", 0) or 0))


def autocast_context(device: torch.device, mixed_precision: str):
    if mixed_precision in ("fp16", "bf16"):
        dtype = torch.float16 if mixed_precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return nullcontext()


def train(cfg: Any, *, adapter: Any = None, emit: EventSink = null_sink,
          stop: StopFlag | None = None) -> TrainResult:
    """Train a LoRA as `cfg` says; reports through `emit`; `stop` ends it early with a resumable state."""
    cfg = ensure_config(cfg)
    if getattr(cfg, "task_type", "text-to-image") == "text-generation":
        from lora_trainer.llm import train_llm

        return train_llm(cfg, emit=emit, stop=stop)
    dist = init_from_env(str(getattr(cfg, "device", "auto") or "auto"))
    try:
        return Trainer(cfg, adapter=adapter, emit=emit, stop=stop or StopFlag(), dist=dist).run()
    finally:
        dist.shutdown()


def prepare_plan(cfg: Any, dist: DistContext | None = None) -> tuple[Any, Any, Any]:
    """Scan the dataset and plan the run without touching the model: (index, dataset, Plan)."""
    from lora_trainer.data import TrainDataset, make_plan, scan_dataset

    dist = dist or DistContext()
    index = scan_dataset(cfg)
    dataset = TrainDataset(cfg, index)
    plan = make_plan(cfg, index, world_size=dist.world_size, dataset=dataset)
    if plan.batches_per_epoch <= 0:
        raise ConfigError("batch_size", f"{plan.samples_per_epoch} samples per epoch leave no batch for each of "
                                        f"{dist.world_size} processes; add images or repeats")
    return index, dataset, plan


class Trainer:
    """One training run; `run()` does it all and always leaves the base model as it found it."""

    def __init__(self, cfg: Any, *, adapter: Any, emit: EventSink, stop: StopFlag, dist: DistContext):
        self.cfg = cfg
        self.adapter = adapter
        self._emit = emit
        self.stop = stop
        self.dist = dist
        self.name = output_name(cfg)
        self.out_dir = os.path.abspath(cfg.output_dir)
        self.network: Any = None
        self.last_save: str | None = None
        self.last_state: str | None = None
        self.samples: list[str] = []
        self.started_at = time.time()
        self._where: tuple[int, int, int] | None = None  # (epoch, next position, batches in epoch)
        self._tb: Any = None
        self._undo: list[Any] = []  # callbacks that put the adapter back (run before restore())
        # LORA_TRAINER_TRACE_DIR: every rank writes the sample ids it trained and a hash of its final
        # LoRA (how a multi-process run is checked: disjoint data, identical weights)
        self._trace_dir = os.environ.get("LORA_TRAINER_TRACE_DIR")
        self._trace: list[int] | None = [] if self._trace_dir else None

    # ---- events (rank 0 only) -------------------------------------------------------------
    def emit(self, type_: str, **data: Any) -> None:
        if self.dist.is_main:
            event = Event(type_, data)
            self._emit(event)
            if self._tb is not None:
                try:
                    self._tb(event)
                except Exception as exc:  # noqa: BLE001 - logging must never stop training
                    self._tb = None
                    self._emit(Event("log", {"level": "warning", "message": f"TensorBoard logging off: {exc}"}))

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)

    # ---- the run ----------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        for note in getattr(cfg, "notes", None) or []:
            self.log(str(note), "warning")
        self.emit("status", message="checking dataset")
        self.index, self.dataset, self.plan_obj = prepare_plan(cfg, self.dist)
        self.plan = self.plan_obj.to_dict()
        if self.index.skipped:
            listed = "; ".join(f"{os.path.basename(str(p))}: {r}" for p, r in self.index.skipped[:20])
            more = f" (+{len(self.index.skipped) - 20} more)" if len(self.index.skipped) > 20 else ""
            self.log(f"skipped {len(self.index.skipped)} file(s): {listed}{more}", "warning")
        resume = getattr(cfg, "resume_from_checkpoint", None)
        self.resume_path = (ckpt.resolve_resume(resume, self.out_dir, self.name, warn=lambda m: self.log(m, "warning"))
                            if resume else None)
        self.prompts = parse_prompts(cfg)
        self.emit("plan", **self.plan)
        wants_cpu = str(getattr(cfg, "device", "auto") or "auto") in ("auto", "cpu") and not torch.cuda.is_available()
        if getattr(cfg, "mixed_precision", "no") == "fp16" and self.adapter is None and wants_cpu:
            raise ConfigError("mixed_precision", "fp16 needs a CUDA GPU and none is available; use 'bf16' or 'no'")
        if self.adapter is None:
            self.emit("status", message=f"loading model {cfg.base_model}")
            from lora_trainer.models.loading import load_adapter

            self.adapter = load_adapter(cfg)
        self.device = self.adapter.device
        self.adapter.prepare_for_training()
        try:
            if self.dist.is_main:
                from lora_trainer.train.tensorboard import make_tensorboard_sink

                self._tb = make_tensorboard_sink(getattr(cfg, "logging_dir", None)
                                                 or os.path.join(self.out_dir, "logs"))
            return self._train()
        finally:
            if self.network is not None:
                self.network.detach()
            for undo in reversed(self._undo):
                undo()
            self.adapter.restore()
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    def _build_network(self) -> list[torch.nn.Parameter]:
        from lora_trainer.lora.network import LoRANetwork

        cfg, ad = self.cfg, self.adapter
        train_te = bool(cfg.train_text_encoder)
        if train_te and not ad.trainable_text_encoder():
            self.log("this model's text encoder cannot be trained here; training the UNet only", "warning")
            train_te = False
        self.train_te = train_te
        conv_dim = int(getattr(cfg, "conv_dim", 0) or 0)
        targets = ad.lora_targets(unet=bool(cfg.train_unet), text_encoder=train_te, conv=conv_dim > 0)
        if not targets:
            raise ConfigError("train_unet", "nothing to train: no LoRA target modules (train_unet and "
                                            "train_text_encoder are both off?)")
        seed_all(int(cfg.seed))
        self.network = LoRANetwork(targets, rank=int(cfg.lora_rank), alpha=float(cfg.lora_alpha),
                                   dropout=float(getattr(cfg, "lora_dropout", 0) or 0), conv_rank=conv_dim,
                                   conv_alpha=getattr(cfg, "conv_alpha", None))
        self.network.attach()
        weights = getattr(cfg, "network_weights", None)
        if weights:
            from lora_trainer.lora.file import load_lora_file

            sd, _ = load_lora_file(str(weights))
            report = self.network.load_kohya_state_dict(sd)
            if not report.loaded:
                raise ConfigError("network_weights", f"{weights} has no LoRA module of this model "
                                                     "(another architecture, or trained on other parts?)")
            self.log(f"continuing from {weights}: {len(report.loaded)} tensors loaded, "
                     f"{len(report.missing)} missing (start fresh), {len(report.unexpected)} ignored",
                     "warning" if report.missing or report.unexpected else "info")
        lr = float(cfg.learning_rate)
        groups = self.network.param_groups(float(getattr(cfg, "unet_lr", None) or lr),
                                           float(getattr(cfg, "text_encoder_lr", None) or lr))
        params = [p for g in groups for p in g["params"]]
        for p in params:
            if p.device != self.device:
                p.data = p.data.to(self.device)
        self.dist.broadcast_params(params)
        self.groups = groups
        return params

    def _setup_caches(self) -> None:
        from lora_trainer.data import LatentCache, TextEncoderCache, default_latent_cache_dir

        cfg = self.cfg
        self.latent_cache = None
        if getattr(cfg, "cache_latents", True):
            disk = default_latent_cache_dir(cfg.train_data_dir) if getattr(cfg, "cache_latents_to_disk", False) else None
            info = self.adapter.info
            model_id = f"{info.arch}:{info.model_name}:{info.model_hash}:{getattr(cfg, 'vae_path', None) or ''}"
            self.latent_cache = LatentCache(disk, model_id)
        changes = bool(getattr(cfg, "shuffle_caption", False)) or float(getattr(cfg, "caption_dropout_rate", 0) or 0) > 0
        # frozen text encoder + fixed captions: each caption is encoded once (cache_text_encoder_outputs
        # asks for it; it is free, so it is done whenever it is valid)
        self.te_cache = TextEncoderCache() if not self.train_te and not changes else None

    # ---- per micro-batch ------------------------------------------------------------------
    def _encode_one(self, key: str, pixels: torch.Tensor) -> torch.Tensor:
        # a per-image seed: a sampled VAE latent is the same whenever it is first cached
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(derive_seed(self.cfg.seed, "latent", key))
            with torch.no_grad():
                return self.adapter.encode_images(pixels.to(self.device, self.adapter.dtype))[0].float()

    def _batch_and_latents(self, indices: list[int], epoch: int) -> tuple[dict[str, Any], torch.Tensor]:
        """The batch and its latents; cached latents skip image decoding altogether."""
        if self.latent_cache is None:
            batch = self.dataset.load_batch(indices, epoch)
            with torch.no_grad():
                return batch, self.adapter.encode_images(batch["pixels"].to(self.device, self.adapter.dtype)).float()
        batch = self.dataset.load_batch(indices, epoch, with_pixels=False)
        cached = self.latent_cache.get_batch(batch["keys"])
        if cached is None:
            batch = self.dataset.load_batch(indices, epoch)
            for i, key in enumerate(batch["keys"]):
                if self.latent_cache.get(key) is None:
                    self.latent_cache.put(key, self._encode_one(key, batch["pixels"][i:i + 1]).cpu())
            cached = self.latent_cache.get_batch(batch["keys"])
        return batch, cached.to(self.device, torch.float32)

    def _cond(self, captions: list[str]) -> dict[str, torch.Tensor]:
        if self.te_cache is not None:
            def encode(caps: list[str]) -> dict[str, torch.Tensor]:
                with self.autocast():
                    return self.adapter.encode_text(caps)

            return self.te_cache.get_or_encode(captions, encode)
        ctx = nullcontext() if self.train_te else torch.no_grad()
        with ctx, self.autocast():
            return self.adapter.encode_text(captions)

    def autocast(self):
        return autocast_context(self.device, str(getattr(self.cfg, "mixed_precision", "no") or "no"))

    def _micro_loss(self, indices: list[int], epoch: int, pos: int) -> torch.Tensor:
        cfg = self.cfg
        seed_all(derive_seed(cfg.seed, epoch, pos, self.dist.rank) % (2 ** 32))
        batch, latents = self._batch_and_latents(indices, epoch)
        cond = self._cond(list(batch["captions"]))
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "noise", epoch, pos, self.dist.rank))
        noise = sample_noise(latents, float(getattr(cfg, "noise_offset", 0) or 0), gen)
        t = sample_timesteps(latents.shape[0], gen).to(self.device)
        noisy = self.schedule.add_noise(latents, noise, t)
        if self.mp == "no" and self.adapter.dtype != torch.float32:
            noisy = noisy.to(self.adapter.dtype)
        with self.autocast():
            pred = self.adapter.predict(noisy, t, cond, batch.get("sizes"))
        target = self.schedule.target(self.pred_type, latents, noise, t)
        gamma = getattr(cfg, "min_snr_gamma", None)
        weights = self.schedule.min_snr_weights(t, float(gamma), self.pred_type) if gamma else None
        return diffusion_loss(pred, target, weights)

    # ---- outputs --------------------------------------------------------------------------
    def _save_lora(self, step: int, epoch: int, final: bool) -> str:
        from lora_trainer.train.outputs import write_lora

        path = ckpt.lora_path(self.out_dir, self.name, None if final else step)
        write_lora(path, self.network, self.adapter, self.cfg, self.index, self.plan, step=step, epoch=epoch,
                   started_at=self.started_at, final=final, preview=self.samples[0] if self.samples else None)
        self.emit("checkpoint", step=step, path=path, kind="lora")
        self.last_save = path
        return path

    def _save_state(self, step: int, epoch: int, pos: int, n_micro: int) -> str:
        if pos >= n_micro:  # an epoch boundary: resume at the next epoch's start
            epoch, pos = epoch + 1, 0
        path = ckpt.state_path(self.out_dir, self.name, step)
        ckpt.save_state(path, lora_state=self.network.kohya_state_dict(torch.float32), optimizer=self.optimizer,
                        scheduler=self.scheduler, scaler=self.scaler, step=step, epoch=epoch, position=pos,
                        config=config_as_dict(self.cfg),
                        extra={"output_name": self.name, "world_size": self.dist.world_size})
        self.emit("checkpoint", step=step, path=path, kind="state")
        self.last_state = path
        return path

    def _periodic_save(self, step: int, epoch: int, pos: int, n_micro: int) -> None:
        if not self.dist.is_main:
            return
        self._save_lora(step, epoch, final=False)
        if getattr(self.cfg, "save_state", True):
            self._save_state(step, epoch, pos, n_micro)
        for removed in self._prune():
            self.log(f"removed old save {os.path.basename(removed)}")

    def _prune(self) -> list[str]:
        # every LoRA file is kept unless save_last_n says otherwise; resumable states (optimizer included,
        # ~3x the LoRA in size) keep the last save_last_n, or the last 2 when it is empty
        keep = getattr(self.cfg, "save_last_n", None)
        return ckpt.prune(self.out_dir, self.name, keep, keep_states=keep or STATES_KEPT)

    def _sample(self, step: int) -> None:
        if not self.dist.is_main or not self.prompts:
            return
        self.emit("status", message=f"sampling {len(self.prompts)} image(s)")
        train_mode = [m.training for m in self._lora_modules()]
        for m in self._lora_modules():
            m.eval()
        try:
            paths = generate_samples(self.adapter, self.prompts, os.path.join(self.out_dir, "samples"),
                                     f"{self.name}-{step:06d}")
        finally:
            for m, was in zip(self._lora_modules(), train_mode, strict=False):
                m.train(was)
        self.samples = paths
        self.emit("sample", step=step, paths=paths, prompts=[p.prompt for p in self.prompts])

    def _lora_modules(self) -> list[torch.nn.Module]:
        net = self.network
        if isinstance(net, torch.nn.Module):
            return [net]
        mods = getattr(net, "modules", None)
        if isinstance(mods, (list, tuple)):
            return [m for m in mods if isinstance(m, torch.nn.Module)]
        if isinstance(mods, dict):
            return [m for m in mods.values() if isinstance(m, torch.nn.Module)]
        return []

    # ---- main loop ------------------------------------------------------------------------
    def _train(self) -> TrainResult:
        cfg, dist = self.cfg, self.dist
        params = self._build_network()
        self.params = params
        n_params = sum(p.numel() for p in params)
        self.log(f"LoRA: {n_params:,} trainable parameters on {self.device}")
        self.mp = str(getattr(cfg, "mixed_precision", "no") or "no")
        if self.mp == "fp16" and self.device.type != "cuda":
            raise ConfigError("mixed_precision", f"fp16 needs a CUDA GPU (training runs on {self.device}); "
                                                 "use 'bf16' or 'no'")
        if getattr(cfg, "gradient_checkpointing", False):
            self.adapter.set_gradient_checkpointing(True)
            self._undo.append(lambda: self.adapter.set_gradient_checkpointing(False))
        if hasattr(self.adapter, "set_attention") and getattr(cfg, "attention", None):
            self.adapter.set_attention(str(cfg.attention))
        self._setup_caches()
        self.schedule = NoiseSchedule()
        self.pred_type = self.adapter.info.prediction_type
        total_steps, total_epochs = int(self.plan["total_steps"]), int(self.plan["epochs"])
        accum = int(self.plan["gradient_accumulation_steps"])
        step, start_epoch, start_pos = self._start_optimization(self.groups, total_steps)
        max_norm, save_steps, save_epochs, sample_steps, sample_epochs = cadence(cfg)
        losses: list[float] = []
        last_loss: float | None = None
        t0, step0 = time.time(), step
        self.emit("status", message="training")
        for epoch in range(start_epoch, total_epochs):
            if step >= total_steps:
                break
            batches = self.dataset.batches_for_epoch(epoch, cfg.seed, dist.rank, dist.world_size)
            n_micro = int(self.plan["batches_per_epoch"])
            batches = batches[:n_micro]
            pos = start_pos if epoch == start_epoch else 0
            while pos < n_micro and step < total_steps:
                group = batches[pos:pos + accum]
                loss_sum, finite = 0.0, True
                for j, idx in enumerate(group):
                    if self._trace is not None:
                        self._trace.extend(int(i) for i in idx)
                    loss = self._micro_loss(list(idx), epoch, pos + j)
                    if not torch.isfinite(loss):
                        finite = False
                        break
                    loss_sum += float(loss.detach())
                    self.scaler.scale(loss / len(group)).backward()
                flags = self._agree(not finite, self.stop.requested, loss_sum / len(group))
                if flags[0]:
                    self._diverged(step + 1, epoch)
                self._optimizer_step(params, max_norm)
                pos += len(group)
                step += 1
                self._where = (epoch, pos, n_micro)
                last_loss = flags[2]
                losses.append(last_loss)
                self._progress(step, total_steps, epoch, total_epochs, losses, t0, step0)
                if save_steps and step % save_steps == 0 and step < total_steps:
                    self._periodic_save(step, epoch, pos, n_micro)
                if sample_steps and step % sample_steps == 0:
                    self._sample(step)
                if flags[1] or (not dist.enabled and self.stop.requested):
                    return self._stopped(step, epoch, pos, n_micro, last_loss)
            if pos >= n_micro and step < total_steps:
                if save_epochs and (epoch + 1) % save_epochs == 0:
                    self._periodic_save(step, epoch, pos, n_micro)
                if sample_epochs and (epoch + 1) % sample_epochs == 0:
                    self._sample(step)
        return self._finish(step, min(total_epochs, max(1, math.ceil(step / int(self.plan["steps_per_epoch"])))),
                            last_loss)

    def _write_trace(self, step: int) -> None:
        if self._trace is None or not self._trace_dir:
            return
        import json

        digest = hashlib.sha256()
        for p in self.params:
            digest.update(p.detach().float().cpu().numpy().tobytes())
        os.makedirs(self._trace_dir, exist_ok=True)
        path = os.path.join(self._trace_dir, f"rank{self.dist.rank}.json")
        atomic_write_text(path, json.dumps({"rank": self.dist.rank, "world_size": self.dist.world_size, "steps": step,
                                            "samples": self._trace, "lora_sha256": digest.hexdigest()}))

    def _agree(self, nan: bool, stop: bool, loss: float) -> tuple[bool, bool, float]:
        """One collective per step: any rank's NaN or stop request, and the mean loss."""
        if not self.dist.enabled:
            return nan, stop, loss
        import torch.distributed as tdist

        t = torch.tensor([float(nan), float(stop), 0.0 if nan else loss], dtype=torch.float64
                         if self.device.type == "cpu" else torch.float32, device=self.device)
        tdist.all_reduce(t)
        return bool(t[0] > 0), bool(t[1] > 0), float(t[2]) / self.dist.world_size

    def _progress(self, step: int, total: int, epoch: int, total_epochs: int, losses: list[float],
                  t0: float, step0: int) -> None:
        elapsed = max(1e-9, time.time() - t0)
        it_s = (step - step0) / elapsed
        window = losses[-50:]
        self.emit("progress", step=step, total_steps=total, epoch=epoch + 1, total_epochs=total_epochs,
                  loss=losses[-1], avg_loss=sum(window) / len(window), lr=self.scheduler.get_last_lr()[0],
                  it_per_s=it_s, eta_s=(total - step) / it_s if it_s > 0 else None)

    def _diverged(self, step: int, epoch: int) -> None:
        kept = f"the last good save is {self.last_save}" if self.last_save else "nothing was saved yet"
        msg = (f"loss became NaN/Inf at step {step} (epoch {epoch + 1}); training stopped and {kept}. "
               "Lower learning_rate, set max_grad_norm (e.g. 1.0), or use mixed_precision 'bf16' or 'no'")
        self.emit("error", message=msg, field="learning_rate")
        raise TrainingDiverged(msg)

    def _start_optimization(self, groups: list[dict[str, Any]], total_steps: int) -> tuple[int, int, int]:
        """Optimizer, scheduler and loss scaler (shared by the image and the LLM loops), then the
        resumed position: (step, epoch, position in the epoch)."""
        self.optimizer = build_optimizer(groups, self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.mp == "fp16")
        if self.resume_path:
            return self._resume(self.resume_path)
        return 0, 0, 0

    def _optimizer_step(self, params: list[torch.nn.Parameter], max_norm: float) -> None:
        """One optimizer step after the micro-batches' backward: average the gradients over the
        processes, unscale and clip, step, schedule, clear (shared with the LLM loop)."""
        self.dist.all_reduce_grads(params)
        if max_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _restore_optimization(self, state: dict[str, Any], path: str) -> tuple[int, int, int]:
        """Optimizer, scheduler, scaler and RNG from a loaded state (shared with the LLM loop);
        returns (step, epoch, position in the epoch)."""
        optim = state["optim"]
        self.optimizer.load_state_dict(optim["optimizer"])
        if optim.get("scheduler"):
            self.scheduler.load_state_dict(optim["scheduler"])
        if optim.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(optim["scaler"])
        ckpt.rng_restore(state["rng_tensors"], state.get("rng", {}))
        self.log(f"resumed from {os.path.basename(path)} at step {state['step']}")
        return int(state["step"]), int(state["epoch"]), int(state["position"])

    def _resume(self, path: str) -> tuple[int, int, int]:
        self.emit("status", message=f"resuming from {path}")
        state = ckpt.load_state(path)
        changed = ckpt.config_diff(state.get("config", {}), config_as_dict(self.cfg))
        if changed:
            self.log("resuming with changed settings (" + ", ".join(changed) + "); the result will differ "
                     "from an uninterrupted run", "warning")
        saved_world = int(state.get("world_size", 1) or 1)
        if saved_world != self.dist.world_size:
            self.log(f"the state was saved by {saved_world} process(es) and this run has {self.dist.world_size}: "
                     "data order differs from an uninterrupted run", "warning")
        report = self.network.load_kohya_state_dict(state["lora"])
        missing = getattr(report, "missing", None) if not isinstance(report, dict) else report.get("missing")
        if missing:
            raise ConfigError("resume_from_checkpoint", f"{path}: the saved LoRA lacks {len(missing)} module(s) "
                                                        "of this model (different model or network settings?)")
        return self._restore_optimization(state, path)

    def _stopped(self, step: int, epoch: int, pos: int, n_micro: int, loss: float | None) -> TrainResult:
        state = None
        if self.dist.is_main:
            state = self._save_state(step, epoch, pos, n_micro)
            self._save_lora(step, epoch, final=False)
        reason = self.stop.reason or "stop requested"
        self.emit("stopped", message=f"{reason}: stopped at step {step}; resume with "
                                     f"resume_from_checkpoint: latest (or --resume latest)", state_path=state)
        return TrainResult(self.last_save, step, epoch + 1, loss, state, True, self.samples)

    def _finish(self, step: int, epochs: int, loss: float | None) -> TrainResult:
        state = None
        if self.dist.is_main:
            if self.prompts and (not self.samples or not self.samples[0].endswith(f"{step:06d}-00.png")):
                self._sample(step)
            path = self._save_lora(step, epochs, final=True)
            if getattr(self.cfg, "save_state", True) and self._where is not None:
                state = self._save_state(step, *self._where)
            self._prune()
        else:
            path = ckpt.lora_path(self.out_dir, self.name)
        self._write_trace(step)
        self.dist.barrier()
        self.emit("done", output=path, steps=step, epochs=epochs, final_loss=loss, state_path=state,
                  samples=self.samples)
        return TrainResult(path, step, epochs, loss, state, False, self.samples)
