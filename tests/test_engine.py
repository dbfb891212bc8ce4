"""The training engine on its own: schedules, EMA, augmentation, device data, fit, predict_proba, config checks.

Small arrays on the CPU; the stages' tests cover the engine on real datasets.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cleanpipe.engine.loop as loop
from cleanpipe.engine import (
    Augment,
    DeviceData,
    Method,
    Standard,
    StrongView,
    TrainConfig,
    fit,
    predict_proba,
)
from cleanpipe.engine.data import cutout
from cleanpipe.engine.loop import cosine_restarts, lr_at

CPU = torch.device("cpu")


def _separable(n=400, d=5, seed=0, margin=0.3):
    """A float32 table with two linearly separable classes (a gap of ``margin`` around the plane)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 1, (3 * n, d)).astype(np.float32)
    s = X @ rng.normal(0, 1, d)
    keep = np.abs(s) > margin
    X, s = X[keep][:n], s[keep][:n]
    return X, (s > 0).astype(np.int64)


def _mlp(d=5, k=2, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, k))


def _cfg(**kw):
    kw.setdefault("channels_last", False)
    kw.setdefault("batch_size", 32)
    return TrainConfig(**kw)


def _params(net):
    return [p.detach().clone() for p in net.parameters()]


class Recording(Standard):
    """Plain cross-entropy that remembers each batch's rows and the live parameters it saw (before the step)."""

    def __init__(self) -> None:
        super().__init__()
        self.idx, self.before = [], []

    def loss(self, step):
        self.idx.append((step.epoch, step.idx.clone()))
        self.before.append(_params(step.nets[0]))
        return super().loss(step)


# --- schedules ---------------------------------------------------------------------------------------------------


def test_onecycle_rises_over_the_warmup_then_falls_linearly_to_zero():
    cfg = _cfg(lr=0.4, warmup=0.2, schedule="onecycle")
    total, warm = 100, 20
    lrs = np.array([lr_at(s, total, cfg) for s in range(total + 1)])
    # Warm-up: linear from peak/warm at step 0 to the peak at its last step.
    assert np.allclose(lrs[:warm], 0.4 * np.arange(1, warm + 1) / warm)
    assert lrs[warm - 1] == pytest.approx(0.4) and lrs[warm] == pytest.approx(0.4)
    # Then a straight line down, one equal decrement a step, that reaches 0 at `total`.
    assert np.allclose(np.diff(lrs[warm:]), -0.4 / (total - warm))
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)
    # The last step run (total - 1) is one decrement above 0 and nothing is ever negative.
    assert lrs[total - 1] == pytest.approx(0.4 / (total - warm)) and lrs.min() >= 0
    assert lrs.argmax() in (warm - 1, warm)


