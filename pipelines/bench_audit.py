"""`cleanpipe audit` side by side with cleanlab's Datalab: injected copies, odd images and test leaks.

    python pipelines/bench_audit.py                          # MNIST-10k (and colour digits with --datasets)
    python pipelines/bench_audit.py --parts scale            # 10,000 and 1,000,000 synthetic rows: time, peak memory
    python pipelines/bench_audit.py --datasets mnist colour --out runs/bench_audit

Needs ``pip install 'cleanpipe[audit,bench]'`` (faiss-cpu; Datalab's ``datasets``).

**Injection** (``inject``), into MNIST-10k's 8,000 training and 2,000 test images (the colour digits likewise):
exact copies of training images (half of them under another label: the conflicting-label copies), near copies
(moved by one pixel in a random direction, plus Gaussian pixel noise of sd 8 grey levels), noise images (uniform,
salt-and-pepper, smoothed and striped noise at random densities), out-of-distribution images (crops of
scikit-learn's two embedded photographs, grey and shrunk), and test images replaced by copies of training images
(half exact, half near). The result is an ``.npz`` that goes through ``cleanpipe crossval --dataset npz`` and then
``cleanpipe audit`` at their defaults, as a user would run them.

**Scoring.** A row is a positive of a duplicate kind when it is an injected copy or the original it copies; of
``outlier`` when it is a noise or out-of-distribution image; of ``test_leak`` when it is a test row replaced by a
copy. Precision, recall and F1 per kind; every conflicting-label pair must have ``labels_differ`` true.

**Datalab on the same features** (the audit's ``features.npy``): ``find_issues(features=..., issue_types=
{"near_duplicate": {}, "outlier": {}})`` on the training rows; its exact duplicates are its near-duplicate rows at
distance 0, its near duplicates the others; its leaks follow cleanlab's train-vs-test tutorial (training and test
rows stacked, a near-duplicate set holding rows of both splits).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cleanpipe.metrics import detection_metrics

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "data" / "mnist-test"
KINDS = ("exact_duplicate", "near_duplicate", "outlier", "test_leak")
N_EXACT, N_CONFLICT, N_NEAR, N_NOISE, N_OOD, N_LEAK = 60, 60, 120, 60, 60, 100


def near_copy(img: np.ndarray, rng) -> np.ndarray:
    """uint8 (C, H, W) moved by one pixel (up, down, left or right; the edge repeated) plus N(0, 8) pixel noise."""
    dy, dx = [(1, 0), (-1, 0), (0, 1), (0, -1)][rng.integers(4)]
    moved = np.roll(img, (dy, dx), axis=(1, 2))
    noisy = moved.astype(np.float32) + rng.normal(0, 8, size=img.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def noise_image(shape, rng) -> np.ndarray:
    c, h, w = shape
    kind = rng.integers(4)
    if kind == 0:  # uniform noise
        img = rng.integers(0, 256, size=shape)
    elif kind == 1:  # salt and pepper at a random density
        img = (rng.random(shape) < rng.uniform(0.05, 0.5)) * 255
    elif kind == 2:  # smoothed blobs
        small = rng.random((c, h // 4, w // 4))
        img = np.kron(small, np.ones((1, 4, 4)))[:, :h, :w] * 255
    else:  # stripes at a random angle and frequency
        yy, xx = np.mgrid[0:h, 0:w]
        a, f = rng.uniform(0, np.pi), rng.uniform(0.3, 1.5)
        img = np.broadcast_to((np.sin(f * (np.cos(a) * xx + np.sin(a) * yy)) > 0) * 255, shape)
    return np.asarray(img, dtype=np.uint8).reshape(shape)


def ood_images(n: int, shape, rng) -> np.ndarray:
    """Crops of scikit-learn's embedded photographs (china, flower), shrunk to ``shape``: no download."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    c, h, w = shape
    out = np.empty((n, *shape), dtype=np.uint8)
    for i in range(n):
        photo = photos[i % len(photos)]
        side = int(rng.integers(48, 200))
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((w, h), Image.BILINEAR)
        arr = np.asarray(crop.convert("L"))[None] if c == 1 else np.moveaxis(np.asarray(crop), -1, 0)
        out[i] = arr
    return out


