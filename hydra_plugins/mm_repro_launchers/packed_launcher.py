"""`hydra/launcher=packed`: the jobs of a sweep that can share a device train together as one fused model.

A thin Hydra Launcher; what it does is in mm_repro.sweeps.packed (grouping, packs, jobs that run alone). No
`from __future__ import annotations` here: Hydra runs plugin modules outside sys.modules, where a dataclass with
string annotations cannot be built."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher


@dataclass
class PackedLauncherConf:
    _target_: str = "hydra_plugins.mm_repro_launchers.packed_launcher.PackedLauncher"
    max_pack: int = 8  # at most this many runs in one pack (on CUDA also at most what fits in memory)


ConfigStore.instance().store(group="hydra/launcher", name="packed", node=PackedLauncherConf, provider="mm_repro")


class PackedLauncher(Launcher):
    def __init__(self, max_pack: int = 8) -> None:
        super().__init__()
        if max_pack < 1:
            from mm_repro.errors import UserError

            raise UserError(f"hydra.launcher.max_pack={max_pack} must be >= 1")
        self.max_pack = max_pack
        self.config: Any = None
        self.hydra_context: Any = None
        self.task_function: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from mm_repro.sweeps.packed import PackedLaunch

        launch = PackedLaunch(self.config, self.hydra_context, self.task_function, self.max_pack)
        return launch.launch([list(o) for o in job_overrides], initial_job_idx)
