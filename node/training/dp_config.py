"""A site's differential-privacy budget: ``[privacy]`` in the node config, ``--dp`` in
the simulator. Plain data, no Opacus: only the package :mod:`node.training.dp` imports
that, when DP is on."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from node.errors import ConfigError

ACCOUNTANTS = ("rdp", "prv")
# Without [privacy] rounds, the budget is spread over this share of the planned rounds,
# and over at most DEFAULT_DP_CAP of them (see DpConfig).
DEFAULT_DP_SHARE = 0.15
DEFAULT_DP_CAP = 40
WEIGHTS = ("records", "equal")


@dataclass(frozen=True)
class DpConfig:
    """A site's privacy budget and how DP-SGD spends it.

    ``rounds`` is how many rounds the budget is spread over; None (the default) is the
    first DEFAULT_DP_SHARE of the planned rounds, at most DEFAULT_DP_CAP (:func:`dp_rounds`),
    for a table's model; a U-Net takes every planned round
    (:func:`every_round`; :mod:`node.training.segmentation.dp` says why).
    After them the site stops training and goes on mixing, relaying and aggregating the
    already-private model until the last round. Why: each site's DP noise is averaged
    away only once gossip has mixed it with the others', and noise added until the last
    round is never mixed; and small sites (a batch of 16 from 28 records) get no privacy
    amplification from subsampling, so more DP rounds mean proportionally more noise per
    step without more signal. Measured on Wisconsin, 16 sites, ε = 3, ring block-k 10% and
    exponential top-k 10%, logistic and mlp:32, 100 / 200 / 2,000 rounds: every round 73–
    89%; 10 rounds 81–92%; 20–40 rounds best at every horizon (92.8–94.7% at 2,000); 15% of
    2,000 (300 rounds) 83–93%. benchmarks/results/convergence.md has the DP rows.
    Checked against alternatives over 3 seeds on 40 cells (Wisconsin and NCCTG lung;
    ring block-k, exponential top-k, torus block-k, Watts–Strogatz rand-k and Erdős–Rényi
    top-k, all 10%; logistic and mlp:32; 100 and 200 rounds), mean within 3 points of
    non-private: this rule 27 / 40; the planned rounds less 2 or 3 mixing times of the
    graph's analysed γ (10–40 DP rounds, so the noise has time to mix) 21 / 40 each —
    single seeds had favoured them, but one draw of the noise moves a cell by up to 14
    points; a cosine learning rate annealed over the DP rounds 7 / 40 (mlp:32 stays at the
    majority class: too little signal gets in).

    ``weight = "records"`` scales a site's DP step by its training records over
    ``mean_records``, the consortium's mean records per site (one public figure every
    site sets alike; the simulator computes it). Opacus divides each site's noised
    gradient sum by that site's own batch size and gossip averages sites equally, so
    without it a 3-record site puts ten times the noise of a 30-record one into the
    consensus and the smallest sites' noise dominates; weighted by records, as FedAvg
    weights sites, each record counts once. ``"equal"`` is Opacus' plain rule.
    """

    # "toml_doc": the comment node.config writes beside each key of [privacy].
    epsilon: float = field(metadata={"toml_doc": "this site's budget over the whole run"})
    delta: float = field(metadata={"toml_doc": "below 1 / this site's training records"})
    clip: float = field(default=1.0, metadata={"toml_doc": "per-record gradient norm bound"})
    noise_multiplier: float | None = field(
        default=None, metadata={"toml_doc": "σ; default: derived from ε, δ and the DP rounds"}
    )
    accountant: str = field(default="rdp", metadata={"toml_doc": "rdp or prv"})
    secure_mode: bool = field(default=False, metadata={"toml_doc": "Opacus' CSPRNG noise"})
    rounds: int | None = field(
        default=None,
        metadata={
            "toml_doc": "rounds the budget is spread over; default 15% of rounds, ≤ 40 "
            "(a unet model: every round)"
        },
    )
    weight: str = field(
        default="records", metadata={"toml_doc": "records (needs mean_records) or equal"}
    )
    mean_records: float | None = field(
        default=None, metadata={"toml_doc": "the consortium's mean training records per site"}
    )

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise ConfigError(f"dp epsilon must be > 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"dp delta must be in (0, 1), got {self.delta}")
        if not self.clip > 0:
            raise ConfigError(f"dp clip (per-sample gradient norm) must be > 0, got {self.clip}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(f"dp noise multiplier must be > 0, got {self.noise_multiplier}")
        if self.rounds is not None and self.rounds < 1:
            raise ConfigError(f"dp rounds must be at least 1, got {self.rounds}")
        if self.weight not in WEIGHTS:
            raise ConfigError(f"dp weight must be one of {', '.join(WEIGHTS)}: {self.weight!r}")
        if self.mean_records is not None and not self.mean_records > 0:
            raise ConfigError(f"dp mean_records must be > 0, got {self.mean_records}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"dp accountant must be one of {', '.join(ACCOUNTANTS)}: {self.accountant!r}"
            )


def dp_rounds(dp: DpConfig, planned: int) -> int:
    """The rounds the budget is spread over for a run of ``planned`` rounds."""
    if dp.rounds is not None:
        return dp.rounds
    return max(1, min(DEFAULT_DP_CAP, round(DEFAULT_DP_SHARE * planned)))


def every_round(dp: DpConfig, planned: int) -> DpConfig:
    """``dp`` with its budget spread over all ``planned`` rounds, unless it names its
    ``rounds``: the default of pooled central DP-SGD (no mixing to wait for) and of a
    U-Net (:mod:`node.training.segmentation.dp` says why)."""
    return dp if dp.rounds is not None else replace(dp, rounds=max(1, planned))


def for_sites(dp: DpConfig, records: list[int]) -> DpConfig:
    """``dp`` with ``mean_records`` filled in from every site's record count, for the
    simulator and consortium writer, which hold every site's data (a node does not)."""
    if dp.weight != "records" or dp.mean_records is not None:
        return dp
    return replace(dp, mean_records=sum(records) / len(records))


