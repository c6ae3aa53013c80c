"""`hydra/sweeper=listed`: a sweep of the jobs listed in a file, each with its own overrides, launched by whichever
launcher the sweep names (basic, local, slurm, packed, ...), exactly as Hydra's basic sweeper launches a grid.

A study's runs are not a grid (section 3.2's five nets differ in their method, their regularizer and their keys), so
`flattening` and `synthetic` write their jobs to `hydra.sweeper.jobs` (a YAML list of override lists) and run
`python -m mm_repro <command> -m hydra/sweeper=listed hydra.sweeper.jobs=FILE` (mm_repro.sweeps.study). The command
line's own overrides (one value per key) are added to every job. No `from __future__ import annotations` here (see
packed_launcher.py)."""

from dataclasses import dataclass
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class ListedSweeperConf:
    _target_: str = "hydra_plugins.mm_repro_launchers.listed_sweeper.ListedSweeper"
    jobs: str = "???"  # a YAML file: a list of jobs, each a list of overrides
    max_batch_size: Optional[int] = None  # noqa: UP045 (Hydra's structured configs need Optional)
    params: Optional[dict[str, str]] = None  # noqa: UP045


ConfigStore.instance().store(group="hydra/sweeper", name="listed", node=ListedSweeperConf, provider="mm_repro")


class ListedSweeper(BasicSweeper):
    def __init__(self, jobs: str, max_batch_size: Optional[int] = None, params: Any = None) -> None:  # noqa: UP045
        super().__init__(max_batch_size, params)
        self.jobs_file = jobs

    def split_arguments(self, overrides: Any, max_batch_size: Optional[int]) -> list:  # noqa: UP045
        """One batch: every listed job, after the command line's overrides (which must not sweep)."""
        from mm_repro.sweeps.study import read_jobs

        (grid,) = BasicSweeper.split_arguments(overrides, None)
        if len(grid) != 1:
            from mm_repro.errors import UserError

            raise UserError("hydra/sweeper=listed takes one value per key on the command line; list the jobs instead")
        return [[[*grid[0], *job] for job in read_jobs(self.jobs_file)]]
