"""Mirage model package: configuration, model and processor (also the Hub remote-code payload, as flat files)."""

from .configuration_mirage import LATENT_END_TOKEN, LATENT_PAD_TOKEN, LATENT_START_TOKEN, LATENT_TOKENS, MirageConfig
from .modeling_mirage import (
    LatentModeLogitsProcessor,
    MirageForConditionalGeneration,
    MirageGenerateOutput,
    MirageModel,
)
from .processing_mirage import LATENT_PLACEHOLDER, MirageProcessor, expand_latent_placeholders, latent_block

__all__ = [
    "LATENT_END_TOKEN",
    "LATENT_PAD_TOKEN",
    "LATENT_PLACEHOLDER",
    "LATENT_START_TOKEN",
    "LATENT_TOKENS",
    "LatentModeLogitsProcessor",
    "MirageConfig",
    "MirageForConditionalGeneration",
    "MirageGenerateOutput",
    "MirageModel",
    "MirageProcessor",
    "expand_latent_placeholders",
    "latent_block",
]
