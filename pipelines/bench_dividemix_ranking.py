"""DivideMix's clean probability as a label-quality ranking, against crossval + prune's, on the same noisy labels.

    python pipelines/bench_dividemix_ranking.py [--kind semantic --rate 0.03 --seed 0] [--out runs/dm_ranking]

MNIST-10k (8,000 noised training images): ``cleanpipe noise``, then the defaults of ``crossval`` + ``prune``
(label quality: normalized margin of the out-of-fold probabilities) and ``train --method dividemix`` (the
final networks' losses, a two-component mixture per network, the two clean probabilities averaged:
``train/dividemix_clean.csv``; also its finer ranking, the two networks' normalised final losses averaged). For each ranking: average precision (AP) for the true errors, recall
within the top k (k = the number of errors), and the training seconds it took. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def cleanpipe(*args) -> None:
    proc = subprocess.run([sys.executable, "-m", "cleanpipe", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: cleanpipe {' '.join(map(str, args))}\n{proc.stderr[-2000:]}")


def ranking_scores(frame: pd.DataFrame, quality: str) -> tuple[float, float]:
    """AP and recall within the top k (k = the number of errors) of ranking by ``quality`` (low = suspect)."""
    from cleanpipe.metrics import error_average_precision, recall_at_k

    frame = frame.sort_values("index")  # ties in order of row
    q, errors = frame[quality].to_numpy(float), frame["is_true_error"].to_numpy(bool)
    return error_average_precision(q, errors), recall_at_k(q, errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--kind", default="semantic")
    ap.add_argument("--rate", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "dm_ranking")
    args = ap.parse_args()
    run = args.out / f"{args.kind}_{args.rate}_seed{args.seed}"
    seed = ["--seed", args.seed]
    if not (run / "noise" / "manifest.json").is_file():
        cleanpipe("noise", run, "--dataset", "mnist", "--data", args.data.resolve(), "--kind", args.kind,
                  "--rate", args.rate, *seed)
    if not (run / "prune" / "manifest.json").is_file():
        cleanpipe("crossval", run, *seed)
        cleanpipe("prune", run, "--top", 0)
    if not (run / "train" / "dividemix_clean.csv").is_file():
        cleanpipe("train", run, "--method", "dividemix", *seed)
    cv = json.loads((run / "crossval" / "manifest.json").read_text())
    tr = json.loads((run / "train" / "manifest.json").read_text())
    cv_s = cv["metrics"]["fold_seconds_total"]
    tr_s = float(pd.read_csv(run / "train" / "history.csv")["seconds"].sum())
    dm = pd.read_csv(run / "train" / "dividemix_clean.csv")
    rows = [("crossval + prune (defaults)", pd.read_csv(run / "prune" / "label_issues.csv"), "label_quality", cv_s),
            ("DivideMix clean probability", dm, "clean_probability", tr_s),
            ("DivideMix final loss (both networks)", dm.assign(minus_loss=-dm["final_loss"]), "minus_loss", tr_s)]
    print(f"MNIST-10k, {args.kind} {args.rate:g}, seed {args.seed}: "
          f"{int(rows[0][1]['is_true_error'].sum())} wrong labels of {len(rows[0][1]):,}\n")
    print("| ranking | AP | recall in top k | training s |\n| --- | --- | --- | --- |")
    for name, frame, quality, seconds in rows:
        ap_, rk = ranking_scores(frame, quality)
        print(f"| {name} | {ap_:.3f} | {rk:.3f} | {seconds:.0f} |")
    print(f"\nDivideMix test accuracy {100 * tr['metrics']['test_accuracy']:.2f}%; "
          f"its manifest's clean_probability_ap {tr['metrics'].get('clean_probability_ap')}, "
          f"final_loss_ap {tr['metrics'].get('final_loss_ap')}")


if __name__ == "__main__":
    main()
