"""``murmur sim --dataset brats:DIR``: tumour segmentation in the in-process simulator.

``DIR`` holds one folder per site (``murmur data make-brats`` writes ``site-1``, …), each
with that hospital's BraTS case folders. Every method runs as on tables — the same
gossip, compressors, step guard, faults and byte counts — with the segmentation trainer
(:mod:`node.training.segmentation`) in place of the tabular one, and Dice in place of
accuracy: each site's model is scored on that site's own held-out cases (a fifth of its
cases, chosen by :func:`node.training.brats.split_cases`, as a node would), so the worst
site is the hospital whose scans the consortium serves least well. The curves carry the
mean Dice over the three regions; the final figures give Dice and HD95 per region, mean
over sites and worst site.

``central`` trains one model on every site's training cases pooled, as many steps as
each site and as many patches a step as the whole consortium (K sites' batches), which
is the step FedAvg takes with one local step; ``empty`` is
the score of predicting no tumour anywhere, the floor every method must clear. The
validation stop is off (its held-back share of a site's dozen cases would be one or two
scans). Under ``--dp`` every site trains with DP-SGD, each patient a record
(:mod:`node.training.segmentation.dp`), and ``central`` is central DP-SGD on the pooled
patients.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from node.errors import ConfigError
from node.training.brats import Case, load_site_cases, split_cases
from node.training.segmentation.metrics import (
    REGIONS,
    RegionScores,
    mean_dice,
    region_means,
    score_case,
)
from node.training.segmentation.trainer import ScoreCache, SegmentationTrainer, Segmenter
from node.training.trainer import Trainer
from sim.engine import Simulation, dp_figures
from sim.results import MethodResult, RunSpec, Tick
from sim.validation import SiteValidation
from topology import MatchingSchedule, StaticTopology

CHANNELS, LABELS = 4, 4  # T1, T1ce, T2, FLAIR in; background, NCR, ED, ET out
# each site's scores on its held-out cases, and its prediction of the first of them
Scored = tuple[list[list[RegionScores]], list[np.ndarray]]


@dataclass(frozen=True)
class FederatedCases:
    """Each site's training and held-out cases, and the cases that could not be read."""

    train: list[list[Case]]
    test: list[list[Case]]
    node_names: list[str]
    skipped: list[str]
    folders: list[Path]  # each site's folder: what a real node is given (brats:DIR)

    def label_counts(self) -> list[list[int]]:
        """Voxels of each label at each site (for compressors that weigh by label)."""
        return [
            np.bincount(np.concatenate([c.label.ravel() for c in cases]), minlength=LABELS).tolist()
            for cases in self.train
        ]


def load_brats(
    root: Path, seed: int, report: Callable[[str], None] | None = None
) -> FederatedCases:
    """Every site folder under ``root``, each split into training and held-out cases."""
    if not root.is_dir():
        raise ConfigError(f"brats:{root}: no such folder (expected one folder per site)")
    sites = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(sites) < 2:
        raise ConfigError(
            f"brats:{root}: found {len(sites)} site folder(s); a consortium needs at least 2 "
            "(murmur data make-brats writes site-1, site-2, …)"
        )
    train, test, skipped = [], [], []
    for folder in sites:
        loaded = load_site_cases(folder, None if report is None else _prefixed(report, folder.name))
        skipped += [f"{folder.name}: {line}" for line in loaded.skipped]
        try:
            fit, held = split_cases(loaded.cases, seed)
        except ConfigError as exc:
            raise ConfigError(f"brats:{root}: site {folder.name}: {exc}") from None
        train.append(fit)
        test.append(held)
    return FederatedCases(train, test, [p.name for p in sites], skipped, sites)


def _prefixed(report: Callable[[str], None], site: str) -> Callable[[str], None]:
    return lambda line: report(f"{site}: {line}")