def inject(X, y, X_test, y_test, n_classes: int, seed: int = 0):
    """The training and test arrays with planted issues, and the truth: a dict of per-row arrays."""
    rng = np.random.default_rng(seed)
    n = len(X)
    src = rng.choice(n, N_EXACT + N_CONFLICT + N_NEAR, replace=False)
    ex, cf, nr = np.split(src, [N_EXACT, N_EXACT + N_CONFLICT])
    shape = X.shape[1:]
    extra_X = [X[ex], X[cf], np.stack([near_copy(X[i], rng) for i in nr]),
               np.stack([noise_image(shape, rng) for _ in range(N_NOISE)]), ood_images(N_OOD, shape, rng)]
    other = (y[cf] + rng.integers(1, n_classes, len(cf))) % n_classes
    extra_y = [y[ex], other, y[nr], rng.integers(0, n_classes, N_NOISE), rng.integers(0, n_classes, N_OOD)]
    kinds = (["exact_duplicate"] * (N_EXACT + N_CONFLICT) + ["near_duplicate"] * N_NEAR + ["outlier"] * (N_NOISE + N_OOD))
    X2, y2 = np.concatenate([X, *extra_X]), np.concatenate([y, *extra_y]).astype(np.int64)
    kind = np.array([""] * n + kinds, dtype=object)
    source = np.concatenate([np.full(n, -1), ex, cf, nr, np.full(N_NOISE + N_OOD, -1)])
    kind[ex], kind[cf], kind[nr] = "exact_duplicate", "exact_duplicate", "near_duplicate"  # the originals too
    conflict = np.zeros(len(X2), bool)
    conflict[n + N_EXACT : n + N_EXACT + N_CONFLICT] = True
    conflict[cf] = True
    # test rows replaced by copies of training rows (not of the ones copied above)
    free = np.setdiff1d(np.arange(n), src)
    leak_src = rng.choice(free, N_LEAK, replace=False)
    leak_rows = rng.choice(len(X_test), N_LEAK, replace=False)
    Xt, yt = X_test.copy(), y_test.copy()
    for j, (r, s) in enumerate(zip(leak_rows, leak_src)):
        Xt[r] = X[s] if j < N_LEAK // 2 else near_copy(X[s], rng)
        yt[r] = y[s]
    leak = np.zeros(len(Xt), bool)
    leak[leak_rows] = True
    return X2, y2, Xt, yt, {"kind": kind, "source": source, "conflict": conflict, "leak": leak, "noise_rows":
                            np.arange(n + N_EXACT + N_CONFLICT + N_NEAR, n + N_EXACT + N_CONFLICT + N_NEAR + N_NOISE)}


def scores(flagged: np.ndarray, positive: np.ndarray) -> dict:
    return {"flagged": int(flagged.sum()), **detection_metrics(flagged, positive)}


def cleanpipe_flags(table, n_train: int, n_test: int) -> dict:
    out = {}
    for kind in KINDS:
        rows = table[table["issue"] == kind]["index"].to_numpy()
        mask = np.zeros(n_test if kind == "test_leak" else n_train, bool)
        mask[rows] = True
        out[kind] = mask
    return out


def datalab_flags(f_train, y_train, f_test) -> tuple[dict, float]:
    """Datalab's near_duplicate and outlier checks on the same features; leaks by the stacked-splits recipe."""
    from cleanlab import Datalab

    t = time.perf_counter()
    lab = Datalab(data={"label": y_train}, label_name="label", verbosity=0)
    lab.find_issues(features=f_train, issue_types={"near_duplicate": {}, "outlier": {}})
    nd, out = lab.get_issues("near_duplicate"), lab.get_issues("outlier")
    is_nd = nd["is_near_duplicate_issue"].to_numpy()
    zero = nd["distance_to_nearest_neighbor"].to_numpy() <= 1e-6
    flags = {"exact_duplicate": is_nd & zero, "near_duplicate": is_nd & ~zero, "outlier": out["is_outlier_issue"].to_numpy()}
    n = len(f_train)
    stacked = Datalab(data={"label": np.concatenate([y_train, np.zeros(len(f_test), y_train.dtype)])}, label_name="label", verbosity=0)
    stacked.find_issues(features=np.concatenate([f_train, f_test]), issue_types={"near_duplicate": {}})
    sets = stacked.get_issues("near_duplicate")["near_duplicate_sets"].to_numpy()
    leak = np.array([any(j < n for j in sets[n + i]) for i in range(len(f_test))], bool)
    flags["test_leak"] = leak
    return flags, time.perf_counter() - t


def prepare(name: str, out: Path, seed: int):
    from cleanpipe.data import DataSpec, load_dataset

    ds = load_dataset(DataSpec("mnist", path=str(MNIST)))
    X, y, Xt, yt = ds.X_train, ds.y_train, ds.X_test, ds.y_test
    if name == "colour":
        from cleanpipe.data.synthetic import colour_digits

        X, y, _ = colour_digits(X, y, seed=seed)
        Xt, yt, _ = colour_digits(Xt, yt, seed=seed + 1)
    X2, y2, Xt2, yt2, truth = inject(X, y, Xt, yt, 10, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "data.npz", X=X2, y=y2, X_test=Xt2, y_test=yt2)
    np.savez(out / "truth.npz", **{k: (v.astype(str) if v.dtype == object else v) for k, v in truth.items()})
    return truth, y2


