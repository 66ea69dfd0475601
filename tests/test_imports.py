"""Every module of the package imports, and the module-level import graph has no cycle (a
cycle makes import order matter and splits one idea across files). Imports inside functions
(lazy, for optional extras or heavy modules) and imports for type hints only (`if
TYPE_CHECKING:`) are edges too: they tie two rooms together just the same."""
import ast
import importlib
from pathlib import Path

import edadm

SRC = Path(edadm.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix] + [f"{prefix}.{a.name}" for a in node.names]


def import_graph(lazy: bool = True) -> dict[str, set[str]]:
    """module -> the package modules it imports; lazy: count imports inside functions too (a
    cycle through a lazy import still ties two rooms together)."""
    mods = _modules()
    graph = {}
    for mod, path in mods.items():
        edges = set()
        tree = ast.parse(path.read_text())
        for node in tree.body:
            lazy_ok = lazy or isinstance(node, (ast.If, ast.Try))
            for sub in ast.walk(node) if lazy_ok else [node]:
                if isinstance(sub, ast.Import):
                    names = [a.name for a in sub.names]
                elif isinstance(sub, ast.ImportFrom):
                    names = _resolve(mod, path.name == "__init__.py", sub)
                else:
                    continue
                for n in names:
                    if n in mods and n != mod:
                        edges.add(n)
        graph[mod] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def _package_edges(graph):
    """A package's __init__ importing its own submodules is not a cycle: drop parent->child."""
    return {m: {e for e in es if not e.startswith(m + ".")} for m, es in graph.items()}


def test_no_import_cycle():
    cycle = find_cycle(_package_edges(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_every_module_imports():
    optional = ("onnx", "onnxruntime", "openvino", "torchvision", "torch_fidelity", "matplotlib", "triton")
    for mod in _modules():
        if mod.endswith("__main__"):  # runs the CLI
            continue
        try:
            importlib.import_module(mod)
        except ImportError as exc:  # an optional extra that is not installed is the only excuse
            assert exc.name and exc.name.split(".")[0] in optional, f"{mod}: {exc}"
