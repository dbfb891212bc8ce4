"""Confident learning's filters and rankings, through cleanlab (not re-implemented).

Method names are cleanlab's ``filter_by`` options; the Confident Learning paper's names
are accepted as aliases:

============  =======================  =====================================
alias         cleanlab ``filter_by``   paper
============  =======================  =====================================
cl-pbnr       prune_by_noise_rate      CL: PBNR (the default)
cl-pbc        prune_by_class           CL: PBC
cl-both       both                     CL: C+NR
cj-only       confident_learning       C_{y~,y*}
argmax        predicted_neq_given      C_confusion
============  =======================  =====================================

plus cleanlab's ``low_normalized_margin`` and ``low_self_confidence``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from cleanpipe.errors import CleanpipeError

FILTERS = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
)
ALIASES = {
    "cl-pbnr": "prune_by_noise_rate",
    "cl-pbc": "prune_by_class",
    "cl-both": "both",
    "cj-only": "confident_learning",
    "argmax": "predicted_neq_given",
}
PAPER_METHODS = tuple(ALIASES)
RANK_BY = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")
_COUNTED = ("prune_by_noise_rate", "prune_by_class", "both")  # the filters frac_noise and per-class counts steer


def canonical_method(name: str) -> str:
    """cleanlab's ``filter_by`` name for a method or paper alias."""
    name = ALIASES.get(name, name)
    if name not in FILTERS:
        raise CleanpipeError(
            f"unknown method {name!r}; choose one of {', '.join(FILTERS)}, the paper's {', '.join(ALIASES)}, or incv"
        )
    return name


@dataclass
class Detection:
    """What confident learning says about every example.

    Attributes
    ----------
    issue_mask : np.ndarray
        bool (N,): True = flagged as a label error.
    label_quality : np.ndarray
        float64 (N,) in [0, 1]: lower = more likely mislabeled.
    suggested_label : np.ndarray
        int64 (N,): the most probable class under ``pred_probs``.
    order : np.ndarray
        int64 (N,): row indices worst first (flagged rows by quality, then the rest).
    noise_matrix : np.ndarray
        float64 (K, K): cleanlab's estimate of ``P(given = i | true = j)``.
    estimated_noise_rate : float
        Estimated share of wrong labels, ``1 - trace(estimate_joint)``.
    """

    issue_mask: np.ndarray
    label_quality: np.ndarray
    suggested_label: np.ndarray
    order: np.ndarray
    noise_matrix: np.ndarray
    estimated_noise_rate: float


def worst_first(issue_mask: np.ndarray, label_quality: np.ndarray) -> np.ndarray:
    """Row indices, int64 (N,): flagged rows by label quality, then the rest by quality (ties by index)."""
    return np.lexsort((np.arange(len(issue_mask)), label_quality, ~issue_mask)).astype(np.int64)


RENORMALISE_WITHIN = 0.02  # rows further than this from summing to 1 are not probabilities


def validate_inputs(labels: np.ndarray, pred_probs: np.ndarray, *, source: str = "pred_probs") -> tuple[np.ndarray, np.ndarray, str | None]:
    """Check shapes, ranges and probabilities; return float32 probabilities and a note if rows were renormalised.

    Rows that sum to 1 within :data:`RENORMALISE_WITHIN` (2%: float16 files such as the CL paper's, whose
    rows sum to 0.986-0.99 in 3 of its 12 CIFAR-10 conditions, and other frameworks' rounded outputs) are
    renormalised, with a note saying how many and the largest deviation; anything further off is rejected.
    """
    pred_probs = np.asarray(pred_probs)
    labels = np.asarray(labels)
    if pred_probs.ndim != 2 or pred_probs.shape[1] < 2:
        raise CleanpipeError(f"{source}: expected an N x K array of probabilities (K >= 2), got shape {pred_probs.shape}")
    if pred_probs.dtype.kind not in "fiu":
        raise CleanpipeError(f"{source}: expected numbers, got dtype {pred_probs.dtype}")
    n, k = pred_probs.shape
    if labels.shape != (n,):
        raise CleanpipeError(
            f"{source} has {n:,} rows but there are {labels.size:,} labels; give one label per row of pred_probs"
        )
    if labels.dtype.kind not in "iu":
        raise CleanpipeError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise CleanpipeError(
            f"labels must lie in 0..{k - 1} (pred_probs has {k} columns), found {labels.min()}..{labels.max()}"
        )
    p = pred_probs.astype(np.float32)
    if not np.isfinite(p).all():
        raise CleanpipeError(f"{source}: {int((~np.isfinite(p)).any(axis=1).sum()):,} rows hold NaN or infinite values")
    if (p < 0).any():
        raise CleanpipeError(f"{source}: {int((p < 0).any(axis=1).sum()):,} rows hold negative values; these are not probabilities")
    sums = p.astype(np.float64).sum(axis=1)
    off = np.abs(sums - 1.0)
    if off.max(initial=0.0) > RENORMALISE_WITHIN:
        worst = int(off.argmax())
        raise CleanpipeError(
            f"{source}: row {worst} sums to {sums[worst]:.4g}, not 1; give softmax probabilities (not logits or scores)"
        )
    note = None
    if off.max(initial=0.0) > 1e-6:
        p = (p / sums[:, None]).astype(np.float32)
        moved = int((off > 1e-6).sum())
        note = (f"renormalised {moved:,} row(s) that summed to {sums.min():.4f}..{sums.max():.4f} "
                f"(largest deviation from 1: {off.max():.4f})")
    missing = np.flatnonzero(np.bincount(labels, minlength=k) == 0)
    if len(missing):
        raise CleanpipeError(
            f"class {int(missing[0])} has no example with that label; confident learning needs every class of pred_probs's {k} columns labeled at least once"
        )
    return labels.astype(np.int64), p, note


