"""`python -m mm_repro evaluate run=DIR`: the evaluations of one finished run (evaluation.evaluate), a line per
figure printed, and where they were written."""

from __future__ import annotations

from typing import Any

from mm_repro.config import EvalConfig, to_schema
from mm_repro.errors import UserError
from mm_repro.evaluation.evaluate import evaluate_run


def run(cfg: Any) -> None:
    if cfg.get("run") is None:
        raise UserError("evaluate needs run=DIR, a training run directory (with .hydra/ and checkpoints/)")
    out = evaluate_run(to_schema(cfg, EvalConfig))
    print(summary(out))
    print(f"written: {out['written']}")


def summary(out: dict) -> str:
    """The printed lines: clean accuracy, then one line per figure of each evaluation."""
    lines = [
        f"{out['run']} (epoch {out['checkpoint_epoch']}, {out['test_images']} test images)",
        f"  clean accuracy {out['clean']['accuracy']:.2f} %",
    ]
    for name, v in out.get("fgsm", {}).items():
        lines.append(f"  FGSM {name:<24} {v['accuracy']:6.2f} %")
    for name, v in out.get("pgd", {}).items():
        lines.append(f"  PGD {name:<40} {v['accuracy']:6.2f} %")
    for name, v in out.get("knn", {}).items():
        if name.startswith("k") and name[1:].isdigit():
            lines.append(f"  k-NN error, {name[1:]:>3} neighbours        {v['error']:6.2f} %")
    for name, v in out.get("deformations", {}).items():
        lines.append(f"  {name:<29} {v['accuracy']:6.2f} %")
    if "calibration" in out:
        lines.append(f"  ECE ({out['calibration']['bins']} bins)              {100 * out['calibration']['ece']:6.2f} %")
    for k, v in out.get("flattening", {}).items():
        if k.startswith("k"):
            lines.append(f"  flattening at {k}: top {v['mean_top']:.2f}, rest {v['mean_rest']:.2f} (class means)")
    return "\n".join(lines)
