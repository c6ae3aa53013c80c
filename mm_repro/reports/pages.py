"""The pages that say what has been reproduced, written from the result JSONs (`python -m mm_repro verdicts`), so
that a page's verdict is its JSON's by construction: the README's "What has been reproduced here" table, the "rerun
here" cells of docs/reproducing.md's coverage table, and the claims block of each result's page. What to write is
listed in results/verdicts.yaml; each generated part sits between two markers, and the rest of a page is prose."""

from __future__ import annotations

import os
import re
from pathlib import Path

from omegaconf import OmegaConf

from mm_repro.errors import UserError
from mm_repro.files import atomic_write, read_json
from mm_repro.reports import verdicts

MANIFEST = Path("results") / "verdicts.yaml"
START = "<!-- verdicts: start (written by `python -m mm_repro verdicts` from the result JSONs; do not edit) -->"
END = "<!-- verdicts: end -->"
README_HEADER = "| the paper's | seeds | claims (rule `welch-0.05`, docs/trust.md) | result |\n|---|---|---|---|"


def manifest(root: Path) -> list[dict]:
    """results/verdicts.yaml's rows (each: paper, coverage, page, results, also)."""
    path = root / MANIFEST
    if not path.is_file():
        raise UserError(f"{path} not found: root= must be the repository that holds results/ (and README.md, docs/)")
    return OmegaConf.to_container(OmegaConf.load(path))["rows"]


def seeds_of(report: dict) -> list[int]:
    return list(report.get("seeds") or report["config"]["seeds"])


def summary(entries: list[tuple[str, dict]]) -> tuple[str, str]:
    """(seeds, claims) cells of a row: per entry its seed count and 'N of M claims hold', labelled when several."""
    if len(entries) == 1:
        report = entries[0][1]
        return str(len(seeds_of(report))), verdicts.count(report["claims"])
    seeds = "; ".join(f"{label}: {len(seeds_of(r))}" for label, r in entries)
    counts = "; ".join(f"{label}: {verdicts.count(r['claims'])}" for label, r in entries)
    return seeds, counts


def claims_block(entries: list[tuple[str, str, dict]], page: Path) -> str:
    """The claims of each result (label, JSON path, report) as a page lists them, each with its numbers."""
    lines = [START, ""]
    for label, json_path, report in entries:
        link = os.path.relpath(json_path, page.parent)
        lines.append(f"**{label}** ([{Path(json_path).name}]({link}), {len(seeds_of(report))} seeds): "
                     f"{verdicts.count(report['claims'])}.")  # fmt: skip
        if report.get("note"):
            lines.append(f"*{report['note']}*")
        lines.append("")
        lines += [f"- {verdicts.describe(c)}" for c in report["claims"]]
        lines.append("")
    return "\n".join([*lines, END])


def replace_between(text: str, block: str, where: Path) -> str:
    """`text` with its marked block replaced by `block` (which holds the markers)."""
    if START not in text or END not in text:
        raise UserError(f"{where} has no generated block ({START} ... {END}); add the two markers where it goes")
    head, rest = text.split(START, 1)
    return head + block + rest.split(END, 1)[1]


def write_pages(root: Path, reports: dict[str, dict]) -> list[Path]:
    """Every page the manifest names, written from `reports` (JSON path -> report); the files that changed."""
    rows, changed = manifest(root), []
    readme_rows, cells = [], {}
    for row in rows:
        main = [(e["label"], reports[e["json"]]) for e in row["results"]]
        seeds, counts = summary(main)
        page = Path(row["page"])
        readme_rows.append(f"| {row['paper']} | {seeds} | {counts} | [{page.parent}]({page}) |")
        if len(main) == 1:
            cell = f"{seeds} seeds; {counts}"
        else:
            cell = " ".join(f"{label} ({len(seeds_of(r))} seeds): {verdicts.count(r['claims'])}." for label, r in main)
        for name in row.get("coverage", []):
            cells[name] = f"[{page.parent}](../{page}): {cell}"
        listed = [(e["label"], e["json"], reports[e["json"]]) for e in row["results"] + row.get("also", [])]
        changed += _rewrite(root / page, lambda text, p=page, e=listed: replace_between(text, claims_block(e, p), p))
    table = "\n".join([START, README_HEADER, *readme_rows, END])
    changed += _rewrite(root / "README.md", lambda text: replace_between(text, table, Path("README.md")))
    changed += _rewrite(root / "docs" / "reproducing.md", lambda text: _coverage(text, cells))
    return changed


def _coverage(text: str, cells: dict[str, str]) -> str:
    """docs/reproducing.md with the last cell of each named coverage row replaced (cells split at unescaped pipes, so
    an empty cell or a `\\|` inside one counts right); a named row that is not there is an error, never a skip."""
    out, found = [], set()
    for line in text.splitlines(keepends=True):
        parts = re.split(r"(?<!\\)\|", line.rstrip("\n")) if line.startswith("| ") else []
        name = parts[1].strip() if len(parts) >= 4 else None
        if name in cells:
            parts[-2] = f" {cells[name]} "
            line = "|".join(parts) + "\n"
            found.add(name)
        out.append(line)
    missing = sorted(set(cells) - found)
    if missing:
        raise UserError(
            f"docs/reproducing.md has no coverage row named {missing[0]!r} (results/verdicts.yaml names it); "
            "rename the row or the manifest's entry so that they match"
        )
    return "".join(out)


def _rewrite(path: Path, change) -> list[Path]:
    before = path.read_text()
    after = change(before)
    if after == before:
        return []
    atomic_write(path, after.encode())
    return [path]


def load_reports(root: Path) -> dict[str, dict]:
    """Every result JSON the manifest names, read."""
    paths = {e["json"] for row in manifest(root) for e in row["results"] + row.get("also", [])}
    return {p: read_json(root / p) for p in sorted(paths)}
