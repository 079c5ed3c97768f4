"""Early stopping for a consortium: stop training when the pooled validation loss stops
improving, and keep mixing.

Why. With a step schedule planned over the run, every gossip method keeps fitting its
sites' rows for as long as the run lasts, and on small clinical tables that overfits:
measured on GBSG2 (lifelines' German breast cancer study, 16 sites, exponential graph),
dense D-PSGD fell from 61.8% at 200 rounds to 54.4% at 2,000, and CHOCO with top-k 1% on a
ring ended with its sites at 52–56% while their average model scored 59–63%, because
local steps kept pulling the models apart faster than 1% of a vector a round could pull
them together. The pooled reference stops on a validation split (:mod:`sim.references`);
a consortium can do the same without pooling anything.

How. Each site holds back :data:`VALIDATION_SHARE` of its training rows
(:func:`split_validation`, from the public seed and the site's index, so a restarted site
holds back the same rows). Every window of rounds it scores its current model on them:
u_i = (sum of the rows' cross-entropy, number of rows). The consortium's pooled
validation loss is Σ_i u_i[0] / Σ_i u_i[1]; no site sees another's u_i. Each site
estimates it by average consensus over the same doubly stochastic W as the models,
restarted every window (windowed ratio consensus):

    at a window's end:  e_i ← u_i;   every round:  e_i ← Σ_j W_ij e_j

W doubly stochastic keeps Σ_i e_i = Σ_i u_i, and every e_i contracts to their mean by
λ₂(W) a round, so after a window each site's reading e_i[0] / e_i[1] is a convex
combination of the sites' own losses weighted towards the pooled one. The window is
:func:`window_rounds`: MIXING_TIMES mixing times 1/(1 − λ₂(W)) of the public graph
(60 rounds on a ring of 16, 10 on the exponential graph), which leaves the readings within
e⁻³ ≈ 5% of the pooled loss's spread across sites. A neighbour not heard from in a round
counts as the site's own estimate, so a lost frame costs accuracy, never scale. Frames
carry e_i as two float32 (:func:`node.wire.update.encode_update`, ``val``).

Tried first and dropped: dynamic average consensus (e_i ← Σ_j W_ij e_j + u_i(t) −
u_i(t − 1), Zhu & Martínez 2010), which tracks the pooled loss without restarts. Each
window's score change of a small site lands on that site alone, and on a ring of 16 the
next change comes before the last has spread: on Wisconsin the readings ranged from −0.20
to 0.28 around a pooled loss of 0.06, and the lowest outlier stopped the run at the first
chance. The restarted estimate is never outside the range of the sites' own losses.

Each window end (the reading then describes the models of the window before), a site
compares its reading with the best it has seen; after ``patience`` rounds without a better
one it stops training and says so in its frames (an empty ``val``; under secure
aggregation in its signed receipts); a site that hears a stopped neighbour stops too, so
the whole consortium stops within the graph's diameter of the first site, all on
readings of the same quantity. Stopped sites take no more
optimizer steps but go on compressing, sending and mixing: CHOCO without gradients is
compressed consensus, which converges to the average of the models (Koloskova et al.
2019, Theorem 2), so the sites end on one model instead of a cloud around it.

Under secure aggregation no frame announces an estimate: each contribution carries
W_ij e_j inside its ciphertext, after the model's values, so a receiver learns only the
weighted sum of its included neighbours' estimates, as it does their models
(:mod:`node.exchange.secure.validation_tail`). Both modes hand the round's mixing a
:class:`Heard`.

Off under DP (the losses are statistics of private rows that the accountant does not
charge) and for custom training loops (the loop holds its own data), and where no stop
could come before the last round (:func:`earliest_stop`: the first reading needs two
windows, then ``patience`` rounds, counted in whole windows), so a short run trains on
every row. The window is fixed for the run: it is in the checkpoint, and a membership
change does not move it (all sites reset their estimates in the same rounds). A site's
held-back rows follow its index among the members, as its batch draws do.

A member can lie: a false estimate moves its neighbours' readings, and a false stop halts
their training, though never before :func:`earliest_stop` (an announcement of a stop
before then is refused and counted). It cannot touch their models; robust aggregation of
the estimates belongs with the Byzantine-robust gossip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from topology import spectral_gap

VALIDATION_SHARE = 0.2  # of each site's training rows, as the pooled reference holds back
MIN_WINDOW = 10  # rounds between a site's validation scores, at the least
MIN_ROWS = 5  # a site with fewer training rows holds none back (it scores as zero rows)
MIXING_TIMES = 3  # the estimates' spread shrinks by e³ ≈ 20 in three mixing times


def window_rounds(weights: np.ndarray) -> int:
    """Rounds between validation scores: MIXING_TIMES mixing times of W, rounded up to
    whole tens (at least MIN_WINDOW)."""
    gap = max(spectral_gap(weights), 1e-6)
    return MIN_WINDOW * max(1, math.ceil(MIXING_TIMES / gap / MIN_WINDOW))


def earliest_stop(window: int, patience: int) -> int:
    """The first round (1-based) an honest site can stop in: its first reading comes at
    the end of the second window, and ``patience`` rounds, counted in whole windows,
    after it."""
    return window * (2 + math.ceil(patience / window))


def stop_plan(
    patience: int, rounds: int, weights: np.ndarray, *, private: bool
) -> tuple[int | None, str]:
    """Whether the stop runs, for the node and the simulator alike: its window, or None
    where it is off, and a line saying which and why (``murmur sim`` prints it, a node's
    start event carries it)."""
    if patience == 0:
        return None, "off (--stop-patience / [train] stop_patience 0)"
    if private:
        return None, "off under DP (--dp / [privacy]: the losses would be outside the accountant)"
    window = window_rounds(weights)
    first = earliest_stop(window, patience)
    if first >= rounds:
        return None, f"off: on this graph the first stop could come at round {first}"
    return window, (
        f"on: 20% of each site's rows held back, scored every {window} rounds; training "
        f"stops {patience} rounds after the best reading (round {first} at the earliest)"
    )


def split_validation(
    x: torch.Tensor, y: torch.Tensor, seed: int, site: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(fit rows, validation rows) of one site: the same rows for the same (public seed,
    site index), in the simulator and on the node."""
    n = len(y)
    held = 0 if n < MIN_ROWS else max(1, round(VALIDATION_SHARE * n))
    order = np.random.default_rng([seed, site, 0x5A1D]).permutation(n)
    val = torch.from_numpy(np.sort(order[:held]))
    fit = torch.from_numpy(np.sort(order[held:]))
    return (x[fit], y[fit]), (x[val], y[val])


