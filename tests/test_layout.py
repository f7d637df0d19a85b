"""The package's shape: no import cycles, a runtime that never reaches the toolchain, and
stages that only import stages below them (shared parts below every stage).

Both are read from the source (every import statement, including those inside functions),
so a lazy import cannot hide a cycle or a torch dependency from the runtime.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "segexport"
# What the runtime may import from segexport besides itself: the shared bottom layer.
RUNTIME_MAY_USE = {"segexport", "segexport.errors", "segexport.shapes"}
TOOLCHAIN_PACKAGES = {"torch", "onnx", "onnxsim", "onnxscript", "safetensors", "tqdm", "torchvision"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path) for path in PACKAGE.rglob("*.py")}


def imports_of(path: Path) -> set[str]:
    """Every module an `import` or `from ... import` in the file names, at any depth
    (`from segexport import verify` names segexport.verify)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & MODULES
            found |= submodules or {node.module}
    return found


def package_graph() -> dict[str, set[str]]:
    """segexport module -> the segexport modules it imports (a package counts as its __init__)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        targets = imports_of(path) & MODULES
        # `from segexport.runtime import x` inside segexport.runtime.y is the package itself.
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_no_import_cycle_in_the_package() -> None:
    cycle = find_cycle(package_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_runtime_imports_nothing_from_the_toolchain() -> None:
    runtime_files = sorted((PACKAGE / "runtime").rglob("*.py"))
    assert len(runtime_files) >= 4
    problems = []
    for path in runtime_files:
        for target in imports_of(path):
            top = target.split(".")[0]
            inside = target == "segexport.runtime" or target.startswith("segexport.runtime.")
            toolchain_module = top == "segexport" and not inside and target not in RUNTIME_MAY_USE
            if toolchain_module or top in TOOLCHAIN_PACKAGES:
                problems.append(f"{path.name}: {target}")
    assert not problems, problems


def test_runtime_and_doctor_load_without_torch_or_onnx() -> None:
    code = (
        "import sys\n"
        "import segexport.runtime, segexport.runtime.engine, segexport.doctor, segexport.cli\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(TOOLCHAIN_PACKAGES)!r})\n"
        "print(loaded)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# The stages, bottom to top, as a user runs them; everything else in the package is a shared
# part below every stage (runtime, zoo, importers, data, compare, reference, readiness, ...).
# A package counts with its modules (`segexport.bench` is `segexport.bench.*` too).
STAGE_ORDER = (
    "segexport.export",
    "segexport.prerequisites",  # runs the missing earlier stages for the ones above it
    "segexport.quantize",
    "segexport.build",
    "segexport.verify",
    "segexport.bench",
    "segexport.serving",
    "segexport.cli",
    "segexport.__main__",
)


def stage_rank(module: str) -> int:
    """0 for a shared part, else 1 + the stage's position in STAGE_ORDER."""
    for rank, stage in enumerate(STAGE_ORDER, start=1):
        if module == stage or module.startswith(stage + "."):
            return rank
    return 0


def stage_order_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if stage_rank(target) > stage_rank(module):
                what = "a shared part" if stage_rank(module) == 0 else "a stage"
                problems.append(f"{module} ({what}) imports {target}, a stage above it")
    return problems


def test_stages_import_only_what_sits_below_them() -> None:
    # Every stage named exists, so a rename cannot turn the rule off silently.
    missing = [s for s in STAGE_ORDER if not any(m == s or m.startswith(s + ".") for m in MODULES)]
    assert missing == [], f"STAGE_ORDER names modules that do not exist: {missing}"
    assert stage_order_violations(package_graph()) == []


def test_the_stage_order_rule_catches_an_upward_import() -> None:
    graph = {
        "segexport.compare": {"segexport.quantize"},  # a shared part reaching up
        "segexport.quantize": {"segexport.build"},  # a stage reaching up
        "segexport.build": {"segexport.quantize", "segexport.compare"},  # fine
    }
    assert stage_order_violations(graph) == [
        "segexport.compare (a shared part) imports segexport.quantize, a stage above it",
        "segexport.quantize (a stage) imports segexport.build, a stage above it",
    ]


MAX_MODULE_LINES = 500
MAX_COMMAND_LINES = 60


def test_modules_stay_small() -> None:
    """One room per concern: no module of the package over 500 lines (the TensorRT rules are
    JSON data, not modules)."""
    sizes = {
        str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}


def test_command_functions_stay_thin() -> None:
    """The CLI is a thin layer: no function in segexport/cli/ over 60 lines (decorators aside)."""
    long = []
    for path in (PACKAGE / "cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_COMMAND_LINES:
                    long.append(f"{path.name}:{node.name} ({length} lines)")
    assert long == []
