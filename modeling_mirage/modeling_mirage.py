"""Mirage: Qwen2.5-VL that reasons with latent visual tokens (arXiv 2506.17218, "Machine Mental Imagery").

Inside a latent block `<|latent_start|> <|latent_pad|> x k <|latent_end|>` the input at every pad position is not a
token embedding but a vector in the LLM's hidden space. Where it comes from, in order of precedence:

1. `latent_embeds` given by the caller (replay: e.g. GRPO rescoring the latents a rollout produced),
2. stage-1 targets from a helper image (`helper_pixel_values`): the frozen vision tower's merged patch sequence,
   trimmed to a multiple of k, split into k contiguous raster chunks, each mean-pooled (teacher forcing),
3. the model's own last hidden state (after the final norm) at the previous position: stage 2 and inference. Pad j
   depends on pad j-1, so the sequence is run in chunks that end right before each pad column, carrying the KV cache
   between chunks: one forward's worth of compute, and gradients flow through the whole chain.

The filling happens in the backbone (`MirageModel`, the class of `model.model`), because TRL's fused LM head calls
`model.base_model(...)` directly. Generation with per-row latent mode lives in the sibling `generation_mirage.py`
(`MirageGenerationMixin`, mixed into `MirageForConditionalGeneration`); one-time conversion from a stock Qwen2.5-VL
checkpoint (`from_base`) is not part of this payload: it lives in the package's `conversion.py`, which only a local
install of the package provides.

The file imports only torch, transformers and its siblings: it travels as Hub remote code.
"""

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2_5_VLPreTrainedModel,
    Qwen2_5_VLTextModel,
)

from .configuration_mirage import MirageConfig
from .generation_mirage import MirageGenerationMixin

# transformers 5.24 renamed the cache argument `past_key_values` -> `cache` (the old name goes away in 5.40). Pass it to
# the stock language model under whichever name the installed version declares, and return it in outputs the same way.
_CACHE_ARG = "cache" if "cache" in inspect.signature(Qwen2_5_VLTextModel.forward).parameters else "past_key_values"
_CACHE_FIELD = "cache" if "cache" in MultimodalBaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

try:  # transformers >= 5 renames Hub checkpoint keys at load time; custom classes must opt in to the stock table.
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )
except ImportError:  # pragma: no cover - older transformers load Hub names through `_checkpoint_conversion_mapping`
    get_checkpoint_conversion_mapping = register_checkpoint_conversion_mapping = None


def _register_conversions() -> None:
    """Give the Mirage classes the stock Qwen2.5-VL key renames, so Qwen2.5-VL and Mirage checkpoints load exactly."""
    if register_checkpoint_conversion_mapping is None:
        return
    for ours, stock in (
        ("MirageForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"),
        ("MirageModel", "Qwen2_5_VLModel"),
    ):
        mapping = get_checkpoint_conversion_mapping(stock)
        if mapping is not None:
            register_checkpoint_conversion_mapping(ours, mapping, overwrite=True)


_register_conversions()


