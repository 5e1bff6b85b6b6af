"""The shape of the package: the import graph has no circles, imports point down the layers,
``import convnp`` stays light, and every layer type states its facts for the generic walkers."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "convnp"

#: The layers of the architecture, lowest first: a module may import from its own layer and
#: the ones below it. Each entry is a module or a package prefix.
LEVELS = [
    ["convnp.errors", "convnp._util"],
    ["convnp.threads"],
    ["convnp.ops"],
    ["convnp.layers", "convnp.losses"],
    ["convnp.nets", "convnp.optim"],
    ["convnp.inspect", "convnp.notation", "convnp.finetune"],
    ["convnp.io"],
    ["convnp.models", "convnp.data"],
    ["convnp.train", "convnp.distributed"],
    ["convnp.report", "convnp.app"],
    ["convnp"],
]
#: Imports allowed to point up a level, each with the reason it is not a circle.
UPWARD_ALLOWED: set = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the convnp modules it imports anywhere in its code (deferred imports too)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        package = mod if is_pkg else mod.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # "from .pkg import sub" imports the submodule pkg.sub when it exists
                names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in files else prefix for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in files:
                    name = name.rpartition(".")[0]
                if name.startswith("convnp") and name != mod:
                    targets.add(name)
        graph[mod] = targets
    return graph


def level_of(mod: str) -> int:
    best, level = -1, None
    for i, prefixes in enumerate(LEVELS):
        for p in prefixes:
            if (mod == p or mod.startswith(p + ".")) and len(p) > best:
                best, level = len(p), i
    assert level is not None, f"{mod} is in no level of LEVELS; add it where it belongs"
    return level


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_package_modules_import_each_other_without_circles():
    found = cycles(import_graph())
    assert found == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_imports_point_down_the_levels():
    graph = import_graph()
    upward = sorted((m, t) for m, ts in graph.items() for t in ts if level_of(t) > level_of(m))
    unexpected = [u for u in upward if u not in UPWARD_ALLOWED]
    assert not unexpected, "imports pointing up a level:\n" + "\n".join(f"{m} -> {t}" for m, t in unexpected)
    assert len(UPWARD_ALLOWED) <= 2


def test_the_graph_builder_sees_deferred_and_relative_imports():
    """The checker itself: a circle hidden inside a function is still a circle."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(graph) == [["a", "b"]]
    g = import_graph()
    assert "convnp.errors" in g["convnp.layers.base"]


@pytest.mark.parametrize("heavy", ["numba", "matplotlib", "onnx", "safetensors", "torch", "onnxruntime"])
def test_import_convnp_stays_light(heavy):
    code = f"import sys, convnp; print({heavy!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", f"import convnp imported {heavy}"


# --- every layer type states its facts -------------------------------------------------------------
def _leaf_layer_types():
    import convnp  # noqa: F401 - registers every layer type
    from convnp.layers.base import LAYER_TYPES
    from convnp.nets.container import Container

    return sorted((name, cls) for name, cls in LAYER_TYPES.items()
                  if cls.__module__.startswith("convnp.") and not issubclass(cls, Container))


def _states(cls, member: str) -> bool:
    from convnp.layers.base import Layer

    return any(member in klass.__dict__ for klass in cls.__mro__ if klass is not Layer and klass is not object)


@pytest.mark.parametrize("name,cls", _leaf_layer_types(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_layer_type_states_each_fact_or_declares_it_absent(name, cls):
    from convnp.layers.base import FACTS

    for fact, members in FACTS.items():
        stated = any(_states(cls, m) for m in members)
        absent = fact in cls.absent_facts
        assert stated != absent, (f"{name}: fact {fact!r} is " + ("both stated and declared absent" if stated else
                                  f"neither stated ({' or '.join(members)}) nor in absent_facts"))


def test_the_fact_check_catches_a_layer_that_forgets_one():
    from convnp.layers.base import LAYER_TYPES, Layer

    class Forgetful(Layer):
        def costs(self, in_shapes, out_shape):
            return 0, 0

    try:
        assert _states(Forgetful, "costs") and not _states(Forgetful, "memory")
    finally:
        LAYER_TYPES.pop("Forgetful", None)


def test_no_walker_dispatches_on_a_layer_class_name():
    """The generic walkers read facts; none compares a class name with a string."""
    walkers = ["inspect/summary.py", "inspect/memory.py", "inspect/trace.py", "nets/engine.py",
               "notation/convert.py", "notation/spec.py", "io/onnx_export.py", "app/bench.py", "report/analysis.py"]
    pattern = re.compile(r"\.__name__\s*(==|!=|in|not in)\s*[(\"'{]|_kind\(")
    for rel in walkers:
        found = pattern.search((PACKAGE / rel).read_text())
        assert found is None, f"{rel} dispatches on a class name: {found.group(0)!r}"
