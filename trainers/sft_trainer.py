"""[`MirageSFTTrainer`]: the two supervised Mirage stages as a `trl.SFTTrainer`.

Stage 1 (joint supervision): the helper image of every latent block goes through the frozen vision tower; its k chunk
means are teacher-forced into the block's `<|latent_pad|>` inputs, and the loss is

    latent_loss + latent_text_weight * CE,   latent_loss = mean over pads of 1 - cos(h_{p-1}, target_p)   (or MSE)

where h_{p-1} is the final-norm hidden state one position before pad p (what the model would feed there itself).
Stage 2 (text-only supervision): no helper images; each pad is fed the model's own hidden state one position earlier
(a chain of k dependent steps, run by the model in one chunked forward, gradients flowing through it); loss = CE.

Both come out of a single forward: the model returns `latent_hidden` and `latent_targets` from its backbone, and the
CE comes from TRL's fused LM head (no `(batch, seq, vocab)` logits). The fused head calls the backbone directly, so
the trainer reads the backbone's output through a forward hook that lives only for the duration of that call.

Single device::

    trainer = MirageSFTTrainer(model="tiny", args=MirageSFTConfig("out", latent_stage=1), train_dataset=dataset)
    trainer.train()

Many devices: the same code under `accelerate launch` (see `examples/sft_mirage.py`).
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from accelerate import PartialState
from peft import PeftModel
from trl import SFTTrainer

from modeling_mirage import MirageProcessor
from modeling_mirage.processing_mirage import check_latent_token_ids

from .collator import ROW_INDEX_COLUMN, MirageDataCollator, check_example
from .config import MirageSFTConfig
from .hub import MirageHubMixin
from .model_setup import (
    check_saved_image_scale,
    checkpoint_model_type,
    freeze_vision_tower,
    is_mirage,
    load_checkpoint_weights,
    load_model_and_processor,
)

IMAGE_COLUMNS = ("images", "helper_images", "image")
ADAPTER_BASE_DIR = "mirage-base"
"""Sub-folder of `output_dir` that holds the converted Mirage base a LoRA run's adapters refer to (see
`MirageSFTTrainer._record_adapter_base`)."""


def _is_mirage_checkpoint(name_or_path: str | None) -> bool:
    """Whether `name_or_path` is a Mirage checkpoint (local folder, or Hub id whose config is readable)."""
    if not name_or_path:
        return False
    try:
        return checkpoint_model_type(name_or_path) == "mirage"
    except (OSError, ValueError):
        return False


def _undecoded(feature):
    """The same feature type with every `datasets.Image` set to `decode=False` (images stay bytes until the
    collator decodes them, so an unreadable one is reported with its row and field instead of deep in the loader)."""
    if isinstance(feature, datasets.Image):
        return datasets.Image(decode=False)
    if isinstance(feature, list):
        return [_undecoded(f) for f in feature]
    if hasattr(feature, "feature"):
        feature = copy.deepcopy(feature)
        feature.feature = _undecoded(feature.feature)
    return feature


def latent_loss_fn(hidden: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Stage-1 latent loss between the predictions `hidden` (N, D) and the `targets` (N, D): mean over the N pads of
    `1 - cos` ("cosine"), or the mean squared error ("mse"). Computed in fp32."""
    hidden, targets = hidden.float(), targets.float().to(hidden.device)
    if kind == "cosine":
        return (1 - F.cosine_similarity(hidden, targets, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(hidden, targets)
    raise ValueError(f"unknown latent loss {kind!r}; expected 'cosine' or 'mse'")


def mean_pairwise_cosine(targets: torch.Tensor, k: int) -> torch.Tensor | None:
    """How alike the targets of different blocks are: for each chunk index j, the mean cosine between the j-th
    targets of every pair of blocks, averaged over j. `targets` is `(num_blocks * k, D)`, blocks consecutive. None
    with fewer than two blocks. Near 1.0 the vision tower does not tell the helper images apart."""
    blocks = targets.shape[0] // k
    if blocks < 2:
        return None
    unit = F.normalize(targets.detach().float().reshape(blocks, k, -1).transpose(0, 1), dim=-1)  # (k, blocks, D)
    gram = unit @ unit.transpose(1, 2)  # (k, blocks, blocks)
    off_diagonal = gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)
    return (off_diagonal / (blocks * (blocks - 1))).mean()


class MirageSFTTrainer(MirageHubMixin, SFTTrainer):
    """Stage 1 and stage 2 of Mirage training (arXiv 2506.17218), on top of `trl.SFTTrainer`.

    Args:
        model: a Mirage model (`config.model_type == "mirage"`, PEFT-wrapped or not), or a name/path: a Mirage
            checkpoint, a Qwen2.5-VL checkpoint to convert, or `"tiny"` for the embedded tiny base.
        args: a [`MirageSFTConfig`]; `latent_stage` picks the stage.
        data_collator: defaults to [`MirageDataCollator`] for the stage.
        train_dataset, eval_dataset: canonical task rows (`prompt`, `completion`, `images`, `helper_images`).
            Image columns are read undecoded and every row's fields are checked before training starts.
        processing_class: the [`MirageProcessor`]; loaded with the model when `model` is a name.
        peft_config: e.g. `trainers.model_setup.language_model_lora_config()`.
        Other arguments as for `trl.SFTTrainer` (`callbacks`, `optimizers`, ...).

    Logs, besides TRL's metrics: `ce_loss` (mean token NLL of the batch), and in stage 1 `latent_loss` and
    `latent_target_cosine` (mean pairwise cosine of the targets across blocks of the batch; near 1.0 they carry no
    information about the helper image, and a falling cosine loss then teaches nothing).

    Hub: `push_to_hub` (and `--push_to_hub`, `hub_strategy` checkpoint pushes) upload the Mirage model page only,
    with the Mirage model card in place of TRL's (see [`trainers.hub.MirageHubMixin`]).
    """

    _tag_names = ["trl", "sft", "mirage"]
    _name = "Mirage SFT"

    def __init__(
        self,
        model,
        args: MirageSFTConfig | None = None,
        data_collator=None,
        train_dataset: datasets.Dataset | datasets.IterableDataset | None = None,
        eval_dataset=None,
        processing_class: MirageProcessor | None = None,
        peft_config=None,
        **kwargs: Any,
    ):
        if args is None:
            args = MirageSFTConfig("mirage-sft")
        if not isinstance(args, MirageSFTConfig):
            raise TypeError(f"MirageSFTTrainer needs a MirageSFTConfig, got {type(args).__name__}")
        for name in ("compute_loss_func", "formatting_func"):
            if kwargs.get(name) is not None:
                raise ValueError(f"MirageSFTTrainer computes its own loss from chat rows; {name} is not supported")
        if args.loss_type != "nll" or args.label_smoothing_factor > 0:
            raise ValueError("MirageSFTTrainer supports loss_type='nll' without label smoothing only")

        if isinstance(model, str):
            model, loaded_processor = load_model_and_processor(
                model, args.latent_num_tokens, image_scale=args.image_scale, **(args.model_init_kwargs or {})
            )
            processing_class = processing_class if processing_class is not None else loaded_processor
        if not is_mirage(model):
            raise ValueError(
                f"MirageSFTTrainer needs a Mirage model (config.model_type 'mirage'), got model_type "
                f"{getattr(model.config, 'model_type', None)!r}; convert a Qwen2.5-VL checkpoint with "
                "MirageForConditionalGeneration.from_base(...) or pass its path as `model`"
            )
        if processing_class is None:
            processing_class = MirageProcessor.from_pretrained(model.config._name_or_path)
        self._check_latent_settings(model, processing_class, args)
        if processing_class.tokenizer.pad_token is None:
            processing_class.tokenizer.pad_token = processing_class.tokenizer.eos_token
        if args.latent_freeze_vision:
            freeze_vision_tower(model)
        if peft_config is not None and not isinstance(model, PeftModel):
            self._record_adapter_base(model, processing_class, args.output_dir)

        train_dataset = self._prepare_rows(train_dataset, "train", args.latent_stage)
        if isinstance(eval_dataset, dict):
            eval_dataset = {key: self._prepare_rows(ds, key, args.latent_stage) for key, ds in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = self._prepare_rows(eval_dataset, "eval", args.latent_stage)
        if data_collator is None:
            data_collator = MirageDataCollator(
                processing_class,
                stage=args.latent_stage,
                max_length=args.max_length,
                pad_to_multiple_of=args.pad_to_multiple_of,
                align_latent_blocks=args.latent_align_blocks,
            )
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        # The stage-2 chain runs the layers chunk by chunk over a cache; reentrant checkpointing recomputes a chunk
        # without the earlier chunks' graph and drops their gradient. Checked after TRL's set-up, which can force
        # reentrant mode (PEFT under DeepSpeed ZeRO-3).
        if args.latent_stage == 2 and args.gradient_checkpointing:
            if (args.gradient_checkpointing_kwargs or {}).get("use_reentrant"):
                raise ValueError(
                    "stage 2 needs non-reentrant gradient checkpointing (the latent chain's gradient would be lost): "
                    "set activation_checkpointing_kwargs={'use_reentrant': False}, or activation_checkpointing=False"
                )

    # ---- set-up -----------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_latent_settings(model, processor, args: MirageSFTConfig) -> None:
        """k and the image resize come from the model and its processor; the config may only repeat them."""
        config = model.config
        k_model, k_processor = config.latent_num_tokens, getattr(processor, "latent_num_tokens", None)
        k_args = args.latent_num_tokens
        if k_model != k_processor or (k_args is not None and k_args != k_model):
            raise ValueError(
                f"latent_num_tokens disagree: model config {k_model}, processor {k_processor}, MirageSFTConfig "
                f"{k_args}; k is fixed when a model is converted, so leave the config's unset (None) or set it to "
                "the model's"
            )
        check_saved_image_scale(processor, args.image_scale, "MirageSFTConfig")
        ids = check_latent_token_ids(processor.tokenizer)
        if ids != tuple(config.latent_token_ids):
            raise ValueError(
                f"the processor's latent token ids {ids} differ from the model's {tuple(config.latent_token_ids)} "
                "(pad, start, end); load both from the same checkpoint"
            )

    @staticmethod
    def _record_adapter_base(model, processor, output_dir: str) -> None:
        """Make the adapters' `base_model_name_or_path` a Mirage checkpoint that outlives the run.

        PEFT records the model's `name_or_path`. For a model converted on load (a Qwen2.5-VL base, or `tiny`, built in
        a temporary folder removed at exit) that is no Mirage checkpoint, so no adapter checkpoint could be loaded on
        its own. The converted base (LoRA leaves its weights untouched) is then saved once to
        `<output_dir>/mirage-base`, with its processor and remote code, and recorded instead; every adapter checkpoint
        then loads with `PeftModel.from_pretrained(AutoModel.from_pretrained(base, trust_remote_code=True), folder)`.
        """
        if _is_mirage_checkpoint(model.config._name_or_path):
            return
        folder = str(Path(output_dir, ADAPTER_BASE_DIR).resolve())
        state = PartialState()
        if state.is_main_process:
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
        state.wait_for_everyone()
        model.config._name_or_path = model.name_or_path = folder

    @staticmethod
    def _prepare_rows(dataset, split: str, stage: int):
        """Keep images undecoded until the collator, number the rows for error messages, and check every row's
        fields (without decoding images) before training starts."""
        if dataset is None or not isinstance(dataset, datasets.Dataset):
            return dataset  # iterable datasets are checked batch by batch in the collator
        features = dataset.features.copy()
        for column in IMAGE_COLUMNS:
            if column in features:
                features[column] = _undecoded(features[column])
        if features != dataset.features:
            dataset = dataset.cast(features)
        if ROW_INDEX_COLUMN not in dataset.column_names:
            dataset = dataset.add_column(ROW_INDEX_COLUMN, list(range(len(dataset))))
        columns = [c for c in ("prompt", "completion", "images", "image", "helper_images", "id", ROW_INDEX_COLUMN)]
        blocks = 0
        for position, row in enumerate(dataset.select_columns([c for c in columns if c in dataset.column_names])):
            try:
                blocks += check_example(row, stage, position, decode=False).num_blocks
            except ValueError as error:
                raise ValueError(f"{split} dataset: {error}") from None
        if stage == 1 and len(dataset) and blocks == 0:
            raise ValueError(
                f"{split} dataset: stage 1 needs rows whose completion has latent blocks (<output_image>) and helper "
                "images; none has any (use a mirage-* variant, or latent_stage=2 for text-only supervision)"
            )
        return dataset

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """Resume with the checkpoint's weights really loaded.

        `Trainer` reads a full checkpoint's safetensors with a plain `load_state_dict(strict=False)`, but transformers 5
        saves Qwen2.5-VL-family weights under their Hub names, so nothing matches and training would silently go on
        from the current weights. Full (non-PEFT, non-FSDP) checkpoints are loaded through the model's conversion
        table instead; adapters, FSDP and DeepSpeed checkpoints take the stock path.
        """
        target = model if model is not None else self.model
        has_weights = any(
            os.path.isfile(os.path.join(resume_from_checkpoint, name))
            for name in ("model.safetensors", "model.safetensors.index.json")
        )
        if isinstance(target, PeftModel) or self.is_fsdp_enabled or self.is_deepspeed_enabled or not has_weights:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint_weights(self.accelerator.unwrap_model(target), resume_from_checkpoint)

    # ---- loss -------------------------------------------------------------------------------------------------------

    def _backbone(self, model) -> torch.nn.Module:
        """The module the fused LM head runs (`model.base_model` of the unwrapped Mirage model)."""
        unwrapped = self.accelerator.unwrap_model(model)
        if isinstance(unwrapped, PeftModel):
            unwrapped = unwrapped.get_base_model()
        return unwrapped.base_model

    @staticmethod
    @contextlib.contextmanager
    def _capture_outputs(*modules: torch.nn.Module) -> Iterator[list[list]]:
        """Record each module's forward outputs, in call order, for the duration of the block (hooks that never
        outlive one step)."""
        captured: list[list] = [[] for _ in modules]
        handles = [
            module.register_forward_hook(lambda _module, _args, output, store=store: store.append(output))
            for module, store in zip(modules, captured)
        ]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss, plus the stage-1 latent term: stage 1 `latent_loss + latent_text_weight * CE`, stage 2 CE.

        `SFTTrainer.compute_loss` runs the one forward (fused LM head), computes the CE and logs its metrics
        (`entropy`, `mean_token_accuracy`, `num_tokens`). Two forward hooks read, during that call, the model's fused
        outputs (per-token log-probs, for `ce_loss`) and the backbone's (`latent_hidden`, `latent_targets`). The latent
        term is then added the way TRL adds its MoE auxiliary loss: a mean over this micro-batch's pads, divided by
        the accumulation steps only when TRL's CE was normalised by `num_items_in_batch`.

        Scaling: Mirage inherits Qwen2.5-VL's `accepts_loss_kwargs = False`, so `Trainer` passes no
        `num_items_in_batch`; TRL's CE is then the token mean of this micro-batch, and `Trainer` divides the returned
        loss by the accumulation steps (as for any such model). An accumulated step is thus the mean of its
        micro-batches' `latent_loss + gamma * CE`, not a token-weighted CE over the accumulated batch.
        """
        mode = "train" if self.model.training else "eval"
        with self._capture_outputs(model, self._backbone(model)) as (model_outputs, backbone_outputs):
            loss_and_outputs = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        # The first call is the fused-head forward; with `return_outputs` TRL runs a second one for the logits.
        fused = model_outputs[0]
        loss, outputs = loss_and_outputs if return_outputs else (loss_and_outputs, None)

        metrics = self._metrics[mode]
        gather = self.accelerator.gather_for_metrics
        token_nll, num_tokens = -fused.log_probs.detach().sum(), fused.label_mask.sum()
        nll_sum, token_count = gather(torch.stack([token_nll.float(), num_tokens.float()]).view(1, 2)).sum(0)
        metrics["ce_loss"].append((nll_sum / token_count.clamp(min=1)).item())
        if self.args.latent_stage == 1:
            latent = self._stage1_latent_loss(backbone_outputs[0] if backbone_outputs else None, fused.log_probs)
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = self.args.latent_text_weight * loss + latent / steps
            metrics["latent_loss"].append(gather(latent.detach().view(1)).mean().item())
            similarity = mean_pairwise_cosine(backbone_outputs[0].latent_targets, self.model.config.latent_num_tokens)
            if similarity is not None:
                metrics["latent_target_cosine"].append(gather(similarity.view(1)).mean().item())
        return (loss, outputs) if return_outputs else loss

    def _stage1_latent_loss(self, backbone_outputs, anchor: torch.Tensor) -> torch.Tensor:
        if backbone_outputs is None:
            raise RuntimeError(
                "the Mirage backbone did not run inside the trainer's forward, so stage-1 latent predictions are "
                "unavailable; does the model's forward call `model.base_model`?"
            )
        hidden, targets = backbone_outputs.latent_hidden, backbone_outputs.latent_targets
        if hidden is None or hidden.shape[0] == 0:
            # No latent block in this micro-batch: a zero that stays attached to the graph keeps every process's
            # backward identical in structure.
            return anchor.sum() * 0.0
        if targets is None:
            raise RuntimeError(
                "stage 1 got latent pads but no targets: the batch lacks helper_pixel_values (is the collator's "
                "stage 1?)"
            )
        return latent_loss_fn(hidden, targets, self.args.latent_loss)
