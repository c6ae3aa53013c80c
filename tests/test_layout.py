"""The house: the package's modules import one another without a cycle (module-level imports, the ones that run when
a module loads), and every module stays small enough to read."""

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


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.parse(path.read_text()).body:  # top level only: function-level imports are deferred
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mm_repro"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("mm_repro"))
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_no_import_cycle():
    graph, state = _imports(), {}

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
    assert len(graph) > 30  # the walk saw the whole package


def test_every_module_is_small():
    sizes = {p.relative_to(PACKAGE): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 320, max(sizes, key=sizes.get)


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
    readme = (REPO / "README.md").read_text()
    (command,) = [line.split("#")[0] for line in readme.splitlines() if "pip wheel" in line]  # as the README says
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
