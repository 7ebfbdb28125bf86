"""Latent-aware generation: per-row latent mode, batching, the KV cache, replay, GenerationMixin features, edges."""

import pytest
import torch
from tiny_models import (
    EOS,
    IMAGE,
    LEND,
    LPAD,
    LSTART,
    PAD_TEXT,
    VEND,
    VIDEO,
    VSTART,
    image_tokens,
    pad_batch,
    random_pixels,
    tiny_model,
)
from transformers import LogitsProcessor, LogitsProcessorList, Qwen2_5_VLForConditionalGeneration, StoppingCriteria

K = 3
NEG = float("-inf")


class ForceAt(LogitsProcessor):
    """Forces `token` when a row's count of real (non-padding) tokens reaches a length chosen by its first token, so
    the same prompt behaves the same in any batch: `{(first_token, real_length): token}`."""

    def __init__(self, plan: dict[tuple[int, int], int]):
        self.plan = plan

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for r, ids in enumerate(input_ids):
            real = ids[ids != PAD_TEXT]
            token = self.plan.get((int(real[0]), len(real)))
            if token is not None:
                scores[r] = NEG
                scores[r, token] = 0.0
        return scores


def no_early_stop():
    """Suppress end-of-text and the padding id so rows run to max_new_tokens unless a test forces them, and the vision
    placeholders, which a random model could otherwise write without an image behind them."""

    class Suppress(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[:, [EOS, PAD_TEXT, IMAGE, VIDEO, VSTART, VEND]] = NEG
            return scores

    return Suppress()


def assert_same_latents(first, second, tol=1e-5):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert a.shape == b.shape
        if a.numel():
            assert (a - b).abs().max().item() <= tol


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


GRIDS = [(4, 4), (6, 4)]
PROMPTS = [
    [5, *image_tokens(GRIDS[0]), 6, 7],
    [8, 9],
    [10, 11, 12, 13, *image_tokens(GRIDS[1]), 14, 15],
    [16, 17, 18],
]
# rows open blocks at different steps; row 3 opens two blocks
PLAN = {(5, 24): LSTART, (8, 3): LSTART, (10, 19): LSTART, (16, 4): LSTART, (16, 11): LSTART}


def generate(model, prompts, pixels=None, grid_thw=None, mm_token_type_ids=True, **kwargs):
    """Left-padded generation with the blocks `PLAN` opens; `mm_token_type_ids=False` leaves generate to derive them."""
    ids, mask = pad_batch(prompts, side="left")
    extra = {}
    if pixels is not None:
        extra = dict(pixel_values=pixels, image_grid_thw=grid_thw)
        if mm_token_type_ids:
            extra["mm_token_type_ids"] = (ids == IMAGE).int()
    processors = LogitsProcessorList([ForceAt(kwargs.pop("plan", PLAN)), no_early_stop()])
    kwargs.setdefault("max_new_tokens", 16)
    kwargs.setdefault("do_sample", False)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        logits_processor=processors,
        return_dict_in_generate=True,
        **extra,
        **kwargs,
    )
    return out, ids, mask, extra


def images_for(row):
    """Pixels of the image in PROMPTS[row] (rows 0 and 2 have one each)."""
    pixels, thw = random_pixels(GRIDS, seed=11)
    if row == 0:
        return pixels[:16], thw[:1]
    if row == 2:
        return pixels[16:], thw[1:]
    return None, None


def test_rows_enter_and_leave_latent_mode_independently(model):
    pixels, thw = random_pixels(GRIDS, seed=11)
    out, ids, _, _ = generate(model, PROMPTS, pixels, thw)
    new = out.sequences[:, ids.shape[1] :].tolist()
    block = [LSTART] + [LPAD] * K + [LEND]
    opened = []
    for row in new:
        starts = [i for i, t in enumerate(row) if t == LSTART]
        for s in starts:
            assert row[s : s + K + 2] == block[: len(row) - s]
        opened.append(starts)
    assert opened[0] != opened[1] != opened[2]  # different steps
    assert len(opened[3]) == 2  # two blocks in one row
    assert [len(latent) for latent in out.latents] == [row.count(LPAD) for row in out.sequences.tolist()]


def test_batched_equals_one_row_at_a_time(model):
    pixels, thw = random_pixels(GRIDS, seed=11)
    batched, ids, _, _ = generate(model, PROMPTS, pixels, thw)
    for r, prompt in enumerate(PROMPTS):
        px, g = images_for(r)
        single, single_ids, _, _ = generate(model, [prompt], px, g)
        new_single = single.sequences[0, single_ids.shape[1] :]
        new_batched = batched.sequences[r, ids.shape[1] :]
        assert torch.equal(new_single, new_batched), f"row {r}"
        assert_same_latents(single.latents, batched.latents[r : r + 1])


