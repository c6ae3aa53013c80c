"""The house: the declared layer order of the package's rooms, checked against every import it makes (function-level
ones included); no import cycle; the only function-level imports those that defer a heavy dependency, each with its
reason; and every module small enough to read. docs/architecture.md draws the same order."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mm_repro"

# The rooms of mm_repro from the leaves up. A module may import its own room and any room of a lower layer, never a
# room of its own layer or a higher one (docs/architecture.md).
LAYERS = [
    ("errors", "__init__"),  # the exceptions a command ends with, and their exit codes
    ("files", "console"),  # files written whole or not at all; every line a user sees
    ("config",),  # typed, checked configs of every command
    ("data", "models", "method"),  # datasets, nets, the methods (the mix, its points, its loss)
    ("records",),  # a run's files (result.json reads what its method declares)
    ("training",),  # the step, the trainers, the loop, a run's session and ownership
    ("sweeps", "reports", "evaluation", "bench"),  # launchers and packs; readers of records; one run's evaluation
    ("experiments",),  # the self-contained experiments (they use evaluation's measures)
    ("commands", "api"),  # one object per command: its schema, what it runs and prints; the Python API
    ("cli",),  # argv, the Hydra app, one line per failure
    ("__main__",),
]
LAYER = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}

# Function-level imports, each deferring a heavy or optional dependency; anything else is imported at the top.
DEFERRED = {
    "matplotlib": "figures only: matplotlib takes a second to import and most commands draw none",
    "matplotlib.pyplot": "figures only (as matplotlib)",
    "matplotlib.ticker": "figures only (as matplotlib)",
    "wandb": "only with logger=wandb; several seconds to import",
    "scipy.io": "only SVHN's .mat files need it; slow to import",
    "scipy": "scipy.stats, only where a claim or a run's chance is decided; slow to import",
    "PIL": "only Tiny-ImageNet's JPEGs, the synthetic renderer and the official-style loader need it",
    "torchvision.transforms": "only the official-style loader of `bench`",
    "torchvision.datasets": "the MNIST class's mirrors and MD5s, only when downloading",
    "submitit": "only on a SLURM cluster (an optional extra)",
    "submitit.core.utils": "only on a SLURM cluster (an optional extra)",
    "hydra_plugins.hydra_submitit_launcher.config": "only on a SLURM cluster (an optional extra)",
    "torch._inductor": "only when a run compiles (train.compile)",
    "netrc": "only with logger.mode=online",
    "torchvision": "only model=torchvision builds from its registry (`from torchvision import models`)",
    "torchvision.models": "only model=torchvision (as torchvision)",
    "timm": "only model=timm, and only where timm is installed (an optional dependency)",
    "urllib.parse": "only with logger.mode=online",
    "hydra": "composing `train`'s config inside another command",
    "hydra.core.global_hydra": "composing `train`'s config inside another command",
    "mm_repro.commands": "a command's module (and torch) loads only when that command runs: --help and a refused "
    "override answer at once",
}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


# Modules that import by a computed name (importlib), each with what it may import so: the layout test counts a
# literal importlib name as an import, and refuses any other computed one.
DYNAMIC = {"mm_repro.method": "discovers its own room's method modules (mm_repro.method.<name>: METHOD)"}


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a relative `from .x import y` names, from the importing module's name."""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(package: Path = PACKAGE) -> dict[str, list[tuple[str, bool, int, bool]]]:
    """Every module's imports: (module imported, at function level, line, whether it is a `from m import name`'s
    name), mm_repro and third-party alike; relative imports resolved, importlib's literal names counted, a computed
    name outside DYNAMIC reported as `<computed>`."""
    found: dict[str, list[tuple[str, bool, int, bool]]] = {}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        module = _module_name(path, package)
        out = []
        for node in ast.walk(tree):
            inner = id(node) not in top and not _in_type_checking(tree, node)
            if isinstance(node, ast.ImportFrom):
                name = node.module if node.level == 0 else _absolute(node, module, path.name == "__init__.py")
                out.append((name, inner, node.lineno, False))
                out += [(f"{name}.{a.name}", inner, node.lineno, True) for a in node.names]
            elif isinstance(node, ast.Import):
                out += [(a.name, inner, node.lineno, False) for a in node.names]
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "importlib.import_module",
                "import_module",
                "__import__",
            ):
                arg = node.args[0] if node.args else None
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    out.append((arg.value, True, node.lineno, False))
                elif module not in DYNAMIC:
                    out.append(("<computed>", True, node.lineno, False))
        found[module] = out
    return found


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(
        isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test) and node in list(ast.walk(n))
        for n in tree.body
    )


