"""Pretrain the built-in tiny FLUX.1 model on the synthetic varied set and write its weights into the package.

Why: as for the tiny SD1 (tools/pretrain_tiny.py), a LoRA on a random-weight base mostly learns generic
denoising, so no quality claim can be tested; a base briefly pretrained on varied images that exclude
the concepts makes the Flux quality test and `demo --model flux` honest. Runs on CPU in a few minutes:

    nice .venv/bin/python tools/pretrain_tiny_flux.py [--vae-seconds 90] [--flow-seconds 300] [--threads 2]

Stages: (1) the 16-channel VAE as a deterministic autoencoder (the trainer encodes with the latent mean),
with a batch-statistics term that puts its latents where FLUX.1's fixed scale 0.3611 / shift 0.1159 make
them unit-variance and zero-mean, so the VAE config keeps FLUX.1's real values; (2) transformer, CLIP-L
and T5 on flow matching through `FluxAdapter` (the trainer's own objective and forward; 10 % empty
captions). Output: lora_trainer/models/tiny_weights/tiny-flux.safetensors (fp16, atomic write).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--vae-seconds", type=float, default=90)
    p.add_argument("--flow-seconds", type=float, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import save

    from lora_trainer import synthetic
    from lora_trainer.atomic import atomic_write_bytes
    from lora_trainer.models import flux_math
    from lora_trainer.models.flux_adapter import FluxAdapter
    from lora_trainer.models.flux_tiny import build_tiny_flux_parts, flat_flux_state_dict, flux_weights_path

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    parts = build_tiny_flux_parts("flux", args.seed, pretrained=False)
    vae = parts["vae"]
    samples = synthetic.varied_set(args.images, seed=args.seed)
    pixels = synthetic.to_tensor([s.image for s in samples])
    captions = [s.caption for s in samples]
    log: dict = {"images": len(samples)}
    want_std = 1.0 / flux_math.LATENT_SCALE

    # (1) VAE: deterministic autoencoder with the latent statistics FLUX.1's scale / shift expect
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    t0, step = time.time(), 0
    while time.time() - t0 < args.vae_seconds:
        x = pixels[torch.randint(0, len(samples), (16,))]
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z + 0.05 * want_std * torch.randn_like(z)).sample
        stats = (z.mean() - flux_math.LATENT_SHIFT) ** 2 / want_std ** 2 + (z.std() / want_std - 1) ** 2
        loss = torch.nn.functional.mse_loss(rec, x) + 0.01 * stats
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 100 == 0:
            print(f"vae step {step} loss {loss.item():.4f} std {z.std().item():.3f}", flush=True)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        means = torch.cat([vae.encode(pixels[i:i + 64]).latent_dist.mean for i in range(0, len(pixels), 64)])
        rec_err = torch.nn.functional.mse_loss(vae.decode(means[:64]).sample, pixels[:64]).item()
    latents = flux_math.scale_latents(means)
    log.update(vae_steps=step, vae_rec_mse=round(rec_err, 5), latent_mean=round(float(latents.mean()), 4),
               latent_std=round(float(latents.std()), 4))
    print(f"vae done: {json.dumps(log)}", flush=True)

    # (2) transformer + text encoders on flow matching, through the trainer's adapter
    ad = FluxAdapter(parts)
    objective = ad.objective()
    mods = [parts["transformer"], parts["text_encoder"], parts["text_encoder_2"]]
    for m in mods:
        m.train().requires_grad_(True)
    opt = torch.optim.AdamW([{"params": parts["transformer"].parameters(), "lr": 1e-3},
                             {"params": parts["text_encoder"].parameters(), "lr": 3e-4}],  # T5 stays frozen
                            weight_decay=0.01)
    gen = torch.Generator().manual_seed(args.seed)
    t0, step, ema = time.time(), 0, None
    while time.time() - t0 < args.flow_seconds:
        idx = torch.randint(0, len(samples), (args.batch,))
        caps = ["" if torch.rand(()) < 0.1 else captions[i] for i in idx.tolist()]
        noised = objective.noised(latents[idx], gen)
        pred = ad.predict(noised.noisy, noised.timesteps, ad.encode_text(caps))
        loss = objective.loss(pred, noised)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for m in mods for q in m.parameters()], 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0:
            print(f"flow step {step} loss(ema) {ema:.4f}", flush=True)
    for m in mods:
        m.eval().requires_grad_(False)
    log.update(flow_steps=step, flow_loss_ema=round(float(ema or 0), 5))

    sd = {k: v.detach().to(torch.float16) if v.is_floating_point() else v
          for k, v in flat_flux_state_dict(parts).items()}
    out = args.out or flux_weights_path("flux")
    atomic_write_bytes(out, save(sd, metadata={"pretrain": json.dumps(log)}))
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB): {json.dumps(log)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
