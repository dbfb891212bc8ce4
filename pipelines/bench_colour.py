"""Colour benchmark without downloads: an airbench-class network against PreAct ResNet-18 on 32x32 colour digits.

The task: MNIST-10k's digits (the shared t10k files; cleanpipe's 8,000 / 2,000 split) drawn in a colour
of their own at a random place on a textured colour background, 32x32 RGB
(:func:`cleanpipe.data.synthetic.colour_digits`; training images from the training split with ``--seed``,
test images from the test split with ``--seed + 1``). Digits must not be mirrored, so no flips: both networks
train with cleanpipe's random translation and are scored with and without the shifted test views
(``tta``). Each network trains through cleanpipe's engine with the settings shown in the table
(SGD-Nesterov, one-cycle schedule, no label smoothing); the airbench net adds its look-ahead and its
momentum (0.85). Time per epoch is the mean over the epochs after the first (which pays warm-up).

Run (2 CPU cores: about 15 minutes at the defaults; ``--device cuda`` on a GPU):

    python pipelines/bench_colour.py [--train 5000] [--epochs 8] [--nets airbench,preact_resnet18,...] [--device cpu]

The third default row is airbench with airbench's own label smoothing (0.2): what it does to the confidences
confident learning reads (mean top probability and expected calibration error on the test set).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Each network's recipe on this task (batch size, peak learning rate, weight decay); epochs come from --epochs.
NETS = {
    "airbench": dict(batch_size=128, lr=0.4, weight_decay=5e-4),  # lr 0.2 / 0.4: 0.972 / 0.977 at 4 epochs
    "preact_resnet18": dict(batch_size=128, lr=0.1, weight_decay=5e-4),
}


def colour_task(data: Path, n_train: int, seed: int):
    from cleanpipe.data import DataSpec, load_dataset
    from cleanpipe.data.synthetic import colour_digits

    ds = load_dataset(DataSpec("mnist", str(data)))
    X_train, y_train, _ = colour_digits(ds.X_train, ds.y_train, n_train, seed=seed)
    X_test, y_test, _ = colour_digits(ds.X_test, ds.y_test, seed=seed + 1)
    return X_train, y_train, X_test, y_test


def calibration(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[float, float]:
    """Mean top probability and expected calibration error (equal-width confidence bins)."""
    conf, right = probs.max(1), probs.argmax(1) == y
    edges = np.minimum((conf * bins).astype(int), bins - 1)
    ece = sum(abs(conf[edges == b].mean() - right[edges == b].mean()) * np.mean(edges == b)
              for b in range(bins) if np.any(edges == b))
    return float(conf.mean()), float(ece)


def train_and_score(name: str, X_train, y_train, X_test, y_test, epochs: int, seed: int, device: str,
                    overrides: dict) -> dict:
    import torch

    from cleanpipe.engine import (
        DeviceData,
        TrainConfig,
        device_name,
        fit,
        predict_proba,
        resolve_device,
    )
    from cleanpipe.models import MODELS, build_model

    name, _, extra = name.partition(":")  # e.g. airbench:label_smoothing=0.2
    overrides = {**overrides, **{k: json.loads(v) for k, v in (kv.split("=", 1) for kv in extra.split(",") if kv)}}
    dev = resolve_device(device)
    X = np.concatenate([X_train, X_test])
    train_rows, test_rows = np.arange(len(X_train)), np.arange(len(X_train), len(X))
    labels = np.concatenate([y_train, y_test])
    settings = {**NETS[name], **overrides}
    cfg = TrainConfig(epochs=epochs, seed=seed, **{**MODELS[name].train, **settings})
    torch.manual_seed(seed)
    net = build_model(name, X.shape[1:], 10)
    data = DeviceData(X, dev, fit_rows=train_rows)
    stamps = [time.perf_counter()]

    def on_epoch(e, m):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        print(f"  {name} epoch {e + 1}/{epochs}: loss {m['loss']:.3f} train acc {m['train_accuracy']:.3f} "
              f"({stamps[-1] - stamps[-2]:.1f}s)", flush=True)

    nets = fit(net, data, labels, train_rows, cfg, on_epoch=on_epoch)
    epoch_s = np.diff(stamps)
    label = name + "".join(f", {k} {v}" for k, v in overrides.items())
    out = {"net": label, "device": device_name(dev), "epochs": epochs, "train_images": len(train_rows),
           "parameters_M": round(sum(p.numel() for p in net.parameters()) / 1e6, 2), **settings,
           **{k: v for k, v in MODELS[name].train.items()},
           "seconds_per_epoch": round(float(np.mean(epoch_s[1:] if len(epoch_s) > 1 else epoch_s)), 2),
           "first_epoch_seconds": round(float(epoch_s[0]), 2)}
    for tta in (False, True):
        t0 = time.perf_counter()
        probs = predict_proba(nets, data, test_rows, dataclasses.replace(cfg, tta_shift=tta))
        out[f"test_accuracy{'_tta' if tta else ''}"] = round(float(np.mean(probs.argmax(1) == y_test)), 4)
        if tta:
            out["mean_confidence"], out["ece"] = (round(v, 4) for v in calibration(probs, y_test))
        out[f"predict_seconds{'_tta' if tta else ''}"] = round(time.perf_counter() - t0, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--train", type=int, default=5000, help="training images (drawn from the 8,000 training digits, "
                    "each reused with new colours beyond that)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--nets", default="airbench,preact_resnet18,airbench:label_smoothing=0.2",
                    help="comma-separated; NAME:KEY=VALUE changes one TrainConfig field of that row")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field for every net, e.g. --set lr=0.4 (repeatable)")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}

    t0 = time.perf_counter()
    X_train, y_train, X_test, y_test = colour_task(args.data.resolve(), args.train, args.seed)
    print(f"colour digits: {len(X_train)} training and {len(X_test)} test images, 3x32x32, "
          f"made in {time.perf_counter() - t0:.1f}s", flush=True)
    rows = [train_and_score(n, X_train, y_train, X_test, y_test, args.epochs, args.seed, args.device, overrides)
            for n in args.nets.split(",")]
    print(f"\n| network | parameters (M) | batch | lr | epochs | s / epoch ({rows[0]['device']}) | test accuracy | "
          "with shifted views | mean top probability | ECE |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['net']} | {r['parameters_M']} | {r['batch_size']} | {r['lr']} | {r['epochs']} | "
              f"{r['seconds_per_epoch']:.1f} | {r['test_accuracy']:.4f} | {r['test_accuracy_tta']:.4f} | "
              f"{r['mean_confidence']:.3f} | {r['ece']:.3f} |")
    if len(rows) >= 2:
        a, b = rows[:2]
        print(f"\n{a['net']} / {b['net']}: time per epoch {a['seconds_per_epoch'] / b['seconds_per_epoch']:.2f}x, "
              f"accuracy {100 * (a['test_accuracy_tta'] - b['test_accuracy_tta']):+.2f} points (with shifted views), "
              f"{100 * (a['test_accuracy'] - b['test_accuracy']):+.2f} (without)")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