def test_cached_equals_uncached(model):
    pixels, thw = random_pixels(GRIDS, seed=11)
    cached, _, _, _ = generate(model, PROMPTS, pixels, thw)
    uncached, _, _, _ = generate(model, PROMPTS, pixels, thw, use_cache=False)
    assert torch.equal(cached.sequences, uncached.sequences)
    assert_same_latents(cached.latents, uncached.latents)


@pytest.mark.parametrize("do_sample", [False, True])
def test_replaying_recorded_latents_reproduces_the_logits_generation_saw(model, do_sample):
    pixels, thw = random_pixels(GRIDS, seed=11)
    torch.manual_seed(3)
    out, ids, mask, extra = generate(model, PROMPTS, pixels, thw, output_logits=True, do_sample=do_sample)
    steps = len(out.logits)
    full_mask = torch.cat([mask, torch.ones(len(PROMPTS), steps, dtype=mask.dtype)], dim=1)
    extra["mm_token_type_ids"] = (out.sequences == IMAGE).int()
    seen = torch.stack(out.logits, dim=1)  # (B, steps, V)
    with torch.no_grad():
        replay = model(input_ids=out.sequences, attention_mask=full_mask, latent_embeds=out.latents, **extra)
        chain = model(input_ids=out.sequences, attention_mask=full_mask, **extra)
    prompt_len = ids.shape[1]
    assert (replay.logits[:, prompt_len - 1 : -1] - seen).abs().max().item() <= 1e-4
    # the recorded latents are what the model would compute itself from the same tokens
    assert (chain.logits[:, prompt_len - 1 : -1] - seen).abs().max().item() <= 1e-4
    assert (chain.latent_inputs - torch.cat(out.latents)).abs().max().item() <= 1e-5