# --------------------------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class MirageModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    """Backbone output plus what the latent chain produced.

    latent_positions (`torch.LongTensor` of shape `(num_pads, 2)`): `(row, position)` of every `<|latent_pad|>` in the
        inputs, row-major (the order every other `latent_*` field uses); positions count cached tokens too.
    latent_inputs (`torch.FloatTensor` of shape `(num_pads, hidden)`): the embedding fed at each pad.
    latent_hidden (`torch.FloatTensor` of shape `(num_pads, hidden)`): the final-norm hidden state at the position
        before each pad, i.e. the model's own prediction of that pad's input (the stage-1 loss compares it with the
        target).
    latent_targets (`torch.FloatTensor` of shape `(num_pads, hidden)`): stage-1 targets from helper images, when given.
    """

    latent_positions: torch.LongTensor | None = None
    latent_inputs: torch.FloatTensor | None = None
    latent_hidden: torch.FloatTensor | None = None
    latent_targets: torch.FloatTensor | None = None


@dataclass
class MirageCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    """Causal LM output plus the latent fields of [`MirageModelOutputWithPast`] and `final_hidden_state`.

    final_hidden_state (`torch.FloatTensor` of shape `(batch, hidden)`): the final-norm hidden state at the last input
        position of every row: what a latent step right after these inputs would be fed.
    """

    latent_positions: torch.LongTensor | None = None
    latent_inputs: torch.FloatTensor | None = None
    latent_hidden: torch.FloatTensor | None = None
    latent_targets: torch.FloatTensor | None = None
    final_hidden_state: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------------------------
# The KV cache used between the chunks of a latent chain when the caller asked for no cache (training)
# --------------------------------------------------------------------------------------------------------------------


class _ChunkCache(DynamicCache):
    """Cache for one chunk of a latent chain: holds the keys/values of the earlier chunks fixed and returns them
    concatenated with the current chunk's, remembering (never appending) the current chunk's entries.

    Because `update` replaces instead of appending, running a layer twice on the same chunk (gradient checkpointing
    recomputes layers during backward) sees exactly the same past; a `DynamicCache` would grow a second time.
    """

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]] | None, past_length: int):
        super().__init__()
        self._past = past
        self._past_length = past_length
        self.new: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.new[layer_idx] = (key_states, value_states)
        if self._past is None:
            return key_states, value_states
        past_k, past_v = self._past[layer_idx]
        return torch.cat([past_k, key_states], dim=-2), torch.cat([past_v, value_states], dim=-2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._past_length

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self._past_length

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self._past_length + query_length, 0

    @property
    def is_compileable(self) -> bool:
        return False

    def extended(self, query_length: int) -> "_ChunkCache":
        """The cache of the next chunk: this chunk's past plus its own entries."""
        layers = sorted(self.new)
        if self._past is None:
            past = [self.new[i] for i in layers]
        else:
            past = [
                (
                    torch.cat([self._past[i][0], self.new[i][0]], dim=-2),
                    torch.cat([self._past[i][1], self.new[i][1]], dim=-2),
                )
                for i in layers
            ]
        return _ChunkCache(past, self._past_length + query_length)


class _CheckpointWithCache:
    """Let gradient-checkpointed decoder layers keep a `_ChunkCache` (they drop any cache by default, which would cut
    every chunk off from the ones before it)."""

    def __init__(self, layers: nn.ModuleList):
        self.layers = layers

    def __enter__(self):
        for layer in self.layers:
            layer._can_checkpoint_with_cache = True

    def __exit__(self, *exc):
        for layer in self.layers:
            layer.__dict__.pop("_can_checkpoint_with_cache", None)


# --------------------------------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------------------------------


