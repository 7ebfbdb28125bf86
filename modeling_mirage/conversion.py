"""One-time conversion of a Qwen2.5-VL checkpoint into a Mirage model: `MirageForConditionalGeneration.from_base`.

Not part of the Hub remote-code payload: a saved Mirage folder never needs it, so no payload file imports it and it
does not travel with `save_pretrained`. Importing the `modeling_mirage` package attaches [`from_base`] to
`MirageForConditionalGeneration` as a class method, so local users call `MirageForConditionalGeneration.from_base(...)`
as before; the class a Hub folder loads through `trust_remote_code` has no `from_base`.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoTokenizer

from .configuration_mirage import LATENT_TOKENS, MirageConfig
from .processing_mirage import MirageProcessor

DEFAULT_LATENT_NUM_TOKENS = 4
"""k when neither `latent_num_tokens` nor a processor says otherwise (the paper's setting)."""


def from_base(cls, pretrained_model_name_or_path, latent_num_tokens: int | None = None, processor=None, **kwargs):
    """Turn a Qwen2.5-VL checkpoint (folder or Hub id) into a Mirage model of class `cls`.

    `processor` is the matching [`MirageProcessor`] (built with `MirageProcessor.from_base` when not given); its
    tokenizer fixes the latent token ids and its `latent_num_tokens` the block length k. `latent_num_tokens` defaults
    to the processor's k (4 without a processor); a value that differs from the processor's is refused, because the
    model and the processor saved with it would then write and read blocks of different lengths. For a stock
    checkpoint the three new tokens get embedding and LM-head rows set to the mean of the existing rows (the matrices
    grow only when they have no spare rows); every other weight is kept bit for bit. An official Mirage checkpoint
    already has the tokens: their trained rows are kept. `kwargs` go to `from_pretrained` (`dtype`, `device_map`,
    `revision`, ...).
    """
    latent_num_tokens = _agreed_latent_num_tokens(latent_num_tokens, processor)
    hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
    base_config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
    if base_config.model_type not in ("qwen2_5_vl", "mirage"):
        raise ValueError(
            f"{pretrained_model_name_or_path!r} is a {base_config.model_type!r} checkpoint; Mirage converts "
            "Qwen2.5-VL checkpoints (model_type 'qwen2_5_vl')"
        )
    if processor is None:
        processor = MirageProcessor.from_base(pretrained_model_name_or_path, latent_num_tokens, **hub_kwargs)
    tokenizer = processor.tokenizer
    vocab = tokenizer.get_vocab()
    pad_id, start_id, end_id = (vocab[t] for t in LATENT_TOKENS)
    already_trained = _tokens_in_base(pretrained_model_name_or_path, hub_kwargs)

    config_dict = base_config.to_dict()
    for key in ("model_type", "auto_map", "architectures", "transformers_version"):
        config_dict.pop(key, None)
    config_dict.update(
        latent_num_tokens=latent_num_tokens,
        latent_pad_token_id=pad_id,
        latent_start_token_id=start_id,
        latent_end_token_id=end_id,
    )
    config = MirageConfig(**config_dict)
    model = cls.from_pretrained(pretrained_model_name_or_path, config=config, **kwargs)
    if not already_trained:
        _init_new_token_rows(model, [pad_id, start_id, end_id], len(tokenizer))
    return model


def _agreed_latent_num_tokens(latent_num_tokens: int | None, processor) -> int:
    """k for the new model: the caller's, the processor's, or the default; refuses a caller's k the processor lacks."""
    processor_k = processor.latent_num_tokens if processor is not None else None
    if latent_num_tokens is None:
        return processor_k if processor_k is not None else DEFAULT_LATENT_NUM_TOKENS
    if processor_k is not None and processor_k != latent_num_tokens:
        raise ValueError(
            f"from_base got latent_num_tokens={latent_num_tokens} but the processor writes latent blocks of "
            f"latent_num_tokens={processor_k}: build the processor with "
            f"MirageProcessor.from_base(..., latent_num_tokens={latent_num_tokens}), or leave latent_num_tokens out to "
            f"take the processor's {processor_k}"
        )
    return latent_num_tokens


@torch.no_grad()
def _init_new_token_rows(model, new_ids: list[int], vocab_size: int) -> None:
    """Give new token ids embedding and LM-head rows equal to the mean of the rows before them (growing the matrices
    only if they are too small); all existing rows stay bit-exact."""
    first_new = min(new_ids)
    if model.get_input_embeddings().num_embeddings < vocab_size:
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        mean = weight[:first_new].float().mean(dim=0).to(weight.dtype)
        weight[new_ids] = mean


def _tokens_in_base(path, hub_kwargs) -> bool:
    """Whether the checkpoint's own tokenizer already has the latent tokens (an official Mirage checkpoint)."""
    try:
        vocab = AutoTokenizer.from_pretrained(path, **hub_kwargs).get_vocab()
    except (OSError, ValueError):
        return False
    return all(t in vocab for t in LATENT_TOKENS)


__all__ = ["DEFAULT_LATENT_NUM_TOKENS", "from_base"]
