"""prune: the CL paper's masks, P/R/F1, reports on real runs, and bad input."""

import json

import numpy as np
import pandas as pd
import pytest

PAPER = {"argmax": "argmax", "cj-only": "conf_joint_only", "cl-pbc": "cl_pbc", "cl-pbnr": "cl_pbnr", "cl-both": "cl_both"}


@pytest.mark.parametrize("method", list(PAPER))
def test_paper_methods_match_published_masks(tmp_path, cli, cl_dir, method):
    out = tmp_path / method
    code, stdout, err = cli("prune", out, "--pred-probs", cl_dir / "pred_probs.npy", "--labels", cl_dir / "noisy_labels.npy",
                            "--true-labels", cl_dir / "true_labels.npy", "--method", method)
    assert code == 0, err
    assert "renormalised" in stdout  # the paper's float16 rows do not sum exactly to 1
    keep = np.load(out / "prune" / "keep_mask.npy")
    issue = np.load(out / "prune" / "issue_mask.npy")
    assert keep.dtype == bool and np.array_equal(keep, ~issue)
    published = np.load(cl_dir / f"published_keep_mask_{PAPER[method]}.npy")
    assert np.mean(keep == published) >= 0.98
    # The reported precision/recall/F1 equal a direct computation.
    noisy, true = np.load(cl_dir / "noisy_labels.npy"), np.load(cl_dir / "true_labels.npy")
    errors = noisy != true
    tp = np.sum(issue & errors)
    p, r = tp / issue.sum(), tp / errors.sum()
    m = json.loads((out / "prune" / "manifest.json").read_text())["metrics"]
    assert m["precision"] == pytest.approx(p, abs=1e-6) and m["recall"] == pytest.approx(r, abs=1e-6)
    assert m["f1"] == pytest.approx(2 * p * r / (p + r), abs=1e-6)
    assert m["n_issues"] == issue.sum() and sum(m["issues_per_class"]) == issue.sum()
    report = pd.read_csv(out / "prune" / "label_issues.csv")
    assert len(report) == 50000 and report["is_label_issue"].sum() == issue.sum()
    assert report["is_label_issue"].iloc[: issue.sum()].all()  # flagged rows first
    assert (report["is_true_error"] == (report["given_label"] != report["true_label"])).all()


def test_digits_pipeline_report_top_rows_are_true_errors(tmp_path, cli):
    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.4)[0] == 0
    assert cli("crossval", run)[0] == 0
    code, out, err = cli("prune", run)
    assert code == 0, err
    report = pd.read_csv(run / "prune" / "label_issues.csv")
    chance = report["is_true_error"].mean()  # about 0.4
    top = report.head(100)["is_true_error"].mean()
    assert top >= 0.95 > chance + 0.4
    m = json.loads((run / "prune" / "manifest.json").read_text())["metrics"]
    assert m["f1"] >= 0.9 and m["auroc"] >= 0.95
    # the ranking's own scores, from the report's order (worst label quality first)
    from cleanpipe.metrics import error_average_precision, recall_at_k

    errors, quality = report["is_true_error"].to_numpy(), report["label_quality"].to_numpy()
    assert m["k"] == errors.sum() and m["average_precision"] >= 0.98
    assert m["average_precision"] == pytest.approx(error_average_precision(quality, errors), abs=1e-3)
    assert m["recall_at_k"] == pytest.approx(recall_at_k(quality, errors), abs=2 / m["k"])  # ties in label_quality
    assert "average precision" in out and f"recall within the top {m['k']:,}" in out
    assert list(report.columns[:3]) == ["index", "id", "given_label"]
    assert "most suspicious" in out


def test_ranking_metrics_by_hand():
    from cleanpipe.metrics import error_average_precision, recall_at_k

    quality = np.array([0.1, 0.2, 0.9, 0.3, 0.8])
    errors = np.array([True, False, False, True, False])
    # ranked: 0 (error), 1, 3 (error), 4, 2: precision at the two errors 1 and 2/3
    assert error_average_precision(quality, errors) == pytest.approx((1 + 2 / 3) / 2)
    assert recall_at_k(quality, errors) == 0.5 and recall_at_k(quality, errors, k=3) == 1.0
    assert error_average_precision(quality, np.zeros(5, bool)) is None and recall_at_k(quality, np.zeros(5, bool)) is None


