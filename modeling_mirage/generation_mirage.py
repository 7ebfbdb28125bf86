"""Generation with latent visual tokens: per-row latent mode inside `GenerationMixin.generate`.

Every row decodes text until it produces `<|latent_start|>`; then each step feeds the row's own last hidden state
(recorded as `<|latent_pad|>`) until `<|latent_end|>`, by the rule `config.latent_end_rule` names. The pieces:

- [`LatentModeLogitsProcessor`]: which token a row may produce next, given where it stands in a block;
- [`MirageGenerationMixin`]: the `generate` override and the `GenerationMixin` hooks that feed hidden states at pad
  steps, mixed into `MirageForConditionalGeneration` (whose `model` is a `MirageModel`);
- [`MirageGenerateOutput`]: the usual output plus `latents`, the vectors fed at every pad, which `forward` replays.

A sibling of `modeling_mirage.py`, which imports it: it travels with the model as Hub remote code and imports only
torch, transformers and the standard library.
"""

import inspect
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList
from transformers.generation.logits_process import LogitNormalization
from transformers.generation.utils import GenerateDecoderOnlyOutput

# --------------------------------------------------------------------------------------------------------------------
# Which token comes next in and around a latent block
# --------------------------------------------------------------------------------------------------------------------


class LatentModeLogitsProcessor(LogitsProcessor):
    """Enforces the latent block protocol row by row during generation.

    A row is in latent mode when its last `<|latent_start|>` has no `<|latent_end|>` after it. In latent mode the next
    token is forced to `<|latent_pad|>` until the block has `num_tokens` pads, then to `<|latent_end|>` (rule
    `"fixed"`); with rule `"predicted"` the model chooses between pad and end until `max_tokens` pads; with rule
    `"official"` (how the official test script decodes) the model picks any token, `<|latent_end|>` ends the block and
    every other token is recorded as a pad, until `max_tokens` pads. Outside latent mode pads and ends are never
    produced.

    This processor runs with the other logits processors, before sampling's warpers (temperature, top-k, top-p).
    Rule `"official"` needs a second stage after the warpers, [`late_stage`], which `generate` adds itself; a custom
    decoding loop must run it last.
    """

    def __init__(self, pad_id: int, start_id: int, end_id: int, num_tokens: int, max_tokens: int, rule: str = "fixed"):
        self.pad_id, self.start_id, self.end_id = pad_id, start_id, end_id
        self.num_tokens, self.max_tokens, self.rule = num_tokens, max_tokens, rule
        self._state: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (length, in_block, pads) of the last call
        self._ids: dict[torch.device, torch.Tensor] = {}

    def latent_ids(self, device: torch.device) -> torch.Tensor:
        """`[pad_id, end_id]` on `device`, made once: building it from a Python list at every step would copy it from
        the host and, on a GPU, wait for the device."""
        ids = self._ids.get(device)
        if ids is None:
            ids = self._ids[device] = torch.tensor([self.pad_id, self.end_id], device=device)
        return ids

    def block_state(self, input_ids: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`(in_block (B,), pads_so_far (B,))` for the last position of every row.

        Updated from the newest token when called on the sequence one token longer than last time (every decoding
        step), kept when called again on a sequence of the same length (the late stage), recomputed otherwise.
        """
        batch, seq = input_ids.shape
        state = self._state
        if state is not None and state[0] == seq and state[1].shape[0] == batch:  # asked again at the same step
            return state[1], state[2]
        if state is not None and state[0] == seq - 1 and state[1].shape[0] == batch:
            last = input_ids[:, -1]
            opened = last == self.start_id
            in_block = opened | (state[1] & (last != self.end_id))
            pads = torch.where(opened, 0, state[2] + (last == self.pad_id).long())
        else:
            columns = torch.arange(seq, device=input_ids.device).expand_as(input_ids)
            last_start = torch.where(input_ids == self.start_id, columns, -1).amax(dim=1)
            last_end = torch.where(input_ids == self.end_id, columns, -1).amax(dim=1)
            in_block = last_start > last_end
            pads = ((input_ids == self.pad_id) & (columns > last_start.unsqueeze(1))).sum(dim=1)
        pads = torch.where(in_block, pads, 0)
        self._state = (seq, in_block, pads)
        return in_block, pads

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        in_block, pads = self.block_state(input_ids)
        neg = float("-inf")
        latent_ids = self.latent_ids(scores.device)
        outside = scores.index_fill(1, latent_ids, neg)  # a copy: the caller keeps the raw logits
        if scores.is_cpu and not bool(in_block.any()):  # common case; asking is free on the CPU only
            return outside
        forced_end = pads >= self.cap
        forced = torch.full_like(scores, neg)
        forced_token = torch.where(forced_end, self.end_id, self.pad_id)
        forced.scatter_(1, forced_token.unsqueeze(1), 0.0)
        if self.rule == "predicted":
            # Free choice between another pad and the end (earlier warpers may have pushed both to -inf: then pad).
            pad_and_end = scores.index_select(1, latent_ids)  # (B, 2)
            choice = torch.full_like(scores, neg).index_copy_(1, latent_ids, pad_and_end)
            both_masked = (pad_and_end <= neg).all(dim=1, keepdim=True)
            choice = torch.where(both_masked, forced, choice)
            forced = torch.where(forced_end.unsqueeze(1), forced, choice)
        elif self.rule == "official":
            # Below the cap every token stays possible: the late stage maps the choice to pad or end after the warpers.
            forced = torch.where(forced_end.unsqueeze(1), forced, scores)
        return torch.where(in_block.unsqueeze(1), forced, outside)

    @property
    def cap(self) -> int:
        """Pads after which a block is closed by force."""
        return self.num_tokens if self.rule == "fixed" else self.max_tokens

    def late_stage(self, do_sample: bool) -> "LogitsProcessor | None":
        """The processor to run after sampling's warpers, or `None` when the rule needs none (see the class doc)."""
        return _OfficialPadChoice(self, do_sample) if self.rule == "official" else None


# `LogitsProcessorList` inspects every processor's signature at every step; a precomputed one makes that a lookup.
LatentModeLogitsProcessor.__call__.__signature__ = inspect.signature(LatentModeLogitsProcessor.__call__)


class _OfficialPadChoice(LogitsProcessor):
    """Second stage of rule `"official"`: in a block below the cap, the next token is `<|latent_end|>` exactly when the
    official decoder would pick the end among all tokens, and `<|latent_pad|>` otherwise.

    Runs after the warpers, on the distribution the official decoder samples from: the pad takes the score of every
    token but the end together (their log-sum-exp when sampling, so P(pad) = 1 - P(end); their maximum when greedy, so
    the end wins exactly when it is the arg-max).
    """

    def __init__(self, latent: LatentModeLogitsProcessor, do_sample: bool):
        self.latent, self.do_sample = latent, do_sample

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        in_block, pads = self.latent.block_state(input_ids)  # (B,), (B,): computed by the first stage at this step
        free = in_block & (pads < self.latent.cap)
        pad_and_end = self.latent.latent_ids(scores.device)  # [pad_id, end_id]
        others = scores.index_fill(1, pad_and_end[1:], float("-inf"))
        pad_score = others.logsumexp(dim=1) if self.do_sample else others.amax(dim=1)  # (B,)
        chosen = torch.stack([pad_score, scores[:, self.latent.end_id]], dim=1)  # (B, 2)
        choice = torch.full_like(scores, float("-inf")).index_copy_(1, pad_and_end, chosen)
        return torch.where(free.unsqueeze(1), choice, scores)


_OfficialPadChoice.__call__.__signature__ = inspect.signature(_OfficialPadChoice.__call__)


# --------------------------------------------------------------------------------------------------------------------
# What generation fed at every pad
# --------------------------------------------------------------------------------------------------------------------


class _LatentTrace:
    """What `generate` records per row: the latent vector fed at each pad position."""

    def __init__(self):
        self.rows: list[dict[int, torch.Tensor]] | None = None
        self.hidden_by_length: dict[int, torch.Tensor] = {}
        self.steps: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # decoding steps: (position, is_pad, vectors)

    def record(self, outputs, processed_length: int) -> None:
        """Keep the vectors a forward fed at pads (by absolute position, so a forward without a cache, which refeeds
        the whole sequence, records nothing twice) and the hidden state a pad chosen next would be fed."""
        hidden = outputs.final_hidden_state  # (B, D)
        if self.rows is None:
            self.rows = [{} for _ in range(hidden.shape[0])]
        if outputs.latent_positions.shape[0]:  # a shape check: no device synchronisation on decoding steps
            for (row, position), vector in zip(outputs.latent_positions.tolist(), outputs.latent_inputs.detach()):
                self.rows[row].setdefault(position, vector)
        self.hidden_by_length[processed_length] = hidden.detach()
        for length in [n for n in self.hidden_by_length if n < processed_length - 4]:
            del self.hidden_by_length[length]

    def record_step(self, position: int, is_pad: torch.Tensor, vectors: torch.Tensor) -> None:
        """A decoding step fed `vectors` (B, D) to the rows where `is_pad` (B,) at `position`; read back at the end,
        so that decoding never waits for the device to say which rows were in latent mode."""
        self.steps.append((position, is_pad, vectors.detach()))

    def _resolve_steps(self) -> None:
        for position, is_pad, vectors in self.steps:
            for row in is_pad.nonzero().flatten().tolist():
                self.rows[row].setdefault(position, vectors[row])
        self.steps = []

    def per_row(self, sequences: torch.LongTensor, pad_id: int, hidden_size: int, dtype) -> list[torch.Tensor]:
        """Per-row `(n_r, hidden)` tensors for the pads of `sequences`, in order. A pad chosen at the last step was
        never fed; its vector is the hidden state of the step that chose it."""
        self._resolve_steps()
        latents = []
        for row, ids in enumerate(sequences):
            vectors = []
            for position in (ids == pad_id).nonzero().flatten().tolist():
                vector = self.rows[row].get(position) if self.rows is not None else None
                if vector is None:
                    if position not in self.hidden_by_length:
                        raise RuntimeError(f"row {row}: no latent vector recorded for the pad at position {position}")
                    vector = self.hidden_by_length[position][row]
                vectors.append(vector)
            latents.append(torch.stack(vectors) if vectors else sequences.new_zeros((0, hidden_size), dtype=dtype))
        return latents


def _latent_slots(input_ids: torch.LongTensor, pad_id: int, start_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`(block (B,), pad (B,))` of each row's newest token: the index of its latent block (every block in the row
    counted) and of the pad within the block; meaningful for rows whose newest token is a pad. Device ops only."""
    starts = input_ids == start_id
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    last_start = torch.where(starts, columns, -1).amax(dim=1, keepdim=True)
    pads = ((input_ids == pad_id) & (columns > last_start)).sum(dim=1)
    return (starts.sum(dim=1) - 1).clamp(min=0), (pads - 1).clamp(min=0)


@dataclass
class MirageGenerateOutput(GenerateDecoderOnlyOutput):
    """`GenerateDecoderOnlyOutput` plus `latents`: per row, the `(n_r, hidden)` vectors fed at its latent pads."""

    latents: list[torch.Tensor] | None = None


# --------------------------------------------------------------------------------------------------------------------
# The generate override and its hooks
# --------------------------------------------------------------------------------------------------------------------


class MirageGenerationMixin:
    """Per-row latent mode for `GenerationMixin.generate`; mixed in before `Qwen2_5_VLForConditionalGeneration`, so
    every method here extends the stock one through `super()`. Needs `self.model` to be a `MirageModel` and `forward`
    to return `final_hidden_state`, `latent_positions` and `latent_inputs`."""

    _latent_trace: "_LatentTrace | None" = None  # set for the duration of one `generate` call
    _latent_source = None  # a caller's `latent_source`, for the duration of one `generate` call

    def latent_logits_processor(self) -> LatentModeLogitsProcessor:
        """The processor `generate` adds to enforce latent blocks (exposed for custom decoding loops; with rule
        `"official"` such a loop must also run its `late_stage` after any warpers)."""
        c = self.config
        c.check_latent_fields()  # the fields may have been set after loading, e.g. `config.latent_end_rule = ...`
        return LatentModeLogitsProcessor(
            c.latent_pad_token_id,
            c.latent_start_token_id,
            c.latent_end_token_id,
            c.latent_num_tokens,
            c.latent_max_tokens,
            c.latent_end_rule,
        )

    def generate(self, inputs=None, generation_config=None, logits_processor=None, latent_source=None, **kwargs):
        """`GenerationMixin.generate` with per-row latent mode.

        Every row decodes text until it produces `<|latent_start|>`; from then on each step feeds the row's own last
        hidden state and records `<|latent_pad|>`, until `<|latent_end|>` (after `latent_num_tokens` pads, or as the
        model chooses with `config.latent_end_rule="predicted"` or `"official"`). Rows enter and leave latent mode
        independently and the KV cache is used throughout. Greedy and sampling decoding, logits processors,
        stopping criteria, streamers, `num_return_sequences` and `return_dict_in_generate` (scores, logits) all work;
        with `return_dict_in_generate=True` the output also has `latents`: per row, the `(n_r, hidden)` vectors fed at
        that row's pad positions, prompt included, which `forward(sequences, latent_embeds=latents)` (with the same
        `pixel_values` / `image_grid_thw` and attention mask) replays exactly. Vision tokens get Qwen2.5-VL's 3-D
        rotary positions whether or not `mm_token_type_ids` is passed, as in `forward`. Beam search,
        assisted/speculative decoding and prompt lookup are not supported (a `ValueError` says so).

        `latent_source` (optional) changes what is fed at the pads chosen during decoding, e.g. to test whether the
        answer depends on the latents: a callable `f(hidden, block, pad) -> vectors`, called at every decoding step
        with `hidden` (B, D) the states the model would feed, `block` (B,) the index of each row's current latent
        block (every block in the row counted, prompt included) and `pad` (B,) the index of the pad within it; it
        returns the (B, D) vectors to feed (only rows whose new token is a pad use theirs). `latents` then holds
        what was fed, so replay stays exact. Pads in the prompt are filled by the model's own chain as usual, and a
        pad chosen at the very last step, never fed, reports the model's own hidden state.
        """
        config = generation_config if generation_config is not None else self.generation_config
        for name, unsupported in (
            ("num_beams", lambda v: v is not None and v > 1),
            ("assistant_model", lambda v: v is not None),
            ("prompt_lookup_num_tokens", lambda v: v is not None),
        ):
            value = kwargs.get(name, getattr(config, name, None))
            if unsupported(value):
                raise ValueError(
                    f"Mirage generation does not support {name}={value!r}: latent steps feed hidden states, which "
                    "beam search and assisted decoding cannot reorder or verify; use greedy or sampling"
                )
        processors = LogitsProcessorList([self.latent_logits_processor()])
        if logits_processor is not None:
            processors.extend(logits_processor)
        self._latent_trace, self._latent_source = _LatentTrace(), latent_source
        try:
            output = super().generate(
                inputs, generation_config=generation_config, logits_processor=processors, **kwargs
            )
            if not isinstance(output, torch.Tensor):
                latents = self._latent_trace.per_row(
                    output.sequences, self.config.latent_pad_token_id, self.config.text_config.hidden_size, self.dtype
                )
                output = MirageGenerateOutput(**output, latents=latents)
        finally:
            self._latent_trace = self._latent_source = None
        return output

    def _get_logits_processor(self, generation_config, *args, **kwargs):
        processors = super()._get_logits_processor(generation_config, *args, **kwargs)
        latent = next((p for p in processors if isinstance(p, LatentModeLogitsProcessor)), None)
        late = latent.late_stage(bool(generation_config.do_sample)) if latent is not None else None
        if late is not None:
            # After the warpers (temperature, top-k, top-p), which the parent appends last, and before a final
            # renormalisation: the official decoder samples among all tokens of the warped distribution.
            at = len(processors) - int(bool(processors) and isinstance(processors[-1], LogitNormalization))
            processors.insert(at, late)
        return processors

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # Qwen2.5-VL gives vision tokens their 3-D rotary positions in `generate` only when `mm_token_type_ids` is
        # passed, while `forward` derives them from the ids: derive them here too, so that replaying a generation
        # through `forward` sees the positions generation saw.
        ids = model_kwargs.get("input_ids")
        ids = ids if ids is not None and ids.shape[1] > 0 else inputs_tensor
        has_vision = model_kwargs.get("image_grid_thw") is not None or model_kwargs.get("video_grid_thw") is not None
        is_ids = ids is not None and ids.ndim == 2 and not torch.is_floating_point(ids)
        if has_vision and is_ids and model_kwargs.get("mm_token_type_ids") is None:
            model_kwargs["mm_token_type_ids"] = self.model.mm_token_type_ids(ids)
        return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)

    def prepare_inputs_for_generation(self, input_ids, *args, latent_prev_hidden=None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        ids = model_inputs.get("input_ids")
        cache = model_inputs.get("cache", model_inputs.get("past_key_values"))
        if latent_prev_hidden is None or ids is None or ids.shape[1] != 1 or cache is None:
            model_inputs["latent_prev_hidden"] = latent_prev_hidden
            return model_inputs
        # A decoding step: rows whose new token is a pad are fed the hidden state before it, the others their token
        # embedding; chosen on the device, so the step never waits to learn which rows are in latent mode.
        is_pad = ids == self.config.latent_pad_token_id  # (B, 1)
        embeds = self.get_input_embeddings()(ids)  # (B, 1, D)
        latent = latent_prev_hidden  # (B, D)
        if self._latent_source is not None:
            slots = _latent_slots(input_ids, self.config.latent_pad_token_id, self.config.latent_start_token_id)
            latent = self._latent_source(latent, *slots).to(embeds.dtype)
        model_inputs["inputs_embeds"] = torch.where(is_pad.unsqueeze(-1), latent.unsqueeze(1), embeds)
        model_inputs["input_ids"] = None
        if self._latent_trace is not None:
            # Keyed by the new token's column, read from the host-side shape: a static cache's `get_seq_length()` is a
            # device tensor that grows in place. What is recorded is the fresh tensor fed (a compiled forward's
            # outputs, `latent_prev_hidden` among them, may be overwritten by the next call).
            self._latent_trace.record_step(input_ids.shape[1] - 1, is_pad[:, 0], model_inputs["inputs_embeds"][:, 0])
        return model_inputs

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        model_kwargs = super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)
        # The next step may be a latent step: it will be fed this hidden state (rows that emit a pad only).
        model_kwargs["latent_prev_hidden"] = outputs.final_hidden_state
        if self._latent_trace is not None:
            # How many positions the model has processed so far: the cache length, or without a cache (or with a
            # static one, whose length is a device tensor that reading would wait for) the length of the position ids
            # (or mask), which the parent just extended by this step's token.
            cache = model_kwargs.get("cache", model_kwargs.get("past_key_values"))
            length = cache.get_seq_length() if cache is not None else None
            if not isinstance(length, int):
                tracked = model_kwargs.get("position_ids")
                tracked = tracked if tracked is not None else model_kwargs["attention_mask"]
                length = tracked.shape[-1] - 1
            self._latent_trace.record(outputs, length)
        return model_kwargs


__all__ = ["LatentModeLogitsProcessor", "MirageGenerateOutput", "MirageGenerationMixin"]
