"""Bad input to any command is one line on stderr naming the value and what is allowed, exit code 2, no traceback,
and nothing written: every command's schema carries the values it allows (config.rule), checked before anything
runs. In-process through `cli.main`, as the CLI runs it (a subprocess per case would cost seconds each)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mm_repro.cli import main
from tests.conftest import REPO

SYNTHETIC = ["dataset=synthetic", "dataset.train_size=40", "dataset.test_size=20", "model.width=4", "logger=none"]


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """cli(*args) -> (exit code, stderr) of `python -m mm_repro <args>` run in an empty directory, which must stay
    empty."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MM_REPRO_PROGRESS_SECONDS", "3600")

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        err = capsys.readouterr().err
        assert not list(tmp_path.iterdir()), f"{args} left {sorted(p.name for p in tmp_path.iterdir())}"
        return code, err

    return run


@pytest.mark.parametrize(
    "args, message",
    [
        (("evaluate", "run=x", "batch_size=0"), "batch_size=0 must be >= 1"),
        (("evaluate", "run=x", "batch_size=-3"), "batch_size=-3 must be >= 1"),
        (("evaluate", "run=x", "ece_bins=0"), "ece_bins=0 must be >= 1"),
        (("evaluate", "run=x", "device=tpu"), "device='tpu' is not allowed; choose one of auto, cpu, cuda"),
        (("evaluate", "run=x", "fgsm_eps_normalized=[nan]"), "must be a finite number"),
        (("evaluate", "run=x", "fgsm_eps_pixel=[inf]"), "must be a finite number"),
        (("evaluate", "run=x", "fgsm_eps_pixel=[-0.1]"), "fgsm_eps_pixel=[-0.1] (each value) must be > 0"),
        (("evaluate", "run=x", "pgd_steps_pixel=-2"), "pgd_steps_pixel=-2 must be >= 1"),
        (("evaluate", "run=x", "pgd_step_normalized=nan"), "must be a finite number"),
        (("evaluate", "run=x", "knn_k=[0]"), "knn_k=[0] (each value) must be >= 1"),
        (("evaluate", "run=x", "suite=[]"), "suite=[] must list at least one value"),
        (("evaluate", "run=x", "suite=[fgsm,nope]"), "suite='nope' is not allowed"),
        (("spiral", "steps=-5"), "steps=-5 must be >= 1"),
        (("spiral", "alpha=0"), "alpha=0.0 must be >= 2.22507e-308"),
        (("spiral", "seeds=[-1]"), "seeds=[-1] (each value) must be >= 0"),
        (("spiral", "seeds=[0,0]"), "seeds=[0, 0] lists a value twice, which would count one run twice"),
        (("flattening", "seeds=[1,1]"), "seeds=[1, 1] lists a value twice"),
        (("flattening", "lr=-1"), "lr=-1.0 must be > 0"),
        (("flattening", "alpha=nan"), "alpha=nan must be a finite number"),
        (("flattening", "dropout=1.0"), "dropout=1.0 must be < 1"),
        (("flattening", "weight_decay=-1e-4"), "weight_decay=-0.0001 must be >= 0"),
        (("flattening", "study=nope"), "study='nope' is not allowed"),
        (("synthetic", "lr=inf"), "lr=inf must be a finite number"),
        (("synthetic", "seeds=[0,-1]"), "(each value) must be >= 0"),
        (("synthetic", "seeds=[1,1]"), "seeds=[1, 1] lists a value twice"),
        (("synthetic", "task=D"), "task='D' is not allowed"),
        (("bench", "steps=0"), "steps=0 must be >= 1"),
        (("bench", "repeats=0"), "repeats=0 must be >= 1"),
        (("bench", "images=1"), "images=1 must be >= 2"),
        (("bench", "workers=-1"), "workers=-1 must be >= 0"),
        (("train", *SYNTHETIC, "train.lr=1e300"), "train.lr=1e+300 is out of float32's range"),
        (("train", *SYNTHETIC, "train.weight_decay=1e39"), "train.weight_decay=1e+39 is out of float32's range"),
        (("train", *SYNTHETIC, "train.gamma=1e39"), "train.gamma=1e+39 is out of float32's range"),
        (("train", *SYNTHETIC, "dataset.num_classes=0"), "dataset.num_classes=0 must be >= 2"),
        (("train", *SYNTHETIC, "method.layers=[0,0,1]"), "method.layers=[0, 0, 1] lists 0 twice"),
        (("train", *SYNTHETIC, "method.alpha=5e-324"), "method.alpha=5e-324 is below the smallest normal float"),
        (("train", "dataset=mnist", "dataset.num_classes=20", "logger=none"), "but mnist has 10 classes"),
        (("flattening", "alpha=5e-324"), "alpha=5e-324 must be >= 2.22507e-308"),
        (("evaluate", "run=x", "ece_bins=100000000"), "ece_bins=100000000 must be <= 10000"),
        (("bench", "batch_size=500", "images=200"), "batch_size=500 is larger than images=200"),
        (("bench", "dataset=mnist", "model=mlp_section3_2"), "bench times the paper's CIFAR-shaped models"),
        (("bench", "method=cutout"), "bench times erm, mixup, manifold"),
        (("flattening", "dataset_root=nowhere", "download=false"), "MNIST"),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2_for_every_command(cli, args, message):
    code, err = cli(*args)
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (("model.stem_stride=64",), "model.stem_stride=64 is larger than the synthetic images (32 x 32)"),
        (("model=wrn28_2", "model.stem_stride=40"), "model.stem_stride=40 is larger than the synthetic images"),
        (("model=mlp_section3_2",), "model=mlp_section3_2 takes 1 x 28 x 28 images (MNIST's"),
    ],
)
def test_a_model_that_cannot_take_the_data_is_refused_before_a_run_directory_exists(cli, extra, message):
    code, err = cli("train", *SYNTHETIC, "device=cpu", "hydra.run.dir=run", *extra)
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("name", ["ü [1]", "dataset=cifar10,method=erm", "it's (x)"])
def test_any_directory_name_reaches_the_command_as_one_path(tmp_path, monkeypatch, capsys, name):
    # Hydra's grammar would read `=`, brackets, spaces, quotes and non-ASCII letters as syntax; the CLI quotes them
    target = tmp_path / name
    target.mkdir()
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", f"run={target}"]) == 2
    assert f"run={target}: no .hydra/config.yaml there" in capsys.readouterr().err
    assert main(["tables", f"runs={target}", f"out={tmp_path / 'out'}"]) == 2
    assert f"runs={target} holds no run directories" in capsys.readouterr().err


