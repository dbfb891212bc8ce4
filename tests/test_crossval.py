"""crossval: accuracy on real data, resumable folds, shards and combine, bad input."""

import json
import time

import numpy as np
import pytest

from cleanpipe.detect.crossval import fold_plan


def test_fold_plan_is_stratified_and_seeded():
    y = np.repeat(np.arange(3), [30, 20, 10])
    a, b = fold_plan(y, 5, 0), fold_plan(y, 5, 0)
    assert np.array_equal(a, b) and not np.array_equal(a, fold_plan(y, 5, 1))
    for k in range(5):
        assert np.bincount(y[a == k]).tolist() == [6, 4, 2]


def test_digits_clean_five_fold(tmp_path, cli):
    t0 = time.perf_counter()
    code, out, err = cli("crossval", tmp_path / "r", "--dataset", "digits", "--folds", 5, "--device", "cpu")
    elapsed = time.perf_counter() - t0
    assert code == 0, err
    man = json.loads((tmp_path / "r" / "crossval" / "manifest.json").read_text())
    assert man["metrics"]["oof_accuracy"] >= 0.98
    assert elapsed < 60
    probs = np.load(tmp_path / "r" / "crossval" / "pred_probs.npy")
    folds = np.load(tmp_path / "r" / "crossval" / "folds.npy")
    assert probs.dtype == np.float32 and probs.shape == (1437, 10)
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and sorted(np.unique(folds)) == [0, 1, 2, 3, 4]
    assert "oof_accuracy_true" not in man["metrics"]  # no noise stage: the labels are the truth


def test_noisy_run_reports_accuracy_against_truth(tmp_path, cli):
    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.4)[0] == 0
    code, out, err = cli("crossval", run, "--epochs", 10)
    assert code == 0, err
    m = json.loads((run / "crossval" / "manifest.json").read_text())["metrics"]
    assert m["oof_accuracy"] < 0.7 < m["oof_accuracy_true"]
    assert "noise/noisy_labels.npy" in json.loads((run / "crossval" / "manifest.json").read_text())["inputs"]


def test_interrupted_run_resumes_identically(tmp_path, cli, monkeypatch):
    import cleanpipe.stages.crossval as cv

    args = ("--dataset", "digits", "--folds", 3, "--epochs", 3, "--seed", 1)
    assert cli("crossval", tmp_path / "whole", *args)[0] == 0

    calls = []
    real = cv.train_fold

    def dies_after_first_fold(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cv, "train_fold", dies_after_first_fold)
    code, _, err = cli("crossval", tmp_path / "cut", *args)
    assert code == 130 and "interrupted" in err
    assert (tmp_path / "cut" / "crossval" / "shards" / "fold_0.npz").is_file()
    assert not (tmp_path / "cut" / "crossval" / "pred_probs.npy").exists()

    trained = []
    monkeypatch.setattr(cv, "train_fold", lambda *a, **k: trained.append(a[3]) or real(*a, **k))
    code, out, err = cli("crossval", tmp_path / "cut", *args)
    assert code == 0, err
    assert trained == [1, 2], "the finished fold must not be recomputed"
    for f in ("pred_probs.npy", "folds.npy"):
        assert (tmp_path / "cut" / "crossval" / f).read_bytes() == (tmp_path / "whole" / "crossval" / f).read_bytes()


def test_fold_jobs_then_combine(tmp_path, cli):
    run = tmp_path / "r"
    args = ("--folds", 3, "--epochs", 2)
    assert cli("noise", run, "--dataset", "digits", "--kind", "pairflip", "--rate", 0.2)[0] == 0
    for k in (2, 0):
        code, out, err = cli("crossval", run, "--fold", k, *args)
        assert code == 0, err
    code, out, err = cli("crossval", run, "--combine", *args)
    assert code == 2 and "no shard for fold(s) 1" in err and len(err.strip().splitlines()) == 1
    assert cli("crossval", run, "--fold", 1, *args)[0] == 0
    code, out, err = cli("crossval", run, "--combine", *args)
    assert code == 0, err
    assert np.load(run / "crossval" / "pred_probs.npy").shape == (1437, 10)
    # Shards made with other settings are never mixed in.
    code, out, err = cli("crossval", run, "--combine", "--folds", 3, "--epochs", 3)
    assert code == 2 and "other settings" in err


