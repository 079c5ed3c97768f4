"""What a site's config builds before its first round: data, model, trainer (DP-SGD when
``[privacy]`` is set), gradient tracker, CHOCO state, compressor and consensus step.

Kept apart from the round loop (:mod:`node.runtime`) so that the loop reads as the
protocol, and so that every part a config chooses is built in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from node.config import NodeConfig
from node.errors import ConfigError
from node.exchange.secure.validation_tail import with_tail_room
from node.gossip.choco import ChocoState
from node.gossip.compress import Compressor, stacked
from node.gossip.registry import parse_compressor
from node.gossip.step_guard import StepGuard, step_guard
from node.gossip.tracking import GradientTracker
from node.gossip.validation_stop import (
    ValidationStop,
    split_validation,
    stop_plan,
    validation_sums,
)
from node.state.membership import Membership
from node.state.privacy_ledger import PrivacyLedger
from node.state.site_secrets import dp_seed
from node.training.custom import TrainingLoop
from node.training.data import SiteData, load_site_data
from node.training.features import Featurizer
from node.training.flat import FlatLayout
from node.training.models import SEGMENTATION_MODELS, build_model
from node.training.trainer import BatchedTrainer, LocalTrainer, StackedData, Trainer

if TYPE_CHECKING:
    from node.training.brats.volumes import Case
    from node.training.dp.engine import DpRows, DpTrainer
    from node.training.segmentation.dp import DpSegmentationTrainer
    from node.training.segmentation.metrics import RegionScores
    from node.training.segmentation.trainer import ScoreCache


def _held_out(config: NodeConfig, encoding: Featurizer | None) -> SiteData | None:
    """``[data] eval`` rows, encoded as the training rows are (never by their own stats)."""
    if not config.data.eval_source:
        return None
    return load_site_data(config.data.eval_source, config.data.target, encoding=encoding)


@dataclass
class SiteParts:
    data: SiteData | None  # None: a custom loop holds its own data
    eval: SiteData | None
    model: torch.nn.Module
    layout: FlatLayout
    x0: torch.Tensor  # the shared initial model, from the public seed
    trainer: Trainer
    dp: DpRows | None  # DP-SGD's rows and their accountants, whichever the trainer
    ledger: PrivacyLedger | None
    tracker: GradientTracker | None  # murmur-gt: gossips the stacked [x | v]
    state: ChocoState
    compressor: Compressor
    guard_step: StepGuard | None  # None: a configured γ, kept as it is
    gamma: float
    # The consortium's validation stop and this site's held-back rows (None where it is
    # off: DP, a custom loop, stop_patience 0, a run too short for any stop).
    stop: ValidationStop | None = None
    validation: tuple[torch.Tensor, torch.Tensor] | None = None
    stop_text: str = "off for a custom training loop"  # whether it runs, and why
    skipped: tuple[str, ...] = ()  # brats: one line per case that could not be read
    held_out_cases: tuple[Case, ...] = ()  # brats: the site's own held-out cases
    # brats: the last scoring of the held-out cases (the last round's score and the
    # finish event share it)
    _scored: ScoreCache[list[RegionScores]] | None = None

    @property
    def dim(self) -> int:
        return int(self.state.x.shape[1])

    @classmethod
    def build(
        cls,
        config: NodeConfig,
        index: int,
        membership: Membership,
        loop: TrainingLoop | None = None,
    ) -> SiteParts:
        """``loop``: the site's own training (``[data] source = "custom:NAME"``)."""
        custom = config.data.source.startswith("custom:")
        if custom != (loop is not None):
            raise ConfigError(
                f"[data] source {config.data.source!r}: "
                + (
                    "custom: data is the site's own training loop, given from Python "
                    "(node.training.custom.run_site), not by `murmur node`"
                    if custom
                    else 'a TrainingLoop needs [data] source = "custom:NAME"'
                )
            )
        if config.data.source.startswith("brats:"):
            return cls._brats(config, index, membership)
        given = None if config.data.features is None else Featurizer.load(config.data.features)
        if loop is not None:
            held_out = _held_out(config, given)
            return cls._custom(config, index, loop, held_out, membership)
        data = load_site_data(config.data.source, config.data.target, encoding=given)
        held_out = _held_out(config, data.encoding)
        torch.manual_seed(config.consortium.seed)
        model = build_model(config.train.model, data.x.shape[1], data.n_classes)
        layout = FlatLayout.of(model)
        x0 = layout.to_vector(model).detach()
        fit, validation = (data.x, data.y), None
        window, stop_text = stop_plan(
            config.train.trainer.stop_patience,
            config.train.rounds,
            membership.matrix(),
            private=config.privacy is not None,
        )
        if window is not None:
            fit, validation = split_validation(data.x, data.y, config.consortium.seed, index)
        plain = BatchedTrainer(
            model,
            x0.unsqueeze(0).clone(),
            StackedData.from_parts([fit], torch.device("cpu")),
            config.train.trainer,
            seed=config.consortium.seed,
            first_row=index,
        )
        trainer: LocalTrainer = plain
        dp: DpTrainer | None = None
        if config.privacy is not None:
            from node.training.dp.engine import DpTrainer  # Opacus loads only when used

            # The noise and sampling seed is a secret from the OS CSPRNG (node.state.
            # site_secrets), never the public seed: any member could subtract it.
            dp = DpTrainer(
                plain,
                [fit],
                config.privacy,
                config.train.rounds,
                dp_seed(config.site.state_dir),
            )
            trainer = dp
        parts = cls._gossip(
            config, index, membership, data, held_out, model, layout, x0, trainer, dp
        )
        parts.stop_text = stop_text
        if window is not None:
            parts.stop = ValidationStop(1, config.train.trainer.stop_patience, window)
            parts.validation = validation
        return parts

    @classmethod
    def _brats(cls, config: NodeConfig, index: int, membership: Membership) -> SiteParts:
        """A hospital's BraTS case folders: a U-Net trained on its cases, scored by mean
        Dice on the fifth it holds out (the simulator holds out the same ones)."""
        from node.training.brats import load_site_cases, split_cases
        from node.training.segmentation import parse_patch
        from node.training.segmentation.trainer import SegmentationTrainer, Segmenter

        name = config.train.model.partition(":")[0]
        if name not in SEGMENTATION_MODELS:
            raise ConfigError(
                f"[data] source {config.data.source!r} needs a segmentation model "
                f"([train] model = unet3d:C or unet2d:C), not {config.train.model!r}"
            )
        loaded = load_site_cases(Path(config.data.source.split(":", 1)[1]))
        train, test = split_cases(loaded.cases, config.consortium.seed)
        torch.manual_seed(config.consortium.seed)
        model = build_model(config.train.model, 4, 4)
        layout = FlatLayout.of(model)
        x0 = layout.to_vector(model).detach()
        plain = SegmentationTrainer(
            model,
            x0.unsqueeze(0).clone(),
            [train],
            config.train.trainer,
            parse_patch(config.train.patch, config.train.model),
            seed=config.consortium.seed,
            first_row=index,
        )
        trainer: Segmenter = plain
        dp: DpSegmentationTrainer | None = None
        if config.privacy is not None:
            from node.training.segmentation.dp import DpSegmentationTrainer  # loads Opacus

            # each patient a record; noise and sampling from the site's secret seed
            dp = DpSegmentationTrainer(
                plain, config.privacy, config.train.rounds, dp_seed(config.site.state_dir)
            )
            trainer = dp
        parts = cls._gossip(config, index, membership, None, None, model, layout, x0, trainer, dp)
        parts.stop_text = "off for segmentation (a site's held-back share would be a scan or two)"
        parts.skipped = loaded.skipped
        parts.held_out_cases = tuple(test)
        return parts

    @classmethod
    def _custom(
        cls,
        config: NodeConfig,
        index: int,
        loop: TrainingLoop,
        held_out: SiteData | None,
        membership: Membership,
    ) -> SiteParts:
        x0 = loop.bind(config.consortium.seed)  # the same start at every site
        trainer: LocalTrainer = loop
        dp: DpTrainingLoop | None = None
        if config.privacy is not None:
            from node.training.dp.loop import DpTrainingLoop  # Opacus loads only when used

            # Sampled and noised from the site's secret seed, as the built-in trainer is.
            seed = dp_seed(config.site.state_dir)
            dp = DpTrainingLoop(loop, config.privacy, config.train.rounds, seed)
            trainer = dp
        return cls._gossip(
            config, index, membership, None, held_out, loop.model, loop.layout, x0, trainer, dp
        )

    @classmethod
    def _gossip(
        cls,
        config: NodeConfig,
        index: int,
        membership: Membership,
        data: SiteData | None,
        held_out: SiteData | None,
        model: torch.nn.Module,
        layout: FlatLayout,
        x0: torch.Tensor,
        trainer: Trainer,
        dp: DpRows | None,
    ) -> SiteParts:
        """The gossip side, alike for every trainer: tracker, state, compressor, γ."""
        tracking = config.gossip.method == "murmur-gt"
        tracker = GradientTracker(trainer.params, x0) if tracking else None
        state = tracker.state if tracker else ChocoState.start(trainer.params, x0)
        labels = None if data is None else [data.label_counts]  # for top-k:adaptive
        if labels is None and config.gossip.compressor.startswith("top-k:adaptive"):
            raise ConfigError(
                "[gossip] compressor top-k:adaptive sizes k from the site's label counts, "
                "which a custom: site does not give; use top-k:F"
            )
        seed = config.consortium.seed
        parsed = parse_compressor(config.gossip.compressor, seed, labels, site=index)
        # Under secure aggregation each round leaves the validation tail its room.
        compressor = with_tail_room(
            stacked(parsed, 2 if tracker else 1), config.gossip.secure, seed
        )
        # γ from the public graph, the compressor and the dimension, and a guard that
        # halves it if this site's residuals grow (node.gossip.step_guard).
        guard = None
        gamma = config.gossip.gamma
        if gamma is None:
            guard = step_guard(compressor, state.x.shape[1], membership.matrix(), 1)
            gamma = float(guard.gamma[0])
        return cls(
            data=data,
            eval=held_out,
            model=model,
            layout=layout,
            x0=x0,
            trainer=trainer,
            dp=dp,
            ledger=PrivacyLedger(config.site.state_dir) if dp is not None else None,
            tracker=tracker,
            state=state,
            compressor=compressor,
            guard_step=guard,
            gamma=gamma,
        )

    def validation_sums(self) -> torch.Tensor:
        """(1, 2): this site's summed validation cross-entropy and its number of rows."""
        assert self.validation is not None
        x, y = self.validation
        assert isinstance(self.trainer, LocalTrainer)  # the stop runs for classifiers only
        with torch.no_grad():
            probs = self.trainer.predict_own([x])
        return validation_sums(probs, [y])

    def _case_scores(self) -> list[RegionScores]:
        from node.training.segmentation.trainer import ScoreCache, Segmenter

        trainer = self.trainer
        assert isinstance(trainer, Segmenter)
        if self._scored is None:
            self._scored = ScoreCache()
        return self._scored.get(trainer.params, lambda: trainer.site_scores(self.held_out_cases))

    def regions(self) -> dict[str, list[float]] | None:
        """Segmentation: Dice and HD95 (mm) of WT, TC and ET on the held-out cases, each
        averaged over them (the per-region figures a run report shows); else None."""
        if not self.held_out_cases:
            return None
        from node.training.segmentation.metrics import region_means

        means = region_means(self._case_scores())
        return {"dice": list(means.dice), "hd95": list(means.hd95)}

    def accuracy(self) -> float | None:
        """Held-out accuracy of the current model: mean Dice on the site's held-out cases
        (brats:), on ``[data] eval`` rows when given, else the site's own ``evaluate`` (a
        custom loop), else none."""
        if self.held_out_cases:
            from node.training.segmentation.metrics import mean_dice

            return mean_dice(self._case_scores())
        if self.eval is not None:
            assert isinstance(self.trainer, LocalTrainer)
            with torch.no_grad():
                probs = self.trainer.predict_proba(self.eval.x)[0]
            return float((probs.argmax(1) == self.eval.y).float().mean())
        score = getattr(self.trainer, "score", None)  # a custom loop, with DP or without
        if callable(score):
            result: float | None = score()
            return result
        return None
