"""The latent forward: self-filled chain, replay, stage-1 teacher forcing, batching and padding, bad input."""

import pytest
import torch
from tiny_models import (
    IMAGE,
    LEND,
    LPAD,
    LSTART,
    image_tokens,
    pad_batch,
    random_pixels,
    real_slice,
    tiny_model,
)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

K = 3
BLOCK = [LSTART] + [LPAD] * K + [LEND]


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=0)


def batch_rows():
    """Four rows: different prompt lengths, blocks at different positions, two with images of different sizes, one
    with two blocks. Returns `(rows, grids)` where grids lists the image patch grids in row order."""
    grids = [(4, 4), (6, 4)]
    rows = [
        [5, *image_tokens(grids[0]), 6, 7, *BLOCK, 8, 9],
        [10, 11, 12, 13, 14, 15, 16, *BLOCK, 17],
        [20, 21, *image_tokens(grids[1]), *BLOCK, 22, 23, *BLOCK, 24, 25, 26],
        [30, *BLOCK, 31, 32, 33, 34],
    ]
    return rows, grids


def images_of(rows, grids, pixels, grid_thw, which):
    """Pixel values and grids of the images of the rows listed in `which` (images are in row order)."""
    sizes = [h * w for h, w in grids]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    owners = [r for r, row in enumerate(rows) if IMAGE in row]
    keep = [i for i, r in enumerate(owners) if r in which]
    if not keep:
        return None, None
    px = torch.cat([pixels[starts[i] : starts[i] + sizes[i]] for i in keep])
    return px, grid_thw[keep]


@torch.no_grad()
def reference_logits(model, row, pixels, grid_thw):
    """Step-by-step reference with the stock Qwen2.5-VL backbone: embed the row, then for each pad in order run the
    prefix before it and write the last hidden state into the pad's input by hand."""
    ids = torch.tensor([row])
    mm = ((ids == model.config.image_token_id).int()) if pixels is not None else None
    extra = dict(pixel_values=pixels, image_grid_thw=grid_thw, mm_token_type_ids=mm) if pixels is not None else {}
    embeds = model.model.get_input_embeddings()(ids).clone()
    model.model.rope_deltas = None
    for p in [i for i, t in enumerate(row) if t == LPAD]:
        prefix_extra = dict(extra, mm_token_type_ids=mm[:, :p]) if pixels is not None else {}
        hidden = Qwen2_5_VLModel.forward(
            model.model, input_ids=ids[:, :p], inputs_embeds=embeds[:, :p], **prefix_extra
        ).last_hidden_state
        embeds[0, p] = hidden[0, -1]
    hidden = Qwen2_5_VLModel.forward(model.model, input_ids=ids, inputs_embeds=embeds, **extra).last_hidden_state
    return model.lm_head(hidden)[0]


@pytest.mark.parametrize("side", ["right", "left"])
def test_self_filled_chain_matches_step_by_step_reference(model, side):
    rows, grids = batch_rows()
    pixels, grid_thw = random_pixels(grids, seed=1)
    ids, mask = pad_batch(rows, side=side)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid_thw)
    for r, row in enumerate(rows):
        px, g = images_of(rows, grids, pixels, grid_thw, [r])
        ref = reference_logits(model, row, px, g)
        got = out.logits[r, real_slice(mask[r])]
        assert (got - ref).abs().max().item() <= 1e-5, f"row {r}"
    # every pad was fed the hidden state at the position before it
    assert torch.equal(out.latent_inputs, out.latent_hidden)
    assert out.latent_positions.shape == (sum(row.count(LPAD) for row in rows), 2)


def test_batched_equals_one_row_at_a_time(model):
    rows, grids = batch_rows()
    pixels, grid_thw = random_pixels(grids, seed=2)
    ids, mask = pad_batch(rows, side="right")
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid_thw)
        for r, row in enumerate(rows):
            px, g = images_of(rows, grids, pixels, grid_thw, [r])
            single = model(input_ids=torch.tensor([row]), pixel_values=px, image_grid_thw=g)
            diff = (single.logits[0] - batched.logits[r, : len(row)]).abs().max().item()
            assert diff <= 1e-5, f"row {r}: {diff}"
            in_row = batched.latent_positions[:, 0] == r
            assert (single.latent_inputs - batched.latent_inputs[in_row]).abs().max().item() <= 1e-5


