"""MirageProcessor: latent blocks in text and chat templates, the saved image resize, k against config.json."""

import json

import numpy
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from mirage_tiny import tiny_base_path
from modeling_mirage import LATENT_PLACEHOLDER, MirageProcessor, expand_latent_placeholders, latent_block
from modeling_mirage.processing_mirage import QWEN_CHAT_TEMPLATE, qwen_chat_template, scale_image


@pytest.fixture(scope="module")
def processor():
    return MirageProcessor.from_base(tiny_base_path(), latent_num_tokens=3)


def test_placeholders_expand_to_blocks_of_k_pads():
    block = "<|latent_start|>" + "<|latent_pad|>" * 4 + "<|latent_end|>"
    assert latent_block(4) == block
    assert expand_latent_placeholders(f"a{LATENT_PLACEHOLDER}b{LATENT_PLACEHOLDER}", 4) == f"a{block}b{block}"


def test_chat_template_renders_placeholders_and_latent_items_in_qwen_layout(processor):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Plan."}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "<think> look </think><output_image>"},
                {"type": "latent"},
                {"type": "text", "text": "\\boxed{R}"},
            ],
        },
    ]
    text = processor.apply_chat_template(messages, tokenize=False)
    block = processor.latent_block
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Plan.<|im_end|>\n"
        f"<|im_start|>assistant\n<think> look </think>{block}{block}\\boxed{{R}}<|im_end|>\n"
    )
    prompt = processor.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n") and text.startswith(prompt)


def test_call_expands_placeholders_and_each_latent_token_is_one_id(processor):
    image = Image.new("RGB", (56, 56))
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>x<|im_end|>\n<output_image>ok"
    ids = processor(text=[text], images=[image], return_tensors="pt")["input_ids"][0].tolist()
    assert ids.count(processor.latent_pad_token_id) == 3
    start = ids.index(processor.latent_start_token_id)
    assert ids[start : start + 5] == [processor.latent_start_token_id] + [processor.latent_pad_token_id] * 3 + [
        processor.latent_end_token_id
    ]


def test_decoded_blocks_turn_back_into_placeholders(processor):
    ids = processor.tokenizer(expand_latent_placeholders("a <output_image> b", 3))["input_ids"]
    decoded = processor.tokenizer.decode(ids, skip_special_tokens=False)
    assert processor.strip_latent_blocks(decoded) == "a <output_image> b"


def test_latent_num_tokens_must_be_positive():
    with pytest.raises(ValueError, match="latent_num_tokens must be >= 1"):
        MirageProcessor.from_base(tiny_base_path(), latent_num_tokens=0)


# ---- image_scale: the resize training applies, owned and saved by the processor -------------------------------------


def bicubic(image: Image.Image, scale: float) -> Image.Image:
    """The reference resize: RGB, each side rounded, bicubic."""
    size = (round(image.width * scale), round(image.height * scale))
    return image.convert("RGB").resize(size, Image.Resampling.BICUBIC)


