"""The segmentation workload's parts: MONAI U-Nets, the BraTS scores, whole-volume
inference, augmentation, and the K-site trainer's contract with gossip."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from node.errors import ConfigError
from node.training.brats import split_cases
from node.training.brats.layout import ED, ET, NCR
from node.training.brats.volumes import Case
from node.training.flat import FlatLayout
from node.training.models import build_model
from node.training.segmentation.augment import augment
from node.training.segmentation.inference import predict_labels
from node.training.segmentation.metrics import score_case
from node.training.segmentation.trainer import SegmentationTrainer
from node.training.trainer import TrainConfig

CPU = torch.device("cpu")


def toy_case(name: str, seed: int, shape: tuple[int, int, int] = (20, 20, 16)) -> Case:
    """A case whose lesion is visible: FLAIR bright over edema, T1ce over the rim."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    c = rng.integers(6, 10, size=3)
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    d = np.linalg.norm(grid - c, axis=-1)
    label[d < 5] = ED
    label[d < 3] = ET
    label[d < 1.5] = NCR
    image = rng.normal(0, 0.3, size=(4, *shape)).astype(np.float32)
    image[3] += 2.0 * (label > 0)
    image[1] += 2.0 * (label == ET)
    image[0] -= 1.5 * (label == NCR)
    return Case(name, image, label, np.ones(shape, dtype=bool), (1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    ("spec", "low", "high"),
    [("unet3d:8", 1.0e6, 1.5e6), ("unet3d:16", 4.5e6, 5.0e6), ("unet2d:16", 0.3e6, 0.5e6)],
)
def test_unets_have_the_sizes_the_docs_give_and_no_batch_norm(
    spec: str, low: float, high: float
) -> None:
    model = build_model(spec, 4, 4)
    assert low <= FlatLayout.of(model).dim <= high  # FlatLayout refuses BatchNorm
    assert not any("BatchNorm" in type(m).__name__ for m in model.modules())


@pytest.mark.parametrize("spec", ["unet3d:x", "unet3d:1", "unet2d:0"])
def test_bad_unet_specs_are_clear_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match="bad model"):
        build_model(spec, 4, 4)


def test_scores_follow_the_brats_conventions() -> None:
    truth = np.zeros((10, 10, 10), dtype=np.uint8)
    truth[3:6, 3:6, 3:6] = ET
    predicted = np.zeros_like(truth)
    predicted[3:7, 3:6, 3:6] = ET
    scores = score_case(predicted, truth, (1.0, 1.0, 2.0))
    # 27 true voxels, 36 predicted, 27 shared: Dice 54/63 in every region (ET ⊂ TC ⊂ WT)
    assert scores.dice == pytest.approx((54 / 63,) * 3)
    # the extra slab is one voxel (1 mm) along x: HD95 1 mm in spite of 2 mm along z
    assert scores.hd95 == pytest.approx((1.0,) * 3)
    edema_only = np.where(truth > 0, ED, 0).astype(np.uint8)
    partial = score_case(edema_only, truth, (1.0, 1.0, 1.0))
    assert partial.dice[0] == pytest.approx(1.0)  # WT found, TC and ET missed entirely
    assert partial.dice[1:] == (0.0, 0.0)
    assert partial.hd95[1] == pytest.approx(np.sqrt(300))  # the volume's diagonal
    nothing = score_case(np.zeros_like(truth), np.zeros_like(truth), (1.0, 1.0, 1.0))
    assert nothing.dice == (1.0, 1.0, 1.0) and nothing.hd95 == (0.0, 0.0, 0.0)


def _channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """A 'model' whose logits are its input channels: labels = argmax over channels."""
    return x * 3.0


@pytest.mark.parametrize("patch", [(8, 8, 8), (8, 8, 1)])
def test_sliding_windows_reassemble_the_whole_volume(patch: tuple[int, int, int]) -> None:
    case = toy_case("c", 0, shape=(19, 13, 11))  # not a multiple of the patch anywhere
    labels = predict_labels(_channel_argmax, case.image, patch, CPU)
    assert labels.shape == case.label.shape
    assert np.array_equal(labels, case.image.argmax(0))