def test_a_missing_launcher_plugin_names_the_extra_that_installs_it():
    # what Hydra raises for hydra/launcher=local when hydra-joblib-launcher is not installed (a wheel without [local])
    from hydra.errors import MissingConfigException

    from mm_repro.console import error_line

    exc = MissingConfigException(
        "In 'hydra/launcher/local': Could not load 'hydra/launcher/joblib'.", "hydra/launcher/joblib"
    )
    assert error_line(exc) == (
        "hydra/launcher=local needs Hydra's hydra-joblib-launcher plugin, which is not installed: "
        'pip install "mm_repro[local]" (or pip install hydra-joblib-launcher)'
    )
    assert error_line(OSError(13, "Permission denied", "/x/y")) == "cannot write /x/y: Permission denied"


def test_wandb_online_without_credentials_is_refused_before_a_run_directory_exists(cli, monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path.parent / "no-netrc"))
    code, err = cli("train", *SYNTHETIC[:-1], "logger=wandb", "logger.mode=online", "hydra.run.dir=run", "device=cpu")
    assert code == 2 and "logger.mode=online needs W&B credentials for api.wandb.ai" in err and err.count("\n") == 1


CLOSED_PIPE = [  # every command (a process each: ~6 s): one in the default run, the rest with the slow tests
    ("tables", "--help"),
    *[
        pytest.param((c, "--help"), marks=pytest.mark.slow)
        for c in ("train", "evaluate", "plan", "spiral", "flattening", "synthetic", "bench", "verdicts")
    ],
    pytest.param(("tables", "runs=tests/data", "out=OUT"), marks=pytest.mark.slow),  # a command printing its work
]


@pytest.mark.parametrize("args", CLOSED_PIPE)
def test_every_command_ends_quietly_when_the_reader_closes_its_output(tmp_path, args):
    # as `python -m mm_repro tables --help | head -1`, with the pipe closed before anything is written
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mm_repro", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode in (0, 141), err


OUT_COMMANDS = [
    ("flattening", "download=false"),
    ("synthetic", "steps=1"),
    ("spiral", "steps=1"),
    ("tables", "runs=RUNS"),
    ("bench", "steps=1"),
]


@pytest.mark.parametrize("args", OUT_COMMANDS)
@pytest.mark.parametrize("place", ["a file", "a link to nowhere"])
def test_an_out_that_cannot_be_a_directory_is_one_line_for_every_command(tmp_path, monkeypatch, capsys, args, place):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "metrics.jsonl").write_text("")
    out = tmp_path / "out"
    if place == "a file":
        out.write_text("mine")
    else:
        out.symlink_to(tmp_path / "missing" / "dir")
    args = [a.replace("RUNS", str(tmp_path / "runs")) for a in args]
    code = main([*args, f"out={out}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    if place == "a file":
        assert f"out={out} is a file" in err and out.read_text() == "mine"
    else:
        assert "is a symbolic link to" in err and "which does not exist" in err and not (tmp_path / "missing").exists()


def test_a_run_directory_that_is_a_link_to_nowhere_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").symlink_to(tmp_path / "gone")
    code = main(["train", *SYNTHETIC, "train.epochs=1", "device=cpu", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{tmp_path / 'run'} is a symbolic link to {tmp_path / 'gone'}, which does not exist" in err


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch):
    import errno
    import os

    from mm_repro.console import one_line
    from mm_repro.files import atomic_write

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "result.json", b"{}")
    assert one_line(info.value) == f"cannot write {tmp_path / 'result.json'}: No space left on device"
    assert not list(tmp_path.iterdir())  # nothing half-written left


def test_a_key_of_the_schema_is_never_answered_with_itself():
    from mm_repro.commands import unknown_key_message

    message = unknown_key_message("train", "dataset.classes")
    assert "did you mean" not in message and "+dataset.classes=" in message
    assert "did you mean dataset.classes" in unknown_key_message("train", "dataset.clases")
