"""Detection and classification metrics."""

from __future__ import annotations

import numpy as np


def detection_metrics(flagged: np.ndarray, true_errors: np.ndarray) -> dict:
    """Precision, recall and F1 of a boolean flag vector against the true label errors.

    Parameters
    ----------
    flagged, true_errors : np.ndarray
        bool of shape (N,).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (0 where undefined), ``tp``, ``fp``, ``fn``.
    """
    flagged, true_errors = np.asarray(flagged, bool), np.asarray(true_errors, bool)
    tp = int(np.sum(flagged & true_errors))
    fp = int(np.sum(flagged & ~true_errors))
    fn = int(np.sum(~flagged & true_errors))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def error_auroc(label_quality: np.ndarray, true_errors: np.ndarray) -> float | None:
    """AUROC of ``label_quality`` (low = suspicious) for separating true errors; None if one class is absent."""
    from sklearn.metrics import roc_auc_score

    true_errors = np.asarray(true_errors, bool)
    if true_errors.all() or not true_errors.any():
        return None
    return float(roc_auc_score(true_errors, -np.asarray(label_quality, dtype=np.float64)))



def error_average_precision(label_quality: np.ndarray, true_errors: np.ndarray) -> float | None:
    """Average precision of ``label_quality`` (low = suspicious) for the true errors: the area under the
    precision-recall curve of the ranked list, what a reviewer reading from the top feels. None without errors."""
    from sklearn.metrics import average_precision_score

    true_errors = np.asarray(true_errors, bool)
    if not true_errors.any():
        return None
    return float(average_precision_score(true_errors, -np.asarray(label_quality, dtype=np.float64)))


def recall_at_k(label_quality: np.ndarray, true_errors: np.ndarray, k: int | None = None) -> float | None:
    """Share of the true errors among the ``k`` lowest-quality examples (default k = the number of true
    errors, where recall equals precision). Ties in order of index. None without errors."""
    true_errors = np.asarray(true_errors, bool)
    n_err = int(true_errors.sum())
    if n_err == 0:
        return None
    k = n_err if k is None else int(k)
    top = np.argsort(np.asarray(label_quality, dtype=np.float64), kind="stable")[:k]
    return float(true_errors[top].sum() / n_err)
