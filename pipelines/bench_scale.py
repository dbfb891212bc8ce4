"""Scale: prune at a million rows against cleanlab alone, folds on Ray against local, streamed against in-device data.

    python pipelines/bench_scale.py [--parts prune ray stream] [--work DIR] [--rows 1000000:100 300000:1000]

(a) ``prune``: for each N x K, two inputs of synthetic out-of-fold probabilities (float32) saved as
    ``.npy``: ``10%`` (10% of the labels flipped, the model's logit of the true class raised by 4 on 80%
    of the rows, a random class's on the rest) and ``20% + truth`` (20% flipped, the true class's logit
    raised by 4 on every row, about 18% flagged, and ``--true-labels`` given, so that prune also computes
    its precision, recall and ranking metrics). Then, each in a fresh process and side by side, cleanlab
    alone (``find_label_issues`` + ``get_label_quality_scores`` on the loaded arrays, its defaults) and
    ``cleanpipe prune RUN --pred-probs P --labels L [--true-labels T]`` (reading the files, checking
    them, the same mask, the estimates, and writing label_issues.csv). Wall time and peak memory (the
    process's maximum resident set) of each, and whether the masks are equal.
(b) ``ray``: ``cleanpipe crossval`` of MNIST-10k (``../shared/data/mnist-test``) with ``--executor ray``
    (2 workers x 1 thread) against ``--executor local`` (1 process x 2 threads), wall time of each.
(c) ``stream``: the engine's streaming path (``--device-memory 1kB``) against the in-device path on the
    same data (MNIST-10k, one fold's training), time per epoch.

Prints a Markdown table per part (and writes them to ``DIR/bench_scale.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist-test"

CLEANLAB_ALONE = r"""
import json, sys, time, resource
import numpy as np
t0 = time.perf_counter()
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
pred_probs = np.load(sys.argv[1]); labels = np.load(sys.argv[2])
t1 = time.perf_counter()
mask = find_label_issues(labels, pred_probs)
quality = get_label_quality_scores(labels, pred_probs)
t2 = time.perf_counter()
np.save(sys.argv[3], mask)
print(json.dumps({"calls_s": t2 - t1, "load_s": t1 - t0}))
"""


# The prune part's inputs: (share of labels flipped, share of rows where the true class's logit is raised, truth given)
INPUTS = {"10%": (0.10, 0.8, False), "20% + truth": (0.20, 1.0, True)}


def make_probs(n: int, k: int, path: Path, seed: int = 0, noise: float = 0.10, right_share: float = 0.8) -> None:
    """Seeded synthetic pred_probs (float32 N x K), noisy and true labels, written in slices to bound memory."""
    import numpy as np

    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    labels = truth.copy()
    flip = rng.random(n) < noise
    labels[flip] = (truth[flip] + rng.integers(1, k, flip.sum())) % k
    probs = np.lib.format.open_memmap(path / "pred_probs.npy", mode="w+", dtype=np.float32, shape=(n, k))
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        logits = rng.normal(0, 1, (e - s, k)).astype(np.float32)
        right = rng.random(e - s) < right_share if right_share < 1 else np.ones(e - s, bool)
        logits[np.arange(e - s), np.where(right, truth[s:e], rng.integers(0, k, e - s))] += 4.0
        logits -= logits.max(1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(1, keepdims=True)
        probs[s:e] = logits
    probs.flush()
    del probs
    np.save(path / "labels.npy", labels)
    np.save(path / "true_labels.npy", truth)


def peak_rss(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds and peak RSS (MB) of one command, measured by GNU time when present, else by a wrapper."""
    wrapper = [sys.executable, "-c", (
        "import resource, subprocess, sys, time, json\n"
        "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "w = time.perf_counter() - t\n"
        "sys.stderr.write(r.stderr)\n"
        "print(json.dumps({'rc': r.returncode, 'wall': w, 'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 'out': r.stdout}))"
    ), *cmd]
    out = subprocess.run(wrapper, capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return res["wall"], res["rss_mb"], res["out"]


def part_prune(work: Path, shapes: list[tuple[int, int]], repeats: int) -> str:
    import numpy as np

    rows = ["| N x K | input | array | cleanlab alone: time, peak | cleanpipe prune: time, peak | time ratio | "
            "peak / array | same mask |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n, k in shapes:
        for name, (noise, right, truth) in INPUTS.items():
            d = work / f"prune_{n}x{k}_{name.split('%')[0]}"
            d.mkdir(parents=True, exist_ok=True)
            if not (d / "true_labels.npy").is_file():
                make_probs(n, k, d, noise=noise, right_share=right)
            array_mb = n * k * 4 / 1e6
            run = d / "run"
            extra = ["--true-labels", str(d / "true_labels.npy")] if truth else []
            cl, cp = [], []
            for _ in range(repeats):  # alternating, so that both routes see the same machine; medians reported
                cl.append(peak_rss([sys.executable, "-c", CLEANLAB_ALONE, str(d / "pred_probs.npy"),
                                    str(d / "labels.npy"), str(d / "cleanlab_mask.npy")]))
                cp.append(peak_rss([sys.executable, "-m", "cleanpipe", "prune", str(run), "--pred-probs",
                                    str(d / "pred_probs.npy"), "--labels", str(d / "labels.npy"), *extra, "--top", "0"]))
            cl_wall, cp_wall = (float(np.median([r[0] for r in rs])) for rs in (cl, cp))
            cl_rss, cp_rss = (max(r[1] for r in rs) for rs in (cl, cp))
            same = bool(np.array_equal(np.load(d / "cleanlab_mask.npy"), np.load(run / "prune" / "issue_mask.npy")))
            flagged = json.loads((run / "prune" / "manifest.json").read_text())["metrics"]["n_issues"] / n
            rows.append(f"| {n:,} x {k:,} | {name} ({flagged:.0%} flagged) | {array_mb:,.0f} MB | {cl_wall:.1f} s, "
                        f"{cl_rss:,.0f} MB | {cp_wall:.1f} s, {cp_rss:,.0f} MB | {cp_wall / cl_wall:.2f}x | "
                        f"{cp_rss / array_mb:.2f}x | {'yes' if same else '**no**'} |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def part_ray(work: Path, epochs: int) -> str:
    if not MNIST.is_dir():
        return f"(skipped: no MNIST at {MNIST})"
    rows = ["| route | wall time | OOF accuracy |", "| --- | --- | --- |"]
    walls = {}
    for name, extra in (("local, 1 process x 2 threads", ["--threads", "2"]),
                        ("ray, 2 workers x 1 thread", ["--executor", "ray", "--cpus-per-fold", "1"])):
        run = work / f"ray_{name.split(',')[0]}"
        subprocess.run(["rm", "-rf", str(run)])
        wall, _, _ = peak_rss([sys.executable, "-m", "cleanpipe", "crossval", str(run), "--dataset", "mnist", "--data",
                               str(MNIST), "--epochs", str(epochs), *extra])
        acc = json.loads((run / "crossval" / "manifest.json").read_text())["metrics"]["oof_accuracy"]
        walls[name] = wall
        rows.append(f"| {name} | {wall:.1f} s | {acc:.4f} |")
        print(rows[-1], flush=True)
    a, b = walls.values()
    rows.append(f"\nray / local wall time: {b / a:.2f}x")
    return "\n".join(rows)


def part_stream(work: Path, epochs: int) -> str:
    if not MNIST.is_dir():
        return f"(skipped: no MNIST at {MNIST})"
    code = r"""
import json, sys, time
import numpy as np, torch
from cleanpipe.detect.crossval import default_settings, fold_plan, train_fold
from cleanpipe.data import DataSpec, load_dataset
ds = load_dataset(DataSpec("mnist", path=sys.argv[1], test_fraction=0))
folds = fold_plan(ds.y_train, 4, 0)
s = default_settings(ds.input_shape, "mnist", epochs=int(sys.argv[2]), seed=0, n_folds=4)
train_fold(ds.X_train, ds.y_train, folds, 0, default_settings(ds.input_shape, "mnist", epochs=1, seed=0, n_folds=4), 10,
           device=sys.argv[3])  # warm-up: the process's first fold pays for lazy set-up
out, probs, times = {}, {}, {"in-device": [], "streamed": []}
for name, budget in (("in-device", None), ("streamed", 1000)) * 2:  # alternating; the faster of two each
    t = time.perf_counter()
    r = train_fold(ds.X_train, ds.y_train, folds, 0, s, 10, device=sys.argv[3], device_memory=budget)
    times[name].append((time.perf_counter() - t) / s.epochs)
    out[name] = {"seconds_per_epoch": min(times[name]), "acc": float(np.mean(r.probs.argmax(1) == ds.y_train[r.rows]))}
    probs[name] = r.probs
same = bool(np.array_equal(probs["in-device"], probs["streamed"]))
print(json.dumps({"same": same, **out}))
"""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = json.loads(subprocess.run([sys.executable, "-c", code, str(MNIST), str(epochs), device], capture_output=True,
                                    text=True, check=True).stdout.strip().splitlines()[-1])
    rows = [f"| path ({device}) | time per epoch | fold accuracy |", "| --- | --- | --- |"]
    for name in ("in-device", "streamed"):
        rows.append(f"| {name} | {res[name]['seconds_per_epoch']:.2f} s | {res[name]['acc']:.4f} |")
    rows.append(f"\nstreamed / in-device: {res['streamed']['seconds_per_epoch'] / res['in-device']['seconds_per_epoch']:.2f}x; "
                f"same probabilities: {'yes' if res['same'] else 'no'}")
    print("\n".join(rows), flush=True)
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["prune", "ray", "stream"], choices=["prune", "ray", "stream"])
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "bench_scale")
    ap.add_argument("--rows", nargs="+", default=["1000000:100", "300000:1000"], help="N:K shapes for the prune part")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the ray and stream parts")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each prune route (alternating; medians)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sections = []
    if "prune" in args.parts:
        shapes = [tuple(int(v) for v in s.split(":")) for s in args.rows]
        sections.append(f"### prune at scale (median of {args.repeats} alternating runs; peak: the largest)\n\n"
                        + part_prune(args.work, shapes, args.repeats))
    if "ray" in args.parts:
        sections.append("### crossval: Ray against local\n\n" + part_ray(args.work, args.epochs))
    if "stream" in args.parts:
        sections.append("### the engine: streamed against in-device\n\n" + part_stream(args.work, args.epochs))
    text = "\n\n".join(sections) + "\n"
    (args.work / "bench_scale.md").write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
