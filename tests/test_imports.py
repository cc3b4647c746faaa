"""The package's modules import one another without a circle.

A circle between modules means neither can be read, tested or moved without the other;
imports made only for type checking (``if TYPE_CHECKING:``) count as edges too, since
they tie the modules together just as much for a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

import agentcom

PACKAGE_ROOT = Path(agentcom.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` (module ``name``) imports, anywhere in it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:  # ``from package import module`` names a module
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    """Each module of ``agentcom`` with the modules of ``agentcom`` it imports."""
    paths = {_module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}
    modules = set(paths)
    return {name: _imports(path, name, modules) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a list of modules, or None when there is none."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(sorted(graph[start])))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                return [*path[path.index(child) :], child]
            elif child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
                on_path.add(child)
    return None


def test_the_graph_sees_the_servers_imports() -> None:
    graph = import_graph()
    assert "agentcom.server.agent" in graph["agentcom.server.app"]
    assert "agentcom.hub.hub" in graph["agentcom.server.health"]


def test_a_circle_is_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_of_the_package_imports_itself_through_others() -> None:
    graph = import_graph()
    assert find_cycle(graph) is None


def test_the_server_sessions_do_not_import_the_server() -> None:
    graph = import_graph()
    for session in ("agent", "viewer", "http", "health", "metrics", "revocation"):
        assert "agentcom.server.app" not in graph[f"agentcom.server.{session}"]


def test_the_domains_parts_do_not_import_the_facade() -> None:
    graph = import_graph()
    for part in ("endpoint_ops", "recovery", "task_frames", "task_ops", "views"):
        assert "agentcom.hub.hub" not in graph[f"agentcom.hub.{part}"]
