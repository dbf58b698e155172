"""Pretrain the built-in tiny SD1 model on the synthetic varied set and write its weights into the package.

Why: on a random-weight base a LoRA mostly learns generic denoising, so its loss falls as much on
unrelated images as on the concept, and no quality claim can be tested. A base briefly pretrained on
varied images that exclude the concepts makes the demo's test honest. Runs on CPU in a few minutes:

    nice .venv/bin/python tools/pretrain_tiny.py [--vae-seconds 90] [--unet-seconds 300] [--threads 2]

The shipped weights were made on one GPU in ~7 minutes (the file's header keeps the run's numbers):

    python tools/pretrain_tiny.py --device cuda --images 20000 --batch 128 --vae-seconds 100 \
        --unet-seconds 300 --eval-lora-steps 400

Stages: (1) VAE reconstruction (MSE + small KL), then the latent scaling factor = 1/std of latents;
(2) UNet + text encoder epsilon denoising on cached latents (DDPM scaled-linear, caption dropout).
Output: lora_trainer/models/tiny_weights/tiny-sd1.safetensors (fp16, atomic write).
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
    p.add_argument("--images", type=int, default=3000, help="varied-set images")
    p.add_argument("--vae-seconds", type=float, default=90)
    p.add_argument("--unet-seconds", type=float, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda (a GPU pretrains far more steps in the same time)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="weights file (default: the package's tiny-sd1 file)")
    p.add_argument("--eval-lora-steps", type=int, default=0,
                   help="after pretraining, train a LoRA on the concept this many steps and report "
                        "held-out loss drops on the concept and the control")
    args = p.parse_args(argv)

    import torch
    from safetensors.torch import save_file

    from lora_trainer import synthetic
    from lora_trainer.models.ddpm import NoiseSchedule
    from lora_trainer.models.tiny import build_tiny_adapter, flat_state_dict, weights_path

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    adapter = build_tiny_adapter("sd1", pretrained=False, seed=args.seed).to(args.device)
    unet, vae, te = adapter.unet, adapter.vae, adapter.text_encoders[0]
    samples = synthetic.varied_set(args.images, seed=args.seed)
    pixels = synthetic.to_tensor([s.image for s in samples]).to(args.device)
    captions = [s.caption for s in samples]
    log = {"images": len(samples)}

    # (1) VAE
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    t0, step = time.time(), 0
    while time.time() - t0 < args.vae_seconds:
        idx = torch.randint(0, len(samples), (16,), device=args.device)
        x = pixels[idx]
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.sample()).sample
        kl = dist.kl().mean() / x[0].numel()
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-3 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            print(f"vae step {step} loss {loss.item():.4f}", flush=True)
    vae.eval()
    with torch.no_grad():
        means = torch.cat([vae.encode(pixels[i:i + 64]).latent_dist.mean for i in range(0, len(pixels), 64)])
        rec_err = torch.nn.functional.mse_loss(vae.decode(means[:64]).sample, pixels[:64]).item()
    scale = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scale)
    latents = means * scale
    log.update(vae_steps=step, vae_rec_mse=round(rec_err, 5), scaling_factor=round(scale, 5))
    print(f"{len(samples)} images; vae done: {step} steps, rec mse {rec_err:.4f}, scaling factor {scale:.4f}", flush=True)

    # (2) UNet + text encoder denoising
    acp = NoiseSchedule().alphas_cumprod.to(torch.float32).to(args.device)
    unet.train()
    te.train()
    params = [{"params": unet.parameters(), "lr": 1e-3}, {"params": te.parameters(), "lr": 3e-4}]
    opt = torch.optim.AdamW(params, weight_decay=0.01)
    t0, step, ema = time.time(), 0, None
    while time.time() - t0 < args.unet_seconds:
        idx = torch.randint(0, len(samples), (args.batch,), device=args.device)
        x0 = latents[idx]
        caps = ["" if torch.rand(()) < 0.1 else captions[i] for i in idx.tolist()]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (x0.shape[0],), device=args.device)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = adapter.predict(xt, t, adapter.encode_text(caps))
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 200 == 0:
            print(f"unet step {step} loss(ema) {ema:.4f}", flush=True)
    unet.eval()
    te.eval()
    log.update(unet_steps=step, unet_loss_ema=round(float(ema or 0), 5))

    sd = {k: v.detach().cpu().to(torch.float16) if v.is_floating_point() else v
          for k, v in flat_state_dict({"unet": unet, "vae": vae, "text_encoders": [te]}).items()}
    sd["vae.__scaling_factor__"] = torch.tensor(scale, dtype=torch.float32)
    out = args.out or weights_path("sd1")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    save_file(sd, tmp, metadata={"pretrain": json.dumps(log)})
    os.replace(tmp, out)
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB): {json.dumps(log)}", flush=True)
    if args.eval_lora_steps:
        print(json.dumps(concept_gain(adapter, args.eval_lora_steps, args.device)), flush=True)
    return 0


def heldout_loss(adapter, latents, cond, seed: int = 123) -> float:  # noqa: ANN001
    """Mean epsilon MSE with fixed noise and timesteps (so before/after compare the same draws)."""
    import torch

    from lora_trainer.models.ddpm import NoiseSchedule

    gen = torch.Generator("cpu").manual_seed(seed)
    acp = NoiseSchedule().alphas_cumprod.to(torch.float32)
    total = 0.0
    reps = 8
    with torch.no_grad():
        for _ in range(reps):
            noise = torch.randn(latents.shape, generator=gen)
            t = torch.randint(0, 1000, (latents.shape[0],), generator=gen)
            a = acp[t].view(-1, 1, 1, 1)
            xt = a.sqrt() * latents.cpu() + (1 - a).sqrt() * noise
            pred = adapter.predict(xt, t, cond).float().cpu()
            total += torch.nn.functional.mse_loss(pred, noise).item()
    return total / reps


def concept_gain(adapter, steps: int, device: str, rank: int = 8, lr: float = 1e-3) -> dict:  # noqa: ANN001
    """Train a UNet LoRA on the target concept; held-out loss drop on target vs control concept."""
    import torch

    from lora_trainer import synthetic
    from lora_trainer.lora.network import LoRANetwork
    from lora_trainer.models.ddpm import NoiseSchedule

    def split(concept: str, n: int, seed: int):  # noqa: ANN202
        ss = synthetic.concept_set(concept, n, seed)
        lat = adapter.encode_images(synthetic.to_tensor([s.image for s in ss]).to(device))
        with torch.no_grad():
            cond = adapter.encode_text([s.caption for s in ss])
        return lat, cond

    train_lat, train_cond = split(synthetic.TARGET_CONCEPT, 24, seed=1)
    held = {c: split(c, 16, seed=2) for c in (synthetic.TARGET_CONCEPT, synthetic.CONTROL_CONCEPT)}
    before = {c: heldout_loss(adapter, *v) for c, v in held.items()}
    adapter.prepare_for_training()
    net = LoRANetwork(adapter.lora_targets(unet=True, text_encoder=False, conv=False), rank, rank).to(device)
    net.attach()
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    acp = NoiseSchedule().alphas_cumprod.to(torch.float32).to(device)
    try:
        for _ in range(steps):
            idx = torch.randint(0, train_lat.shape[0], (8,), device=device)
            x0 = train_lat[idx]
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (8,), device=device)
            a = acp[t].view(-1, 1, 1, 1)
            pred = adapter.predict(a.sqrt() * x0 + (1 - a).sqrt() * noise, t,
                                   {k: v[idx] for k, v in train_cond.items()})
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        after = {c: heldout_loss(adapter, *v) for c, v in held.items()}
    finally:
        net.detach()
        adapter.restore()
    return {"lora_steps": steps, "before": before, "after": after,
            "drop": {c: round((before[c] - after[c]) / before[c], 4) for c in before}}


if __name__ == "__main__":
    raise SystemExit(main())
