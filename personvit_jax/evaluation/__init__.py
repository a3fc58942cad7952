"""Retrieval evaluation: distances, Market-1501 metrics, re-ranking and the one evaluator."""

from personvit_jax.evaluation.distances import pairwise_distances
from personvit_jax.evaluation.ranking import camera_bias, evaluate, evaluate_rank, summarize
from personvit_jax.evaluation.retrieval import Retrieval, RetrievalEvaluator

__all__ = ["evaluate", "evaluate_rank", "pairwise_distances", "summarize",
           "camera_bias", "Retrieval", "RetrievalEvaluator"]
