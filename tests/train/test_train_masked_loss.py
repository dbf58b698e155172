"""Masked loss: a run whose masks exclude the right half of every image does not learn what is there.

Every image holds the target concept on its left half and the control concept on its right half;
the mask keeps the left half. The held-out loss (fixed noise and timesteps, the demo's metric) is
measured per half before and after training: the masked run lowers it on the left half and clearly
less on the right, while the same run without masks lowers it on the right too.
"""

from __future__ import annotations

import torch
from PIL import Image
from train_helpers import make_config

from lora_trainer import synthetic
from lora_trainer.train.evaluate import fixed_inputs, load_network
from lora_trainer.train.image import train

HALF = synthetic.SIZE // 2


def _composite(n: int, seed: int) -> list[tuple[Image.Image, str]]:
    left = synthetic.concept_set(synthetic.TARGET_CONCEPT, n, seed=seed)
    right = synthetic.concept_set(synthetic.CONTROL_CONCEPT, n, seed=seed)
    out = []
    for a, b in zip(left, right, strict=True):
        image = a.image.copy()
        image.paste(b.image.crop((HALF, 0, synthetic.SIZE, synthetic.SIZE)), (HALF, 0))
        out.append((image, "zqx"))
    return out


def _write(folder, masks: bool) -> str:
    sub = folder / "4_zqx"
    sub.mkdir(parents=True)
    mask = Image.new("L", (synthetic.SIZE, synthetic.SIZE), 0)
    mask.paste(255, (0, 0, HALF, synthetic.SIZE))
    for i, (image, caption) in enumerate(_composite(6, seed=0)):
        image.save(sub / f"{i:02d}.png")
        (sub / f"{i:02d}.txt").write_text(caption)
        if masks:
            mask.save(sub / f"{i:02d}-masklabel.png")
    return str(folder)


@torch.no_grad()
def _half_losses(adapter, inputs) -> tuple[float, float]:
    left = right = 0.0
    for noisy, t, noise, _latents, cond in inputs:
        err = (adapter.predict(noisy.to(adapter.dtype), t, cond).double() - noise.double()) ** 2
        w = err.shape[-1] // 2
        left += float(err[..., :w].mean())
        right += float(err[..., w:].mean())
    return left / len(inputs), right / len(inputs)


def _gains(adapter, lora_file, inputs, before) -> tuple[float, float]:
    net = load_network(adapter, lora_file)
    net.attach()
    try:
        after = _half_losses(adapter, inputs)
    finally:
        net.detach()
    return tuple((b - a) / b for b, a in zip(before, after, strict=True))


def test_masked_out_half_is_not_learnt(tiny_adapter, tmp_path):
    assert tiny_adapter.info.prediction_type == "epsilon"
    held = _composite(6, seed=1001)
    inputs = fixed_inputs(tiny_adapter, synthetic.to_tensor([im for im, _ in held]), [c for _, c in held])
    before = _half_losses(tiny_adapter, inputs)
    gains = {}
    for masks in (True, False):
        data = _write(tmp_path / f"data-{masks}", masks)
        cfg = make_config(data, str(tmp_path / f"out-{masks}"), max_train_steps=36, epochs=10, learning_rate=2e-3,
                          save_state=False)
        gains[masks] = _gains(tiny_adapter, train(cfg, adapter=tiny_adapter).output_path, inputs, before)
    (m_left, m_right), (u_left, u_right) = gains[True], gains[False]
    print(f"held-out loss drop, masked run: left {m_left:+.1%} right {m_right:+.1%}; "
          f"unmasked run: left {u_left:+.1%} right {u_right:+.1%}")
    assert m_left > 0.02
    assert m_right < 0.5 * u_right
    assert m_left > 2 * max(m_right, 0.0)
