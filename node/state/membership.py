"""Consortium membership: who this site's neighbours are, their weights, and changes to them.

A membership is the ``[consortium]`` part of the config that fixes the graph: the member
list, the topology (or explicit edges) and the public seed. Every site derives the same
Metropolis–Hastings matrix from it, so the weight W_ij that j uses to scale what it sends
to i is the one i expects.

A change (a site added or removed, edges rewired) is applied at a round boundary:

- the node's own term in s_i moves to the new self-weight: s_i += (W'_ii − W_ii) x̂_i;
- a removed neighbour's running total is subtracted from s_i and its link dropped;
- a new neighbour, or one whose weight changed, gets a *reset* item W'_ij x̂_i, densely,
  that replaces everything this node sent it before (:mod:`node.state.backlog`).

Once every affected site has reloaded and the resets have arrived, every s_i equals
Σ_j W'_ij x̂_j exactly again. Sites that reload a few rounds apart mix with a slightly
inconsistent s_i in between; the error is bounded by those rounds' updates and gone with
the resets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from node.config import NodeConfig, consortium_topology
from node.errors import ConfigError


@dataclass(frozen=True)
class Membership:
    members: tuple[str, ...]
    topology: str
    edges: tuple[tuple[str, str], ...]
    seed: int

    @classmethod
    def of(cls, config: NodeConfig) -> Membership:
        return cls(
            config.consortium.members,
            config.consortium.topology,
            config.consortium.edges,
            config.consortium.seed,
        )

    def matrix(self) -> NDArray[np.float64]:
        """The whole Metropolis–Hastings W, which every member derives alike."""
        return consortium_topology(self.members, self.topology, self.edges, self.seed).matrix(0)

    def weights(self, me: str) -> dict[str, float]:
        """Row ``me`` of W as {peer: weight} for the node itself and its neighbours."""
        if me not in self.members:
            raise ConfigError(f"this site's peer ID {me} is not in [consortium] members")
        i = self.members.index(me)
        matrix = self.matrix()
        return {
            m: float(matrix[i, j]) for j, m in enumerate(self.members) if j == i or matrix[i, j] > 0
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": list(self.members),
            "topology": self.topology,
            "edges": [list(e) for e in self.edges],
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Membership:
        return cls(
            tuple(raw["members"]),
            str(raw["topology"]),
            tuple((str(a), str(b)) for a, b in raw["edges"]),
            int(raw["seed"]),
        )


@dataclass(frozen=True)
class Change:
    """What a new weight row means for this node's links."""

    removed: tuple[str, ...]
    added: tuple[str, ...]
    reweighted: tuple[str, ...]
    self_delta: float


def diff(me: str, old: dict[str, float], new: dict[str, float]) -> Change:
    before = {p for p in old if p != me}
    after = {p for p in new if p != me}
    return Change(
        removed=tuple(sorted(before - after)),
        added=tuple(sorted(after - before)),
        reweighted=tuple(sorted(p for p in before & after if old[p] != new[p])),
        self_delta=new[me] - old[me],
    )