def striped(width: int, height: int) -> Image.Image:
    """An image whose pixels all differ a little, so any change of resampling shows."""
    image = Image.new("RGB", (width, height))
    image.putdata([((x * 7) % 256, (y * 5) % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    return image


def test_image_scale_is_saved_and_restored(tmp_path):
    processor = MirageProcessor.from_base(tiny_base_path(), latent_num_tokens=3, image_scale=0.4375)
    processor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "processor_config.json").read_text())
    assert saved["image_scale"] == 0.4375 and saved["latent_num_tokens"] == 3
    reloaded = MirageProcessor.from_pretrained(tmp_path)
    assert reloaded.image_scale == 0.4375 and reloaded.latent_num_tokens == 3
    # Without a resize the field is saved as null and nothing is resized.
    plain = MirageProcessor.from_base(tiny_base_path(), image_scale=1)
    assert plain.image_scale is None


def test_call_resizes_images_by_image_scale_exactly_as_training_did():
    scaled = MirageProcessor.from_base(tiny_base_path(), latent_num_tokens=3, image_scale=0.4375)
    plain = MirageProcessor.from_base(tiny_base_path(), latent_num_tokens=3)
    images = [striped(256, 192), striped(128, 192).convert("RGBA")]
    text = ["<|vision_start|><|image_pad|><|vision_end|>a", "<|vision_start|><|image_pad|><|vision_end|>b"]
    ours = scaled(text=text, images=images, padding=True, return_tensors="pt")
    reference = plain(
        text=text, images=[bicubic(image, 0.4375) for image in images], padding=True, return_tensors="pt"
    )
    assert ours["image_grid_thw"].tolist() == [[1, 6, 8], [1, 6, 4]]  # 112 x 84 px, 56 x 84 px
    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"):
        assert torch.equal(ours[key], reference[key]), key
    # Arrays are resized like PIL images; a side never rounds down to nothing.
    array = numpy.asarray(images[0])
    assert torch.equal(
        scaled(text=text[:1], images=[array], return_tensors="pt")["pixel_values"], ours["pixel_values"][:48]
    )
    assert scale_image(striped(3, 40), 0.1).size == (1, 4)
    assert scale_image(images[0], None) is images[0]


def test_helper_images_get_the_same_resize_and_per_row_counts():
    processor = MirageProcessor.from_base(tiny_base_path(), latent_num_tokens=3, image_scale=0.4375)
    helpers = [[striped(128, 128)], [], [striped(192, 192), striped(64, 128)]]
    out = processor.process_helper_images(helpers)
    flat = [bicubic(image, 0.4375) for row in helpers for image in row]
    reference = processor.image_processor(images=flat, return_tensors="pt")
    assert torch.equal(out["helper_pixel_values"], reference["pixel_values"])
    assert torch.equal(out["helper_image_grid_thw"], reference["image_grid_thw"])
    assert out["helper_image_counts"].tolist() == [1, 0, 2]
    assert "helper_image_counts" not in processor.process_helper_images(helpers[2])  # a flat list: no rows
    with pytest.raises(ValueError, match="got no images"):
        processor.process_helper_images([[], []])


@pytest.mark.parametrize("bad", [0, -0.5, "0.5", True])
def test_image_scale_must_be_positive(bad):
    with pytest.raises(ValueError, match="image_scale must be a number > 0 or None"):
        MirageProcessor.from_base(tiny_base_path(), image_scale=bad)


# ---- k of the processor against the model's config.json -------------------------------------------------------------


def test_from_pretrained_refuses_a_folder_whose_config_has_another_k(processor, tmp_path):
    processor.save_pretrained(tmp_path)  # k = 3
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mirage", "latent_num_tokens": 4}))
    message = rf"{tmp_path}: the model config has latent_num_tokens=4 but the processor has latent_num_tokens=3"
    with pytest.raises(ValueError, match=message):
        MirageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    # Same k, or a config of another model type: loads.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mirage", "latent_num_tokens": 3}))
    assert MirageProcessor.from_pretrained(tmp_path).latent_num_tokens == 3
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert MirageProcessor.from_pretrained(tmp_path).latent_num_tokens == 3


# ---- one source of the Qwen chat layout -------------------------------------------------------------------------------


def test_mirage_template_is_the_qwen_template_plus_latent_blocks(processor):
    conversations = [
        [{"role": "user", "content": "Plan the route."}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}, {"type": "video"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "There."}]},
        ],
    ]
    for messages in conversations:
        for options in ({}, {"add_generation_prompt": True}, {"add_vision_id": True}):
            mirage = processor.apply_chat_template(messages, tokenize=False, **options)
            qwen = processor.apply_chat_template(messages, chat_template=QWEN_CHAT_TEMPLATE, tokenize=False, **options)
            assert mirage == qwen
    assert qwen_chat_template() == QWEN_CHAT_TEMPLATE
    # What only the Mirage template does: latent blocks, and text parts without text (as `datasets` fills them).
    parts = [{"type": "text", "text": None}, {"type": "latent"}, {"type": "text", "text": "x<output_image>"}]
    messages = [{"role": "user", "content": parts}]
    assert processor.apply_chat_template(messages, tokenize=False).endswith(
        f"<|im_start|>user\n{processor.latent_block}x{processor.latent_block}<|im_end|>\n"
    )