class SegmentationSimulation(Simulation):
    """:class:`sim.engine.Simulation` on BraTS cases: its rounds, Dice for accuracy."""

    def __init__(
        self,
        cases: FederatedCases,
        topology: StaticTopology | MatchingSchedule,
        spec: RunSpec,
        patch: tuple[int, int, int],
    ) -> None:
        name = spec.model.partition(":")[0]
        if name not in ("unet3d", "unet2d"):
            raise ConfigError(
                f"brats data needs a segmentation model (unet3d:C, unet2d:C), not {spec.model!r}"
            )
        self.cases = cases
        self.patch = patch
        self._setup(topology, spec, len(cases.train), CHANNELS, LABELS)
        # method → each site's prediction of its first held-out case, when the run ended
        self.predictions: dict[str, list[np.ndarray]] = {}
        # whole-volume inference is the costliest thing a run does after training
        self._scored: ScoreCache[Scored] = ScoreCache()

    def _segmentation_trainer(
        self, sites: Sequence[Sequence[Case]], batch_size: int | None = None
    ) -> Segmenter:
        """A trainer of one row per entry of ``sites`` (every site's, or central's one
        pooled row); under ``--dp`` DP-SGD with each patient as a record."""
        params = self.x0.unsqueeze(0).repeat(len(sites), 1).contiguous()
        config = self.spec.train
        if batch_size is not None:
            config = replace(config, batch_size=batch_size)
        plain = SegmentationTrainer(self.model, params, sites, config, self.patch, self.spec.seed)
        if self.spec.dp is None:
            return plain
        from node.training.segmentation.dp import DpSegmentationTrainer  # loads Opacus

        dp, mean = self._dp_for([len(cases) for cases in sites])
        # public --seed on purpose, as for tables (Simulation._trainer)
        return DpSegmentationTrainer(
            plain, dp, self.spec.rounds, self.spec.seed, mean, reproducible=True
        )

    def _site_trainer(self, checks: SiteValidation | None) -> Trainer:
        return self._segmentation_trainer(self.cases.train)

    def _site_sizes(self) -> list[int]:
        return [len(cases) for cases in self.cases.train]

    def _validation(self) -> SiteValidation | None:
        return None

    def _site_scores(self, trainer: Segmenter) -> Scored:
        """Site i's held-out cases scored by row i's model (by the one row, for central),
        and each site's prediction of its first held-out case (for the picture,
        :mod:`sim.segmentation_plot`)."""
        return self._scored.get(trainer.params, lambda: self._score_sites(trainer))

    def _score_sites(self, trainer: Segmenter) -> Scored:
        scores, firsts = [], []
        for site, cases in enumerate(self.cases.test):
            row = site if trainer.params.shape[0] == self.n else 0
            predicted = trainer.predict(row, cases)
            firsts.append(predicted[0])
            scores.append(
                [score_case(p, c.label, c.spacing) for p, c in zip(predicted, cases, strict=True)]
            )
        return scores, firsts

    def _scores(self, trainer: Trainer) -> np.ndarray:
        """Each site's Dice (mean of WT, TC, ET) on its own held-out cases."""
        assert isinstance(trainer, Segmenter)
        return np.array([mean_dice(site) for site in self._site_scores(trainer)[0]])

    def _finish(
        self, result: MethodResult, trainer: Trainer, began: float, **extra: float
    ) -> MethodResult:
        assert isinstance(trainer, Segmenter)
        scores, firsts = self._site_scores(trainer)
        self.predictions[result.method] = firsts
        result.final = {
            **finals(scores, self._site_sizes()),
            **dp_figures(trainer),
            "bytes_per_node": result.bytes_per_node[-1] if result.bytes_per_node else 0.0,
            "rounds": self.spec.rounds,
            "wall_s": time.perf_counter() - began,
            **extra,
        }
        return result

    def _run_central(self, tick: Tick | None) -> MethodResult:
        pooled = [c for cases in self.cases.train for c in cases]
        # As many patches a step as the whole consortium, as many steps as each site.
        return self._run_pooled(
            self._segmentation_trainer([pooled], self.n * self.spec.train.batch_size), tick
        )

    def references(self) -> list[MethodResult]:
        """``empty``: no tumour predicted anywhere (what Dice a method must clear)."""
        scores = [
            [score_case(np.zeros_like(c.label), c.label, c.spacing) for c in cases]
            for cases in self.cases.test
        ]
        result = MethodResult("empty")
        result.final = {**finals(scores, self._site_sizes()), "bytes_per_node": 0.0}
        return [result]


def node_finals(
    site_finals: dict[int, dict[str, Any]], cases: FederatedCases
) -> dict[str, float | int | None]:
    """:func:`finals` from real nodes' finish events (each reports its site's Dice and
    HD95 per region, averaged over its held-out cases): the same figures the in-process
    run gives. Sites that did not finish are left out."""
    sites = sorted(i for i, e in site_finals.items() if e.get("regions"))
    if not sites:
        return {}
    scores = [
        [RegionScores(_regions(r["dice"]), _regions(r["hd95"]))]
        for r in (site_finals[i]["regions"] for i in sites)
    ]
    return finals(scores, [len(cases.train[i]) for i in sites])


def _regions(values: Sequence[float]) -> tuple[float, float, float]:
    wt, tc, et = (float(v) for v in values)
    return wt, tc, et


def finals(
    site_scores: list[list[RegionScores]], sizes: list[int]
) -> dict[str, float | int | None]:
    """Dice and HD95 per region: mean over sites of each site's mean over its held-out
    cases, the worst site, and the mean Dice at the site with the fewest training cases."""
    means = [region_means(scores) for scores in site_scores]
    dice = np.array([m.dice for m in means])
    hd95 = np.array([m.hd95 for m in means])
    overall = np.array([mean_dice(scores) for scores in site_scores])
    out: dict[str, float | int | None] = {
        "accuracy_mean": float(overall.mean()),
        "accuracy_min": float(overall.min()),
        "dice_mean": float(overall.mean()),
        "dice_min": float(overall.min()),
        "dice_smallest_site": float(overall[int(np.argmin(sizes))]),
    }
    for r, region in enumerate(REGIONS):
        out[f"dice_{region}"] = float(dice[:, r].mean())
        out[f"dice_{region}_min"] = float(dice[:, r].min())
        out[f"hd95_{region}"] = float(hd95[:, r].mean())
        out[f"hd95_{region}_max"] = float(hd95[:, r].max())
    return out
