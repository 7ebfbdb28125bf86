"""The embedded tiny base: a random-weight Qwen2.5-VL-architecture checkpoint built offline.

No pretrained vision-language weights are reachable where this project runs, yet every path (conversion to
Mirage, the three training stages, generation, saving, loading, evaluation) must run end to end on a 2-core
CPU. `build_tiny_base` writes a checkpoint that is *shaped* like `Qwen/Qwen2.5-VL-7B-Instruct` in every way the
code can observe -- same model class, same processor classes, same special-token strings, same chat layout --
but with a byte-level BPE vocabulary of a couple of thousand tokens trained on the bundled tasks' texts and a
model of about a million parameters. Because it is an ordinary Hugging Face folder, code written against it
takes the real 7B checkpoint unchanged.

Typical use::

    from mirage_tiny import tiny_base_path
    base = tiny_base_path()  # built once per process, a few seconds
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base)
    processor = AutoProcessor.from_pretrained(base)
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (
    GenerationConfig,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

# The Qwen2.5-VL chat template (and its default system prompt) has one source, the Mirage processor's module, which
# derives the Mirage template from it; the tiny base ships the plain one.
from modeling_mirage.processing_mirage import DEFAULT_SYSTEM_PROMPT, QWEN_CHAT_TEMPLATE

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "QWEN_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS",
    "build_tiny_base",
    "build_tiny_tokenizer",
    "tiny_base_path",
]

# Added tokens of the stock Qwen2.5-VL tokenizer, in its order (stock ids 151643..151664), with its
# `special` flag. Keeping the order means the Mirage conversion appends `<|latent_pad|>`,
# `<|latent_start|>`, `<|latent_end|>` right after `<|file_sep|>` on the tiny base exactly as it does on stock
# Qwen. The latent tokens are deliberately absent: adding them is the conversion's job.
QWEN_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

# Qwen2's pre-tokenization split (contractions, letter runs with one leading non-letter, single digits,
# punctuation runs, newlines, spaces). The tiny tokenizer is trained with exactly the pipeline
# `Qwen2Tokenizer` rebuilds at load time from vocab + merges, so loading through that class is lossless.
_QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# The VSP move letters stay single tokens: no merge may produce a token that holds one, so a plan such as
# `\boxed{DLLU}` is one token per move (`{`, `D`, `L`, `L`, `U`, `}.`) instead of chunks like `{D`, `LL`, `U` whose
# split depends on the neighbours. Words holding these capitals (`Right`, `Up`) only lose a merge or two.
ATOMIC_LETTERS = "LDRU"

# Texts the chat template and the processor emit around every sample; trained into the vocabulary so the
# fixed scaffolding costs a handful of tokens rather than one per byte.
_SCAFFOLD_TEXTS: tuple[str, ...] = (
    f"system\n{DEFAULT_SYSTEM_PROMPT}\n",
    "user\n",
    "assistant\n",
    "Picture 1: Picture 2: Video 1: ",
)

# Pixel bounds of the image processor. One merged vision token covers 28x28 px (patch 14, merge 2); the
# training collator rescales VSP maps (64 px per cell) so that one cell is one merged token, which puts an
# 8x8 map at 224x224 px. Smaller images are scaled up to at least 2x2 merged tokens.
MIN_PIXELS = 56 * 56
MAX_PIXELS = 224 * 224


def _byte_level_bpe(texts: Sequence[str], vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE on `texts` and return its (vocab, merges).

    The 256 byte symbols are always in the vocabulary, so any string encodes without an unknown token.
    `tokenizers`' trainer breaks count ties deterministically, so the same texts give the same merges.
    """
    tokenizer = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a merge seen once only memorises one string of the corpus
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],  # appended afterwards, after the regular tokens as in stock Qwen
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Drop the merges that touch a letter of ATOMIC_LETTERS (a merge built on a dropped token holds the letter too,
    # so the rest stays closed), then renumber: byte symbols first, merge results in merge order, as trained.
    merges = [m for m in merges if not set(m[0] + m[1]) & set(ATOMIC_LETTERS)]
    results = {a + b for a, b in merges}
    kept = [t for t, _ in sorted(model["vocab"].items(), key=lambda item: item[1]) if len(t) == 1 or t in results]
    return {token: index for index, token in enumerate(kept)}, merges


def build_tiny_tokenizer(
    corpus: Sequence[str] | None = None, *, vocab_size: int = 2048, model_max_length: int = 4096
) -> Qwen2Tokenizer:
    """Build the tiny base's tokenizer: a byte-level BPE over the bundled tasks' texts plus Qwen's added tokens.

    Args:
        corpus: texts to learn merges from; defaults to `mirage_tasks.vocabulary_corpus()`.
        vocab_size: upper bound on regular (non-added) tokens, the 256 byte symbols included. A small corpus
            may stop short of it: merges seen only once are not learned, and none cross a word boundary.
        model_max_length: the length past which the tokenizer warns; the model's position range.

    Returns:
        A `Qwen2Tokenizer` with `eos_token="<|im_end|>"`, `pad_token="<|endoftext|>"`, no bos/unk token, and a
        Qwen2.5-VL chat template -- the same conventions as the stock Qwen2.5-VL tokenizer.
    """
    if corpus is None:
        import mirage_tasks  # deferred: the task suite is only needed when no corpus is given

        corpus = mirage_tasks.vocabulary_corpus()
    texts = [*corpus, *_SCAFFOLD_TEXTS]
    vocab, merges = _byte_level_bpe(texts, vocab_size)

    # `unk_token=None`: byte-level BPE has no unknowns, and stock Qwen has no unk token either.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,  # decode must return the exact text (stock Qwen sets it too)
        split_special_tokens=False,
        model_max_length=model_max_length,
    )
    # Qwen2Tokenizer registers `<|endoftext|>` itself (it is the eos/pad it was given); the rest follow in
    # stock order so the ids are len(vocab), len(vocab) + 1, ... as on stock Qwen.
    # Two calls because `add_tokens(special_tokens=True)` marks every token special; the special ones come first
    # in stock order, so the ids are unaffected.
    for flag in (True, False):
        tokenizer.add_tokens(
            [
                AddedToken(content, special=flag, normalized=False, lstrip=False, rstrip=False, single_word=False)
                for content, special in QWEN_SPECIAL_TOKENS
                if special == flag
            ],
            special_tokens=flag,
        )
    tokenizer.eos_token = "<|im_end|>"  # set after adding, so `<|im_end|>` keeps its stock position
    # Stock Qwen lists its special added tokens (all but `<|endoftext|>`) as extra special tokens.
    tokenizer.extra_special_tokens = [content for content, special in QWEN_SPECIAL_TOKENS[1:] if special]
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE

    ids = tokenizer.convert_tokens_to_ids([content for content, _ in QWEN_SPECIAL_TOKENS])
    expected = list(range(len(vocab), len(vocab) + len(QWEN_SPECIAL_TOKENS)))
    if ids != expected:  # the layout other code (and the Mirage conversion) relies on
        raise RuntimeError(f"Qwen added tokens landed on ids {ids}, expected {expected}")
    return tokenizer


