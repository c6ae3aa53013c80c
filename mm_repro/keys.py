"""What each command takes: the keys of its schema (`command_keys`), its `--help` (each key with the comment of its
line in conf/<command>.yaml), and the one line a misspelt key gets (the nearest valid keys, by difflib)."""

from __future__ import annotations


def command_keys(command: str) -> list[str]:
    """Every key a command's config takes, from its schema (the keys `--help` lists)."""
    import dataclasses
    import importlib

    if command == "plan":  # train's keys, and where the bench figures are
        return ["bench", *command_keys("train")]
    module, name = {
        "train": ("mm_repro.config", "TrainRunConfig"),
        "tables": ("mm_repro.config", "TablesConfig"),
        "evaluate": ("mm_repro.config", "EvalConfig"),
        "spiral": ("mm_repro.config", "SpiralConfig"),
        "flattening": ("mm_repro.config", "StudyConfig"),
        "synthetic": ("mm_repro.config", "SyntheticConfig"),
        "bench": ("mm_repro.config", "BenchConfig"),
    }[command]

    def leaves(schema: type, prefix: str = "") -> list[str]:
        out = []
        for f in dataclasses.fields(schema):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            is_schema = dataclasses.is_dataclass(default)
            out += leaves(type(default), f"{prefix}{f.name}.") if is_schema else [f"{prefix}{f.name}"]
        return out

    return leaves(getattr(importlib.import_module(module), name))


def command_help(command: str) -> str:
    """`python -m mm_repro <command> --help` for the commands besides train: every key of the command's schema with
    its default and the comment of its line in conf/<command>.yaml (one source: the file the command composes)."""
    import re

    from mm_repro.config import CONF_DIR

    described = {}
    for line in (CONF_DIR / f"{command}.yaml").read_text().splitlines():
        match = re.match(r"^([a-z_]+):\s*(.*?)\s*#\s*(.*)$", line)
        if match:
            described[match.group(1)] = f"{match.group(3)} (default {match.group(2)})"
    groups = {"logger": "W&B logging: logger=wandb (offline unless logger.mode=online), as `train --help` says"}
    groups.update(dict.fromkeys(("dataset", "model", "method", "protocol"), "as in `train --help` (its group sets it)"))
    from mm_repro.cli import COMMANDS

    lines = [f"python -m mm_repro {command} [key=value ...]: {COMMANDS[command]}", "", "== Keys (key=value) =="]
    if command == "plan":
        lines.append("  every key of `train` (python -m mm_repro train --help) and its hydra/launcher choice, and")
    for key in command_keys(command) if command != "plan" else ["bench"]:
        text = described.get(key) or groups.get(key.split(".")[0], "")
        lines.append(f"  {key:<28} {text}")
    lines += ["", "README.md describes each command; --cfg job shows the composed config."]
    return "\n".join(lines)


def unknown_key_message(command: str, key: str) -> str:
    """One line for a misspelt key: the nearest valid keys (difflib), and where every key is listed."""
    import difflib

    keys = command_keys(command)
    near = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return f"{key} is not a key of `{command}`{hint} (python -m mm_repro {command} --help lists every key)"
