"""Image LoRA (SD1/SD2/SDXL, any host): the `Task` the engine runs for `task_type: text-to-image`.

Everything that can be checked without the model (config, dataset, resume path) is checked first,
so a mistake costs seconds, not a model load. Models come only through `ModelAdapter`; the family's
objective (noise, timesteps, target, loss weights) comes from the adapter, so this file holds no
diffusion maths. The adapter is always put back as it was (`teardown`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch

from lora_trainer.errors import ConfigError
from lora_trainer.events import StopFlag, null_sink
from lora_trainer.train import checkpoint as ckpt
from lora_trainer.train.common import autocast_context, check_device, derive_seed, seed_all
from lora_trainer.train.distributed import DistContext, process_group
from lora_trainer.train.engine import Engine, Task, TrainResult, ensure_config
from lora_trainer.train.network_setup import add_to_plan, build_network, check_weights_family
from lora_trainer.train.sampling import generate_samples, parse_prompts
from lora_trainer.train.validation import HeldOutInput, fixed_input, held_out_loss

if TYPE_CHECKING:
    from lora_trainer.config import TrainConfig
    from lora_trainer.data import DatasetIndex, Plan, TrainDataset
    from lora_trainer.events import EventSink
    from lora_trainer.lora.network import LoRANetwork
    from lora_trainer.models.base import ModelAdapter
    from lora_trainer.models.objective import NoisedBatch, Objective


def train(cfg: TrainConfig, *, adapter: ModelAdapter | None = None, emit: EventSink = null_sink,
          stop: StopFlag | None = None) -> TrainResult:
    """Train an image LoRA as `cfg` says (on `adapter`, or the model `cfg.base_model` names)."""
    cfg = ensure_config(cfg)
    with process_group(cfg.device) as dist:
        return Engine(ImageLoRATask(cfg, adapter), emit=emit, stop=stop or StopFlag(), dist=dist).run()


def prepare_plan(cfg: TrainConfig, dist: DistContext | None = None) -> tuple[DatasetIndex, TrainDataset, Plan]:
    """Scan the dataset and plan the run without touching the model: (index, dataset, Plan)."""
    from lora_trainer.data import TrainDataset, make_plan, scan_dataset
    from lora_trainer.data.extra_sets import add_regularisation, split_validation

    dist = dist or DistContext()
    check_device(cfg.device)
    from lora_trainer.models.loading import flux_kind_of

    index = scan_dataset(cfg)
    split_validation(cfg, index)
    add_regularisation(cfg, index)
    dataset = TrainDataset(cfg, index)
    kind = flux_kind_of(cfg)
    plan = make_plan(cfg, index, arch=kind, world_size=dist.world_size, dataset=dataset)
    if kind:
        from lora_trainer.models.flux_adapter import check_kind_options
        from lora_trainer.models.flux_loading import check_single_files

        base = (cfg.base_model or "").strip()
        plan.arch_source = ("built-in tiny model" if base.startswith("builtin:") else
                            "checkpoint keys" if os.path.isfile(os.path.expanduser(base)) else "diffusers config")
        check_single_files(cfg.base_model, vae_path=cfg.vae_path, clip_l_path=cfg.clip_l_path,
                           t5xxl_path=cfg.t5xxl_path)
        check_kind_options(kind, cfg.guidance_scale_train, cfg.lora_layout)
    check_weights_family(cfg, "flux" if kind else "sd")
    add_to_plan(plan, cfg)  # the adapter's type and block-wise settings, checked before any model
    if plan.batches_per_epoch <= 0:
        raise ConfigError("batch_size", f"{plan.samples_per_epoch} samples per epoch leave no batch for each of "
                                        f"{dist.world_size} processes; add images or repeats")
    return index, dataset, plan


def weigh_samples(noised: NoisedBatch, weights: list[float]) -> None:
    """Multiply the objective's per-sample weights by the batch's (prior_loss_weight on regularisation
    images); a batch of weight-1 samples is left as it is."""
    if all(w == 1.0 for w in weights):
        return
    w = torch.tensor(weights, dtype=torch.float32, device=noised.target.device)
    noised.weights = w if noised.weights is None else noised.weights.to(w.device) * w


def masked_loss(objective: Objective, pred: torch.Tensor, noised: NoisedBatch, masks: torch.Tensor | None) -> torch.Tensor:
    """The objective's loss with each latent pixel's error weighted by the mask ([B,1,h,w] in [0,1]).

    The objective's loss is a mean squared error, so scaling prediction and target by sqrt(mask)
    weights every squared error by the mask: masked-out pixels add nothing and pull on no weight."""
    if masks is None:
        return objective.loss(pred, noised)
    import dataclasses

    m = masks.to(pred.device, torch.float32, non_blocking=True)
    if m.shape[-2:] != pred.shape[-2:]:
        m = torch.nn.functional.interpolate(m, size=pred.shape[-2:], mode="area")
    s = m.sqrt()
    return objective.loss(pred.float() * s, dataclasses.replace(noised, target=noised.target.float() * s))


class ImageLoRATask(Task):
    """LoRA on a diffusion model's UNet / text encoders, trained through its `ModelAdapter`."""

    checking = "checking dataset"

    def __init__(self, cfg: TrainConfig, adapter: ModelAdapter | None = None):
        super().__init__(cfg)
        self.adapter = adapter
        self.network: LoRANetwork | None = None
        self._undo: list[Callable[[], None]] = []  # put the adapter back (run before restore())
        self._batches: Iterator[dict[str, Any]] | None = None
        self._prepared = False

    # ---- before the model ---------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        run, cfg = self.run, self.cfg
        self.index, self.dataset, plan = prepare_plan(cfg, run.dist)
        if self.index.skipped:
            listed = "; ".join(f"{os.path.basename(str(p))}: {r}" for p, r in self.index.skipped[:20])
            more = f" (+{len(self.index.skipped) - 20} more)" if len(self.index.skipped) > 20 else ""
            run.log(f"skipped {len(self.index.skipped)} file(s): {listed}{more}", "warning")
        self.prompts = parse_prompts(cfg)
        self.plan = plan.to_dict()
        return self.plan

    # ---- the model and the LoRA ---------------------------------------------------------------
    def setup(self) -> list[dict[str, Any]]:
        run, cfg = self.run, self.cfg
        if self.adapter is None:
            if cfg.mixed_precision == "fp16" and cfg.device in ("auto", "cpu") and not torch.cuda.is_available():
                raise ConfigError("mixed_precision", "fp16 needs a CUDA GPU and none is available; use 'bf16' or 'no'")
            run.emit("status", message=f"loading model {cfg.base_model}")
            from lora_trainer.models.loading import load_adapter

            self.adapter = load_adapter(cfg)
        ad = self.adapter
        self.device = ad.device
        ad.prepare_for_training()
        self._prepared = True
        groups = self._build_network(ad)
        n_params = sum(p.numel() for g in groups for p in g["params"])
        kind = {"lora": "LoRA", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr", "dora": "DoRA"}.get(
            self.network.spec.network_type, self.network.spec.network_type)
        run.log(f"{kind}: {n_params:,} trainable parameters on {self.device}")
        if cfg.mixed_precision == "fp16" and self.device.type != "cuda":
            raise ConfigError("mixed_precision", f"fp16 needs a CUDA GPU (training runs on {self.device}); "
                                                 "use 'bf16' or 'no'")
        if cfg.gradient_checkpointing:
            ad.set_gradient_checkpointing(True)
            self._undo.append(lambda: ad.set_gradient_checkpointing(False))
        if hasattr(ad, "set_attention"):
            ad.set_attention(cfg.attention)
        self._setup_caches(ad)
        self.objective = ad.objective(noise_offset=cfg.noise_offset, min_snr_gamma=cfg.min_snr_gamma)
        self.held_out = self._held_out_inputs()
        if self.te_cache is not None:  # frozen and cached: the family may move its text encoders off the GPU
            for item in self.held_out:  # validation captions: cached now, like the training captions
                self._cond(item.captions)
            ad.release_text_encoders([p.prompt for p in self.prompts] + [p.negative for p in self.prompts],
                                     self._cond_one)
        return groups

    def _build_network(self, ad: ModelAdapter) -> list[dict[str, Any]]:
        run, cfg = self.run, self.cfg
        train_te = cfg.train_text_encoder
        if train_te and not ad.trainable_text_encoder():
            denoiser = "transformer" if ad.info.arch in ("flux", "chroma") else "UNet"
            run.log(f"this model's text encoder cannot be trained here; training the {denoiser} only", "warning")
            train_te = False
        self.train_te = train_te
        seed_all(cfg.seed)
        self.network, weights = build_network(ad, cfg, train_te, run.log)
        self.network.attach()
        if weights is not None:
            self._continue_from(cfg.network_weights, weights)
        groups = self.network.param_groups(cfg.effective_unet_lr, cfg.effective_text_encoder_lr)
        params = [p for g in groups for p in g["params"]]
        for p in params:
            if p.device != self.device:
                p.data = p.data.to(self.device)
        run.dist.broadcast_params(params)
        return groups

    def _continue_from(self, weights: str, sd: dict[str, torch.Tensor]) -> None:
        """`network_weights`: start from an existing LoRA / LoHa / LoKr / DoRA file."""
        assert self.network is not None
        report = self.network.load_kohya_state_dict(sd)
        if not report.loaded:
            raise ConfigError("network_weights", f"{weights} has no LoRA module of this model "
                                                 "(another architecture, or trained on other parts?)")
        self.run.log(f"continuing from {weights}: {len(report.loaded)} tensors loaded, "
                     f"{len(report.missing)} missing (start fresh), {len(report.unexpected)} ignored",
                     "warning" if report.missing or report.unexpected else "info")

    def _setup_caches(self, ad: ModelAdapter) -> None:
        from lora_trainer.data import (
            LatentCache,
            TextEncoderCache,
            default_latent_cache_dir,
            default_text_cache_dir,
        )

        cfg = self.cfg
        self.latent_cache = None
        if cfg.cache_latents:
            disk = default_latent_cache_dir(cfg.train_data_dir) if cfg.cache_latents_to_disk else None
            info = ad.info
            self.latent_cache = LatentCache(disk, f"{info.arch}:{info.model_name}:{info.model_hash}:{cfg.vae_path or ''}")
        changes = cfg.shuffle_caption or cfg.caption_dropout_rate > 0
        # frozen text encoder + fixed captions: each caption is encoded once (cache_text_encoder_outputs
        # asks for it; it is free, so it is done whenever it is valid)
        self.te_cache = None
        if not self.train_te and not changes:
            disk, te_id = None, ""
            if cfg.cache_text_encoder_outputs_to_disk:
                disk = default_text_cache_dir(cfg.train_data_dir)
                # what else the outputs depend on: the text encoders, and the settings that reach them
                te_id = f"{ad.text_cache_id()}:{cfg.mixed_precision}:{cfg.max_token_length}:{cfg.clip_skip}"
            self.te_cache = TextEncoderCache(disk, te_id, self.device)
        self._precompute()

    def _precompute(self) -> None:
        """The cache pre-pass, before the first step: every latent and every caption's conditioning.

        Order and grouping do not depend on where a run resumes: latents are encoded one image at a
        time with a per-image seed; captions in the batches of epoch 0 of a one-process run. So a
        resumed run and an uninterrupted one hold the same cached tensors.
        """
        ds, run = self.dataset, self.run
        if self.latent_cache is not None:
            todo = [(i, key, fit, flip) for i, key, fit, flip in ds.latent_variants()
                    if key not in self.latent_cache]
            if todo:
                run.emit("status", message=f"caching latents of {len(todo)} image(s)")
            for i, key, fit, flip in todo:
                self.latent_cache.put(key, self._encode_one(key, ds.pixels_of(i, fit, flip)).cpu())
        if self.te_cache is not None:
            for ids in ds.batches_for_epoch(0, self.cfg.seed):
                self._cond(list(ds.load_batch(ids, 0, with_pixels=False)["captions"]))
            te = self.te_cache
            if te.directory:  # say whether the disk cache worked (a fully cached FLUX.1 run loads no T5)
                run.emit("status", message=f"text-encoder outputs of {len(te)} caption(s): {te.disk_hits} read "
                                           f"from {te.directory}, {te.encoded} encoded")

    def _held_out_inputs(self) -> list[HeldOutInput]:
        """The validation images' fixed inputs (latents, noise, timesteps), made once before the first step."""
        import dataclasses

        from lora_trainer.data import DatasetIndex, TrainDataset

        cfg = self.cfg
        if not self.index.validation:
            return []
        plain = dataclasses.replace(cfg, flip_aug=False, shuffle_caption=False, caption_dropout_rate=0.0,
                                    random_crop=False)
        ds = TrainDataset(plain, DatasetIndex(self.index.root, items=list(self.index.validation)))
        self.run.emit("status", message=f"preparing {len(ds.items)} validation image(s)")
        inputs = []
        for i in range(len(ds.items)):
            batch = ds.load_batch([i], 0)
            latent = self._encode_one(batch["keys"][0], batch["pixels"])
            mask = batch["masks"][0] if batch["masks"] is not None else None
            inputs.append(fixed_input(latent, batch["captions"][0], batch["sizes"][0], mask, self.objective,
                                      derive_seed(cfg.seed, "validation", i)))
        return inputs

    def teardown(self) -> None:
        self._batches = None  # an unfinished loader iterator: its worker processes end with it
        if self.network is not None:
            self.network.detach()
        for undo in reversed(self._undo):
            undo()
        if self.adapter is not None and self._prepared:
            self.adapter.restore()

    # ---- one step ------------------------------------------------------------------------------
    def autocast(self) -> AbstractContextManager[Any]:
        return autocast_context(self.device, self.cfg.mixed_precision)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        dist = self.run.dist
        return self.dataset.batches_for_epoch(epoch, self.cfg.seed, dist.rank, dist.world_size)

    def _next_batch(self, ids: list[int], epoch: int, pos: int) -> dict[str, Any]:
        """The loaded micro-batch `ids` from the run's DataLoader (made at the first step, from the
        position the run starts or resumes at)."""
        if self._batches is None:
            from lora_trainer.data import BatchDataset, RunBatchSampler, make_loader

            sampler = RunBatchSampler(self.epoch_batches, start_epoch=epoch, start_pos=pos,
                                      epochs=int(self.plan["epochs"]), per_epoch=int(self.plan["batches_per_epoch"]))
            self._batches = iter(make_loader(BatchDataset(self.dataset, self.latent_cache), sampler,
                                             num_workers=self.cfg.num_workers, pin_memory=self.device.type == "cuda"))
        batch = next(self._batches)
        if batch["epoch"] != epoch or list(batch["ids"]) != list(ids):
            raise RuntimeError(f"data loader out of step: got epoch {batch['epoch']} {batch['ids']}, "
                               f"the loop is at epoch {epoch} {ids}")
        return batch

    def micro_losses(self, group: list[list[int]], epoch: int, pos: int) -> Iterator[torch.Tensor]:
        for j, idx in enumerate(group):
            yield self.micro_loss(list(idx), epoch, pos + j) / len(group)

    def micro_loss(self, indices: list[int], epoch: int, pos: int) -> torch.Tensor:
        """Batch → latents and conditioning → the family's noised input → model → the family's loss."""
        cfg, rank = self.cfg, self.run.dist.rank
        seed_all(derive_seed(cfg.seed, epoch, pos, rank) % (2 ** 32))
        batch = self._next_batch(indices, epoch, pos)
        latents = self._latents(batch)
        cond = self._cond(list(batch["captions"]))
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "noise", epoch, pos, rank))
        noised = self.objective.noised(latents, gen)
        weigh_samples(noised, batch["loss_weights"])
        pred = self._predict(noised, cond, batch.get("sizes"))
        return masked_loss(self.objective, pred, noised, batch["masks"])

    def _predict(self, noised: NoisedBatch, cond: dict[str, torch.Tensor], sizes: Any) -> torch.Tensor:
        noisy = noised.noisy
        if self.cfg.mixed_precision == "no" and self.adapter.dtype != torch.float32:
            noisy = noisy.to(self.adapter.dtype)
        with self.autocast():
            return self.adapter.predict(noisy, noised.timesteps, cond, sizes)

    def validation_loss(self) -> float | None:
        """The held-out images' loss with the LoRA as it is now (dropout off, no gradients)."""
        if not self.held_out:
            return None
        net = self.network
        was_training = net.training
        net.eval()
        try:
            return held_out_loss(self.held_out, self._held_out_loss_of)
        finally:
            net.train(was_training)

    def _held_out_loss_of(self, item: HeldOutInput) -> torch.Tensor:
        pred = self._predict(item.noised, self._cond(item.captions), item.sizes)
        return masked_loss(self.objective, pred, item.noised, item.mask)

    def _latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """Cached latents (the pre-pass made them), or the VAE on the batch's pixels."""
        if batch["latents"] is not None:
            return batch["latents"].to(self.device, torch.float32, non_blocking=True)
        with torch.no_grad():
            return self.adapter.encode_images(batch["pixels"].to(self.device, self.adapter.dtype)).float()

    def _encode_one(self, key: str, pixels: torch.Tensor) -> torch.Tensor:
        # a per-image seed: a sampled VAE latent is the same whenever it is first cached
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(derive_seed(self.cfg.seed, "latent", key))
            with torch.no_grad():
                return self.adapter.encode_images(pixels.to(self.device, self.adapter.dtype))[0].float()

    def _cond(self, captions: list[str]) -> dict[str, torch.Tensor]:
        if self.te_cache is not None:
            def encode(caps: list[str]) -> dict[str, torch.Tensor]:
                with self.autocast():
                    return self.adapter.encode_text(caps)

            return self.te_cache.get_or_encode(captions, encode)
        ctx = nullcontext() if self.train_te else torch.no_grad()
        with ctx, self.autocast():
            return self.adapter.encode_text(captions)

    def _cond_one(self, text: str) -> dict[str, torch.Tensor]:
        """One prompt's conditioning (no batch dimension) through the run's text-encoder cache: sample
        prompts are cached, on disk too, like captions."""
        return {k: v[0] for k, v in self._cond([text]).items()}

    # ---- files ---------------------------------------------------------------------------------
    def save_weights(self, step: int, epoch: int, final: bool) -> str:
        from lora_trainer.train.outputs import write_lora

        run = self.run
        path = ckpt.lora_path(run.out_dir, run.name, None if final else step)
        write_lora(path, self.network, self.adapter, self.cfg, self.index, self.plan, step=step, epoch=epoch,
                   started_at=run.started_at, final=final, preview=run.samples[0] if run.samples else None)
        return path

    def weights_state(self) -> dict[str, torch.Tensor]:
        return self.network.kohya_state_dict(torch.float32)

    def load_weights_state(self, saved: dict[str, torch.Tensor], path: str) -> None:
        from lora_trainer.lora.network import LoRAWeightsError

        try:
            report = self.network.load_kohya_state_dict(saved)
        except LoRAWeightsError as e:  # another network type or rank than this run's settings
            raise ConfigError("resume_from_checkpoint", f"{path}: {str(e).removeprefix('network_weights: ')} "
                                                        "(as when the state was saved)") from None
        if report.missing:
            raise ConfigError("resume_from_checkpoint", f"{path}: the saved LoRA lacks {len(report.missing)} "
                                                        "module(s) of this model (different model or network settings?)")

    def sample(self, step: int, final: bool = False) -> None:
        run = self.run
        if not run.dist.is_main or not self.prompts:
            return
        if final and run.samples and run.samples[0].endswith(f"{step:06d}-00.png"):
            return  # already sampled at this step
        run.emit("status", message=f"sampling {len(self.prompts)} image(s)")
        was_training = self.network.training
        self.network.eval()
        try:
            paths = generate_samples(self.adapter, self.prompts, os.path.join(run.out_dir, "samples"),
                                     f"{run.name}-{step:06d}")
        finally:
            self.network.train(was_training)
        run.samples = paths
        run.emit("sample", step=step, paths=paths, prompts=[p.prompt for p in self.prompts])
