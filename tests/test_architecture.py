"""The engine's import graph (house style 1 and DESIGN's module map): no import cycle among the
engine's modules, and no engine module importing gradio or the web UI.

Read from the source with ``ast``, so nothing is imported. An import at module level runs when the
module is imported; one inside a function (or method) runs when it is called, which is how the
engine defers heavy libraries. Both count for gradio and the web UI. For cycles:

* module-level imports must form no cycle: such a cycle makes import order matter and half-built
  modules appear (an ``AttributeError`` or ``ImportError`` depending on which module is imported
  first);
* module-level and function-level imports together must form no cycle either, except the ones
  listed in ``KNOWN_DEFERRED_CYCLES``: a function-level import that closes a cycle works at run
  time but is an arrow pointing back up the module map. The list may only shrink.

Imports under ``if TYPE_CHECKING:`` never run and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "engine"

#: Cycles closed only by function-level imports, each as the sorted modules of one strongly
#: connected component. Each is an arrow to remove; a new one fails the test, and so does one
#: that is gone but still listed.
KNOWN_DEFERRED_CYCLES: list[list[str]] = [
    # pruning spares what evaluation protects (checkpoint.prune_checkpoints ->
    # evaluation.protected_steps); the evaluator prunes at its end (evaluation.follow ->
    # checkpoint.prune_checkpoints). Fix: the eval folder's readers below both.
    ["engine.training.checkpoint", "engine.training.evaluation"],
    # whisper_runtime was split out of transcribe and calls back for resolve_model and the model
    # loader. Fix: model resolution and loading in whisper_runtime.
    ["engine.speech.transcribe", "engine.speech.whisper_runtime"],
]


def module_name(path: Path) -> str:
    """``engine/training/loop.py`` -> ``engine.training.loop``; a package's ``__init__.py`` -> the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def engine_modules() -> dict[str, Path]:
    """Every module of the engine package, by dotted name."""
    return {module_name(p): p for p in sorted(ENGINE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, name: str) -> list[tuple[str, bool, int]]:
    """``(imported module, at module level?, line)`` for each module named by an import in ``path``
    (a ``from x import y`` names ``x.y`` when that is a module, else ``x``); relative imports are
    resolved against ``name``."""
    is_package = path.name == "__init__.py"
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit_one(other, top)
                continue
            visit_one(child, top)

    def visit_one(child: ast.AST, top: bool) -> None:
        if isinstance(child, ast.Import):
            found.extend((alias.name, top, child.lineno) for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (child.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.extend((f"{base}.{alias.name}", top, child.lineno) for alias in child.names)
            found.append((base, top, child.lineno))
        else:
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)), True)
    return found


def import_graph(module_level_only: bool) -> dict[str, dict[str, int]]:
    """Engine module -> {engine module it imports: line of the first such import}."""
    modules = engine_modules()
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        for target, top, line in imports_of(path, name):
            if module_level_only and not top:
                continue
            # ``from engine.x import y``: the submodule engine.x.y when there is one, else engine.x.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # A module's own ancestor packages are imported before it in any case (Python
            # initialises parents first), so ``from engine.models.f5 import files`` inside
            # engine.models.f5.train is an arrow to the sibling ``files``, not back up.
            if target and target != name and not name.startswith(target + "."):
                graph[name].setdefault(target, line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def one_cycle(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    """A shortest cycle through the component's first module, as ``a:12 -> b:40 -> a``
    (each module with the line of its import of the next)."""
    start = component[0]
    members = set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for other in sorted(graph[node]):
                if other == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    path.reverse()
                    path.append(start)
                    return (
                        " -> ".join(f"{a}:{graph[a][b]}" for a, b in zip(path, path[1:], strict=False)) + f" -> {start}"
                    )
                if other in members and other not in previous and other != start:
                    previous[other] = node
                    following.append(other)
        frontier = following
    raise AssertionError(f"no cycle through {start}")


def describe(graph: dict[str, dict[str, int]], components: list[list[str]]) -> str:
    """Each component, one cycle in it, and its function-level imports (the arrows to cut)."""
    top = import_graph(module_level_only=True)
    lines = []
    for component in components:
        lines += [" ".join(component), f"    e.g. {one_cycle(graph, component)}"]
        lines += [
            f"    function-level: {a}:{line} imports {b}"
            for a in component
            for b, line in sorted(graph[a].items())
            if b in component and b not in top[a]
        ]
    return "\n".join(lines)


def test_module_level_imports_form_no_cycle():
    graph = import_graph(module_level_only=True)
    components = strongly_connected(graph)
    assert not components, "import cycle(s) among module-level imports:\n" + describe(graph, components)


def test_function_level_imports_close_no_new_cycle():
    graph = import_graph(module_level_only=False)
    components = strongly_connected(graph)
    new = [c for c in components if c not in KNOWN_DEFERRED_CYCLES]
    assert not new, "import cycle(s) closed by function-level imports:\n" + describe(graph, new)
    gone = [c for c in KNOWN_DEFERRED_CYCLES if c not in components]
    assert not gone, f"fixed, remove from KNOWN_DEFERRED_CYCLES: {gone}"


def test_engine_never_imports_gradio_or_the_web_ui():
    offending = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, path in engine_modules().items()
        for target, _, line in imports_of(path, name)
        if target.split(".")[0] in ("gradio", "webui")
    ]
    assert not offending, "\n".join(offending)


def test_configuration_reaches_no_run_folder_code():
    """engine.config is configuration only (DESIGN): nothing it imports, even inside a function,
    leads to engine.runs or to the run-folder code above it."""
    graph = import_graph(module_level_only=False)
    seen, todo = set(), ["engine.config"]
    while todo:
        for other in graph[todo.pop()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    above = {"engine.runs", "engine.training.branch", "engine.training.process", "engine.training.evaluation"}
    assert not seen & above, f"engine.config reaches {sorted(seen & above)}"


def test_the_graph_sees_each_kind_of_import():
    graph = import_graph(module_level_only=False)
    top = import_graph(module_level_only=True)
    assert "engine.config" in top["engine.runs"]  # from engine.config import ...
    assert "engine.training.checkpoint" in top["engine.training.loop"]  # from engine.training import checkpoint
    assert "engine.training.loop" in graph["engine.cli"] and "engine.training.loop" not in top["engine.cli"]
    assert "engine" not in graph["engine.cli"]  # the package itself: no edge
