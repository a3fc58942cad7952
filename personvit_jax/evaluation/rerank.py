"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) from neighbour lists and sparse vectors.

The published formulation holds N x N matrices (N = queries + gallery): the original distances,
their full argsort and the encoding V. At MSMT17 scale (N = 93,820) that is ~200 GB. The result
only needs, for every item, its k1 + 1 nearest neighbours, its largest distance (the original
divides each row by its maximum) and V, which has ~k1 non-zeros per row. So here:

  1. one pass over row blocks of the N x N distances (jitted matmul) keeps the k1 + 1 nearest
     neighbours and the row maximum; the neighbours are found exactly without sorting a row: the
     (k1 + 1)-th smallest of a strided column subset bounds the true (k1 + 1)-th smallest from
     above, so only entries below that bound are sorted;
  2. k-reciprocal sets R(i) = {j in N(i, k1): i in N(j, k1)}, expanded by R*(j) (lists of
     round(k1 / 2) + 1 neighbours) of each j in R(i) when |R*(j) & R(i)| > 2/3 |R*(j)|, are
     vectorised over all items; V[i, j] = exp(-d(i, j)) normalised over the expanded set;
  3. local query expansion V <- mean of V over the k2 nearest neighbours (a sparse product);
  4. Jaccard distance 1 - s / (2 - s), s = sum_k min(V[q, k], V[g, k]), from an inverted index
     of the gallery rows, one block of queries at a time;
  final = (1 - lambda) * Jaccard + lambda * d(q, g) / max_j d(q, j).

Distances are the evaluation's: squared Euclidean (as the published code) or 1 - cosine. Ties
among neighbours are ordered by index. Memory: O(N * (k1 + k2 * k1)) plus one [block, N] slab.

