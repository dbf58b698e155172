"""LLM LoRA training (`task_type: text-generation`): JSONL → tokens → PEFT LoRA on a causal LM → adapter
folder (+ merged, GGUF), as a `Task` of the one training engine.

The engine (optimizer, scheduler, accumulation, stop/resume, events) is the image trainer's, so
progress, logs, stop and resume behave the same for both tasks. Data and tokenizer are checked
before the model loads. Each micro-batch reseeds the RNGs from (seed, epoch, position, rank), so a
resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import torch

from lora_trainer.atomic import atomic_write_text
from lora_trainer.config import TrainConfig
from lora_trainer.errors import ConfigError
from lora_trainer.events import EventSink, StopFlag, null_sink
from lora_trainer.llm import batches as B
from lora_trainer.train import checkpoint as ckpt
from lora_trainer.train.common import autocast_context, check_device, derive_seed, seed_all
from lora_trainer.train.distributed import DistContext, process_group
from lora_trainer.train.engine import Engine, Task, TrainResult, ensure_config


def data_source(cfg: TrainConfig) -> str:
    """The JSONL file or folder: `train_data_dir`, or a .jsonl given as `metadata_path`."""
    path, meta = cfg.train_data_dir, cfg.metadata_path
    if not path and meta and meta.endswith(".jsonl"):
        path = meta
    if not path:
        raise ConfigError("train_data_dir", "is required: a .jsonl file or a folder of .jsonl files")
    return str(path)


def prepare_data(cfg: TrainConfig, dist: DistContext | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Read, validate and tokenise the data and plan the run, without the model: (tokenizer, encoded, plan)."""
    from lora_trainer.llm.encode import apply_chat_template_setting, encode_records
    from lora_trainer.llm.model import check_base_model, load_tokenizer
    from lora_trainer.llm.records import read_records

    dist = dist or DistContext()
    check_device(cfg.device)
    source = check_base_model(cfg.base_model)
    records = read_records(data_source(cfg))
    tokenizer = load_tokenizer(cfg, source)
    apply_chat_template_setting(tokenizer, cfg.chat_template)
    encoded = encode_records(records, tokenizer, int(cfg.max_seq_length), cfg.packing)
    bs = int(cfg.batch_size)
    accum = cfg.gradient_accumulation_steps
    micro = len(B.micro_batches(len(encoded.examples), bs, int(cfg.seed), 0, 0, dist.world_size))
    steps_per_epoch = math.ceil(micro / accum)
    max_steps = cfg.max_train_steps
    if max_steps:
        total_steps, epochs = int(max_steps), math.ceil(int(max_steps) / steps_per_epoch)
    else:
        epochs = int(cfg.epochs)
        total_steps = steps_per_epoch * epochs
    kinds = {k: sum(1 for r in records if r.kind == k) for k in sorted({r.kind for r in records})}
    plan = {"task_type": "text-generation", "base_model": source, "records": len(records), "record_kinds": kinds,
            "examples": len(encoded.examples), "tokens": encoded.tokens, "trainable_tokens": encoded.trainable_tokens,
            "truncated": encoded.truncated, "skipped": len(encoded.skipped), "max_seq_length": int(cfg.max_seq_length),
            "packing": cfg.packing, "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps, "epochs": epochs, "batches_per_epoch": micro,
            "gradient_accumulation_steps": accum, "world_size": dist.world_size,
            "effective_batch_size": bs * accum * dist.world_size}
    return tokenizer, encoded, plan


def plan_llm(cfg: TrainConfig) -> dict[str, Any]:
    """Dry run: the plan dict (loads only the tokenizer)."""
    return prepare_data(ensure_config(cfg))[2]


def train_llm(cfg: TrainConfig, *, emit: EventSink = null_sink, stop: StopFlag | None = None) -> TrainResult:
    """Train a PEFT LoRA on a causal LM as `cfg` says; `stop` (or Ctrl-C) ends it with a resumable state."""
    cfg = ensure_config(cfg)
    with process_group(cfg.device) as dist:
        return Engine(LLMTask(cfg), emit=emit, stop=stop or StopFlag(), dist=dist).run()