def test_cosine_schedule_is_half_the_peak_at_its_midpoint():
    cfg = _cfg(lr=0.2, warmup=0.2, schedule="cosine")
    total, warm = 100, 20
    assert lr_at(warm - 1, total, cfg) == pytest.approx(0.2)  # the same warm-up as one-cycle
    assert lr_at(warm, total, cfg) == pytest.approx(0.2)
    assert lr_at(warm + (total - warm) // 2, total, cfg) == pytest.approx(0.1)
    assert lr_at(warm + (total - warm) // 4, total, cfg) == pytest.approx(0.1 * (1 + np.cos(np.pi / 4)))
    assert lr_at(total, total, cfg) == pytest.approx(0.0, abs=1e-12)


def test_cosine_restarts_match_the_spec_check_values():
    expect = {0: 0.1, 250: 0.05, 500: 0.09, 1000: 0.0225, 1250: 0.081, 85498: 0.03138, 193620: 0.02542, 200000: 0.02515}
    for step, lr in expect.items():
        assert cosine_restarts(step, 500, 0.1) == pytest.approx(lr, abs=5e-5)


def test_restarts_schedule_delegates_to_cosine_restarts(monkeypatch):
    # Default first cycle: a 400th of the run (500 steps of 200,000); no warm-up.
    cfg = _cfg(lr=0.1, schedule="restarts")
    for step in (0, 250, 500, 1000, 85498):
        assert lr_at(step, 200_000, cfg) == cosine_restarts(step, 500, 0.1)
    assert lr_at(0, 200_000, cfg) == pytest.approx(0.1)
    # restart_steps overrides it; the peak is the config's.
    cfg = _cfg(lr=0.3, schedule="restarts", restart_steps=40)
    assert lr_at(70, 200_000, cfg) == cosine_restarts(70, 40, 0.3)

    calls = []
    monkeypatch.setattr(loop, "cosine_restarts", lambda step, first, peak, **kw: calls.append((step, first, peak)) or 0.5)
    assert lr_at(7, 8000, _cfg(lr=0.1, schedule="restarts")) == 0.5
    assert lr_at(7, 8000, _cfg(lr=0.1, schedule="restarts", restart_steps=33)) == 0.5
    assert lr_at(3, 100, _cfg(lr=0.1, schedule="restarts")) == 0.5  # a run under 400 steps: cycles of one step
    assert lr_at(3, 100, _cfg(optimizer="adamw", schedule="restarts")) == 0.5  # AdamW's default peak
    assert calls == [(7, 20.0, 0.1), (7, 33, 0.1), (3, 1.0, 0.1), (3, 1.0, 2e-3)]


# --- EMA -----------------------------------------------------------------------------------------------------------


def test_ema_returns_averaged_networks_unlike_a_run_without_it():
    X, y = _separable(200)
    rows = np.arange(len(y))
    data = DeviceData(X, CPU, fit_rows=rows)
    plain = fit(_mlp(), data, y, rows, _cfg(epochs=2))[0]
    averaged = fit(_mlp(), data, y, rows, _cfg(epochs=2, ema=0.9))[0]
    assert not averaged.training and not plain.training
    assert any(not torch.equal(a, b) for a, b in zip(plain.parameters(), averaged.parameters()))


@pytest.mark.parametrize("ema", [0.5, 0.9])
def test_ema_follows_the_lerp_recurrence_and_shares_the_live_batchnorm_buffers(ema):
    X, y = _separable(160)
    rows = np.arange(len(y))
    data = DeviceData(X, CPU, fit_rows=rows)
    live = _mlp()
    method = Recording()
    (averaged,) = fit(live, data, y, rows, _cfg(epochs=3, ema=ema), method=method)
    assert averaged is not live  # on the CPU ``fit`` trains the very object it was given
    steps = len(method.before)
    assert steps == 3 * (160 // 32)
    # The live parameters after step t are what step t + 1 saw; after the last step, the live network's own.
    after = method.before[1:] + [_params(live)]
    e = method.before[0]  # the average starts from the initial weights
    for t, p in enumerate(after):
        d = min(ema, (1 + t) / (10 + t))
        e = [d * a + (1 - d) * b for a, b in zip(e, p)]
    if ema == 0.5:
        assert (1 + steps - 1) / (10 + steps - 1) > ema  # the cap was reached
    for a, b in zip(averaged.parameters(), e):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(averaged.parameters(), live.parameters()))
    # The BatchNorm statistics are the live ones (copied in), not averaged.
    bufs = dict(live.named_buffers())
    assert set(bufs) == {"1.running_mean", "1.running_var", "1.num_batches_tracked"}
    for name, b in averaged.named_buffers():
        assert torch.equal(b, bufs[name])
    assert int(bufs["1.num_batches_tracked"]) == steps
    assert all(not p.requires_grad for p in averaged.parameters())


# --- augmentation ------------------------------------------------------------------------------------------------


def test_translation_is_a_shifted_crop_of_the_reflect_padded_batch():
    p = 3
    x = torch.rand(24, 3, 10, 12)
    out = Augment(pad=p, flip=False)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = F.pad(x, (p, p, p, p), mode="reflect")
    offsets = set()
    for i in range(len(x)):
        found = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                 if torch.equal(out[i], padded[i, :, dy : dy + 10, dx : dx + 12])]
        assert len(found) == 1, f"image {i} is not one crop of its padded copy"
        offsets.add(found[0])
    assert len(offsets) > 5  # offsets drawn per image, not one for the batch


def test_augment_is_reproducible_from_the_generator_seed():
    x = torch.rand(32, 1, 8, 8)
    aug = Augment(pad=2, flip=True)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_flip_mirrors_about_half_of_a_big_batch():
    x = torch.rand(2000, 1, 4, 6)
    out = Augment(pad=0, flip=True)(x, torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(3)).flatten(1).all(1)
    assert bool((same ^ mirrored).all())  # each image either kept or mirrored
    assert 0.45 < float(mirrored.float().mean()) < 0.55
    assert torch.equal(Augment(pad=0, flip=False)(x, torch.Generator().manual_seed(0)), x)


@pytest.mark.parametrize("size", [4, 5])
def test_cutout_zeroes_one_square_clipped_at_the_borders(size):
    H = W = 24
    x = torch.ones(400, 2, H, W)
    out = cutout(x, size, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and x.min() == 1  # the input is left alone
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1])  # the same square on every channel
    assert bool(((out == 0) | (out == 1)).all())
    interior = 0
    for z in zero[:, 0]:
        ys, xs = torch.nonzero(z, as_tuple=True)
        assert len(ys) >= 1  # the centre always lies in the image
        top, bottom, left, right = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
        h, w = bottom - top + 1, right - left + 1
        assert len(ys) == h * w and h <= size and w <= size  # a (clipped) rectangle
        if top > 0 and left > 0 and bottom < H - 1 and right < W - 1:
            assert len(ys) == size * size
            interior += 1
    assert interior > 100


