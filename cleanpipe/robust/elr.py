"""Early-learning regularization (ELR; Liu, Niles-Weed, Razavian and Fernandez-Granda, NeurIPS 2020).

Networks trained on noisy labels first fit the clean majority ("early learning") and only later
memorize the wrong labels. ELR keeps, for every training row, a moving average of the network's own
predictions, ``t_i <- beta t_i + (1 - beta) p_i`` (updated at each visit, starting from zeros), and adds
``lambda * mean_i log(1 - <t_i, p_i>)`` to the cross-entropy. Lowering it raises ``<t_i, p_i>``: the
prediction is pulled towards what the network believed early, which for a wrong label is still the
true class, and its gradient counteracts the cross-entropy's pull towards the wrong label.

Decisions (``../shared/reference/dividemix_elr.md``, part B):

- ``p`` is clamped to [1e-4, 1 - 1e-4] before the penalty, so ``<t, p>`` stays below 1 and the log
  finite; the target is updated from the renormalised, detached clamped prediction of the same step
  (the augmented, train-mode pass), before the penalty reads it, as the reference does.
- The targets start at zero, so their row sums grow as ``1 - beta^k`` after k visits: the penalty
  ramps in by itself, and there is no separate warm-up.
- The schedule is the engine's (the recipe's), not the reference's cosine restarts; the paper's
  CIFAR-10 settings (beta 0.7, lambda 3) are the defaults.
- The targets are part of the checkpoint, so a resumed run continues them bit for bit. After training,
  ``argmax(t_i) != y_i`` flags a label as an error (the reference's detection); the train stage writes
  the targets' classes and confidences (``elr_targets.csv``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cleanpipe.engine.method import Method, Step
from cleanpipe.lazy import lazy_module
from cleanpipe.robust.base import (
    Plan,
    TrainingMethod,
    TrainJob,
    cli_option,
    option_values,
)
from cleanpipe.validation import check_number

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

CLAMP = 1e-4  # the reference's bounds on p: keeps log(1 - <t, p>) finite


class ELR(Method):
    """Cross-entropy plus ``lam * mean log(1 - <t, p>)`` with per-row moving-average targets ``t``.

    Parameters
    ----------
    n_rows : int
        Rows of the training data (the targets are indexed by row number).
    n_classes : int
    labels : np.ndarray
        int64 (N,): the given labels, for the per-epoch count of rows whose target disagrees with them.
    beta : float
        Momentum of the targets, in [0, 1).
    lam : float
        Weight of the penalty (>= 0; 0 is plain cross-entropy with targets kept for detection).
    is_clean : np.ndarray, optional
        bool (N,), the truth for diagnostics only: how often the targets' class is the true one.
    mixup : float
        > 0: ELR+'s mixup on one network: the targets are updated from the unmixed batch (a no-grad pass),
        the network sees ``lam x + (1 - lam) x[perm]``, its cross-entropy and its penalty's target are mixed
        alike, ``lam ~ Beta(mixup, mixup)`` drawn from ``(seed, step)``.
    seed : int
    """

    def __init__(self, n_rows: int, n_classes: int, labels: np.ndarray, beta: float = 0.7, lam: float = 3.0,
                 is_clean: np.ndarray | None = None, mixup: float = 0.0, seed: int = 0) -> None:
        self.beta, self.lam = float(beta), float(lam)
        self.mixup, self.seed = float(mixup), int(seed)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.target = torch.zeros(int(n_rows), int(n_classes))
        self.is_clean = None if is_clean is None else np.asarray(is_clean, dtype=bool)
        self._penalty = [0.0, 0]

    def _targets(self, device) -> torch.Tensor:
        if self.target.device != device:
            self.target = self.target.to(device)
        return self.target

    def _update(self, t: torch.Tensor, idx: torch.Tensor, p: torch.Tensor) -> None:
        with torch.no_grad():
            p = p.detach().clamp(CLAMP, 1.0 - CLAMP)
            t[idx] = self.beta * t[idx] + (1.0 - self.beta) * p / p.sum(1, keepdim=True)

    def loss(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        net, x, y, idx = step.nets[0], step.x, step.y, step.idx
        if self.mixup > 0:
            lam = float(np.random.default_rng([self.seed, step.step]).beta(self.mixup, self.mixup))
            perm = torch.randperm(len(y), generator=step.generator, device=y.device)
            with torch.no_grad():
                logits = net(x)
            t = self._targets(logits.device)
            self._update(t, idx, F.softmax(logits.float(), 1))
            z = net(lam * x + (1.0 - lam) * x[perm]).float()
            ce = lam * F.cross_entropy(z, y) + (1.0 - lam) * F.cross_entropy(z, y[perm])
            target = lam * t[idx] + (1.0 - lam) * t[idx][perm]
        else:
            logits = net(x)
            z = logits.float()
            t = self._targets(z.device)
            self._update(t, idx, F.softmax(z, 1))
            ce, target = F.cross_entropy(z, y), t[idx]
        p = F.softmax(z, dim=1).clamp(CLAMP, 1.0 - CLAMP)
        penalty = torch.log(1.0 - (target * p).sum(1)).mean()
        if step.step % 50 == 0:  # sampled: a host read every step would stall a GPU
            self._penalty[0] += float(penalty.detach())
            self._penalty[1] += 1
        return ce + self.lam * penalty, logits

    def start_epoch(self, epoch: int, n_epochs: int) -> None:
        self._penalty = [0.0, 0]

    def target_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """int64 (N,) argmax of each row's target and float32 (N,) its share of the target's mass (0 if unvisited)."""
        t = self.target.detach().cpu().numpy()
        mass = t.sum(1)
        share = np.divide(t.max(1), mass, out=np.zeros(len(t), np.float32), where=mass > 0)
        return t.argmax(1).astype(np.int64), share.astype(np.float32)

    def epoch_metrics(self) -> dict:
        """The mean penalty (sampled every 50 steps), the rows whose target's class is not their label, and
        with the truth the share of those whose label is indeed wrong."""
        out = {}
        if self._penalty[1]:
            out["elr_penalty"] = round(self._penalty[0] / self._penalty[1], 6)
        label, share = self.target_labels()
        flagged = (share > 0) & (label != self.labels)
        out["elr_flagged"] = int(flagged.sum())
        if self.is_clean is not None and flagged.any():
            out["elr_flagged_precision"] = round(float(np.mean(~self.is_clean[flagged])), 6)
        return out

    def state_dict(self) -> dict:
        return {"target": self.target.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.target = state["target"].to(self.target.device)


@dataclass
class ELROptions:
    """ELR's settings (the paper's CIFAR-10 values).

    Parameters
    ----------
    beta : float
        Momentum of the per-row targets (0.7; the paper finds 0.7-0.99 all work).
    elr_lambda : float
        Weight of the penalty (3; 1 for asymmetric noise in the reference's configurations).
    """

    beta: float = field(default=0.7, metadata=cli_option("ELR: momentum of the per-example targets.", flag="--elr-beta"))
    elr_lambda: float = field(default=3.0, metadata=cli_option("ELR: weight of the log(1 - <target, p>) penalty."))

    def __post_init__(self) -> None:
        check_number(self.beta, "beta", low=0.0, high=1.0, high_open=True)
        check_number(self.elr_lambda, "elr_lambda", low=0.0)


class ELRTraining(TrainingMethod):
    name = "elr"
    summary = "cross-entropy plus early-learning regularization towards each example's averaged predictions (Liu et al. 2020)"
    title = "ELR"
    Options = ELROptions

    def prune_needed(self, options, subset):
        return "any" if subset == "kept" else None

    def prepare(self, options, job: TrainJob) -> Plan:
        step = ELR(len(job.X), job.n_classes, job.labels, options.beta, options.elr_lambda, job.is_clean)
        return Plan(rows=job.rows, step=step, method_settings=option_values(options), state={"elr": step})

    def train(self, trainer, options, plan: Plan):
        nets = trainer.build_nets(1)
        trained, history = trainer.train_nets(nets, plan.rows, plan.step, self.name)
        label, share = plan.step.target_labels()
        return trainer.result(trained, history, plan, per_example={"target_label": label, "target_share": share})

    def outputs(self, result, dataset, labels, truth):
        import pandas as pd

        rows, got = result.rows, result.per_example
        frame = pd.DataFrame({"index": rows, "id": dataset.ids_train[rows], "given_label": labels[rows],
                              "target_label": got["target_label"][rows],
                              "target_share": np.round(got["target_share"][rows], 6)})
        frame["flagged"] = frame["target_label"] != frame["given_label"]
        if truth is not None:
            frame["true_label"] = truth[rows]
            frame["is_true_error"] = truth[rows] != labels[rows]
        # worst first: flagged rows whose target is surest, then the rest by how little the target backs the label
        frame = frame.sort_values(["flagged", "target_share", "index"], ascending=[False, False, True], kind="stable")
        return {"elr_targets.csv": frame}
