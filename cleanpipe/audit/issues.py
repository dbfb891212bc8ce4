"""Duplicates, near duplicates, outliers and test leaks from one feature space and the rows' digests.

On features alone (tables, or no ``images`` passed) the rules are Datalab's (cleanlab 2.9), so that the two compare
row by row on the same graph:

- near duplicate: a neighbour closer than ``near_threshold`` times the median nearest-neighbour distance (the
  sets made symmetric); exact copies come from the digests instead and the median leaves them out, so that a
  dataset full of copies does not drive it to zero;
- outlier: the mean distance to the ``outlier_k`` nearest neighbours beyond Tukey's fence ``Q3 + (1/t - 1) IQR``
  with ``t = 0.37037`` (1.7 IQR);
- test leak: a test row byte-identical to a training row, or whose nearest training row is closer than
  ``leak_threshold`` times the training rows' median nearest-neighbour distance (calibrated on the training
  split alone, so the test split's size cannot move it).

With the images at hand, two measured changes (MNIST-10k with planted copies, ``pipelines/bench_audit.py``):

- near duplicates and near leaks are decided by the shift-tolerant pixel residual of each candidate pair from
  the feature graph (:mod:`cleanpipe.audit.pixels`): closer than ``pixel_threshold`` times the median of the
  rows' smallest residuals. A moved, re-noised copy is no nearer than a natural neighbour in features;
- the outlier statistic adds a second view, the images' own centred pixels: the sum of the two views' robust
  z-scores (median and IQR) of the mean kNN distance, fenced the same way. ``outlier_k`` is 50 rather than
  Datalab's 10, because odd images come in groups (a batch of blank scans, of photographs) larger than 10 that
  are each other's neighbours: at k = 10 the features found 55% of the planted ones, at 50 all.

Every score is "higher = more certain": 1 for an exact copy, ``exp(-d / median)`` for a near copy or leak,
``1 - exp(-a / median a)`` for an outlier (cleanlab's scores, turned round).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cleanpipe.audit.hashing import exact_groups, first_copy_in
from cleanpipe.audit.neighbours import build_index, knn_graph, normalised
from cleanpipe.audit.pixels import centred_pixels, pair_residuals
from cleanpipe.validation import check_number

ISSUES = ("exact_duplicate", "near_duplicate", "outlier", "test_leak")
COLUMNS = ("id", "split", "issue", "other_id", "score", "labels_differ")
K = 10  # neighbours per row for duplicates (Datalab's)
OUTLIER_K = 50  # neighbours averaged for outliers (see the module docstring)
PIXEL_THRESHOLD = 0.35  # images: a near copy's aligned residual under 0.35 x the median smallest residual (pixels.py)
NEAR_THRESHOLD = 0.13  # Datalab's near_duplicate threshold
OUTLIER_THRESHOLD = 0.37037  # Datalab's outlier threshold: the fence at Q3 + 1.7 IQR
LEAK_THRESHOLD = 0.13
MEDIAN_FLOOR = 1e-6


@dataclass
class AuditSettings:
    """The audit's rules; the defaults are Datalab's."""

    k: int = K
    outlier_k: int = OUTLIER_K
    near_threshold: float = NEAR_THRESHOLD
    pixel_threshold: float = PIXEL_THRESHOLD
    outlier_threshold: float = OUTLIER_THRESHOLD
    leak_threshold: float = LEAK_THRESHOLD
    exact_search: bool | None = None  # None: exact up to neighbours.EXACT_LIMIT rows
    seed: int = 0

    def __post_init__(self) -> None:
        check_number(self.k, "k", low=1)
        check_number(self.outlier_k, "outlier_k", low=1)
        check_number(self.pixel_threshold, "pixel_threshold", low=0.0, low_open=True)
        check_number(self.near_threshold, "near_threshold", low=0.0, low_open=True)
        check_number(self.outlier_threshold, "outlier_threshold", low=0.0, high=1.0, low_open=True, high_open=True)
        check_number(self.leak_threshold, "leak_threshold", low=0.0, low_open=True)


@dataclass
class AuditFindings:
    """The audit's per-row results (training rows unless named test).

    Attributes
    ----------
    exact_group : np.ndarray
        int64 (N,): the group of byte-identical rows (-1: none).
    nn_index, nn_distance : np.ndarray
        int64 (N,) and float32 (N,): the nearest other training row and its cosine distance (0 for an exact copy).
    near_partner, near_distance : np.ndarray
        int64 (N,) the closest near duplicate that is not an exact copy (-1: none) and its distance.
    avg_knn_distance : np.ndarray
        float32 (N,): the outlier statistic.
    is_outlier : np.ndarray
        bool (N,).
    leak_train_index, leak_distance : np.ndarray
        int64 (M,) and float32 (M,): each test row's nearest training row (exact copy first) and its distance.
    is_exact_leak, is_near_leak : np.ndarray
        bool (M,).
    """

    exact_group: np.ndarray
    exact_partner: np.ndarray
    nn_index: np.ndarray
    nn_distance: np.ndarray
    near_partner: np.ndarray
    near_distance: np.ndarray
    avg_knn_distance: np.ndarray
    is_outlier: np.ndarray
    median_nn_distance: float
    outlier_fence: float
    outlier_scale: float | None  # None: the statistic is a z-score (images)
    leak_train_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    leak_distance: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    is_exact_leak: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    is_near_leak: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    exact_search: bool = True

    def counts(self) -> dict[str, int]:
        return {"exact_duplicate": int((self.exact_group >= 0).sum()), "near_duplicate": int((self.near_partner >= 0).sum()),
                "outlier": int(self.is_outlier.sum()), "test_leak": int((self.is_exact_leak | self.is_near_leak).sum())}


def exact_partners(group: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For each row with a byte-identical copy, the copy to name: one carrying another label if any, else the
    first other copy; -1 for a row without copies."""
    partner = np.full(len(group), -1, dtype=np.int64)
    rows = np.flatnonzero(group >= 0)
    order = rows[np.lexsort((rows, group[rows]))]
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    for members in np.split(order, bounds):
        for i in members:
            others = members[members != i]
            conflict = others[labels[others] != labels[i]]
            partner[i] = conflict[0] if len(conflict) else others[0]
    return partner


