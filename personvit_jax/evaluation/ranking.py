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

from typing import Any, Callable, Optional

import numpy as np

from personvit_jax.evaluation.distances import (DEFAULT_CHUNK, balanced_chunk, check_features,
                                                check_metric, feature_distance_rows, float_keys,
                                                nearest_block, nonzero_below, padded_rows,
                                                prepare_gallery)
from personvit_jax.evaluation.rerank import ReRanker


# ---------------------------------------------------------------------------------------------
# Exact per-query ranks from a [q, G] distance block
# ---------------------------------------------------------------------------------------------


def _same_pid_index(q_pids: np.ndarray, g_pids: np.ndarray):
    """Gallery entries sharing each query's pid: (gallery order sorted by pid, first position
    in it [Q], count [Q])."""
    order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[order]
    start = np.searchsorted(sorted_pids, q_pids, "left")
    count = np.searchsorted(sorted_pids, q_pids, "right") - start
    return order, start, count


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
    key_m = (float_keys(d_m) << np.uint64(idx_bits)) | same_qm.astype(np.uint64)
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


def evaluate_per_query(qf_qd, gf_gd, q_pids, g_pids, q_camids, g_camids,
                       metric: str = "euclidean", rerank: Optional[dict] = None,
                       chunk_size: int = DEFAULT_CHUNK) -> dict[str, np.ndarray]:
    """Features -> per-query ap, inp, first_rank, valid (see `rank_queries`); with `rerank`
    (k1, k2, lambda_value) on k-reciprocal re-ranked distances."""
    qf, gf = check_features(qf_qd, gf_gd)
    check_metric(metric)
    chunk_size = balanced_chunk(len(qf), chunk_size)
    if rerank:
        dist_rows = ReRanker(qf, gf, metric=metric, **rerank_kwargs(rerank)).distance_rows
    else:
        dist_rows = feature_distance_rows(qf, gf, metric, chunk_size)
    return rank_queries(dist_rows, q_pids, g_pids, q_camids, g_camids, chunk_size)


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


BOOTSTRAP_SAMPLES = 2000  # resamples of the query identities for the 95% intervals


def bootstrap_intervals(per_query: dict[str, np.ndarray], q_pids, num_samples: int =
                        BOOTSTRAP_SAMPLES, seed: int = 0, level: float = 0.95
                        ) -> dict[str, list[float]]:
    """Percentile bootstrap intervals of mAP and rank-1 over the query IDENTITIES.

    The queries of one identity share its gallery images and are not independent, so an
    identity is the unit drawn: each resample takes len(ids) identities with replacement (all
    valid queries of each, counted as often as it is drawn) and averages AP / first-hit over
    its queries. Seeded, so the same per-query results give the same interval. Returns
    {"mAP_ci95": [lo, hi], "rank1_ci95": [lo, hi]} (the key says the level when it is not 0.95).
    """
    valid = per_query["valid"]
    pids = np.asarray(q_pids)[valid]
    if len(pids) == 0:
        raise ValueError("no valid query: no interval to bootstrap")
    _, pid_index = np.unique(pids, return_inverse=True)
    num_ids = int(pid_index.max()) + 1
    per_id = lambda x: np.bincount(pid_index, weights=x, minlength=num_ids)
    queries = per_id(np.ones(len(pids)))
    ap_sum = per_id(per_query["ap"][valid])
    hit_sum = per_id((per_query["first_rank"][valid] == 0).astype(np.float64))
    draws = np.random.default_rng(seed).multinomial(num_ids, np.full(num_ids, 1.0 / num_ids),
                                                    size=num_samples)  # [S, ids] counts
    n = draws @ queries
    tail = 100 * (1 - level) / 2
    suffix = f"ci{round(100 * level)}"
    return {f"{name}_{suffix}": [float(v) for v in np.percentile((draws @ s) / n,
                                                                  [tail, 100 - tail])]
            for name, s in (("mAP", ap_sum), ("rank1", hit_sum))}


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
