"""A flat float32 view of a model's parameters.

Gossip, compression and encryption all act on one vector per model. ``FlatLayout`` maps
parameter names to slices of that vector, so a stack of K models is one (K, d) tensor
and each model's parameters are zero-copy views into its row. Training K models at once
(the in-process simulator) and one model (a site) share the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from node.errors import IncompatibleModelError

_STATEFUL_NORMS = (nn.modules.batchnorm._BatchNorm,)


@dataclass(frozen=True)
class FlatLayout:
    """Names, shapes and offsets of a model's parameters inside a flat vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    offsets: tuple[int, ...]
    dim: int

    @classmethod
    def of(cls, model: nn.Module) -> FlatLayout:
        check_gossipable(model)
        names, shapes, offsets = [], [], []
        offset = 0
        for name, param in model.named_parameters():
            names.append(name)
            shapes.append(param.shape)
            offsets.append(offset)
            offset += param.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), offset)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parameter views into ``flat`` of shape (K, d): each view has shape (K, *shape)."""
        k = flat.shape[0]
        return {
            name: flat[:, off : off + shape.numel()].view(k, *shape)
            for name, shape, off in zip(self.names, self.shapes, self.offsets, strict=True)
        }

    def to_vector(self, model: nn.Module) -> torch.Tensor:
        """The model's parameters as one detached float32 vector of length d."""
        params = dict(model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1).float() for n in self.names])


def check_gossipable(model: nn.Module) -> None:
    """Refuse models with hidden per-site state that gossip would not share."""
    for name, module in model.named_modules():
        if isinstance(module, _STATEFUL_NORMS):
            raise IncompatibleModelError(
                f"layer {name or '<root>'} is {type(module).__name__}: its running statistics "
                "are per-site state that gossip cannot average (and leak data under DP); "
                "use nn.GroupNorm or nn.InstanceNorm instead"
            )
    if not any(True for _ in model.parameters()):
        raise IncompatibleModelError("the model has no trainable parameters")
