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


def generate(model, prompts, pixels=None, grid_thw=None, **kwargs):
    ids, mask = pad_batch(prompts, side="left")
    extra = {}
    if pixels is not None:
        extra = dict(pixel_values=pixels, image_grid_thw=grid_thw, mm_token_type_ids=(ids == IMAGE).int())
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
