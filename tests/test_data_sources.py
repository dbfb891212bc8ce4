"""Every source on small real-format fixtures written here, plus the shared MNIST test set."""

import gzip
import pickle
import struct

import numpy as np
import pandas as pd
import pytest

from cleanpipe.data import DataSpec, load_dataset
from cleanpipe.errors import CleanpipeError

RNG = np.random.default_rng(0)
MNIST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---- digits -------------------------------------------------------------------------------


def test_digits_is_embedded_and_deterministic():
    a, b = load_dataset(DataSpec("digits")), load_dataset(DataSpec("digits"))
    assert len(a.y_train) + len(a.y_test) == 1797
    assert a.X_train.dtype == np.uint8 and a.input_shape == (1, 8, 8) and a.X_train.max() == 255
    assert np.array_equal(a.ids_test, b.ids_test) and a.fingerprint() == b.fingerprint()
    assert set(np.bincount(a.y_test)) <= {35, 36, 37}  # stratified 20%
    c = load_dataset(DataSpec("digits", split_seed=1))
    assert not np.array_equal(a.ids_test, c.ids_test)


# ---- mnist --------------------------------------------------------------------------------


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(data)


def idx_pair(root, prefix, n, gz=True):
    ext = ".gz" if gz else ""
    X = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = np.arange(n) % 10
    write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", X, 0x803)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", y, 0x801)
    return X, y


