"""The layer rules (docs/ARCHITECTURE.md "Layers") checked on the import graph of every module.

Every `.py` under the folders pyproject's `package-dir` maps (sg2v/, export/, runtime/, cuda/) is parsed with
`ast`; imports inside functions count, relative imports are resolved, `importlib.import_module("literal")`
counts as an import. The rules:

1. the core (the `sg2v/` folder) never imports `sg2v.runtime` or `sg2v.export`;
2. the runtime (`sg2v.runtime`) never imports `sg2v.training`, `sg2v.export` or `sg2v.cli`;
3. the runtime imports `sg2v.models` or torch only in its torch backends (`runtime/backends/torch_*.py`);
4. the torch-free core (the modules directly in `sg2v/`, `sg2v.shapes`, `sg2v.dataset`) imports torch neither
   at module level nor through a module it imports at module level;
5. no import cycle between modules at module level (imports under `if TYPE_CHECKING:` do not run).

sg2v-bench (`sg2v.export.bench`, which times the torch backends against the training checkpoint and exports
its own bundles) lives on the export side, where those imports are allowed.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = ("torch", "torchvision", "torch_tensorrt")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # what it imports (a module, or the package a name is taken from)
    line: int
    runs_at_import: bool  # at module level, outside `if TYPE_CHECKING:`


def package_dirs(root: Path) -> dict[str, Path]:
    """Import name -> folder, as pyproject's [tool.setuptools] package-dir says."""
    text = (root / "pyproject.toml").read_text(encoding="utf-8")
    line = next(x for x in text.splitlines() if x.replace(" ", "").startswith("package-dir={"))
    return {name: root / folder for name, folder in re.findall(r'"([\w.]+)"\s*=\s*"([\w./-]+)"', line)}


def find_modules(dirs: dict[str, Path]) -> dict[str, Path]:
    """Module name -> file for every .py under the mapped folders (the most specific mapping wins)."""
    out: dict[str, Path] = {}
    for package, folder in sorted(dirs.items(), key=lambda kv: len(kv[0])):
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, top: bool):
    """(node, runs at import) for every node below `node`."""
    for child in ast.iter_child_nodes(node):
        here = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
            here = False
        yield child, here
        yield from _walk(child, here)


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in module `name` (file `path`), resolved to absolute module names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node, top in _walk(tree, True):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for a in node.names:
                sub = f"{source}.{a.name}"
                targets.append(sub if sub in known else source)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if called in ("import_module", "__import__"):
                targets = [node.args[0].value]
        out += [Import(name, t, node.lineno, top) for t in dict.fromkeys(targets)]
    return out


def under(target: str, *packages: str) -> bool:
    return any(target == p or target.startswith(p + ".") for p in packages)


def violations(root: Path) -> list[str]:
    """One line per broken layer rule in the project at `root` (empty when every rule holds)."""
    dirs = package_dirs(root)
    modules = find_modules(dirs)
    graph = {m: imports_of(m, p, set(modules)) for m, p in modules.items()}
    core = set(find_modules({"sg2v": dirs["sg2v"]}))
    torch_free = {m for m in core if m.count(".") == 1 and modules[m].parent == dirs["sg2v"]
                  or under(m, "sg2v.shapes", "sg2v.dataset")}
    out = []

    def say(i: Import, rule: str) -> None:
        out.append(f"{modules[i.module].relative_to(root)}:{i.line}: {i.module} imports {i.target} ({rule})")

    for m, found in graph.items():
        for i in found:
            if m in core and under(i.target, "sg2v.runtime", "sg2v.export"):
                say(i, "the core never imports sg2v.runtime or sg2v.export")
            if under(m, "sg2v.runtime"):
                if under(i.target, "sg2v.training", "sg2v.export", "sg2v.cli"):
                    say(i, "the runtime never imports sg2v.training, sg2v.export or sg2v.cli")
                torch_backend = m.startswith("sg2v.runtime.backends.torch_")
                if under(i.target, "sg2v.models", *TORCH) and not torch_backend:
                    say(i, "the runtime imports sg2v.models and torch only in runtime/backends/torch_*.py")
    out += _torch_at_import(graph, modules, torch_free, root)
    out += _cycles(graph, modules, root)
    return out


def _torch_at_import(graph: dict[str, list[Import]], modules: dict[str, Path], torch_free: set[str],
                     root: Path) -> list[str]:
    """Rule 4, with the chain of module-level imports that reaches torch."""
    out = []
    for m in sorted(torch_free):
        chain = {m: [m]}
        todo = [m]
        while todo:
            here = todo.pop()
            for i in graph[here]:
                if not i.runs_at_import:
                    continue
                if under(i.target, *TORCH):
                    path = " -> ".join([*chain[here], i.target])
                    out.append(f"{modules[m].relative_to(root)}: {m} imports torch at import time ({path}); "
                               "the torch-free core imports torch only inside functions")
                    todo = []
                    break
                if i.target in graph and i.target not in chain:
                    chain[i.target] = [*chain[here], i.target]
                    todo.append(i.target)
    return out


def _pop_component(stack: list[str], on_stack: set[str], v: str) -> list[str]:
    """Tarjan's step for a root `v`: pop its strongly connected component off `stack`."""
    group = []
    while True:
        w = stack.pop()
        on_stack.discard(w)
        group.append(w)
        if w == v:
            return group


