"""A run's model comes through one door (evaluation.loading.finished_run: evaluate, the API, flattening), which
refuses anything that is not the finished run's own model; and no file is ever unpickled into code: checkpoints load
with weights_only (a file without its checksum is damaged, not old) and CIFAR's pickle batches build arrays only."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import struct
from pathlib import Path

import pytest
import torch

from mm_repro import api, records
from mm_repro.errors import UserError
from mm_repro.records.checkpoint import COMMENT, EOCD, UNCHECKED_ENV
from mm_repro.training import loop as train_module
from tests.conftest import tiny_job, write_cifar


class Payload:
    """What an attacker's pickle holds: unpickling it calls os.system, which would write `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Two finished runs of one config, seeds 0 and 1 (their checkpoints are interchangeable in shape)."""
    root = tmp_path_factory.mktemp("runs")
    dirs = (root / "seed0", root / "seed1")
    for seed, run_dir in enumerate(dirs):
        (outcome,) = train_module.train_jobs([tiny_job(run_dir, f"seed={seed}", "method=erm")])
        assert isinstance(outcome, dict)
    return dirs


def _copy(run_dir: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / name))


def _with_comment(data: bytes) -> bytes:
    """A torch.save zip made to look like mm_repro's format 2: the right checksum in its comment."""
    end = data.rfind(EOCD) + 20
    comment = COMMENT + hashlib.sha256(data[:end]).hexdigest().encode()
    return data[:end] + struct.pack("<H", len(comment)) + comment


@pytest.mark.parametrize(
    "form", ["a bare pickle", "a torch.save zip with a valid checksum", "format 1 with a valid header"]
)
def test_a_checkpoint_that_would_run_code_is_refused_and_never_runs(tmp_path, two_runs, form):
    marker = tmp_path / "ran"
    state = {"model": Payload(marker), "epoch": 1}
    if form == "a bare pickle":
        data = pickle.dumps(state)
    else:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        if form.startswith("a torch.save zip"):
            data = _with_comment(data)
        else:
            data = b"mm_repro-checkpoint " + hashlib.sha256(data).hexdigest().encode() + b"\n" + data
    run_dir = _copy(two_runs[0], tmp_path)
    (run_dir / records.BEST_CHECKPOINT).write_bytes(data)
    with pytest.raises(UserError):
        records.load_checkpoint(run_dir / records.BEST_CHECKPOINT, resumable=False)
    with pytest.raises(UserError):
        api.load_model(run_dir, checkpoint="best")
    os.environ[UNCHECKED_ENV] = "1"  # not even behind the opt-in for unchecked files
    try:
        with pytest.raises(UserError):
            records.load_checkpoint(run_dir / records.BEST_CHECKPOINT, resumable=False)
    finally:
        del os.environ[UNCHECKED_ENV]
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["comment removed", "a letter of the comment changed", "a letter of the digest"])
def test_a_checkpoint_without_its_checksum_is_damaged_not_old(tmp_path, two_runs, damage):
    run_dir = _copy(two_runs[0], tmp_path)
    path = run_dir / records.CHECKPOINT
    data = path.read_bytes()
    at = data.rfind(COMMENT)
    if damage == "comment removed":
        data = data[: at - 2] + b"\x00\x00"
    elif damage.startswith("a letter of the comment"):
        data = data[:at] + b"M" + data[at + 1 :]
    else:
        data = data[:-1] + (b"0" if data[-1:] != b"0" else b"1")
    path.write_bytes(data)
    before = path.read_bytes()
    with pytest.raises(UserError, match="checkpoint .* (is damaged|holds no mm_repro checksum)"):
        records.load_checkpoint(path)
    with pytest.raises(UserError):
        api.load_model(run_dir)
    (run_dir / records.RESULT).unlink()  # a stopped run: its resume must refuse the file, and leave it as it was
    with pytest.raises(UserError):
        train_module.train_jobs([tiny_job(run_dir, "seed=0", "method=erm", "train.epochs=3")])
    assert path.read_bytes() == before


def test_a_checkpoint_from_before_checksums_loads_only_behind_the_opt_in(monkeypatch):
    old = Path(__file__).parent / "data" / "run_before_issue_18" / "checkpoints" / "last.pt"
    with pytest.raises(UserError, match=f"{UNCHECKED_ENV}=1 loads"):
        records.load_checkpoint(old)
    monkeypatch.setenv(UNCHECKED_ENV, "1")
    assert records.load_checkpoint(old)["position"]["step"] == 18  # tensors and numpy arrays, nothing else


def test_another_runs_last_pt_is_never_used_as_this_runs_model(tmp_path, two_runs):
    run_dir = _copy(two_runs[0], tmp_path)
    shutil.copy(two_runs[1] / records.CHECKPOINT, run_dir / records.CHECKPOINT)
    with pytest.raises(UserError, match="result.json belongs to checkpoint"):
        api.load_model(run_dir)
    from mm_repro.experiments.flattening import Net, measure

    with pytest.raises(UserError, match="result.json belongs to checkpoint"):
        measure(run_dir, Net("preactresnet18", 1, "baseline"), None)


def test_another_runs_best_pt_is_refused_even_for_a_result_of_an_older_version(tmp_path, two_runs):
    run_dir = _copy(two_runs[0], tmp_path)
    result = json.loads((run_dir / records.RESULT).read_text())
    del result["best_checkpoint"]  # as an older version wrote it
    (run_dir / records.RESULT).write_text(json.dumps(result))
    shutil.copy(two_runs[1] / records.BEST_CHECKPOINT, run_dir / records.BEST_CHECKPOINT)
    with pytest.raises(UserError, match="best.pt belongs to another run"):
        api.load_model(run_dir, checkpoint="best")
    model, _ = api.load_model(two_runs[0], checkpoint="best")  # the run's own best.pt still loads
    own = records.load_checkpoint(two_runs[0] / records.BEST_CHECKPOINT, resumable=False)["model"]
    assert all(torch.equal(v, own[k]) for k, v in model.net.state_dict().items())


def test_a_run_still_training_or_stopped_gives_no_model(tmp_path, two_runs):
    stopped = _copy(two_runs[0], tmp_path, "stopped")
    (stopped / records.RESULT).unlink()
    with pytest.raises(UserError, match="has not finished \\(it was stopped"):
        api.load_model(stopped)
    running = _copy(two_runs[0], tmp_path, "running")
    lock = records.RunLock(running)
    lock.acquire()
    lock.sign()
    try:
        with pytest.raises(UserError, match="is still training"):
            api.load_model(running)
    finally:
        lock.release()
    gone = _copy(two_runs[0], tmp_path, "gone")
    (gone / records.CHECKPOINT).unlink()
    (gone / records.CHECKPOINT).mkdir()
    with pytest.raises(UserError, match="checkpoints/last.pt is a directory \\(result.json is there\\)"):
        api.load_model(gone)


def test_a_cifar_batch_that_would_run_code_is_malformed_and_never_runs(tmp_path):
    from mm_repro.data.datasets import _read_cifar_file

    root = write_cifar(tmp_path / "data", "cifar10")
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    marker = tmp_path / "ran"
    batch.write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0]}, protocol=2))
    with pytest.raises(UserError, match="malformed .*asks for posix.system"):
        _read_cifar_file(batch, "labels")
    assert not marker.exists()
