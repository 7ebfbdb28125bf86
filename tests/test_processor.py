"""MirageProcessor: latent blocks in text and chat templates."""

import pytest
from PIL import Image

from mirage_tiny import tiny_base_path
from modeling_mirage import LATENT_PLACEHOLDER, MirageProcessor, expand_latent_placeholders, latent_block


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
