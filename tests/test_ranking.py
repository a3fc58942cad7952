"""Market-1501 metrics on hand-made cases and against a straightforward per-query reference."""

import numpy as np
import pytest

from personvit_jax.evaluation import (camera_bias, evaluate, evaluate_rank, pairwise_distances,
                                      summarize)
from personvit_jax.evaluation.distances import check_features, float_keys as _float_keys
from personvit_jax.evaluation.ranking import rank_queries


def reference_per_query(distmat, q_pids, g_pids, q_camids, g_camids):
    """The classic per-query loop (float32 distances, stable sort), written independently of
    the library: per query (AP, INP, first-hit rank) or None when it has no true match."""
    distmat = np.asarray(distmat, np.float32)
    out = []
    for i in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda j: (distmat[i, j], j))
        ranked = [j for j in order if not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        hits = [g_pids[j] == q_pids[i] for j in ranked]
        if not any(hits):
            out.append(None)
            continue
        precisions, found = [], 0
        for r, h in enumerate(hits):
            if h:
                found += 1
                precisions.append(found / (r + 1))
        last = max(r for r, h in enumerate(hits) if h)
        out.append((np.mean(precisions), sum(hits) / (last + 1), hits.index(True)))
    return out


def reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """Averages of `reference_per_query`: (CMC, mAP, mINP, number of valid queries)."""
    per_query = [r for r in reference_per_query(distmat, q_pids, g_pids, q_camids, g_camids)
                 if r is not None]
    cmcs = [[1.0 if r >= first else 0.0 for r in range(max_rank)] for _, _, first in per_query]
    return (np.mean(cmcs, 0), float(np.mean([r[0] for r in per_query])),
            float(np.mean([r[1] for r in per_query])), len(per_query))


def test_hand_made_case():
    # One query (pid 1, cam 0). Gallery, by distance: [pid 1 cam 0 (removed), pid 2, pid 1 cam 1,
    # pid 0 distractor, pid 1 cam 2].
    d = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids = np.array([1, 2, 1, 0, 1])
    g_cams = np.array([0, 1, 1, 2, 2])
    r = evaluate_rank(d, [1], g_pids, [0], g_cams, max_rank=5)
    # kept ranking: pid2, pid1, pid0, pid1 -> matches at ranks 2 and 4
    assert r["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert r["mINP"] == pytest.approx(2 / 4)
    np.testing.assert_allclose(r["cmc"], [0, 1, 1, 1, 1])
    assert r["num_valid_queries"] == 1 and r["num_queries"] == 1


def test_invalid_queries_are_skipped_and_counted():
    d = np.array([[0.1, 0.2], [0.1, 0.2]])
    # query 0 (pid 5, cam 0): its only match is in its own camera -> invalid
    r = evaluate_rank(d, [5, 6], [5, 6], [0, 0], [0, 1], max_rank=2)
    assert r["num_valid_queries"] == 1 and r["num_queries"] == 2
    assert r["mAP"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="none of the"):
        evaluate_rank(d[:1], [5], [5, 6], [0], [0, 1])


def test_ties_resolved_by_gallery_order():
    d = np.zeros((1, 3))
    r = evaluate_rank(d, [1], [2, 1, 1], [0], [1, 1, 1], max_rank=3)
    # order [0, 1, 2]: matches at ranks 2, 3
    assert r["mAP"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    np.testing.assert_allclose(r["cmc"], [0, 1, 1])


def test_gallery_shorter_than_max_rank_saturates():
    r = evaluate_rank(np.array([[0.3, 0.1]]), [1], [1, 2], [0], [1, 1], max_rank=5)
    np.testing.assert_allclose(r["cmc"], [0, 1, 1, 1, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_problems_match_reference(seed):
    rng = np.random.default_rng(seed)
    nq, ng = 40, 70
    q_pids = rng.integers(1, 12, nq)
    g_pids = np.concatenate([rng.integers(1, 12, ng - 10), np.zeros(10, int)])  # + distractors
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    d = np.round(rng.random((nq, ng)), 1)  # coarse values: many ties
    cmc, m_ap, m_inp, n = reference(d, q_pids, g_pids, q_cams, g_cams, 20)
    r = evaluate_rank(d, q_pids, g_pids, q_cams, g_cams, max_rank=20, chunk_size=7)
    assert r["num_valid_queries"] == n
    np.testing.assert_allclose(r["cmc"], cmc, atol=1e-12)
    assert r["mAP"] == pytest.approx(m_ap, abs=1e-12)
    assert r["mINP"] == pytest.approx(m_inp, abs=1e-12)


def test_distances_and_evaluate():
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(5, 4)), rng.normal(size=(9, 4))
    sq = ((q[:, None] - g[None]) ** 2).sum(-1)
    np.testing.assert_allclose(pairwise_distances(q, g), sq, rtol=1e-4, atol=1e-5)
    cos = 1 - (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
        g / np.linalg.norm(g, axis=1, keepdims=True)).T
    np.testing.assert_allclose(pairwise_distances(q, g, "cosine"), cos, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="metric"):
        pairwise_distances(q, g, "manhattan")
    q_pids, g_pids = rng.integers(0, 3, 5), rng.integers(0, 3, 9)
    q_cams, g_cams = np.zeros(5, int), np.ones(9, int)
    a = evaluate(q, g, q_pids, g_pids, q_cams, g_cams, chunk_size=2)
    b = evaluate_rank(sq, q_pids, g_pids, q_cams, g_cams)
    assert a["mAP"] == pytest.approx(b["mAP"]) and a["mINP"] == pytest.approx(b["mINP"])
    s = summarize(a)
    assert set(s) == {"mAP", "mINP", "rank1", "rank5", "rank10", "num_valid_queries",
                      "num_queries"}


def _random_problem(rng, nq, ng, num_ids, num_cams, tie_decimals=None):
    """Queries and a gallery with junk (same pid and camera), distractors (pid 0), ids absent
    from the gallery (invalid queries) and, with `tie_decimals`, many equal distances."""
    q_pids = rng.integers(1, num_ids + 3, nq)  # ids > num_ids never appear in the gallery
    g_pids = np.concatenate([rng.integers(1, num_ids + 1, ng - ng // 5), np.zeros(ng // 5, int)])
    rng.shuffle(g_pids)
    q_cams, g_cams = rng.integers(0, num_cams, nq), rng.integers(0, num_cams, ng)
    d = rng.random((nq, ng)).astype(np.float32)
    if tie_decimals is not None:
        d = np.round(d, tie_decimals).astype(np.float32)
    return d, q_pids, g_pids, q_cams, g_cams


@pytest.mark.parametrize("seed,nq,ng,chunk,decimals", [
    (10, 33, 90, 8, 1), (11, 50, 40, 256, 2), (12, 17, 12, 5, 1), (13, 64, 300, 16, None)])
def test_per_query_results_match_reference(seed, nq, ng, chunk, decimals):
    """Every query's AP, INP and first-hit rank, on problems with ties, junk, distractors,
    invalid queries and (ng=12) galleries shorter than max_rank."""
    rng = np.random.default_rng(seed)
    d, q_pids, g_pids, q_cams, g_cams = _random_problem(rng, nq, ng, 6, 3, decimals)
    ref = reference_per_query(d, q_pids, g_pids, q_cams, g_cams)
    got = rank_queries(lambda idx: d[idx], q_pids, g_pids, q_cams, g_cams, chunk_size=chunk)
    assert any(r is None for r in ref) and any(r is not None for r in ref)
    for i, r in enumerate(ref):
        assert got["valid"][i] == (r is not None)
        if r is not None:
            assert got["ap"][i] == pytest.approx(r[0], abs=1e-12)
            assert got["inp"][i] == pytest.approx(r[1], abs=1e-12)
            assert got["first_rank"][i] == r[2]
    cmc, m_ap, m_inp, n = reference(d, q_pids, g_pids, q_cams, g_cams, 50)
    res = evaluate_rank(d, q_pids, g_pids, q_cams, g_cams, max_rank=50, chunk_size=chunk)
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-12)
    assert (res["mAP"], res["mINP"], res["num_valid_queries"]) == pytest.approx((m_ap, m_inp, n),
                                                                                abs=1e-12)


def test_features_to_metrics_exact_with_integer_features():
    """Integer features give exact float32 distances (and many ties): evaluate() from features
    equals the reference on the exact distance matrix."""
    rng = np.random.default_rng(4)
    qf, gf = rng.integers(-2, 3, (45, 6)), rng.integers(-2, 3, (120, 6))
    d = ((qf[:, None] - gf[None]) ** 2).sum(-1).astype(np.float32)
    _, q_pids, g_pids, q_cams, g_cams = _random_problem(rng, 45, 120, 8, 4)
    cmc, m_ap, m_inp, n = reference(d, q_pids, g_pids, q_cams, g_cams, 20)
    res = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=20, chunk_size=16)
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-12)
    assert (res["mAP"], res["mINP"], res["num_valid_queries"]) == pytest.approx((m_ap, m_inp, n),
                                                                                abs=1e-12)
    cos = evaluate(qf, gf, q_pids, g_pids, q_cams, g_cams, metric="cosine", max_rank=20)
    ref_cos = evaluate_rank(pairwise_distances(qf, gf, "cosine"), q_pids, g_pids, q_cams, g_cams,
                            max_rank=20)
    assert cos["mAP"] == ref_cos["mAP"] and cos["mINP"] == ref_cos["mINP"]


def test_query_is_gallery_with_unique_camera_ids():
    """A set without camera ids: query = gallery, each image its own (large) camera id, so the
    protocol removes exactly the query itself."""
    rng = np.random.default_rng(5)
    f = rng.normal(size=(60, 8)).astype(np.float32)
    pids = rng.integers(0, 15, 60)
    cams = 1_000_000 + np.arange(60)
    d = pairwise_distances(f, f)
    cmc, m_ap, m_inp, n = reference(d, pids, pids, cams, cams, 10)
    res = evaluate(f, f, pids, pids, cams, cams, max_rank=10)
    assert res["mAP"] == pytest.approx(m_ap, abs=1e-12) and res["num_valid_queries"] == n
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-12)
    # a query never finds itself: identical features for all items would otherwise give rank-1
    same = evaluate(np.ones((4, 3)), np.ones((4, 3)), [1, 1, 2, 2], [1, 1, 2, 2], [0, 1, 2, 3],
                    [0, 1, 2, 3], max_rank=3)
    # tie order = gallery index: query 0 sees [1(match)...], query 1 sees [0(match)...],
    # query 2 sees [0, 1, 3(match)], query 3 sees [0, 1, 2(match)]
    assert same["mAP"] == pytest.approx((1 + 1 + 1 / 3 + 1 / 3) / 4)


def test_float_keys_order_like_floats():
    x = np.array([0.5, -0.0, 0.0, -1e-7, 2.0, -3.0, 1e-30, np.float32(np.inf)], np.float32)
    k = _float_keys(x)
    assert k[1] == k[2]  # -0.0 and 0.0 are one value
    order = np.argsort(k, kind="stable")
    np.testing.assert_array_equal(order, np.argsort(x, kind="stable"))


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="NaN or inf"):
        check_features(np.array([[0.0, np.nan]]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"\[Q, D\] and \[G, D\]"):
        evaluate(np.zeros((2, 3)), np.zeros((2, 4)), [1, 2], [1, 2], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="camids"):
        evaluate_rank(np.zeros((2, 2)), [1, 2], [1, 2], [0], [1, 1])
    with pytest.raises(ValueError, match="distmat"):
        evaluate_rank(np.zeros((3, 2)), [1, 2], [1, 2], [0, 0], [1, 1])
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluate_rank(np.array([[0.0, np.nan]]), [1], [1, 2], [0], [1, 1])
    with pytest.raises(ValueError, match="gallery is empty"):
        evaluate(np.zeros((2, 3)), np.zeros((0, 3)), [1, 2], [], [0, 0], [])


def test_camera_bias_counts_own_camera_neighbours():
    # 1-d features: query 0 (camera 0) at 0.0 has gallery 0, 1 (cameras 0, 1) nearest; query 1
    # (camera 1) at 10.0 has gallery 2, 3 (cameras 1, 1) nearest.
    qf = np.array([[0.0], [10.0]], np.float32)
    gf = np.array([[0.1], [0.2], [10.1], [10.2], [5.0]], np.float32)
    q_cams, g_cams = np.array([0, 1]), np.array([0, 1, 1, 1, 2])
    out = camera_bias(qf, gf, q_cams, g_cams, k=2, chunk_size=1)
    assert out["top2_same_camera"] == pytest.approx((1 / 2 + 2 / 2) / 2)
    assert out["same_camera_base"] == pytest.approx((1 / 5 + 3 / 5) / 2)
    # k larger than the gallery: every gallery image is a neighbour, so the share is the base
    out = camera_bias(qf, gf, q_cams, g_cams, k=50)
    assert out["top5_same_camera"] == pytest.approx(out["same_camera_base"])


def _per_query(ap, pids, first_rank=None):
    ap = np.asarray(ap, np.float64)
    first = np.zeros(len(ap), np.int64) if first_rank is None else np.asarray(first_rank)
    return {"ap": ap, "inp": ap, "first_rank": first, "valid": np.ones(len(ap), bool)}


def test_bootstrap_interval_resamples_identities():
    """The interval's width is the standard error of identity means: 400 identities with
    AP ~ U(0, 1) give 2 x 1.96 x 0.289 / 20 = 0.057; five identical queries per identity must
    give the same width (the identity is the unit), not one sqrt(5) narrower."""
    from personvit_jax.evaluation.ranking import bootstrap_intervals
    rng = np.random.default_rng(0)
    ap = rng.uniform(size=400)
    one = bootstrap_intervals(_per_query(ap, np.arange(400)), np.arange(400))
    five = bootstrap_intervals(_per_query(np.repeat(ap, 5), np.repeat(np.arange(400), 5)),
                               np.repeat(np.arange(400), 5))
    width = lambda r: r["mAP_ci95"][1] - r["mAP_ci95"][0]
    assert width(one) == pytest.approx(2 * 1.96 * np.sqrt(1 / 12) / 20, rel=0.15)
    assert width(five) == pytest.approx(width(one), rel=0.05)
    lo, hi = one["mAP_ci95"]
    assert lo < ap.mean() < hi
    # seeded: the same results give the same interval; another seed another one
    assert bootstrap_intervals(_per_query(ap, np.arange(400)), np.arange(400)) == one
    assert bootstrap_intervals(_per_query(ap, np.arange(400)), np.arange(400), seed=1) != one


def test_bootstrap_interval_rank1_and_invalid_queries():
    """rank-1 counts first hits at rank 0; invalid queries are left out; no spread, no width."""
    from personvit_jax.evaluation.ranking import bootstrap_intervals
    pq = _per_query([0.5, 0.5, 0.9], [1, 2, 3], first_rank=[0, 0, 4])
    pq["valid"][2] = False
    out = bootstrap_intervals(pq, np.array([1, 2, 3]))
    assert out == {"mAP_ci95": [0.5, 0.5], "rank1_ci95": [1.0, 1.0]}
    pq["valid"][:] = False
    with pytest.raises(ValueError, match="no valid query"):
        bootstrap_intervals(pq, np.array([1, 2, 3]))
