"""IEG and L2R: the meta-gradients, the step's invariants, and the weights on a synthetic noisy problem."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from cleanpipe.engine import DeviceData, TrainConfig, fit
from cleanpipe.robust.ieg import (
    IEG,
    L2R,
    frozen_batchnorm,
    logit_norm,
    meta_gradients,
    mixup_lambda,
    normalized_weights,
    sharpen,
    soft_cross_entropy,
)


def _problem(seed=0, B=12, K=4):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, K)).double().train()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    xp = torch.randn(8, 6, generator=g, dtype=torch.float64)
    yp = torch.randint(0, K, (8,), generator=g)
    pseudo = torch.softmax(torch.randn(B, K, generator=g, dtype=torch.float64), 1)
    mom = {n: 0.1 * torch.randn(p.shape, generator=g, dtype=torch.float64) for n, p in net.named_parameters()}
    wd = {n: 5e-4 for n, p in net.named_parameters() if p.ndim > 1}
    return net, x, y, xp, yp, pseudo, mom, wd


def _probe_loss_after_lookahead(net, x, y, xp, yp, w, eps, pseudo, mom, mu, wd, alpha):
    """The definition, computed directly: the probe loss at θ' for given (w, ε)."""
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    with frozen_batchnorm(net):
        z = functional_call(net, {**params, **buffers}, (x,))
        y1 = F.one_hot(y, z.shape[1]).double()
        target = y1 if eps is None else eps[:, None] * y1 + (1 - eps[:, None]) * pseudo
        grads = torch.autograd.grad((w * soft_cross_entropy(target, z)).sum(), list(params.values()))
        new = {n: p - alpha * (mu * mom.get(n, 0) + g + wd.get(n, 0.0) * p) for (n, p), g in zip(params.items(), grads)}
        zp = functional_call(net, {**new, **buffers}, (xp,))
    reg = sum(wd.get(n, 0.0) / 2 * new[n].pow(2).sum() for n in new)
    return float((F.cross_entropy(zp, yp) + reg).detach())


@pytest.mark.parametrize("method", ["ieg", "l2r"])
def test_meta_gradients_equal_finite_differences_and_the_two_routes_agree(method):
    net, x, y, xp, yp, pseudo, mom, wd = _problem()
    B = len(y)
    if method == "ieg":
        kw = dict(w0=1.0 / B, eps0=0.9, pseudo=pseudo, momentum=mom, mu=0.9)
        w0, eps0, mu = 1.0 / B, torch.full((B,), 0.9, dtype=torch.float64), 0.9
    else:
        kw = dict(w0=0.0)
        w0, eps0, mu = 0.0, None, 0.0
    out = {}
    for route in ("jvp", "autograd"):
        out[route] = meta_gradients(net, x, y, net(x), xp, yp, alpha=0.1, weight_decay=wd, route=route, **kw)
    gw, geps = out["jvp"]
    scale_w = float(gw.abs().max())
    assert float((gw - out["autograd"][0]).abs().max()) <= 1e-6 * scale_w
    w = torch.full((B,), w0, dtype=torch.float64)
    h = 1e-6
    for i in range(B):
        d = torch.zeros(B, dtype=torch.float64)
        d[i] = h
        fd = (_probe_loss_after_lookahead(net, x, y, xp, yp, w + d, eps0, pseudo, mom, mu, wd, 0.1)
              - _probe_loss_after_lookahead(net, x, y, xp, yp, w - d, eps0, pseudo, mom, mu, wd, 0.1)) / (2 * h)
        assert fd == pytest.approx(float(gw[i]), rel=1e-5, abs=1e-8 * scale_w)
    if method == "ieg":
        scale_e = float(geps.abs().max())
        assert float((geps - out["autograd"][1]).abs().max()) <= 1e-6 * scale_e
        for i in range(B):
            d = torch.zeros(B, dtype=torch.float64)
            d[i] = h
            fd = (_probe_loss_after_lookahead(net, x, y, xp, yp, w, eps0 + d, pseudo, mom, mu, wd, 0.1)
                  - _probe_loss_after_lookahead(net, x, y, xp, yp, w, eps0 - d, pseudo, mom, mu, wd, 0.1)) / (2 * h)
            assert fd == pytest.approx(float(geps[i]), rel=1e-5, abs=1e-8 * scale_e)
    else:
        assert geps is None


