"""DivideMix (Li, Socher and Hoi, ICLR 2020): co-divided clean and noisy sets, learned semi-supervised.

Two networks. After a plain cross-entropy warm-up, at the start of every epoch each network scores every
training row's loss (evaluation mode, no augmentation); the losses, min-max normalised, are fitted with a
two-component Gaussian mixture, and a row's posterior for the low-mean component is its clean
probability ``w``. Each network's division trains the *other* one (co-divide): rows with ``w > tau`` are
its labeled set, the rest its unlabeled set. A step of network k (peer j), MixMatch-style:

- label co-refinement: ``t = sharpen(w y + (1 - w) p_k, T)``, ``p_k`` network k's prediction averaged over
  two augmentations of the labeled rows, ``w`` from the peer's mixture;
- co-guessing: ``q = sharpen(mean of both networks' predictions on two augmentations of the unlabeled rows, T)``;
- mixup of all four views with ``lam' = max(lam, 1 - lam)``, ``lam ~ Beta(alpha, alpha)``;
- loss = soft cross-entropy on the labeled part + ``lambda_u`` (ramped in) x mean squared error on the
  unlabeled part (the reference's mean over rows and classes) + KL(uniform || mean prediction).

Test predictions come from both networks' summed logits (:func:`logit_sum`). Decisions where this
differs from the reference script (``../shared/reference/dividemix_elr.md``, part A) or where it is silent:

- Both networks step together, one engine step training each on its own labeled and unlabeled batches
  (the reference trains network 1 for an epoch, then network 2); the divisions are made from both
  networks as they stand at the start of the epoch, as there.
- An epoch is the engine's: ``n / (2 B)`` steps for n training rows and B labeled (and B unlabeled) rows per
  network and step, whatever the division's sizes (the reference's epoch is one pass over the labeled
  set), so the learning-rate schedule is known in advance; batches are drawn from each set without
  replacement within a step. The schedule is the recipe's (one-cycle), not the reference's step decay.
- The mixture is seeded (``random_state``), mixup's weights are drawn from ``(seed, step, network)``: a
  resumed run is bit-identical. The loss history averaged for the mixture (the reference averages 5
  epochs only at 90% noise, by reading the true noise rate) is an option, ``loss_window``.
- With ``initial_clean``, the first division (at the end of the warm-up) is given instead of fitted: the
  prune stage's out-of-fold label quality, computed by models that never saw the rows, has not memorised
  their labels (:class:`DivideMixTraining`'s ``--division prune``).
- Warm-up, ramp and mixture are all per epoch; an empty unlabeled set trains on the labeled part alone,
  an empty labeled set keeps the rows with the highest clean probabilities.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from cleanpipe.engine import predict_proba
from cleanpipe.engine.method import Method, Step
from cleanpipe.errors import CleanpipeError
from cleanpipe.lazy import lazy_module
from cleanpipe.metrics import error_average_precision
from cleanpipe.recipes import recipe
from cleanpipe.robust.base import (
    Plan,
    TrainingMethod,
    TrainJob,
    cli_option,
    option_values,
)
from cleanpipe.validation import check_choice, check_number

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")

GMM_SETTINGS = dict(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4)  # the paper's
DIVISIONS = ("gmm", "prune")


def sharpen(p: torch.Tensor, T: float) -> torch.Tensor:
    """``p^(1/T)`` renormalised over the last axis (rows of probabilities)."""
    p = p ** (1.0 / T)
    return p / p.sum(-1, keepdim=True)


def minmax(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to [0, 1] (all zeros when constant): the per-example losses the mixture reads."""
    span = x.max() - x.min()
    return (x - x.min()) / (span if span > 0 else 1.0)


def clean_probability(losses: np.ndarray, seed: int = 0) -> np.ndarray:
    """The posterior of the low-loss component of a two-component Gaussian mixture on min-max normalised losses.

    Parameters
    ----------
    losses : np.ndarray
        float (n,): per-example losses (or their average over epochs).
    seed : int
        The mixture's ``random_state``.

    Returns
    -------
    np.ndarray
        float32 (n,) in [0, 1]: the probability that each example's label is clean.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    x = minmax(np.asarray(losses, dtype=np.float64))
    with warnings.catch_warnings():  # 10 iterations, the paper's, often stop before sklearn calls it converged
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm = GaussianMixture(random_state=seed, **GMM_SETTINGS).fit(x[:, None])
    return gmm.predict_proba(x[:, None])[:, gmm.means_.argmin()].astype(np.float32)


def ramp_weight(epoch: float, start: int, length: float) -> float:
    """``clip((epoch - start) / length, 0, 1)``: lambda_u's share at fractional epoch ``epoch``."""
    return float(np.clip((epoch - start) / max(length, 1e-9), 0.0, 1.0))


