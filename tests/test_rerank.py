"""k-reciprocal re-ranking against a dense, loop-by-loop reference of the published algorithm."""

import numpy as np
import pytest

from personvit_jax.evaluation import evaluate, evaluate_rank
from personvit_jax.evaluation.rerank import ReRanker, expanded_sets, smallest_k


def dense_rerank(qf, gf, k1, k2, lam):
    """Zhong et al. 2017 as published: N x N squared distances, each row divided by its maximum,
    full argsort, k-reciprocal sets with the 2/3 expansion, V, query expansion, Jaccard."""
    x = np.concatenate([qf, gf]).astype(np.float64)
    n, nq = len(x), len(qf)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    d = d / d.max(1, keepdims=True)
    rank = np.argsort(d, axis=1, kind="stable")

    def reciprocal(i, length):
        return [j for j in rank[i, :length] if i in rank[j, :length]]

    half = int(np.around(k1 / 2)) + 1
    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k1 + 1)
        expanded = set(r)
        for c in r:
            rc = reciprocal(c, half)
            if len(set(rc) & set(r)) > 2 / 3 * len(rc):
                expanded |= set(rc)
        e = sorted(expanded)
        w = np.exp(-d[i, e])
        v[i, e] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    s = np.minimum(v[:nq, None, :], v[None, nq:, :]).sum(-1)
    return (1 - lam) * (1 - s / (2 - s)) + lam * d[:nq, nq:]


def clustered_problem(seed, nq=30, ng=110, dim=12, num_ids=12):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids + 1, dim))
    q_pids, g_pids = rng.integers(1, num_ids + 1, nq), rng.integers(0, num_ids + 1, ng)
    qf = centres[q_pids] + 0.9 * rng.normal(size=(nq, dim))
    gf = centres[g_pids] + 0.9 * rng.normal(size=(ng, dim))
    gf[g_pids == 0] = 2.0 * rng.normal(size=((g_pids == 0).sum(), dim))  # distractors
    cams = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    return qf.astype(np.float32), gf.astype(np.float32), q_pids, g_pids, cams


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (7, 3, 0.5), (9, 1, 0.0), (4, 5, 0.3)])
def test_matches_dense_reference(k1, k2, lam):
    qf, gf, q_pids, g_pids, (q_cams, g_cams) = clustered_problem(k1)
    ref = dense_rerank(qf, gf, k1, k2, lam)
    rr = ReRanker(qf, gf, k1=k1, k2=k2, lambda_value=lam)
    got = rr.distance_rows(np.arange(len(qf)))
    np.testing.assert_allclose(got, ref, atol=2e-5)
    a = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams,
                 rerank={"k1": k1, "k2": k2, "lambda_value": lam}, chunk_size=8)
    b = evaluate_rank(ref, q_pids, g_pids, q_cams, g_cams)
    assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-3)
    assert a["num_valid_queries"] == b["num_valid_queries"]


def test_rerank_helps_on_clustered_problem_and_cosine_equals_euclidean_on_unit_features():
    qf, gf, q_pids, g_pids, (q_cams, g_cams) = clustered_problem(3, nq=40, ng=200)
    plain = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams)
    rr = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, rerank=True)
    assert rr["mAP"] > plain["mAP"]
    # On unit vectors squared Euclidean = 2 (1 - cos): row-normalised distances are identical.
    un = qf / np.linalg.norm(qf, axis=1, keepdims=True), gf / np.linalg.norm(gf, axis=1,
                                                                            keepdims=True)
    e = evaluate(*un, q_pids, g_pids, q_cams, g_cams, rerank=True)
    c = evaluate(*un, q_pids, g_pids, q_cams, g_cams, metric="cosine", rerank=True)
    assert e["mAP"] == pytest.approx(c["mAP"], abs=1e-4)


def test_smallest_k_is_the_stable_sort_prefix():
    rng = np.random.default_rng(0)
    d = np.round(rng.random((50, 3000)), 2).astype(np.float32)  # many ties
    for k in (1, 7, 21):
        np.testing.assert_array_equal(smallest_k(d, k, probe_columns=64),
                                      np.argsort(d, axis=1, kind="stable")[:, :k])


def test_expanded_sets_hand_made():
    # Two mutual groups {0, 1, 2} and {3, 4, 5}: lists (self first) never cross groups.
    knn = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 4, 5], [4, 5, 3], [5, 3, 4]])
    rows, cols = expanded_sets(knn, k1=2)
    sets = {i: sorted(cols[rows == i].tolist()) for i in range(6)}
    assert sets == {0: [0, 1, 2], 1: [0, 1, 2], 2: [0, 1, 2], 3: [3, 4, 5], 4: [3, 4, 5],
                    5: [3, 4, 5]}


def test_bad_parameters():
    qf, gf = np.zeros((3, 4), np.float32), np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match="k2"):
        ReRanker(qf, gf, k1=2, k2=5)
    with pytest.raises(ValueError, match="more than"):
        ReRanker(qf, gf, k1=10)
    with pytest.raises(ValueError, match="unknown keys"):
        evaluate(qf, gf, [1, 2, 3], [1] * 5, [0] * 3, [1] * 5, rerank={"k": 3})
