"""Regenerate docs/config.md and the README's config reference from the config schema (`make docs`)."""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lora_trainer.config import markdown_reference  # noqa: E402

START = "<!-- generated: python -m lora_trainer.config --markdown; do not edit -->"
END = "<!-- end of generated config reference -->"


def main() -> int:
    text = markdown_reference()
    with open(os.path.join(ROOT, "docs", "config.md"), "w", encoding="utf-8") as f:
        f.write(text)
    path = os.path.join(ROOT, "README.md")
    with open(path, encoding="utf-8") as f:
        readme = f.read()
    head, rest = readme.split(START, 1)
    tail = rest.split(END, 1)[1]
    body = text.split("\n", 1)[1].strip()
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{START}\n{body}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
