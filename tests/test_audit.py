"""audit: exact and near duplicates, outliers and test leaks on planted data; the stage, its file and bad input."""

import json

import numpy as np
import pandas as pd
import pytest

from cleanpipe.audit import (
    AuditSettings,
    exact_groups,
    find_audit_issues,
    first_copy_in,
    issue_table,
    row_digests,
)
from cleanpipe.audit.neighbours import build_index, knn_graph, normalised
from cleanpipe.audit.pixels import aligned_residual


def clusters(n=2000, d=64, k=10, seed=0):
    """Rows around k directions (cosine space): neighbours are meaningful, unlike isotropic noise."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    y = rng.integers(0, k, n)
    return (centres[y] + 0.3 * rng.normal(size=(n, d))).astype(np.float32), y, rng


def test_hashing_groups_byte_identical_rows_and_finds_copies_across_splits():
    X = np.arange(24, dtype=np.uint8).reshape(6, 1, 2, 2)
    X[3] = X[0]
    X[5] = X[0]
    g = exact_groups(row_digests(X))
    assert g.tolist() == [0, -1, -1, 0, -1, 0]
    test = np.stack([X[2], X[1] + 1, X[4]])
    assert first_copy_in(row_digests(test), row_digests(X)).tolist() == [2, -1, 4]
    # the same bytes in another dtype or shape are not the same row
    assert row_digests(X.astype(np.int16))[0] != row_digests(X)[0]


def test_faiss_graph_matches_sklearn_cosine():
    from sklearn.neighbors import NearestNeighbors

    x, _, _ = clusters(1000, 32)
    dist, idx, mean = knn_graph(normalised(x), 10)
    ref_d, ref_i = NearestNeighbors(n_neighbors=10, metric="cosine").fit(x).kneighbors()
    assert np.abs(dist - ref_d).max() < 1e-5
    assert np.mean(idx == ref_i) > 0.99  # up to ties
    assert np.allclose(mean, ref_d.mean(1), atol=1e-5)
    assert not (idx == np.arange(1000)[:, None]).any()  # no row is its own neighbour


def test_approximate_index_finds_the_exact_neighbours_mostly():
    x, _, _ = clusters(20000, 32)
    xn = normalised(x)
    exact = knn_graph(xn, 10, index=build_index(xn, exact=True))[1]
    approx = knn_graph(xn, 10, index=build_index(xn, exact=False))[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact[:2000], approx[:2000])])
    assert recall > 0.95


def test_planted_duplicates_are_found_and_few_others():
    x, y, rng = clusters()
    n = len(x)
    exact_src, jitter_src = rng.choice(n, 20, replace=False), rng.choice(n, 20, replace=False)
    d1 = np.median(knn_graph(normalised(x), 1)[0])
    jittered = x[jitter_src] + 1e-3 * d1 * rng.normal(size=(20, x.shape[1])).astype(np.float32) * np.linalg.norm(x[jitter_src], axis=1, keepdims=True)
    X = np.concatenate([x, x[exact_src], jittered])
    labels = np.concatenate([y, (y[exact_src] + 1) % 10, y[jitter_src]])  # the exact copies under another label
    found = find_audit_issues(X, labels, train_digests=row_digests(X))
    table = issue_table(found, labels, np.arange(len(X)).astype(str))
    exact = table[table["issue"] == "exact_duplicate"]
    assert set(exact["index"]) == set(exact_src) | set(range(n, n + 20))
    assert (exact["score"] == 1.0).all() and exact["labels_differ"].all() and (exact["distance"] == 0).all()
    near = table[table["issue"] == "near_duplicate"]
    planted = set(jitter_src) | set(range(n + 20, n + 40))
    assert planted <= set(near["index"])
    assert len(set(near["index"]) - planted) <= 0.01 * n
    assert not near["labels_differ"].any()
    assert list(table.columns[:6]) == ["id", "split", "issue", "other_id", "score", "labels_differ"]


def test_planted_outliers_are_flagged_and_the_median_row_scores_near_e_minus_1():
    x, y, rng = clusters()
    odd = rng.normal(size=(10, x.shape[1])).astype(np.float32)  # directions none of the clusters has
    X = np.concatenate([x, odd])
    found = find_audit_issues(X, np.concatenate([y, np.zeros(10, int)]))
    assert found.is_outlier[-10:].all()
    assert found.is_outlier[:-10].mean() < 0.02
    score = 1.0 - np.exp(-found.avg_knn_distance / found.outlier_scale)  # cleanlab's, turned round
    assert np.median(score) == pytest.approx(1 - np.exp(-1), abs=0.01)


def test_leaks_exact_and_perturbed_copies_of_training_rows():
    x, y, rng = clusters(1200)
    train, fresh = x[:1000], x[1000:]
    src = rng.choice(1000, 20, replace=False)
    test = np.concatenate([fresh, train[src[:10]], train[src[10:]] * (1 + 1e-4 * rng.normal(size=(10, 64)).astype(np.float32))])
    found = find_audit_issues(train, y[:1000], train_digests=row_digests(train), test_features=test, test_digests=row_digests(test))
    leaks = np.flatnonzero(found.is_exact_leak | found.is_near_leak)
    assert leaks.tolist() == list(range(200, 220))
    assert found.leak_train_index[leaks].tolist() == src.tolist()
    assert found.is_exact_leak[200:210].all() and not found.is_exact_leak[210:].any()


def shifted_noisy(img, rng, sd=8):
    moved = np.roll(img, 1, axis=2)
    return np.clip(np.rint(moved + rng.normal(0, sd, img.shape)), 0, 255).astype(np.uint8)


def test_aligned_residual_sees_through_a_one_pixel_shift():
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(0)
    imgs = (load_digits().images[:50] * 16).clip(0, 255).astype(np.uint8)[:, None]
    imgs = np.pad(imgs, ((0, 0), (0, 0), (2, 2), (2, 2)))  # a frame, as MNIST's digits have
    assert np.allclose(aligned_residual(imgs, imgs), 0)
    copies = np.stack([shifted_noisy(im, rng, sd=2) for im in imgs])
    same = aligned_residual(imgs, copies)
    other = aligned_residual(imgs, imgs[::-1])
    assert same.max() < 0.15 < np.median(other)


def test_images_near_copies_found_by_pixels_among_feature_candidates():
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(1)
    d = load_digits()
    imgs = np.pad((d.images * 16).clip(0, 255).astype(np.uint8)[:, None], ((0, 0), (0, 0), (2, 2), (2, 2)))
    src = rng.choice(len(imgs), 15, replace=False)
    X = np.concatenate([imgs, np.stack([shifted_noisy(imgs[i], rng, sd=0.6) for i in src])])  # 8x8 digits: little room for noise
    labels = np.concatenate([d.target, d.target[src]])
    # features as a shift-robust encoder gives them: a copy lies near its original, but no nearer than natural
    # neighbours do (the originals' pixels, each copy's displaced by about the median neighbour distance)
    feats = imgs.reshape(len(imgs), -1).astype(np.float32)
    gap = np.median(knn_graph(normalised(feats), 1)[0])
    scale = np.linalg.norm(feats[src], axis=1, keepdims=True) * np.sqrt(2 * gap / feats.shape[1])
    feats = np.concatenate([feats, feats[src] + scale * rng.normal(size=(15, feats.shape[1])).astype(np.float32)])
    assert np.median(knn_graph(normalised(feats), 1)[0][-15:]) > 0.5 * gap  # not near duplicates in the features
    found = find_audit_issues(feats, labels, train_digests=row_digests(X), images=X)
    n = len(imgs)
    for k, i in enumerate(src):
        assert found.near_partner[n + k] == i
    assert (found.near_partner[:n] >= 0).sum() <= 15 + 0.01 * n


def test_settings_are_validated():
    from cleanpipe.errors import CleanpipeError

    with pytest.raises(CleanpipeError, match="k"):
        AuditSettings(k=0)
    with pytest.raises(CleanpipeError, match="outlier_threshold"):
        AuditSettings(outlier_threshold=1.5)


# ---- the stage ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """digits with planted exact copies (one under another label) and test leaks, through --dataset npz."""
    from typer.testing import CliRunner

    from cleanpipe.cli import app
    from cleanpipe.data import DataSpec, load_dataset

    ds = load_dataset(DataSpec("digits"))
    X, y, Xt, yt = ds.X_train, ds.y_train, ds.X_test.copy(), ds.y_test.copy()
    X = np.concatenate([X, X[:3]])
    y = np.concatenate([y, [(y[0] + 1) % 10, y[1], y[2]]])
    Xt[:4], yt[:4] = X[10:14], y[10:14]
    root = tmp_path_factory.mktemp("audit")
    np.savez(root / "d.npz", X=X, y=y, X_test=Xt, y_test=yt)
    run = root / "run"
    runner = CliRunner()
    r = runner.invoke(app, ["crossval", str(run), "--dataset", "npz", "--data", str(root / "d.npz"), "--fold", "0", "--epochs", "1"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["audit", str(run), "--epochs", "3"])
    assert r.exit_code == 0, r.output
    return run, r.output, len(X)


def test_stage_writes_issues_csv_features_and_manifest(audited):
    run, out, n = audited
    table = pd.read_csv(run / "audit" / "issues.csv", dtype={"id": str, "other_id": str}, keep_default_na=False)
    assert list(table.columns[:6]) == ["id", "split", "issue", "other_id", "score", "labels_differ"]
    assert set(table["issue"]) <= {"exact_duplicate", "near_duplicate", "outlier", "test_leak"}
    exact = table[table["issue"] == "exact_duplicate"]
    assert {0, 1, 2, n - 3, n - 2, n - 1} <= set(exact["index"])
    pair = exact[exact["index"] == n - 3].iloc[0]
    assert pair["other_id"] == "0" and pair["labels_differ"]  # the copy under another label
    leaks = table[table["issue"] == "test_leak"]
    assert {"test/0", "test/1", "test/2", "test/3"} <= set(leaks["id"]) and (leaks["split"] == "test").all()
    assert set(leaks.loc[leaks["id"].isin(["test/0", "test/1", "test/2", "test/3"]), "other_id"]) == {"10", "11", "12", "13"}
    m = json.loads((run / "audit" / "manifest.json").read_text())
    assert m["metrics"]["n_exact_duplicate"] >= 6 and m["metrics"]["n_test_leak"] >= 4
    assert np.load(run / "audit" / "features.npy").shape[0] == n + 360
    assert "exact duplicates" in out and "copy training rows" in out


def test_features_file_is_used_and_checked(audited, cli, tmp_path):
    run, _, n = audited
    good = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", good)
    code, out, err = cli("audit", run, "--features", tmp_path / "f.npy")
    assert code == 0, err
    m = json.loads((run / "audit" / "manifest.json").read_text())
    assert m["parameters"]["features"] == "file" and not m["parameters"]["leak_check"]
    before = (run / "audit" / "issues.csv").read_bytes()
    for name, bad, needle in [("rows", good[:-1], "training rows"), ("nan", np.where(np.arange(n)[:, None] == 5, np.nan, good), "NaN"),
                              ("flat", good[:, 0], "N x D")]:
        np.save(tmp_path / f"{name}.npy", bad)
        code, out, err = cli("audit", run, "--features", tmp_path / f"{name}.npy")
        assert code != 0 and needle in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
    assert (run / "audit" / "issues.csv").read_bytes() == before  # nothing written by a refused call


def test_audit_of_a_run_without_data_fails_in_one_line(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = cli("audit", tmp_path / "empty")
    assert code != 0 and "no dataset" in err and "Traceback" not in err
    assert not (tmp_path / "empty" / "audit").exists()
