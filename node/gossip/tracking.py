"""Compressed gradient tracking (``murmur-gt``): CHOCO gossip of the model and of a tracker
of the consortium's average local step, so non-IID sites stop pulling apart.

Plain CHOCO-SGD mixes models, but every site still steps along its own gradient: on
label-skewed sites the local optima differ, and the models settle a step-size-dependent
distance from each other and from the pooled optimum (client drift, which SCAFFOLD fixes
for FedAvg with control variates). Gradient tracking gives each site a second vector v_i
that gossip drives to the average of all sites' local steps, and the site steps along
v_i instead of its own step (the decentralized counterpart of SCAFFOLD; with compression,
BEER — Zhao, Li, Richtárik & Chi, "BEER: Fast O(1/T) Rate for Decentralized Nonconvex
Optimization with Communication Compression", NeurIPS 2022 — and CHOCO with tracking).

Per round, with d_i the step local training would take from x_i (the pseudo-gradient of
``local_steps`` steps of the site's own optimizer, DP-SGD included):

1. v_i += d_i − d_i(previous round);  x_i −= v_i
2. z_i = [x_i | v_i] goes through one CHOCO round: q = C(z − ẑ), ẑ += q, s += Σ W q,
   z += γ (s − ẑ)

Gossip keeps the average of v equal to the average of d at every round (W is doubly
stochastic and v changes by exactly d − d_prev), so the average model moves along the
average step, as one pooled model would. Everything a site sends is still a compressed,
W-weighted difference of public copies — a linear sum — so the stacked vector z goes
through the same codec, backlog and secure aggregation as a plain model, at twice the
values a round. The compressor keeps the same share of each half (``node.gossip.compress.stacked``)
and γ comes from the same analysis (:mod:`node.gossip.step_size`).

The figures below were measured while plain ``murmur`` still mixed every coordinate with
one γ; with rand-k and block-k it now mixes each round's kept coordinates with step 1
(:func:`node.gossip.choco.mix_step`), which ``murmur-gt`` does not (it raised its peaks:
:func:`node.gossip.step_size.shares_indices`); benchmarks/results/convergence.md has
both as they are now.

Where it fails, measured (benchmarks/results/convergence.md, drift rows, 5 local steps):
it helps on Wisconsin with a ring and top-k 1% (worst site 93.0% against 89.5% for plain
CHOCO at 200 rounds) and hurts over 2,000 rounds with block-k 10% on the exponential
graph (worst Wisconsin site 88.6% against 96.5%; NCCTG lung 49.2% against 69.7%,
consensus distance 6.1 at the end against 0.007; with a fixed γ, no guard back-offs,
60.0%; with lr 0.1, 51.4%). Not mini-batch noise: with near-full-batch gradients (512
draws a round) it is worse (consensus 19.1 on lung, 14.1 on Wisconsin). The training step
is what matters, as gradient tracking's step-size condition (η ≲ (1 − λ)²/L with exact
mixing) predicts when CHOCO's small γ makes the effective 1 − λ = γμ small: at lr 0.03
Wisconsin reaches 98.3% / worst 98.2% (plain CHOCO at lr 0.3: 96.5% / 96.5%); at lr 0.01
lung's consensus converges (0.045) but at 56.9%, and at lr 0.03 it still grows. A step
for the tracked update derived from the mixing analysis, as γ is, is the fix to build;
not done yet. A first step, measured in the simulator only: when the guard fires, halve
the training step instead of γ (γ stays at the analysed value). Over 2,000 rounds it
lifts the exponential/block-k cells to 98.9% / worst 98.2% (Wisconsin) and 55.0% / 44.4%
(lung), and lung on a torus with rand-k 10% from 51.9% to 60.3% (plain CHOCO 65.8%); cells
where the guard never fires are unchanged. It is not in because the node would have to
agree on the training scale across sites (announcements carry one γ, which mixes the
learned contraction of top-k with the back-offs), and sites stepping at different scales
track a biased average.

Measured 2026-12-06 (16 Wisconsin sites, Dirichlet α 0.5, a ring, block-k 10%, defaults):
the models oscillate apart with growing swings — consensus distance 0.15 after round 1,
701 at its peak within 200 rounds, 4,280 over 2,000 (``murmur``: 0.66), and the guard
never fires, because it arms only after two analysed mixing times (≈ 330 rounds here)
and the swings start within 30. On GBSG2 (German breast cancer study, lifelines' copy,
recurrence as the label), ring, top-k 1%, 2,000 rounds: consensus 16 at round 1,000
against 5 for ``murmur``. Linearised, tracking with mixing that contracts by 1 − ε a
round needs η·L ≲ ε², and compression makes ε small (≈ 0.003 here against 0.1 dense),
so at the defaults' lr the loop is unstable by a wide margin. Tried and not kept:
clipping the tracked step to twice the site's own step norm (local, no agreement needed)
cut the ring/block-k peak to 127–137 and kept Wisconsin at 96.4 % / 95.6 %, but GBSG2
still ended at consensus 14; a training step scaled by the mixing-rate ratio to dense
gossip (the linear condition) is stable but learns too slowly (Wisconsin ring top-k 1%,
200 rounds: 83.6 % against 95.8 %). The fix still to build is a back-off of the training
step agreed across sites (see above), armed from the first window for this method.
"""

from __future__ import annotations

import torch

from node.gossip.choco import ChocoState
from node.training.trainer import Trainer, TrainStats


class GradientTracker:
    """The stacked [x | v] gossip state of K sites and the tracking step around training."""

    def __init__(self, params: torch.Tensor, common: torch.Tensor | None) -> None:
        self.dim = params.shape[1]
        zeros = torch.zeros_like(params)
        z = torch.cat([params.detach(), zeros], 1)
        start = None if common is None else torch.cat([common, torch.zeros_like(common)])
        self.state = ChocoState.start(z, start)
        self.previous = zeros.clone()

    def train(self, trainer: Trainer, active: torch.Tensor | None = None) -> TrainStats:
        """Local training as a probe for d_i, then step 1 on the stacked state; rows where
        ``active`` is False (down, straggling) keep x, v and their previous step."""
        params = trainer.params
        before = params.detach().clone()
        stats = trainer.train(active)
        with torch.no_grad():
            step = before - params
            params.copy_(before)
            mask = (
                torch.ones(params.shape[0], 1, dtype=params.dtype, device=params.device)
                if active is None
                else active.to(params.dtype).unsqueeze(1)
            )
            v = self.state.x[:, self.dim :]
            v.add_((step - self.previous) * mask)
            self.previous.copy_(torch.where(mask > 0, step, self.previous))
            self.state.x[:, : self.dim].sub_(v * mask)
            params.copy_(self.state.x[:, : self.dim])
        return stats

    def sync(self, trainer: Trainer) -> None:
        """After mixing: the trainer's models are the x half of the stacked state."""
        with torch.no_grad():
            trainer.params.copy_(self.state.x[:, : self.dim])
