"""The Confident Learning paper's five pruning methods on its own CIFAR-10 probabilities.

Runs ``cleanpipe prune`` (standalone form) for each method on
``../shared/data/cl-cifar10-noise40-sparsity20/`` (40% noise, sparsity 0.2, the paper's 4-fold
ResNet-50 ``psx``) and prints, as a markdown table: how many examples each flags, its agreement
with the paper's published mask (made with cleanlab ~0.1), and precision/recall/F1 of the flags
against the true labels.

    python pipelines/cl_paper_masks.py [--data ../shared/data/cl-cifar10-noise40-sparsity20]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METHODS = [  # (cleanpipe alias, paper name, published mask file)
    ("argmax", "C_confusion", "argmax"),
    ("cj-only", "C_{y~,y*}", "conf_joint_only"),
    ("cl-pbc", "CL: PBC", "cl_pbc"),
    ("cl-pbnr", "CL: PBNR", "cl_pbnr"),
    ("cl-both", "CL: C+NR", "cl_both"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "cl-cifar10-noise40-sparsity20")
    args = ap.parse_args()
    d = args.data.resolve()
    noisy, true = np.load(d / "noisy_labels.npy"), np.load(d / "true_labels.npy")
    print(f"CIFAR-10, {len(noisy):,} training images, {np.mean(noisy != true):.1%} of labels wrong "
          f"(noise 0.4, sparsity 0.2); paper's 4-fold ResNet-50 pred_probs\n")
    print("| method | paper name | flagged | agreement with published mask | precision | recall | F1 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for alias, paper, mask_file in METHODS:
            out = Path(tmp) / alias
            subprocess.run(
                [sys.executable, "-m", "cleanpipe", "prune", str(out), "--pred-probs", str(d / "pred_probs.npy"),
                 "--labels", str(d / "noisy_labels.npy"), "--true-labels", str(d / "true_labels.npy"),
                 "--method", alias, "--top", "0"],
                check=True, capture_output=True,
            )
            keep = np.load(out / "prune" / "keep_mask.npy")
            agree = np.mean(keep == np.load(d / f"published_keep_mask_{mask_file}.npy"))
            m = json.loads((out / "prune" / "manifest.json").read_text())["metrics"]
            print(f"| `{alias}` | {paper} | {m['n_issues']:,} | {agree:.2%} | {m['precision']:.3f} | "
                  f"{m['recall']:.3f} | {m['f1']:.3f} |")


if __name__ == "__main__":
    main()
