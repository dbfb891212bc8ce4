"""The airbench-class network, the engine pieces it needs (own SGD, look-ahead, data-set layers), the colour digits."""

import numpy as np
import pytest
import torch
from torch import nn

from cleanpipe.data.synthetic import colour_digits
from cleanpipe.engine import DeviceData, TrainConfig, fit
from cleanpipe.engine.loop import _optimizer
from cleanpipe.engine.optim import SGD
from cleanpipe.models import MODELS, build_model

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_colour():
    """96 colour digits, 3x32x32, from scikit-learn's 8x8 digits (scaled to 0-255)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    X, y, _ = colour_digits((d.images[:96] * 16).clip(0, 255).astype(np.uint8), d.target[:96], seed=0)
    return X, y


@pytest.mark.parametrize("momentum, nesterov", [(0.9, True), (0.85, False), (0.0, False)])
def test_sgd_matches_torch_step_for_step(momentum, nesterov):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    b = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    b.load_state_dict(a.state_dict())

    def groups(net):
        ps = list(net.parameters())
        return [{"params": [p for p in ps if p.ndim > 1], "weight_decay": 5e-4},
                {"params": [p for p in ps if p.ndim == 1], "weight_decay": 0.0}]

    ours = SGD(groups(a), lr=0.1, momentum=momentum, nesterov=nesterov)
    theirs = torch.optim.SGD(groups(b), lr=0.1, momentum=momentum, nesterov=nesterov)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for step in range(6):
        for net, opt in ((a, ours), (b, theirs)):
            for g in opt.param_groups:
                g["lr"] = 0.05 * (step + 1)
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            if step < 2:  # the first layer's bias gets no gradient at first, then joins in (its own first step)
                net[0].bias.grad = None
            if step == 4:  # and the last layer skips a step
                net[2].weight.grad = None
            opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    again = SGD(groups(a), lr=0.1)
    again.load_state_dict(ours.state_dict())
    assert again.state.keys() == ours.state.keys()
    for p in ours.state:
        assert torch.equal(again.state[p]["momentum_buffer"], ours.state[p]["momentum_buffer"])
    with pytest.raises(ValueError, match="more than one group"):
        SGD([{"params": list(a.parameters())}, {"params": [next(a.parameters())]}], lr=0.1)


def test_whitening_makes_the_patch_covariance_the_identity():
    torch.manual_seed(0)
    net = build_model("airbench", (3, 32, 32), 10)
    x = torch.randn(200, 32, 32, 3) @ torch.tensor([[1.0, 0.8, 0.2], [0.0, 0.5, 0.3], [0.0, 0.0, 0.1]])  # correlated
    x = torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 3, 1, 1)  # and spatially smooth
    net.init_from_data(x)
    out = nn.functional.conv2d(x, net.whiten.weight[:12])  # the positive half: (n, 12, 31, 31)
    z = out.permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = z.T @ z / len(z)
    patches = x.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()
    eigenvalues = torch.linalg.eigvalsh(patches.T @ patches / len(patches)).flip(0)
    # decorrelated, unit variance, except where an eigenvalue is so small that the 5e-4 floor damps it
    assert (cov - torch.diag(cov.diag())).abs().max() < 1e-4
    assert torch.allclose(cov.diag(), eigenvalues / (eigenvalues + 5e-4), atol=1e-3)
    assert (cov.diag()[:4] > 0.97).all()
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])


def test_frozen_scales_and_fast_biases_in_the_optimizer():
    net = build_model("airbench", (3, 32, 32), 10)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.weight.requires_grad for m in bns) and not net.whiten.weight.requires_grad
    opt = _optimizer([net], TrainConfig(**MODELS["airbench"].train))
    fast = {id(p) for g in opt.param_groups if g["lr_scale"] == 64.0 for p in g["params"]}
    assert fast == {id(m.bias) for m in bns}  # airbench94: the norm biases only; the whitening bias at 1x
    assert all(m.momentum == 0.4 for m in bns)  # airbench's "0.6" is the share of the old statistics
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trained == {id(p) for p in net.parameters() if p.requires_grad}
    assert MODELS["airbench"].train == {"momentum": 0.85, "lookahead": 5}


def _fit(X, y, checkpoint=None, on_epoch=None, **kw):
    torch.manual_seed(0)
    net = build_model("airbench", X.shape[1:], 10)
    data = DeviceData(X, CPU, fit_rows=np.arange(len(y)))
    cfg = TrainConfig(epochs=3, seed=1, lr=0.2, momentum=0.85, channels_last=False, **kw)
    return fit(net, data, y, np.arange(len(y)), cfg, checkpoint=checkpoint, on_epoch=on_epoch, checkpoint_every_s=0)[0]


def test_lookahead_changes_training_and_resumes_bit_for_bit(tmp_path, tiny_colour):
    X, y = tiny_colour
    # 4 steps an epoch, a pull every 3: the checkpoint after epoch 1 falls between two pulls
    full = _fit(X, y, lookahead=3)
    plain = _fit(X, y, lookahead=0)
    assert not torch.equal(full.head.weight, plain.head.weight)

    class Stop(Exception):
        pass

    def stop(epoch, metrics):
        if epoch == 1:
            raise Stop

    ckpt = tmp_path / "ck.pt"
    with pytest.raises(Stop):
        _fit(X, y, checkpoint=ckpt, on_epoch=stop, lookahead=3)
    resumed = _fit(X, y, checkpoint=ckpt, lookahead=3)
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    # the whitening was set from the training images, not left at its random start
    fresh = build_model("airbench", X.shape[1:], 10)
    assert not torch.equal(full.whiten.weight, fresh.whiten.weight)


def test_colour_digits_are_seeded_and_keep_the_labels(tiny_colour):
    from sklearn.datasets import load_digits

    d = load_digits()
    digits = (d.images[:50] * 16).clip(0, 255).astype(np.uint8)
    X, y, rows = colour_digits(digits, d.target[:50], 120, seed=3)
    assert X.dtype == np.uint8 and X.shape == (120, 3, 32, 32)
    assert np.array_equal(rows, np.arange(120) % 50) and np.array_equal(y, d.target[rows])
    assert np.array_equal(X, colour_digits(digits, d.target[:50], 120, seed=3)[0])
    assert not np.array_equal(X, colour_digits(digits, d.target[:50], 120, seed=4)[0])
    # the same digit reused gets other colours; the three channels differ (colour, not grey)
    assert not np.array_equal(X[0], X[50]) and np.abs(X[:, 0].astype(int) - X[:, 1]).mean() > 10
    with pytest.raises(ValueError, match="sides up to 32"):
        colour_digits(np.zeros((2, 40, 40), np.uint8), np.zeros(2, int))


@pytest.mark.parametrize("method", ["coteaching", "ieg"])
def test_co_teaching_and_ieg_train_the_airbench_net(tiny_colour, method):
    from cleanpipe.models.nets import AirbenchNet
    from cleanpipe.recipes import fit_settings
    from cleanpipe.robust import CoTeachingOptions, IegOptions, train_model

    X, y = tiny_colour
    settings = fit_settings("train", X.shape[1:], model="airbench", epochs=1, batch_size=32)
    options = IegOptions(probe_per_class=2) if method == "ieg" else CoTeachingOptions(forget_rate=0.2)
    result = train_model(X, y, method=method, options=options, settings=settings, truth=y, device="cpu")
    assert result.model == "airbench" and len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    fresh = build_model("airbench", X.shape[1:], 10)
    for net in result.nets:  # every network whitened from the training images (Co-teaching's two included)
        assert isinstance(net, AirbenchNet) and not torch.equal(net.whiten.weight, fresh.whiten.weight)


def test_benchmarks_colour_archive_loads_through_the_npz_source(mnist_dir, tmp_path):
    """pipelines/bench_detection.py's colour digits (which bench_mnist.py --colour reads) are an archive the
    npz source accepts: 40 training and 10 test images, 3x32x32, labels kept."""
    import importlib.util
    from pathlib import Path

    from cleanpipe.data import load_dataset

    script = Path(__file__).resolve().parents[1] / "pipelines" / "bench_detection.py"
    spec = importlib.util.spec_from_file_location("bench_detection", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    ds = load_dataset(bench.spec_of("colour", mnist_dir, tmp_path, 40))
    assert ds.X_train.shape == (40, 3, 32, 32) and ds.X_test.shape == (10, 3, 32, 32)
    assert ds.X_train.dtype == np.uint8 and set(ds.y_train) <= set(range(10)) and len(set(ds.y_train)) > 3
