"""Distances and the Market-1501 ranking metrics (CMC, mAP, mINP) in bounded memory.

Protocol (Zheng et al., ICCV 2015; used for Market-1501, DukeMTMC-reID, MSMT17, Occluded-Duke):
  * for each query, gallery entries with the query's pid AND camera are removed (same-camera
    matches are too easy); distractors (pid 0) stay in the gallery as wrong matches;
  * a query with no true match left is skipped and counted (`num_valid_queries`);
  * AP is non-interpolated: the mean over true matches of the precision at that match's rank;
  * CMC[r] = fraction of valid queries whose first true match is at rank <= r + 1;
  * INP = (number of true matches) / (rank of the hardest, i.e. last, true match); mINP = mean.

Ties: distances are compared as float32 (-0.0 counts as 0.0); equal distances are ordered by
gallery index, the earlier gallery entry ranking first (the order of a stable sort).

How it scales (MSMT17: 11,659 x 82,161): no row is ever sorted. Query chunks of the distance
matrix are computed by a jitted matmul; for each query, only the gallery entries at or below its
LAST true match can precede a true match, so just those candidates get a sort key (float32 bits,
then gallery index) and each true match's rank is the number of candidate keys below its own,
minus the same-camera entries of its pid ahead of it. That is exactly the stable-sort rank.
Memory: one [chunk, G] distance block plus its candidates.
"""

from __future__ import annotations

import functools

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_CHUNK = 256  # queries per distance block: 256 x 82,161 float32 = 84 MB


