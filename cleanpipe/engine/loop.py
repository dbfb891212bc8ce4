"""The one training loop. Every stage trains through :func:`fit` and predicts through :func:`predict_proba`.

A method (standard cross-entropy, Co-teaching, IEG, ...) supplies only its loss/selection
step (:class:`cleanpipe.engine.method.Method`); this module supplies the rest: batches
sliced from device-resident data, batched augmentation, SGD (Nesterov or plain momentum) or
AdamW with a one-cycle, cosine or cosine-with-restarts schedule, an EMA of the weights, bf16 autocast and channels_last on CUDA, optional
``torch.compile``, per-epoch checkpoints that an interrupted job resumes from
bit-for-bit (each epoch's randomness is derived from ``(seed, epoch)``, not from where a
previous process stopped).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cleanpipe.engine.data import Augment, DeviceData
from cleanpipe.engine.method import Method, Standard, Step
from cleanpipe.engine.optim import SGD
from cleanpipe.files import atomic_path
from cleanpipe.lazy import lazy_module, no_grad
from cleanpipe.validation import ParameterError, check_choice, check_number

torch = lazy_module("torch")


@dataclass
class TrainConfig:
    """How to train. Defaults suit small CNNs on digits/MNIST; stages override per dataset.

    ``lr`` None means 0.1 for SGD-Nesterov and 2e-3 for AdamW. No label smoothing by
    default: it flattens the confidences that confident learning reads.

    ``schedule="restarts"`` is IEG's cosine decay with warm restarts (no warm-up): the first
    cycle lasts ``restart_steps`` steps (0: a 400th of the run, as 500 of IEG's 200,000), each
    next one 1.5 times longer with a peak 0.9 times lower. ``ema`` > 0 keeps an exponential
    moving average of the weights, ``d = min(ema, (1 + t) / (10 + t))`` after step t, with the
    live BatchNorm statistics; the averaged networks are the ones evaluated and returned.

    ``lookahead`` k > 0 is airbench's look-ahead: every k steps a slow copy of each network's weights
    and BatchNorm statistics moves towards the live ones by ``1 - d`` with ``d = 0.95**k (t / T)**3`` (no
    pull early, 0.77 at the end) and the live network is reset to it; training ends on the slow copy.
    """

    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    warmup: float = 0.2
    restart_steps: int = 0
    ema: float = 0.0
    lookahead: int = 0
    label_smoothing: float = 0.0
    augment: bool = True
    flip: bool = False
    policy: str | None = None
    tta_flip: bool = False
    tta_shift: bool = False
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    eval_batch_size: int = 1024

    def __post_init__(self) -> None:
        check_choice(self.optimizer, "optimizer", ("sgd", "adamw"))
        check_choice(self.schedule, "schedule", ("onecycle", "cosine", "restarts"))
        check_number(self.ema, "ema", low=0.0, high=1.0, high_open=True)
        check_number(self.lookahead, "lookahead", low=0)
        check_number(self.epochs, "epochs", low=1)
        check_number(self.batch_size, "batch_size", low=2, why="(BatchNorm needs two examples)")
        if self.lr is not None:
            check_number(self.lr, "lr", low=0.0, low_open=True)

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else (0.1 if self.optimizer == "sgd" else 2e-3)


DEVICES = ("auto", "cpu", "cuda")  # what --device takes


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_choice(name, "device", DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise ParameterError("device", "is cuda but no CUDA GPU is visible to torch; use cpu or auto")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def cosine_restarts(step: int, first: float, peak: float, t_mul: float = 1.5, m_mul: float = 0.9) -> float:
    """TF's ``cosine_decay_restarts`` (floor 0): cycle i lasts ``first * t_mul**i`` steps and peaks at ``peak * m_mul**i``."""
    c = step / first
    i = math.floor(math.log(1 - c * (1 - t_mul)) / math.log(t_mul)) if t_mul != 1 else math.floor(c)
    start = (1 - t_mul**i) / (1 - t_mul) if t_mul != 1 else i
    frac = (c - start) / t_mul**i
    return peak * m_mul**i * 0.5 * (1 + math.cos(math.pi * frac))


WHITENING_IMAGES = 5000  # training images a network's data-set layers (patch whitening) are estimated from
MIN_STEPS = 4  # steps per epoch at least, where the data allow batches of MIN_BATCH
MIN_BATCH = 16


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup`` of the steps, then linear (one-cycle) or cosine decay to 0; or cosine restarts."""
    if cfg.schedule == "restarts":
        return cosine_restarts(step, cfg.restart_steps or max(1.0, total / 400), cfg.peak_lr)
    warm = max(1, int(cfg.warmup * total))
    if step < warm:
        return cfg.peak_lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return cfg.peak_lr * ((1 - t) if cfg.schedule == "onecycle" else 0.5 * (1 + math.cos(math.pi * t)))


def _optimizer(nets: Sequence[torch.nn.Module], cfg: TrainConfig):
    # No weight decay on norms and biases (1-D tensors); a network may scale a group's learning rate
    # (``param_groups()``: airbench's BatchNorm biases learn 64 times faster than its weights).
    groups = []
    for net in nets:
        scaled = net.param_groups() if hasattr(net, "param_groups") else [
            {"params": list(net.parameters()), "lr_scale": 1.0}]
        for part in scaled:
            params = [p for p in part["params"] if p.requires_grad]
            for decay in (True, False):
                chosen = [p for p in params if (p.ndim > 1) == decay]
                if chosen:
                    groups.append({"params": chosen, "weight_decay": cfg.weight_decay if decay else 0.0,
                                   "lr_scale": part.get("lr_scale", 1.0)})
    if cfg.optimizer == "sgd":
        return SGD(groups, lr=cfg.peak_lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.peak_lr)


def _autocast(device: torch.device, cfg: TrainConfig):
    if device.type == "cuda" and cfg.bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**62)


def place_nets(nets: Sequence[torch.nn.Module], device: torch.device, cfg: TrainConfig, image: bool) -> list[torch.nn.Module]:
    """The networks on ``device`` in the memory layout ``fit`` trains them in (channels_last for images when set).

    A network loaded from a saved state goes through this too, so that it predicts bit for bit as it did.
    """
    out = []
    for net in nets:
        net = net.to(device)
        if image and cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        out.append(net)
    return out


def fit(
    nets: torch.nn.Module | Sequence[torch.nn.Module],
    data: DeviceData,
    labels: np.ndarray,
    rows: np.ndarray,
    cfg: TrainConfig,
    *,
    method: Method | None = None,
    checkpoint: Path | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    after_epoch: Callable[[int, list[torch.nn.Module]], None] | None = None,
    checkpoint_every_s: float = 30.0,
) -> list[torch.nn.Module]:
    """Train ``nets`` on ``data[rows]`` with ``labels[rows]``.

    Parameters
    ----------
    nets : torch.nn.Module or sequence of torch.nn.Module
        Fresh networks; a method that trains several (Co-teaching) takes them all.
    data : DeviceData
    labels : np.ndarray
        int64 of shape (N,), aligned with ``data`` (only ``rows`` are read).
    rows : np.ndarray
        int of shape (n,): the training rows.
    cfg : TrainConfig
    method : Method, optional
        The loss/selection step; default plain cross-entropy.
    checkpoint : Path, optional
        Saved at the end of an epoch once ``checkpoint_every_s`` seconds have passed since
        the last save (a ResNet's weights and momenta are ~90 MB: saving every short epoch
        cost a third of the time on a GPU), and resumed from when it exists.
    on_epoch : callable(epoch, metrics), optional
        Called after each epoch with ``loss`` and ``train_accuracy`` (on the given labels).
    on_batch : callable(step_in_epoch, steps_per_epoch), optional
    after_epoch : callable(epoch, nets), optional
        Sees the networks after each epoch (e.g. to keep the best one on a validation set).

    Returns
    -------
    list of torch.nn.Module
        The trained networks, in eval mode.
    """
    nets = [nets] if isinstance(nets, torch.nn.Module) else list(nets)
    method = method or Standard(label_smoothing=cfg.label_smoothing)
    device = data.device
    nets = place_nets(nets, device, cfg, data.is_image)
    forwards = [torch.compile(n) if cfg.compile else n for n in nets]
    opt = _optimizer(nets, cfg)
    augment = Augment(pad=translation_pad(data.X), flip=cfg.flip, policy=cfg.policy) if (
        cfg.augment and data.is_image) else None

    y_all = torch.as_tensor(np.asarray(labels, dtype=np.int64), device=device)
    rows_t = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=device)
    n = len(rows_t)
    bs, steps_per_epoch = _batching(n, cfg)
    total = cfg.epochs * steps_per_epoch
    report_every = max(1, steps_per_epoch // 20)  # progress updates cost host time; ~20 per epoch suffice

    # The averaged networks share the live ones' BatchNorm statistics (copied in before use).
    emas = [copy.deepcopy(n).requires_grad_(False) for n in nets] if cfg.ema > 0 else []
    method.bind(data, augment, opt)
    _init_from_data(nets, data, rows_t, cfg)
    # the live tensors (parameters and BatchNorm statistics are updated in place, so these stay theirs) and slow copies
    live = [_float_state(n) for n in nets] if cfg.lookahead else []
    slow = [[t.clone() for t in ts] for ts in live]
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        start = _load_checkpoint(checkpoint, nets, opt, method, cfg, emas, slow)
    last_save = time.monotonic()

    for epoch in range(start, cfg.epochs):
        seed = _epoch_seed(cfg.seed, epoch)
        # One generator on the data's device for shuffling and augmentation, seeded per epoch.
        gen = torch.Generator(device=device).manual_seed(seed)
        torch.manual_seed(seed)  # dropout and anything else drawn from the global generators
        method.start_epoch(epoch, cfg.epochs)
        for net in nets:
            net.train()
        extra = method.epoch_rows(epoch)
        pool = rows_t if extra is None else torch.as_tensor(np.asarray(extra, dtype=np.int64), device=device)
        perm = pool[torch.randperm(len(pool), generator=gen, device=device)]
        # Streamed data gather on the host: one copy of the order an epoch, not a device sync a step.
        perm_host = perm.cpu() if data.streamed else None
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        for s in range(steps_per_epoch):
            idx = perm[s * bs : (s + 1) * bs]
            y = y_all[idx]
            x_raw = data.batch_raw(idx, augment, gen,
                                   None if perm_host is None else perm_host[s * bs : (s + 1) * bs])
            x = data.normalize(x_raw)
            if data.is_image and cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            step = epoch * steps_per_epoch + s
            lr = lr_at(step, total, cfg)
            _set_lr(opt, lr)
            with _autocast(device, cfg):
                loss, logits = method.loss(Step(forwards, x, y, idx, epoch, step, total, x_raw, gen))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if emas:
                _ema_update(emas, nets, min(cfg.ema, (1 + step) / (10 + step)))
            if slow and (step + 1) % cfg.lookahead == 0:
                _lookahead(slow, live, 0.95**cfg.lookahead * ((step + 1) / total) ** 3)
            # Accumulate on the device: a .item() per step would stall a GPU.
            loss_sum += loss.detach().float() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(idx)
            if on_batch is not None and ((s + 1) % report_every == 0 or s + 1 == steps_per_epoch):
                on_batch(s + 1, steps_per_epoch)
        if slow and epoch + 1 == cfg.epochs:
            _lookahead(slow, live, 1.0)  # end on the slow weights
        if emas:
            _copy_buffers(emas, nets)
        if after_epoch is not None:
            after_epoch(epoch, emas or nets)
        metrics = {"loss": float(loss_sum) / seen, "train_accuracy": float(correct) / seen, "lr": lr}
        metrics.update(method.epoch_metrics())
        if on_epoch is not None:  # before the checkpoint: what it records must not lag what resumes
            on_epoch(epoch, metrics)
        if checkpoint is not None and epoch + 1 < cfg.epochs and time.monotonic() - last_save >= checkpoint_every_s:
            _save_checkpoint(checkpoint, epoch + 1, nets, opt, method, cfg, emas, slow)
            last_save = time.monotonic()
    for net in nets + emas:  # the averaged networks got the live statistics at the end of the last epoch
        net.eval()
    return emas or nets


def _batching(n: int, cfg: TrainConfig) -> tuple[int, int]:
    """The batch size and steps per epoch for ``n`` training rows.

    Small data: the batch shrinks so that an epoch still takes MIN_STEPS steps (200 images at batch 256
    would give one step an epoch, and a model that learns nothing); large data keeps cfg.batch_size. The
    ragged last batch is dropped: BatchNorm dislikes tiny ones.
    """
    bs = min(cfg.batch_size, n, max(MIN_BATCH, n // MIN_STEPS))
    return bs, max(1, n // bs)


def _init_from_data(nets, data: DeviceData, rows_t, cfg: TrainConfig) -> None:
    """Layers set from the training images themselves (airbench's patch whitening), before any step;
    a resumed checkpoint overwrites them with the very same values."""
    if not any(hasattr(net, "init_from_data") for net in nets):
        return
    # a seeded sample, not the first rows: a source sorted by class would give a few classes' patches
    pick = torch.randperm(len(rows_t), generator=torch.Generator().manual_seed(cfg.seed))[:WHITENING_IMAGES]
    sample = rows_t[pick.to(data.device)]
    x = data.batch(sample, host_idx=sample.cpu() if data.streamed else None)
    for net in nets:
        if hasattr(net, "init_from_data"):
            net.init_from_data(x)


def _set_lr(opt, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_scale"]


@no_grad
def _ema_update(emas: Sequence[torch.nn.Module], nets: Sequence[torch.nn.Module], decay: float) -> None:
    for ema, net in zip(emas, nets):
        e, p = list(ema.parameters()), list(net.parameters())
        torch._foreach_lerp_(e, [q.detach() for q in p], 1.0 - decay)


def _float_state(net: torch.nn.Module) -> list[torch.Tensor]:
    """The network's floating-point parameters and buffers (weights and BatchNorm statistics), in state_dict order."""
    return [t.detach() for t in net.state_dict(keep_vars=True).values() if t.dtype.is_floating_point]


@no_grad
def _lookahead(slow: Sequence[list[torch.Tensor]], live: Sequence[list[torch.Tensor]], decay: float) -> None:
    for s, fast in zip(slow, live):
        torch._foreach_lerp_(s, fast, 1.0 - decay)
        torch._foreach_copy_(fast, s)


@no_grad
def _copy_buffers(emas: Sequence[torch.nn.Module], nets: Sequence[torch.nn.Module]) -> None:
    for ema, net in zip(emas, nets):
        for b_ema, b in zip(ema.buffers(), net.buffers()):
            b_ema.copy_(b)


@no_grad
def predict_proba(
    nets: torch.nn.Module | Sequence[torch.nn.Module],
    data: DeviceData,
    rows: np.ndarray,
    cfg: TrainConfig,
) -> np.ndarray:
    """Softmax probabilities of ``data[rows]``, float32 (n, K), rows summing to 1.

    Several networks are averaged; with ``cfg.tta_flip`` each image is also scored
    mirrored, with ``cfg.tta_shift`` also moved up, down, left and right by the training
    translation (:func:`translation_pad` pixels), and the views averaged.
    """
    nets = [nets] if isinstance(nets, torch.nn.Module) else list(nets)
    device = data.device
    for net in nets:
        net.eval()
    rows_np = np.asarray(rows, dtype=np.int64)
    rows_t = torch.as_tensor(rows_np, device=device)
    host = torch.from_numpy(rows_np) if data.streamed else None
    out = []
    for s in range(0, len(rows_t), cfg.eval_batch_size):
        x = data.batch(rows_t[s : s + cfg.eval_batch_size], host_idx=None if host is None else host[s : s + cfg.eval_batch_size])
        if data.is_image and cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        views = [x, x.flip(3)] if (cfg.tta_flip and data.is_image) else [x]
        if cfg.tta_shift and data.is_image:
            views = [v for u in views for v in (u, *_shifted(u, translation_pad(x)))]
        p = torch.zeros((), device=device)
        with _autocast(device, cfg):
            for net in nets:
                for v in views:
                    p = p + torch.softmax(net(v).float(), dim=1)
        out.append(p / (len(nets) * len(views)))
    probs = torch.cat(out).cpu().numpy().astype(np.float32)
    return probs / probs.sum(axis=1, keepdims=True)


def translation_pad(x: torch.Tensor) -> int:
    """Pixels of the random translation in training (and of the shifted views at test time)."""
    return max(1, round(min(x.shape[2:]) / 14))


def _shifted(x: torch.Tensor, d: int) -> list[torch.Tensor]:
    """``x`` moved by ``d`` pixels up, down, left and right, reflect-padded as in training."""
    H, W = x.shape[2:]
    padded = torch.nn.functional.pad(x, (d, d, d, d), mode="reflect")
    return [padded[:, :, dy : dy + H, dx : dx + W] for dy, dx in ((0, d), (2 * d, d), (d, 0), (d, 2 * d))]


def _save_checkpoint(path: Path, epoch: int, nets, opt, method: Method, cfg: TrainConfig, emas=(), slow=()) -> None:
    state = {
        "epoch": epoch,
        "lookahead": [list(s) for s in slow],
        "nets": [n.state_dict() for n in nets],
        "emas": [n.state_dict() for n in emas],
        "optimizer": opt.state_dict(),
        "method": method.state_dict(),
        "config": asdict(cfg),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path, nets, opt, method: Method, cfg: TrainConfig, emas=(), slow=()) -> int:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start this model over rather than fail
        path.unlink(missing_ok=True)
        return 0
    if state.get("config") != asdict(cfg) or len(state.get("nets", [])) != len(nets):
        return 0  # trained with other settings: not ours to resume
    for net, sd in zip(nets, state["nets"]):
        net.load_state_dict(sd)
    for net, sd in zip(emas, state.get("emas", [])):
        net.load_state_dict(sd)
    for mine, saved in zip(slow, state.get("lookahead", [])):
        for t, v in zip(mine, saved):
            t.copy_(v)
    opt.load_state_dict(state["optimizer"])
    method.load_state_dict(state["method"])
    return int(state["epoch"])
