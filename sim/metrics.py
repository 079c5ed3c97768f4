"""Evaluation of K node models on held-out data: accuracy, AUC, consensus."""

from __future__ import annotations

import numpy as np
import torch


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """(K, T, C) probabilities and (T,) labels → (K,) accuracies."""
    return (probs.argmax(-1) == labels.unsqueeze(0)).double().mean(1).cpu().numpy()


def auc(probs: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """(K,) ROC AUC of each model (binary: score = P(class 1)); NaN where undefined."""
    from sklearn.metrics import roc_auc_score

    y = labels.cpu().numpy()
    if len(np.unique(y)) < 2:
        return np.full(probs.shape[0], np.nan)
    scores = probs[..., 1].cpu().numpy()
    return np.array([roc_auc_score(y, row) for row in scores])
