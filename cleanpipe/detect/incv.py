"""INCV: Iterative Noisy Cross-Validation (Chen et al., ICML 2019), trained through the engine.

Specification: ``reference/incv_coteaching.md`` sections A and C. Decisions where the
reference code differs or is silent:

- Seeded: the halves, the noise and the initial weights all follow ``seed`` (the Keras
  reference sets no seed at all).
- Every model starts from the same initial weights, as in the reference (drawn once from the seed).
- The network and recipe are the engine's per-dataset defaults (``crossval.default_settings``)
  instead of the reference's ResNet-32 + Adam: one engine serves every stage, and
  ``pipelines/incv_cifar10.sh`` asks for the paper's settings where they matter.
- INCV's models are trained to fit the noisy labels, as the theory assumes (a network whose
  held-out predictions follow the noise): no augmentation, no weight decay, ``epochs`` (20 by
  default). With the engine's regularised crossval recipe a small CNN predicts the *true* class
  on MNIST (~95%), its hit rate is far above the theory's and the estimate was 0.32 at a true 0.5.
- The noise-rate estimate is solved on the same 0.001 grid as the reference, from the hit
  rate of the first half of iteration 1, but measured with that model's **last** epoch. The
  reference measures it with the best-noisy-validation checkpoint, which favours early epochs
  that have not fitted the noise yet and so biases the estimate low; selection still uses the
  reference's checkpoint policy.
- The discard step is applied for symmetric-like noise only (``symmetric=True``), as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cleanpipe.errors import CleanpipeError


def noise_rate_from_hit_rate(hit_rate: float, n_classes: int, top_k: int = 1) -> float:
    """Smallest ε on a 0.001 grid with (1-ε)² + ε²/(c/k - 1) <= hit rate (the symmetric-noise theory)."""
    c = n_classes / top_k
    for step in range(1, 1001):
        eps = step / 1000
        if (1 - eps) ** 2 + eps**2 / (c - 1) <= hit_rate:
            return eps
    return 1.0


def discard_ratio(eps: float) -> float:
    """r = min(2, ε / (1 - ε)): how many high-loss examples are discarded per hit."""
    return 2.0 if eps >= 2 / 3 else min(2.0, eps / (1 - eps))


def save_best_iterations(eps: float, symmetric: bool) -> int:
    """The reference's checkpoint policy: iterations that select with the best noisy-validation epoch."""
    if not symmetric or eps > 0.6:
        return 1
    return 2 if eps > 0.3 else 4


@dataclass
class IncvResult:
    """INCV's sets over the training examples.

    Attributes
    ----------
    select : np.ndarray
        bool (N,): the selected, presumably clean subset S.
    candidate : np.ndarray
        bool (N,): neither selected nor discarded (the uncertain rest, C).
    discarded : np.ndarray
        bool (N,): discarded as high-loss (symmetric-like noise only).
    eval_ratio : float
        The estimated noise rate ε̂.
    probs : np.ndarray
        float32 (N, K): each example's probabilities from the last model that held it out.
    iterations : list of dict
        Per iteration: sizes of S, C, D and, with the truth, label precision and recall.
    """

    select: np.ndarray
    candidate: np.ndarray
    discarded: np.ndarray
    eval_ratio: float
    probs: np.ndarray
    iterations: list[dict] = field(default_factory=list)


