"""The package's shape: no import cycles, compiled modules below the control plane, short modules.

The layering between the planes is import-linter's (pyproject.toml, run by
tests/run.sh); these are what it cannot see: cycles inside a plane, the
imports of the Cython sources, and how long a hand-written module has grown.
"""

from __future__ import annotations

import re
from pathlib import Path

import grimp

PACKAGE = Path(__file__).resolve().parents[2] / "fastsocks"
# The planes above the wire format and the data plane.
UPPER = ("control", "net", "config", "observe", "runtime", "bench")
# Long by nature: the compiled modules' pure twins mirror the .pyx line for line.
TWINS = {"_codec_py.py", "_relay_py.py", "_datagram_py.py"}
MAX_LINES = 450  # "no hand-written module over ~400 lines", with a little slack


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("fastsocks", exclude_type_checking_imports=True)
    assert len(graph.modules) > 40  # the package really was read
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b"]]


def test_compiled_modules_import_nothing_above_them() -> None:
    # import-linter reads Python only; the Cython sources are checked here.
    pattern = re.compile(r"^\s*(?:from|cimport|import)\s+(\S+)", re.M)
    sources = sorted(PACKAGE.glob("*.pyx")) + sorted(PACKAGE.glob("*.pxd"))
    assert {p.stem for p in sources} >= {"_codec", "_relay", "_engine", "_datagram", "_tables"}
    for path in sources:
        for name in pattern.findall(path.read_text(encoding="utf-8")):
            top = name.lstrip(".").split(".")[0]
            in_package = name.startswith(".") or name.startswith("fastsocks.")
            assert not (in_package and top in UPPER), f"{path.name} imports {name}"


def test_hand_written_modules_stay_short() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if p.name not in TWINS
            and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}
