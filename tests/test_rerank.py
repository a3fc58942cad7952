"""k-reciprocal re-ranking against a dense, loop-by-loop reference of the published algorithm."""

import os
import sys

import numpy as np
import pytest

from conftest import REPO
from personvit_jax.evaluation import evaluate, evaluate_rank
from personvit_jax.evaluation.rerank import ReRanker, expanded_sets, smallest_k

sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import eval_bench  # noqa: E402  (the dense reference lives with the Market-scale benchmark)


def dense_rerank(qf, gf, k1, k2, lam):
    """The published algorithm with dense N x N matrices, in float64 (benchmarks/eval_bench.py
    runs the same function in float32 at Market scale)."""
    return eval_bench.dense_rerank(qf, gf, k1, k2, lam, dtype=np.float64)


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