def _graph(x: np.ndarray, group: np.ndarray, settings: AuditSettings):
    """The kNN graph with exact copies at distance exactly 0 (float32 inner products give ~1e-7), and the mean
    distance to the ``outlier_k`` nearest."""
    index = build_index(x, exact=settings.exact_search, seed=settings.seed)
    k = min(settings.k, len(x) - 1)
    dist, idx, mean_dist = knn_graph(x, k, index=index, mean_k=settings.outlier_k)
    same = (group[:, None] >= 0) & (group[np.maximum(idx, 0)] == group[:, None]) & (idx >= 0)
    dist[same] = 0.0
    return index, dist, idx, same, mean_dist


def _closest_pairs(rows, cols, d, n):
    """Per row, the partner at the smallest ``d`` among the pairs (both directions), or -1."""
    a, b, dd = np.concatenate([rows, cols]), np.concatenate([cols, rows]), np.concatenate([d, d])
    partner = np.full(n, -1, dtype=np.int64)
    near = np.full(n, np.inf, dtype=np.float32)
    if len(a):
        order = np.lexsort((b, dd, a))
        a, b, dd = a[order], b[order], dd[order]
        first = np.r_[True, a[1:] != a[:-1]]
        partner[a[first]], near[a[first]] = b[first], dd[first]
    return partner, near


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return max(float(np.median(finite)) if len(finite) else 0.0, MEDIAN_FLOOR)


def _near_duplicates(dist, idx, same, settings: AuditSettings, images=None):
    """Each row's closest near duplicate that is not its exact copy (symmetric), the distances that decided
    (cosine, or the aligned pixel residual with images), and their median."""
    n = len(dist)
    if images is not None:  # the pixels decide among the feature graph's candidates
        i, j = np.nonzero(~same & (idx >= 0))
        r = np.full(dist.shape, np.inf, dtype=np.float32)
        r[i, j] = pair_residuals(images, i, idx[i, j])
        median = _median(r.min(1))
        rows, cols = np.nonzero(r < settings.pixel_threshold * median)
        partner, near = _closest_pairs(rows, idx[rows, cols], r[rows, cols], n)
        return partner, near, median
    d_other = np.where(same, np.inf, dist)  # the graph without exact copies
    median = _median(d_other.min(1))
    rows, cols = np.nonzero((d_other < settings.near_threshold * median) & (idx >= 0))
    partner, near = _closest_pairs(rows, idx[rows, cols], d_other[rows, cols], n)
    return partner, near, median


