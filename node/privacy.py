"""A site's differential-privacy budget: ``[privacy]`` in the node config, ``--dp`` in
the simulator. Plain data, no Opacus: only :mod:`node.dp` imports that, when DP is on."""

from __future__ import annotations

import math
from dataclasses import dataclass

from node.errors import ConfigError

ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class DpConfig:
    """A site's privacy budget and how DP-SGD spends it."""

    epsilon: float
    delta: float
    clip: float = 1.0
    noise_multiplier: float | None = None  # None: derived from (ε, δ) and the planned steps
    accountant: str = "rdp"
    secure_mode: bool = False

    def __post_init__(self) -> None:
        if not self.epsilon > 0:
            raise ConfigError(f"dp epsilon must be > 0, got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"dp delta must be in (0, 1), got {self.delta}")
        if not self.clip > 0:
            raise ConfigError(f"dp clip (per-sample gradient norm) must be > 0, got {self.clip}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(f"dp noise multiplier must be > 0, got {self.noise_multiplier}")
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"dp accountant must be one of {', '.join(ACCOUNTANTS)}: {self.accountant!r}"
            )


def parse_dp(text: str) -> DpConfig | None:
    """``epsilon=3,delta=1e-5,clip=1.0[,noise=σ][,accountant=prv][,secure_mode=1]``;
    ``epsilon=inf`` (or ``off``) means no DP."""
    if text.strip().lower() in ("off", "none", "inf", "epsilon=inf"):
        return None
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not value.strip():
            raise ConfigError(f"bad --dp item {part!r}: expected key=value")
        fields[key.strip().lower()] = value.strip()
    known = {"epsilon", "delta", "clip", "noise", "accountant", "secure_mode"}
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
        )
    except ValueError as exc:
        raise ConfigError(f"bad --dp value: {exc}") from None
