"""The code's shape, kept so: import contracts, ruff, no import cycles in core, short pages and functions."""
import ast
import subprocess
import sys
from pathlib import Path

from core.paths import REPO_ROOT

BIN = Path(sys.executable).parent
MAX_PAGE_LINES = 150
MAX_FUNCTION_LINES = 80


def test_import_contracts_hold():
    """.importlinter: core never imports streamlit; data/train/export/chat/evaluate never import each other."""
    proc = subprocess.run([str(BIN / "lint-imports")], cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" not in proc.stdout.lower().replace("0 broken", "")


def test_ruff_is_clean():
    proc = subprocess.run([str(BIN / "ruff"), "check", "--output-format", "concise", "."], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_core_has_no_import_cycles():
    import grimp

    graph = grimp.build_graph("core")
    modules = sorted(graph.modules)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in modules}
    state, cycles = {}, []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n] if n in stack else [m, n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in modules:
        if m not in state:
            visit(m, [m])
    # a package importing its own submodule (core.inference re-exporting its interface) is not a cycle
    cycles = [c for c in cycles if not all(x.startswith(c[0] + ".") or x == c[0] for x in c)]
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_pages_are_thin():
    long = {p.name: n for p in (REPO_ROOT / "pages").glob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_PAGE_LINES}
    assert not long, f"pages over {MAX_PAGE_LINES} lines (move logic to core/): {long}"


def test_core_functions_fit_on_a_screen():
    long = []
    for path in (REPO_ROOT / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


def test_every_train_config_field_is_documented():
    from dataclasses import fields

    from core.config import field_docs
    from core.train.config import TrainConfig

    missing = [f.name for f in fields(TrainConfig) if not field_docs(TrainConfig).get(f.name)]
    assert not missing, f"TrainConfig fields without a docstring: {missing}"
