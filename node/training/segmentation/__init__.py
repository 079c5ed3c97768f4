"""Tumour segmentation on MRI with MONAI, the field's own library: U-Nets
(:mod:`.networks`), the loss and the BraTS metrics (:mod:`.metrics`), augmentation
(:mod:`.augment`), whole-volume inference (:mod:`.inference`) and the K-site trainer
(:mod:`.trainer`). MONAI is imported in this package only, and only when a segmentation
model is built."""

from node.errors import ConfigError
from node.training.trainer import TrainConfig

# How a segmentation site trains when nothing is said: Adam (the U-Net's scale differs
# from layer to layer, and Adam needs no per-model step tuning), two 3D patches or
# sixteen 2D slices a step, no validation stop (node.gossip.validation_stop scores
# classifiers). Flags and [train] keys override each.
TRAIN_3D = TrainConfig(optimizer="adam", lr=0.01, batch_size=2, stop_patience=0)
TRAIN_2D = TrainConfig(optimizer="adam", lr=0.01, batch_size=16, stop_patience=0)


def train_defaults(model: str) -> TrainConfig:
    """The training defaults for a segmentation ``model`` spec (``unet3d:…``, ``unet2d:…``)."""
    return TRAIN_2D if model.startswith("unet2d") else TRAIN_3D


def default_patch(model: str) -> tuple[int, int, int]:
    """Training patch by model: 64³ voxels in 3D, 96 × 96 axial slices in 2D."""
    return (96, 96, 1) if model.startswith("unet2d") else (64, 64, 64)


def parse_patch(text: str | None, model: str) -> tuple[int, int, int]:
    """A training patch as ``N`` (a cube, or an N × N slice for 2D) or ``X,Y,Z`` voxels
    (``--patch``, ``[train] patch``); None: the model's default."""
    if text is None:
        return default_patch(model)
    try:
        sides = [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"patch {text!r}: expected N or X,Y,Z in voxels") from None
    flat = model.startswith("unet2d")
    if len(sides) == 1:
        sides = [sides[0], sides[0], 1 if flat else sides[0]]
    from node.training.segmentation.networks import divisor

    step = divisor(2 if flat else 3)
    bad = [s for s in sides[: 2 if flat else 3] if s < step or s % step]
    if len(sides) != 3 or bad or (flat and sides[2] != 1):
        raise ConfigError(
            f"patch {text!r}: sides must be multiples of {step} for {model}"
            + (" and one slice deep (X,Y,1)" if flat else "")
        )
    return sides[0], sides[1], sides[2]
