"""What a checkpoint holds (format 2), written and read only through this module: `Identity` (the run's records and
identity, in both files), `LastState` (checkpoints/last.pt: everything a resume needs) and `BestState`
(checkpoints/best.pt: the best epoch's model and its figures). On disk each is a torch.save dict of its fields' names
(records.checkpoint adds the format number and the checksum), so `torch.load(path, weights_only=True)["model"]` opens
it anywhere; files of earlier versions read through `from_dict`, a field they lack at its old meaning."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mm_repro.records.checkpoint import load_checkpoint, save_checkpoint

FORMAT = 2  # records.checkpoint.CHECKPOINT_FORMAT writes it into every file


@dataclass
class Identity:
    """Who the run is and what it has recorded: its id (drawn when it starts, kept through every resume), resolved
    config, data fingerprints, metrics rows so far, the runs it trained packed with, and what rebuilds its model
    without mm_repro's config (`model_spec`: training.run.model_spec)."""

    run_id: str | None = None
    config: dict = field(default_factory=dict)
    data: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    packed_with: list[str] = field(default_factory=list)
    model_spec: dict | None = None

    @classmethod
    def from_dict(cls, state: dict) -> Identity:
        return cls(**{f.name: state[f.name] for f in fields(cls) if state.get(f.name) is not None})


@dataclass
class LastState:
    """checkpoints/last.pt: the model, optimizer and grad-scaler state, each DDP rank's random streams, the epoch and
    (after a mid-epoch stop) the position in it, the real time so far, and the run's identity."""

    model: dict
    optimizer: dict
    scaler: dict
    rng_ranks: list[dict]
    epoch: int
    position: dict | None
    wall_seconds: float
    identity: Identity

    def to_dict(self) -> dict:
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "identity"}
        return {**flat, **vars(self.identity)}

    @classmethod
    def from_dict(cls, state: dict) -> LastState:
        return cls(
            model=state["model"],
            optimizer=state.get("optimizer", {}),
            scaler=state.get("scaler", {}),
            rng_ranks=state["rng_ranks"],
            epoch=state["epoch"],
            position=state.get("position"),
            wall_seconds=state.get("wall_seconds", 0.0),
            identity=Identity.from_dict(state),
        )

    @property
    def step(self) -> int:
        """The step of the epoch it stopped at (0: an epoch's end)."""
        return (self.position or {}).get("step", 0)

    def best(self, epoch: int, test_error: float, run_id: str) -> BestState:
        """best.pt from this checkpoint's model, when its epoch is the best one (a stop between the two writes)."""
        return BestState(self.model, epoch, test_error, Identity(**{**vars(self.identity), "run_id": run_id}))


@dataclass
class BestState:
    """checkpoints/best.pt: the best epoch's model, its epoch and test error, and the run's identity."""

    model: dict
    epoch: int
    test_error: float
    identity: Identity

    def to_dict(self) -> dict:
        return {"model": self.model, "epoch": self.epoch, "test_error": self.test_error, **vars(self.identity)}

    @classmethod
    def from_dict(cls, state: dict) -> BestState:
        return cls(state["model"], state["epoch"], state.get("test_error", float("nan")), Identity.from_dict(state))


def load_last(path: Path) -> LastState:
    """checkpoints/last.pt, checked (records.checkpoint.load_checkpoint: its checksum, what a resume needs)."""
    return LastState.from_dict(load_checkpoint(path))


def load_best(path: Path) -> BestState:
    return BestState.from_dict(load_checkpoint(path, resumable=False))


def write(path: Path, state: LastState | BestState) -> str:
    """The checkpoint written atomically with its checksum (records.checkpoint.save_checkpoint); its checksum."""
    return save_checkpoint(path, state.to_dict())


def host_copy(state: Any) -> Any:
    """What the background writer serialises: a state's dict (its tensors still live: copied to host by the writer)."""
    return state.to_dict() if isinstance(state, LastState | BestState) else state
