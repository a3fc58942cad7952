"""The one retrieval evaluator: query and gallery splits -> features -> Market-1501 metrics.

The fine-tune stage's evaluations, the pretraining monitor and the evaluate stage all build a
`RetrievalEvaluator` and call `run(embed)` with their own embedding function
(images [B, H, W, 3], camids [B] -> replicated features [B, D], jitted on the mesh).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import numpy as np
from jax.sharding import Mesh

from personvit_jax.data.layouts import Split
from personvit_jax.evaluation.ranking import (aggregate, bootstrap_intervals, camera_bias, evaluate,
                                             evaluate_per_query, rerank_kwargs, summarize)
from personvit_jax.evaluation.features import extract_features, progress_printer

Embed = Callable[[Any, Any], Any]


@dataclasses.dataclass
class Retrieval:
    """What one evaluation found."""

    # mAP, mINP, rank1/5/10, 95% bootstrap intervals of mAP and rank-1 (mAP_ci95,
    # rank1_ci95: [lo, hi]), query counts (+ camera bias, "rerank")
    summary: dict[str, Any]
    per_query: dict[str, np.ndarray]  # ap, inp, first_rank, valid [Q] (before re-ranking)
    query_features: np.ndarray  # [Q, D]
    gallery_features: np.ndarray  # [G, D]


@dataclasses.dataclass
class RetrievalEvaluator:
    """Evaluates embeddings on `query` against `gallery` (layouts.Split: pids, camids).

    preprocessing: the test transform (image_size, mean, std); batch_size: global extraction
    batch (divisible by the mesh's devices); these and mesh only serve `features` / `run`
    (`metrics` of given features needs none of them); metric: euclidean | cosine; camera_bias: also
    report `ranking.camera_bias` (share of same-camera neighbours); rerank: None or
    {k1, k2, lambda_value} to also report k-reciprocal re-ranked metrics under "rerank".
    """

    query: Split
    gallery: Split
    preprocessing: Any = None
    mesh: Optional[Mesh] = None
    batch_size: int = 0
    metric: str = "euclidean"
    max_rank: int = 50
    camera_bias: bool = False
    rerank: Optional[dict] = None
    num_workers: int = 0
    prefetch: int = 2

    def features(self, embed: Embed, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Query [Q, D] and gallery [G, D] features of `embed`."""
        if self.preprocessing is None or self.mesh is None or self.batch_size <= 0:
            raise ValueError("RetrievalEvaluator.features needs preprocessing, mesh and "
                             "batch_size (this one was made for metrics of given features)")
        out = []
        for name, split in (("query", self.query), ("gallery", self.gallery)):
            out.append(extract_features(embed, split, self.preprocessing, self.mesh,
                                        self.batch_size, self.num_workers, self.prefetch,
                                        progress=progress_printer(name) if progress else None))
        return out[0], out[1]

    def metrics(self, qf: np.ndarray, gf: np.ndarray) -> Retrieval:
        """Metrics of given features (rows in split order)."""
        q, g = self.query, self.gallery
        ids = (q.pids, g.pids, q.camids, g.camids)
        per_query = evaluate_per_query(qf, gf, *ids, metric=self.metric)
        summary = summarize(aggregate(per_query, self.max_rank))
        summary.update(bootstrap_intervals(per_query, q.pids))
        if self.camera_bias:
            summary.update(camera_bias(qf, gf, q.camids, g.camids, metric=self.metric))
        if self.rerank:
            rr = rerank_kwargs(self.rerank)
            reranked = evaluate(qf, gf, *ids, metric=self.metric, rerank=rr,
                                max_rank=self.max_rank)
            summary["rerank"] = {**rr, **summarize(reranked)}
        return Retrieval(summary, per_query, qf, gf)

    def run(self, embed: Embed, progress: bool = False) -> Retrieval:
        """Features of `embed`, then their metrics."""
        return self.metrics(*self.features(embed, progress))