class MirageModel(Qwen2_5_VLModel):
    """Qwen2.5-VL backbone whose `<|latent_pad|>` positions are filled with latent vectors (see the module docstring)."""

    config_class = MirageConfig

    # ---- stage-1 targets ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def latent_targets_from_images(
        self, helper_pixel_values: torch.Tensor, helper_image_grid_thw: torch.LongTensor
    ) -> list[torch.Tensor]:
        """k target vectors per helper image, LLM width: `[(k, hidden), ...]`, one entry per image.

        The frozen vision tower (patch merger included) turns each image into a raster sequence of merged patches;
        the sequence is trimmed to a multiple of k, split into k contiguous chunks (stripes of rows, not 2-D tiles)
        and each chunk is mean-pooled. Computed without gradients: targets are constants of the stage-1 loss.
        """
        k = self.config.latent_num_tokens
        features = self.get_image_features(helper_pixel_values, helper_image_grid_thw, return_dict=True).pooler_output
        targets = []
        for index, feature in enumerate(features):  # (n_merged, hidden)
            usable = feature.shape[0] - feature.shape[0] % k
            if usable == 0:
                raise ValueError(
                    f"helper image {index} has {feature.shape[0]} merged patches, fewer than latent_num_tokens={k}; "
                    "use a larger helper image"
                )
            targets.append(feature[:usable].reshape(k, usable // k, -1).mean(dim=1))  # (k, hidden)
        return targets

    # ---- where the latent vectors come from -----------------------------------------------------------------------

    def _latent_blocks(self, row_ids: list[int]) -> list[tuple[int, list[int]]]:
        """`(start column, [pad columns])` of every latent block in one row (a block may be unterminated)."""
        pad, start, _ = self.config.latent_token_ids
        blocks, current = [], None
        for column, token in enumerate(row_ids):
            if token == start:
                current = (column, [])
                blocks.append(current)
            elif token == pad and current is not None:
                current[1].append(column)
            else:  # the end token, or anything else, closes the block
                current = None
        return blocks

    def _teacher_forced_inputs(
        self,
        input_ids: torch.LongTensor,
        pad_mask: torch.Tensor,
        helper_pixel_values: torch.Tensor,
        helper_image_grid_thw: torch.LongTensor,
        helper_image_counts: torch.LongTensor | None,
    ) -> torch.Tensor:
        """Stage-1 targets for every pad, row-major `(num_pads, hidden)`, after checking the blocks match the images."""
        k = self.config.latent_num_tokens
        rows = input_ids.tolist()
        blocks_per_row = [self._latent_blocks(row) for row in rows]
        for r, blocks in enumerate(blocks_per_row):
            for start_col, pads in blocks:
                if len(pads) != k:
                    raise ValueError(
                        f"row {r}: the latent block opened at position {start_col} has {len(pads)} <|latent_pad|> "
                        f"tokens, but teacher forcing with helper images needs exactly latent_num_tokens={k}"
                    )
            stray = int(pad_mask[r].sum()) - sum(len(p) for _, p in blocks)
            if stray:
                raise ValueError(f"row {r}: {stray} <|latent_pad|> token(s) outside any latent block")
        n_images = int(helper_image_grid_thw.shape[0])
        if helper_image_counts is not None:
            counts = [int(c) for c in helper_image_counts.tolist()]
            if len(counts) != len(rows):
                raise ValueError(f"helper_image_counts has {len(counts)} entries for a batch of {len(rows)} rows")
            if sum(counts) != n_images:
                raise ValueError(f"helper_image_counts sums to {sum(counts)} but {n_images} helper images were given")
            for r, (count, blocks) in enumerate(zip(counts, blocks_per_row)):
                if count and not blocks:
                    raise ValueError(f"row {r}: {count} helper image(s) given but the row has no latent block")
                if count != len(blocks):
                    raise ValueError(f"row {r}: {count} helper image(s) given for {len(blocks)} latent block(s)")
        else:
            n_blocks = sum(len(b) for b in blocks_per_row)
            if n_images != n_blocks:
                empty = [r for r, b in enumerate(blocks_per_row) if not b]
                where = f" (rows without a block: {empty})" if empty and n_images > n_blocks else ""
                raise ValueError(
                    f"{n_images} helper image(s) given for {n_blocks} latent block(s) in the batch{where}; "
                    "pass one helper image per block, in row order"
                )
        targets = self.latent_targets_from_images(helper_pixel_values, helper_image_grid_thw)
        if not targets:
            return self.get_input_embeddings().weight.new_zeros(0, self.config.text_config.hidden_size)
        return torch.cat(targets, dim=0)  # blocks are consumed in row-major order, pads likewise

    def _replayed_inputs(self, latent_embeds, pad_mask: torch.Tensor, hidden_size: int) -> torch.Tensor:
        """Caller-given latents as a row-major `(num_pads, hidden)` tensor, after checking count and width."""
        counts = pad_mask.sum(dim=1).tolist()
        if isinstance(latent_embeds, (list, tuple)):
            if len(latent_embeds) != len(counts):
                raise ValueError(f"latent_embeds has {len(latent_embeds)} rows for a batch of {len(counts)} rows")
            for r, (row, count) in enumerate(zip(latent_embeds, counts)):
                if row.ndim != 2 or row.shape[0] != count or row.shape[1] != hidden_size:
                    raise ValueError(
                        f"row {r}: latent_embeds has shape {tuple(row.shape)} but the row has {count} "
                        f"<|latent_pad|> token(s) and the model width is {hidden_size}; expected ({count}, {hidden_size})"
                    )
            flat = torch.cat(list(latent_embeds), dim=0) if latent_embeds else None
        else:
            flat = latent_embeds
        total = int(sum(counts))
        if flat is None or flat.ndim != 2 or flat.shape[0] != total or flat.shape[1] != hidden_size:
            shape = None if flat is None else tuple(flat.shape)
            raise ValueError(
                f"latent_embeds has shape {shape} but the batch has {total} <|latent_pad|> token(s) and the model width "
                f"is {hidden_size}; expected ({total}, {hidden_size}) or a list of per-row tensors"
            )
        return flat

    # ---- positions ------------------------------------------------------------------------------------------------

    def mm_token_type_ids(self, input_ids: torch.LongTensor) -> torch.IntTensor:
        """`(B, T)` modality of every token as Qwen2.5-VL's `get_rope_index` reads it: 0 text, 1 image placeholder,
        2 video placeholder. What the processor returns with `return_mm_token_type_ids=True`, derived from the ids, so
        that inputs without it get the same 3-D vision positions in `forward` and in `generate`."""
        image = (input_ids == self.config.image_token_id).int()
        return image + 2 * (input_ids == self.config.video_token_id).int()

    def _position_ids(
        self,
        input_ids,
        inputs_embeds,
        attention_mask,
        mm_token_type_ids,
        image_grid_thw,
        video_grid_thw,
        second_per_grid_ts,
        past_length: int,
    ) -> torch.Tensor:
        """`(3, batch, seq)` rotary positions: Qwen2.5-VL's 3-D positions for vision tokens, 1-D text positions for
        everything else (latent pads included), counted over real tokens only so padding never shifts them."""
        batch, seq = inputs_embeds.shape[:2]
        has_vision = image_grid_thw is not None or video_grid_thw is not None
        if past_length == 0 and input_ids is not None and has_vision:
            if mm_token_type_ids is None:
                mm_token_type_ids = self.mm_token_type_ids(input_ids)
            position_ids, self.rope_deltas = self.get_rope_index(
                input_ids,
                mm_token_type_ids=mm_token_type_ids,
                image_grid_thw=image_grid_thw,
                video_grid_thw=video_grid_thw,
                second_per_grid_ts=second_per_grid_ts,
                attention_mask=attention_mask if attention_mask is not None and attention_mask.ndim == 2 else None,
            )
            return position_ids
        if attention_mask is not None and attention_mask.ndim == 2:
            text = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -seq:]
        else:
            text = torch.arange(past_length, past_length + seq, device=inputs_embeds.device).expand(batch, seq)
        if past_length > 0 and self.rope_deltas is not None and self.rope_deltas.shape[0] in (1, batch):
            text = text + self.rope_deltas.to(text.device)
        return text.unsqueeze(0).expand(3, batch, seq)

    # ---- forward --------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        mm_encoder_outputs: dict | None = None,
        latent_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        helper_pixel_values: torch.Tensor | None = None,
        helper_image_grid_thw: torch.LongTensor | None = None,
        helper_image_counts: torch.LongTensor | None = None,
        latent_prev_hidden: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> MirageModelOutputWithPast:
        r"""
        Runs the Qwen2.5-VL backbone with every `<|latent_pad|>` input filled by a latent vector.

        latent_embeds (`torch.Tensor` of shape `(num_pads, hidden)` or a list of per-row `(n_r, hidden)` tensors):
            Replay: the vectors to feed at the pads, in order (e.g. `generate(...).latents`).
        helper_pixel_values, helper_image_grid_thw (*optional*):
            Stage 1: helper images (processed like `pixel_values`), one per latent block in row-major order; their
            chunk means are teacher-forced into the pads and returned as `latent_targets`.
        helper_image_counts (`torch.LongTensor` of shape `(batch,)`, *optional*):
            Helper images per row, to check them against the row's latent blocks.
        latent_prev_hidden (`torch.Tensor` of shape `(batch, hidden)`, *optional*):
            The hidden state before the first input position (cached decoding), for a pad in the first column.
        """
        cache = cache if cache is not None else past_key_values
        if (pixel_values is not None or pixel_values_videos is not None) and mm_encoder_outputs:
            raise ValueError("pass pixel_values/pixel_values_videos or mm_encoder_outputs, not both")
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            self._check_vision_inputs(input_ids, pixel_values, pixel_values_videos, mm_encoder_outputs)
            inputs_embeds = self.get_input_embeddings()(input_ids)  # (B, T, D)

        # Vision tokens: the stock Qwen2.5-VL scatter of image/video features into their placeholder positions.
        mm_encoder_outputs = dict(mm_encoder_outputs or {})
        if mm_encoder_outputs.get("image") is None and pixel_values is not None:
            mm_encoder_outputs["image"] = self.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        if mm_encoder_outputs.get("video") is None and pixel_values_videos is not None:
            mm_encoder_outputs["video"] = self.get_video_features(
                pixel_values_videos, video_grid_thw, return_dict=True
            )
        if mm_encoder_outputs.get("image") is not None:
            image_embeds = torch.cat(mm_encoder_outputs["image"].pooler_output, dim=0).to(
                inputs_embeds.device, inputs_embeds.dtype
            )
            image_mask, _ = self.get_placeholder_mask(
                input_ids, inputs_embeds=inputs_embeds, image_features=image_embeds
            )
            inputs_embeds = inputs_embeds.masked_scatter(image_mask, image_embeds)
        if mm_encoder_outputs.get("video") is not None:
            video_embeds = torch.cat(mm_encoder_outputs["video"].pooler_output, dim=0).to(
                inputs_embeds.device, inputs_embeds.dtype
            )
            _, video_mask = self.get_placeholder_mask(
                input_ids, inputs_embeds=inputs_embeds, video_features=video_embeds
            )
            inputs_embeds = inputs_embeds.masked_scatter(video_mask, video_embeds)

        past_length = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = self._position_ids(
                input_ids,
                inputs_embeds,
                attention_mask,
                mm_token_type_ids,
                image_grid_thw,
                video_grid_thw,
                second_per_grid_ts,
                past_length,
            )

        hidden_size = inputs_embeds.shape[-1]
        # Without input_ids the caller has placed every input itself (generate's decoding steps do): nothing to fill.
        if input_ids is None and (latent_embeds is not None or helper_pixel_values is not None):
            raise ValueError("latent_embeds and helper images need input_ids to locate the <|latent_pad|> positions")
        pad_mask = input_ids == self.config.latent_pad_token_id if input_ids is not None else None
        latent_targets = None
        language_kwargs = dict(kwargs, attention_mask=attention_mask, use_cache=use_cache)

        if latent_embeds is None and helper_pixel_values is None and (pad_mask is None or not bool(pad_mask.any())):
            # No latent position here (most decoding steps): exactly the stock Qwen2.5-VL forward.
            outputs = self.language_model(
                inputs_embeds=inputs_embeds, position_ids=position_ids, **{_CACHE_ARG: cache}, **language_kwargs
            )
            empty = inputs_embeds.new_zeros(0, hidden_size)
            return MirageModelOutputWithPast(
                last_hidden_state=outputs.last_hidden_state,
                hidden_states=outputs.hidden_states,
                attentions=outputs.attentions,
                image_outputs=mm_encoder_outputs.get("image"),
                video_outputs=mm_encoder_outputs.get("video"),
                latent_positions=torch.zeros((0, 2), dtype=torch.long, device=inputs_embeds.device),
                latent_inputs=empty,
                latent_hidden=empty,
                **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD, None)},
            )

        latent_positions = pad_mask.nonzero()  # (N, 2) row-major
        if latent_embeds is not None or helper_pixel_values is not None:
            # Replay or teacher forcing: every pad's input is known up front, so one ordinary forward does it.
            if latent_embeds is not None:
                fills = self._replayed_inputs(latent_embeds, pad_mask, hidden_size)
            else:
                if helper_image_grid_thw is None:
                    raise ValueError("helper_pixel_values needs helper_image_grid_thw")
                fills = latent_targets = self._teacher_forced_inputs(
                    input_ids, pad_mask, helper_pixel_values, helper_image_grid_thw, helper_image_counts
                )
            fills = fills.to(inputs_embeds.device, inputs_embeds.dtype)
            inputs_embeds = inputs_embeds.masked_scatter(pad_mask.unsqueeze(-1), fills)
            outputs = self.language_model(
                inputs_embeds=inputs_embeds, position_ids=position_ids, **{_CACHE_ARG: cache}, **language_kwargs
            )
            hidden = outputs.last_hidden_state  # (B, T, D)
            latent_inputs = fills
            out_cache = getattr(outputs, _CACHE_FIELD, None)
        else:
            # Self-filling chain (stage 2, inference): each pad takes the hidden state one position earlier.
            hidden, latent_inputs, out_cache, outputs = self._run_latent_chain(
                inputs_embeds,
                pad_mask,
                latent_positions,
                position_ids,
                cache,
                use_cache,
                latent_prev_hidden,
                language_kwargs,
            )

        latent_hidden = self._hidden_before_pads(hidden, latent_positions, latent_prev_hidden)
        latent_positions = latent_positions + torch.tensor([0, past_length], device=latent_positions.device)
        return MirageModelOutputWithPast(
            last_hidden_state=hidden,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=mm_encoder_outputs.get("image"),
            video_outputs=mm_encoder_outputs.get("video"),
            latent_positions=latent_positions,
            latent_inputs=latent_inputs,
            latent_hidden=latent_hidden,
            latent_targets=latent_targets,
            **{_CACHE_FIELD: out_cache},
        )

    def _check_vision_inputs(self, input_ids, pixel_values, pixel_values_videos, mm_encoder_outputs) -> None:
        """Refuse image/video placeholders with nothing to fill them: they would run as ordinary token embeddings and
        every later logit would silently differ from the model's. Cached decoding steps hold no placeholders (the
        prompt's are in the cache; `generate` feeds them as embeddings anyway), so they pass."""
        encoded = dict(mm_encoder_outputs or {})
        for kind, token_id, pixels, name in (
            ("image", self.config.image_token_id, pixel_values, "pixel_values and image_grid_thw"),
            ("video", self.config.video_token_id, pixel_values_videos, "pixel_values_videos and video_grid_thw"),
        ):
            if pixels is not None or encoded.get(kind) is not None:
                continue
            placeholders = input_ids == token_id  # (B, T)
            if bool(placeholders.any()):
                rows = placeholders.any(dim=1).nonzero().flatten().tolist()
                raise ValueError(
                    f"input_ids rows {rows} hold {int(placeholders.sum())} {kind} placeholder token(s) (id {token_id}) "
                    f"but no {kind} was given: pass the {name} the processor returned for these inputs (or "
                    f"mm_encoder_outputs['{kind}']), e.g. model(input_ids=out.sequences, latent_embeds=out.latents, "
                    "**{k: inputs[k] for k in ('pixel_values', 'image_grid_thw')})"
                )

    @staticmethod
    def _hidden_before_pads(hidden, latent_positions, latent_prev_hidden) -> torch.Tensor:
        """`(num_pads, hidden)`: the hidden state at the position before each pad (from `latent_prev_hidden` for a pad
        in the first column of a cached call)."""
        rows, cols = latent_positions[:, 0], latent_positions[:, 1]
        before = hidden[rows, (cols - 1).clamp(min=0)]
        if latent_prev_hidden is not None and bool((cols == 0).any()):
            before = torch.where((cols == 0).unsqueeze(-1), latent_prev_hidden[rows].to(before.dtype), before)
        return before

    def _check_checkpointing_keeps_the_chain(self) -> None:
        """Reentrant gradient checkpointing sees only a layer's tensor arguments, so the gradient through the keys and
        values of earlier chunks (held in the cache object) would be lost: refuse it while gradients are needed."""
        layer = self.language_model.layers[0]
        if not (torch.is_grad_enabled() and self.training and getattr(layer, "gradient_checkpointing", False)):
            return
        checkpoint_func = getattr(layer, "_gradient_checkpointing_func", None)
        if getattr(checkpoint_func, "keywords", {}).get("use_reentrant", False):
            raise ValueError(
                "the stage-2 latent chain needs non-reentrant gradient checkpointing (reentrant checkpointing drops "
                "the gradient through earlier chunks): use gradient_checkpointing_kwargs={'use_reentrant': False}"
            )

    def _run_latent_chain(
        self,
        inputs_embeds,
        pad_mask,
        latent_positions,
        position_ids,
        cache,
        use_cache,
        latent_prev_hidden,
        language_kwargs,
    ):
        """Run the language model so that every pad's input is the final hidden state one position earlier.

        The sequence is split at every column where some row has a pad; each chunk starts with such a column, whose
        pad rows take the last hidden state of the chunk before. The chunks share a KV cache: the caller's (generation)
        or, when the caller wants none, a `_ChunkCache` that gradient checkpointing can recompute through.
        Returns `(hidden (B, T, D), latent_inputs (N, D) in the order of latent_positions, cache, last output)`.
        """
        seq = inputs_embeds.shape[1]
        pad_columns = pad_mask.any(dim=0).nonzero().flatten().tolist()
        column_fills: dict[int, torch.Tensor] = {}  # pad column -> (B, D) vectors its pad rows were fed

        def fill_first_column(chunk, previous_hidden, column):
            rows = pad_mask[:, column : column + 1]  # (B, 1)
            first = torch.where(rows, previous_hidden.to(chunk.dtype), chunk[:, 0])  # (B, D)
            column_fills[column] = first
            return first.unsqueeze(1) if chunk.shape[1] == 1 else torch.cat([first.unsqueeze(1), chunk[:, 1:]], dim=1)

        if pad_columns[0] == 0:
            # A pad in the first column continues a chain from an earlier call (cached decoding).
            if latent_prev_hidden is None:
                rows = pad_mask[:, 0].nonzero().flatten().tolist()
                raise ValueError(
                    f"rows {rows}: a <|latent_pad|> in the first input position needs the hidden state before it; pass "
                    "latent_prev_hidden (as generate does) or latent_embeds"
                )
            inputs_embeds = fill_first_column(inputs_embeds, latent_prev_hidden, 0)

        keep_cache = cache is not None or bool(use_cache)
        inner_columns = [c for c in pad_columns if c > 0]
        if inner_columns and not keep_cache:
            self._check_checkpointing_keeps_the_chain()
        if not inner_columns:
            outputs = self.language_model(
                inputs_embeds=inputs_embeds, position_ids=position_ids, **{_CACHE_ARG: cache}, **language_kwargs
            )
            hidden, out_cache = outputs.last_hidden_state, getattr(outputs, _CACHE_FIELD, None)
        else:
            attention_mask = language_kwargs.pop("attention_mask")
            past_length = cache.get_seq_length() if cache is not None else 0
            if keep_cache and cache is None:
                cache = DynamicCache(config=self.config.text_config)
            chunk_cache = cache if keep_cache else _ChunkCache(None, 0)
            bounds = [0, *inner_columns, seq]
            hidden_chunks: list[torch.Tensor] = []
            with _CheckpointWithCache(self.language_model.layers):
                for s, e in zip(bounds[:-1], bounds[1:]):
                    chunk = inputs_embeds[:, s:e]
                    if s > 0:  # s is a pad column: its pad rows take the hidden state at s - 1
                        chunk = fill_first_column(chunk, hidden_chunks[-1][:, -1], s)
                    mask = attention_mask
                    if mask is not None and mask.ndim == 2:
                        mask = mask[:, : past_length + e]
                    outputs = self.language_model(
                        inputs_embeds=chunk,
                        attention_mask=mask,
                        position_ids=position_ids[..., s:e],
                        **{_CACHE_ARG: chunk_cache},
                        **language_kwargs,
                    )
                    hidden_chunks.append(outputs.last_hidden_state)
                    if not keep_cache:
                        chunk_cache = chunk_cache.extended(e - s)
            hidden = torch.cat(hidden_chunks, dim=1)
            out_cache = cache if keep_cache else None

        # Gather the fed vectors in the row-major order of latent_positions.
        columns = sorted(column_fills)
        stacked = torch.stack([column_fills[c] for c in columns])  # (C, B, D)
        index = torch.searchsorted(torch.tensor(columns, device=pad_mask.device), latent_positions[:, 1])
        return hidden, stacked[index, latent_positions[:, 0]], out_cache, outputs