def test_augmentation_is_seeded_and_keeps_labels_valid() -> None:
    case = toy_case("c", 1)
    image, label = case.image[:, :16, :16, :16], case.label[:16, :16, :16]
    a = augment(image, label, 7)
    b = augment(image, label, 7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].shape == image.shape and a[1].shape == label.shape
    assert set(np.unique(a[1])) <= {0, NCR, ED, ET}
    differ = [not np.array_equal(augment(image, label, s)[0], image) for s in range(8)]
    assert any(differ)
    flat_image, flat_label = augment(image[..., :1], label[..., :1], 3)
    assert flat_image.shape == (4, 16, 16, 1) and flat_label.shape == (16, 16, 1)


def test_held_out_cases_do_not_depend_on_reading_order() -> None:
    cases = [toy_case(f"case-{i}", i, shape=(4, 4, 4)) for i in range(7)]
    train, test = split_cases(cases, seed=5)
    _, again_test = split_cases(list(reversed(cases)), seed=5)
    assert [c.name for c in test] == [c.name for c in again_test]
    assert len(test) == 1 and len(train) == 6
    assert {c.name for c in train} | {c.name for c in test} == {c.name for c in cases}
    with pytest.raises(ConfigError, match="at least 2 usable cases"):
        split_cases(cases[:1], seed=0)


def _trainer(sites: list[list[Case]], first_row: int = 0, **config: object) -> SegmentationTrainer:
    torch.manual_seed(0)
    model = build_model("unet2d:4", 4, 4)
    layout = FlatLayout.of(model)
    params = layout.to_vector(model).unsqueeze(0).repeat(len(sites), 1).contiguous()
    settings = TrainConfig(optimizer="adam", lr=0.01, batch_size=4, stop_patience=0)
    settings = TrainConfig(**{**settings.__dict__, **config})
    return SegmentationTrainer(
        model, params, sites, settings, (16, 16, 1), seed=3, first_row=first_row
    )


def test_a_site_draws_the_same_patches_alone_or_among_others() -> None:
    a = [toy_case("a", 0)]
    b = [toy_case("b1", 1), toy_case("b2", 2)]
    together = _trainer([a, b])
    alone = _trainer([b], first_row=1)
    for _ in range(3):
        x1, y1 = together.batch(1)
        x2, y2 = alone.batch(0)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        together.draws += 1
        alone.draws += 1
    assert x1.shape == (4, 4, 16, 16) and y1.shape == (4, 1, 16, 16)


def test_training_lowers_the_loss_and_leaves_inactive_sites_alone() -> None:
    sites = [[toy_case("a", 0), toy_case("b", 1)], [toy_case("c", 2)]]
    trainer = _trainer(sites)
    before = trainer.params.clone()
    first = trainer.train(torch.tensor([True, False])).loss[0]
    assert torch.equal(trainer.params[1], before[1])
    assert not torch.equal(trainer.params[0], before[0])
    for _ in range(25):
        last = trainer.train().loss
    assert last[0] < 0.7 * first
    restored = _trainer(sites)
    restored.load_state_dict(trainer.state_dict())
    assert restored.draws == trainer.draws


