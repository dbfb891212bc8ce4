"""Noise transition matrices and sampling noisy labels.

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
from pathlib import Path

import numpy as np

from cleanpipe.data.base import largest_remainder
from cleanpipe.errors import CleanpipeError
from cleanpipe.run import Run

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
    _check_args(kind, K, rate, sparsity)
    if kind in REALISTIC_KINDS:
        raise CleanpipeError(f"--kind {kind} has no matrix beforehand: it is made from the data (semantic_noisy_labels)")
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
            raise CleanpipeError("--kind asymmetric needs a class map: give --map SRC:DST,... (e.g. --map 3:8,5:6)")
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


def _check_args(kind: str, K: int | None, rate: float, sparsity: float) -> None:
    if kind not in ALL_KINDS:
        raise CleanpipeError(f"unknown noise kind {kind!r}; choose one of {', '.join(ALL_KINDS)}")
    if kind in REALISTIC_KINDS and not rate < 1.0:
        raise CleanpipeError(f"--kind {kind} needs --rate below 1 (the labeler's own share keeps its labels), got {rate}")
    if K is not None and K < 2:
        raise CleanpipeError(f"noise needs at least 2 classes, got {K}")
    if not (np.isfinite(rate) and 0.0 <= rate <= 1.0):
        raise CleanpipeError(f"--rate must lie in [0, 1], got {rate}")
    if not (np.isfinite(sparsity) and 0.0 <= sparsity <= 1.0):
        raise CleanpipeError(f"--sparsity must lie in [0, 1], got {sparsity}")
    if sparsity and kind != "random":
        raise CleanpipeError("--sparsity applies only to --kind random")
    if kind == "random" and K is not None and _random_trace(K, rate) < 1:
        raise CleanpipeError(
            f"--kind random needs the trace K(1 - rate) to be at least 1; with K={K} use --rate <= {1 - 1 / K:.3g}"
        )


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
    recipe network for this data; it scores every other row, and the ``round(rate * N)`` rows with the
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
    from cleanpipe.crossval import default_settings, train_fold

    labels = np.asarray(labels, dtype=np.int64)
    N = len(labels)
    if not 0.0 < labeler_fraction < 1.0:
        raise CleanpipeError(f"--labeler-fraction must lie in (0, 1), got {labeler_fraction}")
    rng = np.random.default_rng([seed, 2])
    small = np.zeros(N, dtype=bool)
    for j in range(n_classes):
        members = np.flatnonzero(labels == j)
        take = min(len(members), max(2, int(round(labeler_fraction * len(members)))))
        small[rng.choice(members, size=take, replace=False)] = True
    n_flip = int(round(rate * N))
    if n_flip > int((~small).sum()):
        raise CleanpipeError(
            f"--rate {rate:g} asks for {n_flip:,} wrong labels but only {int((~small).sum()):,} rows are outside the "
            f"labeler's share; lower --rate or --labeler-fraction")
    # One model, plain predictions: the labeler is a weak annotator, not a tuned detector.
    settings = default_settings(tuple(X.shape[1:]), source, seed=seed, n_folds=2, tta=False, repeats=1)
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
    raise CleanpipeError(
        f"no standard class map for dataset {source or 'a bare label file'}; give one with --map SRC:DST,... (e.g. --map 3:8,5:6)"
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
            raise CleanpipeError(f"--map: {pair!r} is not SRC:DST (write e.g. --map 3:8,5:6)")
        ids = []
        for name in parts:
            if name not in lookup:
                raise CleanpipeError(
                    f"--map: unknown class {name!r}; classes are 0..{len(class_names) - 1}"
                    + (f" or names like {class_names[0]!r}" if class_names and class_names[0] != "0" else "")
                )
            ids.append(lookup[name])
        src, dst = ids
        if src == dst:
            raise CleanpipeError(f"--map: {pair!r} maps a class to itself")
        if src in out:
            raise CleanpipeError(f"--map: class {parts[0]!r} is mapped twice")
        out[src] = dst
    if not out:
        raise CleanpipeError("--map is empty; write e.g. --map 3:8,5:6")
    return out


# ---- the stage ---------------------------------------------------------------------------


@dataclass
class NoiseStage:
    """What ``cleanpipe noise`` did, for the CLI's summary."""

    result: NoiseResult
    true_labels: np.ndarray
    class_names: list[str]
    manifest: dict
    source: str


