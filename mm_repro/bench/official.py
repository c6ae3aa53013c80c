"""The official code's training pipeline, re-implemented for `bench` to measure ours against (docs/protocol.md §2):
uint8 images as PIL images through torchvision's per-sample RandomHorizontalFlip + RandomCrop(32, padding=2) +
ToTensor + Normalize in a DataLoader with workers (`load_data_subset`), and the step of `main.py` + `preresnet.py`
with its host work: numpy lam and permutation, a CPU one-hot copied to the device, `loss.item()` every step."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from mm_repro.config import DatasetConfig, MethodConfig
from mm_repro.data import Arrays
from mm_repro.method.mixing import mix


class _PILDataset(torch.utils.data.Dataset):
    """uint8 images served as PIL images through a per-sample transform, as torchvision's CIFAR10 does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def official_loader(
    split: Arrays, d: DatasetConfig, batch_size: int, workers: int, device: torch.device
) -> torch.utils.data.DataLoader:
    """The official `load_data_subset` pipeline for CIFAR: per-sample PIL transforms in DataLoader workers."""
    import torchvision.transforms as T

    transform = T.Compose(
        [T.RandomHorizontalFlip(), T.RandomCrop(32, padding=d.crop_padding), T.ToTensor(), T.Normalize(d.mean, d.std)]
    )
    dataset = _PILDataset(split.images.permute(0, 2, 3, 1).numpy(), split.labels.numpy(), transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )  # no drop_last: the official `load_data_subset` keeps an epoch's last, smaller batch


def official_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    method: MethodConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    num_classes: int,
) -> float:
    """One step as the official `main.py` + `preresnet.py` take it, host work included."""
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    onehot = torch.zeros(len(y), num_classes).scatter_(1, y.cpu()[:, None], 1).to(device)  # official to_one_hot
    if method.name == "erm":
        logits, targets = model(x), onehot
    else:
        k = method.layers[random.randint(0, len(method.layers) - 1)]
        lam = torch.from_numpy(np.array([np.random.beta(method.alpha, method.alpha)]).astype("float32")).to(device)
        indices = torch.from_numpy(np.random.permutation(len(y))).to(device)
        h, targets = mix(model.forward_until(x, k), onehot, lam, indices)
        logits = model.forward_from(h, k)
    loss = loss_fn(logits, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()  # the official loop reads the loss every step (AverageMeter)
