"""One writer for every table a command writes: markdown, CSV and LaTeX from a list of rows (dicts with the same
keys), and `write_table`, a titled markdown table with its note and the CSV beside it, written atomically. `tables`,
`summary` and the experiments (`flattening`, `synthetic`) write through it."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from mm_repro.files import atomic_write

# Characters the tables use that LaTeX needs spelled out.
LATEX = (
    ("&", r"\&"),
    ("%", r"\%"),
    ("_", r"\_"),
    ("#", r"\#"),
    ("±", r"$\pm$"),
    ("α", r"$\alpha$"),
    ("Δ", r"$\Delta$"),
    ("σ", r"$\sigma$"),
    ("—", "--"),
    ("†", r"$^\dagger$"),
    ("‡", r"$^\ddagger$"),
    ("°", r"$^\circ$"),
    ("−", "-"),
)


def markdown(rows: list[dict]) -> list[str]:
    """The lines of a markdown table of `rows` (the first row's keys are the columns)."""
    columns = list(rows[0])
    header = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return header + ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _latex_escaped(text: Any) -> str:
    text = str(text).replace("\\", r"\textbackslash{}")
    for a, b in LATEX:
        text = text.replace(a, b)
    return text


def latex(rows: list[dict], caption: str) -> str:
    """A booktabs table of `rows` with its caption."""
    columns = list(rows[0])
    lines = [r"\begin{table}[t]", r"\centering", r"\small", r"\begin{tabular}{" + "l" * len(columns) + "}", r"\toprule"]
    lines.append(" & ".join(_latex_escaped(c) for c in columns) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(_latex_escaped(r[c]) for c in columns) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _latex_escaped(caption) + "}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(stem: Path, title: str, note: str, rows: list[dict]) -> None:
    """`<stem>.md` (a title, a note, the table) and `<stem>.csv`, written atomically."""
    text = "\n".join([f"## {title}", "", note, "", *markdown(rows)]) + "\n"
    atomic_write(stem.with_suffix(".md"), text.encode())
    atomic_write(stem.with_suffix(".csv"), csv_text(rows).encode())
