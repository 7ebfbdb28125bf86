"""Configuration of Mirage models: a Qwen2.5-VL configuration plus the latent visual token settings.

Mirage ("Machine Mental Imagery", arXiv 2506.17218) lets the language model "think visually": inside a latent block
`<|latent_start|> <|latent_pad|> x k <|latent_end|>` every pad position is fed the model's own last hidden state
(after the final norm) from the previous position instead of a token embedding. All latent settings live in fields
prefixed `latent_` so they never collide with Qwen2.5-VL's own.
"""

from transformers import Qwen2_5_VLConfig

# Names and stock Qwen2.5-VL ids of the three added tokens. The official checkpoints add them in this order, so these
# ids hold for any checkpoint converted from the stock Qwen2.5-VL tokenizer; other tokenizers get their own ids.
LATENT_PAD_TOKEN = "<|latent_pad|>"
LATENT_START_TOKEN = "<|latent_start|>"
LATENT_END_TOKEN = "<|latent_end|>"
LATENT_TOKENS = (LATENT_PAD_TOKEN, LATENT_START_TOKEN, LATENT_END_TOKEN)

LATENT_POOLING_RULES = ("chunk_mean",)
LATENT_END_RULES = ("fixed", "predicted", "official")

DEFAULT_AUTO_MAP = {
    "AutoConfig": "configuration_mirage.MirageConfig",
    "AutoModel": "modeling_mirage.MirageForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_mirage.MirageForConditionalGeneration",
}


class MirageConfig(Qwen2_5_VLConfig):
    r"""
    Configuration of [`MirageForConditionalGeneration`]: everything of [`Qwen2_5_VLConfig`] plus

    latent_num_tokens (`int`, defaults to 4):
        k, the number of latent visual tokens (`<|latent_pad|>` positions) in one latent block.
    latent_pad_token_id (`int`, defaults to 151665):
        Id of `<|latent_pad|>`, the token recorded at every latent position.
    latent_start_token_id (`int`, defaults to 151666):
        Id of `<|latent_start|>`, which opens a latent block.
    latent_end_token_id (`int`, defaults to 151667):
        Id of `<|latent_end|>`, which closes a latent block.
    latent_max_tokens (`int`, defaults to 16):
        Cap on the pads of one block when generation lets the model decide where a block ends
        (`latent_end_rule="predicted"` or `"official"`). Must be at least `latent_num_tokens`. The official test
        script closes a block after 8 pads: set 8 to decode an official checkpoint as it does.
    latent_end_rule (`str`, defaults to `"fixed"`):
        How `generate` closes a block: `"fixed"` emits `<|latent_end|>` after exactly `latent_num_tokens` pads (the
        paper's setting); `"predicted"` lets the model choose between another pad and `<|latent_end|>` at every
        latent step, up to `latent_max_tokens` pads; `"official"` decodes as the official test script does: the model
        picks among all tokens, `<|latent_end|>` closes the block and any other token is recorded as a pad, up to
        `latent_max_tokens` pads.
    latent_pooling (`str`, defaults to `"chunk_mean"`):
        How stage-1 targets are made from a helper image: the merged vision-tower output (LLM width, raster order) is
        trimmed to a multiple of k, split into k contiguous chunks and each chunk is mean-pooled.
    """

    model_type = "mirage"

    latent_num_tokens: int = 4
    latent_pad_token_id: int = 151665
    latent_start_token_id: int = 151666
    latent_end_token_id: int = 151667
    latent_max_tokens: int = 16
    latent_end_rule: str = "fixed"
    latent_pooling: str = "chunk_mean"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(DEFAULT_AUTO_MAP)
        self.check_latent_fields()

    def check_latent_fields(self) -> None:
        """Raise a `ValueError` naming the field when a latent setting is out of range."""
        if self.latent_num_tokens < 1:
            raise ValueError(f"MirageConfig.latent_num_tokens must be >= 1, got {self.latent_num_tokens}")
        if self.latent_max_tokens < self.latent_num_tokens:
            raise ValueError(
                f"MirageConfig.latent_max_tokens ({self.latent_max_tokens}) must be >= latent_num_tokens "
                f"({self.latent_num_tokens})"
            )
        if self.latent_pooling not in LATENT_POOLING_RULES:
            raise ValueError(
                f"MirageConfig.latent_pooling must be one of {LATENT_POOLING_RULES}, got {self.latent_pooling!r}"
            )
        if self.latent_end_rule not in LATENT_END_RULES:
            raise ValueError(
                f"MirageConfig.latent_end_rule must be one of {LATENT_END_RULES}, got {self.latent_end_rule!r}"
            )
        ids = (self.latent_pad_token_id, self.latent_start_token_id, self.latent_end_token_id)
        if len(set(ids)) != 3:
            raise ValueError(f"MirageConfig: the three latent token ids must differ, got pad/start/end = {ids}")

    @property
    def latent_token_ids(self) -> tuple[int, int, int]:
        """`(pad, start, end)` ids."""
        return self.latent_pad_token_id, self.latent_start_token_id, self.latent_end_token_id


__all__ = ["MirageConfig"]
