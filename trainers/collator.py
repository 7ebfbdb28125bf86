"""Batches for the two supervised Mirage stages, from rows of the canonical task dataset.

A row is TRL's conversational prompt/completion form plus images::

    prompt         [{"role": "user", "content": [{"type": "text", ...}, {"type": "image"}, ...]}]
    completion     [{"role": "assistant", "content": [{"type": "text", "text": "<output_image>The answer is ..."}]}]
    images         [input picture, ...]     one per image item of the prompt
    helper_images  [picture to imagine, ...] one per latent block of the completion (stage 1 only)

Images may be PIL images, `{"bytes", "path"}` dicts (a `datasets.Image(decode=False)` column) or file paths.

[`MirageDataCollator`] renders each row with the processor's chat template (an `<output_image>` placeholder or a
`{"type": "latent"}` item becomes `<|latent_start|>` + k x `<|latent_pad|>` + `<|latent_end|>`) and builds::

    input_ids, attention_mask          padded; by default rows are also left-padded so that their first latent
                                       blocks share columns (cheaper stage-2 chain, same logits)
    labels                             assistant tokens only: `<|latent_start|>`, `<|latent_end|>` and the closing
                                       `<|im_end|>` included; prompt, `<|latent_pad|>` and padding are -100
    pixel_values, image_grid_thw       the input images
    helper_pixel_values, helper_image_grid_thw, helper_image_counts
                                       stage 1 only: helper images in row-major block order, and how many per row

Every row is checked first; a bad row raises a `ValueError` that names it (its dataset index when the trainer
added one, else its position in the batch, plus its `id`) and the field at fault, before any forward.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from modeling_mirage import LATENT_PLACEHOLDER
from modeling_mirage.processing_mirage import check_latent_token_ids

# Column the trainer adds so that errors can name a row by its index in the dataset, not just in the batch.
ROW_INDEX_COLUMN = "__row_index__"
END_OF_TURN = "<|im_end|>"


# ------------------------------------------------------------------------------------------------------------------
# Row checks
# ------------------------------------------------------------------------------------------------------------------


def row_name(example: dict[str, Any], position: int) -> str:
    """How errors name a row: its dataset index when known (else its batch position), and its `id`."""
    index = example.get(ROW_INDEX_COLUMN)
    name = f"row {index}" if index is not None else f"row {position} of the batch"
    if example.get("id") not in (None, ""):
        name += f" (id {example['id']!r})"
    return name


def _messages(example: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """The message list of column `key`, or a `ValueError` naming the row and field."""
    messages = example.get(key)
    if messages is None:
        raise ValueError(f"{where}: field {key!r} is missing")
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
        raise ValueError(
            f"{where}: field {key!r} must be a list of chat messages ({{'role': ..., 'content': ...}}), "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise ValueError(f"{where}: field {key!r} is empty")
    return list(messages)


def _content_items(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any] | str]:
    items: list[dict[str, Any] | str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) or content is None:
            items.append(content or "")
        else:
            items.extend(content)
    return items


def _is_image_item(item: dict[str, Any] | str) -> bool:
    return isinstance(item, dict) and (item.get("type") == "image" or "image_url" in item)


def count_image_items(messages: Sequence[dict[str, Any]]) -> int:
    """Image items in a conversation (each becomes one `<|image_pad|>` run)."""
    return sum(_is_image_item(item) for item in _content_items(messages))


def count_latent_blocks(messages: Sequence[dict[str, Any]]) -> int:
    """Latent blocks a conversation renders to: `<output_image>` placeholders, `{"type": "latent"}` items and blocks
    already written out as `<|latent_start|>`."""
    count = 0
    for item in _content_items(messages):
        if isinstance(item, str):
            text = item
        elif item.get("type") == "latent":
            count += 1
            continue
        else:
            text = item.get("text") or ""
        count += text.count(LATENT_PLACEHOLDER) + text.count("<|latent_start|>")
    return count


def _text_of(messages: Sequence[dict[str, Any]]) -> str:
    return "".join(
        item if isinstance(item, str) else (item.get("text") or "")
        for item in _content_items(messages)
        if not _is_image_item(item)
    )


def load_image(value: Any, where: str) -> Image.Image:
    """An RGB PIL image from a PIL image, a `{"bytes", "path"}` dict or a path; a `ValueError` naming `where` if the
    image cannot be read."""
    try:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes") is not None:
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, dict) and value.get("path"):
            image = Image.open(value["path"])
        elif isinstance(value, (str, os.PathLike)):
            image = Image.open(value)
        else:
            raise TypeError(f"expected a PIL image, an {{'bytes', 'path'}} dict or a path, got {type(value).__name__}")
        image.load()  # decode now, so a truncated file fails here and not inside the processor
        return image.convert("RGB")
    except Exception as error:  # PIL raises many types; all mean the same thing here
        raise ValueError(f"{where} cannot be read: {type(error).__name__}: {error}") from error


@dataclass
class CheckedRow:
    """A row that passed [`check_example`]: its messages, images and number of latent blocks."""

    prompt: list[dict[str, Any]]
    completion: list[dict[str, Any]]
    images: list[Any]
    helper_images: list[Any]
    num_blocks: int


def check_example(example: dict[str, Any], stage: int, position: int = 0, decode: bool = True) -> CheckedRow:
    """Check one row for stage `stage` (1 or 2); raise a `ValueError` naming the row and field if it is unusable.

    Checks: prompt and completion present and non-empty; one image per image item of the prompt; one helper image per
    latent block of the completion (stage 1 requires them; stage 2 ignores them, but a non-empty list must still
    match); with `decode`, every image readable. Returns the row with decoded images (or the raw values without
    `decode`).
    """
    where = row_name(example, position)
    prompt = _messages(example, "prompt", where)
    completion = _messages(example, "completion", where)
    if not _text_of(completion).strip() and count_latent_blocks(completion) == 0:
        raise ValueError(f"{where}: field 'completion' has no text")

    images = example.get("images")
    if images is None:
        images = [example["image"]] if example.get("image") is not None else []
    if not isinstance(images, (list, tuple)):
        images = [images]
    wanted = count_image_items(prompt)
    if len(images) != wanted:
        raise ValueError(
            f"{where}: field 'images' has {len(images)} image(s) but the prompt has {wanted} image item(s)"
        )

    helpers = example.get("helper_images") or []
    if not isinstance(helpers, (list, tuple)):
        helpers = [helpers]
    blocks = count_latent_blocks(completion)
    if stage == 1 and blocks and not helpers:
        raise ValueError(
            f"{where}: field 'helper_images' is missing or empty, but stage 1 needs one helper image per latent "
            f"block and the completion has {blocks} ({LATENT_PLACEHOLDER} placeholders or latent items)"
        )
    if helpers and len(helpers) != blocks:
        raise ValueError(
            f"{where}: field 'helper_images' has {len(helpers)} image(s) but the completion has {blocks} "
            f"{LATENT_PLACEHOLDER} placeholder(s) / latent block(s); they must match one to one"
        )
    if decode:
        images = [load_image(image, f"{where}: field 'images'[{j}]") for j, image in enumerate(images)]
        if stage == 1:
            helpers = [load_image(image, f"{where}: field 'helper_images'[{j}]") for j, image in enumerate(helpers)]
    return CheckedRow(prompt, completion, list(images), list(helpers), blocks)


# ------------------------------------------------------------------------------------------------------------------
# Collator
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class MirageDataCollator:
    """Turns canonical rows into a Mirage training batch (see the module docstring for the layout).

    Args:
        processor: a [`MirageProcessor`] (chat template with latent blocks, the three latent tokens). It processes
            input and helper images alike, resize (its `image_scale`) included, as it will after saving.
        stage: 1 passes the helper images (teacher forcing); 2 passes none (the model fills the pads itself).
        max_length: cut rows longer than this at the end; a cut that would drop an image or latent token, or every
            completion token, raises instead (None: no limit).
        pad_to_multiple_of: pad the batch length to a multiple of this.
        align_latent_blocks: left-pad rows so that their first latent blocks occupy the same columns. The stage-2
            chain runs one chunk per distinct pad column of the batch, so aligned blocks cost k + 1 chunks instead of
            up to k per row; the model ignores where padding sits (positions count real tokens only).

    Example:
        >>> collator = MirageDataCollator(processor, stage=1)
        >>> batch = collator([dataset[0], dataset[1]])
        >>> outputs = model(**batch)  # outputs.latent_hidden, outputs.latent_targets
    """

    processor: Any
    stage: int = 1
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    align_latent_blocks: bool = True
    end_token: str = field(default=END_OF_TURN)

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage!r}")
        if not hasattr(self.processor, "process_helper_images"):
            raise TypeError(
                f"MirageDataCollator needs a MirageProcessor, got {type(self.processor).__name__}; convert a "
                "Qwen2.5-VL processor with MirageProcessor.from_base(...)"
            )
        tokenizer = self.processor.tokenizer
        vocab = tokenizer.get_vocab()
        # The same check MirageProcessor makes: the three tokens exist, in order, at the end of the vocabulary.
        self.latent_pad_id, self.latent_start_id, latent_end_id = check_latent_token_ids(tokenizer)
        if self.end_token not in vocab:
            self.end_token = tokenizer.eos_token
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Tokens a max_length cut may never drop: vision placeholders (their features would be orphaned) and latent
        # markers (a block cut in half cannot be teacher forced).
        vision = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
        protected = [self.latent_pad_id, self.latent_start_id, latent_end_id] + [
            vocab[t] for t in vision if t in vocab
        ]
        self._protected = torch.tensor(protected)

    def _render(self, row: CheckedRow, where: str) -> tuple[str, str]:
        """(prompt text ending with the assistant header, completion text ending with the end-of-turn token)."""
        prompt_text = self.processor.apply_chat_template(row.prompt, tokenize=False, add_generation_prompt=True)
        full_text = self.processor.apply_chat_template(row.prompt + row.completion, tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ValueError(
                f"{where}: field 'prompt': the chat template renders the prompt differently with and without the "
                "completion, so the assistant tokens cannot be located"
            )
        # Train exactly what generation continues from the prompt: the completion is tokenized on its own, after
        # the prompt's tokens, and closed by the end-of-turn token (text after it, like a newline, is never generated).
        completion_text = full_text[len(prompt_text) :]
        cut = completion_text.rfind(self.end_token)
        completion_text = completion_text[: cut + len(self.end_token)] if cut >= 0 else completion_text.rstrip()
        if not completion_text.endswith(self.end_token):
            completion_text += self.end_token
        return prompt_text, completion_text

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        rows = [check_example(example, self.stage, position) for position, example in enumerate(examples)]
        names = [row_name(example, position) for position, example in enumerate(examples)]
        rendered = [self._render(row, name) for row, name in zip(rows, names)]

        # Prompts with their images in one processor call: it resizes the images (its image_scale) and expands every
        # image placeholder to its merged-patch run.
        images = [image for row in rows for image in row.images]
        prompt_batch = self.processor(
            text=[prompt for prompt, _ in rendered],
            images=images or None,
            padding=True,
            return_tensors="pt",
        )
        completions = self.processor.tokenizer([completion for _, completion in rendered], add_special_tokens=False)[
            "input_ids"
        ]

        sequences, label_rows = [], []
        for r, (completion_ids, name) in enumerate(zip(completions, names)):
            prompt_ids = prompt_batch["input_ids"][r][prompt_batch["attention_mask"][r].bool()]
            completion_ids = torch.tensor(completion_ids, dtype=torch.long)
            ids = torch.cat([prompt_ids, completion_ids])
            # Assistant tokens only, latent markers and the end token included; pads carry no token loss.
            labels = torch.cat(
                [
                    torch.full_like(prompt_ids, -100),
                    completion_ids.masked_fill(completion_ids == self.latent_pad_id, -100),
                ]
            )
            if self.max_length is not None and ids.numel() > self.max_length:
                dropped = ids[self.max_length :]
                if torch.isin(dropped, self._protected).any() or self.max_length <= prompt_ids.numel():
                    raise ValueError(
                        f"{name}: {ids.numel()} tokens exceed max_length={self.max_length}, and the cut would drop "
                        "an image or latent token or the whole completion; raise max_length (or set it to None)"
                    )
                ids, labels = ids[: self.max_length], labels[: self.max_length]
            sequences.append(ids)
            label_rows.append(labels)

        # Right padding, plus the left padding of `align_latent_blocks` (see the class docstring).
        offsets = [0] * len(sequences)
        if self.align_latent_blocks:
            starts = [(ids == self.latent_start_id).nonzero() for ids in sequences]
            columns = [int(found[0]) if found.numel() else None for found in starts]
            latest = max((c for c in columns if c is not None), default=0)
            offsets = [0 if c is None else latest - c for c in columns]
        length = max(offset + ids.numel() for offset, ids in zip(offsets, sequences))
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        labels = torch.full((len(sequences), length), -100, dtype=torch.long)
        for r, (offset, ids, row_labels) in enumerate(zip(offsets, sequences, label_rows)):
            span = slice(offset, offset + ids.numel())
            input_ids[r, span] = ids
            attention_mask[r, span] = 1
            labels[r, span] = row_labels

        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if images:
            batch["pixel_values"] = prompt_batch["pixel_values"]
            batch["image_grid_thw"] = prompt_batch["image_grid_thw"]
        if self.stage == 1 and any(row.helper_images for row in rows):
            # helper_pixel_values, helper_image_grid_thw, helper_image_counts: the same resize and processing as
            # the input images.
            batch.update(self.processor.process_helper_images([row.helper_images for row in rows]))
        return batch