def _cycles(graph: dict[str, list[Import]], modules: dict[str, Path], root: Path) -> list[str]:
    """Rule 5: every strongly connected set of modules on module-level imports (Tarjan's algorithm)."""
    edges = {m: sorted({i.target for i in found if i.runs_at_import and i.target in graph and i.target != m})
             for m, found in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = _pop_component(stack, on_stack, v)
            if len(group) > 1:
                out.append(f"import cycle at module level: {' <-> '.join(sorted(group))}")

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


# ------------------------------------------------------------------------------------------------ the tests
def test_the_layer_rules_hold():
    problems = violations(ROOT)
    assert problems == [], "\n".join(problems)


def test_the_folders_map_to_their_import_names():
    dirs = package_dirs(ROOT)
    assert {k: v.name for k, v in dirs.items()} == {"sg2v": "sg2v", "sg2v.export": "export",
                                                     "sg2v.runtime": "runtime", "sg2v.kernels": "cuda"}
    modules = find_modules(dirs)
    assert modules["sg2v.runtime.backends.ort"] == ROOT / "runtime" / "backends" / "ort.py"
    assert modules["sg2v.export"] == ROOT / "export" / "__init__.py"
    assert "sg2v.runtime.cli" in modules and "sg2v.models.unet" in modules


def _plant(root: Path, files: dict[str, str]) -> None:
    (root / "pyproject.toml").write_text('[tool.setuptools]\npackage-dir = { "sg2v" = "sg2v", '
                                         '"sg2v.export" = "export", "sg2v.runtime" = "runtime" }\n')
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


CLEAN = {
    "sg2v/__init__.py": "",
    "sg2v/graph.py": "import numpy as np\n\ndef f():\n    import torch\n",
    "sg2v/models/__init__.py": "",
    "sg2v/models/unet.py": "import torch\n",
    "sg2v/training/__init__.py": "",
    "sg2v/training/train.py": "from ..models import unet\n",
    "export/__init__.py": "",
    "export/tensorrt.py": "from sg2v.runtime.engines import build\n",
    "runtime/__init__.py": "",
    "runtime/engines.py": "from .. import graph\n",
    "export/bench.py": "def f():\n    from sg2v.training import train\n    import torch\n",
    "runtime/backends/__init__.py": "import importlib\n",
    "runtime/backends/torch_ref.py": "def f():\n    from sg2v.models.unet import UNet\n    import torch\n",
}


def test_a_clean_tree_passes_and_relative_imports_resolve(tmp_path):
    _plant(tmp_path, CLEAN)
    assert violations(tmp_path) == []
    modules = find_modules(package_dirs(tmp_path))
    found = imports_of("sg2v.runtime.engines", modules["sg2v.runtime.engines"], set(modules))
    assert [(i.target, i.runs_at_import) for i in found] == [("sg2v.graph", True)]
    found = imports_of("sg2v.training.train", modules["sg2v.training.train"], set(modules))
    assert [i.target for i in found] == ["sg2v.models.unet"]


PLANTED = {
    # rule 1, inside a function
    "sg2v/quality.py": "def f():\n    from sg2v.runtime import engines\n",
    # rule 2: a relative import two levels up, and importlib with a literal name
    "runtime/backends/ort.py": ("from ...training import train\n\ndef g():\n    import importlib\n"
                                "    importlib.import_module('sg2v.export.tensorrt')\n"),
    # rule 3: torch outside the torch backends, inside a function
    "runtime/pipeline.py": "def f():\n    import torch\n",
    # rule 4: through a module-level chain; under TYPE_CHECKING it would not count
    "sg2v/shapes/__init__.py": "from sg2v import layout\n",
    "sg2v/layout.py": ("from typing import TYPE_CHECKING\nfrom sg2v.models import unet\n"
                       "if TYPE_CHECKING:\n    import torchvision\n"),
    # rule 5
    "sg2v/training/losses.py": "from sg2v.training import pretrain\n",
    "sg2v/training/pretrain.py": "import sg2v.training.losses\n",
}


def test_each_planted_violation_is_reported(tmp_path):
    _plant(tmp_path, {**CLEAN, **PLANTED})
    got = "\n".join(violations(tmp_path))
    assert "sg2v/quality.py:2: sg2v.quality imports sg2v.runtime.engines (the core never imports" in got
    assert "runtime/backends/ort.py:1: sg2v.runtime.backends.ort imports sg2v.training.train (the runtime " \
           "never imports sg2v.training" in got
    assert "runtime/backends/ort.py:5: sg2v.runtime.backends.ort imports sg2v.export.tensorrt (the runtime " \
           "never imports" in got
    assert "runtime/pipeline.py:2: sg2v.runtime.pipeline imports torch (the runtime imports sg2v.models " \
           "and torch only in runtime/backends/torch_*.py)" in got
    assert ("sg2v.shapes imports torch at import time (sg2v.shapes -> sg2v.layout -> sg2v.models.unet -> "
            "torch)") in got
    assert "torchvision" not in got
    assert "import cycle at module level: sg2v.training.losses <-> sg2v.training.pretrain" in got
    assert "bench" not in got  # export may import training and torch
    assert len(got.splitlines()) == 7  # the above, plus layout's own torch import through sg2v.models
