"""Detection at low noise and on semantic noise: which out-of-fold probabilities rank real-looking errors first.

    python pipelines/bench_detection.py                       # MNIST-10k and digits, seeds 0 and 1
    python pipelines/bench_detection.py --datasets digits     # minutes
    python pipelines/bench_detection.py --out runs/bench_detection   # resumes: finished cells are kept

For each dataset, seed and noise (symmetric 1% and 3%, semantic 3% and 10%, symmetric 40%) it injects
the noise once, then computes ``pred_probs`` with crossval's defaults and with each option
(``--tta``: shifted views of the held-out images; ``--repeats 2``: two fold splits averaged; both) and
scores confident learning's default filter (prune_by_noise_rate) on each, and INCV once. Columns:
flagged, precision, recall, F1 at the filter's threshold; average precision of label quality for the
true errors and recall within the top k (k = the number of true errors), for the self_confidence and
normalized_margin scores (``--rank-by``); crossval's training seconds
(the sum over its folds, on this machine; ``--repeats 2`` reuses the default's first split, whose time
it counts). A second table compares all three ``--rank-by`` scores. The "plain" row is round 1's default
(no tta, rank by self_confidence); the defaults chosen from this table are in ``cleanpipe.recipes``.

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
NOISES = ["symmetric:0.01", "symmetric:0.03", "semantic:0.03", "semantic:0.1", "symmetric:0.4"]
VARIANTS = {  # name -> crossval options
    "defaults": dict(repeats=1, tta=False),
    "tta": dict(repeats=1, tta=True),
    "repeats 2": dict(repeats=2, tta=False),
    "repeats 2 + tta": dict(repeats=2, tta=True),
}
REUSE = {"repeats 2": "defaults", "repeats 2 + tta": "tta"}  # repeat 0 is the one-split run: its shards are reused
RANK_BY = ("self_confidence", "normalized_margin", "confidence_weighted_entropy")


def spec_of(name: str, data: Path):
    from cleanpipe.data import DataSpec

    return DataSpec("digits") if name == "digits" else DataSpec("mnist", path=str(data.resolve()))


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


def rank_scores(run_dir: Path) -> dict:
    from cleanlab.rank import get_label_quality_scores

    from cleanpipe.metrics import error_average_precision, recall_at_k
    from cleanpipe.rundir import RunDir

    run = RunDir(run_dir)
    _, ds, _ = run.bind_dataset(None)
    labels, truth, _ = run.training_labels(ds)
    probs = np.load(run.path("crossval", "pred_probs.npy"))
    errors = labels != truth
    out = {}
    for how in RANK_BY:
        q = get_label_quality_scores(labels, probs, method=how)
        out[how] = {"average_precision": error_average_precision(q, errors), "recall_at_k": recall_at_k(q, errors)}
    return out


def one_condition(out: Path, ds_name: str, data: Path, noise: str, seed: int) -> dict:
    from cleanpipe.rundir import RunDir
    from cleanpipe.stages.crossval import run_crossval_stage
    from cleanpipe.stages.noise import run_noise_stage
    from cleanpipe.stages.prune import run_prune_stage

    kind, rate = noise.split(":")
    root = out / ds_name / f"{kind}_{rate}" / f"seed{seed}"
    root.mkdir(parents=True, exist_ok=True)
    base = root / "noise_only"

    def make_noise():
        t = time.perf_counter()
        stage = run_noise_stage(RunDir(base), spec=spec_of(ds_name, data), kind=kind, rate=float(rate), seed=seed)
        m = stage.manifest["metrics"]
        return {"actual_noise_rate": m["actual_noise_rate"], "n_changed": m["n_changed"], "n": m["n"],
                "labeler_accuracy": m.get("labeler_accuracy"), "top_confusions": m.get("top_confusions"),
                "seconds": round(time.perf_counter() - t, 2)}

    result = {"noise": cell(root, "noise", make_noise), "variants": {}}
    for variant, opts in VARIANTS.items():
        def crossval_and_prune(variant=variant, opts=opts):
            run_dir = root / variant.replace(" ", "_").replace("+", "and")
            if run_dir.exists():
                shutil.rmtree(run_dir)
            shutil.copytree(base, run_dir)
            if variant in REUSE:  # the first split's shards, made with the same settings, are reused
                src = root / REUSE[variant].replace(" ", "_") / "crossval" / "shards"
                shutil.copytree(src, run_dir / "crossval" / "shards")
            t = time.perf_counter()
            cv = run_crossval_stage(RunDir(run_dir), seed=seed, **opts)
            wall = time.perf_counter() - t
            pr = run_prune_stage(RunDir(run_dir))
            return {"crossval_fold_seconds": cv.manifest["metrics"]["fold_seconds_total"],
                    "crossval_wall_seconds": round(wall, 2), "reused": cv.reused,
                    "oof_accuracy_true": cv.manifest["metrics"]["oof_accuracy_true"],
                    **scores(pr.manifest["metrics"]), "rank_by": rank_scores(run_dir)}

        result["variants"][variant] = cell(root, variant.replace(" ", "_").replace("+", "and"), crossval_and_prune)

    def incv():
        run_dir = root / "incv"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        shutil.copytree(base, run_dir)
        t = time.perf_counter()
        pr = run_prune_stage(RunDir(run_dir), method="incv", incv={"seed": seed})
        return {**scores(pr.manifest["metrics"]), "seconds": round(time.perf_counter() - t, 2)}

    if not skip_incv:
        result["incv"] = cell(root, "incv", incv)
    return result


skip_incv = False


def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


SHOWN = {"defaults": "plain (round 1 default)", "tta": "tta", "repeats 2": "repeats 2", "repeats 2 + tta": "repeats 2 + tta"}


def _fmt(v: list[dict], key: str, how: str | None = None) -> str:
    vals = [x["rank_by"][how][key] if how else x[key] for x in v]
    return f"{mean(vals):.3f}"


def tables(results: dict, seeds: list[int]) -> str:
    lines = []
    sc, nm = "self_confidence", "normalized_margin"
    for ds_name, by_noise in results.items():
        lines.append(f"\n**{ds_name}** (mean of seeds {', '.join(map(str, seeds))}; AP: average precision of label "
                     "quality for the true errors, r@k: recall within the top k, each with --rank-by self_confidence "
                     "(sc) and normalized_margin (nm); crossval s: training seconds summed over the folds)\n")
        lines.append("| noise | actual rate | pred_probs | flagged | precision | recall | F1 | AP sc | AP nm | r@k sc | r@k nm | crossval s |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for noise, per_seed in by_noise.items():
            rate = mean([r["noise"]["actual_noise_rate"] for r in per_seed])
            label = noise.replace(":", " ")
            for variant in VARIANTS:
                v = [r["variants"][variant] for r in per_seed]
                lines.append(
                    f"| {label} | {rate:.4f} | {SHOWN[variant]} | {mean([x['n_issues'] for x in v]):.0f} | "
                    f"{_fmt(v, 'precision')} | {_fmt(v, 'recall')} | {_fmt(v, 'f1')} | "
                    f"{_fmt(v, 'average_precision', sc)} | {_fmt(v, 'average_precision', nm)} | "
                    f"{_fmt(v, 'recall_at_k', sc)} | {_fmt(v, 'recall_at_k', nm)} | "
                    f"{mean([x['crossval_fold_seconds'] for x in v]):.1f} |")
            if all("incv" in r for r in per_seed):
                v = [r["incv"] for r in per_seed]
                lines.append(
                    f"| {label} | {rate:.4f} | INCV (its own models) | {mean([x['n_issues'] for x in v]):.0f} | "
                    f"{_fmt(v, 'precision')} | {_fmt(v, 'recall')} | {_fmt(v, 'f1')} | "
                    f"{_fmt(v, 'average_precision')} (its own score) | | {_fmt(v, 'recall_at_k')} | | "
                    f"{mean([x['seconds'] for x in v]):.1f} (all of INCV) |")
        lines.append(f"\n**{ds_name}, every --rank-by** (average precision / recall@k; plain probabilities, then tta)\n")
        lines.append("| noise | pred_probs | " + " | ".join(RANK_BY) + " |")
        lines.append("|---|---|" + "---|" * len(RANK_BY))
        for noise, per_seed in by_noise.items():
            for variant in ("defaults", "tta"):
                cells = []
                for how in RANK_BY:
                    v = [r["variants"][variant] for r in per_seed]
                    cells.append(f"{_fmt(v, 'average_precision', how)} / {_fmt(v, 'recall_at_k', how)}")
                lines.append(f"| {noise.replace(':', ' ')} | {SHOWN[variant]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    global skip_incv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mnist-test")
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist"], choices=["digits", "mnist"])
    ap.add_argument("--noises", nargs="+", default=NOISES, help="KIND:RATE")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--no-incv", action="store_true", help="leave INCV out")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_detection")
    args = ap.parse_args()
    skip_incv = args.no_incv
    started = time.perf_counter()
    results: dict = {}
    for ds_name in args.datasets:
        results[ds_name] = {}
        for noise in args.noises:
            results[ds_name][noise] = []
            for seed in args.seeds:
                t = time.perf_counter()
                r = one_condition(args.out, ds_name, args.data, noise, seed)
                results[ds_name][noise].append(r)
                d = r["variants"]["defaults"]
                print(f"{ds_name} {noise} seed {seed}: defaults AP {d['average_precision']:.3f} F1 {d['f1']:.3f} "
                      f"({time.perf_counter() - t:.0f} s)", flush=True)
    print(tables(results, args.seeds))
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
