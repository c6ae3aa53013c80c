"""`python -m mm_repro tables runs=DIR out=DIR`: every paper table beside ours (reports.tables), printed, with the
count of runs by outcome; records a table cannot use are named on stderr; `logger=wandb` logs the tables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from mm_repro.config import TablesConfig, as_list, to_schema
from mm_repro.records.tracking import open_tracker
from mm_repro.reports.tables import apart_lines, make_tables


def run(cfg: Any) -> None:
    tcfg: TablesConfig = to_schema(cfg, TablesConfig)
    out = Path(tcfg.out)
    paths = [Path(p) for p in as_list(tcfg.runs)]
    report = as_list(tcfg.report) or None
    made = make_tables(paths, out, as_list(tcfg.tables) or None, tcfg.figures, tcfg.include_chance, report)
    for markdown, _ in made["tables"].values():
        print(markdown)
    if made["empty"]:
        print(f"{len(made['empty'])} paper table(s) matched none of these runs (their files hold the paper's numbers "
              f"alone; no figure): {', '.join(made['empty'])}")  # fmt: skip
    apart = apart_lines(made["scan"])
    if not made["tables"] and apart:  # no table printed them: the runs set apart, once
        print("\n".join(apart).strip())
    if made["unmatched"]:
        print(f"{len(made['unmatched'])} complete run(s) fit no paper table: see {out / 'summary.md'}")
    print(f"{made['scan'].summary()}; tables written to {out}/ (summary.md: every run, by setup)")
    for line in made["scan"].malformed:
        sys.stderr.write(f"warning: skipped {line}\n")
    tracker = open_tracker(tcfg.logger, out, {"runs": as_list(tcfg.runs)}, name="tables", group="tables")
    try:
        for name, (_, rows) in made["tables"].items():
            tracker.log_table(name, list(rows[0]), [list(r.values()) for r in rows])
    finally:
        tracker.finish()
