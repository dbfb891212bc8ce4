"""How crossval's folds should train so that their probabilities see realistic errors (MNIST-10k, semantic noise).

    python pipelines/bench_fold_training.py                                 # semantic 3%, seed 0: about 20 minutes here
    python pipelines/bench_fold_training.py --kind symmetric --rate 0.8    # the high-noise set: about 10 minutes
    python pipelines/bench_fold_training.py --rate 0.1 --variants plain mixup "mixup, 2 splits, no tta"

Semantic errors (``cleanpipe noise --kind semantic``) are a labeler network's confident confusions, so they are
consistent: a fold model trained on plain cross-entropy learns its training folds' ones and then agrees with
the same confusions in the held-out fold. Each variant below computes 4-fold out-of-fold probabilities on the
same noisy labels through cleanpipe's engine (:func:`cleanpipe.detect.crossval.fit_held_out`, the folds of
:func:`~cleanpipe.detect.crossval.fold_plans`), and scores them as ``prune``'s default does: average precision
(AP) and recall within the top k of ``pairwise_confidence`` for the true errors, and precision / recall of the
default filter. The variants:

- loss: plain cross-entropy, small-loss selection (the 10% largest losses of each batch left out after a
  3-epoch ramp, class-balanced as cleanpipe's Co-teaching picks), mixup (:class:`cleanpipe.engine.Mixup`) at
  alpha 1 to 4, after a plain warm-up, early-learning regularization (:class:`cleanpipe.robust.elr.ELR`,
  beta 0.7, lambda 3) alone and with mixup;
- budget: more epochs, two fold splits averaged, shifted test views (``tta``; "no tta": without);
- network: the airbench-class net and the small CNN at twice its width, against the small CNN;
- snapshots: the held-out probabilities of a fold's last 5 epochs averaged (a snapshot ensemble at no training cost);
- neighbours: the default's probabilities averaged with a 10-nearest-neighbour vote of the given labels in
  pixel space (cosine; each row's neighbours exclude itself);
- oracle: the folds trained on the true labels, scoring the noisy ones (the ceiling).

Training seconds are summed over the folds; compare them within one run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# name -> (settings overrides, loss, repeats, extra); loss: None (cross-entropy), "smallloss", "mixup A [warmup S]", "elr [mixup A]"
VARIANTS = {
    "plain, no tta (round 1)": (dict(tta=False), None, 1, None),
    "plain": ({}, None, 1, None),
    "small-loss 10%": ({}, "smallloss", 1, None),
    "mixup": ({}, "mixup 1", 1, None),
    "mixup, no tta": (dict(tta=False), "mixup 1", 1, None),
    "mixup after 50% plain, no tta": (dict(tta=False), "mixup 1 warmup 0.5", 1, None),
    "mixup, 2 splits, no tta": (dict(tta=False), "mixup 1", 2, None),
    "mixup, 20 epochs": (dict(epochs=20), "mixup 1", 1, None),
    "mixup, 20 epochs, no tta": (dict(epochs=20, tta=False), "mixup 1", 1, None),
    "mixup 1.5, 20 epochs": (dict(epochs=20), "mixup 1.5", 1, None),
    "mixup 2, 20 epochs (default)": (dict(epochs=20), "mixup 2", 1, None),
    "mixup 4, 20 epochs": (dict(epochs=20), "mixup 4", 1, None),
    "mixup 2 after 25% plain, 20 epochs": (dict(epochs=20), "mixup 2 warmup 0.25", 1, None),
    "default, last 5 epochs averaged": (dict(epochs=20), "mixup 2", 1, "snapshots 5"),
    "airbench, mixup, 1 epoch": (dict(model="airbench", epochs=1, batch_size=128, lr=0.4), "mixup 1", 1, None),
    "ELR": ({}, "elr", 1, None),
    "ELR + mixup 2": ({}, "elr mixup 2", 1, None),
    "small_cnn_wide, mixup": (dict(model="small_cnn_wide"), "mixup 1", 1, None),
    "default + pixel kNN": (dict(epochs=20), "mixup 2", 1, "knn"),
    "oracle (true labels)": (dict(epochs=20), "mixup 2", 1, "oracle"),
}
# At 80% symmetric noise (`--kind symmetric --rate 0.8`) the question is only whether the folds still find the signal.
HIGH_NOISE = ["plain, no tta (round 1)", "plain", "mixup", "mixup after 50% plain, no tta", "mixup, 2 splits, no tta",
              "mixup, 20 epochs", "mixup, 20 epochs, no tta", "mixup 2, 20 epochs (default)", "mixup 4, 20 epochs",
              "mixup 2 after 25% plain, 20 epochs", "ELR", "ELR + mixup 2"]


def methods():
    import torch
    import torch.nn.functional as F

    from cleanpipe.engine import Method, Mixup
    from cleanpipe.robust.coteaching import _smallest

    class SmallLoss(Method):
        """Cross-entropy on the batch's small-loss part: ``forget`` of each class's largest losses left out."""

        def __init__(self, forget: float = 0.1, ramp: int = 3) -> None:
            self.forget, self.ramp, self.rate = forget, ramp, 0.0

        def start_epoch(self, epoch: int, n_epochs: int) -> None:
            self.rate = self.forget * min(1.0, epoch / self.ramp)

        def loss(self, step):
            logits = step.nets[0](step.x)
            ce = F.cross_entropy(logits.float(), step.y, reduction="none")
            keep = _smallest(ce, int(round((1 - self.rate) * len(step.y))), labels=step.y, n_classes=logits.shape[1])
            m = keep.float()
            return (ce * m).sum() / m.sum().clamp_min(1), logits

    def make(loss: str | None, seed: int, n_rows: int = 0, n_classes: int = 0, labels=None):
        if loss is None:
            return None
        if loss == "smallloss":
            return SmallLoss()
        if loss.startswith("elr"):  # "elr" or "elr mixup ALPHA": early-learning regularization (beta 0.7, lambda 3)
            from cleanpipe.robust.elr import ELR

            return ELR(n_rows, n_classes, labels, 0.7, 3.0, mixup=float(loss.split()[2]) if "mixup" in loss else 0.0, seed=seed)
        words = loss.split()  # "mixup ALPHA" or "mixup ALPHA warmup SHARE"
        return Mixup(float(words[1]), seed, warmup=float(words[3]) if len(words) > 3 else 0.0)

    return make, torch


def out_of_fold(X, labels, train_labels, n_classes, overrides, loss, repeats, seed, snapshots=1):
    from cleanpipe.detect.crossval import (
        default_settings,
        fit_held_out,
        fold_plans,
        repeat_seed,
    )

    make, torch = methods()
    torch.set_num_threads(2)
    # Every variant starts from round 1's recipe (10 epochs), with shifted views, and says what it changes.
    settings = default_settings(tuple(X.shape[1:]), "mnist", repeats=1, mixup=0.0,
                                **{"tta": True, "epochs": 10, **overrides})
    plans = fold_plans(labels, settings.n_folds, seed, repeats)
    probs = np.zeros((len(labels), n_classes), np.float64)
    t = 0.0
    for r, folds in enumerate(plans):
        for f in range(settings.n_folds):
            train_rows, held = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
            fold_seed = repeat_seed(seed * 100 + f, r) % 2**31
            snaps = []  # the held-out probabilities of the last `snapshots` epochs, averaged (a snapshot ensemble)
            keep = (lambda e, p: snaps.append(p) if e >= settings.epochs - snapshots else None) if snapshots > 1 else None
            t0 = time.perf_counter()
            out = fit_held_out(X, train_labels, train_rows, held, settings, n_classes, seed=fold_seed, device="cpu",
                               method=make(loss, fold_seed, len(X), n_classes, train_labels), each_epoch=keep)
            t += time.perf_counter() - t0
            probs[held] += (np.mean(snaps, 0) if snaps else out.probs) / repeats
    return probs.astype(np.float32), t


def pixel_knn(X, labels, n_classes, k=10):
    from sklearn.neighbors import NearestNeighbors

    flat = X.reshape(len(X), -1).astype(np.float32)
    flat /= np.linalg.norm(flat, axis=1, keepdims=True).clip(1e-6)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(flat).kneighbors(flat)
    votes = np.zeros((len(X), n_classes), np.float32)
    for j in range(1, k + 1):
        np.add.at(votes, (np.arange(len(X)), labels[idx[:, j]]), 1.0 / k)
    return votes


def score(labels, truth, probs) -> dict:
    from cleanpipe.detect.confident import find_issues
    from cleanpipe.metrics import error_average_precision, recall_at_k

    errors = labels != truth
    det = find_issues(labels, probs)
    tp = int((det.issue_mask & errors).sum())
    return {"ap": error_average_precision(det.label_quality, errors), "r_at_k": recall_at_k(det.label_quality, errors),
            "flagged": int(det.issue_mask.sum()), "precision": tp / max(1, det.issue_mask.sum()),
            "recall": tp / errors.sum(), "accuracy_true": float((probs.argmax(1) == truth).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--kind", default="semantic", help="noise kind (cleanpipe noise --kind)")
    ap.add_argument("--rate", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                    help="default: all (semantic noise) or the high-noise set (symmetric 0.5 and above)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_fold_training")
    args = ap.parse_args()

    from cleanpipe.data import DataSpec
    from cleanpipe.rundir import RunDir
    from cleanpipe.stages.noise import run_noise_stage

    root = args.out / f"{args.kind}_{args.rate}_seed{args.seed}"
    if not (root / "noise" / "noisy_labels.npy").is_file():
        run_noise_stage(RunDir(root), spec=DataSpec("mnist", path=str(args.data.resolve())), kind=args.kind,
                        rate=args.rate, seed=args.seed)
    run = RunDir(root)
    _, ds, _ = run.bind_dataset(None)
    labels, truth, _ = run.training_labels(ds)
    X, n_classes = ds.X_train, len(ds.class_names)
    if args.variants is None:
        args.variants = HIGH_NOISE if args.kind == "symmetric" and args.rate >= 0.5 else list(VARIANTS)
    rows = []
    for name in args.variants:
        path = root / (name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "").replace("%", "") + ".json")
        if path.is_file():
            rows.append((name, json.loads(path.read_text())))
            continue
        overrides, loss, repeats, extra = VARIANTS[name]
        train_labels = truth if extra == "oracle" else labels
        snapshots = int(extra.split()[1]) if extra and extra.startswith("snapshots") else 1
        probs, seconds = out_of_fold(X, labels, train_labels, n_classes, overrides, loss, repeats, args.seed, snapshots)
        if extra == "knn":
            probs = 0.75 * probs + 0.25 * pixel_knn(X, labels, n_classes)
        result = {**score(labels, truth, probs), "seconds": round(seconds, 1)}
        path.write_text(json.dumps(result))
        rows.append((name, result))
        print(name, result, flush=True)
    base = next((r["seconds"] for n, r in rows if n.startswith("plain, no tta")), None)
    print(f"\nMNIST-10k, {args.kind} {args.rate:g}, seed {args.seed} ({int((labels != truth).sum())} errors in "
          f"{len(labels):,}); AP and r@k of pairwise_confidence, flagged / precision / recall of the default filter\n")
    print("| fold training | AP | r@k | flagged | precision | recall | OOF accuracy (truth) | training s | x |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        ratio = f"{r['seconds'] / base:.2f}" if base else ""
        print(f"| {name} | {r['ap']:.3f} | {r['r_at_k']:.3f} | {r['flagged']} | {r['precision']:.3f} | "
              f"{r['recall']:.3f} | {r['accuracy_true']:.4f} | {r['seconds']:.1f} | {ratio} |")


if __name__ == "__main__":
    main()
