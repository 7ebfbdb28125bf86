"""Conversion from Qwen2.5-VL checkpoints, save/load, and Hub remote-code loading in a fresh process."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, Qwen2Config
from transformers.dynamic_module_utils import get_relative_import_files, get_relative_imports

import modeling_mirage
from mirage_tiny import tiny_base_path
from modeling_mirage import LATENT_TOKENS, MirageForConditionalGeneration, MirageProcessor, conversion
from trainers.model_setup import REMOTE_CODE_FILES


@pytest.fixture(scope="module")
def base_dir():
    return tiny_base_path()


@pytest.fixture(scope="module")
def converted(base_dir):
    processor = MirageProcessor.from_base(base_dir)
    model = MirageForConditionalGeneration.from_base(base_dir, processor=processor).eval()
    return model, processor


def test_processor_adds_the_three_tokens_in_order_at_the_end(base_dir, converted):
    _, processor = converted
    stock = AutoProcessor.from_pretrained(base_dir)
    n = len(stock.tokenizer)
    assert [processor.tokenizer.convert_tokens_to_ids(t) for t in LATENT_TOKENS] == [n, n + 1, n + 2]
    assert (processor.latent_pad_token_id, processor.latent_start_token_id, processor.latent_end_token_id) == (
        n,
        n + 1,
        n + 2,
    )
    # the stock vocabulary is untouched
    stock_vocab = stock.tokenizer.get_vocab()
    assert all(processor.tokenizer.get_vocab()[t] == i for t, i in stock_vocab.items())


def test_conversion_keeps_every_base_weight_bit_exact(base_dir, converted):
    model, processor = converted
    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir)
    ours, theirs = model.state_dict(), stock.state_dict()
    assert set(ours) == set(theirs)
    n_old = stock.get_input_embeddings().num_embeddings
    new_ids = [processor.latent_pad_token_id, processor.latent_start_token_id, processor.latent_end_token_id]
    for name, tensor in theirs.items():
        if name in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            assert torch.equal(ours[name][:n_old], tensor), name
            assert ours[name].shape[0] == len(processor.tokenizer)
            # the new rows start at the mean of the old ones
            mean = tensor.mean(dim=0)
            for i in new_ids:
                assert torch.allclose(ours[name][i], mean, atol=1e-6), (name, i)
        else:
            assert torch.equal(ours[name], tensor), name
    assert model.config.model_type == "mirage"
    assert model.config.latent_token_ids == tuple(new_ids)
    assert model.config.text_config.vocab_size == len(processor.tokenizer)
    assert model.generation_config.eos_token_id == stock.generation_config.eos_token_id


def test_saved_mirage_folder_reloads_exactly_and_holds_only_safetensors(converted, tmp_path):
    model, processor = converted
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and not any(f.endswith((".bin", ".pt", ".pth")) for f in files)
    # the remote code: exactly the payload files, generation included; conversion never travels
    assert [f for f in files if f.endswith(".py")] == list(PAYLOAD_FILES)
    # the weights keep the Qwen2.5-VL Hub names, as official checkpoints do
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.layers.0.self_attn.q_proj.weight" in keys and any(k.startswith("visual.") for k in keys)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_mirage.MirageConfig",
        "AutoModel": "modeling_mirage.MirageForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_mirage.MirageForConditionalGeneration",
    }
    assert json.loads((tmp_path / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_mirage.MirageProcessor"
    }
    reloaded = MirageForConditionalGeneration.from_pretrained(tmp_path)
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


PAYLOAD_FILES = ("configuration_mirage.py", "generation_mirage.py", "modeling_mirage.py", "processing_mirage.py")


def test_payload_files_import_only_torch_transformers_the_standard_library_and_each_other(converted, tmp_path):
    model, processor = converted
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    saved = sorted(p.name for p in tmp_path.glob("*.py"))
    assert saved == list(PAYLOAD_FILES) == sorted(REMOTE_CODE_FILES)
    siblings = {name[: -len(".py")] for name in saved}
    for name in saved:
        tree = ast.parse((tmp_path / name).read_text())
        for node in ast.walk(tree):  # every import, also inside functions and try blocks
            if isinstance(node, ast.Import):
                tops = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [node.module.split(".")[0]]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 1 and node.module in siblings, f"{name}:{node.lineno} imports .{node.module}"
                continue
            else:
                continue
            for top in tops:
                assert top in ("torch", "transformers") or top in sys.stdlib_module_names, (
                    f"{name}:{node.lineno} {top}"
                )
    # transformers decides what travels by a regex over the whole text: the conversion module is never named
    package = Path(modeling_mirage.__file__).parent
    travelling = {Path(f).name for f in get_relative_import_files(package / "modeling_mirage.py")}
    assert travelling == {"configuration_mirage.py", "generation_mirage.py"}
    for name in PAYLOAD_FILES:
        assert "conversion" not in get_relative_imports(package / name), name


def test_from_base_is_the_conversion_module_s_class_method():
    # the package attaches it; the class loaded as remote code has none (see the fresh-process test)
    assert MirageForConditionalGeneration.from_base.__func__ is conversion.from_base
    assert MirageForConditionalGeneration.from_base.__self__ is MirageForConditionalGeneration


REMOTE_SCRIPT = """
import json, sys, torch
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
folder, out = sys.argv[1], sys.argv[2]
inputs = torch.load(folder + "/inputs.pt")
result = {}
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
result["classes"] = [type(config).__module__, type(processor).__module__]
result["from_base"] = []
result["processor"] = [type(processor).__name__, processor.latent_num_tokens]
for auto in (AutoModel, AutoModelForImageTextToText):
    model = auto.from_pretrained(folder, trust_remote_code=True).eval()
    result["classes"].append(type(model).__module__)
    result["classes"] += [c.__module__ for c in type(model).__mro__ if c.__name__ == "MirageGenerationMixin"]
    result["from_base"].append(hasattr(type(model), "from_base"))
    with torch.no_grad():
        logits = model(**inputs).logits
    result[auto.__name__] = (logits - torch.load(folder + "/logits.pt")).abs().max().item()
