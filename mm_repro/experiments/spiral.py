"""`python -m mm_repro spiral out=DIR`: the paper's Figure 1 (panels a, b, d, e and the SVD plots) on a CPU, and with
`regularizers=true` Figure 2 (weight decay, Gaussian input noise, dropout, BatchNorm and input mixup beside them).

Two interleaved 2-D spirals, an MLP with a 2-D bottleneck in the middle, trained with and without manifold mixup at the
bottleneck, from the same seed and the same data. The paper gives neither the network nor the data size
(docs/protocol.md §5, UNCONFIRMED); our choice (docs/reproducing.md): 2 x 1000 points (radius 0.1..1, 1.75 turns,
noise 0.03), MLP 2-64-64-2(bottleneck)-64-64-2 with ReLU, Adam lr 3e-3, full batch, 3000 steps, alpha = 2.0.

Figures: the decision boundary in input space (panels a/b); the class probability over the 2-D hidden space with the
hidden states of a uniform grid of inputs as black dots (panels d/e); per-class singular values at each hidden layer
(the flattening panels). `spiral.json` holds the figures' numbers and a plain check of the paper's three claims:
a smoother boundary (fewer prediction changes between neighbouring grid points), flatter class representations
(sum of the non-top singular values relative to the top one, at the bottleneck) and a broader low-confidence region
in hidden space (the fraction of the box spanned by the training points' hidden states where max p < 0.8).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mm_repro.config import SpiralConfig
from mm_repro.console import progress
from mm_repro.evaluation.measures import singular_values
from mm_repro.files import output_dir, write_json
from mm_repro.method import mixing
from mm_repro.models.mlp import MLP
from mm_repro.records.tracking import open_tracker
from mm_repro.reports import verdicts
from mm_repro.training.randomness import RunRandom, init_model


def make_spirals(n: int, noise: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two interleaved spirals of n points each, radius 0.1..1, 1.75 turns."""
    t = torch.rand(n, generator=generator)
    radius = 0.1 + 0.9 * t
    angle = 1.75 * 2 * math.pi * t
    xs, ys = [], []
    for c in (0, 1):
        a = angle + c * math.pi
        pts = torch.stack([radius * torch.cos(a), radius * torch.sin(a)], 1)
        xs.append(pts + noise * torch.randn(n, 2, generator=generator))
        ys.append(torch.full((n,), c))
    return torch.cat(xs), torch.cat(ys)


BOTTLENECK = 3  # hidden layer 3 is the linear 2-D bottleneck
# Figure 2's regularizers (the paper gives no strengths: ours, docs/reproducing.md), each alone, beside Figure 1's
# two nets: name -> (MLP options, Adam weight decay, mixing points).
VARIANTS: dict[str, tuple[dict, float, tuple[int, ...] | None]] = {
    "ERM": ({}, 0.0, None),
    "Manifold Mixup": ({}, 0.0, (BOTTLENECK,)),
    "Weight decay": ({}, 1e-3, None),
    "Input noise": ({"input_noise": 0.1}, 0.0, None),
    "Dropout": ({"dropout": 0.5}, 0.0, None),  # in every hidden layer but the bottleneck
    "BatchNorm": ({"batch_norm": True}, 0.0, None),  # likewise
    "Input Mixup": ({}, 0.0, (0,)),
}
FIGURE1 = ("ERM", "Manifold Mixup")


def spiral_net(width: int, **options: object) -> MLP:
    """2 -> w -> w -> 2 (a linear bottleneck, to plot it as it is) -> w -> w -> 2, ReLU (mm_repro.models.mlp);
    mixing point 0 = input, 1..4 = after each hidden layer."""
    return MLP(2, [width, width, 2, width, width], 2, bottleneck=BOTTLENECK, activation="relu", **options)


def train_spiral(x: torch.Tensor, y: torch.Tensor, cfg: SpiralConfig, variant: str, seed: int) -> MLP:
    """Full-batch Adam; a mixing variant mixes at its point only (the bottleneck, or the input), one lam per step."""
    options, decay, layers = VARIANTS[variant]
    net = init_model(lambda: spiral_net(cfg.width, **options), seed)
    rng = RunRandom(seed, torch.device("cpu"))
    spec = mixing.MixSpec(cfg.alpha, layers) if layers else None
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=decay)
    onehot = F.one_hot(y, 2).float()
    net.train()
    for _ in range(cfg.steps):
        with rng.sampling():  # dropout and input noise draw from the net's own seeded stream
            if spec:
                d = mixing.draw(spec, len(y), rng.python, rng.numpy)
                h, t = mixing.mix(net.forward_until(x, d.k), onehot, d.lam, torch.from_numpy(d.index))
                loss = F.cross_entropy(net.forward_from(h, d.k), t)
            else:
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
        opt.step()
    return net.eval()


def _grid(lo: np.ndarray, hi: np.ndarray, n: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    return torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32), gx, gy


