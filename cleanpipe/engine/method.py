"""The plug-in point of the engine: a method is a loss/selection step, not a training loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from cleanpipe.lazy import lazy_module

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")
nn = lazy_module("torch.nn")


@dataclass
class Step:
    """One batch as a method sees it.

    Attributes
    ----------
    nets : sequence of nn.Module
        The networks being trained (callables; possibly compiled).
    x : torch.Tensor
        float32 (B, C, H, W) or (B, D), normalised and augmented.
    y : torch.Tensor
        int64 (B,): the labels trained on.
    idx : torch.Tensor
        int64 (B,): the rows of the batch, for per-example state (weights, pseudo labels).
    epoch, step, total_steps : int
    x_raw : torch.Tensor, optional
        The same batch before normalisation (images: float32 in [0, 1] after the weak
        augmentation), for methods that make further views of it (IEG's strong view).
    generator : torch.Generator, optional
        The epoch's generator on the data's device, for a method's own random draws.
    """

    nets: Sequence[nn.Module]
    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    epoch: int
    step: int
    total_steps: int
    x_raw: torch.Tensor | None = None
    generator: torch.Generator | None = None


class Method:
    """Base class: override :meth:`loss`; the other hooks are optional."""

    def bind(self, data, augment, optimizer) -> None:
        """Called once by ``fit`` before training: the device data (for extra batches such as a
        probe set), the weak augmentation, and the optimizer (whose momentum a look-ahead reads)."""

    def start_epoch(self, epoch: int, n_epochs: int) -> None:
        """Called before each epoch (e.g. to ramp a forget rate)."""

    def epoch_rows(self, epoch: int) -> np.ndarray | None:
        """Rows to draw this epoch's batches from; None = the rows given to ``fit``.

        The epoch keeps the length of ``fit``'s rows (INCV's Co-teaching mixes its candidates
        into batches after a warm-up while an epoch still follows the selected set).
        """
        return None

    def loss(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loss, logits of the first network)`` for the batch."""
        raise NotImplementedError

    def epoch_metrics(self) -> dict:
        """Extra per-epoch numbers for the history (e.g. the forget rate)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Standard(Method):
    """Plain cross-entropy on the given labels."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def loss(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        logits = step.nets[0](step.x)
        return F.cross_entropy(logits.float(), step.y, label_smoothing=self.label_smoothing), logits


class Mixup(Method):
    """Cross-entropy on mixed pairs (Zhang et al. 2018, "mixup: beyond empirical risk minimization").

    Each batch is mixed with a permutation of itself, ``x' = lam x + (1 - lam) x[perm]``, and the loss is
    ``lam CE(f(x'), y) + (1 - lam) CE(f(x'), y[perm])``, with one ``lam ~ Beta(alpha, alpha)`` per batch.
    A network trained so fits the training rows' labels late and loosely (Zhang et al. 2018, section
    3.2: a network trained with mixup resists memorizing random labels), which is what out-of-fold
    scoring needs: a fold model that has not learned its training folds' confusions still disagrees
    with the same confusions in the held-out fold.

    Parameters
    ----------
    alpha : float
        > 0: Beta's parameter (1: lam uniform on [0, 1]).
    seed : int
        Seeds ``lam``: batch ``step`` of a run draws it from ``numpy.random.default_rng([seed, step])``,
        so a resumed run draws the same; the permutation comes from the epoch's generator.
    warmup : float
        Share of the epochs (from the first) trained on plain cross-entropy before mixing starts.
    """

    def __init__(self, alpha: float, seed: int = 0, warmup: float = 0.0) -> None:
        self.alpha = float(alpha)
        self.seed = int(seed)
        self.warmup = float(warmup)
        self.mixing = True

    def start_epoch(self, epoch: int, n_epochs: int) -> None:
        self.mixing = epoch >= self.warmup * n_epochs

    def loss(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.mixing:
            logits = step.nets[0](step.x)
            return F.cross_entropy(logits.float(), step.y), logits
        lam = float(np.random.default_rng([self.seed, step.step]).beta(self.alpha, self.alpha))
        perm = torch.randperm(len(step.y), generator=step.generator, device=step.y.device)
        logits = step.nets[0](lam * step.x + (1.0 - lam) * step.x[perm])
        loss = lam * F.cross_entropy(logits.float(), step.y) + (1.0 - lam) * F.cross_entropy(logits.float(), step.y[perm])
        return loss, logits
