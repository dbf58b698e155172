"""A loss curve drawn with PIL: the same picture on every gradio version, no plotting library."""

from __future__ import annotations

from PIL import Image, ImageDraw

W, H, PAD = 640, 240, 36


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    out, last = [], None
    for v in values:
        last = v if last is None else last * weight + v * (1 - weight)
        out.append(last)
    return out


def loss_plot(steps: list[int], losses: list[float]) -> Image.Image:
    """Raw loss (light) and its exponential moving average (dark) against the step."""
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    draw.rectangle([PAD, 8, W - 8, H - PAD], outline=(180, 180, 180))
    if len(losses) < 2:
        draw.text((PAD + 8, H // 2 - 6), "loss curve appears after the first steps", fill=(120, 120, 120))
        return img
    lo, hi = min(losses), max(losses)
    hi = hi if hi > lo else lo + 1e-6
    s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

    def xy(s: float, v: float) -> tuple[float, float]:
        return (PAD + (s - s0) / (s1 - s0) * (W - 8 - PAD), H - PAD - (v - lo) / (hi - lo) * (H - PAD - 8))

    draw.line([xy(s, v) for s, v in zip(steps, losses, strict=False)], fill=(170, 200, 240), width=1)
    draw.line([xy(s, v) for s, v in zip(steps, _smooth(losses), strict=False)], fill=(20, 80, 200), width=2)
    draw.text((4, 8), f"{hi:.3f}", fill=(80, 80, 80))
    draw.text((4, H - PAD - 10), f"{lo:.3f}", fill=(80, 80, 80))
    draw.text((PAD, H - PAD + 6), f"step {s0}", fill=(80, 80, 80))
    draw.text((W - 90, H - PAD + 6), f"step {steps[-1]}", fill=(80, 80, 80))
    draw.text((W // 2 - 20, H - 18), "loss", fill=(20, 80, 200))
    return img