def test_strong_view_of_a_table_keeps_the_shape_and_changes_the_features():
    X, _ = _separable(64)
    data = DeviceData(X, CPU)
    idx = torch.arange(32)
    x_raw = data.batch_raw(idx)
    x = data.normalize(x_raw)
    view = StrongView(data, "randaugment")
    a = view(x_raw, x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert not torch.equal(a, x)
    assert torch.equal(a, view(x_raw, x, torch.Generator().manual_seed(0)))
    zeroed = float((a == 0).float().mean())
    assert 0.1 < zeroed < 0.3  # about a fifth of the features dropped


@pytest.mark.parametrize("policy", ["autoaugment", "randaugment"])
def test_kornia_policies_run_on_batches(policy):
    x = torch.rand(16, 3, 32, 32)
    out = Augment(pad=2, flip=True, policy=policy)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)


# --- DeviceData ----------------------------------------------------------------------------------------------------


def test_image_statistics_come_only_from_the_fit_rows():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 120, (60, 3, 5, 7), dtype=np.uint8)
    X[40:] = 255 - X[40:]  # held-out rows look nothing like the fit rows
    fit_rows = np.arange(0, 40, 2)
    data = DeviceData(X, CPU, fit_rows=fit_rows)
    ref = X[fit_rows].astype(np.float64) / 255
    assert data.is_image and data.mean.shape == (1, 3, 1, 1) and data.std.shape == (1, 3, 1, 1)
    assert np.allclose(data.mean.flatten().numpy(), ref.mean(axis=(0, 2, 3)), rtol=1e-5)
    assert np.allclose(data.std.flatten().numpy(), ref.std(axis=(0, 2, 3), ddof=1), rtol=1e-4)
    # Batches are normalised with those statistics.
    got = data.batch(torch.as_tensor([45, 3])).numpy()
    want = (X[[45, 3]] / 255 - ref.mean(axis=(0, 2, 3))[None, :, None, None]) / ref.std(axis=(0, 2, 3), ddof=1)[
        None, :, None, None]
    assert got.dtype == np.float32 and np.allclose(got, want, atol=1e-4)
    # Without fit_rows every row counts.
    everything = DeviceData(X, CPU)
    assert np.allclose(everything.mean.flatten().numpy(), (X / 255).mean(axis=(0, 2, 3)), rtol=1e-5)


def test_table_statistics_come_only_from_the_fit_rows():
    rng = np.random.default_rng(1)
    X = rng.normal(0, 1, (50, 4)).astype(np.float32)
    X[30:] = X[30:] * 10 + 100
    fit_rows = np.arange(30)
    data = DeviceData(X, CPU, fit_rows=fit_rows)
    ref = X[fit_rows].astype(np.float64)
    assert not data.is_image and data.mean.shape == (1, 4)
    assert np.allclose(data.mean.numpy()[0], ref.mean(0), atol=1e-6)
    assert np.allclose(data.std.numpy()[0], ref.std(0, ddof=1), rtol=1e-5)
    assert np.allclose(data.batch(torch.as_tensor([40])).numpy(), (X[40] - ref.mean(0)) / ref.std(0, ddof=1), atol=1e-4)


# --- fit -----------------------------------------------------------------------------------------------------------


def test_fit_separates_a_linearly_separable_table():
    X, y = _separable(400)
    rows = np.arange(len(y))
    data = DeviceData(X, CPU, fit_rows=rows)
    history = []
    cfg = _cfg(epochs=8)
    (net,) = fit(nn.Linear(5, 2), data, y, rows, cfg, on_epoch=lambda e, m: history.append(m))
    assert len(history) == 8 and history[-1]["train_accuracy"] >= 0.97
    assert history[-1]["loss"] < history[0]["loss"]
    assert not net.training
    assert (predict_proba(net, data, rows, cfg).argmax(1) == y).mean() >= 0.97


