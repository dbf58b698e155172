"""Peak GPU memory and step time of a FLUX.1 LoRA step, through the trainer's own adapter path.

A random-weight transformer of FLUX.1-dev's real size (12B parameters, bf16), LoRA rank 16 on every block
Linear, 1024x1024 (4096 image tokens + 512 T5 tokens), batch 1, gradient checkpointing, AdamW: once with
`fp8_base` + `blocks_to_swap` (the 12 GB setting kohya documents), the same without prefetching the next
block (what the side-stream prefetch saves), and once with `fp8_base` alone (the step time without swap). The model is placed with `FluxAdapter.place`, as a training run does, so the full bf16
base never sits on the GPU. Prints one JSON line per setting; `--tiny` runs the built-in tiny model on the
CPU (a check of the script itself).

    python bench/flux_memory_bench.py [--swap 16] [--res 1024] [--rank 16] [--steps 3] [--tiny]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def real_transformer(kind: str, dtype):  # -> FluxTransformer2DModel with random weights, in CPU memory
    import torch
    from accelerate import init_empty_weights

    from lora_trainer.models.flux_loading import shipped_config
    from lora_trainer.models.flux_tiny import transformer_class

    cfg = {k: v for k, v in shipped_config(f"transformer-{kind}").items() if not k.startswith("_")}
    with init_empty_weights():
        tr = transformer_class(kind)(**cfg)
    tr = tr.to(dtype).to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in tr.parameters():
            p.normal_(0, 0.02, generator=g)
    return tr.eval().requires_grad_(False)


def run_setting(parts, *, fp8: bool, swap: int, res: int, rank: int, steps: int, device, dtype,
                prefetch: bool = True) -> dict:
    import torch

    from lora_trainer.lora.network import LoRANetwork
    from lora_trainer.models.flux_adapter import FluxAdapter, FluxOptions

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    ad = FluxAdapter(parts, FluxOptions(fp8_base=fp8, blocks_to_swap=swap, swap_prefetch=prefetch))
    t0 = time.time()
    ad.place(device, dtype)
    place_s = time.time() - t0
    ad.prepare_for_training()
    ad.set_gradient_checkpointing(True)
    net = LoRANetwork(ad.lora_targets(unet=True, text_encoder=False, conv=False), rank=rank, alpha=rank)
    net.attach()
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.to(device)
    opt = torch.optim.AdamW(params, lr=1e-4)
    cfg = parts["transformer"].config
    g = torch.Generator().manual_seed(0)
    lat = res // 8
    t5_len = 512
    latents = torch.randn(1, 16, lat, lat, generator=g).to(device)
    cond = {"t5": torch.randn(1, t5_len, cfg.joint_attention_dim, generator=g).to(device, dtype),
            "pooled": torch.randn(1, cfg.pooled_projection_dim, generator=g).to(device, dtype)}
    objective = ad.objective()
    weights_gb = torch.cuda.memory_allocated() / 2**30 if cuda else 0.0
    times, losses = [], []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize()
        t = time.time()
        noised = objective.noised(latents, g)
        with torch.autocast(device.type, dtype=dtype, enabled=cuda):
            pred = ad.predict(noised.noisy.to(dtype), noised.timesteps, cond)
        loss = objective.loss(pred.float(), noised)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.time() - t)
        losses.append(float(loss.detach()))
    events = list(ad._swap.events) if ad._swap is not None else []
    out = {"fp8_base": fp8, "blocks_to_swap": swap, "prefetch": prefetch and swap > 0,
           "prefetched_share": round(sum(e[0] == "prefetched" for e in events) /
                                     max(1, sum(e[0] != "prefetch" for e in events)), 2),
           "resolution": res, "rank": rank,
           "lora_params": sum(p.numel() for p in params), "place_s": round(place_s, 1),
           "weights_on_gpu_gb": round(weights_gb, 2),
           "peak_allocated_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
           "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
           "step_s": [round(x, 3) for x in times], "losses": [round(x, 4) for x in losses]}
    net.detach()
    ad.restore()
    del opt, net, params
    parts["transformer"].to("cpu")
    gc.collect()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--swap", type=int, default=16)
    p.add_argument("--res", type=int, default=1024)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="the built-in tiny model on the CPU")
    args = p.parse_args(argv)

    import torch

    if args.tiny:
        from lora_trainer.models.flux_tiny import build_tiny_flux_parts

        parts = build_tiny_flux_parts("flux")
        device, dtype, res, swap = torch.device("cpu"), torch.float32, 64, min(args.swap, 2)
    else:
        device, dtype, res, swap = torch.device("cuda"), torch.bfloat16, args.res, args.swap
        t = time.time()
        parts = {"kind": "flux-dev", "transformer": real_transformer("flux-dev", dtype)}
        print(json.dumps({"built_s": round(time.time() - t, 1), "gpu": torch.cuda.get_device_name()}), flush=True)
    for fp8, n, prefetch in ((True, swap, True), (True, swap, False), (True, 0, True)):
        print(json.dumps(run_setting(parts, fp8=fp8, swap=n, res=res, rank=args.rank, steps=args.steps,
                                     device=device, dtype=dtype, prefetch=prefetch)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