def test_mnist_pipeline_f1(tmp_path, cli, mnist_dir):
    run = tmp_path / "m"
    assert cli("noise", run, "--dataset", "mnist", "--data", mnist_dir, "--kind", "symmetric", "--rate", 0.4)[0] == 0
    # Half the default epochs keep the suite short (the pipeline's F1 is what is tested, not the recipe's).
    assert cli("crossval", run, "--epochs", 10)[0] == 0
    code, out, err = cli("prune", run)
    assert code == 0, err
    assert json.loads((run / "prune" / "manifest.json").read_text())["metrics"]["f1"] >= 0.95


def test_table_run_reports_class_names(tmp_path, cli):
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    df = iris.frame.assign(species=np.asarray(iris.target_names)[iris.target]).drop(columns="target")
    df.to_csv(tmp_path / "iris.csv", index=False)
    run = tmp_path / "t"
    assert cli("noise", run, "--dataset", "table", "--data", tmp_path / "iris.csv", "--label-column", "species",
               "--kind", "symmetric", "--rate", 0.2)[0] == 0
    assert cli("crossval", run, "--model", "logreg", "--folds", 3)[0] == 0
    assert cli("prune", run)[0] == 0
    report = pd.read_csv(run / "prune" / "label_issues.csv")
    assert set(report["given_class"]) == {"setosa", "versicolor", "virginica"}


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=60).astype(np.float32)
    labels = np.arange(60) % 3

    def save(name, arr):
        np.save(tmp_path / name, arr)
        return tmp_path / name

    return {
        "P": save("p.npy", probs),
        "L": save("l.npy", labels),
        "SHORT": save("short.npy", labels[:50]),
        "RANGE": save("range.npy", np.where(labels == 2, 5, labels)),
        "NAN": save("nan.npy", np.where(np.arange(60)[:, None] == 3, np.nan, probs)),
        "NEG": save("neg.npy", probs - 0.5),
        "SUMS": save("sums.npy", probs * 3),
        "ONED": save("oned.npy", probs[:, 0]),
        "CORRUPT": tmp_path / "corrupt.npy",
    }


