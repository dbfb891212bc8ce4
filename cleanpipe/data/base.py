"""The one in-memory dataset type every source returns."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from cleanpipe.errors import CleanpipeError
from cleanpipe.validation import ParameterError


@dataclass
class Dataset:
    """Features, integer labels, class names and a fixed train/test split.

    Attributes
    ----------
    X_train, X_test : np.ndarray
        Images as uint8 of shape (N, C, H, W); tables as float32 of shape (N, D).
    y_train, y_test : np.ndarray
        int64 of shape (N,), values in ``0 .. n_classes - 1``.
    ids_train, ids_test : np.ndarray
        str of shape (N,): a stable ID per example (its index in the source, or its
        relative path for image folders), carried into every report.
    class_names : list[str]
        ``class_names[k]`` names class ``k``.
    source : str
        The source kind that produced it (``digits``, ``mnist``, ...).
    meta : dict
        Source-specific extras (e.g. CIFAR-100's ``coarse_of_fine``), JSON-serialisable.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    ids_train: np.ndarray
    ids_test: np.ndarray
    class_names: list[str]
    source: str
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            X, y, ids = (getattr(self, f"{a}_{part}") for a in ("X", "y", "ids"))
            if not (len(X) == len(y) == len(ids)):
                raise CleanpipeError(
                    f"{self.source}: {part} features, labels and IDs have different lengths "
                    f"({len(X)}, {len(y)}, {len(ids)})"
                )
        if self.X_train.dtype == np.uint8 and self.X_train.ndim != 4:
            raise CleanpipeError(f"{self.source}: uint8 images must be N x C x H x W, got {self.X_train.shape}")
        k = len(self.class_names)
        for y in (self.y_train, self.y_test):
            if len(y) and (y.min() < 0 or y.max() >= k):
                raise CleanpipeError(f"{self.source}: labels must lie in 0..{k - 1}")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def is_image(self) -> bool:
        return self.X_train.ndim == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X_train.shape[1:])

    def fingerprint(self) -> str:
        """sha256 over every array, so a run notices when its data changed on disk."""
        h = hashlib.sha256()
        for a in (self.X_train, self.y_train, self.X_test, self.y_test):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype}{a.shape}".encode())
            h.update(a.tobytes())
        for ids in (self.ids_train, self.ids_test):
            h.update("\n".join(map(str, ids)).encode())
        h.update("\n".join(self.class_names).encode())
        return h.hexdigest()

    def summary(self) -> dict:
        """What ``dataset.json`` records about the arrays (not the arrays themselves)."""
        return {
            "n_train": int(len(self.y_train)),
            "n_test": int(len(self.y_test)),
            "n_classes": self.n_classes,
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "dtype": str(self.X_train.dtype),
            "train_class_counts": np.bincount(self.y_train, minlength=self.n_classes).tolist(),
            "fingerprint": self.fingerprint(),
        }


def stratified_split(
    X: np.ndarray,
    y: np.ndarray,
    ids: np.ndarray,
    *,
    test_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded stratified hold-out: returns X_train, y_train, ids_train, X_test, y_test, ids_test.

    Both parts keep the source order, so IDs stay easy to read. ``test_fraction=0`` holds nothing
    out: every example is in the training split (so crossval and prune check all of them) and the
    test arrays are empty, shaped ``(0, *X.shape[1:])``.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ParameterError(
            "test_fraction", f"must be at least 0 (0: no test split, every example checked) and below 1, got {test_fraction}"
        )
    if test_fraction == 0.0:
        none = np.arange(0)
        return X, y, ids, X[none], y[none], ids[none]
    counts = np.bincount(y)
    if counts[counts > 0].min() < 2:
        raise CleanpipeError("every class needs at least 2 examples for a stratified train/test split")
    # Each class gives its share of ceil(fraction * N) test rows (largest remainders rounded up, ties in
    # a seeded order) but keeps at least one training row (so at extreme fractions the test part can come out
    # a few rows short); which rows, a seeded shuffle of the class decides.
    n_test = int(np.ceil(test_fraction * len(y)))
    present = int(np.count_nonzero(counts))
    if n_test < present or len(y) - n_test < present:
        part, size = ("test", n_test) if n_test < present else ("training", len(y) - n_test)
        raise ParameterError(
            "test_fraction", f"cannot split {len(y)} examples with {{name}} {test_fraction}: the {part} part ({size}) would be "
            f"smaller than the number of classes ({present}); choose a fraction between "
            f"{present / len(y):.3g} and {1 - present / len(y):.3g}, or 0 to check every example")
    rng = np.random.default_rng(seed)
    per_class = np.minimum(largest_remainder(counts * (n_test / len(y)), rng, total=n_test), np.maximum(counts - 1, 0))
    te = np.concatenate([members[: per_class[c]] for c, members in shuffled_classes(y, rng)])
    tr = np.setdiff1d(np.arange(len(y)), te)
    tr, te = np.sort(tr), np.sort(te)
    return X[tr], y[tr], ids[tr], X[te], y[te], ids[te]


def shuffled_classes(labels: np.ndarray, rng: np.random.Generator):
    """Each class present in ``labels`` (int, (N,)) with its row indices in an order shuffled by ``rng``.

    Yields ``(class, rows)`` in class order; classes are drawn in that order, so a seed fixes every class's rows.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    by_class = np.argsort(labels, kind="stable")  # class 0's rows, then class 1's, ...
    ends = np.cumsum(counts)
    for c, count in enumerate(counts):
        if count:
            yield c, by_class[ends[c] - count : ends[c]][rng.permutation(count)]


def largest_remainder(quotas: np.ndarray, rng: np.random.Generator, total: int | None = None) -> np.ndarray:
    """Integers summing to ``total`` (default round(sum(quotas))), each the floor or ceiling of its quota.

    The largest remainders are rounded up; equal remainders in a random order.
    """
    base = np.floor(quotas + 1e-9).astype(np.int64)
    total = int(round(quotas.sum())) if total is None else total
    short = total - int(base.sum())
    if short > 0:
        remainder = np.round(quotas - base, 9)  # equal in exact arithmetic compares equal here
        order = np.lexsort((rng.permutation(len(quotas)), -remainder))
        base[order[:short]] += 1
    return base


def index_ids(n: int, offset: int = 0) -> np.ndarray:
    """IDs for sources without names: the example's index in the source, as a string."""
    return np.arange(offset, offset + n).astype(str)
