"""The saved-model format (``RUN/train/model.pt``): what it holds, writing it, loading it, predicting with it.

A ``model.pt`` is a plain dictionary of tensors and values (``torch.load(path, weights_only=True)`` reads it;
no pickled code): the network's registry name and its ``architecture`` (the builder's arguments, such as the
small CNN's width), so that it rebuilds exactly whatever the recipes say later; the input shape, classes,
the training rows' normalisation and the weights. Files of format 1 (before the architecture was recorded)
still load: their only recipe-made argument was the small CNN's width, then 32 on images of at most 16 px
a side and 16 above.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from cleanpipe.engine import DeviceData, TrainConfig, predict_proba
from cleanpipe.errors import CleanpipeError
from cleanpipe.files import atomic_path
from cleanpipe.models import build_model

MODEL_FORMAT = "cleanpipe-model-2"
READABLE = ("cleanpipe-model-1", MODEL_FORMAT)
PREDICT_BATCH = 4096  # rows per progress step (the engine batches within it)


def model_state(result, dataset, method: str) -> dict:
    """What ``model.pt`` holds for a training result: the first network and what rebuilds and feeds it."""
    return {"format": MODEL_FORMAT, "model": result.model, "architecture": dict(result.architecture),
            "input_shape": list(dataset.input_shape), "n_classes": dataset.n_classes,
            "class_names": list(dataset.class_names), "method": method, "mean": result.mean, "std": result.std,
            "state_dict": {k: v.detach().cpu() for k, v in result.nets[0].state_dict().items()}}


def save_model(path: Path, state: dict) -> None:
    """Write a :func:`model_state` atomically."""
    import torch

    with atomic_path(Path(path)) as tmp:
        torch.save(state, tmp)


def architecture_of(state: dict) -> dict:
    """The builder arguments a saved model was made with (for format 1, what the recipes gave then)."""
    if "architecture" in state:
        return dict(state["architecture"])
    if state["model"] in ("small_cnn", "small_cnn_wide"):  # format 1: the recipes' width of 2026-12
        width = 32 if min(state["input_shape"][1:]) <= 16 else 16
        return {"width": width * (2 if state["model"] == "small_cnn_wide" else 1)}
    return {}


def load_model(path: Path):
    """Rebuild a saved network; returns ``(net in eval mode, state)`` (weights only, never pickled code)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CleanpipeError(f"{path}: no such file; run `cleanpipe train` first") from None
    except Exception as e:  # noqa: BLE001 - a torn or foreign file is a user error, not a crash
        raise CleanpipeError(f"{path}: not a cleanpipe model ({type(e).__name__}); re-run `cleanpipe train`") from None
    made = state.get("format") if isinstance(state, dict) else None
    if isinstance(made, str) and made.startswith("cleanpipe-model-") and made not in READABLE:
        raise CleanpipeError(f"{path}: saved as {made} by a newer cleanpipe; upgrade cleanpipe to read it")
    if made not in READABLE:
        raise CleanpipeError(f"{path}: not a cleanpipe model file; re-run `cleanpipe train`")
    try:
        net = build_model(state["model"], tuple(state["input_shape"]), int(state["n_classes"]), **architecture_of(state))
        net.load_state_dict(state["state_dict"])
    except (CleanpipeError, KeyError, TypeError, ValueError, RuntimeError) as e:
        what = e if isinstance(e, CleanpipeError) else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise CleanpipeError(f"{path}: a damaged cleanpipe model ({what}); re-run `cleanpipe train`") from None
    return net.eval(), state


def model_probabilities(net, state: dict, X: np.ndarray, device, progress=None, batch: int = PREDICT_BATCH) -> np.ndarray:
    """Softmax probabilities float32 (N, K) of a loaded model (:func:`load_model`) on ``X``.

    ``X`` is what the model was trained on in kind: uint8 (N, C, H, W) or float32 (N, D). It is
    normalised with the training rows' statistics stored in the model file.
    """
    net = net.to(device)
    cfg = TrainConfig(channels_last=False)
    out = []
    if progress is not None:
        progress.start("predict", len(X), level=0)
    stats = SimpleNamespace(mean=state["mean"], std=state["std"])  # the training rows' normalisation
    for s in range(0, len(X), batch):
        data = DeviceData(X[s : s + batch], device, stats=stats)
        out.append(predict_proba(net, data, np.arange(len(data)), cfg))
        if progress is not None:
            progress.advance(0, completed=min(len(X), s + batch))
    K = int(state["n_classes"])
    return np.concatenate(out) if out else np.zeros((0, K), dtype=np.float32)
