"""Exact copies by hashing the decoded rows: O(N), independent of any model or feature space.

Embeddings are not compared for bit equality: the same input embedded in another batch or on another
device can differ in its last bits. The stored uint8 pixels (or float32 table rows) are.
"""

from __future__ import annotations

import hashlib

import numpy as np

DIGEST_BYTES = 16  # 128-bit BLAKE2b: collisions are out of reach at any dataset size


def row_digests(X: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """One 128-bit digest per row, of its bytes together with its shape and dtype.

    Parameters
    ----------
    X : np.ndarray
        (N, ...) any dtype: uint8 images (N, C, H, W) or float32 table rows (N, D).
    chunk : int
        Rows made contiguous at a time (memory-mapped arrays stay on disk).

    Returns
    -------
    np.ndarray
        ``S16`` (N,): equal digests mean byte-identical rows.
    """
    X = np.asarray(X)
    head = f"{X.dtype.str}{X.shape[1:]}".encode()
    out = np.empty(len(X), dtype=f"S{DIGEST_BYTES}")
    for s in range(0, len(X), chunk):
        part = np.ascontiguousarray(X[s : s + chunk])
        for j, row in enumerate(part):
            h = hashlib.blake2b(head, digest_size=DIGEST_BYTES)
            h.update(row.tobytes())
            out[s + j] = h.digest()
    return out


def exact_groups(digests: np.ndarray) -> np.ndarray:
    """Group rows with equal digests.

    Parameters
    ----------
    digests : np.ndarray
        ``S16`` (N,) from :func:`row_digests`.

    Returns
    -------
    np.ndarray
        int64 (N,): a group number shared by the byte-identical rows (numbered by their first row), -1 for a row
        with no copy.
    """
    _, first, inverse, counts = np.unique(digests, return_index=True, return_inverse=True, return_counts=True)
    group = first[inverse].astype(np.int64)
    group[counts[inverse] < 2] = -1
    return group


def first_copy_in(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each query digest, the first reference row with the same digest (-1 if none): exact test leaks.

    Parameters
    ----------
    query, reference : np.ndarray
        ``S16`` (M,) and (N,) digests.

    Returns
    -------
    np.ndarray
        int64 (M,) reference row numbers, -1 where the query row has no copy.
    """
    if not len(reference):
        return np.full(len(query), -1, dtype=np.int64)
    order = np.argsort(reference, kind="stable")
    sorted_ref = reference[order]
    pos = np.searchsorted(sorted_ref, query)
    pos_c = np.minimum(pos, len(reference) - 1)
    hit = (pos < len(reference)) & (sorted_ref[pos_c] == query)
    return np.where(hit, order[pos_c], -1).astype(np.int64)
