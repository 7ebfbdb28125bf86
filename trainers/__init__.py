"""Mirage trainers: stage 1 and stage 2 (`MirageSFTTrainer`), stage 3 (`MirageGRPOTrainer`), their configs, collator,
rewards and model set-up.

The TRL-based names load on first use, so importing the package is cheap (no trl/peft import).
"""

import importlib

_LAZY = {
    "MirageDataCollator": "collator",
    "check_example": "collator",
    "MirageSFTConfig": "config",
    "MirageGRPOConfig": "grpo_config",
    "MirageGRPOTrainer": "grpo_trainer",
    "REWARDS": "rewards",
    "get_reward_funcs": "rewards",
    "freeze_vision_tower": "model_setup",
    "language_model_lora_config": "model_setup",
    "lora_config_from": "model_setup",
    "load_model_and_processor": "model_setup",
    "merge_lora": "model_setup",
    "save_for_hub": "model_setup",
    "MirageSFTTrainer": "sft_trainer",
    "MirageHubMixin": "hub",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
