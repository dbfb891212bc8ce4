"""Noise kinds: matrices, sampling fidelity on MNIST-10k, the CL paper's file, bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from cleanpipe.errors import CleanpipeError
from cleanpipe.noise import (
    CIFAR10_MAP,
    DIGIT_MAP,
    KINDS,
    default_class_map,
    make_noisy_labels,
    noise_matrix,
    parse_class_map,
    transition_matrix,
)


@pytest.mark.parametrize("kind", KINDS)
def test_matrices_are_column_stochastic(kind):
    cmap = DIGIT_MAP if kind == "asymmetric" else None
    M = noise_matrix(kind, 10, 0.4, class_map=cmap, sparsity=0.2 if kind == "random" else 0.0)
    assert M.shape == (10, 10)
    assert np.allclose(M.sum(axis=0), 1.0)
    assert (M >= 0).all()


def test_matrix_shapes_of_each_kind():
    K, r = 5, 0.3
    sym = noise_matrix("symmetric", K, r)
    assert np.allclose(np.diag(sym), 1 - r) and np.isclose(sym[1, 0], r / (K - 1))
    uni = noise_matrix("uniform", K, r)
    assert np.allclose(np.diag(uni), 1 - r + r / K) and np.isclose(uni[1, 0], r / K)
    pf = noise_matrix("pairflip", K, r)
    assert np.isclose(pf[1, 0], r) and np.isclose(pf[0, K - 1], r) and np.isclose(pf[2, 0], 0)
    asym = noise_matrix("asymmetric", K, r, class_map={0: 1, 1: 0})
    assert np.isclose(asym[1, 0], r) and np.isclose(asym[0, 1], r) and asym[2, 2] == 1
    assert np.array_equal(noise_matrix("symmetric", K, 0.0), np.eye(K))


def test_random_matrix_trace_is_rounded_not_truncated():
    # 10 * (1 - 0.6) is 3.9999999999999996 in floating point; the paper's int() gave trace 3.
    M = noise_matrix("random", 10, 0.6, seed=0)
    assert np.isclose(np.trace(M), 4.0)
    assert np.isclose(np.trace(noise_matrix("random", 10, 0.4, sparsity=0.2)), 6.0)


def test_default_maps():
    assert default_class_map("cifar10", 10) == CIFAR10_MAP
    assert default_class_map("mnist", 10) == DIGIT_MAP
    coarse = [k // 5 for k in range(100)]
    m = default_class_map("cifar100", 100, {"coarse_of_fine": coarse})
    assert m[0] == 1 and m[4] == 0 and all(coarse[a] == coarse[b] for a, b in m.items())
    with pytest.raises(CleanpipeError, match="class_map is needed"):  # the parameter's name; the CLI says --map
        default_class_map("table", 3)


def test_parse_class_map():
    names = ["airplane", "automobile", "bird", "cat"]
    assert parse_class_map("3:1, bird:airplane", names) == {3: 1, 2: 0}
    for bad in ("3:9", "3-1", "cat:cat", "1:2,1:3", "dog:cat", ""):
        with pytest.raises(CleanpipeError):
            parse_class_map(bad, names)


def test_sampling_has_exact_counts_and_is_seeded():
    y = np.repeat(np.arange(4), 250)
    a = make_noisy_labels(y, "symmetric", 0.3, n_classes=4, seed=1)
    b = make_noisy_labels(y, "symmetric", 0.3, n_classes=4, seed=1)
    c = make_noisy_labels(y, "symmetric", 0.3, n_classes=4, seed=2)
    assert np.array_equal(a.noisy_labels, b.noisy_labels)
    assert not np.array_equal(a.noisy_labels, c.noisy_labels)
    assert a.actual_noise_rate == pytest.approx(0.3, abs=1e-9)
    emp = transition_matrix(y, a.noisy_labels, 4)
    assert np.abs(emp - a.noise_matrix).max() <= 1 / 250


def _implied_rate(kind, rate, y, K):
    """What each kind's definition says the noise rate should be (independent of the code)."""
    if kind in ("symmetric", "pairflip", "random"):
        return rate
    if kind == "uniform":
        return rate * (1 - 1 / K)
    return rate * np.isin(y, list(DIGIT_MAP)).mean()  # asymmetric: only mapped classes move


FIDELITY_CASES = [
    ("symmetric", 0.4, []),
    ("uniform", 0.5, []),
    ("asymmetric", 0.4, []),
    ("pairflip", 0.45, []),
    ("random", 0.4, ["--sparsity", "0.2"]),
]


