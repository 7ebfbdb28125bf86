"""Mirage model package: configuration, model and processor (also the Hub remote-code payload, as flat files).

Importing the package registers the `mirage` model type with the Auto classes, so saved folders load with the local
classes (`AutoConfig`/`AutoModel`/`AutoProcessor.from_pretrained(folder)`) without running the folder's remote code.
This file does not travel with saved models: the remote-code files never depend on it.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from .configuration_mirage import LATENT_END_TOKEN, LATENT_PAD_TOKEN, LATENT_START_TOKEN, LATENT_TOKENS, MirageConfig
from .modeling_mirage import (
    LatentModeLogitsProcessor,
    MirageForConditionalGeneration,
    MirageGenerateOutput,
    MirageModel,
)
from .processing_mirage import LATENT_PLACEHOLDER, MirageProcessor, expand_latent_placeholders, latent_block

AutoConfig.register("mirage", MirageConfig, exist_ok=True)
AutoModel.register(MirageConfig, MirageForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MirageConfig, MirageForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MirageConfig, MirageProcessor, exist_ok=True)

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