def run_cli(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cleanpipe", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def quality_part(datasets: list[str], out: Path, seed: int, crossval: bool, features_from: Path | None = None) -> str:
    import pandas as pd

    lines = ["| data | issue | injected | cleanpipe flagged | P | R | F1 | Datalab flagged | P | R | F1 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes = []
    for name in datasets:
        d = out / name
        truth, y2 = prepare(name, d, seed)
        run = d / "run"
        subprocess.run(["rm", "-rf", str(run)], check=True)
        cv = run_cli("crossval", str(run), "--dataset", "npz", "--data", str(d / "data.npz")) if crossval else None
        if not crossval:  # bind the data without crossval's folds (the audit needs the data only)
            run_cli("crossval", str(run), "--dataset", "npz", "--data", str(d / "data.npz"), "--fold", "0", "--epochs", "1")
        if features_from is not None:  # an earlier run's encoder features (the same seeded encoder: its training skipped)
            saved = out / "saved_features.npy"
            saved.write_bytes((features_from / name / "run" / "audit" / "features.npy").read_bytes())
            au = run_cli("audit", str(run), "--features", str(saved))
        else:
            au = run_cli("audit", str(run))
        table = pd.read_csv(run / "audit" / "issues.csv", dtype={"id": str, "other_id": str}, keep_default_na=False)
        feats = np.load(run / "audit" / "features.npy")
        n, m = len(truth["kind"]), len(truth["leak"])
        ours = cleanpipe_flags(table, n, m)
        theirs, dl_seconds = datalab_flags(feats[:n], y2, feats[n:])
        positive = {k: truth["kind"] == k for k in KINDS[:3]}
        positive["test_leak"] = truth["leak"]
        for kind in KINDS:
            a, b = scores(ours[kind], positive[kind]), scores(theirs[kind], positive[kind])
            lines.append(f"| {name} | {kind} | {int(positive[kind].sum())} | {a['flagged']} | {a['precision']:.3f} | "
                         f"{a['recall']:.3f} | {a['f1']:.3f} | {b['flagged']} | {b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} |")
        dup = table[table["issue"] == "exact_duplicate"]
        conflict_rows = np.flatnonzero(truth["conflict"])
        marked = set(dup.loc[dup["labels_differ"].astype(str) == "True", "index"])
        missing = [r for r in conflict_rows if r not in marked]
        noise_rows = truth["noise_rows"]
        notes.append(f"- {name}: conflicting-label rows (copies and originals) with labels_differ true: "
                     f"{len(conflict_rows) - len(missing)} of {len(conflict_rows)}; noise images flagged as outliers "
                     f"{int(ours['outlier'][noise_rows].sum())} of {len(noise_rows)}, photographs "
                     f"{int(ours['outlier'][noise_rows[-1] + 1:].sum())} of {N_OOD}; crossval {cv or 0:.0f} s, audit "
                     f"{au:.0f} s (the encoder's training included), Datalab on the audit's features {dl_seconds:.1f} s")
    return "\n".join(lines) + "\n\n" + "\n".join(notes)


SCALE_CODE = r"""
import sys, time, json, numpy as np
tool, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
centres = rng.normal(size=(100, d)).astype(np.float32)
lab = rng.integers(0, 100, n)
f = centres[lab] + 0.35 * rng.normal(size=(n, d)).astype(np.float32)
f[: n // 1000] = f[n // 1000 : 2 * (n // 1000)]            # exact copies
f[-(n // 1000):] = rng.normal(size=(n // 1000, d)) * 3     # off-cluster rows
t = time.perf_counter()
if tool == "cleanpipe":
    from cleanpipe.audit import find_audit_issues, row_digests
    found = find_audit_issues(f, lab, train_digests=row_digests(f))
    counts = found.counts()
else:
    from cleanlab import Datalab
    lab_ = Datalab(data={"label": lab}, label_name="label", verbosity=0)
    lab_.find_issues(features=f, issue_types={"near_duplicate": {}, "outlier": {}})
    counts = {k: int(lab_.get_issues(k)[f"is_{k}_issue"].sum()) for k in ("near_duplicate", "outlier")}
seconds = time.perf_counter() - t
hwm = next(l for l in open("/proc/self/status").read().splitlines() if l.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "counts": counts, "array_mb": f.nbytes / 2**20, "rss_mb": float(hwm.split()[1]) / 1024}))
"""


def peak_run(args: list[str], timeout: float) -> dict:
    """Run SCALE_CODE in a fresh process: its result, and its peak RSS (VmHWM, polled; kept when it runs out of time)."""
    proc = subprocess.Popen([sys.executable, "-c", SCALE_CODE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status, peak, t = Path(f"/proc/{proc.pid}/status"), 0.0, time.perf_counter()
    while proc.poll() is None:
        try:
            hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM"))
            peak = max(peak, float(hwm.split()[1]) / 1024)
        except (OSError, StopIteration):
            pass
        if time.perf_counter() - t > timeout:
            proc.kill()
            proc.wait()
            return {"error": f"not done in {timeout / 60:.0f} min (peak so far {peak:,.0f} MB)", "rss_mb": peak}
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        return {"error": err.strip().splitlines()[-1][:200] if err.strip() else f"exit {proc.returncode}", "rss_mb": peak}
    return json.loads(out.strip().splitlines()[-1])  # its own VmHWM: exact, also for runs shorter than a poll


RECALL_CODE = r"""
import sys, json, time, numpy as np
from cleanpipe.audit.neighbours import build_index, normalised
n, d, q = int(sys.argv[1]), int(sys.argv[2]), 2000
rng = np.random.default_rng(0)
centres = rng.normal(size=(100, d)).astype(np.float32)
x = normalised(centres[rng.integers(0, 100, n)] + 0.35 * rng.normal(size=(n, d)).astype(np.float32))
queries = x[rng.choice(n, q, replace=False)]
t = time.perf_counter(); approx = build_index(x, exact=False).search(queries, 11)[1]; ta = time.perf_counter() - t
t = time.perf_counter(); exact = build_index(x, exact=True).search(queries, 11)[1]; te = time.perf_counter() - t
recall = np.mean([len(set(a) & set(b)) / 11 for a, b in zip(approx, exact)])
print(json.dumps({"recall_at_10": float(recall), "approx_s": ta, "exact_s": te}))
"""


def ivf_recall(n: int, dim: int) -> str:
    """Recall@10 of the approximate index (used above neighbours.EXACT_LIMIT rows) against exact search."""
    r = subprocess.run([sys.executable, "-c", RECALL_CODE, str(n), str(dim)], capture_output=True, text=True, check=True)
    res = json.loads(r.stdout.strip().splitlines()[-1])
    return (f"Approximate index at {n:,} x {dim} (the audit's choice above 200,000 rows): recall@10 "
            f"{res['recall_at_10']:.3f} against exact search on 2,000 sample queries (index built and queried in "
            f"{res['approx_s']:.1f} s; exact {res['exact_s']:.1f} s for the same queries).")


def scale_part(sizes: list[int], dim: int, timeout: float, tools=("cleanpipe", "datalab")) -> str:
    lines = [f"| rows x {dim} | array | cleanpipe: time, peak | Datalab: time, peak | time ratio | peak ratio | counts (cleanpipe / Datalab) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for n in sizes:
        ours = peak_run(["cleanpipe", str(n), str(dim)], timeout)
        theirs = peak_run(["datalab", str(n), str(dim)], timeout) if "datalab" in tools else {"error": "not run"}
        def cell(r):
            return f"{r['seconds']:.1f} s, {r['rss_mb']:,.0f} MB" if "seconds" in r else r["error"]
        ratio = (f"{ours['seconds'] / theirs['seconds']:.2f}x | {ours['rss_mb'] / theirs['rss_mb']:.2f}x"
                 if "seconds" in ours and "seconds" in theirs else "- | -")
        counts = f"{ours.get('counts')} / {theirs.get('counts')}"
        lines.append(f"| {n:,} | {ours.get('array_mb', n * dim * 4 / 2**20):,.0f} MB | {cell(ours)} | {cell(theirs)} | {ratio} | {counts} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["mnist"], choices=["mnist", "colour"])
    ap.add_argument("--parts", nargs="+", default=["quality"], choices=["quality", "scale", "recall"])
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_audit")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-crossval", dest="crossval", action="store_false", help="bind the data with one 1-epoch fold instead")
    ap.add_argument("--features-from", type=Path, default=None,
                    help="reuse the encoder features of an earlier --out (same data and seed): skips the encoder's training")
    ap.add_argument("--sizes", nargs="+", type=int, default=[10_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per tool and size")
    ap.add_argument("--tools", nargs="+", default=["cleanpipe", "datalab"], choices=["cleanpipe", "datalab"])
    args = ap.parse_args()
    sections = []
    if "quality" in args.parts:
        sections.append(quality_part(args.datasets, args.out, args.seed, args.crossval, args.features_from))
        print(sections[-1], flush=True)
    if "scale" in args.parts:
        sections.append(scale_part(args.sizes, args.dim, args.timeout, args.tools))
        if max(args.sizes) > 200_000:
            sections.append(ivf_recall(max(args.sizes), args.dim))
            print(sections[-1], flush=True)
    if "recall" in args.parts and "scale" not in args.parts:
        sections.append(ivf_recall(max(args.sizes), args.dim))
        print(sections[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text("\n\n".join(sections) + "\n")
    print(f"wrote {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
