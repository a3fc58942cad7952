"""PersonViT in JAX / Flax: iBOT pretraining, ReID fine-tuning, evaluation and deployment."""

__version__ = "0.1.0"
