"""The training config schema: the `TrainConfig` dataclass and its field metadata.

The dataclass IS the schema: each field carries its default, help text, section, aliases and
allowed values in `metadata`, and its annotation string is its type. Loading (`loading.py`),
validation (`validation.py`), `to_yaml()`, `config_fields()` (UI form) and `docs/config.md`
(`docs.py`) are all driven from it, so adding a field means adding one line here.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTIONS = ("task", "model", "data", "network", "training", "output", "sample", "llm")
# other names users give the nested sections
SECTION_ALIASES = {"dataset": "data", "train": "training", "optimizer_config": "training", "saving": "output",
                   "lora": "network", "samples": "sample", "sampling": "sample"}
BUILTIN_PREFIX = "builtin:"
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".gguf")


def _f(section: str, default: Any, help: str, *, aliases: tuple[str, ...] = (),
       choices: tuple[Any, ...] | None = None, min: float | None = None, max: float | None = None,
       gt: float | None = None, path: str | None = None) -> Any:
    """A schema entry. `path`: "dir" | "file" | "any" | "model" | "new" | "resume" (how it resolves and
    how existence is checked)."""
    meta = {"section": section, "help": help, "aliases": aliases, "choices": choices,
            "min": min, "max": max, "gt": gt, "path": path}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """A whole training run. Build with `load_config`; direct construction skips validation.

    Frozen with slots: a misspelt field read or write raises AttributeError instead of silently
    meaning a default, and nothing changes a run's settings after loading (`dataclasses.replace`
    makes an edited copy)."""

    # task
    task_type: str = _f("task", "text-to-image", "What to train: an image LoRA (SD1/SD2/SDXL) or an LLM LoRA via PEFT.",
                        aliases=("task",), choices=("text-to-image", "text-generation"))
    # model
    base_model: str | None = _f("model", None, "Base model: a .safetensors/.ckpt file, a diffusers folder, a HuggingFace "
                                "id already in the cache, or `builtin:tiny-sd1` / `builtin:tiny-sdxl`. Empty inside "
                                "the WebUI = the loaded checkpoint.",
                                aliases=("pretrained_model_name_or_path", "pretrained_model", "model", "ckpt",
                                         "model_name_or_path"), path="model")
    model_type: str = _f("model", "auto", "Architecture of the base model; `auto` detects it from the weights.",
                         aliases=("model_arch", "arch"), choices=("auto", "sd1", "sd2", "sdxl", "flux", "chroma"))
    v_parameterization: bool | None = _f("model", None, "Train with v-prediction (SD2-768 models). Empty = detect.")
    tokenizer_path: str | None = _f("model", None, "Tokenizer folder when it is not next to the model (mostly LLMs).",
                                    aliases=("tokenizer",), path="model")
    vae_path: str | None = _f("model", None, "A separate VAE file or folder to encode images with.",
                              aliases=("vae",), path="model")
    clip_l_path: str | None = _f("model", None, "FLUX.1: the CLIP-L text encoder file (clip_l.safetensors) when "
                                 "base_model is the transformer file alone.", aliases=("clip_l",), path="model")
    t5xxl_path: str | None = _f("model", None, "FLUX.1 / Chroma: the T5-XXL text encoder file (t5xxl_fp16 or "
                                "t5xxl_fp8_e4m3fn .safetensors) when base_model is the transformer file alone.",
                                aliases=("t5xxl",), path="model")
    t5_max_token_length: int | None = _f("model", None, "FLUX.1 / Chroma: T5 tokens per caption; empty = 512 (dev, "
                                         "Chroma) or 256 (schnell).", aliases=("t5xxl_max_token_length",),
                                         min=1, max=512)
    fp8_base: bool = _f("model", False, "FLUX.1 / Chroma: store the frozen transformer blocks as float8 (half the "
                        "memory; each layer is upcast in its forward).")
    blocks_to_swap: int = _f("model", 0, "FLUX.1 / Chroma: keep this many transformer blocks in CPU memory and copy "
                             "them in per forward, the next one prefetched while one runs (16 fits FLUX.1-dev into 12 GB with "
                             "fp8_base).", min=0, max=60)
    clip_skip: int = _f("model", 1, "Use the output of the N-th last text-encoder layer (2 for anime models).",
                        min=1, max=12)
    model_cache_dir: str | None = _f("model", None, "Where downloaded / converted models are cached.",
                                     aliases=("cache_dir",), path="new")
    # data
    train_data_dir: str | None = _f("data", None, "Dataset folder: images with captions, `N_name/` subfolders (N repeats), "
                                    "or, for text-generation, a `.jsonl` file or a folder of .jsonl files.",
                                    aliases=("data_dir", "dataset_dir", "image_dir", "dataset"), path="any")
    metadata_path: str | None = _f("data", None, "A `metadata.csv` (`filename,prompt`) giving captions. Empty = use "
                                   "`metadata.csv` in train_data_dir if there is one.",
                                   aliases=("metadata", "metadata_file", "metadata_csv"), path="file")
    resolution: int | tuple[int, int] = _f("data", 512, "Training size: one number (square) or `W,H`; the bucket area "
                                           "limit. Multiple of 64.", aliases=("reso", "size"))
    enable_bucket: bool = _f("data", True, "Group images into aspect-ratio buckets instead of square crops.",
                             aliases=("bucket", "enable_buckets"))
    min_bucket_reso: int = _f("data", 256, "Smallest bucket side in pixels.", min=64, max=4096)
    max_bucket_reso: int = _f("data", 1024, "Largest bucket side in pixels.", min=64, max=8192)
    bucket_reso_steps: int = _f("data", 64, "Bucket sides are multiples of this (multiple of 8; 64 is safest).",
                                min=8, max=512)
    random_crop: bool = _f("data", False, "Crop randomly instead of centred (needs cache_latents: false).")
    caption_extension: str = _f("data", ".txt", "Caption file extension next to each image (`.caption` is tried too).",
                                aliases=("caption_extention", "caption_ext"))
    shuffle_caption: bool = _f("data", False, "Shuffle comma-separated tags each time an image is seen.")
    keep_tokens: int = _f("data", 0, "Keep the first N tags in place when shuffling (e.g. 1 = trigger word).", min=0)
    caption_dropout_rate: float = _f("data", 0.0, "Probability of training an image with an empty caption.",
                                     min=0, max=1)
    flip_aug: bool = _f("data", False, "Randomly mirror images left-right (not for asymmetric subjects or text).",
                        aliases=("flip", "hflip"))
    num_repeats: int = _f("data", 1, "Repeats for folders without an `N_` prefix (and metadata.csv images).",
                          aliases=("repeats", "dataset_repeats"), min=1)
    trigger_word: str = _f("data", "", "Prepended to every caption that lacks it; saved as the LoRA's activation text.",
                           aliases=("trigger", "trigger_words", "activation_text", "instance_token"))
    cache_latents: bool = _f("data", True, "Encode each image with the VAE once and reuse the latents.")
    cache_latents_to_disk: bool = _f("data", False, "Keep cached latents in files so later runs reuse them.")
    cache_text_encoder_outputs: bool = _f("data", False, "Encode each caption once (needs train_text_encoder: false and "
                                          "shuffle_caption: false).")
    cache_text_encoder_outputs_to_disk: bool = _f(
        "data", False, "Also keep each caption's text-encoder outputs (FLUX.1: T5 + CLIP-L) in safetensors files "
        "(`.lora_trainer_cache/text` in the data folder), so a later run with the same captions and text encoders "
        "does not encode them again; FLUX.1 / Chroma: sample prompts too, and a run that finds all of them there "
        "does not load T5 or CLIP-L at all (needs cache_text_encoder_outputs).")
    max_token_length: int = _f("data", 75, "Caption tokens per image: 75, or 150/225 to use several 77-token chunks.",
                               choices=(75, 150, 225))
    masked_loss: bool = _f("data", True, "Weight the loss by a mask beside each image (`<stem>-masklabel.png`, "
                           "OneTrainer's convention: white = learn, black = ignore); images without one train "
                           "as before.", aliases=("mask_loss",))
    alpha_mask: bool = _f("data", False, "Use each image's alpha channel as its loss mask (opaque = learn); an "
                          "image without alpha trains everywhere.")
    validation_split: float = _f("data", 0.0, "Fraction of the training images held out for the validation loss "
                                 "(chosen by seed); 0 = none.", aliases=("val_split",), min=0, max=0.5)
    validation_data_dir: str | None = _f("data", None, "A folder of held-out images (with captions) for the "
                                         "validation loss, instead of validation_split.",
                                         aliases=("val_data_dir", "validation_dir"), path="dir")
    validation_every_n_steps: int = _f("data", 0, "Compute the validation loss every N steps; 0 = at the end of "
                                       "each epoch (and always after the last step).",
                                       aliases=("validate_every_n_steps",), min=0)
    reg_data_dir: str | None = _f("data", None, "Regularisation (prior-preservation) images in kohya `N_class/` "
                                  "folders (N = repeats); they are repeated to match the training samples of an "
                                  "epoch and shuffled in with them.", aliases=("reg_dir",), path="dir")
    prior_loss_weight: float = _f("data", 1.0, "Loss weight of the regularisation images.", min=0, max=100)
    # network
    lora_rank: int = _f("network", 8, "LoRA rank (dim): capacity and file size. 8-32 for styles/characters.",
                        aliases=("network_dim", "rank", "r", "dim"), min=1, max=1024)
    lora_alpha: float = _f("network", 8.0, "Scale = alpha / rank. Use rank (or rank/2).",
                           aliases=("network_alpha", "alpha"), gt=0)
    lora_dropout: float = _f("network", 0.0, "Dropout on the LoRA path while training.",
                             aliases=("network_dropout", "dropout"), min=0, max=0.99)
    conv_dim: int = _f("network", 0, "Rank for 3x3 convolutions (LoCon); 0 = off.", aliases=("conv_rank",), min=0,
                       max=1024)
    conv_alpha: float | None = _f("network", None, "Alpha for conv layers; empty = conv_dim.", gt=0)
    network_type: str = _f("network", "lora", "Adapter kind: `lora` (attention/linear layers), `locon` (LoRA on 3x3 "
                           "convs too), `loha` (Hadamard product), `lokr` (Kronecker product) or `dora` (LoRA with "
                           "a learnt weight magnitude). Files use the LyCORIS layout A1111, Forge and ComfyUI read.",
                           aliases=("algo", "network_algo"), choices=("lora", "locon", "loha", "lokr", "dora"))
    lokr_factor: int = _f("network", -1, "LoKr: split each width as factor x rest (must divide the model's widths); "
                          "-1 = the most square split.", min=-1)
    lokr_full_rank: bool = _f("network", False, "LoKr: train the second Kronecker factor as a full matrix (rank "
                              "ignored).", aliases=("full_matrix",))
    dora_wd: bool = _f("network", False, "LoHa/LoKr: also learn DoRA's weight magnitude (`network_type: dora` is "
                       "LoRA with it).")
    network_include: list[str] = _f("network", [], "Train only modules whose kohya name matches one of these "
                                    "patterns (e.g. `lora_unet_up_blocks_*`); empty = every module.")
    network_exclude: list[str] = _f("network", [], "Never train modules whose kohya name matches one of these "
                                    "patterns (e.g. `*_ff_net_*`).")
    network_blocks: list[dict[str, Any]] = _f("network", [], "Per-module rules on kohya names, last match wins: "
                                              "`[{pattern: 'lora_unet_up_*', rank: 16, alpha: 8, lr_weight: 0.5}]`, "
                                              "`exclude: true` drops the modules.")
    block_dims: list[int] = _f("network", [], "kohya block-wise ranks: 25 values for SD1/SD2 (IN00-IN11, MID, "
                               "OUT00-OUT11) or 23 for SDXL; empty = lora_rank everywhere; 0 = block not trained.")
    block_alphas: list[float] = _f("network", [], "Block-wise alphas (25 / 23 values); empty = lora_alpha.")
    conv_block_dims: list[int] = _f("network", [], "Block-wise ranks of 3x3 convs (25 / 23 values); empty = conv_dim.")
    conv_block_alphas: list[float] = _f("network", [], "Block-wise alphas of 3x3 convs (25 / 23 values); empty = "
                                        "conv_alpha.")
    block_lr_weight: list[float] = _f("network", [], "Multiplier of the UNet learning rate per block (25 / 23 "
                                      "values); 0 = block not trained.")
    train_unet: bool = _f("network", True, "Train LoRA on the UNet (the transformer for FLUX.1 / Chroma).")
    flux_layers: list[str] = _f("network", ["attn", "mlp", "mod"], "FLUX.1 / Chroma: layer kinds to train in each "
                                "block: `attn`, `mlp`, `mod` (modulation; Chroma has none).")
    flux_double_blocks: str = _f("network", "all", "FLUX.1 / Chroma: double-stream blocks to train: `all`, `none` "
                                 "or indices like `0-9,12`.")
    flux_single_blocks: str = _f("network", "all", "FLUX.1 / Chroma: single-stream blocks to train: `all`, `none` "
                                 "or indices like `0-19`.")
    lora_layout: str = _f("network", "kohya", "FLUX.1 file layout: `kohya` (fused BFL keys; Forge, ComfyUI, kohya, "
                          "diffusers) or `peft` (diffusers' own keys).", choices=("kohya", "peft"))
    train_text_encoder: bool = _f("network", True, "Train LoRA on the text encoder(s).")
    network_weights: str | None = _f("network", None, "Start from an existing LoRA file (continue training); "
                                     "for text-generation a PEFT adapter folder or its adapter_model.safetensors.",
                                     aliases=("init_weights", "lora_weights"), path="any")
    # training
    batch_size: int = _f("training", 1, "Images per step (per GPU).", aliases=("train_batch_size",), min=1, max=1024)
    epochs: int = _f("training", 10, "Passes over the dataset (with repeats).",
                     aliases=("max_train_epochs", "num_train_epochs", "num_epochs", "epoch"), min=1)
    max_train_steps: int | None = _f("training", None, "Stop after this many optimizer steps (overrides epochs).",
                                     aliases=("max_steps", "train_steps"), min=1)
    learning_rate: float = _f("training", 1e-4, "Base learning rate (used where unet_lr / text_encoder_lr are empty).",
                              aliases=("lr",), gt=0, max=10)
    unet_lr: float | None = _f("training", None, "UNet learning rate; empty = learning_rate.", gt=0, max=10)
    text_encoder_lr: float | None = _f("training", None, "Text-encoder learning rate; empty = learning_rate.",
                                       aliases=("te_lr",), gt=0, max=10)
    optimizer: str = _f("training", "adamw", "Optimizer (adamw8bit needs bitsandbytes and a GPU).",
                        aliases=("optimizer_type", "optim"), choices=("adamw", "adamw8bit", "lion", "prodigy", "sgd"))
    optimizer_args: dict[str, Any] = _f("training", {}, "Extra optimizer keyword arguments, e.g. `{betas: [0.9, 0.99]}` "
                                        "or kohya's list of `key=value` strings.")
    weight_decay: float = _f("training", 0.01, "AdamW weight decay.", min=0, max=1)
    lr_scheduler: str = _f("training", "constant", "Learning-rate schedule.",
                           choices=("constant", "constant_with_warmup", "cosine", "linear"))
    lr_warmup_steps: int = _f("training", 0, "Steps of linear warm-up.", min=0)
    gradient_accumulation_steps: int = _f("training", 1, "Batches per optimizer step (bigger effective batch).",
                                          aliases=("grad_accum", "gradient_accumulation"), min=1, max=1024)
    max_grad_norm: float = _f("training", 1.0, "Clip gradients to this norm; 0 = off.", min=0)
    gradient_checkpointing: bool = _f("training", False, "Recompute activations: less memory, ~20% slower.")
    mixed_precision: str = _f("training", "no", "Compute precision (fp16 / bf16 need a GPU).",
                              aliases=("precision",), choices=("no", "fp16", "bf16"))
    attention: str = _f("training", "sdpa", "Attention kernel: torch scaled-dot-product (sdpa) or the model default.",
                        aliases=("attention_mode",), choices=("sdpa", "default"))
    timestep_sampling: str = _f("training", "auto", "FLUX.1 / Chroma noise levels: `auto` (dev: logit-normal with "
                                "the resolution-dependent shift; others: logit-normal), `uniform`, `sigmoid` "
                                "(logit-normal), `shift` (logit-normal then discrete_flow_shift), `flux_shift`.",
                                choices=("auto", "uniform", "sigmoid", "shift", "flux_shift"))
    discrete_flow_shift: float = _f("training", 3.0, "FLUX.1 / Chroma: the fixed shift for timestep_sampling: "
                                    "shift.", gt=0, max=100)
    sigmoid_scale: float = _f("training", 1.0, "FLUX.1 / Chroma: spread of the logit-normal noise levels.",
                              gt=0, max=10)
    guidance_scale_train: float | None = _f("training", None, "FLUX.1-dev only: the guidance input while training; "
                                            "empty = 1.0 (as kohya).", aliases=("guidance_scale_flux",),
                                            min=0, max=100)
    seed: int = _f("training", 42, "Random seed: same seed, same data order, same result.", min=0)
    noise_offset: float = _f("training", 0.0, "Noise offset (0.05-0.1 helps very dark/bright images).", min=0, max=1)
    min_snr_gamma: float | None = _f("training", None, "Min-SNR loss weighting gamma (5 is common); empty = off.", gt=0)
    ema_decay: float | None = _f("training", None, "Keep an exponential moving average of the LoRA weights with this "
                                 "decay (0.999 is common); empty = off.", aliases=("ema",), gt=0, max=0.999999)
    ema_on_cpu: bool = _f("training", False, "Keep the EMA weights in CPU memory (saves GPU memory, slower steps).")
    device: str = _f("training", "auto", "`auto`, `cpu`, `cuda`, `cuda:1`, `mps` (checked when loading the config, "
                     "and against this machine before training).")
    num_workers: int = _f("training", 0, "Processes that load the next batches while a step runs (0 = load in "
                          "the training process); with cached latents loading is cheap.",
                          aliases=("max_data_loader_n_workers", "dataloader_num_workers"), min=0, max=64)
    # output
    output_dir: str | None = _f("output", None, "Folder for the LoRA file, saves, state and logs.", path="new")
    output_name: str | None = _f("output", None, "File name of the LoRA (no extension); empty = output_dir's name.",
                                 aliases=("name",))
    save_precision: str = _f("output", "fp16", "Dtype of the saved LoRA weights.", choices=("fp16", "bf16", "fp32"))
    save_steps: int = _f("output", 0, "Also save every N steps as `<name>-<step>.safetensors`; 0 = off.",
                         aliases=("save_every_n_steps",), min=0)
    save_every_n_epochs: int = _f("output", 0, "Also save every N epochs; 0 = off.", min=0)
    save_last_n: int | None = _f("output", None, "Keep only the newest N intermediate saves; empty = keep all.",
                                 aliases=("save_last_n_saves",), min=1)
    save_ema: bool = _f("output", False, "Write the EMA weights (needs ema_decay) as the LoRA files instead of the "
                        "trained weights.")
    save_state: bool = _f("output", True, "Write resumable training state with each save.")
    resume_from_checkpoint: str | None = _f("output", None, "State folder to resume from, or `latest` (the newest "
                                            "state in output_dir).", aliases=("resume",), path="resume")
    logging_dir: str | None = _f("output", None, "TensorBoard logs; empty = output_dir/logs.", path="new")
    preferred_weight: float = _f("output", 0.8, "Suggested weight written to the `.json` sidecar.", min=-10, max=10)
    description: str = _f("output", "", "Description written to the `.json` sidecar.")
    # sample
    sample_prompts: list[str] | str | None = _f("sample", None, "Prompts for sample images: a list, or a .txt file "
                                                "with one prompt per line.", aliases=("prompts",))
    sample_every_n_steps: int = _f("sample", 0, "Make samples every N steps; 0 = off.", min=0)
    sample_every_n_epochs: int = _f("sample", 0, "Make samples every N epochs; 0 = off.", min=0)
    sample_steps: int = _f("sample", 20, "Denoising steps per sample.", min=1, max=200)
    sample_seed: int = _f("sample", 42, "Seed for sample images.", min=0)
    sample_width: int | None = _f("sample", None, "Sample width; empty = resolution.", min=64, max=4096)
    sample_height: int | None = _f("sample", None, "Sample height; empty = resolution.", min=64, max=4096)
    sample_guidance: float = _f("sample", 7.0, "Classifier-free guidance scale for samples.",
                                aliases=("sample_cfg_scale", "guidance_scale"), min=0, max=50)
    # llm
    max_seq_length: int = _f("llm", 512, "Tokens per training sequence.", aliases=("max_length", "cutoff_len"),
                             min=1, max=1_000_000)
    target_modules: list[str] | None = _f("llm", None, "Module names to adapt; empty = the architecture's default.",
                                          aliases=("lora_target_modules", "lora_target"))
    packing: bool = _f("llm", False, "Pack several short texts into one sequence.")
    load_in_4bit: bool = _f("llm", False, "Load the base in 4 bit (QLoRA; needs bitsandbytes + GPU).")
    load_in_8bit: bool = _f("llm", False, "Load the base in 8 bit (needs bitsandbytes + GPU).")
    merge_output: bool = _f("llm", False, "Also write the base with the LoRA merged in.")
    gguf_output: bool = _f("llm", False, "Also write the LoRA as a GGUF adapter for llama.cpp (`--lora`); needs the "
                           "gguf package.")
    chat_template: str | None = _f("llm", None, "Chat template name or Jinja text for chat-style data.")
    trust_remote_code: bool = _f("llm", False, "Allow the base model folder's own Python code (needed by ChatGLM and "
                                 "other custom architectures); only for models you trust.")

    # not part of the schema: where the config came from and notes made while loading
    source_path: str | None = field(default=None, repr=False, compare=False, metadata={"internal": True})
    notes: list[str] = field(default_factory=list, repr=False, compare=False, metadata={"internal": True})
    spelled: dict[str, str] = field(default_factory=dict, repr=False, compare=False, metadata={"internal": True})

    # ---- derived values -------------------------------------------------------------------------
    @property
    def resolution_wh(self) -> tuple[int, int]:
        """(width, height) of the training resolution."""
        if isinstance(self.resolution, int):
            return self.resolution, self.resolution
        return int(self.resolution[0]), int(self.resolution[1])

    @property
    def effective_unet_lr(self) -> float:
        return self.unet_lr if self.unet_lr is not None else self.learning_rate

    @property
    def effective_text_encoder_lr(self) -> float:
        return self.text_encoder_lr if self.text_encoder_lr is not None else self.learning_rate

    @property
    def effective_conv_alpha(self) -> float:
        return self.conv_alpha if self.conv_alpha is not None else float(self.conv_dim)

    @property
    def effective_output_name(self) -> str:
        if self.output_name:
            return self.output_name
        return Path(self.output_dir).name if self.output_dir else "lora"

    @property
    def effective_logging_dir(self) -> str | None:
        if self.logging_dir:
            return self.logging_dir
        return os.path.join(self.output_dir, "logs") if self.output_dir else None

    def sample_prompt_list(self) -> list[str]:
        """Prompts as a list, reading a prompt file (one per line, `#` comments) when one is given."""
        if not self.sample_prompts:
            return []
        if isinstance(self.sample_prompts, list):
            return [p for p in self.sample_prompts if p.strip()]
        text = self.sample_prompts
        if os.path.isfile(text):
            with open(text, encoding="utf-8-sig") as fh:
                return [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
        return [text]

    # ---- io -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Canonical flat key → value (JSON/YAML-safe: tuples become "W,H")."""
        out: dict[str, Any] = {}
        for f in schema_fields():
            out[f.name] = plain(getattr(self, f.name))
        return out

    def to_yaml(self, only_changed: bool = False) -> str:
        """Flat YAML grouped by section; `load_config` of the text gives an equal config."""
        import yaml

        lines: list[str] = []
        data = self.to_dict()
        for section in SECTIONS:
            block = {f.name: data[f.name] for f in schema_fields() if f.metadata["section"] == section
                     and not (only_changed and data[f.name] == plain(default_of(f)))}
            if not block:
                continue
            lines.append(f"# --- {section}")
            lines.append(yaml.safe_dump(block, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip())
        return "\n".join(lines) + "\n"

    def save_yaml(self, path: str | os.PathLike[str], only_changed: bool = False) -> None:
        """Write `to_yaml()` atomically."""
        from lora_trainer.atomic import atomic_write_text

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.to_yaml(only_changed))



# ------------------------------------------------------------------------------------------------
# schema access


@dataclass(frozen=True)
class FieldInfo:
    """One config key as docs and the UI form see it."""

    name: str
    type: str
    default: Any
    help: str
    section: str
    aliases: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["default"] = plain(self.default)
        return d


def schema_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(TrainConfig) if not f.metadata.get("internal")]


def default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def config_fields() -> list[FieldInfo]:
    """Every key in schema order, for docs and the UI form."""
    return [FieldInfo(f.name, str(f.type), default_of(f), f.metadata["help"], f.metadata["section"],
                      f.metadata["aliases"], f.metadata["choices"], f.metadata["min"], f.metadata["max"],
                      f.metadata["gt"], f.metadata["path"]) for f in schema_fields()]


FIELDS = {f.name: f for f in schema_fields()}
ALIASES = {a: f.name for f in schema_fields() for a in f.metadata["aliases"]}


def plain(value: Any) -> Any:
    """A YAML/JSON-safe copy: a (W, H) tuple becomes "W,H"."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return copy.deepcopy(value)
