"""A loss curve drawn with PIL: the same picture on every gradio version, no plotting library.

The top band holds only the legend, between gradio's label badge (top left) and its image toolbar
(top right); the axis values sit on the right; the legend tells the raw loss from its moving average
and, when the run holds data out, from the validation loss (points where it was evaluated).
"""

from __future__ import annotations

from PIL import Image, ImageDraw

W, H = 640, 260
LEFT, RIGHT, TOP, BOTTOM = 12, 64, 34, 30  # plot margins; TOP clears the label badge
RAW, SMOOTH, GRID, TEXT = (170, 200, 240), (20, 80, 200), (200, 200, 200), (80, 80, 80)
VAL = (230, 120, 20)


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    out, last = [], None
    for v in values:
        last = v if last is None else last * weight + v * (1 - weight)
        out.append(last)
    return out


def loss_plot(steps: list[int], losses: list[float], resumed_at: int | None = None,
              val: list[tuple[int, float]] | None = None) -> Image.Image:
    """Raw loss (light) and its exponential moving average (dark) against the step, the validation
    loss (orange points, same axis) where it was evaluated; a dashed line marks where a resumed run
    continued."""
    val = val or []
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = LEFT, TOP, W - RIGHT, H - BOTTOM
    draw.rectangle([x0, y0, x1, y1], outline=GRID)
    if len(losses) < 2:
        draw.text((x0 + 8, (y0 + y1) // 2 - 6), "the loss curve appears after the first steps", fill=(120, 120, 120))
        return img
    lo, hi = min(losses + [v for _, v in val]), max(losses + [v for _, v in val])
    hi = hi if hi > lo else lo + 1e-6
    s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

    def xy(s: float, v: float) -> tuple[float, float]:
        return (x0 + (s - s0) / (s1 - s0) * (x1 - x0), y1 - (v - lo) / (hi - lo) * (y1 - y0))

    if resumed_at is not None and s0 < resumed_at <= s1:
        x = xy(resumed_at, lo)[0]
        for y in range(y0, y1, 8):
            draw.line([(x, y), (x, min(y + 4, y1))], fill=(150, 150, 150))
        draw.text((x + 3, y0 + 2), f"resumed at {resumed_at}", fill=TEXT)
    draw.line([xy(s, v) for s, v in zip(steps, losses, strict=False)], fill=RAW, width=1)
    draw.line([xy(s, v) for s, v in zip(steps, _smooth(losses), strict=False)], fill=SMOOTH, width=2)
    if val:
        points = [xy(s, v) for s, v in val]
        if len(points) > 1:
            draw.line(points, fill=VAL, width=2)
        for px, py in points:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=VAL)
    draw.text((x1 + 4, y0 - 5), f"{hi:.3f}", fill=TEXT)
    draw.text((x1 + 4, y1 - 8), f"{lo:.3f}", fill=TEXT)
    draw.text((x0, y1 + 6), f"step {s0}", fill=TEXT)
    draw.text((x1 - 70, y1 + 6), f"step {steps[-1]}", fill=TEXT)
    # legend above the plot area, clear of the label badge (left) and the image toolbar (right)
    lx = 110
    draw.line([(lx, 14), (lx + 18, 14)], fill=RAW, width=2)
    draw.text((lx + 22, 8), "loss per step", fill=TEXT)
    draw.line([(lx + 110, 14), (lx + 128, 14)], fill=SMOOTH, width=2)
    draw.text((lx + 132, 8), "smoothed", fill=TEXT)
    if val:
        draw.ellipse([lx + 214, 11, lx + 220, 17], fill=VAL)
        draw.text((lx + 226, 8), "validation", fill=TEXT)
    return img
