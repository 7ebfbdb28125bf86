"""Configuration of the two supervised Mirage stages: [`MirageSFTConfig`], a `trl.SFTConfig` with `latent_*` fields.

Stage 1 (joint supervision) teacher-forces the helper image's k chunk means into the latent pads and trains
`latent_loss + latent_text_weight * CE`; stage 2 (text-only supervision) lets the model fill the pads with its own
hidden-state chain and trains CE only. Everything else is a stock `SFTConfig`/`TrainingArguments` field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from trl import SFTConfig

LATENT_LOSSES = ("cosine", "mse")


@dataclass
class MirageRuntimeDefaults:
    """Fields and defaults every Mirage training config shares (put it before the TRL config class in the bases): the
    conversion settings `latent_num_tokens` and `image_scale`, bf16 only on a GPU that supports it, activation
    checkpointing under its current name, no pinned memory without an accelerator."""

    latent_num_tokens: int | None = field(
        default=None,
        metadata={
            "help": "k, latent pads per block, chosen when converting a Qwen2.5-VL checkpoint (None: 4). A Mirage "
            "checkpoint keeps its own k: None accepts it, another value is an error."
        },
    )
    image_scale: float | None = field(
        default=None,
        metadata={
            "help": "Resize factor of input and helper images, set on the processor when converting a Qwen2.5-VL "
            "checkpoint (None: keep the size) and saved with it. A Mirage checkpoint's processor keeps its own: "
            "None accepts it, another value is an error. 0.4375 turns a 64-px VSP map cell into 28 px, one merged "
            "vision token per cell, which the tiny base learns from fastest."
        },
    )

    bf16: bool | None = field(
        default=None,
        metadata={"help": "bf16 mixed precision. None: on when a CUDA GPU with bf16 support is used, else off."},
    )
    # TRL gives the deprecated alias `gradient_checkpointing` a default (True), so transformers warns on every config
    # that it is deprecated. The default moves to its new name; the old name still works when set.
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={"help": "Deprecated alias of `activation_checkpointing` (used when that is not set)."},
    )
    activation_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Recompute activations in the backward pass to save memory (None: on, TRL's default, unless the "
            "deprecated `gradient_checkpointing` says otherwise). The latent chain needs it non-reentrant."
        },
    )

    def __post_init__(self):
        # TRL turns bf16 on whenever fp16 is off, also on CPU, where it is slow and makes runs inexact; only use it
        # on a GPU that supports it.
        if self.bf16 is None:
            self.bf16 = (
                not self.fp16 and not self.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            )
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True
        # Pinned memory only helps copies to an accelerator; without one torch warns on every data loader.
        if self.dataloader_pin_memory and not torch.accelerator.is_available():
            self.dataloader_pin_memory = False
        super().__post_init__()
        if self.latent_num_tokens is not None and self.latent_num_tokens < 1:
            raise ValueError(f"latent_num_tokens must be >= 1, got {self.latent_num_tokens}")
        if self.image_scale is not None and self.image_scale <= 0:
            raise ValueError(f"image_scale must be > 0 (or None), got {self.image_scale}")


@dataclass
class MirageSFTConfig(MirageRuntimeDefaults, SFTConfig):
    r"""
    Configuration class for [`MirageSFTTrainer`]: every field of `trl.SFTConfig`, plus the Mirage fields below. Defaults
    that differ from `SFTConfig` follow the paper (lr 1e-5, weight decay 0.01, 10 warmup steps) or what the latent
    inputs need (columns kept, no dataset preparation, no truncation, bf16 only on a GPU).

    Parameters:
        latent_stage (`int`, defaults to `1`):
            1: helper-image targets are teacher-forced into the pads, loss = latent loss + `latent_text_weight` x CE.
            2: the pads are filled by the model's own hidden-state chain (gradients flow through it), loss = CE.
        latent_loss (`str`, defaults to `"cosine"`):
            Stage-1 latent loss: `"cosine"` (mean over pads of 1 - cos(h, target), the paper's) or `"mse"`.
        latent_text_weight (`float`, defaults to `0.1`):
            gamma, the weight of the text cross-entropy in stage 1. Stage 2 is CE only.
        latent_num_tokens (`int` or `None`, defaults to `None`):
            k, the pads per latent block, chosen when a Qwen2.5-VL checkpoint is converted (None: 4). A Mirage
            checkpoint keeps its own k (None: accept it; another value is an error).
        latent_freeze_vision (`bool`, defaults to `True`):
            Freeze the vision tower (patch merger included), as the paper does.
        latent_align_blocks (`bool`, defaults to `True`):
            Left-pad rows so that their first latent blocks share columns: a cheaper stage-2 chain, same outputs
            (see [`MirageDataCollator`]).
        image_scale (`float` or `None`, defaults to `None`):
            The processor's image resize factor, set when a Qwen2.5-VL checkpoint is converted (None: no resize) and
            saved with the processor. A Mirage checkpoint's processor keeps its own (None: accept it; another value
            is an error).
    """

    latent_stage: int = field(
        default=1,
        metadata={
            "help": "1: teacher-force the helper image's chunk means into the latent pads and train latent loss + "
            "latent_text_weight x CE; 2: fill the pads with the model's own hidden-state chain and train CE only.",
            "choices": [1, 2],
        },
    )
    latent_loss: str = field(
        default="cosine",
        metadata={
            "help": "Stage-1 latent loss between the hidden state before each pad and its target: 'cosine' "
            "(mean of 1 - cos, the paper's) or 'mse'.",
            "choices": list(LATENT_LOSSES),
        },
    )
    latent_text_weight: float = field(
        default=0.1,
        metadata={"help": "gamma: weight of the text cross-entropy in the stage-1 loss (stage 2 trains CE only)."},
    )
    latent_freeze_vision: bool = field(
        default=True,
        metadata={
            "help": "Freeze the vision tower, patch merger included (the paper trains the language model only). "
            "The stage-1 targets come from this tower, so training it would move the targets."
        },
    )
    latent_align_blocks: bool = field(
        default=True,
        metadata={
            "help": "Left-pad rows so that their first latent blocks share columns: a cheaper stage-2 chain, same "
            "outputs (see MirageDataCollator)."
        },
    )

    # Defaults that differ from SFTConfig.
    learning_rate: float = field(default=1e-5, metadata={"help": "Initial learning rate (the paper's 1e-5)."})
    weight_decay: float = field(default=0.01, metadata={"help": "Weight decay (the paper's 0.01)."})
    warmup_steps: float = field(default=10, metadata={"help": "Linear warmup steps (the paper's 10)."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Must stay False: the collator needs the raw 'prompt', 'completion', 'images' and "
            "'helper_images' columns, which the model's forward signature does not name."
        },
    )
    dataset_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"skip_prepare_dataset": True},
        metadata={
            "help": "Kept at {'skip_prepare_dataset': True}: the Mirage collator tokenizes and processes images on "
            "the fly, so TRL's dataset preparation must not run."
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Maximum tokens per row (None: no limit). Longer rows are cut at the end, and a cut that would "
            "drop an image token, a latent token or the whole completion raises an error instead."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.latent_stage not in (1, 2):
            raise ValueError(f"latent_stage must be 1 or 2, got {self.latent_stage!r}")
        if self.latent_loss not in LATENT_LOSSES:
            raise ValueError(f"latent_loss must be one of {LATENT_LOSSES}, got {self.latent_loss!r}")
        if self.latent_text_weight < 0:
            raise ValueError(f"latent_text_weight must be >= 0, got {self.latent_text_weight}")
        if self.remove_unused_columns:
            raise ValueError(
                "MirageSFTConfig needs remove_unused_columns=False: the collator reads the 'prompt', 'completion', "
                "'images' and 'helper_images' columns, which Trainer would otherwise drop"
            )
        if isinstance(self.dataset_kwargs, dict):
            self.dataset_kwargs.setdefault("skip_prepare_dataset", True)
        if self.packing or self.padding_free:
            raise ValueError(
                "MirageSFTConfig does not support packing or padding_free (rows carry images and latents)"
            )
