"""Losses, all pure functions of arrays (computed in float32).

Fine-tuning (TransReID / PersonViT): ID cross-entropy on the BNNeck logits + batch-hard triplet on
the pre-BN feature, soft margin by default. Label-free fine-tuning (usl): InfoNCE against a
memory of cluster centres.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from personvit_jax.linalg import l2_normalize


def id_cross_entropy(logits_bc: jax.Array, labels_b: jax.Array,
                     label_smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy; with smoothing eps the target is (1 - eps) one-hot + eps / C."""
    logits_bc = logits_bc.astype(jnp.float32)
    targets = jax.nn.one_hot(labels_b, logits_bc.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits_bc, targets).mean()


def euclidean_distances(x_bd: jax.Array, y_md: jax.Array) -> jax.Array:
    """Pairwise Euclidean distances [B, M]; clamped at 1e-12 before the sqrt (finite gradient)."""
    x_bd, y_md = x_bd.astype(jnp.float32), y_md.astype(jnp.float32)
    sq = (jnp.sum(x_bd ** 2, -1)[:, None] + jnp.sum(y_md ** 2, -1)[None, :]
          - 2.0 * x_bd @ y_md.T)
    return jnp.sqrt(jnp.maximum(sq, 1e-12))


def batch_hard_triplet(feats_bd: jax.Array, labels_b: jax.Array,
                       margin: Optional[float] = None) -> jax.Array:
    """Batch-hard triplet loss (Hermans et al. 2017) over one batch.

    For each anchor: the farthest positive (same label, incl. itself at distance ~0) and the
    closest negative. margin None -> soft margin log(1 + exp(d_ap - d_an)); else
    max(0, d_ap - d_an + margin). Mean over anchors. Needs >= 1 negative per anchor (P >= 2).
    """
    dist = euclidean_distances(feats_bd, feats_bd)
    same = labels_b[:, None] == labels_b[None, :]
    d_ap = jnp.max(jnp.where(same, dist, -jnp.inf), axis=1)
    d_an = jnp.min(jnp.where(same, jnp.inf, dist), axis=1)
    if margin is None:
        return jnp.mean(jax.nn.softplus(d_ap - d_an))
    return jnp.mean(jax.nn.relu(d_ap - d_an + margin))


