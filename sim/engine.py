"""The in-process simulator: every method runs on the same data, model, trainer and clock.

``central`` trains one model on pooled data, ``local`` trains each node alone, ``fedavg``
averages all models at a server each round (a reference, not something Murmur deploys),
``dpsgd`` is dense gossip and ``murmur`` is compressed CHOCO gossip. ``dpsgd`` and
``murmur`` run the same code: D-PSGD is CHOCO with C = identity and γ = 1.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from crypto.cipher import cipher_by_name
from node.errors import ConfigError
from node.exchange.secure.validation_tail import with_tail_room
from node.gossip.choco import ChocoState, consensus_distance
from node.gossip.compress import Compressor, require_shared_slots
from node.gossip.step_guard import step_guard
from node.gossip.tracking import GradientTracker
from node.training.dp_config import DpConfig, every_round, for_sites
from node.training.flat import FlatLayout
from node.training.models import build_model
from node.training.trainer import BatchedTrainer, LocalTrainer, StackedData, Trainer
from sim.exchange import BatchedExchange, gossip_round
from sim.faults import FaultModel
from sim.metrics import accuracy, auc
from sim.network import SimNetwork, dense_frame_bytes
from sim.prep import FederatedData
from sim.references import majority, pooled_logreg, train_central
from sim.results import MethodResult, RunSpec, Tick, stability, step_summary
from sim.secure_network import SecureSimNetwork
from sim.validation import SiteValidation, stop_plan
from topology import MatchingSchedule, StaticTopology


class Simulation:
    """Runs methods on one federated dataset and topology."""

    def __init__(
        self, data: FederatedData, topology: StaticTopology | MatchingSchedule, spec: RunSpec
    ) -> None:
        self._setup(topology, spec, len(data.train), data.n_features, data.n_classes)
        self.data = data
        test_x, test_y = data.pooled("test")
        self.test_x, self.test_y = test_x.to(spec.device), test_y.to(spec.device)

    def _setup(
        self,
        topology: StaticTopology | MatchingSchedule,
        spec: RunSpec,
        sites: int,
        inputs: int,
        outputs: int,
    ) -> None:
        """What every workload shares: the graph, the run, and the one initial model
        (seeded, so every method starts every site from the same x0)."""
        self.topology = topology
        self.spec = spec
        self.n = sites
        torch.manual_seed(spec.seed)
        self.model = build_model(spec.model, inputs, outputs).to(spec.device)
        self.layout = FlatLayout.of(self.model)
        self.x0 = self.layout.to_vector(self.model).to(spec.device)

    def _trainer(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> LocalTrainer:
        """Every method trains through this: with ``spec.dp`` each row (a site, or the
        pooled data for ``central``: central DP-SGD) gets its own Opacus engine."""
        params = self.x0.unsqueeze(0).repeat(len(parts), 1).contiguous()
        stacked = StackedData.from_parts(parts, self.spec.device)
        plain = BatchedTrainer(self.model, params, stacked, self.spec.train, self.spec.seed)
        if self.spec.dp is None:
            return plain
        from node.training.dp.engine import DpTrainer  # Opacus loads only when DP is asked for

        dp, mean = self._dp_for([len(y) for _, y in parts])
        # The simulator seeds DP from its public --seed on purpose: runs are reproducible,
        # and nobody's records are at stake. Nodes use a secret seed (node.state.site_secrets).
        return DpTrainer(
            plain, parts, dp, self.spec.rounds, self.spec.seed, mean, reproducible=True
        )

    def _dp_for(self, rows: list[int]) -> tuple[DpConfig, float | None]:
        """``--dp`` for a trainer of ``rows`` (each row's records), and the mean records
        its learning rates are weighed against: every site's rows, or ``central``'s one
        row of everything pooled (which weighs 1, and has no mixing to wait for)."""
        assert self.spec.dp is not None
        dp = for_sites(self.spec.dp, self._site_sizes())
        pooled = len(rows) == 1 and self.n > 1
        if not pooled:
            return dp, dp.mean_records
        # central DP-SGD: every round is its better setting
        return every_round(dp, self.spec.rounds), float(rows[0])

    def _site_trainer(self, checks: SiteValidation | None) -> Trainer:
        """Every site's trainer, one row each (on the rows the validation stop leaves it
        to fit, where the stop runs)."""
        return self._trainer(self.data.train if checks is None else checks.fit)

    def _site_sizes(self) -> list[int]:
        """Each site's number of training examples (FedAvg's weights)."""
        return [len(y) for _, y in self.data.train]

    def _scores(self, trainer: Trainer) -> np.ndarray:
        """Each row's score for the curves: accuracy on the pooled held-out rows."""
        assert isinstance(trainer, LocalTrainer)
        scores: np.ndarray = accuracy(trainer.predict_proba(self.test_x), self.test_y)
        return scores

    def _record(self, result: MethodResult, trainer: Trainer, t: int, sent: float) -> None:
        scores = self._scores(trainer)
        result.rounds.append(t + 1)
        result.accuracy_mean.append(float(scores.mean()))
        result.accuracy_min.append(float(scores.min()))
        result.bytes_per_node.append(sent)
        result.consensus.append(
            consensus_distance(trainer.params) if trainer.params.shape[0] > 1 else 0.0
        )

    def _finish(
        self, result: MethodResult, trainer: Trainer, began: float, **extra: float
    ) -> MethodResult:
        assert isinstance(trainer, LocalTrainer)
        if not self.spec.evaluate:
            result.final = {
                "rounds": self.spec.rounds,
                "wall_s": time.perf_counter() - began,
                **extra,
            }
            return result
        extra = {**extra, **dp_figures(trainer)}
        probs = trainer.predict_proba(self.test_x)
        acc = accuracy(probs, self.test_y)
        aucs = auc(probs, self.test_y)
        result.final = {
            "accuracy_mean": float(acc.mean()),
            "accuracy_min": float(acc.min()),
            "auc_mean": None if np.isnan(aucs).all() else float(np.nanmean(aucs)),
            "bytes_per_node": result.bytes_per_node[-1] if result.bytes_per_node else 0.0,
            "rounds": self.spec.rounds,
            "wall_s": time.perf_counter() - began,
            **extra,
        }
        if trainer.params.shape[0] == self.n:
            own = trainer.predict_own([x for x, _ in self.data.test])
            site = [
                float(accuracy(p.unsqueeze(0), y.to(self.spec.device))[0])
                for p, (_, y) in zip(own, self.data.test, strict=True)
            ]
            result.final["site_accuracy_mean"] = float(np.mean(site))
            result.final["site_accuracy_min"] = float(np.min(site))
        return result

    def _due(self, t: int) -> bool:
        if not self.spec.evaluate:
            return False
        return (t + 1) % self.spec.eval_every == 0 or t + 1 == self.spec.rounds

    def run(
        self, method: str, compressor: Compressor | None = None, tick: Tick | None = None
    ) -> MethodResult:
        """One method (see :data:`METHODS`) from the same initial model and data."""
        from sim.methods import METHODS  # the built-in methods register there

        return METHODS.get(method)(self, method, compressor, tick)

    def _run_central(self, tick: Tick | None) -> MethodResult:
        """The pooled model: trained to convergence with early stopping (sim.references);
        with DP, central DP-SGD over the run's rounds (validation on private rows would
        spend budget that no site has)."""
        if self.spec.dp is not None:
            return self._run_central_dp(tick)
        began = time.perf_counter()
        features, labels = self.data.pooled("train")
        fit = train_central(
            self.model, self.x0, features, labels, self.spec.train, self.spec.seed, self.spec.device
        )
        result = MethodResult("central")
        if self.spec.evaluate:
            acc = float(accuracy(fit.trainer.predict_proba(self.test_x), self.test_y)[0])
            # Drawn as a flat reference line over the run's rounds.
            result.rounds = [1, self.spec.rounds]
            result.accuracy_mean = result.accuracy_min = [acc, acc]
            result.bytes_per_node = result.consensus = [0.0, 0.0]
        if tick:
            for _ in range(self.spec.rounds):
                tick()
        return self._finish(
            result, fit.trainer, began, epochs=fit.epochs, best_epoch=fit.best_epoch
        )

    def references(self) -> list[MethodResult]:
        """``pooled-logreg`` and ``majority`` on the same pooled split (sim.references)."""
        train_x, train_y = self.data.pooled("train")
        out = []
        for name, ref in (
            ("pooled-logreg", pooled_logreg(train_x, train_y, self.test_x, self.test_y)),
            ("majority", majority(train_y, self.test_y)),
        ):
            result = MethodResult(name)
            result.final = {
                "accuracy_mean": ref.accuracy,
                "accuracy_min": ref.accuracy,
                "auc_mean": ref.auc,
                "bytes_per_node": 0.0,
            }
            out.append(result)
        return out

    def _run_central_dp(self, tick: Tick | None) -> MethodResult:
        return self._run_pooled(self._trainer([self.data.pooled("train")]), tick)

    def _run_pooled(self, trainer: Trainer, tick: Tick | None) -> MethodResult:
        """``central`` as one trainer on the pooled data, for the run's rounds."""
        began = time.perf_counter()
        result = MethodResult("central")
        for t in range(self.spec.rounds):
            trainer.set_progress(t / self.spec.rounds)
            trainer.train()
            if self._due(t):
                self._record(result, trainer, t, 0.0)
            if tick:
                tick()
        return self._finish(result, trainer, began)

    def _run_independent(self, method: str, tick: Tick | None) -> MethodResult:
        began = time.perf_counter()
        trainer = self._site_trainer(None)
        result = MethodResult(method)
        sizes = torch.tensor(self._site_sizes(), dtype=torch.float32, device=self.spec.device)
        sent = 0.0
        for t in range(self.spec.rounds):
            trainer.set_progress(t / self.spec.rounds)
            trainer.train()
            if method == "fedavg":
                with torch.no_grad():
                    average = (sizes.unsqueeze(1) * trainer.params).sum(0) / sizes.sum()
                    trainer.params.copy_(average.expand_as(trainer.params))
                sent += dense_frame_bytes(self.layout.dim, t)  # each node uploads its model
            if self._due(t):
                self._record(result, trainer, t, sent)
            if tick:
                tick()
        return self._finish(result, trainer, began)

    def _run_gossip(
        self, method: str, compressor: Compressor, gamma: float | None, tick: Tick | None
    ) -> MethodResult:
        """dpsgd (γ = 1, identity), murmur (CHOCO) or murmur-gt (CHOCO with gradient
        tracking: the state is [x | v], ``compressor`` already stacked for it)."""
        if not self.topology.static:
            if method != "dpsgd":
                raise ConfigError(
                    "time-varying topologies run with --methods dpsgd only: CHOCO's running sum "
                    "s_i = Σ W_ij x̂_j needs fixed weights (changing them forces a dense resync)"
                )
            return self._run_time_varying(tick)
        began = time.perf_counter()
        if method != "dpsgd":  # under secure aggregation, as a node's (assembly)
            compressor = with_tail_room(compressor, self.spec.secure, self.spec.seed)
        checks = self._validation()
        trainer = self._site_trainer(checks)
        tracker = GradientTracker(trainer.params, self.x0) if method == "murmur-gt" else None
        state = tracker.state if tracker else ChocoState.start(trainer.params, self.x0)
        dim = state.x.shape[1]
        guard = None
        if gamma is None and self.spec.gamma is not None:
            gamma = self.spec.gamma
        elif gamma is None:
            guard = step_guard(compressor, dim, self.topology.matrix(0), self.n)
        faults = (
            FaultModel(self.spec.faults, self.n, self.spec.seed) if self.spec.faults.any else None
        )
        exchange = self._exchange(method, compressor, faults, state.xhat[0])
        result = MethodResult(method)
        sent = np.zeros(self.n)
        virtual_ms = 0.0
        missed = 0
        train_s = 0.0
        trace: list[float] = []
        for t in range(self.spec.rounds):
            alive = faults.alive(t) if faults else np.ones(self.n, dtype=bool)
            working = faults.working(t, alive) if faults else alive
            active = torch.from_numpy(working).to(self.spec.device) if faults else None
            trainer.set_progress(t / self.spec.rounds)
            learning = active if checks is None else checks.training(active, self.spec.device)
            stats = tracker.train(trainer, learning) if tracker else trainer.train(learning)
            train_s += stats.seconds
            if checks is not None:
                assert isinstance(trainer, LocalTrainer)  # the stop scores classifiers
                checks.after_training(t, trainer, working)
            with torch.no_grad():
                step = guard if guard is not None else gamma
                assert step is not None
                said = None if checks is None else checks.announced()
                traffic = gossip_round(
                    exchange, t, state, compressor, step, working, alive, active, said
                )
                if checks is not None:
                    assert said is not None
                    heard, tails = exchange.heard(), exchange.heard_tails()
                    checks.after_gossip(t, said.stopped, heard, working, tails)
                if tracker:
                    tracker.sync(trainer)
                if self.spec.evaluate:
                    trace.append(consensus_distance(trainer.params))
            sent += traffic.bytes_sent
            virtual_ms += traffic.round_ms
            missed += traffic.missed
            if self._due(t):
                self._record(result, trainer, t, float(sent.mean()))
            if tick:
                tick()
        self.last_exchange, self.last_state = exchange, state
        loop_s = time.perf_counter() - began
        cipher_s = {}
        if isinstance(exchange, SecureSimNetwork):
            cipher_s = {f"{k}_s": v for k, v in exchange.cipher_seconds.items()}
        steps = {} if guard is None else step_summary(guard)
        steps.update(stability(result, trace))
        if checks is not None:
            steps.update(checks.summary())
        return self._finish(
            result,
            trainer,
            began,
            virtual_s=virtual_ms / 1000.0,
            frames_missed=missed,
            loop_s=loop_s,
            train_s=train_s,
            **steps,
            **cipher_s,
        )

    def _validation(self) -> SiteValidation | None:
        """The consortium's validation stop (node.gossip.validation_stop), where it runs:
        not under DP (the losses are outside the accountant), nor with ``stop_patience``
        0, nor where no stop could come before the last round."""
        weights = self.topology.matrix(0)
        window, _ = stop_plan(self.spec, weights)
        if window is None:
            return None
        patience = self.spec.train.stop_patience
        return SiteValidation(self.data.train, weights, patience, self.spec.seed, window)

    def _exchange(
        self, method: str, compressor: Compressor, faults: FaultModel | None, start: torch.Tensor
    ) -> BatchedExchange:
        """Plaintext gossip, or secure aggregation under ``spec.secure`` (never for dpsgd,
        the dense reference)."""
        weights = self.topology.matrix(0)
        if method == "dpsgd" or self.spec.secure == "off":
            return SimNetwork(weights, faults, self.spec.device)
        require_shared_slots(compressor, self.spec.secure)
        cipher = cipher_by_name(self.spec.secure)
        return SecureSimNetwork(weights, faults, cipher, start, self.spec.seed)

    def _run_time_varying(self, tick: Tick | None) -> MethodResult:
        began = time.perf_counter()
        trainer = self._site_trainer(None)
        result = MethodResult("dpsgd")
        sent = 0.0
        for t in range(self.spec.rounds):
            trainer.set_progress(t / self.spec.rounds)
            trainer.train()
            w = torch.from_numpy(self.topology.matrix(t)).float().to(self.spec.device)
            with torch.no_grad():
                trainer.params.copy_(w @ trainer.params)
            degree = float((w > 0).sum() - self.n) / self.n
            sent += degree * dense_frame_bytes(self.layout.dim, t)
            if self._due(t):
                self._record(result, trainer, t, sent)
            if tick:
                tick()
        return self._finish(result, trainer, began)


def dp_figures(trainer: Trainer) -> dict[str, float]:
    """A DP run's final figures: the largest ε any site spent, and how many spent it all
    (duck-typed: the DP trainers live behind Opacus, which loads only when DP is on)."""
    epsilons = getattr(trainer, "epsilons", None)
    if epsilons is None:
        return {}
    return {"eps_spent": max(epsilons()), "dp_sites_spent": sum(getattr(trainer, "spent", []))}
