"""The imagery task suite (work in progress): see docs/tasks.md."""

from .corpus import vocabulary_corpus
from .templates import LATENT_PLACEHOLDER
from .variants import VARIANTS

__all__ = ["LATENT_PLACEHOLDER", "VARIANTS", "vocabulary_corpus"]
