"""The layer rule, read from the source: the library never imports the application.

- Library: every module of `geosteer/` except the application's, plus
  `kernels/geosteer_kernels/` (installed as `geosteer.kernels`).
- Application: `geosteer.geoshapes.*` (GeoShapes, eval, demo, demo-model
  training), `geosteer.photos.*` (the real-photo benchmark),
  `geosteer.commands.*` (index / search / serve over your own images) and
  `geosteer.cli` (the `geosteer` command).

The library imports no application module (not even inside a function, nor
by a module-name string); the application imports only the library's public
names: no `_private` module or name, and every name it imports from a library
module is in the `__all__` of that module or of a library package holding it
(dunders such as `__version__` aside); the import graph has no cycle.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
APPLICATION = ("geosteer.geoshapes", "geosteer.photos", "geosteer.public_benchmarks", "geosteer.commands", "geosteer.cli")


@dataclass
class Module:
    name: str
    path: str  # relative to the tree's root
    is_package: bool
    imports: list[tuple[str, str | None, int]] = field(default_factory=list)  # (module, name or None, line)
    strings: list[tuple[str, int]] = field(default_factory=list)  # string constants naming geosteer modules
    exports: set[str] | None = None  # its `__all__`, None when it defines none


def exported(tree: ast.Module) -> set[str] | None:
    """A module's `__all__` read from its source: a list / tuple of strings, `*NAME` of a module-level literal allowed."""
    literals = {node.targets[0].id: node.value for node in tree.body
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)}
    if "__all__" not in literals:
        return None
    names: set[str] = set()

    def collect(value: ast.expr) -> None:
        if isinstance(value, (ast.List, ast.Tuple, ast.Set)):
            for item in value.elts:
                if isinstance(item, ast.Constant) and isinstance(item.value, str):
                    names.add(item.value)
                elif isinstance(item, ast.Starred) and isinstance(item.value, ast.Name) and item.value.id in literals:
                    collect(literals[item.value.id])
                else:
                    raise ValueError(f"__all__ holds {ast.dump(item)}: only strings and *LITERAL are read")
        elif isinstance(value, ast.Dict):
            names.update(k.value for k in value.keys if isinstance(k, ast.Constant))
        else:
            raise ValueError(f"__all__ is {ast.dump(value)}: write it as a list of strings")

    collect(literals["__all__"])
    return names


