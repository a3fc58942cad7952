"""Retrieval evaluation: distances and Market-1501 metrics."""

from personvit_jax.evaluation.ranking import (camera_bias, evaluate, evaluate_rank, l2_normalize,
                                              pairwise_distances, summarize)

__all__ = ["evaluate", "evaluate_rank", "pairwise_distances", "l2_normalize", "summarize",
           "camera_bias"]
