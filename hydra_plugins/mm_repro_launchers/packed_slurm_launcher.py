"""`hydra/launcher=packed_slurm`: a sweep's jobs grouped into packs as `hydra/launcher=packed` groups them, each pack
submitted as one SLURM job (submitit), with the options of `hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml).

A thin Hydra Launcher; what it does is in mm_repro.sweeps.cluster. Needs Hydra's submitit launcher
(pip install -e ".[slurm]"); without it, choosing this launcher fails in one line, as `hydra/launcher=slurm` does.
No `from __future__ import annotations` here (see packed_launcher.py)."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn

from hydra_plugins.mm_repro_launchers.packed_launcher import PackedLauncher

try:
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
except ImportError:  # the slurm extra is not installed: the launcher is not offered
    SlurmQueueConf = None

if SlurmQueueConf is not None:

    @dataclass
    class PackedSlurmLauncherConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.mm_repro_launchers.packed_slurm_launcher.PackedSlurmLauncher"
        max_pack: int = 8  # at most this many runs in one pack (on the node also at most what fits in memory)

    ConfigStore.instance().store(
        group="hydra/launcher", name="packed_slurm_schema", node=PackedSlurmLauncherConf, provider="mm_repro"
    )


class PackedSlurmLauncher(PackedLauncher):
    def __init__(self, max_pack: int = 8, **params: Any) -> None:
        super().__init__(max_pack)
        self.params = params  # hydra/launcher=slurm's options, for submitit

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from mm_repro.sweeps.cluster import submit_packs

        return submit_packs(self, [list(o) for o in job_overrides], initial_job_idx)

    def __call__(self, members: list, singleton_state: dict) -> list:
        """On the cluster node: the pack's jobs (number, overrides), trained as mm_repro.sweeps.packed trains them."""
        from mm_repro.sweeps.cluster import train_pack

        return train_pack(self, members, singleton_state)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Submitit calls this before the time limit: the same pack is submitted again, and its runs resume from
        their checkpoints/last.pt (each wrote it when the stop signal came)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)
