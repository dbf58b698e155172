"""LLM LoRA training: JSONL → tokens → PEFT LoRA on a causal LM → adapter folder (+ merged, GGUF).

A pure PyTorch loop built from the image trainer's parts (optimizers, schedulers, checkpoint/state
folders, distributed helpers, TensorBoard sink, events), so progress, logs, stop and resume behave
the same for both tasks. Data and tokenizer are checked before the model loads. Every micro-batch
reseeds the RNGs from (seed, epoch, position, rank), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from typing import Any

import torch

from lora_trainer.atomic import atomic_write_text
from lora_trainer.errors import ConfigError
from lora_trainer.events import EventSink, StopFlag, null_sink
from lora_trainer.llm import batches as B
from lora_trainer.train import checkpoint as ckpt
from lora_trainer.train.distributed import DistContext, init_from_env
from lora_trainer.train.loop import (
    Trainer,
    TrainResult,
    autocast_context,
    config_as_dict,
    derive_seed,
    ensure_config,
    output_name,
    seed_all,
)


def data_source(cfg: Any) -> str:
    """The JSONL file or folder: `train_data_dir`, or a .jsonl given as `metadata_path`."""
    path = getattr(cfg, "train_data_dir", None)
    meta = getattr(cfg, "metadata_path", None)
    if not path and meta and str(meta).endswith(".jsonl"):
        path = meta
    if not path:
        raise ConfigError("train_data_dir", "is required: a .jsonl file or a folder of .jsonl files")
    return str(path)


def prepare_data(cfg: Any, dist: DistContext | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Read, validate and tokenise the data and plan the run, without the model: (tokenizer, encoded, plan)."""
    from lora_trainer.llm.encode import apply_chat_template_setting, encode_records
    from lora_trainer.llm.model import check_base_model, load_tokenizer
    from lora_trainer.llm.records import read_records

    dist = dist or DistContext()
    source = check_base_model(getattr(cfg, "base_model", None))
    records = read_records(data_source(cfg))
    tokenizer = load_tokenizer(cfg, source)
    apply_chat_template_setting(tokenizer, getattr(cfg, "chat_template", None))
    encoded = encode_records(records, tokenizer, int(cfg.max_seq_length), bool(getattr(cfg, "packing", False)))
    bs = int(cfg.batch_size)
    accum = max(1, int(getattr(cfg, "gradient_accumulation_steps", 1) or 1))
    micro = len(B.micro_batches(len(encoded.examples), bs, int(cfg.seed), 0, 0, dist.world_size))
    steps_per_epoch = math.ceil(micro / accum)
    max_steps = getattr(cfg, "max_train_steps", None)
    if max_steps:
        total_steps, epochs = int(max_steps), math.ceil(int(max_steps) / steps_per_epoch)
    else:
        epochs = int(cfg.epochs)
        total_steps = steps_per_epoch * epochs
    kinds = {k: sum(1 for r in records if r.kind == k) for k in sorted({r.kind for r in records})}
    plan = {"task_type": "text-generation", "base_model": source, "records": len(records), "record_kinds": kinds,
            "examples": len(encoded.examples), "tokens": encoded.tokens, "trainable_tokens": encoded.trainable_tokens,
            "truncated": encoded.truncated, "skipped": len(encoded.skipped), "max_seq_length": int(cfg.max_seq_length),
            "packing": bool(getattr(cfg, "packing", False)), "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps, "epochs": epochs, "batches_per_epoch": micro,
            "gradient_accumulation_steps": accum, "world_size": dist.world_size,
            "effective_batch_size": bs * accum * dist.world_size}
    return tokenizer, encoded, plan


def plan_llm(cfg: Any) -> dict[str, Any]:
    """Dry run: the plan dict (loads only the tokenizer)."""
    return prepare_data(ensure_config(cfg))[2]


def train_llm(cfg: Any, *, emit: EventSink = null_sink, stop: StopFlag | None = None) -> TrainResult:
    """Train a PEFT LoRA on a causal LM as `cfg` says; `stop` (or Ctrl-C) ends it with a resumable state."""
    cfg = ensure_config(cfg)
    dist = init_from_env(str(getattr(cfg, "device", "auto") or "auto"))
    try:
        return LLMTrainer(cfg, emit=emit, stop=stop or StopFlag(), dist=dist).run()
    finally:
        dist.shutdown()


