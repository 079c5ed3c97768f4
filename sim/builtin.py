"""``builtin:NAME`` data for ``murmur node``: each member's shard of the public split.

Every site derives the same split from the public seed and takes the shard at its own
position in ``members``, so a consortium of try-out nodes trains on disjoint rows exactly
as the simulators do. The shard and the pooled held-out rows are written once to the
node's state directory and the node then reads them as ``npz:`` files.
"""

from __future__ import annotations

import argparse

from node.config import NodeConfig
from node.errors import ConfigError
from sim.consortium import save_shard
from sim.errors import SimError
from sim.runner import build_data


def materialize(config: NodeConfig, index: int) -> NodeConfig:
    """The config with its ``builtin:`` source replaced by this member's npz shard."""
    name = config.data.source.split(":", 1)[1]
    args = argparse.Namespace(
        dataset=name,
        target=None,
        site_column=None,
        seed=config.consortium.seed,
        split=config.data.split,
        alpha=config.data.alpha,
        nodes=len(config.consortium.members),
    )
    try:
        data = build_data(args)
    except SimError as exc:
        raise ConfigError(f"[data] source {config.data.source}: {exc}") from None
    if len(data.train) != len(config.consortium.members):
        raise ConfigError(
            f"[data] builtin:{name} splits into {len(data.train)} sites ({args.partition_used}) "
            f"but the consortium has {len(config.consortium.members)} members; "
            'use split = "dirichlet"'
        )
    folder = config.site.state_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    shard, held_out = folder / f"{name}-{index}.npz", folder / f"{name}-eval.npz"
    x, y = data.train[index]
    save_shard(shard, x, y, data.n_classes)
    test_x, test_y = data.pooled("test")
    save_shard(held_out, test_x, test_y, data.n_classes)
    return config.edit(
        data={
            "source": f"npz:{shard}",
            "eval_source": config.data.eval_source or f"npz:{held_out}",
        }
    )