def test_fit_is_reproducible_from_the_seed():
    X, y = _separable(200)
    rows = np.arange(len(y))
    data = DeviceData(X, CPU, fit_rows=rows)
    a = fit(_mlp(), data, y, rows, _cfg(epochs=2, seed=3))[0]
    b = fit(_mlp(), data, y, rows, _cfg(epochs=2, seed=3))[0]
    c = fit(_mlp(), data, y, rows, _cfg(epochs=2, seed=4))[0]
    for p, q in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_fit_draws_only_the_given_rows_each_at_most_once_an_epoch():
    X, y = _separable(120)
    rows = np.arange(1, 120, 2)[:50]  # odd rows only
    method = Recording()
    fit(_mlp(), DeviceData(X, CPU, fit_rows=rows), y, rows, _cfg(epochs=3, batch_size=16), method=method)
    assert issubclass(Recording, Method)
    assert len(method.idx) == 3 * (50 // 16)  # the ragged last batch is dropped
    for epoch in range(3):
        drawn = torch.cat([i for e, i in method.idx if e == epoch]).numpy()
        assert len(drawn) == 48 and len(np.unique(drawn)) == 48
        assert set(drawn) <= set(rows.tolist())
    first, second = (torch.cat([i for e, i in method.idx if e == k]) for k in (0, 1))
    assert not torch.equal(first, second)  # reshuffled every epoch


@pytest.mark.parametrize("mixup", [0.0, 1.0])
def test_epoch_checkpoint_resume_is_bit_identical(tmp_path, mixup):
    from cleanpipe.data import DataSpec, load_dataset
    from cleanpipe.engine import Mixup
    from cleanpipe.recipes import build_network

    ds = load_dataset(DataSpec("digits"))
    rows = np.arange(600)
    data = DeviceData(ds.X_train, torch.device("cpu"), fit_rows=rows)

    def net():
        torch.manual_seed(0)
        return build_network("small_cnn", ds.input_shape, 10)[0]  # the recipe's width

    def method():  # Mixup draws its mixing weights from (seed, step): a resumed run draws the same
        return Mixup(mixup, seed=3) if mixup else None

    full = fit(net(), data, ds.y_train, rows, TrainConfig(epochs=3, seed=5), method=method())[0]
    ckpt = tmp_path / "ck.pt"

    class Stop(Exception):
        pass

    def stop_after_two(epoch, metrics):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(net(), data, ds.y_train, rows, TrainConfig(epochs=3, seed=5), checkpoint=ckpt, on_epoch=stop_after_two,
            checkpoint_every_s=0, method=method())
    assert ckpt.is_file()
    resumed = fit(net(), data, ds.y_train, rows, TrainConfig(epochs=3, seed=5), checkpoint=ckpt, method=method())[0]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


# --- predict_proba -------------------------------------------------------------------------------------------------


def _trained_nets(n_nets=3):
    X, y = _separable(100)
    rows = np.arange(len(y))
    data = DeviceData(X, CPU, fit_rows=rows)
    nets = [fit(_mlp(k=3, seed=s), data, y, rows, _cfg(epochs=1, seed=s))[0] for s in range(n_nets)]
    return data, nets


def test_predict_proba_rows_sum_to_one_and_follow_the_given_order():
    data, (net, *_) = _trained_nets(1)
    cfg = _cfg(eval_batch_size=7)  # several evaluation batches, the last one short
    rows = np.arange(0, 100, 3)
    p = predict_proba(net, data, rows, cfg)
    assert p.dtype == np.float32 and p.shape == (len(rows), 3)
    assert np.allclose(p.sum(1), 1, atol=1e-6) and p.min() >= 0
    order = np.random.default_rng(0).permutation(len(rows))
    assert np.allclose(predict_proba(net, data, rows[order], cfg), p[order], atol=1e-6)
    assert np.allclose(predict_proba(net, data, rows[[5]], cfg), p[[5]], atol=1e-6)
    with torch.no_grad():
        direct = torch.softmax(net(data.batch(torch.as_tensor(rows))), 1).numpy()
    assert np.allclose(p, direct, atol=1e-6)


def test_predict_proba_averages_the_networks_softmax():
    data, nets = _trained_nets(3)
    cfg = _cfg(eval_batch_size=16)
    rows = np.arange(40)
    together = predict_proba(nets, data, rows, cfg)
    each = [predict_proba(n, data, rows, cfg) for n in nets]
    assert np.allclose(together, np.mean(each, axis=0), atol=1e-6)
    assert not np.allclose(each[0], each[1], atol=1e-3)  # the average is not of identical networks
    with torch.no_grad():
        x = data.batch(torch.as_tensor(rows))
        manual = torch.stack([torch.softmax(n(x), 1) for n in nets]).mean(0).numpy()
    assert np.allclose(together, manual, atol=1e-6)


def test_predict_proba_tta_flip_averages_the_mirrored_image():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (20, 1, 6, 6), dtype=np.uint8)
    data = DeviceData(X, CPU)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 4)).eval()
    rows = np.arange(20)
    plain = predict_proba(net, data, rows, _cfg())
    tta = predict_proba(net, data, rows, _cfg(tta_flip=True))
    with torch.no_grad():
        x = data.batch(torch.as_tensor(rows))
        want = ((torch.softmax(net(x), 1) + torch.softmax(net(x.flip(3)), 1)) / 2).numpy()
    assert np.allclose(tta, want, atol=1e-6) and not np.allclose(tta, plain, atol=1e-3)


