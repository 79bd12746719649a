"""benchmarks/ keeps the shape docs/architecture.md describes: no module imports a module
that imports it (function-level imports included), no module over 450 lines (here and in
baselines/ and stars_plugin/), and no test switch read from the environment by production code."""
from __future__ import annotations

import ast
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
#: modules owned elsewhere (data, zoo, export) are not held to the size rule here
SIZE_EXEMPT = {"export.py"}


def _imports(path: Path) -> set[str]:
    mod = path.stem
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps |= {a.name for a in node.names}
            elif (node.module or "").startswith("benchmarks."):
                deps.add(node.module.split(".")[1])
            elif node.module == "benchmarks":
                deps |= {a.name for a in node.names}
    deps.discard(mod)
    return deps


def test_no_import_cycles():
    mods = {p.stem: _imports(p) for p in BENCH.glob("*.py")}
    graph = {m: {d for d in deps if d in mods} for m, deps in mods.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, f"import cycle: {' -> '.join(path + [m, d])}"
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_modules_stay_small():
    """benchmarks/, and the modules of baselines/ and stars_plugin/ too."""
    files = [*BENCH.glob("*.py"), *(BENCH.parent / "baselines").rglob("*.py"),
             *(BENCH.parent / "stars_plugin").glob("*.py")]
    big = {str(p.relative_to(BENCH.parent)): n for p in files
           if p.name not in SIZE_EXEMPT and (n := len(p.read_text().splitlines())) > 450}
    assert not big, f"split these modules by responsibility: {big}"


def test_no_test_switches_in_the_environment():
    for p in BENCH.rglob("*.py"):
        text = p.read_text()
        assert "_FAKE_" not in text, f"{p.name} reads a test switch; pass a seam explicitly"
