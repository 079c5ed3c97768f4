"""The learning side of one site: train, compress, take its own part into s, mix.

Everything here touches the model and the CHOCO state (x, x̂, s) and nothing the network
does: the round loop (:mod:`node.runtime`) calls it between the exchange's steps. What a
checkpoint holds of it is :meth:`Learner.snapshot` / :meth:`Learner.restore`, so the loop
need not know which parts a config built (DP accountant, tracker, step guard).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from node.assembly import SiteParts
from node.config import NodeConfig
from node.errors import ConfigError
from node.gossip.choco import add_self_contribution, mix_step
from node.gossip.compress import shared_indices
from node.gossip.sparse import Sparse
from node.gossip.step_guard import StepGuard, guarded_compress
from node.gossip.validation_stop import Heard, earliest_stop
from node.wire.update import Validation

Emit = Callable[..., None]


class Learner:
    """A site's model side, built from its :class:`SiteParts`."""

    def __init__(self, parts: SiteParts, config: NodeConfig, emit: Emit) -> None:
        self.parts = parts
        self.config = config
        self.emit = emit
        self.trainer, self.dp, self.ledger = parts.trainer, parts.dp, parts.ledger
        self.tracker, self.state, self.compressor = parts.tracker, parts.state, parts.compressor
        self.guard_step, self.gamma = parts.guard_step, parts.gamma
        self.stop = parts.stop
        # The round's shared index set, which mixes with step 1 (rand-k, block-k with the
        # analysed γ; None for top-k, murmur-gt and a γ set by hand): choco.mix_step.
        self._fresh = (
            shared_indices(self.compressor, self.state.x.shape[1])
            if self.guard_step is not None and self.guard_step.fresh
            else None
        )
        self._stop_news: str | None = None  # why it stopped, for the event loop to log

    @property
    def dim(self) -> int:
        return self.parts.dim

    def train_and_compress(self, t: int) -> tuple[float, Sparse]:
        """Runs in a worker thread: local training, then CHOCO step 1 (q, and x̂ += q).
        It writes x and x̂ only; s, which the event loop adds neighbours' items into, is
        touched only on the event loop (:meth:`add_own`)."""
        if self.stopped:
            # The consortium stopped training (node.gossip.validation_stop): the model
            # only mixes from here, so it still compresses and sends.
            with torch.no_grad():
                q = guarded_compress(self.state, self.compressor, t, None, self.guard_step)
            return math.nan, q
        self.trainer.set_progress(t / self.config.train.rounds)
        before = self.dp_history()
        stats = self.tracker.train(self.trainer) if self.tracker else self.trainer.train()
        if self.stop is not None and self.stop.due(t):
            self._observe(t)
        after = self.dp_history()
        if self.ledger is not None and after != before:
            # Recorded durably before this round's noised update can leave the site.
            self.ledger.append(t, after)
        if self.config.faults.slow > 1:
            time.sleep(stats.seconds * (self.config.faults.slow - 1))
        with torch.no_grad():
            q = guarded_compress(self.state, self.compressor, t, None, self.guard_step)
        return float(stats.loss.mean()), q

    def add_own(self, q: Sparse, self_weight: float) -> None:
        """CHOCO step 2, on the event loop: s += W_ii q."""
        with torch.no_grad():
            add_self_contribution(self.state, q, torch.tensor([self_weight]))

    def mix(self, t: int, heard_steps: Callable[[int], list[float]]) -> None:
        """x += γ (s − x̂), after the step guard has seen this round's residuals."""
        with torch.no_grad():
            self._guard(t, heard_steps)
            mix_step(self.state, self.gamma, fresh=self._fresh(t) if self._fresh else None)
            if self.tracker:
                self.tracker.sync(self.trainer)

    # -- validation stop --------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        return self.stop is not None and bool(self.stop.stopped[0])

    def stop_text(self) -> str:
        """Whether the validation stop runs at this site, and why (the start event)."""
        return self.parts.stop_text

    def earliest_stop(self) -> int:
        """The first round (1-based) any site can stop in; 0 where the stop is off."""
        if self.stop is None:
            return 0
        return earliest_stop(self.stop.window, self.stop.patience)

    def stopped_from(self) -> int | None:
        """The first round (0-based) this site no longer trains in; None while it trains
        (or where the stop is off). A receipt stamped with an earlier round must not say
        it stopped: a neighbour would stop a round before a frame could have told it."""
        if self.stop is None or not self.stopped:
            return None
        return int(self.stop.stopped_round[0])

    def announcement(self) -> Validation | None:
        """What this round's frames say of the validation stop (None: it is off)."""
        if self.stop is None:
            return None
        if self.stopped:
            return Validation(None)
        total, rows = self.stop.estimate[0].tolist()
        return Validation((total, rows))

    def _observe(self, t: int) -> None:
        """A window's end: score the held-back rows into the estimate, maybe stop."""
        assert self.stop is not None
        if bool(self.stop.observe(t, self.parts.validation_sums())[0]):
            # Logged by mix_validation, on the event loop (this runs in the worker thread).
            self._stop_news = "its reading of the validation loss stopped improving"

    def mix_validation(self, t: int, heard: Heard) -> None:
        """e_i ← Σ_j W_ij e_j from what the neighbours said this round (a neighbour not
        heard from counts as our own estimate); a stopped neighbour stops us (the exchanges
        refuse and count a frame or receipt that announces a stop before the first round
        an honest site can stop in)."""
        if self.stop is None:
            return
        mixed = heard.mixed(self.stop.estimate[0])
        now = self.stop.mix(mixed.unsqueeze(0), torch.tensor([heard.told]), t)
        if bool(now[0]):
            self._stop_news = "a neighbour stopped"
        if self._stop_news is not None:
            self._stopped_event(t, self._stop_news)
            self._stop_news = None

    def _stopped_event(self, t: int, why: str) -> None:
        assert self.stop is not None
        self.emit(
            "training_stopped",
            round=t + 1,
            detail=f"training stops, mixing goes on: {why}",
            best_validation_loss=float(self.stop.best[0]),
        )

    def _guard(self, t: int, heard_steps: Callable[[int], list[float]]) -> None:
        """Feed this round's residuals to the step guard; log a back-off."""
        if self.guard_step is None:
            return
        state = self.state
        residual = StepGuard.residuals(state.x, state.xhat, state.s)
        before = self.gamma
        backed = bool(self.guard_step.observe(residual, t)[0])
        heard = heard_steps(self.guard_step.stamp)
        self.guard_step.agree(torch.tensor([min(heard, default=math.inf)], dtype=torch.float64))
        self.gamma = float(self.guard_step.gamma[0])
        if backed:
            self.emit(
                "step_backoff",
                round=t + 1,
                gamma_from=before,
                gamma_to=self.gamma,
                residual=float(residual[0]),
            )
        elif self.gamma != before:  # learned contraction, or a neighbour's step
            self.emit("step", round=t + 1, gamma_from=before, gamma_to=self.gamma)

    def rewire(self, matrix: NDArray[np.float64]) -> None:
        """A new graph has another spectrum and diameter: the step is derived afresh."""
        if self.guard_step is not None:
            self.guard_step.rewire(matrix)
            self.gamma = float(self.guard_step.gamma[0])

    # -- privacy ----------------------------------------------------------------------------

    def dp_history(self) -> list[tuple[float, float, int]]:
        """This site's DP accountant history, [(σ, q, steps), ...] (empty without DP)."""
        if self.dp is None:
            return []
        history = self.dp.rows[0].engine.accountant.history
        return [(float(sig), float(q), int(n)) for sig, q, n in history]

    def reconcile_ledger(self, resumed: bool) -> None:
        """Check the checkpoint's budget against the privacy ledger, and continue from the
        ledger when the checkpoint was lost (node.state.privacy_ledger)."""
        if self.ledger is None or self.dp is None:
            return
        continued = self.ledger.check(self.dp_history())
        if continued is None:
            return
        self.dp.rows[0].engine.accountant.history = list(continued)
        self.emit(
            "privacy_ledger",
            detail="the ledger records more than the checkpoint: ε continues from it",
            eps_spent=self.eps_spent,
        )
        if not resumed:
            # Started over without a checkpoint after spending budget: the generators
            # from the seed file would replay the first life's batches and noise on a
            # new model, and the difference of two releases would cancel the noise.
            row = self.dp.rows[0]
            row.sample_gen.manual_seed(secrets.randbits(62))
            row.noise_gen.manual_seed(secrets.randbits(62))

    @property
    def eps_spent(self) -> float:
        """ε this site has spent, read off its accountant (which the checkpoint restores).
        Once the budget is spent no gradient touches the records again; gossip of the
        already-private model (mixing, relaying, aggregating) is post-processing."""
        return 0.0 if self.dp is None else self.dp.epsilon()

    @property
    def budget_spent(self) -> bool:
        return self.dp is not None and bool(self.dp.spent[0])

    def public_loss(self, loss: float | None) -> float | None:
        """The training loss is a statistic of private batches outside the DP guarantee
        (a loss per round per site can reveal records), so a DP site logs and publishes
        none; a site without DP has made no promise about its records and shows it."""
        if loss is None or math.isnan(loss):
            return None  # no training this round (stopped, or the budget is spent)
        return loss if self.dp is None else None

    def eps_text(self) -> str:
        if self.config.privacy is None:
            return "eps off"
        spent = "  budget spent" if self.budget_spent else ""
        return f"eps {self.eps_spent:.2f}/{self.config.privacy.epsilon:g}{spent}"

    def accuracy(self) -> float | None:
        return self.parts.accuracy()

    def regions(self) -> dict[str, list[float]] | None:
        return self.parts.regions()

    # -- checkpoints ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint holds of the model side (read-only)."""
        return {
            "x": self.state.x,
            "xhat": self.state.xhat,
            "s": self.state.s,
            "eps_spent": self.eps_spent,
            "trainer": self.trainer.state_dict(),
            "tracker": None if self.tracker is None else self.tracker.previous.clone(),
            "guard": None if self.guard_step is None else self.guard_step.state_dict(),
            "validation": None if self.stop is None else self.stop.state_dict(),
        }

    def restore(self, saved: dict[str, Any], where: object) -> None:
        if saved["x"].shape != self.state.x.shape:
            raise ConfigError(f"checkpoint {where} is for a different model")
        with torch.no_grad():
            self.state.x.copy_(saved["x"])
            self.state.xhat.copy_(saved["xhat"])
            self.state.s.copy_(saved["s"])
        self.trainer.load_state_dict(saved["trainer"])
        if self.tracker is not None:
            self.tracker.previous.copy_(saved["tracker"])
            self.tracker.sync(self.trainer)
        validation = saved.get("validation")
        if self.stop is not None and validation is not None:
            self.stop.load_state_dict(validation)
        guard = saved.get("guard")
        if self.guard_step is not None and guard is not None:
            self.guard_step.load_state_dict(guard)
            self.gamma = float(self.guard_step.gamma[0])