BAD = {
    "shape mismatch": (["--pred-probs", "P", "--labels", "SHORT"], "has 60 rows but there are 50 labels"),
    "labels out of range": (["--pred-probs", "P", "--labels", "RANGE"], "must lie in 0..2"),
    "nan": (["--pred-probs", "NAN", "--labels", "L"], "NaN"),
    "negative": (["--pred-probs", "NEG", "--labels", "L"], "negative"),
    "not probabilities": (["--pred-probs", "SUMS", "--labels", "L"], "not 1"),
    "1-D pred_probs": (["--pred-probs", "ONED", "--labels", "L"], "N x K"),
    "corrupt file": (["--pred-probs", "CORRUPT", "--labels", "L"], "corrupt"),
    "missing file": (["--pred-probs", "/nonexistent.npy", "--labels", "L"], "no such file"),
    "only one file": (["--pred-probs", "P"], "needs both"),
    "unknown method": (["--pred-probs", "P", "--labels", "L", "--method", "magic"], "unknown method"),
    "frac_noise on argmax": (["--pred-probs", "P", "--labels", "L", "--method", "argmax", "--frac-noise", "0.5"], "applies only"),
    "wrong per-class counts": (["--pred-probs", "P", "--labels", "L", "--num-to-remove-per-class", "1,2"], "needs 3"),
    "no crossval stage": ([], "no crossval stage yet"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(tmp_path, cli, files, case):
    files["CORRUPT"].write_bytes(b"\x93NUMPY\x01\x00garbage")
    args, match = BAD[case]
    run = tmp_path / "run"
    code, out, err = cli("prune", run, *[files.get(a, a) for a in args])
    assert code == 2
    assert match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err + out
    assert not run.exists()


def test_stale_crossval_is_refused(tmp_path, cli):
    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.2)[0] == 0
    assert cli("crossval", run, "--folds", 3, "--epochs", 2)[0] == 0
    assert cli("noise", run, "--kind", "symmetric", "--rate", 0.3)[0] == 0  # new labels under crossval
    code, out, err = cli("prune", run)
    assert code == 2 and "crossval stage is stale" in err
    assert not (run / "prune").exists()


@pytest.mark.slow
def test_cl_table2_script_smoke(tmp_path, tiny_cifar10):
    """The paper's pipeline script end to end on a tiny CIFAR-format fixture, one epoch."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = tiny_cifar10
    script = Path(__file__).resolve().parents[1] / "pipelines" / "cl_cifar10_table2.sh"
    env = {**os.environ, "PYTHON": sys.executable, "NOISES": "0.4", "SPARSITIES": "0.2", "EPOCHS": "1", "TRAIN_EPOCHS": "1",
           "TRAIN_MODEL": "small_cnn", "DEVICE": "cpu", "CROSSVAL_ARGS": "--model small_cnn"}
    proc = subprocess.run(["bash", str(script), str(root), str(tmp_path / "runs")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "runs" / "noise0.4_sparsity0.2"
    for m in ("argmax", "cj-only", "cl-pbc", "cl-pbnr", "cl-both"):
        assert (run / f"prune-{m}" / "keep_mask.npy").is_file()
        assert (run / f"train-{m}" / "model.pt").is_file()  # Co-teaching on each method's kept data
    assert "| noise0.4_sparsity0.2 | cl-pbnr |" in proc.stdout


def test_rows_within_two_percent_of_one_are_renormalised_with_a_note(tmp_path, cli):
    """Probabilities from another framework, rounded to float16 and off by up to 1.5%, are renormalised."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    probs = rng.dirichlet(np.ones(4) * 0.3, 400)
    probs[np.arange(400), labels] += 2.0
    probs /= probs.sum(1, keepdims=True)
    scale = 1 - 0.015 * (np.arange(400) % 2)  # every other row sums to 0.985
    off = (probs * scale[:, None]).astype(np.float16)
    np.save(tmp_path / "probs.npy", off)
    np.save(tmp_path / "labels.npy", labels)
    code, out, err = cli("prune", tmp_path / "r", "--pred-probs", tmp_path / "probs.npy", "--labels", tmp_path / "labels.npy")
    assert code == 0, err
    import re

    assert "renormalised" in out  # the summary says so; the manifest keeps the note whole
    note = json.loads((tmp_path / "r" / "prune" / "manifest.json").read_text())["parameters"]["renormalised"]
    moved = int(re.search(r"renormalised ([0-9,]+) row\(s\)", note).group(1).replace(",", ""))
    assert 200 <= moved <= 400  # the scaled rows, and float16's rounding of the others
    assert float(re.search(r"largest deviation from 1: ([0-9.]+)", note).group(1)) == pytest.approx(0.015, abs=2e-3)
    np.save(tmp_path / "far.npy", (probs * 0.97).astype(np.float32))  # 3% off: not probabilities
    code, out, err = cli("prune", tmp_path / "r2", "--pred-probs", tmp_path / "far.npy", "--labels", tmp_path / "labels.npy")
    assert code == 2 and "sums to 0.97" in err and not (tmp_path / "r2").exists()


@pytest.mark.parametrize("method, extra", [("prune_by_noise_rate", {}), ("prune_by_class", {}), ("both", {}),
                                           ("prune_by_noise_rate", {"frac_noise": 0.5}),
                                           ("both", {"num_to_remove_per_class": [30, 0, 10, 5, 20]})])
def test_the_low_memory_route_gives_cleanlabs_own_mask(method, extra):
    """find_issues prunes class by class (no copy of pred_probs) and must flag exactly what cleanlab flags."""
    import cleanlab.filter

    from cleanpipe.detect.confident import find_issues, low_memory_route

    assert low_memory_route()  # the cleanlab installed here has the per-class steps it relies on
    rng = np.random.default_rng(1)
    n, k = 5000, 5
    truth = rng.integers(0, k, n)
    labels = np.where(rng.random(n) < 0.2, rng.integers(0, k, n), truth)
    logits = rng.normal(0, 1, (n, k)) + 2.5 * np.eye(k)[truth]
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    ours = find_issues(labels, probs, method, **extra).issue_mask
    theirs = cleanlab.filter.find_label_issues(labels, probs, filter_by=method, n_jobs=1, **extra)
    assert ours.sum() > 10 and np.array_equal(ours, theirs)


def test_the_chunked_confident_joint_is_cleanlabs():
    from cleanlab.count import compute_confident_joint

    from cleanpipe.detect.confident import confident_joint

    rng = np.random.default_rng(2)
    n, k = 3000, 6
    labels = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k) * 0.3, n).astype(np.float32)
    probs[:50] = np.eye(k, dtype=np.float32)[labels[:50]]  # saturated rows: ties at the thresholds
    assert np.array_equal(confident_joint(labels, probs, chunk=257), compute_confident_joint(labels, probs, calibrate=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_chunked_label_quality_is_cleanlabs_value_for_value(dtype):
    from cleanlab.rank import get_label_quality_scores

    from cleanpipe.detect.confident import RANK_BY, label_quality

    rng = np.random.default_rng(3)
    pred_probs = rng.dirichlet(np.full(7, 0.3), 10_001).astype(dtype)
    pred_probs[:50] = np.eye(7, dtype=dtype)[rng.integers(0, 7, 50)]  # ties and certainties
    labels = rng.integers(0, 7, len(pred_probs))
    for rank_by in RANK_BY:
        if rank_by == "pairwise_confidence":  # cleanpipe's own: the next test
            continue
        ours = label_quality(labels, pred_probs, rank_by, chunk=997)  # chunks that split the rows unevenly
        theirs = get_label_quality_scores(labels, pred_probs, method=rank_by)
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), rank_by


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pairwise_confidence_is_the_given_labels_share_against_the_strongest_other_class(dtype):
    from cleanpipe.detect.confident import DEFAULT_RANK_BY, find_issues, label_quality

    assert DEFAULT_RANK_BY == "pairwise_confidence"
    rng = np.random.default_rng(4)
    pred_probs = rng.dirichlet(np.full(5, 0.3), 3001).astype(dtype)
    pred_probs[:3] = [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0.5, 0.5, 0, 0, 0]]
    labels = rng.integers(0, 5, len(pred_probs))
    labels[:3] = [1, 2, 0]  # p(given) 0 against another class's 1, twice; then a tie
    ours = label_quality(labels, pred_probs, chunk=701)
    given = pred_probs[np.arange(len(labels)), labels].astype(np.float64)
    other = np.where(np.eye(5, dtype=bool)[labels], -1, pred_probs).max(1).astype(np.float64)
    assert ours.dtype == dtype and np.allclose(ours, given / (given + other), rtol=1e-6)
    assert ours[0] == 0 and ours[1] == 0 and ours[2] == 0.5
    # A p(given) of 1e-9 keeps its place below 1e-8 (normalized_margin's "+ 1" rounds both to 0 in float32).
    tiny = np.array([[1e-9, 1 - 1e-9], [1e-8, 1 - 1e-8]], dtype=dtype)
    q = label_quality(np.array([0, 0]), tiny)
    assert 0 < q[0] < q[1]
    det = find_issues(labels, pred_probs)
    assert np.array_equal(det.label_quality, ours.astype(np.float64))


