"""Models by name: ``logistic`` and ``mlp:H1,H2,...`` for tables, ``unet3d:C`` and
``unet2d:C`` for MRI segmentation (MONAI, loaded only when one is built;
:mod:`node.training.segmentation.networks`), and any a site registers.

A builder takes the text after the name and the data's shape; every site builds the same
architecture from the same spec, so the flat parameter vectors line up. Models must keep
no unshared state (no BatchNorm: use GroupNorm or LayerNorm); ``node.training.flat`` refuses
buffers it cannot gossip.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from murmur.registry import Registry
from node.errors import ConfigError

ModelBuilder = Callable[[str, int, int], nn.Module]
"""(the spec's argument after ``name:``, input features, classes) → a fresh module."""
MODELS: Registry[ModelBuilder] = Registry("model", ConfigError)


def register_model(name: str, builder: ModelBuilder, form: str | None = None) -> None:
    """Make ``--model name[:ARG]`` / ``[train] model`` build with ``builder``."""
    MODELS.register(name, builder, form)


def _logistic(arg: str, in_features: int, n_classes: int) -> nn.Module:
    if arg:
        raise ConfigError(f"bad model 'logistic:{arg}': logistic takes no argument")
    return nn.Linear(in_features, n_classes)


def _mlp(arg: str, in_features: int, n_classes: int) -> nn.Module:
    try:
        hidden = [int(h) for h in arg.split(",")] if arg else [32]
    except ValueError:
        raise ConfigError(f"bad model 'mlp:{arg}': expected mlp:H1,H2 with integers") from None
    if any(h < 1 for h in hidden):
        raise ConfigError(f"bad model 'mlp:{arg}': hidden sizes must be positive")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def _unet(spatial_dims: int) -> ModelBuilder:
    def build(arg: str, in_channels: int, n_classes: int) -> nn.Module:
        from node.training.segmentation.networks import build_unet

        return build_unet(spatial_dims, arg, in_channels, n_classes)

    return build


register_model("logistic", _logistic)
register_model("mlp", _mlp, "mlp:H1[,H2,...]")
register_model("unet3d", _unet(3), "unet3d[:C]")
register_model("unet2d", _unet(2), "unet2d[:C]")
SEGMENTATION_MODELS = ("unet3d", "unet2d")


def build_model(spec: str, in_features: int, n_classes: int) -> nn.Module:
    """Build the model ``spec`` names; the same spec gives the same architecture."""
    name, _, arg = spec.partition(":")
    return MODELS.get(name, spec)(arg, in_features, n_classes)