def _robust_z(a: np.ndarray) -> np.ndarray:
    q1, mid, q3 = np.percentile(a, [25, 50, 75])
    return (a - mid) / max(q3 - q1, 1e-12)


def _outliers(mean_dist: np.ndarray, settings: AuditSettings, pixel_mean_dist: np.ndarray | None = None):
    """The outlier statistic (the mean kNN distance, or with images the two views' summed robust z-scores), its
    Tukey fence and the scale of the score."""
    avg = mean_dist.astype(np.float32)
    if pixel_mean_dist is not None:
        avg = (_robust_z(avg) + _robust_z(pixel_mean_dist)).astype(np.float32)
    q1, q3 = np.percentile(avg, [25, 75])
    fence = float(q3 + (1.0 / settings.outlier_threshold - 1.0) * (q3 - q1))
    if pixel_mean_dist is not None:  # z-scores: the score rises from 0 at the median
        return avg, avg > fence, fence, None
    scale = max(float(np.median(avg)), 100 * np.finfo(np.float32).eps)
    return avg, avg > fence, fence, scale


def _leaks(found, index, test_features, settings, train_digests, test_digests, images, test_images):
    k = min(settings.k, index.n) if images is not None else 1
    t_dist, t_idx = index.search(normalised(test_features), k)
    if images is not None:  # the candidates' aligned residuals decide
        rows, cols = np.nonzero(t_idx >= 0)
        r = np.full(t_idx.shape, np.inf, dtype=np.float32)
        r[rows, cols] = pair_residuals(test_images, rows, t_idx[rows, cols], reference=images)
        best = r.argmin(1)
        leak_idx, leak_d = t_idx[np.arange(len(r)), best], r[np.arange(len(r)), best]
        limit = settings.pixel_threshold * found.median_nn_distance
    else:
        leak_idx, leak_d = t_idx[:, 0], t_dist[:, 0]
        limit = settings.leak_threshold * found.median_nn_distance
    exact = np.zeros(len(leak_idx), dtype=bool)
    if test_digests is not None and train_digests is not None:
        copy = first_copy_in(test_digests, train_digests)
        exact = copy >= 0
        leak_idx, leak_d = np.where(exact, copy, leak_idx), np.where(exact, 0.0, leak_d).astype(np.float32)
    found.leak_train_index, found.leak_distance = leak_idx, leak_d
    found.is_exact_leak, found.is_near_leak = exact, ~exact & (leak_d < limit)


def find_audit_issues(train_features: np.ndarray, labels: np.ndarray, *, train_digests: np.ndarray | None = None,
                      test_features: np.ndarray | None = None, test_digests: np.ndarray | None = None,
                      images: np.ndarray | None = None, test_images: np.ndarray | None = None,
                      settings: AuditSettings | None = None) -> AuditFindings:
    """Exact and near duplicates, outliers among the training rows, and test rows that copy training rows.

    Parameters
    ----------
    train_features : np.ndarray
        float (N, D): every training row embedded by one function.
    labels : np.ndarray
        int (N,): the training rows' given labels (for the partner naming of exact copies).
    train_digests, test_digests : np.ndarray, optional
        ``S16`` (N,) and (M,) from :func:`cleanpipe.audit.hashing.row_digests`: exact copies (without them,
        none are told apart from near copies).
    test_features : np.ndarray, optional
        float (M, D): the test rows in the same space.
    images, test_images : np.ndarray, optional
        uint8 (N, C, H, W) and (M, C, H, W): the images themselves, for the pixel checks (module docstring).
    settings : AuditSettings, optional

    Returns
    -------
    AuditFindings
        ``near_distance`` and ``leak_distance`` are aligned pixel residuals when ``images`` are given, cosine
        distances otherwise; ``median_nn_distance`` is the median they are measured against.
    """
    settings = settings or AuditSettings()
    labels = np.asarray(labels, dtype=np.int64)
    n = len(train_features)
    group = exact_groups(train_digests) if train_digests is not None else np.full(n, -1, dtype=np.int64)
    x = normalised(train_features)
    index, dist, idx, same, mean_dist = _graph(x, group, settings)
    pixel_mean = None
    if images is not None:
        pixel_mean = knn_graph(normalised(centred_pixels(images)), min(settings.k, n - 1), mean_k=settings.outlier_k,
                               exact=settings.exact_search, seed=settings.seed)[2]
    partner, near, median = _near_duplicates(dist, idx, same, settings, images)
    avg, outlier, fence, scale = _outliers(mean_dist, settings, pixel_mean)
    found = AuditFindings(group, exact_partners(group, labels), idx[:, 0].copy(), dist[:, 0].copy(), partner, near,
                          avg, outlier, median, fence, scale, exact_search=index.exact)
    if test_features is not None and len(test_features):
        del x
        _leaks(found, index, test_features, settings, train_digests, test_digests, images, test_images)
    return found