def test_without_momentum_or_decay_the_weight_gradient_is_minus_alpha_v_dot_the_example_gradient():
    net, x, y, xp, yp, *_ = _problem(seed=3)
    gw, _ = meta_gradients(net, x, y, net(x), xp, yp, w0=0.0, alpha=0.1)
    params = [p for p in net.parameters()]
    with frozen_batchnorm(net):
        v = torch.autograd.grad(F.cross_entropy(net(xp), yp), params)
        z = net(x)
    for i in range(len(y)):
        gi = torch.autograd.grad(F.cross_entropy(z[i : i + 1], y[i : i + 1]), params, retain_graph=True)
        expect = -0.1 * sum((a * b).sum() for a, b in zip(v, gi))
        # Example i's loss depends on the other rows through BatchNorm; its gradient is still J_i^T (q_i - y_i).
        assert float(gw[i]) == pytest.approx(float(expect), rel=1e-6, abs=1e-12)


def test_meta_gradients_leave_the_network_and_its_statistics_alone():
    net, x, y, xp, yp, pseudo, mom, wd = _problem()
    net(x)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for route in ("jvp", "autograd"):
        meta_gradients(net, x, y, net(x), xp, yp, w0=1 / len(y), eps0=0.9, pseudo=pseudo, momentum=mom, mu=0.9,
                       weight_decay=wd, route=route)
    after = net.state_dict()
    moved = [k for k in before if "running" not in k and "num_batches" not in k and not torch.equal(before[k], after[k])]
    assert moved == []


def test_helpers_follow_the_spec():
    z = torch.randn(7, 5) * 3
    assert float(logit_norm(z).pow(2).mean().sqrt()) == pytest.approx(1.0, abs=1e-5)  # one scalar per chunk
    p = torch.softmax(torch.randn(7, 5), 1)
    s = sharpen(p, 0.5)
    assert torch.allclose(s.sum(1), torch.ones(7)) and torch.allclose(s, p**2 / (p**2).sum(1, keepdim=True))
    lam = mixup_lambda(10_000, 0.5, torch.Generator().manual_seed(0), "cpu")
    assert float(lam.min()) >= 0.5 and float(lam.max()) <= 1.0
    assert float(lam.mean()) == pytest.approx(1 - 1 / 6, abs=0.01)  # E[1 - u²/2] = 5/6
    w = normalized_weights(torch.tensor([-1.0, 2.0, -3.0, 0.0]))
    assert torch.allclose(w, torch.tensor([0.25, 0.0, 0.75, 0.0]), atol=1e-4)
    assert float(normalized_weights(torch.ones(3)).sum()) == 0.0  # all zero is allowed


def _blobs(n=2000, k=10, d=20, flip=0.6, seed=0, scale=0.7):
    rng = np.random.default_rng(seed)
    # scale 0.7: not separable at a glance (Bayes accuracy near 95%, like the IEG paper's checks); on blobs a network fits
    # perfectly, a fitted clean example has a near-zero gradient and its meta weight says little.
    centres = rng.normal(0, 1, (k, d)) * scale
    y = rng.integers(0, k, n)
    X = (centres[y] + rng.normal(0, 1, (n, d))).astype(np.float32)
    noisy = y.copy()
    flipped = rng.random(n) < flip
    noisy[flipped] = (y[flipped] + rng.integers(1, k, flipped.sum())) % k  # always another class
    return X, y, noisy


def _auroc(score, positive):
    from sklearn.metrics import roc_auc_score

    return roc_auc_score(positive, score)


