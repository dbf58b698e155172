"""Deterministic synthetic images with captions, for the tiny built-in model, the demo and quality tests.

Why: no real images or weights can be downloaded, yet the trainer's quality must be measured
honestly. The *varied* set (shapes, colours, stripes, gradients, dots at 64 px) pretrains the tiny
base model; the named *concepts* lie outside it (a pattern never seen in pretraining) so a LoRA
trained on a concept has something specific to learn, and the *control* concept shows how much of
the gain is generic. Everything is a pure function of (index, seed): the same call gives the same
pixels on every machine.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (235, 210, 40),
    "orange": (240, 140, 30), "purple": (130, 50, 170), "pink": (240, 130, 180), "cyan": (40, 200, 210),
    "white": (245, 245, 245), "black": (20, 20, 20), "gray": (128, 128, 128), "brown": (120, 75, 40),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond", "bar")
SIZES = ("small", "large")
PLACES = ("center", "left", "right", "top", "bottom")
PATTERNS = ("plain", "stripes", "gradient", "dots")
DIRECTIONS = ("horizontal", "vertical", "diagonal")

# concepts that never appear in the varied set: the trigger word starts each caption
CONCEPTS: dict[str, str] = {
    "zqx": "zqx checker star",   # magenta/lime checkerboard with a white five-pointed star
    "vyk": "vyk soft rings",     # control: smooth concentric rings, teal and peach
}
TARGET_CONCEPT = "zqx"
CONTROL_CONCEPT = "vyk"

# every word a caption can contain (the tiny tokenizer gives each its own token)
VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys(
    [*COLORS, *SHAPES, *SIZES, *PLACES, *PATTERNS, *DIRECTIONS,
     "a", "an", "on", "with", "background", "in", "the", "of", "and", "photo", "image", "picture",
     "pattern", "shape", "bright", "dark", "soft", "checker", "star", "rings", "zqx", "vyk",
     "style", "art", "drawing", "painting", "simple", "small", "big", "sks", "person", "dog", "cat"]))


@dataclass
class Sample:
    """One synthetic image with its caption; `kind` is "varied" or a concept key."""

    image: Image.Image
    caption: str
    kind: str


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int = 18) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _background(rng: random.Random, pattern: str, c1: tuple[int, int, int], c2: tuple[int, int, int],
                direction: str) -> Image.Image:
    """Plain, striped, dotted or gradient background as an RGB image."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    coord = {"horizontal": yy, "vertical": xx, "diagonal": (xx + yy) / 2}[direction]
    a, b = np.array(c1, np.float32), np.array(c2, np.float32)
    if pattern == "gradient":
        t = (coord / (SIZE - 1))[..., None]
    elif pattern == "stripes":
        period = rng.choice((8, 12, 16))
        t = ((coord // (period / 2)) % 2)[..., None]
    elif pattern == "dots":
        step = rng.choice((10, 14))
        r = step * 0.22
        dx, dy = (xx % step) - step / 2, (yy % step) - step / 2
        t = ((dx * dx + dy * dy) < r * r).astype(np.float32)[..., None]
    else:
        t = np.zeros((SIZE, SIZE, 1), np.float32)
    arr = a * (1 - t) + b * t
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")


def _shape_box(rng: random.Random, size: str, place: str) -> tuple[float, float, float]:
    """(cx, cy, radius) for a shape of `size` at `place`."""
    r = rng.uniform(7, 11) if size == "small" else rng.uniform(15, 21)
    off = SIZE * 0.27
    cx, cy = {"center": (32, 32), "left": (32 - off, 32), "right": (32 + off, 32),
              "top": (32, 32 - off), "bottom": (32, 32 + off)}[place]
    return cx + rng.uniform(-3, 3), cy + rng.uniform(-3, 3), r


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float,
                color: tuple[int, int, int]) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "ring":
        draw.ellipse(box, outline=color, width=max(2, int(r / 3)))
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r * 0.8), (cx + r, cy + r * 0.8)], fill=color)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=color)
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=color)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=color)
    else:  # bar
        draw.rectangle((cx - r, cy - r / 3, cx + r, cy + r / 3), fill=color)