class LLMTask(Task):
    """PEFT LoRA on a causal language model."""

    def __init__(self, cfg: TrainConfig):
        super().__init__(cfg)
        self.model: Any = None
        self._batches: Iterator[dict[str, Any]] | None = None

    def teardown(self) -> None:
        self._batches = None  # an unfinished loader iterator: its worker processes end with it

    # ---- before the model -------------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        run, cfg = self.run, self.cfg
        self.tokenizer, self.encoded, self.plan = prepare_data(cfg, run.dist)
        for note in self.encoded.skipped[:20]:
            run.log(f"skipped {note}", "warning")
        if self.encoded.truncated:
            run.log(f"{self.encoded.truncated} example(s) longer than max_seq_length ({cfg.max_seq_length}) "
                    "were cut; raise max_seq_length or use packing", "warning")
        return self.plan

    # ---- the model and the LoRA ---------------------------------------------------------------------
    def setup(self) -> list[dict[str, Any]]:
        from lora_trainer.llm.model import load_base_model, wrap_lora

        run, cfg = self.run, self.cfg
        self.device = run.dist.device(cfg.device)
        if cfg.mixed_precision == "fp16" and self.device.type == "cpu":
            raise ConfigError("mixed_precision", "fp16 needs a CUDA GPU; on CPU use 'bf16' or 'no'")
        run.emit("status", message=f"loading model {self.plan['base_model']}")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision, torch.float32)
        base = load_base_model(cfg, self.plan["base_model"], dtype, self.device)
        self.quantised = cfg.load_in_4bit or cfg.load_in_8bit
        if cfg.gradient_checkpointing and not self.quantised:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        seed_all(cfg.seed)
        self.model = wrap_lora(base, cfg)
        if cfg.network_weights:
            self._load_initial_adapter(cfg.network_weights)
        self.model.train()
        self.named = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        params = list(self.named.values())
        run.dist.broadcast_params(params)
        n = sum(p.numel() for p in params)
        targets = sorted(self.model.peft_config["default"].target_modules)
        run.log(f"LoRA: {n:,} trainable parameters in {', '.join(targets)} on {self.device}")
        return [{"params": params, "lr": cfg.learning_rate}]

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
        self.run.log(f"continuing from adapter {path}")

    # ---- one step -----------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        dist = self.run.dist
        return B.micro_batches(len(self.encoded.examples), self.cfg.batch_size, self.cfg.seed, epoch,
                               dist.rank, dist.world_size)

    def _next_batch(self, ids: list[int], epoch: int, pos: int) -> dict[str, torch.Tensor]:
        """The padded micro-batch `ids` on the training device, from the run's DataLoader (made at
        the first step, from the position the run starts or resumes at)."""
        if self._batches is None:
            from lora_trainer.data.loader import RunBatchSampler, make_loader

            pad = int(self.tokenizer.pad_token_id or 0)  # padding never reaches the loss (labels -100, mask 0)
            sampler = RunBatchSampler(self.epoch_batches, start_epoch=epoch, start_pos=pos,
                                      epochs=int(self.plan["epochs"]), per_epoch=int(self.plan["batches_per_epoch"]))
            self._batches = iter(make_loader(B.TokenBatches(self.encoded.examples, pad), sampler,
                                             num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda"))
        batch = next(self._batches)
        if batch["epoch"] != epoch or list(batch["ids"]) != list(ids):
            raise RuntimeError(f"data loader out of step: got epoch {batch['epoch']} {batch['ids']}, "
                               f"the loop is at epoch {epoch} {ids}")
        return {k: batch[k].to(self.device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels")}

    def micro_losses(self, group: list[list[int]], epoch: int, pos: int) -> Iterator[torch.Tensor]:
        """The step's loss is averaged over all its target tokens, so each micro-batch's summed
        cross-entropy is divided by the group's token count (not by the number of micro-batches)."""
        batches = [self._next_batch(idx, epoch, pos + j) for j, idx in enumerate(group)]
        n_tokens = max(1, sum(B.target_count(b) for b in batches))
        for j, batch in enumerate(batches):
            seed_all(derive_seed(self.cfg.seed, epoch, pos + j, self.run.dist.rank) % (2 ** 32))
            with autocast_context(self.device, self.cfg.mixed_precision):
                yield B.summed_loss(self.model, batch) / n_tokens

    # ---- files --------------------------------------------------------------------------------------
    def _adapter_path(self, step: int | None) -> str:
        run = self.run
        return os.path.join(run.out_dir, run.name if step is None else f"{run.name}-{step:06d}")

    def final_path(self) -> str:
        return self._adapter_path(None)

    def save_weights(self, step: int, epoch: int, final: bool) -> str:
        from lora_trainer.llm.export import save_adapter

        precision = self.cfg.save_precision if final else "fp32"
        return save_adapter(self.model, self.tokenizer, self._adapter_path(None if final else step), precision,
                            {"lora_trainer.steps": str(step), "lora_trainer.base_model": str(self.cfg.base_model)})

    def weights_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named.items()}

    def load_weights_state(self, saved: dict[str, torch.Tensor], path: str) -> None:
        if set(saved) != set(self.named):
            raise ConfigError("resume_from_checkpoint", f"{path}: saved LoRA weights do not match this model's "
                              "(different base model, target_modules or lora_rank?)")
        with torch.no_grad():
            for name, p in self.named.items():
                if saved[name].shape != p.shape:
                    raise ConfigError("resume_from_checkpoint", f"{path}: {name} has shape "
                                      f"{tuple(saved[name].shape)}, this run {tuple(p.shape)} (lora_rank changed?)")
                p.copy_(saved[name].to(p.device, p.dtype))

    def prune(self, keep: int | None) -> list[str]:
        """Intermediate adapter folders and states beyond the newest `keep` (all kept when empty)."""
        if not keep or keep <= 0:
            return []
        run = self.run
        pat = re.compile(rf"^{re.escape(run.name)}-(\d{{6,}})$")
        found = sorted((int(m.group(1)), d) for d in os.listdir(run.out_dir) if (m := pat.match(d)))
        removed = []
        for _, d in found[:-keep]:
            shutil.rmtree(os.path.join(run.out_dir, d), ignore_errors=True)
            removed.append(d)
        return removed + ckpt.prune(run.out_dir, run.name, keep)

    def sample(self, step: int, final: bool = False) -> None:
        """Text samples for `sample_prompts` (greedy), logged and written to samples/<name>-<step>.txt."""
        run = self.run
        prompts = self.cfg.sample_prompt_list()
        if final or not run.dist.is_main or not prompts:
            return
        from lora_trainer.llm.generate import generate_text

        chat = any(k != "text" for k in self.plan.get("record_kinds", {}))
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                outs = [generate_text(self.model, self.tokenizer, p, max_new_tokens=48, chat=chat) for p in prompts]
        finally:
            self.model.train()
        path = os.path.join(run.out_dir, "samples", f"{run.name}-{step:06d}.txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write_text(path, "".join(f"### {p}\n{o}\n\n" for p, o in zip(prompts, outs, strict=True)))
        for p, o in zip(prompts, outs, strict=True):
            run.log(f"sample @ step {step}: {p!r} → {o!r}")

    def exports(self, path: str) -> dict[str, str]:
        """GGUF LoRA and merged model, when asked for (merging last: it changes the model)."""
        from lora_trainer.llm import export

        run, cfg, out = self.run, self.cfg, {}
        precision = cfg.save_precision
        if cfg.gguf_output:
            from lora_trainer.llm.gguf_export import export_gguf_lora

            run.emit("status", message="writing GGUF LoRA")
            lcfg = self.model.peft_config["default"]
            base_config = self.model.get_base_model().config
            out["gguf"] = export_gguf_lora(os.path.join(run.out_dir, f"{run.name}.gguf"),
                                           export.adapter_state(self.model, "fp32"), base_config,
                                           float(lcfg.lora_alpha), "fp32" if precision == "fp32" else "fp16",
                                           run.name)
            run.log(f"GGUF LoRA written: {out['gguf']} (llama.cpp: --lora {os.path.basename(out['gguf'])})")
        if cfg.merge_output:
            run.emit("status", message="writing merged model")
            merged = os.path.join(run.out_dir, f"{run.name}-merged")
            if self.quantised:
                export.merge_from_files(self.plan["base_model"], path, merged, precision,
                                        cache_dir=cfg.model_cache_dir)
            else:
                export.save_merged(self.model, self.tokenizer, merged, precision)
            out["merged"] = merged
            run.log(f"merged model written: {merged}")
        return out
