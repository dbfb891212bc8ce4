"""The method registry and the library call: every method trains on NumPy arrays, no run directory."""

import json
import os

import numpy as np
import pytest
import torch

from cleanpipe.recipes import fit_settings
from cleanpipe.robust import (
    METHODS,
    CoTeachingOptions,
    IegOptions,
    IncvCoTeachingOptions,
    L2ROptions,
    NoisyStudentOptions,
    NoisyStudentResult,
    get_method,
    register,
    train_model,
)
from cleanpipe.validation import ParameterError


def _settings(epochs=4, **kw):
    return fit_settings("train", (1, 8, 8), epochs=epochs, **kw)


def test_the_registry_names_every_method_once():
    assert list(METHODS) == ["standard", "coteaching", "coteaching-plus", "incv-coteaching", "l2r", "ieg",
                             "noisy-student", "elr", "dividemix"]
    for name, spec in METHODS.items():
        assert spec.name == name and spec.summary and spec.Options() is not None
    with pytest.raises(ParameterError, match="choose one of standard"):
        get_method("mixup")
    with pytest.raises(ValueError, match="taken"):
        register(METHODS["standard"])


def test_coteaching_trains_on_arrays_without_a_run_directory(digits, tmp_path, monkeypatch):
    ds, noisy = digits
    monkeypatch.chdir(tmp_path)
    result = train_model(ds.X_train, noisy, method="coteaching", options=CoTeachingOptions(forget_rate=0.4),
                         X_test=ds.X_test, y_test=ds.y_test, settings=_settings(), truth=ds.y_train, device="cpu")
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere
    assert len(result.nets) == 2 and all(isinstance(n, torch.nn.Module) and not n.training for n in result.nets)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert {"test_accuracy", "test_accuracy_peer", "forget_rate", "pure_ratio"} <= set(result.history[-1])
    assert result.method_settings == {"forget_rate": 0.4, "ramp_epochs": 1, "selection": "class"}
    assert result.test_accuracy > 0.5 and result.model == "small_cnn"  # 4 epochs at 40% noise; chance is 0.1
    assert np.array_equal(result.rows, np.arange(len(noisy)))
    # The model predicts new data with the training rows' statistics.
    from cleanpipe.engine import DeviceData, TrainConfig, predict_proba

    data = DeviceData(ds.X_test, torch.device("cpu"))
    data.mean, data.std = result.mean, result.std
    pred = predict_proba(result.nets[0], data, np.arange(len(ds.y_test)), TrainConfig(channels_last=False)).argmax(1)
    assert np.mean(pred == ds.y_test) == pytest.approx(result.test_accuracy, abs=1e-6)


def test_ieg_trains_on_arrays_with_trusted_labels(digits):
    ds, noisy = digits
    rng = np.random.default_rng(1)
    trusted = np.sort(rng.choice(len(noisy), 300, replace=False))
    options = IegOptions(probe_per_class=5, trusted_rows=trusted, trusted_labels=ds.y_train[trusted])
    result = train_model(ds.X_train, noisy, method="ieg", options=options, X_test=ds.X_test, y_test=ds.y_test,
                         settings=_settings(epochs=1), device="cpu")
    probe_rows, probe_labels = result.per_example["probe"]
    assert len(probe_rows) == 50 and set(probe_rows) <= set(trusted.tolist())
    assert np.all(np.bincount(probe_labels, minlength=10) == 5) and np.array_equal(probe_labels, ds.y_train[probe_rows])
    assert not set(result.rows) & set(probe_rows) and len(result.rows) == len(noisy) - 50  # never trained on
    assert result.method_settings["policy"] == "randaugment" and result.method_settings["consistency_factor"] == 2.0  # digits' recipe
    rec = result.per_example["records"]
    assert np.mean(rec["seen"][result.rows] >= 1) > 0.9 and np.all(np.isnan(rec["weight"][probe_rows]))  # one epoch
    assert "mean_weight" in result.history[-1] and result.test_accuracy is not None


def test_each_method_needs_what_it_says(digits):
    ds, noisy = digits
    X, s = ds.X_train, _settings(epochs=1)
    with pytest.raises(ParameterError, match="forget_rate is needed"):
        train_model(X, noisy, method="coteaching", settings=s, device="cpu")
    with pytest.raises(ParameterError, match="trusted_rows"):
        train_model(X, noisy, method="l2r", settings=s, device="cpu")
    with pytest.raises(ParameterError, match="candidates"):
        train_model(X, noisy, method="incv-coteaching", settings=s, device="cpu")
    with pytest.raises(ParameterError, match="unlabeled_rows"):
        train_model(X, noisy, method="noisy-student", settings=s, device="cpu")
    with pytest.raises(ParameterError, match="options of coteaching must be a CoTeachingOptions"):
        train_model(X, noisy, method="coteaching", options=L2ROptions(), settings=s, device="cpu")
    with pytest.raises(ParameterError, match="labels must be"):
        train_model(X, noisy[:-1], settings=s, device="cpu")
    with pytest.raises(ParameterError, match="X_test rows must be shaped like"):
        train_model(X, noisy, X_test=np.zeros((3, 1, 9, 9), np.uint8), y_test=np.zeros(3, int), settings=s)
    with pytest.raises(ParameterError, match="forget_rate must lie in"):
        CoTeachingOptions(forget_rate=1.5)
    with pytest.raises(ParameterError, match="views must be at least 2"):
        IegOptions(views=1)


