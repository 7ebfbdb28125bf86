"""Processor of Mirage models: the stock Qwen2.5-VL processor plus the three latent tokens and latent blocks.

A latent block in assistant text is `<|latent_start|>` + k x `<|latent_pad|>` + `<|latent_end|>`. Datasets in the
official Mirage format mark where a block goes with the placeholder `<output_image>`; `expand_latent_placeholders`
and the chat template turn each placeholder (or a `{"type": "latent"}` content item) into a block of k pads.

The processor also owns the resize a model was trained with (`image_scale`, saved in `processor_config.json`): it is
applied to input images in `__call__` and to helper images in `process_helper_images`, so a processor loaded from a
saved folder feeds the model images of the size it was trained on.
"""

import json
import os
import re

from transformers import AutoProcessor, BatchFeature, Qwen2_5_VLProcessor
from transformers.image_transforms import to_pil_image
from transformers.image_utils import PILImageResampling, load_image
from transformers.utils import cached_file

from .configuration_mirage import LATENT_END_TOKEN, LATENT_PAD_TOKEN, LATENT_START_TOKEN, LATENT_TOKENS

# The official Mirage data marks the helper image's place in `text_output` with this string.
LATENT_PLACEHOLDER = "<output_image>"

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


def qwen_chat_template(preamble: str = "", text_filter: str = "", extra_parts: str = "") -> str:
    """Qwen2.5-VL's chat template, with optional hooks to extend it.

    The layout: a default system turn when the first message is not a system message; `<|im_start|>role\\n...
    <|im_end|>\\n` per turn; content either a string or a list of parts where an image part becomes
    `<|vision_start|><|image_pad|><|vision_end|>` (the processor expands the pad to one run per image), a video part
    the same with `<|video_pad|>`, and a text part its text; optional "Picture n: " prefixes with `add_vision_id`;
    `add_generation_prompt` opens an assistant turn. Without arguments this is the plain Qwen template.

    Args:
        preamble: Jinja statements put before the layout (e.g. `{% set ... %}`).
        text_filter: a Jinja filter chain applied to every piece of text (string content and text parts).
        extra_parts: `{% elif ... %}` branches tried after the image and video parts and before text parts.
    """
    return (
        preamble + "{% set ns = namespace(images=0, videos=0) %}"
        "{% for message in messages %}"
        "{% if loop.first and message['role'] != 'system' %}"
        "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
        "{% endif %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}"
        "{{ message['content']" + text_filter + " }}"
        "{% else %}"
        "{% for part in message['content'] %}"
        "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
        "{% set ns.images = ns.images + 1 %}"
        "{% if add_vision_id %}Picture {{ ns.images }}: {% endif %}"
        "<|vision_start|><|image_pad|><|vision_end|>"
        "{% elif part['type'] == 'video' or 'video' in part %}"
        "{% set ns.videos = ns.videos + 1 %}"
        "{% if add_vision_id %}Video {{ ns.videos }}: {% endif %}"
        "<|vision_start|><|video_pad|><|vision_end|>" + extra_parts + "{% elif 'text' in part %}"
        "{{ part['text']" + text_filter + " }}"
        "{% endif %}"
        "{% endfor %}"
        "{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        "<|im_start|>assistant\n"
        "{% endif %}"
    )


# The stock Qwen2.5-VL chat template (the tiny base ships it).
QWEN_CHAT_TEMPLATE = qwen_chat_template()

# The Qwen template that also renders latent blocks: `{"type": "latent"}` parts and `<output_image>` placeholders in
# text both become `<|latent_start|>` + k pads + `<|latent_end|>`; k comes from the `latent_num_tokens` variable.
# Text parts whose text is None (what `datasets` stores for a key another part has) render as nothing.
MIRAGE_CHAT_TEMPLATE = qwen_chat_template(
    preamble="{% set k = latent_num_tokens | default(4) %}"
    "{% set latent_block = '<|latent_start|>' + '<|latent_pad|>' * k + '<|latent_end|>' %}",
    text_filter=" | replace('" + LATENT_PLACEHOLDER + "', latent_block)",
    extra_parts="{% elif part['type'] == 'latent' %}{{ latent_block }}{% elif part['text'] is none %}",
)


