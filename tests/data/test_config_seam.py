"""`TrainConfig` is the typed seam: a misspelt field is an error, at run time and in the source.

Run time: the dataclass is frozen with slots, so reading or writing a field that does not exist
raises instead of meaning a default. Source: every `cfg.<name>` / `self.cfg.<name>` in the package
must name a real field, property or method, no `getattr(cfg, "<field>", default)` remains, and every
parameter called `cfg` is annotated `TrainConfig`.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib

import pytest

from lora_trainer.config import TrainConfig, load_config
from lora_trainer.errors import ConfigError

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "lora_trainer"
KNOWN = {f.name for f in dataclasses.fields(TrainConfig)} | {n for n in dir(TrainConfig) if not n.startswith("__")}
CONFIG_NAMES = ("cfg", "config")


def test_misspelt_field_read_and_write_raise():
    cfg = TrainConfig()
    with pytest.raises(AttributeError):
        _ = cfg.learning_rat  # type: ignore[attr-defined]
    with pytest.raises((AttributeError, TypeError)):
        cfg.learning_rat = 1.0  # type: ignore[attr-defined, misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.learning_rate = 1.0  # type: ignore[misc]


def test_bad_device_is_a_config_error_at_load():
    with pytest.raises(ConfigError) as info:
        load_config({"device": "gpu0"}, check_paths=False)
    assert info.value.field == "device"
    assert load_config({"device": "cuda:1"}, check_paths=False).device == "cuda:1"


def _config_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str]:
    """Parameter name -> annotation text, for parameters that carry a training config."""
    out = {}
    for arg in fn.args.args + fn.args.kwonlyargs:
        text = ast.unparse(arg.annotation) if arg.annotation is not None else ""
        if arg.arg in CONFIG_NAMES and text != "Any" or "TrainConfig" in text:
            out[arg.arg] = text
    return out


def _problems(source: str, rel: str) -> list[str]:
    tree = ast.parse(source)
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = _config_params(fn)
        for name, text in params.items():
            if name == "cfg" and "TrainConfig" not in text:
                out.append(f"{rel}:{fn.lineno} {fn.name}(cfg: {text or 'no annotation'}): annotate it TrainConfig")
        typed = {n for n, t in params.items() if "TrainConfig" in t and "|" not in t}
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute):
                base = node.value
                is_cfg = (isinstance(base, ast.Name) and base.id in typed) or (
                    isinstance(base, ast.Attribute) and base.attr == "cfg" and isinstance(base.value, ast.Name)
                    and base.value.id == "self")
                if is_cfg and node.attr not in KNOWN:
                    out.append(f"{rel}:{node.lineno} {ast.unparse(node)}: TrainConfig has no field {node.attr!r}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") \
                and node.args and ast.unparse(node.args[0]) in ("cfg", "self.cfg", "config") \
                and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
            out.append(f"{rel}:{node.lineno} {ast.unparse(node)}: read the field itself")
    return out


def test_source_reads_only_real_fields():
    problems = [p for path in sorted(PACKAGE.rglob("*.py"))
                for p in _problems(path.read_text(encoding="utf-8"), str(path.relative_to(PACKAGE.parent)))]
    assert not problems, "\n".join(problems)


def test_the_source_check_catches_a_typo():
    found = _problems("def f(cfg: TrainConfig) -> float:\n    return cfg.learning_rat + getattr(cfg, 'seed', 0)\n"
                      "class T:\n    def m(self) -> int:\n        return self.cfg.sed\n"
                      "def g(cfg) -> None:\n    pass\n", "probe.py")
    assert any("learning_rat" in p for p in found)
    assert any("getattr(cfg, 'seed', 0)" in p for p in found)
    assert any("g(cfg: no annotation)" in p for p in found)
    assert any("self.cfg.sed" in p for p in found)
