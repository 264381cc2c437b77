"""The rooms of m2u and their walls: what each package may import, and that every CLI answers -h.

The module import graph is built from the source's AST, not from what happens to be loaded: every `import` and
`from ... import` in a module counts, at module level or inside a function, under `if TYPE_CHECKING:` or not.
A package `__init__` that lists lazy exports (`lazy_exports(__name__, {"Name": "submodule"})`) depends on those
modules too.
"""

from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE_ORDER = ["core", "masking", "datasets", "training", "inference", "evaluation", "pipelines"]


@dataclass(frozen=True)
class Module:
    name: str  # m2u.core.fileio
    path: Path
    is_package: bool  # an __init__.py


def package_dirs() -> dict[str, Path]:
    """m2u.* package name -> folder, as setup.cfg maps them."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options"]["package_dir"].strip().splitlines()
    pairs = (line.split("=") for line in lines if "=" in line)
    return {name.strip(): REPO / folder.strip() for name, folder in pairs}


def discover_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package, folder in package_dirs().items():
        for path in sorted(folder.glob("*.py")):
            is_package = path.name == "__init__.py"
            name = package if is_package else f"{package}.{path.stem}"
            modules[name] = Module(name, path, is_package)
    return modules


def _resolve_relative(module: Module, level: int, target: str | None) -> str:
    parts = module.name.split(".")
    base = parts if module.is_package else parts[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def _lazy_export_targets(module: Module, tree: ast.Module) -> Iterator[str]:
    """The modules named in `lazy_exports(__name__, {...})` (or in the dict bound to its second argument)."""
    dicts = {
        target.id: node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports"):
            continue
        if len(node.args) < 2:
            continue
        mapping = node.args[1]
        if isinstance(mapping, ast.Name):
            mapping = dicts.get(mapping.id, mapping)
        if isinstance(mapping, ast.Dict):
            for value in mapping.values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    yield value.value if "." in value.value else f"{module.name}.{value.value}"


def imported_names(module: Module) -> Iterator[str]:
    """Every m2u module (or package) this module's source imports, with `from pkg import sub` resolved to sub."""
    tree = ast.parse(module.path.read_text(), filename=str(module.path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(module, node.level, node.module) if node.level else (node.module or "")
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
    yield from _lazy_export_targets(module, tree)


def import_graph() -> dict[str, set[str]]:
    """m2u module -> the m2u modules it imports (names that are not modules, like `from m2u.x import f`, drop)."""
    modules = discover_modules()
    graph: dict[str, set[str]] = {}
    for name, module in modules.items():
        edges = {target for target in imported_names(module) if target in modules and target != name}
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def top_package(module: str) -> str:
    """m2u.training.models.blocks -> training."""
    return module.split(".")[1]


def _modules_after_import(*modules: str) -> set[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_inference_never_imports_evaluation_or_its_metric_libraries():
    loaded = _modules_after_import(
        "m2u.inference",
        "m2u.inference.unmask",
        "m2u.inference.export",
        "m2u.inference.cli",
    )
    forbidden = [
        m
        for m in loaded
        if m.startswith(("m2u.evaluation", "scipy", "lpips", "torchmetrics", "torch_fidelity", "pytorch_fid"))
    ]
    assert forbidden == []
    assert "m2u.inference.restore" in loaded  # the check saw the package load


def test_the_graph_covers_every_package_and_sees_function_level_imports():
    graph = import_graph()
    assert {top_package(m) for m in graph} == set(PACKAGE_ORDER)
    # A module-level, a function-level and a relative import all count, and a lazy export is an edge too.
    assert "m2u.core.fileio" in graph["m2u.datasets.writer"]
    assert "m2u.masking.render" in graph["m2u.masking"]  # lazy_exports(__name__, {"apply_mask": "render"})


def test_graph_builder_sees_function_level_and_relative_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from . import sibling\n    import m2u.core.fileio\n")
    module = Module("m2u.pkg.mod", source, is_package=False)
    assert {"m2u.pkg", "m2u.pkg.sibling", "m2u.core.fileio"} <= set(imported_names(module))


def test_cycle_finder_finds_a_three_module_cycle_and_ignores_a_chain():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_each_package_imports_only_packages_to_its_left():
    # core <- masking <- datasets <- training <- inference <- evaluation <- pipelines (a straight line).
    rank = {package: i for i, package in enumerate(PACKAGE_ORDER)}
    offenders = [
        f"{module} imports {target}"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if rank[top_package(target)] > rank[top_package(module)]
    ]
    assert offenders == []


def test_inference_imports_no_evaluation_module():
    offenders = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if top_package(module) == "inference"
        for target in targets
        if top_package(target) == "evaluation"
    ]
    assert offenders == []


def _console_scripts() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=")[0].strip() for line in lines]


_SUBCOMMANDS = {"m2u-train": ["mseg", "gan"], "m2u-pipeline": ["run", "ablate"], "m2u-export": ["onnx"]}


@pytest.mark.parametrize(
    "command", [[s] for s in _console_scripts()] + [[s, c] for s, cs in _SUBCOMMANDS.items() for c in cs]
)
def test_every_cli_answers_dash_h(command):
    exe = Path(sys.executable).with_name(command[0])
    assert exe.exists(), f"{command[0]} is not installed beside {sys.executable}"
    out = subprocess.run([str(exe), *command[1:], "-h"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage:" in out.stdout


def test_every_console_script_loads_its_libraries_inside_its_entry():
    """The script Python writes for a console command imports its entry's module first: a Ctrl-C while torch
    loads there was a 20-line import traceback (m2u-train, m2u-eval, m2u-pipeline; m2u-export aborted in C++).
    Each entry's module is light; the command's libraries load inside the entry (m2u.core.startup.console_entry),
    which says such a stop in one line."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    modules = sorted({line.split("=")[1].strip().split(":")[0] for line in lines})
    assert len(modules) >= 5
    heavy = {"torch", "numpy", "cv2", "dlib", "PIL"}
    for module in modules:
        assert heavy & _modules_after_import(module) == set(), module


def test_package_imports_stay_light():
    # The packages resolve their names lazily: importing them loads none of the heavy libraries.
    loaded = _modules_after_import(
        "m2u.masking", "m2u.datasets", "m2u.training", "m2u.inference", "m2u.evaluation", "m2u.pipelines"
    )
    assert {"torch", "cv2", "dlib"} & loaded == set()
    assert "m2u.core.lazy" in loaded
