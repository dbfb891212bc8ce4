"""Noisy Student: the paper's rules on the array helpers and the loss, model noise, and the train stage end to end."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cleanpipe.robust.noisystudent import (
    NoisyStudentLoss,
    balance_copies,
    balance_targets,
    decide,
    soften,
    targets,
)


def test_temperature_on_probabilities_is_softmax_of_logits_over_t():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(50, 7)) * 3
    p = torch.softmax(torch.tensor(logits), 1).numpy()
    for T in (0.5, 1.0, 2.0):
        want = torch.softmax(torch.tensor(logits) / T, 1).numpy()
        np.testing.assert_allclose(soften(p, T), want, atol=1e-6)
    np.testing.assert_allclose(soften(p, 1.0), p, atol=1e-6)
    hard = targets(p, soft=False, smoothing=0.1)
    assert np.allclose(hard.sum(1), 1) and np.all(hard.argmax(1) == p.argmax(1))
    np.testing.assert_allclose(hard.max(1), 0.9 + 0.1 / 7, rtol=1e-6)
    with pytest.raises(ValueError):
        soften(p, 0.0)


def test_loss_is_the_average_over_the_concatenated_batch():
    """Spec 6.1: labeled batch 2, r = 3 (6 pseudo-labeled rows): mean_lab + 3 mean_unl = (sum of 8 rows) / 2."""
    from cleanpipe.engine.method import Step

    torch.manual_seed(0)
    K, N = 4, 8
    pseudo = np.array([False, False] + [True] * 6)
    rng = np.random.default_rng(1)
    table = targets(np.eye(K, dtype=np.float32)[rng.integers(0, K, N)], soft=False)
    table[pseudo] = soften(rng.dirichlet(np.ones(K), 6), 1.0)
    method = NoisyStudentLoss(table, pseudo, noise=False)

    class Data:
        device = torch.device("cpu")
        is_image = False

    method.bind(Data(), None, None)
    net = torch.nn.Linear(3, K)
    x = torch.randn(N, 3)
    loss, logits = method.loss(Step([net], x, torch.zeros(N, dtype=torch.long), torch.arange(N), 0, 0, 1))
    per_row = -(torch.tensor(table) * torch.log_softmax(net(x), 1)).sum(1)
    lab, unl = per_row[:2].mean(), per_row[2:].mean()
    torch.testing.assert_close((lab + 3 * unl), per_row.sum() / 2)
    torch.testing.assert_close(loss, per_row.sum() / 2 / (1 + 3))  # the same objective up to the constant 1 + r
    assert method.epoch_metrics()["pseudo_share"] == pytest.approx(6 / 8)


def test_balance_copies_follow_the_filter_of_the_reference():
    """Spec 6.3: A has 1,000 rows at >= 0.9, B 100 at 0.5, C 50 below 0.3; 200 wanted per class."""
    pred = np.array([0] * 1000 + [1] * 100 + [2] * 50)
    conf = np.concatenate([np.full(1000, 0.95), np.full(100, 0.5), np.full(50, 0.2)])
    usable = conf >= 0.3
    totals = [balance_copies(pred, usable, np.full(3, 200.0), max_copies=3, rng=np.random.default_rng(s))
              for s in range(20)]
    a = np.array([c[:1000].sum() for c in totals])
    assert abs(a.mean() - 200) < 10 and set(np.unique(np.concatenate([c[:1000] for c in totals]))) <= {0, 1}
    assert all(np.all(c[1000:1100] == 2) for c in totals)  # B: exactly 2 copies each
    assert all(np.all(c[1100:] == 0) for c in totals)  # C: below the threshold
    capped = balance_copies(pred, usable, np.full(3, 1000.0), max_copies=3, rng=np.random.default_rng(0))
    assert capped[1000:1100].max() == 3  # 10 copies wanted, 3 allowed
    same = balance_copies(pred, usable, np.full(3, 200.0), max_copies=3, rng=np.random.default_rng(5))
    assert np.array_equal(same, totals[5])
    np.testing.assert_allclose(balance_targets("prior", 100, np.array([30.0, 10.0])), [75, 25])
    np.testing.assert_allclose(balance_targets("uniform", 100, np.array([30.0, 10.0])), [50, 50])
    assert balance_targets("none", 100, np.array([30.0, 10.0])) is None


def test_decisions():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.1, 0.9]])
    label, conf, decision = decide(np.array([0, 0, 1, 1]), probs, threshold=0.6)
    assert label.tolist() == [0, 1, 0, 1]
    assert decision.tolist() == ["confirm", "relabel", "unresolved", "confirm"]
    np.testing.assert_allclose(conf, [0.9, 0.8, 0.55, 0.9])


def test_stochastic_depth_is_linear_in_depth_and_dropout_sits_before_the_head():
    """Spec 6.4: of 16 blocks, block i drops with 0.2 i / 16, the last 0.1875; both noises are off in eval mode."""
    from cleanpipe.models import add_model_noise, build_model
    from cleanpipe.models.nets import BasicBlock

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.Sequential(*[BasicBlock(4, 4, 1) for _ in range(16)])
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.blocks(x).mean((2, 3)))

    net = Net()
    keys = set(net.state_dict())
    info = add_model_noise(net, dropout=0.5, stochastic_depth=0.2)
    assert info == {"dropout": 0.5, "stochastic_depth_blocks": 15}
    rates = [b.drop_path for b in net.blocks]
    np.testing.assert_allclose(rates, [0.2 * i / 16 for i in range(16)])
    assert rates[-1] == pytest.approx(0.1875) and set(net.state_dict()) == keys  # saved weights unchanged
    x = torch.randn(8, 4, 5, 5)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(0)
    assert not torch.equal(net(x), net(x))
    # A strided first block or a projection keeps its full branch.
    resnet = build_model("resnet32", (3, 32, 32), 10)
    add_model_noise(resnet, stochastic_depth=0.2)
    assert all(b.drop_path == 0 for b in resnet.modules() if hasattr(b, "identity_skip") and not b.identity_skip)
    # Dropout on the head's input: half the features zeroed in training, none in eval.
    seen = []
    mlp = build_model("mlp", (6,), 2)
    add_model_noise(mlp, dropout=0.5)
    mlp.head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    mlp.train()
    mlp(torch.randn(64, 6))
    mlp.eval()
    mlp(torch.randn(64, 6))
    kept = (seen[0] != 0).float().mean() / (seen[1] != 0).float().mean()
    assert 0.35 < kept < 0.65


def _digits_prune_run(tmp_path, cli, name="run", rate=0.4):
    run = tmp_path / name
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", rate)[0] == 0
    assert cli("crossval", run, "--folds", 2, "--device", "cpu")[0] == 0
    assert cli("prune", run, "--top", 0)[0] == 0
    return run


def test_train_stage_relabels_the_flagged_examples(tmp_path, cli):
    from cleanpipe.labels import read_labels
    from cleanpipe.rundir import RunDir

    run = _digits_prune_run(tmp_path, cli)
    fixed = tmp_path / "fixed.csv"
    code, out, err = cli("train", run, "--method", "noisy-student", "--epochs", 10, "--iterations", 2, "--device", "cpu",
                         "--write-labels", fixed)
    assert code == 0, err
    assert "relabel.csv" in out and "student 2" in out
    keep = np.load(run / "prune" / "keep_mask.npy")
    rel = pd.read_csv(run / "train" / "relabel.csv")
    assert sorted(rel["index"]) == np.flatnonzero(~keep).tolist()  # every flagged example, once
    assert {"id", "given_label", "pseudo_label", "confidence", "decision", "teacher_label", "teacher_confidence",
            "true_label", "is_true_error"} <= set(rel.columns)
    assert set(rel.decision) <= {"relabel", "confirm", "unresolved"}
    assert np.all((rel.decision == "unresolved") == (rel.confidence < 0.3))
    assert np.all((rel.decision == "confirm") == ((rel.pseudo_label == rel.given_label) & (rel.confidence >= 0.3)))
    man = json.loads((run / "train" / "manifest.json").read_text())
    m = man["metrics"]
    assert [r["iteration"] for r in m["iterations"]] == [0, 1, 2] and m["n_train"] == int(keep.sum())
    assert m["n_relabel"] == int((rel.decision == "relabel").sum()) and m["n_flagged"] == len(rel)
    relabelled = rel[rel.decision == "relabel"]
    assert m["relabel_accuracy"] == pytest.approx(np.mean(relabelled.pseudo_label == relabelled.true_label), abs=1e-6)
    # Most flagged examples were flagged because their label was wrong: the relabels fix most of them.
    assert m["relabel_accuracy"] > 0.8 and m["label_accuracy_corrected"] > m["label_accuracy_given"]
    history = pd.read_csv(run / "train" / "history.csv")
    assert history.iteration.tolist() == [0] * 10 + [1] * 10 + [2] * 10 and "pseudo_share" in history
    with np.load(run / "train" / "relabel_probs.npz") as z:  # no pickles
        assert z["student"].shape == (len(rel), 10) and np.allclose(z["teacher"].sum(1), 1, atol=1e-5)
    # The corrected labels read back as a --labels file: relabels applied, everything else as given.
    _, ds, _ = RunDir(run).bind_dataset(None)
    corrected = read_labels(fixed, n=len(ds.y_train), ids=ds.ids_train, class_names=ds.class_names)
    given = np.load(run / "noise" / "noisy_labels.npy")
    want = given.copy()
    want[relabelled["index"].to_numpy()] = relabelled.pseudo_label.to_numpy()
    assert np.array_equal(corrected, want)


def test_same_seed_same_relabel_csv(tmp_path, cli):
    a = _digits_prune_run(tmp_path, cli, "a")
    import shutil

    b = tmp_path / "b"
    shutil.copytree(a, b)
    for run in (a, b):
        code, _, err = cli("train", run, "--method", "noisy-student", "--epochs", 2, "--iterations", 1, "--device", "cpu")
        assert code == 0, err
    assert (a / "train" / "relabel.csv").read_bytes() == (b / "train" / "relabel.csv").read_bytes()


def test_clear_errors_and_no_partial_outputs(tmp_path, cli):
    run = _digits_prune_run(tmp_path, cli)
    for args, needle in [(("--subset", "all"), "--subset all"), (("--threshold", 1.5), "--threshold"),
                         (("--write-labels", tmp_path / "x.txt"), ".npy, .csv or .json"),
                         (("--write-labels", tmp_path / "nowhere" / "x.csv"), "folder does not exist"),
                         (("--unlabeled", tmp_path / "missing.npz"), "no such file"),
                         (("--iterations", 0), "--iterations"), (("--student-model", "huge"), "--student-model"), (("--balance", "--balance-to", "most"), "--balance-to")]:
        code, _, err = cli("train", run, "--method", "noisy-student", "--epochs", 1, "--device", "cpu", *args)
        assert code == 2 and needle in err and "Traceback" not in err, (args, err)
        assert not (run / "train").exists()
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, X=np.zeros((5, 1, 9, 9), np.uint8))
    code, _, err = cli("train", run, "--method", "noisy-student", "--epochs", 1, "--device", "cpu", "--unlabeled", wrong)
    assert code == 2 and "shaped like the run's" in err and not (run / "train").exists()


def test_table_dataset_runs_the_whole_pipeline_with_extra_unlabeled_rows(tmp_path, cli):
    """scikit-learn's wine data as a CSV with 30% noise: noise, crossval, prune, Noisy Student with extra rows."""
    from sklearn.datasets import load_wine

    X, y = load_wine(return_X_y=True, as_frame=True)
    table = X.assign(label=y)
    csv = tmp_path / "wine.csv"
    table.iloc[:150].to_csv(csv, index=False)
    extra = tmp_path / "more.csv"
    table.iloc[150:].drop(columns="label").to_csv(extra, index=False)  # unlabeled rows with the same columns
    run = tmp_path / "wine"
    assert cli("noise", run, "--dataset", "table", "--data", csv, "--kind", "symmetric", "--rate", 0.3)[0] == 0
    assert cli("crossval", run, "--folds", 3, "--device", "cpu")[0] == 0
    assert cli("prune", run, "--top", 0)[0] == 0
    code, out, err = cli("train", run, "--method", "noisy-student", "--epochs", 20, "--device", "cpu",
                         "--unlabeled", extra, "--balance")
    assert code == 0, err
    rel = pd.read_csv(run / "train" / "relabel.csv")
    keep = np.load(run / "prune" / "keep_mask.npy")
    assert len(rel) == int((~keep).sum()) > 0
    unl = pd.read_csv(run / "train" / "unlabeled_labels.csv")
    assert len(unl) == 28 and unl["id"].str.startswith("unlabeled/").all()
    m = json.loads((run / "train" / "manifest.json").read_text())["metrics"]
    assert m["label_accuracy_corrected"] > m["label_accuracy_given"]
    assert m["model_noise"]["dropout"] == 0.2