def validation_sums(probs: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
    """(K, 2) float64: each site's summed cross-entropy over its validation rows, and
    their number."""
    out = torch.zeros(len(probs), 2, dtype=torch.float64)
    for k, (p, y) in enumerate(zip(probs, labels, strict=True)):
        if len(y):
            logp = p.to(torch.float64).clamp_min(1e-12).log()
            out[k, 0] = float(torch.nn.functional.nll_loss(logp, y, reduction="sum"))
            out[k, 1] = float(len(y))
    return out


@dataclass(frozen=True)
class Heard:
    """What one site's neighbours said of the stop in a round, already mixed:
    Σ_j W_ij e_j over the neighbours whose estimate arrived (``total``), the weight of
    those (``weight``; every other neighbour counts as the site's own estimate), and
    whether an arrived neighbour has stopped (``told``)."""

    total: tuple[float, float]
    weight: float
    told: bool

    def mixed(self, own: torch.Tensor) -> torch.Tensor:
        """e_i ← Σ_j W_ij e_j: the heard part and the rest of the row's weight (W is
        doubly stochastic) on the site's own estimate ``own`` (2,)."""
        heard = torch.tensor(self.total, dtype=torch.float64)
        return heard + (1.0 - self.weight) * own.to(torch.float64)


NOTHING_HEARD = Heard((0.0, 0.0), 0.0, False)


@dataclass
class ValidationStop:
    """The stop of K sites at once (the simulator's rows, or one node): each site's
    estimate, its best reading and whether it has stopped training."""

    k: int
    patience: int  # rounds without a better reading before a site stops
    window: int = MIN_WINDOW  # rounds between scores (window_rounds)
    estimate: torch.Tensor = field(init=False)  # (K, 2) e_i
    scored: bool = field(init=False, default=False)  # a window's scores are mixing
    windows: int = field(init=False, default=0)  # window ends passed (a node may skip rounds)
    best: torch.Tensor = field(init=False)  # (K,) the lowest reading so far
    best_round: torch.Tensor = field(init=False)  # (K,) int64, the round of that reading
    stopped: torch.Tensor = field(init=False)  # (K,) bool
    stopped_round: torch.Tensor = field(init=False)  # (K,) int64, -1 while training

    def __post_init__(self) -> None:
        if self.patience < MIN_WINDOW:
            raise ValueError(f"stop patience must be at least {MIN_WINDOW} rounds")
        self.estimate = torch.zeros(self.k, 2, dtype=torch.float64)
        self.best = torch.full((self.k,), math.inf, dtype=torch.float64)
        self.best_round = torch.zeros(self.k, dtype=torch.int64)
        self.stopped = torch.zeros(self.k, dtype=torch.bool)
        self.stopped_round = torch.full((self.k,), -1, dtype=torch.int64)

    def due(self, round: int) -> bool:
        """Whether a window has ended since the last score, by round ``round`` (0-based):
        score after its training. A node catching up may skip a window's last round; it
        scores in the first round it runs after it, as its neighbours reset."""
        return (round + 1) // self.window > self.windows

    def observe(
        self, round: int, sums: torch.Tensor, active: torch.Tensor | None = None
    ) -> torch.Tensor:
        """A window's end: judge the reading the last window's scores have mixed to, then
        start mixing this window's sums u (K, 2). Rows not ``active`` (down) keep their
        estimate and do not judge. Returns the (K,) mask of sites that stopped now."""
        self.windows = (round + 1) // self.window
        live = torch.ones(self.k, dtype=torch.bool) if active is None else active.cpu()
        now = torch.zeros(self.k, dtype=torch.bool)
        if self.scored:
            now = self.decide(round, live)
        self.estimate = torch.where(live.unsqueeze(1), sums.to(torch.float64), self.estimate)
        self.scored = True
        return now

    def reading(self) -> torch.Tensor:
        """(K,) each site's estimate of the pooled validation loss (inf before any rows)."""
        rows = self.estimate[:, 1]
        return torch.where(rows > 0, self.estimate[:, 0] / rows.clamp_min(1e-12), math.inf)

    def decide(self, round: int, live: torch.Tensor) -> torch.Tensor:
        """Compare the ``live`` sites' readings with their best; stop those ``patience``
        rounds past theirs. Returns the (K,) mask of sites that stopped now."""
        value = self.reading()
        better = (value < self.best) & ~self.stopped & live
        self.best = torch.where(better, value, self.best)
        self.best_round = torch.where(better, round, self.best_round)
        # No site holds validation rows (all too small): nothing to judge, never stop.
        judged = torch.isfinite(self.best)
        due = ~self.stopped & live & judged & (round - self.best_round >= self.patience)
        self._stop(due, round)
        return due

    def mix(
        self,
        mixed: torch.Tensor,
        heard_stop: torch.Tensor,
        round: int,
        active: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """After the round's frames: e ← the W-mix of the estimates (``mixed``, (K, 2)), and
        sites that heard a stopped neighbour stop; rows not ``active`` (down) keep theirs.
        Returns the mask of sites stopped now."""
        live = ~self.stopped
        if active is not None:
            live &= active.cpu()
        self.estimate = torch.where(live.unsqueeze(1), mixed, self.estimate)
        due = heard_stop & live
        self._stop(due, round)
        return due

    def _stop(self, due: torch.Tensor, round: int) -> None:
        self.stopped |= due
        self.stopped_round = torch.where(due, round + 1, self.stopped_round)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "estimate": self.estimate.clone(),
            "scored": torch.tensor(self.scored),
            "windows": torch.tensor(self.windows),
            "window": torch.tensor(self.window),
            "best": self.best.clone(),
            "best_round": self.best_round.clone(),
            "stopped": self.stopped.clone(),
            "stopped_round": self.stopped_round.clone(),
        }

    def load_state_dict(self, saved: dict[str, torch.Tensor]) -> None:
        for name, value in saved.items():
            if name in ("scored", "windows", "window"):
                # The window is fixed for the run: a restart keeps the one it began with.
                setattr(self, name, bool(value) if name == "scored" else int(value))
                continue
            current = getattr(self, name)
            if value.shape != current.shape:
                raise ValueError(f"validation stop {name}: shape {tuple(value.shape)}")
            setattr(self, name, value.to(current.dtype).clone())


def mix_estimates(weights: np.ndarray, estimate: torch.Tensor, heard: np.ndarray) -> torch.Tensor:
    """Σ_j W_ij e_j for every site (the simulator's rows): ``heard[i, j]`` says that site i
    has neighbour j's estimate of this round (its frame arrived, and j had not stopped);
    the rest of the row's weight falls on the site's own estimate, as on a node
    (:meth:`Heard.mixed`). Neighbours' estimates arrive as the float32 the frames carry."""
    w = torch.from_numpy(weights).to(torch.float64)
    off = w.clone()
    off.fill_diagonal_(0.0)
    off = off * torch.from_numpy(heard)
    sent = estimate.to(torch.float32).to(torch.float64)
    return off @ sent + (1.0 - off.sum(1)).unsqueeze(1) * estimate
