"""Which captioners this Python can run, decided without importing them.

Inside the WebUI nothing is installed into the host, so a captioner whose library is missing or too
old is offered greyed out with the reason instead of failing after the user pressed Caption.
Versions are read from package metadata (cheap: no torch, no transformers import at start-up).

Minimum transformers versions, read from the released wheels:
- `AutoModelForImageTextToText` (the generic `vlm` captioner) first ships in 4.46.0 (absent in 4.45.0);
- Florence-2 as a native class (`Florence2ForConditionalGeneration`, no remote code) in 4.56.0
  (absent in 4.55.4).
A1111 1.10 pins transformers 4.30.2 (neither), Forge 4.46.1 (`vlm` only).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re

DETAILS = ("short", "detailed", "more-detailed")  # prose captioners: how long a description
PRECISIONS = ("auto", "fp16", "bf16", "fp32")
MIN_TRANSFORMERS = {"blip": (4, 26, 0), "vlm": (4, 46, 0), "florence2": (4, 56, 0)}


def version_tuple(text: str) -> tuple[int, int, int]:
    """"4.46.1" → (4, 46, 1); "5.0.0.dev0" → (5, 0, 0)."""
    parts = [int(m) for m in re.findall(r"\d+", text.split("+")[0])[:3]]
    return tuple((parts + [0, 0, 0])[:3])  # type: ignore[return-value]


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(v) for v in version)


def unavailable_reason(captioner: str, *, in_webui: bool = False) -> str | None:
    """None when `captioner` can run here, else one line saying why not (and what would fix it)."""
    if captioner in MIN_TRANSFORMERS:
        have = installed_version("transformers")
        need = MIN_TRANSFORMERS[captioner]
        if have is None:
            return f"{captioner} needs the transformers package, which is not installed"
        if version_tuple(have) < need:
            if in_webui:
                return (f"{captioner} needs transformers ≥ {_dotted(need)}; the WebUI has {have} and nothing is "
                        "upgraded inside it: use the standalone app or the command line in their own environment")
            return (f"{captioner} needs transformers ≥ {_dotted(need)}; this Python has {have} (use an environment "
                    "with a newer transformers, not the WebUI's own)")
        return None
    if captioner == "wd14":
        if importlib.util.find_spec("onnxruntime") is None:
            return "wd14 needs onnxruntime (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
        return None
    if captioner == "host":
        return None if in_webui else "host uses the WebUI's own interrogators: only inside the WebUI"
    return None


def availability(names: tuple[str, ...], *, in_webui: bool = False) -> dict[str, str | None]:
    """{captioner: reason it cannot run, or None} for every name."""
    return {name: unavailable_reason(name, in_webui=in_webui) for name in names}
