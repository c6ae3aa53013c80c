"""A fully-connected family with mixing points, for the paper's small experiments: the 2-D spiral (Figures 1 and 2),
the MNIST flattening nets (section 3.2, Figure 5 of Appendix B, Figures 9-12 of Appendix G).

`MLP(in_features, widths, num_classes)`: hidden layers Linear(widths[i]) each followed, in this order, by BatchNorm1d
(`batch_norm`), the activation (LeakyReLU with `negative_slope`, as the paper's MNIST nets, or ReLU), and dropout
(`dropout`); a `bottleneck` layer (1-based) is linear: no BatchNorm, activation or dropout after it, so that its
states can be plotted as they are (Figure 5's 2-D bottleneck; Figure 2's "dropout in all layers except the
bottleneck"). `input_noise` adds Gaussian noise of that std to the input while training (Figure 2's "Gaussian noise in
the input layer"). Inputs are flattened.

Mixing points: 0 = the input, i = the output of hidden layer i (after its activation), so `forward_from(
forward_until(x, k), k)` is the forward and manifold mixup at the bottleneck mixes at `bottleneck`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(
        self,
        in_features: int,
        widths: list[int],
        num_classes: int,
        bottleneck: int | None = None,
        activation: str = "leaky_relu",
        negative_slope: float = 0.01,
        batch_norm: bool = False,
        dropout: float = 0.0,
        input_noise: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ("leaky_relu", "relu"):
            raise ValueError(f"activation={activation!r}; choose leaky_relu or relu")
        if bottleneck is not None and not 1 <= bottleneck <= len(widths):
            raise ValueError(f"bottleneck={bottleneck} is not a hidden layer (1..{len(widths)})")
        self.widths, self.bottleneck = list(widths), bottleneck
        self.activation, self.negative_slope = activation, negative_slope
        self.dropout, self.input_noise = dropout, input_noise
        sizes = [in_features, *widths]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(w) if batch_norm and i + 1 != bottleneck else nn.Identity() for i, w in enumerate(widths)
        )
        self.head = nn.Linear(sizes[-1], num_classes)

    @property
    def mixing_points(self) -> tuple[int, ...]:
        return tuple(range(len(self.widths) + 1))

    def layer(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Hidden layer i (1-based) on h."""
        if i == 1:
            h = h.flatten(1)
            if self.training and self.input_noise:
                h = h + self.input_noise * torch.randn_like(h)
        h = self.layers[i - 1](h)
        if i == self.bottleneck:
            return h
        h = self.norms[i - 1](h)
        h = F.leaky_relu(h, self.negative_slope) if self.activation == "leaky_relu" else F.relu(h)
        return F.dropout(h, self.dropout, self.training) if self.dropout else h

    def forward_until(self, x: torch.Tensor, k: int) -> torch.Tensor:
        for i in range(1, k + 1):
            x = self.layer(i, x)
        return x

    def forward_from(self, h: torch.Tensor, k: int) -> torch.Tensor:
        for i in range(k + 1, len(self.widths) + 1):
            h = self.layer(i, h)
        return self.head(h.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(x, 0)