def test_padding_side_and_amount_do_not_change_real_token_logits(model):
    rows, grids = batch_rows()
    pixels, grid_thw = random_pixels(grids, seed=3)
    outs = []
    for side, extra in (("right", 0), ("left", 0), ("left", 5), ("right", 7)):
        ids, mask = pad_batch(rows, side=side, extra=extra)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid_thw)
        outs.append([out.logits[r, real_slice(mask[r])] for r in range(len(rows))])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert (a - b).abs().max().item() <= 1e-5


def test_replayed_latents_reproduce_the_chain_and_change_the_output(model):
    rows, grids = batch_rows()
    pixels, grid_thw = random_pixels(grids, seed=4)
    ids, mask = pad_batch(rows)
    kwargs = dict(input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid_thw)
    with torch.no_grad():
        chain = model(**kwargs)
        flat = model(**kwargs, latent_embeds=chain.latent_inputs)
        per_row = [chain.latent_inputs[chain.latent_positions[:, 0] == r] for r in range(len(rows))]
        listed = model(**kwargs, latent_embeds=per_row)
        other = model(**kwargs, latent_embeds=torch.randn_like(chain.latent_inputs))
    assert (flat.logits - chain.logits).abs().max().item() <= 1e-5
    assert torch.equal(flat.logits, listed.logits)
    # different latents change the text after the block but not the text before it
    first_pad = rows[1].index(LPAD)
    assert (other.logits[1, :first_pad] - flat.logits[1, :first_pad]).abs().max().item() <= 1e-6
    assert (other.logits[1, first_pad + K :] - chain.logits[1, first_pad + K :]).abs().max().item() > 1e-3


def test_cached_prefix_then_chain_equals_one_call(model):
    """A forward over a prefix with a cache, then the rest (which starts inside a block) with `latent_prev_hidden`,
    gives the same logits as one call over the whole row."""
    row = [5, 6, 7, 8, LSTART, LPAD, LPAD, LPAD, LEND, 9, 10]
    ids = torch.tensor([row])
    with torch.no_grad():
        whole = model(input_ids=ids)
        first = model(input_ids=ids[:, :6], use_cache=True)  # ends with the first pad
        rest = model(
            input_ids=ids[:, 6:],
            cache=first.cache,
            use_cache=True,
            latent_prev_hidden=first.final_hidden_state,
            position_ids=torch.arange(6, len(row)).view(1, 1, -1).expand(3, 1, -1),
        )
    joined = torch.cat([first.logits, rest.logits], dim=1)
    assert (joined - whole.logits).abs().max().item() <= 1e-5
    assert rest.latent_positions.tolist() == [[0, 6], [0, 7]]


def test_gradients_flow_through_the_chain(model):
    """The text after a block depends on the tokens before it through the latents too: cutting the chain (replaying
    the same latents detached) changes the gradient with respect to the input embeddings."""
    row = [5, 6, LSTART, LPAD, LPAD, LPAD, LEND, 9, 10, 11]
    ids = torch.tensor([row])

    def input_gradient(latent_embeds=None):
        embeds = model.model.get_input_embeddings()(ids).detach().requires_grad_(True)
        out = model(input_ids=ids, inputs_embeds=embeds, latent_embeds=latent_embeds)
        out.logits[0, -1, 7].backward()
        return embeds.grad, out

    through_chain, out = input_gradient()
    cut, replay = input_gradient(out.latent_inputs.detach())
    assert (out.logits - replay.logits).abs().max().item() <= 1e-5
    assert (through_chain - cut)[0, :3].abs().max().item() > 1e-6  # tokens before the block
    model.zero_grad(set_to_none=True)