`jaccard_graph` is the same encoding among the N items of one set, in the variant clustering
uses (Cluster Contrast's compute_jaccard_distance), kept sparse: only the pairs close enough
for DBSCAN are stored.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from personvit_jax.evaluation.distances import feature_distance_rows, float_keys, nonzero_below
from personvit_jax.linalg import l2_normalize

BLOCK = 256  # rows of the N x N distance pass; 256 x 93,820 float32 = 96 MB


def _ragged_arange(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concatenate([arange(s, s + l) for s, l in zip(starts, lengths)]) without a loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


def smallest_k(dist_cn: np.ndarray, k: int, probe_columns: int = 1024) -> np.ndarray:
    """Indices [c, k] of the k smallest entries of each row, ascending (ties by column index).

    The k-th smallest of every `stride`-th column is an upper bound of the row's k-th
    smallest, so at least k entries lie at or below it and only those (~k * stride) are sorted.
    """
    c, n = dist_cn.shape
    if k > n:
        raise ValueError(f"asked for {k} nearest neighbours among {n} items")
    stride = max(1, n // max(probe_columns, k))
    probe = dist_cn[:, ::stride]
    bound = np.partition(probe, k - 1, axis=1)[:, k - 1]
    rows, cols, vals = nonzero_below(dist_cn, bound)
    idx_bits = max(1, int(n - 1).bit_length())
    shift = np.uint64(32 + idx_bits)
    keys = np.sort((rows.astype(np.uint64) << shift)
                   | (float_keys(vals) << np.uint64(idx_bits))
                   | cols.astype(np.uint64))
    first = np.searchsorted(keys, np.arange(c, dtype=np.uint64) << shift)
    take = keys[first[:, None] + np.arange(k)]
    return (take & np.uint64((1 << idx_bits) - 1)).astype(np.int64)


def neighbours_and_row_max(feats_nd: np.ndarray, metric: str, k: int, block: int = BLOCK,
                           log=None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours [N, k] (self included, ascending) and max distance [N] of every
    item among all N items, one block of rows at a time."""
    n = len(feats_nd)
    rows_of = feature_distance_rows(feats_nd, feats_nd, metric, block)
    knn, row_max = np.zeros((n, k), np.int64), np.zeros(n, np.float32)
    t0 = time.perf_counter()

    def dispatch(s):
        return rows_of(np.arange(s, min(s + block, n)))

    pending = dispatch(0) if n else None
    for s in range(0, n, block):
        current, pending = pending, dispatch(s + block) if s + block < n else None
        d = np.asarray(current)
        knn[s:s + block] = smallest_k(d, k)
        row_max[s:s + block] = d.max(1)
        if log and (s // block) % 50 == 49:
            log(f"re-ranking: neighbours of {s + block}/{n} items "
                f"({time.perf_counter() - t0:.0f} s)")
    return knn, row_max


def reciprocal_mask(lists_nk: np.ndarray, block: int = 8192) -> np.ndarray:
    """[N, k] bool: whether item i is itself in the list of its a-th neighbour lists[i, a]."""
    out = np.zeros(lists_nk.shape, bool)
    for s in range(0, len(lists_nk), block):
        own = np.arange(s, min(s + block, len(lists_nk)))
        out[own] = (lists_nk[lists_nk[own]] == own[:, None, None]).any(-1)
    return out


def expanded_sets(knn_nk: np.ndarray, k1: int, block: int = 4096,
                  full_len: Optional[int] = None) -> tuple[np.ndarray, ...]:
    """Expanded k-reciprocal sets as (row [P], column [P]) pairs, sorted by row then column.

    knn_nk: [N, >= full_len] nearest neighbours (self first). The k-reciprocal lists hold
    `full_len` items (default k1 + 1: self and k1 neighbours, as the re-ranking code; the
    clustering code's Jaccard distance uses k1, self included), the expansion lists
    round(k1 / 2) + 1."""
    n = len(knn_nk)
    full = knn_nk[:, :k1 + 1 if full_len is None else full_len]
    half = knn_nk[:, :int(np.around(k1 / 2)) + 1]  # numpy rounding, as the published code
    recip = reciprocal_mask(full)  # R(i) = full[i][recip[i]]
    recip_half = reciprocal_mask(half)  # R*(j) = half[j][recip_half[j]]
    rows_out, cols_out = [], []
    for s in range(0, n, block):
        i = np.arange(s, min(s + block, n))
        r_i, m_i = full[i], recip[i]  # [b, A]
        cand_sets, cand_ok = half[r_i], recip_half[r_i]  # [b, A, H]: R*(j) of each j in N(i)
        in_r_i = ((cand_sets[..., None] == r_i[:, None, None, :]) & m_i[:, None, None, :]).any(-1)
        overlap = (in_r_i & cand_ok).sum(-1)  # |R*(j) & R(i)|  [b, A]
        take = m_i & (overlap > 2.0 / 3.0 * cand_ok.sum(-1))  # j in R(i) and enough overlap
        members = np.concatenate([np.where(m_i, r_i, -1),
                                  np.where(take[..., None] & cand_ok, cand_sets, -1)
                                  .reshape(len(i), -1)], axis=1)
        members.sort(axis=1)
        keep = members >= 0
        keep[:, 1:] &= members[:, 1:] != members[:, :-1]  # unique per row
        rr, cc = np.nonzero(keep)
        rows_out.append(i[rr])
        cols_out.append(members[rr, cc])
    return np.concatenate(rows_out), np.concatenate(cols_out)


@functools.partial(jax.jit, static_argnames="metric")
def _pair_block(feats_nd, rows_p, cols_p, metric: str) -> jax.Array:
    a, b = feats_nd[rows_p], feats_nd[cols_p]
    if metric == "cosine":
        return 1.0 - jnp.sum(a * b, -1)
    return jnp.maximum(jnp.sum(a * a, -1) + jnp.sum(b * b, -1) - 2.0 * jnp.sum(a * b, -1), 0.0)


def pair_distances(feats_nd: np.ndarray, rows: np.ndarray, cols: np.ndarray, metric: str,
                   block: int = 1 << 16) -> np.ndarray:
    """d(rows[p], cols[p]) [P] in the evaluation's metric (features already prepared), in
    jitted blocks of `block` pairs (padded, so one compilation serves all)."""
    feats = jnp.asarray(feats_nd)
    out = np.empty(len(rows), np.float32)
    for s in range(0, len(rows), block):
        a, b = np.zeros(block, np.int32), np.zeros(block, np.int32)
        n = min(block, len(rows) - s)
        a[:n], b[:n] = rows[s:s + n], cols[s:s + n]
        out[s:s + n] = np.asarray(_pair_block(feats, a, b, metric))[:n]
    return out


def encoding(knn_nk: np.ndarray, weights_p: Callable, k1: int, k2: int,
             full_len: Optional[int] = None) -> sp.csr_matrix:
    """The k-reciprocal encoding V [N, N] (sparse, ~k2 x k1 non-zeros per row): weights
    `weights_p(rows [P], cols [P]) -> [P]` over each expanded set, normalised to sum 1 per
    row, then local query expansion (mean of V over the k2 nearest neighbours, self first)."""
    n = len(knn_nk)
    rows, cols = expanded_sets(knn_nk, k1, full_len=full_len)
    w = weights_p(rows, cols)
    w /= np.bincount(rows, weights=w, minlength=n)[rows]
    v = sp.csr_matrix((w.astype(np.float32), (rows, cols)), shape=(n, n))
    if k2 > 1:
        qe = sp.csr_matrix((np.full(n * k2, 1.0 / k2, np.float32),
                            (np.repeat(np.arange(n), k2), knn_nk[:, :k2].ravel())), shape=(n, n))
        v = (qe @ v).tocsr()
    return v


def jaccard_block(v_rows: sp.csr_matrix, v_by_col: sp.csc_matrix) -> np.ndarray:
    """[c, M] Jaccard distances 1 - s / (2 - s), s = sum_k min(V_a[i, k], V_b[j, k]), of the
    encodings `v_rows` [c, N] to every row of `v_by_col` [M, N] (CSC: column k -> the rows
    that use it, an inverted index). s = 0 (no shared neighbour) gives distance 1."""
    sub = v_rows.tocoo()
    num_b = v_by_col.shape[0]
    starts, ends = v_by_col.indptr[sub.col], v_by_col.indptr[sub.col + 1]
    lengths = ends - starts
    pos = _ragged_arange(starts, lengths)
    a_rows = np.repeat(sub.row, lengths)
    mins = np.minimum(np.repeat(sub.data, lengths), v_by_col.data[pos])
    s = np.bincount(a_rows * num_b + v_by_col.indices[pos], weights=mins,
                    minlength=v_rows.shape[0] * num_b).reshape(v_rows.shape[0], num_b)
    return (1.0 - s / (2.0 - s)).astype(np.float32)


def jaccard_graph(feats_nd: np.ndarray, k1: int = 30, k2: int = 6, max_distance: float = 0.6,
                  block: int = BLOCK, log=None) -> sp.csr_matrix:
    """Sparse [N, N] k-reciprocal Jaccard distances among N items, for clustering (Cluster
    Contrast / SpCL's compute_jaccard_distance): features L2-normalised, neighbours by
    Euclidean distance, k-reciprocal lists of k1 items (self included), V = softmax of
    -|f_i - f_j|^2 over each expanded set, query expansion over k2 neighbours.

    Only pairs at distance <= `max_distance` are stored (DBSCAN with eps <= max_distance
    needs no other), every diagonal entry included as an explicit 0 (sparse matrices drop
    neither), so no N x N array is ever held: memory is O(N * k2 * k1) for V plus one
    [block, N] slab of distances at a time.
    """
    k1, k2 = int(k1), int(k2)
    feats = l2_normalize(np.asarray(feats_nd, np.float32))
    n = len(feats)
    if not 2 <= k1 <= n or not 1 <= k2 <= k1:
        raise ValueError(f"Jaccard distance k1={k1}, k2={k2} among {n} items: need "
                         f"2 <= k1 <= {n} and 1 <= k2 <= k1")
    if not 0.0 <= max_distance < 1.0:
        raise ValueError(f"max_distance={max_distance}: expected 0 <= max_distance < 1")
    knn, _ = neighbours_and_row_max(feats, "euclidean", k1, block=block, log=log)
    # Softmax over the expanded set: exp(-d) normalised (d <= 4 for unit vectors: no overflow).
    v = encoding(knn, lambda r, c: np.exp(-pair_distances(feats, r, c, "euclidean")), k1, k2,
                 full_len=k1)
    v_by_col = v.tocsc()
    rows, cols, vals = [], [], []
    for s in range(0, n, block):
        d = jaccard_block(v[s:s + block], v_by_col)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = 0.0  # exactly 0 (rounding aside)
        r, c, x = nonzero_below(np.maximum(d, 0.0), np.full(len(d), max_distance, np.float32))
        rows.append(r + s)
        cols.append(c)
        vals.append(x)
    rows, cols, vals = (np.concatenate(a) for a in (rows, cols, vals))
    graph = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    graph.sort_indices()
    return graph


class ReRanker:
    """k-reciprocal re-ranked query -> gallery distances, one block of queries at a time.

    ReRanker(qf [Q, D], gf [G, D], metric, k1, k2, lambda_value).distance_rows(query indices)
    -> [c, G] float32 final distances (the `dist_rows` of `ranking.rank_queries`).
    """

    def __init__(self, qf_qd: np.ndarray, gf_gd: np.ndarray, metric: str = "euclidean",
                 k1: int = 20, k2: int = 6, lambda_value: float = 0.3, log=None):
        k1, k2 = int(k1), int(k2)
        if k1 < 1 or not 1 <= k2 <= k1 + 1 or not 0.0 <= lambda_value <= 1.0:
            raise ValueError(f"re-ranking k1={k1}, k2={k2}, lambda={lambda_value}: need k1 >= 1, "
                             "1 <= k2 <= k1 + 1 and 0 <= lambda <= 1")
        feats = np.concatenate([np.asarray(qf_qd, np.float32), np.asarray(gf_gd, np.float32)])
        if metric == "cosine":
            feats = l2_normalize(feats)
        self.num_q, self.num_g = len(qf_qd), len(gf_gd)
        if k1 + 1 > len(feats):
            raise ValueError(f"re-ranking k1={k1} needs more than {k1} items, got {len(feats)}")
        self.metric, self.lam, self.feats = metric, float(lambda_value), feats
        knn, self.row_max = neighbours_and_row_max(feats, metric, k1 + 1, log=log)
        self.row_max = np.maximum(self.row_max, np.finfo(np.float32).tiny)
        v = encoding(knn, lambda r, c: np.exp(
            -pair_distances(feats, r, c, metric) / self.row_max[r]), k1, k2)
        self.v_query = v[:self.num_q]
        self.v_gallery_by_col = v[self.num_q:].tocsc()  # column k -> gallery rows using it
        self.nnz = int(v.nnz)
        self._original_rows = feature_distance_rows(feats[:self.num_q], feats[self.num_q:],
                                                    metric, BLOCK)

    def jaccard_rows(self, idx: np.ndarray) -> np.ndarray:
        """[c, G] Jaccard distances of queries `idx` to the gallery."""
        return jaccard_block(self.v_query[idx], self.v_gallery_by_col)

    def distance_rows(self, idx: np.ndarray, original: Optional[np.ndarray] = None) -> np.ndarray:
        """[c, G] final distances of queries `idx` (original [c, G] may be passed if known)."""
        idx = np.asarray(idx)
        if original is None:
            original = self._original_rows(idx)
        original = np.asarray(original) / self.row_max[idx, None]
        if self.lam == 1.0:
            return original.astype(np.float32)
        return ((1.0 - self.lam) * self.jaccard_rows(idx) + self.lam * original).astype(np.float32)

