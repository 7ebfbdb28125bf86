"""[`MirageGRPOTrainer`]: stage 3 of Mirage, GRPO through the latent loop, on top of `trl.GRPOTrainer`.

A stock `GRPOTrainer` runs on a Mirage model without an error and is silently wrong: it keeps only the token ids of a
rollout (the latents are lost), scores the latent pads (and the forced `<|latent_end|>`) as if they were sampled text,
shows rewards the text with the latent blocks stripped, and rebuilds the reference model from the checkpoint the policy
came from, which may be a stock Qwen2.5-VL. This subclass changes exactly those points:

* Rollouts go through Mirage `generate` (batched, per-row latent blocks, KV cache) with `return_dict_in_generate`, so
  every rollout keeps the latent vectors it was fed; they travel with the row through TRL's shuffle/split buffering
  (`latents` in the batch dict).
* The latent pads, and `<|latent_end|>` wherever the end rule forced it, carry no loss, ratio, KL or entropy and do not
  count in `num_items_in_batch`: they enter TRL's loss mask through its `tool_mask` hook.
* Rescoring is exact. A latent vector is a deterministic function of the parameters and the prefix, so the probability
  of a completion under the policy is the product of its text tokens' probabilities with the latents recomputed by
  that policy. With `latent_rescoring="chain"` (default) every policy forward runs the self-fed chain, which equals the
  rollout's values at theta = theta_old and lets the gradient flow through the latents. `"replay"` teacher-forces the
  recorded latents: the same values before the first update, one ordinary forward, no gradient through the latents.
  The reference model always scores with its own chain.
* Rewards read each completion with its latent blocks shown as `<output_image>` (see `trainers.rewards`).
* Guards, before any weight is loaded: vLLM, continuous batching, tools, environments and custom rollout functions are
  refused (no such engine feeds a hidden state back as the next input); a reference model that would not be a Mirage
  model is refused with what to do instead; the processor pads on the left; the latent settings of model, processor and
  config must agree.

Single device::

    trainer = MirageGRPOTrainer(model="outputs/tiny-stage2", args=MirageGRPOConfig("out"), train_dataset=rows)
    trainer.train()
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from peft import PeftModel
from trl import GRPOTrainer

from modeling_mirage import LATENT_PLACEHOLDER, MirageProcessor

from .grpo_config import MirageGRPOConfig
from .hub import MirageHubMixin
from .model_setup import (
    TINY_BASE,
    checkpoint_model_type,
    freeze_vision_tower,
    is_mirage,
    load_model_and_processor,
    resolve_model_path,
)
from .rewards import REWARDS, get_reward_funcs
from .sft_trainer import MirageSFTTrainer

# Model inputs TRL passes with one value per token (they move with the tokens when rows are shifted).
PER_TOKEN_INPUTS = ("token_type_ids", "mm_token_type_ids")

# Why each generation back end TRL offers cannot produce Mirage rollouts.
_UNSUPPORTED = {
    "use_vllm": "vLLM returns token ids only and cannot feed a step's hidden state back as the next input, so it "
    "cannot decode latent blocks (and the latents the rescoring needs would be lost); set use_vllm=False, rollouts "
    "then use Mirage `generate` with the KV cache",
    "use_transformers_continuous_batching": "transformers' continuous batching (`generate_batch`) does not run "
    "Mirage's latent decoding, which feeds hidden states back as inputs; set use_transformers_continuous_batching=False",
    "tools": "tool calling splices tool output into a rollout between several generate calls, and no engine feeds the "
    "hidden states of earlier turns back, so a rollout's latents could not be recorded and replayed",
    "environment_factory": "environments inject their output into a rollout between several generate calls, and no "
    "engine feeds the hidden states of earlier turns back, so a rollout's latents could not be recorded and replayed",
    "rollout_func": "a custom rollout function returns token ids only, so the latent vectors fed at the pads (which "
    "rescoring needs) would be lost; rollouts must come from Mirage `generate`",
}


def _policy_uses_peft(model, peft_config) -> bool:
    return peft_config is not None or isinstance(model, PeftModel)


def check_reference_source(source: str, model_type: str | None, args: MirageGRPOConfig, uses_peft: bool) -> None:
    """Refuse a set-up whose reference model would not be a Mirage model.

    With `beta != 0` and no PEFT, `GRPOTrainer` loads the reference model from the checkpoint the policy came from
    (`config._name_or_path`). That is a stock Qwen2.5-VL when the policy was converted in memory: it would ignore the
    latents (or fail on the latent token ids of a small vocabulary).
    """
    if args.beta == 0.0 or uses_peft or model_type == "mirage":
        return
    found = f"a {model_type!r} checkpoint" if model_type else "no loadable checkpoint"
    raise ValueError(
        f"beta={args.beta} needs a reference model, which GRPOTrainer loads from the checkpoint the policy came from "
        f"({source!r}); that is {found}, not a Mirage model, so the reference would ignore the latent tokens. Save the "
        "converted model first (trainers.save_for_hub(model, processor, folder)) and train from that folder, or "
        "train with PEFT (peft_config=...) so the reference is the policy with its adapters disabled, or set beta=0.0"
    )


class MirageGRPOTrainer(MirageHubMixin, GRPOTrainer):
    """Stage 3 of Mirage training (GRPO through the latent loop, arXiv 2506.17218), on top of `trl.GRPOTrainer`.

    Args:
        model: a Mirage model (`config.model_type == "mirage"`, PEFT-wrapped or not) or a name/path: a Mirage
            checkpoint, or a Qwen2.5-VL checkpoint / `"tiny"` to convert (then with PEFT or `beta=0.0`, see above).
        reward_funcs: reward functions with TRL's signature, or names from `trainers.rewards.REWARDS`; None: the
            config's `reward_funcs` (default: accuracy and format, weighted 0.9 / 0.1).
        args: a [`MirageGRPOConfig`].
        train_dataset, eval_dataset: rows of the task suite (`prompt`, `images`, and the columns the rewards read:
            `task`, `variant`, `answer`, `map_desc`).
        processing_class: the [`MirageProcessor`]; loaded with the model when `model` is a name.
        peft_config: e.g. `trainers.model_setup.language_model_lora_config()`.
        Other arguments as for `trl.GRPOTrainer`, except `tools`, `environment_factory` and `rollout_func`, which are
        refused (see the module docstring).

    Overrides (each calls the parent and adds): `_generate` (record latents, mask latent positions, show latent blocks
    to rewards), `_generate_and_score_completions` (attach the latents to the batch), `_get_per_token_logps_and_entropies`
    (replay: feed the recorded latents; chain: align the rows' first latent blocks), `_compute_loss` (tell the rescoring which rows' latents it sees).
    """

    _tag_names = ["trl", "grpo", "mirage"]
    _name = "Mirage GRPO"

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: MirageGRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class: MirageProcessor | None = None,
        reward_processing_classes=None,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
        **kwargs: Any,
    ):
        if args is None:
            args = MirageGRPOConfig("mirage-grpo")
        if not isinstance(args, MirageGRPOConfig):
            raise TypeError(f"MirageGRPOTrainer needs a MirageGRPOConfig, got {type(args).__name__}")
        # Guards first: nothing here may load a weight before they pass.
        for name, why in _UNSUPPORTED.items():
            value = getattr(args, name, None) if hasattr(args, name) else kwargs.get(name)
            if value:
                raise ValueError(f"MirageGRPOTrainer does not support {name}: {why}")
        uses_peft = _policy_uses_peft(model, peft_config)
        if isinstance(model, str):
            source = model
            if model == TINY_BASE:
                model_type = "qwen2_5_vl"  # the embedded tiny base is a Qwen2.5-VL checkpoint, converted on load
            else:
                source = resolve_model_path(model)  # a clear error for a path that is no model folder
                model_type = self._model_type_or_none(source)
            if model_type is not None:  # unreadable: loading below reports why
                check_reference_source(source, model_type, args, uses_peft)
            model, loaded_processor = load_model_and_processor(
                model, args.latent_num_tokens, image_scale=args.image_scale, **(args.model_init_kwargs or {})
            )
            processing_class = processing_class if processing_class is not None else loaded_processor
        else:
            if not is_mirage(model):
                raise ValueError(
                    f"MirageGRPOTrainer needs a Mirage model (config.model_type 'mirage'), got model_type "
                    f"{getattr(getattr(model, 'config', None), 'model_type', None)!r}; convert a Qwen2.5-VL checkpoint "
                    "with MirageForConditionalGeneration.from_base(...) or pass its path as `model`"
                )
            source = model.config._name_or_path
            check_reference_source(source, self._model_type_or_none(source), args, uses_peft)
        if processing_class is None:
            processing_class = MirageProcessor.from_pretrained(model.config._name_or_path)
        MirageSFTTrainer._check_latent_settings(model, processing_class, args)
        if args.latent_freeze_vision:
            freeze_vision_tower(model)
        if peft_config is not None and not isinstance(model, PeftModel):
            # Adapter checkpoints must name a base that outlives the run (a model converted on load has none).
            MirageSFTTrainer._record_adapter_base(model, processing_class, args.output_dir)
        # Rollout prompts are left-padded; the processor's own padding (which TRL uses for the multimodal inputs of
        # the rescoring, `mm_token_type_ids` included) must agree, or the rescored log-probs shift.
        processing_class.tokenizer.padding_side = "left"
        processing_class.tokenizer.truncation_side = "left"

        if reward_funcs is None:
            reward_funcs = list(args.reward_funcs)
        if not isinstance(reward_funcs, list):
            reward_funcs = [reward_funcs]
        # Registry names become functions; any other string stays a reward-model id for TRL.
        reward_funcs = [get_reward_funcs([f])[0] if isinstance(f, str) and f in REWARDS else f for f in reward_funcs]

        self._rollout_latents: list[torch.Tensor] | None = None  # latents of the rollouts being scored
        self._scoring_latents: list[torch.Tensor] | None = None  # latents of the rows the next forwards score
        super().__init__(
            model=model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            reward_processing_classes=reward_processing_classes,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
            **kwargs,
        )
        # TRL keeps rollouts from sampling the image placeholder (its features would be missing in the rescoring);
        # the video placeholder is no different, and the Mirage forward refuses either without its pixels.
        suppressed = set(self.generation_kwargs.get("suppress_tokens") or [])
        config = model.config
        suppressed |= {i for i in (config.image_token_id, config.video_token_id) if i is not None}
        self.generation_kwargs["suppress_tokens"] = sorted(suppressed)
        self.generation_config.suppress_tokens = sorted(suppressed)
        # The chain runs the layers chunk by chunk over a cache; reentrant checkpointing recomputes a chunk without the
        # earlier chunks' graph. Checked after TRL's set-up, which can force reentrant mode (PEFT under ZeRO-3).
        if args.latent_rescoring == "chain" and args.gradient_checkpointing:
            if (args.gradient_checkpointing_kwargs or {}).get("use_reentrant"):
                raise ValueError(
                    "latent_rescoring='chain' needs non-reentrant activation checkpointing (the gradient through the "
                    "latent chain would be lost): set activation_checkpointing_kwargs={'use_reentrant': False}, "
                    "activation_checkpointing=False, or latent_rescoring='replay'"
                )

    @staticmethod
    def _model_type_or_none(path: str) -> str | None:
        try:
            return checkpoint_model_type(path)
        except (OSError, ValueError):
            return None

    # ---- helpers ----------------------------------------------------------------------------------------------------

    def _policy_model(self):
        """The policy as a Mirage model: unwrapped from accelerate and from PEFT."""
        model = self.accelerator.unwrap_model(self.model)
        return model.get_base_model() if isinstance(model, PeftModel) else model

    def _is_reference(self, model) -> bool:
        """Whether a scoring call is for the reference model: the separate one, or the PEFT policy with its adapters
        disabled (or its frozen "ref" adapter active)."""
        if self.ref_model is not None and model is self.ref_model:
            return True
        unwrapped = self.accelerator.unwrap_model(model)
        if isinstance(unwrapped, PeftModel):
            return bool(getattr(unwrapped, "_adapters_disabled", False)) or unwrapped.active_adapter == "ref"
        return False

    def latent_loss_mask(self, completion_ids: list[int]) -> list[int]:
        """1 for every completion token the policy chose, 0 for the latent pads (their inputs are hidden states, not
        sampled tokens) and for a `<|latent_end|>` the end rule forced (after k pads with the `"fixed"` rule, or at
        the `latent_max_tokens` cap)."""
        config = self._policy_model().config
        pad, start, end = config.latent_token_ids
        mask, pads = [], None  # pads: pads so far in the open block, None outside a block
        for token in completion_ids:
            if token == pad:
                mask.append(0)
                pads = None if pads is None else pads + 1
            elif token == end and pads is not None:
                forced = config.latent_end_rule == "fixed" or pads >= config.latent_max_tokens
                mask.append(0 if forced else 1)
                pads = None
            else:
                mask.append(1)
                if token == start:
                    pads = 0
        return mask

    def completion_text(self, completion_ids: list[int]) -> str:
        """The completion as rewards read it: text decoded without special tokens, each latent block (opened by
        `<|latent_start|>`, also one cut off by the length limit) shown as `<output_image>`."""
        pad, start, end = self._policy_model().config.latent_token_ids
        pieces, text = [], []
        for token in completion_ids:
            if token == start:
                pieces += [self._tokenizer.decode(text, skip_special_tokens=True), LATENT_PLACEHOLDER]
                text = []
            elif token not in (pad, end):
                text.append(token)
        pieces.append(self._tokenizer.decode(text, skip_special_tokens=True))
        return "".join(pieces)

    @contextlib.contextmanager
    def _recording_rollouts(self) -> Iterator[dict[str, Any]]:
        """While active, the policy's `generate` returns its sequences as TRL expects and records the per-row latents
        of its `return_dict_in_generate` output (TRL's generation keeps token ids only)."""
        policy = self._policy_model()
        generate = policy.generate
        shadowed = policy.__dict__.get("generate")
        record: dict[str, Any] = {}

        def recording_generate(*args, **kwargs):
            config = kwargs.get("generation_config")
            if config is None:
                kwargs["return_dict_in_generate"] = True
            else:  # transformers deprecates mixing a generation config with generation keyword arguments
                kwargs["generation_config"] = copy.deepcopy(config)
                kwargs["generation_config"].return_dict_in_generate = True
            output = generate(*args, **kwargs)
            record["latents"] = output.latents
            return output.sequences

        policy.generate = recording_generate
        try:
            yield record
        finally:
            if shadowed is None:
                del policy.generate
            else:
                policy.generate = shadowed

    @contextlib.contextmanager
    def _replaying(self, latents: list[torch.Tensor]) -> Iterator[None]:
        """Feed `latents` (one `(n_r, hidden)` tensor per row, in batch order) to the policy backbone's forwards while
        active. TRL scores a batch in consecutive chunks of rows, so each call takes the next rows' latents."""
        backbone = self._policy_model().model
        offset = 0

        def feed(module, args, kwargs):
            nonlocal offset
            input_ids = kwargs.get("input_ids", args[0] if args else None)
            rows = latents[offset : offset + input_ids.shape[0]]
            offset += input_ids.shape[0]
            embeds = module.get_input_embeddings().weight
            kwargs["latent_embeds"] = [row.to(embeds.device, embeds.dtype) for row in rows]
            return args, kwargs

        handle = backbone.register_forward_pre_hook(feed, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
        if offset != len(latents):
            raise RuntimeError(f"replay fed the latents of {offset} rows to a batch of {len(latents)}")

    # ---- TRL hooks --------------------------------------------------------------------------------------------------

    def _generate(self, prompts: list):
        """TRL's generation, plus: the rollouts' latents are recorded, latent positions leave the loss mask (TRL's
        `tool_mask`), and completions show each latent block as `<output_image>` to the rewards."""
        with self._recording_rollouts() as record:
            prompt_ids, completion_ids, tool_mask, completions, *rest = super()._generate(prompts)
        latents = record.get("latents")
        if latents is None or len(latents) != len(completion_ids):
            raise RuntimeError(
                f"Mirage generate recorded latents for {0 if latents is None else len(latents)} rows, but "
                f"{len(completion_ids)} rollouts were generated"
            )
        pad_id = self._policy_model().config.latent_pad_token_id
        for row, (prompt, completion, vectors) in enumerate(zip(prompt_ids, completion_ids, latents)):
            pads = list(prompt).count(pad_id) + list(completion).count(pad_id)
            if pads != vectors.shape[0]:
                raise RuntimeError(f"rollout {row} has {pads} latent pads but {vectors.shape[0]} recorded latents")
        tool_mask = [self.latent_loss_mask(ids) for ids in completion_ids]
        completions = [
            [{**message[0], "content": self.completion_text(ids)}]
            if isinstance(message, list)
            else self.completion_text(ids)
            for message, ids in zip(completions, completion_ids)
        ]
        self._rollout_latents = self._scoring_latents = latents
        return (prompt_ids, completion_ids, tool_mask, completions, *rest)

    def _generate_and_score_completions(self, inputs):
        """TRL's rollout and scoring, plus `latents` in the batch: per row, the vectors fed at its pads (kept aligned
        with the row through TRL's shuffling and splitting, which permute lists with the tensors)."""
        try:
            output = super()._generate_and_score_completions(inputs)
            output["latents"] = self._rollout_latents
        finally:
            self._rollout_latents = self._scoring_latents = None
        return output

    def _compute_loss(self, model, inputs):
        """TRL's loss; the rescoring inside it sees these rows' latents (replay mode feeds them)."""
        if self.args.latent_rescoring == "replay" and inputs.get("latents") is None:
            raise RuntimeError("latent_rescoring='replay' needs the rollouts' latents in the batch ('latents')")
        self._scoring_latents = inputs.get("latents")
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._scoring_latents = None

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, **kwargs
    ):
        """TRL's chunked rescoring. Chain mode (and the reference model in both modes) runs the model as is, which
        fills every pad with the scoring model's own hidden state; replay mode feeds the rollouts' recorded latents.

        The chain runs one chunk per column where some row has a pad, and rollouts open their blocks at different
        columns; the rows are first shifted (more left padding) so that their first blocks share columns, which
        changes no output (positions count real tokens only) and leaves k + 1 chunks for one block per row."""
        latents = self._scoring_latents
        replay = self.args.latent_rescoring == "replay" and latents is not None and not self._is_reference(model)
        if not replay:
            aligned = self._align_first_blocks(input_ids, attention_mask, kwargs)
            if aligned is None:
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size, **kwargs
                )
            shift, input_ids, attention_mask, kwargs = aligned
            widened = logits_to_keep + int(shift.max())
            outputs = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, widened, batch_size, **kwargs
            )
            # Row r's completion sits shift[r] columns further right within the widened window.
            columns = shift.unsqueeze(1) + torch.arange(logits_to_keep, device=shift.device)  # (B, C)
            return tuple(
                None if x is None or x.ndim != 2 else x.gather(1, columns.to(x.device)) for x in outputs[:2]
            ) + (outputs[2],)
        if len(latents) != input_ids.shape[0]:
            raise RuntimeError(f"{len(latents)} rows of latents for a batch of {input_ids.shape[0]} rows")
        with self._replaying(latents):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, **kwargs
            )

    def _align_first_blocks(self, input_ids, attention_mask, kwargs):
        """`(shift (B,), input_ids, attention_mask, kwargs)` with every row moved `shift[r]` columns right so that the
        first latent pads of all rows share a column (per-token inputs such as `mm_token_type_ids` move along); None
        when nothing would move."""
        pad_id = self._policy_model().config.latent_pad_token_id
        batch, width = input_ids.shape
        columns = torch.arange(width, device=input_ids.device).expand(batch, width)
        first = torch.where(input_ids == pad_id, columns, width).amin(dim=1)  # (B,); width: no pad
        has_pad = first < width
        if not bool(has_pad.any()):
            return None
        shift = torch.where(has_pad, first[has_pad].max() - first, 0)
        extra = int(shift.max())
        if extra == 0:
            return None
        target = columns + shift.unsqueeze(1)  # (B, T): new column of every old column

        def moved(tensor, fill):
            out = tensor.new_full((batch, width + extra, *tensor.shape[2:]), fill)
            index = target.view(batch, width, *([1] * (tensor.ndim - 2))).expand_as(tensor)
            return out.scatter(1, index, tensor)

        kwargs = {
            key: moved(value, 0) if key in PER_TOKEN_INPUTS and value is not None else value
            for key, value in kwargs.items()
        }
        return shift, moved(input_ids, self._tokenizer.pad_token_id), moved(attention_mask, 0), kwargs