@pytest.mark.parametrize(
    "args,match",
    [
        (("--model", "resnet9000"), "unknown model"),
        (("--model", "mlp"), "takes table data"),
        (("--model", "cnn9"), "needs images of at least 12x12"),  # digits are 8x8
        (("--seed", -1), "--seed must be between 0 and 2**32 - 1"),
        (("--seed", 2**32), "--seed must be between 0 and 2**32 - 1"),
        (("--split-seed", -1), "--split-seed must be between 0 and 2**32 - 1"),
        (("--folds", 1), "at least 2"),
        (("--folds", 200), "larger than the smallest class"),
        (("--fold", 4), "out of range"),
        (("--epochs", 0), "at least 1"),
        (("--device", "tpu"), "--device must be"),
        (("--mixup", -1), "--mixup must be"),
    ],
)
def test_bad_input(tmp_path, cli, args, match):
    code, out, err = cli("crossval", tmp_path / "r", "--dataset", "digits", *args)
    assert code == 2
    assert match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_mnist_clean_four_fold(tmp_path, cli, mnist_dir):
    code, out, err = cli("crossval", tmp_path / "m", "--dataset", "mnist", "--data", mnist_dir, "--folds", 4)
    assert code == 0, err
    m = json.loads((tmp_path / "m" / "crossval" / "manifest.json").read_text())["metrics"]
    assert m["oof_accuracy"] >= 0.98


def test_mnist_defaults_find_the_signal_at_high_noise(tmp_path, cli, mnist_dir):
    # At 80% symmetric noise the true class is still each digit's plurality (20% against 8.9%); crossval's
    # default recipe must train long enough to find it, mixup included (10 epochs of mixup: 0.71 against the truth;
    # the default 20: 0.78; bench_fold_training.py --kind symmetric --rate 0.8).
    run = tmp_path / "m"
    assert cli("noise", run, "--dataset", "mnist", "--data", mnist_dir, "--kind", "symmetric", "--rate", 0.8)[0] == 0
    code, out, err = cli("crossval", run)
    assert code == 0, err
    assert json.loads((run / "crossval" / "manifest.json").read_text())["metrics"]["oof_accuracy_true"] >= 0.75


@pytest.mark.parametrize("model", ["mlp", "logreg"])
def test_table_data(tmp_path, cli, model):
    from sklearn.datasets import load_wine

    wine = load_wine(as_frame=True).frame
    wine.to_csv(tmp_path / "wine.csv", index=False)
    run = tmp_path / model
    code, out, err = cli("crossval", run, "--dataset", "table", "--data", tmp_path / "wine.csv",
                         "--label-column", "target", "--model", model, "--folds", 3)
    assert code == 0, err
    m = json.loads((run / "crossval" / "manifest.json").read_text())
    assert m["metrics"]["oof_accuracy"] > 0.9
    assert np.load(run / "crossval" / "pred_probs.npy").shape == (len(wine) - round(0.2 * len(wine)), 3)


@pytest.mark.slow
def test_run_command_runs_noise_and_crossval_then_reuses_them(tmp_path, cli):
    run = tmp_path / "demo"
    code, out, err = cli("run", run, "--folds", 3)
    assert code == 0, err
    assert (run / "noise" / "noisy_labels.npy").is_file() and (run / "crossval" / "pred_probs.npy").is_file()
    before = (run / "crossval" / "pred_probs.npy").read_bytes()
    code, out, err = cli("run", run, "--folds", 3)
    assert code == 0, err
    assert "noise: up to date" in out and "reused finished folds 0, 1, 2" in out
    assert (run / "crossval" / "pred_probs.npy").read_bytes() == before


@pytest.mark.slow
def test_run_command_uses_the_runs_own_dataset_and_refuses_label_only_runs(tmp_path, cli, cl_dir):
    run = tmp_path / "tab"
    code, out, err = cli("noise", run, "--dataset", "digits", "--split-seed", 3, "--kind", "symmetric", "--rate", 0.2)
    assert code == 0, err
    code, out, err = cli("run", run, "--kind", "symmetric", "--rate", 0.2, "--folds", 3)
    assert code == 0, err
    assert "noise: up to date" in out  # the recorded dataset (split seed 3), not a default one
    bare = tmp_path / "bare"
    assert cli("noise", bare, "--labels", cl_dir / "true_labels.npy", "--kind", "random", "--rate", 0.4)[0] == 0
    before = (bare / "noise" / "noisy_labels.npy").read_bytes()
    code, out, err = cli("run", bare)
    assert code == 2 and "bare label file" in err
    assert (bare / "noise" / "noisy_labels.npy").read_bytes() == before


def test_combine_names_the_settings_that_differ(tmp_path, cli):
    run = tmp_path / "r"
    for k in range(2):
        assert cli("crossval", run, "--dataset", "digits", "--folds", 2, "--epochs", 2, "--fold", k)[0] == 0
    code, out, err = cli("crossval", run, "--folds", 2, "--combine")
    assert code == 2 and "epochs 2 (now 20)" in err


def test_manifest_wall_time_covers_the_folds(tmp_path, cli):
    run = tmp_path / "r"
    assert cli("crossval", run, "--dataset", "digits", "--folds", 2, "--epochs", 3)[0] == 0
    man = json.loads((run / "crossval" / "manifest.json").read_text())
    assert man["wall_time_s"] >= man["metrics"]["fold_seconds_total"]