def module_name(path: Path, root: Path) -> str:
    """`geosteer/ops/assign.py` -> `geosteer.ops.assign`; `kernels/geosteer_kernels/x.py` -> `geosteer.kernels.x`."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["geosteer", "kernels", *parts[2:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def scan(root: Path) -> dict[str, Module]:
    """Every module under `root/geosteer` and `root/kernels/geosteer_kernels` with its imports."""
    modules: dict[str, Module] = {}
    for top in ("geosteer", "kernels/geosteer_kernels"):
        for path in sorted((root / top).rglob("*.py")):
            name = module_name(path, root)
            mod = Module(name, str(path.relative_to(root)), path.name == "__init__.py")
            package = name if mod.is_package else name.rpartition(".")[0]
            tree = ast.parse(path.read_text(), str(path))
            mod.exports = exported(tree)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mod.imports += [(alias.name, None, node.lineno) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:
                        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                        base = ".".join([*anchor, *([base] if base else [])])
                    mod.imports += [(base, alias.name, node.lineno) for alias in node.names]
                elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("geosteer."):
                    mod.strings.append((node.value.split()[0], node.lineno))
            modules[name] = mod
    return modules


def private(part: str) -> bool:
    """`_x` is private; dunders (`__version__`) are not."""
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def in_layer(name: str, layer: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in layer)


def targets(mod: Module, modules: dict[str, Module]) -> list[tuple[str, str | None, int]]:
    """The geosteer modules `mod` imports: (module, imported name or None, line)."""
    out = []
    for base, name, line in mod.imports:
        if not (base == "geosteer" or base.startswith("geosteer.")):
            continue
        if name is not None and f"{base}.{name}" in modules:  # `from geosteer.ops import assign`: a submodule
            out.append((f"{base}.{name}", None, line))
        else:
            out.append((base, name, line))
    return out


def layer_violations(modules: dict[str, Module]) -> list[str]:
    """Library -> application imports, application -> private library names."""
    bad = []
    for mod in modules.values():
        app = in_layer(mod.name, APPLICATION)
        for target, name, line in targets(mod, modules):
            where = f"{mod.path}:{line}"
            if not app and in_layer(target, APPLICATION):
                bad.append(f"{where}: library module {mod.name} imports application module {target}")
            if app and not in_layer(target, APPLICATION):
                if any(private(p) for p in target.split(".")) or (name is not None and private(name)):
                    bad.append(f"{where}: application module {mod.name} imports private {target}{'.' + name if name else ''}")
        if not app:
            for text, line in mod.strings:
                if in_layer(text, APPLICATION):
                    bad.append(f"{mod.name}:{line}: library module names application module {text!r}")
    return bad


def unexported_imports(modules: dict[str, Module]) -> list[str]:
    """Application imports of library names that no `__all__` declares public.

    `from geosteer.x.y import n` needs `n` in the `__all__` of `geosteer.x.y`,
    `geosteer.x` or `geosteer`; importing a library module itself needs it to
    define `__all__` (what it offers) or its package's `__all__` to list it.
    """
    bad = []
    for mod in modules.values():
        if not in_layer(mod.name, APPLICATION):
            continue
        for target, name, line in targets(mod, modules):
            if in_layer(target, APPLICATION) or (name is not None and name.startswith("__") and name.endswith("__")):
                continue
            parts = target.split(".")
            chain = [".".join(parts[:i]) for i in range(len(parts), 0, -1)]
            if name is None:
                parent, _, last = target.rpartition(".")
                ok = target in modules and modules[target].exports is not None or (
                    parent in modules and last in (modules[parent].exports or ()))
            else:
                ok = any(c in modules and name in (modules[c].exports or ()) for c in chain)
            if not ok:
                what = f"{target}.{name}" if name else target
                bad.append(f"{mod.path}:{line}: application module {mod.name} imports {what}, which no __all__ of "
                           f"{', '.join(chain)} declares public")
    return bad


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    graph = {m: sorted({t for t, _, _ in targets(mod, modules) if t in modules}) for m, mod in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_tree_has_both_layers():
    modules = scan(REPO)
    assert {"geosteer.head", "geosteer.ops.assign", "geosteer.kernels.part_cost", "geosteer.cpu_kernels.assign"} <= set(modules)
    assert {"geosteer.geoshapes.eval", "geosteer.geoshapes.scenes", "geosteer.cli"} <= set(modules)


def test_library_never_imports_the_application():
    assert layer_violations(scan(REPO)) == []


def test_the_application_imports_only_what_the_library_exports():
    assert unexported_imports(scan(REPO)) == []


def test_no_import_cycles():
    assert cycles(scan(REPO)) == []


# ---- the checks themselves can fail: a small tree that breaks each rule


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


BASE = {
    "geosteer/__init__.py": "from geosteer.head import run\n__all__ = ['run']\n",
    "geosteer/head.py": "def run(): pass\n",
    "geosteer/_private.py": "X = 1\n",
    "geosteer/geoshapes/__init__.py": "",
    "geosteer/geoshapes/eval.py": "from geosteer import run\n",
    "geosteer/cli.py": "",
    "kernels/geosteer_kernels/__init__.py": "",
}


@pytest.mark.parametrize("rel, text, expect", [
    ("geosteer/head.py", "def run():\n    from geosteer.geoshapes import eval\n", "imports application module geosteer.geoshapes.eval"),
    ("geosteer/head.py", "import geosteer.geoshapes.eval\n", "imports application module geosteer.geoshapes.eval"),
    ("kernels/geosteer_kernels/k.py", "from ..geoshapes.eval import x\n", "imports application module geosteer.geoshapes.eval"),
    ("geosteer/head.py", "import importlib\nM = importlib.import_module('geosteer.geoshapes.eval')\n", "names application module"),
    ("geosteer/geoshapes/eval.py", "from geosteer._private import X\n", "imports private geosteer._private"),
    ("geosteer/geoshapes/eval.py", "from geosteer.head import _helper\n", "imports private geosteer.head._helper"),
])
def test_a_broken_rule_is_reported(tmp_path, rel, text, expect):
    _write(tmp_path, BASE)
    assert layer_violations(scan(tmp_path)) == []
    _write(tmp_path, {rel: text})
    found = layer_violations(scan(tmp_path))
    assert any(expect in v for v in found), found


@pytest.mark.parametrize("text, expect", [
    ("from geosteer.head import helper\n", "imports geosteer.head.helper, which no __all__"),
    ("from geosteer import helper\n", "imports geosteer.helper, which no __all__"),
    ("import geosteer.head\n", "imports geosteer.head, which no __all__"),
])
def test_an_import_no_all_declares_is_reported(tmp_path, text, expect):
    _write(tmp_path, {**BASE, "geosteer/head.py": "def run(): pass\ndef helper(): pass\n"})
    _write(tmp_path, {"geosteer/geoshapes/extra.py": "from geosteer.head import run\nfrom geosteer import __version__\n"})
    assert unexported_imports(scan(tmp_path)) == []  # `run` is in the package's __all__; dunders pass
    _write(tmp_path, {"geosteer/geoshapes/extra.py": text})
    found = unexported_imports(scan(tmp_path))
    assert len(found) == 1 and expect in found[0], found


def test_a_cycle_is_reported(tmp_path):
    _write(tmp_path, {**BASE, "geosteer/head.py": "from geosteer.other import y\n", "geosteer/other.py": "from geosteer.head import run\n"})
    assert cycles(scan(tmp_path)) == [["geosteer.head", "geosteer.other"]]