# --- TrainConfig ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(epochs=0), "epochs"),
        (dict(epochs=-3), "epochs"),
        (dict(batch_size=1), "batch[-_ ]size"),
        (dict(optimizer="adam"), "optimizer"),
        (dict(schedule="step"), "schedule"),
        (dict(ema=1.0), "ema"),
        (dict(ema=-0.1), "ema"),
    ],
)
def test_train_config_rejects_bad_values(kw, match):
    with pytest.raises(Exception, match=match):
        TrainConfig(**kw)


def test_train_config_accepts_the_edges():
    for kw in (dict(epochs=1), dict(batch_size=2), dict(ema=0.0), dict(ema=0.999), dict(optimizer="adamw"),
               dict(schedule="cosine"), dict(schedule="restarts")):
        TrainConfig(**kw)
    assert TrainConfig().peak_lr == 0.1 and TrainConfig(optimizer="adamw").peak_lr == 2e-3
    assert TrainConfig(lr=0.05).peak_lr == 0.05


def test_tta_shift_averages_the_image_and_its_four_translations():
    torch.manual_seed(0)
    X = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8).numpy()
    data = DeviceData(X, CPU)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 3)).eval()
    rows = np.arange(12)
    cfg = TrainConfig(epochs=1, batch_size=4, tta_shift=True, channels_last=False)
    got = predict_proba(net, data, rows, cfg)
    x = data.batch(torch.as_tensor(rows))
    d = loop.translation_pad(x)  # 2 px on 28x28, as in training
    padded = F.pad(x, (d, d, d, d), mode="reflect")
    views = [x] + [padded[:, :, dy:dy + 28, dx:dx + 28] for dy, dx in ((0, d), (2 * d, d), (d, 0), (d, 2 * d))]
    with torch.no_grad():
        want = torch.stack([torch.softmax(net(v), 1) for v in views]).mean(0).numpy()
    assert d == 2 and np.abs(got - want).max() < 1e-5
    plain = predict_proba(net, data, rows, TrainConfig(epochs=1, batch_size=4, channels_last=False))
    assert np.abs(plain - got).max() > 1e-3  # the views matter


def test_mixup_mixes_each_batch_with_a_permutation_of_itself_by_a_seeded_weight():
    """The loss is lam CE(f(x'), y) + (1 - lam) CE(f(x'), y[perm]) on x' = lam x + (1 - lam) x[perm]."""
    from cleanpipe.engine import Mixup
    from cleanpipe.engine.method import Step

    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.stack([x.sum(1), -x.sum(1)], 1)

    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    step = Step([Probe()], x, y, torch.arange(6), 0, 7, 10, generator=torch.Generator().manual_seed(1))
    loss, logits = Mixup(0.5, seed=2).loss(step)
    lam = float(np.random.default_rng([2, 7]).beta(0.5, 0.5))
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(1))
    mixed = lam * x + (1 - lam) * x[perm]
    assert torch.allclose(seen[0], mixed)
    want = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[perm])
    assert torch.allclose(loss, want) and logits.shape == (6, 2)
    assert Mixup(0.5, seed=2).loss(Step([Probe()], x, y, torch.arange(6), 0, 8, 10,
                                        generator=torch.Generator().manual_seed(1)))[0] != loss  # another step, another lam


def test_mixup_trains_plain_cross_entropy_during_its_warm_up_share():
    from cleanpipe.engine import Mixup
    from cleanpipe.engine.method import Step

    net = nn.Linear(2, 2)
    x = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    mixup = Mixup(1.0, seed=0, warmup=0.3)

    def loss(epoch):
        mixup.start_epoch(epoch, 10)
        return mixup.loss(Step([net], x, y, torch.arange(6), epoch, 0, 10, generator=torch.Generator().manual_seed(1)))[0]

    plain = F.cross_entropy(net(x), y)
    assert torch.allclose(loss(0), plain) and torch.allclose(loss(2), plain)  # epochs 0-2 of 10: before 30%
    assert not torch.allclose(loss(3), plain)  # from epoch 3 on, mixed