def find_issues(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    method: str = "prune_by_noise_rate",
    *,
    frac_noise: float = 1.0,
    num_to_remove_per_class: list[int] | None = None,
    rank_by: str = "self_confidence",
    n_jobs: int = 1,
) -> Detection:
    """Flag label errors with cleanlab's ``find_label_issues`` and score every example.

    Parameters
    ----------
    labels : np.ndarray
        int (N,), values 0..K-1 (the given, possibly noisy labels).
    pred_probs : np.ndarray
        float (N, K): out-of-sample probabilities, rows summing to 1.
    method : str
        A ``filter_by`` name or paper alias (see module docstring).
    frac_noise : float
        In (0, 1]; only for prune_by_noise_rate, prune_by_class and both.
    num_to_remove_per_class : list of int, optional
        K counts; only for those same three methods.
    rank_by : {'self_confidence', 'normalized_margin', 'confidence_weighted_entropy'}
        The label-quality score and so the report's order.
    n_jobs : int
        cleanlab's worker processes (1 by default: on few cores a pool costs more than it gains).
    """
    import cleanlab.filter
    from cleanlab.count import estimate_joint, estimate_py_and_noise_matrices_from_probabilities
    from cleanlab.rank import get_label_quality_scores

    method = canonical_method(method)
    if rank_by not in RANK_BY:
        raise CleanpipeError(f"--rank-by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    if not 0.0 < frac_noise <= 1.0:
        raise CleanpipeError(f"--frac-noise must lie in (0, 1], got {frac_noise}")
    K = pred_probs.shape[1]
    if frac_noise != 1.0 and method not in _COUNTED:
        raise CleanpipeError(f"--frac-noise applies only to {', '.join(_COUNTED)}, not {method}")
    if num_to_remove_per_class is not None:
        if method not in _COUNTED:
            raise CleanpipeError(f"--num-to-remove-per-class applies only to {', '.join(_COUNTED)}, not {method}")
        if len(num_to_remove_per_class) != K or min(num_to_remove_per_class) < 0:
            raise CleanpipeError(f"--num-to-remove-per-class needs {K} non-negative counts, one per class")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab's advisory warnings are summarised by our report
        mask = cleanlab.filter.find_label_issues(
            labels, pred_probs, filter_by=method, frac_noise=frac_noise,
            num_to_remove_per_class=num_to_remove_per_class, n_jobs=n_jobs,
        )
        quality = get_label_quality_scores(labels, pred_probs, method=rank_by)
        _, noise_matrix, _, _ = estimate_py_and_noise_matrices_from_probabilities(labels, pred_probs)
        joint = estimate_joint(labels, pred_probs)
    # cleanlab keeps a per-class copy of pred_probs in a module global after multiprocessing runs.
    for name in ("pred_probs_by_class", "prune_count_matrix_cols"):
        if hasattr(cleanlab.filter, name):
            delattr(cleanlab.filter, name)
    mask = np.asarray(mask, dtype=bool)
    quality = np.asarray(quality, dtype=np.float64)
    return Detection(
        issue_mask=mask,
        label_quality=quality,
        suggested_label=pred_probs.argmax(axis=1).astype(np.int64),
        order=worst_first(mask, quality),
        noise_matrix=np.asarray(noise_matrix, dtype=np.float64),
        estimated_noise_rate=float(1.0 - np.trace(joint)),
    )



def remaining_noise_rate(n: int, n_flagged: int, estimated_noise_rate: float) -> float:
    """Estimated share of wrong labels left among the kept examples: ``max(0, ε̂·N - flagged) / kept``.

    It takes every flagged example for a real error, so it errs low when precision is poor. (Re-running
    confident learning on the kept rows alone says 0: they are the rows whose labels the model
    agrees with. Measured on digits at 40% noise: this estimate 0.046, the truth 0.047.)
    """
    kept = n - n_flagged
    return max(0.0, estimated_noise_rate * n - n_flagged) / kept if kept > 0 else 0.0
