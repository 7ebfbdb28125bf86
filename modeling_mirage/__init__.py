"""Mirage model package: configuration, model, generation and processor (the Hub remote-code payload, as flat files),
plus one-time conversion from a stock checkpoint (`conversion.py`, which stays out of the payload).

Importing the package registers the `mirage` model type with the Auto classes, so saved folders load with the local
classes (`AutoConfig`/`AutoModel`/`AutoProcessor.from_pretrained(folder)`) without running the folder's remote code,
and gives `MirageForConditionalGeneration` its `from_base` class method. This file does not travel with saved models:
the remote-code files never depend on it.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from . import conversion
from .configuration_mirage import LATENT_END_TOKEN, LATENT_PAD_TOKEN, LATENT_START_TOKEN, LATENT_TOKENS, MirageConfig
from .generation_mirage import LatentModeLogitsProcessor, MirageGenerateOutput
from .modeling_mirage import MirageForConditionalGeneration, MirageModel
from .processing_mirage import LATENT_PLACEHOLDER, MirageProcessor, expand_latent_placeholders, latent_block

AutoConfig.register("mirage", MirageConfig, exist_ok=True)
AutoModel.register(MirageConfig, MirageForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(MirageConfig, MirageForConditionalGeneration, exist_ok=True)
AutoProcessor.register(MirageConfig, MirageProcessor, exist_ok=True)

# Conversion is a local-install feature: the payload's class gets it here, where the package is imported (any import
# of `modeling_mirage.<module>` runs this file first), and a class loaded as remote code never has it.
MirageForConditionalGeneration.from_base = classmethod(conversion.from_base)

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
