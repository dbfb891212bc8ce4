"""Noisy Student (Xie et al., CVPR 2020) in a cleaning pipeline: flagged examples become unlabeled data.

The examples the prune stage kept are the labeled set L (their given labels); the flagged ones lose
their labels and become the unlabeled set U (``reference/noisystudent.md`` 4). A teacher trained on L
alone labels U without noise (eval mode, EMA weights, no augmentation); a student trained from scratch
with noise (RandAugment and Cutout on images, noise and feature dropout on tables, dropout before the
head, stochastic depth where the blocks have identity skips) on L and the confidently pseudo-labeled
part of U becomes the next teacher. The last one decides each flagged example:

* ``relabel``: its prediction differs from the given label with confidence >= the threshold;
* ``confirm``: its prediction is the given label (confident learning flagged a correct label);
* ``unresolved``: confidence below the threshold (excluded from that round's student).

Array helpers (:func:`soften`, :func:`targets`, :func:`balance_copies`, :func:`decide`) and the
engine's loss step :class:`NoisyStudentLoss`; the stage's loop is in :mod:`cleanpipe.train`.

Loss (spec 1.7, "concatenate and average"): the mean over the batch of per-example cross-entropies,
labeled rows against their label smoothed by 0.1, pseudo-labeled rows against the teacher's soft
distribution (or its smoothed argmax with ``--hard``), the latter times ``unl_weight`` (1). With U
merged into the training stream this is the repository's ``lab_loss + r * unl_loss`` normalised by
the labeled batch, up to the constant (1 + r).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cleanpipe.engine.data import StrongView
from cleanpipe.engine.method import Method, Step

DECISIONS = ("relabel", "confirm", "unresolved")
BALANCES = ("none", "prior", "uniform")


def soften(probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Temperature on probabilities: ``p ** (1/T)`` renormalised (= softmax(logits / T)); float32 (n, K).

    Parameters
    ----------
    probs : np.ndarray
        float (n, K), rows summing to 1.
    temperature : float
        1 leaves the rows as they are, below 1 sharpens, above 1 flattens.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-30, None)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def targets(probs: np.ndarray, *, soft: bool = True, temperature: float = 1.0, smoothing: float = 0.1) -> np.ndarray:
    """Training targets from the teacher's probabilities: soft (tempered) or the argmax smoothed by ``smoothing``.

    Returns
    -------
    np.ndarray
        float32 (n, K), rows summing to 1.
    """
    if soft:
        return soften(probs, temperature)
    K = probs.shape[1]
    out = np.full(probs.shape, smoothing / K, dtype=np.float32)
    out[np.arange(len(probs)), probs.argmax(1)] += 1.0 - smoothing
    return out


def balance_copies(pred: np.ndarray, usable: np.ndarray, per_class: np.ndarray, *, max_copies: int = 3,
                   rng: np.random.Generator) -> np.ndarray:
    """How many times each pseudo-labeled row enters the student's data, per class to a target count.

    Class c's usable rows get ``per_class[c] / n_c`` copies each (n_c = usable rows predicted c), rounded
    stochastically (the floor, plus one with probability the fraction) and capped at ``max_copies``, as
    the reference's filter does: frequent classes are thinned at random, rare ones duplicated.

    Parameters
    ----------
    pred : np.ndarray
        int (n,): the pseudo label of each row.
    usable : np.ndarray
        bool (n,): rows at or above the confidence threshold (the others get 0 copies).
    per_class : np.ndarray
        float (K,): the wanted number of rows per class.
    max_copies : int
    rng : np.random.Generator

    Returns
    -------
    np.ndarray
        int64 (n,) copies.
    """
    copies = np.zeros(len(pred), dtype=np.int64)
    draws = rng.random(len(pred))  # one draw per row, whatever the classes: reproducible
    for c in range(len(per_class)):
        rows = np.flatnonzero(usable & (pred == c))
        if len(rows) == 0:
            continue
        ratio = per_class[c] / len(rows)
        whole = np.floor(ratio)
        copies[rows] = np.minimum(whole + (draws[rows] < ratio - whole), max_copies).astype(np.int64)
    return copies


def balance_targets(mode: str, n_usable: int, labeled_counts: np.ndarray) -> np.ndarray | None:
    """Per-class row targets of a balance mode: ``prior`` (the labeled set's class mix), ``uniform``; None for ``none``."""
    if mode not in BALANCES:
        raise ValueError(f"balance must be one of {BALANCES}, got {mode!r}")
    if mode == "none":
        return None
    K = len(labeled_counts)
    if mode == "uniform":
        return np.full(K, n_usable / K)
    prior = labeled_counts / max(1, labeled_counts.sum())
    return n_usable * prior


def decide(given: np.ndarray, probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each flagged example's decision from the final model's probabilities.

    Parameters
    ----------
    given : np.ndarray
        int (n,): the given labels.
    probs : np.ndarray
        float (n, K).
    threshold : float
        Confidence (top-1 probability) below which a row is ``unresolved``.

    Returns
    -------
    label : np.ndarray
        int64 (n,) argmax.
    confidence : np.ndarray
        float32 (n,) top-1 probability.
    decision : np.ndarray
        str (n,): ``relabel``, ``confirm`` or ``unresolved``.
    """
    label = probs.argmax(1).astype(np.int64)
    confidence = probs.max(1).astype(np.float32)
    decision = np.where(confidence < threshold, "unresolved", np.where(label == given, "confirm", "relabel"))
    return label, confidence, decision.astype(str)


class NoisyStudentLoss(Method):
    """One network on labeled and pseudo-labeled rows, each with its own target distribution.

    Parameters
    ----------
    target_table : np.ndarray
        float32 (N, K): the target of every row the engine may draw (labeled rows: the smoothed given
        label; pseudo-labeled rows: the teacher's target); rows never drawn may hold anything.
    pseudo : np.ndarray
        bool (N,): rows whose target is a pseudo label (weighted by ``unl_weight``, counted apart).
    unl_weight : float
    noise : bool
        Train on the strong view (the student); off for the first teacher.
    policy : {'randaugment', 'autoaugment', 'table'}
        The strong view's kind (``table``: noise on features; images get the policy).
    cutout : float
        Side of the student's Cutout square as a share of the image side.
    magnitude : float
        RandAugment's magnitude (kornia's 0-30 scale).
    """

    def __init__(self, target_table: np.ndarray, pseudo: np.ndarray, *, unl_weight: float = 1.0,
                 noise: bool = True, policy: str = "randaugment", cutout: float = 0.5, magnitude: float = 10.0) -> None:
        self.target_table = np.asarray(target_table, dtype=np.float32)
        self.pseudo = np.asarray(pseudo, dtype=bool)
        self.unl_weight, self.noise, self.policy, self.cutout = float(unl_weight), bool(noise), policy, float(cutout)
        self.magnitude = float(magnitude)
        self._view = None

    def bind(self, data, augment, optimizer) -> None:
        dev = data.device
        self._targets = torch.as_tensor(self.target_table, device=dev)
        self._weights = torch.as_tensor(np.where(self.pseudo, self.unl_weight, 1.0).astype(np.float32), device=dev)
        self._is_pseudo = torch.as_tensor(self.pseudo, device=dev)
        if self.noise:
            # Tables ignore the policy: their strong view is noise on the features.
            self._view = StrongView(data, self.policy, flip=bool(augment and augment.flip), cutout=self.cutout,
                                    magnitude=self.magnitude)
        self._sums = torch.zeros(2, device=dev)
        self._seen = 0

    def start_epoch(self, epoch: int, n_epochs: int) -> None:
        self._sums.zero_()
        self._seen = 0

    def loss(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._view(step.x_raw, step.x, step.generator) if self._view is not None else step.x
        logits = step.nets[0](x)
        target = self._targets[step.idx]
        per_row = -(target * F.log_softmax(logits.float(), dim=1)).sum(1)
        w = self._weights[step.idx]
        pseudo = self._is_pseudo[step.idx].float()
        with torch.no_grad():  # the pseudo-labeled rows' share of the batch and their agreement with the target
            agree = (logits.argmax(1) == target.argmax(1)).float()
            self._sums += torch.stack([pseudo.sum(), (pseudo * agree).sum()])
        self._seen += len(w)  # the batch size is known on the host: no tensor made per step
        return (w * per_row).mean(), logits

    def epoch_metrics(self) -> dict:
        n_pseudo, agree = self._sums.tolist()
        return {"pseudo_share": n_pseudo / max(1, self._seen), "pseudo_agreement": agree / max(1.0, n_pseudo)}
