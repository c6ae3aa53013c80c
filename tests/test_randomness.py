"""Every random draw of a run is the run's own: dropout and input noise come from its seeded noise stream
(training.randomness.RunRandom.sampling), saved in its checkpoint and restored on a resume, so a run reruns to its
numbers whatever else the process drew, alone, packed and through a stop. The global generator is reseeded
differently before each twin; a run that drew from it would differ (and would leave it moved)."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from mm_repro import records
from mm_repro.errors import Preempted
from mm_repro.training import loop as train_module
from mm_repro.training.randomness import RunRandom
from tests.conftest import popen_cli, run_cli, tiny_job, wait_for, write_mnist

TIMING = {"seconds", "train_images_per_second", "wall_seconds"}


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    return write_mnist(tmp_path_factory.mktemp("mnist"), n_train=200, n_test=50)


def _mnist(root, *extra: str) -> list[str]:
    return ["dataset=mnist", f"dataset.root={root}", "dataset.download=false", "model=mlp_section3_2",
            "model.width=16", *extra]  # fmt: skip


FAMILIES = {  # a dropout run of each model family: PreAct (before the last linear layer), the MNIST nets (each layer)
    "preact": lambda root: ["model.dropout=0.5", "method=manifold"],
    "mlp": lambda root: _mnist(root, "model.dropout=0.5", "method=manifold", "train.optimizer=adam", "train.lr=1e-3"),
}


def _rows(run_dir) -> list[dict]:
    lines = (run_dir / records.METRICS).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _weights(run_dir) -> dict:
    return records.load_checkpoint(run_dir / records.CHECKPOINT)["model"]


def _same_run(a, b) -> None:
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa), [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert _rows(a) == _rows(b)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_dropout_run_reruns_bitwise_whatever_the_global_generator_holds(tmp_path, mnist_root, family):
    extra = FAMILIES[family](mnist_root)
    for name, global_seed in (("a", 1), ("b", 12345)):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        (outcome,) = train_module.train_jobs([tiny_job(tmp_path / name, *extra)])
        assert isinstance(outcome, dict), outcome
        assert torch.equal(torch.get_rng_state(), before)  # the run drew nothing from the global generator
    _same_run(tmp_path / "a", tmp_path / "b")
    # and dropout is on: the same run without it ends elsewhere
    train_module.train_jobs([tiny_job(tmp_path / "none", *extra, "model.dropout=0.0")])
    assert any(not torch.equal(v, _weights(tmp_path / "none")[k]) for k, v in _weights(tmp_path / "a").items())


def test_a_packed_sweep_draws_nothing_from_the_global_generator(tmp_path):
    pack = [("seed=0", "method=erm"), ("seed=1", "method=manifold"), ("seed=2", "method=mixup")]
    for name, global_seed in (("a", 3), ("b", 4)):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        outcomes = train_module.train_jobs([tiny_job(tmp_path / name / str(i), *o) for i, o in enumerate(pack)])
        assert all(isinstance(o, dict) for o in outcomes)
        assert torch.equal(torch.get_rng_state(), before)
    for i in range(len(pack)):
        _same_run(tmp_path / "a" / str(i), tmp_path / "b" / str(i))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("stop", [3, 5])  # preact: 5 steps an epoch (mid-epoch, the epoch's end); mlp: 10
def test_a_dropout_run_stopped_and_resumed_ends_where_the_unbroken_run_ends(
    tmp_path, mnist_root, stop_after, monkeypatch, family, stop
):
    extra = FAMILIES[family](mnist_root)
    torch.manual_seed(7)
    train_module.train_jobs([tiny_job(tmp_path / "unbroken", *extra)])
    stop_after(stop)
    with pytest.raises(Preempted):
        train_module.train_jobs([tiny_job(tmp_path / "broken", *extra)])
    monkeypatch.undo()
    saved = records.load_checkpoint(tmp_path / "broken" / records.CHECKPOINT)
    assert "noise" in saved["rng_ranks"][0]
    torch.manual_seed(99)  # another process would hold another global state
    train_module.train_jobs([tiny_job(tmp_path / "broken", *extra)])
    _same_run(tmp_path / "unbroken", tmp_path / "broken")


def test_the_noise_stream_is_its_own_and_an_old_checkpoint_without_it_still_resumes():
    rng = RunRandom(0, torch.device("cpu"))
    order = torch.randperm(10, generator=rng.torch)
    with rng.sampling():
        mask = torch.rand(10)
    assert not torch.equal(torch.argsort(mask), order)  # not the data-order stream's numbers
    state = rng.state()
    with rng.sampling():
        after = torch.rand(5)
    again = RunRandom(0, torch.device("cpu"))
    again.load_state(state, "ckpt")
    with again.sampling():
        assert torch.equal(torch.rand(5), after)  # restored where it stopped
    old = {k: v for k, v in state.items() if k != "noise"}  # a checkpoint of mm_repro <= 0.2.0
    third = RunRandom(0, torch.device("cpu"))
    third.load_state(old, "ckpt")
    assert not third.noise_restored


def _dropout_args(root, run_dir) -> list[str]:
    return ["train", *_mnist(root, "model.dropout=0.5", "train.optimizer=adam", "train.lr=1e-3"), "train.epochs=3",
            "train.batch_size=2", "train.eval_batch_size=50", "train.checkpoint_seconds=0", "logger=none",
            "deterministic=true", f"hydra.run.dir={run_dir}"]  # fmt: skip


@pytest.mark.slow  # three CLI processes
@pytest.mark.parametrize("how", ["SIGTERM mid-epoch", "SIGKILL after a checkpoint"])
def test_a_dropout_run_in_two_processes_and_through_a_kill_is_the_same_run(tmp_path, mnist_root, how):
    # batch 2 over 200 images: 100 steps an epoch; the signal lands in epoch 2
    twins = [tmp_path / "one", tmp_path / "two"]
    for run_dir in twins:
        assert run_cli(*_dropout_args(mnist_root, run_dir), cwd=tmp_path).returncode == 0
    _same_run(*twins)
    broken = tmp_path / "broken"
    proc = popen_cli(_dropout_args(mnist_root, broken), tmp_path)
    wait_for(lambda: (broken / records.METRICS).exists() and (broken / records.CHECKPOINT).exists(), proc, "epoch 1")
    proc.send_signal(signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode == (75 if how.startswith("SIGTERM") else -signal.SIGKILL)
    assert not (broken / records.RESULT).exists()
    resumed = run_cli(*_dropout_args(mnist_root, broken), cwd=tmp_path)
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr
    _same_run(twins[0], broken)
