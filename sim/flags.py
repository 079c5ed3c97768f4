"""``murmur sim``'s flags: every training, gossip, fault and privacy setting a run takes.

The defaults are the node's own (``TrainConfig``, the ``[gossip]`` section), so a flag
left out means what a site.toml key left out means (node.config).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from node.config import DEFAULT_COMPRESSOR, SECURE_MODES, SPLITS, TrainSection
from node.errors import ConfigError
from node.gossip.registry import compressor_forms
from node.training.dp_config import DpConfig, parse_dp
from node.training.models import MODELS
from node.training.trainer import OPTIMIZERS, SCHEDULES, TrainConfig
from sim.methods import METHOD_NAMES
from topology import TOPOLOGY_NAMES

PARTITIONS = SPLITS
TRAIN = TrainConfig()  # the flags' defaults are the node's: one source


def gamma_arg(text: str) -> float | None:
    """``auto`` or a step in (0, 1]; argparse prints the error on one line, exit 2."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"γ must be 'auto' or a number in (0, 1], got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--backend",
        choices=["inprocess", "process"],
        default="inprocess",
        help="inprocess (vectorised, virtual clock) or process (real node processes over "
        "libp2p on 127.0.0.1; murmur and dpsgd run there, the references in-process)",
    )
    add("--nodes", type=int, default=16, help="number of simulated sites")
    add(
        "--topology",
        default="ring",
        help=", ".join(TOPOLOGY_NAMES),
    )
    add(
        "--compressor",
        default=DEFAULT_COMPRESSOR,
        help=compressor_forms(),
    )
    add("--rounds", type=int, default=200)
    add(
        "--dataset",
        default="breast-cancer",
        help="breast-cancer, ncctg-lung, csv:PATH, or brats:DIR (one folder of BraTS cases "
        "per site; murmur data make-brats)",
    )
    add("--target", help="label column of a CSV dataset (must be binary)")
    add("--site-column", help="column naming each row's site, for --split natural")
    add(
        "--split",
        choices=PARTITIONS,
        default="auto",
        help="auto: natural when the data has sites, dirichlet when --alpha is given, else iid",
    )
    add("--alpha", type=float, help="Dirichlet label-skew concentration (smaller: more skew)")
    add(
        "--methods",
        default="central,local,fedavg,dpsgd,murmur",
        help=f"comma list of {', '.join(METHOD_NAMES)}",
    )
    add(
        "--model",
        default=None,
        help=f"{', '.join(MODELS.forms())} (default {TrainSection.model}; unet3d:8 for brats)",
    )
    add(
        "--optimizer",
        default=None,
        choices=OPTIMIZERS,
        help=f"default {TRAIN.optimizer} (adam for unet*)",
    )
    add("--lr", type=float, default=None, help=f"default {TRAIN.lr} (0.01 for unet*)")
    add("--lr-schedule", default=TRAIN.lr_schedule, choices=SCHEDULES)
    add("--momentum", type=float, default=TRAIN.momentum)
    add("--nesterov", action="store_true", default=TRAIN.nesterov)
    add("--weight-decay", type=float, default=TRAIN.weight_decay, help="L2 weight decay")
    add("--prox-mu", type=float, default=TRAIN.prox_mu, help="FedProx μ (0: off)")
    add("--local-steps", type=int, default=TRAIN.local_steps)
    add(
        "--stop-patience",
        type=int,
        default=None,
        help="gossip methods hold back 20%% of each site's rows and stop training (mixing "
        "goes on) after N rounds without a better consortium validation loss; 0: never. "
        f"Off under --dp and for segmentation; default {TRAIN.stop_patience}",
    )
    add(
        "--batch-size",
        type=int,
        default=None,
        help=f"default {TRAIN.batch_size} (unet3d: 2 patches, unet2d: 16 slices)",
    )
    add(
        "--time-budget",
        type=float,
        help="seconds of local training per round instead of --local-steps",
    )
    add(
        "--gamma",
        type=gamma_arg,
        default=None,
        help="CHOCO consensus step γ in (0, 1] for murmur; default auto: derived from the "
        "graph's spectrum, the compressor's contraction and the dimension, with a per-site "
        "back-off when its residuals grow",
    )
    add(
        "--secure",
        choices=SECURE_MODES,
        default="off",
        help="secure neighbourhood aggregation for murmur: ckks (real CKKS ciphertexts under "
        "each receiver's key), plain (same protocol, no encryption: fast protocol checks), off",
    )
    add(
        "--dp",
        type=_dp_arg,
        default=None,
        help="DP-SGD per site, e.g. epsilon=3,delta=1e-5,clip=1.0,rounds=30 (rounds: spread "
        "the budget over the first R rounds, then only mix; also weight=records|equal, "
        "noise=σ, accountant=rdp|prv, secure_mode=1); central trains DP-SGD on the pooled data",
    )
    add(
        "--dp-sweep",
        help="comma list of ε (inf: no DP), e.g. 1,3,8,inf: accuracy vs ε of murmur with DP, "
        "central DP-SGD and the non-private references, with a plot; δ and clip from --dp",
    )
    add(
        "--eval-every",
        type=int,
        default=None,
        help="score every N rounds (default 1; a tenth of the rounds for segmentation)",
    )
    add(
        "--patch",
        help="segmentation training patch in voxels: N or X,Y,Z (default 64 for unet3d, "
        "96,96,1 for unet2d)",
    )
    add("--device", default="auto")
    add("--seed", type=int, default=0)
    add("--out", type=Path, default=Path("runs/sim"))
    add("--drop", type=float, default=0.0, help="probability that a frame is lost")
    add("--delay", type=float, default=0.0, help="mean frame latency in virtual ms")
    add("--deadline", type=float, default=1000.0, help="round deadline in virtual ms")
    add("--slow", action="append", default=[], help="NODE:FACTOR straggler (repeatable)")
    add("--kill", action="append", default=[], help="NODE@ROUND[:RESTART] crash (repeatable)")
    add(
        "--partition",
        action="append",
        default=[],
        help="A,B|C,D@R1:R2: the two groups cannot talk in rounds [R1, R2) (process backend)",
    )
    add(
        "--wan",
        help="process backend: each site in its own network namespace, links shaped by "
        "delay=MS,jitter=MS,rate=MBIT,loss=PCT (e.g. delay=40,jitter=10,rate=50,loss=1; "
        "needs root)",
    )


def _dp_arg(text: str) -> DpConfig | None:
    try:
        return parse_dp(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