@pytest.mark.parametrize("name", ["l2r", "ieg"])
def test_flipped_examples_get_lower_weights_than_clean_ones(name):
    X, y, noisy = _blobs()
    n, K = len(y), 10
    rng = np.random.default_rng(1)
    probe = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), 10, replace=False) for c in range(K)]))
    rows = np.setdiff1d(np.arange(n), probe)
    is_clean = noisy == y
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Linear(128, 128), nn.BatchNorm1d(128),
                        nn.ReLU(), nn.Linear(128, K))
    common = dict(is_clean=is_clean)
    method = (L2R(probe, y[probe], n, **common) if name == "l2r"
              else IEG(probe, y[probe], n, policy="randaugment", **common))
    cfg = TrainConfig(epochs=6, batch_size=100, lr=0.05, nesterov=False, ema=0.999, channels_last=False)
    history = []
    fit(net, DeviceData(X, torch.device("cpu"), fit_rows=rows), noisy, rows, cfg, method=method,
        on_epoch=lambda e, m: history.append(m))
    rec = method.example_records()
    w = rec["weight"][rows]
    assert np.all(np.isfinite(w)) and np.all(rec["seen"][rows] >= 5)
    assert np.all(np.isnan(rec["weight"][probe]))  # the probe is never a training example
    auroc = _auroc(w, is_clean[rows])
    assert auroc > 0.8, auroc
    assert w[is_clean[rows]].mean() > 2 * w[~is_clean[rows]].mean()
    assert history[-1]["mean_weight_clean"] > history[-1]["mean_weight_noisy"]
    if name == "ieg":  # the pseudo label is chosen more often for flipped labels than for clean ones
        pseudo = rec["pseudo"][rows]
        assert pseudo[~is_clean[rows]].mean() > pseudo[is_clean[rows]].mean()


def _digits_run(tmp_path, cli, rate=0.6):
    run = tmp_path / "r"
    assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", rate, "--seed", 0)[0] == 0
    return run


def test_ieg_train_stage_writes_example_weights_and_holds_the_probe_out(tmp_path, cli):
    import json

    import pandas as pd

    run = _digits_run(tmp_path, cli)
    code, out, err = cli("train", run, "--method", "ieg", "--subset", "all", "--epochs", 3, "--device", "cpu",
                         "--probe-per-class", 5)
    assert code == 0, err
    man = json.loads((run / "train" / "manifest.json").read_text())
    assert man["parameters"]["probe_size"] == 50 and man["parameters"]["policy"] == "randaugment"
    assert man["metrics"]["n_train"] == 1437 - 50
    probe = pd.read_csv(run / "train" / "probe.csv")
    assert len(probe) == 50 and np.all(np.bincount(probe.label, minlength=10) == 5)
    weights = pd.read_csv(run / "train" / "example_weights.csv")
    assert len(weights) == 1437 - 50 and not set(weights["index"]) & set(probe["index"])
    assert {"id", "given_label", "mean_weight", "zero_weight_share", "pseudo_label_share", "steps_seen",
            "true_label", "is_true_error"} <= set(weights.columns)
    assert weights.mean_weight.is_monotonic_increasing  # most distrusted first
    from cleanpipe.rundir import RunDir

    _, dataset, _ = RunDir(run).bind_dataset(None)
    assert np.all(dataset.y_train[probe["index"]] == probe.label)  # the probe's labels are the clean ones
    history = pd.read_csv(run / "train" / "history.csv")
    assert {"mean_weight", "pseudo_label_share", "mean_weight_clean", "mean_weight_noisy"} <= set(history.columns)
    assert "example_weights.csv" in out


def test_l2r_same_seed_same_weights(tmp_path, cli):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        assert cli("noise", run, "--dataset", "digits", "--kind", "symmetric", "--rate", 0.4)[0] == 0
        code, _, err = cli("train", run, "--method", "l2r", "--subset", "all", "--epochs", 2, "--device", "cpu")
        assert code == 0, err
    assert (a / "train" / "example_weights.csv").read_bytes() == (b / "train" / "example_weights.csv").read_bytes()


