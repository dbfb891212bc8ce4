"""DivideMix and ELR: their parts against the reference's arithmetic, training on arrays, resume, bad options."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from cleanpipe.recipes import fit_settings
from cleanpipe.robust import DivideMixOptions, ELROptions, train_model
from cleanpipe.robust.dividemix import clean_probability, ramp_weight, sharpen
from cleanpipe.robust.elr import ELR
from cleanpipe.validation import ParameterError


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_mixture_recovers_a_planted_clean_set(seed):
    rng = np.random.default_rng(seed)
    losses = np.concatenate([np.abs(rng.normal(0.05, 0.05, 900)), rng.normal(1.5, 0.3, 100)])
    clean = np.arange(1000) < 900
    w = clean_probability(losses, seed=seed)
    from sklearn.metrics import roc_auc_score

    assert w.dtype == np.float32 and w.shape == (1000,)
    assert roc_auc_score(clean, w) > 0.99  # the low-mean component, whichever index sklearn gave it
    assert (w[clean] > 0.5).mean() >= 0.95 and (w[~clean] < 0.5).mean() >= 0.95


def test_sharpening_co_refinement_and_the_ramp():
    assert torch.allclose(sharpen(torch.tensor([0.6, 0.4]), 0.5), torch.tensor([0.6923, 0.3077]), atol=1e-4)
    p = torch.tensor([[0.2, 0.5, 0.3]])
    y = F.one_hot(torch.tensor([0]), 3).float()
    assert torch.allclose(sharpen(1.0 * y + 0.0 * p, 0.5), y)  # w = 1: the given label exactly
    assert torch.allclose(sharpen(0.0 * y + 1.0 * p, 0.5), sharpen(p, 0.5))  # w = 0: the sharpened prediction
    assert [ramp_weight(e, 10, 16) for e in (10, 18, 26, 40)] == [0.0, 0.5, 1.0, 1.0]


def test_elr_targets_and_its_gradient_follow_the_paper():
    elr = ELR(4, 3, np.zeros(4, np.int64), beta=0.7, lam=1.0)
    z = torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]], requires_grad=True)

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return z

    from cleanpipe.engine.method import Step

    step = Step([Fixed()], torch.zeros(2, 1), torch.tensor([0, 1]), torch.tensor([0, 2]), 0, 0, 10)
    loss, _ = elr.loss(step)
    assert torch.allclose(elr.target[[0, 2]].sum(1), torch.tensor([0.3, 0.3]))  # 1 - beta after one visit
    assert torch.equal(elr.target[[1, 3]], torch.zeros(2, 3))  # unvisited rows stay zero
    # the penalty's gradient with respect to the logits, p_c (<t, p> - t_c) / (1 - <t, p>) per row (the
    # clamp is inactive at these logits), is what the loss adds to the cross-entropy's
    loss.backward()
    ce_grad = torch.autograd.grad(F.cross_entropy(z, torch.tensor([0, 1])), z)[0]
    t, p = elr.target[[0, 2]], F.softmax(z.detach(), 1)
    inner = (t * p).sum(1, keepdim=True)
    assert torch.allclose(z.grad - ce_grad, p * (inner - t) / (1 - inner) / 2, atol=1e-6)
    assert np.isfinite(float(loss.detach()))


@pytest.mark.parametrize("method, options", [("elr", ELROptions()), ("dividemix", DivideMixOptions(warmup=0.25))])
def test_each_trains_on_arrays_without_a_run_directory(digits, tmp_path, monkeypatch, method, options):
    ds, noisy = digits
    monkeypatch.chdir(tmp_path)
    result = train_model(ds.X_train, noisy, method=method, options=options, X_test=ds.X_test, y_test=ds.y_test,
                         settings=fit_settings("train", (1, 8, 8), epochs=4), truth=ds.y_train, device="cpu")
    assert list(tmp_path.iterdir()) == []
    assert result.test_accuracy > 0.5  # 4 epochs at 40% noise, well above chance
    last = result.history[-1]
    if method == "dividemix":
        assert len(result.nets) == 2 and last["labeled_1"] > 0 and 0.5 < last["labeled_precision_1"] <= 1
        assert "test_accuracy_net1" in last  # the reported accuracy is both networks' summed logits
        clean = result.per_example["clean_probability"]
        assert clean.shape == (len(noisy),) and np.all((clean >= 0) & (clean <= 1))
        # the final division ranks the 40% wrong labels first: far above the 0.4 that chance gives
        assert result.metrics["clean_probability_ap"] > 0.8 and result.metrics["final_loss_ap"] > 0.8
        # the learning rate ramps up over the warm-up (1 of 4 epochs here) and only over it, then decays
        lrs = [h["lr"] for h in result.history]
        assert lrs[0] == pytest.approx(result.method_settings["dividemix_lr"], rel=0.01)
        assert lrs == sorted(lrs, reverse=True) and lrs[1] < lrs[0]
    else:
        assert last["elr_flagged"] > 0 and last["elr_flagged_precision"] > 0.5
        assert result.per_example["target_label"].shape == (len(noisy),)


@pytest.mark.parametrize("method, options", [("elr", ELROptions()), ("dividemix", DivideMixOptions(warmup=0.25))])
def test_an_interrupted_training_resumes_byte_identically(digits, tmp_path, monkeypatch, method, options):
    import cleanpipe.engine.loop as loop
    import cleanpipe.robust.base as base

    ds, noisy = digits
    monkeypatch.setattr(base, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint every epoch
    kw = dict(method=method, options=options, settings=fit_settings("train", (1, 8, 8), epochs=4), device="cpu")
    whole = train_model(ds.X_train, noisy, **kw)
    save, saves = loop._save_checkpoint, []

    def save_then_interrupt(*a, **k):
        save(*a, **k)
        saves.append(1)
        if len(saves) == 2:  # after epoch 2: DivideMix is past its warm-up and has divided once
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train_model(ds.X_train, noisy, resume_dir=tmp_path / "r", **kw)
    monkeypatch.setattr(loop, "_save_checkpoint", save)
    resumed = train_model(ds.X_train, noisy, resume_dir=tmp_path / "r", **kw)
    for a, b in zip(whole.nets, resumed.nets):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in resumed.history]


@pytest.mark.parametrize("make, match", [
    (lambda: DivideMixOptions(p_threshold=1.5), "p_threshold"),
    (lambda: DivideMixOptions(division="oracle"), "division"),
    (lambda: DivideMixOptions(lambda_u=-1), "lambda_u"),
    (lambda: ELROptions(beta=1.0), "beta"),
    (lambda: ELROptions(elr_lambda=-3), "elr_lambda"),
])
def test_bad_options_name_the_parameter(make, match):
    with pytest.raises(ParameterError, match=match):
        make()


def test_dividemix_needs_no_prune_stage_and_bad_flags_are_one_line(tmp_path, cli):
    run = tmp_path / "run"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.4)[0] == 0
    code, out, err = cli("train", run, "--method", "dividemix", "--epochs", 3, "--warmup-share", 0.34, "--device", "cpu")
    assert code == 0, err
    man = json.loads((run / "train" / "manifest.json").read_text())
    assert man["parameters"]["subset"] == "all" and man["metrics"]["n_train"] == 1437
    clean = pd.read_csv(run / "train" / "dividemix_clean.csv")
    assert len(clean) == 1437 and clean["clean_probability"].is_monotonic_increasing  # worst first
    assert clean["flagged"].equals(clean["clean_probability"] <= 0.5) and "is_true_error" in clean
    assert clean["final_loss"].between(0, 1).all()
    code, out, err = cli("train", run, "--method", "dividemix", "--p-threshold", 2)
    assert code == 2 and "p-threshold" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli("train", run, "--method", "dividemix", "--division", "prune", "--epochs", 3)
    assert code == 2 and "cleanpipe prune" in err  # the prune-seeded division needs a prune stage


@pytest.mark.slow
def test_dividemix_cifar10_script_smoke(tmp_path, tiny_cifar10):
    """The GPU script's wiring on a tiny CIFAR-format fixture: three epochs of the small CNN, both methods."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "pipelines" / "dividemix_cifar10.sh"
    env = {**os.environ, "PYTHON": sys.executable, "CONDITIONS": "uniform:0.5 asymmetric:0.4", "EPOCHS": "3",
           "DEVICE": "cpu", "MODEL": "small_cnn"}
    proc = subprocess.run(["bash", str(script), str(tiny_cifar10), str(tmp_path / "runs")], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for name in ("uniform0.5", "asymmetric0.4"):
        for method in ("dividemix", "elr"):
            assert (tmp_path / "runs" / name / method / "history.csv").is_file()
    assert proc.stdout.count("| uniform0.5 |") == 2 and proc.stdout.count("| asymmetric0.4 |") == 2
