"""Record the official code's outputs as test data (run once, by hand; the tests read the JSON beside this file).

    python tests/data/official/record.py /path/to/manifold_mixup/supervised

`/path/to/manifold_mixup` is a checkout of github.com/vikasverma1077/manifold_mixup (we used the snapshot of HEAD
870ef77). Nothing of its code is copied here: this script imports it and writes what it computes.
- `preresnet18_stride2.json`: `models/preresnet.py`'s `preactresnet18(200, stride=2)` (the official Tiny-ImageNet
  model): every tensor's name, shape and a summary of its initial value under `torch.manual_seed(0)` (today's torch
  initialises BatchNorm weights to 1, so our `bn_init=ones` is the one to compare), and its logits, in eval and train
  mode, for a fixed input after every tensor was filled with fixed values.
- `cutout.json`: `utils.py`'s `Cutout(1, 16).apply` on fixed batches after `np.random.seed(s)`, two calls per seed
  (the second continues the stream): the mask it applied and a hash of its output. Its `.cuda()` is made a no-op, as
  this machine has no GPU.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def fill(model: torch.nn.Module, seed: int) -> None:
    """Every tensor of the state_dict, in sorted-name order, from one generator (running_var kept positive)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            if not t.is_floating_point():
                continue
            values = torch.randn(t.shape, generator=g) * 0.05
            t.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)


def fixed_input(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def summary(t: torch.Tensor) -> dict:
    flat = t.detach().double().flatten()
    return {"shape": list(t.shape), "sum": float(flat.sum()), "first": flat[:4].tolist()}


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().contiguous().numpy().tobytes()).hexdigest()


def record_model(supervised: Path) -> dict:
    sys.path.insert(0, str(supervised / "models"))
    sys.path.insert(0, str(supervised))
    import preresnet

    torch.manual_seed(0)
    model = preresnet.preactresnet18(200, stride=2)
    init = {name: summary(t) for name, t in model.state_dict().items()}
    fill(model, 1)
    x = fixed_input((2, 3, 64, 64), 2)
    with torch.no_grad():
        eval_logits = model.eval()(x)
        train_logits = model.train()(x)
    return {
        "official": "supervised/models/preresnet.py: preactresnet18(num_classes=200, stride=2)",
        "state": init,
        "eval_logits": eval_logits.tolist(),
        "train_logits": train_logits.tolist(),
    }


def record_cutout(supervised: Path) -> dict:
    sys.path.insert(0, str(supervised))
    import utils

    torch.Tensor.cuda = lambda self, *a, **k: self  # no GPU here; the arithmetic is the same
    cases = []
    for seed, size in ((0, 32), (1, 32), (7, 32), (3, 64)):
        np.random.seed(seed)
        for call in range(2):
            x = fixed_input((4, 3, size, size), 10 * seed + call)
            out = utils.Cutout(1, 16).apply(x)
            mask = (out == 0).all(0).all(0).int()
            cases.append(
                {"seed": seed, "size": size, "call": call, "mask": mask.tolist(), "output_sha256": digest(out)}
            )
    return {"official": "supervised/utils.py: Cutout(1, 16).apply(batch)", "cases": cases}


if __name__ == "__main__":
    supervised = Path(sys.argv[1]).resolve()
    (HERE / "preresnet18_stride2.json").write_text(json.dumps(record_model(supervised)) + "\n")
    (HERE / "cutout.json").write_text(json.dumps(record_cutout(supervised)) + "\n")