def test_probe_labels_from_a_file_and_clear_errors(tmp_path, cli):
    import json

    import pandas as pd

    run = tmp_path / "real"
    # A run on "real" data: the digits' own labels, no synthetic noise, so no truth is known.
    assert cli("crossval", run, "--dataset", "digits", "--folds", 2, "--epochs", 1, "--device", "cpu")[0] == 0
    code, _, err = cli("train", run, "--method", "ieg", "--subset", "all", "--epochs", 1, "--device", "cpu")
    assert code == 2 and "--probe-labels" in err and "Traceback" not in err and not (run / "train").exists()
    ds = json.loads((run / "dataset.json").read_text())
    from cleanpipe.rundir import RunDir

    _, dataset, _ = RunDir(run).bind_dataset(None)
    # The hand-checked labels: the digits' own labels of 40 rows of the training split.
    ids = np.random.default_rng(0).choice(len(dataset.y_train), 40, replace=False)
    labels_file = tmp_path / "checked.csv"
    pd.DataFrame({"id": dataset.ids_train[ids], "label": dataset.y_train[ids]}).to_csv(labels_file, index=False)
    code, _, err = cli("train", run, "--method", "l2r", "--subset", "all", "--epochs", 1, "--device", "cpu",
                       "--probe-labels", labels_file, "--probe-per-class", 50)
    assert code == 2 and "fewer than --probe-per-class 50" in err and not (run / "train").exists()
    per_class = int(np.bincount(dataset.y_train[ids], minlength=10).min())
    code, _, err = cli("train", run, "--method", "l2r", "--subset", "all", "--epochs", 1, "--device", "cpu",
                       "--probe-labels", labels_file, "--probe-per-class", per_class)
    assert code == 0, err
    probe = pd.read_csv(run / "train" / "probe.csv")
    assert len(probe) == 10 * per_class and set(probe["index"]) <= set(ids.tolist())
    assert ds["n_train"] - 10 * per_class == json.loads((run / "train" / "manifest.json").read_text())["metrics"]["n_train"]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\nnot-an-id,3\n")
    code, _, err = cli("train", run, "--method", "ieg", "--subset", "all", "--epochs", 1, "--device", "cpu",
                       "--probe-labels", bad)
    assert code == 2 and "not-an-id" in err and "Traceback" not in err
    code, _, err = cli("train", run, "--method", "ieg", "--subset", "all", "--epochs", 1, "--device", "cpu",
                       "--meta-route", "finite")
    assert code == 2 and "--meta-route" in err


@pytest.mark.slow
def test_ieg_cifar_script_smoke(tmp_path, tiny_cifar10):
    """The paper's IEG script on a tiny CIFAR-format fixture: ResNet-29, one epoch, two probe images per class."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "pipelines" / "ieg_cifar.sh"
    env = {**os.environ, "PYTHON": sys.executable, "CONDITIONS": "uniform:0.8", "EPOCHS": "1", "BATCH": "40",
           "PROBE": "2", "MODEL": "resnet29", "DEVICE": "cpu"}
    proc = subprocess.run(["bash", str(script), str(tiny_cifar10), str(tmp_path / "runs")], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "runs" / "cifar10_uniform0.8"
    for method in ("ieg", "l2r", "standard"):
        assert (run / f"train-{method}" / "manifest.json").is_file()
    assert (run / "train-ieg" / "example_weights.csv").is_file()
    assert "| cifar10_uniform0.8 |" in proc.stdout


def test_probe_order_is_class_interleaved_so_every_slice_is_balanced():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(10), 10))
    m = L2R(np.arange(100) + 7, labels, 200)
    assert set(m.probe_rows_np) == set(np.arange(100) + 7)
    for start in range(0, 100, 10):
        assert sorted(m.probe_labels_np[start : start + 10]) == list(range(10))
    assert np.all(labels[m.probe_rows_np - 7] == m.probe_labels_np)  # rows and labels stay paired