@pytest.mark.parametrize("kind,rate,extra", FIDELITY_CASES, ids=[c[0] for c in FIDELITY_CASES])
def test_noise_fidelity_on_mnist(tmp_path, cli, mnist_dir, kind, rate, extra):
    from cleanpipe.data import DataSpec, load_dataset

    y = load_dataset(DataSpec("mnist", str(mnist_dir))).y_train
    assert len(y) == 8000
    outs = []
    for name in ("a", "b"):
        run = tmp_path / name
        code, out, err = cli("noise", run, "--dataset", "mnist", "--data", mnist_dir,
                             "--kind", kind, "--rate", rate, "--seed", 3, *extra)
        assert code == 0, err
        outs.append(run)
    noisy = np.load(outs[0] / "noise" / "noisy_labels.npy")
    M = np.load(outs[0] / "noise" / "noise_matrix.npy")
    actual = np.mean(noisy != y)
    assert abs(actual - _implied_rate(kind, rate, y, 10)) <= 0.015
    assert np.abs(transition_matrix(y, noisy, 10) - M).max() <= 0.03
    # Same seed, identical files.
    for f in ("noisy_labels.npy", "noise_matrix.npy"):
        assert (outs[0] / "noise" / f).read_bytes() == (outs[1] / "noise" / f).read_bytes()


def test_reproduces_cl_paper_noisy_labels(tmp_path, cli, cl_dir):
    out = tmp_path / "cl"
    code, stdout, err = cli("noise", out, "--labels", cl_dir / "true_labels.npy", "--kind", "random",
                            "--rate", 0.4, "--sparsity", 0.2, "--seed", 0)
    assert code == 0, err
    ours = np.load(out / "noise" / "noisy_labels.npy")
    assert np.array_equal(ours, np.load(cl_dir / "noisy_labels.npy"))
    assert np.allclose(np.load(out / "noise" / "noise_matrix.npy"), np.load(cl_dir / "noise_matrix.npy"))


def test_manifest_records_rates_and_digests(tmp_path, cli):
    import json

    run = tmp_path / "r"
    code, out, err = cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.2)
    assert code == 0, err
    man = json.loads((run / "noise" / "manifest.json").read_text())
    assert man["stage"] == "noise" and man["parameters"]["kind"] == "symmetric"
    assert abs(man["metrics"]["actual_noise_rate"] - 0.2) < 0.01
    assert set(man["outputs"]) == {"noisy_labels.npy", "noise_matrix.npy"}
    assert "dataset.json" in man["inputs"]
    ds = json.loads((run / "dataset.json").read_text())
    assert ds["spec"]["source"] == "digits" and ds["n_train"] + ds["n_test"] == 1797
    assert "actual" in out and "noise matrix" in out


@pytest.fixture
def labels_file(tmp_path):
    p = tmp_path / "labels.npy"
    np.save(p, np.arange(100) % 5)
    return p


