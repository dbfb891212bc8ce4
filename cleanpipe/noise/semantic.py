"""Semantic noise (IEG's): wrong labels that a network trained on little data believes.

Realistic errors rather than random flips: a labeler network trained on a small labeled share of the data
scores the rest, and the rows it puts most probability on a wrong class take that class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cleanpipe.detect.crossval import default_settings, train_fold
from cleanpipe.noise import NoiseResult, transition_matrix
from cleanpipe.recipes import DataKind, data_kind
from cleanpipe.validation import ParameterError, check_number

# The labeler's epochs per kind of data: round 1's crossval recipe (28x28 grey: 10, where crossval now trains 20).
LABELER_EPOCHS = {DataKind.SMALL: 20, DataKind.GREY: 10, DataKind.COLOUR: 30, DataKind.TABLE: 40}

LABELER_FRACTION = 0.05  # IEG's (and Lee et al.'s) 5% of CIFAR-10: a labeler that errs like a weak annotator


@dataclass
class SemanticNoise:
    """What :func:`semantic_noisy_labels` made: the labels and how the labeler did.

    Attributes
    ----------
    result : NoiseResult
        ``noise_matrix`` is the realised ``P(noisy = i | true = j)``.
    labeler_rows : np.ndarray
        int64 (n_small,): the rows the labeler was trained on (their labels never change).
    labeler_accuracy : float
        Its accuracy on the other rows, against the given labels.
    settings : dict
        The labeler's training recipe (crossval's for this data).
    """

    result: NoiseResult
    labeler_rows: np.ndarray
    labeler_accuracy: float
    settings: dict


def semantic_noisy_labels(
    X: np.ndarray,
    labels: np.ndarray,
    rate: float,
    *,
    n_classes: int,
    labeler_fraction: float = LABELER_FRACTION,
    source: str | None = None,
    seed: int = 0,
    device: str = "auto",
) -> SemanticNoise:
    """IEG's semantic noise: wrong labels that a network trained on little data believes.

    A stratified share ``labeler_fraction`` of the rows (at least 2 of each class) trains crossval's
    network for this data with plain cross-entropy for round 1's epochs (:data:`LABELER_EPOCHS`); it scores every other row, and the ``round(rate * N)`` rows with the
    highest probability on a class other than their label take that class. So the errors are
    confusions a model makes (a 4 written like a 9), most plausible first, and the rate is exact.

    Parameters
    ----------
    X : np.ndarray
        uint8 (N, C, H, W) images or float32 (N, D) features.
    labels : np.ndarray
        int (N,), values 0..K-1, taken as true.
    rate : float
        In [0, 1): the share of all N rows to mislabel. At most the share outside the labeler's rows.
    n_classes : int
    labeler_fraction : float
        In (0, 1): the labeler's share of the data.
    source : str, optional
        The data source, for the recipe (flips only on natural images).
    seed : int
        Seeds the labeler's rows, its training and ties.
    device : {'auto', 'cpu', 'cuda'}

    Returns
    -------
    SemanticNoise
    """

    labels = np.asarray(labels, dtype=np.int64)
    N = len(labels)
    check_number(labeler_fraction, "labeler_fraction", low=0, high=1, low_open=True, high_open=True)
    rng = np.random.default_rng([seed, 2])
    small = np.zeros(N, dtype=bool)
    for j in range(n_classes):
        members = np.flatnonzero(labels == j)
        take = min(len(members), max(2, int(round(labeler_fraction * len(members)))))
        small[rng.choice(members, size=take, replace=False)] = True
    n_flip = int(round(rate * N))
    if n_flip > int((~small).sum()):
        raise ParameterError(
            "rate", f"{{name}} {rate:g} asks for {n_flip:,} wrong labels but only {int((~small).sum()):,} rows are outside the "
            f"labeler's share; lower {{name}} or {{labeler_fraction}}", ("labeler_fraction",))
    # One model, plain predictions and plain cross-entropy for round 1's epochs, whatever crossval's folds
    # train with now: the labeler is a weak annotator, not a tuned detector, and a change of crossval's
    # defaults must not change what "semantic 3%, seed 0" is.
    settings = default_settings(tuple(X.shape[1:]), source, seed=seed, n_folds=2, tta=False, repeats=1, mixup=0.0,
                                epochs=LABELER_EPOCHS[data_kind(tuple(X.shape[1:]))])
    plan = np.where(small, 1, 0).astype(np.int64)  # fold 0 is scored by a model trained on fold 1, the small share
    fold = train_fold(X, labels, plan, 0, settings, n_classes, device=device)
    probs = fold.probs.astype(np.float64)
    others = fold.rows
    wrong = probs.copy()
    wrong[np.arange(len(others)), labels[others]] = -1.0
    wrong_class = wrong.argmax(axis=1)
    belief = wrong.max(axis=1)
    # Most believed first; equal beliefs in a seeded random order.
    order = np.lexsort((rng.permutation(len(others)), -np.round(belief, 7)))[:n_flip]
    noisy = labels.copy()
    noisy[others[order]] = wrong_class[order]
    M = transition_matrix(labels, noisy, n_classes)
    actual = float(np.mean(noisy != labels)) if N else 0.0
    return SemanticNoise(
        result=NoiseResult(noisy, M, actual, actual),
        labeler_rows=np.flatnonzero(small),
        labeler_accuracy=float(np.mean(probs.argmax(1) == labels[others])),
        settings={k: v for k, v in settings.as_dict().items() if k != "n_folds"},
    )
