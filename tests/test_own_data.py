"""Cleaning a person's own data: every example checked, review -> apply -> train -> predict, and the errors on the way."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cleanpipe.data import DataSpec, load_dataset
from cleanpipe.errors import CleanpipeError
from cleanpipe.labels import read_labels

pytestmark = pytest.mark.timeout(300)


def _ok(cli, *args) -> str:
    code, out, err = cli(*args)
    assert code == 0, f"{args[0]} failed: {err}"
    return out


def _one_line_error(cli, *args) -> str:
    code, out, err = cli(*args)
    assert code == 2, (code, out, err)
    assert err.startswith("error:") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err + out
    return err


@pytest.fixture(scope="module")
def cancer_csv(tmp_path_factory) -> Path:
    """scikit-learn's breast-cancer data as a CSV with a named label column (569 rows, 30 features)."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer(as_frame=True)
    df = d.frame.rename(columns=lambda c: c.replace(" ", "_"))
    df["diagnosis"] = df.pop("target").map({0: "malignant", 1: "benign"})
    path = tmp_path_factory.mktemp("cancer") / "cancer.csv"
    df.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """An image folder of 3 classes x 50 digits (8 x 8 PNGs, one sub-folder per class name)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path_factory.mktemp("folder") / "digits"
    for name, k in (("zero", 0), ("one", 1), ("seven", 7)):
        (root / name).mkdir(parents=True)
        for j, img in enumerate(d.images[d.target == k][:50]):
            Image.fromarray((img * 255 / 16).astype(np.uint8)).save(root / name / f"{j:03d}.png")
    return root


# ---- every example checked ------------------------------------------------------------------------


def test_test_fraction_zero_checks_all_1797_digits(tmp_path, cli):
    run = tmp_path / "r"
    _ok(cli, "noise", run, "--dataset", "digits", "--test-fraction", "0", "--kind", "symmetric", "--rate", "0.05")
    dataset = json.loads((run / "dataset.json").read_text())
    assert dataset["n_train"] == 1797 and dataset["n_test"] == 0 and dataset["spec"]["test_fraction"] == 0
    _ok(cli, "crossval", run, "--epochs", "2", "--folds", "2")
    assert np.load(run / "crossval" / "pred_probs.npy").shape == (1797, 10)
    _ok(cli, "prune", run)
    report = pd.read_csv(run / "prune" / "label_issues.csv")
    assert len(report) == 1797 and sorted(report["index"]) == list(range(1797))
    out = _ok(cli, "train", run, "--method", "standard", "--epochs", "1")
    assert "test accuracy not measured" in " ".join(out.split())
    assert json.loads((run / "train" / "manifest.json").read_text())["metrics"]["test_accuracy"] is None
    assert "no test split" in _one_line_error(cli, "evaluate", run)
    _ok(cli, "report", run)  # the page says there is no test accuracy instead of failing


def test_run_on_your_own_table_adds_no_noise_and_says_so(tmp_path, cli, cancer_csv):
    run = tmp_path / "r"
    out = " ".join(_ok(cli, "run", run, "--dataset", "table", "--data", cancer_csv, "--label-column", "diagnosis",
                       "--method", "standard").split())
    assert not (run / "noise").exists()
    assert "labels as they are (no synthetic noise added)" in out
    flagged = json.loads((run / "prune" / "manifest.json").read_text())["metrics"]["n_issues"]
    assert flagged < 20  # real data with few errors, not 40% of injected flips
    err = _one_line_error(cli, "run", tmp_path / "r2", "--dataset", "table", "--data", cancer_csv,
                          "--label-column", "diagnosis", "--rate", "0.2")
    assert "--rate" in err and "--kind" in err
    assert not (tmp_path / "r2").exists()


def test_demo_data_still_gets_its_benchmark_noise(tmp_path):
    from cleanpipe.rundir import RunDir
    from cleanpipe.stages.pipeline import default_noise

    run = RunDir(tmp_path / "r")
    assert default_noise(run, DataSpec("digits"), None, None) == ("symmetric", 0.4)
    assert default_noise(run, DataSpec("digits", labels="mine.csv"), None, None) == ("none", 0.0)
    assert default_noise(run, DataSpec("npz", path="x.npz"), None, None) == ("none", 0.0)
    assert default_noise(run, DataSpec("npz", path="x.npz"), "pairflip", 0.3) == ("pairflip", 0.3)


def test_excluded_examples_are_minus_one_and_leave_the_training_split(tmp_path):
    labels = load_dataset(DataSpec("digits")).y_train.copy()
    labels[[3, 10]] = -1
    np.save(tmp_path / "y.npy", labels)
    with pytest.raises(CleanpipeError, match="must be >= 0"):
        read_labels(tmp_path / "y.npy")  # -1 means "excluded" only where a dataset can drop the row
    ds = load_dataset(DataSpec("digits", labels=str(tmp_path / "y.npy")))
    full = load_dataset(DataSpec("digits"))
    assert len(ds.y_train) == len(full.y_train) - 2 and ds.meta["n_excluded"] == 2
    assert full.ids_train[3] not in set(ds.ids_train) and len(ds.y_test) == len(full.y_test)


# ---- the loop end to end ---------------------------------------------------------------------------


def _corrections_from_review(run: Path, path: Path, class_names: list[str]) -> pd.DataFrame:
    """What a reviewer exports: accept the first flagged suggestion, exclude the second, keep the third."""
    page = (run / "review" / "review.html").read_text()
    data = json.loads(page.split('type="application/json">', 1)[1].split("</script>", 1)[0])
    items = data["items"]
    assert len(items) >= 3
    rows = [(items[0]["id"], "relabel", class_names[items[0]["suggested"]]),
            (items[1]["id"], "exclude", ""),
            (items[2]["id"], "keep", class_names[items[2]["given"]])]
    df = pd.DataFrame(rows, columns=["id", "decision", "label"])
    df.to_csv(path, index=False)
    return df


def _loop(cli, tmp_path, data_args: list, first_epochs: str):
    """crossval -> prune -> review -> corrections -> apply -> run on the corrected labels; returns (run2, corrections)."""
    run = tmp_path / "r1"
    _ok(cli, "crossval", run, *data_args, "--epochs", first_epochs, "--folds", "2")
    _ok(cli, "prune", run, "--method", "both")
    _ok(cli, "review", run, "--also", "3")
    names = json.loads((run / "dataset.json").read_text())["class_names"]
    corrections = _corrections_from_review(run, tmp_path / "corrections.csv", names)
    out = " ".join(_ok(cli, "apply", run, tmp_path / "corrections.csv", "--out", tmp_path / "fixed.csv").split())
    assert "1 relabeled" in out and "1 kept" in out and "1 excluded" in out
    metrics = json.loads((run / "apply" / "manifest.json").read_text())["metrics"]
    assert (metrics["n_relabeled"], metrics["n_kept"], metrics["n_excluded"]) == (1, 1, 1)
    fixed = pd.read_csv(tmp_path / "fixed.csv", dtype=str).set_index("id")["label"]
    assert fixed[corrections.loc[1, "id"]] == "-1" and fixed[corrections.loc[0, "id"]] == corrections.loc[0, "label"]
    run2 = tmp_path / "r2"
    _ok(cli, "run", run2, *data_args, "--labels", tmp_path / "fixed.csv", "--method", "standard")
    dataset = json.loads((run2 / "dataset.json").read_text())
    assert dataset["meta"]["n_excluded"] == 1 and dataset["n_train"] == json.loads((run / "dataset.json").read_text())["n_train"] - 1
    assert not (run2 / "noise").exists()
    ids2 = set(pd.read_csv(run2 / "prune" / "label_issues.csv", dtype={"id": str})["id"])
    assert corrections.loc[1, "id"] not in ids2  # the excluded example is in no later stage
    return run2, corrections


def _evaluated(cli, run: Path) -> float:
    out = _ok(cli, "evaluate", run)
    return float(out.split("test accuracy")[1].split()[0])


def test_loop_on_a_csv_table_and_predict_agrees_with_evaluate(tmp_path, cli, cancer_csv):
    data_args = ["--dataset", "table", "--data", cancer_csv, "--label-column", "diagnosis"]
    run2, _ = _loop(cli, tmp_path, data_args, "20")
    ds = load_dataset(DataSpec.from_json(json.loads((run2 / "dataset.json").read_text())["spec"]))
    table = pd.read_csv(cancer_csv)
    test_rows = table.iloc[ds.ids_test.astype(int)].drop(columns=["diagnosis"]).iloc[:, ::-1]  # columns by name
    test_rows.to_csv(tmp_path / "new.csv", index=False)
    _ok(cli, "predict", run2, "--data", tmp_path / "new.csv", "--out", tmp_path / "pred.csv", "--probs")
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert list(pred.columns) == ["id", "predicted_label", "predicted_class", "confidence", "p_benign", "p_malignant"]
    assert np.allclose(pred[["p_benign", "p_malignant"]].sum(axis=1), 1, atol=1e-5)
    assert np.mean(pred["predicted_label"].to_numpy() == ds.y_test) == pytest.approx(_evaluated(cli, run2), abs=1e-4)


def test_loop_on_an_image_folder_and_predict_agrees_with_evaluate(tmp_path, cli, digit_folder):
    data_args = ["--dataset", "folder", "--data", digit_folder, "--image-size", "16", "--test-fraction", "0.25"]
    run2, _ = _loop(cli, tmp_path, data_args, "15")
    ds = load_dataset(DataSpec.from_json(json.loads((run2 / "dataset.json").read_text())["spec"]))
    new = tmp_path / "new"
    for i in ds.ids_test:  # the test split's files, as new data in a folder of their own
        (new / i).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(digit_folder / i, new / i)
    _ok(cli, "predict", run2, "--data", new)
    pred = pd.read_csv(run2 / "predict" / "predictions.csv", dtype={"id": str}).set_index("id").loc[list(ds.ids_test)]
    assert set(pred["predicted_class"]) <= {"one", "seven", "zero"}
    assert np.mean(pred["predicted_label"].to_numpy() == ds.y_test) == pytest.approx(_evaluated(cli, run2), abs=1e-4)


# ---- what a user can get wrong ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_table_run(tmp_path_factory, cancer_csv) -> Path:
    from typer.testing import CliRunner

    from cleanpipe.cli import app

    run = tmp_path_factory.mktemp("trained") / "run"
    result = CliRunner().invoke(app, [str(a) for a in ("run", run, "--dataset", "table", "--data", cancer_csv,
                                                       "--label-column", "diagnosis", "--method", "standard")])
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.parametrize("text, message", [
    ("id,decision,label\n99999,relabel,benign\n", "not training examples"),
    ("id,decision,label\n0,relabel,tumour\n", "unknown class 'tumour'"),
    ("id,decision,label\n0,exclude,\n0,keep,\n", "appears twice"),
    ("id,verdict,label\n0,keep,\n", "no decision column"),
    ("id,decision,label\n0,delete,\n", "is not one of keep, relabel, exclude"),
    ('id,decision,label\n0,"keep\n', "not a readable CSV"),
    ("\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "corrections file"),
])
def test_apply_refuses_bad_corrections_in_one_line_and_writes_nothing(tmp_path, cli, trained_table_run, text, message):
    run = tmp_path / "run"
    shutil.copytree(trained_table_run, run)
    ids = pd.read_csv(run / "prune" / "label_issues.csv", dtype={"id": str})["id"]
    text = text.replace("\n0,", f"\n{ids[0]},")
    (tmp_path / "c.csv").write_bytes(text.encode("latin-1"))
    err = _one_line_error(cli, "apply", run, tmp_path / "c.csv", "--out", tmp_path / "fixed.csv")
    assert message in err
    assert not (tmp_path / "fixed.csv").exists() and not (run / "apply").exists()


def test_apply_and_predict_refuse_bad_paths(tmp_path, cli, trained_table_run, cancer_csv):
    run = trained_table_run
    (tmp_path / "c.csv").write_text("id,decision,label\n")
    for args, message in [
        (("apply", run, tmp_path / "c.csv", "--out", tmp_path / "missing" / "fixed.csv"), "folder does not exist"),
        (("apply", run, tmp_path / "c.csv", "--out", tmp_path / "fixed.txt"), ".npy, .csv or .json"),
        (("apply", run, tmp_path / "none.csv", "--out", tmp_path / "fixed.csv"), "no such file"),
        (("apply", tmp_path / "empty-run", tmp_path / "c.csv", "--out", tmp_path / "fixed.csv"), "no dataset"),
        (("predict", run, "--data", cancer_csv, "--out", tmp_path / "missing" / "p.csv"), "folder does not exist"),
        (("predict", run, "--data", cancer_csv, "--out", tmp_path / "p.txt"), "CSV"),
        (("predict", run, "--data", tmp_path / "nothing.csv"), "no such file"),
        (("predict", run, "--data", cancer_csv, "--dataset", "npz"), "not an .npz"),
        (("predict", run, "--data", cancer_csv, "--dataset", "mnist"), "--dataset must be folder, npz or table"),
        (("review", tmp_path / "empty-run"), "no prune stage"),
    ]:
        assert message in _one_line_error(cli, *args), args
    assert not any(tmp_path.glob("**/fixed.*")) and not any(tmp_path.glob("**/p.*"))
    assert not (tmp_path / "empty-run").exists()


def test_predict_refuses_data_unlike_the_runs_and_a_missing_or_foreign_model(tmp_path, cli, trained_table_run, cancer_csv):
    run = tmp_path / "run"
    shutil.copytree(trained_table_run, run)
    pd.read_csv(cancer_csv).drop(columns=["mean_radius", "diagnosis"]).to_csv(tmp_path / "fewer.csv", index=False)
    assert "lacks the run's feature column(s) mean_radius" in _one_line_error(cli, "predict", run, "--data", tmp_path / "fewer.csv")
    np.savez(tmp_path / "wide.npz", X=np.zeros((4, 31), dtype=np.float32))
    assert "(31,) per example but the run's data is features (30,)" in _one_line_error(cli, "predict", run, "--data", tmp_path / "wide.npz")
    np.savez(tmp_path / "images.npz", X=np.zeros((4, 1, 8, 8), dtype=np.uint8))
    assert "uint8 images" in _one_line_error(cli, "predict", run, "--data", tmp_path / "images.npz")
    (tmp_path / "model.pt").write_bytes(b"not a model")
    assert "not a cleanpipe model" in _one_line_error(cli, "predict", run, "--data", cancer_csv, "--checkpoint", tmp_path / "model.pt")
    shutil.rmtree(run / "train")
    assert "no train stage" in _one_line_error(cli, "predict", run, "--data", cancer_csv)
    assert not (run / "predict").exists()


# ---- label files that round-trip -------------------------------------------------------------------


def test_class_names_that_look_like_numbers_or_missing_values_round_trip(tmp_path):
    from cleanpipe.labels import write_labels

    names = ["1", "0", "NA", "True", "a, b"]  # read as names, never as numbers, NaN or booleans
    labels = np.array([0, 1, 2, 3, 4, -1, 1, 0])
    ids = [f"x{i}" for i in range(len(labels))]
    for suffix in (".csv", ".json", ".npy"):
        write_labels(tmp_path / f"y{suffix}", ids, labels, names)
        back = read_labels(tmp_path / f"y{suffix}", n=len(ids), ids=ids, class_names=names, allow_excluded=True)
        assert back.tolist() == labels.tolist(), suffix
    with pytest.raises(CleanpipeError, match="write a .json or .npy"):  # a class named -1 and an exclusion: ambiguous in a CSV
        write_labels(tmp_path / "z.csv", ids[:2], np.array([0, -1]), ["-1", "1"])
    assert not (tmp_path / "z.csv").exists()


def test_a_second_review_round_keeps_the_first_rounds_exclusions_in_every_format(tmp_path, cli, trained_table_run, cancer_csv):
    run = tmp_path / "run"
    shutil.copytree(trained_table_run, run)
    ids = pd.read_csv(run / "prune" / "label_issues.csv", dtype={"id": str})["id"].tolist()
    (tmp_path / "c1.csv").write_text(f"id,decision,label\n{ids[0]},exclude,\n{ids[1]},relabel,benign\n{ids[2]},skip,\n")
    _ok(cli, "apply", run, tmp_path / "c1.csv", "--out", tmp_path / "round1.json")
    assert json.loads((tmp_path / "round1.json").read_text())[ids[0]] == -1
    run2 = tmp_path / "run2"
    data = ["--dataset", "table", "--data", cancer_csv, "--label-column", "diagnosis"]
    _ok(cli, "crossval", run2, *data, "--labels", tmp_path / "round1.json", "--epochs", "5", "--folds", "2")
    _ok(cli, "prune", run2)
    ids2 = pd.read_csv(run2 / "prune" / "label_issues.csv", dtype={"id": str})["id"].tolist()
    assert ids[0] not in ids2 and len(ids2) == len(ids) - 1
    (tmp_path / "c2.csv").write_text(f"id,decision,label\n{ids2[0]},exclude,\n")
    assert ids2[0] != ids[0]
    _ok(cli, "apply", run2, tmp_path / "c2.csv", "--out", tmp_path / "round2.npy")
    round2 = np.load(tmp_path / "round2.npy")
    full = load_dataset(DataSpec("table", path=str(cancer_csv), label_column="diagnosis"))
    assert len(round2) == len(full.y_train)  # the whole training split, in the source's order
    position = {i: k for k, i in enumerate(full.ids_train)}
    assert round2[position[ids[0]]] == -1 and round2[position[ids2[0]]] == -1  # both rounds' exclusions
    assert (round2 == -1).sum() == 2 and round2[position[ids[1]]] == full.class_names.index("benign")


def test_run_without_kind_keeps_a_noise_stage_the_run_already_has(tmp_path, cli, cancer_csv):
    run = tmp_path / "r"
    data = ["--dataset", "table", "--data", cancer_csv, "--label-column", "diagnosis"]
    _ok(cli, "noise", run, *data, "--kind", "symmetric", "--rate", "0.2")
    before = (run / "noise" / "noisy_labels.npy").read_bytes()
    out = " ".join(_ok(cli, "run", run, *data, "--method", "standard").split())
    assert "20% synthetic symmetric noise added" in out and "noise: up to date, skipped" in out
    assert (run / "noise" / "noisy_labels.npy").read_bytes() == before