gen = model.generate(**inputs, max_new_tokens=12, do_sample=False, return_dict_in_generate=True)
result["sequences"] = gen.sequences.tolist()
result["latents"] = [l.tolist() for l in gen.latents]
result["text"] = processor.apply_chat_template(
    [{"role": "assistant", "content": [{"type": "text", "text": "<output_image>done"}]}], tokenize=False
)
json.dump(result, open(out, "w"))
"""


def test_remote_code_load_in_a_fresh_process_gives_identical_logits_and_generation(converted, tmp_path):
    model, processor = converted
    folder = tmp_path / "hub_folder"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Here is the map. Plan the moves."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "<output_image>The answer is \\boxed{RD}."}]},
    ]
    from PIL import Image

    image = Image.new("RGB", (112, 84), (120, 200, 240))
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = dict(processor(text=[text], images=[image], return_tensors="pt"))
    inputs.pop("mm_token_type_ids", None)
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.save(inputs, folder / "inputs.pt")
    torch.save(logits, folder / "logits.pt")
    local = model.generate(**inputs, max_new_tokens=12, do_sample=False, return_dict_in_generate=True)

    out = tmp_path / "result.json"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    proc = subprocess.run(
        [sys.executable, "-c", REMOTE_SCRIPT, str(folder), str(out)],
        cwd=outside,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert all(module.startswith("transformers_modules.") for module in result["classes"]), result["classes"]
    # the generation file travelled and runs from the folder; conversion stays with the local package
    assert [m.rsplit(".", 1)[-1] for m in result["classes"][-2:]] == ["modeling_mirage", "generation_mirage"]
    assert result["from_base"] == [False, False]
    assert result["processor"] == ["MirageProcessor", processor.latent_num_tokens]
    assert result["AutoModel"] == 0.0 and result["AutoModelForImageTextToText"] == 0.0
    assert result["sequences"] == local.sequences.tolist()
    assert len(result["latents"]) == len(local.latents)
    for theirs, ours in zip(result["latents"], local.latents):
        assert torch.equal(torch.tensor(theirs, dtype=ours.dtype).reshape(ours.shape), ours)
    assert "<|latent_start|>" + "<|latent_pad|>" * processor.latent_num_tokens + "<|latent_end|>done" in result["text"]


# ---- official Mirage checkpoints: the tokens are already there -------------------------------------------------------


@pytest.fixture(scope="module")
def official_style_dir(base_dir, tmp_path_factory):
    """A Qwen2.5-VL checkpoint whose tokenizer already has the latent tokens and whose embedding rows for them are
    trained (here: random), as the official Mirage checkpoints are."""
    folder = tmp_path_factory.mktemp("official")
    stock = Qwen2_5_VLProcessor.from_pretrained(base_dir)
    stock.tokenizer.add_tokens(list(LATENT_TOKENS), special_tokens=True)
    stock.save_pretrained(folder)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir)
    model.resize_token_embeddings(len(stock.tokenizer), mean_resizing=False)
    torch.manual_seed(7)
    with torch.no_grad():
        model.get_input_embeddings().weight[-3:] = torch.randn(3, model.config.text_config.hidden_size)
        model.get_output_embeddings().weight[-3:] = torch.randn(3, model.config.text_config.hidden_size)
    model.save_pretrained(folder)
    return folder, model


def test_official_checkpoint_reuses_tokens_and_keeps_their_trained_rows(official_style_dir):
    folder, original = official_style_dir
    processor = MirageProcessor.from_base(folder)
    before = len(AutoProcessor.from_pretrained(folder).tokenizer)
    assert len(processor.tokenizer) == before  # nothing added twice
    model = MirageForConditionalGeneration.from_base(folder, processor=processor)
    for name, tensor in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert model.config.latent_token_ids == (before - 3, before - 2, before - 1)


# ---- bad input ------------------------------------------------------------------------------------------------------


def test_from_base_rejects_a_checkpoint_that_is_not_qwen2_5_vl(tmp_path):
    Qwen2Config(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="is a 'qwen2' checkpoint; Mirage converts Qwen2.5-VL"):
        MirageForConditionalGeneration.from_base(tmp_path)


def test_tokenizer_with_latent_tokens_at_unexpected_ids_is_rejected(base_dir, tmp_path):
    stock = Qwen2_5_VLProcessor.from_pretrained(base_dir)
    stock.tokenizer.add_tokens(["<|latent_start|>", "<|latent_pad|>", "<|latent_end|>"], special_tokens=True)
    stock.save_pretrained(tmp_path)
    pad = len(stock.tokenizer) - 2  # added in the order start, pad, end; Mirage wants pad, start, end
    with pytest.raises(ValueError, match=rf"latent tokens exist with unexpected ids \(<\|latent_pad\|>={pad}"):
        MirageProcessor.from_base(tmp_path)


def test_tokenizer_with_only_some_latent_tokens_is_rejected(base_dir, tmp_path):
    stock = Qwen2_5_VLProcessor.from_pretrained(base_dir)
    stock.tokenizer.add_tokens(["<|latent_pad|>"], special_tokens=True)
    stock.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has only some latent tokens"):
        MirageProcessor.from_base(tmp_path)


def test_processor_without_latent_tokens_points_to_from_base(base_dir):
    stock = Qwen2_5_VLProcessor.from_pretrained(base_dir)
    with pytest.raises(ValueError, match="MirageProcessor.from_base"):
        MirageProcessor(stock.image_processor, stock.tokenizer, stock.video_processor)


def test_model_from_base_on_a_missing_folder_names_it():
    with pytest.raises(OSError):
        MirageForConditionalGeneration.from_base(str(Path("/nonexistent/qwen")), local_files_only=True)


# ---- k agreement between the model and its processor -----------------------------------------------------------------


def test_from_base_refuses_a_k_the_processor_does_not_write(base_dir):
    processor = MirageProcessor.from_base(base_dir, latent_num_tokens=4)
    with pytest.raises(ValueError, match=r"latent_num_tokens=8 but the processor writes latent blocks of latent_num_"):
        MirageForConditionalGeneration.from_base(base_dir, latent_num_tokens=8, processor=processor)


def test_from_base_takes_k_from_the_processor_or_the_argument(base_dir):
    processor = MirageProcessor.from_base(base_dir, latent_num_tokens=6)
    assert MirageForConditionalGeneration.from_base(base_dir, processor=processor).config.latent_num_tokens == 6
    agreed = MirageForConditionalGeneration.from_base(base_dir, latent_num_tokens=6, processor=processor)
    assert agreed.config.latent_num_tokens == 6
    alone = MirageForConditionalGeneration.from_base(base_dir, latent_num_tokens=2)
    assert alone.config.latent_num_tokens == 2
    assert MirageForConditionalGeneration.from_base(base_dir).config.latent_num_tokens == 4


def test_derived_mm_token_type_ids_equal_what_the_processor_returns(converted):
    model, processor = converted
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Plan the moves."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        text=[text], images=[Image.new("RGB", (112, 84))], return_tensors="pt", return_mm_token_type_ids=True
    )
    derived = model.model.mm_token_type_ids(inputs["input_ids"])
    assert int(derived.sum()) == int((inputs["input_ids"] == model.config.image_token_id).sum()) > 0
    assert torch.equal(derived.long(), inputs["mm_token_type_ids"].long())
