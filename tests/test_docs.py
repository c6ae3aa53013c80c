"""Every `python -m mm_repro ...` line the README and docs/ show a user composes as written: its config groups and keys
exist and every value passes the command's checks (train's included), so a documented command is never refused for
a typo or a renamed key. A sweep's line is checked for its first job; lines that need the reader's own values
(`$run`, `<partition>`, `[overrides]`, `...`) are left out."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import open_dict

from mm_repro.cli import quote_paths
from mm_repro.commands import COMMANDS
from mm_repro.config import CONF_DIR, to_schema
from mm_repro.training.checks import validate_train

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "results").glob("*/README.md"))]
NEEDS_THE_READERS_VALUES = ("$", "<", "[overrides]", "...", "--help", "--cfg hydra", "\\")  # \\: A\|B\|C in a table


def documented_lines() -> list[tuple[str, str]]:
    """(page, command line) for every mm_repro command a page shows, continuation lines joined, comments cut."""
    found = []
    for page in PAGES:
        text = page.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            for match in re.finditer(r"python -m mm_repro [a-z_]+[^#`|\n]*", line):
                command = match.group(0).strip()
                if not any(x in command for x in NEEDS_THE_READERS_VALUES):
                    found.append((page.relative_to(REPO).as_posix(), command))
    return found


LINES = documented_lines()


def test_the_pages_show_commands_of_every_kind():
    commands = {shlex.split(line)[3] for _, line in LINES}
    assert {"train", "tables", "evaluate", "spiral", "flattening", "synthetic", "bench", "plan"} <= commands
    assert len(LINES) > 30


@pytest.mark.parametrize(("page", "line"), LINES, ids=[f"{p}:{line[18:60]}" for p, line in LINES])
def test_a_documented_command_composes_and_passes_its_checks(page, line):
    words = shlex.split(line)[3:]
    command, args = ("train" if words[0] == "plan" else words[0]), [w for w in words[1:] if w not in ("-m", "--cfg")]
    args = [a for a in args if a != "job"]
    args = quote_paths(args)  # as the CLI does: a run directory's `=` and `,` are a path's
    overrides = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)[0][0]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=command, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        del cfg["hydra"]
    if command == "train":
        validate_train(cfg)
    else:
        to_schema(cfg, COMMANDS[command].schema)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_relative_link_of_the_pages_resolves_anchors_included():
    broken = []
    for page in PAGES:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(#[^)\s]*)?\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif anchor and path.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", path.read_text(), re.M)
                if anchor[1:] not in {_anchor(h) for h in headings}:
                    broken.append(f"{page.relative_to(REPO)}: {target}{anchor}")
    assert not broken