def _random_table(path, n=120, d=300, k=3, seed=0):
    """Labels with no relation to the features: a model that saw a row recalls its label, one that did not guesses."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, d)).astype(np.float32), columns=[f"f{i}" for i in range(d)])
    df["y"] = np.tile(np.arange(k), n // k)[rng.permutation(n)]
    df.to_csv(path, index=False)
    return df["y"].to_numpy()


def test_repeats_average_only_models_that_never_saw_the_row(tmp_path, cli):
    from cleanpipe.models import build_model

    y = _random_table(tmp_path / "t.csv")
    run = tmp_path / "r"
    data = ("--dataset", "table", "--data", tmp_path / "t.csv", "--label-column", "y", "--test-fraction", 0)
    code, out, err = cli("crossval", run, *data, "--model", "logreg", "--repeats", 2, "--seed", 5)
    assert code == 0, err
    assert "4 folds x 2 repeats" in out
    probs = np.load(run / "crossval" / "pred_probs.npy")
    folds = np.load(run / "crossval" / "folds.npy")
    assert folds.shape == (2, len(y)) and not np.array_equal(folds[0], folds[1])
    X = np.loadtxt(tmp_path / "t.csv", delimiter=",", skiprows=1, dtype=np.float32)[:, :-1]
    given = np.arange(len(y))
    # Rebuild each row's two models: both were trained without it, and their mean is pred_probs.
    expected = np.zeros_like(probs, dtype=np.float64)
    recalled = []
    for r in range(2):
        for k in range(4):
            train = folds[r] != k
            model = build_model("logreg", (X.shape[1],), 3).fit(X[train], y[train])
            expected[~train] += model.predict_proba(X[~train]) / 2
            recalled.append(model.predict_proba(X[train])[np.arange(train.sum()), y[train]].mean())
    assert np.abs(expected - probs).max() < 1e-5
    # Unseen rows are guesses (about 1/3 on the given label); a model that saw them recalls them.
    assert probs[given, y].mean() < 0.45 and min(recalled) > 0.8


def test_repeated_run_resumes_byte_identical(tmp_path, cli):
    _random_table(tmp_path / "t.csv", n=96, d=8)
    data = ("--dataset", "table", "--data", tmp_path / "t.csv", "--label-column", "y", "--test-fraction", 0)
    one = tmp_path / "one"
    code, _, err = cli("crossval", one, *data, "--epochs", 1, "--repeats", 2)
    assert code == 0, err
    shards = one / "crossval" / "shards"
    assert sorted(p.name for p in shards.glob("*.npz")) == sorted(
        [f"fold_{k}.npz" for k in range(4)] + [f"repeat_1_fold_{k}.npz" for k in range(4)])
    # A run with one repeat first, a second repeat later; one task as its own job; an interrupted repeat.
    two = tmp_path / "two"
    assert cli("crossval", two, *data, "--epochs", 1)[0] == 0
    assert cli("crossval", two, *data, "--epochs", 1, "--repeats", 2, "--fold", 6)[0] == 0  # repeat 1, fold 2
    code, out, err = cli("crossval", two, *data, "--epochs", 1, "--repeats", 2)
    assert code == 0, err
    assert "reused finished folds 0, 1, 2, 3, 6" in out
    for f in ("pred_probs.npy", "folds.npy"):
        assert (one / "crossval" / f).read_bytes() == (two / "crossval" / f).read_bytes()
    (shards / "repeat_1_fold_3.npz").unlink()
    assert cli("crossval", one, *data, "--epochs", 1, "--repeats", 2)[0] == 0
    assert (one / "crossval" / "pred_probs.npy").read_bytes() == (two / "crossval" / "pred_probs.npy").read_bytes()
    code, _, err = cli("crossval", one, *data, "--epochs", 1, "--repeats", 2, "--fold", 8)
    assert code != 0 and "fold tasks are 0..7" in err


def test_ranking_defaults_per_kind_of_data():
    from cleanpipe.detect.crossval import default_settings

    grey, small = default_settings((1, 28, 28), "mnist"), default_settings((1, 8, 8), "digits")
    colour, table = default_settings((3, 32, 32), "cifar10"), default_settings((13,), "table")
    assert (grey.tta, grey.repeats, grey.mixup) == (True, 1, 2.0) and (small.tta, small.repeats, small.mixup) == (True, 1, 1.0)
    assert (colour.tta, colour.repeats, colour.flip, colour.mixup) == (False, 1, True, 0.0)
    assert (table.tta, table.repeats, table.mixup) == (False, 1, 0.0)
    assert default_settings((1, 28, 28), "mnist", repeats=1, tta=False).repeats == 1