def incv_select(
    X: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    settings,
    *,
    iterations: int = 4,
    symmetric: bool = True,
    device: str = "auto",
    true_labels: np.ndarray | None = None,
    progress=None,
) -> IncvResult:
    """Run INCV's selection loop.

    Parameters
    ----------
    X : np.ndarray
        uint8 (N, C, H, W) or float32 (N, D).
    labels : np.ndarray
        int64 (N,): the noisy labels.
    n_classes : int
    settings : cleanpipe.crossval.CrossvalSettings
        Model and recipe of every INCV model (``settings.seed`` seeds everything).
    iterations : int
        The reference's ``INCV_iter`` (4).
    symmetric : bool
        Discard high-loss examples (the reference does so for symmetric noise only).
    true_labels : np.ndarray, optional
        int64 (N,): only for reporting label precision/recall per iteration.
    """
    import torch

    from cleanpipe.engine import DeviceData, fit, predict_proba, resolve_device
    from cleanpipe.models import build_model
    from cleanpipe.progress import NullProgress

    if iterations < 1:
        raise CleanpipeError(f"--iterations must be at least 1, got {iterations}")
    progress = progress or NullProgress()
    dev = resolve_device(device)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    rng = np.random.default_rng(settings.seed)
    # Fit the noisy labels, as INCV's theory assumes: no augmentation, no weight decay.
    cfg = settings.train_config(settings.seed, augment=False, weight_decay=0.0, flip=False, tta_flip=False)
    torch.manual_seed(settings.seed)
    init = build_model(settings.model, tuple(X.shape[1:]), n_classes)
    if not isinstance(init, torch.nn.Module):
        raise CleanpipeError("INCV trains networks through the engine; choose a network model, not logreg")
    init_state = {k: v.clone() for k, v in init.state_dict().items()}  # every model starts here

    select = np.zeros(n, dtype=bool)
    candidate = np.ones(n, dtype=bool)
    discarded = np.zeros(n, dtype=bool)
    last_probs = np.full((n, n_classes), 1.0 / n_classes, dtype=np.float32)
    eps, ratio, save_best = None, 0.0, iterations
    history: list[dict] = []
    progress.start("INCV models", 2 * iterations, level=0)

    def score(train_rows: np.ndarray, held_rows: np.ndarray, keep_best: bool) -> tuple[np.ndarray, np.ndarray]:
        """Held-out probabilities for selection (best or last epoch) and of the last epoch."""
        net = build_model(settings.model, tuple(X.shape[1:]), n_classes)
        net.load_state_dict(init_state)
        data = DeviceData(X, dev, fit_rows=train_rows)
        best = {"acc": -1.0, "state": None}

        def after_epoch(epoch: int, nets) -> None:
            if keep_best:  # the reference's ModelCheckpoint on noisy validation accuracy
                p = predict_proba(nets, data, held_rows, cfg)
                acc = float(np.mean(p.argmax(1) == labels[held_rows]))
                if acc > best["acc"]:
                    best["acc"], best["state"] = acc, {k: v.detach().clone() for k, v in nets[0].state_dict().items()}

        progress.start("epochs", cfg.epochs, level=1)
        nets = fit(net, data, labels, train_rows, cfg, after_epoch=after_epoch,
                   on_epoch=lambda e, m: progress.advance(1, completed=e + 1))
        last = predict_proba(nets, data, held_rows, cfg)
        if keep_best and best["state"] is not None:
            nets[0].load_state_dict(best["state"])
            probs = predict_proba(nets, data, held_rows, cfg)
        else:
            probs = last
        progress.advance(0)
        return probs, last

    for it in range(iterations):
        cand = np.flatnonzero(candidate)
        if len(cand) < 2:
            break
        cand = rng.permutation(cand)
        halves = (np.sort(cand[: len(cand) // 2]), np.sort(cand[len(cand) // 2 :]))
        keep_best = it < save_best
        hits_all = []
        # Train on S + one half, score the other half; then swap.
        for train_half, held in ((halves[0], halves[1]), (halves[1], halves[0])):
            train_rows = np.union1d(np.flatnonzero(select), train_half)
            probs, last = score(train_rows, held, keep_best)
            last_probs[held] = probs
            hit = probs.argmax(1) == labels[held]
            if eps is None:
                eps = noise_rate_from_hit_rate(float(np.mean(last.argmax(1) == labels[held])), n_classes)
                ratio = discard_ratio(eps)
                save_best = save_best_iterations(eps, symmetric)
            ce = -np.log(probs[np.arange(len(held)), labels[held]] + 1e-8)
            n_drop = int(np.floor(ratio * hit.sum()))
            if n_drop:
                discarded[held[np.argsort(-ce, kind="stable")[:n_drop]]] = True
            hits_all.append(held[hit])
        hits = np.concatenate(hits_all)
        select[hits] = True
        candidate[hits] = False
        if symmetric:
            candidate &= ~discarded
        record = {"iteration": it + 1, "selected": int(select.sum()), "candidates": int(candidate.sum()),
                  "discarded": int((discarded & ~select).sum())}
        if true_labels is not None:
            clean = labels == np.asarray(true_labels)
            record["label_precision"] = round(float(clean[select].mean()) if select.any() else 0.0, 6)
            record["label_recall"] = round(float(clean[select].sum() / max(clean.sum(), 1)), 6)
        history.append(record)
        progress.log(
            f"INCV iteration {it + 1}: {record['selected']:,} selected, {record['candidates']:,} candidates"
            + (f", label precision {record['label_precision']:.3f}, recall {record['label_recall']:.3f}"
               if "label_precision" in record else "")
        )
    discarded &= ~select
    if not symmetric:
        discarded[:] = False
    return IncvResult(select, candidate, discarded, float(eps if eps is not None else 0.0), last_probs, history)
