"""Out-of-fold predicted probabilities, the array-level core: fold plans, crossval's settings and the one
held-out fit (a fresh model fitted to some rows, predicting others) that crossval's folds, INCV, the theory
check and the semantic-noise labeler share.

Folds are stratified and shuffled with the seed; each fold trains a fresh model on the other folds through
the engine and scores its own rows, which no model that scored them has seen. The stage
(:mod:`cleanpipe.stages.crossval`) runs the folds where the executor says and keeps their shards.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cleanpipe.data.base import shuffled_classes
from cleanpipe.engine import (
    DeviceData,
    Mixup,
    device_name,
    fit,
    predict_proba,
    resolve_device,
)
from cleanpipe.errors import CleanpipeError
from cleanpipe.lazy import lazy_module
from cleanpipe.recipes import FitSettings, build_network, fit_settings
from cleanpipe.validation import ParameterError, check_number

torch = lazy_module("torch")

N_FOLDS = 4  # the default number of folds K, everywhere


def fold_plan(labels: np.ndarray, n_folds: int, seed: int, class_names=None) -> np.ndarray:
    """Assign every example to a fold: stratified, shuffled with ``seed``.

    Each class's examples, in an order shuffled by ``numpy.random.default_rng(seed)``, are dealt to
    the folds in turn, each class starting where the previous one stopped: every fold holds each
    class's count divided by K give or take one, and fold sizes differ by at most one. (Written with
    NumPy rather than scikit-learn's ``StratifiedKFold``: importing scikit-learn costs crossval
    0.8 s of a 1-epoch run's start-up, and this is its only use there.)

    Parameters
    ----------
    labels : np.ndarray
        int of shape (N,).
    n_folds : int
        K, at least 2 and at most the size of the smallest class.
    seed : int
    class_names : sequence of str, optional
        Names the smallest class in the error when there are too few of it.

    Returns
    -------
    np.ndarray
        int64 of shape (N,), values 0..K-1.
    """
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    check_number(n_folds, "n_folds", low=2)
    k = int(np.flatnonzero(counts == smallest)[0])
    name = repr(class_names[k]) if class_names is not None else str(k)
    if smallest < 2:
        raise CleanpipeError(f"class {name} has only 1 example; cross-validation needs at least 2 of every class "
                             "(one per fold): add examples of it or leave the class out")
    if n_folds > smallest:
        raise ParameterError(
            "n_folds", f"{n_folds} is larger than the smallest class ({smallest} examples of class {name}); "
            f"use {smallest} or fewer"
        )
    folds = np.empty(len(labels), dtype=np.int64)
    start = 0
    for _, members in shuffled_classes(labels, np.random.default_rng(seed)):
        folds[members] = (start + np.arange(len(members))) % n_folds
        start = (start + len(members)) % n_folds
    return folds


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat ``repeat`` (repeat 0 keeps ``seed``, so one repeat is the plain K-fold run)."""
    return int(seed) if repeat == 0 else int(np.random.SeedSequence([int(seed), int(repeat)]).generate_state(1)[0] >> 1)


def fold_plans(labels: np.ndarray, n_folds: int, seed: int, repeats: int = 1, class_names=None) -> np.ndarray:
    """Fold assignments of every repeat: int64 (R, N), row r a :func:`fold_plan` with :func:`repeat_seed` (seed, r)."""
    check_number(repeats, "repeats", low=1)
    return np.stack([fold_plan(labels, n_folds, repeat_seed(seed, r), class_names) for r in range(repeats)])


@dataclass
class CrossvalSettings(FitSettings):
    """What makes a fold's result (the recipe, the fold count, test-time augmentation): shards made with
    other settings are never mixed in. ``repeats`` is how many fold splits are averaged; a repeat's
    shards do not depend on it, so ``--repeats 2`` reuses the shards of a run with one.

    ``tta`` scores each held-out image also shifted by the training translation (up, down, left,
    right) and averages the five views (ten with flips). ``mixup`` > 0 trains the folds with mixup
    (:class:`cleanpipe.engine.Mixup`, Beta(mixup, mixup)), so that they do not learn their training
    folds' consistent confusions; 0 trains them on plain cross-entropy.
    """

    n_folds: int = N_FOLDS
    repeats: int = 1
    tta: bool = False
    mixup: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.n_folds, "n_folds", low=2)
        check_number(self.repeats, "repeats", low=1)
        check_number(self.mixup, "mixup", low=0)

    def method(self, seed: int):
        """The folds' loss step: :class:`~cleanpipe.engine.Mixup` (seeded with ``seed``) when ``mixup`` > 0, else None
        (the engine's plain cross-entropy)."""
        return Mixup(self.mixup, seed) if self.mixup > 0 else None

    def train_config(self, seed: int, **overrides):
        return super().train_config(seed, **{"tta_shift": self.tta, **overrides})

    def key(self, labels: np.ndarray, fingerprint: str, repeat: int = 0) -> str:
        made_by = {k: v for k, v in asdict(self).items() if k != "repeats"}
        h = hashlib.sha256(json.dumps(made_by, sort_keys=True).encode())
        h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
        h.update(fingerprint.encode())
        if repeat:
            h.update(f"repeat {repeat}".encode())
        return h.hexdigest()[:16]


