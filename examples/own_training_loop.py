"""Three hospitals, each with its own PyTorch training loop, gossiping one model.

Each site keeps the code it already has (a module, a DataLoader, a loss, an optimizer)
and hands it to Murmur as a ``TrainingLoop``; Murmur does the rest from the site's
``site.toml``. Here the three sites run in one process over the in-memory transport so
that the example runs anywhere; a real site calls ``run_site("site.toml", loop)``.

    python examples/own_training_loop.py [--rounds 30] [--out runs/own-loop]
"""

from __future__ import annotations

import argparse
import asyncio
import io
from pathlib import Path

import torch
from sklearn.datasets import load_breast_cancer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from crypto.identity import load_key
from node.config import load_config
from node.provision import init
from node.runtime import Node
from node.training.custom import TrainingLoop
from node.transport.memory import MemoryNetwork, MemoryTransport


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


async def run(out: Path, rounds: int) -> list[float]:
    names = ["a", "b", "c"]
    addresses = {n: f"/memory/{n}" for n in names}  # in-process "addresses"
    init(out, names, seed=0, addresses=addresses, data="custom:own-loop", rounds=rounds)
    network = MemoryNetwork()
    nodes = []
    for i, name in enumerate(names):
        config = load_config(out / name / "site.toml")
        config = config.edit(site={"listen": addresses[name]}, gossip={"deadline_s": 2.0})
        node = Node(
            config,
            transport=MemoryTransport(network, load_key(config.site.key), config.site.listen),
            log=io.StringIO(),
            status=io.StringIO(),
            loop=make_loop(i, len(names)),
        )
        nodes.append(node)
    results = await asyncio.gather(*(n.run() for n in nodes))
    return [float(r["accuracy"]) for r in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/own-loop"))
    args = parser.parse_args()
    if (args.out / "consortium.toml").exists():
        raise SystemExit(f"{args.out} already holds a consortium; pass another --out")
    scores = asyncio.run(run(args.out, args.rounds))
    for name, score in zip("abc", scores, strict=True):
        print(f"site {name}: held-out accuracy {score:.3f} after {args.rounds} rounds")


if __name__ == "__main__":
    main()