def _mrope_section(head_dim: int) -> list[int]:
    """Split the rotary half-dimension into (temporal, height, width) sections in Qwen2.5-VL's 1:1.5:1.5 ratio.

    Stock Qwen2.5-VL uses [16, 24, 24] for head_dim 128; the sections must sum to head_dim / 2.
    """
    half = head_dim // 2
    spatial = (half - half // 4) // 2
    return [half - 2 * spatial, spatial, spatial]


def _build_config(
    tokenizer: Qwen2Tokenizer,
    *,
    hidden_size: int,
    num_layers: int,
    num_attention_heads: int,
    num_key_value_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    vision_depth: int,
    vision_hidden_size: int,
    vision_num_heads: int,
    vision_intermediate_size: int,
) -> Qwen2_5_VLConfig:
    """A `Qwen2_5_VLConfig` of the given sizes whose token ids are the tiny tokenizer's."""
    if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
        raise ValueError(
            f"hidden_size={hidden_size} must be divisible by num_attention_heads={num_attention_heads}, "
            f"and that by num_key_value_heads={num_key_value_heads}"
        )
    if vision_hidden_size % vision_num_heads:
        raise ValueError(f"vision_hidden_size={vision_hidden_size} must be divisible by {vision_num_heads} heads")
    head_dim = hidden_size // num_attention_heads
    token_id = {content: tokenizer.convert_tokens_to_ids(content) for content, _ in QWEN_SPECIAL_TOKENS}

    # In transformers 5.x bos/eos/pad live on the text config (Qwen2_5_VLTextConfig), the multimodal token ids
    # and `tie_word_embeddings` on the top-level config.
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads,
        "max_position_embeddings": max_position_embeddings,
        "max_window_layers": num_layers,
        "use_sliding_window": False,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(head_dim)},
        "bos_token_id": token_id["<|endoftext|>"],  # stock Qwen2.5-VL: bos id = <|endoftext|>, never prepended
        "eos_token_id": token_id["<|im_end|>"],
        "pad_token_id": token_id["<|endoftext|>"],
    }
    # 14-px patches, 2x2 merge, 2-frame temporal patches and 112-px attention windows as in stock Qwen2.5-VL,
    # so image preprocessing and the window/full attention schedule follow the same code paths. The last
    # block uses full attention, as the last of each stock group of eight does.
    vision_config = {
        "depth": vision_depth,
        "hidden_size": vision_hidden_size,
        "num_heads": vision_num_heads,
        "intermediate_size": vision_intermediate_size,
        "out_hidden_size": hidden_size,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [vision_depth - 1],
        "tokens_per_second": 2,
        "hidden_act": "silu",
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=token_id["<|image_pad|>"],
        video_token_id=token_id["<|video_pad|>"],
        vision_start_token_id=token_id["<|vision_start|>"],
        vision_end_token_id=token_id["<|vision_end|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )


def build_tiny_base(
    output_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    corpus: Sequence[str] | None = None,
    vocab_size: int = 2048,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 256,
    max_position_embeddings: int = 4096,
    vision_depth: int = 2,
    vision_hidden_size: int = 64,
    vision_num_heads: int = 2,
    vision_intermediate_size: int = 128,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
    overwrite: bool = False,
) -> str:
    """Write a tiny random-weight Qwen2.5-VL checkpoint (model, tokenizer, processor) to `output_dir`.

    Deterministic: the same arguments (and corpus) give the same files, weights bit for bit. Nothing is
    downloaded. The folder loads with `Qwen2_5_VLForConditionalGeneration.from_pretrained` and
    `AutoProcessor.from_pretrained`.

    Args:
        output_dir: destination folder. Must be missing or empty unless `overwrite`.
        seed: seed of the weight initialisation.
        corpus: texts for the tokenizer's merges; defaults to `mirage_tasks.vocabulary_corpus()`.
        vocab_size: upper bound on the BPE vocabulary (the Qwen added tokens come on top).
        hidden_size, num_layers, num_attention_heads, num_key_value_heads, intermediate_size,
            max_position_embeddings: the language model's sizes.
        vision_depth, vision_hidden_size, vision_num_heads, vision_intermediate_size: the vision tower's sizes
            (its merger projects to `hidden_size`).
        min_pixels, max_pixels: the image processor's pixel bounds.
        overwrite: replace a non-empty `output_dir`.

    Returns:
        `output_dir` as a string.

    Raises:
        FileExistsError: `output_dir` exists, is not empty, and `overwrite` is False.
    """
    output = Path(output_dir)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise FileExistsError(f"{output} exists and is not empty; pass overwrite=True (--overwrite) to replace it")

    tokenizer = build_tiny_tokenizer(corpus, vocab_size=vocab_size, model_max_length=max_position_embeddings)
    # The stock image and video processors, bounded so a VSP map costs at most 8x8 merged tokens.
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2),
        # `cap_pixels_per_frame`: the reference (qwen-vl-utils) per-frame budget, soon transformers' default.
        video_processor=Qwen2VLVideoProcessor(
            size=size, patch_size=14, temporal_patch_size=2, merge_size=2, cap_pixels_per_frame=True
        ),
        tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    config = _build_config(
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        vision_depth=vision_depth,
        vision_hidden_size=vision_hidden_size,
        vision_num_heads=vision_num_heads,
        vision_intermediate_size=vision_intermediate_size,
    )

    # Seed a private generator state: callers' global RNG streams are left as they were.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # Both end tokens stop generation, and padding is `<|endoftext|>`, as in stock Qwen's generation config.
    # Greedy by default: a random model gains nothing from stock Qwen's near-greedy sampling settings.
    text = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")],
        pad_token_id=text.pad_token_id,
    )

    # Write next to the destination, then move into place: a reader never sees a half-written folder, and
    # concurrent builders of the same cache entry cannot interleave files.
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex}"
    try:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        missing = [name for name in ("config.json", "model.safetensors") if not (staging / name).is_file()]
        if missing:  # transformers writes weights on rank 0 only once torch.distributed is initialised
            raise RuntimeError(
                f"building the tiny base wrote no {missing} on this process (rank "
                f"{os.environ.get('RANK', '?')}): under torch.distributed only the main process saves weights; "
                "build it there first into a shared cache_dir (trainers.model_setup does)"
            )
        if output.is_dir() and not any(output.iterdir()):
            output.rmdir()
        elif output.exists():
            if not overwrite:  # appeared while building (a concurrent builder)
                raise FileExistsError(f"{output} appeared while building; pass overwrite=True to replace it")
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(output)


