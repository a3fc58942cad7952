r"""Evaluation speed and memory at Market-1501 and MSMT17 scale, one JSON line per figure.

  python benchmarks/eval_bench.py                     # all cases below, each in a fresh process
  python benchmarks/eval_bench.py --case=msmt17:rerank

Cases: <scale>:<what>, scale market (3,368 x 15,913) | msmt17 (11,659 x 82,161); what = metrics
(features -> distances -> CMC/mAP/mINP via `evaluation.evaluate`), rerank (the same with
k-reciprocal re-ranking, k1 20, k2 6, lambda 0.3), classic (the textbook per-query loop: dense
distance matrix, argsort of each row; Market only, the reference the others are checked against),
rerank_dense (the published dense re-ranking, N x N matrices, float32; Market only, the reference
for rerank: ~6 GB), camera_bias (`evaluation.camera_bias`, which the evaluate stage adds),
cluster (the usl stage's clustering of MSMT17's 32,621 train images / 1,041 identities: the
sparse k-reciprocal Jaccard graph, k1 30, k2 6, eps 0.7, then DBSCAN, min_samples 4; msmt17
only).

The problem is random but shaped like the real one: 384-d L2-normalised features around one
centre per identity, a per-camera shift, noise, distractors (pid 0) that belong to no identity,
and the dataset's query / gallery / identity / camera counts. Each case runs in its own process so
that `peak_rss_gb` (resource.getrusage ru_maxrss: the process's peak resident memory, including
Python, JAX and the features) belongs to that case alone. `seconds` is wall clock including
JIT compilation; `cpu_seconds` is the process's user + system CPU time (on a shared machine, wall
time grows with other load, CPU time much less).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SCALES = {  # queries, gallery, identities, distractors, cameras
    "market": (3368, 15913, 750, 2798, 6),
    "msmt17": (11659, 82161, 3060, 0, 15),
}
CASES = ("market:classic", "market:metrics", "market:rerank", "market:rerank_dense",
         "market:camera_bias", "msmt17:metrics", "msmt17:rerank", "msmt17:camera_bias",
         "msmt17:cluster")
MSMT17_TRAIN = (32621, 1041, 15)  # images, identities, cameras


def make_problem(scale: str, dim: int = 384, seed: int = 0):
    """(qf, gf, q_pids, g_pids, q_camids, g_camids) of a random problem at `scale`."""
    nq, ng, num_ids, num_distractors, num_cams = SCALES[scale]
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids + 1, dim)).astype(np.float32)
    cam_shift = 0.6 * rng.normal(size=(num_cams, dim)).astype(np.float32)
    q_pids = rng.integers(1, num_ids + 1, nq)
    g_pids = np.concatenate([rng.integers(1, num_ids + 1, ng - num_distractors),
                             np.zeros(num_distractors, np.int64)])
    q_cams, g_cams = rng.integers(0, num_cams, nq), rng.integers(0, num_cams, ng)

    def feats(pids, cams):
        return _features(rng, centres, cam_shift, pids, cams)

    return feats(q_pids, q_cams), feats(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def _features(rng, centres, cam_shift, pids, cams):
    """L2-normalised identity centre + camera shift + noise; pid 0 = distractor noise."""
    f = centres[pids] + cam_shift[cams] + 1.6 * rng.normal(size=(len(pids), centres.shape[1])
                                                           ).astype(np.float32)
    f[pids == 0] = 1.5 * rng.normal(size=((pids == 0).sum(), centres.shape[1]))
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def cluster_train_set(dim: int = 384, seed: int = 0) -> dict:
    """The usl stage's pseudo-labelling of an MSMT17-sized train set, timed in its two parts."""
    from personvit_jax import clustering
    from personvit_jax.evaluation.rerank import jaccard_graph

    n, num_ids, num_cams = MSMT17_TRAIN
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids + 1, dim)).astype(np.float32)
    cam_shift = 0.6 * rng.normal(size=(num_cams, dim)).astype(np.float32)
    pids = np.sort(rng.integers(1, num_ids + 1, n))
    feats = _features(rng, centres, cam_shift, pids, rng.integers(0, num_cams, n))
    t = time.perf_counter()
    graph = jaccard_graph(feats, 30, 6, max_distance=0.7)
    t_graph = time.perf_counter() - t
    labels = clustering.dbscan(graph, 0.7, 4)
    q = clustering.quality(labels, pids)
    return {"images": n, "jaccard_seconds": round(t_graph, 2),
            "dbscan_seconds": round(time.perf_counter() - t - t_graph, 2),
            "graph_edges": int(graph.nnz), **q}