def _accurate_model(elsewhere: float, n_wrong: int = 5, seed: int = 0):
    """1,200 examples of 3 classes, each class's mean self-confidence 0.98; ``n_wrong`` of them the model
    places in the next class with probability ``elsewhere`` (their label keeps 0.2)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), 400)
    probs = np.full((1200, 3), 0.01, np.float32)
    probs[np.arange(1200), labels] = 0.98
    wrong = rng.choice(1200, n_wrong, replace=False)
    probs[wrong] = 1 - elsewhere - 0.2  # the third class keeps the rest
    probs[wrong, labels[wrong]] = 0.2
    probs[wrong, (labels[wrong] + 1) % 3] = elsewhere
    return labels, probs, wrong


def test_the_default_flags_an_accurate_models_confident_errors():
    """Cleanlab's thresholds (each class's mean self-confidence, 0.98) leave the joint empty; capped at one
    half they count the examples the model places elsewhere, and the default flags exactly those."""
    import cleanlab.filter

    from cleanpipe.detect.confident import DEFAULT_METHOD, confident_joint, find_issues

    labels, probs, wrong = _accurate_model(0.6, n_wrong=12)
    assert not cleanlab.filter.find_label_issues(labels, probs).any()  # cleanlab's own default: nothing
    assert not find_issues(labels, probs, "prune_by_noise_rate").issue_mask.any()  # its name still means that
    det = find_issues(labels, probs)
    assert DEFAULT_METHOD == "prune_by_noise_rate_capped" and find_issues(labels, probs, "cl-capped").issue_mask.sum() == 12
    assert set(np.flatnonzero(det.issue_mask)) == set(wrong)
    assert det.estimated_noise_rate == pytest.approx(12 / 1200, abs=1e-9)
    cj = confident_joint(labels, probs, threshold_cap=0.5)
    assert cj.sum() == 1200 and np.trace(cj) == 1200 - 12
    # Below one half the model places nothing confidently elsewhere: still nothing flagged.
    labels, probs, _ = _accurate_model(0.45)
    assert not find_issues(labels, probs).issue_mask.any()


def test_where_thresholds_are_below_one_half_the_capped_filter_is_cleanlabs():
    """At 40% noise every class's mean self-confidence is under one half: the cap changes nothing."""
    import cleanlab.filter

    from cleanpipe.detect.confident import find_issues

    rng = np.random.default_rng(3)
    n, k = 4000, 5
    truth = rng.integers(0, k, n)
    labels = np.where(rng.random(n) < 0.5, rng.integers(0, k, n), truth)
    logits = rng.normal(0, 1, (n, k)) + 1.5 * np.eye(k)[truth]
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    from cleanlab.count import get_confident_thresholds

    assert get_confident_thresholds(labels, probs).max() < 0.5
    theirs = cleanlab.filter.find_label_issues(labels, probs, n_jobs=1)
    assert theirs.sum() > 100 and np.array_equal(find_issues(labels, probs).issue_mask, theirs)


def test_an_accurate_model_with_confident_errors_below_the_thresholds_is_not_left_at_zero(tmp_path, cli):
    """Every class's mean self-confidence is 0.98, so five examples the model gives 0.6 for another class
    clear no threshold of cleanlab's filter and nothing is flagged; the summary must say so and point to them.
    (The default, whose thresholds are capped at one half, flags them: the test above.)"""
    labels, probs, wrong = _accurate_model(0.6)
    np.save(tmp_path / "p.npy", probs)
    np.save(tmp_path / "y.npy", labels)
    code, out, err = cli("prune", tmp_path / "r", "--pred-probs", tmp_path / "p.npy", "--labels", tmp_path / "y.npy",
                         "--method", "prune_by_noise_rate")
    assert code == 0, err
    text = " ".join(out.split())
    assert "0 of 1,200 labels flagged" in text
    assert "place 5 more example(s) in another class" in text  # rich may fold the run's long path: its parts
    assert "`cleanpipe review" in text and "--also 5`" in text
    report = pd.read_csv(tmp_path / "r" / "prune" / "label_issues.csv")
    assert set(report["index"][:5]) == set(wrong)  # the five lead the report: what --also 5 shows
