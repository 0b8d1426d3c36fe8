"""The layout holds: no import cycle (type-only imports included) and the layering contracts
in setup.cfg (``[importlinter]``: the core imports no HTTP stack, no vendor format, no edge)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def import_cycles(package: str) -> list[list[str]]:
    """Every set of modules of ``package`` that import each other round in a circle (the
    strongly connected components of its import graph, Tarjan's algorithm), each sorted."""
    graph = grimp.build_graph(package, include_external_packages=False, cache_dir=None)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in edges[module]:
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return cycles


def test_the_package_has_no_import_cycle_not_even_a_type_only_one() -> None:
    assert import_cycles("stt_gateway") == []


def test_the_cycle_check_finds_a_type_only_cycle(tmp_path: Path) -> None:
    """The check above can fail: a cycle made only of ``if TYPE_CHECKING`` imports counts."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import b\n"
    )
    (package / "b.py").write_text("from . import a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert import_cycles("cyclic") == [["cyclic.a", "cyclic.b"]]
    finally:
        sys.path.remove(str(tmp_path))


def test_the_layering_contracts_hold() -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("lint-imports")),
            "--config",
            "setup.cfg",
            "--no-cache",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
