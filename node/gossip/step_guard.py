"""The runtime guard on the CHOCO step γ (the analysis is :mod:`node.gossip.step_size`).

Beyond the analysis: training and DP noise, top-k's data-dependent index sets and
heterogeneous sites are not in it, so each site also watches its own residuals
‖x_i − x̂_i‖² + ‖s_i − x̂_i‖² (:class:`StepGuard`) and halves its γ when their mean over a
window of rounds climbs past four times the lowest window mean, counted only once the γ
in use has had two mixing times of the analysis to settle (a healthy slow-mixing run's
residuals rise for that long as training pulls the equal starting models apart). An
unstable γ crosses it within a few hundred rounds (top-k 1% on a torus at γ = 0.1);
benchmarks/results/convergence.md counts the back-offs of every cell.

Sites agree on one γ: each window's proposals are min-gossiped (frames announce the
sender's smallest known) and all sites switch together once the minimum has crossed the
graph (:class:`StepGuard`), so the models' average stays exactly where W puts it, and a
back-off anywhere slows every site.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import torch
from numpy.typing import NDArray

from node.gossip.choco import ChocoState, compress_step
from node.gossip.compress import AdaptiveTopK, Compressor, Stacked, StackedIndex, TopK
from node.gossip.quantize import Quantized
from node.gossip.sparse import Sparse
from node.gossip.step_size import (
    _choose,
    _grid_down,
    contraction,
    mixing_modes,
    realized_contraction,
    second_moment_rate,
    shares_indices,
)

# A site halves its own γ at most this many times, and no neighbour's announcement takes
# it lower than that either: a member cannot stall the others' mixing with a tiny step.
MAX_BACKOFFS = 8
RESIDUAL_SAMPLE = 8192


@dataclass
class StepGuard:
    """Each site's γ (K sites at once): from its contraction, learned where it is only
    bounded, halved when the site's own residuals keep growing, and agreed across the
    consortium so that every site mixes with the same γ.

    ``bound`` is each site's contraction known before the first round (:func:`contraction`).
    With ``learn`` (top-k, whose k/d is only a worst case) a site measures the contraction
    its compressor realises on the residual it compresses, every round
    (:meth:`observe_contraction`), and once a window of rounds has shown it uses the lowest
    window mean seen so far (never below the bound) in its place.

    :meth:`observe` takes ‖x_i − x̂_i‖² + ‖s_i − x̂_i‖² per site each round. Every
    ``window`` rounds the window's mean is compared with the lowest window mean since the
    guard was armed; past ``limit`` times that floor, the site's proposal halves. The guard
    arms only once the γ in use has had time to settle the residuals: two mixing times
    2/(1 − r(γ)) of the analysis (at least ``warmup`` windows) after the start and after
    every change of γ. Residuals rise for that long in a healthy run too — the sites start
    equal and training pulls them apart until mixing balances it, later the slower γ is —
    and comparing them before would read that rise as instability (on slow-mixing graphs
    each back-off's own settling set off the next).

    Agreement: each window ends (in the same round at every site) with a new proposal and
    a new *stamp*. Sites gossip the smallest proposal of the current stamp they know
    (:meth:`agree`, one hop a round, announced in their frames) and all switch to it
    ``lag`` rounds after the window ended, ``lag`` being the public graph's diameter: by
    then the minimum has reached every site, so one γ holds everywhere at all times (the
    models' average stays where W puts it), and a back-off anywhere slows every site, as
    an unstable mode is the whole graph's.
    """

    weights: NDArray[np.float64]
    bound: torch.Tensor  # (K,) float64
    learn: bool = False
    # The kept coordinates mix with step 1 and γ is the others' step: the analysis assumes
    # it, and the mixing sites read it here, so the two cannot disagree.
    fresh: bool = False
    window: int = 10
    warmup: int = 2
    limit: float = 4.0
    factor: float = 0.5
    gamma: torch.Tensor = field(init=False)  # (K,) the γ in use
    proposal: torch.Tensor = field(init=False)  # (K,) each site's own, at the last stamp
    agreed: torch.Tensor = field(init=False)  # (K,) smallest known for the current stamp
    backoffs: torch.Tensor = field(init=False)
    stamp: int = 0
    lag: int = field(init=False)
    _learned: torch.Tensor = field(init=False)
    _delta_sum: torch.Tensor = field(init=False)
    _sum: torch.Tensor = field(init=False)
    _floor: torch.Tensor = field(init=False)
    _settled: torch.Tensor = field(init=False)  # (K,) rounds since γ last changed
    _count: int = 0
    _round: int = -1  # the last round observed
    _switched: int = 0  # the stamp whose agreed γ is in use
    _modes: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        k = self.bound.shape[0]
        self.bound = self.bound.to(torch.float64).clone()
        self._learned = torch.full((k,), math.inf, dtype=torch.float64)
        self._delta_sum = torch.zeros(k, dtype=torch.float64)
        self._sum = torch.zeros(k, dtype=torch.float64)
        self._floor = torch.full((k,), math.inf, dtype=torch.float64)
        self._settled = torch.zeros(k, dtype=torch.int64)
        self.backoffs = torch.zeros(k, dtype=torch.int64)
        self._adopt(self.weights)
        self.proposal = self._gammas()
        # Every site derives the same starting γ from public facts; min-gossip covers the
        # exception (top-k:adaptive, whose bound is each site's own).
        self.agreed = self.proposal.clone()
        self.gamma = self.proposal.clone()

    def _adopt(self, weights: NDArray[np.float64]) -> None:
        """Take the graph's spectrum and diameter (the agreement lag) from ``weights``."""
        self.weights = weights
        adjacency = self.weights > 0
        graph = nx.from_numpy_array(
            adjacency.astype(np.int64) - np.eye(len(adjacency), dtype=np.int64)
        )
        self.lag = int(nx.diameter(graph)) if len(adjacency) > 1 else 0
        self.window = max(self.window, self.lag + 1)
        self._modes = tuple(np.round(mixing_modes(self.weights), 12))

    def rewire(self, weights: NDArray[np.float64]) -> None:
        """A membership change: γ from the new graph's spectrum (keeping the learned
        contraction and the back-offs), windows and stamps still at round numbers."""
        self._adopt(weights)
        self.stamp = self._switched = (self._round + 1) // self.window
        self.proposal = self._gammas()
        self.agreed = self.proposal.clone()
        self.gamma = self.proposal.clone()
        self._settled.zero_()
        self._floor.fill_(math.inf)

    @property
    def delta(self) -> torch.Tensor:
        """(K,) the contraction each site's proposal is computed for now."""
        return torch.maximum(self.bound, torch.where(self._learned.isinf(), 0.0, self._learned))

    def _base(self) -> torch.Tensor:
        """(K,) the analysed γ for each site's contraction, before any back-off."""
        base = [
            _choose(self._modes, round(_grid_down(d), 12), self.fresh).gamma
            for d in self.delta.tolist()
        ]
        return torch.tensor(base, dtype=torch.float64)

    def _gammas(self) -> torch.Tensor:
        return self._base() * self.factor ** self.backoffs.to(torch.float64)

    @staticmethod
    def residuals(x: torch.Tensor, xhat: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """‖x_i − x̂_i‖² + ‖s_i − x̂_i‖² per row, as float64 on the CPU: on models of more
        than RESIDUAL_SAMPLE parameters, estimated from every k-th coordinate (growth shows
        in all of them; 1,000 simulated sites of 100k parameters would otherwise spend
        most of a round here)."""
        stride = max(1, math.ceil(x.shape[1] / RESIDUAL_SAMPLE))
        x, xhat, s = x[:, ::stride], xhat[:, ::stride], s[:, ::stride]
        lag = ((x - xhat) ** 2).sum(1) + ((s - xhat) ** 2).sum(1)
        return lag.detach().to("cpu", torch.float64) * stride

    def observe_contraction(self, realized: torch.Tensor) -> None:
        """Feed this round's realized contraction per site (used with ``learn``)."""
        if self.learn:
            self._delta_sum += realized.detach().to("cpu", torch.float64)

    def announcement(self) -> tuple[int, torch.Tensor]:
        """(stamp, smallest known proposal per site): what this round's frames carry."""
        return self.stamp, self.agreed.clone()

    def observe(self, residual: torch.Tensor, round: int | None = None) -> torch.Tensor:
        """Feed one round's residuals (``round``: the round they are of; default the next
        one); returns the (K,) mask of sites that backed off now. Windows end at round
        numbers, multiples of ``window``, the same at every site, also at one that skipped
        rounds to catch up."""
        self._round = self._round + 1 if round is None else round
        self._sum += residual.to(torch.float64)
        self._count += 1
        self._settled += 1
        backed = torch.zeros_like(self._settled, dtype=torch.bool)
        if (self._round + 1) // self.window <= self.stamp:
            return backed
        mean = self._sum / self._count
        if self.learn:
            self._learned = torch.minimum(self._learned, self._delta_sum / self._count)
            self._delta_sum.zero_()
        self._sum.zero_()
        self._count = 0
        armed = self._settled >= self._settling()
        # A γ of 0 (only the round's kept coordinates mix, with step 1, which is stable by
        # itself: node.gossip.choco.mix_step) has nothing to halve.
        movable = (self.backoffs < MAX_BACKOFFS) & (self._base() > 0)
        backed = armed & (mean > self.limit * self._floor) & movable
        self.backoffs[backed] += 1
        update = armed & ~backed
        self._floor[update] = torch.minimum(self._floor[update], mean[update])
        self.proposal = self._gammas()
        self.stamp = (self._round + 1) // self.window
        self.agreed = self.proposal.clone()
        return backed

    def agree(self, heard: torch.Tensor) -> None:
        """Take the neighbours' smallest announced proposal of the current stamp (``heard``,
        inf where none came); ``lag`` rounds into a stamp, switch to the agreed γ. Call once
        a round, after :meth:`observe`."""
        lowest = self._base() * self.factor**MAX_BACKOFFS
        self.agreed = torch.minimum(self.agreed, torch.maximum(heard.to(torch.float64), lowest))
        into = self._round + 1 - self.stamp * self.window  # rounds since the stamp's window end
        if self._switched < self.stamp and into >= self.lag:
            changed = self.agreed != self.gamma
            self.gamma = self.agreed.clone()
            self._settled[changed] = 0  # the guard re-arms once the new γ has settled
            self._floor[changed] = math.inf
            self._switched = self.stamp

    def step(
        self,
        state: ChocoState,
        neighbour_min: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """A vectorised round's bookkeeping after the exchange (the simulators): observe
        the K sites' residuals, agree through ``neighbour_min`` (each site's smallest
        neighbour announcement, which a new stamp voids), and return the γ to mix with."""
        stamp, announced = self.announcement()
        self.observe(StepGuard.residuals(state.x, state.xhat, state.s))
        heard = neighbour_min(announced)
        self.agree(heard if self.stamp == stamp else torch.full_like(heard, math.inf))
        return self.gamma

    def _settling(self) -> torch.Tensor:
        """(K,) rounds the γ in use needs to settle: two mixing times of the analysis."""
        modes = np.array(self._modes)
        out = []
        for gamma, delta in zip(self.gamma.tolist(), self.delta.tolist(), strict=True):
            rate = (
                1.0
                if not len(modes)
                else float(
                    second_moment_rate(
                        np.array([gamma]), modes, min(1.0, _grid_down(delta)), self.fresh
                    )[0]
                )
            )
            settle = 2.0 / (1.0 - rate) if rate < 1.0 else 0.0
            out.append(max(self.warmup * self.window, math.ceil(settle)))
        return torch.tensor(out, dtype=torch.int64)

    def state_dict(self) -> dict[str, object]:
        return {
            "learned": self._learned.clone(),
            "delta_sum": self._delta_sum.clone(),
            "sum": self._sum.clone(),
            "floor": self._floor.clone(),
            "settled": self._settled.clone(),
            "backoffs": self.backoffs.clone(),
            "agreed": self.agreed.clone(),
            "gamma": self.gamma.clone(),
            "count": self._count,
            "round": self._round,
            "switched": self._switched,
            "stamp": self.stamp,
        }

    def load_state_dict(self, saved: dict[str, object]) -> None:
        tensors = ("learned", "delta_sum", "sum", "floor", "settled", "backoffs", "agreed", "gamma")
        for name in tensors:
            value = saved[name]
            assert isinstance(value, torch.Tensor)
            attr = name if name in ("backoffs", "agreed", "gamma") else f"_{name}"
            setattr(self, attr, value.clone())
        for name, attr in (
            ("count", "_count"),
            ("round", "_round"),
            ("switched", "_switched"),
            ("stamp", "stamp"),
        ):
            value = saved[name]
            assert isinstance(value, int)
            setattr(self, attr, value)
        self.proposal = self._gammas()
        # A checkpoint of a version whose analysis allowed a larger γ (one γ for every
        # coordinate) resumes at most at this analysis' step; otherwise a no-op, as the
        # agreed γ is never above the site's own proposal.
        self.gamma = torch.minimum(self.gamma, self.proposal)
        self.agreed = torch.minimum(self.agreed, self.proposal)


def step_guard(
    compressor: Compressor, dim: int, weights: NDArray[np.float64], sites: int
) -> StepGuard:
    """The guard for ``sites`` rows of ``compressor`` on ``weights``: learning for top-k."""
    deltas = contraction(compressor, dim)
    bound = torch.tensor(deltas if len(deltas) == sites else deltas * sites, dtype=torch.float64)
    return StepGuard(
        weights, bound, learn=_bounded_only(compressor), fresh=shares_indices(compressor)
    )


def _bounded_only(compressor: Compressor) -> bool:
    """True for compressors whose contraction is only bounded in advance (top-k)."""
    inner = compressor.inner if isinstance(compressor, Quantized) else compressor
    if isinstance(inner, Stacked | StackedIndex):
        inner = inner.inner
    return isinstance(inner, TopK | AdaptiveTopK)


def residual_energy(state: ChocoState) -> torch.Tensor:
    return ((state.x - state.xhat) ** 2).sum(1)


def guarded_compress(
    state: ChocoState,
    compressor: Compressor,
    round: int,
    active: torch.Tensor | None,
    guard: StepGuard | None,
) -> Sparse:
    """CHOCO step 1, feeding the realized contraction to a learning guard."""
    if guard is None or not guard.learn:
        return compress_step(state, compressor, round, active)
    before = residual_energy(state)
    q = compress_step(state, compressor, round, active)
    guard.observe_contraction(realized_contraction(before, residual_energy(state)))
    return q
