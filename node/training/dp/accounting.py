"""What a site's DP training has spent: ε of an accountant history, and σ for a target.

Opacus' own analysis (RDP, or the accountant Opacus builds for PRV), wrapped so that a
node can charge a restarted row for the history it really ran and ask the question it
needs each round (how many steps fit the budget) without building an accountant per
query. Split from :mod:`node.training.dp.engine`, which trains; both load Opacus, and
only when a site trains with DP.
"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier

# Opacus' RDP conversion warns when the best order is its largest; the bound it returns
# is then a little loose, never too small; and autograd warns about hooks on a first
# layer whose input needs no gradient. Neither is about privacy. Opacus' secure-RNG
# warning is *not* silenced here: only a caller that seeds on purpose (the simulator,
# ``reproducible=True``) hides it, and only while it builds its engines.
QUIET = ("Optimal order is the largest alpha", "Full backward hook")


@functools.cache
def quiet_opacus() -> None:
    """Silence :data:`QUIET`, once, when DP is first used (never on import).

    Process-wide, because training runs in worker threads and ``catch_warnings`` is not
    thread-safe; a process that never trains with DP keeps every warning."""
    for message in QUIET:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    # Opacus logs that an empty first Poisson batch "may cause issues"; DpRow.step takes
    # every empty batch without a forward pass, so it causes none.
    logging.getLogger("opacus.data_loader").setLevel(logging.ERROR)


@functools.lru_cache(maxsize=256)
def noise_for(epsilon: float, delta: float, sample_rate: float, steps: int, kind: str) -> float:
    """σ for a target (ε, δ) after ``steps`` Poisson steps; sites of equal size share it."""
    sigma = get_noise_multiplier(
        target_epsilon=epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=kind,
    )
    return float(sigma)


class Ledger:
    """ε of an accountant history ``[(σ, q, steps), ...]`` at δ: Opacus' own analysis,
    cached. For RDP each (σ, q) gets its per-step RDP curve once and a history costs a
    weighted sum of them (as in Opacus' accountant); a fresh accountant per query would
    cost ~0.2 s, more than a round of training. The history, not today's config, is what
    was spent: a site restarted with other settings is charged for what it really did."""

    def __init__(self, kind: str, noise_multiplier: float, sample_rate: float, delta: float):
        quiet_opacus()
        self.kind, self.sigma, self.q, self.delta = kind, noise_multiplier, sample_rate, delta
        self._curves: dict[tuple[float, float], np.ndarray[Any, np.dtype[np.float64]]] = {}

    def _curve(self, sigma: float, q: float) -> np.ndarray[Any, np.dtype[np.float64]]:
        curve = self._curves.get((sigma, q))
        if curve is None:
            step = rdp_analysis.compute_rdp(
                q=q, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
            )
            curve = self._curves[(sigma, q)] = np.asarray(step, dtype=np.float64)
        return curve

    def of_history(self, history: list[tuple[float, float, int]]) -> float:
        """ε after every (σ, q, steps) of ``history``."""
        history = [(float(sig), float(q), int(n)) for sig, q, n in history if int(n) > 0]
        if not history:
            return 0.0
        return self._of(tuple(history))

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one ledger per row, for its life
    def _of(self, history: tuple[tuple[float, float, int], ...]) -> float:
        if self.kind == "rdp":
            rdp = sum(self._curve(sig, q) * n for sig, q, n in history)
            eps, _ = rdp_analysis.get_privacy_spent(
                orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=self.delta
            )
            return float(eps)
        accountant = create_accountant(mechanism=self.kind)
        accountant.history = list(history)
        return float(accountant.get_epsilon(delta=self.delta))

    def epsilon(self, steps: int) -> float:
        """ε after ``steps`` steps at this ledger's own (σ, q)."""
        return self.of_history([(self.sigma, self.q, steps)])

    def max_steps(self, epsilon: float) -> int:
        """The most steps whose ε stays within ``epsilon``."""
        lo, hi = 0, 1
        while self.epsilon(hi) <= epsilon:
            lo, hi = hi, hi * 2
            if hi > 1 << 40:
                return hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.epsilon(mid) <= epsilon else (lo, mid)
        return lo
