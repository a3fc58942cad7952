"""Market-1501 metrics on hand-made cases and against a straightforward per-query reference."""

import numpy as np
import pytest

from personvit_jax.evaluation import evaluate, evaluate_rank, pairwise_distances, summarize


def reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """The classic per-query loop (stable sort), written independently of the library."""
    aps, inps, cmcs = [], [], []
    for i in range(len(q_pids)):
        order = sorted(range(len(g_pids)), key=lambda j: (distmat[i, j], j))
        ranked = [j for j in order if not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
        hits = [g_pids[j] == q_pids[i] for j in ranked]
        if not any(hits):
            continue
        precisions, found = [], 0
        for r, h in enumerate(hits):
            if h:
                found += 1
                precisions.append(found / (r + 1))
        aps.append(np.mean(precisions))
        last = max(r for r, h in enumerate(hits) if h)
        inps.append(sum(hits) / (last + 1))
        first = hits.index(True)
        cmcs.append([1.0 if r >= first else 0.0 for r in range(max_rank)])
    return np.mean(cmcs, 0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


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