def logit_sum(a, b):
    """Both networks' logits summed, as one module: DivideMix's test-time model (argmax equals the mean logits').

    Built on call, so that importing this module does not import torch.
    """

    class LogitSum(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = a, b

        def forward(self, x):
            return self.a(x) + self.b(x)

    return LogitSum()


class DivideMix(Method):
    """DivideMix's loss step for two networks (see the module docstring).

    Parameters
    ----------
    labels : np.ndarray
        int64 (N,): the given labels.
    rows : np.ndarray
        int (n,): the training rows (the mixture is fitted over them).
    n_classes : int
    warmup_epochs : int
        Epochs of plain cross-entropy before the first division.
    lambda_u : float
        Weight of the unlabeled loss once ramped in.
    ramp_epochs : float
        Epochs over which lambda_u rises from 0 after the warm-up.
    p_threshold : float
        tau: rows with clean probability above it are labeled.
    temperature : float
        T of the sharpening.
    alpha : float
        Beta(alpha, alpha) of mixup.
    batch : int
        B: labeled and unlabeled rows per network and step.
    confidence_penalty : bool
        The warm-up's negative-entropy penalty (the paper's, for asymmetric noise).
    loss_window : int
        Epochs of normalised losses averaged for the mixture (1: the current one).
    initial_clean : np.ndarray, optional
        float (N,): the first division's clean probabilities, given instead of fitted.
    seed : int
    is_clean : np.ndarray, optional
        bool (N,), the truth for diagnostics only: each division's labeled-set precision.
    """

    def __init__(self, labels: np.ndarray, rows: np.ndarray, n_classes: int, *, warmup_epochs: int, lambda_u: float,
                 ramp_epochs: float, p_threshold: float = 0.5, temperature: float = 0.5, alpha: float = 4.0,
                 batch: int = 64, confidence_penalty: bool = False, loss_window: int = 1,
                 initial_clean: np.ndarray | None = None, seed: int = 0, is_clean: np.ndarray | None = None) -> None:
        self.labels_np = np.asarray(labels, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.K = int(n_classes)
        self.warmup, self.lambda_u, self.ramp = int(warmup_epochs), float(lambda_u), float(ramp_epochs)
        self.tau, self.T, self.alpha, self.B = float(p_threshold), float(temperature), float(alpha), int(batch)
        self.confidence_penalty, self.window = bool(confidence_penalty), max(1, int(loss_window))
        self.initial = None if initial_clean is None else np.asarray(initial_clean, dtype=np.float32)
        self.seed = int(seed)
        self.is_clean = None if is_clean is None else np.asarray(is_clean, dtype=bool)
        self.history: list[list[np.ndarray]] = [[], []]  # each network's recent normalised losses (rows order)
        self.prob: list[np.ndarray] | None = None  # each network's clean probability of self.rows
        self.divided_epoch = -1
        self.epoch, self.n_epochs = 0, 1
        self.metrics: dict = {}

    def bind(self, data, augment, optimizer) -> None:
        self.data, self.augment = data, augment

    def start_epoch(self, epoch: int, n_epochs: int) -> None:
        self.epoch, self.n_epochs = epoch, n_epochs

    # ---- the division --------------------------------------------------------------------------
    def _losses(self, net) -> np.ndarray:
        was = net.training
        net.eval()
        rows_t = torch.as_tensor(self.rows, device=self.data.device)
        y = torch.as_tensor(self.labels_np, device=self.data.device)
        out = []
        with torch.no_grad():
            for s in range(0, len(rows_t), 1024):
                idx = rows_t[s : s + 1024]
                host = idx.cpu() if self.data.streamed else None
                out.append(F.cross_entropy(net(self.data.batch(idx, host_idx=host)).float(), y[idx], reduction="none"))
        net.train(was)
        return torch.cat(out).cpu().numpy()

    def _divide(self, nets) -> None:
        probs = []
        for k, net in enumerate(nets[:2]):
            self.history[k] = (self.history[k] + [minmax(self._losses(net))])[-self.window:]
            probs.append(clean_probability(np.mean(self.history[k], 0), seed=self.seed * 1000 + self.epoch * 2 + k))
        if self.initial is not None and self.epoch == self.warmup:
            probs = [self.initial[self.rows], self.initial[self.rows]]
        self.prob = probs
        self.divided_epoch = self.epoch
        self.metrics, self._sets = {}, []
        dev = self.data.device
        for k in range(2):  # network k trains on the division its peer made
            w = probs[1 - k]
            labeled = w > self.tau
            self.metrics[f"labeled_{k + 1}"] = int(labeled.sum())
            if self.is_clean is not None and labeled.any():
                self.metrics[f"labeled_precision_{k + 1}"] = round(float(self.is_clean[self.rows[labeled]].mean()), 6)
            if not labeled.any():  # keep the likeliest clean rows rather than train on nothing
                labeled = w >= np.sort(w)[-min(len(w), self.B)]
            self._sets.append((torch.as_tensor(self.rows[labeled], device=dev),
                               torch.as_tensor(w[labeled], device=dev),
                               torch.as_tensor(self.rows[~labeled], device=dev)))
        self._labels = torch.as_tensor(self.labels_np, device=dev)  # once an epoch, not a copy a step

    def clean_probabilities(self, nets) -> tuple[np.ndarray, np.ndarray]:
        """The division as a label-quality score, from each network's final per-example losses.

        Returns float32 (2, N) clean probabilities (a mixture per network) and float32 (N,) the two networks'
        min-max normalised losses averaged (NaN off the training rows). The posteriors saturate at 0 and 1,
        so the losses are the finer ranking.
        """
        prob = np.full((2, len(self.labels_np)), np.nan, dtype=np.float32)
        loss = np.full(len(self.labels_np), np.nan, dtype=np.float32)
        norm = []
        for k, net in enumerate(nets[:2]):
            x = self._losses(net)
            prob[k, self.rows] = clean_probability(x, seed=self.seed * 1000 + 2 * self.n_epochs + k)
            norm.append(minmax(x))
        loss[self.rows] = np.mean(norm, 0)
        return prob, loss

    # ---- the steps -----------------------------------------------------------------------------
    def _views(self, idx: torch.Tensor, gen) -> tuple[torch.Tensor, torch.Tensor]:
        host = idx.cpu() if self.data.streamed else None
        return (self.data.batch(idx, self.augment, gen, host), self.data.batch(idx, self.augment, gen, host))

    def _pick(self, pool: torch.Tensor, gen) -> torch.Tensor:
        """Up to B positions in ``pool``, drawn without replacement."""
        return torch.randperm(len(pool), generator=gen, device=pool.device)[: self.B]

    def _warmup_loss(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        total, first = 0.0, None
        for net in step.nets[:2]:
            logits = net(step.x).float()
            loss = F.cross_entropy(logits, step.y)
            if self.confidence_penalty:  # minus the entropy: keeps warm-up nets unsure on structured noise
                p = F.softmax(logits, 1)
                loss = loss + (p * F.log_softmax(logits, 1)).sum(1).mean()
            total = total + loss
            first = logits if first is None else first
        return total, first

    def _targets(self, k: int, nets, xl, w, yl, u) -> tuple[torch.Tensor, torch.Tensor | None]:
        net, peer = nets[k], nets[1 - k]
        with torch.no_grad():
            px = (F.softmax(net(xl[0]).float(), 1) + F.softmax(net(xl[1]).float(), 1)) / 2
            t = sharpen(w[:, None] * F.one_hot(yl, self.K).float() + (1 - w[:, None]) * px, self.T)
            if u is None:
                return t, None
            peer.eval()  # the peer only guesses (the reference's peer is in evaluation mode)
            pu = sum(F.softmax(m(v).float(), 1) for m in (net, peer) for v in u) / 4
            peer.train()
            return t, sharpen(pu, self.T)

    def _mixmatch_loss(self, k: int, step: Step, lam_u: float) -> torch.Tensor:
        lab, w_all, unl = self._sets[k]
        gen = step.generator
        pick = self._pick(lab, gen)
        li, w = lab[pick], w_all[pick]
        ui = unl[self._pick(unl, gen)] if len(unl) else None
        xl = self._views(li, gen)
        u = None if ui is None else self._views(ui, gen)
        t, q = self._targets(k, step.nets, xl, w, self._labels[li], u)
        X = torch.cat([*xl, *(u or ())])
        Y = torch.cat([t, t] + ([q, q] if q is not None else []))
        lam = float(np.random.default_rng([self.seed, step.step, k]).beta(self.alpha, self.alpha))
        lam = max(lam, 1.0 - lam)
        perm = torch.randperm(len(X), generator=gen, device=X.device)
        z = step.nets[k](lam * X + (1 - lam) * X[perm]).float()
        y_mix = lam * Y + (1 - lam) * Y[perm]
        n_l = 2 * len(li)
        loss = -(y_mix[:n_l] * F.log_softmax(z[:n_l], 1)).sum(1).mean()
        if q is not None:
            loss = loss + lam_u * ((F.softmax(z[n_l:], 1) - y_mix[n_l:]) ** 2).mean()
        mean_p = F.softmax(z, 1).mean(0)
        return loss + (torch.log(torch.tensor(1.0 / self.K)) - torch.log(mean_p)).sum() / self.K

    def loss(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        if step.epoch < self.warmup:
            return self._warmup_loss(step)
        if self.divided_epoch != step.epoch:
            self._divide(step.nets)
        steps_per_epoch = step.total_steps / max(1, self.n_epochs)
        lam_u = self.lambda_u * ramp_weight(step.step / steps_per_epoch, self.warmup, self.ramp)
        loss = self._mixmatch_loss(0, step, lam_u) + self._mixmatch_loss(1, step, lam_u)
        with torch.no_grad():
            logits = step.nets[0](step.x)
        return loss, logits

    def epoch_metrics(self) -> dict:
        return dict(self.metrics) if self.divided_epoch == self.epoch else {}

    def state_dict(self) -> dict:
        # the loss history feeds later mixtures; the division itself is remade from the networks at each epoch
        return {"history": [torch.as_tensor(np.stack(h)) if h else torch.zeros(0) for h in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.history = [[row for row in h.numpy()] if h.numel() else [] for h in state["history"]]


# ---- the registry entry ---------------------------------------------------------------------------


@dataclass
class DivideMixOptions:
    """DivideMix's settings: the paper's defaults; its appendix per noise (CIFAR-10) in the notes.

    The paper's CIFAR-10 values: ``lambda_u`` 0 at 20% symmetric and 40% asymmetric noise (with
    ``confidence_penalty``), 25 at 50% and 80%, 50 at 90% with ``p_threshold`` 0.6 and a 5-epoch
    ``loss_window``; CIFAR-100: 150 from 50% on.

    Parameters
    ----------
    lambda_u : float
        Weight of the unlabeled loss (25).
    p_threshold : float
        Clean probability above which a row is labeled (0.5).
    warmup : float
        Share of the epochs trained with plain cross-entropy before the first division (0.2); the
        learning rate ramps up over it. The paper's 10 of 300 on CIFAR-10 is for 300-epoch runs; on
        MNIST-10k, 2 of 20 epochs at the full rate learnt part of pair-flip noise (82.5% at 45%), 2 under a
        ramp left the networks near chance at symmetric 80%, seed 1 (30.95%); 4 under a ramp serve both.
    temperature : float
        Sharpening (0.5).
    alpha : float, optional
        Mixup's Beta(alpha, alpha); None: per kind of data (``cleanpipe.recipes``: the paper's 4; 0.5 on
        digits and 28x28 grey images, where 20-30 epochs learn too slowly under alpha 4). Short runs on
        colour images want 0.5 as well; the colour recipe keeps 4 for its 100-epoch schedule (the
        measurements: ``cleanpipe.recipes``).
    dividemix_lr : float, optional
        Peak learning rate; None: per kind of data (the reference's 0.02 with SGD; the recipes' train rates,
        tuned for batches of plain cross-entropy, made both networks collapse to one class on digits at 40%
        noise, lr 0.05-0.1).
    confidence_penalty : bool
        The warm-up's negative-entropy penalty (asymmetric noise).
    loss_window : int
        Epochs of losses averaged for the mixture (1; 5 in the paper at 90% noise).
    division : {'gmm', 'prune'}
        ``prune``: the first division comes from the prune stage's out-of-fold label quality instead of
        the warm-up networks' losses (``initial_clean``).
    initial_clean : np.ndarray, optional
        float (N,) clean probabilities for ``division="prune"`` (the train stage reads prune's label quality).
    """

    lambda_u: float = field(default=25.0, metadata=cli_option("DivideMix: weight of the unlabeled loss (0 for 20% symmetric or asymmetric noise, 25 at 50-80%, 50 at 90%)."))
    p_threshold: float = field(default=0.5, metadata=cli_option("DivideMix: clean probability above which an example is labeled (0.6 at 90% noise)."))
    warmup: float = field(default=0.2, metadata=cli_option("DivideMix: share of the epochs of plain cross-entropy before the first division; the learning rate ramps up over it.", flag="--warmup-share"))
    temperature: float = field(default=0.5, metadata=cli_option("DivideMix: sharpening temperature T.", flag="--dividemix-temperature"))
    alpha: float | None = field(default=None, metadata=cli_option("DivideMix: mixup's Beta(alpha, alpha) (default: per kind of data: the paper's 4; 0.5 on digits and 28x28 grey images, and on colour digits in 20-epoch runs at symmetric 50%).", flag="--dividemix-alpha"))
    dividemix_lr: float | None = field(default=None, metadata=cli_option("DivideMix: peak learning rate of both networks; it replaces --lr (default: per kind of data, the reference's 0.02 with SGD).", flag="--dividemix-lr"))
    confidence_penalty: bool = field(default=False, metadata=cli_option(
        "DivideMix: negative-entropy penalty in the warm-up (asymmetric noise).", flag="--confidence-penalty/--no-confidence-penalty"))
    loss_window: int = field(default=1, metadata=cli_option("DivideMix: epochs of losses averaged for the mixture (5 at 90% noise)."))
    division: str = field(default="gmm", metadata=cli_option(
        "DivideMix: the first division from the warm-up's losses (gmm) or from prune's out-of-fold label quality (prune)."))
    initial_clean: np.ndarray | None = field(default=None, metadata={"input": True})

    def __post_init__(self) -> None:
        check_number(self.lambda_u, "lambda_u", low=0.0)
        check_number(self.p_threshold, "p_threshold", low=0.0, high=1.0, high_open=True)
        check_number(self.warmup, "warmup", low=0.0, high=1.0, high_open=True)
        check_number(self.temperature, "temperature", low=0.0, low_open=True)
        if self.alpha is not None:
            check_number(self.alpha, "alpha", low=0.0, low_open=True)
        if self.dividemix_lr is not None:
            check_number(self.dividemix_lr, "dividemix_lr", low=0.0, low_open=True)
        check_number(self.loss_window, "loss_window", low=1)
        check_choice(self.division, "division", DIVISIONS)


BATCH = 64  # labeled and unlabeled rows per network and step, as the reference's


class DivideMixTraining(TrainingMethod):
    name = "dividemix"
    summary = "two networks co-divide the data into clean and noisy sets and learn both semi-supervised (Li et al. 2020)"
    title = "DivideMix"
    n_nets = 2
    Options = DivideMixOptions
    default_subset = "all"

    def prune_needed(self, options, subset):
        return "quality" if options.division == "prune" else ("any" if subset == "kept" else None)

    def from_run(self, options, inputs):
        if options.division == "prune" and options.initial_clean is None:
            from dataclasses import replace

            quality = inputs.prune.label_quality
            if quality is None:
                raise CleanpipeError(f"{inputs.root}: the prune stage has no label quality; re-run `cleanpipe prune {inputs.root}`")
            options = replace(options, initial_clean=quality)
        return options, []

    def prepare(self, options, job: TrainJob) -> Plan:
        if options.division == "prune" and options.initial_clean is None:
            raise CleanpipeError("division='prune' needs initial_clean: the prune stage's label quality of every row")
        if options.initial_clean is not None and np.shape(options.initial_clean) != (len(job.X),):
            raise CleanpipeError(f"initial_clean must hold one clean probability per row ({len(job.X)}), "
                                 f"got shape {np.shape(options.initial_clean)}")
        epochs = job.settings.epochs
        warmup = max(1, int(round(options.warmup * epochs)))
        if warmup >= epochs:
            raise CleanpipeError(f"DivideMix's warm-up ({warmup} epochs) leaves none of the {epochs} epochs to divide; "
                                 "train longer (--epochs) or lower --warmup-share")
        ramp = max(1.0, epochs * 16 / 300)  # the reference's 16 of 300 epochs
        r = recipe(job.X.shape[1:])
        alpha = r.dividemix_alpha if options.alpha is None else options.alpha
        lr = r.dividemix_lr if options.dividemix_lr is None else options.dividemix_lr
        used = {**option_values(options), "alpha": alpha, "dividemix_lr": lr, "warmup_epochs": warmup,
                "ramp_epochs": ramp, "batch": BATCH}
        step = DivideMix(job.labels, job.rows, job.n_classes, warmup_epochs=warmup, lambda_u=options.lambda_u,
                         ramp_epochs=ramp, p_threshold=options.p_threshold, temperature=options.temperature,
                         alpha=alpha, batch=BATCH, confidence_penalty=options.confidence_penalty,
                         loss_window=options.loss_window,
                         initial_clean=None if options.division == "gmm" else options.initial_clean,
                         seed=job.settings.seed, is_clean=job.is_clean)
        state = {"key_arrays": () if options.initial_clean is None else (np.asarray(options.initial_clean, np.float32),)}
        # The learning rate ramps up over the warm-up and no further, then the engine's schedule decays it
        # (why: DivideMixOptions' ``warmup``; docs/benchmarks.md, "The warm-up: how it was chosen").
        config = {"batch_size": 2 * BATCH, "warmup": warmup / epochs, **({} if lr is None else {"lr": lr})}
        return Plan(rows=job.rows, step=step, method_settings=used, config=config, state=state)

    def train(self, trainer, options, plan: Plan):
        nets = trainer.build_nets(2)
        trained, history = trainer.train_nets(nets, plan.rows, plan.step, self.name)
        if trainer.test_data is not None and history:  # the paper's test prediction: both networks' summed logits
            both = predict_proba(logit_sum(*trained).eval(), trainer.test_data, np.arange(len(trainer.y_test)), trainer.cfg)
            last = history[-1]
            last["test_accuracy_net1"] = last.get("test_accuracy")
            last["test_accuracy"] = round(float(np.mean(both.argmax(1) == trainer.y_test)), 6)
        prob, loss = plan.step.clean_probabilities(trained)
        metrics = {}
        if plan.step.is_clean is not None:  # how well the final division ranks the true errors (benchmarks)
            noisy = ~plan.step.is_clean[plan.rows]
            for name, quality in (("clean_probability_ap", prob.mean(0)), ("final_loss_ap", -loss)):
                ap = error_average_precision(quality[plan.rows], noisy)
                if ap is not None:
                    metrics[name] = round(ap, 6)
        return trainer.result(trained, history, plan, metrics=metrics, per_example={
            "clean_probability": prob.mean(0), "clean_probability_1": prob[0], "clean_probability_2": prob[1],
            "final_loss": loss})

    def outputs(self, result, dataset, labels, truth):
        import pandas as pd

        rows, got = result.rows, result.per_example
        frame = pd.DataFrame({"index": rows, "id": dataset.ids_train[rows], "given_label": labels[rows],
                              **{k: got[k][rows] for k in
                                 ("clean_probability", "clean_probability_1", "clean_probability_2", "final_loss")}})
        frame["flagged"] = frame["clean_probability"] <= result.method_settings["p_threshold"]
        if truth is not None:
            frame["true_label"] = truth[rows]
            frame["is_true_error"] = truth[rows] != labels[rows]
        # worst first: the rows the final mixture least believes clean, ties (saturated posteriors) by loss
        order = np.lexsort((rows, -frame["final_loss"].to_numpy(), frame["clean_probability"].to_numpy()))
        return {"dividemix_clean.csv": frame.iloc[order]}
