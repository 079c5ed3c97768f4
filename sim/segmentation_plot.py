"""``segmentation.png``: one held-out slice per site, with the true and each method's
predicted tumour outlines.

Radiologists judge a segmentation by looking at it. Each row is a site, each column a
method; every panel shows the FLAIR slice where the site's first held-out case has most
tumour, the true outlines of whole tumour, tumour core and enhancing tumour drawn solid,
and the method's drawn dashed in the same colours, with that case's Dice in the corner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from node.training.brats.layout import CHANNELS
from node.training.brats.volumes import Case, regions_of
from node.training.segmentation.metrics import REGIONS

COLOURS = {"wt": "#2ca02c", "tc": "#ffbf00", "et": "#d62728"}


def plot_segmentations(
    path: Path, cases: list[Case], predictions: dict[str, list[np.ndarray]]
) -> Path:
    """Write the grid for ``cases`` (one per site) and each method's predicted labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    methods = list(predictions)
    fig, axes = plt.subplots(
        len(cases), len(methods), figsize=(2.6 * len(methods), 2.6 * len(cases)), squeeze=False
    )
    for row, case in enumerate(cases):
        z = int(np.argmax((case.label > 0).sum(axis=(0, 1))))
        truth = regions_of(case.label[:, :, z])
        for col, method in enumerate(methods):
            ax = axes[row][col]
            ax.imshow(case.image[CHANNELS.index("flair"), :, :, z].T, origin="lower", cmap="gray")
            guess = regions_of(predictions[method][row][:, :, z])
            for region, true_mask, predicted_mask in zip(REGIONS, truth, guess, strict=True):
                colour = COLOURS[region]
                if true_mask.any():
                    ax.contour(true_mask.T, levels=[0.5], colors=colour, linewidths=1.2)
                if predicted_mask.any():
                    ax.contour(
                        predicted_mask.T,
                        levels=[0.5],
                        colors=colour,
                        linewidths=1.2,
                        linestyles="dashed",
                    )
            wt_true, wt_guess = truth[0], guess[0]
            overlap = 2 * (wt_true & wt_guess).sum() / max(1, wt_true.sum() + wt_guess.sum())
            ax.text(2, 2, f"WT {overlap:.2f}", color="white", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(method, fontsize=9)
            if col == 0:
                ax.set_ylabel(case.name, fontsize=8)
    handles = [Line2D([], [], color=c, label=r.upper()) for r, c in COLOURS.items()]
    handles += [
        Line2D([], [], color="k", label="truth"),
        Line2D([], [], color="k", linestyle="dashed", label="predicted"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
