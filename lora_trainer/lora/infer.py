"""The `NetworkSpec` a file was trained with, read from its tensors, so a run can continue from it.

Why from the tensors and not the metadata: files from kohya, LyCORIS, OneTrainer or a merge tool
carry different (or no) `ss_network_args`, but the key layout and shapes always tell the kind, the
rank, alpha and whether DoRA is on. LoKr's factor needs no inference: a LoKr module adopts the
file's layout when it loads (see `LoKrModule.load_file_tensors`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import torch

from lora_trainer.lora.kinds import detect_kind, split_key
from lora_trainer.lora.network import LoRANetwork, LoRAWeightsError, infer_rank_alpha
from lora_trainer.lora.spec import NetworkSpec
from lora_trainer.lora.target import LoraTarget

_RANK_KEY = {"loha": ".hada_w1_b", "lokr": ".lokr_w2_b"}
# kxk convolutions of SD UNets in both namings (LoHa/LoKr store them flat, so the shape cannot tell):
# resnet conv1/conv2 (ldm in_layers_2/out_layers_3), down/upsampler conv (ldm op/conv), conv_in/out
_KXK = re.compile(r"(_conv[12]?|_in_layers_2|_out_layers_3|_op|_conv_in|_conv_out)$")


def _groups(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for k, t in sd.items():
        name, suf = split_key(k)
        if suf:
            out.setdefault(name, {})[suf] = t
    return out


def spec_from_weights(sd: dict[str, torch.Tensor], base: NetworkSpec | None = None) -> NetworkSpec:
    """`base` (the run's other settings) with the file's type, ranks, alphas and DoRA flag."""
    base = base or NetworkSpec()
    groups = _groups(sd)
    kinds = Counter(detect_kind(g) for g in groups.values())
    kinds.pop(None, None)
    if not kinds:
        raise LoRAWeightsError("network_weights: no LoRA/LoHa/LoKr module keys in this file; is it a LoRA?")
    if len(kinds) > 1:
        raise LoRAWeightsError(f"network_weights: the file mixes module kinds {sorted(kinds)}; it cannot be continued")
    algo = next(iter(kinds))
    dora = any(".dora_scale" in g for g in groups.values())
    if algo == "lora":
        ra = infer_rank_alpha(sd)
        ntype = "dora" if dora else ("locon" if ra.conv_rank and ra.conv_rank == ra.rank else "lora")
        return replace(base, network_type=ntype, rank=ra.rank or ra.conv_rank, alpha=ra.alpha,
                       conv_rank=ra.conv_rank, conv_alpha=ra.conv_alpha, dora_wd=False)
    lin, conv = Counter(), Counter()
    for name, g in groups.items():
        t = g.get(_RANK_KEY[algo])
        if t is None:  # a full-matrix LoKr half: no rank to read
            continue
        a = float(g[".alpha"].item()) if ".alpha" in g else float(t.shape[0])
        (conv if _KXK.search(name) else lin)[(int(t.shape[0]), a)] += 1
    rank, alpha = lin.most_common(1)[0][0] if lin else (base.rank, base.alpha)
    crank, calpha = conv.most_common(1)[0][0] if conv else (0, None)
    if not conv and any(_KXK.search(n) for n in groups):  # full-matrix kxk halves only
        crank, calpha = rank, alpha
    return replace(base, network_type=algo, rank=rank, alpha=alpha, conv_rank=crank, conv_alpha=calpha,
                   dora_wd=dora)


def network_for_file(sd: dict[str, torch.Tensor], lora_targets: Callable[..., list[LoraTarget]],
                     base: NetworkSpec | None = None) -> LoRANetwork:
    """A loaded network for a file of any type; `lora_targets(unet=, text_encoder=, conv=)` is the
    model adapter's. Parts (UNet / text encoder / kxk convs) follow what the file holds."""
    spec = spec_from_weights(sd, base)
    targets = lora_targets(unet=any(k.startswith("lora_unet") for k in sd),
                           text_encoder=any(k.startswith("lora_te") for k in sd),
                           conv=spec.effective_conv_rank > 0)
    net = LoRANetwork.from_spec(targets, spec)
    net.load_kohya_state_dict(sd)
    return net