def parse_dp(text: str) -> DpConfig | None:
    """``epsilon=3,delta=1e-5,clip=1.0[,rounds=30][,weight=records|equal][,noise=σ]
    [,accountant=prv][,secure_mode=1]``; ``epsilon=inf`` (or ``off``) means no DP."""
    if text.strip().lower() in ("off", "none", "inf", "epsilon=inf"):
        return None
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not value.strip():
            raise ConfigError(f"bad --dp item {part!r}: expected key=value")
        fields[key.strip().lower()] = value.strip()
    known = {
        "epsilon",
        "delta",
        "clip",
        "noise",
        "accountant",
        "secure_mode",
        "rounds",
        "weight",
        "mean_records",
    }
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown --dp keys {unknown}; accepted: {', '.join(sorted(known))}")
    if "epsilon" not in fields or "delta" not in fields:
        raise ConfigError("--dp needs epsilon=… and delta=…")
    try:
        epsilon = float(fields["epsilon"])
        if math.isinf(epsilon):
            return None
        return DpConfig(
            epsilon=epsilon,
            delta=float(fields["delta"]),
            clip=float(fields.get("clip", 1.0)),
            noise_multiplier=float(fields["noise"]) if "noise" in fields else None,
            accountant=fields.get("accountant", "rdp"),
            secure_mode=fields.get("secure_mode", "0").lower() in ("1", "true", "yes"),
            rounds=int(fields["rounds"]) if "rounds" in fields else None,
            weight=fields.get("weight", "records"),
            mean_records=float(fields["mean_records"]) if "mean_records" in fields else None,
        )
    except ValueError as exc:
        raise ConfigError(f"bad --dp value: {exc}") from None
