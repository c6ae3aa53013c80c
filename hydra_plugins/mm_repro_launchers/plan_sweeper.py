"""`hydra/sweeper=plan` (conf/plan.yaml sets it): the sweep's jobs expanded exactly as Hydra's basic sweeper expands
them (the experiment's `hydra.sweeper.params` and the command line), then planned instead of launched: what
`python -m mm_repro plan` prints (mm_repro.sweeps.plan). Nothing is trained and nothing is written.
No `from __future__ import annotations` here (see packed_launcher.py)."""

from dataclasses import dataclass
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser


@dataclass
class PlanSweeperConf:
    _target_: str = "hydra_plugins.mm_repro_launchers.plan_sweeper.PlanSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 (Hydra's structured configs need Optional)
    params: Optional[dict[str, str]] = None  # noqa: UP045


ConfigStore.instance().store(group="hydra/sweeper", name="plan", node=PlanSweeperConf, provider="mm_repro")


class PlanSweeper(BasicSweeper):
    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.hydra_context, self.config, self.launcher = hydra_context, config, None  # no launcher: nothing runs

    def sweep(self, arguments: list[str]) -> Any:
        from mm_repro.sweeps.plan import print_plan

        params = self._parse_config()
        params.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        batches = self.split_arguments(parser.parse_overrides(params), None)
        print_plan(self.config, self.hydra_context, [list(job) for batch in batches for job in batch])
        return []
