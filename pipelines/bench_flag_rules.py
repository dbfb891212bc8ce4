"""Flag rules side by side on runs' out-of-fold probabilities: what each flags, and how well where the truth is known.

    python pipelines/bench_flag_rules.py runs/mnist_own runs/bench_detection/mnist/semantic_0.03/seed0/defaults

Each RUN needs ``crossval`` (its ``pred_probs.npy``); no training happens here. Rules:

- cleanlab's filters by name (``find_label_issues(filter_by=...)``), at cleanlab's thresholds (each class's mean
  self-confidence);
- the same ``prune_by_noise_rate`` on sharpened probabilities, ``p^(1/T)`` renormalised, T = 0.5 and 0.25;
- ``prune_by_noise_rate_capped``, cleanpipe's default: thresholds capped at one half;
- the ranked list cut at cleanlab's estimate of the number of issues (``num_label_issues``,
  ``off_diagonal_custom``) from the capped joint;
- examples whose predicted class differs from their label with a probability of at least 0.7.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given")


def rules(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    from cleanlab.count import num_label_issues

    from cleanpipe.detect.confident import THRESHOLD_CAP, confident_joint, find_issues

    out = {f"cleanlab {name}": find_issues(labels, probs, name).issue_mask for name in FILTERS}
    for T in (0.5, 0.25):
        sharp = probs.astype(np.float64) ** (1 / T)
        sharp = (sharp / sharp.sum(1, keepdims=True)).astype(np.float32)
        out[f"prune_by_noise_rate, sharpened T={T}"] = find_issues(labels, sharp, "prune_by_noise_rate").issue_mask
    det = find_issues(labels, probs)
    out["prune_by_noise_rate_capped (default)"] = det.issue_mask
    n = num_label_issues(labels, probs, confident_joint=confident_joint(labels, probs, threshold_cap=THRESHOLD_CAP),
                         estimation_method="off_diagonal_custom")
    cut = np.zeros(len(labels), bool)
    cut[np.argsort(det.label_quality, kind="stable")[:n]] = True
    out["top of the ranking, cut at num_label_issues"] = cut
    out["predicted elsewhere with p >= 0.7"] = (probs.argmax(1) != labels) & (probs.max(1) >= 0.7)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()

    from cleanpipe.rundir import RunDir

    for root in args.runs:
        run = RunDir(root)
        _, ds, _ = run.bind_dataset(None)
        labels, truth, _ = run.training_labels(ds)
        probs = np.load(run.path("crossval", "pred_probs.npy"))
        errors = None if truth is None else labels != truth
        print(f"\n**{root}** ({len(labels):,} labels" + ("" if errors is None else f", {int(errors.sum())} wrong") + ")\n")
        print("| rule | flagged | precision | recall |" if errors is not None else "| rule | flagged |")
        print("|---|---|---|---|" if errors is not None else "|---|---|")
        for name, mask in rules(labels, probs).items():
            if errors is None:
                print(f"| {name} | {int(mask.sum())} |")
                continue
            tp = int((mask & errors).sum())
            print(f"| {name} | {int(mask.sum())} | {tp / max(1, mask.sum()):.3f} | {tp / errors.sum():.3f} |")


if __name__ == "__main__":
    main()