def test_mnist_shared_test_set(mnist_dir):
    ds = load_dataset(DataSpec("mnist", str(mnist_dir)))
    X = np.concatenate([ds.X_train, ds.X_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    assert X.shape == (10000, 1, 28, 28) and X.dtype == np.uint8 and y.dtype == np.int64
    assert np.bincount(y).tolist() == MNIST_COUNTS
    assert (len(ds.y_train), len(ds.y_test)) == (8000, 2000)
    assert ds.class_names == [str(d) for d in range(10)]
    assert sorted(map(int, np.concatenate([ds.ids_train, ds.ids_test]))) == list(range(10000))


def test_mnist_official_split_gz_and_plain(tmp_path):
    Xtr, ytr = idx_pair(tmp_path, "train", 50, gz=False)
    Xte, yte = idx_pair(tmp_path, "t10k", 30, gz=True)
    ds = load_dataset(DataSpec("mnist", str(tmp_path)))
    assert ds.X_train.shape == (50, 1, 28, 28) and ds.X_train.dtype == np.uint8
    assert np.array_equal(ds.X_train[:, 0], Xtr) and np.array_equal(ds.y_train, ytr)
    assert np.array_equal(ds.X_test[:, 0], Xte) and np.array_equal(ds.y_test, yte)
    assert ds.ids_train[0] == "train/0" and ds.ids_test[-1] == "t10k/29"
    assert ds.y_train.dtype == np.int64


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_single_pair_holdout(tmp_path, gz):
    X, y = idx_pair(tmp_path, "train", 100, gz=gz)
    ds = load_dataset(DataSpec("mnist", str(tmp_path), test_fraction=0.3, split_seed=3))
    assert (len(ds.y_train), len(ds.y_test)) == (70, 30)
    i = int(ds.ids_test[0])  # IDs are the index in the file
    assert np.array_equal(ds.X_test[0, 0], X[i]) and ds.y_test[0] == y[i]


@pytest.mark.parametrize(
    "damage,match",
    [
        ("magic", "not an IDX images file"),
        ("truncate", "truncated or corrupt"),
        ("header", "truncated IDX header"),
        ("count", "holds 20 images but .* holds 19 labels"),
        ("missing", "not its IDX partner t10k-images-idx3-ubyte"),
        ("badgz", "gzip"),
    ],
)
def test_mnist_bad_files(tmp_path, damage, match):
    idx_pair(tmp_path, "t10k", 20, gz=False)
    img = tmp_path / "t10k-images-idx3-ubyte"
    if damage == "magic":
        img.write_bytes(b"\x00\x00\x08\x01" + img.read_bytes()[4:])
    elif damage == "truncate":
        img.write_bytes(img.read_bytes()[:-10])
    elif damage == "header":
        img.write_bytes(img.read_bytes()[:10])
    elif damage == "count":
        write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(19) % 10, 0x801)
    elif damage == "missing":
        img.unlink()
    else:
        img.unlink()
        gz = gzip.compress(RNG.integers(0, 256, 5000, dtype=np.uint8).tobytes())
        (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(CleanpipeError, match=match):
        load_dataset(DataSpec("mnist", str(tmp_path)))


def test_mnist_empty_dir_names_expected_files(tmp_path):
    with pytest.raises(CleanpipeError, match=r"t10k-images-idx3-ubyte\[\.gz\]"):
        load_dataset(DataSpec("mnist", str(tmp_path)))


# ---- cifar --------------------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2's cPickle did (BINSTRING), as in the real CIFAR files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin-1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def dump(path, obj, py2=False):
    if py2:
        buf = __import__("io").BytesIO()
        Py2Pickler(buf, protocol=2).dump(obj)
        # The originals were written by NumPy 1.x, whose module is numpy.core.
        path.write_bytes(buf.getvalue().replace(b"cnumpy._core.", b"cnumpy.core."))
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)


def cifar_dir(root, n=20, hundred=False, py2=False):
    root.mkdir()
    files = ["train"] if hundred else [f"data_batch_{i}" for i in range(1, 6)]
    key = b"fine_labels" if hundred else b"labels"
    k = 100 if hundred else 10
    arrays = {}
    for name in files + ["test" if hundred else "test_batch"]:
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in RNG.integers(0, k, n)]
        d = {b"batch_label": b"batch", b"data": data, key: labels,
             b"filenames": [f"img_{name}_{i}.png".encode() for i in range(n)]}
        if hundred:
            d[b"coarse_labels"] = [lab // 5 for lab in labels]
        dump(root / name, d, py2)
        arrays[name] = (data, labels)
    if hundred:
        dump(root / "meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                             b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, py2)
    else:
        dump(root / "batches.meta", {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer",
                                                      b"dog", b"frog", b"horse", b"ship", b"truck"],
                                     b"num_cases_per_batch": n, b"num_vis": 3072}, py2)
    return arrays


@pytest.mark.parametrize("py2", [False, True])
def test_cifar10_batches(tmp_path, py2):
    arrays = cifar_dir(tmp_path / "cifar-10-batches-py", py2=py2)
    ds = load_dataset(DataSpec("cifar10", str(tmp_path / "cifar-10-batches-py")))
    assert ds.X_train.shape == (100, 3, 32, 32) and ds.X_test.shape == (20, 3, 32, 32)
    assert ds.X_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    row = arrays["data_batch_2"][0][3]
    x = ds.X_train[23]  # batch 2, image 3
    assert np.array_equal(x[0].ravel(), row[:1024]) and np.array_equal(x[2, 1], row[2048 + 32: 2048 + 64])
    assert ds.y_train[23] == arrays["data_batch_2"][1][3]
    assert ds.class_names[9] == "truck"
    assert ds.ids_train[0] == "data_batch_1/0" and ds.ids_train[23] == "data_batch_2/3"
    assert ds.ids_test[-1] == "test_batch/19"
    # Also found when --data names the folder holding cifar-10-batches-py.
    assert load_dataset(DataSpec("cifar10", str(tmp_path))).fingerprint() == ds.fingerprint()


@pytest.mark.parametrize("py2", [False, True])
def test_cifar100_batches(tmp_path, py2):
    arrays = cifar_dir(tmp_path / "cifar-100-python", hundred=True, py2=py2)
    ds = load_dataset(DataSpec("cifar100", str(tmp_path / "cifar-100-python")))
    assert ds.n_classes == 100 and ds.class_names[3] == "c3"
    assert ds.X_train.shape == (20, 3, 32, 32) and np.array_equal(ds.y_test, arrays["test"][1])
    assert ds.ids_train[5] == "train/5" and ds.ids_test[0] == "test/0"
    cof = ds.meta["coarse_of_fine"]
    assert len(cof) == 100 and all(type(c) is int for c in cof)
    seen = set(np.concatenate([ds.y_train, ds.y_test]).tolist())
    assert all(cof[c] == (c // 5 if c in seen else -1) for c in range(100))
    assert ds.meta["coarse_names"][:2] == ["s0", "s1"]


def test_cifar_refuses_malicious_pickle(tmp_path):
    root = tmp_path / "evil"
    cifar_dir(root)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("touch " + str(marker),))

    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil()}, f, protocol=2)
    with pytest.raises(CleanpipeError, match="refusing to load .*data_batch_1.*(posix|os|nt).system"):
        load_dataset(DataSpec("cifar10", str(root)))
    assert not marker.exists()


def test_cifar_refuses_codecs_beyond_latin1(tmp_path):
    root = tmp_path / "c"
    cifar_dir(root)
    import codecs

    class Sneaky:
        def __reduce__(self):
            return (codecs.encode, ("x", "zlib"))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Sneaky()}, protocol=2))
    with pytest.raises(CleanpipeError, match="other than latin-1"):
        load_dataset(DataSpec("cifar10", str(root)))


