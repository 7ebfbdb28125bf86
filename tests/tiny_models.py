"""Tiny in-process Mirage models and inputs for the model and generation tests (no tokenizer, no files).

Token ids of the tiny vocabulary (128): 0 padding, 2 end of text, 100-103 image/video/vision start/end,
125-127 latent pad/start/end. Text tokens are drawn from 4..99.
"""

import torch

from modeling_mirage import MirageConfig, MirageForConditionalGeneration

VOCAB = 128
PAD_TEXT, EOS = 0, 2
IMAGE, VIDEO, VSTART, VEND = 100, 101, 102, 103
LPAD, LSTART, LEND = 125, 126, 127
PATCH_DIM = 3 * 2 * 14 * 14  # channels x temporal patch x patch x patch


def tiny_config(**overrides) -> MirageConfig:
    """A Mirage config with a 2-layer, 32-wide text model and a 1-block vision tower."""
    kwargs = dict(
        text_config=dict(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
            bos_token_id=1,
            eos_token_id=EOS,
            pad_token_id=PAD_TEXT,
        ),
        vision_config=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            out_hidden_size=32,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[0],
        ),
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
        latent_pad_token_id=LPAD,
        latent_start_token_id=LSTART,
        latent_end_token_id=LEND,
        latent_num_tokens=3,
    )
    kwargs.update(overrides)
    return MirageConfig(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> MirageForConditionalGeneration:
    """A random tiny Mirage model in eval mode, fp32, with generation ids set."""
    torch.manual_seed(seed)
    model = MirageForConditionalGeneration(tiny_config(**overrides)).eval()
    model.generation_config.pad_token_id = PAD_TEXT
    model.generation_config.eos_token_id = EOS
    model.generation_config.bos_token_id = 1
    return model


def image_tokens(grid_hw: tuple[int, int]) -> list[int]:
    """The placeholder run of one image with a patch grid of `grid_hw` (merged 2x2)."""
    h, w = grid_hw
    return [VSTART] + [IMAGE] * (h * w // 4) + [VEND]


def random_pixels(grids: list[tuple[int, int]], seed: int = 0) -> tuple[torch.Tensor, torch.LongTensor]:
    """`(pixel_values, image_grid_thw)` for images with the given patch grids, as the Qwen2.5-VL processor shapes them."""
    generator = torch.Generator().manual_seed(seed)
    n = sum(h * w for h, w in grids)
    pixels = torch.randn(n, PATCH_DIM, generator=generator)
    grid_thw = torch.tensor([[1, h, w] for h, w in grids], dtype=torch.long)
    return pixels, grid_thw


def pad_batch(rows: list[list[int]], side: str = "right", extra: int = 0) -> tuple[torch.LongTensor, torch.LongTensor]:
    """`(input_ids, attention_mask)` for token rows padded with `PAD_TEXT` on `side` (plus `extra` more columns)."""
    length = max(map(len, rows)) + extra
    ids = torch.full((len(rows), length), PAD_TEXT, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids, mask


def real_slice(mask_row: torch.Tensor) -> torch.Tensor:
    """Indices of the real (unpadded) tokens of one row."""
    return mask_row.nonzero().flatten()
