"""The pooled references every method is measured against: a central model trained to
convergence, a scikit-learn logistic regression, and the majority class.

``central`` pools every site's training rows (what the consortium cannot do) and trains
the simulation's own model with the simulation's optimizer until a held-back validation
share of the pooled rows stops improving: constant learning rate, one check per epoch,
stopped after PATIENCE epochs without improvement (at most MAX_EPOCHS). The epoch with the
best validation loss is then trained again from the same start on every pooled row, so
the reference sees all the data the sites hold, as the scikit-learn one does. It does not
depend on the number of gossip rounds: a longer run is compared with the same reference.
``pooled-logreg`` is what a user would try first with two lines of scikit-learn on the
same pooled rows (``LogisticRegressionCV``: the inverse regularisation chosen by 5-fold
cross-validation on log-loss). ``majority`` always
predicts the pooled training set's most frequent class: accuracy below it means a model
learned nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from node.training.trainer import BatchedTrainer, StackedData, TrainConfig

VALIDATION_SHARE = 0.2
PATIENCE = 25
MAX_EPOCHS = 1000


@dataclass(frozen=True)
class Fit:
    """The pooled model: ``best_epoch`` epochs on every pooled row."""

    trainer: BatchedTrainer
    epochs: int
    best_epoch: int
    validation_loss: float


def validation_split(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (fit, validation) row indices of the pooled training rows."""
    rng = np.random.default_rng(seed + 101)
    fit, held = [], []
    y = labels.cpu().numpy()
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        n_val = round(VALIDATION_SHARE * len(rows)) if len(rows) > 1 else 0
        held.extend(rows[:n_val].tolist())
        fit.extend(rows[n_val:].tolist())
    return torch.tensor(sorted(fit)), torch.tensor(sorted(held))


def train_central(
    model: nn.Module,
    x0: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    seed: int,
    device: torch.device,
) -> Fit:
    """Train ``model`` from ``x0`` on the pooled rows with early stopping (module doc)."""
    fit_rows, val_rows = validation_split(labels, seed)
    if len(val_rows) == 0:
        val_rows = fit_rows
    val_x, val_y = features[val_rows].to(device), labels[val_rows].to(device)
    trainer = _epoch_trainer(model, x0, features[fit_rows], labels[fit_rows], config, seed, device)
    best_loss, best_epoch, epoch = math.inf, 0, 0
    while epoch < MAX_EPOCHS and epoch - best_epoch < PATIENCE:
        trainer.train()
        epoch += 1
        with torch.no_grad():
            probs = trainer.predict_proba(val_x)[0].clamp_min(1e-12)
            loss = float(nn.functional.nll_loss(probs.log(), val_y))
        if loss < best_loss:
            best_loss, best_epoch = loss, epoch
    final = _epoch_trainer(model, x0, features, labels, config, seed, device)
    for _ in range(max(1, best_epoch)):
        final.train()
    return Fit(final, epoch, best_epoch, best_loss)


def _epoch_trainer(
    model: nn.Module,
    x0: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    seed: int,
    device: torch.device,
) -> BatchedTrainer:
    """A one-row trainer whose ``train()`` is one epoch at a constant learning rate."""
    steps = max(1, math.ceil(len(labels) / config.batch_size))
    epoch = replace(config, lr_schedule="constant", local_steps=steps, time_budget_s=None)
    data = StackedData.from_parts([(features.to(device), labels.to(device))], device)
    return BatchedTrainer(model, x0.unsqueeze(0).clone(), data, epoch, seed)


@dataclass(frozen=True)
class Reference:
    accuracy: float
    auc: float | None


def pooled_logreg(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
) -> Reference:
    """scikit-learn's cross-validated logistic regression on the pooled rows."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import roc_auc_score

    x, y = train_x.cpu().numpy(), train_y.cpu().numpy()
    folds = int(min(5, np.bincount(y).min())) if len(np.unique(y)) > 1 else 0
    if folds < 2:
        return majority(train_y, test_y)
    model = LogisticRegressionCV(
        Cs=10,
        cv=folds,
        scoring="neg_log_loss",
        max_iter=5000,
        l1_ratios=(0.0,),
        use_legacy_attributes=False,
    )
    model.fit(x, y)
    tx, ty = test_x.cpu().numpy(), test_y.cpu().numpy()
    accuracy = float((model.predict(tx) == ty).mean())
    auc = None
    if len(np.unique(ty)) == 2 and model.classes_.size == 2:
        auc = float(roc_auc_score(ty, model.predict_proba(tx)[:, 1]))
    return Reference(accuracy, auc)


def majority(train_y: torch.Tensor, test_y: torch.Tensor) -> Reference:
    """Always the pooled training set's most frequent class."""
    top = int(torch.bincount(train_y).argmax())
    return Reference(float((test_y == top).double().mean()), 0.5)