def test_an_interrupted_run_resumes_from_its_finished_teacher(tmp_path, cli):
    """Stopped while the student starts: the finished teacher is kept and reused, and the result is the uninterrupted one's."""
    import shutil

    from cleanpipe.progress import NullProgress
    from cleanpipe.robust import NoisyStudentOptions
    from cleanpipe.rundir import RunDir
    from cleanpipe.stages.train import run_train_stage

    a = _digits_prune_run(tmp_path, cli, "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)

    class StopAtStudent(NullProgress):
        def start(self, label, total, level=0):
            if label.startswith("student"):
                raise KeyboardInterrupt

    opts = NoisyStudentOptions(iterations=1)
    with pytest.raises(KeyboardInterrupt):
        run_train_stage(RunDir(a), "noisy-student", options=opts, epochs=2, device="cpu", progress=StopAtStudent())
    assert not (a / "train" / "manifest.json").exists() and list((a / "train" / "resume").glob("*.done.pt"))
    started = []

    class Watch(NullProgress):
        def start(self, label, total, level=0):
            started.append(label)

    run_train_stage(RunDir(a), "noisy-student", options=opts, epochs=2, device="cpu", progress=Watch())
    assert started == ["student 1/1 epochs"]  # the teacher was not trained again
    run_train_stage(RunDir(b), "noisy-student", options=opts, epochs=2, device="cpu")
    assert (a / "train" / "relabel.csv").read_bytes() == (b / "train" / "relabel.csv").read_bytes()
    assert not (a / "train" / "resume").exists()  # the finished stage keeps no resume state
    assert cli("report", a)[0] == 0  # the report plots the teacher's and the student's epochs end to end
