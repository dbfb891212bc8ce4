"""INCV's theory of noisy held-out predictions (Chen et al. 2019, section 3): what it predicts and what a
held-out set measures. The theory stage (:mod:`cleanpipe.stages.theory`) compares the two on a run's data.
"""

from __future__ import annotations

import numpy as np


def predicted_held_out(transition: np.ndarray, class_prior: np.ndarray) -> dict:
    """What INCV's theory predicts for a network trained on noisy labels and scored on unseen data.

    The assumption (Chen et al. 2019, section 3): the network's prediction ŷ follows the
    noise, ``P(ŷ = j | y* = i) = T[i, j]``, independently of the example's noisy label ỹ.

    Parameters
    ----------
    transition : np.ndarray
        float (K, K), row-stochastic: ``T[i, j] = P(ỹ = j | y* = i)`` (the transpose of
        ``noise/noise_matrix.npy``).
    class_prior : np.ndarray
        float (K,): ``P(y* = i)``.

    Returns
    -------
    dict
        ``noisy_accuracy`` P(ŷ = ỹ) = Σ_i π_i Σ_j T_ij²; ``label_precision`` P(ỹ = y* | ŷ = ỹ);
        ``label_recall`` P(ŷ = ỹ | ỹ = y*); ``clean_accuracy`` P(ŷ = y*) = Σ_i π_i T_ii. For
        symmetric noise these are the paper's closed forms (1-ε)² + ε²/(c-1), (1-ε)²/that, 1-ε, 1-ε;
        for pair-flip (1-ε)² + ε², (1-ε)²/that, 1-ε, 1-ε.
    """
    T = np.asarray(transition, dtype=np.float64)
    pi = np.asarray(class_prior, dtype=np.float64) / np.sum(class_prior)
    diag = np.diag(T)
    hit = float(pi @ (T**2).sum(axis=1))
    hit_and_clean = float(pi @ diag**2)
    clean = float(pi @ diag)
    return {
        "noisy_accuracy": hit,
        "label_precision": hit_and_clean / hit if hit > 0 else 0.0,
        "label_recall": hit_and_clean / clean if clean > 0 else 0.0,
        "clean_accuracy": clean,
    }


def closed_form(kind: str, rate: float, n_classes: int) -> dict | None:
    """The paper's closed forms (Chen et al. 2019, section 3) for ``symmetric`` and ``pairflip`` noise of rate ε; None otherwise."""
    e, c = float(rate), n_classes
    if kind == "symmetric":
        hit = (1 - e) ** 2 + e**2 / (c - 1)
    elif kind == "pairflip":
        hit = (1 - e) ** 2 + e**2
    else:
        return None
    return {"noisy_accuracy": hit, "label_precision": (1 - e) ** 2 / hit if hit > 0 else 0.0,
            "label_recall": 1 - e, "clean_accuracy": 1 - e}


def measured_held_out(predicted: np.ndarray, noisy: np.ndarray, true: np.ndarray, n_classes: int) -> tuple[dict, np.ndarray]:
    """The same four numbers measured on held-out examples, and their confusion matrix.

    Parameters
    ----------
    predicted, noisy, true : np.ndarray
        int (n,): the network's top-1 prediction, the noisy label and the true label.

    Returns
    -------
    metrics : dict
        As :func:`predicted_held_out` (Sel = {ŷ = ỹ}; LR over the clean examples of the pool).
    confusion : np.ndarray
        float64 (K, K), row-normalised: ``M[i, j]`` = share of true class ``i`` predicted as ``j``
        (NaN rows for classes with no example); the theory says ``M ≈ T``.
    """
    predicted, noisy, true = (np.asarray(a, dtype=np.int64) for a in (predicted, noisy, true))
    hit = predicted == noisy
    clean = noisy == true
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (true, predicted), 1)
    with np.errstate(invalid="ignore"):  # a class with no held-out example gets a row of NaN, not of zeros
        confusion = counts / counts.sum(axis=1, keepdims=True)
    metrics = {
        "noisy_accuracy": float(hit.mean()),
        "label_precision": float(clean[hit].mean()) if hit.any() else 0.0,
        "label_recall": float((hit & clean).sum() / max(clean.sum(), 1)),
        "clean_accuracy": float((predicted == true).mean()),
    }
    return metrics, confusion
