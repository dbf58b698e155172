"""The README's config reference is the generated one (every key, default and meaning)."""

from __future__ import annotations

from pathlib import Path

from lora_trainer.config import config_fields, markdown_reference

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_is_current():
    readme = ROOT.joinpath("README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- generated: python -m lora_trainer.config --markdown; do not edit -->")
    end = readme.index("<!-- end of generated config reference -->")
    block = readme[start:end].split("\n", 1)[1].strip()
    expected = markdown_reference().split("\n", 1)[1].strip()
    assert block == expected, "regenerate the README's config reference from docs/config.md"
    for field in config_fields():
        assert f"`{field.name}`" in block


def test_readme_quick_start_commands():
    readme = ROOT.joinpath("README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
