"""Training as a library call: any registered method on NumPy arrays, no run directory needed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from cleanpipe.engine import resolve_device
from cleanpipe.errors import CleanpipeError
from cleanpipe.progress import NullProgress
from cleanpipe.recipes import FitSettings, fit_settings
from cleanpipe.robust.base import (
    Trainer,
    TrainingMethod,
    TrainJob,
    TrainResult,
    option_values,
)
from cleanpipe.robust.registry import get_method
from cleanpipe.validation import ParameterError


def _check_arrays(X, labels, rows, X_test, y_test, n_classes):
    X = np.asarray(X)
    if X.ndim not in (2, 4):
        raise ParameterError("X", f"must be uint8 images (N, C, H, W) or float32 features (N, D), got shape {X.shape}")
    if X.ndim == 4 and X.dtype != np.uint8:
        raise ParameterError("X", f"images must be uint8 (0-255), got {X.dtype}; features are 2-D float arrays")
    if X.ndim == 2:
        X = X.astype(np.float32, copy=False)
    labels = np.asarray(labels)
    if labels.shape != (len(X),) or not np.issubdtype(labels.dtype, np.integer):
        raise ParameterError("labels", f"must be {len(X)} integer class ids (one per row of X), got {labels.dtype} {labels.shape}")
    labels = labels.astype(np.int64)
    if len(labels) and labels.min() < 0:
        raise ParameterError("labels", "must be class ids >= 0")
    K = int(n_classes) if n_classes is not None else int(labels.max(initial=0)) + 1
    if len(labels) and labels.max() >= K:
        raise ParameterError("labels", f"hold class {labels.max()}, out of range for n_classes={K}")
    rows = np.arange(len(X)) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= len(X))):
        raise ParameterError("rows", f"must be row numbers of X (0..{len(X) - 1})")
    if (X_test is None) != (y_test is None):
        raise ParameterError("X_test", "and y_test go together")
    if X_test is not None:
        X_test = np.asarray(X_test, dtype=X.dtype)
        if X_test.shape[1:] != X.shape[1:]:
            raise ParameterError("X_test", f"rows must be shaped like X's {X.shape[1:]}, got {X_test.shape[1:]}")
        y_test = np.asarray(y_test, dtype=np.int64)
        if y_test.shape != (len(X_test),) or (len(y_test) and (y_test.min() < 0 or y_test.max() >= K)):
            raise ParameterError("y_test", f"must be {len(X_test)} class ids in 0..{K - 1}")
    return X, labels, rows, X_test, y_test, K


def train_model(
    X: np.ndarray,
    labels: np.ndarray,
    rows: np.ndarray | None = None,
    *,
    method: str | TrainingMethod = "standard",
    options=None,
    X_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
    settings=None,
    n_classes: int | None = None,
    class_names: list[str] | None = None,
    truth: np.ndarray | None = None,
    device: str = "auto",
    resume_dir: Path | None = None,
    progress=None,
) -> TrainResult:
    """Train a network with a noise-robust method on arrays.

    Parameters
    ----------
    X : np.ndarray
        uint8 (N, C, H, W) images or float32 (N, D) features.
    labels : np.ndarray
        int (N,): the (possibly noisy) labels.
    rows : np.ndarray, optional
        int (n,): the rows to train on (e.g. the examples a prune step kept); default all.
    method : str or TrainingMethod
        A name from :data:`cleanpipe.robust.METHODS` (``standard``, ``coteaching``, ``coteaching-plus``,
        ``incv-coteaching``, ``l2r``, ``ieg``, ``noisy-student``) or a method object.
    options : dataclass, optional
        The method's options (``method.Options``, e.g. :class:`cleanpipe.robust.CoTeachingOptions`);
        default its defaults. What a method needs beyond its defaults: Co-teaching a ``forget_rate``,
        INCV's Co-teaching its ``candidates`` and ``eval_ratio``, IEG and L2R trusted labels
        (``trusted_rows``/``trusted_labels``, or ``truth``), Noisy Student ``unlabeled_rows`` or ``X_extra``.
    X_test, y_test : np.ndarray, optional
        A test split, scored after every epoch (``history``'s ``test_accuracy``).
    settings : cleanpipe.recipes.FitSettings, optional
        Network and recipe; default the train recipe for X's kind of data (``cleanpipe.recipes``).
    n_classes : int, optional
        K; default ``labels.max() + 1`` (or the length of ``class_names``).
    class_names : list of str, optional
        Names of the classes, for messages.
    truth : np.ndarray, optional
        int (N,): the true labels of a benchmark, for diagnostics (Co-teaching's pure ratio, IEG's weights
        of clean and noisy rows) and as IEG's and L2R's trusted labels when none are given.
    device : {'auto', 'cpu', 'cuda'}
    resume_dir : Path, optional
        Per-epoch checkpoints go here, and a call with the same inputs resumes from them.
    progress : cleanpipe.progress.NullProgress, optional

    Returns
    -------
    TrainResult
        The networks (``nets[0]`` the model), the history, the rows trained on, the resolved settings and
        the method's per-example outputs; Noisy Student returns a
        :class:`~cleanpipe.robust.noisystudent.NoisyStudentResult`.

    Examples
    --------
    >>> from cleanpipe.robust import CoTeachingOptions, train_model
    >>> result = train_model(X, y, method="coteaching", options=CoTeachingOptions(forget_rate=0.3),
    ...                      X_test=X_test, y_test=y_test)  # doctest: +SKIP
    >>> result.test_accuracy  # doctest: +SKIP
    """

    spec = get_method(method) if isinstance(method, str) else method
    options = spec.Options() if options is None else options
    if not isinstance(options, spec.Options):
        raise ParameterError("options", f"of {spec.name} must be a {spec.Options.__name__}, got {type(options).__name__}")
    if n_classes is None and class_names is not None:
        n_classes = len(class_names)
    X, labels, rows, X_test, y_test, K = _check_arrays(X, labels, rows, X_test, y_test, n_classes)
    if truth is not None:
        truth = np.asarray(truth, dtype=np.int64)
        if truth.shape != labels.shape:
            raise ParameterError("truth", f"must be {len(labels)} class ids like labels, got shape {truth.shape}")
    settings = fit_settings("train", X.shape[1:]) if settings is None else settings
    if not isinstance(settings, FitSettings):
        raise ParameterError("settings", f"must be a cleanpipe.recipes.FitSettings, got {type(settings).__name__}")
    dev = resolve_device(device)
    job = TrainJob(X, labels, rows, K, settings, truth, None if class_names is None else list(class_names))
    plan = spec.prepare(options, job)
    if len(plan.rows) < 2:
        raise CleanpipeError(f"only {len(plan.rows)} training example(s) left; nothing to train on")
    key = b""
    if resume_dir is not None:  # what makes the result: a checkpoint made from anything else is not resumed
        made_of = {"method": spec.name, "settings": settings.as_dict(), "options": option_values(options),
                   "method_settings": plan.method_settings}
        h = hashlib.sha256(json.dumps(made_of, sort_keys=True, default=str).encode())
        for a in (plan.rows, job.labels, plan.labels, *plan.state.get("key_arrays", ())):
            if a is not None:
                h.update(np.ascontiguousarray(a).tobytes())
        h.update(hashlib.sha256(np.ascontiguousarray(X if plan.X is None else plan.X).tobytes()).digest())
        key = h.digest()

    trainer = Trainer(job, plan, X_test, y_test, dev, None if resume_dir is None else Path(resume_dir), key,
                      progress or NullProgress())
    return spec.train(trainer, options, plan)
