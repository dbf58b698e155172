"""The package layer order, and no import cycle between packages (`make lint` runs this).

Every import in `lora_trainer` is read with `ast`, function-level (lazy) imports included; only
imports under `if TYPE_CHECKING:` are left out (annotations, never executed). A package may import
itself and packages in LOWER layers only, so the graph between packages cannot have a cycle; the
cycle check below still runs on its own, so a wrong LAYERS table cannot hide one.
"""

from __future__ import annotations

import ast
import pathlib
from collections import defaultdict

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lora_trainer"
ROOT = "lora_trainer"  # the package's own __init__ (its version)

# lowest first; a package imports only from earlier rows (and itself)
LAYERS: list[tuple[str, ...]] = [
    (ROOT, "errors"),
    ("events", "atomic", "file_lock", "safetensors_header"),
    ("config", "jobs", "synthetic"),
    ("data", "download", "presets"),
    ("lora", "caption"),
    ("models", "share"),
    ("train",),
    ("llm",),
    ("tasks",),
    ("hosts",),
    ("ui", "demo"),
    ("commands",),
    ("cli",),
    ("__main__",),
]
LAYER_OF = {name: i for i, row in enumerate(LAYERS) for name in row}


def _node(module: str) -> str | None:
    """`lora_trainer.models.base` -> "models"; `lora_trainer` -> ROOT; other packages -> None."""
    parts = module.split(".")
    if parts[0] != ROOT:
        return None
    return parts[1] if len(parts) > 1 else ROOT


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, here: str) -> list[tuple[int, str]]:
    """(line, imported module) for every executed import; `here` is this file's dotted package."""
    out: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == ROOT:  # `from lora_trainer import x`: x is a sub-package or a name of the root
                for a in node.names:
                    sub = PACKAGE / a.name
                    out.append((node.lineno, f"{ROOT}.{a.name}" if sub.is_dir() or sub.with_suffix(".py").exists()
                                else ROOT))
            else:
                out.append((node.lineno, module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph(package: pathlib.Path = PACKAGE) -> dict[str, dict[str, list[str]]]:
    """{importer node: {imported node: ["file:line", ...]}} between different nodes."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent)
        dotted = ".".join(rel.with_suffix("").parts)
        here = dotted.removesuffix(".__init__") if path.name == "__init__.py" else dotted.rsplit(".", 1)[0]
        src = _node(dotted.removesuffix(".__init__"))
        for line, module in _imports(ast.parse(path.read_text(encoding="utf-8")), here):
            dst = _node(module)
            if dst is not None and src is not None and dst != src:
                graph[src][dst].append(f"{rel}:{line}")
    return graph


def find_cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            strong(v)
    return out


def layer_violations(graph: dict[str, dict[str, list[str]]]) -> list[str]:
    out = []
    for src, targets in sorted(graph.items()):
        for dst, where in sorted(targets.items()):
            if src not in LAYER_OF or dst not in LAYER_OF:
                out.append(f"{src} -> {dst}: place {src if src not in LAYER_OF else dst!r} in LAYERS "
                           f"({where[0]})")
            elif LAYER_OF[dst] >= LAYER_OF[src]:
                out.append(f"{src} (layer {LAYER_OF[src]}) imports {dst} (layer {LAYER_OF[dst]}): "
                           + ", ".join(where[:3]))
    return out


def test_no_package_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, f"import cycles between packages: {cycles}"


def test_packages_import_only_lower_layers():
    problems = layer_violations(import_graph())
    assert not problems, "\n".join(problems)


def test_every_package_has_a_layer():
    names = {p.stem if p.suffix == ".py" else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert names <= set(LAYER_OF), f"add to LAYERS: {sorted(names - set(LAYER_OF))}"


def test_the_checks_catch_a_cycle_and_a_violation(tmp_path):
    pkg = tmp_path / ROOT
    for name, body in {"models/__init__.py": "", "models/base.py": "def f():\n    from lora_trainer.train import x\n",
                       "train/__init__.py": "from lora_trainer.models import base\n",
                       "lora/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                           "    from lora_trainer.models import base\n",
                       "__init__.py": ""}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(body, encoding="utf-8")
    graph = import_graph(pkg)
    assert find_cycles(graph) == [["models", "train"]]
    assert any(v.startswith("models (layer 5) imports train") for v in layer_violations(graph))
    assert "lora" not in graph  # a TYPE_CHECKING import is not an import at run time