def l2_normalize(x_nd: np.ndarray) -> np.ndarray:
    x = np.asarray(x_nd, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check_metric(metric: str) -> None:
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric={metric!r}: expected 'euclidean' or 'cosine'")


@jax.jit
def distance_block(q_qd: jax.Array, g_aug_ge: jax.Array, metric_code: jax.Array) -> jax.Array:
    """[q, G] float32 distances of a query block to an augmented gallery (`prepare_gallery`).

    The whole distance is one matmul of augmented rows (no elementwise pass over the [q, G]
    result besides the clamp at 0, which on CPU makes the block ~25% faster than matmul +
    epilogue): squared Euclidean |q|^2 + |g|^2 - 2 q.g = [q, |q|^2, 1] . [-2g, 1, |g|^2]
    (the same ranking as Euclidean); cosine 1 - q.g = [-q/|q|, 1, 0] . [g/|g|, 1, 0].
    metric_code: 0 = squared Euclidean, 1 = cosine (a traced scalar: one compilation)."""
    cosine = metric_code == 1
    q_unit = q_qd / jnp.maximum(jnp.linalg.norm(q_qd, axis=1, keepdims=True), 1e-12)
    sq = jnp.sum(q_qd ** 2, 1, keepdims=True)
    q_aug = jnp.where(cosine, jnp.concatenate([-q_unit, jnp.ones_like(sq), jnp.zeros_like(sq)], 1),
                      jnp.concatenate([q_qd, sq, jnp.ones_like(sq)], 1))
    dot = jnp.matmul(q_aug, g_aug_ge.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.where(dot > 0.0, dot, 0.0)  # rounding below 0 -> +0.0 (never -0.0: see ties)


def prepare_gallery(gf_gd, metric: str) -> tuple[jax.Array, jax.Array]:
    """Augmented gallery rows on device [G, D + 2] (see `distance_block`) and the metric code."""
    _check_metric(metric)
    g = np.asarray(gf_gd, np.float32)
    ones = np.ones((len(g), 1), np.float32)
    if metric == "cosine":
        aug = np.concatenate([l2_normalize(g), ones, np.zeros_like(ones)], 1)
    else:
        aug = np.concatenate([-2.0 * g, ones, np.sum(g ** 2, 1, keepdims=True)], 1)
    return jnp.asarray(aug), jnp.asarray(int(metric == "cosine"))


def pairwise_distances(qf_qd: np.ndarray, gf_gd: np.ndarray, metric: str = "euclidean",
                       chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
    """[Q, G] float32 distances (dense; for small problems and pictures)."""
    qf = np.asarray(qf_qd, np.float32)
    rows = feature_distance_rows(qf, gf_gd, metric, chunk_size)
    return np.asarray(rows(np.arange(len(qf)))) if len(qf) else np.zeros((0, len(gf_gd)),
                                                                              np.float32)


def padded_rows(x_nd: np.ndarray, idx: np.ndarray, size: int) -> jax.Array:
    """x[idx] zero-padded to `size` rows: every block has one shape, so one compilation."""
    out = np.zeros((size, x_nd.shape[1]), np.float32)
    out[:len(idx)] = x_nd[idx]
    return jnp.asarray(out)


class PendingRows:
    """Padded row blocks still being computed on device; `np.asarray(pending)` waits for them
    and returns the [sum of lengths, ...] rows (unpadding on the host: slicing the device
    arrays would compile one program per length)."""

    def __init__(self, parts: list, lengths: list[int]):
        self.parts, self.lengths = parts, lengths

    def __array__(self, dtype=None, copy=None):
        out = [np.asarray(p)[:n] for p, n in zip(self.parts, self.lengths)]
        out = out[0] if len(out) == 1 else np.concatenate(out)
        return out if dtype is None else out.astype(dtype, copy=False)


def feature_distance_rows(qf_qd, gf_gd, metric: str, chunk_size: int) -> Callable:
    """query indices [c] -> [c, G] distances as `PendingRows` (dispatched asynchronously:
    `np.asarray` waits). The queries go through `distance_block` in blocks padded to
    `chunk_size` rows."""
    g_aug, code = prepare_gallery(gf_gd, metric)
    qf = np.asarray(qf_qd, np.float32)

    def rows(idx: np.ndarray) -> PendingRows:
        blocks = [idx[s:s + chunk_size] for s in range(0, len(idx), chunk_size)]
        return PendingRows([distance_block(padded_rows(qf, b, chunk_size), g_aug, code)
                            for b in blocks], [len(b) for b in blocks])
    return rows


# ---------------------------------------------------------------------------------------------
# Exact per-query ranks from a [q, G] distance block
# ---------------------------------------------------------------------------------------------


def _float_keys(d: np.ndarray) -> np.ndarray:
    """float32 -> uint64 with the same order (negatives flipped; -0.0 first made 0.0)."""
    u = (np.asarray(d, np.float32) + np.float32(0.0)).view(np.uint32)
    return np.where(u >> 31, ~u, u | np.uint32(0x80000000)).astype(np.uint64)


def _same_pid_index(q_pids: np.ndarray, g_pids: np.ndarray):
    """Gallery entries sharing each query's pid: (gallery order sorted by pid, first position
    in it [Q], count [Q])."""
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    start = np.searchsorted(sorted_pids, q_pids, "left")
    count = np.searchsorted(sorted_pids, q_pids, "right") - start
    return order, start, count


def nonzero_below(x_qn: np.ndarray, limit_q: np.ndarray) -> tuple[np.ndarray, ...]:
    """(rows, columns, values) of the entries x[r, c] <= limit[r] (row-major order). A flat
    search is several times faster than a 2-D np.nonzero."""
    x = np.ascontiguousarray(x_qn)
    flat = np.flatnonzero(x <= limit_q[:, None])
    rows = flat // x.shape[1]
    return rows, flat - rows * x.shape[1], x.ravel()[flat]


NUM_BUCKETS = 1024  # distance buckets per query row for counting (see `_count_ahead`)


def _count_ahead(dist_qg: np.ndarray, limit_q: np.ndarray, d_qm: np.ndarray, j_qm: np.ndarray,
                 wanted_qm: np.ndarray) -> np.ndarray:
    """[q, M]: for each wanted entry (distance d_qm, gallery index j_qm, with d_qm <= limit_q),
    how many gallery entries of its row order before it: smaller distance, or equal distance
    and smaller index. Entries beyond limit_q cannot, so only the candidates at or below it are
    looked at; they are counted per distance bucket (a monotone float map, so a lower bucket
    means a smaller distance), and only buckets holding a wanted entry are ordered exactly."""
    q, num_g = dist_qg.shape
    nb = NUM_BUCKETS
    rows, cols, vals = nonzero_below(dist_qg, limit_q)
    lo = vals.min() if len(vals) else np.float32(0.0)
    span = limit_q.astype(np.float32) - lo
    scale = np.where(span > 0, np.float32(nb) / np.where(span > 0, span, 1), 0).astype(np.float32)

    def bucket(x, r):  # flat (row, bucket) id; monotone in x within a row
        b = np.clip(np.floor((x.astype(np.float32) - lo) * scale[r]), 0, nb - 1)
        return r * nb + b.astype(np.int64)

    flat = bucket(vals, rows)
    hist = np.bincount(flat, minlength=q * nb).reshape(q, nb)
    lower_in_row = (np.cumsum(hist, 1) - hist).ravel()
    m_rows = np.nonzero(wanted_qm)
    wf = bucket(d_qm[m_rows], m_rows[0])
    # Exact order inside the wanted buckets: merge the wanted entries with the candidates sharing
    # their buckets, sorted by (bucket, distance, index, wanted first on a tie with itself).
    shared = np.zeros(q * nb, bool)
    shared[wf] = True
    sel = shared[flat]
    sf, sv, sc = flat[sel], vals[sel], cols[sel]
    nw = len(wf)
    flag = np.concatenate([np.zeros(nw, np.int8), np.ones(len(sf), np.int8)])
    order = np.lexsort((flag, np.concatenate([j_qm[m_rows], sc]),
                        np.concatenate([d_qm[m_rows], sv]), np.concatenate([wf, sf])))
    is_cand = flag[order]
    cands_before = np.empty(len(order), np.int64)
    cands_before[order] = np.cumsum(is_cand) - is_cand
    s_hist = np.bincount(sf, minlength=q * nb)
    in_lower_buckets = np.cumsum(s_hist) - s_hist  # shared candidates in lower flat buckets
    out = np.zeros(d_qm.shape, np.int64)
    out[m_rows] = lower_in_row[wf] + cands_before[:nw] - in_lower_buckets[wf]
    return out


def _rank_block(dist_qg: np.ndarray, same_qm: np.ndarray, in_pid_qm: np.ndarray,
                same_cam_qm: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-query (AP, INP, 0-based rank of the first true match or -1, valid) of one block.

    same_qm [q, M]: gallery indices with the query's pid (padded), in_pid_qm: which are real,
    same_cam_qm: which are in the query's camera (removed by the protocol).
    """
    num_g = dist_qg.shape[1]
    idx_bits = max(1, int(num_g - 1).bit_length())
    rows = np.arange(len(dist_qg))
    match = in_pid_qm & ~same_cam_qm
    removed = in_pid_qm & same_cam_qm
    num_match = match.sum(1)
    d_m = dist_qg[rows[:, None], same_qm]
    key_m = (_float_keys(d_m) << np.uint64(idx_bits)) | same_qm.astype(np.uint64)
    # Only entries no farther than the query's last true match can rank ahead of a true match.
    last_d = np.where(match, d_m, -np.inf).max(1, initial=-np.inf).astype(np.float32)
    ahead_all = _count_ahead(dist_qg, last_d, d_m, same_qm, match)
    before = key_m[:, None, :] < key_m[:, :, None]  # [q, m, m']: m' ranks ahead of m
    rank0 = ahead_all - (before & removed[:, None, :]).sum(-1)  # among the kept entries
    hits = (before & match[:, None, :]).sum(-1) + 1  # true matches up to and including m
    valid = num_match > 0
    ap = np.where(match, hits / np.maximum(rank0 + 1.0, 1.0), 0.0).sum(1) / np.maximum(num_match, 1)
    last = np.where(match, rank0, -1).max(1, initial=-1)
    inp = num_match / np.maximum(last + 1.0, 1.0)
    first = np.where(match, rank0, np.iinfo(np.int64).max).min(1, initial=np.iinfo(np.int64).max)
    return ap, inp, np.where(valid, first, -1), valid


def rank_queries(dist_rows: Callable[[np.ndarray], Any], q_pids, g_pids, q_camids, g_camids,
                 chunk_size: int = DEFAULT_CHUNK) -> dict[str, np.ndarray]:
    """Per-query results [Q]: ap, inp, first_rank (0-based rank of the first true match, -1 if
    none), valid. `dist_rows(query indices [c]) -> [c, G]` gives distance rows (numpy or an
    asynchronously computed device array: the next block is requested before this one is
    ranked). Queries are visited in order of their pid's gallery size so blocks pad little."""
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q, num_g = len(q_pids), len(g_pids)
    if (len(q_camids), len(g_camids)) != (num_q, num_g):
        raise ValueError(f"got {num_q} query pids but {len(q_camids)} query camids, {num_g} "
                         f"gallery pids but {len(g_camids)} gallery camids")
    if num_g == 0:
        raise ValueError("the gallery is empty: nothing to rank the queries against")
    order, start, count = _same_pid_index(q_pids, g_pids)
    visit = np.argsort(count, kind="stable")
    blocks = [visit[s:s + chunk_size] for s in range(0, num_q, chunk_size)]
    out = {"ap": np.zeros(num_q), "inp": np.zeros(num_q), "first_rank": np.full(num_q, -1),
           "valid": np.zeros(num_q, bool)}
    pending = dist_rows(blocks[0]) if blocks else None
    for b, idx in enumerate(blocks):
        current, pending = pending, (dist_rows(blocks[b + 1]) if b + 1 < len(blocks) else None)
        dist = np.asarray(current, np.float32)
        if dist.shape != (len(idx), num_g):
            raise ValueError(f"distance rows of shape {dist.shape}, expected {(len(idx), num_g)}")
        m = max(1, int(count[idx].max()))
        pos = start[idx, None] + np.arange(m)
        in_pid = np.arange(m) < count[idx, None]
        same = order[np.minimum(pos, num_g - 1)] if num_g else np.zeros_like(pos)
        same_cam = g_camids[same] == q_camids[idx, None]
        ap, inp, first, valid = _rank_block(dist, same, in_pid, same_cam)
        out["ap"][idx], out["inp"][idx], out["first_rank"][idx], out["valid"][idx] = (
            ap, inp, first, valid)
    return out


def aggregate(per_query: dict[str, np.ndarray], max_rank: int) -> dict[str, Any]:
    """Per-query results -> {"cmc" [max_rank], "mAP", "mINP", "num_valid_queries",
    "num_queries"}, averaged over valid queries (a query whose gallery runs out before
    max_rank keeps CMC 1 after its first hit)."""
    valid = per_query["valid"]
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(f"none of the {len(valid)} queries has a true match in the gallery "
                         "(after removing same-pid same-camera entries): nothing to evaluate")
    first = per_query["first_rank"][valid]
    cmc = (first[:, None] <= np.arange(max_rank)[None, :]).mean(0)
    return {"cmc": cmc, "mAP": float(per_query["ap"][valid].mean()),
            "mINP": float(per_query["inp"][valid].mean()), "num_valid_queries": num_valid,
            "num_queries": int(len(valid))}


def evaluate_rank(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                  chunk_size: int = DEFAULT_CHUNK) -> dict[str, Any]:
    """CMC, mAP and mINP of a [Q, G] distance matrix under the Market-1501 protocol.

    Returns {"cmc": float array [max_rank], "mAP", "mINP", "num_valid_queries", "num_queries"}.
    Metrics are averaged over valid queries. When fewer than max_rank gallery entries remain for
    a query, its CMC stays at its final value (1) up to max_rank. Distances are compared as
    float32 (ties: see the module docstring).
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2 or distmat.shape != (len(q_pids), len(g_pids)):
        raise ValueError(f"distmat is {distmat.shape} but got {len(q_pids)} query pids and "
                         f"{len(g_pids)} gallery pids")
    if not np.isfinite(distmat).all():
        raise ValueError("distmat contains NaN or inf (e.g. at "
                         f"{tuple(int(i) for i in np.argwhere(~np.isfinite(distmat))[0])})")
    per_query = rank_queries(lambda idx: distmat[idx], q_pids, g_pids, q_camids, g_camids,
                             chunk_size)
    return aggregate(per_query, max_rank)


def check_features(qf_qd, gf_gd) -> tuple[np.ndarray, np.ndarray]:
    """float32 [Q, D] and [G, D] with the same D and finite values, or a ValueError."""
    qf, gf = np.asarray(qf_qd, np.float32), np.asarray(gf_gd, np.float32)
    if qf.ndim != 2 or gf.ndim != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"query features {qf.shape} and gallery features {gf.shape}: expected "
                         "[Q, D] and [G, D] with the same D")
    for name, f in (("query", qf), ("gallery", gf)):
        if not np.isfinite(f).all():
            raise ValueError(f"{name} features contain NaN or inf (rows "
                             f"{np.nonzero(~np.isfinite(f).all(1))[0][:10].tolist()}...)")
    return qf, gf


def evaluate_per_query(qf_qd, gf_gd, q_pids, g_pids, q_camids, g_camids,
                       metric: str = "euclidean", rerank: Optional[dict] = None,
                       chunk_size: int = DEFAULT_CHUNK) -> dict[str, np.ndarray]:
    """Features -> per-query ap, inp, first_rank, valid (see `rank_queries`); with `rerank`
    (k1, k2, lambda_value) on k-reciprocal re-ranked distances."""
    qf, gf = check_features(qf_qd, gf_gd)
    _check_metric(metric)
    chunk_size = balanced_chunk(len(qf), chunk_size)
    if rerank:
        from personvit_jax.evaluation.rerank import ReRanker
        dist_rows = ReRanker(qf, gf, metric=metric, **rerank_kwargs(rerank)).distance_rows
    else:
        dist_rows = feature_distance_rows(qf, gf, metric, chunk_size)
    return rank_queries(dist_rows, q_pids, g_pids, q_camids, g_camids, chunk_size)


def balanced_chunk(num_rows: int, chunk_size: int) -> int:
    """The smallest block size that covers num_rows in as many blocks of <= chunk_size as
    needed (3,368 queries: 14 blocks of 241, not 13 of 256 + one of 40 padded to 256)."""
    blocks = max(1, -(-num_rows // chunk_size))
    return max(1, -(-num_rows // blocks))


def rerank_kwargs(rerank) -> dict:
    """True or a mapping with any of k1, k2, lambda_value -> ReRanker keyword arguments."""
    defaults = {"k1": 20, "k2": 6, "lambda_value": 0.3}
    if rerank is True:
        return defaults
    unknown = set(rerank) - set(defaults)
    if unknown:
        raise ValueError(f"rerank={dict(rerank)!r}: unknown keys {sorted(unknown)}; expected "
                         f"{sorted(defaults)}")
    return {**defaults, **dict(rerank)}


def evaluate(qf_qd, gf_gd, q_pids, g_pids, q_camids, g_camids, metric: str = "euclidean",
             rerank: Optional[dict] = None, max_rank: int = 50,
             chunk_size: int = DEFAULT_CHUNK) -> dict[str, Any]:
    """Features [Q, D], [G, D] -> metrics as `evaluate_rank`, one block of queries at a time
    (the [Q, G] matrix is never held). `rerank`: None, True (k1 20, k2 6, lambda 0.3) or a dict
    of k1 / k2 / lambda_value for k-reciprocal re-ranking."""
    return aggregate(evaluate_per_query(qf_qd, gf_gd, q_pids, g_pids, q_camids, g_camids,
                                        metric, rerank, chunk_size), max_rank)


@functools.partial(jax.jit, static_argnums=3)
def nearest_block(q_qd: jax.Array, g_aug_ge: jax.Array, metric_code: jax.Array,
                  k: int) -> jax.Array:
    """Gallery indices [q, k] of each query's k nearest (`distance_block`), found on device so
    only [q, k] reaches the host; ties at the k-th distance are broken arbitrarily."""
    return jax.lax.top_k(-distance_block(q_qd, g_aug_ge, metric_code), k)[1]


def camera_bias(qf_qd, gf_gd, q_camids, g_camids, k: int = 10, metric: str = "euclidean",
                chunk_size: int = DEFAULT_CHUNK) -> dict[str, float]:
    """How much the camera drives the features' neighbourhoods.

    `top{k}_same_camera`: the share of each query's k nearest gallery images (all of them, any
    identity) that come from the query's own camera, averaged over queries; `same_camera_base`:
    the same share for a feature blind to the camera (the gallery's share of each query's
    camera). Far above the base, scene and colour cast dominate the features: what
    self-supervised pretraining learns when every crop of an image shares its background.
    Ties at the k-th distance are broken arbitrarily."""
    qf, gf = check_features(qf_qd, gf_gd)
    q_cams, g_cams = np.asarray(q_camids), np.asarray(g_camids)
    k = min(k, len(gf))
    g_aug, code = prepare_gallery(gf, metric)
    chunk = balanced_chunk(len(qf), chunk_size)
    blocks = [np.arange(s, min(len(qf), s + chunk)) for s in range(0, len(qf), chunk)]
    # all blocks dispatched first (asynchronously), then read: [chunk, k] indices each
    nearest = [nearest_block(padded_rows(qf, idx, chunk), g_aug, code, k) for idx in blocks]
    same = [(g_cams[np.asarray(n)[:len(idx)]] == q_cams[idx, None]).mean(1)
            for idx, n in zip(blocks, nearest)]
    cams, counts = np.unique(g_cams, return_counts=True)
    share = dict(zip(cams.tolist(), (counts / len(g_cams)).tolist()))
    base = np.mean([share.get(c, 0.0) for c in q_cams.tolist()])
    return {f"top{k}_same_camera": float(np.concatenate(same).mean()),
            "same_camera_base": float(base)}


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready summary: mAP, mINP, rank-1/5/10 and query counts."""
    cmc = result["cmc"]
    out = {"mAP": result["mAP"], "mINP": result["mINP"]}
    for r in (1, 5, 10):
        if r <= len(cmc):
            out[f"rank{r}"] = float(cmc[r - 1])
    out["num_valid_queries"] = result["num_valid_queries"]
    out["num_queries"] = result["num_queries"]
    return out
