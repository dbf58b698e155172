"""The training engine: one loop for every task, with the task's work behind named hooks.

A `Task` (image LoRA in `train/image.py`, LLM LoRA in `llm/trainer.py`) knows its data, model and
files; the `Engine` owns what is the same for all of them: the optimizer, scheduler and loss scaler,
gradient accumulation, the one collective per step of multi-process runs, NaN handling, progress
events, the save/sample cadence, stop and resume. `Engine._train` is the whole step, top to bottom.

Invariants (resume equality rests on them):
- every micro-batch reseeds every RNG from (seed, epoch, position, rank) inside the task's
  `micro_losses`, so a run stopped at a step boundary and resumed computes what the uninterrupted
  run computes;
- a state is saved only at a step boundary, with the position of the next micro-batch (an epoch's
  end is saved as the next epoch's start);
- only rank 0 writes files; every rank takes the same decisions (NaN, stop) from one all-reduce;
- the EMA of the weights (`train/ema.py`) and the last validation loss are part of the state; the
  validation loss (rank 0, fixed inputs, `Task.validation_loss`) draws nothing from the training RNGs.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lora_trainer.atomic import atomic_write_text
from lora_trainer.config import TrainConfig, load_config
from lora_trainer.errors import ConfigError, UserError
from lora_trainer.events import Event, EventSink, StopFlag
from lora_trainer.train import checkpoint as ckpt
from lora_trainer.train.distributed import DistContext
from lora_trainer.train.ema import WeightEMA
from lora_trainer.train.optim import build_optimizer, build_scheduler

STATES_KEPT = 2  # resumable states kept when save_last_n is empty


@dataclass
class TrainResult:
    output_path: str | None
    steps: int
    epochs: int
    final_loss: float | None
    state_path: str | None
    stopped: bool
    samples: list[str] = dataclasses.field(default_factory=list)
    val_loss: float | None = None  # the last validation loss (None: no held-out set)


class TrainingDiverged(UserError):
    """The loss became NaN/Inf; the run stops and keeps its last good save."""


def ensure_config(cfg: TrainConfig | str | os.PathLike[str] | Mapping[str, Any]) -> TrainConfig:
    """Accept a TrainConfig, a dict or a YAML path (the public entry points take any of them)."""
    return cfg if isinstance(cfg, TrainConfig) else load_config(cfg)


class Task(abc.ABC):
    """What one kind of training plugs into the engine (cf. kohya's NetworkTrainer hooks).

    Call order: `prepare` (data and plan, no model) → `setup` (model and LoRA; sets `device`,
    returns the optimizer's parameter groups) → per step `epoch_batches` / `micro_losses` → saves
    through `save_weights` / `weights_state`; `teardown` always runs last.
    """

    checking: str = "checking data"  # the status line while `prepare` runs

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.engine: Engine | None = None
        self.device = torch.device("cpu")

    @property
    def run(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("the task is not attached to an Engine")
        return self.engine

    @abc.abstractmethod
    def prepare(self) -> dict[str, Any]:
        """Read and check the data and plan the run without the model; the plan dict has at least
        total_steps, epochs, steps_per_epoch, batches_per_epoch, gradient_accumulation_steps."""

    @abc.abstractmethod
    def setup(self) -> list[dict[str, Any]]:
        """Load the model, attach the LoRA, set `self.device`; returns the optimizer's param groups."""

    @abc.abstractmethod
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's micro-batches (sample ids) of `epoch`, in order."""

    @abc.abstractmethod
    def micro_losses(self, group: list[list[int]], epoch: int, pos: int) -> Iterator[torch.Tensor]:
        """One loss per micro-batch of an optimizer step, each already weighted so that their sum is
        the step's loss; the engine runs backward on each before asking for the next."""

    @abc.abstractmethod
    def save_weights(self, step: int, epoch: int, final: bool) -> str:
        """Write the LoRA (an intermediate file, or the final one); returns its path."""

    @abc.abstractmethod
    def weights_state(self) -> dict[str, torch.Tensor]:
        """The trainable weights, in float32, for a resumable state."""

    @abc.abstractmethod
    def load_weights_state(self, saved: dict[str, torch.Tensor], path: str) -> None:
        """Put saved weights back (ConfigError naming resume_from_checkpoint when they do not fit)."""

    def validation_loss(self) -> float | None:
        """The loss on the held-out set with fixed noise and timesteps (None: the run has no held-out set)."""
        return None

    def sample(self, step: int, final: bool = False) -> None:  # noqa: B027 - optional hook
        """Sample outputs with the LoRA as it is at `step` (`final`: after the last step)."""

    def prune(self, keep: int | None) -> list[str]:
        """Remove old intermediate saves (LoRA files/folders and states); returns what was removed."""
        return ckpt.prune(self.run.out_dir, self.run.name, keep, keep_states=keep or STATES_KEPT)

    def final_path(self) -> str:
        """Where the final LoRA is (or will be) written."""
        return ckpt.lora_path(self.run.out_dir, self.run.name)

    def exports(self, path: str) -> dict[str, str]:
        """Extra outputs written after the final save (event keys → paths)."""
        return {}

    def teardown(self) -> None:  # noqa: B027 - optional hook
        """Put borrowed models back as they were (runs after success, stop or error)."""


class Engine:
    """One training run of a `Task`; `run()` does it all."""

    def __init__(self, task: Task, *, emit: EventSink, stop: StopFlag, dist: DistContext):
        self.task, self.cfg = task, task.cfg
        task.engine = self
        self._emit, self.stop, self.dist = emit, stop, dist
        self.name = self.cfg.effective_output_name
        self.out_dir = os.path.abspath(self.cfg.output_dir or ".")
        self.mp = self.cfg.mixed_precision
        self.last_save: str | None = None
        self.last_state: str | None = None
        self.samples: list[str] = []
        self.started_at = time.time()
        self.plan: dict[str, Any] = {}
        self.resume_path: str | None = None
        self._where: tuple[int, int, int] | None = None  # (epoch, next position, batches in epoch)
        self._tb: Any = None
        self.ema: WeightEMA | None = None
        self.val_loss: float | None = None  # the last validation loss (kept in the state)
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
        cfg, task = self.cfg, self.task
        for note in cfg.notes:
            self.log(note, "warning")
        self.emit("status", message=task.checking)
        self.plan = task.prepare()
        if cfg.resume_from_checkpoint:
            self.resume_path = ckpt.resolve_resume(cfg.resume_from_checkpoint, self.out_dir, self.name,
                                                   warn=lambda m: self.log(m, "warning"))
        self.emit("plan", **self.plan)
        try:
            groups = task.setup()
            if self.dist.is_main:
                from lora_trainer.train.tensorboard import make_tensorboard_sink

                self._tb = make_tensorboard_sink(cfg.effective_logging_dir or os.path.join(self.out_dir, "logs"))
            return self._train(groups)
        finally:
            task.teardown()
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    def _train(self, groups: list[dict[str, Any]]) -> TrainResult:
        """The step, top to bottom: batches → forward/backward per micro-batch → one agreement across
        processes → optimizer step → progress → save / sample / stop."""
        cfg, task, plan = self.cfg, self.task, self.plan
        params = [p for g in groups for p in g["params"]]
        self.params = params
        total_steps, total_epochs = int(plan["total_steps"]), int(plan["epochs"])
        accum, n_micro = int(plan["gradient_accumulation_steps"]), int(plan["batches_per_epoch"])
        step, start_epoch, start_pos = self._start_optimization(groups, total_steps)
        losses: list[float] = []
        last_loss: float | None = None
        t0, step0 = time.time(), step
        self.emit("status", message="training")
        for epoch in range(start_epoch, total_epochs):
            if step >= total_steps:
                break
            batches = task.epoch_batches(epoch)[:n_micro]
            pos = start_pos if epoch == start_epoch else 0
            while pos < n_micro and step < total_steps:
                group = batches[pos:pos + accum]
                try:
                    loss, finite = self._forward_backward(group, epoch, pos)
                except KeyboardInterrupt:  # Ctrl-C inside a step: drop its gradients, keep the last step
                    self.optimizer.zero_grad(set_to_none=True)
                    self.stop.request("interrupted (Ctrl-C)")
                    return self._stopped(step, epoch, pos, n_micro, last_loss)
                nan, stop, loss = self._agree(not finite, self.stop.requested, loss)
                if nan:
                    self._diverged(step + 1, epoch)
                self._optimizer_step(params)
                self._update_ema()
                pos += len(group)
                step += 1
                self._where = (epoch, pos, n_micro)
                last_loss = loss
                losses.append(loss)
                val_loss = self._validate(step, total_steps, epoch_end=pos >= n_micro)
                self._progress(step, total_steps, epoch, total_epochs, losses, t0, step0, val_loss)
                if cfg.save_steps and step % cfg.save_steps == 0 and step < total_steps:
                    self._periodic_save(step, epoch, pos, n_micro)
                if cfg.sample_every_n_steps and step % cfg.sample_every_n_steps == 0:
                    task.sample(step)
                # single process: a stop asked for during this step's events ends it now
                if stop or (not self.dist.enabled and self.stop.requested):
                    return self._stopped(step, epoch, pos, n_micro, last_loss)
            if pos >= n_micro and step < total_steps:
                if cfg.save_every_n_epochs and (epoch + 1) % cfg.save_every_n_epochs == 0:
                    self._periodic_save(step, epoch, pos, n_micro)
                if cfg.sample_every_n_epochs and (epoch + 1) % cfg.sample_every_n_epochs == 0:
                    task.sample(step)
        epochs_done = min(total_epochs, max(1, math.ceil(step / int(plan["steps_per_epoch"]))))
        return self._finish(step, epochs_done, last_loss)

    def _forward_backward(self, group: list[list[int]], epoch: int, pos: int) -> tuple[float, bool]:
        """Backward of every micro-batch of one optimizer step; (summed loss, all finite)."""
        if self._trace is not None:
            self._trace.extend(int(i) for idx in group for i in idx)
        # the loss stays on the device until every backward is queued: one host sync per step (a
        # GPU keeps running the backward while the host waits), not two per micro-batch. A
        # non-finite loss is still caught before the optimizer step, which it would reach.
        total: torch.Tensor | None = None
        for loss in self.task.micro_losses(group, epoch, pos):
            self.scaler.scale(loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if total is None:
            return 0.0, True
        value = float(total)
        return value, math.isfinite(value)

    # ---- optimization -----------------------------------------------------------------------
    def _start_optimization(self, groups: list[dict[str, Any]], total_steps: int) -> tuple[int, int, int]:
        """Optimizer, scheduler and loss scaler, then the resumed position: (step, epoch, position)."""
        self.optimizer = build_optimizer(groups, self.cfg)
        self.scheduler = build_scheduler(self.optimizer, self.cfg, total_steps)
        self.scaler = torch.amp.GradScaler(self.task.device.type, enabled=self.mp == "fp16")
        if self.cfg.ema_decay is not None:
            self.ema = WeightEMA([p for g in groups for p in g["params"]], self.cfg.ema_decay, self.cfg.ema_on_cpu)
        if self.resume_path:
            return self._resume(self.resume_path)
        return 0, 0, 0

    def _optimizer_step(self, params: list[torch.nn.Parameter]) -> None:
        """Average the gradients over the processes, unscale and clip, step, schedule, clear."""
        self.dist.all_reduce_grads(params)
        if self.cfg.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _update_ema(self) -> None:
        if self.ema is not None:
            self.ema.update()

    def _validate(self, step: int, total_steps: int, epoch_end: bool) -> float | None:
        """The held-out loss when it is due (every validation_every_n_steps, else each epoch's end, and
        after the last step); rank 0 computes it, on the weights as they are after this step."""
        every = self.cfg.validation_every_n_steps
        due = (step % every == 0) if every else epoch_end
        if not self.dist.is_main or not (due or step >= total_steps):
            return None
        value = self.task.validation_loss()
        if value is not None:
            self.val_loss = value
        return value

    def _agree(self, nan: bool, stop: bool, loss: float) -> tuple[bool, bool, float]:
        """One collective per step: any rank's NaN or stop request, and the mean loss."""
        if not self.dist.enabled:
            return nan, stop, loss
        import torch.distributed as tdist

        dev = self.task.device
        t = torch.tensor([float(nan), float(stop), 0.0 if nan else loss],
                         dtype=torch.float64 if dev.type == "cpu" else torch.float32, device=dev)
        tdist.all_reduce(t)
        return bool(t[0] > 0), bool(t[1] > 0), float(t[2]) / self.dist.world_size

    def _progress(self, step: int, total: int, epoch: int, total_epochs: int, losses: list[float],
                  t0: float, step0: int, val_loss: float | None = None) -> None:
        elapsed = max(1e-9, time.time() - t0)
        it_s = (step - step0) / elapsed
        window = losses[-50:]
        extra = {"val_loss": val_loss} if val_loss is not None else {}
        self.emit("progress", step=step, total_steps=total, epoch=epoch + 1, total_epochs=total_epochs,
                  loss=losses[-1], avg_loss=sum(window) / len(window), lr=self.scheduler.get_last_lr()[0],
                  it_per_s=it_s, eta_s=(total - step) / it_s if it_s > 0 else None, **extra)

    def _diverged(self, step: int, epoch: int) -> None:
        kept = f"the last good save is {self.last_save}" if self.last_save else "nothing was saved yet"
        msg = (f"loss became NaN/Inf at step {step} (epoch {epoch + 1}); training stopped and {kept}. "
               "Lower learning_rate, set max_grad_norm (e.g. 1.0), or use mixed_precision 'bf16' or 'no'")
        self.emit("error", message=msg, field="learning_rate")
        raise TrainingDiverged(msg)

    # ---- saves --------------------------------------------------------------------------------
    def _save_weights(self, step: int, epoch: int, final: bool) -> str:
        """The task's LoRA file, of the EMA weights when save_ema asks for them."""
        if self.cfg.save_ema and self.ema is not None:
            with self.ema.swapped():
                path = self.task.save_weights(step, epoch, final)
        else:
            path = self.task.save_weights(step, epoch, final)
        self.emit("checkpoint", step=step, path=path, kind="lora")
        self.last_save = path
        return path

    def _save_state(self, step: int, epoch: int, pos: int, n_micro: int) -> str:
        if pos >= n_micro:  # an epoch boundary: resume at the next epoch's start
            epoch, pos = epoch + 1, 0
        path = ckpt.state_path(self.out_dir, self.name, step)
        ckpt.save_state(path, lora_state=self.task.weights_state(), optimizer=self.optimizer,
                        scheduler=self.scheduler, scaler=self.scaler, step=step, epoch=epoch, position=pos,
                        config=self.cfg.to_dict(),
                        extra={"task_type": self.cfg.task_type, "output_name": self.name,
                               "world_size": self.dist.world_size, "val_loss": self.val_loss},
                        ema=self.ema.state() if self.ema is not None else None)
        self.emit("checkpoint", step=step, path=path, kind="state")
        self.last_state = path
        return path

    def _prune(self) -> None:
        # every LoRA is kept unless save_last_n says otherwise; resumable states (optimizer included,
        # ~3x the LoRA in size) keep the last save_last_n, or the last 2 when it is empty
        for removed in self.task.prune(self.cfg.save_last_n):
            self.log(f"removed old save {os.path.basename(removed)}")

    def _periodic_save(self, step: int, epoch: int, pos: int, n_micro: int) -> None:
        if self.dist.is_main:
            self._save_weights(step, epoch, final=False)
            if self.cfg.save_state:
                self._save_state(step, epoch, pos, n_micro)
            self._prune()
        self.dist.barrier()

    def _resume(self, path: str) -> tuple[int, int, int]:
        """Weights, optimizer, scheduler, scaler and RNG from a state: (step, epoch, position)."""
        self.emit("status", message=f"resuming from {path}")
        state = ckpt.load_state(path)
        saved_task = state.get("task_type") or "text-to-image"  # image states of older releases have none
        if saved_task != self.cfg.task_type:
            raise ConfigError("resume_from_checkpoint", f"{path} is the state of a {saved_task} run, not of this "
                                                        f"{self.cfg.task_type} run")
        changed = ckpt.config_diff(state.get("config", {}), self.cfg.to_dict())
        if changed:
            self.log("resuming with changed settings (" + ", ".join(changed) + "); the result will differ "
                     "from an uninterrupted run", "warning")
        saved_world = int(state.get("world_size", 1) or 1)
        if saved_world != self.dist.world_size:
            self.log(f"the state was saved by {saved_world} process(es) and this run has {self.dist.world_size}: "
                     "data order differs from an uninterrupted run", "warning")
        self.task.load_weights_state(state["lora"], path)
        optim = state["optim"]
        self.optimizer.load_state_dict(optim["optimizer"])
        if optim.get("scheduler"):
            self.scheduler.load_state_dict(optim["scheduler"])
        if optim.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(optim["scaler"])
        ckpt.rng_restore(state["rng_tensors"], state.get("rng", {}))
        self._resume_ema(state.get("ema"), path)
        self.val_loss = state.get("val_loss")
        self.log(f"resumed from {os.path.basename(path)} at step {state['step']}")
        return int(state["step"]), int(state["epoch"]), int(state["position"])

    def _resume_ema(self, saved: dict[str, torch.Tensor] | None, path: str) -> None:
        if self.ema is None:
            return
        if saved is None:
            self.log("the state has no EMA weights (ema_decay was off); the EMA starts from the resumed weights",
                     "warning")
            self.ema = WeightEMA(self.ema.params, self.ema.decay, self.cfg.ema_on_cpu)
            return
        self.ema.load_state(saved, path)

    # ---- the end --------------------------------------------------------------------------------
    def _stopped(self, step: int, epoch: int, pos: int, n_micro: int, loss: float | None) -> TrainResult:
        state = None
        if self.dist.is_main:
            state = self._save_state(step, epoch, pos, n_micro)
            self._save_weights(step, epoch, final=False)
        self.dist.barrier()
        reason = self.stop.reason or "stop requested"
        self.emit("stopped", message=f"{reason}: stopped at step {step}; resume with "
                                     f"resume_from_checkpoint: latest (or --resume latest)", state_path=state)
        return TrainResult(self.last_save, step, epoch + 1, loss, state, True, self.samples, self.val_loss)

    def _finish(self, step: int, epochs: int, loss: float | None) -> TrainResult:
        state, extra = None, {}
        if self.dist.is_main:
            self.task.sample(step, final=True)
            path = self._save_weights(step, epochs, final=True)
            if self.cfg.save_state and self._where is not None:
                state = self._save_state(step, *self._where)
            self._prune()
            extra = self.task.exports(path)
        else:
            path = self.task.final_path()
        self._write_trace(step)
        self.dist.barrier()
        if self.val_loss is not None:
            extra["val_loss"] = self.val_loss
        self.emit("done", output=path, steps=step, epochs=epochs, final_loss=loss, state_path=state,
                  samples=self.samples, **extra)
        return TrainResult(path, step, epochs, loss, state, False, self.samples, self.val_loss)

    def _write_trace(self, step: int) -> None:
        if self._trace is None or not self._trace_dir:
            return
        digest = hashlib.sha256()
        for p in self.params:
            digest.update(p.detach().float().cpu().numpy().tobytes())
        os.makedirs(self._trace_dir, exist_ok=True)
        atomic_write_text(os.path.join(self._trace_dir, f"rank{self.dist.rank}.json"),
                          json.dumps({"rank": self.dist.rank, "world_size": self.dist.world_size, "steps": step,
                                      "samples": self._trace, "lora_sha256": digest.hexdigest()}))
