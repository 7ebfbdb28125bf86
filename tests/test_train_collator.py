"""The Mirage collator: label layout, stage-dependent helper tensors, image scaling, and one error per kind of bad row
(each naming the row and the field, before any forward)."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

import mirage_tasks
from modeling_mirage import MirageProcessor
from trainers import MirageDataCollator, MirageSFTConfig, MirageSFTTrainer
from trainers.collator import ROW_INDEX_COLUMN


@pytest.fixture(scope="module")
def processor(tiny_mirage_dir: str) -> MirageProcessor:
    return MirageProcessor.from_pretrained(tiny_mirage_dir)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """Four mirage-direct planning rows (levels 3-4), images decoded."""
    dataset = mirage_tasks.build_dataset("vsp_planning", "mirage-direct", 4, levels="3-4", seed=11)
    return [dataset[i] for i in range(len(dataset))]


def ids_of(processor, *tokens: str) -> list[int]:
    return [processor.tokenizer.convert_tokens_to_ids(t) for t in tokens]


def test_labels_cover_assistant_tokens_only(processor, rows) -> None:
    batch = MirageDataCollator(processor, stage=1, align_latent_blocks=False)(rows)
    pad, start, end, im_end, im_start = ids_of(
        processor, "<|latent_pad|>", "<|latent_start|>", "<|latent_end|>", "<|im_end|>", "<|im_start|>"
    )
    k = processor.latent_num_tokens
    for r in range(len(rows)):
        ids, labels, mask = batch["input_ids"][r], batch["labels"][r], batch["attention_mask"][r]
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()  # right padding
        assert (labels[length:] == -100).all()  # padding never trained
        start_col = int((ids == start).nonzero()[0])
        # Everything up to the assistant's first token is prompt: no labels.
        assert (labels[:start_col] == -100).all()
        assert ids[start_col - 1] != im_end  # the assistant header comes right before the block
        # The latent block: start and end trained, the k pads not.
        assert labels[start_col] == start
        assert (ids[start_col + 1 : start_col + 1 + k] == pad).all()
        assert (labels[start_col + 1 : start_col + 1 + k] == -100).all()
        assert labels[start_col + 1 + k] == end
        # The rest of the completion is trained, up to and including the closing <|im_end|>.
        assert (labels[start_col + 2 + k : length] == ids[start_col + 2 + k : length]).all()
        assert ids[length - 1] == im_end and labels[length - 1] == im_end
        # The text after the block decodes to the row's answer line.
        answer = processor.tokenizer.decode(ids[start_col + 2 + k : length - 1])
        assert answer == mirage_tasks.completion_text(rows[r]).replace(mirage_tasks.LATENT_PLACEHOLDER, "")
    assert (batch["input_ids"] == im_start).sum() == 3 * len(rows)  # system, user, assistant per row


def test_aligned_rows_share_latent_columns_and_keep_their_tokens(processor, rows) -> None:
    plain = MirageDataCollator(processor, stage=2, align_latent_blocks=False)(rows)
    aligned = MirageDataCollator(processor, stage=2)(rows)
    pad, start = ids_of(processor, "<|latent_pad|>", "<|latent_start|>")
    columns = [int((ids == start).nonzero()[0]) for ids in aligned["input_ids"]]
    assert len(set(columns)) == 1  # one block column for the whole batch
    assert len({tuple((ids == pad).nonzero().flatten().tolist()) for ids in aligned["input_ids"]}) == 1
    assert len({int((ids == start).nonzero()[0]) for ids in plain["input_ids"]}) > 1  # rows differ without it
    for r in range(len(rows)):
        for key in ("input_ids", "labels"):
            real_aligned = aligned[key][r][aligned["attention_mask"][r].bool()]
            real_plain = plain[key][r][plain["attention_mask"][r].bool()]
            assert torch.equal(real_aligned, real_plain)
        mask = aligned["attention_mask"][r]
        first, last = int(mask.nonzero()[0]), int(mask.nonzero()[-1])
        assert mask[first : last + 1].all()  # padding only at the two ends
        assert (aligned["labels"][r][~mask.bool()] == -100).all()


def test_stage1_passes_helper_images_and_stage2_does_not(processor, rows) -> None:
    stage1 = MirageDataCollator(processor, stage=1)(rows)
    stage2 = MirageDataCollator(processor, stage=2)(rows)
    assert stage1["helper_image_counts"].tolist() == [1, 1, 1, 1]
    assert stage1["helper_image_grid_thw"].shape == (4, 3)
    assert stage1["helper_pixel_values"].shape[0] == int(stage1["helper_image_grid_thw"].prod(-1).sum())
    assert not any(key.startswith("helper_") for key in stage2)
    for key in ("input_ids", "attention_mask", "labels", "pixel_values", "image_grid_thw"):
        assert torch.equal(stage1[key], stage2[key])


def test_processor_image_scale_puts_one_merged_token_on_one_cell(tiny_mirage_dir, rows) -> None:
    processor = MirageProcessor.from_pretrained(tiny_mirage_dir, image_scale=0.4375)
    batch = MirageDataCollator(processor, stage=1)(rows)
    sides = [len(row["map_desc"]) for row in rows]
    # 64 px per cell x 0.4375 = 28 px = one 2x2 group of 14-px patches.
    assert batch["image_grid_thw"].tolist() == [[1, 2 * s, 2 * s] for s in sides]
    assert batch["helper_image_grid_thw"].tolist() == [[1, 2 * s, 2 * s] for s in sides]
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == image_pad).sum(dim=1).tolist() == [s * s for s in sides]


def test_helper_images_are_processed_like_input_images(tiny_mirage_dir, rows) -> None:
    """The collator's helper tensors are exactly what the processor makes of the helper images, resize included."""
    processor = MirageProcessor.from_pretrained(tiny_mirage_dir, image_scale=0.4375)
    batch = MirageDataCollator(processor, stage=1)(rows)
    expected = processor.image_processor(
        images=[image.resize((round(image.width * 0.4375), round(image.height * 0.4375)), Image.Resampling.BICUBIC)
                for row in rows for image in row["helper_images"]],
        return_tensors="pt",
    )  # fmt: skip
    assert torch.equal(batch["helper_pixel_values"], expected["pixel_values"])
    assert torch.equal(batch["helper_image_grid_thw"], expected["image_grid_thw"])
    assert batch["helper_image_counts"].tolist() == [len(row["helper_images"]) for row in rows]


