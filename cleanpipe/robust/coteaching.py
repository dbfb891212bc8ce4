"""Co-teaching (Han et al. 2018), Co-teaching+ (Yu et al. 2019) and INCV's Co-teaching (Chen et al. 2019).

Each is a :class:`~cleanpipe.engine.method.Method`: two networks see the same batch, each picks its
small-loss examples, and each network is updated on the examples its *peer* picked. Decisions
where the reference code differs or is silent:

- The exchanged loss is a plain mean over the peer's picks (the reference divides it by the
  pick count once more, pitfall 11).
- The forget rate ramps linearly from 0 at epoch 0 to its target at epoch ``ramp_epochs``
  (``τ·min(e / Tk, 1)``), as the INCV paper writes it.
- Co-teaching+ exchanges small-loss examples among those the two networks *disagree* on
  (argmax of the logits, not of a double softmax); its loss is the sum over the picks divided by
  the batch size, so a batch with few disagreements gives a small step and one with none no update.
  Before ``init_epoch`` it is plain Co-teaching.
- **Class-balanced picks** (``selection="class"``, the default; ``"batch"`` is the papers' rule).
  The papers keep the batch's smallest losses whatever their labels. At high noise that feeds on
  itself: the classes a network already predicts have the smallest losses, their examples are
  picked, and the picks drift to a few classes (MNIST at 80% symmetric noise: both networks ended
  near 20-30% test accuracy). Here each example is ranked by the quantile of its loss *within its
  given label's class* in the batch, the loss breaking ties, and the ``n_keep`` lowest are kept: the
  same number as the papers' rule, spread over the classes in proportion to their share of the
  batch. Measured on MNIST-10k in batches of 256 (``pipelines/bench_mnist.py``, docs/benchmarks.md), batch-wide ->
  class-balanced: symmetric 50% 87.5% -> 97.1%, symmetric 80% 20.7% -> 93.3%, pair-flip 45% 87.7% -> 93.3%.
- Selection is computed without host synchronisation (ranks and masks, no ``.item()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from cleanpipe.engine.method import Method, Step
from cleanpipe.errors import CleanpipeError
from cleanpipe.lazy import lazy_module
from cleanpipe.recipes import recipe
from cleanpipe.robust.base import (
    Plan,
    RunInputs,
    TrainingMethod,
    TrainJob,
    cli_option,
    data_input,
)
from cleanpipe.validation import ParameterError, check_choice, check_number

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

SELECTIONS = ("class", "batch")


def _smallest(loss: torch.Tensor, n_keep: torch.Tensor | int, eligible: torch.Tensor | None = None,
              labels: torch.Tensor | None = None, n_classes: int = 0) -> torch.Tensor:
    """Bool mask of the ``n_keep`` smallest losses (among ``eligible``), without a host sync.

    Parameters
    ----------
    loss : torch.Tensor
        float (B,): per-example losses.
    n_keep : int or torch.Tensor
        How many to keep (a 0-d tensor keeps the GPU from waiting on the host).
    eligible : torch.Tensor, optional
        bool (B,): only these may be kept.
    labels : torch.Tensor, optional
        int64 (B,): the given labels. With them, selection is class-balanced: examples are ranked by
        the quantile ``(rank within class + 1/2) / class count`` of their loss among the eligible
        examples of their class, ties broken by the loss, so every class keeps about the same share.
    n_classes : int
        K, needed with ``labels``.
    """
    loss = loss.detach()
    if eligible is not None:
        loss = torch.where(eligible, loss, torch.full_like(loss, float("inf")))
    order = loss.argsort(stable=True)
    if labels is not None:
        onehot = F.one_hot(labels[order], n_classes)
        if eligible is not None:
            onehot = onehot * eligible[order, None]
        within = (onehot.cumsum(0) * onehot).sum(1)  # 1-based rank within its class, in loss order; 0 if not eligible
        count = onehot.sum(0)[labels[order]].clamp_min(1)
        quantile = torch.where(within > 0, (within - 0.5) / count, torch.full_like(within, 2.0, dtype=torch.float))
        order = order[quantile.argsort(stable=True)]  # stable: equal quantiles stay in loss order
    rank = torch.empty_like(loss, dtype=torch.long)
    rank[order] = torch.arange(len(loss), device=loss.device)
    keep = rank < n_keep
    return keep if eligible is None else keep & eligible


def _masked_mean(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.float()
    return (loss * m).sum() / m.sum().clamp_min(1.0)


class CoTeaching(Method):
    """Two networks; each is updated on the ``1 - forget_rate`` smallest-loss examples of its peer.

    Parameters
    ----------
    forget_rate : float
        Target share τ of each batch to drop (the noise rate expected in the training data).
    ramp_epochs : int
        Tk: epochs over which the forget rate rises linearly from 0 to τ.
    is_clean : np.ndarray, optional
        bool (N,), the truth for diagnostics only: the share of picked examples whose label is
        right (the papers' "pure ratio") goes into the history. Never used for selection.
    selection : {'class', 'batch'}
        ``class``: the small-loss picks are spread over the given labels' classes in proportion to
        their share of the batch (see the module docstring); ``batch``: the papers' rule, the
        batch's smallest losses whatever their class.
    """

    def __init__(self, forget_rate: float, ramp_epochs: int = 10, is_clean: np.ndarray | None = None,
                 selection: str = "class") -> None:
        self.selection = selection
        self.target = float(forget_rate)
        self.ramp_epochs = max(1, int(ramp_epochs))
        self.rate = 0.0
        self._clean_np = None if is_clean is None else np.asarray(is_clean, dtype=bool)
        self._clean = None
        self._picked = self._picked_clean = None

    def start_epoch(self, epoch: int, n_epochs: int) -> None:
        self.rate = self.target * min(1.0, epoch / self.ramp_epochs)
        self._picked = self._picked_clean = None

    def _pick(self, ce1: torch.Tensor, ce2: torch.Tensor, step: Step, logits1: torch.Tensor,
              logits2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each network's small-loss picks (bool masks over the batch)."""
        n_keep = int(round((1.0 - self.rate) * len(step.y)))
        return self._smallest(ce1, n_keep, step, logits1), self._smallest(ce2, n_keep, step, logits2)

    def _smallest(self, ce: torch.Tensor, n_keep, step: Step, logits: torch.Tensor,
                  eligible: torch.Tensor | None = None) -> torch.Tensor:
        if self.selection == "batch":
            return _smallest(ce, n_keep, eligible)
        return _smallest(ce, n_keep, eligible, labels=step.y, n_classes=logits.shape[1])

    def _exchange(self, ce1: torch.Tensor, ce2: torch.Tensor, pick1: torch.Tensor, pick2: torch.Tensor) -> torch.Tensor:
        """Net 1 learns from net 2's picks and net 2 from net 1's: the mean loss over each."""
        return _masked_mean(ce1, pick2) + _masked_mean(ce2, pick1)

    def loss(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        logits1, logits2 = step.nets[0](step.x).float(), step.nets[1](step.x).float()
        ce1 = F.cross_entropy(logits1, step.y, reduction="none")
        ce2 = F.cross_entropy(logits2, step.y, reduction="none")
        pick1, pick2 = self._pick(ce1, ce2, step, logits1, logits2)
        self._track(pick1, step)
        return self._exchange(ce1, ce2, pick1, pick2), logits1

    def _track(self, pick: torch.Tensor, step: Step) -> None:
        if self._clean_np is None:
            return
        if self._clean is None or self._clean.device != step.idx.device:
            self._clean = torch.as_tensor(self._clean_np, device=step.idx.device)
        clean = self._clean[step.idx] & pick
        if self._picked is None:
            self._picked, self._picked_clean = pick.sum(), clean.sum()
        else:
            self._picked += pick.sum()
            self._picked_clean += clean.sum()

    def epoch_metrics(self) -> dict:
        out = {"forget_rate": round(self.rate, 6)}
        if self._picked is not None:
            out["pure_ratio"] = round(float(self._picked_clean) / max(float(self._picked), 1.0), 6)
        return out


class CoTeachingPlus(CoTeaching):
    """Co-teaching+: after ``init_epoch``, the small-loss exchange runs only on the examples the networks disagree on."""

    def __init__(self, forget_rate: float, ramp_epochs: int = 10, init_epoch: int = 0,
                 is_clean: np.ndarray | None = None, selection: str = "class") -> None:
        super().__init__(forget_rate, ramp_epochs, is_clean, selection)
        self.init_epoch = int(init_epoch)
        self.epoch = 0

    def start_epoch(self, epoch: int, n_epochs: int) -> None:
        super().start_epoch(epoch, n_epochs)
        self.epoch = epoch

    def _pick(self, ce1, ce2, step, logits1, logits2):
        if self.epoch < self.init_epoch:
            return super()._pick(ce1, ce2, step, logits1, logits2)
        disagree = logits1.detach().argmax(1) != logits2.detach().argmax(1)
        n_keep = torch.floor((1.0 - self.rate) * disagree.sum())
        return (self._smallest(ce1, n_keep, step, logits1, disagree),
                self._smallest(ce2, n_keep, step, logits2, disagree))

    def _exchange(self, ce1, ce2, pick1, pick2):
        # Summed over the picks and divided by the batch size: a batch with few disagreements moves the
        # networks little (none: no update, as in the paper). A mean over a handful of picks is a
        # full-size SGD step on them; it diverged to chance (10%) on MNIST at 50% noise. The
        # reference's Adam is blind to this scale.
        return ((ce1 * pick2.float()).sum() + (ce2 * pick1.float()).sum()) / len(ce1)


def incv_forget_rate(eps: float, n_classes: int, symmetric: bool = True) -> float:
    """τ_sel = ε̂² / (ε̂² + k(1-ε̂)²): the noise expected inside INCV's selected set (k = c-1, or 1 for pair noise)."""
    k = (n_classes - 1) if symmetric else 1
    denom = eps**2 + k * (1 - eps) ** 2
    return float(eps**2 / denom) if denom > 0 else 0.0


class IncvCoTeaching(CoTeaching):
    """INCV's Co-teaching: warm up on the selected set, then mix the candidates into every batch.

    ``fit`` is given the selected rows; after ``warmup_epochs`` the batches are drawn from
    selected ∪ candidates while an epoch keeps the selected set's length. The number kept per
    batch is computed from its selected part only, so candidates take part only when their
    loss is among the smallest (Chen et al. 2019, Algorithm 2).

    Parameters
    ----------
    selected, candidates : np.ndarray
        int (n,): rows of INCV's sets S and C.
    """

    def __init__(self, forget_rate: float, selected: np.ndarray, candidates: np.ndarray, warmup_epochs: int,
                 ramp_epochs: int = 10, is_clean: np.ndarray | None = None, n_rows: int | None = None,
                 selection: str = "class") -> None:
        super().__init__(forget_rate, ramp_epochs, is_clean, selection)
        self.warmup_epochs = int(warmup_epochs)
        self.mixed = np.union1d(selected, candidates)
        n_rows = int(max(self.mixed.max(initial=0) + 1, n_rows or 0))
        self._in_s_np = np.zeros(n_rows, dtype=bool)
        self._in_s_np[np.asarray(selected, dtype=np.int64)] = True
        self._in_s = None
        self.has_candidates = len(candidates) > 0

    def epoch_rows(self, epoch: int) -> np.ndarray | None:
        return self.mixed if (epoch > self.warmup_epochs and self.has_candidates) else None

    def _pick(self, ce1, ce2, step, logits1, logits2):
        if self._in_s is None or self._in_s.device != step.idx.device:
            self._in_s = torch.as_tensor(self._in_s_np, device=step.idx.device)
        b_s = self._in_s[step.idx].sum()
        n_keep = torch.round((1.0 - self.rate) * b_s)
        return self._smallest(ce1, n_keep, step, logits1), self._smallest(ce2, n_keep, step, logits2)


# ---- the registry entries -------------------------------------------------------------------------


@dataclass
class CoTeachingOptions:
    """Co-teaching's and Co-teaching+'s settings.

    Parameters
    ----------
    forget_rate : float, optional
        Target share τ of each batch to drop: the noise expected among the training rows. The train stage
        reads it from the prune stage's estimate when None; a library call must give it.
    selection : {'class', 'batch'}
        Small-loss picks spread over the given labels' classes, or the papers' batch-wide rule.
    """

    forget_rate: float | None = field(default=None, metadata=cli_option(
        "Co-teaching's target forget rate (default: the noise the prune stage estimates is left in the subset)."))
    selection: str = field(default="class", metadata=cli_option(
        "Co-teaching's small-loss picks: class (spread over the given labels' classes) | batch (the papers' rule)."))

    def __post_init__(self) -> None:
        if self.forget_rate is not None:
            check_number(self.forget_rate, "forget_rate", low=0.0, high=1.0, high_open=True)
        check_choice(self.selection, "selection", SELECTIONS)


@dataclass
class IncvCoTeachingOptions(CoTeachingOptions):
    """INCV's Co-teaching: the Co-teaching options plus INCV's sets (the train stage reads them from an INCV prune).

    Parameters
    ----------
    candidates : np.ndarray, optional
        int rows of INCV's candidate set C, mixed into the batches after the warm-up (``rows`` is S).
    eval_ratio : float, optional
        INCV's estimated noise rate ε̂; sets the warm-up (and, with ``forget_rate`` None, the forget rate).
    symmetric : bool
        INCV treated the noise as symmetric.
    """

    candidates: np.ndarray | None = data_input()
    eval_ratio: float | None = None
    symmetric: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.eval_ratio is not None:
            check_number(self.eval_ratio, "eval_ratio", low=0.0, high=1.0)


def ramp_epochs(epochs: int) -> int:
    """Tk, the epochs over which the forget rate rises: 10 of 200 in the papers, a quarter of short runs."""
    return max(1, min(10, epochs // 4))


def _estimate(inputs: RunInputs, key: str) -> float:
    value = getattr(inputs.prune, key)
    if value is None:
        raise CleanpipeError(f"{inputs.root}: the prune stage predates noise-rate estimates for training; "
                             f"re-run `cleanpipe prune {inputs.root}`")
    return min(0.9, float(value))


def _forget_rate(options: CoTeachingOptions) -> float:
    if options.forget_rate is None:
        raise ParameterError("forget_rate", "is needed: the share of wrong labels expected among the training rows")
    return options.forget_rate


class CoTeachingTraining(TrainingMethod):
    name = "coteaching"
    summary = "two networks, each trained on the small-loss examples of its peer (Han et al. 2018)"
    title = "Co-teaching"
    n_nets = 2
    Options = CoTeachingOptions

    def prune_needed(self, options, subset):
        return "any" if subset == "kept" or options.forget_rate is None else None

    def from_run(self, options, inputs):
        if options.forget_rate is None:
            key = "estimated_noise_rate_kept" if inputs.subset == "kept" else "estimated_noise_rate"
            options = replace(options, forget_rate=_estimate(inputs, key))
        return options, []

    def resolve(self, options, job: TrainJob) -> dict:
        """The settings this training uses, for the manifest."""
        return {"forget_rate": round(_forget_rate(options), 6), "ramp_epochs": ramp_epochs(job.settings.epochs),
                "selection": options.selection}

    def prepare(self, options, job):
        used = self.resolve(options, job)
        step = CoTeaching(_forget_rate(options), used["ramp_epochs"], job.is_clean, options.selection)
        return Plan(rows=job.rows, method_settings=used, step=step)


class CoTeachingPlusTraining(CoTeachingTraining):
    name = "coteaching-plus"
    summary = "Co-teaching on the examples the two networks disagree on (Yu et al. 2019)"

    def prepare(self, options, job):
        used = self.resolve(options, job)
        used["init_epoch"] = round(recipe(job.X.shape[1:]).coteaching_plus_start * job.settings.epochs)
        step = CoTeachingPlus(_forget_rate(options), used["ramp_epochs"], used["init_epoch"], job.is_clean,
                              options.selection)
        return Plan(rows=job.rows, method_settings=used, step=step)


class IncvCoTeachingTraining(CoTeachingTraining):
    name = "incv-coteaching"
    summary = "INCV's Co-teaching: warm up on INCV's selected set, then mix in its candidates (needs prune --method incv)"
    Options = IncvCoTeachingOptions

    def prune_needed(self, options, subset):
        return "incv"

    def subset_name(self, subset):
        return "incv-sets"

    def training_rows(self, inputs):
        return inputs.prune.incv_selected

    def from_run(self, options, inputs):
        p = inputs.prune
        options = replace(options, candidates=p.incv_candidates, eval_ratio=p.eval_ratio, symmetric=p.symmetric)
        if options.forget_rate is None:
            options = replace(options, forget_rate=_estimate(inputs, "estimated_noise_rate_kept"))
        return options, []

    def prepare(self, options, job):
        if options.candidates is None or options.eval_ratio is None:
            raise ParameterError("candidates", "and eval_ratio are needed: INCV's candidate set and noise-rate estimate")
        if options.forget_rate is None:
            options = replace(options, forget_rate=incv_forget_rate(options.eval_ratio, job.n_classes, options.symmetric))
        used = self.resolve(options, job)
        high = not options.symmetric or options.eval_ratio > 0.6
        used["warmup_epochs"] = round(job.settings.epochs * (0.4 if high else 0.2))  # 80 or 40 of 200 epochs
        used["n_candidates"] = int(len(options.candidates))
        step = IncvCoTeaching(options.forget_rate, job.rows, options.candidates, used["warmup_epochs"],
                              used["ramp_epochs"], job.is_clean, n_rows=len(job.X), selection=options.selection)
        return Plan(rows=job.rows, method_settings=used, step=step)
