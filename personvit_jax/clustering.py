"""Pseudo identities for label-free ReID (Cluster Contrast, Dai et al., arXiv 2103.11568, as
TransReID-SSL fine-tunes self-supervised ViTs with it): DBSCAN on k-reciprocal Jaccard
distances, a memory of one L2-normalised centre per cluster, its momentum update, and the
clustering's quality against hidden labels (monitoring only).

DBSCAN is scikit-learn's, on the sparse precomputed Jaccard graph of
`evaluation.rerank.jaccard_graph`: the algorithm and implementation the published recipe
runs (on a dense N x N matrix there), with memory O(edges) instead of O(N^2).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from personvit_jax.linalg import l2_normalize


# ---------------------------------------------------------------------------- host side
def dbscan(graph, eps: float, min_samples: int) -> np.ndarray:
    """Cluster ids [N] int32 (0..C-1, -1 = outlier) of DBSCAN on a sparse precomputed distance
    graph holding every pair at distance <= eps (and the diagonal)."""
    from sklearn.cluster import DBSCAN  # imported where used: only the usl stage needs it

    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)
    return labels.astype(np.int32)


def centre_per_camera(feats_nd: np.ndarray, camids_n: np.ndarray) -> np.ndarray:
    """[N, D] float32: each feature minus the mean feature of its camera (not re-normalised:
    `jaccard_graph` L2-normalises its input).

    Features of an unadapted model carry their camera's style (scene, white balance), so
    DBSCAN groups one person's images per camera and keeps cameras apart; Market-protocol
    retrieval is cross-camera only. Removing each camera's mean before the Jaccard graph (camera
    ids come with every ReID image, no identity is read) gives clusters that span cameras."""
    feats = np.asarray(feats_nd, np.float64)
    cams, cam_n = np.unique(np.asarray(camids_n), return_inverse=True)
    return (feats - group_means(feats, cam_n, len(cams))[cam_n]).astype(np.float32)


def group_means(feats_nd: np.ndarray, groups_n: np.ndarray, capacity: int) -> np.ndarray:
    """[capacity, D] float64: row g = the mean of the features [N, D] with group id g (rows of
    groups without members are 0; ids -1, e.g. outliers, are ignored)."""
    feats = np.asarray(feats_nd, np.float64)
    keep = groups_n >= 0
    sums = np.zeros((capacity, feats.shape[1]))
    np.add.at(sums, groups_n[keep], feats[keep])
    counts = np.bincount(groups_n[keep], minlength=capacity)[:capacity]
    return sums / np.maximum(counts, 1)[:, None]


def cluster_centres(feats_nd: np.ndarray, labels_n: np.ndarray, capacity: int) -> np.ndarray:
    """[capacity, D] float32: row c = the L2-normalised mean feature of cluster c (rows past
    the last cluster are 0; outliers, label -1, are ignored)."""
    means = group_means(feats_nd, labels_n, capacity)
    return l2_normalize(means).astype(np.float32)


def quality(pseudo_n: np.ndarray, hidden_n: Optional[np.ndarray] = None,
            camids_n: Optional[np.ndarray] = None) -> dict[str, float]:
    """Clustering statistics; `hidden_n` (the true identities, None for data without them) is
    read here and nowhere in training. purity: fraction of the clustered images whose identity
    is their cluster's majority one; nmi: normalised mutual information of clusters and
    identities over the clustered images; outlier_fraction over all images; with `camids_n`,
    single_camera_fraction: the fraction of clusters whose images all come from one camera."""
    from sklearn.metrics import normalized_mutual_info_score

    pseudo_n = np.asarray(pseudo_n)
    keep = pseudo_n >= 0
    num = int(pseudo_n.max()) + 1 if keep.any() else 0
    out = {"clusters": float(num), "outliers": float((~keep).sum()),
           "outlier_fraction": float((~keep).mean()) if len(pseudo_n) else 0.0}
    if keep.any() and camids_n is not None:
        pairs = np.unique(np.stack([pseudo_n[keep], np.asarray(camids_n)[keep]]), axis=1)
        out["single_camera_fraction"] = float((np.bincount(pairs[0], minlength=num) == 1).mean())
    if keep.any() and hidden_n is not None:
        hidden_n = np.asarray(hidden_n)
        _, ids = np.unique(hidden_n[keep], return_inverse=True)
        table = np.zeros((num, ids.max() + 1), np.int64)
        np.add.at(table, (pseudo_n[keep], ids), 1)
        out["purity"] = float(table.max(1).sum() / keep.sum())
        out["nmi"] = float(normalized_mutual_info_score(hidden_n[keep], pseudo_n[keep]))
    return out


# ---------------------------------------------------------------------------- in the step
def update_memory(memory_cd: jax.Array, feats_bd: jax.Array, labels_b: jax.Array,
                  momentum: float, group: int, hard: bool) -> jax.Array:
    """Momentum update of the cluster memory [C, D] with a batch's L2-normalised features
    [B, D] (no gradient), after the loss used the old memory.

    hard (Cluster Contrast's CM_Hard, TransReID-SSL's --use-hard): per cluster of the batch
    (P x K layout, `group` = K consecutive rows per cluster) the instance least similar to its
    centre moves the centre; else each instance in turn (CM). Centres are renormalised.
    """
    f = jax.lax.stop_gradient(feats_bd.astype(jnp.float32))

    def moved(centre, x):
        c = momentum * centre + (1.0 - momentum) * x
        return l2_normalize(c)

    if hard:
        b, d = f.shape
        f_pkd = f.reshape(b // group, group, d)
        ids_p = labels_b.reshape(b // group, group)[:, 0]
        sims_pk = jnp.einsum("pkd,pd->pk", f_pkd, memory_cd[ids_p])
        hardest = f_pkd[jnp.arange(b // group), jnp.argmin(sims_pk, axis=1)]
        return memory_cd.at[ids_p].set(moved(memory_cd[ids_p], hardest))

    def one(i, mem):
        return mem.at[labels_b[i]].set(moved(mem[labels_b[i]], f[i]))

    return jax.lax.fori_loop(0, f.shape[0], one, memory_cd)