MODULES = {_module_name(p) for p in PACKAGE.rglob("*.py")}


def _graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = {_module_name(p, package) for p in package.rglob("*.py")}
    return {m: {i for i, *_ in imports if i in modules and i != m} for m, imports in _imports(package).items()}


def upward_imports(package: Path = PACKAGE) -> list[str]:
    """Every import of a room of the same or a higher layer."""
    return [
        f"{m} imports {i} (layer {LAYER[_room(m)]} -> {LAYER[_room(i)]})"
        for m, imports in _graph(package).items()
        for i in sorted(imports)
        if _room(i) != _room(m) and LAYER[_room(i)] >= LAYER[_room(m)]
    ]


def unexplained_function_imports(package: Path = PACKAGE) -> list[str]:
    """Every function-level import that defers no dependency DEFERRED names (a `from m import name` is judged by m)."""
    return sorted(
        f"{m}:{line} imports {i} inside a function"
        for m, imports in _imports(package).items()
        for i, inner, line, is_name in imports
        if inner and not is_name and not any(i == d or i.startswith(d + ".") for d in DEFERRED)
    )


def test_every_import_follows_the_layer_order():
    assert set(LAYER) >= {_room(m) for m in MODULES}, "a room without a layer"
    upward = upward_imports()
    assert not upward, "\n".join(upward)


