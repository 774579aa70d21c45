"""The one rule of the layout, checked on the real import graph of gateway/.

Components never import each other nor the CLI, the daemon or the demo: they meet in the
State (README, "Architecture"). The graph is read with ``ast`` from the source files, so
every import counts, also one inside a function, where a cycle hides best.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

# Each runs in the daemon on its own and talks to the others only through the State.
COMPONENTS = (
    "gateway.tunnel",
    "gateway.browser",
    "gateway.tmux",
    "gateway.ddns",
    "gateway.healer",
    "gateway.sync",
    "gateway.metrics",
    "gateway.heartbeat",
    "gateway.alerts",
)
# What wires components together or drives them from outside; nothing below may import it.
OUTSIDE = (
    "gateway.cli",
    "gateway.__main__",
    "gateway.daemon",
    "gateway.demo",
    "gateway.registry",
    "gateway.doctor",
    "gateway.sim",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _under(module: str, prefixes: tuple[str, ...]) -> str | None:
    return next((p for p in prefixes if module == p or module.startswith(p + ".")), None)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, *, typing_only: bool) -> Iterator[str]:
    """Modules of gateway/ that ``tree`` imports; ``typing_only`` adds the imports under
    ``if TYPE_CHECKING:``, which never run."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node) and not typing_only:
            yield from (m for child in node.orelse for m in _imports(child, typing_only=False))
            continue
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("gateway"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gateway"):
            assert node.level == 0, "gateway/ imports absolutely"
            base = node.module or ""
            for alias in node.names:
                # `from gateway.browser import login` imports the module gateway.browser.login
                sub = f"{base}.{alias.name}"
                yield sub if sub in MODULES else base
        yield from _imports(node, typing_only=typing_only)


def _graph(*, typing_only: bool) -> dict[str, set[str]]:
    return {
        name: set(_imports(ast.parse(path.read_text(), str(path)), typing_only=typing_only))
        - {name}
        for name, path in MODULES.items()
    }


def test_the_graph_is_read() -> None:
    """The rules below would pass on an empty graph: prove it holds the known edges."""
    graph = _graph(typing_only=True)
    assert "gateway.vocabulary" in graph["gateway.healer.component"]
    assert "gateway.browser.commands" in graph["gateway.cli"]  # an import inside a function
    assert "gateway.snapshot" in graph["gateway.status_line"]  # under TYPE_CHECKING
    assert "gateway.snapshot" not in _graph(typing_only=False)["gateway.status_line"]
    assert all(_under(c, ("gateway",)) for c in COMPONENTS)
    assert {_under(m, COMPONENTS) for m in MODULES} >= set(COMPONENTS)


def test_each_component_package_holds_its_component() -> None:
    """The layout the README shows: a component lives in <package>/component.py."""
    for component in COMPONENTS:
        package = PACKAGE / component.removeprefix("gateway.")
        assert (package / "component.py").is_file(), f"{component} has no component.py"
    assert {"gateway.browser.commands", "gateway.ddns.commands", "gateway.tmux.commands"} <= set(
        MODULES
    )


def test_components_never_import_each_other_nor_the_cli_daemon_or_demo() -> None:
    """The import rule: components meet in the State, never in each other's code."""
    bad = []
    for module, imported in _graph(typing_only=True).items():
        own = _under(module, COMPONENTS)
        if own is None:
            continue
        for target in sorted(imported):
            other = _under(target, COMPONENTS)
            if (other and other != own) or _under(target, OUTSIDE):
                bad.append(f"{module} imports {target}")
    assert bad == [], "components meet in the State (gateway/state.py), not in code:\n" + (
        "\n".join(bad)
    )


def test_only_the_entry_point_imports_the_cli() -> None:
    bad = [
        f"{module} imports gateway.cli"
        for module, imported in _graph(typing_only=True).items()
        if "gateway.cli" in imported and module not in ("gateway.cli", "gateway.__main__")
    ]
    assert bad == [], "shared CLI helpers live in gateway/cli_support.py:\n" + "\n".join(bad)


def test_the_core_imports_no_component_and_nothing_outside() -> None:
    """Core modules (state, config, vocabulary, …) are what components build on."""
    bad = []
    for module, imported in _graph(typing_only=True).items():
        if _under(module, COMPONENTS) or _under(module, OUTSIDE):
            continue
        bad += [
            f"{module} imports {target}"
            for target in sorted(imported)
            if _under(target, COMPONENTS) or _under(target, OUTSIDE)
        ]
    assert bad == [], "\n".join(bad)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None (depth-first search, colours)."""
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if colour.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in colour and (found := visit(nxt)):
                return found
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if node not in colour and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    """Counting imports inside functions too: a lazy import hides a cycle, it doesn't end it.
    A package's ``__init__`` importing its own submodules is not a cycle of the design."""
    graph = {
        module: {t for t in imported if not module.startswith(t + ".")}
        for module, imported in _graph(typing_only=False).items()
    }
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_the_cycle_finder_finds_cycles(graph: dict[str, set[str]], cycle: list[str] | None) -> None:
    assert _cycle(graph) == cycle
