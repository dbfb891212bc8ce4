"""Nearest neighbours in one feature space, by cosine distance (``1 - cos``, Datalab's metric for d > 3), with faiss.

Rows are L2-normalised once (float32) and searched by inner product: faiss's exact ``IndexFlatIP`` up to
``EXACT_LIMIT`` rows, an inverted-file index (``IndexIVFFlat``, k-means cells) above, where exact search is
quadratic. Queries run in chunks, so beyond the normalised copy and the index memory holds one chunk's
results and the (N, k) graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cleanpipe.errors import CleanpipeError
from cleanpipe.lazy import import_extra

EXACT_LIMIT = 200_000  # rows: exact search up to here (seconds at 60k rows; minutes at 1M on 2 cores)
QUERY_CHUNK = 16384  # query rows per search call
IVF_PROBES = 32  # cells searched per query by the approximate index
IVF_TRAIN_PER_CELL = 40  # k-means training rows per cell (faiss warns under 39)


def _faiss():
    return import_extra("faiss", needed_by="cleanpipe audit (nearest neighbours)", extra="audit",
                        requirement="faiss-cpu>=1.7")


def normalised(features: np.ndarray) -> np.ndarray:
    """float32 (N, D) rows scaled to unit length (all-zero rows stay zero), C-contiguous: faiss's input."""
    x = np.array(features, dtype=np.float32, order="C", copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x /= np.where(norms > 0, norms, 1.0)
    return x


@dataclass
class NeighbourIndex:
    """A searchable copy of the reference rows (normalised), exact or approximate."""

    index: object
    n: int
    exact: bool

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest reference rows of each normalised query row.

        Returns
        -------
        dist : np.ndarray
            float32 (M, k) cosine distances ``1 - cos`` in [0, 2], ascending; ``inf`` where fewer than k were found.
        idx : np.ndarray
            int64 (M, k) reference rows, -1 where none.
        """
        dist = np.empty((len(query), k), dtype=np.float32)
        idx = np.empty((len(query), k), dtype=np.int64)
        for s in range(0, len(query), QUERY_CHUNK):
            sim, ids = self.index.search(np.ascontiguousarray(query[s : s + QUERY_CHUNK]), k)
            d = np.clip(1.0 - sim, 0.0, 2.0)
            d[ids < 0] = np.inf
            dist[s : s + QUERY_CHUNK], idx[s : s + QUERY_CHUNK] = d, ids
        return dist, idx


def build_index(reference: np.ndarray, *, exact: bool | None = None, seed: int = 0, threads: int | None = None) -> NeighbourIndex:
    """An inner-product index over normalised rows (from :func:`normalised`).

    Parameters
    ----------
    reference : np.ndarray
        float32 (N, D), unit rows.
    exact : bool, optional
        Exact search (default: when N <= ``EXACT_LIMIT``).
    seed : int
        The approximate index's k-means seed.
    threads : int, optional
        faiss's OpenMP threads (default: faiss's own, all cores).
    """
    faiss = _faiss()
    if threads:
        faiss.omp_set_num_threads(int(threads))
    n, d = reference.shape
    exact = n <= EXACT_LIMIT if exact is None else bool(exact)
    if exact:
        index = faiss.IndexFlatIP(d)
    else:
        cells = int(min(max(64, 4 * np.sqrt(n)), n // IVF_TRAIN_PER_CELL))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, cells, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = reference[np.sort(rng.choice(n, size=min(n, cells * IVF_TRAIN_PER_CELL), replace=False))]
        index.cp.seed = int(seed)
        index.train(np.ascontiguousarray(sample))
        index.nprobe = IVF_PROBES
    index.add(reference)
    return NeighbourIndex(index, n, exact)


def knn_graph(x: np.ndarray, k: int, *, index: NeighbourIndex | None = None, mean_k: int | None = None,
              **index_args) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows (itself left out by ID, not by position: copies tie at distance 0).

    Parameters
    ----------
    x : np.ndarray
        float32 (N, D) normalised rows.
    k : int
        Neighbours kept per row, at most N - 1.
    mean_k : int, optional
        Also the mean distance to the ``mean_k`` nearest other rows (default ``k``), computed chunk by chunk so that
        only the (N, k) graph is kept.

    Returns
    -------
    dist, idx : np.ndarray
        float32 (N, k) cosine distances ascending and int64 (N, k) row numbers.
    mean_dist : np.ndarray
        float32 (N,): the mean distance to the ``mean_k`` nearest.
    """
    n = len(x)
    mean_k = k if mean_k is None else int(mean_k)
    if not 1 <= k < n:
        raise CleanpipeError(f"k must lie in 1..{n - 1} for {n} rows, got {k}")
    mean_k = min(mean_k, n - 1)
    wide = max(k, mean_k)
    index = index or build_index(x, **index_args)
    dist = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    mean_dist = np.empty(n, dtype=np.float32)
    for s in range(0, n, QUERY_CHUNK):
        d, i = index.search(x[s : s + QUERY_CHUNK], wide + 1)
        m = len(d)
        own = i == np.arange(s, s + m)[:, None]
        # drop the row itself where found, else the farthest column; order stays ascending
        drop = np.where(own.any(1), own.argmax(1), wide)
        keep = np.ones_like(own)
        keep[np.arange(m), drop] = False
        d, i = d[keep].reshape(m, wide), i[keep].reshape(m, wide)
        dist[s : s + m], idx[s : s + m] = d[:, :k], i[:, :k]
        near = d[:, :mean_k]
        mean_dist[s : s + m] = np.nanmean(np.where(np.isfinite(near), near, np.nan), 1) if np.isinf(near).any() else near.mean(1)
    return dist, idx, mean_dist
