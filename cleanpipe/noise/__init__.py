"""Noise transition matrices and sampling noisy labels: the array-level core of ``cleanpipe noise``.

Every matrix here is column-stochastic: ``M[i, j] = P(noisy label = i | true label = j)``,
the convention of cleanlab and of ``noise/noise_matrix.npy``.

Kinds
-----
symmetric
    A label moves with probability ``rate`` to one of the other K-1 classes uniformly.
uniform
    IEG's convention: with probability ``rate`` the label is redrawn from all K classes,
    so about ``rate * (1 - 1/K)`` of the labels change.
asymmetric
    A class map applied with probability ``rate`` (classes outside the map keep their label).
pairflip
    Class ``j`` becomes ``j + 1 mod K`` with probability ``rate`` (INCV's asymmetric noise).
random
    Confident learning's random noise matrix with trace ``K * (1 - rate)`` and a
    share ``sparsity`` of zero off-diagonal rates, drawn by
    ``cleanlab.benchmarking.noise_generation``. Where the trace is an integer (the CL paper's
    settings: 20%, 40%, ... of 10 classes) cleanlab also applies it, exactly as the paper did, so
    its noisy labels can be regenerated bit for bit (the paper truncated the trace with ``int()``,
    which floating point makes 3 at 60%; we take the integer 4). Elsewhere (0.5%, 1%, 3%, ...)
    our stratified sampler applies it: cleanlab's rounds each class's flips and gives no noise
    at all at 0.5% or 1% of digits.

semantic
    Realistic errors (IEG's "semantic noise"): a network trained on a small labeled share of the
    data labels the rest, and the ``rate * N`` examples it puts most probability on a wrong class
    take that class (:func:`semantic_noisy_labels`). Its matrix is the one realised.

Sampling (the matrix kinds but ``random``) is stratified rather than i.i.d., in two levels of
largest-remainder rounding: the total number of flips is exactly ``round(sum_j n_j (1 - M[j, j]))``,
each true class ``j`` of ``n_j`` examples gets the floor or the ceiling of its expected
``n_j (1 - M[j, j])`` flips, and each target ``i`` the floor or ceiling of its share ``n_j M[i, j]``;
the examples are chosen at random. Ties between equal remainders are broken at random (seeded), not
by class order. At low rates this matters: 0.5% of 144 digits is 0.72 flips, which rounding within
each class would make 0 for every class (no noise at all); here 0.5% of 1,437 digits is exactly
7 flips, in 7 of the 10 classes (those with the largest remainders), and the manifest lists the
flips per class. The expected labels are those of independent flips, without their sampling error,
so a benchmark's noise is what it says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cleanpipe.data.base import largest_remainder
from cleanpipe.errors import CleanpipeError
from cleanpipe.validation import ParameterError

KINDS = ("symmetric", "uniform", "asymmetric", "pairflip", "random")  # the kinds drawn from a matrix
REALISTIC_KINDS = ("semantic",)  # the kinds made by a model of the data (they need the examples, not only labels)
ALL_KINDS = KINDS + REALISTIC_KINDS

# The CIFAR-10 class map of Patrini et al. (2017), used by Co-teaching, INCV and most papers since.
CIFAR10_MAP = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}  # truck->automobile, bird->airplane, deer->horse, cat<->dog
# The MNIST map of the same papers: 2->7, 3->8, 5<->6, 7->1 (visually similar digits).
DIGIT_MAP = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}


@dataclass
class NoiseResult:
    """Noisy labels and the matrix they were drawn from.

    Attributes
    ----------
    noisy_labels : np.ndarray
        int64 of shape (N,).
    noise_matrix : np.ndarray
        float64 of shape (K, K), ``P(noisy = i | true = j)``.
    actual_noise_rate : float
        Share of labels that differ from the input labels.
    expected_noise_rate : float
        ``sum_j p(j) * (1 - M[j, j])`` with the input's class frequencies ``p``.
    """

    noisy_labels: np.ndarray
    noise_matrix: np.ndarray
    actual_noise_rate: float
    expected_noise_rate: float


def noise_matrix(
    kind: str,
    n_classes: int,
    rate: float,
    *,
    class_map: dict[int, int] | None = None,
    sparsity: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Build the (K, K) float64 matrix ``P(noisy = i | true = j)`` of a noise kind.

    Parameters
    ----------
    kind : {'symmetric', 'uniform', 'asymmetric', 'pairflip', 'random'}
    n_classes : int
        K >= 2.
    rate : float
        In [0, 1]. For ``asymmetric`` and ``pairflip`` at most 1; for ``random`` the
        rounded trace must keep at least one unit of probability on the diagonal.
    class_map : dict[int, int], optional
        Required for ``asymmetric``: source class -> target class.
    sparsity : float
        Only for ``random``: share of off-diagonal rates forced to 0.
    seed : int
        Only for ``random``: the matrix's seed (cleanlab's ``seed``).
    """
    K = int(n_classes)
    check_noise_arguments(kind, K, rate, sparsity)
    if kind in REALISTIC_KINDS:
        raise ParameterError("kind", f"{kind!r} has no matrix beforehand: it is made from the data (semantic_noisy_labels)")
    eye = np.eye(K)
    if rate == 0.0:
        return eye
    if kind == "symmetric":
        return (1.0 - rate) * eye + rate / (K - 1) * (1.0 - eye)
    if kind == "uniform":
        return (1.0 - rate) * eye + rate / K
    if kind == "pairflip":
        return (1.0 - rate) * eye + rate * np.roll(eye, 1, axis=0)
    if kind == "asymmetric":
        if not class_map:
            raise ParameterError("class_map", "is needed for {kind} asymmetric: give pairs SRC:DST,... (e.g. 3:8,5:6)",
                                 ("kind",))
        M = eye.copy()
        for src, dst in class_map.items():
            M[src, src], M[dst, src] = 1.0 - rate, rate
        return M
    # random: the CL paper's recipe (cleanlab's ``generate_noise_matrix_from_trace``), with the trace rounded.
    from cleanlab.benchmarking.noise_generation import generate_noise_matrix_from_trace

    trace = _random_trace(K, rate)
    if trace >= K:
        return eye
    M = generate_noise_matrix_from_trace(
        K, trace=trace, valid_noise_matrix=False, frac_zero_noise_rates=sparsity, seed=seed
    )
    if M is None:  # cleanlab gives up after max_iter draws
        raise CleanpipeError(f"cleanlab found no noise matrix for rate {rate} and sparsity {sparsity}; try other values")
    return np.asarray(M, dtype=np.float64)