def latent_block(num_tokens: int) -> str:
    """The text of one latent block with `num_tokens` pads."""
    return LATENT_START_TOKEN + LATENT_PAD_TOKEN * num_tokens + LATENT_END_TOKEN


def expand_latent_placeholders(text: str, num_tokens: int) -> str:
    """Replace every official `<output_image>` placeholder in `text` by a latent block of `num_tokens` pads."""
    return text.replace(LATENT_PLACEHOLDER, latent_block(num_tokens))


def check_image_scale(image_scale) -> float | None:
    """`image_scale` as the processor stores it: None for no resize (None or 1), else a float > 0; a `ValueError`
    otherwise."""
    if image_scale is None:
        return None
    if isinstance(image_scale, bool) or not isinstance(image_scale, (int, float)) or not image_scale > 0:
        raise ValueError(f"image_scale must be a number > 0 or None, got {image_scale!r}")
    return None if image_scale == 1 else float(image_scale)


def scale_image(image, scale: float | None):
    """`image` resized by `scale` as Mirage training does it: converted to RGB, each side `round(side * scale)` (at
    least 1 px), bicubic. None or 1 returns `image` untouched. Takes a PIL image, an array/tensor or a path/URL and
    returns a PIL image."""
    if scale is None or scale == 1:
        return image
    image = load_image(image) if isinstance(image, str) else to_pil_image(image)
    image = image.convert("RGB")
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    return image.resize((width, height), PILImageResampling.BICUBIC)


def _scale_images(images, scale: float | None):
    """`images` (one image, or lists of them, nested as the processor accepts) with every image scaled."""
    if scale is None or images is None:
        return images
    if isinstance(images, (list, tuple)):
        return [_scale_images(image, scale) for image in images]
    return scale_image(images, scale)


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


def check_latent_num_tokens_match(config, processor, where: str) -> None:
    """Raise a `ValueError` if a Mirage model config (an object or the `config.json` dict) and `processor` disagree on
    k (`latent_num_tokens`). Configs of other model types are not checked."""
    get = config.get if isinstance(config, dict) else lambda name: getattr(config, name, None)
    if get("model_type") != "mirage" or get("latent_num_tokens") is None:
        return
    if get("latent_num_tokens") != processor.latent_num_tokens:
        raise ValueError(
            f"{where}: the model config has latent_num_tokens={get('latent_num_tokens')} but the processor has "
            f"latent_num_tokens={processor.latent_num_tokens}; the processor would write latent blocks of another "
            "length than the model reads. Save the processor that was converted with the model (k is fixed at "
            "conversion)"
        )


class MirageProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor (image processor, tokenizer, video processor) that knows Mirage's latent tokens.

    Besides everything `Qwen2_5_VLProcessor` does, it expands official `<output_image>` placeholders into latent
    blocks of `latent_num_tokens` pads, both in plain text passed to `__call__` and through its chat template, and
    resizes every input and helper image by `image_scale` before the image processor sees it. Both settings are
    saved in `processor_config.json`. Build one from a Qwen2.5-VL checkpoint with [`MirageProcessor.from_base`].

    Args:
        latent_num_tokens: k, the pads per latent block; must equal the model's `config.latent_num_tokens`.
        image_scale: resize factor for input and helper images (bicubic, sides rounded; see [`scale_image`]), or None
            to keep their size. 0.4375 makes one 64-px VSP map cell one 28-px merged vision token.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        chat_template=None,
        latent_num_tokens=4,
        image_scale=None,
        **kwargs,
    ):
        if latent_num_tokens < 1:
            raise ValueError(f"latent_num_tokens must be >= 1, got {latent_num_tokens}")
        self.latent_num_tokens = latent_num_tokens
        self.image_scale = check_image_scale(image_scale)
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
        """`Qwen2_5_VLProcessor.__call__` with placeholders expanded in `text` and `images` resized by `image_scale`."""
        if isinstance(text, str):
            text = self.expand_latent_placeholders(text)
        elif isinstance(text, (list, tuple)):
            text = [self.expand_latent_placeholders(t) for t in text]
        images = _scale_images(images, self.image_scale)
        return super().__call__(images=images, text=text, videos=videos, **kwargs)

    def process_helper_images(self, helper_images, return_tensors="pt", **kwargs) -> BatchFeature:
        """Stage-1 model inputs for helper images, resized by `image_scale` and processed like input images.

        Args:
            helper_images: a list of images (all rows' blocks in order), or one list per row.
            return_tensors, kwargs: passed to the image processor.

        Returns:
            `helper_pixel_values` and `helper_image_grid_thw`, plus `helper_image_counts` (images per row) when given
            one list per row: the keyword arguments `MirageForConditionalGeneration.forward` takes.
        """
        per_row = all(isinstance(row, (list, tuple)) for row in helper_images) and len(helper_images) > 0
        flat = [image for row in helper_images for image in row] if per_row else list(helper_images)
        if not flat:
            raise ValueError("process_helper_images got no images")
        processed = self.image_processor(
            images=_scale_images(flat, self.image_scale), return_tensors=return_tensors, **kwargs
        )
        data = {
            "helper_pixel_values": processed["pixel_values"],
            "helper_image_grid_thw": processed["image_grid_thw"],
        }
        if per_row:
            data["helper_image_counts"] = [len(row) for row in helper_images]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def apply_chat_template(self, conversation, chat_template=None, **kwargs):
        kwargs.setdefault("latent_num_tokens", self.latent_num_tokens)
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    def strip_latent_blocks(self, text: str, replacement: str = LATENT_PLACEHOLDER) -> str:
        """Turn decoded latent blocks (any number of pads) back into `replacement` (the official placeholder)."""
        pattern = re.escape(LATENT_START_TOKEN) + f"(?:{re.escape(LATENT_PAD_TOKEN)})*" + re.escape(LATENT_END_TOKEN)
        return re.sub(pattern, replacement, text)

    @classmethod
    def from_base(
        cls, pretrained_model_name_or_path, latent_num_tokens: int = 4, image_scale: float | None = None, **kwargs
    ) -> "MirageProcessor":
        """Build a Mirage processor from a Qwen2.5-VL checkpoint (local folder or Hub id).

        The three latent tokens are added as special tokens in the order pad, start, end (ids 151665-151667 on the
        stock Qwen2.5-VL tokenizer). An official Mirage checkpoint already has them: they are reused, never added
        twice. The chat template becomes the Mirage template (Qwen2.5-VL layout plus latent blocks). `latent_num_tokens`
        and `image_scale` become the processor's settings (see the class docstring).
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
            image_scale=image_scale,
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "MirageProcessor":
        """`ProcessorMixin.from_pretrained`, refusing a folder whose `config.json` (when it has one) is a Mirage model
        config with another `latent_num_tokens` than the processor's: the model would read blocks of another length
        than the processor writes."""
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if os.path.isfile(pretrained_model_name_or_path):  # a processor_config.json given directly: no folder
            return processor
        hub_kwargs = {
            key: kwargs[key] for key in ("cache_dir", "revision", "token", "local_files_only") if key in kwargs
        }
        config_file = cached_file(
            pretrained_model_name_or_path,
            "config.json",
            subfolder=kwargs.get("subfolder", ""),
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
        if config_file is not None:
            with open(config_file, encoding="utf-8") as handle:
                config = json.load(handle)
            check_latent_num_tokens_match(config, processor, str(pretrained_model_name_or_path))
        return processor


MirageProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "MirageProcessor",
    "DEFAULT_SYSTEM_PROMPT",
    "LATENT_PLACEHOLDER",
    "MIRAGE_CHAT_TEMPLATE",
    "QWEN_CHAT_TEMPLATE",
    "check_latent_num_tokens_match",
    "expand_latent_placeholders",
    "latent_block",
    "qwen_chat_template",
    "scale_image",
]