def test_max_new_tokens_ending_inside_a_block(model):
    prompts = [[8, 9], [16, 17, 18]]
    out, ids, mask, _ = generate(model, prompts, max_new_tokens=3, plan={(8, 2): LSTART, (16, 3): LSTART})
    new = out.sequences[:, ids.shape[1] :].tolist()
    assert new[0] == [LSTART, LPAD, LPAD]
    assert new[1] == [LSTART, LPAD, LPAD]
    assert [len(latent) for latent in out.latents] == [2, 2]
    # the last pad was never fed during generation, yet its recorded vector is what a replay feeds there
    full_mask = torch.cat([mask, torch.ones(2, 3, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        chain = model(input_ids=out.sequences, attention_mask=full_mask)
    assert (chain.latent_inputs - torch.cat(out.latents)).abs().max().item() <= 1e-5


def test_a_row_finishes_while_another_is_in_latent_mode(model):
    prompts = [[8, 9], [16, 17, 18]]
    plan = {(8, 3): EOS, (16, 3): LSTART}  # row 0 ends at its second new token while row 1 is inside a block
    ids, mask = pad_batch(prompts, side="left")
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=8,
        do_sample=False,
        logits_processor=LogitsProcessorList([ForceAt(plan)]),
        return_dict_in_generate=True,
    )
    new = out.sequences[:, ids.shape[1] :].tolist()
    assert new[0][1] == EOS and all(t == PAD_TEXT for t in new[0][2:])
    assert new[1][:5] == [LSTART, LPAD, LPAD, LPAD, LEND]
    single = model.generate(
        input_ids=torch.tensor([prompts[1]]),
        max_new_tokens=8,
        do_sample=False,
        logits_processor=LogitsProcessorList([ForceAt(plan)]),
        return_dict_in_generate=True,
    )
    assert single.sequences[0, 3:].tolist() == new[1][: single.sequences.shape[1] - 3]
    assert_same_latents(single.latents, out.latents[1:])


def test_prompt_ending_in_a_block_start_or_inside_a_block(model):
    prompts = [[5, 6, 7, LSTART], [8, 9, LSTART, LPAD], [10, LSTART, LPAD, LPAD]]
    ids, mask = pad_batch(prompts, side="left")
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=5,
        do_sample=False,
        logits_processor=LogitsProcessorList([no_early_stop()]),
        return_dict_in_generate=True,
    )
    new = out.sequences[:, ids.shape[1] :].tolist()
    assert new[0][:4] == [LPAD, LPAD, LPAD, LEND]
    assert new[1][:3] == [LPAD, LPAD, LEND]
    assert new[2][:2] == [LPAD, LEND]
    assert [len(latent) for latent in out.latents] == [3, 3, 3]  # prompt pads included
    full_mask = torch.cat([mask, torch.ones(3, 5, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        chain = model(input_ids=out.sequences, attention_mask=full_mask)
    assert (chain.latent_inputs - torch.cat(out.latents)).abs().max().item() <= 1e-5


def test_a_model_that_never_opens_a_block_generates_like_stock_qwen(model):
    stock = Qwen2_5_VLForConditionalGeneration(model.config).eval()
    stock.load_state_dict(model.state_dict())
    stock.generation_config = model.generation_config
    ids, mask = pad_batch(PROMPTS[1:2] + PROMPTS[3:], side="left")
    kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    ours = model.generate(**kwargs, suppress_tokens=[LSTART], return_dict_in_generate=True)
    theirs = stock.generate(**kwargs, suppress_tokens=[LSTART, LPAD, LEND])
    assert torch.equal(ours.sequences, theirs)
    assert all(latent.shape == (0, model.config.text_config.hidden_size) for latent in ours.latents)


def test_sampling_with_a_fixed_seed_is_reproducible(model):
    kwargs = dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=14)
    torch.manual_seed(123)
    first, _, _, _ = generate(model, PROMPTS[1:2] + PROMPTS[3:], **kwargs)
    torch.manual_seed(123)
    second, _, _, _ = generate(model, PROMPTS[1:2] + PROMPTS[3:], **kwargs)
    assert torch.equal(first.sequences, second.sequences)
    assert all(torch.equal(a, b) for a, b in zip(first.latents, second.latents))


def test_num_return_sequences_scores_and_plain_tensor_output(model):
    torch.manual_seed(0)
    out, _, _, _ = generate(model, [[8, 9], [16, 17, 18]], do_sample=True, num_return_sequences=3, output_scores=True)
    assert out.sequences.shape[0] == 6 and len(out.latents) == 6
    # at a latent step only the forced token is possible
    new = out.sequences[:, -len(out.scores) :]
    for step, scores in enumerate(out.scores):
        for r in range(6):
            if new[r, step] == LPAD:
                assert torch.isfinite(scores[r]).sum().item() == 1
    ids, mask = pad_batch([[8, 9]], side="left")
    plain = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert isinstance(plain, torch.Tensor)


def test_stopping_criteria_are_honoured(model):
    class StopAfterBlock(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == LEND

    ids, mask = pad_batch([[8, 9]], side="left")
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=20,
        do_sample=False,
        logits_processor=LogitsProcessorList([ForceAt({(8, 2): LSTART})]),
        stopping_criteria=[StopAfterBlock()],
    )
    assert out[0, 2:].tolist() == [LSTART, LPAD, LPAD, LPAD, LEND]


def test_predicted_end_rule_lets_the_model_close_the_block_up_to_the_cap():
    model = tiny_model(seed=1, latent_end_rule="predicted", latent_max_tokens=5)

    class NeverEnd(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[:, LEND] -= 100.0
            return scores

    class AlwaysEnd(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[:, LEND] += 100.0
            return scores

    ids = torch.tensor([[5, 6, LSTART]])
    capped = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, logits_processor=[NeverEnd()])
    assert capped[0, 3:9].tolist() == [LPAD] * 5 + [LEND]
    early = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, logits_processor=[AlwaysEnd()])
    assert early[0, 3].item() == LEND


def test_beam_search_and_assisted_decoding_are_refused(model):
    ids = torch.tensor([[8, 9]])
    with pytest.raises(ValueError, match="does not support num_beams=2"):
        model.generate(input_ids=ids, num_beams=2, max_new_tokens=3)
    with pytest.raises(ValueError, match="does not support assistant_model"):
        model.generate(input_ids=ids, assistant_model=model, max_new_tokens=3)


def test_text_streamer_shows_latent_blocks(capsys):
    from transformers import TextStreamer

    from mirage_tiny import tiny_base_path
    from modeling_mirage import MirageForConditionalGeneration, MirageProcessor

    processor = MirageProcessor.from_base(tiny_base_path())
    model = MirageForConditionalGeneration.from_base(tiny_base_path(), processor=processor).eval()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "Plan the moves."}]}], add_generation_prompt=True
    )
    ids = processor.tokenizer(prompt + "<|latent_start|>", return_tensors="pt")["input_ids"]
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True)
    out = model.generate(input_ids=ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, streamer=streamer)
    printed = capsys.readouterr().out
    assert printed.startswith("<|latent_pad|>" * 4 + "<|latent_end|>")
    assert out[0, ids.shape[1] :].tolist()[:5] == [processor.latent_pad_token_id] * 4 + [processor.latent_end_token_id]


