"""Three hospitals, each with its own PyTorch training loop, gossiping one model.

Each site keeps the code it already has (a module, a DataLoader, a loss, an optimizer)
and hands it to Murmur as a ``TrainingLoop``; Murmur does the rest from the site's
``site.toml``. Here the three sites run in one process (``sim.own_loops``: real nodes over
the in-memory transport) so that the example runs anywhere; a real site calls
``run_site("site.toml", loop)``. ``--epsilon`` trains each site's loop with DP-SGD.

    python examples/own_training_loop.py [--rounds 30] [--out runs/own-loop] [--epsilon 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.datasets import load_breast_cancer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from node.training.custom import TrainingLoop
from node.training.dp_config import DpConfig
from sim.own_loops import simulate_loops

SITES = 3


class SmallNet(nn.Module):  # what a hospital's own code might define
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(30, 32), nn.GELU(), nn.LayerNorm(32))
        self.head = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(x))
        return out


def site_data(site: int, sites: int) -> tuple[TensorDataset, TensorDataset]:
    """Each site's own rows (a disjoint slice), standardised, with its own held-out part."""
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    rows = torch.arange(len(y))[site::sites]
    features = torch.tensor(x[rows], dtype=torch.float32)
    labels = torch.tensor(y[rows])
    cut = int(0.8 * len(rows))
    return (
        TensorDataset(features[:cut], labels[:cut]),
        TensorDataset(features[cut:], labels[cut:]),
    )


def make_loop(site: int, sites: int) -> TrainingLoop:
    train, held_out = site_data(site, sites)
    x_val, y_val = held_out.tensors

    def evaluate(model: nn.Module) -> float:
        return float((model(x_val).argmax(1) == y_val).float().mean())

    return TrainingLoop(
        SmallNet,  # built under the consortium's seed: the same start at every site
        DataLoader(train, batch_size=16, shuffle=True),
        loss_fn=nn.CrossEntropyLoss(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        steps=4,
        evaluate=evaluate,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/own-loop"))
    parser.add_argument("--epsilon", type=float, help="train with DP-SGD to this ε per site")
    args = parser.parse_args()
    if (args.out / "consortium.toml").exists():
        raise SystemExit(f"{args.out} already holds a consortium; pass another --out")
    loops = [make_loop(i, SITES) for i in range(SITES)]
    privacy = None if args.epsilon is None else DpConfig(args.epsilon, 1e-3, weight="equal")
    runs = simulate_loops(loops, args.out, rounds=args.rounds, privacy=privacy)
    for run in runs:
        score, eps = float(run.result["accuracy"]), run.result.get("eps_spent")
        spent = "" if eps is None else f", ε spent {eps:.2f}"
        print(f"{run.name}: held-out accuracy {score:.3f} after {args.rounds} rounds{spent}")


if __name__ == "__main__":
    main()