def analyse(net: MLP, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor, yt: torch.Tensor, n: int) -> dict:
    """The numbers behind the figures: accuracy, boundary length, flattening and the low-confidence region."""
    with torch.no_grad():
        grid, _, _ = _grid(np.array([-1.2, -1.2]), np.array([1.2, 1.2]), n)
        pred = net(grid).argmax(1).reshape(n, n)
        changes = (pred[1:, :] != pred[:-1, :]).sum() + (pred[:, 1:] != pred[:, :-1]).sum()
        h = net.forward_until(x, BOTTLENECK)
        lo, hi = h.min(0).values.numpy(), h.max(0).values.numpy()
        hgrid, _, _ = _grid(lo, hi, n)
        conf = F.softmax(net.forward_from(hgrid, BOTTLENECK), 1).max(1).values
        flat = {}
        for k in (1, 2, 3, 4):
            hk = net.forward_until(x, k)
            per_class = []
            for c in (0, 1):
                s = singular_values(hk[y == c])
                per_class.append(
                    {"top": float(s[0]), "rest": float(s[1:].sum()), "rest_over_top": float(s[1:].sum() / s[0])}
                )
            flat[f"layer{k}"] = per_class
        return {
            "train_accuracy": float((net(x).argmax(1) == y).float().mean() * 100),
            "test_accuracy": float((net(xt).argmax(1) == yt).float().mean() * 100),
            "boundary_changes_per_grid_line": float(changes) / n,
            "hidden_low_confidence_fraction": float((conf < 0.8).float().mean()),
            "flattening": flat,
        }


def plot(
    nets: dict[str, MLP], x: torch.Tensor, y: torch.Tensor, stats: dict, out: Path, n: int, prefix: str = "spiral"
) -> list[str]:
    """The input-space and hidden-space panels (one column per net), and the singular values at each hidden layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    cols = len(nets)
    fig, axes = plt.subplots(2, cols, figsize=(4.4 * cols, 8.4), squeeze=False, layout="constrained")
    colours = np.where(y.numpy() == 1, "gold", "limegreen")
    for col, (name, net) in enumerate(nets.items()):
        with torch.no_grad():
            grid, gx, gy = _grid(np.array([-1.2, -1.2]), np.array([1.2, 1.2]), n)
            p = F.softmax(net(grid), 1)[:, 1].reshape(n, n).numpy()
            ax = axes[0][col]
            shown = ax.contourf(gx, gy, p, levels=20, cmap="RdBu_r", vmin=0, vmax=1)
            ax.scatter(*x.T, c=colours, s=2, edgecolors="none")
            ax.set_title(f"{name}: input space\n(test acc {stats[name]['test_accuracy']:.1f} %)", fontsize=9)
            ax.set_xlabel("x1")
            ax.set_ylabel("x2")
            h = net.forward_until(x, BOTTLENECK)
            uniform, _, _ = _grid(np.array([-1.2, -1.2]), np.array([1.2, 1.2]), 40)
            hu = net.forward_until(uniform, BOTTLENECK)
            both = torch.cat([h, hu])  # the map covers the training points and the grid's hidden states
            lo, hi = both.min(0).values.numpy(), both.max(0).values.numpy()
            pad = 0.05 * (hi - lo)
            hgrid, hx, hy = _grid(lo - pad, hi + pad, n)
            hp = F.softmax(net.forward_from(hgrid, BOTTLENECK), 1)[:, 1].reshape(n, n).numpy()
            ax = axes[1][col]
            ax.contourf(hx, hy, hp, levels=20, cmap="RdBu_r", vmin=0, vmax=1)
            ax.scatter(*hu.T, c="k", s=1, label="hidden states of a uniform input grid")
            ax.scatter(*h.T, c=colours, s=3, edgecolors="none")
            low = 100 * stats[name]["hidden_low_confidence_fraction"]
            ax.set_title(f"{name}: 2-D hidden space\n(max p < 0.8 on {low:.0f} % of it)", fontsize=9)
            ax.set_xlabel("bottleneck unit 1")
            ax.set_ylabel("bottleneck unit 2")
    axes[1][0].legend(fontsize=7, loc="lower left")
    fig.colorbar(shown, ax=axes, label="p(class 1) (points: class 0 green, class 1 gold)", shrink=0.6)
    files.append(f"{prefix}_spaces.png")
    fig.savefig(out / files[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 4, figsize=(13, 3.4), layout="constrained")
    width = 0.8 / cols
    for ax, layer in zip(axes, ("layer1", "layer2", "layer3", "layer4"), strict=True):
        for j, name in enumerate(nets):
            values = [c["rest_over_top"] for c in stats[name]["flattening"][layer]]
            ax.bar([i - 0.4 + width * (j + 0.5) for i in range(2)], values, width, label=name)
        ax.set_xticks([0, 1], ["class 0", "class 1"])
        ax.set_title(f"{layer}{' (bottleneck)' if layer == 'layer3' else ''}", fontsize=9)
        ax.set_ylabel("sum of the other s_i / s_1 (lower: flatter)", fontsize=8)
    axes[0].legend(fontsize=7)
    files.append(f"{prefix}_singular_values.png")
    fig.savefig(out / files[-1], dpi=110)
    plt.close(fig)
    return files


def flatness(s: dict) -> float:
    """How far the bottleneck's classes spread beyond one direction: (sum of the other singular values) / the top,
    averaged over the two classes (lower: flatter)."""
    return float(np.mean([c["rest_over_top"] for c in s["flattening"]["layer3"]]))


def claims(per_seed: dict[str, dict[int, dict]], regularizers: bool) -> list[dict]:
    """Figure 1's three claims and, with the regularizers, Figure 2's "only manifold mixup both flattens the classes
    and widens the low-confidence region", decided on our seeds (reports.verdicts)."""

    def values(measure: str) -> dict[str, dict[int, float]]:
        get = flatness if measure == "flatness" else (lambda st: st[measure])
        return {name: {seed: get(st) for seed, st in by_seed.items()} for name, by_seed in per_seed.items()}

    flat, low = values("flatness"), values("hidden_low_confidence_fraction")
    changes = values("boundary_changes_per_grid_line")
    out = [
        verdicts.all_below("a smoother decision boundary (fewer prediction changes per grid line) than ERM's",
                           ["Manifold Mixup"], "ERM", changes),
        verdicts.all_below("flatter classes at the bottleneck than ERM's", ["Manifold Mixup"], "ERM", flat),
        verdicts.all_below("a broader low-confidence region in the hidden space than ERM's", ["ERM"], "Manifold Mixup",
                           low),
    ]  # fmt: skip
    if regularizers:
        both = {
            name: verdicts.conjunction(
                f"{name} flattens the classes and widens the low-confidence region beyond ERM's",
                [verdicts.below(name, "ERM", flat, 2), verdicts.below("ERM", name, low, 2)],
                {name: flat[name], "ERM": flat["ERM"]},
            )
            for name in per_seed
            if name != "ERM"
        }
        out.append(
            verdicts.only(
                "of Figure 2's regularizers, only manifold mixup both flattens the classes and widens the "
                "low-confidence region",
                "Manifold Mixup",
                both,
            )
        )
    return out


