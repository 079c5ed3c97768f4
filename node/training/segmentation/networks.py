"""U-Nets for BraTS: ``unet3d:C`` and ``unet2d:C`` (C, the first level's channels).

MONAI's residual U-Net (Kerfoot et al. 2018), five levels in 3D and four in 2D, channels
doubling at each. Normalisation is instance norm with learnable scale and shift: batch
norm keeps running statistics per site that gossip cannot average (and that leak under
DP), while instance norm normalises each scan by itself, which is also what removes a
scanner's intensity scale. Four output channels, a softmax over background, necrotic
core, edema and enhancing tumour (the canonical labels of :mod:`node.training.brats`),
trained with Dice + cross-entropy; the scored regions (whole tumour, tumour core,
enhancing tumour) are unions of the predicted labels.

Sizes: ``unet3d:8`` 1.2 M parameters, ``unet3d:16`` 4.8 M; ``unet2d:16`` 0.40 M,
``unet2d:32`` 1.6 M.
"""

from __future__ import annotations

from monai.networks.nets import UNet
from torch import nn

from node.errors import ConfigError

LEVELS = {3: 5, 2: 4}
DEFAULT_CHANNELS = {3: 16, 2: 32}


def build_unet(spatial_dims: int, arg: str, in_channels: int, out_channels: int) -> nn.Module:
    """A residual U-Net; ``arg`` is the first level's channel count (text, may be empty)."""
    name = f"unet{spatial_dims}d"
    try:
        base = int(arg) if arg else DEFAULT_CHANNELS[spatial_dims]
    except ValueError:
        raise ConfigError(f"bad model '{name}:{arg}': expected {name}:C, C an integer") from None
    if base < 2:
        raise ConfigError(f"bad model '{name}:{arg}': at least 2 channels")
    levels = LEVELS[spatial_dims]
    channels = tuple(base * 2**level for level in range(levels))
    net: nn.Module = UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=channels,
        strides=(2,) * (levels - 1),
        num_res_units=2,
        norm=("instance", {"affine": True}),
    )
    return net


def divisor(spatial_dims: int) -> int:
    """Patch sides must be multiples of this (the U-Net halves them ``levels − 1`` times)."""
    return int(2 ** (LEVELS[spatial_dims] - 1))
