"""A run's records: its files (`layout`: names, archive, failure), the lock (`lock`), the checkpoint format and its
background writer (`checkpoint`), what a checkpoint holds (`state`: its schema, written and read only there),
result.json written and read (`result`), when a run is at chance (`chance`), where a figure came from
(`provenance`), and, for the readers, the scan of run directories by outcome (`scan`) and experiment tracking
(`tracking`). Everything here is written atomically (mm_repro.files); nothing here trains."""

from mm_repro.files import atomic_write, read_json, write_json
from mm_repro.records.checkpoint import checkpoint_digest, load_checkpoint, save_checkpoint
from mm_repro.records.layout import (
    ARCHIVED,
    BEST_CHECKPOINT,
    CHECKPOINT,
    EVAL,
    FAILURE,
    LOCK,
    METRICS,
    RESULT,
    TRAIN_LOG,
    archive,
    holds_a_run,
    remove_stale_temporaries,
    write_failure,
    write_metrics,
)
from mm_repro.records.lock import RunLock
from mm_repro.records.result import (
    check_metrics,
    check_result,
    flatten,
    git_commit,
    is_free,
    make_result,
    run_info,
    setup_of,
)
from mm_repro.records.state import BestState, Identity, LastState, load_best, load_last

__all__ = [
    "ARCHIVED",
    "BestState",
    "Identity",
    "LastState",
    "load_best",
    "load_last",
    "BEST_CHECKPOINT",
    "CHECKPOINT",
    "EVAL",
    "FAILURE",
    "LOCK",
    "METRICS",
    "RESULT",
    "TRAIN_LOG",
    "RunLock",
    "archive",
    "atomic_write",
    "check_metrics",
    "check_result",
    "checkpoint_digest",
    "flatten",
    "git_commit",
    "holds_a_run",
    "is_free",
    "load_checkpoint",
    "make_result",
    "read_json",
    "remove_stale_temporaries",
    "run_info",
    "save_checkpoint",
    "setup_of",
    "write_failure",
    "write_json",
    "write_metrics",
]