def rejudge(result: dict, out: Path) -> dict:
    """A spiral result judged again by today's rule from its per-seed numbers (nothing retrained); its JSON
    rewritten. The nets are taken in the run's order (VARIANTS), not the JSON's sorted keys, so the claims' parts
    come out as the run wrote them."""
    rs = result["results"]
    names = [name for name in VARIANTS if name in rs] + sorted(set(rs) - set(VARIANTS))
    per_seed = {name: dict(zip(result["seeds"], rs[name], strict=True)) for name in names}
    result["claims"] = claims(per_seed, result["config"]["regularizers"])
    write_json(out / result["file"], result)
    return result


def run_spiral(cfg: SpiralConfig) -> dict:
    """Train the nets (Figure 1's two, or with `regularizers` Figure 2's seven) for each seed (its own data and
    weights), write the figures (the first seed's) and spiral.json (spiral_figure2.json) with every seed's numbers
    and the claims' verdicts into cfg.out; returns its content."""
    out = output_dir(cfg.out)
    names = list(VARIANTS) if cfg.regularizers else list(FIGURE1)
    tracker = open_tracker(cfg.logger, out, asdict(cfg), "spiral-figure2" if cfg.regularizers else "spiral")
    per_seed: dict[str, dict[int, dict]] = {name: {} for name in names}
    figures: list[str] = []
    step = 0
    try:
        for seed in cfg.seeds:
            g = torch.Generator().manual_seed(seed)
            x, y = make_spirals(cfg.points, cfg.noise, g)
            xt, yt = make_spirals(cfg.points, cfg.noise, g)
            nets = {}
            for name in (bar := progress(names, desc=f"spiral, seed {seed}", unit="net")):
                bar.set_postfix_str(name)
                nets[name] = train_spiral(x, y, cfg, name, seed)
                per_seed[name][seed] = analyse(nets[name], x, y, xt, yt, cfg.grid)
                floats = {k: v for k, v in per_seed[name][seed].items() if isinstance(v, float)}
                tracker.log({f"{name}/{k}": v for k, v in floats.items()}, step=step)
                step += 1
            if not figures:  # the figures show the first seed, as the paper's show one run
                stats = {name: per_seed[name][seed] for name in names}
                figures = plot(nets, x, y, stats, out, cfg.grid, "spiral_figure2" if cfg.regularizers else "spiral")
    finally:
        tracker.finish(0 if all(len(v) == len(cfg.seeds) for v in per_seed.values()) else 1)
    result = {
        "config": asdict(cfg),
        "seeds": list(cfg.seeds),
        "results": {name: [by_seed[s] for s in cfg.seeds] for name, by_seed in per_seed.items()},
        "claims": claims(per_seed, cfg.regularizers),
        "figures": figures,
        "file": "spiral_figure2.json" if cfg.regularizers else "spiral.json",
    }
    write_json(out / result["file"], result)
    return result