@pytest.mark.parametrize("damage,match", [
    ("missing", "missing data_batch_3; expected"),
    ("meta", "missing batches.meta"),
    ("truncated", "unreadable or corrupt CIFAR batch"),
    ("shape", "uint8 N x 3072"),
])
def test_cifar_bad_dirs(tmp_path, damage, match):
    root = tmp_path / "c"
    cifar_dir(root)
    if damage == "missing":
        (root / "data_batch_3").unlink()
    elif damage == "meta":
        (root / "batches.meta").unlink()
    elif damage == "truncated":
        (root / "data_batch_2").write_bytes((root / "data_batch_2").read_bytes()[:500])
    else:
        dump(root / "test_batch", {b"data": np.zeros((4, 32, 32), np.uint8), b"labels": [0] * 4})
    with pytest.raises(CleanpipeError, match=match):
        load_dataset(DataSpec("cifar10", str(root)))


# ---- folder -------------------------------------------------------------------------------


def png_folder(root, classes=("cat", "dog"), n=6, size=(12, 9), grey=False):
    from PIL import Image

    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = RNG.integers(0, 256, size[::-1] + (() if grey else (3,)), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i:03d}.png")


def test_folder_flat(tmp_path):
    root = tmp_path / "flat"
    png_folder(root)
    (root / "cat" / ".DS_Store").write_bytes(b"junk")
    (root / "dog" / "notes.txt").write_text("not an image")
    ds = load_dataset(DataSpec("folder", str(root), image_size=16, test_fraction=0.25))
    assert ds.X_train.shape[1:] == (3, 16, 16) and ds.X_train.dtype == np.uint8
    assert len(ds.y_train) + len(ds.y_test) == 12 and ds.class_names == ["cat", "dog"]
    ids = list(ds.ids_train) + list(ds.ids_test)
    assert set(ids) == {f"{c}/{i:03d}.png" for c in ("cat", "dog") for i in range(6)}
    assert list(ds.ids_train) == sorted(ds.ids_train)  # deterministic, sorted order
    assert all(ds.class_names[k] == i.split("/")[0] for k, i in zip(ds.y_train, ds.ids_train))
    assert ds.meta["skipped_files"] == 1
    again = load_dataset(DataSpec("folder", str(root), image_size=16, test_fraction=0.25))
    assert again.fingerprint() == ds.fingerprint()


def test_folder_pixels_are_resized_bilinear(tmp_path):
    from PIL import Image

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for c, v in (("a", 10), ("b", 200)):
        for i in range(2):
            Image.fromarray(np.full((5, 7, 3), (v, v + 1, v + 2), np.uint8)).save(tmp_path / c / f"{i}.png")
    ds = load_dataset(DataSpec("folder", str(tmp_path), image_size=4, test_fraction=0.5))
    x = ds.X_train[ds.y_train == 1][0]
    assert x.shape == (3, 4, 4) and x[:, 0, 0].tolist() == [200, 201, 202]


def test_folder_train_test_layout_grey(tmp_path):
    png_folder(tmp_path / "split" / "train", grey=True)
    png_folder(tmp_path / "split" / "test", n=2, grey=True)
    ds = load_dataset(DataSpec("folder", str(tmp_path / "split"), image_size=8))
    assert ds.X_train.shape == (12, 1, 8, 8) and ds.X_test.shape == (4, 1, 8, 8)
    assert ds.ids_train[0] == "train/cat/000.png" and ds.ids_test[-1] == "test/dog/001.png"
    assert ds.y_test.tolist() == [0, 0, 1, 1] and ds.meta["split"] == "official"


def test_folder_mixed_grey_and_colour_is_rgb(tmp_path):
    png_folder(tmp_path, classes=("a",), grey=True)
    png_folder(tmp_path, classes=("b",))
    ds = load_dataset(DataSpec("folder", str(tmp_path), image_size=8, test_fraction=0.5))
    assert ds.input_shape == (3, 8, 8)
    grey = ds.X_train[ds.y_train == 0]
    assert np.array_equal(grey[:, 0], grey[:, 2])  # greyscale replicated into R, G, B


