"""IEG (Zhang et al. 2020) and L2R (Ren et al. 2018): meta re-weighting and re-labeling with a trusted probe set.

Both are :class:`~cleanpipe.engine.method.Method` steps run by the one engine. Each step takes a virtual SGD step on the noisy batch, measures the loss of a
small trusted *probe* batch after it, and differentiates that probe loss with respect to every
example's loss weight ``w`` (and, for IEG, the mixing ``ε`` between its given label and its pseudo
label). The meta-gradient is computed in one of two ways, which agree to rounding (tested):

- ``route="jvp"`` (default): one backward pass gives ``v = ∇_θ' L_probe``; one forward-mode JVP of
  the batch's logits along ``v`` (``torch.func.jvp``) gives every example's ``J_i v``; then
  ``∂L/∂w_i = -α (softmax(z_i) - ỹ_i) · J_i v`` and ``∂L/∂ε_i = -α w_i (p̂_i - y_i) · J_i v``.
  Exact, because each example's loss depends on θ only through the logits.
- ``route="autograd"``: the look-ahead built with ``create_graph=True``, the probe loss through
  ``torch.func.functional_call`` at θ', and a second-order backward to ``(w, ε)``.

Where this follows or fixes the paper's reference code:

- Followed: logit norm (one scalar per B x K chunk) in label guessing and the MixUp loss only; K = 2
  views (weak + strong) averaged and sharpened with T = 0.5; MixUp of probe, weak and strong rows
  with λ = max(u^(1/β)/2, 1 - u^(1/β)/2) per row (1 - u²/2 at β = 0.5) and one permutation over all
  rows; ``xe = l_loss + ce_factor · u_loss``; ``(L1 + L2)/2 + xe + consistency_factor · KL``; the
  look-ahead at w = 1/B, ε = 0.9 with α = 0.1 fixed and the optimizer's momentum buffer (μ = 0.9);
  weights ``relu(-∂w)`` normalised by their sum + 1e-5 (they may all be zero); ε* = 1 iff ∂ε < 0;
  only the weak pass updates BatchNorm's running statistics; SGD with plain (not Nesterov)
  momentum, cosine decay with restarts and an EMA of the weights for evaluation (set by the train stage).
- Added: ``ramp``, an optional linear warm-up of the two unsupervised terms (``ce_factor`` on the
  training rows' MixUp loss and ``consistency_factor``); the paper applies them at full weight from
  step 1 of 200,000. The train stage ramps them over half the run, with k = 2, on grey images (measured:
  ``cleanpipe.recipes``).
- Fixed or chosen: the pseudo label is detached inside the look-ahead (the reference lets gradient
  flow through it, probably by accident; ``detach`` is also what makes the JVP route exact).
  Weight decay is the engine's: on weights of rank > 1 (conv and linear kernels), both in the
  look-ahead step and in the probe loss at θ' (``wd/2 · ||θ'||²``). The probe batch cycles through
  the probe set in class-interleaved order (a whole, class-balanced probe set per batch when it is
  no larger than the batch). With dropout in the network the JVP route draws its own mask.
- L2R: weak augmentation only, look-ahead from w = 0 without momentum, loss ``Σ w*_i ℓ_i``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cleanpipe.engine.data import StrongView
from cleanpipe.engine.method import Method, Step
from cleanpipe.errors import CleanpipeError
from cleanpipe.labels import read_partial_labels
from cleanpipe.lazy import lazy_module
from cleanpipe.recipes import recipe
from cleanpipe.robust.base import (
    Plan,
    TrainingMethod,
    cli_option,
    data_input,
    option_values,
)
from cleanpipe.validation import ParameterError, check_choice, check_number

torch = lazy_module("torch")
F = lazy_module("torch.nn.functional")
nn = lazy_module("torch.nn")
torch_func = lazy_module("torch.func")

ROUTES = ("jvp", "autograd")


def logit_norm(z: torch.Tensor) -> torch.Tensor:
    """``z / sqrt(mean(z²) + 1e-8)``: one scalar for the whole (n, K) chunk, not one per row."""
    return z / torch.sqrt(z.pow(2).mean() + 1e-8)


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature sharpening of probability rows: ``p^(1/T)`` renormalised."""
    p = p.pow(1.0 / temperature)
    return p / p.sum(1, keepdim=True)


def soft_cross_entropy(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-row ``-Σ_c t_c log softmax(z)_c`` for soft targets, float (n,)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1)


