"""`hydra/launcher=packed_slurm`: a packed sweep on a SLURM cluster, each pack one cluster job (submitit).

On the machine that launches the sweep, every job is composed and checked (a refused config fails there, at once, in
one line, as under `hydra/launcher=packed`; a run already complete says so there, with no cluster job), and the rest
are grouped by mm_repro.sweeps.packed's key into packs of at most `max_pack`; each pack is submitted as one SLURM job
with the options of `hydra/launcher=slurm`. On its node the pack's jobs are grouped again, there capped by what fits
in that node's GPU memory, and trained as the packed launcher trains them; a pack of one trains alone through Hydra's
`run_job`, as under `hydra/launcher=slurm`. (SIGUSR2 before the time limit: mm_repro.training.signals.StopSignals.)

Requeue-safe: a job requeued by a preemption or `scontrol requeue` is stopped by SIGTERM (every run of the pack writes
its checkpoints/last.pt at the same step and the process exits 75); at its time limit, SLURM's SIGUSR2 stops it the
same way, then submitit requeues it; the requeued job runs the same pack again, its runs resume from
that step together and end bitwise where an unbroken pack ends. Each run keeps its own records. A run that fails
(diverged, crashed) is named at the sweep's end by the failure notes of mm_repro.sweeps.jobs, which reach the launching
process through the sweep directory; a whole cluster job that dies (killed, out of memory) names each of its runs, with
the job's log.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals
from omegaconf import OmegaConf

from mm_repro.errors import RunFailed, UserError
from mm_repro.sweeps.jobs import share_threads
from mm_repro.sweeps.packed import PackedLaunch
from mm_repro.training.ownership import completed

log = logging.getLogger("mm_repro.packed")

_EXECUTOR_KEYS = ("submitit_folder", "max_num_timeout")  # options of submitit's executor, not of the job


def _executor(params: dict) -> Any:
    """A submitit SLURM executor with `hydra/launcher=slurm`'s options, passed as Hydra's submitit launcher does."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    executor = submitit.AutoExecutor(
        cluster="slurm", folder=params["submitit_folder"], slurm_max_num_timeout=params["max_num_timeout"]
    )
    shared = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{k if k in shared else f"slurm_{k}": v for k, v in params.items() if k not in _EXECUTOR_KEYS}
    )
    return executor


def _launch(launcher: Any) -> PackedLaunch:
    return PackedLaunch(launcher.config, launcher.hydra_context, launcher.task_function, launcher.max_pack)


def _settled(job: Any) -> bool:
    """A run that is complete with this config, or whose result refuses this config: said here, at once."""
    try:
        return completed(job) is not None
    except UserError:
        return True


def submit_packs(launcher: Any, job_overrides: list[list[str]], initial_job_idx: int) -> list[JobReturn]:
    """On the launching machine: check and group the sweep's jobs, submit one SLURM job per pack, wait for all."""
    launch = _launch(launcher)
    numbered = [(initial_job_idx + i, overrides) for i, overrides in enumerate(job_overrides)]
    configs, jobs, returns = launch.prepare(numbered)
    for num in [n for n in jobs if _settled(jobs[n])]:  # no cluster job to say "complete" or refuse a start
        returns[num] = launch.alone(configs[num])
        del jobs[num]
    packs = launch.packs(jobs, fits=lambda job: sys.maxsize)  # the node caps by its own GPU memory
    if not packs:
        return [returns[num] for num, _ in numbered]
    overrides = dict(numbered)
    log.info(f"SLURM sweep output dir: {launcher.config.hydra.sweep.dir}")
    for pack in packs:
        log.info(f"\tone SLURM job: {', '.join(f'#{n}' for n in pack)}")
    submitted = _submit(launcher, [[(n, overrides[n]) for n in pack] for pack in packs])
    for i, (pack, cluster_job) in enumerate(zip(packs, submitted, strict=True)):
        try:
            returns.update(zip(pack, wait_for_job(cluster_job), strict=True))
        except KeyboardInterrupt:  # the launching process stopped (Ctrl-C, SIGTERM): the cluster jobs go on
            ids = " ".join(str(j.job_id) for j in submitted[i:])
            log.info(f"stopped waiting; SLURM job(s) {ids} keep running (scancel {ids} stops them); rerun the sweep")
            raise
        except Exception as exc:  # the cluster job itself died: each of its runs is named, with the job's log
            last = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
            failed = RunFailed(
                f"its SLURM job {cluster_job.job_id} never ran ({last[0].strip()})"
                if isinstance(exc, NeverRuns)
                else f"its SLURM job {cluster_job.job_id} failed ({last[0].strip()}); log: {cluster_job.paths.stderr}; "
                "rerun the sweep to resume its runs from their checkpoints"
            )
            returns.update({n: launch.report(n, configs[n], jobs[n], failed) for n in pack})
    return [returns[num] for num, _ in numbered]


