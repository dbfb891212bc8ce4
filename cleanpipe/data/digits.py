"""scikit-learn's 8x8 digits: the embedded default dataset."""

from __future__ import annotations

import numpy as np

from cleanpipe.data.base import Dataset, index_ids, stratified_split


def load(spec) -> Dataset:
    """1,797 images as uint8 (N, 1, 8, 8) scaled from 0..16 to 0..255; seeded stratified test split."""
    from sklearn.datasets import (
        load_digits,  # scikit-learn only when the digits are used
    )

    bunch = load_digits()
    # 0..16 grey levels -> 0..255 so every image source shares one pixel range.
    X = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    y = bunch.target.astype(np.int64)
    parts = stratified_split(X, y, index_ids(len(y)), test_fraction=spec.test_fraction, seed=spec.split_seed)
    Xtr, ytr, idtr, Xte, yte, idte = parts
    return Dataset(Xtr, ytr, Xte, yte, idtr, idte, [str(d) for d in range(10)], "digits")
