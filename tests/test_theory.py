"""INCV's theory (Chen et al. 2019, section 3): the closed forms, the measured quantities, and `cleanpipe theory`."""

import json

import numpy as np
import pytest

from cleanpipe.detect.theory import closed_form, measured_held_out, predicted_held_out
from cleanpipe.noise import noise_matrix


@pytest.mark.parametrize("kind,rate", [("symmetric", 0.2), ("symmetric", 0.5), ("symmetric", 0.8), ("pairflip", 0.45)])
def test_matrix_predictions_equal_the_closed_forms(kind, rate):
    T = noise_matrix(kind, 10, rate).T  # rows = true class
    got = predicted_held_out(T, np.ones(10))
    want = closed_form(kind, rate, 10)
    for q in want:
        assert got[q] == pytest.approx(want[q], abs=1e-12)


def test_closed_form_values_from_the_spec():
    # The paper's worked values: p = 0.6444 at sym 0.2, 0.2778 at sym 0.5, 0.52 at pair 0.4.
    assert closed_form("symmetric", 0.2, 10)["noisy_accuracy"] == pytest.approx(0.6444, abs=1e-4)
    assert closed_form("symmetric", 0.5, 10)["noisy_accuracy"] == pytest.approx(0.2778, abs=1e-4)
    assert closed_form("pairflip", 0.4, 10)["noisy_accuracy"] == pytest.approx(0.52)
    assert closed_form("symmetric", 0.4, 10)["label_precision"] == pytest.approx(0.36 / (0.36 + 0.16 / 9))
    assert closed_form("random", 0.4, 10) is None


def test_a_network_that_follows_the_noise_measures_the_prediction():
    """Simulate the theory's assumption: ŷ ~ T[y*], independent of ỹ ~ T[y*]; measured -> predicted."""
    rng = np.random.default_rng(0)
    T = noise_matrix("random", 10, 0.4, sparsity=0.2, seed=1).T
    prior = rng.dirichlet(np.full(10, 5.0))
    n = 400_000
    true = rng.choice(10, n, p=prior)
    cum = T.cumsum(1)
    draw = lambda: (rng.random(n)[:, None] > cum[true]).sum(1).clip(max=9)  # noqa: E731
    noisy, pred = draw(), draw()
    measured, confusion = measured_held_out(pred, noisy, true, 10)
    predicted = predicted_held_out(T, np.bincount(true, minlength=10))
    for q in predicted:
        assert measured[q] == pytest.approx(predicted[q], abs=0.005)
    assert np.abs(confusion - T).max() < 0.01 and np.allclose(confusion.sum(1), 1)


def test_theory_cli_writes_its_outputs_and_is_reproducible(tmp_path, cli):
    import pandas as pd

    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.4)[0] == 0
    code, out, err = cli("theory", run, "--epochs", 10, "--device", "cpu")
    assert code == 0, err
    d = run / "theory"
    for name in ("theory.csv", "held_out.csv", "confusion_matrix.npy", "transition_matrix.npy", "confusion.png",
                 "manifest.json"):
        assert (d / name).is_file(), name
    assert (d / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(d / "theory.csv").set_index("quantity")
    assert table.loc["noisy_accuracy", "predicted"] == pytest.approx((0.6**2 + 0.4**2 / 9), abs=1e-6)
    held = pd.read_csv(d / "held_out.csv")
    assert table.loc["noisy_accuracy", "measured"] == pytest.approx(
        (held.predicted_label == held.noisy_label).mean(), abs=1e-6)
    T = np.load(d / "transition_matrix.npy")
    assert np.allclose(T, np.load(run / "noise" / "noise_matrix.npy").T)
    M = np.load(d / "confusion_matrix.npy")
    assert M.shape == (10, 10) and np.allclose(M.sum(1), 1)
    m = json.loads((d / "manifest.json").read_text())
    n_train = json.loads((run / "dataset.json").read_text())["n_train"]
    assert m["metrics"]["n_train"] + m["metrics"]["n_held_out"] == n_train and m["metrics"]["n_held_out"] == len(held)
    assert "label recall" in out and "predicted" in out
    first = (d / "theory.csv").read_bytes()
    assert cli("theory", run, "--epochs", 10, "--device", "cpu")[0] == 0
    assert (d / "theory.csv").read_bytes() == first  # same seed, same numbers


def test_a_class_missing_from_the_held_out_half_is_not_counted_as_a_mismatch():
    T = noise_matrix("symmetric", 3, 0.4).T
    measured, confusion = measured_held_out(np.array([0, 1, 1]), np.array([0, 1, 0]), np.array([0, 1, 1]), 3)
    assert np.isnan(confusion[2]).all() and np.allclose(confusion[:2].sum(1), 1)
    assert np.array_equal(confusion[:2], [[1, 0, 0], [0, 1, 0]])
    # the missing class's NaN row is left out of the largest |M - T| cell: 1 - 0.6 on the diagonal, not NaN
    assert np.nanmax(np.abs(confusion - T)) == pytest.approx(0.4)
    assert measured == pytest.approx({"noisy_accuracy": 2 / 3, "label_precision": 1.0, "label_recall": 1.0,
                                      "clean_accuracy": 1.0})


def test_theory_rejects_bad_epochs_and_non_networks(tmp_path, cli):
    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.4)[0] == 0
    for args in (("--epochs", 0), ("--model", "logreg")):
        code, out, err = cli("theory", run, *args)
        assert code == 2 and len(err.strip().splitlines()) == 1, (args, err)
    assert not (run / "theory").exists()


def test_theory_needs_a_noise_stage(tmp_path, cli):
    code, out, err = cli("theory", tmp_path / "none")
    assert code == 2 and "cleanpipe noise" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "none").exists()
    # A run that noised a bare label file has nothing to train on.
    labels = tmp_path / "y.npy"
    np.save(labels, np.arange(100) % 10)
    assert cli("noise", tmp_path / "bare", "--labels", labels, "--kind", "symmetric", "--rate", 0.4)[0] == 0
    code, out, err = cli("theory", tmp_path / "bare")
    assert code == 2 and "bare label file" in err and not (tmp_path / "bare" / "theory").exists()


def test_mnist_measured_values_match_the_theory_at_40_percent(tmp_path, cli, mnist_dir):
    """The issue's acceptance: MNIST-10k, 40% symmetric noise, each quantity within 0.05 of its prediction."""
    run = tmp_path / "m"
    assert cli("noise", run, "--dataset", "mnist", "--data", mnist_dir, "--kind", "symmetric", "--rate", 0.4)[0] == 0
    code, out, err = cli("theory", run, "--device", "cpu")
    assert code == 0, err
    m = json.loads((run / "theory" / "manifest.json").read_text())["metrics"]
    for q in ("noisy_accuracy", "label_precision", "label_recall"):
        assert abs(m["measured"][q] - m["closed_form"][q]) <= 0.05, (q, m["measured"][q], m["closed_form"][q])
