"""The in-process simulator: every method runs on the same data, model, trainer and clock.

``central`` trains one model on pooled data, ``local`` trains each node alone, ``fedavg``
averages all models at a server each round (a reference, not something Murmur deploys),
``dpsgd`` is dense gossip and ``murmur`` is compressed CHOCO gossip. ``dpsgd`` and
``murmur`` run the same code: D-PSGD is CHOCO with C = identity and γ = 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from crypto.cipher import cipher_by_name
from node.compress import Compressor, Identity, SharedIndexCompressor
from node.errors import ConfigError
from node.flat import FlatLayout
from node.gossip import (
    ChocoState,
    add_self_contribution,
    auto_gamma,
    compress_step,
    consensus_distance,
    mix_step,
)
from node.models import build_model
from node.privacy import DpConfig, for_sites
from node.trainer import BatchedTrainer, LocalTrainer, StackedData, TrainConfig
from sim.faults import FaultConfig, FaultModel
from sim.metrics import accuracy, auc
from sim.network import SimNetwork, dense_frame_bytes
from sim.prep import FederatedData
from sim.secure_network import SecureSimNetwork
from topology import MatchingSchedule, StaticTopology

METHOD_NAMES = ("central", "local", "fedavg", "dpsgd", "murmur")


@dataclass(frozen=True)
class RunSpec:
    """What every method of one simulation shares."""

    rounds: int
    model: str
    train: TrainConfig
    gamma: float | None  # None: auto_gamma(compressor, dim)
    seed: int
    device: torch.device
    eval_every: int = 1
    faults: FaultConfig = field(default_factory=FaultConfig)
    evaluate: bool = True  # False: time the rounds only (scale benchmarks)
    secure: str = "off"  # off, or a cipher name (ckks, plain): secure aggregation
    dp: DpConfig | None = None  # DP-SGD per site (and for central: on the pooled data)


@dataclass
class MethodResult:
    method: str
    rounds: list[int] = field(default_factory=list)
    accuracy_mean: list[float] = field(default_factory=list)
    accuracy_min: list[float] = field(default_factory=list)
    bytes_per_node: list[float] = field(default_factory=list)
    consensus: list[float] = field(default_factory=list)
    final: dict[str, float | int | None] = field(default_factory=dict)


Tick = Callable[[], None]


class Simulation:
    """Runs methods on one federated dataset and topology."""

    def __init__(
        self, data: FederatedData, topology: StaticTopology | MatchingSchedule, spec: RunSpec
    ) -> None:
        self.data = data
        self.topology = topology
        self.spec = spec
        self.n = len(data.train)
        torch.manual_seed(spec.seed)
        self.model = build_model(spec.model, data.n_features, data.n_classes).to(spec.device)
        self.layout = FlatLayout.of(self.model)
        self.x0 = self.layout.to_vector(self.model).to(spec.device)
        test_x, test_y = data.pooled("test")
        self.test_x, self.test_y = test_x.to(spec.device), test_y.to(spec.device)

    def _trainer(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> LocalTrainer:
        """Every method trains through this: with ``spec.dp`` each row (a site, or the
        pooled data for ``central``: central DP-SGD) gets its own Opacus engine."""
        params = self.x0.unsqueeze(0).repeat(len(parts), 1).contiguous()
        stacked = StackedData.from_parts(parts, self.spec.device)
        plain = BatchedTrainer(self.model, params, stacked, self.spec.train, self.spec.seed)
        if self.spec.dp is None:
            return plain
        from node.dp import DpTrainer  # Opacus loads only when DP is asked for

        dp = for_sites(self.spec.dp, [len(y) for _, y in self.data.train])
        pooled = len(parts) == 1 and self.n > 1  # central: its one row weighs 1
        mean = float(len(parts[0][1])) if pooled else dp.mean_records
        return DpTrainer(plain, parts, dp, self.spec.rounds, self.spec.seed, mean)

    def _record(self, result: MethodResult, trainer: LocalTrainer, t: int, sent: float) -> None:
        acc = accuracy(trainer.predict_proba(self.test_x), self.test_y)
        result.rounds.append(t + 1)
        result.accuracy_mean.append(float(acc.mean()))
        result.accuracy_min.append(float(acc.min()))
        result.bytes_per_node.append(sent)
        result.consensus.append(
            consensus_distance(trainer.params) if trainer.params.shape[0] > 1 else 0.0
        )

    def _finish(
        self, result: MethodResult, trainer: LocalTrainer, began: float, **extra: float
    ) -> MethodResult:
        if not self.spec.evaluate:
            result.final = {
                "rounds": self.spec.rounds,
                "wall_s": time.perf_counter() - began,
                **extra,
            }
            return result
        epsilons = trainer.epsilons() if hasattr(trainer, "epsilons") else None
        if epsilons is not None:  # the largest ε any site spent, and how many spent it all
            extra = {**extra, "eps_spent": max(epsilons)}
            extra["dp_sites_spent"] = sum(getattr(trainer, "spent", []))
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
        if method == "central":
            return self._run_central(tick)
        if method in ("local", "fedavg"):
            return self._run_independent(method, tick)
        if method == "dpsgd":
            return self._run_gossip(method, Identity(), 1.0, tick)
        if method == "murmur":
            if compressor is None:
                raise ConfigError("method 'murmur' needs a compressor")
            gamma = self.spec.gamma
            if gamma is None:
                gamma = auto_gamma(compressor, self.layout.dim)
            return self._run_gossip(method, compressor, gamma, tick)
        raise ConfigError(f"unknown method {method!r}; accepted: {', '.join(METHOD_NAMES)}")

    def _run_central(self, tick: Tick | None) -> MethodResult:
        began = time.perf_counter()
        trainer = self._trainer([self.data.pooled("train")])
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
        trainer = self._trainer(self.data.train)
        result = MethodResult(method)
        sizes = torch.tensor(
            [len(y) for _, y in self.data.train], dtype=torch.float32, device=self.spec.device
        )
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
        self, method: str, compressor: Compressor, gamma: float, tick: Tick | None
    ) -> MethodResult:
        if not self.topology.static:
            if method != "dpsgd":
                raise ConfigError(
                    "time-varying topologies run with --methods dpsgd only: CHOCO's running sum "
                    "s_i = Σ W_ij x̂_j needs fixed weights (changing them forces a dense resync)"
                )
            return self._run_time_varying(tick)
        began = time.perf_counter()
        trainer = self._trainer(self.data.train)
        state = ChocoState.start(trainer.params, self.x0)
        faults = (
            FaultModel(self.spec.faults, self.n, self.spec.seed) if self.spec.faults.any else None
        )
        secure = self._secure_network(compressor, faults) if method == "murmur" else None
        network = SimNetwork(self.topology.matrix(0), faults, self.spec.device)
        result = MethodResult(method)
        sent = np.zeros(self.n)
        virtual_ms = 0.0
        missed = 0
        train_s = 0.0
        for t in range(self.spec.rounds):
            alive = faults.alive(t) if faults else np.ones(self.n, dtype=bool)
            working = faults.working(t, alive) if faults else alive
            active = torch.from_numpy(working).to(self.spec.device) if faults else None
            trainer.set_progress(t / self.spec.rounds)
            train_s += trainer.train(active).seconds
            with torch.no_grad():
                q = compress_step(state, compressor, t, active)
                add_self_contribution(state, q, network.self_weight)
                if secure is None:
                    traffic = network.exchange(q, state.s, working, alive, t)
                else:
                    assert q.indices is not None and q.indices.dim() == 1
                    traffic = secure.exchange(state.xhat, state.s, q.indices, t, working, alive)
                mix_step(state, gamma, active)
            sent += traffic.bytes_sent
            virtual_ms += traffic.round_ms
            missed += traffic.missed
            if self._due(t):
                self._record(result, trainer, t, float(sent.mean()))
            if tick:
                tick()
        self.last_network, self.last_state, self.last_secure = network, state, secure
        loop_s = time.perf_counter() - began
        cipher_s = {} if secure is None else {f"{k}_s": v for k, v in secure.cipher_seconds.items()}
        return self._finish(
            result,
            trainer,
            began,
            virtual_s=virtual_ms / 1000.0,
            frames_missed=missed,
            loop_s=loop_s,
            train_s=train_s,
            **cipher_s,
        )

    def _secure_network(
        self, compressor: Compressor, faults: FaultModel | None
    ) -> SecureSimNetwork | None:
        """The secure aggregation network for ``spec.secure``, or None in plaintext mode."""
        if self.spec.secure == "off":
            return None
        if not isinstance(compressor, SharedIndexCompressor):
            raise ConfigError(
                f"--secure {self.spec.secure} needs a compressor whose slots come from the public "
                f"round seed (block-k:F or rand-k:F), not {compressor.name!r}: every contributor "
                "must fill the same slots, and per-site indices would leak"
            )
        cipher = cipher_by_name(self.spec.secure)
        return SecureSimNetwork(self.topology.matrix(0), faults, cipher, self.x0, self.spec.seed)

    def _run_time_varying(self, tick: Tick | None) -> MethodResult:
        began = time.perf_counter()
        trainer = self._trainer(self.data.train)
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
