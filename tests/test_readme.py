"""README's Python example runs as written (on 900 digits with 20% of the labels flipped)."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_example_in_the_readme_runs():
    text = README.read_text()
    section = text[text.index("## Using it from Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    from cleanpipe.data import DataSpec, load_dataset

    ds = load_dataset(DataSpec("digits"))
    n = 900  # of the 1,437 training images: the example's default recipes run in a few seconds
    ds.X_train, ds.y_train = ds.X_train[:n], ds.y_train[:n]
    rng = np.random.default_rng(0)
    y = ds.y_train.copy()
    flip = rng.random(len(y)) < 0.2
    y[flip] = (y[flip] + rng.integers(1, 10, flip.sum())) % 10
    env = {"X": ds.X_train, "y": y, "K": 10, "X_test": ds.X_test, "y_test": ds.y_test}
    exec(compile(code, str(README), "exec"), env)
    issues, result = env["issues"], env["result"]
    assert np.mean(issues.issue_mask[flip]) > 0.8  # most flipped labels are found
    assert result.test_accuracy > 0.9