@pytest.mark.parametrize("problem,match", [
    ("broken", "broken.png: not a readable image"),
    ("emptyclass", "class folder empty/ holds no images"),
    ("nothing", "no class sub-folders"),
])
def test_folder_errors(tmp_path, problem, match):
    root = tmp_path / "f"
    if problem == "nothing":
        root.mkdir()
    else:
        png_folder(root)
    if problem == "broken":
        (root / "cat" / "broken.png").write_bytes(b"not an image")
    elif problem == "emptyclass":
        (root / "empty").mkdir()
    with pytest.raises(CleanpipeError, match=match):
        load_dataset(DataSpec("folder", str(root)))


# ---- table --------------------------------------------------------------------------------


def test_table_csv_and_parquet_string_labels(tmp_path):
    df = pd.DataFrame({"a": RNG.normal(size=40), "b": np.arange(40), "species": ["y", "x"] * 20})
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_parquet(tmp_path / "t.parquet")
    for name in ("t.csv", "t.parquet"):
        ds = load_dataset(DataSpec("table", str(tmp_path / name), label_column="species"))
        assert ds.X_train.dtype == np.float32 and ds.X_train.shape == (32, 2) and len(ds.y_test) == 8
        assert ds.class_names == ["x", "y"] and ds.meta["feature_names"] == ["a", "b"]
        i = int(ds.ids_train[0])  # IDs are row numbers
        assert ds.class_names[ds.y_train[0]] == df.species[i] and ds.X_train[0, 1] == i


def test_table_numeric_labels(tmp_path):
    df = pd.DataFrame({"a": RNG.normal(size=30), "label": np.arange(30) % 3})
    df.to_csv(tmp_path / "num.csv", index=False)
    ds = load_dataset(DataSpec("table", str(tmp_path / "num.csv")))
    assert ds.class_names == ["0", "1", "2"] and ds.y_train.dtype == np.int64
    df.assign(label=(np.arange(30) % 3) * 5 - 5).to_parquet(tmp_path / "neg.pq")
    ds = load_dataset(DataSpec("table", str(tmp_path / "neg.pq")))
    assert ds.class_names == ["-5", "0", "5"]  # sorted as numbers, names kept


@pytest.mark.parametrize("problem,match", [
    ("text", "column 'c' is not numeric.*drop it or encode it"),
    ("nan", "column 'a' has missing values"),
    ("nolabel", "no label column 'label'; choose --label-column from a, target"),
    ("nanlabel", "rows have no 'label'"),
])
def test_table_errors(tmp_path, problem, match):
    df = pd.DataFrame({"a": np.arange(10.0), "label": np.arange(10) % 2})
    if problem == "text":
        df["c"] = "t"
    elif problem == "nan":
        df.loc[3, "a"] = np.nan
    elif problem == "nanlabel":
        df["label"] = df["label"].astype(float)
        df.loc[2, "label"] = np.nan
    else:
        df = df.rename(columns={"label": "target"})
    df.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(CleanpipeError, match=match):
        load_dataset(DataSpec("table", str(tmp_path / "t.csv")))


def test_table_unreadable(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"not parquet")
    with pytest.raises(CleanpipeError, match="not a readable parquet table"):
        load_dataset(DataSpec("table", str(tmp_path / "t.parquet")))
    (tmp_path / "t.xlsx").write_bytes(b"")
    with pytest.raises(CleanpipeError, match=r"\.csv or \.parquet"):
        load_dataset(DataSpec("table", str(tmp_path / "t.xlsx")))


# ---- npz ----------------------------------------------------------------------------------


