"""Every row embedded by one function: the space the audit's neighbours are measured in.

The out-of-fold models each have their own feature space (rows scored by different folds are not comparable), so
the audit trains one network on all training rows with crossval's recipe (its noisy labels teach it the
classes; shift augmentation makes a moved copy embed next to its original) and reads the input of its last linear
layer for the training and the test split alike. A user's own embeddings (``--features``) replace it.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from cleanpipe.engine import DeviceData
from cleanpipe.errors import CleanpipeError
from cleanpipe.lazy import lazy_module
from cleanpipe.robust import train_model

torch = lazy_module("torch")

EMBED_BATCH = 4096


def check_features(features: np.ndarray, n_train: int, n_test: int, *, source: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A user's embeddings split into the training part and the test part (or None).

    ``features`` is float (N, D) with N the training rows, or the training rows then the test rows.
    """
    f = np.asarray(features)
    if f.ndim != 2 or not np.issubdtype(f.dtype, np.number) or f.shape[1] < 1:
        raise CleanpipeError(f"{source}: expected an N x D array of numbers, got shape {f.shape} and dtype {f.dtype}")
    if len(f) not in (n_train, n_train + n_test):
        raise CleanpipeError(f"{source}: {len(f):,} rows, but the run has {n_train:,} training rows"
                             + (f" and {n_test:,} test rows (give {n_train:,} or {n_train + n_test:,})" if n_test else ""))
    f = f.astype(np.float32, copy=False)
    bad = ~np.isfinite(f).all(1)
    if bad.any():
        raise CleanpipeError(f"{source}: {int(bad.sum()):,} row(s) hold NaN or infinite values (the first is row "
                             f"{int(np.flatnonzero(bad)[0])}); embed them again or drop them from the data")
    return f[:n_train], (f[n_train:] if len(f) > n_train else None)


def embed(net, mean, std, X: np.ndarray, device=None) -> np.ndarray:
    """float32 (N, F): the input of ``net``'s last linear layer for each row of ``X`` (normalised as in training).

    Parameters
    ----------
    net : torch.nn.Module
        A trained network in eval mode.
    mean, std : torch.Tensor
        The training rows' normalisation statistics.
    X : np.ndarray
        uint8 (N, C, H, W) images or float32 (N, D) rows.
    device : str or torch.device, optional
        Default: where the network's weights are.
    """
    linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    if not linear:
        raise CleanpipeError("the embedding network has no linear layer to read features before")
    caught: list[torch.Tensor] = []
    hook = linear[-1].register_forward_hook(lambda _m, inputs, _out: caught.append(inputs[0].detach().float().flatten(1).cpu()))
    device = next(net.parameters()).device if device is None else torch.device(device)
    net = net.to(device).eval()
    stats = SimpleNamespace(mean=mean, std=std)
    try:
        with torch.no_grad():
            for s in range(0, len(X), EMBED_BATCH):
                data = DeviceData(X[s : s + EMBED_BATCH], device, stats=stats)
                for b in range(0, len(data), 1024):
                    net(data.batch(torch.arange(b, min(len(data), b + 1024), device=data.device)))
    finally:
        hook.remove()
    width = linear[-1].in_features
    return torch.cat(caught).numpy() if caught else np.zeros((0, width), dtype=np.float32)


def train_embedding(X: np.ndarray, labels: np.ndarray, *, settings=None, device: str = "auto", resume_dir=None, progress=None):
    """One network trained on every row (``settings``: crossval's recipe, plain cross-entropy): the audit's encoder.

    Returns
    -------
    cleanpipe.robust.base.TrainResult
    """
    return train_model(X, labels, method="standard", settings=settings, device=device, resume_dir=resume_dir, progress=progress)
