"""Processor of Mirage models: the stock Qwen2.5-VL processor plus the three latent tokens and latent blocks.

A latent block in assistant text is `<|latent_start|>` + k x `<|latent_pad|>` + `<|latent_end|>`. Datasets in the
official Mirage format mark where a block goes with the placeholder `<output_image>`; `expand_latent_placeholders`
and the chat template turn each placeholder (or a `{"type": "latent"}` content item) into a block of k pads.
"""

import re

from transformers import AutoProcessor, Qwen2_5_VLProcessor

from .configuration_mirage import LATENT_END_TOKEN, LATENT_PAD_TOKEN, LATENT_START_TOKEN, LATENT_TOKENS

# The official Mirage data marks the helper image's place in `text_output` with this string.
LATENT_PLACEHOLDER = "<output_image>"

# Qwen2.5-VL's conversation layout (default system prompt, <|im_start|>role ... <|im_end|>, images and videos as
# vision-pad runs) that also renders latent blocks: `{"type": "latent"}` items and `<output_image>` placeholders in
# text both become `<|latent_start|>` + k pads + `<|latent_end|>`; k comes from the `latent_num_tokens` variable.
MIRAGE_CHAT_TEMPLATE = (
    "{% set k = latent_num_tokens | default(4) %}"
    "{% set latent_block = '<|latent_start|>' + '<|latent_pad|>' * k + '<|latent_end|>' %}"
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}"
    "{{ message['content'] | replace('<output_image>', latent_block) }}"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Picture ' + image_count.value | string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}{{ 'Video ' + video_count.value | string + ': ' }}{% endif %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif content['type'] == 'latent' %}"
    "{{ latent_block }}"
    "{% elif content['text'] is not none %}"
    "{{ content['text'] | replace('<output_image>', latent_block) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def latent_block(num_tokens: int) -> str:
    """The text of one latent block with `num_tokens` pads."""
    return LATENT_START_TOKEN + LATENT_PAD_TOKEN * num_tokens + LATENT_END_TOKEN


def expand_latent_placeholders(text: str, num_tokens: int) -> str:
    """Replace every official `<output_image>` placeholder in `text` by a latent block of `num_tokens` pads."""
    return text.replace(LATENT_PLACEHOLDER, latent_block(num_tokens))


def check_latent_token_ids(tokenizer) -> tuple[int, int, int]:
    """Return the `(pad, start, end)` ids of a tokenizer that has the three latent tokens, or raise a `ValueError`.

    The tokens must sit at the end of the vocabulary, consecutive, in the order pad, start, end: that is where the
    official Mirage checkpoints and `from_base` put them (151665-151667 on the stock Qwen2.5-VL tokenizer). Anything
    else means the tokenizer and a checkpoint's embedding rows would disagree about what the ids mean.
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in LATENT_TOKENS if t not in vocab]
    if missing:
        raise ValueError(
            f"the tokenizer lacks the latent tokens {missing}; convert a Qwen2.5-VL checkpoint with "
            "`MirageProcessor.from_base(...)` to add them"
        )
    ids = tuple(vocab[t] for t in LATENT_TOKENS)
    size = len(tokenizer)
    expected = (size - 3, size - 2, size - 1)
    if ids != expected:
        found = ", ".join(f"{t}={i}" for t, i in zip(LATENT_TOKENS, ids))
        raise ValueError(
            f"the latent tokens exist with unexpected ids ({found}); expected {expected[0]}, {expected[1]}, "
            f"{expected[2]} (the last three ids of a {size}-token vocabulary, in the order pad, start, end)"
        )
    return ids


class MirageProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor (image processor, tokenizer, video processor) that knows Mirage's latent tokens.

    Besides everything `Qwen2_5_VLProcessor` does, it expands official `<output_image>` placeholders into latent
    blocks of `latent_num_tokens` pads, both in plain text passed to `__call__` and through its chat template.
    Build one from a Qwen2.5-VL checkpoint with [`MirageProcessor.from_base`].
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        chat_template=None,
        latent_num_tokens=4,
        **kwargs,
    ):
        if latent_num_tokens < 1:
            raise ValueError(f"latent_num_tokens must be >= 1, got {latent_num_tokens}")
        self.latent_num_tokens = latent_num_tokens
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template, **kwargs)
        pad, start, end = check_latent_token_ids(self.tokenizer)
        self.latent_pad_token_id, self.latent_start_token_id, self.latent_end_token_id = pad, start, end

    @property
    def latent_block(self) -> str:
        """The text of one latent block (`<|latent_start|>` + k pads + `<|latent_end|>`)."""
        return latent_block(self.latent_num_tokens)

    def expand_latent_placeholders(self, text: str) -> str:
        """Replace every official `<output_image>` placeholder in `text` by a latent block of k pads."""
        return expand_latent_placeholders(text, self.latent_num_tokens)

    def __call__(self, images=None, text=None, videos=None, **kwargs):
        if isinstance(text, str):
            text = self.expand_latent_placeholders(text)
        elif isinstance(text, (list, tuple)):
            text = [self.expand_latent_placeholders(t) for t in text]
        return super().__call__(images=images, text=text, videos=videos, **kwargs)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        kwargs.setdefault("latent_num_tokens", self.latent_num_tokens)
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    def strip_latent_blocks(self, text: str, replacement: str = LATENT_PLACEHOLDER) -> str:
        """Turn decoded latent blocks (any number of pads) back into `replacement` (the official placeholder)."""
        pattern = re.escape(LATENT_START_TOKEN) + f"(?:{re.escape(LATENT_PAD_TOKEN)})*" + re.escape(LATENT_END_TOKEN)
        return re.sub(pattern, replacement, text)

    @classmethod
    def from_base(cls, pretrained_model_name_or_path, latent_num_tokens: int = 4, **kwargs) -> "MirageProcessor":
        """Build a Mirage processor from a Qwen2.5-VL checkpoint (local folder or Hub id).

        The three latent tokens are added as special tokens in the order pad, start, end (ids 151665-151667 on the
        stock Qwen2.5-VL tokenizer). An official Mirage checkpoint already has them: they are reused, never added
        twice. The chat template becomes the Mirage template (Qwen2.5-VL layout plus latent blocks).
        """
        base = AutoProcessor.from_pretrained(pretrained_model_name_or_path, **kwargs)
        if not isinstance(base, Qwen2_5_VLProcessor):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} holds a {type(base).__name__}, not a Qwen2.5-VL processor; "
                "Mirage builds on Qwen2.5-VL checkpoints"
            )
        tokenizer = base.tokenizer
        vocab = tokenizer.get_vocab()
        present = [t for t in LATENT_TOKENS if t in vocab]
        if not present:
            tokenizer.add_tokens(list(LATENT_TOKENS), special_tokens=True)
        elif len(present) != len(LATENT_TOKENS):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} has only some latent tokens ({present}); expected all of "
                f"{list(LATENT_TOKENS)} or none"
            )
        check_latent_token_ids(tokenizer)
        return cls(
            image_processor=base.image_processor,
            tokenizer=tokenizer,
            video_processor=base.video_processor,
            chat_template=MIRAGE_CHAT_TEMPLATE,
            latent_num_tokens=latent_num_tokens,
        )


MirageProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "MirageProcessor",
    "LATENT_PLACEHOLDER",
    "MIRAGE_CHAT_TEMPLATE",
    "expand_latent_placeholders",
    "latent_block",
]