BAD = {
    "missing data path": ["--dataset", "mnist", "--data", "/nonexistent/mnist", "--kind", "symmetric", "--rate", "0.2"],
    "no --data": ["--dataset", "mnist", "--kind", "symmetric", "--rate", "0.2"],
    "unknown dataset": ["--dataset", "imagenet", "--kind", "symmetric", "--rate", "0.2"],
    "rate above 1": ["--dataset", "digits", "--kind", "symmetric", "--rate", "1.5"],
    "negative rate": ["--dataset", "digits", "--kind", "symmetric", "--rate", "-0.1"],
    "unknown kind": ["--dataset", "digits", "--kind", "gaussian", "--rate", "0.2"],
    "unknown class in map": ["--dataset", "digits", "--kind", "asymmetric", "--rate", "0.2", "--map", "3:11"],
    "map with other kind": ["--dataset", "digits", "--kind", "symmetric", "--rate", "0.2", "--map", "3:8"],
    "sparsity with other kind": ["--dataset", "digits", "--kind", "symmetric", "--rate", "0.2", "--sparsity", "0.2"],
    "no map for a table": ["--labels", "LABELS", "--kind", "asymmetric", "--rate", "0.2"],
    "labels of wrong length": ["--dataset", "digits", "--labels", "LABELS", "--kind", "symmetric", "--rate", "0.2"],
    "labels in wrong format": ["--labels", "BADFORMAT", "--kind", "symmetric", "--rate", "0.2"],
    "corrupt labels file": ["--labels", "CORRUPT", "--kind", "symmetric", "--rate", "0.2"],
    "missing labels file": ["--labels", "/nonexistent/labels.npy", "--kind", "symmetric", "--rate", "0.2"],
    "random rate too high": ["--labels", "LABELS", "--kind", "random", "--rate", "0.99"],
    "negative seed": ["--dataset", "digits", "--kind", "symmetric", "--rate", "0.2", "--seed", "-1"],
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_clear_line_and_leaves_nothing(tmp_path, cli, labels_file, case):
    bad_format = tmp_path / "labels.txt"
    bad_format.write_text("1 2 3\n")
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY garbage")
    swap = {"LABELS": labels_file, "BADFORMAT": bad_format, "CORRUPT": corrupt}
    args = [swap.get(a, a) for a in BAD[case]]
    run = tmp_path / "run"
    code, out, err = cli("noise", run, *args)
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err + out
    assert not run.exists(), "a failed stage must leave no files behind"


def test_failed_rerun_keeps_previous_state(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.2)[0] == 0
    before = {p.name: p.read_bytes() for p in (run / "noise").iterdir()}
    code, _, err = cli("noise", run, "--kind", "asymmetric", "--rate", 0.2, "--map", "3:99")
    assert code == 2 and "unknown class" in err
    assert {p.name: p.read_bytes() for p in (run / "noise").iterdir()} == before
    assert sorted(p.name for p in run.iterdir()) == ["dataset.json", "noise"]


def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cleanpipe", "noise", str(tmp_path / "r"), "--dataset", "digits",
         "--kind", "symmetric", "--rate", "2"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "--rate must lie in [0, 1]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_random_kind_accepts_high_rates_for_many_classes(tmp_path, cli):
    # The rate check for `random` must use the dataset's K (10 here), not a placeholder.
    code, out, err = cli("noise", tmp_path / "r", "--dataset", "digits", "--kind", "random", "--rate", 0.8)
    assert code == 0, err
    M = np.load(tmp_path / "r" / "noise" / "noise_matrix.npy")
    assert np.trace(M) == pytest.approx(10 * (1 - 0.8)) and np.allclose(M.sum(axis=0), 1)
    metrics = json.loads((tmp_path / "r" / "noise" / "manifest.json").read_text())["metrics"]
    assert abs(metrics["actual_noise_rate"] - metrics["expected_noise_rate"]) < 0.05 and metrics["actual_noise_rate"] > 0.7


def test_unwritable_run_directory_is_one_line(tmp_path, cli):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out, err = cli("noise", blocker / "run", "--dataset", "digits", "--kind", "symmetric", "--rate", 0.2)
    assert code == 2 and "cannot create run directory" in err and len(err.strip().splitlines()) == 1


def test_embedded_source_refuses_data_path(tmp_path, cli):
    code, out, err = cli("noise", tmp_path / "r", "--dataset", "digits", "--data", tmp_path, "--kind", "symmetric", "--rate", 0.2)
    assert code == 2 and "takes no --data" in err and not (tmp_path / "r").exists()


# ---- low rates and semantic noise (issue 18) -------------------------------------------------


def _digit_labels():
    from sklearn.datasets import load_digits

    return load_digits().target[:1437].astype(np.int64)


@pytest.mark.parametrize("rate", [0.005, 0.01, 0.03])
@pytest.mark.parametrize("kind", KINDS)
def test_low_rates_give_the_noise_they_say(kind, rate):
    """At 0.5% no kind rounds its flips down to nothing: the total is exact and each class gets the
    floor or ceiling of its expected flips (0.72 on a digits class at 0.5%, so some get none)."""
    y = _digit_labels()
    r = make_noisy_labels(y, kind, rate, n_classes=10, class_map=DIGIT_MAP if kind == "asymmetric" else None, seed=4)
    changed = r.noisy_labels != y
    assert changed.sum() == round(r.expected_noise_rate * len(y)) > 0
    expected_per_class = np.bincount(y, minlength=10) * (1 - np.diag(r.noise_matrix))
    got = np.bincount(y[changed], minlength=10)
    assert np.all(got >= np.floor(expected_per_class - 1e-9)) and np.all(got <= np.ceil(expected_per_class + 1e-9))
    # flips go only where the matrix allows them
    assert np.all(r.noise_matrix[r.noisy_labels[changed], y[changed]] > 0)


def test_flip_counts_break_ties_by_seed_not_class_order():
    from cleanpipe.noise import flip_counts

    sizes = np.full(10, 100)  # every class expects 0.5 flips: 5 of the 10 get one
    M = noise_matrix("symmetric", 10, 0.005)
    picked = {tuple(np.flatnonzero(flip_counts(sizes, M, seed=s).sum(0) - np.diag(flip_counts(sizes, M, seed=s))))
              for s in range(6)}
    assert all(len(p) == 5 for p in picked) and len(picked) > 1  # not always the first five classes


def test_semantic_noise_on_digits(tmp_path, cli):
    runs = []
    for name in ("a", "b"):
        code, out, err = cli("noise", tmp_path / name, "--dataset", "digits", "--kind", "semantic", "--rate", 0.1,
                             "--seed", 2)
        assert code == 0, err
        runs.append(tmp_path / name / "noise")
    assert "labeler: trained on" in out
    for f in ("noisy_labels.npy", "noise_matrix.npy", "labeler_rows.npy"):
        assert (runs[0] / f).read_bytes() == (runs[1] / f).read_bytes()  # same seed, same bytes
    from cleanpipe.data import DataSpec, load_dataset

    y = load_dataset(DataSpec("digits")).y_train
    noisy = np.load(runs[0] / "noisy_labels.npy")
    m = json.loads((runs[0] / "manifest.json").read_text())["metrics"]
    assert m["n_changed"] == round(0.1 * len(y)) and abs(m["actual_noise_rate"] - 0.1) < 0.005
    assert np.array_equal(np.load(runs[0] / "noise_matrix.npy"), transition_matrix(y, noisy, 10))
    assert not np.any(noisy[np.load(runs[0] / "labeler_rows.npy")] != y[np.load(runs[0] / "labeler_rows.npy")])
    # Confusions, not random flips: a tenth of the 90 (true, noisy) pairs hold most of the errors
    # (symmetric noise would put about a tenth there).
    counts = np.zeros((10, 10), int)
    np.add.at(counts, (y[noisy != y], noisy[noisy != y]), 1)
    assert np.sort(counts, axis=None)[::-1][:9].sum() > 0.5 * m["n_changed"]
    assert m["top_confusions"][0]["count"] == counts.max()


def test_semantic_noise_does_not_follow_crossvals_recipe(monkeypatch):
    # "semantic 3%, seed 0" must name the same labels after crossval's defaults change (28x28 grey went from
    # 10 to 20 epochs; the labeler keeps round 1's recipe and plain cross-entropy).
    from dataclasses import replace

    from cleanpipe.data import DataSpec, load_dataset
    from cleanpipe.noise.semantic import semantic_noisy_labels
    from cleanpipe.recipes import RECIPES, DataKind

    ds = load_dataset(DataSpec("digits"))
    X, y = ds.X_train[:600], ds.y_train[:600]
    before = semantic_noisy_labels(X, y, 0.05, n_classes=10, source="digits", seed=1, device="cpu")
    small = RECIPES[DataKind.SMALL]
    monkeypatch.setitem(RECIPES, DataKind.SMALL, replace(small, crossval=replace(small.crossval, epochs=3, mixup=4.0)))
    after = semantic_noisy_labels(X, y, 0.05, n_classes=10, source="digits", seed=1, device="cpu")
    assert np.array_equal(before.result.noisy_labels, after.result.noisy_labels)
    assert before.settings["epochs"] == 20 and before.settings["mixup"] == 0.0


def test_semantic_noise_refusals(tmp_path, cli):
    np.save(tmp_path / "y.npy", _digit_labels())
    code, _, err = cli("noise", tmp_path / "s", "--labels", tmp_path / "y.npy", "--kind", "semantic", "--rate", 0.1)
    assert code != 0 and "learns from the examples" in err and "Traceback" not in err
    code, _, err = cli("noise", tmp_path / "t", "--dataset", "digits", "--kind", "semantic", "--rate", 0.99)
    assert code != 0 and "outside the labeler's share" in err and not (tmp_path / "t" / "noise").exists()
    code, _, err = cli("noise", tmp_path / "u", "--dataset", "digits", "--kind", "symmetric", "--rate", 0.1,
                       "--labeler-fraction", 0.2)
    assert code != 0 and "only to --kind semantic" in err