def classic(qf, gf, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The textbook evaluation: full distance matrix, full argsort, one query at a time."""
    dist = (np.sum(qf ** 2, 1)[:, None] + np.sum(gf ** 2, 1)[None] - 2 * qf @ gf.T)
    order = np.argsort(dist, axis=1, kind="stable")
    aps, inps, cmcs = [], [], []
    for i in range(len(qf)):
        o = order[i]
        keep = ~((g_pids[o] == q_pids[i]) & (g_camids[o] == q_camids[i]))
        hit = (g_pids[o] == q_pids[i])[keep]
        if not hit.any():
            continue
        cum = np.cumsum(hit)
        aps.append((cum[hit] / (np.nonzero(hit)[0] + 1)).mean())
        inps.append(hit.sum() / (np.nonzero(hit)[0][-1] + 1))
        c = np.minimum(np.cumsum(hit[:max_rank]), 1)
        cmcs.append(np.pad(c, (0, max_rank - len(c)), constant_values=1))
    return {"mAP": float(np.mean(aps)), "mINP": float(np.mean(inps)),
            "rank1": float(np.mean(cmcs, 0)[0])}


def dense_rerank(qf, gf, k1=20, k2=6, lambda_value=0.3, dtype=np.float32):
    """k-reciprocal re-ranking in the published dense formulation: the N x N squared distances
    divided by each row's maximum, their full argsort, V as an N x N matrix, local query
    expansion over the k2 nearest, Jaccard distances through an inverted index of V's columns.
    [Q, G] distances. ~4 N^2 x 4 bytes of memory in float32 (Market-1501: ~6 GB). Also the
    reference of tests/test_rerank.py (in float64)."""
    x = np.concatenate([qf, gf]).astype(dtype)
    n, nq = len(x), len(qf)
    sq = (x ** 2).sum(1)
    dist = np.maximum(sq[:, None] + sq[None] - 2 * (x @ x.T), 0)
    dist /= dist.max(1, keepdims=True)
    rank = np.argsort(dist, axis=1, kind="stable").astype(np.int32)

    def reciprocal(i, length):
        forward = rank[i, :length]
        return forward[(rank[forward, :length] == i).any(1)]

    half = int(np.around(k1 / 2)) + 1
    v = np.zeros((n, n), dtype)
    for i in range(n):
        r = reciprocal(i, k1 + 1)
        expanded = [r]
        for c in r:
            rc = reciprocal(c, half)
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                expanded.append(rc)
        e = np.unique(np.concatenate(expanded))
        w = np.exp(-dist[i, e])
        v[i, e] = w / w.sum()
    if k2 > 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = v[rank[i, :k2]].mean(0)
        v = v_qe
    del rank
    inverted = [np.nonzero(v[:, j])[0] for j in range(n)]
    jaccard = np.zeros((nq, n), dtype)
    for i in range(nq):
        shared = np.zeros(n, dtype)
        for j in np.nonzero(v[i])[0]:
            rows = inverted[j]
            shared[rows] += np.minimum(v[i, j], v[rows, j])
        jaccard[i] = 1 - shared / (2 - shared)
    final = (1 - lambda_value) * jaccard + lambda_value * dist[:nq]
    return final[:, nq:]


def dense_rerank_metrics(qf, gf, q_pids, g_pids, q_camids, g_camids) -> dict:
    """Metrics of the dense re-ranked distances, and their largest difference from the sparse
    implementation's (`evaluation.rerank.ReRanker`, timed apart as market:rerank)."""
    from personvit_jax import evaluation
    from personvit_jax.evaluation.rerank import ReRanker

    dense = dense_rerank(qf, gf)
    r = evaluation.evaluate_rank(dense, q_pids, g_pids, q_camids, g_camids)
    ours = np.asarray(ReRanker(qf, gf).distance_rows(np.arange(len(qf))))
    return {"mAP": r["mAP"], "mINP": r["mINP"], "rank1": float(r["cmc"][0]),
            "max_abs_diff_vs_sparse": float(np.abs(ours - dense).max())}


def run_case(case: str) -> dict:
    from personvit_jax import evaluation

    scale, what = case.split(":")
    problem = make_problem(scale) if what != "cluster" else None
    t, cpu = time.perf_counter(), time.process_time()
    if what == "cluster":
        res = cluster_train_set()
    elif what == "classic":
        res = classic(*problem)
    elif what == "rerank_dense":
        res = dense_rerank_metrics(*problem)
    elif what == "camera_bias":
        qf, gf, _, _, q_camids, g_camids = problem
        res = evaluation.camera_bias(qf, gf, q_camids, g_camids)
    else:
        r = evaluation.evaluate(*problem, rerank=True if what == "rerank" else None)
        res = {"mAP": r["mAP"], "mINP": r["mINP"], "rank1": float(r["cmc"][0])}
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    nq, ng = SCALES[scale][:2] if what != "cluster" else (0, 0)
    return {"case": case, "queries": nq, "gallery": ng, "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu, 2),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
            **{k: round(v, 6) for k, v in res.items()}}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--case", choices=CASES, help="one case in this process (default: all, each "
                   "in a fresh process)")
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)), flush=True)
        return
    for case in CASES:
        subprocess.run([sys.executable, os.path.abspath(__file__), f"--case={case}"], check=True)


if __name__ == "__main__":
    main()