@pytest.mark.parametrize("method", ["standard", "coteaching-plus", "incv-coteaching", "l2r"])
def test_the_other_methods_train_through_the_same_call(digits, method):
    ds, noisy = digits
    rows = np.arange(0, len(noisy))
    selected = np.flatnonzero(noisy == ds.y_train)[:700]  # as INCV selects: mostly clean labels
    options = {"standard": None, "coteaching-plus": CoTeachingOptions(forget_rate=0.3),
               "incv-coteaching": IncvCoTeachingOptions(candidates=np.setdiff1d(rows, selected), eval_ratio=0.4),
               "l2r": L2ROptions(probe_per_class=3)}[method]
    if method == "incv-coteaching":
        rows = selected  # INCV's selected set S
    # Plain training on all rows at 40% noise: 3 epochs land anywhere between 0.04 and 0.49 test accuracy
    # over seeds (the one-cycle warm-up takes most of 66 steps), 6 epochs between 0.77 and 0.93.
    epochs = 6 if method == "standard" else 3
    result = train_model(ds.X_train, noisy, rows, method=method, options=options, X_test=ds.X_test, y_test=ds.y_test,
                         settings=_settings(epochs=epochs), truth=ds.y_train, device="cpu")
    assert len(result.nets) == METHODS[method].n_nets and len(result.history) == epochs
    if method == "coteaching-plus":  # digits' recipe: the disagreement exchange from the start (it learns slowly)
        assert result.method_settings["init_epoch"] == 0 and "forget_rate" in result.history[-1]
    elif method == "l2r":  # 3 trusted per class held out; weights recorded (3 epochs are too few to judge accuracy)
        assert len(result.rows) == len(noisy) - 30 and "mean_weight_clean" in result.history[-1]
    else:
        assert result.test_accuracy > 0.3
    if method == "incv-coteaching":  # τ_sel from INCV's estimate; warm-up of 20% of the epochs
        assert result.method_settings["forget_rate"] == pytest.approx(0.4**2 / (0.4**2 + 9 * 0.6**2), abs=1e-6)
        assert result.method_settings["warmup_epochs"] == 1 and result.method_settings["n_candidates"] == 1437 - 700


def test_noisy_student_returns_its_decisions(digits):
    ds, noisy = digits
    flagged = np.flatnonzero(noisy != ds.y_train)[:200]
    kept = np.setdiff1d(np.arange(len(noisy)), flagged)
    result = train_model(ds.X_train, noisy, kept, method="noisy-student",
                         options=NoisyStudentOptions(iterations=1, unlabeled_rows=flagged), X_test=ds.X_test,
                         y_test=ds.y_test, settings=_settings(epochs=4), device="cpu")
    assert isinstance(result, NoisyStudentResult) and result.model == "small_cnn_wide"
    assert [r["role"] for r in result.rounds] == ["teacher", "student"]
    assert np.array_equal(result.unlabeled_rows, flagged) and result.student_probs.shape == (200, 10)
    relabel = result.decision == "relabel"
    assert np.array_equal(result.corrected[flagged[relabel]], result.pseudo_label[relabel])
    assert np.array_equal(np.delete(result.corrected, flagged[relabel]), np.delete(noisy, flagged[relabel]))
    assert result.metrics["n_relabel"] == int(relabel.sum())


