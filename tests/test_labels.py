"""Label files: .npy, .csv, .json lists and the CL paper's {path: label} mapping."""

import json

import numpy as np
import pandas as pd
import pytest

from cleanpipe.errors import CleanpipeError
from cleanpipe.labels import read_labels

NAMES = ["airplane", "automobile", "bird"]


def test_npy_csv_json_lists(tmp_path):
    y = np.array([0, 2, 1, 1])
    np.save(tmp_path / "y.npy", y.astype(np.int8))
    np.save(tmp_path / "f.npy", y.astype(np.float32))
    np.save(tmp_path / "s.npy", np.array(NAMES)[y])
    pd.DataFrame({"label": y}).to_csv(tmp_path / "y.csv", index=False)
    pd.DataFrame({"x": [9] * 4, "Given_Label": y}).to_csv(tmp_path / "named.csv", index=False)
    (tmp_path / "plain.csv").write_text("0\n2\n1\n1\n")
    (tmp_path / "plainnames.csv").write_text("airplane\nbird\nautomobile\nautomobile\n")
    (tmp_path / "y.json").write_text(json.dumps(y.tolist()))
    (tmp_path / "names.json").write_text(json.dumps(["airplane", "bird", "automobile", "automobile"]))
    (tmp_path / "mixed.json").write_text(json.dumps([0, "bird", "1", 1.0]))
    for name in ("y.npy", "f.npy", "s.npy", "y.csv", "named.csv", "plain.csv", "plainnames.csv",
                 "y.json", "names.json", "mixed.json"):
        got = read_labels(tmp_path / name, n=4, class_names=NAMES)
        assert got.dtype == np.int64 and got.shape == (4,) and got.tolist() == [0, 2, 1, 1], name


def test_standalone_without_dataset(tmp_path):
    np.save(tmp_path / "y.npy", np.array([3, 0, 7]))
    assert read_labels(tmp_path / "y.npy").tolist() == [3, 0, 7]


def test_csv_matched_by_id(tmp_path):
    pd.DataFrame({"id": ["b", "a", "c", "extra"], "given_label": [1, 0, 2, 0]}).to_csv(tmp_path / "y.csv", index=False)
    assert read_labels(tmp_path / "y.csv", ids=["a", "b", "c"], n=3).tolist() == [0, 1, 2]
    # IDs are text: zero-padded IDs are not read as numbers.
    pd.DataFrame({"id": ["007", "7"], "class": ["bird", "airplane"]}).to_csv(tmp_path / "z.csv", index=False)
    assert read_labels(tmp_path / "z.csv", ids=["7", "007"], class_names=NAMES).tolist() == [0, 2]
    pd.DataFrame({"id": ["a", "a"], "label": [0, 1]}).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(CleanpipeError, match="'a' appears twice"):
        read_labels(tmp_path / "dup.csv", ids=["a"])


def test_cl_paper_mapping_by_path_suffix(tmp_path):
    ids = ["train/airplane/10008_airplane.png", "train/bird/7_bird.png"]
    mapping = {
        "/datasets/datasets/cifar10/cifar10/train/bird/7_bird.png": 2,
        "/datasets/datasets/cifar10/cifar10/train/airplane/10008_airplane.png": 1,
        "/datasets/datasets/cifar10/cifar10/test/bird/3_bird.png": 0,  # not in the training split: ignored
    }
    (tmp_path / "m.json").write_text(json.dumps(mapping))
    assert read_labels(tmp_path / "m.json", ids=ids, n=2, class_names=NAMES).tolist() == [1, 2]
    # Exact keys work too, and so do flat-layout IDs (a shorter suffix).
    (tmp_path / "e.json").write_text(json.dumps({"airplane/1.png": "bird", "bird/2.png": "airplane"}))
    assert read_labels(tmp_path / "e.json", ids=["bird/2.png", "airplane/1.png"], class_names=NAMES).tolist() == [0, 2]
    assert read_labels(tmp_path / "m.json", ids=["airplane/10008_airplane.png"]).tolist() == [1]