@torch.no_grad()
def test_stage1_targets_are_chunk_means_of_the_helper_image(model):
    helper_grids = [(6, 6), (4, 8)]  # 9 and 8 merged patches; with k=3 they are trimmed to 9 and 6
    helpers, helper_thw = random_pixels(helper_grids, seed=5)
    rows = [[5, 6, *BLOCK, 7], [8, *BLOCK, 9, 10, 11]]
    ids, mask = pad_batch(rows)
    out = model(input_ids=ids, attention_mask=mask, helper_pixel_values=helpers, helper_image_grid_thw=helper_thw)
    merged = model.model.visual(helpers, grid_thw=helper_thw).pooler_output  # (9 + 8, D) in raster order
    expected = []
    offset = 0
    for h, w in helper_grids:
        n = h * w // 4
        features = merged[offset : offset + n]
        offset += n
        chunk = n // K
        for j in range(K):  # contiguous chunks of the raster sequence, the remainder dropped
            rows_of_chunk = [features[j * chunk + i] for i in range(chunk)]
            expected.append(sum(rows_of_chunk) / chunk)
    expected = torch.stack(expected)
    assert (out.latent_targets - expected).abs().max().item() <= 1e-6
    assert torch.equal(out.latent_inputs, out.latent_targets)
    # teacher forcing equals replaying the targets
    replay = model(input_ids=ids, attention_mask=mask, latent_embeds=out.latent_targets)
    assert (replay.logits - out.logits).abs().max().item() <= 1e-6
    # the hidden states that predict each pad are those one position before the pads
    backbone = model.model(
        input_ids=ids, attention_mask=mask, helper_pixel_values=helpers, helper_image_grid_thw=helper_thw
    )
    rows_, cols = backbone.latent_positions[:, 0], backbone.latent_positions[:, 1]
    assert torch.equal(backbone.latent_hidden, backbone.last_hidden_state[rows_, cols - 1])


def test_labels_at_pads_are_ignored(model):
    row = [5, 6, *BLOCK, 7, 8]
    ids = torch.tensor([row])
    labels = ids.clone()
    masked = labels.masked_fill(ids == LPAD, -100)
    with torch.no_grad():
        a = model(input_ids=ids, labels=labels).loss
        b = model(input_ids=ids, labels=masked).loss
    assert torch.equal(a, b)


# ---- bad input ----------------------------------------------------------------------------------------------------


def test_teacher_forcing_rejects_a_block_with_the_wrong_number_of_pads(model):
    helpers, thw = random_pixels([(4, 4)])
    ids = torch.tensor([[5, LSTART, LPAD, LPAD, LEND, 6]])
    with pytest.raises(ValueError, match=r"row 0: the latent block opened at position 1 has 2 <\|latent_pad\|>"):
        model(input_ids=ids, helper_pixel_values=helpers, helper_image_grid_thw=thw)


def test_teacher_forcing_rejects_helper_images_for_a_row_without_a_block(model):
    helpers, thw = random_pixels([(4, 4), (4, 4)])
    ids, mask = pad_batch([[5, *BLOCK, 6], [7, 8, 9]])
    with pytest.raises(ValueError, match="row 1: 1 helper image.* no latent block"):
        model(
            input_ids=ids,
            attention_mask=mask,
            helper_pixel_values=helpers,
            helper_image_grid_thw=thw,
            helper_image_counts=torch.tensor([1, 1]),
        )
    with pytest.raises(
        ValueError, match=r"2 helper image\(s\) given for 1 latent block\(s\).*rows without a block: \[1\]"
    ):
        model(input_ids=ids, attention_mask=mask, helper_pixel_values=helpers, helper_image_grid_thw=thw)


def test_teacher_forcing_rejects_more_images_than_blocks(model):
    helpers, thw = random_pixels([(4, 4), (4, 4)])
    ids = torch.tensor([[5, *BLOCK, 6]])
    with pytest.raises(ValueError, match=r"row 0: 2 helper image\(s\) given for 1 latent block"):
        model(
            input_ids=ids,
            helper_pixel_values=helpers,
            helper_image_grid_thw=thw,
            helper_image_counts=torch.tensor([2]),
        )