def test_dp_clips_each_patients_gradient_and_stops_at_its_budget() -> None:
    """DP-SGD with each case a record: with every case sampled (batch = cases), noise
    negligible and SGD at step 1, one step moves the model by the mean of the clipped
    per-case gradients, so by at most ``clip``; an unclipped step of an untrained U-Net
    moves it by far more. The budget is never overspent: the row stops training."""
    from node.training.dp_config import DpConfig
    from node.training.segmentation.dp import DpSegmentationTrainer

    sites = [[toy_case("a", 0), toy_case("b", 1), toy_case("c", 2)]]
    plain = _trainer(sites, optimizer="sgd", lr=1.0, batch_size=3)
    before = plain.params.clone()
    plain.train()  # a plain step, for scale
    free_step = float((plain.params - before).norm())
    clip = 1e-3
    inner = _trainer(sites, optimizer="sgd", lr=1.0, batch_size=3)
    dp = DpConfig(epsilon=1e30, delta=1e-2, clip=clip, noise_multiplier=1e-7, weight="equal")
    private = DpSegmentationTrainer(inner, dp, planned_rounds=4, seed=5, reproducible=True)
    assert private.rows[0].sample_rate == 1.0
    start = private.params.clone()
    with warnings.catch_warnings():  # σ ≈ 0 spends an unbounded ε, as the accountant says
        warnings.filterwarnings("ignore", "Optimal order is the smallest alpha")
        private.train()
    moved = float((private.params - start).norm())
    assert 0 < moved <= clip * (1 + 1e-4) and free_step > 100 * clip
    assert private.records[0].draws > 3  # one fresh patch per sampled case (plus Opacus' probe)

    budget = DpConfig(epsilon=2.0, delta=1e-2, clip=1.0, weight="equal", rounds=3)
    tight = DpSegmentationTrainer(_trainer(sites), budget, planned_rounds=3, seed=5)
    for _ in range(6):
        tight.train()
    assert tight.spent == [True] and tight.epsilon() <= 2.0
    frozen = tight.params.clone()
    tight.train()
    assert torch.equal(tight.params, frozen)
    again = DpSegmentationTrainer(_trainer(sites), budget, planned_rounds=3, seed=5)
    again.load_state_dict(tight.state_dict())
    assert again.records[0].draws == tight.records[0].draws
    assert again.epsilon() == pytest.approx(tight.epsilon())


def test_a_unet_spreads_its_dp_budget_over_every_planned_round_by_default() -> None:
    """The tabular default (first 15% of the rounds, at most 40) starves a U-Net of the
    steps it needs; a named ``rounds`` still wins."""
    from node.training.dp_config import DpConfig, dp_rounds
    from node.training.segmentation.dp import DpSegmentationTrainer

    sites = [[toy_case("a", 0), toy_case("b", 1), toy_case("c", 2)]]
    default = DpConfig(epsilon=8.0, delta=1e-2, clip=1.0, weight="equal")
    assert dp_rounds(default, 150) == 22  # what a table's model would get
    spread = DpSegmentationTrainer(_trainer(sites), default, planned_rounds=150, seed=5)
    assert dp_rounds(spread.dp, 150) == 150
    named = DpConfig(epsilon=8.0, delta=1e-2, clip=1.0, weight="equal", rounds=30)
    kept = DpSegmentationTrainer(_trainer(sites), named, planned_rounds=150, seed=5)
    assert dp_rounds(kept.dp, 150) == 30
    # the same ε over more steps: more noise per step
    assert spread.rows[0].noise_multiplier > kept.rows[0].noise_multiplier


def test_an_empty_poisson_batch_still_takes_a_noised_step() -> None:
    """Poisson sampling draws no patient at all in some steps (often, at a dozen cases
    and a batch of two); the step is still taken, with noise only and no forward pass (a
    U-Net's instance norm cannot take an empty batch), and counted by the accountant."""
    from node.training.dp_config import DpConfig
    from node.training.segmentation.dp import DpSegmentationTrainer

    sites = [[toy_case("a", 0), toy_case("b", 1), toy_case("c", 2)]]
    dp = DpConfig(epsilon=50.0, delta=1e-2, clip=1.0, noise_multiplier=1.0, weight="equal")
    private = DpSegmentationTrainer(_trainer(sites, batch_size=1), dp, 10, seed=5)
    row = private.rows[0]
    row._batch = lambda: (  # type: ignore[method-assign]
        torch.zeros(0, 4, 16, 16),
        torch.zeros(0, 1, 16, 16, dtype=torch.long),
    )
    before = [p.detach().clone() for p in row.module.parameters()]
    assert math.isnan(row.step())
    after = list(row.module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert row.steps_taken == 1
