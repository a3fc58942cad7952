"""Distances and the Market-1501 ranking metrics (CMC, mAP, mINP).

Protocol (Zheng et al., ICCV 2015; used for Market-1501, DukeMTMC-reID, MSMT17, Occluded-Duke):
  * for each query, gallery entries with the query's pid AND camera are removed (same-camera
    matches are too easy); distractors (pid 0) stay in the gallery as wrong matches;
  * a query with no true match left is skipped and counted (`num_valid_queries`);
  * AP is non-interpolated: the mean over true matches of the precision at that match's rank;
  * CMC[r] = fraction of valid queries whose first true match is at rank <= r + 1;
  * INP = (number of true matches) / (rank of the hardest, i.e. last, true match); mINP = mean.
Ties in distance are broken by gallery order (stable sort): the earlier gallery entry ranks first.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def pairwise_distances(qf_qd: np.ndarray, gf_gd: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    """[Q, G] float32 distances: squared Euclidean (same ranking as Euclidean) or 1 - cosine."""
    qf = np.asarray(qf_qd, np.float32)
    gf = np.asarray(gf_gd, np.float32)
    if metric == "euclidean":
        d = (np.sum(qf ** 2, 1)[:, None] + np.sum(gf ** 2, 1)[None, :] - 2.0 * qf @ gf.T)
        return np.maximum(d, 0.0)
    if metric == "cosine":
        return 1.0 - l2_normalize(qf) @ l2_normalize(gf).T
    raise ValueError(f"metric={metric!r}: expected 'euclidean' or 'cosine'")


def l2_normalize(x_nd: np.ndarray) -> np.ndarray:
    x = np.asarray(x_nd, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _rank_chunk(dist_qg, q_pids, g_pids, q_camids, g_camids):
    """Per-query AP, INP, first-hit rank (0-based; -1 if none) and validity for a query chunk."""
    order = np.argsort(dist_qg, axis=1, kind="stable")
    match = g_pids[order] == q_pids[:, None]                          # [q, G] in ranked order
    keep = ~(match & (g_camids[order] == q_camids[:, None]))          # Market protocol removal
    match &= keep
    rank0 = np.cumsum(keep, axis=1) - 1                               # 0-based rank among kept
    hits = np.cumsum(match, axis=1)                                   # true matches so far
    num_match = hits[:, -1]
    valid = num_match > 0
    precision_at_match = np.where(match, hits / np.maximum(rank0 + 1.0, 1.0), 0.0)
    ap = precision_at_match.sum(1) / np.maximum(num_match, 1)
    last_rank0 = np.where(match, rank0, -1).max(1)
    inp = num_match / np.maximum(last_rank0 + 1.0, 1.0)  # 0 for invalid queries (dropped)
    first_rank0 = np.where(match, rank0, np.iinfo(np.int64).max).min(1)
    return ap, inp, np.where(valid, first_rank0, -1), valid


def evaluate_rank(distmat: np.ndarray, q_pids, g_pids, q_camids, g_camids, max_rank: int = 50,
                  chunk_size: int = 512) -> dict[str, Any]:
    """CMC, mAP and mINP of a [Q, G] distance matrix under the Market-1501 protocol.

    Returns {"cmc": float array [max_rank], "mAP", "mINP", "num_valid_queries", "num_queries"}.
    Metrics are averaged over valid queries. When fewer than max_rank gallery entries remain for
    a query, its CMC stays at its final value (1) up to max_rank. Memory is bounded by
    `chunk_size` query rows at a time.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q, num_g = distmat.shape
    if (len(q_pids), len(q_camids), len(g_pids), len(g_camids)) != (num_q, num_q, num_g, num_g):
        raise ValueError(f"distmat is {distmat.shape} but got {len(q_pids)} query pids, "
                         f"{len(q_camids)} query camids, {len(g_pids)} gallery pids, "
                         f"{len(g_camids)} gallery camids")
    aps, inps, firsts, valids = [], [], [], []
    for s in range(0, num_q, chunk_size):
        e = min(s + chunk_size, num_q)
        ap, inp, first, valid = _rank_chunk(distmat[s:e], q_pids[s:e], g_pids, q_camids[s:e],
                                            g_camids)
        aps.append(ap), inps.append(inp), firsts.append(first), valids.append(valid)
    valid = np.concatenate(valids) if valids else np.zeros(0, bool)
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(f"none of the {num_q} queries has a true match in the gallery "
                         "(after removing same-pid same-camera entries): nothing to evaluate")
    first = np.concatenate(firsts)[valid]
    cmc = (first[:, None] <= np.arange(max_rank)[None, :]).mean(0)
    return {"cmc": cmc, "mAP": float(np.concatenate(aps)[valid].mean()),
            "mINP": float(np.concatenate(inps)[valid].mean()),
            "num_valid_queries": num_valid, "num_queries": int(num_q)}


def evaluate(qf_qd, gf_gd, q_pids, g_pids, q_camids, g_camids, metric: str = "euclidean",
             max_rank: int = 50, chunk_size: int = 512) -> dict[str, Any]:
    """Features -> metrics, computing distances one chunk of queries at a time (bounded memory)."""
    qf, gf = np.asarray(qf_qd, np.float32), np.asarray(gf_gd, np.float32)
    dist = np.concatenate([pairwise_distances(qf[s:s + chunk_size], gf, metric)
                           for s in range(0, len(qf), chunk_size)]) if len(qf) else np.zeros((0, len(gf)))
    return evaluate_rank(dist, q_pids, g_pids, q_camids, g_camids, max_rank, chunk_size)


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
