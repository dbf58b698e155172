"""Image checks before training: corrupt files, too small, extreme aspect ratio, near-duplicates.

Near-duplicates are found with a DCT perceptual hash (64 bits: signs of the low-frequency DCT
coefficients of a 32×32 grayscale copy against their median), which survives resizing and
re-encoding, unlike a byte hash.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from lora_trainer.data.tools.store import list_images

_HASH_SIZE, _LOW = 32, 8
_N = np.arange(_HASH_SIZE)
_DCT = np.cos(np.pi * (2 * _N[None, :] + 1) * _N[:, None] / (2 * _HASH_SIZE))  # DCT-II basis rows
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def perceptual_hash(image: Image.Image) -> int:
    """64-bit pHash of an image; Hamming distance ≤ ~6 means "the same picture"."""
    gray = np.asarray(image.convert("L").resize((_HASH_SIZE, _HASH_SIZE), Image.Resampling.LANCZOS),
                      dtype=np.float64)
    low = (_DCT @ gray @ _DCT.T)[:_LOW, :_LOW].flatten()
    bits = low > np.median(low[1:])  # the DC term would dominate the median
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming_distances(value: int, others: np.ndarray) -> np.ndarray:
    """Bit differences between one hash and an array of uint64 hashes."""
    xor = (others ^ np.uint64(value)).view(np.uint8).reshape(-1, 8)
    return _POPCOUNT[xor].sum(axis=1)


@dataclass
class Issue:
    path: str      # relative to the dataset root
    kind: str      # "corrupt" | "too_small" | "extreme_aspect" | "duplicate"
    detail: str


@dataclass
class CheckReport:
    root: str
    images: int = 0
    issues: list[Issue] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.issues

    def by_kind(self, kind: str) -> list[str]:
        return [i.path for i in self.issues if i.kind == kind]

    def rows(self) -> list[list[str]]:
        return [[i.path, i.kind, i.detail] for i in self.issues]

    def summary(self) -> str:
        counts = {k: len(self.by_kind(k)) for k in ("corrupt", "too_small", "extreme_aspect", "duplicate")}
        found = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in counts.items() if n)
        return f"{self.images} images checked: " + (found or "no problems found")

    def to_markdown(self) -> str:
        lines = [f"**{self.summary()}**"]
        if self.issues:
            lines += ["", "| image | problem | detail |", "|---|---|---|"]
            lines += [f"| {i.path} | {i.kind.replace('_', ' ')} | {i.detail} |" for i in self.issues]
        return "\n".join(lines)


def check_images(root: str | os.PathLike, *, min_side: int = 256, max_aspect: float = 4.0,
                 duplicate_distance: int = 4, on_progress: Callable[[int, int], None] | None = None
                 ) -> CheckReport:
    """Open every image of a dataset folder and report the ones that would hurt training."""
    root = Path(root)
    paths = list_images(root)
    report = CheckReport(str(root), images=len(paths))
    hashes: list[tuple[str, int]] = []
    for n, path in enumerate(paths, start=1):
        rel = path.relative_to(root).as_posix()
        try:
            with Image.open(path) as probe:
                probe.verify()  # structure and checksums
            with Image.open(path) as image:
                image.load()  # decodes every pixel: truncated data fails here
                width, height = image.size
                hashes.append((rel, perceptual_hash(image)))
        except Exception as exc:  # noqa: BLE001 - any decode failure means "corrupt"
            report.issues.append(Issue(rel, "corrupt", f"cannot be decoded: {type(exc).__name__}: {exc}"))
            continue
        report.sizes[rel] = (width, height)
        if min(width, height) < min_side:
            report.issues.append(Issue(rel, "too_small", f"{width}×{height}, shorter side below {min_side} px"))
        ratio = max(width, height) / max(1, min(width, height))
        if ratio > max_aspect:
            report.issues.append(Issue(rel, "extreme_aspect", f"{width}×{height}, aspect {ratio:.1f}:1 > {max_aspect:g}:1"))
        if on_progress:
            on_progress(n, len(paths))
    _find_duplicates(report, hashes, duplicate_distance)
    return report


def _find_duplicates(report: CheckReport, hashes: list[tuple[str, int]], distance: int) -> None:
    if len(hashes) < 2:
        return
    values = np.array([h for _, h in hashes], dtype=np.uint64)
    parent = list(range(len(hashes)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(hashes) - 1):
        close = np.nonzero(hamming_distances(int(values[i]), values[i + 1:]) <= distance)[0]
        for j in close + i + 1:
            parent[find(int(j))] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(len(hashes)):
        groups.setdefault(find(i), []).append(i)
    for members in groups.values():
        if len(members) < 2:
            continue
        names = [hashes[i][0] for i in members]
        report.duplicate_groups.append(names)
        for name in names[1:]:
            report.issues.append(Issue(name, "duplicate", f"looks the same as {names[0]}"))
