"""The train stage: Co-teaching's exchange, its variants, `cleanpipe train`, `evaluate` and `run`."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cleanpipe.engine import Step
from cleanpipe.robust.coteaching import (
    CoTeaching,
    CoTeachingOptions,
    CoTeachingPlus,
    IncvCoTeaching,
    incv_forget_rate,
)


def _step(nets, n=32, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return Step(nets, x, y, torch.arange(n), epoch=0, step=0, total_steps=1)


def _nets(k=4, seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Linear(5, k), torch.nn.Linear(5, k)]


def test_each_network_learns_from_its_peers_small_loss_picks():
    nets = _nets()
    step = _step(nets)
    method = CoTeaching(forget_rate=0.25, ramp_epochs=1, selection="batch")  # the papers' rule
    method.start_epoch(1, 10)  # past the ramp: drop a quarter
    loss, _ = method.loss(step)
    loss.backward()
    got = [p.grad.clone() for p in nets[0].parameters()]
    # By hand: net 2's 24 smallest losses train net 1.
    ce2 = F.cross_entropy(nets[1](step.x), step.y, reduction="none").detach()
    picks = ce2.argsort()[:24]
    for p in nets[0].parameters():
        p.grad = None
    F.cross_entropy(nets[0](step.x[picks]), step.y[picks]).backward()
    for a, p in zip(got, nets[0].parameters()):
        assert torch.allclose(a, p.grad, atol=1e-6)


def test_class_balanced_picks_spread_over_the_given_classes():
    from cleanpipe.robust.coteaching import _smallest

    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0] * 20 + [1] * 20 + [2] * 10)
    # Class 0's losses are all below class 1's, which are all below class 2's: the papers' rule keeps
    # only class 0, the class-balanced rule a share of each class's batch count.
    loss = torch.rand(50, generator=g) + 2.0 * y.float()
    batch = _smallest(loss, 25)
    assert [int(batch[y == c].sum()) for c in range(3)] == [20, 5, 0]
    keep = _smallest(loss, 25, labels=y, n_classes=3)
    assert int(keep.sum()) == 25
    assert [int(keep[y == c].sum()) for c in range(3)] == [10, 10, 5]
    for c in range(3):  # within a class, the smallest losses
        lc, kc = loss[y == c], keep[y == c]
        assert lc[kc].max() < lc[~kc].min()
    # Only eligible examples are kept, ranked within the eligible part of their class.
    eligible = torch.ones(50, dtype=torch.bool)
    eligible[:15] = False  # class 0 keeps 5 eligible examples
    keep = _smallest(loss, 14, eligible, labels=y, n_classes=3)
    assert not keep[:15].any() and int(keep.sum()) == 14
    assert [int(keep[y == c].sum()) for c in range(3)] == [2, 8, 4]


def test_coteaching_defaults_to_class_balanced_picks():
    nets = _nets()
    step = _step(nets, n=40)
    method = CoTeaching(forget_rate=0.5, ramp_epochs=1)
    method.start_epoch(1, 10)
    logits1, logits2 = nets[0](step.x), nets[1](step.x)
    ce1 = F.cross_entropy(logits1, step.y, reduction="none")
    ce2 = F.cross_entropy(logits2, step.y, reduction="none")
    pick1, _ = method._pick(ce1, ce2, step, logits1, logits2)
    counts = torch.bincount(step.y, minlength=4)
    kept = torch.bincount(step.y[pick1], minlength=4)
    assert int(pick1.sum()) == 20
    assert torch.all((kept - 0.5 * counts).abs() <= 1)
    with pytest.raises(ValueError, match="selection"):  # the options validate the method's settings
        CoTeachingOptions(selection="per-class")


def test_forget_rate_ramps_linearly_to_its_target():
    method = CoTeaching(forget_rate=0.4, ramp_epochs=4)
    rates = []
    for e in range(6):
        method.start_epoch(e, 6)
        rates.append(method.epoch_metrics()["forget_rate"])
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.4])


def test_coteaching_plus_learns_nothing_where_the_networks_agree():
    nets = _nets()
    nets[1].load_state_dict(nets[0].state_dict())  # identical networks agree everywhere
    method = CoTeachingPlus(forget_rate=0.2, ramp_epochs=1, init_epoch=0)
    method.start_epoch(3, 10)
    loss, _ = method.loss(_step(nets))
    assert float(loss.detach()) == 0.0
    # Before init_epoch it is plain Co-teaching.
    method = CoTeachingPlus(forget_rate=0.2, ramp_epochs=1, init_epoch=5)
    method.start_epoch(3, 10)
    assert float(method.loss(_step(nets))[0].detach()) > 0


def test_incv_coteaching_warms_up_on_the_selected_set_and_keeps_by_its_share():
    selected, candidates = np.arange(0, 16), np.arange(16, 32)
    method = IncvCoTeaching(0.5, selected, candidates, warmup_epochs=2, ramp_epochs=1)
    assert method.epoch_rows(2) is None and set(method.epoch_rows(3)) == set(range(32))
    method.start_epoch(5, 10)
    nets = _nets()
    step = _step(nets)  # rows 0..31: 16 selected -> keep round(0.5 * 16) = 8 per network
    logits1, logits2 = nets[0](step.x), nets[1](step.x)
    pick1, pick2 = method._pick(F.cross_entropy(logits1, step.y, reduction="none"),
                                F.cross_entropy(logits2, step.y, reduction="none"), step, logits1, logits2)
    assert int(pick1.sum()) == 8 and int(pick2.sum()) == 8


def test_incv_forget_rate_matches_the_spec_table():
    # Spec B.2 / A.5's table: sym 0.2 -> 0.0069, sym 0.5 -> 0.100, sym 0.8 -> 0.640, asym (eps 0.286) -> 0.138.
    assert incv_forget_rate(0.2, 10) == pytest.approx(0.0069, abs=1e-4)
    assert incv_forget_rate(0.5, 10) == pytest.approx(0.1, abs=1e-9)
    assert incv_forget_rate(0.8, 10) == pytest.approx(0.64, abs=1e-9)
    assert incv_forget_rate(0.286, 10, symmetric=False) == pytest.approx(0.138, abs=1e-3)


@pytest.fixture(scope="module")
def pruned_digits(tmp_path_factory):
    """A digits run with 40% symmetric noise through crossval (3 folds) and prune."""
    from typer.testing import CliRunner

    from cleanpipe.cli import app

    run = tmp_path_factory.mktemp("train") / "base"
    runner = CliRunner()
    for args in (["noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", "0.4"],
                 ["crossval", run, "--folds", "3", "--device", "cpu"], ["prune", run, "--top", "0"]):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.stderr
    return run


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


def test_coteaching_on_the_kept_data_writes_model_history_and_accuracy(pruned_digits, tmp_path, cli):
    run = _copy(pruned_digits, tmp_path)
    code, out, err = cli("train", run, "--method", "coteaching", "--epochs", 8, "--device", "cpu")
    assert code == 0, err
    man = json.loads((run / "train" / "manifest.json").read_text())
    prune = json.loads((run / "prune" / "manifest.json").read_text())["metrics"]
    assert man["parameters"]["forget_rate"] == pytest.approx(prune["estimated_noise_rate_kept"])
    assert man["metrics"]["n_train"] == int(np.load(run / "prune" / "keep_mask.npy").sum())
    assert man["metrics"]["test_accuracy"] >= 0.9
    import pandas as pd

    history = pd.read_csv(run / "train" / "history.csv")
    assert list(history.epoch) == list(range(1, 9))
    assert {"loss", "train_accuracy", "test_accuracy", "forget_rate", "pure_ratio"} <= set(history.columns)
    assert history.forget_rate.iloc[-1] == pytest.approx(man["parameters"]["forget_rate"], abs=1e-6)
    state = torch.load(run / "train" / "model.pt", weights_only=True)
    assert state["model"] == man["parameters"]["model"] and state["n_classes"] == 10
    code, out, err = cli("evaluate", run, "--device", "cpu")
    assert code == 0, err
    assert f"{man['metrics']['test_accuracy']:.4f}" in out


def test_same_seed_same_model(pruned_digits, tmp_path, cli):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(pruned_digits, a)
    shutil.copytree(pruned_digits, b)
    for run in (a, b):
        assert cli("train", run, "--method", "coteaching-plus", "--epochs", 3, "--device", "cpu")[0] == 0
    sa = torch.load(a / "train" / "model.pt", weights_only=True)["state_dict"]
    sb = torch.load(b / "train" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_standard_on_all_noisy_labels_needs_no_prune_stage(tmp_path, cli):
    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.4)[0] == 0
    code, out, err = cli("train", run, "--subset", "all", "--epochs", 2, "--device", "cpu")
    assert code == 0, err
    m = json.loads((run / "train" / "manifest.json").read_text())["metrics"]
    assert m["n_train"] == 1437 and m["train_noise_rate_true"] == pytest.approx(0.4, abs=0.01)


def test_missing_stale_or_wrong_prune_stage_is_one_clear_line(pruned_digits, tmp_path, cli):
    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.4)[0] == 0
    code, out, err = cli("train", run, "--method", "coteaching")
    assert code == 2 and "cleanpipe prune" in err and len(err.strip().splitlines()) == 1
    stale = _copy(pruned_digits, tmp_path)
    code, out, err = cli("train", stale, "--method", "incv-coteaching")
    assert code == 2 and "--method incv" in err and len(err.strip().splitlines()) == 1
    assert cli("noise", stale, "--kind", "symmetric", "--rate", 0.4, "--seed", 7)[0] == 0  # new labels
    code, out, err = cli("train", stale, "--method", "standard")
    assert code == 2 and "stale" in err and len(err.strip().splitlines()) == 1
    for bad in (("--method", "mixup"), ("--subset", "some"), ("--method", "coteaching", "--forget-rate", 1.5),
                ("--epochs", 0)):
        code, out, err = cli("train", stale, *bad)
        assert code == 2 and len(err.strip().splitlines()) == 1, bad
    assert not (run / "train").exists() and not (stale / "train").exists()


def test_incv_coteaching_after_an_incv_prune(tmp_path, cli):
    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.4)[0] == 0
    assert cli("prune", run, "--method", "incv", "--iterations", 1, "--epochs", 10, "--device", "cpu")[0] == 0
    code, out, err = cli("train", run, "--method", "incv-coteaching", "--epochs", 6, "--device", "cpu")
    assert code == 0, err
    man = json.loads((run / "train" / "manifest.json").read_text())
    prune = json.loads((run / "prune" / "manifest.json").read_text())["metrics"]
    assert man["parameters"]["forget_rate"] == pytest.approx(incv_forget_rate(prune["eval_ratio"], 10), abs=1e-6)
    assert man["parameters"]["warmup_epochs"] >= 1 and man["metrics"]["n_train"] == prune["n_selected"]


def test_interrupted_training_resumes_to_the_same_model(pruned_digits, tmp_path, cli, monkeypatch):
    import cleanpipe.engine.loop as loop
    import cleanpipe.robust.base as base

    monkeypatch.setattr(base, "CHECKPOINT_EVERY_S", 0.0)  # checkpoint every epoch
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(pruned_digits, a)
    shutil.copytree(pruned_digits, b)
    args = ("--method", "coteaching", "--epochs", 5, "--device", "cpu")
    assert cli("train", a, *args)[0] == 0
    save, saves = loop._save_checkpoint, []

    def save_then_interrupt(*a_, **k):
        save(*a_, **k)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_interrupt)
    code, out, err = cli("train", b, *args)
    assert code == 130 and "interrupted" in err and not (b / "train" / "manifest.json").exists()
    monkeypatch.setattr(loop, "_save_checkpoint", save)
    assert cli("train", b, *args)[0] == 0
    import pandas as pd

    ha, hb = (pd.read_csv(r / "train" / "history.csv") for r in (a, b))
    assert list(ha.test_accuracy) == list(hb.test_accuracy) and list(ha.loss) == list(hb.loss)
    sa = torch.load(a / "train" / "model.pt", weights_only=True)["state_dict"]
    sb = torch.load(b / "train" / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not (b / "train" / "resume").exists()  # the finished stage keeps no checkpoint
