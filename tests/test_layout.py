"""The package layout (docs/architecture.md): imports point one way, and no module reaches
into another's private names.

The import graph is read from the source with `ast` (every import, including those
inside functions and under ``TYPE_CHECKING``), so it needs neither the native module
nor the optional extras. Three rules:

1. no cycle, between modules or between the packages of `LAYERS`;
2. no import from a higher layer into a lower one;
3. no ``from X import _name`` and no ``X._name`` of another module's private name
   (leading underscore; the native module ``_core`` is the one exception), and no
   ``obj._name`` of a private attribute that another module's class defines.

The last test checks that each rule catches a synthetic violation.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# The layers, bottom first, as docs/architecture.md declares them: a module may import
# from its own layer (without a cycle) and from lower ones, never from higher ones.
# Keys are the top-level modules and packages of pylfm ("" is pylfm/__init__.py).
LAYERS: Dict[str, int] = {
    "errors": 1, "atomic": 1, "_core": 1,  # exceptions, the atomic writer, the native module
    "audio": 2, "vad": 2,                   # any input -> float32 mono PCM; speech detection, windows
    "files": 3,                             # model files: resolve, inspect, convert, quantize
    "engine": 4,                            # the native engine: open, devices, prompt, scheduler, speech runtime
    "transcription": 5, "speech": 5,        # what runs on the engine: options, jobs, results; TTS / chat
    "live": 6,                              # conversations and streaming transcription, on both
    "model": 7, "": 7,                      # the Model facade and pylfm's lazy exports
    "measure": 8, "server": 8, "corpus": 8,  # adapters: bench/eval library, HTTP server, Ray corpus jobs
    "cli": 9,                               # the pylfm command, on top of everything
}
NATIVE = {"_core"}  # compiled, not a .py file; its private-looking name is its real name


# ---------------------------------------------------------------------- reading the tree
@dataclass
class Module:
    name: str  # "pkg.sub.mod" ("pkg.sub" for a package's __init__.py)
    path: Path
    is_package: bool
    tree: ast.Module


@dataclass
class Graph:
    package: str
    modules: Dict[str, Module]
    edges: Dict[str, Set[str]] = field(default_factory=lambda: defaultdict(set))
    unresolved: List[str] = field(default_factory=list)
    private: List[str] = field(default_factory=list)  # rule 3 findings

    def unit(self, module: str) -> str:
        """The top-level module or package of ``module`` ("" for the package itself)."""
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""


def read_package(root: Path, package: str) -> Dict[str, Module]:
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        modules[name] = Module(name, path, is_package, ast.parse(path.read_text(), str(path)))
    return modules


def build_graph(root: Path, package: str, native: Iterable[str] = NATIVE) -> Graph:
    """The import graph of ``package`` under ``root``, with rule 3's findings."""
    g = Graph(package, read_package(root, package))
    known = set(g.modules) | {f"{package}.{n}" for n in native}
    attrs_defined = _private_attributes(g)
    for mod in g.modules.values():
        bound: Dict[str, str] = {}  # local name -> module it names
        for node in ast.walk(mod.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == package or alias.name.startswith(package + "."):
                        target = _longest_known(alias.name, known)
                        _edge(g, mod, target, alias.name)
                        if alias.asname and target:
                            bound[alias.asname] = target
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(mod, node)
                if base is None or not (base == package or base.startswith(package + ".")):
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in known:  # a module imported by name
                        _edge(g, mod, sub, sub)
                        bound[alias.asname or alias.name] = sub
                        target = sub
                    else:
                        target = _longest_known(base, known)
                        _edge(g, mod, target, base)
                    if _private(alias.name) and alias.name not in native and target != mod.name:
                        g.private.append(f"{mod.name}: from {base} import {alias.name}")
        for node in ast.walk(mod.tree):
            if not isinstance(node, ast.Attribute) or not _private(node.attr):
                continue
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner in bound and bound[owner] != mod.name and node.attr not in native:
                g.private.append(f"{mod.name}:{node.lineno}: {owner}.{node.attr} (private name of {bound[owner]})")
            elif owner not in ("self", "cls") and not isinstance(node.value, ast.Call):
                others = attrs_defined.get(node.attr, set()) - {mod.name}
                if others and mod.name not in attrs_defined.get(node.attr, set()):
                    g.private.append(f"{mod.name}:{node.lineno}: .{node.attr} (a private attribute of "
                                     f"{', '.join(sorted(others))})")
    return g


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_attributes(g: Graph) -> Dict[str, Set[str]]:
    """Private attribute names each module's classes define (``self._x = ...``, methods,
    class attributes): reading one of them from another module is reaching inside."""
    found: Dict[str, Set[str]] = defaultdict(set)
    for mod in g.modules.values():
        for cls in (n for n in ast.walk(mod.tree) if isinstance(n, ast.ClassDef)):
            for node in ast.walk(cls):
                names: List[str] = []
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node in cls.body:
                    names.append(node.name)
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for t in targets:
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                            names.append(t.attr)
                        elif isinstance(t, ast.Name) and node in cls.body:
                            names.append(t.id)
                for n in names:
                    if _private(n):
                        found[n].add(mod.name)
    return found


def _absolute(mod: Module, node: ast.ImportFrom) -> Optional[str]:
    if node.level == 0:
        return node.module
    parts = mod.name.split(".")
    if not mod.is_package:
        parts = parts[:-1]
    if node.level > 1:
        parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _longest_known(name: str, known: Set[str]) -> Optional[str]:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return None


def _edge(g: Graph, mod: Module, target: Optional[str], written: str) -> None:
    if target is None or target != written:
        g.unresolved.append(f"{mod.name} imports {written}, which does not exist")
        return
    if target != mod.name:
        g.edges[mod.name].add(target)


# ---------------------------------------------------------------------- the rules
def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    nodes = set(edges) | {w for ws in edges.values() for w in ws}
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def module_cycles(g: Graph) -> List[List[str]]:
    # A package's __init__ that re-exports its own submodules is not a cycle: the
    # submodule never needs the package's names.
    edges = {a: {b for b in bs if not b.startswith(a + ".")} for a, bs in g.edges.items()}
    return cycles(edges)


def package_edges(g: Graph) -> Dict[str, Set[str]]:
    out: Dict[str, Set[str]] = defaultdict(set)
    for a, bs in g.edges.items():
        for b in bs:
            if g.unit(a) != g.unit(b):
                out[g.unit(a)].add(g.unit(b))
    return out


def upward_imports(g: Graph, layers: Dict[str, int]) -> List[str]:
    bad = []
    for a, bs in sorted(g.edges.items()):
        for b in sorted(bs):
            la, lb = layers[g.unit(a)], layers[g.unit(b)]
            if lb > la:
                bad.append(f"{a} (layer {la}) imports {b} (layer {lb})")
    return bad


def undeclared_units(g: Graph, layers: Dict[str, int]) -> List[str]:
    return sorted({g.unit(m) for m in g.modules} - set(layers))


# ---------------------------------------------------------------------- pylfm
@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph(SRC, "pylfm")


def test_every_import_names_a_module_that_exists(graph):
    assert graph.unresolved == []


def test_every_package_has_a_layer(graph):
    assert undeclared_units(graph, LAYERS) == [], "add it to LAYERS here and to docs/architecture.md"


def test_no_import_cycles(graph):
    assert module_cycles(graph) == []
    assert cycles(package_edges(graph)) == []


def test_imports_point_down(graph):
    assert upward_imports(graph, LAYERS) == []


def test_no_module_reaches_into_private_names(graph):
    assert graph.private == []


def test_the_scheduler_knows_no_job_type(graph):
    assert not any(b.startswith("pylfm.transcription") for b in graph.edges["pylfm.engine.scheduler"])


def test_the_layers_are_those_of_the_architecture_doc():
    doc = (SRC.parent / "docs" / "architecture.md").read_text()
    for unit, layer in LAYERS.items():
        if unit and unit not in NATIVE:
            assert f"`{unit}" in doc, f"docs/architecture.md does not describe {unit}"


def test_public_names_resolve():
    import pylfm

    for name in pylfm.__all__:
        assert getattr(pylfm, name) is not None, name


# ---------------------------------------------------------------------- the rules can fail
def _write(root: Path, files: Dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_each_rule_catches_a_violation(tmp_path):
    _write(tmp_path, {
        "fake/__init__.py": "",
        "fake/low/__init__.py": "",
        "fake/low/a.py": "from ..high import b\n_hidden = 1\n",           # upward; cycle with high.b
        "fake/low/c.py": "class C:\n    def __init__(self):\n        self._secret = 1\n",
        "fake/high/__init__.py": "",
        "fake/high/b.py": "from ..low import a\nfrom ..low.a import _hidden\n",  # private name
        "fake/high/d.py": "from ..low import c\nprint(c._anything)\n",         # X._name of a module
        "fake/high/e.py": "def f(obj):\n    return obj._secret\n",             # another class's private attribute
        "fake/high/f.py": "from ..low import missing_module_or_name\nfrom .. import _native\n",
        "fake/high/g.py": "import fake.nowhere\n",
    })
    g = build_graph(tmp_path, "fake", native={"_native"})
    layers = {"": 0, "_native": 0, "low": 1, "high": 2}
    assert module_cycles(g) == [["fake.high.b", "fake.low.a"]]
    assert cycles(package_edges(g)) == [["high", "low"]]
    assert upward_imports(g, layers) == ["fake.low.a (layer 1) imports fake.high.b (layer 2)"]
    assert undeclared_units(g, {"": 0, "low": 1}) == ["high"]
    assert len(g.private) == 3
    assert any("from fake.low.a import _hidden" in p for p in g.private)
    assert any("c._anything" in p for p in g.private)
    assert any(".\u005fsecret" in p and "fake.low.c" in p for p in g.private)
    assert g.unresolved == ["fake.high.g imports fake.nowhere, which does not exist"]
    # names imported from an existing module, and the native module, are fine
    assert "fake.low" in g.edges["fake.high.f"]
