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

plus cleanlab's ``low_normalized_margin`` and ``low_self_confidence``, all exactly as cleanlab computes
them, and cleanpipe's default, ``prune_by_noise_rate_capped`` (alias ``cl-capped``): prune_by_noise_rate
on a confident joint whose per-class thresholds are capped at one half (:data:`THRESHOLD_CAP`).

Why the cap. Confident learning counts an example towards C[given, j] when ``p_j`` reaches class j's
threshold, the mean of ``p_j`` over the examples labeled j. On an accurate model that mean is 0.98-0.99
(MNIST's 10,000 test images with their published labels, out-of-fold accuracy 0.992): an image the
models place in another class reaches it only when they are all but certain, and averaged fold models
(shifted views, mixup) are seldom so certain of an ambiguous image. The joint then has no off-diagonal
entry and every cleanlab filter flags nothing, while the 76 images the models place elsewhere include
the real errors a person finds. Capped at one half, a threshold still means what it means on a model that
errs (the mean self-confidence where that is lower), and on an accurate model an example counts as
confidently in class j when the models put more probability on j than on all other classes together.
Measured in ``pipelines/bench_detection.py`` (docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass

import numpy as np

from cleanpipe.errors import CleanpipeError
from cleanpipe.validation import ParameterError, check_choice, check_number

FILTERS = (
    "prune_by_noise_rate",
    "prune_by_class",
    "both",
    "confident_learning",
    "predicted_neq_given",
    "low_normalized_margin",
    "low_self_confidence",
    "prune_by_noise_rate_capped",
)
CAPPED = "prune_by_noise_rate_capped"  # cleanpipe's default: not one of cleanlab's names
DEFAULT_METHOD = CAPPED
THRESHOLD_CAP = 0.5  # the capped filter's largest per-class threshold (see the module docstring)
ALIASES = {
    "cl-pbnr": "prune_by_noise_rate",
    "cl-pbc": "prune_by_class",
    "cl-both": "both",
    "cj-only": "confident_learning",
    "argmax": "predicted_neq_given",
    "cl-capped": CAPPED,
}
PAPER_METHODS = tuple(ALIASES)
# pairwise_confidence first, the default: p(given) / (p(given) + max p(other)), the given label's share of its
# contest with the strongest other class (cleanpipe's; the other three are cleanlab's). Mixup-trained folds on
# MNIST-10k, average precision for the true errors (`python pipelines/bench_detection.py`, docs/benchmarks.md):
# it ranks random flips as self_confidence does (symmetric 1%: 0.999 / 0.999, normalized_margin 0.987) and
# semantic errors as normalized_margin does (3%: 0.826 / 0.798 / 0.828). normalized_margin's "+ 1" leaves
# float32 no digits for a p(given) under 1e-7; the ratio keeps them.
RANK_BY = ("pairwise_confidence", "normalized_margin", "self_confidence", "confidence_weighted_entropy")
DEFAULT_RANK_BY = RANK_BY[0]
_COUNTED = ("prune_by_noise_rate", "prune_by_class", "both", CAPPED)  # the filters frac_noise and per-class counts steer


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


RENORMALISE_WITHIN = 0.02
REDUCE_CHUNK_ROWS = 65_536  # rows per step of the chunked passes over pred_probs  # rows further than this from summing to 1 are not probabilities


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
    # No full-size temporaries: a million rows of 100 classes are 400 MB, and a float64 copy would be 800 more.
    p = np.asarray(pred_probs, dtype=np.float32)
    owned = p is not pred_probs and not np.shares_memory(p, pred_probs)
    sums = p.sum(axis=1, dtype=np.float64)
    if not np.isfinite(sums).all():  # NaN and infinities reach the row sums
        raise CleanpipeError(f"{source}: {int((~np.isfinite(sums)).sum()):,} rows hold NaN or infinite values")
    if n and p.min() < 0:
        bad = sum(int((p[s:s + 65_536] < 0).any(axis=1).sum()) for s in range(0, n, 65_536))
        raise CleanpipeError(f"{source}: {bad:,} rows hold negative values; these are not probabilities")
    off = np.abs(sums - 1.0)
    if off.max(initial=0.0) > RENORMALISE_WITHIN:
        worst = int(off.argmax())
        raise CleanpipeError(
            f"{source}: row {worst} sums to {sums[worst]:.4g}, not 1; give softmax probabilities (not logits or scores)"
        )
    note = None
    if off.max(initial=0.0) > 1e-6:
        out = p if owned else np.empty_like(p)  # in place only on our own copy
        for s in range(0, n, 65_536):  # divided in float64, as one whole-array division would, in chunks
            out[s:s + 65_536] = p[s:s + 65_536] / sums[s:s + 65_536, None]
        p = out
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
    method: str = DEFAULT_METHOD,
    *,
    frac_noise: float = 1.0,
    num_to_remove_per_class: list[int] | None = None,
    rank_by: str = DEFAULT_RANK_BY,
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
        A ``filter_by`` name, paper alias or ``prune_by_noise_rate_capped`` (the default; see the module
        docstring).
    frac_noise : float
        In (0, 1]; only for prune_by_noise_rate, prune_by_class, both and the capped filter.
    num_to_remove_per_class : list of int, optional
        K counts; only for those same three methods.
    rank_by : {'pairwise_confidence', 'normalized_margin', 'self_confidence', 'confidence_weighted_entropy'}
        The label-quality score (:func:`label_quality`) and so the report's order: ``pairwise_confidence``
        is ``p[given] / (p[given] + max p[other])``, ``normalized_margin`` ``p[given] - max p[other]`` mapped
        to [0, 1] and ``self_confidence`` ``p[given]`` (these two and the entropy are cleanlab's
        ``get_label_quality_scores``).
    n_jobs : int
        cleanlab's worker processes (1 by default: on few cores a pool costs more than it gains).
    """
    import cleanlab.filter
    from cleanlab.count import estimate_joint

    method = canonical_method(method)
    check_choice(rank_by, "rank_by", RANK_BY)
    check_number(frac_noise, "frac_noise", low=0, high=1, low_open=True)
    K = pred_probs.shape[1]
    if frac_noise != 1.0 and method not in _COUNTED:
        raise ParameterError("frac_noise", f"applies only to {', '.join(_COUNTED)}, not {method}")
    if num_to_remove_per_class is not None:
        if method not in _COUNTED:
            raise ParameterError("num_to_remove_per_class", f"applies only to {', '.join(_COUNTED)}, not {method}")
        if len(num_to_remove_per_class) != K or min(num_to_remove_per_class) < 0:
            raise ParameterError("num_to_remove_per_class", f"needs {K} non-negative counts, one per class")
    from cleanlab.count import estimate_latent

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cleanlab's advisory warnings are summarised by our report
        # One calibrated confident joint serves the mask, the noise matrix and the joint (cleanlab would
        # compute it three times); with the same defaults as find_label_issues and estimate_py_and_noise...
        # The capped filter is cleanlab's prune_by_noise_rate given the capped joint.
        cj = confident_joint(labels, pred_probs, threshold_cap=THRESHOLD_CAP if method == CAPPED else None)
        filter_by = "prune_by_noise_rate" if method == CAPPED else method
        if method in _COUNTED and low_memory_route():
            mask = _counted_issues(labels, pred_probs, filter_by, cj, frac_noise, num_to_remove_per_class)
        else:
            mask = cleanlab.filter.find_label_issues(
                labels, pred_probs, filter_by=filter_by, frac_noise=frac_noise, confident_joint=cj,
                num_to_remove_per_class=num_to_remove_per_class, n_jobs=n_jobs,
            )
        quality = label_quality(labels, pred_probs, rank_by)
        _, noise_matrix, _ = estimate_latent(cj, labels, py_method="cnt", converge_latent_estimates=True)
        joint = estimate_joint(None, pred_probs, confident_joint=cj)
    # cleanlab's find_label_issues keeps a per-class copy of pred_probs in module globals afterwards.
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



QUALITY_CHUNK_BYTES = 1 << 24  # label_quality's copies: 16 MB of rows at a time


def label_quality(labels: np.ndarray, pred_probs: np.ndarray, rank_by: str = DEFAULT_RANK_BY,
                  chunk: int | None = None) -> np.ndarray:
    """Label quality in [0, 1] (low = suspicious), in row chunks; cleanlab's scores value for value.

    ``pairwise_confidence`` (cleanpipe's) is ``p[given] / (p[given] + max_{k != given} p[k])``: the given
    label's share of its contest with the strongest other class, 1/2 at a tie (0/0, a row with no mass on
    either, counts as a tie). The others are cleanlab's ``get_label_quality_scores(labels, pred_probs,
    method=rank_by)``: ``normalized_margin`` is ``(p[given] - max_{k != given} p[k] + 1) / 2`` and ``self_confidence``
    ``p[given]``, computed in ``pred_probs``' dtype as cleanlab does; cleanlab's margin deletes the given
    label's entry from a full-size copy of ``pred_probs`` (400 MB at a million rows of 100 classes, half of
    prune's time there), these chunks copy ``chunk`` rows at a time (default: 16 MB of them, whatever K).
    ``confidence_weighted_entropy`` is cleanlab's own call.

    Returns
    -------
    np.ndarray
        (N,) in ``pred_probs``' dtype; lower is more likely mislabeled.
    """
    check_choice(rank_by, "rank_by", RANK_BY)
    if rank_by == "confidence_weighted_entropy":
        from cleanlab.rank import get_label_quality_scores

        return get_label_quality_scores(labels, pred_probs, method=rank_by)
    n = len(labels)
    chunk = chunk or max(1, QUALITY_CHUNK_BYTES // (pred_probs.shape[1] * pred_probs.itemsize))
    out = np.empty(n, dtype=pred_probs.dtype)
    for s in range(0, n, chunk):
        p, given = pred_probs[s:s + chunk], labels[s:s + chunk]
        at = np.arange(len(given))
        mine = p[at, given]
        if rank_by == "self_confidence":
            out[s:s + chunk] = mine
            continue
        others = p.copy()
        others[at, given] = -np.inf  # the largest of the other classes, as cleanlab's deletion leaves them
        best_other = others.max(axis=1)
        if rank_by == "normalized_margin":
            out[s:s + chunk] = (mine - best_other + 1) / 2
        else:
            total = mine + best_other
            out[s:s + chunk] = np.divide(mine, total, out=np.full_like(mine, 0.5), where=total > 0)
    return out


def confident_joint(labels: np.ndarray, pred_probs: np.ndarray, chunk: int = REDUCE_CHUNK_ROWS,
                    threshold_cap: float | None = None) -> np.ndarray:
    """The calibrated confident joint C (K x K, rows: given label, columns: true label), in row chunks.

    The Confident Learning definition, as cleanlab's ``compute_confident_joint`` computes it: thresholds
    t_j are the mean probability of class j over the examples labeled j; an example counts towards
    C[given, j] for the class j it is confidently in (p_j >= t_j - 1e-6; the argmax of p when several
    classes pass, none when none does); the diagonal is at least 1; then calibrated to the label counts.
    The counts are integers, so chunks give exactly cleanlab's matrix, without its N x K boolean array.
    ``threshold_cap``: each t_j is first lowered to at most this (the capped filter's joint; None: cleanlab's).
    """
    from cleanlab.count import calibrate_confident_joint, get_confident_thresholds

    K = pred_probs.shape[1]
    thresholds = np.asarray(get_confident_thresholds(labels, pred_probs))
    if threshold_cap is not None:
        thresholds = np.minimum(thresholds, threshold_cap)
    thresholds = thresholds - 1e-6
    counts = np.zeros(K * K, dtype=np.int64)
    for s in range(0, len(labels), chunk):
        p = pred_probs[s:s + chunk]
        confident = p >= thresholds
        n_confident = confident.sum(axis=1)
        guess = np.where(n_confident > 1, p.argmax(axis=1), confident.argmax(axis=1))
        counted = n_confident > 0
        counts += np.bincount(labels[s:s + chunk][counted] * K + guess[counted], minlength=K * K)
    cj = counts.reshape(K, K)
    np.fill_diagonal(cj, cj.diagonal().clip(min=1))
    return calibrate_confident_joint(cj, labels)


@functools.cache
def low_memory_route() -> bool:
    """The installed cleanlab has the per-class steps the low-memory route relies on (else cleanlab's
    ``find_label_issues``, which copies pred_probs by class); asked once, when prune first runs."""
    try:
        import cleanlab.count
        import cleanlab.filter
    except ImportError:
        return False
    return all(hasattr(cleanlab.filter, f) for f in ("_keep_at_least_n_per_class", "_prune_by_count", "_prune_by_class")) \
        and hasattr(cleanlab.count, "_reduce_issues") and hasattr(cleanlab.filter, "round_preserving_row_totals")


REDUCE_CHUNK = 65_536  # rows per step of the final "prediction agrees with the label" check


def _counted_issues(labels: np.ndarray, pred_probs: np.ndarray, method: str, cj: np.ndarray, frac_noise: float,
                    num_to_remove_per_class: list[int] | None) -> np.ndarray:
    """find_label_issues' prune_by_noise_rate / prune_by_class / both, with the same mask and less memory.

    cleanlab keeps a copy of ``pred_probs`` split by class for the whole call (and copies it once more at
    the end); here each class's rows are taken, pruned by cleanlab's own per-class step, and let go, and
    the final check runs in row chunks. Peak memory is then ``pred_probs`` plus one class's rows per
    thread (one thread per core: NumPy's sorts run without the GIL).
    """
    from concurrent.futures import ThreadPoolExecutor

    import cleanlab.count as count
    import cleanlab.filter as flt

    K = pred_probs.shape[1]
    label_counts = np.bincount(labels, minlength=K)
    prune_count_matrix = flt._keep_at_least_n_per_class(prune_count_matrix=cj.T, n=1, frac_noise=frac_noise)
    if num_to_remove_per_class is not None:
        psy = prune_count_matrix / np.sum(prune_count_matrix, axis=1)
        noise_per_s = psy.sum(axis=1) - psy.diagonal()
        tmp = (psy.T * num_to_remove_per_class / noise_per_s).T
        np.fill_diagonal(tmp, label_counts - num_to_remove_per_class)
        prune_count_matrix = flt.round_preserving_row_totals(tmp)
    order = np.argsort(labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(label_counts)])

    def per_class(k: int, step) -> tuple[int, np.ndarray]:
        rows = order[bounds[k]:bounds[k + 1]]  # ascending: the same row order as pred_probs[labels == k]
        return k, step([k, 1, [pred_probs[rows], prune_count_matrix[:, k]]])

    def prune(step) -> np.ndarray:
        mask = np.zeros(len(labels), dtype=bool)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for k, m in pool.map(lambda k: per_class(k, step), range(K)):
                if len(m) > 1:
                    mask[order[bounds[k]:bounds[k + 1]]] = m
        return mask

    if method == "prune_by_class":
        mask = prune(flt._prune_by_class)
    elif method == "prune_by_noise_rate":
        mask = prune(flt._prune_by_count)
    else:  # both
        mask = prune(flt._prune_by_class) & prune(flt._prune_by_count)
    for s in range(0, len(labels), REDUCE_CHUNK):  # row-wise, so chunks give cleanlab's answer
        agree = count._reduce_issues(pred_probs=pred_probs[s:s + REDUCE_CHUNK], labels=labels[s:s + REDUCE_CHUNK])
        mask[s:s + REDUCE_CHUNK][agree] = False
    return mask


def remaining_noise_rate(n: int, n_flagged: int, estimated_noise_rate: float) -> float:
    """Estimated share of wrong labels left among the kept examples: ``max(0, ε̂·N - flagged) / kept``.

    It takes every flagged example for a real error, so it errs low when precision is poor. (Re-running
    confident learning on the kept rows alone says 0: they are the rows whose labels the model
    agrees with. Measured on digits at 40% noise: this estimate 0.046, the truth 0.047.)
    """
    kept = n - n_flagged
    return max(0.0, estimated_noise_rate * n - n_flagged) / kept if kept > 0 else 0.0