def mixup_lambda(n: int, beta: float, generator: torch.Generator | None, device) -> torch.Tensor:
    """IEG's per-row mixing weights ``max(u^(1/β)/2, 1 - u^(1/β)/2)`` in [0.5, 1] (not a Beta draw)."""
    a = torch.rand(n, generator=generator, device=device).pow(1.0 / beta) / 2
    return torch.maximum(a, 1 - a)


@contextlib.contextmanager
def frozen_batchnorm(net: nn.Module):
    """In training mode, BatchNorm normalises by the batch but leaves its running statistics alone.

    (``track_running_stats`` off for the duration: nothing is written, which torch.func's transforms
    also require.)
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for m in bns:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in bns:
            m.track_running_stats = True


def _full(z: torch.Tensor) -> torch.Tensor:
    """Logits in at least float32 (bf16 under autocast is widened; float64 stays, for exact tests)."""
    return z if z.dtype == torch.float64 else z.float()


def _layout_like(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``x`` in ``ref``'s memory format (the engine hands channels_last image batches to the networks)."""
    if x.ndim == 4 and ref.is_contiguous(memory_format=torch.channels_last):
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _module(net: nn.Module) -> nn.Module:
    return getattr(net, "_orig_mod", net)  # the eager module behind torch.compile


def meta_gradients(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    logits: torch.Tensor,
    x_probe: torch.Tensor,
    y_probe: torch.Tensor,
    *,
    w0: float,
    eps0: float | None = None,
    pseudo: torch.Tensor | None = None,
    alpha: float = 0.1,
    momentum: dict[str, torch.Tensor] | None = None,
    mu: float = 0.0,
    weight_decay: dict[str, float] | None = None,
    route: str = "jvp",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Derivatives of the probe loss after a one-step look-ahead with respect to per-example weights and ε.

    The look-ahead is ``θ' = θ - α (μ m + ∇_θ [Σ_i w_i CE(ỹ_i(ε), z_i)] + wd θ)`` with
    ``ỹ_i(ε) = ε_i y_i + (1 - ε_i) p̂_i`` (``y_i`` alone without ``eps0``); the probe loss is
    ``mean CE(y_probe, f(x_probe; θ')) + Σ wd/2 ||θ'||²``.

    Parameters
    ----------
    net : nn.Module
        In training mode (BatchNorm uses batch statistics; its running statistics are not touched here).
    x : torch.Tensor
        The batch, float (B, ...), normalised.
    y : torch.Tensor
        int64 (B,): the given labels.
    logits : torch.Tensor
        float (B, K): ``net(x)`` at θ, still in the autograd graph (the autograd route differentiates it).
    x_probe, y_probe : torch.Tensor
        The trusted batch, float (P, ...), and its int64 (P,) labels.
    w0 : float
        The weights at which to differentiate (IEG 1/B, L2R 0).
    eps0 : float, optional
        ε at which to differentiate (IEG 0.9); None for L2R (no label choice).
    pseudo : torch.Tensor, optional
        float (B, K) pseudo labels, needed with ``eps0``; treated as constants.
    alpha : float
        Look-ahead step size.
    momentum : dict of str to torch.Tensor, optional
        The optimizer's momentum buffer per parameter name (read before its step), with ``mu``.
    weight_decay : dict of str to float, optional
        Weight decay per parameter name (missing: 0).
    route : {'jvp', 'autograd'}

    Returns
    -------
    grad_w : torch.Tensor
        float (B,).
    grad_eps : torch.Tensor or None
        float (B,), None without ``eps0``.
    """
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    net = _module(net)
    names, params = zip(*[(n, p) for n, p in net.named_parameters() if p.requires_grad])
    buffers = dict(net.named_buffers())  # read only: every pass here runs under frozen_batchnorm
    momentum, weight_decay = momentum or {}, weight_decay or {}
    K = logits.shape[1]
    y1 = F.one_hot(y, K).to(logits.dtype)
    pseudo = None if pseudo is None else pseudo.detach().to(logits.dtype)
    B = len(y)

    def shift(name: str, p: torch.Tensor) -> torch.Tensor:
        # The look-ahead's parts that do not depend on (w, ε): momentum and weight decay.
        out = weight_decay.get(name, 0.0) * p.detach()
        if mu and name in momentum:
            out = out + mu * momentum[name]
        return out

    def probe_loss(new: dict[str, torch.Tensor]) -> torch.Tensor:
        with frozen_batchnorm(net):
            z = _full(torch_func.functional_call(net, {**new, **buffers}, (x_probe,)))
        reg = sum(weight_decay.get(n, 0.0) / 2 * new[n].pow(2).sum() for n in names)
        return F.cross_entropy(z, y_probe) + reg

    if route == "autograd":
        w = torch.full((B,), float(w0), device=x.device, dtype=logits.dtype, requires_grad=True)
        leaves = [w]
        target = y1
        if eps0 is not None:
            eps = torch.full((B,), float(eps0), device=x.device, dtype=logits.dtype, requires_grad=True)
            leaves.append(eps)
            target = eps[:, None] * y1 + (1 - eps[:, None]) * pseudo
        look = (w * soft_cross_entropy(target, logits)).sum()
        grads = torch.autograd.grad(look, params, create_graph=True)
        new = {n: p.detach() - alpha * (shift(n, p) + g) for n, p, g in zip(names, params, grads)}
        # retain_graph: the caller's final loss still backpropagates through ``logits``.
        out = torch.autograd.grad(probe_loss(new), leaves, retain_graph=True)
        return out[0], (out[1] if eps0 is not None else None)

    target0 = y1 if eps0 is None else eps0 * y1 + (1 - eps0) * pseudo
    if w0 != 0.0:
        look = (w0 * soft_cross_entropy(target0, logits)).sum()
        grads = torch.autograd.grad(look, params, retain_graph=True)
    else:
        grads = [torch.zeros_like(p) for p in params]
    new = {n: (p.detach() - alpha * (shift(n, p) + g)).requires_grad_(True) for n, p, g in zip(names, params, grads)}
    v = torch.autograd.grad(probe_loss(new), [new[n] for n in names])

    def batch_logits(*ps):
        return _full(torch_func.functional_call(net, {**dict(zip(names, ps)), **buffers}, (x,)))

    with frozen_batchnorm(net):
        z, dz = torch_func.jvp(batch_logits, tuple(p.detach() for p in params), tuple(t.detach() for t in v))
    q = torch.softmax(z, dim=1)
    grad_w = -alpha * ((q - target0) * dz).sum(1)
    grad_eps = None if eps0 is None else -alpha * w0 * ((pseudo - y1) * dz).sum(1)
    return grad_w.detach(), (None if grad_eps is None else grad_eps.detach())


def normalized_weights(grad_w: torch.Tensor) -> torch.Tensor:
    """L2R's weights from the meta-gradient: ``relu(-g) / (Σ relu(-g) + 1e-5)`` (all zero is possible)."""
    w = torch.relu(-grad_w)
    return w / (w.sum() + 1e-5)


class _ProbeMethod(Method):
    """Shared by L2R and IEG: the probe set, its batches, the look-ahead's inputs and per-example records."""

    def __init__(self, probe_rows: np.ndarray, probe_labels: np.ndarray, n_rows: int, *, meta_stepsize: float = 0.1,
                 route: str = "jvp", is_clean: np.ndarray | None = None) -> None:
        probe_rows = np.asarray(probe_rows, dtype=np.int64)
        probe_labels = np.asarray(probe_labels, dtype=np.int64)
        if len(probe_rows) == 0 or len(probe_rows) != len(probe_labels):
            raise ValueError("the probe set needs at least one row and one label per row")
        # Class-interleaved (c0, c1, ..., c0, c1, ...): consecutive slices are class-balanced.
        within = np.zeros(len(probe_labels), dtype=np.int64)  # rank of each row within its class
        for c in np.unique(probe_labels):
            at = np.flatnonzero(probe_labels == c)
            within[at] = np.arange(len(at))
        inter = np.lexsort((probe_labels, within))
        self.probe_rows_np, self.probe_labels_np = probe_rows[inter], probe_labels[inter]
        self.alpha, self.route = float(meta_stepsize), route
        self.n_rows = int(n_rows)
        self._clean_np = None if is_clean is None else np.asarray(is_clean, dtype=bool)
        self.data = self.augment = self.optimizer = None
        self._records: dict[str, torch.Tensor] | None = None
        self._epoch_sums: dict[str, torch.Tensor] = {}

    def bind(self, data, augment, optimizer) -> None:
        self.data, self.augment, self.optimizer = data, augment, optimizer
        self._decay = {id(p): g.get("weight_decay", 0.0) for g in optimizer.param_groups for p in g["params"]}
        dev = data.device
        self.probe_rows = torch.as_tensor(self.probe_rows_np, device=dev)
        self.probe_labels = torch.as_tensor(self.probe_labels_np, device=dev)
        if self._records is None:
            self._records = {k: torch.zeros(self.n_rows, device=dev) for k in self.RECORDS}
        else:
            self._records = {k: v.to(dev) for k, v in self._records.items()}
        self._clean = None if self._clean_np is None else torch.as_tensor(self._clean_np, device=dev)

    def start_epoch(self, epoch: int, n_epochs: int) -> None:
        self._epoch_sums = {}

    def _probe_batch(self, step: Step, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.probe_rows)
        size = min(size, n)
        at = (step.step * size + torch.arange(size, device=self.probe_rows.device)) % n
        rows = self.probe_rows[at]
        return _layout_like(self.data.batch(rows, self.augment, step.generator), step.x), self.probe_labels[at]

    def _meta_inputs(self, net: nn.Module) -> tuple[dict, dict]:
        """The optimizer's momentum buffers (read before its step) and weight decay, by parameter name."""
        mom, wd = {}, {}
        for name, p in _module(net).named_parameters():
            if self._decay.get(id(p), 0.0):
                wd[name] = self._decay[id(p)]
            buf = self.optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                mom[name] = buf.detach()
        return mom, wd

    def _record(self, step: Step, **values: torch.Tensor) -> None:
        for k, v in values.items():
            self._records[k].index_add_(0, step.idx, v.detach().float())
            total = v.detach().float().sum()
            self._epoch_sums[k] = self._epoch_sums.get(k, 0) + total
        self._records["seen"].index_add_(0, step.idx, torch.ones(len(step.idx), device=step.idx.device))
        self._epoch_sums["seen"] = self._epoch_sums.get("seen", 0) + len(step.idx)
        if self._clean is not None:
            clean = self._clean[step.idx].float()
            w = values["weight"].detach().float()
            for key, val in (("w_clean", (w * clean).sum()), ("w_noisy", (w * (1 - clean)).sum()),
                             ("n_clean", clean.sum()), ("n_noisy", (1 - clean).sum())):
                self._epoch_sums[key] = self._epoch_sums.get(key, 0) + val

    def epoch_metrics(self) -> dict:
        s = self._epoch_sums
        if not s:
            return {}
        seen = float(s["seen"])
        out = {"mean_weight": round(float(s["weight"]) / seen, 6), "zero_weight_share": round(float(s["zero"]) / seen, 6)}
        if "pseudo" in s:
            out["pseudo_label_share"] = round(float(s["pseudo"]) / seen, 6)
        if "n_clean" in s and float(s["n_clean"]) > 0 and float(s["n_noisy"]) > 0:
            out["mean_weight_clean"] = round(float(s["w_clean"]) / float(s["n_clean"]), 6)
            out["mean_weight_noisy"] = round(float(s["w_noisy"]) / float(s["n_noisy"]), 6)
        return out

    def example_records(self) -> dict[str, np.ndarray]:
        """Per row, averaged over the steps that saw it: ``weight`` (B·w*, 1 = a uniform weight),
        ``zero`` (share of steps with weight 0), ``pseudo`` (IEG: share of steps that chose the pseudo label),
        and ``seen`` (how many steps saw it)."""
        rec = {k: v.detach().cpu().numpy() for k, v in self._records.items()}
        seen = rec.pop("seen")
        out = {k: np.where(seen > 0, v / np.maximum(seen, 1), np.nan) for k, v in rec.items()}
        out["seen"] = seen.astype(np.int64)
        return out

    def state_dict(self) -> dict:
        return {} if self._records is None else {k: v.detach().cpu() for k, v in self._records.items()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._records = {k: v.clone() for k, v in state.items()}


class L2R(_ProbeMethod):
    """Learning to Reweight: per-example weights from the probe loss after a virtual step from w = 0.

    Parameters
    ----------
    probe_rows : np.ndarray
        int (P,): rows of the trusted examples in the engine's data (never trained on).
    probe_labels : np.ndarray
        int (P,): their clean labels.
    n_rows : int
        Rows in the engine's data (for the per-example records).
    meta_stepsize : float
        α of the look-ahead (0.1, fixed).
    route : {'jvp', 'autograd'}
    is_clean : np.ndarray, optional
        bool (n_rows,): the truth, for the history's diagnostics only.
    """

    RECORDS = ("weight", "zero", "seen")

    def loss(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        net = step.nets[0]
        logits = net(step.x).float()
        x_p, y_p = self._probe_batch(step, len(step.y))
        _, wd = self._meta_inputs(net)  # L2R's look-ahead has no momentum term
        grad_w, _ = meta_gradients(net, step.x, step.y, logits, x_p, y_p, w0=0.0, alpha=self.alpha,
                                   weight_decay=wd, route=self.route)
        w = normalized_weights(grad_w)
        B = len(step.y)
        self._record(step, weight=w * B, zero=(w == 0).float())
        return (w * F.cross_entropy(logits, step.y, reduction="none")).sum(), logits


class IEG(_ProbeMethod):
    """IEG: re-weighting and re-labeling by the meta-gradient, MixUp with the probe set, and consistency.

    Parameters
    ----------
    probe_rows, probe_labels, n_rows, meta_stepsize, route, is_clean
        As for :class:`L2R`.
    ce_factor : float
        Weight of the MixUp loss on the training rows ("p", 5).
    consistency_factor : float
        Weight of the KL between the weak and strong views ("k", 20).
    temperature : float
        Sharpening of the averaged predictions (0.5).
    views : int
        Augmentations averaged for the pseudo label: the weak view and ``views - 1`` strong views (2).
    mixup : bool
        The MixUp loss (off: ``xe = 0``).
    beta : float
        MixUp's shape (0.5).
    meta_momentum : float
        μ of the look-ahead, on the optimizer's momentum buffer (0.9).
    eps_init : float
        ε at which the label choice is differentiated, and the mix of the L2 labels (0.9).
    ramp : float
        Share of the steps over which the MixUp term on training rows and the consistency term rise
        linearly from 0 (0: full weight from the start, as in the paper).
    policy : {'autoaugment', 'randaugment'}
        The strong augmentation (kornia, on whole batches); images only. Tables get Gaussian noise
        (0.2 standard deviations) and 20% feature dropout instead.
    """

    RECORDS = ("weight", "zero", "pseudo", "seen")

    def __init__(self, probe_rows, probe_labels, n_rows, *, ce_factor: float = 5.0, consistency_factor: float = 20.0,
                 temperature: float = 0.5, views: int = 2, mixup: bool = True, beta: float = 0.5,
                 meta_stepsize: float = 0.1, meta_momentum: float = 0.9, eps_init: float = 0.9,
                 policy: str = "autoaugment", route: str = "jvp", is_clean: np.ndarray | None = None,
                 ramp: float = 0.0) -> None:
        super().__init__(probe_rows, probe_labels, n_rows, meta_stepsize=meta_stepsize, route=route, is_clean=is_clean)
        self.ramp = float(ramp)
        self.ce_factor, self.consistency_factor = float(ce_factor), float(consistency_factor)
        self.temperature, self.views, self.mixup, self.beta = float(temperature), int(views), bool(mixup), float(beta)
        self.mu, self.eps_init, self.policy = float(meta_momentum), float(eps_init), policy
        self._strong_aug = None

    def bind(self, data, augment, optimizer) -> None:
        super().bind(data, augment, optimizer)
        # The policy, then pad-crop and flips as the weak view, then Cutout of half the side; tables get noise.

        self._strong_aug = StrongView(data, self.policy, flip=bool(augment and augment.flip))

    def _strong_view(self, step: Step) -> torch.Tensor:
        return self._strong_aug(step.x_raw, step.x, step.generator)

    def loss(self, step: Step) -> tuple[torch.Tensor, torch.Tensor]:
        net, y, B = step.nets[0], step.y, len(step.y)
        # The unsupervised terms rise linearly from 0 over the first ``ramp`` of the steps.
        unsup = min(1.0, step.step / (self.ramp * step.total_steps)) if self.ramp > 0 else 1.0
        z_weak = net(step.x).float()  # the only pass that moves BatchNorm's running statistics
        strong = [self._strong_view(step) for _ in range(self.views - 1)]
        with frozen_batchnorm(_module(net)):
            z_strong = [net(x).float() for x in strong]
        K = z_weak.shape[1]
        with torch.no_grad():
            guess = sum(torch.softmax(logit_norm(z), 1) for z in [z_weak, *z_strong]) / self.views
            pseudo = sharpen(guess, self.temperature)
        x_p, y_p = self._probe_batch(step, B)

        xe = z_weak.new_zeros(())
        if self.mixup:
            g = step.generator
            pick = torch.randint(0, len(y_p), (B,), generator=g, device=y.device)
            X = torch.cat([x_p[pick], step.x, *strong])
            T = torch.cat([F.one_hot(y_p[pick], K).float(), *([pseudo] * self.views)])
            lam = mixup_lambda(len(X), self.beta, g, X.device)
            perm = torch.randperm(len(X), generator=g, device=X.device)
            X = lam.view(-1, *[1] * (X.ndim - 1)) * X + (1 - lam.view(-1, *[1] * (X.ndim - 1))) * X[perm]
            T = lam[:, None] * T + (1 - lam[:, None]) * T[perm]
            with frozen_batchnorm(_module(net)):
                z_mix = net(_layout_like(X, step.x)).float()
            chunks = [logit_norm(c) for c in z_mix.split(B)]
            l_loss = soft_cross_entropy(T[:B], chunks[0]).mean()
            u_loss = soft_cross_entropy(T[B:], torch.cat(chunks[1:])).mean()
            xe = l_loss + unsup * self.ce_factor * u_loss

        p_weak = torch.softmax(z_weak, 1).detach()
        cs = sum((p_weak * (torch.log(p_weak + 1e-12) - F.log_softmax(z, 1))).sum(1).mean() for z in z_strong)
        cs = unsup * self.consistency_factor * cs / len(z_strong)

        mom, wd = self._meta_inputs(net)
        grad_w, grad_eps = meta_gradients(net, step.x, y, z_weak, x_p, y_p, w0=1.0 / B, eps0=self.eps_init,
                                          pseudo=pseudo, alpha=self.alpha, momentum=mom, mu=self.mu,
                                          weight_decay=wd, route=self.route)
        w = normalized_weights(grad_w)
        keep_given = (grad_eps < 0).float()[:, None]
        y1 = F.one_hot(y, K).float()
        l1 = soft_cross_entropy(keep_given * y1 + (1 - keep_given) * pseudo, z_weak).mean()
        l2 = (w * soft_cross_entropy(self.eps_init * y1 + (1 - self.eps_init) * pseudo, z_weak)).sum()
        self._record(step, weight=w * B, zero=(w == 0).float(), pseudo=1 - keep_given[:, 0])
        return (l1 + l2) / 2 + xe + cs, z_weak


# ---- the registry entries -------------------------------------------------------------------------

IEG_POLICIES = ("auto", "autoaugment", "randaugment")
SCHEDULES = ("onecycle", "restarts")


@dataclass
class L2ROptions:
    """L2R's settings (and the part of IEG's they share): the trusted probe set and the look-ahead.

    Parameters
    ----------
    probe_per_class : int
        Trusted examples per class held out of training as the probe set, drawn (seeded) from the rows
        whose clean label is known.
    probe_labels : str, optional
        The train stage's source of trusted labels: a file of hand-checked ``id,label`` rows (CSV) or
        ``{id: label}`` (JSON); default the true labels of a benchmark run.
    trusted_rows, trusted_labels : np.ndarray, optional
        Library callers: rows whose clean label is known, and those labels (default: ``truth``).
    ema : float
        Decay of the weight average that is evaluated (0: off).
    meta_stepsize : float
        α of the look-ahead step (0.1, fixed).
    route : {'jvp', 'autograd'}
        The meta-gradient: one forward-mode pass, or a second-order backward.
    schedule : {'onecycle', 'restarts'}
        The learning rate. The paper's cosine restarts suit its 200,000 steps; squeezed into a few hundred
        they restart every few steps at a high rate (plain training, digits with 60% noise, 10 epochs: 37%
        test accuracy against 93% with the one-cycle schedule).
    """

    probe_per_class: int = field(default=10, metadata=cli_option("IEG/L2R: trusted examples per class, held out of training."))
    probe_labels: str | None = field(default=None, metadata=cli_option(
        "IEG/L2R: hand-checked labels (CSV id,label or JSON {id: label}); default the true labels of a benchmark run.",
        type=Path))
    trusted_rows: np.ndarray | None = data_input()
    trusted_labels: np.ndarray | None = data_input()
    ema: float = field(default=0.999, metadata=cli_option(
        "IEG/L2R/noisy-student: decay of the weight average that is evaluated (and labels, 0: off)."))
    meta_stepsize: float = 0.1
    route: str = field(default="jvp", metadata=cli_option(
        "IEG/L2R meta-gradient: jvp (one forward-mode pass) | autograd (second-order backward).", flag="--meta-route"))
    schedule: str = field(default="onecycle", metadata=cli_option(
        "IEG/L2R learning rate: onecycle | restarts (the paper's cosine restarts, for long runs)."))

    def __post_init__(self) -> None:
        check_number(self.probe_per_class, "probe_per_class", low=1)  # ema: the engine's TrainConfig checks it
        check_number(self.meta_stepsize, "meta_stepsize", low=0.0, low_open=True)
        check_choice(self.route, "route", ROUTES)
        check_choice(self.schedule, "schedule", SCHEDULES)
        if (self.trusted_rows is None) != (self.trusted_labels is None):
            raise ParameterError("trusted_rows", "and trusted_labels go together")


@dataclass
class IegOptions(L2ROptions):
    """IEG's settings: L2R's, plus the MixUp, consistency and pseudo-label terms.

    Parameters
    ----------
    ce_factor : float
        Weight p of the MixUp loss on the training rows (5).
    consistency_factor : float, optional
        Weight k of the KL between the weak and strong views; None: per kind of data (``cleanpipe.recipes``).
    ramp : float, optional
        Share of the run over which the MixUp and KL terms rise from 0; None: per kind of data.
    temperature : float
        Sharpening of the averaged predictions (0.5).
    views : int
        Augmentations averaged for a pseudo label: the weak view and ``views - 1`` strong ones.
    mixup : bool
    policy : {'auto', 'autoaugment', 'randaugment'}
        The strong augmentation; ``auto``: per kind of data.
    """

    ce_factor: float = field(default=5.0, metadata=cli_option("IEG: weight of the MixUp loss on the training rows (p)."))
    consistency_factor: float | None = field(default=None, metadata=cli_option(
        "IEG: weight of the weak/strong KL (k; default 20 on colour images as in the paper, 2 on grey ones)."))
    ramp: float | None = field(default=None, metadata=cli_option(
        "IEG: share of the run over which the MixUp and KL terms rise from 0 (default 0 on colour images, 0.5 on grey ones).",
        flag="--unsup-ramp"))
    temperature: float = field(default=0.5, metadata=cli_option("IEG: sharpening of the pseudo labels."))
    views: int = field(default=2, metadata=cli_option("IEG: augmentations averaged for a pseudo label (weak + strong ones)."))
    mixup: bool = field(default=True, metadata=cli_option("IEG: MixUp of probe and training rows.", flag="--mixup/--no-mixup"))
    policy: str = field(default="auto", metadata=cli_option(
        "IEG: the strong augmentation, auto (AutoAugment on colour, RandAugment on grey) | autoaugment | randaugment."))

    def __post_init__(self) -> None:
        super().__post_init__()
        check_number(self.ce_factor, "ce_factor", low=0.0)
        if self.consistency_factor is not None:
            check_number(self.consistency_factor, "consistency_factor", low=0.0)
        if self.ramp is not None:
            check_number(self.ramp, "ramp", low=0.0, high=1.0)
        check_number(self.temperature, "temperature", low=0.0, low_open=True)
        check_number(self.views, "views", low=2, why="(the weak view and a strong one)")
        check_choice(self.policy, "policy", IEG_POLICIES)


def choose_probe(trusted_rows: np.ndarray, trusted_labels: np.ndarray, per_class: int, n_classes: int, seed: int,
                 *, source: str = "the trusted labels", class_names=None) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` trusted rows of every class, drawn with ``seed``: the probe's rows (ascending) and labels.

    Parameters
    ----------
    trusted_rows, trusted_labels : np.ndarray
        int (m,): rows whose clean label is known, and those labels.
    per_class : int
    n_classes : int
    seed : int
    """
    trusted_rows, trusted_labels = np.asarray(trusted_rows, np.int64), np.asarray(trusted_labels, np.int64)
    if trusted_labels.max(initial=0) >= n_classes or trusted_labels.min(initial=0) < 0:
        raise ParameterError("trusted_labels", f"hold label {trusted_labels.max()}, out of range; classes are 0..{n_classes - 1}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(n_classes):
        of_class = trusted_rows[trusted_labels == c]
        if len(of_class) < per_class:
            name = class_names[c] if class_names is not None else str(c)
            raise ParameterError("probe_per_class", f"class {name!r} has {len(of_class)} trusted example(s) in {source}, "
                                 f"fewer than {{name}} {per_class}; label more of it or lower {{name}}")
        chosen.append(rng.choice(of_class, per_class, replace=False))
    picked = np.sort(np.concatenate(chosen))
    label_of = dict(zip(trusted_rows.tolist(), trusted_labels.tolist()))
    return picked, np.array([label_of[r] for r in picked.tolist()], dtype=np.int64)


class L2RTraining(TrainingMethod):
    name = "l2r"
    summary = "per-example weights from a small trusted probe set's loss after a look-ahead step (Ren et al. 2018)"
    title = "IEG / L2R"
    Options = L2ROptions

    def from_run(self, options, inputs):
        ds = inputs.dataset
        if options.probe_labels:
            rows, trusted = read_partial_labels(Path(options.probe_labels), [str(i) for i in ds.ids_train], ds.class_names)
            return replace(options, trusted_rows=rows, trusted_labels=trusted), [Path(options.probe_labels)]
        if inputs.truth is None:
            raise CleanpipeError(
                f"{inputs.root} has no known clean labels for IEG/L2R's probe set; pass --probe-labels FILE "
                "(a CSV with id,label columns, or a JSON {id: label}, for a few hand-checked examples per class)")
        return options, []  # the probe is drawn from the run's true labels (train_model's truth)

    def probe(self, options, job) -> tuple[np.ndarray, np.ndarray]:
        rows, labels, source = options.trusted_rows, options.trusted_labels, str(options.probe_labels or "the trusted labels")
        if rows is None:
            if job.truth is None:
                raise ParameterError("trusted_rows", "and trusted_labels (or truth) are needed for the probe set")
            rows, labels, source = np.arange(len(job.truth)), job.truth, "the true labels"
        return choose_probe(rows, labels, options.probe_per_class, job.n_classes, job.settings.seed, source=source,
                            class_names=job.class_names)

    def resolve(self, options, probe) -> dict:
        """The settings this training uses, for the manifest."""
        v = option_values(options)
        return {"probe_size": int(len(probe[0])), **{k: v[k] for k in ("probe_per_class", "ema", "meta_stepsize",
                                                                        "route", "schedule")}}

    def step(self, options, job, probe, used):
        return L2R(probe[0], probe[1], len(job.X), meta_stepsize=options.meta_stepsize, route=options.route,
                   is_clean=job.is_clean)

    def prepare(self, options, job):
        probe = self.probe(options, job)
        used = self.resolve(options, probe)
        step = self.step(options, job, probe, used)
        # IEG's recipe: plain momentum 0.9, whose buffer its look-ahead reads with the same mu (whatever a
        # network's own recipe says, e.g. airbench's 0.85), and the EMA.
        config = dict(nesterov=False, momentum=0.9, schedule=options.schedule, ema=options.ema)
        rows = np.setdiff1d(job.rows, probe[0])  # trusted examples are never training data
        return Plan(rows=rows, step=step, method_settings=used, config=config,
                    state={"probe": probe, "key_arrays": probe})

    def train(self, trainer, options, plan):
        result = super().train(trainer, options, plan)
        result.per_example = {"records": plan.step.example_records(), "probe": plan.state["probe"]}
        return result

    def outputs(self, result, dataset, labels, truth):
        import pandas as pd

        rows, rec = result.rows, result.per_example["records"]
        weights = pd.DataFrame({"index": rows, "id": dataset.ids_train[rows], "given_label": labels[rows],
                                "mean_weight": np.round(rec["weight"][rows], 6),
                                "zero_weight_share": np.round(rec["zero"][rows], 6)})
        if "pseudo" in rec:
            weights["pseudo_label_share"] = np.round(rec["pseudo"][rows], 6)
        weights["steps_seen"] = rec["seen"][rows]
        if truth is not None:
            weights["true_label"] = truth[rows]
            weights["is_true_error"] = truth[rows] != labels[rows]
        probe_rows, probe_labels = result.per_example["probe"]
        return {"example_weights.csv": weights.sort_values(["mean_weight", "index"], kind="stable"),
                "probe.csv": pd.DataFrame({"index": probe_rows, "id": dataset.ids_train[probe_rows], "label": probe_labels})}


class IegTraining(L2RTraining):
    name = "ieg"
    summary = "L2R's weights plus meta re-labeling, MixUp with the probe and weak/strong consistency (Zhang et al. 2020)"
    Options = IegOptions

    def resolve(self, options, probe):
        return {"probe_size": int(len(probe[0])), **{k: v for k, v in option_values(options).items() if k != "probe_labels"}}

    def step(self, options, job, probe, used):
        r = recipe(job.X.shape[1:])
        policy = r.ieg_policy if options.policy == "auto" else options.policy
        k = r.ieg_consistency if options.consistency_factor is None else options.consistency_factor
        ramp = r.ieg_ramp if options.ramp is None else options.ramp
        used.update(policy=policy, consistency_factor=k, ramp=ramp)  # the per-data-kind defaults, resolved
        return IEG(probe[0], probe[1], len(job.X), ce_factor=options.ce_factor, consistency_factor=k, ramp=ramp,
                   temperature=options.temperature, views=options.views, mixup=options.mixup,
                   meta_stepsize=options.meta_stepsize, policy=policy, route=options.route, is_clean=job.is_clean)