# (cache_dir or None, seed) -> built folder, for the life of the process.
_BUILT: dict[tuple[str | None, int], str] = {}


def _fingerprint(seed: int) -> str:
    """A short hash of everything the default build depends on, naming cache entries so stale ones are skipped."""
    import mirage_tasks

    payload = json.dumps(
        {
            "seed": seed,
            "corpus": list(mirage_tasks.vocabulary_corpus()),
            "builder": Path(__file__).read_text(encoding="utf-8"),
            "chat_template": QWEN_CHAT_TEMPLATE,  # defined outside this file
            "versions": [transformers.__version__, tokenizers.__version__, torch.__version__],
        }
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def tiny_base_path(cache_dir: str | os.PathLike[str] | None = None, *, seed: int = 0) -> str:
    """Return the folder of the default tiny base, building it at most once per process.

    Meant for test fixtures and scripts' defaults: the first call builds (a few seconds), later calls return
    the same folder. Treat it as read-only: every caller in the process shares it.

    Args:
        cache_dir: where to keep the build. None: a temporary folder removed when the process exits. A path:
            a persistent cache shared between processes; the entry's name carries a fingerprint of the corpus,
            this file and the library versions, so a change rebuilds instead of reusing a stale base.
        seed: weight-initialisation seed.
    """
    key = (None if cache_dir is None else str(Path(cache_dir).resolve()), seed)
    if key in _BUILT and Path(_BUILT[key], "config.json").is_file():
        return _BUILT[key]
    if cache_dir is None:
        root = tempfile.mkdtemp(prefix="mirage-tiny-base-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        path = build_tiny_base(Path(root, "base"), seed=seed)
    else:
        target = Path(cache_dir, f"tiny-base-seed{seed}-{_fingerprint(seed)}")
        if not (target / "config.json").is_file():
            try:
                build_tiny_base(target, seed=seed)
            except (FileExistsError, OSError):
                # Another process finished the same entry first; its build is identical, so use it.
                if not (target / "config.json").is_file():
                    raise
        path = str(target)
    _BUILT[key] = path
    return path