def _outlier_score(a: np.ndarray, found: AuditFindings) -> np.ndarray:
    """Higher = more certain, in [0, 1): cleanlab's ``1 - exp(-a / median a)``; for z-scores ``1 - exp(-z)`` above 0."""
    if found.outlier_scale is None:
        return 1.0 - np.exp(-np.maximum(a, 0.0))
    return 1.0 - np.exp(-a / found.outlier_scale)


def issue_table(found: AuditFindings, labels: np.ndarray, ids_train: np.ndarray, ids_test: np.ndarray | None = None,
                test_labels: np.ndarray | None = None):
    """``audit/issues.csv``: one row per example and issue, columns :data:`COLUMNS` first, then ``index`` (the
    row in its split), ``other_index``, ``given_label``, ``other_label`` and ``distance``; by issue, most certain
    first.

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    labels = np.asarray(labels, dtype=np.int64)
    ids_train = np.asarray(ids_train).astype(str)
    parts = []

    def part(split, issue, rows, other, score, given, other_label, distance, ids):
        parts.append(pd.DataFrame({
            "id": ids[rows], "split": split, "issue": issue, "other_id": ids_train[other] if len(other) else [],
            "score": np.round(score, 6), "labels_differ": given != other_label, "index": rows, "other_index": other,
            "given_label": given, "other_label": other_label, "distance": np.round(distance, 6)}))

    rows = np.flatnonzero(found.exact_partner >= 0)
    other = found.exact_partner[rows]
    part("train", "exact_duplicate", rows, other, np.ones(len(rows)), labels[rows], labels[other], np.zeros(len(rows)), ids_train)
    rows = np.flatnonzero(found.near_partner >= 0)
    other, d = found.near_partner[rows], found.near_distance[rows]
    part("train", "near_duplicate", rows, other, np.exp(-d / found.median_nn_distance), labels[rows], labels[other], d, ids_train)
    rows = np.flatnonzero(found.is_outlier)
    a = found.avg_knn_distance[rows]
    frame = pd.DataFrame({"id": ids_train[rows], "split": "train", "issue": "outlier", "other_id": "",
                          "score": np.round(_outlier_score(a, found), 6), "labels_differ": False,
                          "index": rows, "other_index": -1, "given_label": labels[rows], "other_label": -1,
                          "distance": np.round(a, 6)})
    parts.append(frame)
    if ids_test is not None and len(found.leak_train_index):
        rows = np.flatnonzero(found.is_exact_leak | found.is_near_leak)
        other, d = found.leak_train_index[rows], found.leak_distance[rows]
        given = np.asarray(test_labels, dtype=np.int64)[rows] if test_labels is not None else np.full(len(rows), -1)
        part("test", "test_leak", rows, other, np.exp(-d / found.median_nn_distance), given, labels[other], d,
             np.asarray(ids_test).astype(str))
    table = pd.concat(parts, ignore_index=True)
    table["issue_order"] = table["issue"].map({name: k for k, name in enumerate(ISSUES)})
    table = table.sort_values(["issue_order", "score", "index"], ascending=[True, False, True], kind="stable")
    return table.drop(columns="issue_order").reset_index(drop=True)
