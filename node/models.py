"""Model builders by name: ``logistic`` and ``mlp:H1,H2,...`` (GroupNorm-free, no BatchNorm)."""

from __future__ import annotations

from torch import nn

from node.errors import ConfigError

MODEL_NAMES = ("logistic", "mlp:H1[,H2,...]")


def build_model(spec: str, in_features: int, n_classes: int) -> nn.Module:
    """Build a classifier for tabular features; the same spec gives the same architecture."""
    name, _, arg = spec.partition(":")
    if name == "logistic":
        return nn.Linear(in_features, n_classes)
    if name == "mlp":
        try:
            hidden = [int(h) for h in arg.split(",")] if arg else [32]
        except ValueError:
            raise ConfigError(f"bad model {spec!r}: expected mlp:H1,H2 with integers") from None
        if any(h < 1 for h in hidden):
            raise ConfigError(f"bad model {spec!r}: hidden sizes must be positive")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)
    raise ConfigError(f"unknown model {spec!r}; accepted: {', '.join(MODEL_NAMES)}")