def run_noise_stage(
    run: Run,
    *,
    spec=None,
    labels_file: Path | None = None,
    kind: str,
    rate: float,
    sparsity: float = 0.0,
    class_map: str | None = None,
    n_classes: int | None = None,
    seed: int = 0,
    labeler_fraction: float = LABELER_FRACTION,
    device: str = "auto",
) -> NoiseStage:
    """Noise the training labels of a run's dataset (or a bare label file) into ``RUN/noise/``.

    Parameters
    ----------
    run : Run
    spec : DataSpec, optional
        The dataset to bind to the run; None uses the run's own ``dataset.json``
        (or, with ``labels_file``, no dataset at all).
    labels_file : Path, optional
        Standalone form (with ``spec=None``): noise this label vector (.npy/.csv/.json).
        With a ``spec``, put the file in ``spec.labels`` instead.
    kind, rate, sparsity, seed : see :func:`make_noisy_labels`.
    class_map : str, optional
        ``--map`` text for ``asymmetric``; None takes the dataset's standard map.
    n_classes : int, optional
        Standalone form only; default ``max(label) + 1``.
    labeler_fraction, device
        ``semantic`` only: the labeler's share of the data and where it trains.
    """
    from cleanpipe.labels import read_labels

    standalone = spec is None and labels_file is not None
    _check_args(kind, n_classes, rate, sparsity)  # fail before touching the disk (K is checked once known)
    if class_map and kind != "asymmetric":
        raise CleanpipeError("--map applies only to --kind asymmetric")
    if n_classes and not standalone:
        raise CleanpipeError("--n-classes applies only to the standalone form (--labels FILE without --dataset)")
    if kind in REALISTIC_KINDS and standalone:
        raise CleanpipeError(f"--kind {kind} learns from the examples: give the data (--dataset ...), not a bare label file")
    if labeler_fraction != LABELER_FRACTION and kind not in REALISTIC_KINDS:
        raise CleanpipeError("--labeler-fraction applies only to --kind semantic")
    if kind in REALISTIC_KINDS:
        from cleanpipe.engine import resolve_device

        resolve_device(device)
    with run.transaction():
        if standalone:
            if run.dataset_json() is not None:
                raise CleanpipeError(
                    f"{run.root} already has a dataset; noise a bare --labels file in a new run directory"
                )
            labels = read_labels(Path(labels_file))
            K = int(n_classes) if n_classes else int(labels.max()) + 1
            if labels.max() >= K:
                raise CleanpipeError(f"{labels_file} has label {labels.max()} but --n-classes is {K}")
            class_names, source, meta, ds = [str(k) for k in range(K)], None, {}, None
        else:
            spec, ds, is_new = run.bind_dataset(spec)
            labels, K, class_names, source, meta = ds.y_train, ds.n_classes, ds.class_names, spec.source, ds.meta
        if kind == "asymmetric":
            cmap = parse_class_map(class_map, class_names) if class_map else default_class_map(source, K, meta)
        else:
            cmap = None
        extra: dict = {}
        if kind == "semantic":
            sem = semantic_noisy_labels(ds.X_train, labels, rate, n_classes=K, labeler_fraction=labeler_fraction,
                                        source=source, seed=seed, device=device)
            result = sem.result
            extra = {"labeler_accuracy": round(sem.labeler_accuracy, 6), "labeler_rows": int(len(sem.labeler_rows)),
                     "top_confusions": top_confusions(labels, result.noisy_labels, class_names)}
        else:
            result = make_noisy_labels(labels, kind, rate, n_classes=K, class_map=cmap, sparsity=sparsity, seed=seed)
        changed = result.noisy_labels != labels
        parameters = {
            "kind": kind,
            "rate": rate,
            "sparsity": sparsity,
            "seed": seed,
            "class_map": {str(k): v for k, v in cmap.items()} if cmap else None,
            "labels_file": str(Path(labels_file).resolve()) if standalone else None,
            "n_classes": K,
        }
        if kind == "semantic":
            parameters.update({"labeler_fraction": labeler_fraction, "labeler": sem.settings})
        with run.write_stage("noise") as w:
            w.save_npy("noisy_labels.npy", result.noisy_labels)
            w.save_npy("noise_matrix.npy", result.noise_matrix)
            if kind == "semantic":
                w.save_npy("labeler_rows.npy", sem.labeler_rows)
            if standalone:
                w.record_input(Path(labels_file))
            else:
                if is_new:
                    run.write_dataset(spec, ds)
                w.record_input(run.root / "dataset.json")
            manifest = w.finish(
                parameters=parameters,
                metrics={
                    "actual_noise_rate": round(result.actual_noise_rate, 6),
                    "expected_noise_rate": round(result.expected_noise_rate, 6),
                    "n_changed": int(changed.sum()),
                    "n": int(len(labels)),
                    "n_changed_per_class": np.bincount(labels[changed], minlength=K).tolist(),
                    "n_per_class": np.bincount(labels, minlength=K).tolist(),
                    **extra,
                },
            )
    return NoiseStage(result, labels, class_names, manifest, source or "labels file")
