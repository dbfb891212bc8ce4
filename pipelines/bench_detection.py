"""Detection of realistic and rare label errors: the defaults against round 1's, with an oracle's ceiling.

    python pipelines/bench_detection.py                                  # MNIST-10k, digits, colour digits; seeds 0, 1
    python pipelines/bench_detection.py --datasets digits                # minutes
    python pipelines/bench_detection.py --out runs/bench_detection       # resumes: finished cells are kept

For each dataset, noise ([semantic](docs/benchmarks.md#synthetic-noise) 1%, 3% and 10%: a network trained on
5% of the data supplies the wrong labels it believes most; symmetric 1% and 40% for continuity) and seed, it
injects the noise once through ``cleanpipe noise`` and then makes ``pred_probs`` three ways, each scored by
``prune``:

- **round 1**: round 1's default crossval (one split, no shifted views, no mixup, round 1's epochs) and
  prune (cleanlab's ``prune_by_noise_rate``, ranked by ``self_confidence``);
- **defaults**: today's ``cleanpipe crossval`` and ``cleanpipe prune`` with no options (``cleanpipe.recipes``);
  the row also gives cleanlab's own filter on the same probabilities, to tell the flag rule's part from the
  probabilities';
- **oracle**: the defaults' crossval trained on the *true* labels, scoring the noisy ones with the
  default prune: how much of each noise is recoverable at all by a model of this kind and budget.

Columns: flagged, precision, recall, F1 at the filter's threshold; average precision (AP) of the label
quality for the true errors and recall within the top k (k = the number of true errors), by the variant's
own ranking; crossval's training seconds summed over its folds, and their ratio to round 1's in the same run.

Colour digits are MNIST-10k's digits drawn in colour on textured backgrounds, 32x32
(:func:`cleanpipe.data.synthetic.colour_digits`), ``--colour-train`` of them through ``--dataset npz``.
Everything goes through the library's stages, as the CLI would call them, into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NOISES = ["semantic:0.01", "semantic:0.03", "semantic:0.1", "symmetric:0.01", "symmetric:0.4"]
DATASETS = ("mnist", "digits", "colour")
ROUND1_EPOCHS = {"mnist": 10, "digits": 20, "colour": 30}  # round 1's crossval recipe, per data kind
VARIANTS = ("round 1", "defaults", "oracle")


def spec_of(name: str, data: Path, root: Path, colour_train: int):
    from cleanpipe.data import DataSpec

    if name == "digits":
        return DataSpec("digits")
    if name == "mnist":
        return DataSpec("mnist", path=str(data.resolve()))
    path = root / f"colour_digits_{colour_train}.npz"
    if not path.is_file():
        from cleanpipe.data import load_dataset
        from cleanpipe.data.synthetic import colour_digits

        ds = load_dataset(DataSpec("mnist", path=str(data.resolve())))
        X, y, _ = colour_digits(ds.X_train, ds.y_train, colour_train, seed=0)
        Xt, yt, _ = colour_digits(ds.X_test, ds.y_test, colour_train // 4, seed=1)
        root.mkdir(parents=True, exist_ok=True)
        np.savez(path, X=X, y=y, X_test=Xt, y_test=yt)
    return DataSpec("npz", path=str(path.resolve()))


def cell(root: Path, name: str, fn):
    """Compute ``fn()`` once: its JSON is kept under ``root`` so that a rerun resumes."""
    path = root / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    out = fn()
    path.write_text(json.dumps(out, indent=1))
    return out


def scores(m: dict) -> dict:
    keys = ("n_issues", "precision", "recall", "f1", "average_precision", "recall_at_k")
    return {k: m[k] for k in keys}


def cleanlab_filter(run_dir: Path) -> dict:
    """cleanlab's own default filter (prune_by_noise_rate) on a run's pred_probs: F1 against the truth."""
    from cleanpipe.detect.confident import find_issues
    from cleanpipe.rundir import RunDir

    run = RunDir(run_dir)
    _, ds, _ = run.bind_dataset(None)
    labels, truth, _ = run.training_labels(ds)
    mask = find_issues(labels, np.load(run.path("crossval", "pred_probs.npy")), "prune_by_noise_rate").issue_mask
    errors = labels != truth
    tp = int((mask & errors).sum())
    p, r = tp / max(1, mask.sum()), tp / max(1, errors.sum())
    return {"n_issues": int(mask.sum()), "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if tp else 0.0}


def one_condition(out: Path, ds_name: str, spec, noise: str, seed: int) -> dict:
    from cleanpipe.rundir import RunDir
    from cleanpipe.stages.crossval import run_crossval_stage
    from cleanpipe.stages.noise import run_noise_stage
    from cleanpipe.stages.prune import run_prune_stage

    kind, rate = noise.split(":")
    root = out / ds_name / f"{kind}_{rate}" / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    base = root / "noise_only"

    def make_noise():
        if base.exists():
            shutil.rmtree(base)
        t = time.perf_counter()
        stage = run_noise_stage(RunDir(base), spec=spec, kind=kind, rate=float(rate), seed=seed)
        m = stage.manifest["metrics"]
        return {"actual_noise_rate": m["actual_noise_rate"], "n_changed": m["n_changed"], "n": m["n"],
                "labeler_accuracy": m.get("labeler_accuracy"), "seconds": round(time.perf_counter() - t, 2)}

    def fresh(name: str, with_noise: bool = True) -> RunDir:
        run_dir = root / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        shutil.copytree(base, run_dir)
        if not with_noise:  # the oracle: the dataset's own (true) labels are trained on
            shutil.rmtree(run_dir / "noise")
        return RunDir(run_dir)

    def crossval(run: RunDir, **opts) -> dict:
        t = time.perf_counter()
        cv = run_crossval_stage(run, seed=seed, **opts)
        return {"crossval_fold_seconds": cv.manifest["metrics"]["fold_seconds_total"], "reused": cv.reused,
                "crossval_wall_seconds": round(time.perf_counter() - t, 2),
                "settings": {k: v for k, v in cv.manifest["parameters"].items() if k in
                             ("model", "epochs", "tta", "repeats", "mixup", "n_folds")}}

    def round1():
        run = fresh("round1")
        out_ = crossval(run, repeats=1, tta=False, mixup=0.0, epochs=ROUND1_EPOCHS[ds_name])
        pr = run_prune_stage(run, method="prune_by_noise_rate", rank_by="self_confidence")
        return {**out_, **scores(pr.manifest["metrics"])}

    def defaults():
        run = fresh("defaults")
        if (root / "round1" / "crossval" / "shards").is_dir():  # where the recipe is round 1's (colour), its
            shutil.copytree(root / "round1" / "crossval" / "shards", run.path("crossval", "shards"))  # folds are reused
        out_ = crossval(run)
        pr = run_prune_stage(run)
        return {**out_, **scores(pr.manifest["metrics"]), "cleanlab_filter": cleanlab_filter(run.root)}

    def oracle():
        run = fresh("oracle", with_noise=False)
        # The true labels are the same under every noise: an earlier condition's oracle folds of this dataset
        # and seed are reused (the shards' keys check that data, labels and settings match).
        for shards in sorted(out.glob(f"{ds_name}/*/seed{seed}/oracle/crossval/shards")):
            if shards != run.path("crossval", "shards") and not run.path("crossval", "shards").exists():
                shutil.copytree(shards, run.path("crossval", "shards"))
        out_ = crossval(run)
        labels_file = base / "noise" / "noisy_labels.npy"
        _, ds, _ = RunDir(base).bind_dataset(None)
        truth_file = root / "true_labels.npy"
        np.save(truth_file, np.asarray(ds.y_train))
        pr = run_prune_stage(RunDir(root / "oracle_prune"), pred_probs_file=run.path("crossval", "pred_probs.npy"),
                             labels_file=labels_file, true_labels_file=truth_file)
        return {**out_, **scores(pr.manifest["metrics"])}

    result = {"noise": cell(root, "noise", make_noise)}
    for name, fn in (("round 1", round1), ("defaults", defaults), ("oracle", oracle)):
        result[name] = cell(root, name.replace(" ", ""), fn)
    return result


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def tables(results: dict, seeds: list[int]) -> str:
    lines = []
    for ds_name, by_noise in results.items():
        lines.append(f"\n**{ds_name}** (mean of seeds {', '.join(map(str, seeds))}; AP: average precision of the "
                     "label quality for the true errors, r@k: recall within the top k, by each row's ranking; "
                     "crossval s: training seconds summed over the folds, x: their ratio to round 1's)\n")
        lines.append("| noise | pred_probs and filter | flagged | precision | recall | F1 | AP | r@k | "
                     "cleanlab filter F1 | crossval s | x |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for noise, per_seed in by_noise.items():
            label = noise.replace(":", " ")
            plain = mean([r["round 1"]["crossval_fold_seconds"] for r in per_seed])
            for variant in VARIANTS:
                v = [r[variant] for r in per_seed]
                secs = mean([x["crossval_fold_seconds"] for x in v])
                cl = f"{mean([x['cleanlab_filter']['f1'] for x in v]):.3f}" if "cleanlab_filter" in v[0] else ""
                lines.append(
                    f"| {label} | {variant} | {mean([x['n_issues'] for x in v]):.0f} | "
                    f"{mean([x['precision'] for x in v]):.3f} | {mean([x['recall'] for x in v]):.3f} | "
                    f"{mean([x['f1'] for x in v]):.3f} | {mean([x['average_precision'] for x in v]):.3f} | "
                    f"{mean([x['recall_at_k'] for x in v]):.3f} | {cl} | {secs:.1f} | {secs / plain:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument("--noises", nargs="+", default=NOISES, help="KIND:RATE")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--colour-train", type=int, default=2000, help="colour digits: training images (a quarter as many to test)")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_detection")
    args = ap.parse_args()
    started = time.perf_counter()
    results: dict = {}
    for ds_name in args.datasets:
        spec = spec_of(ds_name, args.data, args.out, args.colour_train)
        results[ds_name] = {}
        for noise in args.noises:
            results[ds_name][noise] = []
            for seed in args.seeds:
                t = time.perf_counter()
                r = one_condition(args.out, ds_name, spec, noise, seed)
                results[ds_name][noise].append(r)
                d, o = r["defaults"], r["oracle"]
                print(f"{ds_name} {noise} seed {seed}: defaults AP {d['average_precision']:.3f} F1 {d['f1']:.3f} "
                      f"(oracle AP {o['average_precision']:.3f}; {time.perf_counter() - t:.0f} s)", flush=True)
    print(tables(results, args.seeds))
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
