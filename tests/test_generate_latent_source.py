"""`generate(..., latent_source=f)`: a caller decides what is fed at the pads decoded, and replay stays exact."""

import pytest
import torch
from test_generate import GRIDS, PROMPTS, K, assert_same_latents, generate
from tiny_models import IMAGE, random_pixels, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


def test_identity_source_changes_nothing(model):
    pixels, thw = random_pixels(GRIDS, seed=11)
    plain, _, _, _ = generate(model, PROMPTS, pixels, thw)
    same, _, _, _ = generate(model, PROMPTS, pixels, thw, latent_source=lambda h, b, p: h)
    assert torch.equal(plain.sequences, same.sequences)
    assert_same_latents(plain.latents, same.latents, tol=0.0)


def test_source_sees_each_rows_block_and_pad_index(model):
    seen = []

    def source(hidden, block, pad):
        seen.append((block.clone(), pad.clone()))
        return hidden

    out, ids, _, _ = generate(model, PROMPTS, *random_pixels(GRIDS, seed=11), latent_source=source)
    new = out.sequences[:, ids.shape[1] :]
    pad_id = model.config.latent_pad_token_id
    # Step s feeds the token chosen at step s - 1 (the first call feeds the first generated token).
    for row in range(len(PROMPTS)):
        slots = [(int(seen[s][0][row]), int(seen[s][1][row])) for s in range(len(seen)) if new[row, s] == pad_id]
        blocks = (new[row] == model.config.latent_start_token_id).sum().item()
        expected = [(b, p) for b in range(blocks) for p in range(K)][: len(slots)]
        assert slots == expected, row
    assert any(slot[0] == 1 for slot in [(int(b[3]), int(p[3])) for b, p in seen])  # row 3 opens a second block


def test_fed_vectors_are_recorded_and_replay_exactly(model):
    pixels, thw = random_pixels(GRIDS, seed=11)
    out, ids, mask, extra = generate(
        model, PROMPTS, pixels, thw, output_logits=True, latent_source=lambda h, b, p: torch.zeros_like(h) + p[:, None]
    )
    plain, _, _, _ = generate(model, PROMPTS, pixels, thw)
    assert sum(latents.shape[0] for latents in out.latents) >= 2 * K
    for latents in out.latents:
        assert torch.equal(latents, torch.arange(K).repeat(latents.shape[0] // K).float()[:, None].expand_as(latents))
    assert not torch.equal(out.sequences, plain.sequences)  # the model reacts to what it is fed
    full_mask = torch.cat([mask, torch.ones(len(PROMPTS), len(out.logits), dtype=mask.dtype)], dim=1)
    extra["mm_token_type_ids"] = (out.sequences == IMAGE).int()
    with torch.no_grad():
        replay = model(input_ids=out.sequences, attention_mask=full_mask, latent_embeds=out.latents, **extra)
    seen = torch.stack(out.logits, dim=1)
    assert (replay.logits[:, ids.shape[1] - 1 : -1] - seen).abs().max().item() <= 1e-4