def test_mapping_errors(tmp_path):
    mapping = {"/d/train/bird/7_bird.png": 2, "/d/train/airplane/1.png": 1}
    (tmp_path / "m.json").write_text(json.dumps(mapping))
    with pytest.raises(CleanpipeError, match=r"1 of 3 examples have no entry \(e\.g\. ID 'train/cat/1\.png'"):
        read_labels(tmp_path / "m.json", ids=["train/bird/7_bird.png", "train/airplane/1.png", "train/cat/1.png"])
    with pytest.raises(CleanpipeError, match="needs a dataset"):
        read_labels(tmp_path / "m.json")
    # Two keys ending in the same ID: ambiguous, so refused.
    (tmp_path / "amb.json").write_text(json.dumps({"/a/train/x.png": 0, "/b/train/x.png": 1}))
    with pytest.raises(CleanpipeError, match="two entries end in the same example ID 'train/x.png'"):
        read_labels(tmp_path / "amb.json", ids=["train/x.png"])
    (tmp_path / "dupkey.json").write_text('{"a": 0, "a": 1}')
    with pytest.raises(CleanpipeError, match="'a' appears twice"):
        read_labels(tmp_path / "dupkey.json", ids=["a"])


@pytest.mark.parametrize(
    "content,kwargs,match",
    [
        (np.array([0, 1, 5]), {"class_names": NAMES}, "label 5 .* out of range; this dataset has classes 0..2"),
        (np.array([0, -1]), {}, ">= 0"),
        (np.array([0, 1, 1]), {"n": 1437}, "has 3 entries but the dataset's training split has 1,437"),
        (np.array([0.5, 1.0]), {}, "whole class ids"),
        (np.eye(3), {}, "1-D vector.*argmax"),
        (np.array([True, False]), {}, "not a class id"),
        (["airplane", "cat"], {"class_names": NAMES}, "unknown class 'cat' at entry 1; classes are airplane"),
        (["airplane"], {}, "unknown class 'airplane'.*with --dataset"),
        ([[0, 1], [1, 0]], {}, r"entry 0 is \[0, 1\]"),
        ([0, None], {}, "entry 1 is None"),
    ],
)
def test_invalid_labels(tmp_path, content, kwargs, match):
    if isinstance(content, list):
        p = tmp_path / "y.json"
        p.write_text(json.dumps(content))
    else:
        p = tmp_path / "y.npy"
        np.save(p, content)
    with pytest.raises(CleanpipeError, match=match):
        read_labels(p, **kwargs)


def test_unreadable_files(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    (tmp_path / "bad.json").write_text("{oops")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "y.txt").write_text("1 2")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "nolabel.csv").write_text("a,b\n1,2\n")
    (tmp_path / "hole.csv").write_text("label,id\n1,a\n,b\n")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for name, match in [
        ("bad.npy", "corrupt|not a .npy file of plain numbers"), ("bad.json", "not valid JSON"), ("bin.json", "cannot read"),
        ("y.txt", "unknown format .txt"), ("empty.csv", "not a readable CSV"), ("nolabel.csv", "no label column"),
        ("hole.csv", "rows have no label"), ("obj.npy", "not a .npy file of plain numbers"), ("none.npy", "no such file"),
    ]:
        with pytest.raises(CleanpipeError, match=match):
            read_labels(tmp_path / name)


def test_errors_are_one_line(tmp_path):
    (tmp_path / "ragged.csv").write_text("label\n1\n2,3\n")
    with pytest.raises(CleanpipeError) as e:
        read_labels(tmp_path / "ragged.csv")
    assert "\n" not in str(e.value) and "not a readable CSV" in str(e.value)


def test_partial_labels_read_numbers_as_class_ids_and_one_reader_refuses_an_id_only_csv(tmp_path):
    from cleanpipe.labels import read_partial_labels

    probe = tmp_path / "probe.csv"
    probe.write_text("id,label\n7,1\n3,3\n")
    rows, labels = read_partial_labels(probe, ids=[str(i) for i in range(10)], class_names=["1", "2", "3", "4"])
    assert rows.tolist() == [3, 7] and labels.tolist() == [3, 1]  # numbers are ids here, not the names "1" and "3"
    only_ids = tmp_path / "ids.csv"
    only_ids.write_text("id\n0\n1\n")
    with pytest.raises(CleanpipeError, match="only an `id` column"):
        read_labels(only_ids, ids=["0", "1"])


def test_corrections_naming_one_example_twice_are_refused(tmp_path):
    from cleanpipe.stages.apply import read_corrections

    path = tmp_path / "corrections.csv"
    path.write_text("id,decision,label\n732,relabel,3\nscans/732,relabel,4\n")
    with pytest.raises(CleanpipeError, match="two rows name example '732'"):
        read_corrections(path, ["731", "732"], np.array([0, 1]), [str(k) for k in range(10)])
