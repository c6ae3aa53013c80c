"""The commands, each one object (`Command`): its name, a one-line summary, the schema of its config, what it runs
and prints. `python -m mm_repro` lists them from here; `<command> --help` lists every key of the schema with the
comment of its line in conf/<command>.yaml; a misspelt key is answered with the nearest keys; cli dispatches here.

A command's module (and with it torch and the training stack) is imported only when the command runs, so that
`--help` and a refused override answer at once."""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mm_repro import config


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    schema: type
    run: Callable[[Any], None]  # the Hydra job: the composed config in, lines printed, records written
    closing: Callable[[], None] | None = None  # after a multirun's last job (train: the sweep's summary)


def _train(cfg: Any) -> None:
    from mm_repro.commands import train

    train.run(cfg)


def _train_closing() -> None:
    from mm_repro.commands import train

    train.closing()


def _tables(cfg: Any) -> None:
    from mm_repro.commands import tables

    tables.run(cfg)


def _evaluate(cfg: Any) -> None:
    from mm_repro.commands import evaluate

    evaluate.run(cfg)


def _bench(cfg: Any) -> None:
    from mm_repro.commands import bench

    bench.run(cfg)


def _experiment(name: str) -> Callable[[Any], None]:
    def run(cfg: Any) -> None:
        from mm_repro.commands import standalone

        getattr(standalone, name)(cfg)

    return run


def _verdicts(cfg: Any) -> None:
    from mm_repro.commands import verdicts

    verdicts.run(cfg)


def _plan(cfg: Any) -> None:
    """Never called: plan's sweeper (hydra_plugins.mm_repro_launchers.plan_sweeper) launches no job."""


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("train", "train a model (ERM, input mixup or manifold mixup); -m for sweeps", config.TrainRunConfig,
                _train, _train_closing),
        Command("tables", "regenerate the paper's tables from run records: runs=DIR out=DIR", config.TablesConfig,
                _tables),
        Command("evaluate", "FGSM, PGD, k-NN, novel deformations, calibration and flattening of a trained run: "
                "run=DIR", config.EvalConfig, _evaluate),
        Command("spiral", "the paper's Figure 1: 2-D spirals, ERM against manifold mixup at a 2-D bottleneck: out=DIR",
                config.SpiralConfig, _experiment("spiral")),
        Command("plan", "a train sweep's jobs, packs and estimated GPU-hours (from bench figures), without training: "
                "bench=DIR", config.TrainRunConfig, _plan),
        Command("bench", "time our training step and epoch against the official pipeline: device=cpu|cuda out=DIR",
                config.BenchConfig, _bench),
        Command("flattening", "the paper's MNIST flattening studies: study=section3_2|figure5|appendix_g out=DIR",
                config.StudyConfig, _experiment("flattening")),
        Command("synthetic", "Table 8 and Figure 4: mixing in the true generative factors: task=A|B|C out=DIR",
                config.SyntheticConfig, _experiment("synthetic")),
        Command("verdicts", "judge every committed result again by today's rule and write the pages from the JSONs",
                config.VerdictsConfig, _verdicts),
    )
}  # fmt: skip

USAGE = "usage: python -m mm_repro <command> [hydra overrides]\n\ncommands:\n" + "".join(
    f"  {c.name:<10} {c.summary}\n" for c in COMMANDS.values()
)


def command_keys(command: str) -> list[str]:
    """Every key a command's config takes, from its schema (the keys `--help` lists)."""
    if command == "plan":  # train's keys, and where the bench figures are
        return ["bench", *command_keys("train")]

    def leaves(schema: type, prefix: str = "") -> list[str]:
        out = []
        for f in dataclasses.fields(schema):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            is_schema = dataclasses.is_dataclass(default)
            out += leaves(type(default), f"{prefix}{f.name}.") if is_schema else [f"{prefix}{f.name}"]
        return out

    return leaves(COMMANDS[command].schema)


def command_help(command: str) -> str:
    """`python -m mm_repro <command> --help` for the commands besides train: every key of the command's schema with
    its default and the comment of its line in conf/<command>.yaml (one source: the file the command composes)."""
    described = {}
    for line in (config.CONF_DIR / f"{command}.yaml").read_text().splitlines():
        match = re.match(r"^([a-z_]+):\s*(.*?)\s*#\s*(.*)$", line)
        if match:
            described[match.group(1)] = f"{match.group(3)} (default {match.group(2)})"
    groups = {"logger": "W&B logging: logger=wandb (offline unless logger.mode=online), as `train --help` says"}
    groups.update(dict.fromkeys(("dataset", "model", "method", "protocol"), "as in `train --help` (its group sets it)"))
    lines = [f"python -m mm_repro {command} [key=value ...]: {COMMANDS[command].summary}", "", "== Keys (key=value) =="]
    if command == "plan":
        lines.append("  every key of `train` (python -m mm_repro train --help) and its hydra/launcher choice, and")
    for key in command_keys(command) if command != "plan" else ["bench"]:
        text = described.get(key) or groups.get(key.split(".")[0], "")
        lines.append(f"  {key:<28} {text}")
    lines += ["", "docs/using.md describes each command; --cfg job shows the composed config."]
    return "\n".join(lines)


def unknown_key_message(command: str, key: str) -> str:
    """One line for a misspelt key: the nearest valid keys (difflib), and where every key is listed."""
    keys = command_keys(command)
    if key in keys:  # a key of the schema that the composed config does not hold: Hydra cannot override it
        return (
            f"{key} is a key of `{command}`, but the config chosen for it does not set it, so it cannot be overridden "
            f"as it is; add it with +{key}=VALUE (python -m mm_repro {command} --help lists every key)"
        )
    near = [k for k in difflib.get_close_matches(key, keys, n=4, cutoff=0.6) if k != key][:3]
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return f"{key} is not a key of `{command}`{hint} (python -m mm_repro {command} --help lists every key)"