# --------------------------------------------------------------------------------------------------------------------
# Model with LM head
# --------------------------------------------------------------------------------------------------------------------


class MirageForConditionalGeneration(MirageGenerationMixin, Qwen2_5_VLForConditionalGeneration):
    """Mirage: Qwen2.5-VL with latent visual tokens. Load with `AutoModel.from_pretrained(..., trust_remote_code=True)`
    or, with the `mirage-vlm` package installed, build from a Qwen2.5-VL checkpoint with
    `MirageForConditionalGeneration.from_base` (added by `modeling_mirage/conversion.py`, outside this payload).
    `generate` and its hooks come from [`MirageGenerationMixin`]."""

    config_class = MirageConfig

    def __init__(self, config: MirageConfig):
        # The stock __init__ would build a Qwen2_5_VLModel only to replace it: build the Mirage backbone directly.
        Qwen2_5_VLPreTrainedModel.__init__(self, config)
        self.model = MirageModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    # ---- forward --------------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        latent_embeds: torch.Tensor | list[torch.Tensor] | None = None,
        helper_pixel_values: torch.Tensor | None = None,
        helper_image_grid_thw: torch.LongTensor | None = None,
        helper_image_counts: torch.LongTensor | None = None,
        latent_prev_hidden: torch.Tensor | None = None,
        past_key_values=None,
        **kwargs,
    ) -> MirageCausalLMOutputWithPast:
        r"""
        Qwen2.5-VL forward with latent pads filled (see [`MirageModel.forward`] for the `latent_*` / `helper_*`
        arguments). `labels` at `<|latent_pad|>` positions are ignored: latent positions carry no token loss.
        """
        return_dict = kwargs.pop("return_dict", None) is not False  # None (as PEFT passes it) means the default: True
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache if cache is not None else past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            second_per_grid_ts=second_per_grid_ts,
            mm_encoder_outputs=mm_encoder_outputs,
            latent_embeds=latent_embeds,
            helper_pixel_values=helper_pixel_values,
            helper_image_grid_thw=helper_image_grid_thw,
            helper_image_counts=helper_image_counts,
            latent_prev_hidden=latent_prev_hidden,
            **kwargs,
        )
        hidden = outputs.last_hidden_state  # (B, T, D)
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, slice_indices, :])

        loss = None
        if labels is not None:
            if input_ids is not None:
                labels = labels.masked_fill(input_ids == self.config.latent_pad_token_id, -100)
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )

        result = MirageCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            video_outputs=outputs.video_outputs,
            latent_positions=outputs.latent_positions,
            latent_inputs=outputs.latent_inputs,
            latent_hidden=outputs.latent_hidden,
            latent_targets=outputs.latent_targets,
            final_hidden_state=hidden[:, -1].clone(),  # a copy, so the (B, T, D) prefill states can be freed
            **{_CACHE_FIELD: getattr(outputs, _CACHE_FIELD)},
        )
        return result if return_dict else result.to_tuple()


# `generate` inspects the forward signature of registered (remote-code) models at every step; precompute it.
MirageForConditionalGeneration.forward.__signature__ = inspect.signature(MirageForConditionalGeneration.forward)

MirageConfig.register_for_auto_class("AutoConfig")
MirageForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = ["MirageForConditionalGeneration", "MirageModel"]