def test_latent_embeds_with_wrong_count_or_width_are_rejected(model):
    ids, mask = pad_batch([[5, *BLOCK, 6], [7, 8]])
    width = model.config.text_config.hidden_size
    with pytest.raises(ValueError, match=r"expected \(3, 32\)"):
        model(input_ids=ids, attention_mask=mask, latent_embeds=torch.zeros(2, width))
    with pytest.raises(ValueError, match=r"expected \(3, 32\)"):
        model(input_ids=ids, attention_mask=mask, latent_embeds=torch.zeros(3, width + 1))
    with pytest.raises(ValueError, match=r"row 1: latent_embeds has shape \(1, 32\) but the row has 0"):
        model(input_ids=ids, attention_mask=mask, latent_embeds=[torch.zeros(3, width), torch.zeros(1, width)])


def test_a_pad_in_the_first_position_without_a_previous_hidden_state_is_rejected(model):
    with pytest.raises(ValueError, match=r"rows \[0\]: a <\|latent_pad\|> in the first input position"):
        model(input_ids=torch.tensor([[LPAD, LPAD, LEND, 5]]))


def test_config_rejects_bad_latent_fields():
    from modeling_mirage import MirageConfig

    with pytest.raises(ValueError, match="latent_num_tokens must be >= 1"):
        MirageConfig(latent_num_tokens=0)
    with pytest.raises(ValueError, match="latent_max_tokens"):
        MirageConfig(latent_num_tokens=8, latent_max_tokens=4)
    with pytest.raises(ValueError, match="latent_pooling"):
        MirageConfig(latent_pooling="attention")


def test_stage2_chain_under_gradient_checkpointing_gives_the_same_loss_and_gradients():
    model = tiny_model(seed=0).train()
    ids, mask = pad_batch([[5, 6, *BLOCK, 7, 8], [9, *BLOCK, 10, 11, 12, 13], [4, 4, 4, 4, *BLOCK, 5]])
    labels = ids.masked_fill(mask == 0, -100)

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_loss, plain_grads = loss_and_grads()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ckpt_loss, ckpt_grads = loss_and_grads()
    assert torch.equal(plain_loss, ckpt_loss)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name, grad in plain_grads.items():
        assert (grad - ckpt_grads[name]).abs().max().item() <= 1e-6, name
    # reentrant checkpointing would silently drop the gradient through earlier chunks: it is refused
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="non-reentrant gradient checkpointing"):
        model(input_ids=ids, attention_mask=mask, labels=labels)


def test_trl_fused_lm_head_goes_through_the_backbone_that_fills_latents():
    """TRL's GRPO rescoring patches `forward` with a fused LM head that calls `model.base_model(...)` directly; the
    latent filling lives there, so the fused log-probs equal those of the ordinary forward, replayed latents too."""
    from trl.trainer.utils import add_fused_lm_head

    model = tiny_model(seed=0)
    ids, mask = pad_batch([[5, 6, *BLOCK, 7, 8], [9, *BLOCK, 10, 11, 12, 13]])
    labels = ids.masked_fill((mask == 0) | (ids == LPAD), -100)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask)
        shifted = labels[:, 1:]
        log_softmax = reference.logits[:, :-1].log_softmax(-1)
        expected = log_softmax.gather(-1, shifted.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (shifted != -100)
        add_fused_lm_head(model)
        fused = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        replayed = model(
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            fused_lm_head=True,
            latent_embeds=reference.latent_inputs,
        )
        other = model(
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            fused_lm_head=True,
            latent_embeds=torch.randn_like(reference.latent_inputs),
        )
    assert (fused.log_probs - expected).abs().max().item() <= 1e-5
    assert (replayed.log_probs - expected).abs().max().item() <= 1e-5
    assert (other.log_probs - expected).abs().max().item() > 1e-3  # the latents really are used


def test_return_dict_none_means_an_output_object_and_false_a_tuple(model):
    ids, mask = pad_batch([[5, 6, *BLOCK, 7]])
    with torch.no_grad():
        default = model(input_ids=ids, attention_mask=mask, return_dict=None)  # what PEFT passes
        plain = model(input_ids=ids, attention_mask=mask, return_dict=False)
    assert torch.equal(default.logits, plain[0])