def reid_loss(outputs: dict[str, jax.Array], labels_b: jax.Array, *, id_weight: float = 1.0,
              triplet_weight: float = 1.0, label_smoothing: float = 0.0,
              triplet_margin: Optional[float] = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Total fine-tuning loss over the branches of `ReIDModel` ([B, S, ...] outputs).

    With JPM (S > 1), as TransReID: each term = 0.5 * global + 0.5 * mean over local branches.
    """
    logits, feats = outputs["logits"], outputs["feats"]
    s = logits.shape[1]
    ids = jnp.stack([id_cross_entropy(logits[:, i], labels_b, label_smoothing) for i in range(s)])
    tri = jnp.stack([batch_hard_triplet(feats[:, i], labels_b, triplet_margin) for i in range(s)])
    if s > 1:
        ids = 0.5 * ids[0] + 0.5 * ids[1:].mean()
        tri = 0.5 * tri[0] + 0.5 * tri[1:].mean()
    else:
        ids, tri = ids[0], tri[0]
    acc = jnp.mean(jnp.argmax(logits[:, 0], -1) == labels_b)
    total = id_weight * ids + triplet_weight * tri
    return total, {"loss": total, "id_loss": ids, "triplet_loss": tri, "id_accuracy": acc}


def cluster_contrast_loss(feats_bd: jax.Array, memory_cd: jax.Array, labels_b: jax.Array,
                          num_clusters: jax.Array, temp: float) -> tuple[jax.Array, jax.Array]:
    """Cluster Contrast's InfoNCE: cross-entropy of the L2-normalised features against the
    cluster centres [C, D] (L2-normalised; rows >= num_clusters are unused capacity and left
    out of the softmax) at temperature `temp`. Returns (loss, accuracy of the nearest
    centre)."""
    f = l2_normalize(feats_bd.astype(jnp.float32))
    logits = f @ jax.lax.stop_gradient(memory_cd).T / temp  # [B, C]
    logits = jnp.where(jnp.arange(memory_cd.shape[0])[None] < num_clusters, logits, -jnp.inf)
    loss = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits, -1), labels_b[:, None],
                                         axis=1))
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels_b)


# ---------------------------------------------------------------------------------------------
# Pretraining (iBOT): self-distillation on the CLS token and masked patch tokens.
# Teacher targets are centred, sharpened softmaxes and carry no gradient.
# ---------------------------------------------------------------------------------------------


def teacher_probs(teacher_logits: jax.Array, center: jax.Array, temp) -> jax.Array:
    """softmax((t - center) / temp) over the last axis, without gradient."""
    t = (teacher_logits.astype(jnp.float32) - center) / temp
    return jax.lax.stop_gradient(jax.nn.softmax(t, axis=-1))


def teacher_entropies(teacher_logits: jax.Array, center_1k: jax.Array, temp) -> dict:
    """DINO's two collapse signals over the teacher's centred, sharpened distributions p of a
    batch (rows over every leading axis), in nats (ln K at most): `entropy_of_mean` H(mean p)
    falls towards 0 when every image goes to the same prototypes; `mean_entropy` mean H(p)
    rises towards ln K when every distribution turns uniform. Healthy: the first high, the
    second well below it."""
    p = teacher_probs(teacher_logits, center_1k, temp)
    p = p.reshape(-1, p.shape[-1])
    ent = lambda q: -jnp.sum(q * jnp.log(jnp.maximum(q, 1e-30)), -1)
    return {"entropy_of_mean": ent(jnp.mean(p, 0)), "mean_entropy": jnp.mean(ent(p))}


def prototypes_used(teacher_logits: jax.Array, center_1k: jax.Array) -> jax.Array:
    """The share of the possible argmax prototypes the batch uses: distinct argmax of the
    centred teacher logits over all rows / min(K, rows). 1 = every row its own prototype;
    -> 1 / rows when one prototype takes the batch (one-hot collapse)."""
    k = teacher_logits.shape[-1]
    rows = teacher_logits.reshape(-1, k).astype(jnp.float32) - center_1k
    hits = jnp.zeros((k,), jnp.float32).at[jnp.argmax(rows, -1)].add(1.0)
    return jnp.sum(hits > 0) / min(k, rows.shape[0])


def feature_std(features_bd: jax.Array) -> jax.Array:
    """Std over the batch of the L2-normalised features, averaged over dimensions (SimSiam's
    collapse signal): ~1 / sqrt(D) when they spread over the sphere, -> 0 when every image maps
    to one point."""
    f = l2_normalize(features_bd.reshape(-1, features_bd.shape[-1]).astype(jnp.float32))
    return jnp.mean(jnp.std(f, axis=0))


def cls_distillation(student_vbk: jax.Array, teacher_gbk: jax.Array, center_1k: jax.Array,
                     student_temp: float, teacher_temp) -> jax.Array:
    """DINO/iBOT CLS loss: teacher global crop q vs every student crop v != q, averaged over
    pairs (and images). student [V, B, K] (the G global crops first, then locals), teacher
    [G, B, K]."""
    g, v = teacher_gbk.shape[0], student_vbk.shape[0]
    t = teacher_probs(teacher_gbk, center_1k, teacher_temp)
    log_s = jax.nn.log_softmax(student_vbk.astype(jnp.float32) / student_temp, axis=-1)
    ce_qv = -jnp.einsum("qbk,vbk->qv", t, log_s) / t.shape[1]  # [G, V] mean over images
    other_view = jnp.arange(g)[:, None] != jnp.arange(v)[None, :]
    return jnp.sum(jnp.where(other_view, ce_qv, 0.0)) / jnp.sum(other_view)


def masked_patch_distillation(student_gbnk: jax.Array, teacher_gbnk: jax.Array,
                              masks_gbn: jax.Array, center_1k: jax.Array, student_temp: float,
                              teacher_temp) -> jax.Array:
    """iBOT MIM loss: for each global crop, the student's patch distribution at masked
    positions vs the teacher's (unmasked view) at the same positions. Per image: mean over its
    masked patches (0 when none are masked); then mean over images and crops, as iBOT."""
    t = teacher_probs(teacher_gbnk, center_1k, teacher_temp)
    log_s = jax.nn.log_softmax(student_gbnk.astype(jnp.float32) / student_temp, axis=-1)
    ce = -jnp.sum(t * log_s, axis=-1)  # [G, B, N]
    m = masks_gbn.astype(jnp.float32)
    per_image = jnp.sum(ce * m, -1) / jnp.maximum(jnp.sum(m, -1), 1.0)  # [G, B]
    return per_image.mean()


def update_center(center_1k: jax.Array, teacher_logits: jax.Array, momentum: float) -> jax.Array:
    """EMA of the mean teacher output over every leading axis (crops, batch, patches). Under jit
    the mean is over the GLOBAL batch, whatever the sharding."""
    k = teacher_logits.shape[-1]
    batch_center = jnp.mean(teacher_logits.astype(jnp.float32).reshape(-1, k), axis=0)
    return center_1k * momentum + batch_center[None] * (1.0 - momentum)


# Camera centres (not in DINO / iBOT; `loss.camera_centres`): one centre per camera, so a
# teacher target loses what its camera adds to every image that camera sees.
def camera_sums(per_image_bk: jax.Array, camids_b: jax.Array, num_cameras: int
                ) -> tuple[jax.Array, jax.Array]:
    """(sums [C, K] of the rows [B, K] of each camera, counts [C]). Sums and counts, not means,
    so micro-batches and shards add up to the whole batch's."""
    onehot_bc = jax.nn.one_hot(camids_b, num_cameras, dtype=jnp.float32)
    return onehot_bc.T @ per_image_bk.astype(jnp.float32), jnp.sum(onehot_bc, axis=0)


def update_camera_centres(center_ck: jax.Array, sums_ck: jax.Array, counts_c: jax.Array,
                          momentum: float) -> jax.Array:
    """`update_center` per camera: each camera's centre moves towards the mean of its images'
    teacher outputs in this batch; cameras absent from the batch keep theirs."""
    mean_ck = sums_ck / jnp.maximum(counts_c, 1e-12)[:, None]
    return jnp.where(counts_c[:, None] > 0, center_ck * momentum + mean_ck * (1.0 - momentum),
                     center_ck)