class LLMTrainer:
    """One LLM training run."""

    def __init__(self, cfg: Any, *, emit: EventSink, stop: StopFlag, dist: DistContext):
        self.cfg, self._emit, self.stop, self.dist = cfg, emit, stop, dist
        self.name = output_name(cfg)
        self.out_dir = os.path.abspath(cfg.output_dir)
        self.mp = str(getattr(cfg, "mixed_precision", "no") or "no")
        self.last_save: str | None = None
        self._tb: Any = None

    # the image trainer's event fan-out (rank 0 + TensorBoard), step agreement across ranks, progress
    # events and NaN handling apply unchanged: share them rather than copy them
    emit = Trainer.emit
    log = Trainer.log
    _agree = Trainer._agree
    _progress = Trainer._progress
    _diverged = Trainer._diverged
    _start_optimization = Trainer._start_optimization
    _restore_optimization = Trainer._restore_optimization
    _optimizer_step = Trainer._optimizer_step

    # ---- setup ----------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.cfg
        self.emit("status", message="checking data")
        self.tokenizer, self.encoded, self.plan = prepare_data(cfg, self.dist)
        for note in self.encoded.skipped[:20]:
            self.log(f"skipped {note}", "warning")
        if self.encoded.truncated:
            self.log(f"{self.encoded.truncated} example(s) longer than max_seq_length ({cfg.max_seq_length}) "
                     "were cut; raise max_seq_length or use packing", "warning")
        resume = getattr(cfg, "resume_from_checkpoint", None)
        self.resume_path = (ckpt.resolve_resume(resume, self.out_dir, self.name, warn=lambda m: self.log(m, "warning"))
                            if resume else None)
        self.device = self.dist.device(str(getattr(cfg, "device", "auto") or "auto"))
        if self.mp == "fp16" and self.device.type == "cpu":
            raise ConfigError("mixed_precision", "fp16 needs a CUDA GPU; on CPU use 'bf16' or 'no'")
        self.emit("plan", **self.plan)
        if self.dist.is_main:
            from lora_trainer.train.tensorboard import make_tensorboard_sink

            self._tb = make_tensorboard_sink(getattr(cfg, "logging_dir", None) or os.path.join(self.out_dir, "logs"))
        try:
            self._build_model()
            return self._train()
        finally:
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    def _build_model(self) -> None:
        from lora_trainer.llm.model import load_base_model, wrap_lora

        cfg = self.cfg
        self.emit("status", message=f"loading model {self.plan['base_model']}")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mp, torch.float32)
        base = load_base_model(cfg, self.plan["base_model"], dtype, self.device)
        self.quantised = bool(getattr(cfg, "load_in_4bit", False) or getattr(cfg, "load_in_8bit", False))
        if getattr(cfg, "gradient_checkpointing", False) and not self.quantised:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        seed_all(int(cfg.seed))
        self.model = wrap_lora(base, cfg)
        if getattr(cfg, "network_weights", None):
            self._load_initial_adapter(str(cfg.network_weights))
        self.model.train()
        self.named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.params = list(self.named.values())
        self.dist.broadcast_params(self.params)
        n = sum(p.numel() for p in self.params)
        targets = sorted(self.model.peft_config["default"].target_modules)
        self.log(f"LoRA: {n:,} trainable parameters in {', '.join(targets)} on {self.device}")

    def _load_initial_adapter(self, path: str) -> None:
        """`network_weights`: continue from an adapter folder (or its adapter_model.safetensors)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        file = os.path.join(path, "adapter_model.safetensors") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise ConfigError("network_weights", f"{path} is not a PEFT adapter folder (no adapter_model.safetensors)")
        try:
            result = set_peft_model_state_dict(self.model, load_file(file))
        except RuntimeError as exc:  # shape mismatch: another rank or another base model
            raise ConfigError("network_weights", f"{path} does not fit this model ({exc}); use the same "
                              "base_model and lora_rank it was trained with") from exc
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise ConfigError("network_weights", f"{path} does not fit this model and target_modules "
                              f"({len(unexpected)} unknown tensors, e.g. {unexpected[0]})")
        self.log(f"continuing from adapter {path}")

    # ---- saving ---------------------------------------------------------------------------------
    def _adapter_path(self, step: int | None) -> str:
        return os.path.join(self.out_dir, self.name if step is None else f"{self.name}-{step:06d}")

    def _save_adapter(self, step: int, final: bool) -> str:
        from lora_trainer.llm.export import save_adapter

        precision = "fp32" if not final else str(getattr(self.cfg, "save_precision", "fp16") or "fp16")
        path = save_adapter(self.model, self.tokenizer, self._adapter_path(None if final else step), precision,
                            {"lora_trainer.steps": str(step), "lora_trainer.base_model": str(self.cfg.base_model)})
        self.emit("checkpoint", step=step, path=path, kind="lora")
        self.last_save = path
        return path

    def _save_state(self, step: int, epoch: int, pos: int) -> str:
        path = ckpt.save_state(ckpt.state_path(self.out_dir, self.name, step),
                               lora_state={n: p.detach() for n, p in self.named.items()}, optimizer=self.optimizer,
                               scheduler=self.scheduler, scaler=self.scaler, step=step, epoch=epoch, position=pos,
                               config=config_as_dict(self.cfg), extra={"task_type": "text-generation"})
        self.emit("checkpoint", step=step, path=path, kind="state")
        return path

    def _periodic_save(self, step: int, epoch: int, pos: int) -> None:
        if self.dist.is_main:
            self._save_adapter(step, final=False)
            if getattr(self.cfg, "save_state", True):
                self._save_state(step, epoch, pos)
            self._prune()
        self.dist.barrier()

    def _prune(self) -> None:
        keep = getattr(self.cfg, "save_last_n", None)
        if not keep or keep <= 0:
            return
        pat = re.compile(rf"^{re.escape(self.name)}-(\d{{6,}})$")
        found = sorted((int(m.group(1)), d) for d in os.listdir(self.out_dir) if (m := pat.match(d)))
        for _, d in found[:-keep]:
            shutil.rmtree(os.path.join(self.out_dir, d), ignore_errors=True)
            self.log(f"removed old save {d}")
        for removed in ckpt.prune(self.out_dir, self.name, keep):
            self.log(f"removed old save {os.path.basename(removed)}")

    # ---- resume ---------------------------------------------------------------------------------
    def _resume(self, path: str) -> tuple[int, int, int]:
        self.emit("status", message=f"resuming from {path}")
        state = ckpt.load_state(path)
        if state.get("task_type") != "text-generation":
            raise ConfigError("resume_from_checkpoint", f"{path} is the state of an image LoRA run, not an LLM run")
        changed = ckpt.config_diff(state.get("config", {}), config_as_dict(self.cfg))
        if changed:
            self.log("resuming with changed settings (" + ", ".join(changed) + "); the result will differ "
                     "from an uninterrupted run", "warning")
        saved = state["lora"]
        if set(saved) != set(self.named):
            raise ConfigError("resume_from_checkpoint", f"{path}: saved LoRA weights do not match this model's "
                              "(different base model, target_modules or lora_rank?)")
        with torch.no_grad():
            for name, p in self.named.items():
                if saved[name].shape != p.shape:
                    raise ConfigError("resume_from_checkpoint", f"{path}: {name} has shape "
                                      f"{tuple(saved[name].shape)}, this run {tuple(p.shape)} (lora_rank changed?)")
                p.copy_(saved[name].to(p.device, p.dtype))
        return self._restore_optimization(state, path)

    # ---- the loop -------------------------------------------------------------------------------
    def _group_loss(self, group: list[list[int]], epoch: int, pos: int) -> tuple[float, bool]:
        """Forward/backward one optimizer step's micro-batches; loss averaged over all their tokens."""
        pad = int(self.tokenizer.pad_token_id or 0)  # padding never reaches the loss (labels -100, mask 0)
        batches = [B.collate([self.encoded.examples[i] for i in idx], pad, self.device) for idx in group]
        n_tokens = max(1, sum(B.target_count(b) for b in batches))
        total = 0.0
        for j, batch in enumerate(batches):
            seed_all(derive_seed(self.cfg.seed, epoch, pos + j, self.dist.rank) % (2 ** 32))
            with autocast_context(self.device, self.mp):
                loss = B.summed_loss(self.model, batch) / n_tokens
            if not torch.isfinite(loss):
                return float("nan"), False
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        return total, True

    def _train(self) -> TrainResult:
        from lora_trainer.train.loop import cadence

        cfg, dist = self.cfg, self.dist
        total_steps, total_epochs = int(self.plan["total_steps"]), int(self.plan["epochs"])
        accum, n_micro = int(self.plan["gradient_accumulation_steps"]), int(self.plan["batches_per_epoch"])
        groups = [{"params": self.params, "lr": float(cfg.learning_rate)}]
        step, start_epoch, start_pos = self._start_optimization(groups, total_steps)
        max_norm, save_steps, save_epochs, sample_steps, sample_epochs = cadence(cfg)
        losses: list[float] = []
        last_loss: float | None = None
        epoch, pos = start_epoch, start_pos
        t0, step0 = time.time(), step
        self.emit("status", message="training")
        for epoch in range(start_epoch, total_epochs):
            if step >= total_steps:
                break
            batches = B.micro_batches(len(self.encoded.examples), int(cfg.batch_size), int(cfg.seed), epoch,
                                      dist.rank, dist.world_size)[:n_micro]
            pos = start_pos if epoch == start_epoch else 0
            while pos < n_micro and step < total_steps:
                group = batches[pos:pos + accum]
                try:
                    loss, finite = self._group_loss(group, epoch, pos)
                except KeyboardInterrupt:
                    self.optimizer.zero_grad(set_to_none=True)
                    self.stop.request("interrupted (Ctrl-C)")
                    return self._stopped(step, epoch, pos, last_loss)
                nan, stop, loss = self._agree(not finite, self.stop.requested, loss)
                if nan:
                    self._diverged(step + 1, epoch)
                self._optimizer_step(self.params, max_norm)
                pos += len(group)
                step += 1
                last_loss = loss
                losses.append(loss)
                self._progress(step, total_steps, epoch, total_epochs, losses, t0, step0)
                if save_steps and step % save_steps == 0 and step < total_steps:
                    self._periodic_save(step, epoch, pos)
                if sample_steps and step % sample_steps == 0:
                    self._sample(step)
                if stop:
                    return self._stopped(step, epoch, pos, last_loss)
            if pos >= n_micro and step < total_steps:
                if save_epochs and (epoch + 1) % save_epochs == 0:
                    self._periodic_save(step, epoch, pos)
                if sample_epochs and (epoch + 1) % sample_epochs == 0:
                    self._sample(step)
        epochs_done = min(total_epochs, max(1, math.ceil(step / int(self.plan["steps_per_epoch"]))))
        return self._finish(step, epochs_done, last_loss, epoch, pos)

    def _sample(self, step: int) -> None:
        """Text samples for `sample_prompts` (greedy), logged and written to samples/<name>-<step>.txt."""
        prompts = self.cfg.sample_prompt_list() if hasattr(self.cfg, "sample_prompt_list") else []
        if not self.dist.is_main or not prompts:
            return
        from lora_trainer.llm.generate import generate_text

        chat = any(k != "text" for k in self.plan.get("record_kinds", {}))
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                outs = [generate_text(self.model, self.tokenizer, p, max_new_tokens=48, chat=chat) for p in prompts]
        finally:
            self.model.train()
        path = os.path.join(self.out_dir, "samples", f"{self.name}-{step:06d}.txt")
        atomic_write_text(path, "".join(f"### {p}\n{o}\n\n" for p, o in zip(prompts, outs, strict=True)))
        for p, o in zip(prompts, outs, strict=True):
            self.log(f"sample @ step {step}: {p!r} → {o!r}")

    def _stopped(self, step: int, epoch: int, pos: int, loss: float | None) -> TrainResult:
        state = None
        if self.dist.is_main:
            state = self._save_state(step, epoch, pos)
            self._save_adapter(step, final=False)
        self.dist.barrier()
        reason = self.stop.reason or "stop requested"
        self.emit("stopped", message=f"{reason}: stopped at step {step}; resume with "
                                     "resume_from_checkpoint: latest (or --resume latest)", state_path=state)
        return TrainResult(self.last_save, step, epoch + 1, loss, state, True)

    def _finish(self, step: int, epochs: int, loss: float | None, epoch: int, pos: int) -> TrainResult:
        state, extra = None, {}
        path = self._adapter_path(None)
        if self.dist.is_main:
            path = self._save_adapter(step, final=True)
            if getattr(self.cfg, "save_state", True):
                state = self._save_state(step, epoch, pos)
            self._prune()
            extra = self._exports(path)
        self.dist.barrier()
        self.emit("done", output=path, steps=step, epochs=epochs, final_loss=loss, state_path=state, **extra)
        return TrainResult(path, step, epochs, loss, state, False)

    def _exports(self, adapter_dir: str) -> dict[str, str]:
        """GGUF LoRA and merged model, when asked for (merging last: it changes the model)."""
        from lora_trainer.llm import export

        cfg, out = self.cfg, {}
        precision = str(getattr(cfg, "save_precision", "fp16") or "fp16")
        if getattr(cfg, "gguf_output", False):
            from lora_trainer.llm.gguf_export import export_gguf_lora

            self.emit("status", message="writing GGUF LoRA")
            lcfg = self.model.peft_config["default"]
            base_config = self.model.get_base_model().config
            out["gguf"] = export_gguf_lora(os.path.join(self.out_dir, f"{self.name}.gguf"),
                                           export.adapter_state(self.model, "fp32"), base_config,
                                           float(lcfg.lora_alpha), "fp32" if precision == "fp32" else "fp16",
                                           self.name)
            self.log(f"GGUF LoRA written: {out['gguf']} (llama.cpp: --lora {os.path.basename(out['gguf'])})")
        if getattr(cfg, "merge_output", False):
            self.emit("status", message="writing merged model")
            merged = os.path.join(self.out_dir, f"{self.name}-merged")
            if self.quantised:
                export.merge_from_files(self.plan["base_model"], adapter_dir, merged, precision,
                                        cache_dir=getattr(cfg, "model_cache_dir", None))
            else:
                export.save_merged(self.model, self.tokenizer, merged, precision)
            out["merged"] = merged
            self.log(f"merged model written: {merged}")
        return out

