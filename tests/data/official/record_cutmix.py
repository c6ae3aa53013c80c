"""Runs clovaai/CutMix-PyTorch's own train() (commit 2d8eb68) on fixed batches and records what its model received and
the loss it computed, so that mm_repro's CutMix can be checked against the reference's outputs. Only shims for this
machine: no CUDA (.cuda() is the identity) and numpy 2 (np.int, removed, is int)."""

import argparse
import sys

import numpy as np
import torch
from torch import nn

np.int = int  # numpy 2 removed the alias the reference uses
torch.Tensor.cuda = lambda self, *a, **k: self
nn.Module.cuda = lambda self, *a, **k: self
OUT = sys.argv[1] if len(sys.argv) > 1 else "cutmix_reference.pt"
sys.argv = ["train.py"]
import train as reference  # noqa: E402

reference.accuracy = lambda output, target, topk: [torch.zeros(1) for _ in topk]  # metrics only; it fails on torch 2
reference.args = argparse.Namespace(beta=1.0, cutmix_prob=0.5, print_freq=10**9, verbose=False, epochs=1)

g = torch.Generator().manual_seed(123)
batches = [(torch.randn(6, 3, 8, 10, generator=g), torch.randint(0, 5, (6,), generator=g)) for _ in range(8)]


class Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 8 * 10, 5)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.linear(x.flatten(1))


class Losses(nn.CrossEntropyLoss):
    values = []

    def forward(self, output, target):
        loss = super().forward(output, target)
        Losses.values.append(loss.detach().clone())
        return loss


torch.manual_seed(7)
model = Recorder()
weights = {k: v.clone() for k, v in model.state_dict().items()}
np.random.seed(11)
torch.manual_seed(13)
optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the model is the same at every batch
reference.train([(x.clone(), y) for x, y in batches], model, Losses(), optimizer, 0)
torch.save(
    {
        "commit": "2d8eb68faff7fe4962776ad51d175c3b01a25734",
        "beta": 1.0,
        "cutmix_prob": 0.5,
        "numpy_seed": 11,
        "torch_seed": 13,
        "inputs": torch.stack([x for x, _ in batches]),
        "labels": torch.stack([y for _, y in batches]),
        "weights": weights,
        "model_inputs": torch.stack(model.seen),
        "ce_terms": torch.stack(Losses.values),  # CE(out, a) then CE(out, b) for a mixed batch; CE(out, y) otherwise
    },
    OUT,
)
print("recorded", len(model.seen), "batches,", len(Losses.values), "CE terms")