def _submit(launcher: Any, packs: list[list[tuple[int, list[str]]]]) -> list[Any]:
    """One SLURM job per pack (submitit's map_array). A submission SLURM refuses (an unknown partition, a GPU asked of
    a cluster without GPUs, more memory than a node has) is one line with sbatch's reason, and the submission files
    it left in the submitit folder are removed."""
    from submitit.core.utils import FailedJobError

    folder = Path(str(launcher.params["submitit_folder"]))
    folder = folder.parent if "%" in folder.name else folder  # .submitit/%j: submitit submits from its parent
    before = set(folder.iterdir()) if folder.is_dir() else None
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's errors; they are in our line
            return _executor(launcher.params).map_array(launcher, packs, [Singleton.get_state()] * len(packs))
    except (FailedJobError, subprocess.SubprocessError, OSError) as exc:
        if before is None:
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.is_dir():
            for left in set(folder.iterdir()) - before:
                shutil.rmtree(left, ignore_errors=True) if left.is_dir() else left.unlink(missing_ok=True)
        said = [line.strip() for line in str(exc).splitlines() if line.strip().startswith("sbatch: error")]
        reason = "; ".join(said) or one_line_of(exc)
        raise UserError(
            f"SLURM refused the sweep's jobs ({reason}); check the hydra.launcher options (partition, gpus_per_node, "
            "cpus_per_task, mem_gb) against `sinfo`"
        ) from None


def one_line_of(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


ENDED = ("CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE")  # SLURM's ends


# Why a job can stay PENDING for ever: the partition's configuration can never give what it asks (more CPUs per task
# than a node has, more nodes than the partition, a time limit above the partition's).
NEVER = ("PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "BadConstraints", "InvalidQOS")


class NeverRuns(RunFailed):
    """A cluster job SLURM can never start (it was cancelled)."""


def slurm_job(job_id: str) -> tuple[str | None, str]:
    """(state, reason) as `scontrol` reports them; state None once SLURM no longer knows the job, "UNKNOWN" if
    unreadable."""
    try:
        shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "UNKNOWN", ""
    found = re.search(r"JobState=(\S+)", shown.stdout)
    reason = re.search(r"Reason=(\S+)", shown.stdout)
    if not found:
        return (None if "Invalid job id" in shown.stderr else "UNKNOWN"), ""
    return found.group(1), reason.group(1) if reason else ""


def wait_for_job(cluster_job: Any, poll: float = 2.0, grace: float = 30.0) -> Any:
    """The pack job's return. Submitit learns that a job ended from `sacct`; where SLURM keeps no accounting (small
    clusters; the one-node test cluster) it never learns that a job was cancelled or killed, and would wait forever.
    So the wait also reads scontrol's state: a job that ended (or left the queue) without writing its result for
    `grace` seconds (time for the file to reach a shared file system) ends the wait as failed. A requeued job is
    PENDING again, not ended."""
    ended_at = never_at = None
    while not cluster_job.done():
        state, reason = slurm_job(str(cluster_job.job_id))
        if state == "PENDING" and reason in NEVER:  # it would wait for ever: cancelled, and said, after the grace
            never_at = never_at or time.monotonic()
            if time.monotonic() - never_at > grace:
                subprocess.run(["scancel", str(cluster_job.job_id)], capture_output=True, timeout=30)
                raise NeverRuns(
                    f"it stayed PENDING ({reason}): the partition can never give what it asks; cancelled. Lower "
                    "hydra.launcher.cpus_per_task, nodes or timeout_min to what `sinfo` shows"
                )
        else:
            never_at = None
        if state is None or state in ENDED:
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at > grace:
                raise RunFailed(f"it ended {state or 'and left the queue'} without a result")
        else:
            ended_at = None
        time.sleep(poll)
    return cluster_job.results()[0]


def train_pack(launcher: Any, members: list[tuple[int, list[str]]], singleton_state: dict) -> list[JobReturn]:
    """On the cluster node: the pack's jobs composed again, grouped by this node's memory and trained."""
    Singleton.set_state(singleton_state)
    setup_globals()
    launch = _launch(launcher)
    share_threads(launcher.config.hydra)
    configs, jobs, returns = launch.prepare([(num, list(overrides)) for num, overrides in members])
    returns.update(launch.train(configs, jobs))
    return [returns[num] for num, _ in members]
