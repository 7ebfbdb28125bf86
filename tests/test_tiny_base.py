"""The embedded tiny base loads like a stock Qwen2.5-VL checkpoint, reloads exactly, builds deterministically,
stops generating at its own end tokens and tokenizes the task texts losslessly."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

import mirage_tasks
from mirage_tiny import QWEN_SPECIAL_TOKENS, build_tiny_base, tiny_base_path
from mirage_tiny import base as tiny_base

REPO = Path(__file__).resolve().parents[1]
LATENT_TOKENS = ("<|latent_pad|>", "<|latent_start|>", "<|latent_end|>")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh build of the default tiny base (seed 0), shared by this module's tests."""
    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "base", seed=0)


@pytest.fixture(scope="module")
def model(base: str) -> Qwen2_5_VLForConditionalGeneration:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(base).eval()


@pytest.fixture(scope="module")
def processor(base: str) -> Qwen2_5_VLProcessor:
    return AutoProcessor.from_pretrained(base)


def _image_message(text: str, size: int = 512) -> list[dict]:
    """One user turn with an image (an 8x8 map at 64 px per cell is 512 px) and a text part."""
    image = Image.new("RGB", (size, size), (40, 120, 200))
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def _planning_prompt() -> str:
    """The VSP spatial-planning prompt as the task suite writes it (the longest text a planning sample carries)."""
    return next(text for text in mirage_tasks.vocabulary_corpus() if "devise an action plan" in text)


def test_loads_with_stock_classes_and_no_missing_or_unexpected_weights(base: str) -> None:
    model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(base, output_loading_info=True)
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    assert not info["error_msgs"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    processor = AutoProcessor.from_pretrained(base)
    assert type(processor) is Qwen2_5_VLProcessor
    assert isinstance(processor.tokenizer, Qwen2Tokenizer)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessor)
    assert isinstance(processor.video_processor, Qwen2VLVideoProcessor)
    assert isinstance(AutoTokenizer.from_pretrained(base), Qwen2Tokenizer)
    assert sorted(p.name for p in Path(base).iterdir() if p.suffix in {".safetensors", ".bin", ".pt"}) == [
        "model.safetensors"
    ]
    # Small enough to run every path on a 2-core CPU.
    assert sum(p.numel() for p in model.parameters()) < 3_000_000


def test_saved_weights_are_exactly_the_seeded_initialisation(base: str, model, tmp_path: Path) -> None:
    # Re-running the seeded initialisation from the saved config gives the built weights; the saved file holds
    # them bit for bit (5.24 renames keys to Hub names on save and back on load).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = Qwen2_5_VLForConditionalGeneration(AutoConfig.from_pretrained(base)).eval()
    loaded = dict(model.named_parameters())
    assert loaded.keys() == dict(fresh.named_parameters()).keys()
    for name, param in fresh.named_parameters():
        assert torch.equal(param, loaded[name]), name

    # Save -> load again: every parameter and the logits are identical.
    model.save_pretrained(tmp_path, safe_serialization=True)
    again = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    for name, param in again.named_parameters():
        assert torch.equal(param, loaded[name]), name
    ids = torch.tensor([[5, 17, 42, 99, 3]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_build_is_deterministic_for_a_seed(base: str, tmp_path: Path) -> None:
    same = Path(build_tiny_base(tmp_path / "same", seed=0))
    for path in Path(base).iterdir():
        assert (same / path.name).read_bytes() == path.read_bytes(), path.name
    other = Path(build_tiny_base(tmp_path / "other", seed=1))
    # Another seed changes the weights only.
    assert (other / "tokenizer.json").read_bytes() == (same / "tokenizer.json").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (same / "model.safetensors").read_bytes()


def test_refuses_to_overwrite_a_non_empty_dir_unless_asked(tmp_path: Path) -> None:
    target = tmp_path / "dir"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        build_tiny_base(target)
    assert (target / "keep.txt").read_text() == "user data"
    build_tiny_base(target, overwrite=True)
    assert (target / "config.json").is_file() and not (target / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dir"]  # no staging folder left behind


def test_cli_refuses_a_non_empty_dir_and_overwrites_on_request(tmp_path: Path, capsys) -> None:
    main = runpy.run_path(str(REPO / "examples" / "make_tiny_base.py"))["main"]
    out = tmp_path / "cli"
    assert main(["--output-dir", str(out), "--seed", "3"]) == str(out)
    assert (out / "model.safetensors").is_file()
    with pytest.raises(SystemExit) as exit_info:
        main(["--output-dir", str(out)])
    assert exit_info.value.code != 0
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--output-dir", str(out), "--overwrite"]) == str(out)


def test_token_ids_are_the_tiny_tokenizers_and_inside_the_vocab(base: str, processor) -> None:
    tokenizer = processor.tokenizer
    config = AutoConfig.from_pretrained(base)
    text = config.text_config
    ids = {content: tokenizer.convert_tokens_to_ids(content) for content, _ in QWEN_SPECIAL_TOKENS}
    assert text.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert (text.eos_token_id, text.pad_token_id, text.bos_token_id) == (
        ids["<|im_end|>"],
        ids["<|endoftext|>"],
        ids["<|endoftext|>"],
    )
    assert config.image_token_id == ids["<|image_pad|>"] == processor.image_token_id
    assert config.video_token_id == ids["<|video_pad|>"] == processor.video_token_id
    assert config.vision_start_token_id == ids["<|vision_start|>"]
    assert config.vision_end_token_id == ids["<|vision_end|>"]
    generation = GenerationConfig.from_pretrained(base)
    assert generation.eos_token_id == [ids["<|im_end|>"], ids["<|endoftext|>"]]
    assert generation.pad_token_id == ids["<|endoftext|>"]
    assert all(0 <= i < text.vocab_size for i in [*ids.values(), config.image_token_id, config.video_token_id])


def test_qwen_special_tokens_exist_in_stock_order_and_latent_tokens_do_not(processor) -> None:
    tokenizer = processor.tokenizer
    contents = [content for content, _ in QWEN_SPECIAL_TOKENS]
    ids = tokenizer.convert_tokens_to_ids(contents)
    # Contiguous at the end of the vocabulary, in stock order (stock: 151643..151664), so the Mirage conversion
    # appends the latent tokens right after them.
    assert ids == list(range(len(tokenizer) - len(contents), len(tokenizer)))
    for content, token_id in zip(contents, ids, strict=True):
        assert tokenizer(content, add_special_tokens=False).input_ids == [token_id], content
    special = {content for content, flag in QWEN_SPECIAL_TOKENS if flag}
    assert special == {"<|endoftext|>", *tokenizer.extra_special_tokens}
    vocab = tokenizer.get_vocab()
    for latent in LATENT_TOKENS:
        assert latent not in vocab
        assert len(tokenizer(latent, add_special_tokens=False).input_ids) > 1  # only bytes/merges, no id of its own


def test_chat_template_has_the_qwen_layout(processor) -> None:
    tokenizer = processor.tokenizer
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Plan?"}]},
        {"role": "assistant", "content": "\\boxed{LR}"},
    ]
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Plan?<|im_end|>\n"
        "<|im_start|>assistant\n\\boxed{LR}<|im_end|>\n"
    )
    assert tokenizer.apply_chat_template(messages, tokenize=False) == expected
    assert processor.apply_chat_template(messages, tokenize=False) == expected
    own_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert tokenizer.apply_chat_template(own_system, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    two_images = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "?"}]}]
    rendered = tokenizer.apply_chat_template(two_images, tokenize=False, add_vision_id=True)
    assert "Picture 1: <|vision_start|><|image_pad|><|vision_end|>Picture 2: <|vision_start|>" in rendered