def test_collator_refuses_a_processor_without_latent_support(tiny_base_dir) -> None:
    from transformers import AutoProcessor

    with pytest.raises(TypeError, match="MirageDataCollator needs a MirageProcessor, got Qwen2_5_VLProcessor"):
        MirageDataCollator(AutoProcessor.from_pretrained(tiny_base_dir), stage=1)


def test_max_length_refuses_to_cut_the_answer_away(processor, rows) -> None:
    with pytest.raises(ValueError, match=r"row 0 of the batch.*max_length=50"):
        MirageDataCollator(processor, stage=1, max_length=50)(rows[:1])


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _bad(row: dict, **changes) -> dict:
    return {**row, **changes}


@pytest.mark.parametrize(
    "change, stage, message",
    [
        (lambda r: _bad(r, completion=None), 1, r"row 2 \(id '.*'\): field 'completion' is missing"),
        (lambda r: _bad(r, completion=[]), 1, r"row 2 \(id '.*'\): field 'completion' is empty"),
        (
            lambda r: _bad(r, completion=[{"role": "assistant", "content": [{"type": "text", "text": "  "}]}]),
            1,
            r"row 2 \(id '.*'\): field 'completion' has no text",
        ),
        (
            lambda r: _bad(r, helper_images=r["helper_images"] * 2),
            1,
            r"row 2 \(id '.*'\): field 'helper_images' has 2 image\(s\) but the completion has 1",
        ),
        (
            lambda r: _bad(r, helper_images=r["helper_images"] * 2),
            2,
            r"row 2 \(id '.*'\): field 'helper_images' has 2 image\(s\) but the completion has 1",
        ),
        (lambda r: _bad(r, helper_images=[]), 1, r"row 2 \(id '.*'\): field 'helper_images' is missing or empty"),
        (lambda r: _bad(r, images=[]), 1, r"row 2 \(id '.*'\): field 'images' has 0 image\(s\) but the prompt has 1"),
        (
            lambda r: _bad(r, images=[{"bytes": b"not a png", "path": None}]),
            1,
            r"row 2 \(id '.*'\): field 'images'\[0\] cannot be read",
        ),
        (
            lambda r: _bad(r, helper_images=[{"bytes": _png_bytes(r["helper_images"][0])[:100], "path": None}]),
            1,
            r"row 2 \(id '.*'\): field 'helper_images'\[0\] cannot be read",
        ),
        (lambda r: _bad(r, prompt=None), 1, r"row 2 \(id '.*'\): field 'prompt' is missing"),
    ],
)
def test_bad_rows_raise_naming_row_and_field(processor, rows, change, stage, message) -> None:
    batch = [dict(row, **{ROW_INDEX_COLUMN: i}) for i, row in enumerate(rows)]
    batch[2] = change(batch[2])
    with pytest.raises(ValueError, match=message):
        MirageDataCollator(processor, stage=stage)(batch)