def test_npz_images(tmp_path):
    X = RNG.integers(0, 256, (20, 10, 10), dtype=np.uint8)
    np.savez(tmp_path / "img.npz", X=X, y=np.arange(20) % 2)
    ds = load_dataset(DataSpec("npz", str(tmp_path / "img.npz")))
    assert ds.input_shape == (1, 10, 10) and ds.class_names == ["0", "1"]
    assert np.array_equal(ds.X_train[0, 0], X[int(ds.ids_train[0])])
    nhwc = RNG.integers(0, 256, (20, 10, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "nhwc.npz", X=nhwc, y=np.arange(20) % 2)
    ds = load_dataset(DataSpec("npz", str(tmp_path / "nhwc.npz")))
    assert ds.input_shape == (3, 10, 8)
    assert np.array_equal(ds.X_train[0], nhwc[int(ds.ids_train[0])].transpose(2, 0, 1))
    np.savez(tmp_path / "nchw.npz", X=RNG.integers(0, 256, (20, 3, 6, 6), dtype=np.uint8), y=np.arange(20) % 2)
    assert load_dataset(DataSpec("npz", str(tmp_path / "nchw.npz"))).input_shape == (3, 6, 6)


def test_npz_features_with_test_split_and_names(tmp_path):
    np.savez(tmp_path / "f.npz", X=RNG.normal(size=(30, 4)), y=np.arange(30) % 3,
             X_test=RNG.normal(size=(6, 4)), y_test=np.arange(6) % 3, class_names=np.array(["a", "b", "c"]))
    ds = load_dataset(DataSpec("npz", str(tmp_path / "f.npz")))
    assert ds.X_train.dtype == np.float32 and ds.input_shape == (4,)
    assert (len(ds.y_train), len(ds.y_test)) == (30, 6) and ds.class_names == ["a", "b", "c"]
    assert ds.ids_train[3] == "3" and ds.ids_test[0] == "test/0"


@pytest.mark.parametrize("arrays,match", [
    ({"X": np.array([{"a": 1}] * 4, dtype=object), "y": np.arange(4)}, "pickled"),
    ({"X": np.zeros((4, 2))}, "no array 'y'"),
    ({"X_train": np.zeros((4, 2)), "y_train": np.arange(4) % 2}, r"holds X_train, y_train\); save the training arrays as X and y"),
    ({"X": np.zeros((4, 2)), "y": np.array([0.5, 1, 0, 1])}, "integer vector"),
    ({"X": np.zeros((4, 2)), "y": np.array([0, -1, 0, 1])}, "negative"),
    ({"X": np.zeros((4, 2, 2)), "y": np.arange(4) % 2}, "uint8 images"),
    ({"X": np.zeros((4, 2)), "y": np.arange(3)}, "4 rows but y has 3"),
    ({"X": np.zeros((4, 2)), "y": np.arange(4) % 2, "X_test": np.zeros((2, 2))}, "without its partner"),
])
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "o.npz", **arrays)
    with pytest.raises(CleanpipeError, match=match):
        load_dataset(DataSpec("npz", str(tmp_path / "o.npz")))


def test_npz_not_an_archive(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"garbage")
    with pytest.raises(CleanpipeError, match="not an .npz archive"):
        load_dataset(DataSpec("npz", str(tmp_path / "x.npz")))


# ---- shared -------------------------------------------------------------------------------


def test_labels_option_replaces_training_labels(tmp_path):
    ds = load_dataset(DataSpec("digits"))
    own = (ds.y_train + 1) % 10
    np.save(tmp_path / "own.npy", own)
    ds2 = load_dataset(DataSpec("digits", labels=str(tmp_path / "own.npy")))
    assert np.array_equal(ds2.y_train, own) and np.array_equal(ds2.y_test, ds.y_test)
    np.save(tmp_path / "short.npy", own[:-1])
    with pytest.raises(CleanpipeError, match="dataset's training split has 1,437"):
        load_dataset(DataSpec("digits", labels=str(tmp_path / "short.npy")))


def test_unknown_source_and_missing_path():
    with pytest.raises(CleanpipeError, match="unknown dataset"):
        load_dataset(DataSpec("imagenet"))
    with pytest.raises(CleanpipeError, match="needs data"):  # the parameter (the CLI says --data)
        load_dataset(DataSpec("cifar10"))
    with pytest.raises(CleanpipeError, match="no such file"):
        load_dataset(DataSpec("npz", "/nonexistent.npz"))


def test_stratified_split_is_seeded_stratified_and_refuses_parts_smaller_than_the_classes():
    from cleanpipe.data.base import stratified_split

    y = np.repeat(np.arange(4), [50, 30, 15, 5])
    X, ids = np.arange(100)[:, None], np.arange(100).astype(str)
    Xtr, ytr, idtr, Xte, yte, idte = stratified_split(X, y, ids, test_fraction=0.2, seed=1)
    assert len(yte) == 20 and np.bincount(yte).tolist() == [10, 6, 3, 1]
    assert sorted(np.concatenate([idtr, idte]).astype(int).tolist()) == list(range(100))
    assert np.array_equal(idte, stratified_split(X, y, ids, test_fraction=0.2, seed=1)[5])
    assert not np.array_equal(idte, stratified_split(X, y, ids, test_fraction=0.2, seed=2)[5])
    with pytest.raises(CleanpipeError, match=r"the test part \(1\) would be smaller than the number of classes \(4\)"):
        stratified_split(X, y, ids, test_fraction=0.01, seed=0)
    with pytest.raises(CleanpipeError, match=r"the training part \(1\) would be smaller"):
        stratified_split(X, y, ids, test_fraction=0.99, seed=0)