def test_processor_expands_an_image_to_one_token_per_merged_patch(processor) -> None:
    # 512 px (an 8x8 map at 64 px per cell) is capped at 224 px: 16x16 patches of 14 px, 8x8 merged tokens.
    inputs = processor.apply_chat_template(
        _image_message("Plan?"), tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=True
    )
    assert inputs["image_grid_thw"].tolist() == [[1, 16, 16]]
    assert inputs["pixel_values"].shape == (16 * 16, 3 * 2 * 14 * 14)
    assert (inputs["input_ids"] == processor.image_token_id).sum().item() == 64


def test_processor_and_model_take_a_video(model, processor) -> None:
    # Four 112-px frames: two temporal patches of 8x8 patches, i.e. 2 x 4 x 4 merged tokens.
    frames = torch.randint(0, 256, (4, 112, 112, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What moves?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], videos=[frames.numpy()], return_tensors="pt")
    assert inputs["video_grid_thw"].tolist() == [[2, 8, 8]]
    assert (inputs["input_ids"] == processor.video_token_id).sum().item() == 32
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], len(processor.tokenizer))
    assert torch.isfinite(logits).all()


def test_greedy_generation_runs_and_stops_at_either_end_token(model, processor) -> None:
    inputs = processor.apply_chat_template(
        _image_message(_planning_prompt()),
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        add_generation_prompt=True,
    )
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape == (1, prompt_length + 4)

    # A random model rarely picks an end token by itself; force each one and check the saved generation config
    # stops on it although many more tokens are allowed.
    for end in ("<|im_end|>", "<|endoftext|>"):
        end_id = processor.tokenizer.convert_tokens_to_ids(end)

        def favour_end(module, args, output, end_id=end_id):
            output[..., end_id] += 1e4
            return output

        handle = model.lm_head.register_forward_hook(favour_end)
        try:
            with torch.no_grad():
                out = model.generate(**inputs, max_new_tokens=200, do_sample=False)
        finally:
            handle.remove()
        assert out[0, prompt_length:].tolist() == [end_id], end


def test_task_texts_round_trip_and_stay_short(processor) -> None:
    tokenizer = processor.tokenizer
    for text in [*mirage_tasks.vocabulary_corpus(), "Ünïcødé 🙂 never seen\r\n\ttabs"]:
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text
    prompt = _planning_prompt()
    # The task vocabulary is learned: a ~200-word prompt costs about one token per word, not one per byte.
    assert len(tokenizer(prompt).input_ids) < 1.5 * len(prompt.split())


def test_tiny_base_path_builds_once_and_reuses_a_cache_dir(tmp_path: Path, monkeypatch) -> None:
    first = tiny_base_path(tmp_path)
    assert Path(first, "config.json").is_file() and Path(first).parent == tmp_path
    stamp = Path(first, "model.safetensors").stat().st_mtime_ns
    assert tiny_base_path(tmp_path) == first
    # A new process (an empty in-memory record) finds the finished entry on disk instead of rebuilding.
    monkeypatch.setattr(tiny_base, "_BUILT", {})
    assert tiny_base_path(tmp_path) == first
    assert Path(first, "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [Path(first).name]
    # Without a cache dir: a temporary folder, the same one for the rest of the process.
    default = tiny_base_path()
    assert default == tiny_base_path() and Path(default, "model.safetensors").is_file()