def default_settings(input_shape: tuple[int, ...], source: str | None = None, model: str = "auto",
                     **overrides) -> CrossvalSettings:
    """Crossval's recipe for data of this shape (``cleanpipe.recipes``), with the overrides that are not None."""
    return fit_settings("crossval", input_shape, source=source, model=model, cls=CrossvalSettings, **overrides)


@dataclass
class FoldResult:
    fold: int
    rows: np.ndarray
    probs: np.ndarray
    seconds: float
    device: str


@dataclass
class HeldOut:
    """What :func:`fit_held_out` returns: the held-out rows' probabilities and where they were computed."""

    probs: np.ndarray  # float32 (len(held_rows), K)
    device: str


def fit_held_out(
    X: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    held_rows: np.ndarray,
    settings: FitSettings,
    n_classes: int,
    *,
    seed: int,
    cfg=None,
    device: str = "auto",
    init_state: dict | None = None,
    device_memory: int | None = None,
    network: bool = False,
    each_epoch: Callable[[int, np.ndarray], None] | None = None,
    **hooks,
) -> HeldOut:
    """Fit a fresh model of ``settings.model`` to ``labels[train_rows]`` and predict ``held_rows``.

    Parameters
    ----------
    X : np.ndarray
        uint8 (N, C, H, W) or float32 (N, D).
    labels : np.ndarray
        int64 (N,): the labels to train on (only ``train_rows`` are read).
    train_rows, held_rows : np.ndarray
        int (n,), disjoint.
    settings : FitSettings
        The network (a concrete name; built with the recipe's arguments) and its recipe.
    n_classes : int
    seed : int
        Seeds the initial weights (and, with no ``cfg``, the training).
    cfg : cleanpipe.engine.TrainConfig, optional
        The engine's configuration; default ``settings.train_config(seed)``.
    device : {'auto', 'cpu', 'cuda'}
    init_state : dict, optional
        Initial weights (INCV starts every model from the same ones).
    device_memory : int, optional
        Bytes of device memory the data may take; more is streamed from host memory.
    network : bool
        Require a torch network (INCV and the theory check). Without it a scikit-learn model
        (``logreg``) is also accepted, and fitted on the CPU.
    each_epoch : callable(epoch, probs), optional
        Sees the held-out rows' probabilities after every epoch (INCV keeps its best epoch so).
    hooks
        ``method``, ``checkpoint``, ``on_epoch``, ``on_batch`` of :func:`cleanpipe.engine.fit` (a
        scikit-learn model takes none of them).
    """
    torch.manual_seed(seed)
    model, _ = build_network(settings.model, tuple(X.shape[1:]), n_classes, network=network)
    if not isinstance(model, torch.nn.Module):  # scikit-learn estimator (logreg)
        model.fit(X[train_rows], labels[train_rows])
        probs = np.zeros((len(held_rows), n_classes), dtype=np.float32)
        probs[:, model.classes_] = model.predict_proba(X[held_rows])
        return HeldOut(probs, "cpu (scikit-learn)")
    if init_state is not None:
        model.load_state_dict(init_state)
    dev = resolve_device(device)
    cfg = settings.train_config(seed) if cfg is None else cfg
    data = DeviceData(X, dev, fit_rows=train_rows, budget=device_memory)
    after = None if each_epoch is None else (lambda e, nets: each_epoch(e, predict_proba(nets, data, held_rows, cfg)))
    nets = fit(model, data, labels, train_rows, cfg, after_epoch=after, **hooks)
    return HeldOut(predict_proba(nets, data, held_rows, cfg), device_name(dev))


def train_fold(
    X: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    fold: int,
    settings: CrossvalSettings,
    n_classes: int,
    *,
    device: str = "auto",
    checkpoint: Path | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    device_memory: int | None = None,
    repeat: int = 0,
) -> FoldResult:
    """Train a fresh model on every fold but ``fold`` and predict ``fold``'s rows (:func:`fit_held_out`).

    Parameters
    ----------
    X : np.ndarray
        uint8 (N, C, H, W) or float32 (N, D).
    labels : np.ndarray
        int64 (N,): the labels to train on (noisy ones in a benchmark).
    folds : np.ndarray
        int64 (N,) from :func:`fold_plan`.
    fold : int
    settings : CrossvalSettings
    n_classes : int
    device : {'auto', 'cpu', 'cuda'}
    checkpoint : Path, optional
        Per-epoch checkpoint of this fold's model (resumed from when present).
    device_memory : int, optional
        Bytes of device memory the dataset may take; larger data is streamed from host memory
        (:class:`cleanpipe.engine.DeviceData`). None: a share of the free memory on CUDA, unlimited on CPU.
    repeat : int
        Which repeat ``folds`` belongs to: a different, reproducible initialisation per repeat.

    Returns
    -------
    FoldResult
        ``probs`` is float32 (n_fold, K) for ``rows`` (sorted row indices of the fold).
    """
    train_rows = np.flatnonzero(folds != fold)
    test_rows = np.flatnonzero(folds == fold)
    t0 = time.perf_counter()
    seed = repeat_seed(settings.seed * 100 + fold, repeat) % 2**31  # a different, reproducible init per fold
    held = fit_held_out(X, labels, train_rows, test_rows, settings, n_classes, seed=seed, device=device,
                        device_memory=device_memory, checkpoint=checkpoint, on_epoch=on_epoch, on_batch=on_batch,
                        method=settings.method(seed))
    return FoldResult(fold, test_rows, held.probs, time.perf_counter() - t0, held.device)
