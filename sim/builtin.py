"""``builtin:NAME`` data for ``murmur node``: each member's shard of the public split.

Every site derives the same split from the public seed and takes the shard at its own
position in ``members``, so a consortium of try-out nodes trains on disjoint rows exactly
as the simulators do. The shard and the pooled held-out rows are written once to the
node's state directory and the node then reads them as ``npz:`` files.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from node.config import NodeConfig
from node.errors import ConfigError
from sim.consortium import save_shard
from sim.errors import SimError
from sim.runner import build_data


def materialize(config: NodeConfig, index: int) -> NodeConfig:
    """The config with its ``builtin:`` source replaced by this member's npz shard."""
    name = config.source.split(":", 1)[1]
    args = argparse.Namespace(
        dataset=name,
        target=None,
        site_column=None,
        seed=config.seed,
        split=config.split,
        alpha=config.alpha,
        nodes=len(config.members),
    )
    try:
        data = build_data(args)
    except SimError as exc:
        raise ConfigError(f"[data] source {config.source}: {exc}") from None
    if len(data.train) != len(config.members):
        raise ConfigError(
            f"[data] builtin:{name} splits into {len(data.train)} sites ({args.partition_used}) "
            f'but the consortium has {len(config.members)} members; use split = "dirichlet"'
        )
    folder = config.state_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    shard, held_out = folder / f"{name}-{index}.npz", folder / f"{name}-eval.npz"
    x, y = data.train[index]
    save_shard(shard, x, y, data.n_classes)
    test_x, test_y = data.pooled("test")
    save_shard(held_out, test_x, test_y, data.n_classes)
    return replace(
        config, source=f"npz:{shard}", eval_source=config.eval_source or f"npz:{held_out}"
    )