def varied_sample(index: int, seed: int = 0) -> Sample:
    """Sample `index` of the varied set: a coloured shape on a plain/striped/dotted/gradient background."""
    rng = random.Random(f"varied-{seed}-{index}")
    names = list(COLORS)
    bg1, bg2, fg = rng.sample(names, 3)
    pattern, direction = rng.choice(PATTERNS), rng.choice(DIRECTIONS)
    shape, size, place = rng.choice(SHAPES), rng.choice(SIZES), rng.choice(PLACES)
    img = _background(rng, pattern, _jitter(COLORS[bg1], rng), _jitter(COLORS[bg2], rng), direction)
    cx, cy, r = _shape_box(rng, size, place)
    _draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, _jitter(COLORS[fg], rng))
    if pattern == "plain":
        bg = f"{bg1} background"
    elif pattern == "gradient":
        bg = f"{direction} {bg1} and {bg2} gradient background"
    else:
        bg = f"{bg1} background with {direction} {bg2} {pattern}" if pattern == "stripes" \
            else f"{bg1} background with {bg2} dots"
    caption = f"a {size} {fg} {shape} {'in the ' + place if place == 'center' else 'on the ' + place}, {bg}"
    return Sample(img, caption, "varied")


def _star(cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.42
        ang = rot + k * math.pi / 5 - math.pi / 2
        pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
    return pts


def concept_sample(concept: str, index: int, seed: int = 0) -> Sample:
    """Sample `index` of a named concept (see CONCEPTS); captions start with the trigger word."""
    rng = random.Random(f"{concept}-{seed}-{index}")
    if concept == "zqx":
        cell = rng.choice((6, 8))
        ox, oy = rng.randrange(cell), rng.randrange(cell)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        t = (((xx + ox) // cell + (yy + oy) // cell) % 2)[..., None].astype(np.float32)
        a = np.array(_jitter((200, 40, 200), rng, 12), np.float32)
        b = np.array(_jitter((150, 230, 40), rng, 12), np.float32)
        img = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8), "RGB")
        cx, cy = 32 + rng.uniform(-6, 6), 32 + rng.uniform(-6, 6)
        ImageDraw.Draw(img).polygon(_star(cx, cy, rng.uniform(16, 24), rng.uniform(-0.3, 0.3)),
                                    fill=_jitter((250, 250, 250), rng, 5))
        extra = rng.choice(("", ", simple", ", pattern", ", bright"))
        return Sample(img, f"zqx checker star{extra}", concept)
    if concept == "vyk":
        cx, cy = 32 + rng.uniform(-10, 10), 32 + rng.uniform(-10, 10)
        period = rng.uniform(12, 18)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
        d = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        t = (0.5 + 0.5 * np.cos(2 * math.pi * d / period))[..., None]
        a = np.array(_jitter((30, 120, 120), rng, 12), np.float32)
        b = np.array(_jitter((250, 190, 150), rng, 12), np.float32)
        img = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8), "RGB")
        extra = rng.choice(("", ", simple", ", pattern", ", soft"))
        return Sample(img, f"vyk soft rings{extra}", concept)
    raise ValueError(f"unknown synthetic concept {concept!r}; known: {', '.join(CONCEPTS)}")


def varied_set(n: int, seed: int = 0) -> list[Sample]:
    """The first `n` samples of the varied (pretraining) set."""
    return [varied_sample(i, seed) for i in range(n)]


def concept_set(concept: str, n: int, seed: int = 0) -> list[Sample]:
    """`n` samples of `concept`; use different seeds for train and held-out splits."""
    return [concept_sample(concept, i, seed) for i in range(n)]


def to_tensor(images: list[Image.Image]):  # -> torch.Tensor
    """PIL images -> float tensor [B,3,H,W] in [-1, 1] (the adapters' pixel convention)."""
    import torch

    arr = np.stack([np.asarray(im.convert("RGB"), np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def write_dataset(folder: str, samples: list[Sample], *, repeats: int | None = None,
                  name: str = "data") -> str:
    """Write samples as `<folder>/[N_]name/NNNN.png` + `.txt` captions (kohya layout); returns the dir."""
    import os

    sub = os.path.join(folder, f"{repeats}_{name}" if repeats else name)
    os.makedirs(sub, exist_ok=True)
    for i, s in enumerate(samples):
        s.image.save(os.path.join(sub, f"{i:04d}.png"))
        with open(os.path.join(sub, f"{i:04d}.txt"), "w", encoding="utf-8") as f:
            f.write(s.caption)
    return sub