def test_no_import_cycle_function_level_imports_included():
    graph, state = _graph(), {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(n) :], n]))
            if n not in state:
                visit(n, [*path, n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert len(graph) > 60  # the walk saw the whole package


def test_function_level_imports_only_defer_a_heavy_dependency():
    unexplained = unexplained_function_imports()
    assert not unexplained, "\n".join(unexplained)


@pytest.mark.parametrize(
    ("module", "line", "kind"),
    [
        ("data/types.py", "from ..training import loop", "a relative import of a higher room"),
        ("data/types.py", "import importlib\nimportlib.import_module('mm_repro.cli')", "a string import (importlib)"),
        ("data/types.py", "def f():\n    import omegaconf\n", "an undotted import inside a function"),
        ("data/types.py", "def f():\n    from omegaconf import OmegaConf\n", "a from-import inside a function"),
        ("data/types.py", "import importlib\nname = 'mm_repro.cli'\nimportlib.import_module(name)", "a computed name"),
        ("records/result.py", "from mm_repro.training import loop", "an upward import"),
    ],
)
def test_the_layout_test_fails_on_each_kind_of_forbidden_import(tmp_path, module, line, kind):
    copy = tmp_path / "mm_repro"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert not upward_imports(copy) and not unexplained_function_imports(copy)  # the copy is clean as it is
    path = copy / module
    path.write_text(path.read_text() + "\n" + line + "\n")
    assert upward_imports(copy) or unexplained_function_imports(copy), kind


def test_every_module_is_small():
    sizes = {p.relative_to(PACKAGE): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 290, max(sizes, key=sizes.get)  # about 250, a little more for one job


REPO = PACKAGE.parent


def test_the_packaging_lists_every_package_of_the_tree():
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    tree = {
        ".".join(p.parent.relative_to(REPO).parts)
        for root in (PACKAGE, REPO / "hydra_plugins")
        for p in root.rglob("__init__.py")
    }
    assert listed == tree | {"hydra_plugins", "mm_repro.conf", "mm_repro.paper"}  # hydra_plugins: a namespace


@pytest.mark.slow
def test_a_wheel_carries_the_configs_and_the_papers_numbers_and_runs_outside_the_tree(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the checkout
    for part in ("mm_repro", "hydra_plugins", "conf", "results/paper"):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    stale = source / "build" / "lib" / "mm_repro" / "deleted_since.py"  # what an earlier build left behind
    stale.parent.mkdir(parents=True)
    stale.write_text("x = 1\n")
    guide = (REPO / "docs" / "using.md").read_text()
    (command,) = [line.split("#")[0] for line in guide.splitlines() if "pip wheel" in line]  # as docs/using.md says
    command = command.replace("pip wheel", f"{sys.executable} -m pip wheel -q --no-build-isolation")
    built = subprocess.run(["bash", "-c", command], cwd=source, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (source / "dist").glob("mm_repro-*.whl")
    assert "mm_repro/deleted_since.py" not in zipfile.ZipFile(wheel).namelist()
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(unpacked)
    for source, target in (("conf", "mm_repro/conf"), ("results/paper", "mm_repro/paper")):
        files = [p for p in (REPO / source).rglob("*") if p.suffix in (".yaml", ".json")]
        assert len(files) > 10
        for p in files:
            copy = unpacked / target / p.relative_to(REPO / source)
            assert copy.read_bytes() == p.read_bytes(), copy
    # From another directory, the unpacked wheel alone: its config and numbers, not the source tree's.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(unpacked)}
    code = "import mm_repro.config as c; print(c.CONF_DIR); print(c.PAPER_DIR)"
    found = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert found.stdout.split() == [str(unpacked / "mm_repro" / "conf"), str(unpacked / "mm_repro" / "paper")]
    shown = subprocess.run(
        [sys.executable, "-m", "mm_repro", "train", "experiment=smoke", "--cfg", "job"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "name: synthetic" in shown.stdout and not list(elsewhere.iterdir())


def test_no_command_writes_into_the_checkout_by_default():
    # every output directory a command defaults to lies under runs/, which git ignores; results/ changes only when a
    # user names it (out=results/...)
    import dataclasses

    from mm_repro.commands import COMMANDS

    defaults = {
        name: f.default
        for name, c in COMMANDS.items()
        for f in dataclasses.fields(c.schema)
        if f.name == "out" and isinstance(f.default, str)
    }
    assert set(defaults) == {"tables", "spiral", "bench", "flattening", "synthetic"}
    assert all(out.startswith("runs/") for out in defaults.values()), defaults
    assert "/runs/" in (REPO / ".gitignore").read_text().split()


def test_a_committed_json_is_byte_for_byte_what_the_command_writes():
    # results/ holds JSON as mm_repro.files.write_json writes it: rerunning a command with the same numbers changes
    # no byte of the committed file
    import json

    from mm_repro.files import write_json

    committed = [p for p in (REPO / "results").rglob("*.json") if "paper" not in p.parts]
    assert committed
    for path in committed:
        copy = Path(os.environ.get("TMPDIR", "/tmp")) / f"mm_repro-json-{os.getpid()}.json"
        write_json(copy, json.loads(path.read_text()))
        assert copy.read_bytes() == path.read_bytes(), path
        copy.unlink()


def test_no_paper_number_is_written_in_the_code():
    # the paper's numbers live in results/paper/ (the GPU tables, and cpu/ for the small experiments), read from there
    import json
    import re

    numbers: set[str] = set()

    def collect(node) -> None:
        if isinstance(node, dict):
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)
        elif isinstance(node, float) and node > 1 and re.fullmatch(r"\d+\.\d{2,}", repr(node)):
            numbers.add(repr(node))

    for path in (REPO / "results" / "paper").rglob("*.json"):
        collect(json.loads(path.read_text()))
    assert len(numbers) > 100  # the walk read the tables
    found = [
        f"{p.relative_to(REPO)}: {n}"
        for p in PACKAGE.rglob("*.py")
        for n in sorted(set(re.findall(r"(?<![\d.])\d+\.\d{2,}(?![\d.])", p.read_text())) & numbers)
    ]
    assert not found, found