def _random_trace(K: int, rate: float) -> float:
    """``K (1 - rate)``; an integer where it is one up to rounding error (10 * (1 - 0.6) = 3.9999999999999996 is 4)."""
    trace = K * (1.0 - rate)
    return int(round(trace)) if abs(trace - round(trace)) < 1e-6 else trace


def _paper_sampling(K: int, rate: float) -> bool:
    """The CL paper's settings (an integer trace) are sampled by cleanlab, bit for bit; others by our stratified sampler."""
    return isinstance(_random_trace(K, rate), int)


def check_noise_arguments(kind: str, K: int | None, rate: float, sparsity: float) -> None:
    """Refuse a kind, rate or sparsity that makes no noise (``K`` None: the class count is not known yet)."""
    if kind not in ALL_KINDS:
        raise ParameterError("kind", f"{{name}}: unknown noise kind {kind!r}; choose one of {', '.join(ALL_KINDS)}")
    if kind in REALISTIC_KINDS and not rate < 1.0:
        raise ParameterError("rate", f"must be below 1 for {{kind}} {kind} (the labeler's own share keeps its labels), got {rate}", ("kind",))
    if K is not None and K < 2:
        raise CleanpipeError(f"noise needs at least 2 classes, got {K}")
    if not (np.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise ParameterError("rate", f"must lie in [0, 1], got {rate}")
    if not (np.isfinite(sparsity) and 0.0 <= sparsity <= 1.0):
        raise ParameterError("sparsity", f"must lie in [0, 1], got {sparsity}")
    if sparsity and kind != "random":
        raise ParameterError("sparsity", "applies only to {kind} random", ("kind",))
    if kind == "random" and K is not None and _random_trace(K, rate) < 1:
        raise ParameterError(
            "rate", f"must be at most {1 - 1 / K:.3g} for {{kind}} random with K={K} (the trace K(1 - rate) must be at least 1)",
            ("kind",))


def sample_noisy_labels(labels: np.ndarray, matrix: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Draw noisy labels from ``matrix`` with exact counts (see the module's notes on sampling).

    Parameters
    ----------
    labels : np.ndarray
        int of shape (N,), values in 0..K-1.
    matrix : np.ndarray
        float of shape (K, K), column-stochastic ``P(noisy = i | true = j)``.
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    np.ndarray
        int64 of shape (N,).
    """
    labels = np.asarray(labels, dtype=np.int64)
    K = matrix.shape[0]
    rng = np.random.default_rng(seed)
    counts = flip_counts(np.bincount(labels, minlength=K), matrix, seed=seed)
    noisy = labels.copy()
    for j in range(K):
        members = np.flatnonzero(labels == j)
        if len(members) == 0:
            continue
        targets = np.repeat(np.arange(K), counts[:, j])
        noisy[rng.permutation(members)] = targets
    return noisy


def flip_counts(class_sizes: np.ndarray, matrix: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """How many examples of each true class take each label: int64 (K, K), columns summing to ``class_sizes``.

    Two levels of largest-remainder rounding: flips per class (their total exact), then per target.
    """
    sizes = np.asarray(class_sizes, dtype=np.float64)
    K = len(sizes)
    off = sizes[None, :] * matrix * (1.0 - np.eye(K))
    tie_rng = np.random.default_rng([seed, 1])  # a stream of its own: the sampling's stays as it was
    per_class = largest_remainder(off.sum(axis=0), tie_rng)
    counts = np.zeros((K, K), dtype=np.int64)
    for j in range(K):
        if per_class[j]:
            counts[:, j] = largest_remainder(off[:, j], tie_rng, total=int(per_class[j]))
        counts[j, j] = int(class_sizes[j]) - counts[:, j].sum()
    return counts


def make_noisy_labels(
    labels: np.ndarray,
    kind: str,
    rate: float,
    *,
    n_classes: int,
    class_map: dict[int, int] | None = None,
    sparsity: float = 0.0,
    seed: int = 0,
) -> NoiseResult:
    """Noise a label vector with one of :data:`KINDS`.

    Parameters
    ----------
    labels : np.ndarray
        int of shape (N,), values in 0..K-1 (the labels taken as true).
    kind, rate, class_map, sparsity : see :func:`noise_matrix`.
    n_classes : int
        K.
    seed : int
        Seed of both the matrix (``random``) and the sampling.

    Returns
    -------
    NoiseResult
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise CleanpipeError(f"labels must be a 1-D integer vector, got shape {labels.shape} and dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise CleanpipeError(f"labels must lie in 0..{n_classes - 1}, found {labels.min()}..{labels.max()}")
    M = noise_matrix(kind, n_classes, rate, class_map=class_map, sparsity=sparsity, seed=seed)
    if kind == "random" and not np.array_equal(M, np.eye(n_classes)) and _paper_sampling(n_classes, rate):
        from cleanlab.benchmarking.noise_generation import generate_noisy_labels

        # cleanlab samples from the global NumPy state; seed it as the paper did, then restore it.
        state = np.random.get_state()
        try:
            np.random.seed(seed)
            noisy = np.asarray(generate_noisy_labels(labels, M), dtype=np.int64)
        finally:
            np.random.set_state(state)
    else:
        noisy = sample_noisy_labels(labels, M, seed=seed)
    prior = np.bincount(labels, minlength=n_classes) / max(len(labels), 1)
    return NoiseResult(
        noisy_labels=noisy,
        noise_matrix=M,
        actual_noise_rate=float(np.mean(noisy != labels)) if len(labels) else 0.0,
        expected_noise_rate=float(np.sum(prior * (1.0 - np.diag(M)))),
    )


def transition_matrix(true_labels: np.ndarray, noisy_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Empirical ``P(noisy = i | true = j)`` as a (K, K) float64 array (empty columns are 0)."""
    counts = np.zeros((n_classes, n_classes))
    np.add.at(counts, (noisy_labels, true_labels), 1)
    totals = counts.sum(axis=0, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def top_confusions(true_labels: np.ndarray, noisy_labels: np.ndarray, class_names: list[str], n: int = 5) -> list[dict]:
    """The ``n`` most frequent (true -> noisy) changes, largest first, as ``{"true", "noisy", "count"}``."""
    K = len(class_names)
    counts = np.zeros((K, K), dtype=np.int64)
    changed = true_labels != noisy_labels
    np.add.at(counts, (true_labels[changed], noisy_labels[changed]), 1)
    flat = np.argsort(-counts, axis=None, kind="stable")[:n]
    return [{"true": class_names[t], "noisy": class_names[y], "count": int(counts[t, y])}
            for t, y in zip(*np.unravel_index(flat, counts.shape)) if counts[t, y] > 0]


def default_class_map(source: str | None, n_classes: int, meta: dict | None = None) -> dict[int, int]:
    """The standard asymmetric map of a dataset, or a CleanpipeError if it has none.

    CIFAR-10: truck->automobile, bird->airplane, deer->horse, cat<->dog. Digits and MNIST:
    2->7, 3->8, 5<->6, 7->1. CIFAR-100: each class -> the next class of its superclass
    (circularly), the convention of Co-teaching-era papers.
    """
    if source == "cifar10" and n_classes == 10:
        return dict(CIFAR10_MAP)
    if source in ("digits", "mnist") and n_classes == 10:
        return dict(DIGIT_MAP)
    if source == "cifar100" and meta and "coarse_of_fine" in meta:
        coarse = np.asarray(meta["coarse_of_fine"])
        out: dict[int, int] = {}
        for c in np.unique(coarse):
            members = np.flatnonzero(coarse == c)
            for a, b in zip(members, np.roll(members, -1)):
                out[int(a)] = int(b)
        return out
    raise ParameterError(
        "class_map", f"is needed: dataset {source or 'a bare label file'} has no standard class map; give pairs "
        "SRC:DST,... (e.g. 3:8,5:6)"
    )


def parse_class_map(text: str, class_names: list[str]) -> dict[int, int]:
    """Parse ``"3:8,5:6"`` (class ids or class names) into ``{3: 8, 5: 6}``.

    Raises
    ------
    CleanpipeError
        Malformed pairs, unknown classes, a class mapped to itself or mapped twice.
    """
    lookup = {name: k for k, name in enumerate(class_names)}
    lookup.update({str(k): k for k in range(len(class_names))})
    out: dict[int, int] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        parts = [p.strip() for p in pair.split(":")]
        if len(parts) != 2 or not all(parts):
            raise ParameterError("class_map", f"{{name}}: {pair!r} is not SRC:DST (write e.g. 3:8,5:6)")
        ids = []
        for name in parts:
            if name not in lookup:
                raise ParameterError(
                    "class_map", f"{{name}}: unknown class {name!r}; classes are 0..{len(class_names) - 1}"
                    + (f" or names like {class_names[0]!r}" if class_names and class_names[0] != "0" else "")
                )
            ids.append(lookup[name])
        src, dst = ids
        if src == dst:
            raise ParameterError("class_map", f"{{name}}: {pair!r} maps a class to itself")
        if src in out:
            raise ParameterError("class_map", f"{{name}}: class {parts[0]!r} is mapped twice")
        out[src] = dst
    if not out:
        raise ParameterError("class_map", "is empty; write e.g. 3:8,5:6")
    return out
