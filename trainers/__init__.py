from .collator import MirageDataCollator, check_example
from .config import MirageSFTConfig
from .model_setup import (
    freeze_vision_tower,
    language_model_lora_config,
    load_model_and_processor,
    merge_lora,
    save_for_hub,
)
from .sft_trainer import MirageSFTTrainer
from .tiny_base import build_tiny_base as build_tiny_base
from .tiny_base import tiny_base_path as tiny_base_path

__all__ = [
    "MirageDataCollator",
    "MirageSFTConfig",
    "MirageSFTTrainer",
    "build_tiny_base",
    "check_example",
    "freeze_vision_tower",
    "language_model_lora_config",
    "load_model_and_processor",
    "merge_lora",
    "save_for_hub",
    "tiny_base_path",
]