# ---- exact replay with images: generate derives the vision positions forward derives -----------------------------


def replay_logits(model, out, mask, extra):
    """Logits of `forward` on the generated sequences with the recorded latents, at the positions whose next token
    generation chose: `(B, steps, V)`."""
    steps = out.sequences.shape[1] - mask.shape[1]
    full_mask = torch.cat([mask, torch.ones(mask.shape[0], steps, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        replay = model(input_ids=out.sequences, attention_mask=full_mask, latent_embeds=out.latents, **extra)
    return replay.logits[:, mask.shape[1] - 1 : -1]


@pytest.mark.parametrize("do_sample", [False, True])
def test_generate_with_images_but_no_mm_token_type_ids_replays_exactly(model, do_sample):
    pixels, thw = random_pixels(GRIDS, seed=11)
    torch.manual_seed(5)
    out, ids, mask, _ = generate(
        model,
        PROMPTS,
        pixels,
        thw,
        mm_token_type_ids=False,
        do_sample=do_sample,
        output_logits=True,
        output_scores=True,
    )
    assert any(LPAD in row for row in out.sequences.tolist())
    replay = replay_logits(model, out, mask, dict(pixel_values=pixels, image_grid_thw=thw))
    seen = torch.stack(out.logits, dim=1)  # (B, steps, V)
    assert (replay - seen).abs().max().item() <= 1e-5
    # at the free (text) steps the scores generation chose from are these logits with the latent tokens masked
    scores = torch.stack(out.scores, dim=1)  # (B, steps, V)
    finite = torch.isfinite(scores)
    free = finite.sum(dim=-1, keepdim=True) > 1  # forced steps (a block's pads and end, ForceAt) keep one token
    assert free.sum() > 10
    if not do_sample:  # no warper rescales them
        compared = finite & free
        assert (scores[compared] - replay[compared]).abs().max().item() <= 1e-5
    # and they are the logits of the same generation given mm_token_type_ids explicitly (3-D vision positions)
    torch.manual_seed(5)
    explicit, _, _, _ = generate(model, PROMPTS, pixels, thw, do_sample=do_sample, output_logits=True)
    assert torch.equal(explicit.sequences, out.sequences)
    assert (torch.stack(explicit.logits, dim=1) - seen).abs().max().item() <= 1e-6


def test_a_forward_with_image_placeholders_but_no_pixels_names_what_to_pass(model):
    ids, mask = pad_batch(PROMPTS, side="left")
    with pytest.raises(ValueError, match=r"input_ids rows \[0, 2\] hold 10 image placeholder token\(s\).*pass the "):
        model(input_ids=ids, attention_mask=mask)
    # decoding with the cache feeds no placeholder again: generation runs, and a text-only forward is untouched
    pixels, thw = random_pixels(GRIDS, seed=11)
    out, _, _, _ = generate(model, PROMPTS, pixels, thw, max_new_tokens=4)
    assert out.sequences.shape[1] == ids.shape[1] + 4
    text_ids, text_mask = pad_batch([PROMPTS[1], PROMPTS[3]], side="left")
    with torch.no_grad():
        assert model(input_ids=text_ids, attention_mask=text_mask).logits.shape[:2] == text_ids.shape


# ---- the official end rule -------------------------------------------------------------------------------------


class Boost(LogitsProcessor):
    """Adds `amount` to `token`'s logit for the rows inside a latent block (after `after` pads, when given)."""

    def __init__(self, token, amount=100.0, after=0):
        self.token, self.amount, self.after = token, amount, after

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for r, ids in enumerate(input_ids.tolist()):
            if LSTART in ids:
                start = len(ids) - 1 - ids[::-1].index(LSTART)
                tail = ids[start + 1 :]
                if LEND not in tail and len(tail) >= self.after:
                    scores[r, self.token] += self.amount
        return scores


def official_model(cap=5):
    return tiny_model(seed=1, latent_end_rule="official", latent_max_tokens=cap)


def test_official_rule_records_a_pad_where_another_token_wins_and_closes_at_the_cap():
    model = official_model(cap=5)
    ids = torch.tensor([[5, 6, LSTART]])
    out = model.generate(
        input_ids=ids,
        max_new_tokens=8,
        do_sample=False,
        logits_processor=[Boost(40)],
        output_logits=True,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert out.sequences[0, 3:9].tolist() == [LPAD] * 5 + [LEND]
    for step in range(5):
        # token 40 was the choice among all tokens; the pad took its place, with its score
        finite = torch.isfinite(out.scores[step][0]).nonzero().flatten().tolist()
        assert finite == [LPAD, LEND]
        assert torch.equal(out.scores[step][0, LPAD], out.logits[step][0, 40] + 100.0)
    # the sixth step is forced to the end by the cap
    assert torch.isfinite(out.scores[5][0]).nonzero().flatten().tolist() == [LEND]


def test_official_rule_ends_the_block_when_the_end_is_chosen():
    model = official_model(cap=8)
    ids = torch.tensor([[5, 6, LSTART]])
    out = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, logits_processor=[Boost(LEND, after=2)])
    assert out[0, 3:6].tolist() == [LPAD, LPAD, LEND]
    at_once = model.generate(input_ids=ids, max_new_tokens=2, do_sample=False, logits_processor=[Boost(LEND)])
    assert at_once[0, 3].item() == LEND


def test_official_rule_samples_the_end_with_the_probability_of_the_warped_distribution():
    model = official_model(cap=8)
    processor = model.latent_logits_processor()
    late = processor.late_stage(do_sample=True)
    greedy = processor.late_stage(do_sample=False)
    assert model.config.latent_end_rule == "official" and late is not None
    input_ids = torch.tensor([[5, LSTART, LPAD], [5, 6, 7]])  # row 0 in a block, row 1 outside
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 128, generator=generator)
    raw[0, LEND] = raw[0].max() - 0.1  # the end is not the arg-max: greedy gives a pad
    early = processor(input_ids, raw)
    assert torch.equal(early[0], raw[0])  # below the cap the model chooses among all tokens
    warped = early / 0.7  # a temperature warper between the two stages
    collapsed = late(input_ids, warped)
    probs = collapsed[0].softmax(-1)
    p_end = warped[0].softmax(-1)[LEND]
    assert torch.allclose(probs[LEND], p_end, atol=1e-6) and torch.allclose(probs[LPAD], 1 - p_end, atol=1e-6)
    assert torch.isfinite(collapsed[0]).sum().item() == 2
    assert torch.equal(collapsed[1], warped[1])  # rows outside a block are untouched
    assert int(greedy(input_ids, warped)[0].argmax()) == LPAD
    warped[0, LEND] = warped[0].max() + 1.0
    assert int(greedy(input_ids, warped)[0].argmax()) == LEND
    # at the cap the end is forced in the first stage and left alone by the second
    full = torch.tensor([[5, LSTART] + [LPAD] * 8])
    forced = late(full, processor(full, raw[:1]))
    assert torch.isfinite(forced[0]).nonzero().flatten().tolist() == [LEND]


def test_official_rule_replays_exactly_with_images_and_sampling():
    model = official_model(cap=4)
    pixels, thw = random_pixels(GRIDS, seed=11)
    torch.manual_seed(9)
    out, ids, mask, _ = generate(
        model, PROMPTS, pixels, thw, mm_token_type_ids=False, do_sample=True, temperature=0.7, top_p=0.9,
        output_logits=True,
    )  # fmt: skip
    pads = [row.count(LPAD) for row in out.sequences.tolist()]
    assert sum(pads) > 0 and [len(latent) for latent in out.latents] == pads
    replay = replay_logits(model, out, mask, dict(pixel_values=pixels, image_grid_thw=thw))
    assert (replay - torch.stack(out.logits, dim=1)).abs().max().item() <= 1e-5


def test_every_generation_hook_overrides_a_method_of_the_stock_class():
    from modeling_mirage import MirageForConditionalGeneration
    from modeling_mirage.generation_mirage import MirageGenerationMixin

    hooks = [name for name, value in vars(MirageGenerationMixin).items() if callable(value) and name != "__init__"]
    assert {"generate", "_get_logits_processor", "_prepare_position_ids_for_generation"} <= set(hooks)
    for name in hooks:
        if name != "latent_logits_processor":  # Mirage's own
            assert hasattr(Qwen2_5_VLForConditionalGeneration, name), name
        assert getattr(MirageForConditionalGeneration, name) is getattr(MirageGenerationMixin, name), name


def test_latent_fields_set_after_loading_are_checked_when_generating():
    model = tiny_model(seed=1)
    model.config.latent_end_rule = "official"
    model.config.latent_max_tokens = 2  # below latent_num_tokens = 3
    with pytest.raises(ValueError, match=r"latent_max_tokens \(2\) must be >= latent_num_tokens \(3\)"):
        model.generate(input_ids=torch.tensor([[8, 9]]), max_new_tokens=2)