def test_same_inputs_same_networks_and_a_resume_dir_resumes(digits, tmp_path):
    ds, noisy = digits
    runs = [train_model(ds.X_train, noisy, method="standard", settings=_settings(epochs=2), device="cpu",
                        resume_dir=tmp_path / "resume" if i == 1 else None) for i in range(2)]
    a, b = (r.nets[0].state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert list((tmp_path / "resume").glob("*.history.json"))


@pytest.fixture
def toy_method():
    from weighted_ce import WeightedCETraining

    spec = register(WeightedCETraining())  # the one registry line
    yield spec
    METHODS.pop(spec.name)


def test_a_new_method_is_one_module_and_one_registry_line(toy_method, digits, tmp_path, cli):
    from weighted_ce import WeightedCEOptions

    ds, noisy = digits
    result = train_model(ds.X_train, noisy, method="weighted-ce", options=WeightedCEOptions(weight=0.25),
                         X_test=ds.X_test, y_test=ds.y_test, settings=_settings(epochs=2), device="cpu")
    assert result.method_settings == {"weight": 0.25} and len(result.history) == 2
    run = tmp_path / "run"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.2)[0] == 0
    code, out, err = cli("train", run, "--method", "weighted-ce", "--subset", "all", "--epochs", 2, "--device", "cpu")
    assert code == 0, err
    man = json.loads((run / "train" / "manifest.json").read_text())
    assert man["parameters"]["method"] == "weighted-ce" and man["parameters"]["weight"] == 0.5
    assert man["metrics"]["n_train"] == 1437 and (run / "train" / "model.pt").is_file()
    code, out, err = cli("train", run, "--method", "weighted-ce", "--device", "cpu")  # kept: needs a prune stage
    assert code == 2 and "cleanpipe prune" in err


def test_recipes_are_keyed_by_the_kind_of_data():
    from cleanpipe.recipes import DataKind, auto_model, data_kind, incv_model

    assert [data_kind(s) for s in [(1, 8, 8), (1, 28, 28), (3, 32, 32), (13,)]] == [
        DataKind.SMALL, DataKind.GREY, DataKind.COLOUR, DataKind.TABLE]
    assert [auto_model(s) for s in [(1, 8, 8), (3, 32, 32), (3, 24, 24), (13,)]] == [
        "small_cnn", "preact_resnet18", "small_cnn", "mlp"]
    # cross-validation's folds on colour images train the airbench-class net (pipelines/bench_colour.py)
    assert [auto_model(s, "crossval") for s in [(1, 28, 28), (3, 32, 32), (3, 24, 24)]] == [
        "small_cnn", "airbench", "small_cnn"]
    assert incv_model((3, 32, 32)) == "resnet32" and incv_model((1, 28, 28)) == "mlp128"
    grey = fit_settings("train", (1, 28, 28), source="mnist")
    assert (grey.epochs, grey.batch_size, grey.lr) == (20, 256, 0.1)
    assert fit_settings("crossval", (3, 32, 32), source="cifar10").flip
    assert not fit_settings("crossval", (3, 32, 32), source="npz").flip  # arbitrary arrays are not mirrored
    assert fit_settings("crossval", (1, 28, 28), epochs=3).epochs == 3
    with pytest.raises(ParameterError, match="epochs must be at least 1"):
        fit_settings("train", (13,), epochs=0)


def test_cli_errors_name_the_flag_and_python_errors_the_parameter(tmp_path, cli):
    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.4)[0] == 0
    code, _, err = cli("train", run, "--method", "ieg", "--subset", "all", "--meta-route", "finite")
    assert code == 2 and err.strip().startswith("error: --meta-route must be jvp or autograd")
    code, _, err = cli("crossval", run, "--folds", 1)
    assert code == 2 and "--folds must be at least 2" in err
    with pytest.raises(ParameterError, match="^route must be"):
        IegOptions(route="finite")
    assert not os.path.exists(run / "train")


def test_numpy_numbers_are_numbers_and_images_must_be_bytes(digits):
    ds, noisy = digits
    assert CoTeachingOptions(forget_rate=np.float32(0.3)).forget_rate == pytest.approx(0.3)
    assert fit_settings("train", (1, 8, 8), epochs=np.int64(2)).epochs == 2
    with pytest.raises(ParameterError, match="images must be uint8"):
        train_model(ds.X_train / 255.0, noisy, settings=_settings(epochs=1), device="cpu")


def test_channels_other_than_rgb_take_the_grey_row():
    from cleanpipe.recipes import DataKind, auto_model, data_kind

    assert data_kind((4, 32, 32)) == DataKind.GREY and auto_model((4, 32, 32)) == "small_cnn"
    assert data_kind((3, 16, 16)) == DataKind.SMALL  # tiny images, whatever their channels


def test_noisy_student_never_trains_on_the_rows_it_pseudo_labels(digits):
    ds, noisy = digits
    flagged = np.arange(100)
    result = train_model(ds.X_train, noisy, method="noisy-student",  # rows: all, flagged included
                         options=NoisyStudentOptions(iterations=1, unlabeled_rows=flagged), settings=_settings(epochs=1),
                         device="cpu")
    assert not set(result.rows) & set(flagged) and len(result.rows) == len(noisy) - 100


def test_run_names_its_own_flags_in_errors(tmp_path, cli):
    code, _, err = cli("run", tmp_path / "r", "--folds", 1, "--device", "cpu")
    assert code == 2 and "--folds must be at least 2" in err and "n_folds" not in err