def test_stage2_ignores_missing_helper_images(processor, rows) -> None:
    batch = MirageDataCollator(processor, stage=2)([_bad(row, helper_images=[]) for row in rows])
    assert "helper_pixel_values" not in batch


def test_rows_without_index_are_named_by_batch_position(processor, rows) -> None:
    batch = list(rows)
    batch[1] = _bad(batch[1], helper_images=[])
    with pytest.raises(ValueError, match=r"row 1 of the batch \(id '.*'\): field 'helper_images'"):
        MirageDataCollator(processor, stage=1)(batch)


def test_trainer_checks_every_row_before_training(tiny_mirage_dir, tmp_path, rows) -> None:
    """A bad row deep in the dataset fails at trainer construction, named by its dataset index."""
    bad = [dict(row) for row in rows] * 3
    bad[9] = _bad(bad[9], helper_images=[])
    dataset = mirage_tasks.rows_to_dataset(bad)
    args = MirageSFTConfig(str(tmp_path), use_cpu=True, report_to="none", latent_stage=1)
    with pytest.raises(ValueError, match=r"train dataset: row 9 \(id '.*'\): field 'helper_images' is missing"):
        MirageSFTTrainer(model=tiny_mirage_dir, args=args, train_dataset=dataset)
    direct = mirage_tasks.build_dataset("vsp_planning", "direct", 4, levels=3, seed=0)
    with pytest.raises(ValueError, match="stage 1 needs rows whose completion has latent blocks"):
        MirageSFTTrainer(model=tiny_mirage_dir, args=args, train_dataset=direct)


def test_unreadable_image_in_dataset_is_reported_by_the_collator(tiny_mirage_dir, tmp_path, rows) -> None:
    """Image columns stay undecoded until the collator, so a corrupt PNG is named with its row and field rather than
    failing inside the data loader."""
    broken = [dict(row) for row in rows]
    broken[3]["images"] = [{"bytes": b"\x89PNG broken", "path": None}]
    dataset = mirage_tasks.rows_to_dataset(broken)
    args = MirageSFTConfig(str(tmp_path), use_cpu=True, report_to="none", per_device_train_batch_size=4)
    trainer = MirageSFTTrainer(model=tiny_mirage_dir, args=args, train_dataset=dataset)
    with pytest.raises(ValueError, match=r"row 3 \(id '.*'\): field 'images'\[0\] cannot be read"):
        trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
